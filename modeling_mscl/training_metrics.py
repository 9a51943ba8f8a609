"""What a pre-training run measures besides its loss: per-source sums between logs, the
fixed validation minibatches, and the probe hook called along the way."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .long_audio_mscl import eval_mode
from .losses import process_gather
from .modeling_mscl import MSCLModel
from .objectives import get_objective
from .pairs import ChunkStore, PairDataset, apply_augmentation
from .stems import SOURCES
from .training_args import PretrainingArguments

__all__ = ["Meter", "ProbeHook", "batch_inputs", "evaluate", "run_probe", "validation_batches"]

logger = logging.getLogger(__name__)

ProbeHook = Callable[[MSCLModel, int], dict[str, float]]


def batch_inputs(
    batch: dict[str, Any], device: torch.device, objective: str, augmentation: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(anchor, positive, source_present or None) on ``device`` as float32: the presence
    flags go to the model only for an objective with a presence mask (``mscl``)."""
    moved = dict(batch)
    moved["anchor"] = batch["anchor"].to(device, non_blocking=True).float()
    moved["positive"] = batch["positive"].to(device, non_blocking=True).float()
    moved = apply_augmentation(moved, augmentation)  # s3t parameters still in the batch
    present = None
    if get_objective(objective).presence_mask:
        # Asynchronous from pinned memory (a blocking copy would make the host wait).
        present = batch["present"].to(device, non_blocking=True)
    return moved["anchor"], moved["positive"], present


class Meter:
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


def evaluate(
    accelerator: Any,
    model: Any,
    batches: list[dict[str, Any]],
    args: PretrainingArguments,
    aug: Any,
) -> dict[str, float]:
    """Contrastive loss and accuracy on the fixed validation minibatches (eval mode)."""
    unwrapped = accelerator.unwrap_model(model)
    meter = Meter(accelerator.device)
    gather = process_gather()
    with eval_mode(unwrapped), torch.no_grad(), accelerator.autocast():
        for batch in batches:
            anchor, positive, present = batch_inputs(
                batch, accelerator.device, args.data.objective, aug
            )
            out = unwrapped(anchor, positive, source_present=present, gather=gather)
            meter.add(batch["source"], out.loss, out.accuracy)
    return meter.collect(accelerator, "val")


def run_probe(accelerator: Any, model: Any, hook: ProbeHook, step: int) -> dict[str, float]:
    """Call the probe hook on the main process with the encoder in eval mode.

    The hook runs under ``fork_rng``: whatever randomness it uses does not shift the
    training's random stream, so runs with and without probes (and resumed runs) agree.
    """
    results: dict[str, float] = {}
    if accelerator.is_main_process:
        encoder = accelerator.unwrap_model(model).mscl
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        try:
            with eval_mode(encoder), torch.random.fork_rng(devices=devices):
                raw = hook(encoder, step) or {}
            results = {f"probe/{k}": float(v) for k, v in raw.items()}
        except Exception as err:  # noqa: BLE001 - a failing probe must not kill the run
            logger.warning("probe_hook failed at step %d: %s: %s", step, type(err).__name__, err)
    accelerator.wait_for_everyone()
    return results


def validation_batches(
    make_sampler: Callable[[], Any],
    store: ChunkStore,
    count: int,
    rank: int,
    world: int,
    in_loader: bool,
) -> list[dict[str, Any]]:
    """This process's ``count`` fixed validation minibatches from ``make_sampler()`` (none,
    with a warning, if they cannot be built)."""
    try:
        data = PairDataset(store, make_sampler(), count, rank, world, in_loader)
        batches = [data[i] for i in range(count)]
    except ValueError as err:  # e.g. a source never present in the validation chunks
        logger.warning("validation disabled: %s", err)
        return []
    errors = [b["error"] for b in batches if "error" in b]
    if errors:
        logger.warning("validation disabled: %s", errors[0])
        return []
    return batches
