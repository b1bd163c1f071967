"""The broker: every job that uses a device or is timed runs in a worker process, never in the web process.

It places jobs on devices (the least-loaded GPU, or the CPU), keeps the workers of each device alive (processes
by default, see engine/jobs/worker.py; N per GPU with AVATARBENCH_WORKERS_PER_GPU, each job taking 1/N of its
card), and enforces what a job may take: a time limit per kind and a memory cap per worker
(either one stops the worker and fails the job with the reason), and cancellation. A worker that dies on its own
(a segfault, the OOM killer, `os._exit`) fails only its job, with the reason, and is replaced. `stop()` lets
running jobs finish within a grace period, then stops their workers and fails those jobs with the reason; queued
jobs stay queued for the next start. The store (SQLite) is the only channel: workers claim, report progress and
write results there, so nothing is lost when either side goes away. The watch also runs the app's periodic chores
(`chores`, every `chores_s`: the disk budget), so they live and stop with the broker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.core.errors import InputError
from engine.jobs.store import CANCELLED, CPU, FAILED, QUEUED, RUNNING, Job, JobStore, QueueLimits
from engine.jobs.worker import WorkerSpec, serve
from engine.system.telemetry import WorkerActivity

log = logging.getLogger("avatarbench.broker")
_SPAWN = multiprocessing.get_context("spawn")  # never fork: CUDA does not survive a fork


@dataclass(frozen=True)
class JobLimits:
    """What a job may take. `time_s` maps a kind (or "default") to seconds; `memory_bytes` caps a worker's RSS."""

    time_s: dict[str, float] = field(default_factory=lambda: {"default": 3600.0})
    memory_bytes: int = 16 * 2**30

    def time_limit(self, kind: str) -> float:
        return self.time_s.get(kind, self.time_s.get("default", 3600.0))


