"""Conversion of the TensorFlow reference checkpoints.

The mapping tests run everywhere; the end-to-end test needs TensorFlow (CI runs it in
.venv-tf, see constraints-tf.txt) and is skipped where it cannot be imported.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from modeling_mscl import MSCLConfig, MSCLForPreTraining
from modeling_mscl.commands.convert_reference_checkpoint import main as convert_command
from modeling_mscl.convert import (
    convert_reference_checkpoint,
    keras_to_state_dict,
    state_dict_to_keras,
)

from .keras_reference import reference_like_network


def test_mapping_covers_every_weight_with_keras_shapes():
    torch.manual_seed(0)
    config = MSCLConfig()
    state = MSCLForPreTraining(config).state_dict()
    keras = state_dict_to_keras(state, config)
    # Shapes of keras.applications.EfficientNetB0 on a (time, 64, 1) input.
    assert keras["stem_conv/kernel"].shape == (3, 3, 1, 32)
    assert keras["block1a_dwconv/depthwise_kernel"].shape == (3, 3, 32, 1)
    assert keras["block2b_expand_conv/kernel"].shape == (1, 1, 24, 144)
    assert keras["block6d_se_reduce/kernel"].shape == (1, 1, 1152, 48)
    assert keras["top_conv/kernel"].shape == (1, 1, 320, 1280)
    assert keras["projection/kernel"].shape == (1280, 512)
    assert keras["normalization/count"].shape == ()
    assert "block1a_expand_conv/kernel" not in keras  # expand ratio 1: no expansion
    # 7 stages, 16 blocks; 312 encoder weights (Keras' count) + Dense 2 + LayerNorm 2 + W.
    assert len(keras) == 312 + 5
    back = keras_to_state_dict(keras, config)
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    assert set(back) == expected
    for name in expected:
        torch.testing.assert_close(back[name], state[name], rtol=0, atol=0)


def test_missing_weight_is_named():
    config = MSCLConfig()
    keras = state_dict_to_keras(MSCLForPreTraining(config).state_dict(), config)
    del keras["block3b_project_bn/moving_variance"]
    with pytest.raises(KeyError, match="block3b_project_bn/moving_variance"):
        keras_to_state_dict(keras, config)


def test_missing_tensorflow_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="tensorflow-cpu"):
        convert_reference_checkpoint(tmp_path / "checkpoint-1", tmp_path / "out")


def _randomise(tf, model, encoder, rng):
    """Random weights, batch-norm statistics and a non-trivial input Normalization."""
    for variable in model.weights:
        name, shape = variable.name, tuple(variable.shape)
        if "normalization" in name and "layer_normalization" not in name:
            # Log-mel inputs near N(-4, 2.5) after the 1/255 rescale are ~N(0, 1) after this.
            value = {"mean": [-4.0 / 255], "variance": [(2.5 / 255) ** 2], "count": 1000}
            variable.assign(np.asarray(value[name.split("/")[-1].split(":")[0]]).reshape(shape))
        elif name.endswith(("gamma:0", "moving_variance:0")):
            variable.assign(rng.uniform(0.6, 1.4, shape))
        elif name.endswith(("beta:0", "moving_mean:0", "bias:0")):
            variable.assign(rng.normal(0.0, 0.1, shape))
        elif "bilinear" in name:
            variable.assign(rng.normal(0.0, 0.05, shape))
        # Kernels keep Keras' random initialisation (weights=None).
    for layer in encoder.layers:
        if isinstance(layer, tf.keras.layers.Normalization):
            # Keras 2.15 snapshots mean/variance at build time; refresh them from the
            # variables, which are what a checkpoint stores and the converter reads.
            layer.finalize_state()


@pytest.mark.slow
def test_converted_reference_checkpoint_matches_keras(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    model, encoder = reference_like_network(tf)
    _randomise(tf, model, encoder, rng)
    # Saved as the reference does: the contrastive model is the checkpoint's root.
    prefix = tf.train.Checkpoint(model).save(str(tmp_path / "ckpt" / "checkpoint"))

    out = tmp_path / "converted"
    assert convert_command([prefix, str(out), "--sources", "drums"]) == 0
    converted = MSCLForPreTraining.from_pretrained(out).eval()

    x = rng.normal(-4.0, 2.5, (3, 98, 64)).astype(np.float32)
    keras_pooled = encoder(x[..., None], training=False).numpy()
    keras_embeds = model.embedding_model(x[..., None], training=False).numpy()
    with torch.no_grad():
        ours = converted.mscl(torch.from_numpy(x))
    pooled_err = np.abs(ours.pooler_output.numpy() - keras_pooled).max()
    embeds_err = np.abs(ours.audio_embeds.numpy() - keras_embeds).max()
    assert keras_pooled.shape == (3, 1280) and keras_embeds.shape == (3, 512)
    assert np.abs(keras_pooled).max() > 0.1  # the comparison is not between near-zeros
    assert pooled_err <= 1e-4, pooled_err
    assert embeds_err <= 1e-4, embeds_err

    # The bilinear matrix keeps its orientation: same logits for the same embeddings.
    a, p = (
        rng.normal(size=(4, 512)).astype(np.float32),
        rng.normal(size=(5, 512)).astype(np.float32),
    )
    keras_logits = model._similarity_layer(a, p).numpy()
    with torch.no_grad():
        our_logits = converted.similarity(torch.from_numpy(a), torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(our_logits, keras_logits, rtol=1e-4, atol=1e-3)
    assert json.loads((out / "training_args.json").read_text())["sources"] == ["drums"]
    assert (out / "preprocessor_config.json").is_file()
