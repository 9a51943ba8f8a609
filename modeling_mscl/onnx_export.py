"""The encoder as an ONNX graph, for serving where torch is not installed.

The graph takes log-mel windows `input_features` `(batch, frames, num_mel_bins)` (what
`MSCLFeatureExtractor(..., return_windows=True)` gives) and returns `pooler_output`
`(batch, encoder_hidden_size)` and `audio_embeds` `(batch, projection_dim)`; the batch is
dynamic, the window length fixed at export. It is written with torch's ONNX exporter
(`torch.onnx.export`, through `torch.export`), which needs the `onnx` extra.

It is not a speed-up: ONNX Runtime on the CPU runs it at about the speed of the package's
own eval path (see docs/benchmarks.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ._files import atomic_path
from .long_audio_mscl import eval_mode
from .modeling_mscl import MSCLModel

__all__ = ["ONNX_INPUTS", "ONNX_OUTPUTS", "export_onnx"]

ONNX_INPUTS = ("input_features",)
ONNX_OUTPUTS = ("pooler_output", "audio_embeds")


class _Features(nn.Module):
    """The encoder's two feature outputs as a plain tuple (what an exported graph returns)."""

    def __init__(self, model: MSCLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_features, return_dict=True)
        return out.pooler_output, out.audio_embeds


def export_onnx(
    encoder: str | os.PathLike | MSCLModel,
    output: str | os.PathLike,
    window_frames: int = 98,
    opset_version: int | None = None,
) -> Path:
    """Write the encoder of ``encoder`` (a saved MSCL folder, encoder or pre-training model,
    or an [`MSCLModel`]) to the ONNX file ``output``; returns its path.

    ``window_frames`` is the window length the graph takes (98 frames, ~1 s, is what the
    feature extractor cuts). The file is written whole or not at all.
    """
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError as err:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'modeling-mscl[onnx]'"
        ) from err
    if isinstance(encoder, MSCLModel):
        model = encoder
    else:
        folder = Path(encoder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json: is it a saved MSCL folder?")
        model = MSCLModel.from_pretrained(folder)
    if window_frames < 32:
        raise ValueError(
            f"window_frames must be >= 32 (the encoder halves time 5 times), got {window_frames}"
        )
    example = torch.zeros(2, window_frames, model.config.num_mel_bins, dtype=model.dtype)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model), torch.no_grad():
        program = torch.onnx.export(
            _Features(model).eval(),  # the wrapper too: the exporter warns otherwise
            (example,),
            dynamo=True,
            input_names=list(ONNX_INPUTS),
            output_names=list(ONNX_OUTPUTS),
            dynamic_shapes={"input_features": {0: torch.export.Dim("batch")}},
            opset_version=opset_version,
            verbose=False,
        )
        with atomic_path(output) as tmp:
            # One self-contained file: the weights inside the graph (an encoder is far
            # below protobuf's 2 GB limit).
            program.save(str(tmp), external_data=False)
    return output
