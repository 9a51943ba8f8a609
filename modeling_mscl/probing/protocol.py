"""The whole protocol of a task, the export of a trained head, and result tables."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ..audio_io import audio_column
from ..feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from ..modeling_mscl import MSCLForAudioClassification
from .crops import CropSource, FreshCrops, cached_crop_pool, cached_training_chunks
from .embeddings import (
    WindowEmbeddings,
    _encoder_of,
    cached_window_embeddings,
    encoder_fingerprint,
)
from .heads import TrainedProbe, evaluate_probe, train_probe
from .tasks import ProbeTask, clip_labels

__all__ = [
    "ProbeResult",
    "check_probe_splits",
    "export_probe",
    "markdown_row",
    "mean_over_seeds",
    "results_table",
    "run_probe",
]

logger = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """Outcome of :func:`run_probe`, and the one form of probe results on disk.

    :meth:`to_dict` is the JSON form (``probe_results.json`` of :func:`export_probe`, the
    values of ``scripts/probe.py --output``); :meth:`from_dict` reads it back and checks
    it. ``probe`` is the trained head, None for a result read back from JSON: the weights
    live in the exported model folder. The head's training record (``label_names``,
    ``history``, ``best_epoch``) is copied from ``probe`` when one is given. Metrics are
    measured on the ``test`` split (:attr:`split`). ``dataset`` names the data it was
    measured on (what ``mscl probe`` was given) and ``encoder_fingerprint`` is the
    :func:`~modeling_mscl.probing.encoder_fingerprint` of the encoder probed: results are
    filed under the task and the dataset, and a push refuses another encoder's results.
    """

    task: ProbeTask
    metrics: dict[str, float]
    validation_metrics: dict[str, float]
    per_class: dict[str, dict[str, float | None]]
    probe: TrainedProbe | None = field(compare=False, repr=False)
    num_clips: dict[str, int]
    seed: int = 0
    label_names: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    dataset: str | None = None
    encoder_fingerprint: str | None = None

    split: ClassVar[str] = "test"

    def __post_init__(self) -> None:
        if self.probe is not None:
            self.label_names = list(self.probe.label_names)
            self.history = list(self.probe.history)
            self.best_epoch = self.probe.best_epoch

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no weights); :meth:`from_dict` reads it back."""
        scored = {
            metric: sum(v is not None for v in values.values())
            for metric, values in self.per_class.items()
        }
        return {
            "task": self.task.name,
            "head": self.task.head,
            "split": self.split,
            "metrics": self.metrics,
            "num_scored_classes": scored,
            "task_config": dataclasses.asdict(self.task),
            "validation_metrics": self.validation_metrics,
            "per_class": self.per_class,
            "num_clips": self.num_clips,
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "history": self.history,
            "label_names": self.label_names,
            "seed": self.seed,
            "dataset": self.dataset,
            "encoder_fingerprint": self.encoder_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ProbeResult:
        """The result :meth:`to_dict` wrote (``probe`` None); ``ValueError`` naming the
        field for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"expected a JSON object as ProbeResult.to_dict() writes it, got "
                f"{type(data).__name__}"
            )
        missing = [key for key in _RESULT_KEYS if key not in data]
        unknown = sorted(set(data) - set(_RESULT_KEYS) - set(_OPTIONAL_KEYS))
        if missing or unknown:
            raise ValueError(
                f"not a probe result as ProbeResult.to_dict() writes it: missing keys "
                f"{missing}, unknown keys {unknown}"
            )
        if not isinstance(data["task_config"], Mapping):
            raise ValueError("'task_config' must be an object (the ProbeTask's fields)")
        try:
            task = ProbeTask(**data["task_config"])
        except TypeError as err:
            raise ValueError(f"'task_config' is not a ProbeTask: {err}") from err
        for key, expected in (("task", task.name), ("head", task.head), ("split", cls.split)):
            if data[key] != expected:
                raise ValueError(f"{key!r} is {data[key]!r}, but it must be {expected!r}")
        history = data["history"]
        if not (isinstance(history, list) and all(isinstance(h, Mapping) for h in history)):
            raise ValueError("'history' must be a list of objects")
        if data["epochs"] != len(history):
            raise ValueError(f"'epochs' is {data['epochs']!r} but 'history' has {len(history)}")
        for key in _OPTIONAL_KEYS:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"{key!r} must be a string or null, got {data[key]!r}")
        names = data["label_names"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError("'label_names' must be a list of strings")
        if not isinstance(data["per_class"], Mapping):
            raise ValueError("'per_class' must be an object of {label: value} objects")
        per_class = {
            metric: _numbers(values, f"per_class.{metric}", allow_null=True)
            for metric, values in data["per_class"].items()
        }
        return cls(
            task=task,
            metrics=_numbers(data["metrics"], "metrics"),
            validation_metrics=_numbers(data["validation_metrics"], "validation_metrics"),
            per_class=per_class,
            probe=None,
            num_clips=_numbers(data["num_clips"], "num_clips", integers=True),
            seed=_integer(data["seed"], "seed"),
            label_names=list(names),
            history=[dict(h) for h in history],
            best_epoch=_integer(data["best_epoch"], "best_epoch"),
            dataset=data.get("dataset"),
            encoder_fingerprint=data.get("encoder_fingerprint"),
        )


# Every key of ProbeResult.to_dict(); ``num_scored_classes`` and ``epochs`` are derived.
_RESULT_KEYS = (
    "task", "head", "split", "metrics", "num_scored_classes", "task_config",
    "validation_metrics", "per_class", "num_clips", "best_epoch", "epochs", "history",
    "label_names", "seed",
)  # fmt: skip
# Keys that results written before they existed lack.
_OPTIONAL_KEYS = ("dataset", "encoder_fingerprint")


def _is_number(value: Any, integers: bool = False) -> bool:
    # JSON booleans load as bool, a subclass of int: they are not numbers here.
    kinds = int if integers else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _numbers(
    value: Any, name: str, allow_null: bool = False, integers: bool = False
) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(
        _is_number(v, integers) or (allow_null and v is None) for v in value.values()
    ):
        kind = "integer" if integers else "number"
        raise ValueError(f"{name!r} must be an object of {kind}{' or null' * allow_null} values")
    return dict(value)


def _integer(value: Any, name: str) -> int:
    if not _is_number(value, integers=True):
        raise ValueError(f"{name!r} must be an integer, got {value!r}")
    return value


def _subset(split: Any, max_clips: int | None, seed: int) -> Any:
    if max_clips is None or len(split) <= max_clips:
        return split
    rows = np.sort(np.random.default_rng(seed).permutation(len(split))[:max_clips])
    return split.select(rows.tolist())


def _hold_out(split: Any, seed: int, labels: np.ndarray | None = None) -> tuple[Any, Any]:
    """(train, validation): a seeded 10 % of ``split``'s clips (at least one) held out.

    With single-label ``labels``, the held-out clips include one of every class that has
    two clips or more, so that validation accuracy can tell a head from a constant.
    """
    order = np.random.default_rng(seed).permutation(len(split))
    n_val = max(1, len(split) // 10)
    if labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        wanted = set(classes[counts >= 2].tolist())
        first = []
        for i in order:
            if labels[i] in wanted:
                wanted.remove(labels[i])
                first.append(i)
        order = np.array(first + [i for i in order if i not in set(first)])
        n_val = max(n_val, len(first))
    return split.select(np.sort(order[n_val:]).tolist()), split.select(
        np.sort(order[:n_val]).tolist()
    )


def run_probe(
    model: nn.Module,
    task: ProbeTask,
    dataset: Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: MSCLFeatureExtractor | None = None,
    batch_size: int = 64,
    max_clips: int | None = None,
    seed: int = 0,
    progress: bool = False,
    dataset_name: str | None = None,
) -> ProbeResult:
    """The full protocol of ``task`` on a ``DatasetDict`` with train/validation/test splits.

    The ``task.audio_column`` of each split holds paths or is a datasets ``Audio`` column
    (decoded or ``decode=False``; a Hub dataset's embedded bytes are read as they are).

    Validation and test clips are embedded on their window grid (at most
    ``task.test_windows`` windows a clip, cached). The training crops follow
    ``task.train_sampling``: ``"chunks"`` computes the log-mel frames of every training
    clip's 4-s chunks once (cached, encoder-independent) and embeds one random-offset crop
    per chunk every epoch (or, with ``task.crop_pool``, a cached pool of crops); ``"windows"``
    embeds windows on a grid once. The head is trained with early stopping on the
    validation windows (the validation split, else a seeded 10 % of the training clips)
    and the test clips are scored. ``max_clips`` caps each split (seeded subset) for quick
    runs; ``batch_size`` is the encoder's batch. ``dataset_name`` is recorded in the result
    (:attr:`ProbeResult.dataset`), with the encoder's fingerprint.
    """
    encoder = _encoder_of(model)
    fe = load_feature_extractor(feature_extractor, encoder.config.num_mel_bins)
    fingerprint = encoder_fingerprint(encoder)
    model_key = fingerprint if cache_dir is not None else None
    splits = {name: _subset(dataset[name], max_clips, seed) for name in dataset}
    if "train" not in splits or "test" not in splits:
        raise KeyError(f"need 'train' and 'test' splits, got {sorted(splits)}")
    if "validation" not in splits or not len(splits["validation"]):
        labels = None if task.multi_label else clip_labels(splits["train"], task)[0]
        splits["train"], splits["validation"] = _hold_out(splits["train"], seed, labels)

    def embed(name: str, hop: int | None, max_windows: int | None) -> WindowEmbeddings:
        return cached_window_embeddings(
            encoder, audio_column(splits[name], task.audio_column), cache_dir, name, feature_extractor=fe,
            hop_frames=hop, max_windows=max_windows, batch_size=batch_size, progress=progress,
            model_key=model_key,
        )  # fmt: skip

    train_labels, names = clip_labels(splits["train"], task)
    val_labels, _ = clip_labels(splits["validation"], task)
    test_labels, _ = clip_labels(splits["test"], task)
    check_probe_splits(task, names, train_labels, val_labels, test_labels)
    train_audio = audio_column(splits["train"], task.audio_column)
    train: WindowEmbeddings | CropSource
    if task.train_sampling == "windows":
        train = embed("train", task.train_hop, task.train_windows)
    elif task.crop_pool is None:
        chunks = cached_training_chunks(
            train_audio, cache_dir, "train", fe, task.chunk_frames, progress
        )
        train = FreshCrops(encoder, chunks, batch_size)
    else:
        # The pool's offsets come from a fixed seed, not ``seed``: one cached pool then
        # serves runs with other head seeds (``seed`` still picks among its crops).
        train = cached_crop_pool(
            encoder, train_audio, cache_dir, task.crop_pool, "train", fe, task.chunk_frames,
            0, batch_size, progress, model_key,
        )  # fmt: skip
    val = embed("validation", None, task.test_windows)
    test = embed("test", None, task.test_windows)
    probe = train_probe(task, train, train_labels, names, val, val_labels, seed)
    metrics, per_class = evaluate_probe(probe, test, test_labels)
    val_metrics, _ = evaluate_probe(probe, val, val_labels)
    sizes = {"train": train.num_clips, "validation": val.num_clips, "test": test.num_clips}
    return ProbeResult(
        task, metrics, val_metrics, per_class, probe, sizes, seed,
        dataset=dataset_name, encoder_fingerprint=fingerprint,
    )  # fmt: skip


def check_probe_splits(
    task: ProbeTask,
    names: Sequence[str],
    train: np.ndarray,
    validation: np.ndarray,
    test: np.ndarray,
) -> None:
    """Refuse splits on which a probe's numbers would mean nothing, with the reason.

    Single-label: the training and validation splits need two classes or more (one class
    trains a constant head, and early stopping on it measures nothing). Multi-label: the
    headline ROC-AUC / PR-AUC averages only the tags whose test clips hold both positives
    and negatives: at least half of the tags that have training positives must qualify,
    and a warning names the others (and any tag without a positive training clip, which
    the head cannot learn).
    """
    where = f"probe task {task.name!r}"
    if not task.multi_label:
        for split, labels in (("training", train), ("validation", validation)):
            present = sorted({int(v) for v in labels})
            if len(present) < 2:
                shown = [names[i] for i in present] or "none"
                raise ValueError(
                    f"{where}: the {split} split holds {len(labels)} clips of {len(present)} "
                    f"class(es) ({shown}); a probe needs at least 2 classes there"
                )
        return
    learnable = train.sum(axis=0) > 0
    never = [names[i] for i in np.flatnonzero(~learnable)]
    if never:
        logger.warning("%s: tags without a positive training clip: %s", where, never)
    positives = test.sum(axis=0)
    scored = (positives > 0) & (positives < len(test))
    # Of the tags the training split can teach, at least half must be scored.
    if (scored & learnable).sum() * 2 < learnable.sum():
        raise ValueError(
            f"{where}: only {int((scored & learnable).sum())} of the {int(learnable.sum())} "
            "tags with training positives have both positive and negative test clips; a "
            "macro ROC-AUC over them would not describe the task"
        )
    if not scored.all():
        logger.warning(
            "%s: ROC-AUC / PR-AUC average %d of %d tags; left out (all-positive or "
            "all-negative on the %d test clips): %s",
            where, int(scored.sum()), len(names), len(test),
            [names[i] for i in np.flatnonzero(~scored)],
        )  # fmt: skip


def export_probe(
    model: nn.Module,
    probe: TrainedProbe | ProbeResult,
    output_dir: str | os.PathLike,
    feature_extractor: MSCLFeatureExtractor | None = None,
) -> MSCLForAudioClassification:
    """Save the frozen encoder + trained head as an ``MSCLForAudioClassification`` folder.

    The folder holds the config (``id2label``, ``label2id``, ``problem_type``, the head
    layout, ``freeze_encoder=True``), the weights and the feature extractor, so
    ``pipeline("audio-classification", model=output_dir, trust_remote_code=True)`` runs
    on it (the folder declares its pipeline class, which decodes paths, bytes and dicts at
    any rate without FFmpeg). Given a :class:`ProbeResult`, also writes
    ``probe_results.json`` (its :meth:`~ProbeResult.to_dict`) and ``probe_args.json`` (the
    task settings), which the model card reads. Returns the model.
    """
    result = probe if isinstance(probe, ProbeResult) else None
    probe = probe.probe if isinstance(probe, ProbeResult) else probe
    if probe is None:
        raise ValueError("this ProbeResult has no trained head (read back from JSON?)")
    encoder = _encoder_of(model)
    task = probe.task
    config = copy.deepcopy(encoder.config)
    config.num_labels = len(probe.label_names)
    config.id2label = dict(enumerate(probe.label_names))
    config.label2id = {name: i for i, name in enumerate(probe.label_names)}
    config.problem_type = task.problem_type
    config.classifier_head = task.head
    config.classifier_hidden_size = task.hidden_size
    config.dropout_rate = task.dropout
    config.freeze_encoder = True
    # Longer inputs (a pipeline call on a whole song) are classified window by window and
    # aggregated as the probe was evaluated.
    fe = load_feature_extractor(feature_extractor, config.num_mel_bins)
    config.classifier_window_frames = fe.window_frames
    classifier = MSCLForAudioClassification(config)
    classifier.mscl.load_state_dict(encoder.state_dict())
    classifier.classifier.load_state_dict(probe.head.state_dict())
    classifier.eval()
    classifier.save_pretrained(output_dir)
    fe.save_pretrained(output_dir)
    if result is not None:
        # The results name the encoder under the head; another encoder's are refused.
        fingerprint = encoder_fingerprint(encoder)
        if result.encoder_fingerprint not in (None, fingerprint):
            raise ValueError(
                f"these probe results were measured on encoder {result.encoder_fingerprint}, "
                f"not on the encoder being exported ({fingerprint})"
            )
        result = dataclasses.replace(result, encoder_fingerprint=fingerprint)
        folder = Path(output_dir)
        (folder / "probe_results.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        args = {**dataclasses.asdict(task), "probe_seed": result.seed}
        if result.dataset is not None:
            args["dataset"] = result.dataset  # the card's "data" line
        (folder / "probe_args.json").write_text(json.dumps(args, indent=1) + "\n")
    return classifier


def markdown_row(encoder_name: str, result: ProbeResult | Mapping[str, Any]) -> str:
    """One markdown table row: ``| encoder | task | metric=value ... |`` (values in %)."""
    data = result.to_dict() if isinstance(result, ProbeResult) else result
    cells = [f"{k} {100 * v:.1f}" for k, v in data["metrics"].items()]
    return f"| {encoder_name} | {data['task']} | {', '.join(cells)} |"


def results_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown table of ``results[encoder][task] = ProbeResult.to_dict()``, values in %.

    One row per encoder, one column per (task, metric). A result that also holds
    ``metrics_std`` (see :func:`mean_over_seeds`) is written ``mean +- std``.
    """
    columns: list[tuple[str, str]] = []
    for per_task in results.values():
        for task_name, data in per_task.items():
            for metric in data["metrics"]:
                if (task_name, metric) not in columns:
                    columns.append((task_name, metric))
    header = "| encoder | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for encoder_name, per_task in results.items():
        cells = []
        for task_name, metric in columns:
            data = per_task.get(task_name, {})
            value = data.get("metrics", {}).get(metric)
            std = data.get("metrics_std", {}).get(metric)
            cell = "" if value is None else f"{100 * value:.1f}"
            if value is not None and std is not None:
                cell += f" ± {100 * std:.1f}"
            cells.append(cell)
        lines.append(f"| {encoder_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_over_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result from ``ProbeResult.to_dict()`` of several head seeds: the first seed's
    fields, ``metrics`` the mean, ``metrics_std`` the standard deviation (ddof 0) and
    ``num_seeds``; every seed's metrics are kept under ``per_seed``."""
    if not results:
        raise ValueError("mean_over_seeds needs at least one result")
    merged = dict(results[0])
    names = [m for m in results[0]["metrics"] if all(m in r["metrics"] for r in results)]
    values = {m: np.array([r["metrics"][m] for r in results], dtype=float) for m in names}
    merged["metrics"] = {m: float(v.mean()) for m, v in values.items()}
    merged["metrics_std"] = {m: float(v.std()) for m, v in values.items()}
    merged["num_seeds"] = len(results)
    merged["per_seed"] = [r["metrics"] for r in results]
    return merged
