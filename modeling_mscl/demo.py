"""The main job: the whole method end to end on the offline corpus, on a CPU.

Builds the multitrack corpus and the note set, attaches oracle stems and presence flags,
pre-trains COLA and multi-source MSCL (absent sources on) for the same number of steps with
cheap probes along the way, probes both and a randomly initialised encoder on the three
offline tasks, writes a markdown results table and the convergence figure, saves the MSCL
encoder as a Hugging Face folder, reloads it with ``AutoModel`` and embeds one clip.
Every step is resumable: a second run reuses what the first one finished.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .package_data import resource_dir

__all__ = [
    "DemoSettings",
    "check_corpus_size",
    "offline_tasks",
    "prepare_offline_data",
    "pretrain_run",
    "probe_encoders",
    "recalibrated_encoders",
    "run_demo",
]

_CONFIG = resource_dir("configs") / "demo.yaml"


def setting(text: str, default: Any = None, factory: Any = None) -> Any:
    """A settings field with its ``--help`` text (``HfArgumentParser`` shows the default)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class DemoSettings:
    """What the demo does; with the set-up, the defaults fit in 15 minutes on 2 CPU cores."""

    workdir: str = setting("folder of every step's output (re-runs resume there)", "outputs/demo")
    config: str = setting("pre-training config (YAML) both objectives start from", str(_CONFIG))
    num_songs: int = setting("songs of the offline corpus", 200)
    seconds: float = setting("length of each song in seconds", 30.0)
    max_steps: int = setting("pre-training steps of each objective", 1200)
    probe_every: int = setting("steps between the cheap convergence probes", 300)
    seed: int = setting("seed of the corpus, the runs and the probes", 0)
    # Probe budget: windows per clip for training / testing the heads (evenly spaced).
    probe_windows: int = setting("windows per clip for the probe heads (evenly spaced)", 8)
    # Head seeds per (encoder, task): the embeddings are cached, so each costs a head only.
    probe_seeds: int = setting("head seeds per encoder and task (embeddings cached)", 3)
    # Each objective's arguments on top of the config (PretrainingArguments keys).
    objectives: dict[str, dict[str, Any]] = setting(
        "each run's pretrain arguments on top of --config (JSON: name -> {key: value})",
        factory=lambda: {
            "COLA": {"objective": "cola"},
            "MSCL": {"objective": "mscl", "absent_sources": True},
        },
    )


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)


def check_corpus_size(num_songs: int, seconds: float, seed: int) -> None:
    """Refuse, before anything is built, a corpus whose songs leave a split empty: the
    probes train on the train split, stop early on validation and score the test split."""
    from .corpora.song_plans import load_recipe, plan_songs

    recipe = load_recipe()
    splits = {plan.split for plan in plan_songs(recipe, num_songs, seconds, seed)}
    missing = [name for name in ("train", "validation", "test") if name not in splits]
    if missing:
        # Splits are drawn within each style: 3 songs a style give every split one.
        raise ValueError(
            f"num_songs={num_songs} leaves the {' and '.join(missing)} split(s) of the corpus "
            f"empty: the {len(recipe.styles)} styles are split 80/10/10 each, so give "
            f"--num_songs {3 * len(recipe.styles)} or more"
        )


def prepare_offline_data(work: Path, num_songs: int, seconds: float, seed: int) -> tuple:
    """Steps 1-2 of the demo and the study: the corpus, the note set and the chunk set.

    Returns ``(songs, notes, chunks_dir)``; both steps reuse what an earlier run finished.
    """
    from datasets import load_from_disk

    from .chunks import prepare_chunks
    from .corpora.synthetic import build_default_corpus
    from .stems import OracleSeparator

    check_corpus_size(num_songs, seconds, seed)
    t = _step(f"offline corpus: {num_songs} songs x {seconds:.0f} s + note set")
    build_default_corpus(work / "corpus", num_songs=num_songs, seconds=seconds, seed=seed)
    songs = load_from_disk(str(work / "corpus" / "songs"))
    notes = load_from_disk(str(work / "corpus" / "notes"))
    _done(t)
    t = _step("oracle stems -> 4 s chunks with log-mels and presence flags")
    prepare_chunks(songs, OracleSeparator(), work / "chunks")
    _done(t)
    return songs, notes, work / "chunks"


def offline_tasks(songs: Any, notes: Any) -> dict[str, Any]:
    """The four offline probe tasks and their data (``corpus_tempo`` where the songs have
    the tempo label)."""
    tasks = {"notes_family": notes, "corpus_genre": songs, "corpus_instruments": songs}
    if "tempo" in next(iter(songs.values())).features:
        tasks["corpus_tempo"] = songs
    return tasks


