"""`mscl embed` / `mscl search` (modeling_mscl.library): rows equal to `embed_audio`, resume,
atomic shards, the skip report, search, job arrays and two gloo processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from modeling_mscl import MSCLFeatureExtractor, MSCLModel
from modeling_mscl import library as lib
from modeling_mscl.cli import main as mscl
from modeling_mscl.library import embed_library, load_library, merge_libraries, search

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _tone(seconds: float, rate: int, freq: float, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono, 0.7 * mono], axis=1).astype(np.float32)


def _save_model(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    MSCLModel(tiny_config()).save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), 0)


def _music(folder: Path, count: int = 5, start: int = 0) -> list[Path]:
    """Short files of several lengths, rates and formats, one in a subfolder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        if i % 3 == 2:
            path = folder / "sub" / f"song{i:02d}.flac"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, _tone(1.5 + 0.4 * i, 44100, 110.0 * (i + 1), i, channels=2), 44100)
        else:
            path = folder / f"song{i:02d}.wav"
            sf.write(path, _tone(0.7 + 0.6 * i, 16000, 150.0 * (i + 1), i), 16000)
        paths.append(path)
    return paths


def _rows(data) -> list[dict]:
    return [dict(row) for row in data]


def _same(a, b) -> None:
    ra, rb = _rows(a), _rows(b)
    assert [r[a.column_names[0]] for r in ra] == [r[b.column_names[0]] for r in rb]
    assert ra == rb


def test_rows_are_embed_audio_of_each_file_and_bad_files_are_reported(tmp_path, model_dir):
    files = _music(tmp_path / "music", 5)
    (tmp_path / "music" / "broken.wav").write_bytes(b"RIFF but not audio")
    (tmp_path / "music" / "notes.txt").write_text("not picked up")
    data = embed_library(
        tmp_path / "music", tmp_path / "out", model_dir,
        windows=True, batch_size=3, shard_size=2, num_workers=2, progress=False,
    )  # fmt: skip
    assert data["path"] == sorted(map(str, files))  # sorted, recursive, only audio
    model = MSCLModel.from_pretrained(model_dir).eval()
    for row in data:
        ref = model.embed_audio(row["path"])  # one file alone, as a user would call it
        assert np.array_equal(np.asarray(row["embedding"], np.float32), ref.clip_embeds[0].numpy())
        windows = np.asarray(row["window_embeddings"], np.float32)
        assert np.array_equal(windows, ref.window_embeds.numpy())
        assert row["window_starts"] == pytest.approx(np.arange(len(windows)) * 0.98, abs=1e-6)
        info = sf.info(row["path"])
        assert row["sampling_rate"] == info.samplerate
        assert row["duration"] == pytest.approx(info.frames / info.samplerate)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["inputs"] == 6 and report["embedded"] == 5
    (skip,) = report["skipped"]
    assert skip["path"].endswith("broken.wav") and "cannot decode" in skip["reason"]
    # The folder is a datasets folder, and library.json records the model.
    from datasets import load_from_disk

    assert len(load_from_disk(str(tmp_path / "out"))) == 5
    info = json.loads((tmp_path / "out" / "library.json").read_text())
    assert info["job"]["model"]["fingerprint"] == lib.model_fingerprint(
        model, model._saved_feature_extractor()
    )


def test_long_files_come_in_pieces_and_equal_embed_audio(tmp_path, model_dir, monkeypatch):
    # Pieces of one log-mel block (1024 frames, ~10 s): the files below are cut into 2-3
    # pieces whose windows straddle the cuts, two workers interleave their pieces, and
    # batches of 7 windows span pieces and files. Each row must still be embed_audio's.
    monkeypatch.setattr(lib, "PIECE_FRAMES", 1024)
    folder = tmp_path / "long"
    folder.mkdir()
    sf.write(folder / "a.wav", _tone(25.3, 16000, 220.0, 1), 16000)
    sf.write(folder / "b.flac", _tone(21.0, 44100, 330.0, 2, channels=2), 44100)
    sf.write(folder / "c.wav", _tone(3.0, 16000, 440.0, 3), 16000)
    sizes = []
    original = MSCLFeatureExtractor.iter_clip_features

    def spy(self, clip, max_frames):
        for piece in original(self, clip, max_frames):
            sizes.append(len(piece))
            yield piece

    monkeypatch.setattr(MSCLFeatureExtractor, "iter_clip_features", spy)
    data = embed_library(
        folder, tmp_path / "out", model_dir, windows=True, batch_size=7, num_workers=0,
        progress=False,
    )  # fmt: skip
    assert max(sizes) == 1024 and len(sizes) == 3 + 3 + 1
    model = MSCLModel.from_pretrained(model_dir).eval()
    for row in data:
        ref = model.embed_audio(row["path"])
        assert np.array_equal(np.asarray(row["embedding"], np.float32), ref.clip_embeds[0].numpy())
        windows = np.asarray(row["window_embeddings"], np.float32)
        assert np.array_equal(windows, ref.window_embeds.numpy())
    again = embed_library(
        folder, tmp_path / "workers", model_dir, windows=True, batch_size=7, num_workers=2,
        progress=False,
    )  # fmt: skip
    _same(data, again)


