"""Probe metrics of clip scores, computed by scikit-learn.

Single-label tasks: accuracy and per-class accuracy. Multi-label tasks: macro ROC-AUC
and PR-AUC (average precision) over the tags that have both positive and negative clips,
and per-tag values, None for a tag that has no ROC or precision-recall curve.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

__all__ = ["classification_metrics"]


def classification_metrics(
    scores: np.ndarray, labels: np.ndarray, multi_label: bool, label_names: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    """Probe metrics of clip-level ``scores`` (clips, classes) against ``labels``.

    Single-label: ``labels`` (clips,) class indices, the prediction is the arg-max of the
    scores; returns ``accuracy`` and per-class accuracy (the accuracy on the clips of that
    class, None for a class without clips). Multi-label: ``labels`` (clips, classes), a
    tag is present where its value is > 0; returns macro ``roc_auc`` and ``pr_auc``
    (average precision) over the tags with both positive and negative clips, and
    per-tag values (None for the others, which are left out of the means; the means are
    NaN when no tag qualifies).

    Returns ``(metrics, per_class)`` with ``per_class[metric][label_name]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[1] != len(label_names):
        raise ValueError(f"scores must be (clips, {len(label_names)}), got shape {scores.shape}")
    expected = scores.shape if multi_label else scores.shape[:1]
    if labels.shape != expected:
        raise ValueError(
            f"labels must have shape {expected} for scores of shape {scores.shape} "
            f"({'multi-hot tags' if multi_label else 'class indices'}), got {labels.shape}"
        )
    if not multi_label:
        if scores.shape[0] == 0:
            raise ValueError("accuracy of an empty set of clips is undefined")
        predictions = scores.argmax(axis=1)
        accuracy: dict[str, float | None] = {}
        for c, name in enumerate(label_names):
            members = labels == c
            accuracy[name] = (
                float(accuracy_score(labels[members], predictions[members]))
                if members.any()
                else None
            )
        return {"accuracy": float(accuracy_score(labels, predictions))}, {"accuracy": accuracy}
    roc_auc: dict[str, float | None] = {}
    pr_auc: dict[str, float | None] = {}
    for c, name in enumerate(label_names):
        positive = labels[:, c] > 0
        if positive.all() or not positive.any():
            roc_auc[name] = pr_auc[name] = None
            continue
        roc_auc[name] = float(roc_auc_score(positive, scores[:, c]))
        pr_auc[name] = float(average_precision_score(positive, scores[:, c]))
    metrics = {"roc_auc": _mean_of_scored(roc_auc), "pr_auc": _mean_of_scored(pr_auc)}
    return metrics, {"roc_auc": roc_auc, "pr_auc": pr_auc}


def _mean_of_scored(per_class: dict[str, float | None]) -> float:
    """Unweighted mean of the classes that have a value; NaN when none has."""
    scored = [v for v in per_class.values() if v is not None]
    return float(np.mean(scored)) if scored else float("nan")
