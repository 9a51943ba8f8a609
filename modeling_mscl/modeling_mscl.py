"""MSCL models: the encoder model, the contrastive pre-training head (with its
similarity) and an audio-classification head.

Hub file: imports only the standard library, torch, transformers and its sibling Hub
files, so a saved folder loads with ``trust_remote_code=True`` without this package.
Its siblings hold the encoder's layers (``encoder_mscl``), the losses
(``contrastive_loss_mscl``), the similarities (``similarity_mscl``), long audio
(``long_audio_mscl``) and the pipelines (``pipeline_mscl``); the names this module always
offered are re-exported from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput

from .configuration_mscl import MSCLConfig
from .contrastive_loss_mscl import (
    ContrastiveLossOutput,
    ProcessGather,
    info_nce_loss,
    null_source_contrastive_loss,
)
from .encoder_mscl import (
    MSCLEncoder,
    MSCLInputNormalization,
    _final_lengths,
    _is_tracing,
    _prefix_lengths,
    count_keras_weights,
)
from .feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from .long_audio_mscl import (
    _WINDOW_BATCH,
    aggregate_window_logits,
    encode_windows,
    eval_mode,
    frame_windows,
    map_windows,
    pool_windows,
)
from .pipeline_mscl import EMBEDDING_TASK, custom_pipelines, pipeline_class
from .similarity_mscl import MSCLSimilarity

__all__ = [
    "EMBEDDING_TASK",
    "ContrastiveLossOutput",
    "MSCLClipEmbeddingOutput",
    "MSCLForAudioClassification",
    "MSCLForPreTraining",
    "MSCLForPreTrainingOutput",
    "MSCLModel",
    "MSCLModelOutput",
    "MSCLPreTrainedModel",
    "ProcessGather",
    "aggregate_window_logits",
    "build_classifier_head",
    "eval_mode",
    "count_keras_weights",
    "custom_pipelines",
    "encode_windows",
    "frame_windows",
    "info_nce_loss",
    "map_windows",
    "null_source_contrastive_loss",
    "pool_windows",
]

# VarianceScaling(2.0, "fan_out", "truncated_normal") in Keras divides the standard
# deviation by this constant: the std of a unit normal truncated at +-2.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


@dataclass
class MSCLModelOutput(ModelOutput):
    """Output of [`MSCLModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, channels, time', mel')`):
            Last feature map of the encoder (1280 channels for B0, time and mel / 32).
        pooler_output (`torch.FloatTensor` of shape `(batch, channels)`):
            Globally pooled feature (1280-d for B0): the representation used downstream.
        audio_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
            Contrastive embedding: Linear + LayerNorm + tanh of `pooler_output`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Feature map after the stem and after each stage, when `output_hidden_states=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MSCLForPreTrainingOutput(ModelOutput):
    """Output of [`MSCLForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Mean cross-entropy of the anchors' logits (InfoNCE, with the null column when
            some sources are absent).
        logits (`torch.FloatTensor` of shape `(batch, columns)`):
            Similarities of each anchor to every positive column (gathered over processes).
            With `source_present`, at fixed shapes whatever is present: one column per row
            of the global batch, then the null column, at `-inf` where a column does not
            count (an absent row's positive; the null column when nothing is absent).
        targets (`torch.LongTensor` of shape `(batch,)`):
            The column each anchor must pick.
        accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of anchors whose best column is their target.
        anchor_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
            Embeddings of the anchors (mixture crops).
        positive_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
            Embeddings of the positives (source crops; zero input where absent).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The encoder's hidden states (see [`MSCLModelOutput`]) for anchors then
            positives (`2 * batch` rows), when `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    targets: torch.LongTensor | None = None
    accuracy: torch.FloatTensor | None = None
    anchor_embeds: torch.FloatTensor | None = None
    positive_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MSCLClipEmbeddingOutput(ModelOutput):
    """Output of [`MSCLModel.embed_audio`].

    Args:
        clip_embeds (`torch.FloatTensor` of shape `(clips, dim)`):
            Mean of each clip's window embeddings.
        window_embeds (`torch.FloatTensor` of shape `(windows, dim)`):
            One embedding per 98-frame (~1 s) window.
        window_clip_index (`torch.LongTensor` of shape `(windows,)`):
            The clip each window belongs to.
    """

    clip_embeds: torch.FloatTensor | None = None
    window_embeds: torch.FloatTensor | None = None
    window_clip_index: torch.LongTensor | None = None


def _auto_map() -> dict[str, str]:
    """`config.json`'s `auto_map`: each Auto class to the MSCL class it loads, as
    `module.Class` of the Hub code files (whatever package the classes were imported from)."""

    def ref(cls: type) -> str:
        return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"

    return {
        "AutoConfig": ref(MSCLConfig),
        "AutoModel": ref(MSCLModel),
        "AutoModelForPreTraining": ref(MSCLForPreTraining),
        "AutoModelForAudioClassification": ref(MSCLForAudioClassification),
    }


class MSCLPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for the MSCL models."""

    config_class = MSCLConfig
    base_model_prefix = "mscl"
    main_input_name = "input_features"
    # Over the encoder's blocks (`MSCLEncoder._checkpointed`).
    supports_gradient_checkpointing = True
    # A block's residual sum needs its input and output on one device.
    _no_split_modules = ["MSCLBlock", "MSCLConvBN"]

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`; a folder that carries the Hub code files (the
        class is registered for an Auto class) also declares its pipeline in
        `config.custom_pipelines` (see [`custom_pipelines`]) and maps every Auto class to
        its MSCL class in `auto_map` (transformers maps only the class saved), so that
        any folder loads as an encoder, a pre-training model or a classifier."""
        if getattr(self, "_auto_class", None) is not None:
            self.config.custom_pipelines = custom_pipelines(type(self).__name__)
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **_auto_map()}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Keras' initialisers, so a fresh model trains like the reference.
        # Only torch.nn.init functions are used: transformers guards them so weights
        # loaded from a checkpoint are never overwritten.
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            fan_out = kh * kw * module.out_channels // module.groups
            std = (2.0 / fan_out) ** 0.5 / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # Keras' Dense default (Glorot uniform): projection and probe heads alike.
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.running_mean)
                nn.init.ones_(module.running_var)
                nn.init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MSCLInputNormalization):
            nn.init.zeros_(module.mean)
            nn.init.ones_(module.variance)
            nn.init.zeros_(module.count)
        elif isinstance(module, MSCLSimilarity):
            module.reset_parameters()  # as its registered similarity defines


class MSCLModel(MSCLPreTrainedModel):
    """The MSCL encoder: log-mel windows in, a pooled 1280-d feature and a 512-d embedding out."""

    def __init__(self, config: MSCLConfig) -> None:
        super().__init__(config)
        self.encoder = MSCLEncoder(config)
        self.projection = nn.Linear(config.encoder_hidden_size, config.projection_dim)
        self.layer_norm = nn.LayerNorm(config.projection_dim, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MSCLModelOutput | tuple:
        r"""Encode log-mel features.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`):
                Log-mel features from [`MSCLFeatureExtractor`] (98 frames is one window).
            attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*):
                1 for real frames, 0 for padding at the end of a row. A padded batch is
                encoded row group by row group at each row's real length, so every clip
                gets exactly the features it gets alone. Under `torch.compile`,
                `torch.export`, `torch.jit` or ONNX export, and for hidden states, the
                batch goes through once with the padding masked out layer by layer
                instead (the same features, without data-dependent control flow; the
                feature maps then keep the padded length, zero past each row's end, and
                training-mode batch norm counts the padding in its statistics).
            output_hidden_states (`bool`, *optional*):
                Return the feature map after the stem and after each stage; defaults to
                `config.output_hidden_states`.
        """
        if input_features.dim() != 3 or input_features.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must have shape (batch, frames, {self.config.num_mel_bins}); "
                f"got {tuple(input_features.shape)}"
            )
        if input_features.shape[1] < self.config.min_input_size:
            raise ValueError(
                f"input_features has {input_features.shape[1]} frames; this encoder's stride-2 "
                f"layers need at least {self.config.min_input_size} (pad to a whole window)"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        tracing = _is_tracing(input_features)
        # Under a tracer, no branch on the mask's values: the graph must hold for any mask.
        padded = attention_mask is not None and (tracing or not bool(attention_mask.all()))
        if padded and (tracing or output_hidden_states):
            lengths = attention_mask.long().sum(-1) if tracing else _prefix_lengths(attention_mask)
            pixel_values = input_features.unsqueeze(1) * self.config.input_rescale
            feature_map, hidden_states = self.encoder(
                pixel_values, bool(output_hidden_states), lengths=lengths
            )
            steps = torch.arange(feature_map.shape[2], device=feature_map.device)
            real = steps[None, :] < _final_lengths(lengths.clamp_min(1), self.encoder)[:, None]
            pooled = self._pool(feature_map, real)
        elif padded:
            feature_map, pooled = self._encode_by_length(input_features, attention_mask)
            hidden_states = None
        else:
            pixel_values = input_features.unsqueeze(1) * self.config.input_rescale
            feature_map, hidden_states = self.encoder(pixel_values, bool(output_hidden_states))
            pooled = self._pool(feature_map)
        embeds = torch.tanh(self.layer_norm(self.projection(pooled)))
        if not return_dict:
            return tuple(v for v in (feature_map, pooled, embeds, hidden_states) if v is not None)
        return MSCLModelOutput(
            last_hidden_state=feature_map,
            pooler_output=pooled,
            audio_embeds=embeds,
            hidden_states=hidden_states,
        )

    def _pool(self, feature_map: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """Global pooling; ``real`` `(batch, time)` leaves out the time steps past each
        row's end."""
        if real is None:
            if self.config.pooling == "max":
                return feature_map.amax(dim=(2, 3))
            return feature_map.mean(dim=(2, 3))
        real = real[:, None, :, None]
        if self.config.pooling == "max":
            return feature_map.masked_fill(~real, float("-inf")).amax(dim=(2, 3))
        count = real.sum(dim=(2, 3)) * feature_map.shape[3]
        return (feature_map * real).sum(dim=(2, 3)) / count.clamp_min(1)

    def _encode_by_length(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch, encoded exactly as its clips would be alone.

        Padding frames reach real positions through the convolutions (and, with "same"
        padding, shift what the borders see), so masking the pooling alone leaves pooled
        features several percent away from the clip's own. Rows are instead grouped by
        their real length and each group is encoded cropped to it; feature maps are
        zero-padded along time to the longest. Padding must be at the end of each row.
        """
        lengths = _prefix_lengths(attention_mask)
        pooled_rows, maps = [None] * len(lengths), [None] * len(lengths)
        for length in lengths.unique().tolist():
            rows = torch.nonzero(lengths == length).flatten()
            crop = input_features[rows, : max(int(length), 1)]
            feature_map, _ = self.encoder(crop.unsqueeze(1) * self.config.input_rescale, False)
            pooled = self._pool(feature_map)
            for i, row in enumerate(rows.tolist()):
                pooled_rows[row], maps[row] = pooled[i], feature_map[i]
        steps = max(m.shape[1] for m in maps)
        feature_map = torch.stack([F.pad(m, (0, 0, 0, steps - m.shape[1])) for m in maps])
        return feature_map, torch.stack(pooled_rows)

    def _saved_feature_extractor(self) -> MSCLFeatureExtractor:
        """The front end saved with this model (`preprocessor_config.json` in the folder or
        Hub repo it was loaded from), else the default one for its number of mel bins."""
        source = getattr(self.config, "_name_or_path", "") or None
        return load_feature_extractor(source, self.config.num_mel_bins, missing_ok=True)

    @torch.no_grad()
    def embed_audio(
        self,
        audio: Any,
        sampling_rate: int | None = None,
        feature_extractor: MSCLFeatureExtractor | None = None,
        batch_size: int = 64,
        output: str = "pooler_output",
        resample: bool = False,
    ) -> MSCLClipEmbeddingOutput:
        """Embed clips of any length: cut into ~1 s windows, encode, average per clip.

        Windows go through the encoder ``batch_size`` at a time, so memory stays bounded
        whatever the length (a 10-minute track is ~610 windows). ``audio`` is anything
        [`MSCLFeatureExtractor`] accepts: arrays at ``sampling_rate`` (one clip or a list),
        or audio that carries its rate (paths, bytes, dicts, datasets audio items), for
        which ``sampling_rate`` is not needed. Without ``feature_extractor``, the one saved
        in the model's folder is used (else the default). ``output`` picks
        `"pooler_output"` (1280-d, the downstream feature) or `"audio_embeds"` (512-d).
        """
        fe = feature_extractor or self._saved_feature_extractor()
        fe = load_feature_extractor(fe, self.config.num_mel_bins)
        windows = fe(
            audio,
            sampling_rate=sampling_rate,
            return_windows=True,
            return_tensors="pt",
            resample=resample,
        )
        clip_index = windows["window_clip_index"].to(self.device)
        window_embeds = self.embed_windows(windows["input_features"], batch_size, output)
        num_clips = int(clip_index.max()) + 1
        return MSCLClipEmbeddingOutput(
            clip_embeds=pool_windows(window_embeds, clip_index, num_clips, "mean"),
            window_embeds=window_embeds,
            window_clip_index=clip_index,
        )

    def embed_windows(
        self, windows: torch.Tensor, batch_size: int = 64, output: str = "pooler_output"
    ) -> torch.Tensor:
        """``output`` (`"pooler_output"` or `"audio_embeds"`) of log-mel windows `(n, frames,
        mel)`, float32 on the model's device: in eval mode, ``batch_size`` windows at a time
        (:func:`encode_windows`)."""
        with eval_mode(self):
            return encode_windows(self, windows, batch_size, output)


class MSCLForPreTraining(MSCLPreTrainedModel):
    """The encoder plus the similarity and the contrastive loss of COLA / MSCL."""

    main_input_name = "anchor_features"

    def __init__(self, config: MSCLConfig) -> None:
        super().__init__(config)
        self.mscl = MSCLModel(config)
        self.similarity = MSCLSimilarity(config)
        self.post_init()

    def forward(
        self,
        anchor_features: torch.Tensor,
        positive_features: torch.Tensor,
        source_present: torch.Tensor | None = None,
        gather: ProcessGather | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> MSCLForPreTrainingOutput | tuple:
        r"""Contrast anchors with positives.

        Args:
            anchor_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`):
                Crops of the mixture.
            positive_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`):
                Crops of one source of the same excerpts (MSCL) or second mixture crops (COLA).
            source_present (`torch.BoolTensor` of shape `(batch,)`, *optional*):
                Whether each pair's source is present. Absent positives are replaced by the
                all-zero input and their anchors must pick the shared null column (the mean
                of the absent rows' embeddings). `None` means all present (plain InfoNCE).
            gather ([`ProcessGather`], *optional*):
                In a data-parallel run, the other processes' rows: the loss is then one
                loss over the global batch (the trainer passes
                `modeling_mscl.losses.process_gather()`). `None`: this batch only.
            output_hidden_states (`bool`, *optional*):
                Return the encoder's hidden states; defaults to `config.output_hidden_states`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if anchor_features.shape != positive_features.shape:
            raise ValueError(
                "anchor_features and positive_features must have the same shape; got "
                f"{tuple(anchor_features.shape)} and {tuple(positive_features.shape)}"
            )
        batch = anchor_features.shape[0]
        present = None
        positives = positive_features
        if source_present is not None:
            present = source_present.to(device=positive_features.device, dtype=torch.bool)
            if present.shape != (batch,):
                raise ValueError(
                    f"source_present must have shape ({batch},); got {tuple(present.shape)}"
                )
            # An absent source is the all-zero input (not the log-mel of silence), as in the
            # reference; `where`, not a product, so no value of an absent crop leaks in.
            positives = torch.where(present[:, None, None], positive_features, 0.0)
        # ONE encoder pass over anchors and positives together, as the reference: batch norm
        # normalises the 2B inputs with one set of statistics and updates its running
        # statistics once per step (two passes would blend two different input
        # distributions into the running statistics, and skew every eval-mode feature).
        encoded = self.mscl(
            torch.cat([anchor_features, positives]),
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        embeds = encoded.audio_embeds
        anchor_embeds, positive_embeds = embeds[:batch], embeds[batch:]
        if present is None:
            out = info_nce_loss(anchor_embeds, positive_embeds, self.similarity, gather=gather)
        else:
            out = null_source_contrastive_loss(
                anchor_embeds, positive_embeds, present, self.similarity, gather=gather
            )
        result = MSCLForPreTrainingOutput(
            loss=out.loss,
            logits=out.logits,
            targets=out.targets,
            accuracy=out.accuracy,
            anchor_embeds=anchor_embeds,
            positive_embeds=positive_embeds,
            hidden_states=encoded.hidden_states,
        )
        return result if return_dict else result.to_tuple()


# ---------------------------------------------------------------- the classification head
# One copy, here in the Hub file: the package's probes build their heads with it, so a
# trained probe's state dict loads into the exported classifier.


def build_classifier_head(
    in_features: int,
    num_labels: int,
    head: str = "linear",
    hidden_size: int = 512,
    dropout: float = 0.0,
) -> nn.Sequential:
    """The head on a pooled feature: ``"linear"`` (Dropout, Linear) or ``"mlp"`` (Linear,
    ReLU, Dropout, Linear).

    [`MSCLForAudioClassification`] and the package's probes both build it here, so a
    trained probe's state dict loads into the classifier's. The layers keep PyTorch's
    default initialisation; the caller initialises them.
    """
    if head == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_labels))
    if head == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_labels),
        )
    raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")


class MSCLForAudioClassification(MSCLPreTrainedModel):
    """The encoder's pooled feature followed by a linear or MLP head.

    Single-label (cross-entropy), multi-label (sigmoid + BCE) or regression, chosen by
    ``config.problem_type`` as in transformers. With ``config.freeze_encoder`` the encoder
    gets no gradients and keeps its batch-norm statistics (a frozen probe).
    """

    def __init__(self, config: MSCLConfig) -> None:
        super().__init__(config)
        self.mscl = MSCLModel(config)
        self.classifier = build_classifier_head(
            config.encoder_hidden_size,
            config.num_labels,
            config.classifier_head,
            config.classifier_hidden_size,
            config.dropout_rate,
        )
        # Set by `freeze_feature_encoder()`: frozen for this session, not saved in the config.
        self._encoder_frozen = False
        if config.freeze_encoder:
            self.mscl.requires_grad_(False)
        self.post_init()

    @property
    def _frozen(self) -> bool:
        return bool(self.config.freeze_encoder or self._encoder_frozen)

    def freeze_feature_encoder(self) -> None:
        """Freeze the whole encoder, as transformers' audio models do before fine-tuning
        their head (the `freeze_feature_encoder` step of its audio-classification example):
        no gradients, and batch norm in eval mode, so its running statistics stay too. For
        this object only; `config.freeze_encoder` is what makes a saved head frozen."""
        self._encoder_frozen = True
        self.mscl.requires_grad_(False)
        self.mscl.eval()

    def train(self, mode: bool = True) -> MSCLForAudioClassification:
        super().train(mode)
        if self._frozen:
            self.mscl.eval()
        return self

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""Classify log-mel features; the loss is computed only when `labels` are given.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`):
                Log-mel features from [`MSCLFeatureExtractor`].
            labels (`torch.Tensor`, *optional*):
                `(batch,)` class indices (single-label), `(batch, num_labels)` multi-hot
                (multi-label) or `(batch,)` / `(batch, num_labels)` floats (regression).
            output_hidden_states (`bool`, *optional*):
                Return the encoder's hidden states; defaults to `config.output_hidden_states`.
                Not for inputs that `classifier_window_frames` cuts into windows.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        window = self.config.classifier_window_frames
        hidden_states = None
        if window is not None and input_features.shape[1] > window:
            if output_hidden_states:
                raise ValueError(
                    f"output_hidden_states is not available for inputs longer than "
                    f"config.classifier_window_frames={window} (they are classified window "
                    "by window); pass one window at a time"
                )
            logits = self._windowed_logits(input_features, attention_mask, window)
        else:
            pooled, hidden_states = self._pooled(
                input_features, attention_mask, bool(output_hidden_states)
            )
            logits = self.classifier(pooled)
        loss = self._loss(logits, labels) if labels is not None else None
        if not return_dict:
            out = (logits,) if hidden_states is None else (logits, hidden_states)
            return (loss, *out) if loss is not None else out
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def _pooled(
        self, features: torch.Tensor, mask: torch.Tensor | None, hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            out = self.mscl(
                features, attention_mask=mask, output_hidden_states=hidden_states, return_dict=True
            )
        return out.pooler_output, out.hidden_states

    def _windowed_logits(
        self, features: torch.Tensor, mask: torch.Tensor | None, window: int
    ) -> torch.Tensor:
        """Clip logits from non-overlapping windows, aggregated as in the probe protocol."""
        windows, clip_index, real = frame_windows(features, window, mask)
        # In training every window goes through at once (batch statistics over all of them);
        # otherwise in batches, so memory stays bounded whatever the track's length.
        step = max(1, len(windows)) if self.training else _WINDOW_BATCH
        logits = self.classifier(map_windows(lambda w: self._pooled(w, None)[0], windows, step))
        if real is not None:
            logits, clip_index = logits[real], clip_index[real]
        multi_label = self.config.problem_type == "multi_label_classification"
        scores = aggregate_window_logits(logits, clip_index, len(features), multi_label)
        if multi_label:
            # The mean of sigmoids, returned as logits so that sigmoid() gives it back.
            return torch.logit(scores.clamp(1e-6, 1 - 1e-6))
        return scores

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().squeeze(-1))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def __getattr__(name: str) -> Any:
    # `config.custom_pipelines` names the pipeline classes as attributes of this module
    # (`modeling_mscl.MSCLEmbeddingPipeline`, so folders saved before the pipelines had
    # their own file keep their declaration): `pipeline(...)` looks them up here.
    cls = pipeline_class(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
