"""The stems map step: track rows in, 4-second chunk rows of log-mels out.

Each track is separated (:mod:`modeling_mscl.stems`), the log-mel of the mixture and of
every stem is computed over the whole track by the feature extractor (each waveform
L2-normalised as one clip, with the default one) and cut into consecutive chunks of its
:class:`~modeling_mscl.chunk_set.ChunkGeometry` (392 frames by default). Every chunk row
holds the five spectrograms (float16), the presence flag of each source and the track's
labels. :func:`prepare_chunks` runs the step shard by shard so that a re-run is served
from the cache and an interrupted run resumes where it stopped, and writes the result as
a chunk set (:mod:`modeling_mscl.chunk_set`).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Audio, Dataset, DatasetDict, Features, Value, concatenate_datasets
from datasets.fingerprint import Hasher

from ._files import naming_full_disk, write_json_atomic
from .audio_decoding_mscl import decode_audio, resample_audio
from .audio_io import AudioDecodeError, audio_name, in_threads
from .chunk_set import (
    CHUNK_COLUMNS,
    FORMAT_VERSION,
    ChunkGeometry,
    chunk_features,
    claim_chunk_folder,
    load_chunk_set,
    save_chunk_set,
)
from .chunk_shards import check_sharding, shard_tracks
from .feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from .run_lock import RunLock
from .stems import DEFAULT_THRESHOLD, SAMPLING_RATE, SOURCES, Separator, check_separator

__all__ = [
    "DEFAULT_THRESHOLD",
    "StemChunker",
    "prepare_chunks",
    "presence_flags",
    "worker_device",
]

logger = logging.getLogger(__name__)

TRACK_COLUMNS = ("track_id", "audio", *SOURCES)
# Bookkeeping columns of prepare_chunks: one record row per input track (chunk_index
# -1) carries its duration and, for a skipped track, the reason. They are dropped
# before the dataset is saved.
_STATUS = "_mscl_skip_reason"
_SECONDS = "_mscl_seconds"


def presence_flags(
    stem: np.ndarray | torch.Tensor,
    num_chunks: int,
    chunk_samples: int,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Whether a source sounds in each chunk: mean |x| of the raw stem > ``threshold``.

    Args:
        stem: the raw (not normalised) stem, shape (..., samples), with at least
            ``num_chunks * chunk_samples`` samples.
        num_chunks: chunks to flag; chunk c covers samples
            ``[c * chunk_samples, (c + 1) * chunk_samples)``.
        chunk_samples: samples per chunk (:attr:`ChunkGeometry.samples`, 62,720 by
            default: one chunk hop of frames, so flags and spectrograms share their
            boundaries; the reference's 64,000-sample hop drifts against its own chunks).
        threshold: mean absolute amplitude a present source exceeds (0.01 in the paper).

    Returns:
        A bool array of shape (..., num_chunks).
    """
    x = torch.as_tensor(stem)
    needed = num_chunks * chunk_samples
    if x.shape[-1] < needed:
        raise ValueError(f"{num_chunks} chunks need {needed} samples, the stem has {x.shape[-1]}")
    x = x[..., :needed].reshape(*x.shape[:-1], num_chunks, chunk_samples)
    # float64 accumulation: a sum of 62,720 float32 values would blur the threshold.
    return (x.abs().mean(-1, dtype=torch.float64) > threshold).cpu().numpy()


def _label_columns(column_names: list[str]) -> list[str]:
    return [c for c in column_names if c not in TRACK_COLUMNS]


