"""modeling-mscl: multi-source contrastive learning of music representations."""

__version__ = "0.1.0"
