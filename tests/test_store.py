"""The job store: rows survive restarts, claims are exclusive (a timed job has its device alone), reads are
limited to their owner; and a worker's run of one job records progress and ends it either way."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.core.errors import SetupError
from engine.jobs.store import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Job, JobStore, StoreError, hold_data_dir


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    yield s
    s.close()


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
    assert (store.running_on("cuda:0"), store.running_on("cpu")) == (1, 0)  # what a2, first in line, waits for
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
    for odd in ({"a": 1}, ["x"], 7, None, "f" * 5000):  # what an API caller may send as an id
        with pytest.raises(StoreError, match=r"no job .*12 hex digits") as refused:
            store.get(odd)  # type: ignore[arg-type]
        assert len(str(refused.value)) < 200
    for blank in ("", "   ", "\n"):  # an empty Job id field, or an API call with job_id="": "no job " named nothing
        with pytest.raises(StoreError, match=r"^no job id given: a job id is the text a submit returned"):
            store.get(blank)
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
        assert new.claim_next("cuda:0", worker=4242).id == waiting.id  # the queued job runs after the restart
        assert new.get(waiting.id).worker == 4242
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
        store.submit("onnx_eval", {}, "cpu", share=0.25)
    assert store.claim_next("cpu", max_running=2) is not None
    assert store.claim_next("cpu", max_running=2) is not None
    assert store.claim_next("cpu", max_running=2) is None
    assert store.claim_next("cuda:1") is None  # nothing queued there


def test_jobs_start_while_their_shares_fit_and_the_queue_order_holds(store: JobStore) -> None:
    sevenths = [store.submit("onnx_eval", {}, "cuda:0", share=1 / 7) for _ in range(7)]
    whole = store.submit("lipsync", {}, "cuda:0")  # 1 worker per GPU for its kind: the whole card
    small = store.submit("onnx_eval", {}, "cuda:0", share=1 / 7)
    assert [store.claim_next("cuda:0", max_running=8).id for _ in range(7)] == [j.id for j in sevenths]
    assert store.claim_next("cuda:0", max_running=8) is None  # seven sevenths fill the card (within rounding)
    store.finish(sevenths[0].id, {})
    assert store.claim_next("cuda:0", max_running=8) is None  # the whole-card job waits, and the small one behind it
    for job in sevenths[1:]:
        store.finish(job.id, {})
    assert store.claim_next("cuda:0", max_running=8).id == whole.id
    assert store.claim_next("cuda:0", max_running=8) is None
    store.finish(whole.id, {})
    assert store.claim_next("cuda:0", max_running=8).id == small.id
    assert store.load() == {"cuda:0": pytest.approx(1 / 7)}
    with pytest.raises(StoreError, match="share"):
        store.submit("onnx_eval", {}, "cuda:0", share=0)


def test_a_timed_job_has_its_device_alone(store: JobStore) -> None:
    first = store.submit("bench", {}, "cuda:0", share=0.5)
    timed = store.submit("onnx_eval", {}, "cuda:0", timed=True, share=0.25)  # timed: the whole device regardless
    after = store.submit("bench", {}, "cuda:0", share=0.5)
    assert store.claim_next("cuda:0", max_running=4).id == first.id
    assert store.claim_next("cuda:0", max_running=4) is None  # the timed job waits for the device to be free...
    store.finish(first.id, {})
    assert store.claim_next("cuda:0", max_running=4).id == timed.id
    assert store.claim_next("cuda:0", max_running=4) is None  # ...and nothing joins it while it measures
    store.finish(timed.id, {})
    assert store.claim_next("cuda:0", max_running=4).id == after.id


def test_a_cancel_that_races_a_worker_claiming_the_job_leaves_it_running(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel read "queued", a worker claimed the job, then the cancel marked it cancelled: the worker ran on
    outside every limit, the broker (seeing no running job to stop) held the device, the queue hung."""
    job = store.submit("onnx_eval", {}, "cpu", owner="alice")
    read = store.get

    def read_then_claimed(job_id: str, owner: str | None = None) -> Job:
        seen = read(job_id, owner)
        store.claim_next("cpu", worker=4242)  # between the cancel's read and its write
        return seen

    monkeypatch.setattr(store, "get", read_then_claimed)
    after = store.cancel(job.id, "alice")
    assert (after.status, after.worker) == (RUNNING, 4242)  # the broker then stops its worker (Broker.cancel)
    assert not store.cancel_queued(job.id, "late") and read(job.id).status == RUNNING


