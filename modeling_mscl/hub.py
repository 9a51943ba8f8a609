"""Auto-class registration, model cards, and pushing MSCL models to the Hugging Face Hub.

A pushed repo holds what ``from_pretrained`` needs where this package is not installed:
the weights, ``config.json`` with ``auto_map``, the feature extractor's
``preprocessor_config.json``, the Hub code files, and a ``README.md`` rendered from the
templates in ``model_cards/`` with the run's training arguments and probe results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
)

from .configuration_mscl import MSCLConfig
from .feature_extraction_mscl import MSCLFeatureExtractor
from .modeling_mscl import MSCLForAudioClassification, MSCLForPreTraining, MSCLModel
from .package_data import resource_dir

__all__ = [
    "CARD_KINDS",
    "PAPER_BIBTEX",
    "ProbeResult",
    "PushResult",
    "find_probe_results",
    "push_encoder",
    "push_probe_head",
    "read_probe_results",
    "read_training_args",
    "register_auto_classes",
    "render_model_card",
]

logger = logging.getLogger(__name__)

CARD_KINDS = ("encoder", "probe_head")
PAPER_BIBTEX = """@inproceedings{garoufis2023multisource,
  title         = {Multi-Source Contrastive Learning from Musical Audio},
  author        = {Garoufis, Christos and Zlatintsi, Athanasia and Maragos, Petros},
  booktitle     = {Proceedings of the Sound and Music Computing Conference (SMC)},
  year          = {2023},
  eprint        = {2302.07077},
  archivePrefix = {arXiv}
}"""
_TAGS = ["audio", "music", "contrastive-learning", "self-supervised-learning", "mscl"]
_ENCODER_ARCHITECTURES = {"MSCLModel", "MSCLForPreTraining"}
_HEAD_ARCHITECTURES = {"MSCLForAudioClassification"}
# Training-argument keys that hold local paths: they mean nothing on the Hub and may leak
# a user's directory layout, so the card leaves them out.
_PATH_KEY = re.compile(r"(^|_)(dir|path|file|folder|root)s?($|_)")


def register_auto_classes() -> None:
    """Register the MSCL classes with transformers' Auto classes (idempotent).

    In-process registration makes ``AutoModel.from_pretrained(folder)`` work while this
    package is imported; ``register_for_auto_class`` makes ``save_pretrained`` write
    ``auto_map`` and copy the Hub code files, so the folder also loads elsewhere with
    ``trust_remote_code=True``.
    """
    AutoConfig.register(MSCLConfig.model_type, MSCLConfig, exist_ok=True)
    AutoFeatureExtractor.register(MSCLConfig, MSCLFeatureExtractor, exist_ok=True)
    AutoModel.register(MSCLConfig, MSCLModel, exist_ok=True)
    AutoModelForPreTraining.register(MSCLConfig, MSCLForPreTraining, exist_ok=True)
    AutoModelForAudioClassification.register(MSCLConfig, MSCLForAudioClassification, exist_ok=True)
    MSCLConfig.register_for_auto_class("AutoConfig")
    MSCLFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    MSCLModel.register_for_auto_class("AutoModel")
    MSCLForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    MSCLForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")


# ---------------------------------------------------------------------- run information


@dataclass(frozen=True)
class ProbeResult:
    """Scalar metrics of one downstream task (e.g. a frozen probe on MagnaTagATune).

    Attributes:
        task (`str`): Task name, e.g. `"magnatagatune"` or `"instrument_family"`.
        metrics (`dict[str, float]`): Finite scalar metrics, e.g. `{"roc_auc": 0.89}`.
        dataset (`str`, *optional*): Dataset name or Hub id the task was measured on.
        split (`str`, *optional*): Evaluation split, e.g. `"test"`.
        head (`str`, *optional*): Probe head, e.g. `"linear"` or `"mlp"`.
    """

    task: str
    metrics: dict[str, float]
    dataset: str | None = None
    split: str | None = None
    head: str | None = None


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    # Per-tag tables and other nested values stay in the JSON; the card shows scalars.
    return {
        str(name): float(value)
        for name, value in metrics.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


def _result_from_dict(item: Mapping[str, Any], default_task: str) -> ProbeResult:
    def text(*keys: str) -> str | None:
        for key in keys:
            if item.get(key) not in (None, ""):
                return str(item[key])
        return None

    return ProbeResult(
        task=text("task", "task_name", "name") or default_task,
        metrics=_scalar_metrics(item.get("metrics") or {}),
        dataset=text("dataset", "dataset_name"),
        split=text("split", "eval_split"),
        head=text("head", "probe", "classifier_head"),
    )


def _parse_results(data: Any, default_task: str) -> list[ProbeResult]:
    """Accept the shapes probe runs write; raise ``ValueError`` for anything else."""
    if isinstance(data, list):
        return [r for item in data for r in _parse_results(item, default_task)]
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object or a list of objects")
    if isinstance(data.get("metrics"), dict):  # {"task": ..., "metrics": {...}}
        return [_result_from_dict(data, default_task)]
    if isinstance(data.get("results"), (list, dict)):  # {"results": [...]}
        return _parse_results(data["results"], default_task)
    if data and all(isinstance(v, dict) for v in data.values()):  # {"task": {...metrics}}
        results = []
        for task, value in data.items():
            if isinstance(value.get("metrics"), dict):
                results.append(_result_from_dict({"task": task, **value}, task))
            else:
                results.append(ProbeResult(task, _scalar_metrics(value)))
        return results
    scalars = _scalar_metrics(data)  # a flat {"accuracy": ...} file
    if scalars:
        return [ProbeResult(default_task, scalars)]
    raise ValueError("found no metrics (expected {'task': ..., 'metrics': {...}})")


def read_probe_results(paths: Iterable[str | os.PathLike]) -> list[ProbeResult]:
    """Read probe results from JSON files.

    Each file holds `{"task": ..., "metrics": {...}}` (optionally with `dataset`, `split`,
    `head`), a list of those, `{"results": [...]}`, `{task: {metric: value}}` or a flat
    `{metric: value}` (the task is then the file name). Non-scalar metrics (per-tag
    tables) are ignored; results without any scalar metric are dropped.
    """
    results: list[ProbeResult] = []
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            parsed = _parse_results(data, default_task=path.stem)
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"cannot read probe results from {path}: {err}") from err
        results.extend(r for r in parsed if r.metrics)
    return results


def find_probe_results(folder: str | os.PathLike) -> list[Path]:
    """Result files a run leaves in its folder: ``*results*.json`` and ``probe*/*.json``."""
    folder = Path(folder)
    found = set(folder.glob("*results*.json")) | set(folder.glob("probe*/*.json"))
    return sorted(p for p in found if p.is_file())


