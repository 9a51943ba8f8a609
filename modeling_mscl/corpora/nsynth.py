"""NSynth: 305,979 four-second notes at 16 kHz; the downstream task uses its 11 families.

Official layout (the json/wav archives from magenta.tensorflow.org/datasets/nsynth)::

    root/nsynth-train/examples.json    {note_str: {instrument_family, instrument_family_str,
    root/nsynth-train/audio/<note_str>.wav    pitch, velocity, instrument_source, ...}}
    root/nsynth-valid/...   root/nsynth-test/...

The splits are the official ones (the test split has 4,096 notes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datasets import ClassLabel, DatasetDict, Features, Value

from ._common import (
    LABEL_COLUMN,
    build_dataset_dict,
    file_sizes,
    log_skipped,
    presence_reason,
)

__all__ = ["NSYNTH_FAMILIES", "NSYNTH_SOURCES", "NSYNTH_SPLITS", "load_nsynth"]

# Index order of NSynth's instrument_family / instrument_source fields.
NSYNTH_FAMILIES = (
    "bass",
    "brass",
    "flute",
    "guitar",
    "keyboard",
    "mallet",
    "organ",
    "reed",
    "string",
    "synth_lead",
    "vocal",
)
NSYNTH_SOURCES = ("acoustic", "electronic", "synthetic")
NSYNTH_SPLITS = {"train": "nsynth-train", "validation": "nsynth-valid", "test": "nsynth-test"}
_LAYOUT = "ROOT/nsynth-{train,valid,test}/examples.json and ROOT/nsynth-*/audio/<note_str>.wav"


def _coded(note: str, meta: dict, field: str, names: tuple[str, ...], path: Path) -> int:
    """The integer code of ``field``, checked against its ``*_str`` twin when present."""
    if field not in meta:
        raise ValueError(f"{path}: note {note!r} has no '{field}' field")
    code = int(meta[field])
    if not 0 <= code < len(names):
        raise ValueError(f"{path}: note {note!r} has {field}={code}, outside [0, {len(names)})")
    name = meta.get(f"{field}_str")
    if name is not None and name != names[code]:
        raise ValueError(
            f"{path}: note {note!r} has {field}={code} ({names[code]!r}) but {field}_str={name!r}"
        )
    return code


def load_nsynth(
    root: str | os.PathLike, return_skipped: bool = False
) -> DatasetDict | tuple[DatasetDict, list[dict]]:
    """Read NSynth into ``train``/``validation``/``test`` track rows (one row per note).

    Splits whose folder is absent are left out (many users only fetch ``nsynth-test``),
    but at least one must be there. Notes whose wav is missing or empty are skipped.

    Args:
        root: folder holding ``nsynth-train``, ``nsynth-valid``, ``nsynth-test``.
        return_skipped: also return the skipped notes: dicts with ``split``,
            ``track_id``, ``path``, ``reason``.

    Returns:
        A ``DatasetDict`` with columns ``track_id`` (the note_str), ``audio``,
        ``label`` (``ClassLabel`` of :data:`NSYNTH_FAMILIES`), ``pitch`` and
        ``velocity`` (MIDI, int), ``instrument_source`` (``ClassLabel`` of
        :data:`NSYNTH_SOURCES`) and ``instrument`` (the instrument_str, e.g.
        ``"bass_synthetic_033"``).
    """
    root = Path(root).expanduser().resolve()
    found = {
        s: root / d for s, d in NSYNTH_SPLITS.items() if (root / d / "examples.json").is_file()
    }
    if not found:
        raise FileNotFoundError(
            f"no nsynth-*/examples.json found in {root}; expected the NSynth layout: {_LAYOUT}"
        )
    rows_by_split: dict[str, list[dict]] = {}
    skipped: list[dict] = []
    for split, folder in found.items():
        json_path = folder / "examples.json"
        with open(json_path, encoding="utf-8") as f:
            examples = json.load(f)
        if not isinstance(examples, dict):
            raise ValueError(f"{json_path}: expected a JSON object keyed by note_str")
        sizes = file_sizes(folder / "audio")
        rows = []
        for note in sorted(examples):
            meta = examples[note]
            path = str(folder / "audio" / f"{note}.wav")
            reason = presence_reason(f"{note}.wav", sizes)
            if reason is not None:
                skipped.append({"split": split, "track_id": note, "path": path, "reason": reason})
                continue
            rows.append(
                {
                    "track_id": note,
                    "audio": path,
                    LABEL_COLUMN: _coded(
                        note, meta, "instrument_family", NSYNTH_FAMILIES, json_path
                    ),
                    "pitch": int(meta["pitch"]),
                    "velocity": int(meta["velocity"]),
                    "instrument_source": _coded(
                        note, meta, "instrument_source", NSYNTH_SOURCES, json_path
                    ),
                    "instrument": str(meta.get("instrument_str", "")),
                }
            )
        if examples and not rows:
            raise FileNotFoundError(
                f"none of the {len(examples)} wav files of {json_path} were found in "
                f"{folder / 'audio'}; expected the NSynth layout: {_LAYOUT}"
            )
        rows_by_split[split] = rows
    log_skipped("NSynth", skipped)
    features = Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            LABEL_COLUMN: ClassLabel(names=list(NSYNTH_FAMILIES)),
            "pitch": Value("int32"),
            "velocity": Value("int32"),
            "instrument_source": ClassLabel(names=list(NSYNTH_SOURCES)),
            "instrument": Value("string"),
        }
    )
    out = build_dataset_dict(rows_by_split, features, "NSynth")
    return (out, skipped) if return_skipped else out
