"""Probes: metrics vs scikit-learn, heads on synthetic embeddings, aggregation, the
embedding cache, export + pipeline, the convergence hook and plot, the probe script."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from torch import nn

from modeling_mscl import MSCLFeatureExtractor, MSCLModel
from modeling_mscl.audio_io import load_audio, write_audio
from modeling_mscl.probing import (
    PRESETS,
    CropPool,
    FreshCrops,
    ProbeTask,
    TrainedProbe,
    WindowEmbeddings,
    aggregate_clip_scores,
    append_probe_log,
    binary_accuracy,
    cached_crop_pool,
    cached_training_chunks,
    cached_window_embeddings,
    check_probe_splits,
    chunk_spans,
    clip_log_mel,
    evaluate_probe,
    export_probe,
    get_task,
    make_probe_hook,
    read_probe_log,
    recalibrate_batch_norm,
    results_table,
    run_probe,
    spread_indices,
    train_probe,
    window_accuracy,
    window_features,
)
from modeling_mscl.probing.metrics import classification_metrics

from .conftest import tiny_config

GENRES = ["low", "mid", "high"]
INSTRUMENTS = ["bass", "keys", "drums", "voice"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def audio_corpus(tmp_path_factory) -> DatasetDict:
    """Tiny corpus in the offline corpus' schema: tones whose pitch gives the genre."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    features = Features(
        {
            "track_id": Value("string"),
            "audio": Value("string"),
            "genre": ClassLabel(names=GENRES),
            "instruments": List(ClassLabel(names=INSTRUMENTS)),
        }
    )
    splits = {}
    for split, n in (("train", 12), ("validation", 6), ("test", 6)):
        rows = {name: [] for name in features}
        for i in range(n):
            genre = i % 3
            t = np.arange(int(16000 * 2.1)) / 16000  # two windows
            freq = (150, 700, 3000)[genre] * (1 + 0.03 * rng.standard_normal())
            wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
            path = folder / f"{split}_{i}.wav"
            write_audio(path, wav.astype(np.float32), 16000)
            rows["track_id"].append(f"{split}-{i}")
            rows["audio"].append(str(path))
            rows["genre"].append(genre)
            rows["instruments"].append([genre, 3] if i % 2 else [genre])
        splits[split] = Dataset.from_dict(rows, features=features)
    return DatasetDict(splits)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Embedding cache shared by the tests that probe the same encoder."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_encoder() -> MSCLModel:
    torch.manual_seed(0)
    return MSCLModel(tiny_config()).eval()


def _clusters(num_clips: int, labels: np.ndarray, centres: np.ndarray, seed: int, windows=3):
    """Window embeddings scattered around each clip's class centre."""
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(num_clips), windows)
    embeds = centres[labels][index] + 0.5 * rng.standard_normal((index.size, centres.shape[1]))
    return WindowEmbeddings(embeds.astype(np.float32), index, num_clips)


# --------------------------------------------------------------------------- metrics


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 5)) < 0.3).astype(int)
    labels[:, 4] = 0  # a tag without positives: no ROC curve, left out of the means
    scores = np.round(rng.random((60, 5)) + 0.6 * labels, 1)  # rounded: many ties
    metrics, per_class = classification_metrics(scores, labels, True, list("abcde"))
    assert set(metrics) == {"roc_auc", "pr_auc"}
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels[:, :4], scores[:, :4]))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(labels[:, :4], scores[:, :4]))
    for j, name in enumerate("abcd"):
        assert per_class["roc_auc"][name] == pytest.approx(
            roc_auc_score(labels[:, j], scores[:, j])
        )
        assert per_class["pr_auc"][name] == pytest.approx(
            average_precision_score(labels[:, j], scores[:, j])
        )
    assert per_class["roc_auc"]["e"] is None

    classes = rng.integers(0, 3, 50)
    logits = rng.standard_normal((50, 3))
    metrics, per_class = classification_metrics(logits, classes, False, ["x", "y", "z"])
    assert metrics["accuracy"] == pytest.approx(accuracy_score(classes, logits.argmax(1)))
    members = classes == 1
    assert per_class["accuracy"]["y"] == pytest.approx(np.mean(logits[members].argmax(1) == 1))


