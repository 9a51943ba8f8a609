"""The chunk set: MSCL's pre-training data on disk. Its format, writing and reading.

A chunk set is a folder holding

- the chunk rows, saved with ``datasets``' ``save_to_disk`` (one ``Dataset`` or a
  ``DatasetDict`` of splits) and memory-mapped when read;
- ``preprocessor_config.json``: the :class:`~modeling_mscl.MSCLFeatureExtractor` that
  computed the rows' log-mels. Readers take the front end from it (pre-training exports
  it with the encoder), never from defaults;
- ``chunk_set.json``: the format version and the manifest (every file with its size and
  SHA-256, and the content fingerprint: :mod:`~modeling_mscl.chunk_manifest`), written
  last and checked on read. A folder without it is a chunk set of an older version or an
  unfinished save;
- ``.modeling_mscl.json``: the marker of a folder the package created
  (:func:`~modeling_mscl._files.claim_folder`).

A row is one chunk of one track: ``track_id`` (string), ``chunk_index`` (int32),
``mixture`` and each of :data:`~modeling_mscl.stems.SOURCES` (``Array2D((frames, bins),
float16)`` log-mels), ``present`` (4 bools in SOURCES order: whether each source sounds
in the chunk) and the track's label columns. A chunk is :data:`CHUNK_WINDOWS` model
windows of the front end (392 frames, about 4 s, with the default one): see
:class:`ChunkGeometry`.

:func:`save_chunk_set` writes a chunk set (the last step of
:func:`~modeling_mscl.chunks.prepare_chunks`), :func:`load_chunk_set` opens one and
:class:`ChunkStore` cuts model-window crops out of its spectrograms.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Array2D, Dataset, DatasetDict, Features, Value
from datasets import Sequence as ListFeature

from ._files import (
    TEMP_FOLDER_PREFIX,
    ForeignFolderError,
    claim_folder,
    write_json_atomic,
)
from .chunk_manifest import (
    ChunkSetDamagedError,
    build_manifest,
    check_files,
    content_fingerprint,
    read_file_list,
    saved_dataset_files,
)
from .data_checks import (
    check_crops,
    describe_non_chunk_set,
    load_from_disk_checked,
    log_mel_range,
    rows_in_range,
)
from .feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from .stems import SOURCES

__all__ = [
    "CHUNK_COLUMNS",
    "CHUNK_WINDOWS",
    "CROP_FRAMES",
    "FORMAT_VERSION",
    "MIXTURE",
    "SPECTROGRAM_COLUMNS",
    "ChunkGeometry",
    "ChunkSet",
    "ChunkStore",
    "add_manifest",
    "chunk_features",
    "claim_chunk_folder",
    "load_chunk_set",
    "save_chunk_set",
    "verify_chunk_set",
]

# Bump when the rows, their computation or the folder layout change: readers refuse other
# versions, and prepare_chunks' caches are keyed on it. 2: preprocessor_config.json and
# chunk_set.json beside the rows.
FORMAT_VERSION = 2
INFO_FILE = "chunk_set.json"
# The kind recorded in the folder marker of a chunk set (modeling_mscl._files).
CHUNK_SET_KIND = "chunk set"
FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
# A chunk is four model windows; a crop is one.
CHUNK_WINDOWS = 4
# Frames of a crop: the model window of every front end a chunk set may have. Pre-training
# and retrieval cut crops of this length, so a front end with another window is refused.
CROP_FRAMES = 98
MIXTURE = "mixture"
SPECTROGRAM_COLUMNS = (MIXTURE, *SOURCES)
CHUNK_COLUMNS = ("track_id", "chunk_index", *SPECTROGRAM_COLUMNS, "present")
_REMAKE = (
    "re-make it with `mscl separate` (or modeling_mscl.chunks.prepare_chunks) into the same folder"
)


# ---------------------------------------------------------------------------- the format


@dataclass(frozen=True)
class ChunkGeometry:
    """Where the chunks of a front end fall in a track.

    Chunk c of a track holds its log-mel frames ``[c * frames, (c + 1) * frames)`` and its
    presence flags cover the samples ``[c * samples, (c + 1) * samples)``: one chunk hop of
    frames, so flags and spectrograms share their boundaries.
    """

    frames: int
    num_bins: int
    frame_length: int
    hop_length: int
    sampling_rate: int

    @classmethod
    def of(cls, feature_extractor: MSCLFeatureExtractor) -> ChunkGeometry:
        """The geometry of ``feature_extractor``'s chunks (:data:`CHUNK_WINDOWS` windows).

        Raises ValueError for a front end whose window is not :data:`CROP_FRAMES` frames.
        """
        fe = feature_extractor
        if fe.window_frames != CROP_FRAMES:
            raise ValueError(
                f"the feature extractor's window is {fe.window_frames} frames; chunk sets are "
                f"cut into crops of {CROP_FRAMES} frames (window_frames={CROP_FRAMES})"
            )
        return cls(
            frames=CHUNK_WINDOWS * fe.window_frames,
            num_bins=fe.feature_size,
            frame_length=fe.frame_length,
            hop_length=fe.hop_length,
            sampling_rate=fe.sampling_rate,
        )

    @property
    def samples(self) -> int:
        """Samples between the starts of consecutive chunks (62,720 by default)."""
        return self.frames * self.hop_length

    @property
    def min_track_samples(self) -> int:
        """Samples of the shortest track with one whole chunk (62,960 by default)."""
        return self.frame_length + (self.frames - 1) * self.hop_length

    def num_chunks(self, num_samples: int) -> int:
        """Whole chunks in a track of ``num_samples`` samples (the tail is dropped)."""
        if num_samples < self.frame_length:
            return 0
        return (1 + (num_samples - self.frame_length) // self.hop_length) // self.frames


def chunk_features(
    chunk_frames: int, num_bins: int, label_features: Mapping[str, Any] | None = None
) -> Features:
    """Features of a chunk row with ``(chunk_frames, num_bins)`` log-mels, plus the
    passed-through label columns (see the module docstring)."""
    spec = Array2D(shape=(int(chunk_frames), int(num_bins)), dtype="float16")
    features = {
        "track_id": Value("string"),
        "chunk_index": Value("int32"),
        **{name: spec for name in SPECTROGRAM_COLUMNS},
        "present": ListFeature(Value("bool"), length=len(SOURCES)),
    }
    for name, feature in (label_features or {}).items():
        if name in features:
            raise ValueError(f"label column '{name}' clashes with a chunk column")
        features[name] = feature
    return Features(features)


def _spectrogram_shape(
    features: Features, columns: Sequence[str], where: str
) -> tuple[int, int, np.dtype]:
    """(frames, bins, dtype) shared by the spectrogram ``columns``; errors name ``where``."""
    missing = [c for c in (*columns, "present") if c not in features]
    if missing:
        raise ValueError(f"{where} lacks the chunk column(s) {missing}")
    if any(not isinstance(features[c], Array2D) for c in columns):
        kinds = {c: type(features[c]).__name__ for c in columns}
        raise ValueError(f"{where}: spectrogram columns must be Array2D, got {kinds}")
    specs = {(tuple(features[c].shape), features[c].dtype) for c in columns}
    if len(specs) != 1:
        raise ValueError(
            f"{where}: spectrogram columns must share one shape and dtype, got {specs}"
        )
    ((shape, dtype),) = specs
    frames, bins = int(shape[0]), int(shape[1])
    if frames < CROP_FRAMES:
        raise ValueError(f"{where}: chunks of {frames} frames are shorter than a crop")
    return frames, bins, np.dtype(dtype)


def _check_front_end(fe: MSCLFeatureExtractor, num_bins: int, where: str) -> None:
    """The spectrograms must be ``fe``'s: same mel bins, crops of its window."""
    if fe.feature_size != num_bins:
        raise ValueError(
            f"{where}: the log-mels have {num_bins} mel bins but the feature extractor "
            f"computes {fe.feature_size} (feature_size)"
        )
    try:
        ChunkGeometry.of(fe)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


