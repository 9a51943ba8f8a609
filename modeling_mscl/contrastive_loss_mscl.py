"""The contrastive losses of COLA and MSCL: InfoNCE and the null-source variant.

Hub file: imports only the standard library and torch, so a saved folder computes the
pre-training loss with ``trust_remote_code=True`` without this package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# ---------------------------------------------------------------------------- the losses
# COLA's InfoNCE and MSCL's null-source variant. They have no parameters: the similarity
# (a trainable bilinear matrix, or cosine over a temperature) is the model's and is passed
# in as ``similarity(anchors (B, D), columns (C, D)) -> logits (B, C)``. Across processes
# they need only a ProcessGather; the collectives themselves stay trainer-side
# (modeling_mscl.losses), so torch.distributed never travels with a Hub folder.

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProcessGather:
    """How a loss sees the rows of the other processes of a data-parallel run.

    Attributes:
        all_gather: `(n, ...) -> (world * n, ...)`: a tensor concatenated over processes in
            rank order, differentiable (in backward each process receives the sum over
            processes of the gradient of its own rows); `n` must be equal everywhere.
        rank: this process's place in that order.
    """

    all_gather: Callable[[torch.Tensor], torch.Tensor]
    rank: int


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
    anchors: torch.Tensor,
    columns: torch.Tensor,
    targets: torch.Tensor,
    similarity: Similarity,
    counts: torch.Tensor | None = None,
) -> ContrastiveLossOutput:
    """Cross-entropy of float32 logits of ``anchors`` (B, D) against ``columns`` (C, D);
    columns where the bool ``counts`` (C,) is False get the logit ``-inf``."""
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
    if counts is not None:
        # `where`, not a sum with -inf: no gradient reaches a column that does not count.
        logits = torch.where(counts[None, :], logits, float("-inf"))
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
    gather: ProcessGather | None = None,
) -> ContrastiveLossOutput:
    """COLA's InfoNCE: each anchor must pick its own positive among all positives.

    Args:
        anchor_embeds: `(B, D)` local anchors (mixture crops).
        positive_embeds: `(B, D)` local positives; row i belongs to anchor i.
        similarity: `(anchors (B, D), columns (C, D)) -> logits (B, C)`.
        gather: the other processes' rows (see :class:`ProcessGather`): the positives of
            every process become columns, and the target of local row i on process r is
            ``r * B + i``. `None`: this process's rows only.

    Returns:
        :class:`ContrastiveLossOutput`; the loss is the mean over the local rows.
    """
    _check_pairs(anchor_embeds, positive_embeds)
    rank = gather.rank if gather is not None else 0
    columns = gather.all_gather(positive_embeds) if gather is not None else positive_embeds
    batch = anchor_embeds.shape[0]
    targets = torch.arange(batch, device=anchor_embeds.device) + rank * batch
    return _contrast(anchor_embeds, columns, targets, similarity)


def null_source_contrastive_loss(
    anchor_embeds: torch.Tensor,
    positive_embeds: torch.Tensor,
    source_present: torch.Tensor,
    similarity: Similarity,
    gather: ProcessGather | None = None,
) -> ContrastiveLossOutput:
    """MSCL's InfoNCE with one shared "null" column for absent sources (the method, section 4).

    The columns that count are the positives of the rows whose source is present, in global
    order (process 0's rows first), then one null column if any row of the global batch is
    absent: the mean of the embeddings of *all* absent rows of the global batch, as the
    reference computes it (in training mode stochastic depth makes those rows differ, and
    the mean sends the gradient to every one of them). A present anchor must pick its own
    positive; an absent anchor must pick the null column. With every source present the
    loss is that of :func:`info_nce_loss`.

    Everything has a fixed shape, whatever is present, so that the loss never makes the
    host wait for the device (no boolean-mask indexing, no branch on a tensor's value):
    there is one column per row of the global batch plus the null column, and the columns
    that do not count (absent rows; the null column when nothing is absent) have the logit
    ``-inf``, which adds exactly nothing to the softmax. The loss, the accuracy and every
    gradient are those of the reference's compacted columns.

    Args:
        anchor_embeds: `(B, D)` local anchors (mixture crops).
        positive_embeds: `(B, D)` local positives: source crops where present, the
            embedding of the all-zero input where absent.
        source_present: `(B,)` bool, whether each row's source is present.
        similarity: `(anchors (B, D), columns (C, D)) -> logits (B, C)`.
        gather: the other processes' rows (see :class:`ProcessGather`): the positives of
            every process become columns and the null column averages the absent rows of
            every process, so that all processes contrast against the same columns.
            `None`: this process's rows only.

    Returns:
        :class:`ContrastiveLossOutput` whose logits have `world * B + 1` columns (global
        row j's positive at column j, the null column last; ``-inf`` where a column does
        not count) and whose targets index those columns; the loss is the mean over the
        local rows.
    """
    _check_pairs(anchor_embeds, positive_embeds)
    batch = positive_embeds.shape[0]
    device = positive_embeds.device
    if source_present.shape != (batch,):
        raise ValueError(
            f"source_present must have shape ({batch},); got {tuple(source_present.shape)}"
        )
    present = source_present.to(device=device, dtype=torch.bool)

    rank = gather.rank if gather is not None else 0
    if gather is None:
        all_present, all_positives = present, positive_embeds
    else:
        # One collective for both: the flag rides along as a last column (0/1 is exact in
        # any float type; its gradient is dropped).
        flagged = torch.cat([positive_embeds, present[:, None].to(positive_embeds.dtype)], 1)
        gathered = gather.all_gather(flagged)
        all_positives, all_present = gathered[:, :-1], gathered[:, -1] > 0.5

    # The null column: the mean of the absent rows, as a masked sum over a count clamped
    # at 1 (with nothing absent it is the zero vector, and its column does not count).
    absent = ~all_present
    num_absent = absent.sum()
    null_column = torch.where(absent[:, None], all_positives.float(), 0.0).sum(dim=0)
    null_column = null_column / num_absent.clamp(min=1)
    columns = torch.cat([all_positives.float(), null_column[None]])
    counts = torch.cat([all_present, (num_absent > 0)[None]])

    rows = torch.arange(batch, device=device) + rank * batch
    null_index = all_present.shape[0]
    targets = torch.where(present, rows, torch.full_like(rows, null_index))
    return _contrast(anchor_embeds, columns, targets, similarity, counts)
