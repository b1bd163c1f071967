"""Job workers as Ray actors, on any node of a cluster (AVATARBENCH_RAY_ADDRESS): the broker's launcher for Ray.

Nothing here imports ray until `ray_workers` is called, so the app without that setting never loads it.

How it is placed: every GPU of the cluster is reserved by a placement group of one bundle ({"GPU": 1}), and its N
workers are actors inside that bundle with num_gpus=1/N (num_cpus=0, so many fit): Ray sets each actor's
CUDA_VISIBLE_DEVICES to that one card, so handlers run on "cuda:0" (or on "cpu" where the GPUs are only declared,
as in tests), and a replacement for a dead actor goes into the same bundle, hence onto the same card. A device key
names the card: "cuda:K" for GPU K of the app's own node, "NODE_IP/cuda:K" for another node's. The card type of
a key is its node's `accelerator_type:<TYPE>` resource (Ray adds it on NVIDIA nodes; `ray start --resources
'{"accelerator_type:A10G": 1}'` names it where Ray does not): `RayWorkers.devices_with(TYPE)` is where a job
that asks for that card may go. CPU jobs go to actors without GPUs (their CUDA_VISIBLE_DEVICES emptied).

What travels how: the job store stays with the app; actors never open its SQLite file. Each worker is an app-side
driver thread (`RayWorkerHandle`) that claims jobs for its key from the store as a worker process would, puts the
job's stored input files (its blobs) into Ray's object store (only those the actor does not hold yet), and calls
the actor. The actor keeps the blobs in a store of its own (under <its node's AVATARBENCH_DATA_DIR>/ray-worker,
with that node's weights) and runs the job through engine.jobs.worker.run_job unchanged: the handler, the per-job
process flags, the measured window. Progress is polled from the actor and written to the store; the result comes
back with the bytes of every output file it names under the actor's outputs folder, through Ray's object store
(no shared filesystem is assumed), and the driver writes them into the app's outputs folder, rewrites the
result's paths, and finishes or fails the job exactly as run_job would. An actor that dies (ray.kill, a crash,
its node lost) ends its handle with the reason in Ray's words; the broker fails that job and launches another.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import AvatarbenchError, InputError, SetupError, one_line
from engine.core.files import written_whole
from engine.core.settings import PREFIX, RAY_ADDRESS, Settings, ray_reachable
from engine.jobs.store import CPU, FAILED, Job, JobStore, StoreError, blob_refs
from engine.jobs.worker import PROGRESS_INTERVAL_S, WorkerContext, WorkerSpec, run_job

log = logging.getLogger("avatarbench.ray")

ACTOR_FOLDER = "ray-worker"  # under a node's data dir: the actors' outputs, cache and received blobs
CARD_TYPE_PREFIX = "accelerator_type:"  # Ray's resource naming a node's GPU model
RUNNING = "running-job"  # in an actor's folder: the id of the job it runs, for the sweep after it is killed
BLOB_BUDGET_BYTES = 4 * 2**30  # received inputs an actor keeps for later jobs, least recently used dropped first
START_TIMEOUT_S = 120.0  # for an actor to start (a fresh process importing the engine) and for the GPUs' bundles
CALL_TIMEOUT_S = 30.0  # for a progress poll; a busy node only delays it
IDLE_CHECK_S = 2.0  # how often an idle worker asks whether its actor still lives (and how much memory it holds)


# -- the actor (runs on a cluster node) --------------------------------------------------------------------------


class _ActorStore(JobStore):
    """The actor's own store: the blobs shipped with its jobs, and an empty job table of its own. What run_job
    writes about the job (progress, the result so far, the outcome) is kept here for the app's driver to collect."""

    def __init__(self, db_path: Path, blobs_dir: Path) -> None:
        super().__init__(db_path, blobs_dir)
        self.outcome: dict[str, Any] = {}
        self.latest: tuple[str, float, str] | None = None
        self.partial: tuple[str, dict] | None = None
        self._progress_lock = threading.Lock()

    def update_progress(self, job_id: str, fraction: float, label: str) -> None:
        with self._progress_lock:
            self.latest = (job_id, min(1.0, max(0.0, float(fraction))), str(label))

    def save_partial(self, job_id: str, result: dict) -> None:
        if not isinstance(result, dict):
            raise StoreError(f"a job result must be a dict, not {type(result).__name__}")
        with self._progress_lock:
            self.partial = (job_id, result)

    def take_progress(self) -> dict[str, Any]:
        """The latest progress and result so far, each once (None where nothing new)."""
        with self._progress_lock:
            taken = {"progress": self.latest, "partial": self.partial}
            self.latest = self.partial = None
            return taken

    def finish(self, job_id: str, result: dict) -> None:
        if not isinstance(result, dict):
            raise StoreError(f"a job result must be a dict, not {type(result).__name__}")
        json.dumps(result, allow_nan=True)  # as the app's store would: a result that is not JSON fails the job
        self.outcome = {"job": job_id, "result": result}

    def fail(self, job_id: str, error: str, status: str = FAILED) -> bool:
        self.outcome = {"job": job_id, "error": str(error), "status": status}
        return True

    def receive(self, sha: str, data: bytes) -> None:
        """A shipped blob, checked against its name and written atomically where blob_path finds it."""
        if hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"the input {sha[:12]} arrived damaged (its sha256 differs)")
        _write_whole(self.blobs_dir / sha[:2] / sha, data)

    def keep_within(self, budget: int, keep: set[str]) -> None:
        """Drop the least recently used blobs beyond `budget` bytes, never those in `keep`."""
        blobs = sorted((p.stat().st_mtime, p) for p in self.blobs_dir.glob("??/*") if p.is_file())
        total = sum(p.stat().st_size for _, p in blobs)
        for _, path in blobs:
            if total <= budget:
                break
            if path.name not in keep:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)


