"""Scores of stem retrieval: ranks with ties, per-source results over draws, the table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .retrieval_draws import RetrievalPlan

__all__ = [
    "RetrievalResult",
    "SourceRetrieval",
    "rank_own_candidates",
    "retrieval_table",
]


def rank_own_candidates(logits: torch.Tensor, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1 = best) of the diagonal of square ``logits`` and recall@k per query.

    Ties count as a random tie-break would on average (:mod:`.retrieval` docstring, step 5).

    Returns:
        ``(ranks (n,), hits (len(ks), n))``: the expected rank and P(rank <= k) per query.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be square, got {tuple(logits.shape)}")
    logits = logits.double()
    if not torch.isfinite(logits).all():
        raise ValueError("the similarities are not all finite; the model cannot be ranked")
    own = logits.diagonal()[:, None]
    higher = (logits > own).sum(1).double()
    ties = (logits == own).sum(1).double() - 1.0  # the own candidate equals itself
    ranks = 1.0 + higher + ties / 2.0
    hits = torch.stack([((k - higher) / (ties + 1.0)).clamp(0.0, 1.0) for k in ks])
    return ranks.cpu().numpy(), hits.cpu().numpy()


@dataclass
class SourceRetrieval:
    """Retrieval of one source's stems from mixture crops (means over draws).

    Attributes:
        source: the source's name.
        num_queries: kept tracks = queries = candidates.
        num_candidates: candidates per query (one stem crop per kept track).
        skipped_tracks: evaluated tracks where the source is never present.
        recall: ``{k: recall@k}``, mean over draws.
        recall_std: ``{k: std over draws}``.
        mean_rank: mean rank (1 = best), mean over draws.
        mean_rank_std: its std over draws.
        median_rank: median rank, mean over draws.
        chance_recall: ``{k: k / candidates}``.
        chance_mean_rank: ``(candidates + 1) / 2``.
        draws: per draw ``{"recall": {k: ...}, "mean_rank": ..., "median_rank": ...}``.
    """

    source: str
    num_queries: int
    num_candidates: int
    skipped_tracks: int
    recall: dict[int, float]
    recall_std: dict[int, float]
    mean_rank: float
    mean_rank_std: float
    median_rank: float
    chance_recall: dict[int, float]
    chance_mean_rank: float
    draws: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RetrievalResult:
    """Stem retrieval of one model: per-source results and the protocol's settings."""

    model: str
    sources: dict[str, SourceRetrieval]
    protocol: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (recall keys as ``"1"``, ``"5"``..., NaN as None)."""
        return _jsonable(asdict(self))

    def mean_over_sources(self) -> dict[str, float]:
        """Unweighted mean over the sources with queries: ``recall@k`` and ``mean_rank``."""
        rows = [r for r in self.sources.values() if r.num_queries]
        if not rows:
            return {}
        out = {f"recall@{k}": float(np.mean([r.recall[k] for r in rows])) for k in rows[0].recall}
        out["mean_rank"] = float(np.mean([r.mean_rank for r in rows]))
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _summarise(
    source: str, plan: RetrievalPlan | None, per_draw: list[dict], ks: Sequence[int]
) -> SourceRetrieval:
    n = 0 if plan is None else len(plan)
    skipped = 0 if plan is None else len(plan.skipped)
    nan = float("nan")
    if not per_draw:
        return SourceRetrieval(
            source, 0, 0, skipped, {k: nan for k in ks}, {k: nan for k in ks}, nan, nan, nan,
            {k: nan for k in ks}, nan, [],
        )  # fmt: skip
    recall = {k: float(np.mean([d["recall"][k] for d in per_draw])) for k in ks}
    recall_std = {k: float(np.std([d["recall"][k] for d in per_draw])) for k in ks}
    ranks = [d["mean_rank"] for d in per_draw]
    return SourceRetrieval(
        source=source,
        num_queries=n,
        num_candidates=n,
        skipped_tracks=skipped,
        recall=recall,
        recall_std=recall_std,
        mean_rank=float(np.mean(ranks)),
        mean_rank_std=float(np.std(ranks)),
        median_rank=float(np.mean([d["median_rank"] for d in per_draw])),
        chance_recall={k: min(1.0, k / n) for k in ks},
        chance_mean_rank=(n + 1) / 2,
        draws=per_draw,
    )


# -------------------------------------------------------------------------------- table


def retrieval_table(
    results: Mapping[str, RetrievalResult] | Sequence[RetrievalResult],
    ks: Sequence[int] | None = None,
) -> str:
    """A markdown table: one row per (model, source), then the chance row of each source.

    Recall is in percent, ``mean +- std over draws``; ``n`` is the number of queries
    (= candidates), ``skipped`` the tracks without the source. The chance rows use the
    first result holding each source: compare models evaluated on the same tracks.
    """
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not items:
        return ""
    ks = tuple(ks) if ks is not None else tuple(items[0].protocol["ks"])
    head = ["model", "source", *[f"R@{k} (%)" for k in ks], "mean rank", "n", "skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
        if not math.isfinite(mean):
            return "-"
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"

    chance: dict[str, SourceRetrieval] = {}
    for result in items:
        for source, r in result.sources.items():
            cells = [fmt(r.recall.get(k, math.nan), r.recall_std.get(k, math.nan), 100) for k in ks]
            cells.append(fmt(r.mean_rank, r.mean_rank_std, digits=2))
            lines.append(
                f"| {result.model} | {source} | " + " | ".join(cells)
                + f" | {r.num_queries} | {r.skipped_tracks} |"
            )  # fmt: skip
            chance.setdefault(source, r)
    for source, r in chance.items():
        if not r.num_queries:
            continue
        cells = [f"{100 * min(1.0, k / r.num_candidates):.1f}" for k in ks]
        cells.append(f"{r.chance_mean_rank:.2f}")
        lines.append(
            f"| chance | {source} | "
            + " | ".join(cells)
            + f" | {r.num_queries} | {r.skipped_tracks} |"
        )
    return "\n".join(lines) + "\n"
