"""MSCL models: a one-channel EfficientNet in the Keras layout, the contrastive
pre-training head and an audio-classification head.

Hub file: imports only the standard library, torch, transformers and its sibling hub
files, so a saved folder loads with ``trust_remote_code=True`` without this package.
The encoder is written here rather than taken from transformers' EfficientNet: that
port passes Keras' batch-norm momentum straight to PyTorch and pads symmetrically,
and a saved model must not change when transformers does.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as torch_module
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from .configuration_mscl import MSCLConfig, round_filters, round_repeats
from .feature_extraction_mscl import (
    MSCLFeatureExtractor,
    audio_name,
    decode_audio,
    frame_windows,
    load_feature_extractor,
)

logger = hf_logging.get_logger(__name__)

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
# Standard deviation of Keras' `random_normal` initialiser, the reference's bilinear W.
BILINEAR_INIT_STD = 0.05
# Windows encoded at once when a long clip is classified or embedded window by window.
_WINDOW_BATCH = 64


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


def count_keras_weights(module: nn.Module) -> int:
    """Count weights the way Keras' ``count_params`` does.

    Keras counts batch-norm moving statistics and the Normalization layer's state as
    (non-trainable) weights; PyTorch keeps them as buffers. ``num_batches_tracked`` has
    no Keras counterpart and is left out.
    """
    params = sum(p.numel() for p in module.parameters())
    buffers = sum(
        b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked")
    )
    return params + buffers


def _keras_pad(kernel_size: int) -> tuple[int, int, int, int]:
    """Padding Keras applies before a stride-2 'valid' convolution (``correct_pad``).

    The reference model's time axis has no fixed length, for which Keras always pads
    one less before than after: (k//2 - 1, k//2) on both axes.
    """
    before, after = kernel_size // 2 - 1, kernel_size // 2
    return (before, after, before, after)  # F.pad order: mel left/right, time top/bottom


def _activation(name: str) -> nn.Module:
    return {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}[name]()


# ------------------------------------------------------------------- the inference path
# In eval mode without gradients the encoder runs a fused form of the same network: batch
# norm folded into the convolution weights (cached until a weight or statistic changes),
# weights in channels-last layout, and on the CPU oneDNN's convolution with the bias, the
# activation and the residual sum applied in the same kernel. It agrees with the layer-by-
# layer eval forward to float rounding (tests/test_fused_inference.py checks it); training and
# anything that needs gradients take the layer-by-layer path.

# Input elements (windows x frames x mel bins) encoded at once: bounds the activations
# (about 25x the input at the widest stage, 80 MB here) whatever the batch. On the CPU 128
# one-second windows; smaller chunks were slower on 2 threads (less work per parallel
# region). A GPU needs more rows per kernel to fill its cores: 1024 windows (640 MB).
_INFERENCE_CHUNK_ELEMENTS = 128 * 98 * 64
_INFERENCE_CHUNK_ELEMENTS_ACCELERATOR = 1024 * 98 * 64


def _inference_chunk_rows(device: torch.device, row_elements: int) -> int:
    """Rows of ``row_elements`` input elements the fused eval forward takes at once."""
    cpu = device.type == "cpu"
    budget = _INFERENCE_CHUNK_ELEMENTS if cpu else _INFERENCE_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, budget // max(1, row_elements))


# oneDNN post-ops for the activations it can fuse; other activations run after the conv.
_FUSED_ACTIVATIONS = {nn.SiLU: "swish", nn.ReLU: "relu", nn.Identity: "none"}
_onednn_conv: list[bool] = []  # [False] once oneDNN's fused convolution failed here


def _is_tracing(x: torch.Tensor) -> bool:
    """Whether ``x`` goes through a tracer or compiler rather than eager execution:
    ``torch.jit`` tracing or scripting, ``torch.compile`` / ``torch.export`` (dynamo), ONNX
    export, FX symbolic tracing, or fake / functional tensors (non-strict export, AOT
    tracing). The fused path is eager-only: its weight cache holds real tensors, read by
    identity and data pointer, and its oneDNN calls have no tracing rules."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    # FX symbolic tracing (and export): the flag itself, as `is_fx_tracing()` logs a
    # warning at every call.
    symbolic_trace = getattr(getattr(torch, "fx", None), "_symbolic_trace", None)
    if getattr(symbolic_trace, "_is_fx_tracing_flag", False):
        return True
    if type(x) not in (torch.Tensor, nn.Parameter):  # fake, proxy and other subclasses
        return True
    is_functional = getattr(torch._C, "_is_functional_tensor", None)
    return bool(is_functional is not None and is_functional(x))


def _use_onednn(x: torch.Tensor) -> bool:
    """Whether ``x`` can go through oneDNN's fused convolution (CPU, float32/bfloat16, no
    autocast that would expect a cast)."""
    if _onednn_conv or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    try:
        return not torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 asks per device type by name
        return not torch.is_autocast_cpu_enabled()


class MSCLInputNormalization(nn.Module):
    """Keras' ``Normalization`` layer as the reference model has it: (x - mean) / sqrt(var).

    Never adapted in the reference (mean 0, variance 1: an identity), but kept with its
    state so converted checkpoints carry it over exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("variance", torch.ones(1))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Keras guards the square root with its epsilon, 1e-7.
        return (x - self.mean) / torch.sqrt(self.variance).clamp_min(1e-7)


class MSCLConvBN(nn.Module):
    """Convolution without bias, batch norm and an optional activation."""

    def __init__(
        self,
        config: MSCLConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.kernel_size = kernel_size
        # Stride 1 is Keras "same" padding (symmetric for odd kernels); stride 2 pads by hand.
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(
            out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum
        )
        self.act = _activation(config.hidden_act) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, _keras_pad(self.kernel_size))
        return self.act(self.bn(self.conv(x)))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(weight, bias, padding) of the convolution with the eval-mode batch norm folded
        in, weight in channels-last layout; cached while weights and statistics stay.

        At stride 2 the k x k kernel sits in the bottom-right corner of a (k+1) x (k+1)
        kernel of zeros: with the symmetric padding k // 2 that gives Keras' asymmetric
        padding exactly, without a padded copy of the input (11 % of inference here).
        """
        conv, bn = self.conv, self.bn
        tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        # The cache holds for the very same tensors (weak references: a freed tensor whose
        # memory a new one reuses never matches), at the same address (`.data` / `.to()`
        # swaps) and version (in-place changes: optimizer steps, load_state_dict, init).
        # Callers never come here while tracing (see `_is_tracing`): a traced or fake
        # tensor neither fills nor reads it.
        key = (bn.eps, *((t.data_ptr(), t._version) for t in tensors))
        cache = self.__dict__.get("_folded")
        if (
            cache is None
            or cache[0] != key
            or any(ref() is not t for ref, t in zip(cache[4], tensors, strict=True))
        ):
            with torch.inference_mode(False), torch.no_grad():
                scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
                weight = conv.weight.float() * scale[:, None, None, None]
                bias = bn.bias.float() - bn.running_mean.float() * scale
                if self.stride == 2:
                    weight = F.pad(weight, (1, 0, 1, 0))
                weight = weight.to(conv.weight.dtype).contiguous(memory_format=torch.channels_last)
                refs = tuple(weakref.ref(t) for t in tensors)
                cache = (key, weight, bias.to(conv.weight.dtype), self.kernel_size // 2, refs)
            self.__dict__["_folded"] = cache  # a plain attribute: never in the state dict
        return cache[1:4]

    def fused(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The eval-mode output (plus ``residual``) from the folded weights, without grad."""
        weight, bias, padding = self.folded()
        conv = self.conv
        attr = _FUSED_ACTIVATIONS.get(type(self.act))
        if _use_onednn(x) and x.dtype == weight.dtype:
            try:
                args = ([padding, padding], list(conv.stride), [1, 1], conv.groups)
                mkldnn = torch.ops.mkldnn
                if residual is not None and attr == "none":
                    return mkldnn._convolution_pointwise.binary(
                        x, residual, weight, bias, *args, "add", None, None, [], None
                    )
                y = mkldnn._convolution_pointwise(x, weight, bias, *args, attr or "none", [], None)
                y = y if attr is not None else self.act(y)
                return y if residual is None else y.add_(residual)
            except (AttributeError, NotImplementedError, RuntimeError):
                _onednn_conv.append(False)  # an op this torch lacks: the portable path
        y = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), conv.stride, padding, 1, conv.groups)
        y = F.silu(y, inplace=True) if isinstance(self.act, nn.SiLU) else self.act(y)
        return y if residual is None else y.add_(residual)


class MSCLSqueezeExcitation(nn.Module):
    """Channel gating from the globally averaged feature map (Hu et al. 2018)."""

    def __init__(self, config: MSCLConfig, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale

    def masked(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the mean taken over the real time steps only: ``valid``
        `(batch, 1, time, 1)` is 1 there and 0 over padding."""
        scale = (x * valid).sum(dim=(2, 3), keepdim=True)
        scale = scale / (valid.sum(dim=(2, 3), keepdim=True) * x.shape[3]).clamp_min(1)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """Eval without grad: the 1x1 convolutions of the pooled vector as matrix products,
        and ``x`` (a temporary of the block) scaled in place."""
        scale = x.mean(dim=(2, 3))
        reduce, expand = self.reduce, self.expand
        scale = self.act(
            F.linear(scale, reduce.weight.flatten(1).to(x.dtype), reduce.bias.to(x.dtype))
        )
        scale = F.linear(scale, expand.weight.flatten(1).to(x.dtype), expand.bias.to(x.dtype))
        return x.mul_(scale.sigmoid_()[:, :, None, None])


class MSCLBlock(nn.Module):
    """MBConv: 1x1 expansion, depthwise conv, squeeze-excitation, 1x1 projection, residual
    with stochastic depth (whole samples dropped, survivors scaled by 1 / (1 - rate))."""

    def __init__(
        self,
        config: MSCLConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_rate: float,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = (
            MSCLConvBN(config, in_channels, hidden) if expand_ratio != 1 else nn.Identity()
        )
        self.depthwise = MSCLConvBN(config, hidden, hidden, kernel_size, stride, groups=hidden)
        ratio = config.squeeze_excitation_ratio
        self.se = (
            MSCLSqueezeExcitation(config, hidden, max(1, int(in_channels * ratio)))
            if 0 < ratio <= 1
            else nn.Identity()
        )
        self.project = MSCLConvBN(config, hidden, out_channels, activation=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_rate = drop_rate

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """Eval without grad (no stochastic depth): see :meth:`MSCLConvBN.fused`."""
        out = self.expand.fused(x) if isinstance(self.expand, MSCLConvBN) else x
        out = self.depthwise.fused(out)
        if isinstance(self.se, MSCLSqueezeExcitation):
            out = self.se.fused(out)
        return self.project.fused(out, residual=x if self.residual else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(self.project(self.se(self.depthwise(self.expand(x)))), x)

    def masked(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` of a padded batch whose rows hold ``lengths`` real time steps,
        as each row alone cropped to its length: the padding is zeroed before the one
        layer that mixes time steps (the depthwise convolution, whose own zero padding a
        crop would see there) and left out of the squeeze-excitation mean. Returns the
        output and the rows' lengths after this block's stride."""
        out = self.expand(x)
        out = self.depthwise(out * _time_mask(lengths, out))
        if self.depthwise.stride == 2:
            lengths = _strided_lengths(lengths)
        if isinstance(self.se, MSCLSqueezeExcitation):
            out = self.se.masked(out, _time_mask(lengths, out))
        return self._residual(self.project(out), x), lengths

    def _residual(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return out
        if self.training and self.drop_rate > 0:
            keep = 1.0 - self.drop_rate
            mask = torch.empty(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype)
            out = out * mask.bernoulli_(keep) / keep
        return out + x


def _strided_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Time steps of each row after a stride-2 layer: floor(length / 2), what Keras'
    padding (k - 2 in all, see `_keras_pad`) leaves of a crop of that length."""
    return torch.div(lengths, 2, rounding_mode="floor")


def _time_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`(batch, 1, time, 1)` in ``x``'s dtype: 1 over each row's first ``lengths`` time
    steps of ``x`` `(batch, channels, time, mel)`, 0 over the padding after them."""
    steps = torch.arange(x.shape[2], device=x.device)
    return (steps[None, :] < lengths[:, None]).to(x.dtype)[:, None, :, None]


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module):
    """Batch norms in ``module`` normalise with batch statistics (training mode) without
    moving their running statistics: for the recomputation of a checkpointed block, whose
    first pass already moved them. The same operations run (checkpointing checks that the
    recomputation saves what the first pass saved), with momentum 0: the running
    statistics are kept exactly (1 * old + 0 * batch), and the batch count is put back."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked) for m in norms]
    counts = [None if n is None else n.clone() for _, n in saved]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked), count in zip(norms, saved, counts, strict=True):
            m.momentum = momentum
            if tracked is not None:
                tracked.copy_(count)


class MSCLEncoder(nn.Module):
    """EfficientNet over a (batch, 1, time, mel) image, ending in a 1x1 conv to 1280 channels."""

    def __init__(self, config: MSCLConfig) -> None:
        super().__init__()
        width, divisor = config.width_coefficient, config.depth_divisor
        self.normalization = MSCLInputNormalization()
        self.stem = MSCLConvBN(config, 1, config.stem_channels, kernel_size=3, stride=2)

        repeats = [round_repeats(r, config.depth_coefficient) for r in config.num_block_repeats]
        total_blocks = float(sum(repeats))
        stages, block_index = [], 0
        in_channels = config.stem_channels
        for stage, n_blocks in enumerate(repeats):
            out_channels = round_filters(config.out_channels[stage], width, divisor)
            blocks = []
            for j in range(n_blocks):
                blocks.append(
                    MSCLBlock(
                        config,
                        in_channels if j == 0 else out_channels,
                        out_channels,
                        config.kernel_sizes[stage],
                        config.strides[stage] if j == 0 else 1,
                        config.expand_ratios[stage],
                        # Linearly increasing stochastic depth, as Keras' EfficientNet.
                        config.drop_connect_rate * block_index / total_blocks,
                    )
                )
                block_index += 1
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.top = MSCLConvBN(config, in_channels, config.encoder_hidden_size)
        # Set by `PreTrainedModel.gradient_checkpointing_enable` (with the checkpoint
        # function): in training, each block's activations are recomputed in backward.
        self.gradient_checkpointing = False

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The last feature map (and the map after the stem and after each stage).

        ``lengths`` `(batch,)`: real time steps of each row of a batch padded at the end;
        each row then gets the features of its crop, with the padding zeroed (see
        :meth:`MSCLBlock.masked`), in a single pass without data-dependent control flow.
        """
        if lengths is None and not _is_tracing(pixel_values) and self._can_fuse():
            return self._inference(pixel_values, output_hidden_states)
        x = self.normalization(pixel_values)
        if lengths is not None:
            lengths = lengths.clamp_min(1)  # an empty row is encoded as one frame
            x = x * _time_mask(lengths, x)
        x = self.stem(x)
        if lengths is not None:
            lengths = _strided_lengths(lengths)
        hidden_states = None
        if output_hidden_states:
            hidden_states = [x if lengths is None else x * _time_mask(lengths, x)]
        for stage in self.stages:
            for block in stage:
                if lengths is not None:
                    x, lengths = block.masked(x, lengths)
                elif self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x = self._checkpointed(block, x)
                else:
                    x = block(x)
            if hidden_states is not None:
                hidden_states.append(x if lengths is None else x * _time_mask(lengths, x))
        x = self.top(x)
        if lengths is not None:
            x = x * _time_mask(lengths, x)
        return x, (tuple(hidden_states) if hidden_states is not None else None)

    def _checkpointed(self, block: MSCLBlock, x: torch.Tensor) -> torch.Tensor:
        """``block(x)`` with its activations recomputed in backward. The recomputation
        normalises with the same batch statistics but leaves the running statistics alone:
        run twice as it is, every checkpointed step would move them twice (and count two
        batches). The random state is restored for it, so stochastic depth drops the same
        samples."""
        calls = []

        def run(inputs: torch.Tensor) -> torch.Tensor:
            if calls:
                with _running_stats_frozen(block):
                    return block(inputs)
            calls.append(True)
            return block(inputs)

        return self._gradient_checkpointing_func(run, x)

    def _can_fuse(self) -> bool:
        """Eval without gradients, and nothing that needs the layers one by one: no layer in
        training mode (precise-BN recalibration trains the norms of an eval encoder) and no
        forward hooks (a fused forward never calls the layers that carry them)."""
        if torch.is_grad_enabled():
            return False
        for name in ("_global_forward_hooks", "_global_forward_pre_hooks"):
            if getattr(torch_module, name, None):
                return False
        # The list of the ~290 layers is cached: walking them anew took 0.2 ms a call.
        key = tuple(self._modules.values())
        cached = self.__dict__.get("_layers")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_layers"] = (key, tuple(self.modules())[1:])
        return not self.training and not any(
            m.training or m._forward_hooks or m._forward_pre_hooks for m in cached[1]
        )

    def _inference(
        self, pixel_values: torch.Tensor, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The fused eval forward, a chunk of rows at a time (see ``_INFERENCE_CHUNK_ELEMENTS``)."""
        rows = _inference_chunk_rows(pixel_values.device, pixel_values[0].numel())
        maps, hidden = [], []
        for chunk in pixel_values.split(rows):
            # Channels-last strides, which one channel leaves ambiguous: oneDNN then keeps
            # every activation in that layout instead of reordering around each conv.
            x = self.normalization(chunk).contiguous(memory_format=torch.channels_last)
            if x.shape[1] == 1:
                x = x.contiguous().as_strided(x.shape, (x[0].numel(), 1, x.shape[3], 1))
            x = self.stem.fused(x)
            states = [x] if output_hidden_states else None
            for stage in self.stages:
                for block in stage:
                    x = block.fused(x)
                if states is not None:
                    states.append(x)
            maps.append(self.top.fused(x))
            hidden.append(states)
        # Callers get the default layout back, as from the layer-by-layer forward.
        feature_map = torch.cat(maps).contiguous()
        if not output_hidden_states:
            return feature_map, None
        return feature_map, tuple(
            torch.cat(level).contiguous() for level in zip(*hidden, strict=True)
        )


def _prefix_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Real frames of each row of ``attention_mask`` `(batch, frames)`; raises ValueError
    unless each row's real frames come first (padding at the end)."""
    lengths = attention_mask.long().sum(-1)
    frames = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    if not bool((attention_mask.bool() == (frames[None] < lengths[:, None])).all()):
        raise ValueError("attention_mask must mark a prefix of each row (padding at the end)")
    return lengths


def _final_lengths(lengths: torch.Tensor, encoder: MSCLEncoder) -> torch.Tensor:
    """Time steps of each row in the encoder's last feature map, for ``lengths`` input frames:
    halved (rounding down) by the stem and by each stage's strided first block."""
    lengths = _strided_lengths(lengths)
    for stage in encoder.stages:
        if stage[0].depthwise.stride == 2:
            lengths = _strided_lengths(lengths)
    return lengths


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
        elif isinstance(module, MSCLSimilarity) and module.weight is not None:
            # Keras' `random_normal` (mean 0, std 0.05), the reference's bilinear matrix.
            nn.init.normal_(module.weight, mean=0.0, std=BILINEAR_INIT_STD)


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


# ------------------------------------------------------------ long audio: windows to clips
# How audio longer than one window is run, in one place for the models, the pipelines and
# the package's probes, apart from the model classes. Windows are cut in one place,
# `frame_windows` of the feature extractor's module: `return_windows=True` (embed_audio,
# the embedding pipeline), the probes' `window_features` and the classifier's windows all
# call it. `map_windows` runs the windows through a model a batch at a time, so memory
# stays bounded whatever the length; `pool_windows` and `aggregate_window_logits` turn
# window rows into clip rows.

_WINDOW_OUTPUTS = ("pooler_output", "audio_embeds")


def map_windows(
    fn: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``fn`` over ``windows`` (rows), ``batch_size`` rows at a time, concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.cat([fn(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)])


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Any:
    """``with eval_mode(model):`` runs the block with ``model`` in eval mode (batch norm
    frozen, no dropout) and gives it back its previous mode afterwards, even on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def encode_windows(
    encoder: nn.Module,
    windows: torch.Tensor,
    batch_size: int = _WINDOW_BATCH,
    output: str = "pooler_output",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``output`` of an encoder (an [`MSCLModel`], or a module with its `device`, `dtype`,
    `config` and outputs) for log-mel windows `(n, frames, mel)`, ``batch_size`` at a time,
    without gradients and in the encoder's current mode: float32 on ``device`` (default:
    the encoder's), each batch moved there as it comes (results of a GPU encoder can pile
    up on the CPU)."""
    if output not in _WINDOW_OUTPUTS:
        raise ValueError(f"output must be 'pooler_output' or 'audio_embeds', got {output!r}")
    device = encoder.device if device is None else device
    if len(windows) == 0:
        config = encoder.config
        dim = config.encoder_hidden_size if output == "pooler_output" else config.projection_dim
        return torch.zeros((0, dim), dtype=torch.float32, device=device)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        out = getattr(encoder(batch.to(encoder.device, encoder.dtype)), output)
        return out.to(device, torch.float32)

    return map_windows(encode, windows, batch_size)


def pool_windows(
    values: torch.Tensor, clip_index: torch.Tensor, num_clips: int, reduce: str = "mean"
) -> torch.Tensor:
    """Per-clip ``"sum"`` or ``"mean"`` of window rows: `(windows, dim)` -> `(clips, dim)`.

    ``clip_index`` `(windows,)` gives each row's clip; sums are in ``values``' dtype and a
    clip without rows gets zeros. On the CPU a clip's rows are added one after another,
    in order (``index_add``); on CUDA the order is free unless
    ``torch.use_deterministic_algorithms(True)``.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    sums = values.new_zeros((num_clips, *values.shape[1:])).index_add(0, clip_index, values)
    if reduce == "sum":
        return sums
    counts = torch.bincount(clip_index, minlength=num_clips).clamp_min(1)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


def aggregate_window_logits(
    logits: torch.Tensor, clip_index: torch.Tensor, num_clips: int, multi_label: bool
) -> torch.Tensor:
    """Clip scores `(clips, classes)` from window logits `(windows, classes)`: the probe protocol.

    Multi-label: the mean of the windows' sigmoids (the paper's tagging protocol), a
    probability per tag. Single-label: the sum of the windows' logits (its arg-max is the
    prediction).
    """
    if multi_label:
        return pool_windows(torch.sigmoid(logits), clip_index, num_clips, "mean")
    return pool_windows(logits, clip_index, num_clips, "sum")


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


class MSCLSimilarity(nn.Module):
    """Similarity of anchors (B, D) to columns (C, D): logits (B, C).

    ``bilinear``: u^T W v with a trainable D x D matrix and no temperature (COLA, MSCL),
    times ``config.bilinear_logit_scale`` where that is not 1 (a named departure).
    ``cosine``: cos(u, v) / temperature.
    """

    def __init__(self, config: MSCLConfig) -> None:
        super().__init__()
        self.kind = config.similarity
        self.temperature = config.similarity_temperature
        self.logit_scale = float(config.bilinear_logit_scale)
        dim = config.projection_dim
        self.weight = nn.Parameter(torch.empty(dim, dim)) if self.kind == "bilinear" else None

    def forward(self, anchors: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        if self.kind == "bilinear":
            logits = anchors @ self.weight.to(anchors.dtype) @ columns.T
            # The paper's form is left untouched (no multiply) at the default scale.
            return logits if self.logit_scale == 1.0 else logits * self.logit_scale
        return F.normalize(anchors, dim=-1) @ F.normalize(columns, dim=-1).T / self.temperature


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


# ------------------------------------------------------------------------------ pipelines
# Each saved folder declares its pipeline in `config.custom_pipelines` (written by
# `MSCLPreTrainedModel.save_pretrained`), so `pipeline(model=folder, trust_remote_code=True)`
# runs the class below, from this file, where the package is not installed. Both decode
# and resample their inputs through `decode_audio` (soundfile and julius), never through
# FFmpeg or torchaudio.

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


def __getattr__(name: str) -> Any:
    # The pipeline classes subclass transformers' pipelines, whose import takes seconds:
    # they are built on first use (`pipeline(...)` looks them up by name in this module).
    if name in ("MSCLAudioClassificationPipeline", "MSCLEmbeddingPipeline"):
        if not _PIPELINE_CLASSES:
            _PIPELINE_CLASSES.update(_build_pipeline_classes())
        return _PIPELINE_CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
