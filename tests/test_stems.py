"""Separators, presence flags and the stems map step (tiny random HTDemucs, oracle stems)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets.fingerprint import Hasher

from modeling_mscl.audio_io import AudioDecodeError, write_audio
from modeling_mscl.chunk_set import ChunkGeometry, chunk_features, load_chunk_set
from modeling_mscl.chunks import StemChunker, prepare_chunks, presence_flags
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor, resampled_length
from modeling_mscl.stems import (
    SOURCES,
    DemucsSeparator,
    DemucsWeightsNotFoundError,
    OracleSeparator,
    Separator,
    load_demucs_model,
)

SR = 16000
# The default front end's chunks: 392 frames, 62,720 samples apart.
GEOMETRY = ChunkGeometry.of(MSCLFeatureExtractor())
CHUNK_FRAMES, CHUNK_SAMPLES = GEOMETRY.frames, GEOMETRY.samples
MIN_TRACK_SAMPLES = GEOMETRY.min_track_samples


def tiny_htdemucs(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised HTDemucs small enough to run in a second on a CPU."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(
        sources=["drums", "bass", "other", "vocals"],
        channels=4,
        depth=3,
        nfft=1024,
        t_layers=1,
        t_heads=1,
        t_hidden_scale=1.0,
        dconv_comp=2,
        segment=1,
    )


class CountingOracle(OracleSeparator):
    """Oracle stems that count their calls (class-level, so not part of the fingerprint)
    and can fail on a given call to simulate an interrupted run."""

    calls = 0
    fail_at: int | None = None

    def stems_from_row(self, row, num_samples):
        type(self).calls += 1
        if type(self).fail_at is not None and type(self).calls >= type(self).fail_at:
            raise RuntimeError("simulated crash")
        return super().stems_from_row(row, num_samples)


@pytest.fixture(autouse=True)
def _reset_counter_and_threads():
    CountingOracle.calls, CountingOracle.fail_at = 0, None
    # One thread: the tiny convolutions gain nothing from more, and lose a lot when the
    # cores are shared with other processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    CountingOracle.calls, CountingOracle.fail_at = 0, None


def _noise(rng, n, amplitude):
    return (amplitude * rng.uniform(-1, 1, n)).astype(np.float32)


def make_multitrack(folder: Path, name: str, n: int, rng, loud: dict | None = None) -> dict:
    """Write a track's four 16 kHz stems and their mixture; ``loud`` maps a source to the
    chunk indices where it sounds (mean |x| ~0.1), silent elsewhere."""
    loud = loud if loud is not None else {s: None for s in SOURCES}  # None: everywhere
    row = {"track_id": name}
    total = np.zeros(n, np.float32)
    for source in SOURCES:
        x = _noise(rng, n, 0.2)
        chunks = loud.get(source, [])
        if chunks is not None:
            mask = np.zeros(n, bool)
            for c in chunks:
                mask[c * CHUNK_SAMPLES : (c + 1) * CHUNK_SAMPLES] = True
            x = np.where(mask, x, 0).astype(np.float32)
        path = folder / f"{name}_{source}.wav"
        write_audio(path, x, SR)
        row[source] = str(path)
        total += x
    write_audio(folder / f"{name}_mix.wav", total, SR)
    row["audio"] = str(folder / f"{name}_mix.wav")
    return row


def _label_features(extra: dict) -> Features:
    return Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            **{s: Value("string") for s in SOURCES},
            **extra,
        }
    )


# ------------------------------------------------------------------------- presence


def test_num_chunks_matches_the_feature_extractor():
    fe = MSCLFeatureExtractor()
    num_chunks = GEOMETRY.num_chunks
    for n in (0, 399, MIN_TRACK_SAMPLES - 1, MIN_TRACK_SAMPLES, 3 * CHUNK_SAMPLES + 239, 10**6):
        assert num_chunks(n) == fe.num_frames(n) // CHUNK_FRAMES
    assert num_chunks(MIN_TRACK_SAMPLES - 1) == 0 and num_chunks(MIN_TRACK_SAMPLES) == 1
    assert (CHUNK_FRAMES, CHUNK_SAMPLES, MIN_TRACK_SAMPLES) == (392, 62720, 62960)
    # Another front end, other chunks: four of its windows, its hop.
    other = ChunkGeometry.of(MSCLFeatureExtractor(hop_length=320, feature_size=40))
    assert (other.frames, other.samples, other.num_bins) == (392, 392 * 320, 40)
    with pytest.raises(ValueError, match="window is 50 frames"):
        ChunkGeometry.of(MSCLFeatureExtractor(window_frames=50))


def test_presence_flags_at_chunk_edges():
    n = 4 * CHUNK_SAMPLES
    stem = np.zeros(n, np.float32)
    # chunk 1 loud from its first to its last sample, nothing outside
    stem[CHUNK_SAMPLES : 2 * CHUNK_SAMPLES] = 0.5
    # a burst straddling the chunk 2 / chunk 3 boundary: 700 samples (mean 0.0112 > 0.01)
    # before it, 500 after (mean 0.0080)
    boundary = 3 * CHUNK_SAMPLES
    stem[boundary - 700 : boundary + 500] = 1.0
    flags = presence_flags(stem, 4, CHUNK_SAMPLES)
    direct = [
        np.abs(stem[c * CHUNK_SAMPLES : (c + 1) * CHUNK_SAMPLES]).mean() > 0.01 for c in range(4)
    ]
    assert flags.tolist() == direct == [False, True, True, False]
    # a stricter threshold drops the straddling burst; the threshold itself is not "present"
    assert presence_flags(stem, 4, CHUNK_SAMPLES, threshold=0.05).tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert presence_flags(stem, 4, CHUNK_SAMPLES, threshold=0.5).tolist() == [False] * 4


def test_presence_uses_the_spectrogram_chunk_hop_not_64000():
    # Energy in samples [125440, 128000) lies in chunk 2 of the 62,720-sample grid, but
    # would fall into chunk 1 with the reference's drifting 64,000-sample activity hop.
    stem = np.zeros(3 * CHUNK_SAMPLES, np.float32)
    stem[2 * CHUNK_SAMPLES : 128000] = 1.0
    assert presence_flags(stem, 3, CHUNK_SAMPLES).tolist() == [False, False, True]
    assert presence_flags(torch.from_numpy(np.stack([stem, -stem])), 3, CHUNK_SAMPLES).shape == (
        2,
        3,
    )
    with pytest.raises(ValueError, match="samples"):
        presence_flags(stem, 4, CHUNK_SAMPLES)


# ------------------------------------------------------------------------ separators


def test_demucs_separator_accepts_any_rate_and_channels():
    sep = DemucsSeparator(model_instance=tiny_htdemucs(), device="cpu")
    rng = np.random.default_rng(0)
    mono = _noise(rng, 22050 * 2, 0.3)
    stereo = np.stack([_noise(rng, 48000 * 2, 0.3), _noise(rng, 48000 * 2, 0.3)])
    surround = np.stack([_noise(rng, 8000 * 2, 0.3) for _ in range(3)])
    out = sep.separate([mono, torch.from_numpy(stereo), surround], [22050, 48000, 8000])
    assert [tuple(o) for o in out] == [SOURCES] * 3
    for track, n in zip(out, (32000, 32000, 32000), strict=True):
        for stem in track.values():
            assert stem.shape == (n,) and stem.dtype == torch.float32
            assert torch.isfinite(stem).all()
    # mono input is the same as a stereo input with two identical channels
    dup = sep.separate([np.stack([mono, mono])], [22050])[0]
    for name in SOURCES:
        torch.testing.assert_close(dup[name], out[0][name], atol=1e-5, rtol=1e-4)
    # one rule for channels (channel_axis): (samples, channels), as soundfile returns it,
    # is the same stereo clip; a 2-D array with more than 8 on both axes is refused
    flipped = sep.separate([stereo.T], [48000])[0]
    for name in SOURCES:
        torch.testing.assert_close(flipped[name], out[1][name])
    with pytest.raises(ValueError, match="at most 8 channels"):
        sep.separate([np.zeros((1000, 9), np.float32)], [SR])


def test_demucs_batches_equal_length_tracks_like_single_calls():
    sep = DemucsSeparator(model_instance=tiny_htdemucs(), device="cpu", batch_size=2)
    rng = np.random.default_rng(1)
    a, b = _noise(rng, SR * 2, 0.5), _noise(rng, SR * 2, 0.05)
    together = sep.separate([a, b], [SR, SR])
    alone = [sep.separate([a], [SR])[0], sep.separate([b], [SR])[0]]
    for t, s in zip(together, alone, strict=True):
        for name in SOURCES:
            torch.testing.assert_close(t[name], s[name], atol=1e-5, rtol=1e-4)


def test_default_batch_is_one_track_per_call_on_cpu(monkeypatch):
    import demucs.apply

    calls, depth = [], [0]
    real = demucs.apply.apply_model

    def counting(model, mix, **kwargs):
        if not depth[0]:  # apply_model calls itself per segment: count the outer calls
            calls.append(mix.shape[0])
        depth[0] += 1
        try:
            return real(model, mix, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(demucs.apply, "apply_model", counting)
    rng = np.random.default_rng(2)
    tracks = [_noise(rng, SR, 0.3), _noise(rng, SR, 0.3)]
    model = tiny_htdemucs()
    DemucsSeparator(model_instance=model, device="cpu").separate(tracks, [SR, SR])
    assert calls == [1, 1]  # batching tracks is slower on a CPU
    calls.clear()
    DemucsSeparator(model_instance=model, device="cpu", batch_size=2).separate(tracks, [SR, SR])
    assert calls == [2]


def test_demucs_groups_bound_the_padding():
    sep = DemucsSeparator(model_instance=tiny_htdemucs(), batch_size=2, max_padding=0.1)
    assert sep._groups([100, 95, 50, 98]) == [[0, 3], [1], [2]]
    assert DemucsSeparator(model_instance=tiny_htdemucs(), batch_size=8)._groups([10] * 3) == [
        [0, 1, 2]
    ]


def test_missing_weights_error_says_what_was_tried(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(DemucsWeightsNotFoundError) as info:
        _ = DemucsSeparator(model="htdemucs", repo=empty, trust_repo=True).model
    message = str(info.value)
    assert "htdemucs" in message and str(empty) in message and "--repo" in message
    assert "no .th or .yaml files" in message
    with pytest.raises(DemucsWeightsNotFoundError, match="not a folder"):
        load_demucs_model("htdemucs", repo=tmp_path / "nowhere")


def test_demucs_files_are_unpickled_only_when_trusted(tmp_path):
    """Demucs loads .th pickles (torch.load, weights_only=False): a local folder or an hf://
    repository needs trust_repo, so the package never opens such files on its own."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for make in (
        lambda: DemucsSeparator(model="htdemucs", repo=folder).model,
        lambda: load_demucs_model("hf://someone/demucs"),
    ):
        with pytest.raises(ValueError, match="unpickles its files.*trust_repo=True"):
            make()


