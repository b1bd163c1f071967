"""Job workers as Ray actors (engine/jobs/ray_pool.py), on a real local Ray cluster that declares four GPUs without
having any: two actors share each logical GPU, a dead actor fails only its job (with Ray's reason) and is replaced,
progress reaches the app's store, output files come back through Ray into the app's outputs folder (the actors'
data dir is another one), and a real ONNX evaluation runs in an actor from a shipped model."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from job_kinds import settle

from engine.core.errors import InputError
from engine.core.settings import Settings, load_settings
from engine.jobs.broker import Broker
from engine.jobs.store import CANCELLED, DONE, FAILED, Job, JobStore

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
OWNER = "tester"
GPUS = ("cuda:0", "cuda:1", "cuda:2", "cuda:3")
CARD = "TESTCARD"
# The actors import this module by name: the cluster's workers get tests/ on their PYTHONPATH (see `cluster`).
KINDS = {
    "meet": "test_ray_pool:meet",
    "hold": "test_ray_pool:hold",
    "die": "test_ray_pool:die",
    "write": "test_ray_pool:write",
    "refuse": "test_ray_pool:refuse",
    "rows": "test_ray_pool:rows",
    "onnx_eval": "engine.onnx.jobs:handle",
}


# -- the handlers, run inside the actors -------------------------------------------------------------------------


def _where(job: Any, context: Any) -> dict[str, Any]:
    import ray

    return {
        "pid": os.getpid(),
        "actor": ray.get_runtime_context().get_actor_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "ran_on": job.device,
        "share": job.share,
        "data_dir": str(context.settings.data_dir),
    }


def meet(job: Any, progress: Any, context: Any) -> dict:
    """Wait (a while at most) until another job of the same key has arrived too: two jobs that both see the other
    ran side by side, so in two actors."""
    folder = Path(job.settings["rendezvous"])
    tag = job.settings["key"].replace(":", "_")
    (folder / f"{tag}--{job.id}").touch()
    progress(0.5, "waiting for a partner")
    deadline = time.monotonic() + 30
    while len(list(folder.glob(f"{tag}--*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return {**_where(job, context), "partnered": len(list(folder.glob(f"{tag}--*"))) >= 2}


def hold(job: Any, progress: Any, context: Any) -> dict:
    """Report progress, then wait until the test lets go (a file appears) or a minute has passed; a half-written
    video waits in the outputs folder meanwhile, as a pipeline's would."""
    (context.settings.outputs_dir / f"{job.kind}-{job.id}.mp4").write_bytes(b"half a video")
    progress(0.5, "holding")
    release = Path(job.settings["release"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {**_where(job, context), "released": release.exists()}


def rows(job: Any, progress: Any, context: Any) -> dict:
    """Keep a result so far (as a sweep keeps its rows), then hold as `hold` does."""
    context.store.save_partial(job.id, {"rows": [1, 2], "note": "stopped before its end"})
    return hold(job, progress, context)


def die(job: Any, progress: Any, context: Any) -> dict:
    progress(0.3, "about to exit")
    os._exit(3)


def write(job: Any, progress: Any, context: Any) -> dict:
    """Output files as the pipelines write them (outputs/<kind>-<id>.mp4), one in a sub-folder, over 100 kB (Ray's
    object store, not inline), and a file outside the outputs folder that must stay where it is."""
    outputs = context.settings.outputs_dir
    text = outputs / f"{job.kind}-{job.id}.txt"
    text.write_text(f"made by {job.id}")
    nested = outputs / "frames" / f"{job.id}.bin"
    nested.parent.mkdir(exist_ok=True)
    nested.write_bytes(bytes(range(256)) * 4096)
    elsewhere = context.settings.cache_dir / f"{job.id}.txt"
    elsewhere.write_text("stays")
    stream = outputs / f"{job.kind}-{job.id}.stream"  # a live stream no result names (engine/core/hls.py)
    stream.mkdir()
    (stream / "part-00000.ts").write_bytes(b"ts")
    return {"outputs": {"text": str(text)}, "frames": [str(nested)], "elsewhere": str(elsewhere),
            "where": _where(job, context)}  # fmt: skip


def refuse(job: Any, progress: Any, context: Any) -> dict:
    if job.settings["how"] == "input":
        raise InputError("that face is too small; faces of 64 px and more are accepted")
    raise RuntimeError("a bug")


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One local Ray cluster for the module: two CPUs, four GPUs declared (none real), the card type named."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=len(GPUS),
        resources={f"accelerator_type:{CARD}": 1},
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
    )
    yield ray
    ray.shutdown()


@dataclass
class Pool:
    broker: Broker
    workers: Any  # RayWorkers
    store: JobStore
    settings: Settings  # the app's
    node_dir: Path  # the actors' AVATARBENCH_DATA_DIR
    tmp: Path


@pytest.fixture(scope="module")
def pool(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    from engine.jobs.ray_pool import ray_workers

    tmp = tmp_path_factory.mktemp("ray-pool")
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp / "app")})
    settings.ensure_dirs()
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    node_dir = tmp / "node"
    workers = ray_workers(
        settings, store, KINDS, workers_per_gpu=2, cpu_workers=1,
        actor_env={"AVATARBENCH_DATA_DIR": str(node_dir)}, gpus_run_on_cpu=True,
    )  # fmt: skip
    broker = Broker(
        store,
        KINDS,
        workers.workers,
        per_gpu={"default": 2},
        run_on=workers.run_on,
        launcher=workers.launch,
        poll_s=0.1,
    ).start()
    yield Pool(broker, workers, store, settings, node_dir, tmp)
    broker.stop(5)
    workers.shutdown()
    store.close()


