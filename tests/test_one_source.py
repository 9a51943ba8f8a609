"""One source of truth: one window cutter, one feature-extractor loader, one eval-mode
context, one model config and one augment group."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_mscl import (
    MSCLConfig,
    MSCLFeatureExtractor,
    MSCLModel,
    eval_mode,
    load_feature_extractor,
)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, projection_dim=8)


@pytest.fixture(scope="module")
def model_and_clip():
    torch.manual_seed(0)
    model = MSCLModel(MSCLConfig(**TINY)).eval()
    # 3.3 s: three whole windows and a remainder that every path must drop the same way.
    clip = np.random.default_rng(0).standard_normal(52800).astype(np.float32) * 0.1
    return model, clip


def test_embed_audio_the_pipeline_and_the_probes_cut_the_same_windows(model_and_clip):
    from modeling_mscl.modeling_mscl import MSCLEmbeddingPipeline
    from modeling_mscl.probing.embeddings import _encode, window_features

    model, clip = model_and_clip
    fe = MSCLFeatureExtractor()
    # embed_audio's windows: the extractor's return_windows.
    called = fe([clip], sampling_rate=16000, return_windows=True, return_tensors="pt")
    # the embedding pipeline's windows: its preprocess step.
    embed = MSCLEmbeddingPipeline(model=model, feature_extractor=fe, device="cpu")
    piped = embed.preprocess({"array": clip, "sampling_rate": 16000})["input_features"]
    # the probes' windows.
    probed = window_features(clip, fe)
    assert called["input_features"].shape == (3, 98, 64)
    torch.testing.assert_close(piped, called["input_features"], rtol=0, atol=0)
    torch.testing.assert_close(probed, called["input_features"], rtol=0, atol=0)
    # and the features of those windows
    out = model.embed_audio(clip, sampling_rate=16000, feature_extractor=fe, batch_size=2)
    torch.testing.assert_close(_encode(model, probed, 2), out.window_embeds, rtol=0, atol=0)
    result = embed({"array": clip, "sampling_rate": 16000}, batch_size=2)
    np.testing.assert_array_equal(result["window_embeddings"], out.window_embeds.numpy())


def test_numpy_and_torch_windows_agree():
    fe = MSCLFeatureExtractor()
    clips = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in
             enumerate((8000, 40000))]  # fmt: skip
    as_numpy = fe(clips, sampling_rate=16000, return_windows=True, return_tensors="np")
    as_torch = fe([torch.from_numpy(c) for c in clips], sampling_rate=16000,
                  return_windows=True, return_tensors="pt")  # fmt: skip
    np.testing.assert_array_equal(as_numpy["input_features"], as_torch["input_features"].numpy())
    assert as_numpy["window_clip_index"].tolist() == [0, 1, 1]


def test_one_feature_extractor_loader(tmp_path):
    assert load_feature_extractor().feature_size == 64
    assert load_feature_extractor(num_mel_bins=32).feature_size == 32
    fe = MSCLFeatureExtractor(feature_size=40, upper_edge_hertz=7000.0)
    assert load_feature_extractor(fe, 40) is fe
    with pytest.raises(ValueError, match="makes 40 mel bins but the model takes 64"):
        load_feature_extractor(fe, 64)
    fe.save_pretrained(tmp_path / "saved")
    assert load_feature_extractor(tmp_path / "saved").to_dict() == fe.to_dict()
    with pytest.raises(OSError):
        load_feature_extractor(tmp_path / "empty")
    assert load_feature_extractor(tmp_path / "empty", 48, missing_ok=True).feature_size == 48


def test_no_fallback_builds_its_own_extractor():
    # Every fall-back goes through load_feature_extractor: nothing else builds the default.
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "modeling_mscl").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "MSCLFeatureExtractor(feature_size=" in line or "or MSCLFeatureExtractor()" in line
    ]
    assert offenders == ["modeling_mscl/feature_extraction_mscl.py:" + offenders[0].split(":")[1]]


def test_eval_mode_gives_the_mode_back_even_on_an_error():
    module = torch.nn.BatchNorm1d(3).train()
    with eval_mode(module):
        assert not module.training
    assert module.training
    with pytest.raises(RuntimeError), eval_mode(module):
        raise RuntimeError
    assert module.training
    module.eval()
    with eval_mode(module):
        pass
    assert not module.training
    private = [p for p in (REPO / "modeling_mscl").rglob("*.py") if "_EvalMode" in p.read_text()]
    assert not private, private


def test_model_config_is_built_in_one_place_and_checks_similarity_once():
    from modeling_mscl.training_args import PretrainingArguments

    args = PretrainingArguments()
    assert args.model_config(32).num_mel_bins == 32
    assert args.model_config().to_dict() == MSCLConfig(**dataclasses.asdict(args.model)).to_dict()
    args.model.similarity = "dot"
    with pytest.raises(ValueError, match="MSCLConfig: similarity='dot' is invalid"):
        args.model_config()


def test_the_augment_group_is_spec_augmentations_fields():
    from modeling_mscl.augment import SpecAugmentation
    from modeling_mscl.training_args import AugmentArguments, PretrainingArguments

    ours = {f.name: f.default for f in dataclasses.fields(AugmentArguments)}
    theirs = {f.name: f.default for f in dataclasses.fields(SpecAugmentation)}
    theirs["augment_fill_value"] = theirs.pop("fill_value")
    assert ours == theirs
    assert all(f.metadata["help"] for f in dataclasses.fields(AugmentArguments))
    args = PretrainingArguments()
    args.augment.time_warp_prob = 0.25
    args.augment.augment_fill_value = -1.0
    spec = args.spec_augmentation()
    assert spec.time_warp_prob == 0.25 and spec.fill_value == -1.0
