"""Convergence: cheap probes during pre-training and their JSON-lines log."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..audio_io import audio_column, load_audio
from ..feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from ..long_audio_mscl import eval_mode
from .embeddings import (
    WindowEmbeddings,
    _encode,
    _encoder_of,
    recalibrate_batch_norm,
    window_features,
)
from .heads import evaluate_probe, train_probe
from .protocol import _subset
from .tasks import ProbeTask, clip_labels, get_task

logger = logging.getLogger("modeling_mscl.probing")

__all__ = ["ProbeHook", "append_probe_log", "make_probe_hook", "read_probe_log"]


def append_probe_log(path: str | os.PathLike, step: int, metrics: Mapping[str, float]) -> None:
    """Append ``{"step": step, **metrics}`` as one JSON line to ``path`` (``probes.jsonl``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def read_probe_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Records of a ``probes.jsonl`` file (or of ``<folder>/probes.jsonl``), sorted by step.

    A truncated last line (a run killed mid-write) is skipped; for a step logged twice
    (a resumed run) the last record wins.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "probes.jsonl"
    records: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d: skipping a malformed line", path, number)
                continue
            records[int(record["step"])] = record
    return [records[step] for step in sorted(records)]


class ProbeHook:
    """Cheap probes for the pre-training loop: ``hook(model, step) -> {"<task>/<metric>": v}``.

    For each task, up to ``max_clips`` training and evaluation clips (the validation
    split, else test) are chosen once (seeded) and their log-mel windows (at most
    ``max_windows`` per clip) are kept in memory; each call embeds them with the current
    encoder (eval mode, no gradients; the model's mode is restored), trains the head for
    ``epochs`` epochs over every window (``train_sampling="windows"``; the task's other
    settings, z-scoring included, are kept), without early stopping, and scores the
    evaluation clips. The global RNG state is left as it was, so a run's batches do
    not depend on whether probes run. Call it on the main process only (the others
    wait at their next collective); call :meth:`prepare` at the start of the run to
    decode the audio then rather than at the first probe step.

    Args:
        tasks: task presets or their names.
        datasets: one ``DatasetDict`` for every task, or ``{task name: DatasetDict}``.
        max_clips: clips per split (seeded subset).
        max_windows: windows per clip, evenly spaced (None: all).
        epochs: epochs of head training per call.
        log_path: when given, every call appends its record to this ``probes.jsonl``.
        recalibrate_bn: probe a copy of the encoder whose batch-norm statistics are
            recomputed on the probes' training windows (:func:`recalibrate_batch_norm`),
            so that early in a run the curve follows what the encoder learned rather
            than how far its running statistics have caught up.
    """

    def __init__(
        self,
        tasks: Sequence[ProbeTask | str],
        datasets: Mapping[str, Any],
        max_clips: int = 64,
        max_windows: int | None = 8,
        epochs: int = 10,
        feature_extractor: MSCLFeatureExtractor | None = None,
        batch_size: int = 64,
        seed: int = 0,
        log_path: str | os.PathLike | None = None,
        recalibrate_bn: bool = False,
    ) -> None:
        self.tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
        self.datasets = datasets
        self.max_clips, self.max_windows, self.epochs = max_clips, max_windows, epochs
        self.feature_extractor = feature_extractor
        self.batch_size, self.seed = batch_size, seed
        self.log_path = log_path
        self.recalibrate_bn = recalibrate_bn
        self._cache: dict[str, dict[str, Any]] | None = None

    def _dataset_for(self, task: ProbeTask) -> Any:
        # One DatasetDict (keys are split names) for every task, or one per task name.
        return self.datasets[task.name] if task.name in self.datasets else self.datasets

    def prepare(self, num_mel_bins: int = 64) -> None:
        """Decode the subsets and compute their log-mel windows (done on the first call).

        Tasks that read the same audio of the same dataset split (genre and instrument
        tags of one corpus) share its windows, so each call embeds them once.
        """
        fe = load_feature_extractor(self.feature_extractor, num_mel_bins)
        self.feature_extractor = fe
        self._windows: dict[tuple, tuple[torch.Tensor, np.ndarray]] = {}
        self._cache = {}
        for task in self.tasks:
            dataset = self._dataset_for(task)
            eval_split = "validation" if "validation" in dataset else "test"
            entry: dict[str, Any] = {}
            for role, split in (("train", "train"), ("eval", eval_split)):
                part = _subset(dataset[split], self.max_clips, self.seed)
                key = (id(dataset[split]), split, task.audio_column)
                if key not in self._windows:
                    windows = [
                        window_features(
                            load_audio(item, fe.sampling_rate), fe, max_windows=self.max_windows
                        )
                        for item in audio_column(part, task.audio_column)
                    ]
                    counts = np.asarray([w.shape[0] for w in windows])
                    self._windows[key] = (torch.cat(windows), counts)
                labels, names = clip_labels(part, task)
                entry[role] = (key, labels)
                entry["names"] = names
            self._cache[task.name] = entry

    def calibration_windows(self, num_mel_bins: int = 64) -> torch.Tensor:
        """The log-mel windows of every task's training clips (prepared if need be)."""
        if self._cache is None:
            self.prepare(num_mel_bins)
        keys = dict.fromkeys(entry["train"][0] for entry in self._cache.values())
        return torch.cat([self._windows[key][0] for key in keys])

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """Probe ``model`` (an encoder or a model holding one as ``.mscl``) at ``step``."""
        encoder = _encoder_of(model)
        if self._cache is None:
            self.prepare(encoder.config.num_mel_bins)
        results: dict[str, float] = {}
        if self.recalibrate_bn:
            windows = self.calibration_windows(encoder.config.num_mel_bins)
            encoder = recalibrate_batch_norm(encoder, windows, self.batch_size)
        with eval_mode(encoder):
            embedded = {}
            for key, (windows, counts) in self._windows.items():
                feats = _encode(encoder, windows, self.batch_size).numpy()
                index = np.repeat(np.arange(len(counts)), counts)
                embedded[key] = WindowEmbeddings(feats, index, len(counts))
        for task in self.tasks:
            entry = self._cache[task.name]
            (train_key, train_labels), (eval_key, eval_labels) = entry["train"], entry["eval"]
            # Every prepared window once per epoch: the windows were embedded above, and
            # a curve over many steps needs a cheap probe rather than the full protocol.
            quick = dataclasses.replace(
                task, train_sampling="windows", crops_per_clip=None, max_epochs=self.epochs,
                test_windows=None,
            )  # fmt: skip
            probe = train_probe(
                quick, embedded[train_key], train_labels, entry["names"], seed=self.seed
            )
            metrics, _ = evaluate_probe(probe, embedded[eval_key], eval_labels)
            for name in task.metric_names:
                results[f"{task.name}/{name}"] = float(metrics[name])
        if self.log_path is not None:
            append_probe_log(self.log_path, step, results)
        return results


def make_probe_hook(
    tasks: Sequence[ProbeTask | str], datasets: Mapping[str, Any], **kwargs: Any
) -> Callable[[nn.Module, int], dict[str, float]]:
    """A :class:`ProbeHook` for ``tasks`` (presets or names); ``datasets`` is one
    ``DatasetDict`` shared by all tasks or a mapping from task name to ``DatasetDict``."""
    return ProbeHook(tasks, datasets, **kwargs)
