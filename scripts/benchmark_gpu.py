"""One-run GPU benchmark: the pre-training step, the data path, log-mels and Demucs.

Made to be run in one go (under 8 minutes) on a machine with one GPU, where nothing can be
downloaded (``make bench-gpu`` builds the wheels it needs). It prints a markdown table and
writes every figure to one JSON file (``--out``), section by section, so that a run cut
short still leaves what it measured. Each measurement is guarded: a failure (a
``torch.compile`` mode the machine cannot run, say) is printed and recorded, the others
go on, and the exit status is 1.

1. Training pairs/s of the paper's B0 (:class:`~modeling_mscl.MSCLForPreTraining`, default
   :class:`~modeling_mscl.MSCLConfig`, bilinear similarity): 128 pairs per step, one encoder
   pass over anchors and positives, the null-source loss with 25 % absent sources and the
   project's Adam (:func:`~modeling_mscl.optim.make_optimizer`), in fp32, bf16 autocast,
   channels-last (fp32 and bf16; bf16 also with ``cudnn.benchmark``, which training turns
   on) and ``torch.compile`` of the encoder (channels-last + bf16; ``--compile-mode
   reduce-overhead`` captures CUDA graphs). Warm-up excluded, the device
   synchronised around every timed window, median of the repetitions. Not included:
   gradient clipping, metering and logging of the training loop.
2. The data path: a synthetic chunk set saved to a temporary folder and read the way
   pre-training reads it (:func:`open_training_loader`), through a ``DataLoader`` with
   several workers and pinned memory on CUDA, up to the batch on the device; no model.
   Its pairs/s over the fastest training variant's (goal >= 1.5: the model never waits).
3. Log-mel throughput (seconds of audio per second) of
   :class:`~modeling_mscl.MSCLFeatureExtractor` on a batch of 30 s clips already on the
   device: through ``__call__`` (torch input stays on its device) and through its torch
   front end ``log_mel`` alone.
4. Demucs: a randomly initialised HTDemucs in the htdemucs layout (no weights needed),
   track by track: bare ``demucs.apply.apply_model``, our
   :meth:`~modeling_mscl.stems.DemucsSeparator.separate`, and the whole map step
   (:class:`~modeling_mscl.chunks.StemChunker`: decoding, separation, log-mels, chunks)
   on the same audio. Goal: ours >= 0.95 of bare ``apply_model``.

``--device cpu --quick`` runs everything with tiny sizes (the CI test): batch 8, a
width/depth-0.25 encoder, a 2 s log-mel clip, a tiny HTDemucs on one 4 s track (a
chunk needs 3.94 s), and ``torch.compile`` with the ``aot_eager`` backend (tracing and
autograd without inductor's code generation, which takes minutes on a small CPU).

    python scripts/benchmark_gpu.py [--device cuda] [--out gpu.json] [--quick]
        [--compile-mode reduce-overhead|max-autotune|...] [--sections train data logmel demucs]

On a GPU machine without network, with the wheels of ``make bench-gpu`` copied along:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site-packages wheels-gpu/*.whl
    PYTHONPATH=/tmp/site-packages python3 scripts/benchmark_gpu.py --out benchmark_gpu.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# Only what every section needs: the data path and Demucs import their packages (datasets,
# pyarrow, soundfile, demucs, julius) when they run, so that an image without them still
# measures the rest; the preflight names what is missing.
from modeling_mscl import MSCLConfig, MSCLFeatureExtractor, MSCLForPreTraining
from modeling_mscl.optim import make_optimizer

# Run in this order whatever the command line's: compiling, the one step that may take
# minutes, comes last, so that a run cut short has every other figure.
SECTIONS = ("train", "data", "logmel", "demucs", "compile")
TRAIN_GOAL = 10_000.0  # bf16 pairs/s on one H200
DATA_GOAL = 1.5  # data path pairs/s over the model step's
DEMUCS_GOAL = 0.95  # our separation over bare apply_model
# What each section imports beyond torch, transformers and the package's model, checked
# by the preflight before anything runs.
SECTION_IMPORTS = {
    "train": (),
    "data": ("pyarrow", "datasets", "modeling_mscl.pairs", "modeling_mscl.training"),
    "logmel": (),
    "demucs": (
        "soundfile",
        "julius",
        "demucs.apply",
        "demucs.htdemucs",
        "modeling_mscl.chunks",
        "benchmark_separation",
    ),
    "compile": (),
}
# The figure a skipped section stands for in the JSON and the table.
SECTION_KEYS = {"data": "data/loader", "demucs": "demucs/apply_model"}
# key: (label, channels-last, bf16 autocast, compiled, cudnn.benchmark)
TRAIN_VARIANTS = {
    "fp32": ("fp32", False, False, False, False),
    "bf16": ("bf16 autocast", False, True, False, False),
    "channels_last": ("channels-last", True, False, False, False),
    "channels_last_bf16": ("channels-last + bf16 autocast", True, True, False, False),
    # Training turns cudnn.benchmark on (fixed shapes); the others say what it gives.
    "channels_last_bf16_cudnn_benchmark": (
        "channels-last + bf16 autocast + cudnn.benchmark",
        *(True, True, False, True),
    ),
    "compile_channels_last_bf16": (
        "torch.compile + channels-last + bf16 autocast",
        *(True, True, True, False),
    ),
}


@dataclass
class Sizes:
    """How big each measurement is (full run or ``--quick``)."""

    batch_size: int = 128
    width: float = 1.0  # width and depth coefficients of the encoder (1.0 = B0)
    repeats: int = 5
    train_steps: int = 20  # optimizer steps per timed window
    warmup_steps: int = 5
    chunk_rows: int = 1024
    workers: int = 8
    data_steps: int = 50  # minibatches per timed window
    clips: int = 32
    clip_seconds: float = 30.0
    demucs_arch: str = "htdemucs"
    tracks: int = 3
    track_seconds: float = 30.0

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes for a CPU smoke test (a track of 4 s: one chunk needs 3.94 s)."""
        return cls(
            batch_size=8,
            width=0.25,
            repeats=1,
            train_steps=2,
            warmup_steps=1,
            chunk_rows=32,
            workers=2,
            data_steps=4,
            clips=2,
            clip_seconds=2.0,
            demucs_arch="tiny",
            tracks=1,
            track_seconds=4.0,
        )