def _until(what: str, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _meet_pair(pool: Pool, key: str, name: str) -> list[Job]:
    folder = pool.tmp / name
    folder.mkdir()
    settings = {"rendezvous": str(folder), "key": key}
    return [pool.broker.submit("meet", settings, key, OWNER) for _ in range(2)]


# -- tests ---------------------------------------------------------------------------------------------------------


def test_each_gpu_gets_its_workers_and_its_card_type(pool: Pool, monkeypatch) -> None:
    workers = pool.workers
    assert workers.workers == {**dict.fromkeys(GPUS, 2), "cpu": 1}
    assert workers.run_on == dict.fromkeys((*GPUS, "cpu"), "cpu")  # the GPUs are only declared here
    assert workers.card_types == dict.fromkeys(GPUS, CARD) and workers.devices_with(CARD) == list(GPUS)
    assert workers.devices_with("H100") == []
    assert sorted(h.device for h in workers.handles()) == sorted([*GPUS, *GPUS, "cpu"])
    (cpu_worker,) = [h for h in workers.handles() if h.device == "cpu"]
    assert cpu_worker.about["cuda_visible_devices"] == ""  # it sees no card, so takes no memory on one
    # a kind whose code a node lacks is refused at start, naming it and the node (not a failed job per kind later)
    from engine.core.errors import SetupError

    monkeypatch.setattr(workers, "kinds", {**KINDS, "gone": "no_such_module:handle"})
    with pytest.raises(SetupError, match=r"on Ray nodes \(install avatarbench there\): no_such_module on \S"):
        workers._describe([cpu_worker.actor])


def test_eight_jobs_land_on_four_gpus_two_actors_each(pool: Pool) -> None:
    folder = pool.tmp / "eight"
    folder.mkdir()
    ids = []
    for _ in range(8):
        key = pool.broker.place(True)  # the least-loaded GPU
        ids.append(pool.broker.submit("meet", {"rendezvous": str(folder), "key": key}, key, OWNER).id)
    jobs = settle(pool.store, ids, 60)
    assert all(j.status == DONE for j in jobs), [(j.status, j.error) for j in jobs]
    seen = {}
    for key in GPUS:
        mine = [j for j in jobs if j.device == key]
        assert len(mine) == 2 and all(j.result["partnered"] for j in mine)  # side by side, so two actors
        assert len({j.result["actor"] for j in mine}) == 2
        cards = {j.result["cuda_visible_devices"] for j in mine}
        assert len(cards) == 1 and {tuple(j.result["gpu_ids"]) for j in mine} == {tuple(cards)}  # one card, shared
        seen[key] = cards.pop()
        assert all(j.result["ran_on"] == "cpu" and j.result["share"] == 0.5 for j in mine)
        assert all(j.worker == j.result["pid"] for j in mine)  # on the app's node the worker id is the process id
        assert all(Path(j.result["data_dir"]) == pool.node_dir / "ray-worker" for j in mine)
        assert all("measurement" in j.result for j in mine)
    assert seen == {key: key.removeprefix("cuda:") for key in GPUS}  # each key names the card its actors have
    assert all(h.rss() > 2**20 for h in pool.workers.handles())  # the actors' memory, for the broker's cap


def test_progress_reaches_the_store(pool: Pool) -> None:
    release = pool.tmp / "release-progress"
    job = pool.broker.submit("hold", {"release": str(release)}, "cuda:2", OWNER)
    running = _until("progress in the store", lambda: (j := pool.store.get(job.id)).progress == 0.5 and j)
    assert running.progress_label == "holding" and running.status == "running"
    release.touch()
    (done,) = settle(pool.store, [job.id], 60)
    assert done.status == DONE and done.result["released"] and done.progress == 1.0


def test_output_files_come_back_to_the_apps_outputs_folder(pool: Pool) -> None:
    job = pool.broker.submit("write", {}, "cuda:3", OWNER)
    (done,) = settle(pool.store, [job.id], 60)
    assert done.status == DONE, done.error
    outputs = pool.settings.outputs_dir
    text, (frames,) = Path(done.result["outputs"]["text"]), done.result["frames"]
    assert text == outputs / f"write-{job.id}.txt" and text.read_text() == f"made by {job.id}"
    assert Path(frames) == outputs / "frames" / f"{job.id}.bin"
    assert Path(frames).read_bytes() == bytes(range(256)) * 4096
    umask = os.umask(0)
    os.umask(umask)
    assert text.stat().st_mode & 0o777 == 0o666 & ~umask  # as a local worker's output (mkstemp's 0600 before)
    actor_outputs = pool.node_dir / "ray-worker" / "outputs"
    assert not (actor_outputs / text.name).exists() and not (actor_outputs / "frames" / f"{job.id}.bin").exists()
    assert not (actor_outputs / f"write-{job.id}.stream").exists()  # every streamed job's stayed on the node
    elsewhere = Path(done.result["elsewhere"])  # not an output: named as it was, left where it was
    assert elsewhere == pool.node_dir / "ray-worker" / "cache" / f"{job.id}.txt" and elsewhere.read_text() == "stays"


def test_handler_errors_fail_the_job_as_in_a_worker_process(pool: Pool) -> None:
    refused = pool.broker.submit("refuse", {"how": "input"}, "cpu", OWNER)
    buggy = pool.broker.submit("refuse", {"how": "bug"}, "cpu", OWNER)
    refused, buggy = settle(pool.store, [refused.id, buggy.id], 60)
    assert refused.status == FAILED and refused.error == "that face is too small; faces of 64 px and more are accepted"
    assert buggy.status == FAILED and buggy.error == "internal error: RuntimeError: a bug"


@pytest.mark.parametrize(
    ("how", "status", "reason"),
    [
        ("ray.kill", FAILED, "its Ray actor died: The actor died unexpectedly before finishing this task."),
        ("os._exit", FAILED, "its Ray actor died: The actor died unexpectedly before finishing this task."),
        ("cancel", CANCELLED, "cancelled by its owner while it ran"),
    ],
)
def test_an_actor_that_dies_mid_job_fails_it_and_is_replaced(pool: Pool, how: str, status: str, reason: str) -> None:
    """Killed from outside (ray.kill), exited inside its handler, or stopped by the broker for a cancel."""
    import ray

    key = "cuda:1"
    if how == "os._exit":
        job = pool.broker.submit("die", {}, key, OWNER)
    else:
        job = pool.broker.submit("hold", {"release": str(pool.tmp / "never")}, key, OWNER)
        _until("the job running", lambda: pool.store.get(job.id).progress == 0.5)
        if how == "cancel":
            assert pool.broker.cancel(job.id, OWNER).status == CANCELLED
        else:
            ray.kill(next(h for h in pool.workers.handles() if h.pid == pool.store.get(job.id).worker).actor)
    (dead,) = settle(pool.store, [job.id], 60)
    assert dead.status == status and dead.error.startswith(reason), dead.error
    words = {"ray.kill": "killed by `ray.kill`", "os._exit": "its worker process has died"}.get(how, "")
    assert words in dead.error
    _until("a replacement", lambda: dead.worker not in pool.broker.pids() and len(_alive(pool, key)) == 2)
    later = settle(pool.store, [j.id for j in _meet_pair(pool, key, f"after-{how}")], 60)
    assert all(j.status == DONE and j.result["partnered"] for j in later), [(j.status, j.error) for j in later]
    assert dead.worker not in {j.worker for j in later}  # the replacement and the other actor ran them
    # what the killed actor's job wrote went when the next job started on the node: it stayed there for good
    assert not list((pool.node_dir / "ray-worker" / "outputs").glob(f"*{job.id}*"))


def test_a_job_stopped_in_an_actor_keeps_its_result_so_far(pool: Pool) -> None:
    """A sweep's rows kept as measured reached only the actor's own store, so a cancelled sweep on a Ray cluster
    ended with nothing, where one in a worker process keeps its rows."""
    job = pool.broker.submit("rows", {"release": str(pool.tmp / "never")}, "cuda:0", OWNER)
    _until("the result so far in the app's store", lambda: pool.store.get(job.id).result)
    assert pool.broker.cancel(job.id, OWNER).status == CANCELLED
    (stopped,) = settle(pool.store, [job.id], 60)
    assert stopped.status == CANCELLED and stopped.result == {"rows": [1, 2], "note": "stopped before its end"}


def _alive(pool: Pool, key: str) -> list[Any]:
    return [h for h in pool.workers.handles() if h.device == key and h.is_alive()]


def test_a_real_onnx_evaluation_runs_in_an_actor_from_a_shipped_model(pool: Pool) -> None:
    pytest.importorskip("onnxruntime")
    from tiny_onnx import mlp

    from engine.onnx.config import EvalConfig
    from engine.onnx.jobs import OnnxEvalJobs

    jobs = OnnxEvalJobs(pool.broker, pool.settings)
    config = EvalConfig.build({"model": mlp(pool.tmp / "upload.onnx"), "runs": 3, "warmup": 0, "intra_op_threads": 1})
    submitted = jobs.submit(config, OWNER).job
    (done,) = settle(pool.store, [submitted.id], 60)
    assert done.status == DONE, done.error
    assert done.device == "cpu" and [r["provider"] for r in done.result["results"]] == ["cpu"]
    assert done.result["inspection"]["name"] == "upload.onnx"
    shipped = list((pool.node_dir / "ray-worker" / "actors").glob(f"*/blobs/*/{submitted.model_sha256}"))
    assert len(shipped) == 1 and shipped[0].read_bytes() == (pool.tmp / "upload.onnx").read_bytes()


def test_a_new_actor_starts_on_its_handles_thread_and_a_failed_start_says_why(pool: Pool, monkeypatch) -> None:
    """An actor that cannot be placed (a node gone, the cluster full) took the broker's watch for START_TIMEOUT_S
    (2 minutes) inside launch: no dead worker noticed, no time limit kept. The handle is returned at once, alive
    and not ready; it ends unready, with why, and the broker counts that as a failed start."""
    from engine.jobs import ray_pool
    from engine.jobs.worker import WorkerSpec

    monkeypatch.setattr(ray_pool, "START_TIMEOUT_S", 2.0)
    monkeypatch.setitem(pool.workers._slots, "cuda:9", ray_pool._Slot("cuda:9", None, 64.0, "cpu"))  # never fits
    spec = WorkerSpec("cuda:9", str(pool.store.db_path), str(pool.store.blobs_dir), KINDS)
    handle = pool.workers.launch(spec, threading.Event(), threading.Event())
    assert handle.is_alive() and not handle.ready
    handle.join(30)
    assert not handle.is_alive() and not handle.ready and handle.exitcode == 1
    assert handle.reason == "Ray actors did not start within 2 s (is the cluster busy?)"
    assert handle not in pool.workers.handles()


def test_an_actor_that_cannot_be_reached_fails_its_job_in_those_words(pool: Pool, monkeypatch) -> None:
    """Ray's ActorUnavailableError (the actor's node unreachable) on a job's result read as the app's own bug:
    "its Ray worker's driver failed". The job fails saying the actor could not be reached; the actor is replaced."""
    import ray
    from ray.exceptions import ActorUnavailableError

    key, release = "cuda:2", pool.tmp / "release-unreachable"
    job = pool.broker.submit("hold", {"release": str(release)}, key, OWNER)
    _until("the job running", lambda: pool.store.get(job.id).progress == 0.5)
    real_get = ray.get

    def unreachable(ref: Any, timeout: float | None = None) -> Any:
        if timeout is None:  # the result's read (polls have a timeout)
            raise ActorUnavailableError("the node at 10.0.0.2 did not answer", None)
        return real_get(ref, timeout=timeout)

    monkeypatch.setattr(ray, "get", unreachable)
    release.touch()
    (lost,) = settle(pool.store, [job.id], 60)
    monkeypatch.setattr(ray, "get", real_get)
    assert lost.status == FAILED and lost.error.startswith("its Ray actor could not be reached:"), lost.error
    assert "the node at 10.0.0.2 did not answer" in lost.error
    _until("a replacement", lambda: lost.worker not in pool.broker.pids() and len(_alive(pool, key)) == 2)


def test_a_progress_poll_that_cannot_reach_its_actor_is_asked_again(pool: Pool, monkeypatch) -> None:
    """A poll lost to a node's network for a moment (Ray's ActorUnavailableError) says nothing of the job, which goes
    on running there: ending the worker for it failed a job that finished, and started a second actor on its card."""
    import ray
    from ray.exceptions import ActorUnavailableError

    from engine.jobs import ray_pool

    key, release = "cuda:3", pool.tmp / "release-lost-polls"
    job = pool.broker.submit("hold", {"release": str(release)}, key, OWNER)
    _until("the job running", lambda: pool.store.get(job.id).progress == 0.5)
    real_get, lost = ray.get, []

    def unreachable(ref: Any, timeout: float | None = None) -> Any:
        if timeout == ray_pool.CALL_TIMEOUT_S:  # a poll (a job's result is read without a timeout)
            lost.append(ref)
            raise ActorUnavailableError("the node at 10.0.0.2 did not answer", None)
        return real_get(ref, timeout=timeout)

    monkeypatch.setattr(ray, "get", unreachable)
    _until("polls lost", lambda: len(lost) >= 3)
    monkeypatch.setattr(ray, "get", real_get)
    release.touch()
    (done,) = settle(pool.store, [job.id], 60)
    assert done.status == DONE and done.result["released"], done.error


def test_nothing_imports_ray_without_the_setting(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from engine.core.errors import InputError\n"
        "from engine.core.settings import load_settings\n"
        "from engine.jobs import ray_pool\n"
        "try:\n"  # refused with the settings, before any worker or Ray
        "    settings = load_settings({'AVATARBENCH_DATA_DIR': sys.argv[1], 'AVATARBENCH_RAY_ADDRESS': 'http://x'})\n"
        "    ray_pool.ray_workers(settings, None, {}, 1, 1)\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "AVATARBENCH_RAY_ADDRESS='http://x' is not a Ray address; expected auto, HOST:PORT or ray://HOST:10001",
        "False",
    ]


def test_a_cluster_ray_cannot_use_is_a_set_up_error(monkeypatch) -> None:
    """ray.init's ValueError (a ray:// address without Ray Client installed) was a traceback."""
    ray = pytest.importorskip("ray")
    from engine.core.errors import SetupError
    from engine.jobs import ray_pool

    def refuse(**_: object) -> None:
        raise ValueError("Ray Client requires pip package `ray[client]`.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address, **kw: refuse(**kw))
    with socket.socket() as listening:  # something answers there: ray.init is asked
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"ray://127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(SetupError, match=f"cannot use the Ray cluster at {address}: Ray Client requires"):
            ray_pool._connect(address, {})
        monkeypatch.setattr(ray, "init", lambda address, **kw: _raise(ConnectionError("the GCS did not answer")))
        with pytest.raises(SetupError, match=r"^could not reach the Ray cluster at ray://127\.0\.0\.1:\d+ \(is `ray "
                           r"start --head` running\?\): the GCS did not answer$"):  # fmt: skip
            ray_pool._connect(address, {})
    # nothing answers: refused at once (ray.init retried for good, and the app never started, without a word)
    monkeypatch.setattr(ray, "init", lambda address, **kw: pytest.fail("ray.init asked"))
    with pytest.raises(SetupError, match=r"could not reach the Ray cluster at 127.0.0.1:\d+: nothing answers on"):
        ray_pool._connect(address.removeprefix("ray://"), {})


def _raise(error: BaseException) -> None:
    raise error


def test_the_app_runs_its_workers_as_ray_actors_when_given_an_address(tmp_path: Path, monkeypatch) -> None:
    """app.job_workers with AVATARBENCH_RAY_ADDRESS: the pool's devices, run_on and launcher go to the broker (the
    pool itself is tested on a real local cluster in test_ray_pool.py); without it, local processes."""
    pytest.importorskip("gradio")
    import app
    from engine.jobs import ray_pool

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    asked = {}

    def fake_pool(settings, store, kinds, workers_per_gpu, cpu_workers):
        asked.update(address=settings.ray_address, per_gpu=workers_per_gpu, cpu=cpu_workers, kinds=set(kinds))
        return SimpleNamespace(workers={"cuda:0": 2, "10.0.0.2/cuda:0": 2, "cpu": 1},
                               run_on={"cuda:0": "cuda:0"}, launch=lambda *a: None)  # fmt: skip

    monkeypatch.setattr(ray_pool, "ray_workers", fake_pool)
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_RAY_ADDRESS": "auto",
                              "AVATARBENCH_WORKERS_PER_GPU": "2,onnx_eval=1"})  # fmt: skip
    with JobStore(settings.db_path, tmp_path / "blobs") as store:
        workers, placement, pool = app.job_workers(settings, store)
        assert asked == {"address": "auto", "per_gpu": 2, "cpu": 1, "kinds": set(app.JOB_KINDS)}
        assert workers == pool.workers and placement == {"run_on": pool.run_on, "launcher": pool.launch}
        local = app.job_workers(dataclasses.replace(settings, ray_address=None, device="cpu"), store)
    assert local == ({"cpu": 1}, {}, None)


