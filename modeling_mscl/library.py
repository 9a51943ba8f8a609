"""Embed a music library and search it: :func:`embed_library`, :func:`search`.

The job behind ``mscl embed`` and ``mscl search``. A library folder ``OUT`` holds:

- the embeddings as a ``datasets`` folder (``load_from_disk(OUT)``), or with ``parquet=True``
  one ``embeddings.parquet``: a key column (``path`` for files, ``id`` for dataset rows),
  ``duration`` (seconds), ``sampling_rate`` (the file's own), ``embedding`` (the clip
  embedding, exactly what :meth:`MSCLModel.embed_audio` gives for that file) and, with
  ``windows=True``, ``window_embeddings`` and ``window_starts`` (seconds); rows sorted by key;
- ``library.json``: the job (model fingerprint and source, output, dtype, windows), written
  last, so a folder without it is unfinished;
- ``report.json``: the files that could not be decoded, each with the reason;
- ``shards/``: the resumable unit. Files are embedded a shard at a time; each shard is one
  Arrow file, written whole under a temporary name and renamed into place, so a process
  killed at any moment leaves finished shards and nothing else. A re-run skips the files
  already in a shard, so it finishes an interrupted job, and a run over a folder that has
  gained files embeds only the new ones. ``shards/job.json`` pins the model: a run with
  another model (other weights, config, front end, output or dtype) is refused.

How the work is laid out (the one long-audio path of :mod:`modeling_mscl.long_audio_mscl`):
files are decoded, resampled and cut into log-mel windows by the feature extractor in
``num_workers`` DataLoader workers while the main process runs the encoder; the windows of
consecutive files are packed into batches of ``batch_size`` windows (a batch spans files),
and a file's window embeddings are averaged as ``embed_audio`` averages them. The encoder's
eval forward gives a window the same output whatever else is in its batch, so packing
changes nothing in the result.

Scale-out: under ``accelerate launch`` (or any ``torch.distributed`` launcher that sets
``WORLD_SIZE``) each process takes every ``world``-th file still to do, writes its own
shards, and the first process assembles the library once all are done. A job array uses
``num_shards``/``shard_index`` (each task a complete library of its slice of the sorted
inputs, in ``OUT/shard-ii-of-NN``) and :func:`merge_libraries`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._files import TEMP_FOLDER_PREFIX, atomic_path, write_json_atomic
from .audio_decoding_mscl import AudioDecodeError, audio_name, decode_audio, resample_audio
from .chunk_shards import check_sharding, shard_dir
from .feature_extraction_mscl import MSCLFeatureExtractor
from .long_audio_mscl import encode_windows, eval_mode, pool_windows
from .modeling_mscl import MSCLModel

__all__ = [
    "AUDIO_EXTENSIONS",
    "LibraryInput",
    "SearchHit",
    "embed_library",
    "list_inputs",
    "load_library",
    "merge_libraries",
    "model_fingerprint",
    "search",
]

FORMAT_VERSION = 1
LIBRARY_FILE = "library.json"
REPORT_FILE = "report.json"
JOB_FILE = "job.json"
PARQUET_FILE = "embeddings.parquet"
# What a folder input picks up: the formats decode_audio reads without FFmpeg, and the
# common ones it reads with torchcodec where installed (the others are reported as skipped).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus", ".m4a", ".aac")
# Below this many rows an exact numpy product beats building a faiss index.
FAISS_MIN_ROWS = 20_000
# Keys of a config / feature extractor dict that do not change what the model computes.
_METADATA_KEYS = (
    "_name_or_path",
    "transformers_version",
    "architectures",
    "auto_map",
    "custom_pipelines",
    "torch_dtype",
    "dtype",
    "processor_class",
    "feature_extractor_type",
)
_DATASET_FILES = ("state.json", "dataset_info.json", "dataset_dict.json")


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class LibraryInput:
    """What to embed: ``keys[i]`` names item ``i`` of ``items`` (a path, or a datasets audio
    item read lazily); ``key_name`` is the key column (``"path"`` or ``"id"``)."""

    keys: list[str]
    items: Sequence[Any]
    key_name: str


def _folder_files(folder: Path) -> list[str]:
    found = [
        str(p)
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    ]
    return sorted(found)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in _DATASET_FILES)


def list_inputs(
    source: str | os.PathLike | Any,
    audio_column: str = "audio",
    split: str | None = None,
    id_column: str | None = None,
) -> LibraryInput:
    """The items of ``source``: a folder (every audio file under it, recursively), a text
    file of paths (one a line; ``#`` comments and blank lines ignored; relative paths from
    the file's folder), a folder saved with ``save_to_disk``, a Hub dataset name, or a
    ``datasets`` Dataset. Datasets give their ``audio_column`` items, keyed by ``id_column``
    (default: the row number, zero-padded so that keys sort in row order)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser().absolute()  # keys that do not depend on the cwd
        if path.is_dir() and not _is_saved_dataset(path):
            files = _folder_files(path)
            return LibraryInput(files, files, "path")
        if path.is_file():
            files = []
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line).expanduser()
                    files.append(str(entry if entry.is_absolute() else path.parent / entry))
            files = list(dict.fromkeys(files))  # a path listed twice is embedded once
            return LibraryInput(files, files, "path")
        from datasets import load_dataset, load_from_disk

        if _is_saved_dataset(path):
            source = load_from_disk(str(path))
        elif path.exists():
            raise ValueError(f"{path}: neither an audio folder, a list of paths nor a dataset")
        else:
            try:
                source = load_dataset(str(source), split=split)
            except Exception as err:  # offline, no such repo, ...: say what was tried
                raise ValueError(
                    f"{source}: no such folder or file, and not a loadable Hub dataset ({err})"
                ) from err
    from datasets import DatasetDict

    from .audio_io import audio_column as undecoded_column

    if isinstance(source, DatasetDict):
        if split is None:
            if len(source) != 1:
                raise ValueError(f"the dataset has splits {list(source)}: choose one with split")
            split = next(iter(source))
        if split not in source:
            raise ValueError(f"no split {split!r}; the dataset has {list(source)}")
        source = source[split]
    items = undecoded_column(source, audio_column)
    if id_column is not None:
        if id_column not in source.column_names:
            raise KeyError(f"no id column {id_column!r}; the dataset has {source.column_names}")
        keys = [str(v) for v in source[id_column]]
        if len(set(keys)) != len(keys):
            raise ValueError(f"the id column {id_column!r} has repeated values: ids must be unique")
    else:
        width = len(str(max(len(source) - 1, 0)))
        keys = [f"{i:0{width}d}" for i in range(len(source))]
    return LibraryInput(keys, items, "id")


