"""Zero-shot stem retrieval: the task MSCL pre-training optimises, measured on held-out songs.

Protocol (per source k, per draw d; everything drawn from ``numpy.random.default_rng([seed,
k, d])`` with k the index of the source in :data:`~modeling_mscl.stems.SOURCES`, so a
result depends only on the seed, the evaluated tracks and the model):

1. Evaluated tracks: the distinct ``track_id`` of the evaluated chunks, sorted (optionally
   restricted to ``tracks``, then to ``max_tracks`` of them drawn once from the seed, the
   same songs for every source and draw).
2. A track where source k is present in no chunk is skipped for k (and counted).
3. For every other track: one chunk drawn uniformly among its chunks where k is present
   (in store order), a random 98-frame mixture crop of it (the *query*) and a random
   98-frame crop of its stem k at an independent offset (its *positive*), as in training.
4. Candidates: the positives of all kept tracks (one per track, the own one included).
   Query i's logits are ``model.similarity(h(query_i), h(candidates))`` with ``h`` the
   pre-trained model's own encoder + projection (``model.mscl(x).audio_embeds``).
5. Rank of the own positive: 1 + (candidates scoring strictly higher) + half the other
   candidates with an exactly equal score. Ties are thus counted as a uniformly random
   tie-break would on average, and recall@k is that tie-break's probability
   ``clip((k - higher) / (ties + 1), 0, 1)``: a constant (collapsed) model scores chance,
   not 1 or 0. Non-finite scores raise an error.
6. Per draw: recall@k (mean over queries), mean and median rank. Reported: the mean over
   the ``draws`` draws, with the standard deviation across draws. Chance: recall@k =
   k / candidates, mean rank = (candidates + 1) / 2.

Batch norm (``bn_regime``): ``"running"`` embeds in eval mode with the model's running
statistics, which is what any user of the saved model gets. ``"recalibrated"`` first
replaces them by the average batch statistics of training-like minibatches of the
*training* counterpart of the evaluated tracks (:func:`calibration_windows`, through
:func:`~modeling_mscl.probing.recalibrate_batch_norm` on a copy of the encoder): each
minibatch holds ``calibration_pairs`` mixture crops and as many crops of one source where
it is present (sources in turn), concatenated as training concatenates anchors and
positives. This matters for a model early in training or freshly initialised, whose
running statistics lag behind what training mode computes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._choices import BN_REGIMES  # kept light for `mscl retrieval --help`
from ..chunk_set import CROP_FRAMES, MIXTURE, ChunkStore
from ..configuration_mscl import MSCLConfig
from ..long_audio_mscl import eval_mode
from ..modeling_mscl import MSCLForPreTraining
from ..stems import SOURCES
from .retrieval_draws import (
    _evaluated_tracks,
    calibration_windows,
    open_retrieval_data,
    retrieval_plan,
)
from .retrieval_scores import RetrievalResult, _summarise, rank_own_candidates

__all__ = [
    "BN_REGIMES",
    "load_pretraining_model",
    "random_init_model",
    "stem_retrieval",
]


# ------------------------------------------------------------------------------- models


def load_pretraining_model(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> MSCLForPreTraining:
    """The full :class:`~modeling_mscl.MSCLForPreTraining` saved in ``path``.

    ``path`` is the ``pretraining/`` folder written at the end of training, or the run's
    output folder holding it. A folder without the similarity weights (the ``encoder/``
    folder, an :class:`~modeling_mscl.MSCLModel`) is refused: loading it would silently
    give a random similarity matrix.
    """
    folder = Path(path).expanduser()
    if (folder / "pretraining" / "config.json").is_file():
        folder = folder / "pretraining"
    model, info = MSCLForPreTraining.from_pretrained(str(folder), output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"{folder} does not hold a full MSCLForPreTraining (missing {missing[:4]}); "
            "stem retrieval needs the projection and the similarity: use the run's "
            "pretraining/ folder, not encoder/"
        )
    if device is not None:
        model.to(device)
    return model.eval()


def random_init_model(
    config: MSCLConfig | MSCLForPreTraining | str | os.PathLike, seed: int = 0
) -> MSCLForPreTraining:
    """A freshly initialised :class:`~modeling_mscl.MSCLForPreTraining` (the baseline row).

    ``config`` is a config, a model whose config to copy, or a folder / JSON file of one.
    The global torch RNG is left untouched.
    """
    if isinstance(config, nn.Module):
        config = config.config
    elif not isinstance(config, MSCLConfig):
        config = MSCLConfig.from_pretrained(str(config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MSCLForPreTraining(config)
    return model.eval()


# ----------------------------------------------------------------------- stem retrieval


@torch.no_grad()
def _embed_segments(
    encoder: nn.Module,
    store: ChunkStore,
    segments: Sequence[tuple[str, np.ndarray, np.ndarray]],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """``audio_embeds`` of the crops of each ``(column, rows, offsets)`` segment.

    Batches run across segments (eval mode: an embedding does not depend on its batch
    mates), so a small evaluation is a few encoder calls, and only one batch of crops is
    in memory at a time.
    """
    columns = sorted({column for column, _, _ in segments})
    column_of = np.concatenate(
        [np.full(len(rows), columns.index(c)) for c, rows, _ in segments] or [np.zeros(0, int)]
    )
    rows = np.concatenate([r for _, r, _ in segments] or [np.zeros(0, np.int64)])
    offsets = np.concatenate([o for _, _, o in segments] or [np.zeros(0, np.int64)])
    outs = []
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        crops = np.empty((len(rows[part]), CROP_FRAMES, store.num_bins), dtype=store.dtype)
        for index, column in enumerate(columns):
            mine = column_of[part] == index
            if mine.any():
                crops[mine] = store.crops(column, rows[part][mine], offsets[part][mine])
        outs.append(encoder(torch.from_numpy(crops).to(device, dtype)).audio_embeds)
    embeds = torch.cat(outs) if outs else torch.zeros(0, 0, device=device)
    return list(torch.split(embeds, [len(r) for _, r, _ in segments]))


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return torch.float32 if param is None or not param.is_floating_point() else param.dtype


@torch.no_grad()
def stem_retrieval(
    model: MSCLForPreTraining | str | os.PathLike,
    data: ChunkStore | Any,
    *,
    split: str | None = None,
    holdout_fraction: float | None = None,
    tracks: Iterable[str] | None = None,
    max_tracks: int | None = None,
    sources: Sequence[str] = SOURCES,
    ks: Sequence[int] = (1, 5, 10),
    draws: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    bn_regime: str = "running",
    calibration: ChunkStore | None = None,
    calibration_split: str | None = "train",
    calibration_batches: int = 16,
    calibration_pairs: int = 64,
    name: str | None = None,
) -> RetrievalResult:
    """Zero-shot stem retrieval of a pre-trained model (protocol: module docstring).

    Args:
        model: an :class:`~modeling_mscl.MSCLForPreTraining` (anything with ``.mscl`` and
            ``.similarity``), or its folder (:func:`load_pretraining_model`). It is moved to
            ``device`` and used in eval mode; its mode is restored afterwards.
        data: chunks to evaluate (see :func:`open_retrieval_data` with ``split``,
            ``holdout_fraction`` and ``calibration_split``).
        tracks: evaluate only these track ids.
        max_tracks: at most this many tracks, drawn once from ``seed``.
        sources: the sources to evaluate.
        ks: the k of recall@k.
        draws: independent draws of chunks and crops, averaged.
        seed: seeds every draw.
        device: where to embed (default: the model's device).
        batch_size: crops per encoder call.
        bn_regime: ``"running"`` (eval mode, the saved running statistics) or
            ``"recalibrated"`` (statistics recomputed on the training counterpart).
        calibration: the training-counterpart chunks for ``"recalibrated"``; by default
            the one :func:`open_retrieval_data` finds (error if none).
        calibration_batches: training-like minibatches used to recalibrate.
        calibration_pairs: mixture/stem pairs per calibration minibatch.
        name: the model's name in the result (default: its folder or class name).
    """
    if bn_regime not in BN_REGIMES:
        raise ValueError(f"bn_regime must be one of {BN_REGIMES}, got {bn_regime!r}")
    if draws < 1 or batch_size < 1:
        raise ValueError(f"draws and batch_size must be >= 1, got {draws}, {batch_size}")
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; choose among {SOURCES}")
    if isinstance(model, str | os.PathLike):
        name = name or Path(model).name
        model = load_pretraining_model(model)
    name = name or type(model).__name__
    store, found_calibration = open_retrieval_data(
        data, split=split, holdout_fraction=holdout_fraction, calibration_split=calibration_split
    )
    calibration = calibration if calibration is not None else found_calibration
    if device is not None:
        model.to(device)
    param = next(model.parameters(), None)
    device = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    dtype = _model_dtype(model)
    evaluated = _evaluated_tracks(store, tracks, max_tracks, seed)

    with eval_mode(model):
        encoder = model.mscl
        if bn_regime == "recalibrated":
            if calibration is None:
                raise ValueError(
                    "bn_regime='recalibrated' needs the training counterpart of the evaluated "
                    "tracks: pass calibration=, a DatasetDict with calibration_split, or "
                    "holdout_fraction"
                )
            from .embeddings import recalibrate_batch_norm

            windows = calibration_windows(
                calibration, calibration_batches, calibration_pairs, seed, sources
            )
            # A recalibrated copy: the caller's model keeps its own statistics.
            encoder = recalibrate_batch_norm(model, windows, batch_size=2 * calibration_pairs)
        plans = {
            source: [
                retrieval_plan(store, source, evaluated, seed=seed, draw=d) for d in range(draws)
            ]
            for source in sources
        }
        segments = [
            segment
            for source in sources
            for plan in plans[source]
            for segment in (
                (MIXTURE, plan.rows, plan.query_offsets),
                (source, plan.rows, plan.positive_offsets),
            )
        ]
        embeds = iter(_embed_segments(encoder, store, segments, batch_size, device, dtype))
        results = {}
        for source in sources:
            per_draw = []
            for plan in plans[source]:
                queries, positives = next(embeds), next(embeds)
                if len(plan) == 0:
                    continue
                logits = model.similarity(queries, positives).float()
                ranks, hits = rank_own_candidates(logits, ks)
                per_draw.append(
                    {
                        "recall": {k: float(h.mean()) for k, h in zip(ks, hits, strict=True)},
                        "mean_rank": float(ranks.mean()),
                        "median_rank": float(np.median(ranks)),
                    }
                )
            results[source] = _summarise(source, plans[source][-1], per_draw, ks)
    protocol = {
        "num_tracks": int(len(evaluated)),
        "split": split,
        "holdout_fraction": holdout_fraction,
        "max_tracks": max_tracks,
        "draws": int(draws),
        "seed": int(seed),
        "ks": list(ks),
        "bn_regime": bn_regime,
        "crop_frames": CROP_FRAMES,
        "chunk_frames": int(store.chunk_frames),
        "similarity": getattr(model.similarity, "kind", type(model.similarity).__name__),
    }
    if bn_regime == "recalibrated":
        protocol["calibration"] = {
            "batches": calibration_batches,
            "pairs": calibration_pairs,
            "chunks": len(calibration),
        }
    return RetrievalResult(model=name, sources=results, protocol=protocol)
