"""Optimizers and learning-rate schedules of pre-training; only torch is imported, so any environment can build them.

:class:`KerasAdam` is Adam as ``tf.keras.optimizers.Adam`` applies it, the optimizer the
reference trained with. Keras adds epsilon to sqrt(v) before the bias corrections are
folded into the step size, torch adds it to sqrt(v / (1 - beta2^t)): with the same 1e-7,
Keras' epsilon acts like torch's 1e-7 / sqrt(1 - beta2^t), 3.2e-6 at step 1 (fading to
1.3e-7 by step 1,000). That changes the early updates of weights with small gradients by
several percent; the step-parity test against Keras measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = [
    "KERAS_ADAM_EPSILON",
    "OPTIMIZERS",
    "KerasAdam",
    "LearningRateSchedule",
    "make_optimizer",
]

# tf.keras.optimizers.Adam's default epsilon (the reference kept the defaults).
KERAS_ADAM_EPSILON = 1e-7
OPTIMIZERS = ("adam", "torch_adam", "sgd")


class KerasAdam(torch.optim.Adam):
    """torch's Adam with Keras' placement of epsilon (beside sqrt(v)).

    Before every step each group's torch epsilon is set to ``eps / sqrt(1 - beta2^t)``,
    where t is the step about to be taken, which makes torch's update
    ``lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps')`` equal to Keras'
    ``lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``.
    """

    def __init__(self, params: Iterable, eps: float = KERAS_ADAM_EPSILON, **kwargs) -> None:
        super().__init__(params, eps=eps, **kwargs)
        for group in self.param_groups:
            group["keras_eps"] = eps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Adam step with Keras' epsilon."""
        for group in self.param_groups:
            steps = [
                float(self.state[p]["step"])
                for p in group["params"]
                if p.grad is not None and "step" in self.state[p]
            ]
            t = (max(steps) if steps else 0.0) + 1.0
            group["eps"] = group["keras_eps"] / math.sqrt(1.0 - group["betas"][1] ** t)
        return super().step(closure)


def make_optimizer(
    name: str, params: Iterable, learning_rate: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``adam``: Keras' Adam, the reference's (eps 1e-7 beside sqrt(v)); ``torch_adam``:
    torch's Adam with the same eps (a named departure, for comparison); ``sgd``: plain SGD
    (diagnostics)."""
    if name == "adam":
        return KerasAdam(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "torch_adam":
        return torch.optim.Adam(
            params, lr=learning_rate, eps=KERAS_ADAM_EPSILON, weight_decay=weight_decay
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


class LearningRateSchedule:
    """Multiplier of the peak learning rate at each optimizer step (for ``LambdaLR``).

    ``step``: ``lr_decay_factor`` from ``lr_decay_at * max_steps`` on (the paper: 0.5 at
    half-way); ``cosine``: half a cosine from 1 to 0 after the warm-up; ``constant``.
    A linear warm-up over ``warmup_steps`` comes first in every schedule. A class, not a
    closure, so the scheduler's state pickles into checkpoints.
    """

    def __init__(
        self,
        kind: str,
        max_steps: int,
        warmup_steps: int = 0,
        decay_at: float = 0.5,
        decay_factor: float = 0.5,
    ) -> None:
        self.kind = kind
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.decay_step = int(round(decay_at * max_steps))
        self.decay_factor = decay_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            return self.decay_factor if step >= self.decay_step else 1.0
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
