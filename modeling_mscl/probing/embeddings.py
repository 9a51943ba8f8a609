"""Frozen window embeddings: log-mel windows of clips, the encoder's pooled feature, a disk cache."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_write
from ..audio_io import load_audio
from ..feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from ..long_audio_mscl import encode_windows, eval_mode, frame_windows
from ..modeling_mscl import MSCLModel

logger = logging.getLogger("modeling_mscl.probing")

__all__ = [
    "WindowEmbeddings",
    "cached_window_embeddings",
    "clip_log_mel",
    "encoder_fingerprint",
    "extract_window_embeddings",
    "recalibrate_batch_norm",
    "spread_indices",
    "window_features",
]


@dataclass
class WindowEmbeddings:
    """Embeddings of consecutive windows of a list of clips.

    Args:
        embeds: `(windows, dim)` float32; windows of a clip are contiguous, in time order.
        clip_index: `(windows,)` int64, the clip of each window (non-decreasing).
        num_clips: number of clips (every clip has at least one window).
    """

    embeds: np.ndarray
    clip_index: np.ndarray
    num_clips: int

    def __post_init__(self) -> None:
        if self.embeds.ndim != 2 or self.embeds.shape[0] != self.clip_index.shape[0]:
            raise ValueError(
                f"embeds (windows, dim) and clip_index (windows,) disagree: "
                f"{self.embeds.shape} vs {self.clip_index.shape}"
            )
        counts = np.bincount(self.clip_index, minlength=self.num_clips)
        if counts.shape[0] != self.num_clips or (counts == 0).any():
            raise ValueError("every clip needs at least one window, and indices < num_clips")

    @property
    def clip_starts(self) -> np.ndarray:
        """Index of each clip's first window, `(num_clips,)`."""
        counts = np.bincount(self.clip_index, minlength=self.num_clips)
        return np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)

    @property
    def clip_counts(self) -> np.ndarray:
        """Windows per clip, `(num_clips,)`."""
        return np.bincount(self.clip_index, minlength=self.num_clips).astype(np.int64)

    def limit_windows(self, max_windows: int | None) -> WindowEmbeddings:
        """At most ``max_windows`` evenly spaced windows of every clip (all when None)."""
        if max_windows is None or (self.clip_counts <= max_windows).all():
            return self
        starts, counts = self.clip_starts, self.clip_counts
        rows = np.concatenate(
            [starts[c] + spread_indices(int(counts[c]), max_windows) for c in range(self.num_clips)]
        )
        return WindowEmbeddings(
            np.asarray(self.embeds[rows]), self.clip_index[rows], self.num_clips
        )

    def select_clips(self, clips: Sequence[int]) -> WindowEmbeddings:
        """The windows of ``clips`` (renumbered 0.. in the given order)."""
        starts, counts = self.clip_starts, self.clip_counts
        rows = [np.arange(starts[c], starts[c] + counts[c]) for c in clips]
        index = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        new_index = np.repeat(np.arange(len(clips)), [counts[c] for c in clips])
        return WindowEmbeddings(np.asarray(self.embeds[index]), new_index, len(clips))


def spread_indices(num_windows: int, max_windows: int | None) -> np.ndarray:
    """Indices of at most ``max_windows`` windows spread evenly from the first to the last.

    Evenly spaced rather than the first ones: a song's opening (an intro without
    vocals or drums, say) is not representative of the song.
    """
    if max_windows is None or num_windows <= max_windows:
        return np.arange(num_windows)
    return np.unique(np.round(np.linspace(0, num_windows - 1, max_windows)).astype(np.int64))


def _encoder_of(model: nn.Module) -> MSCLModel:
    """The :class:`MSCLModel` inside ``model`` (itself, a pre-training or classifier model),
    or a baseline feature module (:class:`~modeling_mscl.probing.baselines.LogMelStatistics`)."""
    from .baselines import LogMelStatistics

    model = getattr(model, "module", model)  # DDP / accelerate wrappers
    model = getattr(model, "_orig_mod", model)  # torch.compile
    if isinstance(model, (MSCLModel, LogMelStatistics)):
        return model
    inner = getattr(model, "mscl", None)
    if isinstance(inner, MSCLModel):
        return inner
    raise TypeError(f"expected an MSCLModel or a model with an `.mscl` encoder, got {type(model)}")


def clip_log_mel(
    waveform: np.ndarray | torch.Tensor, feature_extractor: MSCLFeatureExtractor
) -> torch.Tensor:
    """Log-mel frames `(frames, mel)` of one 1-D clip, zero-padded to at least one window:
    the extractor's own per-clip features (`MSCLFeatureExtractor.clip_features`), computed
    in float32 whatever the clip's type, as the probes always were."""
    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(-1)
    return feature_extractor.clip_features(wav)