def test_metrics_by_hand_with_degenerate_classes():
    # Tag a: positives score 0.9 and 0.3, negatives 0.8 and 0.1: 3 of 4 pairs ordered,
    # precision 1 at recall 1/2 and 2/3 at recall 1. Tag d: the positive ties with two
    # negatives (a tie counts half a pair; one threshold, precision 1/3). Tags b (no
    # positive) and c (no negative) have no curve: None, and left out of the means.
    scores = np.array([[0.9, 0.1, 0.4, 0.5], [0.8, 0.2, 0.3, 0.5], [0.3, 0.3, 0.2, 0.5],
                       [0.1, 0.4, 0.1, 0.2]])  # fmt: skip
    labels = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0]])
    metrics, per_class = classification_metrics(scores, labels, True, list("abcd"))
    assert per_class["roc_auc"] == pytest.approx({"a": 0.75, "b": None, "c": None, "d": 2 / 3})
    assert per_class["pr_auc"] == pytest.approx({"a": 5 / 6, "b": None, "c": None, "d": 1 / 3})
    assert metrics["roc_auc"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert metrics["pr_auc"] == pytest.approx((5 / 6 + 1 / 3) / 2)
    # No tag with both positives and negatives: nothing to average.
    metrics, per_class = classification_metrics(scores[:, 1:3], labels[:, 1:3], True, ["b", "c"])
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
    assert per_class["pr_auc"] == {"b": None, "c": None}

    # Single-label: per-class accuracy is the accuracy on that class's clips; None without.
    logits = np.eye(3)[[0, 1, 1, 1, 0]]
    metrics, per_class = classification_metrics(logits, [0, 0, 1, 1, 1], False, list("xyz"))
    assert metrics == {"accuracy": pytest.approx(3 / 5)}
    assert per_class["accuracy"] == pytest.approx({"x": 1 / 2, "y": 2 / 3, "z": None})


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"scores must be \(clips, 3\)"):
        classification_metrics(np.zeros((4, 2)), np.zeros(4), False, list("abc"))
    with pytest.raises(ValueError, match="labels must have shape"):
        classification_metrics(np.zeros((4, 2)), np.zeros((4, 2)), False, list("ab"))
    with pytest.raises(ValueError, match="labels must have shape"):
        classification_metrics(np.zeros((4, 2)), np.zeros(4), True, list("ab"))
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.zeros((0, 2)), np.zeros(0), False, list("ab"))


# --------------------------------------------------------------------------- heads


def test_probe_separates_separable_data_and_not_shuffled_labels():
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.standard_normal((4, 16))
    train_y, val_y, test_y = rng.integers(0, 4, 80), rng.integers(0, 4, 20), rng.integers(0, 4, 80)
    train = _clusters(80, train_y, centres, 1)
    val, test = _clusters(20, val_y, centres, 2), _clusters(80, test_y, centres, 3)
    task = ProbeTask("t", "label", False, "mlp", hidden_size=16, learning_rate=1e-2,
                     max_epochs=30, crops_per_clip=None, train_sampling="windows")  # fmt: skip
    names = ["a", "b", "c", "d"]
    probe = train_probe(task, train, train_y, names, val, val_y)
    assert evaluate_probe(probe, test, test_y)[0]["accuracy"] >= 0.95

    # Labels shuffled in every split: no relation left between features and labels.
    shuffled = [rng.permutation(y) for y in (train_y, val_y, test_y)]
    probe = train_probe(task, train, shuffled[0], names, val, shuffled[1])
    assert evaluate_probe(probe, test, shuffled[2])[0]["accuracy"] < 0.45  # chance is 0.25
    # Early stopping: the validation accuracy stops improving, the best epoch is kept.
    assert len(probe.history) < task.max_epochs
    assert len(probe.history) == probe.best_epoch + task.patience


def test_multi_label_probe_scores_high_on_separable_tags_and_chance_on_shuffled():
    rng = np.random.default_rng(0)

    def tagged(n, seed):
        index = np.repeat(np.arange(n), 2)
        clip_x = rng.standard_normal((n, 8))
        x = clip_x[index] + 0.1 * np.random.default_rng(seed).standard_normal((2 * n, 8))
        return WindowEmbeddings(x.astype(np.float32), index, n), (clip_x[:, :4] > 0).astype(float)

    (train, train_y), (val, val_y), (test, test_y) = tagged(100, 1), tagged(30, 2), tagged(80, 3)
    # Binary accuracy over 60 validation windows x 4 tags is a coarse criterion that
    # plateaus long before the ranking (ROC-AUC) does: a long patience lets the head learn.
    task = ProbeTask("t", "tags", True, learning_rate=3e-2, max_epochs=60, patience=30,
                     crops_per_clip=None, train_sampling="windows")  # fmt: skip
    probe = train_probe(task, train, train_y, list("abcd"), val, val_y)
    assert evaluate_probe(probe, test, test_y)[0]["roc_auc"] > 0.95
    shuffled = [y[rng.permutation(len(y))] for y in (train_y, val_y, test_y)]
    probe = train_probe(task, train, shuffled[0], list("abcd"), val, shuffled[1])
    assert abs(evaluate_probe(probe, test, shuffled[2])[0]["roc_auc"] - 0.5) < 0.15


def test_standardisation_learns_tiny_features_and_is_folded_into_the_head():
    # A random-init B0 gives pooled features of ~1e-7: without z-scoring, Adam at 5e-4
    # would barely move the logits. The exported head must take the raw features.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    train = _clusters(60, y, 3.0 * rng.standard_normal((3, 8)), 1)
    train.embeds = (1e-7 * train.embeds + 2e-7).astype(np.float32)
    task = ProbeTask("t", "label", False, learning_rate=5e-3, max_epochs=20, crops_per_clip=None,
                     train_sampling="windows", standardize=True)  # fmt: skip
    probe = train_probe(task, train, y, ["a", "b", "c"])
    scores = aggregate_clip_scores(
        probe.window_logits(train.embeds), train.clip_index, train.num_clips, False
    )
    assert np.mean(scores.argmax(1) == y) >= 0.95