def read_training_args(
    folder: str | os.PathLike,
    path: str | os.PathLike | None = None,
    names: Sequence[str] = ("training_args.json",),
) -> dict[str, Any]:
    """The run's arguments: ``path`` if given, else the first of ``names`` found in the
    folder or its parent (a run folder whose ``encoder/`` subfolder is the model), else `{}`.
    ``.yaml``/``.yml`` files are read as YAML."""
    if path is not None:
        candidates = [Path(path)]
        if not candidates[0].is_file():
            raise FileNotFoundError(f"training arguments file not found: {path}")
    else:
        folder = Path(folder)
        candidates = [base / name for name in names for base in (folder, folder.parent)]
    for candidate in candidates:
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            if candidate.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"{candidate} must hold a mapping of argument names to values")
            return data
    return {}


# ---------------------------------------------------------------------- model cards


def _pick(args: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if args.get(key) not in (None, "", []):
            return args[key]
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) if value else "none"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _metric_label(name: str) -> str:
    words = {"roc": "ROC", "auc": "AUC", "pr": "PR", "ap": "AP", "f1": "F1", "map": "mAP"}
    label = "-".join(words.get(w, w) for w in re.split(r"[_\-\s]+", name) if w)
    return label[:1].upper() + label[1:]


def _config_rows(args: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten scalar (and short list) arguments for the card, leaving local paths out."""
    rows = []

    def visit(prefix: str, mapping: Mapping[str, Any]) -> None:
        for key in sorted(mapping):
            value, name = mapping[key], f"{prefix}{key}"
            if isinstance(value, Mapping):
                visit(f"{name}.", value)
            elif _PATH_KEY.search(str(key).lower()) or (
                isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))
            ):
                continue
            elif value is None or isinstance(value, (str, int, float, bool)):
                rows.append((name, _fmt(value)))
            elif isinstance(value, (list, tuple)) and len(value) <= 16:
                rows.append((name, _fmt(list(value))))

    visit("", args)
    return rows


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _objective(args: Mapping[str, Any]) -> tuple[str, str]:
    """A short name for the card's first line and a sentence for its training section."""
    objective = str(_pick(args, "objective", "method", "mode") or "").lower()
    sources = _pick(args, "sources", "source")
    if isinstance(sources, str):
        sources = [sources]
    absent = _pick(args, "absent_sources", "silent", "null_column")
    if objective in ("cola", "mixture", "instance"):
        return "COLA, the baseline of the MSCL paper", (
            "COLA instance discrimination: two crops of the same mixture form a positive "
            "pair; the other songs of the minibatch are the negatives."
        )
    if objective in ("s3t", "augment", "augmentation"):
        return "COLA with S3T-style augmentation, a baseline of the MSCL paper", (
            "COLA with S3T-style spectrogram augmentation (masking, shifting, warping) "
            "of the two mixture crops."
        )
    if objective == "mscl" or sources:
        names = _fmt(list(sources)) if sources else "vocals, drums, bass, other"
        if sources and len(sources) == 1:
            name = f"single-source ({names}) multi-source contrastive learning (MSCL)"
        else:
            name = "multi-source contrastive learning (MSCL)"
        text = (
            f"MSCL: a crop of the mixture must pick a crop of one of its separated sources "
            f"({names}) among the sources of the other songs in the minibatch."
        )
        if absent:
            text += (
                " Minibatches may include songs where that source is absent; their anchors "
                "must pick a shared null column (the mean embedding of the all-zero inputs "
                "that stand in for the absent sources)."
            )
        return name, text
    return "contrastive learning (MSCL or its COLA baseline)", ("not recorded with this model.")


def _architecture_text(config: MSCLConfig) -> str:
    if config.width_coefficient == 1.0 and config.depth_coefficient == 1.0:
        net = "EfficientNet-B0"
    else:
        net = (
            f"EfficientNet (B0 layout, width x{config.width_coefficient:g}, "
            f"depth x{config.depth_coefficient:g})"
        )
    return (
        f"a one-channel {net} over {config.num_mel_bins}-bin log-mel windows, global "
        f"{config.pooling} pooling to a {config.encoder_hidden_size}-d feature "
        f"(`pooler_output`) and a Linear + LayerNorm + tanh projection to "
        f"{config.projection_dim}-d (`audio_embeds`)"
    )


def _eval_results(results: Sequence[ProbeResult]) -> list[Any]:
    from huggingface_hub import EvalResult

    out = []
    for result in results:
        dataset = result.dataset or result.task
        task_name = result.task + (f" ({result.head} probe)" if result.head else "")
        for metric, value in result.metrics.items():
            out.append(
                EvalResult(
                    task_type="audio-classification",
                    task_name=task_name,
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=result.split,
                    metric_type=metric,
                    metric_name=_metric_label(metric),
                    metric_value=value,
                )
            )
    return out


def _results_table(results: Sequence[ProbeResult]) -> str:
    rows = [
        (
            _fmt(r.task),
            _fmt(r.dataset or r.task),
            _fmt(r.split or "-"),
            _fmt(r.head or "-"),
            _metric_label(metric),
            _fmt(value),
        )
        for r in results
        for metric, value in r.metrics.items()
    ]
    return _markdown_table(("task", "dataset", "split", "probe", "metric", "value"), rows)


def _is_hub_name(name: str) -> bool:
    """A dataset or model name the Hub could hold: `name` or `namespace/name`, not a path."""
    return bool(re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name)) and not os.path.exists(name)


