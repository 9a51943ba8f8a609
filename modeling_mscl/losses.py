"""Contrastive losses of COLA and MSCL, and gathering embeddings across processes.

Nothing here has parameters: the similarity (a trainable bilinear matrix, or cosine over a
temperature) lives in the model and is passed in as a callable
``similarity(anchors (B, D), columns (C, D)) -> logits (B, C)``.

Under ``torch.distributed`` the positives of every process become columns (more negatives
per anchor), and gradients flow back to each process's own slice. Each process returns the
mean cross-entropy over its *local* rows; the gradient averaging of DistributedDataParallel
then yields the gradient of the mean over the global batch, because every process holds
the same number of rows.

Only torch is imported, so the module can travel next to the Hub files if it ever needs to.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn import functional as F

__all__ = [
    "ContrastiveLossOutput",
    "gather_no_grad",
    "gather_with_grad",
    "info_nce_loss",
    "null_source_contrastive_loss",
]

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The shape check exchanges a fixed-length vector so that the collective has the same size
# on every process whatever the tensors look like: [ndim, numel of trailing dims, dims...].
_SHAPE_SLOTS = 8


def _world(gather: bool = True) -> tuple[int, int]:
    """(rank, world size) of the default group, or (0, 1) without torch.distributed."""
    if not gather or not dist.is_available() or not dist.is_initialized():
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


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, keeping the gradient path.

    Args:
        tensor: `(n, ...)` local tensor; `n` and the trailing dims must match on every
            process (checked with a small all_gather; a mismatch raises ValueError on all
            processes).

    Returns:
        `(world_size * n, ...)`: process 0's rows first. In backward, each process receives
        the sum over processes of the gradient of its own rows. Without an initialised
        torch.distributed, or with one process, ``tensor`` itself.
    """
    _, world = _world()
    if world == 1:
        return tensor
    _check_equal_shapes(tensor, "gather_with_grad")
    return _GatherWithGrad.apply(tensor)


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


