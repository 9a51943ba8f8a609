"""Render MIDI into a 16 kHz mono mixture and four stems with a General MIDI SoundFont.

The pieces shared by the offline corpora: the General MIDI program table
(``data/gm_programs.csv``: name, NSynth family, NSynth source of each program), the
stem assignment rules, a FluidSynth renderer, the common-gain mixer, and the helpers
that turn rendered tracks into a ``datasets.DatasetDict`` with a data card.
:func:`build_midi_folder_corpus` renders a user's folder of MIDI files.

FluidSynth is reached through ``pyfluidsynth`` (extra ``corpus``) and the system
library ``libfluidsynth3``; both are imported lazily so that the rest of the package
works without them.
"""

from __future__ import annotations

import csv
import ctypes
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json_atomic
from ..audio_io import write_audio
from ..package_data import resource_dir
from .nsynth import NSYNTH_FAMILIES, NSYNTH_SOURCES

logger = logging.getLogger("modeling_mscl.corpora")

__all__ = [
    "BASS_PROGRAMS",
    "DATA_DIR",
    "INSTRUMENT_CLASSES",
    "STEMS",
    "VOICE_PROGRAMS",
    "GMProgram",
    "assign_stems",
    "build_midi_folder_corpus",
    "build_note_set",
    "default_soundfont",
    "gm_programs",
    "instrument_labels",
    "load_note_config",
    "mix_stems",
    "render_instruments",
    "render_midi",
    "render_notes",
    "resolve_soundfont",
]

STEMS = ("vocals", "drums", "bass", "other")
# The multi-hot label space of the corpora: NSynth's 11 families (same order and index
# as the NSynth loader) plus one class for the drum kit, which NSynth lacks.
INSTRUMENT_CLASSES = (*NSYNTH_FAMILIES, "drums")
BASS_PROGRAMS = frozenset(range(32, 40))  # GM "Bass" group, 0-based programs 32-39
VOICE_PROGRAMS = frozenset({52, 53, 54, 85})  # Choir Aahs, Voice Oohs, Synth Voice, Lead 6 (voice)
_VOCAL_NAME = re.compile(r"vocal|voice|vox|melody|lead", re.IGNORECASE)
# Bank select would switch to banks a GM SoundFont may lack; the program is set explicitly.
_IGNORED_CONTROLLERS = frozenset({0, 32})
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
) -> np.ndarray:
    """Render ``pretty_midi.Instrument`` objects together into one mono float32 waveform.

    A fresh synthesiser per call keeps the result independent of earlier calls (the
    reverb and chorus hold state), so renders are deterministic in any order.
    ``num_samples`` defaults to the last note-off plus one second of release.
    ``effects=False`` turns FluidSynth's reverb and chorus off (dry notes).
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
        samplerate=sampling_rate, **{"synth.reverb.active": flag, "synth.chorus.active": flag}
    )
    try:
        sfid = synth.sfload(str(soundfont))
        if sfid < 0:
            raise ValueError(f"FluidSynth could not load the SoundFont {soundfont}")
        events = _schedule(synth, sfid, instruments, sampling_rate)
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
) -> list[np.ndarray]:
    """Render single notes ``(pitch, velocity)`` of one GM program, dry, one after another.

    Each note is held ``hold`` seconds inside a ``seconds`` window; all sound is cut at
    the end of a window so nothing leaks into the next. One synthesiser serves the
    whole list (loading the SoundFont dominates the cost of a note); the output for a
    given list is deterministic. Returns one float32 array (seconds * rate,) per note.
    """
    fluidsynth = _import_fluidsynth()
    n, held = int(round(seconds * sampling_rate)), int(round(hold * sampling_rate))
    synth = fluidsynth.Synth(
        samplerate=sampling_rate, **{"synth.reverb.active": 0, "synth.chorus.active": 0}
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


def _schedule(synth: Any, sfid: int, instruments: Sequence[Any], sr: int) -> list[tuple]:
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
        # Priority at equal times: note-offs, then controllers, then note-ons, so a
        # repeated pitch is retriggered and a volume change precedes the next note.
        for cc in inst.control_changes:
            if cc.number not in _IGNORED_CONTROLLERS:
                events.append((round(cc.time * sr), 1, synth.cc, (chan, cc.number, cc.value)))
        for bend in inst.pitch_bends:
            events.append((round(bend.time * sr), 1, synth.pitch_bend, (chan, bend.pitch)))
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


# ---------------------------------------------------------------------------
# Building datasets from rendered tracks (shared by the MIDI-folder and synthetic corpora)


def track_files(track_dir: Path, ext: str = "flac") -> dict[str, Path]:
    """Paths of a track's mixture (key ``audio``) and stems inside ``track_dir``."""
    return {"audio": track_dir / f"mixture.{ext}", **{s: track_dir / f"{s}.{ext}" for s in STEMS}}


