"""Audio in every form users hold it, decoded and resampled: the package's one version
of three audio rules.

Hub file: imports only the standard library, numpy, torch and transformers' logging at
module level, so a saved folder keeps loading with ``trust_remote_code=True`` where this
package is not installed. Optional libraries are imported inside the functions that need
them, and their absence is an error only when such a function runs: julius to resample,
soundfile to decode files, torchcodec for ``AudioDecoder`` inputs and formats soundfile
cannot read.

The rest of the package (the feature extractor, the pipelines, the separators) imports
these rules from here, never re-implements them: :func:`resample_audio` (with
:func:`resampled_length`, the length it gives), :func:`channel_axis` (which axis of a 2-D
clip holds the channels, :data:`MAX_CHANNELS`) and :func:`decode_audio` (audio in every
form users hold it: a path, the bytes of a file, an ``{"array", "sampling_rate"}`` dict,
a datasets audio item or a torchcodec ``AudioDecoder``).
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


# The package's one rule for audio with channels (the feature extractor, `embed_audio`, the
# pipelines and the separators): a multichannel clip is 2-D with at most this many channels
# on its smaller axis; more means the axes are probably something else.
MAX_CHANNELS = 8
# Input rates accepted at all (telephone audio to high-resolution studio files).
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 4000, 768000


def channel_axis(shape: Sequence[int], name: str = "The audio", hint: str = "") -> int:
    """The axis of a 2-D multichannel clip that holds its channels: the smaller (0 on a tie).

    Raises ValueError, starting with ``name`` and ending with ``hint``, when that axis has
    more than :data:`MAX_CHANNELS` entries: then the array is probably not one clip.
    """
    axis = 0 if shape[0] <= shape[1] else 1
    if shape[axis] > MAX_CHANNELS:
        raise ValueError(
            f"{name} has shape {tuple(shape)}: a 2-D clip is read as multichannel audio with "
            f"at most {MAX_CHANNELS} channels on its smaller axis.{hint}"
        )
    return axis


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, target_sr: int, device: torch.device, dtype: torch.dtype) -> Any:
    import julius

    # julius builds its sinc kernels on every functional call: one module per rate pair,
    # made outside inference mode so that it can serve any later call.
    with torch.inference_mode(False):
        return julius.ResampleFrac(orig_sr, target_sr).to(device=device, dtype=dtype)


def resampled_length(num_samples: int, orig_sr: int, target_sr: int) -> int:
    """Samples :func:`resample_audio` returns by default for ``num_samples`` at ``orig_sr``.

    ``floor(num_samples * target_sr / orig_sr)``, computed as julius computes it: in
    torch's default float dtype, so for a track of minutes it can be one sample more than
    the exact floor. Stems cut to this length line up with the resampled mixture.
    """
    gcd = math.gcd(int(orig_sr), int(target_sr))
    orig, target = int(orig_sr) // gcd, int(target_sr) // gcd
    if orig == target:
        return int(num_samples)
    return int(torch.floor(torch.as_tensor(target * int(num_samples) / orig)))


def resample_audio(
    audio: np.ndarray | torch.Tensor,
    orig_sr: int,
    target_sr: int,
    output_length: int | None = None,
    full: bool = False,
) -> Any:
    """Resample ``audio`` (..., samples) from ``orig_sr`` to ``target_sr`` Hz with julius.

    A numpy array comes back as one, a tensor stays on its device and dtype. The length is
    :func:`resampled_length` unless ``output_length`` (at most the ceiling) or ``full``
    (the ceiling) says otherwise; equal rates return ``audio`` itself (cut to
    ``output_length``). Raises ImportError naming the package when julius is missing.
    """
    if int(orig_sr) == int(target_sr):
        return audio if output_length is None else audio[..., :output_length]
    try:
        import julius  # noqa: F401 - checked on every call: the cache must not hide its absence
    except ImportError as err:
        raise ImportError("Resampling audio needs julius: pip install julius") from err
    x = audio if torch.is_tensor(audio) else torch.from_numpy(np.ascontiguousarray(audio))
    out = _resampler(int(orig_sr), int(target_sr), x.device, x.dtype)(x, output_length, full)
    return out if torch.is_tensor(audio) else out.numpy()


# ------------------------------------------------------------------ audio inputs
# The package's one decoding path: the feature extractor, `embed_audio`, the pipelines of
# the Hub pipeline file, the chunk step and the probes all decode through `decode_audio`.


class AudioDecodeError(ValueError):
    """Audio could not be decoded; the message names the file (or the input) and the reason."""


# libsndfile's log line for a data chunk shorter than its header says.
_TRUNCATED = re.compile(r"^data\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)


def _is_audio_decoder(value: Any) -> bool:
    # A torchcodec AudioDecoder (datasets' decoded audio items are one) exists only where
    # torchcodec was imported: look it up, never import torchcodec to check.
    decoders = sys.modules.get("torchcodec.decoders")
    decoder_type = getattr(decoders, "AudioDecoder", None)
    return decoder_type is not None and isinstance(value, decoder_type)


def is_audio_item(value: Any) -> bool:
    """Whether ``value`` is audio that carries its own rate, one input of :func:`decode_audio`:
    a path, the bytes of a file, a dict or a torchcodec ``AudioDecoder``."""
    return isinstance(
        value, (str, os.PathLike, bytes, bytearray, memoryview, Mapping)
    ) or _is_audio_decoder(value)


def _pcm_to_float(clip: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """Float audio from float or integer PCM (signed: / 2**(bits-1), e.g. int16 / 32768)."""
    if torch.is_tensor(clip):
        if clip.is_floating_point():
            return clip if clip.dtype in (torch.float32, torch.float64) else clip.float()
        if clip.dtype == torch.bool or clip.is_complex():
            raise ValueError(f"{name} has unsupported dtype {clip.dtype}.")
        if clip.dtype == torch.uint8:
            # Unsigned 8-bit PCM (WAV convention) is offset binary, centred on 128.
            return (clip.float() - 128.0) / 128.0
        return clip.float() / float(-torch.iinfo(clip.dtype).min)
    if clip.dtype.kind == "f":
        return clip if clip.dtype in (np.float32, np.float64) else clip.astype(np.float32)
    if clip.dtype.kind == "i":
        return clip.astype(np.float32) / np.float32(-np.iinfo(clip.dtype).min)
    if clip.dtype.kind == "u":
        # Unsigned PCM (as 8-bit WAV) is offset binary, centred on half the range.
        half = np.float32(2 ** (8 * clip.dtype.itemsize - 1))
        return (clip.astype(np.float32) - half) / half
    raise ValueError(f"{name} has unsupported dtype {clip.dtype}.")


def _rate_of(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AudioDecodeError(f"{name}: 'sampling_rate' must be an integer in Hz, got {value!r}")
    if not MIN_SAMPLING_RATE <= value <= MAX_SAMPLING_RATE:
        raise AudioDecodeError(
            f"{name}: sampling_rate={value} Hz is outside the audio rates accepted "
            f"({MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz)"
        )
    return int(value)


def _array_channels_first(array: Any, name: str) -> np.ndarray:
    """A dict's audio array as float (channels, samples), the channels by :func:`channel_axis`."""
    x = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    x = _pcm_to_float(x, name)
    if x.ndim not in (1, 2):
        raise AudioDecodeError(f"{name}: an audio array is 1-D or 2-D, got shape {x.shape}")
    if x.size == 0:
        raise AudioDecodeError(f"{name}: the audio holds no samples")
    if x.ndim == 1:
        return x[None]
    return x.T if channel_axis(x.shape, name) == 1 else x


