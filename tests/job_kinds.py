"""Job kinds for the broker's tests, run in real worker processes (importable there: pytest puts tests/ on
sys.path, and a spawned worker inherits it)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

KINDS = {
    "watch": "job_kinds:watch",
    "allocate": "job_kinds:allocate",
    "die": "job_kinds:die",
    "flags": "job_kinds:flags",
    "hold": "job_kinds:hold",
    "whole": "job_kinds:hold",  # the same handler under a kind with its own workers per GPU
}


def settle(store: Any, ids: list[str], timeout_s: float = 120) -> list:
    """The jobs once every one has ended (done, failed or cancelled); what each is doing if they do not in time."""
    from engine.jobs.store import FINISHED

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(j.status in FINISHED for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"not finished: {[(j.id, j.status, j.progress_label, j.error) for j in jobs]}")


def watch(job: Any, progress: Any, context: Any) -> dict:
    """Hold the device for a while, noting every other job that ran on it meanwhile (the measured window)."""
    others: set[str] = set()
    deadline = time.monotonic() + float(job.settings.get("seconds", 0.3))
    while time.monotonic() < deadline:
        others |= {j.id for j in context.store.running() if j.id != job.id and j.device == job.device}
        progress(0.5, "watching")
        time.sleep(0.01)
    return {"overlapped": sorted(others), "pid": os.getpid()}


def allocate(job: Any, progress: Any, context: Any) -> dict:
    """Touch `megabytes` of memory (really resident), hold it for `hold_s`, free it."""
    import numpy as np

    block = np.ones(int(job.settings["megabytes"]) * 2**20 // 8)
    time.sleep(float(job.settings.get("hold_s", 0.2)))
    del block
    return {"pid": os.getpid()}


def die(job: Any, progress: Any, context: Any) -> dict:
    """End the worker the way a crash or the OOM killer would, or hang until stopped."""
    how = job.settings.get("how", "sigkill")
    progress(0.1, "about to go")
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    time.sleep(3600)  # "hang"
    return {}


def flags(job: Any, progress: Any, context: Any) -> dict:
    """What the process-wide switches are while this job runs."""
    import torch

    return {
        "tf32": torch.backends.cuda.matmul.fp32_precision == "tf32",
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


def hold(job: Any, progress: Any, context: Any) -> dict:
    """Hold a worker for a while, noting the device key it was queued under, the device it really ran on, its share
    of the device and every other job that ran under the same key meanwhile. With `partner_s` it holds on (up to
    that long) until another job has run beside it, so slow worker start-ups cannot make side-by-side jobs miss."""
    key = context.store.get(job.id).device
    others: set[str] = set()
    start = time.monotonic()
    seconds, partner_s = float(job.settings.get("seconds", 0.5)), float(job.settings.get("partner_s", 0))
    while (now := time.monotonic() - start) < seconds or (not others and now < partner_s):
        others |= {j.id for j in context.store.running() if j.id != job.id and j.device == key}
        progress(0.5, "holding")
        time.sleep(0.01)
    return {"key": key, "ran_on": job.device, "share": job.share, "overlapped": sorted(others), "pid": os.getpid()}