def _outputs_named(value: Any, outputs_dir: Path) -> Iterator[tuple[str, str]]:
    """(the text as written, its path relative to outputs_dir) for every string in a result naming a file there."""
    if isinstance(value, str):
        path = Path(value)
        if path.is_absolute() and path.is_file():
            with contextlib.suppress(ValueError):
                yield value, path.resolve().relative_to(outputs_dir).as_posix()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _outputs_named(item, outputs_dir)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _outputs_named(item, outputs_dir)


def _actor_folder(pid: int) -> str:
    """An actor's folder: its host and process id. A data dir shared by several nodes (an NFS home) holds the actors
    of all of them; by process id alone, two nodes' actors could share one folder, and one node's sweep took another
    node's living actor for dead."""
    return f"{socket.gethostname()}-{pid}"


def _sweep_dead_actor_folders(parent: Path, outputs_dir: Path) -> None:
    """Folders of this node's actors that died without cleaning up (ray.kill, a cancel, a time limit give no chance
    to), with what the job each was running had written to the shared outputs folder (a half-made video, its live
    stream: hundreds of MB a job). Another host's folders are its own sweep's; a bare process id is an earlier
    version's folder, taken as this node's."""
    host = socket.gethostname()
    for folder in parent.glob("*"):
        owner, _, pid = folder.name.rpartition("-")
        if folder.is_dir() and owner in (host, "") and pid.isdigit() and _gone(int(pid)):
            with contextlib.suppress(OSError):
                _remove_job_outputs(outputs_dir, (folder / RUNNING).read_text().strip())
            shutil.rmtree(folder, ignore_errors=True)


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie not yet reaped by Ray's raylet has too)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:  # NoSuchProcess; AccessDenied would mean it lives
        return not psutil.pid_exists(pid)


def _remove_job_outputs(outputs_dir: Path, job_id: str) -> None:
    """Every file and folder in `outputs_dir` named with the job's id (its video, live stream, partial files)."""
    if not job_id:
        return
    for left in outputs_dir.glob(f"*{glob.escape(job_id)}*"):
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


