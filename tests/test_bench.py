"""engine.bench.sweep on the CPU: a small real sweep whose metrics must agree with each other, grids, presets,
refusals, out-of-memory recording, ONNX models from the store, jobs and imported reports."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import torch
from tiny_onnx import fixed, mlp, sequence

import engine.bench.sweep as bench
from engine.bench.config import BenchError, SweepRequest
from engine.bench.jobs import BenchJobs
from engine.bench.sweep import BenchPoint, SweepConfig, grid, preset, rows_to_csv, run_sweep
from engine.bench.workloads import builtin_model, count_flops, memory_profile
from engine.core.commands import strict_json
from engine.core.errors import InputError
from engine.core.options import add_arguments
from engine.core.settings import load_settings
from engine.jobs.broker import Broker
from engine.jobs.store import CANCELLED, CPU, DONE, JobStore, StoreError
from engine.jobs.worker import WorkerContext, run_job


@pytest.fixture(scope="module")
def wav2lip(tmp_path_factory: pytest.TempPathFactory):
    return builtin_model("wav2lip", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def sweep_report(wav2lip) -> dict:
    points = [
        BenchPoint("eager", "fp32", 1, "cpu"),
        BenchPoint("eager", "fp32", 2, "cpu", channels_last=True),
        BenchPoint("ort-cpu", "fp32", 2, "cpu"),
        BenchPoint("eager", "fp32", 2, "cuda"),  # no GPU here: recorded as an error, not run on the CPU
    ]
    return run_sweep(SweepConfig("wav2lip", points, runs=3, warmup=1), wav2lip, None)


def test_wav2lip_costs_about_4_gmac_per_frame(wav2lip) -> None:
    flops = count_flops(wav2lip)
    assert 3.5e9 < flops / 2 < 4.5e9  # multiply-adds: FLOPs count two per MAC


def test_sweep_metrics_are_consistent(sweep_report: dict) -> None:
    rows = sweep_report["results"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert "no CUDA device" in rows[3]["error"]
    flops = sweep_report["model"]["flops_per_sample"]
    for row in rows[:3]:
        lat = row["latency"]
        # throughput from the runs' wall clock, which holds every run's time and the host's between them
        assert row["samples_per_s"] == pytest.approx(lat["n"] * row["batch"] / row["timed_wall_s"])
        assert row["timed_wall_s"] >= lat["n"] * lat["mean_ms"] / 1000
        assert row["achieved_tflops"] == pytest.approx(flops * row["samples_per_s"] / 1e12)
        assert row["speedup"] == pytest.approx(row["samples_per_s"] / rows[0]["samples_per_s"])
        assert row["load_s"] > 0 and row["first_run_s"] > 0 and lat["n"] == 3
        assert row["percent_of_peak"] is None and row["energy_j_per_sample"] is None  # CPU: no peak, no NVML
        assert row["error_vs_fp32"]["rel_l2"] < 1e-4 and row["error_vs_fp32"]["nan_or_inf"] == 0
        assert row["energy_source"] is None and row["device_used_bytes"] is None and row["peak_allocated_bytes"] is None
        # the timed runs' window: [t, GPU util %, device used bytes, power W, host CPU %, process RSS bytes]
        assert row["telemetry"] and all(len(t) == 6 and t[1] is None and t[5] > 0 for t in row["telemetry"])
        assert row["host_rss_bytes"] >= max(t[5] for t in row["telemetry"])
    assert rows[0]["speedup"] == 1.0
    assert rows[2]["ran_on"] == "CPUExecutionProvider" and not rows[2]["fell_back"]
    assert bench.RANDOM_WEIGHTS_NOTE in sweep_report["notes"]
    assert bench.NETWORK_ONLY_NOTE in sweep_report["notes"]  # the cost built on it says what it leaves out
    # the conventions another tool's figures may differ by are said in the report, not only in the code
    counting = next(n for n in sweep_report["notes"] if n.startswith("how the figures are counted"))
    for convention in ("2 per multiply-add", "dense rate (without 2:4 sparsity)", "interpolate linearly"):
        assert convention in counting
    assert sweep_report["machine"]["torch"] == torch.__version__
    json.dumps(sweep_report)  # plain data all the way down


def test_csv_export(sweep_report: dict) -> None:
    lines = rows_to_csv(sweep_report).strip().splitlines()
    assert lines[0].startswith("label,device,runtime") and len(lines) == 1 + len(sweep_report["results"])
    assert lines[1].startswith("cpu eager fp32 b1,cpu,eager,fp32,1,")


def test_grid_drops_meaningless_combinations() -> None:
    points, notes = grid(
        ["eager", "ort-cpu", "ort-cuda", "cudagraphs"], ["fp32", "fp16"], [1, 4], ["cpu"], [False, True]
    )
    labels = [p.label for p in points]
    assert "cpu eager fp32 b1" in labels and "cpu eager fp32 b1 cl" in labels and "cpu ort-cpu fp32 b4" in labels
    assert not any("fp16" in label or "cudagraphs" in label or "ort-cuda" in label for label in labels)
    assert len([p for p in points if p.runtime == "ort-cpu"]) == 2  # channels_last is not an ORT option
    assert any("CUDA graphs" in n for n in notes) and any("GPU precisions" in n for n in notes)


def test_presets_scale_down_without_a_gpu() -> None:
    ladder = preset("wav2lip-ladder", "wav2lip", has_gpu=False)
    # 128, 512, 1024 at 1/64; fp16 became fp32, channels_last and compile stay
    assert [(p.runtime, p.batch, p.channels_last) for p in ladder.points] == [
        ("eager", 2, False), ("eager", 8, False), ("eager", 8, True), ("compile", 8, True), ("compile", 16, True),
    ]  # fmt: skip
    assert all(p.device == "cpu" and p.precision == "fp32" for p in ladder.points)
    assert any("1/64" in n for n in ladder.notes)
    on_gpu = preset("wav2lip-ladder", "wav2lip", has_gpu=True)
    assert [(p.runtime, p.precision, p.batch) for p in on_gpu.points] == [
        ("eager", "fp32", 128), ("eager", "fp32", 512), ("eager", "fp16", 512), ("compile", "fp16", 512),
        ("compile", "fp16", 1024),
    ]  # fmt: skip
    assert on_gpu.baseline == 0
    assert [p.runtime for p in preset("cpu-vs-gpu", "wav2lip", has_gpu=False).points] == ["eager", "ort-cpu"]
    with pytest.raises(BenchError, match="no preset"):
        preset("fastest", "wav2lip", True)
    # a preset replaces the grid: grid options beside it were silently ignored, now they are refused
    with pytest.raises(BenchError, match="sets its own configurations; --batch, --device would be ignored"):
        SweepRequest.build({"preset": "onnx-providers", "batch": "1", "device": "cuda", "runtime": "eager"})
    alone = SweepRequest.build({"preset": "cpu-vs-gpu", "runs": 3})
    assert [p.runtime for p in alone.plan(has_gpu=False).points] == ["eager", "ort-cpu"]
    # so do explicit points: only --device remains, the device of the points that name none
    with pytest.raises(BenchError, match="points set every configuration; --runtime, --precision, --batch would be"):
        SweepRequest.build({"points": '[{"batch": 1}]', "batch": "4,8", "runtime": "ort-cpu", "precision": "bf16"})
    pointed = SweepRequest.build({"points": '[{"batch": 2}]', "device": "cpu"}).plan(has_gpu=False).points
    assert [(p.batch, p.device) for p in pointed] == [(2, "cpu")]
    # --device applies to them (it was ignored: cuda asked, cpu measured, exit 0; cpu asked, cuda measured)
    on_cpu = SweepRequest.build({"points": '[{"batch": 2}, {"batch": 4, "device": "cuda"}]', "device": "cpu"})
    assert [p.device for p in on_cpu.plan(has_gpu=True).points] == ["cpu", "cuda"]
    on_gpu = SweepRequest.build({"points": '[{"runtime": "eager", "batch": 1}]', "device": "cuda"})
    assert [p.device for p in on_gpu.plan(has_gpu=False).points] == ["cuda"]
    with pytest.raises(BenchError, match="with --points, --device gives the device of the points that name none: one"):
        SweepRequest.build({"points": '[{"batch": 2}]', "device": "cpu,cuda"})
    # an ONNX model's grid runs on ONNX Runtime by default: eager ran, "done", with every row an error
    onnx = SweepRequest.build({"model": "onnx:" + "a" * 64, "device": "cpu,cuda", "batch": "2"}).plan(has_gpu=True)
    assert [(p.runtime, p.device) for p in onnx.points] == [("ort-cpu", "cpu"), ("ort-cuda", "cuda")]
    # and so do its points that name no runtime (they were refused: eager needs one of our networks)
    points = '[{"batch": 2}, {"device": "cuda"}, {"runtime": "ort-trt", "device": "cuda"}]'
    onnx_points = SweepRequest.build({"model": "onnx:" + "a" * 64, "points": points}).plan(has_gpu=False).points
    assert [(p.runtime, p.device) for p in onnx_points] == [
        ("ort-cpu", "cpu"),
        ("ort-cuda", "cuda"),
        ("ort-trt", "cuda"),
    ]
    # a compile mode for a grid that compiles nothing was silently ignored
    with pytest.raises(BenchError, match=r"compile mode max-autotune applies to torch\.compile"):
        SweepRequest.build({"compile_mode": "max-autotune"})
    compiled = SweepRequest.build({"compile_mode": "max-autotune", "compile": "on", "device": "cpu"})
    assert {p.compile_mode for p in compiled.plan(has_gpu=False).points} == {"max-autotune"}


@pytest.mark.parametrize(
    "request_values",
    [
        {"compile": "on", "compile_mode": "fast"},
        {"points": '[{"runtime": "compile", "compile_mode": "fast", "device": "cpu"}]'},
    ],
    ids=["grid", "points"],
)
def test_an_unknown_compile_mode_is_refused_naming_the_accepted_ones(request_values: dict) -> None:
    """Refused before anything is measured, with the modes to choose from; a point's check removed, a point with
    a mode torch.compile lacks got as far as compiling."""
    with pytest.raises(BenchError, match="compile mode 'fast' is not one of default, reduce-overhead, max-autotune"):
        SweepRequest.build(request_values).plan(has_gpu=False)


def test_bench_help_lists_the_compile_modes() -> None:
    """`avatarbench bench --help` is where a user finds what --compile-mode takes."""
    parser = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, width=400))
    add_arguments(parser, SweepRequest)  # wide: a hyphenated mode is not broken at the line's end
    assert "torch.compile mode (default|reduce-overhead|max-autotune)" in parser.format_help()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "wav2lip", "points": []}, "no configurations"),
        ({"model": "wav2lip", "points": [{"runtime": "tensorflow"}]}, "runtime 'tensorflow'"),
        ({"model": "wav2lip", "points": [{"batch": 0}]}, "batch 0"),
        ({"model": "wav2lip", "points": [{"precision": "fp8"}]}, "precision 'fp8'"),
        ({"model": "wav2lip", "points": [{}], "baseline": 3}, "baseline"),
        ({"model": "wav2lip", "points": [{}], "runs": 0}, "runs"),
        ({"model": "wav2lip", "points": [{"colour": "red"}]}, "unknown point field"),
        (  # as the flag is spelt; the accepted names were not said
            {"model": "wav2lip", "points": [{"channels-last": True}]},
            "unknown point field\\(s\\) channels-last; a point takes runtime, precision, batch, device, channels_last, "
            "cudnn_benchmark, compile_mode",
        ),
        (
            {"model": "wav2lip", "points": [{"batch": 2}, {"batch": 4}, {"batch": 2}]},
            r"configurations 1 and 3 are the same \(cuda eager fp32 b2\)",
        ),
        (
            {"model": "wav2lip", "points": [{"batch": 2}, {"batch": 2, "compile_mode": "max-autotune"}]},
            r"cuda eager fp32 b2: a compile mode applies to the compile runtime only",
        ),
        ({"model": "wav2lip", "points": [{}], "speed": "max"}, "unknown sweep field"),
        (
            {"model": "onnx:" + "a" * 64, "points": [{"device": "cpu"}]},
            "cpu eager fp32 b1: an ONNX model runs on ONNX Runtime",
        ),
        ({"points": [{}]}, "needs a model"),
        ({"model": "wav2lip", "points": [{}] * 201}, "at most 200"),
        ({"model": "wav2lip", "points": [{"device": "cpu", "channels_last": "off"}]}, "'off' is not true or false"),
        ({"model": "wav2lip", "points": [{"runtime": "ort-cuda", "device": "cpu"}]}, "ort-cuda runs on the GPU only"),
        ({"model": "wav2lip", "points": [{"runtime": "cudagraphs", "device": "cpu"}]}, "CUDA graphs need the GPU"),
    ],
)
def test_sweep_refusals(data: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        SweepConfig.from_dict(data).validate()


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(wav2lip, monkeypatch) -> None:
    real = bench.make_runtime

    def flaky(model, point, device, fraction):
        if point.batch == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, point, device, fraction)

    monkeypatch.setattr(bench, "make_runtime", flaky)
    points = [BenchPoint("eager", "fp32", 2, "cpu"), BenchPoint("eager", "fp32", 1, "cpu")]
    rows = run_sweep(SweepConfig("wav2lip", points, runs=2, warmup=0), wav2lip, None)["results"]
    assert rows[0]["status"] == "oom" and "out of memory" in rows[0]["error"]
    assert rows[1]["status"] == "ok" and rows[1]["speedup"] is None  # the baseline has no throughput


def test_a_cpu_point_estimated_over_the_free_memory_is_not_run_and_the_sweep_goes_on(wav2lip, monkeypatch) -> None:
    """Batch 256 of Wav2Lip took 6.2 GB of host memory; past what the job has free, the out-of-memory killer (or
    the broker's job memory cap) ended the whole sweep. The estimate is an upper bound: every layer's output."""
    weights, per_sample = memory_profile(wav2lip, "fp32")
    monkeypatch.setattr(bench, "usable_host_memory", lambda cap: weights + 4 * per_sample)  # batch 4 fits, not 8
    points = [BenchPoint("eager", "fp32", b, "cpu") for b in (1, 4, 8)] + [BenchPoint("eager", "fp32", 8, "cuda")]
    rows = run_sweep(SweepConfig("wav2lip", points, runs=1, warmup=0), wav2lip, None)["results"]
    assert [r["status"] for r in rows] == ["ok", "ok", "oom", "error"]
    assert re.fullmatch(
        r"not run: batch 8 may need up to 0\.4 GiB of memory \(34 MiB a sample for every layer's output, an upper "
        r"bound, and 139 MiB of weights\) and 0\.3 GiB is free for this job: the out-of-memory killer would end the "
        r"whole sweep",
        rows[2]["error"],
    ), rows[2]["error"]
    assert rows[2]["samples_per_s"] is None and rows[2]["runs"] is None


def test_batch_1_is_run_however_little_memory_seems_free(wav2lip, monkeypatch) -> None:
    """The estimate is an upper bound: a batch of one sample is always measured (the baseline every speed-up is
    over), and only larger batches are held back by it."""
    monkeypatch.setattr(bench, "usable_host_memory", lambda cap: 0)
    points = [BenchPoint("eager", "fp32", 1, "cpu"), BenchPoint("eager", "fp32", 2, "cpu")]
    rows = run_sweep(SweepConfig("wav2lip", points, runs=1, warmup=0), wav2lip, None)["results"]
    assert [r["status"] for r in rows] == ["ok", "oom"]


def test_a_networks_memory_profile_by_hand() -> None:
    """What the network plan and the CPU points' memory check size a batch from: the weights, every parameter and
    float buffer at the precision's width (a run casts them all) and an integer buffer as it is; per sample, the inputs
    and every leaf layer's output at that width (a container's output is its last layer's, counted once). At fp16 a
    value takes 2 bytes, not fp32's 4: a plan at fp16 counted as fp32 recommends half the batch that fits."""
    from engine.bench.workloads import BenchModel

    def build() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).eval()

    model = BenchModel("tiny", "tiny", None, build, lambda b: (torch.ones(b, 4),))
    floats, count = 4 * 3 + 3 + 3 + 3 + 3 + 3, 8  # Linear, BatchNorm and its running stats; its int64 count
    activations = 4 + 3 + 3  # the input, the Linear's output, the BatchNorm's
    for precision, width in (("fp32", 4), ("fp16", 2), ("bf16", 2)):
        assert memory_profile(model, precision) == (floats * width + count, activations * width), precision
    half = build().half()  # what a run at fp16 holds
    held = sum(t.numel() * t.element_size() for t in (*half.parameters(), *half.buffers()))
    assert memory_profile(model, "fp16")[0] == held