def test_shutdown_stops_the_actors_and_frees_the_gpus(pool: Pool, cluster: Any) -> None:
    """Last: it ends the module's pool (the fixture's own shutdown then does nothing)."""
    assert cluster.available_resources().get("GPU", 0) == 0  # the four cards are reserved for the workers
    running = pool.workers.handles()
    assert sorted(h.device for h in running) == sorted([*GPUS, *GPUS, "cpu"])
    pool.broker.stop(5)
    # a worker stopped cleanly ends its actor too (its memory, its share of the card), the CPU's (in no bundle) too
    _until("every stopped worker's actor ended", lambda: all(_ended(h.actor) for h in running))
    handles = pool.workers.handles()
    pool.workers.shutdown()
    _until("the GPUs free", lambda: cluster.available_resources().get("GPU", 0) == len(GPUS))
    assert all(not h.is_alive() for h in handles)


def _ended(actor: Any) -> bool:
    import ray
    from ray.exceptions import RayActorError

    try:
        ray.get(actor.poll.remote(), timeout=30)
    except RayActorError:
        return True
    return False


def test_a_sigterm_reaches_the_apps_handler_after_ray_starts() -> None:
    """ray.init puts absl's SIGTERM handler in place: the app was killed 3 s after a SIGTERM, past its grace, its
    running jobs left "running". start_services installs the app's handler again after the workers start."""
    pytest.importorskip("ray")
    pytest.importorskip("gradio")
    code = (
        "import os, signal, sys, time, ray, app\n"
        "shutdown = app.Shutdown(10)\n"
        "shutdown.install()\n"
        "app.start_jobs = lambda settings: ray.init(address='local', num_cpus=1, include_dashboard=False, "
        "log_to_driver=False)\n"
        "app.start_services(None, shutdown)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"  # the app's handler ends launch()'s wait so
        "    print('handled', shutdown.signal_name, flush=True)\n"
        "ray.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "handled SIGTERM" in proc.stdout, proc.stderr[-2000:]


# -- the pieces that need no cluster ---------------------------------------------------------------------------------


def _bare_pool(tmp_path: Path) -> Any:
    """A RayWorkers never started (nothing of Ray is asked): what its handles and the app call on it."""
    from engine.jobs.ray_pool import RayWorkers

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "app")})
    settings.ensure_dirs()
    return RayWorkers(settings, None, {}, {}, connected_here=False, local_node=None)