def _is_hub_id(name: str) -> bool:
    return "/" in name and _is_hub_name(name)


def _template(kind: str) -> Path:
    path = resource_dir("model_cards") / f"{kind}.md"
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} not found (kind {kind!r})")
    return path


def render_model_card(
    kind: str,
    folder: str | os.PathLike,
    results: Sequence[ProbeResult] | Sequence[str | os.PathLike] | None = None,
    *,
    repo_id: str | None = None,
    training_args: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",  # noqa: A002 - the Hub's metadata field name
) -> str:
    """Render the README.md of an encoder or probe-head repo from a saved model folder.

    Args:
        kind (`str`): `"encoder"` or `"probe_head"`.
        folder (`str` or `os.PathLike`): Folder written by `save_pretrained`.
        results (*optional*): [`ProbeResult`]s or paths of result JSON files; `None` looks
            for result files in `folder` (see [`find_probe_results`]). No results: the card
            says the model was not evaluated and has no `model-index`.
        repo_id (`str`, *optional*): Hub id used in the usage snippets.
        training_args (`Mapping`, *optional*): The run's arguments; `None` reads
            `training_args.json` next to the model (see [`read_training_args`]).
        base_model (`str`, *optional*): Hub id of the encoder a probe head was trained on.
        datasets (`Sequence[str]`, *optional*): Dataset names or Hub ids for the metadata;
            defaults to the training arguments' dataset and the results' datasets.
        license (`str`, *optional*, defaults to `"apache-2.0"`): License of the weights.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in CARD_KINDS:
        raise ValueError(f"kind must be one of {CARD_KINDS}, got {kind!r}")
    folder = Path(folder)
    config = MSCLConfig.from_pretrained(folder)
    if training_args is not None:
        args = dict(training_args)
    else:
        # A probe run's own arguments come first for a head; the encoder's otherwise.
        names = ("probe_args.json", "training_args.json") if kind == "probe_head" else None
        args = read_training_args(folder, names=names or ("training_args.json",))
    if results is None:
        results = read_probe_results(find_probe_results(folder))
    elif results and not isinstance(results[0], ProbeResult):
        results = read_probe_results(results)  # type: ignore[arg-type]
    results = list(results)  # type: ignore[arg-type]
    preprocessor = folder / "preprocessor_config.json"
    fe = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
    sampling_rate = fe.get("sampling_rate", 16000)

    repo_id = repo_id or f"your-name/{folder.resolve().name}"
    model_name = repo_id.split("/")[-1]
    if base_model is None:
        found = _pick(args, "base_model", "encoder", "model_name_or_path")
        base_model = found if isinstance(found, str) and _is_hub_id(found) else None
    train_dataset = _pick(args, "dataset", "dataset_name", "train_dataset", "corpus")
    if datasets is None:
        names = [train_dataset] if isinstance(train_dataset, str) else []
        names += [r.dataset for r in results if r.dataset]
        datasets = list(dict.fromkeys(n for n in names if _is_hub_name(n)))
    pipeline_tag = "feature-extraction" if kind == "encoder" else "audio-classification"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=_TAGS + (["audio-classification"] if kind == "probe_head" else []),
        datasets=list(datasets) or None,
        license=license,
        base_model=base_model if kind == "probe_head" else None,
        model_name=model_name,
        eval_results=_eval_results(results) or None,
    )

    steps = _pick(args, "max_steps", "num_steps", "steps", "total_steps")
    batch = _pick(args, "batch_size", "per_device_train_batch_size", "train_batch_size")
    labels = [config.id2label[i] for i in sorted(config.id2label)] if kind == "probe_head" else []
    rows = _config_rows(args)
    objective_name, objective_text = _objective(args)
    card = ModelCard.from_template(
        card_data,
        template_path=str(_template(kind)),
        repo_id=repo_id,
        model_name=model_name,
        architecture=_architecture_text(config),
        architecture_class=(config.architectures or ["MSCLModel"])[0],
        objective_name=objective_name,
        objective=objective_text,
        has_training_args=bool(args),
        train_dataset=_fmt(train_dataset) if train_dataset else None,
        steps=_fmt(steps) if steps is not None else None,
        batch_size=_fmt(batch) if batch is not None else None,
        config_table=_markdown_table(("argument", "value"), rows) if rows else "",
        has_results=bool(results),
        results_table=_results_table(results) if results else "",
        sampling_rate=sampling_rate,
        num_mel_bins=config.num_mel_bins,
        pooled_dim=config.encoder_hidden_size,
        projection_dim=config.projection_dim,
        similarity=config.similarity,
        base_model=base_model,
        labels=", ".join(f"`{label}`" for label in labels),
        num_labels=len(labels),
        problem_type=config.problem_type or "single_label_classification",
        head=config.classifier_head,
        frozen=config.freeze_encoder,
        window_frames=getattr(config, "classifier_window_frames", None),
        bibtex=PAPER_BIBTEX,
    )
    return str(card).rstrip() + "\n"


# ---------------------------------------------------------------------- pushing


@dataclass
class PushResult:
    """What a push did (or, for a dry run, would do).

    Attributes:
        repo_id (`str`): The repo, with its namespace once the Hub has answered.
        revision (`str`): Branch the files go to.
        files (`list[tuple[str, int]]`): Every file of the upload and its size in bytes.
        card (`str`): The rendered README.md.
        uploaded (`list[str]`): Files sent in the commit; empty for a dry run and when the
            Hub already had identical files.
        commit_url (`str`, *optional*): URL of the new commit, `None` if nothing was committed.
        dry_run (`bool`): Whether nothing was sent.
    """

    repo_id: str
    revision: str
    files: list[tuple[str, int]]
    card: str
    uploaded: list[str] = field(default_factory=list)
    commit_url: str | None = None
    dry_run: bool = False


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _auto_ref(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


# Every Auto class in every repo: `save_pretrained` maps only the class it saved, so a
# pre-training folder would not load with `AutoModel` nor a head with the pipeline's class.
_AUTO_MAP = {
    "AutoConfig": _auto_ref(MSCLConfig),
    "AutoModel": _auto_ref(MSCLModel),
    "AutoModelForPreTraining": _auto_ref(MSCLForPreTraining),
    "AutoModelForAudioClassification": _auto_ref(MSCLForAudioClassification),
}
_FE_AUTO_MAP = {"AutoFeatureExtractor": _auto_ref(MSCLFeatureExtractor)}
HUB_CODE_FILES = (
    "configuration_mscl.py",
    "feature_extraction_mscl.py",
    "modeling_mscl.py",
)


def _json_bytes(data: dict[str, Any]) -> bytes:
    # The layout transformers writes, so an unchanged config stays byte-identical.
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _upload_files(folder: Path, kind: str) -> dict[str, bytes]:
    """Check the folder and return the files to upload (README.md excluded).

    ``config.json`` and ``preprocessor_config.json`` get a complete ``auto_map``; Hub code
    files missing from the folder (saved before the Auto classes were registered) come
    from this package, and a missing feature extractor is the default one.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: is it a save_pretrained folder?")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != MSCLConfig.model_type:
        raise ValueError(f"{folder} holds a {config.get('model_type')!r} model, not an MSCL one")
    architectures = set(config.get("architectures") or [])
    wanted = _ENCODER_ARCHITECTURES if kind == "encoder" else _HEAD_ARCHITECTURES
    if not architectures & wanted:
        other = "push_probe_head" if kind == "encoder" else "push_encoder"
        raise ValueError(
            f"{folder} holds {sorted(architectures) or 'an unknown architecture'}; a {kind} "
            f"repo needs one of {sorted(wanted)} (use {other} for this folder?)"
        )
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{folder} has no weights (*.safetensors)")

    files = {"config.json": _json_bytes({**config, "auto_map": _AUTO_MAP})}
    fe_path = folder / "preprocessor_config.json"
    if fe_path.is_file():
        fe = json.loads(fe_path.read_text())
    else:
        logger.warning("%s has no preprocessor_config.json; pushing the default one", folder)
        extractor = MSCLFeatureExtractor(feature_size=config.get("num_mel_bins", 64))
        fe = json.loads(extractor.to_json_string())
    files["preprocessor_config.json"] = _json_bytes(
        {**fe, "auto_map": {**(fe.get("auto_map") or {}), **_FE_AUTO_MAP}}
    )
    index = folder / "model.safetensors.index.json"
    for path in ([index] if index.is_file() else []) + weights:
        files[path.name] = path.read_bytes()
    package = Path(__file__).resolve().parent
    for name in HUB_CODE_FILES:
        # The folder's copy is the code its weights were saved with; prefer it.
        source = folder / name if (folder / name).is_file() else package / name
        files[name] = source.read_bytes()
    return files


