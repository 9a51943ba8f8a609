"""Generic layouts: a multitrack stems folder (MUSDB18-HQ) and a plain labelled audio folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from datasets import ClassLabel, DatasetDict, Features, Value

from ._common import (
    AUDIO_EXTENSIONS,
    LABEL_COLUMN,
    REASON_EMPTY,
    STEM_COLUMNS,
    build_dataset_dict,
    log_skipped,
)

__all__ = ["SPLIT_FOLDERS", "load_audio_folder", "load_stems_folder"]

# Top-level folder names read as splits, and the split name each one gets.
SPLIT_FOLDERS = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}
_STEMS_LAYOUT = (
    "ROOT/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav (MUSDB18-HQ) "
    "or ROOT/<track>/... for a single train split"
)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _split_folders(root: Path) -> dict[str, Path] | None:
    """Split name -> folder when ``root`` is split into train/valid/test folders, else None."""
    children = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    splits = {SPLIT_FOLDERS[p.name]: p for p in children if p.name in SPLIT_FOLDERS}
    if not splits:
        return None
    others = [p.name for p in children if p.name not in SPLIT_FOLDERS]
    if others:
        raise ValueError(
            f"{root} mixes split folders {sorted(p.name for p in splits.values())} with "
            f"other folders {others}; put every folder inside a split or use no split folders"
        )
    if len({p.name for p in children if p.name in SPLIT_FOLDERS}) > len(splits):
        raise ValueError(f"{root} has both 'valid' and 'validation' folders")
    return splits


def _find_stem(track_dir: Path, stem: str, extensions: tuple[str, ...]) -> Path | None:
    for ext in extensions:
        path = track_dir / f"{stem}.{ext}"
        if path.is_file():
            return path
    return None


def load_stems_folder(
    root: str | os.PathLike,
    extensions: Iterable[str] = ("wav", "flac"),
    return_skipped: bool = False,
) -> DatasetDict | tuple[DatasetDict, list[dict]]:
    """Read a multitrack folder in the MUSDB18-HQ layout into track rows with stem paths.

    ``root/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``; ``valid`` or
    ``validation`` folders are read too. Without split folders, ``root/<track>/...``
    gives a single ``train`` split. Each track needs all five files (any of
    ``extensions``, tried in order); a track folder that lacks one is skipped and
    reported (a warning, and the list with ``return_skipped``), not the whole folder.
    (MUSDB18's ``.stem.mp4`` files must first be decoded to wav, e.g. with
    ``musdbconvert`` from the musdb package.)

    Args:
        root: the folder.
        extensions: file suffixes to look for, in order.
        return_skipped: also return the skipped tracks: dicts with ``split``,
            ``track_id``, ``path`` (the track folder) and ``reason``.

    Returns:
        A ``DatasetDict`` with ``track_id`` (the track folder name), ``audio`` (the
        mixture) and ``vocals``, ``drums``, ``bass``, ``other`` paths.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"stems folder {root} not found; expected {_STEMS_LAYOUT}")
    extensions = tuple(e.lower().lstrip(".") for e in extensions)
    splits = _split_folders(root) or {"train": root}
    rows_by_split: dict[str, list[dict]] = {}
    skipped: list[dict] = []
    for split, folder in splits.items():
        rows = []
        for track_dir in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p)):
            paths = {
                name: _find_stem(track_dir, name, extensions) for name in ("mixture", *STEM_COLUMNS)
            }
            missing = [name for name, path in paths.items() if path is None]
            if missing:
                hint = ""
                if any(track_dir.glob("*.stem.mp4")):
                    hint = " (it holds MUSDB18 .stem.mp4 files: decode them to wav first)"
                reason = f"no {', '.join(missing)} file (looked for {'/'.join(extensions)}){hint}"
                skipped.append(
                    {"split": split, "track_id": track_dir.name, "path": str(track_dir),
                     "reason": reason}
                )  # fmt: skip
                continue
            row = {"track_id": track_dir.name, "audio": str(paths["mixture"])}
            row.update({name: str(paths[name]) for name in STEM_COLUMNS})
            rows.append(row)
        rows_by_split[split] = rows
    if not any(rows_by_split.values()):
        if any(root.glob("*.stem.mp4")):
            raise FileNotFoundError(
                f"{root} holds MUSDB18 .stem.mp4 files; decode them to wav folders first "
                f"(e.g. musdbconvert); expected {_STEMS_LAYOUT}"
            )
        if skipped:
            raise FileNotFoundError(
                f"no complete track folder in {root} ({len(skipped)} skipped, e.g. "
                f"{skipped[0]['path']}: {skipped[0]['reason']}); expected {_STEMS_LAYOUT}"
            )
        raise FileNotFoundError(f"no track folders found in {root}; expected {_STEMS_LAYOUT}")
    features = Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            **{name: Value("string") for name in STEM_COLUMNS},
        }
    )
    log_skipped("stems folder", skipped)
    dataset = build_dataset_dict(rows_by_split, features, "stems folder")
    return (dataset, skipped) if return_skipped else dataset


