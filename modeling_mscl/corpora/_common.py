"""Pieces shared by the corpus loaders: the track-row schema, label helpers, file checks.

Every loader returns a :class:`datasets.DatasetDict` of *track rows*:

* ``track_id`` (``string``): unique within the whole ``DatasetDict``;
* ``audio`` (``string``): absolute path of the mixture file. Deliberately not
  ``datasets.Audio``, which needs torchcodec and FFmpeg; audio is decoded later with
  soundfile through :func:`modeling_mscl.audio_io.load_audio`;
* single-label sets: ``label`` as ``ClassLabel(names=...)``;
* multi-label sets: ``tags`` as ``Sequence(ClassLabel(names=...))`` holding the indices
  of the active tags (the ``datasets`` idiom: names travel with the features). Use
  :func:`label_names` for the names and :func:`multi_hot` for the (n, C) matrix;
* multitrack sets: ``vocals``, ``drums``, ``bass``, ``other`` (``string``) stem paths.

Split names follow the Hugging Face convention: ``train``, ``validation``, ``test``.
Loading only reads metadata and lists folders; nothing is decoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features

logger = logging.getLogger("modeling_mscl.corpora")

LABEL_COLUMN = "label"
TAGS_COLUMN = "tags"
STEM_COLUMNS = ("vocals", "drums", "bass", "other")
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")

# Reasons written in skip reports; shared wording so reports from different loaders
# (and from check_audio) can be grouped.
REASON_MISSING = "audio file not found"
REASON_EMPTY = "audio file is empty (0 bytes)"


def label_names(dataset: Dataset | DatasetDict | Features, column: str | None = None) -> list[str]:
    """Class or tag names of ``column`` (default: ``label``, else ``tags``).

    Works for ``ClassLabel`` and ``Sequence(ClassLabel)`` columns.
    """
    features = _features_of(dataset)
    if column is None:
        column = next((c for c in (LABEL_COLUMN, TAGS_COLUMN) if c in features), None)
        if column is None:
            raise KeyError(f"no '{LABEL_COLUMN}' or '{TAGS_COLUMN}' column in {list(features)}")
    feature = features[column]
    inner = getattr(feature, "feature", feature)  # Sequence/List wraps the ClassLabel
    if not isinstance(inner, ClassLabel):
        raise TypeError(f"column '{column}' is {feature}, not a ClassLabel or a list of them")
    return list(inner.names)


def is_multi_label(dataset: Dataset | DatasetDict | Features) -> bool:
    """True when the rows carry a ``tags`` column (several labels per track)."""
    return TAGS_COLUMN in _features_of(dataset)


def multi_hot(
    indices: Iterable[Sequence[int]], num_classes: int, dtype: Any = np.float32
) -> np.ndarray:
    """Turn per-row lists of active class indices into an (n, num_classes) 0/1 matrix."""
    rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in indices]
    out = np.zeros((len(rows), num_classes), dtype=dtype)
    for i, row in enumerate(rows):
        if row.size and (row.min() < 0 or row.max() >= num_classes):
            raise ValueError(f"row {i} has a class index outside [0, {num_classes}): {row}")
        out[i, row] = 1
    return out


def _features_of(obj: Dataset | DatasetDict | Features) -> Features:
    if isinstance(obj, Features):
        return obj
    if isinstance(obj, DatasetDict):
        return next(iter(obj.values())).features
    return obj.features


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` describing the expected layout."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.name} not found in {path.parent}; expected the {dataset} layout: {layout}"
        )
    return path


def require_dir(path: Path, dataset: str, layout: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` describing the expected layout."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"folder {path.name}/ not found in {path.parent}; expected the {dataset} layout: {layout}"
        )
    return path


def file_sizes(folder: Path) -> dict[str, int]:
    """Sizes of the regular files directly in ``folder`` by name (empty if it is missing).

    One directory scan instead of a ``stat`` per expected file keeps loading fast on
    network file systems.
    """
    try:
        with os.scandir(folder) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file()}
    except FileNotFoundError:
        return {}


def presence_reason(name: str, sizes: dict[str, int]) -> str | None:
    """Why the file ``name`` (listed in ``sizes`` from :func:`file_sizes`) is unusable, or None."""
    size = sizes.get(name)
    if size is None:
        return REASON_MISSING
    if size == 0:
        return REASON_EMPTY
    return None


def log_skipped(dataset: str, skipped: list[dict]) -> None:
    """Log a one-line summary of skipped files (the full list is returned on request)."""
    if skipped:
        reasons: dict[str, int] = {}
        for item in skipped:
            reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
        summary = ", ".join(f"{n} x {r}" for r, n in sorted(reasons.items()))
        logger.warning("%s: skipped %d file(s): %s", dataset, len(skipped), summary)


def build_dataset_dict(
    rows_by_split: dict[str, list[dict]], features: Features, dataset: str
) -> DatasetDict:
    """Assemble track rows into a ``DatasetDict``; checks ``track_id`` uniqueness."""
    seen: dict[str, str] = {}
    for split, rows in rows_by_split.items():
        for row in rows:
            if row["track_id"] in seen:
                raise ValueError(
                    f"{dataset}: track_id {row['track_id']!r} occurs more than once "
                    f"(splits {seen[row['track_id']]!r} and {split!r})"
                )
            seen[row["track_id"]] = split
    out = DatasetDict()
    for split, rows in rows_by_split.items():
        columns = {name: [row[name] for row in rows] for name in features}
        out[split] = Dataset.from_dict(columns, features=features)
    return out


def _check_file(path: str, sr_needed: bool) -> tuple[np.ndarray | None, float | None, str | None]:
    from ..audio_io import AudioDecodeError, load_audio

    try:
        wav = load_audio(path, sampling_rate=None, mono=True)
    except AudioDecodeError as err:
        return None, None, str(err)
    sr = None
    if sr_needed:
        import soundfile as sf

        sr = float(sf.info(path).samplerate)
    return wav, sr, None


def _audio_reasons(
    batch: dict[str, list],
    columns: Sequence[str],
    min_seconds: float | None,
    silence_threshold: float | None,
) -> dict[str, list]:
    reasons = []
    for i in range(len(batch["audio"])):
        reason = ""
        for column in columns:
            path = batch[column][i]
            is_mix = column == "audio"
            wav, sr, error = _check_file(path, sr_needed=is_mix and min_seconds is not None)
            if error is not None:
                reason = error if is_mix else f"{column} stem: {error}"
                break
            if not is_mix:
                continue  # a silent stem is legitimate (an instrumental has no vocals)
            if min_seconds is not None and len(wav) / sr < min_seconds:
                reason = f"{path}: shorter than {min_seconds} s ({len(wav) / sr:.2f} s)"
                break
            peak = float(np.abs(wav).max())
            if silence_threshold is not None and peak <= silence_threshold:
                reason = f"{path}: silent (peak amplitude {peak:.2e} <= {silence_threshold:g})"
                break
        reasons.append(reason)
    return {"_reason": reasons}


def check_audio(
    dataset: Dataset | DatasetDict,
    num_proc: int | None = None,
    min_seconds: float | None = None,
    silence_threshold: float | None = 1e-4,
) -> tuple[Dataset | DatasetDict, list[dict]]:
    """Decode every file of ``dataset`` and drop the rows that cannot be used.

    A row is dropped when its mixture or any stem column fails to decode, when the
    mixture is shorter than ``min_seconds`` (e.g. 29.1 for the MagnaTagATune clean
    split) or when its peak absolute amplitude is at most ``silence_threshold``
    (1e-4 is -80 dBFS; ``None`` disables the check). Stems may be silent.

    Returns the filtered dataset (same type as given) and a report: one dict per
    dropped row with ``track_id``, ``path``, ``reason`` (and ``split`` for a
    ``DatasetDict``). Optional: the map step skips bad files on its own too.
    """
    if isinstance(dataset, DatasetDict):
        kept, report = DatasetDict(), []
        for split, part in dataset.items():
            kept[split], part_report = check_audio(
                part,
                num_proc=num_proc,
                min_seconds=min_seconds,
                silence_threshold=silence_threshold,
            )
            report += [{"split": split, **item} for item in part_report]
        return kept, report
    if len(dataset) == 0:
        return dataset, []
    columns = ["audio"] + [c for c in STEM_COLUMNS if c in dataset.column_names]
    reasons = dataset.map(
        _audio_reasons,
        batched=True,
        batch_size=16,
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > 1 else None,
        remove_columns=dataset.column_names,
        fn_kwargs=dict(
            columns=columns, min_seconds=min_seconds, silence_threshold=silence_threshold
        ),
        load_from_cache_file=False,  # the files may have changed since the last check
        desc="Checking audio",
    )["_reason"]
    report = [
        {"track_id": dataset[i]["track_id"], "path": dataset[i]["audio"], "reason": reason}
        for i, reason in enumerate(reasons)
        if reason
    ]
    keep = [i for i, reason in enumerate(reasons) if not reason]
    if report:
        logger.warning("check_audio: dropped %d of %d tracks", len(report), len(dataset))
    return (dataset.select(keep) if report else dataset), report