def window_features(
    waveform: np.ndarray | torch.Tensor,
    feature_extractor: MSCLFeatureExtractor,
    hop_frames: int | None = None,
    max_windows: int | None = None,
) -> torch.Tensor:
    """Log-mel windows of one 1-D clip, `(windows, window_frames, mel)`.

    Windows start every ``hop_frames`` frames (default: one window, non-overlapping, as
    ``feature_extractor(..., return_windows=True)``); a clip shorter than one window is
    zero-padded to one, as the feature extractor does. ``max_windows`` keeps at most that
    many, evenly spaced (:func:`spread_indices`).
    """
    fe = feature_extractor
    frames = clip_log_mel(waveform, fe)  # (frames, mel)
    # Cut where the extractor's return_windows cuts: the same function.
    windows, _, _ = frame_windows(frames[None], fe.window_frames, hop=hop_frames)
    if max_windows is not None:
        windows = windows[torch.from_numpy(spread_indices(windows.shape[0], max_windows))]
    return windows


def _encode(encoder: MSCLModel, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Pooled features of `(n, frames, mel)` windows, in batches, as float32 on the CPU."""
    return encode_windows(encoder, windows, batch_size, device="cpu")


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 64
) -> MSCLModel:
    """A copy of the encoder whose batch-norm statistics are those of ``windows`` (precise BN).

    Eval mode normalises with running statistics, which batch norm's momentum (0.01, Keras'
    0.99) lets follow the activations only after some 500 updates: a fresh encoder, or one
    a few hundred steps into pre-training, computes in eval mode something else than it
    does in training (a fresh one, with statistics (0, 1), is then close to a random linear
    map of its tiny 1/255-scaled input). Here every running mean and variance is replaced
    by the average over ``windows`` `(n, frames, mel)` of the batch statistics that
    training mode uses; nothing else changes (stochastic depth stays off) and ``model``
    itself is left as it was.
    """
    # Plain batch norm in the copy: a SyncBatchNorm layer (multi-GPU pre-training) in
    # training mode would all-gather its statistics with the other processes, which do not
    # take part in this (the probe hook runs on the main process alone): a hang.
    encoder = plain_batch_norm(copy.deepcopy(_encoder_of(model))).eval()
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
        norm.train()
    encode_windows(encoder, windows, batch_size)  # batch statistics accumulate as it runs
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return encoder.eval()


def plain_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``SyncBatchNorm`` replaced, in place, by a ``BatchNorm2d`` of
    the same settings, parameters and statistics (the inverse of
    ``SyncBatchNorm.convert_sync_batchnorm`` for this model's 2-D batch norms)."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        like = module.weight if module.affine else module.running_mean
        if like is not None:
            plain = plain.to(like.device, like.dtype)
        plain.load_state_dict(module.state_dict())
        if module.affine:
            plain.weight.requires_grad_(module.weight.requires_grad)
            plain.bias.requires_grad_(module.bias.requires_grad)
        return plain.train(module.training)
    for name, child in module.named_children():
        replaced = plain_batch_norm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="clip")


def extract_window_embeddings(
    model: nn.Module,
    audio: Sequence[Any],
    feature_extractor: MSCLFeatureExtractor | None = None,
    hop_frames: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "Embedding",
) -> WindowEmbeddings:
    """Pooled features of the windows of every clip in ``audio``.

    ``audio`` holds paths or other audio items (:func:`~modeling_mscl.audio_io.load_audio`;
    :func:`~modeling_mscl.audio_io.audio_column` reads a datasets ``Audio`` column). Clips
    are decoded at the extractor's rate, cut into ``window_frames``-frame windows
    every ``hop_frames`` frames (at most ``max_windows`` per clip, evenly spaced; the
    others are never encoded) and encoded ``batch_size`` windows at a time (across clip
    boundaries), in eval mode and without gradients.
    """
    encoder = _encoder_of(model)
    fe = load_feature_extractor(feature_extractor, encoder.config.num_mel_bins)
    embeds: list[torch.Tensor] = []
    counts: list[int] = []
    pending: list[torch.Tensor] = []
    pending_rows = 0
    with eval_mode(encoder):
        for item in _progress(audio, len(audio), desc, progress):
            wav = load_audio(item, fe.sampling_rate)
            windows = window_features(wav, fe, hop_frames, max_windows)
            counts.append(windows.shape[0])
            pending.append(windows)
            pending_rows += windows.shape[0]
            if pending_rows >= batch_size:
                stacked = torch.cat(pending)
                full = (stacked.shape[0] // batch_size) * batch_size
                embeds.append(_encode(encoder, stacked[:full], batch_size))
                pending = [stacked[full:]]
                pending_rows = stacked.shape[0] - full
        if pending_rows:
            embeds.append(_encode(encoder, torch.cat(pending), batch_size))
    dim = encoder.config.encoder_hidden_size
    array = torch.cat(embeds).numpy() if embeds else np.zeros((0, dim), np.float32)
    index = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return WindowEmbeddings(array, index, len(counts))


# Config entries that do not change what the encoder computes (names, paths, head and
# output settings): left out of the fingerprint, so a reloaded encoder hits the cache.
_CONFIG_BOOKKEEPING = frozenset(
    {
        "_name_or_path", "architectures", "auto_map", "transformers_version", "id2label",
        "label2id", "num_labels", "problem_type", "classifier_head", "classifier_hidden_size",
        "freeze_encoder", "dropout_rate", "return_dict", "output_attentions",
        "output_hidden_states", "dtype", "torch_dtype", "chunk_size_feed_forward",
        "is_encoder_decoder", "custom_pipelines", "classifier_window_frames",
    }
)  # fmt: skip


def encoder_fingerprint(model: nn.Module) -> str:
    """SHA-1 of an encoder's configuration and weights (buffers included).

    Two encoders with the same fingerprint give the same embeddings, whatever folder or
    object they come from (a pre-training model, a reloaded encoder, a probe export):
    the key of the embedding cache.
    """
    encoder = _encoder_of(model)
    digest = hashlib.sha1()
    config = {k: v for k, v in encoder.config.to_dict().items() if k not in _CONFIG_BOOKKEEPING}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _audio_identity(item: Any) -> str:
    """What one clip's embeddings depend on: a file's path, size and modification time; the
    bytes or samples of audio held in memory (a datasets item, an array)."""
    if isinstance(item, (str, os.PathLike)):
        stat = os.stat(item)
        return f"{os.path.abspath(item)}\0{stat.st_size}\0{stat.st_mtime_ns}"
    encoded = getattr(item, "_hf_encoded", None)  # a datasets AudioDecoder: its source
    if isinstance(encoded, Mapping):
        return _audio_identity(encoded)
    if isinstance(item, Mapping):
        if "array" in item or "raw" in item:
            array = np.ascontiguousarray(item["array"] if "array" in item else item["raw"])
            digest = hashlib.sha1(array.view(np.uint8).reshape(-1)).hexdigest()
            return f"array\0{array.dtype}\0{array.shape}\0{item.get('sampling_rate')}\0{digest}"
        if item.get("bytes") is not None:
            return f"bytes\0{hashlib.sha1(item['bytes']).hexdigest()}"
        if item.get("path"):
            return _audio_identity(item["path"])
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"bytes\0{hashlib.sha1(item).hexdigest()}"
    raise TypeError(
        f"cannot identify a {type(item).__name__} for the embedding cache: pass paths, "
        "datasets audio items or {'array', 'sampling_rate'} dicts, or cache_dir=None"
    )


def _audio_fingerprint(audio: Sequence[Any]) -> str:
    """SHA-1 of the clips' identity (:func:`_audio_identity` of each).

    Datasets rebuilt by a loader get a new random `datasets` fingerprint each time; the
    files (or the bytes) themselves are what the embeddings depend on.
    """
    digest = hashlib.sha1()
    for item in audio:
        digest.update(_audio_identity(item).encode() + b"\n")
    return digest.hexdigest()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename: no half-written cache."""
    with atomic_write(path, "wb") as handle:
        np.save(handle, array)


