"""Side by side: the TensorFlow/Keras reference and this port, on the same work and machine.

Three figures, each timed on both sides:

- training step: 128 pairs of 98 x 64 log-mel crops, 25 % of the positives absent (the
  all-zero input), anchors and positives in one encoder pass, the contrastive loss with the
  null column, backward, Adam(1e-3). TF: the reference network (tests/keras_reference.py:
  EfficientNetB0 ``weights=None``, Dense 512, LayerNormalization, tanh, bilinear W) and
  the reference's train step in a ``tf.function`` (the one graph-mode change: batch sizes
  from ``tf.shape(x)[0]`` instead of ``len(x)``), fed float64 as the reference's pipeline
  feeds it (Keras casts it to float32 at the input; TF inference is fed float64 too). Ours: what ``pretrain`` builds by default (``build_model``: default config,
  channels-last; ``_make_optimizer``: Keras' Adam) and ``MSCLForPreTraining`` forward,
  backward, step. The trainer's bookkeeping (gradient norm, finiteness, scheduler) is left
  out, as Keras' ``fit`` callbacks are.
- inference: 128 windows through the encoder in eval mode (TF: a ``tf.function``; ours:
  ``MSCLModel`` under ``torch.inference_mode``).
- log-mel of a 30 s 16 kHz clip (TF: ``tf.signal`` stft / mel matrix / log, the formulas
  tests/test_feature_extraction.py checks against; ours: ``MSCLFeatureExtractor()`` called
  on a numpy clip).

Each side runs in its own process (TF under .venv-tf's python, ours under .venv's), the two
alternating over ``--rounds`` rounds, each started once the machine is quiet (other
processes below ``--quiet-cores`` cores, or after ``--quiet-timeout`` s), both with
``--threads`` threads. Warm-up runs are excluded; a figure is the median over rounds of the
median of the repetitions. Prints the load seen, one markdown table and, last,
``ratios: train X infer Y logmel Z`` (our throughput / TF's).

    python scripts/benchmark_reference.py [--rounds 3] [--quick]
        [--tf-python .venv-tf/bin/python] [--torch-python .venv/bin/python]

``--profile {train,infer,logmel}`` runs our side only, in this process, and prints the
torch profiler's operators by share of self CPU time: where a figure's time goes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
CLIP_SECONDS = 30
FRAMES, MELS = 98, 64
ABSENT_FRACTION = 0.25
LEARNING_RATE = 1e-3  # the reference's Adam(learning_rate=0.001), the trainer's default
FIGURES = ("train", "infer", "logmel")


# ----------------------------------------------------------------------------- shared work


def _inputs(batch: int, seed: int = 0) -> tuple:
    """(anchor, positive, present): float64 log-mel-like crops, absent positives all-zero."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def crops() -> np.ndarray:
        # A per-crop spectral tilt plus noise, in the extractor's log range [-11, 5].
        envelope = rng.normal(-4.0, 2.0, (batch, 1, MELS)) - np.linspace(0.0, 3.0, MELS)
        return np.clip(envelope + rng.normal(0.0, 1.0, (batch, FRAMES, MELS)), -11.0, 5.0)

    anchor, positive = crops(), crops()
    present = np.ones(batch, dtype=bool)
    present[rng.permutation(batch)[: round(ABSENT_FRACTION * batch)]] = False
    positive[~present] = 0.0
    return anchor, positive, present


def _clip() -> object:
    import numpy as np

    samples = SAMPLE_RATE * CLIP_SECONDS
    return (np.random.default_rng(1).standard_normal(samples) * 0.1).astype(np.float32)


