"""The NSynth-like note set: single notes of the GM programs that have an NSynth family."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..audio_io import write_audio
from .general_midi import DATA_DIR, gm_programs, resolve_soundfont
from .midi_render import render_notes
from .nsynth import NSYNTH_FAMILIES, NSYNTH_SOURCES
from .rendered_tracks import run_jobs, save_dataset_dict, split_sizes
from .soundfonts import resolve_soundfonts

__all__ = ["NOTE_CARD", "build_note_set", "load_note_config"]


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
        job.get("settings"),
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
    soundfonts: list[str] | tuple[str, ...] | None = None,
    held_out: str | None = None,
) -> Any:
    """Render single notes of the GM programs with an NSynth family into ``out/notes``.

    Within each family the programs are split (seeded) into train/validation/test, so
    no program is in two splits; ``programs`` restricts the set (tests). Audio in
    ``out/note_audio/<program>/``; silent renders are left out. ``config``: the
    settings of ``data/note_set.yaml`` (a path or the parsed dict). Returns the ``DatasetDict``.

    ``soundfonts`` (names or paths, :mod:`.soundfonts`): every program is rendered with
    each of them (audio in ``out/note_audio/<soundfont>/<program>/``, a ``soundfont``
    column; ``soundfont`` is then unused). ``held_out``, one of them: only its test
    programs are rendered, and they form the ``test_ood`` split, so the in-timbre
    ``test`` and ``test_ood`` hold the same programs in other SoundFonts.
    """
    from datasets import ClassLabel, Features, Value

    out = Path(out).resolve()
    cfg = config if isinstance(config, dict) else load_note_config(config)
    if soundfonts:
        fonts = {k: str(v) for k, v in resolve_soundfonts(list(soundfonts)).items()}
        if held_out is not None and held_out not in fonts:
            raise ValueError(f"held_out {held_out!r} is not one of the soundfonts {list(fonts)}")
    elif held_out is not None:
        raise ValueError("held_out needs soundfonts")
    else:
        fonts = {None: str(resolve_soundfont(soundfont))}
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
        for name, sf_path in fonts.items():
            folder = out / "note_audio" if name is None else out / "note_audio" / name
            prefix = "" if name is None else f"{name}/"
            for prog in members:
                if name is not None and name == held_out and split_of[prog] != "test":
                    continue  # the held-out SoundFont is only tested on
                gm = table[prog]
                notes = [
                    {
                        "track_id": f"{prefix}{family}_{prog:03d}-{pitch:03d}-{vel:03d}",
                        "audio": str(folder / f"{prog:03d}" / f"{pitch:03d}-{vel:03d}.{ext}"),
                        "label": fam_id,
                        "pitch": pitch,
                        "velocity": vel,
                        "program": prog,
                        "instrument": gm.name,
                        "instrument_source": NSYNTH_SOURCES.index(gm.source),
                        **({} if name is None else {"soundfont": name}),
                    }
                    for pitch in pitches
                    for vel in cfg["velocities"]
                ]
                jobs.append(
                    dict(
                        notes=notes,
                        program=prog,
                        soundfont=sf_path,
                        sr=sr,
                        hold=float(cfg["hold"]),
                        seconds=float(cfg["seconds"]),
                        gain=float(cfg["gain"]),
                        # Several (large, compressed) SoundFonts: load only the
                        # samples of the program played, not the whole file per job.
                        settings=None if name is None else {"synth.dynamic-sample-loading": 1},
                    )
                )
    results = run_jobs(_note_job, jobs, num_workers, "Rendering notes")
    by_split: dict[str, list[dict]] = {}
    for rows in results:
        for row in rows:
            split = split_of[row["program"]]
            if held_out is not None and row.get("soundfont") == held_out:
                split = "test_ood"
            by_split.setdefault(split, []).append(row)
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
    if None not in fonts:
        features["soundfont"] = Value("string")
    sizes = "/".join(str(len(by_split.get(s, []))) for s in ("train", "validation", "test"))
    if "test_ood" in by_split:
        sizes += f" + {len(by_split['test_ood'])} test_ood"
    progs = {s: sorted(p for p, v in split_of.items() if v == s) for s in ("validation", "test")}
    card = NOTE_CARD.format(
        sizes=sizes,
        sr=sr,
        ext=ext.upper(),
        families=list(NSYNTH_FAMILIES),
        cfg=cfg,
        soundfont=_fonts_line(fonts, held_out),
        val=progs["validation"],
        test=progs["test"],
    )
    return save_dataset_dict(by_split, features, out / "notes", card)


def _fonts_line(fonts: dict, held_out: str | None) -> str:
    if None in fonts:
        return Path(fonts[None]).name
    names = ", ".join(f"`{k}` ({Path(v).name})" for k, v in fonts.items())
    line = f"every program rendered with each of {names} (`soundfont` column)"
    if held_out is not None:
        line += (
            f"; `{held_out}` is held out: only its test programs are rendered, as the "
            "`test_ood` split (no train or validation note uses it)"
        )
    return line


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