# ---------------------------------------------------------------------------- writing


# The folder a save is built in, inside the chunk set's own folder (same file system, so
# each finished file is renamed into place); a leftover of a killed save is removed.
_STAGING = f"{TEMP_FOLDER_PREFIX}save"
REPORT_FILE = "report.json"
# What save_pretrained writes beside preprocessor_config.json (the Hub code of the front end).
_FRONT_END_CODE = ("feature_extraction_mscl.py", "audio_decoding_mscl.py", "long_audio_mscl.py")
_ADD_MANIFEST = "mscl verify {folder} --add-manifest"


def claim_chunk_folder(folder: str | os.PathLike) -> Path:
    """:func:`~modeling_mscl._files.claim_folder` for a chunk set (new, empty or marked),
    with advice for the folder of a chunk set made before folders were marked."""
    folder = Path(folder).expanduser()
    try:
        return claim_folder(folder, CHUNK_SET_KIND)
    except ForeignFolderError as err:
        if (folder / INFO_FILE).is_file() or (folder / REPORT_FILE).is_file():
            raise ForeignFolderError(
                f"{err}. If an earlier version of modeling_mscl made this chunk set, "
                f"`{_ADD_MANIFEST.format(folder=folder)}` records its files and marks the "
                "folder as the package's"
            ) from None
        raise


