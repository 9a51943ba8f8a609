"""Push an MSCL encoder or probe head to the Hugging Face Hub with a rendered model card.

    mscl push encoder runs/mscl/encoder --repo-id you/mscl-b0 --dry-run
    mscl push probe-head runs/probes/mtat --repo-id you/mscl-b0-mtat \\
        --base-model you/mscl-b0

The token comes from `HF_TOKEN` or `hf auth login` and is never printed; `HF_ENDPOINT`
selects another Hub. huggingface_hub uploads only the files that differ from the
branch's, and makes no commit when none does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from modeling_mscl._help import HelpFormatter, first_paragraph

if TYPE_CHECKING:
    from modeling_mscl.hub import PushResult


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl push``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("kind", choices=("encoder", "probe-head"), help="what the folder holds")
    parser.add_argument("folder", help="folder written by save_pretrained")
    parser.add_argument("--repo-id", required=True, help="'namespace/name' (or 'name')")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (default main)")
    parser.add_argument(
        "--commit-message",
        default=None,
        help="commit message (default: 'Upload MSCL encoder' or '... probe head')",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the files and print the card; send nothing"
    )
    parser.add_argument(
        "--results",
        nargs="+",
        default=None,
        help="probe_results.json files written by export_probe (default: the folder's)",
    )
    parser.add_argument(
        "--training-args",
        default=None,
        help="a run's training_args.json (default: the folder's; probe_args.json for a head)",
    )
    parser.add_argument("--dataset", nargs="+", default=None, help="datasets for the metadata")
    parser.add_argument("--license", default="apache-2.0", help="license of the model card")
    parser.add_argument(
        "--base-model", default=None, help="Hub id of the encoder under a probe head"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments of ``mscl push``."""
    return build_parser().parse_args(argv)


def report(result: PushResult) -> str:
    """Human-readable summary; it holds no token."""
    lines = []
    where = f"{result.repo_id} (revision {result.revision})"
    if result.dry_run:
        lines.append(f"Dry run, nothing sent. {len(result.files)} files would go to {where}:")
    else:
        lines.append(
            f"Pushed {len(result.uploaded)} files to {where} (huggingface_hub uploads only "
            f"the changed ones): {result.commit_url}"
        )
    width = max(len(name) for name, _ in result.files)
    for name, size in result.files:
        lines.append(f"    {name:<{width}}  {_size(size):>9}")
    if result.dry_run:
        lines += ["", "----- README.md -----", result.card.rstrip()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Push the folder named in ``argv`` (or list it with --dry-run); returns the exit status."""
    args = parse_args(argv)
    from modeling_mscl.hub import push_encoder, push_probe_head

    training_args = None
    if args.training_args is not None:
        from modeling_mscl.hub import read_training_args

        training_args = read_training_args(args.training_args)
    common = dict(
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        results=args.results,
        training_args=training_args,
        datasets=args.dataset,
        license=args.license,
    )
    if args.kind == "encoder":
        if args.base_model is not None:
            print("--base-model only applies to probe heads; ignored", file=sys.stderr)
        result = push_encoder(args.folder, args.repo_id, **common)
    else:
        result = push_probe_head(args.folder, args.repo_id, base_model=args.base_model, **common)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
