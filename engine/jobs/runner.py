"""The worker threads that claim jobs from the store and run them: one at a time per GPU, a pool for the CPU."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from engine.jobs.store import CPU, Job, JobStore, StoreError

log = logging.getLogger(__name__)


Handler = Callable[[Job, Callable[[float, str], None]], dict]


class JobRunner:
    """Background worker threads that claim and run jobs: one thread per GPU device key (so GPU jobs run one at
    a time per device) and `cpu_workers` threads for the "cpu" key.

    Workers sleep on a condition with a generation counter rather than a bare Event: a wake() that lands
    while a worker is busy claiming is still seen, and one worker cannot clear another's wake-up.
    `poll_s` bounds the delay for jobs submitted by another process, which cannot call wake().
    """

    PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress writes a second per job

    def __init__(
        self, store: JobStore, handlers: dict[str, Handler], cpu_workers: int = 2, poll_s: float = 0.5
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.cpu_workers = max(1, int(cpu_workers))
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._generation = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, devices: list[str]) -> None:
        self._stopping.clear()
        for device in dict.fromkeys(devices):
            count = self.cpu_workers if device == CPU else 1
            for i in range(count):
                t = threading.Thread(target=self._work, args=(device,), name=f"job-{device}-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask workers to exit after their current job; True when they all did. A handler cannot be interrupted,
        so this may time out (recover() at the next start-up fails whatever they left running)."""
        self._stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("job workers still busy after stop(): %s", ", ".join(alive))
        self._threads = [t for t in self._threads if t.is_alive()]
        return not alive

    def wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _work(self, device: str) -> None:
        max_running = self.cpu_workers if device == CPU else 1
        while not self._stopping.is_set():
            with self._cond:
                seen = self._generation
            try:
                job = self.store.claim_next(device, max_running=max_running)
            except Exception:  # e.g. the database is locked for 30 s: keep the worker alive, try later
                log.exception("claiming a job for %s failed", device)
                job = None
            if job is None:
                with self._cond:
                    if self._generation == seen and not self._stopping.is_set():
                        self._cond.wait(self.poll_s)
                continue
            self._run(job)
            self.wake()  # a slot on this device is free again

    def _run(self, job: Job) -> None:
        last_write = [0.0]

        def progress(fraction: float, label: str) -> None:
            now = time.monotonic()
            if now - last_write[0] >= self.PROGRESS_INTERVAL_S or fraction >= 1.0:
                last_write[0] = now
                self.store.update_progress(job.id, fraction, label)

        try:
            handler = self.handlers.get(job.kind)
            if handler is None:
                raise StoreError(f"no handler for job kind {job.kind!r}")
            result = handler(job, progress)
            self.store.finish(job.id, result)  # inside the try: a non-JSON result fails the job too
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.kind)
            try:
                self.store.fail(job.id, f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not record the failure of job %s", job.id)
        else:
            log.info("job %s (%s) done", job.id, job.kind)


__all__ = ["Handler", "JobRunner"]