def _timed(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------- TF side


def _tf_worker(args: argparse.Namespace) -> dict:
    """Time the reference in TensorFlow (run under .venv-tf's python)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from tests.keras_reference import reference_like_network

    tf.keras.utils.set_random_seed(0)
    model, _ = reference_like_network(tf)  # Keras' stochastic depth 0.2, as the reference
    optimizer = tf.keras.optimizers.Adam(learning_rate=LEARNING_RATE)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    @tf.function
    def train_step(anchor: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
        # The reference's train step: absent sources are the all-zero positives; rows are
        # the present anchors then the absent ones, columns the present positives then one
        # null column (the mean of the absent rows' embeddings).
        batch = tf.shape(positive)[0]
        present = tf.reduce_sum(tf.reshape(positive, [batch, -1]), axis=1) != 0
        active = tf.reshape(tf.where(present), [-1])
        zeros = tf.reshape(tf.where(tf.logical_not(present)), [-1])
        n_active, n_zeros = tf.shape(active)[0], tf.shape(zeros)[0]
        targets = tf.concat([tf.range(n_active), tf.fill([n_zeros], n_active)], axis=0)
        with tf.GradientTape() as tape:
            inputs = tf.concat([anchor, positive], axis=0)[..., None]
            embeddings = model.embedding_model(inputs, training=True)
            anchors, positives = tf.split(embeddings, 2, axis=0)
            columns = tf.gather(positives, active)
            if n_zeros > 0:
                null = tf.reduce_mean(tf.gather(positives, zeros), axis=0, keepdims=True)
                columns = tf.concat([columns, null], axis=0)
            rows = tf.gather(anchors, tf.concat([active, zeros], axis=0))
            loss = loss_fn(targets, model._similarity_layer(rows, columns))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    @tf.function
    def infer(windows: tf.Tensor) -> tf.Tensor:
        return model.embedding_model(windows[..., None], training=False)

    @tf.function
    def log_mel(clip: tf.Tensor) -> tf.Tensor:
        x = tf.math.l2_normalize(clip, epsilon=1e-12)
        stft = tf.signal.stft(x, frame_length=400, frame_step=160, fft_length=1024)
        matrix = tf.signal.linear_to_mel_weight_matrix(64, 513, SAMPLE_RATE, 60.0, 7800.0)
        mel = tf.tensordot(tf.abs(stft), matrix, 1)
        return tf.math.log(tf.clip_by_value(mel, 1e-5, 1e8))

    anchor, positive, _ = _inputs(args.batch)
    anchor, positive = tf.constant(anchor), tf.constant(positive)  # float64
    windows = tf.constant(_inputs(args.batch, seed=2)[0])
    clip = tf.constant(_clip())
    losses: list[float] = []
    out = {
        "version": f"tensorflow {tf.__version__}",
        "trainable": int(sum(np.prod(v.shape) for v in variables)),
        "train": _timed(
            lambda: losses.append(float(train_step(anchor, positive))), args.warmup, args.repeats
        ),
        "infer": _timed(lambda: infer(windows).numpy(), args.warmup, args.repeats),
        "logmel": _timed(lambda: log_mel(clip).numpy(), args.warmup, args.logmel_repeats),
    }
    features = log_mel(clip).numpy()
    out.update(
        loss=losses[0],
        embed_shape=list(infer(windows).shape),
        logmel_shape=list(features.shape),
        logmel_mean=float(features.mean()),
    )
    return out


# ----------------------------------------------------------------------------- our side


def _torch_work(args: argparse.Namespace) -> tuple[dict[str, Callable[[], object]], dict]:
    """Our side's three figures as calls on the default paths, and what was built."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))  # this checkout's modeling_mscl, not an installed one
    from modeling_mscl import MSCLConfig, MSCLFeatureExtractor, MSCLModel

    torch.manual_seed(0)
    try:
        from modeling_mscl.training import _make_optimizer, build_model
        from modeling_mscl.training_args import PretrainingArguments

        defaults = PretrainingArguments()
        model = build_model(defaults).train()
        optimizer = _make_optimizer(defaults, model)
        keep_memory = defaults.training.keep_freed_memory
        built = "training.build_model + _make_optimizer (trainer defaults)"
    except ImportError:  # .venv-tf has no datasets/pyarrow: the trainer's defaults by hand
        from modeling_mscl import MSCLForPreTraining
        from modeling_mscl.optim import make_optimizer

        model = MSCLForPreTraining(MSCLConfig()).to(memory_format=torch.channels_last).train()
        optimizer = make_optimizer("adam", model.parameters(), LEARNING_RATE)
        keep_memory = True
        built = "MSCLForPreTraining(MSCLConfig()), channels-last, optim 'adam'"
    encoder = MSCLModel(MSCLConfig()).eval()
    fe = MSCLFeatureExtractor()

    anchor, positive, present = _inputs(args.batch)
    anchor, positive = torch.from_numpy(anchor).float(), torch.from_numpy(positive).float()
    present = torch.from_numpy(present)
    windows = torch.from_numpy(_inputs(args.batch, seed=2)[0]).float()
    clip = _clip()
    losses: list[float] = []

    def train_step() -> None:
        loss = model(anchor, positive, source_present=present).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    def infer() -> torch.Tensor:
        with torch.inference_mode():
            return encoder(windows).audio_embeds

    def log_mel() -> np.ndarray:
        return fe(clip, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]

    info = {
        "version": f"torch {torch.__version__} ({built})",
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "keep_memory": keep_memory,
        "losses": losses,
    }
    return {"train": train_step, "infer": infer, "logmel": log_mel}, info


def _torch_worker(args: argparse.Namespace) -> dict:
    """Time this port through its default paths (run under .venv's python)."""
    work, info = _torch_work(args)
    from modeling_mscl.memory import keep_freed_memory

    # Inference and the front end first, as `AutoModel` + the feature extractor run in a
    # user's process; then training after what the trainer sets up for the process
    # (`--keep_freed_memory`, on by default), which would also speed up what runs after it.
    out = {
        "version": info["version"],
        "trainable": info["trainable"],
        "infer": _timed(work["infer"], args.warmup, args.repeats),
        "logmel": _timed(work["logmel"], args.warmup, args.logmel_repeats),
    }
    if info["keep_memory"]:
        keep_freed_memory()
    out["train"] = _timed(work["train"], args.warmup, args.repeats)
    features = work["logmel"]()
    out.update(
        loss=info["losses"][0],
        embed_shape=list(work["infer"]().shape),
        logmel_shape=list(features.shape),
        logmel_mean=float(features.mean()),
    )
    return out


def profile_ours(args: argparse.Namespace, figure: str, top: int = 15) -> str:
    """Where our side's time goes for one figure: the torch profiler's operators by self CPU
    time over ``--repeats`` calls after ``--warmup`` ones, in this process."""
    from torch.profiler import ProfilerActivity, profile

    work, info = _torch_work(args)
    if figure == "train" and info["keep_memory"]:
        from modeling_mscl.memory import keep_freed_memory

        keep_freed_memory()
    calls = args.logmel_repeats if figure == "logmel" else args.repeats
    seconds = _timed(work[figure], args.warmup, calls)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            work[figure]()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    lines = [
        f"{figure}: median {statistics.median(seconds):.4f} s per call unprofiled "
        f"({info['version']}, {args.threads} threads); self CPU time over {calls} calls:",
        "",
        "| operator | share |",
        "|---|---:|",
    ]
    lines += [f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % |" for e in ops[:top]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the machine


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 1.0) -> float:
    """Cores busy over the next ``interval`` seconds (the 1-min load average where there is
    no /proc/stat)."""
    before = _cpu_jiffies()
    if before is None:
        return os.getloadavg()[0]
    time.sleep(interval)
    after = _cpu_jiffies()
    total = max(after[1] - before[1], 1)
    return (after[0] - before[0]) / total * (os.cpu_count() or 1)


def wait_for_quiet(threshold: float, timeout: float) -> tuple[float, float]:
    """Sample the load each second until it is under ``threshold`` cores or ``timeout``
    seconds pass; (last load seen, seconds waited)."""
    start = time.monotonic()
    load = busy_cores()
    while load >= threshold and time.monotonic() - start < timeout:
        load = busy_cores()
    return load, time.monotonic() - start


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(side: str, python: str, args: argparse.Namespace) -> dict:
    """Run one side in its own process; its figures plus the load others put on the machine
    while it ran (busy cores minus the worker's own CPU time, per second of wall time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [python, str(Path(__file__).resolve()), "--worker", side, "--out", str(out)]
        for name in ("batch", "threads", "warmup", "repeats", "logmel_repeats"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        threads = str(args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        jiffies, cpu, start = _cpu_jiffies(), _children_cpu(), time.monotonic()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise RuntimeError(f"the {side} worker ({python}) failed:\n{tail}")
        result = json.loads(out.read_text())
    own = _children_cpu() - cpu
    after = _cpu_jiffies()
    if jiffies is not None and after is not None:
        share = (after[0] - jiffies[0]) / max(after[1] - jiffies[1], 1)
        busy = share * (os.cpu_count() or 1) * wall
        result["others_cores"] = max(busy - own, 0.0) / wall
    result["own_cores"] = own / wall
    return result


# ----------------------------------------------------------------------------- the report


WORK = {  # figure: (label, unit, units of work per timed call)
    "train": ("training step, {batch} pairs", "pairs/s", lambda a: a.batch),
    "infer": ("inference, {batch} windows", "windows/s", lambda a: a.batch),
    "logmel": (f"log-mel, {CLIP_SECONDS} s clip", "s audio/s", lambda a: CLIP_SECONDS),
}


def figure_seconds(runs: list[dict], figure: str) -> float:
    """Median over rounds of each round's median seconds per call."""
    return statistics.median(statistics.median(run[figure]) for run in runs)


def check_same_work(tf_runs: list[dict], our_runs: list[dict]) -> None:
    """Both sides trained the same network size on the same inputs, and their log-mels of
    the same clip agree; otherwise the comparison would be meaningless."""
    tf_run, ours = tf_runs[0], our_runs[0]
    problems = []
    if tf_run["trainable"] != ours["trainable"]:
        problems.append(f"trainable weights {tf_run['trainable']} (TF) vs {ours['trainable']}")
    if tf_run["embed_shape"] != ours["embed_shape"]:
        problems.append(f"embeddings {tf_run['embed_shape']} (TF) vs {ours['embed_shape']}")
    if tf_run["logmel_shape"] != ours["logmel_shape"]:
        problems.append(f"log-mel {tf_run['logmel_shape']} (TF) vs {ours['logmel_shape']}")
    elif abs(tf_run["logmel_mean"] - ours["logmel_mean"]) > 1e-3:
        problems.append(f"log-mel means {tf_run['logmel_mean']} (TF) vs {ours['logmel_mean']}")
    for run in (*tf_runs, *our_runs):
        if not math.isfinite(run["loss"]):
            problems.append(f"non-finite first loss ({run['version']})")
    if problems:
        raise RuntimeError("the two sides did not do the same work: " + "; ".join(problems))


def report(tf_runs: list[dict], our_runs: list[dict], args: argparse.Namespace) -> str:
    """The markdown table and, last, the ratios line (our throughput / TF's)."""
    lines = [
        "| figure | TF reference | ours | ours / TF |",
        "|---|---:|---:|---:|",
    ]
    ratios = {}
    for figure in FIGURES:
        label, unit, work = WORK[figure]
        tf_s, our_s = figure_seconds(tf_runs, figure), figure_seconds(our_runs, figure)
        ratios[figure] = tf_s / our_s
        lines.append(
            f"| {label.format(batch=args.batch)} ({unit}; s per call) "
            f"| {work(args) / tf_s:.1f} ({tf_s:.3f} s) "
            f"| {work(args) / our_s:.1f} ({our_s:.3f} s) | {ratios[figure]:.2f} |"
        )
    lines.append("")
    lines.append(" ".join(["ratios:"] + [f"{f} {ratios[f]:.2f}" for f in FIGURES]))
    return "\n".join(lines)


def _default_python(venv: str, fallback: str) -> str:
    candidate = REPO / venv / "bin" / "python"
    return str(candidate) if candidate.exists() else fallback


def main(argv: list[str] | None = None) -> str:
    """Parse arguments, run the rounds (or one worker) and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="pairs per step, windows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per figure")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps / inferences")
    parser.add_argument("--logmel-repeats", type=int, default=10)
    parser.add_argument("--quiet-cores", type=float, default=0.2)
    parser.add_argument("--quiet-timeout", type=float, default=60.0, help="seconds per wait")
    parser.add_argument("--quick", action="store_true", help="1 round, batch 16, 1 repeat")
    parser.add_argument("--tf-python", default=None, help="defaults to .venv-tf/bin/python")
    parser.add_argument("--torch-python", default=None, help="defaults to .venv/bin/python")
    parser.add_argument(
        "--profile",
        choices=FIGURES,
        help="instead of timing both sides, profile ours on this figure (torch profiler)",
    )
    parser.add_argument("--worker", choices=("tf", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch, args.warmup, args.repeats, args.logmel_repeats = 1, 16, 1, 1, 1
        args.quiet_timeout = 0.0
    for name in ("rounds", "batch", "threads", "warmup", "repeats", "logmel_repeats"):
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}")
    if args.batch < 4:
        parser.error("--batch must be >= 4 (a contrastive batch with an absent positive)")

    if args.profile:
        text = profile_ours(args, args.profile)
        print(text)
        return text
    if args.worker:
        worker = _tf_worker if args.worker == "tf" else _torch_worker
        Path(args.out).write_text(json.dumps(worker(args)))
        return ""

    pythons = {
        "tf": args.tf_python or _default_python(".venv-tf", sys.executable),
        "torch": args.torch_python or _default_python(".venv", sys.executable),
    }
    for side, python in pythons.items():
        if not Path(python).exists():
            parser.error(f"--{side}-python {python}: no such file")
    runs: dict[str, list[dict]] = {"tf": [], "torch": []}
    for round_ in range(args.rounds):
        # Alternate which side goes first: a drift in the machine's speed then hits both.
        for side in ("tf", "torch") if round_ % 2 == 0 else ("torch", "tf"):
            load, waited = wait_for_quiet(args.quiet_cores, args.quiet_timeout)
            result = run_worker(side, pythons[side], args)
            runs[side].append(result)
            during = result.get("others_cores", float("nan"))
            print(
                f"round {round_ + 1} {side:<5}: load before {load:.2f} cores (waited "
                f"{waited:.0f} s), others {during:.2f} cores during the run, the worker "
                f"{result['own_cores']:.2f}; median s: "
                + ", ".join(f"{f} {statistics.median(result[f]):.3f}" for f in FIGURES),
                flush=True,
            )
    check_same_work(runs["tf"], runs["torch"])
    print(f"TF: {runs['tf'][0]['version']}; ours: {runs['torch'][0]['version']}")
    print(
        f"{args.threads} threads per side; {runs['tf'][0]['trainable']:,} trainable weights "
        f"on both sides; {args.rounds} round(s) x {args.repeats} steps/inferences and "
        f"{args.logmel_repeats} log-mels after {args.warmup} warm-up call(s)\n"
    )
    text = report(runs["tf"], runs["torch"], args)
    print(text)
    return text


if __name__ == "__main__":
    main()
