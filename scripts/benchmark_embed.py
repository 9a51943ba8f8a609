"""`mscl embed` end to end against the bare encoder on the same windows, and a loop of
pipeline calls beside it; then the peak memory of embedding one long file.

Writes N files of S seconds (default 200 x 30 s; music-like tones and noise) as 16 kHz
mono wav and as 44.1 kHz stereo mp3, and an encoder folder (the demo's half-width,
half-depth EfficientNet by default, random weights: timing does not depend on them). Per
format and per round, interleaved:

- **bare**: ``encode_windows`` on the windows of all the files, cut beforehand (the
  encoder alone, ``--batch-size`` windows a call);
- **embed**: ``embed_library`` from the folder of files into a fresh library (loading the
  model, decoding, resampling, log-mels, encoding, writing), what ``mscl embed`` runs;
- **pipeline**: ``pipeline("mscl-embedding")`` called on each path in turn.

Each is reported in windows per second (the same windows for all three) and as a ratio to
bare, the median over ``--repeats`` rounds. Then one file of ``--long-hours`` hours is
embedded in a fresh process (no workers) and its peak resident memory is printed beside
that of a process that only loads the model, and the size of the decoded audio.

    python scripts/benchmark_embed.py [--num-files 200] [--seconds 30] [--repeats 3]
        [--encoder demo|b0|tiny] [--num-workers N] [--batch-size 256]
        [--device cuda --dtype bfloat16] [--long-hours 2] [--no-long]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from modeling_mscl import MSCLConfig, MSCLFeatureExtractor, MSCLModel
from modeling_mscl.audio_decoding_mscl import decode_audio
from modeling_mscl.library import embed_library
from modeling_mscl.long_audio_mscl import encode_windows

ENCODERS = {
    "demo": dict(width_coefficient=0.5, depth_coefficient=0.5),
    "b0": {},
    "tiny": dict(width_coefficient=0.25, depth_coefficient=0.25, projection_dim=32),
}


def _music(rate: int, seconds: float, seed: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    freqs = 110.0 * 2 ** (rng.integers(0, 24, 3) / 12)
    mono = sum(0.1 * np.sin(2 * np.pi * f * t) for f in freqs) + 0.02 * rng.standard_normal(t.size)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono, 0.8 * mono], axis=1).astype(np.float32)


def _write_files(folder: Path, count: int, seconds: float, fmt: str) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        if fmt == "wav":
            path = folder / f"track{i:04d}.wav"
            sf.write(path, _music(16000, seconds, i, 1), 16000)
        else:
            path = folder / f"track{i:04d}.mp3"
            sf.write(path, _music(44100, seconds, i, 2), 44100, format="MP3")
        paths.append(str(path))
    return paths


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _long_file(path: Path, hours: float) -> None:
    """A 16 kHz mono wav of ``hours`` hours, written a minute at a time."""
    with sf.SoundFile(path, "w", 16000, 1) as f:
        for minute in range(int(round(hours * 60))):
            f.write(_music(16000, 60.0, minute, 1))


_MEMORY_PROBE = """
import json, resource, sys, torch
from modeling_mscl import MSCLModel
from modeling_mscl.library import embed_library
model_dir, listing, out, device, dtype, only_load = sys.argv[1:7]
if only_load == "1":
    MSCLModel.from_pretrained(model_dir).to(device)
else:
    embed_library(listing, out, model_dir, num_workers=0, device=device, dtype=dtype,
                  progress=False)
peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if device.startswith("cuda"):
    peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(peak))