def test_a_job_without_an_id_removes_no_outputs_and_an_id_only_its_own(tmp_path: Path) -> None:
    """An actor killed before it wrote which job it ran leaves an empty file: swept as "*" + "" + "*", that removed
    every output on the node, every other job's video included."""
    from engine.jobs.ray_pool import _remove_job_outputs

    outputs = tmp_path / "outputs"
    (outputs / "lipsync-[ab].stream").mkdir(parents=True)
    (outputs / "lipsync-[ab].stream" / "part-00000.ts").write_bytes(b"ts")
    for name in ("lipsync-[ab].mp4", "lipsync-a.mp4", "portrait-other.mp4"):
        (outputs / name).write_bytes(b"video")
    _remove_job_outputs(outputs, "")
    assert len(list(outputs.iterdir())) == 4
    _remove_job_outputs(outputs, "[ab]")  # its own files only, its name taken as it is (not "a" or "b")
    assert sorted(p.name for p in outputs.iterdir()) == ["lipsync-a.mp4", "portrait-other.mp4"]


def test_only_the_folders_of_actors_that_ended_are_swept(tmp_path: Path) -> None:
    """Every actor that starts on a node sweeps what dead ones left: a living actor's folder (its blobs, its store)
    must stay, or the job it runs loses its inputs under it."""
    from engine.jobs.ray_pool import RUNNING, _actor_folder, _sweep_dead_actor_folders

    ended = [
        int(
            subprocess.run(
                [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
            ).stdout
        )
        for _ in range(2)
    ]
    dead_pid, earlier_pid = ended
    actors, outputs = tmp_path / "actors", tmp_path / "outputs"
    outputs.mkdir()
    folders = {
        _actor_folder(os.getpid()): "living",
        _actor_folder(dead_pid): "killed",
        str(earlier_pid): "earlier-version",  # a bare process id: the folder of a version before hosts were named
        # a data dir shared by nodes (an NFS home): another host's actor, whose process id means nothing here
        f"other-node-{dead_pid}": "elsewhere",
    }
    for name, job in folders.items():
        (actors / name).mkdir(parents=True)
        (actors / name / RUNNING).write_text(job)
        (outputs / f"lipsync-{job}.mp4").write_bytes(b"half a video")
    _sweep_dead_actor_folders(actors, outputs)
    assert sorted(p.name for p in actors.iterdir()) == sorted([_actor_folder(os.getpid()), f"other-node-{dead_pid}"])
    assert sorted(p.name for p in outputs.iterdir()) == ["lipsync-elsewhere.mp4", "lipsync-living.mp4"]
    assert _actor_folder(dead_pid) == f"{socket.gethostname()}-{dead_pid}"


def test_an_output_path_from_an_actor_is_written_only_inside_the_apps_outputs_folder(tmp_path: Path) -> None:
    """The paths travel from another machine: one that climbs out of the outputs folder, or is absolute, would write
    anywhere this app may (its job store, its settings)."""
    from engine.jobs.store import StoreError

    workers = _bare_pool(tmp_path)
    outputs = workers.settings.outputs_dir
    for relative in ("../jobs.sqlite3", "frames/../../x", "/etc/x", ""):
        with pytest.raises(StoreError, match="is not inside its outputs folder"):
            workers.bring_outputs({"video": "/node/out.mp4"}, [("/node/out.mp4", relative, b"data")])
    assert not (outputs.parent / "jobs.sqlite3").exists() and not (outputs.parent / "x").exists()
    result = workers.bring_outputs({"video": "/node/a.mp4", "frames": ["/node/f/1.png"], "n": 2},
                                   [("/node/a.mp4", "a.mp4", b"v"), ("/node/f/1.png", "f/1.png", b"p")])  # fmt: skip
    assert result == {"video": str(outputs / "a.mp4"), "frames": [str(outputs / "f" / "1.png")], "n": 2}
    assert (outputs / "f" / "1.png").read_bytes() == b"p"


def test_a_card_type_names_only_its_own_gpus_and_a_remote_actor_is_never_a_local_process(tmp_path: Path) -> None:
    """A job that asks for an H100 must not be placed on an A10G's key; a worker id of an actor on another node must
    never match a process here (the broker signals and measures local worker ids)."""
    workers = _bare_pool(tmp_path)
    workers.card_types = {"cuda:0": "A10G", "10.0.0.2/cuda:0": "H100", "10.0.0.2/cuda:1": "H100"}
    assert workers.devices_with("H100") == ["10.0.0.2/cuda:0", "10.0.0.2/cuda:1"]
    assert workers.devices_with("L4") == []
    ids = [workers.remote_id() for _ in range(3)]
    assert all(i < 0 for i in ids) and len(set(ids)) == 3
    assert not workers.is_local({"node_id": "abc"})  # the app is on no node (Ray Client)


def test_an_actors_store_refuses_a_damaged_input_and_keeps_the_inputs_in_use(tmp_path: Path) -> None:
    """A blob damaged on its way must fail its job, not be read as the model; trimming received blobs to the budget
    must never drop one the job about to run needs."""
    import hashlib

    from engine.jobs.ray_pool import _ActorStore
    from engine.jobs.store import StoreError

    store = _ActorStore(tmp_path / "jobs.sqlite3", tmp_path / "blobs")
    try:
        data = {name: name.encode() * 1000 for name in ("old", "used", "new")}
        shas = {name: hashlib.sha256(value).hexdigest() for name, value in data.items()}
        with pytest.raises(StoreError, match=f"the input {shas['old'][:12]} arrived damaged"):
            store.receive(shas["old"], b"not it")
        assert not store.has_blob(shas["old"])
        for age, name in enumerate(("old", "used", "new")):
            store.receive(shas[name], data[name])
            os.utime(store.blob_path(shas[name]), (1000 + age, 1000 + age))
        store.keep_within(len(data["new"]), keep={shas["used"]})  # the oldest go first, but never the one in use
        assert [store.has_blob(shas[n]) for n in ("old", "used", "new")] == [False, True, False]
        store.update_progress("j", 1.7, "past the end")
        assert store.take_progress()["progress"] == ("j", 1.0, "past the end")
    finally:
        store.close()


def test_an_actors_store_drops_the_least_recently_used_inputs_and_only_past_its_budget(tmp_path: Path) -> None:
    """The inputs an actor keeps for later jobs (a re-run of one model ships nothing): past the budget the oldest go
    first, and a store exactly at its budget keeps them all."""
    import hashlib

    from engine.jobs.ray_pool import _ActorStore

    store = _ActorStore(tmp_path / "jobs.sqlite3", tmp_path / "blobs")
    try:
        data = {name: name.encode() * 1000 for name in ("old", "mid", "new")}
        shas = {name: hashlib.sha256(value).hexdigest() for name, value in data.items()}
        for age, name in enumerate(data):
            store.receive(shas[name], data[name])
            os.utime(store.blob_path(shas[name]), (1000 + age, 1000 + age))
        sizes = {name: len(value) for name, value in data.items()}
        store.keep_within(sum(sizes.values()), keep=set())  # exactly at the budget: nothing dropped
        assert all(store.has_blob(sha) for sha in shas.values())
        store.keep_within(sizes["mid"] + sizes["new"], keep=set())
        assert [store.has_blob(shas[n]) for n in ("old", "mid", "new")] == [False, True, True]
    finally:
        store.close()


def test_only_files_a_result_names_inside_the_outputs_folder_travel_back(tmp_path: Path) -> None:
    """A result may name its outputs folder, a live stream's folder or a file a failed step never wrote: reading
    those as files failed the whole job; a file outside the outputs folder stays where it is."""
    from engine.jobs.ray_pool import _outputs_named

    outputs, elsewhere = tmp_path / "outputs", tmp_path / "cache"
    (outputs / "clip.stream").mkdir(parents=True)
    elsewhere.mkdir()
    for path in (outputs / "clip.mp4", elsewhere / "note.txt"):
        path.write_bytes(b"x")
    result = {"video": str(outputs / "clip.mp4"), "stream": str(outputs / "clip.stream"), "folder": str(outputs),
              "missing": [str(outputs / "never.mp4")], "note": str(elsewhere / "note.txt"),
              "relative": "clip.mp4"}  # fmt: skip
    assert list(_outputs_named(result, outputs)) == [(str(outputs / "clip.mp4"), "clip.mp4")]
    # a handler's frames kept as a tuple travel too (left on the node, the app's result named files it never got)
    (outputs / "frame-1.png").write_bytes(b"p")
    frames = {"frames": (str(outputs / "frame-1.png"),)}
    assert list(_outputs_named(frames, outputs)) == [(str(outputs / "frame-1.png"), "frame-1.png")]


def test_a_folder_not_named_by_a_process_id_is_left_alone_by_the_sweep(tmp_path: Path) -> None:
    """Something else in the actors' folder (an operator's notes, a copy) made every new actor on that node fail to
    start, reading its name as a process id."""
    from engine.jobs.ray_pool import _sweep_dead_actor_folders

    (tmp_path / "actors" / "notes").mkdir(parents=True)
    (tmp_path / "outputs").mkdir()
    _sweep_dead_actor_folders(tmp_path / "actors", tmp_path / "outputs")
    assert (tmp_path / "actors" / "notes").is_dir()


def test_workers_are_refused_outside_their_ranges_and_after_shutdown(tmp_path: Path, monkeypatch) -> None:
    """Bad counts are refused before Ray is asked for anything (0 workers per GPU divided by zero); a pool that was
    shut down starts no late replacement; a device with no workers is refused naming those there are; and with
    no cluster address and no Ray running there is nothing to connect to."""
    ray = pytest.importorskip("ray")
    from engine.core.errors import SetupError
    from engine.jobs import ray_pool
    from engine.jobs.worker import WorkerSpec

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "app")})
    for per_gpu, cpu, message in ((0, 1, "workers per GPU must be 1..64, not 0"),
                                  (65, 1, "workers per GPU must be 1..64, not 65"),
                                  (1, -1, "CPU workers must be 0..64, not -1"),
                                  (1, 65, "CPU workers must be 0..64, not 65")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            ray_pool.ray_workers(settings, None, {}, per_gpu, cpu, address="127.0.0.1:1")
    with monkeypatch.context() as patched:
        patched.setattr(ray_pool, "_connect", lambda address, init_kwargs: _raise(SetupError("Ray asked")))
        for per_gpu, cpu in ((64, 0), (1, 64)):  # the ends of the ranges are taken: Ray is asked next
            with pytest.raises(SetupError, match=r"^Ray asked$"):
                ray_pool.ray_workers(settings, None, {}, per_gpu, cpu, address="127.0.0.1:1")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(SetupError, match="no Ray cluster to use: set AVATARBENCH_RAY_ADDRESS"):
        ray_pool._connect(None, {})
    workers = _bare_pool(tmp_path)
    workers._slots["cuda:0"] = ray_pool._Slot("cuda:0", None, 0.5, "cuda:0")
    spec = WorkerSpec("cuda:1", "", "", {})
    with pytest.raises(InputError, match=r"^no Ray workers for cuda:1; devices: cuda:0$"):
        workers.launch(spec, threading.Event(), threading.Event())
    workers.shutdown()
    with pytest.raises(SetupError, match="the Ray workers were shut down"):
        workers.launch(spec, threading.Event(), threading.Event())


def test_a_nodes_card_type_is_read_from_its_accelerator_resource_while_it_lives(monkeypatch) -> None:
    """A node Ray lists as dead keeps its resources in ray.nodes(): its card type must not name a live node's keys;
    a node naming two types gets the first by name, whatever order Ray lists them in."""
    ray = pytest.importorskip("ray")
    from engine.jobs.ray_pool import _card_types

    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"GPU": 4.0, "accelerator_type:H100": 1.0, "CPU": 8.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"GPU": 1.0, "accelerator_type:A10G": 1.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"accelerator_type:L4": 1.0, "accelerator_type:A10G": 1.0}},
        {"NodeID": "d", "Alive": True, "Resources": {"CPU": 2.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert _card_types() == {"a": "H100", "c": "A10G"}


def _started_with_made_up_answers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpus: dict[str, dict[str, Any]],
    cards: dict[str, str],
    local_node: str | None,
) -> Any:
    """A RayWorkers started on Ray's answers made up: `gpus` maps each reserved GPU bundle to where its actors said
    they landed (describe's answer), `cards` node id -> card type; one CPU worker on the first GPU's node."""
    from engine.jobs import ray_pool

    workers = _bare_pool(tmp_path)
    workers._local_node = local_node
    first = next(iter(gpus.values()))
    cpu_about = {"node_id": first["node_id"], "node_ip": first["node_ip"], "gpu_ids": [], "pid": 7}
    monkeypatch.setattr(ray_pool, "_reserve_gpus", lambda: list(gpus))
    monkeypatch.setattr(ray_pool, "_card_types", lambda: cards)
    monkeypatch.setattr(workers, "_new_actor", lambda slot: SimpleNamespace(slot=slot))
    monkeypatch.setattr(workers, "_describe", lambda actors: [
        cpu_about if a.slot.bundle is None else gpus[a.slot.bundle] for a in actors
    ])  # fmt: skip
    workers.start(2, 1, gpus_run_on_cpu=False)
    return workers


def test_each_gpu_key_names_its_node_and_card_in_the_brokers_order(tmp_path: Path, monkeypatch) -> None:
    """A device key is what a user picks and what a job that asks for a card type is placed on: the app's own GPUs
    are "cuda:K", another node's "IP/cuda:K" with its own card type, GPUs in order of node and number (cuda:2 before
    cuda:10), then the CPU; and every actor and GPU bundle goes at shutdown, the cluster kept connected when the
    app did not connect to it."""
    pytest.importorskip("ray")
    import ray
    import ray.util

    def about(node_id: str, ip: str, gpu: str) -> dict[str, Any]:
        return {"node_id": node_id, "node_ip": ip, "gpu_ids": [gpu], "pid": 7}

    gpus = {"pg-a": about("app-node-1", "10.0.0.1", "10"), "pg-b": about("app-node-1", "10.0.0.1", "2"),
            "pg-c": about("far-node-2", "10.0.0.2", "0")}  # fmt: skip
    cards = {"app-node-1": "A10G", "far-node-2": "H100"}
    workers = _started_with_made_up_answers(tmp_path, monkeypatch, gpus, cards, local_node="app-node-1")
    assert list(workers.workers.items()) == [("cuda:2", 2), ("cuda:10", 2), ("10.0.0.2/cuda:0", 2), ("cpu", 1)]
    assert workers.run_on == {"cuda:2": "cuda:0", "cuda:10": "cuda:0", "10.0.0.2/cuda:0": "cuda:0", "cpu": "cpu"}
    assert workers.card_types == {"cuda:2": "A10G", "cuda:10": "A10G", "10.0.0.2/cuda:0": "H100"}
    assert workers.devices_with("H100") == ["10.0.0.2/cuda:0"]

    killed, removed, disconnected = [], [], []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append(actor))
    monkeypatch.setattr(ray.util, "remove_placement_group", removed.append)
    monkeypatch.setattr(ray, "shutdown", lambda: disconnected.append(True))
    workers.shutdown()
    assert len(killed) == 7 and len({id(a) for a in killed}) == 7  # 2 on each of three GPUs, 1 on the CPU
    assert removed == ["pg-a", "pg-b", "pg-c"] and disconnected == []
    workers.shutdown()  # again: nothing more
    assert len(killed) == 7 and len(removed) == 3


