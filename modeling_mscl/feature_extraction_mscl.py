"""COLA log-mel feature extractor of MSCL (Garoufis et al., SMC 2023).

Hub file: imports only the standard library, numpy, torch, transformers and its sibling
Hub files at module level, so a saved model keeps loading with ``trust_remote_code=True``
where this package is not installed. Audio is decoded and resampled by
``audio_decoding_mscl`` (whose rules this module re-exports: :func:`decode_audio`,
:func:`resample_audio`, :func:`channel_axis`, ...) and windows are cut by
``long_audio_mscl`` (:func:`frame_windows`).

The front end is the one of COLA (Saeed et al., ICASSP 2021) as computed by
TensorFlow: L2-normalised 16 kHz mono audio, 400-sample periodic-Hann frames with a
160-sample hop and no centring, a 1024-point FFT magnitude, 64 HTK mel bands from 60 Hz
to 7800 Hz built in the mel domain (``tf.signal.linear_to_mel_weight_matrix``), clipped
to [1e-5, 1e8] and log-compressed.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.utils import logging

from .audio_decoding_mscl import (
    MAX_CHANNELS,
    MAX_SAMPLING_RATE,
    MIN_SAMPLING_RATE,
    AudioDecodeError,
    _pcm_to_float,
    audio_name,
    channel_axis,
    decode_audio,
    is_audio_item,
    resample_audio,
    resampled_length,
)
from .long_audio_mscl import frame_windows

__all__ = [
    "MAX_CHANNELS",
    "AudioDecodeError",
    "MSCLFeatureExtractor",
    "audio_name",
    "channel_axis",
    "decode_audio",
    "frame_windows",
    "is_audio_item",
    "load_feature_extractor",
    "resample_audio",
    "resampled_length",
]

logger = logging.get_logger(__name__)
# Same epsilon as tf.math.l2_normalize: the sum of squares is floored, so an all-zero clip
# stays zero instead of becoming NaN; any audible clip is far above it.
_L2_EPSILON = 1e-12
# Frames transformed at once by the batched paths: bounds the temporary FFT buffers for
# minutes-long tracks, and keeps a block's frames and spectrum (~8 MB in float32) near
# the cache: a 30 s clip took 25 % longer in blocks of 8192 frames.
_CHUNK_FRAMES = 1024
# Attributes that are derived from the configuration and must not go into the saved JSON.
_DERIVED_ATTRIBUTES = ("mel_filters", "window", "_torch_constants")
_RETURN_TENSORS = (None, "np", "pt")
# A model window must survive the encoder's stride-2 layers: 32 frames for EfficientNet-B0's
# stem and four stride-2 stages (MSCLConfig.min_input_size).
MIN_WINDOW_FRAMES = 32
_MAX_WINDOW_FRAMES = 1_000_000
_MAX_MEL_BINS = 1024
_MAX_FFT = 65536


def _check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be an integer {allowed}, got {value!r}.")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a bool, got {value!r}.")
    return bool(value)


class MSCLFeatureExtractor(SequenceFeatureExtractor):
    r"""Computes the COLA log-mel spectrogram that MSCL models take as input.

    Each clip is downmixed to mono, L2-normalised (divided by its L2 norm; an all-zero clip
    stays zero), cut into frames of `frame_length` samples every `hop_length` samples
    without centring or padding (a clip of `n` samples gives `1 + (n - frame_length) //
    hop_length` frames), windowed with a periodic Hann window, zero-padded on the right to
    `fft_length` and Fourier transformed. The magnitude spectrum is projected on
    `feature_size` triangular HTK-mel bands (TensorFlow's ``linear_to_mel_weight_matrix``:
    triangles in the mel domain, DC bin weight zero, no area normalisation), clipped to
    `[log_floor, log_ceiling]` and passed through the natural log. One model input window is
    `window_frames` frames (98 frames, about one second).

    Args:
        feature_size (`int`, *optional*, defaults to 64):
            Number of mel bands.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate (Hz) the features are computed at; audio at another rate is
            rejected unless `resample=True` is passed to `__call__`.
        padding_value (`float`, *optional*, defaults to `log(1e-5)`):
            Value of padded feature frames. The log floor, so that padding looks like silence.
        frame_length (`int`, *optional*, defaults to 400):
            Samples per analysis frame (25 ms at 16 kHz).
        hop_length (`int`, *optional*, defaults to 160):
            Samples between the starts of consecutive frames (10 ms at 16 kHz).
        fft_length (`int`, *optional*, defaults to 1024):
            FFT size; each windowed frame is zero-padded on the right to this length.
        lower_edge_hertz (`float`, *optional*, defaults to 60.0):
            Lower edge of the lowest mel band, in Hz.
        upper_edge_hertz (`float`, *optional*, defaults to 7800.0):
            Upper edge of the highest mel band, in Hz (at most `sampling_rate / 2`).
        log_floor (`float`, *optional*, defaults to 1e-5):
            Mel magnitudes are clipped to at least this value before the log.
        log_ceiling (`float`, *optional*, defaults to 1e8):
            Mel magnitudes are clipped to at most this value before the log.
        window_frames (`int`, *optional*, defaults to 98):
            Frames in one model input window (about one second); clips shorter than one
            window are zero-padded to one, and `return_windows=True` cuts clips into windows
            of this many frames. At least 32, what EfficientNet-B0's strides need.
        normalize_waveform (`bool`, *optional*, defaults to `True`):
            Whether to L2-normalise each clip's waveform before the spectrogram.
        return_attention_mask (`bool`, *optional*, defaults to `True`):
            Whether `__call__` returns an `attention_mask` (1 for real frames, 0 for padding)
            by default.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 64,
        sampling_rate: int = 16000,
        padding_value: float = math.log(1e-5),
        frame_length: int = 400,
        hop_length: int = 160,
        fft_length: int = 1024,
        lower_edge_hertz: float = 60.0,
        upper_edge_hertz: float = 7800.0,
        log_floor: float = 1e-5,
        log_ceiling: float = 1e8,
        window_frames: int = 98,
        normalize_waveform: bool = True,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        # Bounds the front end supports: beyond them a configuration is a typo or damage
        # (a mel matrix of millions of bands, windows the encoder's strides cannot take).
        feature_size = _check_int("feature_size", feature_size, 1, _MAX_MEL_BINS)
        sampling_rate = _check_int(
            "sampling_rate", sampling_rate, MIN_SAMPLING_RATE, MAX_SAMPLING_RATE
        )
        padding_value = _check_float("padding_value", padding_value)
        frame_length = _check_int("frame_length", frame_length, 1, _MAX_FFT)
        hop_length = _check_int("hop_length", hop_length, 1, _MAX_FFT)
        fft_length = _check_int("fft_length", fft_length, 1, _MAX_FFT)
        if fft_length < frame_length:
            raise ValueError(
                f"`fft_length` ({fft_length}) must be >= `frame_length` ({frame_length})."
            )
        lower_edge_hertz = _check_float("lower_edge_hertz", lower_edge_hertz)
        upper_edge_hertz = _check_float("upper_edge_hertz", upper_edge_hertz)
        if not 0.0 <= lower_edge_hertz < upper_edge_hertz <= sampling_rate / 2:
            raise ValueError(
                "Need 0 <= `lower_edge_hertz` < `upper_edge_hertz` <= `sampling_rate` / 2, got "
                f"{lower_edge_hertz}, {upper_edge_hertz} and sampling_rate={sampling_rate}."
            )
        log_floor = _check_float("log_floor", log_floor)
        log_ceiling = _check_float("log_ceiling", log_ceiling)
        if not 0.0 < log_floor < log_ceiling:
            raise ValueError(
                f"Need 0 < `log_floor` < `log_ceiling`, got {log_floor} and {log_ceiling}."
            )
        window_frames = _check_int(
            "window_frames", window_frames, MIN_WINDOW_FRAMES, _MAX_WINDOW_FRAMES
        )
        normalize_waveform = _check_bool("normalize_waveform", normalize_waveform)
        return_attention_mask = _check_bool("return_attention_mask", return_attention_mask)

        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.fft_length = fft_length
        self.lower_edge_hertz = lower_edge_hertz
        self.upper_edge_hertz = upper_edge_hertz
        self.log_floor = log_floor
        self.log_ceiling = log_ceiling
        self.window_frames = window_frames
        self.normalize_waveform = normalize_waveform

        # Derived constants (float64 masters; not saved, see `to_dict`).
        self.mel_filters = self._build_mel_filters()
        # Periodic Hann (tf.signal.hann_window(periodic=True)): the DFT-even window.
        self.window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(frame_length) / frame_length)
        self._torch_constants: dict[tuple[str, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # ------------------------------------------------------------------ constants

    def _build_mel_filters(self) -> np.ndarray:
        """The (fft_length // 2 + 1, feature_size) TensorFlow-style mel weight matrix."""
        # HTK mel in transformers is 2595 log10(1 + f/700), TF's is 1127 ln(1 + f/700): the
        # same scale up to a constant factor, which cancels in the triangles' slopes.
        mel = mel_filter_bank(
            num_frequency_bins=self.fft_length // 2 + 1,
            num_mel_filters=self.feature_size,
            min_frequency=self.lower_edge_hertz,
            max_frequency=self.upper_edge_hertz,
            sampling_rate=self.sampling_rate,
            norm=None,
            mel_scale="htk",
            triangularize_in_mel_space=True,
            dtype=np.float64,
        )
        # TF drops the DC bin explicitly; with lower_edge_hertz > 0 it is zero anyway.
        mel[0, :] = 0.0
        return mel

    def _constants(self, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
        """Window, the FFT bins some mel band weighs (a slice) and those rows of the mel
        matrix, as tensors on `device`, cached per (device, dtype)."""
        key = (str(device), dtype)
        if key not in self._torch_constants:
            # Bins outside every band (DC, below 60 Hz, above 7800 Hz) only ever add zeros.
            used = np.flatnonzero(self.mel_filters.any(axis=1))
            bins = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 1)
            self._torch_constants[key] = (
                torch.as_tensor(self.window, dtype=dtype, device=device),
                bins,
                torch.as_tensor(self.mel_filters[bins], dtype=dtype, device=device),
            )
        return self._torch_constants[key]

    def to_dict(self) -> dict[str, Any]:
        """Serialisable configuration: derived arrays (mel matrix, window, caches) are dropped."""
        output = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in _DERIVED_ATTRIBUTES
        }
        output["feature_extractor_type"] = self.__class__.__name__
        return output

    @property
    def window_num_samples(self) -> int:
        """Samples needed for one `window_frames`-frame window (15,920 with the defaults)."""
        return self.frame_length + (self.window_frames - 1) * self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames of `log_mel` for a clip of `num_samples` samples: ``1 + (n - 400) // 160``.

        0 when the clip is shorter than one frame. This is the plain framing formula;
        `__call__` additionally pads clips shorter than one window to `window_frames` frames.
        """
        num_samples = _check_int("num_samples", num_samples, minimum=0)
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.hop_length

    # ------------------------------------------------------------------ spectrograms

    def log_mel(self, waveforms: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """Batched torch log-mel spectrogram.

        Args:
            waveforms (`torch.Tensor` of shape `(..., samples)`):
                Float audio at `sampling_rate`, on any device.
            normalize (`bool`, *optional*):
                L2-normalise each waveform (over its last axis) first; defaults to
                `normalize_waveform`.

        Returns:
            `torch.Tensor` of shape `(..., frames, feature_size)`, float32, on the device of
            `waveforms`, with ``frames = num_frames(samples)`` (no padding rule applied).
            Float64 input is computed in float64, anything else in float32.
        """
        if not torch.is_tensor(waveforms) or not waveforms.is_floating_point():
            raise TypeError(
                "`log_mel` expects a floating-point torch tensor of shape (..., samples); "
                "use `__call__` for PCM integers, numpy arrays or lists."
            )
        if waveforms.ndim == 0:
            raise ValueError("`waveforms` must have a time axis, got a scalar tensor.")
        normalize = self.normalize_waveform if normalize is None else normalize
        dtype = torch.float64 if waveforms.dtype == torch.float64 else torch.float32
        *lead, num_samples = waveforms.shape
        x = waveforms.reshape(math.prod(lead), num_samples).to(dtype)
        num_frames = self.num_frames(num_samples)
        out = torch.empty(
            (x.shape[0], num_frames, self.feature_size), dtype=torch.float32, device=x.device
        )
        if num_frames and x.shape[0]:
            window, bins, mel = self._constants(x.device, dtype)
            if normalize:
                # Each clip's 1 / L2 norm goes into its copy of the window: one pass over
                # the samples fewer than scaling the waveform.
                norm2 = torch.matmul(x[:, None], x[:, :, None]).clamp_min(_L2_EPSILON)
                window = window * torch.rsqrt(norm2)
            frames = x.unfold(-1, self.frame_length, self.hop_length)  # a view, no copy
            step = max(1, _CHUNK_FRAMES // x.shape[0])
            # Without gradients the windowed frames are written into one zero-padded buffer
            # that every block reuses: no padding copy inside the FFT, no new allocation.
            padded = None
            if not (torch.is_grad_enabled() and x.requires_grad):
                padded = x.new_zeros((x.shape[0], min(step, num_frames), self.fft_length))
            for start in range(0, num_frames, step):
                block = frames[:, start : start + step]
                if padded is None:
                    pad = (0, self.fft_length - self.frame_length)
                    windowed = torch.nn.functional.pad(block * window, pad)
                else:
                    windowed = padded[:, : block.shape[1]]
                    torch.mul(block, window, out=windowed[..., : self.frame_length])
                real, imag = torch.view_as_real(torch.fft.rfft(windowed)[..., bins]).unbind(-1)
                # |z| as sqrt(re^2 + im^2): within an ulp of complex abs (a careful hypot,
                # which costs twice as much); squares overflow only for samples above 1e17.
                magnitude = torch.addcmul(real * real, imag, imag).sqrt_()
                mel_block = torch.matmul(magnitude, mel).clamp_(self.log_floor, self.log_ceiling)
                out[:, start : start + block.shape[1]] = mel_block.log_()
        return out.reshape(*lead, num_frames, self.feature_size)

    def log_mel_numpy(self, waveform: np.ndarray, normalize: bool | None = None) -> np.ndarray:
        """Numpy log-mel spectrogram of one clip.

        Args:
            waveform (`np.ndarray` of shape `(samples,)`):
                Float audio at `sampling_rate`.
            normalize (`bool`, *optional*):
                L2-normalise the waveform first; defaults to `normalize_waveform`.

        Returns:
            `np.ndarray` of shape `(frames, feature_size)`, float32, with
            ``frames = num_frames(samples)``. Computed in float64.
        """
        x = np.asarray(waveform, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"`waveform` must be 1-D (samples,), got shape {x.shape}.")
        normalize = self.normalize_waveform if normalize is None else normalize
        if normalize:
            x = x / math.sqrt(max(float(np.dot(x, x)), _L2_EPSILON))
        num_frames = self.num_frames(x.shape[0])
        out = np.empty((num_frames, self.feature_size), dtype=np.float32)
        if num_frames == 0:
            return out
        frames = np.lib.stride_tricks.sliding_window_view(x, self.frame_length)[:: self.hop_length]
        for start in range(0, num_frames, _CHUNK_FRAMES):
            chunk = frames[start : start + _CHUNK_FRAMES] * self.window
            magnitude = np.abs(np.fft.rfft(chunk, n=self.fft_length, axis=-1))
            mel_chunk = np.clip(magnitude @ self.mel_filters, self.log_floor, self.log_ceiling)
            out[start : start + _CHUNK_FRAMES] = np.log(mel_chunk)
        return out

    # ------------------------------------------------------------------ inputs

    def _decode_inputs(self, raw_audio: Any, sampling_rate: int | None) -> tuple[Any, int | None]:
        """Audio that carries its own rate (one item or a list of them, see
        :func:`is_audio_item`) decoded at this extractor's rate by :func:`decode_audio`, and
        that rate; any other input comes back unchanged with ``sampling_rate``."""
        items = raw_audio if isinstance(raw_audio, (list, tuple)) else [raw_audio]
        own_rate = [is_audio_item(item) for item in items]
        if not any(own_rate):
            return raw_audio, sampling_rate
        if not all(own_rate):
            raise ValueError(
                "The batch mixes audio that carries its rate (paths, bytes, dicts, decoders) "
                "with bare arrays: pass the arrays as {'array': ..., 'sampling_rate': ...} dicts."
            )
        return [decode_audio(item, self.sampling_rate)[0] for item in items], self.sampling_rate

    @staticmethod
    def _split_batch(raw_audio: Any) -> list[Any]:
        """Split `raw_audio` into a list of clips (1-D mono or 2-D multichannel elements)."""
        if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
            if raw_audio.ndim == 1:
                return [raw_audio]
            if raw_audio.ndim == 2:
                if raw_audio.shape[1] <= MAX_CHANNELS < raw_audio.shape[0]:
                    # Read as a batch, a (samples, channels) array would be `samples` clips
                    # of a few samples each: minutes of work and gigabytes for nothing.
                    raise ValueError(
                        f"Got a 2-D array of shape {tuple(raw_audio.shape)}: a 2-D array is a "
                        "batch of mono clips (batch, samples), and these clips would have "
                        f"{raw_audio.shape[1]} samples each. For one multichannel clip (as "
                        "soundfile returns it, (samples, channels)) pass it in a list: [audio]."
                    )
                return list(raw_audio)  # a batch of mono clips, as in transformers
            raise ValueError(
                f"Got an array of shape {tuple(raw_audio.shape)}. Accepted: a 1-D clip "
                "(samples,), a 2-D batch of mono clips (batch, samples), or a list of clips, "
                "each 1-D (samples,) or 2-D multichannel (channels, samples)/(samples, channels)."
            )
        if isinstance(raw_audio, Sequence) and not isinstance(raw_audio, (str, bytes)):
            if len(raw_audio) == 0:
                raise ValueError("`raw_audio` is an empty list: pass at least one clip.")
            if all(isinstance(value, numbers.Number) for value in raw_audio):
                return [np.asarray(raw_audio, dtype=np.float32)]  # one clip as a list of floats
            return list(raw_audio)
        raise ValueError(
            f"Unsupported audio input of type {type(raw_audio).__name__}: pass a numpy array, "
            "a torch tensor, a list of floats, a list of arrays/tensors, or audio that carries "
            "its rate (a path, the bytes of a file, a dict, an AudioDecoder) or a list of those."
        )

    def _prepare_clip(
        self, clip: Any, index: int, device: torch.device | None
    ) -> np.ndarray | torch.Tensor:
        """One clip as a validated 1-D float array (numpy) or tensor (on `device`)."""
        if not isinstance(clip, (np.ndarray, torch.Tensor)):
            clip = np.asarray(clip, dtype=np.float32)
        if clip.ndim not in (1, 2):
            raise ValueError(
                f"Clip {index} has shape {tuple(clip.shape)}; each clip of a list must be 1-D "
                "(samples,) or 2-D multichannel (channels, samples)/(samples, channels)."
            )
        if device is not None:
            if not torch.is_tensor(clip):
                clip = torch.from_numpy(np.ascontiguousarray(clip))
            clip = clip.to(device)
        clip = _pcm_to_float(clip, f"Clip {index}")
        if clip.ndim == 2:
            hint = (
                " To pass a batch of mono clips, pass a 2-D array directly or a list of 1-D clips."
            )
            clip = clip.mean(channel_axis(clip.shape, f"Clip {index}", hint))
        if clip.shape[0] == 0:
            raise ValueError(f"Clip {index} is empty (0 samples).")
        finite = (
            bool(torch.isfinite(clip).all())
            if torch.is_tensor(clip)
            else bool(np.isfinite(clip).all())
        )
        if not finite:
            raise ValueError(f"Clip {index} contains NaN or infinite samples.")
        return clip

    # ------------------------------------------------------------------ features per clip

    def _features_numpy(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        # Numpy clips are computed by the torch code on the CPU, as torch clips are: float32
        # in float32 (as TensorFlow computes the reference front end), float64 in float64.
        tensors = [
            torch.from_numpy(clip if clip.flags.writeable else clip.copy()) for clip in clips
        ]
        return [features.numpy() for features in self._features_torch(tensors)]

    def _features_torch(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        # Clips of equal padded length go through `log_mel` as one batch, so a 2-D batch is
        # one call while a ragged batch does not pay for padding every clip to the longest.
        lengths = [max(clip.shape[0], self.window_num_samples) for clip in clips]
        features: list[torch.Tensor | None] = [None] * len(clips)
        for length in sorted(set(lengths)):
            members = [i for i, other in enumerate(lengths) if other == length]
            if len(members) == 1 and clips[members[0]].shape[0] == length:
                batch = clips[members[0]][None]  # nothing to pad: no copy
            else:
                wide = any(clips[i].dtype == torch.float64 for i in members)
                batch = torch.zeros(
                    (len(members), length),
                    dtype=torch.float64 if wide else torch.float32,
                    device=clips[members[0]].device,
                )
                for row, i in enumerate(members):
                    batch[row, : clips[i].shape[0]] = clips[i]
            # The L2 norm ignores the zero padding, so normalising the padded batch equals
            # normalising first and padding afterwards.
            batch_features = self.log_mel(batch, normalize=self.normalize_waveform)
            for row, i in enumerate(members):
                features[i] = batch_features[row]
        return features  # type: ignore[return-value]

    def clip_features(self, clip: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mel frames `(frames, feature_size)` of one 1-D mono clip at `sampling_rate`,
        as `__call__` computes them (zero-padded to at least one window), as a tensor."""
        clip = torch.as_tensor(clip)
        if clip.ndim != 1:
            raise ValueError(f"`clip` must be 1-D (samples,), got shape {tuple(clip.shape)}.")
        if not clip.is_floating_point():
            clip = clip.float()
        return self._features_torch([clip])[0]

    # ------------------------------------------------------------------ call

    def __call__(
        self,
        raw_audio: np.ndarray
        | torch.Tensor
        | list[float]
        | list[np.ndarray]
        | list[torch.Tensor]
        | Any,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        padding: bool | str = "longest",
        max_length: int | None = None,
        truncation: bool = False,
        return_attention_mask: bool | None = None,
        resample: bool = False,
        return_windows: bool = False,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""Compute log-mel features of one clip or a batch of clips.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[float]`, `list[np.ndarray]`, `list[torch.Tensor]`, `str`, `bytes`, `dict` or `AudioDecoder`):
                A 1-D array/tensor or list of floats is one clip; a 2-D array/tensor is a batch
                of mono clips `(batch, samples)`; a list of arrays/tensors is a batch whose
                elements are 1-D mono clips or 2-D multichannel clips, whose smaller axis
                (at most 8) holds the channels, averaged to mono. Floats are taken as they
                are; integer PCM is scaled to [-1, 1) (int16 / 32768; unsigned types are
                offset binary, as 8-bit WAV). Audio that carries its own rate, alone or in a
                list, is decoded by `decode_audio` and resampled to `sampling_rate`: a path,
                the bytes of a file, an `{"array", "sampling_rate"}` dict at any rate, a
                datasets audio item (`{"path", "bytes"}` dict or `AudioDecoder`) or a
                torchcodec `AudioDecoder`.
            sampling_rate (`int`):
                Sampling rate of `raw_audio` in Hz. Required for arrays, tensors and lists of
                floats; not used for audio that carries its own rate.
            return_tensors (`str`, *optional*):
                `"pt"` for torch tensors, `"np"` for numpy arrays, `None` for lists of numpy
                arrays (one per clip, or per window with `return_windows=True`).
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                `True`/`"longest"` pads features to the longest clip, `"max_length"` to
                `max_length` frames, `False`/`"do_not_pad"` leaves them ragged (then
                `return_tensors` needs equal lengths). Padded frames hold `padding_value`.
            max_length (`int`, *optional*):
                Length in frames for `padding="max_length"` and `truncation=True`.
            truncation (`bool`, *optional*, defaults to `False`):
                Cut features longer than `max_length` frames.
            return_attention_mask (`bool`, *optional*):
                Return `attention_mask` `(batch, frames)` int32, 1 for real frames; defaults
                to the extractor's `return_attention_mask`.
            resample (`bool`, *optional*, defaults to `False`):
                Resample audio at another rate to `self.sampling_rate` (needs julius).
            return_windows (`bool`, *optional*, defaults to `False`):
                Cut every clip into non-overlapping `window_frames`-frame windows (remainder
                frames dropped) and return them stacked as `input_features`
                `(total_windows, window_frames, feature_size)` with `window_clip_index`
                `(total_windows,)` int64, the clip each window comes from. Padding, truncation
                and the attention mask do not apply then.
            device (`str` or `torch.device`, *optional*):
                Compute on this device and return tensors there. By default torch inputs are
                computed on their own device, numpy/list inputs on the CPU (as numpy arrays).

        Clips shorter than one window (`window_num_samples`: 15,920 samples = 98 frames) are
        zero-padded, after L2 normalisation, to exactly one window, so every clip gives at
        least `window_frames` frames; longer clips give ``1 + (samples - 400) // 160`` frames.

        Returns:
            [`BatchFeature`] with `input_features` `(batch, frames, feature_size)` float32 and,
            if requested, `attention_mask`; or, with `return_windows=True`, the windows and
            `window_clip_index`. `"pt"` tensors stay on the compute device.
        """
        raw_audio, sampling_rate = self._decode_inputs(raw_audio, sampling_rate)
        # transformers only warns when the rate is missing; we raise because a wrong rate
        # silently shifts every mel band and the model then sees plausible-looking garbage.
        if sampling_rate is None:
            raise ValueError(
                f"Pass `sampling_rate={self.sampling_rate}` (the rate of `raw_audio`) so that "
                "audio at another rate is not silently misread."
            )
        if isinstance(sampling_rate, float) and sampling_rate.is_integer():
            sampling_rate = int(sampling_rate)
        sampling_rate = _check_int("sampling_rate", sampling_rate)
        if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
            # An absurd rate (a sample count passed as the rate, say) resamples into
            # thousands of windows and gigabytes before anything looks wrong.
            raise ValueError(
                f"sampling_rate={sampling_rate} Hz is outside the audio rates this extractor "
                f"accepts ({MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz): is it the rate of "
                "`raw_audio`?"
            )
        if sampling_rate != self.sampling_rate and not resample:
            raise ValueError(
                f"This feature extractor expects audio at {self.sampling_rate} Hz, got "
                f"{sampling_rate} Hz. Resample the audio to {self.sampling_rate} Hz or pass "
                "`resample=True`."
            )
        if return_tensors is not None:
            return_tensors = str(getattr(return_tensors, "value", return_tensors))
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(
                f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}."
            )
        if kwargs:
            logger.warning(f"MSCLFeatureExtractor ignores the arguments {sorted(kwargs)}.")
        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask

        clips = self._split_batch(raw_audio)
        if device is None and any(torch.is_tensor(clip) for clip in clips):
            device = next(clip.device for clip in clips if torch.is_tensor(clip))
        device = torch.device(device) if device is not None else None
        # Features are inputs, not a differentiable layer: `log_mel` is there for gradients.
        with torch.no_grad():
            prepared = [self._prepare_clip(clip, i, device) for i, clip in enumerate(clips)]
            if sampling_rate != self.sampling_rate:
                prepared = [resample_audio(c, sampling_rate, self.sampling_rate) for c in prepared]
            if device is None:
                features = self._features_numpy(prepared)
            else:
                features = self._features_torch(prepared)

        if return_windows:
            return self._windows_output(features, return_tensors)
        return self._padded_output(
            features, padding, max_length, truncation, return_attention_mask, return_tensors
        )

    # ------------------------------------------------------------------ outputs

    def _windows_output(self, features: list[Any], return_tensors: str | None) -> BatchFeature:
        windows, clip_index = [], []
        from_numpy = not torch.is_tensor(features[0])
        for i, feats in enumerate(features):
            feats = torch.from_numpy(feats) if from_numpy else feats
            clip_windows = frame_windows(feats[None], self.window_frames)[0]
            windows.append(clip_windows)
            clip_index.extend([i] * len(clip_windows))
        stacked: Any = torch.cat(windows)
        if return_tensors != "pt":
            stacked = stacked.cpu().numpy()
        if return_tensors == "pt":
            index: Any = torch.tensor(clip_index, dtype=torch.int64, device=stacked.device)
        elif return_tensors == "np":
            index = np.asarray(clip_index, dtype=np.int64)
        else:
            stacked, index = list(stacked), clip_index
        return BatchFeature({"input_features": stacked, "window_clip_index": index})

    def _padded_output(
        self,
        features: list[Any],
        padding: bool | str,
        max_length: int | None,
        truncation: bool,
        return_attention_mask: bool,
        return_tensors: str | None,
    ) -> BatchFeature:
        if padding is True:
            strategy = "longest"
        elif padding is False:
            strategy = "do_not_pad"
        else:
            strategy = str(getattr(padding, "value", padding))
        if strategy not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(
                f"`padding` must be True, False, 'longest', 'max_length' or 'do_not_pad', "
                f"got {padding!r}."
            )
        if max_length is not None:
            max_length = _check_int("max_length", max_length)
        if (truncation or strategy == "max_length") and max_length is None:
            raise ValueError("`max_length` (in frames) is needed for truncation or 'max_length'.")
        if truncation:
            features = [feats[:max_length] for feats in features]
        lengths = [feats.shape[0] for feats in features]
        if strategy == "max_length":
            if max(lengths) > max_length:
                raise ValueError(
                    f"A clip has {max(lengths)} frames > `max_length`={max_length}; pass "
                    "`truncation=True` to cut it."
                )
            target = max_length
        elif strategy == "longest":
            target = max(lengths)
        else:
            target = None
            if return_tensors is not None and len(set(lengths)) > 1:
                raise ValueError(
                    "Clips of different lengths cannot be returned as one tensor without "
                    "padding: use padding='longest' or return_tensors=None."
                )

        is_torch = torch.is_tensor(features[0])
        if target is not None:
            padded = []
            for feats, length in zip(features, lengths, strict=True):
                if length < target:
                    if is_torch:
                        fill = feats.new_full((target - length, self.feature_size), 0.0)
                        feats = torch.cat([feats, fill.fill_(self.padding_value)])
                    else:
                        fill = np.full(
                            (target - length, self.feature_size),
                            self.padding_value,
                            dtype=np.float32,
                        )
                        feats = np.concatenate([feats, fill])
                padded.append(feats)
            features = padded
        masks = [np.zeros(feats.shape[0], dtype=np.int32) for feats in features]
        for mask, length in zip(masks, lengths, strict=True):
            mask[:length] = 1

        if is_torch and return_tensors != "pt":
            features = [feats.cpu().numpy() for feats in features]
        if return_tensors == "pt":
            device = features[0].device if is_torch else torch.device("cpu")
            values: Any = torch.stack([torch.as_tensor(feats) for feats in features])
            mask_values: Any = torch.from_numpy(np.stack(masks)).to(device)
        elif return_tensors == "np":
            values, mask_values = np.stack(features), np.stack(masks)
        else:
            values, mask_values = list(features), masks
        data = {"input_features": values}
        if return_attention_mask:
            data["attention_mask"] = mask_values
        return BatchFeature(data)


def load_feature_extractor(
    source: MSCLFeatureExtractor | str | os.PathLike | None = None,
    num_mel_bins: int | None = None,
    missing_ok: bool = False,
) -> MSCLFeatureExtractor:
    """The front end of a model, a chunk set or a command, found one way everywhere.

    ``source`` is an extractor (returned as it is), a folder or Hub id holding
    ``preprocessor_config.json``, or ``None`` for the default front end with
    ``num_mel_bins`` mel bands (64 when that is ``None`` too). With ``missing_ok``, a
    ``source`` that holds no front end also gives the default one (a model folder saved
    without its extractor). When ``num_mel_bins`` is given (a config's), an extractor with
    another number of bands is refused: it belongs to another model.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            source = MSCLFeatureExtractor.from_pretrained(os.fspath(source))
        except OSError:  # no preprocessor_config.json there (or offline)
            if not missing_ok:
                raise
            source = None
    if source is None:
        return MSCLFeatureExtractor(feature_size=64 if num_mel_bins is None else num_mel_bins)
    if num_mel_bins is not None and source.feature_size != num_mel_bins:
        raise ValueError(
            f"the feature extractor makes {source.feature_size} mel bins but the model takes "
            f"{num_mel_bins} (config.num_mel_bins): they belong to different models"
        )
    return source
