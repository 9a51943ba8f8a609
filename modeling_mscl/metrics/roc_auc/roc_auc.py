"""Multi-label ROC-AUC (area under the ROC curve per class, and its macro mean).

A local `evaluate` module (load it with ``evaluate.load(<this folder>)``), so metrics work
offline. Self-contained (numpy, datasets, evaluate) because `evaluate` copies the file
into its module cache. Computed through the rank-sum (Mann-Whitney) identity with
tied scores sharing their average rank, which equals the trapezoidal area scikit-learn's
``roc_auc_score`` integrates.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """ROC-AUC of each class of a multi-label problem and their unweighted (macro)
mean. A class whose references are all positive or all negative has no ROC curve: it is
left out of the mean and reported as None."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): scores, one row per example, one column per class.
    references (`list[list[int]]`): 0/1 multi-hot labels of the same shape.
Returns:
    roc_auc (`float`): macro mean over the scorable classes;
    per_class (`list[float | None]`); num_scored (`int`): classes in the mean.
"""


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array; tied values get the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of every run of equal values, and the run each position belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc_per_class(scores: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """ROC-AUC of every column of (n, C) `scores` against 0/1 `labels`; None if undefined."""
    out: list[float | None] = []
    for c in range(scores.shape[1]):
        positive = labels[:, c] > 0
        n_pos = int(positive.sum())
        n_neg = positive.size - n_pos
        if n_pos == 0 or n_neg == 0:
            out.append(None)
            continue
        rank_sum = average_ranks(scores[:, c])[positive].sum()
        out.append(float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)))
    return out


class RocAuc(evaluate.Metric):
    """Per-class and macro ROC-AUC for multi-label scores."""

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
        per_class = roc_auc_per_class(scores, labels)
        scored = [v for v in per_class if v is not None]
        return {
            "roc_auc": float(np.mean(scored)) if scored else float("nan"),
            "per_class": per_class,
            "num_scored": len(scored),
        }
