"""The reference's contrastive Keras model, for the tests that need TensorFlow.

Written from the reference's description (Garoufis et al., SMC 2023, built on COLA),
independently of modeling_mscl.convert: ``embedding_model`` (input (time, 64, 1) ->
EfficientNetB0 without top, global max pooling, wrapped as a model named "encoder" ->
Dense(512) -> LayerNormalization -> tanh) and ``_similarity_layer`` holding the 512x512
``bilinear_product_weight`` (logits = anchor W positive^T). Only the callers import
TensorFlow, and pass the module in.
"""

from __future__ import annotations

from typing import Any

INPUT_SHAPE = (None, 64, 1)
EMBEDDING_DIM = 512


def reference_like_network(tf: Any, drop_connect_rate: float = 0.2) -> tuple[Any, Any]:
    """(contrastive model, encoder). The contrastive model's `embedding_model` and
    `_similarity_layer` attributes key a checkpoint as the reference's do. Keras' default
    stochastic depth is 0.2 (what the reference trained with)."""

    class Bilinear(tf.keras.layers.Layer):
        def __init__(self, dim):
            super().__init__()
            self._dim = dim

        def build(self, _):
            # Keras' random_normal: mean 0, std 0.05.
            self._w = self.add_weight(
                shape=(self._dim, self._dim),
                initializer="random_normal",
                trainable=True,
                name="bilinear_product_weight",
            )

        def call(self, anchor, positive):
            return tf.linalg.matmul(anchor, tf.linalg.matmul(self._w, positive, transpose_b=True))

    class Contrastive(tf.keras.Model):
        def __init__(self, embedding_model, similarity):
            super().__init__()
            self.embedding_model = embedding_model
            self._similarity_layer = similarity

    inputs = tf.keras.layers.Input(INPUT_SHAPE)
    net = tf.keras.applications.EfficientNetB0(
        include_top=False,
        weights=None,
        input_shape=INPUT_SHAPE,
        pooling="max",
        drop_connect_rate=drop_connect_rate,
    )
    encoder = tf.keras.Model(net.inputs, net.outputs, name="encoder")
    x = tf.keras.layers.Dense(EMBEDDING_DIM, activation="linear")(encoder(inputs))
    x = tf.keras.layers.LayerNormalization()(x)
    embedding_model = tf.keras.Model(inputs, tf.keras.layers.Activation("tanh")(x))
    similarity = Bilinear(EMBEDDING_DIM)
    zeros = tf.zeros((1, EMBEDDING_DIM), dtype=tf.keras.backend.floatx())
    similarity(zeros, zeros)
    return Contrastive(embedding_model, similarity), encoder


def named_variables(tf: Any, model: Any, encoder: Any) -> dict[str, Any]:
    """Every variable of the network keyed ``"{layer}/{weight}"``, as
    ``modeling_mscl.convert.keras_to_state_dict`` expects (``"stem_bn/moving_variance"``,
    ``"projection/kernel"``, ``"similarity/bilinear_product_weight"``, ...)."""

    def short(variable: Any) -> str:
        return variable.name.split("/")[-1].split(":")[0]

    out: dict[str, Any] = {}
    for layer in encoder.layers:
        # Keras numbers the Normalization layer's name ("normalization_3") per session.
        name = "normalization" if isinstance(layer, tf.keras.layers.Normalization) else layer.name
        for variable in layer.weights:
            out[f"{name}/{short(variable)}"] = variable
    for layer in model.embedding_model.layers:
        if isinstance(layer, tf.keras.layers.Dense):
            name = "projection"
        elif isinstance(layer, tf.keras.layers.LayerNormalization):
            name = "layer_norm"
        else:
            continue
        for variable in layer.weights:
            out[f"{name}/{short(variable)}"] = variable
    for variable in model._similarity_layer.weights:
        out[f"similarity/{short(variable)}"] = variable
    return out
