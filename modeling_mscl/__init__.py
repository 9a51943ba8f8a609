"""modeling-mscl: multi-source contrastive learning (MSCL) of music representations.

Importing the package registers the MSCL classes with transformers' Auto classes. The
config and feature extractor are imported and registered at once; the model classes, which
pull in transformers' modeling half (and accelerate with it), load on first use: when
``modeling_mscl.MSCLModel`` (or another model class) is looked up, or when the first
`MSCLConfig` is built, as ``AutoModel.from_pretrained(folder)`` does. So ``import
modeling_mscl`` and ``mscl --help`` cost about what ``import torch, transformers`` costs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import configuration_mscl as _configuration
from .configuration_mscl import MSCLConfig
from .feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor

if TYPE_CHECKING:
    from .hub import register_auto_classes
    from .modeling_mscl import (
        MSCLForAudioClassification,
        MSCLForPreTraining,
        MSCLModel,
        MSCLPreTrainedModel,
        eval_mode,
    )

__version__ = "0.1.0"

__all__ = [
    "MSCLConfig",
    "MSCLFeatureExtractor",
    "MSCLForAudioClassification",
    "MSCLForPreTraining",
    "MSCLModel",
    "MSCLPreTrainedModel",
    "eval_mode",
    "load_feature_extractor",
    "register_auto_classes",
]

# Name -> the submodule that defines it, imported on first access (PEP 562).
_LAZY = {
    "MSCLForAudioClassification": "modeling_mscl",
    "MSCLForPreTraining": "modeling_mscl",
    "MSCLModel": "modeling_mscl",
    "MSCLPreTrainedModel": "modeling_mscl",
    "eval_mode": "modeling_mscl",
    "register_auto_classes": "hub",
}


def _register_all() -> None:
    importlib.import_module(".hub", __name__).register_auto_classes()


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _register_all()
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _register_light_classes() -> None:
    from transformers import AutoConfig, AutoFeatureExtractor

    AutoConfig.register(MSCLConfig.model_type, MSCLConfig, exist_ok=True)
    AutoFeatureExtractor.register(MSCLConfig, MSCLFeatureExtractor, exist_ok=True)
    MSCLConfig.register_for_auto_class("AutoConfig")
    MSCLFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")


_register_light_classes()
# Every model is built from a config: the first MSCLConfig registers the model classes.
_configuration.on_first_config = _register_all