def pretrain_run(
    out: Path,
    config: str,
    overrides: dict[str, Any],
    songs: Any,
    notes: Any,
    probe_every: int,
    max_clips: int = 160,
) -> Any:
    """Pre-train (or resume) one run of ``config`` + ``overrides`` into ``out`` with the
    convergence probes; returns the probe hook, whose training windows also calibrate
    batch norm for the final probes."""
    from .training import pretrain
    from .training_args import PretrainingArguments

    hook = _calibration_hook(songs, notes, max_clips, log_path=out / "probes.jsonl")
    args = PretrainingArguments.from_config(
        config, **overrides, output_dir=str(out), probe_every=probe_every, resume=True
    )
    result = pretrain(args, probe_hook=hook)
    if result.history:  # a fresh (not an already finished) run: keep its curves
        (out / "history.json").write_text(json.dumps(result.history) + "\n")
    return hook


def _calibration_hook(songs: Any, notes: Any, max_clips: int = 160, log_path: Any = None) -> Any:
    """The convergence probes of a run; their training windows also recompute every
    network's batch-norm statistics for the final probes."""
    from .probing import make_probe_hook

    return make_probe_hook(
        ["notes_family", "corpus_genre"],
        {"notes_family": notes, "corpus_genre": songs},
        # Every training song (and as many notes), 4 windows each: a few seconds a
        # call, and a curve less noisy than a handful of clips would give.
        max_clips=max_clips,
        max_windows=4,
        epochs=20,
        log_path=log_path,
        # A few hundred steps is too short for batch-norm running statistics to catch up
        # (momentum 0.01): probe what the encoder computes, not how stale they are.
        recalibrate_bn=True,
    )