def _same_as_remote(data: bytes, remote: Any) -> bool:
    if remote is None:
        return False
    if getattr(remote, "lfs", None):
        return hashlib.sha256(data).hexdigest() == remote.lfs.sha256
    return _git_blob_sha1(data) == remote.blob_id


def _push(
    kind: str,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    commit_message: str | None,
    dry_run: bool,
    card_kwargs: dict[str, Any],
    token: str | None,
    endpoint: str | None,
) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.hf_api import RepoFile

    folder = Path(folder)
    branch = revision or "main"
    files = _upload_files(folder, kind)
    api = None
    if not dry_run:
        # The token comes from `token`, HF_TOKEN or the saved login; it is never printed.
        api = HfApi(endpoint=endpoint, token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
    card = render_model_card(kind, folder, repo_id=repo_id, **card_kwargs)
    contents = {"README.md": card.encode("utf-8"), **files}
    listing = [(name, len(data)) for name, data in sorted(contents.items())]
    result = PushResult(repo_id, branch, listing, card, dry_run=dry_run)
    if api is None:
        return result
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=branch, recursive=True)
        if isinstance(entry, RepoFile)
    }
    changed = [
        name
        for name, data in sorted(contents.items())
        if not _same_as_remote(data, remote.get(name))
    ]
    if not changed:
        return result
    operations = [CommitOperationAdd(name, contents[name]) for name in changed]
    default_message = "Upload MSCL encoder" if kind == "encoder" else "Upload MSCL probe head"
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or default_message,
        revision=branch,
    )
    result.uploaded = changed
    result.commit_url = info.commit_url
    return result


