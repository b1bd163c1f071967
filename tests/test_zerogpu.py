"""ZeroGPU (engine/jobs/zerogpu.py) with the stand-in `spaces` of tests/zerogpu_spaces/: a real Broker whose "cuda:0"
worker hands each job to a @spaces.GPU function, which runs it in a forked process across a pickle boundary both
ways (the handlers use the CPU: this machine has no GPU, so run_on maps cuda:0 to "cpu"); the "cpu" key keeps its
spawned worker process.

What is not tested here: a real ZeroGPU Space (its queue, quota, and the card it attaches after the fork). A CUDA
tensor in a result is faked by a tensor subclass whose `is_cuda` answers True; the stand-in's refusal and ours both
ask exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
from test_lipsync import speech_like, write_wav
from tiny_onnx import mlp

from app import JOB_KINDS
from engine.bench.sweep import BenchPoint, SweepConfig
from engine.core.errors import InputError, SetupError
from engine.core.media import VideoWriter
from engine.core.settings import Settings, SettingsError, load_settings
from engine.jobs import zerogpu
from engine.jobs.broker import Broker, JobLimits
from engine.jobs.store import CANCELLED, CPU, DONE, FAILED, FINISHED, Job, JobStore
from engine.jobs.zerogpu import DurationBook, Length, ZeroGpuLauncher
from engine.lipsync.config import LipSyncConfig
from engine.lipsync.jobs import LipSyncJobs
from engine.onnx.config import EvalConfig
from engine.onnx.jobs import OnnxEvalJobs
from engine.portrait.config import PortraitConfig
from engine.portrait.jobs import PortraitJobs

STANDIN = Path(__file__).resolve().parent / "zerogpu_spaces"
FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
OWNER = "tester"
GPU = "cuda:0"
TEST_KINDS = {name: f"{__name__}:{name}" for name in ("echo", "leaky", "unpicklable", "hang", "on_the_gpu")}


# --------------------------------------------------------------------- handlers the broker runs (in the fork)


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it is on a CUDA device (no GPU here to make a real one)."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def echo(job: Job, progress: Any, context: Any) -> dict:
    progress(0.5, "echoing")
    return {"pid": os.getpid(), "device": job.device, "settings": job.settings}


def leaky(job: Job, progress: Any, context: Any) -> dict:
    return {"frames": torch.zeros(3).as_subclass(FakeCudaTensor)}


def unpicklable(job: Job, progress: Any, context: Any) -> dict:
    return {"stages": [{"name": "decode", "lock": threading.Lock()}]}


def on_the_gpu(job: Job, progress: Any, context: Any) -> dict:
    """Work on the job's CUDA device for a moment; return a CUDA tensor when asked to (`leak`)."""
    x = torch.randn(2048, 2048, device=job.device)
    for _ in range(50):
        x = torch.tanh(x @ x / 2048)
    return {"frames": x[:2, :2]} if job.settings.get("leak") else {"sum": float(x.sum())}


def hang(job: Job, progress: Any, context: Any) -> dict:
    if job.settings.get("pid_file"):  # where a test finds the GPU process
        Path(job.settings["pid_file"]).write_text(str(os.getpid()))
    progress(0.1, "hanging")
    time.sleep(float(job.settings.get("seconds", 30)))
    return {}


# -------------------------------------------------------------------------------------------------- fixtures


@dataclasses.dataclass
class Running:
    broker: Broker
    launcher: ZeroGpuLauncher
    settings: Settings
    spaces: Any

    @property
    def store(self) -> JobStore:
        return self.broker.store


