"""One writer per output folder: a lock held for the life of a run.

Two processes writing one folder (two ``mscl pretrain`` into one ``--output_dir``, two
``mscl separate`` into one chunk set, two merges) would each overwrite the other's files
and both report success. A run therefore holds an operating-system lock on
``FOLDER/.mscl.lock`` (``filelock``: ``flock`` on POSIX) from start to end; a second run
refuses at once, naming the lock file and its holder. The kernel releases the lock when
its process dies, however it dies, so a crashed run never blocks the next one.

Who holds it is recorded next to the lock, in ``FOLDER/.mscl.lock.json`` (pid, host,
command, start time): the lock file itself is truncated by every process that tries it.
When a run takes a lock whose record names another process of this host that is no
longer alive, it says so in a warning (that run died without releasing cleanly).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".mscl.lock"
HOLDER_FILE = ".mscl.lock.json"


class RunLockedError(RuntimeError):
    """Another process holds the run lock of the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown process (no holder record)"
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} ({holder.get('command')!r}, "
        f"since {when})"
    )


class RunLock:
    """The run lock of ``folder`` (which must exist); a context manager.

    Args:
        folder: the output folder of the run.
        command: what the holder runs, for the message a second process prints.
    """

    def __init__(self, folder: str | os.PathLike, command: str) -> None:
        self.folder = Path(folder).expanduser()
        self.path = self.folder / LOCK_FILE
        self.holder_path = self.folder / HOLDER_FILE
        self.command = command
        self._lock: Any = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> RunLock:
        """Take the lock now or raise :class:`RunLockedError` naming its holder."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = self._holder()
            note = ""
            if (
                holder
                and holder.get("host") == socket.gethostname()
                and isinstance(holder.get("pid"), int)
                and not _alive(holder["pid"])
            ):
                note = (
                    " That process is no longer alive: a child it started (a data loader "
                    "worker) may still hold the lock; end it, then run again."
                )
            raise RunLockedError(
                f"{self.folder} is in use by another run: the lock {self.path} is held by "
                f"{_describe(holder)}. Wait for it to finish or write to another folder.{note}"
            ) from None
        previous = self._holder()
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            pid = previous.get("pid")
            if same_host and isinstance(pid, int) and not _alive(pid):
                logger.warning(
                    "%s: taking over the lock of %s, which is no longer alive (it ended "
                    "without releasing the lock; its output may be incomplete)",
                    self.folder,
                    _describe(previous),
                )
            elif not same_host:
                logger.warning(
                    "%s: taking over the lock last recorded by %s; that host no longer holds it",
                    self.folder,
                    _describe(previous),
                )
        from ._files import write_json_atomic

        write_json_atomic(
            self.holder_path,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": self.command or " ".join(sys.argv),
                "started": time.time(),
            },
            indent=2,
        )
        self._lock = lock
        return self

    def release(self) -> None:
        """Give the lock back (the holder record is removed first)."""
        if self._lock is None:
            return
        try:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.holder_path.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
