"""Never delete, mix or trust what the user did not ask for (the data-safety faults).

Each test is one way a user's data could be deleted, two runs mixed, or damaged data
trusted: outputs into folders the package did not create, paths in saved files that lead
out of their folder, two runs into one folder, a resume onto other data, and chunk-set
files changed after they were built.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict

from modeling_mscl.chunk_set import load_chunk_set, save_chunk_set
from modeling_mscl.chunk_shards import merge_chunk_sets
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import synthetic_chunk_dataset
from modeling_mscl.training_args import parse_args
from tests.test_training import one_thread_and_fresh_accelerate  # noqa: F401 (autouse)

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "scripts" / "configs" / "tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))


def rows(seed: int = 0, num_tracks: int = 4):
    return synthetic_chunk_dataset(num_tracks=num_tracks, chunks_per_track=3, seed=seed)


def chunk_set(folder: Path, seed: int = 0, splits: bool = False) -> Path:
    data = DatasetDict(train=rows(seed), test=rows(seed + 1)) if splits else rows(seed)
    save_chunk_set(data, folder, MSCLFeatureExtractor())
    return folder


def fake_shards(root: Path) -> list[Path]:
    """Two finished shard folders of one job (chunk sets with their shard reports)."""
    shards = []
    for index in range(2):
        folder = chunk_set(root / f"shard-{index}", seed=index)
        report = {
            "complete": True,
            "fingerprint": f"f{index}",
            "separator": "oracle",
            "threshold": 0.01,
            "shard": {"job": "job", "num_shards": 2, "shard_index": index},
            "splits": {"data": {"tracks": 4, "chunks": 12, "audio_seconds": 1.0, "skipped": []}},
        }
        (folder / "report.json").write_text(json.dumps(report))
        shards.append(folder)
    return shards


def pretrain(data_dir: Path, output_dir: Path, *extra: str):
    from accelerate.state import AcceleratorState, GradientState

    from modeling_mscl.training import pretrain as run

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    argv = ["--config", TINY, "--data_dir", str(data_dir), "--output_dir", str(output_dir)]
    return run(parse_args([*argv, "--eval_every", "0", *extra]))


# ------------------------------------------- 1. outputs never delete what is not theirs


def test_a_merge_refuses_a_folder_it_did_not_create_and_deletes_nothing(tmp_path):
    shards = fake_shards(tmp_path)
    out = tmp_path / "out"
    (out / "another-set").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{out} is not empty .*notes.txt.*not created by"):
        merge_chunk_sets(shards, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "another-set").is_dir()
    # The command says so and exits non-zero.
    from modeling_mscl.commands.separate import main

    assert main([str(out), "--merge", *map(str, shards)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["another-set", "notes.txt"]


def test_a_merge_replaces_its_own_set_and_keeps_what_the_user_added(tmp_path):
    shards = fake_shards(tmp_path)
    out = tmp_path / "out"
    merge_chunk_sets(shards, out)
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    merged = merge_chunk_sets(shards, out)  # again: replaces the previous merge
    assert len(merged) == 24
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_a_save_never_overwrites_a_file_it_did_not_write(tmp_path):
    folder = chunk_set(tmp_path / "set")
    (folder / "train").mkdir()
    (folder / "train" / "mine.txt").write_text("mine")
    # A DatasetDict writes train/: the user's file there is not overwritten nor deleted.
    with pytest.raises(ValueError, match="train/mine.txt"):
        chunk_set(folder, splits=True)
    assert (folder / "train" / "mine.txt").read_text() == "mine"
    assert len(load_chunk_set(folder).data) == 12  # the previous set is intact


def test_overwrite_output_dir_deletes_only_a_run_of_the_package(tmp_path):
    data = chunk_set(tmp_path / "set")
    out = tmp_path / "run"
    (out / "encoder").mkdir(parents=True)
    (out / "encoder" / "my_model.bin").write_text("not ours")
    with pytest.raises(ValueError, match=f"{out} is not empty .*encoder.*not created by"):
        pretrain(data, out, "--max_steps", "1", "--overwrite_output_dir", "true")
    assert (out / "encoder" / "my_model.bin").read_text() == "not ours"


def test_a_run_of_an_earlier_version_is_resumed_not_overwritten(tmp_path):
    data = chunk_set(tmp_path / "set")
    out = tmp_path / "run"
    common = ("--lr_schedule", "constant")
    pretrain(data, out, "--max_steps", "1", *common)
    (out / ".modeling_mscl.json").unlink()  # as a run made before folders were marked
    with pytest.raises(ValueError, match="not created by.*--resume true continues it"):
        pretrain(data, out, "--max_steps", "2", "--overwrite_output_dir", "true", *common)
    assert (out / "checkpoints").is_dir()
    assert pretrain(data, out, "--max_steps", "2", "--resume", "true", *common).step == 2
    assert (out / ".modeling_mscl.json").is_file()


# ------------------------------------------ 2. paths read from files stay in their folder


@pytest.fixture(params=["dotdot", "absolute", "symlink"])
def escape(request, tmp_path):
    """A chunk set whose dataset_dict.json names a split outside it, and that split."""
    sibling = chunk_set(tmp_path / "sibling")  # a saved dataset the user keeps
    folder = chunk_set(tmp_path / "set", splits=True)
    name = {"dotdot": "../sibling", "absolute": str(sibling), "symlink": "link"}[request.param]
    if request.param == "symlink":
        (folder / "link").symlink_to(sibling, target_is_directory=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["train", name]}))
    return folder, sibling, name


def test_a_crafted_split_path_deletes_nothing_outside(escape):
    folder, sibling, name = escape
    before = sorted(p.name for p in sibling.iterdir())
    chunk_set(folder)  # replaces the set: the old dataset_dict.json named the sibling
    assert sorted(p.name for p in sibling.iterdir()) == before
    assert len(load_chunk_set(sibling).data) == 12


def test_a_crafted_split_path_is_refused_when_read(escape):
    folder, _, name = escape
    with pytest.raises(ValueError, match=f"dataset_dict.json: the path '{name}'"):
        load_chunk_set(folder)


@pytest.mark.parametrize("name", ["../../sibling/state.json", "/etc/hostname", "link/x"])
def test_a_crafted_manifest_deletes_nothing_outside(tmp_path, name):
    sibling = chunk_set(tmp_path / "sibling")
    folder = chunk_set(tmp_path / "set")
    (folder / "link").symlink_to(sibling, target_is_directory=True)
    info = json.loads((folder / "chunk_set.json").read_text())
    info["files"][name] = {"size": 1, "sha256": "0" * 64}
    (folder / "chunk_set.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="chunk_set.json: the path"):
        chunk_set(folder)
    assert (sibling / "state.json").is_file()


def test_a_data_file_outside_its_split_is_refused(tmp_path):
    chunk_set(tmp_path / "sibling")
    folder = chunk_set(tmp_path / "set")
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": "../sibling/data-00000-of-00001.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="state.json: the path '../sibling/data-"):
        load_chunk_set(folder)


# ----------------------------------------------------- 3. one run at a time per folder

# Another process holding a folder's run lock as modeling_mscl.run_lock.RunLock does (the
# flock on .mscl.lock, the holder record beside it), without the package's import time;
# the slow test below runs two real pre-training processes.
HOLD = """
import json, os, socket, sys, time
from filelock import FileLock
folder = sys.argv[1]
lock = FileLock(os.path.join(folder, ".mscl.lock"))
lock.acquire(timeout=0)
record = {"pid": os.getpid(), "host": socket.gethostname(), "command": "a test holder",
          "started": time.time()}
