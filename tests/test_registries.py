"""Objectives are registered, not branched on: a toy objective, added in one place (here),
trains through the normal path, and an unknown name gets one error that lists the
registered ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modeling_mscl import objectives
from modeling_mscl.hub import render_model_card
from modeling_mscl.objectives import Objective, PositiveDraw, get_objective, register_objective
from modeling_mscl.pairs import SourceBatchSampler
from modeling_mscl.stems import SOURCES
from tests import test_training
from tests.test_training import pretrain, tiny_argv

# The training tests' fixtures, reused: the tiny chunk set and the one-thread,
# fresh-Accelerate setup around each in-process run.
data_dir = test_training.data_dir
one_thread_and_fresh_accelerate = test_training.one_thread_and_fresh_accelerate

BASS = SOURCES.index("bass")


def _bass_positives(sampler, rng):
    """The toy objective's pairs: a mixture crop and the bass of the same chunk, rows from
    all chunks (absent bass goes to the null column)."""
    rows = sampler.choose_rows(rng, len(sampler.present))
    return PositiveDraw(BASS, False, rows, sampler.present[rows, BASS])


def _bass_card(args):
    return "toy bass contrast", "A crop of the mixture must pick its own bass."


@pytest.fixture
def toy_objective(monkeypatch):
    """Register the toy objective for one test; the registry is restored afterwards."""
    monkeypatch.setattr(objectives, "_REGISTRY", dict(objectives._REGISTRY))
    return register_objective(
        Objective("toy-bass", draw=_bass_positives, card=_bass_card, presence_mask=True)
    )


def test_an_unknown_objective_gets_one_error_listing_the_registered(data_dir, tmp_path):
    from modeling_mscl.training_args import parse_args

    listing = r"objective='byol' is invalid: expected one of \('cola', 'mscl', 's3t'\)"
    with pytest.raises(ValueError, match=listing):
        get_objective("byol")
    with pytest.raises(ValueError, match=listing):
        SourceBatchSampler(np.ones((8, len(SOURCES)), bool), 4, objective="byol")
    with pytest.raises(ValueError, match=listing):
        parse_args(tiny_argv(data_dir, tmp_path, "--objective", "byol"))
    with pytest.raises(ValueError, match="already registered"):
        register_objective(get_objective("cola"))


def test_a_toy_objective_trains_one_step_through_the_normal_path(toy_objective, data_dir, tmp_path):
    sampler = SourceBatchSampler(np.ones((8, len(SOURCES)), bool), 4, objective="toy-bass")
    plan = sampler.plan(0)
    assert plan.source == BASS and plan.column == "bass" and sampler.sources == ()

    argv = tiny_argv(data_dir, tmp_path / "run", "--objective", "toy-bass", "--max_steps", "1")
    result = pretrain(argv)
    assert result.step == 1 and result.skipped_steps == 0
    # Bass positives only: the per-source loss is bass's, and validation ran on the toy.
    assert np.isfinite(result.metrics["train/loss"]) and "val/loss" in result.metrics
    assert "train/loss_bass" in result.metrics and "train/loss_drums" not in result.metrics
    saved = json.loads((tmp_path / "run" / "encoder" / "training_args.json").read_text())
    assert saved["objective"] == "toy-bass"
    card = render_model_card("encoder", result.encoder_dir)
    assert "toy bass contrast" in card and "must pick its own bass" in card