def test_clip_aggregation_by_hand():
    logits = np.array([[0.0, 2.0], [2.0, -2.0], [1.0, 1.0]])
    index = np.array([0, 0, 1])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    tagging = aggregate_clip_scores(logits, index, 2, multi_label=True)
    expected = [[(0.5 + sig(2)) / 2, (sig(2) + sig(-2)) / 2], [sig(1), sig(1)]]
    np.testing.assert_allclose(tagging, expected)
    np.testing.assert_allclose(aggregate_clip_scores(logits, index, 2, False), [[2, 0], [1, 1]])

    # At test only the first `test_windows` windows of a clip count.
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(2, 2))
    with torch.no_grad():
        head[1].weight.copy_(torch.eye(2))
        head[1].bias.zero_()
    embeds = WindowEmbeddings(logits.astype(np.float32), index, 2)
    task = ProbeTask("t", "label", False, test_windows=1)
    probe = TrainedProbe(head, task, ["a", "b"])
    # Sum of both windows says class 0 for clip 0, the first window alone says class 1.
    assert evaluate_probe(probe, embeds, np.array([1, 0]))[0]["accuracy"] == 1.0
    full = TrainedProbe(head, ProbeTask("t", "label", False), ["a", "b"])
    assert evaluate_probe(full, embeds, np.array([1, 0]))[0]["accuracy"] == 0.5


# --------------------------------------------------------------------------- tasks


def test_presets_follow_the_paper_protocol():
    assert PRESETS["mtat"].multi_label and PRESETS["mtat"].head == "linear"
    assert PRESETS["mtat"].test_windows == 29 and PRESETS["mtat"].learning_rate == 5e-4
    nsynth = PRESETS["nsynth"]
    assert (nsynth.head, nsynth.hidden_size, nsynth.learning_rate) == ("mlp", 512, 3e-4)
    assert nsynth.test_windows == 4 and not nsynth.multi_label
    fma = PRESETS["fma"]
    assert (fma.head, fma.learning_rate, fma.test_windows, fma.multi_label) == (
        "linear", 5e-4, 30, False,
    )  # fmt: skip
    assert all(t.patience == 5 and t.max_epochs == 50 for t in PRESETS.values())
    assert PRESETS["corpus_instruments"].label_column == "instruments"
    assert get_task("corpus_genre", max_epochs=3).max_epochs == 3
    with pytest.raises(ValueError, match="head"):
        ProbeTask("t", "label", False, head="deep")
    with pytest.raises(ValueError, match="monitor"):
        ProbeTask("t", "label", False, monitor="auc")
    with pytest.raises(ValueError, match="train_sampling"):
        ProbeTask("t", "label", False, train_sampling="grid")
    with pytest.raises(KeyError, match="presets"):
        get_task("gtzan")


def test_reference_presets_default_to_the_authors_training_protocol():
    reference = dict(
        batch_size=128, standardize=False, monitor="accuracy", patience=5, max_epochs=50,
        train_sampling="chunks", chunk_frames=392, crop_pool=None, dropout=0.0,
    )  # fmt: skip
    for name in ("mtat", "nsynth", "fma"):
        task = PRESETS[name]
        assert {k: getattr(task, k) for k in reference} == reference, name
    # They are the dataclass defaults: a task built by hand gets the reference too.
    plain = ProbeTask("t", "label", False)
    assert {k: getattr(plain, k) for k in reference} == reference
    # The offline corpus keeps the protocol its published demo results were made with.
    for name in ("notes_family", "corpus_genre", "corpus_instruments"):
        task = PRESETS[name]
        assert (task.train_sampling, task.standardize, task.batch_size, task.monitor) == (
            "windows", True, 64, "loss",
        )  # fmt: skip


# --------------------------------------------------------------------------- training crops


def test_chunk_spans_cut_4_second_chunks():
    # 29.1 s MTAT clip: 2908 frames, 7 chunks of 392 from frame 0, the tail left out.
    spans = chunk_spans(2908)
    np.testing.assert_array_equal(spans[:, 0], 392 * np.arange(7))
    assert (spans[:, 1] == 392).all()
    np.testing.assert_array_equal(chunk_spans(784), [[0, 392], [392, 392]])
    # One chunk or less: the whole clip (a 4 s NSynth note is 398 frames).
    np.testing.assert_array_equal(chunk_spans(398), [[0, 398]])
    np.testing.assert_array_equal(chunk_spans(783), [[0, 783]])
    np.testing.assert_array_equal(chunk_spans(208), [[0, 208]])
    with pytest.raises(ValueError):
        chunk_spans(97)


@pytest.fixture(scope="module")
def chunk_clips(tmp_path_factory) -> tuple[list[str], list[int]]:
    """Clips of 12 s, 4 s, 2.1 s and 9 s (1198, 398, 208, 898 frames) and their chunk counts."""
    folder = tmp_path_factory.mktemp("chunks")
    rng = np.random.default_rng(3)
    paths = []
    for i, seconds in enumerate((12.0, 4.0, 2.1, 9.0)):
        path = folder / f"clip{i}.wav"
        wav = 0.1 * rng.standard_normal(int(16000 * seconds))
        write_audio(path, wav.astype(np.float32), 16000)
        paths.append(str(path))
    return paths, [3, 1, 1, 2]


