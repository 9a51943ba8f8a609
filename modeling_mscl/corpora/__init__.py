"""Loaders that read music datasets in their official layouts into track rows.

Each loader returns a :class:`datasets.DatasetDict` (splits ``train``, ``validation``,
``test``) whose rows hold ``track_id``, ``audio`` (absolute path, decoded later with
soundfile), and ``label`` (``ClassLabel``) or ``tags`` (``Sequence(ClassLabel)``: the
indices of the active tags); multitrack folders add ``vocals``, ``drums``, ``bass``,
``other`` paths. Loading reads metadata only; :func:`check_audio` decodes every file
and drops unusable ones. See :mod:`modeling_mscl.corpora._common` for the schema.
"""

from ._common import (
    AUDIO_EXTENSIONS,
    LABEL_COLUMN,
    STEM_COLUMNS,
    TAGS_COLUMN,
    check_audio,
    is_multi_label,
    label_names,
    multi_hot,
)
from .fma import FMA_KNOWN_CORRUPT, FMA_SMALL_GENRES, FMA_TOP_GENRES, load_fma
from .folders import load_audio_folder, load_stems_folder
from .mtat import load_mtat, mtat_top_tags
from .nsynth import NSYNTH_FAMILIES, NSYNTH_SOURCES, load_nsynth

__all__ = [
    "AUDIO_EXTENSIONS",
    "FMA_KNOWN_CORRUPT",
    "FMA_SMALL_GENRES",
    "FMA_TOP_GENRES",
    "LABEL_COLUMN",
    "NSYNTH_FAMILIES",
    "NSYNTH_SOURCES",
    "STEM_COLUMNS",
    "TAGS_COLUMN",
    "check_audio",
    "is_multi_label",
    "label_names",
    "load_audio_folder",
    "load_fma",
    "load_mtat",
    "load_nsynth",
    "load_stems_folder",
    "mtat_top_tags",
    "multi_hot",
]
