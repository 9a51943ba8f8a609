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
- a step whose loss or gradients are not finite, or whose batch could not be built, is
  skipped (no update), counted and logged; the run stops after ``max_bad_steps`` in a row.
- checkpoints are written by ``accelerator.save_state`` into a temporary folder renamed
  into ``checkpoints/step-XXXXXXX`` (a killed run never leaves a half checkpoint behind).
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
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import (
    ARGS_FILE,
    latest_checkpoint,
    prepare_output_dir,
    remove_partial_checkpoints,
    resume,
    save_checkpoint,
)
from .chunk_set import ChunkStore, load_chunk_set
from .configuration_mscl import MSCLConfig
from .losses import process_gather
from .modeling_mscl import MSCLForPreTraining, MSCLModel
from .optim import make_optimizer
from .pairs import (
    CROP_FRAMES,
    TRAIN_STREAM,
    VALIDATION_STREAM,
    PairDataset,
    SourceBatchSampler,
    apply_augmentation,
    holdout_mask,
)
from .stems import SOURCES
from .training_args import PretrainingArguments

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

ProbeHook = Callable[[MSCLModel, int], dict[str, float]]


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


class LearningRateSchedule:
    """Multiplier of the peak learning rate at each optimizer step (for ``LambdaLR``).

    ``step``: ``lr_decay_factor`` from ``lr_decay_at * max_steps`` on (the paper: 0.5 at
    half-way); ``cosine``: half a cosine from 1 to 0 after the warm-up; ``constant``.
    A linear warm-up over ``warmup_steps`` comes first in every schedule. A class, not a
    closure, so the scheduler's state pickles into checkpoints.
    """

    def __init__(
        self,
        kind: str,
        max_steps: int,
        warmup_steps: int = 0,
        decay_at: float = 0.5,
        decay_factor: float = 0.5,
    ) -> None:
        self.kind = kind
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.decay_step = int(round(decay_at * max_steps))
        self.decay_factor = decay_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            return self.decay_factor if step >= self.decay_step else 1.0
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0


# ------------------------------------------------------------------------------ building


def build_model(args: PretrainingArguments) -> MSCLForPreTraining:
    """A freshly initialised :class:`MSCLForPreTraining` from the model arguments, in the
    memory layout of ``args.training.channels_last``."""
    model = MSCLForPreTraining(MSCLConfig(**asdict(args.model)))
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
    """
    d = args.data
    chunk_set = load_chunk_set(d.data_dir)
    num_mel_bins = MSCLConfig(**asdict(args.model)).num_mel_bins
    if chunk_set.feature_extractor.feature_size != num_mel_bins:
        raise ValueError(
            f"the chunk set {d.data_dir} holds log-mels of "
            f"{chunk_set.feature_extractor.feature_size} mel bins (its preprocessor_config.json); "
            f"the model takes {num_mel_bins} (num_mel_bins)"
        )
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
        augmentation=args.spec_augmentation() if d.objective == "s3t" else None,
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


def _batch_inputs(
    batch: dict[str, Any], device: torch.device, objective: str, augmentation: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(anchor, positive, source_present or None) on ``device`` as float32."""
    moved = dict(batch)
    moved["anchor"] = batch["anchor"].to(device, non_blocking=True).float()
    moved["positive"] = batch["positive"].to(device, non_blocking=True).float()
    moved = apply_augmentation(moved, augmentation)  # s3t parameters still in the batch
    present = batch["present"].to(device) if objective == "mscl" else None
    return moved["anchor"], moved["positive"], present


def _all_true(accelerator: Any, flag: torch.Tensor) -> bool:
    """Whether the bool tensor ``flag`` holds on every process.

    The one host-device synchronisation of an optimizer step (plus one tiny all-reduce
    under several processes): everything before it can run ahead asynchronously.
    """
    value = flag.float().reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(value.item() == accelerator.num_processes)


class _Meter:
    """Sums of loss / accuracy per source (slot 0 = mixture positives) between two logs."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(SOURCES) + 1, 3, device=device)  # loss, accuracy, count

    def add(
        self,
        source: int,
        loss: torch.Tensor,
        accuracy: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Add one minibatch; rows with ``valid`` False (a non-finite loss) count nothing."""
        loss, accuracy = loss.detach().float(), accuracy.detach().float()
        count = loss.new_ones(()) if valid is None else valid.float()
        row = torch.stack([torch.where(count > 0, loss, 0.0), accuracy * count, count])
        self.sums[source + 1] += row

    def collect(self, accelerator: Any, prefix: str) -> dict[str, float]:
        sums = accelerator.reduce(self.sums, reduction="sum").cpu()
        self.sums.zero_()
        out = {}
        total = sums.sum(0)
        if total[2] > 0:
            out[f"{prefix}/loss"] = float(total[0] / total[2])
            out[f"{prefix}/accuracy"] = float(total[1] / total[2])
        for slot, name in enumerate(SOURCES, start=1):
            if sums[slot, 2] > 0:
                out[f"{prefix}/loss_{name}"] = float(sums[slot, 0] / sums[slot, 2])
        return out


