"""The demo's cells against the ranges the seeded study expects for the demo's settings.

The study (``mscl budget-curve``: the demo's pre-training repeated over seeds, each final
encoder probed with the demo's head seeds and scored on stem retrieval in the demo's
batch-norm regime) gives each cell a mean and a standard deviation over pre-training
seeds. A demo cell outside mean ± 2 std is marked: on another machine the last digits of
the demo move, but a cell far outside the study's spread says something else changed.

The ranges ship as ``demo_expected.json`` beside the run configs, with the settings they
hold for; other settings get no ranges rather than wrong ones, unless the file says why
its ranges are an approximation for them (``"approximate"``), which the check then prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .package_data import resource_dir

__all__ = ["EXPECTED_FILE", "check_against_study", "expected_from_scores", "load_expected"]

EXPECTED_FILE = "demo_expected.json"

# The demo settings a range depends on: any other value makes the ranges inapplicable.
SETTINGS_KEYS = ("config", "num_songs", "seconds", "max_steps", "probe_windows", "probe_seeds")


def load_expected(path: str | Path | None = None) -> dict[str, Any] | None:
    """The shipped ranges (or those of ``path``); None when there is no such file."""
    file = Path(path) if path is not None else resource_dir("configs") / EXPECTED_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err


def expected_from_scores(
    scores: dict[str, Any], settings: dict[str, Any], max_steps: int
) -> dict[str, Any]:
    """Ranges from the budget curve's ``scores`` (``"name|seed|budget|run steps"``): the
    final checkpoints of the ``max_steps``-step runs and the baselines, per seed."""
    probes: dict[str, dict[str, list[float]]] = {}
    retrieval: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, set[str]] = {}
    for key, entry in scores.items():
        name, seed, budget, steps = key.split("|")
        if not (int(steps) == 0 or (int(steps) == max_steps and int(budget) == max_steps)):
            continue
        seeds.setdefault(name, set()).add(seed)
        for task, result in entry["probes"].items():
            for metric, value in result["metrics"].items():
                probes.setdefault(name, {}).setdefault(f"{task}/{metric}", []).append(value)
        for source, result in entry.get("retrieval", {}).get("sources", {}).items():
            value = result["recall"]["1"]
            if value is not None:
                retrieval.setdefault(name, {}).setdefault(source, []).append(value)

    def stats(table: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        return {
            name: {k: [float(np.mean(v)), float(np.std(v)), len(v)] for k, v in cells.items()}
            for name, cells in table.items()
        }

    return {
        "settings": {k: settings[k] for k in SETTINGS_KEYS},
        "num_seeds": {name: len(v) for name, v in seeds.items()},
        "probes": stats(probes),
        "retrieval_recall_at_1": stats(retrieval),
    }


def _applies(expected: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The settings that differ from those of the ranges (empty: the ranges apply)."""
    wanted = expected.get("settings", {})
    differ = []
    for key in SETTINGS_KEYS:
        mine, theirs = settings.get(key), wanted.get(key)
        if key == "config":
            mine, theirs = Path(str(mine)).name, Path(str(theirs)).name
        if mine != theirs:
            differ.append(f"{key} {mine} (ranges for {theirs})")
    return differ


def _row(label: str, cells: list[tuple[str, float | None, list[float] | None]]) -> tuple:
    shown, outside = [], 0
    for _, value, band in cells:
        if value is None or band is None or (isinstance(value, float) and math.isnan(value)):
            shown.append("-" if value is None else f"{100 * value:.1f}")
            continue
        mean, std = band[0], band[1]
        low, high = mean - 2 * std, mean + 2 * std
        out = not low - 1e-9 <= value <= high + 1e-9
        outside += out
        mark = " **outside**" if out else ""
        shown.append(f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]{mark}")
    return f"| {label} | " + " | ".join(shown) + " |", outside


def check_against_study(
    probes: dict[str, dict[str, Any]],
    retrieval: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    expected: dict[str, Any] | None,
) -> tuple[str, int]:
    """Markdown tables of the demo's cells, each with its study range [mean ± 2 std] and
    marked when outside; returns ``(markdown, number of cells outside)``.

    ``probes[encoder][task]`` as :func:`~modeling_mscl.demo.probe_encoders` returns them;
    ``retrieval[model]`` the ``to_dict()`` of a retrieval result.
    """
    if expected is None:
        return "No study ranges are shipped: nothing to check the cells against.\n", 0
    differ = _applies(expected, settings)
    approximate = expected.get("approximate")
    if differ and not approximate:
        return (
            "The study's ranges hold for other settings (" + "; ".join(differ) + "): the "
            "cells are not checked.\n",
            0,
        )
    outside = 0
    ranges = expected["probes"]
    metrics = sorted({m for cells in ranges.values() for m in cells})
    lines = [
        "| encoder | " + " | ".join(metrics) + " |",
        "|---" * (1 + len(metrics)) + "|",
    ]
    for encoder, tasks in probes.items():
        cells = []
        for metric in metrics:
            task, _, name = metric.rpartition("/")
            value = tasks.get(task, {}).get("metrics", {}).get(name)
            cells.append((metric, value, ranges.get(encoder, {}).get(metric)))
        line, n = _row(encoder, cells)
        lines.append(line)
        outside += n
    r_ranges = expected.get("retrieval_recall_at_1") or {}
    sources = sorted({s for cells in r_ranges.values() for s in cells})
    if sources:
        lines += ["", "| model | " + " | ".join(sources) + " |"]
        lines.append("|---" * (1 + len(sources)) + "|")
    for model, result in retrieval.items() if sources else ():
        cells = []
        for source in sources:
            value = result.get("sources", {}).get(source, {}).get("recall", {}).get("1")
            cells.append((source, value, r_ranges.get(model, {}).get(source)))
        line, n = _row(model, cells)
        lines.append(line)
        outside += n
    seeds = expected.get("num_seeds", {})
    head = (
        f"Each cell against the range the study expects for these settings, [mean - 2 std, "
        f"mean + 2 std] over {max(seeds.values(), default=0)} pre-training seeds "
        f"({expected.get('source', 'the seeded study')}); {outside} cell(s) outside. The "
        f"demo is a smoke test: its last digits vary by machine.\n\n"
    )
    if differ:
        head += (
            f"These ranges are approximate: {approximate} Settings that differ: "
            + "; ".join(differ)
            + ".\n\n"
        )
    return head + "\n".join(lines) + "\n", outside
