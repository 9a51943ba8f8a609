"""Auto-class registration, model cards, and pushing MSCL models to the Hugging Face Hub.

A pushed repo holds what ``from_pretrained`` needs where this package is not installed:
the weights, ``config.json`` with ``auto_map``, the feature extractor's
``preprocessor_config.json``, the Hub code files, and a ``README.md`` rendered from the
templates in ``model_cards/`` with the run's training arguments and probe results. The
files go up in one ``HfApi.create_commit``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitOperationAdd, HfApi
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
)

from .configuration_mscl import MSCLConfig
from .feature_extraction_mscl import MSCLFeatureExtractor, load_feature_extractor
from .modeling_mscl import MSCLForAudioClassification, MSCLForPreTraining, MSCLModel
from .objectives import get_objective, objective_names
from .package_data import resource_dir
from .pipeline_mscl import custom_pipelines
from .similarity_mscl import get_similarity

if TYPE_CHECKING:  # the probing package (torch, datasets) loads only when results are read
    from .probing.protocol import ProbeResult

__all__ = [
    "CARD_KINDS",
    "HUB_CODE_FILES",
    "PAPER_BIBTEX",
    "PushResult",
    "push_encoder",
    "push_probe_head",
    "read_probe_results",
    "read_training_args",
    "register_auto_classes",
    "register_pipelines",
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
    register_pipelines()


def register_pipelines() -> None:
    """Register the MSCL pipelines with transformers' pipeline registry (idempotent).

    With this package imported, `pipeline(model=folder)` and
    `pipeline("audio-classification", model=folder)` run the installed classes, without
    `trust_remote_code=True` (see `configuration_mscl._PipelineDeclarations`): the
    `mscl-embedding` task is added, and the `audio-classification` task gets
    `MSCLAudioClassificationPipeline`, a subclass of transformers' class that decodes
    through `decode_audio` for MSCL models and leaves every other model's inputs to
    transformers' own code. The task's default model and model classes stay.
    """
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from . import modeling_mscl as modeling

    tasks = PIPELINE_REGISTRY.supported_tasks
    tasks[modeling.EMBEDDING_TASK] = {
        "impl": modeling.MSCLEmbeddingPipeline,
        "pt": (AutoModel,),
        "type": "audio",
    }
    # Only the class changes; assigning the entry directly avoids the registry's warning
    # about overwriting a built-in task at every import.
    tasks["audio-classification"] = {
        **tasks["audio-classification"],
        "impl": modeling.MSCLAudioClassificationPipeline,
    }


# ---------------------------------------------------------------------- run information


PROBE_RESULTS_FILE = "probe_results.json"  # what export_probe writes into a head folder
TRAINING_ARGS_FILE = "training_args.json"  # what a pre-training run saves with its encoder
PROBE_ARGS_FILE = "probe_args.json"  # export_probe's task settings, in the same flat form


def read_probe_results(paths: Iterable[str | os.PathLike]) -> list[ProbeResult]:
    """Read probe results: each file holds one `ProbeResult.to_dict()` object, as
    `export_probe` writes it to `probe_results.json`. Anything else raises a `ValueError`
    naming the file."""
    from .probing.protocol import ProbeResult

    results = []
    for path in map(Path, paths):
        try:
            results.append(ProbeResult.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"cannot read probe results from {path}: {err}") from err
    return results


def _flat_arguments(data: Any, where: str) -> dict[str, Any]:
    def plain(value: Any) -> bool:
        return value is None or isinstance(value, (str, int, float, bool))

    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must hold a JSON object of argument names and values")
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: argument names must be strings, got {key!r}")
        if not (plain(value) or (isinstance(value, list) and all(map(plain, value)))):
            raise ValueError(
                f"{where}: argument {key!r} must be a number, string, boolean, null or a "
                f"list of those (a flat mapping, as PretrainingArguments.to_dict() writes)"
            )
    return dict(data)


def read_training_args(path: str | os.PathLike) -> dict[str, Any]:
    """The flat mapping a pre-training run saves as `training_args.json` (see
    `PretrainingArguments.to_dict`). `path` is the file or a folder holding it.
    `export_probe`'s `probe_args.json` has the same form and is read the same way."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAINING_ARGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"training arguments file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    return _flat_arguments(data, str(path))