def test_missing_demucs_names_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "demucs.pretrained", None)
    with pytest.raises(ImportError, match="pip install demucs"):
        load_demucs_model("htdemucs")


def test_separator_fingerprint_ignores_runtime_state():
    sep = DemucsSeparator(model_instance=tiny_htdemucs(), device="cpu")
    before = Hasher.hash(StemChunker(sep))
    sep.separate([np.ones(SR, np.float32) * 0.1], [SR])
    assert Hasher.hash(StemChunker(sep)) == before
    assert Hasher.hash(StemChunker(DemucsSeparator(model_instance=tiny_htdemucs()))) != Hasher.hash(
        StemChunker(DemucsSeparator(model_instance=tiny_htdemucs(seed=1)))
    )
    # the fast fingerprint prepare_chunks uses follows the same rules
    fast = StemChunker(sep).fingerprint()
    assert (
        fast
        == StemChunker(DemucsSeparator(model_instance=tiny_htdemucs(), device="cpu")).fingerprint()
    )
    assert (
        fast
        != StemChunker(
            DemucsSeparator(model_instance=tiny_htdemucs(seed=1), device="cpu")
        ).fingerprint()
    )
    assert fast != StemChunker(sep, threshold=0.02).fingerprint()
    lazy = DemucsSeparator("htdemucs")
    lazy_hash = Hasher.hash(lazy)
    lazy._model = tiny_htdemucs()  # as if loaded by a first separation
    assert Hasher.hash(lazy) == lazy_hash


