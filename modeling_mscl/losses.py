"""The contrastive losses of COLA and MSCL on the trainer's side: gathering across processes.

The losses themselves (:func:`info_nce_loss`, :func:`null_source_contrastive_loss`,
re-exported here) live in the Hub file ``contrastive_loss_mscl.py``, because the model computes
its loss; alone they compute one process's loss. Given the :class:`ProcessGather` of
:func:`process_gather`, the positives of every process become columns (more negatives
per anchor) and gradients flow back to each process's own slice. Each process returns the mean cross-entropy over
its *local* rows; the gradient averaging of DistributedDataParallel then yields the
gradient of the mean over the global batch, because every process holds the same number
of rows. Keeping the collectives here keeps ``torch.distributed`` out of the Hub files.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .contrastive_loss_mscl import (
    ContrastiveLossOutput,
    ProcessGather,
    info_nce_loss,
    null_source_contrastive_loss,
)

__all__ = [
    "ContrastiveLossOutput",
    "ProcessGather",
    "gather_no_grad",
    "gather_with_grad",
    "info_nce_loss",
    "null_source_contrastive_loss",
    "process_gather",
]

# The shape check exchanges a fixed-length vector so that the collective has the same size
# on every process whatever the tensors look like: [ndim, numel of trailing dims, dims...].
_SHAPE_SLOTS = 8


def _world() -> tuple[int, int]:
    """(rank, world size) of the default group, or (0, 1) without torch.distributed."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """all_gather + cat on dim 0; the caller guarantees equal shapes on every process."""
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def _check_equal_shapes(tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError on every process if the shapes differ across processes.

    Gathering tensors of different sizes would fail deep inside the backend (or hang), so
    the shapes are compared first with one tiny all_gather; every process sees the same
    result and raises together.
    """
    shape = tuple(tensor.shape)
    vec = torch.zeros(2 + _SHAPE_SLOTS, dtype=torch.int64, device=tensor.device)
    vec[0] = len(shape)
    vec[1] = math.prod(shape[1:])
    head = shape[:_SHAPE_SLOTS]
    if head:
        vec[2 : 2 + len(head)] = torch.tensor(head, dtype=torch.int64)
    everyone = _all_gather_cat(vec[None]).cpu()
    if bool((everyone == everyone[0]).all()):
        return
    shapes = [tuple(row[2 : 2 + min(int(row[0]), _SHAPE_SLOTS)].tolist()) for row in everyone]
    raise ValueError(
        f"{name} needs the same shape on every process (equal local batch sizes); "
        f"got {shapes} (process order, first {_SHAPE_SLOTS} dims)"
    )


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each process the gradient of its own slice.

    Every process computes a loss that may use every slice, so the gradient of a slice is
    the sum over processes: all_reduce(SUM) of the full gradient, then the local rows. This
    uses only all_gather and all_reduce, which gloo and nccl both implement (the all_to_all
    of torch.distributed.nn.functional.all_gather's backward is missing on gloo).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank = dist.get_rank()
        ctx.local = tensor.shape[0]
        return _all_gather_cat(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Clone: autograd may still hold grad_output, and all_reduce works in place.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local]


def gather_with_grad(tensor: torch.Tensor, check_shapes: bool = True) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, keeping the gradient path.

    Args:
        tensor: `(n, ...)` local tensor; `n` and the trailing dims must match on every
            process (checked with a small all_gather; a mismatch raises ValueError on all
            processes).
        check_shapes: compare the shapes first (one more collective and a wait for its
            result on the host); only every process at once may leave it out.

    Returns:
        `(world_size * n, ...)`: process 0's rows first. In backward, each process receives
        the sum over processes of the gradient of its own rows. Without an initialised
        torch.distributed, or with one process, ``tensor`` itself.
    """
    _, world = _world()
    if world == 1:
        return tensor
    if check_shapes:
        _check_equal_shapes(tensor, "gather_with_grad")
    return _GatherWithGrad.apply(tensor)


class _CheckedOnce:
    """:func:`gather_with_grad` that compares the shapes on the first gather of each kind
    (number of dims, dtype) only.

    The shape check makes the host wait for a collective: once per step is a stall of the
    device's queue (and no CUDA graph can hold it). A training run gathers the same
    shapes at every step (``batch_size / processes`` rows everywhere), so the first step's
    check covers the run. The kind, unlike the sizes, is the same on every process that
    runs the same code, so all processes skip the same checks and their collectives stay
    matched.
    """

    def __init__(self) -> None:
        self.checked: set[tuple[int, torch.dtype]] = set()

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        kind = (tensor.dim(), tensor.dtype)
        first = kind not in self.checked
        self.checked.add(kind)
        return gather_with_grad(tensor, check_shapes=first)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, without gradient (masks, flags).

    Same shape rules as :func:`gather_with_grad`; bool tensors are supported on gloo too.
    Identity without an initialised torch.distributed or with one process.
    """
    _, world = _world()
    if world == 1:
        return tensor
    _check_equal_shapes(tensor, "gather_no_grad")
    # gloo has no bool collectives; uint8 round-trips exactly.
    if tensor.dtype == torch.bool:
        return _all_gather_cat(tensor.detach().to(torch.uint8)).bool()
    return _all_gather_cat(tensor.detach())


def process_gather() -> ProcessGather | None:
    """What the loss needs to contrast against every process's rows; ``None`` (the
    single-process loss) without an initialised torch.distributed or with one process.

    Its gather compares shapes across processes on the first gather of each kind only
    (see :class:`_CheckedOnce`): make one per run (or per evaluation), on every process.
    """
    rank, world = _world()
    return ProcessGather(_CheckedOnce(), rank) if world > 1 else None
