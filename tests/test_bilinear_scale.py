"""The bilinear logit scale: the paper's form by default, a named factor otherwise."""

from __future__ import annotations

import json
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


def _diagnostics_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_bilinear_diagnostics", REPO / "scripts" / "bilinear_diagnostics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagnostics_variants_parse_and_bad_ones_are_named():
    module = _diagnostics_module()
    assert module.parse_variant("reference") == {}
    assert module.parse_variant("scale=0.5,warmup=10") == {"scale": 0.5, "warmup": 10.0}
    with pytest.raises(ValueError, match="variant 'temp=2'"):
        module.parse_variant("temp=2")


def test_diagnostics_run_on_a_small_chunk_set(tmp_path, capsys):
    from modeling_mscl import MSCLFeatureExtractor
    from modeling_mscl.chunk_set import save_chunk_set
    from modeling_mscl.pairs import synthetic_chunk_dataset

    save_chunk_set(synthetic_chunk_dataset(num_tracks=8, seed=0), tmp_path / "set",
                   MSCLFeatureExtractor())  # fmt: skip
    module = _diagnostics_module()
    out = tmp_path / "diag.json"
    argv = ["--data_dir", str(tmp_path / "set"), "--config", "tiny", "--steps", "3"]
    assert module.main([*argv, "--variants", "reference", "scale=0.03125", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert set(records) == {"reference", "scale=0.03125"} and len(records["reference"]) == 3
    # Same seed, same batches: the scaled logits at step 0 are the reference's / 32.
    ref, scaled = records["reference"][0], records["scale=0.03125"][0]
    assert scaled["logit_std"] == pytest.approx(ref["logit_std"] / 32, rel=1e-4)
    assert "last 10 steps" in capsys.readouterr().out
