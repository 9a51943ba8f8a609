"""Contrastive pairs from a chunk set: the source batch sampler and the minibatches.

The crops come from a :class:`~modeling_mscl.chunk_set.ChunkStore` (98-frame crops read
in place from the chunk set's memory-mapped Arrow files). Two pieces, each usable alone:

- :class:`SourceBatchSampler` decides everything random about a minibatch as a pure
  function of ``(seed, step)``: the source, active or random, the
  rows, the crop offsets and, for the S3T baseline, the augmentation parameters. It
  draws the *global* batch; a process takes its slice by rank, so every process uses the
  same source at the same step and any number of processes sees the same pairs. Resuming
  at step k needs no state but k.
- :class:`PairDataset` is a ``torch.utils.data.Dataset`` indexed by step that returns a
  process's whole minibatch, for a ``DataLoader(batch_size=None, sampler=range(k, n))``.

Objectives (:mod:`modeling_mscl.objectives`): ``cola`` pairs two crops of the mixture of
the same 4-second chunk; ``mscl`` pairs a mixture crop with a crop of one source of the
same chunk; ``s3t`` is ``cola`` with :class:`~modeling_mscl.augment.SpecAugmentation` on
both crops. Both crops of a pair come from the same chunk (not merely the same track) in
every objective, so the objectives differ only in the positive: the sampler asks the
objective for the positives' source and rows, and draws the rest the same way for all.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .augment import AugmentParams, SpecAugmentation
from .chunk_set import CROP_FRAMES, MIXTURE, ChunkStore, chunk_features
from .objectives import get_objective
from .stems import SOURCES

__all__ = [
    "CROP_FRAMES",
    "MIXTURE",
    "PairDataset",
    "PairPlan",
    "SourceBatchSampler",
    "apply_augmentation",
    "holdout_mask",
    "synthetic_chunk_dataset",
]

logger = logging.getLogger(__name__)

# Random streams of the sampler: training batches and validation batches never share draws.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1


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
        objective: a registered objective's name (``"cola"``, ``"mscl"``, ``"s3t"``).
        sources: sources of ``mscl`` (any non-empty subset of SOURCES; kept only by an
            objective that ``uses_sources``).
        absent_sources: use random minibatches with a null class (only an objective with
            a ``presence_mask``, ``mscl``).
        random_batch_prob: probability of a random minibatch when ``absent_sources``.
        seed: the run's seed.
        chunk_frames: frames per chunk (392).
        augmentation: the S3T augmentation (an ``augmented`` objective, ``s3t``; defaults
            to ``SpecAugmentation()``).
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
        spec = get_objective(objective)  # an unknown name: the error listing them
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
        self.spec = spec
        self.batch_size = int(batch_size)
        self.sources = sources if spec.uses_sources else ()
        self.source_index = np.array([SOURCES.index(s) for s in self.sources], dtype=np.int64)
        self.absent_sources = bool(absent_sources) and spec.presence_mask
        self.random_batch_prob = float(random_batch_prob) if self.absent_sources else 0.0
        self.seed = int(seed)
        self.stream = int(stream)
        self.chunk_frames = int(chunk_frames)
        self.present = present
        self.augmentation = None
        if spec.augmented:
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

    def choose_rows(self, rng: np.random.Generator, pool_size: int) -> np.ndarray:
        """``batch_size`` indices into a pool of ``pool_size`` rows, without replacement
        when the pool is large enough."""
        replace_rows = pool_size < self.batch_size
        return rng.choice(pool_size, size=self.batch_size, replace=replace_rows)

    def plan(self, step: int) -> PairPlan:
        """The global minibatch of ``step`` (``batch_size`` pairs)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng([self.seed, self.stream, int(step)])
        n = self.batch_size
        source, active, rows, present = self.spec.draw(self, rng)
        if len(rows) != n or len(present) != n:
            raise ValueError(
                f"objective {self.objective!r} drew {len(rows)} rows and {len(present)} "
                f"presence flags for a minibatch of {n}"
            )
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

    Use it with ``DataLoader(dataset, batch_size=None, sampler=range(first, last))``: the
    batch dict goes through the DataLoader's default conversion, so worker processes hand
    it over in shared memory and ``pin_memory=True`` pins its tensors.
    """

    def __init__(
        self,
        store: ChunkStore,
        sampler: SourceBatchSampler,
        num_steps: int,
        process_index: int = 0,
        num_processes: int = 1,
        augment_in_loader: bool = True,
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

    def __len__(self) -> int:
        return self.num_steps

    def build(self, plan: PairPlan) -> dict[str, Any]:
        """Cut (and, in loader mode, augment) the crops of ``plan``."""
        batch = {
            # Checked: values no front end produces (NaN, bit flips) refuse the batch.
            "anchor": torch.from_numpy(
                self.store.checked_crops(MIXTURE, plan.rows, plan.anchor_offsets)
            ),
            "positive": torch.from_numpy(
                self.store.checked_crops(plan.column, plan.rows, plan.positive_offsets)
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
        return batch


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
    Features: :func:`~modeling_mscl.chunk_set.chunk_features`; write it as a chunk set
    with :func:`~modeling_mscl.chunk_set.save_chunk_set`.
    """
    from datasets import Dataset

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
        # Floored at silence, as a front end's log-mels are (pre-training refuses less).
        spec = np.where(present[:, k, None, None], np.maximum(spec, silence), silence)
        magnitude += np.exp(spec)
        columns[name] = spec.astype(np.float16)
    columns[MIXTURE] = np.log(np.maximum(magnitude, 1e-5)).astype(np.float16)
    data = {
        "track_id": [f"track{i // chunks_per_track:04d}" for i in range(n)],
        "chunk_index": (np.arange(n) % chunks_per_track).astype(np.int32),
        **columns,
        "present": present,
    }
    return Dataset.from_dict(data, features=chunk_features(chunk_frames, num_bins))
