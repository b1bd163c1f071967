"""ZeroGPU on Hugging Face Spaces: the jobs queued for "cuda:0" run inside a `@spaces.GPU` function, one call each.

On a ZeroGPU Space (SPACES_ZERO_GPU 1, t or true, as `spaces` reads it) the app's process sees no GPU: a card is
attached only while a function decorated with `@spaces.GPU(duration=...)` runs, in a process ZeroGPU forks from the
app's for that call, with the arguments and the return value pickled across. So the broker's "cuda:0" worker is a thread
in the app here (a ZeroGpuSlot, made by ZeroGpuLauncher; other keys keep their spawned processes). It claims jobs from
the store as a worker process does and hands each one to `run_in_gpu` as plain data (the job, the store's paths, the
settings). Inside the GPU function the job runs as engine/jobs/worker.py runs one (the handler, the job's process
switches, the measured window), with its own store connection (progress is written from there), its own ONNX Runtime
sessions and NVML readings; the result leaves only once it is plain data, so a CUDA tensor fails its job with where it
was. The thread then stores the result or the failure.
A job cancelled or stopped at its time limit meanwhile ends its GPU process, which watches the job's status in the
store, so ZeroGPU takes the card back and stops counting the call's time.

Each call asks for the GPU time the job's length needs: its seconds of speech or of driving video, its result rows
or sweep configurations, times the seconds a unit took in this kind's finished jobs here (a default until one has
finished), with headroom, capped by AVATARBENCH_ZEROGPU_MAX_SECONDS. A shorter ask gets a card sooner, and a call
that runs past its ask is stopped. ZeroGPU does not support torch.compile: a job's compile option is turned off,
and a sweep's torch.compile configurations are left out, with a warning in the result.

The calls come from a thread, outside any Gradio request: the submitting request's X-IP-Token, kept in memory per
owner (VISITOR_TOKENS, filled by ui/zerogpu.py), is set where `spaces` looks for it (the launcher's `visitor`
context), so each call counts against its visitor's quota; a job with none counts against the Space's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import AvatarbenchError, InputError, SetupError
from engine.core.settings import PREFIX, ZEROGPU_CEILING_S, Settings, get_settings, is_zerogpu_space
from engine.jobs.broker import Launcher, WorkerHandle, spawn_process
from engine.jobs.store import DONE, QUEUED, RUNNING, Job, JobStore
from engine.jobs.worker import WorkerContext, WorkerSpec, execute
from engine.system.doctor_gpu import spaces_gpu_problem

log = logging.getLogger("avatarbench.zerogpu")

MAX_SECONDS_SETTING = PREFIX + "ZEROGPU_MAX_SECONDS"
ZEROGPU_DEFAULT_S = 60  # what @spaces.GPU asks for when told nothing: used for kinds with no rate here
HEADROOM_S = 10.0  # the fork, imports and model loading, which no job's length accounts for
MARGIN = 1.5  # on a measured rate: the next job may meet a colder disk cache or a busier card
STOPPED_EXIT = 75  # a GPU process's exit status when it ended because its job was stopped
ABORT_FACTOR = 2.0  # after ZeroGPU aborted a call: the rate becomes at least this times its ask per unit
KEPT_RATES = 8  # per kind: the slowest of the latest ones is the rate (a warm, fast run must not starve a cold one)
FPS = 25.0  # frames of an image or a template that states no rate
# Seconds of GPU function per unit of length before a kind's first job here has finished (cold: models load).
DEFAULT_RATES = {"lipsync": 3.0, "portrait": 3.0, "onnx_eval": 8.0, "bench": 15.0}
PANEL_NOTE = (
    "ZeroGPU: the GPU is attached only while a job runs inside its @spaces.GPU function, so the live view shows no "
    "GPU between jobs; the readings below are each job's own, taken inside its GPU function."
)
_ids = itertools.count(-1, -1)  # ZeroGPU workers' ids: negative, so never a process id


def on_zerogpu() -> bool:
    """Whether GPU jobs should run through @spaces.GPU: a ZeroGPU Space whose `spaces` package offers it."""
    return is_zerogpu_space() and spaces_gpu_problem() is None


# ------------------------------------------------------------------------------------------ a job's GPU time


@dataclass(frozen=True)
class Length:
    """How long a job is, in the unit its GPU time grows with; `units` None when it cannot be told beforehand."""

    units: float | None
    unit: str


@dataclass(frozen=True)
class Estimate:
    seconds: int  # what the call asks for: at most the cap
    basis: str  # how it was reached, in words (kept in the result)
    needed_s: int = 0  # the job's length x its rate, no margin: below this a call is sure to be stopped (0: unknown)
    needed_basis: str = ""

    @property
    def over_cap(self) -> bool:
        """A call asking for less than the job needs would be stopped at its ask, its GPU time spent for nothing."""
        return self.needed_s > self.seconds


def media_seconds(path: Path, name: str, max_frames: int | None = None) -> float | None:
    """Seconds of a stored input (named `name`: blobs have no extension), read from its header; an image is one
    frame, a motion template (.npz) its frames at its rate. None when the header states no length, and for upstream
    LivePortrait's pickled templates (.pkl), which only the portrait room's guarded reader opens."""
    from engine.core.media import is_image

    suffix = Path(name).suffix.lower()
    if suffix == ".pkl":
        return None
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            fps = float(data["fps"]) if "fps" in data.files else FPS
            frames = float(max((data[k].shape[0] for k in data.files if data[k].ndim), default=1))
    elif is_image(name):
        fps, frames = FPS, 1.0
    else:
        import av

        with av.open(str(path)) as container:
            streams = [*container.streams.video, *container.streams.audio]
            stream = streams[0] if streams else None
            seconds = container.duration / av.time_base if container.duration else None
            if seconds is None and stream is not None and stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            rate = getattr(stream, "average_rate", None) if stream is not None and stream.type == "video" else None
            fps = float(rate) if rate else FPS
        if seconds is None:
            return None
        frames = seconds * fps
    if max_frames:
        frames = min(frames, float(max_frames))
    return frames / fps


def _words(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [w for w in str(value).replace(",", " ").split() if w]


def job_length(job: Job, store: JobStore) -> Length:
    """The length of a job of the kinds app.py registers (by their names: the kinds' rooms are above this one)."""
    settings = job.settings
    options = settings.get("options") or {}
    files = settings.get("files") or {}

    def stored_seconds(name: str, max_frames: int | None = None) -> float | None:
        ref = files[name]
        return media_seconds(store.blob_path(ref["sha256"]), ref["name"], max_frames)

    units: Callable[[], float | None]
    if job.kind == "lipsync":
        unit, units = "seconds of speech", lambda: stored_seconds("audio")
    elif job.kind == "portrait":
        frames = options.get("max_frames")
        unit, units = "seconds of driving motion", lambda: stored_seconds("driving", int(frames) if frames else None)
    elif job.kind == "onnx_eval":
        rows = len(_words(options.get("providers") or "cpu")) * len(_words(options.get("batch_sizes") or "1"))
        unit, units = "result rows (providers x batch sizes)", lambda: float(rows)
    elif job.kind == "bench":
        unit, units = "sweep configurations", lambda: float(len(settings["sweep"]["points"]))
    else:
        return Length(1.0, "jobs")
    try:
        return Length(units(), unit)
    except Exception as exc:  # an unreadable header: the job itself says what is wrong with the file
        log.info("job %s: its length is not known before it runs (%s: %s)", job.id, type(exc).__name__, exc)
        return Length(None, unit)


def cost_key(job: Job) -> str:
    """What a rate is kept for: the kind, and the engine where the job names one (MuseTalk is not Wav2Lip)."""
    engine = (job.settings.get("options") or {}).get("engine")
    return f"{job.kind}/{engine}" if engine else job.kind


class DurationBook:
    """Seconds of GPU function per unit of length, per cost key, from the jobs that finished here (in memory: a
    restarted app starts from the defaults again). A job's rate is its whole time over its length, the fixed costs
    (fork, imports, model loading) included, so after short jobs a long one asks for more than it needs: erring long
    is the safe side, since a call that runs past its ask is stopped and its work lost."""

    def __init__(self, max_s: int, defaults: Mapping[str, float] | None = None) -> None:
        self.max_s = max_s
        self.defaults = dict(DEFAULT_RATES if defaults is None else defaults)
        self._rates: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def rate(self, key: str) -> float | None:
        """The measured rate: the slowest of the latest finished jobs'; None before the first."""
        with self._lock:
            seen = self._rates.get(key)
            return max(seen) if seen else None

    def observe(self, key: str, length: Length, seconds: float) -> None:
        if length.units:
            with self._lock:
                self._rates.setdefault(key, deque(maxlen=KEPT_RATES)).append(seconds / length.units)

    def observe_abort(self, key: str, length: Length, asked_s: float) -> None:
        """A call ZeroGPU aborted taught no rate (it returned nothing), yet its ask was too small: the next job of
        this key asks for at least twice that rate."""
        self.observe(key, length, ABORT_FACTOR * asked_s)

    def estimate(self, key: str, length: Length) -> Estimate:
        cap = f"{MAX_SECONDS_SETTING}={self.max_s}"
        if length.units is None:
            return Estimate(self.max_s, f"the most a job asks for ({cap}): its length is not known before it runs")
        measured = self.rate(key)
        kind = key.partition("/")[0]
        if measured is not None:
            rate, margin, said = measured, MARGIN, f"{measured:.3g} s per unit measured here"
            basis = f"{said}, x{MARGIN:g}"
        elif kind in self.defaults:
            rate, margin, said = self.defaults[kind], 1.0, f"the default {self.defaults[kind]:g} s per unit"
            basis = f"{said} (none finished yet)"
        else:
            return Estimate(min(self.max_s, ZEROGPU_DEFAULT_S), "ZeroGPU's default: no rate for this kind")
        needed = math.ceil(rate * length.units)
        wanted = max(1, math.ceil(HEADROOM_S + margin * rate * length.units))
        basis = f"{HEADROOM_S:g} s + a length of {length.units:.3g} ({length.unit}) x {basis}"
        if wanted > self.max_s:
            basis += f"; capped by {cap}"
        return Estimate(min(self.max_s, wanted), basis, needed, f"{length.units:.3g} {length.unit} x {said}")


def too_long(estimate: Estimate, length: Length, max_s: int) -> str:
    """Why a job that needs more GPU time than one call may ask for is refused, and what to do instead."""
    return (
        f"this job needs about {estimate.needed_s} s of GPU time ({estimate.needed_basis}), more than the {max_s} s "
        f"one ZeroGPU call may ask for here ({MAX_SECONDS_SETTING}): ZeroGPU would stop it at {max_s} s with its work "
        f"lost. Send a shorter input (fewer {length.unit}), or raise {MAX_SECONDS_SETTING} (at most "
        f"{ZEROGPU_CEILING_S}, ZeroGPU's own per-call maximum)"
    )


def without_compile(job: Job) -> tuple[Job, list[str]]:
    """The job with torch.compile turned off (ZeroGPU does not support it), and the warnings that say so."""
    settings = job.settings
    options = settings.get("options")
    if isinstance(options, dict) and options.get("compile") not in (None, False, "", "false", "off", "0", "no"):
        settings = {**settings, "options": {**options, "compile": False}}
        return dataclasses.replace(job, settings=settings), [
            "torch.compile was turned off: ZeroGPU does not support it, so this job ran without it"
        ]
    sweep = settings.get("sweep")
    points = sweep.get("points") if isinstance(sweep, dict) else None
    if not isinstance(points, list) or not any(isinstance(p, dict) and p.get("runtime") == "compile" for p in points):
        return job, []
    kept = [i for i, p in enumerate(points) if not (isinstance(p, dict) and p.get("runtime") == "compile")]
    if not kept:
        raise InputError(
            "every configuration of this sweep uses torch.compile, which ZeroGPU does not support: choose eager, "
            "CUDA graphs or an ONNX Runtime runtime"
        )
    baseline = sweep.get("baseline", 0)
    sweep = {**sweep, "points": [points[i] for i in kept], "baseline": kept.index(baseline) if baseline in kept else 0}
    dropped = len(points) - len(kept)
    warning = f"{dropped} torch.compile configuration(s) left out of this sweep: ZeroGPU does not support torch.compile"
    return dataclasses.replace(job, settings={**settings, "sweep": sweep}), [warning]


# ------------------------------------------------------------------------------------- inside the GPU function


def not_plain(value: Any, where: str = "result", depth: int = 0) -> str | None:
    """Where `value` holds something other than plain data (what crosses ZeroGPU's pickle boundary and the store's
    JSON unchanged: None, bools, numbers, text, lists and dicts of them), in words; None when it is all plain."""
    if value is None or isinstance(value, bool | int | float | str):
        return None
    if depth > 64:
        return f"{where} nests deeper than 64 levels"
    if isinstance(value, dict):
        for key, item in value.items():
            if key is not None and not isinstance(key, str | int | float | bool):
                return f"{where} has a key that is a {type(key).__module__}.{type(key).__qualname__}"
            if problem := not_plain(item, f"{where}[{key!r}]", depth + 1):
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if problem := not_plain(item, f"{where}[{i}]", depth + 1):
                return problem
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return f"{where} is a torch.Tensor on {'the GPU' if value.is_cuda else value.device}"
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


@dataclass(frozen=True)
class GpuCall:
    """What crosses into the GPU function: plain data only (ZeroGPU pickles it into the process it forks)."""

    job: Job
    kinds: dict[str, str]
    db_path: str
    blobs_dir: str
    run_on: str  # the device the handler uses ("cuda:0"; "cpu" in tests)
    settings: Settings
    duration_s: int
    app_pid: int = 0  # the app's process: the stop watch never ends that one (a call run in place, off ZeroGPU)


def asked_duration(call: GpuCall) -> int:
    """@spaces.GPU's duration: a callable given the function's own arguments, so one decorated function serves every
    job (ZeroGPU keeps the function it decorated once)."""
    return call.duration_s


def _fresh_nvml() -> Any:
    """An NVML source as this process finds the card: ZeroGPU attached it after the fork, and what NVML had set up
    in the app's process (which saw none) must not hide it."""
    from engine.system.gpu_memory import nvml_source

    nvml = sys.modules.get("pynvml")
    for _ in range(64 if nvml is not None else 0):  # one shutdown per initialisation the app's process made
        try:
            nvml.nvmlShutdown()
        except Exception:  # no initialisation left
            break
    return nvml_source()


STOP_CHECK_S = 0.5  # how often the GPU process asks the store whether its job still runs


def end_when_stopped(call: GpuCall, every_s: float = STOP_CHECK_S) -> threading.Event:
    """In the GPU process: a thread that ends the process once its job no longer runs in the store (cancelled, past
    its time limit, failed by the app's shutdown). The app abandons such a call, but ZeroGPU would keep the card and
    count the visitor's quota until the work ended; a process that ends hands both back at once. Set the returned
    event when the job is over."""
    over = threading.Event()
    if call.app_pid == os.getpid():  # not a forked GPU process: ending it would end the app
        return over

    def watch() -> None:
        store = JobStore(call.db_path, call.blobs_dir)  # its own connection: the job's is used by the job's thread
        try:
            while not over.wait(every_s):
                status = store.get(call.job.id).status
                if status != RUNNING and not over.is_set():
                    log.warning("job %s is %s: its GPU process ends, handing the card back", call.job.id, status)
                    os._exit(STOPPED_EXIT)
        except Exception:  # the store unreadable: the call's own duration still bounds it
            log.exception("job %s: the stop watch in its GPU process failed", call.job.id)
        finally:
            store.close()

    threading.Thread(target=watch, name=f"avatarbench-stopwatch-{call.job.id}", daemon=True).start()
    return over


def run_in_gpu(call: GpuCall) -> dict[str, Any]:
    """One job inside the GPU function, as engine.jobs.worker.run_job runs one in a worker process (the handler on
    its device, the job's process switches, the measured window): {"result": ...} or {"error": why}, as plain data,
    with "ran_s", the seconds it took in here."""
    from engine.system.gpu_memory import nvml_device

    start = time.perf_counter()
    job, store = call.job, JobStore(call.db_path, call.blobs_dir)
    over = end_when_stopped(call)
    outcome: dict[str, Any]
    try:
        context = WorkerContext(store, call.settings, call.run_on)
        gpu = nvml_device(_fresh_nvml(), int(call.run_on.partition(":")[2] or 0)) if call.run_on != "cpu" else None
        result = execute(job, context, call.kinds, nvml_device=gpu)
        problem = not_plain(result)
        if problem is None:
            outcome = {"result": result}
        else:
            outcome = {
                "error": f"the job's result cannot leave the ZeroGPU function: {problem}; a result must be plain "
                "data (numbers, text, lists, dicts), never tensors or other live objects"
            }
    except AvatarbenchError as exc:
        outcome = {"error": str(exc)}
    except Exception as exc:
        log.exception("job %s (%s) failed in its GPU function", job.id, job.kind)
        outcome = {"error": f"internal error: {type(exc).__name__}: {exc}"}
    finally:
        over.set()
        store.close()
    return {**outcome, "ran_s": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------ the app's side


class ZeroGpuSlot:
    """The broker's worker for a "cuda:N" key on ZeroGPU (a WorkerHandle): a thread in the app claiming that key's
    jobs and running each in a GPU function call. Killing it abandons the call in flight (ZeroGPU's process cannot
    be reached from here): the broker settles that job, a late result is dropped, and the GPU process, which watches
    its job in the store (end_when_stopped), ends within a second and hands the card back."""

    def __init__(self, spec: WorkerSpec, wake: Any, stop: Any, launcher: ZeroGpuLauncher) -> None:
        self.spec, self.wake, self.stop, self.launcher = spec, wake, stop, launcher
        self.pid: int | None = next(_ids)
        self.exitcode: int | None = None
        self.reason: str | None = None
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"avatarbench-zerogpu{self.pid}", daemon=True)

    def start(self) -> ZeroGpuSlot:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._killed.is_set()

    def kill(self) -> None:
        if not self._killed.is_set():
            self.reason = self.reason or "its ZeroGPU worker was stopped while the job ran"
            self.exitcode = -9
            self._killed.set()
            self.wake.set()

    def join(self, timeout: float | None = None) -> None:
        if not self._killed.is_set():  # a killed slot's thread may still wait on an abandoned call
            self._thread.join(timeout)

    def rss(self) -> int | None:
        """No figure: the job runs in ZeroGPU's process, whose memory ZeroGPU itself limits."""
        return None

    def _serve(self) -> None:
        spec = self.spec
        store = JobStore(spec.db_path, spec.blobs_dir)
        try:
            while not self.stop.is_set() and not self._killed.is_set():
                self.wake.clear()  # before claiming: a wake-up during the claim is still seen by the wait
                job = store.claim_next(spec.device, self.pid, spec.max_running)
                if job is None:
                    self.wake.wait(spec.poll_s)
                    continue
                self._run(job, store)
            self.exitcode = 0 if self.exitcode is None else self.exitcode
        except Exception as exc:  # the broker fails the running job with this reason and starts another slot
            log.exception("the ZeroGPU worker for %s stopped", spec.device)
            self.reason = f"its ZeroGPU worker stopped on an error: {type(exc).__name__}: {exc}"
            self.exitcode = 1
        finally:
            store.close()

    def _run(self, job: Job, store: JobStore) -> None:
        book, key = self.launcher.book, cost_key(job)
        try:
            job, warnings = without_compile(job)
            length = job_length(job, store)
            estimate = book.estimate(key, length)
        except AvatarbenchError as exc:
            store.fail(job.id, str(exc))
            return
        except Exception as exc:  # a bug here fails this job, not the slot
            log.exception("job %s (%s) could not be prepared for ZeroGPU", job.id, job.kind)
            store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}")
            return
        if estimate.over_cap:  # admitted before a call of its key was aborted: its rate has grown since
            store.fail(job.id, too_long(estimate, length, book.max_s))
            return
        spec = self.spec
        call = GpuCall(job, dict(spec.kinds), spec.db_path, spec.blobs_dir, spec.run_on or spec.device,
                       self.launcher.settings, estimate.seconds, os.getpid())  # fmt: skip
        log.info("job %s (%s) asks ZeroGPU for %d s (%s)", job.id, job.kind, estimate.seconds, estimate.basis)
        token = VISITOR_TOKENS.get(job.owner)
        try:
            with self.launcher.visitor(token):  # ZeroGPU counts the call against this visitor's quota
                outcome = self.launcher.gpu(call)
        except Exception as exc:  # ZeroGPU's own refusals: quota, no card, past the duration, an unpicklable value
            if is_abort(exc) and not self._killed.is_set():  # not one ended because its job was stopped
                book.observe_abort(key, length, estimate.seconds)
            if not self._killed.is_set():
                log.warning("job %s (%s): the ZeroGPU call failed: %s", job.id, job.kind, _text(exc))
                store.fail(job.id, call_failure(exc, estimate.seconds, book.max_s, token is not None))
            return
        if self._killed.is_set():
            return  # stopped by the broker (cancel, time limit, shutdown), which settles the job
        if "error" in outcome:
            store.fail(job.id, outcome["error"])
            return
        result = outcome["result"]
        book.observe(key, length, outcome["ran_s"])
        if warnings:
            result["warnings"] = [*(result.get("warnings") or []), *warnings]
        result["zerogpu"] = {
            "asked_s": estimate.seconds,
            "ran_s": round(outcome["ran_s"], 3),
            "length": length.units,
            "length_unit": length.unit,
            "estimate": estimate.basis,
            "max_s": book.max_s,
            "samples": (result.get("measurement") or {}).get("samples"),
        }
        try:
            store.finish(job.id, result)
        except Exception as exc:
            store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}")
        else:
            log.info("job %s (%s) done in %.1f s of its %d s", job.id, job.kind, outcome["ran_s"], estimate.seconds)