class RayWorkerActor:
    """One job worker in a Ray actor process. Its settings are its node's AVATARBENCH_* environment (with `env`
    over it), its data dir <node data dir>/ray-worker (weights stay the node's), so its outputs, cache and
    received blobs never mix with an app's files even on the app's own machine."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        import ray

        from engine.core.memory import keep_freed_memory
        from engine.core.openmp import sleep_at_barriers
        from engine.core.settings import get_settings, load_settings

        if not ray.get_gpu_ids():
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker never takes memory on a card Ray did not give it
        node = load_settings({**os.environ, **(env or {})})
        os.environ.update(env or {})
        os.environ[PREFIX + "DATA_DIR"] = str(node.data_dir / ACTOR_FOLDER)
        os.environ[PREFIX + "WEIGHTS_DIR"] = str(node.weights_dir)
        get_settings.cache_clear()  # every module of this process now sees the actor's settings
        self.settings = get_settings()
        self.settings.ensure_dirs()
        keep_freed_memory()
        sleep_at_barriers()
        actors = self.settings.data_dir / "actors"
        actors.mkdir(parents=True, exist_ok=True)
        _sweep_dead_actor_folders(actors, self.settings.outputs_dir)
        self.folder = actors / _actor_folder(os.getpid())
        self.store = _ActorStore(self.folder / "jobs.sqlite3", self.folder / "blobs")
        self.context = WorkerContext(self.store, self.settings, CPU)

    def describe(self, kinds: Mapping[str, str]) -> dict[str, Any]:
        """Where this actor runs, and which kinds' code its node lacks."""
        import ray

        missing = sorted({t.partition(":")[0] for t in kinds.values() if not _importable(t)})
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "data_dir": str(self.settings.data_dir),
            "missing_modules": missing,
        }

    def missing_blobs(self, shas: list[str]) -> list[str]:
        return [sha for sha in shas if not self.store.has_blob(sha)]

    def run(self, job: Job, kinds: dict[str, str], run_on: str, blobs: dict[str, Any]) -> dict[str, Any]:
        """One job, through run_job; returns its outcome with the bytes of the output files its result names."""
        import ray

        try:
            for sha, data in zip(blobs, ray.get(list(blobs.values())), strict=True):
                self.store.receive(sha, data)
        except Exception as exc:  # lost on the way (a node gone, a damaged copy): this job fails, the actor stays
            return {"job": job.id, "error": f"its input files did not arrive: {type(exc).__name__}: {exc}", "files": []}
        needed = set(blob_refs(job.settings)) | set(blob_refs(job.model_sha256))
        for sha in needed:
            with contextlib.suppress(StoreError, OSError):
                os.utime(self.store.blob_path(sha))  # used now: kept longest
        self.context.device = run_on
        self.store.outcome = {}
        _sweep_dead_actor_folders(self.folder.parent, self.settings.outputs_dir)  # one killed since this one started
        running = self.folder / RUNNING  # read by the next actor on this node if this one is killed mid-job
        running.write_text(job.id)
        run_job(job, self.context, kinds)
        outcome, files = self.store.outcome, []
        if "result" in outcome:
            outputs = self.settings.outputs_dir.resolve()
            for text, relative in dict(_outputs_named(outcome["result"], outputs)).items():
                path = outputs / relative
                files.append((text, relative, path.read_bytes()))
                path.unlink()  # the app keeps the copy; nothing piles up on the node
        _remove_job_outputs(self.settings.outputs_dir, job.id)  # its live stream, a failed run's partial video
        running.unlink(missing_ok=True)
        self.store.keep_within(BLOB_BUDGET_BYTES, needed)
        return {**outcome, "files": files}

    def poll(self) -> dict[str, Any]:
        """The latest progress and result so far since the last poll, and this process's resident memory (the
        broker's memory cap)."""
        import psutil

        return {**self.store.take_progress(), "rss": psutil.Process().memory_info().rss}

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _importable(target: str) -> bool:
    """Whether a handler's module ("module:function") is on this node, without running it."""
    import importlib.util

    try:
        return importlib.util.find_spec(target.partition(":")[0]) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _remote_actor() -> Any:
    import ray

    # progress polls have a thread of their own, so they are answered while a job runs in the default one
    return ray.remote(concurrency_groups={"watch": 1}, max_restarts=0)(RayWorkerActor)