@pytest.fixture(scope="module")
def spaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The stand-in importable as `spaces` and SPACES_ZERO_GPU set, for this module only."""
    data = tmp_path_factory.mktemp("zerogpu")
    assert "spaces" not in sys.modules
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(STANDIN))
        mp.setenv("SPACES_ZERO_GPU", "true")
        mp.setenv("AVATARBENCH_DATA_DIR", str(data))  # the spawned CPU worker reads its settings from here
        try:
            import spaces as standin

            yield standin
        finally:
            sys.modules.pop("spaces", None)  # `spaces` is unimportable again afterwards


@pytest.fixture(scope="module")
def running(spaces: Any) -> Iterator[Running]:
    """The app's broker and launcher on the stand-in, its jobs on this CPU. The asks are sized for a GPU: on a busy
    2-core machine the first lip-sync job's 13 s ask (1 s of speech at the default rate) was seen to take longer, so
    calls here may run 20 times their ask, and one call may ask for ZeroGPU's most. What is asked is checked
    exactly (`requested`); where a call is stopped for running past its ask, the test puts the slack back to 1."""
    settings = load_settings()
    settings.ensure_dirs()
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    from ui.zerogpu import visitor_request

    launcher = ZeroGpuLauncher(settings, max_duration_s=300, visitor=visitor_request)  # as app.job_workers makes it
    kinds = {**JOB_KINDS, **TEST_KINDS}
    broker = Broker(store, kinds, {GPU: 1, CPU: 1}, poll_s=0.1, run_on={GPU: CPU}, launcher=launcher).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spaces, "slack", 20.0)
        yield Running(broker, launcher, settings, spaces)
    broker.stop(grace_s=5)
    store.close()


def _finished(store: JobStore, job_id: str, timeout_s: float = 180) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.status in FINISHED:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {store.get(job_id)}")


def _speech(folder: Path, seconds: float) -> Path:
    return write_wav(folder / f"speech-{seconds:g}s.wav", speech_like(seconds))


def _driving(folder: Path, frames: int) -> Path:
    face = cv2.resize(cv2.imread(str(FACE)), (256, 256))
    writer = VideoWriter(folder / "driving.mp4", 25, 256, 256)
    for i in range(frames):
        writer.write(cv2.warpAffine(face, np.float32([[1, 0, 3 * i], [0, 1, 0]]), (256, 256)))
    writer.close()
    return folder / "driving.mp4"


def _lipsync(running: Running, audio: Path, **options: Any) -> Job:
    config = LipSyncConfig(face=FACE, audio=audio, engine="baseline", **options)
    return LipSyncJobs(running.broker, running.settings).submit(config, OWNER)


# --------------------------------------------------------------------------------------------------- through it


def test_a_job_of_every_tab_runs_inside_a_gpu_function(running: Running, tmp_path: Path) -> None:
    store, broker, asked_before = running.store, running.broker, len(running.spaces.requested)
    lipsync = _lipsync(running, _speech(tmp_path, 1.0), compile=True)
    portrait = PortraitJobs(broker, running.settings).submit(
        PortraitConfig(FACE, _driving(tmp_path, 4), engine="baseline"), OWNER
    )
    onnx_jobs = OnnxEvalJobs(broker, running.settings)
    model = mlp(tmp_path / "mlp.onnx")
    fast = {"model": model, "runs": 3, "warmup": 0, "intra_op_threads": 1}
    onnx = onnx_jobs.submit(EvalConfig.build({**fast, "providers": "cuda"}), OWNER).job
    points = [BenchPoint("ort-cpu", "fp32", 2, "cpu"), BenchPoint("compile", "fp32", 1, "cpu")]
    sweep = SweepConfig(f"onnx:{onnx.model_sha256}", points, runs=3, warmup=0, baseline=1)
    bench = broker.submit("bench", {"sweep": sweep.to_dict()}, GPU, OWNER, model_sha256=onnx.model_sha256, timed=True)
    on_cpu = onnx_jobs.submit(EvalConfig.build({**fast, "providers": "cpu"}), OWNER).job
    gpu_jobs = [lipsync, portrait, onnx, bench]
    assert [j.device for j in gpu_jobs] == [GPU] * 4 and on_cpu.device == CPU

    done = [_finished(store, j.id) for j in [*gpu_jobs, on_cpu]]
    assert [(j.kind, j.status, j.error) for j in done] == [(j.kind, DONE, None) for j in done]
    *gpu_done, cpu_done = done
    asked = running.spaces.requested[asked_before:]
    assert asked == [j.result["zerogpu"]["asked_s"] for j in gpu_done]  # one call per job, each with its own ask
    for job in gpu_done:
        record, figures = job.result["zerogpu"], job.result["measurement"]
        assert job.worker is not None and job.worker < 0  # claimed by the ZeroGPU slot, not a process
        assert 1 <= record["asked_s"] <= running.launcher.book.max_s and record["ran_s"] > 0
        assert record["samples"] == figures["samples"] > 0 and figures["telemetry"]  # sampled inside the function
        assert running.launcher.book.rate(zerogpu.cost_key(job)) is not None  # learned from this job
    lip, por, ort, ben = (j.result for j in gpu_done)
    assert lip["zerogpu"]["length"] == pytest.approx(1.0, abs=0.05) and lip["zerogpu"]["length_unit"].endswith("speech")
    assert lip["metrics"]["engine"] == "baseline" and lip["config"]["compile"] is False
    assert any("torch.compile was turned off" in w for w in lip["warnings"])
    assert por["metrics"]["frames"] == 4 and por["zerogpu"]["length"] == pytest.approx(4 / 25, abs=0.02)
    assert ort["zerogpu"]["length"] == 1 and [r["provider"] for r in ort["results"]] == ["cuda"]
    assert [r["runtime"] for r in ben["results"]] == ["ort-cpu"] and ben["results"][0]["status"] == "ok"
    assert any("1 torch.compile configuration(s) left out" in w for w in ben["warnings"])
    assert cpu_done.worker is not None and cpu_done.worker > 0 and cpu_done.worker != os.getpid()
    assert "zerogpu" not in cpu_done.result  # the CPU key kept its spawned worker process
    assert len(running.spaces.requested) == asked_before + 4


def test_a_result_that_cannot_leave_fails_its_job_and_the_worker_goes_on(running: Running) -> None:
    submit = running.broker.submit
    leak, lock, after = (submit(kind, {"n": 1}, GPU, OWNER) for kind in ("leaky", "unpicklable", "echo"))
    leak, lock, after = (_finished(running.store, j.id) for j in (leak, lock, after))
    assert leak.status == FAILED and "cannot leave the ZeroGPU function" in leak.error
    assert "result['frames'] is a torch.Tensor on the GPU" in leak.error
    assert lock.status == FAILED and "result['stages'][0]['lock'] is a _thread.lock" in lock.error
    assert after.status == DONE and after.result["settings"] == {"n": 1}
    assert after.result["pid"] != os.getpid()  # ran in the forked GPU process
    assert leak.worker == lock.worker == after.worker  # the same slot: the failures did not end it


def test_the_duration_asked_grows_with_the_jobs_length(running: Running, tmp_path: Path) -> None:
    book = running.launcher.book
    if book.rate("lipsync/baseline") is None:  # this test alone: the first job teaches the rate
        assert _finished(running.store, _lipsync(running, _speech(tmp_path, 1.0)).id).status == DONE
    short, long = (_lipsync(running, _speech(tmp_path, s)) for s in (1.0, 3.0))
    short, long = (_finished(running.store, j.id) for j in (short, long))
    assert short.status == long.status == DONE
    assert long.result["zerogpu"]["length"] > short.result["zerogpu"]["length"]
    assert long.result["zerogpu"]["asked_s"] > short.result["zerogpu"]["asked_s"]
    assert running.spaces.requested[-2:] == [short.result["zerogpu"]["asked_s"], long.result["zerogpu"]["asked_s"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended


def _gpu_process_of(store: JobStore, job: Job, pid_file: Path) -> int:
    deadline = time.monotonic() + 60
    while store.get(job.id).progress_label != "hanging" and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert pid != os.getpid() and _alive(pid)
    return pid


def _ends(pid: int, within_s: float = 15) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_cancelling_a_job_in_its_gpu_function_ends_the_call_and_replaces_the_slot(
    running: Running, tmp_path: Path
) -> None:
    """The abandoned call's process ends (ZeroGPU takes its card and quota back), long before its 120 s sleep."""
    store, pid_file = running.store, tmp_path / "pid"
    stuck = running.broker.submit("hang", {"seconds": 120, "pid_file": str(pid_file)}, GPU, OWNER)
    pid = _gpu_process_of(store, stuck, pid_file)
    rate = running.launcher.book.rate("hang")
    cancelled = running.broker.cancel(stuck.id, OWNER)
    assert cancelled.status == CANCELLED and "cancelled by its owner" in cancelled.error
    assert _ends(pid)
    following = _finished(store, running.broker.submit("echo", {}, GPU, OWNER).id)
    assert following.status == DONE and following.worker is not None and following.worker != cancelled.worker
    assert running.launcher.book.rate("hang") == rate  # a stopped job's end teaches no rate


