"""Contrastive pre-training of an MSCL encoder (COLA, MSCL, S3T baselines).

    accelerate launch scripts/pretrain.py --config scripts/configs/demo.yaml [--key value ...]
    python scripts/pretrain.py --help

Everything happens in :func:`modeling_mscl.training.pretrain`; this file only parses the
command line.
"""

from __future__ import annotations

import logging
import sys

from modeling_mscl.training import pretrain
from modeling_mscl.training_args import parse_args


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and pre-train; returns the exit status."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )
    try:
        args = parse_args(argv)
    except ValueError as err:
        print(f"pretrain.py: error: {err}", file=sys.stderr)
        return 2
    result = pretrain(args)
    print(f"done: step {result.step}, encoder saved to {result.encoder_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