def cached_window_embeddings(
    model: nn.Module,
    audio: Sequence[Any],
    cache_dir: str | os.PathLike | None,
    split: str = "data",
    feature_extractor: MSCLFeatureExtractor | None = None,
    hop_frames: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    model_key: str | None = None,
) -> WindowEmbeddings:
    """:func:`extract_window_embeddings`, read from / written to ``cache_dir`` when given.

    Key: the encoder's fingerprint (or ``model_key``), the extractor's settings, the hop,
    the window cap and the audio files' identity; files ``<cache_dir>/<encoder>/<split>-<key>.{embeds,
    clips}.npy`` are written atomically (index first, embeddings last, so the embeddings
    file marks a complete entry) and memory-mapped when read back.
    """
    encoder = _encoder_of(model)
    fe = load_feature_extractor(feature_extractor, encoder.config.num_mel_bins)
    hop = hop_frames or fe.window_frames
    options = dict(
        feature_extractor=fe, hop_frames=hop, max_windows=max_windows, batch_size=batch_size,
        progress=progress, desc=f"Embedding {split}",
    )  # fmt: skip
    if cache_dir is None:
        return extract_window_embeddings(encoder, audio, **options)
    model_key = model_key or encoder_fingerprint(encoder)
    settings = json.dumps(
        {
            "fe": fe.to_dict(),
            "hop": hop,
            "max_windows": max_windows,
            "audio": _audio_fingerprint(audio),
        },
        sort_keys=True,
        default=str,
    )
    key = hashlib.sha1(settings.encode()).hexdigest()[:16]
    folder = Path(cache_dir) / model_key[:16]
    folder.mkdir(parents=True, exist_ok=True)
    embeds_path = folder / f"{split}-{key}.embeds.npy"
    clips_path = folder / f"{split}-{key}.clips.npy"
    if embeds_path.is_file() and clips_path.is_file():
        logger.info("embedding cache hit: %s", embeds_path)
        return WindowEmbeddings(
            np.load(embeds_path, mmap_mode="r"), np.load(clips_path), len(audio)
        )
    result = extract_window_embeddings(encoder, audio, **options)
    _save_npy_atomic(clips_path, result.clip_index)
    _save_npy_atomic(embeds_path, result.embeds)
    return result
