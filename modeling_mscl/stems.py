"""Source separators: Demucs for any music, oracle stems for multitrack data.

A separator turns mixtures into the four sources MSCL contrasts against the mixture:
``vocals``, ``drums``, ``bass`` and ``other``, as 16 kHz mono
waveforms. Every separator implements one protocol, :class:`Separator`, i.e. one method,
``separate``: :class:`DemucsSeparator` runs a Demucs model (``demucs`` is imported
lazily); :class:`OracleSeparator` reads the real stems named in each track row (MUSDB18
layout, the offline corpus). The map step that turns track rows into chunk rows lives in
:mod:`modeling_mscl.chunks`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .audio_decoding_mscl import audio_name, channel_axis, resample_audio, resampled_length
from .audio_io import AudioDecodeError, in_threads, load_audio

__all__ = [
    "SAMPLING_RATE",
    "SOURCES",
    "DemucsSeparator",
    "DemucsWeightsNotFoundError",
    "OracleSeparator",
    "Separator",
    "check_separator",
    "load_demucs_model",
]

SOURCES = ("vocals", "drums", "bass", "other")
# The log-mel front end works at 16 kHz, so stems leave here at it.
SAMPLING_RATE = 16000
# Mean absolute amplitude above which a source counts as present in a chunk.
DEFAULT_THRESHOLD = 0.01
# Seconds by which an oracle stem's length may differ from its mixture's.
STEM_LENGTH_TOLERANCE = 1.0
# Demucs' own input scaling (demucs.api.Separator.separate_tensor): the mono reference's
# standard deviation is floored so digital silence does not divide by zero.
_STD_FLOOR = 1e-8


@runtime_checkable
class Separator(Protocol):
    """What the stems map step separates with: :attr:`sampling_rate` and :meth:`separate`."""

    sampling_rate: int  # of the returned stems; the map step needs SAMPLING_RATE

    def separate(
        self,
        waveforms: Sequence[np.ndarray | torch.Tensor],
        sampling_rates: Sequence[int],
        *,
        device: str | torch.device | None = None,
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, torch.Tensor] | AudioDecodeError]:
        """Separate each mixture ((samples,) or (channels, samples) at its rate).

        ``rows`` are the track rows the mixtures come from, for separators that read what
        a row names (oracle stem files); a model ignores them.

        Returns one entry per input: a dict mapping every name in :data:`SOURCES` to a
        float32 tensor of shape (:func:`resampled_length` (samples, rate, 16000),) -- mono
        at :attr:`sampling_rate` Hz, as long as the 16 kHz mixture, on ``device`` when
        given -- or the :class:`AudioDecodeError` that kept a track's stems from being
        read (the map step skips that track and reports why). Other errors raise.
        """
        ...


def check_separator(separator: Any) -> Separator:
    """``separator`` if it implements :class:`Separator` at 16 kHz, else a clear error."""
    method = getattr(separator, "separate", None)
    try:
        params = inspect.signature(method).parameters if callable(method) else {}
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        params = {"device": None, "rows": None}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not isinstance(separator, Separator) or not (takes_all or {"device", "rows"} <= set(params)):
        raise TypeError(
            f"{type(separator).__name__} is not a separator: the stems map step needs a "
            "`sampling_rate` attribute and a method `separate(waveforms, sampling_rates, *, "
            "device=None, rows=None)` returning one dict of stems per track (see "
            "modeling_mscl.stems.Separator)"
        )
    if separator.sampling_rate != SAMPLING_RATE:
        raise ValueError(
            f"{type(separator).__name__} returns stems at {separator.sampling_rate} Hz; the "
            f"stems map step needs {SAMPLING_RATE} Hz"
        )
    return separator


class DemucsWeightsNotFoundError(FileNotFoundError):
    """The weights of a pretrained Demucs model could not be found or downloaded."""


def _as_channels_first(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 (channels, samples) tensor from (samples,) or 2-D multichannel audio."""
    wav = torch.as_tensor(waveform)
    if not wav.is_floating_point():
        raise TypeError(f"expected floating-point audio, got dtype {wav.dtype}")
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ValueError(
            f"expected audio of shape (samples,) or (channels, samples), got {tuple(wav.shape)}"
        )
    if channel_axis(wav.shape, "A waveform") == 1:
        wav = wav.T  # (samples, channels), as soundfile returns it
    return wav.float()