# Audio formats a user may hold that the scan does not read by default: listed in the
# report rather than passed over in silence.
_OTHER_AUDIO = frozenset(
    {"m4a", "aac", "opus", "wma", "aif", "aiff", "aifc", "alac", "mp4", "webm", "mka", "wv",
     "ape", "amr", "m4b", "oga", "caf", "au", "snd"}
)  # fmt: skip


def _audio_files(
    folder: Path, extensions: tuple[str, ...], unread: list[Path] | None = None
) -> list[Path]:
    """Audio files below ``folder`` (recursive, hidden entries skipped, symlinked folders
    followed once each), sorted. Files of other audio formats go to ``unread``."""
    found = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:  # a link back up is a loop
                seen.add(real)
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            if name.startswith("."):
                continue
            suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if suffix in extensions:
                found.append(Path(dirpath) / name)
            elif suffix in _OTHER_AUDIO and unread is not None:
                unread.append(Path(dirpath) / name)
    return sorted(found)


def load_audio_folder(
    root: str | os.PathLike,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    return_skipped: bool = False,
) -> DatasetDict | tuple[DatasetDict, list[dict]]:
    """Read a plain audio folder; labels are the names of the first-level subfolders.

    Layouts: ``root/<label>/**/<file>``, optionally inside split folders
    ``root/{train,valid|validation,test}/<label>/...`` (otherwise a single ``train``
    split). Files directly in ``root`` (or in a split folder) with no label folder
    give rows without a ``label`` column; mixing both is an error. Empty (0-byte)
    files are skipped and reported, and so are files of audio formats outside
    ``extensions`` (e.g. ``.m4a``). Symlinked folders are followed.

    Args:
        root: the folder.
        extensions: file suffixes to read (case-insensitive, with or without dot).
        return_skipped: also return the skipped files: dicts with ``split``,
            ``track_id``, ``path``, ``reason``.

    Returns:
        A ``DatasetDict`` with ``track_id`` (the path relative to ``root``, POSIX
        style), ``audio`` and, when there are label folders, ``label``
        (``ClassLabel``, names sorted; the same names in every split).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} not found")
    extensions = tuple(e.lower().lstrip(".") for e in extensions)
    splits = _split_folders(root) or {"train": root}
    found: dict[str, list[tuple[Path, str | None]]] = {}
    unread: dict[str, list[Path]] = {}
    for split, folder in splits.items():
        found[split] = []
        unread[split] = []
        for path in _audio_files(folder, extensions, unread[split]):
            parts = path.relative_to(folder).parts
            found[split].append((path, parts[0] if len(parts) > 1 else None))
    labelled = {label is not None for items in found.values() for _, label in items}
    if not labelled:
        raise FileNotFoundError(f"no audio files ({'/'.join(extensions)}) found in {root}")
    if len(labelled) == 2:
        loose = next(p for items in found.values() for p, label in items if label is None)
        raise ValueError(
            f"{root} has files in label subfolders and files outside them (e.g. {loose}); "
            f"put every file in a label folder, or none"
        )
    has_labels = labelled == {True}
    names = sorted({label for items in found.values() for _, label in items if label})
    label_index = {name: i for i, name in enumerate(names)}

    rows_by_split: dict[str, list[dict]] = {}
    skipped: list[dict] = []
    read = "/".join(extensions)
    for split, paths in unread.items():
        for path in paths:
            suffix = path.suffix.lower().lstrip(".")
            skipped.append(
                {
                    "split": split,
                    "track_id": path.relative_to(root).as_posix(),
                    "path": str(path),
                    "reason": f"format .{suffix} is not read (extensions: {read}); pass "
                    f"extensions=(..., {suffix!r}) to read it (decoding it needs torchcodec "
                    "with FFmpeg)",
                }
            )
    for split, items in found.items():
        rows = []
        for path, label in items:
            track_id = path.relative_to(root).as_posix()
            if path.stat().st_size == 0:
                skipped.append(
                    {
                        "split": split,
                        "track_id": track_id,
                        "path": str(path),
                        "reason": REASON_EMPTY,
                    }
                )
                continue
            row = {"track_id": track_id, "audio": str(path)}
            if has_labels:
                row[LABEL_COLUMN] = label_index[label]
            rows.append(row)
        rows_by_split[split] = rows
    log_skipped("audio folder", skipped)
    features = {"track_id": Value("string"), "audio": Value("string")}
    if has_labels:
        features[LABEL_COLUMN] = ClassLabel(names=names)
    out = build_dataset_dict(rows_by_split, Features(features), "audio folder")
    return (out, skipped) if return_skipped else out