def test_a_rows_energy_is_per_sample_and_its_peak_is_the_runs_own() -> None:
    """NVML's joules over the timed window are divided by the samples those runs computed (a GPU's only: no CPU row
    has them), and the allocator's peak is less what the network held before the runs; ONNX Runtime allocates
    outside PyTorch, so its rows have no allocator peak."""
    figures = {"peak_allocated_bytes": 5000, "peak_device_used_bytes": 9000, "peak_rss_bytes": 7000, "telemetry": [],
               "energy_j": 40.0, "energy_source": "nvml", "wall_s": 2.5}  # fmt: skip
    for runtime, peak in (("eager", 4000), ("ort-cuda", None)):
        point = BenchPoint(runtime, "fp32", 8, "cuda")
        row = bench._empty_row(point)
        bench._record_window(row, figures, point, samples=80, resident=1000)
        assert (row["energy_j_per_sample"], row["energy_window_s"], row["energy_source"]) == (0.5, 2.5, "nvml")
        assert (row["peak_allocated_bytes"], row["device_used_bytes"], row["host_rss_bytes"]) == (peak, 9000, 7000)


def test_a_point_whose_timed_runs_take_long_says_how_long(wav2lip, monkeypatch) -> None:
    """--runs 10000 on a CPU ran for hours with nothing said; the label now gives the estimate from the warm-up."""
    monkeypatch.setattr(bench, "LONG_RUNS_S", 1e-6)
    labels: list[str] = []
    config = SweepConfig("wav2lip", [BenchPoint("eager", "fp32", 1, "cpu")], runs=3, warmup=1)
    run_sweep(config, wav2lip, None, lambda fraction, label: labels.append(label))
    assert re.fullmatch(r"1/1: .*: 3 timed runs, about 0 min", labels[-2]), labels
    monkeypatch.setattr(bench, "LONG_RUNS_S", 1e9)
    labels.clear()
    run_sweep(config, wav2lip, None, lambda fraction, label: labels.append(label))
    assert not any("timed runs" in label for label in labels)
    assert bench._minutes(150) == "2 min" and bench._minutes(7200) == "2.0 h"


