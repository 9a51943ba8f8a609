"""The pre-training objectives, each defined once: how its pairs are built, whether its
crops are augmented, whether the loss sees which sources are present, and how a model
card describes it.

The sampler (:mod:`modeling_mscl.pairs`), the training loop (:mod:`modeling_mscl.training`,
:mod:`modeling_mscl.training_metrics`), the argument checks and the model card
(:mod:`modeling_mscl.hub`) look an objective up by name with :func:`get_objective`; none
of them branches on the names. A new objective is one :class:`Objective` passed to
:func:`register_objective` (before the arguments are parsed), for example::

    def bass_positives(sampler, rng):
        k = SOURCES.index("bass")
        rows = sampler.choose_rows(rng, len(sampler.present))
        return PositiveDraw(source=k, active=False, rows=rows, present=sampler.present[rows, k])

    register_objective(Objective("bass", draw=bass_positives, presence_mask=True, card=...))

Built in: ``cola`` (two crops of the mixture), ``mscl`` (a mixture crop and a crop of one
of its sources) and ``s3t`` (``cola`` with S3T augmentation of both crops).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Objective",
    "PositiveDraw",
    "get_objective",
    "objective_names",
    "register_objective",
]


class PositiveDraw(NamedTuple):
    """What an objective decides about one minibatch's positives (the crop offsets and
    the augmentation are drawn by the sampler after it, the same way for every objective).

    Attributes:
        source: index in :data:`~modeling_mscl.stems.SOURCES` of the positives' column,
            or -1 for a second crop of the mixture.
        active: True if the rows were drawn among chunks where that source is present.
        rows: `(batch_size,)` store rows.
        present: `(batch_size,)` bool, whether each row's positive source is present.
    """

    source: int
    active: bool
    rows: np.ndarray
    present: np.ndarray


# (sampler, rng) -> PositiveDraw; the sampler is a modeling_mscl.pairs.SourceBatchSampler.
DrawPositives = Callable[[Any, np.random.Generator], PositiveDraw]
# training arguments (the flat dict) -> (short name for a card's title, training sentence).
CardText = Callable[[Mapping[str, Any]], tuple[str, str]]


@dataclass(frozen=True)
class Objective:
    """One pre-training objective.

    Attributes:
        name: the value of ``--objective``.
        draw: ``(sampler, rng) -> PositiveDraw``: the source of the positives and the
            rows of one minibatch, drawn from ``rng`` (the sampler's stream for that step).
        card: ``(training arguments) -> (name, sentence)`` for the model card.
        uses_sources: the ``sources`` argument chooses the positives' columns (otherwise
            the sampler keeps none).
        presence_mask: the model is told which positives' sources are present (absent
            ones pick the null column), and ``absent_sources`` applies.
        augmented: both crops get the run's
            :class:`~modeling_mscl.augment.SpecAugmentation` (parameters drawn per pair).
    """

    name: str
    draw: DrawPositives
    card: CardText
    uses_sources: bool = False
    presence_mask: bool = False
    augmented: bool = False


_REGISTRY: dict[str, Objective] = {}


def register_objective(objective: Objective, replace: bool = False) -> Objective:
    """Make ``objective`` available under ``objective.name`` (``replace`` to redefine one)."""
    if not isinstance(objective, Objective):
        raise TypeError(f"expected an Objective, got {type(objective).__name__}")
    if objective.name in _REGISTRY and not replace:
        raise ValueError(f"an objective named {objective.name!r} is already registered")
    _REGISTRY[objective.name] = objective
    return objective


def objective_names() -> tuple[str, ...]:
    """The registered objectives' names, in registration order."""
    return tuple(_REGISTRY)


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; an unknown name raises the one error that
    lists the registered ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"objective={name!r} is invalid: expected one of {objective_names()} (a new "
            "objective is registered with modeling_mscl.objectives.register_objective)"
        ) from None


# ----------------------------------------------------------------------- the built-ins


def mixture_positives(sampler: Any, rng: np.random.Generator) -> PositiveDraw:
    """Rows drawn from all chunks, positives a second crop of the mixture."""
    rows = sampler.choose_rows(rng, len(sampler.present))
    return PositiveDraw(-1, True, rows, np.ones(sampler.batch_size, dtype=bool))


def source_positives(sampler: Any, rng: np.random.Generator) -> PositiveDraw:
    """One source drawn uniformly from the run's sources; with probability
    ``random_batch_prob`` a "random" minibatch (rows from all chunks), otherwise an
    "active" one (rows among the chunks where the source is present)."""
    source = int(sampler.source_index[rng.integers(len(sampler.source_index))])
    active = not bool(rng.random() < sampler.random_batch_prob)
    if active:
        pool = sampler.pools[source]
        rows = pool[sampler.choose_rows(rng, len(pool))]
    else:
        rows = sampler.choose_rows(rng, len(sampler.present))
    return PositiveDraw(source, active, rows, sampler.present[rows, source])


def _cola_card(args: Mapping[str, Any]) -> tuple[str, str]:
    return "COLA, the baseline of the MSCL paper", (
        "COLA instance discrimination: two crops of the same mixture form a positive "
        "pair; the other songs of the minibatch are the negatives."
    )


def _s3t_card(args: Mapping[str, Any]) -> tuple[str, str]:
    return "COLA with S3T-style augmentation, a baseline of the MSCL paper", (
        "COLA with S3T-style spectrogram augmentation (masking, shifting, warping) "
        "of the two mixture crops."
    )


def _mscl_card(args: Mapping[str, Any]) -> tuple[str, str]:
    sources = args.get("sources")
    names = ", ".join(str(s) for s in sources) if sources else "vocals, drums, bass, other"
    if sources and len(sources) == 1:
        name = f"single-source ({names}) multi-source contrastive learning (MSCL)"
    else:
        name = "multi-source contrastive learning (MSCL)"
    text = (
        f"MSCL: a crop of the mixture must pick a crop of one of its separated sources "
        f"({names}) among the sources of the other songs in the minibatch."
    )
    if args.get("absent_sources"):
        text += (
            " Minibatches may include songs where that source is absent; their anchors "
            "must pick a shared null column (the mean embedding of the all-zero inputs "
            "that stand in for the absent sources)."
        )
    return name, text


register_objective(Objective("cola", draw=mixture_positives, card=_cola_card))
register_objective(
    Objective("mscl", draw=source_positives, card=_mscl_card, uses_sources=True, presence_mask=True)
)
register_objective(Objective("s3t", draw=mixture_positives, card=_s3t_card, augmented=True))
