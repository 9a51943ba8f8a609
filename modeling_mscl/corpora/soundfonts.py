"""The General MIDI SoundFonts the rendered corpora can use, by name.

One name per SoundFont, with where Debian installs it and which package does. TimGM6mb
is also inside the ``pretty_midi`` wheel, so it is always there; the others need their
Debian package (``make system-deps`` installs them). A path to any ``.sf2``/``.sf3``
file works too; its name is then the file's stem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .general_midi import default_soundfont, resolve_soundfont

__all__ = ["SOUNDFONTS", "KnownSoundFont", "resolve_soundfonts", "soundfont_path"]


@dataclass(frozen=True)
class KnownSoundFont:
    """A SoundFont by name: its file as Debian installs it, and the Debian package."""

    name: str
    path: str
    package: str
    note: str


SOUNDFONTS: dict[str, KnownSoundFont] = {
    sf.name: sf
    for sf in (
        KnownSoundFont(
            "TimGM6mb",
            "/usr/share/sounds/sf2/TimGM6mb.sf2",
            "timgm6mb-soundfont",
            "6 MB GM set; also shipped in the pretty_midi wheel (the fallback)",
        ),
        KnownSoundFont(
            "FluidR3_GM",
            "/usr/share/sounds/sf2/FluidR3_GM.sf2",
            "fluid-soundfont-gm",
            "142 MB GM set (Fluid R3, stereo samples)",
        ),
        KnownSoundFont(
            "MuseScore_General_Lite",
            "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",
            "musescore-general-soundfont-small",
            "40 MB compressed GM set of MuseScore",
        ),
        KnownSoundFont(
            "FluidR3Mono_GM",
            "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
            "fluidr3mono-gm-soundfont",
            "mono, compressed Fluid R3 (close to FluidR3_GM: not a new timbre)",
        ),
    )
}


def soundfont_path(name: str | os.PathLike) -> Path:
    """The file of a SoundFont given by name (:data:`SOUNDFONTS`) or path.

    TimGM6mb falls back to the copy inside the ``pretty_midi`` wheel. A missing
    SoundFont raises ``FileNotFoundError`` naming the Debian package that installs it.
    """
    key = str(name)
    if key in SOUNDFONTS:
        known = SOUNDFONTS[key]
        if Path(known.path).is_file():
            return resolve_soundfont(known.path)
        if key == "TimGM6mb":
            return resolve_soundfont(default_soundfont())
        raise FileNotFoundError(
            f"SoundFont {key} not found at {known.path}: install the Debian package "
            f"{known.package} (apt-get install {known.package}, or make system-deps)"
        )
    if os.sep in key or key.lower().endswith((".sf2", ".sf3")):
        return resolve_soundfont(key)
    raise ValueError(f"unknown SoundFont {key!r}: give a path or one of {sorted(SOUNDFONTS)}")


def resolve_soundfonts(names: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """``{name: file}`` of several SoundFonts (a path's name is its file's stem); names must
    be distinct, and every file must exist (see :func:`soundfont_path`)."""
    out: dict[str, Path] = {}
    for name in names:
        path = soundfont_path(name)
        key = str(name) if str(name) in SOUNDFONTS else path.stem
        if key in out:
            raise ValueError(f"SoundFont {key!r} is listed twice")
        out[key] = path
    if not out:
        raise ValueError("at least one SoundFont is needed")
    return out
