"""The Hub code files: what travels with a saved folder, how the files import each other,
and their size.

transformers' remote-code loader copies the module a folder's `auto_map` names and every
file that module imports relatively (`from .x import y`, followed file to file). The list
the package pushes (`HUB_CODE_FILES`) and the files `save_pretrained` writes must both be
that closure, derived here with transformers' own scan rather than written down twice.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from modeling_mscl import MSCLFeatureExtractor, MSCLForPreTraining
from modeling_mscl.chunk_set import _FRONT_END_CODE
from modeling_mscl.hub import _AUTO_MAP, _FE_AUTO_MAP, HUB_CODE_FILES

from .conftest import tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_mscl"
# A Hub file must stay readable: one idea a file, none longer than this.
MAX_HUB_FILE_LINES = 800
# What transformers requires of a user before it runs a Hub file: every import outside a
# try block, function bodies included (so julius, imported by the resampler, counts).
HUB_REQUIREMENTS = {"julius", "numpy", "torch", "transformers"}


def _closure(folder: Path, entries: set[str]) -> set[str]:
    """The entry files and every file transformers' scan collects from them, by name."""
    names = set(entries)
    for entry in entries:
        names |= {Path(p).name for p in get_relative_import_files(str(folder / entry))}
    return names


def _entry_files(auto_map: dict[str, str]) -> set[str]:
    return {f"{ref.split('.')[0]}.py" for ref in auto_map.values()}


def test_hub_code_files_are_what_the_loader_collects():
    entries = _entry_files({**_AUTO_MAP, **_FE_AUTO_MAP})
    assert entries == {"configuration_mscl.py", "feature_extraction_mscl.py", "modeling_mscl.py"}
    assert _closure(PACKAGE, entries) == set(HUB_CODE_FILES)
    # A chunk set carries its front end's code: the feature extractor and what it imports.
    assert _closure(PACKAGE, _entry_files(_FE_AUTO_MAP)) == set(_FRONT_END_CODE)


def test_a_saved_folder_carries_every_collected_file(tmp_path):
    torch.manual_seed(0)
    MSCLForPreTraining(tiny_config()).save_pretrained(tmp_path / "model")
    MSCLFeatureExtractor().save_pretrained(tmp_path / "model")
    MSCLFeatureExtractor().save_pretrained(tmp_path / "front_end")
    for folder in (tmp_path / "model", tmp_path / "front_end"):
        saved = {p.name for p in folder.glob("*.py")}
        # Scanned in the saved folder itself: what a download of it would ask for.
        assert _closure(folder, saved) == saved, folder
    assert {p.name for p in (tmp_path / "model").glob("*.py")} == set(HUB_CODE_FILES)
    assert {p.name for p in (tmp_path / "front_end").glob("*.py")} == set(_FRONT_END_CODE)


@pytest.mark.parametrize("name", HUB_CODE_FILES)
def test_a_hub_file_imports_its_siblings_relatively_and_nothing_hidden(name):
    path = PACKAGE / name
    tree = ast.parse(path.read_text(encoding="utf-8"))
    siblings = {Path(n).stem for n in HUB_CODE_FILES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        elif isinstance(node, ast.ImportFrom):
            # `from .sibling import name`: the one form transformers' scan follows.
            assert node.level == 1 and node.module in siblings, (
                f"{name}:{node.lineno}: a Hub file imports a sibling as `from .x import y`"
            )
            continue
        else:
            continue
        for module in modules:
            # An absolute import of the package breaks a folder loaded without it.
            assert module.split(".")[0] != "modeling_mscl", f"{name}:{node.lineno}: {module}"
    # What transformers requires before running the file (imports outside try blocks).
    required = set(get_imports(str(path))) - set(sys.stdlib_module_names)
    assert required <= HUB_REQUIREMENTS, f"{name} requires {sorted(required)}"


@pytest.mark.parametrize("name", HUB_CODE_FILES)
def test_every_hub_file_is_of_a_readable_size(name):
    lines = len((PACKAGE / name).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_HUB_FILE_LINES, f"{name}: {lines} lines; split it by idea"
