"""Write a saved encoder to an ONNX file, for serving where torch is not installed.

    mscl export-onnx mscl-encoder encoder.onnx

Input `input_features` (batch, frames, mel): log-mel windows from the folder's feature
extractor (`return_windows=True`); outputs `pooler_output` and `audio_embeds`; the batch
is dynamic. Needs the `onnx` extra (onnx, onnxscript; onnxruntime to run the file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modeling_mscl._help import HelpFormatter, first_paragraph


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl export-onnx``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("encoder_dir", help="saved MSCL folder (encoder or pre-training model)")
    parser.add_argument("output", help="ONNX file to write")
    parser.add_argument(
        "--window-frames",
        type=int,
        default=98,
        help="frames per window the graph takes (~1 s, the extractor's windows)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments of ``mscl export-onnx``."""
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Export the encoder named in ``argv``; returns the exit status."""
    args = parse_args(argv)
    from modeling_mscl.onnx_export import export_onnx  # only now: `--help` stays fast

    out = export_onnx(args.encoder_dir, args.output, args.window_frames, args.opset)
    print(f"Exported {args.encoder_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
