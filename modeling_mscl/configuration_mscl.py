"""Configuration of the MSCL encoder (EfficientNet in the Keras layout) and its heads.

Hub file: imports only the standard library and transformers, so a saved model keeps
loading with ``trust_remote_code=True`` where this package is not installed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from transformers import PretrainedConfig

__all__ = ["MSCLConfig", "round_filters", "round_repeats"]

# EfficientNet-B0 stage layout (Tan & Le 2019; identical in keras.applications).
_B0_KERNEL_SIZES = (3, 3, 5, 3, 5, 5, 3)
_B0_OUT_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
_B0_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_B0_EXPAND_RATIOS = (1, 6, 6, 6, 6, 6, 6)

_ACTIVATIONS = ("swish", "silu", "relu", "gelu")


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width_coefficient`` and round it as Keras' EfficientNet does."""
    filters = filters * width_coefficient
    new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    # Never round down by more than 10 %.
    if new_filters < 0.9 * filters:
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale a stage's block count by ``depth_coefficient`` (ceil, as Keras does)."""
    return int(math.ceil(depth_coefficient * repeats))


# The module the package's pipeline classes live in (see `_PipelineDeclarations`).
_PACKAGE_MODELING_MODULE = "modeling_mscl.modeling_mscl"


class _PipelineDeclarations(dict):
    """A folder's `custom_pipelines` (task -> its pipeline class in the folder's code), as
    the config holds it in memory.

    transformers' `pipeline()` runs a task a folder declares from the folder's code, so
    only with `trust_remote_code=True`. Where this package is imported, its pipeline
    classes are registered with transformers' own pipeline registry (see
    `modeling_mscl.hub.register_pipelines`): for such a task the declaration answers "not
    declared here" to `in`, and `pipeline()` takes the registered, installed class, without
    running downloaded code. Listing, indexing and saving see every declaration (a folder
    still names its task, so `pipeline(model=folder)` infers it, and keeps declaring it for
    users without the package).
    """

    def __contains__(self, task: object) -> bool:
        return super().__contains__(task) and not _registered_by_package(task, self[task])


def _registered_by_package(task: Any, declaration: Any) -> bool:
    """Whether transformers' pipeline registry maps ``task`` to the installed package's class
    of the name ``declaration`` gives (registration imports transformers' pipelines; until
    then nothing is registered)."""
    pipelines = sys.modules.get("transformers.pipelines")
    if pipelines is None or not isinstance(declaration, dict):
        return False
    registered = pipelines.PIPELINE_REGISTRY.supported_tasks.get(task) or {}
    impl = registered.get("impl")
    name = str(declaration.get("impl", "")).rsplit(".", 1)[-1]
    return (
        isinstance(impl, type)
        and impl.__name__ == name
        and impl.__module__ == _PACKAGE_MODELING_MODULE
    )


# Set by the modeling_mscl package, which registers its model classes with the Auto classes
# when the first config is built rather than at import (the model classes are the slow part
# of the import). None where this file runs as a Hub folder's remote code.
on_first_config: Callable[[], None] | None = None


def _first_config_built() -> None:
    global on_first_config
    hook, on_first_config = on_first_config, None
    if hook is not None:
        hook()


