"""The front door: a light `import modeling_mscl`, every command's help, one-line errors,
messages that name only what a user has, and the warned bare array."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from modeling_mscl import cli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "modeling_mscl"
HEAVY = ("datasets", "accelerate", "demucs", "matplotlib", "pyarrow")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def test_import_leaves_the_heavy_dependencies_unloaded():
    done = _python(
        "import sys, modeling_mscl\n"
        f"print([m for m in {HEAVY!r} + ('modeling_mscl.modeling_mscl',) if m in sys.modules])"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_a_bare_import_still_registers_the_models():
    # The README's quickstart: `import modeling_mscl`, then the Auto classes.
    done = _python(
        "import modeling_mscl\n"
        "from transformers import AutoModel, AutoModelForAudioClassification\n"
        "config = modeling_mscl.MSCLConfig(width_coefficient=0.25, depth_coefficient=0.25)\n"
        "print(type(AutoModel.from_config(config)).__name__,\n"
        "      type(AutoModelForAudioClassification.from_config(config)).__name__,\n"
        "      modeling_mscl.MSCLModel.__name__)"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["MSCLModel", "MSCLForAudioClassification", "MSCLModel"]


# What building a command's parser must not import: the heavy libraries, the model classes
# and the probing stack (scikit-learn with it).
NOT_FOR_HELP = (*HEAVY, "modeling_mscl.modeling_mscl", "modeling_mscl.probing", "sklearn")


def test_no_command_help_imports_the_heavy_dependencies():
    # One interpreter for every command (each start costs the torch import); what a
    # command's help newly loads is charged to it.
    done = _python(
        "import contextlib, io, json, sys\n"
        "from modeling_mscl import cli\n"
        "loaded = {}\n"
        "for name in cli.COMMANDS:\n"
        "    before = set(sys.modules)\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        cli.main([name, '--help'])\n"
        "    assert 'usage:' in out.getvalue(), name\n"
        f"    heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY + ('sklearn',)!r}\n"
        f"                   or m.startswith({NOT_FOR_HELP[-3:-1]!r}))\n"
        "    loaded[name] = sorted({m if m.startswith('modeling_mscl') else m.split('.')[0] for m in heavy})\n"
        "print(json.dumps(loaded))"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == sorted(cli.COMMANDS)
    assert {name: mods for name, mods in loaded.items() if mods} == {}


def test_the_light_choice_lists_equal_their_sources():
    from modeling_mscl import _choices
    from modeling_mscl.probing.retrieval import BN_REGIMES
    from modeling_mscl.probing.tasks import PRESETS

    assert _choices.PROBE_PRESETS == tuple(sorted(PRESETS))
    assert _choices.BN_REGIMES is BN_REGIMES


def _parsers():
    for name, module in cli.COMMANDS.items():
        command = importlib.import_module(f"modeling_mscl.commands.{module}")
        yield name, command.build_parser()


def test_every_option_of_every_command_has_help_and_shows_its_default():
    missing, no_default, markup = [], [], []
    for name, parser in _parsers():
        if not (parser.description or "").strip():
            missing.append(f"{name}: no description")
        text = parser.format_help()
        if any(role in text for role in (":func:", ":mod:", ":class:", ":meth:", "``")):
            markup.append(name)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(label)
                continue
            meaningful = action.default not in (None, False, argparse.SUPPRESS, [])
            if meaningful and action.option_strings:
                shown = formatter._expand_help(action)
                if "default" not in shown.lower():
                    no_default.append(f"{label}: {shown!r}")
    assert not missing, missing
    assert not no_default, no_default
    assert not markup, markup


def test_separate_has_front_end_options():
    from modeling_mscl.commands.separate import build_parser, front_end

    args = build_parser().parse_args(["in", "out", "--num-mel-bins", "32"])
    assert front_end(args).feature_size == 32
    assert front_end(build_parser().parse_args(["in", "out"])).feature_size == 64
    with pytest.raises(ValueError, match="not both"):
        front_end(build_parser().parse_args(["in", "out", "--num-mel-bins", "32",
                                              "--preprocessor", "x"]))  # fmt: skip


def test_a_user_mistake_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert cli.main(["plot", str(missing), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "--debug" in err, err
    assert "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        cli.main(["plot", str(missing), "--debug"])


def test_plot_reads_the_loss_history_alone(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "train/loss": 3.0 - s / 100, "train/lr": 1e-3} for s in (10, 20, 30)]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "plot.png"
    assert cli.main(["plot", f"MSCL={run}", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "train/loss" in capsys.readouterr().out


def _message_strings(path: Path) -> list[str]:
    """The string literals of a module that are not docstrings (what it prints or raises)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    ]


