"""One separation job split across machines: shard slices of the tracks, and their merge.

Separation is the slow step of making a chunk set, and each track is separated on its own,
so a job can run as ``N`` independent shards (a job array, several machines):
``prepare_chunks(..., num_shards=N, shard_index=i)`` for ``i`` in ``0 .. N-1``. Shard ``i``
takes the ``i``-th contiguous slice of every split (:func:`shard_tracks`: the cut depends
only on the number of rows, so every machine cuts the same slices) and writes a complete,
resumable chunk set of it to its own folder, by convention ``ROOT/shard-ii-of-NN``
(:func:`shard_dir`). Its ``report.json`` records under ``"shard"`` the job fingerprint
(separator, settings, front end and input rows of the unsharded job), ``N`` and ``i``.

:func:`merge_chunk_sets` then checks that the folders are the ``N`` shards of one job
(all present, none twice, same settings, same front end and schema) and concatenates
their splits in shard order: the merged chunk set holds the rows of the unsharded run in
the same order, with one ``report.json`` summing the shards'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets

from ._files import naming_full_disk, write_json_atomic
from .chunk_set import claim_chunk_folder, load_chunk_set, save_chunk_set
from .run_lock import RunLock, RunLockedError

__all__ = ["check_sharding", "merge_chunk_sets", "shard_dir", "shard_tracks"]

REPORT_FILE = "report.json"
# Keys of a feature extractor's to_dict() that do not change the log-mels it computes.
_FRONT_END_METADATA = ("processor_class", "auto_map", "transformers_version")


def check_sharding(num_shards: int, shard_index: int) -> None:
    """Raise ValueError unless ``0 <= shard_index < num_shards`` (integers, ``num_shards >= 1``)."""
    for name, value in (("num_shards", num_shards), ("shard_index", shard_index)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must lie in [0, {num_shards - 1}] for num_shards={num_shards}, "
            f"got {shard_index}"
        )


def shard_dir(root: str | os.PathLike, shard_index: int, num_shards: int) -> Path:
    """The recommended folder of a shard: ``root/shard-ii-of-NN`` (``shard-03-of-16``)."""
    check_sharding(num_shards, shard_index)
    width = max(2, len(str(num_shards - 1)))
    return Path(root).expanduser() / f"shard-{shard_index:0{width}d}-of-{num_shards:0{width}d}"


def shard_tracks(tracks: Dataset, num_shards: int, shard_index: int) -> Dataset:
    """The contiguous slice of ``tracks`` that shard ``shard_index`` of ``num_shards`` takes.

    The slices of ``Dataset.shard(contiguous=True)``: in row order, sizes differing by at
    most one (the first ``len % num_shards`` one longer), so the slices of shards 0 .. N-1
    concatenate to ``tracks``; an empty slice too (more shards than rows), where
    ``Dataset.shard`` raises. With one shard, ``tracks`` itself (same fingerprint, so an
    unsharded run keeps its caches).
    """
    check_sharding(num_shards, shard_index)
    if num_shards == 1:
        return tracks
    size, longer = divmod(len(tracks), num_shards)
    start = shard_index * size + min(shard_index, longer)
    stop = start + size + (shard_index < longer)
    return tracks.select(range(start, stop) if stop > start else [])


# ---------------------------------------------------------------------------- merging


def _read_report(folder: Path) -> dict[str, Any]:
    path = folder / REPORT_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder}: no {REPORT_FILE}; not a finished prepare_chunks output (run its "
            "shard again: it resumes)"
        )
    try:
        report = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: unreadable ({err})") from err
    shard = report.get("shard") if isinstance(report, dict) else None
    if not isinstance(shard, dict) or not report.get("complete"):
        raise ValueError(
            f"{path}: no shard record (made by an older modeling_mscl or unfinished); run "
            "prepare_chunks with num_shards/shard_index into this folder again"
        )
    if {"job", "num_shards", "shard_index"} - set(shard):
        raise ValueError(f"{path}: the shard record lacks job, num_shards or shard_index")
    return report


def _settings_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which recorded settings tell two shard reports apart, in words."""
    if a["shard"]["num_shards"] != b["shard"]["num_shards"]:
        return f"num_shards {a['shard']['num_shards']} vs {b['shard']['num_shards']}"
    named = [
        f"{k} {a.get(k)!r} vs {b.get(k)!r}"
        for k in ("separator", "threshold")
        if a.get(k) != b.get(k)
    ]
    return ", ".join(named) or (
        "other input tracks or settings (batch_size, device, front end): job fingerprints "
        f"{a['shard']['job']} vs {b['shard']['job']}"
    )


