"""The app with its broker, end to end: jobs belong to their client (through every route, raw `fn_index` events
too), a worker killed mid-job fails only that job while the app keeps answering, the log survives many
concurrent ONNX jobs, and SIGTERM ends the app within its grace period with no worker left behind."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import RunningApp, start_app, stop_app

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    running = start_app(tmp_path_factory.mktemp("jobs-app"))
    try:
        yield running
    finally:
        stop_app(running)


def _client(app: RunningApp):
    from gradio_client import Client

    return Client(app.url, verbose=False)


def _wait(client, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := client.predict(job_id, api_name="/job_status"))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def _workers(app: RunningApp) -> list[psutil.Process]:
    children = psutil.Process(app.proc.pid).children(recursive=True)
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def _raw_event(app: RunningApp, client, name: str, data: list, session: str) -> dict:
    """Call an event the way a hand-made request can, by fn_index, even one the API page does not list."""
    fn_index = next(d["id"] for d in client.config["dependencies"] if d["api_name"] == name)
    body = json.dumps({"fn_index": fn_index, "data": data, "session_hash": session}).encode()
    request = urllib.request.Request(app.url + "/gradio_api/run/predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _raw_error(app: RunningApp, client, name: str, data: list, session: str) -> str:
    """The message of an event that must be refused (a gr.Error), called as _raw_event calls it."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        _raw_event(app, client, name, data, session)
    return refused.value.read().decode()


