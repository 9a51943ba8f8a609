"""Training crops of the probes: 4-s chunks of log-mels, random-offset crops, their embeddings.

The authors' reference protocol trains a probe head on one ~1 s (98-frame) crop at
a uniformly random offset inside every ~4 s (392-frame) chunk of every training clip,
drawn anew each epoch. With a frozen encoder a crop's embedding depends only on its
clip and offset, but there are ~300 offsets per chunk, so embedding them all is out of
the question. Two sources give the head its epochs:

* :class:`FreshCrops` (the reference, the default): the chunks' log-mel frames are
  computed once (and cached, they do not depend on the encoder); every epoch draws the
  offsets and the frozen encoder embeds those crops, in eval mode and in batches. Cost:
  one encoder pass over ~7 crops per 30 s clip per epoch.
* :class:`CropPool` (``ProbeTask.crop_pool=K``): K random-offset crops per chunk are
  embedded once (and cached per encoder) and every epoch picks one of the K per chunk.
  Cost: K crops per chunk whatever the number of epochs; the crops repeat across epochs.

:class:`WindowCrops` is the earlier protocol: windows precomputed on a fixed grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .._files import atomic_path
from ..audio_io import load_audio
from ..feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from ..long_audio_mscl import eval_mode
from .embeddings import (
    WindowEmbeddings,
    _audio_fingerprint,
    _encode,
    _encoder_of,
    _progress,
    _save_npy_atomic,
    clip_log_mel,
    encoder_fingerprint,
)

logger = logging.getLogger("modeling_mscl.probing")

__all__ = [
    "CropPool",
    "CropSource",
    "EpochCrops",
    "FreshCrops",
    "TrainingChunks",
    "WindowCrops",
    "build_crop_pool",
    "cached_crop_pool",
    "cached_training_chunks",
    "chunk_spans",
    "extract_training_chunks",
]


def chunk_spans(num_frames: int, chunk_frames: int = 392, window_frames: int = 98) -> np.ndarray:
    """`(chunks, 2)` first frame and length of the training chunks of a clip of ``num_frames``.

    ``floor(num_frames / chunk_frames)`` chunks of ``chunk_frames`` frames from frame 0,
    the tail shorter than a chunk left out (a 29.1 s MTAT clip: 2908 frames, 7 chunks).
    A clip with fewer than two chunks is one chunk, the whole clip: a 4 s NSynth note
    (398 frames) is cropped anywhere in it, and a clip shorter than 4 s still gives one
    crop per epoch.
    """
    if chunk_frames < window_frames:
        raise ValueError(f"chunk_frames ({chunk_frames}) < window_frames ({window_frames})")
    if num_frames < window_frames:
        raise ValueError(f"a clip of {num_frames} frames holds no {window_frames}-frame crop")
    count = num_frames // chunk_frames
    if count < 2:
        return np.array([[0, num_frames]], dtype=np.int64)
    starts = np.arange(count, dtype=np.int64) * chunk_frames
    return np.stack([starts, np.full(count, chunk_frames, dtype=np.int64)], axis=1)


@dataclass
class TrainingChunks:
    """Log-mel frames of the training chunks of a list of clips, the material of the crops.

    Args:
        frames: `(total_frames, mel)` float32, the chunks' frames one after the other
            (memory-mapped when read from the cache).
        spans: `(chunks, 3)` int64: clip, first row in ``frames``, length in frames; the
            chunks of a clip are contiguous and in time order.
        num_clips: number of clips (every clip has at least one chunk).
        window_frames: crop length.
    """

    frames: np.ndarray
    spans: np.ndarray
    num_clips: int
    window_frames: int = 98

    def __post_init__(self) -> None:
        if self.spans.ndim != 2 or self.spans.shape[1] != 3:
            raise ValueError(f"spans must be (chunks, 3), got {self.spans.shape}")
        counts = np.bincount(self.spans[:, 0], minlength=self.num_clips)
        if counts.shape[0] != self.num_clips or (counts == 0).any():
            raise ValueError("every clip needs at least one chunk, and indices < num_clips")
        if (self.lengths < self.window_frames).any():
            raise ValueError(f"every chunk needs at least {self.window_frames} frames")
        if (self.spans[:, 1] + self.lengths > self.frames.shape[0]).any():
            raise ValueError("a chunk runs past the end of `frames`")

    @property
    def num_chunks(self) -> int:
        """Chunks of all clips together: the crops of one epoch."""
        return int(self.spans.shape[0])

    @property
    def clip_index(self) -> np.ndarray:
        """The clip of each chunk, `(chunks,)`."""
        return self.spans[:, 0]

    @property
    def lengths(self) -> np.ndarray:
        """Frames of each chunk, `(chunks,)`."""
        return self.spans[:, 2]

    def draw_offsets(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Crop offsets uniform over each chunk's valid starts, `(chunks,)` or `(chunks, size)`."""
        high = self.lengths - self.window_frames + 1
        if size is None:
            return rng.integers(0, high)
        return rng.integers(0, high[:, None], size=(self.num_chunks, size))

    def crops(self, chunks: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
        """Log-mel crops `(n, window_frames, mel)` of ``chunks`` at frame ``offsets``."""
        chunks, offsets = np.asarray(chunks), np.asarray(offsets)
        if ((offsets < 0) | (offsets > self.lengths[chunks] - self.window_frames)).any():
            raise ValueError("a crop offset falls outside its chunk")
        rows = (self.spans[chunks, 1] + offsets)[:, None] + np.arange(self.window_frames)
        return torch.from_numpy(np.asarray(self.frames[rows], dtype=np.float32))


def extract_training_chunks(
    audio: Sequence[Any],
    feature_extractor: MSCLFeatureExtractor,
    chunk_frames: int = 392,
    progress: bool = False,
    desc: str = "Log-mel chunks",
    frames_path: str | os.PathLike | None = None,
) -> TrainingChunks:
    """The :class:`TrainingChunks` of the clips ``audio`` (paths or other audio items,
    decoded at the extractor's rate).

    With ``frames_path`` the frames are streamed to that raw float32 file instead of
    being held in memory (MTAT's training set is ~11 GB of them) and memory-mapped.
    """
    fe = feature_extractor
    spans: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    total = 0
    handle = open(frames_path, "wb") if frames_path is not None else None  # noqa: SIM115
    try:
        for clip, item in enumerate(_progress(audio, len(audio), desc, progress)):
            frames = clip_log_mel(load_audio(item, fe.sampling_rate), fe).numpy()
            own = chunk_spans(frames.shape[0], chunk_frames, fe.window_frames)
            used = np.concatenate([frames[s : s + n] for s, n in own]).astype(np.float32)
            starts = total + np.r_[0, np.cumsum(own[:, 1])[:-1]]
            spans.append(np.stack([np.full(len(own), clip), starts, own[:, 1]], axis=1))
            total += used.shape[0]
            if handle is not None:
                handle.write(np.ascontiguousarray(used).tobytes())
            else:
                parts.append(used)
    finally:
        if handle is not None:
            handle.close()
    mel = fe.feature_size
    if frames_path is not None:
        frames = _open_frames(frames_path, total, mel)
    else:
        frames = np.concatenate(parts) if parts else np.zeros((0, mel), np.float32)
    table = np.concatenate(spans).astype(np.int64) if spans else np.zeros((0, 3), np.int64)
    return TrainingChunks(frames, table, len(audio), fe.window_frames)


def _open_frames(path: str | os.PathLike, total: int, mel: int) -> np.ndarray:
    """Memory-map a raw float32 frames file (numpy cannot map an empty one)."""
    if total == 0:
        return np.zeros((0, mel), np.float32)
    return np.memmap(path, np.float32, "r", shape=(total, mel))


def _settings_key(**settings: Any) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cached_training_chunks(
    audio: Sequence[Any],
    cache_dir: str | os.PathLike | None,
    split: str = "train",
    feature_extractor: MSCLFeatureExtractor | None = None,
    chunk_frames: int = 392,
    progress: bool = False,
) -> TrainingChunks:
    """:func:`extract_training_chunks`, read from / written to ``cache_dir`` when given.

    The frames do not depend on the encoder: they live in ``<cache_dir>/logmel/`` and
    serve every encoder probed on the same audio. Key: the extractor's settings, the
    chunk length and the audio files' identity; ``<split>-<key>.frames.f32`` (raw, memory-
    mapped when read) is complete once ``<split>-<key>.spans.npy`` exists (written last).
    """
    fe = load_feature_extractor(feature_extractor)
    desc = f"Log-mel chunks {split}"
    if cache_dir is None:
        return extract_training_chunks(audio, fe, chunk_frames, progress, desc)
    key = _settings_key(fe=fe.to_dict(), chunk_frames=chunk_frames, audio=_audio_fingerprint(audio))
    folder = Path(cache_dir) / "logmel"
    folder.mkdir(parents=True, exist_ok=True)
    frames_path = folder / f"{split}-{key}.frames.f32"
    spans_path = folder / f"{split}-{key}.spans.npy"
    if frames_path.is_file() and spans_path.is_file():
        logger.info("log-mel chunk cache hit: %s", frames_path)
        spans = np.load(spans_path)
        total = int((spans[:, 1] + spans[:, 2]).max()) if len(spans) else 0
        frames = _open_frames(frames_path, total, fe.feature_size)
        return TrainingChunks(frames, spans, len(audio), fe.window_frames)
    with atomic_path(frames_path) as tmp:
        chunks = extract_training_chunks(audio, fe, chunk_frames, progress, desc, tmp)
    _save_npy_atomic(spans_path, chunks.spans)
    frames = _open_frames(frames_path, chunks.frames.shape[0], fe.feature_size)
    return TrainingChunks(frames, chunks.spans, chunks.num_clips, chunks.window_frames)


@dataclass
class EpochCrops:
    """The training crops of one epoch.

    Args:
        features: `(n, dim)` embeddings the rows point into (may be memory-mapped).
        clips: `(n,)` the clip of each row of ``features``.
        rows: rows of ``features`` to train on, in training order.
        offsets: frame offset of each chunk's crop, `(chunks,)` in chunk order, for
            chunk sources (None for windows).
    """

    features: np.ndarray
    clips: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray | None = None


class CropSource(Protocol):
    """What :func:`~modeling_mscl.probing.train_probe` trains on: one draw per epoch."""

    num_clips: int

    def epoch(self, rng: np.random.Generator) -> EpochCrops:
        """The crops of one epoch, drawn with ``rng``."""
        ...


class FreshCrops:
    """The reference's crops: each epoch one random-offset crop of every chunk, embedded then.

    The encoder is frozen: it runs in eval mode (batch norm on its running statistics,
    no stochastic depth) without gradients, ``batch_size`` crops at a time, on its own
    device; its previous mode is restored after each epoch's pass.
    """

    def __init__(self, model: nn.Module, chunks: TrainingChunks, batch_size: int = 64) -> None:
        self.encoder = _encoder_of(model)
        self.chunks = chunks
        self.batch_size = batch_size
        self.num_clips = chunks.num_clips

    def embed(self, offsets: np.ndarray) -> np.ndarray:
        """Embeddings `(chunks, dim)` of every chunk's crop at ``offsets``."""
        n = self.chunks.num_chunks
        out = np.empty((n, self.encoder.config.encoder_hidden_size), np.float32)
        with eval_mode(self.encoder):
            for i in range(0, n, self.batch_size):
                rows = np.arange(i, min(i + self.batch_size, n))
                crops = self.chunks.crops(rows, offsets[rows])
                out[rows] = _encode(self.encoder, crops, self.batch_size).numpy()
        return out

    def epoch(self, rng: np.random.Generator) -> EpochCrops:
        """Fresh offsets, their crops' embeddings, and a shuffled order."""
        offsets = self.chunks.draw_offsets(rng)
        features = self.embed(offsets)
        return EpochCrops(features, self.chunks.clip_index, rng.permutation(len(offsets)), offsets)


@dataclass
class CropPool:
    """``pool_size`` random-offset crops per chunk, embedded once; an epoch picks one per chunk.

    Args:
        embeds: `(chunks * pool_size, dim)`; chunk ``c``'s crops are rows
            ``c * pool_size ... c * pool_size + pool_size - 1``.
        offsets: `(chunks, pool_size)` frame offsets of those crops.
        chunk_clips: `(chunks,)` the clip of each chunk.
        num_clips: number of clips.
    """

    embeds: np.ndarray
    offsets: np.ndarray
    chunk_clips: np.ndarray
    num_clips: int

    @property
    def pool_size(self) -> int:
        """Crops per chunk."""
        return int(self.offsets.shape[1])

    def epoch(self, rng: np.random.Generator) -> EpochCrops:
        """One of the pooled crops of every chunk, uniformly, in a shuffled order."""
        n, k = self.offsets.shape
        pick = rng.integers(0, k, n)
        rows = rng.permutation(np.arange(n) * k + pick)
        clips = np.repeat(self.chunk_clips, k)
        return EpochCrops(self.embeds, clips, rows, self.offsets[np.arange(n), pick])


def build_crop_pool(
    model: nn.Module,
    chunks: TrainingChunks,
    pool_size: int,
    seed: int = 0,
    batch_size: int = 64,
) -> CropPool:
    """Embed ``pool_size`` crops per chunk at offsets drawn with ``seed`` (frozen encoder)."""
    offsets = chunks.draw_offsets(np.random.default_rng(seed), size=pool_size)
    fresh = FreshCrops(model, chunks, batch_size)
    embeds = np.stack([fresh.embed(offsets[:, j]) for j in range(pool_size)], axis=1)
    flat = embeds.reshape(chunks.num_chunks * pool_size, -1)
    return CropPool(flat, offsets, chunks.clip_index.copy(), chunks.num_clips)


def cached_crop_pool(
    model: nn.Module,
    audio: Sequence[Any],
    cache_dir: str | os.PathLike | None,
    pool_size: int,
    split: str = "train",
    feature_extractor: MSCLFeatureExtractor | None = None,
    chunk_frames: int = 392,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    model_key: str | None = None,
) -> CropPool:
    """:func:`build_crop_pool` over ``audio``, read from / written to ``cache_dir``.

    Stored next to the window embeddings of the same encoder
    (``<cache_dir>/<encoder>/<split>-pool-<key>.{offsets,clips,embeds}.npy``, embeddings
    written last); the key holds the extractor's settings, the chunk length, the pool
    size, the seed and the audio files' identity.
    """
    encoder = _encoder_of(model)
    fe = load_feature_extractor(feature_extractor, encoder.config.num_mel_bins)

    def build() -> CropPool:
        chunks = cached_training_chunks(audio, cache_dir, split, fe, chunk_frames, progress)
        return build_crop_pool(encoder, chunks, pool_size, seed, batch_size)

    if cache_dir is None:
        return build()
    model_key = model_key or encoder_fingerprint(encoder)
    key = _settings_key(
        fe=fe.to_dict(), chunk_frames=chunk_frames, pool_size=pool_size, seed=seed,
        audio=_audio_fingerprint(audio),
    )  # fmt: skip
    folder = Path(cache_dir) / model_key[:16]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        part: folder / f"{split}-pool-{key}.{part}.npy" for part in ("offsets", "clips", "embeds")
    }
    if all(path.is_file() for path in paths.values()):
        logger.info("crop pool cache hit: %s", paths["embeds"])
        return CropPool(
            np.load(paths["embeds"], mmap_mode="r"), np.load(paths["offsets"]),
            np.load(paths["clips"]), len(audio),
        )  # fmt: skip
    pool = build()
    _save_npy_atomic(paths["offsets"], pool.offsets)
    _save_npy_atomic(paths["clips"], pool.chunk_clips)
    _save_npy_atomic(paths["embeds"], pool.embeds)
    return pool


class WindowCrops:
    """The earlier protocol: ``crops_per_clip`` random windows per clip among precomputed ones.

    None draws every window once per epoch.
    """

    def __init__(self, windows: WindowEmbeddings, crops_per_clip: int | None) -> None:
        self.windows = windows
        self.crops_per_clip = crops_per_clip
        self.num_clips = windows.num_clips

    def epoch(self, rng: np.random.Generator) -> EpochCrops:
        """Window rows of this epoch, shuffled."""
        w = self.windows
        if self.crops_per_clip is None:
            rows = rng.permutation(w.embeds.shape[0])
        else:
            clips = np.repeat(np.arange(w.num_clips), self.crops_per_clip)
            offsets = rng.integers(0, w.clip_counts[clips])
            rows = rng.permutation(w.clip_starts[clips] + offsets)
        return EpochCrops(w.embeds, w.clip_index, rows)