def write_track(
    track_dir: Path, mixture: np.ndarray, stems: dict[str, np.ndarray], sr: int, ext: str = "flac"
) -> dict[str, str]:
    """Write the mixture and the four stems; returns the absolute paths by column name."""
    files = track_files(track_dir, ext)
    for stem in STEMS:
        write_audio(files[stem], stems[stem], sr)
    write_audio(files["audio"], mixture, sr)
    return {k: str(v.resolve()) for k, v in files.items()}


def split_sizes(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """Sizes of train/validation/test for ``n`` items; each gets one item once n >= 3."""
    if n < 3:
        return n, 0, 0
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    return n - n_val - n_test, n_val, n_test


def assign_splits(keys: Sequence[str], seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, str]:
    """Seeded split of the distinct ``keys`` (e.g. compositions) into train/validation/test."""
    unique = sorted(set(keys))
    order = np.random.default_rng([seed, 7]).permutation(len(unique))
    n_train, n_val, _ = split_sizes(len(unique), fractions)
    names = ["train"] * n_train + ["validation"] * n_val
    names += ["test"] * (len(unique) - len(names))
    return {unique[i]: names[rank] for rank, i in enumerate(order)}


def save_dataset_dict(
    rows_by_split: dict[str, list[dict]], features: Any, out: Path, card: str
) -> Any:
    """Build the ``DatasetDict`` (all three splits, possibly empty), save it with a card."""
    from datasets import Dataset, DatasetDict

    dd = DatasetDict()
    for split in ("train", "validation", "test"):
        rows = sorted(rows_by_split.get(split, []), key=lambda r: r["track_id"])
        dd[split] = Dataset.from_dict(
            {k: [r[k] for r in rows] for k in features}, features=features
        )
    out.mkdir(parents=True, exist_ok=True)
    # One shard per split: datasets 5.2 writes an empty split as zero shards, which
    # load_from_disk then fails to read.
    dd.save_to_disk(str(out), num_shards={split: 1 for split in dd})
    (out / "README.md").write_text(card)
    return dd


def run_jobs(fn: Callable, jobs: Sequence[Any], num_workers: int, desc: str) -> list[Any]:
    """``[fn(job) for job in jobs]`` over ``num_workers`` processes, with a progress bar."""
    from tqdm.auto import tqdm

    if num_workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc, unit="item")]
    import multiprocessing as mp

    # fork where there is one: spawn re-imports __main__, which fails for code run from
    # stdin or a notebook. Safe here because the parent never starts FluidSynth or MMA;
    # every job builds its own synthesiser.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(num_workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=1), total=len(jobs), desc=desc, unit="item"))


def track_features(genres: Sequence[str]) -> Any:
    """Features of the corpus track rows (shared schema of the multitrack corpora)."""
    from datasets import ClassLabel, Features, List, Value

    return Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            **{s: Value("string") for s in STEMS},
            "genre": ClassLabel(names=list(genres)),
            "instruments": List(ClassLabel(names=list(INSTRUMENT_CLASSES))),
            "source": Value("string"),
            "duration": Value("float32"),
        }
    )