def _previous_files(folder: Path) -> dict[str, Any]:
    """The files of the chunk set (complete or half-installed) in ``folder``, from its
    ``chunk_set.json``: the only files a new save may delete."""
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text())
    except ValueError as err:
        raise ValueError(f"{info_path}: unreadable ({err}); move the folder aside") from err
    if not isinstance(info, dict) or "files" not in info:
        raise ForeignFolderError(
            f"{folder} holds a chunk set without a list of its files (made by an earlier "
            "version of modeling_mscl), which a new save would have to delete unproven: "
            f"`{_ADD_MANIFEST.format(folder=folder)}` records them, or remove it yourself"
        )
    return read_file_list(folder, info, info_path)


def _conflicts(folder: Path, staging: Path, ours: dict[str, Any]) -> list[Path]:
    """Paths a new save would overwrite that are not files of the previous chunk set."""
    found = []
    for new in staging.rglob("*"):
        if new.is_dir():
            continue
        name = new.relative_to(staging).as_posix()
        target = folder / name
        if os.path.lexists(target) and name not in ours:
            found.append(target)
    # A folder of the new set must not hold other files than the previous set's.
    for entry in staging.iterdir():
        target = folder / entry.name
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            for old in target.rglob("*"):
                if old.is_file() and old.relative_to(folder).as_posix() not in ours:
                    found.append(old)
        elif entry.is_dir() and os.path.lexists(target):
            found.append(target)
    return sorted(set(found))


