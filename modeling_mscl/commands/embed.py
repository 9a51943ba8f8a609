"""Embed a music library (a folder, a list of paths or a dataset) into a searchable folder.

    mscl embed INPUT OUT --model DIR_OR_REPO_ID [--windows] [--parquet]
        [--audio-column audio] [--split train] [--id-column ID]
        [--batch-size 256] [--num-workers N] [--device cuda] [--dtype bfloat16]
        [--num-shards N --shard-index I]
    mscl embed OUT --merge SHARD_DIR ...
    accelerate launch -m modeling_mscl.commands.embed INPUT OUT --model ...

INPUT is a folder (every audio file under it), a text file of paths, a dataset saved with
``save_to_disk`` or a Hub dataset name. OUT is a ``datasets`` folder (``load_from_disk``)
with one row per file: its path (or id), duration, sampling rate and clip embedding (what
``MSCLModel.embed_audio`` gives); files that cannot be decoded are listed in
``OUT/report.json``. The job resumes: a re-run embeds only the files not yet in OUT, and a
folder embedded with one model is never extended with another. ``--num-shards N
--shard-index I`` runs the I-th of N slices into ``OUT/shard-ii-of-NN``; ``--merge`` joins
the finished slices into OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from modeling_mscl._help import HelpFormatter, first_paragraph, quiet_libraries


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl embed``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("input", nargs="?", help="audio folder, list of paths, or dataset")
    parser.add_argument("output_dir", type=Path, help="the library folder")
    parser.add_argument("--model", help="encoder folder or Hub id")
    parser.add_argument("--audio-column", default="audio", help="a dataset's audio column")
    parser.add_argument("--split", help="a dataset's split (needed when it has several)")
    parser.add_argument("--id-column", help="a dataset's row ids (default: the row number)")
    parser.add_argument("--windows", action="store_true", help="keep the window embeddings")
    parser.add_argument(
        "--output",
        choices=("pooler_output", "audio_embeds"),
        default="pooler_output",
        help="the 1280-d pooled feature or the 512-d projection",
    )
    parser.add_argument("--parquet", action="store_true", help="OUT/embeddings.parquet")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per encoder call")
    parser.add_argument("--num-workers", type=int, help="decoding workers (default: CPUs / 2)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: the model's, CPU)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder precision"
    )
    parser.add_argument("--shard-size", type=int, default=64, help="files per resumable shard")
    parser.add_argument("--num-shards", type=int, default=1, help="split the job into N slices")
    parser.add_argument("--shard-index", type=int, default=0, help="this job's slice, 0..N-1")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="SHARD_DIR",
        help="merge these finished slices into OUT (no INPUT, no model)",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bars, ours or the libraries' (nor their INFO lines)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """Embed the input named in ``argv``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # torch, datasets and the model only now: `--help` stays fast.
    from modeling_mscl.library import embed_library, merge_libraries

    if args.no_progress:
        quiet_libraries()

    started = time.perf_counter()
    if args.merge or args.input is None:
        if not args.merge or args.input is not None:
            parser.error("give INPUT OUT --model M to embed, or OUT --merge SHARD_DIR ...")
        library = merge_libraries(args.merge, args.output_dir, parquet=args.parquet)
        _summary(args.output_dir, library, None)
        return 0
    if not args.model:
        parser.error("--model is required to embed")
    library = embed_library(
        args.input,
        args.output_dir,
        args.model,
        audio_column=args.audio_column,
        split=args.split,
        id_column=args.id_column,
        windows=args.windows,
        output=args.output,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        shard_size=args.shard_size,
        parquet=args.parquet,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        progress=not args.no_progress,
    )
    if library is not None:  # the first process of a multi-process run reports
        out = args.output_dir
        if args.num_shards > 1:
            from modeling_mscl.chunk_shards import shard_dir

            out = shard_dir(out, args.shard_index, args.num_shards)
        _summary(out, library, time.perf_counter() - started)
    return 0


def _summary(folder: Path, library, seconds: float | None) -> None:
    from modeling_mscl.library import REPORT_FILE

    report = json.loads((folder / REPORT_FILE).read_text())
    line = f"{folder}: {report['embedded']} files ({report['audio_hours']:.2f} h of audio)"
    if seconds is not None:
        line += f", this run {seconds:.1f} s"
    print(f"{line}; {len(report['skipped'])} skipped (see {folder / REPORT_FILE})")


if __name__ == "__main__":
    sys.exit(main())
