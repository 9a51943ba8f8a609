"""Tests of MSCLFeatureExtractor: the COLA log-mel front end."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from modeling_mscl.feature_extraction_mscl import (
    MSCLFeatureExtractor,
    channel_axis,
    resample_audio,
    resampled_length,
)

SR = 16000
WINDOW_SAMPLES = 400 + 97 * 160  # one 98-frame window


# ----------------------------------------------------------------------------- reference
# An independent float64 implementation of the TensorFlow formulas, written from the
# method description only (nothing shared with the module under test).


def reference_mel_matrix(
    num_bins: int = 513,
    num_mel: int = 64,
    sample_rate: float = 16000.0,
    lower_hz: float = 60.0,
    upper_hz: float = 7800.0,
) -> np.ndarray:
    """tf.signal.linear_to_mel_weight_matrix: HTK mel, mel-domain triangles, DC row zero."""

    def hz_to_mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    bin_hz = np.linspace(0.0, sample_rate / 2.0, num_bins)[1:]  # the DC bin is dropped
    bin_mel = hz_to_mel(bin_hz)
    edges = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), num_mel + 2)
    weights = np.zeros((num_bins, num_mel))
    for band in range(num_mel):
        low, centre, high = edges[band], edges[band + 1], edges[band + 2]
        rising = (bin_mel - low) / (centre - low)
        falling = (high - bin_mel) / (high - centre)
        weights[1:, band] = np.maximum(0.0, np.minimum(rising, falling))
    return weights


def reference_log_mel(waveform: np.ndarray, normalize: bool = True) -> np.ndarray:
    x = np.asarray(waveform, dtype=np.float64)
    if normalize:
        norm = np.sqrt(np.sum(x * x))
        if norm > 0:
            x = x / norm
    frame, hop, nfft = 400, 160, 1024
    count = (len(x) - frame) // hop + 1
    n = np.arange(frame)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / frame)  # periodic
    rows = np.stack([x[i * hop : i * hop + frame] for i in range(count)]) * hann
    padded = np.zeros((count, nfft))
    padded[:, :frame] = rows
    magnitude = np.abs(np.fft.rfft(padded, axis=1))
    mel = magnitude @ reference_mel_matrix()
    return np.log(np.clip(mel, 1e-5, 1e8))


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def fe() -> MSCLFeatureExtractor:
    return MSCLFeatureExtractor()


def sine(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2.0 * np.pi * freq * t)).astype(np.float32)


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32)


def assert_float32_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Agreement of a float32 spectrogram with a float64 one.

    A float32 FFT is exact to ~1e-7 of a frame's peak magnitude, so bands ~100 dB below the
    peak carry up to ~1e-1 absolute log error. Bands within 60 dB of their frame's maximum
    must agree to 1e-4 relative (= absolute log error); every band, in linear magnitude,
    to 1e-5 of its frame's maximum.
    """
    assert actual.shape == expected.shape
    frame_max = expected.max(axis=1, keepdims=True)
    strong = expected > frame_max - math.log(1e3)
    assert np.abs(actual - expected)[strong].max() <= 1e-4
    linear_error = np.abs(np.exp(actual) - np.exp(expected)) / np.exp(frame_max)
    assert linear_error.max() <= 1e-5


TEST_SIGNALS = {
    "noise": noise(3 * SR),
    "sine": sine(440.0, 3.0),
    "two_sines": sine(3000.5, 3.0) + sine(150.0, 3.0, amplitude=0.01),
}


# ----------------------------------------------------------------------------- mel matrix


def test_mel_matrix_matches_tensorflow_formula(fe):
    mel = fe.mel_filters
    assert mel.shape == (513, 64)
    assert np.all(mel[0] == 0.0), "the DC bin must have weight zero"
    assert mel.min() >= 0.0
    np.testing.assert_allclose(mel, reference_mel_matrix(), rtol=0, atol=1e-10)