def _decode(audio: Any) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 at the audio's own rate, and that rate.

    ``audio`` is a row's audio item: a path, a datasets ``{"path", "bytes"}`` item or
    anything else :func:`~modeling_mscl.audio_io.load_audio` takes.
    """
    if audio is None or (isinstance(audio, str) and not audio):
        raise AudioDecodeError("the row has no audio")
    return decode_audio(audio, sampling_rate=None, mono=False)


def _undecoded(tracks: Dataset) -> Dataset:
    """``tracks`` with every datasets ``Audio`` column as ``Audio(decode=False)``: the map
    step decodes the ``{"path", "bytes"}`` items itself (soundfile first, so torchcodec
    is needed only for the formats soundfile cannot read)."""
    for name, feature in tracks.features.items():
        if isinstance(feature, Audio) and feature.decode:
            tracks = tracks.cast_column(name, Audio(decode=False))
    return tracks


def worker_device(device: str | None, rank: int | None, gpus: int) -> torch.device:
    """The device of map worker ``rank`` (None: no worker pool) on a machine with ``gpus``.

    ``None`` or a bare ``"cuda"`` spreads the workers over the GPUs, worker ``rank`` on
    ``cuda:{rank % gpus}`` (so ``num_proc`` = the GPU count uses each once); a device with
    an index (``"cuda:1"``) or another type is taken as given.
    """
    if device is None:
        return torch.device("cuda", (rank or 0) % gpus) if gpus else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and rank is not None and gpus > 1:
        return torch.device("cuda", rank % gpus)
    return resolved


def _to_16k_mono(wav: np.ndarray, rate: int, device: torch.device) -> torch.Tensor:
    return resample_audio(torch.from_numpy(wav).to(device).mean(0), rate, SAMPLING_RATE)


class StemChunker:
    """The map function: a batch of track rows in, chunk rows out.

    Use it as ``tracks.map(StemChunker(separator), batched=True, with_rank=True,
    remove_columns=tracks.column_names, features=chunker.features(tracks.features))``.
    Columns other than ``track_id``, ``audio`` and the stem paths are labels, copied to
    every chunk of the track. An ``audio`` value is a path or any audio item
    :func:`~modeling_mscl.audio_io.load_audio` takes (a datasets ``{"path", "bytes"}`` item,
    an ``AudioDecoder``). Tracks that cannot be decoded, are silent (all-zero
    mixture) or shorter than one chunk are skipped with a logged reason.

    It pickles to its configuration only (no loaded model, no caches; the feature
    extractor as its ``to_dict()``), so ``datasets`` fingerprints it the same way in every
    run.

    Args:
        separator (`Separator`):
            :class:`~modeling_mscl.stems.DemucsSeparator`,
            :class:`~modeling_mscl.stems.OracleSeparator` for rows with stem paths, or
            anything else that implements :class:`~modeling_mscl.stems.Separator`.
        threshold (`float`, *optional*, defaults to 0.01):
            Presence threshold on the mean absolute amplitude of a chunk.
        device (`str`, *optional*):
            Where to separate and compute log-mels. By default the separator's device;
            if it has none, or it is a bare ``"cuda"``, worker ``rank`` takes
            ``cuda:{rank % device_count}`` when GPUs exist (so ``num_proc`` = number of
            GPUs uses each once), else the CPU (see :func:`worker_device`).
        records (`bool`, *optional*, defaults to `False`):
            Also emit one bookkeeping row per track (``chunk_index`` -1) with its
            duration and skip reason; :func:`prepare_chunks` uses them for its report.
        feature_extractor (`MSCLFeatureExtractor`, *optional*):
            The front end of the log-mels (16 kHz, a 98-frame window); the chunks are
            its :class:`~modeling_mscl.chunk_set.ChunkGeometry`. Defaults to
            ``MSCLFeatureExtractor()``.
    """

    def __init__(
        self,
        separator: Separator,
        threshold: float = DEFAULT_THRESHOLD,
        device: str | None = None,
        records: bool = False,
        feature_extractor: MSCLFeatureExtractor | None = None,
    ) -> None:
        check_separator(separator)
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
        self.separator = separator
        self.threshold = float(threshold)
        self.device = None if device is None else str(device)
        self.records = bool(records)
        fe = load_feature_extractor(feature_extractor)
        if fe.sampling_rate != SAMPLING_RATE:
            raise ValueError(
                f"the feature extractor works at {fe.sampling_rate} Hz; the separated stems "
                f"are {SAMPLING_RATE} Hz"
            )
        self.geometry = ChunkGeometry.of(fe)
        self.front_end = fe.to_dict()  # what pickles and is hashed
        self._extractor: MSCLFeatureExtractor | None = fe

    @property
    def feature_extractor(self) -> MSCLFeatureExtractor:
        """The front end of the log-mels."""
        if self._extractor is None:
            self._extractor = MSCLFeatureExtractor.from_dict(self.front_end)
        return self._extractor

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_extractor"] = None  # caches per-device tensors; rebuilt on demand
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def fingerprint(self) -> str:
        """A stable hash of this map function (what ``datasets`` would hash, faster when
        the separator offers its own ``fingerprint()``)."""
        separator_fingerprint = getattr(self.separator, "fingerprint", None)
        if separator_fingerprint is None:
            return Hasher.hash(self)
        state = {k: v for k, v in self.__getstate__().items() if k != "separator"}
        return Hasher.hash([type(self), state, type(self.separator), separator_fingerprint()])

    def features(self, track_features: Mapping[str, Any]) -> Features:
        """Output features for input tracks with ``track_features``."""
        labels = {c: track_features[c] for c in _label_columns(list(track_features))}
        features = chunk_features(self.geometry.frames, self.geometry.num_bins, labels)
        if self.records:
            features[_STATUS] = Value("string")
            features[_SECONDS] = Value("float64")
        return features

    def _device(self, rank: int | None) -> torch.device:
        device = self.device or getattr(self.separator, "device", None)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return worker_device(device, rank, gpus)

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        """Separate and chunk a batch of track rows (see the class docstring)."""
        if "track_id" not in batch or "audio" not in batch:
            raise KeyError(f"track rows need 'track_id' and 'audio' columns, got {sorted(batch)}")
        device = self._device(rank)
        geometry = self.geometry
        labels = _label_columns(list(batch))
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        out: dict[str, list] = {name: [] for name in CHUNK_COLUMNS + tuple(labels)}
        if self.records:
            out[_STATUS], out[_SECONDS] = [], []

        def record(row: dict, reason: str, seconds: float) -> None:
            if reason:
                logger.warning("skipping track %s: %s", row["track_id"], reason)
            if not self.records:
                return
            out["track_id"].append(str(row["track_id"]))
            out["chunk_index"].append(-1)
            for name in ("mixture", *SOURCES, "present"):
                out[name].append(None)
            for name in labels:
                out[name].append(row[name])
            out[_STATUS].append(reason)
            out[_SECONDS].append(seconds)

        # 1. decode and check every mixture (files in parallel: decoding releases the GIL)
        ready = []  # (row, native audio, rate, 16 kHz mono mixture)
        decoded = in_threads(lambda row: _decode(row.get("audio")), rows)
        for row, (result, error) in zip(rows, decoded, strict=True):
            if error is not None:
                record(row, f"unreadable: {error}", 0.0)
                continue
            wav, rate = result
            seconds = wav.shape[-1] / rate
            if not np.any(wav):
                record(row, "silent: every sample of the mixture is zero", seconds)
                continue
            mix = _to_16k_mono(wav, rate, device)
            if mix.shape[-1] < geometry.min_track_samples:
                record(
                    row,
                    f"too short: {seconds:.2f} s, one chunk needs "
                    f"{geometry.min_track_samples / SAMPLING_RATE:.2f} s",
                    seconds,
                )
                continue
            ready.append((row, wav, rate, mix))

        # 2. separate, all tracks in one call (a model batches them, oracle stems are read
        # in threads); a track whose stems cannot be read comes back as its decode error
        stems: list[dict[str, torch.Tensor] | None] = []
        separated = (
            self.separator.separate(
                [wav for _, wav, _, _ in ready],
                [rate for _, _, rate, _ in ready],
                device=device,
                rows=[row for row, _, _, _ in ready],
            )
            if ready
            else []
        )
        for (row, wav, rate, _), result in zip(ready, separated, strict=True):
            if isinstance(result, AudioDecodeError):
                record(row, f"unreadable stem: {result}", wav.shape[-1] / rate)
                result = None
            stems.append(result)

        # 3. log-mels of the whole track, cut into chunks
        for (row, wav, rate, mix), track_stems in zip(ready, stems, strict=True):
            if track_stems is None:
                continue
            n = mix.shape[-1]
            raw = torch.stack(
                [mix] + [track_stems[name].to(device)[..., :n] for name in SOURCES]
            )  # (5, samples)
            if raw.shape[-1] < n:
                raise ValueError(
                    f"the separator returned stems of {raw.shape[-1]} samples for a "
                    f"{n}-sample mixture (track {row['track_id']})"
                )
            count = geometry.num_chunks(n)
            present = presence_flags(raw[1:], count, geometry.samples, self.threshold).T
            # Each waveform is one clip to the front end (normalised as a whole track).
            mel = self.feature_extractor.log_mel(raw)[:, : count * geometry.frames]
            mel = mel.reshape(len(raw), count, geometry.frames, geometry.num_bins)
            mel = mel.to(torch.float16)
            mel = mel.cpu().numpy()
            track_id = str(row["track_id"])
            out["track_id"].extend([track_id] * count)
            out["chunk_index"].extend(range(count))
            for k, name in enumerate(("mixture", *SOURCES)):
                out[name].extend(mel[k])
            out["present"].extend(present.tolist())
            for name in labels:
                out[name].extend([row[name]] * count)
            if self.records:
                out[_STATUS].extend([None] * count)
                out[_SECONDS].extend([None] * count)
            record(row, "", wav.shape[-1] / rate)
        return out


# ---------------------------------------------------------------------- prepare_chunks


class _Progress:
    """Files done and real-time factor (seconds of audio per second of wall time)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="file", desc="separating", disable=not enabled)
        self.audio_seconds = 0.0
        self.wall_seconds = 0.0

    def update(self, files: int, audio_seconds: float, wall_seconds: float | None) -> None:
        if wall_seconds is not None:  # None: served from the cache, no timing to add
            self.audio_seconds += audio_seconds
            self.wall_seconds += wall_seconds
        if self.wall_seconds > 0:
            self.bar.set_postfix(rtf=f"{self.audio_seconds / self.wall_seconds:.1f}x")
        self.bar.update(files)

    def close(self) -> None:
        self.bar.close()


