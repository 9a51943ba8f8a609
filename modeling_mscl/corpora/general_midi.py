"""General MIDI for the rendered corpora: the program table, the stem rules, the labels.

The program table (``data/gm_programs.csv``: name, NSynth family and NSynth source of each
program), the rules that sort a song's instruments into the four stems, the multi-hot
instrument labels of a song, and the SoundFont the renders use.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..package_data import resource_dir
from .nsynth import NSYNTH_FAMILIES

__all__ = [
    "BASS_PROGRAMS",
    "DATA_DIR",
    "INSTRUMENT_CLASSES",
    "STEMS",
    "VOICE_PROGRAMS",
    "GMProgram",
    "assign_stems",
    "default_soundfont",
    "gm_programs",
    "instrument_labels",
    "resolve_soundfont",
]

STEMS = ("vocals", "drums", "bass", "other")
# The multi-hot label space of the corpora: NSynth's 11 families (same order and index
# as the NSynth loader) plus one class for the drum kit, which NSynth lacks.
INSTRUMENT_CLASSES = (*NSYNTH_FAMILIES, "drums")
BASS_PROGRAMS = frozenset(range(32, 40))  # GM "Bass" group, 0-based programs 32-39
VOICE_PROGRAMS = frozenset({52, 53, 54, 85})  # Choir Aahs, Voice Oohs, Synth Voice, Lead 6 (voice)
_VOCAL_NAME = re.compile(r"vocal|voice|vox|melody|lead", re.IGNORECASE)
# The recipes ship with the package (modeling_mscl.package_data); MSCL_DATA_DIR overrides.
DATA_DIR = Path(os.environ.get("MSCL_DATA_DIR") or resource_dir("data"))


@dataclass(frozen=True)
class GMProgram:
    """One General MIDI program (0-based) with its NSynth family (``None``: no family)."""

    program: int
    name: str
    family: str | None
    source: str


@lru_cache(maxsize=4)
def gm_programs(path: str | os.PathLike | None = None) -> tuple[GMProgram, ...]:
    """The 128 GM programs from ``data/gm_programs.csv`` (or ``path``), indexed by program."""
    path = Path(path) if path is not None else DATA_DIR / "gm_programs.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the GM program table ships with the package "
            "(set MSCL_DATA_DIR to a folder holding it)"
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    table = tuple(
        GMProgram(int(r["program"]), r["name"], r["family"] or None, r["source"]) for r in rows
    )
    if [p.program for p in table] != list(range(128)):
        raise ValueError(f"{path}: expected programs 0..127 in order")
    unknown = {p.family for p in table} - {None, *NSYNTH_FAMILIES}
    if unknown:
        raise ValueError(f"{path}: families {sorted(unknown)} are not NSynth families")
    return table


def default_soundfont() -> Path:
    """``TimGM6mb.sf2``, the small GM SoundFont shipped inside the ``pretty_midi`` wheel."""
    try:
        import pretty_midi
    except ImportError as err:
        raise ImportError(
            "rendering MIDI needs pretty_midi: pip install 'modeling-mscl[corpus]'"
        ) from err
    return Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"


def resolve_soundfont(path: str | os.PathLike | None) -> Path:
    """Check a ``.sf2``/``.sf3`` path (``None``: :func:`default_soundfont`) and return it."""
    sf = default_soundfont() if path is None else Path(path).expanduser().resolve()
    if sf.suffix.lower() not in (".sf2", ".sf3"):
        raise ValueError(f"{sf}: a SoundFont must be a .sf2 or .sf3 file")
    if not sf.is_file():
        raise FileNotFoundError(f"SoundFont {sf} not found")
    return sf


def assign_stems(instruments: Iterable[Any]) -> dict[str, list[Any]]:
    """Sort ``pretty_midi.Instrument`` objects into the four stems.

    drums = drum channel (MIDI channel 10); bass = programs 32-39; vocals = voice
    programs (52-54, 85) or a track named vocal/voice/vox/melody/lead; other = the rest.
    The bass rule comes before the vocal-name rule so that a "Lead Bass" stays bass.
    """
    stems: dict[str, list[Any]] = {s: [] for s in STEMS}
    for inst in instruments:
        if inst.is_drum:
            stems["drums"].append(inst)
        elif inst.program in BASS_PROGRAMS:
            stems["bass"].append(inst)
        elif inst.program in VOICE_PROGRAMS or _VOCAL_NAME.search(inst.name or ""):
            stems["vocals"].append(inst)
        else:
            stems["other"].append(inst)
    return stems


def instrument_labels(instruments: Iterable[Any], until: float | None = None) -> list[int]:
    """Sorted indices into :data:`INSTRUMENT_CLASSES` of the instruments that play a note.

    Only notes starting before ``until`` seconds count (the rendered excerpt).
    """
    table = gm_programs()
    active = set()
    for inst in instruments:
        if not any(until is None or n.start < until for n in inst.notes):
            continue
        family = "drums" if inst.is_drum else table[inst.program].family
        if family is not None:
            active.add(INSTRUMENT_CLASSES.index(family))
    return sorted(active)