OWNER = "tester"
HANDLERS = {"bench": "engine.bench.jobs:handle"}


def _jobs(tmp_path: Path) -> BenchJobs:
    """The submit side; its broker's workers never start: a test runs a claimed job itself, as a worker would."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    return BenchJobs(Broker(store, HANDLERS, {CPU: 1}), settings)


def test_jobs_round_trip_and_imports(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    sha = jobs.store.put_blob(mlp(tmp_path / "mlp.onnx"))
    upload = jobs.store.submit("onnx_eval", {}, CPU, model_sha256=sha, owner=OWNER)  # the owner's own upload
    jobs.store.fail(upload.id, "not run here")
    points = json.dumps([{"runtime": "ort-cpu", "batch": 4, "device": "cpu"}])
    job = jobs.submit(SweepRequest.build({"model": f"onnx:{sha}", "points": points, "runs": 3, "warmup": 0}), OWNER)
    assert job.device == CPU and job.model_sha256 == sha and job.timed
    claimed = jobs.store.claim_next(CPU)
    run_job(claimed, WorkerContext(jobs.store, jobs.settings, CPU), HANDLERS)
    result = jobs.result(job.id, OWNER)
    report = result["report"]
    row = report["results"][0]
    assert row["status"] == "ok" and row["flops_per_sample"] == 2 * 4 * 3  # the MatMul's MACs per sample, x2
    assert row["error_vs_fp32"]["max_abs"] == 0.0  # ORT CPU against itself
    assert result["status"] == DONE and report["results"][0]["batch"] == 4 and report["measurement"]["wall_s"] > 0
    report["results"][0]["error_vs_fp32"]["rel_l2"] = math.inf  # an fp16 row that overflowed, in our strict JSON
    imported = jobs.import_report(strict_json(report), OWNER)
    assert imported.status == DONE and imported.device == "imported"
    # /bench_result's whole answer holds the report: it was refused listing four fields, not saying where it was
    refusal = r"^not a benchmark report as avatarbench exports it: this is a sweep's status and result \(what "
    with pytest.raises(BenchError, match=refusal + r"/bench_result answers\): import its 'report' field$"):
        jobs.import_report(strict_json(result), OWNER)
    with pytest.raises(BenchError, match=r"the result of a job of kind 'onnx_eval', not a sweep's: import a GPU"):
        jobs.import_report({"kind": "onnx_eval", "report": {"results": []}}, OWNER)
    assert jobs.result(imported.id, OWNER)["report"]["results"][0]["error_vs_fp32"]["rel_l2"] == math.inf
    history = jobs.history(OWNER)
    assert [h["id"] for h in history] == [imported.id, job.id] and history[0]["imported"]
    assert jobs.history("someone else") == []
    assert jobs.store.claim_next("imported") is None  # imported reports are done, never claimed
    with pytest.raises(StoreError, match="no stored file"):  # another user cannot sweep this upload
        jobs.submit(SweepRequest.build({"model": f"onnx:{sha}", "points": points}), "someone else")
    # nor learn whether anyone stored a file: the answer reads the same as for a file nobody stored, in any case
    for held in (sha, sha.upper(), "0" * 64):
        with pytest.raises(StoreError) as refused:
            jobs.submit(SweepRequest.build({"model": f"onnx:{held}", "points": points}), "someone else")
        assert str(refused.value) == f"no stored file with sha256 {held.lower()}"
    upper = jobs.submit(SweepRequest.build({"model": f"onnx:{sha.upper()}", "points": points}), OWNER)
    assert upper.model_sha256 == sha  # the owner's own reference in upper case is theirs too


def test_the_sweep_model_list_shows_each_owner_only_their_own_uploads_still_stored(tmp_path: Path) -> None:
    """The bench tab's model list offers the ONNX models this owner's evaluations stored: another user's upload (its
    file name and its sha256, with which a sweep of it would be asked for) is not theirs to see."""
    jobs = _jobs(tmp_path)
    mine = jobs.store.put_blob(mlp(tmp_path / "mine.onnx"))
    theirs = jobs.store.put_blob(fixed(tmp_path / "theirs.onnx"))
    gone = jobs.store.put_blob(sequence(tmp_path / "gone.onnx"))
    for sha, name, owner in ((mine, "mine.onnx", OWNER), (theirs, "theirs.onnx", "someone else"),
                             (gone, "gone.onnx", OWNER)):  # fmt: skip
        jobs.store.submit("onnx_eval", {"model_name": name}, CPU, model_sha256=sha, owner=owner)
    jobs.store.blob_path(gone).unlink()  # the store's budget took it: a sweep of it would fail
    assert jobs.stored_onnx_models(OWNER) == [(f"mine.onnx ({mine[:8]})", f"onnx:{mine}")]
    assert jobs.stored_onnx_models("someone else") == [(f"theirs.onnx ({theirs[:8]})", f"onnx:{theirs}")]
    assert {m for _, m in jobs.stored_onnx_models(None)} == {f"onnx:{mine}", f"onnx:{theirs}"}  # the operator's view
    points = json.dumps([{"runtime": "ort-cpu", "batch": 1, "device": "cpu"}])
    with pytest.raises(StoreError) as refused:  # its owner's own upload, gone since: refused when asked, not run
        jobs.submit(SweepRequest.build({"model": f"onnx:{gone}", "points": points}), OWNER)
    assert str(refused.value) == f"no stored file with sha256 {gone}"


def test_a_gpu_sweep_is_queued_on_the_least_loaded_gpu_and_a_cpu_sweep_on_the_cpu(tmp_path: Path) -> None:
    """Where a sweep is measured is what its report says it measured: a GPU sweep queued on the CPU's worker would
    time the CPU under a GPU's name."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    store = JobStore(settings.db_path, settings.data_dir / "blobs")
    jobs = BenchJobs(Broker(store, HANDLERS, {"cuda:0": 1, "cuda:1": 1, CPU: 1}), settings)  # never started
    gpu = SweepRequest.build({"model": "wav2lip", "device": "cuda", "runtime": "eager", "batch": "1"})
    cpu = SweepRequest.build({"model": "wav2lip", "device": "cpu", "runtime": "eager", "batch": "1"})
    first, second = jobs.submit(gpu, OWNER), jobs.submit(gpu, OWNER)
    assert (first.device, second.device) == ("cuda:0", "cuda:1")  # the second goes where nothing waits yet
    assert jobs.submit(cpu, OWNER).device == CPU


