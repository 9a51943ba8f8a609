"""Tests of pre-training: arguments, the loop, resume after SIGKILL, two processes on the CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_mscl.chunk_set import load_chunk_set, save_chunk_set
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.pairs import synthetic_chunk_dataset
from modeling_mscl.training import LearningRateSchedule, latest_checkpoint
from modeling_mscl.training_args import PretrainingArguments, parse_args

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "scripts" / "configs" / "tiny.yaml")
# One thread per process: on a shared 2-core machine, OpenMP threads that spin against each
# other make steps 10x slower, and a fixed count keeps reductions bitwise reproducible.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Child processes import this checkout's package, whatever else is installed.
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
# The test chunk set's front end: not the default one, so that an encoder exported with
# the default feature extractor would be caught.
FRONT_END = MSCLFeatureExtractor(upper_edge_hertz=7000.0, lower_edge_hertz=100.0)


@pytest.fixture(autouse=True)
def one_thread_and_fresh_accelerate():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    # Accelerate keeps process-wide singletons; each in-process run starts from scratch.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunks") / "tiny"
    save_chunk_set(
        synthetic_chunk_dataset(num_tracks=8, chunks_per_track=4, seed=0), path, FRONT_END
    )
    return str(path)


def pretrain(argv: list[str], **kwargs):
    """Pre-train from a command line, as `mscl pretrain` does."""
    from modeling_mscl.training import pretrain as run

    return run(parse_args(argv), **kwargs)


def tiny_argv(data_dir: str, output_dir: Path, *extra: str) -> list[str]:
    return ["--config", TINY, "--data_dir", data_dir, "--output_dir", str(output_dir), *extra]


# ---------------------------------------------------------------------------- arguments


def test_yaml_and_command_line(data_dir, tmp_path):
    args = parse_args(
        tiny_argv(
            data_dir,
            tmp_path,
            "--max_steps",
            "10",
            "--objective=cola",
            "--sources",
            "vocals",
            "drums",
            "--resume",
            "--learning_rate",
            "5e-4",
            "--probe_hook",
            "none",
        )
    )
    assert args.training.max_steps == 10 and args.data.objective == "cola"
    assert args.data.sources == ["vocals", "drums"] and args.training.resume is True
    assert args.training.learning_rate == 5e-4 and args.training.probe_hook is None
    assert args.model.width_coefficient == 0.25  # from the YAML
    assert args.training.batch_size == 8 and args.data.num_workers == 0
    # The saved JSON is a config: it gives back the same arguments.
    args.save(tmp_path / "args.json")
    again = parse_args(["--config", str(tmp_path / "args.json")])
    assert again == args


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_step", "3"], "did you mean 'max_steps'"),
        (["--max_steps", "three"], "max_steps.*invalid int value: 'three'"),
        (["--objective", "byol"], "objective='byol' is invalid"),
        (["--sources", "vocals", "piano"], "sources"),
        (["--batch_size", "1"], "batch_size=1 is invalid"),
        (["--lr_decay_at", "0"], "lr_decay_at"),
        (["--absent_sources", "maybe"], "absent_sources.*Truthy value expected"),
        (["--width_coefficient", "-1"], "width_coefficient"),
        (["--similarity", "dot"], "similarity"),
        (["--log_with", "tensorbored"], "log_with"),
        (["--max_steps"], "max_steps.*expected one argument"),
        (["--learning_rate", "inf"], "learning_rate=inf is invalid: must be a finite number"),
        (["--max_grad_norm", "nan"], "max_grad_norm=nan is invalid: must be a finite number"),
        (["--similarity_temperature=-inf"], "similarity_temperature=-inf is invalid"),
        (["--augment_fill_value", "nan"], "augment_fill_value=nan is invalid"),
    ],
)
def test_bad_arguments_are_named(data_dir, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(tiny_argv(data_dir, tmp_path, *extra))


def test_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match="data_dir is required"):
        parse_args(["--config", TINY])
    with pytest.raises(ValueError, match="no such directory"):
        parse_args(["--config", TINY, "--data_dir", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="save_to_disk"):
        parse_args(["--config", TINY, "--data_dir", str(tmp_path)])
    from modeling_mscl.commands.pretrain import main

    assert main(["--config", TINY]) == 2  # the command reports, no traceback


def test_the_chunk_set_must_suit_the_model(data_dir, tmp_path):
    from modeling_mscl.training import load_chunk_stores

    store, validation = load_chunk_stores(parse_args(tiny_argv(data_dir, tmp_path)))
    assert store.feature_extractor.to_dict() == FRONT_END.to_dict()
    assert validation.feature_extractor is store.feature_extractor
    # A chunk set of the previous format (no version, no feature extractor): refused.
    old = tmp_path / "old"
    synthetic_chunk_dataset(num_tracks=4, chunks_per_track=2).save_to_disk(str(old))
    with pytest.raises(ValueError, match="format version 1.*re-make it"):
        pretrain(tiny_argv(str(old), tmp_path / "run"))


def test_configs_parse(data_dir):
    for name in ("tiny", "demo", "paper"):
        path = REPO / "scripts" / "configs" / f"{name}.yaml"
        by_path = parse_args(["--config", str(path), "--data_dir", data_dir])
        # A shipped config can be named instead of located (what a wheel install needs).
        assert parse_args(["--config", name, "--data_dir", data_dir]) == by_path
    with pytest.raises(ValueError, match=r"shipped configs by name: \['demo', 'paper', 'tiny'\]"):
        parse_args(["--config", "papr", "--data_dir", data_dir])
    keys = PretrainingArguments.keys()
    assert {"max_steps", "objective", "width_coefficient", "time_masks_max"} <= set(keys)


def test_python_api_equals_the_command_line(data_dir, tmp_path):
    by_argv = parse_args(tiny_argv(data_dir, tmp_path, "--max_steps", "3", "--sources", "drums"))
    by_api = PretrainingArguments.from_config(
        "tiny", data_dir=data_dir, output_dir=str(tmp_path), max_steps=3, sources=["drums"]
    )
    assert by_api == by_argv
    with pytest.raises(ValueError, match="did you mean 'max_steps'"):
        PretrainingArguments.from_config("tiny", data_dir=data_dir, max_step=3)
    # argparse converts command-line strings only: a config's values are checked apart.
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 3.5\n")
    with pytest.raises(ValueError, match="batch_size: expected int, got 3.5"):
        parse_args(["--config", str(bad), "--data_dir", data_dir])
    bad.write_text("batch_sise: 4\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown argument\(s\): 'batch_sise'"):
        parse_args(["--config", str(bad), "--data_dir", data_dir])
    with pytest.raises(TypeError, match="PretrainingArguments"):
        from modeling_mscl.training import pretrain as run

        run(tiny_argv(data_dir, tmp_path))


def test_learning_rate_schedules():
    step = LearningRateSchedule("step", 100)
    assert step(0) == step(49) == 1.0 and step(50) == step(99) == 0.5  # the paper: halved
    cosine = LearningRateSchedule("cosine", 100, warmup_steps=10)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(55) == pytest.approx(0.5)
    assert cosine(100) == pytest.approx(0.0, abs=1e-9)
    assert LearningRateSchedule("constant", 100)(99) == 1.0


# ------------------------------------------------------------------------------ the loop


@pytest.mark.parametrize(
    "extra",
    [
        ["--objective", "cola"],
        ["--objective", "mscl"],
        ["--objective", "mscl", "--sources", "drums", "--absent_sources", "false"],
        ["--objective", "s3t", "--augment_on", "device", "--gradient_accumulation_steps", "2"],
    ],
    ids=["cola", "mscl", "mscl-drums-active", "s3t-accumulate"],
)
def test_two_steps_of_every_objective(data_dir, tmp_path, extra):
    from transformers import AutoFeatureExtractor, AutoModel

    from modeling_mscl import MSCLForPreTraining, MSCLModel

    out = tmp_path / "run"
    result = pretrain(tiny_argv(data_dir, out, "--max_steps", "2", *extra))
    assert result.step == 2 and result.skipped_steps == 0
    assert np.isfinite(result.metrics["train/loss"]) and "val/loss" in result.metrics
    encoder = AutoModel.from_pretrained(result.encoder_dir)
    assert isinstance(encoder, MSCLModel) and encoder.config.width_coefficient == 0.25
    exported = AutoFeatureExtractor.from_pretrained(result.encoder_dir)
    assert exported.to_dict() == FRONT_END.to_dict()  # the chunk set's, not the default
    saved = json.loads((out / "encoder" / "training_args.json").read_text())
    assert saved["objective"] == extra[1] and saved["max_steps"] == 2
    full = MSCLForPreTraining.from_pretrained(result.pretraining_dir)
    torch.testing.assert_close(
        full.mscl.projection.weight, encoder.projection.weight, rtol=0, atol=0
    )
    assert latest_checkpoint(out).name == "step-0000002"
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["minibatch"] == 2 * int(
        saved["gradient_accumulation_steps"]
    )
    assert (latest_checkpoint(out) / "training_args.json").is_file()


def test_non_finite_weights_fail_loudly_and_save_nothing(data_dir, tmp_path):
    """A finite but absurd learning rate drives the weights to inf in one SGD step; the run
    must not end "done" with an encoder of NaNs."""

    argv = tiny_argv(data_dir, tmp_path / "blowup", "--max_steps", "1", "--optimizer", "sgd")
    with pytest.raises(RuntimeError, match="trained weights are not finite"):
        pretrain([*argv, "--learning_rate", "3e38", "--max_grad_norm", "0"])
    assert not (tmp_path / "blowup" / "encoder").exists()
    assert not (tmp_path / "blowup" / "pretraining").exists()


def test_bad_steps_are_skipped_then_stop_the_run(data_dir, tmp_path, monkeypatch):
    from modeling_mscl import pairs

    build = pairs.PairDataset.build

    def flaky(self, plan):
        if plan.step == 1:
            raise OSError("simulated unreadable chunk")
        return build(self, plan)

    monkeypatch.setattr(pairs.PairDataset, "build", flaky)
    calls = []

    def probe(encoder, step):
        calls.append((type(encoder).__name__, step, encoder.training))
        torch.rand(3)  # probes may use randomness: it must not leak into training
        return {"score": float(step)}

    result = pretrain(
        tiny_argv(data_dir, tmp_path / "flaky", "--max_steps", "3", "--probe_every", "2"),
        probe_hook=probe,
    )
    assert result.step == 3 and result.skipped_steps == 1
    assert result.metrics["train/skipped_steps"] == 1.0
    assert calls == [("MSCLModel", s, False) for s in (0, 2, 3)]
    assert result.metrics["probe/score"] == 3.0
    monkeypatch.setattr(pairs.PairDataset, "build", build)

    # Non-finite data everywhere: every step is skipped, the run stops after max_bad_steps.
    broken = load_chunk_set(data_dir).data.map(
        lambda row: {"mixture": np.full((392, 64), np.nan, np.float16)}
    )
    broken_dir = tmp_path / "nan-chunks"
    save_chunk_set(broken, broken_dir, FRONT_END)
    with pytest.raises(RuntimeError, match="2 optimizer steps in a row"):
        pretrain(
            tiny_argv(str(broken_dir), tmp_path / "nan", "--max_steps", "5", "--max_bad_steps", "2")
        )


@pytest.mark.parametrize(
    "objective",
    [("cola",), ("mscl", "--sources", "drums", "--absent_sources", "false")],
    ids=["cola", "mscl-drums"],
)
def test_loss_falls(data_dir, tmp_path, objective):

    result = pretrain(
        tiny_argv(
            data_dir,
            tmp_path / "fall",
            *("--objective", *objective, "--max_steps", "50", "--batch_size", "16"),
            *("--drop_connect_rate", "0", "--eval_every", "0", "--checkpoint_every", "0"),
            *("--lr_schedule", "constant", "--learning_rate", "3e-3"),
        )
    )
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(losses) == 50
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    # Chance level for 16 columns is ln 16 = 2.77.
    assert last < first - 0.5, (first, last)


def test_probe_hook_by_name_and_tensorboard(data_dir, tmp_path):
    from modeling_mscl.training import resolve_probe_hook

    assert resolve_probe_hook(None) is None
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_probe_hook("modeling_mscl.training:no_such_hook")
    out = tmp_path / "named"
    result = pretrain(
        tiny_argv(
            data_dir,
            out,
            *("--max_steps", "2", "--probe_every", "1", "--log_with", "tensorboard"),
            *("--probe_hook", "tests.test_training:count_parameters_probe"),
        )
    )
    assert result.metrics["probe/parameters"] > 1000
    assert [h["step"] for h in result.history if "probe/parameters" in h] == [0.0, 1.0, 2.0]
    assert list((out / "logs").rglob("events.out.tfevents*"))


def count_parameters_probe(encoder, step):
    """A probe hook named in a config (used by the test above)."""
    return {"parameters": sum(p.numel() for p in encoder.parameters())}


# ---------------------------------------------------------------- resume after SIGKILL


def test_resume_continues_exactly(data_dir, tmp_path):
    """Stopping at step 2 and resuming to 4 gives the weights of a run straight to 4."""

    common = ("--lr_schedule", "constant", "--checkpoint_every", "2", "--eval_every", "0")
    whole = pretrain(tiny_argv(data_dir, tmp_path / "whole", "--max_steps", "4", *common))
    pretrain(tiny_argv(data_dir, tmp_path / "parts", "--max_steps", "2", *common))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    parts = pretrain(
        tiny_argv(data_dir, tmp_path / "parts", "--max_steps", "4", "--resume", *common)
    )
    assert parts.history[0]["step"] == 3.0  # it did continue, not start over
    want = load_file(Path(whole.pretraining_dir) / "model.safetensors")
    got = load_file(Path(parts.pretraining_dir) / "model.safetensors")
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_resume_falls_back_from_a_corrupt_latest_checkpoint(data_dir, tmp_path, caplog):
    """A truncated newest checkpoint is reported and the previous one is used: the resumed
    run still ends with the weights of a run straight through."""
    from accelerate.state import AcceleratorState, GradientState

    common = ("--lr_schedule", "constant", "--checkpoint_every", "2", "--eval_every", "0")
    whole = pretrain(tiny_argv(data_dir, tmp_path / "whole", "--max_steps", "4", *common))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    pretrain(tiny_argv(data_dir, tmp_path / "parts", "--max_steps", "4", *common))
    weights = tmp_path / "parts" / "checkpoints" / "step-0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a save cut short
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with caplog.at_level("WARNING"):
        parts = pretrain(
            tiny_argv(data_dir, tmp_path / "parts", "--max_steps", "4", "--resume", *common)
        )
    assert "step-0000004 is unreadable" in caplog.text
    assert "random states are not restored" not in caplog.text
    assert parts.history[0]["step"] == 3.0  # continued from step 2
    want = load_file(Path(whole.pretraining_dir) / "model.safetensors")
    got = load_file(Path(parts.pretraining_dir) / "model.safetensors")
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert not list((tmp_path / "parts").glob(".tmp-*"))  # the final saves were renamed


def test_a_full_disk_during_a_checkpoint_names_it_and_keeps_the_older_ones(
    data_dir, tmp_path, monkeypatch
):
    import errno

    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def fills_up(self, output_dir, **kwargs):
        if "step-0000002" in str(output_dir):
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fills_up)
    argv = tiny_argv(data_dir, tmp_path / "run", "--max_steps", "3", "--checkpoint_every", "1")
    with pytest.raises(
        OSError, match="checkpoint of step 2 could not be written to .*step-0000002"
    ):
        pretrain([*argv, "--eval_every", "0"])
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert left == ["step-0000001"]  # the half-written one is gone, the older one kept


def test_resume_without_random_states_warns(data_dir, tmp_path, caplog):
    from accelerate.state import AcceleratorState, GradientState

    common = ("--lr_schedule", "constant", "--checkpoint_every", "2", "--eval_every", "0")
    pretrain(tiny_argv(data_dir, tmp_path / "run", "--max_steps", "2", *common))
    (tmp_path / "run" / "checkpoints" / "step-0000002" / "random_states_0.pkl").unlink()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with caplog.at_level("WARNING"):
        pretrain(tiny_argv(data_dir, tmp_path / "run", "--max_steps", "3", *common, "--resume"))
    assert "random_states_0.pkl is missing or empty" in caplog.text


def test_resume_refuses_a_changed_schedule(data_dir, tmp_path):
    """The checkpoint's scheduler carries its decay step: another max_steps is refused."""

    common = ("--lr_schedule", "step", "--checkpoint_every", "2", "--eval_every", "0")
    pretrain(tiny_argv(data_dir, tmp_path / "run", "--max_steps", "2", *common))
    from accelerate.state import AcceleratorState, GradientState

    for extra, word in (
        (("--max_steps", "4"), "max_steps"),
        (("--lr_decay_at", "0.25"), "lr_decay_at"),
    ):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        argv = tiny_argv(
            data_dir, tmp_path / "run", "--max_steps", "2", *common, *extra, "--resume"
        )
        with pytest.raises(ValueError, match=f"schedule.*{word}"):
            pretrain(argv)