def test_two_nodes_behind_one_ip_get_keys_of_their_own(tmp_path: Path, monkeypatch) -> None:
    """Nodes that share an address (containers on one host) named by IP both gave "IP/cuda:0": one key, half the
    GPUs lost. They are named by the start of their node ids instead."""
    pytest.importorskip("ray")
    gpus = {"pg-a": {"node_id": "aaaaaaaa1111", "node_ip": "10.0.0.5", "gpu_ids": ["0"], "pid": 7},
            "pg-b": {"node_id": "bbbbbbbb2222", "node_ip": "10.0.0.5", "gpu_ids": ["0"], "pid": 8}}  # fmt: skip
    workers = _started_with_made_up_answers(tmp_path, monkeypatch, gpus, {}, local_node=None)
    assert workers.workers == {"aaaaaaaa/cuda:0": 2, "bbbbbbbb/cuda:0": 2, "cpu": 1}
    assert workers.card_types == {}


def test_a_failed_start_frees_the_gpus_it_reserved_and_disconnects(tmp_path: Path, monkeypatch) -> None:
    """Actors that never answer (the cluster busy, avatarbench missing on a node) end ray_workers with why; the
    GPUs reserved for them must be given back to the cluster's other users, and the connection made for them closed."""
    pytest.importorskip("ray")
    import ray
    import ray.util

    from engine.core.errors import SetupError
    from engine.jobs import ray_pool

    def never_answer(self: Any, actors: list[Any]) -> list[dict[str, Any]]:
        raise SetupError("Ray actors did not start within 120 s (is the cluster busy?)")

    removed, disconnected = [], []
    monkeypatch.setattr(ray_pool, "_connect", lambda address, init_kwargs: True)
    monkeypatch.setattr(ray_pool, "_local_node_id", lambda: None)
    monkeypatch.setattr(ray_pool, "_reserve_gpus", lambda: ["pg-a", "pg-b"])
    monkeypatch.setattr(ray_pool.RayWorkers, "_new_actor", lambda self, slot: SimpleNamespace(slot=slot))
    monkeypatch.setattr(ray_pool.RayWorkers, "_describe", never_answer)
    monkeypatch.setattr(ray.util, "remove_placement_group", removed.append)
    monkeypatch.setattr(ray, "shutdown", lambda: disconnected.append(True))
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "app")})
    with pytest.raises(SetupError, match=r"^Ray actors did not start within 120 s \(is the cluster busy\?\)$"):
        ray_pool.ray_workers(settings, None, {}, 2, 1, address="auto")
    assert removed == ["pg-a", "pg-b"] and disconnected == [True]