def test_a_job_past_its_time_limit_ends_its_gpu_call(spaces: Any, tmp_path: Path) -> None:
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    store, pid_file = JobStore(settings.db_path, settings.data_dir / "blobs"), tmp_path / "pid"
    launcher = ZeroGpuLauncher(settings, max_duration_s=200)
    limits = JobLimits({"default": 3600.0, "hang": 4.0})
    broker = Broker(store, TEST_KINDS, {GPU: 1}, limits, poll_s=0.1, run_on={GPU: CPU}, launcher=launcher).start()
    try:
        job = broker.submit("hang", {"seconds": 120, "pid_file": str(pid_file)}, GPU, OWNER)
        pid = _gpu_process_of(store, job, pid_file)
        stopped = _finished(store, job.id, 60)
        assert stopped.status == FAILED and "time limit" in stopped.error
        assert _ends(pid)
    finally:
        broker.stop(grace_s=2)
        store.close()


def test_a_call_run_in_the_apps_own_process_is_never_ended_by_its_watch(tmp_path: Path) -> None:
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    job = store.submit("echo", {}, GPU, None, owner=OWNER)
    call = zerogpu.GpuCall(job, {}, str(settings.db_path), str(store.blobs_dir), CPU, settings, 10, os.getpid())
    store.cancel(job.id, OWNER)  # a queued job: cancelled at once, never running
    over = zerogpu.end_when_stopped(call, every_s=0.01)
    time.sleep(0.2)  # without the guard, this process would have ended by now
    assert not over.is_set() and not any(t.name.endswith(job.id) for t in threading.enumerate())
    store.close()


