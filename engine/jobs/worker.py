"""A worker process: claims jobs for one device from the store and runs them, one at a time, measured.

Workers are spawned (never forked: a fork after CUDA initialised is undefined), so a crash, an out-of-memory
kill or a hang takes down only this process and its one job; the broker (engine/jobs/broker.py) notices, fails
that job with the reason and starts a replacement. Everything process-wide (TF32, cudnn.benchmark, threads,
ONNX Runtime's stderr capture) is set here, per job, where no other job can see it. What a handler loads stays
loaded for the next job (the networks, ORT sessions and source features the rooms cache). Workers run models, so
glibc keeps freed memory here while a job runs and gives it back when the job ends (engine/core/memory.py); the web
process never does this.

Handlers are named "module:function" (a kind's code is imported here, never in the web process) and called as
`handler(job, progress, context) -> dict`, the result stored as the job's result with the measurement of its
window added under "measurement".
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import multiprocessing.synchronize
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import AvatarbenchError
from engine.core.memory import keep_freed_memory, release_freed_memory
from engine.core.openmp import sleep_at_barriers
from engine.core.settings import Settings, get_settings
from engine.jobs.store import Job, JobStore

log = logging.getLogger("avatarbench.worker")
Progress = Callable[[float, str], None]
PROGRESS_INTERVAL_S = 0.25  # at most about 4 progress writes a second per job


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, picklable for the spawn: its device, the store, and the kinds it runs."""

    device: str  # the device key its jobs are queued under: "cuda:N" or "cpu" (a Ray actor's: see ray_pool.py)
    db_path: str
    blobs_dir: str
    kinds: dict[str, str]  # kind -> "module:function"
    max_running: int = 1  # workers on this device (a timed job still takes the device alone)
    poll_s: float = 0.5  # the longest a wake-up can be missed by
    run_on: str = ""  # the device handlers use, when it is not the key ("cpu" for tests' logical GPUs)


@dataclass
class WorkerContext:
    """What a handler may use besides its job: the store (blobs), the settings, this worker's device."""

    store: JobStore
    settings: Settings
    device: str
    cache: dict[str, Any] = field(default_factory=dict)  # handlers' own warm state, kept between jobs


def resolve(target: str) -> Callable[..., dict]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_default_threads: list[int] = []  # torch's own thread count, read once before any job changed it


def prepare_process(request: dict[str, Any], device: str = "cpu", memory_fraction: float = 1.0) -> None:
    """Process-wide switches for this job only, set before every job so that one job's never leak into the next:
    TF32 and cudnn.benchmark (PyTorch), the intra-op thread count, and on a GPU PyTorch's cap on this process's
    memory (the job's share of the card: with N workers per GPU, 1/N of it each)."""
    if "torch" not in sys.modules and not request and not device.startswith("cuda"):
        return  # nothing to reset, and no reason to import torch for a job that does not use it
    import torch

    from engine.core.device import apply_backend_flags, set_memory_fraction

    if not _default_threads:
        _default_threads.append(torch.get_num_threads())
    apply_backend_flags(cudnn_benchmark=bool(request.get("cudnn_benchmark", True)), tf32=bool(request.get("tf32")))
    torch.set_num_threads(int(request.get("threads") or _default_threads[0]))
    if device.startswith("cuda"):
        set_memory_fraction(memory_fraction, torch.device(device))


