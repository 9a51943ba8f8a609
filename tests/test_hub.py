"""Model cards, pushing to a loopback Hub, and loading back without the package."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError

from modeling_mscl import MSCLFeatureExtractor, MSCLForAudioClassification, MSCLModel
from modeling_mscl.hub import (
    ProbeResult,
    push_encoder,
    push_probe_head,
    read_probe_results,
    render_model_card,
)

from .conftest import tiny_config
from .hub_server import hub_server_fixture  # noqa: F401 - registers the `hub_server` fixture

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["drums", "strings", "voice"]
TRAINING_ARGS = {
    "objective": "mscl",
    "sources": ["vocals", "drums", "bass", "other"],
    "absent_sources": True,
    "dataset": "offline-multitrack-corpus",
    "max_steps": 300,
    "batch_size": 64,
    "learning_rate": 0.001,
    "output_dir": "/home/someone/private/runs/mscl",
    "seed": 0,
}
RESULTS = {
    "task": "instrument_family",
    "dataset": "offline-notes",
    "split": "test",
    "head": "mlp",
    "metrics": {"accuracy": 0.8125, "per_class": {"drums": 0.9}},
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_script_{name}", ROOT / "scripts" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _encoder_run(tmp_path: Path, results: bool = True) -> Path:
    """A pre-training run folder: training_args.json next to final/, results inside."""
    torch.manual_seed(0)
    final = tmp_path / "run" / "final"
    MSCLModel(tiny_config()).eval().save_pretrained(final)
    MSCLFeatureExtractor().save_pretrained(final)
    (final.parent / "training_args.json").write_text(json.dumps(TRAINING_ARGS))
    if results:
        (final / "probe_results.json").write_text(json.dumps(RESULTS))
    return final


def _head_folder(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    config = tiny_config(
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        freeze_encoder=True,
        classifier_window_frames=98,
    )
    folder = tmp_path / "head"
    MSCLForAudioClassification(config).eval().save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)
    (folder / "results.json").write_text(json.dumps({**RESULTS, "head": "linear"}))
    return folder


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# ---------------------------------------------------------------------- cards


def test_encoder_card_from_run_folder(tmp_path):
    folder = _encoder_run(tmp_path)
    card = render_model_card("encoder", folder, repo_id="someone/mscl-tiny")
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "feature-extraction"
    assert {"audio", "music", "contrastive-learning"} <= set(meta["tags"])
    assert meta["datasets"] == ["offline-multitrack-corpus", "offline-notes"]
    assert meta["license"] == "apache-2.0"
    # The model-index is what the Hub reads: check it through huggingface_hub's parser.
    results = ModelCard(card).data.eval_results
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in results] == [
        ("accuracy", 0.8125, "test")
    ]
    for section in ("## Method", "## Training data and configuration", "## Evaluation"):
        assert section in card
    assert "| instrument_family | offline-notes | test | mlp | Accuracy | 0.8125 |" in card
    assert "multi-source contrastive learning (MSCL)" in card
    assert "null column" in card  # absent sources were on
    assert "| max_steps | 300 |" in card
    assert "/home/someone" not in card  # local paths stay out of the card
    assert "AutoModel.from_pretrained(repo, trust_remote_code=True)" in card
    assert 'repo = "someone/mscl-tiny"' in card
    assert "16000 Hz" in card and "Separation quality" in card
    assert "arXiv" in card and "2302.07077" in card and "Garoufis" in card
    # Rendering is deterministic, so re-pushing an unchanged model changes nothing.
    assert render_model_card("encoder", folder, repo_id="someone/mscl-tiny") == card


def test_card_without_results_or_arguments_says_so(tmp_path):
    folder = tmp_path / "model"
    MSCLModel(tiny_config()).save_pretrained(folder)
    card = render_model_card("encoder", folder)
    assert "Not evaluated" in card
    assert "model-index" not in _front_matter(card)
    assert "training arguments of this model were not available" in card


def test_probe_head_card(tmp_path):
    folder = _head_folder(tmp_path)
    card = render_model_card(
        "probe_head", folder, repo_id="someone/mscl-tiny-family", base_model="someone/mscl-tiny"
    )
    meta = _front_matter(card)
    assert meta["pipeline_tag"] == "audio-classification"
    assert meta["base_model"] == "someone/mscl-tiny"
    assert "Labels: `drums`, `strings`, `voice`" in card
    assert 'pipeline("audio-classification", model="someone/mscl-tiny-family"' in card
    assert "The encoder was frozen" in card
    assert "cut into windows of\n98 frames" in card and "sum of\nthe logits" in card
    assert ModelCard(card).data.eval_results[0].metric_value == 0.8125


def test_probe_result_files_are_read_tolerantly(tmp_path):
    files = {
        "one.json": RESULTS,
        "many.json": {"results": [RESULTS, {"task": "genre", "metrics": {"accuracy": 0.5}}]},
        "by_task.json": {"tagging": {"roc_auc": 0.9, "pr_auc": 0.4}},
        "flat_accuracy.json": {"accuracy": 0.7, "per_tag": [0.1, 0.2]},
        "nothing_scalar.json": {"task": "x", "metrics": {"per_tag": {"a": 1.0}}},
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    got = read_probe_results(sorted(tmp_path.glob("*.json")))
    assert [(r.task, r.metrics) for r in got] == [
        ("tagging", {"roc_auc": 0.9, "pr_auc": 0.4}),
        ("flat_accuracy", {"accuracy": 0.7}),
        ("instrument_family", {"accuracy": 0.8125}),
        ("genre", {"accuracy": 0.5}),
        ("instrument_family", {"accuracy": 0.8125}),
    ]
    assert got[2] == ProbeResult(
        "instrument_family", {"accuracy": 0.8125}, "offline-notes", "test", "mlp"
    )
    (tmp_path / "broken.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="broken.json"):
        read_probe_results([tmp_path / "broken.json"])


# ---------------------------------------------------------------------- pushing


def test_dry_run_lists_files_and_prints_card(tmp_path, capsys):
    folder = _encoder_run(tmp_path)
    # HF_HUB_OFFLINE=1 (conftest): any request would raise, so a dry run sends nothing.
    assert (
        _script("push_to_hub").main(
            ["encoder", str(folder), "--repo-id", "someone/mscl-tiny", "--dry-run"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Dry run, nothing sent. 7 files would go to someone/mscl-tiny (revision main)" in out
    for name in ("README.md", "config.json", "model.safetensors", "modeling_mscl.py"):
        assert f" {name} " in out
    assert "----- README.md -----\n---\n" in out
    assert "## Evaluation" in out


def test_push_checks_the_folder(tmp_path):
    head = _head_folder(tmp_path)
    with pytest.raises(ValueError, match="push_probe_head"):
        push_encoder(head, "someone/x", dry_run=True)
    with pytest.raises(ValueError, match="push_encoder"):
        push_probe_head(_encoder_run(tmp_path), "someone/x", dry_run=True)
    with pytest.raises(FileNotFoundError, match="config.json"):
        push_encoder(tmp_path, "someone/x", dry_run=True)


def test_push_with_a_wrong_token_is_refused(tmp_path, hub_server, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HfHubHTTPError) as info:
        push_encoder(
            _encoder_run(tmp_path), "mscl-tiny", token="hf_wrong_token", endpoint=hub_server.url
        )
    assert "hf_wrong_token" not in str(info.value)
    assert hub_server.repos == {}


LOAD_SCRIPT = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_mscl":
            raise ImportError("modeling_mscl is hidden for this test")
sys.meta_path.insert(0, Block())
import numpy as np
from transformers import AutoFeatureExtractor, AutoModel, pipeline
audio = np.load("audio.npy")
fe = AutoFeatureExtractor.from_pretrained("{encoder}", trust_remote_code=True)
model = AutoModel.from_pretrained("{encoder}", trust_remote_code=True).eval()
np.save("clip.npy", model.embed_audio(audio, sampling_rate=16000, feature_extractor=fe).clip_embeds[0].numpy())
classify = pipeline("audio-classification", model="{head}", trust_remote_code=True, device="cpu")
scores = classify({{"raw": audio, "sampling_rate": 16000}}, top_k=3)
# The usage snippets of both cards run as written.
import re
from huggingface_hub import hf_hub_download
for repo in ("{encoder}", "{head}"):
    card = open(hf_hub_download(repo, "README.md")).read()
    namespace = {{}}
    for block in re.findall(r"```python\n(.*?)```", card, flags=re.S):
        exec(block, namespace)
    assert namespace, repo
assert "modeling_mscl" not in sys.modules
print(json.dumps({{"module": type(model).__module__, "scores": scores}}))
"""