def test_reads_and_cancels_are_limited_to_their_owner(store: JobStore) -> None:
    mine = store.submit("onnx_eval", {}, "cpu", model_sha256="ab" * 32, owner="alice")
    theirs = store.submit("onnx_eval", {}, "cpu", owner="bob")
    with pytest.raises(StoreError, match=f"no job {mine.id}"):
        store.get(mine.id, "bob")
    with pytest.raises(StoreError, match="no job"):
        store.cancel(mine.id, "bob")
    assert [j.id for j in store.queue("alice")] == [mine.id] and store.queue("alice")[0].position == 1
    assert store.get(theirs.id, "bob").position == 2  # positions count everyone's jobs
    assert [j.id for j in store.history(owner="bob")] == [theirs.id]
    assert store.owns_model("alice", "ab" * 32) and not store.owns_model("bob", "ab" * 32)
    assert store.cancel(mine.id, "alice").status == CANCELLED
    assert store.claim_next("cpu").id == theirs.id
    assert store.get(mine.id).status == CANCELLED and not store.fail(mine.id, "late")  # an ended job stays ended


def test_requeue_puts_a_running_job_back_at_its_place(store: JobStore) -> None:
    first = store.submit("bench", {}, "cpu")
    second = store.submit("bench", {}, "cpu")
    assert store.claim_next("cpu", worker=7).id == first.id
    store.update_progress(first.id, 0.5, "half")
    store.save_partial(first.id, {"results": [1]})
    store.requeue(first.id)
    again = store.get(first.id)
    assert (again.status, again.worker, again.started, again.progress, again.position) == (QUEUED, None, None, 0, 1)
    assert again.result is None  # it starts over: what it had made is not its result
    assert store.claim_next("cpu").id == first.id and store.get(second.id).position == 1


def test_a_version_1_database_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute(
            "CREATE TABLE jobs (id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, model_sha256 TEXT, settings TEXT NOT NULL,"
            " device TEXT NOT NULL, status TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, progress_label TEXT NOT"
            " NULL DEFAULT '', error TEXT, result TEXT, created REAL NOT NULL, started REAL, finished REAL,"
            " seq INTEGER PRIMARY KEY AUTOINCREMENT)"
        )
        c.execute("INSERT INTO jobs (id, kind, settings, device, status, created) VALUES ('a1', 'bench', '{}', "
                  "'cpu', 'queued', 1.0)")  # fmt: skip
        c.execute("PRAGMA user_version = 1")
    with JobStore(db, tmp_path / "blobs") as upgraded:
        job = upgraded.get("a1")
        assert (job.owner, job.timed, job.worker, job.status) == ("", False, None, QUEUED)


# -- a worker's run of one job (in this process) --------------------------------------------------------------


def _context(store: JobStore, tmp_path: Path):
    from engine.core.settings import load_settings
    from engine.jobs.worker import WorkerContext

    return WorkerContext(store, load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}), "cpu")


def test_a_run_records_progress_measures_and_survives_a_failure(store: JobStore, tmp_path: Path) -> None:
    from engine.jobs.worker import run_job

    kinds = {"evaluate": "test_store:evaluate", "broken": "test_store:explode", "refused": "test_store:refuse"}
    context = _context(store, tmp_path)
    ids = [store.submit(kind, {"batch": 4}, "cpu").id for kind in (*kinds, "mystery", "opaque")]
    kinds["opaque"] = "test_store:opaque"
    while (job := store.claim_next("cpu")) is not None:
        run_job(job, context, kinds)
    good, bad, refused, unknown, opaque = (store.get(i) for i in ids)
    assert good.status == DONE and good.result["settings"] == {"batch": 4}
    assert good.result["seen_progress"] == [0.5, "halfway"]
    assert good.result["measurement"]["wall_s"] > 0 and good.result["measurement"]["peak_rss_bytes"] > 0
    assert bad.status == FAILED and bad.error == "internal error: RuntimeError: CUDA out of memory"
    assert refused.status == FAILED and refused.error == "batch 4 is not accepted here"  # ours: just the message
    assert unknown.status == FAILED and "runs no jobs of kind 'mystery'" in unknown.error
    assert opaque.status == FAILED and opaque.error.startswith("internal error: TypeError")  # a result not JSON


