"""Probe heads on frozen features: training with early stopping, clip aggregation, scoring."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..long_audio_mscl import aggregate_window_logits
from ..modeling_mscl import build_classifier_head
from .crops import CropSource, WindowCrops
from .embeddings import WindowEmbeddings
from .metrics import classification_metrics
from .tasks import ProbeTask

__all__ = [
    "TrainedProbe",
    "aggregate_clip_scores",
    "binary_accuracy",
    "evaluate_probe",
    "train_probe",
    "window_accuracy",
]


def _build_head(task: ProbeTask, dim: int, num_labels: int) -> nn.Sequential:
    """``task``'s head (:func:`~modeling_mscl.modeling_mscl.build_classifier_head`),
    Keras-initialised."""
    head = build_classifier_head(dim, num_labels, task.head, task.hidden_size, task.dropout)
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)  # Keras' Dense default, as the reference
            nn.init.zeros_(layer.bias)
    return head


def _first_linear(head: nn.Sequential) -> nn.Linear:
    return next(m for m in head if isinstance(m, nn.Linear))


@torch.no_grad()
def _fold_standardization(head: nn.Sequential, mean: np.ndarray, std: np.ndarray) -> None:
    """Rewrite the first Linear so that head(x) equals the trained head((x - mean) / std)."""
    linear = _first_linear(head)
    weight = linear.weight.double()
    scale = torch.as_tensor(1.0 / std, dtype=torch.float64)
    shift = torch.as_tensor(mean, dtype=torch.float64) * scale
    linear.bias.copy_((linear.bias.double() - weight @ shift).to(linear.bias.dtype))
    linear.weight.copy_((weight * scale).to(linear.weight.dtype))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting.

    A probe head's minibatches (128 x 1280) are far too small to gain from intra-op
    threads; on a loaded CPU their synchronisation made training ~60x slower (measured
    on this project's 2-core machine: 18 s vs 0.3 s for 120 steps).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def _correct(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> tuple[int, int]:
    """(correct decisions, decisions): per tag for multi-label, per window otherwise."""
    if multi_label:
        # sigmoid(z) > 0.5 exactly when z > 0: no sigmoid needed.
        hits = (logits > 0) == (targets > 0.5)
        return int(hits.sum()), hits.numel()
    return int((logits.argmax(-1) == targets).sum()), targets.shape[0]


def binary_accuracy(logits: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
    """Multi-label accuracy: the mean over windows and tags of ``(sigmoid(logit) > 0.5) == tag``.

    The early-stopping metric of the reference's tagging probe (Keras' ``BinaryAccuracy``);
    ``targets`` is multi-hot.
    """
    correct, total = _correct(torch.as_tensor(logits), torch.as_tensor(targets), True)
    return correct / max(total, 1)


def window_accuracy(
    logits: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, multi_label: bool
) -> float:
    """Window-level validation accuracy: :func:`binary_accuracy` for multi-label tasks,
    top-1 accuracy of class indices ``targets`` otherwise."""
    if multi_label:
        return binary_accuracy(logits, targets)
    correct, total = _correct(torch.as_tensor(logits), torch.as_tensor(targets), False)
    return correct / max(total, 1)


@dataclass
class TrainedProbe:
    """A trained head that takes raw encoder features (any standardisation folded in).

    Args:
        head: `nn.Sequential` in the layout of ``MSCLForAudioClassification.classifier``.
        task: the task it was trained for.
        label_names: class / tag names, in output order.
        history: per epoch, ``{"epoch", "train_loss", "crops"}`` and, with validation,
            ``"val_loss"`` and ``"val_accuracy"`` (window level, see :func:`window_accuracy`).
        best_epoch: epoch whose weights were kept (1-based).
    """

    head: nn.Sequential
    task: ProbeTask
    label_names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0

    @torch.no_grad()
    def window_logits(self, embeds: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Logits `(windows, classes)` of raw window features `(windows, dim)`."""
        self.head.eval()
        outs = [
            self.head(torch.from_numpy(np.array(embeds[i : i + batch_size], dtype=np.float32)))
            for i in range(0, embeds.shape[0], batch_size)
        ]
        if not outs:
            return np.zeros((0, len(self.label_names)), np.float32)
        return torch.cat(outs).numpy()


