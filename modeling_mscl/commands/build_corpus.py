"""Build the offline corpus: rendered multitrack songs (mixture + 4 stems) and a note set.

    mscl corpus --out data_cache/corpus                      # the default corpus
    mscl corpus --out data_cache/mine --midi-dir ~/midi      # your MIDI files

Needs the ``corpus`` extra (pretty_midi, music21, pyfluidsynth) and the system packages
libfluidsynth3 and mma (``apt-get install libfluidsynth3 mma``; in a checkout, ``make
system-deps``). Re-running resumes an interrupted build.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from modeling_mscl._help import HelpFormatter, plain_text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl corpus``."""
    p = argparse.ArgumentParser(description=plain_text(__doc__), formatter_class=HelpFormatter)
    p.add_argument("--out", default="data_cache/corpus", help="output folder")
    p.add_argument("--num-songs", type=int, default=200, help="songs of the synthetic corpus")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="song length (default 30; with --midi-dir: the whole file)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the songs' plans and renders")
    p.add_argument("--soundfont", default=None, help=".sf2/.sf3 (default: pretty_midi's TimGM6mb)")
    p.add_argument("--midi-dir", default=None, help="render this MIDI folder instead")
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--no-notes", action="store_true", help="skip the NSynth-like note set")
    p.add_argument("--format", default="flac", choices=["flac", "wav"], help="audio files")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments of ``mscl corpus``, checked."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.num_songs < 1 or args.workers < 1:
        p.error("--num-songs and --workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the corpus described by ``argv`` and print its sizes; returns the exit status."""
    args = parse_args(argv)
    from modeling_mscl.corpora.midi_folder import build_midi_folder_corpus
    from modeling_mscl.corpora.synthetic import build_default_corpus

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    if args.midi_dir:
        built = {
            "tracks": build_midi_folder_corpus(
                args.midi_dir,
                args.out,
                args.soundfont,
                args.seconds,
                args.seed,
                args.workers,
                ext=args.format,
            )
        }
    else:
        built = build_default_corpus(
            args.out,
            args.num_songs,
            30.0 if args.seconds is None else args.seconds,
            args.seed,
            args.soundfont,
            args.workers,
            notes=not args.no_notes,
            ext=args.format,
        )
    elapsed = time.perf_counter() - started
    sizes = {name: {split: len(ds) for split, ds in dd.items()} for name, dd in built.items()}
    print(json.dumps({"out": args.out, "seconds_elapsed": round(elapsed, 1), "sizes": sizes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