# ---------------------------------------------------------------------- model cards


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
    """Scalar (and short list) arguments for the card, leaving local paths out."""
    rows = []
    for key in sorted(args):
        value = args[key]
        if _PATH_KEY.search(key.lower()) or (
            isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))
        ):
            continue
        if not isinstance(value, list) or len(value) <= 16:
            rows.append((key, _fmt(value)))
    return rows


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _objective(args: Mapping[str, Any]) -> tuple[str, str]:
    """A short name for the card's first line and a sentence for its training section:
    the registered objective's own; arguments with sources but no known objective are
    MSCL's."""
    objective, sources = args.get("objective"), args.get("sources")
    if objective in objective_names():
        return get_objective(objective).card(args)
    if sources:
        return get_objective("mscl").card(args)
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


def _card_metrics(results: Sequence[ProbeResult]) -> list[tuple[ProbeResult, str, float]]:
    # NaN (a metric no class could score) has no place in the Hub's model-index.
    return [
        (result, name, float(value))
        for result in results
        for name, value in result.metrics.items()
        if math.isfinite(value)
    ]


def _eval_results(metrics: Sequence[tuple[ProbeResult, str, float]]) -> list[Any]:
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="audio-classification",
            task_name=f"{result.task.name} ({result.task.head} probe)",
            # Results written before they recorded their dataset: the task names it.
            dataset_type=result.dataset or result.task.name,
            dataset_name=result.dataset or result.task.name,
            dataset_split=result.split,
            metric_type=name,
            metric_name=_metric_label(name),
            metric_value=value,
        )
        for result, name, value in metrics
    ]


def _results_table(metrics: Sequence[tuple[ProbeResult, str, float]]) -> str:
    rows = [
        (
            _fmt(r.task.name),
            _fmt(r.dataset or r.task.name),
            _fmt(r.split),
            _fmt(r.task.head),
            _metric_label(name),
            _fmt(value),
        )
        for r, name, value in metrics
    ]
    return _markdown_table(("task", "dataset", "split", "probe", "metric", "value"), rows)


def _check_results_encoder(
    folder: Path, kind: str, results: Sequence[ProbeResult], names: Sequence[str], given: bool
) -> None:
    """Refuse results measured on another encoder than the folder's (their
    ``encoder_fingerprint``). Results given explicitly must record one; the folder's own
    ``probe_results.json`` of an older export may lack it (written with those weights)."""
    if not results:
        return
    from .modeling_mscl import MSCLForAudioClassification, MSCLModel
    from .probing.embeddings import encoder_fingerprint

    cls = MSCLForAudioClassification if kind == "probe_head" else MSCLModel
    fingerprint = encoder_fingerprint(cls.from_pretrained(folder))
    for result, name in zip(results, names, strict=True):
        if result.encoder_fingerprint is None and given:
            raise ValueError(
                f"{name}: these probe results record no encoder (written before results "
                f"named theirs), so they cannot be shown to be {folder}'s: probe this "
                "encoder again with mscl probe"
            )
        if result.encoder_fingerprint not in (None, fingerprint):
            raise ValueError(
                f"{name}: these probe results were measured on encoder "
                f"{result.encoder_fingerprint}, not on {folder} ({fingerprint}); "
                "a card shows only its own encoder's results"
            )


