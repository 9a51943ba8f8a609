"""Throughput of the pipelines of saved folders: seconds of audio per second.

Saves an EfficientNet-B0 encoder and a probe head on it (random weights: the timing does
not depend on them) and runs `pipeline("audio-classification")` and the `mscl-embedding`
pipeline on a 30 s clip given as a 16 kHz mono array, as a {"array", "sampling_rate"}
dict at 44.1 kHz, and as 44.1 kHz stereo flac and mp3 paths: the difference between an
array and a path is the decoding (and resampling) of the file. Variants are interleaved
and each figure is the median of several repetitions (timings on shared machines drift).

    python scripts/benchmark_pipeline.py [--repeats 3] [--seconds 30] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn
from transformers import pipeline

from modeling_mscl import MSCLConfig, MSCLFeatureExtractor, MSCLModel
from modeling_mscl.probing import ProbeTask, TrainedProbe, export_probe


def _folders(root: Path, config: MSCLConfig) -> tuple[Path, Path]:
    """An encoder folder and a three-class probe head folder on it."""
    torch.manual_seed(0)
    encoder = MSCLModel(config).eval()
    encoder.save_pretrained(root / "encoder")
    MSCLFeatureExtractor().save_pretrained(root / "encoder")
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(config.encoder_hidden_size, 3))
    probe = TrainedProbe(head, ProbeTask("bench", "label", multi_label=False), ["a", "b", "c"])
    export_probe(encoder, probe, root / "head")
    return root / "encoder", root / "head"


def _clip(root: Path, seconds: float) -> dict[str, object]:
    """The same music-like clip (tones and noise) in every input form."""
    rng = np.random.default_rng(0)

    def at(rate: int) -> np.ndarray:
        t = np.arange(int(rate * seconds)) / rate
        tones = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (110.0, 440.0, 1320.0))
        return (tones + 0.02 * rng.standard_normal(t.size)).astype(np.float32)

    hifi = at(44100)
    sf.write(root / "clip.flac", np.stack([hifi, 0.8 * hifi], axis=1), 44100)
    sf.write(root / "clip.mp3", hifi, 44100)
    return {
        "array 16 kHz": at(16000),
        "dict 44.1 kHz": {"array": hifi, "sampling_rate": 44100},
        "flac path (44.1 kHz stereo)": str(root / "clip.flac"),
        "mp3 path (44.1 kHz)": str(root / "clip.mp3"),
    }


def _median_rates(variants: dict[str, Callable[[], object]], work: float, repeats: int) -> dict:
    """Each variant once per round (after one warm-up call), ``repeats`` rounds; the median
    of work / seconds."""
    for fn in variants.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            rates[name].append(work / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, run the pipelines and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--tiny", action="store_true", help="tiny encoder (smoke test)")
    args = parser.parse_args(argv)
    config = (
        MSCLConfig(width_coefficient=0.25, depth_coefficient=0.25) if args.tiny else MSCLConfig()
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seconds:g} s clip")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        encoder, head = _folders(root, config)
        inputs = _clip(root, args.seconds)
        options = dict(trust_remote_code=True, device="cpu")
        classify = pipeline("audio-classification", model=str(head), **options)
        embed = pipeline(model=str(encoder), **options)
        variants = {
            f"{task}, {form} (s/s)": (lambda pipe=pipe, audio=audio: pipe(audio))
            for task, pipe in (("classification", classify), ("embedding", embed))
            for form, audio in inputs.items()
        }
        results = _median_rates(variants, args.seconds, args.repeats)
    width = max(len(k) for k in results)
    for name, value in results.items():
        print(f"{name:<{width}}  {value:8.1f}")
    return results


if __name__ == "__main__":
    main()
