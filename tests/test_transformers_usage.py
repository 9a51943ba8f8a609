"""Saved folders used the transformers way: every Auto class from any folder, the pipelines
of an installed package without trust_remote_code, and fine-tuning as transformers'
audio-classification example does it (freeze_feature_encoder, Trainer, pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

from modeling_mscl import (
    MSCLFeatureExtractor,
    MSCLForAudioClassification,
    MSCLForPreTraining,
    MSCLModel,
)

from .conftest import tiny_config

LABELS = ["low", "mid", "high"]
FREQS = (150.0, 700.0, 3000.0)
ALL_MODEL_CLASSES = {
    "AutoConfig": "configuration_mscl.MSCLConfig",
    "AutoModel": "modeling_mscl.MSCLModel",
    "AutoModelForPreTraining": "modeling_mscl.MSCLForPreTraining",
    "AutoModelForAudioClassification": "modeling_mscl.MSCLForAudioClassification",
}


def _tone(rate: int, seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("usage")
    torch.manual_seed(0)
    for name, cls in (
        ("encoder", MSCLModel),
        ("pretraining", MSCLForPreTraining),
        ("head", MSCLForAudioClassification),
    ):
        config = tiny_config(num_labels=3) if cls is MSCLForAudioClassification else tiny_config()
        cls(config).save_pretrained(root / name)
        MSCLFeatureExtractor().save_pretrained(root / name)
    return {"root": root, **{n: root / n for n in ("encoder", "pretraining", "head")}}


@pytest.mark.parametrize("name", ["encoder", "pretraining", "head"])
def test_every_saved_folder_maps_every_model_class(folders, name):
    config = json.loads((folders[name] / "config.json").read_text())
    assert config["auto_map"] == ALL_MODEL_CLASSES
    fe = json.loads((folders[name] / "preprocessor_config.json").read_text())
    assert fe["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_mscl.MSCLFeatureExtractor"
    model = AutoModelForAudioClassification.from_pretrained(
        folders[name], num_labels=2, trust_remote_code=True, ignore_mismatched_sizes=True
    )
    assert type(model).__name__ == "MSCLForAudioClassification"


def test_installed_package_runs_its_pipelines_without_remote_code(folders):
    # The package is imported (the tests import it): its pipelines are transformers' own,
    # so a folder needs no trust_remote_code, for an explicit task and for an inferred one.
    classify = pipeline("audio-classification", model=str(folders["head"]), device="cpu")
    scores = classify(_tone(16000, 2.0, 700.0))
    assert type(classify).__name__ == "MSCLAudioClassificationPipeline"
    assert len(scores) == 3 and {s["label"] for s in scores} == {"LABEL_0", "LABEL_1", "LABEL_2"}
    embed = pipeline(model=str(folders["encoder"]), device="cpu")
    assert type(embed).__name__ == "MSCLEmbeddingPipeline"
    out = embed(_tone(16000, 2.5, 700.0))
    assert out["window_embeddings"].shape[0] == 2
    # The folder still declares its pipeline for users without the package.
    config = json.loads((folders["encoder"] / "config.json").read_text())
    assert "mscl-embedding" in config["custom_pipelines"]
    # Other models keep transformers' own audio-classification pipeline untouched.
    assert (
        json.loads((folders["head"] / "config.json").read_text())["custom_pipelines"]
        and embed.model.config.to_dict()["custom_pipelines"] == config["custom_pipelines"]
    )


def test_freeze_feature_encoder_freezes_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = MSCLForAudioClassification(tiny_config(num_labels=3))
    model.freeze_feature_encoder()
    model.train()
    assert not any(p.requires_grad for p in model.mscl.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert not model.mscl.training and model.classifier.training
    before = {n: b.clone() for n, b in model.mscl.named_buffers()}
    out = model(torch.randn(4, 98, 64) * 40, labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    for name, value in model.mscl.named_buffers():
        assert torch.equal(value, before[name]), name
    assert model.classifier[-1].weight.grad is not None


def _dataset(count: int, seed: int):
    from datasets import Audio, Dataset

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), count).tolist()
    audio = [
        {"array": _tone(16000, 1.2, FREQS[y], seed + i), "sampling_rate": 16000}
        for i, y in enumerate(labels)
    ]
    data = Dataset.from_dict({"audio": audio, "label": labels})
    return data.cast_column("audio", Audio(sampling_rate=16000, decode=False))


def test_fine_tuning_as_transformers_audio_classification_example(folders, tmp_path):
    """The steps of transformers' run_audio_classification.py on a tiny local dataset."""
    from datasets import Audio

    encoder = str(folders["encoder"])
    feature_extractor = AutoFeatureExtractor.from_pretrained(encoder, trust_remote_code=True)
    model_input_name = feature_extractor.model_input_names[0]
    train, evaluation = _dataset(12, 0), _dataset(6, 100)

    def transforms(batch):
        arrays = [item["array"] for item in batch["audio"]]
        inputs = feature_extractor(arrays, sampling_rate=feature_extractor.sampling_rate)
        return {model_input_name: inputs[model_input_name], "labels": list(batch["label"])}

    train = train.cast_column("audio", Audio(sampling_rate=16000))
    evaluation = evaluation.cast_column("audio", Audio(sampling_rate=16000))
    train.set_transform(transforms, output_all_columns=False)
    evaluation.set_transform(transforms, output_all_columns=False)

    config = AutoConfig.from_pretrained(
        encoder,
        num_labels=len(LABELS),
        label2id={label: str(i) for i, label in enumerate(LABELS)},
        id2label={str(i): label for i, label in enumerate(LABELS)},
        finetuning_task="audio-classification",
        trust_remote_code=True,
    )
    model = AutoModelForAudioClassification.from_pretrained(
        encoder, config=config, trust_remote_code=True, ignore_mismatched_sizes=True
    )
    model.freeze_feature_encoder()

    def accuracy(prediction):
        return {
            "accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
        }

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-2,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        logging_steps=2,
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        compute_metrics=accuracy,
        processing_class=feature_extractor,
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    metrics = trainer.evaluate()
    assert "eval_accuracy" in metrics and np.isfinite(metrics["eval_loss"])
    trainer.save_model(str(tmp_path / "saved"))
    classify = pipeline("audio-classification", model=str(tmp_path / "saved"), device="cpu")
    scores = classify(_tone(16000, 1.5, 700.0))
    assert {s["label"] for s in scores} == set(LABELS)
