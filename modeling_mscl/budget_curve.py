"""The pre-training budget curve: probe scores and stem retrieval against pre-training steps.

One run per objective and seed goes to the longest budget and keeps a checkpoint at every
budget on the way; each checkpoint is then probed like the demo's final encoders (note
family, instrument tags, tempo band, genre; batch-norm statistics recomputed on the
probes' training windows) and scored on stem retrieval (statistics recomputed on training
chunks), next to the log-mel statistics and random-init baselines of the same regime.

A checkpoint at step ``b`` of a run of ``B`` steps is not a run of ``b`` steps: the
learning rate is halved at ``B / 2`` (the config's step schedule), so every budget up to
``B / 2`` saw the full learning rate throughout. The report says so.

Every step is resumable: finished runs, embeddings and already scored checkpoints are
reused (``results.json`` is rewritten after each checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_json_atomic
from .demo import (
    _CONFIG,
    _done,
    _step,
    offline_tasks,
    prepare_offline_data,
    probe_encoders,
    setting,
)
from .demo_check import EXPECTED_FILE, expected_from_scores

__all__ = ["BudgetCurveSettings", "checkpoint_model", "run_budget_curve"]

# (task, metric) pairs of the figure and the table, and the retrieval column.
CURVE_METRICS = (
    ("notes_family", "accuracy"),
    ("corpus_instruments", "roc_auc"),
    ("corpus_tempo", "accuracy"),
    ("corpus_genre", "accuracy"),
)


@dataclass
class BudgetCurveSettings:
    """What the budget curve does; the defaults are the demo's corpus, config and runs."""

    workdir: str = setting("folder of every step's output (re-runs resume there)", "outputs/budget")
    config: str = setting("pre-training config (YAML) the runs start from", str(_CONFIG))
    num_songs: int = setting("songs of the offline corpus", 200)
    seconds: float = setting("length of each song in seconds", 30.0)
    corpus_seed: int = setting("seed of the corpus", 0)
    # The demo's runs (same steps, schedule and convergence probes), one per objective and
    # seed, probed at every budget on the way; seed 0 is the demo's own run.
    max_steps: int = setting("pre-training steps of each run (the demo's)", 1200)
    budgets: list[int] = setting(
        "steps at which each run's checkpoint is probed", factory=lambda: [150, 300, 600, 1200]
    )
    seeds: list[int] = setting(
        "seeds of the runs (seed 0 is the demo's)", factory=lambda: [0, 1, 2]
    )
    # Longer runs (their own schedule: the rate halves half-way), probed at their end.
    long_steps: int = setting("steps of the longer runs, probed at their end", 2400)
    long_seeds: list[int] = setting("seeds of the longer runs", factory=lambda: [0, 1])
    probe_every: int = setting("steps between the cheap convergence probes", 300)
    probe_windows: int = setting("windows per clip for the probe heads (evenly spaced)", 8)
    # Head seeds per (checkpoint, task): the embeddings are cached, so each costs a head.
    probe_seeds: int = setting("probe head seeds per checkpoint and task", 3)
    max_clips: int | None = setting("clips per split of each probe (unset: all)")
    report_only: bool = setting(
        "only rebuild the table, the figure and the ranges from results.json (no training)",
        False,
    )
    score_only: bool = setting(
        "score the checkpoints the runs have saved so far, without training", False
    )
    baselines: bool = setting("score the two baselines (each seed) as well", True)
    objectives: dict[str, dict[str, Any]] = setting(
        "the runs compared: name -> the pre-training keys it sets (from Python)",
        factory=lambda: {
            "COLA": {"objective": "cola"},
            "MSCL": {"objective": "mscl", "absent_sources": True},
        },
    )


