"""Transfer beyond the training timbres: one SoundFont held out of pre-training and probes.

The demo's pipeline (its corpus builder, chunking, pre-training runs, recalibrated
encoders, probes and stem retrieval) on a diverse corpus (:mod:`.corpora.production`):
songs and notes are rendered with several General MIDI SoundFonts and per-stem
production, and one SoundFont is held out. Its songs and notes form the ``test_ood``
splits, which neither pre-training (train split of the chunks), the convergence probes
nor the probe heads (train/validation splits) ever see. Every encoder is then scored twice
with the same trained heads' recipe: on the ``test`` split (test songs and notes rendered
with the training SoundFonts: in-timbre) and on ``test_ood`` (out-of-timbre), side by
side, for COLA, MSCL and the two baselines, over several pre-training seeds.

Every step is resumable: the corpus, the chunks, finished runs, embeddings and already
scored seeds (``results.json``) are reused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_json_atomic
from .demo import (
    _CONFIG,
    _done,
    _step,
    offline_tasks,
    pretrain_run,
    probe_encoders,
    recalibrated_encoders,
    setting,
)
from .package_data import resource_dir

__all__ = [
    "TransferSettings",
    "in_and_out_of_timbre",
    "load_diversity",
    "prepare_transfer_data",
    "run_transfer",
    "summarise_transfer",
    "transfer_table",
]

DIVERSITY_CONFIG = resource_dir("data") / "transfer_corpus.yaml"
OOD_SPLIT = "test_ood"
REGIMES = ("in-timbre", "out-of-timbre")
SOURCES = ("vocals", "drums", "bass", "other")


@dataclass
class TransferSettings:
    """What the transfer measurement does: the demo's runs on a diverse corpus."""

    workdir: str = setting("folder of every step's output (re-runs resume)", "outputs/transfer")
    config: str = setting("pre-training config (YAML) both objectives start from", str(_CONFIG))
    corpus: str = setting(
        "the corpus's diversity options (YAML: SoundFonts, the held-out one, production)",
        str(DIVERSITY_CONFIG),
    )
    held_out_soundfont: str | None = setting(
        "the SoundFont held out (default: the one the --corpus file names)"
    )
    note_config: str | None = setting(
        "the note set's settings (YAML like data/note_set.yaml; default: that file)"
    )
    num_songs: int = setting("songs of the offline corpus", 200)
    seconds: float = setting("length of each song in seconds", 30.0)
    corpus_seed: int = setting("seed of the corpus", 0)
    max_steps: int = setting("pre-training steps of each objective", 1200)
    seeds: list[int] = setting(
        "pre-training seeds (each: COLA, MSCL, baselines)", factory=lambda: [0]
    )
    probe_every: int = setting("steps between the cheap convergence probes", 300)
    probe_windows: int = setting("windows per clip for the probe heads (evenly spaced)", 8)
    probe_seeds: int = setting("head seeds per encoder and task (embeddings cached)", 3)
    max_clips: int | None = setting("clips per split of each probe (unset: all)")
    num_workers: int = setting("processes rendering the corpus", 2)
    report_only: bool = setting("only rebuild the report from results.json", False)
    objectives: dict[str, dict[str, Any]] = setting(
        "each run's pretrain arguments on top of --config (JSON: name -> {key: value})",
        factory=lambda: {
            "COLA": {"objective": "cola"},
            "MSCL": {"objective": "mscl", "absent_sources": True},
        },
    )


def load_diversity(path: str | Path, held_out: str | None = None) -> Any:
    """The :class:`~.corpora.production.CorpusDiversity` of a YAML file; ``held_out``
    replaces its held-out SoundFont."""
    import yaml

    from .corpora.production import CorpusDiversity

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus diversity file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of corpus diversity options")
    if held_out is not None:
        raw["held_out_soundfont"] = held_out
    try:
        diversity = CorpusDiversity.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
    if diversity.held_out_soundfont is None:
        raise ValueError(f"{path}: name a held_out_soundfont (or pass --held_out_soundfont)")
    return diversity


