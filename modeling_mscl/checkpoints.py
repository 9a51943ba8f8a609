"""Checkpoints of a pre-training run: atomic saves, the newest complete one, resuming.

A checkpoint is ``output_dir/checkpoints/step-XXXXXXX``: what ``accelerator.save_state``
writes (model, optimizer, scheduler, RNG states of every process, the accumulation
counter), ``training_args.json`` and ``trainer_state.json`` (step, skipped steps, the
sampler's settings and fingerprint). It is written into a hidden temporary folder and
renamed into place, ``trainer_state.json`` last, so a run killed at any moment leaves
either a complete checkpoint or none (the temporary folder is removed at the next start).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ._files import (
    MARKER_FILE,
    TEMP_FOLDER_PREFIX,
    ForeignFolderError,
    atomic_write,
    claim_folder,
    folder_kind,
    replace_folder,
)
from .training_args import PretrainingArguments

__all__ = [
    "ARGS_FILE",
    "CHECKPOINT_DIR",
    "DATA_FILE",
    "RUN_KIND",
    "check_shared_output_dir",
    "TRAINER_STATE",
    "RUN_OUTPUTS",
    "check_data",
    "claim_output_dir",
    "complete_checkpoints",
    "latest_checkpoint",
    "prepare_output_dir",
    "remove_partial_checkpoints",
    "resume",
    "save_checkpoint",
    "schedule_changes",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
ARGS_FILE = "training_args.json"
# The chunk set a run trained on: its folder, content fingerprint and every change of it.
DATA_FILE = "training_data.json"
# The kind in the folder marker of a pre-training output_dir (modeling_mscl._files).
RUN_KIND = "pretraining run"


def _checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX) or not (path / TRAINER_STATE).is_file():
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX) :])
    except ValueError:
        return None


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if (s := _checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def _rng_file_problem(rng_file: Path) -> str:
    """Why accelerate could not have restored the random states of ``rng_file`` ("" if it
    could): missing, empty, or unreadable by the loader accelerate uses."""
    if not rng_file.is_file() or rng_file.stat().st_size == 0:
        return "missing or empty"
    from accelerate.utils import load

    try:
        load(rng_file)  # what Accelerator.load_state read (and, failing, only logged)
    except Exception as err:  # noqa: BLE001 - unpickling raises anything
        return f"unreadable ({type(err).__name__}: {err})"
    return ""


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    accelerator: Any, args: PretrainingArguments, step: int, state: dict[str, Any]
) -> Path:
    """save_state into a temporary folder, then rename it; keep the newest checkpoints."""
    root = Path(args.training.output_dir) / CHECKPOINT_DIR
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f"{TEMP_FOLDER_PREFIX}{CHECKPOINT_PREFIX}{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            args.save(tmp / ARGS_FILE)
            # Written last: a folder with trainer_state.json is a complete checkpoint.
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
    except OSError as err:
        # A full disk or a vanished folder: say which checkpoint, keep the older ones.
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            err.errno, f"checkpoint of step {step} could not be written to {tmp}: {err}"
        ) from err
    if accelerator.is_main_process:
        replace_folder(tmp, final)
        kept = sorted((s, p) for p in root.iterdir() if (s := _checkpoint_step(p)) is not None)
        for _, old in kept[: -args.training.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# What a run writes into its output_dir and a fresh run must not mix with.
RUN_OUTPUTS = (CHECKPOINT_DIR, "encoder", "pretraining")


def prepare_output_dir(
    output_dir: str | os.PathLike, resume: bool, overwrite: bool, is_main_process: bool = True
) -> Path:
    """Check ``output_dir`` before anything is loaded; returns it as a Path.

    A fresh run (``resume`` false) in a folder that holds another run's checkpoints or
    final model is refused: its checkpoints would mingle with the old ones (rotation keeps
    the highest steps, whoever wrote them) and a later resume would load the wrong run.
    ``overwrite`` (``--overwrite_output_dir``, as in transformers) deletes those outputs
    first. Also checks that the folder can be written, so that a read-only or missing
    location fails now rather than at the first checkpoint. Every process checks; only the
    main process creates and deletes.
    """
    out = Path(output_dir).expanduser()
    used = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if used and not resume and not overwrite:
        raise ValueError(
            f"output_dir {out} already holds a run ({', '.join(used)}): pass --resume true to "
            "continue it, --overwrite_output_dir true to replace it, or another --output_dir"
        )
    if not is_main_process:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output_dir {out} cannot be written: {err}") from err
    if used and not resume:
        if folder_kind(out) != RUN_KIND:  # delete only what a run of the package wrote
            raise ForeignFolderError(
                f"output_dir {out} was not created by a modeling_mscl run (no "
                f"{MARKER_FILE}); --overwrite_output_dir deletes only a run's own outputs: "
                f"remove {', '.join(used)} yourself or pick another output_dir"
            )
        logger.warning("overwrite_output_dir: deleting %s in %s", used, out)
        for name in used:
            shutil.rmtree(out / name, ignore_errors=True)
    return out


def claim_output_dir(output_dir: str | os.PathLike, resume: bool) -> Path:
    """Make ``output_dir`` a run folder of the package before anything is written there.

    New, empty, or marked by an earlier run: fine (:func:`~modeling_mscl._files.claim_folder`).
    A non-empty folder without the marker is refused, except to resume a run whose
    checkpoints it holds (a run of an earlier version of the package, made before output
    folders were marked). Errors of the file system become a ValueError naming the folder.
    """
    out = Path(output_dir).expanduser()
    legacy = resume and (out / CHECKPOINT_DIR).is_dir() and folder_kind(out) is None
    try:
        return claim_folder(out, RUN_KIND, adopt=legacy)
    except ForeignFolderError as err:
        if (out / CHECKPOINT_DIR).is_dir() and folder_kind(out) is None:
            raise ForeignFolderError(
                f"{err}. If it is a run of an earlier version of modeling_mscl, "
                "--resume true continues it"
            ) from None
        raise
    except OSError as err:
        raise ValueError(f"output_dir {out} cannot be written: {err}") from err


SHARED_PROBE = ".shared-output-dir-check"


def check_shared_output_dir(accelerator: Any, output_dir: str | os.PathLike) -> None:
    """Raise ValueError on every process unless all of them see the same ``output_dir``.

    Checkpoints are written by the main process and read back by every process on
    resume, and the final model is saved once: under several nodes ``output_dir`` must be
    one folder every node mounts (a shared filesystem), not each node's local disk of the
    same name. The main process writes a random token there; every process reads it.
    One broadcast and one gather at the start of a multi-process run.
    """
    import secrets

    import torch
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes == 1:
        return
    probe = Path(output_dir).expanduser() / SHARED_PROBE
    token = [secrets.token_hex(16) if accelerator.is_main_process else None]
    if accelerator.is_main_process:
        with atomic_write(probe) as handle:
            handle.write(token[0])
    broadcast_object_list(token)  # after the write: every process looks once it has it
    try:
        seen = probe.read_text() == token[0]
    except OSError:
        seen = False
    flags = accelerator.gather(torch.tensor([int(seen)], device=accelerator.device))
    if accelerator.is_main_process:  # every process has looked (the gather waited)
        probe.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    blind = [rank for rank, ok in enumerate(flags.tolist()) if not ok]
    if blind:
        raise ValueError(
            f"output_dir {output_dir} is not the same folder on every process: process(es) "
            f"{blind} do not see the file the main process wrote there. Under several nodes "
            "put output_dir on a filesystem that every node mounts (checkpoints are written "
            "by the main process and read by all of them on resume)."
        )


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete the temporary folders a killed run left behind (main process only)."""
    for stale in (Path(output_dir) / CHECKPOINT_DIR).glob(f"{TEMP_FOLDER_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    ignore = {"resume", "max_steps", "progress_bar", "log_every", "log_with", "num_workers"}
    ignore |= {"prefetch_factor", "checkpoint_every", "keep_checkpoints", "eval_every"}
    ignore |= {"probe_every", "probe_hook", "max_bad_steps", "output_dir", "data_dir"}
    ignore |= {"overwrite_output_dir", "allow_data_change", "verify_data"}
    keys = sorted((set(saved) | set(current)) - ignore)
    return [k for k in keys if saved.get(k) != current.get(k)]


# Arguments that define the learning-rate schedule. The scheduler state saved in a
# checkpoint carries the schedule it was built with (the decay step, say), so a resumed
# run with other values would silently follow the old schedule: resuming refuses instead.
SCHEDULE_KEYS = ("lr_schedule", "learning_rate", "warmup_steps", "lr_decay_at", "lr_decay_factor")


def schedule_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The schedule-defining arguments that differ between a checkpoint and this run.

    ``max_steps`` counts too unless both schedules are constant (then it only says where
    to stop, and a run may be extended).
    """
    keys = list(SCHEDULE_KEYS)
    if saved.get("lr_schedule") != "constant" or current.get("lr_schedule") != "constant":
        keys.append("max_steps")
    return [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def check_data(
    checkpoint: Path, state: dict[str, Any], data: dict[str, Any], allow_change: bool
) -> list[dict[str, Any]]:
    """The data history a resumed run continues: the checkpoint's, plus this resume when
    it changes the data.

    ``data`` is this run's ``{"data_dir", "fingerprint"}``; ``state`` the checkpoint's
    trainer state. Another chunk-set fingerprint than the checkpoint's is refused
    (ValueError naming both folders and fingerprints) unless ``allow_change``
    (``--allow_data_change``), which records the change.
    """
    saved = state.get("data")
    history = list(state.get("data_history") or [])
    if not isinstance(saved, dict) or not saved.get("fingerprint"):
        logger.warning(
            "resume: %s does not record the fingerprint of its training data (made by an "
            "earlier version of modeling_mscl): the data cannot be checked",
            checkpoint,
        )
        return history or [{"step": int(state.get("step", 0)), **data, "unrecorded_before": True}]
    if saved["fingerprint"] == data["fingerprint"]:
        return history
    change = (
        f"the checkpoint {checkpoint} was trained on the chunk set {saved.get('data_dir')} "
        f"(fingerprint {saved['fingerprint']}); data_dir {data['data_dir']} holds other "
        f"content (fingerprint {data['fingerprint']})"
    )
    if not allow_change:
        raise ValueError(
            f"resume: {change}. The resumed run would not continue the one it resumes. "
            "Resume with the original chunk set, start a new run in another output_dir, or "
            "pass --allow_data_change true to continue on this data (recorded in the run)"
        )
    logger.warning("resume: %s; continuing as --allow_data_change asks (recorded)", change)
    return [
        *history,
        {
            "step": int(state.get("step", 0)),
            **data,
            "previous_fingerprint": saved["fingerprint"],
            "previous_data_dir": saved.get("data_dir"),
            "allowed_by": "allow_data_change",
        },
    ]


def _check_precision(
    checkpoint: Path, state: dict[str, Any], args: PretrainingArguments, precision: str | None
) -> None:
    """Refuse a resume whose precision 'auto' resolved differently; warn if asked for."""
    saved = state.get("mixed_precision")  # absent from checkpoints of older versions
    if precision is None or saved is None or saved == precision:
        return
    message = (
        f"resume: {checkpoint} was trained with mixed precision {saved!r}, this run's is "
        f"{precision!r}"
    )
    from .precision import launcher_precision

    if args.training.mixed_precision != "auto" or launcher_precision() in ("no", "bf16"):
        logger.warning("%s, as asked for", message)
        return
    raise ValueError(
        f"{message} (what mixed_precision: auto gives here). Pass --mixed_precision "
        f"{saved} to pretrain.py to continue as the run was trained, or --mixed_precision "
        f"{precision} to change it deliberately."
    )


def resume(
    accelerator: Any,
    args: PretrainingArguments,
    fingerprint: str,
    data: dict[str, Any] | None = None,
    precision: str | None = None,
) -> tuple[int, int, int, list[dict[str, Any]]]:
    """Load the newest checkpoint into ``accelerator``'s prepared objects.

    Returns (step, skipped steps, skipped steps in a row, data history); (0, 0, 0, [])
    without a checkpoint. Raises ValueError when an argument that defines the
    learning-rate schedule changed (see :data:`SCHEDULE_KEYS`), when ``data`` (this
    run's ``{"data_dir", "fingerprint"}``) is not the checkpoint's (:func:`check_data`),
    or when ``mixed_precision: auto`` resolves to another ``precision`` than the
    checkpoint's run had (a bf16 run resumed in float32 on another machine, say); warns
    when the precision changed because it was asked for, or when the sampler's
    fingerprint or other arguments that shape the run changed.
    """
    out_dir = Path(args.training.output_dir).expanduser()
    checkpoints = complete_checkpoints(out_dir)
    if not checkpoints:
        logger.warning("resume: no checkpoint in %s, starting from scratch", out_dir)
        return 0, 0, 0, []
    # Newest first; an unreadable one (a truncated file, a full disk at save time) is
    # reported and the previous one is tried, rather than failing the whole run.
    for checkpoint in reversed(checkpoints):
        try:
            saved_args = json.loads((checkpoint / ARGS_FILE).read_text())
            state = json.loads((checkpoint / TRAINER_STATE).read_text())
        except (OSError, ValueError) as err:
            logger.warning("resume: %s is unreadable (%s); trying an older one", checkpoint, err)
            continue
        history = (
            check_data(checkpoint, state, data, args.training.allow_data_change)
            if (data is not None)
            else []
        )
        _check_precision(checkpoint, state, args, precision)
        changed_schedule = schedule_changes(saved_args, args.to_dict())
        if changed_schedule:
            raise ValueError(
                f"resume: the learning-rate schedule of {checkpoint} was built with other "
                f"arguments ({'; '.join(changed_schedule)}); the checkpoint's scheduler would "
                "keep the old schedule. Resume with the checkpoint's values, or start a new "
                "run in another output_dir."
            )
        try:
            # Model, optimizer, scheduler, RNG states and Accelerate's accumulation counter.
            accelerator.load_state(str(checkpoint))
        except Exception as err:  # noqa: BLE001 - safetensors, torch and OS errors alike
            logger.warning("resume: %s is unreadable (%s); trying an older one", checkpoint, err)
            continue
        break
    else:
        raise RuntimeError(
            f"resume: none of the {len(checkpoints)} checkpoints in {out_dir / CHECKPOINT_DIR} "
            "could be read (see the warnings above); start a new run with "
            "--overwrite_output_dir true"
        )
    rng_file = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    problem = _rng_file_problem(rng_file)
    if problem:
        # Accelerate only logs this at INFO level; the resumed run then draws other
        # dropout masks and crops than an uninterrupted one would.
        logger.warning(
            "resume: %s is %s: the random states are not restored, so the "
            "resumed run will not match an uninterrupted one exactly",
            rng_file,
            problem,
        )
    if state.get("sampler_fingerprint") != fingerprint:
        logger.warning(
            "resume: the data or the sampler settings changed since %s; the batches will "
            "not continue the original sequence",
            checkpoint,
        )
    changed = _differences(saved_args, args.to_dict())
    if changed:
        logger.warning("resume: arguments changed since the checkpoint: %s", changed)
    accelerator.print(f"resumed from {checkpoint} at step {state['step']}")
    step, skipped = int(state["step"]), int(state["skipped_steps"])
    return step, skipped, int(state["bad_steps_in_row"]), history
