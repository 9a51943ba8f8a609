"""Timbre and production diversity of the synthetic corpus: SoundFonts and per-stem effects.

:class:`CorpusDiversity` holds the options (all off by default: the corpus is then the
single-SoundFont corpus of earlier versions, bit for bit). With them, every song draws
(seeded, from its own random stream, so the rest of its plan is unchanged):

* a General MIDI SoundFont from ``soundfonts``; one of them can be held out: its songs go
  to a ``test_ood`` split only, never to train, validation or test;
* per stem: a two-band shelving EQ (low shelf at 250 Hz, high shelf at 3 kHz), the
  FluidSynth reverb (room size, send) and chorus (send, depth) of that stem's synthesiser,
  a gain, and a detune of the melodic channels (a pitch bend held for the whole song);
* a wider tempo range (each style's range stretched by ``tempo_stretch``) and a wider
  transposition range;
* optionally, instruments drawn from one pool shared by all styles (``shared_programs``).

Effects are applied to each stem before mixing, so the mixture stays the sum of the stems.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .general_midi import STEMS

__all__ = [
    "CorpusDiversity",
    "StemProduction",
    "apply_eq",
    "draw_production",
    "shelf_coefficients",
]

EQ_LOW_HZ = 250.0
EQ_HIGH_HZ = 3000.0
# The FluidSynth default send of controller 91 (reverb) is 40 of 127 and of 93 (chorus) 0.


@dataclass(frozen=True)
class CorpusDiversity:
    """Options of a diverse corpus (``None`` fields and zero ranges: off).

    ``soundfonts``: names (:data:`~.soundfonts.SOUNDFONTS`) or paths, drawn uniformly per
    song; ``held_out_soundfont``: one of them, whose songs (a ``held_out_share`` of all
    songs, seeded) form the ``test_ood`` split; ``split_fractions``: train/validation/test
    shares of the other songs within each style. Ranges are ``(low, high)``, drawn
    uniformly per stem. ``shared_programs``: every song draws its drum kit and its bass,
    harmony, vocal and inner programs from the union of all styles' lists, so that a
    style (the genre label) is its grooves and tempo, not its instruments.
    """

    soundfonts: tuple[str, ...] = ()
    held_out_soundfont: str | None = None
    held_out_share: float = 0.25
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    eq_db: tuple[float, float] = (0.0, 0.0)
    reverb_send: tuple[int, int] = (40, 40)
    reverb_room: tuple[float, float] = (0.2, 0.2)
    chorus_send: tuple[int, int] = (0, 0)
    chorus_depth_ms: tuple[float, float] = (8.0, 8.0)
    gain_db: tuple[float, float] = (0.0, 0.0)
    detune_cents: tuple[float, float] = (0.0, 0.0)
    tempo_stretch: float = 0.0
    transpose: tuple[int, int] | None = None
    shared_programs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "soundfonts", tuple(str(s) for s in self.soundfonts))
        if self.held_out_soundfont is not None:
            if self.held_out_soundfont not in self.soundfonts:
                raise ValueError(
                    f"held_out_soundfont {self.held_out_soundfont!r} is not one of the "
                    f"soundfonts {list(self.soundfonts)}"
                )
            if len(self.soundfonts) < 2:
                raise ValueError("holding a SoundFont out needs at least two SoundFonts")
            if not 0 < self.held_out_share < 1:
                raise ValueError(f"held_out_share must be in (0, 1), got {self.held_out_share}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0):
            raise ValueError(f"split_fractions must be 3 shares summing to 1, got {fr}")
        for name in ("eq_db", "reverb_send", "reverb_room", "chorus_send", "chorus_depth_ms",
                     "gain_db", "detune_cents"):  # fmt: skip
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")
        if not (0 <= self.reverb_send[0] and self.reverb_send[1] <= 127):
            raise ValueError("reverb_send must lie in 0-127")
        if not (0 <= self.chorus_send[0] and self.chorus_send[1] <= 127):
            raise ValueError("chorus_send must lie in 0-127")
        if not (0 <= self.reverb_room[0] and self.reverb_room[1] <= 1):
            raise ValueError("reverb_room must lie in 0-1")
        if abs(self.detune_cents[0]) > 100 or abs(self.detune_cents[1]) > 100:
            raise ValueError("detune_cents must lie within ±100 (the bend range is ±200)")
        if not 0 <= self.tempo_stretch < 1:
            raise ValueError(f"tempo_stretch must be in [0, 1), got {self.tempo_stretch}")

    @property
    def active(self) -> bool:
        """Whether anything differs from the single-SoundFont corpus."""
        return self != CorpusDiversity()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CorpusDiversity:
        """From a parsed YAML/JSON mapping (lists become tuples); unknown keys are errors."""
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown corpus diversity options {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StemProduction:
    """The production of one stem of one song (JSON-serialisable)."""

    eq_low_db: float = 0.0
    eq_high_db: float = 0.0
    reverb_send: int = 40
    reverb_room: float = 0.2
    chorus_send: int = 0
    chorus_depth_ms: float = 8.0
    gain_db: float = 0.0
    detune_cents: float = 0.0
    extra: dict = field(default_factory=dict)

    def synth_settings(self) -> dict[str, float]:
        """FluidSynth settings of this stem's synthesiser (reverb and chorus shape)."""
        return {
            "synth.reverb.room-size": float(self.reverb_room),
            "synth.chorus.depth": float(self.chorus_depth_ms),
        }

    def controllers(self) -> dict[int, int]:
        """Controller values set on every channel at the start: reverb and chorus sends."""
        return {91: int(self.reverb_send), 93: int(self.chorus_send)}


