"""The similarities of the contrastive head, each defined once: its parameters and their
initialisation, its forward, the config options it reads with their checks, and what a
model card says of it.

Hub file: imports only the standard library and torch, so a saved folder loads with
``trust_remote_code=True`` without this package.

Built in: ``bilinear`` (the paper: ``u^T W v`` with a trainable matrix and no temperature,
times ``bilinear_logit_scale`` where that is not 1, a named departure) and ``cosine``
(``cos(u, v) / similarity_temperature``). A new similarity is one :class:`SimilarityKind`
given to :func:`register_similarity`; :class:`MSCLSimilarity` (the model's module),
``MSCLConfig``'s checks and the model card look it up by ``config.similarity``.

The registry belongs to the running process, as transformers' own registrations do: a
saved model whose similarity is not registered where it is loaded is refused with an
error that names it and the registered ones (register it first, then load), never built
with another similarity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BILINEAR_INIT_STD",
    "MSCLSimilarity",
    "SimilarityKind",
    "get_similarity",
    "register_similarity",
    "similarity_names",
]

# Standard deviation of Keras' `random_normal` initialiser, the reference's bilinear W.
BILINEAR_INIT_STD = 0.05


def _no_parameters(module: nn.Module) -> None:
    """Initialisation of a similarity without parameters: nothing to do."""


@dataclass(frozen=True)
class SimilarityKind:
    """One similarity of anchors (B, D) to columns (C, D), logits (B, C).

    Attributes:
        name: the value of ``config.similarity`` (and ``--similarity``).
        build: ``(module, config) -> None``: puts the similarity's parameters (empty, see
            ``reset_parameters``) and settings on the :class:`MSCLSimilarity` ``module``.
        forward: ``(module, anchors, columns) -> logits``.
        describe: ``config -> str``: completes "the similarity of two embeddings was ..."
            in a model card.
        reset_parameters: ``module -> None``: initialises the parameters ``build`` made
            (the model's ``_init_weights`` calls it, as for every other layer).
        options: ``(config field, low, high)``: positive real options this similarity
            reads, each checked by ``MSCLConfig`` to lie in ``(low, high]``.
    """

    name: str
    build: Callable[[nn.Module, Any], None]
    forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    describe: Callable[[Any], str]
    reset_parameters: Callable[[nn.Module], None] = _no_parameters
    options: tuple[tuple[str, float, float], ...] = ()


_REGISTRY: dict[str, SimilarityKind] = {}


def register_similarity(kind: SimilarityKind, replace: bool = False) -> SimilarityKind:
    """Make ``kind`` available as ``config.similarity == kind.name`` in this process
    (``replace`` to redefine one)."""
    if not isinstance(kind, SimilarityKind):
        raise TypeError(f"expected a SimilarityKind, got {type(kind).__name__}")
    if kind.name in _REGISTRY and not replace:
        raise ValueError(f"a similarity named {kind.name!r} is already registered")
    _REGISTRY[kind.name] = kind
    return kind


def similarity_names() -> tuple[str, ...]:
    """The registered similarities' names, in registration order."""
    return tuple(_REGISTRY)


def get_similarity(name: str) -> SimilarityKind:
    """The similarity registered as ``name``; an unknown name raises the one error that
    lists the registered ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"similarity={name!r} is invalid: must be one of {list(similarity_names())} "
            "('bilinear' is the paper's); a similarity of your own must be registered with "
            "register_similarity (modeling_mscl.similarity_mscl) in this process before a "
            "config that names it is built or loaded"
        ) from None


class MSCLSimilarity(nn.Module):
    """Similarity of anchors (B, D) to columns (C, D): logits (B, C), computed by the
    registered similarity that ``config.similarity`` names.

    ``weight`` is the bilinear matrix, None for a similarity without one.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.kind = config.similarity
        self.definition = get_similarity(self.kind)
        self.weight: nn.Parameter | None = None
        self.definition.build(self, config)

    def reset_parameters(self) -> None:
        """Initialise the parameters as the similarity defines."""
        self.definition.reset_parameters(self)

    def forward(self, anchors: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return self.definition.forward(self, anchors, columns)


# ------------------------------------------------------------------------ the built-ins


def _bilinear_build(module: nn.Module, config: Any) -> None:
    module.logit_scale = float(config.bilinear_logit_scale)
    dim = config.projection_dim
    module.weight = nn.Parameter(torch.empty(dim, dim))


def _bilinear_reset(module: nn.Module) -> None:
    # Keras' `random_normal` (mean 0, std 0.05), the reference's bilinear matrix.
    nn.init.normal_(module.weight, mean=0.0, std=BILINEAR_INIT_STD)


def _bilinear_forward(
    module: nn.Module, anchors: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    logits = anchors @ module.weight.to(anchors.dtype) @ columns.T
    # The paper's form is left untouched (no multiply) at the default scale.
    return logits if module.logit_scale == 1.0 else logits * module.logit_scale


def _bilinear_describe(config: Any) -> str:
    dim = config.projection_dim
    text = f"bilinear,\n`u^T W v` with a learned {dim}x{dim} matrix `W` and no\ntemperature"
    scale = float(config.bilinear_logit_scale)
    return text if scale == 1.0 else f"{text}, times a fixed factor of {scale:.4g}"


def _cosine_build(module: nn.Module, config: Any) -> None:
    module.temperature = config.similarity_temperature


def _cosine_forward(
    module: nn.Module, anchors: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    return F.normalize(anchors, dim=-1) @ F.normalize(columns, dim=-1).T / module.temperature


def _cosine_describe(config: Any) -> str:
    return "the cosine divided by a temperature"


register_similarity(
    SimilarityKind(
        "bilinear",
        build=_bilinear_build,
        forward=_bilinear_forward,
        describe=_bilinear_describe,
        reset_parameters=_bilinear_reset,
        options=(("bilinear_logit_scale", 0.0, 1e6),),
    )
)
register_similarity(
    SimilarityKind(
        "cosine",
        build=_cosine_build,
        forward=_cosine_forward,
        describe=_cosine_describe,
        options=(("similarity_temperature", 0.0, 1e4),),
    )
)
