"""Convert a TensorFlow checkpoint of the MSCL reference implementation to an MSCL folder.

    mscl convert models/drums/checkpoint-10 mscl-drums --sources drums

The checkpoint is a prefix (the ``.index`` and ``.data-*`` files next to it) or a folder
with a ``checkpoint`` file. The output holds `MSCLForPreTraining` (load the encoder with
`AutoModel.from_pretrained(output)`) and the feature extractor. Needs TensorFlow
(``pip install -c constraints-tf.txt tensorflow-cpu``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modeling_mscl.convert import convert_reference_checkpoint

_SOURCES = ("vocals", "drums", "bass", "other")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint prefix or folder")
    parser.add_argument("output_dir", help="folder to write the MSCL model to")
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=_SOURCES,
        default=None,
        help="sources the checkpoint was trained with (recorded for the model card)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Convert the checkpoint named in ``argv``; returns the exit status."""
    args = parse_args(argv)
    out = convert_reference_checkpoint(args.checkpoint, args.output_dir, sources=args.sources)
    print(f"Converted {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
