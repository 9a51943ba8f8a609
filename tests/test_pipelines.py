"""The pipelines a saved folder declares: audio classification on a probe head and window /
clip embeddings on an encoder, on audio in every form, without FFmpeg, torchaudio or this
package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from transformers import pipeline

import modeling_mscl.modeling_mscl as modeling
from modeling_mscl import MSCLFeatureExtractor, MSCLForAudioClassification, MSCLModel
from modeling_mscl.probing import ProbeTask, TrainedProbe, export_probe

from .conftest import tiny_config
from .without_package import run_without_package

LABELS = ["low", "mid", "high"]
FREQS = (150.0, 700.0, 3000.0)


def _tone(rate: int, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """An encoder folder, a probe head on it that tells the three tones apart with a wide
    margin (nearest centre of their embeddings), and one "mid" tone in every form."""
    root = tmp_path_factory.mktemp("pipelines")
    torch.manual_seed(0)
    encoder = MSCLModel(tiny_config()).eval()
    encoder.save_pretrained(root / "encoder")
    MSCLFeatureExtractor().save_pretrained(root / "encoder")
    centres = torch.cat(
        [encoder.embed_audio(_tone(16000, 2.0, f), 16000).clip_embeds for f in FREQS]
    )
    gap = torch.cdist(centres, centres).square()
    scale = 20.0 / gap[gap > 0].min()  # logits k (x.c - |c|^2 / 2): a margin of >= 10
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(centres.shape[1], len(LABELS)))
    with torch.no_grad():
        head[1].weight.copy_(scale * centres)
        head[1].bias.copy_(-scale * centres.square().sum(-1) / 2)
    task = ProbeTask("tones", "label", multi_label=False)
    export_probe(encoder, TrainedProbe(head, task, LABELS), root / "head")

    mid = FREQS[1]
    sf.write(root / "mid.mp3", _tone(44100, 3.0, mid), 44100)
    stereo = np.stack([_tone(44100, 3.0, mid), 0.5 * _tone(44100, 3.0, mid)], axis=1)
    sf.write(root / "mid.flac", stereo, 44100)
    np.save(root / "mid48k.npy", _tone(48000, 3.0, mid))
    np.save(root / "mid16k.npy", _tone(16000, 3.0, mid))
    return {"root": root, "encoder": root / "encoder", "head": root / "head"}


def test_saved_folders_declare_their_pipeline(folders):
    head = json.loads((folders["head"] / "config.json").read_text())["custom_pipelines"]
    encoder = json.loads((folders["encoder"] / "config.json").read_text())["custom_pipelines"]
    assert head == {
        "audio-classification": {
            "impl": "modeling_mscl.MSCLAudioClassificationPipeline",
            "pt": ["AutoModelForAudioClassification"],
            "type": "audio",
        }
    }
    assert list(encoder) == [modeling.EMBEDDING_TASK]
    assert encoder[modeling.EMBEDDING_TASK]["impl"] == "modeling_mscl.MSCLEmbeddingPipeline"


# What a user without this package, FFmpeg, torchcodec or torchaudio runs: both pipelines
# from the saved folders, on a path, bytes and dicts at other rates.
SCRIPT = r"""
import json, shutil, sys
# Not installed, as far as anyone can tell: no FFmpeg for torchcodec to reach either.
sys.modules["torchaudio"] = sys.modules["torchcodec"] = None
assert shutil.which("ffmpeg") is None, "ffmpeg must not be on PATH here"
import numpy as np
from transformers import pipeline
root = sys.argv[1]
classify = pipeline("audio-classification", model=f"{root}/head", trust_remote_code=True, device="cpu")
inputs = {
    "array16k": np.load(f"{root}/mid16k.npy"),
    "mp3 path": f"{root}/mid.mp3",
    "flac path": f"{root}/mid.flac",
    "mp3 bytes": open(f"{root}/mid.mp3", "rb").read(),
    "dict48k": {"array": np.load(f"{root}/mid48k.npy"), "sampling_rate": 48000},
}
top = {name: classify(audio, top_k=1)[0]["label"] for name, audio in inputs.items()}
embed = pipeline(model=f"{root}/encoder", trust_remote_code=True, device="cpu", batch_size=2)
out = embed(f"{root}/mid.flac")
np.save(f"{root}/windows.npy", out["window_embeddings"])
print(json.dumps({"top": top, "modules": [type(p).__module__ for p in (classify, embed)]}))
"""


def test_pipelines_run_without_the_package_ffmpeg_or_torchaudio(folders, tmp_path):
    root = folders["root"]
    env = {
        "PATH": str(Path(sys.executable).parent),  # the interpreter's folder: no ffmpeg
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    result = run_without_package(SCRIPT, str(root), cwd=tmp_path, env=env)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(m.startswith("transformers_modules") for m in loaded["modules"])
    # The same top label for every form, and the right one.
    assert set(loaded["top"].values()) == {"mid"}, loaded["top"]
    # The embeddings equal the package's own, window by window.
    expected = MSCLModel.from_pretrained(folders["encoder"]).embed_audio(str(root / "mid.flac"))
    got = np.load(root / "windows.npy")
    np.testing.assert_allclose(got, expected.window_embeds.numpy(), rtol=1e-4, atol=1e-6)


def test_classification_of_datasets_audio_items(folders):
    pytest.importorskip("torchcodec.decoders", exc_type=ImportError)
    from datasets import Audio, Dataset

    root = folders["root"]
    classify = pipeline(
        "audio-classification", model=str(folders["head"]), trust_remote_code=True, device="cpu"
    )
    array = classify(np.load(root / "mid16k.npy"), top_k=3)
    # The model's config still prints and saves as the folder declared it.
    saved = json.loads((folders["head"] / "config.json").read_text())["custom_pipelines"]
    assert json.loads(classify.model.config.to_json_string())["custom_pipelines"] == saved
    paths = Dataset.from_dict({"audio": [str(root / "mid.flac")]})
    decoded = paths.cast_column("audio", Audio())[0]["audio"]  # a torchcodec AudioDecoder
    undecoded = paths.cast_column("audio", Audio(decode=False))[0]["audio"]
    assert type(decoded).__name__ == "AudioDecoder" and set(undecoded) == {"path", "bytes"}
    for item in (decoded, undecoded):
        scores = classify(item, top_k=3)
        assert scores[0]["label"] == array[0]["label"] == "mid"
    # Decoded by FFmpeg or by soundfile, the flac gives the same features.
    torch.testing.assert_close(
        classify.preprocess(decoded)["input_features"],
        classify.preprocess(undecoded)["input_features"],
    )


def test_embedding_pipeline_encodes_windows_in_batches(folders, tmp_path):
    embed = pipeline(model=str(folders["encoder"]), trust_remote_code=True, device="cpu")
    batches = []
    embed.model.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    track = np.random.default_rng(0).standard_normal(16000 * 10).astype(np.float32)
    out = embed({"array": track, "sampling_rate": 16000}, batch_size=4)
    assert batches == [4, 4, 2]  # 10 windows of 98 frames, 4 at a time
    assert out["window_embeddings"].shape == (10, embed.model.config.encoder_hidden_size)
    np.testing.assert_allclose(out["window_starts"], 0.98 * np.arange(10), atol=1e-6)
    np.testing.assert_allclose(out["clip_embedding"], out["window_embeddings"].mean(0))
    expected_model = MSCLModel.from_pretrained(folders["encoder"])
    expected = expected_model.embed_audio(track, 16000)
    np.testing.assert_allclose(out["window_embeddings"], expected.window_embeds, atol=1e-6)
    projected = embed([track[:16000], track], output="audio_embeds")
    assert [o["window_embeddings"].shape for o in projected] == [(1, 32), (10, 32)]
    # A model in memory (no folder, no declaration) gets the class directly.
    direct = modeling.MSCLEmbeddingPipeline(model=expected_model, device="cpu")
    np.testing.assert_allclose(direct(track)["clip_embedding"], out["clip_embedding"], atol=1e-6)


def test_a_long_clip_is_classified_window_batch_by_window_batch(folders, monkeypatch):
    model = MSCLForAudioClassification.from_pretrained(folders["head"]).eval()
    track = np.random.default_rng(1).standard_normal(16000 * 7).astype(np.float32)
    features = MSCLFeatureExtractor()(track, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        whole = model(**features).logits
        monkeypatch.setattr(modeling, "_WINDOW_BATCH", 3)
        batches = []
        model.mscl.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
        batched = model(**features).logits
    assert batches == [3, 3, 1]
    torch.testing.assert_close(batched, whole)