@dataclass
class Report:
    """The figures, the failures and the context of a run; saved as JSON after each section."""

    out: Path | None
    meta: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(
        self, key: str, section: str, label: str, value: float, unit: str, goal: float | None
    ) -> None:
        """Record one figure and print it at once (a long run shows progress)."""
        self.figures[key] = {
            "section": section,
            "label": label,
            "value": float(value),
            "unit": unit,
            "goal": goal,
        }
        print(f"  {label}: {value:,.3g} {unit}", flush=True)

    def fail(
        self, key: str, section: str, label: str, err: BaseException, trace: bool = True
    ) -> None:
        """Record a failed measurement; the run goes on."""
        message = f"{type(err).__name__}: {err}".strip()
        self.errors[key] = {"section": section, "label": label, "error": message[:2000]}
        print(f"  {label}: FAILED ({message[:300]})", flush=True)
        if trace:
            traceback.print_exc(limit=4, file=sys.stdout)

    def save(self) -> None:
        if self.out is not None:
            payload = {"meta": self.meta, "figures": self.figures, "errors": self.errors}
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(payload, indent=2) + "\n")

    def table(self) -> str:
        """The markdown table of every figure and failure, in the order measured."""
        quick = self.meta.get("quick", False)
        lines = ["| section | figure | value | unit | goal |", "|---|---|---:|---|---|"]
        # Grouped by section (the compiled variant is measured last but belongs to train).
        order = {"train": 0, "data": 1, "log-mel": 2, "demucs": 3}
        for f in sorted(self.figures.values(), key=lambda f: order.get(f["section"], 9)):
            goal = ""
            if f["goal"] is not None:
                verdict = (
                    "n/a in quick mode"
                    if quick
                    else ("met" if f["value"] >= f["goal"] else "missed")
                )
                goal = f">= {f['goal']:,g} ({verdict})"
            value = f"{f['value']:,.0f}" if f["value"] >= 100 else f"{f['value']:.3g}"
            lines.append(f"| {f['section']} | {f['label']} | {value} | {f['unit']} | {goal} |")
        for e in self.errors.values():
            reason = e["error"].splitlines()[0][:120].replace("|", "/")
            lines.append(f"| {e['section']} | {e['label']} | failed | | {reason} |")
        return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(fn: Callable[[], object], work: float, repeats: int, device: torch.device) -> float:
    """Median over ``repeats`` synchronised windows of ``work / seconds`` of one ``fn()``."""
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