def test_push_then_load_from_the_hub_without_the_package(tmp_path, hub_server, monkeypatch, capsys):
    token = hub_server.token
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    push = _script("push_to_hub").main
    encoder_dir, head_dir = _encoder_run(tmp_path), _head_folder(tmp_path)
    encoder_repo, head_repo = "loopback-user/mscl-tiny", "loopback-user/mscl-tiny-family"

    # The repo id may leave out the namespace: the Hub answers with the full one.
    assert push(["encoder", str(encoder_dir), "--repo-id", "mscl-tiny", "--private"]) == 0
    assert (
        push(["probe-head", str(head_dir), "--repo-id", head_repo, "--base-model", encoder_repo])
        == 0
    )
    first = capsys.readouterr()
    assert f"Uploaded 7 of 7 files to {encoder_repo} (revision main)" in first.out
    assert hub_server.repos[encoder_repo].private and not hub_server.repos[head_repo].private
    files = hub_server.files(encoder_repo)
    assert set(files) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "configuration_mscl.py",
        "modeling_mscl.py",
        "feature_extraction_mscl.py",
    }
    assert files["model.safetensors"] == (encoder_dir / "model.safetensors").read_bytes()
    auto_map = json.loads(files["config.json"])["auto_map"]
    assert auto_map["AutoModel"] == "modeling_mscl.MSCLModel"
    assert auto_map["AutoModelForAudioClassification"] == "modeling_mscl.MSCLForAudioClassification"
    assert (
        _front_matter(hub_server.files(head_repo)["README.md"].decode())["base_model"]
        == encoder_repo
    )

    # Pushing the same folders again sends no file and makes no commit.
    before = len(hub_server.requests())
    heads = hub_server.head(encoder_repo), hub_server.head(head_repo)
    assert push(["encoder", str(encoder_dir), "--repo-id", encoder_repo]) == 0
    assert (
        push(["probe-head", str(head_dir), "--repo-id", head_repo, "--base-model", encoder_repo])
        == 0
    )
    again = hub_server.requests()[before:]
    assert not [r for r in again if "/preupload/" in r.path or "/commit/" in r.path]
    assert (hub_server.head(encoder_repo), hub_server.head(head_repo)) == heads
    assert "Nothing to upload: the 7 files on" in capsys.readouterr().out

    # A new card on another branch: only README.md goes up, and main stays as it was.
    (encoder_dir / "probe_results.json").write_text(
        json.dumps({**RESULTS, "metrics": {"accuracy": 0.875}})
    )
    args = ["encoder", str(encoder_dir), "--repo-id", encoder_repo, "--revision", "dev"]
    assert push([*args, "--commit-message", "New probe results"]) == 0
    assert "Uploaded 1 of 7 files" in capsys.readouterr().out
    assert hub_server.head(encoder_repo) == heads[0]
    assert b"0.875" in hub_server.files(encoder_repo, "dev")["README.md"]
    assert hub_server.repos[encoder_repo].commits[hub_server.head(encoder_repo, "dev")].message == (
        "New probe results"
    )

    # The token authorised every write and never appeared in what was printed or stored.
    writes = [r for r in hub_server.requests("POST") if "validate-yaml" not in r.path]
    assert writes and all(r.authorized for r in writes)
    printed = first.out + first.err
    assert token not in printed
    for repo in hub_server.repos.values():
        assert all(
            token.encode() not in data for c in repo.commits.values() for data in c.files.values()
        )
    home = tmp_path / "hf_home"
    assert not home.exists() or all(
        token not in p.read_text(errors="ignore") for p in home.rglob("*") if p.is_file()
    )

    # A fresh process that cannot import modeling_mscl downloads both repos from the Hub.
    audio = np.random.default_rng(2).standard_normal(40000).astype(np.float32)
    np.save(tmp_path / "audio.npy", audio)
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_server.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token,  # the encoder repo is private
        "HF_HOME": str(tmp_path / "fresh_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    script = textwrap.dedent(LOAD_SCRIPT.format(encoder=encoder_repo, head=head_repo))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub_server.unknown == []
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules")

    local_encoder = MSCLModel.from_pretrained(encoder_dir).eval()
    expected = local_encoder.embed_audio(audio, sampling_rate=16000).clip_embeds[0]
    got = torch.from_numpy(np.load(tmp_path / "clip.npy"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    head = MSCLForAudioClassification.from_pretrained(head_dir).eval()
    features = MSCLFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        probs = head(features["input_features"]).logits.softmax(-1)[0]
    scores = {s["label"]: s["score"] for s in loaded["scores"]}
    assert sorted(scores) == LABELS
    for i, label in enumerate(LABELS):
        assert scores[label] == pytest.approx(float(probs[i]), abs=1e-4)
