"""One pre-training step of this port equals one step of the TensorFlow/Keras reference.

The reference network (tests/keras_reference.py: Keras' EfficientNetB0 -> Dense(512) ->
LayerNormalization -> tanh, bilinear W) is built with fresh Keras weights, converted with
modeling_mscl.convert into ``MSCLForPreTraining``, and both take ONE training step on the
same batch of 32 log-mel-like pairs (98 x 64):

- Keras: a train step written here after the reference's ``ContrastiveModel.train_step``:
  anchors and positives (absent ones all-zero) in ONE ``training=True`` pass, columns =
  present positives then one null column (the mean of the absent rows' embeddings), rows =
  present anchors then absent ones, sparse softmax cross-entropy, Keras Adam(1e-3, eps 1e-7).
- torch: ``model(anchor, positive, source_present=...)`` in train mode, ``backward``, and
  the optimizer the trainer builds by default (``modeling_mscl.optim.make_optimizer("adam")``,
  Keras' placement of epsilon).

Compared per tensor, as ||ours - reference|| / ||reference||: logits (rows reordered the
reference's way) and loss; the gradient of every trainable weight; the step's change of
every batch-norm moving mean and moving variance (relative to the batch's standard
deviation and variance); the change Adam makes to every weight, both from each side's own
gradients and with our optimizer fed the reference's gradients (the optimizer alone).
COLA (every positive present; ``source_present=None`` and all-True agree) and MSCL (8 of
32 positives absent).

Each runs in float32 (what the reference ran) and with BOTH sides in float64. In float32
the agreement is limited by TensorFlow's CPU reductions: its batch-norm statistics over
~10^5 values are off by ~1e-5 (mean) and ~1e-4 (variance) from a float64 evaluation,
torch's by ~1e-7, and 49 layers compound that (up to ~2e-2 on some gradients). In float64
everything agrees to ~1e-6 (the library computes logits and loss in float32 by design).
Keras' float64 batch norm is not fused and folds the biased batch variance into the moving
variance, while the fused float32 kernel the reference used folds the unbiased one, as
torch does: the moving variance is compared in float32 only.

Not covered: stochastic depth is OFF on both sides (``drop_connect_rate=0``; its random
masks cannot be drawn identically in two frameworks; the reference trained with Keras'
0.2), and so is the augmentation; one process (no gathering), one step, CPU.
Marked slow and skipped without TensorFlow: ``make test-tf`` runs it in .venv-tf.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from modeling_mscl import MSCLConfig, MSCLForPreTraining
from modeling_mscl.convert import keras_to_state_dict, state_dict_to_keras
from modeling_mscl.optim import make_optimizer

from .conftest import tiny_config
from .keras_reference import named_variables, reference_like_network

BATCH, FRAMES, MELS = 32, 98, 64
ABSENT = 8  # 25 % of the positives in the MSCL case
# The reference compiles tf.keras.optimizers.Adam(learning_rate=0.001): Keras' defaults.
LEARNING_RATE, BETAS, KERAS_EPSILON = 1e-3, (0.9, 0.999), 1e-7
BN_MOMENTUM = 0.01  # of the new batch (Keras' momentum 0.99)
# torch's own Adam with the same epsilon: what placing epsilon the torch way would change.
TORCH_ADAM_EPS = 1e-7

# The beta of each block's last batch norm ("*_project_bn/beta") shifts channels that only
# reach training-mode batch norms through 1x1 convolutions and residual sums, which
# subtract the shift again: its gradient is exactly zero, computed as round-off on both
# sides (and Adam turns that round-off into steps of up to lr on both sides).
STRUCTURALLY_ZERO_GRAD = "_project_bn/beta"

# Tolerances on the worst relative error of each group (None: reported only), per
# precision. In float32 they are set by the reference's own round-off (see above).
TOLERANCES = {
    "float32": {
        "logits, loss": 1e-3,
        "grad W/projection/stem": 2e-2,
        "grad, every other weight": 5e-2,
        "|grad| project_bn/beta": 1e-4,
        "BN batch mean (in std)": 2e-4,
        "BN batch variance": 1e-3,  # a biased variance would be off by 1/383 in the top layers
        "Adam, same gradients": 2e-4,  # weights near 1 hold the update to ~6e-8 / 1e-3
        "Adam update, whole step": None,  # per tensor: float32 gradient noise, normalised
        "Adam update, all weights": 0.2,  # catches a wrong learning rate, sign or rule
        "torch-eps Adam (formula)": None,
    },
    "float64": {
        "logits, loss": 1e-5,  # the library computes the logits and the loss in float32
        "grad W/projection/stem": 1e-5,
        "grad, every other weight": 5e-5,
        "|grad| project_bn/beta": 1e-10,
        "BN batch mean (in std)": 1e-6,
        "Adam, same gradients": 5e-5,
        "Adam update, whole step": 5e-3,
        "Adam update, all weights": 1e-3,
        "torch-eps Adam (formula)": None,
    },
}
KEY_GRADS = (
    "similarity/bilinear_product_weight",
    "projection/kernel",
    "projection/bias",
    "stem_conv/kernel",
)


def _log_mel_like(rng: np.random.Generator, n: int, frames: int) -> np.ndarray:
    """Log of random magnitudes: a per-crop spectral envelope times exponential noise,
    clipped to [-11, 5] (the range of the feature extractor's log-mels)."""
    envelope = rng.normal(-4.0, 2.0, (n, 1, MELS)) - np.linspace(0.0, 3.0, MELS)
    magnitudes = rng.exponential(1.0, (n, frames, MELS)) * np.exp(envelope)
    return np.clip(np.log(magnitudes + 1e-6), -11.0, 5.0).astype(np.float32)


def _batch(seed: int, absent: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    anchor, positive = _log_mel_like(rng, BATCH, frames), _log_mel_like(rng, BATCH, frames)
    present = np.ones(BATCH, dtype=bool)
    present[rng.permutation(BATCH)[:absent]] = False  # scattered, so rows get reordered
    positive[~present] = 0.0  # an absent source is the all-zero input
    return anchor, positive, present


def _rel(ours: np.ndarray, ref: np.ndarray, scale: np.ndarray | None = None) -> float:
    """||ours - ref|| / ||scale|| (scale defaults to ref), in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = ref if scale is None else np.asarray(scale, np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(scale), 1e-300))


# ------------------------------------------------------------------------ Keras side


def _keras_step(tf, model, variables, optimizer, anchor, positive):
    """The reference's train step (written from its description): one joint pass."""
    # The reference finds absent sources as the all-zero positives.
    present = positive.reshape(BATCH, -1).sum(axis=1) != 0
    active, zeros = np.flatnonzero(present), np.flatnonzero(~present)
    order = np.concatenate([active, zeros])  # rows: present anchors first, then absent
    targets = np.concatenate([np.arange(active.size), np.full(zeros.size, active.size)])
    trainable = [k for k, v in variables.items() if v.trainable]
    with tf.GradientTape() as tape:
        inputs = tf.concat([anchor, positive], axis=0)[..., None]
        embeddings = model.embedding_model(inputs, training=True)
        anchors, positives = tf.split(embeddings, 2, axis=0)
        columns = tf.gather(positives, active)
        if zeros.size:
            null = tf.reduce_mean(tf.gather(positives, zeros), axis=0, keepdims=True)
            columns = tf.concat([columns, null], axis=0)
        logits = model._similarity_layer(tf.gather(anchors, order), columns)
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        loss = loss_fn(targets, logits)
    grads = tape.gradient(loss, [variables[k] for k in trainable])
    optimizer.apply_gradients(zip(grads, [variables[k] for k in trainable], strict=True))
    return {
        "logits": logits.numpy(),
        "loss": float(loss),
        "targets": targets,
        "order": order,
        "grads": {k: g.numpy() for k, g in zip(trainable, grads, strict=True)},
    }


# ------------------------------------------------------------------------ torch side


def _trainer_optimizer(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, str]:
    # modeling_mscl.optim imports only torch, so .venv-tf (no datasets/pyarrow) builds the
    # trainer's optimizer itself; test_trainer_optimizer_is_the_compared_one ties the two.
    optimizer = make_optimizer("adam", model.parameters(), LEARNING_RATE)
    return optimizer, 'optim.make_optimizer("adam")'


def _torch_step(model, anchor, positive, present):
    optimizer, which = _trainer_optimizer(model)
    model.train()
    out = model(anchor, positive, source_present=present)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    return out, grads, which


def _in_keras_layout(model, config, replace=None):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update(replace or {})
    return {k: v.astype(np.float64) for k, v in state_dict_to_keras(state, config).items()}


# ------------------------------------------------------------------------ the comparison


def _keras_adam_first_update(grad: np.ndarray, eps: float) -> np.ndarray:
    """Keras: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), at t = 1."""
    b1, b2 = BETAS
    m, v = (1 - b1) * grad, (1 - b2) * grad**2
    return -LEARNING_RATE * math.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)


def _torch_adam_first_update(grad: np.ndarray, eps: float) -> np.ndarray:
    """torch: w -= lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps), at t = 1."""
    b1, b2 = BETAS
    m, v = (1 - b1) * grad, (1 - b2) * grad**2
    return -LEARNING_RATE / (1 - b1) * m / (np.sqrt(v) / math.sqrt(1 - b2) + eps)


@dataclass
class ParityReport:
    """Relative errors of one step, by group: {group: {tensor: error}}."""

    title: str
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def worst(self, group: str) -> tuple[str, float]:
        return max(self.groups[group].items(), key=lambda kv: kv[1])

    def print(self, top: int = 3) -> None:
        print(f"\n{self.title}")
        for note in self.notes:
            print(f"  {note}")
        for group, errors in self.groups.items():
            ranked = sorted(errors.items(), key=lambda kv: -kv[1])
            names = ", ".join(f"{k} {v:.1e}" for k, v in ranked[:top])
            print(f"  {group:<28} {ranked[0][1]:.2e}  ({len(errors)}: {names})")


def _run_parity(objective: str, precision: str) -> ParityReport:
    tf = pytest.importorskip("tensorflow")
    threads = torch.get_num_threads()
    # One torch thread: beside TensorFlow's pool (and other jobs on a small CPU) torch's
    # OpenMP barriers can make a step 10-50x slower; this keeps the runtime predictable.
    torch.set_num_threads(1)
    try:
        return _compare(tf, objective, precision)
    finally:
        torch.set_num_threads(threads)


def _compare(tf, objective: str, precision: str) -> ParityReport:
    started = time.perf_counter()
    np_dtype, torch_dtype = np.dtype(precision), getattr(torch, precision)
    tf.keras.backend.clear_session()
    tf.keras.backend.set_floatx(precision)
    try:
        tf.keras.utils.set_random_seed(0)  # Python, NumPy and TF: Keras' initialisers
        model, encoder = reference_like_network(tf, drop_connect_rate=0.0)
    finally:
        tf.keras.backend.set_floatx("float32")
    torch.manual_seed(0)
    absent = ABSENT if objective == "mscl" else 0
    anchor, positive, present = _batch(seed=1, absent=absent, frames=FRAMES)
    anchor, positive = anchor.astype(np_dtype), positive.astype(np_dtype)
    variables = named_variables(tf, model, encoder)
    if precision == "float64":
        # Weights that float32 holds exactly: the converter writes float32 tensors.
        for variable in variables.values():
            variable.assign(variable.numpy().astype(np.float32).astype(np.float64))
    before = {k: v.numpy().astype(np.float64) for k, v in variables.items()}
    bn_layers = [layer for layer in encoder.layers if "BatchNormalization" in type(layer).__name__]
    # Keras fuses these batch norms in float32 (the fused kernel folds the unbiased batch
    # variance into the moving variance, as torch), not in float64 (biased).
    assert len(bn_layers) == 49
    assert all(layer.fused == (precision == "float32") for layer in bn_layers)

    config = MSCLConfig(drop_connect_rate=0.0)
    ours = MSCLForPreTraining(config)
    missing, unexpected = ours.load_state_dict(keras_to_state_dict(before, config), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    ours.to(torch_dtype)
    replay = copy.deepcopy(ours)  # for the optimizer alone, below
    a, p = torch.from_numpy(anchor), torch.from_numpy(positive)
    if objective == "cola":
        # source_present=None (plain InfoNCE) and all-True give the same step.
        twin = copy.deepcopy(ours).train()
        with torch.no_grad():
            plain = twin(a, p)
            flagged = twin(a, p, source_present=torch.ones(BATCH, dtype=torch.bool))
        # The null-source loss keeps a null column at -inf (fixed shapes): it adds exactly
        # 0 to the softmax's sum; logits and loss agree to float rounding.
        torch.testing.assert_close(plain.logits, flagged.logits[:, :-1])
        assert torch.isinf(flagged.logits[:, -1]).all()
        torch.testing.assert_close(plain.targets, flagged.targets, rtol=0, atol=0)
        torch.testing.assert_close(plain.loss, flagged.loss)
        del twin
        source_present = None
    else:
        source_present = torch.from_numpy(present)

    optimizer = tf.keras.optimizers.Adam(learning_rate=LEARNING_RATE, epsilon=KERAS_EPSILON)
    ref = _keras_step(tf, model, variables, optimizer, anchor, positive)
    after = {k: v.numpy().astype(np.float64) for k, v in variables.items()}
    out, grads, which = _torch_step(ours, a, p, source_present)
    our_grads = _in_keras_layout(ours, config, replace=grads)
    our_after = _in_keras_layout(ours, config)

    report = ParityReport(
        f"{objective.upper()} step, {precision}: {BATCH} pairs of {FRAMES} frames, "
        f"{absent} absent; "
        f"loss {ref['loss']:.6f} (Keras) vs {out.loss.item():.6f}; torch optimizer {which}"
    )
    # Outputs: our rows are in the original order, the reference's present-first.
    logits = out.logits.detach().double().numpy()[ref["order"]]
    # Ours has one column per row and the null column, at -inf where they do not count
    # (fixed shapes); the reference keeps the columns that count.
    keep = np.isfinite(logits).all(axis=0)
    compact_column = np.cumsum(keep) - 1
    logits = logits[:, keep]
    columns = int(present.sum()) + int(not present.all())  # present positives (+ null)
    assert logits.shape == ref["logits"].shape == (BATCH, columns)
    targets = compact_column[out.targets.numpy()]
    np.testing.assert_array_equal(targets[ref["order"]], ref["targets"])
    report.groups["logits, loss"] = {
        "logits": _rel(logits, ref["logits"]),
        "loss": abs(out.loss.item() - ref["loss"]) / abs(ref["loss"]),
    }

    trainable = sorted(ref["grads"])
    learned = [k for k in trainable if not k.endswith(STRUCTURALLY_ZERO_GRAD)]
    zero_grad = [k for k in trainable if k.endswith(STRUCTURALLY_ZERO_GRAD)]
    assert len(zero_grad) == 16
    report.groups["grad W/projection/stem"] = {
        k: _rel(our_grads[k], ref["grads"][k]) for k in KEY_GRADS
    }
    report.groups["grad, every other weight"] = {
        k: _rel(our_grads[k], ref["grads"][k]) for k in learned if k not in KEY_GRADS
    }
    # Exactly zero in exact arithmetic: both sides' round-off, relative to the gradient of
    # the same layer's gamma.
    report.groups["|grad| project_bn/beta"] = {
        f"{k} ({side})": float(
            np.linalg.norm(g[k]) / np.linalg.norm(ref["grads"][k[:-4] + "gamma"])
        )
        for k in zero_grad
        for side, g in (("Keras", ref["grads"]), ("ours", our_grads))
    }

    # Batch norm: the step folds 0.01 x (batch statistic - old) into each moving statistic.
    # The batch mean is compared in units of the batch's standard deviation (several layers
    # have batch means that are zero in exact arithmetic), the variance relative to itself
    # (which exposes a biased-vs-unbiased variance: a factor n / (n - 1), n <= 64 * 3 * 2).
    bn_mean, bn_var = {}, {}
    for key in (k for k in before if k.endswith("moving_mean")):
        layer = key[: -len("/moving_mean")]
        var_key = f"{layer}/moving_variance"
        batch_var = (after[var_key] - (1 - BN_MOMENTUM) * before[var_key]) / BN_MOMENTUM
        d_mean = (our_after[key] - before[key], after[key] - before[key])
        bn_mean[layer] = _rel(*d_mean, scale=BN_MOMENTUM * np.sqrt(np.abs(batch_var)))
        d_var = (our_after[var_key] - before[var_key], after[var_key] - before[var_key])
        bn_var[layer] = _rel(*d_var, scale=BN_MOMENTUM * batch_var)
    report.groups["BN batch mean (in std)"] = bn_mean
    if precision == "float32":
        report.groups["BN batch variance"] = bn_var
    else:
        report.notes.append(
            f"BN moving-variance change (Keras float64 folds the biased variance, float32 "
            f"the unbiased): worst {max(bn_var.values()):.1e}, not asserted here"
        )

    # Adam, alone: the trainer's optimizer fed the reference's own gradients (in exact
    # arithmetic it must then make the reference's update, whatever the gradient noise).
    ref_update = {k: after[k] - before[k] for k in trainable}
    ref_grads = keras_to_state_dict({**before, **ref["grads"]}, config)
    for name, param in replay.named_parameters():
        param.grad = ref_grads[name].to(torch_dtype)
    _trainer_optimizer(replay)[0].step()
    replayed = _in_keras_layout(replay, config)
    report.groups["Adam, same gradients"] = {
        k: _rel(replayed[k] - before[k], ref_update[k]) for k in trainable
    }
    # The whole step: own gradients, own optimizer. Adam's first update is ~lr g / |g| per
    # element, so small gradient elements turn round-off into sizeable differences.
    report.groups["Adam update, whole step"] = {
        k: _rel(our_after[k] - before[k], ref_update[k]) for k in learned
    }
    flat = [np.concatenate([x[k].ravel() for k in learned]) for x in (our_after, after, before)]
    report.groups["Adam update, all weights"] = {"all": _rel(flat[0] - flat[2], flat[1] - flat[2])}
    # The two Adams place epsilon differently (Keras: beside sqrt(v); torch: beside
    # sqrt(v / (1 - b2^t)), i.e. Keras' 1e-7 is torch's 1e-7 / sqrt(1 - b2^t) = 3.2e-6 at
    # step 1). What that alone changes, on the reference's own gradients (for information):
    report.groups["torch-eps Adam (formula)"] = {
        k: _rel(
            _torch_adam_first_update(ref["grads"][k], TORCH_ADAM_EPS),
            _keras_adam_first_update(ref["grads"][k], KERAS_EPSILON),
        )
        for k in learned
    }
    frozen = [k for k in before if k not in ref["grads"] and not k.endswith("moving_mean")]
    frozen = [k for k in frozen if not k.endswith("moving_variance")]
    assert sorted(frozen) == ["normalization/count", "normalization/mean", "normalization/variance"]
    for k in frozen:  # the input Normalization: never trained
        np.testing.assert_array_equal(our_after[k], after[k])
        np.testing.assert_array_equal(after[k], before[k])
    report.notes.append(f"{time.perf_counter() - started:.1f} s")
    report.print()
    return report


def _check(report: ParityReport, precision: str) -> None:
    limits = TOLERANCES[precision]
    assert set(report.groups) == set(limits), sorted(set(report.groups) ^ set(limits))
    failures = {
        group: report.worst(group)
        for group, limit in limits.items()
        if limit is not None and report.worst(group)[1] > limit
    }
    assert not failures, f"{report.title}: worst errors over tolerance {failures}"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("objective", ["cola", "mscl"])
def test_training_step_matches_the_reference(objective, precision):
    _check(_run_parity(objective, precision), precision)


def test_trainer_optimizer_is_the_compared_one():
    """The trainer's default optimizer is the one the parity test steps with (.venv-tf cannot
    import the trainer: no datasets/pyarrow), and it is not torch's Adam: fed the same
    gradients, down to where epsilon matters, the two part."""
    pytest.importorskip("datasets")
    from modeling_mscl.training import _make_optimizer
    from modeling_mscl.training_args import PretrainingArguments

    torch.manual_seed(0)
    models = [MSCLForPreTraining(tiny_config()) for _ in range(3)]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    optimizers = (
        _make_optimizer(PretrainingArguments(), models[0]),
        _trainer_optimizer(models[1])[0],
        torch.optim.Adam(models[2].parameters(), lr=LEARNING_RATE, eps=TORCH_ADAM_EPS),
    )
    for _ in range(3):
        for params in zip(*(m.parameters() for m in models), strict=True):
            # Gradients of very different sizes, down to where epsilon matters.
            grad = torch.randn_like(params[0]) * 10.0 ** torch.randint(-9, 0, params[0].shape)
            for param in params:
                param.grad = grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    parted = False
    for trainer, compared, torch_adam in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(trainer, compared, rtol=0, atol=0)
        parted |= not torch.allclose(trainer, torch_adam, rtol=1e-4, atol=1e-7)
    assert parted