def test_every_epoch_crops_each_chunk_once_at_a_fresh_offset(chunk_clips, tiny_encoder, tmp_path):
    paths, per_clip = chunk_clips
    fe = MSCLFeatureExtractor()
    chunks = cached_training_chunks(paths, tmp_path, "train", fe)
    assert chunks.num_chunks == sum(per_clip) == 7
    np.testing.assert_array_equal(np.bincount(chunks.clip_index), per_clip)
    np.testing.assert_array_equal(chunks.lengths, [392, 392, 392, 398, 208, 392, 392])
    log_mels = [clip_log_mel(load_audio(p), fe).numpy() for p in paths]

    source = FreshCrops(tiny_encoder, chunks, batch_size=4)
    draws = []
    real_epoch = source.epoch
    source.epoch = lambda rng: draws.append(real_epoch(rng)) or draws[-1]
    task = ProbeTask("t", "label", False, max_epochs=6, batch_size=3)
    probe = train_probe(task, source, np.array([0, 1, 0, 1]), ["a", "b"])
    assert len(draws) == 6
    assert all(record["crops"] == 7 for record in probe.history)
    starts = np.r_[0, np.cumsum(per_clip)[:-1]]
    for draw in draws:
        np.testing.assert_array_equal(np.sort(draw.rows), np.arange(7))  # each chunk once
        assert ((draw.offsets >= 0) & (draw.offsets <= chunks.lengths - 98)).all()
    offsets = np.stack([draw.offsets for draw in draws])
    assert all((offsets[i] != offsets[j]).any() for i in range(6) for j in range(i))
    assert (offsets.std(axis=0) > 0).all()  # every chunk's offset moves across epochs
    # Chunk j of a clip starts at frame 392 j: the crop trained on is that window of the
    # clip's log-mel, and its feature is the frozen encoder's.
    draw = draws[-1]
    with torch.no_grad():
        for clip, first in enumerate(starts):
            for j in range(per_clip[clip]):
                start = 392 * j + int(draw.offsets[first + j])
                crop = torch.from_numpy(log_mels[clip][start : start + 98])[None]
                expected = tiny_encoder(crop).pooler_output[0].numpy()
                np.testing.assert_allclose(draw.features[first + j], expected, rtol=1e-4, atol=1e-6)
                assert draw.clips[first + j] == clip

    # The frames are cached (they do not depend on the encoder) and read back equal.
    again = cached_training_chunks(paths, tmp_path, "train", fe)
    np.testing.assert_array_equal(again.frames, chunks.frames)
    np.testing.assert_array_equal(again.spans, chunks.spans)
    # Windows precomputed on a grid are refused where the task asks for chunks.
    grid = WindowEmbeddings(np.zeros((4, 8), np.float32), np.arange(4), 4)
    with pytest.raises(ValueError, match="windows"):
        train_probe(task, grid, np.array([0, 1, 0, 1]), ["a", "b"])


def test_crop_pool_draws_one_of_its_crops_per_chunk(
    chunk_clips, tiny_encoder, tmp_path, monkeypatch
):
    from modeling_mscl.probing import crops

    paths, per_clip = chunk_clips
    builds = []
    real = crops.build_crop_pool
    monkeypatch.setattr(crops, "build_crop_pool", lambda *a, **k: builds.append(1) or real(*a, **k))
    pool = cached_crop_pool(tiny_encoder, paths, tmp_path, pool_size=3, seed=1)
    assert isinstance(pool, CropPool) and pool.embeds.shape[0] == 7 * 3
    assert (
        cached_crop_pool(tiny_encoder, paths, tmp_path, pool_size=3, seed=1).embeds.shape[0] == 21
    )
    assert len(builds) == 1  # the second call read the cache
    rng = np.random.default_rng(0)
    for _ in range(4):
        draw = pool.epoch(rng)
        assert sorted(draw.rows // 3) == list(range(7))  # one crop of every chunk
        chunk, k = draw.rows // 3, draw.rows % 3
        np.testing.assert_array_equal(draw.offsets[chunk], pool.offsets[chunk, k])
        np.testing.assert_array_equal(
            draw.clips[draw.rows], np.repeat(np.arange(4), per_clip)[chunk]
        )


# --------------------------------------------------------------------------- early stopping


def test_binary_accuracy_by_hand():
    logits = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 1.0]])
    tags = np.array([[1, 1, 0], [0, 0, 1]])
    # (sigmoid > 0.5) gives [[1, 0, 0], [0, 1, 1]]: 4 of 6 decisions right (a logit of 0
    # is sigmoid 0.5, not above the threshold).
    assert binary_accuracy(logits, tags) == pytest.approx(4 / 6)
    predicted = (1 / (1 + np.exp(-logits)) > 0.5).astype(int)
    assert binary_accuracy(logits, tags) == pytest.approx(
        accuracy_score(tags.ravel(), predicted.ravel())
    )
    assert window_accuracy(logits, tags, multi_label=True) == pytest.approx(4 / 6)
    # Single-label: top-1 over windows.
    assert window_accuracy(logits, np.array([0, 1]), multi_label=False) == 0.5
    # What early stopping reads for a multi-label task is that binary accuracy.
    from modeling_mscl.probing import heads

    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(3, 3))
    with torch.no_grad():
        head[1].weight.copy_(torch.eye(3))
        head[1].bias.zero_()
    val = WindowEmbeddings(logits.astype(np.float32), np.array([0, 1]), 2)
    task = ProbeTask("t", "tags", True)
    loss, accuracy = heads._validation_scores(
        head, val, torch.as_tensor(tags, dtype=torch.float32),
        lambda e, r: torch.from_numpy(np.asarray(e[r])), task,
    )  # fmt: skip
    assert accuracy == pytest.approx(4 / 6)
    assert loss == pytest.approx(
        nn.functional.binary_cross_entropy_with_logits(
            torch.as_tensor(logits), torch.as_tensor(tags, dtype=torch.float64)
        ).item(), rel=1e-5,
    )  # fmt: skip


