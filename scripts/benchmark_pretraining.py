"""Throughput of pre-training on this machine: the pair data path, the model step, the loop.

Prints pairs per second (one pair = an anchor and a positive 98 x 64 crop) for

1. the data path alone, in one process: :class:`~modeling_mscl.pairs.PairDataset` building
   whole minibatches from the memory-mapped chunk set (mscl, cola, s3t with the
   augmentation in the loader), next to a row-by-row reference (``dataset[i]`` per pair,
   the way a naive batch builder reads rows) measured in the same run;
2. the data path through a ``DataLoader`` with 1 and 2 worker processes, as the training
   loop runs it (the batch dict's tensors handed over in shared memory);
3. the model step alone (forward + backward + Adam on a fixed batch) of the tiny and
   demo encoders, and end-to-end training (:func:`~modeling_mscl.training.pretrain`, its
   own ``train/pairs_per_second``) with the same encoders and batch size.

Variants of one table are interleaved and each figure is a median over repeats: timings
on a shared machine drift from minute to minute.

    python scripts/benchmark_pretraining.py [--rows 1000] [--batch-size 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from modeling_mscl.chunk_set import load_chunk_set, save_chunk_set
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import (
    CROP_FRAMES,
    PairDataset,
    SourceBatchSampler,
    synthetic_chunk_dataset,
)

CONFIGS = Path(__file__).resolve().parent / "configs"


def _median_rates(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each variant returns (pairs / seconds) once per round; median over ``repeats`` rounds."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            rates[name].append(fn())
    return {name: statistics.median(r) for name, r in rates.items()}


def _timed(fn: Callable[[], object], pairs: int) -> float:
    start = time.perf_counter()
    fn()
    return pairs / (time.perf_counter() - start)


def make_chunks(path: Path, rows: int) -> None:
    """A synthetic chunk set of ``rows`` chunks, written in pieces to bound memory."""
    from datasets import concatenate_datasets

    per = 250
    parts = [
        synthetic_chunk_dataset(num_tracks=per // 5, chunks_per_track=5, seed=i)
        for i in range(max(1, rows // per))
    ]
    chunks = concatenate_datasets(parts)
    save_chunk_set(chunks, path, MSCLFeatureExtractor(), num_shards=max(1, rows // 500))


def bench_data(data_dir: Path, batch: int, steps: int, repeats: int) -> dict[str, float]:
    store = load_chunk_set(data_dir).store()
    dataset = store.dataset
    kinds = {
        name: PairDataset(store, SourceBatchSampler(store.present, batch, objective=name), 10**6)
        for name in ("mscl", "cola", "s3t")
    }
    numpy_rows = dataset.with_format("numpy", columns=["mixture", "vocals", "present"])
    counter = {"step": 0}

    def inline(data: PairDataset) -> Callable[[], float]:
        def run() -> float:
            first = counter["step"]
            counter["step"] += steps  # always new steps: no batch is built twice

            def work() -> None:
                for s in range(first, first + steps):
                    data[s]

            return _timed(work, steps * batch)

        return run

    def row_by_row() -> float:
        # The reference style: decode every row of the batch through datasets, then crop.
        sampler = kinds["mscl"].sampler
        first = counter["step"]
        counter["step"] += 2

        def work() -> None:
            for s in range(first, first + 2):
                plan = sampler.plan(s)
                anchors, positives = [], []
                for r, a, p in zip(
                    plan.rows, plan.anchor_offsets, plan.positive_offsets, strict=True
                ):
                    row = numpy_rows[int(r)]
                    anchors.append(row["mixture"][a : a + CROP_FRAMES])
                    positives.append(row["vocals"][p : p + CROP_FRAMES])
                torch.from_numpy(np.stack(anchors)), torch.from_numpy(np.stack(positives))

        return _timed(work, 2 * batch)

    # One pass over every row first: the comparison is between warm page caches.
    store.crops("mixture", np.arange(len(store)), np.zeros(len(store), np.int64))
    variants = {f"data path {name}, inline": inline(data) for name, data in kinds.items()}
    variants["row by row (dataset[i]), reference"] = row_by_row
    out = _median_rates(variants, repeats)

    prefetch = 4
    data = kinds["mscl"]
    for workers in (1, 2):
        rates = []
        for _ in range(repeats):
            first = counter["step"]
            counter["step"] += steps * 2 + 4
            loader = torch.utils.data.DataLoader(
                data,
                batch_size=None,
                sampler=range(first, first + steps * 2 + 4),
                num_workers=workers,
                prefetch_factor=prefetch,
            )
            it = iter(loader)
            for _ in range(4):  # workers started and the queue filled
                next(it)
            start = time.perf_counter()
            for _ in range(steps * 2):
                next(it)
            rates.append(steps * 2 * batch / (time.perf_counter() - start))
            del it, loader
        out[f"data path mscl, DataLoader {workers} worker(s)"] = statistics.median(rates)
    return out


def bench_model(config_name: str, batch: int, repeats: int) -> float:
    """Pairs/s of forward + backward + Adam step of the config's encoder on a fixed batch."""
    import yaml

    from modeling_mscl.training import build_model
    from modeling_mscl.training_args import PretrainingArguments

    values = yaml.safe_load((CONFIGS / f"{config_name}.yaml").read_text())
    keys = PretrainingArguments.keys()
    model_args = {k: v for k, v in values.items() if keys.get(k, ("",))[0] == "model"}
    args = PretrainingArguments.from_dict(model_args)
    model = build_model(args).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    anchor = torch.randn(batch, CROP_FRAMES, 64, generator=gen)
    positive = torch.randn(batch, CROP_FRAMES, 64, generator=gen)
    present = torch.rand(batch, generator=gen) < 0.75

    def step() -> None:
        out = model(anchor, positive, source_present=present)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    rates = [_timed(step, batch) for _ in range(repeats)]
    return statistics.median(rates)


