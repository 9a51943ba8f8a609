"""Frozen-encoder probes: window embeddings, heads, the protocols of the paper, export.

The downstream protocol of Garoufis et al. (METHOD.md section 7): the encoder is frozen
and a small head is trained on its 1280-d pooled feature of ~1 s (98-frame) windows.

* Embeddings of every window of every clip are extracted once per (encoder, audio, window
  hop) and cached on disk (:func:`cached_window_embeddings`).
* Training: each epoch draws ``crops_per_clip`` random windows per clip. With a frozen
  encoder a "random 98-frame crop" is a random choice among precomputed windows; the
  default hop is one window (98 frames), so training reuses the test windows and a
  clip is embedded once. A smaller ``train_hop`` gives more crop positions, closer to
  the reference's uniformly random offsets, at a proportional extraction cost.
* Early stopping on the validation loss (patience 5, at most 50 epochs), best weights kept.
* Test: per-clip aggregation of window outputs, the mean of sigmoids for tagging and the
  sum of logits for single-label tasks; metrics through local `evaluate` modules.
* Features are z-scored with the training windows' statistics before the head, and the
  affine map is folded into the head's first layer afterwards, so the exported
  :class:`~modeling_mscl.MSCLForAudioClassification` takes the raw encoder feature. A
  fixed Adam learning rate would otherwise measure the feature *scale* (a random-init
  encoder's features are orders of magnitude smaller than a trained one's).
* :class:`ProbeHook`: cheap probes on small cached subsets during pre-training, logged as
  JSON lines (``{"step": ..., "<task>/<metric>": ...}``) for the convergence plot.

Modules: :mod:`.tasks` (task presets, labels), :mod:`.embeddings` (window embeddings and
their cache), :mod:`.heads` (training, aggregation, metrics), :mod:`.protocol` (the
whole protocol, export, tables), :mod:`.convergence` (the pre-training hook and its log).
"""

from .convergence import ProbeHook, append_probe_log, make_probe_hook, read_probe_log
from .embeddings import (
    WindowEmbeddings,
    cached_window_embeddings,
    encoder_fingerprint,
    extract_window_embeddings,
    recalibrate_batch_norm,
    spread_indices,
    window_features,
)
from .heads import TrainedProbe, aggregate_clip_scores, evaluate_probe, train_probe
from .protocol import ProbeResult, export_probe, markdown_row, results_table, run_probe
from .tasks import PRESETS, ProbeTask, clip_labels, get_task

__all__ = [
    "PRESETS",
    "ProbeHook",
    "ProbeResult",
    "ProbeTask",
    "TrainedProbe",
    "WindowEmbeddings",
    "aggregate_clip_scores",
    "append_probe_log",
    "cached_window_embeddings",
    "clip_labels",
    "encoder_fingerprint",
    "evaluate_probe",
    "export_probe",
    "extract_window_embeddings",
    "get_task",
    "make_probe_hook",
    "markdown_row",
    "read_probe_log",
    "recalibrate_batch_norm",
    "results_table",
    "run_probe",
    "spread_indices",
    "train_probe",
    "window_features",
]