def _evaluate(
    accelerator: Any,
    model: Any,
    batches: list[dict[str, Any]],
    args: PretrainingArguments,
    aug: Any,
) -> dict[str, float]:
    """Contrastive loss and accuracy on the fixed validation minibatches (eval mode)."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    meter = _Meter(accelerator.device)
    gather = process_gather()
    with torch.no_grad(), accelerator.autocast():
        for batch in batches:
            anchor, positive, present = _batch_inputs(
                batch, accelerator.device, args.data.objective, aug
            )
            out = unwrapped(anchor, positive, source_present=present, gather=gather)
            meter.add(batch["source"], out.loss, out.accuracy)
    unwrapped.train(was_training)
    return meter.collect(accelerator, "val")


def _run_probe(accelerator: Any, model: Any, hook: ProbeHook, step: int) -> dict[str, float]:
    """Call the probe hook on the main process with the encoder in eval mode.

    The hook runs under ``fork_rng``: whatever randomness it uses does not shift the
    training's random stream, so runs with and without probes (and resumed runs) agree.
    """
    results: dict[str, float] = {}
    if accelerator.is_main_process:
        encoder = accelerator.unwrap_model(model).mscl
        was_training = encoder.training
        encoder.eval()
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                raw = hook(encoder, step) or {}
            results = {f"probe/{k}": float(v) for k, v in raw.items()}
        except Exception as err:  # noqa: BLE001 - a failing probe must not kill the run
            logger.warning("probe_hook failed at step %d: %s: %s", step, type(err).__name__, err)
        finally:
            encoder.train(was_training)
    accelerator.wait_for_everyone()
    return results


def _tracker_config(args: PretrainingArguments) -> dict[str, Any]:
    # TensorBoard's hparams accept scalars and strings only.
    return {
        k: (", ".join(v) if isinstance(v, list) else ("none" if v is None else v))
        for k, v in args.to_dict().items()
    }


def _validation_batches(
    args: PretrainingArguments, store: ChunkStore, rank: int, world: int, in_loader: bool
) -> list[dict[str, Any]]:
    """The fixed validation minibatches of this process (none, with a warning, if impossible)."""
    try:
        sampler = build_sampler(args, store, VALIDATION_STREAM)
        data = PairDataset(store, sampler, args.training.eval_batches, rank, world, in_loader)
        batches = [data[i] for i in range(args.training.eval_batches)]
    except ValueError as err:  # e.g. a source never present in the validation chunks
        logger.warning("validation disabled: %s", err)
        return []
    errors = [b["error"] for b in batches if "error" in b]
    if errors:
        logger.warning("validation disabled: %s", errors[0])
        return []
    return batches


def _save_final(
    model: MSCLForPreTraining, args: PretrainingArguments, encoder_dir: Path, full_dir: Path
) -> None:
    """The encoder + the chunk set's feature extractor for AutoModel, and the full
    pre-training model.

    Each folder is written under a temporary name and renamed into place, so a run killed
    while saving leaves the old folder or the new one, never half of one.
    """
    # The front end that computed the training log-mels is the encoder's front end.
    fe = load_chunk_set(args.data.data_dir).feature_extractor
    for final, module, extractor in ((encoder_dir, model.mscl, fe), (full_dir, model, None)):
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        module.save_pretrained(str(tmp))
        if extractor is not None:
            extractor.save_pretrained(str(tmp))
        args.save(tmp / ARGS_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def pretrain(args: PretrainingArguments, probe_hook: ProbeHook | None = None) -> PretrainingResult:
    """Pre-train an MSCL encoder; see the module docstring for what happens.

    Args:
        args: the arguments: :func:`~modeling_mscl.training_args.parse_args` of a command
            line, or :meth:`PretrainingArguments.from_config` from Python.
        probe_hook: ``fn(encoder: MSCLModel, step: int) -> dict[str, float]`` called on the
            main process at step 0 of a fresh run, every ``probe_every`` steps and at the
            end; its results are logged as ``probe/<name>``. Overrides ``args``' probe_hook.

    Returns:
        A :class:`PretrainingResult` (folders, final step, last metrics).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    if not isinstance(args, PretrainingArguments):
        raise TypeError(
            "pretrain() takes PretrainingArguments: parse_args(argv) for a command line, "
            "PretrainingArguments.from_config(config, **overrides) from Python"
        )
    args.validate()
    t, d = args.training, args.data
    hook = probe_hook or resolve_probe_hook(t.probe_hook)
    out_dir = Path(t.output_dir).expanduser()

    on_cpu = t.cpu or not _has_accelerator()
    precision = t.mixed_precision
    if precision == "auto":
        # `accelerate launch --mixed_precision X` (or its config) decides when it says
        # bf16 or no; fp16 needs loss scaling, which this loop does not do.
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
        if launched in ("no", "bf16"):
            precision = launched
        else:
            precision = "bf16" if not on_cpu and torch.cuda.is_bf16_supported() else "no"
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
    world, rank = accelerator.num_processes, accelerator.process_index
    # Before any data or model is loaded: a used or unwritable folder fails fast.
    prepare_output_dir(out_dir, t.resume, t.overwrite_output_dir, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if t.batch_size % world:
        raise ValueError(f"batch_size={t.batch_size} must be a multiple of the {world} processes")
    if t.sync_batchnorm and accelerator.device.type != "cuda":
        raise ValueError(
            f"sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no kernel for "
            f"{accelerator.device.type}); set --sync_batchnorm false: each process's batch "
            "norm then sees its slice of the minibatch"
        )

    store, val_store = load_chunk_stores(args)
    sampler = build_sampler(args, store, TRAIN_STREAM)
    augmentation = sampler.augmentation
    in_loader = d.augment_on == "loader" or (d.augment_on == "auto" and on_cpu)
    accum = t.gradient_accumulation_steps

    set_seed(t.seed)  # the same initial weights on every process and in every run
    model = build_model(args)
    if t.sync_batchnorm and world > 1:
        # Statistics over the global minibatch: what one process on the whole batch
        # computes (the reference trained on one GPU).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = _make_optimizer(args, model)
    schedule = LearningRateSchedule(
        t.lr_schedule, t.max_steps, t.warmup_steps, t.lr_decay_at, t.lr_decay_factor
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # Stochastic depth draws differ across processes (seed + rank), as rows of one batch do.
    set_seed(t.seed, device_specific=True)

    if accelerator.is_main_process:
        remove_partial_checkpoints(out_dir)
    accelerator.wait_for_everyone()
    fingerprint = sampler.fingerprint()
    start_step, skipped, bad_in_row = (
        resume(accelerator, args, fingerprint) if t.resume else (0, 0, 0)
    )
    if accelerator.is_main_process:
        args.save(out_dir / ARGS_FILE)

    val_batches: list[dict[str, Any]] = []
    if val_store is not None and t.eval_every and t.eval_batches:
        val_batches = _validation_batches(args, val_store, rank, world, in_loader)

    dataset = PairDataset(store, sampler, t.max_steps * accum, rank, world, in_loader)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start_step * accum, t.max_steps * accum),
        num_workers=d.num_workers,
        prefetch_factor=d.prefetch_factor if d.num_workers else None,
        pin_memory=accelerator.device.type == "cuda",
        # Its own generator: creating the iterator must not consume the global RNG,
        # whose state a resumed run restores from the checkpoint.
        generator=torch.Generator().manual_seed(t.seed),
    )

    accelerator.print(
        f"pretraining {d.objective} on {len(store)} chunks ({len(val_store or [])} for "
        f"validation): {world} process(es) on {accelerator.device}, mixed precision "
        f"{precision}, {t.batch_size} pairs per minibatch, steps {start_step} -> {t.max_steps}"
    )
    accelerator.init_trackers("pretrain", config=_tracker_config(args))
    bar = tqdm(
        total=t.max_steps,
        initial=start_step,
        desc="pretraining",
        disable=not (t.progress_bar and accelerator.is_local_main_process),
    )
    meter = _Meter(accelerator.device)
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []

    def record(logs: dict[str, float], at_step: int) -> None:
        """Send ``logs`` to the trackers and keep them in the run's metrics and history."""
        if logs:
            accelerator.log(logs, step=at_step)
            metrics.update(logs)
            history.append({"step": float(at_step), **logs})

    step = start_step
    device = accelerator.device
    # Stands in for a minibatch that could not be built: the process still runs forward
    # and backward (their collectives must match the other processes'), and the step is
    # skipped on every process.
    placeholder = {
        "anchor": torch.zeros(t.batch_size // world, CROP_FRAMES, store.num_bins),
        "positive": torch.zeros(t.batch_size // world, CROP_FRAMES, store.num_bins),
        "present": torch.ones(t.batch_size // world, dtype=torch.bool),
        "source": int(sampler.source_index[0]) if len(sampler.source_index) else -1,
    }
    step_ok = torch.ones((), dtype=torch.bool, device=device)
    grad_norm = torch.full((), float("nan"), device=device)
    wait_seconds, interval_start, interval_steps = 0.0, time.perf_counter(), 0
    if hook is not None and t.probe_every and start_step == 0:
        # Step 0 is the initialisation that every run of a seed shares: convergence curves
        # of several objectives then start from the same point.
        record(_run_probe(accelerator, model, hook, 0), 0)
    model.train()
    batches = iter(loader)
    # One loss over the global batch: every process's positives are columns of every loss.
    gather = process_gather()
    for _ in range(start_step * accum, t.max_steps * accum):
        waited = time.perf_counter()
        batch = next(batches)
        wait_seconds += time.perf_counter() - waited
        with accelerator.accumulate(model):
            if "error" in batch:
                logger.warning("minibatch %d could not be built: %s", batch["step"], batch["error"])
                batch = placeholder
                step_ok = step_ok & False
            anchor, positive, present = _batch_inputs(batch, device, d.objective, augmentation)
            out = model(anchor, positive, source_present=present, gather=gather)
            accelerator.backward(out.loss)
            finite = torch.isfinite(out.loss.detach())
            step_ok = step_ok & finite
            if batch is not placeholder:
                meter.add(batch["source"], out.loss, out.accuracy, finite)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(
                    model.parameters(), t.max_grad_norm or float("inf")
                )
                if _all_true(accelerator, step_ok & torch.isfinite(grad_norm)):
                    optimizer.step()
                    bad_in_row = 0
                else:
                    skipped += 1
                    bad_in_row += 1
                    logger.warning(
                        "step %d skipped (non-finite loss or gradients, or a bad batch); "
                        "%d skipped so far",
                        step,
                        skipped,
                    )
                with warnings.catch_warnings():
                    # After a skipped update torch warns of "scheduler before optimizer":
                    # intended here, the schedule follows steps, not updates.
                    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                interval_steps += 1
                step_ok = torch.ones((), dtype=torch.bool, device=device)
                bar.update(1)
                if bad_in_row >= t.max_bad_steps:
                    accelerator.end_training()
                    raise RuntimeError(
                        f"{bad_in_row} optimizer steps in a row were skipped (last: step "
                        f"{step - 1}); the run stops. Check the data and the learning rate."
                    )
                logs: dict[str, float] = {}
                if step % t.log_every == 0 or step == t.max_steps:
                    elapsed = time.perf_counter() - interval_start
                    logs.update(meter.collect(accelerator, "train"))
                    logs["train/lr"] = scheduler.get_last_lr()[0]
                    logs["train/grad_norm"] = float(grad_norm)
                    logs["train/skipped_steps"] = float(skipped)
                    logs["train/pairs_per_second"] = interval_steps * accum * t.batch_size / elapsed
                    logs["train/data_wait_fraction"] = wait_seconds / elapsed
                    wait_seconds, interval_start, interval_steps = 0.0, time.perf_counter(), 0
                    if "train/loss" in logs:
                        bar.set_postfix(
                            loss=f"{logs['train/loss']:.3f}", acc=f"{logs['train/accuracy']:.2f}"
                        )
                if val_batches and (step % t.eval_every == 0 or step == t.max_steps):
                    logs.update(_evaluate(accelerator, model, val_batches, args, augmentation))
                if (
                    hook is not None
                    and t.probe_every
                    and (step % t.probe_every == 0 or step == t.max_steps)
                ):
                    logs.update(_run_probe(accelerator, model, hook, step))
                record(logs, step)
                if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.max_steps:
                    trainer_state = {
                        "step": step,
                        "minibatch": step * accum,
                        "skipped_steps": skipped,
                        "bad_steps_in_row": bad_in_row,
                        "num_processes": world,
                        "sampler": sampler.state_dict(),
                        "sampler_fingerprint": fingerprint,
                    }
                    save_checkpoint(accelerator, args, step, trainer_state)
    bar.close()

    encoder_dir, pretraining_dir = out_dir / "encoder", out_dir / "pretraining"
    # An encoder of NaNs must not look like a result: every process (DDP keeps the weights
    # equal) refuses to finish, loudly, and nothing is saved.
    unwrapped = accelerator.unwrap_model(model)
    broken = [n for n, p in unwrapped.state_dict().items() if not torch.isfinite(p).all()]
    if broken:
        accelerator.end_training()
        raise RuntimeError(
            f"the trained weights are not finite ({len(broken)} tensors, e.g. {broken[:3]}); "
            f"nothing saved to {encoder_dir} or {pretraining_dir}. Lower the learning rate "
            "or set max_grad_norm."
        )
    if accelerator.is_main_process:
        _save_final(accelerator.unwrap_model(model), args, encoder_dir, pretraining_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return PretrainingResult(
        output_dir=str(out_dir),
        encoder_dir=str(encoder_dir),
        pretraining_dir=str(pretraining_dir),
        step=step,
        skipped_steps=skipped,
        metrics=metrics,
        history=history,
    )
