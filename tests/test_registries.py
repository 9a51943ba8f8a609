"""Objectives and similarities are registered, not branched on: a toy objective and a toy
similarity, each defined in one place (here), train one step through the normal path; an
unknown name gets one error that lists the registered ones; a saved model with a
similarity the loading process has not registered is refused, and loads once it is. The
built-in similarities compute exactly the formulas the losses were written with."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modeling_mscl import MSCLForPreTraining, objectives, similarity_mscl
from modeling_mscl.hub import render_model_card
from modeling_mscl.losses import info_nce_loss, null_source_contrastive_loss
from modeling_mscl.objectives import Objective, PositiveDraw, get_objective, register_objective
from modeling_mscl.pairs import SourceBatchSampler
from modeling_mscl.similarity_mscl import SimilarityKind, get_similarity, register_similarity
from modeling_mscl.stems import SOURCES
from tests import test_training
from tests.conftest import tiny_config
from tests.test_training import ENV, REPO, pretrain, tiny_argv

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


def _scaled_dot_build(module, config):
    module.log_scale = nn.Parameter(torch.empty(()))


def _scaled_dot_reset(module):
    nn.init.constant_(module.log_scale, 0.5)


def _scaled_dot_forward(module, anchors, columns):
    return module.log_scale.exp() * (anchors @ columns.T)


# The toys, each defined once: a registration is all they need.
TOY_OBJECTIVE = Objective("toy-bass", draw=_bass_positives, card=_bass_card, presence_mask=True)
TOY_SIMILARITY = SimilarityKind(
    "scaled-dot",
    build=_scaled_dot_build,
    forward=_scaled_dot_forward,
    describe=lambda config: "a dot product times a learned scale",
    reset_parameters=_scaled_dot_reset,
)


@pytest.fixture
def toys(monkeypatch):
    """Register the toys for one test; the registries are restored afterwards."""
    monkeypatch.setattr(objectives, "_REGISTRY", dict(objectives._REGISTRY))
    monkeypatch.setattr(similarity_mscl, "_REGISTRY", dict(similarity_mscl._REGISTRY))
    register_objective(TOY_OBJECTIVE)
    register_similarity(TOY_SIMILARITY)


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


def test_toy_objective_and_similarity_train_one_step_through_the_normal_path(
    toys, data_dir, tmp_path
):
    # The toy similarity's own initialisation runs when a model is built.
    assert MSCLForPreTraining(tiny_config(similarity="scaled-dot")).similarity.log_scale == 0.5
    sampler = SourceBatchSampler(np.ones((8, len(SOURCES)), bool), 4, objective="toy-bass")
    plan = sampler.plan(0)
    assert plan.source == BASS and plan.column == "bass" and sampler.sources == ()

    argv = ["--objective", "toy-bass", "--similarity", "scaled-dot", "--max_steps", "1"]
    result = pretrain(tiny_argv(data_dir, tmp_path / "run", *argv))
    assert result.step == 1 and result.skipped_steps == 0
    # Bass positives only: the per-source loss is bass's, and validation ran on the toy.
    assert np.isfinite(result.metrics["train/loss"]) and "val/loss" in result.metrics
    assert "train/loss_bass" in result.metrics and "train/loss_drums" not in result.metrics
    saved = json.loads((tmp_path / "run" / "encoder" / "training_args.json").read_text())
    assert saved["objective"] == "toy-bass" and saved["similarity"] == "scaled-dot"
    card = render_model_card("encoder", result.encoder_dir)
    assert "toy bass contrast" in card and "must pick its own bass" in card
    assert "similarity of two embeddings was a dot product times a learned scale" in card
    # The toy's parameter was initialised by its own reset and trained by the step.
    trained = MSCLForPreTraining.from_pretrained(result.pretraining_dir)
    assert trained.similarity.kind == "scaled-dot" and trained.similarity.weight is None
    assert trained.similarity.log_scale.item() != 0.5

    # A fresh process has only the built-in similarities: it refuses the saved model with
    # the error that lists them, and loads it once the toy is registered there too.
    script = textwrap.dedent(
        f"""
        from modeling_mscl import MSCLForPreTraining
        try:
            MSCLForPreTraining.from_pretrained({str(result.pretraining_dir)!r})
        except ValueError as err:
            print("refused:", err)
        from modeling_mscl.similarity_mscl import register_similarity
        from tests.test_registries import TOY_SIMILARITY
        register_similarity(TOY_SIMILARITY)
        model = MSCLForPreTraining.from_pretrained({str(result.pretraining_dir)!r})
        print("loaded:", model.similarity.log_scale.item())
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    refused, loaded = run.stdout.strip().splitlines()[-2:]
    assert "similarity='scaled-dot' is invalid: must be one of ['bilinear', 'cosine']" in refused
    assert "register_similarity" in refused
    assert loaded == f"loaded: {trained.similarity.log_scale.item()}"


def test_an_unknown_similarity_gets_one_error_listing_the_registered():
    listing = r"similarity='dot' is invalid: must be one of \['bilinear', 'cosine'\]"
    with pytest.raises(ValueError, match=listing):
        get_similarity("dot")
    with pytest.raises(ValueError, match="MSCLConfig: " + listing):
        tiny_config(similarity="dot")


def _old_bilinear(weight, scale=1.0):
    def similarity(u, v):
        logits = u @ weight @ v.T
        return logits if scale == 1.0 else logits * scale

    return similarity


def _old_cosine(temperature):
    return lambda u, v: F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T / temperature


@pytest.mark.parametrize(
    "overrides",
    [{}, {"bilinear_logit_scale": 1 / 32}, {"similarity": "cosine"}],
    ids=["bilinear", "bilinear-scaled", "cosine"],
)
@pytest.mark.parametrize("objective", ["cola", "mscl"])
def test_a_step_is_bit_identical_to_the_formulas_the_losses_were_written_with(overrides, objective):
    """Loss and gradients of one step equal, bit for bit, those of the losses called with
    the similarity written out as it was before the registry."""
    torch.manual_seed(0)
    model = MSCLForPreTraining(tiny_config(**overrides)).train()
    generator = torch.Generator().manual_seed(1)
    anchor, positive = torch.randn(2, 6, 98, 64, generator=generator)
    present = torch.tensor([True, False, True, True, False, True]) if objective == "mscl" else None

    out = model(anchor, positive, source_present=present)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    config = model.config
    if config.similarity == "cosine":
        similarity = _old_cosine(config.similarity_temperature)
    else:
        similarity = _old_bilinear(model.similarity.weight, config.bilinear_logit_scale)
    positives = positive if present is None else torch.where(present[:, None, None], positive, 0)
    embeds = model.mscl(torch.cat([anchor, positives])).audio_embeds
    if present is None:
        ref = info_nce_loss(embeds[:6], embeds[6:], similarity)
    else:
        ref = null_source_contrastive_loss(embeds[:6], embeds[6:], present, similarity)
    ref.loss.backward()
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.logits, ref.logits)
    for name, param in model.named_parameters():
        assert torch.equal(grads[name], param.grad), name