class VisitorTokens:
    """Each owner's latest X-IP-Token (ZeroGPU's visitor token), in memory only: it lets a GPU call count against
    that visitor's quota, and is no one's to read back. Per owner, not per job, so that a job claimed the instant it
    is queued still finds its token; bounded, the least recently seen owners forgotten first."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def remember(self, owner: str, token: str) -> None:
        with self._lock:
            self._tokens.pop(owner, None)
            self._tokens[owner] = token
            while len(self._tokens) > self.limit:
                self._tokens.pop(next(iter(self._tokens)))

    def get(self, owner: str) -> str | None:
        with self._lock:
            return self._tokens.get(owner)


VISITOR_TOKENS = VisitorTokens()
VisitorContext = Callable[[str | None], AbstractContextManager[Any]]  # the visitor's token -> where a call is made


ABORTED = "GPU task aborted"  # what `spaces` raises (a gr.Error) when the GPU process ended without a result


def _text(exc: BaseException) -> str:
    """An exception's words: a gr.Error's str() is the repr of its message; `spaces`' HTML errors carry plain text."""
    return str(getattr(exc, "message", None) or exc)


def is_abort(exc: BaseException) -> bool:
    """ZeroGPU ended the call's process: its time ran out or the process died."""
    return ABORTED in _text(exc)