TRACK_CARD = """# {title}

{intro}

- rows: one per track; splits {sizes} (train/validation/test), split by {split_unit}
- `audio`: absolute path of the mixture, {sr} Hz mono 16-bit {ext}; `vocals`, `drums`,
  `bass`, `other`: the stems (a stem silent for the whole track is a file of zeros).
  The mixture is exactly the sum of the four stem files: each stem is rounded to the
  16-bit grid before summing, after one common gain that keeps every file under 0.95.
- `genre`: ClassLabel {genres}
- `instruments`: list of ClassLabel indices of the instrument classes that play in the
  track, the 11 NSynth families plus drums: {classes}. For a multi-hot matrix use
  `modeling_mscl.corpora.multi_hot(ds["instruments"], {n_classes})`.
- `source`: what the track was rendered from; `duration`: seconds
- stems from General MIDI: drums = channel 10, bass = programs 32-39, vocals = voice
  programs 52-54/85 or a track named vocal/voice/vox/melody/lead, other = the rest
- SoundFont: {soundfont}; rendered with FluidSynth (reverb and chorus on)
"""


def _midi_job(job: dict) -> dict:
    """Render one MIDI file (worker); returns the row, or ``{"error": reason}``."""
    import pretty_midi

    track_dir = Path(job["track_dir"])
    meta_path = track_dir / "meta.json"
    files = track_files(track_dir, job["ext"])
    if meta_path.is_file() and all(p.is_file() for p in files.values()):
        return json.loads(meta_path.read_text())
    try:
        midi = pretty_midi.PrettyMIDI(job["path"])
    except Exception as err:  # mido/pretty_midi raise many types (OSError, EOFError, KeyError...)
        return {"error": f"unreadable MIDI ({type(err).__name__}: {err})", "path": job["path"]}
    if not any(inst.notes for inst in midi.instruments):
        return {"error": "no notes", "path": job["path"]}
    seconds = job["seconds"]
    if seconds is None or seconds <= 0:
        seconds = midi.get_end_time() + 1.0
    mixture, stems, labels = render_midi(midi, job["soundfont"], job["sr"], seconds)
    if not np.any(mixture):
        return {"error": "rendered silence (no preset or no audible note)", "path": job["path"]}
    row = {
        "track_id": job["track_id"],
        **write_track(track_dir, mixture, stems, job["sr"], job["ext"]),
        "genre": job["genre"],
        "instruments": labels,
        "source": job["path"],
        "duration": len(mixture) / job["sr"],
    }
    write_json_atomic(meta_path, row, indent=1, sort_keys=True)
    return row


def build_midi_folder_corpus(
    midi_dir: str | os.PathLike,
    out: str | os.PathLike,
    soundfont: str | os.PathLike | None = None,
    seconds: float | None = None,
    seed: int = 0,
    num_workers: int = 2,
    sampling_rate: int = 16000,
    ext: str = "flac",
) -> Any:
    """Render every ``.mid``/``.midi`` file under ``midi_dir`` into mixture + 4 stems.

    ``genre`` is the first sub-folder below ``midi_dir`` ("unknown" for files directly
    in it); ``seconds`` cuts each file (``None``: whole file). Unreadable files are
    skipped and listed in ``out/report.json``. Splits are seeded, by file. Resumable:
    finished tracks (their ``meta.json``) are not rendered again.
    Layout: ``out/audio/<track_id>/{mixture,vocals,drums,bass,other}.<ext>`` and the
    ``DatasetDict`` in ``out/tracks``. Returns the ``DatasetDict``.
    """
    midi_dir, out = Path(midi_dir).resolve(), Path(out).resolve()
    sf = resolve_soundfont(soundfont)
    paths = sorted(p for p in midi_dir.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not paths:
        raise FileNotFoundError(f"no .mid/.midi files under {midi_dir}")
    jobs = []
    for p in paths:
        rel = p.relative_to(midi_dir).with_suffix("")
        track_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(rel.parts))
        jobs.append(
            dict(
                path=str(p),
                track_id=track_id,
                track_dir=str(out / "audio" / track_id),
                genre=_genre_of(p, midi_dir),
                soundfont=str(sf),
                seconds=seconds,
                sr=sampling_rate,
                ext=ext,
            )
        )
    results = run_jobs(_midi_job, jobs, num_workers, "Rendering MIDI")
    rows = [r for r in results if "error" not in r]
    skipped = [r for r in results if "error" in r]
    write_json_atomic(
        out / "report.json", {"rendered": len(rows), "skipped": skipped}, indent=1, sort_keys=True
    )
    if skipped:
        logger.warning("skipped %d MIDI file(s); see %s", len(skipped), out / "report.json")
    if not rows:
        raise ValueError(
            f"none of the {len(paths)} MIDI files could be rendered; see {out}/report.json"
        )
    # Genre names come from the files that rendered; rows hold the name until here.
    genres = sorted({r["genre"] for r in rows})
    split_of = assign_splits([r["track_id"] for r in rows], seed)
    by_split: dict[str, list[dict]] = {}
    for r in rows:
        by_split.setdefault(split_of[r["track_id"]], []).append(
            {**r, "genre": genres.index(r["genre"])}
        )
    sizes = "/".join(str(len(by_split.get(s, []))) for s in ("train", "validation", "test"))
    card = TRACK_CARD.format(
        title=f"MIDI folder corpus rendered from {midi_dir.name}",
        intro=f"Rendered from the MIDI files under `{midi_dir}` "
        f"({len(skipped)} unreadable or silent files skipped, see `../report.json`).",
        sizes=sizes,
        split_unit="file (seeded)",
        sr=sampling_rate,
        ext=ext.upper(),
        genres=genres,
        classes=list(INSTRUMENT_CLASSES),
        n_classes=len(INSTRUMENT_CLASSES),
        soundfont=sf.name,
    )
    return save_dataset_dict(by_split, track_features(genres), out / "tracks", card)


