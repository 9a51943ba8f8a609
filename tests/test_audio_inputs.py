"""Audio in every form users hold it: one decoding path (decode_audio) for paths, bytes,
dicts at any rate, datasets audio items and torchcodec decoders; datasets with an Audio
column as input of the probes and of the chunk step."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value

from modeling_mscl import MSCLFeatureExtractor, MSCLModel
from modeling_mscl.audio_io import AudioDecodeError, audio_column, load_audio, write_audio
from modeling_mscl.chunks import prepare_chunks
from modeling_mscl.feature_extraction_mscl import decode_audio, resample_audio
from modeling_mscl.probing import get_task, load_probe_dataset, run_probe
from modeling_mscl.stems import SOURCES, OracleSeparator

from .conftest import tiny_config


def _torchcodec():
    """torchcodec's decoder and encoder, or a skip where it (or FFmpeg) cannot load."""
    try:
        from torchcodec.decoders import AudioDecoder
        from torchcodec.encoders import AudioEncoder
    except Exception as err:  # ImportError, or FFmpeg's libraries missing
        pytest.skip(f"torchcodec is not usable here: {str(err).splitlines()[0]}")
    return AudioDecoder, AudioEncoder


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def stereo_flac(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 44.1 kHz stereo flac and what it should decode to: 16 kHz mono."""
    path = tmp_path_factory.mktemp("audio") / "stereo.flac"
    left, right = _tone(44100, 1.5, 440), _tone(44100, 1.5, 660)
    sf.write(path, np.stack([left, right], axis=1), 44100)
    written = sf.read(path, dtype="float32")[0]  # 16-bit flac: what the file holds
    return path, resample_audio(written.T.mean(0), 44100, 16000)


# ------------------------------------------------------------------ one decoding path


def test_every_form_of_the_same_audio_decodes_the_same(stereo_flac):
    AudioDecoder, _ = _torchcodec()
    path, want = stereo_flac
    data = path.read_bytes()
    stereo, rate = sf.read(path, dtype="int16")  # (samples, channels) PCM
    forms = {
        "path": str(path),
        "Path": path,
        "bytes": data,
        "undecoded item": {"path": str(path), "bytes": None},
        "item with bytes": {"path": "elsewhere/stereo.flac", "bytes": data},
        "int16 dict": {"array": stereo, "sampling_rate": rate},
        "raw dict": {"raw": stereo.T.astype(np.float32) / 32768, "sampling_rate": float(rate)},
        "AudioDecoder": AudioDecoder(str(path)),
    }
    for name, audio in forms.items():
        got, got_rate = decode_audio(audio, 16000)
        assert got_rate == 16000 and got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    # Channels kept and the rate left alone on request.
    native, native_rate = decode_audio(data, None, mono=False)
    assert native_rate == 44100 and native.shape == (2, stereo.shape[0])
    np.testing.assert_array_equal(load_audio(path, 16000), decode_audio(path, 16000)[0])


def test_decoding_errors_name_the_input_and_the_reason(tmp_path, monkeypatch):
    with pytest.raises(AudioDecodeError, match=r"absent\.wav: no such audio file"):
        decode_audio(tmp_path / "absent.wav")
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"not audio at all" * 64)
    with pytest.raises(AudioDecodeError, match=r"garbage\.mp3: cannot decode audio \(soundfile: "):
        decode_audio(garbage)
    with pytest.raises(AudioDecodeError, match=r"<1024 bytes of audio>: cannot decode"):
        decode_audio(garbage.read_bytes())
    # Without torchcodec, the message says what would read other formats.
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(AudioDecodeError, match="torchcodec, which reads the other formats"):
        decode_audio({"path": "song.m4a", "bytes": garbage.read_bytes()})
    monkeypatch.undo()

    with pytest.raises(AudioDecodeError, match=r"the audio array: 'sampling_rate' must be"):
        decode_audio({"array": np.zeros(100, np.float32)})
    with pytest.raises(AudioDecodeError, match="outside the audio rates"):
        decode_audio({"array": np.zeros(100, np.float32), "sampling_rate": 100})
    with pytest.raises(AudioDecodeError, match="holds no samples"):
        decode_audio({"array": np.zeros(0, np.float32), "sampling_rate": 16000})
    with pytest.raises(AudioDecodeError, match="NaN or infinite"):
        decode_audio({"array": np.array([0.0, np.nan], np.float32), "sampling_rate": 16000})
    with pytest.raises(AudioDecodeError, match=r"needs 'array' \(or 'raw'\).*\['text'\]"):
        decode_audio({"text": "no audio here"})
    with pytest.raises(TypeError, match="a bare array has no rate"):
        decode_audio(np.zeros(100, np.float32))


def test_formats_soundfile_cannot_read_go_through_torchcodec(tmp_path):
    _, AudioEncoder = _torchcodec()
    path = tmp_path / "tone.m4a"  # AAC: libsndfile does not read it
    AudioEncoder(torch.from_numpy(_tone(16000, 1.0))[None], sample_rate=16000).to_file(str(path))
    with pytest.raises(Exception, match="Format not recognised"):
        sf.info(path)
    wav, rate = decode_audio(path)
    assert rate == 16000 and abs(wav.shape[0] - 16000) < 2048  # the encoder's padding
    # The tone came back (AAC is lossy): most of its energy sits at 440 Hz.
    spectrum = np.abs(np.fft.rfft(wav[:16000]))
    assert abs(np.argmax(spectrum) * rate / 16000 - 440) <= 2


def test_the_feature_extractor_takes_audio_with_its_rate(stereo_flac):
    path, want = stereo_flac
    fe = MSCLFeatureExtractor()
    expected = fe(want, sampling_rate=16000, return_tensors="np")["input_features"]
    from_path = fe(str(path), return_tensors="np")["input_features"]  # no rate to pass
    np.testing.assert_allclose(from_path, expected, atol=1e-5)
    tone48k = {"array": _tone(48000, 1.2), "sampling_rate": 48000}
    batch = fe([path.read_bytes(), tone48k], return_tensors="np", padding="longest")
    np.testing.assert_allclose(batch["input_features"][0], expected[0], atol=1e-5)
    alone = fe(resample_audio(tone48k["array"], 48000, 16000), sampling_rate=16000)
    frames = alone["input_features"][0].shape[0]
    np.testing.assert_allclose(batch["input_features"][1][:frames], alone["input_features"][0])
    with pytest.raises(ValueError, match="mixes audio that carries its rate .* with bare arrays"):
        fe([str(path), want], sampling_rate=16000)
    # The embeddings of a path equal those of its decoded samples.
    model = MSCLModel(tiny_config()).eval()
    torch.testing.assert_close(
        model.embed_audio(str(path)).clip_embeds, model.embed_audio(want, 16000).clip_embeds
    )


# ------------------------------------------------------------------ datasets as input

GENRES = ["low", "mid", "high"]


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory) -> DatasetDict:
    """Tones whose pitch gives the genre, as path rows (44.1 kHz files, 1.1 s)."""
    folder = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    features = Features({"audio": Value("string"), "genre": ClassLabel(names=GENRES)})
    splits = {}
    for split, n in (("train", 9), ("validation", 3), ("test", 3)):
        rows = {"audio": [], "genre": []}
        for i in range(n):
            freq = (150, 700, 3000)[i % 3] * (1 + 0.03 * rng.standard_normal())
            path = folder / f"{split}_{i}.wav"
            write_audio(path, _tone(44100, 1.1, freq), 44100)
            rows["audio"].append(str(path))
            rows["genre"].append(i % 3)
        splits[split] = Dataset.from_dict(rows, features=features)
    return DatasetDict(splits)


def _with_audio_column(dataset: DatasetDict, embed_bytes: bool) -> DatasetDict:
    """The same rows with a datasets Audio column: decoded paths, or (as a Hub dataset
    holds them) the files' bytes behind ``Audio(decode=False)``."""
    _torchcodec()  # datasets' Audio feature needs it to build the column
    out = {}
    for name, split in dataset.items():
        if embed_bytes:
            items = [{"path": Path(p).name, "bytes": Path(p).read_bytes()} for p in split["audio"]]
            features = Features({"audio": Audio(decode=False), "genre": split.features["genre"]})
            out[name] = Dataset.from_dict({"audio": items, "genre": split["genre"][:]}, features)
        else:
            out[name] = split.cast_column("audio", Audio())
    return DatasetDict(out)


def test_run_probe_on_datasets_with_an_audio_column(tone_corpus, tmp_path):
    torch.manual_seed(0)
    encoder = MSCLModel(tiny_config()).eval()
    task = get_task("corpus_genre", hidden_size=8, max_epochs=2, learning_rate=1e-2)
    chunks = dataclasses.replace(task, train_sampling="chunks", crops_per_clip=1)
    decoded = _with_audio_column(tone_corpus, embed_bytes=False)
    held = _with_audio_column(tone_corpus, embed_bytes=True)
    assert isinstance(audio_column(decoded["test"], "audio")[0], dict)  # never decoded there
    for probe_task in (task, chunks):
        want = run_probe(encoder, probe_task, tone_corpus)
        for data in (decoded, held):
            got = run_probe(encoder, probe_task, data, cache_dir=tmp_path)
            assert got.metrics == want.metrics and got.probe.history == want.probe.history
    # The cache knows the clips by their bytes: a second run is served from it.
    files = sorted(tmp_path.rglob("*.npy"))
    run_probe(encoder, task, held, cache_dir=tmp_path)
    assert sorted(tmp_path.rglob("*.npy")) == files
    with pytest.raises(KeyError, match=r"no audio column 'wav'; the dataset has \['audio'"):
        run_probe(encoder, dataclasses.replace(task, audio_column="wav"), tone_corpus)


def test_probe_datasets_load_by_name_or_path(tone_corpus, tmp_path):
    _torchcodec()
    # A folder of audio files in split/label folders, as load_dataset reads it (a Hub
    # dataset's layout); "valid" is the validation split.
    for split, part in tone_corpus.items():
        for path, genre in zip(part["audio"], part["genre"], strict=True):
            folder = tmp_path / "folder" / {"validation": "valid"}.get(split, split)
            (folder / GENRES[genre]).mkdir(parents=True, exist_ok=True)
            (folder / GENRES[genre] / Path(path).name).write_bytes(Path(path).read_bytes())
    data = load_probe_dataset(tmp_path / "folder", label_column="label")
    assert sorted(data) == ["test", "train", "validation"]
    assert isinstance(data["train"].features["audio"], Audio)
    assert data["train"].features["label"].names == sorted(GENRES)
    # A saved dataset with string labels (and tags): one ClassLabel in every split.
    named = tone_corpus.map(
        lambda row: {"name": GENRES[row["genre"]], "tags": [GENRES[row["genre"]], "tone"]}
    )
    named.save_to_disk(tmp_path / "saved")
    data = load_probe_dataset(tmp_path / "saved", label_column="name")
    assert data["test"].features["name"].names == ["high", "low", "mid"]
    assert data["test"]["name"][:3] == [1, 2, 0]
    tags = load_probe_dataset(tmp_path / "saved", label_column="tags")
    assert tags["train"].features["tags"].feature.names == ["high", "low", "mid", "tone"]
    torch.manual_seed(0)
    result = run_probe(
        MSCLModel(tiny_config()).eval(),
        get_task("corpus_genre", label_column="label", hidden_size=8, max_epochs=1),
        load_probe_dataset(tmp_path / "folder"),
    )
    assert result.num_clips == {"train": 9, "validation": 3, "test": 3}
    # The probe command on the folder, by name, as on a Hub dataset.
    from modeling_mscl.commands import probe

    tiny_config().save_pretrained(tmp_path / "config")
    args = [
        "--random-init", "--config", str(tmp_path / "config"), "--task", "corpus_genre",
        "--dataset", str(tmp_path / "folder"), "--audio-column", "audio",
        "--label-column", "label", "--task-arg", "max_epochs=1", "--no-progress",
        "--output", str(tmp_path / "results.json"),
    ]  # fmt: skip
    assert probe.main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())["random"]
    saved = saved[f"corpus_genre@{tmp_path / 'folder'}"]  # filed under task and dataset
    assert saved["num_clips"] == {"train": 9, "validation": 3, "test": 3}
    assert saved["task_config"]["label_column"] == "label"
    with pytest.raises(ValueError, match=r"split 'train' has no column 'genre'; its columns"):
        load_probe_dataset(tmp_path / "folder", label_column="genre")
    with pytest.raises(ValueError, match=r"needs 'train' and 'test' splits, got \['train'\]"):
        DatasetDict({"train": tone_corpus["train"]}).save_to_disk(tmp_path / "one")
        load_probe_dataset(tmp_path / "one", label_column="genre")


