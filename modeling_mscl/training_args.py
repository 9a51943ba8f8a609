"""Arguments of pre-training: ``HfArgumentParser`` dataclasses, YAML configs, overrides.

Four groups (model, data, augmentation, training) share one flat namespace, so a YAML
config is a flat mapping and any key can be overridden on the command line as
``--key value`` (``--key=value``; a bare ``--flag`` sets a boolean; a list takes several
values) or from Python with :meth:`PretrainingArguments.from_config`. Unknown keys, bad
values and a missing data directory raise a ``ValueError`` that names the key. The flat
dict (:meth:`PretrainingArguments.to_dict`) is what is saved as ``training_args.json`` and
can be passed back as ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import math
import os
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from transformers import HfArgumentParser

from ._files import atomic_write
from .augment import SpecAugmentation
from .configuration_mscl import MSCLConfig
from .objectives import get_objective, objective_names
from .optim import OPTIMIZERS
from .similarity_mscl import similarity_names
from .stems import SOURCES

__all__ = [
    "AugmentArguments",
    "DataArguments",
    "ModelArguments",
    "PretrainingArguments",
    "TrainingArguments",
    "parse_args",
]

LR_SCHEDULES = ("step", "cosine", "constant")
MIXED_PRECISION = ("auto", "no", "bf16")
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")
AUGMENT_ON = ("auto", "loader", "device")


def _one_of(names: tuple[str, ...]) -> str:
    """The registered names as a help text reads them: 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else quoted[0]