def test_a_sweep_is_refused_past_the_queue_limit_even_when_two_submits_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early quota check reads the queue before the sweep is planned; a second submit from the same owner can pass
    it in between. The submit itself must hold AVATARBENCH_MAX_QUEUED_JOBS in the insert's own transaction."""
    from dataclasses import replace

    jobs = _jobs(tmp_path)
    jobs.settings = replace(jobs.settings, max_queued_jobs=1)
    monkeypatch.setattr(BenchJobs, "check_quota", lambda self, owner: None)  # both passed it before either stored
    request = SweepRequest.build({"model": "wav2lip", "device": "cpu", "runtime": "eager", "batch": "1"})
    jobs.submit(request, OWNER)
    with pytest.raises(InputError, match=r"you have 1 jobs? waiting"):
        jobs.submit(request, OWNER)
    assert len(jobs.store.queue(OWNER)) == 1


def test_an_imported_report_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A report is parsed and checked in full before it is stored: one of hundreds of MB held the app's memory and
    time for nothing; past MAX_REPORT_BYTES it is refused by its size, with the limit."""
    import engine.bench.jobs as bench_jobs

    jobs = _jobs(tmp_path)
    oversized = " " * (bench_jobs.MAX_REPORT_BYTES + 2**19)
    with pytest.raises(BenchError) as refused:
        jobs.import_report(oversized, OWNER)
    assert str(refused.value) == "the report is 8.5 MiB; at most 8 MiB"
    assert jobs.history(OWNER) == []


class _Killed(BaseException):
    """What the broker's SIGKILL is to a worker: nothing after it runs in the process."""


def test_a_sweep_stopped_on_the_way_keeps_the_configurations_it_finished(tmp_path: Path, monkeypatch) -> None:
    """A sweep cancelled or out of time lost every row it had measured (they lived in the worker until its end);
    each row is now stored as it is measured, and the stopped job's result is the report of those."""
    jobs = _jobs(tmp_path)
    points = json.dumps([{"runtime": "ort-cpu", "batch": b, "device": "cpu"} for b in (1, 2, 4)])
    job = jobs.submit(SweepRequest.build({"model": "wav2lip", "points": points, "runs": 2, "warmup": 0}), OWNER)
    real = bench._measure

    def killed_at_the_third(ctx, point, row, say) -> None:
        if point.batch == 4:
            assert jobs.status(job.id, OWNER)["measured"] == 2  # stored while it runs
            raise _Killed
        real(ctx, point, row, say)

    monkeypatch.setattr(bench, "_measure", killed_at_the_third)
    with pytest.raises(_Killed):
        run_job(jobs.store.claim_next(CPU), WorkerContext(jobs.store, jobs.settings, CPU), HANDLERS)
    jobs.store.fail(job.id, "cancelled by its owner while it ran", CANCELLED)  # as the broker does once it killed it
    result = jobs.result(job.id, OWNER)
    report = result["report"]
    assert (result["status"], result["measured"], result["points"]) == (CANCELLED, 2, 3)
    assert [r["batch"] for r in report["results"]] == [1, 2] and report["results"][1]["speedup"] > 0
    assert report["notes"][0] == f"{bench.PARTIAL_NOTE}: 2 of 3 configurations measured"
    monkeypatch.setattr(bench, "_measure", real)
    whole = jobs.submit(SweepRequest.build({"model": "wav2lip", "points": points, "runs": 2, "warmup": 0}), OWNER)
    run_job(jobs.store.claim_next(CPU), WorkerContext(jobs.store, jobs.settings, CPU), HANDLERS)
    finished = jobs.result(whole.id, OWNER)
    assert finished["measured"] == 3 and not any(bench.PARTIAL_NOTE in n for n in finished["report"]["notes"])