# ------------------------------------------------------------------------------ the model


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(d.items()) if k not in _METADATA_KEYS}


def model_fingerprint(model: MSCLModel, feature_extractor: MSCLFeatureExtractor) -> str:
    """A hash of what decides the embeddings: the weights and buffers, the config and the
    front end (not where they were loaded from)."""
    h = hashlib.sha256()
    h.update(json.dumps(_strip(model.config.to_dict()), sort_keys=True, default=str).encode())
    h.update(json.dumps(_strip(feature_extractor.to_dict()), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _load_model(model: str | os.PathLike | MSCLModel) -> tuple[MSCLModel, str]:
    if isinstance(model, MSCLModel):
        return model, str(getattr(model.config, "_name_or_path", "") or "")
    return MSCLModel.from_pretrained(str(model)), str(model)


# ------------------------------------------------------------------------------ decoding


class _Files(torch.utils.data.Dataset):
    """Item ``i``: the log-mel windows of file ``order[i]``, or why it could not be read.

    Decoded as ``embed_audio`` decodes (mono, resampled to the front end's rate), with the
    file's own rate and duration kept for the library's columns. Runs in DataLoader workers.
    """

    def __init__(self, inputs: LibraryInput, order: list[int], fe: MSCLFeatureExtractor) -> None:
        self.inputs, self.order, self.fe = inputs, order, fe

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.order[i]
        out: dict[str, Any] = {"index": index, "windows": None, "reason": None}
        item = self.inputs.items[index]
        try:
            wave, rate = decode_audio(item, None, mono=True)
            out["duration"], out["sampling_rate"] = wave.shape[-1] / rate, rate
            if rate != self.fe.sampling_rate:
                wave = np.ascontiguousarray(
                    resample_audio(wave, rate, self.fe.sampling_rate), dtype=np.float32
                )
            features = self.fe(
                wave,
                sampling_rate=self.fe.sampling_rate,
                return_windows=True,
                return_tensors="pt",
            )
            out["windows"] = features["input_features"]
        except (AudioDecodeError, ValueError, OSError, RuntimeError, MemoryError) as err:
            message = str(err)
            name = audio_name(item)
            out["reason"] = message if name in message else f"{name}: {message}"
        return out


def _identity(item: Any) -> Any:
    return item


# ------------------------------------------------------------------------------ the job


class _Distributed:
    """This process's place in a multi-process run (one process: rank 0 of 1)."""

    def __init__(self, device: str | None) -> None:
        self.rank, self.world, self.device = 0, 1, device
        self._dist = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            state = PartialState(cpu=device == "cpu")
            self.rank, self.world = state.process_index, state.num_processes
            # "cuda" alone means this process's GPU (cuda:LOCAL_RANK).
            self.device = str(state.device) if device in (None, "cuda") else device
            import torch.distributed as dist

            self._dist = dist

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="file", desc="embedding", disable=not enabled)
        self.start = time.perf_counter()
        self.files = 0
        self.seconds = 0.0

    def update(self, audio_seconds: float) -> None:
        self.files += 1
        self.seconds += audio_seconds
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(
            f"{self.files / elapsed:.1f} files/s, {self.seconds / 3600 / elapsed:.3f} h audio/s",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _job_record(
    model: MSCLModel,
    fe: MSCLFeatureExtractor,
    source: str,
    output: str,
    dtype: torch.dtype,
    windows: bool,
    key_name: str,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": {"fingerprint": model_fingerprint(model, fe), "source": source},
        "output": output,
        "dtype": str(dtype).removeprefix("torch."),
        "windows": windows,
        "key": key_name,
    }


def _check_job(folder: Path, job: dict[str, Any]) -> None:
    """Refuse to extend ``folder`` with a job that would give other embeddings."""
    for path in (folder / "shards" / JOB_FILE, folder / LIBRARY_FILE):
        if not path.is_file():
            continue
        old = json.loads(path.read_text())
        old = old.get("job", old)
        if old.get("model", {}).get("fingerprint") != job["model"]["fingerprint"]:
            raise ValueError(
                f"{folder} holds embeddings of another model ({old.get('model')}), not of "
                f"{job['model']}: embed into another folder, or pass the model it was made with"
            )
        for key in ("format_version", "output", "dtype", "windows", "key"):
            if old.get(key) != job[key]:
                raise ValueError(
                    f"{folder} was embedded with {key}={old.get(key)!r}, this run asks for "
                    f"{key}={job[key]!r}: embed into another folder, or use the same settings"
                )


def _shard_files(folder: Path) -> list[Path]:
    return sorted((folder / "shards").glob("*.arrow"))


def _read_shard(path: Path):
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def _done_keys(folder: Path) -> set[str]:
    done: set[str] = set()
    for path in _shard_files(folder):
        table = _read_shard(path)
        done.update(table.column(0).to_pylist())
    return done


def _write_shard(folder: Path, rows: list[dict[str, Any]], skipped: list[dict], job: dict) -> None:
    """One shard: its rows as an Arrow stream file and its skipped files as JSON, each
    written whole and renamed into place (the name hashes the keys, so no two collide)."""
    import pyarrow as pa

    keys = [r[job["key"]] for r in rows] + [s[job["key"]] for s in skipped]
    name = hashlib.sha256("\0".join(sorted(keys)).encode()).hexdigest()[:24]
    shards = folder / "shards"
    if skipped:
        write_json_atomic(shards / f"{name}.skipped.json", skipped, indent=1)
    if not rows:
        return
    columns: dict[str, Any] = {
        job["key"]: pa.array([r[job["key"]] for r in rows], pa.string()),
        "duration": pa.array([r["duration"] for r in rows], pa.float64()),
        "sampling_rate": pa.array([r["sampling_rate"] for r in rows], pa.int32()),
    }
    dim = len(rows[0]["embedding"])
    flat = np.concatenate([r["embedding"] for r in rows]).astype(np.float32)
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    if job["windows"]:
        windows = [r["window_embeddings"] for r in rows]
        inner = pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(windows).reshape(-1).astype(np.float32)), dim
        )
        offsets = np.concatenate([[0], np.cumsum([len(w) for w in windows])]).astype(np.int32)
        columns["window_embeddings"] = pa.ListArray.from_arrays(pa.array(offsets), inner)
        columns["window_starts"] = pa.array(
            [r["window_starts"] for r in rows], pa.list_(pa.float32())
        )
    table = pa.table(columns)
    with atomic_path(shards / f"{name}.arrow") as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)


