"""Contrastive pre-training of an MSCL encoder (COLA, MSCL, S3T baselines).

    mscl pretrain --config demo --data_dir data_cache/chunks --output_dir runs/mscl
    accelerate launch -m modeling_mscl.commands.pretrain --config paper [--key value ...]
    mscl pretrain --help

Everything happens in :func:`modeling_mscl.training.pretrain`; this module only parses the
command line (``python scripts/pretrain.py`` and ``accelerate launch scripts/pretrain.py``
run it from a checkout).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from modeling_mscl._files import ForeignFolderError
from modeling_mscl._help import quiet_libraries
from modeling_mscl.run_lock import RunLockedError
from modeling_mscl.training_args import argument_parser, parse_args


def build_parser():
    """The parser of ``mscl pretrain``: every key of the four argument groups."""
    return argument_parser()


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and pre-train; returns the exit status."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )
    try:
        args = parse_args(argv)
    except ValueError as err:
        # Named like argparse's own errors: after the program as it was called.
        program = Path(sys.argv[0]).name if sys.argv else "pretrain"
        print(f"{program}: error: {err}", file=sys.stderr)
        return 2
    if not args.training.progress_bar:
        quiet_libraries()  # --progress_bar false: the libraries' bars and INFO lines too
    from modeling_mscl.training import pretrain

    try:
        result = pretrain(args)
    except (RunLockedError, ForeignFolderError) as err:
        # Another run holds the folder, or it is not the package's: nothing was written.
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 1
    print(f"done: step {result.step}, encoder saved to {result.encoder_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