def test_a_fresh_run_refuses_a_used_output_dir(data_dir, tmp_path):
    """A new run must not mingle its checkpoints with an older run's (rotation keeps the
    highest steps whoever wrote them, and a resume would load the old run)."""
    from accelerate.state import AcceleratorState, GradientState

    def fresh(*extra):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        common = ("--lr_schedule", "constant", "--checkpoint_every", "1", "--eval_every", "0")
        return pretrain(tiny_argv(data_dir, tmp_path / "run", *common, *extra))

    fresh("--max_steps", "3", "--keep_checkpoints", "1")
    with pytest.raises(ValueError, match="already holds a run .*--overwrite_output_dir true"):
        fresh("--max_steps", "2", "--seed", "1")
    result = fresh("--max_steps", "2", "--seed", "1", "--overwrite_output_dir", "true")
    assert result.step == 2
    # Only the new run's checkpoints are left (the old run's step 3 is gone).
    kept = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["step-0000001", "step-0000002"]
    assert all(json.loads((p / "training_args.json").read_text())["seed"] == 1 for p in kept)


def test_an_unwritable_output_dir_fails_before_loading(data_dir, tmp_path, monkeypatch):
    from modeling_mscl import training

    (tmp_path / "a_file").write_text("")
    loaded = []
    monkeypatch.setattr(training, "load_chunk_stores", lambda *a: loaded.append(a))
    with pytest.raises(ValueError, match="a_file/out cannot be written"):
        training.pretrain(parse_args(tiny_argv(data_dir, tmp_path / "a_file" / "out")))
    assert not loaded