def _clean_temporaries(folder: Path) -> None:
    # What a killed process left: half-written shards under their temporary names.
    for path in (folder / "shards").glob(".*.part"):
        path.unlink(missing_ok=True)
    shutil.rmtree(folder / f"{TEMP_FOLDER_PREFIX}data", ignore_errors=True)


def _embed_files(
    model: MSCLModel,
    fe: MSCLFeatureExtractor,
    inputs: LibraryInput,
    order: list[int],
    folder: Path,
    job: dict[str, Any],
    batch_size: int,
    num_workers: int,
    shard_size: int,
    progress: bool,
) -> None:
    """Embed the files ``order`` (indices into ``inputs``) into shards of ``folder``."""
    loader = torch.utils.data.DataLoader(
        _Files(inputs, order, fe),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        prefetch_factor=4 if num_workers else None,
        pin_memory=model.device.type == "cuda",
    )
    hop_seconds = fe.window_frames * fe.hop_length / fe.sampling_rate
    key, output = job["key"], job["output"]
    pending: list[dict[str, Any]] = []  # files whose windows are not all encoded yet
    queue: list[torch.Tensor] = []  # windows waiting for a batch, in file order
    queued = 0
    encoded: list[torch.Tensor] = []  # window embeddings not yet handed to their file
    encoded_count = 0
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    bar = _Progress(len(order), progress)

    def take(count: int) -> torch.Tensor:
        """The first ``count`` queued windows (views of the files' tensors, one copy)."""
        nonlocal queued
        parts, need = [], count
        while need:
            head = queue[0]
            if len(head) <= need:
                parts.append(queue.pop(0))
                need -= len(head)
            else:
                parts.append(head[:need])
                queue[0] = head[need:]
                need = 0
        queued -= count
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def encode(count: int) -> None:
        nonlocal encoded_count
        encoded.append(encode_windows(model, take(count), count, output))
        encoded_count += count
        if not pending or encoded_count < pending[0]["count"]:
            return  # a long file: its embeddings are joined once all are there
        done = torch.cat(encoded) if len(encoded) > 1 else encoded[0]
        taken = 0
        while pending and done.shape[0] - taken >= pending[0]["count"]:
            item = pending.pop(0)
            window_embeds = done[taken : taken + item["count"]]
            taken += item["count"]
            # The clip embedding as embed_audio pools it: on the encoder's device, in order.
            zeros = torch.zeros(item["count"], dtype=torch.long, device=window_embeds.device)
            clip = pool_windows(window_embeds, zeros, 1, "mean")[0]
            row = {
                key: inputs.keys[item["index"]],
                "duration": item["duration"],
                "sampling_rate": item["sampling_rate"],
                "embedding": clip.cpu().numpy(),
            }
            if job["windows"]:
                row["window_embeddings"] = window_embeds.cpu().numpy()
                row["window_starts"] = np.arange(item["count"], dtype=np.float32) * np.float32(
                    hop_seconds
                )
            rows.append(row)
            bar.update(item["duration"])
        encoded.clear()
        encoded_count = done.shape[0] - taken
        if encoded_count:
            encoded.append(done[taken:])

    def flush() -> None:
        if rows or skipped:
            _write_shard(folder, rows, skipped, job)
            rows.clear()
            skipped.clear()

    try:
        for item in loader:
            if item["windows"] is None:
                skipped.append({key: inputs.keys[item["index"]], "reason": item["reason"]})
                bar.update(0.0)
            else:
                windows = item.pop("windows")
                item["count"] = len(windows)
                pending.append(item)
                queue.append(windows)
                queued += len(windows)
                while queued >= batch_size:
                    encode(batch_size)
            if len(rows) + len(skipped) >= shard_size:
                flush()
        while queued:
            encode(min(queued, batch_size))
        flush()
    finally:
        bar.close()


