"""Corrupt chunk data (issue 22, item 5): damaged Arrow files are named, batches with
values no front end produces are refused naming the split, track and chunk, a skipped step
changes no parameter or buffer, and the run's last message names the real cause."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file

from modeling_mscl.chunk_set import load_chunk_set, save_chunk_set
from modeling_mscl.data_checks import load_from_disk_checked
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import PairDataset, PairPlan, synthetic_chunk_dataset
from tests.test_training import TINY, one_thread_and_fresh_accelerate  # noqa: F401

FRONT_END = MSCLFeatureExtractor()


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunks") / "clean"
    save_chunk_set(synthetic_chunk_dataset(num_tracks=8, chunks_per_track=4), path, FRONT_END)
    return path


def _pretrain(data_dir, out, *extra):
    from modeling_mscl.training import pretrain
    from modeling_mscl.training_args import parse_args

    argv = ["--config", TINY, "--data_dir", str(data_dir), "--output_dir", str(out), *extra]
    return pretrain(parse_args(argv))


def _spoiled(rows: Dataset, where: dict[tuple[int, str], float]) -> Dataset:
    """``rows`` with the whole log-mel of each (row, column) of ``where`` set to a value."""
    data = {c: rows.with_format("numpy")[c][:] for c in rows.column_names}
    data["track_id"] = list(rows["track_id"])
    for (row, column), value in where.items():
        data[column] = data[column].copy()
        data[column][row] = value
    return Dataset.from_dict(data, features=rows.features)


# ---------------------------------------------------------------------- Arrow files


def _arrow(folder):
    return next(folder.glob("data-*.arrow"))


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_arrow_file_is_named(clean_dir, tmp_path, damage):
    folder = tmp_path / "set"
    shutil.copytree(clean_dir, folder)
    file = _arrow(folder)
    data = bytearray(file.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[8:40] = bytes(range(32))
    file.write_bytes(bytes(data))
    # The reader behind every loader: pyarrow's error is named with the file.
    with pytest.raises(ValueError, match=rf"{file.name}: unreadable Arrow file"):
        load_from_disk_checked(folder)
    # A chunk set's manifest names a truncated file by its size, before pyarrow reads it;
    # a damaged file of the right size reaches the reader.
    named = rf"{file.name}: \d+ bytes, the manifest records" if damage == "truncated" else None
    with pytest.raises(ValueError, match=named or rf"{file.name}: unreadable Arrow file"):
        load_chunk_set(folder)


def _negative_string_offsets(folder):
    """Rewrite the Arrow file of a saved Dataset so that its 'label' strings' offsets run
    backwards: what a flipped bit in an offset does."""
    file = _arrow(folder)
    with pa.memory_map(str(file)) as source:
        table = pa.ipc.open_stream(source).read_all()
    labels = table.column("label").combine_chunks()
    offsets = np.frombuffer(labels.buffers()[1], dtype=np.int32)[: len(labels) + 1].copy()
    offsets[1] = -1000
    broken = pa.Array.from_buffers(
        pa.string(), len(labels), [None, pa.py_buffer(offsets.tobytes()), labels.buffers()[2]]
    )
    table = table.set_column(table.schema.get_field_index("label"), "label", broken)
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return file


def test_damaged_string_offsets_in_a_probe_dataset_are_named(tmp_path):
    rows = {"audio": [f"clip{i}.wav" for i in range(4)], "label": ["a", "b", "a", "b"]}
    folder = tmp_path / "probe"
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}).save_to_disk(
        folder
    )
    file = _negative_string_offsets(folder / "train")
    from modeling_mscl.commands import probe

    args = probe.parse_args(["--random-init", "--task", "corpus_genre", "--data", str(folder)])
    with pytest.raises(ValueError, match=rf"{file.name}: unreadable Arrow file"):
        data = probe.load_data(args, [])
        data["train"]["label"]  # where reading failed before


# ---------------------------------------------------------------- values of a batch


def test_log_mel_range_holds_what_the_front_end_computes():
    from modeling_mscl.data_checks import log_mel_range

    low, high = log_mel_range(FRONT_END)
    assert low == pytest.approx(np.log(1e-5) - 0.05) and 4.7 < high < 4.9
    rng = np.random.default_rng(0)
    worst = [rng.standard_normal(16000), np.sin(np.arange(16000) * 0.3), np.eye(1, 16000)[0]]
    for wave in worst:
        mel = FRONT_END.log_mel(torch.as_tensor(wave[None], dtype=torch.float32))
        assert low <= float(mel.min()) and float(mel.max()) <= high


@pytest.mark.parametrize("value, what", [(np.nan, "NaN values"), (2948.0, "values from 2948")])
def test_a_batch_with_values_no_front_end_produces_is_refused_by_name(tmp_path, value, what):
    rows = synthetic_chunk_dataset(num_tracks=4, chunks_per_track=2)
    splits = DatasetDict({"train": _spoiled(rows, {(5, "drums"): value}), "validation": rows})
    save_chunk_set(splits, tmp_path / "set", FRONT_END)
    store = load_chunk_set(tmp_path / "set").store("train")
    from modeling_mscl.pairs import SourceBatchSampler

    sampler = SourceBatchSampler(store.present, 4, absent_sources=False, sources=["drums"])
    data = PairDataset(store, sampler, 1)
    n = 4
    plan = PairPlan(
        step=0, source=1, active=True, rows=np.array([0, 5, 6, 7]),
        anchor_offsets=np.zeros(n, int), positive_offsets=np.zeros(n, int),
        present=np.ones(n, bool),
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        data.build(plan)
    message = str(err.value)
    assert "(split 'train')" in message and "track_id 'track0002', chunk 1" in message, message
    assert "column 'drums'" in message and what in message, message
    # The clean rows of the same set build.
    clean = PairPlan(**{**plan.__dict__, "rows": np.array([0, 1, 2, 3])})
    assert data.build(clean)["positive"].shape == (4, 98, 64)


# ---------------------------------------------------------------- the training loop


def _all_tensors(folder):
    return load_file(folder / "model.safetensors")


def test_skipped_steps_change_no_parameter_or_buffer(clean_dir, tmp_path, caplog):
    """NaN log-mels in one track: the batches that hold its chunks are refused at load,
    their steps skipped, and neither the weights nor the batch-norm statistics move."""
    from accelerate.utils import set_seed

    from modeling_mscl.training import build_model
    from modeling_mscl.training_args import parse_args

    rows = load_chunk_set(clean_dir).data
    bad = {(i, "mixture"): np.nan for i in range(4, 8)}  # every chunk of track0001
    save_chunk_set(_spoiled(rows, bad), tmp_path / "nan", FRONT_END)
    out = tmp_path / "run"
    extra = ("--max_steps", "4", "--checkpoint_every", "1", "--keep_checkpoints", "10")
    with caplog.at_level(logging.WARNING, logger="modeling_mscl.training"):
        result = _pretrain(tmp_path / "nan", out, *extra, "--max_bad_steps", "10")
    assert result.skipped_steps >= 1
    assert "track_id 'track0001'" in caplog.text and "column 'mixture'" in caplog.text
    assert "inputs:" in caplog.text
    args = parse_args(["--config", TINY, "--data_dir", str(clean_dir), "--output_dir", "x"])
    set_seed(args.training.seed)
    before = {k: v.clone() for k, v in build_model(args).state_dict().items()}
    skipped = 0
    for step in range(1, 5):
        folder = out / "checkpoints" / f"step-{step:07d}"
        after = _all_tensors(folder)
        now = json.loads((folder / "trainer_state.json").read_text())["skipped_steps"]
        for name, tensor in after.items():
            assert torch.isfinite(tensor.float()).all(), (step, name)
        if now > skipped:  # this step was skipped: nothing moved, buffers included
            assert any("running_mean" in k for k in after)
            for name in before:
                assert torch.equal(before[name], after[name]), (step, name)
        skipped, before = now, after
    assert skipped == result.skipped_steps


def test_the_last_message_names_bad_inputs(clean_dir, tmp_path):
    rows = load_chunk_set(clean_dir).data
    save_chunk_set(
        _spoiled(rows, {(i, "mixture"): 3000.0 for i in range(32)}), tmp_path / "b", FRONT_END
    )
    with pytest.raises(RuntimeError) as err:
        _pretrain(tmp_path / "b", tmp_path / "run", "--max_steps", "5", "--max_bad_steps", "2")
    message = str(err.value)
    assert "2 optimizer steps in a row were skipped" in message
    assert "inputs: minibatch 1 could not be built" in message and "track_id" in message
    assert "make it again" in message and "learning rate" not in message


def test_the_last_message_names_a_diverged_loss(clean_dir, tmp_path):
    """An absurd SGD rate makes the weights infinite at step 0: the losses after it are
    NaN, which the message says, with the advice that fits."""
    argv = ("--max_steps", "4", "--optimizer", "sgd", "--max_bad_steps", "2")
    with pytest.raises(RuntimeError) as err:
        _pretrain(clean_dir, tmp_path / "run", *argv, "--learning_rate", "3e38",
                  "--max_grad_norm", "0")  # fmt: skip
    message = str(err.value)
    assert "loss: the contrastive loss is not finite" in message, message
    assert "loss 2" in message and "lower the learning rate" in message
