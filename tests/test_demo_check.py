"""The demo's cells against the study's ranges: ranges by hand, marks, inapplicable ranges."""

from __future__ import annotations

import json

import pytest

from modeling_mscl.demo_check import check_against_study, expected_from_scores, load_expected

SETTINGS = {
    "config": "demo.yaml",
    "num_songs": 200,
    "seconds": 30.0,
    "max_steps": 1200,
    "probe_windows": 8,
    "probe_seeds": 3,
}


def _entry(acc: float, r1: float | None = None) -> dict:
    entry = {"probes": {"notes_family": {"metrics": {"accuracy": acc}}}}
    if r1 is not None:
        entry["retrieval"] = {"sources": {"drums": {"recall": {"1": r1}}}}
    return entry


def _expected() -> dict:
    scores = {
        "MSCL|0|1200|1200": _entry(0.20, 0.40),
        "MSCL|1|1200|1200": _entry(0.30, 0.50),
        "MSCL|0|600|1200": _entry(0.90, 0.90),  # not the final checkpoint: left out
        "MSCL|0|2400|2400": _entry(0.90, 0.90),  # another run length: left out
        "log-mel statistics|0|0|0": _entry(0.50),
        "log-mel statistics|1|0|0": _entry(0.50),
    }
    return expected_from_scores(scores, {**SETTINGS, "extra": 1}, 1200)


def test_ranges_from_the_final_checkpoints_and_baselines():
    expected = _expected()
    assert expected["settings"] == SETTINGS
    assert expected["probes"]["MSCL"]["notes_family/accuracy"] == [
        pytest.approx(0.25),
        pytest.approx(0.05),
        2,
    ]
    assert expected["retrieval_recall_at_1"]["MSCL"]["drums"][:2] == [
        pytest.approx(0.45),
        pytest.approx(0.05),
    ]
    assert expected["probes"]["log-mel statistics"]["notes_family/accuracy"][1] == 0.0
    assert expected["num_seeds"] == {"MSCL": 2, "log-mel statistics": 2}


def test_cells_outside_mean_plus_minus_two_std_are_marked():
    expected = _expected()
    probes = {
        "MSCL": {"notes_family": {"metrics": {"accuracy": 0.34}}},  # range 15-35: inside
        "log-mel statistics": {"notes_family": {"metrics": {"accuracy": 0.499}}},  # std 0
    }
    retrieval = {"MSCL": {"sources": {"drums": {"recall": {"1": 0.60}}}}}  # 35-55: outside
    md, outside = check_against_study(probes, retrieval, SETTINGS, expected)
    assert outside == 2
    assert "| MSCL | 34.0 [15.0, 35.0] |" in md
    assert "| log-mel statistics | 49.9 [50.0, 50.0] **outside** |" in md
    assert "| MSCL | 60.0 [35.0, 55.0] **outside** |" in md
    assert "2 cell(s) outside" in md and "smoke test" in md


def test_ranges_for_other_settings_are_not_applied(tmp_path):
    expected = _expected()
    other = {**SETTINGS, "num_songs": 70, "config": "/somewhere/tiny.yaml"}
    md, outside = check_against_study({}, {}, other, expected)
    assert outside == 0 and "not checked" in md
    assert "num_songs 70 (ranges for 200)" in md and "config tiny.yaml" in md
    md, outside = check_against_study({}, {}, SETTINGS, None)
    assert outside == 0 and "No study ranges" in md
    assert load_expected(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_expected(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps(expected))
    assert load_expected(tmp_path / "ok.json") == json.loads(json.dumps(expected))


def test_approximate_ranges_are_checked_and_say_so():
    expected = _expected()
    expected["settings"]["num_songs"] = 300
    expected["approximate"] = "from a 300-song study."
    expected["retrieval_recall_at_1"] = {}
    probes = {"MSCL": {"notes_family": {"metrics": {"accuracy": 0.10}}}}
    retrieval = {"MSCL": {"sources": {"drums": {"recall": {"1": 0.60}}}}}
    md, outside = check_against_study(probes, retrieval, SETTINGS, expected)
    assert outside == 1 and "**outside**" in md
    assert "approximate: from a 300-song study." in md
    assert "num_songs 200 (ranges for 300)" in md and "| model |" not in md


def test_the_shipped_ranges_fit_the_demo():
    from modeling_mscl.demo import DemoSettings

    expected = load_expected()
    assert expected is not None
    demo = DemoSettings()
    settings = {k: getattr(demo, k) for k in SETTINGS}
    md, _ = check_against_study({}, {}, {**settings, "config": "demo.yaml"}, expected)
    # Either the study ran with the demo's settings, or the file says why it is close.
    assert "not checked" not in md
    for name in ("log-mel statistics", "random init", "COLA", "MSCL"):
        assert "notes_family/accuracy" in expected["probes"][name]
