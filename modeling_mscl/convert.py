"""Convert TensorFlow checkpoints of the MSCL reference implementation to MSCL folders.

The reference (Garoufis et al., SMC 2023, built on COLA) saves ``tf.train.Checkpoint`` of
its contrastive Keras model: an ``embedding_model`` (input (time, 64, 1) ->
``EfficientNetB0(include_top=False, weights=None, pooling="max")`` wrapped as a model named
"encoder", with its own Rescaling(1/255) and Normalization layers -> Dense(512) ->
LayerNormalization -> tanh) and a ``_similarity_layer`` holding the 512x512
``bilinear_product_weight``. The converter rebuilds that graph in Keras, restores the
checkpoint into it (so TensorFlow does the object matching), and copies every weight into
an [`MSCLForPreTraining`] model.

Layout changes: conv kernels (kh, kw, in, out) -> (out, in, kh, kw); depthwise kernels
(kh, kw, in, 1) -> (in, 1, kh, kw); Dense kernels (in, out) -> (out, in); batch norm
gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var. The
bilinear matrix is copied as it is: the reference computes
``anchor @ matmul(W, positive, transpose_b=True)`` = anchor W positive^T, the same
orientation as [`MSCLSimilarity`] (anchors @ W @ columns.T).

TensorFlow is imported only when a checkpoint is read (``pip install tensorflow-cpu``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configuration_mscl import MSCLConfig, round_repeats
from .feature_extraction_mscl import load_feature_extractor
from .modeling_mscl import MSCLForPreTraining

__all__ = [
    "build_reference_network",
    "convert_reference_checkpoint",
    "keras_to_state_dict",
    "read_reference_checkpoint",
    "state_dict_to_keras",
]

# Keras' EfficientNet lays the input out as (batch, time, mel, 1) and has these many mel bins
# in the reference; our MSCLConfig() defaults are the same B0.
REFERENCE_EMBEDDING_DIM = 512
REFERENCE_INPUT_SHAPE = (None, 64, 1)


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            "Converting reference checkpoints needs TensorFlow: pip install 'tensorflow-cpu==2.15.*' "
            "(it needs numpy<2: use an environment of its own)"
        ) from err
    return tf


# ---------------------------------------------------------------------- name mapping


def _block_names(config: MSCLConfig) -> list[tuple[str, str, int]]:
    """(torch prefix, Keras block prefix, expand ratio) of every MBConv block, in order."""
    names = []
    for stage, repeats in enumerate(config.num_block_repeats):
        for j in range(round_repeats(repeats, config.depth_coefficient)):
            # Keras names blocks "block{stage + 1}{letter}", letters counting from "a".
            names.append(
                (
                    f"mscl.encoder.stages.{stage}.{j}",
                    f"block{stage + 1}{chr(ord('a') + j)}",
                    config.expand_ratios[stage],
                )
            )
    return names


def _layer_map(config: MSCLConfig) -> list[tuple[str, str, str]]:
    """(torch module, Keras layer name, kind) for every layer that holds weights."""
    layers = [
        ("mscl.encoder.normalization", "normalization", "normalization"),
        ("mscl.encoder.stem.conv", "stem_conv", "conv"),
        ("mscl.encoder.stem.bn", "stem_bn", "bn"),
    ]
    for torch_prefix, keras_prefix, expand_ratio in _block_names(config):
        if expand_ratio != 1:
            layers += [
                (f"{torch_prefix}.expand.conv", f"{keras_prefix}_expand_conv", "conv"),
                (f"{torch_prefix}.expand.bn", f"{keras_prefix}_expand_bn", "bn"),
            ]
        layers += [
            (f"{torch_prefix}.depthwise.conv", f"{keras_prefix}_dwconv", "depthwise"),
            (f"{torch_prefix}.depthwise.bn", f"{keras_prefix}_bn", "bn"),
        ]
        if 0 < config.squeeze_excitation_ratio <= 1:
            layers += [
                (f"{torch_prefix}.se.reduce", f"{keras_prefix}_se_reduce", "conv_bias"),
                (f"{torch_prefix}.se.expand", f"{keras_prefix}_se_expand", "conv_bias"),
            ]
        layers += [
            (f"{torch_prefix}.project.conv", f"{keras_prefix}_project_conv", "conv"),
            (f"{torch_prefix}.project.bn", f"{keras_prefix}_project_bn", "bn"),
        ]
    layers += [
        ("mscl.encoder.top.conv", "top_conv", "conv"),
        ("mscl.encoder.top.bn", "top_bn", "bn"),
        ("mscl.projection", "projection", "dense"),
        ("mscl.layer_norm", "layer_norm", "layer_norm"),
        ("similarity", "similarity", "bilinear"),
    ]
    return layers


# Keras weight name -> (torch parameter name, layout change) for each kind of layer.
_KIND_WEIGHTS: dict[str, list[tuple[str, str, str]]] = {
    "normalization": [("mean", "mean", ""), ("variance", "variance", ""), ("count", "count", "")],
    "conv": [("kernel", "weight", "hwio->oihw")],
    "conv_bias": [("kernel", "weight", "hwio->oihw"), ("bias", "bias", "")],
    "depthwise": [("depthwise_kernel", "weight", "hwi1->i1hw")],
    "bn": [
        ("gamma", "weight", ""),
        ("beta", "bias", ""),
        ("moving_mean", "running_mean", ""),
        ("moving_variance", "running_var", ""),
    ],
    "dense": [("kernel", "weight", "transpose"), ("bias", "bias", "")],
    "layer_norm": [("gamma", "weight", ""), ("beta", "bias", "")],
    "bilinear": [("bilinear_product_weight", "weight", "")],
}
_TO_TORCH = {
    "": lambda a: a,
    "hwio->oihw": lambda a: a.transpose(3, 2, 0, 1),
    "hwi1->i1hw": lambda a: a.transpose(2, 3, 0, 1),
    "transpose": lambda a: a.T,
}
_TO_KERAS = {
    "": lambda a: a,
    "hwio->oihw": lambda a: a.transpose(2, 3, 1, 0),
    "hwi1->i1hw": lambda a: a.transpose(2, 3, 0, 1),
    "transpose": lambda a: a.T,
}


def keras_to_state_dict(
    weights: Mapping[str, np.ndarray], config: MSCLConfig
) -> dict[str, torch.Tensor]:
    """Map Keras weights, keyed ``"{layer}/{weight}"`` (e.g. ``"stem_bn/gamma"``), to the
    state dict of [`MSCLForPreTraining`]. The projection Dense is ``"projection/..."``, the
    LayerNormalization ``"layer_norm/..."`` and the bilinear matrix
    ``"similarity/bilinear_product_weight"``. Raises ``KeyError`` naming a missing weight."""
    state: dict[str, torch.Tensor] = {}
    for module, layer, kind in _layer_map(config):
        for keras_name, torch_name, layout in _KIND_WEIGHTS[kind]:
            key = f"{layer}/{keras_name}"
            if key not in weights:
                raise KeyError(f"the reference checkpoint has no weight {key!r}")
            array = np.asarray(_TO_TORCH[layout](np.asarray(weights[key])))
            tensor = torch.from_numpy(np.array(array, order="C"))
            # Keras keeps the Normalization count as int64 and everything else as float32.
            state[f"{module}.{torch_name}"] = (
                tensor.long() if torch_name == "count" else tensor.float()
            )
    return state


def state_dict_to_keras(
    state: Mapping[str, torch.Tensor], config: MSCLConfig
) -> dict[str, np.ndarray]:
    """The inverse of [`keras_to_state_dict`] (used to check the mapping both ways)."""
    weights = {}
    for module, layer, kind in _layer_map(config):
        for keras_name, torch_name, layout in _KIND_WEIGHTS[kind]:
            array = state[f"{module}.{torch_name}"].detach().cpu().numpy()
            weights[f"{layer}/{keras_name}"] = np.array(_TO_KERAS[layout](array), order="C")
    return weights


# ---------------------------------------------------------------------- TensorFlow side


def build_reference_network(embedding_dim: int = REFERENCE_EMBEDDING_DIM) -> Any:
    """Rebuild the reference's trackable structure in Keras (weights freshly initialised).

    Returns a Keras model with the attributes the reference checkpoint is keyed by:
    ``embedding_model`` (the functional input -> encoder -> Dense -> LayerNormalization ->
    tanh model) and ``_similarity_layer`` (a layer holding ``bilinear_product_weight``).
    """
    tf = _import_tensorflow()

    class BilinearSimilarity(tf.keras.layers.Layer):
        """Holds the D x D matrix W of s(u, v) = u W v^T under the reference's weight name."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dim = dim

        def build(self, input_shape: Any = None) -> None:
            self.matrix = self.add_weight(
                name="bilinear_product_weight",
                shape=(self.dim, self.dim),
                initializer="random_normal",
                trainable=True,
            )
            super().build(input_shape)

        def call(self, anchors: Any, positives: Any) -> Any:
            return tf.linalg.matmul(
                anchors, tf.linalg.matmul(self.matrix, positives, transpose_b=True)
            )

    class ContrastiveRoot(tf.keras.Model):
        """The checkpoint's root object: only its tracked attributes matter here."""

        def __init__(self, embedding_model: Any, similarity: Any) -> None:
            super().__init__()
            self.embedding_model = embedding_model
            self._similarity_layer = similarity

    inputs = tf.keras.layers.Input(REFERENCE_INPUT_SHAPE)
    efficient_net = tf.keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=REFERENCE_INPUT_SHAPE, pooling="max"
    )
    encoder = tf.keras.Model(efficient_net.inputs, efficient_net.outputs, name="encoder")
    x = encoder(inputs)
    x = tf.keras.layers.Dense(embedding_dim)(x)
    x = tf.keras.layers.LayerNormalization()(x)
    outputs = tf.keras.layers.Activation("tanh")(x)
    embedding_model = tf.keras.Model(inputs, outputs)
    similarity = BilinearSimilarity(embedding_dim)
    similarity.build()
    return ContrastiveRoot(embedding_model, similarity)


