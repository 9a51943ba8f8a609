"""Contrastive pairs from the chunk dataset: crops, the source batch sampler, minibatches.

Three pieces, each usable alone:

- :class:`ChunkStore` reads 98-frame crops out of a chunk dataset (the output of
  :func:`modeling_mscl.chunks.prepare_chunks`) straight from its memory-mapped Arrow
  files: one vectorised numpy gather per batch, no row decoding, nothing loaded into RAM.
- :class:`SourceBatchSampler` decides everything random about a minibatch as a pure
  function of ``(seed, step)``: the source, active or random, the
  rows, the crop offsets and, for the S3T baseline, the augmentation parameters. It
  draws the *global* batch; a process takes its slice by rank, so every process uses the
  same source at the same step and any number of processes sees the same pairs. Resuming
  at step k needs no state but k.
- :class:`PairDataset` is a ``torch.utils.data.Dataset`` indexed by step that returns a
  process's whole minibatch, for a ``DataLoader(batch_size=None, sampler=range(k, n))``.

Objectives: ``cola`` pairs two crops of the mixture of the same 4-second chunk; ``mscl``
pairs a mixture crop with a crop of one source of the same chunk; ``s3t`` is ``cola``
with :class:`~modeling_mscl.augment.SpecAugmentation` on both crops. Both crops of a pair
come from the same chunk (not merely the same track) in every objective, so the three
objectives differ only in the positive.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .augment import AugmentParams, SpecAugmentation
from .stems import SOURCES

__all__ = [
    "CROP_FRAMES",
    "MIXTURE",
    "OBJECTIVES",
    "ChunkStore",
    "PairDataset",
    "PairPlan",
    "SourceBatchSampler",
    "apply_augmentation",
    "holdout_mask",
    "synthetic_chunk_dataset",
]

logger = logging.getLogger(__name__)

# One model window: 98 frames of 10 ms (~1 s).
CROP_FRAMES = 98
OBJECTIVES = ("cola", "mscl", "s3t")
MIXTURE = "mixture"
# Random streams of the sampler: training batches and validation batches never share draws.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1


# ----------------------------------------------------------------------------- ChunkStore


def _array_column(table: pa.Table, name: str) -> list[tuple[int, int, int]]:
    """(address of the first value, rows, values per row) of each record batch of ``name``.

    An ``Array2D`` column is stored as a list of lists; a row's values are contiguous in
    the flattened child buffer when every row has the same shape. ``datasets`` enforces
    the shape when it writes the column; here the row boundaries are checked (cheap: one
    offset per row), which catches any other layout.
    """
    pieces = []
    for chunk in table.column(name).chunks:
        outer = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        if not (pa.types.is_list(outer.type) or pa.types.is_large_list(outer.type)):
            raise ValueError(f"column '{name}' is not an Array2D column (type {outer.type})")
        rows = len(outer)
        if rows == 0:
            continue
        if outer.null_count:
            raise ValueError(f"column '{name}' has {outer.null_count} null rows")
        # .values ignores slicing: offsets index into the full child arrays.
        row_offsets = np.asarray(outer.offsets, dtype=np.int64)
        frame_offsets = np.asarray(outer.values.offsets, dtype=np.int64)
        values = outer.values.values
        frames = (row_offsets[-1] - row_offsets[0]) // rows
        starts = frame_offsets[row_offsets]  # first value of each row, and the end
        per_row = (starts[-1] - starts[0]) // rows
        regular = np.array_equal(
            row_offsets - row_offsets[0], np.arange(rows + 1) * frames
        ) and np.array_equal(starts - starts[0], np.arange(rows + 1) * per_row)
        if not regular or per_row == 0:
            raise ValueError(f"column '{name}' does not hold arrays of one fixed shape")
        first = int(starts[0]) + values.offset
        address = values.buffers()[1].address + first * values.type.byte_width
        pieces.append((address, rows, int(per_row)))
    return pieces


class ChunkStore:
    """Zero-copy random crops of the spectrogram columns of a chunk dataset.

    All rows of all spectrogram columns are addressed through one flat float16 view that
    spans the dataset's Arrow buffers (memory-mapped for a dataset from ``load_from_disk``),
    seen as a sliding window of one crop's length; a batch of crops is then one numpy
    fancy-indexing gather of ``n`` contiguous runs. Only the rows' own bytes are ever read:
    the span between buffers (or files) is address space, never touched.

    The store pickles as its dataset (``datasets`` pickles memory-mapped tables as their
    file paths), so DataLoader workers reopen the files instead of copying them.

    Args:
        dataset: a chunk ``datasets.Dataset`` (``present`` and Array2D columns).
        columns: the spectrogram columns to read (all must share dtype and shape).
        rows: optional subset of the dataset's rows (e.g. a held-out split); the store's
            row i is dataset row ``rows[i]``.
    """

    def __init__(
        self,
        dataset: Any,
        columns: Sequence[str] = (MIXTURE, *SOURCES),
        rows: np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
        self.columns = tuple(columns)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._check_features()
        self._views: dict[str, Any] | None = None
        self._present: np.ndarray | None = None

    @classmethod
    def from_disk(
        cls, path: str | os.PathLike, split: str | None = None, **kwargs: Any
    ) -> ChunkStore:
        """Open a saved chunk dataset (memory-mapped); ``split`` picks one of a DatasetDict."""
        from datasets import DatasetDict, load_from_disk

        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split is None or split not in loaded:
                raise ValueError(f"{path} holds splits {sorted(loaded)}; pick one (got {split!r})")
            loaded = loaded[split]
        return cls(loaded, **kwargs)

    def _check_features(self) -> None:
        features = self.dataset.features
        missing = [c for c in (*self.columns, "present") if c not in features]
        if missing:
            raise ValueError(f"the chunk dataset lacks the column(s) {missing}")
        specs = {(tuple(features[c].shape), features[c].dtype) for c in self.columns}
        if len(specs) != 1 or any(not hasattr(features[c], "shape") for c in self.columns):
            raise ValueError(f"spectrogram columns must share one Array2D shape/dtype, got {specs}")
        ((shape, dtype),) = specs
        self.chunk_frames, self.num_bins = int(shape[0]), int(shape[1])
        self.dtype = np.dtype(dtype)
        if self.chunk_frames < CROP_FRAMES:
            raise ValueError(f"chunks of {self.chunk_frames} frames are shorter than a crop")

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_views"] = None  # raw addresses are meaningless in another process
        return state

    def subset(self, rows: np.ndarray) -> ChunkStore:
        """A store over some of this store's rows (indices into this store)."""
        base = np.arange(len(self)) if self.rows is None else self.rows
        return ChunkStore(self.dataset, self.columns, base[np.asarray(rows, dtype=np.int64)])

    @property
    def present(self) -> np.ndarray:
        """(rows, 4) bool presence flags in :data:`~modeling_mscl.stems.SOURCES` order."""
        if self._present is None:
            column = self.dataset.data.column("present")
            flat = np.concatenate(
                [np.asarray(c.flatten(), dtype=bool) for c in column.chunks] or [np.zeros(0, bool)]
            )
            flags = flat.reshape(-1, len(SOURCES))[self._physical()]
            self._present = flags
        return self._present

    def track_ids(self) -> np.ndarray:
        """The ``track_id`` of every row (object array of str)."""
        ids = np.asarray(self.dataset.data.column("track_id").to_pylist(), dtype=object)
        return ids[self._physical()]

    def _physical(self) -> np.ndarray:
        """Row of the Arrow table behind each store row (``select`` keeps an indices map)."""
        indices = getattr(self.dataset, "_indices", None)
        physical = (
            np.arange(self.dataset.data.num_rows)
            if indices is None
            else np.asarray(indices.column(0), dtype=np.int64)
        )
        return physical if self.rows is None else physical[self.rows]

    def _build_views(self) -> dict[str, Any]:
        table = self.dataset.data
        itemsize = self.dtype.itemsize
        pieces = {name: _array_column(table, name) for name in self.columns}
        per_row = self.chunk_frames * self.num_bins
        spans = [(a, a + r * per_row * itemsize) for p in pieces.values() for a, r, _ in p]
        if not spans:
            raise ValueError("the chunk dataset is empty")
        low, high = min(s for s, _ in spans), max(e for _, e in spans)
        if any((a - low) % itemsize for a, _, _ in (x for p in pieces.values() for x in p)):
            raise ValueError("unaligned spectrogram buffers")
        # The table is the buffer's base: it keeps the memory maps alive as long as the view.
        flat = np.frombuffer(pa.foreign_buffer(low, high - low, base=table), dtype=self.dtype)
        window = CROP_FRAMES * self.num_bins
        windows = np.lib.stride_tricks.as_strided(
            flat,
            shape=(flat.size - window + 1, window),
            strides=(itemsize, itemsize),
            writeable=False,
        )
        physical = self._physical()
        starts = {}
        for name, column_pieces in pieces.items():
            begin = [
                (a - low) // itemsize + np.arange(r, dtype=np.int64) * per_row
                for a, r, per in column_pieces
            ]
            if any(per != per_row for _, _, per in column_pieces):
                raise ValueError(f"column '{name}' rows do not hold {per_row} values")
            starts[name] = np.concatenate(begin)[physical]
        return {"windows": windows, "starts": starts, "keep": table}

    def crops(self, column: str, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Crops ``column[rows[i], offsets[i] : offsets[i] + 98]``: a new `(n, 98, bins)` array.

        Args:
            column: a spectrogram column of the store.
            rows: `(n,)` store rows.
            offsets: `(n,)` first frame of each crop, in ``[0, chunk_frames - 98]``.
        """
        if self._views is None:
            self._views = self._build_views()
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.size and (offsets.min() < 0 or offsets.max() > self.chunk_frames - CROP_FRAMES):
            raise IndexError(f"crop offsets must lie in [0, {self.chunk_frames - CROP_FRAMES}]")
        start = self._views["starts"][column][rows] + offsets * self.num_bins
        # Fancy indexing on the first axis of the window view: n contiguous copies.
        return self._views["windows"][start].reshape(len(rows), CROP_FRAMES, self.num_bins)


def holdout_mask(track_ids: Sequence[str], fraction: float) -> np.ndarray:
    """Bool mask of the rows whose track falls in a stable ``fraction`` of the tracks.

    A track's membership depends only on its id (a hash), so the held-out set does not
    move when tracks are added, reordered or the dataset is re-chunked, and no chunk of a
    held-out track is ever trained on.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    unique, inverse = np.unique(np.asarray(track_ids, dtype=str), return_inverse=True)
    scores = np.array(
        [int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "big") / 2**64 for t in unique]
    )
    return (scores < fraction)[inverse]


