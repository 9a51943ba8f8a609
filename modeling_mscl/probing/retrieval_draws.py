"""The draws of stem retrieval: evaluated chunks, tracks, query and positive crops, calibration.

Everything random in the protocol of :mod:`.retrieval` is drawn here, each draw from
its own ``numpy.random.default_rng`` stream of the seed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..chunk_set import CROP_FRAMES, MIXTURE, ChunkSet, ChunkStore, load_chunk_set
from ..pairs import holdout_mask
from ..stems import SOURCES

__all__ = [
    "RetrievalPlan",
    "calibration_windows",
    "open_retrieval_data",
    "retrieval_plan",
]

# Random streams outside the per-source ones (0..3): the track subset and the calibration.
_TRACK_STREAM = 1000
_CALIBRATION_STREAM = 1001


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
    """Sorted track ids to evaluate (see the :mod:`.retrieval` docstring, step 1)."""
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
    """Draw the queries and candidates of ``source`` over ``tracks``.

    Steps 2-3 of the protocol in the :mod:`.retrieval` docstring.
    """
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
