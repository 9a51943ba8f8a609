"""Process-wide memory settings for the package's long CPU jobs (pre-training).

Not in the Hub files: a model loaded with ``trust_remote_code`` must not change how the
user's process allocates memory. The trainer applies :func:`keep_freed_memory` unless
``--keep_freed_memory false``; anyone may call it in their own process.
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_applied: list[bool] = []  # [whether in effect] once tried in this process


def keep_freed_memory() -> bool:
    """Keep freed memory in malloc's heap for reuse (Linux with glibc; once per process).

    By default glibc hands every block above 32 MB (one batch's activations) straight back
    to the system and maps fresh pages for the next one, which the kernel zeroes on first
    touch: on the 2-core CPU the benchmarks run on, that took a third of a training step.
    Here blocks up to 1 GB come from the heap, which is no longer trimmed below 2 GB; like
    any caching allocator the process then keeps its peak memory. Returns whether the
    setting is in effect (False on other platforms, where nothing changes).
    """
    if not _applied:
        applied = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)  # the C library this process already runs on
                applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(1 << 30)))
                applied = applied and bool(libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)))
            except (OSError, AttributeError):
                applied = False
        _applied.append(applied)
    return _applied[0]