# -- the app's side ------------------------------------------------------------------------------------------------


class ActorDied(AvatarbenchError):
    """The actor behind a worker is gone; the text says why, in Ray's words."""


def _ray_words(exc: BaseException) -> str:
    return one_line(exc)[:600]


@dataclass(frozen=True)
class _Slot:
    """Where a device key's actors go: a GPU's bundle (None for the CPU), and what their handlers run on."""

    key: str
    bundle: Any  # the GPU's placement group, or None
    num_gpus: float
    run_on: str


class RayWorkerHandle:
    """A worker as the broker sees it: an app-side thread that claims the key's jobs and runs them on one actor.
    Alive while that thread runs; it ends on `stop` (after the job in hand) or when the actor dies (`reason`).
    Given no started actor, the thread starts one first (`ready` once it answers): the broker's watch, which
    launches replacements, never waits the minutes a new actor may take (its node gone, the cluster busy)."""

    def __init__(
        self, pool: RayWorkers, slot: _Slot, started: tuple[Any, dict[str, Any]] | None, spec: WorkerSpec,
        wake: Any, stop: Any,
    ) -> None:  # fmt: skip
        self.actor, self.about = started or (None, None)
        self.spec, self.device = spec, spec.device
        self.pid: int | None = pool.remote_id()
        self.ready = False
        self.exitcode: int | None = None
        self.reason: str | None = None
        self._pool, self._slot, self._wake, self._stop = pool, slot, wake, stop
        self._rss: int | None = None
        if self.about is not None:
            self._became_ready()
        self._thread = threading.Thread(target=self._drive, name=f"avatarbench-ray-{spec.device}", daemon=True)
        self._thread.start()

    # -- what the broker calls ---------------------------------------------------------------------------------

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        import ray

        if self.actor is not None:
            with contextlib.suppress(Exception):  # already gone is fine
                ray.kill(self.actor, no_restart=True)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def rss(self) -> int | None:
        return self._rss

    # -- the driver thread -------------------------------------------------------------------------------------

    def _became_ready(self) -> None:
        if self._pool.is_local(self.about):  # its process id then means something here (telemetry, memory)
            self.pid = self.about["pid"]
        self.ready = True

    def _start(self) -> None:
        """A new actor in the key's slot (its GPU's bundle), answering; a failed start ends the handle unready."""
        self.actor = self._pool._new_actor(self._slot)
        self.about = self._pool._describe([self.actor])[0]
        self._became_ready()

    def _drive(self) -> None:
        store, spec = self._pool.store, self.spec
        checked = 0.0
        try:
            if self.actor is None:
                self._start()
            while not self._stop.is_set():
                self._wake.clear()  # before claiming, as serve does: a wake-up during the claim is still seen
                job = store.claim_next(spec.device, self.pid, spec.max_running)
                if job is None:
                    if time.monotonic() - checked >= IDLE_CHECK_S:
                        checked = time.monotonic()
                        self._poll()  # an idle actor that died is noticed too
                    self._wake.wait(spec.poll_s)
                    continue
                self._run(job)
            self._close()
            self.exitcode = 0
        except SetupError as exc:  # the actor did not start; the broker tries again
            self.reason, self.exitcode = str(exc), 1
            log.warning("a Ray worker for %s did not start: %s", spec.device, exc)
            self.kill()
        except ActorDied as exc:
            self.reason, self.exitcode = str(exc), 1
            log.warning("worker %s for %s: %s", self.pid, spec.device, exc)
            self.kill()  # one that could not be reached may still run
        except Exception as exc:  # the store or Ray failed under us: end like a crashed worker, with the reason
            log.exception("the driver of worker %s for %s failed", self.pid, spec.device)
            self.reason, self.exitcode = f"its Ray worker's driver failed: {type(exc).__name__}: {exc}", 1
            self.kill()
        finally:
            self._pool.forget(self)

    def _call(self, ref: Any, timeout: float | None = None, unreachable_ok: bool = False) -> Any:
        """ray.get, an actor gone as ActorDied. One that could not be reached (its node's network) is gone too
        unless `unreachable_ok`: the call was lost with what it carried (a job's run), whether or not it lives."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            return ray.get(ref, timeout=timeout)
        except ActorUnavailableError as exc:
            if unreachable_ok:
                raise
            raise ActorDied(f"its Ray actor could not be reached: {_ray_words(exc)}") from None
        except RayActorError as exc:
            raise ActorDied(f"its Ray actor died: {_ray_words(exc)}") from None

    def _poll(self, job: Job | None = None) -> None:
        from ray.exceptions import ActorUnavailableError, GetTimeoutError

        poll = self.actor.poll.options(concurrency_group="watch").remote()
        try:
            answer = self._call(poll, CALL_TIMEOUT_S, unreachable_ok=True)
        except (GetTimeoutError, ActorUnavailableError):
            return  # busy or briefly unreachable; asked again next time
        self._rss = answer["rss"]
        if job is not None and answer["progress"] and answer["progress"][0] == job.id:
            self._pool.store.update_progress(job.id, *answer["progress"][1:])
        if job is not None and answer["partial"] and answer["partial"][0] == job.id:  # kept if the job stops
            self._pool.store.save_partial(job.id, answer["partial"][1])

    def _run(self, job: Job) -> None:
        import ray
        from ray.exceptions import RayTaskError

        store = self._pool.store
        named = sorted({*blob_refs(job.settings), *blob_refs(job.model_sha256)})
        present = [sha for sha in named if store.has_blob(sha)]
        missing = self._call(self.actor.missing_blobs.remote(present))
        shipped = {sha: ray.put(store.blob_path(sha).read_bytes()) for sha in missing}
        ref = self.actor.run.remote(job, self.spec.kinds, self.spec.run_on or self.spec.device, shipped)
        del shipped  # the call holds them now
        while True:
            done, _ = ray.wait([ref], timeout=PROGRESS_INTERVAL_S)
            self._poll(job)
            if done:
                break
        try:
            outcome = self._call(ref)
        except RayTaskError as exc:  # a bug around the handler (run_job catches the handler's own errors)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            store.fail(job.id, f"internal error in its Ray worker: {type(cause).__name__}: {cause}")
            return
        if "error" in outcome:
            store.fail(job.id, outcome["error"], outcome.get("status", FAILED))
            return
        try:
            store.finish(job.id, self._pool.bring_outputs(outcome["result"], outcome["files"]))
        except AvatarbenchError as exc:
            store.fail(job.id, str(exc))
        except Exception as exc:
            log.exception("job %s (%s): its outputs could not be kept", job.id, job.kind)
            store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}")

    def _close(self) -> None:
        """A clean stop: the actor removes its folder, then goes (its share of the card is free again)."""
        with contextlib.suppress(Exception):
            self._call(self.actor.close.remote(), CALL_TIMEOUT_S)
        self.kill()


class RayWorkers:
    """The broker's workers as Ray actors: `workers` (device key -> count), `run_on` (key -> the device handlers
    use), `card_types` (GPU key -> its card type, where the node names one), `launch` (the broker's launcher) and
    `shutdown()`. Made by `ray_workers`."""

    def __init__(self, settings: Settings, store: JobStore, kinds: Mapping[str, str], actor_env: Mapping[str, str],
                 connected_here: bool, local_node: str | None) -> None:  # fmt: skip
        self.settings, self.store, self.kinds = settings, store, dict(kinds)
        self.actor_env = dict(actor_env)
        self.workers: dict[str, int] = {}
        self.run_on: dict[str, str] = {}
        self.card_types: dict[str, str] = {}
        self._slots: dict[str, _Slot] = {}
        self._ready: dict[str, list[tuple[Any, dict[str, Any]]]] = {}  # started actors not yet handed out
        self._handles: list[RayWorkerHandle] = []
        self._bundles: list[Any] = []
        self._lock = threading.Lock()
        self._remote_ids = itertools.count(-1, -1)
        self._ids_lock = threading.Lock()  # not _lock: launch makes handles, which take an id, under _lock
        self._connected_here, self._local_node = connected_here, local_node
        self._closed = False

    # -- starting actors ---------------------------------------------------------------------------------------

    def start(self, per_gpu: int, cpu_workers: int, gpus_run_on_cpu: bool) -> None:
        """Reserve the GPUs, start every actor, and name each key by the card its actors landed on."""
        self._bundles = _reserve_gpus()
        gpu_run_on = CPU if gpus_run_on_cpu else "cuda:0"  # the actor sees only its own card
        pending = [(_Slot("", b, 1.0 / per_gpu, gpu_run_on), per_gpu) for b in self._bundles]
        if cpu_workers:
            pending.append((_Slot(CPU, None, 0, CPU), cpu_workers))
        actors = [(slot, self._new_actor(slot)) for slot, count in pending for _ in range(count)]
        about = self._describe([a for _, a in actors])
        cards = _card_types()
        one_per_ip = len({a["node_ip"] for a in about}) == len({a["node_id"] for a in about})
        placed: dict[tuple, list[tuple[_Slot, Any, dict[str, Any]]]] = {}
        for (slot, actor), info in zip(actors, about, strict=True):
            index = info["gpu_ids"][0] if slot.bundle is not None else ""
            order = (int(index), "") if index.isdigit() else (-1, index)  # Ray gives numbers, or UUIDs if told to
            where = (0, info["node_ip"], info["node_id"], *order) if slot.bundle is not None else (1, "", "", 0, "")
            placed.setdefault(where, []).append((slot, actor, info))
        for where in sorted(placed):  # GPUs by node and index, then the CPU: the broker's order of preference
            slot, _, info = placed[where][0]
            key = CPU
            if slot.bundle is not None:
                node = info["node_ip"] if one_per_ip else info["node_id"][:8]
                gpu = info["gpu_ids"][0]
                key = f"cuda:{gpu}" if self.is_local(info) else f"{node}/cuda:{gpu}"
                if info["node_id"] in cards:
                    self.card_types[key] = cards[info["node_id"]]
            self._slots[key] = _Slot(key, slot.bundle, slot.num_gpus, slot.run_on)
            self._ready[key] = [(actor, info) for _, actor, info in placed[where]]
        self.workers = {key: len(ready) for key, ready in self._ready.items()}
        self.run_on = {key: slot.run_on for key, slot in self._slots.items()}
        log.info("Ray workers: %s", ", ".join(f"{k} x{n}" for k, n in self.workers.items()) or "none")

    def _new_actor(self, slot: _Slot) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

        options: dict[str, Any] = {"num_cpus": 0, "num_gpus": slot.num_gpus}
        if slot.bundle is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(slot.bundle, 0)
        elif self._local_node is not None:  # CPU jobs measure this machine's CPU where it is a node
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._local_node, soft=True)
        return _remote_actor().options(**options).remote(self.actor_env)

    def _describe(self, actors: list[Any]) -> list[dict[str, Any]]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            about = ray.get([a.describe.remote(self.kinds) for a in actors], timeout=START_TIMEOUT_S)
        except GetTimeoutError:
            raise SetupError(f"Ray actors did not start within {START_TIMEOUT_S:g} s (is the cluster busy?)") from None
        except RayActorError as exc:
            raise SetupError(f"a Ray worker could not start (is avatarbench installed on every node?): "
                             f"{_ray_words(exc)}") from None  # fmt: skip
        lacking = {(a["node_ip"], m) for a in about for m in a["missing_modules"]}
        if lacking:
            raise SetupError("the job kinds' code is not importable on Ray nodes (install avatarbench there): "
                             + ", ".join(f"{m} on {ip}" for ip, m in sorted(lacking)))  # fmt: skip
        return about

    def launch(self, spec: WorkerSpec, wake: Any, stop: Any) -> RayWorkerHandle:
        """The broker's launcher: a handle for `spec.device` driving a started actor, else one that starts a new
        actor in the same GPU bundle on its own thread."""
        with self._lock:
            if self._closed:  # the broker is to be stopped before shutdown(); a late replacement starts nothing
                raise SetupError("the Ray workers were shut down")
            slot = self._slots.get(spec.device)
            if slot is None and spec.device == CPU:
                slot = self._slots[CPU] = _Slot(CPU, None, 0, CPU)
            if slot is None:
                raise InputError(f"no Ray workers for {spec.device}; devices: {', '.join(self._slots)}")
            ready = self._ready.get(spec.device)
            handle = RayWorkerHandle(self, slot, ready.pop(0) if ready else None, spec, wake, stop)
            self._handles.append(handle)  # before its thread can end and forget it
        return handle

    # -- what handles use --------------------------------------------------------------------------------------

    def is_local(self, about: dict[str, Any]) -> bool:
        """Whether an actor runs on the app's own node (its process id then means something here)."""
        return self._local_node is not None and about["node_id"] == self._local_node

    def remote_id(self) -> int:
        """A worker id for an actor on another node: negative, so it is never mistaken for a local process."""
        with self._ids_lock:
            return next(self._remote_ids)

    def forget(self, handle: RayWorkerHandle) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._handles.remove(handle)

    def bring_outputs(self, result: dict[str, Any], files: list[tuple[str, str, bytes]]) -> dict[str, Any]:
        """Write the output files that came with a result into the app's outputs folder; the result with its paths
        pointing there."""
        outputs = self.settings.outputs_dir
        moved = {}
        for text, relative, data in files:
            parts = Path(relative).parts
            if not parts or Path(relative).is_absolute() or ".." in parts:
                raise StoreError(f"an output path from a Ray worker is not inside its outputs folder: {relative!r}")
            dest = outputs.joinpath(*parts)
            _write_whole(dest, data)
            moved[text] = str(dest)
        return _rewrite(result, moved)

    # -- for the app ---------------------------------------------------------------------------------------------

    def devices_with(self, card_type: str) -> list[str]:
        """The GPU keys whose card is of this type (Ray's accelerator_type names, e.g. "A10G", "H100")."""
        return [key for key, kind in self.card_types.items() if kind == card_type]

    def handles(self) -> list[RayWorkerHandle]:
        with self._lock:
            return list(self._handles)

    def shutdown(self) -> None:
        """Stop every actor and free the GPUs' bundles (call after the broker's stop); disconnect from Ray if
        `ray_workers` connected. Calling it again does nothing."""
        import ray
        from ray.util import remove_placement_group

        with self._lock:
            if self._closed:
                return
            self._closed = True
            actors = [h.actor for h in self._handles] + [a for ready in self._ready.values() for a, _ in ready]
            self._ready.clear()
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for bundle in self._bundles:
            with contextlib.suppress(Exception):
                remove_placement_group(bundle)
        if self._connected_here:
            ray.shutdown()


def _rewrite(value: Any, moved: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return moved.get(value, value)
    if isinstance(value, dict):
        return {k: _rewrite(v, moved) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rewrite(v, moved) for v in value]
    return value


def _write_whole(dest: Path, data: bytes) -> None:
    """`data` at `dest`, whole or not at all, with the permissions a file made here gets (the outputs a Ray worker
    made could not be read by the users a local worker's could)."""
    with written_whole(dest) as tmp:
        tmp.write_bytes(data)


def _connect(address: str | None, init_kwargs: Mapping[str, Any]) -> bool:
    """Connect to the cluster unless this process already is; whether it connected now."""
    if address is not None and not RAY_ADDRESS.fullmatch(address):
        raise InputError(f"{PREFIX}RAY_ADDRESS={address!r} is not a Ray address; expected auto, HOST:PORT or "
                         "ray://HOST:10001")  # fmt: skip
    try:
        import ray
    except ImportError:
        raise SetupError("Ray workers need ray: pip install 'avatarbench[ray]'") from None
    if ray.is_initialized():
        return False
    if address is None:
        raise SetupError(f"no Ray cluster to use: set {PREFIX}RAY_ADDRESS (auto, or ray://HOST:10001)")
    ray_reachable(address)
    try:
        ray.init(address=address, ignore_reinit_error=True, **init_kwargs)
    except ConnectionError as exc:
        raise SetupError(f"could not reach the Ray cluster at {address} (is `ray start --head` running?): "
                         f"{_ray_words(exc)}") from None  # fmt: skip
    except ValueError as exc:  # e.g. a ray:// address without Ray Client installed
        raise SetupError(f"cannot use the Ray cluster at {address}: {_ray_words(exc)}") from None
    return True


def _local_node_id() -> str | None:
    """The app's own node, when it is one of the cluster's (not through Ray Client, whose driver is elsewhere)."""
    import ray
    import ray.util.client

    if ray.util.client.ray.is_connected():
        return None
    return ray.get_runtime_context().get_node_id()


def _card_types() -> dict[str, str]:
    """node id -> its card type, from the node's accelerator_type:<TYPE> resource."""
    import ray

    types = {}
    for node in ray.nodes():
        names = sorted(
            r.removeprefix(CARD_TYPE_PREFIX) for r in node.get("Resources", {}) if r.startswith(CARD_TYPE_PREFIX)
        )
        if node.get("Alive") and names:
            types[node["NodeID"]] = names[0]
    return types


def _reserve_gpus() -> list[Any]:
    """A placement group of one whole GPU for each GPU of the cluster free now (others' work keeps theirs)."""
    import ray
    from ray.util import placement_group, remove_placement_group

    total = int(ray.available_resources().get("GPU", 0))
    if not total and ray.cluster_resources().get("GPU", 0):  # another app (or job) holds them: nothing said before
        log.warning("Ray: every GPU of the cluster is taken (another app on it?): this app's jobs run on the CPU")
    bundles = {b.ready(): b for b in (placement_group([{"GPU": 1}]) for _ in range(total))}
    ready, waiting = ray.wait(list(bundles), num_returns=total, timeout=START_TIMEOUT_S) if total else ([], [])
    for ref in waiting:
        remove_placement_group(bundles[ref])
    if waiting:
        log.warning("Ray: only %d of the %d free GPUs could be reserved; using those", len(ready), total)
    return [bundles[ref] for ref in ready]


def ray_workers(
    settings: Settings,
    store: JobStore,
    kinds: Mapping[str, str],
    workers_per_gpu: int,
    cpu_workers: int,
    address: str | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    actor_env: Mapping[str, str] | None = None,
    gpus_run_on_cpu: bool = False,
) -> RayWorkers:
    """Start the app's workers as Ray actors: `workers_per_gpu` on every GPU of the cluster free now (each with 1/N
    of it) and `cpu_workers` without a GPU. Connects to `address` (else settings.ray_address) unless Ray is already
    initialised in this process. `actor_env`: AVATARBENCH_* values for the actors over their nodes' own;
    `gpus_run_on_cpu`: the GPUs are only declared (`ray.init(num_gpus=4)` without cards), handlers use the CPU."""
    if not 1 <= int(workers_per_gpu) <= 64:
        raise InputError(f"workers per GPU must be 1..64, not {workers_per_gpu}")
    if not 0 <= int(cpu_workers) <= 64:
        raise InputError(f"CPU workers must be 0..64, not {cpu_workers}")
    connected_here = _connect(address or settings.ray_address, init_kwargs or {})
    pool = RayWorkers(settings, store, kinds, actor_env or {}, connected_here, _local_node_id())
    try:
        pool.start(int(workers_per_gpu), int(cpu_workers), gpus_run_on_cpu)
    except BaseException:
        pool.shutdown()
        raise
    return pool


__all__ = ["RayWorkerActor", "RayWorkerHandle", "RayWorkers", "ray_workers"]