def test_prepare_chunks_on_a_dataset_with_an_audio_column(tmp_path):
    _torchcodec()
    rng = np.random.default_rng(0)
    n = 62720 + 4000  # one chunk
    row = {"track_id": "song"}
    mixture = np.zeros(n, np.float32)
    for source in SOURCES:
        stem = (0.2 * rng.uniform(-1, 1, n)).astype(np.float32)
        write_audio(tmp_path / f"{source}.wav", stem, 16000)
        row[source] = str(tmp_path / f"{source}.wav")
        mixture += stem
    write_audio(tmp_path / "mix.flac", mixture, 16000)
    columns = {"track_id": Value("string"), **{s: Value("string") for s in SOURCES}}
    paths = Dataset.from_list([{**row, "audio": str(tmp_path / "mix.flac")}])
    decoded = paths.cast_column("audio", Audio())
    held = Dataset.from_list(
        [{**row, "audio": {"path": "mix.flac", "bytes": (tmp_path / "mix.flac").read_bytes()}}],
        features=Features({**columns, "audio": Audio(decode=False)}),
    )
    outputs = [
        prepare_chunks(data, OracleSeparator(), tmp_path / f"out{i}", progress=False)
        for i, data in enumerate((paths, decoded, held))
    ]
    want = outputs[0].with_format("numpy")
    assert len(want) == 1
    for out in outputs[1:]:
        got = out.with_format("numpy")
        for name in ("mixture", *SOURCES, "present"):
            np.testing.assert_array_equal(got[name][:], want[name][:])
