"""Run a script in a fresh interpreter where this package cannot be imported.

What a user holds who only downloaded a saved folder or a Hub repo: the three Hub code
files and transformers. Used by the tests of `trust_remote_code` loading and of the
pipelines; each script runs after a finder that refuses `modeling_mscl`, and must still
not have imported it when it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_HIDE = """
import importlib.abc as _abc, sys as _sys
class _HidePackage(_abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_mscl":
            raise ImportError("modeling_mscl is hidden for this test")
_sys.meta_path.insert(0, _HidePackage())
"""
_CHECK = """
assert not any(n.split(".")[0] == "modeling_mscl" for n in _sys.modules), "package imported"
"""


def run_without_package(
    script: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``script`` (dedented) with ``args`` in a subprocess without the package: offline,
    an empty PYTHONPATH, ``env`` on top. Fails the test with its stderr if it fails."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", **(env or {})}
    code = _HIDE + textwrap.dedent(script) + _CHECK
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
