"""S3T-style spectrogram augmentations for the augmentation baseline (METHOD.md section 6).

The baseline trains COLA with both crops augmented by time warping, a frequency shift,
frequency masks and time masks, all on log-mel crops. The augmentation is split in two
so that a minibatch stays a pure function of (seed, step) and a sharded batch sees
exactly the augmentations of the global batch:

- :meth:`SpecAugmentation.draw` draws every random parameter for the *global* batch with
  a numpy generator (small integer arrays, cheap);
- :meth:`SpecAugmentation.apply` applies them to any slice of that batch with vectorised
  torch operations (no per-crop Python loop), on whatever device the crops are on.

The parameter ranges are ours (S3T does not fix them for 98-frame, 64-bin crops); they
are SpecAugment-like and scaled to a one-second window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AugmentParams", "SpecAugmentation"]

AugmentParams = dict[str, np.ndarray]


@dataclass(frozen=True)
class SpecAugmentation:
    """Random time warp, frequency shift, frequency masks and time masks of log-mel crops.

    Each transform is applied to each crop independently with probability ``prob`` (each
    mask too), in the order warp, shift, frequency masks, time masks.

    Args:
        time_warp_frames: largest displacement of the warp's anchor frame (0 disables).
        freq_shift_bins: largest shift of the spectrum up or down, in mel bins (0 disables);
            bins shifted in from outside take the crop's minimum (close to silence).
        freq_masks: number of frequency masks per crop.
        freq_mask_bins: largest width of a frequency mask, in bins.
        time_masks: number of time masks per crop.
        time_mask_frames: largest width of a time mask, in frames.
        prob: probability of each transform (and of each mask) per crop.

    Masked cells take the crop's mean, so a mask removes information without adding an
    out-of-range value.
    """

    time_warp_frames: int = 10
    freq_shift_bins: int = 4
    freq_masks: int = 2
    freq_mask_bins: int = 8
    time_masks: int = 2
    time_mask_frames: int = 10
    prob: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "time_warp_frames",
            "freq_shift_bins",
            "freq_masks",
            "freq_mask_bins",
            "time_masks",
            "time_mask_frames",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SpecAugmentation: {name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"SpecAugmentation: prob must lie in [0, 1], got {self.prob!r}")

    def check_shape(self, frames: int, bins: int) -> None:
        """Raise ValueError if crops of ``frames`` x ``bins`` are too small for these ranges."""
        if self.time_warp_frames and frames < 2 * self.time_warp_frames + 4:
            raise ValueError(
                f"time_warp_frames={self.time_warp_frames} needs crops of at least "
                f"{2 * self.time_warp_frames + 4} frames, got {frames}"
            )
        if self.time_mask_frames > frames or self.freq_mask_bins > bins:
            raise ValueError(
                f"masks up to {self.time_mask_frames} frames / {self.freq_mask_bins} bins do not "
                f"fit crops of {frames} x {bins}"
            )
        if self.freq_shift_bins >= bins:
            raise ValueError(f"freq_shift_bins={self.freq_shift_bins} must be < {bins} bins")

    def draw(self, rng: np.random.Generator, n: int, frames: int, bins: int) -> AugmentParams:
        """Random parameters for ``n`` crops of ``frames`` x ``bins``.

        The generator is always advanced by the same amount for a given ``n``, so the
        draws that follow in the caller do not depend on which transforms were picked.
        """
        self.check_shape(frames, bins)
        w = self.time_warp_frames
        # The anchor frame c and its new place c + d both stay strictly inside (0, frames - 1),
        # so both linear pieces of the warp have a positive length.
        center = rng.integers(w + 1, frames - 1 - w, size=n) if w else np.zeros(n, np.int64)
        warp = rng.integers(-w, w + 1, size=n)
        warp = np.where(rng.random(n) < self.prob, warp, 0)
        shift = rng.integers(-self.freq_shift_bins, self.freq_shift_bins + 1, size=n)
        shift = np.where(rng.random(n) < self.prob, shift, 0)

        def masks(count: int, widest: int, length: int) -> tuple[np.ndarray, np.ndarray]:
            width = rng.integers(0, widest + 1, size=(n, count))
            width = np.where(rng.random((n, count)) < self.prob, width, 0)
            start = rng.integers(0, length - width + 1)  # the mask fits inside the crop
            return start, width

        freq_start, freq_width = masks(self.freq_masks, self.freq_mask_bins, bins)
        time_start, time_width = masks(self.time_masks, self.time_mask_frames, frames)
        return {
            "warp_center": center.astype(np.int64),
            "warp_shift": warp.astype(np.int64),
            "freq_shift": shift.astype(np.int64),
            "freq_mask_start": freq_start.astype(np.int64),
            "freq_mask_width": freq_width.astype(np.int64),
            "time_mask_start": time_start.astype(np.int64),
            "time_mask_width": time_width.astype(np.int64),
        }

    @staticmethod
    def slice(params: AugmentParams, index: slice | np.ndarray) -> AugmentParams:
        """The parameters of a subset of the crops (e.g. this process's shard)."""
        return {name: value[index] for name, value in params.items()}

    def apply(self, crops: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment ``crops`` `(n, frames, bins)` with ``params`` drawn for `n` crops.

        ``params`` may hold numpy arrays or tensors. Returns a new float32 tensor on the
        crops' device; the input is left untouched.
        """
        x = crops.to(torch.float32, copy=True)  # every step below works in place on x
        n, frames, bins = x.shape
        if len(params["warp_shift"]) != n:
            raise ValueError(f"params were drawn for {len(params['warp_shift'])} crops, got {n}")
        dev = x.device

        def t(name: str) -> torch.Tensor:
            return torch.as_tensor(params[name]).to(dev)

        x = _time_warp(x, t("warp_center"), t("warp_shift"))
        x = _freq_shift(x, params["freq_shift"])
        mean = x.mean(dim=(1, 2), keepdim=True)
        keep_bins = ~_span_mask(t("freq_mask_start"), t("freq_mask_width"), bins)
        keep_frames = ~_span_mask(t("time_mask_start"), t("time_mask_width"), frames)
        # Broadcast products instead of a full (n, frames, bins) bool mask: much cheaper.
        keep = keep_frames[:, :, None].float() * keep_bins[:, None, :].float()
        return x.sub_(mean).mul_(keep).add_(mean)


def _time_warp(x: torch.Tensor, center: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear time warp: frame ``center`` moves to ``center + shift``.

    Output frame t reads input position t * c / (c + d) before the new anchor, and
    c + (t - c - d) * (T - 1 - c) / (T - 1 - c - d) after it, interpolated linearly.
    Only crops with a non-zero shift are computed (a zero shift is the identity); ``x``
    is modified in place and returned.
    """
    rows = torch.nonzero(shift).flatten()
    if rows.numel() == 0:
        return x
    frames = x.shape[1]
    xs = x[rows]
    t = torch.arange(frames, device=x.device, dtype=torch.float32)[None, :]
    c = center[rows].float()[:, None]
    moved = c + shift[rows].float()[:, None]
    last = float(frames - 1)
    left = t * c / moved
    right = c + (t - moved) * (last - c) / (last - moved)
    src = torch.where(t <= moved, left, right).clamp(0, last)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=frames - 1)
    weight = (src - i0.float())[:, :, None].expand(-1, -1, x.shape[2])
    # Rows of the flattened (crops * frames, bins) view: index_select + lerp is far faster
    # on the CPU than advanced indexing with broadcast weights.
    base = torch.arange(len(rows), device=x.device)[:, None] * frames
    flat = xs.reshape(-1, x.shape[2])
    lower = flat.index_select(0, (base + i0).flatten()).view_as(xs)
    upper = flat.index_select(0, (base + i1).flatten()).view_as(xs)
    return x.index_copy_(0, rows, lower.lerp_(upper, weight))


def _freq_shift(x: torch.Tensor, shift: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Move the spectrum ``shift`` bins up (positive) or down; new bins take the crop minimum.

    Crops are grouped by shift value (at most 2 * freq_shift_bins + 1 groups), so each
    group is one slice copy rather than a per-element gather. ``x`` is modified in place.
    """
    shift = torch.as_tensor(shift).cpu()
    if not bool((shift != 0).any()):
        return x
    bins = x.shape[2]
    floor = x.amin(dim=(1, 2), keepdim=True)
    for value in torch.unique(shift).tolist():
        if value == 0:
            continue
        rows = torch.nonzero(shift == value).flatten().to(x.device)
        part = floor[rows].expand(len(rows), x.shape[1], bins).clone()
        if value > 0:
            part[:, :, value:] = x[rows, :, : bins - value]
        else:
            part[:, :, :value] = x[rows, :, -value:]
        x.index_copy_(0, rows, part)
    return x


def _span_mask(start: torch.Tensor, width: torch.Tensor, length: int) -> torch.Tensor:
    """(n, length) bool: inside any of the (n, masks) spans [start, start + width)."""
    pos = torch.arange(length, device=start.device)[None, None, :]
    inside = (pos >= start[:, :, None]) & (pos < (start + width)[:, :, None])
    return inside.any(dim=1)