def test_rank_picks_the_gpu(monkeypatch):
    chunker = StemChunker(OracleSeparator())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert chunker._device(3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert chunker._device(3) == torch.device("cuda:1")
    assert chunker._device(None) == torch.device("cuda:0")
    assert StemChunker(OracleSeparator(), device="cpu")._device(3) == torch.device("cpu")


class ScaledCopies:
    """A separator of our own: each source is the 16 kHz mixture times a fixed gain."""

    sampling_rate = SR
    gains = {"vocals": 0.5, "drums": 0.0, "bass": 0.25, "other": 0.125}

    def separate(self, waveforms, sampling_rates, *, device=None, rows=None):
        out = []
        for wav, rate, row in zip(waveforms, sampling_rates, rows, strict=True):
            if row["track_id"] == "refused":
                out.append(AudioDecodeError("refused.wav: cannot decode audio (test)"))
                continue
            mono = torch.from_numpy(np.asarray(wav)).mean(0)
            assert rate == SR and mono.shape[-1] == resampled_length(mono.shape[-1], rate, SR)
            out.append({name: gain * mono for name, gain in self.gains.items()})
        return out


def test_a_separator_of_our_own_goes_through_the_protocol(tmp_path):
    rng = np.random.default_rng(3)
    mix = _noise(rng, 2 * CHUNK_SAMPLES + 300, 0.3)
    write_audio(tmp_path / "a.wav", mix, SR)
    tracks = Dataset.from_dict(
        {
            "track_id": ["a", "refused"],
            "audio": [str(tmp_path / "a.wav")] * 2,
        }
    )
    out = prepare_chunks(tracks, ScaledCopies(), tmp_path / "out", progress=False)
    assert out["track_id"][:] == ["a", "a"]
    assert out["present"][:] == [[True, False, True, True]] * 2  # drums at gain 0 are absent
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (skipped,) = report["splits"]["data"]["skipped"]
    assert skipped["track_id"] == "refused" and "unreadable stem: refused.wav" in skipped["reason"]
    # the stems are the mixture's log-mel (each is L2-normalised, so a gain is invisible)
    arrays = out.with_format("numpy")
    np.testing.assert_array_equal(arrays["vocals"][:], arrays["mixture"][:])


def test_objects_that_are_not_separators_are_refused():
    class OldStyle:  # a row reader without the one method
        sampling_rate = SR

        def stems_from_row(self, row, num_samples):
            return {}

    class NoRows:  # separate() that cannot take the track rows
        sampling_rate = SR

        def separate(self, waveforms, sampling_rates, *, device=None):
            return []

    class At44k(ScaledCopies):
        sampling_rate = 44100

    for bad in (OldStyle(), NoRows(), object()):
        with pytest.raises(TypeError, match=r"is not a separator.*separate\(waveforms"):
            StemChunker(bad)
    with pytest.raises(ValueError, match="44100 Hz.*16000 Hz"):
        StemChunker(At44k())
    assert isinstance(OracleSeparator(), Separator)
    assert isinstance(DemucsSeparator(model_instance=tiny_htdemucs()), Separator)


def test_oracle_separate_needs_one_row_per_waveform():
    with pytest.raises(ValueError, match="one row per waveform"):
        OracleSeparator().separate([np.zeros(SR, np.float32)], [SR])


# ------------------------------------------------------------------------ map step


def test_oracle_map_step_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 2 * CHUNK_SAMPLES + 5000  # 2 whole chunks and a tail that is dropped
    loud = {"vocals": [0], "drums": [1], "bass": [0, 1], "other": []}
    row = make_multitrack(tmp_path, "song", n, rng, loud)
    row["label"] = 1
    features = _label_features({"label": ClassLabel(names=["a", "b"])})
    tracks = Dataset.from_list([row], features=features)
    chunker = StemChunker(OracleSeparator())
    out = tracks.map(
        chunker,
        batched=True,
        with_rank=True,
        remove_columns=tracks.column_names,
        features=chunker.features(tracks.features),
    )
    assert out.features == chunk_features(392, 64, {"label": ClassLabel(names=["a", "b"])})
    assert out["chunk_index"][:] == [0, 1] and out["track_id"][:] == ["song", "song"]
    assert out["label"][:] == [1, 1]
    assert out["present"][:] == [[True, False, True, False], [False, True, True, False]]

    # the spectrograms are the whole-track log-mel, cut at 392-frame boundaries
    fe = MSCLFeatureExtractor()
    wav = torch.from_numpy(np.stack([_read(row[k]) for k in ("audio", *SOURCES)]))
    mel = fe.log_mel(wav, normalize=True)
    np_out = out.with_format("numpy")
    for k, name in enumerate(("mixture", *SOURCES)):
        got = np_out[name][:]  # the numpy formatter upcasts to float32 ...
        assert got.shape == (2, CHUNK_FRAMES, 64)
        stored = out.data.column(name).chunk(0).storage.flatten().flatten()
        assert stored.type == "halffloat"  # ... what is stored is float16
        want = mel[k, : 2 * CHUNK_FRAMES].reshape(2, CHUNK_FRAMES, 64).numpy()
        np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-2, rtol=2e-3)
    # an absent source is silent: its log-mel sits at the log floor
    assert np.allclose(np_out["other"][:], np.log(1e-5), atol=1e-2)