def test_messages_name_no_file_a_user_does_not_have():
    # An installed user has the `mscl` commands, not the checkout's scripts or pins.
    offending = [
        f"{path.relative_to(REPO)}: {text[:80]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for text in _message_strings(path)
        if any(name in text for name in ("scripts/", "constraints-tf", "constraints.txt"))
    ]
    assert not offending, offending
    # Nor does the help: `mscl --help` and every command's (descriptions are docstrings).
    helps = {"mscl": cli.usage(), **{name: p.format_help() for name, p in _parsers()}}
    # A shipped config's resolved default path is the user's own, wherever argparse wraps it.
    unwrapped = {
        name: re.sub(r"\(default:[^)]*\)", "", " ".join(text.split()))
        for name, text in helps.items()
    }
    offending = [
        f"{name}: {text}"
        for name, text in unwrapped.items()
        if any(word in text for word in ("scripts/", "constraints-tf", "constraints.txt"))
    ]
    assert not offending, offending


def test_a_bare_array_in_a_pipeline_is_warned_not_silently_16k():
    from modeling_mscl import MSCLFeatureExtractor
    from modeling_mscl.pipeline_mscl import _waveform

    fe = MSCLFeatureExtractor()
    with pytest.warns(UserWarning, match="no sampling rate"):
        _waveform(np.zeros(16000, dtype=np.float32), fe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _waveform({"array": np.zeros(16000, dtype=np.float32), "sampling_rate": 16000}, fe)
    with pytest.raises(ValueError, match="sampling_rate"):
        fe(np.zeros(16000, dtype=np.float32))  # the extractor itself refuses


def test_the_demo_refuses_a_corpus_without_test_songs_up_front(tmp_path, capsys):
    from modeling_mscl.demo import check_corpus_size

    check_corpus_size(200, 30.0, 0)
    with pytest.raises(ValueError, match=r"num_songs=5 leaves the validation and test"):
        check_corpus_size(5, 30.0, 0)
    work = tmp_path / "demo"
    assert cli.main(["demo", "--workdir", str(work), "--num_songs", "5"]) == 1
    assert "--num_songs 21 or more" in capsys.readouterr().err
    assert not (work / "corpus").exists()  # refused before anything was built


def test_no_progress_quiets_the_libraries_too():
    import logging

    import datasets
    from transformers.utils import logging as transformers_logging

    from modeling_mscl._help import quiet_libraries

    before = transformers_logging.get_verbosity(), logging.getLogger("accelerate").level
    try:
        quiet_libraries()
        assert not transformers_logging.is_progress_bar_enabled()
        assert not datasets.is_progress_bar_enabled()
        assert transformers_logging.get_verbosity() == transformers_logging.WARNING
        assert logging.getLogger("accelerate").getEffectiveLevel() == logging.WARNING
    finally:
        transformers_logging.enable_progress_bar()
        datasets.enable_progress_bars()
        transformers_logging.set_verbosity(before[0])
        logging.getLogger("accelerate").setLevel(before[1])
    for command in ("probe", "separate"):
        parser = dict(_parsers())[command]
        assert any("--no-progress" in a.option_strings for a in parser._actions), command
