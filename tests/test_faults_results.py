"""Results and cards under the right name (issue 22, item 7): results are filed by task
and dataset, custom tasks have names of their own, every result names its encoder, the
probe-head card names the data given, and a push refuses another encoder's results."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from modeling_mscl import MSCLFeatureExtractor, MSCLModel
from tests.conftest import tiny_config
from tests.test_hub import _probe_result
from tests.test_probing import audio_corpus  # noqa: F401 - the fixture


def _probe(*argv: str) -> None:
    from modeling_mscl.commands import probe

    assert probe.main([*argv, "--no-progress"]) == 0


def test_results_are_filed_by_task_and_dataset_and_name_their_encoder(audio_corpus, tmp_path):  # noqa: F811
    from modeling_mscl.hub import render_model_card

    songs, other = tmp_path / "songs", tmp_path / "other"
    audio_corpus.save_to_disk(str(songs))
    shutil.copytree(songs, other)
    tiny_config().save_pretrained(tmp_path / "config")
    output = tmp_path / "results.json"
    common = ["--random-init", "--config", str(tmp_path / "config"), "--output", str(output)]
    common += ["--task-arg", "max_epochs=1", "--task", "corpus_genre"]
    _probe(*common, "--data", str(songs))
    # The same preset on other data: a row of its own, not the preset's row replaced.
    _probe(*common, "--data", str(other))
    # A task of one's own (here the preset's labels under another name).
    _probe(*common, "--data", str(other), "--task-arg", "name=my_genre",
           "--export", str(tmp_path / "head"))  # fmt: skip
    saved = json.loads(output.read_text())["random"]
    assert set(saved) == {f"corpus_genre@{songs}", f"corpus_genre@{other}", f"my_genre@{other}"}, (
        set(saved)
    )
    assert saved[f"my_genre@{other}"]["task"] == "my_genre"
    assert saved[f"corpus_genre@{other}"]["dataset"] == str(other)
    fingerprints = {result["encoder_fingerprint"] for result in saved.values()}
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 40
    # The exported head's card names the data it was trained on, not the preset.
    card = render_model_card("probe_head", tmp_path / "head")
    assert f"- data: {other}" in card
    assert f"| my_genre | {other} | test |" in card, card


def test_two_tasks_filed_under_one_name_are_refused(tmp_path):
    from modeling_mscl.commands import probe

    argv = ["--random-init", "--data", "x", "--task", "corpus_genre", "--task", "corpus_tempo"]
    with pytest.raises(SystemExit, match="one name"):
        probe.main([*argv, "--task-arg", "name=mine"])


@pytest.fixture(scope="module")
def two_encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = root / f"encoder{seed}"
        MSCLModel(tiny_config()).eval().save_pretrained(folder)
        MSCLFeatureExtractor().save_pretrained(folder)
        folders.append(folder)
    return folders


def _results_file(path, fingerprint):
    result = _probe_result("linear", 0.75)
    result = dataclasses.replace(result, encoder_fingerprint=fingerprint)
    path.write_text(json.dumps(result.to_dict()))
    return path


def test_push_encoder_refuses_results_of_another_encoder(two_encoders, tmp_path):
    from modeling_mscl.commands import push_to_hub
    from modeling_mscl.probing import encoder_fingerprint

    mine, other = two_encoders
    other_fp = encoder_fingerprint(MSCLModel.from_pretrained(other))
    mine_fp = encoder_fingerprint(MSCLModel.from_pretrained(mine))
    argv = ["encoder", str(mine), "--repo-id", "someone/mscl", "--dry-run", "--results"]
    foreign = _results_file(tmp_path / "foreign.json", other_fp)
    with pytest.raises(ValueError, match=f"foreign.json: .*measured on encoder {other_fp}"):
        push_to_hub.main([*argv, str(foreign)])
    anonymous = _results_file(tmp_path / "anonymous.json", None)
    with pytest.raises(ValueError, match="anonymous.json: these probe results record no encoder"):
        push_to_hub.main([*argv, str(anonymous)])
    own = _results_file(tmp_path / "own.json", mine_fp)
    assert push_to_hub.main([*argv, str(own)]) == 0