def _file_stamps(tracks: Dataset) -> list[str]:
    """Per row, the size and modification time of every audio file it names (mixture and
    stems): part of the cache keys.

    The map cache is keyed on the rows, which hold paths: without the stamps, a file fixed
    or replaced since the last run would keep its old result (or its old "unreadable"
    entry). Computed once per split; each shard's key hashes its own slice.
    """
    columns = [tracks[c] for c in ("audio", *SOURCES) if c in tracks.column_names]
    stamps = []
    for values in zip(*columns, strict=True):
        row = []
        for value in values:
            if isinstance(value, Mapping) and value.get("bytes") is not None:
                continue  # audio held in the dataset: its fingerprint covers it
            path = value.get("path") if isinstance(value, Mapping) else value
            if not path:
                continue
            try:
                stat = os.stat(path)
                row.append(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}")
            except OSError:
                row.append(f"{path}\0missing")
        stamps.append("\n".join(row))
    return stamps


def _run_split(
    tracks: Dataset,
    stamps: list[str],
    chunker: StemChunker,
    chunker_hash: str,
    shards_dir: Path,
    batch_size: int,
    num_proc: int | None,
    shard_size: int,
    progress: _Progress,
) -> tuple[Dataset | None, list[dict], set[str]]:
    """Map ``tracks`` shard by shard (``stamps``: :func:`_file_stamps` of ``tracks``);
    returns the records-and-chunks dataset, the per-shard summaries and the cache files
    in use."""
    features = chunker.features(tracks.features)
    shards_dir.mkdir(parents=True, exist_ok=True)
    results, summaries, in_use = [], [], set()
    for index, start in enumerate(range(0, len(tracks), shard_size)):
        stop = min(start + shard_size, len(tracks))
        shard = tracks.select(range(start, stop))
        fingerprint = Hasher.hash(
            [
                FORMAT_VERSION, shard._fingerprint, stamps[start:stop], chunker_hash,
                batch_size, str(features),
            ]
        )  # fmt: skip
        cache_file = shards_dir / f"{index:05d}-{fingerprint}.arrow"
        prefix = str(cache_file)[: -len(".arrow")]
        cached = cache_file.exists() or any(glob.glob(glob.escape(prefix) + "_*_of_*.arrow"))
        started = time.perf_counter()
        mapped = shard.map(
            chunker,
            batched=True,
            batch_size=batch_size,
            with_rank=True,
            num_proc=num_proc if num_proc and num_proc > 1 and len(shard) > 1 else None,
            remove_columns=shard.column_names,
            features=features,
            cache_file_name=str(cache_file),
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc=f"shard {index}",
        )
        elapsed = time.perf_counter() - started
        in_use.update(os.path.realpath(f["filename"]) for f in mapped.cache_files)
        is_record = np.asarray(mapped["chunk_index"]) < 0
        records = mapped.select(np.flatnonzero(is_record)).select_columns(
            ["track_id", _STATUS, _SECONDS]
        )
        decoded = np.asarray(records[_SECONDS], dtype=np.float64)
        kept = np.array([not status for status in records[_STATUS]], dtype=bool)
        audio = dict(zip(shard["track_id"], map(audio_name, shard["audio"]), strict=True))
        progress.update(len(shard), float(decoded.sum()), None if cached else elapsed)
        summaries.append(
            {
                "tracks": len(shard),
                "chunks": int((~is_record).sum()),
                # The audio the chunks come from: skipped tracks are not counted.
                "seconds": float(decoded[kept].sum()) if len(kept) else 0.0,
                "skipped": [
                    {
                        "track_id": r["track_id"],
                        "audio": audio.get(r["track_id"]),
                        "reason": r[_STATUS],
                    }
                    for r in records
                    if r[_STATUS]
                ],
            }
        )
        results.append(mapped)
    if not results:
        return None, summaries, in_use
    return concatenate_datasets(results), summaries, in_use