def test_sync_batchnorm_is_refused_on_the_cpu(data_dir, tmp_path):

    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
        pretrain(
            tiny_argv(data_dir, tmp_path / "sync", "--sync_batchnorm", "true", "--cpu", "true")
        )


def run_script(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "pretrain.py"), *argv],
        env=ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(data_dir, tmp_path):
    common = ("--max_steps", "8", "--checkpoint_every", "2", "--eval_every", "4")
    reference = run_script(tiny_argv(data_dir, tmp_path / "whole", *common))
    killed = run_script(tiny_argv(data_dir, tmp_path / "killed", *common))
    first = tmp_path / "killed" / "checkpoints" / "step-0000002" / "trainer_state.json"
    deadline = time.time() + 240
    while not first.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stdout.read()
    assert first.exists() and not (tmp_path / "killed" / "encoder").exists()

    resumed = run_script(tiny_argv(data_dir, tmp_path / "killed", *common, "--resume"))
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "resumed from" in log
    log_ref, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, log_ref

    want = load_file(tmp_path / "whole" / "pretraining" / "model.safetensors")
    got = load_file(tmp_path / "killed" / "pretraining" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    kept = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert kept == ["step-0000006", "step-0000008"]  # keep_checkpoints: 2, no temporaries


# ------------------------------------------------------------------- two CPU processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_one_global_loss_with_per_process_batch_norm(data_dir, tmp_path):
    """One SGD step under 2 gloo processes, with the tiny encoder's real batch norm.

    What must match: the step equals the gradient of ONE loss over the global minibatch
    (columns from both processes, the null column the mean of the absent rows of both
    processes), computed from embeddings in which batch norm normalised each process's
    joint (anchors + positives) half separately. What must not match, and does not: the
    step of one process on the whole batch, whose batch norm sees all 2B inputs together
    (that needs --sync_batchnorm, CUDA only), and a loss whose null column comes from one
    process's absent rows only.
    """
    from accelerate.utils import set_seed

    from modeling_mscl.losses import null_source_contrastive_loss
    from modeling_mscl.pairs import PairDataset
    from modeling_mscl.training import build_model, build_sampler, load_chunk_stores

    extra = (
        *("--max_steps", "1", "--optimizer", "sgd", "--learning_rate", "0.5"),
        # Seed 4: absent rows on both processes (2 of 4 on each).
        *("--lr_schedule", "constant", "--seed", "4"),
        *("--drop_connect_rate", "0", "--random_batch_prob", "1.0", "--eval_every", "1"),
        *("--checkpoint_every", "1"),
    )
    argv = tiny_argv(data_dir, tmp_path / "ddp", *extra)
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
        *("--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"),
        *("--dynamo_backend", "no", "--main_process_port", str(free_port())),
        *("-m", "modeling_mscl.commands.pretrain"),  # as `accelerate launch -m` on a cluster
    ]
    done = subprocess.run(
        [*launch, *argv], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = json.loads((tmp_path / "ddp/checkpoints/step-0000001/trainer_state.json").read_text())
    assert state["num_processes"] == 2
    trained = load_file(tmp_path / "ddp" / "pretraining" / "model.safetensors")

    args = parse_args(argv)
    store, _ = load_chunk_stores(args)
    sampler = build_sampler(args, store)
    halves = [PairDataset(store, sampler, 1, rank, 2)[0] for rank in range(2)]
    present = torch.cat([h["present"] for h in halves])
    # Absent rows on both processes, so that a per-process null column would differ.
    assert all(not h["present"].all() for h in halves)

    def sgd_update(encode, per_process_null=False):
        """-lr * gradient of the global loss, with embeddings from ``encode(model)``."""
        set_seed(args.training.seed)
        model = build_model(args)
        initial = {k: v.detach().clone() for k, v in model.named_parameters()}
        anchors, positives = encode(model)
        if not per_process_null:
            loss = null_source_contrastive_loss(anchors, positives, present, model.similarity)
            loss = loss.loss
        else:  # each process's anchors against a null column of its own absent rows
            losses, half = [], len(present) // 2
            for rows in (slice(0, half), slice(half, None)):
                null = positives[rows][~present[rows]].mean(0)
                columns = torch.cat([positives[present], null[None]])
                logits = model.similarity(anchors[rows], columns)
                ranks = torch.cumsum(present.long(), 0)[rows] - 1
                targets = torch.where(present[rows], ranks, len(columns) - 1)
                losses.append(torch.nn.functional.cross_entropy(logits, targets))
            loss = torch.stack(losses).mean()
        loss.backward()
        return initial, {n: -0.5 * p.grad for n, p in model.named_parameters()}

    def zeroed(half):
        return half["positive"].float() * half["present"][:, None, None]

    def per_process(model):
        parts = [
            model.mscl(torch.cat([h["anchor"].float(), zeroed(h)])).audio_embeds.chunk(2)
            for h in halves
        ]
        return torch.cat([a for a, _ in parts]), torch.cat([p for _, p in parts])

    def one_process(model):
        anchors = torch.cat([h["anchor"].float() for h in halves])
        positives = torch.cat([zeroed(h) for h in halves])
        return model.mscl(torch.cat([anchors, positives])).audio_embeds.chunk(2)

    def error(update: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> float:
        """Largest deviation of the trained weights from initial + update, relative to the
        largest update of the model."""
        scale = max(float(u.abs().max()) for u in update.values())
        return (
            max(float((trained[n] - initial[n] - u).abs().max()) for n, u in update.items()) / scale
        )

    initial, update = sgd_update(per_process)
    moved = sum(int(u.abs().max() > 1e-3) for u in update.values())
    assert moved > len(update) // 2  # the step did change the weights
    assert error(update, initial) < 1e-4
    # The alternatives are measurably different steps (measured: 1.3 and 0.18 of the
    # largest update, against 3e-6 for the step above).
    assert error(sgd_update(one_process)[1], initial) > 0.1
    assert error(sgd_update(per_process, per_process_null=True)[1], initial) > 0.02


def test_a_32_mel_chunk_set_trains_a_32_mel_model_and_leaves_its_history(tmp_path, capsys):
    # The model's mel bands come from the chunk set's front end, not from a default of 64.
    from transformers import AutoFeatureExtractor, AutoModel

    from modeling_mscl import cli

    narrow = tmp_path / "narrow"
    save_chunk_set(
        synthetic_chunk_dataset(num_tracks=8, chunks_per_track=4, num_bins=32, seed=0),
        narrow,
        MSCLFeatureExtractor(feature_size=32),
    )
    out = tmp_path / "run"
    argv = tiny_argv(str(narrow), out, "--max_steps", "2", "--log_every", "1")
    result = pretrain([*argv, "--log_with", "none"])
    assert result.step == 2 and np.isfinite(result.metrics["train/loss"])
    assert AutoModel.from_pretrained(result.encoder_dir).config.num_mel_bins == 32
    assert AutoFeatureExtractor.from_pretrained(result.encoder_dir).feature_size == 32
    # Without a tracker the losses are still on disk, one JSON line a logged step.
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "train/loss" in r] == [1, 2]
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "loss.png")]) == 0
    assert "train/loss" in capsys.readouterr().out


