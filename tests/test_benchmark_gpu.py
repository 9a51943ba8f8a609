"""The GPU benchmark runs end to end in quick mode on the CPU and reports every figure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark_gpu.py"
# PYTHONPATH: this checkout's package, whatever an editable install elsewhere points to.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
FIGURES = {
    "train/fp32",
    "train/bf16",
    "train/channels_last",
    "train/channels_last_bf16",
    "train/channels_last_bf16_cudnn_benchmark",
    "train/compile_channels_last_bf16",
    "data/loader",
    "data/ratio",
    "logmel/call",
    "logmel/log_mel",
    "demucs/apply_model",
    "demucs/separate",
    "demucs/map_step",
    "demucs/separate_ratio",
    "demucs/map_step_ratio",
}


def test_quick_run_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert set(report["figures"]) == FIGURES
    for key, figure in report["figures"].items():
        assert math.isfinite(figure["value"]) and figure["value"] > 0, (key, figure)
    assert report["meta"]["quick"] is True and report["meta"]["device"] == "cpu"
    # The markdown table: a header and one row per figure, each with its value.
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| section | figure | value | unit | goal |"
    assert len(table) == 2 + len(FIGURES)
    for figure in report["figures"].values():
        assert any(f"| {figure['label']} |" in row for row in table), figure["label"]
    goals = [row for row in table if ">= " in row]
    assert len(goals) == 4 + 1 + 2  # four bf16 training variants, the data ratio, Demucs


def test_a_failed_measurement_is_reported_and_the_others_go_on(tmp_path):
    # Without the training section the data ratio has nothing to divide by: that figure
    # fails, the rest is measured, the failure is in the JSON and the table, exit status 1.
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)),
            *("--sections", "data", "logmel"),
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(report["errors"]) == {"data/ratio"}
    assert "no training variant" in report["errors"]["data/ratio"]["error"]
    assert set(report["figures"]) == {"data/loader", "logmel/call", "logmel/log_mel"}
    assert any(
        row.startswith("| data |") and "| failed |" in row for row in proc.stdout.splitlines()
    )


# Runs the benchmark as if datasets, pyarrow, soundfile and julius were not installed:
# every finder answers "no such module" for them, as on the GPU image (found-but-refused
# would not do: transformers asks importlib.util.find_spec whether soundfile exists).
_WITHOUT = """
import runpy, sys
HIDDEN = {"datasets", "pyarrow", "soundfile", "julius"}
class Hide:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    leaked = sorted({n.split(".")[0] for n in sys.modules} & HIDDEN)
    assert not leaked, leaked
"""


def test_the_benchmark_starts_without_its_optional_packages(tmp_path):
    help_run = subprocess.run(
        [sys.executable, "-c", _WITHOUT, str(SCRIPT), "--help"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr[-3000:]
    assert "--quick" in help_run.stdout
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-c", _WITHOUT, str(SCRIPT), "--device", "cpu", "--quick"),
            *("--out", str(out), "--sections", "train", "data", "logmel", "demucs"),
        ],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # The sections that need the missing packages fail, named; the others are measured.
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "== preflight" in proc.stdout and "pyarrow: missing pyarrow" in proc.stdout
    report = json.loads(out.read_text())
    assert {"train/fp32", "logmel/call", "logmel/log_mel"} <= set(report["figures"])
    assert set(report["errors"]) == {"data/loader", "demucs/apply_model", "data/ratio"}
    assert "missing datasets" in report["errors"]["data/loader"]["error"]
    for missing in ("soundfile", "julius"):
        assert f"missing {missing}" in report["errors"]["demucs/apply_model"]["error"]
    assert set(report["meta"]["preflight"]) == {"data", "demucs"}
