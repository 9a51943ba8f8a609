"""Reading and writing audio files, and decoding in threads.

Decoding has one implementation, :func:`modeling_mscl.feature_extraction_mscl.decode_audio`
(it lives in the Hub file, which must work alone, so that the feature extractor and the
pipelines of a saved model decode as the package does): soundfile (libsndfile >= 1.1,
bundled in its wheel) reads wav, flac, ogg and mp3 without a system FFmpeg; torchcodec,
where installed, reads torchcodec ``AudioDecoder`` inputs (datasets' decoded audio) and
the formats soundfile cannot. Audio is resampled with the package's one resampler,
:func:`~modeling_mscl.feature_extraction_mscl.resample_audio`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path
from .audio_decoding_mscl import AudioDecodeError, audio_name, decode_audio

__all__ = [
    "AudioDecodeError",
    "audio_column",
    "audio_name",
    "in_threads",
    "load_audio",
    "write_audio",
]

logger = logging.getLogger(__name__)
# Files decoded at once by one process: enough to keep a GPU fed from local disks.
IO_THREADS = 8


def load_audio(audio: Any, sampling_rate: int | None = 16000, mono: bool = True) -> np.ndarray:
    """Decode ``audio`` to float32 at ``sampling_rate`` Hz (``None`` keeps its own rate).

    ``audio`` is anything :func:`~modeling_mscl.feature_extraction_mscl.decode_audio`
    takes: a path, the bytes of a file, an ``{"array", "sampling_rate"}`` dict, a datasets
    audio item or a torchcodec ``AudioDecoder``. Returns shape (samples,) when ``mono``
    (channels averaged), else (channels, samples). Raises :class:`AudioDecodeError`
    naming the file when it is missing, unreadable, empty or contains non-finite samples.
    """
    return decode_audio(audio, sampling_rate, mono)[0]


class _UndecodedColumn(Sequence):
    """A datasets ``Audio`` column read as its undecoded ``{"path", "bytes"}`` items, a
    batch of rows at a time (the bytes of a whole split never sit in memory at once)."""

    _BATCH = 64

    def __init__(self, dataset: Any, column: str) -> None:
        from datasets import Audio

        self._data = dataset.select_columns([column]).cast_column(column, Audio(decode=False))
        self._column = column

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._data[int(index)][self._column]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), self._BATCH):
            yield from self._data[start : start + self._BATCH][self._column]


def audio_column(dataset: Any, column: str) -> Sequence[Any]:
    """The audio items of ``dataset[column]`` for :func:`load_audio`, without decoding them.

    A datasets ``Audio`` column (decoded or ``decode=False``) gives its undecoded
    ``{"path", "bytes"}`` items, read lazily: the package decodes them itself, so torchcodec
    is not needed for the formats soundfile reads. Any other column (paths, dicts) is
    returned as it is. ``KeyError`` names the missing column and the ones there are.
    """
    names = getattr(dataset, "column_names", None)
    if names is not None and column not in names:
        raise KeyError(f"no audio column {column!r}; the dataset has {list(names)}")
    from datasets import Audio

    features = getattr(dataset, "features", None) or {}
    if isinstance(features.get(column), Audio):
        return _UndecodedColumn(dataset, column)
    return dataset[column]


def write_audio(path: str | os.PathLike, waveform: np.ndarray, sampling_rate: int) -> None:
    """Write ``waveform`` ((samples,) or (channels, samples)) atomically: temp file + rename.

    The format follows the suffix (.wav, .flac, .ogg, .mp3); a crash never leaves a
    half-written file under the final name.
    """
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(waveform, dtype=np.float32)
    if data.ndim == 2:
        data = data.T  # soundfile wants (samples, channels)
    fmt = path.suffix.lstrip(".").upper()
    fmt = {"MP3": "MP3", "OGG": "OGG", "FLAC": "FLAC"}.get(fmt, "WAV")
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sampling_rate, format=fmt)


def in_threads(
    fn: Callable[[Any], Any], items: Sequence[Any]
) -> list[tuple[Any, AudioDecodeError | None]]:
    """``fn`` over ``items`` in up to :data:`IO_THREADS` threads (decoding releases the GIL).

    Per item, in order: ``(result, None)``, or ``(None, error)`` when ``fn`` raised
    :class:`AudioDecodeError` (a bad file skips its item); any other error propagates.
    """

    def attempt(item: Any) -> tuple[Any, AudioDecodeError | None]:
        try:
            return fn(item), None
        except AudioDecodeError as err:
            return None, err

    if len(items) <= 1:
        return [attempt(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), IO_THREADS)) as pool:
        return list(pool.map(attempt, items))
