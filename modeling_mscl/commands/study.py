"""The seeded study (`make study`): COLA, MSCL and single-source MSCL over several seeds.

python scripts/study.py [--workdir outputs/study] [--seeds 0 1 2] [--max_steps 1200]
"""

from __future__ import annotations

from transformers import HfArgumentParser

from modeling_mscl.study import StudySettings, run_study


def main(argv: list[str] | None = None) -> dict:
    """Parse :class:`StudySettings` from ``argv`` and run the study."""
    (settings,) = HfArgumentParser(StudySettings).parse_args_into_dataclasses(argv)
    return run_study(settings)


if __name__ == "__main__":
    main()