def test_a_fresh_run_starts_its_history_anew_and_a_resume_appends(data_dir, tmp_path):
    from modeling_mscl.checkpoints import claim_output_dir

    out = claim_output_dir(tmp_path / "run", resume=False)  # a run folder of the package
    (out / "history.jsonl").write_text('{"step": 99, "train/loss": 7.0}\n')  # a failed try
    pretrain(tiny_argv(data_dir, out, "--max_steps", "2", "--log_every", "1",
                       "--lr_schedule", "constant"))  # fmt: skip
    steps = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert 99 not in steps and steps[-1] == 2
    pretrain(tiny_argv(data_dir, out, "--max_steps", "3", "--log_every", "1",
                       "--lr_schedule", "constant", "--resume", "true"))  # fmt: skip
    steps = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and 1 in steps


def test_resume_refuses_a_precision_that_auto_changed(data_dir, tmp_path, caplog, monkeypatch):
    """A bf16 run resumed where auto resolves to float32 (launched without a flag, or on
    another GPU) is refused; asked for explicitly, it goes on with a warning."""
    from accelerate.state import AcceleratorState, GradientState

    common = ("--max_steps", "2", "--checkpoint_every", "2", "--eval_every", "0")
    pretrain(tiny_argv(data_dir, tmp_path / "run", *common, "--mixed_precision", "auto"))
    state_file = latest_checkpoint(tmp_path / "run") / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["mixed_precision"] == "no"  # auto on the CPU
    state_file.write_text(json.dumps({**state, "mixed_precision": "bf16"}))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    resume = (*common, "--resume")
    with pytest.raises(
        ValueError, match="trained with mixed precision 'bf16'.*--mixed_precision bf16"
    ):
        pretrain(tiny_argv(data_dir, tmp_path / "run", *resume, "--mixed_precision", "auto"))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with caplog.at_level("WARNING"):
        result = pretrain(tiny_argv(data_dir, tmp_path / "run", *resume, "--mixed_precision", "no"))
    assert result.step == 2
    assert "trained with mixed precision 'bf16', this run's is 'no', as asked for" in caplog.text


