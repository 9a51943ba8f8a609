"""Search an embedded library for the files nearest to a query (cosine similarity).

    mscl search OUT QUERY [-k 10] [--model DIR_OR_REPO_ID] [--index auto|numpy|faiss]

OUT is a folder made by ``mscl embed``. QUERY is the path (or id) of one of its rows, or
an audio file, embedded with the library's model (the one recorded in OUT, or --model).
Prints one line per neighbour, best first: rank, score, path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_mscl._help import HelpFormatter, first_paragraph


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl search``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("library", type=Path, help="a folder made by mscl embed")
    parser.add_argument("query", help="a row's path or id, or an audio file")
    parser.add_argument("-k", type=int, default=10, help="how many neighbours")
    parser.add_argument("--model", help="the library's model, if it moved since")
    parser.add_argument("--device", help="where to embed an audio query")
    parser.add_argument(
        "--index", choices=("auto", "numpy", "faiss"), default="auto",
        help="exact numpy search or a faiss index (auto: faiss for 20,000 rows and more, "
        "when installed)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the neighbours of the query named in ``argv``; returns the exit status."""
    args = build_parser().parse_args(argv)
    # torch, datasets and the model only now: `--help` stays fast.
    from modeling_mscl.library import iter_hits, search

    hits = search(
        args.library, args.query, k=args.k, model=args.model, device=args.device, index=args.index
    )
    for line in iter_hits(hits):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
