"""Probe a frozen MSCL encoder on downstream tasks.

    mscl probe --model runs/mscl/encoder --task corpus_genre \
        --task corpus_instruments --data corpus/songs --output results/probes.json \
        --markdown results/probes.md --export results/heads/mscl

``--model`` is a folder saved with ``save_pretrained`` (an encoder or a pre-training
model); ``--random-init`` probes a fresh encoder instead (``--config``: a config JSON or
folder; default: EfficientNet-B0). The data is a ``DatasetDict`` folder
(``--data``, from ``save_to_disk``), a loader and its root (``--loader mtat --root
...``), or a Hub dataset (``--dataset NAME_OR_PATH``: a Hub name or anything
``datasets.load_dataset`` reads, its audio a datasets ``Audio`` column or paths; string
or integer labels become one ``ClassLabel``). ``--audio-column`` and ``--label-column``
name the columns the tasks read. Results are merged into ``--output`` as
``{encoder: {"TASK@DATASET": result}}`` (the dataset as given: ``--dataset`` name,
``--data`` folder or ``LOADER:ROOT``), so several calls build one table and a task run on
other data never replaces a row; ``--markdown`` rewrites the table of everything in it.
``--task-arg name=NAME`` files a preset with other settings (or other labels) under a
name of its own. Each result records its dataset and the encoder's fingerprint.

The ``mtat``, ``nsynth`` and ``fma`` presets train as the authors' reference: raw
features, minibatches of 128, every epoch a fresh random-offset crop of every 4-s chunk
of every training clip (embedded by the frozen encoder then), early stopping on
validation accuracy. ``--crop-pool K`` embeds K crops per chunk once instead (cached,
cheaper over many epochs or runs); ``--standardize``, ``--monitor loss``,
``--head-batch-size 64`` and ``--train-sampling windows`` select this package's earlier
protocol field by field (``--task-arg FIELD=VALUE`` sets any other field).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modeling_mscl._choices import PROBE_PRESETS
from modeling_mscl._files import write_json_atomic
from modeling_mscl._help import HelpFormatter, first_paragraph, quiet_libraries

if TYPE_CHECKING:
    from modeling_mscl import MSCLFeatureExtractor, MSCLModel
    from modeling_mscl.probing import ProbeTask

# The probing stack (datasets, scikit-learn, the model classes) is imported where it is
# used, so that `mscl probe --help` does not wait for it.

LOADERS = ("mtat", "nsynth", "fma", "audio_folder", "stems_folder")


def load_encoder(args: argparse.Namespace) -> tuple[MSCLModel, MSCLFeatureExtractor, str]:
    """The encoder, its feature extractor and its display name."""
    from modeling_mscl import MSCLConfig, MSCLModel
    from modeling_mscl.feature_extraction_mscl import load_feature_extractor

    if args.random_init:
        config = MSCLConfig.from_pretrained(args.config) if args.config else MSCLConfig()
        torch.manual_seed(args.seed)
        return MSCLModel(config), load_feature_extractor(num_mel_bins=config.num_mel_bins), "random"
    model = MSCLModel.from_pretrained(args.model)
    folder = Path(args.model)
    fe = load_feature_extractor(args.model, model.config.num_mel_bins, missing_ok=True)
    # A pre-training run saves `RUN/encoder` and `RUN/pretraining`: the run names the model.
    generic = folder.name in ("encoder", "pretraining")
    return model, fe, folder.resolve().parent.name if generic else folder.name


def load_data(args: argparse.Namespace, tasks: Sequence[ProbeTask]) -> Any:
    """The ``DatasetDict`` of ``--data``, ``--dataset`` or ``--loader`` + ``--root``."""
    from modeling_mscl.probing import load_probe_dataset

    audio = {task.audio_column for task in tasks} or {"audio"}
    if len(audio) > 1:
        raise SystemExit(f"the tasks read different audio columns {sorted(audio)}")
    labels = sorted({task.label_column for task in tasks})
    if args.dataset:
        options = {"name": args.dataset_config} if args.dataset_config else {}
        return load_probe_dataset(args.dataset, audio.pop(), labels, **options)
    if args.data:
        # The same reader as --dataset: string labels become one ClassLabel, a missing
        # column names those that exist, a single Dataset is refused by name.
        folder = Path(args.data)
        if not any((folder / name).is_file() for name in ("dataset_dict.json", "state.json")):
            raise SystemExit(
                f"--data {folder}: not a folder written by save_to_disk (no "
                "dataset_dict.json); a probe reads a DatasetDict with 'train' and 'test' "
                "splits (--dataset reads other formats)"
            )
        return load_probe_dataset(folder, audio.pop(), labels)
    from modeling_mscl import corpora

    return getattr(corpora, f"load_{args.loader}")(args.root)


def dataset_identity(args: argparse.Namespace) -> str:
    """What the results call the data: the ``--dataset`` name (``NAME:CONFIG``), the
    ``--data`` folder or ``LOADER:ROOT``, paths normalised as given."""
    if args.dataset:
        return args.dataset + (f":{args.dataset_config}" if args.dataset_config else "")
    if args.data:
        return os.path.normpath(args.data)
    return f"{args.loader}:{os.path.normpath(args.root)}"


def result_key(task: ProbeTask, dataset: str) -> str:
    """The key of a result in ``--output``: the task and the dataset it was measured on."""
    return f"{task.name}@{dataset}"


def task_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs for :class:`ProbeTask` fields (``none`` for None).

    String fields take the text as it is; the others are read as JSON (numbers, true/false).
    """
    from modeling_mscl.probing import ProbeTask

    fields = {f.name for f in dataclasses.fields(ProbeTask)}
    text_fields = {"name", "label_column", "head", "audio_column", "train_sampling", "monitor"}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--task-arg expects FIELD=VALUE with FIELD in {sorted(fields)}")
        if value.lower() == "none":
            out[key] = None
        elif key in text_fields:
            out[key] = value
        else:
            out[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
    return out


def protocol_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`ProbeTask` fields set by the protocol flags (only those given)."""
    out: dict[str, Any] = {}
    if args.standardize:
        out["standardize"] = True
    if args.monitor is not None:
        out["monitor"] = args.monitor
    if args.head_batch_size is not None:
        out["batch_size"] = args.head_batch_size
    if args.train_sampling is not None:
        out["train_sampling"] = args.train_sampling
    if args.crop_pool is not None:
        out["crop_pool"] = args.crop_pool
    if args.audio_column is not None:
        out["audio_column"] = args.audio_column
    if args.label_column is not None:
        out["label_column"] = args.label_column
    return out


def merge_json(path: Path, encoder: str, results: dict[str, Any]) -> dict[str, Any]:
    """Merge ``results`` into ``path``'s ``{encoder: {task: result}}``, written atomically."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(encoder, {}).update(results)
    write_json_atomic(path, data, indent=1)
    return data


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mscl probe``."""
    parser = argparse.ArgumentParser(
        description=first_paragraph(__doc__), formatter_class=HelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="encoder folder (save_pretrained)")
    source.add_argument("--random-init", action="store_true", help="probe a fresh encoder")
    parser.add_argument("--config", help="config JSON/folder for --random-init (default B0)")
    parser.add_argument(
        "--task", action="append", required=True, choices=PROBE_PRESETS,
        help="a probe task (repeatable)",
    )  # fmt: skip
    parser.add_argument("--task-arg", action="append", default=[], help="FIELD=VALUE override")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="DatasetDict folder (load_from_disk)")
    data.add_argument("--loader", choices=LOADERS, help="a corpus loader (with --root)")
    data.add_argument(
        "--dataset", metavar="NAME_OR_PATH",
        help="a Hub dataset or anything datasets.load_dataset reads (train and test splits)",
    )  # fmt: skip
    parser.add_argument("--dataset-config", help="the --dataset configuration name")
    parser.add_argument("--root", help="dataset root for --loader")
    parser.add_argument("--audio-column", help="the audio column (default: the task's, 'audio')")
    parser.add_argument("--label-column", help="the label column (default: the task's)")
    parser.add_argument("--name", help="encoder name in the results (default: folder name)")
    parser.add_argument("--cache-dir", help="embedding cache folder")
    parser.add_argument("--output", help="results JSON to merge into")
    parser.add_argument("--markdown", help="write the results table of --output here")
    parser.add_argument("--export", help="save probe heads as MSCLForAudioClassification here")
    parser.add_argument("--max-clips", type=int, help="cap every split (quick runs)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="windows or crops per encoder batch"
    )
    protocol = parser.add_argument_group("probe protocol (default: the preset's)")
    protocol.add_argument("--head-batch-size", type=int, help="crops per head step (ref. 128)")
    protocol.add_argument(
        "--standardize", action="store_true", help="z-score features (the reference: raw)"
    )
    protocol.add_argument(
        "--monitor", choices=("accuracy", "loss"), help="early-stopping criterion"
    )
    protocol.add_argument(
        "--train-sampling", choices=("chunks", "windows"),
        help="chunks: a random crop of every 4-s chunk per epoch; windows: precomputed grid",
    )  # fmt: skip
    protocol.add_argument(
        "--crop-pool", type=int, metavar="K",
        help="embed K random crops per chunk once and draw among them (default: fresh crops)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the heads and crops")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars, ours or the libraries' (nor their INFO lines)",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments of ``mscl probe``, checked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.loader and not args.root:
        parser.error("--loader needs --root")
    if args.dataset_config and not args.dataset:
        parser.error("--dataset-config needs --dataset")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probes, print their table rows and write the files asked; returns the exit status."""
    args = parse_args(argv)
    if args.no_progress:
        quiet_libraries()
    from modeling_mscl.probing import export_probe, get_task, markdown_row, results_table
    from modeling_mscl.probing import run_probe as run_task

    model, fe, name = load_encoder(args)
    name = args.name or name
    model.to(args.device).eval()
    overrides = {**task_overrides(args.task_arg), **protocol_overrides(args)}
    tasks = [get_task(task_name, **overrides) for task_name in args.task]
    names = [task.name for task in tasks]
    if len(set(names)) < len(names):
        raise SystemExit(
            f"several tasks would be filed under one name ({names}): give each its own "
            "--task-arg name=... in separate calls"
        )
    dataset = load_data(args, tasks)
    identity = dataset_identity(args)
    results: dict[str, Any] = {}
    for task in tasks:
        result = run_task(
            model, task, dataset, cache_dir=args.cache_dir, feature_extractor=fe,
            batch_size=args.batch_size, max_clips=args.max_clips, seed=args.seed,
            progress=not args.no_progress, dataset_name=identity,
        )  # fmt: skip
        results[result_key(task, identity)] = result.to_dict()
        if args.export:
            out = Path(args.export) / task.name if len(tasks) > 1 else Path(args.export)
            export_probe(model, result, out, fe)
        print(markdown_row(name, result), flush=True)
    if args.output:
        everything = merge_json(Path(args.output), name, results)
        if args.markdown:
            Path(args.markdown).write_text(results_table(everything) + "\n")
    elif args.markdown:
        Path(args.markdown).write_text(results_table({name: results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
