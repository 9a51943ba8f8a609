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
from .production import CorpusDiversity, StemProduction, apply_eq
from .rendered_tracks import (
    TRACK_CARD,
    run_jobs,
    save_dataset_dict,
    track_features,
    track_files,
    write_track,
)
from .song_plans import (
    TEMPO_BANDS,
    Recipe,
    SongPlan,
    diversify_plans,
    load_recipe,
    plan_songs,
    tempo_band,
)
from .soundfonts import SOUNDFONTS, resolve_soundfonts

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
    soundfont = job["soundfonts"][plan.soundfont] if plan.soundfont else job["soundfont"]
    rendered = {}
    for stem, insts in assign_stems(midi.instruments).items():
        prod = plan.production.get(stem)
        if not prod:  # the single-SoundFont corpus: renders as it always did
            rendered[stem] = render_instruments(insts, soundfont, sr, n)
            continue
        prod = StemProduction(**prod)
        wav = render_instruments(
            insts,
            soundfont,
            sr,
            n,
            # Samples load when a preset is chosen: a large (or compressed .sf3)
            # SoundFont costs what the song uses, not the whole file, per stem.
            settings={**prod.synth_settings(), "synth.dynamic-sample-loading": 1},
            controllers=prod.controllers(),
            detune_cents=prod.detune_cents,
        )
        rendered[stem] = apply_eq(wav, prod.eq_low_db, prod.eq_high_db, sr)
    # Level each stem over the parts where it plays, so that a present source is
    # clearly audible; then one common gain for all (mix_stems).
    gains = {}
    for stem, wav in rendered.items():
        level = _active_level(wav, sr)
        db = plan.gains_db[stem] + plan.production.get(stem, {}).get("gain_db", 0.0)
        gains[stem] = _LEVEL * 10 ** (db / 20) / level if level > 0 else 1.0
    mixture, stems = mix_stems(rendered, gains=gains)
    row = {
        "track_id": plan.track_id,
        **write_track(track_dir, mixture, stems, sr, job["ext"]),
        "genre": plan.genre,
        "instruments": instrument_labels(midi.instruments, until=plan.seconds),
        "source": f"music21:{plan.chorale}",
        "duration": n / sr,
    }
    if plan.soundfont:
        row["soundfont"] = plan.soundfont
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
    diversity: CorpusDiversity | None = None,
) -> Any:
    """Build the multitrack corpus: ``out/audio/song_XXXXX/`` and the ``DatasetDict`` ``out/songs``.

    Each song folder holds ``mixture``, ``vocals``, ``drums``, ``bass``, ``other``
    (16 kHz mono, 16-bit ``ext``), the arranged ``arrangement.mid`` and ``meta.json``
    (its row and full plan; written last, it marks the song as done, so an
    interrupted build resumes where it stopped). Returns the ``DatasetDict``.

    ``diversity`` (:class:`~.production.CorpusDiversity`): SoundFonts drawn per song
    (then ``soundfont`` is unused), per-stem production, wider tempo and key ranges, a
    held-out SoundFont whose songs form the ``test_ood`` split, and a ``soundfont``
    column. ``None`` (or all options off) builds the single-SoundFont corpus.
    """
    out = Path(out).resolve()
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    rec = replace(rec, chorales=available_chorales(rec.chorales))
    diverse = diversity is not None and diversity.active
    fonts = resolve_soundfonts(diversity.soundfonts) if diverse and diversity.soundfonts else {}
    sf = resolve_soundfont(soundfont)
    plans = plan_songs(rec, num_songs, seconds, seed)
    if diverse:
        diversify_plans(plans, rec, diversity, seed)
    named = {k: str(v) for k, v in fonts.items()}
    jobs = [
        dict(
            plan=asdict(p),
            out=str(out),
            soundfont=str(sf),
            soundfonts=named,
            sr=rec.sampling_rate,
            ext=ext,
        )
        for p in plans
    ]
    started = time.perf_counter()
    rows = run_jobs(_song_job, jobs, num_workers, "Rendering songs")
    by_split: dict[str, list[dict]] = {}
    for plan, row in zip(plans, rows, strict=True):
        # From the plan, so that songs rendered before this label existed get it too.
        by_split.setdefault(plan.split, []).append({**row, "tempo": tempo_band(plan.tempo)})
    sizes = "/".join(str(len(by_split.get(s, []))) for s in ("train", "validation", "test"))
    if "test_ood" in by_split:
        sizes += f" + {len(by_split['test_ood'])} test_ood"
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
        soundfont=sf.name if not fonts else "per song, see below",
    )
    if diverse:
        card += diversity_card(diversity, fonts, plans)
    from datasets import ClassLabel, Value

    features = track_features(rec.genres)
    features["tempo"] = ClassLabel(names=[name for name, _ in TEMPO_BANDS])
    if fonts:
        features["soundfont"] = Value("string")
    dd = save_dataset_dict(by_split, features, out / "songs", card)
    logger.info("rendered %d songs in %.1f s", num_songs, time.perf_counter() - started)
    return dd


