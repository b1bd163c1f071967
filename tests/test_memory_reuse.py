"""Freed memory kept where models run (issue #17): glibc really keeps a freed block once asked (the process's RSS
stays up), broker workers ask before their first job, the web app's process never does; and LivePortrait's
batch by device (1 on the CPU, 8 on a GPU), which renders the same frames as batch 8."""

from __future__ import annotations

import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from engine.core import memory
from engine.core.errors import InputError
from engine.core.media import VideoWriter, read_frames
from engine.jobs.store import FINISHED, Job, JobStore
from engine.portrait.config import PortraitConfig
from engine.portrait.head import default_batch_size
from engine.portrait.pipeline import run_portrait

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
BLOCK_MB = 200
ON_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
glibc_only = pytest.mark.skipif(not ON_GLIBC, reason="freed memory is kept only with glibc on Linux")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_after_a_freed_block() -> dict[str, float]:
    """This process's RSS before, while holding and after freeing a touched BLOCK_MB block, in MiB."""
    before = _rss_mb()
    block = np.ones(BLOCK_MB * 2**20 // 8)
    held = _rss_mb()
    del block
    return {"before": before, "held": held, "after": _rss_mb()}


_CHILD = f"""
import json, os, sys
import numpy as np
from engine.core.memory import keep_freed_memory, memory_kept
BLOCK_MB = {BLOCK_MB}
{inspect.getsource(_rss_mb)}
{inspect.getsource(_rss_after_a_freed_block)}
applied = [keep_freed_memory(), keep_freed_memory()] if sys.argv[1] == "keep" else []
print(json.dumps({{"applied": applied, "kept": memory_kept(), **_rss_after_a_freed_block()}}))
"""


def _child(mode: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_freed_block_stays_resident_only_when_freed_memory_is_kept() -> None:
    """Each in a fresh process: by default glibc returns a freed 200 MB block to the kernel; after
    keep_freed_memory() (applied once, the same answer again) the pages stay ours, for the next allocation."""
    plain, kept = _child("plain"), _child("keep")
    for run in (plain, kept):
        assert run["held"] - run["before"] > 0.9 * BLOCK_MB  # the block was really touched
    assert plain["kept"] is False and plain["after"] - plain["before"] < 0.25 * BLOCK_MB
    assert kept["applied"] == [True, True] and kept["kept"] is True
    assert kept["after"] - kept["before"] > 0.9 * BLOCK_MB


@glibc_only
def test_the_setting_turns_it_off() -> None:
    off = _child("keep", AVATARBENCH_KEEP_FREED_MEMORY="0")
    assert off["applied"] == [False, False] and off["kept"] is False
    assert off["after"] - off["before"] < 0.25 * BLOCK_MB


def test_a_bad_setting_is_one_line_and_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in ("", "1", "on", "TRUE", "yes"):
        assert memory.wanted({memory.SETTING: raw}) is True
    for raw in ("0", "off", "False", "no"):
        assert memory.wanted({memory.SETTING: raw}) is False
    with pytest.raises(InputError, match="AVATARBENCH_KEEP_FREED_MEMORY='maybe' is not on or off"):
        memory.wanted({memory.SETTING: "maybe"})
    monkeypatch.setattr(memory, "_applied", None)  # as in a fresh process; restored after the test
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.keep_freed_memory({}) is False and memory.memory_kept() is False  # no error, nothing done


class _FakeGlibc:
    """glibc's mallopt and malloc_trim as recorded calls; mallopt answers 1 (accepted) unless told otherwise per
    parameter. Attribute assignment (argtypes, restype) works on its methods as on ctypes functions."""

    def __init__(self, refused: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[str, int, int] | tuple[str, int]] = []
        self.refused = refused
        self.mallopt = self._Call(self._mallopt)
        self.malloc_trim = self._Call(lambda pad: self.calls.append(("malloc_trim", pad)) or 1)
        self.gnu_get_libc_version = self._Call(lambda: b"2.36")

    class _Call:
        def __init__(self, body: Any) -> None:
            self.body = body

        def __call__(self, *args: int) -> int:
            return self.body(*args)

    def _mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 0 if param in self.refused else 1


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Any:
    """keep_freed_memory as in a process that has not asked yet, with a recording glibc (restored after)."""
    fake = _FakeGlibc()
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory, "_glibc", lambda: fake)
    monkeypatch.delenv(memory.SETTING, raising=False)
    return fake


def test_keeping_freed_memory_sets_glibcs_three_switches_once(fresh_process: _FakeGlibc) -> None:
    """No block gets its own mapping (M_MMAP_MAX -4 to 0), the heap's top is kept up to 2 GiB - 1 (M_TRIM_THRESHOLD
    -1) and grown in 1 GiB steps (M_TOP_PAD -2); a later call, even one that says off, does nothing again."""
    assert memory.keep_freed_memory({}) is True and memory.memory_kept() is True
    assert fresh_process.calls == [("mallopt", -4, 0), ("mallopt", -1, 2**31 - 1), ("mallopt", -2, 2**30)]
    assert memory.keep_freed_memory({memory.SETTING: "0"}) is True
    assert len(fresh_process.calls) == 3


def test_the_setting_given_is_the_one_read(fresh_process: _FakeGlibc, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker is given its settings: off there means off even where this process's environment says on."""
    monkeypatch.setenv(memory.SETTING, "1")
    assert memory.keep_freed_memory({memory.SETTING: "off"}) is False and memory.memory_kept() is False
    assert memory.keep_freed_memory({}) is False  # the first answer holds for the process
    assert fresh_process.calls == []


def test_a_refused_switch_is_a_warning_and_the_others_are_still_set(
    fresh_process: _FakeGlibc, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_process.refused = (memory.M_MMAP_MAX,)
    assert memory.keep_freed_memory({}) is False and memory.memory_kept() is False
    assert [call[1] for call in fresh_process.calls] == [-4, -1, -2]  # not stopped at the first refusal
    assert "glibc refused a mallopt setting" in caplog.text


def test_freed_memory_is_handed_back_between_jobs_only_where_it_was_kept(fresh_process: _FakeGlibc) -> None:
    """release_freed_memory trims the heap (malloc_trim(0)) after each job in a worker that keeps freed memory; where
    nothing was kept (the web process, the setting off) it does nothing."""
    memory.release_freed_memory()
    assert fresh_process.calls == []  # not asked yet
    memory.keep_freed_memory({})
    memory.release_freed_memory()
    assert fresh_process.calls[-1] == ("malloc_trim", 0)


def test_a_c_library_other_than_glibc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """musl has a mallopt whose parameters mean other things (no gnu_get_libc_version); a process whose C library
    ctypes cannot open gets nothing either."""
    monkeypatch.setattr(sys, "platform", "linux")
    musl = _FakeGlibc()
    del musl.gnu_get_libc_version
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: musl)
    assert memory._glibc() is None

    def unopenable(name: Any) -> Any:
        raise OSError("no C library")

    monkeypatch.setattr(memory.ctypes, "CDLL", unopenable)
    assert memory._glibc() is None
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: _FakeGlibc())
    assert memory._glibc() is not None


def test_every_command_and_ray_worker_that_runs_a_model_keeps_freed_memory() -> None:
    """`avatarbench lipsync`, `avatar`, `portrait`, `onnx eval` and `bench` run networks in their own process, as a
    broker worker does, and so does a Ray actor. Read, not run: the conftest keeps this test process from acting on
    the call, and a Ray actor needs a cluster."""
    from engine.bench.cli import _bench
    from engine.jobs.ray_pool import RayWorkerActor
    from engine.lipsync.cli import _avatar, _lipsync
    from engine.onnx.cli import _eval
    from engine.portrait.cli import _portrait

    runners = (_lipsync, _avatar, _portrait, _eval, _bench, RayWorkerActor.__init__)
    assert [r.__qualname__ for r in runners if "keep_freed_memory()" not in inspect.getsource(r)] == []


# -- where it is applied -----------------------------------------------------------------------------------------


def freed_memory(job: Job, progress: Any, context: Any) -> dict:
    """A job kind for the broker below: whether this worker keeps freed memory, and whether a freed block stays."""
    omp = os.environ.get("OMP_WAIT_POLICY")
    return {"kept": memory.memory_kept(), "pid": os.getpid(), "omp": omp, **_rss_after_a_freed_block()}


def _worker_answer(tmp_path: Path) -> dict[str, Any]:
    from engine.jobs.broker import Broker

    with JobStore(tmp_path / "jobs.db", tmp_path / "blobs") as store:
        broker = Broker(store, {"memory": "test_memory_reuse:freed_memory"}, {"cpu": 1}, poll_s=0.2).start()
        try:
            job = broker.submit("memory", {}, "cpu", "tester")
            deadline = time.monotonic() + 120
            while store.get(job.id).status not in FINISHED and time.monotonic() < deadline:
                time.sleep(0.05)
            done = store.get(job.id)
        finally:
            broker.stop(5)
    assert done.result is not None, done.error
    return done.result


@pytest.mark.slow
@pytest.mark.skipif(not ON_GLIBC, reason="freed memory is kept only with glibc on Linux")
def test_a_broker_worker_keeps_freed_memory_before_its_first_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _worker_answer(tmp_path / "on")
    assert result["kept"] is True and result["pid"] != os.getpid()
    assert result["omp"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # engine/core/openmp.py; the user's wins
    assert result["after"] - result["before"] > 0.9 * BLOCK_MB
    monkeypatch.setenv(memory.SETTING, "off")  # a spawned worker reads it from the environment it inherits
    result = _worker_answer(tmp_path / "off")
    assert result["kept"] is False and result["after"] - result["before"] < 0.25 * BLOCK_MB


_APP = f"""
import json, os
import numpy as np
import app
from engine.core.device import resolve_device
from engine.core.memory import memory_kept
from engine.core.settings import get_settings
from engine.jobs.broker import Broker
from engine.system.telemetry import TelemetrySampler
from ui.jobs import Access
import ui.system

Broker.start = lambda self: self  # the workers are other processes; this one is the web app's
ui.system.DoctorCache.warm_up = lambda self: None
settings = get_settings()
settings.ensure_dirs()
services = app.start_jobs(settings)
app.build_app(settings, resolve_device("cpu"), TelemetrySampler(), services, Access())
services.broker.store.close()
BLOCK_MB = {BLOCK_MB}
{inspect.getsource(_rss_mb)}
{inspect.getsource(_rss_after_a_freed_block)}
print(json.dumps({{"kept": memory_kept(), **_rss_after_a_freed_block()}}))
"""


@pytest.mark.slow
@glibc_only
def test_the_web_app_process_never_keeps_freed_memory(tmp_path: Path) -> None:
    """The app's own process, built as `serve` builds it (jobs, tabs, API), has not asked, and a block it frees
    goes back to the kernel; nor does the app's or the tabs' code ask."""
    env = {**os.environ, "AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", _APP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    web = json.loads(done.stdout.strip().splitlines()[-1])
    assert web["kept"] is False and web["held"] - web["before"] > 0.9 * BLOCK_MB
    assert web["after"] - web["before"] < 0.25 * BLOCK_MB
    front = [ROOT / "app.py", *sorted((ROOT / "ui").rglob("*.py"))]
    assert [p.name for p in front if "keep_freed_memory" in p.read_text()] == []


# -- LivePortrait's batch by device ------------------------------------------------------------------------------


def test_the_portrait_batch_is_1_on_the_cpu_and_8_on_a_gpu() -> None:
    assert PortraitConfig.__dataclass_fields__["batch_size"].default is None
    assert default_batch_size(torch.device("cpu")) == 1
    assert default_batch_size(torch.device("cuda", 0)) == 8
    assert default_batch_size(torch.device("cuda", 0), "onnx-cuda") == 8
    assert default_batch_size(torch.device("cuda", 0), "onnx-cpu") == 1  # the networks run on the CPU


@pytest.mark.slow
def test_a_portrait_run_at_batch_1_renders_the_frames_of_batch_8(tmp_path: Path) -> None:
    """The baseline engine (no weights needed) on the CPU: an empty batch size runs at 1, and its 10 frames equal
    those of batch 8 (two batches, the second short)."""
    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))
    driving = tmp_path / "drive.mp4"
    writer = VideoWriter(driving, 25, 320, 320)
    for i in range(10):
        writer.write(cv2.warpAffine(face, np.float32([[1, 0, 3 * i], [0, 1, i % 3]]), (320, 320)))
    writer.close()
    frames = {}
    for batch in (None, 8):
        config = PortraitConfig(ASSETS / "face.jpg", driving, engine="baseline", batch_size=batch)
        result = run_portrait(config, tmp_path / f"out-{batch}.mp4", device="cpu")
        assert result.metrics["batch_size"] == (batch or 1) and result.metrics["frames"] == 10
        assert {s.name: s.items for s in result.stages}["warp"] == 10  # the short last batch counts its own frames
        frames[batch] = np.stack(list(read_frames(tmp_path / f"out-{batch}.mp4")))
    assert frames[None].shape == frames[8].shape and frames[None].shape[0] == 10
    assert np.array_equal(frames[None], frames[8])
