"""Quiet where nothing is wrong: expected refusals are one line in the server log (bugs keep their traceback),
loader noise stays off the terminal, a busy port is one line, and `avatarbench telemetry` starts without the heavy
libraries."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, RunningApp

HEAVY = ("torch", "gradio", "onnxruntime", "onnx", "av", "cv2", "scipy", "transformers")


def test_the_telemetry_command_imports_none_of_the_heavy_libraries() -> None:
    code = (
        "import json, sys, app\n"
        "rc = app.main(['telemetry'])\n"
        f"print(json.dumps([rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0 and "Host: CPU" in proc.stdout
    assert heavy == [], f"`avatarbench telemetry` imported {heavy}"


def test_an_encoder_probe_keeps_ffmpegs_lines_off_the_terminal(capfd, caplog) -> None:
    """NVENC without libcuda: FFmpeg's "Cannot load libcuda.so.1" must not land in a progress bar. It came through
    Python logging ("libav.h264_nvenc" at ERROR, printed by logging's last resort), so both routes are watched."""
    pytest.importorskip("av")
    from engine.core.media import probe_encoder

    caplog.set_level(logging.INFO)
    probe = probe_encoder("h264_nvenc")
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "FFmpeg wrote to the terminal"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("libav")] == []
    if not probe.works and probe.listed:
        assert probe.error  # the reason is still there, for the doctor and for debugging


def _reported(body, caplog: pytest.LogCaptureFixture):
    gr = pytest.importorskip("gradio")
    from ui.forms import reported

    caplog.set_level(logging.INFO, logger="avatarbench.ui")
    with pytest.raises(gr.Error) as raised, reported("the test"):
        body()
    return raised.value


def test_our_refusal_is_one_log_line_and_no_gradio_traceback(caplog) -> None:
    from engine.core.errors import InputError

    def refuse() -> None:
        raise InputError("face is required: face image or video")

    error = _reported(refuse, caplog)
    assert error.message == "face is required: face image or video" and error.print_exception is False
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [
        ("INFO", "the test refused: face is required: face image or video", None)
    ]


def test_a_gr_error_raised_directly_is_one_log_line_too(caplog) -> None:
    gr = pytest.importorskip("gradio")

    def refuse() -> None:
        raise gr.Error("Give one or more job ids from the history table.")

    error = _reported(refuse, caplog)
    assert error.print_exception is False
    assert [r.getMessage() for r in caplog.records] == [
        "the test refused: Give one or more job ids from the history table."
    ]


def test_a_bug_keeps_its_traceback_in_the_log_once(caplog) -> None:
    def bug() -> None:
        {}["missing"]

    error = _reported(bug, caplog)
    assert "internal error in the test (KeyError; id " in error.message and error.print_exception is False
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info and record.exc_info[0] is KeyError
    error_id = error.message.rsplit("id ", 1)[1].split()[0]
    assert error_id in record.getMessage()
    again = _reported(bug, caplog).message.rsplit("id ", 1)[1].split()[0]
    assert again != error_id  # each bug's id finds its own traceback in the log


def test_an_empty_upload_is_one_line_in_the_server_log(running_app: RunningApp) -> None:
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    client = Client(running_app.url, verbose=False)
    with pytest.raises(Exception, match="face is required"):
        client.predict(face=None, audio=None, api_name="/lipsync")
    log = running_app.log()
    refused = [line for line in log.splitlines() if "face is required" in line]
    assert len(refused) == 1 and " INFO " in refused[0], log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "libcuda" not in log, log[-3000:]  # FFmpeg's NVENC probe in the doctor stays at debug


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, AVATARBENCH_DATA_DIR=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False")
        proc = subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"port {port} is already in use" in proc.stderr
    assert "--port" in proc.stderr and "GRADIO_SERVER_PORT" in proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("variables", "port"),
    [({}, "7860"), ({"GRADIO_SERVER_PORT": "7861"}, "7861"), ({"GRADIO_SERVER_PORT": "7861", "PORT": "8080"}, "8080")],
)
def test_make_run_takes_the_port_the_busy_port_message_suggests(variables: dict[str, str], port: str) -> None:
    # under `make test` the outer make's variables would reach this one (and its "Entering directory" lines)
    outer = ("GRADIO_SERVER_PORT", "PORT", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    env = {k: v for k, v in os.environ.items() if k not in outer} | variables
    proc = subprocess.run(["make", "-n", "--no-print-directory", "run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"app.py --port {port}"), proc.stdout
