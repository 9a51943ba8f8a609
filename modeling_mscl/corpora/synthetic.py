"""The offline corpus: Bach chorales arranged in several styles, rendered into stems.

Everything comes from packages and Debian, so the corpus builds without a download:

* melody and harmony: four-voice Bach chorales of ``music21``'s bundled corpus
  (``data/bach_chorales.csv`` lists those in 4/4): soprano -> vocals (a voice
  program), alto + tenor -> an "inner" instrument (other), and the chord on every
  beat named from the voices' vertical slice (what ``chordify()`` gives, faster);
* accompaniment: Debian's MMA arranger plays a style's groove (drums, bass, chords)
  over that chord progression; the styles (``data/synthetic_styles.yaml``) are the
  genre labels, each with its tempo range, grooves and instrument programs;
* sections silence some stems (vocals rest in the intro, drums in a break, ...), so
  the presence of each source varies within a song;
* rendering: FluidSynth with a General MIDI SoundFont (:mod:`.midi_render`).

:func:`build_default_corpus` adds the NSynth-like note set of
:func:`.note_set.build_note_set`. Builds are seeded, deterministic and resumable.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json_atomic
from .general_midi import (
    BASS_PROGRAMS,
    DATA_DIR,
    INSTRUMENT_CLASSES,
    STEMS,
    VOICE_PROGRAMS,
    assign_stems,
    gm_programs,
    instrument_labels,
    resolve_soundfont,
)
from .midi_render import mix_stems, render_instruments
from .note_set import build_note_set
from .rendered_tracks import (
    TRACK_CARD,
    run_jobs,
    save_dataset_dict,
    split_sizes,
    track_features,
    track_files,
    write_track,
)

logger = logging.getLogger("modeling_mscl.corpora")

__all__ = [
    "TEMPO_BANDS",
    "Chorale",
    "Recipe",
    "SongPlan",
    "Style",
    "arrange_song",
    "available_chorales",
    "build_default_corpus",
    "build_synthetic_corpus",
    "extract_chorale",
    "index_chorales",
    "load_recipe",
    "tempo_band",
    "name_chord",
    "plan_songs",
]

_PITCH_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_LEVEL = 0.05  # mean |amplitude| of a stem at 0 dB before the common gain
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


# ---------------------------------------------------------------------------
# Chorales


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


def _split_by_style_and_chorale(plans: list[SongPlan], seed: int) -> None:
    """Set ``plan.split``: 80/10/10 within each style (every genre in every split once a
    style has 3 songs), and a chorale used twice stays in the split it got first."""
    split_of_chorale: dict[str, str] = {}
    for genre in sorted({p.genre for p in plans}):
        songs = [i for i, p in enumerate(plans) if p.genre == genre]
        order = np.random.default_rng([seed, 7, genre]).permutation(songs)
        n_train, n_val, _ = split_sizes(len(songs))
        for rank, i in enumerate(order):
            wanted = (
                "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            )
            plans[i].split = split_of_chorale.setdefault(plans[i].chorale, wanted)


# ---------------------------------------------------------------------------
# Arrangement with MMA


def _song_chords(plan: SongPlan, chorale: Chorale) -> list[str | None]:
    """The chord of every beat of the song: the first chord through the intro, then the
    chorale's chords, the chorale repeating from its first downbeat when it ends."""
    intro_beats = plan.intro_bars * _BEATS_PER_BAR
    body = math.ceil((chorale.beats - chorale.pickup) / _BEATS_PER_BAR) * _BEATS_PER_BAR
    first = next((c for c in chorale.chords if c), "C")
    out = []
    for beat in range(plan.bars * _BEATS_PER_BAR):
        if beat < intro_beats:
            out.append(first)
            continue
        offset = int(chorale.pickup) + (beat - intro_beats) % body
        out.append(chorale.chords[offset] if offset < len(chorale.chords) else None)
    return out