class WorkerHandle(Protocol):
    """What the broker needs of a running worker, whatever runs it: a spawned process (the default), a Ray actor
    driven from the app (engine/jobs/ray_pool.py) or a ZeroGPU slot (engine/jobs/zerogpu.py). `pid` is the id
    recorded on the jobs it claims (unique among the broker's workers). A handle may also carry `reason`: why it
    ended, in words (a Ray actor that died), used instead of its exit status; and `ready` (False while what runs
    it is still starting, as a Ray actor that the handle's own thread starts): a handle that ends before it was ready
    is a failed start, however long it took."""

    pid: int | None
    exitcode: int | None

    def is_alive(self) -> bool: ...
    def kill(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


Launcher = Callable[[WorkerSpec, Any, Any], WorkerHandle]  # (spec, wake event, stop event) -> a started worker


def spawn_process(spec: WorkerSpec, wake: Any, stop: Any) -> WorkerHandle:
    """The default launcher: a spawned process running engine.jobs.worker.serve."""
    process = _SPAWN.Process(target=serve, args=(spec, wake, stop), name=f"avatarbench-{spec.device}", daemon=True)
    process.start()
    return process


def worker_rss(handle: WorkerHandle) -> int | None:
    """A worker's resident memory: its own report when it has one (a remote actor), else its local process's."""
    if hasattr(handle, "rss"):
        return handle.rss()
    import psutil

    try:
        return psutil.Process(handle.pid).memory_info().rss
    except (psutil.Error, TypeError, ValueError):
        return None


@dataclass
class _Worker:
    device: str
    process: WorkerHandle
    wake: Any  # multiprocessing.Event
    stop: Any
    verdict: tuple[str, str, str] | None = None  # (job id, reason, status) the broker stopped it for
    started: float = field(default_factory=time.monotonic)


QUICK_DEATH_S = 10.0  # a worker that dies this soon after its start without a job: its start-up failed
RESPAWN_MAX_S = 30.0  # the longest wait between attempts at starting a device's worker
DOWN_AFTER = 3  # failed starts in a row after which a device takes no jobs until a worker for it runs again


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        causes = {
            "SIGKILL": "killed (SIGKILL: the system ran out of memory, or something stopped it from outside)",
            "SIGSEGV": "crashed (SIGSEGV: a segmentation fault in native code)",
            "SIGABRT": "aborted (SIGABRT, usually a failed check in a native library)",
        }
        return f"its worker process was {causes.get(name, f'ended by {name}')}"
    return f"its worker process exited unexpectedly (status {exitcode})"


class Broker:
    def __init__(
        self,
        store: JobStore,
        kinds: dict[str, str],
        workers: Mapping[str, int],
        limits: JobLimits | None = None,
        poll_s: float = 0.5,
        monitor_s: float = 0.2,
        chores: Callable[[], object] | None = None,
        chores_s: float = 600.0,
        per_gpu: Mapping[str, int] | None = None,
        run_on: Mapping[str, str] | None = None,
        launcher: Launcher = spawn_process,
    ) -> None:
        """`kinds`: job kind -> "module:function" of its handler; `workers`: device -> how many workers ("cuda:0": 2,
        "cpu": 1); `per_gpu`: kind (or "default") -> workers per GPU for that kind, whose jobs each take 1/N of
        the card (at most the GPU's worker count); `run_on`: device key -> the device its handlers use (a Ray
        actor's "cuda:0"; "cpu" for the logical GPUs of tests); `chores`: called from the watch every `chores_s`
        seconds; `launcher`: starts one worker (a spawned process unless told otherwise)."""
        self.store, self.kinds = store, dict(kinds)
        self.workers = {device: max(1, int(n)) for device, n in workers.items()} or {CPU: 1}
        self.devices = list(self.workers)
        self.per_gpu = dict(per_gpu or {})
        self.run_on = dict(run_on or {})
        self.launcher = launcher
        self.limits = limits or JobLimits()
        self.poll_s, self.monitor_s = poll_s, monitor_s
        self.chores, self.chores_s = chores, chores_s
        self._workers: list[_Worker] = []
        self._due: list[tuple[str, float]] = []  # (device, monotonic time) of workers to start
        self._failures: dict[str, int] = {}  # a device's worker starts that failed in a row
        self._down: dict[str, str] = {}  # device -> why its workers cannot start (DOWN_AFTER failures in a row)
        self._lock = threading.RLock()
        # Held from reading the load to queueing the job (or a split job's parent and segments): two placements
        # at once both chose the same idle GPUs, and two split jobs so placed could each wait on the other's rows.
        self.placing = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------------------

    def start(self) -> Broker:
        self._fail_stranded()
        for device, count in self.workers.items():
            for _ in range(count):
                self._spawn(device)
        self._monitor = threading.Thread(target=self._watch, name="avatarbench-broker", daemon=True)
        self._monitor.start()
        return self

    def _fail_stranded(self) -> None:
        """Fail the queued jobs of a device this app no longer has (a GPU gone, CUDA_VISIBLE_DEVICES or
        AVATARBENCH_DEVICE changed, a Ray node gone since they were queued): no worker would ever claim them, and
        they would hold their owners' places in the queue limits."""
        for job in self.store.queue():
            if job.status == QUEUED and job.device not in self.devices:
                reason = (f"it was queued for {job.device}, which this app no longer has (its devices: "
                          f"{', '.join(self.devices)}): submit it again")  # fmt: skip
                if self.store.fail(job.id, reason):
                    log.warning("job %s (%s) failed: %s", job.id, job.kind, reason)

    def _spawn(self, device: str) -> _Worker:
        spec = WorkerSpec(
            device=device, db_path=str(self.store.db_path), blobs_dir=str(self.store.blobs_dir), kinds=self.kinds,
            max_running=self.workers[device], poll_s=self.poll_s, run_on=self.run_on.get(device, device),
        )  # fmt: skip
        wake, stop = _SPAWN.Event(), _SPAWN.Event()
        handle = self.launcher(spec, wake, stop)
        worker = _Worker(device, handle, wake, stop)
        with self._lock:
            self._workers.append(worker)
        log.info("started a worker for %s (id %s)", device, handle.pid)
        return worker

    def stop(self, grace_s: float = 10.0, reason: str = "the app was stopped") -> list[str]:
        """Stop taking jobs; let running ones finish within `grace_s`, then stop their workers and fail those jobs
        with `reason`. Returns the ids of the jobs failed that way. Queued jobs stay for the next start."""
        self._stopping.set()
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            w.stop.set()
            w.wake.set()
        deadline = time.monotonic() + grace_s
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        failed = []
        for w in workers:
            if w.process.is_alive():
                job = self._job_of(w)
                w.process.kill()
                w.process.join(5)
                if job is not None and self.store.fail(job.id, f"{reason} before this job finished"):
                    failed.append(job.id)
        if self._monitor is not None:
            self._monitor.join(5)
        return failed

    def activity(self) -> list[WorkerActivity]:
        """Every worker with the job it is running (kind and progress; never whose it is), for the telemetry."""
        with self._lock:
            workers = [w for w in self._workers if w.process.is_alive()]
        running = {job.worker: job for job in self.store.running()}
        out = []
        for w in workers:
            job = running.get(w.process.pid)
            out.append(WorkerActivity(w.device, w.process.pid, job.kind if job else None, job.progress if job else 0.0))
        return out

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.is_alive()]

    # -- jobs ------------------------------------------------------------------------------------------------

    def gpus(self) -> list[str]:
        return [d for d in self.devices if d != CPU]

    def down(self, device: str) -> str | None:
        """Why `device` takes no jobs now (its workers failed to start DOWN_AFTER times in a row; they are still
        tried), or None."""
        with self._lock:
            return self._down.get(device)

    def place(self, wants_gpu: bool, preferred: str | None = None) -> str:
        """Where a new job goes: the preferred device when there is a worker for it, else the least-loaded GPU
        (the shares of its queued and running jobs added up; a GPU that is down only when all are) when the job
        wants one, else the CPU."""
        if preferred in self.devices:
            return preferred  # type: ignore[return-value]
        gpus = self.gpus()
        if not wants_gpu or not gpus:
            return CPU
        load = self.store.load()
        return min(gpus, key=lambda d: (self.down(d) is not None, load.get(d, 0.0), self.devices.index(d)))

    def share(self, kind: str, device: str, timed: bool = False) -> float:
        """The part of `device` a job of `kind` takes: all of it when timed; on a GPU 1/N with N its kind's workers
        per GPU (capped by the workers there); on the CPU 1/(its workers)."""
        if timed:
            return 1.0
        count = self.workers.get(device, 1)
        if device != CPU:
            count = min(count, self.per_gpu.get(kind, self.per_gpu.get("default", count)))
        return 1.0 / max(1, count)

    def submit(
        self,
        kind: str,
        settings: dict,
        device: str,
        owner: str,
        model_sha256: str | None = None,
        timed: bool = False,
        share: float | None = None,
        limits: QueueLimits | None = None,
    ) -> Job:
        """Queue a job on `device`; its share of the device is its kind's (see `share`) unless given; `limits` are
        held in the same transaction as the insert."""
        if self._stopping.is_set():
            raise InputError("the app is shutting down and takes no new jobs")
        if kind not in self.kinds:
            raise InputError(f"no worker runs jobs of kind {kind!r}; kinds: {', '.join(self.kinds)}")
        if device not in self.devices:
            raise InputError(f"no worker for {device}; devices: {', '.join(self.devices)}")
        if (why := self.down(device)) is not None:
            raise InputError(_down_words(device, why))
        admit = getattr(self.launcher, "admit", None)  # a launcher's own refusals (ZeroGPU: a job past its cap)
        if admit is not None:
            admit(kind, settings, device, self.store)
        share = self.share(kind, device, timed) if share is None else share
        job = self.store.submit(kind, settings, device, model_sha256, owner=owner, timed=timed, share=share,
                                limits=limits)  # fmt: skip
        self.wake(device)
        return job

    def wake(self, device: str | None = None) -> None:
        with self._lock:
            for w in self._workers:
                if device is None or w.device == device:
                    w.wake.set()

    def cancel(self, job_id: str, owner: str | None) -> Job:
        """Cancel a queued job, or stop a running one with its worker (which is replaced)."""
        job = self.store.cancel(job_id, owner)
        if job.status == RUNNING:
            worker = self._worker_for(job)
            if worker is not None and self.store.get(job.id).status == RUNNING:  # not one that ended meanwhile:
                # its worker would be killed for nothing, and its loaded networks with it
                self._stop_worker(worker, job.id, "cancelled by its owner while it ran", CANCELLED)
            job = self._await_end(job.id)
        return job

    def _await_end(self, job_id: str, timeout_s: float = 10.0) -> Job:
        deadline = time.monotonic() + timeout_s
        job = self.store.get(job_id)
        while job.status == RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
            job = self.store.get(job_id)
        return job

    # -- the watch -------------------------------------------------------------------------------------------

    def _worker_for(self, job: Job) -> _Worker | None:
        with self._lock:
            return next((w for w in self._workers if w.process.pid == job.worker), None)

    def _job_of(self, worker: _Worker) -> Job | None:
        return next((j for j in self.store.running() if j.worker == worker.process.pid), None)

    def _stop_worker(self, worker: _Worker, job_id: str, reason: str, status: str = FAILED) -> None:
        """Kill a worker for a reason; the watch fails that job with it and starts a replacement."""
        worker.verdict = (job_id, reason, status)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()

    def _watch(self) -> None:
        chores_due = time.monotonic() + self.chores_s
        while not self._stopping.wait(self.monitor_s):
            try:
                self._check_once()
                if self.chores is not None and time.monotonic() >= chores_due:
                    chores_due = time.monotonic() + self.chores_s
                    self.chores()
            except Exception:  # the watch must outlive a locked database, a vanished process or a failed chore
                log.exception("the broker's watch failed once")

    def _check_once(self) -> None:
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            if not w.process.is_alive():
                self._replace(w)
            elif w.device in self._down and _running_for_good(w):
                self._up(w.device)
        self._spawn_due()
        now = time.time()
        for job in self.store.running():
            worker = self._worker_for(job)
            if worker is None or worker.verdict is not None:
                continue
            limit = self.limits.time_limit(job.kind)
            if job.started is not None and now - job.started > limit:
                reason = f"ran past its time limit of {limit:g} s (AVATARBENCH_JOB_TIME_LIMITS)"
                self._stop_worker(worker, job.id, reason)
                continue
            rss = worker_rss(worker.process)
            if rss is not None and rss > self.limits.memory_bytes:
                cap = f"{self.limits.memory_bytes / 2**30:.3g} GB"
                self._stop_worker(worker, job.id, f"used more than {cap} of memory (AVATARBENCH_JOB_MEMORY_GB)")

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(1)
        job = self._job_of(worker)
        if job is not None and worker.verdict is not None and worker.verdict[0] != job.id:
            self.store.requeue(job.id)  # stopped for the job before, which ended meanwhile: this one runs again
        elif job is not None:
            ended = getattr(worker.process, "reason", None) or _exit_reason(worker.process.exitcode)
            _, reason, status = worker.verdict or (job.id, ended, FAILED)
            self.store.fail(job.id, reason, status)
            log.warning("job %s (%s) ended: %s", job.id, job.kind, reason)
        with self._lock:
            self._workers.remove(worker)
        if not self._stopping.is_set():
            quick = time.monotonic() - worker.started < QUICK_DEATH_S or not getattr(worker.process, "ready", True)
            why = None
            if job is None and worker.verdict is None and quick:
                why = getattr(worker.process, "reason", None) or _exit_reason(worker.process.exitcode)
                log.warning("the worker for %s ended at start-up: %s", worker.device, why)
            self._respawn(worker.device, why)

    def _respawn(self, device: str, failed_start: str | None) -> None:
        """Start a replacement at once, or after a wait that doubles with each failed start in a row (up to
        RESPAWN_MAX_S; `failed_start` says why this one failed): a worker that cannot start (no memory right after
        an out-of-memory kill, a broken install, a Ray node gone) is tried again without a tight loop, and the
        device is never left without one. After DOWN_AFTER failures in a row, with no other worker of the device
        running, the device is down: its queued jobs fail with the reason, and it takes no new ones (they would
        wait for good) until a worker for it runs again."""
        failures = self._failures[device] = self._failures.get(device, 0) + 1 if failed_start else 0
        delay = min(RESPAWN_MAX_S, 0.25 * 2**failures) if failures else 0.0
        self._due.append((device, time.monotonic() + delay))
        if failures < DOWN_AFTER:
            return
        with self._lock:
            if any(w.device == device and w.process.is_alive() and _running_for_good(w) for w in self._workers):
                return
            self._down[device] = f"its worker failed to start {failures} times in a row ({failed_start})"
            words = _down_words(device, self._down[device])
        for job in self.store.queue():
            if job.status == QUEUED and job.device == device and self.store.fail(job.id, words):
                log.warning("job %s (%s) failed: %s is down", job.id, job.kind, device)

    def _up(self, device: str) -> None:
        with self._lock:
            self._down.pop(device, None)
        self._failures[device] = 0
        log.info("the worker for %s runs again; it takes jobs", device)

    def _spawn_due(self) -> None:
        now = time.monotonic()
        due = [device for device, when in self._due if when <= now]
        self._due = [(device, when) for device, when in self._due if when > now]
        for device in due:
            if self._stopping.is_set():
                return
            try:
                self._spawn(device)
            except Exception as exc:
                log.error("could not start a worker for %s (%s: %s); trying again", device, type(exc).__name__, exc)
                self._respawn(device, f"{type(exc).__name__}: {exc}")


def _running_for_good(worker: _Worker) -> bool:
    """A worker past its start-up: ready and alive for QUICK_DEATH_S."""
    return getattr(worker.process, "ready", True) and time.monotonic() - worker.started >= QUICK_DEATH_S


def _down_words(device: str, why: str) -> str:
    return (f"{device} takes no jobs now: {why}. It is still being started; submit again later or on another "
            "device")  # fmt: skip


__all__ = ["Broker", "JobLimits", "Launcher", "WorkerHandle", "spawn_process", "worker_rss"]
