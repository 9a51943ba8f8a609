"""Probe tasks: which labels, which head, how it is trained and tested (METHOD.md section 7)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PRESETS", "ProbeTask", "clip_labels", "get_task"]


@dataclass(frozen=True)
class ProbeTask:
    """One downstream probe: which labels, which head, how it is trained and tested.

    Args:
        name: preset / result name.
        label_column: dataset column holding a ``ClassLabel`` (single-label) or a list of
            ``ClassLabel`` indices (multi-label).
        multi_label: sigmoid + BCE, scored by macro ROC-AUC / PR-AUC; otherwise softmax +
            cross-entropy, scored by accuracy.
        head: ``"linear"`` or ``"mlp"`` (Linear-ReLU-Linear), as in
            :class:`~modeling_mscl.MSCLForAudioClassification`.
        hidden_size: hidden width of the MLP head.
        learning_rate: Adam learning rate.
        batch_size: windows per optimisation step.
        max_epochs: epoch limit.
        patience: epochs without a better validation loss before stopping.
        test_windows: windows per clip aggregated at validation and test time, evenly
            spaced over the clip (None: all of its non-overlapping windows).
        crops_per_clip: random windows drawn per clip per epoch (None: every window once).
        train_hop: frames between the starts of training windows (98: non-overlapping).
        train_windows: training windows per clip, evenly spaced (None: all); caps the
            extraction cost of long clips.
        dropout: dropout rate inside the head during training.
        standardize: z-score features with training statistics (folded into the head).
        audio_column: dataset column with the audio path.
    """

    name: str
    label_column: str
    multi_label: bool
    head: str = "linear"
    hidden_size: int = 512
    learning_rate: float = 5e-4
    batch_size: int = 64
    max_epochs: int = 50
    patience: int = 5
    test_windows: int | None = None
    crops_per_clip: int | None = 1
    train_hop: int = 98
    train_windows: int | None = None
    dropout: float = 0.0
    standardize: bool = True
    audio_column: str = "audio"

    def __post_init__(self) -> None:
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        for name in ("hidden_size", "batch_size", "max_epochs", "patience", "train_hop"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("test_windows", "crops_per_clip", "train_windows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Headline metrics of the task, in table order."""
        return ("roc_auc", "pr_auc") if self.multi_label else ("accuracy",)

    @property
    def problem_type(self) -> str:
        """``problem_type`` of the exported classification model."""
        return "multi_label_classification" if self.multi_label else "single_label_classification"


# METHOD.md section 7; window counts at test are the clips' whole non-overlapping windows
# (29.1 s MTAT clips -> 29, 4 s NSynth notes -> 4, 30 s FMA clips -> 30).
PRESETS: dict[str, ProbeTask] = {
    "mtat": ProbeTask("mtat", "tags", True, "linear", learning_rate=5e-4, test_windows=29),
    "nsynth": ProbeTask("nsynth", "label", False, "mlp", learning_rate=3e-4, test_windows=4),
    "fma": ProbeTask("fma", "label", False, "linear", learning_rate=5e-4, test_windows=30),
    # The offline corpus: the same heads and rates. Its sets are small (hundreds of clips),
    # so one crop per clip per epoch would give a handful of steps per epoch; songs
    # (30 s) contribute 8 crops per epoch, notes (4 s) all their windows.
    "notes_family": ProbeTask(
        "notes_family", "label", False, "mlp", learning_rate=3e-4, test_windows=4,
        crops_per_clip=None,
    ),
    "corpus_genre": ProbeTask(
        "corpus_genre", "genre", False, "linear", learning_rate=5e-4, crops_per_clip=8
    ),
    "corpus_instruments": ProbeTask(
        "corpus_instruments", "instruments", True, "linear", learning_rate=5e-4, crops_per_clip=8
    ),
}  # fmt: skip


def get_task(name: str, **overrides: Any) -> ProbeTask:
    """A preset of :data:`PRESETS` by name, with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise KeyError(f"unknown probe task {name!r}; presets: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def clip_labels(dataset: Any, task: ProbeTask) -> tuple[np.ndarray, list[str]]:
    """Per-clip targets of ``dataset`` for ``task`` and the label names.

    Single-label: `(clips,)` int64 class indices; multi-label: `(clips, classes)` float32
    multi-hot from the lists of active indices.
    """
    from ..corpora import label_names, multi_hot

    names = label_names(dataset, task.label_column)
    values = dataset[task.label_column]
    if task.multi_label:
        return multi_hot(values, len(names)), names
    if values and isinstance(values[0], (list, tuple)):
        raise ValueError(
            f"column {task.label_column!r} holds lists of labels: use a multi-label task"
        )
    return np.asarray(values, dtype=np.int64), names
