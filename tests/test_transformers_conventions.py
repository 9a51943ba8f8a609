"""What transformers' users expect of a model: hidden states from the config and from every
head, the right main input, export and compile that leave the model exact, gradient
checkpointing, and device-map splitting at block boundaries."""

from __future__ import annotations

import copy

import pytest
import torch

from modeling_mscl import MSCLForAudioClassification, MSCLForPreTraining, MSCLModel

from .conftest import tiny_config


def _features(batch: int = 3, frames: int = 98, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 64, generator=generator) * 40


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal up to float rounding, relative to the scale of the features (the eager eval
    path folds batch norm into the convolutions; traced graphs run the layers one by one)."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual - expected).abs().max() / scale).item() <= rel


def _encoder(**overrides) -> MSCLModel:
    torch.manual_seed(0)
    return MSCLModel(tiny_config(**overrides)).eval()


# ----------------------------------------------------------------------- hidden states


def test_output_hidden_states_falls_back_to_the_config():
    model = _encoder(output_hidden_states=True)
    with torch.no_grad():
        out = model(_features())
    stages = len(model.config.kernel_sizes)
    assert out.hidden_states is not None and len(out.hidden_states) == stages + 1
    with torch.no_grad():
        assert model(_features(), output_hidden_states=False).hidden_states is None


@pytest.mark.parametrize("head", [MSCLForAudioClassification, MSCLForPreTraining])
def test_heads_accept_and_return_hidden_states(head):
    torch.manual_seed(0)
    model = head(tiny_config(num_labels=3)).eval()
    x = _features(2)
    with torch.no_grad():
        out = model(x, x, output_hidden_states=True) if head is MSCLForPreTraining else None
        out = out if out is not None else model(x, output_hidden_states=True)
    stages = len(model.config.kernel_sizes)
    assert len(out.hidden_states) == stages + 1
    assert out.hidden_states[0].shape[0] == (4 if head is MSCLForPreTraining else 2)
    with torch.no_grad():
        plain = model(x, x) if head is MSCLForPreTraining else model(x)
    assert getattr(plain, "hidden_states", None) is None


def test_pretraining_main_input_is_its_first_argument():
    # The Trainer counts tokens and FLOPs from the input named main_input_name.
    assert MSCLForPreTraining.main_input_name == "anchor_features"
    assert MSCLModel.main_input_name == "input_features"
    assert MSCLForAudioClassification.main_input_name == "input_features"


# ------------------------------------------------------------- export, compile, tracing


class _Pooled(torch.nn.Module):
    """The encoder's pooled feature and embedding, as plain tensors (what exporters need)."""

    def __init__(self, model: MSCLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features, attention_mask=None):
        out = self.model(features, attention_mask=attention_mask)
        return out.pooler_output, out.audio_embeds


