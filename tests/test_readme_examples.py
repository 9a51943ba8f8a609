"""Every example of the README, and of the docs pages it sends users to, runs as written.

The test reads each fenced block of :data:`PAGES`. A ``python`` block runs whole; a shell
block is cut into its commands (continuation lines joined, comments dropped), and each
``mscl ...`` command runs through :func:`modeling_mscl.cli.main`, expanded as a shell
would (``~``, ``$VAR``, globs). Every block runs offline, in a folder staged with what its
paths name: a tiny random encoder and probe heads at the folders the examples use (made
as ``save_pretrained`` makes them), a few seconds of audio at ``song.flac``, ``song.mp3``,
``~/Music``, a tiny multitrack set, a synthetic chunk set. Where the test shrinks a size
(``--max_steps 2``), it appends the arguments and checks that the page says so next to
the command.

A block or command that needs the Hub, a GPU, a download or hours is listed in
:data:`SKIPPED` with the reason; one that is neither run nor listed fails
:func:`test_every_example_is_run_or_listed`, so an example cannot rot unseen. The keys
are the page, the heading a block sits under and its index there (python blocks), or
the command's own words (shell commands, which several pages share).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
# The README and the pages it sends users to for a task (embed, classify, pre-train,
# separate, probe, share).
PAGES = (
    "README.md",
    "docs/model.md",
    "docs/data.md",
    "docs/pretraining.md",
    "docs/probes.md",
    "docs/hub.md",
)
SHELL = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Block:
    """One fenced block: its page, the heading it sits under, language and text."""

    page: str
    heading: str
    language: str
    index: int  # among the blocks of its language under its heading
    text: str

    @property
    def key(self) -> str:
        return f"{self.page} / {self.heading} / {self.language or 'text'} {self.index}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page``, in order (a longer fence holds shorter ones)."""
    out: list[Block] = []
    heading, counts = "(top)", {}
    fence, language, lines = None, "", []
    for line in (REPO / page).read_text(encoding="utf-8").splitlines():
        if fence is None:
            opened = re.match(r"^(`{3,})\s*([\w+-]*)", line)
            if opened:
                fence, language, lines = opened.group(1), opened.group(2), []
            elif line.startswith("#"):
                heading, counts = line.lstrip("#").strip(), {}
        elif line.strip() == fence:
            index = counts.get(language, 0) + 1
            counts[language] = index
            out.append(Block(page, heading, language, index, "\n".join(lines) + "\n"))
            fence = None
        else:
            lines.append(line)
    assert fence is None, f"{page}: a code fence is never closed"
    return out


