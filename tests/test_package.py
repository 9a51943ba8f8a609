"""A regular (non-editable) install works: the package data and the `mscl` command ship
inside the wheel; from a checkout, the scripts/ shims run the same commands."""

from __future__ import annotations

import importlib
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modeling_mscl import cli

REPO = Path(__file__).resolve().parents[1]

# Run in the installed copy, away from the checkout: cards, configs and recipes must come
# from the wheel.
_CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import modeling_mscl
    from modeling_mscl.package_data import resource_dir
    target = Path(sys.argv[1]).resolve()
    assert Path(modeling_mscl.__file__).resolve().is_relative_to(target), modeling_mscl.__file__
    for kind in ("configs", "data", "model_cards"):
        assert resource_dir(kind).resolve().is_relative_to(target), (kind, resource_dir(kind))

    from modeling_mscl import MSCLConfig, MSCLModel
    from modeling_mscl.hub import render_model_card
    model = MSCLModel(MSCLConfig(width_coefficient=0.25, depth_coefficient=0.25,
                                 projection_dim=8))
    folder = Path(sys.argv[2])
    model.save_pretrained(folder)
    card = render_model_card("encoder", folder, repo_id="someone/mscl-test")
    assert "someone/mscl-test" in card, card[:500]

    from modeling_mscl.demo import DemoSettings
    assert Path(DemoSettings().config).is_file(), DemoSettings().config
    from modeling_mscl.demo_check import load_expected
    assert load_expected() is not None  # the demo's study ranges ship with the configs
    from modeling_mscl.training_args import _config_file
    assert _config_file("paper").resolve().is_relative_to(target)

    from modeling_mscl.corpora.song_plans import load_recipe
    from modeling_mscl.corpora.general_midi import gm_programs
    assert len(load_recipe().styles) >= 2 and len(gm_programs()) == 128
    print("ok")
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel built from this checkout, installed into a fresh target: (target, env)."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("install")
    wheels, target = root / "wheels", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)]
    subprocess.run(build, check=True, cwd=root, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("modeling_mscl-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, cwd=root, capture_output=True, timeout=300)
    return target, dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1")


def test_wheel_install_ships_cards_configs_and_recipes(installed, tmp_path):
    target, env = installed
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, str(target), str(tmp_path / "encoder")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_wheel_install_has_the_mscl_command(installed, tmp_path):
    target, env = installed
    # pip --target puts console scripts in TARGET/bin; the file is Python whatever its
    # shebang, so the test's interpreter runs it with the installed package on PYTHONPATH.
    mscl = target / "bin" / "mscl"
    assert mscl.is_file(), sorted(p.name for p in target.iterdir())
    expected = {
        (): ["usage: mscl COMMAND", *(f"\n  {name} " for name in cli.COMMANDS)],
        ("pretrain",): ["usage: mscl pretrain", "--data_dir", "--objective"],
        ("separate",): ["usage: mscl separate", "--separator"],
        ("probe",): ["usage: mscl probe", "--random-init"],
        ("push",): ["usage: mscl push", "--repo-id"],
    }
    # Started together: each pays the torch import, and they share the machine's cores.
    runs = {
        words: subprocess.Popen(
            [sys.executable, str(mscl), *words, "--help"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for words in expected
    }
    for words, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (words, err[-3000:])
        for text in expected[words]:
            assert text in out, (words, text, out[:2000])


# ---------------------------------------------------------------- the command from a checkout


def test_every_command_module_has_a_subcommand_and_a_shim():
    modules = {p.stem for p in (REPO / "modeling_mscl" / "commands").glob("*.py")}
    assert modules - {"__init__"} == set(cli.COMMANDS.values())
    for name, module in cli.COMMANDS.items():
        assert cli.summary(name), name  # the module docstring's first line, for `mscl --help`
        shim = (REPO / "scripts" / f"{module}.py").read_text()
        assert f"from modeling_mscl.commands.{module} import main" in shim, module


def test_mscl_help_and_bad_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name} " in out, name
    assert cli.main([]) == 2 and "usage: mscl COMMAND" in capsys.readouterr().err
    assert cli.main(["pretrian"]) == 2
    assert "unknown command 'pretrian'" in capsys.readouterr().err
    argv = list(sys.argv)
    with pytest.raises(SystemExit) as done:
        cli.main(["separate", "--help"])
    assert done.value.code == 0 and sys.argv == argv  # restored after the command
    assert capsys.readouterr().out.startswith("usage: mscl separate")


@pytest.mark.parametrize("module", sorted(cli.COMMANDS.values()))
def test_scripts_shims_run_their_command_by_path(module, monkeypatch, capsys):
    """`python scripts/X.py --help` (the Makefile's form in a checkout) is the command's."""
    path = REPO / "scripts" / f"{module}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code == 0
    shown = capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"modeling_mscl.commands.{module}").main(["--help"])
    assert done.value.code == 0
    assert shown.startswith("usage: ") and shown == capsys.readouterr().out
