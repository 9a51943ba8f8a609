"""The process-wide malloc setting the trainer applies (modeling_mscl.memory)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

ON_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

SCRIPT = """
import resource, sys, torch
def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(size << 20) for size in (12, 9, 3, 12)]  # 36-48 MB each
    del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
if sys.argv[1] == "keep":
    from modeling_mscl.memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # once per process, then cached
print(min([faults_of_a_step() for _ in range(8)][-3:]))
"""


@pytest.mark.skipif(not ON_GLIBC, reason="a glibc setting")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    # In fresh processes: the setting is process-wide and cannot be undone in this one.
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SCRIPT), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    # Left to itself glibc maps and zeroes ~37,000 fresh pages for every such step.
    assert faults("default") > 10_000
    assert faults("keep") < 1_000


def test_the_trainer_applies_it_unless_told_not_to(monkeypatch):
    from modeling_mscl import training
    from modeling_mscl.training_args import PretrainingArguments

    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append(1) or True)
    for flag in (True, False):
        args = PretrainingArguments.from_dict({"keep_freed_memory": flag, "cpu": True})
        training.setup_accelerator(args)
    assert calls == [1]
