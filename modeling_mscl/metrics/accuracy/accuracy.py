"""Accuracy of single-label predictions, with per-class accuracy (recall) on request.

A local `evaluate` module (load it with ``evaluate.load(<this folder>)``), so metrics work
offline: the Hub's metric scripts cannot be fetched without a network. Self-contained
(numpy, datasets, evaluate) because `evaluate` copies the file into its module cache.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Fraction of predictions equal to the reference class. With `num_classes`,
also the accuracy within each reference class (its recall), None for classes absent from
the references."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class indices.
    references (`list[int]`): true class indices.
    num_classes (`int`, *optional*): when given, also return `per_class`.
Returns:
    accuracy (`float`), and `per_class` (`list[float | None]`) with `num_classes`.
"""


class Accuracy(evaluate.Metric):
    """Single-label accuracy."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes: int | None = None) -> dict:
        pred = np.asarray(predictions, dtype=np.int64)
        ref = np.asarray(references, dtype=np.int64)
        if pred.size == 0:
            raise ValueError("accuracy of an empty set is undefined")
        out: dict = {"accuracy": float(np.mean(pred == ref))}
        if num_classes is not None:
            per_class: list[float | None] = []
            for c in range(int(num_classes)):
                members = ref == c
                per_class.append(float(np.mean(pred[members] == c)) if members.any() else None)
            out["per_class"] = per_class
        return out
