"""The main job (`make demo`): the method end to end on the offline corpus, on a CPU.

python scripts/demo.py [--workdir outputs/demo] [--num_songs 200] [--max_steps 1200]
"""

from __future__ import annotations

from transformers import HfArgumentParser

from modeling_mscl.demo import DemoSettings, run_demo


def main(argv: list[str] | None = None) -> dict:
    """Parse :class:`DemoSettings` from ``argv`` and run the demo."""
    (settings,) = HfArgumentParser(DemoSettings).parse_args_into_dataclasses(argv)
    return run_demo(settings)


if __name__ == "__main__":
    main()
