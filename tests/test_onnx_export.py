"""`mscl export-onnx`: the encoder as an ONNX file, run by ONNX Runtime on the CPU, gives the
features of the package's own eval path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mscl import MSCLForPreTraining, MSCLModel
from modeling_mscl.cli import main as mscl

from .conftest import tiny_config

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")


def _relative_error(actual: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.numpy()
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_export_onnx_command_matches_the_eager_encoder(tmp_path, capsys):
    torch.manual_seed(0)
    # A pre-training folder: its encoder is what gets exported.
    MSCLForPreTraining(tiny_config()).save_pretrained(tmp_path / "pretrained")
    out = tmp_path / "onnx" / "encoder.onnx"
    assert mscl(["export-onnx", str(tmp_path / "pretrained"), str(out)]) == 0
    assert "encoder.onnx" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["encoder.onnx"]  # one file

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_features"]
    assert [o.name for o in session.get_outputs()] == ["pooler_output", "audio_embeds"]
    model = MSCLModel.from_pretrained(tmp_path / "pretrained").eval()
    for batch in (1, 5):  # a batch size other than the export's
        x = torch.randn(batch, 98, 64, generator=torch.Generator().manual_seed(batch)) * 40
        pooled, embeds = session.run(None, {"input_features": x.numpy()})
        with torch.no_grad():
            eager = model(x)  # the fused eval path
        assert pooled.shape == (batch, model.config.encoder_hidden_size)
        assert _relative_error(pooled, eager.pooler_output) <= 1e-4
        assert _relative_error(embeds, eager.audio_embeds) <= 1e-4
    # The export left the model it read exact.
    with torch.no_grad():
        again = MSCLModel.from_pretrained(tmp_path / "pretrained").eval()(x).pooler_output
    torch.testing.assert_close(again, eager.pooler_output)


def test_export_onnx_names_a_folder_without_a_model(tmp_path, capsys):
    # One line naming the folder (the `mscl` convention); --debug gives the traceback.
    assert mscl(["export-onnx", str(tmp_path), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "no config.json" in err and str(tmp_path) in err and err.count("\n") == 1, err
    with pytest.raises(FileNotFoundError, match="no config.json"):
        mscl(["export-onnx", str(tmp_path), str(tmp_path / "x.onnx"), "--debug"])
    assert not (tmp_path / "x.onnx").exists()
