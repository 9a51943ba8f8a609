"""Probes during multi-GPU pre-training: the main process alone must never enter a
collective (the others wait at a barrier; an all-gather only one process joins hangs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from modeling_mscl import MSCLModel
from modeling_mscl.probing import recalibrate_batch_norm
from modeling_mscl.probing.embeddings import plain_batch_norm
from modeling_mscl.training_metrics import run_probe
from tests.conftest import tiny_config

# The stand-in GPU below (the CPU as torch's extra backend) makes seeding warn.
pytestmark = pytest.mark.filterwarnings("ignore:Set seed for `cpu` device")

_COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "broadcast",
    "barrier",
    "reduce_scatter_tensor",
)


@pytest.fixture
def two_process_world(monkeypatch):
    """torch.distributed as the main process of a two-process run sees it: initialised,
    world size 2, and every collective (and SyncBatchNorm's synced path) recorded and
    refused instead of waiting for a process that never comes."""
    entered: list[str] = []

    def refuse(name):
        def collective(*args, **kwargs):
            entered.append(name)
            raise RuntimeError(f"{name}: a collective that only one process entered")

        return collective

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    for name in _COLLECTIVES:
        monkeypatch.setattr(dist, name, refuse(name))
    # SyncBatchNorm runs on GPUs only; the CPU stands in for one here.
    monkeypatch.setattr(torch._C, "_get_privateuse1_backend_name", lambda: "cpu")
    synced = SimpleNamespace(apply=refuse("SyncBatchNorm all-gather"))
    monkeypatch.setattr(torch.nn.modules.batchnorm, "sync_batch_norm", synced)
    return entered


def sync_model() -> MSCLModel:
    torch.manual_seed(0)
    return nn.SyncBatchNorm.convert_sync_batchnorm(MSCLModel(tiny_config()))


def test_the_fake_world_catches_a_synced_batch_norm(two_process_world):
    norm = nn.SyncBatchNorm(4).train()
    with pytest.raises(RuntimeError, match="only one process"):
        norm(torch.randn(2, 4, 3, 3))
    assert two_process_world == ["SyncBatchNorm all-gather"]


def test_recalibration_uses_plain_batch_norm(two_process_world):
    model = sync_model()
    windows = torch.randn(16, 98, 64, generator=torch.Generator().manual_seed(1))
    copy = recalibrate_batch_norm(model, windows, batch_size=8)
    assert two_process_world == []
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in copy.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())  # left as it was
    # The statistics are those a model with plain batch norm gets.
    torch.manual_seed(0)
    plain = recalibrate_batch_norm(MSCLModel(tiny_config()), windows, batch_size=8)
    for (name, a), b in zip(copy.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_the_probe_hook_on_the_main_process_enters_no_collective(two_process_world):
    windows = torch.randn(8, 98, 64, generator=torch.Generator().manual_seed(2))
    pretraining = SimpleNamespace(mscl=sync_model().train())

    def hook(encoder, step):
        copy = recalibrate_batch_norm(encoder, windows, batch_size=4)
        with torch.no_grad():
            return {"norm": copy(windows[:2]).audio_embeds.norm().item()}

    accelerator = SimpleNamespace(
        is_main_process=True,
        device=torch.device("cpu"),
        unwrap_model=lambda model: model,
        wait_for_everyone=lambda: None,
    )
    results = run_probe(accelerator, pretraining, hook, step=3)
    assert two_process_world == []
    assert set(results) == {"probe/norm"}  # the hook ran to its end
    assert pretraining.mscl.training  # and training mode came back


def test_plain_batch_norm_keeps_everything():
    norm = nn.SyncBatchNorm(3, eps=1e-3, momentum=0.01).to(torch.bfloat16).eval()
    with torch.no_grad():
        norm.weight.uniform_()
        norm.running_mean.uniform_()
    norm.num_batches_tracked += 5
    plain = plain_batch_norm(norm)
    assert type(plain) is nn.BatchNorm2d and not plain.training
    assert (plain.eps, plain.momentum, plain.weight.dtype) == (1e-3, 0.01, torch.bfloat16)
    for (name, a), b in zip(norm.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