def _genre_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "unknown"


# ---------------------------------------------------------------------------
# The NSynth-like note set


def load_note_config(path: str | os.PathLike | None = None) -> dict:
    """Settings of the note set from ``data/note_set.yaml`` (or ``path``)."""
    import yaml

    path = Path(path) if path is not None else DATA_DIR / "note_set.yaml"
    cfg = yaml.safe_load(Path(path).read_text())
    missing = {
        "sampling_rate",
        "seconds",
        "hold",
        "velocities",
        "pitches_per_program",
        "gain",
        "range",
    } - set(cfg)
    if missing:
        raise ValueError(f"{path}: missing settings {sorted(missing)}")
    if set(cfg["range"]) != set(NSYNTH_FAMILIES):
        raise ValueError(f"{path}: 'range' needs one [low, high] for each of {NSYNTH_FAMILIES}")
    return cfg


def _note_job(job: dict) -> list[dict]:
    """Render the notes of one program (worker); skipped when all its files exist."""
    notes, sr = job["notes"], job["sr"]
    if all(Path(note["audio"]).is_file() for note in notes):
        return notes
    # The whole program is rendered again on resume: one synthesiser plays the notes in
    # order, so a note's samples depend on that order (and stay deterministic).
    waves = render_notes(
        job["program"],
        [(note["pitch"], note["velocity"]) for note in notes],
        job["soundfont"],
        sr,
        job["seconds"],
        job["hold"],
    )
    rows = []
    for note, wav in zip(notes, waves, strict=True):
        wav = job["gain"] * wav
        peak = float(np.abs(wav).max())
        if peak < 1e-4:  # the preset has no sample at this key
            continue
        if peak > 0.99:
            wav *= 0.99 / peak
        write_audio(note["audio"], wav, sr)
        rows.append(note)
    return rows


