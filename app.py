"""avatarbench's composition root: the web app (the engine and the ui/ tabs in one Gradio Blocks) and the
`avatarbench` console script (`serve`, plus the engine's command table from engine/cli.py).

`python app.py [--host --port --share --device --auth]` serves (Hugging Face Spaces runs this file and sets
GRADIO_SERVER_NAME/PORT, the defaults here). Flags become settings, so the doctor and every tab see the same values.
Gradio and ui/ are imported only when serving, so that `avatarbench telemetry` and friends start fast.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli import main as run_command
from engine.core.commands import Command
from engine.core.errors import InputError
from engine.core.settings import PREFIX, get_settings, validate_device_spec

if TYPE_CHECKING:
    import gradio as gr

    from engine.bench.jobs import BenchJobs
    from engine.core.device import DeviceChoice
    from engine.core.settings import Settings
    from engine.jobs.broker import Broker
    from engine.jobs.kinds import JobKind
    from engine.jobs.ray_pool import RayWorkers
    from engine.jobs.store import JobStore
    from engine.lipsync.jobs import LipSyncJobs
    from engine.onnx.jobs import OnnxEvalJobs
    from engine.portrait.jobs import PortraitJobs
    from engine.system.telemetry import TelemetrySampler
    from ui.jobs import Access

log = logging.getLogger("avatarbench")


def device_banner(choice: DeviceChoice) -> str:
    """The header's device line. On ZeroGPU `spaces` makes torch in this process name a card it has not attached
    (an A100 MIG slice), so the card is not asked about here."""
    from engine.core.device import capabilities
    from engine.core.settings import ZEROGPU_CARD
    from engine.jobs.zerogpu import on_zerogpu

    if on_zerogpu():
        return f"**avatarbench** · running on **{ZEROGPU_CARD}** · GPU jobs run inside `@spaces.GPU` calls"
    caps = capabilities(choice.device)
    if choice.is_cuda:
        return f"**avatarbench** · running on `{choice.device}` **{caps.name}** · {', '.join(caps.precisions)}"
    return f"**avatarbench** · ⚠️ **CPU fallback**: {choice.reason}. Every tab works, more slowly."


# Each job kind's handler, run in the worker processes (imported there, never in the web process).
JOB_KINDS = {
    "lipsync": "engine.lipsync.jobs:handle",
    "portrait": "engine.portrait.jobs:handle",
    "onnx_eval": "engine.onnx.jobs:handle",
    "bench": "engine.bench.jobs:handle",
}


@dataclass
class Services:
    broker: Broker
    lipsync: LipSyncJobs
    portrait: PortraitJobs
    onnx: OnnxEvalJobs
    bench: BenchJobs
    ray_workers: RayWorkers | None = None  # the Ray actors behind the broker (AVATARBENCH_RAY_ADDRESS)
    zerogpu: bool = False  # GPU jobs run in @spaces.GPU calls (a ZeroGPU Space)

    def stop(self, grace_s: float, reason: str) -> list[str]:
        """Stop the broker (running jobs get `grace_s`), then the Ray actors; the ids of the jobs failed on the way."""
        failed = self.broker.stop(grace_s, reason)
        if self.ray_workers is not None:
            self.ray_workers.shutdown()
        return failed

    def kinds(self) -> dict[str, JobKind]:
        return {k.kind: k for k in (self.lipsync, self.portrait, self.onnx, self.bench)}


def worker_devices(settings: Settings) -> dict[str, int]:
    """Worker processes per device: AVATARBENCH_WORKERS_PER_GPU on every visible GPU (CUDA_VISIBLE_DEVICES
    respected; none when the device setting is "cpu"; the most any kind asks for, each kind's jobs then taking
    1/N of the card), and AVATARBENCH_CPU_WORKERS for the CPU."""
    import torch

    gpus = 0 if settings.device == "cpu" or not torch.cuda.is_available() else torch.cuda.device_count()
    per_gpu = max(n for _, n in settings.workers_per_gpu)
    return {**{f"cuda:{i}": per_gpu for i in range(gpus)}, "cpu": settings.cpu_workers}


def job_workers(settings: Settings, store: JobStore) -> tuple[dict[str, int], dict[str, Any], RayWorkers | None]:
    """Where jobs run: on a ZeroGPU Space, "cuda:0" jobs one at a time inside @spaces.GPU calls (the card is attached
    per job); with AVATARBENCH_RAY_ADDRESS, Ray actors on the cluster's GPUs; else local worker processes. Returns
    the broker's workers, its placement arguments (launcher, run_on) and the Ray pool to shut down."""
    from engine.jobs.zerogpu import ZeroGpuLauncher, on_zerogpu

    if on_zerogpu():
        from ui.zerogpu import visitor_request

        launcher = ZeroGpuLauncher(settings, visitor=visitor_request)  # each call counts against its visitor's quota
        return {"cuda:0": 1, "cpu": settings.cpu_workers}, {"launcher": launcher}, None
    if settings.ray_address:
        from engine.jobs.ray_pool import ray_workers

        per_gpu = max(n for _, n in settings.workers_per_gpu)
        pool = ray_workers(settings, store, JOB_KINDS, workers_per_gpu=per_gpu, cpu_workers=settings.cpu_workers)
        return pool.workers, {"run_on": pool.run_on, "launcher": pool.launch}, pool
    return worker_devices(settings), {}, None


