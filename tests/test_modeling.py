"""Config, encoder, pre-training and classification models, Auto classes and pipeline."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
    pipeline,
)

from modeling_mscl import (
    MSCLConfig,
    MSCLFeatureExtractor,
    MSCLForAudioClassification,
    MSCLForPreTraining,
    MSCLModel,
)
from modeling_mscl.hub import HUB_CODE_FILES
from modeling_mscl.modeling_mscl import (
    count_keras_weights,
    encode_windows,
    frame_windows,
    map_windows,
)

from .conftest import tiny_config
from .without_package import run_without_package


def test_default_model_has_reference_weight_counts():
    # Figures of the TensorFlow reference (Keras count_params, non-trainable included).
    model = MSCLForPreTraining(MSCLConfig())
    assert count_keras_weights(model.mscl.encoder) == 4_048_991
    assert count_keras_weights(model.mscl) == 4_705_887
    assert count_keras_weights(model) == 4_968_031
    # Keras' trainable count of a one-channel EfficientNetB0 without top.
    assert sum(p.numel() for p in model.mscl.encoder.parameters()) == 4_006_972
    bn = model.mscl.encoder.stem.bn
    assert bn.eps == pytest.approx(1e-3) and bn.momentum == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"pooling": "avg"}, "pooling"),
        ({"batch_norm_momentum": 0.99}, "Keras"),
        ({"similarity": "dot"}, "similarity"),
        ({"kernel_sizes": [3, 4, 5, 3, 5, 5, 3]}, "odd"),
        ({"strides": [1, 2]}, "one entry per stage"),
        ({"drop_connect_rate": 1.0}, "drop_connect_rate"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"hidden_act": "tanh"}, "hidden_act"),
        ({"classifier_head": "deep"}, "classifier_head"),
    ],
)
def test_config_rejects_invalid_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        MSCLConfig(**kwargs)


def test_config_derives_dimensions():
    config = MSCLConfig(width_coefficient=0.5)
    assert config.encoder_hidden_size == 640
    assert config.stem_channels == 16
    assert "encoder_hidden_size" not in config.to_dict()


def test_keras_padding_halves_time_axis():
    model = MSCLModel(tiny_config()).eval()
    out = model(torch.randn(2, 98, 64), output_hidden_states=True)
    # 98 frames -> 49 (stem, then stage 1 at stride 1) -> 24 -> 12 -> 6 -> 3.
    assert [h.shape[2] for h in out.hidden_states] == [49, 49, 24, 12, 6, 6, 3, 3]
    assert out.last_hidden_state.shape[2] == 3
    assert out.pooler_output.shape == (2, model.config.encoder_hidden_size)
    assert out.audio_embeds.shape == (2, model.config.projection_dim)
    assert out.audio_embeds.abs().max() <= 1.0  # tanh
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.amax(dim=(2, 3)))


def test_mean_pooling_and_tuple_output():
    model = MSCLModel(tiny_config(pooling="mean")).eval()
    x = torch.randn(2, 98, 64)
    feature_map, pooled, embeds = model(x, return_dict=False)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))


def test_a_padded_batch_gives_each_clip_its_own_features():
    """A clip inside a padding="longest" batch gets exactly its features alone (before,
    with the padding only masked out of the pooling, they were 3.5-9.8 relative L2 away)."""
    torch.manual_seed(0)
    model = MSCLModel(tiny_config()).eval()
    fe = MSCLFeatureExtractor()
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 40000, 16000)]
    batch = fe(clips, sampling_rate=16000, padding="longest", return_tensors="pt")
    out = model(batch["input_features"], attention_mask=batch["attention_mask"])
    for i, clip in enumerate(clips):
        alone = model(fe(clip, sampling_rate=16000, return_tensors="pt")["input_features"])
        torch.testing.assert_close(out.pooler_output[i], alone.pooler_output[0])
        torch.testing.assert_close(out.audio_embeds[i], alone.audio_embeds[0])
        steps = alone.last_hidden_state.shape[2]
        torch.testing.assert_close(out.last_hidden_state[i, :, :steps], alone.last_hidden_state[0])
    assert out.last_hidden_state[0, :, steps:].abs().sum() == 0  # zero-padded along time
    # With hidden states, one pass with the padding masked layer by layer: the same features.
    masked = model(batch["input_features"], batch["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(masked.pooler_output, out.pooler_output, rtol=1e-4, atol=1e-6)
    assert len(masked.hidden_states) == len(model.config.kernel_sizes) + 1
    holes = batch["attention_mask"].clone()
    holes[1, 5] = 0
    with pytest.raises(ValueError, match="prefix"):
        model(batch["input_features"], attention_mask=holes)
    with pytest.raises(ValueError, match="prefix"):
        model(batch["input_features"], attention_mask=holes, output_hidden_states=True)


def test_wrong_input_shape_is_explained():
    model = MSCLModel(tiny_config())
    with pytest.raises(ValueError, match="batch, frames, 64"):
        model(torch.randn(2, 98, 40))


def test_stochastic_depth_only_in_training():
    # Full depth: with one block per stage no block has a residual branch to drop.
    model = MSCLModel(tiny_config(drop_connect_rate=0.5, depth_coefficient=1.0))
    x = torch.randn(3, 98, 64)
    model.eval()
    torch.testing.assert_close(model(x).audio_embeds, model(x).audio_embeds)
    model.train()
    torch.manual_seed(0)
    a = model(x).audio_embeds
    torch.manual_seed(1)
    b = model(x).audio_embeds
    assert not torch.allclose(a, b)


def test_window_mechanics_cut_batch_and_keep_the_mode():
    features = torch.arange(2 * 250 * 3, dtype=torch.float32).reshape(2, 250, 3)
    mask = torch.ones(2, 250, dtype=torch.long)
    mask[1, 98:] = 0  # clip 1 is one window long: its second window is padding
    windows, clip_index, real = frame_windows(features, 98, mask)
    assert windows.shape == (4, 98, 3) and clip_index.tolist() == [0, 0, 1, 1]
    assert real.tolist() == [True, True, True, False]  # the 54 frames after 196 are dropped
    torch.testing.assert_close(windows[3], features[1, 98:196])
    seen = []
    out = map_windows(lambda w: seen.append(len(w)) or w.sum((1, 2)), windows, 3)
    assert seen == [3, 1] and out.shape == (4,)
    with pytest.raises(ValueError, match="batch_size"):
        map_windows(lambda w: w, windows, 0)
    hopped, hopped_index, _ = frame_windows(features, 98, hop=49)  # overlapping: 4 per clip
    assert hopped.shape == (8, 98, 3) and hopped_index.tolist() == [0] * 4 + [1] * 4
    torch.testing.assert_close(hopped[1], features[0, 49:147])
    with pytest.raises(ValueError, match="cannot cut 50 frames"):
        frame_windows(features[:, :50], 98)

    model = MSCLModel(tiny_config())  # training mode: encode_windows leaves it so
    x = torch.randn(5, 98, 64)
    embeds = encode_windows(model, x, batch_size=2, output="audio_embeds", device="cpu")
    assert model.training and embeds.shape == (5, model.config.projection_dim)
    assert not embeds.requires_grad
    empty = encode_windows(model.eval(), x[:0])
    assert empty.shape == (0, model.config.encoder_hidden_size)
    with pytest.raises(ValueError, match="output must be"):
        encode_windows(model, x, output="logits")


def test_embed_audio_is_batch_size_invariant_and_handles_long_audio():
    model = MSCLModel(tiny_config()).eval()
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(16000 * 5).astype(np.float32), rng.standard_normal(8000)]
    full = model.embed_audio(clips, sampling_rate=16000, batch_size=64)
    small = model.embed_audio(clips, sampling_rate=16000, batch_size=2)
    torch.testing.assert_close(full.clip_embeds, small.clip_embeds, rtol=1e-4, atol=1e-5)
    assert full.clip_embeds.shape == (2, model.config.encoder_hidden_size)
    # 5 s -> 497 frames -> 5 windows; 0.5 s is padded to one window.
    assert full.window_clip_index.tolist() == [0] * 5 + [1]
    torch.testing.assert_close(full.clip_embeds[0], full.window_embeds[:5].mean(0))
    proj = model.embed_audio(clips[0], sampling_rate=16000, output="audio_embeds")
    assert proj.clip_embeds.shape == (1, model.config.projection_dim)
    assert model.training is False


def test_embed_audio_uses_the_saved_front_end(tmp_path):
    """A folder's preprocessor_config.json is the front end its model was trained with."""
    torch.manual_seed(0)
    model = MSCLModel(tiny_config()).eval()
    custom = MSCLFeatureExtractor(lower_edge_hertz=300.0, normalize_waveform=False)
    model.save_pretrained(tmp_path)
    custom.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    saved = loaded.embed_audio(audio, sampling_rate=16000).clip_embeds
    explicit = loaded.embed_audio(audio, sampling_rate=16000, feature_extractor=custom)
    default = model.embed_audio(audio, sampling_rate=16000).clip_embeds  # no folder
    torch.testing.assert_close(saved, explicit.clip_embeds)
    assert not torch.allclose(saved, default, rtol=1e-2, atol=0)  # fresh features are ~1e-7
    with pytest.raises(ValueError, match="makes 32 mel bins but the model takes 64"):
        loaded.embed_audio(audio, 16000, feature_extractor=MSCLFeatureExtractor(feature_size=32))


