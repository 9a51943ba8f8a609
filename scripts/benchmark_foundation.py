"""Throughput of the foundation on this machine: log-mel, encoder inference, training.

Prints seconds of audio per second for the feature extractor (numpy and torch paths),
windows/s for encoder inference at batch 128, and pairs/s for a training step
(forward + backward of 128 anchors and 128 positives of 98 x 64, 25 % absent sources)
in several execution variants. Variants are interleaved and each figure is the median
of several repetitions, because timings on shared machines drift from minute to minute.

    python scripts/benchmark_foundation.py [--repeats 3] [--compile] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from modeling_mscl import MSCLConfig, MSCLFeatureExtractor, MSCLForPreTraining


def _time(fn: Callable[[], object], warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_rates(variants: dict[str, Callable[[], object]], work: float, repeats: int) -> dict:
    """Run each variant once per round, ``repeats`` rounds; median of work / seconds."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            rates[name].append(work / _time(fn, warmup=0))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_features(repeats: int) -> dict[str, float]:
    """Seconds of audio turned into log-mel per second, one 30 s clip at a time."""
    fe = MSCLFeatureExtractor()
    clip = np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1
    clip_t = torch.from_numpy(clip)
    batch_t = clip_t.repeat(8, 1)
    variants = {
        "log-mel numpy (s/s)": lambda: fe.log_mel_numpy(clip),
        "log-mel torch (s/s)": lambda: fe.log_mel(clip_t),
    }
    for fn in variants.values():
        fn()
    out = _median_rates(variants, 30.0, repeats)
    out.update(
        _median_rates({"log-mel torch, batch 8 (s/s)": lambda: fe.log_mel(batch_t)}, 240.0, repeats)
    )
    return out


def bench_model(config: MSCLConfig, repeats: int, use_compile: bool) -> dict[str, float]:
    """Encoder inference windows/s and training pairs/s in several execution variants."""
    torch.manual_seed(0)
    batch = 128
    anchors = torch.randn(batch, 98, 64) - 5.0
    positives = torch.randn(batch, 98, 64) - 5.0
    present = torch.rand(batch) >= 0.25

    def make(channels_last: bool) -> MSCLForPreTraining:
        model = MSCLForPreTraining(config)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def train_step(model, optimizer, autocast: bool):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(anchors, positives, source_present=present).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def infer(model, autocast: bool):
        encoder = model.mscl

        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                encoder(anchors)

        return run

    setups = {
        "fp32": (False, False),
        "channels_last": (True, False),
        "bf16 autocast": (False, True),
        "channels_last + bf16 autocast": (True, True),
    }
    train_variants, infer_variants = {}, {}
    for name, (channels_last, autocast) in setups.items():
        model = make(channels_last).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        train_variants[f"train {name} (pairs/s)"] = train_step(model, optimizer, autocast)
        eval_model = make(channels_last).eval()
        infer_variants[f"inference {name} (windows/s)"] = infer(eval_model, autocast)
    if use_compile:
        model = make(False).train()
        model.mscl = torch.compile(model.mscl)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        train_variants["train torch.compile (pairs/s)"] = train_step(model, optimizer, False)
        eval_model = make(False).eval()
        eval_model.mscl = torch.compile(eval_model.mscl)
        infer_variants["inference torch.compile (windows/s)"] = infer(eval_model, False)
    for fn in (*train_variants.values(), *infer_variants.values()):
        fn()  # warm-up: allocator, oneDNN primitive caches, compilation
    results = _median_rates(infer_variants, float(batch), repeats)
    results.update(_median_rates(train_variants, float(batch), repeats))
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, run the benchmarks and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--tiny", action="store_true", help="tiny encoder (smoke test)")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = bench_features(args.repeats)
    if not args.skip_model:
        config = (
            MSCLConfig(width_coefficient=0.25, depth_coefficient=0.25)
            if args.tiny
            else MSCLConfig()
        )
        results.update(bench_model(config, args.repeats, args.compile))
    width = max(len(k) for k in results)
    for name, value in results.items():
        print(f"{name:<{width}}  {value:10.1f}")
    return results


if __name__ == "__main__":
    main()