# ------------------------------------------------------------------------------ training


def training_step(
    config: MSCLConfig,
    device: torch.device,
    batch: int,
    channels_last: bool,
    bf16: bool,
    compile_options: dict[str, Any] | None,
) -> Callable[[], None]:
    """One optimizer step of pre-training on a fixed batch, as a closure."""
    torch.manual_seed(0)
    model = MSCLForPreTraining(config).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer("adam", model.parameters(), 1e-3)
    mark_step = None
    if compile_options is not None:
        # The encoder only: the loss is small next to it.
        model.mscl = torch.compile(model.mscl, **compile_options)
        if device.type == "cuda" and "reduce-overhead" in str(compile_options.get("mode")):
            # Tells the CUDA-graph trees that a new iteration starts (no output is reused).
            mark_step = torch.compiler.cudagraph_mark_step_begin
    gen = torch.Generator().manual_seed(0)
    crop_frames = MSCLFeatureExtractor().window_frames  # a training crop is one window
    shape = (batch, crop_frames, config.num_mel_bins)
    anchor = (torch.randn(shape, generator=gen) - 5.0).to(device)
    positive = (torch.randn(shape, generator=gen) - 5.0).to(device)
    # Exactly a quarter of the sources absent, at random rows.
    present = (torch.arange(batch) % 4 != 0)[torch.randperm(batch, generator=gen)].to(device)

    def step() -> None:
        if mark_step is not None:
            mark_step()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(anchor, positive, source_present=present).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_training(
    args: argparse.Namespace,
    sizes: Sizes,
    device: torch.device,
    report: Report,
    compiled_only: bool = False,
) -> None:
    """The training variants without ``torch.compile``, or (``compiled_only``) with it."""
    config = MSCLConfig(width_coefficient=sizes.width, depth_coefficient=sizes.width)
    if args.compile_backend == "inductor":
        compile_options: dict[str, Any] = {"mode": args.compile_mode}
        compiled_name = f"torch.compile (mode {args.compile_mode})"
    else:
        compile_options = {"backend": args.compile_backend}
        compiled_name = f"torch.compile (backend {args.compile_backend})"
    meta = report.meta.setdefault("train", {})
    meta.update(
        batch_size=sizes.batch_size,
        width_depth_coefficient=sizes.width,
        parameters=sum(p.numel() for p in MSCLForPreTraining(config).parameters()),
        steps_per_window=sizes.train_steps,
        compile=compile_options,
    )
    warmups = meta.setdefault("warmup_seconds", {})
    variants = {k: v for k, v in TRAIN_VARIANTS.items() if v[3] == compiled_only}
    for key, (label, channels_last, bf16, compiled, cudnn_benchmark) in variants.items():
        label = label.replace("torch.compile", compiled_name)
        fig_key = f"train/{key}"
        torch.backends.cudnn.benchmark = cudnn_benchmark
        try:
            step = training_step(
                config, device, sizes.batch_size, channels_last, bf16,
                compile_options if compiled else None,
            )  # fmt: skip
            # Compiling happens in the first calls; CUDA graphs are recorded in the next.
            start = time.perf_counter()
            for _ in range(sizes.warmup_steps + (3 if compiled else 0)):
                step()
            synchronize(device)
            warmups[key] = round(time.perf_counter() - start, 2)

            def window(step: Callable[[], None] = step) -> None:
                for _ in range(sizes.train_steps):
                    step()

            rate = median_rate(window, sizes.train_steps * sizes.batch_size, sizes.repeats, device)
            report.add(fig_key, "train", label, rate, "pairs/s", TRAIN_GOAL if bf16 else None)
        except Exception as err:  # noqa: BLE001 - one variant failing must not end the run
            report.fail(fig_key, "train", label, err)
        finally:
            torch.backends.cudnn.benchmark = False
            step = None  # free the model (and any CUDA graphs) before the next variant
            if compiled:
                torch.compiler.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- data path