def _short(variable: Any) -> str:
    """``"block1a_bn/gamma:0"`` -> ``"gamma"``."""
    return variable.name.split("/")[-1].split(":")[0]


def _named_weights(root: Any) -> dict[str, np.ndarray]:
    """Weights of the rebuilt network keyed as [`keras_to_state_dict`] expects."""
    tf = _import_tensorflow()
    embedding_model = root.embedding_model
    weights: dict[str, np.ndarray] = {}
    encoder = next(layer for layer in embedding_model.layers if isinstance(layer, tf.keras.Model))
    for layer in encoder.layers:
        # Keras names the Normalization layer itself ("normalization", "normalization_1", ...).
        name = "normalization" if isinstance(layer, tf.keras.layers.Normalization) else layer.name
        for variable in layer.weights:
            weights[f"{name}/{_short(variable)}"] = variable.numpy()
    for layer in embedding_model.layers:
        if isinstance(layer, tf.keras.layers.Dense):
            name = "projection"
        elif isinstance(layer, tf.keras.layers.LayerNormalization):
            name = "layer_norm"
        else:
            continue
        for variable in layer.weights:
            weights[f"{name}/{_short(variable)}"] = variable.numpy()
    for variable in root._similarity_layer.weights:
        weights[f"similarity/{_short(variable)}"] = variable.numpy()
    return weights


