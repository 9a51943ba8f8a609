"""How long the front door takes: `import modeling_mscl`, `mscl --help` and every
`mscl COMMAND --help` against `import torch, transformers`, the floor any transformers
model package pays.

Each variant runs in a fresh interpreter; the variants are interleaved round by round and
each figure is the median over the rounds (timings on shared machines drift).

    python scripts/benchmark_import.py [--rounds 7] [--no-commands]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from modeling_mscl.cli import COMMANDS

VARIANTS = {
    "import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
    "import modeling_mscl": [sys.executable, "-c", "import modeling_mscl"],
    "mscl --help": [sys.executable, "-m", "modeling_mscl.cli", "--help"],
    "import modeling_mscl; MSCLModel": [
        sys.executable,
        "-c",
        "import modeling_mscl; modeling_mscl.MSCLModel",
    ],
}


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Print the median wall time of each variant and its ratio to the torch+transformers floor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--no-commands", action="store_true", help="skip the `mscl COMMAND --help` variants"
    )
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    if not args.no_commands:
        for name in COMMANDS:
            variants[f"mscl {name} --help"] = [
                *VARIANTS["mscl --help"][:-1],
                name,
                "--help",
            ]
    times: dict[str, list[float]] = {name: [] for name in variants}
    _seconds(variants["import modeling_mscl"])  # warm the file cache once
    for _ in range(args.rounds):
        for name, command in variants.items():
            times[name].append(_seconds(command))
    floor = statistics.median(times["import torch, transformers"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:6.2f} s  {median / floor:4.2f}x")


if __name__ == "__main__":
    main()
