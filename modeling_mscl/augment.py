"""The S3T spectrogram augmentation of the augmentation baseline.

The baseline trains COLA with both crops of a pair augmented, independently, by the
authors' S3T-style pipeline on log-mel crops (98 frames x 64 mel bins), in this order:

1. time masks (p 0.5): 1-9 masks, each 1-9 frames wide, starting in frames 0-86;
2. frequency masks (p 0.5): 1-4 masks, each 1-11 bins wide, starting in bins 0-63 and
   clipped at the top edge;
3. frequency shift (p 0.4): by u = 1-9 bins, bin b takes bin b + u (the content moves
   down) and the top u bins are vacated;
4. time warp (p 0.4): a pivot frame tc in 38-57; output frames 0-48 read the input at
   the 49 evenly spaced positions from 0 to tc, frames 49-97 at the 49 positions from
   tc + 1 to 97, with linear interpolation along time.

Masked cells and vacated bins are set to 0 (a literal 0 in the log domain). All counts,
widths and positions are uniform integers over the ranges above (both ends included),
and the four transforms are picked by four independent coins per crop. The defaults of
:class:`SpecAugmentation` are exactly these values.

The augmentation is split in two so that a minibatch stays a pure function of
(seed, step) and a sharded batch sees exactly the augmentations of the global batch:

- :meth:`SpecAugmentation.draw` draws every random parameter for the *global* batch with
  a numpy generator (small integer arrays, cheap);
- :meth:`SpecAugmentation.apply` applies them to any slice of that batch with vectorised
  torch operations (no per-crop Python loop), on whatever device the crops are on; off
  the CPU at fixed shapes, so that the host never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AugmentParams", "SpecAugmentation"]

# Parameter arrays of n crops, as returned by SpecAugmentation.draw:
#   time_mask_start, time_mask_width  (n, time_masks_max)  frames; width 0 = unused mask
#   freq_mask_start, freq_mask_width  (n, freq_masks_max)  bins; width 0 = unused mask
#   freq_shift                        (n,)                 bins; 0 = not shifted
#   time_warp_pivot                   (n,)                 frame tc; -1 = not warped
AugmentParams = dict[str, np.ndarray]

_INT_FIELDS = (
    "time_masks_max",
    "time_mask_frames_max",
    "time_mask_start_max",
    "freq_masks_max",
    "freq_mask_bins_max",
    "freq_shift_bins_max",
    "time_warp_pivot_min",
    "time_warp_pivot_max",
)
_PROB_FIELDS = ("time_mask_prob", "freq_mask_prob", "freq_shift_prob", "time_warp_prob")


@dataclass(frozen=True)
class SpecAugmentation:
    """S3T masks, frequency shift and time warp of log-mel crops (defaults: the reference).

    Each crop gets four independent coins: time masks, frequency masks, frequency shift
    and time warp, applied in that order. Ranges are inclusive; "uniform" means uniform
    over the integers of the range.

    Args:
        time_mask_prob: probability that a crop gets time masks (reference 0.5).
        time_masks_max: number of time masks, uniform in 1..this (reference 9).
        time_mask_frames_max: width of each time mask in frames, uniform in 1..this
            (reference 9).
        time_mask_start_max: first masked frame, uniform in 0..this (reference 86, for
            98-frame crops); a mask running past the last frame is clipped.
        freq_mask_prob: probability that a crop gets frequency masks (reference 0.5).
        freq_masks_max: number of frequency masks, uniform in 1..this (reference 4).
        freq_mask_bins_max: width of each frequency mask in mel bins, uniform in 1..this
            (reference 11). The first masked bin is uniform over every bin of the crop
            (0..63 for 64 bins) and a mask running past the top bin is clipped.
        freq_shift_prob: probability that a crop is shifted in frequency (reference 0.4).
        freq_shift_bins_max: the shift u in mel bins, uniform in 1..this (reference 9):
            bin b takes bin b + u and the top u bins take ``fill_value``.
        time_warp_prob: probability that a crop is time-warped (reference 0.4).
        time_warp_pivot_min: smallest pivot frame tc (reference 38).
        time_warp_pivot_max: largest pivot frame tc (reference 57). With ``frames``
            frames and h = frames // 2 (49 for 98 frames), output frames 0..h-1 read
            input positions linspace(0, tc, h) and frames h..frames-1 read
            linspace(tc + 1, frames - 1, frames - h), interpolated linearly in time.
        fill_value: value of masked cells and of the bins vacated by the shift
            (reference 0.0, in the log-mel domain).

    Crops of other sizes than 98 x 64 use the same rules with these absolute values,
    which must fit the crop (:meth:`check_shape`).
    """

    time_mask_prob: float = 0.5
    time_masks_max: int = 9
    time_mask_frames_max: int = 9
    time_mask_start_max: int = 86
    freq_mask_prob: float = 0.5
    freq_masks_max: int = 4
    freq_mask_bins_max: int = 11
    freq_shift_prob: float = 0.4
    freq_shift_bins_max: int = 9
    time_warp_prob: float = 0.4
    time_warp_pivot_min: int = 38
    time_warp_pivot_max: int = 57
    fill_value: float = 0.0

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"SpecAugmentation: {name} must be an integer, got {value!r}")
        for name in (
            "time_masks_max",
            "time_mask_frames_max",
            "freq_masks_max",
            "freq_mask_bins_max",
            "freq_shift_bins_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"SpecAugmentation: {name} must be >= 1 (set the probability to 0 to "
                    f"disable the transform), got {getattr(self, name)}"
                )
        for name in ("time_mask_start_max", "time_warp_pivot_min"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"SpecAugmentation: {name} must be >= 0, got {getattr(self, name)}"
                )
        if self.time_warp_pivot_max < self.time_warp_pivot_min:
            raise ValueError(
                f"SpecAugmentation: time_warp_pivot_max={self.time_warp_pivot_max} must be >= "
                f"time_warp_pivot_min={self.time_warp_pivot_min}"
            )
        for name in _PROB_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"SpecAugmentation: {name} must lie in [0, 1], got {value!r}")
        if not np.isfinite(self.fill_value):
            raise ValueError(
                f"SpecAugmentation: fill_value must be finite, got {self.fill_value!r}"
            )

    def check_shape(self, frames: int, bins: int) -> None:
        """Raise ValueError if crops of ``frames`` x ``bins`` cannot hold these ranges."""
        if frames < 4 or bins < 2:
            raise ValueError(f"crops must have >= 4 frames and >= 2 bins, got {frames} x {bins}")
        if self.time_mask_start_max > frames - 1:
            raise ValueError(
                f"time_mask_start_max={self.time_mask_start_max} must be <= {frames - 1} "
                f"(the last frame of {frames}-frame crops)"
            )
        if self.time_mask_frames_max > frames:
            raise ValueError(
                f"time_mask_frames_max={self.time_mask_frames_max} must be <= {frames} frames"
            )
        if self.freq_mask_bins_max > bins:
            raise ValueError(f"freq_mask_bins_max={self.freq_mask_bins_max} must be <= {bins} bins")
        if self.freq_shift_bins_max > bins - 1:
            raise ValueError(
                f"freq_shift_bins_max={self.freq_shift_bins_max} must be < {bins} bins"
            )
        # The second piece of the warp reads from tc + 1 to the last frame.
        if self.time_warp_pivot_max > frames - 2:
            raise ValueError(
                f"time_warp_pivot_max={self.time_warp_pivot_max} must be <= {frames - 2} "
                f"for {frames}-frame crops"
            )

    def draw(self, rng: np.random.Generator, n: int, frames: int, bins: int) -> AugmentParams:
        """Random parameters (see ``AugmentParams``) for ``n`` crops of ``frames`` x ``bins``.

        Every parameter is drawn whether or not its transform is picked, so the generator
        always advances by the same amount for a given ``n``: the draws that follow in the
        caller do not depend on which transforms were picked.
        """
        self.check_shape(frames, bins)

        def masks(
            prob: float, count_max: int, width_max: int, start_max: int
        ) -> tuple[np.ndarray, np.ndarray]:
            on = rng.random(n) < prob
            count = rng.integers(1, count_max + 1, size=n)
            start = rng.integers(0, start_max + 1, size=(n, count_max))
            width = rng.integers(1, width_max + 1, size=(n, count_max))
            # Mask k of a crop exists if the crop is picked and k < its mask count.
            used = on[:, None] & (np.arange(count_max)[None, :] < count[:, None])
            return np.where(used, start, 0), np.where(used, width, 0)

        time_start, time_width = masks(
            self.time_mask_prob,
            self.time_masks_max,
            self.time_mask_frames_max,
            self.time_mask_start_max,
        )
        freq_start, freq_width = masks(
            self.freq_mask_prob, self.freq_masks_max, self.freq_mask_bins_max, bins - 1
        )
        shift_on = rng.random(n) < self.freq_shift_prob
        shift = rng.integers(1, self.freq_shift_bins_max + 1, size=n)
        warp_on = rng.random(n) < self.time_warp_prob
        pivot = rng.integers(self.time_warp_pivot_min, self.time_warp_pivot_max + 1, size=n)
        return {
            "time_mask_start": time_start.astype(np.int64),
            "time_mask_width": time_width.astype(np.int64),
            "freq_mask_start": freq_start.astype(np.int64),
            "freq_mask_width": freq_width.astype(np.int64),
            "freq_shift": np.where(shift_on, shift, 0).astype(np.int64),
            "time_warp_pivot": np.where(warp_on, pivot, -1).astype(np.int64),
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
        for name, value in params.items():
            if len(value) != n:
                raise ValueError(f"params[{name!r}] was drawn for {len(value)} crops, got {n}")
        p = _on_device(params, n, x.device)
        fill = float(self.fill_value)
        keep_frames = ~_span_mask(p["time_mask_start"], p["time_mask_width"], frames)
        keep_bins = ~_span_mask(p["freq_mask_start"], p["freq_mask_width"], bins)
        # One broadcast product of 0/1 factors masks both axes in a single pass over x
        # (about twice as fast on the CPU as two masked_fill_ calls); crops are finite
        # log-mels, so x * 0 is 0 and x * 1 is x exactly.
        keep = keep_frames[:, :, None].float() * keep_bins[:, None, :].float()
        x.mul_(keep)
        if fill != 0.0:
            x.add_((1.0 - keep) * fill)
        x = _freq_shift(x, p["freq_shift"], fill)
        return _time_warp(x, p["time_warp_pivot"])


_PARAM_NAMES = (
    "time_mask_start",
    "time_mask_width",
    "freq_mask_start",
    "freq_mask_width",
    "freq_shift",
    "time_warp_pivot",
)


def _on_device(params: AugmentParams, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The parameters as int64 tensors on ``device``, in one copy.

    Six small copies from the host would each make it wait; one packed copy from pinned
    memory to a GPU is queued like a kernel.
    """
    parts = [torch.as_tensor(params[name]).reshape(n, -1).long() for name in _PARAM_NAMES]
    packed = torch.cat([part.to(parts[0].device) for part in parts], dim=1)
    if packed.device != device:
        if device.type == "cuda" and packed.device.type == "cpu":
            packed = packed.pin_memory()
        packed = packed.to(device, non_blocking=True)
    columns = packed.split([part.shape[1] for part in parts], dim=1)
    out = dict(zip(_PARAM_NAMES, columns, strict=True))
    out["freq_shift"] = out["freq_shift"][:, 0]
    out["time_warp_pivot"] = out["time_warp_pivot"][:, 0]
    return out