def test_embed_audio_of_a_stereo_file_is_one_clip():
    """The README's quickstart: soundfile's (samples, channels) array in a list is one
    clip, its channels averaged; bare, it is refused rather than read as a huge batch."""
    model = MSCLModel(tiny_config()).eval()
    stereo = np.random.default_rng(0).standard_normal((16000 * 3, 2)).astype(np.float32)
    out = model.embed_audio([stereo], sampling_rate=16000)
    assert out.clip_embeds.shape == (1, model.config.encoder_hidden_size)
    mono = model.embed_audio(stereo.mean(axis=1), sampling_rate=16000)
    torch.testing.assert_close(out.clip_embeds, mono.clip_embeds)
    with pytest.raises(ValueError, match="pass it in a list"):
        model.embed_audio(stereo, sampling_rate=16000)


def test_pretraining_null_column_and_zeroed_absent_positives():
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config()).eval()
    anchors, positives = torch.randn(6, 98, 64), torch.randn(6, 98, 64)
    present = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    out = model(anchors, positives, source_present=present)
    # One column per row (-inf where absent) and the null column, at fixed shapes.
    assert out.logits.shape == (6, 7)
    assert torch.isinf(out.logits[:, [2, 4]]).all() and torch.isfinite(out.logits[:, -1]).all()
    assert out.targets.tolist() == [0, 1, 6, 3, 6, 5]
    assert torch.isfinite(out.loss)
    # Absent positives are replaced by the zero input: their content cannot matter.
    noisy = positives.clone()
    noisy[~present] = torch.randn(2, 98, 64) * 100
    again = model(anchors, noisy, source_present=present)
    torch.testing.assert_close(out.loss, again.loss)
    cola = model(anchors, positives)
    assert cola.logits.shape == (6, 6) and cola.targets.tolist() == list(range(6))