def probe_encoders(
    encoders: dict[str, Any],
    tasks: dict[str, Any],
    cache_dir: Path,
    probe_windows: int,
    head_seeds: list[int] | dict[str, list[int]],
    max_clips: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Probe every encoder on every task; ``results[encoder][task]`` is the mean over the
    head seeds (a list for all encoders, or one list per encoder)."""
    from .probing import get_task, mean_over_seeds, run_probe

    results: dict[str, dict[str, Any]] = {}
    for enc_name, encoder in encoders.items():
        seeds = head_seeds[enc_name] if isinstance(head_seeds, dict) else head_seeds
        results[enc_name] = {}
        for task_name, data in tasks.items():
            task = get_task(task_name, train_windows=probe_windows, test_windows=probe_windows)
            per_seed = [
                run_probe(
                    encoder, task, data, cache_dir=cache_dir, seed=seed, max_clips=max_clips
                ).to_dict()
                for seed in seeds
            ]
            merged = mean_over_seeds(per_seed)
            results[enc_name][task_name] = merged
            shown = ", ".join(
                f"{k} {100 * v:.1f} ± {100 * merged['metrics_std'][k]:.1f}"
                for k, v in merged["metrics"].items()
            )
            print(f"    {enc_name:20s} {task_name:20s} {shown}", flush=True)
    return results


def recalibrated_encoders(
    runs: dict[str, Path], calibration: Any, seed: int, with_baselines: bool = True
) -> dict[str, Any]:
    """The encoders of ``runs`` (and, optionally, the two baselines), every network with its
    batch-norm statistics recomputed on ``calibration`` windows: one regime for every row.

    A fresh encoder's (0, 1) statistics make it nearly a linear map of its input, and a
    few hundred steps at momentum 0.01 leave a trained encoder's running statistics
    stale: either would compare regimes, not representations.
    """
    import torch
    from transformers import AutoModel

    from .configuration_mscl import MSCLConfig
    from .modeling_mscl import MSCLModel
    from .probing import LogMelStatistics, recalibrate_batch_norm

    encoders: dict[str, Any] = {}
    first = next(iter(runs.values()))
    config = AutoModel.from_pretrained(first / "encoder").config
    if with_baselines:
        torch.manual_seed(seed)
        random_init = MSCLModel(MSCLConfig(**_model_fields(config))).eval()
        encoders["log-mel statistics"] = LogMelStatistics(config.num_mel_bins)
        encoders["random init"] = recalibrate_batch_norm(random_init, calibration)
    for name, out in runs.items():
        trained = AutoModel.from_pretrained(out / "encoder").eval()
        encoders[name] = recalibrate_batch_norm(trained, calibration)
    return encoders


def run_demo(settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run every step of the demo; returns the results table's data and the output paths."""
    from transformers import AutoFeatureExtractor, AutoModel

    from .audio_io import load_audio
    from .probing import (
        load_pretraining_model,
        random_init_model,
        read_probe_log,
        results_table,
        retrieval_table,
        stem_retrieval,
    )
    from .probing.plot import plot_convergence

    s = settings or DemoSettings()
    work = Path(s.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()

    print("\n1-2/6 data", flush=True)
    songs, notes, chunks = prepare_offline_data(work, s.num_songs, s.seconds, s.seed)
    tasks = offline_tasks(songs, notes)
    runs: dict[str, Path] = {}
    for name, overrides in s.objectives.items():
        t = _step(f"3/6 pre-train {name} for {s.max_steps} steps (config {s.config})")
        out = work / "runs" / name.lower()
        run = dict(data_dir=str(chunks), max_steps=s.max_steps, seed=s.seed, **overrides)
        hook = pretrain_run(out, s.config, run, songs, notes, s.probe_every)
        runs[name] = out
        _done(t)

    t = _step("4/6 frozen probes: baselines, COLA, MSCL on the three offline tasks")
    calibration = hook.calibration_windows()
    encoders = recalibrated_encoders(runs, calibration, s.seed)
    head_seeds = list(range(s.seed, s.seed + s.probe_seeds))
    results = probe_encoders(encoders, tasks, work / "embeddings", s.probe_windows, head_seeds)
    _done(t)

    t = _step("5/6 stem retrieval, results tables and convergence figure")
    models = {"random init": random_init_model(runs["MSCL"] / "pretraining", seed=s.seed)}
    models.update({name: load_pretraining_model(out) for name, out in runs.items()})
    retrieval = {
        name: stem_retrieval(
            model, chunks, split="test", bn_regime="recalibrated", seed=s.seed, name=name
        )
        for name, model in models.items()
    }
    table = results_table(results)
    retrieval_md = retrieval_table(retrieval)
    check_md, outside = _check_against_study(s, results, retrieval)
    # Small test sets: one clip is several points of accuracy; the table says how many.
    sizes = ", ".join(f"{k} {v['num_clips']['test']}" for k, v in results["random init"].items())
    losses = {name: _final_loss(out) for name, out in runs.items()}
    loss_line = ", ".join(f"{k} {v:.2f}" for k, v in losses.items() if v is not None)
    loss_line += " (mean over the last 50 steps)"
    (work / "results.md").write_text(
        f"Frozen probes after {s.max_steps} pre-training steps ({Path(s.config).name}), "
        f"one pre-training seed; values in %, mean ± std over {s.probe_seeds} probe-head "
        f"seeds; every encoder's batch-norm statistics recomputed on the probes' training "
        f"windows; test clips: {sizes}.\n\n{table}\n\n"
        f"Stem retrieval on the test songs (a mixture crop must rank its own song's stem "
        f"first among the stems of all test songs, with the model's projection and "
        f"similarity; batch-norm statistics recomputed on training chunks; mean ± std over "
        f"draws of the crops):\n\n{retrieval_md}\n\n"
        f"Final training contrastive loss (chance: ln batch = "
        f"{math.log(_batch_size(s.config)):.2f}): {loss_line}.\n\n"
        f"Against the seeded study:\n\n{check_md}"
    )
    payload = {
        "probes": results,
        "retrieval": {k: v.to_dict() for k, v in retrieval.items()},
        "final_train_loss": losses,
        "cells_outside_study_range": outside,
    }
    (work / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    logs = {name: read_probe_log(out / "probes.jsonl") for name, out in runs.items()}
    figure = work / "convergence.png"
    plot_convergence(logs, figure)
    print(table)
    print(retrieval_md)
    print(f"final training loss: {loss_line}")
    print(check_md)
    _done(t)

    t = _step("6/6 reload the MSCL encoder with AutoModel and embed one clip")
    folder = runs["MSCL"] / "encoder"
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    clip_path = songs["test"][0]["audio"]
    audio = load_audio(clip_path)
    embedding = model.embed_audio(audio, sampling_rate=16000, feature_extractor=extractor)
    vector = embedding.clip_embeds[0]
    print(f"    {Path(clip_path).parent.name}: {embedding.window_embeds.shape[0]} windows -> "
          f"{tuple(vector.shape)} embedding, norm {vector.norm():.3f}")  # fmt: skip
    _done(t)

    minutes = (time.perf_counter() - total) / 60
    print(f"\nAll done in {minutes:.1f} min. Results: {work / 'results.md'}, figure: {figure}, "
          f"encoder: {folder}")  # fmt: skip
    return {"results": results, "table": table, "figure": str(figure), "encoder": str(folder)}


def _check_against_study(s: DemoSettings, results: dict, retrieval: dict) -> tuple[str, int]:
    """The demo's cells beside the study's ranges for its settings (see demo_check)."""
    from .demo_check import check_against_study, load_expected

    settings = {
        "config": Path(s.config).name,
        "num_songs": s.num_songs,
        "seconds": s.seconds,
        "max_steps": s.max_steps,
        "probe_windows": s.probe_windows,
        "probe_seeds": s.probe_seeds,
    }
    rows = {name: result.to_dict() for name, result in retrieval.items()}
    return check_against_study(results, rows, settings, load_expected())


def _model_fields(config: Any) -> dict[str, Any]:
    """The architecture fields of an encoder config, to build an untrained twin."""
    keys = (
        "width_coefficient",
        "depth_coefficient",
        "projection_dim",
        "pooling",
        "num_mel_bins",
    )
    return {k: getattr(config, k) for k in keys}


def _final_loss(run_dir: Path, last_steps: int = 50) -> float | None:
    """Mean training contrastive loss over a run's last ``last_steps`` logged steps."""
    path = run_dir / "history.json"
    if not path.exists():
        return None
    history = [h for h in json.loads(path.read_text()) if "train/loss" in h]
    if not history:
        return None
    end = history[-1]["step"]
    tail = [h["train/loss"] for h in history if h["step"] > end - last_steps]
    return sum(tail) / len(tail)


def _batch_size(config_path: str) -> int:
    import yaml

    return int(yaml.safe_load(Path(config_path).read_text())["batch_size"])
