"""The smaller faults of issue 22 (item 8), one test each: a full disk, an unreachable Hub,
an unreadable RNG state file, symlinked and unread files in an audio folder, empty clips in
the pipelines, the probe's data arguments and a chunk-set folder of the wrong kind."""

from __future__ import annotations

import errno
import json
import logging

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from modeling_mscl.audio_io import write_audio
from modeling_mscl.chunk_set import save_chunk_set
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import synthetic_chunk_dataset
from tests.conftest import tiny_config
from tests.test_training import TINY, one_thread_and_fresh_accelerate  # noqa: F401


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunks") / "set"
    splits = DatasetDict(
        {
            "train": synthetic_chunk_dataset(num_tracks=6, chunks_per_track=4, seed=0),
            "validation": synthetic_chunk_dataset(num_tracks=2, chunks_per_track=4, seed=1),
        }
    )
    save_chunk_set(splits, path, MSCLFeatureExtractor())
    return path


def _pretrain(data_dir, out, *extra):
    from modeling_mscl.training import pretrain
    from modeling_mscl.training_args import parse_args

    argv = ["--config", TINY, "--data_dir", str(data_dir), "--output_dir", str(out), *extra]
    return pretrain(parse_args(argv))


# ------------------------------------------------------------------------- full disk


def test_a_full_disk_while_saving_the_encoder_names_the_folder(data_dir, tmp_path, monkeypatch):
    from modeling_mscl import MSCLModel

    def full(self, folder, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MSCLModel, "save_pretrained", full)
    with pytest.raises(OSError, match=r"no space left on the device while writing .*run/encoder"):
        _pretrain(data_dir, tmp_path / "run", "--max_steps", "1", "--eval_every", "0")
    assert not (tmp_path / "run" / "encoder").exists()


def test_a_full_disk_while_saving_chunks_names_the_folder(tmp_path, monkeypatch):
    from modeling_mscl.chunks import prepare_chunks
    from modeling_mscl.stems import SOURCES, OracleSeparator

    rng = np.random.default_rng(0)
    row = {"track_id": "t0"}
    for name in ("mixture", *SOURCES):
        path = tmp_path / "t0" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, (0.1 * rng.standard_normal(16000 * 5)).astype(np.float32), 16000)
        row["audio" if name == "mixture" else name] = str(path)
    tracks = Dataset.from_list([row])

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Dataset, "save_to_disk", full)
    out = tmp_path / "chunks"
    with pytest.raises(OSError, match=f"no space left on the device while writing {out}"):
        prepare_chunks(tracks, OracleSeparator(), out, progress=False)


# -------------------------------------------------------------------------------- Hub


def test_an_unreachable_hub_is_named_and_the_token_never(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from modeling_mscl import MSCLFeatureExtractor, MSCLModel
    from modeling_mscl.hub import push_encoder

    folder = tmp_path / "encoder"
    MSCLModel(tiny_config()).save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)
    token = "hf_secret_never_shown"

    def refused(self, *args, **kwargs):
        # What a client may put in its message: the request, headers included.
        raise ConnectionError(f"connection refused (Authorization: Bearer {token})")

    monkeypatch.setattr(HfApi, "create_repo", refused)
    with pytest.raises(ConnectionError) as err:
        push_encoder(folder, "someone/x", token=token, endpoint="http://127.0.0.1:9")
    message = str(err.value)
    assert "cannot reach the Hub at http://127.0.0.1:9" in message and token not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


# ------------------------------------------------------------------------------- RNG


def test_an_unreadable_rng_state_file_warns(data_dir, tmp_path, caplog):
    from accelerate.state import AcceleratorState, GradientState

    common = ("--checkpoint_every", "1", "--eval_every", "0", "--lr_schedule", "constant")
    _pretrain(data_dir, tmp_path / "run", "--max_steps", "1", *common)
    rng = tmp_path / "run" / "checkpoints" / "step-0000001" / "random_states_0.pkl"
    rng.write_bytes(b"\x80\x04 not a pickle at all")
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with caplog.at_level(logging.WARNING):
        _pretrain(data_dir, tmp_path / "run", "--max_steps", "2", *common, "--resume", "true")
    assert "random_states_0.pkl is unreadable" in caplog.text
    assert "random states are not restored" in caplog.text


# ----------------------------------------------------------------------- audio folder


def _wav(path, seconds=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, 0.1 * np.ones(int(16000 * seconds), np.float32), 16000)


def test_a_symlinked_label_folder_is_followed(tmp_path):
    from modeling_mscl.corpora import load_audio_folder

    _wav(tmp_path / "music" / "rock" / "a.wav")
    _wav(tmp_path / "elsewhere" / "jazz" / "b.wav")
    (tmp_path / "music" / "jazz").symlink_to(tmp_path / "elsewhere" / "jazz")
    (tmp_path / "elsewhere" / "jazz" / "loop").symlink_to(tmp_path / "music")  # a cycle
    data = load_audio_folder(tmp_path / "music")["train"]
    assert sorted(data["track_id"]) == ["jazz/b.wav", "rock/a.wav"]
    assert data.features["label"].names == ["jazz", "rock"]


