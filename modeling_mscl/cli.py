"""The ``mscl`` command: ``mscl COMMAND [ARGS ...]`` runs one of :mod:`modeling_mscl.commands`.

The rest of the line goes to the command's own ``main``, so ``mscl COMMAND --help`` is that
command's help and ``mscl pretrain ...`` is ``python -m modeling_mscl.commands.pretrain ...``.
A mistake in the data or the arguments that a command raises (``ValueError``,
``FileNotFoundError`` and the package's errors, which derive from them) ends in one line
naming it; ``--debug`` anywhere on the line (or ``MSCL_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import Sequence
from importlib import resources

__all__ = ["COMMANDS", "USER_ERRORS", "main", "summary", "usage"]

# What a command raises for a mistake a user can fix (bad data, a wrong path or value):
# reported in one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)

# Command name -> module of modeling_mscl.commands, in the order of a run: data, training,
# evaluation, sharing, then the two end-to-end jobs.
COMMANDS = {
    "corpus": "build_corpus",
    "separate": "separate",
    "verify": "verify",
    "pretrain": "pretrain",
    "probe": "probe",
    "retrieval": "stem_retrieval",
    "embed": "embed",
    "search": "search",
    "plot": "plot_convergence",
    "push": "push_to_hub",
    "convert": "convert_reference_checkpoint",
    "export-onnx": "export_onnx",
    "demo": "demo",
    "study": "study",
    "budget-curve": "budget_curve",
    "transfer": "transfer",
}


def summary(name: str) -> str:
    """The first line of command ``name``'s module docstring.

    Read from the source rather than imported: the commands import torch, datasets and
    demucs, which `mscl --help` should not wait for.
    """
    source = resources.files("modeling_mscl.commands") / f"{COMMANDS[name]}.py"
    doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    return doc.splitlines()[0] if doc else ""


def usage() -> str:
    """The text of ``mscl --help``: the commands, one line each."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: mscl COMMAND [ARGS ...]",
        "",
        "Multi-source contrastive learning (MSCL) of music representations.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary(name)}" for name in COMMANDS),
        "",
        "`mscl COMMAND --help` describes a command's arguments; `--debug` shows the",
        "traceback of an error instead of its one line. Pre-training in several",
        "processes: accelerate launch -m modeling_mscl.commands.pretrain --config paper ...",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mscl`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MSCL_DEBUG", "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"mscl: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    command = importlib.import_module(f"modeling_mscl.commands.{COMMANDS[name]}")
    # The commands' parsers name themselves after sys.argv[0] in usage lines and errors.
    called_as = sys.argv
    sys.argv = [f"mscl {name}", *rest]
    try:
        return command.main(rest)
    except USER_ERRORS as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mscl {name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1
    finally:
        sys.argv = called_as


if __name__ == "__main__":
    sys.exit(main())
