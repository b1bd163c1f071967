"""The broker and its worker processes: timed jobs have their device alone, a dead or runaway worker fails only
its job (with the reason) and is replaced, per-job process flags and per-run peaks, cancel and shutdown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from job_kinds import KINDS, settle

from engine.jobs.broker import Broker, JobLimits
from engine.jobs.store import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobStore

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    yield s
    s.close()


def _broker(store: JobStore, workers: dict[str, int] | None = None, **limits) -> Broker:
    return Broker(store, KINDS, workers or {"cpu": 1}, JobLimits(**limits) if limits else None, poll_s=0.2).start()


def test_a_timed_job_has_its_device_alone(store: JobStore) -> None:
    """Ten timed and untimed jobs submitted at once from four threads onto a device with two workers: every job
    notes the others that ran during its window; timed ones see none (untimed ones do overlap, so the check bites)."""
    broker = _broker(store, {"cpu": 2})
    ids: list[str] = []
    lock = threading.Lock()

    def submit(batch: list[bool]) -> None:
        for timed in batch:
            job = broker.submit("watch", {"seconds": 0.4}, "cpu", "tester", timed=timed)
            with lock:
                ids.append(job.id)

    plan = [[True, False, False], [False, True, False], [False, False], [True, False]]
    threads = [threading.Thread(target=submit, args=(batch,)) for batch in plan]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        jobs = settle(store, ids)
    finally:
        broker.stop(5)
    assert all(j.status == DONE for j in jobs), [(j.status, j.error) for j in jobs]
    timed = [j for j in jobs if j.timed]
    assert len(timed) == 3 and all(j.result["overlapped"] == [] for j in timed)
    assert any(j.result["overlapped"] for j in jobs if not j.timed)
    for t in timed:  # and no window of another job contains the timed job's
        assert all(t.id not in j.result["overlapped"] for j in jobs)


@pytest.mark.parametrize(
    ("how", "reason"), [("sigkill", "killed (SIGKILL"), ("exit", "exited unexpectedly (status 3)")]
)
def test_a_worker_that_dies_fails_only_its_job_and_is_replaced(store: JobStore, how: str, reason: str) -> None:
    broker = _broker(store)
    try:
        dead = broker.submit("die", {"how": how}, "cpu", "tester")
        after = broker.submit("watch", {"seconds": 0.05}, "cpu", "tester")
        dead_job, after_job = settle(store, [dead.id, after.id])
    finally:
        broker.stop(5)
    assert dead_job.status == FAILED and reason in dead_job.error
    assert after_job.status == DONE and after_job.result["pid"] != dead_job.worker  # a fresh worker ran it


def test_past_the_time_limit_the_job_is_stopped_with_its_worker(store: JobStore) -> None:
    broker = _broker(store, time_s={"default": 60, "die": 1})
    try:
        # within 45 s of its submission (a worker's start included): a limit read 60 times too long would not be
        (job,) = settle(store, [broker.submit("die", {"how": "hang"}, "cpu", "tester").id], timeout_s=45)
        assert job.status == FAILED and "ran past its time limit of 1 s" in job.error
        assert not psutil.pid_exists(job.worker) or psutil.Process(job.worker).status() == psutil.STATUS_ZOMBIE
    finally:
        broker.stop(5)


def test_past_the_memory_cap_the_job_fails_and_this_process_is_untouched(store: JobStore) -> None:
    here = psutil.Process()
    before = here.memory_info().rss
    broker = _broker(store, memory_bytes=600 * 2**20)
    try:
        # 1000 MB, under twice the cap: a cap applied twice as large would let it through
        big = broker.submit("allocate", {"megabytes": 1000, "hold_s": 5}, "cpu", "tester")
        small = broker.submit("allocate", {"megabytes": 10}, "cpu", "tester")
        big_job, small_job = settle(store, [big.id, small.id])
    finally:
        broker.stop(5)
    assert big_job.status == FAILED and "used more than 0.586 GB of memory" in big_job.error
    assert small_job.status == DONE
    assert here.memory_info().rss - before < 200 * 2**20  # the web side never held the allocation


def test_peaks_are_per_run(store: JobStore) -> None:
    """A 1 GB allocation in one job does not appear in the next job's peak (the same worker runs both)."""
    broker = _broker(store)
    try:
        big = broker.submit("allocate", {"megabytes": 1024}, "cpu", "tester")
        small = broker.submit("allocate", {"megabytes": 8}, "cpu", "tester")
        big_job, small_job = settle(store, [big.id, small.id])
    finally:
        broker.stop(5)
    assert big_job.result["pid"] == small_job.result["pid"]
    first, second = big_job.result["measurement"], small_job.result["measurement"]
    assert first["peak_rss_bytes"] - second["peak_rss_bytes"] > 700 * 2**20