@dataclass
class ContrastiveLossOutput:
    """What a contrastive loss returns.

    Attributes:
        loss: scalar, mean cross-entropy over the local rows (float32).
        logits: `(B_local, C)` float32 similarities of each local anchor to every column.
        targets: `(B_local,)` int64 column index each local anchor must pick.
        accuracy: scalar, fraction of local rows whose argmax is the target (no gradient).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    accuracy: torch.Tensor


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast so the logits and the softmax are computed in float32."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return contextlib.nullcontext()


def _contrast(
    anchors: torch.Tensor, columns: torch.Tensor, targets: torch.Tensor, similarity: Similarity
) -> ContrastiveLossOutput:
    """Cross-entropy of float32 logits of ``anchors`` (B, D) against ``columns`` (C, D)."""
    batch, num_columns = anchors.shape[0], columns.shape[0]
    if batch == 0 or num_columns == 0:
        # Nothing to contrast (an empty batch). A zero loss that still touches the inputs
        # keeps backward (and any collective inside it) running the same way everywhere.
        zero = (anchors.float().sum() + columns.float().sum()) * 0.0
        logits = anchors.new_zeros((batch, num_columns), dtype=torch.float32)
        return ContrastiveLossOutput(zero, logits, targets, zero.detach().clone())
    with _autocast_off(anchors.device):
        logits = similarity(anchors.float(), columns.float()).float()
    if logits.shape != (batch, num_columns):
        raise ValueError(
            f"similarity must return logits of shape ({batch}, {num_columns}); "
            f"got {tuple(logits.shape)}"
        )
    loss = F.cross_entropy(logits, targets)
    accuracy = (logits.detach().argmax(dim=-1) == targets).float().mean()
    return ContrastiveLossOutput(loss, logits, targets, accuracy)


def _check_pairs(anchor_embeds: torch.Tensor, positive_embeds: torch.Tensor) -> None:
    if anchor_embeds.dim() != 2 or anchor_embeds.shape != positive_embeds.shape:
        raise ValueError(
            "anchor_embeds and positive_embeds must both have shape (batch, dim); got "
            f"{tuple(anchor_embeds.shape)} and {tuple(positive_embeds.shape)}"
        )


def info_nce_loss(
    anchor_embeds: torch.Tensor,
    positive_embeds: torch.Tensor,
    similarity: Similarity,
    gather: bool = True,
) -> ContrastiveLossOutput:
    """COLA's InfoNCE: each anchor must pick its own positive among all positives.

    Args:
        anchor_embeds: `(B, D)` local anchors (mixture crops).
        positive_embeds: `(B, D)` local positives; row i belongs to anchor i.
        similarity: `(anchors (B, D), columns (C, D)) -> logits (B, C)`.
        gather: under torch.distributed, use the positives of every process as columns
            (gathered with gradient); the target of local row i on process r is
            ``r * B + i``.

    Returns:
        :class:`ContrastiveLossOutput`; the loss is the mean over the local rows.
    """
    _check_pairs(anchor_embeds, positive_embeds)
    rank, world = _world(gather)
    columns = gather_with_grad(positive_embeds) if world > 1 else positive_embeds
    batch = anchor_embeds.shape[0]
    targets = torch.arange(batch, device=anchor_embeds.device) + rank * batch
    return _contrast(anchor_embeds, columns, targets, similarity)


def null_source_contrastive_loss(
    anchor_embeds: torch.Tensor,
    positive_embeds: torch.Tensor,
    source_present: torch.Tensor,
    similarity: Similarity,
    gather: bool = True,
) -> ContrastiveLossOutput:
    """MSCL's InfoNCE with one shared "null" column for absent sources (METHOD.md, section 4).

    Columns are the positives of the rows whose source is present, in global order (process
    0's rows first), then one null column if any row of the global batch is absent: the
    mean of the embeddings of *all* absent rows of the global batch, as the reference
    computes it (in training mode stochastic depth makes those rows differ, and the mean
    sends the gradient to every one of them). A present anchor must pick its own positive;
    an absent anchor must pick the null column. With every source present this is exactly
    :func:`info_nce_loss`.

    Args:
        anchor_embeds: `(B, D)` local anchors (mixture crops).
        positive_embeds: `(B, D)` local positives: source crops where present, the
            embedding of the all-zero input where absent.
        source_present: `(B,)` bool, whether each row's source is present.
        similarity: `(anchors (B, D), columns (C, D)) -> logits (B, C)`.
        gather: under torch.distributed, use the positives of every process as columns and
            average the null column over the absent rows of every process (both gathered
            with gradient), so that all processes contrast against the same columns.

    Returns:
        :class:`ContrastiveLossOutput`; the loss is the mean over the local rows.
    """
    _check_pairs(anchor_embeds, positive_embeds)
    batch = positive_embeds.shape[0]
    device = positive_embeds.device
    if source_present.shape != (batch,):
        raise ValueError(
            f"source_present must have shape ({batch},); got {tuple(source_present.shape)}"
        )
    present = source_present.to(device=device, dtype=torch.bool)

    rank, world = _world(gather)
    if world == 1:
        all_present, all_positives = present, positive_embeds
    else:
        _check_equal_shapes(positive_embeds, "null_source_contrastive_loss")
        all_present = _all_gather_cat(present.to(torch.uint8)).bool()
        all_positives = _GatherWithGrad.apply(positive_embeds)

    columns = all_positives[all_present]
    num_present = columns.shape[0]
    if not bool(all_present.all()):
        null_column = all_positives[~all_present].float().mean(dim=0)
        columns = torch.cat([columns.float(), null_column[None]])

    # Global column index of each present row = number of present rows before it.
    rows = torch.arange(batch, device=device) + rank * batch
    column_of_row = torch.cumsum(all_present.long(), dim=0) - 1
    targets = torch.where(present, column_of_row[rows], torch.full_like(rows, num_present))
    return _contrast(anchor_embeds, columns, targets, similarity)