def diversity_card(diversity: CorpusDiversity, fonts: dict[str, Path], plans: list) -> str:
    """The corpus card's section on SoundFonts and production (a diverse corpus)."""
    d = diversity
    lines = ["", "## Timbre and production diversity", ""]
    if fonts:
        lines.append("SoundFonts (drawn per song, seeded; `soundfont` column):")
        for name, path in fonts.items():
            count = sum(p.soundfont == name for p in plans)
            known = SOUNDFONTS.get(name)
            pkg = f", Debian package `{known.package}`" if known else ""
            role = (
                " **held out: its songs are only in `test_ood`**"
                if name == d.held_out_soundfont
                else ""
            )
            lines.append(f"- `{name}` ({path.name}{pkg}): {count} songs{role}")
        lines.append("")
    if d.held_out_soundfont is not None:
        lines.append(
            f"Held out: {d.held_out_share:.0%} of the songs (seeded) use `{d.held_out_soundfont}` "
            "and form the `test_ood` split; no train, validation or test song uses it. The "
            f"other songs are split {'/'.join(f'{x:g}' for x in d.split_fractions)} within "
            "each style."
        )
        lines.append("")
    lines.append(
        "Production, drawn per stem and song (uniform in each range), applied to each stem "
        "before mixing (the mixture stays the sum of the stems):"
    )
    lines.append(
        f"- shelving EQ: low shelf 250 Hz and high shelf 3 kHz, each {d.eq_db[0]:g} to "
        f"{d.eq_db[1]:g} dB"
    )
    lines.append(
        f"- reverb: send (controller 91) {d.reverb_send[0]}-{d.reverb_send[1]}, room size "
        f"{d.reverb_room[0]:g}-{d.reverb_room[1]:g}; chorus: send (controller 93) "
        f"{d.chorus_send[0]}-{d.chorus_send[1]}, depth {d.chorus_depth_ms[0]:g}-"
        f"{d.chorus_depth_ms[1]:g} ms"
    )
    lines.append(
        f"- gain {d.gain_db[0]:g} to {d.gain_db[1]:g} dB on top of the levelling; detune "
        f"{d.detune_cents[0]:g} to {d.detune_cents[1]:g} cents (melodic stems)"
    )
    tempo = (
        f"each style's tempo range stretched by ±{d.tempo_stretch:.0%}"
        if d.tempo_stretch
        else "the styles' tempo ranges"
    )
    key = (
        f"transposition {d.transpose[0]} to {d.transpose[1]} semitones"
        if d.transpose
        else "the recipe's transposition range"
    )
    lines.append(f"- {tempo}; {key}")
    return "\n".join(lines) + "\n"


def build_default_corpus(
    out: str | os.PathLike,
    num_songs: int = 200,
    seconds: float = 30.0,
    seed: int = 0,
    soundfont: str | os.PathLike | None = None,
    num_workers: int = 2,
    notes: bool = True,
    ext: str = "flac",
    diversity: CorpusDiversity | None = None,
    note_config: str | os.PathLike | dict | None = None,
) -> dict[str, Any]:
    """The package's embedded default: the song corpus and the note set under ``out``.

    Layout: ``out/songs`` and ``out/notes`` (``DatasetDict`` folders with a README.md
    card), ``out/audio/<track_id>/``, ``out/note_audio/<program>/`` and
    ``out/build_report.json`` (settings, timings, sizes). Returns
    ``{"songs": DatasetDict, "notes": DatasetDict}`` (``notes`` absent when skipped).
    ``diversity``: see :func:`build_synthetic_corpus`; the note set is then rendered with
    every SoundFont of it, the held-out one's test programs forming ``test_ood``.
    ``note_config``: the note set's settings (default ``data/note_set.yaml``).
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
    if diversity is not None and diversity.active:
        report["diversity"] = diversity.to_dict()
    t0 = time.perf_counter()
    result = {
        "songs": build_synthetic_corpus(
            out, num_songs, seconds, seed, soundfont, num_workers, recipe, ext, diversity
        )
    }
    report["songs_seconds"] = round(time.perf_counter() - t0, 1)
    if notes:
        t0 = time.perf_counter()
        fonts = diversity.soundfonts if diversity is not None else ()
        held = diversity.held_out_soundfont if diversity is not None else None
        result["notes"] = build_note_set(
            out,
            soundfont,
            seed,
            num_workers,
            config=note_config,
            ext=ext,
            soundfonts=fonts or None,
            held_out=held,
        )
        report["notes_seconds"] = round(time.perf_counter() - t0, 1)
    report["sizes"] = {k: {s: len(d) for s, d in v.items()} for k, v in result.items()}
    write_json_atomic(out / "build_report.json", report, indent=1, sort_keys=True)
    return result