def progress_writer(store: JobStore, job_id: str) -> Progress:
    """The job's progress callback: written to the store at most every PROGRESS_INTERVAL_S (and always at the end)."""
    last = [0.0]

    def progress(fraction: float, label: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
            last[0] = now
            store.update_progress(job_id, fraction, label)

    return progress


def execute(job: Job, context: WorkerContext, kinds: dict[str, str], nvml_device: Any = None) -> dict[str, Any]:
    """A job's handler on this worker's device with the job's process switches, measured: its result with the
    measurement added. Raises what the handler raises. Every way of running a job (a worker process, a Ray actor, a
    ZeroGPU function) goes through here."""
    from engine.jobs.measure import measured

    if job.kind not in kinds:
        raise AvatarbenchError(f"this worker runs no jobs of kind {job.kind!r}")
    handler = resolve(kinds[job.kind])
    job = dataclasses.replace(job, device=context.device)  # what the handler runs on (the key stays queued)
    prepare_process(job.settings.get("process") or {}, job.device, context.settings.gpu_memory_fraction * job.share)
    with measured(job.device, nvml_device=nvml_device) as window:
        result = handler(job, progress_writer(context.store, job.id), context)
    result["measurement"] = window.figures()
    return result


def run_job(job: Job, context: WorkerContext, kinds: dict[str, str]) -> None:
    """Run one claimed job to its end in the store: done with its result and measurement, or failed with why."""
    store = context.store
    try:
        result = execute(job, context, kinds)
        store.finish(job.id, result)  # inside the try: a result that is not JSON fails the job too
    except AvatarbenchError as exc:
        log.info("job %s (%s) refused: %s", job.id, job.kind, exc)
        store.fail(job.id, str(exc))
    except Exception as exc:
        log.exception("job %s (%s) failed", job.id, job.kind)
        store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}")
    else:
        log.info("job %s (%s) done", job.id, job.kind)
    finally:
        release_freed_memory()  # the next job's peak is its own; an idle worker keeps only what is in use


ORPHAN_CHECK_S = 0.5


def end_when_orphaned(spec: WorkerSpec, parent: int, every_s: float = ORPHAN_CHECK_S) -> threading.Thread:
    """A thread that ends this worker within `every_s` of its app going (a SIGKILL, the OOM killer), even in the
    middle of a job: left running, a restarted app would find the job failed and run another beside it on the same
    GPU, outside every time and memory limit. The job is failed first, with the reason."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        try:
            store = JobStore(spec.db_path, spec.blobs_dir)
            for job in store.running():
                if job.worker == os.getpid():
                    store.fail(job.id, "the app stopped while this job was running (its worker stopped with it)")
            store.close()
        finally:
            os._exit(70)  # EX_SOFTWARE: nothing else of this process should run on

    thread = threading.Thread(target=watch, name="avatarbench-orphan-watch", daemon=True)
    thread.start()
    return thread


def serve(spec: WorkerSpec, wake: multiprocessing.synchronize.Event, stop: multiprocessing.synchronize.Event) -> None:
    """The worker process's main: claim, run, repeat until `stop` (or until the app that started it is gone). A
    Ctrl-C or SIGTERM sent to the whole process group reaches workers too; the broker decides what happens to
    running jobs (a grace period, then the reason), so workers ignore both."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    end_when_orphaned(spec, parent)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    kept = keep_freed_memory()  # before any job: the networks' scratch buffers are reused, not faulted in again
    sleeps = sleep_at_barriers()  # before torch loads: the codec threads need the cores too
    store = JobStore(spec.db_path, spec.blobs_dir)
    context = WorkerContext(store, get_settings(), spec.run_on or spec.device)
    pid = os.getpid()
    log.info(
        "worker for %s ready (freed memory %s, OpenMP threads %s at barriers)",
        spec.device,
        "kept" if kept else "returned to the kernel",
        "sleep" if sleeps else "spin",
    )
    while not stop.is_set():  # an orphan (the app was killed) is ended by end_when_orphaned
        wake.clear()  # before claiming: a wake-up that lands during the claim is still seen by the wait below
        job = store.claim_next(spec.device, pid, spec.max_running)
        if job is None:
            wake.wait(spec.poll_s)
            continue
        run_job(job, context, spec.kinds)
    store.close()


__all__ = [
    "WorkerContext",
    "WorkerSpec",
    "end_when_orphaned",
    "execute",
    "prepare_process",
    "progress_writer",
    "resolve",
    "run_job",
    "serve",
]