def _help(text: str, default: Any = None, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class ModelArguments:
    """The encoder (see :class:`~modeling_mscl.MSCLConfig`; other values keep its defaults)."""

    width_coefficient: float = _help("EfficientNet width multiplier (1.0 = B0)", 1.0)
    depth_coefficient: float = _help("EfficientNet depth multiplier (1.0 = B0)", 1.0)
    projection_dim: int = _help("size of the contrastive embedding", 512)
    similarity: str = _help(
        _one_of(similarity_names()) + " ('bilinear' is the paper's)", "bilinear"
    )
    similarity_temperature: float = _help("temperature of the cosine similarity", 0.1)
    bilinear_logit_scale: float = _help(
        "factor on the bilinear logits (1.0: the paper; 1/projection_dim: small-run option)", 1.0
    )
    pooling: str = _help("global pooling: 'max' (the paper) or 'mean'", "max")
    drop_connect_rate: float = _help("stochastic depth rate of the last block", 0.2)


@dataclass
class DataArguments:
    """The chunk dataset and how pairs are drawn from it."""

    data_dir: str | None = _help("chunk dataset saved by prepare_chunks (load_from_disk)", None)
    train_split: str = _help("split to train on when data_dir holds a DatasetDict", "train")
    validation_split: str = _help("split to validate on, if data_dir holds it", "validation")
    validation_fraction: float = _help(
        "without a validation split: fraction of tracks held out (by a hash of track_id)", 0.05
    )
    objective: str = _help(_one_of(objective_names()), "mscl")
    sources: list[str] = _help("mscl sources (one = a source-targeted model)", list(SOURCES))
    absent_sources: bool = _help("mscl: random minibatches with a null class", True)
    random_batch_prob: float = _help("probability of a random minibatch (absent_sources)", 0.5)
    num_workers: int = _help("DataLoader worker processes (0 = build batches inline)", 2)
    prefetch_factor: int = _help("batches prepared ahead per worker", 4)
    augment_on: str = _help(
        "s3t: augment in the loader workers or on the training device ('auto': loader on "
        "CPU, device on GPU)",
        "auto",
    )
    verify_data: bool = _help(
        "check every file of the chunk set against its SHA-256 at start (reads every byte; "
        "without it only the files' presence and sizes are checked)",
        False,
    )


# The augment group is SpecAugmentation's fields, defaults and documented meanings, so the
# two cannot drift apart; only `fill_value` gets a prefix: flat keys are shared by groups.
_AUGMENT_KEYS = {f.name: f.name for f in fields(SpecAugmentation)} | {
    "fill_value": "augment_fill_value"
}


def _documented_args(cls: type) -> dict[str, str]:
    """``name: text`` entries of the Args section of ``cls``'s docstring, one line each."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    entries: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        if line.startswith("    ") and not line.startswith("        "):
            name, _, text = line.strip().partition(":")
            entries[name] = text.strip().replace("``", "")
        elif line.startswith("        ") and name is not None:
            entries[name] += " " + line.strip().replace("``", "")
        elif line.strip() and not line.startswith(" "):
            break
    return entries


def _augment_arguments() -> type:
    hints = typing.get_type_hints(SpecAugmentation)
    documented = _documented_args(SpecAugmentation)
    group = dataclasses.make_dataclass(
        "AugmentArguments",
        [
            (key, hints[name], _help(documented[name], getattr(SpecAugmentation, name)))
            for name, key in _AUGMENT_KEYS.items()
        ],
    )
    group.__module__ = __name__
    group.__doc__ = """The S3T augmentation of the ``s3t`` objective (ignored otherwise): the
    fields of :class:`~modeling_mscl.augment.SpecAugmentation` (``fill_value`` as
    ``augment_fill_value``), with its defaults (the reference's values) and meanings.
    Each crop of a pair gets, independently and in this order, time masks, frequency masks,
    a frequency shift and a time warp. Ranges are inclusive.
    """
    return group


AugmentArguments = _augment_arguments()


@dataclass
class TrainingArguments:
    """The optimisation loop, checkpoints and logging."""

    output_dir: str = _help("where checkpoints, logs and the final models go", "runs/pretrain")
    seed: int = _help("seed of the initialisation and of every minibatch", 0)
    max_steps: int = _help("optimizer steps", 1000)
    batch_size: int = _help("pairs per minibatch, over all processes (the softmax width)", 128)
    gradient_accumulation_steps: int = _help(
        "minibatches per optimizer step (each one its own source and softmax)", 1
    )
    optimizer: str = _help(
        "'adam' (Keras' Adam, the reference's: eps 1e-7 beside sqrt(v)), 'torch_adam' "
        "(torch's epsilon placement, a departure) or 'sgd' (plain, for diagnostics)",
        "adam",
    )
    learning_rate: float = _help("peak learning rate", 1e-3)
    weight_decay: float = _help("weight decay (coupled, as torch's Adam)", 0.0)
    lr_schedule: str = _help(
        "'step' (x lr_decay_factor at lr_decay_at), 'cosine', 'constant'", "step"
    )
    lr_decay_at: float = _help("step schedule: fraction of max_steps where the lr drops", 0.5)
    lr_decay_factor: float = _help("step schedule: lr multiplier after the drop", 0.5)
    warmup_steps: int = _help("linear warm-up steps", 0)
    max_grad_norm: float = _help("clip the gradient norm to this (0 = no clipping)", 0.0)
    mixed_precision: str = _help(
        "'auto' (accelerate launch's --mixed_precision or config if it names bf16/no, else "
        "bf16 on a GPU that computes it natively, compute capability >= 8.0), 'no' or "
        "'bf16' (fp16 is not supported: it needs loss scaling)",
        "auto",
    )
    cpu: bool = _help("train on the CPU even if a GPU is present", False)
    channels_last: bool = _help(
        "channels-last memory layout for the convolutions (1.9x faster on a 2-core x86 CPU)",
        True,
    )
    keep_freed_memory: bool = _help(
        "keep freed CPU memory in glibc's heap for reuse (modeling_mscl.memory): without it "
        "a third of a CPU step went to page faults; the process keeps its peak memory",
        True,
    )
    sync_batchnorm: bool = _help(
        "under several processes, batch norm over the global minibatch (SyncBatchNorm) as "
        "one process on the whole batch, like the reference; CUDA only, refused on the "
        "CPU; no effect with one process",
        False,
    )
    checkpoint_every: int = _help("steps between checkpoints (0 = only at the end)", 1000)
    keep_checkpoints: int = _help("checkpoints kept (the newest)", 3)
    resume: bool = _help("continue from the newest checkpoint in output_dir", False)
    overwrite_output_dir: bool = _help(
        "a fresh run into an output_dir that holds a run: delete that run first (default: refuse)",
        False,
    )
    allow_data_change: bool = _help(
        "resume onto a chunk set whose content fingerprint differs from the checkpoint's "
        "(default: refuse); the change is recorded in the run's training_data.json",
        False,
    )
    eval_every: int = _help("steps between validations (0 = never)", 500)
    eval_batches: int = _help("fixed validation minibatches", 8)
    probe_every: int = _help("steps between probe_hook calls, from step 0 (0 = never)", 0)
    probe_hook: str | None = _help("'module:function' called as fn(encoder, step) -> dict", None)
    log_every: int = _help("steps between logged training metrics", 50)
    log_with: str = _help("tracker: 'tensorboard', 'wandb', 'mlflow' or 'none'", "tensorboard")
    max_bad_steps: int = _help("stop after this many skipped steps in a row", 10)
    progress_bar: bool = _help(
        "show a progress bar on the main process (--no_progress_bar: none, and none of the "
        "libraries' bars and INFO lines either)",
        True,
    )

    def __post_init__(self) -> None:
        # A config sets a hook; "--probe_hook none" on the command line unsets it.
        if isinstance(self.probe_hook, str) and self.probe_hook.lower() in ("", "none", "null"):
            self.probe_hook = None


_GROUPS = (
    ("model", ModelArguments),
    ("data", DataArguments),
    ("augment", AugmentArguments),
    ("training", TrainingArguments),
)


class _Parser(HfArgumentParser):
    """``HfArgumentParser`` that raises ``ValueError`` instead of exiting on a bad value, so
    that a caller (a script's ``main``, a test, a notebook) decides what an error does."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def argument_parser() -> HfArgumentParser:
    """The parser of the four groups; ``--config FILE`` is read before it (see parse_args)."""
    parser = _Parser(
        tuple(cls for _, cls in _GROUPS),
        allow_abbrev=False,
        description="Contrastive pre-training of an MSCL encoder. Values from --config "
        "(a YAML file or a shipped config: demo, paper, tiny) are overridden by --key value.",
    )
    parser.add_argument("--config", default=None, help="YAML file or shipped config name")
    return parser


@dataclass
class PretrainingArguments:
    """All pre-training arguments: ``.model``, ``.data``, ``.augment``, ``.training``."""

    model: ModelArguments = field(default_factory=ModelArguments)
    data: DataArguments = field(default_factory=DataArguments)
    augment: AugmentArguments = field(default_factory=AugmentArguments)
    training: TrainingArguments = field(default_factory=TrainingArguments)

    def model_config(self, num_mel_bins: int = 64) -> MSCLConfig:
        """The model's config, the one place the model arguments become an `MSCLConfig`:
        ``num_mel_bins`` comes from the chunk set's feature extractor, the rest from
        ``.model`` (MSCLConfig's defaults for what it does not set). Raises ValueError
        on a bad value, MSCLConfig's checks being the only ones."""
        return MSCLConfig(num_mel_bins=num_mel_bins, **asdict(self.model))

    @staticmethod
    def keys() -> dict[str, tuple[str, Any]]:
        """Every flat key -> (group name, type hint)."""
        out = {}
        for group, cls in _GROUPS:
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                out[f.name] = (group, hints[f.name])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainingArguments:
        """Build from a flat mapping (a YAML config, ``training_args.json``); unknown keys
        raise ValueError."""
        if not isinstance(values, dict):
            raise ValueError(
                f"a config must be a mapping of key: value, got {type(values).__name__}"
            )
        _refuse_unknown(values)
        args = cls(*argument_parser().parse_dict(values))
        _typed(args)
        return args

    @classmethod
    def from_config(cls, config: str | os.PathLike, **overrides: Any) -> PretrainingArguments:
        """The arguments of a YAML file or shipped config (demo, paper, tiny), with
        ``overrides`` (flat keys, Python values) on top; validated.

        The Python API of :func:`~modeling_mscl.training.pretrain`:
        ``pretrain(PretrainingArguments.from_config("demo", data_dir=d, max_steps=100))``.
        """
        return cls.from_dict({**_read_config(config), **overrides}).validate()

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping (what ``training_args.json`` holds)."""
        out: dict[str, Any] = {}
        for group, _ in _GROUPS:
            out.update(asdict(getattr(self, group)))
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the flat mapping as JSON (atomically: a temporary file renamed)."""
        with atomic_write(path, "w") as handle:
            handle.write(json.dumps(self.to_dict(), indent=2) + "\n")

    def validate(self) -> PretrainingArguments:
        """Check every value; raise ValueError naming the first bad one. Returns self."""
        d, t = self.data, self.training

        def bad(key: str, why: str) -> None:
            value = self.to_dict()[key]
            raise ValueError(f"{key}={value!r} is invalid: {why}")

        # inf and nan pass most range checks below (and "nan > 0" is False, not an error).
        for key, value in self.to_dict().items():
            if isinstance(value, float) and not math.isfinite(value):
                bad(key, "must be a finite number")

        # The model's own checks (MSCLConfig's) cover the model group.
        self.model_config()

        if not d.data_dir:
            raise ValueError("data_dir is required: the chunk dataset saved by prepare_chunks")
        data_dir = Path(d.data_dir).expanduser()
        if not data_dir.is_dir():
            bad("data_dir", "no such directory")
        if not any((data_dir / f).is_file() for f in ("dataset_dict.json", "state.json")):
            from .chunk_set import CHUNK_COLUMNS, INFO_FILE
            from .data_checks import describe_non_chunk_set

            # What the folder is (one split of a chunk set, other files) and what was expected.
            bad("data_dir", describe_non_chunk_set(data_dir, INFO_FILE, CHUNK_COLUMNS))
        get_objective(d.objective)  # an unknown one: the error that lists the registered
        if not d.sources or any(s not in SOURCES for s in d.sources):
            bad("sources", f"expected a non-empty subset of {SOURCES}")
        if len(set(d.sources)) != len(d.sources):
            bad("sources", "a source is listed twice")
        if not 0.0 <= d.random_batch_prob <= 1.0:
            bad("random_batch_prob", "must lie in [0, 1]")
        if not 0.0 <= d.validation_fraction < 1.0:
            bad("validation_fraction", "must lie in [0, 1)")
        if d.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if d.prefetch_factor < 1:
            bad("prefetch_factor", "must be >= 1")
        if d.augment_on not in AUGMENT_ON:
            bad("augment_on", f"expected one of {AUGMENT_ON}")

        self.spec_augmentation()  # SpecAugmentation checks its own ranges

        if t.max_steps < 1:
            bad("max_steps", "must be >= 1")
        if t.batch_size < 2:
            bad("batch_size", "a contrastive minibatch needs >= 2 pairs")
        if t.gradient_accumulation_steps < 1:
            bad("gradient_accumulation_steps", "must be >= 1")
        if t.optimizer not in OPTIMIZERS:
            bad("optimizer", f"expected one of {OPTIMIZERS}")
        if not t.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if t.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if t.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"expected one of {LR_SCHEDULES}")
        if not 0.0 < t.lr_decay_at <= 1.0:
            bad("lr_decay_at", "must lie in (0, 1]")
        if not 0.0 < t.lr_decay_factor <= 1.0:
            bad("lr_decay_factor", "must lie in (0, 1]")
        if not 0 <= t.warmup_steps < t.max_steps:
            bad("warmup_steps", "must lie in [0, max_steps)")
        if t.max_grad_norm < 0:
            bad("max_grad_norm", "must be >= 0 (0 disables clipping)")
        if t.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", f"expected one of {MIXED_PRECISION}")
        for key in ("checkpoint_every", "eval_every", "probe_every", "eval_batches"):
            if getattr(t, key) < 0:
                bad(key, "must be >= 0")
        for key in ("keep_checkpoints", "log_every", "max_bad_steps"):
            if getattr(t, key) < 1:
                bad(key, "must be >= 1")
        if t.probe_hook is not None and ":" not in t.probe_hook:
            bad("probe_hook", "expected 'module:function'")
        if t.log_with not in TRACKERS:
            bad("log_with", f"expected one of {TRACKERS}")
        return self

    def spec_augmentation(self):
        """The :class:`~modeling_mscl.augment.SpecAugmentation` of the augment group."""

        return SpecAugmentation(
            **{name: getattr(self.augment, key) for name, key in _AUGMENT_KEYS.items()}
        )


def _refuse_unknown(keys: Any) -> None:
    known = PretrainingArguments.keys()
    unknown = [k for k in keys if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ValueError(f"unknown argument(s): {', '.join(hints)}")


def _config_file(name_or_path: str | os.PathLike) -> Path:
    """A YAML file, or the name of a config shipped with the package (demo, paper, tiny)."""
    from .package_data import resource_dir

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = resource_dir("configs")
    name = str(name_or_path)
    if not path.suffix and path.name == name and (shipped / f"{path}.yaml").is_file():
        return shipped / f"{path}.yaml"
    names = sorted(p.stem for p in shipped.glob("*.yaml"))
    raise ValueError(f"config file {path} does not exist (shipped configs by name: {names})")


def _read_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The flat mapping of a YAML (or JSON) config file or shipped config."""
    import yaml

    path = _config_file(name_or_path)
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config must be a mapping of key: value")
    try:
        _refuse_unknown(loaded)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return loaded


def _typed(args: PretrainingArguments) -> None:
    """argparse converts command-line strings, not config defaults: check those types."""
    values = args.to_dict()
    for key, (_, hint) in PretrainingArguments.keys().items():
        value = values[key]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            if value is None:
                continue
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif hint is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, hint)
        if not ok:
            name = getattr(hint, "__name__", str(hint))
            raise ValueError(f"{key}: expected {name}, got {value!r}")


def parse_args(argv: list[str] | None = None) -> PretrainingArguments:
    """Parse ``[--config FILE] [--key value ...]`` (default ``sys.argv[1:]``) and validate.

    ``HfArgumentParser`` over the four groups: the config's values become the parser's
    defaults, so the command line overrides them (a bare ``--flag`` sets a boolean, a list
    takes several values: ``--sources vocals drums``). ``--help`` prints every key and
    exits. Raises ValueError on unknown keys, bad values or a missing data directory.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    parser = argument_parser()
    if config is not None:
        parser.set_defaults(**_read_config(config))
    try:
        *groups, _ = parser.parse_args_into_dataclasses(argv)
    except ValueError as err:
        unknown = [a[2:].partition("=")[0] for a in argv if a.startswith("--")]
        unknown = [k for k in unknown if k not in PretrainingArguments.keys() and k != "config"]
        if unknown:
            _refuse_unknown(unknown)
        raise ValueError(str(err)) from None
    args = PretrainingArguments(*groups)
    _typed(args)
    return args.validate()
