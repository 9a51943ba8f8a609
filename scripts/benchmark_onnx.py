"""The exported ONNX encoder under ONNX Runtime against our eager eval path, on the CPU.

Exports a freshly initialised encoder (the paper's B0 unless ``--config tiny``) with
`modeling_mscl.onnx_export.export_onnx`, then times `--windows` log-mel windows through
ONNX Runtime (CPU provider, the same thread count) and through `MSCLModel` in eval mode
under `torch.no_grad()` (the fused path), alternating, median over ``--repeats``. Also
prints the largest relative difference of the pooled features.

    python scripts/benchmark_onnx.py [--windows 128] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--config", choices=("b0", "tiny"), default="b0")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from modeling_mscl import MSCLConfig, MSCLModel
    from modeling_mscl.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {} if args.config == "b0" else dict(width_coefficient=0.25, depth_coefficient=0.25)
    model = MSCLModel(MSCLConfig(**kwargs)).eval()
    x = torch.randn(args.windows, 98, 64) * 40
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "encoder.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        # ONNX Runtime's threads otherwise spin-wait after each run, taking the CPU from
        # the torch run that follows it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input_features": x.numpy()}

    def run_ort() -> np.ndarray:
        return session.run(["pooler_output"], feed)[0]

    def run_torch() -> torch.Tensor:
        with torch.no_grad():
            return model(x).pooler_output

    start = time.perf_counter()
    torch_out = run_torch()  # warm-up, and a time before any ONNX Runtime thread exists
    alone = time.perf_counter() - start
    onnx_out = run_ort()
    error = float(np.abs(onnx_out - torch_out.numpy()).max() / np.abs(torch_out.numpy()).max())
    times: dict[str, list[float]] = {"onnxruntime": [], "torch (fused eval)": []}
    for _ in range(args.repeats):
        for name, fn in (("onnxruntime", run_ort), ("torch (fused eval)", run_torch)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["torch (fused eval)"])
    print(
        f"{args.config}, {args.windows} windows, {args.threads} threads, median of {args.repeats}:"
    )
    for name, values in times.items():
        seconds = statistics.median(values)
        print(
            f"  {name:<19} {seconds * 1000:8.1f} ms  {args.windows / seconds:7.1f} windows/s  "
            f"({base / seconds:.2f}x the torch speed)"
        )
    print(f"  torch alone, first call before the session existed: {alone * 1000:.1f} ms")
    print(f"  largest relative difference of pooler_output: {error:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
