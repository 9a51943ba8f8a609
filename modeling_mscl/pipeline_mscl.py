"""The pipelines of a saved MSCL folder: audio classification and embedding.

Hub file: imports only the standard library, numpy, torch, transformers and its sibling
Hub files, so ``pipeline(model=folder, trust_remote_code=True)`` runs without this package.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging as hf_logging

from .audio_decoding_mscl import audio_name, decode_audio
from .feature_extraction_mscl import MSCLFeatureExtractor
from .long_audio_mscl import _WINDOW_BATCH

if TYPE_CHECKING:
    from .modeling_mscl import MSCLModel

logger = hf_logging.get_logger(__name__)


# ------------------------------------------------------------------------------ pipelines
# Each saved folder declares its pipeline in `config.custom_pipelines` (written by
# `MSCLPreTrainedModel.save_pretrained`), so `pipeline(model=folder, trust_remote_code=True)`
# runs the class below (which `modeling_mscl` hands out by name), where the package is
# not installed. Both decode and resample their inputs through `decode_audio` (soundfile
# and julius), never through FFmpeg or torchaudio.

EMBEDDING_TASK = "mscl-embedding"
_PIPELINES = {
    "MSCLModel": (EMBEDDING_TASK, "MSCLEmbeddingPipeline", "AutoModel"),
    "MSCLForPreTraining": (EMBEDDING_TASK, "MSCLEmbeddingPipeline", "AutoModel"),
    "MSCLForAudioClassification": (
        "audio-classification",
        "MSCLAudioClassificationPipeline",
        "AutoModelForAudioClassification",
    ),
}


def custom_pipelines(architecture: str) -> dict[str, dict[str, Any]]:
    """The ``config.custom_pipelines`` entry of a folder holding ``architecture``: an encoder
    declares :data:`EMBEDDING_TASK`, a classifier ``"audio-classification"``."""
    task, impl, auto_class = _PIPELINES[architecture]
    return {task: {"impl": f"modeling_mscl.{impl}", "pt": [auto_class], "type": "audio"}}


def _waveform(inputs: Any, feature_extractor: MSCLFeatureExtractor) -> np.ndarray:
    """One pipeline input as a mono waveform at the extractor's rate: a bare array or tensor
    is taken to be at that rate (as transformers' pipelines do), with a warning since nothing
    says so; anything else is decoded."""
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        rate = feature_extractor.sampling_rate
        warnings.warn(
            f"a bare array has no sampling rate: it is read as {rate} Hz audio. Pass "
            f"{{'array': audio, 'sampling_rate': rate}} (or a file) so audio at another rate "
            "is not silently misread.",
            UserWarning,
            stacklevel=2,
        )
        inputs = {"array": inputs, "sampling_rate": rate}
    wave = decode_audio(inputs, feature_extractor.sampling_rate)[0]
    _warn_if_empty(wave, feature_extractor, audio_name(inputs))
    return wave


def _warn_if_empty(wave: np.ndarray, fe: MSCLFeatureExtractor, name: str) -> None:
    """Warn when a clip holds nothing to hear: the outputs of every such clip are the same
    (the log floor everywhere), yet a classifier still gives them confident labels."""
    if wave.size < fe.frame_length:
        logger.warning(
            "%s: %d samples, less than one analysis frame (%d samples at %d Hz): the model "
            "sees padding only, so its outputs say nothing about this clip",
            name, wave.size, fe.frame_length, fe.sampling_rate,
        )  # fmt: skip
    elif not np.any(wave):
        logger.warning(
            "%s: the clip is silent (all samples zero): the model sees the log floor "
            "everywhere, so its outputs say nothing about this clip",
            name,
        )


def _redeclare(model: nn.Module) -> None:
    # transformers' `pipeline()` replaces the class names of the declaration it read with
    # the classes themselves, in the model's config: a config that then no longer prints
    # or saves as JSON. Put the declaration back.
    if type(model).__name__ in _PIPELINES:
        model.config.custom_pipelines = custom_pipelines(type(model).__name__)


def _build_pipeline_classes() -> dict[str, type]:
    from transformers import AudioClassificationPipeline, Pipeline

    class MSCLAudioClassificationPipeline(AudioClassificationPipeline):
        """transformers' audio-classification pipeline, decoding its inputs with
        `decode_audio`: a path, the bytes of a file, an `{"array", "sampling_rate"}` dict at
        any rate, a datasets audio item or an array at the extractor's rate; no FFmpeg or
        torchaudio needed. A long clip is classified window by window, as the probe was
        evaluated. Other models' inputs go through transformers' own preprocessing."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _redeclare(self.model)

        def preprocess(self, inputs: Any) -> Any:
            if type(self.model).__name__ not in _PIPELINES:
                # Registered for the task as a whole (see `modeling_mscl.hub`): any other
                # model runs exactly as in transformers' own pipeline.
                return super().preprocess(inputs)
            fe = self.feature_extractor
            processed = fe(
                _waveform(inputs, fe), sampling_rate=fe.sampling_rate, return_tensors="pt"
            )
            return processed.to(dtype=self.dtype) if self.dtype is not None else processed

    class MSCLEmbeddingPipeline(Pipeline):
        """Window and clip embeddings of tracks of any length (task `"mscl-embedding"`).

        Each input (what the audio-classification pipeline takes) is cut into ~1 s windows
        that go through the encoder `batch_size` at a time (default 64: here the pipeline's
        `batch_size` counts windows), so memory stays bounded whatever the length. Returns a
        dict per input: `clip_embedding` `(dim,)`, the mean of `window_embeddings`
        `(windows, dim)`, and `window_starts` `(windows,)` in seconds, numpy float32.
        `output="audio_embeds"` gives the projection (512-d) instead of the pooled feature.
        """

        # The front end is the model's own (saved beside it, else the default): a folder
        # saved without one must still load.
        _load_processor = False
        _load_image_processor = False
        _load_feature_extractor = False
        _load_tokenizer = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if "batch_size" in kwargs:
                kwargs["window_batch_size"] = kwargs.pop("batch_size")
            super().__init__(*args, **kwargs)
            _redeclare(self.model)
            if self.feature_extractor is None:
                self.feature_extractor = self._encoder._saved_feature_extractor()

        @property
        def _encoder(self) -> MSCLModel:
            return getattr(self.model, "mscl", self.model)

        def __call__(self, inputs: Any, **kwargs: Any) -> Any:
            if "batch_size" in kwargs:
                kwargs["window_batch_size"] = kwargs.pop("batch_size")
            return super().__call__(inputs, **kwargs)

        def _sanitize_parameters(
            self, output: str | None = None, window_batch_size: int | None = None, **kwargs: Any
        ) -> tuple[dict, dict, dict]:
            if kwargs:
                raise TypeError(f"{type(self).__name__} got unknown arguments {sorted(kwargs)}")
            forward = {}
            if output is not None:
                forward["output"] = output
            if window_batch_size is not None:
                forward["batch_size"] = window_batch_size
            return {}, forward, {}

        def preprocess(self, inputs: Any) -> dict[str, torch.Tensor]:
            fe = self.feature_extractor
            windows = fe(
                _waveform(inputs, fe),
                sampling_rate=fe.sampling_rate,
                return_windows=True,
                return_tensors="pt",
            )
            count = windows["input_features"].shape[0]
            seconds = fe.window_frames * fe.hop_length / fe.sampling_rate
            starts = torch.arange(count, dtype=torch.float32) * seconds
            return {"input_features": windows["input_features"], "window_starts": starts}

        def _forward(
            self,
            model_inputs: dict[str, torch.Tensor],
            output: str = "pooler_output",
            batch_size: int = _WINDOW_BATCH,
        ) -> dict[str, torch.Tensor]:
            embeds = self._encoder.embed_windows(model_inputs["input_features"], batch_size, output)
            return {"window_embeds": embeds, "window_starts": model_inputs["window_starts"]}

        def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
            windows = model_outputs["window_embeds"].float().numpy()
            return {
                "clip_embedding": windows.mean(axis=0),
                "window_embeddings": windows,
                "window_starts": model_outputs["window_starts"].numpy(),
            }

    return {
        "MSCLAudioClassificationPipeline": MSCLAudioClassificationPipeline,
        "MSCLEmbeddingPipeline": MSCLEmbeddingPipeline,
    }


_PIPELINE_CLASSES: dict[str, type] = {}


def pipeline_class(name: str) -> type | None:
    """The pipeline class called ``name``, or None. The pipeline classes subclass
    transformers' pipelines, whose import takes seconds: they are built on first use."""
    if name not in ("MSCLAudioClassificationPipeline", "MSCLEmbeddingPipeline"):
        return None
    if not _PIPELINE_CLASSES:
        _PIPELINE_CLASSES.update(_build_pipeline_classes())
    return _PIPELINE_CLASSES[name]


def __getattr__(name: str) -> Any:
    cls = pipeline_class(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
