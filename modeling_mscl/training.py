"""Contrastive pre-training with Accelerate: COLA, MSCL (one or several sources) and S3T.

Run it as ``accelerate launch scripts/pretrain.py --config scripts/configs/NAME.yaml``
(one CPU, one GPU or many) or call :func:`pretrain` from Python.

How the pieces fit:

- minibatches come from :class:`~modeling_mscl.pairs.PairDataset`, a pure function of
  ``(seed, minibatch index)``; every process takes its slice of the same global
  minibatch, so the data is sharded by us and the DataLoader is *not* prepared by
  Accelerate. Resuming at optimizer step k restarts the loader at minibatch
  ``k * gradient_accumulation_steps``: the sequence of batches is exactly that of an
  uninterrupted run.
- one ``accelerator.prepare(model, optimizer, scheduler)``; gradient accumulation with
  ``accelerator.accumulate``; mixed precision through Accelerate (bf16 autocast).
- a step whose loss or gradients are not finite, or whose batch could not be built (a
  damaged chunk: its values are checked against the front end's range), is skipped: no
  update, and the batch-norm statistics its forward passes moved are put back, so every
  parameter and buffer is as before. It is counted and logged with its cause (inputs,
  loss or gradients); the run stops after ``max_bad_steps`` in a row, naming the cause.
- checkpoints are written by ``accelerator.save_state`` into a temporary folder renamed
  into ``checkpoints/step-XXXXXXX`` (a killed run never leaves a half checkpoint behind).
- the ``output_dir`` must be new, empty or a run folder of the package
  (:func:`~modeling_mscl.checkpoints.claim_output_dir`), and the main process holds its
  :class:`~modeling_mscl.run_lock.RunLock` for the whole run: a second run into it refuses.
- the chunk set's files are checked against its manifest at start (sizes; checksums with
  ``verify_data``), and its content fingerprint is recorded (``training_data.json``, each
  checkpoint): a resume onto other data is refused unless ``allow_data_change``.
- at the end: ``encoder/`` (an :class:`~modeling_mscl.MSCLModel` + feature extractor +
  ``training_args.json``, ready for ``AutoModel.from_pretrained``) and ``pretraining/``
  (the full :class:`~modeling_mscl.MSCLForPreTraining`).

Under several processes the loss is one loss over the global minibatch: positives are
gathered with gradient, the null column is the mean of the absent rows of every process,
and DDP averages the gradients. Batch normalisation sees each process's slice of the
minibatch (2 x batch_size / processes inputs), unless ``sync_batchnorm`` (CUDA only) makes
it see the global one; only then does a step equal one process's step on the whole batch.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._files import atomic_folder, write_json_atomic
from .checkpoints import (
    ARGS_FILE,
    DATA_FILE,
    check_shared_output_dir,
    claim_output_dir,
    latest_checkpoint,
    prepare_output_dir,
    remove_partial_checkpoints,
    resume,
    save_checkpoint,
)
from .chunk_set import ChunkStore, load_chunk_set
from .feature_extraction_mscl import MSCLFeatureExtractor
from .losses import process_gather
from .memory import keep_freed_memory
from .modeling_mscl import MSCLForPreTraining
from .objectives import get_objective
from .optim import LearningRateSchedule, make_optimizer
from .pairs import (
    CROP_FRAMES,
    TRAIN_STREAM,
    VALIDATION_STREAM,
    PairDataset,
    SourceBatchSampler,
    holdout_mask,
)
from .precision import resolve_precision
from .run_lock import RunLock
from .training_args import PretrainingArguments
from .training_metrics import (
    Meter,
    ProbeHook,
    batch_inputs,
    evaluate,
    run_probe,
    validation_batches,
)

__all__ = [
    "LearningRateSchedule",
    "PretrainingResult",
    "ProbeHook",
    "build_model",
    "build_sampler",
    "latest_checkpoint",
    "load_chunk_stores",
    "pretrain",
    "resolve_probe_hook",
]

logger = logging.getLogger(__name__)

# The loss history of a run, one JSON object a logged step, beside its checkpoints.
HISTORY_FILE = "history.jsonl"


@dataclass
class PretrainingResult:
    """What :func:`pretrain` leaves behind.

    ``metrics`` holds the last value of every logged metric, ``history`` every logged
    dict (with its ``step``) of this process's run (not of an earlier, resumed part).
    """

    output_dir: str
    encoder_dir: str
    pretraining_dir: str
    step: int
    skipped_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------ building


def build_model(args: PretrainingArguments, num_mel_bins: int = 64) -> MSCLForPreTraining:
    """A freshly initialised :class:`MSCLForPreTraining` from the model arguments
    (:meth:`~PretrainingArguments.model_config`) for log-mels of ``num_mel_bins`` bands
    (the chunk set's), in the memory layout of ``args.training.channels_last``."""
    model = MSCLForPreTraining(args.model_config(num_mel_bins))
    if args.training.channels_last:
        # oneDNN's (and cuDNN's) fast convolution kernels want NHWC: the weights take that
        # layout here and the activations follow. Saved files are the same either way.
        model = model.to(memory_format=torch.channels_last)
    return model


def load_chunk_stores(args: PretrainingArguments) -> tuple[ChunkStore, ChunkStore | None]:
    """The training and validation stores of the chunk set ``data_dir`` (memory-mapped),
    with its feature extractor (``store.feature_extractor``).

    A DatasetDict gives ``train_split`` and, if present, ``validation_split``; otherwise
    ``validation_fraction`` of the tracks (chosen by a hash of ``track_id``) are held out.
    The files are checked against the chunk set's manifest first (their sizes; every
    checksum with ``verify_data``). The stores' ``fingerprint`` is the chunk set's.
    """
    d = args.data
    # Every file of the manifest present with its size (cheap), or every checksum.
    chunk_set = load_chunk_set(d.data_dir, verify="full" if d.verify_data else "sizes")
    validation = None
    if chunk_set.splits:
        if d.train_split not in chunk_set.splits:
            raise ValueError(
                f"train_split={d.train_split!r} is not a split of {d.data_dir} "
                f"(splits: {chunk_set.splits})"
            )
        if d.validation_split in chunk_set.splits and len(chunk_set.dataset(d.validation_split)):
            validation = chunk_set.store(d.validation_split)
    store = chunk_set.store(d.train_split if chunk_set.splits else None)
    if len(store) == 0:
        raise ValueError(f"the training split of {d.data_dir} has no chunks")
    if validation is None and d.validation_fraction > 0:
        held = holdout_mask(store.track_ids(), d.validation_fraction)
        if held.all():
            raise ValueError("validation_fraction holds out every track; lower it")
        if held.any():
            validation = store.subset(np.flatnonzero(held))
            store = store.subset(np.flatnonzero(~held))
    return store, validation


def build_sampler(
    args: PretrainingArguments, store: ChunkStore, stream: int = TRAIN_STREAM
) -> SourceBatchSampler:
    """The sampler a run uses on ``store`` (``stream`` 0: training, 1: validation)."""
    d = args.data
    return SourceBatchSampler(
        store.present,
        args.training.batch_size,
        objective=d.objective,
        sources=d.sources,
        absent_sources=d.absent_sources,
        random_batch_prob=d.random_batch_prob,
        seed=args.training.seed,
        chunk_frames=store.chunk_frames,
        augmentation=args.spec_augmentation() if get_objective(d.objective).augmented else None,
        stream=stream,
        num_bins=store.num_bins,
    )


def resolve_probe_hook(spec: str | None) -> ProbeHook | None:
    """Import ``'package.module:function'``; None stays None."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"probe_hook={spec!r} cannot be imported: {err}") from err
    if not callable(hook):
        raise ValueError(f"probe_hook={spec!r} is not callable")
    return hook


def _make_optimizer(args: PretrainingArguments, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = args.training
    return make_optimizer(t.optimizer, model.parameters(), t.learning_rate, t.weight_decay)


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


# ----------------------------------------------------------------------------- the loop


def _all_true(accelerator: Any, flag: torch.Tensor) -> bool:
    """Whether the bool tensor ``flag`` holds on every process.

    The one host-device synchronisation of an optimizer step (plus one tiny all-reduce
    under several processes): everything before it can run ahead asynchronously.
    """
    value = flag.float().reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(value.item() == accelerator.num_processes)


def _tracker_config(args: PretrainingArguments) -> dict[str, Any]:
    # TensorBoard's hparams accept scalars and strings only.
    return {
        k: (", ".join(v) if isinstance(v, list) else ("none" if v is None else v))
        for k, v in args.to_dict().items()
    }


def _save_final(
    model: MSCLForPreTraining,
    args: PretrainingArguments,
    fe: MSCLFeatureExtractor,
    encoder_dir: Path,
    full_dir: Path,
    data: dict[str, Any] | None = None,
) -> None:
    """The encoder + the chunk set's feature extractor for AutoModel, and the full
    pre-training model, each with ``training_args.json`` and the record of its training
    data (``data``, written as ``training_data.json``).

    Each folder is written under a temporary name and renamed into place, so a run killed
    while saving leaves the old folder or the new one, never half of one.
    """
    for final, module, extractor in ((encoder_dir, model.mscl, fe), (full_dir, model, None)):
        with atomic_folder(final) as tmp:
            module.save_pretrained(str(tmp))
            if extractor is not None:
                extractor.save_pretrained(str(tmp))
            args.save(tmp / ARGS_FILE)
            if data is not None:
                write_json_atomic(tmp / DATA_FILE, data, indent=2)


@dataclass
class _Run:
    """Everything one pre-training run holds, filled in by the steps of :func:`pretrain`."""

    args: PretrainingArguments
    accelerator: Any
    precision: str
    out_dir: Path
    hook: ProbeHook | None
    store: ChunkStore | None = None
    val_store: ChunkStore | None = None
    sampler: SourceBatchSampler | None = None
    in_loader: bool = True
    val_batches: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    fingerprint: str = ""
    # The chunk set trained on ({"data_dir", "fingerprint"}) and every change of it.
    data: dict[str, Any] = field(default_factory=dict)
    data_history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    start_step: int = 0
    skipped: int = 0
    bad_in_row: int = 0
    # Why steps were skipped: cause ("inputs", "loss", "gradients") -> count, and the
    # last skipped step's explanation.
    skip_causes: dict[str, int] = field(default_factory=dict)
    last_skip: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, logs: dict[str, float], at_step: int) -> None:
        """Send ``logs`` to the trackers and keep them in the run's metrics and history.

        The main process also appends them to ``history.jsonl`` in the output folder, so a
        run without a tracker still leaves its losses for ``mscl plot``; a resumed run
        appends, and a reader keeps the last record of a step.
        """
        if logs:
            self.accelerator.log(logs, step=at_step)
            self.metrics.update(logs)
            self.history.append({"step": float(at_step), **logs})
            if self.accelerator.is_main_process:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                with open(self.out_dir / HISTORY_FILE, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"step": at_step, **logs}) + "\n")


def setup_accelerator(args: PretrainingArguments) -> tuple[Any, str, str]:
    """The ``Accelerator`` of a run, its mixed precision ('no' or 'bf16') and why."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    t = args.training
    if t.keep_freed_memory:
        keep_freed_memory()
    out_dir = Path(t.output_dir).expanduser()
    on_cpu = t.cpu or not _has_accelerator()
    precision, why = resolve_precision(t.mixed_precision, on_cpu)
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=None if t.log_with == "none" else t.log_with,
        project_config=ProjectConfiguration(
            project_dir=str(out_dir), logging_dir=str(out_dir / "logs")
        ),
        # Our batch_size is global and split over the processes: the scheduler then steps
        # once per optimizer step (not once per process).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    configure_backends(accelerator.device)
    return accelerator, precision, why


def configure_backends(device: torch.device) -> None:
    """Backend settings for training on ``device``.

    On CUDA, ``cudnn.benchmark``: every step has the same shapes (fixed crops, a fixed
    batch), so cuDNN's search for the fastest convolution algorithms runs once, in the
    first step, and its picks serve the whole run.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _check_run(run: _Run) -> None:
    """Refuse what cannot work before any data or model is loaded."""
    t, accelerator = run.args.training, run.accelerator
    # A used or unwritable folder fails fast.
    prepare_output_dir(run.out_dir, t.resume, t.overwrite_output_dir, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    check_shared_output_dir(accelerator, run.out_dir)
    if t.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size={t.batch_size} must be a multiple of the "
            f"{accelerator.num_processes} processes"
        )
    if t.sync_batchnorm and accelerator.device.type != "cuda":
        raise ValueError(
            f"sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no kernel for "
            f"{accelerator.device.type}); set --sync_batchnorm false: each process's batch "
            "norm then sees its slice of the minibatch"
        )


def prepare_data(run: _Run) -> None:
    """The training and validation stores and the training sampler."""
    d = run.args.data
    run.store, run.val_store = load_chunk_stores(run.args)
    run.data = {
        "data_dir": str(Path(d.data_dir).expanduser().resolve()),
        "fingerprint": run.store.fingerprint,
    }
    run.sampler = build_sampler(run.args, run.store, TRAIN_STREAM)
    on_cpu = run.accelerator.device.type == "cpu"
    run.in_loader = d.augment_on == "loader" or (d.augment_on == "auto" and on_cpu)


def prepare_model(run: _Run) -> None:
    """Model, optimizer and schedule, prepared by Accelerate and resumed if asked."""
    from accelerate.utils import set_seed

    args, accelerator, t = run.args, run.accelerator, run.args.training
    set_seed(t.seed)  # the same initial weights on every process and in every run
    # The model takes the log-mels the chunk set holds: its front end sets the mel bands.
    model = build_model(args, run.store.feature_extractor.feature_size)
    if t.sync_batchnorm and accelerator.num_processes > 1:
        # Statistics over the global minibatch: what one process on the whole batch
        # computes (the reference trained on one GPU).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = _make_optimizer(args, model)
    schedule = LearningRateSchedule(
        t.lr_schedule, t.max_steps, t.warmup_steps, t.lr_decay_at, t.lr_decay_factor
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    run.model, run.optimizer, run.scheduler = accelerator.prepare(model, optimizer, scheduler)
    # Stochastic depth draws differ across processes (seed + rank), as rows of one batch do.
    set_seed(t.seed, device_specific=True)

    if accelerator.is_main_process:
        remove_partial_checkpoints(run.out_dir)
    accelerator.wait_for_everyone()
    run.fingerprint = run.sampler.fingerprint()
    history: list[dict[str, Any]] = []
    if t.resume:
        run.start_step, run.skipped, run.bad_in_row, history = resume(
            accelerator, args, run.fingerprint, run.data, run.precision
        )
    run.data_history = history or [{"step": run.start_step, **run.data}]
    run.step = run.start_step
    if accelerator.is_main_process:
        args.save(run.out_dir / ARGS_FILE)
        write_json_atomic(run.out_dir / DATA_FILE, _data_record(run), indent=2)


def _data_record(run: _Run) -> dict[str, Any]:
    """What ``training_data.json`` holds: the chunk set now and the run's data history."""
    return {**run.data, "history": run.data_history}


def make_batches(run: _Run) -> tuple[PairDataset, torch.utils.data.DataLoader]:
    """The fixed validation minibatches, and the training minibatches from the run's start
    to ``max_steps`` (each a pure function of the step)."""
    d, t, accelerator = run.args.data, run.args.training, run.accelerator
    if run.val_store is not None and t.eval_every and t.eval_batches:
        rank, world = accelerator.process_index, accelerator.num_processes
        run.val_batches = validation_batches(
            lambda: build_sampler(run.args, run.val_store, VALIDATION_STREAM),
            run.val_store,
            t.eval_batches,
            rank,
            world,
            run.in_loader,
        )
    accum = t.gradient_accumulation_steps
    dataset = PairDataset(
        run.store,
        run.sampler,
        t.max_steps * accum,
        accelerator.process_index,
        accelerator.num_processes,
        run.in_loader,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(run.start_step * accum, t.max_steps * accum),
        num_workers=d.num_workers,
        prefetch_factor=d.prefetch_factor if d.num_workers else None,
        pin_memory=accelerator.device.type == "cuda",
        # Its own generator: creating the iterator must not consume the global RNG,
        # whose state a resumed run restores from the checkpoint.
        generator=torch.Generator().manual_seed(t.seed),
    )
    return dataset, loader


def _placeholder(run: _Run) -> dict[str, Any]:
    """Stands in for a minibatch that could not be built: the process still runs forward
    and backward (their collectives must match the other processes'), and the step is
    skipped on every process."""
    rows = run.args.training.batch_size // run.accelerator.num_processes
    return {
        "anchor": torch.zeros(rows, CROP_FRAMES, run.store.num_bins),
        "positive": torch.zeros(rows, CROP_FRAMES, run.store.num_bins),
        "present": torch.ones(rows, dtype=torch.bool),
        "source": int(run.sampler.source_index[0]) if len(run.sampler.source_index) else -1,
    }


class _BufferSnapshot:
    """The model's buffers (batch-norm running statistics and counters) as they were at
    the start of an optimizer step, to put back when the step is skipped: the forward
    passes of a skipped step (a placeholder batch, or a batch that gave a non-finite
    loss) must not move them. One fused copy per step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = [b for b in model.buffers()]
        self.saved = [torch.empty_like(b) for b in self.buffers]

    @staticmethod
    def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
        with torch.no_grad():
            if hasattr(torch, "_foreach_copy_"):
                torch._foreach_copy_(dst, src)
            else:  # pragma: no cover - older torch
                for d, s in zip(dst, src, strict=True):
                    d.copy_(s)

    def take(self) -> None:
        """Remember the current values."""
        if self.buffers:
            self._copy(self.saved, self.buffers)

    def restore(self) -> None:
        """Put the remembered values back."""
        if self.buffers:
            self._copy(self.buffers, self.saved)


@dataclass
class _Interval:
    """Timing and the step's state between two optimizer steps / two logs."""

    step_ok: torch.Tensor
    grad_norm: torch.Tensor
    wait_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    # Why this process found the step bad ("inputs: ..." or "loss: ..."), if it did.
    cause: str = ""
    loss_ok: torch.Tensor | None = None
    snapshot: _BufferSnapshot | None = None
    snapshot_due: bool = True

    def restart(self) -> None:
        self.wait_seconds, self.start, self.steps = 0.0, time.perf_counter(), 0


def _optimizer_update(run: _Run, state: _Interval) -> None:
    """Clip, then update unless a process saw a bad batch or non-finite values; advance
    the schedule either way (it follows steps, not updates)."""
    t, accelerator = run.args.training, run.accelerator
    state.grad_norm = accelerator.clip_grad_norm_(
        run.model.parameters(), t.max_grad_norm or float("inf")
    )
    if _all_true(accelerator, state.step_ok & torch.isfinite(state.grad_norm)):
        run.optimizer.step()
        run.bad_in_row = 0
    else:
        if state.snapshot is not None:
            state.snapshot.restore()  # the skipped forward passes moved the BN statistics
        # Read only now, after the step's one synchronisation: the first cause found.
        cause = state.cause
        if not cause and state.loss_ok is not None and not bool(state.loss_ok):
            cause = "loss: the contrastive loss is not finite"
        elif not cause and not bool(torch.isfinite(state.grad_norm)):
            cause = "gradients: the gradient norm is not finite"
        elif not cause:
            cause = "another process: its batch or loss was bad"
        kind = cause.split(":", 1)[0]
        run.skip_causes[kind] = run.skip_causes.get(kind, 0) + 1
        run.last_skip = f"step {run.step}: {cause}"
        run.skipped += 1
        run.bad_in_row += 1
        logger.warning("step %d skipped (%s); %d skipped so far", run.step, cause, run.skipped)
    with warnings.catch_warnings():
        # After a skipped update torch warns of "scheduler before optimizer": intended.
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    state.steps += 1
    state.step_ok = torch.ones((), dtype=torch.bool, device=accelerator.device)
    state.cause, state.snapshot_due = "", True
    state.loss_ok = torch.ones((), dtype=torch.bool, device=accelerator.device)
    if run.bad_in_row >= t.max_bad_steps:
        accelerator.end_training()
        raise RuntimeError(
            f"{run.bad_in_row} optimizer steps in a row were skipped (last: "
            f"{run.last_skip}); {_skip_summary(run)}. The run stops: {_skip_advice(run)}"
        )


def _skip_summary(run: _Run) -> str:
    """``"N skipped steps: inputs a, loss b, gradients c"``."""
    causes = ", ".join(f"{kind} {count}" for kind, count in sorted(run.skip_causes.items()))
    return f"{run.skipped} skipped step(s) in this run: {causes or 'none'}"


def _skip_advice(run: _Run) -> str:
    """What to do about the causes of the skipped steps."""
    advice = []
    if run.skip_causes.get("inputs"):
        advice.append("the chunk set holds chunks that cannot be read or log-mels its front "
                      "end cannot produce (named above): make it again")  # fmt: skip
    if run.skip_causes.get("loss") or run.skip_causes.get("gradients"):
        advice.append("the loss or gradients diverged: lower the learning rate or set "
                      "max_grad_norm")  # fmt: skip
    return "; ".join(advice) or "check the data and the learning rate"


def _after_step(run: _Run, state: _Interval, meter: Meter, bar: Any) -> None:
    """Log, validate, probe and checkpoint when their intervals say so."""
    t, accelerator, step = run.args.training, run.accelerator, run.step
    accum = t.gradient_accumulation_steps
    logs: dict[str, float] = {}
    if step % t.log_every == 0 or step == t.max_steps:
        elapsed = time.perf_counter() - state.start
        logs.update(meter.collect(accelerator, "train"))
        logs["train/lr"] = run.scheduler.get_last_lr()[0]
        logs["train/grad_norm"] = float(state.grad_norm)
        logs["train/skipped_steps"] = float(run.skipped)
        logs["train/pairs_per_second"] = state.steps * accum * t.batch_size / elapsed
        logs["train/data_wait_fraction"] = state.wait_seconds / elapsed
        state.restart()
        if "train/loss" in logs:
            bar.set_postfix(loss=f"{logs['train/loss']:.3f}", acc=f"{logs['train/accuracy']:.2f}")
    if run.val_batches and (step % t.eval_every == 0 or step == t.max_steps):
        augmentation = run.sampler.augmentation
        logs.update(evaluate(accelerator, run.model, run.val_batches, run.args, augmentation))
    if (
        run.hook is not None
        and t.probe_every
        and (step % t.probe_every == 0 or step == t.max_steps)
    ):
        logs.update(run_probe(accelerator, run.model, run.hook, step))
    run.record(logs, step)
    if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.max_steps:
        trainer_state = {
            "step": step,
            "minibatch": step * accum,
            "skipped_steps": run.skipped,
            "bad_steps_in_row": run.bad_in_row,
            "num_processes": accelerator.num_processes,
            "sampler": run.sampler.state_dict(),
            "sampler_fingerprint": run.fingerprint,
            "data": run.data,
            "data_history": run.data_history,
            "mixed_precision": run.precision,
        }
        save_checkpoint(accelerator, run.args, step, trainer_state)


def train_loop(run: _Run, dataset: PairDataset, loader: torch.utils.data.DataLoader) -> None:
    """The optimizer steps from ``run.start_step`` to ``max_steps``."""
    from tqdm.auto import tqdm

    t, d, accelerator = run.args.training, run.args.data, run.accelerator
    accum, device = t.gradient_accumulation_steps, accelerator.device
    bar = tqdm(
        total=t.max_steps,
        initial=run.start_step,
        desc="pretraining",
        disable=not (t.progress_bar and accelerator.is_local_main_process),
    )
    meter = Meter(device)
    placeholder = _placeholder(run)
    state = _Interval(
        step_ok=torch.ones((), dtype=torch.bool, device=device),
        grad_norm=torch.full((), float("nan"), device=device),
        loss_ok=torch.ones((), dtype=torch.bool, device=device),
        snapshot=_BufferSnapshot(accelerator.unwrap_model(run.model)),
    )
    if run.hook is not None and t.probe_every and run.start_step == 0:
        # Step 0 is the initialisation that every run of a seed shares: convergence curves
        # of several objectives then start from the same point.
        run.record(run_probe(accelerator, run.model, run.hook, 0), 0)
    run.model.train()
    batches = iter(loader)
    # One loss over the global batch: every process's positives are columns of every loss.
    gather = process_gather()
    augmentation = run.sampler.augmentation
    for _ in range(run.start_step * accum, t.max_steps * accum):
        waited = time.perf_counter()
        batch = next(batches)
        state.wait_seconds += time.perf_counter() - waited
        if state.snapshot_due:  # the first minibatch of an optimizer step
            state.snapshot.take()
            state.snapshot_due = False
        with accelerator.accumulate(run.model):
            if "error" in batch:
                logger.warning("minibatch %d could not be built: %s", batch["step"], batch["error"])
                state.cause = state.cause or (
                    f"inputs: minibatch {batch['step']} could not be built: {batch['error']}"
                )
                batch = placeholder
                state.step_ok = state.step_ok & False
            anchor, positive, present = batch_inputs(batch, device, d.objective, augmentation)
            out = run.model(anchor, positive, source_present=present, gather=gather)
            accelerator.backward(out.loss)
            finite = torch.isfinite(out.loss.detach())
            state.step_ok = state.step_ok & finite
            state.loss_ok = state.loss_ok & finite
            if batch is not placeholder:
                meter.add(batch["source"], out.loss, out.accuracy, finite)
            if accelerator.sync_gradients:
                _optimizer_update(run, state)
                bar.update(1)
                _after_step(run, state, meter, bar)
    bar.close()


def finish(run: _Run) -> PretrainingResult:
    """Save ``encoder/`` and ``pretraining/`` (refused if the weights are not finite)."""
    accelerator = run.accelerator
    encoder_dir, pretraining_dir = run.out_dir / "encoder", run.out_dir / "pretraining"
    # An encoder of NaNs must not look like a result: every process (DDP keeps the weights
    # equal) refuses to finish, loudly, and nothing is saved.
    unwrapped = accelerator.unwrap_model(run.model)
    broken = [n for n, p in unwrapped.state_dict().items() if not torch.isfinite(p).all()]
    if broken:
        accelerator.end_training()
        # Skipped steps change nothing (weights and statistics are put back): non-finite
        # weights come from an update that diverged.
        raise RuntimeError(
            f"the trained weights are not finite ({len(broken)} tensors, e.g. {broken[:3]}); "
            f"nothing saved to {encoder_dir} or {pretraining_dir}. Cause: an update "
            f"diverged ({_skip_summary(run)}"
            + (f"; last: {run.last_skip}" if run.last_skip else "")
            + "). Lower the learning rate or set max_grad_norm."
        )
    if run.skipped:
        logger.warning("%s (last: %s)", _skip_summary(run), run.last_skip)
    if accelerator.is_main_process:
        # The front end that computed the training log-mels is the encoder's front end.
        fe = run.store.feature_extractor
        _save_final(unwrapped, run.args, fe, encoder_dir, pretraining_dir, _data_record(run))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return PretrainingResult(
        output_dir=str(run.out_dir),
        encoder_dir=str(encoder_dir),
        pretraining_dir=str(pretraining_dir),
        step=run.step,
        skipped_steps=run.skipped,
        metrics=run.metrics,
        history=run.history,
    )


def pretrain(args: PretrainingArguments, probe_hook: ProbeHook | None = None) -> PretrainingResult:
    """Pre-train an MSCL encoder; see the module docstring for what happens.

    The steps, each a function of this module: :func:`setup_accelerator`, a check of the
    output folder and the process count, :func:`prepare_data`, :func:`prepare_model`
    (resuming if asked), :func:`make_batches`, :func:`train_loop` and :func:`finish`.

    Args:
        args: the arguments: :func:`~modeling_mscl.training_args.parse_args` of a command
            line, or :meth:`PretrainingArguments.from_config` from Python.
        probe_hook: ``fn(encoder: MSCLModel, step: int) -> dict[str, float]`` called on the
            main process at step 0 of a fresh run, every ``probe_every`` steps and at the
            end; its results are logged as ``probe/<name>``. Overrides ``args``' probe_hook.

    Returns:
        A :class:`PretrainingResult` (folders, final step, last metrics).
    """
    if not isinstance(args, PretrainingArguments):
        raise TypeError(
            "pretrain() takes PretrainingArguments: parse_args(argv) for a command line, "
            "PretrainingArguments.from_config(config, **overrides) from Python"
        )
    args.validate()
    t = args.training
    hook = probe_hook or resolve_probe_hook(t.probe_hook)
    accelerator, precision, why = setup_accelerator(args)
    run = _Run(args, accelerator, precision, Path(t.output_dir).expanduser(), hook)
    lock = None
    if accelerator.is_main_process:
        # The folder must be new, empty or a run's of the package; then one run at a time
        # for the whole run (a second one refuses, naming this one).
        claim_output_dir(run.out_dir, t.resume)
        lock = RunLock(run.out_dir, "mscl pretrain").acquire()
    try:
        _check_run(run)
        prepare_data(run)
        prepare_model(run)
        dataset, loader = make_batches(run)
        accelerator.print(
            f"pretraining {args.data.objective} on {len(run.store)} chunks "
            f"({len(run.val_store or [])} for validation): {accelerator.num_processes} "
            f"process(es) on {accelerator.device}, mixed precision {precision} ({why}), "
            f"{t.batch_size} pairs per minibatch, steps {run.start_step} -> {t.max_steps}"
        )
        accelerator.init_trackers("pretrain", config=_tracker_config(args))
        if run.start_step == 0 and accelerator.is_main_process:
            # A fresh run's history starts empty (a resumed one appends after its checkpoint).
            (run.out_dir / HISTORY_FILE).unlink(missing_ok=True)
        train_loop(run, dataset, loader)
        return finish(run)
    finally:
        if lock is not None:
            lock.release()
