"""Checks of data read from disk: Arrow files that cannot be read, log-mels that no front
end computed.

- :func:`load_from_disk_checked`: ``datasets.load_from_disk`` whose Arrow errors (a
  truncated file, a damaged header, offsets that point nowhere) name the file, found by
  opening and validating each of the folder's Arrow files. Validation covers the
  structure (offsets, string bytes), not the float values: those are checked per batch.
- :func:`log_mel_range`: the values a front end can produce, and :func:`check_crops`,
  which refuses a batch of crops outside it (NaN, infinities, bit flips in the exponent),
  naming the rows' ``track_id`` and chunk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BadChunkError",
    "DataFileError",
    "check_crops",
    "check_arrow_files",
    "load_from_disk_checked",
    "log_mel_range",
    "rows_in_range",
]

# float16 storage rounds a log-mel by up to 2**-8 of its magnitude (0.008 at the floor,
# -11.5); the front end's own float32 rounding is far below that.
_STORAGE_MARGIN = 0.05


class DataFileError(ValueError):
    """A data file cannot be read; the message names the file and the reader's error."""


class BadChunkError(ValueError):
    """A chunk holds values its front end cannot produce; the message names the chunk."""


# ------------------------------------------------------------------------- Arrow files

# What pyarrow raises on a damaged file: ArrowInvalid (a ValueError) and ArrowIOError
# (an OSError) among others, and SystemError from its string conversions.
_ARROW_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SystemError, IndexError)


def _arrow_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.arrow") if p.is_file())


def check_arrow_files(files: Iterable[str | os.PathLike]) -> None:
    """Open every Arrow stream file of ``files`` and validate its structure.

    Raises :class:`DataFileError` naming the first file that cannot be read or whose
    offsets, sizes or strings are inconsistent (what a truncated or damaged file gives).
    Reads the offsets and strings, memory-mapped; never the numeric values.
    """
    import pyarrow as pa

    for file in files:
        try:
            with pa.memory_map(os.fspath(file)) as source:
                table = pa.ipc.open_stream(source).read_all()
                table.validate(full=True)
        except _ARROW_ERRORS as err:
            raise DataFileError(
                f"{file}: unreadable Arrow file ({type(err).__name__}: {err}); the dataset "
                "is damaged or was cut short: write it again"
            ) from err


def load_from_disk_checked(path: str | os.PathLike, validate: bool = True) -> Any:
    """``datasets.load_from_disk(path)``, its Arrow files checked (:func:`check_arrow_files`).

    Any reading error names the file it comes from (:class:`DataFileError`), never only
    pyarrow's message. ``validate=False`` skips the structural check of loaded files.
    """
    import datasets

    folder = Path(path).expanduser()
    try:
        data = datasets.load_from_disk(str(folder))
    except _ARROW_ERRORS as err:
        if isinstance(err, FileNotFoundError):
            raise
        check_arrow_files(_arrow_files(folder))  # names the damaged file, if one is
        raise DataFileError(f"{folder}: cannot be loaded ({type(err).__name__}: {err})") from err
    if validate:
        parts = data.values() if isinstance(data, datasets.DatasetDict) else [data]
        check_arrow_files(f["filename"] for part in parts for f in part.cache_files)
    return data


# ----------------------------------------------------------------------------- log-mels


def log_mel_range(feature_extractor: Any) -> tuple[float, float]:
    """The interval of log-mel values ``feature_extractor`` can produce, widened by the
    rounding of float16 storage.

    Below: the log of its floor. Above: the log of its ceiling, or, for a front end that
    L2-normalises each clip, the most a unit-energy clip gives: no frame holds more than
    the clip's energy, so a band's magnitude is at most its filter's L2 norm times
    sqrt(fft_length) (Cauchy-Schwarz and Parseval, with a window of at most 1). 4.75 for
    the default front end, where real music stays below about 0.
    """
    fe = feature_extractor
    low, high = math.log(fe.log_floor), math.log(fe.log_ceiling)
    if fe.normalize_waveform:
        band_norm = float(np.sqrt((np.asarray(fe.mel_filters) ** 2).sum(axis=0)).max())
        if band_norm > 0:
            high = min(high, math.log(band_norm * math.sqrt(fe.fft_length)))
    return low - _STORAGE_MARGIN, high + _STORAGE_MARGIN


def _what_is_wrong(values: np.ndarray, low: float, high: float) -> str:
    values = values.astype(np.float32)
    if np.isnan(values).any():
        return f"{int(np.isnan(values).sum())} NaN values"
    if np.isinf(values).any():
        return f"{int(np.isinf(values).sum())} infinite values"
    return f"values from {float(values.min()):.4g} to {float(values.max()):.4g}"