def checkpoint_config(checkpoint: Path, config_dir: Path | None = None) -> Any:
    """The model config of a checkpoint: ``config_dir``'s ``config.json`` (the run's
    ``pretraining/`` folder) when there is one, else the model arguments the checkpoint's
    ``training_args.json`` holds (a run still under way has no final folder yet)."""
    from .checkpoints import ARGS_FILE
    from .configuration_mscl import MSCLConfig
    from .training_args import ModelArguments

    if config_dir is not None and (config_dir / "config.json").is_file():
        return MSCLConfig.from_pretrained(str(config_dir))
    saved = json.loads((checkpoint / ARGS_FILE).read_text())
    fields = {k: saved[k] for k in ModelArguments.__dataclass_fields__ if k in saved}
    return MSCLConfig(**fields)


def checkpoint_model(checkpoint: Path, config_dir: Path | None = None) -> Any:
    """The :class:`~modeling_mscl.MSCLForPreTraining` of a training checkpoint folder.

    The config comes from :func:`checkpoint_config`; the weights are the checkpoint's
    ``model.safetensors``, loaded strictly.
    """
    from safetensors.torch import load_file

    from .modeling_mscl import MSCLForPreTraining

    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors (not a training checkpoint)")
    model = MSCLForPreTraining(checkpoint_config(checkpoint, config_dir))
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def _run_dir(work: Path, name: str, seed: int, steps: int) -> Path:
    return work / "runs" / f"{name.lower().replace(' ', '-')}-{steps}-seed{seed}"


def _checkpoint_dir(run: Path, step: int) -> Path:
    from .checkpoints import CHECKPOINT_DIR, CHECKPOINT_PREFIX

    return run / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}{step:07d}"


def _score(
    name: str,
    model: Any,
    calibration: Any,
    tasks: dict[str, Any],
    chunks: Path,
    s: BudgetCurveSettings,
    work: Path,
    seed: int,
    encoder: Any = None,
) -> dict[str, Any]:
    """Probes (mean over head seeds) of ``encoder`` (default: ``model``'s, batch norm
    recomputed on ``calibration``) and, when ``model`` is given, its stem retrieval."""
    from .probing import recalibrate_batch_norm, stem_retrieval

    if encoder is None:
        encoder = recalibrate_batch_norm(model, calibration)
    heads = list(range(seed, seed + s.probe_seeds))
    probes = probe_encoders(
        {name: encoder}, tasks, work / "embeddings", s.probe_windows, heads, s.max_clips
    )[name]
    entry: dict[str, Any] = {"probes": probes}
    if model is not None:
        result = stem_retrieval(
            model, chunks, split="test", bn_regime="recalibrated", seed=seed, name=name
        ).to_dict()
        entry["retrieval"] = result
    return entry