# ---------------------------------------------------------------------- SourceBatchSampler


@dataclass(frozen=True)
class PairPlan:
    """Everything random about one minibatch (or one process's slice of it).

    Attributes:
        step: the minibatch index it was drawn for.
        source: index in :data:`~modeling_mscl.stems.SOURCES` of the positives' source,
            or -1 when the positive is a second mixture crop (``cola``, ``s3t``).
        active: True if the rows were drawn among chunks where the source is present.
        rows: `(n,)` store rows.
        anchor_offsets: `(n,)` first frame of each anchor (mixture) crop.
        positive_offsets: `(n,)` first frame of each positive crop.
        present: `(n,)` bool, whether each row's positive source is present (all True for
            the mixture).
        anchor_augment: S3T parameters of the anchors (``s3t`` only).
        positive_augment: S3T parameters of the positives (``s3t`` only).
    """

    step: int
    source: int
    active: bool
    rows: np.ndarray
    anchor_offsets: np.ndarray
    positive_offsets: np.ndarray
    present: np.ndarray
    anchor_augment: AugmentParams | None = field(default=None, repr=False)
    positive_augment: AugmentParams | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def column(self) -> str:
        """Spectrogram column of the positives."""
        return MIXTURE if self.source < 0 else SOURCES[self.source]

    def shard(self, process_index: int, num_processes: int) -> PairPlan:
        """The contiguous slice of process ``process_index`` (process 0 first)."""
        if len(self) % num_processes:
            raise ValueError(
                f"{len(self)} pairs do not split evenly over {num_processes} processes"
            )
        size = len(self) // num_processes
        part = slice(process_index * size, (process_index + 1) * size)
        aug = SpecAugmentation.slice
        return replace(
            self,
            rows=self.rows[part],
            anchor_offsets=self.anchor_offsets[part],
            positive_offsets=self.positive_offsets[part],
            present=self.present[part],
            anchor_augment=None if self.anchor_augment is None else aug(self.anchor_augment, part),
            positive_augment=None
            if self.positive_augment is None
            else aug(self.positive_augment, part),
        )


