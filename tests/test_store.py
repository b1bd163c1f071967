"""The job store: rows survive restarts, claims are exclusive, and the runner keeps going after a failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.jobs.runner import JobRunner
from engine.jobs.store import DONE, FAILED, QUEUED, RUNNING, Job, JobStore, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    yield s
    s.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def settled(store: JobStore, *ids: str) -> Callable[[], bool]:
    return lambda: all(store.get(i).status in (DONE, FAILED) for i in ids)


class Concurrency:
    """Counts how many handler calls overlap, so a test can assert the per-device limit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0

    def handler(self, hold_s: float) -> Callable[[Job, Callable[[float, str], None]], dict]:
        def run(job: Job, progress: Callable[[float, str], None]) -> dict:
            with self.lock:
                self.now += 1
                self.max = max(self.max, self.now)
            time.sleep(hold_s)
            with self.lock:
                self.now -= 1
            return {"id": job.id}

        return run


# -- rows ----------------------------------------------------------------------------------------------------


def test_submit_get_and_queue_positions_per_device(store: JobStore) -> None:
    a1 = store.submit("onnx_eval", {"batch": [1, 2]}, "cuda:0", model_sha256="ab" * 32)
    b1 = store.submit("onnx_eval", {}, "cpu")
    a2 = store.submit("onnx_eval", {}, "cuda:0")
    b2 = store.submit("sweep", {}, "cpu")

    got = store.get(a1.id)
    assert (got.status, got.settings, got.model_sha256, got.position) == (QUEUED, {"batch": [1, 2]}, "ab" * 32, 1)
    assert got.result is None and got.started is None and got.progress == 0.0
    assert [j.position for j in map(store.get, (a1.id, a2.id, b1.id, b2.id))] == [1, 2, 1, 2]
    assert [(j.id, j.position) for j in store.queue()] == [(a1.id, 1), (b1.id, 1), (a2.id, 2), (b2.id, 2)]

    claimed = store.claim_next("cuda:0")
    assert claimed is not None and claimed.id == a1.id and claimed.status == RUNNING and claimed.started
    assert store.get(a1.id).position is None
    assert store.get(a2.id).position == 1
    assert [(j.id, j.status, j.position) for j in store.queue()][:3] == [
        (a1.id, RUNNING, None),
        (b1.id, QUEUED, 1),
        (a2.id, QUEUED, 1),
    ]

    store.finish(a1.id, {"latency_ms": float("inf"), "rows": [1]})
    done = store.get(a1.id)
    assert done.status == DONE and done.progress == 1.0 and done.finished and done.result["rows"] == [1]
    assert done.result["latency_ms"] == float("inf")
    assert a1.id not in [j.id for j in store.queue()]


def test_history_is_newest_first_and_filters_by_kind(store: JobStore) -> None:
    ids = [store.submit("onnx_eval" if i % 2 else "sweep", {"i": i}, "cpu").id for i in range(5)]
    store.fail(ids[0], "boom")
    assert [j.id for j in store.history()] == ids[::-1]
    assert [j.id for j in store.history(limit=2)] == ids[:2:-1]
    assert [j.id for j in store.history(kind="onnx_eval")] == [ids[3], ids[1]]
    assert store.history()[-1].status == FAILED and store.history()[-1].error == "boom"


def test_unknown_ids_and_bad_input_raise_store_error(store: JobStore) -> None:
    with pytest.raises(StoreError, match="no job nope"):
        store.get("nope")
    with pytest.raises(StoreError):
        store.finish("nope", {})
    with pytest.raises(StoreError):
        store.fail("nope", "x")
    with pytest.raises(StoreError):
        store.submit("onnx_eval", ["not", "a", "dict"], "cpu")  # type: ignore[arg-type]
    assert issubclass(StoreError, ValueError)


# -- blobs ---------------------------------------------------------------------------------------------------