def read_reference_checkpoint(
    checkpoint: str | os.PathLike, embedding_dim: int = REFERENCE_EMBEDDING_DIM
) -> dict[str, np.ndarray]:
    """Restore a reference ``tf.train.Checkpoint`` and return its weights by Keras name.

    ``checkpoint`` is a checkpoint prefix (``.../checkpoint-10``, without ``.index``) or a
    folder whose ``checkpoint`` file names the latest one. The root may be the contrastive
    model itself (``tf.train.Checkpoint(model)``, as the reference saves it) or sit under
    one keyword (``tf.train.Checkpoint(model=...)``). Optimizer slots are ignored; any
    model weight the checkpoint lacks raises an error.
    """
    tf = _import_tensorflow()
    path = str(checkpoint)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint found in {path}")
        path = latest
    if not os.path.exists(path + ".index"):
        raise FileNotFoundError(f"{path}.index not found: pass the checkpoint prefix")
    keys = [name for name, _ in tf.train.list_variables(path)]
    prefixes = {key.split("embedding_model/")[0] for key in keys if "embedding_model/" in key}
    prefix = prefixes.pop() if len(prefixes) == 1 else None
    if prefix is None or prefix.count("/") > 1:
        raise ValueError(
            f"{path} does not look like a checkpoint of the reference contrastive model "
            "(expected one 'embedding_model' object at its root or one level below)"
        )
    root = build_reference_network(embedding_dim)
    saver = (
        tf.train.Checkpoint(**{prefix.rstrip("/"): root}) if prefix else tf.train.Checkpoint(root)
    )
    status = saver.restore(path)
    status.assert_existing_objects_matched()
    status.expect_partial()  # optimizer slots and the save counter have no use here
    return _named_weights(root)


def convert_reference_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    sources: list[str] | None = None,
) -> Path:
    """Convert a reference checkpoint into an MSCL pre-training folder.

    Writes `MSCLForPreTraining` (encoder, projection and bilinear similarity; `AutoModel`
    loads the encoder from it) and the feature extractor to `output_dir`. With `sources`
    (the sources the checkpoint was trained on, e.g. `["drums"]`), also writes a
    `training_args.json` that the model card reads.
    """
    config = MSCLConfig()
    weights = read_reference_checkpoint(checkpoint, config.projection_dim)
    state = keras_to_state_dict(weights, config)
    model = MSCLForPreTraining(config)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise RuntimeError(f"weight mapping mismatch: missing {missing[:5]}, extra {extra[:5]}")
    # strict=False only for num_batches_tracked, which Keras does not have.
    model.load_state_dict(state, strict=False)
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    load_feature_extractor(num_mel_bins=config.num_mel_bins).save_pretrained(output_dir)
    if sources:
        # Facts of the reference's pre-training script: MagnaTagATune, 128 pairs per
        # minibatch, Adam at 1e-3 halved half-way.
        args = {
            "objective": "mscl",
            "sources": list(sources),
            "dataset": "MagnaTagATune",
            "batch_size": 128,
            "learning_rate": 1e-3,
            "converted_from": Path(str(checkpoint)).name,
        }
        (output_dir / "training_args.json").write_text(json.dumps(args, indent=2) + "\n")
    return output_dir
