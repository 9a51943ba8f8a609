"""The seeded study (`make study`): COLA, MSCL and single-source MSCL over several seeds.

mscl study [--workdir outputs/study] [--seeds 0 1 2] [--max_steps 1200]
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from modeling_mscl._help import first_paragraph
from modeling_mscl.study import StudySettings, run_study


def build_parser() -> HfArgumentParser:
    """The parser of ``mscl study``: the fields of :class:`StudySettings`."""
    return HfArgumentParser(StudySettings, description=first_paragraph(__doc__))


def main(argv: list[str] | None = None) -> int:
    """Parse :class:`StudySettings` from ``argv`` and run the study; returns the exit status."""
    (settings,) = build_parser().parse_args_into_dataclasses(argv)
    run_study(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