def _match_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Mono is duplicated, extra channels of a stereo model's input beyond 2 are dropped
    (front left/right of a surround file), a mono model gets the downmix."""
    if wav.shape[0] == channels:
        return wav
    if channels == 1:
        return wav.mean(0, keepdim=True)
    if wav.shape[0] == 1:
        return wav.expand(channels, -1)
    if wav.shape[0] > channels:
        return wav[:channels]
    raise ValueError(f"cannot map {wav.shape[0]} audio channels onto a {channels}-channel model")


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # an old or missing huggingface_hub: only the message loses detail
        return "~/.cache/huggingface/hub"


def _folder_listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".th", ".yaml"))
    return ", ".join(names) if names else "no .th or .yaml files"


def load_demucs_model(
    name: str = "htdemucs", repo: str | os.PathLike | None = None, trust_repo: bool = False
) -> Any:
    """Load a pretrained Demucs model (or bag of models) for inference.

    Demucs stores its models as pickles: loading one runs ``torch.load`` with
    ``weights_only=False`` and instantiates the class its metadata names, i.e. it can run
    code from the file. Demucs' own models (a plain name such as ``htdemucs``, from Demucs'
    repository) load as Demucs loads them; a local ``repo`` folder or an ``hf://`` name
    loads only with ``trust_repo=True``, a statement that you trust where the files came from.

    Args:
        name: a Demucs model name (``htdemucs``, ``htdemucs_ft``, ``mdx_extra`` ...), a
            signature, or ``hf://namespace/name``.
        repo: a local folder holding the model's ``<name>.yaml`` bag file and its
            ``<signature>[-<checksum>].th`` weights. Without it, Demucs looks in the
            Hugging Face hub cache (and downloads when online), then in the torch hub
            cache / the legacy download URL.
        trust_repo: allow loading (unpickling) the files of ``repo`` or of an ``hf://``
            repository.

    Raises:
        ValueError: ``repo`` or an ``hf://`` name without ``trust_repo``.
        ImportError: ``demucs`` is not installed.
        DemucsWeightsNotFoundError: nothing could be loaded; the message lists what was
            tried and how to provide the weights.
    """
    try:
        from demucs.pretrained import get_model
    except ImportError as err:
        raise ImportError(
            "DemucsSeparator needs the demucs package: `pip install demucs` "
            "(or `pip install modeling-mscl`, which depends on it)"
        ) from err

    howto = (
        "To provide the weights: on a machine with internet access run "
        f"`python -c \"from demucs.pretrained import get_model; get_model('{name}')\"`, "
        "which stores them in the Hugging Face hub cache (copy that cache folder, or set "
        "HF_HUB_CACHE to a copy), or put the model's <name>.yaml and .th files (URLs in "
        "demucs/remote/files.txt of the demucs package) in a folder and pass it as "
        "repo=... / --repo (with trust_repo=True / --trust-repo)."
    )
    if repo is not None:
        repo = Path(repo).expanduser()
        if not repo.is_dir():
            # demucs itself would call sys.exit() here; a clear exception is friendlier.
            raise DemucsWeightsNotFoundError(
                f"Demucs model folder {repo} does not exist or is not a folder. {howto}"
            )
        tried = f"the local folder {repo} (it holds: {_folder_listing(repo)})"
    elif name.startswith("hf://"):
        tried = f"the Hugging Face hub repository {name[5:]} (cache: {_hf_cache_dir()})"
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        tried = (
            f"(1) the Hugging Face hub (Demucs' repository for '{name}' under adefossez/, "
            f"cache {_hf_cache_dir()}{', offline mode' if offline else ''}), "
            f"(2) the torch hub cache {Path(torch.hub.get_dir()) / 'checkpoints'} and "
            "Demucs' legacy download URL"
        )
    if (repo is not None or name.startswith("hf://")) and not trust_repo:
        source = f"the folder {repo}" if repo is not None else f"the repository {name}"
        raise ValueError(
            f"loading Demucs model '{name}' from {source} unpickles its files (torch.load "
            "with weights_only=False), which can run any code they contain; pass "
            "trust_repo=True (--trust-repo) if you trust where they came from"
        )
    try:
        model = get_model(name, repo=repo)
    except (KeyboardInterrupt, MemoryError):
        raise
    except BaseException as err:  # noqa: B036 - demucs can sys.exit(); anything else is "not found"
        raise DemucsWeightsNotFoundError(
            f"Could not load the Demucs model '{name}'. Tried {tried}; the last error was: "
            f"{type(err).__name__}: {err}. {howto}"
        ) from err
    model.eval()
    return model


def _source_plan(model_sources: Sequence[str]) -> list[str]:
    """For each model output, the :data:`SOURCES` name it is added to.

    Sources a model has beyond the four (guitar and piano of htdemucs_6s) belong to
    "other", as in MUSDB18's definition of the accompaniment stems.
    """
    missing = [s for s in SOURCES[:3] if s not in model_sources]
    if missing:
        raise ValueError(
            f"the Demucs model separates {list(model_sources)}, which lacks {missing}; "
            f"MSCL needs {list(SOURCES)}"
        )
    return [s if s in SOURCES else "other" for s in model_sources]


class DemucsSeparator:
    """Separate music into :data:`SOURCES` with Demucs (``demucs.apply.apply_model``).

    Inputs may have any rate and channel count: they are converted to the model's rate
    (44.1 kHz) and channels (stereo: mono duplicated) on the device, scaled the way
    ``demucs.api`` does, separated several tracks per ``apply_model`` call, and returned
    as 16 kHz mono stems. The model is loaded on first use, so a separator is cheap to
    create, pickle and send to ``datasets`` worker processes.

    Args:
        model (`str`, *optional*, defaults to `"htdemucs"`):
            Demucs model name or signature, see :func:`load_demucs_model`.
        repo (`str` or `os.PathLike`, *optional*):
            Local folder with the model's weights (``.yaml`` + ``.th`` files).
        trust_repo (`bool`, *optional*, defaults to `False`):
            Allow unpickling the files of ``repo`` or of an ``hf://`` model (see
            :func:`load_demucs_model`); required for both.
        device (`str`, *optional*):
            Where to run; defaults to CUDA when available, else the CPU. A ``device``
            passed to :meth:`separate` wins.
        segment (`float`, *optional*):
            Seconds per model call; defaults to the model's training segment (7.8 s for
            htdemucs, which cannot go longer).
        overlap (`float`, *optional*, defaults to 0.25):
            Overlap between consecutive segments, as a fraction of a segment.
        shifts (`int`, *optional*, defaults to 0):
            Random time-shift averaging passes ("shift trick"; 0 = off, deterministic).
        batch_size (`int`, *optional*):
            At most this many tracks go through one ``apply_model`` call. Defaults to 4 on
            a GPU and 1 on a CPU, where batching tracks made htdemucs ~25 % slower
            (``scripts/benchmark_separation.py``).
        max_padding (`float`, *optional*, defaults to 0.1):
            Tracks are batched only while the zero padding that makes them equal length
            stays below this fraction of the real audio; longer ones get their own call.
        model_instance (`torch.nn.Module`, *optional*):
            An already built Demucs model (``HTDemucs``, a bag of models ...) to use
            instead of loading ``model``; tests pass a small randomly initialised one.
        max_device_seconds (`float`, *optional*, defaults to 600):
            On a GPU, tracks longer than this stay on the CPU as a whole and are streamed
            through the device segment by segment (``apply_model(device=...)``): the
            separated stems of an hour at 44.1 kHz take about 5 GB, times the tracks per
            call. Shorter tracks live on the device from start to end. ``None``: no limit.
    """

    sampling_rate = SAMPLING_RATE

    def __init__(
        self,
        model: str = "htdemucs",
        repo: str | os.PathLike | None = None,
        device: str | None = None,
        segment: float | None = None,
        *,
        trust_repo: bool = False,
        overlap: float = 0.25,
        shifts: int = 0,
        batch_size: int | None = None,
        max_padding: float = 0.1,
        model_instance: torch.nn.Module | None = None,
        max_device_seconds: float | None = 600.0,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if shifts < 0:
            raise ValueError(f"shifts must be >= 0, got {shifts}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_padding < 0:
            raise ValueError(f"max_padding must be >= 0, got {max_padding}")
        if segment is not None and segment <= 0:
            raise ValueError(f"segment must be > 0 seconds, got {segment}")
        if max_device_seconds is not None and not max_device_seconds > 0:
            raise ValueError(f"max_device_seconds must be > 0, got {max_device_seconds}")
        self.model_name = model
        self.repo = None if repo is None else str(Path(repo).expanduser())
        self.trust_repo = bool(trust_repo)
        self.device = None if device is None else str(device)
        self.segment = segment
        self.overlap = float(overlap)
        self.shifts = int(shifts)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.max_padding = float(max_padding)
        self.max_device_seconds = None if max_device_seconds is None else float(max_device_seconds)
        self._injected = model_instance is not None
        self._model = model_instance
        if model_instance is not None:
            # apply_model() calls eval(); doing it now keeps the pickled state (and so the
            # datasets fingerprint) identical before and after the first separation.
            model_instance.eval()
            _source_plan(model_instance.sources)

    def __getstate__(self) -> dict[str, Any]:
        # A lazily loaded model is runtime state: leaving it out keeps the pickle small for
        # worker processes and the datasets fingerprint independent of whether a
        # separation already ran. An injected model is the configuration, so it stays.
        state = dict(self.__dict__)
        if not self._injected:
            state["_model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def fingerprint(self) -> str:
        """A hash of the configuration and, for an injected model, of its weights.

        Same value as hashing the pickled separator would mean, but fast: ``datasets``'
        pickling hasher formats every tensor as text, seconds for a full-size model.
        """
        import hashlib

        digest = hashlib.sha256()
        # Where the stems are kept does not change them: not part of the hash.
        config = {
            k: v
            for k, v in self.__getstate__().items()
            if k not in ("_model", "max_device_seconds")
        }
        digest.update(repr(sorted(config.items())).encode())
        if self._injected:
            digest.update(type(self._model).__qualname__.encode())
            for key, value in self._model.state_dict().items():
                digest.update(key.encode())
                digest.update(str(value.dtype).encode() + repr(tuple(value.shape)).encode())
                tensor = value.detach().cpu().contiguous()
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.float()
                digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        model = type(self._model).__name__ if self._injected else repr(self.model_name)
        return (
            f"DemucsSeparator(model={model}, repo={self.repo!r}, device={self.device!r}, "
            f"segment={self.segment}, overlap={self.overlap}, shifts={self.shifts}, "
            f"batch_size={self.batch_size})"
        )

    @property
    def model(self) -> Any:
        """The Demucs model, loaded on first access."""
        if self._model is None:
            self._model = load_demucs_model(self.model_name, self.repo, self.trust_repo)
            _source_plan(self._model.sources)
        return self._model

    @property
    def model_sampling_rate(self) -> int:
        """The rate the model separates at (44,100 Hz for the released models)."""
        return int(self.model.samplerate)

    def resolve_device(self, device: str | torch.device | None = None) -> torch.device:
        """``device``, else the configured one, else CUDA when available, else CPU."""
        if device is None:
            device = self.device
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(device)

    def _model_on(self, device: torch.device) -> Any:
        """The model, moved to ``device`` once: ``apply_model`` moves a model (each model
        of a bag) to the device and back for every call, unless it is already there."""
        model = self.model
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        param = next(iter(model.parameters()), None)
        if param is not None and param.device != device:
            model.to(device)
        return model

    def _storage(self, num_samples: int, rate: int, device: torch.device) -> torch.device:
        """Where a whole track and its stems live: the device, or the CPU for long tracks
        on a GPU (see ``max_device_seconds``)."""
        if device.type == "cpu" or self.max_device_seconds is None:
            return device
        return device if num_samples <= self.max_device_seconds * rate else torch.device("cpu")

    def _groups(self, lengths: list[int], batch_size: int | None = None) -> list[list[int]]:
        """Indices of tracks to separate together: longest first, at most ``batch_size``
        (default: :attr:`batch_size`, else 1) per group, padding bounded."""
        batch_size = batch_size or self.batch_size or 1
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        groups: list[list[int]] = []
        for i in order:
            if groups:
                group = groups[-1]
                longest = lengths[group[0]]
                real = sum(lengths[j] for j in group) + lengths[i]
                padded = longest * (len(group) + 1)
                if len(group) < batch_size and padded - real <= self.max_padding * real:
                    group.append(i)
                    continue
            groups.append([i])
        return groups

    @torch.inference_mode()
    def separate(
        self,
        waveforms: Sequence[np.ndarray | torch.Tensor],
        sampling_rates: Sequence[int],
        *,
        device: str | torch.device | None = None,
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Separate mixtures into 16 kHz mono :data:`SOURCES` (see :class:`Separator`).

        Args:
            waveforms: one float array per track, (samples,) or 2-D multichannel
                (channels on the smaller axis, see
                :func:`~modeling_mscl.feature_extraction_mscl.channel_axis`).
            sampling_rates: the rate of each waveform, in Hz.
            device: where to compute; see :meth:`resolve_device`.
            rows: ignored (the model hears only the audio).

        Returns:
            Per track, a dict from each name in :data:`SOURCES` to a float32 tensor of
            shape (resampled_length(samples, rate, 16000),) on ``device``.
        """
        from demucs.apply import apply_model

        if len(waveforms) != len(sampling_rates):
            raise ValueError(
                f"got {len(waveforms)} waveforms but {len(sampling_rates)} sampling rates"
            )
        device = self.resolve_device(device)
        model = self._model_on(device)
        model_sr = int(model.samplerate)
        plan = _source_plan(model.sources)

        prepared, scales, out_lengths = [], [], []
        for wav, sr in zip(waveforms, sampling_rates, strict=True):
            sr = int(sr)
            wav = _as_channels_first(wav)
            wav = wav.to(self._storage(wav.shape[-1], sr, device))
            out_lengths.append(resampled_length(wav.shape[-1], sr, SAMPLING_RATE))
            wav = resample_audio(
                _match_channels(wav, model.audio_channels), sr, model_sr, full=True
            )
            # Same scaling as demucs.api: zero mean, unit variance of the mono reference.
            ref = wav.mean(0)
            mean, std = ref.mean(), ref.std() + _STD_FLOOR
            prepared.append((wav - mean) / std)
            scales.append((mean, std))

        results: list[dict[str, torch.Tensor] | None] = [None] * len(prepared)
        per_call = self.batch_size or (4 if device.type == "cuda" else 1)
        for group in self._groups([w.shape[-1] for w in prepared], per_call):
            length = prepared[group[0]].shape[-1]
            # The group's tracks live where its longest one does (sorted: the first).
            storage = prepared[group[0]].device
            mix = torch.zeros(len(group), prepared[group[0]].shape[0], length, device=storage)
            for row, i in enumerate(group):
                mix[row, :, : prepared[i].shape[-1]] = prepared[i].to(storage)
            out = apply_model(
                model,
                mix,
                shifts=self.shifts,
                split=True,
                overlap=self.overlap,
                device=device,
                segment=self.segment,
                progress=False,
            )  # (group, model sources, channels, length)
            for row, i in enumerate(group):
                mean, std = scales[i]
                mean, std = mean.to(storage), std.to(storage)
                stems = out[row, :, :, : prepared[i].shape[-1]] * std + mean
                mono = stems.mean(1)  # (model sources, samples at model_sr)
                mono = resample_audio(mono, model_sr, SAMPLING_RATE, output_length=out_lengths[i])
                track = {name: torch.zeros_like(mono[0]) for name in SOURCES}
                for k, name in enumerate(plan):
                    track[name] = track[name] + mono[k]
                # 16 kHz mono: a tenth of the model-rate stereo stems, on the device.
                results[i] = {name: stem.to(device) for name, stem in track.items()}
        return [r for r in results if r is not None]


