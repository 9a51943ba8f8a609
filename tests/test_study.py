"""The seeded study: its summaries by hand, and one tiny end-to-end run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeling_mscl.study import StudySettings, first_step_reaching, run_study, summarise_over_seeds

REPO = Path(__file__).resolve().parents[1]


def test_summaries_over_seeds_by_hand():
    per_seed = [
        {"A": {"t": {"metrics": {"accuracy": 0.2}, "num_clips": {"test": 3}}}},
        {"A": {"t": {"metrics": {"accuracy": 0.4}, "num_clips": {"test": 3}}}},
    ]
    summary = summarise_over_seeds(per_seed)["A"]["t"]
    assert summary["metrics"]["accuracy"] == pytest.approx(0.3)
    assert summary["metrics_std"]["accuracy"] == pytest.approx(0.1)
    assert summary["num_seeds"] == 2 and summary["per_seed"][1] == {"accuracy": 0.4}
    curve = [{"step": 0, "m": 0.1}, {"step": 100, "m": 0.3}, {"step": 200, "m": 0.5}]
    assert first_step_reaching(curve, "m", 0.3) == 100
    assert first_step_reaching(curve, "m", 0.6) is None


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    settings = StudySettings(
        workdir=str(tmp_path / "study"),
        config=str(REPO / "scripts" / "configs" / "tiny.yaml"),
        # 10 songs per style: one test song of each, enough for the instrument tags to be
        # scored (with 4 test songs most tags are all-positive or all-negative: refused).
        num_songs=70,
        seconds=8.0,
        max_steps=4,
        probe_every=2,
        seeds=[0, 1],
        probe_windows=2,
        max_clips=24,
        convergence_clips=16,
    )
    payload = run_study(settings)
    work = tmp_path / "study"
    md = (work / "results.md").read_text()
    assert "2 pre-training seeds" in md and "Steering" in md and "chance" in md
    assert "- corpus_tempo accuracy: drums-only" in md
    assert (work / "convergence_bands.png").stat().st_size > 10_000
    saved = json.loads((work / "results.json").read_text())
    rows = set(saved["probes"])
    assert rows == {
        "log-mel statistics",
        "random init",
        "COLA",
        "MSCL",
        "MSCL drums",
        "MSCL vocals",
    }
    for task in ("notes_family", "corpus_genre", "corpus_instruments", "corpus_tempo"):
        assert saved["probes"]["MSCL"][task]["num_seeds"] == 2
    assert set(saved["retrieval"]) == {"random init", "COLA", "MSCL"}
    assert set(saved["retrieval"]["MSCL"]) == {"vocals", "drums", "bass", "other"}
    assert set(payload["convergence"]) == {"notes_family/accuracy", "corpus_genre/accuracy"}
    losses = payload["final_train_loss"]
    assert set(losses) == set(settings.objectives) and all(len(v) == 2 for v in losses.values())