def test_early_stopping_restores_the_best_validation_accuracy_epoch(monkeypatch):
    from modeling_mscl.probing import heads

    # The loss falls every epoch, the accuracy peaks at epoch 2 (epoch 4 only ties it).
    accuracies = [0.50, 0.80, 0.70, 0.80, 0.60, 0.75, 0.79, 0.1, 0.1, 0.1]
    states = []

    def scripted(head, *args, **kwargs):
        states.append({k: v.clone() for k, v in head.state_dict().items()})
        epoch = len(states)
        return 1.0 / epoch, accuracies[epoch - 1]

    monkeypatch.setattr(heads, "_validation_scores", scripted)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    train = _clusters(40, y, rng.standard_normal((2, 8)), 1)
    val = _clusters(10, y[:10], rng.standard_normal((2, 8)), 2)
    task = ProbeTask("t", "label", False, max_epochs=10, batch_size=8, learning_rate=1e-2,
                     train_sampling="windows", crops_per_clip=None)  # fmt: skip
    probe = train_probe(task, train, y, ["a", "b"], val, y[:10])
    assert probe.best_epoch == 2
    assert len(probe.history) == 2 + task.patience  # epochs 3-7 do not beat 0.80
    assert [r["val_accuracy"] for r in probe.history] == accuracies[:7]
    final = probe.head.state_dict()
    assert all(torch.equal(final[k], v) for k, v in states[1].items())  # epoch 2's weights
    assert not all(torch.equal(final[k], v) for k, v in states[-1].items())

    # On the loss, the best epoch is the last one and every epoch runs.
    states.clear()
    probe = train_probe(
        dataclasses.replace(task, monitor="loss"), train, y, ["a", "b"], val, y[:10]
    )
    assert probe.best_epoch == len(probe.history) == 10
    assert all(torch.equal(probe.head.state_dict()[k], v) for k, v in states[-1].items())


# --------------------------------------------------------------------------- embeddings# --------------------------------------------------------------------------- embeddings


def test_window_features_match_the_feature_extractor():
    fe = MSCLFeatureExtractor()
    wav = torch.randn(16000 * 2)
    windows = fe(wav, sampling_rate=16000, return_windows=True, return_tensors="pt")
    torch.testing.assert_close(window_features(wav, fe), windows["input_features"])
    # 198 frames: windows start at 0 and 98, or at 0, 49 and 98 with a half-window hop.
    assert window_features(wav, fe, hop_frames=49).shape[0] == 3
    assert window_features(wav[:4000], fe).shape == (1, 98, 64)  # padded to one window
    long = torch.randn(16000 * 9)  # 898 frames, 9 windows: keep 3 spread over the clip
    np.testing.assert_array_equal(spread_indices(9, 3), [0, 4, 8])
    torch.testing.assert_close(
        window_features(long, fe, max_windows=3), window_features(long, fe)[[0, 4, 8]]
    )


def test_embedding_cache_skips_recomputation(tmp_path, audio_corpus, tiny_encoder, monkeypatch):
    from modeling_mscl.probing import embeddings

    paths = audio_corpus["test"]["audio"][:3]
    calls = []
    real = embeddings.extract_window_embeddings

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(embeddings, "extract_window_embeddings", counting)
    first = cached_window_embeddings(tiny_encoder, paths, tmp_path, "test")
    second = cached_window_embeddings(tiny_encoder, paths, tmp_path, "test")
    assert len(calls) == 1
    np.testing.assert_array_equal(first.embeds, second.embeds)
    np.testing.assert_array_equal(second.clip_index, [0, 0, 1, 1, 2, 2])
    assert not list(tmp_path.rglob("*.part"))
    # Other weights or another hop: another cache entry.
    other = MSCLModel(tiny_config()).eval()
    cached_window_embeddings(other, paths, tmp_path, "test")
    cached_window_embeddings(tiny_encoder, paths, tmp_path, "test", hop_frames=49)
    assert len(calls) == 3
    # The same weights reloaded from a folder (other bookkeeping in the config): a hit.
    tiny_encoder.save_pretrained(tmp_path / "saved")
    cached_window_embeddings(MSCLModel.from_pretrained(tmp_path / "saved"), paths, tmp_path, "test")
    assert len(calls) == 3