def _check_complete_job(reports: dict[Path, dict[str, Any]]) -> list[Path]:
    """The folders in shard order, once they are checked to be the N shards of one job."""
    (first, ref), *rest = reports.items()
    for folder, report in rest:
        if report["shard"]["job"] != ref["shard"]["job"] or (
            report["shard"]["num_shards"] != ref["shard"]["num_shards"]
        ):
            raise ValueError(
                f"{folder} and {first} are shards of different jobs "
                f"({_settings_difference(report, ref)}); merge the shards of one job"
            )
    num_shards = ref["shard"]["num_shards"]
    by_index: dict[int, Path] = {}
    for folder, report in reports.items():
        index = report["shard"]["shard_index"]
        if index in by_index:
            raise ValueError(
                f"{by_index[index]} and {folder} are both shard {index} of {num_shards}; "
                "pass each shard once"
            )
        by_index[index] = folder
    missing = sorted(set(range(num_shards)) - set(by_index))
    if missing:
        raise ValueError(
            f"shard(s) {missing} of {num_shards} are missing (got {sorted(by_index)} from "
            f"{len(reports)} folder(s)); run them (or pass their folders) before merging"
        )
    return [by_index[i] for i in range(num_shards)]


def _front_end(fe: Any) -> dict[str, Any]:
    return {k: v for k, v in fe.to_dict().items() if k not in _FRONT_END_METADATA}


def _splits(data: Dataset | DatasetDict) -> dict[str, Dataset]:
    return dict(data) if isinstance(data, DatasetDict) else {"": data}