def make_chunk_set(folder: Path, rows: int) -> None:
    """A synthetic chunk set of about ``rows`` chunks, written with ``save_chunk_set``."""
    from datasets import concatenate_datasets, disable_progress_bars

    from modeling_mscl.chunk_set import save_chunk_set
    from modeling_mscl.pairs import synthetic_chunk_dataset

    disable_progress_bars()
    per = min(rows, 256)  # built in parts to bound the generator's float64 intermediates
    parts = [
        synthetic_chunk_dataset(num_tracks=per // 4, chunks_per_track=4, seed=i)
        for i in range(max(1, rows // per))
    ]
    chunks = concatenate_datasets(parts)
    save_chunk_set(chunks, folder, MSCLFeatureExtractor(), num_shards=max(1, rows // 256))


def open_training_loader(
    data_dir: Path, batch_size: int, num_workers: int, num_steps: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """The loader pre-training builds over the chunk set ``data_dir``: the only lines here
    that know how a chunk set is opened and read.

    Mirrors ``load_chunk_stores``, ``build_sampler`` and ``make_batches`` of
    :mod:`modeling_mscl.training` for one process, the mscl objective, no validation split.
    """
    from modeling_mscl.pairs import PairDataset
    from modeling_mscl.training import build_sampler, load_chunk_stores
    from modeling_mscl.training_args import PretrainingArguments

    prefetch = 4
    args = PretrainingArguments.from_dict(
        {
            "data_dir": str(data_dir),
            "batch_size": batch_size,
            "num_workers": num_workers,
            "prefetch_factor": prefetch,
            "validation_fraction": 0.0,
        }
    )
    store, _ = load_chunk_stores(args)
    dataset = PairDataset(store, build_sampler(args, store), num_steps)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(num_steps),
        num_workers=num_workers,
        prefetch_factor=prefetch if num_workers else None,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def bench_data(
    args: argparse.Namespace, sizes: Sizes, device: torch.device, report: Report
) -> None:
    from modeling_mscl.training_metrics import batch_inputs

    label = f"DataLoader, {sizes.workers} workers, to the device"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "chunks"
            start = time.perf_counter()
            make_chunk_set(data_dir, sizes.chunk_rows)
            report.meta["data"] = {
                "chunk_rows": sizes.chunk_rows,
                "workers": sizes.workers,
                "batch_size": sizes.batch_size,
                "steps_per_window": sizes.data_steps,
                "chunk_set_seconds": round(time.perf_counter() - start, 2),
            }
            warmup = sizes.workers * 4 + 2  # the workers started and their queues filled
            total = warmup + sizes.repeats * sizes.data_steps
            loader = open_training_loader(data_dir, sizes.batch_size, sizes.workers, total, device)
            batches = iter(loader)

            def take(count: int) -> None:
                for _ in range(count):
                    batch_inputs(next(batches), device, "mscl", None)  # what the loop does with it

            take(warmup)
            work = sizes.data_steps * sizes.batch_size
            rate = median_rate(lambda: take(sizes.data_steps), work, sizes.repeats, device)
            # The last next() exhausts the iterator, which stops the workers before their
            # chunk files are deleted.
            if next(batches, None) is not None:
                raise RuntimeError(f"the loader gave more than the {total} batches asked for")
        report.add("data/loader", "data", label, rate, "pairs/s", None)
    except Exception as err:  # noqa: BLE001
        report.fail("data/loader", "data", label, err)


def data_ratio(report: Report) -> None:
    """The data path's pairs/s over the fastest training variant's."""
    label = "data path / fastest training variant"
    try:
        trained = {k: f for k, f in report.figures.items() if k.startswith("train/")}
        if not trained:
            raise RuntimeError("no training variant was measured (section train skipped or failed)")
        if "data/loader" not in report.figures:
            raise RuntimeError("the data path was not measured")
        fastest = max(trained, key=lambda k: trained[k]["value"])
        report.meta["data"]["ratio_against"] = fastest
        ratio = report.figures["data/loader"]["value"] / trained[fastest]["value"]
        label = f"{label} ({trained[fastest]['label']})"
        report.add("data/ratio", "data", label, ratio, "x", DATA_GOAL)
    except Exception as err:  # noqa: BLE001
        report.fail("data/ratio", "data", label, err)


# ------------------------------------------------------------------------------- log-mel


def bench_logmel(
    args: argparse.Namespace, sizes: Sizes, device: torch.device, report: Report
) -> None:
    fe = MSCLFeatureExtractor()
    gen = torch.Generator().manual_seed(0)
    samples = int(sizes.clip_seconds * fe.sampling_rate)
    clips = (0.1 * torch.randn(sizes.clips, samples, generator=gen)).to(device)
    seconds = sizes.clips * sizes.clip_seconds
    report.meta["logmel"] = {"clips": sizes.clips, "clip_seconds": sizes.clip_seconds}
    variants = {
        "logmel/call": (
            f"feature extractor __call__, {sizes.clips} x {sizes.clip_seconds:g} s on the device",
            lambda: fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt"),
        ),
        "logmel/log_mel": (
            f"torch front end log_mel, {sizes.clips} x {sizes.clip_seconds:g} s on the device",
            lambda: fe.log_mel(clips),
        ),
    }
    for key, (label, fn) in variants.items():
        try:
            out = fn()
            features = out if torch.is_tensor(out) else out["input_features"]
            if features.device.type != device.type:
                raise RuntimeError(f"features came back on {features.device}, not on {device}")
            rate = median_rate(fn, seconds, sizes.repeats, device)
            report.add(key, "log-mel", label, rate, "audio s/s", None)
        except Exception as err:  # noqa: BLE001
            report.fail(key, "log-mel", label, err)


# -------------------------------------------------------------------------------- Demucs


def bench_demucs(
    args: argparse.Namespace, sizes: Sizes, device: torch.device, report: Report
) -> None:
    # The sibling benchmark's random htdemucs layout, synthetic tracks and bare call.
    from benchmark_separation import MODEL_SR, build_model, direct_apply, write_tracks

    from modeling_mscl.audio_io import load_audio
    from modeling_mscl.chunks import StemChunker
    from modeling_mscl.stems import DemucsSeparator

    labels = {
        "demucs/apply_model": "bare demucs apply_model, per track",
        "demucs/separate": "DemucsSeparator.separate, per track",
        "demucs/map_step": "map step (StemChunker: decode, separate, log-mel), per track",
    }
    try:
        model = build_model(sizes.demucs_arch, None, None).to(device)
        with tempfile.TemporaryDirectory() as tmp:
            tracks = write_tracks(Path(tmp), sizes.tracks, sizes.track_seconds)
            mixes = [
                torch.from_numpy(load_audio(p, sampling_rate=None, mono=False))
                for p in tracks["audio"]
            ]
            separator = DemucsSeparator(model_instance=model, device=str(device), batch_size=1)
            chunker = StemChunker(separator, device=str(device))

            def separate() -> None:
                for mix in mixes:
                    separator.separate([mix], [MODEL_SR], device=device)

            def map_step() -> None:
                for track_id, path in zip(tracks["track_id"], tracks["audio"], strict=True):
                    rows = chunker({"track_id": [track_id], "audio": [path]})
                    if not rows["mixture"]:
                        raise RuntimeError(f"the map step made no chunk of {path}")

            variants = {
                "demucs/apply_model": lambda: direct_apply(model, mixes, device),
                "demucs/separate": separate,
                "demucs/map_step": map_step,
            }
            for fn in variants.values():
                fn()  # warm-up: kernels, allocator, resampler caches, file cache
            # Interleaved rounds: drift hits every variant alike.
            rates: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(sizes.repeats):
                for key, fn in variants.items():
                    rates[key].append(
                        median_rate(fn, sizes.tracks * sizes.track_seconds, 1, device)
                    )
        report.meta["demucs"] = {
            "arch": f"random {sizes.demucs_arch}",
            "parameters": sum(p.numel() for p in model.parameters()),
            "tracks": sizes.tracks,
            "track_seconds": sizes.track_seconds,
            "sampling_rate": MODEL_SR,
        }
        rate = {k: statistics.median(r) for k, r in rates.items()}
        for key, label in labels.items():
            report.add(key, "demucs", label, rate[key], "audio s/s", None)
        for key in ("demucs/separate", "demucs/map_step"):
            name = key.split("/")[1]
            report.add(
                f"{key}_ratio", "demucs", f"{name} / apply_model",
                rate[key] / rate["demucs/apply_model"], "x", DEMUCS_GOAL,
            )  # fmt: skip
    except Exception as err:  # noqa: BLE001
        report.fail("demucs/apply_model", "demucs", "Demucs comparison", err)


# ---------------------------------------------------------------------------------- main


def preflight(sections: list[str], device: torch.device, backend: str) -> dict[str, str]:
    """Import what the chosen sections need and print one line per package; returns
    ``{section: why it cannot run}`` for the sections that lack one."""
    wanted = {s: list(SECTION_IMPORTS[s]) for s in sections}
    if "compile" in wanted and device.type == "cuda" and backend == "inductor":
        wanted["compile"].append("triton")  # inductor's GPU kernels
    print("== preflight", flush=True)
    print(f"  torch {torch.__version__}, device {device}", flush=True)
    found: dict[str, str] = {}
    for module in dict.fromkeys(m for names in wanted.values() for m in names):
        try:
            importlib.import_module(module)
            found[module] = "ok"
        except Exception as err:  # noqa: BLE001 - an import may fail in any way
            missing = getattr(err, "name", None) if isinstance(err, ImportError) else None
            found[module] = (
                f"missing {missing}" if missing else f"{type(err).__name__}: {err}"
            ).splitlines()[0]
        print(f"  {module}: {found[module]}", flush=True)
    blocked = {}
    for section, names in wanted.items():
        bad = [f"{m} ({found[m]})" for m in names if found[m] != "ok"]
        if bad:
            blocked[section] = (
                f"cannot run: {', '.join(bad)}; install the wheels of `make bench-gpu`"
            )
            print(f"  section {section} will be skipped", flush=True)
    return blocked


def describe(device: torch.device, quick: bool) -> dict[str, Any]:
    """What the figures depend on: versions, the device, the mode."""
    meta: dict[str, Any] = {
        "quick": quick,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
    return meta


def main(argv: list[str] | None = None) -> int:
    """Run the sections, print the table, write the JSON; 1 if anything failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke test")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--compile-mode",
        default="reduce-overhead",
        help="torch.compile mode for inductor: reduce-overhead (CUDA graphs), max-autotune "
        "(searches kernels: minutes more), max-autotune-no-cudagraphs, default",
    )
    parser.add_argument(
        "--compile-backend",
        help="torch.compile backend (default inductor; aot_eager with --quick on the CPU)",
    )
    parser.add_argument("--workers", type=int, help="DataLoader workers (default 8, quick 2)")
    parser.add_argument("--repeats", type=int, help="timed windows per figure (default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's; 1 with --quick on the CPU)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; use --device cpu --quick")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.workers is not None:
        sizes.workers = args.workers
    if args.repeats is not None:
        sizes.repeats = args.repeats
    if args.threads is None and args.quick and device.type == "cpu":
        # Tiny sizes cannot use a second thread, and on a shared CPU its spin-waits cost
        # the run most of its time.
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.quick and device.type == "cpu" else "inductor"

    report = Report(args.out, describe(device, args.quick))
    report.meta["sizes"] = asdict(sizes)
    # The sibling benchmark (Demucs' random model, tracks) is imported from this folder.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    blocked = preflight([n for n in SECTIONS if n in args.sections], device, args.compile_backend)
    report.meta["preflight"] = blocked
    report.save()
    started = time.perf_counter()
    benches = {
        "train": bench_training,
        "data": bench_data,
        "logmel": bench_logmel,
        "demucs": bench_demucs,
        "compile": functools.partial(bench_training, compiled_only=True),
    }
    for name in (n for n in SECTIONS if n in args.sections):
        print(f"== {name}", flush=True)
        if name in blocked:
            key = SECTION_KEYS.get(name, f"{name}/section")
            report.fail(
                key, name, f"section {name}", ModuleNotFoundError(blocked[name]), trace=False
            )
            report.save()
            continue
        section_start = time.perf_counter()
        benches[name](args, sizes, device, report)
        seconds = round(time.perf_counter() - section_start, 1)
        report.meta.setdefault("section_seconds", {})[name] = seconds
        print(f"  ({seconds:.0f} s)", flush=True)
        report.save()
    if "data" in args.sections:
        data_ratio(report)
    report.meta["total_seconds"] = round(time.perf_counter() - started, 1)
    report.save()
    print()
    print(report.table())
    bad = [k for k, f in report.figures.items() if not math.isfinite(f["value"]) or f["value"] <= 0]
    if bad:
        print(f"not a positive finite figure: {bad}")
    where = f"; figures in {args.out}" if args.out else ""
    print(f"\n{report.meta['total_seconds']:.0f} s in all{where}")
    return 1 if report.errors or bad else 0


if __name__ == "__main__":
    sys.exit(main())