def audio_name(audio: Any) -> str:
    """How errors and reports name an audio item, without reading it: its path, else what
    it is."""
    if isinstance(audio, (str, os.PathLike)):
        return os.fspath(audio)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return f"<{len(audio)} bytes of audio>"
    if isinstance(audio, Mapping):
        if audio.get("path"):
            return str(audio["path"])
        if audio.get("bytes") is not None:
            return f"<{len(audio['bytes'])} bytes of audio>"
        return "the audio array"
    path = getattr(getattr(audio, "metadata", None), "path", None)
    return str(path) if path else f"the {type(audio).__name__}"


def _source(audio: Any) -> tuple[str, Any]:
    """``(name, source)``: what errors call the input (:func:`audio_name`), and a path,
    bytes, an AudioDecoder or ``(channels-first array, rate)``."""
    name = audio_name(audio)
    if isinstance(audio, (str, os.PathLike)):
        if not os.path.isfile(name):
            raise AudioDecodeError(f"{name}: no such audio file")
        return name, name
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return name, bytes(audio)
    if _is_audio_decoder(audio):
        return name, audio
    if isinstance(audio, Mapping):
        array = audio["array"] if "array" in audio else audio.get("raw")
        if array is not None:  # a decoded item: {"array", "sampling_rate"} (+ "path")
            return name, (
                _array_channels_first(array, name),
                _rate_of(audio.get("sampling_rate"), name),
            )
        if audio.get("bytes") is not None:  # datasets' undecoded item: the bytes win
            return name, bytes(audio["bytes"])
        if audio.get("path"):
            return _source(audio["path"])
        raise AudioDecodeError(
            "an audio dict needs 'array' (or 'raw') and 'sampling_rate', or 'bytes' or 'path'; "
            f"got the keys {sorted(map(str, audio))}"
        )
    raise TypeError(
        f"cannot decode audio from a {type(audio).__name__}: pass a path, the bytes of a "
        "file, a {'array', 'sampling_rate'} dict, a datasets audio item or an AudioDecoder "
        "(a bare array has no rate: put it in a dict with its 'sampling_rate')"
    )


