"""Free Music Archive (FMA): genre classification, official split; small = 8,000 30 s clips.

Official layout (github.com/mdeff/fma)::

    root/fma_metadata/tracks.csv   two header rows (top level, column name) then a
                                   "track_id" row; first column = track id
    root/fma_small/000/000002.mp3  id zero-padded to 6 digits, folder = its first 3
    root/fma_medium/..., root/fma_large/..., root/fma_full/...

The columns used are ('set', 'subset'), ('set', 'split') and ('track', 'genre_top').
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from datasets import ClassLabel, DatasetDict, Features, Value

from ._common import (
    LABEL_COLUMN,
    build_dataset_dict,
    file_sizes,
    log_skipped,
    presence_reason,
    require_dir,
    require_file,
)

__all__ = [
    "FMA_KNOWN_CORRUPT",
    "FMA_SMALL_GENRES",
    "FMA_TOP_GENRES",
    "fma_audio_path",
    "load_fma",
]

# The 16 root genres of FMA's genre hierarchy (genre_top values), sorted.
FMA_TOP_GENRES = (
    "Blues",
    "Classical",
    "Country",
    "Easy Listening",
    "Electronic",
    "Experimental",
    "Folk",
    "Hip-Hop",
    "Instrumental",
    "International",
    "Jazz",
    "Old-Time / Historic",
    "Pop",
    "Rock",
    "Soul-RnB",
    "Spoken",
)
# fma_small is balanced over these 8 (1,000 tracks each), sorted.
FMA_SMALL_GENRES = (
    "Electronic",
    "Experimental",
    "Folk",
    "Hip-Hop",
    "Instrumental",
    "International",
    "Pop",
    "Rock",
)
# Files reported as unreadable/truncated on the FMA issue tracker: three in fma_small
# (thus in every subset), three more that appear from fma_medium on.
FMA_KNOWN_CORRUPT = {
    98565: "small",
    98567: "small",
    98569: "small",
    99134: "medium",
    108925: "medium",
    133297: "medium",
}
# Which ('set', 'subset') values each subset takes: medium contains small, and so on.
_SUBSETS = {
    "small": {"small"},
    "medium": {"small", "medium"},
    "large": {"small", "medium", "large"},
    "full": {"small", "medium", "large"},
}
_SPLITS = {"training": "train", "validation": "validation", "test": "test"}
_COLUMNS = {
    "subset": ("set", "subset"),
    "split": ("set", "split"),
    "genre": ("track", "genre_top"),
}
_LAYOUT = "ROOT/fma_metadata/tracks.csv (two header rows) and ROOT/fma_<subset>/XXX/XXXXXX.mp3"
REASON_KNOWN_CORRUPT = "known corrupt file in FMA (listed on the FMA issue tracker)"


def fma_audio_path(audio_root: str | os.PathLike, track_id: int) -> Path:
    """Path of a track's mp3: ``audio_root/XXX/XXXXXX.mp3`` with the id zero-padded."""
    name = f"{int(track_id):06d}"
    return Path(audio_root) / name[:3] / f"{name}.mp3"


def _read_tracks(path: Path) -> list[tuple[int, str, str, str]]:
    """(track_id, subset, split, genre_top) for every row of tracks.csv."""
    import pandas as pd

    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [next(reader, []) for _ in range(3)]
    top, name, third = header
    positions = {}
    for key, wanted in _COLUMNS.items():
        hits = [i for i, pair in enumerate(zip(top, name, strict=False)) if pair == wanted]
        if not hits:
            raise ValueError(
                f"{path}: column {wanted} not found in the two header rows; expected "
                f"FMA's tracks.csv (e.g. from fma_metadata.zip)"
            )
        positions[key] = hits[0]
    # pandas writes the index name ("track_id") on a third header line; allow its absence.
    skip = 3 if third and third[0] == "track_id" and not any(third[1:]) else 2
    usecols = [0, positions["subset"], positions["split"], positions["genre"]]
    table = pd.read_csv(
        path, header=None, skiprows=skip, usecols=usecols, dtype=str, keep_default_na=False
    )
    ids = [int(x) for x in table[0]]  # with header=None the columns keep their positions
    return list(
        zip(
            ids,
            table[positions["subset"]],
            table[positions["split"]],
            table[positions["genre"]],
            strict=True,
        )
    )


