"""The front ends agree: every capability's config is its CLI flags (tests/test_app.py checks the API's parameters
against the same fields), and errors reach people the same way: ours as one line, a bug as a traceback in the CLI
and as "internal error <id>" in the tab with the traceback in the server log."""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser, engine_commands
from engine.core.errors import InputError, SetupError
from engine.core.options import fields, from_args

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
FILES = {"face": "assets/face.jpg", "audio": "assets/speech.wav", "source": "assets/face.jpg",
         "driving": "assets/driving.mp4"}  # fmt: skip
REQUIRED = {"gpu": "T4", "throughput": "10", "measured_on": "cpu", **FILES}


@pytest.mark.parametrize("command", [c for c in engine_commands() if c.config], ids=lambda c: c.name)
def test_every_config_field_is_a_flag_with_the_configs_default(command) -> None:
    parser = build_parser(engine_commands())
    words = command.name.split()
    sub = parser._subparsers._group_actions[0].choices[words[0]]
    if len(words) == 2:
        sub = sub._subparsers._group_actions[0].choices[words[1]]
    dests = {a.dest: a for a in sub._actions}
    for f in fields(command.config):
        assert f.name in dests, f"{command.name}: no flag for {f.name}"
        if not f.option.positional:
            assert f.flag in dests[f.name].option_strings, (command.name, f.name)
    required = [f for f in fields(command.config) if f.required]
    argv = [*words]
    for f in required:
        argv += [f.flag, str(ROOT / REQUIRED[f.name]) if f.name in FILES else REQUIRED[f.name]]
    if any(a.dest == "out" for a in sub._actions):
        argv += ["--out", "x.mp4"]
    # one of two optional fields a command needs: an ONNX model or example, a preset LLM or a config.json
    chosen = {"example": "wav2lip"} if command.name.startswith("onnx") else {}
    chosen = {"llm": "mistral-7b"} if command.name == "plan llm" else chosen
    for name, value in chosen.items():
        argv += [f"--{name}", value]
    parsed = from_args(command.config, parser.parse_args(argv))
    values = {f.name: (str(ROOT / REQUIRED[f.name]) if f.name in FILES else REQUIRED[f.name]) for f in required}
    values.update(chosen)
    assert parsed == command.config.build(values)  # nothing given: the config's own defaults


def _cli(code: str, *args: str, data: Path) -> subprocess.CompletedProcess:
    """The console script's entry point after `code` ran in the same process (to plant a failure)."""
    script = f"import sys, app\n{code}\nsys.exit(app.main(sys.argv[1:]))"
    env = {**os.environ, "AVATARBENCH_DATA_DIR": str(data)}
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env, check=False)  # fmt: skip


LIPSYNC = ["lipsync", "--face", str(ASSETS / "face.jpg"), "--audio", str(ASSETS / "speech.wav"), "--quiet"]
PLANT = "import engine.lipsync.pipeline as p\ndef boom(*a, **k): raise {}\np.run_lipsync = boom"


def test_cli_a_bug_is_a_traceback_and_exit_1(tmp_path: Path) -> None:
    proc = _cli(PLANT.format("RuntimeError('planted bug')"), *LIPSYNC, "--out", str(tmp_path / "o.mp4"), data=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: planted bug" in proc.stderr


def test_cli_our_errors_are_one_line(tmp_path: Path) -> None:
    setup = _cli(PLANT.format("__import__('engine.core.errors').core.errors.SetupError('no CUDA here')"), *LIPSYNC,
                 "--out", str(tmp_path / "o.mp4"), data=tmp_path)  # fmt: skip
    assert (setup.returncode, setup.stderr) == (3, "avatarbench: no CUDA here\n")
    bad = _cli("", *LIPSYNC, "--out", str(tmp_path / "o.mp4"), "--batch-size", "0", "--pads", "1,2", data=tmp_path)
    from test_app import BAD_LIPSYNC_MESSAGE  # the API says the same words

    assert (bad.returncode, bad.stderr) == (2, f"avatarbench: {BAD_LIPSYNC_MESSAGE}\n")


class _FailingJobs:
    """Stands in for the lip-sync jobs: every submission fails the way it is told to."""

    kind, files = "lipsync", ("face", "audio")

    def __init__(self, error: BaseException, settings) -> None:
        self.error = error
        self.settings = settings

    def submit(self, config, owner):
        raise self.error


def _tab_handler(error: BaseException, tmp_path: Path):
    """The Lip-sync tab's `/lipsync` handler, built in a Blocks, whose job submission fails with `error`."""
    gr = pytest.importorskip("gradio")
    import ui.lipsync
    from engine.core.settings import load_settings
    from ui.jobs import Access

    with gr.Blocks() as demo:
        settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
        ui.lipsync.build_lipsync_tab(settings, _FailingJobs(error, settings), Access())
    fn = next(f for f in demo.fns.values() if f.api_name == "lipsync")
    assert inspect.isgeneratorfunction(fn.fn)  # it shows the video so far as the job makes it
    return gr, lambda: list(fn.fn(face=str(ASSETS / "face.jpg"), audio=str(ASSETS / "speech.wav")))


def test_tab_shows_our_message_and_hides_a_bugs_traceback(tmp_path, caplog) -> None:
    gr, call = _tab_handler(InputError("the speech is too long"), tmp_path)
    with pytest.raises(gr.Error) as shown:
        call()
    assert shown.value.message == "the speech is too long"

    gr, call = _tab_handler(RuntimeError("planted bug"), tmp_path)
    with caplog.at_level(logging.ERROR, logger="avatarbench.ui"), pytest.raises(gr.Error) as shown:
        call()
    message = shown.value.message
    assert message.startswith("internal error in lipsync (RuntimeError; id ") and "Traceback" not in message
    error_id = message.split("id ")[1].split()[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info and "planted bug" in str(logged[0].exc_info[1])


def test_setup_errors_are_ours_too() -> None:
    from engine.core.device import DeviceError
    from engine.core.weights import WeightsError
    from engine.runtimes.ort_session import SessionError

    assert all(issubclass(e, SetupError) for e in (DeviceError, WeightsError, SessionError))