def build_note_set(
    out: str | os.PathLike,
    soundfont: str | os.PathLike | None = None,
    seed: int = 0,
    num_workers: int = 2,
    config: str | os.PathLike | dict | None = None,
    ext: str = "flac",
    programs: list[int] | None = None,
) -> Any:
    """Render single notes of the GM programs with an NSynth family into ``out/notes``.

    Within each family the programs are split (seeded) into train/validation/test, so
    no program is in two splits; ``programs`` restricts the set (tests). Audio in
    ``out/note_audio/<program>/``; silent renders are left out. ``config``: the
    settings of ``data/note_set.yaml`` (a path or the parsed dict). Returns the ``DatasetDict``.
    """
    from datasets import ClassLabel, Features, Value

    out = Path(out).resolve()
    cfg = config if isinstance(config, dict) else load_note_config(config)
    sf = resolve_soundfont(soundfont)
    sr = int(cfg["sampling_rate"])
    table = gm_programs()
    jobs, split_of = [], {}
    for fam_id, family in enumerate(NSYNTH_FAMILIES):
        members = [p.program for p in table if p.family == family]
        if programs is not None:
            members = [p for p in members if p in programs]
        order = np.random.default_rng([seed, 3, fam_id]).permutation(members).tolist()
        n_train, n_val, _ = split_sizes(len(order), (0.7, 0.15, 0.15))
        for rank, prog in enumerate(order):
            split_of[prog] = (
                "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            )
        lo, hi = cfg["range"][family]
        pitches = sorted({int(round(x)) for x in np.linspace(lo, hi, cfg["pitches_per_program"])})
        for prog in members:
            gm = table[prog]
            notes = [
                {
                    "track_id": f"{family}_{prog:03d}-{pitch:03d}-{vel:03d}",
                    "audio": str(
                        out / "note_audio" / f"{prog:03d}" / f"{pitch:03d}-{vel:03d}.{ext}"
                    ),
                    "label": fam_id,
                    "pitch": pitch,
                    "velocity": vel,
                    "program": prog,
                    "instrument": gm.name,
                    "instrument_source": NSYNTH_SOURCES.index(gm.source),
                }
                for pitch in pitches
                for vel in cfg["velocities"]
            ]
            jobs.append(
                dict(
                    notes=notes,
                    program=prog,
                    soundfont=str(sf),
                    sr=sr,
                    hold=float(cfg["hold"]),
                    seconds=float(cfg["seconds"]),
                    gain=float(cfg["gain"]),
                )
            )
    results = run_jobs(_note_job, jobs, num_workers, "Rendering notes")
    by_split: dict[str, list[dict]] = {}
    for rows in results:
        for row in rows:
            by_split.setdefault(split_of[row["program"]], []).append(row)
    features = Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            "label": ClassLabel(names=list(NSYNTH_FAMILIES)),
            "pitch": Value("int32"),
            "velocity": Value("int32"),
            "instrument_source": ClassLabel(names=list(NSYNTH_SOURCES)),
            "instrument": Value("string"),
            "program": Value("int32"),
        }
    )
    sizes = "/".join(str(len(by_split.get(s, []))) for s in ("train", "validation", "test"))
    progs = {s: sorted(p for p, v in split_of.items() if v == s) for s in ("validation", "test")}
    card = NOTE_CARD.format(
        sizes=sizes,
        sr=sr,
        ext=ext.upper(),
        families=list(NSYNTH_FAMILIES),
        cfg=cfg,
        soundfont=sf.name,
        val=progs["validation"],
        test=progs["test"],
    )
    return save_dataset_dict(by_split, features, out / "notes", card)


NOTE_CARD = """# MSCL synthetic note set (NSynth-like)

Single notes of every General MIDI program that has an NSynth instrument family
(`data/gm_programs.csv`), rendered dry (no reverb/chorus) with FluidSynth.

- rows: one per note; splits {sizes} (train/validation/test), split by GM program
  within each family (seeded), so no program is in two splits;
  validation programs {val}; test programs {test}
- `audio`: absolute path, {sr} Hz mono 16-bit {ext}, {cfg[seconds]} s (held {cfg[hold]} s,
  then the release); one fixed gain ({cfg[gain]}) for all notes, so velocity shows in the level
- `label`: ClassLabel of NSynth's families {families}
- `pitch`, `velocity` (MIDI), `program` (GM, 0-based), `instrument` (GM name),
  `instrument_source` (acoustic/electronic/synthetic, from the GM table)
- pitches: {cfg[pitches_per_program]} per program spread over the family's range; velocities
  {cfg[velocities]}; notes that render silent are left out
- SoundFont: {soundfont}. Same columns as `modeling_mscl.corpora.load_nsynth` (plus `program`).
"""
