"""The pre-training budget curve: its summary by hand, and one tiny end-to-end run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling_mscl.budget_curve import (
    BudgetCurveSettings,
    checkpoint_model,
    plot_budget_curve,
    report,
    run_budget_curve,
    summarise,
)
from modeling_mscl.probing import load_pretraining_model

REPO = Path(__file__).resolve().parents[1]


def _entry(acc: float, r1: float | None) -> dict:
    probes = {"notes_family": {"metrics": {"accuracy": acc}, "num_clips": {"test": 7}}}
    entry = {"probes": probes}
    if r1 is not None:
        sources = {"drums": {"recall": {"1": r1}, "num_queries": 5}}
        entry["retrieval"] = {"sources": sources}
    return entry


def test_summary_over_seeds_and_table_by_hand(tmp_path):
    scores = {
        "MSCL|0|10|20": _entry(0.2, 0.4),
        "MSCL|1|10|20": _entry(0.4, 0.6),
        "MSCL|0|20|20": _entry(0.5, 0.8),
        "MSCL|0|40|40": _entry(0.6, 0.9),
        "log-mel statistics|0|0|0": _entry(0.45, None),
    }
    summary = summarise(scores)
    mean, std, n = summary["MSCL", 20][10]["notes_family/accuracy"]
    assert (mean, std, n) == (pytest.approx(0.3), pytest.approx(0.1), 2)
    assert summary["MSCL", 20][10]["retrieval/recall_at_1"][0] == pytest.approx(0.5)
    assert summary["MSCL", 20][20]["notes_family/accuracy"][2] == 1
    assert summary["MSCL", 40][40]["notes_family/accuracy"][0] == pytest.approx(0.6)
    # One seed: the spread over its probe heads stands for the std.
    scores["MSCL|0|40|40"]["probes"]["notes_family"]["metrics_std"] = {"accuracy": 0.02}
    assert summarise(scores)["MSCL", 40][40]["notes_family/accuracy"][1] == 0.02
    # No retrieval for the spectral baseline: no column value, not a zero.
    assert "retrieval/recall_at_1" not in summary["log-mel statistics", 0][0]
    settings = BudgetCurveSettings(max_steps=20, budgets=[10, 20], seeds=[0, 1], long_steps=40)
    md = report(settings, summary, scores, 60)
    assert "| MSCL | 20 | 10 | 30.0 ± 10.0 (2) |" in md
    assert "| MSCL | 40 | 40 | 60.0 ± 0.0 (1) |" in md
    assert "| log-mel statistics | - | - | 45.0 ± 0.0 (1) |" in md
    assert "notes_family 7" in md and "'drums': 5" in md
    plot_budget_curve(summary, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_budgets_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="budgets must be positive"):
        run_budget_curve(BudgetCurveSettings(workdir=str(tmp_path), budgets=[0, 4]))
    with pytest.raises(FileNotFoundError, match="no scores to report"):
        run_budget_curve(BudgetCurveSettings(workdir=str(tmp_path), report_only=True))
    with pytest.raises(ValueError, match="at most max_steps"):
        run_budget_curve(BudgetCurveSettings(workdir=str(tmp_path), max_steps=4, budgets=[8]))


def test_checkpoint_model_refuses_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        checkpoint_model(tmp_path, tmp_path)


@pytest.mark.slow
def test_tiny_budget_curve_end_to_end(tmp_path):
    settings = BudgetCurveSettings(
        workdir=str(tmp_path / "curve"),
        config=str(REPO / "scripts" / "configs" / "tiny.yaml"),
        # As the tiny study: one test song per style, enough to score instrument tags.
        num_songs=70,
        seconds=8.0,
        max_steps=4,
        budgets=[2, 4],
        seeds=[0],
        long_steps=6,
        long_seeds=[0],
        probe_every=2,
        probe_windows=2,
        probe_seeds=2,
        max_clips=24,
    )
    payload = run_budget_curve(settings)
    work = tmp_path / "curve"
    saved = json.loads((work / "results.json").read_text())["scores"]
    assert set(saved) == {
        "COLA|0|2|4",
        "COLA|0|4|4",
        "MSCL|0|2|4",
        "MSCL|0|4|4",
        "COLA|0|6|6",
        "MSCL|0|6|6",
        "random init|0|0|0",
        "log-mel statistics|0|0|0",
    }
    sources = {"vocals", "drums", "bass", "other"}
    assert set(saved["MSCL|0|2|4"]["retrieval"]["sources"]) == sources
    assert set(saved["random init|0|0|0"]["retrieval"]["sources"]) == sources
    assert "retrieval" not in saved["log-mel statistics|0|0|0"]
    for task in ("notes_family", "corpus_genre", "corpus_instruments", "corpus_tempo"):
        assert task in saved["COLA|0|4|4"]["probes"]
    assert (work / "budget_curve.png").stat().st_size > 10_000
    assert "| MSCL | 4 | 2 |" in payload["markdown"]
    assert "| COLA | 6 | 6 |" in payload["markdown"]
    # The demo's convergence probes ran along the way.
    assert (work / "runs" / "cola-4-seed0" / "probes.jsonl").is_file()
    # The last checkpoint is the saved final model; the first one is not.
    run = work / "runs" / "mscl-4-seed0"
    final = load_pretraining_model(run).state_dict()
    last = checkpoint_model(run / "checkpoints" / "step-0000004", run / "pretraining")
    first = checkpoint_model(run / "checkpoints" / "step-0000002", run / "pretraining")
    assert all(torch.equal(v, final[k]) for k, v in last.state_dict().items())
    assert not all(torch.equal(v, final[k]) for k, v in first.state_dict().items())
    # A second run reuses every run and every score.
    again = run_budget_curve(settings)
    assert again["summary"] == payload["summary"]
    # --score_only scores what the runs saved, without training.
    path = work / "results.json"
    saved_all = json.loads(path.read_text())
    del saved_all["scores"]["MSCL|0|2|4"]
    path.write_text(json.dumps(saved_all))
    settings.score_only = True
    run_budget_curve(settings)
    assert "MSCL|0|2|4" in json.loads(path.read_text())["scores"]
    settings.score_only = False
    settings.report_only = True
    assert (
        run_budget_curve(settings)["markdown"].split("\n")[2:]
        == payload["markdown"].split("\n")[2:]
    )
    # The demo's ranges come from the final checkpoints of the demo-length runs.
    expected = json.loads((work / "demo_expected.json").read_text())
    assert expected["settings"]["max_steps"] == 4 and expected["num_seeds"]["COLA"] == 1
    assert set(expected["retrieval_recall_at_1"]) == {"COLA", "MSCL", "random init"}
