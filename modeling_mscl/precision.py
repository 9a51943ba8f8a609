"""Which mixed precision a pre-training run uses: ``mixed_precision: auto`` resolved.

``auto`` is bf16 autocast on a GPU that computes bf16 natively (NVIDIA compute capability
8.0 and later: A100, H100, ...) and float32 elsewhere, unless ``accelerate launch`` was
*told* a precision (its ``--mixed_precision`` flag or its config file).

Telling that apart takes a look at the launcher: ``accelerate launch`` hands its choice to
the training processes as ``ACCELERATE_MIXED_PRECISION``, and sets it to ``no`` when
neither its flag nor its config file names a precision. So ``no`` alone does not say
whether someone asked for float32. The launcher is the parent of every training process
it starts (the single-process launcher and torch's elastic agent both run inside it), so
its command line, and the config file it read, say which it was.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["launcher_argv", "launcher_precision", "native_bf16", "resolve_precision"]

_FLAGS = ("--mixed_precision", "--mixed-precision")


def native_bf16() -> bool:
    """Whether the current CUDA device computes bfloat16 in hardware (not emulated).

    ``torch.cuda.is_bf16_supported()`` is also True on older GPUs (a V100, a T4), where
    bfloat16 is emulated and slower than float32.
    """
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation
        return torch.cuda.get_device_capability()[0] >= 8


def launcher_argv() -> list[str] | None:
    """The parent process's command line when it is ``accelerate launch``, else None."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:  # not Linux, or not readable
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    for i, arg in enumerate(argv[:-1]):
        name = os.path.basename(arg)
        if name in ("accelerate", "accelerate-launch") or arg.startswith("accelerate.commands"):
            if argv[i + 1] == "launch" or name == "accelerate-launch":
                return argv
    return None


def _launcher_options(argv: list[str], script: str | None) -> list[str]:
    """The launcher's own options: what comes before the training script."""
    if script:
        target = os.path.realpath(script)
        for i, arg in enumerate(argv):
            if arg == script or (arg.endswith(".py") and os.path.realpath(arg) == target):
                return argv[:i]
    return argv


def _option(options: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(options):
        for name in names:
            if arg == name and i + 1 < len(options):
                return options[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _config_precision(path: Path) -> str | None:
    """``mixed_precision`` of an Accelerate config file (YAML or JSON), None if unset."""
    import yaml  # JSON is YAML too

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    value = config.get("mixed_precision") if isinstance(config, dict) else None
    if value is None and isinstance(config, dict) and config.get("fp16"):
        value = "fp16"  # the older spelling Accelerate still reads
    return None if value is None else str(value).lower()


def _default_config_file(environ: Mapping[str, str]) -> Path:
    """Where ``accelerate config`` writes and ``accelerate launch`` looks by default."""
    cache = environ.get("HF_HOME") or os.path.join(
        environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(cache).expanduser() / "accelerate" / "default_config.yaml"


def launcher_precision(
    environ: Mapping[str, str] | None = None,
    argv: list[str] | None = None,
    script: str | None = None,
) -> str | None:
    """The precision the launcher was told, lower-case; None when it was told none.

    Args:
        environ: the environment (default ``os.environ``).
        argv: the launcher's command line (default :func:`launcher_argv`); None when the
            process was not started by ``accelerate launch``: then a set
            ``ACCELERATE_MIXED_PRECISION`` counts as asked for (someone exported it).
        script: the training script as the launcher was given it (default
            ``sys.argv[0]``): the options after it are the script's own.
    """
    environ = os.environ if environ is None else environ
    launched = environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if not launched:
        return None
    if launched != "no":
        return launched  # the launcher only ever defaults to "no"
    if argv is None:
        argv = launcher_argv()
    if argv is None:
        return launched
    options = _launcher_options(argv, sys.argv[0] if script is None else script)
    flag = _option(options, _FLAGS)
    if flag is not None:
        return flag.lower()
    config = _option(options, ("--config_file", "--config-file"))
    if config is not None:
        path = Path(config).expanduser()
    elif "--cpu" in options:
        return None  # the launcher skips its default config file under --cpu
    else:
        path = _default_config_file(environ)
    return _config_precision(path) if path.is_file() else None


def resolve_precision(requested: str, on_cpu: bool) -> tuple[str, str]:
    """(``"no"`` or ``"bf16"``, why) for the ``mixed_precision`` argument ``requested``."""
    if requested != "auto":
        return requested, f"mixed_precision={requested}"
    launched = launcher_precision()
    # fp16 needs loss scaling, which the training loop does not do: auto decides instead.
    if launched in ("no", "bf16"):
        return launched, f"accelerate launch was told --mixed_precision {launched}"
    if on_cpu:
        return "no", "auto: on the CPU"
    if native_bf16():
        return "bf16", "auto: the GPU computes bf16 natively"
    return "no", "auto: the GPU has no native bf16 (compute capability < 8.0)"
