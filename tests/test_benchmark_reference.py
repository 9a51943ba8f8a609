"""The side-by-side benchmark against the TensorFlow reference (scripts/benchmark_reference.py).

The report's arithmetic and checks run everywhere (the script's top level imports only the
standard library). The ``--quick`` run needs TensorFlow: marked slow and skipped without
it, ``make test-tf`` runs it in .venv-tf.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_reference.py"
RATIOS = re.compile(r"ratios: train (\d+\.\d\d) infer (\d+\.\d\d) logmel (\d+\.\d\d)")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_benchmark_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(seconds: dict[str, list[float]], **overrides) -> dict:
    """One worker's result: the given seconds per call, everything else agreeing."""
    run = {
        "version": "x",
        "trainable": 10,
        "loss": 4.6,
        "embed_shape": [128, 512],
        "logmel_shape": [2998, 64],
        "logmel_mean": -6.0,
    }
    run.update(seconds, **overrides)
    return run


def test_ratio_is_our_throughput_over_tf(bench):
    args = argparse.Namespace(batch=128)
    # TF twice as slow per training step, twice as fast at inference; medians of medians.
    tf_runs = [
        _run({"train": [4.0, 4.0, 9.0], "infer": [1.0], "logmel": [0.1]}),
        _run({"train": [4.0], "infer": [1.0], "logmel": [0.1]}),
        _run({"train": [5.0], "infer": [1.0], "logmel": [0.1]}),
    ]
    ours = [_run({"train": [2.0], "infer": [2.0, 2.0, 0.1], "logmel": [0.05]})] * 3
    text = bench.report(tf_runs, ours, args)
    lines = text.splitlines()
    assert lines[0] == "| figure | TF reference | ours | ours / TF |"
    assert "| 32.0 (4.000 s) | 64.0 (2.000 s) | 2.00 |" in lines[2]
    assert lines[-1] == "ratios: train 2.00 infer 0.50 logmel 2.00"


def test_different_work_is_refused(bench):
    ok = {"train": [1.0], "infer": [1.0], "logmel": [1.0]}
    bench.check_same_work([_run(ok)], [_run(ok)])
    with pytest.raises(RuntimeError, match="log-mel means"):
        bench.check_same_work([_run(ok)], [_run(ok, logmel_mean=-5.0)])
    with pytest.raises(RuntimeError, match="trainable weights 10 \\(TF\\) vs 11"):
        bench.check_same_work([_run(ok)], [_run(ok, trainable=11)])
    with pytest.raises(RuntimeError, match="non-finite"):
        bench.check_same_work([_run(ok, loss=float("nan"))], [_run(ok)])


def test_busy_cores_is_a_share_of_the_machine(bench):
    load = bench.busy_cores(interval=0.2)
    assert 0.0 <= load <= (os.cpu_count() or 1) + 1e-6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--batch", "2"], "--batch must be >= 4"),
        (["--tf-python", "/nonexistent/python"], "/nonexistent/python: no such file"),
    ],
)
def test_bad_arguments_are_named(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_prints_the_table_and_the_ratios_line():
    pytest.importorskip("tensorflow")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tf-python", sys.executable],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "| figure | TF reference | ours | ours / TF |" in lines
    match = RATIOS.fullmatch(lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())


def test_profile_names_where_our_log_mel_time_goes():
    # Our side only, no TensorFlow needed; a process of its own, since the work sets
    # torch's thread count.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--profile", "logmel", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("USDT")]
    assert lines[0].startswith("logmel: median ") and "s per call unprofiled" in lines[0]
    rows = [line for line in lines if line.startswith("| aten::")]
    assert any("aten::_fft_r2c" in row for row in rows), rows
    shares = [float(row.split("|")[2].strip().rstrip(" %")) for row in rows]
    assert shares == sorted(shares, reverse=True)
    assert 0 < sum(shares) <= 100.05