def test_the_encoder_leaves_the_workers_their_cores(tmp_path, model_dir, monkeypatch):
    # On 2 CPUs with one decoding worker, the encoder runs on one thread (two would
    # outnumber the cores with the worker's), and torch's setting comes back afterwards.
    _music(tmp_path / "music", 2)
    monkeypatch.setattr(lib, "_available_cpus", lambda: 2)
    seen = []
    original = lib.encode_windows

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(lib, "encode_windows", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embed_library(tmp_path / "music", tmp_path / "a", model_dir, num_workers=1, progress=False)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        embed_library(tmp_path / "music", tmp_path / "b", model_dir, num_workers=0, progress=False)
        assert set(seen) == {2}  # no workers: the encoder keeps every thread
    finally:
        torch.set_num_threads(before)


def test_resume_embeds_only_new_files(tmp_path, model_dir, monkeypatch):
    _music(tmp_path / "music", 3)
    embed_library(tmp_path / "music", tmp_path / "out", model_dir, num_workers=0, progress=False)
    _music(tmp_path / "music", 2, start=3)
    decoded = []
    original = lib._Pieces._file

    def spy(self, index):
        decoded.append(self.inputs.keys[index])
        return original(self, index)

    monkeypatch.setattr(lib._Pieces, "_file", spy)
    data = embed_library(
        tmp_path / "music", tmp_path / "out", model_dir, num_workers=0, progress=False
    )
    assert sorted(Path(p).name for p in decoded) == ["song03.wav", "song04.wav"]
    fresh = embed_library(
        tmp_path / "music", tmp_path / "fresh", model_dir, num_workers=0, progress=False
    )
    _same(data, fresh)
    # A third run has nothing to do.
    decoded.clear()
    embed_library(tmp_path / "music", tmp_path / "out", model_dir, num_workers=0, progress=False)
    assert decoded == []


def test_crash_mid_run_then_rerun_gives_the_same_library(tmp_path, model_dir, monkeypatch):
    _music(tmp_path / "music", 6)
    whole = embed_library(
        tmp_path / "music", tmp_path / "whole", model_dir, num_workers=0, progress=False
    )
    written = []
    original = lib._write_shard

    def crash_after_two(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # the process dies between two shards
        written.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(lib, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed_library(
            tmp_path / "music", tmp_path / "out", model_dir,
            shard_size=1, batch_size=2, num_workers=0, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "out" / "library.json").exists()  # unfinished, and says so
    with pytest.raises(ValueError, match="not a finished library"):
        load_library(tmp_path / "out")
    monkeypatch.setattr(lib, "_write_shard", original)
    again = embed_library(
        tmp_path / "music", tmp_path / "out", model_dir, shard_size=1, num_workers=0, progress=False
    )
    _same(again, whole)


def test_a_second_model_is_refused(tmp_path, model_dir):
    _music(tmp_path / "music", 2)
    embed_library(tmp_path / "music", tmp_path / "out", model_dir, num_workers=0, progress=False)
    other = _save_model(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="another model"):
        embed_library(tmp_path / "music", tmp_path / "out", other, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="dtype='float32'"):
        embed_library(
            tmp_path / "music", tmp_path / "out", model_dir, dtype="bfloat16", progress=False
        )
    # The same weights saved elsewhere are the same model.
    shutil.copytree(model_dir, tmp_path / "copy")
    embed_library(tmp_path / "music", tmp_path / "out", tmp_path / "copy", progress=False)


def test_search_ranks_the_query_file_first(tmp_path, model_dir, capsys):
    files = _music(tmp_path / "music", 6)
    embed_library(tmp_path / "music", tmp_path / "out", model_dir, num_workers=0, progress=False)
    query = tmp_path / "elsewhere.wav"
    shutil.copy(files[3], query)  # not a row: embedded with the library's model
    hits = search(tmp_path / "out", str(query), k=3)
    assert hits[0].key == str(files[3]) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    by_row = search(tmp_path / "out", str(files[3]), k=6)  # a row: its stored embedding
    assert [h.key for h in by_row[:3]] == [h.key for h in hits]
    pytest.importorskip("faiss")
    with_faiss = search(tmp_path / "out", str(files[3]), k=6, index="faiss")
    assert [h.key for h in with_faiss] == [h.key for h in by_row]
    assert [h.score for h in with_faiss] == pytest.approx([h.score for h in by_row], abs=1e-5)
    # The command prints rank, score and path, best first.
    assert mscl(["search", str(tmp_path / "out"), str(query), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[0].endswith(str(files[3]))
    with pytest.raises(ValueError, match="neither a path of the library nor an audio file"):
        search(tmp_path / "out", str(tmp_path / "missing.wav"))


def test_job_array_slices_merge_to_the_single_run(tmp_path, model_dir, capsys):
    _music(tmp_path / "music", 5)
    (tmp_path / "music" / "broken.wav").write_bytes(b"junk")
    one = embed_library(
        tmp_path / "music", tmp_path / "one", model_dir, num_workers=0, progress=False
    )
    for index in range(2):
        argv = ["embed", str(tmp_path / "music"), str(tmp_path / "parts"), "--model"]
        argv += [str(model_dir), "--num-shards", "2", "--shard-index", str(index)]
        assert mscl([*argv, "--num-workers", "0", "--no-progress"]) == 0
    shards = sorted((tmp_path / "parts").iterdir())
    assert [p.name for p in shards] == ["shard-00-of-02", "shard-01-of-02"]
    with pytest.raises(ValueError, match=r"shard\(s\) \[1\] of 2 are missing"):
        merge_libraries(shards[:1], tmp_path / "merged")
    assert mscl(["embed", str(tmp_path / "merged"), "--merge", *map(str, shards)]) == 0
    assert "5 files" in capsys.readouterr().out
    _same(load_library(tmp_path / "merged"), one)
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert report["inputs"] == 6 and len(report["skipped"]) == 1


def test_dataset_and_list_inputs_and_parquet(tmp_path, model_dir):
    from datasets import Audio, Dataset

    files = _music(tmp_path / "music", 3)
    rows = {"audio": [str(p) for p in files], "name": ["c", "a", "b"]}
    Dataset.from_dict(rows).cast_column("audio", Audio()).save_to_disk(str(tmp_path / "ds"))
    data = embed_library(
        tmp_path / "ds", tmp_path / "out", model_dir, id_column="name", parquet=True,
        num_workers=0, progress=False,
    )  # fmt: skip
    assert (tmp_path / "out" / "embeddings.parquet").is_file()
    assert data.column_names[0] == "id" and data["id"] == ["a", "b", "c"]
    model = MSCLModel.from_pretrained(model_dir).eval()
    ref = model.embed_audio(str(files[1])).clip_embeds[0].numpy()
    assert np.array_equal(np.asarray(data[0]["embedding"], np.float32), ref)
    assert search(tmp_path / "out", "a", k=1)[0].key == "a"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my picks\n{files[2]}\nmusic/song00.wav\n\n{files[2]}\n")
    picked = embed_library(listing, tmp_path / "picked", model_dir, progress=False)
    assert picked["path"] == sorted([str(files[2]), str(tmp_path / "music" / "song00.wav")])


def test_readme_section_runs(tmp_path, model_dir, monkeypatch):
    """The Python example of the README's "Embed and search your music", on tiny inputs."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Embed and search your music", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    files = _music(tmp_path / "Music", 4)
    shutil.copy(files[1], tmp_path / "query.mp3")  # the name the README uses; wav inside
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    code = code.replace("outputs/demo/runs/mscl/encoder", str(model_dir))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "library" / "library.json").is_file()
    assert namespace["hits"][0].key == str(files[1])


# ----------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.mark.slow
def test_two_gloo_processes_merge_to_the_rows_of_one(tmp_path, model_dir):
    """Two processes as `accelerate launch` starts them (RANK, WORLD_SIZE, MASTER_*):
    each embeds every other file, the first assembles; the rows are one process's."""
    _music(tmp_path / "music", 5)
    (tmp_path / "music" / "broken.wav").write_bytes(b"junk")
    one = embed_library(
        tmp_path / "music", tmp_path / "one", model_dir, num_workers=0, progress=False
    )
    port = str(_free_port())
    argv = [sys.executable, "-m", "modeling_mscl.commands.embed", str(tmp_path / "music")]
    argv += [str(tmp_path / "two"), "--model", str(model_dir), "--shard-size", "1"]
    argv += ["--num-workers", "0", "--no-progress", "--device", "cpu"]
    procs = [
        subprocess.Popen(
            argv,
            env=_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "5 files" in outs[0] and "1 skipped" in outs[0]
    shards = list((tmp_path / "two" / "shards").glob("*.arrow"))
    assert len(shards) == 2  # each process's files fill less than a batch: one shard each
    _same(load_library(tmp_path / "two"), one)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_library(tmp_path, model_dir):
    _music(tmp_path / "music", 8)
    whole = embed_library(
        tmp_path / "music", tmp_path / "whole", model_dir, num_workers=0, progress=False
    )
    argv = [sys.executable, "-m", "modeling_mscl.commands.embed", str(tmp_path / "music")]
    argv += [str(tmp_path / "out"), "--model", str(model_dir), "--shard-size", "1"]
    argv += ["--batch-size", "2", "--num-workers", "1", "--no-progress"]
    proc = subprocess.Popen(argv, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((tmp_path / "out" / "shards").glob("*.arrow"))) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its decoding worker
    proc.wait()
    assert not (tmp_path / "out" / "library.json").exists()
    assert subprocess.run(argv, env=_env(), timeout=300).returncode == 0
    _same(load_library(tmp_path / "out"), whole)