def test_a_call_past_its_duration_fails_with_the_reason_and_teaches_a_larger_ask(
    spaces: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spaces, "slack", 1.0)  # ZeroGPU's own: stopped at the ask
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    # 6 s: room for the next call's process to start and import on a loaded 2-core machine (3 s was not)
    launcher = ZeroGpuLauncher(settings, max_duration_s=6)
    broker = Broker(store, TEST_KINDS, {GPU: 1}, poll_s=0.1, run_on={GPU: CPU}, launcher=launcher).start()
    try:
        late = _finished(store, broker.submit("hang", {"seconds": 30}, GPU, OWNER).id)
        assert late.status == FAILED and late.error.startswith("ZeroGPU stopped this job's GPU call")
        assert "ran past the 6 s it asked for, or its GPU process died" in late.error
        assert "ZeroGPU said: GPU task aborted" in late.error  # the real client's words, kept
        # the abort taught its key a rate (twice the ask per unit): the next such job would be stopped too
        assert launcher.book.rate("hang") == 12.0
        with pytest.raises(
            InputError,
            match=r"needs about 12 s of GPU time \(1 jobs x 12 s per unit measured here\), more than the 6 s",
        ):
            broker.submit("hang", {"seconds": 30}, GPU, OWNER)
        assert _finished(store, broker.submit("echo", {}, GPU, OWNER).id).status == DONE  # another key: unaffected
        monkeypatch.setattr(spaces, "MAX_DURATION_S", 5)  # the visitor's tier allows less than the ask
        refused = _finished(store, broker.submit("echo", {}, GPU, OWNER).id)
        assert refused.status == FAILED and refused.error.startswith("ZeroGPU refused the 6 s of GPU time")
        assert "lower AVATARBENCH_ZEROGPU_MAX_SECONDS (now 6)" in refused.error
    finally:
        broker.stop(grace_s=2)
        store.close()


def test_a_job_longer_than_one_call_may_ask_for_is_refused_when_submitted(spaces: Any, tmp_path: Path) -> None:
    """6 s of speech needs 18 s at the default rate: past a 15 s cap ZeroGPU would stop it, its GPU time lost."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    launcher = ZeroGpuLauncher(settings, max_duration_s=15, gpu=lambda call: {"error": "never called"})
    broker = Broker(store, JOB_KINDS, {GPU: 1}, launcher=launcher)  # not started: submitting is what is tested
    try:
        with pytest.raises(InputError) as refused:
            _lipsync(Running(broker, launcher, settings, spaces), _speech(tmp_path, 6.0))
        assert "this job needs about 18 s of GPU time (6 seconds of speech x the default 3 s per unit)" in str(
            refused.value
        )
        assert "more than the 15 s one ZeroGPU call may ask for here (AVATARBENCH_ZEROGPU_MAX_SECONDS)" in str(
            refused.value
        )
        assert (
            "Send a shorter input (fewer seconds of speech), or raise AVATARBENCH_ZEROGPU_MAX_SECONDS (at most 300"
            in (str(refused.value))
        )
        assert store.queue() == []  # nothing was queued
        assert _lipsync(Running(broker, launcher, settings, spaces), _speech(tmp_path, 4.0)).status == "queued"  # 12 s
    finally:
        store.close()


def test_each_call_carries_its_visitors_token_and_nothing_keeps_it(running: Running) -> None:
    """spaces reads the visitor from the Gradio request of the call's context: the job thread has none of its own."""
    from ui.jobs import Access

    gr = pytest.importorskip("gradio")
    owner = Access().owner(gr.Request(headers={"x-ip-token": "tok-visitor-a"}, session_hash="visitor-a"))
    assert owner.startswith("session:") and zerogpu.VISITOR_TOKENS.get(owner) == "tok-visitor-a"
    theirs = _finished(running.store, running.broker.submit("echo", {}, GPU, owner).id)
    assert theirs.status == DONE and running.spaces.tokens[-1] == "tok-visitor-a"
    anyones = _finished(running.store, running.broker.submit("echo", {}, GPU, "session:no-token").id)
    assert anyones.status == DONE and running.spaces.tokens[-1] is None  # the Space's own allowance
    kept = json.dumps([dataclasses.asdict(j) for j in running.store.history(500)])
    assert "tok-visitor-a" not in kept and b"tok-visitor-a" not in running.settings.db_path.read_bytes()