def _merged_report(ordered: list[Path], reports: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    ref = reports[ordered[0]]
    splits: dict[str, dict[str, Any]] = {}
    for folder in ordered:
        for name, info in reports[folder]["splits"].items():
            total = splits.setdefault(
                name, {"tracks": 0, "chunks": 0, "audio_seconds": 0.0, "skipped": []}
            )
            total["tracks"] += info["tracks"]
            total["chunks"] += info["chunks"]
            total["audio_seconds"] += info["audio_seconds"]
            total["skipped"].extend(info["skipped"])
    for total in splits.values():
        total["audio_seconds"] = round(total["audio_seconds"], 3)
    return {
        "complete": True,
        "separator": ref.get("separator"),
        "threshold": ref.get("threshold"),
        # The merge is the whole job: a one-shard job of the same fingerprint.
        "shard": {"job": ref["shard"]["job"], "num_shards": 1, "shard_index": 0},
        "merged_from": [
            {"folder": str(f), "shard_index": i, "fingerprint": reports[f].get("fingerprint")}
            for i, f in enumerate(ordered)
        ],
        "splits": splits,
    }


def merge_chunk_sets(
    folders: Sequence[str | os.PathLike], output_dir: str | os.PathLike
) -> Dataset | DatasetDict:
    """Merge the shard chunk sets of one sharded ``prepare_chunks`` job into ``output_dir``.

    Checks that ``folders`` (in any order) are all ``N`` shards of one job, each once
    (their ``report.json`` shard records), with the same format version, feature extractor
    (its ``to_dict()`` without metadata keys), splits and features; then writes, as one
    chunk set of ``output_dir``, the one whose splits concatenate the
    shards' in shard order, its feature extractor, and a ``report.json`` with the summed
    counts, the skipped tracks of every shard and the shards it came from. Re-running
    replaces the previous merge. ``output_dir`` must not hold or lie in a shard folder,
    and must be new, empty or a chunk-set folder of the package: it is written like any
    chunk set (:func:`~modeling_mscl.chunk_set.save_chunk_set`: built in a temporary
    folder, renamed into place, replacing only the files of the previous merge), under
    its run lock; a shard whose run still holds its lock is refused.

    Returns:
        The merged chunk ``Dataset`` or ``DatasetDict``, loaded back from ``output_dir``.

    Raises:
        ValueError: a folder is not a finished shard, a shard is missing or given twice,
            or the shards were made with other settings, front ends or schemas.
    """
    paths = [Path(f).expanduser().resolve() for f in folders]
    output_dir = Path(output_dir).expanduser().resolve()
    if not paths:
        raise ValueError("merge_chunk_sets needs at least one shard folder")
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise ValueError(f"{path} is given twice; pass each shard once")
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such shard folder")
        if output_dir == path or output_dir in path.parents or path in output_dir.parents:
            # One folder inside the other would mix a shard's files with the merge's.
            raise ValueError(
                f"the merge output {output_dir} must lie outside the shard folder {path} "
                "(and not contain it)"
            )
    reports = {path: _read_report(path) for path in paths}
    ordered = _check_complete_job(reports)
    for path in ordered:  # a shard still being written is not merged
        try:
            RunLock(path, "merge_chunk_sets (reading a shard)").acquire().release()
        except RunLockedError as err:
            raise RunLockedError(f"shard {path} is still being written: {err}") from None
    data, feature_extractor = _merged_rows(ordered)
    # Refused before anything is written when it holds files of someone else's.
    claim_chunk_folder(output_dir)
    with RunLock(output_dir, "merge_chunk_sets (mscl separate --merge)"):
        # No report means "not complete" until the new set is in place; the set replaces
        # only the files of a previous merge (its manifest), whatever else the folder holds.
        (output_dir / REPORT_FILE).unlink(missing_ok=True)
        with naming_full_disk(output_dir):  # a full disk names the merged set's folder
            save_chunk_set(data, output_dir, feature_extractor)
            write_json_atomic(output_dir / REPORT_FILE, _merged_report(ordered, reports), indent=2)
    return load_chunk_set(output_dir).data


def _merged_rows(ordered: list[Path]) -> tuple[Dataset | DatasetDict, Any]:
    """The shards' chunk sets checked against each other and concatenated in order, and
    their feature extractor."""
    # load_chunk_set reads only this version's format: the shards share their version.
    sets = [load_chunk_set(folder) for folder in ordered]
    ref, ref_fe, ref_splits = sets[0], _front_end(sets[0].feature_extractor), _splits(sets[0].data)
    for chunk_set in sets[1:]:
        if _front_end(chunk_set.feature_extractor) != ref_fe:
            raise ValueError(
                f"{chunk_set.path} and {ref.path} were made with different feature extractors "
                "(preprocessor_config.json); merge the shards of one job"
            )
        splits = _splits(chunk_set.data)
        if sorted(splits) != sorted(ref_splits):
            raise ValueError(
                f"{chunk_set.path} holds splits {sorted(splits)}, {ref.path} holds "
                f"{sorted(ref_splits)} ([''] is one Dataset without splits)"
            )
        for name, ds in splits.items():
            if ds.features != ref_splits[name].features:
                raise ValueError(
                    f"{chunk_set.path}"
                    + (f" (split {name!r})" if name else "")
                    + f" has other features than {ref.path}: {ds.features} vs "
                    f"{ref_splits[name].features}"
                )
    merged = {
        name: concatenate_datasets([_splits(s.data)[name] for s in sets]) for name in ref_splits
    }
    data = merged[""] if "" in merged else DatasetDict(merged)
    return data, ref.feature_extractor