class SourceBatchSampler:
    """Plans minibatches as pure functions of ``(seed, step)``.

    ``mscl``: each minibatch uses one source drawn uniformly from ``sources``. With
    ``absent_sources``, it is "random" with probability ``random_batch_prob`` (rows drawn
    from all chunks; rows whose source is absent go to the null class) and "active"
    otherwise (rows drawn among chunks where the source is present); without it, every
    minibatch is active. ``cola`` and ``s3t``: rows drawn from all chunks, positives are
    mixture crops. Rows are drawn without replacement when the pool is large enough (a
    chunk twice in one minibatch would be its own negative). Crop offsets are drawn
    independently for anchors and positives, uniformly over the chunk.

    Args:
        present: `(rows, 4)` presence flags of the store's rows.
        batch_size: pairs per minibatch, over all processes.
        objective: ``"cola"``, ``"mscl"`` or ``"s3t"``.
        sources: sources of ``mscl`` (any non-empty subset of SOURCES).
        absent_sources: use random minibatches with a null class (``mscl`` only).
        random_batch_prob: probability of a random minibatch when ``absent_sources``.
        seed: the run's seed.
        chunk_frames: frames per chunk (392).
        augmentation: the S3T augmentation (``s3t``; defaults to ``SpecAugmentation()``).
        stream: 0 for training, 1 for validation (independent draws from the same seed).
        num_bins: mel bins (for the augmentation's shape checks).
    """

    def __init__(
        self,
        present: np.ndarray,
        batch_size: int,
        objective: str = "mscl",
        sources: Sequence[str] = SOURCES,
        absent_sources: bool = True,
        random_batch_prob: float = 0.5,
        seed: int = 0,
        chunk_frames: int = 392,
        augmentation: SpecAugmentation | None = None,
        stream: int = TRAIN_STREAM,
        num_bins: int = 64,
    ) -> None:
        present = np.asarray(present, dtype=bool)
        if present.ndim != 2 or present.shape[1] != len(SOURCES):
            raise ValueError(f"present must have shape (rows, {len(SOURCES)}), got {present.shape}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(present) == 0:
            raise ValueError("no chunks to sample from")
        sources = tuple(sources)
        unknown = [s for s in sources if s not in SOURCES]
        if not sources or unknown or len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct names among {SOURCES}, got {list(sources)}")
        if not 0.0 <= random_batch_prob <= 1.0:
            raise ValueError(f"random_batch_prob must lie in [0, 1], got {random_batch_prob}")
        if chunk_frames < CROP_FRAMES:
            raise ValueError(f"chunk_frames must be >= {CROP_FRAMES}, got {chunk_frames}")
        self.objective = objective
        self.batch_size = int(batch_size)
        self.sources = sources if objective == "mscl" else ()
        self.source_index = np.array([SOURCES.index(s) for s in self.sources], dtype=np.int64)
        self.absent_sources = bool(absent_sources) and objective == "mscl"
        self.random_batch_prob = float(random_batch_prob) if self.absent_sources else 0.0
        self.seed = int(seed)
        self.stream = int(stream)
        self.chunk_frames = int(chunk_frames)
        self.present = present
        self.augmentation = None
        if objective == "s3t":
            self.augmentation = augmentation or SpecAugmentation()
            self.augmentation.check_shape(CROP_FRAMES, num_bins)
        self.num_bins = num_bins
        # Rows where each configured source is present: the pools of active minibatches.
        self.pools = {int(k): np.flatnonzero(present[:, k]) for k in self.source_index}
        if len(present) < self.batch_size:
            # Drawn with replacement, a chunk would be its own negative in a minibatch.
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the {len(present)} chunks: a "
                "minibatch would repeat chunks; lower batch_size or add data"
            )
        if self.random_batch_prob < 1.0:
            empty = [SOURCES[k] for k, pool in self.pools.items() if len(pool) == 0]
            if empty:
                raise ValueError(
                    f"source(s) {empty} are present in none of the {len(present)} chunks, so "
                    "no active minibatch can be built; drop them from sources"
                )
            small = {SOURCES[k]: len(p) for k, p in self.pools.items() if len(p) < self.batch_size}
            if small:
                logger.warning(
                    "active minibatches of %s repeat chunks: they are present in fewer chunks "
                    "than batch_size=%d",
                    small, self.batch_size,
                )  # fmt: skip

    def _choose(self, rng: np.random.Generator, pool_size: int) -> np.ndarray:
        replace_rows = pool_size < self.batch_size
        return rng.choice(pool_size, size=self.batch_size, replace=replace_rows)

    def plan(self, step: int) -> PairPlan:
        """The global minibatch of ``step`` (``batch_size`` pairs)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng([self.seed, self.stream, int(step)])
        n = self.batch_size
        if self.objective == "mscl":
            source = int(self.source_index[rng.integers(len(self.source_index))])
            active = not bool(rng.random() < self.random_batch_prob)
            if active:
                pool = self.pools[source]
                rows = pool[self._choose(rng, len(pool))]
            else:
                rows = self._choose(rng, len(self.present))
            present = self.present[rows, source]
        else:
            source, active = -1, True
            rows = self._choose(rng, len(self.present))
            present = np.ones(n, dtype=bool)
        high = self.chunk_frames - CROP_FRAMES + 1
        anchor_offsets = rng.integers(0, high, size=n)
        positive_offsets = rng.integers(0, high, size=n)
        anchor_aug = positive_aug = None
        if self.augmentation is not None:
            anchor_aug = self.augmentation.draw(rng, n, CROP_FRAMES, self.num_bins)
            positive_aug = self.augmentation.draw(rng, n, CROP_FRAMES, self.num_bins)
        return PairPlan(
            step=int(step),
            source=source,
            active=active,
            rows=rows.astype(np.int64),
            anchor_offsets=anchor_offsets,
            positive_offsets=positive_offsets,
            present=present,
            anchor_augment=anchor_aug,
            positive_augment=positive_aug,
        )

    def local_plan(self, step: int, process_index: int = 0, num_processes: int = 1) -> PairPlan:
        """This process's slice of the global minibatch of ``step``."""
        plan = self.plan(step)
        return plan if num_processes == 1 else plan.shard(process_index, num_processes)

    def fingerprint(self) -> str:
        """A hash of what decides the batch sequence: settings and the presence table."""
        h = hashlib.sha1()
        h.update(repr(self.state_dict()).encode())
        h.update(np.packbits(self.present).tobytes())
        return h.hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """The sampler's settings (it has no other state: a step index is enough to resume)."""
        return {
            "objective": self.objective,
            "batch_size": self.batch_size,
            "sources": list(self.sources),
            "absent_sources": self.absent_sources,
            "random_batch_prob": self.random_batch_prob,
            "seed": self.seed,
            "stream": self.stream,
            "chunk_frames": self.chunk_frames,
            "rows": int(len(self.present)),
            "augmentation": None if self.augmentation is None else repr(self.augmentation),
        }