def test_progress_is_written_at_most_every_interval_and_always_at_its_end(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler reports progress per frame (thousands a job): every report reaching SQLite held the database's
    write lock for every other worker and the app; the last one (1.0) must still land, or a finished bar stalls."""
    from types import SimpleNamespace

    from engine.jobs import worker

    clock = [100.0]
    monkeypatch.setattr(worker, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    job = store.submit("evaluate", {}, "cpu")
    store.claim_next("cpu")
    progress = worker.progress_writer(store, job.id)

    def stored() -> tuple[float, str]:
        row = store.get(job.id)
        return row.progress, row.progress_label

    progress(0.1, "first")
    assert stored() == (0.1, "first")
    clock[0] = 100.1
    progress(0.2, "too soon")
    assert stored() == (0.1, "first")
    clock[0] = 100.0 + worker.PROGRESS_INTERVAL_S  # a whole interval since the last write
    progress(0.3, "a while later")
    assert stored() == (0.3, "a while later")
    clock[0] += 0.1
    progress(0.9, "too soon again")  # the interval counts from the last write, not the first
    assert stored() == (0.3, "a while later")
    progress(1.0, "done")
    assert stored() == (1.0, "done")


def test_a_job_runs_with_its_own_process_switches_and_its_share_of_the_card(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With N workers per GPU each job may take 1/N of the memory the app allows a card (a job given the whole card
    starves its neighbours into out-of-memory errors); its process switches (TF32, threads) are its own."""
    from engine.jobs import worker

    seen: list[tuple[dict, str, float]] = []
    monkeypatch.setattr(
        worker, "prepare_process", lambda request, device, fraction: seen.append((request, device, fraction))
    )
    context = _context(store, tmp_path)
    job = store.submit("evaluate", {"process": {"tf32": True, "threads": 1}}, "cuda:1", share=0.25)
    worker.run_job(store.claim_next("cuda:1"), context, {"evaluate": "test_store:evaluate"})
    assert store.get(job.id).status == DONE
    assert seen == [({"tf32": True, "threads": 1}, "cpu", context.settings.gpu_memory_fraction * 0.25)]


def evaluate(job: Job, progress: Callable[[float, str], None], context) -> dict:
    progress(0.5, "halfway")
    got = context.store.get(job.id)
    for i in range(50):  # a burst: the throttle must keep these from all hitting the database
        progress(i / 100, f"step {i}")
    return {"settings": job.settings, "seen_progress": [got.progress, got.progress_label]}


def explode(job: Job, progress: Callable[[float, str], None], context) -> dict:
    raise RuntimeError("CUDA out of memory")


def refuse(job: Job, progress: Callable[[float, str], None], context) -> dict:
    from engine.core.errors import InputError

    raise InputError(f"batch {job.settings['batch']} is not accepted here")


def opaque(job: Job, progress: Callable[[float, str], None], context) -> dict:
    return {"x": object()}


def test_a_partial_result_stays_with_a_job_stopped_on_the_way(store: JobStore) -> None:
    job = store.submit("bench", {}, "cpu")
    store.save_partial(job.id, {"results": [1]})  # not running yet: nothing to keep
    assert store.get(job.id).result is None
    store.claim_next("cpu", worker=7)
    store.save_partial(job.id, {"results": [1]})
    store.save_partial(job.id, {"results": [1, 2]})
    assert store.fail(job.id, "cancelled by its owner while it ran", CANCELLED)
    ended = store.get(job.id)
    assert (ended.status, ended.result) == (CANCELLED, {"results": [1, 2]})
    store.save_partial(job.id, {"results": [1, 2, 3]})  # a late write does not touch an ended job
    assert store.get(job.id).result == {"results": [1, 2]}
    with pytest.raises(StoreError, match="must be a dict"):
        store.save_partial(job.id, [1])  # type: ignore[arg-type]


def test_queue_limits_hold_under_concurrent_submits(store: JobStore) -> None:
    """The owner's count and the insert are one transaction: eight submits at once at a limit of three let three in
    (a check before the insert let four in), and the whole queue has its own limit, which new sessions cannot
    get round."""
    from engine.jobs.store import QueueFull, QueueLimits

    limits = QueueLimits(per_owner=3, total=5)
    accepted, refused = [], []
    start = threading.Barrier(8)

    def submit() -> None:
        start.wait()
        try:
            accepted.append(store.submit("k", {}, "cpu", owner="alice", limits=limits))
        except QueueFull as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 3 and len(refused) == 5 and "AVATARBENCH_MAX_QUEUED_JOBS" in refused[0]
    assert store.waiting("alice") == (3, 3) and store.waiting("bob") == (0, 3)
    store.submit("k", {}, "cpu", owner="bob", limits=limits)
    store.submit("k", {"segment": {"parent": accepted[0].id, "index": 1, "of": 2}}, "cpu", owner="alice")
    assert store.waiting("alice") == (3, 4)  # a split job's segment is not a job of its own
    store.submit("k", {}, "cpu", owner="carol", limits=limits)
    with pytest.raises(QueueFull, match=r"the queue holds 5 waiting jobs, the most it takes \(5, AVATARBENCH_MAX"):
        store.submit("k", {}, "cpu", owner="dave", limits=limits)  # a fresh session: the whole queue is full
    store.claim_next("cpu")  # one starts: it no longer waits
    assert store.submit("k", {}, "cpu", owner="dave", limits=limits).status == QUEUED


def test_only_the_newest_imported_reports_are_kept(store: JobStore) -> None:
    """Imported reports are done on arrival (no queue limit holds them) and no budget covers job rows: each owner
    keeps their newest few and a size of them, and another owner's are never touched (evicting everyone's oldest let
    one person's imports delete another's)."""

    def imported(owner: str, size: int) -> str:
        job = store.submit("bench", {}, "imported", owner=owner)
        store.finish(job.id, {"blob": "x" * size})
        return job.id

    alice = [imported("alice", 10) for _ in range(5)]
    bob = [imported("bob", 10) for _ in range(2)]
    other = store.submit("bench", {}, "cpu", owner="alice")  # not an import: never touched
    assert store.keep_newest("imported", "alice", count=3, owner_bytes=10**6) == 2
    assert [j.id for j in store.history(10, owner="alice") if j.device == "imported"] == alice[:1:-1]
    assert store.get(other.id).status == QUEUED and store.get(bob[0]).owner == "bob"
    newest = imported("bob", 100)
    # newest first: the new one (112 bytes of JSON) and the one before it (22) fit in 150, the one after goes
    assert store.keep_newest("imported", "bob", count=3, owner_bytes=150) == 1
    assert [j.id for j in store.history(10, owner="bob")] == [newest, bob[1]]
    assert store.keep_newest("imported", "bob", count=3, owner_bytes=50) == 1  # the newest stays whatever its size
    assert [j.id for j in store.history(10, owner="bob")] == [newest]
    assert len(store.history(10, owner="alice")) == 4  # bob's budgets never reached alice's reports
    assert store.result_bytes("imported", but="alice") == 112 and store.result_bytes("imported", but="bob") == 3 * 22


def test_one_app_per_data_dir(tmp_path: Path) -> None:
    """A second app on the same data dir is refused, naming the first; once that one ends, the dir is free."""
    first = hold_data_dir(tmp_path)
    with pytest.raises(SetupError, match=rf"another avatarbench app \(process {os.getpid()}\) is using the data dir"):
        hold_data_dir(tmp_path)
    first.close()
    hold_data_dir(tmp_path).close()


def test_checking_the_settings_leaves_the_apps_database_locks_alone(tmp_path: Path) -> None:
    """Settings.ensure_dirs runs in the app and the workers beside their live connections. It opened and closed the
    database file, which drops every POSIX lock the process holds on it, SQLite's own included: another process's
    last close then deleted the WAL under the app, whose later jobs no other process saw (queued for good, then
    lost at the next start)."""
    import subprocess
    import sys

    from engine.core.settings import load_settings

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    settings.ensure_dirs()
    app = JobStore(settings.db_path, tmp_path / "blobs")
    app.submit("onnx_eval", {}, "cpu", owner="user:a")
    code = ("import sys\nfrom engine.jobs.store import JobStore\n"
            f"s = JobStore({str(settings.db_path)!r}, {str(tmp_path / 'blobs')!r})\n"
            "print('ready', flush=True)\nsys.stdin.readline()\ns.close()\n")  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    try:
        assert worker.stdout.readline().strip() == "ready"
        settings.ensure_dirs()  # what an ONNX submit does in the app, and an ONNX job in its worker
        worker.communicate("go\n", timeout=60)  # the worker's connection closes: it must not think it is the last
    finally:
        worker.kill()
    assert Path(f"{settings.db_path}-wal").exists()  # deleted under the app before
    app.submit("lipsync", {}, "cpu", owner="user:a")
    fresh = JobStore(settings.db_path, tmp_path / "blobs")  # a new worker, or the app after a restart
    try:
        assert len(fresh.history(10)) == 2  # saw one (or "database disk image is malformed")
    finally:
        fresh.close()
        app.close()


def test_a_process_forked_while_a_store_writes_can_still_write(tmp_path: Path) -> None:
    """ZeroGPU's `spaces` forks the app for its GPU process. Forked while a thread was inside a write, the child
    believed its own process held SQLite's write lock (SQLite keeps that bookkeeping in process memory): every store
    it opened waited 30 s and failed with "database is locked". The fork now waits for the statement to end."""
    import sqlite3

    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    inside, done = threading.Event(), threading.Event()

    def write_slowly() -> None:
        with store._tx() as conn:
            conn.execute("UPDATE jobs SET progress = 0 WHERE 0")
            inside.set()
            time.sleep(0.5)
        done.set()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: one write, with a short wait instead of the store's 30 s
        status = 1
        try:
            conn = sqlite3.connect(tmp_path / "jobs.db", timeout=3, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
            status = 0
        finally:
            os._exit(status)
    assert done.is_set()  # the fork waited for the write to end
    writer.join()
    _, status = os.waitpid(pid, 0)
    store.close()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked process could not take SQLite's write lock"


def test_an_owners_queue_numbers_its_jobs_among_everyones(store: JobStore) -> None:
    """Bob's one job behind two of Alice's is third in line: counting his own jobs only would say first, and he would
    wait for a start that is two jobs away."""
    for _ in range(2):
        store.submit("onnx_eval", {}, "cpu", owner="alice")
    bobs = store.submit("onnx_eval", {}, "cpu", owner="bob")
    assert [(j.id, j.position) for j in store.queue("bob")] == [(bobs.id, 3)]


@pytest.mark.parametrize("workers", [9, 11, 21, 42])
def test_n_shares_of_one_nth_fill_a_device_whatever_their_rounding(store: JobStore, workers: int) -> None:
    """Eight ninths added up by SQLite, plus the ninth, come to a whisker over 1 in floating point (so do 10 of 1/11,
    20 of 1/21, 41 of 1/42): without the slack the last of N workers per GPU would never start."""
    jobs = [store.submit("onnx_eval", {}, "cuda:0", share=1 / workers) for _ in range(workers)]
    claimed = [store.claim_next("cuda:0", max_running=workers) for _ in range(workers)]
    assert [j.id for j in claimed if j is not None] == [j.id for j in jobs]


def test_a_share_over_the_whole_device_is_refused(store: JobStore) -> None:
    """A job's share is at most its whole device: 1.5 of one would never start (it could not fit even alone)."""
    with pytest.raises(StoreError, match=r"a job's share of its device is in \(0, 1\], not 1.5"):
        store.submit("onnx_eval", {}, "cuda:0", share=1.5)


def test_a_late_progress_report_leaves_a_finished_job_as_it_ended(store: JobStore) -> None:
    """A progress callback that arrives after the job ended must not move it back from 100% (or relabel it)."""
    job = store.submit("onnx_eval", {}, "cpu")
    store.claim_next("cpu")
    store.update_progress(job.id, 0.5, "batch 1/2")
    store.finish(job.id, {})
    store.update_progress(job.id, 0.7, "batch 2/2")
    done = store.get(job.id)
    assert (done.status, done.progress, done.progress_label) == (DONE, 1.0, "batch 1/2")


def test_statuses_by_id_prefix_match_only_the_start_of_an_id(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A split job's folder names its job by the start of its id: text found in the middle of another job's id is
    not that job (it would keep a stopped job's folder, or sweep one whose job is unknown)."""
    import engine.jobs.store

    monkeypatch.setattr(engine.jobs.store.secrets, "token_hex", lambda n: "0123456789ab")
    store.submit("onnx_eval", {}, "cpu")
    assert store.statuses("012345") == {QUEUED} and store.statuses("456789") == set()


def test_an_id_collision_draws_again_and_another_constraint_says_what_failed(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the id's own uniqueness is a collision to draw again from: a job missing its owner (a caller's bug) said
    "could not allocate a job id" after five draws, which sent whoever debugged it the wrong way."""
    import engine.jobs.store

    ids = iter(["0123456789ab", "0123456789ab", "ba9876543210", "00000000000c"])
    monkeypatch.setattr(engine.jobs.store.secrets, "token_hex", lambda n: next(ids))
    first, second = store.submit("onnx_eval", {}, "cpu"), store.submit("onnx_eval", {}, "cpu")
    assert (first.id, second.id) == ("0123456789ab", "ba9876543210")
    with pytest.raises(StoreError, match=r"^the job could not be stored: NOT NULL constraint failed: jobs\.owner$"):
        store.submit("onnx_eval", {}, "cpu", owner=None)  # type: ignore[arg-type]