def test_put_blob_stores_each_content_once(store: JobStore, tmp_path: Path) -> None:
    first, second, other = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    first.write_bytes(b"model bytes" * 1000)
    second.write_bytes(b"model bytes" * 1000)
    other.write_bytes(b"another model")

    sha = store.put_blob(first)
    assert store.put_blob(second) == sha
    assert store.put_blob(other) != sha
    path = store.blob_path(sha)
    assert path == tmp_path / "blobs" / sha[:2] / sha and path.read_bytes() == first.read_bytes()
    stored = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(stored) == 2  # no temp files left behind either
    assert store.blob_path(sha.upper()) == path


@pytest.mark.parametrize("name", ["zz" * 32, "ab" * 31, "ab" * 33, "", "../" * 20 + "abcd", "0" * 64])
def test_blob_path_rejects_bad_or_missing_names(store: JobStore, name: str) -> None:
    with pytest.raises(StoreError):
        store.blob_path(name)


def test_put_blob_of_a_missing_file(store: JobStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no file"):
        store.put_blob(tmp_path / "absent.onnx")


# -- restart -------------------------------------------------------------------------------------------------


def test_restart_fails_running_jobs_and_runs_queued_ones(tmp_path: Path) -> None:
    old = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    running = old.submit("onnx_eval", {}, "cuda:0")
    waiting = old.submit("onnx_eval", {"n": 1}, "cuda:0")
    assert old.claim_next("cuda:0").id == running.id
    old.update_progress(running.id, 0.4, "batch 2/5")
    old.close()  # the process "dies" here, with the job still RUNNING

    new = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    try:
        assert new.recover() == 1
        dead = new.get(running.id)
        assert dead.status == FAILED and dead.finished is not None
        assert dead.error.startswith("the app stopped while this job was running (restart at ")
        assert new.get(waiting.id).status == QUEUED and new.get(waiting.id).position == 1
        assert new.recover() == 0

        runner = JobRunner(new, {"onnx_eval": lambda job, progress: {"n": job.settings["n"]}}, poll_s=0.05)
        try:
            runner.start(["cuda:0"])
            wait_for(settled(new, waiting.id))
        finally:
            runner.stop()
        assert new.get(waiting.id).status == DONE and new.get(waiting.id).result == {"n": 1}
    finally:
        new.close()


# -- concurrency ---------------------------------------------------------------------------------------------


def test_concurrent_submissions_lose_nothing(tmp_path: Path) -> None:
    # Two stores on one file stand in for two processes: the lock inside one store does not cover them.
    stores = [JobStore(tmp_path / "jobs.db", tmp_path / "blobs") for _ in range(2)]
    ids: list[str] = []
    ids_lock = threading.Lock()

    def submit_ten(n: int) -> None:
        for i in range(10):
            job = stores[n % 2].submit("onnx_eval", {"thread": n, "i": i}, "cpu")
            with ids_lock:
                ids.append(job.id)

    try:
        threads = [threading.Thread(target=submit_ten, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == len(set(ids)) == 80
        queued = stores[0].queue()
        assert {j.id for j in queued} == set(ids)
        assert sorted(j.position for j in queued) == list(range(1, 81))
    finally:
        for s in stores:
            s.close()


def test_concurrent_claims_never_share_a_job_or_overlap_on_a_gpu(tmp_path: Path) -> None:
    stores = [JobStore(tmp_path / "jobs.db", tmp_path / "blobs") for _ in range(3)]
    jobs = [stores[0].submit("onnx_eval", {"i": i}, "cuda:0").id for i in range(20)]
    claimed: list[str] = []
    violations: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        s = stores[n % 3]
        barrier.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            job = s.claim_next("cuda:0")
            if job is None:
                with lock:
                    if len(claimed) == len(jobs):
                        return
                time.sleep(0.001)
                continue
            running = [j for j in s.queue() if j.status == RUNNING]
            with lock:
                claimed.append(job.id)
                if len(running) != 1:
                    violations.append(f"{len(running)} running")
            s.finish(job.id, {})

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert violations == []
        assert sorted(claimed) == sorted(jobs)  # each exactly once
        assert claimed == jobs  # and in submission order, since only one can run at a time
    finally:
        for s in stores:
            s.close()


def test_claim_next_honours_max_running(store: JobStore) -> None:
    for _ in range(3):
        store.submit("onnx_eval", {}, "cpu")
    assert store.claim_next("cpu", max_running=2) is not None
    assert store.claim_next("cpu", max_running=2) is not None
    assert store.claim_next("cpu", max_running=2) is None
    assert store.claim_next("cuda:1") is None  # nothing queued there


# -- runner --------------------------------------------------------------------------------------------------


def test_runner_runs_jobs_records_progress_and_survives_a_failure(store: JobStore) -> None:
    seen_progress: list[tuple[float, str]] = []

    def evaluate(job: Job, progress: Callable[[float, str], None]) -> dict:
        progress(0.5, "halfway")
        got = store.get(job.id)
        seen_progress.append((got.progress, got.progress_label))
        for i in range(50):  # a burst: the throttle must keep these from all hitting the database
            progress(i / 100, f"step {i}")
        return {"latency_ms": 1.5, "settings": job.settings}

    def explode(job: Job, progress: Callable[[float, str], None]) -> dict:
        raise RuntimeError("CUDA out of memory")

    runner = JobRunner(store, {"onnx_eval": evaluate, "broken": explode}, poll_s=0.05)
    try:
        runner.start(["cuda:0"])
        bad = store.submit("broken", {}, "cuda:0")
        good = store.submit("onnx_eval", {"batch": 4}, "cuda:0")
        unknown = store.submit("mystery", {}, "cuda:0")
        runner.wake()
        wait_for(settled(store, bad.id, good.id, unknown.id))
    finally:
        runner.stop()

    failed = store.get(bad.id)
    assert failed.status == FAILED and failed.error == "RuntimeError: CUDA out of memory"
    assert "Traceback" not in failed.error
    done = store.get(good.id)
    assert done.status == DONE and done.result == {"latency_ms": 1.5, "settings": {"batch": 4}}
    assert seen_progress == [(0.5, "halfway")]
    assert store.get(unknown.id).status == FAILED and "no handler" in store.get(unknown.id).error


def test_runner_fails_a_job_whose_result_is_not_json(store: JobStore) -> None:
    runner = JobRunner(store, {"onnx_eval": lambda job, progress: {"x": object()}}, poll_s=0.05)
    try:
        runner.start(["cpu"])
        job = store.submit("onnx_eval", {}, "cpu")
        runner.wake()
        wait_for(settled(store, job.id))
    finally:
        runner.stop()
    assert store.get(job.id).status == FAILED and store.get(job.id).error.startswith("TypeError")


def test_gpu_key_runs_one_at_a_time_and_cpu_key_runs_two(store: JobStore) -> None:
    gpu, cpu = Concurrency(), Concurrency()
    runner = JobRunner(store, {"gpu": gpu.handler(0.05), "cpu": cpu.handler(0.15)}, cpu_workers=2, poll_s=0.05)
    try:
        runner.start(["cuda:0", "cpu"])
        ids = [store.submit("gpu", {}, "cuda:0").id for _ in range(4)]
        ids += [store.submit("cpu", {}, "cpu").id for _ in range(4)]
        runner.wake()
        wait_for(settled(store, *ids))
    finally:
        runner.stop()
    assert all(store.get(i).status == DONE for i in ids)
    assert gpu.max == 1
    assert cpu.max == 2


def test_wake_starts_a_job_without_waiting_for_the_poll(store: JobStore) -> None:
    runner = JobRunner(store, {"onnx_eval": lambda job, progress: {}}, poll_s=30)
    try:
        runner.start(["cuda:0"])
        time.sleep(0.05)  # let the worker go to sleep on its (long) poll
        job = store.submit("onnx_eval", {}, "cuda:0")
        runner.wake()
        wait_for(settled(store, job.id), timeout=2)
    finally:
        runner.stop()
