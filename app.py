"""avatarbench's composition root: the web app (the engine and the ui/ tabs in one Gradio Blocks) and the
`avatarbench` console script (`serve`, plus the engine's command table from engine/cli.py).

`python app.py [--host --port --share --device --auth]` serves (Hugging Face Spaces runs this file and sets
GRADIO_SERVER_NAME/PORT, the defaults here). Flags become settings, so the doctor and every tab see the same values.
Gradio and ui/ are imported only when serving, so that `avatarbench telemetry` and friends start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.cli import main as run_command
from engine.core.commands import Command
from engine.core.errors import InputError
from engine.core.settings import PREFIX, get_settings, validate_device_spec

if TYPE_CHECKING:
    import gradio as gr

    from engine.bench.jobs import BenchJobs
    from engine.core.device import DeviceChoice
    from engine.core.settings import Settings
    from engine.jobs.runner import JobRunner
    from engine.onnx.jobs import OnnxEvalJobs
    from engine.system.telemetry import TelemetrySampler

log = logging.getLogger("avatarbench")


def device_banner(choice: DeviceChoice) -> str:
    from engine.core.device import capabilities

    caps = capabilities(choice.device)
    if choice.is_cuda:
        return f"**avatarbench** · running on `{choice.device}` **{caps.name}** · {', '.join(caps.precisions)}"
    return f"**avatarbench** · ⚠️ **CPU fallback**: {choice.reason}. Every tab works, more slowly."


@dataclass
class Services:
    onnx: OnnxEvalJobs
    bench: BenchJobs
    runner: JobRunner


def start_jobs(settings: Settings, choice: DeviceChoice, sampler: TelemetrySampler) -> Services:
    """The job store and its workers: jobs a previous process left running are failed first, then
    queued ones (including those submitted before a restart) run on one worker per GPU and the CPU pool.
    ONNX evaluations and benchmark sweeps share the per-device queues, so they never time each other."""
    from engine.bench.jobs import KIND as BENCH
    from engine.bench.jobs import BenchJobs
    from engine.jobs.runner import JobRunner
    from engine.jobs.store import CPU, JobStore
    from engine.onnx.jobs import KIND as ONNX_EVAL
    from engine.onnx.jobs import OnnxEvalJobs

    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    store.recover()
    gpu = str(choice.device) if choice.is_cuda else None
    onnx = OnnxEvalJobs(store, settings, gpu)
    sweeps = BenchJobs(store, settings, gpu, sampler=sampler)
    runner = JobRunner(store, {ONNX_EVAL: onnx.handle, BENCH: sweeps.handle}, cpu_workers=settings.cpu_workers)
    onnx.wake = sweeps.wake = runner.wake
    runner.start([d for d in (gpu, CPU) if d])
    return Services(onnx, sweeps, runner)


def build_app(settings: Settings, choice: DeviceChoice, sampler: TelemetrySampler, services: Services) -> gr.Blocks:
    import gradio as gr

    from ui.bench import build_bench_tab
    from ui.lipsync import build_lipsync_tab
    from ui.onnx_eval import build_onnx_eval_tab
    from ui.portrait import build_portrait_tab
    from ui.system import DoctorCache, build_system_tab
    from ui.telemetry import build_telemetry_panel

    doctor = DoctorCache(settings)
    doctor.warm_up()
    with gr.Blocks(title="avatarbench", analytics_enabled=False) as demo:
        gr.Markdown(device_banner(choice), elem_id="device-banner")
        timer = build_telemetry_panel(demo, sampler)
        with gr.Tabs():
            with gr.Tab("Lip-sync", id="lipsync"):
                build_lipsync_tab(settings)
            with gr.Tab("Portrait animation", id="portrait"):
                build_portrait_tab(settings)
            with gr.Tab("ONNX eval", id="onnx"):
                build_onnx_eval_tab(settings, services.onnx)
            with gr.Tab("GPU benchmark", id="bench"):
                build_bench_tab(settings, services.bench)
            with gr.Tab("System", id="system"):
                build_system_tab(demo, settings, sampler, timer, choice, doctor)
    return demo


SHUTDOWN_GRACE_S = 15.0


def _bounded_shutdown_on_ctrl_c() -> None:
    """Ctrl-C closes the server gracefully, but never hangs: the web server waits for open connections and a
    running job cannot be interrupted, so after SHUTDOWN_GRACE_S (or at a second Ctrl-C) the process exits
    anyway (code 130). Jobs left running are failed by recover() at the next start."""
    state = {"stopping": False}

    def handler(signum: int, frame: object) -> None:
        if state["stopping"]:
            os._exit(130)
        state["stopping"] = True

        def force() -> None:
            log.warning("shutdown took over %.0f s (open connections or a running job): exiting", SHUTDOWN_GRACE_S)
            os._exit(130)

        timer = threading.Timer(SHUTDOWN_GRACE_S, force)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: settings)")
    parser.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")


def _login(spec: str | None) -> tuple[str, str] | None:
    if spec is None:
        return None
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth must be USER:PASS with both parts non-empty")
    return user, password


def serve(args: argparse.Namespace) -> int:
    """Start the app and serve until Ctrl-C (bad flags or settings are one line and exit 2)."""
    import gradio as gr

    from engine.core.device import resolve_device, set_memory_fraction
    from engine.system.telemetry import get_sampler
    from ui.style import CSS
    from ui.widgets import ASSETS

    auth = _login(args.auth)
    if args.device is not None:
        os.environ[PREFIX + "DEVICE"] = validate_device_spec(args.device)
        get_settings.cache_clear()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    try:
        settings.ensure_dirs()
    except OSError as exc:
        raise InputError(f"cannot create the data folder {settings.data_dir}: {exc}") from None
    choice = resolve_device(settings.device)
    if set_memory_fraction(settings.gpu_memory_fraction, choice.device):
        log.info("GPU memory fraction for this process: %s", settings.gpu_memory_fraction)
    log.info("device: %s (%s)", choice.device, choice.reason)
    sampler = get_sampler(settings.telemetry_interval_s, settings.telemetry_history_s)
    services = start_jobs(settings, choice, sampler)
    demo = build_app(settings, choice, sampler, services)
    demo.queue(default_concurrency_limit=1)
    if threading.current_thread() is threading.main_thread():
        _bounded_shutdown_on_ctrl_c()
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            auth=auth,
            max_file_size=settings.max_upload_bytes,
            allowed_paths=[str(settings.outputs_dir), str(ASSETS)],
            theme=gr.themes.Soft(),
            css=CSS,
        )
    except KeyboardInterrupt:  # Ctrl-C while launch() was still starting up (it handles later ones itself)
        demo.close()
    if not services.runner.stop():
        # A job is still inside PyTorch or ONNX Runtime: finalising the interpreter under it can abort or hang,
        # so leave now; recover() fails that job at the next start.
        logging.shutdown()
        os._exit(130)
    return 0


SERVE = Command("serve", "start the web app", serve, flags=serve_flags)


def main(argv: Sequence[str] | None = None) -> int:
    """The `avatarbench` console script: `serve` and every engine command."""
    return run_command(argv, extra=[SERVE])


if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