def test_quota_and_no_gpu_refusals_tell_the_visitor_what_happened(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    zerogpu.VISITOR_TOKENS.remember("session:visitor-q", "tok-visitor-q")
    monkeypatch.setattr(running.spaces, "refuse", "quota")
    theirs = _finished(running.store, running.broker.submit("echo", {}, GPU, "session:visitor-q").id)
    assert theirs.status == FAILED and theirs.error.startswith("your ZeroGPU time allowance is used up")
    assert "requested vs. 30s left" in theirs.error and "log in to Hugging Face" in theirs.error
    shared = _finished(running.store, running.broker.submit("echo", {}, GPU, "session:no-token").id)
    assert shared.error.startswith("the Space's own ZeroGPU allowance is used up: this job came without a visitor")
    monkeypatch.setattr(running.spaces, "refuse", "nogpu")
    busy = _finished(running.store, running.broker.submit("echo", {}, GPU, "session:visitor-q").id)
    assert busy.status == FAILED and busy.error.startswith("ZeroGPU had no GPU free for this job: every card was busy")


def test_zerogpu_refusals_read_in_plain_words() -> None:
    gr = pytest.importorskip("gradio")
    quota = zerogpu.call_failure(
        gr.Error("You have exceeded your free GPU quota (60s requested vs. 12s left). Try again in 0:20:00"), 60, 120
    )
    assert quota.startswith("your ZeroGPU time allowance is used up")
    assert "(60s requested vs. 12s left)" in quota and "log in to Hugging Face" in quota
    space = zerogpu.call_failure(gr.Error("Space app has reached its GPU limit. Retry later"), 60, 120, visitor=False)
    assert space.startswith("the Space's own ZeroGPU allowance is used up") and "Retry later" in space
    busy = zerogpu.call_failure(gr.Error("No GPU was available after 60s"), 60, 120)
    assert busy.startswith("ZeroGPU had no GPU free for this job") and "Try again in a few minutes" in busy
    other = zerogpu.call_failure(RuntimeError("ZeroGPU API /schedule error: 500"), 60, 120)
    assert other.startswith("ZeroGPU could not run this job: RuntimeError: ZeroGPU API /schedule error: 500")


GPU_RUN = """
import json
from engine.core.settings import load_settings
from engine.jobs.broker import Broker
from engine.jobs.store import JobStore
from engine.jobs.zerogpu import ZeroGpuLauncher
import test_zerogpu as t
import torch

settings = load_settings()
store = JobStore(settings.db_path, settings.data_dir / "blobs")
broker = Broker(store, t.TEST_KINDS, {t.GPU: 1}, poll_s=0.1, launcher=ZeroGpuLauncher(settings)).start()
jobs = [broker.submit("on_the_gpu", {"leak": leak}, t.GPU, t.OWNER) for leak in (False, True)]
done = [t._finished(store, job.id) for job in jobs]
broker.stop(grace_s=5)
print(json.dumps({"jobs": [[j.status, j.error, j.result] for j in done], "app_cuda": torch.cuda.is_initialized()}))
"""


@pytest.mark.gpu
def test_on_a_real_gpu_nvml_is_read_inside_and_a_cuda_tensor_stays_there(tmp_path: Path) -> None:
    """The handlers on a real CUDA device inside the forked GPU function, in a fresh process: as on ZeroGPU, the
    app's side must not have touched CUDA before the fork (this test process has: it asked whether CUDA exists)."""
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join([str(STANDIN), str(root / "tests"), str(root)])
    env = {**os.environ, "PYTHONPATH": path, "SPACES_ZERO_GPU": "true", "AVATARBENCH_DATA_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", GPU_RUN], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    (work_status, work_error, work), (leak_status, leak_error, _) = report["jobs"]
    assert work_status == DONE, work_error
    figures = work["measurement"]
    assert figures["device"] == GPU and figures["peak_allocated_bytes"] > 0
    assert figures["peak_device_used_bytes"] is not None  # NVML read inside the GPU function
    assert any(row[1] is not None for row in figures["telemetry"])  # GPU utilisation sampled there
    assert leak_status == FAILED and "result['frames'] is a torch.Tensor on the GPU" in leak_error
    assert not report["app_cuda"]  # the app's side never initialised CUDA


# -------------------------------------------------------------------------------------------------- the parts


def test_the_stand_in_carries_values_both_ways_and_refuses_cuda_tensors(spaces: Any) -> None:
    def doubled(values: list[int]) -> dict:
        return {"values": [2 * v for v in values], "pid": os.getpid()}

    gpu = spaces.GPU(duration=lambda values: 7 * len(values))(doubled)
    out = gpu([1, 2])
    assert out["values"] == [2, 4] and out["pid"] != os.getpid() and spaces.requested[-1] == 14
    with pytest.raises(spaces.ZeroGpuError, match="a CUDA tensor cannot leave the GPU process"):
        spaces.GPU(lambda: torch.zeros(1).as_subclass(FakeCudaTensor))()
    with pytest.raises(KeyError, match="raised inside"):  # an error inside is raised in the caller
        spaces.GPU(duration=5)(lambda: {}["raised inside"])()
    assert spaces.requested[-2:] == [60, 5]  # the bare decorator asks for ZeroGPU's default


def test_on_zerogpu_needs_the_variable_and_the_package(spaces: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert zerogpu.on_zerogpu()
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert not zerogpu.on_zerogpu()
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(STANDIN)])
    monkeypatch.delitem(sys.modules, "spaces")
    assert not zerogpu.on_zerogpu()
    with pytest.raises(SetupError, match="`spaces` package does not import"):
        ZeroGpuLauncher(load_settings())


