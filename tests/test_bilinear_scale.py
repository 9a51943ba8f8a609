"""The bilinear logit scale: the paper's form by default, a named factor otherwise."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from modeling_mscl import MSCLConfig
from modeling_mscl.modeling_mscl import MSCLSimilarity
from modeling_mscl.training_args import ModelArguments

REPO = Path(__file__).resolve().parents[1]


def _pair(dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(5, dim, generator=generator), torch.randn(7, dim, generator=generator)


def test_default_is_the_papers_bilinear_product_unscaled():
    config = MSCLConfig(projection_dim=16)
    assert config.similarity == "bilinear" and config.bilinear_logit_scale == 1.0
    similarity = MSCLSimilarity(config)
    torch.nn.init.normal_(similarity.weight, std=0.05)
    u, v = _pair()
    # Bit for bit u^T W v: the reference's logits, with no factor applied.
    assert torch.equal(similarity(u, v), u @ similarity.weight @ v.T)


def test_scale_multiplies_the_bilinear_logits():
    similarity = MSCLSimilarity(MSCLConfig(projection_dim=16, bilinear_logit_scale=1 / 16))
    torch.nn.init.normal_(similarity.weight, std=0.05)
    u, v = _pair()
    torch.testing.assert_close(similarity(u, v), (u @ similarity.weight @ v.T) / 16)


def test_scale_survives_a_save_and_is_checked(tmp_path):
    MSCLConfig(bilinear_logit_scale=0.25).save_pretrained(tmp_path)
    assert MSCLConfig.from_pretrained(tmp_path).bilinear_logit_scale == 0.25
    with pytest.raises(ValueError, match="bilinear_logit_scale=0 is invalid"):
        MSCLConfig(bilinear_logit_scale=0)


def test_shipped_configs_keep_the_papers_bilinear_form():
    paper = yaml.safe_load((REPO / "scripts" / "configs" / "paper.yaml").read_text())
    assert paper.get("similarity", "bilinear") == "bilinear"
    assert paper.get("bilinear_logit_scale", 1.0) == 1.0
    # The training arguments carry the option into the model config, 1.0 unless asked.
    assert ModelArguments().bilinear_logit_scale == 1.0
    config = MSCLConfig(**asdict(ModelArguments(bilinear_logit_scale=0.5)))
    assert config.bilinear_logit_scale == 0.5
