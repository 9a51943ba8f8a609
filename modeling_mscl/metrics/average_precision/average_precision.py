"""Multi-label average precision (PR-AUC) per class and its macro mean.

A local `evaluate` module (load it with ``evaluate.load(<this folder>)``), so metrics work
offline. Self-contained (numpy, datasets, evaluate) because `evaluate` copies the file
into its module cache. Same definition as scikit-learn's ``average_precision_score``:
the sum over distinct score thresholds, from the highest down, of the precision at that
threshold times the recall gained there (a step function, not a trapezoid).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Average precision of each class of a multi-label problem and their
unweighted (macro) mean, the "PR-AUC" of music auto-tagging papers. A class without
positive or without negative references is left out of the mean and reported as None."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): scores, one row per example, one column per class.
    references (`list[list[int]]`): 0/1 multi-hot labels of the same shape.
Returns:
    average_precision (`float`): macro mean over the scorable classes;
    per_class (`list[float | None]`); num_scored (`int`): classes in the mean.
"""


def average_precision_one(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of one class: 1-D scores, boolean positives (at least one)."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positive[order]
    # Tied scores form one threshold: only the last position of each run counts.
    last = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    true_pos = np.cumsum(hits)[last]
    precision = true_pos / (last + 1.0)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision_per_class(scores: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """Average precision of every column of (n, C) `scores`; None where undefined."""
    out: list[float | None] = []
    for c in range(scores.shape[1]):
        positive = labels[:, c] > 0
        if positive.all() or not positive.any():
            out.append(None)
        else:
            out.append(average_precision_one(scores[:, c], positive))
    return out


class AveragePrecision(evaluate.Metric):
    """Per-class and macro average precision for multi-label scores."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float64")),
                    "references": datasets.List(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references) -> dict:
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != labels.shape:
            raise ValueError(
                f"predictions and references must be (examples, classes) of the same shape, "
                f"got {scores.shape} and {labels.shape}"
            )
        per_class = average_precision_per_class(scores, labels)
        scored = [v for v in per_class if v is not None]
        return {
            "average_precision": float(np.mean(scored)) if scored else float("nan"),
            "per_class": per_class,
            "num_scored": len(scored),
        }
