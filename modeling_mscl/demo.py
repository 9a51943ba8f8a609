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

__all__ = ["DemoSettings", "run_demo"]

_CONFIG = Path(__file__).resolve().parent.parent / "scripts" / "configs" / "demo.yaml"


@dataclass
class DemoSettings:
    """What the demo does; the defaults fit in ~20 minutes on 2 CPU cores."""

    workdir: str = "outputs/demo"
    config: str = str(_CONFIG)
    num_songs: int = 200
    seconds: float = 30.0
    max_steps: int = 600
    probe_every: int = 150
    seed: int = 0
    # Probe budget: windows per clip for training / testing the heads (evenly spaced).
    probe_windows: int = 8
    # Head seeds per (encoder, task): the embeddings are cached, so each costs a head only.
    probe_seeds: int = 3
    objectives: dict[str, list[str]] = field(
        default_factory=lambda: {
            "COLA": ["--objective", "cola"],
            "MSCL": ["--objective", "mscl", "--absent_sources", "true"],
        }
    )


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)


def run_demo(settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run every step of the demo; returns the results table's data and the output paths."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoFeatureExtractor, AutoModel

    from .audio_io import load_audio
    from .chunks import prepare_chunks
    from .configuration_mscl import MSCLConfig
    from .corpora.synthetic import build_default_corpus
    from .modeling_mscl import MSCLModel
    from .probing import (
        LogMelStatistics,
        get_task,
        load_pretraining_model,
        make_probe_hook,
        mean_over_seeds,
        random_init_model,
        read_probe_log,
        recalibrate_batch_norm,
        results_table,
        retrieval_table,
        run_probe,
        stem_retrieval,
    )
    from .probing.plot import plot_convergence
    from .stems import OracleSeparator
    from .training import pretrain

    s = settings or DemoSettings()
    work = Path(s.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()

    t = _step(f"1/6 offline corpus: {s.num_songs} songs x {s.seconds:.0f} s + note set")
    build_default_corpus(work / "corpus", num_songs=s.num_songs, seconds=s.seconds, seed=s.seed)
    songs = load_from_disk(str(work / "corpus" / "songs"))
    notes = load_from_disk(str(work / "corpus" / "notes"))
    _done(t)

    t = _step("2/6 oracle stems -> 4 s chunks with log-mels and presence flags")
    prepare_chunks(songs, OracleSeparator(), work / "chunks")
    _done(t)

    tasks = {
        "notes_family": (get_task("notes_family"), notes),
        "corpus_genre": (get_task("corpus_genre"), songs),
        "corpus_instruments": (get_task("corpus_instruments"), songs),
    }
    runs: dict[str, Path] = {}
    for name, extra in s.objectives.items():
        t = _step(f"3/6 pre-train {name} for {s.max_steps} steps (config {s.config})")
        out = work / "runs" / name.lower()
        hook = make_probe_hook(
            ["notes_family", "corpus_genre"],
            {"notes_family": notes, "corpus_genre": songs},
            # Every training song (and as many notes), 4 windows each: a few seconds a
            # call, and a curve less noisy than a handful of clips would give.
            max_clips=160,
            max_windows=4,
            epochs=20,
            log_path=out / "probes.jsonl",
            # A few hundred steps is too short for batch-norm running statistics to catch up
            # (momentum 0.01): probe what the encoder computes, not how stale they are.
            recalibrate_bn=True,
        )
        argv = ["--config", s.config, "--data_dir", str(work / "chunks"), "--output_dir", str(out)]
        argv += ["--max_steps", str(s.max_steps), "--probe_every", str(s.probe_every)]
        argv += ["--seed", str(s.seed), "--resume", "true", *extra]
        result = pretrain(argv, probe_hook=hook)
        if result.history:  # a fresh (not an already finished) run: keep its curves
            (out / "history.json").write_text(json.dumps(result.history) + "\n")
        runs[name] = out
        _done(t)

    t = _step("4/6 frozen probes: baselines, COLA, MSCL on the three offline tasks")
    encoder_config = AutoModel.from_pretrained(runs["MSCL"] / "encoder").config
    torch.manual_seed(s.seed)
    random_init = MSCLModel(MSCLConfig(**_model_fields(encoder_config))).eval()
    # One regime for every row: batch-norm statistics recomputed on the probes' training
    # windows. A fresh encoder's (0, 1) statistics make it nearly a linear map of its input,
    # and 600 steps at momentum 0.01 leave a trained encoder's running statistics stale:
    # either would compare regimes, not representations.
    calibration = hook.calibration_windows(random_init.config.num_mel_bins)
    encoders: dict[str, Any] = {
        "log-mel statistics": LogMelStatistics(random_init.config.num_mel_bins),
        "random init": recalibrate_batch_norm(random_init, calibration),
    }
    for name, out in runs.items():
        trained = AutoModel.from_pretrained(out / "encoder").eval()
        encoders[name] = recalibrate_batch_norm(trained, calibration)
    results: dict[str, dict[str, Any]] = {}
    for enc_name, encoder in encoders.items():
        results[enc_name] = {}
        for task_name, (_, data) in tasks.items():
            task = get_task(task_name, train_windows=s.probe_windows, test_windows=s.probe_windows)
            per_seed = [
                run_probe(encoder, task, data, cache_dir=work / "embeddings", seed=seed).to_dict()
                for seed in range(s.seed, s.seed + s.probe_seeds)
            ]
            results[enc_name][task_name] = mean_over_seeds(per_seed)
            metrics = results[enc_name][task_name]
            shown = ", ".join(
                f"{k} {100 * v:.1f} ± {100 * metrics['metrics_std'][k]:.1f}"
                for k, v in metrics["metrics"].items()
            )
            print(f"    {enc_name:20s} {task_name:20s} {shown}", flush=True)
    _done(t)

    t = _step("5/6 stem retrieval, results tables and convergence figure")
    retrieval = {
        "random init": stem_retrieval(
            random_init_model(runs["MSCL"] / "pretraining", seed=s.seed),
            work / "chunks",
            split="test",
            bn_regime="recalibrated",
            seed=s.seed,
            name="random init",
        )
    }
    for name, out in runs.items():
        retrieval[name] = stem_retrieval(
            load_pretraining_model(out),
            work / "chunks",
            split="test",
            bn_regime="recalibrated",
            seed=s.seed,
            name=name,
        )
    table = results_table(results)
    retrieval_md = retrieval_table(retrieval)
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
        f"{math.log(_batch_size(s.config)):.2f}): {loss_line}.\n"
    )
    payload = {
        "probes": results,
        "retrieval": {k: v.to_dict() for k, v in retrieval.items()},
        "final_train_loss": losses,
    }
    (work / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    logs = {name: read_probe_log(out / "probes.jsonl") for name, out in runs.items()}
    figure = work / "convergence.png"
    plot_convergence(logs, figure)
    print(table)
    print(retrieval_md)
    print(f"final training loss: {loss_line}")
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
