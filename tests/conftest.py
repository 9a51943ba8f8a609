"""Shared fixtures: tests run offline, on the CPU, with tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_config(**overrides):
    """A small EfficientNet (B0 layout, ~1/4 width, one block per stage) for fast tests."""
    from modeling_mscl import MSCLConfig

    kwargs = dict(
        width_coefficient=0.25,
        depth_coefficient=0.25,
        projection_dim=32,
        classifier_hidden_size=16,
    )
    kwargs.update(overrides)
    return MSCLConfig(**kwargs)


def pytest_ignore_collect(collection_path, config):
    """transformers' common tests (slow) are fetched at import: the default run, which
    deselects slow tests, does not even import their module."""
    if collection_path.name == "test_transformers_common.py":
        markexpr = config.getoption("markexpr") or ""
        return "slow" not in markexpr or "not slow" in markexpr
    return None
