"""Local `evaluate` metric modules for the probes, usable offline.

``evaluate.load("accuracy")`` fetches its script from the Hub, which fails offline; the
modules here live in the package (one folder each, loadable with ``evaluate.load(path)``)
and are checked against scikit-learn in the tests:

* ``accuracy``: single-label accuracy and per-class accuracy;
* ``roc_auc``: multi-label macro ROC-AUC and per-class ROC-AUC;
* ``average_precision``: multi-label macro average precision (PR-AUC) and per class.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("accuracy", "roc_auc", "average_precision")

__all__ = ["METRICS_DIR", "METRIC_NAMES", "classification_metrics", "load_metric", "metric_path"]


def metric_path(name: str) -> str:
    """Folder of the local metric module ``name`` (one of :data:`METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose from {METRIC_NAMES}")
    return str(METRICS_DIR / name)


@cache
def load_metric(name: str) -> Any:
    """``evaluate.load`` of a local metric module, kept in memory (no cache files written)."""
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)


def classification_metrics(
    scores: np.ndarray, labels: np.ndarray, multi_label: bool, label_names: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    """Probe metrics of clip-level ``scores`` (clips, classes) against ``labels``.

    Single-label: ``labels`` (clips,) class indices, the prediction is the arg-max of the
    scores; returns ``accuracy`` and per-class accuracy. Multi-label: ``labels`` (clips,
    classes) 0/1; returns macro ``roc_auc`` and ``pr_auc`` (average precision) over the
    classes that have both positives and negatives, and per-class values (None for a
    class without positives or without negatives, left out of the means).

    Returns ``(metrics, per_class)`` with ``per_class[metric][label_name]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(label_names):
        raise ValueError(f"scores must be (clips, {len(label_names)}), got shape {scores.shape}")
    if not multi_label:
        labels = np.asarray(labels, dtype=np.int64)
        out = load_metric("accuracy").compute(
            predictions=scores.argmax(axis=1),
            references=labels,
            num_classes=len(label_names),
        )
        per_class = {"accuracy": dict(zip(label_names, out["per_class"], strict=True))}
        return {"accuracy": out["accuracy"]}, per_class
    labels = np.asarray(labels, dtype=np.int64)
    auc = load_metric("roc_auc").compute(predictions=scores, references=labels)
    ap = load_metric("average_precision").compute(predictions=scores, references=labels)
    metrics = {
        "roc_auc": auc["roc_auc"],
        "pr_auc": ap["average_precision"],
    }
    per_class = {
        "roc_auc": dict(zip(label_names, auc["per_class"], strict=True)),
        "pr_auc": dict(zip(label_names, ap["per_class"], strict=True)),
    }
    return metrics, per_class