def _mask(batch: int, frames: int) -> torch.Tensor:
    # One full row (so the padded feature map keeps the batch's length), shorter ones.
    lengths = torch.tensor([frames, frames - 37, frames // 2])[:batch]
    return (torch.arange(frames)[None] < lengths[:, None]).long()


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_torch_export_under_no_grad_equals_eager(masked):
    model = _encoder()
    x = _features(3, 160)
    mask = _mask(3, 160) if masked else None
    with torch.no_grad():
        eager = model(x, attention_mask=mask)
        args = (x,) if mask is None else (x, mask)
        exported = torch.export.export(_Pooled(model), args)
        pooled, embeds = exported.module()(*args)
    _assert_close(pooled, eager.pooler_output)
    _assert_close(embeds, eager.audio_embeds)


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_compile_fullgraph_under_no_grad_equals_eager(masked):
    torch._dynamo.reset()
    model = _encoder()
    x = _features(3, 160)
    mask = _mask(3, 160) if masked else None
    compiled = torch.compile(_Pooled(model), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager = model(x, attention_mask=mask)
        pooled, embeds = compiled(x, mask)
    _assert_close(pooled, eager.pooler_output)
    _assert_close(embeds, eager.audio_embeds)


def test_jit_trace_under_no_grad_equals_eager_and_leaves_the_model_exact():
    model = _encoder()
    x = _features(2)
    with torch.no_grad():
        before = model(x).pooler_output
        traced = torch.jit.trace(_Pooled(model), (x,), check_trace=False)
        _assert_close(traced(x)[0], before)
        assert torch.equal(model(x).pooler_output, before)


class _Interrupted(RuntimeError):
    pass


class _FailsAfterTheModel(torch.nn.Module):
    """A module whose trace runs the whole encoder, then fails: a failed export."""

    def __init__(self, model: MSCLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features):
        self.model(features)
        raise _Interrupted("export interrupted after the encoder ran")


@pytest.mark.parametrize("tracer", ["jit", "export", "onnx"])
def test_a_failed_trace_leaves_the_model_exact(tracer):
    model = _encoder()
    x = _features(2)
    with torch.no_grad():
        before = model(x).pooler_output.clone()
        with pytest.raises(Exception):  # noqa: B017 - each tracer wraps the error its own way
            if tracer == "jit":
                torch.jit.trace(_FailsAfterTheModel(model), (x,))
            elif tracer == "export":
                torch.export.export(_FailsAfterTheModel(model), (x,))
            else:
                pytest.importorskip("onnxscript")
                torch.onnx.export(_FailsAfterTheModel(model), (x,), dynamo=True)
        assert torch.equal(model(x).pooler_output, before)
        # New weights after the failed trace are seen, not what the tracer left cached.
        model.encoder.top.bn.running_mean.add_(1.0)
        changed = model(x).pooler_output
    assert not torch.equal(changed, before)
    reference = copy.deepcopy(model).train().eval()
    with torch.no_grad():
        _assert_close(changed, reference(x).pooler_output, 1e-6)


def test_the_fused_cache_never_serves_replaced_weights():
    model = _encoder()
    x = _features(2)
    with torch.no_grad():
        model(x)  # fills the cache
        other = _encoder(layer_norm_eps=1e-3)
        torch.manual_seed(1)
        for p in other.parameters():
            p.data = torch.randn_like(p)
        # Weights assigned from another model (new tensors, versions start again).
        model.load_state_dict(other.state_dict(), assign=True)
        torch.testing.assert_close(model(x).pooler_output, other(x).pooler_output)


# ------------------------------------------------------------- gradient checkpointing


def _step_grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model(x, x.flip(0))
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients_and_updates_bn_once():
    assert MSCLForPreTraining.supports_gradient_checkpointing
    torch.manual_seed(0)
    config = tiny_config(drop_connect_rate=0.0)
    plain = MSCLForPreTraining(config).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing
    x = _features(4)
    grads = _step_grads(plain, x)
    grads_ckpt = _step_grads(checkpointed, x)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-4, atol=1e-6)
    # Batch-norm statistics moved once per step, as without checkpointing.
    buffers = dict(plain.named_buffers())
    for name, value in checkpointed.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=1e-6, atol=1e-7, msg=name)
    checkpointed.gradient_checkpointing_disable()
    assert not checkpointed.is_gradient_checkpointing


def test_gradient_checkpointing_with_stochastic_depth_trains():
    # Recomputation draws the same drop mask as the first pass (the RNG state is kept).
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config(drop_connect_rate=0.5)).train()
    model.gradient_checkpointing_enable()
    loss = model(_features(4), _features(4, seed=1)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.mscl.parameters()
        if p.requires_grad
    )


# ------------------------------------------------------------------- device map


def test_no_split_modules_keep_each_block_whole():
    assert "MSCLBlock" in MSCLModel._no_split_modules
    model = _encoder()
    names = {type(m).__name__ for m in model.modules()}
    assert set(MSCLModel._no_split_modules) <= names
