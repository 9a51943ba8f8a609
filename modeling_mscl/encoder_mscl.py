"""The MSCL encoder: a one-channel EfficientNet in the Keras layout (blocks, the fused
inference path, lengths of padded rows).

Hub file: imports only the standard library, torch, transformers and its sibling Hub
files, so a saved folder loads with ``trust_remote_code=True`` without this package.
The encoder is written here rather than taken from transformers' EfficientNet: that
port passes Keras' batch-norm momentum straight to PyTorch and pads symmetrically,
and a saved model must not change when transformers does.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as torch_module

from .configuration_mscl import MSCLConfig, round_filters, round_repeats


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
