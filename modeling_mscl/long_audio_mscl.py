"""Long audio: windows cut from log-mel features, run through a model a batch at a time,
and pooled back into clips.

Hub file: imports only the standard library and torch, so a saved folder loads with
``trust_remote_code=True`` without this package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Windows encoded at once when a long clip is classified or embedded window by window.
_WINDOW_BATCH = 64


# ------------------------------------------------------------ long audio: windows to clips
# How audio longer than one window is run, in one place for the models, the pipelines and
# the package's probes, apart from the model classes. Windows are cut in one place,
# `frame_windows`: `return_windows=True` (embed_audio, the embedding pipeline), the
# probes' `window_features` and the classifier's windows all call it. `map_windows` runs
# the windows through a model a batch at a time, so memory stays bounded whatever the
# length; `pool_windows` and `aggregate_window_logits` turn window rows into clip rows.

_WINDOW_OUTPUTS = ("pooler_output", "audio_embeds")


def frame_windows(
    features: torch.Tensor,
    window: int,
    attention_mask: torch.Tensor | None = None,
    hop: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Windows of ``window`` frames every ``hop`` frames (default: ``window``, no overlap) of
    `(batch, frames, bins)` features.

    The one place windows are cut: the extractor's `return_windows=True` (clip by clip, no
    overlap), the probes and the windowed classifier all call it. Returns `(windows
    (batch * n, window, bins), clip_index (batch * n,), real)`: frames after the last whole
    window are dropped. With an ``attention_mask``, ``real`` `(batch * n,)` marks the
    windows that hold at least one real frame (a clip's first window always counts);
    without one it is `None`.
    """
    batch, frames, bins = features.shape
    hop = window if hop is None else hop
    if frames < window or hop < 1:
        raise ValueError(f"cannot cut {frames} frames into windows of {window} every {hop}")
    windows = features.unfold(1, window, hop)  # (batch, n, bins, window): a view
    num = windows.shape[1]
    windows = windows.transpose(2, 3).reshape(batch * num, window, bins)
    clip_index = torch.arange(batch, device=features.device).repeat_interleave(num)
    real = None
    if attention_mask is not None:
        real = attention_mask.bool().unfold(1, window, hop).any(-1)
        real[:, 0] = True
        real = real.flatten()
    return windows, clip_index, real


def map_windows(
    fn: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``fn`` over ``windows`` (rows), ``batch_size`` rows at a time, concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.cat([fn(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)])


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Any:
    """``with eval_mode(model):`` runs the block with ``model`` in eval mode (batch norm
    frozen, no dropout) and gives it back its previous mode afterwards, even on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def encode_windows(
    encoder: nn.Module,
    windows: torch.Tensor,
    batch_size: int = _WINDOW_BATCH,
    output: str = "pooler_output",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``output`` of an encoder (an [`MSCLModel`], or a module with its `device`, `dtype`,
    `config` and outputs) for log-mel windows `(n, frames, mel)`, ``batch_size`` at a time,
    without gradients and in the encoder's current mode: float32 on ``device`` (default:
    the encoder's), each batch moved there as it comes (results of a GPU encoder can pile
    up on the CPU)."""
    if output not in _WINDOW_OUTPUTS:
        raise ValueError(f"output must be 'pooler_output' or 'audio_embeds', got {output!r}")
    device = encoder.device if device is None else device
    if len(windows) == 0:
        config = encoder.config
        dim = config.encoder_hidden_size if output == "pooler_output" else config.projection_dim
        return torch.zeros((0, dim), dtype=torch.float32, device=device)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        out = getattr(encoder(batch.to(encoder.device, encoder.dtype)), output)
        return out.to(device, torch.float32)

    return map_windows(encode, windows, batch_size)


def pool_windows(
    values: torch.Tensor, clip_index: torch.Tensor, num_clips: int, reduce: str = "mean"
) -> torch.Tensor:
    """Per-clip ``"sum"`` or ``"mean"`` of window rows: `(windows, dim)` -> `(clips, dim)`.

    ``clip_index`` `(windows,)` gives each row's clip; sums are in ``values``' dtype and a
    clip without rows gets zeros. On the CPU a clip's rows are added one after another,
    in order (``index_add``); on CUDA the order is free unless
    ``torch.use_deterministic_algorithms(True)``.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    sums = values.new_zeros((num_clips, *values.shape[1:])).index_add(0, clip_index, values)
    if reduce == "sum":
        return sums
    counts = torch.bincount(clip_index, minlength=num_clips).clamp_min(1)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


def aggregate_window_logits(
    logits: torch.Tensor, clip_index: torch.Tensor, num_clips: int, multi_label: bool
) -> torch.Tensor:
    """Clip scores `(clips, classes)` from window logits `(windows, classes)`: the probe protocol.

    Multi-label: the mean of the windows' sigmoids (the paper's tagging protocol), a
    probability per tag. Single-label: the sum of the windows' logits (its arg-max is the
    prediction).
    """
    if multi_label:
        return pool_windows(torch.sigmoid(logits), clip_index, num_clips, "mean")
    return pool_windows(logits, clip_index, num_clips, "sum")
