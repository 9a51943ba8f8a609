"""The chunk set: MSCL's pre-training data on disk. Its format, writing and reading.

A chunk set is a folder holding

- the chunk rows, saved with ``datasets``' ``save_to_disk`` (one ``Dataset`` or a
  ``DatasetDict`` of splits) and memory-mapped when read;
- ``preprocessor_config.json``: the :class:`~modeling_mscl.MSCLFeatureExtractor` that
  computed the rows' log-mels. Readers take the front end from it (pre-training exports
  it with the encoder), never from defaults;
- ``chunk_set.json``: the format version, written last and checked on read. A folder
  without it is a chunk set of an older version or an unfinished save.

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

from ._files import write_json_atomic
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
    "chunk_features",
    "load_chunk_set",
    "save_chunk_set",
]

# Bump when the rows, their computation or the folder layout change: readers refuse other
# versions, and prepare_chunks' caches are keyed on it. 2: preprocessor_config.json and
# chunk_set.json beside the rows.
FORMAT_VERSION = 2
INFO_FILE = "chunk_set.json"
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


def _remove_previous(folder: Path) -> None:
    """Delete a previous chunk set in ``folder`` (not other files such as shards/)."""
    (folder / INFO_FILE).unlink(missing_ok=True)  # first: from here on, not a chunk set
    dict_json = folder / "dataset_dict.json"
    if dict_json.is_file():
        for split in json.loads(dict_json.read_text()).get("splits", []):
            if (folder / split / "state.json").is_file():
                shutil.rmtree(folder / split)
        dict_json.unlink()
    stale = [folder / "state.json", folder / "dataset_info.json", folder / FEATURE_EXTRACTOR_FILE]
    for path in [*stale, *folder.glob("data-*.arrow")]:
        if path.is_file():
            path.unlink()


def save_chunk_set(
    data: Dataset | DatasetDict,
    folder: str | os.PathLike,
    feature_extractor: MSCLFeatureExtractor,
    num_shards: int | dict[str, int] | None = None,
) -> None:
    """Write ``data`` (chunk rows) as the chunk set in ``folder``, with the feature
    extractor that computed its log-mels.

    A previous chunk set in ``folder`` is replaced; other files (``shards/``,
    ``report.json``) are kept. ``chunk_set.json`` is written last, so an interrupted save
    leaves a folder that readers refuse. ``num_shards`` goes to ``save_to_disk`` (a dict
    of split name -> shards for a DatasetDict).
    """
    folder = Path(folder).expanduser()
    splits = dict(data) if isinstance(data, DatasetDict) else {"": data}
    for name, ds in splits.items():
        where = f"chunk split {name!r}" if name else "the chunk dataset"
        _, bins, _ = _spectrogram_shape(ds.features, SPECTROGRAM_COLUMNS, where)
        _check_front_end(feature_extractor, bins, where)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_previous(folder)
    # datasets writes no data file for an empty dataset, and then cannot load it back.
    if isinstance(data, DatasetDict):
        if isinstance(num_shards, int):
            raise TypeError("num_shards of a DatasetDict is a dict: split name -> shards")
        shards = {**(num_shards or {}), **{n: 1 for n, ds in data.items() if len(ds) == 0}}
        data.save_to_disk(str(folder), num_shards=shards or None)
    else:
        data.save_to_disk(str(folder), num_shards=1 if len(data) == 0 else num_shards)
    feature_extractor.save_pretrained(str(folder))
    write_json_atomic(folder / INFO_FILE, {"format_version": FORMAT_VERSION}, indent=2)


# ---------------------------------------------------------------------------- reading


def _read_front_end(folder: Path) -> MSCLFeatureExtractor:
    """Check ``folder``'s format version and load its feature extractor."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such chunk set folder")
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        if any((folder / f).is_file() for f in ("dataset_dict.json", "state.json")):
            raise ValueError(
                f"{folder} is a chunk set of format version 1 (before chunk sets recorded "
                f"their version and feature extractor; no {INFO_FILE}) or an unfinished "
                f"save; this version of modeling_mscl reads format version {FORMAT_VERSION}: "
                f"{_REMAKE}"
            )
        raise ValueError(f"{folder} is not a chunk set (no {INFO_FILE})")
    try:
        version = json.loads(info_path.read_text())["format_version"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{info_path}: unreadable ({type(err).__name__}: {err})") from err
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ValueError(
            f"{folder} is a chunk set of format version {version}; this version of "
            f"modeling_mscl reads format version {FORMAT_VERSION}: "
            + ("upgrade modeling_mscl" if newer else _REMAKE)
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


class ChunkSet:
    """An opened chunk set: its rows (memory-mapped) and the front end that made them.

    Attributes:
        path: the folder.
        data: the ``Dataset``, or the ``DatasetDict`` of splits.
        feature_extractor: the :class:`~modeling_mscl.MSCLFeatureExtractor` of its
            ``preprocessor_config.json``.
    """

    def __init__(
        self, path: Path, data: Dataset | DatasetDict, feature_extractor: MSCLFeatureExtractor
    ) -> None:
        self.path = path
        self.data = data
        self.feature_extractor = feature_extractor

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
        """A :class:`ChunkStore` over ``split`` (see :meth:`dataset`) with this front end."""
        return ChunkStore(self.dataset(split), self.feature_extractor, **kwargs)

    def __repr__(self) -> str:
        return f"ChunkSet({str(self.path)!r}, splits={self.splits or None})"


def load_chunk_set(path: str | os.PathLike) -> ChunkSet:
    """Open the chunk set in ``path``: format version checked, feature extractor loaded,
    every split's spectrogram columns checked against it."""
    from datasets import load_from_disk

    folder = Path(path).expanduser()
    fe = _read_front_end(folder)
    data = load_from_disk(str(folder))
    splits = dict(data) if isinstance(data, DatasetDict) else {"": data}
    for name, ds in splits.items():
        where = f"{folder}" + (f" (split {name!r})" if name else "")
        _, bins, _ = _spectrogram_shape(ds.features, SPECTROGRAM_COLUMNS, where)
        _check_front_end(fe, bins, where)
    return ChunkSet(folder, data, fe)


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
    """

    def __init__(
        self,
        dataset: Dataset,
        feature_extractor: MSCLFeatureExtractor | None = None,
        columns: Sequence[str] = SPECTROGRAM_COLUMNS,
        rows: np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
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

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_opened"] = None  # views of this process's memory maps
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
        return ChunkStore(self.dataset, self.feature_extractor, self.columns, picked)

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
