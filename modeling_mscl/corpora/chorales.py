"""Bach chorales of ``music21``'s corpus as melody and harmony of the synthetic songs.

The list of usable chorales (four voices, 4/4 throughout: ``data/bach_chorales.csv``),
each chorale's voices as notes, and the chord sounding on each beat named for MMA.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

logger = logging.getLogger("modeling_mscl.corpora")

__all__ = [
    "Chorale",
    "available_chorales",
    "extract_chorale",
    "index_chorales",
    "name_chord",
]

_PITCH_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def index_chorales(out_csv: str | os.PathLike | None = None) -> list[str]:
    """List music21's Bach chorales that are in 4/4 throughout with four parts (slow: parses all).

    Writes ``path,beats`` rows to ``out_csv`` when given (the format of
    ``data/bach_chorales.csv``); returns the corpus-relative paths.
    """
    from music21 import corpus, meter

    found = []
    for p in sorted(corpus.getComposer("bach")):
        if p.suffix != ".mxl":
            continue
        score = corpus.parse(p)
        sigs = {ts.ratioString for ts in score.recurse().getElementsByClass(meter.TimeSignature)}
        if sigs == {"4/4"} and len(score.parts) == 4:
            found.append((f"bach/{p.name}", float(score.highestTime)))
    if out_csv is not None:
        with open(out_csv, "w") as f:
            f.write("# Bach chorales of music21's corpus in 4/4 with four voices (SATB); ")
            f.write("beats = length in quarter notes.\npath,beats\n")
            f.writelines(f"{p},{b:g}\n" for p, b in found)
    return [p for p, _ in found]


def available_chorales(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The chorales of ``paths`` that the installed music21 ships (the list was made
    from music21 10.5; other versions may lack a few)."""
    from music21 import corpus

    shipped = {f"bach/{p.name}" for p in corpus.getComposer("bach")}
    kept = tuple(p for p in paths if p in shipped)
    if len(kept) < len(paths):
        logger.warning("%d listed chorales are not in this music21", len(paths) - len(kept))
    if not kept:
        raise FileNotFoundError("none of the listed chorales is in music21's corpus")
    return kept


@dataclass(frozen=True)
class Chorale:
    """A chorale in quarter-note beats from its start.

    ``voices``: soprano, alto, tenor, bass, each a tuple of (onset, duration, MIDI pitch);
    ``chords``: the MMA chord name sounding on each whole beat (None: unclear);
    ``pickup``: beats before the first downbeat; ``beats``: total length.
    """

    path: str
    voices: tuple[tuple[tuple[float, float, int], ...], ...]
    chords: tuple[str | None, ...]
    pickup: float
    beats: float


def extract_chorale(path: str) -> Chorale:
    """Parse a music21 corpus chorale (e.g. ``"bach/bwv10.7.mxl"``) into a :class:`Chorale`.

    The chord of each beat is named from the pitch classes the four voices sound on it
    (:func:`name_chord`), the vertical slice that ``chordify()`` would give; calling
    ``chordify()`` itself cost ~0.8 s a chorale, most of the per-song budget.
    """
    from music21 import corpus

    score = corpus.parse(path)
    if len(score.parts) != 4:
        raise ValueError(f"{path}: expected 4 voices, found {len(score.parts)}")
    voices = []
    for part in score.parts:
        notes: list[tuple[float, float, int]] = []
        for n in part.flatten().notes:
            onset, dur, pitch = float(n.offset), float(n.quarterLength), int(n.pitches[0].midi)
            tied = n.tie is not None and n.tie.type in ("stop", "continue")
            if tied and notes and notes[-1][2] == pitch and abs(sum(notes[-1][:2]) - onset) < 1e-6:
                notes[-1] = (notes[-1][0], notes[-1][1] + dur, pitch)  # merge the tie
            else:
                notes.append((onset, dur, pitch))
        voices.append(tuple(notes))
    first_bar = score.parts[0].measure(1)
    pickup = float(first_bar.offset) if first_bar is not None else 0.0
    beats = float(score.highestTime)
    chords = []
    for b in range(math.ceil(beats)):
        sounding = [p for v in voices for o, d, p in v if o <= b < o + d]
        chords.append(name_chord(sounding))
    return Chorale(path, tuple(voices), tuple(chords), pickup, beats)


# Chord templates as pitch-class intervals above the root -> MMA suffix, the most
# specific first. Four-part writing often leaves out the fifth, so it may be missing.
_CHORD_TEMPLATES = (
    (frozenset({0, 4, 7, 10}), "7"),
    (frozenset({0, 3, 6, 9}), "dim7"),
    (frozenset({0, 3, 6, 10}), "m7b5"),
    (frozenset({0, 4, 7, 11}), "maj7"),
    (frozenset({0, 3, 7, 10}), "m7"),
    (frozenset({0, 4, 7}), ""),
    (frozenset({0, 3, 7}), "m"),
    (frozenset({0, 3, 6}), "dim"),
    (frozenset({0, 4, 8}), "aug"),
)


def name_chord(pitches: list[int]) -> str | None:
    """MMA chord name (e.g. ``"F#m7"``) of MIDI ``pitches``, or ``None`` if none fits.

    Fits: at least three pitch classes, all in the template, and every template note
    present except perhaps the perfect fifth. Among fitting roots the bass note wins.
    """
    classes = {p % 12 for p in pitches}
    if len(classes) < 3:
        return None
    bass = min(pitches) % 12
    for template, suffix in _CHORD_TEMPLATES:
        roots = []
        for r in sorted(classes):
            rel = {(c - r) % 12 for c in classes}
            if rel <= template and template - rel <= {7}:
                roots.append(r)
        if roots:
            return _PITCH_NAMES[bass if bass in roots else roots[0]] + suffix
    return None