def in_and_out_of_timbre(data: Any, what: str = "corpus") -> dict[str, Any]:
    """``{"in-timbre": DatasetDict, "out-of-timbre": DatasetDict}``: both with the
    training SoundFonts' train and validation splits; the test split is ``test`` (in)
    or ``test_ood`` (out). Refuses data whose train or validation split holds a song of
    a SoundFont that ``test_ood`` uses."""
    from datasets import DatasetDict

    if OOD_SPLIT not in data:
        raise ValueError(f"{what} has no {OOD_SPLIT!r} split (splits: {sorted(data)})")
    if "soundfont" in data[OOD_SPLIT].column_names:
        held = set(data[OOD_SPLIT]["soundfont"])
        for split in ("train", "validation", "test"):
            if split in data and held & set(data[split]["soundfont"]):
                raise ValueError(
                    f"{what}: the held-out SoundFont(s) {sorted(held)} appear in the "
                    f"{split!r} split"
                )
    base = {k: data[k] for k in ("train", "validation") if k in data}
    return {
        "in-timbre": DatasetDict({**base, "test": data["test"]}),
        "out-of-timbre": DatasetDict({**base, "test": data[OOD_SPLIT]}),
    }


def prepare_transfer_data(work: Path, s: TransferSettings) -> tuple[Any, Any, Path, Any]:
    """The diverse corpus, its note set and chunk set; returns (songs, notes, chunks, diversity)."""
    from datasets import load_from_disk

    from .chunks import prepare_chunks
    from .corpora.synthetic import build_default_corpus
    from .stems import OracleSeparator

    diversity = load_diversity(s.corpus, s.held_out_soundfont)
    t = _step(
        f"diverse corpus: {s.num_songs} songs x {s.seconds:.0f} s + note set, SoundFonts "
        f"{list(diversity.soundfonts)}, held out {diversity.held_out_soundfont}"
    )
    build_default_corpus(
        work / "corpus",
        num_songs=s.num_songs,
        seconds=s.seconds,
        seed=s.corpus_seed,
        num_workers=s.num_workers,
        diversity=diversity,
        note_config=s.note_config,
    )
    songs = load_from_disk(str(work / "corpus" / "songs"))
    notes = load_from_disk(str(work / "corpus" / "notes"))
    _done(t)
    t = _step("oracle stems -> 4 s chunks with log-mels and presence flags (all splits)")
    prepare_chunks(songs, OracleSeparator(), work / "chunks")
    _done(t)
    return songs, notes, work / "chunks", diversity


