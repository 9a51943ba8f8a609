"""The seeded study (`make study`): COLA, MSCL and single-source MSCL over several seeds.

python scripts/study.py [--workdir outputs/study] [--seeds 0 1 2] [--max-steps 1200]
"""

from __future__ import annotations

import argparse

from modeling_mscl.study import StudySettings, run_study


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments and run the study."""
    defaults = StudySettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=defaults.workdir)
    parser.add_argument("--config", default=defaults.config, help="pre-training YAML")
    parser.add_argument("--num-songs", type=int, default=defaults.num_songs)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--probe-every", type=int, default=defaults.probe_every)
    parser.add_argument("--probe-windows", type=int, default=defaults.probe_windows)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    args = parser.parse_args(argv)
    settings = StudySettings(
        workdir=args.workdir,
        config=args.config,
        num_songs=args.num_songs,
        seconds=args.seconds,
        max_steps=args.max_steps,
        probe_every=args.probe_every,
        probe_windows=args.probe_windows,
        seeds=args.seeds,
    )
    return run_study(settings)


if __name__ == "__main__":
    main()
