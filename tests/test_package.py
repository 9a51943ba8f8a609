"""A regular (non-editable) install works: the package data ships inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run in the installed copy, away from the checkout: cards, configs and recipes must come
# from the wheel.
_CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import modeling_mscl
    from modeling_mscl.package_data import resource_dir
    target = Path(sys.argv[1]).resolve()
    assert Path(modeling_mscl.__file__).resolve().is_relative_to(target), modeling_mscl.__file__
    for kind in ("configs", "data", "model_cards"):
        assert resource_dir(kind).resolve().is_relative_to(target), (kind, resource_dir(kind))

    from modeling_mscl import MSCLConfig, MSCLModel
    from modeling_mscl.hub import render_model_card
    model = MSCLModel(MSCLConfig(width_coefficient=0.25, depth_coefficient=0.25,
                                 projection_dim=8))
    folder = Path(sys.argv[2])
    model.save_pretrained(folder)
    card = render_model_card("encoder", folder, repo_id="someone/mscl-test")
    assert "someone/mscl-test" in card, card[:500]

    from modeling_mscl.demo import DemoSettings
    assert Path(DemoSettings().config).is_file(), DemoSettings().config
    from modeling_mscl.training_args import _config_file
    assert _config_file("paper").resolve().is_relative_to(target)

    from modeling_mscl.corpora.synthetic import load_recipe
    from modeling_mscl.corpora.midi_render import gm_programs
    assert len(load_recipe().styles) >= 2 and len(gm_programs()) == 128
    print("ok")
    """
)


def test_wheel_install_ships_cards_configs_and_recipes(tmp_path):
    pytest.importorskip("setuptools")
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)]
    subprocess.run(build, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("modeling_mscl-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, str(target), str(tmp_path / "encoder")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
