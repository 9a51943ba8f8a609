"""Zero-shot stem retrieval: the task MSCL pre-training optimises, measured on held-out songs.

Protocol (per source k, per draw d; everything drawn from ``numpy.random.default_rng([seed,
k, d])`` with k the index of the source in :data:`~modeling_mscl.stems.SOURCES`, so a
result depends only on the seed, the evaluated tracks and the model):

1. Evaluated tracks: the distinct ``track_id`` of the evaluated chunks, sorted (optionally
   restricted to ``tracks``, then to ``max_tracks`` of them drawn once from the seed, the
   same songs for every source and draw).
2. A track where source k is present in no chunk is skipped for k (and counted).
3. For every other track: one chunk drawn uniformly among its chunks where k is present
   (in store order), a random 98-frame mixture crop of it (the *query*) and a random
   98-frame crop of its stem k at an independent offset (its *positive*), as in training.
4. Candidates: the positives of all kept tracks (one per track, the own one included).
   Query i's logits are ``model.similarity(h(query_i), h(candidates))`` with ``h`` the
   pre-trained model's own encoder + projection (``model.mscl(x).audio_embeds``).
5. Rank of the own positive: 1 + (candidates scoring strictly higher) + half the other
   candidates with an exactly equal score. Ties are thus counted as a uniformly random
   tie-break would on average, and recall@k is that tie-break's probability
   ``clip((k - higher) / (ties + 1), 0, 1)``: a constant (collapsed) model scores chance,
   not 1 or 0. Non-finite scores raise an error.
6. Per draw: recall@k (mean over queries), mean and median rank. Reported: the mean over
   the ``draws`` draws, with the standard deviation across draws. Chance: recall@k =
   k / candidates, mean rank = (candidates + 1) / 2.

Batch norm (``bn_regime``): ``"running"`` embeds in eval mode with the model's running
statistics, which is what any user of the saved model gets. ``"recalibrated"`` first
replaces them by the average batch statistics of training-like minibatches of the
*training* counterpart of the evaluated tracks (:func:`calibration_windows`, through
:func:`~modeling_mscl.probing.recalibrate_batch_norm` on a copy of the encoder): each
minibatch holds ``calibration_pairs`` mixture crops and as many crops of one source where
it is present (sources in turn), concatenated as training concatenates anchors and
positives. This matters for a model early in training or freshly initialised, whose
running statistics lag behind what training mode computes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..chunk_set import CROP_FRAMES, MIXTURE, ChunkSet, ChunkStore, load_chunk_set
from ..configuration_mscl import MSCLConfig
from ..modeling_mscl import MSCLForPreTraining
from ..pairs import holdout_mask
from ..stems import SOURCES

__all__ = [
    "BN_REGIMES",
    "RetrievalPlan",
    "RetrievalResult",
    "SourceRetrieval",
    "calibration_windows",
    "load_pretraining_model",
    "open_retrieval_data",
    "random_init_model",
    "rank_own_candidates",
    "retrieval_plan",
    "retrieval_table",
    "stem_retrieval",
]

BN_REGIMES = ("running", "recalibrated")
# Random streams outside the per-source ones (0..3): the track subset and the calibration.
_TRACK_STREAM = 1000
_CALIBRATION_STREAM = 1001


# ------------------------------------------------------------------------------- models


def load_pretraining_model(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> MSCLForPreTraining:
    """The full :class:`~modeling_mscl.MSCLForPreTraining` saved in ``path``.

    ``path`` is the ``pretraining/`` folder written at the end of training, or the run's
    output folder holding it. A folder without the similarity weights (the ``encoder/``
    folder, an :class:`~modeling_mscl.MSCLModel`) is refused: loading it would silently
    give a random similarity matrix.
    """
    folder = Path(path).expanduser()
    if (folder / "pretraining" / "config.json").is_file():
        folder = folder / "pretraining"
    model, info = MSCLForPreTraining.from_pretrained(str(folder), output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"{folder} does not hold a full MSCLForPreTraining (missing {missing[:4]}); "
            "stem retrieval needs the projection and the similarity: use the run's "
            "pretraining/ folder, not encoder/"
        )
    if device is not None:
        model.to(device)
    return model.eval()


def random_init_model(
    config: MSCLConfig | MSCLForPreTraining | str | os.PathLike, seed: int = 0
) -> MSCLForPreTraining:
    """A freshly initialised :class:`~modeling_mscl.MSCLForPreTraining` (the baseline row).

    ``config`` is a config, a model whose config to copy, or a folder / JSON file of one.
    The global torch RNG is left untouched.
    """
    if isinstance(config, nn.Module):
        config = config.config
    elif not isinstance(config, MSCLConfig):
        config = MSCLConfig.from_pretrained(str(config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MSCLForPreTraining(config)
    return model.eval()


# --------------------------------------------------------------------------------- data


def open_retrieval_data(
    data: ChunkStore | Any,
    split: str | None = None,
    holdout_fraction: float | None = None,
    calibration_split: str | None = "train",
) -> tuple[ChunkStore, ChunkStore | None]:
    """The evaluated chunks and, when known, their training counterpart (for calibration).

    Args:
        data: a :class:`~modeling_mscl.chunk_set.ChunkStore`, a chunk ``Dataset`` or
            ``DatasetDict``, a :class:`~modeling_mscl.chunk_set.ChunkSet` or its folder.
        split: the evaluated split of a ``DatasetDict`` (required for one).
        holdout_fraction: evaluate only the tracks that training's ``validation_fraction``
            holds out (the same hash of ``track_id``, :func:`~modeling_mscl.pairs.holdout_mask`);
            the other tracks become the training counterpart.
        calibration_split: the split of a ``DatasetDict`` used as training counterpart.

    Returns:
        ``(evaluated store, training-counterpart store or None)``.
    """
    from datasets import Dataset, DatasetDict

    fe = None
    if isinstance(data, str | os.PathLike):
        data = load_chunk_set(data)
    if isinstance(data, ChunkSet):
        data, fe = data.data, data.feature_extractor
    calibration = None
    if isinstance(data, DatasetDict):
        if split is None or split not in data:
            raise ValueError(
                f"the chunk dataset holds splits {sorted(data)}; pick one (got {split!r})"
            )
        if calibration_split and calibration_split != split and calibration_split in data:
            if len(data[calibration_split]):
                calibration = ChunkStore(data[calibration_split], fe)
        store = ChunkStore(data[split], fe)
    elif isinstance(data, Dataset):
        store = ChunkStore(data, fe)
    elif isinstance(data, ChunkStore):
        store = data
    else:
        raise TypeError(f"expected a ChunkStore, a chunk dataset or its folder, got {type(data)}")
    if holdout_fraction is not None:
        held = holdout_mask(store.track_ids(), holdout_fraction)
        if not held.any():
            raise ValueError(f"holdout_fraction={holdout_fraction} holds out no track")
        if calibration is None and not held.all():
            calibration = store.subset(np.flatnonzero(~held))
        store = store.subset(np.flatnonzero(held))
    return store, calibration


def _evaluated_tracks(
    store: ChunkStore, tracks: Iterable[str] | None, max_tracks: int | None, seed: int
) -> np.ndarray:
    """Sorted track ids to evaluate (see the module docstring, step 1)."""
    available = np.unique(store.track_ids().astype(str))
    if tracks is not None:
        wanted = np.unique(np.asarray(list(tracks), dtype=str))
        unknown = np.setdiff1d(wanted, available)
        if unknown.size:
            raise ValueError(f"{unknown.size} requested tracks are not in the data: {unknown[:5]}")
        available = wanted
    if max_tracks is not None and len(available) > max_tracks:
        if max_tracks < 1:
            raise ValueError(f"max_tracks must be >= 1, got {max_tracks}")
        rng = np.random.default_rng([seed, _TRACK_STREAM])
        available = np.sort(rng.choice(available, size=max_tracks, replace=False))
    return available


@dataclass(frozen=True)
class RetrievalPlan:
    """The crops of one (source, draw): query i is track ``track_ids[i]``.

    Attributes:
        source: the source's name.
        track_ids: `(n,)` kept tracks, sorted.
        rows: `(n,)` store row of each track's chunk (the source is present there).
        query_offsets: `(n,)` first frame of each mixture crop.
        positive_offsets: `(n,)` first frame of each stem crop (independent of the query's).
        skipped: tracks where the source is present in no chunk.
    """

    source: str
    track_ids: np.ndarray
    rows: np.ndarray
    query_offsets: np.ndarray
    positive_offsets: np.ndarray
    skipped: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rows)


def retrieval_plan(
    store: ChunkStore, source: str, tracks: Sequence[str], seed: int = 0, draw: int = 0
) -> RetrievalPlan:
    """Draw the queries and candidates of ``source`` over ``tracks`` (module docstring, 2-3)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    k = SOURCES.index(source)
    ids = store.track_ids().astype(str)
    present = store.present[:, k]
    kept, rows_per_track, skipped = [], [], []
    # Present rows grouped by track (store order within a track), in one pass.
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    for track in np.asarray(tracks, dtype=str):
        lo, hi = (
            np.searchsorted(sorted_ids, track, "left"),
            np.searchsorted(sorted_ids, track, "right"),
        )
        rows = order[lo:hi]
        rows = rows[present[rows]]
        if len(rows):
            kept.append(track)
            rows_per_track.append(rows)
        else:
            skipped.append(str(track))
    rng = np.random.default_rng([seed, k, draw])
    n = len(kept)
    picks = np.floor(rng.random(n) * np.array([len(r) for r in rows_per_track])).astype(np.int64)
    rows = np.array([r[i] for r, i in zip(rows_per_track, picks, strict=True)], dtype=np.int64)
    high = store.chunk_frames - CROP_FRAMES + 1
    query_offsets = rng.integers(0, high, size=n)
    positive_offsets = rng.integers(0, high, size=n)
    return RetrievalPlan(
        source=source,
        track_ids=np.asarray(kept, dtype=str),
        rows=rows,
        query_offsets=query_offsets,
        positive_offsets=positive_offsets,
        skipped=tuple(skipped),
    )


def calibration_windows(
    store: ChunkStore,
    batches: int = 16,
    pairs: int = 64,
    seed: int = 0,
    sources: Sequence[str] = SOURCES,
) -> torch.Tensor:
    """Training-like inputs for batch-norm recalibration: `(batches * 2 * pairs, 98, bins)`.

    Batch b (of ``2 * pairs`` consecutive windows) holds ``pairs`` mixture crops of chunks
    where source ``sources[b % len]`` is present, then crops of that source of the same
    chunks at independent offsets: the anchors-then-positives batch of an active training
    step. Sources present nowhere in ``store`` are left out.
    """
    usable = [s for s in sources if store.present[:, SOURCES.index(s)].any()]
    if not usable:
        raise ValueError("no source is present in any calibration chunk")
    high = store.chunk_frames - CROP_FRAMES + 1
    out = []
    for b in range(batches):
        source = usable[b % len(usable)]
        pool = np.flatnonzero(store.present[:, SOURCES.index(source)])
        rng = np.random.default_rng([seed, _CALIBRATION_STREAM, b])
        rows = rng.choice(pool, size=pairs, replace=len(pool) < pairs)
        out.append(store.crops(MIXTURE, rows, rng.integers(0, high, size=pairs)))
        out.append(store.crops(source, rows, rng.integers(0, high, size=pairs)))
    return torch.from_numpy(np.concatenate(out).astype(np.float32))


# ------------------------------------------------------------------------------ scoring


def rank_own_candidates(logits: torch.Tensor, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1 = best) of the diagonal of square ``logits`` and recall@k per query.

    Ties count as a random tie-break would on average (module docstring, step 5).

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


class _EvalMode:
    """Eval mode inside the block, the previous mode after it."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was_training = module, module.training

    def __enter__(self) -> nn.Module:
        return self.module.eval()

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was_training)


@torch.no_grad()
def _embed_segments(
    encoder: nn.Module,
    store: ChunkStore,
    segments: Sequence[tuple[str, np.ndarray, np.ndarray]],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """``audio_embeds`` of the crops of each ``(column, rows, offsets)`` segment.

    Batches run across segments (eval mode: an embedding does not depend on its batch
    mates), so a small evaluation is a few encoder calls, and only one batch of crops is
    in memory at a time.
    """
    columns = sorted({column for column, _, _ in segments})
    column_of = np.concatenate(
        [np.full(len(rows), columns.index(c)) for c, rows, _ in segments] or [np.zeros(0, int)]
    )
    rows = np.concatenate([r for _, r, _ in segments] or [np.zeros(0, np.int64)])
    offsets = np.concatenate([o for _, _, o in segments] or [np.zeros(0, np.int64)])
    outs = []
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        crops = np.empty((len(rows[part]), CROP_FRAMES, store.num_bins), dtype=store.dtype)
        for index, column in enumerate(columns):
            mine = column_of[part] == index
            if mine.any():
                crops[mine] = store.crops(column, rows[part][mine], offsets[part][mine])
        outs.append(encoder(torch.from_numpy(crops).to(device, dtype)).audio_embeds)
    embeds = torch.cat(outs) if outs else torch.zeros(0, 0, device=device)
    return list(torch.split(embeds, [len(r) for _, r, _ in segments]))


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return torch.float32 if param is None or not param.is_floating_point() else param.dtype


@torch.no_grad()
def stem_retrieval(
    model: MSCLForPreTraining | str | os.PathLike,
    data: ChunkStore | Any,
    *,
    split: str | None = None,
    holdout_fraction: float | None = None,
    tracks: Iterable[str] | None = None,
    max_tracks: int | None = None,
    sources: Sequence[str] = SOURCES,
    ks: Sequence[int] = (1, 5, 10),
    draws: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    bn_regime: str = "running",
    calibration: ChunkStore | None = None,
    calibration_split: str | None = "train",
    calibration_batches: int = 16,
    calibration_pairs: int = 64,
    name: str | None = None,
) -> RetrievalResult:
    """Zero-shot stem retrieval of a pre-trained model (protocol: module docstring).

    Args:
        model: an :class:`~modeling_mscl.MSCLForPreTraining` (anything with ``.mscl`` and
            ``.similarity``), or its folder (:func:`load_pretraining_model`). It is moved to
            ``device`` and used in eval mode; its mode is restored afterwards.
        data: chunks to evaluate (see :func:`open_retrieval_data` with ``split``,
            ``holdout_fraction`` and ``calibration_split``).
        tracks: evaluate only these track ids.
        max_tracks: at most this many tracks, drawn once from ``seed``.
        sources: the sources to evaluate.
        ks: the k of recall@k.
        draws: independent draws of chunks and crops, averaged.
        seed: seeds every draw.
        device: where to embed (default: the model's device).
        batch_size: crops per encoder call.
        bn_regime: ``"running"`` (eval mode, the saved running statistics) or
            ``"recalibrated"`` (statistics recomputed on the training counterpart).
        calibration: the training-counterpart chunks for ``"recalibrated"``; by default
            the one :func:`open_retrieval_data` finds (error if none).
        calibration_batches: training-like minibatches used to recalibrate.
        calibration_pairs: mixture/stem pairs per calibration minibatch.
        name: the model's name in the result (default: its folder or class name).
    """
    if bn_regime not in BN_REGIMES:
        raise ValueError(f"bn_regime must be one of {BN_REGIMES}, got {bn_regime!r}")
    if draws < 1 or batch_size < 1:
        raise ValueError(f"draws and batch_size must be >= 1, got {draws}, {batch_size}")
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; choose among {SOURCES}")
    if isinstance(model, str | os.PathLike):
        name = name or Path(model).name
        model = load_pretraining_model(model)
    name = name or type(model).__name__
    store, found_calibration = open_retrieval_data(
        data, split=split, holdout_fraction=holdout_fraction, calibration_split=calibration_split
    )
    calibration = calibration if calibration is not None else found_calibration
    if device is not None:
        model.to(device)
    param = next(model.parameters(), None)
    device = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    dtype = _model_dtype(model)
    evaluated = _evaluated_tracks(store, tracks, max_tracks, seed)

    with _EvalMode(model):
        encoder = model.mscl
        if bn_regime == "recalibrated":
            if calibration is None:
                raise ValueError(
                    "bn_regime='recalibrated' needs the training counterpart of the evaluated "
                    "tracks: pass calibration=, a DatasetDict with calibration_split, or "
                    "holdout_fraction"
                )
            from .embeddings import recalibrate_batch_norm

            windows = calibration_windows(
                calibration, calibration_batches, calibration_pairs, seed, sources
            )
            # A recalibrated copy: the caller's model keeps its own statistics.
            encoder = recalibrate_batch_norm(model, windows, batch_size=2 * calibration_pairs)
        plans = {
            source: [
                retrieval_plan(store, source, evaluated, seed=seed, draw=d) for d in range(draws)
            ]
            for source in sources
        }
        segments = [
            segment
            for source in sources
            for plan in plans[source]
            for segment in (
                (MIXTURE, plan.rows, plan.query_offsets),
                (source, plan.rows, plan.positive_offsets),
            )
        ]
        embeds = iter(_embed_segments(encoder, store, segments, batch_size, device, dtype))
        results = {}
        for source in sources:
            per_draw = []
            for plan in plans[source]:
                queries, positives = next(embeds), next(embeds)
                if len(plan) == 0:
                    continue
                logits = model.similarity(queries, positives).float()
                ranks, hits = rank_own_candidates(logits, ks)
                per_draw.append(
                    {
                        "recall": {k: float(h.mean()) for k, h in zip(ks, hits, strict=True)},
                        "mean_rank": float(ranks.mean()),
                        "median_rank": float(np.median(ranks)),
                    }
                )
            results[source] = _summarise(source, plans[source][-1], per_draw, ks)
    protocol = {
        "num_tracks": int(len(evaluated)),
        "split": split,
        "holdout_fraction": holdout_fraction,
        "max_tracks": max_tracks,
        "draws": int(draws),
        "seed": int(seed),
        "ks": list(ks),
        "bn_regime": bn_regime,
        "crop_frames": CROP_FRAMES,
        "chunk_frames": int(store.chunk_frames),
        "similarity": getattr(model.similarity, "kind", type(model.similarity).__name__),
    }
    if bn_regime == "recalibrated":
        protocol["calibration"] = {
            "batches": calibration_batches,
            "pairs": calibration_pairs,
            "chunks": len(calibration),
        }
    return RetrievalResult(model=name, sources=results, protocol=protocol)


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
