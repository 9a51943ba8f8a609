"""Tests of the chunk-set format: writing, the version check, the saved front end, reading."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from datasets import DatasetDict

from modeling_mscl.chunk_set import (
    CROP_FRAMES,
    FORMAT_VERSION,
    ChunkStore,
    load_chunk_set,
    save_chunk_set,
)
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import PairDataset, SourceBatchSampler, synthetic_chunk_dataset


def small(num_bins: int = 64, seed: int = 0):
    return synthetic_chunk_dataset(num_tracks=4, chunks_per_track=3, seed=seed, num_bins=num_bins)


def test_feature_extractor_round_trip(tmp_path):
    fe = MSCLFeatureExtractor(upper_edge_hertz=7000.0, log_floor=1e-6, normalize_waveform=False)
    save_chunk_set(DatasetDict(train=small(), test=small(seed=1)), tmp_path / "set", fe)
    saved = json.loads((tmp_path / "set" / "preprocessor_config.json").read_text())
    assert saved["upper_edge_hertz"] == 7000.0 and saved["normalize_waveform"] is False
    chunk_set = load_chunk_set(tmp_path / "set")
    assert chunk_set.splits == ["test", "train"]
    assert chunk_set.feature_extractor.to_dict() == fe.to_dict()
    store = chunk_set.store("test")
    assert store.feature_extractor is chunk_set.feature_extractor
    # A pickled store (what a spawned loader worker gets) keeps the front end, not its arrays.
    blob = pickle.dumps(store)
    assert len(blob) < 100_000
    assert pickle.loads(blob).feature_extractor.to_dict() == fe.to_dict()
    with pytest.raises(ValueError, match=r"set holds splits \['test', 'train'\]; pick one"):
        chunk_set.store()


def test_version_is_written_and_checked(tmp_path):
    folder = tmp_path / "set"
    save_chunk_set(small(), folder, MSCLFeatureExtractor())
    info = folder / "chunk_set.json"
    written = json.loads(info.read_text())
    assert written["format_version"] == FORMAT_VERSION
    assert sorted(written["files"]) == [
        "audio_decoding_mscl.py",
        "data-00000-of-00001.arrow",
        "dataset_info.json",
        "feature_extraction_mscl.py",
        "long_audio_mscl.py",
        "preprocessor_config.json",
        "state.json",
    ]
    for version, advice in ((1, "re-make it with"), (FORMAT_VERSION + 1, "upgrade modeling_mscl")):
        info.write_text(json.dumps({**written, "format_version": version}))
        message = (
            f"{folder} is a chunk set of format version {version}; this version of "
            f"modeling_mscl reads format version {FORMAT_VERSION}: {advice}"
        )
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            load_chunk_set(folder)
    info.write_text("{not json")
    with pytest.raises(ValueError, match="chunk_set.json: unreadable"):
        load_chunk_set(folder)
    # Written before this format: rows without chunk_set.json (nor a feature extractor).
    old = tmp_path / "old"
    small().save_to_disk(str(old))
    with pytest.raises(ValueError, match=f"{old} is a chunk set of format version 1.*re-make"):
        load_chunk_set(old)
    with pytest.raises(ValueError, match="not a chunk set"):
        load_chunk_set(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such chunk set folder"):
        load_chunk_set(tmp_path / "nope")
    info.write_text(json.dumps(written))
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="no preprocessor_config.json"):
        load_chunk_set(folder)


def test_a_save_replaces_the_previous_set_and_keeps_other_files(tmp_path):
    folder = tmp_path / "set"
    save_chunk_set(DatasetDict(train=small(), test=small(seed=1)), folder, MSCLFeatureExtractor())
    (folder / "report.json").write_text("{}")
    save_chunk_set(small(num_bins=40), folder, MSCLFeatureExtractor(feature_size=40))
    chunk_set = load_chunk_set(folder)
    assert chunk_set.splits == [] and not (folder / "train").exists()
    assert chunk_set.feature_extractor.feature_size == 40
    assert (folder / "report.json").is_file()
    # A front end that does not match the rows is refused before anything is written.
    with pytest.raises(ValueError, match="40 mel bins but the feature extractor computes 64"):
        save_chunk_set(small(num_bins=40), tmp_path / "other", MSCLFeatureExtractor())
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="window is 50 frames"):
        save_chunk_set(small(), tmp_path / "other", MSCLFeatureExtractor(window_frames=50))


def test_non_default_mel_bins_are_read_with_their_geometry(tmp_path):
    rows = small(num_bins=40)
    save_chunk_set(rows, tmp_path / "set", MSCLFeatureExtractor(feature_size=40), num_shards=2)
    store = load_chunk_set(tmp_path / "set").store()
    assert (store.chunk_frames, store.num_bins, store.feature_extractor.feature_size) == (
        392,
        40,
        40,
    )
    picks, offsets = np.array([11, 0, 5, 6]), np.array([0, 294, 7, 100])
    got = store.crops("bass", picks, offsets)
    reference = rows.with_format("numpy")["bass"]
    want = np.stack(
        [reference[r][o : o + CROP_FRAMES] for r, o in zip(picks, offsets, strict=True)]
    )
    assert got.shape == (4, CROP_FRAMES, 40)
    np.testing.assert_array_equal(got, want.astype(np.float16))
    sampler = SourceBatchSampler(store.present, 4, objective="s3t", num_bins=store.num_bins)
    batch = PairDataset(store, sampler, 2)[1]
    assert batch["anchor"].shape == batch["positive"].shape == (4, CROP_FRAMES, 40)
    # An in-memory dataset without a front end: the default one with its bins.
    assert ChunkStore(rows).feature_extractor.feature_size == 40
    with pytest.raises(ValueError, match="40 mel bins but the feature extractor computes 64"):
        ChunkStore(rows, MSCLFeatureExtractor())


def test_store_reads_rows_in_place_and_checks_indices(tmp_path):
    save_chunk_set(small(), tmp_path / "set", MSCLFeatureExtractor())
    store = load_chunk_set(tmp_path / "set").store()
    crop = store.crops("mixture", np.array([3]), np.array([0]))
    # The views read the memory-mapped file: nothing the size of the column was copied.
    views = store._open()["views"]["mixture"]
    assert len(views) == 1 and not views[0].flags.writeable and views[0].base is not None
    np.testing.assert_array_equal(crop[0], views[0][3, 0])
    with pytest.raises(IndexError, match="rows"):
        store.crops("mixture", np.array([len(store)]), np.array([0]))
    with pytest.raises(IndexError, match="rows"):
        store.crops("mixture", np.array([-1]), np.array([0]))
    with pytest.raises(IndexError, match="rows"):
        store.subset(np.arange(3)).crops("mixture", np.array([3]), np.array([0]))
    empty = ChunkStore(small().select([]))
    assert len(empty) == 0 and empty.present.shape == (0, 4)
    assert empty.crops("mixture", np.zeros(0, int), np.zeros(0, int)).shape == (0, 98, 64)