def _library_table(folder: Path, key_name: str):
    """Every embedded row of ``folder``'s shards, sorted by key (one row per key), and the
    skipped files not embedded since."""
    from datasets import Dataset
    from datasets.table import MemoryMappedTable, concat_tables

    paths = _shard_files(folder)
    skipped: dict[str, str] = {}
    for path in sorted((folder / "shards").glob("*.skipped.json")):
        for entry in json.loads(path.read_text()):
            skipped[entry[key_name]] = entry["reason"]
    if not paths:
        return None, skipped
    table = concat_tables([MemoryMappedTable.from_file(str(p)) for p in paths])
    keys = np.asarray(table.column(key_name).to_pylist(), dtype=object)
    order = np.argsort(keys, kind="stable")
    _, first = np.unique(keys[order], return_index=True)
    data = Dataset(table).select(order[first], keep_in_memory=True)
    for k in keys:
        skipped.pop(k, None)
    return data, skipped


def _finish(
    folder: Path,
    job: dict[str, Any],
    parquet: bool,
    extra: dict[str, Any],
    total_inputs: int | None,
) -> Any:
    """Assemble the library from ``folder``'s shards (replacing an older one) and write the
    report, then ``library.json``."""
    from datasets.utils.logging import (
        disable_progress_bar,
        enable_progress_bar,
        is_progress_bar_enabled,
    )

    bars = is_progress_bar_enabled()
    disable_progress_bar()  # the job has its own bar; saving is a moment
    try:
        return _assemble(folder, job, parquet, extra, total_inputs)
    finally:
        if bars:
            enable_progress_bar()


