"""The seeded study (`make study`): the demo's comparison repeated over pre-training seeds.

For every seed it pre-trains COLA, multi-source MSCL and two single-source MSCL models
(drums only, vocals only) on the offline corpus with convergence probes, then:

- probes every encoder on the three offline tasks in one regime (batch-norm statistics
  recomputed on the probes' training windows), next to the log-mel statistics baseline
  and a random-init encoder of the same seed; tables give mean ± std over seeds;
- scores stem retrieval (mixture crop -> own song's stem) for random init, COLA and MSCL;
- compares the drums-only and vocals-only models (steering: a rhythm-heavy task against a
  timbre task);
- draws the convergence curves as mean ± std bands over seeds and reports the step at
  which MSCL first reaches COLA's final score, seed by seed.

Every step is resumable: a second run reuses finished runs, caches and corpora.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .demo import (
    _CONFIG,
    _done,
    _final_loss,
    _step,
    offline_tasks,
    prepare_offline_data,
    pretrain_run,
    probe_encoders,
    recalibrated_encoders,
    setting,
)

__all__ = ["StudySettings", "first_step_reaching", "run_study", "summarise_over_seeds"]


@dataclass
class StudySettings:
    """What the study does; see the module docstring."""

    workdir: str = setting("folder of every step's output (re-runs resume there)", "outputs/study")
    config: str = setting("pre-training config (YAML) every run starts from", str(_CONFIG))
    # More songs than the demo: 30 test songs per song task instead of 20.
    num_songs: int = setting("songs of the offline corpus", 300)
    seconds: float = setting("length of each song in seconds", 30.0)
    # The demo's per-run budget (~4 min a run on 2 cores): 12 runs fit the 90-minute budget.
    max_steps: int = setting("pre-training steps of each run", 1200)
    probe_every: int = setting("steps between the cheap convergence probes", 200)
    seeds: list[int] = setting(
        "seeds: every objective runs once per seed", factory=lambda: [0, 1, 2]
    )
    probe_windows: int = setting("windows per clip for the probe heads (evenly spaced)", 8)
    # Clips per split of each probe (None: all) and per task of the convergence probes.
    max_clips: int | None = setting("clips per split of each probe (default: all)", None)
    convergence_clips: int = setting("clips per task of the convergence probes", 160)
    # Each objective's arguments on top of the config (PretrainingArguments keys).
    objectives: dict[str, dict[str, Any]] = setting(
        "each run's pretrain arguments on top of --config (JSON: name -> {key: value})",
        factory=lambda: {
            "COLA": {"objective": "cola"},
            "MSCL": {"objective": "mscl", "absent_sources": True},
            "MSCL drums": {"objective": "mscl", "sources": ["drums"]},
            "MSCL vocals": {"objective": "mscl", "sources": ["vocals"]},
        },
    )
    # Retrieval is scored for these rows (and random init), each on every source.
    retrieval_models: list[str] = setting(
        "runs whose stem retrieval is scored (with random init)", factory=lambda: ["COLA", "MSCL"]
    )


# Steering compares the single-source models on a rhythm task (tempo band) and on timbre
# tasks (note family; genre, which on this corpus the instruments give away).
STEERING_TASKS = (
    ("corpus_tempo", "accuracy"),
    ("notes_family", "accuracy"),
    ("corpus_genre", "accuracy"),
)


def summarise_over_seeds(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``per_seed[i][encoder][task]`` results -> ``[encoder][task]`` with ``metrics`` the
    mean over seeds, ``metrics_std`` their standard deviation and ``num_seeds``."""
    out: dict[str, Any] = {}
    for encoder in per_seed[0]:
        out[encoder] = {}
        for task in per_seed[0][encoder]:
            runs = [seed_results[encoder][task] for seed_results in per_seed]
            values = {
                m: np.array([r["metrics"][m] for r in runs], dtype=float)
                for m in runs[0]["metrics"]
            }
            out[encoder][task] = {
                "task": task,
                "metrics": {m: float(v.mean()) for m, v in values.items()},
                "metrics_std": {m: float(v.std()) for m, v in values.items()},
                "num_seeds": len(runs),
                "per_seed": [r["metrics"] for r in runs],
                "num_clips": runs[0].get("num_clips"),
            }
    return out


