"""Fault injection: SIGKILL at random moments, then the same command again.

Pre-training and the stems map step are killed at a random time (a seeded draw over the
span of an uninterrupted run, so a kill may land before the first checkpoint, inside one,
during the final save or after the end) and run again until they finish. The result must
be bit-identical to an uninterrupted run's. Slow: each case starts a few processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from modeling_mscl.audio_io import write_audio
from modeling_mscl.chunk_set import load_chunk_set, save_chunk_set
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import synthetic_chunk_dataset
from modeling_mscl.stems import SOURCES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "scripts" / "configs" / "tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# The scripts/ shims import this checkout's package, whatever else is installed.
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
SEEDS = [0, 1, 2]


def _run(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _kill_at(argv: list[str], seconds: float) -> None:
    """Start ``argv`` and SIGKILL it after ``seconds`` (or let it end first)."""
    proc = _run(argv)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _finish(argv: list[str]) -> str:
    log, _ = (proc := _run(argv)).communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    return log


# ------------------------------------------------------------------------ pre-training


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    """The chunk data, the command and an uninterrupted run: (argv maker, weights, seconds)."""
    root = tmp_path_factory.mktemp("faults")
    data = root / "chunks"
    chunks = synthetic_chunk_dataset(num_tracks=8, chunks_per_track=4, seed=0)
    save_chunk_set(chunks, data, MSCLFeatureExtractor())

    def argv(out: Path, *extra: str) -> list[str]:
        common = ("--max_steps", "6", "--checkpoint_every", "1", "--eval_every", "3")
        return [
            sys.executable, str(REPO / "scripts" / "pretrain.py"), "--config", TINY,
            "--data_dir", str(data), "--output_dir", str(out), *common, *extra,
        ]  # fmt: skip

    started = time.perf_counter()
    _finish(argv(root / "whole"))
    seconds = time.perf_counter() - started
    return argv, load_file(root / "whole" / "pretraining" / "model.safetensors"), seconds


@pytest.mark.parametrize("seed", SEEDS)
def test_pretraining_killed_at_a_random_moment_resumes_bit_identical(pretraining, tmp_path, seed):
    argv, want, seconds = pretraining
    out = tmp_path / "run"
    moment = float(np.random.default_rng(seed).uniform(0.3, 1.1) * seconds)
    _kill_at(argv(out), moment)
    # The same command with --resume: from the last complete checkpoint, or from scratch.
    _finish(argv(out, "--resume", "true"))
    got = load_file(out / "pretraining" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), (name, moment)
    assert not list(out.rglob(".tmp-*")), "a temporary folder outlived the run"


# ---------------------------------------------------------------------- the map step

_MAP_STEP = textwrap.dedent(
    """
    import sys
    from datasets import load_from_disk
    from modeling_mscl.chunks import prepare_chunks
    from modeling_mscl.stems import OracleSeparator
    tracks = load_from_disk(sys.argv[1])
    prepare_chunks(tracks, OracleSeparator(), sys.argv[2], shard_size=1, progress=False)
    """
)


@pytest.fixture(scope="module")
def map_step(tmp_path_factory):
    root = tmp_path_factory.mktemp("map")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        n = 16000 * (5 + i)
        stems = {s: (0.1 * rng.standard_normal(n)).astype(np.float32) for s in SOURCES}
        row = {"track_id": f"t{i}"}
        for name, wav in {**stems, "mixture": sum(stems.values())}.items():
            path = root / f"t{i}" / f"{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, wav, 16000)
            row["audio" if name == "mixture" else name] = str(path)
        rows.append(row)
    Dataset.from_list(rows).save_to_disk(str(root / "tracks"))

    def argv(out: Path) -> list[str]:
        return [sys.executable, "-c", _MAP_STEP, str(root / "tracks"), str(out)]

    started = time.perf_counter()
    _finish(argv(root / "whole"))
    return argv, load_chunk_set(root / "whole").data, time.perf_counter() - started


@pytest.mark.parametrize("seed", SEEDS)
def test_map_step_killed_at_a_random_moment_resumes_identical(map_step, tmp_path, seed):
    argv, want, seconds = map_step
    out = tmp_path / "chunks"
    moment = float(np.random.default_rng(100 + seed).uniform(0.3, 1.1) * seconds)
    _kill_at(argv(out), moment)
    _finish(argv(out))
    got = load_chunk_set(out).data
    assert got["track_id"][:] == want["track_id"][:]
    for column in ("mixture", *SOURCES, "present"):
        np.testing.assert_array_equal(
            np.asarray(got.with_format("numpy")[column][:]),
            np.asarray(want.with_format("numpy")[column][:]),
            err_msg=f"{column} (killed at {moment:.1f} s)",
        )
