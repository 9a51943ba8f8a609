"""Transfer beyond the training timbres: one SoundFont held out of pre-training and probes.

mscl transfer [--workdir outputs/transfer] [--held_out_soundfont TimGM6mb] [--seeds 0 1 2]
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from modeling_mscl._help import first_paragraph
from modeling_mscl.timbre_transfer import TransferSettings, run_transfer


def build_parser() -> HfArgumentParser:
    """The parser of ``mscl transfer``: the fields of :class:`TransferSettings`."""
    return HfArgumentParser(TransferSettings, description=first_paragraph(__doc__))


def main(argv: list[str] | None = None) -> int:
    """Parse :class:`TransferSettings` from ``argv`` and run the measurement; returns the
    exit status."""
    (settings,) = build_parser().parse_args_into_dataclasses(argv)
    run_transfer(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