def first_step_reaching(records: list[dict[str, float]], metric: str, target: float) -> int | None:
    """The first logged step whose ``metric`` is at least ``target`` (None: never)."""
    for record in records:
        if metric in record and record[metric] >= target:
            return int(record["step"])
    return None


def _bands_figure(groups: dict[str, list[list[dict[str, float]]]], metrics: list[str], out: Path):
    """Mean ± std over seeds of each probe metric against the pre-training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (label, seeds) in enumerate(groups.items()):
            steps = sorted({int(r["step"]) for run in seeds for r in run if metric in r})
            curves = [
                [next((r[metric] for r in run if int(r["step"]) == s), np.nan) for s in steps]
                for run in seeds
            ]
            values = np.array(curves, dtype=float)
            mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
            ax.plot(steps, mean, marker="o", markersize=3, color=colours(i), label=label)
            ax.fill_between(steps, mean - std, mean + std, color=colours(i), alpha=0.2)
        task, _, name = metric.rpartition("/")
        ax.set_title(f"{task}: {name} (mean ± std over seeds)", fontsize=10)
        ax.set_xlabel("pre-training step")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _fmt(result: dict[str, Any], metric: str) -> str:
    return f"{100 * result['metrics'][metric]:.1f} ± {100 * result['metrics_std'][metric]:.1f}"


def run_study(settings: StudySettings | None = None) -> dict[str, Any]:
    """Run the study; writes ``results.md``, ``results.json`` and ``convergence_bands.png``."""
    from .probing import (
        load_pretraining_model,
        random_init_model,
        read_probe_log,
        results_table,
        stem_retrieval,
    )

    s = settings or StudySettings()
    work = Path(s.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    songs, notes, chunks = prepare_offline_data(work, s.num_songs, s.seconds, s.seeds[0])
    tasks = offline_tasks(songs, notes)

    per_seed_probes, retrieval_rows, logs, losses = [], [], {}, {}
    for seed in s.seeds:
        runs: dict[str, Path] = {}
        hook = None
        for name, overrides in s.objectives.items():
            t = _step(f"seed {seed}: pre-train {name} for {s.max_steps} steps")
            out = work / "runs" / f"{name.lower().replace(' ', '-')}-seed{seed}"
            run = dict(data_dir=str(chunks), max_steps=s.max_steps, seed=seed, **overrides)
            hook = pretrain_run(
                out, s.config, run, songs, notes, s.probe_every, s.convergence_clips
            )
            runs[name] = out
            logs.setdefault(name, []).append(read_probe_log(out / "probes.jsonl"))
            losses.setdefault(name, []).append(_final_loss(out))
            _done(t)
        t = _step(f"seed {seed}: probes in one batch-norm regime")
        encoders = recalibrated_encoders(runs, hook.calibration_windows(), seed)
        # One head seed per pre-training seed: the spread is over whole pipelines.
        per_seed_probes.append(
            probe_encoders(
                encoders, tasks, work / "embeddings", s.probe_windows, [seed], s.max_clips
            )
        )
        _done(t)
        t = _step(f"seed {seed}: stem retrieval")
        models = {"random init": random_init_model(runs["MSCL"] / "pretraining", seed=seed)}
        models.update({n: load_pretraining_model(runs[n]) for n in s.retrieval_models})
        retrieval_rows.append(
            {
                n: stem_retrieval(
                    m, chunks, split="test", bn_regime="recalibrated", seed=seed, name=n
                ).to_dict()
                for n, m in models.items()
            }
        )
        _done(t)

    t = _step("tables and figures")
    probes = summarise_over_seeds(per_seed_probes)
    retrieval = _summarise_retrieval(retrieval_rows)
    metrics = ["notes_family/accuracy", "corpus_genre/accuracy"]
    figure = work / "convergence_bands.png"
    _bands_figure(logs, metrics, figure)
    convergence = _convergence_summary(logs, metrics)
    md = _report(s, probes, retrieval, convergence, losses, time.perf_counter() - total)
    (work / "results.md").write_text(md)
    payload = {
        "settings": asdict(s),
        "probes": probes,
        "retrieval": retrieval,
        "convergence": convergence,
        "final_train_loss": losses,
    }
    (work / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(results_table(probes))
    print(md)
    _done(t)
    return payload


def _summarise_retrieval(rows: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Recall@1 and mean rank per (model, source): mean ± std over seeds."""
    out: dict[str, Any] = {}
    for model in rows[0]:
        out[model] = {}
        for source in rows[0][model]["sources"]:
            per = [r[model]["sources"][source] for r in rows]
            # to_dict() keys recall by str(k) and writes NaN (no query) as None.
            r1 = np.array([_nan(p["recall"]["1"]) for p in per], dtype=float)
            rank = np.array([_nan(p["mean_rank"]) for p in per], dtype=float)
            out[model][source] = {
                "recall_at_1": float(np.nanmean(r1)),
                "recall_at_1_std": float(np.nanstd(r1)),
                "mean_rank": float(np.nanmean(rank)),
                "mean_rank_std": float(np.nanstd(rank)),
                "chance_recall_at_1": _nan(per[0]["chance_recall"]["1"]),
                "num_queries": per[0]["num_queries"],
            }
    return out


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _convergence_summary(
    logs: dict[str, list[list[dict[str, float]]]], metrics: list[str]
) -> dict[str, Any]:
    """The step at which each MSCL seed first reaches COLA's final score (mean over seeds)."""
    out: dict[str, Any] = {}
    if "COLA" not in logs or "MSCL" not in logs:
        return out
    for metric in metrics:
        finals = [run[-1][metric] for run in logs["COLA"] if run and metric in run[-1]]
        if not finals:
            continue
        target = float(np.mean(finals))
        steps = [first_step_reaching(run, metric, target) for run in logs["MSCL"]]
        out[metric] = {"cola_final_mean": target, "mscl_first_step": steps}
    return out