def draw_production(diversity: CorpusDiversity, seed: int, index: int) -> dict[str, dict]:
    """Per-stem production of song ``index`` (its own random stream; JSON-ready dicts)."""
    rng = np.random.default_rng([seed, 13, index])
    d = diversity

    def uniform(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi)) if lo_hi[0] < lo_hi[1] else float(lo_hi[0])

    out = {}
    for stem in STEMS:
        out[stem] = asdict(
            StemProduction(
                eq_low_db=round(uniform(d.eq_db), 2),
                eq_high_db=round(uniform(d.eq_db), 2),
                reverb_send=int(round(uniform(d.reverb_send))),
                reverb_room=round(uniform(d.reverb_room), 3),
                chorus_send=int(round(uniform(d.chorus_send))),
                chorus_depth_ms=round(uniform(d.chorus_depth_ms), 2),
                gain_db=round(uniform(d.gain_db), 2),
                # Drum kits are not tuned instruments: no detune.
                detune_cents=0.0 if stem == "drums" else round(uniform(d.detune_cents), 1),
            )
        )
    return out


def shelf_coefficients(
    kind: str, freq: float, gain_db: float, sampling_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """Biquad ``(b, a)`` of a shelving filter (slope 1), ``kind`` ``"low"`` or ``"high"``.

    The standard bilinear-transform shelf: gain ``gain_db`` below (low) or above (high)
    ``freq``, unity on the other side; ``a[0] == 1``.
    """
    if kind not in ("low", "high"):
        raise ValueError(f"kind must be 'low' or 'high', got {kind!r}")
    amp = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * freq / sampling_rate
    cos, alpha = math.cos(w0), math.sin(w0) / 2 * math.sqrt(2)  # shelf slope S = 1
    root = 2 * math.sqrt(amp) * alpha
    sign = 1 if kind == "low" else -1
    b = np.array(
        [
            amp * ((amp + 1) - sign * (amp - 1) * cos + root),
            sign * 2 * amp * ((amp - 1) - sign * (amp + 1) * cos),
            amp * ((amp + 1) - sign * (amp - 1) * cos - root),
        ]
    )
    a = np.array(
        [
            (amp + 1) + sign * (amp - 1) * cos + root,
            -sign * 2 * ((amp - 1) + sign * (amp + 1) * cos),
            (amp + 1) + sign * (amp - 1) * cos - root,
        ]
    )
    return b / a[0], a / a[0]


def apply_eq(wav: np.ndarray, low_db: float, high_db: float, sampling_rate: int) -> np.ndarray:
    """The two-shelf EQ of a stem (float64 in, float64 out; a no-op at 0 dB)."""
    from scipy.signal import lfilter

    out = np.asarray(wav, dtype=np.float64)
    for kind, freq, gain in (("low", EQ_LOW_HZ, low_db), ("high", EQ_HIGH_HZ, high_db)):
        if gain != 0.0:
            b, a = shelf_coefficients(kind, freq, gain, sampling_rate)
            out = lfilter(b, a, out)
    return out