def rows_in_range(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Bool per row of ``values`` (rows first): every value lies in ``value_range`` (NaN
    and infinities do not).

    float16 log-mels are compared as their bit patterns: a float16 of sign 0 grows with
    its bits, one of sign 1 shrinks, so ``low <= x <= high`` (``low < 0 < high``) is
    ``bits <= bits(high)`` or ``0x8000 <= bits <= bits(low)``, and NaN and infinities (all
    exponent bits set) fall outside. Integer comparisons vectorise where numpy's float16
    arithmetic does not (14x faster than ``min``/``max`` on a batch of crops).
    """
    low, high = value_range
    flat = values.reshape(len(values), -1)
    if flat.dtype == np.float16 and low < 0 < high:
        bits = flat.view(np.uint16)
        low_bits = np.float16(low).view(np.uint16)
        high_bits = np.float16(high).view(np.uint16)
        ok = (bits <= high_bits) | ((bits >= 0x8000) & (bits <= low_bits))
    else:
        ok = (flat >= low) & (flat <= high)  # NaN compares False
    return ok.all(axis=1)


def check_crops(
    crops: np.ndarray,
    value_range: tuple[float, float],
    describe_row: Any,
    column: str,
    ok: np.ndarray | None = None,
) -> None:
    """Raise :class:`BadChunkError` if a crop of ``crops`` (rows first) holds a value
    outside ``value_range`` (:func:`log_mel_range`), NaN or an infinity.

    ``ok`` may give the verdict per row (:func:`rows_in_range`, computed once per chunk by
    :meth:`~modeling_mscl.chunk_set.ChunkStore.checked_crops`). The first bad row is
    named by ``describe_row(i)`` (its split, ``track_id`` and chunk).
    """
    if crops.size == 0:
        return
    ok = rows_in_range(crops, value_range) if ok is None else np.asarray(ok, dtype=bool)
    if ok.all():
        return
    low, high = value_range
    bad = np.flatnonzero(~ok)
    first = int(bad[0])
    values = crops.reshape(len(crops), -1)[first]
    raise BadChunkError(
        f"{describe_row(first)}, column {column!r}: {_what_is_wrong(values, low, high)}, "
        f"where its front end's log-mels lie in [{low:.2f}, {high:.2f}] "
        f"({len(bad)} of the {len(crops)} rows of this batch are bad); the chunk set is "
        "damaged: make it again"
    )


# ----------------------------------------------------------------- what a folder holds


def describe_non_chunk_set(folder: Path, info_file: str, chunk_columns: Iterable[str]) -> str:
    """Why ``folder`` (which has no ``info_file``) is not a chunk set: one split of one,
    a datasets folder of other rows, an unfinished or old chunk set, or something else."""
    parent = folder.parent
    if (folder / "state.json").is_file() and (parent / info_file).is_file():
        return (
            f"{folder} is the split {folder.name!r} of the chunk set {parent}: pass the chunk "
            f"set itself (--data_dir {parent}; --train_split picks the split)"
        )
    columns = _saved_columns(folder)
    if columns is not None:
        missing = [c for c in chunk_columns if c not in columns]
        if missing:
            return (
                f"{folder} is a datasets folder whose rows are not chunks (columns {columns}; "
                f"a chunk set has {list(chunk_columns)}): make a chunk set from it with "
                "mscl separate"
            )
        return ""  # chunk rows without the info file: an old or unfinished chunk set
    entries = sorted(p.name for p in folder.iterdir())[:5] if folder.is_dir() else []
    return (
        f"{folder} is not a chunk set: it holds no {info_file} and no datasets files "
        "(nothing saved with save_to_disk) "
        f"({'e.g. ' + ', '.join(entries) if entries else 'it is empty'}); expected a folder "
        "made by mscl separate (or modeling_mscl.chunks.prepare_chunks)"
    )


def _saved_columns(folder: Path) -> list[str] | None:
    """The columns of a ``save_to_disk`` folder (the first split of a DatasetDict), read
    from its ``dataset_info.json``; None when it is not one."""
    import json

    info = folder / "dataset_info.json"
    dict_json = folder / "dataset_dict.json"
    if not info.is_file() and dict_json.is_file():
        try:
            splits = json.loads(dict_json.read_text()).get("splits") or []
        except ValueError:
            return []
        info = folder / str(splits[0]) / "dataset_info.json" if splits else info
    if not info.is_file():
        return None
    try:
        return list((json.loads(info.read_text()).get("features") or {}).keys())
    except ValueError:
        return []