def start_jobs(settings: Settings) -> Services:
    """The job store and the broker's worker processes: jobs a previous process left running are failed first,
    then queued ones (including those submitted before a restart) run."""
    from engine.bench.jobs import BenchJobs
    from engine.jobs.broker import Broker, JobLimits
    from engine.jobs.housekeeping import Budget, enforce_budget, sweep_ended_splits, sweep_orphans
    from engine.jobs.store import JobStore
    from engine.jobs.zerogpu import ZeroGpuLauncher
    from engine.lipsync.jobs import LipSyncJobs
    from engine.onnx.jobs import OnnxEvalJobs
    from engine.portrait.jobs import PortraitJobs

    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    store.recover()
    sweep_orphans(settings.cache_dir, store.blobs_dir)  # before any worker starts: nothing of ours uses them
    budget = Budget.from_settings(settings)

    def chores() -> None:
        """The store within its budget, and what stopped split jobs left in the cache."""
        enforce_budget(store, settings.outputs_dir, budget)
        sweep_ended_splits(store, settings.cache_dir)

    chores()
    limits = JobLimits(dict(settings.job_time_limits), int(settings.job_memory_gb * 2**30))
    workers, placement, pool = job_workers(settings, store)
    per_gpu = dict(settings.workers_per_gpu)
    broker = Broker(store, JOB_KINDS, workers, limits, chores=chores, per_gpu=per_gpu, **placement).start()
    jobs = (kind(broker, settings) for kind in (LipSyncJobs, PortraitJobs, OnnxEvalJobs, BenchJobs))
    return Services(broker, *jobs, ray_workers=pool, zerogpu=isinstance(placement.get("launcher"), ZeroGpuLauncher))


def zerogpu_panel(services: Services) -> Callable[[], Any] | None:
    """On ZeroGPU, what the telemetry panel adds: its note and the readings jobs took inside their GPU functions."""
    if not services.zerogpu:
        return None
    from engine.jobs.zerogpu import telemetry_panel

    return functools.partial(telemetry_panel, services.broker.store)


def queue_options(settings: Settings) -> dict[str, Any]:
    """Gradio's queue: one event at a time per handler unless it says more, and room for as many waiting events as
    the job queue holds jobs (AVATARBENCH_MAX_QUEUED_TOTAL). Explicit, because on ZeroGPU Gradio turns an unset
    size into 1: with our handlers waiting on jobs, a second visitor's event anywhere was refused as "Queue is full"."""
    return {"default_concurrency_limit": 1, "max_size": settings.max_queued_total}


