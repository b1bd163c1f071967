"""Keep freed memory in the process that runs models, instead of handing it back to the kernel after every layer.

Why: glibc serves large allocations (from 128 KiB until its threshold adapts, always from 32 MiB) with their own
mmap and unmaps them on free, and trims the heap's free top soon after. A network's scratch buffers are that large,
so each layer maps fresh pages, the kernel zeroes them on first touch and unmaps them again: a Wav2Lip batch of 128
on the CPU took about 2.9 million page faults, and 37-45 % of the lip-sync CPU time was kernel time. With freed
memory kept (no mmap for large blocks, a high trim threshold, a top pad) kernel time fell from 57 s to 2.3 s, and
a still-image lip-sync from 71.0 s to 36.7 s (issue #17).
Transparent huge pages, PyTorch's other answer to this, made the same run 1.31x slower, so they stay off.

What it costs: while a job runs, its process's RSS stays at the job's high-water mark. A worker gives the freed
memory back when each job ends (release_freed_memory), so an idle worker holds only what is in use and each job's
peak is its own. It is set only where models run (broker worker processes, and the CLI commands that run a model
in-process) and never in the web process, which stays small and long-lived.
AVATARBENCH_KEEP_FREED_MEMORY=0 turns it off.

Only glibc on Linux has these switches; elsewhere (musl, macOS, Windows) nothing is done and nothing fails.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections.abc import Mapping

from engine.core.settings import get_settings, load_settings

log = logging.getLogger(__name__)

SETTING = "AVATARBENCH_KEEP_FREED_MEMORY"

# glibc's mallopt parameters (malloc.h) and the values we set. mallopt takes a C int, so 2 GiB - 1 is the largest
# trim threshold it accepts (the MALLOC_TRIM_THRESHOLD_ variable could go higher, but must be set before start-up).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # free() gives the heap's top back only when this much is free there
TOP_PAD_BYTES = 2**30  # grow the heap in steps of 1 GiB (address space; pages count once touched) and keep as much
MMAP_MAX = 0  # no block gets its own mapping: everything comes from the heap, where free() keeps it

_lock = threading.Lock()
_applied: bool | None = None  # None: not asked yet in this process


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """AVATARBENCH_KEEP_FREED_MEMORY (engine/core/settings.py): on unless 0/off/false/no; other values are an error."""
    return get_settings().keep_freed_memory if env is None else load_settings(dict(env)).keep_freed_memory


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and others: their mallopt, where there is one, has other parameters
    return libc


def keep_freed_memory(env: Mapping[str, str] | None = None) -> bool:
    """Tell glibc to keep freed memory in this process (see the module's docstring); whether it now does. Only the
    first call in a process acts: later ones return its answer."""
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        if not wanted(env):
            _applied = False
            log.info("freed memory goes back to the kernel (%s=0)", SETTING)
            return False
        libc = _glibc()
        if libc is None:
            _applied = False
            return False
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        settings = ((M_MMAP_MAX, MMAP_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_TOP_PAD, TOP_PAD_BYTES))
        _applied = all([libc.mallopt(param, value) == 1 for param, value in settings])  # all three, then judge
        if not _applied:
            log.warning("glibc refused a mallopt setting: freed memory may still go back to the kernel")
        return _applied


def release_freed_memory() -> None:
    """Between jobs: hand what the last job freed back to the kernel (glibc's malloc_trim), so that an idle worker
    holds only what is still in use (cached networks and features) and the next job's RSS peak is its own."""
    libc = _glibc() if _applied else None
    if libc is not None:
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.malloc_trim(0)


def memory_kept() -> bool:
    """Whether keep_freed_memory() took effect in this process."""
    return bool(_applied)


__all__ = ["SETTING", "keep_freed_memory", "memory_kept", "wanted"]