"""


def _peak(model_dir: Path, listing: Path, out: Path, device: str, dtype: str, load: bool) -> dict:
    argv = [sys.executable, "-c", _MEMORY_PROBE, str(model_dir), str(listing), str(out)]
    argv += [device, dtype, "1" if load else "0"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; print and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-files", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoder", choices=tuple(ENCODERS), default="demo")
    parser.add_argument("--num-workers", type=int, help="embed's decoding workers (its default)")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per encoder call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--long-hours", type=float, default=2.0)
    parser.add_argument("--no-long", action="store_true", help="skip the long-file memory run")
    parser.add_argument("--formats", nargs="+", choices=("wav", "mp3"), default=["wav", "mp3"])
    args = parser.parse_args(argv)
    from transformers import pipeline

    print(
        f"{date.today()}, {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {args.device} {args.dtype}, "
        f"encoder {args.encoder}, {args.num_files} files x {args.seconds:g} s, "
        f"batch {args.batch_size} windows, {args.repeats} rounds"
    )
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = MSCLModel(MSCLConfig(**ENCODERS[args.encoder])).eval()
        model.save_pretrained(root / "model")
        fe = MSCLFeatureExtractor(feature_size=model.config.num_mel_bins)
        fe.save_pretrained(root / "model")
        dtype = getattr(torch, args.dtype)
        model = model.to(args.device, dtype)
        files = {
            fmt: _write_files(root / fmt, args.num_files, args.seconds, fmt) for fmt in args.formats
        }
        windows = {
            fmt: torch.cat(
                [
                    fe(
                        decode_audio(p, fe.sampling_rate)[0],
                        sampling_rate=fe.sampling_rate,
                        return_windows=True,
                        return_tensors="pt",
                    )["input_features"]
                    for p in paths
                ]
            )  # fmt: skip
            for fmt, paths in files.items()
        }
        pipe = pipeline(
            "mscl-embedding", model=str(root / "model"), device=args.device, trust_remote_code=True
        )
        if args.dtype != "float32":
            pipe.model.to(dtype)
        run = 0

        def bare(fmt: str) -> None:
            encode_windows(model, windows[fmt], args.batch_size)
            _sync(args.device)

        def embed(fmt: str) -> None:
            nonlocal run
            run += 1
            embed_library(
                root / fmt, root / f"library-{run}", root / "model", batch_size=args.batch_size,
                num_workers=args.num_workers, device=args.device, dtype=args.dtype,
                progress=False,
            )  # fmt: skip
            _sync(args.device)

        def loop(fmt: str) -> None:
            for path in files[fmt]:
                pipe(path, batch_size=args.batch_size)
            _sync(args.device)

        variants = {"bare": bare, "embed": embed, "pipeline": loop}
        for fmt in args.formats:  # warm-up: first calls build kernels and caches
            bare(fmt)
            embed(fmt)
            pipe(files[fmt][0])
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for fmt in args.formats:
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn(fmt)
                    rate = len(windows[fmt]) / (time.perf_counter() - start)
                    rates.setdefault((fmt, name), []).append(rate)
        print(f"{'format':<28} {'variant':<9} {'windows/s':>10} {'x bare':>7}  (rounds)")
        label = {"wav": "16 kHz mono wav", "mp3": "44.1 kHz stereo mp3"}
        for fmt in args.formats:
            base = statistics.median(rates[(fmt, "bare")])
            for name in variants:
                value = statistics.median(rates[(fmt, name)])
                ratio = value / base
                results[f"{fmt} {name}"] = ratio
                spread = ", ".join(f"{r:.0f}" for r in rates[(fmt, name)])
                print(f"{label[fmt]:<28} {name:<9} {value:>10.1f} {ratio:>7.2f}  ({spread})")
        line = " ".join(
            f"{fmt}-{name} {results[f'{fmt} {name}']:.2f}"
            for fmt in args.formats
            for name in ("embed", "pipeline")
        )
        print(f"ratios to the bare encoder: {line}")

        if not args.no_long:
            long = root / "long.wav"
            _long_file(long, args.long_hours)
            listing = root / "long.txt"
            listing.write_text(f"{long}\n")
            samples = sf.info(long).frames
            loaded = _peak(
                root / "model", listing, root / "lib-long", args.device, args.dtype, True
            )
            peak = _peak(root / "model", listing, root / "lib-long", args.device, args.dtype, False)
            decoded_mb = samples * 4 / 2**20
            results.update(
                long_peak_mb=peak["rss_mb"], long_base_mb=loaded["rss_mb"], decoded_mb=decoded_mb
            )
            print(
                f"one {args.long_hours:g} h file (16 kHz mono wav): peak RSS {peak['rss_mb']:.0f} MB, "
                f"a process that only loads the model {loaded['rss_mb']:.0f} MB, decoded audio "
                f"(float32) {decoded_mb:.0f} MB: {(peak['rss_mb'] - loaded['rss_mb']) / decoded_mb:.2f}"
                " x the decoded audio above the model"
                + (f"; GPU peak {peak['cuda_mb']:.0f} MB" if "cuda_mb" in peak else "")
            )
    return results


if __name__ == "__main__":
    main()
