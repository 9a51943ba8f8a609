"""Gradient checkpointing over the encoder's blocks: memory and time of a pre-training step.

One step is forward + backward + Adam of `MSCLForPreTraining` (the paper's B0 unless
``--config tiny``) on ``--batch-size`` pairs (twice as many windows through the encoder),
with and without ``gradient_checkpointing_enable()``. Each variant runs in its own process,
so the peak resident memory (``ru_maxrss``) is that variant's alone; the step time is the
median over ``--steps`` steps after one warm-up step. Variants alternate over ``--rounds``.

    python scripts/benchmark_checkpointing.py [--batch-size 128] [--steps 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _step_figures(checkpointing: bool, batch: int, steps: int, config: str) -> dict:
    from modeling_mscl import MSCLConfig, MSCLForPreTraining

    torch.manual_seed(0)
    kwargs = {} if config == "b0" else dict(width_coefficient=0.25, depth_coefficient=0.25)
    model = MSCLForPreTraining(MSCLConfig(**kwargs)).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    anchors = torch.randn(batch, 98, 64) * 40
    positives = torch.randn(batch, 98, 64) * 40
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(anchors, positives).loss.backward()
        optimizer.step()
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": statistics.median(times), "peak_mib": peak_mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128, help="pairs per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the variants")
    parser.add_argument("--config", choices=("b0", "tiny"), default="b0")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--_child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        figures = _step_figures(args._child == "on", args.batch_size, args.steps, args.config)
        print(json.dumps(figures))
        return 0
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for variant in ("off", "on"):
            cmd = [sys.executable, __file__, "--_child", variant, *(argv or sys.argv[1:])]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  (checkpointing {variant}: {results[variant][-1]})", flush=True)
    print(
        f"MSCLForPreTraining ({args.config}), {args.batch_size} pairs "
        f"({2 * args.batch_size} windows) per step, {torch.get_num_threads()} threads:"
    )
    base = None
    for variant in ("off", "on"):
        seconds = statistics.median(r["seconds"] for r in results[variant])
        peak = statistics.median(r["peak_mib"] for r in results[variant])
        base = base or (seconds, peak)
        print(
            f"  checkpointing {variant:>3}: {seconds:6.2f} s/step, peak RSS {peak:7.0f} MiB "
            f"({seconds / base[0]:.2f}x time, {peak / base[1]:.2f}x memory)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