def _assemble(
    folder: Path,
    job: dict[str, Any],
    parquet: bool,
    extra: dict[str, Any],
    total_inputs: int | None,
) -> Any:
    from datasets import Dataset

    data, skipped = _library_table(folder, job["key"])
    (folder / LIBRARY_FILE).unlink(missing_ok=True)  # from here on, the folder is unfinished
    for name in (*_DATASET_FILES, PARQUET_FILE):
        (folder / name).unlink(missing_ok=True)
    for path in folder.glob("data-*.arrow"):
        path.unlink()
    if data is None:
        data = Dataset.from_dict({job["key"]: [], "duration": [], "sampling_rate": []})
    if parquet:
        with atomic_path(folder / PARQUET_FILE) as tmp:
            data.to_parquet(str(tmp))
    else:
        tmp = folder / f"{TEMP_FOLDER_PREFIX}data"
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_to_disk(str(tmp))
        for path in tmp.iterdir():
            os.replace(path, folder / path.name)
        tmp.rmdir()
    audio_seconds = float(np.sum(data.with_format("numpy")["duration"])) if len(data) else 0.0
    report = {
        "complete": True,
        "inputs": total_inputs,
        "embedded": len(data),
        "audio_hours": round(audio_seconds / 3600, 4),
        "skipped": [{job["key"]: k, "reason": r} for k, r in sorted(skipped.items())],
        **extra,
    }
    write_json_atomic(folder / REPORT_FILE, report, indent=2)
    write_json_atomic(
        folder / LIBRARY_FILE,
        {"job": job, "complete": True, "rows": len(data), "parquet": parquet, **extra},
        indent=2,
    )
    return load_library(folder)


