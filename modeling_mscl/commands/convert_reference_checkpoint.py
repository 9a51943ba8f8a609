"""Convert a TensorFlow checkpoint of the MSCL reference implementation to an MSCL folder.

    mscl convert models/drums/checkpoint-10 mscl-drums --sources drums

The checkpoint is a prefix (the ``.index`` and ``.data-*`` files next to it) or a folder
with a ``checkpoint`` file. The output holds `MSCLForPreTraining` (load the encoder with
`AutoModel.from_pretrained(output)`) and the feature extractor. Needs TensorFlow
(``pip install 'tensorflow-cpu==2.15.*'``, which needs numpy<2: an environment of its own).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modeling_mscl._help import HelpFormatter, first_paragraph

_SOURCES = ("vocals", "drums", "bass", "other")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl convert``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint prefix or folder")
    parser.add_argument("output_dir", help="folder to write the MSCL model to")
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=_SOURCES,
        default=None,
        help="sources the checkpoint was trained with (recorded for the model card)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments of ``mscl convert``."""
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Convert the checkpoint named in ``argv``; returns the exit status."""
    args = parse_args(argv)
    from modeling_mscl.convert import convert_reference_checkpoint

    out = convert_reference_checkpoint(args.checkpoint, args.output_dir, sources=args.sources)
    print(f"Converted {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