def _feature_stats(embeds: np.ndarray, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature, in float64, reading ``chunk`` rows at a time.

    Sums are taken around the first chunk's mean, which avoids the cancellation of the
    plain sum-of-squares formula when the spread is small next to the mean.
    """
    n = embeds.shape[0]
    pivot = np.asarray(embeds[:chunk], dtype=np.float64).mean(axis=0)
    total = np.zeros_like(pivot)
    squares = np.zeros_like(pivot)
    for i in range(0, n, chunk):
        centred = np.asarray(embeds[i : i + chunk], dtype=np.float64) - pivot
        total += centred.sum(axis=0)
        squares += np.square(centred).sum(axis=0)
    offset = total / n
    return pivot + offset, np.sqrt(np.maximum(squares / n - offset**2, 0.0))


@torch.no_grad()
def _validation_scores(
    head: nn.Sequential,
    validation: WindowEmbeddings,
    targets: torch.Tensor,
    transform: Callable[[np.ndarray, np.ndarray], torch.Tensor],
    task: ProbeTask,
    chunk: int = 8192,
) -> tuple[float, float]:
    """Mean loss and :func:`window_accuracy` over every validation window, in chunks."""
    head.eval()
    total, correct, decisions, n = 0.0, 0, 0, validation.embeds.shape[0]
    for i in range(0, n, chunk):
        rows = np.arange(i, min(i + chunk, n))
        logits = head(transform(validation.embeds, rows))
        total += _loss(logits, targets[rows], task.multi_label).item() * rows.shape[0]
        hits, count = _correct(logits, targets[rows], task.multi_label)
        correct, decisions = correct + hits, decisions + count
    return total / max(n, 1), correct / max(decisions, 1)


def _as_targets(labels: np.ndarray, multi_label: bool) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.float32 if multi_label else torch.long)


def _crop_source(task: ProbeTask, train: WindowEmbeddings | CropSource) -> CropSource:
    """The epochs' crops of ``train``, checked against ``task.train_sampling``."""
    if isinstance(train, WindowEmbeddings):
        if task.train_sampling != "windows":
            raise ValueError(
                "precomputed windows give train_sampling='windows'; the task asks for "
                f"{task.train_sampling!r}: pass a FreshCrops or CropPool (run_probe builds them)"
            )
        return WindowCrops(train, task.crops_per_clip)
    if task.train_sampling == "windows":
        raise ValueError("train_sampling='windows' trains on precomputed WindowEmbeddings")
    return train


def train_probe(
    task: ProbeTask,
    train: WindowEmbeddings | CropSource,
    train_labels: np.ndarray,
    label_names: list[str],
    validation: WindowEmbeddings | None = None,
    validation_labels: np.ndarray | None = None,
    seed: int = 0,
) -> TrainedProbe:
    """Train ``task``'s head on frozen features.

    ``train`` gives every epoch its crops: a :class:`~modeling_mscl.probing.crops.FreshCrops`
    or :class:`~modeling_mscl.probing.crops.CropPool` (``task.train_sampling="chunks"``:
    one random-offset crop of every chunk of every clip) or precomputed
    :class:`WindowEmbeddings` (``"windows"``: ``task.crops_per_clip`` windows per clip, all
    of them when None). Crops are shuffled, minibatches of ``task.batch_size``, Adam at
    ``task.learning_rate``. With ``validation``, the window-level ``task.monitor``
    (accuracy or loss) is checked after each epoch: training stops after ``task.patience``
    epochs without a strict improvement and the best epoch's weights are restored. Without
    it, ``task.max_epochs`` are run. With ``task.standardize`` the features are z-scored
    with the statistics of the first epoch's crops (all windows for ``"windows"``), folded
    into the head afterwards. The global torch RNG is left untouched (the pre-training loop
    calls this mid-run).
    """
    source = _crop_source(task, train)
    num_labels = len(label_names)
    rng = np.random.default_rng(seed)
    draw = source.epoch(rng)  # the first epoch's crops, drawn before the statistics need them
    dim = draw.features.shape[1]
    if task.standardize:
        mean, std = _feature_stats(draw.features)
        # A constant feature carries nothing; dividing by 1 keeps it harmless at test.
        std = np.where(std > 1e-8 * max(float(std.max()), 1e-30), std, 1.0)
        shift, scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)

        def transform(embeds: np.ndarray, rows: np.ndarray) -> torch.Tensor:
            # Per batch, so that memory-mapped features of a large set are never copied whole.
            return torch.from_numpy((np.asarray(embeds[rows], dtype=np.float32) - shift) * scale)

    else:

        def transform(embeds: np.ndarray, rows: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(embeds[rows], dtype=np.float32))

    y_clips = _as_targets(train_labels, task.multi_label)
    if validation is not None:
        y_val = _as_targets(validation_labels[validation.clip_index], task.multi_label)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = _build_head(task, dim, num_labels)
        optimizer = torch.optim.Adam(head.parameters(), lr=task.learning_rate)
        history: list[dict[str, float]] = []
        best_score, best_epoch, best_state, stale = -math.inf, 0, None, 0
        for epoch in range(1, task.max_epochs + 1):
            if epoch > 1:
                # Outside _one_thread: fresh crops run the encoder, which wants every core.
                draw = source.epoch(rng)
            with _one_thread():
                head.train()
                total, seen = 0.0, 0
                for i in range(0, draw.rows.shape[0], task.batch_size):
                    batch = np.sort(draw.rows[i : i + task.batch_size])  # sorted: mmap locality
                    targets = y_clips[draw.clips[batch]]
                    loss = _loss(head(transform(draw.features, batch)), targets, task.multi_label)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * batch.shape[0]
                    seen += batch.shape[0]
                record = {"epoch": epoch, "train_loss": total / max(seen, 1), "crops": seen}
                if validation is not None:
                    val_loss, val_accuracy = _validation_scores(
                        head, validation, y_val, transform, task
                    )
                    record.update(val_loss=val_loss, val_accuracy=val_accuracy)
                    # Strictly better only, as the reference: a tie is a stale epoch.
                    score = val_accuracy if task.monitor == "accuracy" else -val_loss
                    if score > best_score:
                        best_score, best_epoch, stale = score, epoch, 0
                        best_state = copy.deepcopy(head.state_dict())
                    else:
                        stale += 1
            history.append(record)
            if validation is not None and stale >= task.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    head.eval()
    if task.standardize:
        _fold_standardization(head, mean, std)
    return TrainedProbe(head, task, list(label_names), history, best_epoch)


