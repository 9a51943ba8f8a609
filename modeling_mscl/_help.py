"""What the `mscl` commands share: help that shows each option's default, plain-text
descriptions, and quiet libraries for `--no-progress`."""

from __future__ import annotations

import argparse
import re

__all__ = ["HelpFormatter", "first_paragraph", "plain_text"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to an option's help.

    Unlike argparse's own, it says nothing where there is nothing to say: a default of
    ``None`` or ``False`` (an unset option, a flag), or a help text that already names it.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


def plain_text(doc: str | None) -> str:
    """A docstring as help text: reStructuredText roles and literals as plain words."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", doc or "").replace("``", "")


def first_paragraph(doc: str | None) -> str:
    """A module docstring's first paragraph, the command's description in its help."""
    return plain_text(doc).split("\n\n")[0].strip()


def quiet_libraries() -> None:
    """What ``--no-progress`` means beyond our own bars: no progress bars and no INFO lines
    from transformers, datasets, huggingface_hub and accelerate (warnings still show)."""
    import importlib.util
    import logging

    from huggingface_hub.utils import disable_progress_bars as hub_quiet
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_warning()
    transformers_logging.disable_progress_bar()
    hub_quiet()
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_warning()
    for name in ("accelerate", "datasets", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
