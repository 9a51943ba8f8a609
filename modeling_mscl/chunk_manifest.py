"""The manifest of a chunk set: its files, their sizes and checksums, and its fingerprint.

Written once, when the chunk set is built (:func:`~modeling_mscl.chunk_set.save_chunk_set`),
into its ``chunk_set.json``:

- ``files``: every file of the saved rows (``dataset_dict.json``, each split's
  ``state.json``, ``dataset_info.json`` and Arrow files) and the
  ``preprocessor_config.json``, each with its size in bytes and SHA-256;
- ``fingerprint``: the SHA-256 of the Arrow files' and the feature extractor's checksums
  (with their names), i.e. of the content a run trains on. Two chunk sets with the same
  rows saved the same way share it; a changed value anywhere changes it.

Readers check the cheap part at every start (every file present with its recorded size,
nothing read from outside the list) and the checksums on request (``mscl verify``,
``--verify_data``). The manifest is also the package's proof of which files of a folder
it wrote: replacing a chunk set deletes exactly the listed files.

Every path read from a file here (a split of ``dataset_dict.json``, a data file of
``state.json``, a name in the manifest) goes through :func:`~modeling_mscl._files.path_inside`:
none may lead outside the chunk set's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._files import path_inside

__all__ = [
    "ChunkSetDamagedError",
    "build_manifest",
    "check_files",
    "content_fingerprint",
    "file_sha256",
    "read_file_list",
    "saved_dataset_files",
]

_BLOCK = 1 << 20


class ChunkSetDamagedError(ValueError):
    """A file of a chunk set is missing, or differs from what its manifest records."""


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from err


def _split_files(folder: Path, split_dir: Path, prefix: str) -> list[str]:
    """The files ``datasets`` reads for one saved ``Dataset`` in ``split_dir``."""
    state_path = split_dir / "state.json"
    state = _read_json(state_path)
    data_files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(data_files, list):
        raise ValueError(f"{state_path}: no list of data files ('_data_files')")
    names = []
    for entry in data_files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        path_inside(split_dir, name, state_path)
        # The file must lie inside the chunk set's folder too, not only inside its split.
        path_inside(folder, f"{prefix}{name}", state_path)
        names.append(f"{prefix}{name}")
    names.append(f"{prefix}state.json")
    if (split_dir / "dataset_info.json").is_file():
        names.append(f"{prefix}dataset_info.json")
    return names


def saved_dataset_files(folder: str | os.PathLike) -> list[str]:
    """The files of the ``save_to_disk`` output in ``folder``, relative, '/'-separated.

    Read from ``dataset_dict.json`` (its splits) and each ``state.json`` (its data files),
    every name checked to stay inside ``folder`` (no absolute path, no ``..``, no
    symbolic link out): :class:`~modeling_mscl._files.UnsafePathError` otherwise.
    """
    folder = Path(folder)
    dict_path = folder / "dataset_dict.json"
    if dict_path.is_file():
        info = _read_json(dict_path)
        splits = info.get("splits") if isinstance(info, dict) else None
        if not isinstance(splits, list):
            raise ValueError(f"{dict_path}: no list of splits ('splits')")
        files = ["dataset_dict.json"]
        for split in splits:
            split_dir = path_inside(folder, split, dict_path)
            prefix = Path(split).as_posix().rstrip("/") + "/"
            files += _split_files(folder, split_dir, prefix)
        return files
    if (folder / "state.json").is_file():
        return _split_files(folder, folder, "")
    raise ValueError(f"{folder}: no dataset_dict.json or state.json (not a saved dataset)")


def build_manifest(folder: str | os.PathLike, names: Iterable[str]) -> dict[str, Any]:
    """``{"files": {name: {"size", "sha256"}}, "fingerprint": ...}`` of ``folder``'s ``names``."""
    folder = Path(folder)
    files = {}
    for name in sorted(set(names)):
        path = path_inside(folder, name, f"the file list of {folder}")
        files[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return {"fingerprint": content_fingerprint(files), "files": files}


def content_fingerprint(files: dict[str, dict[str, Any]]) -> str:
    """The fingerprint of a manifest's file entries: SHA-256 over the names and checksums
    of its Arrow files and its ``preprocessor_config.json``, the content a run reads."""
    content = sorted(
        (name, entry["sha256"])
        for name, entry in files.items()
        if name.endswith(".arrow") or name == "preprocessor_config.json"
    )
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def read_file_list(folder: Path, info: dict[str, Any], source: Path) -> dict[str, dict]:
    """The ``files`` of a manifest read from ``source``, each name checked to stay inside
    ``folder`` and each entry to hold a size and a checksum."""
    files = info.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{source}: the list of files is not a mapping")
    for name, entry in files.items():
        path_inside(folder, name, source)
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(f"{source}: the entry of {name!r} lacks its size or sha256")
    return files


def check_files(
    folder: str | os.PathLike, files: dict[str, dict[str, Any]], full: bool = False
) -> list[str]:
    """What is wrong with ``folder``'s files against the manifest entries ``files``: one
    line per bad file, naming it (an empty list when all is well).

    Always: every file is present with its recorded size, and every file ``datasets``
    will read is listed. With ``full``, every file's SHA-256 too (reads every byte).
    """
    folder = Path(folder)
    problems = []
    try:
        wanted = saved_dataset_files(folder)
    except ValueError as err:
        problems.append(str(err))
        wanted = []
    for name in wanted:
        if name not in files:
            problems.append(
                f"{folder / name}: read as part of the rows but not listed in the manifest "
                "(added or renamed after the chunk set was built)"
            )
    for name, entry in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing (listed in the manifest)")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(
                f"{path}: {size} bytes, the manifest records {entry['size']} (truncated or "
                "changed since the chunk set was built)"
            )
            continue
        if full and file_sha256(path) != entry["sha256"]:
            problems.append(
                f"{path}: its SHA-256 differs from the manifest's (the content changed since "
                "the chunk set was built: a damaged disk or an edit)"
            )
    return problems