# --------------------------------------------------------------------------- protocol + export


@pytest.fixture(scope="module")
def genre_result(audio_corpus, tiny_encoder, cache_dir):
    task = get_task("corpus_genre", hidden_size=16, learning_rate=1e-2, max_epochs=15)
    return run_probe(tiny_encoder, task, audio_corpus, cache_dir=cache_dir)


def test_degenerate_splits_are_refused_with_the_reason(audio_corpus, tiny_encoder, caplog):
    genre = get_task("corpus_genre", max_epochs=1)
    one_class = audio_corpus["train"].filter(lambda row: row["genre"] == 0)
    with pytest.raises(
        ValueError, match=r"training split holds 4 clips of 1 class\(es\) \(\['low'\]\)"
    ):
        run_probe(tiny_encoder, genre, DatasetDict({**audio_corpus, "train": one_class}))
    one_val = audio_corpus["validation"].filter(lambda row: row["genre"] == 2)
    with pytest.raises(ValueError, match="validation split holds 2 clips of 1 class"):
        run_probe(tiny_encoder, genre, DatasetDict({**audio_corpus, "validation": one_val}))

    tags = get_task("corpus_instruments")
    names = INSTRUMENTS
    train = np.ones((6, 4)) * np.array([1, 1, 0, 1])  # "drums" never positive in training
    train[0] = 0
    test = np.zeros((5, 4))
    test[:2, 0] = 1  # only "bass" has both positive and negative test clips
    with pytest.raises(ValueError, match="only 1 of the 3 tags with training positives"):
        check_probe_splits(tags, names, train, train, test)
    test[:3, 1] = 1  # "keys" too: 2 of 4, enough for a headline, with a warning
    with caplog.at_level("WARNING"):
        check_probe_splits(tags, names, train, train, test)
    assert "average 2 of 4 tags" in caplog.text and "['drums', 'voice']" in caplog.text
    assert "without a positive training clip: ['drums']" in caplog.text


def test_run_probe_reports_metrics_and_history(genre_result):
    data = genre_result.to_dict()
    assert set(data["metrics"]) == {"accuracy"}
    assert 0.0 <= data["metrics"]["accuracy"] <= 1.0
    assert data["num_clips"] == {"train": 12, "validation": 6, "test": 6}
    assert set(data["per_class"]["accuracy"]) == set(GENRES)
    assert 1 <= data["best_epoch"] <= data["epochs"] <= 15
    json.dumps(data)  # serialisable
    table = results_table({"tiny": {"corpus_genre": data}})
    assert "corpus_genre accuracy" in table.splitlines()[0]


def test_run_probe_trains_on_fresh_chunk_crops_or_a_pool(audio_corpus, tiny_encoder, tmp_path):
    # The reference protocol on the tiny corpus: 2.1 s clips are one chunk each, so an
    # epoch is one crop of each of the 12 training clips.
    task = get_task("fma", label_column="genre", hidden_size=16, max_epochs=3, test_windows=None)
    result = run_probe(tiny_encoder, task, audio_corpus, cache_dir=tmp_path)
    data = result.to_dict()
    assert data["task_config"]["train_sampling"] == "chunks"
    assert [r["crops"] for r in data["history"]] == [12] * data["epochs"]
    assert all("val_accuracy" in r for r in data["history"])
    assert list((tmp_path / "logmel").glob("train-*.frames.f32"))
    # No validation split: a seeded 10 % of the training clips is held out, and at least
    # one clip of every class (3 here), so that validation accuracy means something.
    no_val = DatasetDict({"train": audio_corpus["train"], "test": audio_corpus["test"]})
    held = run_probe(tiny_encoder, task, no_val, cache_dir=tmp_path)
    assert held.num_clips == {"train": 9, "validation": 3, "test": 6}
    assert held.probe.history[0]["crops"] == 9
    pooled = run_probe(
        tiny_encoder, dataclasses.replace(task, crop_pool=2), audio_corpus, cache_dir=tmp_path
    )
    assert pooled.probe.history[0]["crops"] == 12
    assert list(tmp_path.rglob("train-pool-*.embeds.npy"))


