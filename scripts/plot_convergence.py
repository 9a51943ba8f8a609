"""Draw probe metrics against pre-training step for several runs into one PNG.

Each run is a pre-training output folder holding ``probes.jsonl`` (or the file itself),
one JSON object per probe evaluation: ``{"step": 500, "corpus_genre/accuracy": 0.61, ...}``
as written by :func:`modeling_mscl.probing.append_probe_log`.

    python scripts/plot_convergence.py COLA=runs/cola MSCL=runs/mscl --out convergence.png
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from modeling_mscl.probing import read_probe_log  # noqa: E402

# Keys of a log record that are bookkeeping, not probe metrics.
_NOT_METRICS = {"step", "epoch", "time", "elapsed", "wall_time"}


def parse_run(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (labelled by the folder name) -> (label, path)."""
    label, sep, path = spec.partition("=")
    if not sep:
        path = spec
        label = Path(spec).name if Path(spec).is_dir() else Path(spec).parent.name
    return label, Path(path)


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


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse arguments, read the runs' logs, write the PNG; returns its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH or PATH (run folder or probes.jsonl)")
    parser.add_argument("--out", default="convergence.png", help="PNG file to write")
    parser.add_argument("--metrics", nargs="*", help="metrics to draw (default: all logged)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, path = parse_run(spec)
        runs[label] = read_probe_log(path)
    drawn = plot_convergence(runs, args.out, args.metrics, args.title)
    print(f"wrote {args.out}: {len(runs)} runs x {len(drawn)} metrics ({', '.join(drawn)})")
    return Path(args.out)


if __name__ == "__main__":
    main()
