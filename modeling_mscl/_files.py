"""Writing files and folders so that a crash never leaves half of one under the final name.

The package's one mechanism for it: write under a temporary name next to the target (same
folder, so same file system) and rename into place with :func:`os.replace`, which is
atomic on POSIX and Windows. A reader sees the old content or the new, never a mixture;
a killed process leaves at most a hidden temporary file (``.<name>.<random>.part``) or
folder (``.tmp-<name>``) behind. Nothing is fsync'ed: this guards against a process that
dies, not against the machine losing power.

- :func:`atomic_path` / :func:`atomic_write` / :func:`write_json_atomic`: one file.
- :func:`replace_folder`: a finished folder renamed over an older one, for writers that
  fill the temporary folder themselves (the checkpoints of several processes).
- :func:`atomic_folder`: the same for one process, as a context manager.

And what the package may touch at all:

- :func:`path_inside`: a path read from a file (a split named in ``dataset_dict.json``,
  a file listed in a manifest) resolved, and refused unless it stays inside its folder.
- :func:`claim_folder`: an output folder the package writes into is new, empty, or one
  it created before (it holds the package's marker, :data:`MARKER_FILE`); a non-empty
  folder without it is refused, so the package never deletes or replaces what it did not
  write.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MARKER_FILE",
    "TEMP_FOLDER_PREFIX",
    "ForeignFolderError",
    "UnsafePathError",
    "atomic_folder",
    "atomic_path",
    "atomic_write",
    "claim_folder",
    "folder_kind",
    "naming_full_disk",
    "path_inside",
    "replace_folder",
    "write_json_atomic",
]

# Prefix of a folder being written; a run's cleanup deletes what a crash left under it.
TEMP_FOLDER_PREFIX = ".tmp-"


def _reserve_temp_file(path: Path) -> Path:
    """Create an empty, unused hidden file next to ``path`` and return its name.

    Created with the default permissions (0o666 less the umask), as ``open`` would: the
    renamed file must be as readable as one written directly (``mkstemp`` gives 0o600).
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to, by any means.

    When the block ends normally the temporary file is renamed to ``path`` (replacing an
    older file); when it raises, the temporary file is deleted and ``path`` is untouched.
    The parent folder is created if needed. For writers that take a file name
    (soundfile, a raw frame dump); :func:`atomic_write` gives an open file instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_temp_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that replaces ``path`` only once the block ends without error.

    ``mode`` is a writing mode (``"w"`` or ``"wb"``); text is UTF-8 unless ``encoding``
    says otherwise. The file is closed before it is renamed into place.
    """
    if not mode.startswith("w") or "+" in mode:
        raise ValueError(
            f"atomic_write writes a whole new file: mode must be 'w' or 'wb', got {mode!r}"
        )
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically (no trailing newline)."""
    text = json.dumps(obj, **dumps_kwargs)  # serialised first: a bad value leaves no file
    with atomic_write(path, "w") as handle:
        handle.write(text)


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older ``final``.

    The older folder is first renamed aside (under :data:`TEMP_FOLDER_PREFIX`) and deleted
    only after the new one is in place: deleting it under its own name could be
    interrupted and leave half a folder that still looks complete.
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f"{TEMP_FOLDER_PREFIX}old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def naming_full_disk(folder: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full disk (or exceeded quota) inside the block as an ``OSError`` that
    names ``folder``, the folder being written: the system's message names no path, or
    only a temporary file inside it."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(
            err.errno,
            f"no space left on the device while writing {folder} ({err}); free some space "
            "and run again",
        ) from err


@contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; it becomes ``final`` when the block ends.

    The folder is ``.tmp-<name>`` next to ``final`` (a leftover of a crashed run is
    cleared first); if the block raises it is deleted and ``final`` is untouched.
    """
    final = Path(final)
    tmp = final.with_name(f"{TEMP_FOLDER_PREFIX}{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    with naming_full_disk(final):  # a full disk inside the block names `final`
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_folder(tmp, final)


# ------------------------------------------------------------------ what may be touched


class UnsafePathError(ValueError):
    """A path read from a file leaves the folder it must stay in."""


def path_inside(folder: str | os.PathLike, name: object, source: str | os.PathLike) -> Path:
    """``folder / name`` for a ``name`` read from the file ``source``, checked to stay inside.

    Refused (:class:`UnsafePathError`, naming ``source``, the name and the reason): a name
    that is not a non-empty string, an absolute path, a ``..`` component, and a path
    whose resolved form (symbolic links followed) lies outside ``folder``'s. A file can
    then neither make the package read nor delete anything outside its folder.
    """
    where = f"{source}: the path {name!r}"
    if not isinstance(name, str) or not name or "\0" in name:
        raise UnsafePathError(f"{where} is not a file name inside {folder}")
    pure = Path(name)
    if pure.is_absolute() or name.startswith(("/", "\\")) or pure.drive:
        raise UnsafePathError(f"{where} is absolute; only paths inside {folder} are allowed")
    if ".." in pure.parts or ".." in name.replace("\\", "/").split("/"):
        raise UnsafePathError(f"{where} goes up with '..'; only paths inside {folder} are allowed")
    root = Path(folder).resolve()
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(
            f"{where} leads through a symbolic link to {target}, outside {folder}"
        )
    return Path(folder) / pure


class ForeignFolderError(ValueError):
    """An output folder holds content the package did not write."""


# Written into every output folder the package creates (a chunk set's folder, a
# pre-training run's output_dir): the proof that the folder is the package's to manage.
MARKER_FILE = ".modeling_mscl.json"
# Names of the package's own bookkeeping (the marker, run_lock's files), which do not make
# a folder "not empty".
_BOOKKEEPING = (MARKER_FILE, ".mscl.lock", ".mscl.lock.json")


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind recorded in ``folder``'s marker ('chunk set', 'pretraining run'), or None
    when it has no readable marker."""
    path = Path(folder) / MARKER_FILE
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def claim_folder(folder: str | os.PathLike, kind: str, adopt: bool = False) -> Path:
    """Make sure the package may write (and later delete its own files) in ``folder``.

    A missing or empty folder is created and marked (:data:`MARKER_FILE`, recording
    ``kind``); a folder with this marker is the package's already. A folder marked as
    another kind, or not empty and not marked, is refused with a
    :class:`ForeignFolderError` naming it and some of what it holds; ``adopt`` marks such
    an unmarked folder instead (for callers that recognised it as an output of an older
    version of the package, made before folders were marked).
    """
    folder = Path(folder).expanduser()
    found = folder_kind(folder)
    if found == kind:
        return folder
    if found is not None:
        raise ForeignFolderError(
            f"{folder} is a {found} folder of modeling_mscl, not a {kind} one; pick another folder"
        )
    if folder.exists() and not folder.is_dir():
        raise ForeignFolderError(f"{folder} exists and is not a folder")
    entries = folder.iterdir() if folder.is_dir() else []
    held = sorted(p.name for p in entries if p.name not in _BOOKKEEPING)
    if held and not adopt:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise ForeignFolderError(
            f"{folder} is not empty ({shown}) and was not created by modeling_mscl (it has no "
            f"{MARKER_FILE}); the package writes {kind}s only into folders it created, so it "
            "never deletes or replaces what it did not write: pick a new or empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    from . import __version__

    write_json_atomic(
        folder / MARKER_FILE,
        {"kind": kind, "created_by": f"modeling_mscl {__version__}"},
        indent=2,
    )
    return folder