def test_exported_head_runs_in_the_pipeline(genre_result, tiny_encoder, tmp_path):
    from transformers import pipeline

    export_probe(tiny_encoder, genre_result, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {"0": "low", "1": "mid", "2": "high"}
    assert config["problem_type"] == "single_label_classification"
    assert config["classifier_head"] == "linear" and config["freeze_encoder"]
    # What the model card reads: the task, the head and the test metrics.
    card_data = json.loads((tmp_path / "probe_results.json").read_text())
    assert (card_data["task"], card_data["head"], card_data["split"]) == (
        "corpus_genre", "linear", "test",
    )  # fmt: skip
    assert card_data["metrics"] == genre_result.metrics
    assert json.loads((tmp_path / "probe_args.json").read_text())["label_column"] == "genre"

    classify = pipeline(
        "audio-classification", model=str(tmp_path), trust_remote_code=True, device="cpu"
    )
    wav = 0.3 * np.sin(2 * np.pi * 150 * np.arange(15920) / 16000).astype(np.float32)
    output = classify({"raw": wav, "sampling_rate": 16000}, top_k=3)
    # One window: the pipeline's softmax equals the probe's on the raw window feature.
    with torch.no_grad():
        feature = tiny_encoder(window_features(wav, MSCLFeatureExtractor())).pooler_output
    probs = torch.softmax(torch.as_tensor(genre_result.probe.window_logits(feature.numpy())), -1)
    expected = dict(zip(GENRES, probs[0].tolist(), strict=True))
    assert {r["label"]: pytest.approx(expected[r["label"]], abs=1e-4) for r in output} == {
        r["label"]: r["score"] for r in output
    }


def test_exported_multi_label_head_uses_sigmoid(audio_corpus, tiny_encoder, cache_dir, tmp_path):
    from transformers import pipeline

    task = get_task("corpus_instruments", max_epochs=3, head="mlp", hidden_size=8)
    result = run_probe(tiny_encoder, task, audio_corpus, cache_dir=cache_dir)
    assert set(result.metrics) == {"roc_auc", "pr_auc"}
    assert set(result.per_class["pr_auc"]) == set(INSTRUMENTS)
    model = export_probe(tiny_encoder, result, tmp_path)
    assert model.config.problem_type == "multi_label_classification"
    assert isinstance(model.classifier[0], nn.Linear)  # MLP layout: Linear, ReLU, Dropout, Linear
    output = pipeline(
        "audio-classification", model=str(tmp_path), trust_remote_code=True, device="cpu"
    )(
        {"raw": np.random.default_rng(0).standard_normal(15920).astype(np.float32),
         "sampling_rate": 16000}, top_k=4,
    )  # fmt: skip
    assert {r["label"] for r in output} == set(INSTRUMENTS)
    assert sum(r["score"] for r in output) != pytest.approx(1.0)  # independent sigmoids


# --------------------------------------------------------------------------- convergence


def test_probe_hook_returns_metrics_and_leaves_the_run_alone(audio_corpus, tmp_path):
    model = MSCLModel(tiny_config()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook = make_probe_hook(
        ["corpus_genre", "corpus_instruments"], audio_corpus, max_clips=6, max_windows=1,
        epochs=2, log_path=tmp_path / "probes.jsonl",
    )  # fmt: skip
    rng_state = torch.random.get_rng_state()
    metrics = hook(model, 10)
    assert set(metrics) == {
        "corpus_genre/accuracy",
        "corpus_instruments/roc_auc",
        "corpus_instruments/pr_auc",
    }
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert model.training
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert read_probe_log(tmp_path) == [{"step": 10, **metrics}]


def test_recalibrated_batch_norm_holds_the_statistics_training_mode_uses():
    torch.manual_seed(0)
    model = MSCLModel(tiny_config(drop_connect_rate=0.0)).train()
    windows = torch.randn(16, 98, 64) * 2.0 - 5.0
    inputs = {}  # what every batch norm sees in training mode

    def keep(name):
        def hook(module, args, output):  # returns None: the output is left alone
            inputs.setdefault(name, args[0].clone())

        return hook

    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    hooks = [m.register_forward_hook(keep(n)) for n, m in norms.items()]
    with torch.no_grad():
        trained = model(windows).pooler_output
        stale = model.eval()(windows).pooler_output  # running statistics still (0, 1)-ish
    for hook in hooks:
        hook.remove()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = recalibrate_batch_norm(model, windows, batch_size=16)  # one batch: its statistics
    assert copy is not model and not copy.training and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    copied = dict(copy.named_modules())
    for name, x in inputs.items():
        norm = copied[name]
        torch.testing.assert_close(norm.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(norm.running_var, x.var((0, 2, 3)), rtol=1e-4, atol=1e-8)
        assert norm.momentum == model.config.batch_norm_momentum
    with torch.no_grad():
        recalibrated = copy(windows).pooler_output
    # Eval mode now computes nearly what training did (running variances are unbiased,
    # batch ones biased), far closer than with the stale statistics.
    assert (recalibrated - trained).norm() < 0.2 * (stale - trained).norm()


def test_probe_hook_can_recalibrate_a_copy(audio_corpus):
    model = MSCLModel(tiny_config()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = dict(max_clips=6, max_windows=1, epochs=2)
    plain = make_probe_hook(["corpus_genre"], audio_corpus, **kwargs)
    recal = make_probe_hook(["corpus_genre"], audio_corpus, recalibrate_bn=True, **kwargs)
    assert recal.calibration_windows().shape == (6, 98, 64)  # one window of 6 train clips
    assert 0.0 <= recal(model, 0)["corpus_genre/accuracy"] <= 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert plain(model, 0).keys() == recal(model, 0).keys()


def test_probe_log_round_trip_skips_broken_lines(tmp_path):
    log = tmp_path / "probes.jsonl"
    append_probe_log(log, 20, {"a/accuracy": 0.5})
    append_probe_log(log, 10, {"a/accuracy": 0.25})
    append_probe_log(log, 20, {"a/accuracy": 0.75})  # resumed run: the last record wins
    with open(log, "a") as handle:
        handle.write('{"step": 30, "a/acc')  # killed mid-write
    assert read_probe_log(log) == [
        {"step": 10, "a/accuracy": 0.25},
        {"step": 20, "a/accuracy": 0.75},
    ]


def test_convergence_plot_is_written(tmp_path):
    import matplotlib.image

    for name, rate in (("cola", 0.5), ("mscl", 1.0)):
        for step in range(0, 1001, 100):
            value = 1 - 0.7 * math.exp(-rate * step / 300)
            append_probe_log(
                tmp_path / name / "probes.jsonl", step,
                {"corpus_genre/accuracy": value, "notes_family/accuracy": value / 2},
            )  # fmt: skip
    out = tmp_path / "plots" / "convergence.png"
    from modeling_mscl.commands import plot_convergence as plot

    assert plot.main([f"COLA={tmp_path / 'cola'}", str(tmp_path / "mscl"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match="no probe metrics"):
        plot.plot_convergence({"empty": [{"step": 0}]}, tmp_path / "x.png")


# --------------------------------------------------------------------------- script


def test_probe_command_protocol_flags_override_the_preset():
    from modeling_mscl.commands import probe

    base = ["--random-init", "--data", "x", "--task", "mtat"]
    assert probe.protocol_overrides(probe.parse_args(base)) == {}
    args = probe.parse_args(
        [*base, "--standardize", "--monitor", "loss", "--head-batch-size", "64",
         "--train-sampling", "windows"]
    )  # fmt: skip
    overrides = probe.protocol_overrides(args)
    assert overrides == dict(standardize=True, monitor="loss", batch_size=64,
                             train_sampling="windows")  # fmt: skip
    assert get_task("mtat", **overrides).standardize
    args = probe.parse_args([*base, "--crop-pool", "8"])
    assert probe.protocol_overrides(args) == {"crop_pool": 8}
    assert probe.task_overrides(["monitor=loss", "crop_pool=4"]) == dict(
        monitor="loss", crop_pool=4
    )


def test_probe_command_writes_results_table_and_export(audio_corpus, cache_dir, tmp_path):
    from modeling_mscl.commands import probe

    data = tmp_path / "songs"
    audio_corpus.save_to_disk(str(data))
    config_dir = tmp_path / "config"
    tiny_config().save_pretrained(config_dir)
    args = [
        "--random-init", "--config", str(config_dir), "--data", str(data),
        "--task", "corpus_genre", "--task", "corpus_instruments",
        "--task-arg", "max_epochs=2", "--task-arg", "test_windows=none",
        "--output", str(tmp_path / "results.json"), "--markdown", str(tmp_path / "results.md"),
        "--export", str(tmp_path / "heads"), "--cache-dir", str(cache_dir),
        "--no-progress",
    ]  # fmt: skip
    assert probe.main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    genre, instruments = f"corpus_genre@{data}", f"corpus_instruments@{data}"
    assert set(saved["random"]) == {genre, instruments}  # filed under task and dataset
    assert saved["random"][genre]["epochs"] == 2
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith(f"| encoder | {genre} accuracy | {instruments} roc_auc")
    assert table[2].startswith("| random |")
    heads = json.loads((tmp_path / "heads" / "corpus_instruments" / "config.json").read_text())
    assert heads["id2label"]["3"] == "voice"


# ----------------------------------------------------------------------------- baselines


def test_log_mel_statistics_by_hand_and_as_a_probe_encoder(audio_corpus, cache_dir):
    from modeling_mscl.probing import LogMelStatistics, mean_over_seeds

    baseline = LogMelStatistics(64)
    x = torch.randn(3, 98, 64)
    features = baseline(x).pooler_output
    assert features.shape == (3, 192) and baseline.config.encoder_hidden_size == 192
    torch.testing.assert_close(features[:, :64], x.mean(1))
    torch.testing.assert_close(features[:, 64:128], x.std(1, unbiased=False))
    torch.testing.assert_close(features[:, 128:], x.amax(1))
    # A mask leaves padded frames out: the same as the unpadded window alone.
    padded = torch.cat([x[:1, :50], torch.full((1, 48, 64), 99.0)], dim=1)
    mask = torch.cat([torch.ones(1, 50), torch.zeros(1, 48)], dim=1)
    torch.testing.assert_close(
        baseline(padded, attention_mask=mask).pooler_output, baseline(x[:1, :50]).pooler_output
    )
    with pytest.raises(ValueError, match="batch, frames, 64"):
        baseline(torch.randn(2, 98, 40))

    task = get_task("corpus_genre", hidden_size=16, learning_rate=1e-2, max_epochs=5)
    runs = [
        run_probe(baseline, task, audio_corpus, cache_dir=cache_dir, seed=seed).to_dict()
        for seed in (0, 1)
    ]
    merged = mean_over_seeds(runs)
    accuracies = [r["metrics"]["accuracy"] for r in runs]
    assert merged["num_seeds"] == 2
    assert merged["metrics"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert merged["metrics_std"]["accuracy"] == pytest.approx(np.std(accuracies))
    table = results_table({"log-mel statistics": {"corpus_genre": merged}})
    assert "±" in table.splitlines()[-1]
