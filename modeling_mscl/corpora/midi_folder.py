"""A user's folder of MIDI files rendered into a multitrack corpus (mixture + four stems)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json_atomic
from .general_midi import INSTRUMENT_CLASSES, resolve_soundfont
from .midi_render import render_midi
from .rendered_tracks import (
    TRACK_CARD,
    assign_splits,
    run_jobs,
    save_dataset_dict,
    track_features,
    track_files,
    write_track,
)

logger = logging.getLogger("modeling_mscl.corpora")

__all__ = ["build_midi_folder_corpus"]


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
