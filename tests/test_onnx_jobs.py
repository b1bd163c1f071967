"""engine.onnx.jobs: submit-time refusals, placement per device, the worker's handler, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import cv2
from tiny_onnx import W, colour_classifier, huge_output, mlp

from engine.core.errors import InputError
from engine.core.settings import Settings, load_settings
from engine.jobs.broker import Broker
from engine.jobs.store import CANCELLED, CPU, DONE, FAILED, QUEUED, JobStore, StoreError
from engine.jobs.worker import WorkerContext, run_job
from engine.onnx.config import EvalConfig, EvalError
from engine.onnx.jobs import KIND, OnnxEvalJobs, Submission
from engine.onnx.model import ModelError

FAST = {"runs": 3, "warmup": 0, "intra_op_threads": 1}
OWNER = "tester"
HANDLERS = {KIND: "engine.onnx.jobs:handle"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    with JobStore(settings.db_path, settings.data_dir / "blobs") as s:
        yield s


def _jobs(store: JobStore, settings: Settings, devices: tuple[str, ...] = (CPU,)) -> OnnxEvalJobs:
    """The submit side; its broker's workers are never started: a test runs a claimed job itself (_run_next)."""
    return OnnxEvalJobs(Broker(store, HANDLERS, dict.fromkeys(devices, 1)), settings)


def _submit(jobs: OnnxEvalJobs, **values) -> Submission:
    """As the API and the tab submit: raw values built into the config, then queued."""
    return jobs.submit(EvalConfig.build(values), OWNER)


def _run_next(jobs: OnnxEvalJobs, device: str = CPU) -> dict:
    """Claim the device's next job and run it here, as its worker process would; returns its status."""
    job = jobs.store.claim_next(device)
    assert job is not None
    run_job(job, WorkerContext(jobs.store, jobs.settings, device), HANDLERS)
    return jobs.status(job.id, OWNER)


def test_submit_runs_and_keeps_the_report(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    jobs = _jobs(store, settings)
    model = mlp(tmp_path / "upload.onnx")
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    expected = tmp_path / "expected.npz"
    np.savez(expected, y=np.maximum(x @ W + np.array([0.1, -0.2, 0.3], np.float32), 0), k2=np.zeros((2, 1)))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x)
    sub = _submit(jobs, batch_sizes="2,4", model=model, inputs=inputs, expected=expected, **FAST)
    status = _run_next(jobs)
    assert status["status"] == DONE, status["error"]
    result = jobs.result(sub.job.id, OWNER)
    report = result["report"]
    assert [(r["provider"], r["batch"]) for r in report["results"]] == [("cpu", 2), ("cpu", 4)]
    assert report["accuracy"]["expected"]["cpu"]["y"]["max_error"] < 1e-6
    assert report["inspection"]["name"] == "upload.onnx" and "path" not in report["inspection"]
    assert report["config"]["inputs"] == sub.job.settings["files"]["inputs"]  # a hash, not a path
    assert report["config"]["model"] == result["model_sha256"]
    assert report["job"]["id"] == sub.job.id and result["model_name"] == "upload.onnx"
    assert jobs.store.blob_path(result["model_sha256"]).read_bytes() == model.read_bytes()
    assert [h["id"] for h in jobs.history(OWNER)] == [sub.job.id] and jobs.queue(OWNER) == []
    with pytest.raises(StoreError, match="no job"):  # another owner's job is no job at all
        jobs.result(sub.job.id, "someone else")


class _Killed(BaseException):
    """What the broker's SIGKILL is to a worker: nothing after it runs in the process."""