def build_app(
    settings: Settings, choice: DeviceChoice, sampler: TelemetrySampler, services: Services, access: Access
) -> gr.Blocks:
    import gradio as gr

    from engine.jobs.housekeeping import gradio_cache_policy
    from ui.bench import build_bench_tab
    from ui.jobs import register_job_api
    from ui.lipsync import build_lipsync_tab
    from ui.onnx_eval import build_onnx_eval_tab
    from ui.portrait import build_portrait_tab
    from ui.system import SYSTEM_TAB, DoctorCache, build_system_tab
    from ui.telemetry import build_telemetry

    doctor = DoctorCache(settings)
    doctor.warm_up()
    # Gradio deletes its uploads and served copies on this schedule: a job's inputs are in the job store already.
    with gr.Blocks(title="avatarbench", analytics_enabled=False, delete_cache=gradio_cache_policy(settings)) as demo:
        # The header (banner, one telemetry line per GPU and the host, the tab bar) stays small, so that each tab's
        # inputs, main button and examples are on the first screen; the tab bar wraps rather than hiding tabs.
        with gr.Column(elem_id="ab-header"):
            gr.Markdown(device_banner(choice), elem_id="device-banner")
            build_telemetry(demo, sampler, zerogpu_panel(services))
        with gr.Tabs(overflow_behavior="wrap", elem_id="ab-tabs") as tabs:
            with gr.Tab("Lip-sync", id="lipsync"):
                build_lipsync_tab(settings, services.lipsync, access)
            with gr.Tab("Portrait animation", id="portrait"):
                build_portrait_tab(settings, services.portrait, access)
            with gr.Tab("ONNX eval", id="onnx"):
                build_onnx_eval_tab(settings, services.onnx, access)
            with gr.Tab("GPU benchmark", id="bench"):
                build_bench_tab(settings, services.bench, access)
            with gr.Tab(SYSTEM_TAB, id="system"):
                build_system_tab(demo, tabs, settings, sampler, choice, doctor)
        register_job_api(services.broker.store, services.kinds(), access)
    return demo


