"""Separate a dataset or folder of music into MSCL chunk rows (log-mels + presence flags).

    mscl separate INPUT OUTPUT_DIR [--separator demucs|oracle] [--model htdemucs]
        [--repo DIR] [--device cuda] [--threshold 0.01] [--batch-size 4] [--demucs-batch N] [--num-proc N]
        [--num-shards N --shard-index I]
    mscl separate OUTPUT_DIR --merge SHARD_DIR ...
    mscl separate INPUT OUTPUT_DIR --num-mel-bins 32     # another front end

INPUT is a dataset saved with ``save_to_disk`` (track rows), a MUSDB18-HQ-style stems
folder (``--separator oracle``), or a plain audio folder (labels from subfolders). The
chunk dataset, ``report.json`` (skipped files) and resumable ``shards/`` go to OUTPUT_DIR.
With ``--num-shards N --shard-index I`` the job takes the I-th of N deterministic slices of
every split (one job of an array, or one machine) into ``OUTPUT_DIR/shard-ii-of-NN``;
``--merge`` then concatenates the N finished shard folders into one chunk set, the one a
single run would have made. The log-mels come from the default front end
(``MSCLFeatureExtractor()``: 64 mel bands), from ``--preprocessor FOLDER`` (a folder or Hub
id holding ``preprocessor_config.json``, e.g. a model's) or from the default with the
fields given (``--num-mel-bins``); pre-training then builds a model for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modeling_mscl._files import ForeignFolderError
from modeling_mscl._help import HelpFormatter, first_paragraph, quiet_libraries
from modeling_mscl.run_lock import RunLockedError
from modeling_mscl.stems import DEFAULT_THRESHOLD


def _load_tracks(path: Path, separator: str):
    """A saved dataset, else a stems folder (oracle) or an audio folder (demucs)."""
    from datasets import load_from_disk

    from modeling_mscl.chunk_manifest import saved_dataset_files
    from modeling_mscl.corpora import load_audio_folder, load_stems_folder

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        saved_dataset_files(path)  # the paths its files name stay inside it, or a named error
        return load_from_disk(str(path))
    if separator == "oracle":
        return load_stems_folder(path)
    return load_audio_folder(path)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl separate``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument(
        "input", type=Path, nargs="?", help="saved dataset, stems folder or audio folder"
    )
    parser.add_argument(
        "output_dir", type=Path, help="the chunk set (with --num-shards: the shards' root)"
    )
    parser.add_argument(
        "--separator", choices=("demucs", "oracle"), default="demucs",
        help="demucs: separate the mixtures; oracle: read the stems of a stems folder",
    )  # fmt: skip
    parser.add_argument("--model", default="htdemucs", help="Demucs model name or signature")
    parser.add_argument("--repo", type=Path, help="local folder with the Demucs weights")
    parser.add_argument(
        "--trust-repo",
        action="store_true",
        help="allow unpickling the --repo (or hf://) model files: they can run code",
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: CUDA if present)")
    parser.add_argument("--segment", type=float, help="Demucs segment in seconds")
    parser.add_argument(
        "--overlap", type=float, default=0.25, help="Demucs: overlap of its segments (0-1)"
    )
    parser.add_argument(
        "--shifts", type=int, default=0, help="Demucs: random shifts averaged (slower, better)"
    )
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD,
        help="presence: a stem counts in a chunk above this mean absolute amplitude",
    )  # fmt: skip
    front = parser.add_argument_group("front end (default: MSCLFeatureExtractor(), 64 mel bands)")
    front.add_argument(
        "--preprocessor", metavar="FOLDER",
        help="a folder or Hub id with preprocessor_config.json (a model's, say)",
    )  # fmt: skip
    front.add_argument("--num-mel-bins", type=int, help="mel bands of the default front end")
    parser.add_argument("--batch-size", type=int, default=4, help="tracks per map call")
    parser.add_argument(
        "--demucs-batch", type=int, help="tracks per apply_model call (default: 4 GPU, 1 CPU)"
    )
    parser.add_argument("--shard-size", type=int, default=64, help="tracks per resumable shard")
    parser.add_argument("--num-proc", type=int, help="worker processes (one per GPU)")
    parser.add_argument("--no-keep-shards", action="store_true", help="delete shards at the end")
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bars, ours or the libraries' (nor their INFO lines)",
    )  # fmt: skip
    parser.add_argument(
        "--num-shards", type=int, default=1, help="split the job; writes OUTPUT_DIR/shard-ii-of-NN"
    )
    parser.add_argument("--shard-index", type=int, default=0, help="this job's shard, 0..N-1")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="SHARD_DIR",
        help="merge these finished shard folders into OUTPUT_DIR (no INPUT, no separation)",
    )
    return parser


def front_end(args: argparse.Namespace):
    """The feature extractor the options name: ``--preprocessor``, else the default with
    ``--num-mel-bins`` (refused together: one source of the front end)."""
    from modeling_mscl.feature_extraction_mscl import load_feature_extractor

    if args.preprocessor and args.num_mel_bins is not None:
        raise ValueError("give --preprocessor or --num-mel-bins, not both")
    if args.preprocessor:
        return load_feature_extractor(args.preprocessor)
    return load_feature_extractor(num_mel_bins=args.num_mel_bins)


def main(argv: list[str] | None = None) -> int:
    """Separate the input named in ``argv`` into a chunk set; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_progress:
        quiet_libraries()
    try:
        return _run(parser, args)
    except (RunLockedError, ForeignFolderError) as err:
        # Another run holds the output, or it holds files not the package's: untouched.
        print(f"separate: error: {err}", file=sys.stderr)
        return 1


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Separate or merge as ``args`` say."""
    # The heavy parts (datasets, torch, Demucs) only now: ``--help`` stays fast.
    from modeling_mscl.chunk_shards import merge_chunk_sets, shard_dir
    from modeling_mscl.chunks import prepare_chunks
    from modeling_mscl.stems import DemucsSeparator, OracleSeparator

    if args.merge or args.input is None:
        if not args.merge or args.input is not None:
            parser.error("give INPUT OUTPUT_DIR to separate, or OUTPUT_DIR --merge SHARD_DIR ...")
        merge_chunk_sets(args.merge, args.output_dir)
        _print_report(args.output_dir)
        return 0
    fe = front_end(args)
    out = args.output_dir
    if args.num_shards != 1:
        out = shard_dir(args.output_dir, args.shard_index, args.num_shards)

    if args.separator == "oracle":
        separator = OracleSeparator()
    else:
        separator = DemucsSeparator(
            model=args.model,
            repo=args.repo,
            trust_repo=args.trust_repo,
            device=args.device,
            segment=args.segment,
            overlap=args.overlap,
            shifts=args.shifts,
            batch_size=args.demucs_batch,
        )
    tracks = _load_tracks(args.input, args.separator)
    chunks = prepare_chunks(
        tracks,
        separator,
        out,
        batch_size=args.batch_size,
        num_proc=args.num_proc,
        threshold=args.threshold,
        shard_size=args.shard_size,
        device=args.device,
        keep_shards=not args.no_keep_shards,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        feature_extractor=fe,
        progress=not args.no_progress,
    )
    print(chunks)
    _print_report(out)
    return 0


def _print_report(folder: Path) -> None:
    report = json.loads((folder / "report.json").read_text())
    for split, info in report["splits"].items():
        print(
            f"{split}: {info['tracks']} tracks, {info['chunks']} chunks, "
            f"{len(info['skipped'])} skipped (see {folder / 'report.json'})"
        )


if __name__ == "__main__":
    sys.exit(main())
