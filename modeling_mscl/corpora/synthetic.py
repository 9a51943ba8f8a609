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

Modules: :mod:`.chorales` (the chorales, chord names), :mod:`.song_plans` (the recipe
and each song's random choices), :mod:`.arrangement` (MMA and the sections), this one
(rendering, levelling, the ``DatasetDict``). :func:`build_default_corpus` adds the
NSynth-like note set of :func:`.note_set.build_note_set`. Builds are seeded,
deterministic and resumable.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json_atomic
from .arrangement import arrange_song
from .chorales import available_chorales, extract_chorale
from .general_midi import INSTRUMENT_CLASSES, assign_stems, instrument_labels, resolve_soundfont
from .midi_render import mix_stems, render_instruments
from .note_set import build_note_set
from .rendered_tracks import (
    TRACK_CARD,
    run_jobs,
    save_dataset_dict,
    track_features,
    track_files,
    write_track,
)
from .song_plans import TEMPO_BANDS, Recipe, SongPlan, load_recipe, plan_songs, tempo_band

logger = logging.getLogger("modeling_mscl.corpora")

__all__ = [
    "build_default_corpus",
    "build_synthetic_corpus",
]

_LEVEL = 0.05  # mean |amplitude| of a stem at 0 dB before the common gain


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