SHARED_DIR_SCRIPT = """
import sys
from pathlib import Path
from accelerate import Accelerator
from modeling_mscl.checkpoints import SHARED_PROBE, check_shared_output_dir

accelerator = Accelerator(cpu=True)
rank, base = accelerator.process_index, Path(sys.argv[1])
shared = base / "shared"
shared.mkdir(parents=True, exist_ok=True)
check_shared_output_dir(accelerator, shared)
assert not (shared / SHARED_PROBE).exists()
local = base / f"node{rank}"  # each process's own folder: what separate disks look like
local.mkdir(parents=True, exist_ok=True)
try:
    check_shared_output_dir(accelerator, local)
    print(f"rank {rank}: not refused")
except ValueError as err:
    print(f"rank {rank}: refused: {err}")
"""


def test_multi_node_runs_need_a_shared_output_dir(tmp_path):
    """Two processes: one folder for both passes; one folder each (a node's local disk)
    is refused on both processes, naming the one that cannot see the main's file."""
    script = tmp_path / "check.py"
    script.write_text(SHARED_DIR_SCRIPT)
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
        *("--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"),
        *("--dynamo_backend", "no", "--main_process_port", str(free_port())),
    ]
    done = subprocess.run(
        [*launch, str(script), str(tmp_path / "runs")],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: refused: output_dir" in done.stdout, done.stdout
    assert "process(es) [1] do not see" in done.stdout