def _span_mask(start: torch.Tensor, width: torch.Tensor, length: int) -> torch.Tensor:
    """(n, length) bool: inside any of the (n, masks) spans [start, start + width).

    A span running past ``length`` is clipped; a zero width is an unused mask.
    """
    pos = torch.arange(length, device=start.device)[None, None, :]
    inside = (pos >= start[:, :, None]) & (pos < (start + width)[:, :, None])
    return inside.any(dim=1)


def _freq_shift(x: torch.Tensor, shift: torch.Tensor, fill: float) -> torch.Tensor:
    """Bin b takes bin b + shift (content moves down); the top ``shift`` bins take ``fill``.

    On the CPU one gather over the shifted crops only, ``x`` modified in place. Elsewhere
    one gather over every crop (a zero shift gathers each bin from itself, exactly): the
    same work whatever was drawn, so the host never waits for a count of shifted crops.
    """
    frames, bins = x.shape[1], x.shape[2]
    rows = _picked_rows(x, shift > 0)
    if rows is not None and rows.numel() == 0:
        return x
    part, shift = (x, shift) if rows is None else (x[rows], shift[rows])
    src = torch.arange(bins, device=x.device)[None, :] + shift[:, None]  # (crops, bins)
    index = src.clamp(max=bins - 1)[:, None, :].expand(-1, frames, -1)
    part = part.gather(2, index).masked_fill_((src >= bins)[:, None, :], fill)
    return part if rows is None else x.index_copy_(0, rows, part)


