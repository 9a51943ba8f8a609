"""Model cards, the operations a push hands to huggingface_hub, and loading the pushed
files back without the package."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, RepoUrl
from torch import nn

import modeling_mscl.hub
from modeling_mscl import MSCLFeatureExtractor, MSCLForAudioClassification, MSCLModel
from modeling_mscl.commands.push_to_hub import main as push_command
from modeling_mscl.hub import (
    HUB_CODE_FILES,
    push_encoder,
    push_probe_head,
    read_probe_results,
    read_training_args,
    render_model_card,
)
from modeling_mscl.probing import ProbeResult, ProbeTask, TrainedProbe, export_probe
from modeling_mscl.training_args import PretrainingArguments

from .conftest import tiny_config
from .without_package import run_without_package

LABELS = ["drums", "strings", "voice"]
# A flat mapping as convert_reference_checkpoint writes it (a run's has every argument).
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
USER = "someone"  # the namespace the fake Hub gives a repo id without one
TOKEN = "hf_test_token_never_printed"


def _probe_result(head: str, accuracy: float, dim: int = 16) -> ProbeResult:
    """A result as run_probe returns it, with an untrained head of the exported layout."""
    task = ProbeTask("instrument_family", "family", multi_label=False, head=head, hidden_size=8)
    if head == "linear":
        layers = [nn.Dropout(0.0), nn.Linear(dim, len(LABELS))]
    else:
        layers = [nn.Linear(dim, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, len(LABELS))]
    history = [{"epoch": 1, "train_loss": 1.1, "crops": 12}, {"epoch": 2, "train_loss": 0.9}]
    probe = TrainedProbe(nn.Sequential(*layers), task, LABELS, history, best_epoch=2)
    per_class = {"accuracy": dict(zip(LABELS, [0.9, None, 0.75], strict=True))}
    sizes = {"train": 12, "validation": 4, "test": 16}
    return ProbeResult(task, {"accuracy": accuracy}, {"accuracy": 0.75}, per_class, probe, sizes)


def _encoder_run(tmp_path: Path) -> Path:
    """A run's encoder folder (training_args.json inside, as pre-training saves it) with
    probe results."""
    torch.manual_seed(0)
    folder = tmp_path / "run" / "encoder"
    MSCLModel(tiny_config()).eval().save_pretrained(folder)
    MSCLFeatureExtractor().save_pretrained(folder)
    (folder / "training_args.json").write_text(json.dumps(TRAINING_ARGS))
    result = _probe_result("mlp", 0.8125).to_dict()
    (folder / "probe_results.json").write_text(json.dumps(result))
    return folder


def _head_folder(tmp_path: Path) -> Path:
    """A probe head as export_probe writes it (probe_results.json and probe_args.json too)."""
    torch.manual_seed(1)
    encoder = MSCLModel(tiny_config()).eval()
    folder = tmp_path / "head"
    result = _probe_result("linear", 0.8125, dim=encoder.config.encoder_hidden_size)
    export_probe(encoder, result, folder)
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
    assert meta["datasets"] == ["offline-multitrack-corpus"]
    assert meta["license"] == "apache-2.0"
    # The model-index is what the Hub reads: check it through huggingface_hub's parser.
    results = ModelCard(card).data.eval_results
    assert [(r.metric_type, r.metric_value, r.dataset_split, r.task_name) for r in results] == [
        ("accuracy", 0.8125, "test", "instrument_family (mlp probe)")
    ]
    for section in ("## Method", "## Training data and configuration", "## Evaluation"):
        assert section in card
    assert "| instrument_family | instrument_family | test | mlp | Accuracy | 0.8125 |" in card
    assert "multi-source contrastive learning (MSCL)" in card
    assert "null column" in card  # absent sources were on
    assert "- steps: 300\n- pairs per minibatch: 64" in card
    assert "| max_steps | 300 |" in card
    assert "/home/someone" not in card  # local paths stay out of the card
    assert "AutoModel.from_pretrained(repo, trust_remote_code=True)" in card
    assert 'repo = "someone/mscl-tiny"' in card
    assert "16000 Hz" in card and "Separation quality" in card
    assert "arXiv" in card and "2302.07077" in card and "Garoufis" in card
    # Rendering is deterministic, so re-pushing an unchanged model changes nothing.
    assert render_model_card("encoder", folder, repo_id="someone/mscl-tiny") == card


def test_card_from_the_arguments_a_run_saves(tmp_path):
    folder = tmp_path / "model"
    MSCLModel(tiny_config()).save_pretrained(folder)
    args = PretrainingArguments()
    args.model.projection_dim, args.data.objective = 32, "cola"
    args.data.data_dir, args.training.max_steps = str(tmp_path / "chunks"), 40
    args.save(folder / "training_args.json")
    assert read_training_args(folder) == args.to_dict()
    card = render_model_card("encoder", folder)
    assert "COLA, the baseline of the MSCL paper" in card
    assert "| max_steps | 40 |" in card and "| sources | vocals, drums, bass, other |" in card
    assert "data_dir" not in card and "output_dir" not in card and str(tmp_path) not in card
    assert "- data:" not in card and "datasets" not in _front_matter(card)


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
    # export_probe's probe_args.json: the head's settings, not a pre-training run's.
    assert "- batch size: 128" in card and "| probe_seed | 0 |" in card
    assert "| label_column | family |" in card


def test_probe_results_read_back_exactly_what_the_probes_write(tmp_path):
    result = _probe_result("mlp", 0.8125)
    path = tmp_path / "probe_results.json"
    path.write_text(json.dumps(result.to_dict(), indent=1))
    (back,) = read_probe_results([path])
    assert back == result and back.probe is None  # the weights stay in the model folder
    assert back.to_dict() == result.to_dict()
    with pytest.raises(ValueError, match="no trained head"):
        export_probe(MSCLModel(tiny_config()), back, tmp_path / "export")
    # In memory or from files: the same card.
    head = _head_folder(tmp_path)
    assert render_model_card("probe_head", head, [head / "probe_results.json"]) == (
        render_model_card("probe_head", head, read_probe_results([head / "probe_results.json"]))
    )

    good = result.to_dict()
    other = {
        "list.json": [good],
        "by_encoder.json": {"random": {"instrument_family": good}},  # mscl probe --output
        "flat.json": {"accuracy": 0.7},
        "old.json": {"task": "x", "dataset": "y", "metrics": {"accuracy": 0.7}},
        "no_seed.json": {k: v for k, v in good.items() if k != "seed"},
        "extra.json": {**good, "comment": "offline-notes"},
        "renamed.json": {**good, "task": "genre"},
        "bool_metric.json": {**good, "metrics": {"accuracy": True}},
        "bad_task.json": {**good, "task_config": {**good["task_config"], "head": "knn"}},
        "broken.json": "{",
    }
    for name, data in other.items():
        (tmp_path / name).write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_probe_results([tmp_path / name])
    with pytest.raises(ValueError, match="missing keys .*'seed'"):
        read_probe_results([tmp_path / "no_seed.json"])
    with pytest.raises(ValueError, match="'task' is 'genre', but it must be 'instrument_family'"):
        read_probe_results([tmp_path / "renamed.json"])


def test_training_args_must_be_a_flat_mapping(tmp_path):
    for name, text in {
        "nested.json": json.dumps({"model": {"projection_dim": 32}}),
        "list.json": "[1, 2]",
        "args.yaml": "objective: mscl\n",
    }.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_training_args(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="training_args.json"):
        read_training_args(tmp_path)
    with pytest.raises(ValueError, match="argument 'model'"):
        render_model_card("encoder", _encoder_run(tmp_path), training_args={"model": {}})


# ---------------------------------------------------------------------- pushing


class FakeHub:
    """Stands in for huggingface_hub's ``HfApi``: records what a push asks for, checks
    every call against the real method's signature, and answers as the Hub does."""

    def __init__(self) -> None:
        self.clients: list[dict] = []
        self.calls: list[tuple[str, dict]] = []
        self.commits: list[dict] = []

    def client_class(self) -> type:
        hub = self

        class RecordingHfApi:
            def __init__(self, *args, **kwargs):
                hub.clients.append(_bind(HfApi.__init__, self, args, kwargs))

            def create_repo(self, *args, **kwargs):
                call = _bind(HfApi.create_repo, self, args, kwargs)
                hub.calls.append(("create_repo", call))
                repo_id = call["repo_id"] if "/" in call["repo_id"] else f"{USER}/{call['repo_id']}"
                return RepoUrl(f"https://huggingface.co/{repo_id}")

            def create_branch(self, *args, **kwargs):
                hub.calls.append(("create_branch", _bind(HfApi.create_branch, self, args, kwargs)))

            def create_commit(self, *args, **kwargs):
                call = _bind(HfApi.create_commit, self, args, kwargs)
                hub.calls.append(("create_commit", call))
                files = {}
                for op in call["operations"]:
                    assert isinstance(op, CommitOperationAdd), op
                    with op.as_file() as handle:
                        files[op.path_in_repo] = handle.read()
                oid = f"{len(hub.commits):040x}"
                hub.commits.append({**call, "files": files})
                url = f"https://huggingface.co/{call['repo_id']}/commit/{oid}"
                return CommitInfo(url, call["commit_message"], "", oid)

            def __getattr__(self, name):
                raise AssertionError(f"a push should not call HfApi.{name}")

        return RecordingHfApi


