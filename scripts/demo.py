"""The main job (`make demo`): the method end to end on the offline corpus, on a CPU.

python scripts/demo.py [--workdir outputs/demo] [--num-songs 200] [--max-steps 600]
"""

from __future__ import annotations

import argparse

from modeling_mscl.demo import DemoSettings, run_demo


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments and run the demo."""
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=defaults.workdir)
    parser.add_argument("--config", default=defaults.config, help="pre-training YAML")
    parser.add_argument("--num-songs", type=int, default=defaults.num_songs)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--probe-every", type=int, default=defaults.probe_every)
    parser.add_argument("--probe-windows", type=int, default=defaults.probe_windows)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    settings = DemoSettings(
        workdir=args.workdir,
        config=args.config,
        num_songs=args.num_songs,
        seconds=args.seconds,
        max_steps=args.max_steps,
        probe_every=args.probe_every,
        probe_windows=args.probe_windows,
        seed=args.seed,
    )
    return run_demo(settings)


if __name__ == "__main__":
    main()