def test_files_the_scan_does_not_read_are_reported(tmp_path):
    from modeling_mscl.corpora import load_audio_folder

    _wav(tmp_path / "rock" / "a.wav")
    (tmp_path / "rock" / "b.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    (tmp_path / "rock" / "notes.txt").write_text("not audio")
    _, skipped = load_audio_folder(tmp_path, return_skipped=True)
    assert [s["track_id"] for s in skipped] == ["rock/b.m4a"]
    assert "format .m4a is not read" in skipped[0]["reason"]


# -------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A probe head (audio classification) and an encoder (embeddings)."""
    from modeling_mscl import MSCLForAudioClassification, MSCLModel

    root = tmp_path_factory.mktemp("models")
    config = tiny_config(num_labels=2, classifier_window_frames=98)
    MSCLForAudioClassification(config).eval().save_pretrained(root / "head")
    MSCLModel(tiny_config()).eval().save_pretrained(root / "encoder")
    for name in ("head", "encoder"):
        MSCLFeatureExtractor().save_pretrained(root / name)
    return {"audio-classification": root / "head", "mscl-embedding": root / "encoder"}


@pytest.mark.parametrize("task", ["audio-classification", "mscl-embedding"])
@pytest.mark.parametrize(
    "clip, what",
    [(np.zeros(1, np.float32) + 0.5, "1 samples, less than one analysis frame"),
     (np.zeros(16000, np.float32), "the clip is silent")],
    ids=["one-sample", "silent"],
)  # fmt: skip
def test_an_empty_clip_in_a_pipeline_warns(model_dirs, caplog, task, clip, what):
    from transformers import pipeline

    run = pipeline(model=str(model_dirs[task]), trust_remote_code=True)
    with caplog.at_level(logging.WARNING):
        run({"array": clip, "sampling_rate": 16000})
    assert what in caplog.text


# -------------------------------------------------------------------------- probe data


def _probe_args(*argv):
    from modeling_mscl.commands import probe

    return probe.parse_args(["--random-init", *argv])


def _string_label_splits(n=4):
    rows = {"audio": [f"c{i}.wav" for i in range(n)], "style": ["a", "b"] * (n // 2)}
    return DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)})


def test_a_single_dataset_folder_to_probe_data_is_named(tmp_path):
    from modeling_mscl.commands import probe
    from modeling_mscl.probing import get_task

    Dataset.from_dict({"audio": ["x.wav"], "genre": ["rock"]}).save_to_disk(tmp_path / "one")
    args = _probe_args("--task", "corpus_genre", "--data", str(tmp_path / "one"))
    with pytest.raises(ValueError, match=r"holds one Dataset \(columns \['audio', 'genre'\]\)"):
        probe.load_data(args, [get_task("corpus_genre")])


def test_data_and_dataset_read_string_labels_alike(tmp_path):
    from modeling_mscl.commands import probe
    from modeling_mscl.probing import get_task

    _string_label_splits().save_to_disk(tmp_path / "songs")
    tasks = [get_task("corpus_genre", label_column="style")]
    by_data = probe.load_data(_probe_args("--task", "corpus_genre", "--data",
                                          str(tmp_path / "songs")), tasks)  # fmt: skip
    by_dataset = probe.load_data(_probe_args("--task", "corpus_genre", "--dataset",
                                             str(tmp_path / "songs")), tasks)  # fmt: skip
    for data in (by_data, by_dataset):
        assert data["train"].features["style"] == ClassLabel(names=["a", "b"])
    assert by_data["test"]["style"] == by_dataset["test"]["style"] == [0, 1, 0, 1]


@pytest.mark.parametrize("flag", ["--data", "--dataset"])
def test_a_wrong_label_column_names_the_columns(tmp_path, flag):
    from modeling_mscl.commands import probe
    from modeling_mscl.probing import get_task

    _string_label_splits().save_to_disk(tmp_path / "songs")
    args = _probe_args("--task", "corpus_genre", flag, str(tmp_path / "songs"))
    with pytest.raises(
        ValueError, match=r"no column 'genre'; its columns are \['audio', 'style'\]"
    ):
        probe.load_data(args, [get_task("corpus_genre")])


# ------------------------------------------------------------- pretrain --data_dir


def test_one_split_of_a_chunk_set_is_named_with_the_set(data_dir, tmp_path):
    with pytest.raises(ValueError, match=rf"is the split 'train' of the chunk set {data_dir}"):
        _pretrain(data_dir / "train", tmp_path / "run")


def test_a_folder_of_other_rows_says_what_it_is(tmp_path):
    _string_label_splits().save_to_disk(tmp_path / "tracks")
    with pytest.raises(ValueError, match=r"datasets folder whose rows are not chunks \(columns"):
        _pretrain(tmp_path / "tracks", tmp_path / "run")
    _wav(tmp_path / "audio" / "a.wav")
    with pytest.raises(ValueError, match=r"is not a chunk set: .*e\.g\. a\.wav"):
        _pretrain(tmp_path / "audio", tmp_path / "run2")


def test_the_json_of_a_split_is_not_taken_for_the_set(data_dir):
    # The chunk set itself still opens (the new messages only replace the failures).
    from modeling_mscl.chunk_set import load_chunk_set

    assert load_chunk_set(data_dir).splits == ["train", "validation"]
    assert json.loads((data_dir / "chunk_set.json").read_text())["format_version"] >= 2