def run_transfer(settings: TransferSettings | None = None) -> dict[str, Any]:
    """Pre-train, probe and score every seed in and out of timbre; writes ``results.json``
    and ``results.md`` in the workdir and returns the summary."""
    s = settings or TransferSettings()
    work = Path(s.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    scores: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if s.report_only:
        if not scores:
            raise FileNotFoundError(f"{results_path} not found: nothing to report")
        return _write_report(work, scores)
    total = time.perf_counter()
    songs, notes, chunks, diversity = prepare_transfer_data(work, s)
    split_songs = in_and_out_of_timbre(songs, "the songs")
    split_notes = in_and_out_of_timbre(notes, "the note set")
    scores["settings"] = {
        "config": Path(s.config).name,
        "num_songs": s.num_songs,
        "seconds": s.seconds,
        "corpus_seed": s.corpus_seed,
        "max_steps": s.max_steps,
        "probe_windows": s.probe_windows,
        "probe_seeds": s.probe_seeds,
        "diversity": diversity.to_dict(),
        "sizes": {
            "songs": {k: len(v) for k, v in songs.items()},
            "notes": {k: len(v) for k, v in notes.items()},
        },
    }
    seeds_done = scores.setdefault("seeds", {})
    # Recall@1 falls with the number of candidates: the held-out SoundFont's songs are
    # scored on as many tracks (drawn once per seed) as the in-timbre test split has.
    pool = len(songs["test"])
    for seed in s.seeds:
        runs = {name: work / "runs" / f"seed{seed}" / name.lower() for name in s.objectives}
        if str(seed) in seeds_done:
            entry = seeds_done[str(seed)]
            if entry.get("retrieval_pool") != pool:
                t = _step(f"seed {seed}: stem retrieval again, {pool} tracks in each regime")
                entry["retrieval"] = _retrieval(runs, chunks, seed, pool)
                entry["retrieval_pool"] = pool
                write_json_atomic(results_path, scores, indent=1)
                _done(t)
            else:
                print(f"\n=== seed {seed}: scored before, reused", flush=True)
            continue
        hook = None
        for name, overrides in s.objectives.items():
            t = _step(f"seed {seed}: pre-train {name} for {s.max_steps} steps")
            run = dict(data_dir=str(chunks), max_steps=s.max_steps, seed=seed, **overrides)
            hook = pretrain_run(
                runs[name], s.config, run, split_songs["in-timbre"], split_notes["in-timbre"],
                s.probe_every,
            )  # fmt: skip
            _done(t)
        t = _step(f"seed {seed}: probes and stem retrieval, in and out of timbre")
        encoders = recalibrated_encoders(runs, hook.calibration_windows(), seed)
        head_seeds = list(range(seed, seed + s.probe_seeds))
        entry: dict[str, Any] = {"probes": {}}
        for regime in REGIMES:
            print(f"  -- {regime}", flush=True)
            tasks = offline_tasks(split_songs[regime], split_notes[regime])
            entry["probes"][regime] = probe_encoders(
                encoders, tasks, work / "embeddings", s.probe_windows, head_seeds, s.max_clips
            )
        entry["retrieval"] = _retrieval(runs, chunks, seed, pool)
        entry["retrieval_pool"] = pool
        seeds_done[str(seed)] = entry
        write_json_atomic(results_path, scores, indent=1)
        _done(t)
    report = _write_report(work, scores)
    print(f"\nAll done in {(time.perf_counter() - total) / 60:.1f} min: {work / 'results.md'}")
    return report


def _retrieval(runs: dict[str, Path], chunks: Path, seed: int, pool: int) -> dict[str, Any]:
    """Stem retrieval of random init and the runs' models, in and out of timbre, each on
    ``pool`` tracks (the out-of-timbre ones drawn from the held-out split with ``seed``)."""
    from .probing import load_pretraining_model, random_init_model, stem_retrieval

    models = {"random init": random_init_model(runs["MSCL"] / "pretraining", seed=seed)}
    models.update({name: load_pretraining_model(out) for name, out in runs.items()})
    return {
        regime: {
            name: stem_retrieval(
                model,
                chunks,
                split=split,
                bn_regime="recalibrated",
                seed=seed,
                name=name,
                max_tracks=pool,
            ).to_dict()
            for name, model in models.items()
        }
        for regime, split in zip(REGIMES, ("test", OOD_SPLIT), strict=True)
    }


# (task, metric) of the table
PROBE_METRICS = (
    ("notes_family", "accuracy"),
    ("corpus_instruments", "roc_auc"),
    ("corpus_tempo", "accuracy"),
    ("corpus_genre", "accuracy"),
)


def summarise_transfer(scores: dict[str, Any]) -> dict[str, Any]:
    """Per (encoder, measure, regime): mean and std (ddof 0) over seeds of each seed's
    value (probes: the mean over head seeds; retrieval: recall@1), and the test counts."""
    seeds = scores.get("seeds", {})
    values: dict[tuple[str, str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for entry in seeds.values():
        for regime, by_encoder in entry["probes"].items():
            for enc, tasks in by_encoder.items():
                for task, metric in PROBE_METRICS:
                    if task not in tasks or metric not in tasks[task]["metrics"]:
                        continue
                    measure = f"{task} {metric}"
                    values.setdefault((enc, measure, regime), []).append(
                        100 * tasks[task]["metrics"][metric]
                    )
                    counts[(measure, regime)] = tasks[task]["num_clips"]["test"]
        for regime, by_model in entry["retrieval"].items():
            for model, result in by_model.items():
                for source, row in result["sources"].items():
                    if not row["num_queries"]:
                        continue
                    measure = f"stem retrieval R@1 {source}"
                    values.setdefault((model, measure, regime), []).append(100 * row["recall"]["1"])
                    counts[(measure, regime)] = row["num_queries"]
    summary = {key: (float(np.mean(v)), float(np.std(v)), len(v)) for key, v in values.items()}
    return {"values": summary, "counts": counts, "num_seeds": len(seeds)}


def _cell(value: tuple[float, float, int] | None) -> str:
    if value is None:
        return "-"
    mean, std, n = value
    return f"{mean:.1f} ± {std:.1f} ({n})"


def transfer_table(summary: dict[str, Any]) -> str:
    """The markdown table: one row per (measure, encoder), in-timbre and out-of-timbre
    side by side, with the number of test items of each."""
    values, counts = summary["values"], summary["counts"]
    encoders = ["log-mel statistics", "random init", "COLA", "MSCL"]
    encoders += sorted({k[0] for k in values} - set(encoders))
    measures = [f"{t} {m}" for t, m in PROBE_METRICS]
    measures += [f"stem retrieval R@1 {s}" for s in SOURCES]
    lines = [
        "| measure | encoder | in-timbre | out-of-timbre | test items (in / out) |",
        "|---|---|---|---|---|",
    ]
    for measure in measures:
        for enc in encoders:
            cells = [values.get((enc, measure, r)) for r in REGIMES]
            if cells == [None, None]:
                continue
            n = " / ".join(str(counts.get((measure, r), "-")) for r in REGIMES)
            lines.append(f"| {measure} | {enc} | {_cell(cells[0])} | {_cell(cells[1])} | {n} |")
        if measure.startswith("stem retrieval") and (measure, REGIMES[0]) in counts:
            # One query per track, its own stem among as many candidates: chance 1 / n.
            sizes = [counts.get((measure, r)) for r in REGIMES]
            chance = [f"{100 / k:.1f}" if k else "-" for k in sizes]
            n = " / ".join(str(k) for k in sizes)
            lines.append(f"| {measure} | chance | {chance[0]} | {chance[1]} | {n} |")
    return "\n".join(lines)


def _write_report(work: Path, scores: dict[str, Any]) -> dict[str, Any]:
    summary = summarise_transfer(scores)
    cfg = scores.get("settings", {})
    div = cfg.get("diversity", {})
    table = transfer_table(summary)
    text = (
        f"Transfer beyond the training timbres: {cfg.get('num_songs')} songs "
        f"({cfg.get('sizes', {}).get('songs')}), note set {cfg.get('sizes', {}).get('notes')}; "
        f"SoundFonts {div.get('soundfonts')}, held out {div.get('held_out_soundfont')!r} "
        f"(only in test_ood). {cfg.get('max_steps')} pre-training steps "
        f"({cfg.get('config')}), {summary['num_seeds']} pre-training seed(s): values in %, "
        f"mean ± std over the seeds (their count in brackets), each seed's value the mean of "
        f"{cfg.get('probe_seeds')} probe heads (probes) or of 5 crop draws (retrieval). "
        "Every network's batch-norm statistics recomputed on training data (in-timbre). "
        "In-timbre: the test split (training SoundFonts); out-of-timbre: test_ood (the "
        "held-out SoundFont; notes: the same test programs). Stem retrieval ranks each "
        "query's own stem among one stem per track: out of timbre on as many tracks as the "
        "in-timbre test split has (drawn once per seed), so chance is about the same.\n\n"
        f"{table}\n"
    )
    (work / "results.md").write_text(text)
    print(text)
    return {"summary": summary, "table": table}