def commands(block: Block) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped, each
    as its words joined by one space (the key it is listed under)."""
    out = []
    for line in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(" ".join(words))
    return out


# ---------------------------------------------------------------------- what is not run

SKIPPED: dict[str, str] = {
    # shell commands, by their words
    "make demo": "the main job itself: 15 minutes of CPU (make test-slow runs a tiny study)",
    "make test": "the test suite itself",
    "pip install torch": "installs from PyPI",
    "pip install -e .[corpus,train,dev]": "installs from PyPI",
    "accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 -m "
    "modeling_mscl.commands.pretrain --config paper --data_dir data_cache/mtat-chunks "
    "--output_dir runs/mscl-b0": "8 GPUs and MagnaTagATune's chunk set",
    "accelerate launch --mixed_precision bf16 -m modeling_mscl.commands.pretrain --config "
    "paper --data_dir data_cache/mtat-chunks --output_dir runs/mscl-b0": "a GPU (bf16) and "
    "MagnaTagATune's chunk set",
    "mscl pretrain --config paper --output_dir runs/mscl-b0 --resume true": "resumes the "
    "paper's GPU run above (tests/test_training.py resumes tiny runs)",
    "mscl separate path/to/audio_folder data_cache/chunks --separator demucs": "downloads "
    "htdemucs from the Hub (tests/test_stems.py separates with a tiny random HTDemucs)",
    "mscl probe --model runs/mscl/encoder --loader mtat --root ~/data/magnatagatune --task "
    "mtat --output results/probes.json --markdown results/probes.md --export "
    "results/heads/mtat": "needs MagnaTagATune (tests/test_corpora.py reads a tiny copy)",
    "mscl push probe-head results/heads/mtat --repo-id you/mscl-b0-mtat --base-model "
    "you/mscl-b0": "uploads to the Hub (its --dry-run is the encoder's, run below)",
    "mscl push encoder runs/mscl/encoder --repo-id your-name/mscl-b0 --private --results "
    "runs/probes/mtat/probe_results.json runs/probes/nsynth/probe_results.json": "uploads "
    "to the Hub (tests/test_hub.py pushes to a fake Hub)",
    "mscl push probe-head runs/probes/mtat --repo-id your-name/mscl-b0-mtat --base-model "
    "your-name/mscl-b0": "uploads to the Hub (tests/test_hub.py pushes to a fake Hub)",
    "mscl convert MSCOL_SMC23/models/drums mscl-drums --sources drums": "needs the authors' "
    "checkpoint and TensorFlow (make test-tf)",
    "mscl convert MSCOL_SMC23/models/multi-source mscl-multi --sources vocals drums bass "
    "other": "needs the authors' checkpoint and TensorFlow (make test-tf)",
    "mscl push encoder mscl-drums --repo-id your-name/mscl-drums --dry-run": "needs the "
    "converted checkpoint above",
    # whole blocks, by page / heading / language index
    "README.md / Citation / bibtex 1": "a citation, nothing to run",
    "docs/data.md / Data: stems, presence flags and corpora / python 1": "needs MagnaTagATune and Demucs' weights "
    "(tests/test_chunks.py prepares chunks with oracle stems)",
    "docs/hub.md / Pushing / python 1": "uploads to the Hub (tests/test_hub.py pushes to a "
    "fake Hub)",
    "docs/hub.md / Example: `--dry-run` / json 1": "a file's contents, nothing to run",
    "docs/hub.md / Example: `--dry-run` / json 2": "a file's contents, nothing to run",
    "docs/hub.md / Example: `--dry-run` / text 1": "a command's output, nothing to run",
    "docs/hub.md / The authors' TensorFlow checkpoints / bash 2": "builds a TensorFlow environment "
    "from PyPI (make test-tf)",
}


# ---------------------------------------------------------------------------- what is run


@dataclass(frozen=True)
class Run:
    """How the test runs one python block or one shell command."""

    shrunk: tuple[str, ...] = ()  # arguments appended; the page must name them beside it
    each: tuple[str, tuple[str, ...]] | None = None  # run once per value of this variable
    makes: tuple[str, ...] = ()  # files it must write (a run's or a command's output)
    replaces: str | None = None  # its output folder, staged for the others: removed first
    slow: bool = False


RUN: dict[str, Run] = {
    # README
    "README.md / Embed a music file / python 1": Run(),
    "README.md / Embed a music file / python 2": Run(),
    "README.md / Classify / python 1": Run(),
    "README.md / Embed and search your music / python 1": Run(),
    "mscl separate path/to/musdb18hq/train data_cache/chunks --separator oracle": Run(
        replaces="data_cache/chunks", makes=("data_cache/chunks/report.json",)
    ),
    "mscl corpus --out data_cache/corpus": Run(
        shrunk=("--num-songs", "3", "--seconds", "4"),
        replaces="data_cache/corpus",
        makes=("data_cache/corpus/songs/dataset_dict.json",),
        slow=True,
    ),
    "mscl separate musdb18hq/ work/ --separator oracle --num-shards 4 --shard-index "
    "$SLURM_ARRAY_TASK_ID": Run(
        each=("SLURM_ARRAY_TASK_ID", ("0", "1", "2", "3")), makes=("work/shard-03-of-04",)
    ),
    "mscl separate data_cache/chunks --merge work/shard-*-of-04": Run(
        replaces="data_cache/chunks", makes=("data_cache/chunks/report.json",)
    ),
    "mscl pretrain --config demo --data_dir data_cache/chunks --output_dir runs/mscl": Run(
        shrunk=("--max_steps", "2"),
        replaces="runs/mscl",
        makes=("runs/mscl/encoder/model.safetensors", "runs/mscl/history.jsonl"),
    ),
    "mscl probe --random-init --data data_cache/corpus/songs --task corpus_genre --output "
    "results/probes.json --markdown results/probes.md --export results/heads/genre": Run(
        shrunk=("--task-arg", "max_epochs=2"),
        replaces="results/heads/genre",
        makes=("results/probes.json", "results/probes.md", "results/heads/genre/config.json"),
    ),
    "mscl plot COLA=runs/cola MSCL=runs/mscl --out convergence.png": Run(
        makes=("convergence.png",)
    ),
    "mscl retrieval --help": Run(),
    "mscl push encoder runs/mscl/encoder --repo-id you/mscl-b0 --dry-run": Run(),
    "mscl embed ~/Music library/ --model outputs/demo/runs/mscl/encoder": Run(
        makes=("library/library.json",)
    ),
    "mscl search library/ query.mp3 -k 5": Run(),
    # docs pages
    "docs/model.md / The model / python 1": Run(),
    "docs/probes.md / Probes / python 1": Run(),
    "accelerate launch --cpu -m modeling_mscl.commands.pretrain --config demo --data_dir "
    "data_cache/chunks --output_dir runs/mscl": Run(
        shrunk=("--max_steps", "2"),
        replaces="runs/mscl",
        makes=("runs/mscl/encoder/model.safetensors", "runs/mscl/history.jsonl"),
        slow=True,
    ),
    "mscl push encoder runs/mscl/encoder --repo-id your-name/mscl-b0 --dry-run": Run(),
    "mscl push encoder runs/mscl/encoder --repo-id your-name/mscl-b0 --dry-run --results "
    "runs/probes/mtat/probe_results.json runs/probes/nsynth/probe_results.json": Run(),
}


def _examples() -> list[tuple[str, Block]]:
    """Every example: (key, block) for each python block and each shell command."""
    out = []
    for page in PAGES:
        for block in blocks(page):
            if block.language in SHELL and block.key not in SKIPPED:
                out.extend((command, block) for command in commands(block))
            else:
                out.append((block.key, block))
    return out


def test_every_example_is_run_or_listed():
    keys = [key for key, _ in _examples()]
    unknown = [key for key in keys if key not in RUN and key not in SKIPPED]
    assert not unknown, (
        "examples neither run by tests/test_readme_examples.py nor listed in its SKIPPED "
        f"with a reason: {unknown}"
    )
    stale = [key for key in (*RUN, *SKIPPED) if key not in keys]
    assert not stale, f"listed examples that no page has any more: {stale}"
    assert not set(RUN) & set(SKIPPED)


def test_a_shrunk_size_is_said_beside_its_command():
    for key, block in _examples():
        run = RUN.get(key)
        if run and run.shrunk:
            said = " ".join(run.shrunk)
            assert f"tests run it with {said}" in block.text, (key, said)


def test_no_table_row_is_cut_off_by_a_blank_line():
    # A row after a blank line starts a paragraph, not the table (the `audio` extra once).
    for page in PAGES:
        lines = (REPO / page).read_text(encoding="utf-8").splitlines()
        fence = None
        for i, line in enumerate(lines):
            opened = re.match(r"^(`{3,})", line)
            if fence is None and opened:
                fence = opened.group(1)
            elif fence is not None and line.strip() == fence:
                fence = None
            if fence or not line.startswith("|") or (i and lines[i - 1].startswith("|")):
                continue
            separator = lines[i + 1] if i + 1 < len(lines) else ""
            assert re.match(r"^\|[\s:|-]+\|$", separator), f"{page}:{i + 1}: {line[:60]}"


# ------------------------------------------------------------------------- the staged folder


def _tone(seconds: float, rate: int, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(0).standard_normal(
        t.size
    )
    return (mono if channels == 1 else np.stack([mono, 0.6 * mono], axis=1)).astype(np.float32)


def _multitrack(root: Path, count: int) -> None:
    """MUSDB18-HQ's layout: track/{mixture,vocals,drums,bass,other}.wav, 5 s at 16 kHz."""
    for i in range(count):
        stems = {
            name: _tone(5.0, 16000, 110.0 * (i + 1) * (k + 1)) * (0.0 if (i + k) % 4 == 3 else 1)
            for k, name in enumerate(("vocals", "drums", "bass", "other"))
        }
        track = root / f"track{i}"
        track.mkdir(parents=True)
        for name, wav in stems.items():
            sf.write(track / f"{name}.wav", wav, 16000)
        sf.write(track / "mixture.wav", sum(stems.values()) / 4, 16000)