def _picked_rows(x: torch.Tensor, picked: torch.Tensor) -> torch.Tensor | None:
    """The indices of the picked crops on the CPU (computing only those is about twice as
    fast there); ``None`` on other devices, where counting them would make the host wait
    for the device, and every crop is computed instead."""
    return torch.nonzero(picked).flatten() if x.device.type == "cpu" else None


def _time_warp(x: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """Two-piece linear time warp around pivot frame tc (-1 = not warped).

    With T frames and h = T // 2, output frame j < h reads input position
    tc * j / (h - 1) and output frame h + k reads (tc + 1) + (T - 2 - tc) * k / (T - h - 1),
    i.e. linspace(0, tc, h) then linspace(tc + 1, T - 1, T - h), interpolated linearly.
    Positions are split into an integer frame and a fraction with integer arithmetic, so
    the frame index is exact and the fraction is one correctly rounded division. On the
    CPU only the warped crops are computed (``x`` modified in place); elsewhere every crop
    is warped (the unwarped ones around a stand-in pivot) and the unwarped ones are taken
    back unchanged, at fixed shapes.
    """
    frames, bins = x.shape[1], x.shape[2]
    warped = pivot >= 0
    rows = _picked_rows(x, warped)
    if rows is not None and rows.numel() == 0:
        return x
    xs = x if rows is None else x[rows]
    # Any valid pivot stands in for the unwarped crops (their result is not used).
    tc = (pivot.long().clamp(min=0) if rows is None else pivot[rows].long())[:, None]
    head, tail = frames // 2, frames - frames // 2
    k_head = torch.arange(head, device=x.device)[None, :]
    k_tail = torch.arange(tail, device=x.device)[None, :]
    num_head = tc * k_head  # position * (head - 1)
    num_tail = (frames - 2 - tc) * k_tail  # (position - tc - 1) * (tail - 1)
    i0 = torch.cat([num_head // (head - 1), tc + 1 + num_tail // (tail - 1)], dim=1)
    frac = torch.cat(
        [
            (num_head % (head - 1)).float() / (head - 1),
            (num_tail % (tail - 1)).float() / (tail - 1),
        ],
        dim=1,
    )
    i1 = (i0 + 1).clamp(max=frames - 1)  # the last position is the last frame: frac 0
    weight = frac[:, :, None].expand(-1, -1, bins)
    # Rows of the flattened (crops * frames, bins) view: index_select + lerp is far faster
    # on the CPU than advanced indexing with broadcast weights.
    base = torch.arange(xs.shape[0], device=x.device)[:, None] * frames
    flat = xs.reshape(-1, bins)
    lower = flat.index_select(0, (base + i0).flatten()).view_as(xs)
    upper = flat.index_select(0, (base + i1).flatten()).view_as(xs)
    out = lower.lerp_(upper, weight)
    if rows is None:
        return torch.where(warped[:, None, None], out, x)
    return x.index_copy_(0, rows, out)
