"""Shared fixtures: markers that skip cleanly, and the app running in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def chromium_path() -> str | None:
    return os.environ.get("AB_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def freed_memory_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process never tells glibc to keep freed memory: a command run in-process (`main(["lipsync", ...])`)
    would, for the rest of the session, and a later test's 1 GiB block would reuse those pages, so the RSS peaks
    test_measure.py checks would not grow. Workers and the commands' own processes, which tests start, keep it."""
    import engine.core.memory as memory

    monkeypatch.setattr(memory, "_applied", False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    no_browser = pytest.mark.skip(reason="needs Debian's chromium (apt-get install chromium)")
    has_gpu, has_browser = _cuda_available(), chromium_path() is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "browser" in item.keywords and not has_browser:
            item.add_marker(no_browser)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_until_up(app: RunningApp, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {app.proc.returncode}:\n{app.log()[-3000:]}")
        try:
            with urllib.request.urlopen(app.url + "/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer within {timeout_s}s:\n{app.log()[-3000:]}")


def stop_app(app: RunningApp, timeout_s: float = 40.0, how: int = signal.SIGINT) -> int:
    """Ctrl-C (or `how`), as a user or a container runtime would; returns the exit code (kills only if it hangs)."""
    if app.proc.poll() is None:
        app.proc.send_signal(how)
        try:
            app.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            app.proc.kill()
            app.proc.wait(5)
            raise
    return app.proc.returncode


def start_app(data: Path, *flags: str, **env_vars: str) -> RunningApp:
    """app.py in a subprocess on a free port with its data in `data`, once it answers."""
    port = free_port()
    env = dict(
        os.environ,
        AVATARBENCH_DATA_DIR=str(data),
        AVATARBENCH_TELEMETRY_INTERVAL="0.5",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        **env_vars,
    )
    log_path = data / "app.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *flags],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    app = RunningApp(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_up(app, timeout_s=120)
    except BaseException:
        proc.kill()
        raise
    return app


@pytest.fixture(scope="module")
def running_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    app = start_app(tmp_path_factory.mktemp("appdata"))
    try:
        yield app
    finally:
        if app.proc.poll() is None:
            stop_app(app)


@pytest.fixture(scope="session")
def wav2lip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random Wav2Lip weights in the official file layout (seed 0), written once for the tests that only read them."""
    from engine.models.wav2lip import random_wav2lip_checkpoint

    path = tmp_path_factory.mktemp("wav2lip") / "wav2lip.pth"
    random_wav2lip_checkpoint(path, seed=0)
    return path
