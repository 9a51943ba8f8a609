"""Draw probe metrics against pre-training step for several runs into one PNG.

Each run is a pre-training output folder holding ``probes.jsonl`` (or the file itself),
one JSON object per probe evaluation: ``{"step": 500, "corpus_genre/accuracy": 0.61, ...}``
as written by :func:`modeling_mscl.probing.append_probe_log`.

    mscl plot COLA=runs/cola MSCL=runs/mscl --out convergence.png

Needs matplotlib (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modeling_mscl.probing import read_probe_log
from modeling_mscl.probing.plot import metric_names, plot_convergence

__all__ = ["main", "metric_names", "parse_run", "plot_convergence"]


def parse_run(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (labelled by the folder name) -> (label, path)."""
    label, sep, path = spec.partition("=")
    if not sep:
        path = spec
        label = Path(spec).name if Path(spec).is_dir() else Path(spec).parent.name
    return label, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, read the runs' logs, write the PNG; returns the exit status."""
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
