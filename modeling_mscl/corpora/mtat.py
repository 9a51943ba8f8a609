"""MagnaTagATune (MTAT): 25,863 clips of ~29 s, 188 binary tags, used with the top 50.

Official layout (annotations_final.csv and mp3.zip.001-003 from the MIREX wiki)::

    root/annotations_final.csv     tab-separated: clip_id, 188 tag columns (0/1), mp3_path
    root/0/ ... root/9/, root/a/ ... root/f/   the mp3s (mp3_path is relative to root)

The mp3 folders may also sit in ``root/mp3/`` or anywhere given as ``audio_dir``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from datasets import ClassLabel, DatasetDict, Features, Sequence, Value

from ._common import (
    TAGS_COLUMN,
    build_dataset_dict,
    file_sizes,
    log_skipped,
    presence_reason,
    require_file,
)

__all__ = ["MTAT_FALLBACK_SPLITS", "MTAT_FOLDERS", "load_mtat", "mtat_top_tags"]

MTAT_FOLDERS = tuple("0123456789abcdef")
# The usual split when the user has no split files: by the first character of mp3_path.
MTAT_FALLBACK_SPLITS = {
    **{folder: "train" for folder in "0123456789ab"},
    "c": "validation",
    **{folder: "test" for folder in "def"},
}
_LAYOUT = (
    "ROOT/annotations_final.csv (tab-separated: clip_id, 188 tag columns, mp3_path) "
    "and the mp3 folders ROOT/0 ... ROOT/f"
)
# Stems tried for each split file in split_dir, in this order.
_SPLIT_FILES = {"train": ("train",), "validation": ("valid", "validation"), "test": ("test",)}
_TAG_FILES = ("tags.npy", "tags.txt", "top50_tags.txt")


def _read_annotations(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(clip_ids, mp3_paths, tag_names, tag matrix (n_clips, n_tags) int8) of the csv."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("clip_id", "mp3_path"):
        if column not in table.columns:
            raise ValueError(
                f"{path}: column '{column}' not found (columns start with "
                f"{list(table.columns[:3])}); expected {_LAYOUT}"
            )
    tag_names = [c for c in table.columns if c not in ("clip_id", "mp3_path")]
    if not tag_names:
        raise ValueError(f"{path}: no tag columns between clip_id and mp3_path")
    values = table[tag_names].to_numpy()
    bad = ~np.isin(values, ["0", "1"])
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{path}: tag column '{tag_names[col]}' holds {values[row, col]!r} for clip "
            f"{table['clip_id'].iloc[row]}; tag values must be 0 or 1"
        )
    matrix = (values == "1").astype(np.int8)
    return list(table["clip_id"]), list(table["mp3_path"]), tag_names, matrix


def mtat_top_tags(tag_names: list[str], matrix: np.ndarray, top_k: int | None) -> list[str]:
    """The ``top_k`` most frequent tags (all when None), most frequent first.

    Frequency = number of clips carrying the tag in the whole annotation file; ties
    are broken by tag name so the selection does not depend on column order.
    """
    counts = matrix.sum(axis=0)
    order = sorted(range(len(tag_names)), key=lambda j: (-int(counts[j]), tag_names[j]))
    if top_k is not None:
        if not 1 <= top_k <= len(tag_names):
            raise ValueError(f"top_k must be in [1, {len(tag_names)}], got {top_k}")
        order = order[:top_k]
    return [tag_names[j] for j in order]


def _normalise_tag(name: str) -> str:
    # Tag lists in the wild spell 'no vocals' as 'noVocals' or 'no_vocals'.
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _read_list(path: Path) -> list[str]:
    """Entries of a split/tag file: a numpy array of strings (.npy) or one per line."""
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            # An object array can only be read by unpickling, which runs code from the
            # file: this package does not do that with a downloaded file.
            raise ValueError(
                f"{path} holds an object array, which only pickle can read, and this "
                "package does not unpickle downloaded files. Convert it once where you trust "
                "it: np.save(path, np.load(path, allow_pickle=True).astype(str)), or write a "
                "text file with one entry per line."
            ) from err
        entries = [str(x) for x in np.asarray(array).reshape(-1)]
    else:
        entries = path.read_text(encoding="utf-8").splitlines()
    return [e.strip() for e in entries if e.strip()]


def _tags_from_split_dir(split_dir: Path, tag_names: list[str]) -> list[str] | None:
    """The tag list stored beside the split files (its order is the label order), if any."""
    path = next((split_dir / n for n in _TAG_FILES if (split_dir / n).is_file()), None)
    if path is None:
        return None
    by_norm: dict[str, str] = {}
    for name in tag_names:
        by_norm.setdefault(_normalise_tag(name), name)
    chosen = []
    for entry in _read_list(path):
        name = entry if entry in tag_names else by_norm.get(_normalise_tag(entry))
        if name is None:
            raise ValueError(f"{path}: tag {entry!r} is not a column of annotations_final.csv")
        chosen.append(name)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{path}: a tag is listed twice")
    return chosen


def _splits_from_split_dir(split_dir: Path) -> dict[str, list[str]]:
    """mp3 paths per split from train/valid/test .npy (``"index\\tpath"``) or .txt files."""
    splits = {}
    for split, stems in _SPLIT_FILES.items():
        candidates = [split_dir / f"{stem}{ext}" for stem in stems for ext in (".npy", ".txt")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"no {split} split file in {split_dir}; expected one of "
                f"{[p.name for p in candidates]}"
            )
        # Won et al.'s files hold "row index<TAB>mp3_path"; plain lists hold the path only.
        splits[split] = [entry.split("\t")[-1].strip() for entry in _read_list(path)]
    return splits


def load_mtat(
    root: str | os.PathLike,
    split_dir: str | os.PathLike | None = None,
    top_k: int | None = 50,
    audio_dir: str | os.PathLike | None = None,
    return_skipped: bool = False,
) -> DatasetDict | tuple[DatasetDict, list[dict]]:
    """Read MagnaTagATune into ``train``/``validation``/``test`` track rows with ``tags``.

    Args:
        root: folder holding ``annotations_final.csv`` (and, usually, the mp3 folders).
        split_dir: folder with the split in common use, the "clean" split of clips with
            at least one top-50 tag and at least 29.1 s of audio (Lee et al. 2017, used
            by Won et al. 2020). Get it from the ``split/mtat/`` folder of
            https://github.com/minzwon/sota-music-tagging-models: ``train.npy``,
            ``valid.npy``, ``test.npy`` (arrays of ``"index\\tmp3_path"``) and
            ``tags.npy``. Plain ``train.txt``/``valid.txt``/``test.txt`` files with one
            mp3_path per line work too. A tag list there (``tags.npy``, ``tags.txt`` or
            ``top50_tags.txt``) fixes the tags and their order and overrides ``top_k``;
            labels always come from ``annotations_final.csv`` (``binary.npy`` is not
            needed). Without ``split_dir`` the usual fallback is used: folders 0-b
            train, c validation, d-f test, and clips with none of the top tags dropped
            (no duration filter; ``check_audio(ds, min_seconds=29.1)`` adds one).
        top_k: keep the ``top_k`` most frequent tags (count over the whole csv, ties
            broken by name, most frequent first); None keeps all 188.
        audio_dir: folder holding the mp3 folders ``0`` ... ``f``; defaults to ``root``
            or, if the folders are not there, ``root/mp3``.
        return_skipped: also return the skipped clips: dicts with ``split``,
            ``track_id``, ``path``, ``reason`` (mp3 missing or 0 bytes).

    Returns:
        A ``DatasetDict`` with columns ``track_id`` (the clip_id), ``audio`` and
        ``tags`` (``Sequence(ClassLabel)``: indices of the clip's active tags).
    """
    root = Path(root).expanduser().resolve()
    csv_path = require_file(root / "annotations_final.csv", "MagnaTagATune", _LAYOUT)
    clip_ids, mp3_paths, tag_names, matrix = _read_annotations(csv_path)

    tags = None
    split_paths = None
    if split_dir is not None:
        split_dir = Path(split_dir).expanduser().resolve()
        if not split_dir.is_dir():
            raise FileNotFoundError(f"split_dir {split_dir} is not a folder")
        tags = _tags_from_split_dir(split_dir, tag_names)
        split_paths = _splits_from_split_dir(split_dir)
    if tags is None:
        tags = mtat_top_tags(tag_names, matrix, top_k)
    columns = matrix[:, [tag_names.index(t) for t in tags]]

    if audio_dir is None:
        has_folders = any((root / f).is_dir() for f in MTAT_FOLDERS)
        audio_dir = root if has_folders or not (root / "mp3").is_dir() else root / "mp3"
    audio_dir = Path(audio_dir).expanduser().resolve()

    row_of = {path: i for i, path in enumerate(mp3_paths) if path}
    if split_paths is None:
        split_rows: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
        for i, path in enumerate(mp3_paths):
            split = MTAT_FALLBACK_SPLITS.get(path[:1])
            if split is not None and columns[i].any():
                split_rows[split].append(i)
    else:
        by_name: dict[str, int | None] = {}
        for path, i in row_of.items():
            name = path.rsplit("/", 1)[-1]
            by_name[name] = None if name in by_name else i  # None marks an ambiguous name
        split_rows = {}
        for split, paths in split_paths.items():
            rows, unknown = [], []
            for path in paths:
                i = row_of.get(path)
                if i is None:
                    i = by_name.get(path.rsplit("/", 1)[-1])
                if i is None:
                    unknown.append(path)
                else:
                    rows.append(i)
            if unknown:
                raise ValueError(
                    f"{len(unknown)} clip(s) of the {split} split file are not in "
                    f"annotations_final.csv, e.g. {unknown[:3]}"
                )
            split_rows[split] = rows

    sizes: dict[str, dict[str, int]] = {}  # one directory scan per mp3 folder
    rows_by_split: dict[str, list[dict]] = {}
    skipped: list[dict] = []
    for split, indices in split_rows.items():
        rows_by_split[split] = []
        for i in indices:
            folder, _, name = mp3_paths[i].rpartition("/")
            path = str(audio_dir / mp3_paths[i])
            if folder not in sizes:
                sizes[folder] = file_sizes(audio_dir / folder)
            reason = presence_reason(name, sizes[folder])
            if reason is not None:
                skipped.append(
                    {"split": split, "track_id": clip_ids[i], "path": path, "reason": reason}
                )
                continue
            rows_by_split[split].append(
                {
                    "track_id": clip_ids[i],
                    "audio": path,
                    "tags": np.flatnonzero(columns[i]).tolist(),
                }
            )
    if not any(rows_by_split.values()):
        raise FileNotFoundError(
            f"none of the MagnaTagATune mp3 files were found under {audio_dir}; "
            f"expected {_LAYOUT} (or pass audio_dir)"
        )
    log_skipped("MagnaTagATune", skipped)
    features = Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            TAGS_COLUMN: Sequence(ClassLabel(names=tags)),
        }
    )
    out = build_dataset_dict(rows_by_split, features, "MagnaTagATune")
    return (out, skipped) if return_skipped else out