def test_process_flags_are_each_jobs_own(store: JobStore) -> None:
    broker = _broker(store)
    # the first job shows the worker's own thread count; one that asks for none later runs at it again, not at the
    # count of the job before it
    requests = [
        {"tf32": False},
        {"tf32": True, "threads": 2},
        {"tf32": False, "threads": 1},
        {},
        {"tf32": True, "threads": 2},
    ]
    try:
        ids = [broker.submit("flags", {"process": r}, "cpu", "tester").id for r in requests]
        jobs = settle(store, ids)
    finally:
        broker.stop(5)
    assert len({j.result["pid"] for j in jobs}) == 1  # one worker ran them all, in turn
    default_threads = jobs[0].result["threads"]
    for request, job in zip(requests, jobs, strict=True):
        assert job.result["tf32"] == request.get("tf32", False)
        assert job.result["cudnn_benchmark"] is True
        assert job.result["threads"] == request.get("threads", default_threads)


def test_cancel_a_queued_and_a_running_job(store: JobStore) -> None:
    broker = _broker(store)
    try:
        running = broker.submit("die", {"how": "hang"}, "cpu", "alice")
        queued = broker.submit("watch", {"seconds": 0.05}, "cpu", "alice")
        deadline = time.monotonic() + 60
        while store.get(running.id).status == QUEUED:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(Exception, match="no job"):
            broker.cancel(running.id, "bob")  # someone else's job does not exist for them
        assert broker.cancel(queued.id, "alice").status == CANCELLED
        stopped = broker.cancel(running.id, "alice")
        assert stopped.status == CANCELLED and "cancelled by its owner while it ran" in stopped.error
        after = broker.submit("watch", {"seconds": 0.05}, "cpu", "alice")
        assert settle(store, [after.id])[0].status == DONE  # the replacement worker takes the next job
    finally:
        broker.stop(5)


def test_stop_fails_the_running_job_keeps_the_queued_and_leaves_no_worker(store: JobStore) -> None:
    broker = _broker(store)
    running = broker.submit("die", {"how": "hang"}, "cpu", "tester")
    queued = [broker.submit("watch", {"seconds": 0.05}, "cpu", "tester") for _ in range(3)]
    deadline = time.monotonic() + 60
    while store.get(running.id).status == QUEUED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = broker.pids()
    started = time.monotonic()
    failed = broker.stop(1.0, reason="the app was stopped (SIGTERM)")
    assert time.monotonic() - started < 10
    assert failed == [running.id]
    assert "the app was stopped (SIGTERM) before this job finished" in store.get(running.id).error
    assert [store.get(q.id).status for q in queued] == [QUEUED] * 3  # they run at the next start
    assert pids and not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    with pytest.raises(Exception, match="shutting down"):
        broker.submit("watch", {}, "cpu", "tester")


def test_a_submission_wakes_its_worker_at_once(store: JobStore) -> None:
    """Workers poll the store every poll_s; a submission wakes its device's workers without that wait."""
    broker = Broker(store, KINDS, {"cpu": 1}, poll_s=60).start()
    try:
        settle(store, [broker.submit("watch", {"seconds": 0.01}, "cpu", "tester").id])  # the worker is up
        job = broker.submit("watch", {"seconds": 0.01}, "cpu", "tester")
        assert settle(store, [job.id], timeout_s=20)[0].status == DONE  # long before the 60 s poll
    finally:
        broker.stop(5)


APP_STANDIN = """
import sys, time
sys.path[:0] = [{tests!r}, {root!r}]
from job_kinds import KINDS
from engine.jobs.broker import Broker
from engine.jobs.store import JobStore
store = JobStore({db!r}, {blobs!r})
broker = Broker(store, KINDS, {{"cpu": 1}}, poll_s=0.1).start()
job = broker.submit("die", {{"how": "hang"}}, "cpu", "tester")
while store.get(job.id).status != "running":
    time.sleep(0.05)
print(job.id, store.get(job.id).worker, flush=True)
time.sleep(3600)
"""