def _install(folder: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Replace the previous chunk set of ``folder`` with the one built in ``staging``.

    Deletes only the previous set's listed files (and the split folders they leave
    empty); refuses, before touching anything, when a new file would overwrite one it did
    not list. ``chunk_set.json`` says "incomplete" (listing old and new files) until the
    last rename, so a killed save is refused by readers and cleaned up by the next save.
    """
    ours = _previous_files(folder)
    conflicts = _conflicts(folder, staging, ours)
    if conflicts:
        shown = ", ".join(str(p) for p in conflicts[:5])
        raise ForeignFolderError(
            f"{folder}: saving the chunk set would overwrite {len(conflicts)} file(s) it did "
            f"not write ({shown}); move them away or pick another folder"
        )
    everything = {**ours, **manifest["files"]}
    write_json_atomic(
        folder / INFO_FILE,
        {"format_version": FORMAT_VERSION, "incomplete": True, "files": everything},
        indent=2,
    )
    for name in ours:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    for name in sorted(ours, key=lambda n: -n.count("/")):  # deepest first
        for parent in Path(name).parents[:-1]:
            with contextlib.suppress(OSError):  # not empty: it holds other files
                (folder / parent).rmdir()
    for entry in sorted(staging.iterdir()):
        os.replace(entry, folder / entry.name)
    from . import __version__

    write_json_atomic(
        folder / INFO_FILE,
        {
            "format_version": FORMAT_VERSION,
            "created_by": f"modeling_mscl {__version__}",
            "fingerprint": manifest["fingerprint"],
            "files": manifest["files"],
        },
        indent=2,
    )
    staging.rmdir()


def save_chunk_set(
    data: Dataset | DatasetDict,
    folder: str | os.PathLike,
    feature_extractor: MSCLFeatureExtractor,
    num_shards: int | dict[str, int] | None = None,
) -> None:
    """Write ``data`` (chunk rows) as the chunk set in ``folder``, with the feature
    extractor that computed its log-mels and the manifest of its files.

    ``folder`` must be new, empty, or a chunk-set folder of the package
    (:func:`claim_chunk_folder`). The set is written into a temporary folder inside it,
    hashed (:mod:`~modeling_mscl.chunk_manifest`), and renamed into place: a previous
    chunk set there is replaced (its listed files only); other files (``shards/``,
    ``report.json``, anything a user put there) are kept, and a new file that would
    overwrite one of them is refused. ``chunk_set.json`` is written last, so an
    interrupted save leaves a folder that readers refuse. ``num_shards`` goes to
    ``save_to_disk`` (a dict of split name -> shards for a DatasetDict).
    """
    folder = Path(folder).expanduser()
    splits = dict(data) if isinstance(data, DatasetDict) else {"": data}
    for name, ds in splits.items():
        where = f"chunk split {name!r}" if name else "the chunk dataset"
        _, bins, _ = _spectrogram_shape(ds.features, SPECTROGRAM_COLUMNS, where)
        _check_front_end(feature_extractor, bins, where)
    if isinstance(data, DatasetDict) and isinstance(num_shards, int):
        raise TypeError("num_shards of a DatasetDict is a dict: split name -> shards")
    claim_chunk_folder(folder)
    staging = folder / _STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a killed save's, in a folder of ours
    staging.mkdir()
    try:
        # datasets writes no data file for an empty dataset, and then cannot load it back.
        if isinstance(data, DatasetDict):
            shards = {**(num_shards or {}), **{n: 1 for n, ds in data.items() if len(ds) == 0}}
            data.save_to_disk(str(staging), num_shards=shards or None)
        else:
            data.save_to_disk(str(staging), num_shards=1 if len(data) == 0 else num_shards)
        feature_extractor.save_pretrained(str(staging))
        saved_dataset_files(staging)  # the paths datasets wrote are inside
        # Every file the save wrote (save_pretrained adds the front end's code file).
        names = [p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()]
        manifest = build_manifest(staging, names)
        _install(folder, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_manifest(folder: str | os.PathLike) -> str:
    """Record the files, checksums and fingerprint of a chunk set made before chunk sets
    had them, and mark its folder as the package's; returns the fingerprint.

    Whoever runs it vouches that the files are as they were built: the checksums are
    those of the files now.
    """
    folder = Path(folder).expanduser()
    info_path = folder / INFO_FILE
    _read_front_end(folder, need_manifest=False)
    info = json.loads(info_path.read_text())
    if "files" in info and not info.get("incomplete"):
        raise ValueError(f"{info_path} already lists its files; `mscl verify {folder}` checks them")
    names = [*saved_dataset_files(folder), FEATURE_EXTRACTOR_FILE]
    names += [n for n in _FRONT_END_CODE if (folder / n).is_file()]
    manifest = build_manifest(folder, names)
    from . import __version__

    claim_folder(folder, CHUNK_SET_KIND, adopt=True)
    write_json_atomic(
        info_path,
        {
            "format_version": FORMAT_VERSION,
            "created_by": f"modeling_mscl {__version__} (--add-manifest)",
            "fingerprint": manifest["fingerprint"],
            "files": manifest["files"],
        },
        indent=2,
    )
    return manifest["fingerprint"]


# ---------------------------------------------------------------------------- reading


def _read_info(folder: Path) -> dict[str, Any]:
    """``chunk_set.json`` of ``folder``, its format version checked."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such chunk set folder")
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        what = describe_non_chunk_set(folder, INFO_FILE, CHUNK_COLUMNS)
        if what:  # one split of a chunk set, rows of another kind, or no dataset at all
            raise ValueError(what)
        if any((folder / f).is_file() for f in ("dataset_dict.json", "state.json")):
            raise ValueError(
                f"{folder} is a chunk set of format version 1 (before chunk sets recorded "
                f"their version and feature extractor; no {INFO_FILE}) or an unfinished "
                f"save; this version of modeling_mscl reads format version {FORMAT_VERSION}: "
                f"{_REMAKE}"
            )
        raise ValueError(f"{folder} is not a chunk set (no {INFO_FILE})")
    try:
        info = json.loads(info_path.read_text())
        version = info["format_version"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{info_path}: unreadable ({type(err).__name__}: {err})") from err
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ValueError(
            f"{folder} is a chunk set of format version {version}; this version of "
            f"modeling_mscl reads format version {FORMAT_VERSION}: "
            + ("upgrade modeling_mscl" if newer else _REMAKE)
        )
    if info.get("incomplete"):
        raise ValueError(f"{folder} holds an unfinished save (killed while writing): {_REMAKE}")
    return info


def _read_front_end(folder: Path, need_manifest: bool = True) -> MSCLFeatureExtractor:
    """Check ``folder``'s format version (and that it lists its files) and load its
    feature extractor."""
    info = _read_info(folder)
    if need_manifest and "files" not in info:
        raise ValueError(
            f"{folder} is a chunk set without checksums and fingerprint (made by an "
            "earlier version of modeling_mscl); runs record the fingerprint of the data "
            f"they train on. `{_ADD_MANIFEST.format(folder=folder)}` records them once "
            "(it reads every file), or re-make it"
        )
    if not (folder / FEATURE_EXTRACTOR_FILE).is_file():
        raise ValueError(
            f"{folder}: no {FEATURE_EXTRACTOR_FILE} (the feature extractor that made the "
            f"chunks): {_REMAKE}"
        )
    try:
        return MSCLFeatureExtractor.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{folder / FEATURE_EXTRACTOR_FILE}: {err}") from err


def verify_chunk_set(folder: str | os.PathLike, full: bool = True) -> list[str]:
    """What is wrong with the chunk set in ``folder``, one line per problem naming the
    file (empty: every file is as built).

    Checks the format, that every file its manifest lists is there with its recorded size
    and that no file outside the list is read; with ``full``, every file's SHA-256 too.
    """
    folder = Path(folder).expanduser()
    info = _read_info(folder)
    if "files" not in info:
        _read_front_end(folder)  # raises the advice for a set without a manifest
    files = read_file_list(folder, info, folder / INFO_FILE)
    problems = check_files(folder, files, full=full)
    if not problems and info.get("fingerprint") != content_fingerprint(files):
        problems.append(f"{folder / INFO_FILE}: the fingerprint does not match the file list")
    return problems


class ChunkSet:
    """An opened chunk set: its rows (memory-mapped) and the front end that made them.

    Attributes:
        path: the folder.
        data: the ``Dataset``, or the ``DatasetDict`` of splits.
        feature_extractor: the :class:`~modeling_mscl.MSCLFeatureExtractor` of its
            ``preprocessor_config.json``.
        fingerprint: the content fingerprint of its manifest
            (:mod:`~modeling_mscl.chunk_manifest`).
    """

    def __init__(
        self,
        path: Path,
        data: Dataset | DatasetDict,
        feature_extractor: MSCLFeatureExtractor,
        fingerprint: str | None = None,
    ) -> None:
        self.path = path
        self.data = data
        self.feature_extractor = feature_extractor
        self.fingerprint = fingerprint

    @property
    def splits(self) -> list[str]:
        """The split names of a DatasetDict chunk set; empty for a single Dataset."""
        return sorted(self.data) if isinstance(self.data, DatasetDict) else []

    def dataset(self, split: str | None = None) -> Dataset:
        """The rows of ``split`` (required for a DatasetDict, ignored otherwise)."""
        if not isinstance(self.data, DatasetDict):
            return self.data
        if split not in self.data:
            raise ValueError(f"{self.path} holds splits {self.splits}; pick one (got {split!r})")
        return self.data[split]

    def store(self, split: str | None = None, **kwargs: Any) -> ChunkStore:
        """A :class:`ChunkStore` over ``split`` (see :meth:`dataset`) with this front end
        (its ``fingerprint`` is the chunk set's)."""
        kwargs.setdefault("name", f"{self.path}" + (f" (split {split!r})" if self.splits else ""))
        store = ChunkStore(self.dataset(split), self.feature_extractor, **kwargs)
        store.fingerprint = self.fingerprint
        return store

    def __repr__(self) -> str:
        return f"ChunkSet({str(self.path)!r}, splits={self.splits or None})"


def load_chunk_set(path: str | os.PathLike, verify: str = "sizes") -> ChunkSet:
    """Open the chunk set in ``path``: format version checked, feature extractor loaded,
    every split's spectrogram columns checked against it.

    ``verify``: ``"sizes"`` (the default, cheap) checks every file of the manifest is
    there with its recorded size and nothing else is read; ``"full"`` checks every
    checksum too (reads every byte); :class:`~modeling_mscl.chunk_manifest.ChunkSetDamagedError`
    names the bad files. Every path the saved files name is checked to stay in ``path``.
    """
    if verify not in ("sizes", "full"):
        raise ValueError(f"verify must be 'sizes' or 'full', got {verify!r}")
    folder = Path(path).expanduser()
    fe = _read_front_end(folder)
    problems = verify_chunk_set(folder, full=verify == "full")
    if problems:
        raise ChunkSetDamagedError(
            f"the chunk set {folder} is damaged: "
            + "; ".join(problems)
            + f" (`mscl verify {folder}` checks every file)"
        )
    info = json.loads((folder / INFO_FILE).read_text())
    data = load_from_disk_checked(folder)  # a damaged Arrow file is named
    splits = dict(data) if isinstance(data, DatasetDict) else {"": data}
    for name, ds in splits.items():
        where = f"{folder}" + (f" (split {name!r})" if name else "")
        _, bins, _ = _spectrogram_shape(ds.features, SPECTROGRAM_COLUMNS, where)
        _check_front_end(fe, bins, where)
    return ChunkSet(folder, data, fe, info.get("fingerprint"))


# ------------------------------------------------------------------------------ crops


def _crop_windows(table: pa.Table, name: str, frames: int, bins: int) -> list[np.ndarray]:
    """Per record batch of column ``name``: a read-only `(rows, windows, CROP_FRAMES, bins)`
    view of every crop, over the Arrow values in place (no copy)."""
    views = []
    for chunk in table.column(name).chunks:
        outer = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        rows = len(outer)
        if rows == 0:
            continue
        if outer.null_count:
            raise ValueError(f"column '{name}' has {outer.null_count} null rows")
        # An Array2D row is a list of `frames` lists; datasets enforces the inner lengths
        # when it writes. The row lengths and the total are checked here, which pins every
        # row to its `frames * bins` values.
        if not (np.diff(np.asarray(outer.offsets)) == frames).all():
            raise ValueError(f"column '{name}' does not hold arrays of {frames} frames")
        values = outer.flatten().flatten()  # flatten() honours slicing, unlike .values
        if len(values) != rows * frames * bins or values.null_count:
            raise ValueError(f"column '{name}' does not hold arrays of shape ({frames}, {bins})")
        spectra = values.to_numpy(zero_copy_only=True).reshape(rows, frames, bins)
        windows = np.lib.stride_tricks.sliding_window_view(spectra, CROP_FRAMES, axis=1)
        views.append(windows.transpose(0, 1, 3, 2))  # (rows, windows, CROP_FRAMES, bins)
    return views


class ChunkStore:
    """Random crops of the spectrogram columns of a chunk dataset, read in place.

    Each record batch of a spectrogram column is a zero-copy numpy view of its Arrow values
    (memory-mapped for a chunk set from :func:`load_chunk_set`), seen as the array of its
    overlapping crops; a batch of crops is one numpy gather (one copy per crop when the
    dataset has several record batches).
    Only the crops' own bytes are read. The rows come from ``dataset.with_format("arrow")``,
    so a ``select``-ed or shuffled dataset reads its own rows (gathered into memory by
    ``datasets``; :meth:`subset` picks rows without copying).

    The store pickles as its dataset (``datasets`` pickles memory-mapped tables as their
    file paths) and its front end's configuration, so DataLoader workers reopen the files.

    Args:
        dataset: a chunk ``datasets.Dataset``.
        feature_extractor: the front end that made its log-mels (a chunk set's, see
            :meth:`ChunkSet.store`); by default the default front end with the columns'
            number of mel bins.
        columns: the spectrogram columns to read (all must share dtype and shape).
        rows: optional subset of the dataset's rows (e.g. a held-out split); the store's
            row i is dataset row ``rows[i]``.
        name: how errors name the rows (the chunk set folder and split).
    """

    def __init__(
        self,
        dataset: Dataset,
        feature_extractor: MSCLFeatureExtractor | None = None,
        columns: Sequence[str] = SPECTROGRAM_COLUMNS,
        rows: np.ndarray | None = None,
        name: str = "the chunk dataset",
    ) -> None:
        self.dataset = dataset
        self.name = name
        self.columns = tuple(columns)
        frames, bins, dtype = _spectrogram_shape(
            dataset.features, self.columns, "the chunk dataset"
        )
        self.chunk_frames, self.num_bins, self.dtype = frames, bins, dtype
        fe = feature_extractor or load_feature_extractor(num_mel_bins=bins)
        _check_front_end(fe, bins, "the chunk dataset")
        self.feature_extractor = fe
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if (
            self.rows is not None
            and len(self.rows)
            and not (0 <= self.rows.min() and self.rows.max() < len(dataset))
        ):
            raise IndexError(f"rows must lie in [0, {len(dataset)})")
        self._opened: dict[str, Any] | None = None
        self._present: np.ndarray | None = None
        # The content fingerprint of the chunk set it reads (set by ChunkSet.store).
        self.fingerprint: str | None = None
        self.value_range = log_mel_range(fe)
        # Per spectrogram column, per store row: 0 not checked yet, 1 good, 2 bad.
        self._verdicts: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_opened"] = None  # views of this process's memory maps
        state["_verdicts"] = {}  # each process checks the chunks it reads
        # Its configuration, not its derived arrays (the mel matrix alone is 260 kB).
        state["feature_extractor"] = self.feature_extractor.to_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.feature_extractor = MSCLFeatureExtractor.from_dict(state["feature_extractor"])

    def subset(self, rows: np.ndarray) -> ChunkStore:
        """A store over some of this store's rows (indices into this store)."""
        base = np.arange(len(self)) if self.rows is None else self.rows
        picked = base[np.asarray(rows, dtype=np.int64)]
        store = ChunkStore(self.dataset, self.feature_extractor, self.columns, picked, self.name)
        store.fingerprint = self.fingerprint
        return store

    def _open(self) -> dict[str, Any]:
        """The dataset's rows as Arrow (in place when it has no indices mapping) and the
        crop views of every column."""
        if self._opened is None:
            wanted = [*self.columns, "present", "track_id"]
            table = self.dataset.with_format("arrow", columns=wanted)[:]
            views = {
                c: _crop_windows(table, c, self.chunk_frames, self.num_bins) for c in self.columns
            }
            sizes = [len(v) for v in views[self.columns[0]]]
            if any([len(v) for v in views[c]] != sizes for c in views):
                raise ValueError("the spectrogram columns are split into different record batches")
            self._opened = {
                "table": table,  # owns the buffers the views read
                "views": views,
                "starts": np.cumsum([0, *sizes]),
            }
        return self._opened

    def _rows(self, rows: np.ndarray | None = None) -> np.ndarray | slice:
        """Dataset rows of store ``rows`` (all rows when None)."""
        if rows is None:
            return slice(None) if self.rows is None else self.rows
        return rows if self.rows is None else self.rows[rows]

    @property
    def present(self) -> np.ndarray:
        """(rows, 4) bool presence flags in :data:`~modeling_mscl.stems.SOURCES` order."""
        if self._present is None:
            chunks = self._open()["table"].column("present").chunks
            flat = [np.asarray(c.flatten(), dtype=bool) for c in chunks]
            flags = np.concatenate(flat or [np.zeros(0, bool)]).reshape(-1, len(SOURCES))
            self._present = flags[self._rows()]
        return self._present

    def track_ids(self) -> np.ndarray:
        """The ``track_id`` of every row (object array of str)."""
        ids = self._open()["table"].column("track_id").to_pylist()
        return np.asarray(ids, dtype=object)[self._rows()]

    def crops(self, column: str, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Crops ``column[rows[i], offsets[i] : offsets[i] + 98]``: a new `(n, 98, bins)` array.

        Args:
            column: a spectrogram column of the store.
            rows: `(n,)` store rows.
            offsets: `(n,)` first frame of each crop, in ``[0, chunk_frames - 98]``.
        """
        opened = self._open()
        views, starts = opened["views"][column], opened["starts"]
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.size and (offsets.min() < 0 or offsets.max() > self.chunk_frames - CROP_FRAMES):
            raise IndexError(f"crop offsets must lie in [0, {self.chunk_frames - CROP_FRAMES}]")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)})")
        rows = self._rows(rows)
        if len(views) == 1:
            return views[0][rows, offsets]
        # Several record batches: one copy per crop, which costs less than grouping the
        # rows by batch once a minibatch touches more than a few batches.
        batch = np.searchsorted(starts, rows, side="right") - 1
        local = rows - starts[batch]
        out = np.empty((len(rows), CROP_FRAMES, self.num_bins), dtype=self.dtype)
        picks = zip(batch.tolist(), local.tolist(), offsets.tolist(), strict=True)
        for i, (b, r, o) in enumerate(picks):
            out[i] = views[b][r, o]
        return out

    def describe_row(self, row: int) -> str:
        """How errors name store row ``row``: the chunk set, split, ``track_id`` and chunk."""
        index = int(self._rows(np.asarray([row]))[0])
        try:
            item = self.dataset.select_columns(["track_id", "chunk_index"])[index]
            which = f"track_id {item['track_id']!r}, chunk {item['chunk_index']}"
        except Exception as err:  # noqa: BLE001 - the row itself may be unreadable
            which = f"row {index} (unreadable: {type(err).__name__})"
        return f"{self.name}: {which}"

    def checked_crops(self, column: str, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """:meth:`crops`, refused (:class:`~modeling_mscl.data_checks.BadChunkError`,
        naming the split, ``track_id`` and chunk) when a crop's chunk holds values that the
        store's front end cannot produce: NaN, infinities or values beyond its log range.

        Each chunk is checked whole the first time a batch uses it and its verdict kept,
        so a run pays for the check once per chunk (per loader process), not per batch.
        """
        out = self.crops(column, rows, offsets)
        rows = np.asarray(rows, dtype=np.int64)
        verdicts = self._verdicts.setdefault(column, np.zeros(len(self), dtype=np.int8))
        seen = verdicts[rows]
        if (seen == 1).all():  # the common case once the chunks have been read
            return out
        new = np.unique(rows[seen == 0])
        if len(new):
            # Crops at these offsets cover every frame of a chunk.
            last = self.chunk_frames - CROP_FRAMES
            starts = sorted({*range(0, last + 1, CROP_FRAMES), last})
            good = np.ones(len(new), dtype=bool)
            for start in starts:
                crops = self.crops(column, new, np.full(len(new), start))
                good &= rows_in_range(crops, self.value_range)
            verdicts[new] = np.where(good, 1, 2)
        ok = verdicts[rows] == 1
        check_crops(out, self.value_range, lambda i: self.describe_row(int(rows[i])), column, ok)
        return out