# ----------------------------------------------------------------------------- PairDataset


class PairDataset(torch.utils.data.Dataset):
    """A process's minibatch for each step: the map-style dataset of the training loader.

    ``dataset[step]`` returns a dict with ``anchor`` and ``positive`` `(n, 98, bins)`
    tensors (``n = batch_size / num_processes``; the store's float16, or float32 once
    augmented), ``present`` `(n,)` bool, ``source`` (int, -1 for the mixture), ``active``
    (bool) and ``step``. For ``s3t`` with ``augment_in_loader=False`` the crops are left
    as they are and the batch carries ``anchor_augment`` / ``positive_augment`` (the
    parameters), for :func:`apply_augmentation` on the training device. If building the
    batch fails, it returns ``{"step": step, "error": message}`` instead, so the training
    loop can skip and report the step rather than die.

    Use it with ``DataLoader(dataset, batch_size=None, sampler=range(first, last))``.

    With ``shared_slots=K`` (for loader workers), the crops are written into a ring of
    K shared-memory buffers allocated here, and the batch carries only ``slot`` (its index)
    in their place: a worker then hands over a few bytes instead of moving 3 MB through a
    new shared-memory segment per batch, the main cost of worker loaders. The consumer
    calls :meth:`resolve` to get the tensors, which are views of the ring: a batch must be
    used before ``K - num_workers * prefetch_factor`` further batches are fetched, so
    ``K = num_workers * prefetch_factor + 2`` is safe for a loop that finishes with a batch
    before fetching the next.
    """

    def __init__(
        self,
        store: ChunkStore,
        sampler: SourceBatchSampler,
        num_steps: int,
        process_index: int = 0,
        num_processes: int = 1,
        augment_in_loader: bool = True,
        shared_slots: int = 0,
    ) -> None:
        if sampler.batch_size % num_processes:
            raise ValueError(
                f"batch_size {sampler.batch_size} must be a multiple of the number of "
                f"processes ({num_processes})"
            )
        if len(sampler.present) != len(store):
            raise ValueError("the sampler was built for another store")
        if sampler.chunk_frames != store.chunk_frames:
            raise ValueError("the sampler and the store disagree on the chunk length")
        self.store = store
        self.sampler = sampler
        self.num_steps = int(num_steps)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.augment_in_loader = bool(augment_in_loader)
        self.slots: dict[str, torch.Tensor] | None = None
        if shared_slots:
            augmented = sampler.augmentation is not None and self.augment_in_loader
            dtype = torch.float32 if augmented else torch.from_numpy(np.zeros(0, store.dtype)).dtype
            shape = (shared_slots, sampler.batch_size // num_processes, CROP_FRAMES, store.num_bins)
            # Allocated before the workers start: forked or spawned, they share these pages.
            self.slots = {
                name: torch.zeros(shape, dtype=dtype).share_memory_()
                for name in ("anchor", "positive")
            }

    def __len__(self) -> int:
        return self.num_steps

    def build(self, plan: PairPlan) -> dict[str, Any]:
        """Cut (and, in loader mode, augment) the crops of ``plan``."""
        batch = {
            "anchor": torch.from_numpy(self.store.crops(MIXTURE, plan.rows, plan.anchor_offsets)),
            "positive": torch.from_numpy(
                self.store.crops(plan.column, plan.rows, plan.positive_offsets)
            ),
            "present": torch.from_numpy(plan.present.copy()),
            "source": plan.source,
            "active": plan.active,
            "step": plan.step,
        }
        if plan.anchor_augment is not None:
            batch["anchor_augment"] = plan.anchor_augment
            batch["positive_augment"] = plan.positive_augment
            if self.augment_in_loader:
                batch = apply_augmentation(batch, self.sampler.augmentation)
        return batch

    def __getitem__(self, step: int) -> dict[str, Any]:
        try:
            plan = self.sampler.local_plan(int(step), self.process_index, self.num_processes)
            batch = self.build(plan)
        except Exception as err:  # noqa: BLE001 - reported by the loop, which skips the step
            return {"step": int(step), "error": f"{type(err).__name__}: {err}"}
        if self.slots is not None:
            slot = int(step) % len(self.slots["anchor"])
            for name, ring in self.slots.items():
                ring[slot].copy_(batch.pop(name))
            batch["slot"] = slot
        return batch

    def resolve(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Put the ring's tensors back into a batch that carries a ``slot``."""
        if "slot" not in batch:
            return batch
        if self.slots is None:
            raise ValueError("the batch refers to a slot but this dataset has no shared slots")
        out = {k: v for k, v in batch.items() if k != "slot"}
        for name, ring in self.slots.items():
            out[name] = ring[batch["slot"]]
        return out


def apply_augmentation(
    batch: dict[str, Any], augmentation: SpecAugmentation | None
) -> dict[str, Any]:
    """Augment a batch that still carries its parameters (anchor/positive_augment).

    Works on the tensors' device; returns a new dict with float32 crops and without the
    parameters. A batch without parameters is returned unchanged.
    """
    if "anchor_augment" not in batch:
        return batch
    if augmentation is None:
        raise ValueError("the batch carries augmentation parameters but no augmentation was given")
    out = {k: v for k, v in batch.items() if k not in ("anchor_augment", "positive_augment")}
    out["anchor"] = augmentation.apply(batch["anchor"], batch["anchor_augment"])
    out["positive"] = augmentation.apply(batch["positive"], batch["positive_augment"])
    return out


# -------------------------------------------------------------------- synthetic chunk sets


def synthetic_chunk_dataset(
    num_tracks: int = 8,
    chunks_per_track: int = 4,
    present_prob: float = 0.75,
    seed: int = 0,
    chunk_frames: int = 392,
    num_bins: int = 64,
) -> Any:
    """A small chunk dataset with learnable structure, for tests and benchmarks.

    Every (chunk, source) gets its own smooth spectral envelope and a slow rhythm; the
    source's log-mel is envelope + rhythm + noise, or silence (log 1e-5) when absent, and
    the mixture is the log of the summed magnitudes. Crops of one chunk therefore share
    an envelope with each other and with its sources, which a contrastive model can learn.
    Same columns and features as :func:`modeling_mscl.chunks.chunk_features`.
    """
    from datasets import Dataset

    from .chunks import chunk_features

    rng = np.random.default_rng(seed)
    n = num_tracks * chunks_per_track
    silence = np.log(1e-5)
    bins = np.linspace(0, 1, num_bins)
    frames = np.arange(chunk_frames)
    present = rng.random((n, len(SOURCES))) < present_prob
    columns = {}
    magnitude = np.zeros((n, chunk_frames, num_bins))
    for k, name in enumerate(SOURCES):
        centre = rng.uniform(0, 1, size=(n, 1, 1))
        width = rng.uniform(0.05, 0.3, size=(n, 1, 1))
        envelope = -((bins[None, None, :] - centre) ** 2) / (2 * width**2)
        period = rng.uniform(20, 80, size=(n, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        rhythm = 2.0 * np.sin(2 * np.pi * frames[None, :, None] / period + phase)
        spec = envelope + rhythm + 0.3 * rng.standard_normal((n, chunk_frames, num_bins))
        spec = np.where(present[:, k, None, None], spec, silence)
        magnitude += np.exp(spec)
        columns[name] = spec.astype(np.float16)
    columns[MIXTURE] = np.log(np.maximum(magnitude, 1e-5)).astype(np.float16)
    data = {
        "track_id": [f"track{i // chunks_per_track:04d}" for i in range(n)],
        "chunk_index": (np.arange(n) % chunks_per_track).astype(np.int32),
        **columns,
        "present": present,
    }
    features = chunk_features({})
    if (chunk_frames, num_bins) != (392, 64):
        from datasets import Array2D

        for name in (MIXTURE, *SOURCES):
            features[name] = Array2D(shape=(chunk_frames, num_bins), dtype="float16")
    return Dataset.from_dict(data, features=features)
