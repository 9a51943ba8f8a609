"""A separation job split into shards and merged equals the unsharded run (oracle stems)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Value

from modeling_mscl.chunk_manifest import ChunkSetDamagedError
from modeling_mscl.chunk_set import SPECTROGRAM_COLUMNS, add_manifest, load_chunk_set
from modeling_mscl.chunk_shards import merge_chunk_sets, shard_dir, shard_tracks
from modeling_mscl.chunks import prepare_chunks
from modeling_mscl.stems import SOURCES, OracleSeparator

from .test_stems import (
    CHUNK_SAMPLES,
    MIN_TRACK_SAMPLES,
    CountingOracle,
    _label_features,
    make_multitrack,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-split corpus (one corrupt track), its unsharded run and its two shards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; the cores are shared
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    train = [
        make_multitrack(root, "t0", MIN_TRACK_SAMPLES, rng, loud={"vocals": None}),
        make_multitrack(
            root, "t1", 2 * CHUNK_SAMPLES + 300, rng, loud={"bass": [1], "drums": None}
        ),
        {"track_id": "bad", "audio": str(root / "bad.wav"), **dict.fromkeys(SOURCES)},
        make_multitrack(root, "t3", MIN_TRACK_SAMPLES + 500, rng),
        make_multitrack(root, "t4", 2 * CHUNK_SAMPLES + 400, rng, loud={"other": [0]}),
    ]
    (root / "bad.wav").write_bytes(b"RIFF not really audio")
    for i, row in enumerate(train):
        row["label"] = i
    test = [dict(make_multitrack(root, "u0", MIN_TRACK_SAMPLES + 9, rng), label=7)]
    features = _label_features({"label": Value("int64")})
    tracks = DatasetDict(
        train=Dataset.from_list(train, features=features),
        test=Dataset.from_list(test, features=features),
    )
    whole = prepare_chunks(tracks, CountingOracle(), root / "whole", progress=False)
    shards = [shard_dir(root / "job", i, 2) for i in range(2)]
    for i, folder in enumerate(shards):
        prepare_chunks(
            tracks, CountingOracle(), folder, num_shards=2, shard_index=i, progress=False
        )
    yield {"root": root, "tracks": tracks, "whole": whole, "shards": shards}
    torch.set_num_threads(threads)


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_two_shards_merge_into_the_unsharded_chunk_set(runs):
    root, shards, whole = runs["root"], runs["shards"], runs["whole"]
    assert [p.name for p in shards] == ["shard-00-of-02", "shard-01-of-02"]
    # Shard 0 takes the first three train tracks (the corrupt one among them), shard 1 the
    # other two; the one test track goes to shard 0, shard 1's test split is empty.
    assert _report(shards[0])["splits"]["train"]["tracks"] == 3
    assert len(load_chunk_set(shards[1]).data["test"]) == 0
    merged = merge_chunk_sets(shards[::-1], root / "merged")  # shard order, not argv order
    for split in ("train", "test"):
        a, b = whole[split], merged[split]
        assert a.features == b.features
        for column in ("track_id", "chunk_index", "present", "label"):
            assert a[column][:] == b[column][:], column
        for column in SPECTROGRAM_COLUMNS:  # bit for bit
            x = a.with_format("numpy")[column][:].view(np.uint16)
            np.testing.assert_array_equal(x, b.with_format("numpy")[column][:].view(np.uint16))
    assert whole["train"]["track_id"][:] == ["t0", "t1", "t1", "t3", "t4", "t4"]
    assert {tuple(p) for p in whole["train"]["present"][:]} != {(True,) * 4}
    opened = load_chunk_set(root / "merged")
    assert (
        opened.feature_extractor.to_dict()
        == load_chunk_set(root / "whole").feature_extractor.to_dict()
    )

    one, report = _report(root / "whole"), _report(root / "merged")
    assert report["shard"] == one["shard"]  # the merge is the whole job
    assert [m["shard_index"] for m in report["merged_from"]] == [0, 1]
    for split in ("train", "test"):
        a, b = one["splits"][split], report["splits"][split]
        assert (a["tracks"], a["chunks"]) == (b["tracks"], b["chunks"])
        assert a["audio_seconds"] == pytest.approx(b["audio_seconds"], abs=2e-3)
        assert a["skipped"] == b["skipped"]
    (skipped,) = report["splits"]["train"]["skipped"]
    assert skipped["track_id"] == "bad" and skipped["reason"].startswith("unreadable")

    # Re-runnable: the merge replaces its output whole and leaves no temporary folder.
    again = merge_chunk_sets(shards, root / "merged")
    assert again["train"]["track_id"][:] == whole["train"]["track_id"][:]
    assert not list(root.glob(".tmp-*"))


def test_a_shard_run_resumes_from_its_own_output(runs):
    CountingOracle.calls = 0
    out = prepare_chunks(
        runs["tracks"], CountingOracle(), runs["shards"][1], num_shards=2, shard_index=1,
        progress=False,
    )  # fmt: skip
    assert CountingOracle.calls == 0 and out["train"]["track_id"][:] == ["t3", "t4", "t4"]


def test_merge_refuses_missing_duplicated_and_foreign_shards(runs):
    root, (s0, s1) = runs["root"], runs["shards"]
    out = root / "refused"
    with pytest.raises(ValueError, match=r"shard\(s\) \[1\] of 2 are missing"):
        merge_chunk_sets([s0], out)
    copy = root / "copy-of-0"
    shutil.copytree(s0, copy)
    with pytest.raises(ValueError, match="are both shard 0 of 2"):
        merge_chunk_sets([s0, copy, s1], out)
    with pytest.raises(ValueError, match="given twice"):
        merge_chunk_sets([s0, s1, s0], out)
    with pytest.raises(ValueError, match="must lie outside the shard folder"):
        merge_chunk_sets([s0, s1], s0 / "merged")

    # Shard 1 of the same tracks with another threshold: another job.
    other = root / "other-threshold"
    prepare_chunks(
        runs["tracks"], CountingOracle(), other, threshold=0.5, num_shards=2, shard_index=1,
        progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"different jobs \(threshold 0\.5 vs 0\.01\)"):
        merge_chunk_sets([s0, other], out)

    # A shard of a three-shard split of the job.
    three = root / "three"
    shutil.copytree(s1, three)
    report = _report(three)
    report["shard"]["num_shards"] = 3
    (three / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="different jobs \\(num_shards 3 vs 2\\)"):
        merge_chunk_sets([s0, three], out)

    # Same records, another front end (a shard remade by hand): the folders disagree.
    config = json.loads((copy / "preprocessor_config.json").read_text())
    config["lower_edge_hertz"] = 125.0
    (copy / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ChunkSetDamagedError, match="preprocessor_config.json: .* bytes, the"):
        merge_chunk_sets([copy, s1], out)  # an edited file is caught by its manifest
    info = json.loads((copy / "chunk_set.json").read_text())
    (copy / "chunk_set.json").write_text(json.dumps({"format_version": info["format_version"]}))
    add_manifest(copy)  # re-recorded: the edit is now the shard's content
    with pytest.raises(ValueError, match="different feature extractors"):
        merge_chunk_sets([copy, s1], out)

    (copy / "report.json").unlink()
    with pytest.raises(ValueError, match="copy-of-0: no report.json"):
        merge_chunk_sets([copy, s1], out)
    assert not out.exists()


def test_shard_arguments_and_slices(tmp_path):
    tracks = Dataset.from_dict({"track_id": [f"t{i}" for i in range(7)]})
    for n in (1, 2, 3, 7, 9):  # the slices of Dataset.shard, empty ones too
        slices = [shard_tracks(tracks, n, i)["track_id"][:] for i in range(n)]
        assert sum(slices, []) == tracks["track_id"][:]
        if n <= len(tracks):
            shard = [tracks.shard(n, i, contiguous=True)["track_id"][:] for i in range(n)]
            assert slices == shard
    assert [len(shard_tracks(tracks, 3, i)) for i in range(3)] == [3, 2, 2]
    assert shard_tracks(tracks, 1, 0) is tracks
    assert shard_dir(tmp_path, 3, 16) == tmp_path / "shard-03-of-16"
    assert shard_dir(tmp_path, 5, 120).name == "shard-005-of-120"
    for kwargs, message in [
        ({"num_shards": 0}, "num_shards must be >= 1"),
        ({"num_shards": 2, "shard_index": 2}, r"shard_index must lie in \[0, 1\]"),
        ({"num_shards": 2, "shard_index": -1}, r"shard_index must lie in \[0, 1\]"),
        ({"num_shards": 2.0}, "num_shards must be an integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            prepare_chunks(tracks, OracleSeparator(), tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
