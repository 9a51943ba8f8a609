"""Configs are checked on load: a damaged or foreign ``config.json`` or
``preprocessor_config.json`` is an error naming the field and what it accepts, raised
before any weight is allocated (issue 22, item 6)."""

from __future__ import annotations

import json

import pytest
import torch

from modeling_mscl import MSCLConfig, MSCLFeatureExtractor, MSCLModel
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    MSCLModel(tiny_config()).save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)
    return folder


def _edited(src, dst, file: str, **fields):
    """A copy of the folder ``src`` whose JSON ``file`` has ``fields`` replaced."""
    import shutil

    shutil.copytree(src, dst)
    data = json.loads((dst / file).read_text())
    data.update(fields)
    (dst / file).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("top_channels", 50_000_000, r"an integer in \[1, 16384\]"),
        ("classifier_hidden_size", "512", r"an integer in \[1, 16384\]"),
        ("num_mel_bins", 16, r"an integer in \[32, 1024\]"),
        ("width_coefficient", "0.25", r"a number in \(0.0, 8.0\]"),
        ("out_channels", [16, 24, 40, 80, 112, 192, 10**9], r"integers in \[1, 16384\]"),
        ("strides", [1, 2, 2, 2, 1, 2, "1"], "list of integers"),
        ("dropout_rate", 1.5, r"a number in \[0.0, 1.0\)"),
        ("freeze_encoder", "yes", "true or false"),
        ("classifier_window_frames", 10, r"an integer in \[32, 1000000\]"),
    ],
)
def test_a_bad_config_field_is_named_with_its_range_before_allocating(
    encoder_dir, tmp_path, monkeypatch, field, value, allowed
):
    folder = _edited(encoder_dir, tmp_path / "bad", "config.json", **{field: value})
    built = []
    monkeypatch.setattr(MSCLModel, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(ValueError, match=rf"{field}=.* is invalid: .*{allowed}"):
        MSCLModel.from_pretrained(folder)
    assert not built, "the model was allocated before the config was refused"


def test_a_foreign_model_type_in_an_mscl_folder_is_refused_by_name(encoder_dir, tmp_path):
    folder = _edited(encoder_dir, tmp_path / "bert", "config.json", model_type="bert")
    with pytest.raises(ValueError, match="model_type='bert' is invalid"):
        MSCLModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="model_type='bert'"):
        MSCLConfig.from_pretrained(folder)
    # The probe command's loader, with trust_remote_code-free loading of our own classes.
    from modeling_mscl.commands import probe

    args = probe.parse_args(["--model", str(folder), "--task", "corpus_genre", "--data", "x"])
    with pytest.raises(ValueError, match="model_type='bert'"):
        probe.load_encoder(args)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("window_frames", 10, r"an integer in \[32, 1000000\]"),
        ("feature_size", 5_000_000, r"an integer in \[1, 1024\]"),
        ("fft_length", 2**30, r"an integer in \[1, 65536\]"),
        ("sampling_rate", 10**9, r"an integer in \[4000, 768000\]"),
    ],
)
def test_a_bad_feature_extractor_field_is_named_with_its_range(
    encoder_dir, tmp_path, field, value, allowed
):
    folder = _edited(encoder_dir, tmp_path / "bad", "preprocessor_config.json", **{field: value})
    with pytest.raises(ValueError, match=rf"`{field}` must be {allowed}"):
        MSCLFeatureExtractor.from_pretrained(folder)


def test_too_short_input_is_named_not_a_convolution_error():
    model = MSCLModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="10 frames; .* need at least 32"):
        model(torch.zeros(1, 10, 64))