def test_job_refusals(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    with pytest.raises(BenchError, match="no CUDA device"):
        jobs.submit(SweepRequest.build({"model": "wav2lip", "device": "cuda"}), OWNER)
    with pytest.raises(BenchError, match="no model"):
        jobs.submit(SweepRequest.build({"model": "resnet50", "device": "cpu"}), OWNER)
    with pytest.raises(StoreError, match="no stored file"):
        jobs.submit(SweepRequest.build({"model": "onnx:" + "a" * 64, "runtime": "ort-cpu", "device": "cpu"}), OWNER)
    with pytest.raises(BenchError, match=r"^points: not valid JSON: "):  # the field is named, as for a repeated key
        SweepRequest.build({"points": "{points"})
    with pytest.raises(BenchError, match="points: the key 'batch' is given twice in one object; give it once"):
        SweepRequest.build({"points": '[{"batch": 1, "runtime": "eager", "batch": 8}]'})  # batch 8 ran, alone
    # a point that names no device is measured where --device's empty value would be (it meant cuda everywhere)
    points = SweepRequest.build({"model": "wav2lip", "points": '[{"runtime": "ort-cpu"}]'})
    assert [p.device for p in points.plan(has_gpu=False).points] == ["cpu"]
    with pytest.raises(BenchError, match="not a benchmark report"):
        jobs.import_report({"results": []}, OWNER)
    with pytest.raises(BenchError, match="machine must be a JSON object"):  # once stored, this broke the history
        jobs.import_report({"machine": "m", "model": {"name": "x"}, "config": {"model": "x"}, "results": []}, OWNER)
    bad_row = {"machine": {}, "model": {"name": "x"}, "config": {"model": "wav2lip", "points": [{"device": "cpu"}]},
               "results": [{"label": "a", "status": "ok", "runtime": "eager", "precision": "fp32", "device": "cpu",
                            "samples_per_s": "fast"}]}  # fmt: skip
    with pytest.raises(BenchError, match=r"results\[0\]\.samples_per_s must be a finite number"):
        jobs.import_report(bad_row, OWNER)
    # What an API caller may send: each is one refusal (they were internal errors), and nothing is stored.
    row = {"label": "a", "status": "ok", "runtime": "eager", "precision": "fp32", "device": "cpu", "batch": 1}
    good = {"machine": {"gpu": None}, "model": {"name": "w"}, "results": [row],
            "config": {"model": "wav2lip", "points": [{"runtime": "eager", "batch": 1, "device": "cpu"}]}}  # fmt: skip
    for broken, message in (
        ({**good, "results": []}, "results is empty"),
        ({**good, "results": [{**row, "samples_per_s": -5}]}, r"results\[0\]\.samples_per_s must be above 0"),
        ({**good, "results": [{**row, "speedup": 0}]}, r"results\[0\]\.speedup must be above 0 \(or null\), got 0"),
        ({**good, "results": [{**row, "samples_per_s": True}]}, r"results\[0\]\.samples_per_s must be a finite number"),
        ({**good, "machine": {"cpu_count": 0}}, "machine.cpu_count must be a whole number of cores, or null; got 0"),
        ({**good, "results": [row] * (bench.MAX_POINTS + 1)}, f"{bench.MAX_POINTS + 1} results; at most"),
        ({**good, "config": {"model": "wav2lip", "points": 5}}, "points must be a list"),
        ({**good, "config": {"model": "wav2lip", "points": None}}, "points must be a list"),
        ({**good, "config": {"model": 5, "points": []}}, "model must be text"),
        ({**good, "machine": {"cpu_count": math.nan}}, "machine.cpu_count must be a whole number"),
        ({**good, "results": [{**row, "batch": 10**400}]}, r"results\[0\]\.batch must be a finite number"),
        # what the tables read of a row: each of these was accepted, then broke the tab
        ({**good, "results": [{**row, "latency": {"p50_ms": 1.0}}]}, "latency must be an object of numbers with"),
        ({**good, "model": {"name": "w", "flops_per_sample": "many"}}, "model.flops_per_sample must be a finite"),
        ({**good, "results": [{**row, "error_vs_fp32": [1]}]}, "error_vs_fp32 must be an object of numbers"),
        ({**good, "results": [{**row, "error_vs_fp32": {"rel_l2": "big"}}]}, "error_vs_fp32 must be an object"),
        ({**good, "results": [{**row, "telemetry": ["x"]}]}, "telemetry must be a list of samples"),
        ({**good, "results": [{**row, "warnings": [1]}]}, "warnings must be a list of text"),
        ({**good, "results": [{**row, "error": 5}]}, r"results\[0\]\.error must be text or null"),
        ({**good, "results": [{**row, "load_s": "slow"}]}, r"results\[0\]\.load_s must be a finite number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' + "9" * 5000 + "}", "cannot be read"),
    ):
        with pytest.raises(BenchError, match=message):
            jobs.import_report(broken, OWNER)
    for points, message in (("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                            ('[{"batch": ' + "9" * 5000 + "}]", "cannot be read")):  # fmt: skip
        with pytest.raises(BenchError, match=message):
            SweepRequest.build({"model": "wav2lip", "points": points})
    with pytest.raises(StoreError, match=r"not of kind bench \(it is onnx_eval\)"):
        jobs.result(jobs.store.submit("onnx_eval", {}, CPU).id, None)
    assert jobs.history(OWNER) == []
    damaged = jobs.store.submit("bench", {"sweep": {"model": "x"}}, "imported", owner=OWNER)  # as an old version left
    jobs.store.finish(damaged.id, {"machine": "m", "results": []})
    (row,) = jobs.history(OWNER)
    assert row["id"] == damaged.id and "cannot be read" in row["error"]


def test_one_owners_imports_never_remove_anothers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared budget of imported reports evicted the oldest of anyone's: two people's imports deleted a third's
    report. Each owner's budgets now evict only their own, and a full shared budget refuses the new import."""
    import engine.bench.jobs as bench_jobs

    jobs = _jobs(tmp_path)
    row = {"label": "a", "status": "ok", "runtime": "eager", "precision": "fp32", "device": "cpu", "batch": 1}
    point = {"runtime": "eager", "batch": 1, "device": "cpu"}
    report = {"machine": {"gpu": None}, "model": {"name": "w"}, "results": [row],
              "config": {"model": "wav2lip", "points": [point]}}  # fmt: skip
    text = json.dumps(report)
    monkeypatch.setattr(bench_jobs, "IMPORTS_PER_OWNER", 2)
    monkeypatch.setattr(bench_jobs, "IMPORTS_TOTAL_BYTES", int(9.5 * len(text)))  # room for nine and a half
    alice = jobs.import_report(text, "alice").id
    for owner in ("bob", "carol", "dave"):
        for _ in range(3):  # one more than each keeps: their own oldest goes
            jobs.import_report(text, owner)
        assert len(jobs.history(owner)) == 2
    assert [h["id"] for h in jobs.history("alice")] == [alice]
    jobs.import_report(text, "erin")
    jobs.import_report(text, "erin")
    with pytest.raises(BenchError, match="the imported reports of everyone fill the"):
        jobs.import_report(text, "frank")  # the others' would have gone to make room
    assert len(jobs.history("frank")) == 0 and [h["id"] for h in jobs.history("alice")] == [alice]
    assert jobs.import_report(text, "alice").id != alice  # an owner with reports there replaces their own


def test_liveportrait_networks_are_benchmarkable(tmp_path: Path) -> None:
    model = builtin_model("liveportrait-motion", tmp_path)
    points = [BenchPoint("eager", "fp32", 2, "cpu")]  # no ONNX export: ort-* is refused (the test below)
    rows = run_sweep(SweepConfig("liveportrait-motion", points, runs=2, warmup=0), model, None)["results"]
    assert rows[0]["status"] == "ok" and rows[0]["error_vs_fp32"]["rel_l2"] < 1e-5  # every output head compared
    assert rows[0]["flops_per_sample"] > 1e9  # ConvNeXt-V2-tiny at 256x256: about 11.6 GFLOP


def test_musetalk_networks_are_benchmarkable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's MuseTalk workloads: the real configs' modules (here narrowed, as the real UNet takes 3.4 GB and
    half a minute to build on a CPU), tensors in and out, timed and compared like any network."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engine.lipsync.musetalk import random_weights
    from engine.lipsync.musetalk.weights import meta_unet, meta_vae

    small_unet = {**random_weights.SMALL_UNET, "cross_attention_dim": 384}  # the real audio prompt's width
    monkeypatch.setattr(random_weights, "meta_unet", lambda: meta_unet(small_unet))
    monkeypatch.setattr(random_weights, "meta_vae", lambda: meta_vae(random_weights.SMALL_VAE))
    for name, out_shape in (("musetalk-unet", (2, 4, 32, 32)), ("musetalk-vae-decoder", (2, 3, 256, 256))):
        model = builtin_model(name, tmp_path)
        net, inputs = model.build_torch(), model.torch_inputs(2)
        with torch.no_grad():
            out = net(*inputs)
            if name == "musetalk-unet":  # the step is upstream's call: timestep 0, the prompt cross-attended
                expected = net.unet(inputs[0], torch.tensor([0]), encoder_hidden_states=inputs[1]).sample
            else:
                expected = net.vae.decode(inputs[0]).sample
        assert out.shape == out_shape and torch.equal(out, expected) and out.abs().mean() > 0
        points = [BenchPoint("eager", "fp32", 2, "cpu")]
        (row,) = run_sweep(SweepConfig(name, points, runs=2, warmup=0), model, None)["results"]
        assert row["status"] == "ok" and row["flops_per_sample"] > 0 and row["error_vs_fp32"]["rel_l2"] < 1e-5
        # attention counted too: torch's counter knows the kernels a meta tensor runs, not the CPU's
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net.to("meta")(*(x[:1].to("meta") for x in inputs))
        assert row["flops_per_sample"] == counter.get_total_flops()


def test_a_sweep_with_many_bad_points_says_the_first_few() -> None:
    """5000 bad points made one refusal of half a megabyte, in the CLI and the API alike."""
    points = json.dumps([{"runtime": "x"}] * 5000)
    with pytest.raises(BenchError) as refused:
        SweepRequest.build({"points": points}).plan(has_gpu=False)
    message = str(refused.value)
    assert "5000 configurations; at most" in message and "configuration 4: runtime 'x'" in message
    assert "configuration 5:" not in message and message.endswith("; and 4996 more") and len(message) < 2000


def test_the_error_against_fp32_says_why_it_cannot_be_computed() -> None:
    """A scalar output (no batch dimension) raised IndexError in the row; an all-NaN reference gave "inf"."""
    from engine.bench.sweep import _error

    assert "no batch dimension" in _error(np.float32(3.0) * np.ones(()), np.ones(()))["error"]
    nan = _error(np.full((2, 4), np.nan), np.full((2, 4), np.nan))
    assert "reference itself holds NaN or inf" in nan["error"] and nan["nan_or_inf"] == 8
    same = _error(np.ones((2, 4)), np.ones((2, 4)))
    assert same["rel_l2"] == 0.0 and same["max_abs"] == 0.0


def test_an_onnx_models_flops_per_sample_only_where_they_grow_with_the_batch(tmp_path: Path) -> None:
    """x[N, N] @ x[N, N] costs 2N³ FLOPs: its count at N=1 (2) times the samples/s made up a TFLOP/s at every batch.
    A batch that sizes only the first axes keeps its FLOPs per sample."""
    from onnx import TensorProto, helper
    from tiny_onnx import save

    from engine.bench.workloads import onnx_model
    from engine.onnx.inspection import inspect_model

    square = helper.make_graph(
        [helper.make_node("MatMul", ["x", "x"], ["y"])], "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "N"])],
    )  # fmt: skip
    path = save(square, tmp_path / "square.onnx")
    model = onnx_model(path, "square", inspect_model(path))
    assert model.flops_fixed is None and any("grow faster than the batch" in n for n in model.notes)
    path = mlp(tmp_path / "mlp.onnx")
    assert onnx_model(path, "mlp", inspect_model(path, {"N": 4})).flops_fixed == inspect_model(path).flops


def test_a_model_whose_batch_a_sweep_cannot_set_is_refused_in_words(tmp_path: Path) -> None:
    """A sweep sets the batch of every input: a fixed-shape model, inputs batched by different symbols, or a scalar
    input beside a batched one cannot be swept, and the refusal says where such a model can be measured."""
    from onnx import TensorProto, helper
    from tiny_onnx import save

    from engine.bench.workloads import onnx_model
    from engine.onnx.inspection import inspect_model

    path = fixed(tmp_path / "fixed.onnx")
    with pytest.raises(InputError) as refused:
        onnx_model(path, "fixed", inspect_model(path))
    assert str(refused.value) == (
        "fixed: a benchmark sets the batch, so every input needs the same symbolic first dimension (found [[2, 4]]); "
        "evaluate fixed-shape models in the ONNX eval tab"
    )
    value = TensorProto.FLOAT
    for name, second in (("two-batches", ["M", 4]), ("scalar", [])):
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "y"], ["z"])], name,
            [helper.make_tensor_value_info("x", value, ["N", 4]), helper.make_tensor_value_info("y", value, second)],
            [helper.make_tensor_value_info("z", value, ["N", 4])],
        )  # fmt: skip
        path = save(graph, tmp_path / f"{name}.onnx")
        with pytest.raises(InputError, match=f"{name}: a benchmark sets the batch"):
            onnx_model(path, name, inspect_model(path))
    partly = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Relu", ["y"], ["b"])], "partly",
        [helper.make_tensor_value_info("x", value, ["N", 0]), helper.make_tensor_value_info("y", value, ["N", 4])],
        [helper.make_tensor_value_info("a", value, ["N", 0]), helper.make_tensor_value_info("b", value, ["N", 4])],
    )  # fmt: skip
    path = save(partly, tmp_path / "partly.onnx")  # one empty input beside a real one still computes something
    assert onnx_model(path, "partly", inspect_model(path)).numpy_inputs(2)["y"].shape == (2, 4)
    with pytest.raises(
        InputError, match=r"no built-in model 'resnet50'; available: wav2lip, s3fd, .* or onnx:<sha256>"
    ):
        builtin_model("resnet50", tmp_path)