def aggregate_clip_scores(
    window_logits: np.ndarray, clip_index: np.ndarray, num_clips: int, multi_label: bool
) -> np.ndarray:
    """Clip scores `(clips, classes)` from window logits `(windows, classes)`, in float64.

    The aggregation of the exported classifier
    (:func:`~modeling_mscl.long_audio_mscl.aggregate_window_logits`): the mean of the
    windows' sigmoids for multi-label tasks, the sum of their logits otherwise.
    """
    logits = torch.from_numpy(np.array(window_logits, dtype=np.float64))
    index = torch.from_numpy(np.array(clip_index, dtype=np.int64))
    return aggregate_window_logits(logits, index, num_clips, multi_label).numpy()


def evaluate_probe(
    probe: TrainedProbe, embeddings: WindowEmbeddings, labels: np.ndarray
) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    """Clip-level metrics of ``probe`` on (at most) ``task.test_windows`` windows per clip.

    Returns ``(metrics, per_class)`` as :func:`.metrics.classification_metrics`.
    """
    task = probe.task
    windows = embeddings.limit_windows(task.test_windows)
    logits = probe.window_logits(windows.embeds)
    scores = aggregate_clip_scores(logits, windows.clip_index, windows.num_clips, task.multi_label)
    return classification_metrics(scores, labels, task.multi_label, probe.label_names)