def _songs(folder: Path) -> None:
    """The offline corpus' song set in miniature: a DatasetDict with audio paths and genre."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"audio": Value("string"), "genre": ClassLabel(names=["a", "b"])})
    splits = {}
    for split, n in (("train", 6), ("validation", 4), ("test", 4)):
        rows = {"audio": [], "genre": []}
        for i in range(n):
            path = folder.parent / "audio" / f"{split}_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _tone(2.1, 16000, (200, 2000)[i % 2] * (1 + 0.01 * i)), 16000)
            rows["audio"].append(str(path))
            rows["genre"].append(i % 2)
        splits[split] = Dataset.from_dict(rows, features=features)
    DatasetDict(splits).save_to_disk(str(folder))


def _encoder(folder: Path) -> None:
    import torch

    from modeling_mscl import MSCLFeatureExtractor, MSCLModel

    torch.manual_seed(0)
    MSCLModel(tiny_config()).save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)


def _head(folder: Path, labels: list[str]) -> None:
    import torch

    from modeling_mscl import MSCLFeatureExtractor, MSCLForAudioClassification

    torch.manual_seed(0)
    config = tiny_config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        freeze_encoder=True,
    )
    MSCLForAudioClassification(config).eval().save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """What the examples' paths name, built once and copied for each example."""
    from modeling_mscl import MSCLFeatureExtractor
    from modeling_mscl.chunk_set import save_chunk_set
    from modeling_mscl.pairs import synthetic_chunk_dataset

    root = tmp_path_factory.mktemp("staged")
    _encoder(root / "outputs/demo/runs/mscl/encoder")
    shutil.copytree(root / "outputs/demo/runs/mscl/encoder", root / "runs/mscl/encoder")
    _head(root / "results/heads/genre", ["blues", "rock"])
    sf.write(root / "song.flac", _tone(3.0, 44100, 220.0, channels=2), 44100)
    sf.write(root / "song.mp3", _tone(3.0, 44100, 330.0, channels=2), 44100, format="MP3")
    sf.write(root / "query.mp3", _tone(2.0, 22050, 440.0), 22050, format="MP3")
    sf.write(root / "long_track.flac", _tone(6.0, 16000, 550.0), 16000)
    for i in range(3):
        (root / "Music").mkdir(exist_ok=True)
        sf.write(root / "Music" / f"song{i}.wav", _tone(1.5 + i, 16000, 150.0 * (i + 1)), 16000)
    _multitrack(root / "path/to/musdb18hq/train", 2)
    _multitrack(root / "musdb18hq", 4)
    # enough chunks for the demo config's minibatch of 32
    chunks = synthetic_chunk_dataset(num_tracks=12, chunks_per_track=4, seed=0)
    save_chunk_set(chunks, root / "data_cache/chunks", MSCLFeatureExtractor())
    _songs(root / "data_cache/corpus/songs")
    for run, loss in (("cola", 3.0), ("mscl", 2.5)):
        lines = [{"step": s, "train/loss": loss - s / 100} for s in (10, 20, 30)]
        (root / "runs" / run).mkdir(parents=True, exist_ok=True)
        (root / "runs" / run / "history.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines)
        )
    # docs/hub.md shows a probe_results.json: the pushes read that one
    # docs/hub.md shows a probe_results.json: the pushes read that one, measured on the
    # staged encoder.
    from modeling_mscl import MSCLModel
    from modeling_mscl.probing import encoder_fingerprint

    (text,) = [b.text for b in blocks("docs/hub.md") if b.language == "json" and "task" in b.text]
    example = json.loads(text)
    example["encoder_fingerprint"] = encoder_fingerprint(
        MSCLModel.from_pretrained(root / "runs/mscl/encoder")
    )
    for task in ("mtat", "nsynth"):
        (root / "runs/probes" / task).mkdir(parents=True)
        (root / "runs/probes" / task / "probe_results.json").write_text(
            json.dumps(
                {**example, "task": task, "task_config": {**example["task_config"], "name": task}}
            )
        )
    return root


