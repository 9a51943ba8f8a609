"""mixed_precision: auto, resolved the same way under every launcher, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modeling_mscl import precision
from modeling_mscl.precision import launcher_precision, native_bf16, resolve_precision
from modeling_mscl.training import configure_backends

REPO = Path(__file__).resolve().parents[1]
LAUNCH = ["/usr/bin/env", "accelerate", "launch"]


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability, as torch's own checks see it."""

    def make(major: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        props = SimpleNamespace(major=major, minor=0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
        # Pre-Ampere GPUs accept bfloat16 tensors: the emulation torch's check falls back on.
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)

    return make


def test_bf16_is_native_from_compute_capability_8(fake_gpu):
    fake_gpu(7)  # a V100 or a T4
    assert torch.cuda.is_bf16_supported()  # through emulation
    assert not native_bf16()
    fake_gpu(8)  # an A100
    assert native_bf16()


def test_no_gpu_no_bf16():
    assert not native_bf16()


# The launcher's command line: `accelerate launch [its options] script [script options]`.
def argv(*launcher: str, script_options: tuple[str, ...] = ()) -> list[str]:
    return [
        "/venv/bin/python",
        "/venv/bin/accelerate",
        "launch",
        *launcher,
        "train.py",
        *script_options,
    ]


@pytest.mark.parametrize(
    ("env", "launcher", "expected"),
    [
        ({}, None, "bf16"),  # plain python, no launcher
        ({"ACCELERATE_MIXED_PRECISION": "no"}, argv(), "bf16"),  # the launcher's default
        ({"ACCELERATE_MIXED_PRECISION": "no"}, argv("--mixed_precision", "no"), "no"),
        ({"ACCELERATE_MIXED_PRECISION": "no"}, argv("--mixed_precision=no"), "no"),
        ({"ACCELERATE_MIXED_PRECISION": "bf16"}, argv("--mixed_precision", "bf16"), "bf16"),
        # The script's own --mixed_precision is not the launcher's.
        (
            {"ACCELERATE_MIXED_PRECISION": "no"},
            argv(script_options=("--mixed_precision", "no")),
            "bf16",
        ),
        # Exported by hand, without accelerate launch: asked for.
        ({"ACCELERATE_MIXED_PRECISION": "no"}, None, "no"),
    ],
)
def test_auto_on_a_bf16_gpu(env, launcher, expected, fake_gpu, monkeypatch, tmp_path):
    fake_gpu(9)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no accelerate config file
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(precision, "launcher_argv", lambda: launcher)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    assert resolve_precision("auto", on_cpu=False)[0] == expected
    assert resolve_precision("no", on_cpu=False)[0] == "no"  # asked for: no question
    # On the CPU, auto is float32 unless the launcher was told otherwise.
    asked = precision.launcher_precision()
    assert resolve_precision("auto", on_cpu=True)[0] == (asked or "no")


def test_auto_on_an_older_gpu_is_float32(fake_gpu, monkeypatch):
    fake_gpu(7)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    precision_, why = resolve_precision("auto", on_cpu=False)
    assert precision_ == "no" and "compute capability" in why


def test_the_launchers_config_file_counts_as_asked(tmp_path):
    env = {"ACCELERATE_MIXED_PRECISION": "no", "HF_HOME": str(tmp_path / "home")}
    config = tmp_path / "config.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: 'no'\n")
    told = argv("--config_file", str(config))
    assert launcher_precision(env, told, "train.py") == "no"
    config.write_text("compute_environment: LOCAL_MACHINE\n")  # no precision in it
    assert launcher_precision(env, told, "train.py") is None
    # The default config file, which the launcher skips under --cpu.
    default = tmp_path / "home" / "accelerate" / "default_config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("mixed_precision: 'no'\n")
    assert launcher_precision(env, argv(), "train.py") == "no"
    assert launcher_precision(env, argv("--cpu"), "train.py") is None


PROBE = """
import sys
from modeling_mscl.precision import launcher_precision
print("LAUNCHER", launcher_precision())
"""


@pytest.mark.parametrize(("flag", "expected"), [((), "None"), (("--mixed_precision", "no"), "no")])
def test_under_accelerate_launch(flag, expected, tmp_path):
    """The real launcher: without a flag it exports 'no', which is not a request."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HOME": str(tmp_path / "home"),  # no accelerate config file
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    command = [*LAUNCH, "--cpu", "--num_processes", "1", "--num_machines", "1"]
    command += [*flag, "--dynamo_backend", "no", str(script), "--mixed_precision", "no"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"LAUNCHER {expected}" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_cudnn_benchmark_is_on_for_cuda_training(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure_backends(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
