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