@pytest.fixture
def workdir(staged, tmp_path, monkeypatch) -> Path:
    """A copy of the staged folder, as the current folder and the home folder."""
    work = tmp_path / "work"
    shutil.copytree(staged, work, symlinks=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    return work


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    # Accelerate keeps process-wide singletons; each in-process run starts from scratch.
    with contextlib.suppress(ImportError):
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


# ------------------------------------------------------------------------------- runners


def _argv(command: str) -> list[str]:
    """The command's words as a shell gives them: ``~``, ``$VAR`` and globs expanded."""
    out = []
    for word in shlex.split(command):
        word = os.path.expanduser(os.path.expandvars(word))
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        out.extend(matches or [word])
    return out


def _run_command(command: str, run: Run, monkeypatch) -> None:
    from modeling_mscl import cli

    words = _argv(command)
    if run.replaces:
        shutil.rmtree(run.replaces)
    if words[:2] == ["accelerate", "launch"]:
        # The launcher itself, in a process of its own (it starts the command's).
        launch = [sys.executable, "-m", "accelerate.commands.launch", *words[2:], *run.shrunk]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        values = ()
    else:
        assert words[0] == "mscl", f"only mscl commands run here: {command}"
        values = run.each[1] if run.each else (None,)
    for value in values:
        if run.each:
            monkeypatch.setenv(run.each[0], value)
            words = _argv(command)
        argv = [*words[1:], *run.shrunk]
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                status = cli.main(argv)
        except SystemExit as done:  # --help
            status = done.code
        assert status in (0, None), f"{command} -> {status}\n{out.getvalue()[-2000:]}"
    missing = [path for path in run.makes if not Path(path).exists()]
    assert not missing, f"{command} did not write {missing}"


def _params(slow: bool) -> list:
    seen, out = set(), []
    for key, block in _examples():
        run = RUN.get(key)
        if run is None or run.slow != slow or key in seen:
            continue  # a command on several pages runs once
        seen.add(key)
        marks = [pytest.mark.slow] if slow else []
        out.append(pytest.param(key, block, id=key, marks=marks))
    return out


def _check(key: str, block: Block, workdir: Path, monkeypatch) -> None:
    run = RUN[key]
    if block.language == "python":
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block.text, block.key, "exec"), {"__name__": "__main__"})
        return
    # The commands before it in its block come first (a merge needs its shards).
    for command in commands(block):
        if command == key:
            break
        if command in RUN and not RUN[command].slow:
            _run_command(command, RUN[command], monkeypatch)
    _run_command(key, run, monkeypatch)


