"""The synthetic corpus's recipe and song plans: every random choice of a song, up front.

The recipe (``data/synthetic_styles.yaml``) holds the styles (the genre labels, each with
its tempo range, grooves and instrument programs), the arrangement and mixing rules and
the chorale list; :func:`plan_songs` draws each song's choices from (seed, song index).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .general_midi import BASS_PROGRAMS, DATA_DIR, STEMS, VOICE_PROGRAMS, gm_programs
from .rendered_tracks import split_sizes

__all__ = [
    "TEMPO_BANDS",
    "Recipe",
    "SongPlan",
    "Style",
    "diversify_plans",
    "load_recipe",
    "plan_songs",
    "tempo_band",
]

_BEATS_PER_BAR = 4  # all styles are 4/4 grooves and the chorale list holds 4/4 chorales

# Tempo bands of the `tempo` label (quarter notes per minute, lower bounds). Most styles'
# tempo ranges straddle a boundary, so the band is not given away by the instruments:
# it is a rhythm label, the counterpart of the genre's mostly timbral one.
TEMPO_BANDS: tuple[tuple[str, float], ...] = (
    ("slow (<100)", 0.0),
    ("moderate (100-119)", 100.0),
    ("fast (120-139)", 120.0),
    ("very fast (>=140)", 140.0),
)


def tempo_band(bpm: float) -> int:
    """Index in :data:`TEMPO_BANDS` of a tempo in quarter notes per minute."""
    if not bpm > 0:
        raise ValueError(f"tempo must be > 0 quarter notes per minute, got {bpm}")
    return max(i for i, (_, low) in enumerate(TEMPO_BANDS) if bpm >= low)


@dataclass(frozen=True)
class Style:
    """One accompaniment style (a genre label); fields as in ``data/synthetic_styles.yaml``."""

    name: str
    grooves: tuple[str, ...]
    tempo: tuple[float, float]
    drum_kits: tuple[int, ...]
    bass: tuple[int, ...]
    harmony: tuple[int, ...]
    vocals: tuple[int, ...]
    inner: tuple[int, ...]
    inner_probability: float
    chorale_bass: float


@dataclass(frozen=True)
class Recipe:
    """The parsed recipe file: styles, arrangement and mixing rules, chorale list."""

    styles: tuple[Style, ...]
    arrangement: dict
    mix: dict
    chorales: tuple[str, ...]
    sampling_rate: int
    path: str

    @property
    def genres(self) -> list[str]:
        return [s.name for s in self.styles]


def load_recipe(path: str | os.PathLike | None = None) -> Recipe:
    """Read and check ``data/synthetic_styles.yaml`` (or ``path``)."""
    import yaml

    path = Path(path) if path is not None else DATA_DIR / "synthetic_styles.yaml"
    raw = yaml.safe_load(path.read_text())
    styles = []
    for name, s in raw["styles"].items():
        style = Style(
            name=name,
            grooves=tuple(s["grooves"]),
            tempo=(float(s["tempo"][0]), float(s["tempo"][1])),
            drum_kits=tuple(s["drum_kits"]),
            bass=tuple(s["bass"]),
            harmony=tuple(s["harmony"]),
            vocals=tuple(s["vocals"]),
            inner=tuple(s["inner"]["programs"]),
            inner_probability=float(s["inner"]["probability"]),
            chorale_bass=float(s.get("chorale_bass", 0.0)),
        )
        _check_style(style, path)
        styles.append(style)
    if len(styles) < 2:
        raise ValueError(f"{path}: at least two styles are needed for genre labels")
    chorale_list = path.parent / raw.get("chorales", "bach_chorales.csv")
    return Recipe(
        styles=tuple(styles),
        arrangement=raw["arrangement"],
        mix=raw["mix"],
        chorales=tuple(_read_chorale_list(chorale_list)),
        sampling_rate=int(raw.get("sampling_rate", 16000)),
        path=str(path),
    )


def _check_style(style: Style, path: Path) -> None:
    """The programs must land in the intended stems under the generic stem rules."""
    table = gm_programs()
    where = f"{path}: style {style.name!r}"
    if not style.grooves or style.tempo[0] <= 0 or style.tempo[0] > style.tempo[1]:
        raise ValueError(f"{where}: needs grooves and a tempo range [min, max] > 0")
    if not set(style.bass) <= BASS_PROGRAMS:
        raise ValueError(f"{where}: bass programs must be 32-39, got {style.bass}")
    if not set(style.vocals) <= VOICE_PROGRAMS:
        raise ValueError(f"{where}: vocal programs must be in {sorted(VOICE_PROGRAMS)}")
    for prog in style.harmony + style.inner:
        if prog in BASS_PROGRAMS or prog in VOICE_PROGRAMS or table[prog].family is None:
            raise ValueError(
                f"{where}: harmony/inner program {prog} would fall in another stem or "
                "has no NSynth family"
            )


def _read_chorale_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build it with index_chorales({str(path)!r})")
    with open(path, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return [r["path"] for r in rows]


# ---------------------------------------------------------------------------
# Song plans: every random choice of a song, drawn up front from (seed, song index)


@dataclass
class SongPlan:
    """Everything needed to arrange and render one song; JSON-serialisable."""

    track_id: str
    style: str
    genre: int
    chorale: str
    groove: str
    tempo: float
    bars: int
    seconds: float
    drum_kit: int
    bass_program: int
    harmony_program: int
    replace_main_harmony: bool
    vocal_program: int
    inner_program: int | None
    chorale_bass: bool
    transpose: int
    intro_bars: int
    tacet: list = field(default_factory=list)  # [start_bar, end_bar, [stems]]
    gains_db: dict = field(default_factory=dict)
    seed: int = 0
    split: str = "train"
    # Diverse corpora only (production.CorpusDiversity): the SoundFont's name (None: the
    # corpus's one SoundFont) and each stem's production (empty: none).
    soundfont: str | None = None
    production: dict = field(default_factory=dict)
    # Shared instruments (CorpusDiversity.shared_programs): the programs of the groove's
    # harmony tracks, in turn (empty: the groove's own, as the recipe says).
    harmony_programs: list = field(default_factory=list)


def plan_songs(recipe: Recipe, num_songs: int, seconds: float, seed: int) -> list[SongPlan]:
    """Draw the plans of ``num_songs`` songs; the same arguments give the same plans.

    Styles take turns (balanced genres); chorales are drawn without replacement while
    they last; splits are stratified by style and by chorale, so a melody never
    crosses splits.
    """
    order = np.random.default_rng([seed, 1]).permutation(len(recipe.chorales))
    arr, mix = recipe.arrangement, recipe.mix
    plans = []
    for i in range(num_songs):
        rng = np.random.default_rng([seed, 2, i])
        style = recipe.styles[i % len(recipe.styles)]
        tempo = float(np.round(rng.uniform(*style.tempo)))
        bars = math.ceil(seconds * tempo / 60.0 / _BEATS_PER_BAR)
        intro = int(rng.integers(arr["intro_bars"][0], arr["intro_bars"][1] + 1))
        intro_tacet = ["vocals"] + [s for s, p in arr["intro_tacet"].items() if rng.random() < p]
        if set(intro_tacet) >= set(STEMS):
            intro_tacet.remove("other")  # an intro of silence would be no intro
        tacet = [[0, intro, intro_tacet]]
        for section in ("break", "interlude"):
            spec = arr[section]
            if rng.random() >= spec["probability"]:
                continue
            length = int(rng.integers(spec["bars"][0], spec["bars"][1] + 1))
            first, last = intro + 1, bars - length  # not straight after the intro
            if last < first:
                continue
            start = int(rng.integers(first, last + 1))
            stems = list(spec["tacet"])
            if rng.random() < spec.get("also_bass", 0.0):
                stems.append("bass")
            tacet.append([start, start + length, stems])
        jitter = float(mix["jitter_db"])
        plans.append(
            SongPlan(
                track_id=f"song_{i:05d}",
                style=style.name,
                genre=recipe.genres.index(style.name),
                chorale=recipe.chorales[order[i % len(order)]],
                groove=str(rng.choice(style.grooves)),
                tempo=tempo,
                bars=bars,
                seconds=float(seconds),
                drum_kit=int(rng.choice(style.drum_kits)),
                bass_program=int(rng.choice(style.bass)),
                harmony_program=int(rng.choice(style.harmony)),
                replace_main_harmony=bool(rng.random() < 0.5),
                vocal_program=int(rng.choice(style.vocals)),
                inner_program=int(rng.choice(style.inner))
                if rng.random() < style.inner_probability
                else None,
                chorale_bass=bool(rng.random() < style.chorale_bass),
                transpose=int(rng.integers(arr["transpose"][0], arr["transpose"][1] + 1)),
                intro_bars=intro,
                tacet=tacet,
                gains_db={s: float(mix[s]) + float(rng.uniform(-jitter, jitter)) for s in STEMS},
                seed=int(rng.integers(1, 2**31 - 1)),
            )
        )
    _split_by_style_and_chorale(plans, seed)
    return plans


def diversify_plans(
    plans: list[SongPlan], recipe: Recipe, diversity: Any, seed: int
) -> list[SongPlan]:
    """The plans of a diverse corpus (:class:`~.production.CorpusDiversity`), in place.

    Each song's SoundFont, production, wider tempo and transposition come from its own
    random streams, so the rest of its plan is the one :func:`plan_songs` drew. Songs of
    the held-out SoundFont get the split ``test_ood``; the others are split within each
    style by ``diversity.split_fractions``.
    """
    from .production import draw_production

    styles = {s.name: s for s in recipe.styles}
    names = list(diversity.soundfonts)
    held = diversity.held_out_soundfont
    seen = [n for n in names if n != held]
    for i, plan in enumerate(plans):
        rng = np.random.default_rng([seed, 12, i])
        if diversity.tempo_stretch > 0:
            lo, hi = styles[plan.style].tempo
            lo, hi = lo * (1 - diversity.tempo_stretch), hi * (1 + diversity.tempo_stretch)
            plan.tempo = float(np.round(rng.uniform(lo, hi)))
            plan.bars = math.ceil(plan.seconds * plan.tempo / 60.0 / _BEATS_PER_BAR)
            # Sections drawn for the old length must still fit: cut those past the end.
            plan.tacet = [t for t in plan.tacet if t[0] < plan.bars]
        if diversity.transpose is not None:
            plan.transpose = int(rng.integers(diversity.transpose[0], diversity.transpose[1] + 1))
        if names:
            if held is not None and rng.random() < diversity.held_out_share:
                plan.soundfont = held
            else:
                plan.soundfont = str(rng.choice(seen))
        plan.production = draw_production(diversity, seed, i)
        if diversity.shared_programs:
            _share_programs(plan, recipe, np.random.default_rng([seed, 14, i]))
    inside = [p for p in plans if held is None or p.soundfont != held]
    _split_by_style_and_chorale(inside, seed, diversity.split_fractions)
    for plan in plans:
        if held is not None and plan.soundfont == held:
            plan.split = "test_ood"
    return plans


def _share_programs(plan: SongPlan, recipe: Recipe, rng: np.random.Generator) -> None:
    """Redraw a plan's instruments from the union of every style's lists (sorted, so the
    draw does not depend on the order of the styles)."""

    def pool(attr: str) -> list[int]:
        return sorted({p for s in recipe.styles for p in getattr(s, attr)})

    plan.drum_kit = int(rng.choice(pool("drum_kits")))
    plan.bass_program = int(rng.choice(pool("bass")))
    plan.harmony_program = int(rng.choice(pool("harmony")))
    plan.harmony_programs = [int(p) for p in rng.choice(pool("harmony"), size=3)]
    plan.vocal_program = int(rng.choice(pool("vocals")))
    inner = int(rng.choice(pool("inner")))
    if plan.inner_program is not None:  # whether an inner part plays stays the style's
        plan.inner_program = inner


def _split_by_style_and_chorale(
    plans: list[SongPlan], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> None:
    """Set ``plan.split``: 80/10/10 (``fractions``) within each style (every genre in every
    split once a style has 3 songs), and a chorale used twice stays in the split it got
    first."""
    split_of_chorale: dict[str, str] = {}
    for genre in sorted({p.genre for p in plans}):
        songs = [i for i, p in enumerate(plans) if p.genre == genre]
        order = np.random.default_rng([seed, 7, genre]).permutation(songs)
        n_train, n_val, _ = split_sizes(len(songs), fractions)
        for rank, i in enumerate(order):
            wanted = (
                "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            )
            plans[i].split = split_of_chorale.setdefault(plans[i].chorale, wanted)