with open(os.path.join(folder, ".mscl.lock.json"), "w") as handle:
    json.dump(record, handle)
print("held", flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_pretraining_run_into_one_folder_refuses_naming_the_holder(tmp_path):
    data = chunk_set(tmp_path / "set")
    out = tmp_path / "run"
    common = ("--lr_schedule", "constant")
    pretrain(data, out, "--max_steps", "1", *common)  # a folder of the package, not in use
    holder = hold_lock(out)
    try:
        with pytest.raises(RuntimeError) as err:
            pretrain(data, out, "--max_steps", "2", "--resume", "true", *common)
        message = str(err.value)
        assert str(out / ".mscl.lock") in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is free, its record stale.
    result = pretrain(data, out, "--max_steps", "2", "--resume", "true", *common)
    assert result.step == 2


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    from modeling_mscl.run_lock import RunLock

    holder = hold_lock(tmp_path)
    holder.kill()
    holder.wait()
    with caplog.at_level("WARNING"), RunLock(tmp_path, "test"):
        pass
    assert f"pid {holder.pid} on host {socket.gethostname()}" in caplog.text
    assert "no longer alive" in caplog.text


def test_separate_and_merge_refuse_a_folder_in_use(tmp_path):
    from datasets import Dataset

    from modeling_mscl.chunks import prepare_chunks
    from modeling_mscl.stems import OracleSeparator

    shards = fake_shards(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    try:
        with pytest.raises(RuntimeError, match=f"lock {out}/.mscl.lock is held by pid"):
            merge_chunk_sets(shards, out)
        tracks = Dataset.from_dict({"track_id": ["a"], "audio": [str(tmp_path / "a.wav")]})
        with pytest.raises(RuntimeError, match=f"lock {out}/.mscl.lock is held by pid"):
            prepare_chunks(tracks, OracleSeparator(), out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
    # A shard still being written (its run holds its lock) is not merged either.
    from modeling_mscl.run_lock import RunLock

    with RunLock(shards[1], "a shard run"), pytest.raises(RuntimeError, match="still being"):
        merge_chunk_sets(shards, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_two_pretraining_processes_started_at_once(tmp_path):
    """Two real `pretrain` processes into one fresh folder: one trains, one refuses."""
    data = chunk_set(tmp_path / "set")
    out = tmp_path / "run"
    argv = [
        sys.executable, str(REPO / "scripts" / "pretrain.py"), "--config", TINY,
        "--data_dir", str(data), "--output_dir", str(out), "--max_steps", "3",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], logs
    refused = logs[[p.returncode for p in procs].index(1)]
    assert "is in use by another run" in refused or "already holds a run" in refused


# ------------------------------------------ 4. the data a run trains on is fingerprinted


def test_the_fingerprint_follows_the_content(tmp_path):
    a = load_chunk_set(chunk_set(tmp_path / "a")).fingerprint
    same = load_chunk_set(chunk_set(tmp_path / "same")).fingerprint
    other = load_chunk_set(chunk_set(tmp_path / "other", seed=5)).fingerprint
    assert a and a == same and a != other


def _other_mels(source: Path, folder: Path) -> Path:
    """The same rows and presence flags as ``source``, other log-mel values."""
    data = load_chunk_set(source).data
    changed = data.map(lambda row: {"mixture": [[v + 0.5 for v in f] for f in row["mixture"]]})
    save_chunk_set(changed, folder, MSCLFeatureExtractor())
    return folder


def test_resume_onto_other_data_is_refused_unless_allowed_and_recorded(tmp_path):
    data = chunk_set(tmp_path / "set")
    other = _other_mels(data, tmp_path / "other")
    out = tmp_path / "run"
    common = ("--lr_schedule", "constant", "--checkpoint_every", "1")
    pretrain(data, out, "--max_steps", "1", *common)
    first = json.loads((out / "training_data.json").read_text())
    assert first["fingerprint"] == load_chunk_set(data).fingerprint
    assert first["data_dir"] == str(data.resolve())
    with pytest.raises(ValueError) as err:
        pretrain(other, out, "--max_steps", "2", "--resume", "true", *common)
    message = str(err.value)
    for text in (first["fingerprint"], load_chunk_set(other).fingerprint, str(data), str(other)):
        assert text in message
    assert "--allow_data_change" in message
    result = pretrain(
        other, out, "--max_steps", "2", "--resume", "true", "--allow_data_change", "true", *common
    )
    assert result.step == 2
    record = json.loads((Path(result.encoder_dir) / "training_data.json").read_text())
    assert record["fingerprint"] == load_chunk_set(other).fingerprint
    assert [h["fingerprint"] for h in record["history"]] == [
        first["fingerprint"],
        record["fingerprint"],
    ]
    assert record["history"][1]["allowed_by"] == "allow_data_change"
    args = json.loads((Path(result.encoder_dir) / "training_args.json").read_text())
    assert args["allow_data_change"] is True


def test_a_chunk_set_without_a_manifest_gets_the_command_that_adds_one(tmp_path, capsys):
    from modeling_mscl.commands.verify import main

    folder = chunk_set(tmp_path / "set")
    info = folder / "chunk_set.json"
    fingerprint = json.loads(info.read_text())["fingerprint"]
    info.write_text(json.dumps({"format_version": 2}))  # as an earlier version wrote it
    (folder / ".modeling_mscl.json").unlink()
    with pytest.raises(ValueError, match=f"mscl verify {folder} --add-manifest"):
        load_chunk_set(folder)
    assert main([str(folder), "--add-manifest"]) == 0
    assert load_chunk_set(folder).fingerprint == fingerprint  # the same content, the same
    chunk_set(folder)  # and the folder is the package's again


# ------------------------------------------------------ 5. checksums and `mscl verify`


def _flip_a_byte(path: Path, at: int = -1000) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x40
    path.write_bytes(bytes(blob))


def test_verify_names_a_changed_or_truncated_file(tmp_path, capsys):
    from modeling_mscl.commands.verify import main

    folder = chunk_set(tmp_path / "set", splits=True)
    assert main([str(folder)]) == 0
    assert "OK" in capsys.readouterr().out
    arrow = next((folder / "test").glob("*.arrow"))
    _flip_a_byte(arrow)
    assert main([str(folder), "--quick"]) == 0  # same size: only the checksum sees it
    capsys.readouterr()
    assert main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {arrow}: its SHA-256 differs" in out and out.count("BAD") == 1
    arrow.write_bytes(arrow.read_bytes()[:-10])
    assert main([str(folder), "--quick"]) == 1
    assert f"BAD {arrow}: " in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2


def test_pretraining_checks_the_files_at_start(tmp_path):
    from modeling_mscl.chunk_manifest import ChunkSetDamagedError

    data = chunk_set(tmp_path / "set")
    arrow = next(data.glob("*.arrow"))
    _flip_a_byte(arrow)
    # Sizes are checked at every start; the checksums on request.
    with pytest.raises(ChunkSetDamagedError, match=f"{arrow}: its SHA-256 differs"):
        pretrain(data, tmp_path / "run", "--max_steps", "1", "--verify_data", "true")
    arrow.write_bytes(arrow.read_bytes()[:-100])
    with pytest.raises(ChunkSetDamagedError, match=f"{arrow}: .* bytes, the manifest records"):
        pretrain(data, tmp_path / "run2", "--max_steps", "1")


def test_stem_retrieval_checks_the_files_at_start(tmp_path, capsys):
    from modeling_mscl.chunk_manifest import ChunkSetDamagedError
    from modeling_mscl.commands.stem_retrieval import main

    data = chunk_set(tmp_path / "set")
    arrow = next(data.glob("*.arrow"))
    _flip_a_byte(arrow)
    argv = ["--random-init", "--data", str(data), "--draws", "1", "--device", "cpu"]
    assert main([*argv, "--verify-data"]) == 1
    assert f"BAD {arrow}: its SHA-256 differs" in capsys.readouterr().err
    arrow.write_bytes(arrow.read_bytes()[:-100])
    with pytest.raises(ChunkSetDamagedError, match=f"{arrow}: .* bytes, the manifest records"):
        main(argv)