def embed_library(
    source: str | os.PathLike | Any,
    output_dir: str | os.PathLike,
    model: str | os.PathLike | MSCLModel,
    *,
    audio_column: str = "audio",
    split: str | None = None,
    id_column: str | None = None,
    windows: bool = False,
    output: str = "pooler_output",
    batch_size: int = 256,
    num_workers: int | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    shard_size: int = 64,
    parquet: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
) -> Any:
    """Embed every audio item of ``source`` into the library folder ``output_dir``.

    Args:
        source: a folder (recursive), a text file of paths, a ``save_to_disk`` folder or
            Hub dataset name (with ``audio_column``, ``split``, ``id_column``), or a Dataset.
        output_dir: the library (see the module docs); with ``num_shards`` > 1, the root of
            the shard folders (this run writes ``output_dir/shard-ii-of-NN``).
        model: an encoder folder or Hub id, or an :class:`MSCLModel`; its saved front end
            (else the default) computes the log-mels, as in ``embed_audio``.
        windows: also keep each file's window embeddings and their start times.
        output: ``"pooler_output"`` (1280-d) or ``"audio_embeds"`` (512-d).
        batch_size: windows per encoder call; a batch holds the windows of several files.
        num_workers: DataLoader workers decoding files (default: half the CPUs, at most 8).
        device, dtype: where and in which precision the encoder runs (``"bfloat16"``).
        shard_size: files per resumable shard.
        parquet: write ``embeddings.parquet`` instead of a ``datasets`` folder.
        num_shards, shard_index: this run is one slice of a job array
            (:func:`merge_libraries` joins the slices).

    Returns:
        The library as a ``datasets.Dataset`` (on the first process of a multi-process run;
        the others return None).

    Raises:
        ValueError: ``output_dir`` holds a library of another model or other settings.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    check_sharding(num_shards, shard_index)
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    dtype = dtype or torch.float32
    if num_workers is None:
        num_workers = min(8, max(1, (os.cpu_count() or 2) // 2))
    run = _Distributed(device)
    model, model_source = _load_model(model)
    fe = model._saved_feature_extractor()
    job = _job_record(model, fe, model_source, output, dtype, windows, "")
    model = model.to(device=run.device or model.device, dtype=dtype)
    inputs = list_inputs(source, audio_column, split, id_column)
    job["key"] = inputs.key_name

    folder = Path(output_dir).expanduser()
    extra: dict[str, Any] = {}
    order = sorted(range(len(inputs.keys)), key=inputs.keys.__getitem__)
    if num_shards > 1:
        folder = shard_dir(folder, shard_index, num_shards)
        size, longer = divmod(len(order), num_shards)
        start = shard_index * size + min(shard_index, longer)
        order = order[start : start + size + (shard_index < longer)]
        every = hashlib.sha256("\0".join(sorted(inputs.keys)).encode()).hexdigest()[:16]
        extra["shard"] = {"num_shards": num_shards, "shard_index": shard_index, "inputs": every}
    _check_job(folder, job)
    if run.rank == 0:
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        _clean_temporaries(folder)
        if not (folder / "shards" / JOB_FILE).is_file():
            write_json_atomic(folder / "shards" / JOB_FILE, job, indent=2)
    run.barrier()
    done = _done_keys(folder)
    todo = [i for i in order if inputs.keys[i] not in done]
    run.barrier()  # every process has read the shards before any writes new ones
    with eval_mode(model):  # a model passed in gets its own mode back
        _embed_files(
            model,
            fe,
            inputs,
            todo[run.rank :: run.world],
            folder,
            job,
            batch_size,
            num_workers,
            shard_size,
            progress and run.rank == 0,
        )
    run.barrier()
    result = None
    if run.rank == 0:
        result = _finish(folder, job, parquet, extra, len(order))
    run.barrier()
    return result


# ------------------------------------------------------------------------------ reading


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / LIBRARY_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder}: no {LIBRARY_FILE}; not a finished library (run mscl embed into it "
            "again: it resumes)"
        )
    return json.loads(path.read_text())


def load_library(folder: str | os.PathLike) -> Any:
    """The embeddings of a finished library folder, as a ``datasets.Dataset``."""
    import pyarrow.parquet as pq
    from datasets import Dataset, load_from_disk
    from datasets.table import InMemoryTable

    folder = Path(folder).expanduser()
    info = _read_info(folder)
    if info.get("parquet"):
        return Dataset(InMemoryTable(pq.read_table(str(folder / PARQUET_FILE))))
    return load_from_disk(str(folder))


def merge_libraries(
    folders: Sequence[str | os.PathLike], output_dir: str | os.PathLike, parquet: bool = False
) -> Any:
    """Join the finished shard libraries of one job array into ``output_dir``.

    Checks that ``folders`` are all ``N`` slices of one job (same model and settings, same
    inputs), each once; copies their shards into ``output_dir/shards`` (which then resumes
    like any library) and assembles them: the rows a single run would have written.
    """
    paths = [Path(f).expanduser().resolve() for f in folders]
    output_dir = Path(output_dir).expanduser().resolve()
    if not paths:
        raise ValueError("merge_libraries needs at least one shard folder")
    infos = {p: _read_info(p) for p in paths}
    job, shard = infos[paths[0]]["job"], infos[paths[0]].get("shard")
    by_index: dict[int, Path] = {}
    for path, info in infos.items():
        if output_dir == path or path in output_dir.parents:
            raise ValueError(f"the merge output {output_dir} must lie outside {path}")
        other = info.get("shard")
        if not other or not shard:
            raise ValueError(f"{path} is not a shard library (made without num_shards)")
        if info["job"] != job or other["num_shards"] != shard["num_shards"]:
            raise ValueError(f"{path} and {paths[0]} are shards of different jobs")
        if other["inputs"] != shard["inputs"]:
            raise ValueError(f"{path} and {paths[0]} were made from different inputs")
        if other["shard_index"] in by_index:
            raise ValueError(f"{by_index[other['shard_index']]} and {path} are the same shard")
        by_index[other["shard_index"]] = path
    missing = sorted(set(range(shard["num_shards"])) - set(by_index))
    if missing:
        raise ValueError(f"shard(s) {missing} of {shard['num_shards']} are missing")
    _check_job(output_dir, job)
    (output_dir / "shards").mkdir(parents=True, exist_ok=True)
    _clean_temporaries(output_dir)
    write_json_atomic(output_dir / "shards" / JOB_FILE, job, indent=2)
    for index in sorted(by_index):
        for path in sorted((by_index[index] / "shards").iterdir()):
            if path.name != JOB_FILE and not path.name.startswith("."):
                target = output_dir / "shards" / path.name
                if not target.exists():
                    with atomic_path(target) as tmp:
                        shutil.copyfile(path, tmp)
    total = sum(json.loads((p / REPORT_FILE).read_text())["inputs"] for p in paths)
    return _finish(output_dir, job, parquet, {"merged_from": [str(p) for p in paths]}, total)


# ------------------------------------------------------------------------------ search


@dataclass(frozen=True)
class SearchHit:
    """One neighbour: its key (path or id) and cosine similarity to the query."""

    key: str
    score: float


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _query_embedding(
    query: Any, data: Any, keys: list[str], info: dict[str, Any], model: Any, device: str | None
) -> np.ndarray:
    if isinstance(query, np.ndarray) or torch.is_tensor(query):
        return np.asarray(query, dtype=np.float32).reshape(-1)
    if isinstance(query, (str, os.PathLike)) and os.fspath(query) in keys:
        return np.asarray(data[keys.index(os.fspath(query))]["embedding"], dtype=np.float32)
    job = info["job"]
    if isinstance(query, (str, os.PathLike)) and not os.path.isfile(query):
        raise ValueError(f"{query}: neither a {job['key']} of the library nor an audio file")
    encoder, _ = _load_model(model if model is not None else job["model"]["source"])
    fe = encoder._saved_feature_extractor()
    if model_fingerprint(encoder, fe) != job["model"]["fingerprint"]:
        raise ValueError(
            f"the model {job['model']['source']!r} is not the one the library was embedded "
            "with (its fingerprint differs): pass that model"
        )
    encoder = encoder.to(device=device or encoder.device, dtype=getattr(torch, job["dtype"]))
    out = encoder.embed_audio(query, output=job["output"])
    return out.clip_embeds[0].float().cpu().numpy()


def search(
    library: str | os.PathLike,
    query: Any,
    k: int = 10,
    model: str | os.PathLike | MSCLModel | None = None,
    device: str | None = None,
    index: str = "auto",
) -> list[SearchHit]:
    """The ``k`` rows of ``library`` nearest to ``query`` by cosine similarity, best first.

    ``query`` is a key of the library (a row's path or id: its stored embedding), an audio
    file (embedded with the library's model: ``model``, else the source recorded in
    ``library.json``, checked against the recorded fingerprint), or an embedding.
    ``index``: ``"numpy"`` (exact product), ``"faiss"`` (``datasets``' ``add_faiss_index``,
    flat inner-product index: also exact; needs ``faiss-cpu``, the ``search`` extra) or
    ``"auto"`` (faiss when installed and the library has at least ``FAISS_MIN_ROWS`` rows).
    """
    if index not in ("auto", "numpy", "faiss"):
        raise ValueError(f"index must be 'auto', 'numpy' or 'faiss', got {index!r}")
    folder = Path(library).expanduser()
    info = _read_info(folder)
    data = load_library(folder)
    key_name = info["job"]["key"]
    keys = list(data[key_name])
    q = _normalized(_query_embedding(query, data, keys, info, model, device))
    k = max(0, min(int(k), len(keys)))
    if k == 0:
        return []
    embeddings = _normalized(np.asarray(data.with_format("numpy")["embedding"]))
    use_faiss = index == "faiss"
    if index == "auto" and len(keys) >= FAISS_MIN_ROWS:
        try:
            import faiss  # noqa: F401
        except ImportError:
            pass
        else:
            use_faiss = True
    if use_faiss:
        import faiss

        data.add_faiss_index_from_external_arrays(
            embeddings, "embedding", metric_type=faiss.METRIC_INNER_PRODUCT
        )
        scores, rows = data.search("embedding", q, k)
        return [SearchHit(keys[int(r)], float(s)) for s, r in zip(scores, rows, strict=True)]
    scores = embeddings @ q
    top = np.argsort(-scores, kind="stable")[:k]
    return [SearchHit(keys[int(r)], float(scores[r])) for r in top]


def iter_hits(hits: Sequence[SearchHit]) -> Iterator[str]:
    """The lines ``mscl search`` prints: rank, score, key."""
    for rank, hit in enumerate(hits, 1):
        yield f"{rank:>3}  {hit.score:.4f}  {hit.key}"