def _bind(method, self, args, kwargs) -> dict:
    bound = inspect.signature(method).bind(self, *args, **kwargs)
    return {k: v for k, v in bound.arguments.items() if k != "self"}


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(modeling_mscl.hub, "HfApi", hub.client_class())
    return hub


def test_dry_run_lists_files_and_prints_card(tmp_path, capsys, fake_hub):
    folder = _encoder_run(tmp_path)
    assert (
        push_command(["encoder", str(folder), "--repo-id", "someone/mscl-tiny", "--dry-run"]) == 0
    )
    assert fake_hub.clients == [] and fake_hub.calls == []
    out = capsys.readouterr().out
    files = 4 + len(HUB_CODE_FILES)  # README, config, preprocessor config, weights, code
    assert (
        f"Dry run, nothing sent. {files} files would go to someone/mscl-tiny (revision main)" in out
    )
    for name in ("README.md", "config.json", "model.safetensors", "modeling_mscl.py"):
        assert f" {name} " in out
    assert "----- README.md -----\n---\n" in out
    assert "## Evaluation" in out


def test_push_checks_the_folder(tmp_path, fake_hub):
    head = _head_folder(tmp_path)
    with pytest.raises(ValueError, match="push_probe_head"):
        push_encoder(head, "someone/x")
    with pytest.raises(ValueError, match="push_encoder"):
        push_probe_head(_encoder_run(tmp_path), "someone/x")
    with pytest.raises(FileNotFoundError, match="config.json"):
        push_encoder(tmp_path, "someone/x")
    (tmp_path / "results.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ValueError, match="results.json"):
        push_probe_head(head, "x", results=[tmp_path / "results.json"])
    assert fake_hub.calls == []  # refused before anything is sent


def test_push_sends_one_commit_of_the_repo_files(tmp_path, capsys, fake_hub):
    push = push_command
    encoder_dir, head_dir = _encoder_run(tmp_path), _head_folder(tmp_path)
    encoder_repo, head_repo = f"{USER}/mscl-tiny", f"{USER}/mscl-tiny-family"

    # The repo id may leave out the namespace: the Hub's answer names the repo.
    assert push(["encoder", str(encoder_dir), "--repo-id", "mscl-tiny", "--private"]) == 0
    argv = ["probe-head", str(head_dir), "--repo-id", head_repo, "--base-model", encoder_repo]
    assert push(argv) == 0
    printed = capsys.readouterr()
    assert (
        f"Pushed {4 + len(HUB_CODE_FILES)} files to {encoder_repo} (revision main)" in printed.out
    )
    assert [(name, call["repo_id"], call.get("private")) for name, call in fake_hub.calls] == [
        ("create_repo", "mscl-tiny", True),
        ("create_commit", encoder_repo, None),
        ("create_repo", head_repo, False),
        ("create_commit", head_repo, None),
    ]
    assert all(call["exist_ok"] for name, call in fake_hub.calls if name == "create_repo")
    encoder, head = fake_hub.commits
    assert (encoder["revision"], encoder["commit_message"]) == ("main", "Upload MSCL encoder")
    assert head["commit_message"] == "Upload MSCL probe head"
    assert (
        set(encoder["files"])
        == set(head["files"])
        == {
            "README.md",
            "config.json",
            "preprocessor_config.json",
            "model.safetensors",
            *HUB_CODE_FILES,
        }
    )
    assert encoder["files"]["model.safetensors"] == (encoder_dir / "model.safetensors").read_bytes()
    for commit in (encoder, head):
        auto_map = json.loads(commit["files"]["config.json"])["auto_map"]
        assert auto_map["AutoModel"] == "modeling_mscl.MSCLModel"
        assert auto_map["AutoModelForAudioClassification"] == (
            "modeling_mscl.MSCLForAudioClassification"
        )
        fe_map = json.loads(commit["files"]["preprocessor_config.json"])["auto_map"]
        assert fe_map == {"AutoFeatureExtractor": "feature_extraction_mscl.MSCLFeatureExtractor"}
    encoder_card = encoder["files"]["README.md"].decode()
    assert f'repo = "{encoder_repo}"' in encoder_card  # the full id, from the Hub's answer
    assert _front_matter(head["files"]["README.md"].decode())["base_model"] == encoder_repo
    # Argument and result files stay local.
    assert not {"training_args.json", "probe_args.json", "probe_results.json"} & set(head["files"])

    # Pushing the same folders again sends the same bytes, which huggingface_hub skips.
    assert push(["encoder", str(encoder_dir), "--repo-id", encoder_repo]) == 0
    assert push(argv) == 0
    assert fake_hub.commits[2]["files"] == encoder["files"]
    assert fake_hub.commits[3]["files"] == head["files"]

    # New results on another branch, created first, with the given message.
    changed = {**json.loads((encoder_dir / "probe_results.json").read_text())}
    changed["metrics"] = {"accuracy": 0.875}
    (encoder_dir / "probe_results.json").write_text(json.dumps(changed))
    args = ["encoder", str(encoder_dir), "--repo-id", encoder_repo, "--revision", "dev"]
    assert push([*args, "--commit-message", "New probe results"]) == 0
    assert fake_hub.calls[-2] == (
        "create_branch",
        {"repo_id": encoder_repo, "branch": "dev", "exist_ok": True},
    )
    last = fake_hub.commits[-1]
    assert (last["revision"], last["commit_message"]) == ("dev", "New probe results")
    assert b"| Accuracy | 0.875 |" in last["files"]["README.md"]
    assert {k: v for k, v in last["files"].items() if k != "README.md"} == {
        k: v for k, v in encoder["files"].items() if k != "README.md"
    }

    # The token goes to huggingface_hub's client and nowhere else.
    assert push(["encoder", str(encoder_dir), "--repo-id", encoder_repo]) == 0
    push_encoder(encoder_dir, encoder_repo, token=TOKEN)
    assert [c.get("token") for c in fake_hub.clients][-2:] == [None, TOKEN]
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    assert all(TOKEN.encode() not in data for c in fake_hub.commits for data in c["files"].values())


LOAD_SCRIPT = r"""
import json, re, sys
import numpy as np
from transformers import AutoFeatureExtractor, AutoModel, pipeline
encoder, encoder_repo, head, head_repo = sys.argv[1:5]
audio = np.load("audio.npy")
fe = AutoFeatureExtractor.from_pretrained(encoder, trust_remote_code=True)
model = AutoModel.from_pretrained(encoder, trust_remote_code=True).eval()
np.save("clip.npy", model.embed_audio(audio, sampling_rate=16000, feature_extractor=fe).clip_embeds[0].numpy())
classify = pipeline("audio-classification", model=head, trust_remote_code=True, device="cpu")
scores = classify({"raw": audio, "sampling_rate": 16000}, top_k=3)
# The usage snippets of both cards run as written, the repo id pointing at the folder.
for folder, repo_id in ((encoder, encoder_repo), (head, head_repo)):
    card = open(f"{folder}/README.md").read()
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", card, flags=re.S):
        exec(block.replace(f'"{repo_id}"', repr(folder)), namespace)
    assert namespace, folder
print(json.dumps({"module": type(model).__module__, "scores": scores}))
"""


def test_pushed_files_load_without_the_package(tmp_path, fake_hub):
    encoder_dir, head_dir = _encoder_run(tmp_path), _head_folder(tmp_path)
    push_encoder(encoder_dir, "someone/mscl-tiny", private=True)
    push_probe_head(head_dir, "someone/mscl-tiny-family", base_model="someone/mscl-tiny")
    # What a download of each repo would give: the files of its commit, nothing else.
    repos = []
    for commit in fake_hub.commits:
        folder = tmp_path / "downloaded" / commit["repo_id"].split("/")[1]
        folder.mkdir(parents=True)
        for name, data in commit["files"].items():
            (folder / name).write_bytes(data)
        assert sorted(p.name for p in folder.glob("*.py")) == sorted(HUB_CODE_FILES)
        repos += [str(folder), commit["repo_id"]]

    audio = np.random.default_rng(2).standard_normal(40000).astype(np.float32)
    np.save(tmp_path / "audio.npy", audio)
    modules = tmp_path / "modules"
    env = {"HF_HOME": str(tmp_path / "fresh_home"), "HF_MODULES_CACHE": str(modules)}
    result = run_without_package(LOAD_SCRIPT, *repos, cwd=tmp_path, env=env)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules")
    # The remote code that ran is the Hub code files of the repo.
    ran = {p.name for p in modules.rglob("*.py") if p.name != "__init__.py"}
    assert ran == set(HUB_CODE_FILES)

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
