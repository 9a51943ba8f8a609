"""Where the package's data files are: card templates, run configs and corpus recipes.

The files live in the repository's top-level folders (``model_cards/``, ``scripts/configs/``,
``data/``); ``pyproject.toml`` ships them inside the package as ``modeling_mscl/resources/``.
A wheel or a regular install reads that copy; a source checkout or an editable install,
which has none, reads the top-level folders. One copy of each file serves both.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["RESOURCE_KINDS", "resource_dir"]

# Kind -> folder in a source checkout, relative to the repository root.
RESOURCE_KINDS: dict[str, tuple[str, ...]] = {
    "configs": ("scripts", "configs"),
    "data": ("data",),
    "model_cards": ("model_cards",),
}


def resource_dir(kind: str) -> Path:
    """The folder holding the package's ``kind`` files (one of :data:`RESOURCE_KINDS`)."""
    if kind not in RESOURCE_KINDS:
        raise KeyError(f"unknown resource kind {kind!r}; kinds: {sorted(RESOURCE_KINDS)}")
    # The package is a plain folder on disk (no zip import), so the traversable is a path.
    package = Path(str(resources.files("modeling_mscl")))
    for folder in (package / "resources" / kind, package.parent.joinpath(*RESOURCE_KINDS[kind])):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"the package's {kind} files are missing: neither {package / 'resources' / kind} (an "
        f"install) nor {package.parent.joinpath(*RESOURCE_KINDS[kind])} (a source checkout) "
        "exists; reinstall modeling-mscl"
    )
