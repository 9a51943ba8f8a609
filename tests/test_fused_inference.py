"""The encoder's eval-mode path without gradients (batch norm folded into the convolutions,
fused activations, chunks of rows) against the layer-by-layer forward it replaces."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from modeling_mscl import MSCLModel
from modeling_mscl import encoder_mscl as mm

from .conftest import tiny_config


def _away_from_identity(model: MSCLModel, seed: int = 0) -> MSCLModel:
    """Batch-norm statistics and affine weights as a trained model has them (a fresh model's
    are the identity, under which folding mistakes would not show)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in (
                    (module.running_mean, -0.5, 0.5),
                    (module.running_var, 0.3, 3.0),
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.3, 0.3),
                ):
                    tensor.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
    return model.eval()


def _layer_by_layer(model: MSCLModel, x: torch.Tensor):
    with torch.enable_grad():  # gradients on: the eval forward takes the unfused path
        out = model(x, output_hidden_states=True)
    return out


def _assert_same_outputs(fused, reference) -> None:
    for name in ("last_hidden_state", "pooler_output", "audio_embeds"):
        value = getattr(fused, name)
        assert value.is_contiguous(), name
        torch.testing.assert_close(value, getattr(reference, name).detach(), rtol=1e-4, atol=1e-5)
    assert len(fused.hidden_states) == len(reference.hidden_states)
    for value, expected in zip(fused.hidden_states, reference.hidden_states, strict=True):
        torch.testing.assert_close(value, expected.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "portable"])
@pytest.mark.parametrize("act", ["swish", "relu", "gelu"])
def test_fused_inference_equals_the_layer_by_layer_eval(monkeypatch, onednn, act):
    # Depth 0.5 gives stages of two blocks: residual sums and squeeze-excitation included.
    model = _away_from_identity(MSCLModel(tiny_config(depth_coefficient=0.5, hidden_act=act)))
    monkeypatch.setattr(mm, "_INFERENCE_CHUNK_ELEMENTS", 3 * 98 * 64)  # 7 rows: 3 chunks
    if not onednn:
        monkeypatch.setattr(mm, "_onednn_conv", [False])
    x = torch.randn(7, 98, 64) * 2.0 - 4.0
    reference = _layer_by_layer(model, x)
    with torch.inference_mode():
        fused = model(x, output_hidden_states=True)
    _assert_same_outputs(fused, reference)
    with torch.no_grad():  # no_grad takes the same path as inference_mode
        torch.testing.assert_close(model(x).audio_embeds, fused.audio_embeds)


def test_fused_inference_reads_non_contiguous_inputs_right():
    model = _away_from_identity(MSCLModel(tiny_config()))
    x = (torch.randn(3, 64, 98) * 2.0 - 4.0).transpose(1, 2)  # (batch, frames, mel), strided
    assert not x.is_contiguous()
    reference = _layer_by_layer(model, x)
    with torch.inference_mode():
        _assert_same_outputs(model(x, output_hidden_states=True), reference)


def test_channels_last_and_double_models_take_the_fused_path_too():
    x = torch.randn(3, 98, 64)
    for convert in (
        lambda m: m.to(memory_format=torch.channels_last),
        lambda m: m.double(),
    ):
        model = convert(_away_from_identity(MSCLModel(tiny_config())))
        inputs = x.to(next(model.parameters()).dtype)
        reference = _layer_by_layer(model, inputs)
        with torch.inference_mode():
            _assert_same_outputs(model(inputs, output_hidden_states=True), reference)


def test_fused_inference_under_bf16_autocast_follows_the_cast():
    model = _away_from_identity(MSCLModel(tiny_config()))
    x = torch.randn(3, 98, 64)
    with torch.inference_mode():
        full = model(x).audio_embeds
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = model(x).audio_embeds
    assert cast.dtype == torch.bfloat16  # as from the layer-by-layer forward: the cast applies
    torch.testing.assert_close(cast.float(), full, rtol=0.05, atol=0.05)


def test_folded_weights_follow_every_change_of_the_weights():
    model = _away_from_identity(MSCLModel(tiny_config()))
    x = torch.randn(2, 98, 64)
    with torch.no_grad():
        before = model(x).pooler_output
        # Loading other weights: in-place copies into the same tensors.
        other = _away_from_identity(MSCLModel(tiny_config()), seed=1)
        model.load_state_dict(other.state_dict())
        loaded = model(x).pooler_output
        assert not torch.allclose(before, loaded)
        torch.testing.assert_close(loaded, _layer_by_layer(other, x).pooler_output.detach())
        # A statistic changed in place, as a training step changes it.
        model.encoder.top.bn.running_var.mul_(4.0)
        changed = model(x).pooler_output
    torch.testing.assert_close(changed, _layer_by_layer(model, x).pooler_output.detach())
    assert not torch.allclose(changed, loaded)


def test_training_and_eval_with_gradients_stay_layer_by_layer():
    model = _away_from_identity(MSCLModel(tiny_config()))
    x = torch.randn(2, 98, 64)
    model.train()
    with torch.no_grad():  # training mode: batch statistics, never the folded weights
        model(x)
    assert all(not hasattr(m, "_folded") for m in model.modules())
    model.eval()
    out = model(x).audio_embeds  # eval with gradients (a frozen-statistics fine-tune)
    out.sum().backward()
    assert model.encoder.stem.conv.weight.grad is not None
    assert all(not hasattr(m, "_folded") for m in model.modules())


def test_layers_in_training_mode_or_with_hooks_are_run_one_by_one():
    model = _away_from_identity(MSCLModel(tiny_config()))
    x = torch.randn(4, 98, 64)
    # Precise-BN recalibration: an eval encoder whose norms alone gather statistics.
    norm = model.encoder.top.bn
    norm.reset_running_stats()
    norm.train()
    with torch.no_grad():
        model(x)
    assert norm.num_batches_tracked == 1 and norm.running_var.ne(1.0).all()
    norm.eval()
    # A forward hook on a layer (feature extraction, attribution tools) is still called.
    seen = []
    handle = model.encoder.stages[2][0].depthwise.register_forward_hook(
        lambda module, args, output: seen.append(output.shape)
    )
    with torch.inference_mode():
        hooked = model(x).audio_embeds
    handle.remove()
    assert len(seen) == 1
    with torch.inference_mode():
        assert model.encoder._can_fuse()
        torch.testing.assert_close(model(x).audio_embeds, hooked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("size", [(7, 6), (8, 5)])
def test_a_zero_bordered_kernel_is_keras_stride_2_padding(kernel_size, size):
    # What the folded stride-2 weights rely on: a k x k kernel in the bottom-right corner of
    # (k+1) x (k+1) zeros, padded k // 2 on every side, is Keras' (k//2 - 1, k//2) padding.
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    weight = torch.randn(4, 3, kernel_size, kernel_size, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, mm._keras_pad(kernel_size)), weight, stride=2)
    bordered = F.pad(weight, (1, 0, 1, 0))
    torch.testing.assert_close(F.conv2d(x, bordered, stride=2, padding=kernel_size // 2), expected)