def test_an_evaluation_stopped_on_the_way_keeps_the_providers_it_finished(
    store: JobStore, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluation cancelled or out of time (a TensorRT engine build, say) lost the rows it had measured on the
    providers before; each provider's rows are now stored as they are finished."""
    from engine.onnx.report import PARTIAL_NOTE
    from engine.onnx.runner import Runner

    pytest.importorskip("gradio")
    from ui.onnx_eval import status_markdown

    jobs = _jobs(store, settings)
    sub = _submit(jobs, providers="cpu,cuda", batch_sizes="2,4", model=mlp(tmp_path / "m.onnx"), **FAST)
    real = Runner.run_provider

    def killed_at_cuda(runner, key: str, reference_only: bool) -> None:
        if key == "cuda":
            raise _Killed
        real(runner, key, reference_only)

    monkeypatch.setattr(Runner, "run_provider", killed_at_cuda)
    with pytest.raises(_Killed):
        _run_next(jobs)
    store.fail(sub.job.id, "cancelled by its owner while it ran", CANCELLED)  # as the broker does once it killed it
    result = jobs.result(sub.job.id, OWNER)
    report = result["report"]
    assert [(r["provider"], r["batch"]) for r in report["results"]] == [("cpu", 2), ("cpu", 4)]
    assert report["notes"][0] == f"{PARTIAL_NOTE}: cpu of cpu, cuda measured"
    assert list(report["parity"]) == ["cpu"] and report["job"]["id"] == sub.job.id and report["inspection"]["name"]
    assert "The 2 result row(s) it finished are below" in status_markdown(jobs.status(sub.job.id, OWNER))
    monkeypatch.setattr(Runner, "run_provider", real)
    whole = _submit(jobs, providers="cpu,cuda", batch_sizes="2", model=mlp(tmp_path / "m.onnx"), **FAST)
    assert _run_next(jobs)["status"] == DONE
    assert not any(PARTIAL_NOTE in n for n in jobs.result(whole.job.id, OWNER)["report"]["notes"])


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
        ({"image_input": "x", "image_scaling": "imagenet"}, "no images were given, so image input, image scaling"),
        ({"trt_fp16": True}, r"trt fp16 applies to the trt provider, not asked for \(cpu\): add it"),
        ({"providers": "cpu", "cuda_tf32": True}, "cuda tf32 applies to the cuda or trt provider, not asked for"),
    ],
)
def test_bad_settings_are_refused_at_submit_and_nothing_is_queued(
    store: JobStore, settings: Settings, tmp_path: Path, options, message
) -> None:
    jobs = _jobs(store, settings)
    with pytest.raises(ValueError, match=message):
        _submit(jobs, model=mlp(tmp_path / "m.onnx"), **options)
    assert store.history() == []