def call_failure(exc: BaseException, asked_s: int, max_s: int, visitor: bool = True) -> str:
    """What a failed @spaces.GPU call means for the visitor, in plain words, with `spaces`' own words kept."""
    text = _text(exc)
    said = f"(ZeroGPU said: {text})"
    if ABORTED in text:
        return (
            f"ZeroGPU stopped this job's GPU call: it ran past the {asked_s} s it asked for, or its GPU process died "
            f"(out of memory, a crash) {said}. The next job of its kind asks for more; a shorter input fits sooner"
        )
    if "larger than the maximum allowed" in text:
        return (
            f"ZeroGPU refused the {asked_s} s of GPU time this job asked for: more than one call may ask for at "
            f"your account's tier (less when not logged in to Hugging Face) {said}. Log in, send a shorter input, or "
            f"lower {MAX_SECONDS_SETTING} (now {max_s})"
        )
    if "quota" in text.lower() or "reached its GPU limit" in text:
        whose = (
            "your ZeroGPU time allowance is used up"
            if visitor
            else "the Space's own ZeroGPU allowance is used up: this job came without a visitor token (an API call or "
            "a script), so it counts against the allowance every such caller shares"
        )
        return f"{whose} {said}: try again once it refills (ZeroGPU says when), or log in to Hugging Face for more"
    if "No GPU was available" in text:
        return f"ZeroGPU had no GPU free for this job: every card was busy {said}. Try again in a few minutes"
    return (
        f"ZeroGPU could not run this job: {type(exc).__name__}: {text} (it asked for {asked_s} s of GPU time; "
        f"{MAX_SECONDS_SETTING} caps asks at {max_s} s)"
    )