def test_a_ray_already_running_in_the_app_is_used_and_left_running(monkeypatch) -> None:
    """An app that initialised Ray itself (or a test's local cluster) is not connected again, and is counted as not
    connected by the pool, so the pool's shutdown leaves it connected."""
    ray = pytest.importorskip("ray")
    from engine.jobs import ray_pool

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init asked"))
    assert ray_pool._connect("auto", {}) is False
    assert ray_pool._connect(None, {}) is False  # no address needed then


class _MadeUpPlacementGroup:
    """What _reserve_gpus asks of a placement group: a reference that is ready when its GPU is reserved."""

    def __init__(self, number: int) -> None:
        self.number, self.reference = number, f"ready-{number}"

    def ready(self) -> str:
        return self.reference


def test_gpus_are_reserved_only_where_free_and_a_shortfall_is_said(monkeypatch, caplog) -> None:
    """The GPUs others hold are not waited for (two minutes, then nothing); every GPU taken, or fewer reserved than
    were free, is said with the numbers, and a reservation still waiting is withdrawn (it would take its GPU later
    for nobody)."""
    pytest.importorskip("ray")
    import ray
    import ray.util

    from engine.jobs import ray_pool

    made, removed, waited = [], [], []

    def placement_group(bundles: list[dict[str, float]]) -> _MadeUpPlacementGroup:
        assert bundles == [{"GPU": 1}]
        made.append(_MadeUpPlacementGroup(len(made)))
        return made[-1]

    def wait(refs: list[str], num_returns: int, timeout: float) -> tuple[list[str], list[str]]:
        waited.append((num_returns, timeout))
        return refs[:2], refs[2:]  # two GPUs reserved in time, the rest still waiting

    monkeypatch.setattr(ray.util, "placement_group", placement_group)
    monkeypatch.setattr(ray.util, "remove_placement_group", removed.append)
    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"GPU": 8.0, "CPU": 32.0})
    monkeypatch.setattr(ray, "available_resources", lambda: {"GPU": 3.0, "CPU": 30.0})
    with caplog.at_level("WARNING", logger="avatarbench.ray"):
        reserved = ray_pool._reserve_gpus()
    assert reserved == made[:2] and len(made) == 3 and removed == [made[2]]
    assert waited == [(3, ray_pool.START_TIMEOUT_S)]
    assert [r.getMessage() for r in caplog.records] == ["Ray: only 2 of the 3 free GPUs could be reserved; using those"]

    caplog.clear()
    made.clear()
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 30.0})  # another app holds all eight
    with caplog.at_level("WARNING", logger="avatarbench.ray"):
        assert ray_pool._reserve_gpus() == []
    assert made == [] and len(waited) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "Ray: every GPU of the cluster is taken (another app on it?): this app's jobs run on the CPU"
    ]
    caplog.clear()
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 32.0})  # a cluster without GPUs: nothing to say
    with caplog.at_level("WARNING", logger="avatarbench.ray"):
        assert ray_pool._reserve_gpus() == []
    assert caplog.records == []