def mma_script(plan: SongPlan, chorale: Chorale) -> str:
    """The MMA input file: seed, tempo, groove, transposition and one line per bar."""
    lines = [
        "// generated by modeling_mscl.corpora.synthetic",
        f"RndSeed {plan.seed}",  # MMA randomises timing/velocity; a seed makes it repeatable
        f"Tempo {plan.tempo:g}",
        f"Groove {plan.groove}",
        f"Transpose {plan.transpose}",
    ]
    chords, previous = _song_chords(plan, chorale), None
    if chords[0] is None:  # MMA needs a chord on the first beat
        chords[0] = next((c for c in chords if c), "C")
    for bar in range(plan.bars):
        tokens = []
        for c in chords[bar * _BEATS_PER_BAR : (bar + 1) * _BEATS_PER_BAR]:
            tokens.append("/" if c is None or c == previous else c)
            previous = c or previous
        lines.append(" ".join(tokens))
    return "\n".join(lines) + "\n"


def _mma_executable() -> str:
    exe = shutil.which("mma")
    if exe is None:
        raise FileNotFoundError(
            "the MMA arranger is missing: apt-get install mma (make system-deps)"
        )
    return exe


@lru_cache(maxsize=1)
def ensure_mma_groove_index() -> None:
    """Build MMA's groove index (``mma -G``) if no library folder has one yet.

    Only plain groove names ("Swing") need it; the recipe's "file:Groove" names do not.
    """
    exe = _mma_executable()
    roots = [
        Path(exe).resolve().parent.parent / "share" / "mma" / "lib",
        Path("/usr/share/mma/lib"),
    ]
    if any((r / "stdlib" / ".mmaDB").is_file() for r in roots):
        return
    done = subprocess.run([exe, "-G"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(
            f"'mma -G' failed (needs write access to MMA's library): {done.stdout}{done.stderr}"
        )


def run_mma(script: str) -> Any:
    """Run MMA on ``script``; returns the accompaniment as a ``pretty_midi.PrettyMIDI``."""
    import pretty_midi

    groove_line = next((ln for ln in script.splitlines() if ln.startswith("Groove ")), "")
    if ":" not in groove_line:
        ensure_mma_groove_index()
    with tempfile.TemporaryDirectory(prefix="mscl-mma-") as tmp:
        src, mid = Path(tmp) / "song.mma", Path(tmp) / "song.mid"
        src.write_text(script)
        done = subprocess.run(
            [_mma_executable(), str(src), "-f", str(mid)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0 or not mid.is_file():
            raise RuntimeError(f"MMA failed: {done.stdout}{done.stderr}\n--- input:\n{script}")
        return pretty_midi.PrettyMIDI(str(mid))


def arrange_song(plan: SongPlan, chorale: Chorale) -> Any:
    """MMA accompaniment + the chorale's voices, sections applied: a ``PrettyMIDI``."""
    import pretty_midi

    midi = run_mma(mma_script(plan, chorale))
    table = gm_programs()
    beat = 60.0 / plan.tempo
    kept, harmony_seen = [], 0
    for inst in midi.instruments:
        kind = inst.name.split("-")[0].upper()
        if inst.is_drum:
            inst.program, inst.name = plan.drum_kit, "Drums"
        elif kind in ("BASS", "WALK"):
            if plan.chorale_bass:
                continue  # the chorale's own bass line replaces the groove's
            inst.program, inst.name = plan.bass_program, "Bass"
        else:
            # Neutral names: an MMA track called e.g. "Solo-Lead" must not become vocals.
            harmony_seen += 1
            invalid = (
                inst.program in BASS_PROGRAMS
                or inst.program in VOICE_PROGRAMS
                or table[inst.program].family is None
            )
            if invalid or (harmony_seen == 1 and plan.replace_main_harmony):
                inst.program = plan.harmony_program
            inst.name = f"Harmony {harmony_seen}"
        kept.append(inst)
    midi.instruments = kept

    start = plan.intro_bars * _BEATS_PER_BAR - chorale.pickup  # song beat of chorale beat 0
    body = math.ceil((chorale.beats - chorale.pickup) / _BEATS_PER_BAR) * _BEATS_PER_BAR
    repeats = math.ceil((plan.bars * _BEATS_PER_BAR - start) / body)
    rng = np.random.default_rng(plan.seed)
    parts = [("Vocals", plan.vocal_program, (0,), 0, 96)]
    if plan.inner_program is not None:
        parts.append(("Inner voices", plan.inner_program, (1, 2), 0, 72))
    if plan.chorale_bass:
        parts.append(("Bass", plan.bass_program, (3,), -12, 90))
    for name, program, voice_ids, octave, velocity in parts:
        inst = pretty_midi.Instrument(program=program, name=name)
        for r in range(repeats):
            for v in voice_ids:
                for onset, dur, pitch in chorale.voices[v]:
                    t0 = (start + r * body + onset) * beat
                    if t0 < 0 or t0 >= plan.seconds:
                        continue
                    vel = int(np.clip(velocity + rng.integers(-8, 9), 1, 127))
                    note_pitch = int(np.clip(pitch + plan.transpose + octave, 0, 127))
                    inst.notes.append(pretty_midi.Note(vel, note_pitch, t0, t0 + dur * beat * 0.95))
        midi.instruments.append(inst)
    _apply_tacet(midi, plan)
    return midi


def _apply_tacet(midi: Any, plan: SongPlan) -> None:
    """Silence stems inside their tacet sections: drop the notes that start there and
    cut the ones that would ring into them."""
    bar = _BEATS_PER_BAR * 60.0 / plan.tempo
    groups = assign_stems(midi.instruments)
    for first, last, stems in plan.tacet:
        t0, t1 = first * bar, last * bar
        for stem in stems:
            for inst in groups[stem]:
                notes = [n for n in inst.notes if not t0 <= n.start < t1]
                for n in notes:
                    if n.start < t0 < n.end:
                        n.end = t0
                inst.notes = notes


def _active_level(wav: np.ndarray, sr: int) -> float:
    """Mean absolute amplitude over the 100 ms frames within 40 dB of the loudest frame.

    The same statistic as the presence rule (mean absolute amplitude), so that levelling
    keeps a playing source clearly above the presence threshold. 0 for silence.
    """
    hop = sr // 10
    frames = np.abs(wav[: len(wav) // hop * hop].reshape(-1, hop)).mean(axis=1)
    if frames.size == 0 or frames.max() <= 0:
        return 0.0
    return float(frames[frames > frames.max() * 0.01].mean())


def _song_job(job: dict) -> dict:
    """Arrange, render and write one song (worker); resumable via its ``meta.json``."""
    plan = SongPlan(**job["plan"])
    track_dir = Path(job["out"]) / "audio" / plan.track_id
    meta_path = track_dir / "meta.json"
    files = track_files(track_dir, job["ext"])
    if meta_path.is_file() and all(p.is_file() for p in files.values()):
        return json.loads(meta_path.read_text())["row"]
    sr = job["sr"]
    chorale = extract_chorale(plan.chorale)
    midi = arrange_song(plan, chorale)
    n = int(round(plan.seconds * sr))
    rendered = {
        stem: render_instruments(insts, job["soundfont"], sr, n)
        for stem, insts in assign_stems(midi.instruments).items()
    }
    # Level each stem over the parts where it plays, so that a present source is
    # clearly audible; then one common gain for all (mix_stems).
    gains = {}
    for stem, wav in rendered.items():
        level = _active_level(wav, sr)
        gains[stem] = _LEVEL * 10 ** (plan.gains_db[stem] / 20) / level if level > 0 else 1.0
    mixture, stems = mix_stems(rendered, gains=gains)
    row = {
        "track_id": plan.track_id,
        **write_track(track_dir, mixture, stems, sr, job["ext"]),
        "genre": plan.genre,
        "instruments": instrument_labels(midi.instruments, until=plan.seconds),
        "source": f"music21:{plan.chorale}",
        "duration": n / sr,
    }
    midi.write(str(track_dir / "arrangement.mid"))
    write_json_atomic(meta_path, {"row": row, "plan": asdict(plan)}, indent=1, sort_keys=True)
    return row


def build_synthetic_corpus(
    out: str | os.PathLike,
    num_songs: int = 200,
    seconds: float = 30.0,
    seed: int = 0,
    soundfont: str | os.PathLike | None = None,
    num_workers: int = 2,
    recipe: str | os.PathLike | Recipe | None = None,
    ext: str = "flac",
) -> Any:
    """Build the multitrack corpus: ``out/audio/song_XXXXX/`` and the ``DatasetDict`` ``out/songs``.

    Each song folder holds ``mixture``, ``vocals``, ``drums``, ``bass``, ``other``
    (16 kHz mono, 16-bit ``ext``), the arranged ``arrangement.mid`` and ``meta.json``
    (its row and full plan; written last, it marks the song as done, so an
    interrupted build resumes where it stopped). Returns the ``DatasetDict``.
    """
    out = Path(out).resolve()
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    rec = replace(rec, chorales=available_chorales(rec.chorales))
    sf = resolve_soundfont(soundfont)
    plans = plan_songs(rec, num_songs, seconds, seed)
    jobs = [
        dict(plan=asdict(p), out=str(out), soundfont=str(sf), sr=rec.sampling_rate, ext=ext)
        for p in plans
    ]
    started = time.perf_counter()
    rows = run_jobs(_song_job, jobs, num_workers, "Rendering songs")
    by_split: dict[str, list[dict]] = {}
    for plan, row in zip(plans, rows, strict=True):
        # From the plan, so that songs rendered before this label existed get it too.
        by_split.setdefault(plan.split, []).append({**row, "tempo": tempo_band(plan.tempo)})
    sizes = "/".join(str(len(by_split.get(s, []))) for s in ("train", "validation", "test"))
    card = TRACK_CARD.format(
        title="MSCL synthetic multitrack corpus",
        intro=(
            f"{num_songs} songs of {seconds:g} s (seed {seed}): Bach chorales from music21's "
            "corpus (soprano = vocals, alto + tenor = an inner instrument) arranged by MMA in "
            f"{len(rec.styles)} styles, the genre labels. Sections silence stems (vocals in "
            "the intro, drums in breaks, ...). Recipe: `data/synthetic_styles.yaml`; every "
            "song's plan is in `audio/<track_id>/meta.json`, its MIDI in `arrangement.mid`. "
            f"`tempo`: ClassLabel of the song's tempo band {[n for n, _ in TEMPO_BANDS]}."
        ),
        sizes=sizes,
        split_unit="song, stratified by genre (seeded); a chorale never crosses splits",
        sr=rec.sampling_rate,
        ext=ext.upper(),
        genres=rec.genres,
        classes=list(INSTRUMENT_CLASSES),
        n_classes=len(INSTRUMENT_CLASSES),
        soundfont=sf.name,
    )
    from datasets import ClassLabel

    features = track_features(rec.genres)
    features["tempo"] = ClassLabel(names=[name for name, _ in TEMPO_BANDS])
    dd = save_dataset_dict(by_split, features, out / "songs", card)
    logger.info("rendered %d songs in %.1f s", num_songs, time.perf_counter() - started)
    return dd


def build_default_corpus(
    out: str | os.PathLike,
    num_songs: int = 200,
    seconds: float = 30.0,
    seed: int = 0,
    soundfont: str | os.PathLike | None = None,
    num_workers: int = 2,
    notes: bool = True,
    ext: str = "flac",
) -> dict[str, Any]:
    """The package's embedded default: the song corpus and the note set under ``out``.

    Layout: ``out/songs`` and ``out/notes`` (``DatasetDict`` folders with a README.md
    card), ``out/audio/<track_id>/``, ``out/note_audio/<program>/`` and
    ``out/build_report.json`` (settings, timings, sizes). Returns
    ``{"songs": DatasetDict, "notes": DatasetDict}`` (``notes`` absent when skipped).
    """
    out = Path(out).resolve()
    recipe = load_recipe()
    report: dict[str, Any] = dict(
        num_songs=num_songs,
        seconds=seconds,
        seed=seed,
        num_workers=num_workers,
        soundfont=str(resolve_soundfont(soundfont)),
        recipe=recipe.path,
    )
    t0 = time.perf_counter()
    result = {
        "songs": build_synthetic_corpus(
            out, num_songs, seconds, seed, soundfont, num_workers, recipe, ext
        )
    }
    report["songs_seconds"] = round(time.perf_counter() - t0, 1)
    if notes:
        t0 = time.perf_counter()
        result["notes"] = build_note_set(out, soundfont, seed, num_workers, ext=ext)
        report["notes_seconds"] = round(time.perf_counter() - t0, 1)
    report["sizes"] = {k: {s: len(d) for s, d in v.items()} for k, v in result.items()}
    write_json_atomic(out / "build_report.json", report, indent=1, sort_keys=True)
    return result