def test_an_fp16_onnx_model_is_measured_as_fp16(tmp_path: Path) -> None:
    """ONNX Runtime runs a model's own types: an fp16 model's rows said fp32 (and its share of a card's peak was
    taken against the fp32 peak)."""
    from onnx import TensorProto, helper, numpy_helper
    from tiny_onnx import save

    from engine.bench.workloads import onnx_model
    from engine.onnx.inspection import inspect_model

    half = TensorProto.FLOAT16
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "half",
        [helper.make_tensor_value_info("x", half, ["N", 4])], [helper.make_tensor_value_info("y", half, ["N", 4])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float16), "W")],
    )  # fmt: skip
    path = save(graph, tmp_path / "half.onnx")
    info = inspect_model(path)
    assert info.weights_precision == "fp16" and inspect_model(mlp(tmp_path / "mlp.onnx")).weights_precision == "fp32"
    report = run_sweep(SweepConfig("half", [BenchPoint("ort-cpu", "fp32", 2, "cpu")], runs=2, warmup=0),
                       onnx_model(path, "half", info), None)  # fmt: skip
    row = report["results"][0]
    assert row["status"] == "ok", row["error"]
    assert (row["precision"], row["label"]) == ("fp16", "cpu ort-cpu fp16 b2")
    assert "the model's weights are fp16: ONNX Runtime runs them as they are" in report["notes"][-1]
    both = [BenchPoint("ort-trt", "fp16", 2, "cuda"), BenchPoint("ort-trt", "fp32", 2, "cuda")]  # rows, unrun here
    labels = [r["label"] for r in run_sweep(SweepConfig("half", both, runs=2, warmup=0), onnx_model(path, "half", info),
                                            None)["results"]]  # fmt: skip
    assert labels == ["cuda ort-trt fp16 b2", "cuda ort-trt fp16 b2 (asked fp32)"]  # one label hid a row
    # a model whose inputs are all empty ran, and its rows failed on the sweep's own maths (exit 1)
    empty = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 0])],
    )  # fmt: skip
    seq = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "seq"])],
    )  # fmt: skip
    path = save(seq, tmp_path / "seq.onnx")
    report = run_sweep(SweepConfig("seq", [BenchPoint("ort-cpu", "fp32", 2, "cpu")], runs=2, warmup=0),
                       onnx_model(path, "seq", inspect_model(path)), None)  # fmt: skip
    assert "the model's other symbolic dimensions ran at seq=1, as inspection set them" in " ".join(report["notes"])
    path = save(empty, tmp_path / "empty.onnx")
    with pytest.raises(InputError, match=r"empty: every input is empty \(x \[1, 0\]\): a run would compute nothing"):
        onnx_model(path, "empty", inspect_model(path))


def test_tensorrt_fp32_rows_are_measured_against_the_tf32_peak() -> None:
    """TensorRT computes fp32 layers as TF32 (ort_trt.py): its fp32 rows' share of peak is of the TF32 rate."""
    from engine.bench.sweep import math_precision

    assert math_precision({"runtime": "ort-trt", "precision": "fp32"}) == "tf32"
    assert math_precision({"runtime": "ort-cuda", "precision": "fp32"}) == "fp32"
    assert math_precision({"runtime": "ort-trt", "precision": "fp16"}) == "fp16"


class _LoadedOn:
    """A runtime that loaded on `ran_on` (TensorRT's session fallen back to another provider, or not)."""

    fallback_reason = "libnvinfer.so.10: cannot open shared object file"

    def __init__(self, ran_on: str) -> None:
        self.ran_on, self.fell_back = ran_on, ran_on != "TensorrtExecutionProvider"

    def load(self) -> None: ...
    def set_inputs(self, inputs: object) -> None: ...
    def run(self) -> None: ...
    def sync(self) -> None: ...


def test_a_fallen_back_row_is_held_against_the_peak_of_the_precision_that_ran() -> None:
    """Without TensorRT's libraries ONNX Runtime's CUDA provider runs a TensorRT point, in the model's own precision
    (TF32 only where asked): its fp16 row read 0.7% of an H100's fp16 peak where it ran at 10% of the fp32 one. A
    GPU row that fell back to the CPU ran on no GPU: no share of the card's peak."""
    from engine.bench.catalog import CATALOG
    from engine.bench.workloads import BenchModel

    cases = [  # runtime, precision asked, provider that ran it, the model's own weights, the peak it is held to
        ("ort-trt", "fp16", "TensorrtExecutionProvider", None, 989.5),
        ("ort-trt", "fp32", "TensorrtExecutionProvider", None, 494.5),  # TensorRT's fp32 layers are TF32
        ("ort-trt", "fp16", "CUDAExecutionProvider", None, 67),
        ("ort-trt", "fp32", "CUDAExecutionProvider", None, 67),
        ("ort-trt", "tf32", "CUDAExecutionProvider", None, 494.5),
        ("ort-trt", "fp16", "CUDAExecutionProvider", "fp16", 989.5),  # fp16 weights: the CUDA provider runs fp16
        ("ort-cuda", "fp32", "CPUExecutionProvider", None, None),
        ("ort-trt", "fp16", "CPUExecutionProvider", None, None),
    ]
    rows = []
    for runtime, precision, ran_on, own, _ in cases:
        point = BenchPoint(runtime, precision, 2, "cuda")
        model = BenchModel("m", "ONNX model m", None, numpy_inputs=lambda b: {}, weights_precision=own)
        ctx = bench._Context(model, SweepConfig("m", [point], runs=1, warmup=0), "cuda:0", CATALOG["H100"], 0.9, 1e12)
        row = bench._empty_row(point)
        bench._set_up(_LoadedOn(ran_on), ctx, point, row)
        row["samples_per_s"] = 10.0  # 10 TFLOP/s at 1e12 FLOPs a sample
        rows.append(row)
    bench._finish(rows, ctx)
    for row, (*_, peak) in zip(rows, cases, strict=True):
        expected = None if peak is None else pytest.approx(100.0 * 10.0 / peak)
        assert row["percent_of_peak"] == expected, (row["label"], row["ran_on"])
    assert rows[2]["math_precision"] == "fp32" and rows[6]["math_precision"] is None
    assert bench.math_precision({"runtime": "ort-trt", "precision": "fp32"}) == "tf32"  # a report from before