def test_a_worker_ends_with_its_killed_app_and_fails_its_job(tmp_path: Path) -> None:
    """The app SIGKILLed in the middle of a job: its worker must not run on unwatched (a restarted app would fail
    the job and run another beside it on the same device), and the job says why it ended."""
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    code = APP_STANDIN.format(tests=str(tests), root=str(tests.parent), db=str(tmp_path / "jobs.db"),
                              blobs=str(tmp_path / "blobs"))  # fmt: skip
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        job_id, worker = app.stdout.readline().split()
    finally:
        app.kill()
        app.wait(10)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(int(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = psutil.pid_exists(int(worker)) and psutil.Process(int(worker)).status() != psutil.STATUS_ZOMBIE
    if alive:
        psutil.Process(int(worker)).kill()  # not left behind by a failing run
    assert not alive, "the worker ran on after its app was killed"
    with JobStore(tmp_path / "jobs.db", tmp_path / "blobs") as store:
        job = store.get(job_id)
    assert job.status == FAILED and "the app stopped while this job was running" in job.error


ORPHAN = """
import os, sys, time
from engine.jobs.store import JobStore
from engine.jobs.worker import WorkerSpec, end_when_orphaned
db, blobs = sys.argv[1], sys.argv[2]
with JobStore(db, blobs) as store:
    mine = store.submit("watch", {}, "cpu", share=0.5)
    store.claim_next("cpu", worker=os.getpid(), max_running=2)
    neighbour = store.submit("watch", {}, "cpu", share=0.5)
    store.claim_next("cpu", worker=os.getpid() + 1, max_running=2)
print(mine.id, neighbour.id, flush=True)
end_when_orphaned(WorkerSpec("cpu", db, blobs, {}), parent=-1, every_s=0.01)  # not its parent: orphaned at once
time.sleep(60)
"""


def test_an_orphaned_worker_fails_only_its_own_job_and_exits_70(tmp_path: Path) -> None:
    """Two workers share the device; the one whose app went must fail its own running job, never its neighbour's
    (whose app may live on), and end with EX_SOFTWARE rather than 0, which reads as a clean stop."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    db, blobs = tmp_path / "jobs.db", tmp_path / "blobs"
    ended = subprocess.run([sys.executable, "-c", ORPHAN, str(db), str(blobs)], capture_output=True, text=True,
                           timeout=60, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert ended.returncode == 70, ended.stderr[-2000:]
    mine, neighbour = ended.stdout.split()
    with JobStore(db, blobs) as store:
        failed, running = store.get(mine), store.get(neighbour)
    assert failed.status == FAILED
    assert failed.error == "the app stopped while this job was running (its worker stopped with it)"
    assert running.status == RUNNING and running.error is None


def test_a_replacement_that_fails_to_start_is_tried_again(store: JobStore) -> None:
    """The worker's replacement cannot start once (EAGAIN, as right after an out-of-memory kill): the device must
    not be left without a worker, or every later job waits in the queue for ever."""
    from engine.jobs.broker import spawn_process

    starts: list[str] = []

    def flaky(spec, wake, stop):
        starts.append(spec.device)
        if len(starts) == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return spawn_process(spec, wake, stop)

    broker = Broker(store, KINDS, {"cpu": 1}, poll_s=0.2, launcher=flaky).start()
    try:
        dead = broker.submit("die", {"how": "sigkill"}, "cpu", "tester")
        after = broker.submit("watch", {"seconds": 0.05}, "cpu", "tester")
        dead_job, after_job = settle(store, [dead.id, after.id], 60)
    finally:
        broker.stop(5)
    assert dead_job.status == FAILED and after_job.status == DONE, after_job.error
    assert len(starts) == 3


def test_queued_jobs_of_a_device_gone_since_fail_at_start(store: JobStore) -> None:
    """Jobs queued for cuda:1, then a start with the CPU alone: they fail with the reason (no worker would ever
    claim them, and they held their owner's queue places); the CPU's queued job runs."""
    gone = [store.submit("watch", {"seconds": 0.01}, "cuda:1", owner="alice") for _ in range(2)]
    kept = store.submit("watch", {"seconds": 0.01}, "cpu", owner="alice")
    broker = _broker(store)
    try:
        done = settle(store, [kept.id])[0]
    finally:
        broker.stop(5)
    assert done.status == DONE
    for job in gone:
        failed = store.get(job.id)
        assert failed.status == FAILED and "queued for cuda:1, which this app no longer has" in failed.error
    assert store.waiting("alice") == (0, 0)


class _FakeWorker:
    """A worker handle that claims nothing: alive until `dies_after` seconds (never, when None), `ready` once
    started unless it is one that fails to start."""

    def __init__(self, pid: int, dies_after: float | None, reason: str) -> None:
        self.pid, self.exitcode, self.reason = pid, None, reason
        self.ready = dies_after is None
        self._ends = None if dies_after is None else time.monotonic() + dies_after

    def is_alive(self) -> bool:
        alive = self._ends is None or time.monotonic() < self._ends
        if not alive:
            self.exitcode = 1
        return alive

    def kill(self) -> None:
        self._ends = time.monotonic()

    def join(self, timeout: float | None = None) -> None:
        pass


def test_a_device_whose_worker_keeps_failing_to_start_is_down_until_one_runs(store: JobStore, monkeypatch) -> None:
    """cuda:1's workers fail to start (a Ray node gone: each try takes longer than a quick death, never ready):
    after DOWN_AFTER failures its queued job fails with the reason, new jobs are placed on cuda:0 however loaded
    and refused on cuda:1 by name; once a worker for it runs, it takes jobs again."""
    from engine.core.errors import InputError
    from engine.jobs import broker as broker_module

    monkeypatch.setattr(broker_module, "QUICK_DEATH_S", 0.2)
    node_back = threading.Event()
    pids = iter(range(1000, 2000))

    def launch(spec, wake, stop):
        gone = spec.device == "cuda:1" and not node_back.is_set()
        return _FakeWorker(next(pids), 0.3 if gone else None, "its Ray actor did not start: node 10.0.0.2 is gone")

    stranded = store.submit("watch", {"seconds": 0.01}, "cuda:1", owner="alice")
    busy = Broker(store, KINDS, {"cuda:0": 1, "cuda:1": 1}, poll_s=0.2, monitor_s=0.02, launcher=launch).start()
    try:
        bobs = store.submit("watch", {"seconds": 0.01}, "cuda:0", owner="bob")  # cuda:0 is the more loaded
        deadline = time.monotonic() + 30
        while busy.down("cuda:1") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        why = busy.down("cuda:1")
        assert why is not None and "failed to start 3 times in a row" in why and "node 10.0.0.2 is gone" in why
        failed = store.get(stranded.id)
        assert failed.status == FAILED and failed.error.startswith("cuda:1 takes no jobs now"), failed.error
        assert "node 10.0.0.2 is gone" in failed.error
        assert store.get(bobs.id).status == QUEUED  # another device's jobs wait on
        assert busy.place(wants_gpu=True) == "cuda:0"
        with pytest.raises(InputError, match=r"cuda:1 takes no jobs now.*node 10\.0\.0\.2 is gone"):
            busy.submit("watch", {"seconds": 0.01}, "cuda:1", "alice")
        node_back.set()
        deadline = time.monotonic() + 60
        while busy.down("cuda:1") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert busy.down("cuda:1") is None
        assert busy.place(wants_gpu=True) == "cuda:1"
        assert busy.submit("watch", {"seconds": 0.01}, "cuda:1", "alice").status == QUEUED
    finally:
        busy.stop(1)


def test_a_device_with_a_running_worker_is_never_down(store: JobStore, monkeypatch) -> None:
    """Two workers on cuda:0, one running, the other failing to start again and again: jobs still go there."""
    from engine.jobs import broker as broker_module

    monkeypatch.setattr(broker_module, "QUICK_DEATH_S", 0.05)
    starts: list[int] = []

    def launch(spec, wake, stop):
        starts.append(1000 + len(starts))
        return _FakeWorker(starts[-1], None if len(starts) == 1 else 0.0, "cannot start")

    busy = Broker(store, KINDS, {"cuda:0": 2}, poll_s=0.2, monitor_s=0.02, launcher=launch).start()
    try:
        deadline = time.monotonic() + 20
        while len(starts) < 2 + broker_module.DOWN_AFTER and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(starts) >= 2 + broker_module.DOWN_AFTER
        assert busy.down("cuda:0") is None
        assert busy.submit("watch", {"seconds": 0.01}, "cuda:0", "alice").status == QUEUED
    finally:
        busy.stop(1)


def test_a_job_no_worker_could_run_is_refused_when_submitted(store: JobStore) -> None:
    """An unknown kind or device would wait in the queue for ever (no worker claims it): refused at once, by name."""
    from engine.core.errors import InputError

    idle = Broker(store, KINDS, {"cuda:0": 1, "cpu": 1})  # never started: submitting is what is tested
    with pytest.raises(InputError, match=r"no worker runs jobs of kind 'nope'; kinds: watch, allocate"):
        idle.submit("nope", {}, "cpu", "alice")
    with pytest.raises(InputError, match=r"^no worker for cuda:1; devices: cuda:0, cpu$"):
        idle.submit("watch", {}, "cuda:1", "alice")
    assert store.queue() == []


def test_a_preferred_device_wins_over_the_load(store: JobStore) -> None:
    """AVATARBENCH_DEVICE pins a device: jobs go there however loaded it is; a device this app lacks is no pin."""
    idle = Broker(store, KINDS, {"cuda:0": 1, "cuda:1": 1, "cpu": 1})
    idle.submit("watch", {}, "cuda:1", "bob")
    assert idle.place(True) == "cuda:0" and idle.place(False) == "cpu"
    assert idle.place(True, "cuda:1") == "cuda:1" and idle.place(False, "cuda:1") == "cuda:1"
    assert idle.place(True, "cuda:7") == "cuda:0" and idle.place(True, "cpu") == "cpu"


def test_jobs_that_crash_their_worker_never_take_the_device_down(store: JobStore) -> None:
    """Three jobs in a row kill their worker (out of memory, say): each replacement starts fine, so the device still
    takes jobs; only failed starts count towards DOWN_AFTER."""
    from engine.jobs import broker as broker_module

    broker = _broker(store)
    try:
        crashes = [broker.submit("die", {"how": "exit"}, "cpu", "tester") for _ in range(broker_module.DOWN_AFTER)]
        after = broker.submit("watch", {"seconds": 0.01}, "cpu", "tester")
        jobs = settle(store, [j.id for j in (*crashes, after)])
    finally:
        broker.stop(5)
    assert [j.status for j in jobs] == [FAILED] * broker_module.DOWN_AFTER + [DONE], jobs[-1].error
    assert broker.down("cpu") is None


def test_a_worker_process_that_dies_at_its_start_takes_its_device_down(store: JobStore) -> None:
    """A broken install: each worker process ends at once, with no job (a process has no `ready` to report): after
    DOWN_AFTER such starts the device is down, its queued job failed with the reason, not retried for ever."""
    pids = iter(range(3000, 4000))

    def launch(spec, wake, stop):
        worker = _FakeWorker(next(pids), 0.0, "its worker process exited unexpectedly (status 1)")
        del worker.ready  # a spawned process's handle has none
        return worker

    waiting = store.submit("watch", {"seconds": 0.01}, "cpu", owner="alice")
    broken = Broker(store, KINDS, {"cpu": 1}, poll_s=0.2, monitor_s=0.02, launcher=launch).start()
    try:
        deadline = time.monotonic() + 30
        while broken.down("cpu") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        why = broken.down("cpu")
    finally:
        broken.stop(1)
    assert why is not None and "failed to start 3 times in a row (its worker process exited unexpectedly" in why
    failed = store.get(waiting.id)
    assert failed.status == FAILED and failed.error.startswith("cpu takes no jobs now")


def test_a_dying_worker_fails_its_own_job_not_its_neighbours(store: JobStore) -> None:
    """Two workers on the CPU: the one that dies fails the job it ran, with the reason; the job beside it finishes."""
    broker = _broker(store, {"cpu": 2})
    try:
        beside = broker.submit("watch", {"seconds": 3.0}, "cpu", "alice")
        deadline = time.monotonic() + 60
        while store.get(beside.id).status == QUEUED:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dead = broker.submit("die", {"how": "sigkill"}, "cpu", "bob")
        beside_job, dead_job = settle(store, [beside.id, dead.id], 60)
    finally:
        broker.stop(5)
    assert dead_job.status == FAILED and "killed (SIGKILL" in dead_job.error
    assert beside_job.status == DONE, beside_job.error