class MSCLConfig(PretrainedConfig):
    r"""Configuration of [`MSCLModel`] and its pre-training / classification heads.

    The defaults give the model of Garoufis et al. (SMC 2023): a one-channel
    EfficientNet-B0 over 64-bin log-mel windows, global max pooling to a 1280-d
    feature, and a Linear(1280 -> 512) + LayerNorm + tanh projection.

    Args:
        num_mel_bins (`int`, *optional*, defaults to 64):
            Mel bins of the input features (the frequency axis of the image).
        width_coefficient (`float`, *optional*, defaults to 1.0):
            EfficientNet channel multiplier (1.0 is B0). Small values give tiny test models.
        depth_coefficient (`float`, *optional*, defaults to 1.0):
            EfficientNet block-count multiplier (1.0 is B0).
        depth_divisor (`int`, *optional*, defaults to 8):
            Channel counts are rounded to multiples of this.
        kernel_sizes (`list[int]`, *optional*, defaults to B0's `[3, 3, 5, 3, 5, 5, 3]`):
            Depthwise kernel size of each stage.
        stem_filters (`int`, *optional*, defaults to 32):
            Output channels of the stem convolution before width scaling. Each stage's input
            is the previous stage's output, so stage inputs are derived, not stored.
        out_channels (`list[int]`, *optional*, defaults to B0's `[16, 24, 40, 80, 112, 192, 320]`):
            Output channels of each stage before width scaling.
        strides (`list[int]`, *optional*, defaults to B0's `[1, 2, 2, 2, 1, 2, 1]`):
            Stride of the first block of each stage (1 or 2).
        num_block_repeats (`list[int]`, *optional*, defaults to B0's `[1, 2, 2, 3, 3, 4, 1]`):
            Blocks per stage before depth scaling.
        expand_ratios (`list[int]`, *optional*, defaults to B0's `[1, 6, 6, 6, 6, 6, 6]`):
            Inverted-bottleneck expansion of each stage.
        squeeze_excitation_ratio (`float`, *optional*, defaults to 0.25):
            Squeeze-excitation width relative to a block's input channels (0 disables it).
        top_channels (`int`, *optional*, defaults to 1280):
            Channels of the final 1x1 convolution before width scaling; after scaling this
            is the size of `pooler_output`, the representation used downstream.
        hidden_act (`str`, *optional*, defaults to `"swish"`):
            Activation of the encoder (`"swish"`/`"silu"`, `"relu"`, `"gelu"`).
        drop_connect_rate (`float`, *optional*, defaults to 0.2):
            Stochastic-depth rate of the last block; earlier blocks use linearly smaller rates.
        dropout_rate (`float`, *optional*, defaults to 0.2):
            Dropout before the classification head (Keras' top dropout).
        batch_norm_eps (`float`, *optional*, defaults to 1e-3):
            Batch-norm epsilon (Keras' EfficientNet value).
        batch_norm_momentum (`float`, *optional*, defaults to 0.01):
            Batch-norm momentum in PyTorch's convention (weight of the new batch). Keras'
            0.99 is PyTorch's 0.01; values above 0.5 are rejected as likely Keras-style.
        input_rescale (`float`, *optional*, defaults to 1/255):
            Factor applied to the input features first, as the Keras model's Rescaling layer.
        pooling (`str`, *optional*, defaults to `"max"`):
            Global pooling of the last feature map: `"max"` (the paper) or `"mean"`.
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the contrastive embedding `audio_embeds`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-3):
            Epsilon of the projection's LayerNorm (Keras' default).
        similarity (`str`, *optional*, defaults to `"bilinear"`):
            Pre-training similarity: `"bilinear"` (u^T W v with a trainable W, no
            temperature; the paper) or `"cosine"` (cosine divided by `similarity_temperature`).
        similarity_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the cosine similarity (unused for `"bilinear"`).
        bilinear_logit_scale (`float`, *optional*, defaults to 1.0):
            Factor on the bilinear logits, `s * u^T W v` (unused for `"cosine"`). 1.0 is the
            paper's. Under Adam every entry of the D x D matrix W moves by about the
            learning rate per step, which moves the logits of D-d tanh embeddings by up to
            ~lr * D^2 / 2: tens at D = 512, lr 1e-3. `1 / projection_dim` keeps the
            bilinear form with updates of a fraction of a logit (a named departure for
            small runs; see docs/results.md).
        classifier_head (`str`, *optional*, defaults to `"linear"`):
            Head of [`MSCLForAudioClassification`]: `"linear"` or `"mlp"` (one hidden layer).
        classifier_hidden_size (`int`, *optional*, defaults to 512):
            Hidden width of the `"mlp"` head.
        freeze_encoder (`bool`, *optional*, defaults to `False`):
            Keep the encoder frozen (no gradients, eval-mode batch norm) in the classifier.
        classifier_window_frames (`int`, *optional*):
            When set (probe heads use 98), the classifier cuts longer inputs into
            non-overlapping windows of this many frames and aggregates the windows' outputs
            as the probe protocol does: sum of logits (single-label) or mean of sigmoids
            (multi-label). `None` pools the whole input at once.
    """

    model_type = "mscl"

    def __init__(
        self,
        num_mel_bins: int = 64,
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        depth_divisor: int = 8,
        kernel_sizes: list[int] | tuple[int, ...] = _B0_KERNEL_SIZES,
        stem_filters: int = 32,
        out_channels: list[int] | tuple[int, ...] = _B0_OUT_CHANNELS,
        strides: list[int] | tuple[int, ...] = _B0_STRIDES,
        num_block_repeats: list[int] | tuple[int, ...] = _B0_REPEATS,
        expand_ratios: list[int] | tuple[int, ...] = _B0_EXPAND_RATIOS,
        squeeze_excitation_ratio: float = 0.25,
        top_channels: int = 1280,
        hidden_act: str = "swish",
        drop_connect_rate: float = 0.2,
        dropout_rate: float = 0.2,
        batch_norm_eps: float = 1e-3,
        batch_norm_momentum: float = 0.01,
        input_rescale: float = 1.0 / 255.0,
        pooling: str = "max",
        projection_dim: int = 512,
        layer_norm_eps: float = 1e-3,
        similarity: str = "bilinear",
        similarity_temperature: float = 0.1,
        bilinear_logit_scale: float = 1.0,
        classifier_head: str = "linear",
        classifier_hidden_size: int = 512,
        freeze_encoder: bool = False,
        classifier_window_frames: int | None = None,
        **kwargs,
    ):
        self.num_mel_bins = num_mel_bins
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.depth_divisor = depth_divisor
        self.kernel_sizes = list(kernel_sizes)
        self.stem_filters = stem_filters
        self.out_channels = list(out_channels)
        self.strides = list(strides)
        self.num_block_repeats = list(num_block_repeats)
        self.expand_ratios = list(expand_ratios)
        self.squeeze_excitation_ratio = squeeze_excitation_ratio
        self.top_channels = top_channels
        self.hidden_act = hidden_act
        self.drop_connect_rate = drop_connect_rate
        self.dropout_rate = dropout_rate
        self.batch_norm_eps = batch_norm_eps
        self.batch_norm_momentum = batch_norm_momentum
        self.input_rescale = input_rescale
        self.pooling = pooling
        self.projection_dim = projection_dim
        self.layer_norm_eps = layer_norm_eps
        self.similarity = similarity
        self.similarity_temperature = similarity_temperature
        self.bilinear_logit_scale = bilinear_logit_scale
        self.classifier_head = classifier_head
        self.classifier_hidden_size = classifier_hidden_size
        self.freeze_encoder = freeze_encoder
        self.classifier_window_frames = classifier_window_frames
        self._check()
        super().__init__(**kwargs)
        _first_config_built()

    def _check(self) -> None:
        """Raise ``ValueError`` naming the first invalid value."""

        def fail(name: str, why: str) -> None:
            raise ValueError(f"MSCLConfig: {name}={getattr(self, name)!r} is invalid: {why}")

        for name in (
            "num_mel_bins",
            "depth_divisor",
            "stem_filters",
            "top_channels",
            "projection_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "must be a positive integer")
        windows = self.classifier_window_frames
        if windows is not None and (not isinstance(windows, int) or windows < 32):
            fail("classifier_window_frames", "must be None or an integer >= 32")
        if self.classifier_hidden_size < 1:
            fail("classifier_hidden_size", "must be a positive integer")
        for name in (
            "width_coefficient",
            "depth_coefficient",
            "input_rescale",
            "similarity_temperature",
            "bilinear_logit_scale",
        ):
            if not getattr(self, name) > 0:
                fail(name, "must be > 0")
        for name in ("batch_norm_eps", "layer_norm_eps"):
            if not getattr(self, name) > 0:
                fail(name, "must be > 0")
        for name in ("drop_connect_rate", "dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "must lie in [0, 1)")
        if not 0.0 <= self.squeeze_excitation_ratio <= 1.0:
            fail("squeeze_excitation_ratio", "must lie in [0, 1]")
        if not 0.0 < self.batch_norm_momentum <= 0.5:
            fail(
                "batch_norm_momentum",
                "must lie in (0, 0.5] (PyTorch convention; Keras' 0.99 is PyTorch's 0.01)",
            )
        stage_lists = (
            "kernel_sizes",
            "out_channels",
            "strides",
            "num_block_repeats",
            "expand_ratios",
        )
        n_stages = len(self.kernel_sizes)
        if n_stages == 0:
            fail("kernel_sizes", "needs at least one stage")
        for name in stage_lists:
            values = getattr(self, name)
            if len(values) != n_stages:
                fail(name, f"needs one entry per stage ({n_stages}, like kernel_sizes)")
            if any(not isinstance(v, int) or v < 1 for v in values):
                fail(name, "entries must be positive integers")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            fail("kernel_sizes", "kernels must be odd")
        if any(s not in (1, 2) for s in self.strides):
            fail("strides", "strides must be 1 or 2")
        if self.hidden_act not in _ACTIVATIONS:
            fail("hidden_act", f"choose one of {_ACTIVATIONS}")
        if self.pooling not in ("max", "mean"):
            fail("pooling", "choose 'max' (the paper) or 'mean'")
        if self.similarity not in ("bilinear", "cosine"):
            fail("similarity", "choose 'bilinear' (the paper) or 'cosine'")
        if self.classifier_head not in ("linear", "mlp"):
            fail("classifier_head", "choose 'linear' or 'mlp'")

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "custom_pipelines" and type(value) is dict:
            value = _PipelineDeclarations(value)
        super().__setattr__(key, value)

    @property
    def stem_channels(self) -> int:
        """Output channels of the stem convolution after width scaling."""
        return round_filters(self.stem_filters, self.width_coefficient, self.depth_divisor)

    @property
    def encoder_hidden_size(self) -> int:
        """Size of `pooler_output`: the top convolution's channels after width scaling."""
        return round_filters(self.top_channels, self.width_coefficient, self.depth_divisor)
