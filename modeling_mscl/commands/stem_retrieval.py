"""Zero-shot stem retrieval of pre-trained MSCL models on held-out songs.

    mscl retrieval --model mscl=runs/mscl --model cola=runs/cola \
        --random-init --data corpus/chunks --split test --draws 5 \
        --output results/retrieval.json --markdown results/retrieval.md

``--model NAME=PATH`` (repeatable; a bare PATH is named after its folder) is a run's
output folder or its ``pretraining/`` folder (the full ``MSCLForPreTraining``; the
``encoder/`` folder lacks the similarity and is refused). ``--random-init`` adds a
freshly initialised model of the first model's config (``--config`` otherwise; default
EfficientNet-B0). ``--data`` is a chunk set (:func:`~modeling_mscl.chunks.prepare_chunks`,
``mscl separate``): one with splits needs ``--split``; ``--holdout-fraction F`` evaluates the tracks that
training's ``validation_fraction=F`` held out. The protocol is described in
:mod:`modeling_mscl.probing.retrieval`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modeling_mscl._choices import BN_REGIMES
from modeling_mscl._help import HelpFormatter, plain_text
from modeling_mscl.stems import SOURCES

# The model classes, the chunk set (datasets) and the retrieval are imported in `main`, so
# that `mscl retrieval --help` does not wait for them.

logger = logging.getLogger("stem_retrieval")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl retrieval``."""
    p = argparse.ArgumentParser(description=plain_text(__doc__), formatter_class=HelpFormatter)
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="pre-training model folder (repeatable)",
    )
    p.add_argument("--random-init", action="store_true", help="add a freshly initialised model")
    p.add_argument("--config", help="config JSON/folder for --random-init without --model")
    p.add_argument("--data", required=True, help="chunk set folder (prepare_chunks)")
    p.add_argument("--split", help="split of a DatasetDict to evaluate (e.g. test)")
    p.add_argument(
        "--holdout-fraction",
        type=float,
        help="evaluate the tracks training's validation_fraction held out",
    )
    p.add_argument(
        "--calibration-split",
        default="train",
        help="training counterpart for --bn-regime recalibrated",
    )
    p.add_argument(
        "--bn-regime", choices=BN_REGIMES, default="running",
        help="batch-norm statistics: the saved running ones, per batch, or recalibrated",
    )  # fmt: skip
    p.add_argument(
        "--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="stems to retrieve"
    )
    p.add_argument("--k", nargs="+", type=int, default=[1, 5, 10], help="k of recall@k")
    p.add_argument("--draws", type=int, default=5, help="draws of chunks and crops, averaged")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--max-tracks", type=int, help="evaluate at most this many tracks")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    p.add_argument("--batch-size", type=int, default=256, help="crops per encoder batch")
    p.add_argument(
        "--verify-data",
        action="store_true",
        help="check every file of the chunk set against its checksum first (reads every "
        "byte; without it only presence and sizes are checked)",
    )
    p.add_argument("--output", help="JSON file of the results")
    p.add_argument("--markdown", help="markdown table file")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments of ``mscl retrieval``."""
    return build_parser().parse_args(argv)


def named_paths(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` or ``PATH`` (named after its folder, or its parent for pretraining/)."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            folder = Path(path.rstrip("/"))
            name = folder.parent.name if folder.name == "pretraining" else folder.name
        out.append((name, path))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"model names must be distinct, got {names}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate every model, print the table and write the files asked; returns the exit status."""
    args = parse_args(argv)
    from modeling_mscl import MSCLConfig
    from modeling_mscl.chunk_set import verify_chunk_set
    from modeling_mscl.probing.retrieval import (
        load_pretraining_model,
        random_init_model,
        stem_retrieval,
    )
    from modeling_mscl.probing.retrieval_scores import retrieval_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = named_paths(args.model)
    if not models and not args.random_init:
        raise SystemExit("give --model and/or --random-init")
    if args.verify_data:
        problems = verify_chunk_set(args.data, full=True)
        if problems:
            print("\n".join(f"BAD {problem}" for problem in problems), file=sys.stderr)
            return 1
    results, timings = {}, {}
    first_config = None
    runs: list[tuple[str, Any]] = [(name, path) for name, path in models]
    if args.random_init:
        runs.append(("random init", None))
    for name, path in runs:
        started = time.perf_counter()
        if path is None:
            config = first_config or (
                MSCLConfig.from_pretrained(args.config) if args.config else MSCLConfig()
            )
            model = random_init_model(config, seed=args.seed)
        else:
            model = load_pretraining_model(path)
            first_config = first_config or model.config
        result = stem_retrieval(
            model, args.data, split=args.split, holdout_fraction=args.holdout_fraction,
            max_tracks=args.max_tracks, sources=args.sources, ks=args.k, draws=args.draws,
            seed=args.seed, device=args.device, batch_size=args.batch_size,
            bn_regime=args.bn_regime, calibration_split=args.calibration_split, name=name,
        )  # fmt: skip
        timings[name] = round(time.perf_counter() - started, 3)
        results[name] = result
        summary = result.mean_over_sources()
        logger.info(
            "%s: %s (%.1f s)", name, {k: round(v, 4) for k, v in summary.items()}, timings[name]
        )
        del model
    table = retrieval_table(results)
    print(table)
    payload = {name: r.to_dict() for name, r in results.items()}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(
            json.dumps({"data": args.data, "results": payload, "seconds": timings}, indent=2)
        )
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