def test_map_step_with_another_front_end(tmp_path):
    """The chunk set holds the log-mels of the feature extractor it was given, and that
    feature extractor: its geometry, not the default one."""
    rng = np.random.default_rng(1)
    fe = MSCLFeatureExtractor(feature_size=40, hop_length=200, upper_edge_hertz=7000.0)
    geometry = ChunkGeometry.of(fe)
    row = make_multitrack(tmp_path, "song", 2 * geometry.samples + 300, rng)
    tracks = Dataset.from_list([row], features=_label_features({}))
    out = prepare_chunks(
        tracks, OracleSeparator(), tmp_path / "out", feature_extractor=fe, progress=False
    )
    assert out["chunk_index"][:] == [0, 1]
    chunk_set = load_chunk_set(tmp_path / "out")
    assert chunk_set.feature_extractor.to_dict() == fe.to_dict()
    store = chunk_set.store()
    assert (store.chunk_frames, store.num_bins) == (392, 40)
    wav = torch.from_numpy(np.stack([_read(row[k]) for k in ("audio", *SOURCES)]))
    mel = fe.log_mel(wav)[:, : 2 * 392].reshape(5, 2, 392, 40).numpy()
    got = store.crops("drums", np.array([1]), np.array([294]))[0].astype(np.float32)
    np.testing.assert_allclose(got, mel[2, 1, 294:], atol=2e-2, rtol=2e-3)
    # The chunker refuses a front end it cannot serve.
    with pytest.raises(ValueError, match="8000 Hz"):
        StemChunker(OracleSeparator(), feature_extractor=MSCLFeatureExtractor(
            sampling_rate=8000, upper_edge_hertz=3900.0
        ))  # fmt: skip


