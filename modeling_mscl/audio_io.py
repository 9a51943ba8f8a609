"""Reading and writing audio files with soundfile.

soundfile (libsndfile >= 1.1, bundled in its wheel) decodes wav, flac, ogg and mp3
without a system FFmpeg, which is why the package reads audio through it rather than
through ``datasets.Audio``. Audio is resampled with the package's one resampler,
:func:`modeling_mscl.feature_extraction_mscl.resample_audio` (it lives in the Hub file, which
must work alone).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path
from .feature_extraction_mscl import resample_audio

__all__ = ["AudioDecodeError", "in_threads", "load_audio", "write_audio"]

logger = logging.getLogger(__name__)
# Files decoded at once by one process: enough to keep a GPU fed from local disks.
IO_THREADS = 8
# libsndfile's log line for a data chunk shorter than its header says.
_TRUNCATED = re.compile(r"^data\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)


class AudioDecodeError(ValueError):
    """An audio file could not be read; the message names the file and the reason."""


def load_audio(
    path: str | os.PathLike, sampling_rate: int | None = 16000, mono: bool = True
) -> np.ndarray:
    """Decode ``path`` to float32 at ``sampling_rate`` Hz (``None`` keeps the file's rate).

    Returns shape (samples,) when ``mono`` (channels averaged), else (channels, samples).
    Raises :class:`AudioDecodeError` naming the file when it is missing, unreadable,
    empty or contains non-finite samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(str(path)) as f:
            data, sr = f.read(dtype="float32", always_2d=True), f.samplerate
            header = f.extra_info
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioDecodeError(f"{path}: cannot decode audio ({err})") from err
    # libsndfile reads a truncated WAV up to where the bytes stop and notes the mismatch
    # with the header only in its log: say so, the audio is shorter than the file claims.
    cut = _TRUNCATED.search(header)
    if cut:
        logger.warning(
            "%s: truncated: the header announces %s bytes of audio, the file holds %s; "
            "decoded what is there (%.2f s)",
            path, cut.group(1), cut.group(2), data.shape[0] / sr,
        )  # fmt: skip
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{path}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioDecodeError(f"{path}: the audio contains NaN or infinite samples")
    wav = data.T  # (channels, samples)
    if mono:
        wav = wav.mean(axis=0)
    if sampling_rate is not None and sr != sampling_rate:
        wav = resample_audio(wav, sr, sampling_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


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