def prepare_chunks(
    tracks: Dataset | DatasetDict,
    separator: Separator,
    output_dir: str | os.PathLike,
    batch_size: int = 4,
    num_proc: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    shard_size: int = 64,
    device: str | None = None,
    keep_shards: bool = True,
    progress: bool = True,
    feature_extractor: MSCLFeatureExtractor | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
) -> Dataset | DatasetDict:
    """Separate ``tracks`` into chunk rows and save them as the chunk set ``output_dir``
    (:func:`~modeling_mscl.chunk_set.save_chunk_set`: the rows and the feature extractor).

    The work is split into shards of ``shard_size`` tracks; each shard is one
    ``Dataset.map`` whose cache file is ``output_dir/shards/<split>/NNNNN-<fingerprint>.arrow``
    (written to a temporary file and renamed by ``datasets``). The fingerprint hashes
    the shard's rows, the separator's configuration and the settings, so a re-run with
    the same inputs loads every shard from these files (the separator is not called)
    and an interrupted run redoes only the shards that were not finished.
    ``output_dir/report.json`` lists, per split, the tracks skipped (unreadable, silent,
    too short) with the reason, and the audio duration processed.

    With ``num_shards`` > 1 this run is shard ``shard_index`` of a job split across
    machines: it writes the chunk set of that slice of every split, to be merged with the
    others by :func:`~modeling_mscl.chunk_shards.merge_chunk_sets` (see
    :mod:`modeling_mscl.chunk_shards`; ``output_dir`` by convention ``ROOT/shard-ii-of-NN``).

    Args:
        tracks: track rows (``track_id``, ``audio``, optional stem paths, labels); the
            ``audio`` column holds paths or is a datasets ``Audio`` column (decoded or
            ``decode=False``; a Hub dataset's embedded bytes are read as they are).
        separator: a :class:`~modeling_mscl.stems.DemucsSeparator` or
            :class:`~modeling_mscl.stems.OracleSeparator`.
        output_dir: where the chunk dataset (and ``shards/``, ``report.json``) go.
        batch_size: tracks per call of the map function (and of the separator).
        num_proc: worker processes per shard; with GPUs, use the GPU count: worker
            ``rank`` runs on ``cuda:{rank % device_count}``.
        threshold: presence threshold (mean absolute amplitude of a chunk's stem).
        shard_size: tracks per resumable unit.
        device: force a device (default: see :class:`StemChunker`).
        keep_shards: keep the shard files (the map cache) after the final save. They
            double the disk use; without them a same-settings re-run is still served
            from the finished output (its fingerprint is in ``report.json``), but a
            re-run after the output was deleted or damaged separates everything again.
        progress: show a progress bar (files, real-time factor).
        feature_extractor: the front end of the log-mels (default: ``MSCLFeatureExtractor()``).
        num_shards: how many shards the job is split into (machines or array tasks).
        shard_index: which shard this run is, in ``[0, num_shards)``.

    Returns:
        The saved chunk ``Dataset`` or ``DatasetDict``, loaded back from ``output_dir``
        (:func:`~modeling_mscl.chunk_set.load_chunk_set` gives it with its front end).
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    check_sharding(num_shards, shard_index)
    output_dir = Path(output_dir).expanduser()
    # New, empty or ours (never a folder of someone else's files), and one run at a time.
    output_dir = claim_chunk_folder(output_dir)
    with RunLock(output_dir, "prepare_chunks (mscl separate)"):
        whole = dict(tracks) if isinstance(tracks, DatasetDict) else {"": tracks}
        whole = {name: _undecoded(ds) for name, ds in whole.items()}
        for name, ds in whole.items():  # whole splits: the ids of two shards must not meet
            ids = ds["track_id"] if "track_id" in ds.column_names else []
            if len(set(ids)) != len(ids):
                twice = sorted(i for i, n in Counter(ids).items() if n > 1)
                raise ValueError(
                    f"split {name or 'data'!r}: track_id must be unique (chunks and the report "
                    f"are keyed on it); repeated: {twice[:5]}{' ...' if len(twice) > 5 else ''}"
                )
        fe = load_feature_extractor(feature_extractor)
        chunker = StemChunker(
            separator, threshold=threshold, device=device, records=True, feature_extractor=fe
        )
        report_path = output_dir / "report.json"

        chunker_hash = chunker.fingerprint()  # once: it may read every weight of a model
        # The job: what every shard of it shares (not file stamps, so that machines with their
        # own copies of the corpus make mergeable shards), and this run's place in it.
        job = Hasher.hash(
            [FORMAT_VERSION, chunker_hash, batch_size]
            + [(name, ds._fingerprint) for name, ds in whole.items()]
        )
        shard_record = {"job": job, "num_shards": num_shards, "shard_index": shard_index}
        splits = {name: shard_tracks(ds, num_shards, shard_index) for name, ds in whole.items()}
        stamps = {name: _file_stamps(ds) for name, ds in splits.items()}
        fingerprint = Hasher.hash(
            [FORMAT_VERSION, chunker_hash, batch_size, shard_size]
            + [(name, ds._fingerprint, stamps[name]) for name, ds in splits.items()]
        )
        if report_path.is_file():
            previous = json.loads(report_path.read_text())
            if (
                previous.get("complete")
                and previous.get("fingerprint") == fingerprint
                and previous.get("shard") == shard_record
            ):
                try:
                    return load_chunk_set(output_dir).data
                except (FileNotFoundError, ValueError):
                    pass  # the report outlived its chunk set: rebuild below
            report_path.unlink()  # from here on, no report means "not complete"
        if num_proc and num_proc > 1 and torch.cuda.is_available():
            # CUDA cannot be initialised in forked children, and datasets' worker pool uses
            # multiprocess' default start method: make it spawn (it stays so afterwards;
            # switching back under a live pool would be worse).
            import multiprocess

            multiprocess.set_start_method("spawn", force=True)

        from datasets.utils import (
            disable_progress_bars,
            enable_progress_bars,
            is_progress_bar_enabled,
        )

        bars_were_enabled = is_progress_bar_enabled()
        disable_progress_bars()  # one bar of ours instead of one per shard
        bar = _Progress(sum(len(ds) for ds in splits.values()), progress)
        outputs, report_splits, in_use = {}, {}, set()
        try:
            for name, ds in splits.items():
                mapped, summaries, files = _run_split(
                    ds,
                    stamps[name],
                    chunker,
                    chunker_hash,
                    output_dir / "shards" / (name or "data"),
                    batch_size,
                    num_proc,
                    shard_size,
                    bar,
                )
                in_use |= files
                report_splits[name or "data"] = {
                    "tracks": len(ds),
                    "chunks": sum(s["chunks"] for s in summaries),
                    "audio_seconds": round(sum(s["seconds"] for s in summaries), 3),
                    "skipped": [item for s in summaries for item in s["skipped"]],
                }
                features = chunker.features(ds.features)
                del features[_STATUS], features[_SECONDS]
                if mapped is None:
                    outputs[name] = Dataset.from_dict({k: [] for k in features}, features=features)
                else:
                    keep = np.flatnonzero(np.asarray(mapped["chunk_index"]) >= 0)
                    outputs[name] = mapped.select(keep).remove_columns([_STATUS, _SECONDS])
            bar.close()
            data = outputs[""] if "" in outputs else DatasetDict(outputs)
            with naming_full_disk(output_dir):
                save_chunk_set(data, output_dir, fe)
        finally:
            bar.close()
            if bars_were_enabled:
                enable_progress_bars()
        if not keep_shards:
            shutil.rmtree(output_dir / "shards", ignore_errors=True)
        else:
            # Shards of earlier settings (other fingerprints) and temp files of killed runs.
            shards_root = os.path.realpath(output_dir / "shards")
            for path in (output_dir / "shards").glob("*/*"):
                real = os.path.realpath(path)
                # Never through a symbolic link to files outside the shards folder.
                inside = real.startswith(shards_root + os.sep)
                if inside and real not in in_use and path.is_file() and not path.is_symlink():
                    path.unlink()
        write_json_atomic(
            report_path,
            {
                "complete": True,
                "fingerprint": fingerprint,
                "separator": repr(separator),
                "threshold": threshold,
                "shard": shard_record,
                "splits": report_splits,
            },
            indent=2,
        )
        return load_chunk_set(output_dir).data
