"""modeling-mscl: multi-source contrastive learning (MSCL) of music representations.

Importing the package registers the MSCL classes with transformers' Auto classes.
"""

from .configuration_mscl import MSCLConfig
from .feature_extraction_mscl import MSCLFeatureExtractor
from .hub import register_auto_classes
from .modeling_mscl import (
    MSCLForAudioClassification,
    MSCLForPreTraining,
    MSCLModel,
    MSCLPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "MSCLConfig",
    "MSCLFeatureExtractor",
    "MSCLForAudioClassification",
    "MSCLForPreTraining",
    "MSCLModel",
    "MSCLPreTrainedModel",
    "register_auto_classes",
]

register_auto_classes()
