"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`, the feature-extraction
saving mixin) run against the MSCL classes with tiny configs.

The test files are not in this repository: at test time they come from the source
distribution of the pinned transformers version (`pip download --no-binary :all:`), cached
under `~/.cache/modeling_mscl` (`MSCL_CACHE_DIR` elsewhere). That distribution ships
`tests/*.py` without the sub-packages three of them import (export, generation and
configuration helpers); small stand-ins written here take their place: no export or
generation tests run from them, and the configuration kwargs are ours. Without network
and without a cached copy the module is skipped with the reason.

Conventions that cannot apply to a CNN audio encoder are skipped below with a one-line
reason each, as transformers' own ResNet and EfficientNet tests do. Slow (a few minutes):
`make test-slow` runs it; tests/conftest.py keeps the default run from even importing it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers

from modeling_mscl import (
    MSCLConfig,
    MSCLFeatureExtractor,
    MSCLForAudioClassification,
    MSCLForPreTraining,
    MSCLModel,
)

pytestmark = pytest.mark.slow

_PACKAGE = "mscl_transformers_common_tests"
# Stand-ins for the sub-packages that the source distribution's tests import but leave out.
_STAND_INS = {
    "exporters/test_export.py": (
        '"""Stand-in: the export tests are not in the source distribution."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/test_utils.py": (
        '"""Stand-in: the generation tests are not in the source distribution."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        '"""Stand-in: PretrainedConfig keyword arguments, each away from its default."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["MSCLModel"],\n'
        '    "finetuning_task": "audio-classification",\n'
        '    "tokenizer_class": "BertTokenizer",\n'
        '    "prefix": "mscl",\n'
        '    "bos_token_id": 7,\n'
        '    "eos_token_id": 8,\n'
        '    "pad_token_id": 9,\n'
        '    "sep_token_id": 10,\n'
        '    "task_specific_params": {"audio-classification": {}},\n'
        "}\n"
    ),
}


def _cache_dir() -> Path:
    root = os.environ.get("MSCL_CACHE_DIR") or Path.home() / ".cache" / "modeling_mscl"
    return Path(root) / f"transformers-{transformers.__version__}-tests"


def _common_tests() -> tuple[Path | None, str]:
    """The folder holding the common tests as package `_PACKAGE` (fetched and unpacked on
    first use), or None and why not."""
    cache = _cache_dir()
    package = cache / _PACKAGE
    if (package / "test_modeling_common.py").is_file():
        return cache, ""
    version = transformers.__version__
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
                + ["--quiet", "--dest", tmp, f"transformers=={version}"],
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as err:
            return None, f"cannot download the transformers {version} sdist: {err}"
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if not archives:
            return None, f"pip downloaded no transformers {version} sdist"
        staging = Path(tmp) / _PACKAGE
        staging.mkdir()
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts  # transformers-X/tests/NAME.py
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    source = archive.extractfile(member)
                    (staging / parts[2]).write_bytes(source.read() if source else b"")
        if not (staging / "test_modeling_common.py").is_file():
            return None, f"the transformers {version} sdist has no tests/test_modeling_common.py"
        (staging / "__init__.py").write_text("")
        for name, text in _STAND_INS.items():
            path = staging / name
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").write_text("")
            path.write_text(text)
        if package.exists():  # another process got there first
            return cache, ""
        staging.rename(package)
    return cache, ""


_ROOT, _WHY = _common_tests()
if _ROOT is None:
    pytest.skip(_WHY, allow_module_level=True)
sys.path.insert(0, str(_ROOT))
_modeling_common = importlib.import_module(f"{_PACKAGE}.test_modeling_common")
_config_common = importlib.import_module(f"{_PACKAGE}.test_configuration_common")
_fe_common = importlib.import_module(f"{_PACKAGE}.test_feature_extraction_common")
ModelTesterMixin = _modeling_common.ModelTesterMixin
ConfigTester = _config_common.ConfigTester
FeatureExtractionSavingTestMixin = _fe_common.FeatureExtractionSavingTestMixin

_TINY = dict(
    width_coefficient=0.25,
    depth_coefficient=0.25,
    projection_dim=16,
    classifier_hidden_size=8,
    top_channels=64,
    num_labels=3,
    drop_connect_rate=0.0,
    dropout_rate=0.0,
)
_FRAMES = 64
_STAGES = len(MSCLConfig().kernel_sizes)


class MSCLModelTester:
    """Tiny configs and inputs for the common tests."""

    def __init__(self, parent: unittest.TestCase, batch_size: int = 3) -> None:
        self.parent = parent
        self.batch_size = batch_size
        self.num_hidden_layers = _STAGES  # hidden states: the stem, then each stage
        self.seq_length = _FRAMES
        self.is_training = True

    def get_config(self) -> MSCLConfig:
        return MSCLConfig(**_TINY)

    def prepare_config_and_inputs_for_common(self) -> tuple[MSCLConfig, dict]:
        features = torch.randn(self.batch_size, _FRAMES, 64) * 40
        return self.get_config(), {"input_features": features}


@pytest.mark.filterwarnings("ignore")
class MSCLModelCommonTest(ModelTesterMixin, unittest.TestCase):
    """transformers' `ModelTesterMixin` on the encoder and its two heads."""

    all_model_classes = (MSCLModel, MSCLForAudioClassification, MSCLForPreTraining)
    has_attentions = False
    test_resize_embeddings = False
    test_torch_exportable = True

    def setUp(self) -> None:
        self.model_tester = MSCLModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=MSCLConfig,
            has_text_modality=False,
            common_properties=["num_mel_bins", "projection_dim"],
            # num_labels is saved as id2label, not under its own name.
            **{k: v for k, v in _TINY.items() if k != "num_labels"},
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if model_class is MSCLForPreTraining:
            # Contrast the crops with themselves reversed: same shape, different rows.
            features = inputs.pop("input_features")
            inputs.pop("labels", None)
            inputs["anchor_features"] = features
            inputs["positive_features"] = features.flip(0)
        elif return_labels and model_class is MSCLForAudioClassification:
            inputs["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
        return inputs

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self):
        # A CNN's hidden states are feature maps (batch, channels, time, mel), not
        # (batch, seq, hidden): checked here the way transformers' ResNet test does.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in (MSCLModel, MSCLForAudioClassification):
            model = model_class(config).eval()
            for flag in ("argument", "config"):
                with torch.no_grad():
                    if flag == "argument":
                        out = model(**inputs, output_hidden_states=True)
                    else:
                        model.config.output_hidden_states = True
                        out = model(**inputs)
                self.assertEqual(len(out.hidden_states), _STAGES + 1)
                self.assertEqual(out.hidden_states[0].shape[0], self.model_tester.batch_size)
                self.assertEqual(out.hidden_states[0].shape[2], _FRAMES // 2)  # the stem halves
            model.config.output_hidden_states = False

    @unittest.skip(
        reason="pre-training contrasts a batch's rows with each other: a row's loss and logits depend on the batch"
    )
    def test_batching_equivalence(self):
        pass

    @unittest.skip(
        reason="checkpointing runs over the encoder's blocks (MSCLEncoder._checkpointed), not transformers' GradientCheckpointingLayer"
    )
    def test_gradient_checkpointing_enable_disable(self):
        pass

    @unittest.skip(reason="no input embeddings: a CNN over log-mel features")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(
        reason="the seven-stage layout is kept whole in the tiny config (one block per stage)"
    )
    def test_num_layers_is_small(self):
        pass

    def _heads_only(self, name: str) -> None:
        # transformers skips its base models in training tests by its own model mapping,
        # which does not list MSCLModel: train the two heads, which return a loss.
        self.all_model_classes = (MSCLForAudioClassification, MSCLForPreTraining)
        getattr(ModelTesterMixin, name)(self)

    def test_training(self):
        self._heads_only("test_training")

    _NO_CHECKPOINTING_LAYER = (
        "these look for transformers' GradientCheckpointingLayer; the encoder checkpoints its "
        "blocks itself (same gradients: tests/test_transformers_conventions.py)"
    )

    @unittest.skip(reason=_NO_CHECKPOINTING_LAYER)
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason=_NO_CHECKPOINTING_LAYER)
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip(reason=_NO_CHECKPOINTING_LAYER)
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass


class MSCLFeatureExtractionCommonTest(FeatureExtractionSavingTestMixin, unittest.TestCase):
    """transformers' feature-extractor saving tests. The sequence mixin (padding raw
    feature sequences) is not run: this extractor takes waveforms and makes log-mels."""

    feature_extraction_class = MSCLFeatureExtractor

    @property
    def feat_extract_dict(self) -> dict:
        return {"feature_size": 40, "sampling_rate": 22050, "hop_length": 220, "fft_length": 512}