def _report(s, probes, retrieval, convergence, losses, seconds) -> str:
    from .probing import results_table

    seeds = len(s.seeds)
    lines = [
        f"Study: {seeds} pre-training seeds ({', '.join(map(str, s.seeds))}), "
        f"{s.max_steps} steps each ({Path(s.config).name}), {seconds / 60:.0f} min. Frozen "
        f"probes, values in %, mean ± std over seeds (one head per seed); every network's "
        f"batch-norm statistics recomputed on the probes' training windows.",
        "",
        results_table(probes),
        "",
        "Stem retrieval on the test songs, recall@1 in % (mean ± std over seeds) and mean rank:",
        "",
        "| model | " + " | ".join(next(iter(retrieval.values()))) + " |",
        "|---" * (1 + len(next(iter(retrieval.values())))) + "|",
    ]
    for model, per_source in retrieval.items():
        cells = [
            f"{100 * v['recall_at_1']:.1f} ± {100 * v['recall_at_1_std']:.1f} "
            f"(rank {v['mean_rank']:.1f})"
            for v in per_source.values()
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    chance = next(iter(retrieval.values()))
    lines.append(
        "| chance | "
        + " | ".join(f"{100 * v['chance_recall_at_1']:.1f}" for v in chance.values())
        + " |"
    )
    lines += ["", "Steering (single-source models):", ""]
    for task, metric in STEERING_TASKS:
        if "MSCL drums" in probes and "MSCL vocals" in probes and task in probes["MSCL drums"]:
            lines.append(
                f"- {task} {metric}: drums-only {_fmt(probes['MSCL drums'][task], metric)}, "
                f"vocals-only {_fmt(probes['MSCL vocals'][task], metric)}"
            )
    lines += ["", "Convergence (step at which each MSCL seed first reaches COLA's final mean):", ""]
    for metric, summary in convergence.items():
        lines.append(
            f"- {metric}: COLA final {100 * summary['cola_final_mean']:.1f}; MSCL first steps "
            f"{summary['mscl_first_step']} (None: never)"
        )
    lines += ["", "Training loss over the last 50 steps, per seed:", ""]
    for name, values in losses.items():
        shown = ", ".join("n/a" if v is None else f"{v:.2f}" for v in values)
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"
