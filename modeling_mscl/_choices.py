"""The choices of the `mscl` commands' options, in a module that imports nothing.

The modules that define them (the probe presets, the retrieval's batch-norm regimes) load
torch, datasets and scikit-learn; `mscl probe --help` and `mscl retrieval --help` only need
the names. ``tests/test_front_door.py`` checks that these lists equal their sources.
"""

from __future__ import annotations

__all__ = ["BN_REGIMES", "PROBE_PRESETS"]

# The names of `modeling_mscl.probing.tasks.PRESETS`, sorted.
PROBE_PRESETS = (
    "corpus_genre",
    "corpus_instruments",
    "corpus_tempo",
    "fma",
    "mtat",
    "notes_family",
    "nsynth",
)

# `modeling_mscl.probing.retrieval.stem_retrieval`'s `bn_regime` values.
BN_REGIMES = ("running", "recalibrated")