def _actor_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ran_on: list[str]) -> Any:
    """A RayWorkerActor as __init__ leaves it on a node (its own folder under <data dir>/actors, its store), in this
    process: shipped blobs are their bytes (ray.get hands them back), and run_job is a handler that records the
    device it was given and writes a video and a live stream as a pipeline does."""
    ray = pytest.importorskip("ray")
    from engine.jobs import ray_pool
    from engine.jobs.worker import WorkerContext

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "node" / "ray-worker")})
    settings.ensure_dirs()
    actor = ray_pool.RayWorkerActor.__new__(ray_pool.RayWorkerActor)
    actor.settings = settings
    actor.folder = settings.data_dir / "actors" / str(os.getpid())
    actor.store = ray_pool._ActorStore(actor.folder / "jobs.sqlite3", actor.folder / "blobs")
    actor.context = WorkerContext(actor.store, settings, "cpu")

    def run_job(job: Job, context: Any, kinds: dict[str, str]) -> None:
        ran_on.append(context.device)
        video = context.settings.outputs_dir / f"lipsync-{job.id}.mp4"
        video.write_bytes(b"video of " + job.id.encode())
        (context.settings.outputs_dir / f"lipsync-{job.id}.stream").mkdir()
        context.store.finish(job.id, {"video": str(video)})

    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: list(refs))
    monkeypatch.setattr(ray_pool, "run_job", run_job)
    return actor


def _job_naming(job_id: str, *shas: str) -> Job:
    return Job(job_id, "lipsync", None, {"files": list(shas)}, "cuda:0", "running", 0.0, "", None, None, 0.0, 0.0,
               None)  # fmt: skip


def test_an_actor_runs_a_job_on_the_device_it_is_given_and_sends_its_video_back(tmp_path: Path, monkeypatch) -> None:
    """On a real GPU node a GPU actor's handlers must run on "cuda:0" (its one visible card), not on the CPU its
    worker context starts with; the video comes back as bytes and leaves nothing on the node; a killed actor's
    half-made video goes when a job next starts there."""
    ran_on: list[str] = []
    actor = _actor_without_ray(tmp_path, monkeypatch, ran_on)
    try:
        outputs = actor.settings.outputs_dir
        killed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        dead_folder = actor.folder.parent / killed.stdout.strip()
        dead_folder.mkdir(parents=True)
        (dead_folder / "running-job").write_text("killed-job")
        (outputs / "lipsync-killed-job.mp4").write_bytes(b"half a video")
        outcome = actor.run(_job_naming("j1"), {}, "cuda:0", {})
        assert ran_on == ["cuda:0"]
        video = str(outputs / "lipsync-j1.mp4")
        assert outcome == {
            "job": "j1",
            "result": {"video": video},
            "files": [(video, "lipsync-j1.mp4", b"video of j1")],
        }
        assert list(outputs.iterdir()) == [] and not dead_folder.exists()
    finally:
        actor.store.close()


def test_an_actor_fails_a_job_whose_inputs_arrive_damaged_and_keeps_the_inputs_used_last(
    tmp_path: Path, monkeypatch
) -> None:
    """A damaged input fails its job saying so (the actor lives on for the next); past the actor's budget the inputs
    dropped are those used longest ago, not those received first: a model every job uses stays on the node."""
    import hashlib

    from engine.jobs import ray_pool

    ran_on: list[str] = []
    actor = _actor_without_ray(tmp_path, monkeypatch, ran_on)
    try:
        data = {name: bytes([number]) * 1000 for number, name in enumerate(("model", "once", "new"))}
        shas = {name: hashlib.sha256(value).hexdigest() for name, value in data.items()}
        outcome = actor.run(_job_naming("bad", shas["new"]), {}, "cuda:0", {shas["new"]: b"not it"})
        assert outcome == {"job": "bad", "files": [], "error": "its input files did not arrive: StoreError: the input "
                           f"{shas['new'][:12]} arrived damaged (its sha256 differs)"}  # fmt: skip
        assert ran_on == [] and not actor.store.has_blob(shas["new"])

        for age, name in enumerate(("model", "once")):  # the model received first, then an input used once
            actor.store.receive(shas[name], data[name])
            os.utime(actor.store.blob_path(shas[name]), (1000 + age, 1000 + age))
        monkeypatch.setattr(ray_pool, "BLOB_BUDGET_BYTES", 2 * 1000)  # room for two of the three
        actor.run(_job_naming("again", shas["model"]), {}, "cuda:0", {})  # the model, already there, used again
        actor.run(_job_naming("next", shas["new"]), {}, "cuda:0", {shas["new"]: data["new"]})
        assert [actor.store.has_blob(shas[n]) for n in ("model", "once", "new")] == [True, False, True]
        assert ran_on == ["cuda:0", "cuda:0"]
    finally:
        actor.store.close()


def test_an_actor_that_dies_as_it_starts_is_a_set_up_error_naming_the_likely_cause(tmp_path: Path, monkeypatch) -> None:
    """An actor whose process cannot import the engine dies before it answers: the app says to install avatarbench
    on every node, in Ray's words after, not a traceback of Ray's."""
    ray = pytest.importorskip("ray")
    from ray.exceptions import RayActorError

    from engine.core.errors import SetupError

    workers = _bare_pool(tmp_path)
    actor = SimpleNamespace(describe=SimpleNamespace(remote=lambda kinds: "its answer"))
    monkeypatch.setattr(ray, "get", lambda refs, timeout: _raise(RayActorError()))
    with pytest.raises(SetupError, match=r"^a Ray worker could not start \(is avatarbench installed on every node\?\): "
                       "The actor experienced an error before finishing this task.$"):  # fmt: skip
        workers._describe([actor])


