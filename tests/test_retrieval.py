"""Stem retrieval (modeling_mscl.probing.retrieval): protocol, ranking, models, the command."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from modeling_mscl import MSCLFeatureExtractor, MSCLForPreTraining, MSCLModel
from modeling_mscl.chunk_set import ChunkStore, save_chunk_set
from modeling_mscl.pairs import synthetic_chunk_dataset
from modeling_mscl.probing.retrieval import (
    load_pretraining_model,
    random_init_model,
    stem_retrieval,
)
from modeling_mscl.probing.retrieval_draws import calibration_windows, retrieval_plan
from modeling_mscl.probing.retrieval_scores import rank_own_candidates, retrieval_table
from modeling_mscl.stems import SOURCES

from .conftest import tiny_config

CHUNK_FRAMES = 196
BINS = 64


def track_dataset(present: np.ndarray, chunks_per_track: int = 3, absent_value: float = -50.0):
    """Chunks whose mixture and stems are the constant ``track index`` (time-varying noise-free),
    so a crop tells its track; a stem absent in a chunk holds ``absent_value`` instead.

    ``present``: `(tracks, chunks_per_track, 4)` bool.
    """
    from datasets import Dataset

    from modeling_mscl.chunk_set import chunk_features

    tracks = present.shape[0]
    n = tracks * chunks_per_track
    value = np.repeat(np.arange(tracks, dtype=np.float32), chunks_per_track)[:, None, None]
    flat_present = present.reshape(n, len(SOURCES))
    columns = {"mixture": np.broadcast_to(value, (n, CHUNK_FRAMES, BINS)).astype(np.float16)}
    for k, name in enumerate(SOURCES):
        spec = np.where(flat_present[:, k, None, None], value, absent_value)
        columns[name] = np.broadcast_to(spec, (n, CHUNK_FRAMES, BINS)).astype(np.float16)
    features = chunk_features(CHUNK_FRAMES, BINS)
    data = {
        # Ids in reverse order of the values: the protocol must not rely on row order.
        "track_id": [f"t{tracks - 1 - i // chunks_per_track:03d}" for i in range(n)],
        "chunk_index": (np.arange(n) % chunks_per_track).astype(np.int32),
        **columns,
        "present": flat_present,
    }
    return Dataset.from_dict(data, features=features)


class OneHotEncoder(nn.Module):
    """Embeds a constant crop of value v as the one-hot vector of round(v) (zero if v < 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device and dtype

    def forward(self, features: torch.Tensor) -> SimpleNamespace:
        index = features.float().mean(dim=(1, 2)).round().long()
        embeds = torch.zeros(len(features), self.dim, device=features.device)
        ok = index >= 0
        embeds[ok.nonzero()[:, 0], index[ok]] = 1.0
        return SimpleNamespace(audio_embeds=embeds)


class FakeModel(nn.Module):
    """A stand-in MSCLForPreTraining: one-hot track embeddings, similarity u^T (sign I) v."""

    def __init__(self, dim: int, sign: float = 1.0, constant: bool = False) -> None:
        super().__init__()
        self.mscl = OneHotEncoder(dim)
        self.sign, self.constant = sign, constant

    def similarity(self, anchors: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        if self.constant:
            return torch.zeros(len(anchors), len(columns))
        return self.sign * anchors @ columns.T


def all_present(tracks: int, chunks: int = 3) -> np.ndarray:
    return np.ones((tracks, chunks, len(SOURCES)), dtype=bool)


# ------------------------------------------------------------------------------ ranking


def test_rank_own_candidates_counts_ties_as_random_tie_break():
    logits = torch.tensor([[3.0, 1.0, 2.0], [5.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    ranks, hits = rank_own_candidates(logits, ks=(1, 2))
    # row 0: best; row 1: one higher, one tie -> 2.5; row 2: all tied -> (3 + 1) / 2
    np.testing.assert_allclose(ranks, [1.0, 2.5, 2.0])
    np.testing.assert_allclose(hits[0], [1.0, 0.0, 1 / 3])
    np.testing.assert_allclose(hits[1], [1.0, 0.5, 2 / 3])
    with pytest.raises(ValueError, match="finite"):
        rank_own_candidates(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), ks=(1,))


# ---------------------------------------------------------------------------- protocol


def test_identity_model_retrieves_every_stem_first():
    tracks = 12
    store = ChunkStore(track_dataset(all_present(tracks)))
    result = stem_retrieval(FakeModel(tracks), store, ks=(1, 5), draws=3, seed=0)
    for source in SOURCES:
        r = result.sources[source]
        assert r.num_queries == r.num_candidates == tracks
        assert r.recall == {1: 1.0, 5: 1.0}
        assert r.mean_rank == 1.0 and r.median_rank == 1.0
        assert r.chance_recall[1] == pytest.approx(1 / tracks)
        assert r.chance_mean_rank == pytest.approx((tracks + 1) / 2)
        assert len(r.draws) == 3


def test_adversarial_model_ranks_own_stem_last_and_constant_model_at_chance():
    tracks = 12
    store = ChunkStore(track_dataset(all_present(tracks)))
    worst = stem_retrieval(FakeModel(tracks, sign=-1.0), store, ks=(1, 5), draws=2)
    for r in worst.sources.values():
        assert r.mean_rank == tracks
        assert r.recall == {1: 0.0, 5: 0.0}
    flat = stem_retrieval(FakeModel(tracks, constant=True), store, ks=(1, 5), draws=1)
    for r in flat.sources.values():
        assert r.mean_rank == pytest.approx((tracks + 1) / 2)
        assert r.recall[1] == pytest.approx(1 / tracks)
        assert r.recall[5] == pytest.approx(5 / tracks)


def test_absent_tracks_are_skipped_and_absent_chunks_never_drawn():
    tracks, chunks = 10, 3
    present = all_present(tracks, chunks)
    present[[1, 4, 7], :, 0] = False  # vocals never in three tracks
    present[:, :2, 1] = False  # drums only in the last chunk of every track
    present[2, :, 2] = False  # bass never in one track
    store = ChunkStore(track_dataset(present, chunks))
    # An absent stem embeds as zero: drawing one would break the perfect score below.
    result = stem_retrieval(FakeModel(tracks), store, ks=(1,), draws=4, seed=3)
    expected_skips = {"vocals": 3, "drums": 0, "bass": 1, "other": 0}
    for source, skips in expected_skips.items():
        r = result.sources[source]
        assert r.skipped_tracks == skips
        assert r.num_queries == r.num_candidates == tracks - skips
        assert r.recall[1] == 1.0 and r.mean_rank == 1.0

    ids = store.track_ids()
    plan = retrieval_plan(store, "drums", sorted(set(ids)), seed=0, draw=0)
    assert store.present[plan.rows, 1].all()
    assert list(plan.track_ids) == sorted(set(ids))
    assert list(ids[plan.rows]) == list(plan.track_ids)  # one chunk of its own track each
    assert plan.query_offsets.max() <= CHUNK_FRAMES - 98
    vocals = retrieval_plan(store, "vocals", sorted(set(ids)), seed=0, draw=0)
    assert len(vocals.skipped) == 3 and not set(vocals.skipped) & set(vocals.track_ids)


def test_source_absent_everywhere_gives_empty_row():
    present = all_present(4)
    present[..., 3] = False
    result = stem_retrieval(FakeModel(4), ChunkStore(track_dataset(present)), ks=(1,), draws=1)
    other = result.sources["other"]
    assert other.num_queries == 0 and other.skipped_tracks == 4
    assert np.isnan(other.mean_rank)
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["sources"]["other"]["mean_rank"] is None
    assert "| chance | vocals |" in retrieval_table([result])


def test_plan_is_seeded_and_track_subset_respected():
    store = ChunkStore(synthetic_chunk_dataset(num_tracks=6, chunks_per_track=4, seed=1))
    tracks = sorted(set(store.track_ids()))
    a = retrieval_plan(store, "bass", tracks, seed=5, draw=1)
    b = retrieval_plan(store, "bass", tracks, seed=5, draw=1)
    c = retrieval_plan(store, "bass", tracks, seed=5, draw=2)
    for name in ("rows", "query_offsets", "positive_offsets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.query_offsets, c.query_offsets)
    # crops at independent offsets, not the same window
    assert not np.array_equal(a.query_offsets, a.positive_offsets)
    result = stem_retrieval(FakeModel(6, constant=True), store, tracks=tracks[:3], ks=(1,), draws=1)
    assert result.protocol["num_tracks"] == 3
    assert all(r.num_queries + r.skipped_tracks == 3 for r in result.sources.values())
    with pytest.raises(ValueError, match="not in the data"):
        stem_retrieval(FakeModel(6), store, tracks=["nope"], draws=1)


# ------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def synthetic():
    from datasets import DatasetDict

    return DatasetDict(
        {
            "train": synthetic_chunk_dataset(num_tracks=8, chunks_per_track=2, seed=0),
            "test": synthetic_chunk_dataset(num_tracks=12, chunks_per_track=2, seed=1),
        }
    )


def test_random_init_model_near_chance_and_deterministic(synthetic):
    model = random_init_model(tiny_config(), seed=0)
    kwargs = dict(split="test", ks=(1, 5), draws=2, seed=0, batch_size=32)
    first = stem_retrieval(model, synthetic, **kwargs)
    again = stem_retrieval(model, synthetic, **kwargs)
    assert first.to_dict() == again.to_dict()  # other seeds: see test_plan_is_seeded...
    recall1 = [r.recall[1] for r in first.sources.values() if r.num_queries]
    chance = [r.chance_recall[1] for r in first.sources.values() if r.num_queries]
    assert len(recall1) == 4
    # 4 sources x 2 draws x ~9-12 queries: far above 1/n would mean a leak, not a model.
    assert np.mean(recall1) < 0.35, (recall1, chance)
    ranks = [r.mean_rank / r.chance_mean_rank for r in first.sources.values()]
    assert 0.5 < np.mean(ranks) < 1.5
    # Same config and seed, same weights; the global RNG is not consumed.
    state = torch.random.get_rng_state()
    twin = random_init_model(model, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_recalibrated_regime_leaves_model_untouched(synthetic):
    model = random_init_model(tiny_config(), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    running = stem_retrieval(model, synthetic, split="test", ks=(1,), draws=1)
    recal = stem_retrieval(
        model, synthetic, split="test", ks=(1,), draws=1, bn_regime="recalibrated",
        calibration_batches=2, calibration_pairs=8,
    )  # fmt: skip
    assert recal.protocol["bn_regime"] == "recalibrated"
    assert recal.protocol["calibration"]["chunks"] == len(synthetic["train"])
    assert recal.to_dict()["sources"] != running.to_dict()["sources"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
    with pytest.raises(ValueError, match="training counterpart"):
        stem_retrieval(model, ChunkStore(synthetic["test"]), bn_regime="recalibrated", draws=1)
    with pytest.raises(ValueError, match="bn_regime"):
        stem_retrieval(model, synthetic, split="test", bn_regime="batch")


def test_calibration_windows_are_training_like_batches():
    present = all_present(5)
    present[..., 2] = False  # bass nowhere: left out of the rotation
    store = ChunkStore(track_dataset(present))
    windows = calibration_windows(store, batches=3, pairs=4, seed=0)
    assert windows.shape == (3 * 8, 98, BINS)
    assert windows.dtype == torch.float32
    # each batch: 4 mixture crops, then the same chunks' stems (equal values here)
    for b in range(3):
        block = windows[8 * b : 8 * (b + 1)].mean(dim=(1, 2))
        torch.testing.assert_close(block[:4], block[4:])


def test_holdout_fraction_matches_training_split():
    from modeling_mscl.pairs import holdout_mask

    dataset = synthetic_chunk_dataset(num_tracks=20, chunks_per_track=1, seed=2)
    held = holdout_mask(dataset["track_id"], 0.3)
    result = stem_retrieval(FakeModel(20, constant=True), dataset, holdout_fraction=0.3, draws=1)
    assert result.protocol["num_tracks"] == len(set(np.asarray(dataset["track_id"])[held]))


def test_load_pretraining_model_refuses_encoder_folder(tmp_path):
    model = random_init_model(tiny_config(), seed=0)
    model.save_pretrained(tmp_path / "run" / "pretraining")
    model.mscl.save_pretrained(tmp_path / "run" / "encoder")
    loaded = load_pretraining_model(tmp_path / "run")  # the run folder finds pretraining/
    torch.testing.assert_close(loaded.similarity.weight, model.similarity.weight)
    with pytest.raises(ValueError, match="pretraining/"):
        load_pretraining_model(tmp_path / "run" / "encoder")
    assert isinstance(loaded.mscl, MSCLModel) and isinstance(loaded, MSCLForPreTraining)


# ----------------------------------------------------------------------------- command


def test_command_writes_json_and_markdown(tmp_path, synthetic):
    from modeling_mscl.commands import stem_retrieval

    save_chunk_set(synthetic, tmp_path / "chunks", MSCLFeatureExtractor())
    random_init_model(tiny_config(), seed=1).save_pretrained(tmp_path / "run" / "pretraining")
    started = time.perf_counter()
    status = stem_retrieval.main(
        [
            "--model", f"mine={tmp_path / 'run'}", "--random-init", "--data", str(tmp_path / "chunks"),
            "--split", "test", "--draws", "2", "--k", "1", "5", "--seed", "0",
            "--output", str(tmp_path / "out.json"), "--markdown", str(tmp_path / "out.md"),
        ]
    )  # fmt: skip
    assert time.perf_counter() - started < 30
    assert status == 0
    payload = json.loads((tmp_path / "out.json").read_text())
    assert set(payload["results"]) == {"mine", "random init"}
    assert payload["results"]["mine"]["sources"]["vocals"]["num_candidates"] > 0
    assert payload["results"]["mine"]["protocol"]["ks"] == [1, 5]
    table = (tmp_path / "out.md").read_text()
    assert "| mine | vocals |" in table and "| random init | bass |" in table