def push_encoder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    results: Sequence[ProbeResult] | Sequence[str | os.PathLike] | None = None,
    training_args: Mapping[str, Any] | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",  # noqa: A002
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push a pre-trained encoder folder (`MSCLModel` or `MSCLForPreTraining`) to the Hub.

    Uploads the weights, `config.json` (with `auto_map`), the feature extractor, the Hub
    code files and a README.md rendered by [`render_model_card`]. Only files that differ
    from the branch's current ones are sent; when none differ no commit is made. With
    `dry_run=True` nothing is sent and no token is needed. `token` and `endpoint` default
    to huggingface_hub's (`HF_TOKEN` or the saved login; `HF_ENDPOINT`).
    """
    card_kwargs = dict(
        results=results, training_args=training_args, datasets=datasets, license=license
    )
    return _push(
        "encoder",
        folder,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        dry_run=dry_run,
        card_kwargs=card_kwargs,
        token=token,
        endpoint=endpoint,
    )


def push_probe_head(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    results: Sequence[ProbeResult] | Sequence[str | os.PathLike] | None = None,
    training_args: Mapping[str, Any] | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",  # noqa: A002
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push a probe head (`MSCLForAudioClassification` folder) that runs in
    `pipeline("audio-classification", trust_remote_code=True)`.

    `base_model` is the Hub id of the encoder the head was trained on (card metadata).
    Everything else works as in [`push_encoder`].
    """
    card_kwargs = dict(
        results=results,
        training_args=training_args,
        datasets=datasets,
        license=license,
        base_model=base_model,
    )
    return _push(
        "probe_head",
        folder,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        dry_run=dry_run,
        card_kwargs=card_kwargs,
        token=token,
        endpoint=endpoint,
    )
