import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
        check=False,
    )


def test_doctor_json(tmp_path: Path) -> None:
    proc = run("doctor", "--json", AVATARBENCH_DATA_DIR=str(tmp_path))
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert {c["name"] for c in report["checks"]} >= {"pytorch", "onnxruntime-cuda", "video-encoders"}
    assert proc.returncode == (1 if report["status"] == "problem" else 0)


def test_doctor_text(tmp_path: Path) -> None:
    proc = run("doctor", AVATARBENCH_DATA_DIR=str(tmp_path))
    assert "[ ok ] python:" in proc.stdout and "problem(s) in" in proc.stdout


def test_telemetry_table_and_json_watch() -> None:
    table = run("telemetry")
    assert table.returncode == 0 and "avatarbench telemetry" in table.stdout and "Host: CPU" in table.stdout
    watch = run("telemetry", "--watch", "--json", "--interval", "0.2", "--count", "3")
    lines = [json.loads(line) for line in watch.stdout.splitlines()]
    assert len(lines) == 3 and lines[0]["timestamp"] < lines[2]["timestamp"]


def test_bad_input_is_a_clear_error() -> None:
    assert run("telemetry", "--interval", "0").returncode == 2
    proc = run("doctor", AVATARBENCH_MAX_UPLOAD_MB="many")
    assert proc.returncode == 2 and "AVATARBENCH_MAX_UPLOAD_MB" in proc.stderr


def test_serve_rejects_a_bad_login_spec() -> None:
    pytest.importorskip("gradio")
    proc = run("serve", "--auth", "nopassword")
    assert proc.returncode == 2 and "USER:PASS" in proc.stderr


def test_serve_shows_the_app_flags() -> None:
    pytest.importorskip("gradio")
    proc = run("serve", "--help")
    assert proc.returncode == 0
    for flag in ("--host", "--port", "--share", "--device", "--auth"):
        assert flag in proc.stdout