def _mean_r1(entry: dict[str, Any]) -> float:
    """Recall@1 averaged over the sources that had queries."""
    values = [v["recall"]["1"] for v in entry["retrieval"]["sources"].values()]
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def run_budget_curve(settings: BudgetCurveSettings | None = None) -> dict[str, Any]:
    """Run the curve; writes ``results.json``, ``budget_curve.md`` and ``budget_curve.png``."""
    import torch

    from .configuration_mscl import MSCLConfig
    from .demo import _model_fields, pretrain_run
    from .modeling_mscl import MSCLModel
    from .probing import LogMelStatistics, random_init_model, recalibrate_batch_norm

    s = settings or BudgetCurveSettings()
    if any(b <= 0 for b in s.budgets) or max(s.budgets) > s.max_steps:
        raise ValueError(f"budgets must be positive and at most max_steps, got {s.budgets}")
    work = Path(s.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    path = work / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    scores: dict[str, Any] = saved.get("scores", {})
    if s.report_only:
        if not scores:
            raise FileNotFoundError(f"{path}: no scores to report (run without --report_only)")
        return _write_outputs(s, work, scores, time.perf_counter() - total)
    if s.score_only:
        # Read what the runs were trained on; nothing is rebuilt (runs may be under way).
        from datasets import load_from_disk

        songs = load_from_disk(str(work / "corpus" / "songs"))
        notes = load_from_disk(str(work / "corpus" / "notes"))
        chunks = work / "chunks"
    else:
        songs, notes, chunks = prepare_offline_data(work, s.num_songs, s.seconds, s.corpus_seed)
    tasks = offline_tasks(songs, notes)

    def keep(key: str, entry: dict[str, Any]) -> None:
        scores[key] = entry
        write_json_atomic(path, {"settings": asdict(s), "scores": scores}, indent=1)

    calibration = None

    def train(name: str, seed: int, steps: int, every: int) -> Path:
        """Pre-train (or reuse) one run; sets the batch-norm calibration windows."""
        nonlocal calibration
        out = _run_dir(work, name, seed, steps)
        t = _step(f"seed {seed}: pre-train {name} for {steps} steps")
        run = dict(
            data_dir=str(chunks),
            max_steps=steps,
            seed=seed,
            checkpoint_every=every,
            # Every budget's checkpoint, and one spare for the final step's save.
            keep_checkpoints=steps // every + 1,
            **s.objectives[name],
        )
        # The demo's own pre-training (with its convergence probes): the hook's training
        # windows are also every network's batch-norm calibration set.
        hook = pretrain_run(out, s.config, run, songs, notes, s.probe_every)
        calibration = hook.calibration_windows()
        _done(t)
        return out

    def score(name: str, seed: int, steps: int, budget: int) -> None:
        key = f"{name}|{seed}|{budget}|{steps}"
        if key in scores:
            return
        out = _run_dir(work, name, seed, steps)
        t = _step(f"seed {seed}: {name} at step {budget} of {steps}")
        model = checkpoint_model(_checkpoint_dir(out, budget), out / "pretraining")
        keep(key, _score(name, model, calibration, tasks, chunks, s, work, seed))
        _done(t)

    def baselines(seed: int, out: Path) -> None:
        """The demo's baselines of this seed, built as the demo builds them."""
        checkpoint = _checkpoint_dir(out, min(s.budgets))
        config = checkpoint_config(checkpoint, out / "pretraining")
        key = f"random init|{seed}|0|0"
        if key not in scores:
            t = _step(f"seed {seed}: random init")
            torch.manual_seed(seed)
            encoder = MSCLModel(MSCLConfig(**_model_fields(config))).eval()
            encoder = recalibrate_batch_norm(encoder, calibration)
            model = random_init_model(config, seed=seed)
            keep(key, _score("random init", model, None, tasks, chunks, s, work, seed, encoder))
            _done(t)
        key = f"log-mel statistics|{seed}|0|0"
        if key not in scores:
            t = _step(f"seed {seed}: log-mel statistics")
            encoder = LogMelStatistics(config.num_mel_bins)
            entry = _score("log-mel statistics", None, None, tasks, chunks, s, work, seed, encoder)
            keep(key, entry)
            _done(t)

    if s.score_only:
        from .demo import _calibration_hook

        calibration = _calibration_hook(songs, notes).calibration_windows()
        for seed in s.seeds:
            for name in s.objectives:
                out = _run_dir(work, name, seed, s.max_steps)
                for budget in sorted(s.budgets):
                    if (_checkpoint_dir(out, budget) / "model.safetensors").is_file():
                        score(name, seed, s.max_steps, budget)
            first = _checkpoint_dir(out, min(s.budgets)) / "model.safetensors"
            if s.baselines and first.is_file():
                baselines(seed, out)
        return _write_outputs(s, work, scores, time.perf_counter() - total)

    # What a cut-short job most needs comes first: the first seed's whole curve, then the
    # other seeds' final checkpoints (the demo's ranges), then their intermediate budgets,
    # then the longer runs. The outputs are rewritten after each stage.
    budgets = sorted(s.budgets)
    every = math.gcd(*budgets)
    for i, seed in enumerate(s.seeds):
        for name in s.objectives:
            out = train(name, seed, s.max_steps, every)
            for budget in budgets if i == 0 else [s.max_steps]:
                score(name, seed, s.max_steps, budget)
        baselines(seed, out)
        _write_outputs(s, work, scores, time.perf_counter() - total)
    for seed in s.seeds[1:]:
        for name in s.objectives:
            train(name, seed, s.max_steps, every)
            for budget in budgets:
                score(name, seed, s.max_steps, budget)
    if s.long_steps and s.long_seeds:
        _write_outputs(s, work, scores, time.perf_counter() - total)
        for seed in s.long_seeds:
            for name in s.objectives:
                train(name, seed, s.long_steps, s.long_steps)
                score(name, seed, s.long_steps, s.long_steps)
            _write_outputs(s, work, scores, time.perf_counter() - total)

    return _write_outputs(s, work, scores, time.perf_counter() - total)


def _write_outputs(
    s: BudgetCurveSettings, work: Path, scores: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The table, the figure and the demo's ranges from ``scores``."""
    summary = summarise(scores)
    demo_settings = {
        "config": Path(s.config).name,
        "num_songs": s.num_songs,
        "seconds": s.seconds,
        "max_steps": s.max_steps,
        "probe_windows": s.probe_windows,
        "probe_seeds": s.probe_seeds,
    }
    expected = expected_from_scores(scores, demo_settings, s.max_steps)
    expected["source"] = f"mscl budget-curve, final checkpoints of {s.max_steps}-step runs"
    write_json_atomic(work / EXPECTED_FILE, expected, indent=1)
    md = report(s, summary, scores, seconds)
    (work / "budget_curve.md").write_text(md)
    figure = work / "budget_curve.png"
    plot_budget_curve(summary, figure)
    print(md, flush=True)
    return {"summary": summary, "figure": str(figure), "markdown": md}


def summarise(scores: dict[str, Any]) -> dict[str, Any]:
    """``scores["name|seed|budget|run steps"]`` -> ``[(name, run steps)][budget][metric]`` =
    (mean, std, count) over pre-training seeds (each value the mean over head seeds);
    baselines have run steps 0."""
    grouped: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = {}
    for key, entry in scores.items():
        name, _, budget, steps = key.split("|")
        grouped.setdefault((name, int(steps)), {}).setdefault(int(budget), []).append(entry)
    out: dict[Any, Any] = {}
    for group, budgets in grouped.items():
        out[group] = {}
        for budget, entries in sorted(budgets.items()):
            row: dict[str, Any] = {}
            for task, metric in CURVE_METRICS:
                found = [e["probes"][task] for e in entries if task in e["probes"]]
                if found:
                    # One seed: the spread over its probe heads instead.
                    heads = found[0].get("metrics_std", {}).get(metric, 0.0)
                    values = [f["metrics"][metric] for f in found]
                    row[f"{task}/{metric}"] = _stats(values, heads)
            if all("retrieval" in e for e in entries):
                row["retrieval/recall_at_1"] = _stats([_mean_r1(e) for e in entries])
                for source in entries[0]["retrieval"]["sources"]:
                    per = [e["retrieval"]["sources"][source]["recall"]["1"] for e in entries]
                    per = [float(v) for v in per if v is not None]
                    draws = entries[0]["retrieval"]["sources"][source].get("recall_std", {})
                    if per:
                        row[f"retrieval/{source}"] = _stats(per, draws.get("1") or 0.0)
            out[group][budget] = row
    return out


def _stats(values: list[float], single_std: float = 0.0) -> tuple[float, float, int]:
    """(mean, std, count) over seeds; with one seed, ``single_std`` (its heads' or crop
    draws' spread) stands for the std."""
    std = float(np.std(values)) if len(values) > 1 else float(single_std)
    return float(np.mean(values)), std, len(values)


def _cell(value: tuple[float, float, int] | None) -> str:
    if value is None:
        return "-"
    mean, std, n = value
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def report(
    s: BudgetCurveSettings, summary: dict[Any, Any], scores: dict[str, Any], seconds: float
) -> str:
    """The markdown table: one row per (encoder, run length, step probed)."""
    columns = [f"{t}/{m}" for t, m in CURVE_METRICS] + ["retrieval/recall_at_1"]
    columns += [f"retrieval/{src}" for src in ("vocals", "drums", "bass", "other")]
    has_long = any(steps == s.long_steps for _, steps in summary)
    longer = (
        f", and the end of {s.long_steps}-step runs (halved at {s.long_steps // 2})"
        if has_long and s.long_steps != s.max_steps
        else ""
    )
    lines = [
        f"Budget curve ({Path(s.config).name}, {s.num_songs} songs): checkpoints at "
        f"{', '.join(map(str, sorted(s.budgets)))} steps of {s.max_steps}-step runs (the "
        f"demo's; learning rate halved at step {s.max_steps // 2}){longer}. Values in %, mean ± std "
        f"over pre-training seeds (their count in brackets; with one seed, ± is the spread "
        f"over its probe heads, or over the 5 crop draws of one retrieval source), each "
        f"the mean of "
        f"{s.probe_seeds} probe-head seeds. Every network's batch-norm statistics recomputed: "
        f"on the probes' training windows for the probes, on training chunks for retrieval. "
        f"Test items: {_test_sizes(scores)}. Retrieval: recall@1, mean over the four "
        f"sources, then per source. {seconds / 60:.0f} min.",
        "",
        "| encoder | run steps | step | " + " | ".join(columns) + " |",
        "|---" * (3 + len(columns)) + "|",
    ]
    for (name, steps), budgets in sorted(summary.items(), key=lambda kv: (kv[0][1] > 0, kv[0])):
        for budget, row in budgets.items():
            cells = [_cell(row.get(c)) for c in columns]
            lines.append(
                f"| {name} | {steps or '-'} | {budget or '-'} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def _test_sizes(scores: dict[str, Any]) -> str:
    for entry in scores.values():
        if "retrieval" in entry:
            parts = [f"{t} {v['num_clips']['test']}" for t, v in entry["probes"].items()]
            queries = {k: v["num_queries"] for k, v in entry["retrieval"]["sources"].items()}
            return ", ".join(parts) + f"; retrieval queries per source {queries}"
    return "n/a"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def plot_budget_curve(summary: dict[Any, Any], out: Path) -> None:
    """One panel per metric, steps on a log axis; baselines as horizontal bands."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [f"{t}/{m}" for t, m in CURVE_METRICS] + ["retrieval/recall_at_1"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    colours = {"COLA": "tab:blue", "MSCL": "tab:orange"}
    baselines = {"log-mel statistics": "tab:green", "random init": "tab:gray"}
    short = min((steps for _, steps in summary if steps), default=0)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for (name, steps), budgets in sorted(summary.items(), key=lambda kv: kv[0]):
            points = [(b, r[metric]) for b, r in budgets.items() if metric in r]
            if not points:
                continue
            if name in baselines:
                mean, std, n = points[0][1]
                colour = baselines[name]
                ax.axhline(
                    100 * mean, color=colour, ls="--", label=f"{name} ({n} seed{'s' * (n > 1)})"
                )
                ax.axhspan(100 * (mean - std), 100 * (mean + std), color=colour, alpha=0.1)
                continue
            x = np.array([b for b, _ in points])
            mean = np.array([100 * v[0] for _, v in points])
            std = np.array([100 * v[1] for _, v in points])
            colour = colours.get(name)
            if steps == short:
                label = f"{name} ({steps}-step runs, {_seeds(points[-1][1][2])})"
                ax.plot(x, mean, marker="o", markersize=4, color=colour, label=label)
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2)
            else:
                label = f"{name} ({steps}-step runs, {_seeds(points[-1][1][2])})"
                ax.errorbar(x, mean, yerr=std, fmt="s", mfc="none", color=colour, label=label)
        ax.set_xscale("log")
        # The budgets themselves as ticks, written out (log axes default to powers of 10).
        steps = sorted({b for (_, n), bs in summary.items() if n for b in bs})
        if steps:
            ax.set_xticks(steps, [str(b) for b in steps])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(metric.replace("/", ": "), fontsize=10)
        ax.set_xlabel("pre-training steps (log)")
        ax.grid(True, alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
