"""The pre-training step as a GPU runs it, checked on the CPU.

A GPU runs a step asynchronously: the host queues kernels and goes on, until something
needs a value on the host (``.item()``, ``bool(tensor)``, a ``nonzero`` or a boolean-mask
index, whose output size depends on the data). Each such point stalls the queue and rules
out capturing the step as a CUDA graph. Two checks stand in for the device here:

- a ``TorchDispatchMode`` that counts those operators in one forward and backward
  (target 0);
- the same step on ``torch.device("meta")``, where every tensor has a shape but no data:
  any host read of a value, and any tensor left on another device, raises.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from modeling_mscl import MSCLForPreTraining, augment
from modeling_mscl.augment import SpecAugmentation
from modeling_mscl.losses import ProcessGather
from modeling_mscl.pairs import CROP_FRAMES
from modeling_mscl.training_metrics import Meter, batch_inputs
from tests.conftest import tiny_config

aten = torch.ops.aten
# Operators whose result the host must wait for: a scalar read, or an output whose size
# depends on the values.
_SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.repeat_interleave.Tensor,
    aten._unique2.default,
    aten.unique_consecutive.default,
}


class HostSyncCounter(TorchDispatchMode):
    """Counts the operators of one region that make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SYNC_OPS:
            self.calls.append(str(func))
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            # x[mask] / x[mask] = v with a boolean mask: a nonzero inside the operator.
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.calls.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


BATCH = 8


def _batch(objective: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = (BATCH, CROP_FRAMES, 64)
    batch = {
        "anchor": torch.randn(shape, generator=gen) - 5.0,
        "positive": torch.randn(shape, generator=gen) - 5.0,
        "present": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
        "source": 1,
    }
    if objective == "s3t":
        # Every transform picked on some crops and not on others.
        aug = SpecAugmentation(time_warp_prob=0.5, freq_shift_prob=0.5)
        rng = np.random.default_rng(0)
        batch["anchor_augment"] = aug.draw(rng, BATCH, CROP_FRAMES, 64)
        batch["positive_augment"] = aug.draw(rng, BATCH, CROP_FRAMES, 64)
        assert 0 < (batch["anchor_augment"]["time_warp_pivot"] >= 0).sum() < BATCH
        assert 0 < (batch["anchor_augment"]["freq_shift"] > 0).sum() < BATCH
    return batch


def _step(model, batch, objective, device, gather=None) -> Meter:
    """What the training loop does with one minibatch, up to backward and the metrics."""
    aug = SpecAugmentation(time_warp_prob=0.5, freq_shift_prob=0.5) if objective == "s3t" else None
    mode = "mscl" if objective == "mscl" else "cola"
    anchor, positive, present = batch_inputs(batch, device, mode, aug)
    out = model(anchor, positive, source_present=present, gather=gather)
    out.loss.backward()
    meter = Meter(device)
    meter.add(batch["source"], out.loss, out.accuracy, torch.isfinite(out.loss.detach()))
    return meter


def _fake_gather(world: int = 2, rank: int = 1) -> ProcessGather:
    """A stand-in for the other processes: they hold copies of this process's rows."""

    def all_gather(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor] * world)

    return ProcessGather(all_gather, rank)


@pytest.mark.parametrize("objective", ["mscl", "cola", "s3t"])
@pytest.mark.parametrize("gathered", [False, True], ids=["one-process", "gathered"])
def test_a_training_step_has_no_host_synchronisation(objective, gathered, monkeypatch):
    # The S3T parameters are applied in the step, as the trainer does on a GPU, and the
    # augmentation takes the path it takes there (the CPU's picks the augmented crops).
    monkeypatch.setattr(augment, "_picked_rows", lambda x, picked: None)
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config()).train()
    batch = _batch(objective)
    gather = _fake_gather() if gathered else None
    cpu = torch.device("cpu")
    _step(model, batch, objective, cpu, gather)  # warm-up: lazy initialisation
    model.zero_grad()
    with HostSyncCounter() as counter:
        _step(model, batch, objective, cpu, gather)
    assert counter.calls == []


def test_the_augmentation_off_the_cpu_equals_the_cpus(monkeypatch):
    aug = SpecAugmentation(time_warp_prob=0.5, freq_shift_prob=0.5, fill_value=-1.5)
    crops = torch.randn(32, CROP_FRAMES, 64, generator=torch.Generator().manual_seed(0))
    params = aug.draw(np.random.default_rng(1), 32, CROP_FRAMES, 64)
    on_cpu = aug.apply(crops, params)
    monkeypatch.setattr(augment, "_picked_rows", lambda x, picked: None)
    assert torch.equal(aug.apply(crops, params), on_cpu)
    # Nothing picked: both paths leave the crops as they are.
    none = {k: np.where(k == "time_warp_pivot", -1, 0) * np.ones_like(v) for k, v in params.items()}
    assert torch.equal(aug.apply(crops, none), crops)


@pytest.mark.parametrize("objective", ["mscl", "cola", "s3t"])
def test_a_training_step_runs_on_the_meta_device(objective):
    torch.manual_seed(0)
    device = torch.device("meta")
    model = MSCLForPreTraining(tiny_config()).train().to(device)
    meter = _step(model, _batch(objective), objective, device)
    assert meter.sums.device == device
    assert all(p.grad is not None and p.grad.device == device for p in model.parameters())


def test_the_gather_checks_shapes_once_per_kind(monkeypatch):
    """The shape check costs a collective and a wait on the host: the first gather of
    each kind pays it, the steps after it do not (in a faked two-process world)."""
    from modeling_mscl import losses

    collectives: list[tuple[int, ...]] = []

    def all_gather(parts, tensor):
        collectives.append(tuple(tensor.shape))
        for part in parts:
            part.copy_(tensor)

    monkeypatch.setattr(losses, "_world", lambda: (0, 2))
    monkeypatch.setattr(losses.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(losses.dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(losses.dist, "all_gather", all_gather)
    gather = losses.process_gather()
    x = torch.randn(4, 3)
    assert torch.equal(gather.all_gather(x), torch.cat([x, x]))
    assert collectives == [(1, 10), (4, 3)]  # the shape vector, then the rows
    collectives.clear()
    with HostSyncCounter() as counter:
        gather.all_gather(x + 1)
    assert collectives == [(4, 3)] and counter.calls == []
    gather.all_gather(torch.ones(4, dtype=torch.bool))  # another kind: checked again
    assert collectives == [(4, 3), (1, 10), (4,)]
    # The functions themselves still check every time.
    collectives.clear()
    losses.gather_with_grad(x)
    assert collectives == [(1, 10), (4, 3)]


def test_the_eval_chunk_follows_the_device():
    from modeling_mscl.encoder_mscl import _inference_chunk_rows

    window = CROP_FRAMES * 64
    assert _inference_chunk_rows(torch.device("cpu"), window) == 128  # tuned on 2 cores
    assert _inference_chunk_rows(torch.device("cuda", 0), window) == 1024
    assert _inference_chunk_rows(torch.device("cpu"), 10**9) == 1  # always some rows