def _read(path):
    from modeling_mscl.audio_io import load_audio

    return load_audio(path, SR)


def test_demucs_map_step(tmp_path):
    rng = np.random.default_rng(0)
    # 180923 samples at 44.1 kHz resample to 65641 (julius floors in float32; the exact
    # floor is 65640): the stems must come back as long as the mixture, not one short
    n44 = 180923
    write_audio(tmp_path / "a.wav", np.stack([_noise(rng, n44, 0.3)] * 2), 44100)
    write_audio(tmp_path / "b.flac", _noise(rng, 2 * CHUNK_SAMPLES + 400, 0.3), SR)
    tracks = Dataset.from_dict(
        {
            "track_id": ["a", "b"],
            "audio": [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")],
            "genre": ["x", "y"],
        }
    )
    sep = DemucsSeparator(model_instance=tiny_htdemucs(), device="cpu")
    out = prepare_chunks(tracks, sep, tmp_path / "out", batch_size=2, progress=False)
    assert out["track_id"][:] == ["a", "b", "b"] and out["chunk_index"][:] == [0, 0, 1]
    assert out["genre"][:] == ["x", "y", "y"]
    arrays = out.with_format("numpy")
    for name in ("mixture", *SOURCES):
        assert arrays[name][:].shape == (3, CHUNK_FRAMES, 64)
        assert np.isfinite(arrays[name][:]).all()
    assert arrays["present"][:].shape == (3, 4)


def test_report_lists_unreadable_silent_and_short_files(tmp_path):
    rng = np.random.default_rng(0)
    good = make_multitrack(tmp_path, "good", CHUNK_SAMPLES + 1000, rng)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really audio")
    write_audio(tmp_path / "silent.wav", np.zeros(2 * CHUNK_SAMPLES, np.float32), SR)
    write_audio(tmp_path / "short.wav", _noise(rng, SR, 0.3), SR)
    bad_stem = dict(good, track_id="bad_stem", vocals=str(tmp_path / "missing.wav"))
    # A mixture much shorter than its stems (a truncated file, or another song's stems).
    write_audio(tmp_path / "long_bass.wav", _noise(rng, CHUNK_SAMPLES + 1000 + 2 * SR, 0.3), SR)
    long_stem = dict(good, track_id="long_stem", bass=str(tmp_path / "long_bass.wav"))
    rows = [good, bad_stem, long_stem]
    for name in ("corrupt", "silent", "short"):
        rows.append(
            {"track_id": name, "audio": str(tmp_path / f"{name}.wav"), **dict.fromkeys(SOURCES)}
        )
    rows.append(dict(good, track_id="no_file", audio=str(tmp_path / "absent.wav")))
    tracks = Dataset.from_list(rows, features=_label_features({}))
    out = prepare_chunks(tracks, OracleSeparator(), tmp_path / "out", progress=False)
    assert out["track_id"][:] == ["good"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    skipped = {s["track_id"]: s["reason"] for s in report["splits"]["data"]["skipped"]}
    assert set(skipped) == {"bad_stem", "long_stem", "corrupt", "silent", "short", "no_file"}
    assert "bass stem" in skipped["long_stem"] and "but the mixture" in skipped["long_stem"]
    assert skipped["corrupt"].startswith("unreadable") and "corrupt.wav" in skipped["corrupt"]
    assert skipped["silent"].startswith("silent")
    assert skipped["short"].startswith("too short")
    assert "vocals stem" in skipped["bad_stem"] and "missing.wav" in skipped["bad_stem"]
    assert "absent.wav" in skipped["no_file"]
    assert report["complete"] and report["splits"]["data"]["chunks"] == 1
    # Only the kept track's audio is counted (the silent and short ones were decoded too).
    assert report["splits"]["data"]["audio_seconds"] == pytest.approx(
        (CHUNK_SAMPLES + 1000) / SR, abs=1e-3
    )


def test_duplicate_track_ids_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    row = make_multitrack(tmp_path, "same", CHUNK_SAMPLES + 1000, rng)
    tracks = Dataset.from_list([row, row], features=_label_features({}))
    with pytest.raises(ValueError, match=r"track_id must be unique.*\['same'\]"):
        prepare_chunks(tracks, OracleSeparator(), tmp_path / "out", progress=False)


def test_a_fixed_file_is_not_served_from_the_cache(tmp_path):
    """The caches are keyed on the files' contents (size, mtime), not only their paths."""
    rng = np.random.default_rng(0)
    good = make_multitrack(tmp_path, "good", CHUNK_SAMPLES + 1000, rng)
    broken = make_multitrack(tmp_path, "broken", CHUNK_SAMPLES + 1000, rng)
    mixture = Path(broken["audio"])
    fixed = mixture.read_bytes()
    mixture.write_bytes(b"RIFF not really audio")
    tracks = Dataset.from_list([good, broken], features=_label_features({}))
    out = prepare_chunks(tracks, OracleSeparator(), tmp_path / "out", progress=False)
    assert out["track_id"][:] == ["good"]
    mixture.write_bytes(fixed)  # the user repairs the file and runs the same command again
    out = prepare_chunks(tracks, OracleSeparator(), tmp_path / "out", progress=False)
    assert out["track_id"][:] == ["good", "broken"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["splits"]["data"]["skipped"] == []


def test_second_run_is_served_from_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    rows = [make_multitrack(tmp_path, f"t{i}", MIN_TRACK_SAMPLES + i, rng) for i in range(3)]
    tracks = Dataset.from_list(rows, features=_label_features({}))
    first = prepare_chunks(tracks, CountingOracle(), tmp_path / "out", shard_size=2, progress=False)
    assert CountingOracle.calls == 3
    second = prepare_chunks(
        tracks, CountingOracle(), tmp_path / "out", shard_size=2, progress=False
    )
    assert CountingOracle.calls == 3 and second["track_id"][:] == first["track_id"][:]
    # Without the finished output, the shards' map cache still serves every track.
    (tmp_path / "out" / "report.json").unlink()
    for path in (tmp_path / "out").glob("data-*.arrow"):
        path.unlink()
    third = prepare_chunks(tracks, CountingOracle(), tmp_path / "out", shard_size=2, progress=False)
    assert CountingOracle.calls == 3
    np.testing.assert_array_equal(
        third.with_format("numpy")["vocals"][:], first.with_format("numpy")["vocals"][:]
    )
    # other settings are a different computation
    prepare_chunks(
        tracks, CountingOracle(), tmp_path / "out", shard_size=2, threshold=0.5, progress=False
    )
    assert CountingOracle.calls == 6


def test_interrupted_run_resumes(tmp_path):
    rng = np.random.default_rng(0)
    rows = [make_multitrack(tmp_path, f"t{i}", MIN_TRACK_SAMPLES, rng) for i in range(3)]
    tracks = Dataset.from_list(rows, features=_label_features({}))
    CountingOracle.fail_at = 2  # the first shard (one track) finishes, the second crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_chunks(tracks, CountingOracle(), tmp_path / "out", shard_size=1, progress=False)
    assert not (tmp_path / "out" / "report.json").exists()
    assert len(list((tmp_path / "out" / "shards" / "data").glob("00000-*.arrow"))) == 1
    CountingOracle.calls, CountingOracle.fail_at = 0, None
    out = prepare_chunks(tracks, CountingOracle(), tmp_path / "out", shard_size=1, progress=False)
    assert CountingOracle.calls == 2  # only the unfinished tracks
    assert out["track_id"][:] == ["t0", "t1", "t2"]


def test_dataset_dict_splits(tmp_path):
    rng = np.random.default_rng(0)
    train = [make_multitrack(tmp_path, "a", MIN_TRACK_SAMPLES, rng)]
    (tmp_path / "bad.wav").write_bytes(b"")
    test = [{"track_id": "bad", "audio": str(tmp_path / "bad.wav"), **dict.fromkeys(SOURCES)}]
    features = _label_features({})
    tracks = DatasetDict(
        train=Dataset.from_list(train, features=features),
        test=Dataset.from_list(test, features=features),
    )
    out = prepare_chunks(tracks, OracleSeparator(), tmp_path / "out", progress=False)
    assert isinstance(out, DatasetDict) and len(out["train"]) == 1 and len(out["test"]) == 0
    assert load_chunk_set(tmp_path / "out").data["test"].features == out["train"].features
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["track_id"] for s in report["splits"]["test"]["skipped"]] == ["bad"]


def test_separate_command_on_a_stems_folder(tmp_path):
    from modeling_mscl.commands import separate

    rng = np.random.default_rng(0)
    for name in ("song_a", "song_b"):
        folder = tmp_path / "musdb" / "train" / name
        folder.mkdir(parents=True)
        row = make_multitrack(folder, "x", MIN_TRACK_SAMPLES + 100, rng)
        Path(row["audio"]).rename(folder / "mixture.wav")
        for source in SOURCES:
            Path(row[source]).rename(folder / f"{source}.wav")
    out = tmp_path / "chunks"
    argv = [str(tmp_path / "musdb"), str(out), "--separator", "oracle", "--threshold", "0.02"]
    assert separate.main(argv) == 0
    chunks = load_chunk_set(out).data
    assert sorted(chunks["train"]["track_id"][:]) == ["song_a", "song_b"]
    assert json.loads((out / "report.json").read_text())["threshold"] == 0.02

    # The same job as two shards (one each) and a merge: the same chunk set.
    common = [str(tmp_path / "musdb"), str(tmp_path / "jobs"), "--separator", "oracle"]
    common += ["--threshold", "0.02", "--num-shards", "2"]
    for index in ("0", "1"):
        assert separate.main([*common, "--shard-index", index]) == 0
    shards = sorted(str(p) for p in (tmp_path / "jobs").glob("shard-*-of-02"))
    assert len(shards) == 2
    merged = tmp_path / "merged"
    assert separate.main([str(merged), "--merge", *shards]) == 0
    assert load_chunk_set(merged).data["train"]["track_id"][:] == chunks["train"]["track_id"][:]
    with pytest.raises(SystemExit):  # merge and separation at once
        separate.main([str(tmp_path / "musdb"), str(merged), "--merge", *shards])


def test_a_stem_of_the_wrong_length_is_named_without_its_samples():
    # Stems given as arrays (a datasets Audio column decoded in memory): the error names the
    # item as audio_name does, never by printing its samples.
    long = {"array": np.full(3 * SR, 0.1, np.float32), "sampling_rate": SR}
    row = {"vocals": long, "drums": None, "bass": None, "other": None}
    with pytest.raises(AudioDecodeError, match="vocals stem the audio array lasts 3.00 s") as err:
        OracleSeparator().stems_from_row(row, num_samples=SR // 2)
    assert "0.1" not in str(err.value)
    assert OracleSeparator().stems_from_row(row, num_samples=3 * SR)["vocals"].shape == (3 * SR,)
