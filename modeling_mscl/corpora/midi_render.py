"""Render MIDI with FluidSynth into 16 kHz mono waveforms, and mix stems into a mixture.

FluidSynth is reached through ``pyfluidsynth`` (extra ``corpus``) and the system
library ``libfluidsynth3``; both are imported lazily so that the rest of the package
works without them.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from .general_midi import STEMS, assign_stems, instrument_labels

logger = logging.getLogger("modeling_mscl.corpora")

__all__ = [
    "mix_stems",
    "render_instruments",
    "render_midi",
    "render_notes",
]

# Bank select would switch to banks a GM SoundFont may lack; the program is set explicitly.
_IGNORED_CONTROLLERS = frozenset({0, 32})


@lru_cache(maxsize=1)
def _write_float() -> Callable[..., int]:
    """``fluid_synth_write_float`` (float output: no 16-bit clipping inside FluidSynth)."""
    import fluidsynth

    fn = ctypes.CDLL(fluidsynth.lib).fluid_synth_write_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int] + [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ] * 2
    fn.restype = ctypes.c_int
    return fn


def _import_fluidsynth():
    try:
        import fluidsynth
    except ImportError as err:  # the module raises ImportError when libfluidsynth is missing
        raise ImportError(
            "rendering MIDI needs pyfluidsynth and the FluidSynth library: "
            "pip install 'modeling-mscl[corpus]' and apt-get install libfluidsynth3 "
            f"(make system-deps) [{err}]"
        ) from err
    return fluidsynth


def render_instruments(
    instruments: Sequence[Any],
    soundfont: str | os.PathLike,
    sampling_rate: int = 16000,
    num_samples: int | None = None,
    effects: bool = True,
    settings: dict[str, Any] | None = None,
    controllers: dict[int, int] | None = None,
    detune_cents: float = 0.0,
) -> np.ndarray:
    """Render ``pretty_midi.Instrument`` objects together into one mono float32 waveform.

    A fresh synthesiser per call keeps the result independent of earlier calls (the
    reverb and chorus hold state), so renders are deterministic in any order.
    ``num_samples`` defaults to the last note-off plus one second of release.
    ``effects=False`` turns FluidSynth's reverb and chorus off (dry notes).
    ``settings``: extra FluidSynth settings of the synthesiser (e.g. the reverb's room
    size); ``controllers``: controller values set on every channel before any event of
    the MIDI (its own controllers then override them); ``detune_cents``: a pitch bend
    of the melodic channels for the whole render, added to the MIDI's own bends (the
    default bend range is ±200 cents). The defaults leave the render as before.
    Returns shape (num_samples,), the average of FluidSynth's two channels.
    """
    fluidsynth = _import_fluidsynth()
    if num_samples is None:
        end = max((n.end for inst in instruments for n in inst.notes), default=0.0)
        num_samples = int(np.ceil((end + 1.0) * sampling_rate)) if end > 0 else 0
    left = np.zeros(num_samples, dtype=np.float32)
    right = np.zeros(num_samples, dtype=np.float32)
    if num_samples == 0 or not any(inst.notes for inst in instruments):
        return left
    flag = 1 if effects else 0
    synth = fluidsynth.Synth(
        samplerate=sampling_rate,
        **{"synth.reverb.active": flag, "synth.chorus.active": flag, **(settings or {})},
    )
    try:
        sfid = synth.sfload(str(soundfont))
        if sfid < 0:
            raise ValueError(f"FluidSynth could not load the SoundFont {soundfont}")
        events = _schedule(synth, sfid, instruments, sampling_rate, controllers, detune_cents)
        write = _write_float()
        lptr = left.ctypes.data_as(ctypes.c_void_p)
        rptr = right.ctypes.data_as(ctypes.c_void_p)
        pos = 0
        for sample, _, call, args in events:
            if sample >= num_samples:
                break
            if sample > pos:
                write(synth.synth, sample - pos, lptr, pos, 1, rptr, pos, 1)
                pos = sample
            call(*args)
        if pos < num_samples:
            write(synth.synth, num_samples - pos, lptr, pos, 1, rptr, pos, 1)
    finally:
        synth.delete()
    return 0.5 * (left + right)


def render_notes(
    program: int,
    notes: Sequence[tuple[int, int]],
    soundfont: str | os.PathLike,
    sampling_rate: int = 16000,
    seconds: float = 4.0,
    hold: float = 3.0,
    settings: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """Render single notes ``(pitch, velocity)`` of one GM program, dry, one after another.

    Each note is held ``hold`` seconds inside a ``seconds`` window; all sound is cut at
    the end of a window so nothing leaks into the next. One synthesiser serves the
    whole list (loading the SoundFont dominates the cost of a note); the output for a
    given list is deterministic. Returns one float32 array (seconds * rate,) per note.
    ``settings``: extra FluidSynth settings (e.g. ``synth.dynamic-sample-loading``).
    """
    fluidsynth = _import_fluidsynth()
    n, held = int(round(seconds * sampling_rate)), int(round(hold * sampling_rate))
    synth = fluidsynth.Synth(
        samplerate=sampling_rate,
        **{"synth.reverb.active": 0, "synth.chorus.active": 0, **(settings or {})},
    )
    write, out = _write_float(), []
    try:
        sfid = synth.sfload(str(soundfont))
        if sfid < 0:
            raise ValueError(f"FluidSynth could not load the SoundFont {soundfont}")
        synth.program_select(0, sfid, 0, program)
        for pitch, velocity in notes:
            left = np.zeros(n, dtype=np.float32)
            right = np.zeros(n, dtype=np.float32)
            lptr = left.ctypes.data_as(ctypes.c_void_p)
            rptr = right.ctypes.data_as(ctypes.c_void_p)
            synth.noteon(0, pitch, velocity)
            write(synth.synth, held, lptr, 0, 1, rptr, 0, 1)
            synth.noteoff(0, pitch)
            write(synth.synth, n - held, lptr, held, 1, rptr, held, 1)
            synth.all_sounds_off(0)
            out.append(0.5 * (left + right))
    finally:
        synth.delete()
    return out


def _schedule(
    synth: Any,
    sfid: int,
    instruments: Sequence[Any],
    sr: int,
    controllers: dict[int, int] | None = None,
    detune_cents: float = 0.0,
) -> list[tuple]:
    """Give each instrument its own channel and list its events in sample order."""
    # 256 channels exist; FluidSynth treats channel 10 of each group of 16 as percussion,
    # so melodic instruments avoid those and kits use them.
    melodic = (c for c in range(256) if c % 16 != 9)
    drums = (c for c in range(9, 256, 16))
    events: list[tuple] = []
    for inst in instruments:
        if not inst.notes:
            continue
        chan = next(drums if inst.is_drum else melodic, None)
        if chan is None:
            raise ValueError("more instruments than the synthesiser's 256 MIDI channels")
        bank, program = (128, inst.program) if inst.is_drum else (0, inst.program)
        if synth.sfpreset_name(sfid, bank, program) is None:
            logger.debug("no preset bank %d program %d; using program 0", bank, program)
            program = 0
        synth.program_select(chan, sfid, bank, program)
        # Priority -1: the production's start values, before anything of the MIDI.
        for number, value in (controllers or {}).items():
            events.append((0, -1, synth.cc, (chan, number, value)))
        bend = 0 if inst.is_drum else int(round(detune_cents / 200 * 8192))
        if bend:
            events.append((0, -1, synth.pitch_bend, (chan, bend)))
        # Priority at equal times: note-offs, then controllers, then note-ons, so a
        # repeated pitch is retriggered and a volume change precedes the next note.
        for cc in inst.control_changes:
            if cc.number not in _IGNORED_CONTROLLERS:
                events.append((round(cc.time * sr), 1, synth.cc, (chan, cc.number, cc.value)))
        for pb in inst.pitch_bends:
            value = int(np.clip(pb.pitch + bend, -8192, 8191))
            events.append((round(pb.time * sr), 1, synth.pitch_bend, (chan, value)))
        for note in inst.notes:
            events.append(
                (round(note.start * sr), 2, synth.noteon, (chan, note.pitch, note.velocity))
            )
            events.append((round(note.end * sr), 0, synth.noteoff, (chan, note.pitch)))
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def mix_stems(
    stems: dict[str, np.ndarray], peak: float = 0.95, gains: dict[str, float] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scale the stems by ``gains`` and one common gain, then sum them into the mixture.

    The common gain puts the largest peak of the mixture and of every stem at ``peak``.
    Stems are rounded to the 16-bit grid first, so the mixture (their sum) is exactly
    the sum of the stems also after writing 16-bit FLAC/WAV files.
    Returns ``(mixture, stems)``, float32 arrays of equal length.
    """
    length = max(len(s) for s in stems.values())
    scaled = {}
    for name in STEMS:
        wav = np.zeros(length, dtype=np.float64)
        wav[: len(stems[name])] = stems[name]
        scaled[name] = wav * (gains or {}).get(name, 1.0)
    mixture = sum(scaled.values())
    top = max(
        [np.abs(mixture).max(initial=0.0)] + [np.abs(w).max(initial=0.0) for w in scaled.values()]
    )
    common = peak / top if top > 0 else 1.0
    out = {
        k: (np.clip(np.round(w * common * 32768), -32768, 32767) / 32768) for k, w in scaled.items()
    }
    mixture = sum(out.values())
    return mixture.astype(np.float32), {k: w.astype(np.float32) for k, w in out.items()}


def render_midi(
    midi: Any,
    soundfont: str | os.PathLike,
    sampling_rate: int = 16000,
    seconds: float | None = None,
    gains: dict[str, float] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    """Render a ``pretty_midi.PrettyMIDI`` into ``(mixture, stems, instrument labels)``.

    Each stem is rendered on its own and the mixture is their sum (:func:`mix_stems`).
    ``seconds`` cuts the song (``None``: to the end plus one second of release).
    """
    if seconds is None:
        seconds = midi.get_end_time() + 1.0
    num_samples = int(round(seconds * sampling_rate))
    groups = assign_stems(midi.instruments)
    rendered = {
        stem: render_instruments(insts, soundfont, sampling_rate, num_samples)
        for stem, insts in groups.items()
    }
    mixture, stems = mix_stems(rendered, gains=gains)
    return mixture, stems, instrument_labels(midi.instruments, until=seconds)