def test_a_driver_whose_store_fails_ends_its_worker_saying_why(tmp_path: Path, monkeypatch) -> None:
    """The broker fails the job of a worker that ended with the worker's reason: a store error under the app-side
    driver must reach it in those words (not a bare exit code), the actor be stopped and the handle forgotten."""
    ray = pytest.importorskip("ray")
    from engine.jobs import ray_pool
    from engine.jobs.store import StoreError
    from engine.jobs.worker import WorkerSpec

    def locked(*_: Any) -> None:
        raise StoreError("database is locked")

    killed: list[Any] = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append(actor))
    workers = _bare_pool(tmp_path)
    workers.store = SimpleNamespace(claim_next=locked)
    actor = SimpleNamespace(name="the actor")
    workers._slots["cuda:0"] = ray_pool._Slot("cuda:0", "pg-a", 0.5, "cuda:0")
    workers._ready["cuda:0"] = [(actor, {"node_id": "far-node", "node_ip": "10.0.0.2", "gpu_ids": ["0"], "pid": 7})]
    handle = workers.launch(WorkerSpec("cuda:0", "", "", {}), threading.Event(), threading.Event())
    handle.join(10)
    assert not handle.is_alive() and handle.exitcode == 1
    assert handle.reason == "its Ray worker's driver failed: StoreError: database is locked"
    assert killed == [actor] and workers.handles() == []
    assert handle.pid is not None and handle.pid < 0  # an actor on another node: never a process id here


class _MadeUpActor:
    """An actor handle whose calls return names of answers (ray.get, faked, looks them up): what a driver asks, and
    what it sent (`asked`: the inputs it asked about, `shipped`: the inputs that came with the job)."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.shipped: list[dict[str, Any]] = []
        self.missing_blobs = SimpleNamespace(remote=lambda shas: self.asked.append(shas) or "missing")
        self.run = SimpleNamespace(remote=lambda job, kinds, run_on, blobs: self.shipped.append(blobs) or "outcome")
        self.poll = SimpleNamespace(options=lambda concurrency_group: SimpleNamespace(remote=lambda: "poll"))
        self.close = SimpleNamespace(remote=lambda: "closed")


def test_a_failure_around_the_handler_in_an_actor_fails_its_job_naming_it(tmp_path: Path, monkeypatch) -> None:
    """What fails in the actor outside run_job (reading the result's files back, its own store) reaches the app as
    Ray's RayTaskError: the job fails as an internal error in its Ray worker, with the cause's type and words, and
    the worker goes on to the next job."""
    pytest.importorskip("ray")
    import ray
    from ray.exceptions import RayTaskError

    from engine.jobs import ray_pool
    from engine.jobs.worker import WorkerSpec

    answers = {"missing": [], "poll": {"progress": None, "partial": None, "rss": 2**20}, "closed": None}

    def get(ref: str, timeout: float | None = None) -> Any:
        if ref == "outcome":
            raise RayTaskError("run", "Traceback (most recent call last): ...", PermissionError("outputs/a.mp4"))
        return answers[ref]

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "wait", lambda refs, timeout: (refs, []))
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: None)
    workers = _bare_pool(tmp_path)
    with JobStore(workers.settings.db_path, workers.settings.data_dir / "blobs") as store:
        workers.store = store
        job = store.submit("lipsync", {}, "cuda:0", owner=OWNER)
        workers._slots["cuda:0"] = ray_pool._Slot("cuda:0", "pg-a", 0.5, "cuda:0")
        workers._ready["cuda:0"] = [(_MadeUpActor(), {"node_id": "far-node", "node_ip": "10.0.0.2", "pid": 7})]
        stop = threading.Event()
        handle = workers.launch(WorkerSpec("cuda:0", "", "", {}, poll_s=0.05), threading.Event(), stop)
        failed = _until("the job failed", lambda: (j := store.get(job.id)).status == FAILED and j)
        stop.set()
        handle.join(10)
    assert failed.error == "internal error in its Ray worker: PermissionError: outputs/a.mp4"
    assert not handle.is_alive() and handle.exitcode == 0 and handle.reason is None


def test_a_cluster_without_gpus_or_cpu_workers_still_gets_the_brokers_cpu_worker(tmp_path: Path, monkeypatch) -> None:
    """With no GPU free and no CPU workers asked for, the pool has no devices and the broker falls back to one CPU
    worker: its launch must start a CPU actor (no GPU share, handlers on the CPU), not refuse the only device."""
    pytest.importorskip("ray")
    import ray

    from engine.core.errors import SetupError
    from engine.jobs import ray_pool
    from engine.jobs.worker import WorkerSpec

    started: list[Any] = []
    killed: list[Any] = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append(actor))

    def cannot_answer(actors: list[Any]) -> list[dict[str, Any]]:
        raise SetupError("Ray actors did not start within 120 s (is the cluster busy?)")

    workers = _bare_pool(tmp_path)
    monkeypatch.setattr(workers, "_new_actor", lambda slot: started.append(slot) or SimpleNamespace(slot=slot))
    monkeypatch.setattr(workers, "_describe", cannot_answer)
    assert workers.workers == {}
    handle = workers.launch(WorkerSpec("cpu", "", "", {}), threading.Event(), threading.Event())
    handle.join(10)
    assert started == [ray_pool._Slot("cpu", None, 0, "cpu")]
    assert handle.reason == "Ray actors did not start within 120 s (is the cluster busy?)"
    assert [actor.slot for actor in killed] == started  # the actor that never answered is not left to start later


def test_only_the_inputs_an_actor_lacks_are_shipped_with_a_job(tmp_path: Path, monkeypatch) -> None:
    """A model every job of a sweep uses, once on the node, is not sent again (hundreds of MB a job through Ray's
    object store); the one the actor lacks goes with the job, and the job's result reaches the app's store."""
    pytest.importorskip("ray")
    import ray

    from engine.jobs import ray_pool
    from engine.jobs.worker import WorkerSpec

    put: list[bytes] = []
    monkeypatch.setattr(ray, "put", lambda data: put.append(data) or f"object-{len(put)}")
    monkeypatch.setattr(ray, "wait", lambda refs, timeout: (refs, []))
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: None)
    workers = _bare_pool(tmp_path)
    with JobStore(workers.settings.db_path, workers.settings.data_dir / "blobs") as store:
        workers.store = store
        shas = {}
        for name in ("model", "audio"):
            (tmp_path / name).write_bytes(name.encode() * 100)
            shas[name] = store.put_blob(tmp_path / name)
        answers = {"missing": [shas["audio"]], "poll": {"progress": None, "partial": None, "rss": 2**20},
                   "closed": None, "outcome": {"job": "", "result": {"score": 0.5}, "files": []}}  # fmt: skip
        monkeypatch.setattr(ray, "get", lambda ref, timeout=None: answers[ref])
        job = store.submit("lipsync", {"model": shas["model"], "audio": shas["audio"]}, "cuda:0", owner=OWNER)
        actor = _MadeUpActor()
        workers._slots["cuda:0"] = ray_pool._Slot("cuda:0", "pg-a", 0.5, "cuda:0")
        workers._ready["cuda:0"] = [(actor, {"node_id": "far-node", "node_ip": "10.0.0.2", "pid": 7})]
        stop = threading.Event()
        handle = workers.launch(WorkerSpec("cuda:0", "", "", {}, poll_s=0.05), threading.Event(), stop)
        done = _until("the job done", lambda: (j := store.get(job.id)).status == DONE and j)
        stop.set()
        handle.join(10)
    assert actor.asked == [sorted(shas.values())]
    assert put == [b"audio" * 100] and actor.shipped == [{shas["audio"]: "object-1"}]
    assert done.result["score"] == 0.5