@pytest.mark.parametrize("key, block", _params(slow=False))
def test_example_runs(key, block, workdir, monkeypatch):
    _check(key, block, workdir, monkeypatch)


@pytest.mark.parametrize("key, block", _params(slow=True))
def test_slow_example_runs(key, block, workdir, monkeypatch):
    _check(key, block, workdir, monkeypatch)


# Imported by the folder's code files only for inputs soundfile cannot read (m4a, a
# decoded datasets Audio item): the card need not ask every user for them.
OPTIONAL_FOR_REMOTE_CODE = {"torchcodec"}


def test_a_folder_card_names_what_its_code_needs_without_the_package():
    # A `trust_remote_code=True` user runs the folder's code files without this package:
    # each card's install line names every third-party module they import.
    import ast
    import sys

    from modeling_mscl.hub import HUB_CODE_FILES

    needed = set()
    for name in HUB_CODE_FILES:
        tree = ast.parse((REPO / "modeling_mscl" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                needed |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                needed.add(node.module.split(".")[0])
    needed -= set(sys.stdlib_module_names) | {"numpy"} | OPTIONAL_FOR_REMOTE_CODE
    assert {"torch", "transformers", "soundfile", "julius"} <= needed
    for card in sorted((REPO / "model_cards").glob("*.md")):
        install = " ".join(
            line for line in card.read_text(encoding="utf-8").splitlines() if "pip install" in line
        )
        missing = [
            module for module in sorted(needed - {"torch", "transformers"}) if module not in install
        ]
        assert not missing, f"{card.name}: its install line does not name {missing}"
