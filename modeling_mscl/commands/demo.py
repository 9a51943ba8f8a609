"""The main job (`make demo`): the method end to end on the offline corpus, on a CPU.

mscl demo [--workdir outputs/demo] [--num_songs 200] [--max_steps 1200]
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from modeling_mscl._help import first_paragraph
from modeling_mscl.demo import DemoSettings, run_demo


def build_parser() -> HfArgumentParser:
    """The parser of ``mscl demo``: the fields of :class:`DemoSettings`."""
    return HfArgumentParser(DemoSettings, description=first_paragraph(__doc__))


def main(argv: list[str] | None = None) -> int:
    """Parse :class:`DemoSettings` from ``argv`` and run the demo; returns the exit status."""
    (settings,) = build_parser().parse_args_into_dataclasses(argv)
    run_demo(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