def decorated_gpu_function() -> Callable[[GpuCall], dict[str, Any]]:
    """run_in_gpu decorated with @spaces.GPU (once: before the app launches, as ZeroGPU expects)."""
    problem = spaces_gpu_problem()
    if problem is not None:
        raise SetupError(f"ZeroGPU jobs need Hugging Face's `spaces` package, but {problem}")
    spaces = importlib.import_module("spaces")
    return spaces.GPU(duration=asked_duration)(run_in_gpu)


class ZeroGpuLauncher:
    """The broker's launcher on ZeroGPU (one for every key): a ZeroGpuSlot for "cuda:N", `fallback` (a spawned
    worker process) for the others. `gpu` is the decorated GPU function (decorated_gpu_function() unless given);
    `visitor` gives the context a call is made in from its owner's ZeroGPU token (ui/zerogpu.py's Gradio request;
    none unless given: the engine never imports gradio)."""

    def __init__(
        self,
        settings: Settings | None = None,
        max_duration_s: int | None = None,
        fallback: Launcher = spawn_process,
        gpu: Callable[[GpuCall], dict[str, Any]] | None = None,
        visitor: VisitorContext | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.book = DurationBook(max_duration_s or self.settings.zerogpu_max_s)
        self.fallback = fallback
        self.gpu = gpu or decorated_gpu_function()
        self.visitor = visitor or (lambda token: contextlib.nullcontext())

    def admit(self, kind: str, settings: dict, device: str, store: JobStore) -> None:
        """Refuse, when submitted, a GPU job that needs more GPU time than one call may ask for: ZeroGPU would stop
        it at the cap, certainly, after the visitor's wait and its whole ask of GPU time."""
        if not device.startswith("cuda"):
            return
        job, _ = without_compile(Job("", kind, None, settings, device, QUEUED, 0.0, "", None, None, time.time(), None,
                                     None))  # fmt: skip
        length = job_length(job, store)
        estimate = self.book.estimate(cost_key(job), length)
        if estimate.over_cap:
            raise InputError(too_long(estimate, length, self.book.max_s))

    def __call__(self, spec: WorkerSpec, wake: Any, stop: Any) -> WorkerHandle:
        if not spec.device.startswith("cuda"):
            return self.fallback(spec, wake, stop)
        return ZeroGpuSlot(spec, wake, stop, self).start()


# ------------------------------------------------------------------------------------------- the telemetry panel


@dataclass
class ZeroGpuPanel:
    note: str  # what the panel says on ZeroGPU
    jobs: list[dict[str, Any]]  # the latest jobs' GPU-function figures and samples, newest first (never whose)


def telemetry_panel(store: JobStore, limit: int = 3, scan: int = 50) -> ZeroGpuPanel:
    """The telemetry panel's note on ZeroGPU and the samples the latest finished jobs took inside their GPU
    functions (the only GPU readings there are: none exist between jobs)."""
    jobs = []
    for job in store.history(scan):
        record = (job.result or {}).get("zerogpu") if job.status == DONE else None
        if not isinstance(record, dict):
            continue
        figures = job.result.get("measurement") or {}  # type: ignore[union-attr]
        jobs.append({
            "kind": job.kind, "finished": job.finished, "asked_s": record.get("asked_s"),
            "ran_s": record.get("ran_s"), "samples": figures.get("samples"),
            "peak_device_used_bytes": figures.get("peak_device_used_bytes"), "energy_j": figures.get("energy_j"),
            "telemetry_columns": figures.get("telemetry_columns"), "telemetry": figures.get("telemetry") or [],
        })  # fmt: skip
        if len(jobs) >= limit:
            break
    note = PANEL_NOTE if jobs else PANEL_NOTE + " No job has run on the GPU yet."
    return ZeroGpuPanel(note, jobs)


__all__ = [
    "MAX_SECONDS_SETTING",
    "VISITOR_TOKENS",
    "DurationBook",
    "Estimate",
    "GpuCall",
    "Length",
    "VisitorTokens",
    "ZeroGpuLauncher",
    "ZeroGpuPanel",
    "ZeroGpuSlot",
    "asked_duration",
    "cost_key",
    "decorated_gpu_function",
    "job_length",
    "media_seconds",
    "not_plain",
    "on_zerogpu",
    "run_in_gpu",
    "telemetry_panel",
    "without_compile",
]