def test_onnx_runtime_on_a_network_without_an_export_is_refused_before_any_work() -> None:
    """It was built, its FLOPs counted, then every ORT row failed (exit 1): a bad setting, refused (exit 2); a
    preset leaves those configurations out and says so."""
    with pytest.raises(BenchError, match="liveportrait-appearance has no ONNX export: ONNX Runtime runs wav2lip"):
        SweepConfig("liveportrait-appearance", [BenchPoint("ort-cpu", "fp32", 1, "cpu")]).validate()
    SweepConfig("wav2lip", [BenchPoint("ort-cpu", "fp32", 1, "cpu")]).validate()
    kept = preset("cpu-vs-gpu", "musetalk-unet", has_gpu=False)
    assert all(p.runtime not in ("ort-cpu", "ort-cuda") for p in kept.points) and kept.points
    assert any("musetalk-unet has no ONNX export" in n for n in kept.notes)
    with pytest.raises(BenchError, match="preset onnx-providers runs ONNX Runtime only"):
        preset("onnx-providers", "liveportrait-decoder", has_gpu=True)


def test_a_point_naming_an_option_its_runtime_lacks_is_refused() -> None:
    """Its label did not say the option and it measured without it (a points sweep took compile_mode on eager)."""
    for point, why in (
        (BenchPoint("eager", "fp32", 1, "cpu", compile_mode="max-autotune"), "compile runtime only"),
        (BenchPoint("ort-cpu", "fp32", 1, "cpu", channels_last=True), "PyTorch's options"),
        (BenchPoint("eager", "fp32", 1, "cpu", cudnn_benchmark=False), "cuDNN's, on the GPU"),
    ):
        assert any(why in p for p in point.problems())
    points, _ = grid(["eager", "compile"], ["fp32"], [1], ["cpu"], compile_mode="max-autotune")
    assert [p.label for p in points] == ["cpu eager fp32 b1", "cpu compile fp32 b1 max-autotune"]


class _CountedRuns:
    """A runtime whose runs take no time, keeping how many it was asked for each time."""

    def __init__(self) -> None:
        self.ran: list[int] = []

    def timed_runs(self, runs: int) -> list[float]:
        self.ran.append(runs)
        return [0.0] * runs


def _energy_counter_10_j_apart(monkeypatch) -> None:
    """NVML's energy counter, 10 J between a window's two readings, and a 0.05 s energy window."""
    from test_measure import FakeDevice, FakeNvml

    from engine.jobs.measure import measured

    nvml = FakeNvml(energy_mj=[1_000_000, 1_010_000])
    monkeypatch.setattr(bench, "measured", lambda device: measured("cpu", nvml_device=FakeDevice(nvml)))
    monkeypatch.setattr(bench, "ENERGY_WINDOW_S", 0.05)


def test_a_gpu_points_energy_comes_from_a_window_long_enough_for_nvmls_counter(monkeypatch) -> None:
    """NVML's energy counter moves about every 100 ms: a point's timed runs (35 ms at batch 32) measured noise, so
    the energy comes from as many more runs as fill ENERGY_WINDOW_S, per sample of that window."""
    from engine.jobs.measure import NVML_COUNTER

    _energy_counter_10_j_apart(monkeypatch)
    runtime, row = _CountedRuns(), {}
    bench._energy_window(runtime, row, 0.01, 4, "cuda:0")
    assert runtime.ran == [5]  # 0.05 s of 0.01 s runs
    assert row["energy_j_per_sample"] == pytest.approx(10.0 / (5 * 4)) and row["energy_source"] == NVML_COUNTER
    assert row["energy_window_s"] > 0


def test_throughput_comes_from_the_wall_clock_of_the_runs_alike_for_every_runtime() -> None:
    """PyTorch's CUDA events time each run on the device and leave out the host's time between runs, which ONNX
    Runtime's host-timed runs include: samples/s from the events' mean made PyTorch look faster than it streams."""

    class EventTimed:  # each run 1 ms on the device, 20 ms of host work around them
        synced = False

        def timed_runs(self, runs: int) -> list[float]:
            time.sleep(0.02)
            return [1.0] * runs

        def sync(self) -> None:
            self.synced = True

    runtime = EventTimed()
    times, wall_s = bench._timed_stream(runtime, 3)
    assert times == [1.0] * 3 and runtime.synced and wall_s >= 0.02  # not the events' 3 ms


def test_the_error_against_an_all_zero_reference_is_unbounded_where_the_output_is_not_zero() -> None:
    """An fp32 reference of zeros (a mask, a ReLU output) against an output of ones read rel_l2 0.0, a perfect match;
    as parity's, it is inf there, and 0.0 where both are zero."""
    from engine.bench.sweep import _error

    assert _error(np.ones((2, 4)), np.zeros((2, 4)))["rel_l2"] == math.inf
    assert _error(np.zeros((2, 4)), np.zeros((2, 4)))["rel_l2"] == 0.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"runs": 10_001}, r"runs must be a whole number in 1\.\.10000"),
        ({"baseline": 2}, r"baseline must index a configuration \(0\.\.1\)"),
    ],
)
def test_a_sweeps_runs_and_baseline_are_held_to_their_ranges(changes: dict, message: str) -> None:
    """10001 runs (hours on a CPU) and a baseline one past the last configuration were accepted."""
    points = [BenchPoint("eager", "fp32", 1, "cpu"), BenchPoint("eager", "fp32", 2, "cpu")]
    SweepConfig("wav2lip", points, runs=10_000, baseline=1).validate()
    with pytest.raises(BenchError, match=message):
        SweepConfig("wav2lip", points, **changes).validate()


def test_speedup_is_over_the_baseline_and_a_card_the_catalog_lacks_has_no_share_of_peak() -> None:
    """speed-up is samples/s over the baseline's (2 where twice as fast); a GPU not in the catalog has no peak rates,
    and asking it for one failed the whole sweep's report."""
    from engine.bench.catalog import detected_gpu
    from engine.bench.workloads import BenchModel

    points = [BenchPoint("eager", "fp32", 2, "cuda"), BenchPoint("eager", "fp16", 2, "cuda")]
    model = BenchModel("m", "m", None, numpy_inputs=lambda b: {})
    gpu = detected_gpu("Some Future GPU", 80 * 2**30, (12, 0))
    ctx = bench._Context(model, SweepConfig("m", points, runs=1, warmup=0), "cuda:0", gpu, 0.9, 1e12)
    rows = [bench._empty_row(point) for point in points]
    for row, rate in zip(rows, (10.0, 20.0), strict=True):
        row["samples_per_s"], row["math_precision"] = rate, row["precision"]
    bench._finish(rows, ctx)
    assert [row["speedup"] for row in rows] == [1.0, 2.0]
    assert [row["achieved_tflops"] for row in rows] == [10.0, 20.0]
    assert [row["percent_of_peak"] for row in rows] == [None, None]


def test_a_cpu_row_computes_at_the_precision_it_asked_for() -> None:
    """Only a GPU row that fell back to the CPU has no math precision: an ONNX Runtime CPU row, which runs on the CPU
    provider as it should, lost its fp32."""
    row = {"device": "cpu", "runtime": "ort-cpu", "precision": "fp32", "ran_on": "CPUExecutionProvider"}
    assert bench.arithmetic_precision(row, None) == "fp32"
    assert bench.arithmetic_precision({**row, "device": "cuda", "runtime": "ort-cuda"}, None) is None


def test_the_energy_window_is_filled_rounding_the_runs_up(monkeypatch) -> None:
    """Runs of 0.03 s fill a 0.05 s window in 2, not 1: rounding down measured less than the window NVML needs."""
    _energy_counter_10_j_apart(monkeypatch)
    runtime = _CountedRuns()
    bench._energy_window(runtime, {}, 0.03, 1, "cuda:0")
    assert runtime.ran == [2]