class OracleSeparator:
    """Stems read from the paths in a track row: MUSDB18-style folders, the offline corpus.

    Args:
        columns (`Mapping[str, str]`, *optional*):
            Row column holding the path of each source; defaults to the source names
            (``vocals``, ``drums``, ``bass``, ``other``). A missing column, or an empty
            or ``None`` path, means the track has no such source: a silent stem.
    """

    sampling_rate = SAMPLING_RATE

    def __init__(self, columns: Mapping[str, str] | None = None) -> None:
        columns = dict(columns or {name: name for name in SOURCES})
        unknown = sorted(set(columns) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; expected names from {list(SOURCES)}")
        self.columns = {name: columns.get(name, name) for name in SOURCES}

    def __repr__(self) -> str:
        return f"OracleSeparator(columns={self.columns})"

    def separate(
        self,
        waveforms: Sequence[np.ndarray | torch.Tensor],
        sampling_rates: Sequence[int],
        *,
        device: str | torch.device | None = None,
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, torch.Tensor] | AudioDecodeError]:
        """The stems named in ``rows``, as long as each 16 kHz mixture (see :class:`Separator`).

        The mixtures give only their length; the files are read in threads. A track with
        an unreadable stem gets its :class:`AudioDecodeError`. ``device`` is ignored: the
        stems stay on the CPU.
        """
        if rows is None or len(rows) != len(waveforms) or len(rows) != len(sampling_rates):
            raise ValueError(
                "OracleSeparator reads the stem files named in each track row: pass one row "
                f"per waveform (got {len(waveforms)} waveforms, {len(sampling_rates)} "
                f"rates and {'no' if rows is None else len(rows)} rows)"
            )
        lengths = [
            resampled_length(np.shape(wav)[-1], rate, SAMPLING_RATE)
            for wav, rate in zip(waveforms, sampling_rates, strict=True)
        ]
        loaded = in_threads(lambda i: self.stems_from_row(rows[i], lengths[i]), range(len(rows)))
        return [stems if error is None else error for stems, error in loaded]

    def stems_from_row(self, row: Mapping[str, Any], num_samples: int) -> dict[str, torch.Tensor]:
        """Decode the row's stems at 16 kHz mono, cut or zero-padded to ``num_samples``.

        Raises:
            AudioDecodeError: a stem file is missing or unreadable (the map step skips
                the track and reports the reason).
        """
        stems = {}
        for name in SOURCES:
            path = row.get(self.columns[name])
            wav = np.zeros(num_samples, dtype=np.float32)
            if path:
                try:
                    decoded = load_audio(path, sampling_rate=SAMPLING_RATE, mono=True)
                except AudioDecodeError as err:
                    raise AudioDecodeError(f"{name} stem: {err}") from err
                # Stems of one multitrack song can differ from the mixture by a few
                # samples (encoder padding); the mixture's length is the reference. More
                # than a second apart, they are not one recording (or a file is truncated).
                if abs(decoded.shape[-1] - num_samples) > STEM_LENGTH_TOLERANCE * SAMPLING_RATE:
                    raise AudioDecodeError(
                        f"{name} stem {audio_name(path)} lasts {decoded.shape[-1] / SAMPLING_RATE:.2f} s "
                        f"but the mixture {num_samples / SAMPLING_RATE:.2f} s"
                    )
                n = min(num_samples, decoded.shape[-1])
                wav[:n] = decoded[:n]
            stems[name] = torch.from_numpy(wav)
        return stems
