"""Convergence figure: probe metrics against pre-training step, one line per run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["metric_names", "plot_convergence"]

# Keys of a log record that are bookkeeping, not probe metrics.
_NOT_METRICS = {"step", "epoch", "time", "elapsed", "wall_time"}


def metric_names(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> list[str]:
    """Every metric logged by any run, in first-seen order."""
    names: list[str] = []
    for records in runs.values():
        for record in records:
            names += [k for k in record if k not in _NOT_METRICS and k not in names]
    return names


def plot_convergence(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    out: str | Path,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> list[str]:
    """One panel per metric, one line per run (same colour in every panel); returns the metrics."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    metrics = list(metrics) if metrics else metric_names(runs)
    if not metrics:
        raise ValueError("no probe metrics found in the runs' logs")
    columns = 2 if len(metrics) == 4 else min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.8 * columns, 3.4 * rows + 0.7), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for panel, metric in enumerate(metrics):
        ax = axes[panel // columns][panel % columns]
        for i, (label, records) in enumerate(runs.items()):
            points = [(r["step"], r[metric]) for r in records if metric in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=3, color=colours(i % 10), label=label)
        task, _, name = metric.rpartition("/")
        ax.set_title(f"{task}: {name}" if task else metric, fontsize=10)
        ax.set_xlabel("pre-training step")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(True, alpha=0.3)
    for panel in range(len(metrics), rows * columns):
        axes[panel // columns][panel % columns].axis("off")
    # Title, then one legend for all panels under it, then the panels.
    top = 1 - 0.7 / fig.get_figheight()
    fig.suptitle(title or "Frozen-probe scores during pre-training", y=0.995, fontsize=12)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, top + 0.45 / fig.get_figheight()),
        ncol=min(len(labels), 2 * columns), frameon=False,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, top))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return metrics
