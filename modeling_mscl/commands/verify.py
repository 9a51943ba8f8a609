"""Check a chunk set's files against the sizes and checksums recorded when it was built.

    mscl verify CHUNK_SET_DIR [...] [--quick]
    mscl verify CHUNK_SET_DIR --add-manifest

Every file the chunk set's manifest lists (``chunk_set.json``: the Arrow files, the
dataset metadata, the feature extractor) is read and its SHA-256 compared; a missing,
truncated, changed or unlisted file is named. ``--quick`` checks presence and sizes only
(what pre-training does at every start). ``--add-manifest`` records the files of a chunk
set made by an earlier version of modeling_mscl, which had none: whoever runs it vouches
that the files are as they were built. Exit status 0: all good; 1: a bad file; 2: not a
chunk set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_mscl._help import HelpFormatter, first_paragraph


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl verify``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument(
        "folders", type=Path, nargs="+", metavar="CHUNK_SET_DIR", help="chunk sets to check"
    )
    parser.add_argument(
        "--quick", action="store_true", help="check the files' presence and sizes only"
    )
    parser.add_argument(
        "--add-manifest",
        action="store_true",
        help="record the files, checksums and fingerprint of a chunk set that has none",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Verify the chunk sets named in ``argv``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # datasets and pyarrow only now: `--help` stays fast.
    from modeling_mscl.chunk_set import add_manifest, verify_chunk_set

    status = 0
    for folder in args.folders:
        try:
            if args.add_manifest:
                fingerprint = add_manifest(folder)
                print(f"{folder}: manifest recorded, fingerprint {fingerprint}")
                continue
            problems = verify_chunk_set(folder, full=not args.quick)
        except (OSError, ValueError) as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            status = max(status, 2)
            continue
        for problem in problems:
            print(f"BAD {problem}")
        if problems:
            status = max(status, 1)
        else:
            checked = "sizes" if args.quick else "sizes and checksums"
            print(f"OK {folder}: every file as built ({checked})")
    return status


if __name__ == "__main__":
    sys.exit(main())