def _is_hub_name(name: str) -> bool:
    """A dataset name the Hub could hold: `name` or `namespace/name`, not a path."""
    return bool(re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name)) and not os.path.exists(name)


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
        results (*optional*): [`~modeling_mscl.probing.ProbeResult`]s or paths of
            `probe_results.json` files (see [`read_probe_results`]); `None` reads the
            folder's `probe_results.json` if there is one. No results: the card says the
            model was not evaluated and has no `model-index`.
        repo_id (`str`, *optional*): Hub id used in the usage snippets.
        training_args (`Mapping`, *optional*): The run's arguments, a flat mapping; `None`
            reads the folder's `training_args.json` (an encoder) or `probe_args.json` (a
            probe head) if there is one (see [`read_training_args`]).
        base_model (`str`, *optional*): Hub id of the encoder a probe head was trained on.
        datasets (`Sequence[str]`, *optional*): Dataset names or Hub ids for the metadata;
            defaults to the training arguments' `dataset`.
        license (`str`, *optional*, defaults to `"apache-2.0"`): License of the weights.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .probing.protocol import ProbeResult

    if kind not in CARD_KINDS:
        raise ValueError(f"kind must be one of {CARD_KINDS}, got {kind!r}")
    folder = Path(folder)
    config = MSCLConfig.from_pretrained(folder)
    if training_args is not None:
        args = _flat_arguments(training_args, "training_args")
    else:
        args_file = folder / (TRAINING_ARGS_FILE if kind == "encoder" else PROBE_ARGS_FILE)
        args = read_training_args(args_file) if args_file.is_file() else {}
    given = results is not None
    if results is None:
        found = folder / PROBE_RESULTS_FILE
        results = read_probe_results([found]) if found.is_file() else []
        names = [str(found)] * len(results)
    else:
        names = [str(r) if not isinstance(r, ProbeResult) else "a ProbeResult" for r in results]
        results = [r if isinstance(r, ProbeResult) else read_probe_results([r])[0] for r in results]
    _check_results_encoder(folder, kind, results, names, given)
    metrics = _card_metrics(results)
    preprocessor = folder / "preprocessor_config.json"
    fe = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
    sampling_rate = fe.get("sampling_rate", 16000)

    repo_id = repo_id or f"your-name/{folder.resolve().name}"
    model_name = repo_id.split("/")[-1]
    # Written by convert_reference_checkpoint; a pre-training run's data is a local path.
    train_dataset = args.get("dataset")
    if datasets is None:
        datasets = [train_dataset] if isinstance(train_dataset, str) else []
        datasets = [name for name in datasets if _is_hub_name(name)]
    pipeline_tag = "feature-extraction" if kind == "encoder" else "audio-classification"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=_TAGS + (["audio-classification"] if kind == "probe_head" else []),
        datasets=list(datasets) or None,
        license=license,
        base_model=base_model if kind == "probe_head" else None,
        model_name=model_name,
        eval_results=_eval_results(metrics) or None,
    )

    steps, batch = args.get("max_steps"), args.get("batch_size")
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
        has_results=bool(metrics),
        results_table=_results_table(metrics) if metrics else "",
        sampling_rate=sampling_rate,
        num_mel_bins=config.num_mel_bins,
        pooled_dim=config.encoder_hidden_size,
        projection_dim=config.projection_dim,
        similarity=get_similarity(config.similarity).describe(config),
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
        uploaded (`list[str]`): Files handed to `HfApi.create_commit`: every file of the
            push, empty for a dry run. huggingface_hub uploads only those whose content
            differs from the branch's and makes no commit when none does, so this is not
            the list of changed files.
        commit_url (`str`, *optional*): URL of the branch's commit after the push: the new
            one, or the current one when nothing changed; `None` for a dry run.
        dry_run (`bool`): Whether nothing was sent.
    """

    repo_id: str
    revision: str
    files: list[tuple[str, int]]
    card: str
    uploaded: list[str] = field(default_factory=list)
    commit_url: str | None = None
    dry_run: bool = False


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
# The code of a saved folder: the modules `auto_map` names and every file they import
# relatively (transformers' remote-code loader collects those; tests/test_hub.py checks
# this list against its scan).
HUB_CODE_FILES = (
    "audio_decoding_mscl.py",
    "configuration_mscl.py",
    "contrastive_loss_mscl.py",
    "encoder_mscl.py",
    "feature_extraction_mscl.py",
    "long_audio_mscl.py",
    "modeling_mscl.py",
    "pipeline_mscl.py",
    "similarity_mscl.py",
)


def _json_bytes(data: dict[str, Any]) -> bytes:
    # The layout transformers writes, so an unchanged config stays byte-identical.
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _upload_files(folder: Path, kind: str) -> dict[str, bytes | Path]:
    """Check the folder and return the files to upload (README.md excluded): contents
    written here as bytes, files sent as they are (weights, code) as paths.

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

    # The folder's pipeline (decoding without FFmpeg) is declared even where it was saved
    # before save_pretrained declared it.
    architecture = sorted(architectures & wanted)[0]
    config = {**config, "auto_map": _AUTO_MAP, "custom_pipelines": custom_pipelines(architecture)}
    files: dict[str, bytes | Path] = {"config.json": _json_bytes(config)}
    fe_path = folder / "preprocessor_config.json"
    if fe_path.is_file():
        fe = json.loads(fe_path.read_text())
    else:
        logger.warning("%s has no preprocessor_config.json; pushing the default one", folder)
        extractor = load_feature_extractor(num_mel_bins=config.get("num_mel_bins"))
        fe = json.loads(extractor.to_json_string())
    files["preprocessor_config.json"] = _json_bytes(
        {**fe, "auto_map": {**(fe.get("auto_map") or {}), **_FE_AUTO_MAP}}
    )
    index = folder / "model.safetensors.index.json"
    for path in ([index] if index.is_file() else []) + weights:
        files[path.name] = path
    package = Path(__file__).resolve().parent
    for name in HUB_CODE_FILES:
        # The folder's copy is the code its weights were saved with; prefer it.
        files[name] = folder / name if (folder / name).is_file() else package / name
    return files


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP clients raise when the Hub cannot be reached."""
    errors: list[type[BaseException]] = [OSError]  # requests' and the OS's, offline mode
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # pragma: no cover - an older huggingface_hub, on requests
        pass
    return tuple(errors)


@contextmanager
def _naming_endpoint(endpoint: str | None, token: str | None) -> Iterator[None]:
    """A failed connection inside the block becomes a ``ConnectionError`` that names the
    Hub endpoint; the token (given, or huggingface_hub's own) is blanked out of it."""
    try:
        yield
    except _connection_errors() as err:
        from huggingface_hub import constants, get_token

        url = endpoint or constants.ENDPOINT
        text = f"{type(err).__name__}: {err}"
        for secret in {token, get_token()} - {None, ""}:
            text = text.replace(secret, "***")
        raise ConnectionError(
            f"cannot reach the Hub at {url} ({text}); check the network, HF_ENDPOINT and "
            "HF_HUB_OFFLINE"
        ) from None


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
    folder = Path(folder)
    branch = revision or "main"
    files = _upload_files(folder, kind)
    # Rendered before anything is sent, so a bad results or arguments file stops the push.
    card = render_model_card(kind, folder, repo_id=repo_id, **card_kwargs)
    api = None
    if not dry_run:
        # The token comes from `token`, HF_TOKEN or the saved login; it is never printed.
        api = HfApi(endpoint=endpoint, token=token)
        with _naming_endpoint(endpoint, token):
            full_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if full_id != repo_id:  # the usage snippets need the namespace the Hub gave
            repo_id = full_id
            card = render_model_card(kind, folder, repo_id=repo_id, **card_kwargs)
        if branch != "main":
            with _naming_endpoint(endpoint, token):
                api.create_branch(repo_id, branch=branch, exist_ok=True)
    contents = sorted({"README.md": card.encode("utf-8"), **files}.items())
    listing = [
        (name, len(data) if isinstance(data, bytes) else data.stat().st_size)
        for name, data in contents
    ]
    result = PushResult(repo_id, branch, listing, card, dry_run=dry_run)
    if api is None:
        return result
    # huggingface_hub compares every file with the branch's (git blob SHA-1, or SHA-256
    # for LFS files), uploads only the changed ones and skips an empty commit.
    operations = [
        CommitOperationAdd(name, data if isinstance(data, bytes) else str(data))
        for name, data in contents
    ]
    default_message = "Upload MSCL encoder" if kind == "encoder" else "Upload MSCL probe head"
    with _naming_endpoint(endpoint, token):
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or default_message,
            revision=branch,
        )
    result.uploaded = [name for name, _ in contents]
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
    code files and a README.md rendered by [`render_model_card`] in one commit to
    `revision` (a branch, created if needed); huggingface_hub uploads only the files that
    differ from the branch's and makes no commit when none do. With `dry_run=True`
    nothing is sent and no token is needed. `results` are `ProbeResult`s or paths of
    `probe_results.json` files. `token` and `endpoint` default
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