@pytest.mark.parametrize("value", ["1", "t", "true", "TRUE", "True"])
def test_zerogpu_is_on_for_the_values_spaces_takes(spaces: Any, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SPACES_ZERO_GPU", value)
    assert zerogpu.on_zerogpu()
    assert spaces.GPU(duration=5)(os.getpid) is not os.getpid  # decorated: it would run in a forked process


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "yes", " true", ""])
def test_zerogpu_is_off_where_spaces_leaves_the_function_bare(
    spaces: Any, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """`spaces` hands back the undecorated function for these: treating them as on ran GPU work in the web process."""
    monkeypatch.setenv("SPACES_ZERO_GPU", value)
    assert not zerogpu.on_zerogpu()
    assert spaces.GPU(duration=5)(os.getpid) is os.getpid


def test_the_gradio_queue_takes_more_than_one_event_on_zerogpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio makes an unset queue size 1 on ZeroGPU: a second waiting event anywhere was "Queue is full"."""
    gr = pytest.importorskip("gradio")
    import app

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert gr.Blocks().queue()._queue.max_size == 1  # what Gradio does when told nothing
    settings = load_settings({"AVATARBENCH_MAX_QUEUED_TOTAL": "300"})
    with gr.Blocks() as demo:
        gr.Markdown("-")
    assert demo.queue(**app.queue_options(settings))._queue.max_size == 300


def test_the_web_process_names_no_card_on_zerogpu(spaces: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `spaces` patches torch in the web process: cuda.is_available() is True and the card it names (an
    A100 MIG slice) is not the one a job gets. The banner, the benchmark tab and the doctor do not ask it."""
    pytest.importorskip("gradio")
    import app
    from engine.core.device import DeviceChoice
    from engine.core.settings import ZEROGPU_CARD
    from engine.system import doctor_gpu
    from ui.bench import _this_card

    def asked(*args: Any) -> Any:
        raise AssertionError("the web process asked torch about a card on ZeroGPU")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build, as a Space's (a CPU build is a problem)
    for name in ("get_device_properties", "get_device_name", "get_device_capability", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, asked)
    choice = DeviceChoice(torch.device("cuda", 0), "auto", "CUDA is available")
    banner = app.device_banner(choice)
    assert ZEROGPU_CARD in banner and "A100" not in banner
    from ui.system import device_info  # the System tab's panel and /device

    assert device_info(choice)["device"] == ZEROGPU_CARD and device_info(choice)["capabilities"] is None
    assert _this_card("cuda:0") is None
    found = doctor_gpu.check_torch(None).found  # type: ignore[arg-type]  # its ZeroGPU branch reads no context
    assert "ZeroGPU (a card attached per job)" in found


def test_the_duration_book() -> None:
    book = DurationBook(max_s=120)
    speech = Length(4.0, "seconds of speech")
    assert book.estimate("lipsync/baseline", speech).seconds == 22  # 10 s + 4 x the default 3 s
    odd = book.estimate("lipsync/baseline", Length(4.1, "seconds of speech"))
    assert (odd.seconds, odd.needed_s) == (23, 13)  # 22.3 s and 12.3 s, rounded up: a short ask is a stopped call
    assert book.estimate("watch", Length(1.0, "jobs")).seconds == 60  # no rate for the kind: ZeroGPU's default
    unknown = book.estimate("lipsync/baseline", Length(None, "seconds of speech"))
    assert unknown.seconds == 120 and "not known" in unknown.basis
    book.observe("lipsync/baseline", Length(2.0, "seconds of speech"), 8.0)  # 4 s per second
    book.observe("lipsync/baseline", Length(2.0, "seconds of speech"), 1.0)  # a warm run does not lower it
    assert book.rate("lipsync/baseline") == 4.0 and book.rate("lipsync/wav2lip") is None
    assert book.estimate("lipsync/baseline", speech).seconds == 34  # 10 + 4 x 4 x 1.5
    assert book.estimate("lipsync/baseline", Length(8.0, "seconds of speech")).seconds == 58
    capped = book.estimate("lipsync/baseline", Length(100.0, "seconds of speech"))
    assert capped.seconds == 120 and "capped by AVATARBENCH_ZEROGPU_MAX_SECONDS=120" in capped.basis
    assert capped.over_cap and capped.needed_s == 400 and not book.estimate("lipsync/baseline", speech).over_cap
    assert not book.estimate("lipsync/baseline", Length(30.0, "seconds of speech")).over_cap  # 120 of 190: it may fit
    at_cap = DurationBook(max_s=34)  # the 34 s ask exactly at the cap is asked in full: nothing was cut
    at_cap.observe("lipsync/baseline", Length(2.0, "seconds of speech"), 8.0)
    exact = at_cap.estimate("lipsync/baseline", speech)
    assert exact.seconds == 34 and "capped" not in exact.basis and not exact.over_cap
    long = DurationBook(max_s=120).estimate("lipsync/musetalk", Length(300.0, "seconds of speech"))
    assert long.over_cap and long.needed_s == 900  # the audit's 300 s of speech: certain to be stopped at 120 s
    assert long.needed_basis == "300 seconds of speech x the default 3 s per unit"
    book.observe_abort("lipsync/wav2lip", Length(4.0, "seconds of speech"), 22)  # a 22 s ask, aborted
    assert book.rate("lipsync/wav2lip") == 11.0  # twice the ask per second: the next ask is bigger


def test_the_duration_book_forgets_a_cold_start_and_learns_nothing_from_an_unknown_length() -> None:
    book, second = DurationBook(max_s=120), Length(1.0, "seconds of speech")
    book.observe("lipsync/baseline", second, 9.0)  # the first job loaded its models
    for _ in range(zerogpu.KEPT_RATES):
        book.observe("lipsync/baseline", second, 2.0)
    assert book.rate("lipsync/baseline") == 2.0  # the slowest of the latest ones, not of every one ever
    book.observe("lipsync/baseline", Length(None, "seconds of speech"), 100.0)  # its header said no length
    assert book.rate("lipsync/baseline") == 2.0


def test_the_maximum_duration_setting() -> None:
    assert load_settings({}).zerogpu_max_s == 120
    assert load_settings({"AVATARBENCH_ZEROGPU_MAX_SECONDS": "300"}).zerogpu_max_s == 300
    for bad in ("5", "abc", "90000", "1.5"):
        with pytest.raises(SettingsError, match="ZEROGPU_MAX_SECONDS"):
            load_settings({"AVATARBENCH_ZEROGPU_MAX_SECONDS": bad})
    with pytest.raises(SettingsError, match=r"=301 is more than ZeroGPU lets one call ask for \(300 s.*10\.\.300"):
        load_settings({"AVATARBENCH_ZEROGPU_MAX_SECONDS": "301"})


def _job(settings: dict) -> Job:
    return Job("j", "bench", None, settings, GPU, "running", 0.0, "", None, None, 0.0, None, None)


def test_torch_compile_is_left_out_of_sweeps() -> None:
    points = [{"runtime": r, "batch": 1} for r in ("compile", "eager", "compile", "ort-cuda")]
    job, warnings = zerogpu.without_compile(_job({"sweep": {"points": points, "baseline": 3}}))
    assert [p["runtime"] for p in job.settings["sweep"]["points"]] == ["eager", "ort-cuda"]
    assert job.settings["sweep"]["baseline"] == 1 and warnings == [
        "2 torch.compile configuration(s) left out of this sweep: ZeroGPU does not support torch.compile"
    ]
    job, warnings = zerogpu.without_compile(_job({"sweep": {"points": points, "baseline": 0}}))
    assert job.settings["sweep"]["baseline"] == 0  # its baseline was left out: the first kept one instead
    with pytest.raises(InputError, match=r"every configuration of this sweep uses torch\.compile"):
        zerogpu.without_compile(_job({"sweep": {"points": [points[0]]}}))
    for off in (False, None, "", "false", "off", "0", "no"):  # the ways a form or a request says no: no warning
        plain = _job({"options": {"compile": off}})
        assert zerogpu.without_compile(plain) == (plain, [])


def test_plain_data_and_what_is_not() -> None:
    assert zerogpu.not_plain({"a": [1, 2.5, None, True, "x", (3,)], 4: {"b": float("nan")}}) is None
    assert zerogpu.not_plain({"a": np.float32(1)}) == "result['a'] is a numpy.float32"
    assert zerogpu.not_plain({"t": torch.zeros(1)}) == "result['t'] is a torch.Tensor on cpu"
    assert zerogpu.not_plain({(1, 2): 3}) == "result has a key that is a builtins.tuple"

    def nested(levels: int) -> list:
        value: list = []
        for _ in range(levels - 1):
            value = [value]
        return value

    assert zerogpu.not_plain(nested(65)) is None  # the deepest list at depth 64: still walked
    assert zerogpu.not_plain(nested(100)) == "result" + "[0]" * 65 + " nests deeper than 64 levels"


def test_the_telemetry_panel_shows_the_latest_gpu_function_samples(running: Running) -> None:
    job = _finished(running.store, running.broker.submit("echo", {}, GPU, OWNER).id)
    panel = zerogpu.telemetry_panel(running.store, limit=1)
    assert "attached only while a job runs" in panel.note and len(panel.jobs) == 1
    latest = panel.jobs[0]
    assert latest["kind"] == "echo" and latest["asked_s"] == job.result["zerogpu"]["asked_s"]
    assert latest["telemetry"] == job.result["measurement"]["telemetry"] and latest["samples"] > 0
    assert "job" not in latest and "owner" not in latest  # the panel is everyone's: never whose job it was


def test_the_app_runs_gpu_jobs_through_zerogpu_and_its_panel_says_so(spaces: Any, tmp_path: Path) -> None:
    """app.job_workers on a ZeroGPU Space: one "cuda:0" slot through @spaces.GPU beside the CPU workers; the
    telemetry panel adds ZeroGPU's note."""
    pytest.importorskip("gradio")
    import app
    from engine.jobs.zerogpu import ZeroGpuPanel
    from ui.telemetry import zerogpu_html

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_CPU_WORKERS": "2"})
    with JobStore(settings.db_path, tmp_path / "blobs") as store:
        workers, placement, pool = app.job_workers(settings, store)
    assert workers == {"cuda:0": 1, "cpu": 2} and pool is None
    assert isinstance(placement["launcher"], ZeroGpuLauncher)
    job = {"kind": "lipsync", "finished": 0.0, "asked_s": 34, "ran_s": 12.5, "samples": 250,
           "peak_device_used_bytes": 3 * 2**30, "energy_j": 1800.0}  # fmt: skip
    shown = zerogpu_html(ZeroGpuPanel("the GPU is attached only while a job runs", [job]))
    assert "attached only while a job runs" in shown and "<td>12.5 of 34 s</td>" in shown and "3.0 GiB" in shown
    assert "<table" not in zerogpu_html(ZeroGpuPanel("no job yet", []))


def test_visitor_tokens_forget_the_least_recently_seen_owner_first() -> None:
    """Bounded memory, and a visitor who came back keeps their token (their jobs count against their own quota)."""
    tokens = zerogpu.VisitorTokens(limit=2)
    tokens.remember("alice", "a1")
    tokens.remember("bob", "b1")
    tokens.remember("alice", "a2")  # alice again: now the most recently seen
    tokens.remember("carol", "c1")
    assert (tokens.get("alice"), tokens.get("bob"), tokens.get("carol")) == ("a2", None, "c1")


def test_a_rate_is_kept_per_engine_and_a_sweep_is_as_long_as_its_configurations() -> None:
    """MuseTalk is not Wav2Lip: each engine learns its own rate; a sweep asks for time per configuration."""
    musetalk = dataclasses.replace(_job({"options": {"engine": "musetalk"}}), kind="lipsync")
    assert zerogpu.cost_key(musetalk) == "lipsync/musetalk" and zerogpu.cost_key(_job({})) == "bench"
    sweep = _job({"sweep": {"points": [{"runtime": "eager"}] * 3}})
    assert zerogpu.job_length(sweep, None) == Length(3.0, "sweep configurations")  # type: ignore[arg-type]


def test_a_templates_length_is_its_frames_at_its_rate_up_to_the_frames_asked_for(tmp_path: Path) -> None:
    template = tmp_path / "template.npz"
    np.savez(template, fps=np.array(10.0), motion=np.zeros((50, 3)))  # 5 s at its own 10 fps
    assert zerogpu.media_seconds(template, "motion.npz") == 5.0
    assert zerogpu.media_seconds(template, "motion.npz", max_frames=20) == 2.0
    assert zerogpu.media_seconds(template, "motion.npz", max_frames=500) == 5.0  # no longer than it is
    assert zerogpu.media_seconds(template, "motion.pkl") is None  # unknown (only the room's reader opens those)


def test_a_portrait_jobs_length_is_its_driving_motion_up_to_the_frames_it_asks_for(tmp_path: Path) -> None:
    """The ask follows the frames the job will animate: a long driving template cut at max_frames asks for less."""
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    template = tmp_path / "template.npz"
    np.savez(template, fps=np.array(10.0), motion=np.zeros((50, 3)))
    driving = {"sha256": store.put_blob(template), "name": "motion.npz"}
    job = dataclasses.replace(_job({"files": {"driving": driving}, "options": {}}), kind="portrait")
    assert zerogpu.job_length(job, store) == Length(5.0, "seconds of driving motion")
    cut = dataclasses.replace(job, settings={"files": {"driving": driving}, "options": {"max_frames": 20}})
    assert zerogpu.job_length(cut, store) == Length(2.0, "seconds of driving motion")


def test_only_gpu_jobs_are_held_to_one_calls_gpu_time(tmp_path: Path) -> None:
    """Two result rows at the default 8 s each need 16 s, past a 15 s cap: refused on the GPU, run on the CPU."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    launcher = ZeroGpuLauncher(settings, max_duration_s=15, gpu=lambda call: {"error": "never called"})
    job = {"options": {"providers": "cuda tensorrt", "batch_sizes": "1"}}
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        with pytest.raises(InputError, match=r"needs about 16 s of GPU time \(2 result rows"):
            launcher.admit("onnx_eval", job, GPU, store)
        launcher.admit("onnx_eval", job, CPU, store)


def test_a_visitor_without_a_token_keeps_none_and_a_calls_request_ends_with_it() -> None:
    """A request without X-IP-Token (or none at all) stores nothing for its owner: no empty token is sent as theirs.
    The request context made for one GPU call is gone once the call returns, so the next call on that thread
    cannot count against that visitor's quota."""
    gr = pytest.importorskip("gradio")
    from gradio.context import LocalContext

    from ui.zerogpu import remember_visitor_token, visitor_request

    remember_visitor_token("session:tokenless", gr.Request(headers={"x-ip-token": ""}))
    remember_visitor_token("session:tokenless", None)
    assert zerogpu.VISITOR_TOKENS.get("session:tokenless") is None
    remember_visitor_token("session:with-token", gr.Request(headers={"x-ip-token": "tok-c"}))
    assert zerogpu.VISITOR_TOKENS.get("session:with-token") == "tok-c"
    before = LocalContext.request.get(None)
    with visitor_request("tok-c"):
        assert LocalContext.request.get().headers["x-ip-token"] == "tok-c"
    assert LocalContext.request.get(None) is before
    with visitor_request(None):
        assert LocalContext.request.get(None) is before