def test_a_cpu_points_memory_estimate_spares_batch_1_and_speaks_in_gib(monkeypatch) -> None:
    """Batch 1 always runs, whatever the estimate; the refusal's figures are GiB and MiB (2**30, 2**20 bytes): in
    GB the 16 GiB estimate read 17.2."""
    from types import SimpleNamespace

    monkeypatch.setattr(bench, "usable_host_memory", lambda cap: 8 * 2**30)
    model = SimpleNamespace(has_torch=True)
    ctx = SimpleNamespace(model=model, job_memory_gb=8.0, profile=(2**30, 3 * 2**30))  # 1 GiB + 3 GiB a sample
    assert bench._over_host_memory(ctx, BenchPoint("eager", "fp32", 1, "cpu")) is None  # 4 GiB: fits anyway
    assert bench._over_host_memory(ctx, BenchPoint("eager", "fp32", 2, "cpu")) is None  # 7 GiB of 8
    ctx.profile = (2**30, 15 * 2**30)
    assert bench._over_host_memory(ctx, BenchPoint("eager", "fp32", 1, "cpu")) is None  # 16 GiB, but batch 1
    words = bench._over_host_memory(ctx, BenchPoint("eager", "fp32", 2, "cpu"))
    assert words.startswith("not run: batch 2 may need up to 31.0 GiB of memory (15360 MiB a sample")
    assert "1024 MiB of weights) and 8.0 GiB is free" in words


class _GpuPointRuntime:
    """An eager runtime on a card that is not here: each run allocates 64 MiB on a fake CUDA allocator and frees it."""

    ran_on, fell_back, fallback_reason = "cuda:0", False, None

    def __init__(self, allocator) -> None:
        self.allocator, self.ran = allocator, []

    def load(self) -> None:
        pass

    def set_inputs(self, inputs) -> None:
        pass

    def run(self) -> None:
        self.allocator.allocate(64 * 2**20)
        self.allocator.free(64 * 2**20)

    def timed_runs(self, runs: int) -> list[float]:
        self.ran.append(runs)
        for _ in range(runs):
            self.run()
        return [1.0] * runs

    def sync(self) -> None:
        pass

    def output(self) -> np.ndarray:
        return np.ones((8, 2), np.float32)

    def close(self) -> None:
        pass


def test_a_gpu_points_memory_leaves_out_what_the_process_held_before_and_its_energy_is_per_sample(monkeypatch) -> None:
    """Networks other work keeps on the card (100 MiB here) are not the point's: its allocator peak is the runs'
    64 MiB. Energy is the window's joules over every sample of its runs (4 runs of batch 2: 40 J is 5 J a sample),
    from the timed runs where they fill the energy window, with no second window then."""
    import torch
    from test_measure import FakeAllocator, FakeDevice, FakeNvml

    from engine.bench.workloads import BenchModel
    from engine.jobs.measure import NVML_COUNTER, measured

    allocator = FakeAllocator()
    allocator.allocate(100 * 2**20)
    nvml = FakeNvml(energy_mj=[1_000_000, 1_040_000])
    runtime = _GpuPointRuntime(allocator)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: allocator.allocated())
    monkeypatch.setattr(bench, "make_runtime", lambda *args: runtime)
    monkeypatch.setattr(
        bench, "measured", lambda device: measured("cpu", nvml_device=FakeDevice(nvml), allocator=allocator)
    )
    monkeypatch.setattr(bench, "ENERGY_WINDOW_S", 0.0)
    point = BenchPoint("eager", "fp32", 2, "cuda")
    model = BenchModel("m", "m", None, numpy_inputs=lambda b: {})
    ctx = bench._Context(model, SweepConfig("m", [point], runs=4, warmup=0), "cuda:0", None, 0.9, 1e12)
    ctx.references["cuda"] = np.ones((8, 2), np.float32)
    row = bench._empty_row(point)
    bench._measure(ctx, point, row, lambda words: None)
    assert runtime.ran == [4]  # the timed runs only: no energy window after them
    assert row["peak_allocated_bytes"] == 64 * 2**20
    assert row["energy_j_per_sample"] == pytest.approx(40.0 / (4 * 2)) and row["energy_source"] == NVML_COUNTER
    assert row["energy_window_s"] >= 0 and row["error_vs_fp32"]["max_abs"] == 0.0


def _on_meta(name: str, cache: Path, net: torch.nn.Module | None = None) -> tuple[list[torch.Tensor], object, float]:
    """A workload's batch of 2, run through its network (or `net`) on the meta device: shapes and the counter's
    FLOPs without memory or arithmetic, so the real sizes cost nothing. (inputs, outputs, GFLOP per sample)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = builtin_model(name, cache)
    if net is None:
        with torch.device("meta"):
            net = model.build_torch()
    inputs = [x.to("meta") for x in model.torch_inputs(2)]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = net.to("meta")(*inputs)
    return inputs, out, counter.get_total_flops() / 2 / 1e9


@pytest.mark.slow  # diffusers builds the real UNet on the meta device in seconds
def test_the_musetalk_workloads_take_the_pipelines_shapes_at_the_readmes_flops(tmp_path: Path) -> None:
    """A workload given other shapes than the pipeline's still runs, and times another problem: its TFLOP/s and its
    cost per request are then of a network nobody runs. The UNet takes the avatar's 8 latent channels at 32x32 (a
    256x256 face) and a (10 rows x 5 whisper layers, 384) audio prompt per frame; the decoder takes the UNet's output.
    At the real sizes they cost the 177.8 and 622.2 GFLOP a frame the README and results report."""
    from engine.lipsync.musetalk.audio import PROMPT_DIM, WINDOW_ROWS
    from engine.lipsync.musetalk.random_weights import LatentDecoder, UNetStep
    from engine.lipsync.musetalk.weights import UNET_CONFIG, WHISPER_ENCODER_CONFIG, meta_unet, meta_vae

    (latents, prompts), predicted, unet_gflop = _on_meta("musetalk-unet", tmp_path, UNetStep(meta_unet()))
    assert tuple(latents.shape) == (2, UNET_CONFIG["in_channels"], 32, 32)
    assert tuple(prompts.shape) == (2, WINDOW_ROWS * (WHISPER_ENCODER_CONFIG["encoder_layers"] + 1), PROMPT_DIM)
    (decoded,), faces, vae_gflop = _on_meta("musetalk-vae-decoder", tmp_path, LatentDecoder(meta_vae()))
    assert decoded.shape == predicted.shape == (2, 4, 32, 32) and faces.shape == (2, 3, 256, 256)
    assert (round(unet_gflop, 1), round(vae_gflop, 1)) == (177.8, 622.2)


def test_the_liveportrait_workloads_chain_as_the_portrait_pipeline_does(tmp_path: Path) -> None:
    """The appearance and motion extractors take the same 256x256 crop; the warping module takes the appearance
    features and two sets of the motion extractor's 21 keypoints; the decoder takes the warped features and gives
    512x512 frames (engine/portrait/networks.py). Per-frame FLOPs pinned as counted when the sweep added them."""
    (crop,), features, appearance = _on_meta("liveportrait-appearance", tmp_path)
    (motion_crop,), motion_out, motion = _on_meta("liveportrait-motion", tmp_path)
    (feature, kp_driving, kp_source), warped, warping = _on_meta("liveportrait-warping", tmp_path)
    (warped_in,), frames, decoder = _on_meta("liveportrait-decoder", tmp_path)
    assert crop.shape == motion_crop.shape == (2, 3, 256, 256)
    assert feature.shape == features.shape
    assert kp_driving.shape == kp_source.shape == (2, motion_out["kp"].shape[1] // 3, 3)  # kp: 21 points, flattened
    assert warped_in.shape == warped["out"].shape and frames.shape == (2, 3, 512, 512)
    gflop = [round(g, 1) for g in (appearance, motion, warping, decoder)]
    assert gflop == [64.1, 11.6, 342.1, 891.6]  # ConvNeXt-V2-tiny: 4.47 GMAC at 224x224, so 11.7 GFLOP at 256x256


def test_wav2lip_and_s3fd_workloads_take_their_onnx_exports_shapes(tmp_path: Path) -> None:
    """The ONNX runtimes run the example exports, whose only free axis is the batch: the PyTorch inputs must be the
    export's shapes, or the eager and ONNX Runtime rows of one sweep time two different problems."""
    from engine.onnx.examples import EXAMPLES

    for name, gflop in (("wav2lip", 7.93), ("s3fd", 156.1)):
        inputs, _, counted = _on_meta(name, tmp_path)
        with torch.device("meta"):
            exported = EXAMPLES[name].build()[1]
        assert [tuple(x.shape) for x in inputs] == [(2, *a.shape[1:]) for a in exported]
        assert round(counted, 2 if name == "wav2lip" else 1) == gflop