def _torchcodec_samples(decoder: Any, name: str) -> tuple[np.ndarray, int]:
    try:
        samples = decoder.get_all_samples()
    except Exception as err:  # torchcodec raises RuntimeError and others from FFmpeg
        raise AudioDecodeError(f"{name}: cannot decode audio (torchcodec: {err})") from err
    return samples.data.cpu().numpy().astype(np.float32, copy=False), int(samples.sample_rate)


def _read_file(source: str | bytes, name: str) -> tuple[np.ndarray, int]:
    """A file's (channels, samples) float32 and rate: soundfile, else torchcodec."""
    reasons = []
    try:
        import soundfile as sf
    except (ImportError, OSError) as err:  # OSError: the library without its libsndfile
        reasons.append(f"soundfile is not available ({err})")
    else:
        try:
            with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as f:
                data, rate, header = (
                    f.read(dtype="float32", always_2d=True),
                    f.samplerate,
                    f.extra_info,
                )
        except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError)
            reasons.append(f"soundfile: {err}")
        else:
            # libsndfile reads a truncated WAV up to where the bytes stop and notes the
            # mismatch with the header only in its log: say so, the audio is shorter than
            # the file claims.
            cut = _TRUNCATED.search(header)
            if cut:
                logger.warning(
                    "%s: truncated: the header announces %s bytes of audio, the file holds %s; "
                    "decoded what is there (%.2f s)",
                    name, cut.group(1), cut.group(2), data.shape[0] / rate,
                )  # fmt: skip
            return data.T, int(rate)
    # Formats libsndfile does not read (AAC, Opus in MP4/WebM, ...) go to FFmpeg, when
    # torchcodec is there to reach it.
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        reasons.append("torchcodec, which reads the other formats with FFmpeg, is not installed")
    except Exception as err:  # installed, but FFmpeg's libraries cannot be loaded
        reasons.append(f"torchcodec cannot load FFmpeg ({str(err).splitlines()[0]})")
    else:
        try:
            return _torchcodec_samples(AudioDecoder(source), name)
        except Exception as err:  # RuntimeError and ValueError from FFmpeg's probing
            reasons.append(f"torchcodec: {str(err).removeprefix(f'{name}: ')}")
    raise AudioDecodeError(f"{name}: cannot decode audio ({'; '.join(reasons)})")


def decode_audio(
    audio: Any, sampling_rate: int | None = None, mono: bool = True
) -> tuple[np.ndarray, int]:
    """Decode ``audio`` to float32 at ``sampling_rate`` Hz (None: its own rate).

    ``audio`` is a path; the bytes of an audio file; a dict with ``"array"`` (or
    ``"raw"``) and ``"sampling_rate"``, any rate (integer PCM scaled as the extractor
    does, a 2-D array's channels found by :func:`channel_axis`); a datasets audio item
    (``Audio(decode=False)``'s ``{"path", "bytes"}`` dict, its bytes read when present;
    a decoded one is an ``AudioDecoder`` or such a dict); or a torchcodec ``AudioDecoder``.
    Files are read with soundfile (wav, flac, ogg, mp3, without FFmpeg); torchcodec (with
    FFmpeg) decodes ``AudioDecoder`` inputs and, where installed, the formats soundfile
    cannot read. Resampling is :func:`resample_audio`'s.

    Returns ``(waveform, rate)``: the waveform is (samples,) when ``mono`` (channels
    averaged), else (channels, samples). Raises :class:`AudioDecodeError` naming the file
    (or the input) when it is missing, unreadable, empty or holds non-finite samples, and
    TypeError for an input of another kind.
    """
    name, source = _source(audio)
    if isinstance(source, tuple):
        data, rate = source
    elif _is_audio_decoder(source):
        data, rate = _torchcodec_samples(source, name)
    else:
        data, rate = _read_file(source, name)
    if data.shape[-1] == 0:
        raise AudioDecodeError(f"{name}: the audio holds no samples")
    if not np.isfinite(data).all():
        raise AudioDecodeError(f"{name}: the audio contains NaN or infinite samples")
    if mono:
        data = data.mean(axis=0)
    if sampling_rate is not None and rate != sampling_rate:
        data, rate = resample_audio(data, rate, sampling_rate), int(sampling_rate)
    return np.ascontiguousarray(data, dtype=np.float32), int(rate)