def test_jobs_belong_to_their_client_through_every_route(app: RunningApp, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from tiny_onnx import mlp

    alice, bob = _client(app), _client(app)
    job = alice.predict(model=handle_file(str(mlp(tmp_path / "mlp.onnx"))), runs=3, api_name="/onnx_submit")
    assert _wait(alice, job["job_id"])["status"] == "done"
    sha = alice.predict(job["job_id"], api_name="/onnx_result")["model_sha256"]
    with pytest.raises(AppError, match=r"made no files: its report \(/job_result\) is what it made"):
        alice.predict(job["job_id"], api_name="/job_files")
    for endpoint in ("/job_status", "/job_result", "/job_files", "/job_cancel", "/onnx_status", "/onnx_result"):
        with pytest.raises(AppError, match=f"no job {job['job_id']}"):
            bob.predict(job["job_id"], api_name=endpoint)
    assert bob.predict(api_name="/onnx_queue") == [] and bob.predict(api_name="/job_queue")["yours"] == []
    # A finished job is found again in the history (the queue lists only queued and running ones): one's own only.
    (found,) = [j for j in alice.predict(api_name="/job_history") if j["id"] == job["job_id"]]
    assert found["status"] == "done" and found["kind"] == "onnx_eval"
    assert job["job_id"] not in [j["id"] for j in bob.predict(10, api_name="/job_history")]
    with pytest.raises(AppError, match=r"limit must be a whole number in 1\.\.500, got 0"):
        alice.predict(0, api_name="/job_history")
    with pytest.raises(AppError, match="no stored file"):  # a sweep on someone else's upload
        bob.predict(model=f"onnx:{sha}", runtime="ort-cpu", device="cpu", api_name="/bench_submit")
    # The tab's own events, called by fn_index with another session: only that session's rows come back.
    rows = _raw_event(app, alice, "history_rows", [], session=uuid.uuid4().hex)["data"][0]["data"]
    assert rows == []
    own = _raw_event(app, alice, "history_rows", [], session=alice.session_hash)["data"][0]["data"]
    assert [r[0] for r in own] == [job["job_id"]]
    # A bare REST call (no session_hash, no login) owns nothing: it would share every such caller's jobs.
    for name, data in (("job_queue", []), ("onnx_queue", []), ("job_status", [job["job_id"]])):
        body = json.dumps({"data": data}).encode()
        bare = urllib.request.Request(f"{app.url}/gradio_api/run/{name}", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare, timeout=30)
        assert "send a session_hash" in refused.value.read().decode(), name
    # Whole numbers the API cannot round are our refusal, not Gradio's message-less error.
    for odd in ("abc", "NaN", "Infinity", 12.5):
        with pytest.raises(AppError, match="runs must be a whole number"):
            alice.predict(model=handle_file(str(tmp_path / "mlp.onnx")), runs=odd, api_name="/onnx_submit")
    # A job id that is not text is "no job", not an internal error.
    for odd in ({"a": 1}, ["x"], "f" * 5000):
        with pytest.raises(AppError, match=r"no job .*a job id is the text a submit returned"):
            alice.predict(odd, api_name="/job_status")
    # Prices a visitor edits are theirs alone.
    table = {"headers": ["GPU", "$/hour", "source"], "data": [["H100", 999.0, "mine"]]}
    _raw_event(app, alice, "save", [table], session=uuid.uuid4().hex)
    h100 = next(r for r in alice.predict(throughput=10.0, measured_on="H100", api_name="/cost") if r["gpu"] == "H100")
    assert h100["price_per_hour"] != 999.0
    assert "must be dollars per hour, a number; got 'x'" in _raw_error(app, alice, "save", [
        {"headers": ["GPU", "$/hour", "source"], "data": [["H100", "x", "mine"]]}], alice.session_hash)  # fmt: skip


def test_a_killed_worker_fails_only_its_job_and_the_app_keeps_serving(app: RunningApp) -> None:
    client = _client(app)
    long = client.predict(model="wav2lip", batch="8", device="cpu", runs=2000, api_name="/bench_submit")["job_id"]
    deadline = time.monotonic() + 120
    while client.predict(long, api_name="/job_status")["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    before = {p.pid for p in _workers(app)}
    nxt = client.predict(model="wav2lip", batch="1", device="cpu", runs=2, warmup=0, api_name="/bench_submit")
    for worker in _workers(app):
        worker.kill()
    for _ in range(10):  # the app answers while its worker is replaced
        assert client.predict(history_seconds=0, api_name="/telemetry")["snapshot"]["host"]
        time.sleep(0.1)
    failed = _wait(client, long)
    assert failed["status"] == "failed" and "killed (SIGKILL" in failed["error"]
    assert _wait(client, nxt["job_id"])["status"] == "done"
    assert {p.pid for p in _workers(app)}.isdisjoint(before)


def test_the_log_is_intact_after_many_concurrent_onnx_jobs(app: RunningApp, tmp_path: Path) -> None:
    """ONNX Runtime's stderr capture runs in the workers only: the app's log keeps every line afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import handle_file
    from tiny_onnx import mlp

    model = handle_file(str(mlp(tmp_path / "mlp.onnx")))

    def one(_: int) -> str:
        client = _client(app)
        job = client.predict(model=model, runs=2, warmup=0, api_name="/onnx_submit")["job_id"]
        return _wait(client, job)["status"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(one, range(20))) == ["done"] * 20
    marker = uuid.uuid4().hex
    with pytest.raises(Exception, match="no job"):
        _client(app).predict(marker[:12], api_name="/job_status")
    deadline = time.monotonic() + 10
    while f"no job {marker[:12]}" not in app.log():  # the refusal is logged where it always was
        assert time.monotonic() < deadline, app.log()[-2000:]
        time.sleep(0.2)


def test_a_browsers_owner_cookie_keeps_its_jobs_across_sessions_and_from_everyone_else(app: RunningApp) -> None:
    """What a reload does in a browser: a new session with the same owner cookie still sees its jobs."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    def browser(token: str):
        return Client(app.url, headers={"Cookie": f"avatarbench_owner={token}"}, verbose=False)

    token = uuid.uuid4().hex
    long = {"model": "wav2lip", "batch": "1", "device": "cpu", "runs": 2000}
    job = browser(token).predict(**long, api_name="/bench_submit")["job_id"]
    reloaded = browser(token)
    assert [j["id"] for j in reloaded.predict(api_name="/job_queue")["yours"]] == [job]
    for stranger in (browser(uuid.uuid4().hex), _client(app)):
        assert job not in [j["id"] for j in stranger.predict(api_name="/job_queue")["yours"]]
        with pytest.raises(AppError, match="no job"):
            stranger.predict(job, api_name="/job_cancel")
    assert reloaded.predict(job, api_name="/job_cancel")["status"] == "cancelled"
    assert _wait(reloaded, job)["status"] == "cancelled"


def test_logins_see_their_own_jobs_and_an_operator_sees_all(tmp_path: Path) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    app = start_app(tmp_path, "--auth", "alice:a", "--auth", "bob:b", "--operator", "carol", "--auth", "carol:c")
    try:
        alice, bob, carol = (Client(app.url, auth=login, verbose=False) for login in
                             (("alice", "a"), ("bob", "b"), ("carol", "c")))  # fmt: skip
        job = alice.predict(model="wav2lip", batch="1", device="cpu", runs=2, api_name="/bench_submit")["job_id"]
        assert _wait(alice, job)["status"] == "done"
        again = Client(app.url, auth=("alice", "a"), verbose=False)  # a new session of the same login
        assert again.predict(job, api_name="/bench_result")["report"]["results"]
        with pytest.raises(AppError, match="no job"):
            bob.predict(job, api_name="/bench_result")
        assert carol.predict(job, api_name="/job_status")["status"] == "done"
    finally:
        stop_app(app)


def test_sigterm_fails_the_running_job_keeps_the_queued_and_leaves_no_worker(tmp_path: Path) -> None:
    from engine.jobs.store import DONE, FAILED, QUEUED, JobStore

    app = start_app(tmp_path, AVATARBENCH_SHUTDOWN_GRACE="2")
    client = _client(app)
    try:
        running = client.predict(model="wav2lip", batch="8", device="cpu", runs=2000, api_name="/bench_submit")
        queued = [client.predict(model="s3fd", batch="1", device="cpu", runs=2, warmup=0,
                                 api_name="/bench_submit")["job_id"] for _ in range(3)]  # fmt: skip
        deadline = time.monotonic() + 120
        while client.predict(running["job_id"], api_name="/job_status")["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        workers = _workers(app)
        started = time.monotonic()
        assert stop_app(app, timeout_s=60, how=signal.SIGTERM) == 0
        assert time.monotonic() - started < 20
        assert workers and not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
    with JobStore(tmp_path / "avatarbench.sqlite3", tmp_path / "blobs") as store:
        stopped = store.get(running["job_id"])
        assert stopped.status == FAILED and "the app was stopped (SIGTERM) before this job finished" in stopped.error
        assert [store.get(q).status for q in queued] == [QUEUED] * 3
    again = start_app(tmp_path)
    try:
        with JobStore(tmp_path / "avatarbench.sqlite3", tmp_path / "blobs") as store:
            deadline = time.monotonic() + 180
            while any(store.get(q).status != DONE for q in queued):  # the queued ones run at the next start
                assert time.monotonic() < deadline and all(store.get(q).status != FAILED for q in queued)
                time.sleep(0.3)
    finally:
        stop_app(again)
