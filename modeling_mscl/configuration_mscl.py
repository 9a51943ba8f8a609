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
# What the architecture is checked against on load (see MSCLConfig._check): far above any
# EfficientNet (B7's widest layer has 2560 channels), far below what exhausts memory.
MAX_CHANNELS = 16384
MAX_STAGES = 16
MAX_MEL_BINS = 1024
MAX_WINDOW_FRAMES = 1_000_000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
_PACKAGE_PIPELINE_MODULE = "modeling_mscl.pipeline_mscl"


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
        and impl.__module__ == _PACKAGE_PIPELINE_MODULE
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
            temperature; the paper) or `"cosine"` (cosine divided by `similarity_temperature`),
            or one registered with `similarity_mscl.register_similarity`.
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
        # A config.json of another model type (e.g. "bert") must not become an MSCL model
        # with default fields: our loaders refuse it by name.
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            raise ValueError(
                f"MSCLConfig: model_type={model_type!r} is invalid: an MSCL config has "
                f"model_type {self.model_type!r} (this config.json describes another model)"
            )
        self._check()
        super().__init__(**kwargs)
        _first_config_built()

    def _check(self) -> None:
        """Raise ``ValueError`` naming the first invalid value and what the field accepts.

        Types first (a JSON string where a number belongs is named here, not as a
        ``TypeError`` deep in the model), then the ranges this architecture supports: a
        channel count of millions would allocate gigabytes before any other error.
        """

        def fail(name: str, why: str) -> None:
            raise ValueError(f"MSCLConfig: {name}={getattr(self, name)!r} is invalid: {why}")

        def check_int(name: str, low: int, high: int, value: object = None) -> None:
            value = getattr(self, name) if value is None else value
            if not _is_int(value) or not low <= value <= high:
                fail(name, f"must be an integer in [{low}, {high}]")

        def check_real(name: str, low: float, high: float, low_open: bool, high_open: bool):
            value = getattr(self, name)
            ok = _is_real(value) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low)
            ok = ok and (value < high if high_open else value <= high)
            if not ok:
                interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                fail(name, f"must be a number in {interval}")

        def check_choice(name: str, choices: tuple[str, ...], why: str = "") -> None:
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {list(choices)}{why}")

        stage_lists = (
            "kernel_sizes",
            "out_channels",
            "strides",
            "num_block_repeats",
            "expand_ratios",
        )
        for name in stage_lists:
            values = getattr(self, name)
            if not isinstance(values, list) or not all(_is_int(v) for v in values):
                fail(name, "must be a list of integers, one per stage")
        n_stages = len(self.kernel_sizes)
        if not 1 <= n_stages <= MAX_STAGES:
            fail("kernel_sizes", f"needs between 1 and {MAX_STAGES} stages")
        for name in stage_lists:
            if len(getattr(self, name)) != n_stages:
                fail(name, f"needs one entry per stage ({n_stages}, like kernel_sizes)")
        limits = {
            "kernel_sizes": (1, 31),
            "out_channels": (1, MAX_CHANNELS),
            "strides": (1, 2),
            "num_block_repeats": (1, 64),
            "expand_ratios": (1, 32),
        }
        for name, (low, high) in limits.items():
            if any(not low <= v <= high for v in getattr(self, name)):
                fail(name, f"entries must be integers in [{low}, {high}]")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            fail("kernel_sizes", "kernels must be odd")
        check_real("width_coefficient", 0.0, 8.0, True, False)
        check_real("depth_coefficient", 0.0, 8.0, True, False)
        check_int("depth_divisor", 1, 1024)
        check_int("stem_filters", 1, MAX_CHANNELS)
        check_int("top_channels", 1, MAX_CHANNELS)
        check_int("projection_dim", 1, MAX_CHANNELS)
        check_int("classifier_hidden_size", 1, MAX_CHANNELS)
        # Every channel count the model allocates, after width scaling.
        width, divisor = self.width_coefficient, self.depth_divisor
        for name in ("stem_filters", "top_channels", "out_channels"):
            for value in getattr(self, name) if name == "out_channels" else [getattr(self, name)]:
                if round_filters(value, width, divisor) > MAX_CHANNELS:
                    fail(
                        name,
                        f"scaled by width_coefficient={width} it gives "
                        f"{round_filters(value, width, divisor)} channels; at most "
                        f"{MAX_CHANNELS} are supported",
                    )
        # Each stride-2 layer (the stem and every stage that starts with stride 2) needs
        # 2 rows and halves them: both axes of the input must survive them all.
        smallest = self.min_input_size
        check_int("num_mel_bins", smallest, MAX_MEL_BINS)
        windows = self.classifier_window_frames
        if windows is not None:
            check_int("classifier_window_frames", smallest, MAX_WINDOW_FRAMES)
        check_real("squeeze_excitation_ratio", 0.0, 1.0, False, False)
        check_real("drop_connect_rate", 0.0, 1.0, False, True)
        check_real("dropout_rate", 0.0, 1.0, False, True)
        check_real("batch_norm_eps", 0.0, 1.0, True, False)
        check_real("layer_norm_eps", 0.0, 1.0, True, False)
        if _is_real(self.batch_norm_momentum) and self.batch_norm_momentum > 0.5:
            fail(
                "batch_norm_momentum",
                "must lie in (0, 0.5] (PyTorch convention; Keras' 0.99 is PyTorch's 0.01)",
            )
        check_real("batch_norm_momentum", 0.0, 0.5, True, False)
        check_real("input_rescale", 0.0, 1e6, True, False)
        check_choice("hidden_act", _ACTIVATIONS)
        check_choice("pooling", ("max", "mean"), " ('max' is the paper's)")
        # The similarity and its options: its registered definition's (imported here, so
        # that importing this file stays free of torch).
        from .similarity_mscl import get_similarity, similarity_names

        try:
            get_similarity(self.similarity)
        except ValueError as err:
            raise ValueError(f"MSCLConfig: {err}") from None
        for kind in similarity_names():
            for option, low, high in get_similarity(kind).options:
                if hasattr(self, option):
                    check_real(option, low, high, True, False)
        check_choice("classifier_head", ("linear", "mlp"))
        if not isinstance(self.freeze_encoder, bool):
            fail("freeze_encoder", "must be true or false")

    @property
    def min_input_size(self) -> int:
        """Fewest frames (and mel bins) the encoder takes: 2 per stride-2 layer, compounded
        (32 for EfficientNet-B0's stem and four stride-2 stages)."""
        return 2 ** (1 + sum(1 for s in self.strides if s == 2))

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
