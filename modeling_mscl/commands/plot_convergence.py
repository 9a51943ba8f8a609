"""Draw probe metrics and losses against pre-training step for several runs into one PNG.

Each run is a pre-training output folder or one of its JSON-lines logs. A folder's
``probes.jsonl`` holds one record per probe evaluation (``{"step": 500,
"corpus_genre/accuracy": 0.61, ...}``, written by
``modeling_mscl.probing.append_probe_log``) and its ``history.jsonl`` one record per
logged step (``{"step": 50, "train/loss": 2.1, ...}``, written by every pre-training run,
with or without a tracker); both are read.

    mscl plot COLA=runs/cola MSCL=runs/mscl --out convergence.png

Needs matplotlib (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modeling_mscl._help import HelpFormatter, first_paragraph

__all__ = [
    "HISTORY_FILE",
    "build_parser",
    "default_metrics",
    "main",
    "parse_run",
    "read_run",
]

HISTORY_FILE = "history.jsonl"  # what pre-training writes, one line per logged step
PROBES_FILE = "probes.jsonl"
# History keys drawn by default: the losses (probe scores come from probes.jsonl, whose
# records the history repeats under probe/...).
_HISTORY_DRAWN = ("train/loss", "val/loss")


def __getattr__(name: str) -> Any:
    # The drawing functions, re-exported as before, load matplotlib's side on first use.
    if name in ("metric_names", "plot_convergence"):
        from modeling_mscl.probing import plot

        return getattr(plot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_run(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (labelled by the folder name) -> (label, path)."""
    label, sep, path = spec.partition("=")
    if not sep:
        path = spec
        label = Path(spec).name if Path(spec).is_dir() else Path(spec).parent.name
    return label, Path(path)


def read_run(path: Path) -> list[dict[str, Any]]:
    """A run's records by step: a JSON-lines file, or a folder's probes and history merged."""
    from modeling_mscl.probing import read_probe_log

    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such run folder or log file")
        return read_probe_log(path)
    logs = [path / name for name in (PROBES_FILE, HISTORY_FILE) if (path / name).is_file()]
    if not logs:
        raise FileNotFoundError(
            f"{path} holds neither {PROBES_FILE} nor {HISTORY_FILE}: give a pre-training "
            "output folder (--output_dir of mscl pretrain)"
        )
    by_step: dict[float, dict[str, Any]] = {}
    for log in logs:
        for record in read_probe_log(log):
            by_step.setdefault(float(record["step"]), {}).update(record)
    return [by_step[step] for step in sorted(by_step)]


def default_metrics(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every probe metric logged, then the losses of the history."""
    from modeling_mscl.probing.plot import metric_names

    names = metric_names(runs)
    probes = [n for n in names if "/" in n and n.split("/")[0] not in ("train", "val", "probe")]
    return probes + [n for n in _HISTORY_DRAWN if n in names]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl plot``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", help="LABEL=PATH or PATH (run folder, probes.jsonl or history.jsonl)"
    )
    parser.add_argument("--out", default="convergence.png", help="PNG file to write")
    parser.add_argument(
        "--metrics", nargs="*", help="metrics to draw (default: the probe metrics and losses)"
    )
    parser.add_argument("--title", help="figure title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, read the runs' logs, write the PNG; returns the exit status."""
    args = build_parser().parse_args(argv)
    from modeling_mscl.probing.plot import plot_convergence

    runs = {}
    for spec in args.runs:
        label, path = parse_run(spec)
        runs[label] = read_run(path)
    drawn = plot_convergence(runs, args.out, args.metrics or default_metrics(runs), args.title)
    print(f"wrote {args.out}: {len(runs)} runs x {len(drawn)} metrics ({', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
