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

from modeling_mscl.library import iter_hits, search


def main(argv: list[str] | None = None) -> int:
    """Print the neighbours of the query named in ``argv``; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", type=Path, help="a folder made by mscl embed")
    parser.add_argument("query", help="a row's path or id, or an audio file")
    parser.add_argument("-k", type=int, default=10, help="how many neighbours")
    parser.add_argument("--model", help="the library's model, if it moved since")
    parser.add_argument("--device", help="where to embed an audio query")
    parser.add_argument("--index", choices=("auto", "numpy", "faiss"), default="auto")
    args = parser.parse_args(argv)
    hits = search(
        args.library, args.query, k=args.k, model=args.model, device=args.device, index=args.index
    )
    for line in iter_hits(hits):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