def test_a_10_gib_output_is_refused_at_submit_and_nothing_is_queued(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    jobs = _jobs(store, settings)
    model = huge_output(tmp_path / "huge.onnx")  # y [N, 2684354560] float32: 10 GiB at N=1
    assert model.stat().st_size < 1024
    message = r"outputs too large: at batch size 1 .* over the limit of 1\.0 GiB\. One run returns 10\.0 GiB \('y'"
    with pytest.raises(EvalError, match=message):
        _submit(jobs, model=model, **FAST)
    assert store.history() == [] and not [p for p in store.blobs_dir.rglob("*") if p.is_file()]


def test_bad_uploads_are_refused_at_submit(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    jobs = _jobs(store, settings)
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
    assert store.history() == []


def test_gpu_providers_choose_the_gpu_queue_only_where_a_gpu_exists(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    model = mlp(tmp_path / "m.onnx")
    on_gpu = _jobs(store, settings, devices=("cuda:1", CPU))
    assert _submit(on_gpu, providers="cpu,cuda", model=model).job.device == "cuda:1"
    assert _submit(on_gpu, providers="cpu", model=model).job.device == CPU
    cpu_only = _jobs(store, settings)
    sub = _submit(cpu_only, providers="trt", model=model)
    assert sub.job.device == CPU and any("no CUDA device" in w for w in sub.warnings)
    positions = [(s["device"], s["position"]) for s in cpu_only.queue(OWNER)]
    assert positions == [("cuda:1", 1), (CPU, 1), (CPU, 2)]
    assert store.blob_path(sub.job.model_sha256)  # the model is stored once for all three


def test_seven_evaluations_share_a_gpu_with_a_seventh_of_its_memory_each(
    store: JobStore, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AVATARBENCH_WORKERS_PER_GPU=1,onnx_eval=7: an evaluation on the GPU is not timed (it shares the card, and its
    report says so), takes 1/7 of it, and ONNX Runtime's arena cap (gpu_mem_limit) is 1/7 of the memory fraction."""
    import engine.onnx.jobs as onnx_jobs

    model = mlp(tmp_path / "m.onnx")
    shared = OnnxEvalJobs(Broker(store, HANDLERS, {"cuda:0": 7, CPU: 1}, per_gpu={"default": 1, KIND: 7}), settings)
    sub = _submit(shared, providers="cpu,cuda", model=model)
    assert sub.job.device == "cuda:0" and not sub.job.timed and sub.job.share == pytest.approx(1 / 7)
    assert any("shared by up to 7 evaluations" in w for w in sub.warnings)
    alone = _submit(shared, providers="cpu", model=model)
    assert alone.job.device == CPU and alone.job.timed  # the CPU is never shared by a measurement
    seen = []
    monkeypatch.setattr(onnx_jobs, "evaluate", lambda *a, placement, **k: seen.append(placement) or {"config": {}})
    job = store.claim_next("cuda:0", max_running=7)
    run_job(job, WorkerContext(store, settings, CPU), HANDLERS)  # the GPU's job, run on this machine's CPU
    assert seen and seen[0].gpu_memory_fraction == pytest.approx(settings.gpu_memory_fraction / 7)


def test_images_are_stored_and_used_by_the_job(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    jobs = _jobs(store, settings)
    model = colour_classifier(tmp_path / "colours.onnx")
    paths = []
    for i, bgr in enumerate(((0, 0, 255), (255, 0, 0))):
        image = np.zeros((20, 20, 3), np.uint8)
        image[:] = bgr
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
        paths.append(tmp_path / f"{i}.png")
    sub = _submit(jobs, batch_sizes="2", labels="0,2", model=model, images=paths, **FAST)
    assert _run_next(jobs)["status"] == DONE
    report = jobs.result(sub.job.id, OWNER)["report"]
    assert report["accuracy"]["topk"]["cpu"]["top1"] == 1.0
    assert report["input_source"] == {"image": "images"}
    assert report["config"]["images"] == sub.job.settings["files"]["images"]


def test_queued_jobs_survive_a_restart_and_run_after_it(settings: Settings, tmp_path: Path) -> None:
    model = mlp(tmp_path / "m.onnx")
    with JobStore(settings.db_path, settings.data_dir / "blobs") as first:
        jobs = _jobs(first, settings)
        running = _submit(jobs, model=model, **FAST).job
        waiting = _submit(jobs, model=model, **FAST).job
        assert first.claim_next(CPU).id == running.id  # "running" when the process dies

    with JobStore(settings.db_path, settings.data_dir / "blobs") as again:
        assert again.recover() == 1
        jobs = _jobs(again, settings)
        ran = _run_next(jobs)
        assert ran["id"] == waiting.id and ran["status"] == DONE
        died = jobs.status(running.id, OWNER)
    assert died["status"] == FAILED and "app stopped" in died["error"]


def test_result_of_unknown_or_other_jobs(store: JobStore, settings: Settings) -> None:
    jobs = _jobs(store, settings)
    with pytest.raises(StoreError, match="no job"):
        jobs.result("123456789abc", OWNER)
    other = store.submit("bench", {}, CPU, owner=OWNER)
    with pytest.raises(StoreError, match=r"not of kind onnx_eval \(it is bench\)"):
        jobs.result(other.id, OWNER)
    assert store.get(other.id).status == QUEUED


def test_every_read_of_a_kind_finds_another_owners_job_no_job(store: JobStore, settings: Settings) -> None:
    """Guards the owner each JobKind read passes on: status, result, files, live stream and cancel of another
    owner's job say "no job" (the web routes check first too, but the kinds are the API the app is built on) and
    leave it queued; its owner and the operator (None) read it."""
    from engine.lipsync.jobs import LipSyncJobs

    jobs = LipSyncJobs(Broker(store, {}, {CPU: 1}), settings)  # never started: the job stays queued
    files = {name: {"sha256": "0" * 64, "name": f"{name}.bin"} for name in ("face", "audio")}
    theirs = store.submit("lipsync", {"options": {}, "files": files}, CPU, owner="alice").id
    reads = {
        "status": jobs.status, "result": jobs.result, "output_files": jobs.output_files, "live": jobs.live,
        "cancel": jobs.cancel,
    }  # fmt: skip
    for name, read in reads.items():
        with pytest.raises(StoreError, match=f"no job {theirs}"):
            read(theirs, "bob")
            pytest.fail(f"{name} read another owner's job")
    assert store.get(theirs).status == QUEUED
    for reader in ("alice", None):
        assert jobs.status(theirs, reader)["face"] == "face.bin"  # each input by the name it came with


def test_one_owner_may_have_only_so_many_jobs_waiting(settings: Settings, tmp_path: Path) -> None:
    """Forty sweeps from one session held every other visitor's job for hours: AVATARBENCH_MAX_QUEUED_JOBS."""
    from dataclasses import replace

    from engine.bench.config import SweepRequest
    from engine.bench.jobs import BenchJobs

    capped = replace(settings, max_queued_jobs=2)
    with JobStore(capped.db_path, capped.data_dir / "blobs") as store:
        jobs = OnnxEvalJobs(Broker(store, {**HANDLERS, "bench": "engine.bench.jobs:handle"}, {CPU: 1}), capped)
        model = str(mlp(tmp_path / "m.onnx"))
        first, second = _submit(jobs, model=model).job, _submit(jobs, model=model).job
        bench = BenchJobs(jobs.broker, capped)
        for submit in (lambda: _submit(jobs, model=model), lambda: bench.submit(SweepRequest.build({}), OWNER)):
            with pytest.raises(InputError, match=r"you have 2 jobs waiting .* \(2, AVATARBENCH_MAX_QUEUED_JOBS\)"):
                submit()  # of every kind
        assert bench.submit(SweepRequest.build({}), "someone else")  # theirs is their own count
        assert store.claim_next(CPU).id == first.id  # a running job is not waiting
        assert _submit(jobs, model=model).job
        jobs.cancel(second.id, OWNER)
        assert _submit(jobs, model=model).job
        assert len([j for j in store.queue(OWNER) if j.status == QUEUED]) == 2


def test_a_kinds_reads_show_its_owner_only_their_jobs_of_its_kind_and_their_place_in_line(
    store: JobStore, settings: Settings
) -> None:
    """The queue lists the owner's jobs of this kind only (not another owner's, not a sweep's); a queued job's status
    counts the jobs ahead of it among everyone's and, first in line or not, what runs on its device; cancelling a
    sweep through the ONNX kind is "not of kind" and leaves it queued."""
    jobs = _jobs(store, settings)
    theirs = [store.submit(KIND, {}, CPU, owner="someone else") for _ in range(2)]
    mine = store.submit(KIND, {}, CPU, owner=OWNER)
    sweep = store.submit("bench", {}, CPU, owner=OWNER)
    assert [j["id"] for j in jobs.queue(OWNER)] == [mine.id]
    waiting = jobs.status(mine.id, OWNER)
    assert (waiting["position"], waiting["ahead"], waiting["running"]) == (3, 2, 0)
    assert store.claim_next(CPU).id == theirs[0].id
    waiting = jobs.status(mine.id, OWNER)
    assert (waiting["position"], waiting["ahead"], waiting["running"]) == (2, 1, 1)
    running = jobs.status(theirs[0].id, None)  # the operator's view of a running job: nothing to wait for
    assert (running["status"], running["position"], running["ahead"], running["running"]) == ("running", None, 0, 0)
    with pytest.raises(StoreError, match=r"not of kind onnx_eval \(it is bench\)"):
        jobs.cancel(sweep.id, OWNER)
    assert store.get(sweep.id).status == QUEUED


def test_the_queue_view_shows_your_jobs_in_full_and_everyone_elses_as_counts(store: JobStore) -> None:
    """Another owner's jobs are counts only, queued and running apart; the operator (None) sees every job in full."""
    from engine.jobs.kinds import queue_view

    alice = [store.submit(KIND, {}, CPU, owner="alice") for _ in range(3)]
    bob = store.submit(KIND, {}, CPU, owner="bob")
    store.claim_next(CPU)  # alice's first runs; two of hers and bob's wait
    view = queue_view(store, "bob")
    assert [j["id"] for j in view["yours"]] == [bob.id] and view["yours"][0]["position"] == 3
    assert (view["others_queued"], view["others_running"]) == (2, 1)
    everyone = queue_view(store, None)
    assert [j["id"] for j in everyone["yours"]] == [*(j.id for j in alice), bob.id]
    assert (everyone["others_queued"], everyone["others_running"]) == (0, 0)


def test_the_tabs_status_line_and_history_show_the_jobs_own_figures() -> None:
    """The place in its device's queue, the percentage done, the time the evaluation itself took (not its wait in
    the queue) and the best samples/s of the history's column."""
    pytest.importorskip("gradio")
    from ui.onnx_eval import _best_throughput, status_markdown

    job = {"id": "j1", "model_name": "mlp", "device": "cpu", "error": None, "created": 0.0}
    queued = status_markdown({**job, "status": "queued", "position": 3})
    assert queued == "Job `j1` · **queued** · mlp on `cpu` · position 3 in the `cpu` queue"
    running = status_markdown({**job, "status": "running", "progress": 0.25, "progress_label": "cpu batch 1"})
    assert running == "Job `j1` · **running** · mlp on `cpu` · 25% · cpu batch 1"
    assert status_markdown({**job, "status": DONE, "started": 100.0, "finished": 112.5}).endswith(" in 12.5s")
    rows = [{"samples_per_s": 10.04}, {"samples_per_s": 99.94}, {"samples_per_s": None}]
    assert _best_throughput({"results": rows}) == 99.9 and _best_throughput(None) == ""


def test_the_history_is_the_owners_own_fifty_newest_and_an_unreadable_row_says_so(
    store: JobStore, settings: Settings
) -> None:
    """Guards history's owner (another owner's job is never listed), its default of 50 rows, the kind's own summary
    fields, and a record this version cannot read shown as such (its exception's type) rather than breaking the list."""
    jobs = _jobs(store, settings)
    mine = [store.submit(KIND, {"model_name": f"m{i}.onnx"}, CPU, owner=OWNER) for i in range(51)]
    store.submit(KIND, {}, CPU, owner="someone else")  # the newest of all
    shown = jobs.history(OWNER)
    assert [row["id"] for row in shown] == [j.id for j in reversed(mine[1:])]
    assert shown[0]["model_name"] == "m50.onnx"
    damaged = store.submit(KIND, {"options": "not a mapping"}, CPU, owner=OWNER)
    row = jobs.history(OWNER, limit=1)[0]
    assert row["id"] == damaged.id and row["error"] == "this job's record cannot be read (AttributeError)"


def test_a_queued_record_this_version_cannot_read_leaves_the_queue_and_cancel_working(
    store: JobStore, settings: Settings
) -> None:
    """The ONNX tab's queue and the Cancel button (which cancels the owner's queued jobs one by one) read the queue:
    a queued record this version cannot read (damaged, or written by another version) is shown as such, as the
    history shows it, and cancelled, rather than an internal error that kept every other queued job too."""
    jobs = _jobs(store, settings)
    damaged = store.submit(KIND, {"options": "not a mapping"}, CPU, owner=OWNER)
    fine = store.submit(KIND, {"model_name": "m.onnx"}, CPU, owner=OWNER)
    unreadable = "this job's record cannot be read (AttributeError)"
    assert [(row["id"], row["error"]) for row in jobs.queue(OWNER)] == [(damaged.id, unreadable), (fine.id, None)]
    cancelled = jobs.cancel(damaged.id, OWNER)
    assert (cancelled["id"], cancelled["status"], cancelled["error"]) == (damaged.id, CANCELLED, unreadable)


def test_a_stopped_or_waiting_jobs_files_are_refused_with_its_status(store: JobStore, settings: Settings) -> None:
    """Guards output_files' refusals: a cancelled job "was cancelled" (with its reason) and has no files; a queued
    one's come once it is done; neither is an empty dict."""
    jobs = _jobs(store, settings)
    waiting, stopped = (store.submit(KIND, {}, CPU, owner=OWNER) for _ in range(2))
    jobs.cancel(stopped.id, OWNER)
    with pytest.raises(InputError, match=r"was cancelled \(cancelled by its owner before it started\) and has no fil"):
        jobs.output_files(stopped.id, OWNER)
    with pytest.raises(InputError, match=f"job {waiting.id} is queued: its files come once it is done"):
        jobs.output_files(waiting.id, OWNER)


def test_avatarbench_device_places_a_job_where_it_names(store: JobStore, settings: Settings) -> None:
    """Guards JobKind.place: AVATARBENCH_DEVICE=cpu keeps a GPU job on the CPU and cuda:1 picks that GPU over the
    least-loaded cuda:0; any other value leaves the choice to the broker."""
    from dataclasses import replace

    devices = ("cuda:0", "cuda:1", CPU)
    for device, placed in (("cpu", CPU), ("cuda:1", "cuda:1"), ("auto", "cuda:0")):
        assert _jobs(store, replace(settings, device=device), devices).place(True) == placed


def test_a_finished_job_with_no_start_time_took_no_time_not_since_1970() -> None:
    """A finished job with no start time on record would read as running since 1970: its time is shown as 0.0s."""
    pytest.importorskip("gradio")
    from ui.onnx_eval import status_markdown

    job = {"id": "j1", "model_name": "mlp", "device": "cpu", "error": None, "status": DONE, "started": None}
    assert status_markdown({**job, "finished": 1_733_500_000.0}).endswith(" in 0.0s")
