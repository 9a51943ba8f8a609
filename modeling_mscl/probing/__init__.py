"""Frozen-encoder probes: window embeddings, heads, the protocols of the paper, export.

The downstream protocol of Garoufis et al.: the encoder is frozen
and a small head is trained on its raw 1280-d pooled feature of ~1 s (98-frame) crops.
The :class:`ProbeTask` defaults (and the ``mtat``, ``nsynth``, ``fma`` presets) follow the
authors' reference:

* Training crops (:mod:`.crops`): every epoch, one crop at a uniformly random offset
  inside every 4-s (392-frame) chunk of every training clip (7 per 29.1 s MTAT clip).
  The chunks' log-mel frames are computed once and cached (they do not depend on the
  encoder); each epoch the frozen encoder embeds that epoch's crops in eval mode
  (:class:`FreshCrops`). ``crop_pool=K`` embeds K crops per chunk once instead and
  draws among them (:class:`CropPool`): a fixed, cacheable cost for repeated runs.
* Minibatches of 128 raw features (no z-scoring), Adam; early stopping on the
  validation windows' accuracy (binary accuracy, :func:`binary_accuracy`, for the
  multi-label tags), patience 5, at most 50 epochs, the best epoch's weights restored.
  Validation uses the clips' window grid (embedded once) rather than the reference's
  fresh random crops: the same quantity with less noise and no per-epoch encoding.
* Test: per-clip aggregation of window outputs on the grid (cached), the mean of
  sigmoids for tagging and the sum of logits for single-label tasks; metrics by
  scikit-learn.
* The earlier protocol of this package stays available per field: ``standardize=True``
  (z-scored features, folded into the head at the end so the exported
  :class:`~modeling_mscl.MSCLForAudioClassification` still takes raw features),
  ``monitor="loss"``, ``batch_size=64``, ``train_sampling="windows"`` (windows
  precomputed on a grid, ``crops_per_clip`` per clip per epoch). The offline-corpus
  presets use it (see :data:`PRESETS`).
* :class:`ProbeHook`: cheap probes on small cached subsets during pre-training, logged as
  JSON lines (``{"step": ..., "<task>/<metric>": ...}``) for the convergence plot.

Modules: :mod:`.tasks` (task presets, labels), :mod:`.embeddings` (window embeddings and
their cache), :mod:`.crops` (training chunks and crops), :mod:`.heads` (training,
aggregation), :mod:`.metrics` (accuracy, ROC-AUC, PR-AUC), :mod:`.protocol` (the whole
protocol, export, tables), :mod:`.convergence` (the pre-training hook and its log),
:mod:`.retrieval` (zero-shot stem retrieval; its draws in :mod:`.retrieval_draws`, its
scores in :mod:`.retrieval_scores`).
"""

from .baselines import LogMelStatistics
from .convergence import ProbeHook, append_probe_log, make_probe_hook, read_probe_log
from .crops import (
    CropPool,
    CropSource,
    EpochCrops,
    FreshCrops,
    TrainingChunks,
    WindowCrops,
    build_crop_pool,
    cached_crop_pool,
    cached_training_chunks,
    chunk_spans,
    extract_training_chunks,
)
from .embeddings import (
    WindowEmbeddings,
    cached_window_embeddings,
    clip_log_mel,
    encoder_fingerprint,
    extract_window_embeddings,
    recalibrate_batch_norm,
    spread_indices,
    window_features,
)
from .heads import (
    TrainedProbe,
    aggregate_clip_scores,
    binary_accuracy,
    evaluate_probe,
    train_probe,
    window_accuracy,
)
from .protocol import (
    ProbeResult,
    check_probe_splits,
    export_probe,
    markdown_row,
    mean_over_seeds,
    results_table,
    run_probe,
)
from .retrieval import load_pretraining_model, random_init_model, stem_retrieval
from .retrieval_scores import RetrievalResult, SourceRetrieval, retrieval_table
from .tasks import PRESETS, ProbeTask, clip_labels, get_task, load_probe_dataset

__all__ = [
    "LogMelStatistics",
    "RetrievalResult",
    "SourceRetrieval",
    "load_pretraining_model",
    "mean_over_seeds",
    "random_init_model",
    "retrieval_table",
    "stem_retrieval",
    "CropPool",
    "CropSource",
    "EpochCrops",
    "FreshCrops",
    "PRESETS",
    "ProbeHook",
    "ProbeResult",
    "ProbeTask",
    "TrainedProbe",
    "TrainingChunks",
    "WindowCrops",
    "WindowEmbeddings",
    "aggregate_clip_scores",
    "append_probe_log",
    "binary_accuracy",
    "build_crop_pool",
    "cached_crop_pool",
    "cached_training_chunks",
    "cached_window_embeddings",
    "chunk_spans",
    "clip_labels",
    "clip_log_mel",
    "encoder_fingerprint",
    "evaluate_probe",
    "check_probe_splits",
    "export_probe",
    "extract_training_chunks",
    "extract_window_embeddings",
    "get_task",
    "load_probe_dataset",
    "make_probe_hook",
    "markdown_row",
    "read_probe_log",
    "recalibrate_batch_norm",
    "results_table",
    "run_probe",
    "spread_indices",
    "train_probe",
    "window_accuracy",
    "window_features",
]