def test_mel_bands_peak_in_order_and_within_edges(fe):
    mel = fe.mel_filters
    peaks = mel.argmax(axis=0)
    assert np.all(np.diff(peaks) > 0), "band peaks must rise with frequency"
    assert np.all(mel.max(axis=0) > 0.5), "every band must contain a bin near its centre"
    bin_hz = np.arange(513) * SR / 1024
    nonzero = mel.sum(axis=1) > 0
    assert bin_hz[nonzero].min() > 60.0 and bin_hz[nonzero].max() < 7800.0


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(TEST_SIGNALS))
def test_numpy_path_matches_reference(fe, name):
    x = TEST_SIGNALS[name]
    np.testing.assert_allclose(fe.log_mel_numpy(x), reference_log_mel(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TEST_SIGNALS))
def test_torch_path_matches_reference(fe, name):
    x = TEST_SIGNALS[name]
    expected = reference_log_mel(x)
    exact = fe.log_mel(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-5)
    assert_float32_close(fe.log_mel(torch.from_numpy(x)).numpy(), expected)


@pytest.mark.parametrize("name", sorted(TEST_SIGNALS))
def test_numpy_and_torch_paths_agree(fe, name):
    x = TEST_SIGNALS[name]
    via_numpy = fe(x, sampling_rate=SR, return_tensors="np")["input_features"]
    via_torch = fe(torch.from_numpy(x), sampling_rate=SR, return_tensors="pt")["input_features"]
    assert via_torch.dtype == torch.float32 and via_numpy.dtype == np.float32
    assert_float32_close(via_torch.numpy()[0], via_numpy[0])


def test_log_mel_batched_and_unnormalised(fe):
    x = np.stack([noise(5000, seed=1), 3.0 * sine(1000.0, 5000 / SR)])
    out = fe.log_mel(torch.from_numpy(x).reshape(2, 1, -1), normalize=False)
    assert out.shape == (2, 1, fe.num_frames(5000), 64) and out.dtype == torch.float32
    for i in range(2):
        expected = reference_log_mel(x[i], normalize=False)
        assert_float32_close(out[i, 0].numpy(), expected)
    # Normalisation changes the values of an unnormalised loud clip.
    assert not torch.allclose(out, fe.log_mel(torch.from_numpy(x).reshape(2, 1, -1)))


def test_log_mel_chunking_matches_single_pass(fe, monkeypatch):
    import modeling_mscl.feature_extraction_mscl as module

    x = noise(40000, seed=3)
    whole = fe.log_mel(torch.from_numpy(x)).numpy()
    whole_np = fe.log_mel_numpy(x)
    monkeypatch.setattr(module, "_CHUNK_FRAMES", 7)
    np.testing.assert_allclose(fe.log_mel(torch.from_numpy(x)).numpy(), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fe.log_mel_numpy(x), whole_np, rtol=0, atol=1e-6)


def test_silence_stays_finite_at_the_log_floor(fe):
    out = fe(np.zeros(20000, dtype=np.float32), sampling_rate=SR, return_tensors="np")
    np.testing.assert_allclose(out["input_features"], math.log(1e-5), rtol=1e-6)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("samples", "frames"), [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)]
)
def test_num_frames_formula(fe, samples, frames):
    assert fe.num_frames(samples) == frames
    assert fe.log_mel(torch.zeros(samples)).shape == (frames, 64)
    assert fe.log_mel_numpy(np.zeros(samples)).shape == (frames, 64)


def test_single_clip_inputs_give_batch_of_one(fe):
    x = noise(32000)
    expected_frames = 1 + (32000 - 400) // 160
    for clip in (x, x.tolist(), torch.from_numpy(x)):
        out = fe(clip, sampling_rate=SR, return_tensors="np")
        assert out["input_features"].shape == (1, expected_frames, 64)
        assert out["attention_mask"].shape == (1, expected_frames)
        assert out["attention_mask"].dtype == np.int32 and out["attention_mask"].all()