def load_fma(
    root: str | os.PathLike,
    subset: str = "small",
    metadata_dir: str | os.PathLike | None = None,
    audio_dir: str | os.PathLike | None = None,
    return_skipped: bool = False,
) -> DatasetDict | tuple[DatasetDict, list[dict]]:
    """Read an FMA subset into ``train``/``validation``/``test`` track rows with ``label``.

    The split is the official one (('set', 'split') of tracks.csv). Tracks of
    :data:`FMA_KNOWN_CORRUPT`, tracks whose mp3 is missing or empty and (large/full
    only) tracks without a ``genre_top`` are skipped and reported.

    Args:
        root: folder holding ``fma_metadata/`` and ``fma_<subset>/``.
        subset: ``"small"`` (8 genres, :data:`FMA_SMALL_GENRES`), ``"medium"``,
            ``"large"`` or ``"full"`` (the 16 root genres, :data:`FMA_TOP_GENRES`).
            Subsets nest: medium holds the rows whose subset is small or medium.
        metadata_dir: where ``tracks.csv`` is; default ``root/fma_metadata``.
        audio_dir: where the ``XXX/`` mp3 folders are; default ``root/fma_<subset>``.
        return_skipped: also return the skipped tracks: dicts with ``split``,
            ``track_id``, ``path``, ``reason``.

    Returns:
        A ``DatasetDict`` with columns ``track_id`` (6-digit id, as in the file
        name), ``audio`` and ``label`` (``ClassLabel`` of the genres, sorted).
    """
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be one of {sorted(_SUBSETS)}, got {subset!r}")
    root = Path(root).expanduser().resolve()
    metadata_dir = Path(metadata_dir) if metadata_dir is not None else root / "fma_metadata"
    audio_dir = Path(audio_dir) if audio_dir is not None else root / f"fma_{subset}"
    tracks_csv = require_file(metadata_dir.resolve() / "tracks.csv", "FMA", _LAYOUT)
    audio_dir = require_dir(audio_dir.resolve(), "FMA", _LAYOUT)
    genres = FMA_SMALL_GENRES if subset == "small" else FMA_TOP_GENRES

    rows_by_split: dict[str, list[dict]] = {split: [] for split in _SPLITS.values()}
    skipped: list[dict] = []
    sizes: dict[str, dict[str, int]] = {}  # one directory scan per XXX/ folder
    for track, track_subset, split_name, genre in sorted(_read_tracks(tracks_csv)):
        if track_subset not in _SUBSETS[subset]:
            continue
        split = _SPLITS.get(split_name)
        if split is None:
            raise ValueError(f"{tracks_csv}: track {track} has unknown split {split_name!r}")
        path = fma_audio_path(audio_dir, track)
        item = {"split": split, "track_id": path.stem, "path": str(path)}
        if track in FMA_KNOWN_CORRUPT:
            skipped.append({**item, "reason": REASON_KNOWN_CORRUPT})
            continue
        if not genre:
            skipped.append({**item, "reason": "no genre_top in tracks.csv"})
            continue
        if genre not in genres:
            raise ValueError(
                f"{tracks_csv}: track {track} has genre_top {genre!r}, not one of the "
                f"{len(genres)} genres of fma_{subset}: {list(genres)}"
            )
        folder = path.parent.name
        if folder not in sizes:
            sizes[folder] = file_sizes(path.parent)
        reason = presence_reason(path.name, sizes[folder])
        if reason is not None:
            skipped.append({**item, "reason": reason})
            continue
        rows_by_split[split].append(
            {"track_id": path.stem, "audio": str(path), LABEL_COLUMN: genres.index(genre)}
        )
    if not any(rows_by_split.values()):
        raise FileNotFoundError(
            f"no fma_{subset} mp3 listed in {tracks_csv} was found under {audio_dir}; "
            f"expected the FMA layout: {_LAYOUT}"
        )
    log_skipped(f"FMA ({subset})", skipped)
    features = Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            LABEL_COLUMN: ClassLabel(names=list(genres)),
        }
    )
    out = build_dataset_dict(rows_by_split, features, "FMA")
    return (out, skipped) if return_skipped else out
