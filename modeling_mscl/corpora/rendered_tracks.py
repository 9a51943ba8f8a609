"""From rendered tracks to a saved ``DatasetDict``: track files, seeded splits, workers, cards.

Shared by the corpora that render MIDI: the MIDI folder (:mod:`.midi_folder`), the
synthetic songs (:mod:`.synthetic`) and the note set (:mod:`.note_set`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..audio_io import write_audio
from .general_midi import INSTRUMENT_CLASSES, STEMS

__all__ = [
    "TRACK_CARD",
    "assign_splits",
    "run_jobs",
    "save_dataset_dict",
    "split_sizes",
    "track_features",
    "track_files",
    "write_track",
]


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
    """Build the ``DatasetDict`` (all three splits, possibly empty, and any other split
    that has rows, e.g. ``test_ood``), save it with a card."""
    from datasets import Dataset, DatasetDict

    dd = DatasetDict()
    extra = sorted(set(rows_by_split) - {"train", "validation", "test"})
    for split in ("train", "validation", "test", *extra):
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

    # forkserver where there is one: workers are forked from a fresh single-threaded
    # server, never from this process. A plain fork copies this process's locks in
    # whatever state its other threads (torch, tqdm, datasets, a test runner) held them,
    # and FluidSynth's SoundFont loader was seen to hang for good in such a child. Every
    # job builds its own synthesiser, and `fn` is a module-level function (it is pickled).
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
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