def test_two_dimensional_array_is_a_batch_of_mono_clips(fe):
    x = np.stack([noise(20000, seed=s) for s in range(3)])
    for batch in (x, torch.from_numpy(x), x.tolist()):
        out = fe(batch, sampling_rate=SR, return_tensors="np")
        assert out["input_features"].shape == (3, fe.num_frames(20000), 64)
    np.testing.assert_allclose(out["input_features"][2], fe.log_mel_numpy(x[2]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("as_torch", [False, True])
def test_ragged_batch_is_padded_with_mask(fe, as_torch):
    clips = [noise(30000, seed=0), noise(20000, seed=1), noise(500, seed=2)]
    inputs = [torch.from_numpy(c) for c in clips] if as_torch else clips
    out = fe(inputs, sampling_rate=SR, return_tensors="pt")
    features, mask = out["input_features"], out["attention_mask"]
    lengths = [fe.num_frames(30000), fe.num_frames(20000), 98]  # the short clip -> 1 window
    assert features.shape == (3, lengths[0], 64)
    assert mask.dtype == torch.int32
    assert mask.sum(1).tolist() == lengths
    for i, length in enumerate(lengths):
        assert torch.all(features[i, length:] == fe.padding_value)
        assert bool(torch.all(mask[i, :length] == 1))
    np.testing.assert_allclose(
        features[1, : lengths[1]].numpy(), fe.log_mel_numpy(clips[1]), rtol=0, atol=2e-3
    )


def test_return_tensors_none_gives_lists_and_no_padding_option(fe):
    clips = [noise(20000), noise(25000, seed=1)]
    out = fe(clips, sampling_rate=SR)
    assert isinstance(out["input_features"], list) and len(out["input_features"]) == 2
    assert all(f.shape == (fe.num_frames(25000), 64) for f in out["input_features"])
    ragged = fe(clips, sampling_rate=SR, padding=False, return_attention_mask=False)
    assert [f.shape[0] for f in ragged["input_features"]] == [123, 154]
    assert "attention_mask" not in ragged
    with pytest.raises(ValueError, match="padding"):
        fe(clips, sampling_rate=SR, padding=False, return_tensors="np")


def test_max_length_padding_and_truncation(fe):
    clips = [noise(20000), noise(25000, seed=1)]
    out = fe(clips, sampling_rate=SR, padding="max_length", max_length=200, return_tensors="np")
    assert out["input_features"].shape == (2, 200, 64)
    assert out["attention_mask"].sum(1).tolist() == [123, 154]
    cut = fe(clips, sampling_rate=SR, max_length=100, truncation=True, return_tensors="np")
    assert cut["input_features"].shape == (2, 100, 64) and cut["attention_mask"].all()
    with pytest.raises(ValueError, match="truncation"):
        fe(clips, sampling_rate=SR, padding="max_length", max_length=130)


def test_return_windows(fe):
    long_clip, short_clip = noise(200 * 160 + 400 + 50, seed=4), noise(3000, seed=5)
    out = fe([long_clip, short_clip], sampling_rate=SR, return_windows=True, return_tensors="np")
    windows, index = out["input_features"], out["window_clip_index"]
    assert fe.num_frames(len(long_clip)) == 201  # 2 windows, 5 remainder frames dropped
    assert windows.shape == (3, 98, 64)
    assert index.dtype == np.int64 and index.tolist() == [0, 0, 1]
    assert "attention_mask" not in out
    full = fe.log_mel_numpy(long_clip)
    np.testing.assert_allclose(windows[1], full[98:196], rtol=0, atol=1e-6)
    as_pt = fe(
        torch.from_numpy(long_clip), sampling_rate=SR, return_windows=True, return_tensors="pt"
    )
    assert as_pt["input_features"].shape == (2, 98, 64)
    assert as_pt["window_clip_index"].tolist() == [0, 0]


def test_short_clip_is_zero_padded_to_one_window_after_normalisation(fe):
    for samples in (100, 1000, WINDOW_SAMPLES - 1):
        clip = noise(samples, seed=samples)
        padded = np.zeros(WINDOW_SAMPLES)
        padded[:samples] = clip / np.linalg.norm(clip.astype(np.float64))
        expected = reference_log_mel(padded, normalize=False)
        out = fe(clip, sampling_rate=SR, return_tensors="np")["input_features"][0]
        assert out.shape == (98, 64)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
        torch_out = fe(torch.from_numpy(clip), sampling_rate=SR, return_tensors="pt")
        assert_float32_close(torch_out["input_features"][0].numpy(), expected)


def test_device_argument_takes_torch_path(fe):
    out = fe(noise(20000), sampling_rate=SR, device="cpu", return_tensors="pt")
    assert out["input_features"].device.type == "cpu"
    assert out["attention_mask"].device.type == "cpu"
    assert out["input_features"].shape == (1, fe.num_frames(20000), 64)
    # A tensor that requires grad is fine: features are computed without a graph.
    x = torch.from_numpy(noise(20000)).requires_grad_()
    assert fe(x, sampling_rate=SR, return_tensors="np")["input_features"].shape[1] == 123


# ----------------------------------------------------------------------------- inputs


def test_int16_equals_float_over_32768():
    fe = MSCLFeatureExtractor(normalize_waveform=False)  # so that the scale matters
    pcm = (noise(20000) * 3000).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768.0  # exact: a power-of-two scale
    for convert in (np.asarray, torch.from_numpy):
        expected = fe(convert(as_float), sampling_rate=SR, return_tensors="np")["input_features"]
        # ln(32768 / 32767) = 3e-5, so a tolerance of 1e-6 tells the two scales apart.
        for clip in (pcm, pcm.astype(np.int32) * 65536):
            out = fe(convert(clip), sampling_rate=SR, return_tensors="np")["input_features"]
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("as_torch", [False, True])
def test_multichannel_list_element_is_averaged(as_torch):
    fe = MSCLFeatureExtractor(normalize_waveform=False)  # so that mean vs sum matters
    left, right = noise(20000, seed=1), sine(500.0, 20000 / SR)
    mono = (left + right) / 2
    expected = fe(mono, sampling_rate=SR, return_tensors="np")["input_features"]
    for stereo in (np.stack([left, right]), np.stack([left, right], axis=1)):
        clip = torch.from_numpy(stereo) if as_torch else stereo
        out = fe([clip], sampling_rate=SR, return_tensors="np")["input_features"]
        assert_float32_close(out[0], expected[0])


def test_bad_inputs_raise_clear_errors(fe):
    x = noise(20000)
    with pytest.raises(ValueError, match="sampling_rate=16000"):
        fe(x)
    with pytest.raises(ValueError, match=r"16000 Hz.*resample=True"):
        fe(x, sampling_rate=44100)
    for rate in (1, 3999, 768001):  # bounded: sampling_rate=1 made 16,326 windows and 5.5 GB
        with pytest.raises(ValueError, match=f"sampling_rate={rate} Hz is outside"):
            fe(x, sampling_rate=rate, resample=True)
    with pytest.raises(ValueError, match="Clip 1 is empty"):
        fe([x, np.zeros(0, dtype=np.float32)], sampling_rate=SR)
    bad = x.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="Clip 2 contains NaN"):
        fe([x, x, bad], sampling_rate=SR)
    bad[7] = np.inf
    with pytest.raises(ValueError, match="Clip 0 contains NaN or infinite"):
        fe(torch.from_numpy(bad), sampling_rate=SR)
    with pytest.raises(ValueError, match="2-D batch of mono clips"):
        fe(np.zeros((2, 2, 20000), dtype=np.float32), sampling_rate=SR)
    with pytest.raises(ValueError, match="at most 8 channels"):
        fe([np.zeros((10, 20000), dtype=np.float32)], sampling_rate=SR)
    # (samples, channels) as soundfile returns it, passed bare: refused at once (read as a
    # batch it would be 160,000 clips of 6 samples), with the way to pass it.
    with pytest.raises(ValueError, match=r"clips would have 6 samples each.*\[audio\]"):
        fe(np.zeros((160000, 6), dtype=np.float32), sampling_rate=SR)
    with pytest.raises(ValueError, match="return_tensors"):
        fe(x, sampling_rate=SR, return_tensors="tf")


def test_resample_gives_features_close_to_native_rate(fe):
    native = fe(sine(1000.0, 2.0), sampling_rate=SR, return_tensors="np")["input_features"]
    for clip in (sine(1000.0, 2.0, sr=44100), torch.from_numpy(sine(1000.0, 2.0, sr=44100))):
        out = fe(clip, sampling_rate=44100, resample=True, return_tensors="np")
        resampled = out["input_features"]
        assert resampled.shape == native.shape
        # Skip the edge frames (resampling filter ramps); compare bands with real energy.
        inner, ref = resampled[0, 5:-5], native[0, 5:-5]
        strong = ref > ref.max() - math.log(1e2)
        assert np.abs(inner - ref)[strong].max() < 0.05
        assert inner.argmax(1).tolist() == ref.argmax(1).tolist()


def test_resample_without_julius_names_the_package(fe, monkeypatch):
    monkeypatch.setitem(sys.modules, "julius", None)  # makes `import julius` fail
    with pytest.raises(ImportError, match="pip install julius"):
        fe(sine(1000.0, 1.0, sr=22050), sampling_rate=22050, resample=True)


def test_the_one_resampler_is_julius_bit_for_bit_with_its_kernels_cached():
    import julius

    rng = np.random.default_rng(0)
    for orig, target in ((44100, 16000), (8000, 16000), (48000, 44100)):
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal((2, 3001)).astype(dtype)
            want = julius.resample_frac(torch.from_numpy(x), orig, target)
            for _ in range(2):  # the second call is served by the cached kernels
                got = resample_audio(x, orig, target)
                assert isinstance(got, np.ndarray) and got.dtype == dtype
                np.testing.assert_array_equal(got, want.numpy())
            tensor = torch.from_numpy(x)
            assert torch.equal(resample_audio(tensor, orig, target), want)
            full = julius.resample_frac(tensor, orig, target, full=True)
            assert torch.equal(resample_audio(tensor, orig, target, full=True), full)
            cut = julius.resample_frac(tensor, orig, target, output_length=7)
            assert torch.equal(resample_audio(tensor, orig, target, output_length=7), cut)
    x = rng.standard_normal(100).astype(np.float32)
    assert resample_audio(x, SR, SR) is x and resample_audio(x, SR, SR, output_length=10).shape == (
        10,
    )


def test_resampled_length_is_the_length_julius_gives():
    # 180923 samples at 44.1 kHz: the exact floor is 65640 at 16 kHz, julius gives 65641
    # (it floors in float32), and the stems must be as long as the resampled mixture
    for n, orig, target in ((180923, 44100, 16000), (3001, 8000, 16000), (999, SR, SR)):
        got = resample_audio(np.zeros(n, np.float32), orig, target).shape[-1]
        assert resampled_length(n, orig, target) == got
    assert resampled_length(180923, 44100, 16000) == 180923 * 16000 // 44100 + 1


def test_channel_axis_is_the_smaller_axis_up_to_max_channels():
    assert channel_axis((2, 1000)) == 0 and channel_axis((1000, 2)) == 1
    assert channel_axis((8, 8)) == 0 and channel_axis((1000, 8)) == 1
    with pytest.raises(
        ValueError, match=r"Clip 3 has shape \(9, 1000\).*at most 8 channels on its smaller axis\.!"
    ):
        channel_axis((9, 1000), "Clip 3", "!")


# ----------------------------------------------------------------------------- config


def test_model_input_names():
    assert MSCLFeatureExtractor.model_input_names == ["input_features", "attention_mask"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"feature_size": 0},
        {"sampling_rate": -1},
        {"frame_length": 2048},  # longer than the FFT
        {"hop_length": 1.5},
        {"lower_edge_hertz": 8000.0},
        {"upper_edge_hertz": 9000.0},  # above Nyquist
        {"log_floor": 0.0},
        {"log_ceiling": 1e-6},
        {"window_frames": 0},
        {"padding_value": float("nan")},
        {"normalize_waveform": "yes"},
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError):
        MSCLFeatureExtractor(**kwargs)


def test_save_and_load_round_trip(tmp_path):
    fe = MSCLFeatureExtractor(feature_size=40, window_frames=50, upper_edge_hertz=7000.0)
    fe.log_mel(torch.zeros(1000))  # fills the torch constant cache, which must not be saved
    fe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "mel_filters" not in saved and "window" not in saved and "_torch_constants" not in saved
    assert saved["feature_size"] == 40 and saved["window_frames"] == 50

    loaded = MSCLFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == fe.to_dict()
    np.testing.assert_array_equal(loaded.mel_filters, fe.mel_filters)
    x = noise(5000)  # shorter than one 50-frame window: padded to it
    np.testing.assert_array_equal(
        loaded(x, sampling_rate=SR, return_tensors="np")["input_features"],
        fe(x, sampling_rate=SR, return_tensors="np")["input_features"],
    )
    assert loaded(x, sampling_rate=SR, return_tensors="np")["input_features"].shape == (1, 50, 40)
