"""engine.onnx.jobs: submit-time refusals, queues per device, running through the JobRunner, restarts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import cv2
from tiny_onnx import W, colour_classifier, mlp

from engine.core.settings import load_settings
from engine.jobs.runner import JobRunner
from engine.jobs.store import CPU, DONE, FAILED, QUEUED, JobStore, StoreError
from engine.onnx.config import EvalConfig, EvalError
from engine.onnx.jobs import KIND, OnnxEvalJobs, Submission
from engine.onnx.model import ModelError

FAST = {"runs": 3, "warmup": 0, "intra_op_threads": 1}


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})


def _jobs(settings, gpu: str | None = None) -> OnnxEvalJobs:
    return OnnxEvalJobs(JobStore(settings.db_path, settings.data_dir / "blobs"), settings, gpu)


def _submit(jobs: OnnxEvalJobs, **values) -> Submission:
    """As the API and the tab submit: raw values built into the config, then queued."""
    return jobs.submit(EvalConfig.build(values))


def _wait(jobs: OnnxEvalJobs, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.status(job_id)
        if status["status"] in (DONE, FAILED):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {jobs.status(job_id)}")


def test_submit_runs_and_keeps_the_report(settings, tmp_path: Path) -> None:
    jobs = _jobs(settings)
    runner = JobRunner(jobs.store, {KIND: jobs.handle}, cpu_workers=1, poll_s=5)
    jobs.wake = runner.wake
    runner.start([CPU])
    try:
        model = mlp(tmp_path / "upload.onnx")
        x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
        expected = tmp_path / "expected.npz"
        np.savez(expected, y=np.maximum(x @ W + np.array([0.1, -0.2, 0.3], np.float32), 0), k2=np.zeros((2, 1)))
        inputs = tmp_path / "inputs.npz"
        np.savez(inputs, x=x)
        sub = _submit(jobs, batch_sizes="2,4", model=model, inputs=inputs, expected=expected, **FAST)
        status = _wait(jobs, sub.job.id)  # wake() starts it at once: a 5 s poll would time the test out here
        assert status["status"] == DONE, status["error"]
        result = jobs.result(sub.job.id)
        report = result["report"]
        assert [(r["provider"], r["batch"]) for r in report["results"]] == [("cpu", 2), ("cpu", 4)]
        assert report["accuracy"]["expected"]["cpu"]["y"]["max_error"] < 1e-6
        assert report["inspection"]["name"] == "upload.onnx" and "path" not in report["inspection"]
        assert report["config"]["inputs"] == sub.job.settings["files"]["inputs"]  # a hash, not a path
        assert report["config"]["model"] == result["model_sha256"]
        assert report["job"]["id"] == sub.job.id and result["model_name"] == "upload.onnx"
        assert jobs.store.blob_path(result["model_sha256"]).read_bytes() == model.read_bytes()
        assert [h["id"] for h in jobs.history()] == [sub.job.id] and jobs.queue() == []
    finally:
        runner.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"providers": "gpu"}, "providers 'gpu' is not one of"),
        ({"inputs_npz": "/etc/passwd"}, "unknown option"),
        ({"gpu_memory_fraction": 1.0}, "unknown option"),
        ({"batchsize": 2}, "unknown option"),
        ({"runs": 0}, "runs"),
        ({"labels": "1,2,3"}, "3 labels"),
        ({"symbols": "N=3"}, "batch dimension"),
    ],
)
def test_bad_settings_are_refused_at_submit_and_nothing_is_queued(settings, tmp_path: Path, options, message) -> None:
    jobs = _jobs(settings)
    with pytest.raises(ValueError, match=message):
        _submit(jobs, model=mlp(tmp_path / "m.onnx"), **options)
    assert jobs.store.history() == []


def test_bad_uploads_are_refused_at_submit(settings, tmp_path: Path) -> None:
    jobs = _jobs(settings)
    text = tmp_path / "model.onnx"
    text.write_text("<html>not a model</html>")
    with pytest.raises(ModelError, match="not an ONNX model"):
        _submit(jobs, model=text)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp(tmp_path / "whole.onnx").read_bytes()[:-20])
    with pytest.raises(ModelError):
        _submit(jobs, model=cut)
    with pytest.raises(EvalError, match="either a model"):
        _submit(jobs, model=cut, example="wav2lip")
    with pytest.raises(EvalError, match="example 'resnet' is not one of wav2lip, s3fd"):
        _submit(jobs, example="resnet")
    assert jobs.store.history() == []


def test_gpu_providers_choose_the_gpu_queue_only_where_a_gpu_exists(settings, tmp_path: Path) -> None:
    model = mlp(tmp_path / "m.onnx")
    on_gpu = _jobs(settings, gpu="cuda:1")
    assert _submit(on_gpu, providers="cpu,cuda", model=model).job.device == "cuda:1"
    assert _submit(on_gpu, providers="cpu", model=model).job.device == CPU
    cpu_only = _jobs(settings)
    sub = _submit(cpu_only, providers="trt", model=model)
    assert sub.job.device == CPU and any("no CUDA device" in w for w in sub.warnings)
    positions = [(s["device"], s["position"]) for s in cpu_only.queue()]
    assert positions == [("cuda:1", 1), (CPU, 1), (CPU, 2)]
    assert cpu_only.store.blob_path(sub.job.model_sha256)  # the model is stored once for all three


def test_images_are_stored_and_used_by_the_job(settings, tmp_path: Path) -> None:
    jobs = _jobs(settings)
    model = colour_classifier(tmp_path / "colours.onnx")
    paths = []
    for i, bgr in enumerate(((0, 0, 255), (255, 0, 0))):
        image = np.zeros((20, 20, 3), np.uint8)
        image[:] = bgr
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
        paths.append(tmp_path / f"{i}.png")
    sub = _submit(jobs, batch_sizes="2", labels="0,2", model=model, images=paths, **FAST)
    job = jobs.store.claim_next(CPU)
    report = jobs.handle(job, lambda f, label: None)
    assert report["accuracy"]["topk"]["cpu"]["top1"] == 1.0
    assert report["input_source"] == {"image": "images"}
    assert report["config"]["images"] == sub.job.settings["files"]["images"]


def test_queued_jobs_survive_a_restart_and_run_after_it(settings, tmp_path: Path) -> None:
    first = _jobs(settings)
    model = mlp(tmp_path / "m.onnx")
    running = _submit(first, model=model, **FAST).job
    waiting = _submit(first, model=model, **FAST).job
    assert first.store.claim_next(CPU).id == running.id  # "running" when the process dies
    first.store.close()

    again = _jobs(settings)
    assert again.store.recover() == 1
    runner = JobRunner(again.store, {KIND: again.handle}, cpu_workers=1, poll_s=0.05)
    runner.start([CPU])
    try:
        assert _wait(again, waiting.id)["status"] == DONE
    finally:
        runner.stop()
    died = again.status(running.id)
    assert died["status"] == FAILED and "app stopped" in died["error"]


def test_result_of_unknown_or_other_jobs(settings) -> None:
    jobs = _jobs(settings)
    with pytest.raises(StoreError, match="no job"):
        jobs.result("123456789abc")
    other = jobs.store.submit("bench", {}, CPU)
    with pytest.raises(StoreError, match="not an ONNX evaluation"):
        jobs.result(other.id)
    assert jobs.status(other.id)["status"] == QUEUED
