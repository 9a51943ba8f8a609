"""Cost of the stems map step against calling Demucs' ``apply_model`` directly.

Prints, for the same tracks (44.1 kHz stereo wav files):

* the real-time factor (seconds of audio per second) of ``apply_model`` called on each
  track already in memory, the way a bare Demucs script would;
* the real-time factor of :func:`modeling_mscl.chunks.prepare_chunks` with a
  :class:`~modeling_mscl.stems.DemucsSeparator`: decoding, resampling, separation,
  log-mels, presence flags, writing the shards and the final dataset;
* the ratio of the two (goal >= 0.95: the wrapping costs under 5 %), and, to locate the
  overhead, the real-time factor of ``DemucsSeparator.separate`` alone;
* the map-step throughput with oracle stems (tracks/s): everything but separation.

Variants are interleaved and each figure is the median of ``--repeats`` rounds, because
timings on shared machines drift. Without weights (offline), the model is a randomly
initialised HTDemucs: ``--arch tiny`` (a few thousand parameters: the wrapping cost
dominates, a worst case) or ``--arch htdemucs`` (the 41 M-parameter htdemucs layout:
realistic compute); with weights, ``--model htdemucs [--repo DIR]``.

    python scripts/benchmark_separation.py [--arch tiny|htdemucs | --model NAME] [--tracks 4]
        [--seconds 30] [--repeats 3] [--device cpu] [--batch-size 4] [--demucs-batch N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from modeling_mscl.audio_io import load_audio, write_audio
from modeling_mscl.chunks import prepare_chunks
from modeling_mscl.stems import SOURCES, DemucsSeparator, OracleSeparator, load_demucs_model

MODEL_SR = 44100


def build_model(arch: str, name: str | None, repo: str | None) -> torch.nn.Module:
    """A pretrained model when ``name`` is given, else a randomly initialised HTDemucs."""
    if name:
        return load_demucs_model(name, repo)
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    sources = ["drums", "bass", "other", "vocals"]
    if arch == "htdemucs":
        # htdemucs' published layout (41.5 M parameters, 7.8 s training segment).
        model = HTDemucs(sources=sources, bottom_channels=512, segment=Fraction(39, 5))
    else:
        model = HTDemucs(
            sources=sources,
            channels=4,
            depth=3,
            nfft=1024,
            t_layers=1,
            t_heads=1,
            t_hidden_scale=1.0,
            dconv_comp=2,
            segment=1,
        )
    return model.eval()


def write_tracks(folder: Path, count: int, seconds: float) -> Dataset:
    """Noise-like 44.1 kHz stereo stems and mixtures, MUSDB-style rows."""
    rng = np.random.default_rng(0)
    rows = []
    n = int(seconds * MODEL_SR)
    for i in range(count):
        row = {"track_id": f"track{i}"}
        mix = np.zeros((2, n), np.float32)
        for source in SOURCES:
            # a decaying-tone texture rather than white noise, so stems are not all alike
            t = np.arange(n) / MODEL_SR
            tone = np.sin(2 * np.pi * rng.uniform(60, 2000) * t) * (0.5 + 0.5 * np.sin(t))
            stem = (0.1 * tone + 0.02 * rng.standard_normal((2, n))).astype(np.float32)
            write_audio(folder / f"{i}_{source}.wav", stem, MODEL_SR)
            row[source] = str(folder / f"{i}_{source}.wav")
            mix += stem
        write_audio(folder / f"{i}_mix.wav", mix, MODEL_SR)
        row["audio"] = str(folder / f"{i}_mix.wav")
        rows.append(row)
    return Dataset.from_list(rows)


def direct_apply(model: torch.nn.Module, mixes: list[torch.Tensor], device: torch.device) -> None:
    """Demucs alone: per track, the demucs.api scaling and one ``apply_model`` call."""
    from demucs.apply import apply_model

    for mix in mixes:
        mix = mix.to(device)
        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        out = apply_model(model, ((mix - mean) / std)[None], shifts=0, overlap=0.25, device=device)
        out = out * std + mean
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("tiny", "htdemucs"), default="tiny")
    parser.add_argument("--model", help="pretrained Demucs model name (needs the weights)")
    parser.add_argument("--repo", help="local folder with the weights of --model")
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="tracks per map call")
    parser.add_argument(
        "--demucs-batch", type=int, help="tracks per apply_model call (default: 4 GPU, 1 CPU)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.arch, args.model, args.repo)
    params = sum(p.numel() for p in model.parameters()) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracks = write_tracks(tmp, args.tracks, args.seconds)
        mixes = [
            torch.from_numpy(load_audio(p, sampling_rate=None, mono=False)) for p in tracks["audio"]
        ]
        audio_seconds = args.tracks * args.seconds
        separator = DemucsSeparator(
            model_instance=model, device=str(device), batch_size=args.demucs_batch
        )
        runs = {"n": 0}

        def map_step(separator_or_oracle) -> None:
            runs["n"] += 1  # a fresh output folder each time: no cache hit
            prepare_chunks(
                tracks,
                separator_or_oracle,
                tmp / f"out{runs['n']}",
                batch_size=args.batch_size,
                device=str(device),
                progress=False,
            )

        variants = {
            "apply_model direct": lambda: direct_apply(model, mixes, device),
            "map step (demucs)": lambda: map_step(separator),
            "DemucsSeparator.separate": lambda: separator.separate(
                mixes, [MODEL_SR] * len(mixes), device=device
            ),
            "map step (oracle)": lambda: map_step(OracleSeparator()),
        }
        variants["apply_model direct"]()  # warm-up: kernels, allocator, file cache
        variants["map step (demucs)"]()
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)

    med = {name: statistics.median(t) for name, t in timings.items()}
    rtf = {name: audio_seconds / t for name, t in med.items()}
    label = args.model or f"random {args.arch}"
    print(
        f"model: {label} ({params:.2f} M parameters), device: {device}, "
        f"threads: {torch.get_num_threads()}, {args.tracks} tracks x {args.seconds:.0f} s, "
        f"map batch {args.batch_size}, apply_model batch {args.demucs_batch or 'default'}, "
        f"median of {args.repeats} interleaved rounds"
    )
    for name in ("apply_model direct", "DemucsSeparator.separate", "map step (demucs)"):
        print(f"  {name:<26} real-time factor {rtf[name]:8.2f}x  ({med[name]:.2f} s)")
    ratio = rtf["map step (demucs)"] / rtf["apply_model direct"]
    print(f"  map step / apply_model     ratio {ratio:.3f}  (goal >= 0.95)")
    sep_ratio = rtf["DemucsSeparator.separate"] / rtf["apply_model direct"]
    print(f"  separate / apply_model     ratio {sep_ratio:.3f}")
    oracle = med["map step (oracle)"]
    print(
        f"  map step (oracle stems)    {args.tracks / oracle:8.2f} tracks/s  "
        f"(real-time factor {audio_seconds / oracle:.1f}x)"
    )


if __name__ == "__main__":
    main()