def test_one_pretraining_forward_is_one_batch_norm_update():
    """Anchors and positives go through the encoder as one batch of 2B, as the reference:
    every batch norm layer updates its running statistics exactly once per forward."""
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config()).train()
    anchors, positives = torch.randn(4, 98, 64), torch.randn(4, 98, 64)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for present in (None, torch.tensor([1, 0, 1, 0], dtype=torch.bool)):
        before = [int(m.num_batches_tracked) for m in norms]
        model(anchors, positives, source_present=present)
        assert [int(m.num_batches_tracked) - b for m, b in zip(norms, before, strict=True)] == [
            1
        ] * len(norms)
    # The statistics are those of the 2B batch: the same model fed the concatenation as
    # one batch of MSCLModel ends with the same running mean.
    torch.manual_seed(0)
    joint = MSCLForPreTraining(tiny_config()).train()
    torch.manual_seed(0)
    alone = MSCLForPreTraining(tiny_config()).train()
    joint(anchors, positives)
    alone.mscl(torch.cat([anchors, positives]))
    first = next(m for m in joint.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_alone = next(m for m in alone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(first.running_mean, first_alone.running_mean)
    torch.testing.assert_close(first.running_var, first_alone.running_var)


def test_null_column_is_the_mean_of_the_absent_rows_in_training_mode():
    # Full depth, so that stochastic depth has residual branches to drop: the absent rows
    # (all the zero input) then get different embeddings in training mode.
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config(drop_connect_rate=0.5, depth_coefficient=1.0))
    model.train()
    anchors, positives = torch.randn(8, 98, 64), torch.randn(8, 98, 64)
    present = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    out = model(anchors, positives, source_present=present)
    absent_rows = out.positive_embeds[~present]
    assert (absent_rows - absent_rows[0]).abs().max() > 1e-3  # the rows do differ
    null = absent_rows.mean(0)
    expected = out.anchor_embeds @ model.similarity.weight @ null
    torch.testing.assert_close(out.logits[:, -1], expected)
    present_rows = out.positive_embeds[present]
    torch.testing.assert_close(
        out.logits[:, :-1][:, present], out.anchor_embeds @ model.similarity.weight @ present_rows.T
    )
    # The gradient reaches every absent row, not only one of them.
    grads = torch.autograd.grad(out.loss, out.positive_embeds)[0]
    assert bool((grads[~present].abs().sum(-1) > 0).all())


def test_bilinear_matrix_starts_like_keras_random_normal():
    torch.manual_seed(0)
    weight = MSCLForPreTraining(tiny_config(projection_dim=256)).similarity.weight.detach()
    assert abs(float(weight.mean())) < 0.002
    assert float(weight.std()) == pytest.approx(0.05, rel=0.02)
    assert float(weight.abs().max()) > 3 * 0.05  # a normal, not a bounded uniform


def test_pretraining_trains_bilinear_and_cosine():
    for similarity in ("bilinear", "cosine"):
        torch.manual_seed(0)
        model = MSCLForPreTraining(tiny_config(similarity=similarity))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        anchors = torch.randn(8, 98, 64)
        positives = anchors + 0.1 * torch.randn(8, 98, 64)
        losses = []
        for _ in range(8):
            out = model(anchors, positives)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
        assert losses[-1] < losses[0], (similarity, losses)
        has_w = model.similarity.weight is not None
        assert has_w == (similarity == "bilinear")


def test_classification_losses_and_frozen_encoder():
    config = tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    config.label2id = {"a": 0, "b": 1, "c": 2}
    model = MSCLForAudioClassification(config)
    x = torch.randn(4, 98, 64)
    out = model(x, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    assert model.config.problem_type == "single_label_classification"
    assert model(x).loss is None

    multi = MSCLForAudioClassification(
        tiny_config(num_labels=3, problem_type="multi_label_classification", classifier_head="mlp")
    )
    loss = multi(x, labels=torch.tensor([[1, 0, 1]] * 4, dtype=torch.float)).loss
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        multi.eval()(x).logits, torch.tensor([[1.0, 0, 1]] * 4)
    )
    multi.eval()
    torch.testing.assert_close(multi(x, labels=torch.tensor([[1.0, 0, 1]] * 4)).loss, expected)
    assert loss.ndim == 0

    frozen = MSCLForAudioClassification(tiny_config(num_labels=2, freeze_encoder=True)).train()
    assert not frozen.mscl.training  # batch-norm statistics stay fixed in a frozen probe
    frozen(x, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert all(p.grad is None for p in frozen.mscl.parameters())
    assert all(p.grad is not None for p in frozen.classifier.parameters())


def test_auto_classes_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config()).eval()
    fe = MSCLFeatureExtractor()
    model.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= files
    # Exactly the Hub files: the loss travels (contrastive_loss_mscl.py), and the
    # collectives (losses.py, torch.distributed) stay with the trainer.
    assert {f for f in files if f.endswith(".py")} == set(HUB_CODE_FILES)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForPreTraining"] == "modeling_mscl.MSCLForPreTraining"

    assert isinstance(AutoConfig.from_pretrained(tmp_path), MSCLConfig)
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), MSCLFeatureExtractor)
    x = torch.randn(2, 98, 64)
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.mscl(x).audio_embeds, model.mscl(x).audio_embeds)
    torch.testing.assert_close(reloaded.similarity.weight, model.similarity.weight)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder, MSCLModel)
    torch.testing.assert_close(encoder(x).pooler_output, model.mscl(x).pooler_output)
    # A classifier starts from the pre-trained encoder; only its head is new.
    clf = AutoModelForAudioClassification.from_pretrained(tmp_path, num_labels=4).eval()
    torch.testing.assert_close(clf.mscl(x).pooler_output, model.mscl(x).pooler_output)


