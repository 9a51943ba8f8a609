"""Tests of the S3T augmentation: the reference procedure, its distribution, sharding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modeling_mscl.augment import SpecAugmentation
from modeling_mscl.pairs import CROP_FRAMES, SourceBatchSampler
from modeling_mscl.training_args import AugmentArguments, PretrainingArguments

BINS = 64

# The reference pipeline's values, for 98 x 64 crops.
REFERENCE = {
    "time_mask_prob": 0.5,
    "time_masks_max": 9,
    "time_mask_frames_max": 9,
    "time_mask_start_max": 86,
    "freq_mask_prob": 0.5,
    "freq_masks_max": 4,
    "freq_mask_bins_max": 11,
    "freq_shift_prob": 0.4,
    "freq_shift_bins_max": 9,
    "time_warp_prob": 0.4,
    "time_warp_pivot_min": 38,
    "time_warp_pivot_max": 57,
    "fill_value": 0.0,
}


def reference_augment(crop: np.ndarray, params: dict, i: int, fill: float = 0.0) -> np.ndarray:
    """One crop, written as plain loops over masks, bins and frames (float64)."""
    x = np.array(crop, dtype=np.float64)
    frames, bins = x.shape
    for start, width in zip(
        params["time_mask_start"][i], params["time_mask_width"][i], strict=True
    ):
        for f in range(start, start + width):
            if f < frames:
                x[f, :] = fill
    for start, width in zip(
        params["freq_mask_start"][i], params["freq_mask_width"][i], strict=True
    ):
        for b in range(start, start + width):
            if b < bins:
                x[:, b] = fill
    u = int(params["freq_shift"][i])
    if u > 0:
        shifted = np.full_like(x, fill)
        for b in range(bins - u):
            shifted[:, b] = x[:, b + u]
        x = shifted
    tc = int(params["time_warp_pivot"][i])
    if tc >= 0:
        head = frames // 2
        positions = np.concatenate(
            [np.linspace(0, tc, head), np.linspace(tc + 1, frames - 1, frames - head)]
        )
        grid = np.arange(frames)
        x = np.stack([np.interp(positions, grid, x[:, b]) for b in range(bins)], axis=1)
    return x


def test_defaults_are_the_reference():
    aug = SpecAugmentation()
    assert dataclasses.asdict(aug) == REFERENCE
    # The command line's defaults build the same augmentation.
    assert PretrainingArguments().spec_augmentation() == aug
    assert len(dataclasses.fields(AugmentArguments)) == len(REFERENCE)


@pytest.mark.parametrize(
    ("aug", "frames", "bins"),
    [
        (SpecAugmentation(), CROP_FRAMES, BINS),
        # Every transform on every crop, with masks that run past the edges.
        (
            SpecAugmentation(
                time_mask_prob=1.0,
                freq_mask_prob=1.0,
                freq_shift_prob=1.0,
                time_warp_prob=1.0,
                time_mask_start_max=97,
                fill_value=-3.5,
            ),
            CROP_FRAMES,
            BINS,
        ),
        # A small, odd-sized crop: the warp's halves are 8 and 9 frames.
        (
            SpecAugmentation(
                time_masks_max=3,
                time_mask_frames_max=4,
                time_mask_start_max=14,
                freq_masks_max=2,
                freq_mask_bins_max=5,
                freq_shift_bins_max=3,
                time_warp_pivot_min=0,
                time_warp_pivot_max=15,
                time_warp_prob=0.8,
            ),
            17,
            12,
        ),
    ],
    ids=["reference", "always-clipped-fill", "small-crop"],
)
def test_apply_equals_the_loop_reference(aug, frames, bins):
    n = 256
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(n, frames, bins)).astype(np.float32) * 3 - 5
    params = aug.draw(np.random.default_rng(1), n, frames, bins)
    out = aug.apply(torch.from_numpy(crops).half(), params)  # any input dtype -> float32
    assert out.dtype == torch.float32 and out.shape == (n, frames, bins)
    want = np.stack(
        [
            reference_augment(crops[i].astype(np.float16), params, i, aug.fill_value)
            for i in range(n)
        ]
    )
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)
    # Every kind of crop was exercised.
    assert (params["time_warp_pivot"] >= 0).any() and (params["freq_shift"] > 0).any()
    assert (params["time_mask_width"] > 0).any() and (params["freq_mask_width"] > 0).any()
    assert (params["time_warp_pivot"] < 0).any() or aug.time_warp_prob == 1.0


def test_each_transform_alone():
    n = 3
    # Cell (f, b) holds f + 1000 b: where each value came from can be read back.
    x = torch.arange(CROP_FRAMES, dtype=torch.float32)[None, :, None].expand(n, -1, BINS)
    x = (x + 1000 * torch.arange(BINS, dtype=torch.float32)[None, None, :]).contiguous()
    aug = SpecAugmentation()
    none = {
        "time_mask_start": np.zeros((n, 9), np.int64),
        "time_mask_width": np.zeros((n, 9), np.int64),
        "freq_mask_start": np.zeros((n, 4), np.int64),
        "freq_mask_width": np.zeros((n, 4), np.int64),
        "freq_shift": np.zeros(n, np.int64),
        "time_warp_pivot": np.full(n, -1, np.int64),
    }
    assert torch.equal(aug.apply(x, none), x)

    width = np.zeros((n, 9), np.int64)
    width[:, 0] = 5
    masked = aug.apply(x, dict(none, time_mask_start=np.full((n, 9), 10), time_mask_width=width))
    assert bool((masked[:, 10:15] == 0).all()) and torch.equal(masked[:, 15:], x[:, 15:])
    assert torch.equal(masked[:, :10], x[:, :10])

    width = np.zeros((n, 4), np.int64)
    width[:, 1] = 11
    start = np.full((n, 4), 60)  # runs past bin 63: clipped
    masked = aug.apply(x, dict(none, freq_mask_start=start, freq_mask_width=width))
    assert bool((masked[:, :, 60:] == 0).all()) and torch.equal(masked[:, :, :60], x[:, :, :60])

    shifted = aug.apply(x, dict(none, freq_shift=np.array([1, 9, 0])))
    assert torch.equal(shifted[0, :, :63], x[0, :, 1:]) and bool((shifted[0, :, 63] == 0).all())
    assert torch.equal(shifted[1, :, :55], x[1, :, 9:]) and bool((shifted[1, :, 55:] == 0).all())
    assert torch.equal(shifted[2], x[2])

    warped = aug.apply(x, dict(none, time_warp_pivot=np.array([38, 57, 48])))
    # Ends stay, time still increases, tc lands on output frame 48 and tc + 1 on frame 49.
    for i, tc in enumerate((38, 57)):
        torch.testing.assert_close(
            warped[i, [0, 48, 49, 97], 0], torch.tensor([0.0, tc, tc + 1, 97])
        )
        assert bool((warped[i, 1:, 0] > warped[i, :-1, 0]).all())
    # Position j * 38 / 48 between frames: a linear mix of its two neighbours.
    torch.testing.assert_close(warped[0, 1, :], x[0, 0, :] + 38 / 48)
    torch.testing.assert_close(warped[2], x[2])  # tc = 48 maps every frame to itself
    assert torch.equal(x[0, :, 0], torch.arange(98.0))  # the input is untouched


def test_draw_follows_the_reference_distribution():
    n = 40_000
    p = SpecAugmentation().draw(np.random.default_rng(7), n, CROP_FRAMES, BINS)
    tol = 0.015  # > 5 standard errors at n = 40,000
    time_count = (p["time_mask_width"] > 0).sum(1)
    freq_count = (p["freq_mask_width"] > 0).sum(1)
    shift, pivot = p["freq_shift"], p["time_warp_pivot"]
    assert abs((time_count > 0).mean() - 0.5) < tol
    assert abs((freq_count > 0).mean() - 0.5) < tol
    assert abs((shift > 0).mean() - 0.4) < tol
    assert abs((pivot >= 0).mean() - 0.4) < tol
    # The four coins are independent.
    assert abs(((time_count > 0) & (freq_count > 0)).mean() - 0.25) < tol
    assert abs(((shift > 0) & (pivot >= 0)).mean() - 0.16) < tol
    assert abs(((time_count > 0) & (pivot >= 0)).mean() - 0.2) < tol

    def uniform_over(values: np.ndarray, low: int, high: int) -> None:
        counts = np.bincount(values - low, minlength=high - low + 1)
        assert len(counts) == high - low + 1 and counts.min() > 0  # exactly low..high
        share = counts / counts.sum()
        assert np.abs(share - 1 / (high - low + 1)).max() < 0.2 / (high - low + 1)

    uniform_over(time_count[time_count > 0], 1, 9)
    uniform_over(freq_count[freq_count > 0], 1, 4)
    used = p["time_mask_width"] > 0
    uniform_over(p["time_mask_width"][used], 1, 9)
    uniform_over(p["time_mask_start"][used], 0, 86)
    used = p["freq_mask_width"] > 0
    uniform_over(p["freq_mask_width"][used], 1, 11)
    uniform_over(p["freq_mask_start"][used], 0, 63)
    uniform_over(shift[shift > 0], 1, 9)
    uniform_over(pivot[pivot >= 0], 38, 57)
    # Unused masks are padding: width 0 after the crop's count, and no masks when off.
    k = np.arange(9)[None, :]
    assert np.array_equal(p["time_mask_width"] > 0, k < time_count[:, None])
    assert set(np.unique(pivot[pivot < 0])) <= {-1} and shift.min() >= 0


def test_both_views_get_independent_draws():
    present = np.ones((600, 4), dtype=bool)
    sampler = SourceBatchSampler(present, 512, objective="s3t", seed=0)
    assert sampler.augmentation == SpecAugmentation()
    a, b = [], []
    for step in range(8):
        plan = sampler.plan(step)
        a.append(plan.anchor_augment)
        b.append(plan.positive_augment)
    anchor = {k: np.concatenate([d[k] for d in a]) for k in a[0]}
    positive = {k: np.concatenate([d[k] for d in b]) for k in b[0]}
    warp_a, warp_b = anchor["time_warp_pivot"] >= 0, positive["time_warp_pivot"] >= 0
    mask_a, mask_b = anchor["time_mask_width"].sum(1) > 0, positive["time_mask_width"].sum(1) > 0
    assert abs((warp_a & warp_b).mean() - 0.16) < 0.03
    assert abs((mask_a & mask_b).mean() - 0.25) < 0.03
    assert abs((warp_a & mask_b).mean() - 0.2) < 0.03
    assert not np.array_equal(anchor["time_warp_pivot"], positive["time_warp_pivot"])


def test_draws_are_deterministic_and_slices_commute():
    aug = SpecAugmentation()
    params = aug.draw(np.random.default_rng(5), 24, CROP_FRAMES, BINS)
    again = aug.draw(np.random.default_rng(5), 24, CROP_FRAMES, BINS)
    other = aug.draw(np.random.default_rng(6), 24, CROP_FRAMES, BINS)
    assert params.keys() == again.keys()
    assert all(np.array_equal(params[k], again[k]) for k in params)
    assert not all(np.array_equal(params[k], other[k]) for k in params)
    # The generator advances by the same amount whatever was picked.
    rngs = [np.random.default_rng(5), np.random.default_rng(5)]
    SpecAugmentation(time_warp_prob=0.0).draw(rngs[0], 24, CROP_FRAMES, BINS)
    SpecAugmentation(time_warp_prob=1.0).draw(rngs[1], 24, CROP_FRAMES, BINS)
    assert rngs[0].random() == rngs[1].random()

    x = torch.randn(24, CROP_FRAMES, BINS)
    whole = aug.apply(x, params)
    for part in (slice(0, 8), slice(8, 16), slice(16, 24), np.array([3, 17, 5])):
        shard = aug.apply(x[part], SpecAugmentation.slice(params, part))
        torch.testing.assert_close(shard, whole[part], rtol=0, atol=0)
    tensors = {k: torch.from_numpy(v) for k, v in params.items()}  # as a DataLoader delivers
    torch.testing.assert_close(aug.apply(x, tensors), whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="drawn for 24"):
        aug.apply(x[:5], params)


def test_bad_settings_raise():
    for bad in (
        {"time_mask_prob": 1.5},
        {"freq_shift_prob": -0.1},
        {"time_masks_max": 0},
        {"freq_mask_bins_max": 0},
        {"time_mask_start_max": -1},
        {"time_warp_pivot_min": 50, "time_warp_pivot_max": 40},
        {"time_masks_max": 2.5},
        {"fill_value": float("nan")},
    ):
        with pytest.raises(ValueError):
            SpecAugmentation(**bad)
    aug = SpecAugmentation()
    aug.check_shape(CROP_FRAMES, BINS)
    with pytest.raises(ValueError, match="time_mask_start_max"):
        aug.check_shape(80, BINS)
    with pytest.raises(ValueError, match="time_warp_pivot_max"):
        SpecAugmentation(time_mask_start_max=50).check_shape(58, BINS)
    with pytest.raises(ValueError, match="freq_mask_bins_max"):
        aug.check_shape(CROP_FRAMES, 10)
    with pytest.raises(ValueError, match="freq_shift_bins_max"):
        SpecAugmentation(freq_mask_bins_max=8).check_shape(CROP_FRAMES, 9)
    with pytest.raises(ValueError, match="time_mask_start_max"):
        SourceBatchSampler(
            np.ones((8, 4), bool),
            4,
            objective="s3t",
            augmentation=SpecAugmentation(time_mask_start_max=98),
        )