class Shutdown:
    """SIGTERM (what Spaces and Docker send) and Ctrl-C stop the app the same way: the web server closes, running
    jobs get AVATARBENCH_SHUTDOWN_GRACE seconds to finish and are then failed with the reason, queued jobs wait
    for the next start, and no worker process is left. A second signal, or a shutdown that hangs for another
    30 s, ends the process at once."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signal_name: str | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal_name is not None:
            os._exit(128 + signum)
        self.signal_name = signal.Signals(signum).name

        def force() -> None:
            log.warning("shutdown took too long: exiting now")
            os._exit(128 + signum)

        timer = threading.Timer(self.grace_s + 30.0, force)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt  # ends demo.launch()'s wait in the main thread


def serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    # A string default: argparse converts it only when serving, so a bad GRADIO_SERVER_PORT is a usage error there.
    parser.add_argument("--port", type=int, default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: settings)")
    parser.add_argument("--auth", action="append", metavar="USER:PASS", help="require a login (repeat for more users)")
    parser.add_argument(
        "--operator",
        action="append",
        metavar="USER",
        help="a login that sees and manages every user's jobs and may name server paths and Hub downloads; "
        "'*': every visitor (a personal machine)",
    )


def _logins(specs: list[str] | None) -> list[tuple[str, str]] | None:
    if not specs:
        return None
    logins: dict[str, str] = {}
    for spec in specs:
        user, sep, password = spec.partition(":")
        if not sep or not user or not password:
            raise InputError("--auth must be USER:PASS with both parts non-empty")
        if user != user.strip():  # the login form strips what is typed: such a user could never log in
            raise InputError(f"--auth: the user {user!r} starts or ends with a space; give it without")
        if user in logins:
            raise InputError(f"--auth: {user} is given twice (one password per user)")
        logins[user] = password
    return list(logins.items())


def _operators(names: list[str] | None, logins: list[tuple[str, str]] | None) -> frozenset[str]:
    """--operator names: '*', or users that --auth lets log in (any other name could never take effect)."""
    users = [user for user, _ in logins or ()]
    for name in names or ():
        if name != "*" and name not in users:
            known = f"the --auth users are {', '.join(users)}" if users else "there is no --auth, so nobody logs in"
            raise InputError(f"--operator {name!r} is not a login: {known} ('*' makes every visitor an operator)")
    return frozenset(names or ())


def _server_name(host: str) -> str:
    """The host as Gradio builds its URL from it: a bare IPv6 address in brackets."""
    host = host.strip()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(args: argparse.Namespace) -> int:
    """Start the app and serve until SIGTERM or Ctrl-C (bad flags or settings, a busy port: one line and exit 2)."""
    import errno
    import socket

    from engine.jobs.housekeeping import sweep_uploads

    auth = _logins(args.auth)
    operators = _operators(args.operator, auth)
    host = _server_name(args.host)
    if args.device is not None:
        os.environ[PREFIX + "DEVICE"] = validate_device_spec(args.device, "--device")
        get_settings.cache_clear()
    # Where the server cannot listen, say so now, before any worker starts (Gradio's own check is a bare OSError).
    other = args.port + 1 if args.port < 65535 else 7860
    busy = (
        f"port {args.port} is already in use (another avatarbench, or another program): choose another with "
        f"--port {other} or GRADIO_SERVER_PORT={other}"
    )
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        where = socket.getaddrinfo(host.strip("[]"), args.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = where[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(busy) from None
        raise InputError(
            f"cannot listen on {host}:{args.port} ({exc.strerror or exc}): choose another --host (e.g. 127.0.0.1 "
            "or 0.0.0.0) or --port"
        ) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    settings.ensure_dirs()
    from engine.jobs.store import hold_data_dir

    data_dir_lock = hold_data_dir(settings.data_dir)  # one app per data dir, for as long as this one serves
    # Gradio's uploads under our cache (read by Gradio when it is imported), where a start-up sweep also finds
    # what a killed process left: Gradio's own cleanup only knows the files of its current run.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.cache_dir / "gradio"))
    sweep_uploads(Path(os.environ["GRADIO_TEMP_DIR"]), settings.upload_cache_hours * 3600)
    from engine.jobs.zerogpu import on_zerogpu

    if on_zerogpu():  # this imported `spaces` before anything below asks about CUDA, as ZeroGPU wants
        log.info("ZeroGPU: GPU jobs run inside @spaces.GPU calls, one at a time")

    import gradio as gr

    from engine.core.device import resolve_device
    from engine.system.telemetry import get_sampler
    from ui.jobs import OWNER_COOKIE_SCRIPT, Access
    from ui.style import CSS, MISSING_TRANSLATIONS
    from ui.widgets import ASSETS

    choice = resolve_device(settings.device)
    log.info("device: %s (%s)", choice.device, choice.reason)
    sampler = get_sampler(settings.telemetry_interval_s, settings.telemetry_history_s)
    shutdown = Shutdown(settings.shutdown_grace_s)
    shutdown.install()
    services = start_services(settings, shutdown)
    sampler.workers = services.broker.activity  # the telemetry shows each device's workers and their jobs
    access = Access(operators)
    demo = None
    try:
        demo = build_app(settings, choice, sampler, services, access)
        demo.queue(**queue_options(settings))
        try:
            demo.launch(
                server_name=host,
                server_port=args.port,
                share=args.share,
                auth=auth,
                max_file_size=settings.max_upload_bytes,
                # the handlers that wait on jobs hold a thread each while they poll (up to 80, ui/jobs.py): with
                # Gradio's 40, they could starve every other event
                max_threads=160,
                # not the outputs: Gradio would serve any of them to whoever names it (ui/widgets.py, delivered)
                allowed_paths=[str(ASSETS)],
                theme=gr.themes.Soft(),
                css=CSS,
                i18n=gr.I18n(**MISSING_TRANSLATIONS),
                head=OWNER_COOKIE_SCRIPT,  # the browser's owner token: its jobs outlive a reload
            )
        except OSError as exc:  # taken between the check above and the server's start
            if "Cannot find empty port" not in str(exc):
                raise
            raise InputError(busy) from None
    except KeyboardInterrupt:  # a signal while launch() was still starting up (it handles later ones itself)
        pass
    finally:
        if demo is not None:
            demo.close()
        reason = f"the app was stopped ({shutdown.signal_name or 'its server ended'})"
        failed = services.stop(settings.shutdown_grace_s, reason)
        log.info("stopped%s", f"; failed the running job(s) {', '.join(failed)}" if failed else "")
        data_dir_lock.close()  # the workers have stopped: another app may take the data dir now
    return 0


def start_services(settings: Settings, shutdown: Shutdown) -> Services:
    """The job services, then our signal handlers again: ray.init (a Ray cluster's workers) puts absl's in place,
    which killed the app 3 s after a SIGTERM, past the grace, with its running jobs left "running"."""
    services = start_jobs(settings)
    shutdown.install()
    return services


SERVE = Command("serve", "start the web app", serve, flags=serve_flags)


def main(argv: Sequence[str] | None = None) -> int:
    """The `avatarbench` console script: `serve` and every engine command."""
    return run_command(argv, extra=[SERVE])


if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