def test_trust_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = MSCLModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "model")
    MSCLFeatureExtractor().save_pretrained(tmp_path / "model")
    audio = np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    np.save(tmp_path / "audio.npy", audio)
    expected = model.embed_audio(audio, sampling_rate=16000).clip_embeds[0]
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np, torch
        from transformers import AutoFeatureExtractor, AutoModel
        folder = {str(tmp_path / "model")!r}
        fe = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        audio = np.load({str(tmp_path / "audio.npy")!r})
        out = model.embed_audio(audio, sampling_rate=16000, feature_extractor=fe)
        np.save({str(tmp_path / "out.npy")!r}, out.clip_embeds[0].numpy())
        # The remote file alone computes the pre-training loss (absent sources included).
        remote = sys.modules[type(model).__module__]
        head = remote.MSCLForPreTraining(model.config)
        x = torch.randn(4, 98, model.config.num_mel_bins)
        loss = head(x, x.flip(0), source_present=torch.tensor([True, False, True, False])).loss
        assert torch.isfinite(loss), loss
        print(type(model).__module__)
        """
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = run_without_package(script, cwd=tmp_path, env=env)
    assert result.stdout.strip().startswith("transformers_modules")
    copied = {p.name for p in (tmp_path / "modules").rglob("*.py") if p.name != "__init__.py"}
    assert copied == set(HUB_CODE_FILES)
    got = torch.from_numpy(np.load(tmp_path / "out.npy"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_audio_classification_pipeline(tmp_path):
    labels = ["drums", "strings", "voice"]
    config = tiny_config(
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    MSCLForAudioClassification(config).save_pretrained(tmp_path)
    MSCLFeatureExtractor().save_pretrained(tmp_path)
    classify = pipeline(
        "audio-classification", model=str(tmp_path), trust_remote_code=True, device="cpu"
    )
    audio = np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    result = classify({"raw": audio, "sampling_rate": 16000}, top_k=3)
    assert sorted(r["label"] for r in result) == labels
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "problem_type", ["single_label_classification", "multi_label_classification"]
)
def test_windowed_classifier_follows_the_probe_aggregation(problem_type):
    config = tiny_config(num_labels=3, problem_type=problem_type, classifier_window_frames=98)
    model = MSCLForAudioClassification(config).eval()
    x = torch.randn(2, 3 * 98 + 40, 64)  # three windows and a dropped remainder
    logits = model(x).logits
    per_window = model.classifier(model.mscl(x[:, : 3 * 98].reshape(6, 98, 64)).pooler_output).view(
        2, 3, 3
    )
    if problem_type == "single_label_classification":
        torch.testing.assert_close(logits, per_window.sum(1))
    else:
        torch.testing.assert_close(torch.sigmoid(logits), torch.sigmoid(per_window).mean(1))
    # A padded row: a window counts when it holds a real frame (here the first two).
    mask = torch.ones(2, x.shape[1], dtype=torch.long)
    mask[1, 98 + 5 :] = 0
    masked = model(x, attention_mask=mask).logits
    torch.testing.assert_close(masked[0], logits[0])
    if problem_type == "single_label_classification":
        torch.testing.assert_close(masked[1], per_window[1, :2].sum(0))
    else:
        torch.testing.assert_close(
            torch.sigmoid(masked[1]), torch.sigmoid(per_window[1, :2]).mean(0)
        )
    one = model(x[:, :98]).logits  # a single window is classified directly
    torch.testing.assert_close(one, model.classifier(model.mscl(x[:, :98]).pooler_output))