def bench_training(config_name: str, data_dir: Path, batch: int, steps: int, workers: int) -> dict:
    """End-to-end pretrain() on the synthetic set; its own pairs/s excludes start-up."""
    from accelerate.state import AcceleratorState, GradientState

    from modeling_mscl.training import pretrain
    from modeling_mscl.training_args import parse_args

    with tempfile.TemporaryDirectory() as out:
        argv = [
            *("--config", str(CONFIGS / f"{config_name}.yaml"), "--data_dir", str(data_dir)),
            *("--output_dir", out, "--batch_size", str(batch), "--max_steps", str(steps + 2)),
            *("--log_every", "2", "--eval_every", "0", "--checkpoint_every", "0"),
            *("--log_with", "none", "--progress_bar", "false", "--num_workers", str(workers)),
            *("--objective", "mscl", "--validation_fraction", "0"),
        ]
        result = pretrain(parse_args(argv))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    # Logged every 2 steps; the first interval holds the warm-up and the workers' start.
    logs = [h for h in result.history if "train/pairs_per_second" in h][1:]
    return {
        "pairs/s": statistics.median(h["train/pairs_per_second"] for h in logs),
        "data wait": statistics.median(h["train/data_wait_fraction"] for h in logs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="chunks in the synthetic set")
    parser.add_argument("--data-dir", type=Path, help="an existing chunk set instead")
    parser.add_argument("--batch-size", type=int, default=128, help="pairs per minibatch (data)")
    parser.add_argument("--model-batch-size", type=int, default=32, help="pairs per model step")
    parser.add_argument("--steps", type=int, default=20, help="minibatches per data measurement")
    parser.add_argument("--train-steps", type=int, default=10, help="steps per training run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--skip-training", action="store_true", help="data path only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp) / "chunks"
            make_chunks(data_dir, args.rows)
        print(f"\n== data path: pairs/s, batch {args.batch_size} (median of {args.repeats})")
        data = bench_data(data_dir, args.batch_size, args.steps, args.repeats)
        reference = data["row by row (dataset[i]), reference"]
        for name, rate in data.items():
            print(f"{name:58s} {rate:10,.0f}   x{rate / reference:6.1f} vs row by row")
        if args.skip_training:
            return

        print(
            f"\n== model step alone vs end-to-end training: pairs/s, batch {args.model_batch_size}"
        )
        for config in ("tiny", "demo"):
            before = bench_model(config, args.model_batch_size, args.repeats)
            runs = {
                w: bench_training(config, data_dir, args.model_batch_size, args.train_steps, w)
                for w in (0, 1)
            }
            after = bench_model(config, args.model_batch_size, args.repeats)
            model_rate = statistics.median([before, after])
            print(f"{config:5s} model step alone                        {model_rate:10,.1f}")
            for w, run in runs.items():
                print(
                    f"{config:5s} training, {w} loader worker(s)             {run['pairs/s']:10,.1f}"
                    f"   {run['pairs/s'] / model_rate:5.2f} of the model step,"
                    f" waiting for data {100 * run['data wait']:.1f} % of the time"
                )


if __name__ == "__main__":
    main()
