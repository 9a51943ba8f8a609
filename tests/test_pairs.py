"""Tests of the pair data path: memory-mapped crops, the source batch sampler, augmentations."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from modeling_mscl.chunk_set import ChunkStore, load_chunk_set, save_chunk_set
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import (
    CROP_FRAMES,
    PairDataset,
    SourceBatchSampler,
    apply_augmentation,
    holdout_mask,
    synthetic_chunk_dataset,
)
from modeling_mscl.stems import SOURCES


@pytest.fixture(scope="module")
def chunk_dir(tmp_path_factory):
    """A saved chunk set of 3 files with small record batches (several buffers per column)."""
    from datasets import concatenate_datasets

    parts = [synthetic_chunk_dataset(num_tracks=4, chunks_per_track=5, seed=s) for s in range(3)]
    for i, part in enumerate(parts):
        ids = [f"{t}-{i}" for t in part["track_id"]]
        parts[i] = part.remove_columns("track_id").add_column("track_id", ids)
    path = tmp_path_factory.mktemp("chunks") / "set"
    save_chunk_set(concatenate_datasets(parts), path, MSCLFeatureExtractor(), num_shards=3)
    ds = load_chunk_set(path).data
    assert ds.data.column("mixture").num_chunks >= 3
    return path


@pytest.fixture(scope="module")
def dataset(chunk_dir):
    return load_chunk_set(chunk_dir).data


def reference_crop(dataset, column, row, offset):
    return np.asarray(dataset[int(row)][column], dtype=np.float16)[offset : offset + CROP_FRAMES]


def test_crops_match_rows_across_files_and_selections(dataset):
    store = ChunkStore(dataset)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(dataset), 40)
    offsets = rng.integers(0, 392 - CROP_FRAMES + 1, 40)
    for column in ("mixture", "drums"):
        got = store.crops(column, rows, offsets)
        want = np.stack(
            [reference_crop(dataset, column, r, o) for r, o in zip(rows, offsets, strict=True)]
        )
        assert got.dtype == np.float16 and got.shape == (40, CROP_FRAMES, 64)
        np.testing.assert_array_equal(got, want)
    # The last row and the last offset: the edges of the view.
    last = store.crops("other", np.array([len(dataset) - 1]), np.array([392 - CROP_FRAMES]))
    np.testing.assert_array_equal(
        last[0], reference_crop(dataset, "other", len(dataset) - 1, 392 - CROP_FRAMES)
    )
    # A select() keeps an indices mapping; a subset indexes the store's own rows.
    picked = [57, 3, 31, 3]
    selected = ChunkStore(dataset.select(picked))
    subset = store.subset(np.array(picked))
    zeros = np.zeros(4, dtype=np.int64)
    want = np.stack([reference_crop(dataset, "vocals", r, 0) for r in picked])
    np.testing.assert_array_equal(selected.crops("vocals", np.arange(4), zeros), want)
    np.testing.assert_array_equal(subset.crops("vocals", np.arange(4), zeros), want)
    np.testing.assert_array_equal(subset.present, np.asarray(dataset["present"])[picked])


def test_store_checks_and_pickles(dataset):
    store = ChunkStore(dataset)
    np.testing.assert_array_equal(store.present, np.asarray(dataset["present"]))
    with pytest.raises(IndexError):
        store.crops("mixture", np.array([0]), np.array([392 - CROP_FRAMES + 1]))
    with pytest.raises(ValueError, match="lacks"):
        ChunkStore(dataset.remove_columns("bass"))
    # Pickling carries the (memory-mapped) dataset, never raw addresses or copies.
    store.crops("mixture", np.array([1]), np.array([0]))
    blob = pickle.dumps(store)
    assert len(blob) < 100_000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(
        again.crops("bass", np.array([5, 6]), np.array([10, 20])),
        store.crops("bass", np.array([5, 6]), np.array([10, 20])),
    )


def test_holdout_is_by_track_and_stable():
    ids = [f"t{i // 3}" for i in range(300)]
    mask = holdout_mask(ids, 0.3)
    by_track = {}
    for track, held in zip(ids, mask, strict=True):
        by_track.setdefault(track, set()).add(bool(held))
    assert all(len(v) == 1 for v in by_track.values())  # never split inside a track
    assert 0.15 < mask.mean() < 0.45
    np.testing.assert_array_equal(holdout_mask(ids[::-1], 0.3), mask[::-1])
    assert not holdout_mask(ids, 0.0).any()


def random_present(rows=200, seed=0, prob=0.6):
    return np.random.default_rng(seed).random((rows, 4)) < prob


def test_sampler_is_a_pure_function_of_seed_and_step():
    present = random_present()
    a = SourceBatchSampler(present, 16, seed=3)
    b = SourceBatchSampler(present, 16, seed=3)
    for step in (0, 5, 1234):
        pa_, pb = a.plan(step), b.plan(step)
        np.testing.assert_array_equal(pa_.rows, pb.rows)
        np.testing.assert_array_equal(pa_.anchor_offsets, pb.anchor_offsets)
        assert (pa_.source, pa_.active) == (pb.source, pb.active)
    c = SourceBatchSampler(present, 16, seed=4)
    assert any(not np.array_equal(a.plan(s).rows, c.plan(s).rows) for s in range(5))
    assert not np.array_equal(a.plan(0).rows, a.plan(1).rows)
    # Validation draws are independent of training draws.
    v = SourceBatchSampler(present, 16, seed=3, stream=1)
    assert not np.array_equal(a.plan(0).rows, v.plan(0).rows)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_active_and_random_minibatches():
    present = random_present(prob=0.5)
    sampler = SourceBatchSampler(present, 32, sources=("drums", "bass"), seed=0)
    sources, actives = [], []
    for step in range(400):
        plan = sampler.plan(step)
        assert plan.source in (1, 2)
        np.testing.assert_array_equal(plan.present, present[plan.rows, plan.source])
        if plan.active:
            assert plan.present.all()
        assert len(set(plan.rows.tolist())) == 32  # no chunk twice in a minibatch
        assert plan.anchor_offsets.min() >= 0 and plan.anchor_offsets.max() <= 392 - CROP_FRAMES
        assert plan.positive_offsets.max() <= 392 - CROP_FRAMES
        sources.append(plan.source)
        actives.append(plan.active)
    assert 0.4 < np.mean(np.array(sources) == 1) < 0.6  # uniform over the sources
    assert 0.4 < np.mean(actives) < 0.6  # active with probability 0.5
    random_plans = [sampler.plan(s) for s in range(400) if not actives[s]]
    assert any(not p.present.all() for p in random_plans)  # random batches meet absent rows
    # Without absent sources every minibatch is active.
    only_active = SourceBatchSampler(present, 32, absent_sources=False, seed=0)
    assert all(only_active.plan(s).active and only_active.plan(s).present.all() for s in range(50))
    # COLA / S3T: mixture positives, all present.
    cola = SourceBatchSampler(present, 32, objective="cola", seed=0)
    plan = cola.plan(0)
    assert plan.source == -1 and plan.column == "mixture" and plan.present.all()


def test_sampler_rejects_bad_settings():
    present = random_present()
    present[:, 3] = False
    with pytest.raises(ValueError, match="other"):
        SourceBatchSampler(present, 8, sources=("other",))
    SourceBatchSampler(present, 8, sources=("other",), random_batch_prob=1.0)  # random only: fine
    with pytest.raises(ValueError, match="sources"):
        SourceBatchSampler(present, 8, sources=("piano",))
    with pytest.raises(ValueError, match="objective"):
        SourceBatchSampler(present, 8, objective="byol")


def test_sampler_never_repeats_chunks_silently(caplog):
    present = random_present()
    with pytest.raises(ValueError, match=f"larger than the {len(present)} chunks"):
        SourceBatchSampler(present, len(present) + 1, objective="cola")
    present[:, 0] = False
    present[:3, 0] = True  # vocals in 3 chunks only: active vocal batches must repeat
    with caplog.at_level("WARNING"):
        SourceBatchSampler(present, 8)
    assert "{'vocals': 3}" in caplog.text and "batch_size=8" in caplog.text


@pytest.mark.parametrize("objective", ["mscl", "s3t"])
def test_shards_reassemble_the_global_batch(dataset, objective):
    store = ChunkStore(dataset)
    sampler = SourceBatchSampler(store.present, 12, objective=objective, seed=1)
    whole = PairDataset(store, sampler, 10)
    shards = [PairDataset(store, sampler, 10, process_index=r, num_processes=3) for r in range(3)]
    for step in (0, 7):
        full = whole[step]
        parts = [s[step] for s in shards]
        assert len({p["source"] for p in parts}) == 1  # one source on every process
        for key in ("anchor", "positive", "present"):
            joined = torch.cat([p[key] for p in parts])
            torch.testing.assert_close(joined, full[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple"):
        PairDataset(store, sampler, 10, num_processes=5)


def test_batches_hold_the_planned_crops_and_resume_exactly(dataset):
    store = ChunkStore(dataset)
    sampler = SourceBatchSampler(store.present, 8, seed=2)
    data = PairDataset(store, sampler, 50)
    batch, plan = data[4], sampler.plan(4)
    assert batch["anchor"].dtype == torch.float16 and batch["anchor"].shape == (8, CROP_FRAMES, 64)
    want = store.crops(SOURCES[plan.source], plan.rows, plan.positive_offsets)
    np.testing.assert_array_equal(batch["positive"].numpy(), want)
    # Resuming = starting the loader's range later: the same batches, with or without workers.
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(0, 6))
    resumed = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=range(3, 6), num_workers=2, prefetch_factor=2
    )
    first = list(loader)[3:]
    for a, b in zip(first, resumed, strict=True):
        assert a["step"] == b["step"] and a["source"] == b["source"]
        torch.testing.assert_close(a["anchor"], b["anchor"], rtol=0, atol=0)
        torch.testing.assert_close(a["positive"], b["positive"], rtol=0, atol=0)


@pytest.mark.parametrize("objective", ["mscl", "s3t"])
def test_workers_deliver_the_inline_batches(dataset, objective):
    store = ChunkStore(dataset)
    sampler = SourceBatchSampler(store.present, 8, objective=objective, seed=2)
    inline = PairDataset(store, sampler, 40)
    loader = torch.utils.data.DataLoader(
        PairDataset(store, sampler, 40),
        batch_size=None,
        sampler=range(5, 30),
        num_workers=2,
        prefetch_factor=2,
    )
    for step, b in zip(range(5, 30), loader, strict=True):
        a = inline[step]
        assert a["step"] == b["step"] == step and a["source"] == b["source"]
        assert b["anchor"].dtype == a["anchor"].dtype
        torch.testing.assert_close(a["anchor"], b["anchor"], rtol=0, atol=0)
        torch.testing.assert_close(a["positive"], b["positive"], rtol=0, atol=0)
        torch.testing.assert_close(a["present"], b["present"], rtol=0, atol=0)


def test_a_failing_batch_is_reported_not_raised(dataset):
    store = ChunkStore(dataset)
    sampler = SourceBatchSampler(store.present, 8, seed=0)
    data = PairDataset(store, sampler, 5)
    data.store = None  # any failure inside build
    item = data[2]
    assert item["step"] == 2 and "error" in item


# ------------------------------------------------------------------------- augmentations


def test_device_and_loader_augmentation_agree(dataset):
    store = ChunkStore(dataset)
    sampler = SourceBatchSampler(store.present, 8, objective="s3t", seed=0)
    in_loader = PairDataset(store, sampler, 3)[1]
    deferred = PairDataset(store, sampler, 3, augment_in_loader=False)[1]
    assert "anchor_augment" in deferred and deferred["anchor"].dtype == torch.float16
    moved = apply_augmentation(deferred, sampler.augmentation)
    assert "anchor_augment" not in moved
    torch.testing.assert_close(moved["anchor"], in_loader["anchor"])
    torch.testing.assert_close(moved["positive"], in_loader["positive"])
    assert not torch.equal(moved["anchor"], deferred["anchor"].float())
