"""engine.onnx.evaluate on the CPU: inputs, statistics, parity, accuracy, fallbacks and refusals, on tiny models."""

from __future__ import annotations

import dataclasses
import json
import math
import tracemalloc
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tiny_onnx import (  # noqa: E402
    SCALE,
    B,
    W,
    classifier,
    fixed,
    huge_output,
    mlp,
    nonzero,
    save,
    sequence,
    with_default,
)

import engine.onnx.compare as compare  # noqa: E402
import engine.onnx.inputs as onnx_inputs  # noqa: E402
import engine.onnx.plan as onnx_plan  # noqa: E402
import engine.onnx.report as eval_report  # noqa: E402
import engine.onnx.runner as runner  # noqa: E402
from engine.core.errors import InputError  # noqa: E402
from engine.onnx.compare import accuracy, parity, topk  # noqa: E402
from engine.onnx.config import EvalConfig, EvalError, InspectConfig  # noqa: E402
from engine.onnx.evaluate import check_request, evaluate  # noqa: E402
from engine.onnx.inputs import load_expected, load_npz_inputs, synthetic_inputs  # noqa: E402
from engine.onnx.inspection import inspect_model  # noqa: E402
from engine.onnx.latency import few_runs_note, latency_stats  # noqa: E402
from engine.onnx.model import Limits, ModelError, ModelInfo, TensorSpec  # noqa: E402
from engine.onnx.runner import Placement  # noqa: E402
from engine.runtimes.ort_session import OrtSession, SessionError, runtime_limits  # noqa: E402

# The request names its model; evaluate() runs the prepared file it is handed, so the name here is only a label.
FAST = {"model": Path("model.onnx"), "runs": 5, "warmup": 1, "intra_op_threads": 1}


def warnings_but_spread(report: dict) -> list[str]:
    """The report's warnings less the timing-spread ones, which a busy machine adds to any row (timing noise is not
    what these tests are about)."""
    return [w for w in report["warnings"] if "spread too wide to trust" not in w]


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float32) @ W + B, 0)


@pytest.fixture
def mlp_model(tmp_path: Path) -> tuple[Path, ModelInfo]:
    path = mlp(tmp_path / "mlp.onnx")
    return path, inspect_model(path)


def _plain_types(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types(v) for v in value)
    return value is None or (type(value) in (str, int, float, bool))


# ---------------------------------------------------------------------------------------------- inputs


def test_synthetic_inputs_dtypes_shapes_and_seed() -> None:
    specs = [
        TensorSpec("f32", "float32", ["N", 3]),
        TensorSpec("f16", "float16", [2, "T"]),
        TensorSpec("i64", "int64", ["N"]),
        TensorSpec("i8", "int8", [50]),
        TensorSpec("u8", "uint8", [4, 4]),
        TensorSpec("b", "bool", ["N", 2]),
    ]
    values = {"N": 5, "T": 7}
    a = synthetic_inputs(specs, values, seed=1)
    expect = {"f32": (5, 3), "f16": (2, 7), "i64": (5,), "i8": (50,), "u8": (4, 4), "b": (5, 2)}
    for spec in specs:
        assert a[spec.name].dtype == np.dtype(spec.dtype)
        assert a[spec.name].shape == expect[spec.name]
    assert a["f32"].min() >= 0 and a["f32"].max() < 1
    for name in ("i64", "i8", "u8"):
        assert a[name].min() >= 0 and a[name].max() < 100
    again, other = synthetic_inputs(specs, values, seed=1), synthetic_inputs(specs, values, seed=2)
    assert all(np.array_equal(a[k], again[k]) for k in a)
    assert not np.array_equal(a["f32"], other["f32"])
    with pytest.raises(EvalError, match="numeric or bool"):
        synthetic_inputs([TensorSpec("s", "object", [1])], {}, 0)


def test_latency_stats_by_hand() -> None:
    stats = latency_stats([float(v) for v in range(10, 0, -1)], batch=4)
    assert stats["n"] == 10
    assert stats["mean_ms"] == pytest.approx(5.5)
    assert stats["std_ms"] == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert (stats["min_ms"], stats["max_ms"]) == (1.0, 10.0)
    assert stats["p50_ms"] == pytest.approx(5.5)
    assert stats["p90_ms"] == pytest.approx(9.1)
    assert stats["p95_ms"] is None and stats["p99_ms"] is None  # 10 runs: p95 and p99 would be the slowest ones
    hundred = latency_stats([float(v) for v in range(1, 101)], batch=1)
    assert hundred["p95_ms"] == pytest.approx(95.05) and hundred["p99_ms"] == pytest.approx(99.01)
    assert stats["throughput_per_s"] == pytest.approx(4 / 0.0055)
    assert latency_stats([2.0], 1)["std_ms"] == 0.0
    with pytest.raises(EvalError):
        latency_stats([], 1)


# ---------------------------------------------------------------------------------------------- evaluate


def test_evaluate_cpu_batch_sweep(mlp_model: tuple[Path, ModelInfo]) -> None:
    path, info = mlp_model
    calls: list[tuple[float, str]] = []
    report = evaluate(path, info, EvalConfig(batch_sizes=(1, 4), **FAST), progress=lambda f, s: calls.append((f, s)))
    rows = report["results"]
    assert [(r["provider"], r["batch"]) for r in rows] == [("cpu", 1), ("cpu", 4)]
    for row in rows:
        lat = row["latency"]
        assert row["error"] is None and not row["fell_back"]
        assert lat["n"] == 5
        assert lat["min_ms"] <= lat["p50_ms"] <= lat["max_ms"]
        assert lat["p90_ms"] is None and lat["p95_ms"] is None and lat["p99_ms"] is None  # from 5 runs: none
        assert row["samples_per_s"] == pytest.approx(row["batch"] / (lat["mean_ms"] / 1000))
        assert row["first_run_ms"] > 0
        assert row["latency_iobinding"] is None and row["iobinding"].startswith("not applicable")
        assert row["speedup_vs_cpu"] == 1.0
        assert row["achieved_gflops"] > 0  # MatMul FLOPs, scaled by the batch
        assert row["memory"]["host_rss_before_bytes"] > 0 and row["memory"]["gpu_delta_bytes"] is None
    assert report["notes"][-1].startswith("p90, p95, p99 left out where 5 runs were timed")
    gflop = [r["achieved_gflops"] * r["latency"]["mean_ms"] for r in rows]
    assert gflop[1] == pytest.approx(4 * gflop[0])
    for out in ("y", "k2"):
        p = report["parity"]["cpu"][out]
        assert (p["max_abs"], p["max_rel"], p["mean_abs"], p["tolerance_to_pass"]) == (0.0, 0.0, 0.0, 0.0)
        assert p["cosine"] == pytest.approx(1.0)
    assert warnings_but_spread(report) == []
    assert report["sessions"]["cpu"]["got"] == ["CPUExecutionProvider"]
    assert report["input_source"] == {"x": "synthetic", "k": "synthetic"}
    assert _plain_types(report)
    json.dumps(report, allow_nan=False)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cuda_fallback_is_loud(mlp_model: tuple[Path, ModelInfo]) -> None:
    from engine.system.ort_probe import probe_provider

    if probe_provider("CUDAExecutionProvider")["loaded"]:
        pytest.skip("CUDA really loads here: no fallback to observe")
    path, info = mlp_model
    report = evaluate(path, info, EvalConfig(providers=("cuda",), **FAST))
    assert report["results"][0]["trt_build_s"] is None
    session = report["sessions"]["cuda"]
    assert session["fell_back"] and session["got"][0] == "CPUExecutionProvider"
    assert any(
        "CUDAExecutionProvider" in w and ("libcublasLt" in w or "CPUExecutionProvider" in w) for w in report["warnings"]
    )
    (row,) = report["results"]
    assert row["provider"] == "cuda" and row["fell_back"] and row["ran_on"] == "CPUExecutionProvider"
    assert row["latency_iobinding"] is None
    # CPU was not asked for: it ran only as the parity reference, without timing rows.
    assert report["sessions"]["cpu"]["reference_only"] is True
    assert report["parity"]["cuda"]["y"]["max_abs"] == 0.0 and "cpu" not in report["parity"]
    assert row["speedup_vs_cpu"] is None
    json.dumps(report)


def test_partial_reports_come_after_each_provider_but_the_last(mlp_model: tuple[Path, ModelInfo]) -> None:
    """Guards evaluate's `partial`: a stopped evaluation keeps the providers measured so far, and the finished one
    hands over only its final report (a partial one after the last provider claimed a partial run that ended)."""
    path, info = mlp_model
    seen: list[dict] = []
    evaluate(path, info, EvalConfig(**FAST), partial=seen.append)
    assert seen == []  # one provider: its report is the final one
    report = evaluate(path, info, EvalConfig(providers=("cpu", "cuda"), **FAST), partial=seen.append)
    (first,) = seen
    assert [r["provider"] for r in first["results"]] == ["cpu"]
    assert [r["provider"] for r in report["results"]] == ["cpu", "cuda"]


def test_a_config_made_in_python_is_refused_as_a_front_end_refuses_it(mlp_model: tuple[Path, ModelInfo]) -> None:
    """Guards the `config.checked()` in check_request and evaluate: an EvalConfig built in code skips the front
    ends' checks, so an option for a provider not asked for, or a batch of 0, must still be refused with its words
    (not run, or fail later in numpy)."""
    path, info = mlp_model
    bad = {
        "trt fp16 applies to the trt provider, not asked for": EvalConfig(trt_fp16=True, **FAST),
        "batch sizes 0 is outside 1..": EvalConfig(batch_sizes=(0,), **FAST),
    }
    for message, config in bad.items():
        with pytest.raises(EvalError, match=message):
            check_request(info, config)
        with pytest.raises(EvalError, match=message):
            evaluate(path, info, config)


def test_every_session_is_closed_after_its_rows_even_when_they_fail(
    mlp_model: tuple[Path, ModelInfo], monkeypatch
) -> None:
    """A session holds the model's weights (on a GPU, its memory) until closed: each is closed once its rows are
    done, the CPU reference's too, and when a run raises, so a failed evaluation does not keep a card's memory."""
    opened: list[OrtSession] = []
    closed: list[OrtSession] = []

    class Recorded(OrtSession):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(runner, "OrtSession", Recorded)
    path, info = mlp_model
    evaluate(path, info, EvalConfig(providers=("cuda",), **FAST))  # CUDA (fallen back here) and the CPU reference
    assert len(opened) == 2 and closed == opened

    def broken(*args, **kwargs) -> None:
        raise RuntimeError("the run broke")

    monkeypatch.setattr(runner.Runner, "run_batches", broken)
    opened.clear()
    closed.clear()
    with pytest.raises(RuntimeError, match="the run broke"):
        evaluate(path, info, EvalConfig(**FAST))
    assert len(opened) == 1 and closed == opened


def test_iobinding_path_runs_on_cpu_values(mlp_model: tuple[Path, ModelInfo]) -> None:
    """The device-resident timing is only used on a GPU; its binding logic is exercised here on the CPU."""
    path, info = mlp_model
    config = EvalConfig(**FAST)
    session = OrtSession(path, runner._session_options("cpu", config, Placement()))
    meta = session.info
    assert meta["got"] == ["CPUExecutionProvider"] and not meta["fell_back"] and meta["create_s"] > 0
    assert session.device == ("cpu", 0)  # a CPU session binds where it runs
    feeds = synthetic_inputs(info.inputs, {"N": 2}, 0)
    stats = runner._iobinding_latency(session, feeds, config, batch=2)
    assert stats["n"] == 5 and stats["throughput_per_s"] > 0


def test_the_placement_and_the_request_reach_the_session_and_the_memory_figures(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's placement (device, arena share, TensorRT cache) and the request's settings reach the GPU session,
    and its memory is read on that device, after minus before: dropping one ran on device 0 without a test noticing."""
    opened: list[runner.OrtOptions] = []

    def recording(model_path, options):  # the GPU session is asked for, then run on the CPU here
        opened.append(options)
        return OrtSession(model_path, dataclasses.replace(options, provider="cpu"))

    reads: list[int] = []

    def fake_gpu_memory(source, device_id: int = 0) -> dict[str, int]:
        reads.append(device_id)
        return {"used": 1000 * len(reads), "process": 10 * len(reads)}

    monkeypatch.setattr(runner, "OrtSession", recording)
    monkeypatch.setattr(runner, "nvml_source", lambda: object())
    monkeypatch.setattr(runner, "gpu_memory", fake_gpu_memory)
    path, info = mlp_model
    config = EvalConfig(**{**FAST, "intra_op_threads": 2}, providers=("cuda",), cuda_tf32=True)
    place = Placement(device_id=1, gpu_memory_fraction=0.5, trt_cache_dir="/cache/trt")
    report = evaluate(path, info, config, placement=place)
    gpu = next(options for options in opened if options.provider == "cuda")
    assert (gpu.device_id, gpu.gpu_memory_fraction, gpu.trt_cache_dir) == (1, 0.5, "/cache/trt")
    assert (gpu.cuda_tf32, gpu.intra_op_threads) == (True, 2)
    trt = EvalConfig(**FAST, providers=("trt",), trt_fp16=True, trt_workspace_gb=2.0)
    trt_options = runner._session_options("trt", trt, place)
    assert (trt_options.trt_fp16, trt_options.trt_workspace_gb, trt_options.cuda_tf32) == (True, 2.0, False)
    assert reads == [1, 1]  # before the session, after the batch: on the placement's device
    memory = report["results"][0]["memory"]
    assert (memory["gpu_used_before_bytes"], memory["gpu_used_after_bytes"], memory["gpu_delta_bytes"]) == (
        1000, 2000, 1000)  # fmt: skip
    assert memory["gpu_process_bytes"] == 20  # the arena only grows: the process's figure after the batch
    host = runner._memory_delta({"rss": 100, "gpu": None, "process": None}, {"rss": 150, "gpu": None, "process": None})
    assert host["host_rss_delta_bytes"] == 50 and host["gpu_delta_bytes"] is None


class _ClockedSession(OrtSession):
    """A real CPU session on a fake clock: every run takes exactly STEP_NS, and the feeds' batch sizes are kept."""

    STEP_NS = 99_123_456  # 99.123456 ms: the report keeps 4 decimals of a millisecond
    now = 0
    batches: ClassVar[list[int]] = []

    def run(self, feeds):
        _ClockedSession.now += self.STEP_NS
        self.batches.append(len(feeds["x"]))
        return super().run(feeds)


def test_times_are_milliseconds_of_each_batchs_own_inputs_and_the_cpu_count_comes_from_the_warm_up(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a clock where every run takes 99.123456 ms: the figures are in ms (not s), each batch runs its own batch of
    inputs (not the first batch's), and with --warmup 4 and no --runs the CPU's count is as many as fit in 2 s at the
    warm-up's time per run (20; the warm-up's whole time gave 10)."""
    monkeypatch.setattr(_ClockedSession, "batches", [])
    monkeypatch.setattr(runner, "OrtSession", _ClockedSession)
    monkeypatch.setattr(runner.time, "perf_counter_ns", lambda: _ClockedSession.now)
    path, info = mlp_model
    config = EvalConfig(model=Path("model.onnx"), batch_sizes=(1, 3), warmup=4, intra_op_threads=1)
    report = evaluate(path, info, config)
    for row in report["results"]:
        assert row["first_run_ms"] == pytest.approx(99.123456) and row["warmup"] == 4
        assert row["times_ms"] == [99.1235] * 20 and row["latency"]["p50_ms"] == pytest.approx(99.123456)
    assert _ClockedSession.batches == [1] * 25 + [3] * 25  # first run, warm-up and timed runs of each batch
    assert any("cpu b1 4 + 20, cpu b3 4 + 20" in note for note in report["notes"])


class _TensorRtOnTheCpu(_ClockedSession):
    """Says TensorRT runs it (a CPU session underneath) after 5 s of engine building, and cannot bind to a device."""

    def __init__(self, model_path, options) -> None:
        super().__init__(model_path, dataclasses.replace(options, provider="cpu"))
        self.options, self.got, self.create_s = options, ["TensorrtExecutionProvider", "CPUExecutionProvider"], 5.0

    def bind(self, feeds):
        raise RuntimeError("no CUDA device here")


def test_tensorrt_build_time_and_a_failed_device_resident_timing_are_reported(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's build time counts the session's creation (a static engine is built then), later batches
    only their first run; an IOBinding timing that fails is said in the row and the warnings, and the rest runs."""
    monkeypatch.setattr(runner, "OrtSession", _TensorRtOnTheCpu)
    monkeypatch.setattr(runner.time, "perf_counter_ns", lambda: _ClockedSession.now)
    path, info = mlp_model
    report = evaluate(
        path, info, EvalConfig(**{**FAST, "runs": 2, "warmup": 0}, providers=("trt",), batch_sizes=(1, 2))
    )
    first, second = report["results"]
    assert first["trt_build_s"] == pytest.approx(5.099123456) and second["trt_build_s"] == pytest.approx(0.099123456)
    for row in (first, second):
        assert row["iobinding"] == "failed: no CUDA device here" and row["latency"]["n"] == 2
        assert f"trt IOBinding timing failed at batch {row['batch']}: no CUDA device here" in report["warnings"]


def test_a_session_that_cannot_be_made_is_told_without_the_servers_path(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The private copy's path names the server's folders, so the message says "the model"; a TensorRT cache folder
    that cannot be made (OSError) is a provider's failure too, not the evaluation's; progress counts their batches."""

    def failing(model_path, options):
        if options.provider == "cuda":
            raise SessionError(f"CUDA failed to load {model_path}")
        if options.provider == "trt":
            raise OSError(f"[Errno 13] Permission denied: the engine cache beside {model_path}")
        return OrtSession(model_path, options)

    monkeypatch.setattr(runner, "OrtSession", failing)
    path, info = mlp_model
    calls: list[tuple[float, str]] = []
    config = EvalConfig(**FAST, providers=("cpu", "cuda", "trt"), batch_sizes=(1, 2))
    report = evaluate(path, info, config, progress=lambda f, s: calls.append((f, s)))
    assert report["sessions"]["cuda"]["error"] == "CUDA failed to load the model"
    assert report["sessions"]["trt"]["error"] == "[Errno 13] Permission denied: the engine cache beside the model"
    assert not any(str(path) in w for w in report["warnings"])
    assert [r["provider"] for r in report["results"]] == ["cpu", "cpu"]
    assert (4 / 6, "trt: creating the session") in calls  # the CPU's two batches and CUDA's two are done


def test_out_of_memory_skips_the_larger_batches_and_is_not_blamed_on_made_up_inputs(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch out of memory skips the larger ones after it (they would fail the same way, slowly), its error does
    not suggest real integer inputs (that hint is for an index out of range), and a long error is cut in the
    warning."""

    class Oom(OrtSession):
        def run(self, feeds):
            if len(feeds["x"]) >= 2:
                raise RuntimeError("CUDA out of memory: " + "x" * 1000)
            return super().run(feeds)

    monkeypatch.setattr(runner, "OrtSession", Oom)
    path, info = mlp_model
    report = evaluate(path, info, EvalConfig(**FAST, batch_sizes=(1, 2, 4)))
    ok, oom, skipped = report["results"]
    assert ok["error"] is None and oom["out_of_memory"] and skipped["error"] == "skipped: out of memory at batch 2"
    assert "were made up" not in oom["error"] and len(oom["error"]) > 1000
    (warning,) = [w for w in report["warnings"] if "failed" in w]
    assert warning == f"cpu at batch 2 failed: {oom['error'][:500]}"
    assert runner._is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED")) and not runner._is_oom(RuntimeError("bad shape"))


def test_a_failing_run_blames_only_the_integer_inputs_that_were_made_up(
    mlp_model: tuple[Path, ModelInfo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k given in an inputs .npz is the user's own: a failure is not put down to made-up values of it."""

    class Failing(OrtSession):
        def run(self, feeds):
            raise RuntimeError("index 7 is out of bounds")

    monkeypatch.setattr(runner, "OrtSession", Failing)
    path, info = mlp_model
    np.savez(tmp_path / "k.npz", k=np.array([[7]], np.int64))
    made_up = evaluate(path, info, EvalConfig(**FAST))["results"][0]["error"]
    assert "the integer input(s) k were made up" in made_up
    given = evaluate(path, info, EvalConfig(**FAST, inputs=tmp_path / "k.npz"))["results"][0]["error"]
    assert given == "RuntimeError: index 7 is out of bounds"


def test_a_failed_cpu_reference_is_said_and_progress_counts_it(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only a GPU asked for, the CPU runs once as the parity reference: its failure is said (there is then no
    parity), and it is a step of the progress, which reaches 1.0 only when everything is done."""

    def reference_fails(model_path, options):
        session = OrtSession(model_path, dataclasses.replace(options, provider="cpu"))
        if options.provider == "cpu":
            session.run = lambda feeds: (_ for _ in ()).throw(RuntimeError("reference broke"))
        return session

    monkeypatch.setattr(runner, "OrtSession", reference_fails)
    path, info = mlp_model
    calls: list[tuple[float, str]] = []
    report = evaluate(path, info, EvalConfig(**FAST, providers=("cuda",)), progress=lambda f, s: calls.append((f, s)))
    assert report["sessions"]["cpu"]["error"] == "RuntimeError: reference broke"
    assert "the CPU reference run failed, so there is no parity: reference broke" in report["warnings"]
    assert calls[-1] == (1.0, "done") and all(f < 1.0 for f, _ in calls[:-1])
    assert report["results"][0]["error"] is None


def test_device_resident_runs_left_empty_are_the_gpus_default_count(mlp_model: tuple[Path, ModelInfo]) -> None:
    """The IOBinding figure is measured on a GPU, so an empty --runs is the GPU's count (100), not the CPU's quick
    budget."""
    path, info = mlp_model
    config = EvalConfig(model=Path("model.onnx"), intra_op_threads=1)
    session = OrtSession(path, runner._session_options("cpu", config, Placement()))
    stats = runner._iobinding_latency(session, synthetic_inputs(info.inputs, {"N": 1}, 0), config, batch=1)
    assert stats["n"] == 100


def test_session_failure_is_recorded_and_others_run(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    def flaky(model_path, options):
        if options.provider == "trt":
            raise SessionError("TensorrtExecutionProvider: session creation failed: op NoSuchOp unsupported")
        return OrtSession(model_path, options)

    monkeypatch.setattr(runner, "OrtSession", flaky)
    path, info = mlp_model
    report = evaluate(path, info, EvalConfig(providers=("cpu", "trt"), **FAST))
    assert "NoSuchOp" in report["sessions"]["trt"]["error"]
    assert any("trt" in w and "NoSuchOp" in w for w in report["warnings"])
    assert [r["provider"] for r in report["results"]] == ["cpu"]
    assert "NoSuchOp" in report["parity"]["trt"]["error"] and report["parity"]["cpu"]["y"]["max_abs"] == 0.0


def test_failing_batch_is_recorded_and_the_rest_runs(tmp_path: Path) -> None:
    """Reshape to [1, 4] works at N=1 only: batch 4 fails with ORT's error, batch 1 is still measured."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1, 4], np.int64), "shape")],
    )
    path = save(graph, tmp_path / "reshape.onnx")
    report = evaluate(path, inspect_model(path), EvalConfig(batch_sizes=(4, 1), **FAST))
    bad, good = report["results"]
    assert bad["batch"] == 4 and bad["latency"] is None and not bad["out_of_memory"]
    assert "Reshape" in bad["error"] or "shape" in bad["error"].lower()
    assert "\n" not in bad["error"] and not any("\n" in w for w in report["warnings"])  # ORT's text ends in one
    assert good["batch"] == 1 and good["error"] is None and good["latency"]["n"] == 5
    assert any("batch 4 failed" in w for w in report["warnings"])
    # The CPU is the parity reference, and it has no outputs at the first batch size: said, not hidden.
    assert report["parity"] == {} and any("no CPU reference" in w for w in report["warnings"])
    json.dumps(report)


def test_a_symbol_left_at_its_default_is_said(tmp_path: Path) -> None:
    """A sequence model was timed at length 1 without a word (onnx inspect said it; eval did not)."""
    path = sequence(tmp_path / "seq.onnx")
    said = "symbolic dimensions at their default of 1: seq (give symbols, e.g. seq=N"
    report = evaluate(path, inspect_model(path), EvalConfig(batch_sizes=(2,), **FAST))
    assert any(said in w for w in report["warnings"])
    given = evaluate(path, inspect_model(path, {"seq": 8}), EvalConfig(batch_sizes=(2,), symbols=(("seq", 8),), **FAST))
    assert not any("default of 1" in w for w in given["warnings"])


def test_an_npz_of_another_sequence_length_is_told_the_symbols_that_take_it(tmp_path: Path) -> None:
    """The refusal gave the model's shape at seq=1 and said nothing of --symbols, which sets the run's sizes (the
    file's cannot: they are set before any input is read)."""
    path = sequence(tmp_path / "seq.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((1, 7), np.float32))
    config = EvalConfig(inputs=tmp_path / "x.npz", **FAST)
    with pytest.raises(EvalError, match=r"has shape \[1, 7\], the model wants \[1, 1\] .*; --symbols seq=7 runs at"):
        evaluate(path, inspect_model(path), config)
    np.savez(tmp_path / "b.npz", x=np.ones((3, 1), np.float32))  # the batch is --batch-sizes', not a symbol to give
    with pytest.raises(EvalError, match="must match the first batch size") as refused:
        evaluate(path, inspect_model(path), EvalConfig(inputs=tmp_path / "b.npz", **FAST))
    assert "--symbols" not in str(refused.value)
    report = evaluate(
        path, inspect_model(path, {"seq": 7}), EvalConfig(inputs=tmp_path / "x.npz", symbols=(("seq", 7),), **FAST)
    )
    assert report["results"][0]["error"] is None


def test_fixed_shape_runs_once_with_warning(tmp_path: Path) -> None:
    path = fixed(tmp_path / "fixed.onnx")
    report = evaluate(path, inspect_model(path), EvalConfig(batch_sizes=(1, 8), **FAST))
    (row,) = report["results"]
    assert row["batch"] == 2 and row["error"] is None
    (warning,) = warnings_but_spread(report)
    assert "no batch dimension" in warning
    one = evaluate(path, inspect_model(path), EvalConfig(batch_sizes=(8,), **FAST))  # one size asked: said too
    assert [r["batch"] for r in one["results"]] == [2] and "batch sizes [8] were ignored" in warnings_but_spread(one)[0]
    assert not warnings_but_spread(evaluate(path, inspect_model(path), EvalConfig(**FAST)))  # the default asks nothing


def _fixed_model(tmp_path: Path, shapes: list[list[int]], node: str, out: list | None, **attrs) -> Path:
    """One node on fixed-shape float inputs x (and z); the output y declares `out` (None: a sequence), whose open
    dimensions shape inference finds."""
    names = ["x", "z"][: len(shapes)]
    y = (
        _io("y", TensorProto.FLOAT, out)
        if out is not None
        else helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)
    )
    inputs = [_io(n, TensorProto.FLOAT, shape) for n, shape in zip(names, shapes, strict=True)]
    return save(_graph([helper.make_node(node, names, ["y"], **attrs)], inputs, [y]), tmp_path / f"{node}.onnx")


@pytest.mark.parametrize(
    ("shapes", "node", "attrs", "out", "samples", "said"),
    [
        ([[3, 16, 16]], "Relu", {}, [None] * 3, 1, "input 'x' [3, 16, 16] is one image"),  # CHW: counted 3
        ([[16, 16, 3]], "Relu", {}, [16, 16, 3], 1, "input 'x' [16, 16, 3] is one image"),  # HWC: counted 16
        ([[4, 5]], "Transpose", {}, [None, None], 1, "output 'y' [5, 4] does not start with it"),  # counted 4
        ([[4, 5]], "SplitToSequence", {}, None, 1, "no output's shape tells whether it is one"),
        ([[2, 4], [3, 4]], "Concat", {"axis": 0}, [5, 4], 1, "start with different sizes ('x' 2, 'z' 3)"),
        ([[2, 3, 8, 8]], "GlobalAveragePool", {}, [2, 3, 1, 1], 2, "input 'x' [2, 3, 8, 8] is a batch of 2 images"),
        ([[8, 1024, 3]], "Relu", {}, [None] * 3, 8, "every input of rank 2 or more and every output whose shape is"),
        ([[1, 3, 8, 8]], "Relu", {}, [1, 3, 8, 8], 1, None),  # batch 1: nothing to decide, nothing said
    ],
)
def test_a_fixed_first_dimension_is_a_batch_only_on_evidence(
    tmp_path: Path, shapes: list, node: str, attrs: dict, out: list | None, samples: int, said: str | None
) -> None:
    """samples/s multiplied every fixed model's throughput by its first input's first dimension: one CHW image
    read as 3 samples per run, x[4, 5] transposed as 4."""
    path = _fixed_model(tmp_path, shapes, node, out, **attrs)
    report = evaluate(path, inspect_model(path), EvalConfig(**FAST))
    (row,) = report["results"]
    assert row["error"] is None and row["batch"] == samples
    assert row["samples_per_s"] == pytest.approx(samples * 1000 / row["latency"]["mean_ms"])
    notes = [n for n in report["notes"] if n.startswith("samples/s counts")]
    if said is None:
        assert not notes
        return
    (note,) = notes
    assert note.startswith(f"samples/s counts {samples} sample{'s' if samples > 1 else ''} per run") and said in note
    assert note.endswith("export the model with a named batch dimension (then --batch-sizes sweeps it)")


def test_input_budget_refused_before_allocating(
    mlp_model: tuple[Path, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("allocated or created a session before the budget check")

    monkeypatch.setattr(onnx_inputs, "synthetic_inputs", boom)
    monkeypatch.setattr(runner, "OrtSession", boom)
    path, info = mlp_model
    with pytest.raises(ModelError, match="over the limit"):
        evaluate(path, info, EvalConfig(batch_sizes=(1, 64), **FAST), limits=Limits(max_input_elements=100))


# ---------------------------------------------------------------------------------------------- user inputs


def test_npz_inputs_refusals(mlp_model: tuple[Path, ModelInfo], tmp_path: Path) -> None:
    _, info = mlp_model
    values = {"N": 1}
    x, k = np.zeros((1, 4), np.float32), np.zeros((1, 1), np.int64)
    cases = {
        "name": ({"x": x, "kk": k}, "'kk'.*not model inputs"),
        "shape": ({"x": np.zeros((2, 4), np.float32)}, r"shape \[2, 4\].*\[1, 4\]"),
        "dtype": ({"k": np.full((1, 1), 0.5)}, "float64.*int64"),
        "empty": ({}, "inputs empty.npz holds no arrays; give one per input, named as the model's: 'x', 'k'"),
    }
    for label, (arrays, message) in cases.items():
        npz = tmp_path / f"{label}.npz"
        np.savez(npz, **arrays)
        with pytest.raises(EvalError, match=message):
            load_npz_inputs(npz, info.inputs, values)
    big = tmp_path / "big.npz"
    np.savez(big, k=np.array([[2**40]], np.int64))  # int64 fits; int64 -> int32 would need a value check
    assert load_npz_inputs(big, info.inputs, values)["k"].dtype == np.int64
    not_npz = tmp_path / "x.npz"
    not_npz.write_bytes(b"not a zip")
    with pytest.raises(EvalError, match=r"not a readable \.npz"):
        load_npz_inputs(not_npz, info.inputs, values)


def test_npz_arrays_in_npy_format_2_are_read_and_an_unknown_version_is_refused(
    mlp_model: tuple[Path, ModelInfo], tmp_path: Path
) -> None:
    """numpy writes .npy format 2.0 where a header passes 64 KiB, and other tools may always: such an array is read
    as a 1.0 one is. A version the header reader does not know is refused naming it, never misread."""
    _, info = mlp_model

    def npz(path: Path, versions: dict[str, tuple[int, int]]) -> Path:
        arrays = {"x": np.full((1, 4), 0.5, np.float32), "k": np.full((1, 1), 3, np.int64)}
        with zipfile.ZipFile(path, "w") as archive:
            for name, version in versions.items():
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, arrays[name], version=version)
        return path

    loaded = load_npz_inputs(npz(tmp_path / "v2.npz", {"x": (2, 0), "k": (1, 0)}), info.inputs, {"N": 1})
    assert loaded["x"].tolist() == [[0.5] * 4] and loaded["k"].tolist() == [[3]]
    with pytest.raises(EvalError, match=r"array 'x' cannot be read: \.npy format version \(3, 0\) is not supported"):
        load_npz_inputs(npz(tmp_path / "v3.npz", {"x": (3, 0), "k": (1, 0)}), info.inputs, {"N": 1})


def test_an_input_with_a_default_keeps_it_or_takes_the_npz_value(tmp_path: Path) -> None:
    """An initializer listed as a graph input (IR 4 on) is a default a run may set, as ONNX Runtime allows: the .npz
    setting it was refused as 'not model inputs'. Left out, the model's own value holds (never synthetic data)."""
    path = with_default(tmp_path / "default.onnx")
    info = inspect_model(path)
    assert [s.name for s in info.inputs] == ["x"]
    assert [(s.name, s.dtype, s.shape) for s in info.overridable_inputs] == [("scale", "float32", [3])]
    x = np.array([[1.0, -1.0, 2.0]], np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    np.savez(tmp_path / "set.npz", x=x, scale=np.full(3, 10.0))  # float64: cast as any input's values are
    np.savez(tmp_path / "own.npz", y=x * SCALE + B)
    np.savez(tmp_path / "ten.npz", y=x * 10 + B)

    def accuracy_of(inputs: str, expected: str) -> tuple[dict, dict]:
        report = evaluate(path, info, EvalConfig(inputs=tmp_path / inputs, expected=tmp_path / expected, **FAST))
        return report["accuracy"]["expected"]["cpu"]["y"], report["input_source"]

    own, sources = accuracy_of("x.npz", "own.npz")
    assert own["max_error"] == pytest.approx(0.0, abs=1e-6) and sources == {"x": "npz"}
    ten, sources = accuracy_of("set.npz", "ten.npz")
    assert ten["max_error"] == pytest.approx(0.0, abs=1e-6) and sources == {"x": "npz", "scale": "npz"}
    np.savez(tmp_path / "short.npz", scale=np.ones(2, np.float32))
    wants = r"'scale' in the .npz has shape \[2\], the model wants \[3\] \(the shape of the model's own value"
    with pytest.raises(EvalError, match=wants):
        check_request(info, EvalConfig(inputs=tmp_path / "short.npz", **FAST))


@pytest.mark.parametrize("ir_version", [8, 3])
def test_a_constant_set_in_the_npz_is_refused_saying_it_is_one(tmp_path: Path, ir_version: int) -> None:
    """An initializer that is not a graph input, and any initializer of an IR 3 model (listed among its inputs, but
    ONNX Runtime holds them constant), cannot be fed: the message said only that it was not a model input."""
    path = with_default(tmp_path / "default.onnx", ir_version)
    info = inspect_model(path)
    constants = ["B"] if ir_version >= 4 else ["scale", "B"]
    assert [s.name for s in info.inputs] == ["x"] and info.constants == constants
    for name in constants:
        np.savez(tmp_path / f"{name}.npz", **{name: np.ones(3, np.float32)})
        with pytest.raises(EvalError, match=f"inputs .npz sets '{name}', a constant of the model .*: ONNX Runtime "
                           "does not let a run set it; leave it out"):  # fmt: skip
            check_request(info, EvalConfig(inputs=tmp_path / f"{name}.npz", **FAST))
    np.savez(tmp_path / "typo.npz", scael=np.ones(3, np.float32))
    with pytest.raises(EvalError, match="'scael' that are not model inputs; the model's inputs are: 'x'"):
        check_request(info, EvalConfig(inputs=tmp_path / "typo.npz", **FAST))
    old = ir_version < 4
    said = "IR version 3 (before ONNX 1.3) lists its initializers as inputs (2); ONNX Runtime holds them constant"
    assert any(said in w for w in info.warnings) == old
    assert any("1 input(s) have a default value" in w for w in info.warnings) != old
    assert "constants" not in info.to_dict()  # a large model has thousands: not in the inspection or the report


def test_npz_inputs_are_used(mlp_model: tuple[Path, ModelInfo], tmp_path: Path) -> None:
    path, info = mlp_model
    x = np.array([[1.0, -2.0, 3.0, 0.5], [0.2, 0.4, -0.6, 2.0]])  # float64: cast to float32 (values fit)
    k = np.array([[7], [-3]], np.int64)
    np.savez(tmp_path / "in.npz", x=x, k=k)
    np.savez(tmp_path / "want.npz", y=reference(x), k2=2 * k)
    config = EvalConfig(batch_sizes=(2, 3), inputs=tmp_path / "in.npz", expected=tmp_path / "want.npz", **FAST)
    report = evaluate(path, info, config)
    assert report["input_source"] == {"x": "npz", "k": "npz"}
    assert [r["batch"] for r in report["results"]] == [2, 3]  # batch 3 repeats the user's rows
    assert all(r["error"] is None for r in report["results"])
    acc = report["accuracy"]["expected"]["cpu"]
    assert acc["y"]["mae"] < 1e-6 and acc["y"]["cosine"] == pytest.approx(1.0)
    assert acc["k2"]["max_error"] == 0.0


def test_bfloat16_and_float8_models_run(tmp_path: Path) -> None:
    """Types numpy lacks (ONNX's bfloat16 and float8, ml_dtypes' arrays): synthetic and .npz inputs reach ORT as their
    bits, the bfloat16 output comes back as float32 for parity and accuracy, and a uint16 .npz is refused."""
    import ml_dtypes

    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 4])
    f = helper.make_tensor_value_info("f", TensorProto.FLOAT8E4M3FN, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 4])
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["f"], ["f32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x32", "f32"], ["p"]),
        helper.make_node("Cast", ["p"], ["y"], to=TensorProto.BFLOAT16),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, f], [y]), opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9  # float8 needs IR 9 and opset 19
    path = tmp_path / "bf16.onnx"
    onnx.save(model, str(path))
    info = inspect_model(path)
    feeds = synthetic_inputs(info.inputs, {"N": 2}, 0)
    assert feeds["x"].dtype == ml_dtypes.bfloat16 and feeds["f"].dtype == ml_dtypes.float8_e4m3fn
    drawn = feeds["x"].astype(np.float32)
    assert drawn.min() > 0 and drawn.max() < 1

    xs = np.array([[1.5, -2.0, 0.25, 3.0]], ml_dtypes.bfloat16)
    fs = np.array([[2.0, 0.5, -4.0, 1.0]], ml_dtypes.float8_e4m3fn)
    np.savez(tmp_path / "in.npz", x=xs, f=fs)  # numpy writes them as raw bytes (|V2, |V1)
    np.savez(tmp_path / "want.npz", y=np.array([[3.0, -1.0, -1.0, 3.0]], np.float32))
    config = EvalConfig(inputs=tmp_path / "in.npz", expected=tmp_path / "want.npz", **FAST)
    report = evaluate(path, info, config)
    (row,) = report["results"]
    assert row["error"] is None and row["latency"]["n"] == 5
    assert report["input_source"] == {"x": "npz", "f": "npz"}
    assert report["accuracy"]["expected"]["cpu"]["y"]["max_error"] == 0.0
    assert report["parity"]["cpu"]["y"]["max_abs"] == 0.0
    session = OrtSession(path, runner._session_options("cpu", config, Placement()))
    out = session.run(load_npz_inputs(tmp_path / "in.npz", info.inputs, {"N": 1}))
    assert out[0].dtype == np.float32 and out[0].tolist() == [[3.0, -1.0, -1.0, 3.0]]
    assert runner._iobinding_latency(session, feeds, config, batch=2)["n"] == 5  # bound as bits on the session's device

    np.savez(tmp_path / "u16.npz", x=xs.view(np.uint16))
    with pytest.raises(EvalError, match=r"uint16 cannot be converted .* save it as ml_dtypes\.bfloat16"):
        load_npz_inputs(tmp_path / "u16.npz", info.inputs, {"N": 1})


def test_inputs_that_cannot_be_made_up_are_refused_at_submit(tmp_path: Path) -> None:
    """A string input (or a packed 4-bit one) has no synthetic values: check_request, which a queue runs at submit,
    refuses it unless an inputs .npz gives it, so it never becomes a failed job."""
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, ["N", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # fmt: skip
    path = tmp_path / "text.onnx"
    onnx.save(model, str(path))
    info = inspect_model(path)
    assert info.inputs[0].type_name == "string"  # numpy's "object", shown as such by inspect and in messages
    with pytest.raises(EvalError, match="input 'x' is string: synthetic inputs are numeric or bool only"):
        check_request(info, EvalConfig(**FAST))
    np.savez(tmp_path / "words.npz", x=np.array([["a", "b"]]))
    config = EvalConfig(inputs=tmp_path / "words.npz", **FAST)
    check_request(info, config)
    (row,) = evaluate(path, info, config)["results"]
    assert row["error"] is None


# ---------------------------------------------------------------------------------------------- accuracy


def test_accuracy_against_expected(mlp_model: tuple[Path, ModelInfo], tmp_path: Path) -> None:
    path, info = mlp_model
    feeds = synthetic_inputs(info.inputs, {"N": 1}, seed=3)  # what evaluate feeds with seed 3
    y, k2 = reference(feeds["x"]), 2 * feeds["k"]
    np.savez(tmp_path / "good.npz", y=y, k2=k2)
    np.savez(tmp_path / "off.npz", y=y + 0.1, k2=k2)
    np.savez(tmp_path / "shape.npz", y=np.zeros((1, 5), np.float32), k2=k2)
    np.savez(tmp_path / "keys.npz", y=y, extra=k2)
    np.savez(tmp_path / "some.npz", y=y + 0.1)  # outputs left out of the file are not compared
    np.savez(tmp_path / "none.npz")

    def run(name: str) -> dict:
        return evaluate(path, info, EvalConfig(seed=3, expected=tmp_path / name, **FAST))

    good = run("good.npz")
    assert not [note for note in good["notes"] if "not checked" in note]  # every output compared: nothing to say
    # scored on made-up inputs: said (the web form's first user scored random inputs and read the figures as theirs)
    synthetic = ("accuracy is scored on seeded synthetic inputs (seed 3), not on your data: it means something only "
                 "where the expected outputs or labels were made from those same inputs; give the inputs .npz (or "
                 "the images) they belong to")  # fmt: skip
    assert synthetic in good["warnings"] and synthetic in check_request(
        info, EvalConfig(seed=3, expected=tmp_path / "good.npz", **FAST)
    )
    np.savez(tmp_path / "feeds.npz", **feeds)
    given = evaluate(path, info, EvalConfig(inputs=tmp_path / "feeds.npz", expected=tmp_path / "good.npz", **FAST))
    assert not [w for w in given["warnings"] if "synthetic" in w]  # the user's own inputs: nothing to say
    good = good["accuracy"]["expected"]["cpu"]["y"]
    assert good["mae"] < 1e-6 and good["rmse"] < 1e-6 and good["max_error"] < 1e-6
    off = run("off.npz")["accuracy"]["expected"]["cpu"]["y"]
    assert off["mae"] == pytest.approx(0.1, abs=1e-5) and off["max_error"] == pytest.approx(0.1, abs=1e-5)
    assert "shape mismatch" in run("shape.npz")["accuracy"]["expected"]["cpu"]["y"]["error"]
    some = run("some.npz")
    said = "accuracy checks the expected output(s) 'y'; not checked, as the expected-outputs .npz leaves them out: 'k2'"
    assert said in some["notes"]  # accuracy on some outputs must not read as on all
    some = some["accuracy"]["expected"]["cpu"]
    assert list(some) == ["y"] and some["y"]["mae"] == pytest.approx(0.1, abs=1e-5)
    with pytest.raises(EvalError, match=r"named after the model's outputs \('y', 'k2'\).*it holds \['extra'\]"):
        run("keys.npz")
    with pytest.raises(EvalError, match="one or more of them: it is empty"):
        run("none.npz")


def test_accuracy_is_scored_for_the_providers_asked_not_the_cpu_reference(tmp_path: Path) -> None:
    """Asked for CUDA alone, CPU runs only as the parity reference: accuracy and top-k are the CUDA row's, and a
    CPU entry there would score a provider nobody asked for."""
    from engine.system.ort_probe import probe_provider

    if probe_provider("CUDAExecutionProvider")["loaded"]:
        pytest.skip("CUDA really loads here: CPU is not a reference-only session")
    weights = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    path = classifier(tmp_path / "cls.onnx", weights)
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    np.savez(tmp_path / "want.npz", logits=x @ weights)
    config = EvalConfig(
        providers=("cuda",), batch_sizes=(4,), inputs=tmp_path / "x.npz", expected=tmp_path / "want.npz",
        labels=(0, 1, 2, 3), **FAST,
    )  # fmt: skip
    report = evaluate(path, inspect_model(path), config)
    assert report["sessions"]["cpu"]["reference_only"] is True
    assert list(report["accuracy"]["expected"]) == ["cuda"] and list(report["accuracy"]["topk"]) == ["cuda"]


def test_topk_on_a_tiny_classifier(tmp_path: Path) -> None:
    weights = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    path = classifier(tmp_path / "cls.onnx", weights)
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    ranked = np.argsort(-(x @ weights), axis=1)
    labels = [int(ranked[0, 0]), int(ranked[1, 0]), int(ranked[2, 3]), int(ranked[3, 5])]  # rank 1, 1, 4, 6
    np.savez(tmp_path / "x.npz", x=x)
    config = EvalConfig(batch_sizes=(4,), inputs=tmp_path / "x.npz", labels=tuple(labels), **FAST)
    result = evaluate(path, inspect_model(path), config)["accuracy"]["topk"]["cpu"]
    assert (result["top1"], result["top5"], result["n"], result["classes"]) == (0.5, 0.75, 4, 6)
    with pytest.raises(
        EvalError,
        match=r"4 labels for output 'logits', which has 2 samples at the first batch size "
        r"\(\['N', 6\]\); give one label per sample, or make the first batch size 4 "
        r"\(--batch-sizes 4\)$",
    ):  # it did not say that the batch size makes room for them
        evaluate(path, inspect_model(path), EvalConfig(batch_sizes=(2,), labels=tuple(labels), **FAST))
    assert topk(np.array([[0.1, 0.9, 0.0]]), [2]) == {
        "top1": 0.0, "top5": 1.0, "top5_k": 3, "n": 1, "classes": 3, "non_finite": 0
    }  # fmt: skip
    # NaN scores are misses (sorted, all NaN would put class 0 first), and counted
    nan_scores = topk(np.array([[np.nan] * 6, [0, 0, 0, 0, 0, 1.0]]), [0, 5])
    assert (nan_scores["top1"], nan_scores["top5"], nan_scores["non_finite"]) == (0.5, 0.5, 1)
    with pytest.raises(EvalError, match="outside"):
        topk(np.zeros((1, 3)), [3])


def test_parity_metrics_by_hand() -> None:
    ref = {"a": np.array([1.0, 2.0, np.nan, 4.0], np.float32), "b": np.zeros((2, 2)), "c": np.ones(3)}
    other = {"a": np.array([1.0, 2.5, np.nan, 3.0], np.float32), "b": np.zeros((4,)), "c": np.array([1, np.nan, 1.0])}
    out = parity(ref, other)
    a = out["a"]
    assert a["max_abs"] == pytest.approx(1.0) and a["mean_abs"] == pytest.approx(0.5)
    assert a["max_rel"] == pytest.approx(0.25) and a["nan"] == {"reference": 1, "other": 1}
    t = a["tolerance_to_pass"]
    assert np.allclose(other["a"], ref["a"], rtol=0, atol=t, equal_nan=True)
    assert not np.allclose(other["a"], ref["a"], rtol=0, atol=t * 0.999, equal_nan=True)
    assert out["b"] == {"shape_mismatch": True, "reference_shape": [2, 2], "shape": [4]}
    # a NaN where the reference has a number is an unbounded difference, not one the finite positions hide
    assert out["c"]["tolerance_to_pass"] == out["c"]["max_abs"] == out["c"]["mean_abs"] == float("inf")
    assert out["c"]["nonfinite_differ"] and not out["a"]["nonfinite_differ"]
    nothing = parity({"y": np.ones(3, np.float32)}, {"y": np.full(3, np.nan, np.float32)})["y"]
    assert nothing["finite_compared"] == 0 and math.isnan(nothing["cosine"]) and nothing["max_abs"] == math.inf
    ids = parity({"y": np.array([2**53 + 1], np.int64)}, {"y": np.array([2**53], np.int64)})["y"]
    assert ids["max_abs"] == ids["tolerance_to_pass"] == 1.0  # integers compared exactly, not through float64
    assert parity({"a": np.ones(2)}, {})["a"] == {"missing": True}
    half = parity({"h": np.array([1 / 3], np.float32)}, {"h": np.array([1 / 3], np.float16)})["h"]
    assert np.allclose(np.float16(1 / 3), np.float32(1 / 3), rtol=0, atol=half["tolerance_to_pass"])


def test_relative_l2_tells_fp16_noise_from_fp32_where_the_cosine_and_max_rel_cannot() -> None:
    """The cosine printed 1.000000 for a relative error of 8e-4, and one element near zero made max rel 379: the
    relative L2 error, |other - ref| / |ref|, tells fp32, TF32 and fp16 apart."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(100_000).astype(np.float32)
    ref[0] = 1e-7  # an element near zero
    noisy = (ref * (1 + 5e-4 * rng.standard_normal(ref.size)) + 1e-4).astype(np.float32)
    got = parity({"y": ref}, {"y": noisy})["y"]
    expected = float(np.linalg.norm(noisy.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64)))
    assert got["rel_l2"] == pytest.approx(expected, rel=1e-9) and 4e-4 < got["rel_l2"] < 7e-4
    assert f"{got['cosine']:.6f}" == "1.000000" and got["max_rel"] > 50  # what could not tell it
    assert parity({"y": ref}, {"y": ref.copy()})["y"]["rel_l2"] == 0.0
    assert parity({"y": np.zeros(3, np.float32)}, {"y": np.ones(3, np.float32)})["y"]["rel_l2"] == math.inf


# ---------------------------------------------------------------------------------------------- chunked statistics


def _old_parity(ref: np.ndarray, other: np.ndarray) -> dict:
    """The whole-array float64 formulas parity used before it walked in chunks: the oracle (integers: exact
    differences, as Python integers)."""
    r, o = ref.astype(np.float64).ravel(), other.astype(np.float64).ravel()
    if ref.dtype.kind in "iub" and other.dtype.kind in "iub":
        exact = [abs(int(y) - int(x)) for x, y in zip(ref.ravel().tolist(), other.ravel().tolist(), strict=True)]
        return {
            "shape_mismatch": False,
            "max_abs": float(max(exact, default=0)),
            "max_rel": max(
                (d / max(abs(float(x)), 1e-6) for d, x in zip(exact, ref.ravel().tolist(), strict=True)), default=0.0
            ),
            "mean_abs": sum(exact) / len(exact) if exact else 0.0,
            "rel_l2": _old_rel_l2(r, o),
            "cosine": _old_cosine(r, o) if r.size else math.nan,
            "nan": {"reference": 0, "other": 0},
            "inf": {"reference": 0, "other": 0},
            "finite_compared": len(exact),
            "nonfinite_differ": False,
            "tolerance_to_pass": float(max(exact, default=0)),
        }
    both = np.isfinite(r) & np.isfinite(o)
    rest_r, rest_o = r[~both], o[~both]
    differ = not np.all((np.isnan(rest_r) & np.isnan(rest_o)) | (rest_r == rest_o))
    diff = np.abs(o[both] - r[both])
    common = np.result_type(ref.dtype, other.dtype, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        loose = np.abs(other.astype(common).ravel()[both] - ref.astype(common).ravel()[both])
    tolerance = 0.0 if loose.size == 0 else float(loose.max()) if np.all(np.isfinite(loose)) else math.inf
    return {
        "shape_mismatch": False,
        "max_abs": math.inf if differ else float(diff.max()) if diff.size else 0.0,
        "max_rel": math.inf
        if differ
        else float((diff / np.maximum(np.abs(r[both]), 1e-6)).max())
        if diff.size
        else 0.0,
        "mean_abs": math.inf if differ else float(diff.mean()) if diff.size else 0.0,
        "rel_l2": math.inf if differ else _old_rel_l2(r[both], o[both]),
        "cosine": _old_cosine(r[both], o[both]) if diff.size else math.nan,
        "nan": {"reference": int(np.isnan(r).sum()), "other": int(np.isnan(o).sum())},
        "inf": {"reference": int(np.isinf(r).sum()), "other": int(np.isinf(o).sum())},
        "finite_compared": int(both.sum()),
        "nonfinite_differ": differ,
        "tolerance_to_pass": math.inf if differ else tolerance,
    }


def _old_rel_l2(ref: np.ndarray, other: np.ndarray) -> float:
    """|other - ref| / |ref|, whole arrays."""
    square_ref, square_diff = float(np.dot(ref, ref)), float(np.square(np.abs(other - ref)).sum())
    if square_ref == 0:
        return 0.0 if square_diff == 0 else math.inf
    return math.sqrt(square_diff) / math.sqrt(square_ref)


def _old_cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _old_accuracy(got: np.ndarray, want: np.ndarray) -> dict:
    """The whole-array formulas, with parity's rule for NaN and inf: matched ones left out, others unbounded."""
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    both = np.isfinite(g) & np.isfinite(w)
    differ = not np.all((np.isnan(g[~both]) & np.isnan(w[~both])) | (g[~both] == w[~both]))
    with np.errstate(invalid="ignore", over="ignore"):
        err = g[both] - w[both]
        return {
            "mae": math.inf if differ else float(np.abs(err).mean()) if err.size else 0.0,
            "rmse": math.inf if differ else float(np.sqrt(np.mean(err**2))) if err.size else 0.0,
            "max_error": math.inf if differ else float(np.abs(err).max()) if err.size else 0.0,
            "cosine": _old_cosine(g[both], w[both]) if err.size else math.nan,
            "nonfinite_differ": differ,
        }


def _planted(n: int, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference with NaN, +inf and -inf planted, and a slightly different copy with the same non-finite values."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(n) * 10
    for value in (np.nan, np.inf, -np.inf):
        ref[rng.choice(n, size=max(1, n // 500), replace=False)] = value
    other = np.where(np.isfinite(ref), ref * (1 + 1e-3 * rng.standard_normal(n)) + 1e-4, ref)
    return ref.astype(dtype), other


def _agree(new: dict, old: dict, summed: tuple[str, ...]) -> None:
    """Counts, maxima and tolerances equal; chunk-summed figures equal up to float rounding (NaN only where NaN)."""
    assert new.keys() == old.keys()
    for key, value in old.items():
        if key in summed and math.isfinite(value):
            assert new[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(new[key]), key
        else:
            assert new[key] == value, key


@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("float32", "float16"), ("float64", "float32")])
def test_chunked_parity_and_accuracy_match_the_whole_array_formulas(
    dtypes: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, other64 = _planted(10_007, dtypes[0], seed=len(dtypes[1]))
    same = other64.astype(dtypes[1])
    differ = same.copy()
    differ[np.flatnonzero(np.isfinite(ref))[:3]] = np.nan  # NaN where the reference is finite: tolerance inf
    grid = (ref[:10_000].reshape(100, 100).T, same[:10_000].reshape(100, 100).T)  # not contiguous
    counts = (np.arange(10_007) % 97 - 48, (np.arange(10_007) % 89 - 44).astype(np.int32))
    finite = (np.nan_to_num(ref, posinf=0, neginf=0), np.nan_to_num(same, posinf=0, neginf=0))  # accuracy not NaN
    cases = [(ref, same), (ref, differ), counts, grid, finite]
    whole = [(compare._compare_one(r, o), accuracy({"y": o}, {"y": r})["y"]) for r, o in cases]
    monkeypatch.setattr(compare, "_COMPARE_CHUNK", 1000)  # 11 chunks, the last one short
    for (r, o), (one_chunk, one_chunk_accuracy) in zip(cases, whole, strict=True):
        old, old_accuracy = _old_parity(r, o), _old_accuracy(o, r)
        assert repr(one_chunk) == repr(old) and repr(one_chunk_accuracy) == repr(old_accuracy)  # bit for bit
        _agree(compare._compare_one(r, o), old, ("mean_abs", "rel_l2", "cosine"))
        _agree(accuracy({"y": o}, {"y": r})["y"], old_accuracy, ("mae", "rmse", "cosine"))
    assert whole[0][0]["tolerance_to_pass"] < math.inf and whole[1][0]["tolerance_to_pass"] == math.inf
    assert whole[0][0]["nan"]["reference"] == 20 and whole[0][0]["inf"]["other"] == 40


def test_parity_of_an_output_larger_than_one_chunk_makes_no_float64_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    ref, other = _planted((1 << 20) + 12_345, "float32", seed=7)  # the real chunk size: two chunks
    _agree(compare._compare_one(ref, other.astype(np.float32)), _old_parity(ref, other.astype(np.float32)),
           ("mean_abs", "rel_l2", "cosine"))  # fmt: skip
    monkeypatch.setattr(compare, "_COMPARE_CHUNK", 1 << 16)
    big = np.random.default_rng(0).standard_normal(4 << 20).astype(np.float32)  # 16 MiB; 32 MiB in float64
    close = big + np.float32(1e-3)
    tracemalloc.start()
    try:
        compare._compare_one(big, close)
        accuracy({"y": close}, {"y": big})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < big.size * 8 // 4  # a quarter of one float64 copy: only chunks were converted


# ---------------------------------------------------------------------------------------------- output budget


def _boom(*args, **kwargs):
    raise AssertionError("allocated or created a session before the output budget check")


def test_outputs_over_the_budget_are_refused_before_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_inputs, "synthetic_inputs", _boom)
    monkeypatch.setattr(runner, "OrtSession", _boom)
    path = huge_output(tmp_path / "huge.onnx")
    info = inspect_model(path)
    message = (
        r"outputs too large: at batch size 1 the evaluation would hold 20\.0 GiB of outputs, 19\.0 GiB over the "
        r"limit of 1\.0 GiB\. One run returns 10\.0 GiB \('y' 10\.0 GiB\).*no setting makes them smaller"
    )
    with pytest.raises(EvalError, match=message):
        check_request(info, EvalConfig(**FAST))
    with pytest.raises(EvalError, match="outputs too large"):
        evaluate(path, info, EvalConfig(**FAST))
    small = huge_output(tmp_path / "small.onnx", elements=2**20)  # 4 MiB per sample
    with pytest.raises(EvalError, match=r"at batch size 512 .* hold 2\.0 GiB.*use smaller batch sizes$"):
        check_request(inspect_model(small), EvalConfig(batch_sizes=(1, 512), **FAST))


def test_output_budget_counts_the_kept_copies_and_the_largest_batch(mlp_model: tuple[Path, ModelInfo]) -> None:
    """y [N, 3] float32 and k2 [N, 1] int64: 20 bytes per sample. At batch sizes (2, 8) the first batch's 40 bytes
    are kept once per session, beside one run of 160 bytes."""
    _, info = mlp_model
    config = EvalConfig(batch_sizes=(2, 8), **FAST)
    assert check_request(info, config, Limits(max_output_bytes=40 + 160)) == []
    with pytest.raises(EvalError, match=r"batch size 8 .* hold 200 bytes.*1 bytes over the limit of 199 bytes"):
        check_request(info, config, Limits(max_output_bytes=199))
    two = EvalConfig(batch_sizes=(2, 8), providers=("cpu", "cuda"), **FAST)
    with pytest.raises(EvalError, match=r"hold 240 bytes.*each of the 2 session.*fewer providers"):
        check_request(info, two, Limits(max_output_bytes=200))


def test_undeclared_output_sizes_come_from_shape_inference(tmp_path: Path) -> None:
    """y = Relu(x) on x[N, 4], declared with no dimensions: inference finds [1, 4] at N=1, scaled with the batch."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    info = inspect_model(save(graph, tmp_path / "relu.onnx"))
    assert info.output_shapes == {"y": [1, 4]}
    config = EvalConfig(batch_sizes=(1, 10), **FAST)
    assert check_request(info, config, Limits(max_output_bytes=16 + 160)) == []
    with pytest.raises(EvalError, match="hold 176 bytes"):
        check_request(info, config, Limits(max_output_bytes=175))


def test_output_sizes_known_only_by_running_are_checked_after_the_first_run(tmp_path: Path) -> None:
    """NonZero's where[2, 4N] int64 is 64 bytes per sample, known only by running: batch sizes 1 and 4 fit in 400
    bytes beside the 64 kept, 64 does not and is skipped."""
    path = nonzero(tmp_path / "nonzero.onnx")
    info = inspect_model(path)
    config, limits = EvalConfig(batch_sizes=(1, 4, 64), **FAST), Limits(max_output_bytes=400)
    (warning,) = check_request(info, config, limits)
    assert "'where' is only known by running" in warning
    report = evaluate(path, info, config, limits=limits)
    rows = {row["batch"]: row for row in report["results"]}
    assert rows[1]["latency"] and rows[4]["latency"] and rows[64]["latency"] is None
    assert rows[64]["error"].startswith("skipped: outputs too large: at batch size 64")
    assert "hold 4.1 KiB" in rows[64]["error"]  # 64 kept + 64 * 64
    assert any(w.startswith("cpu at batch 64 was skipped") for w in report["warnings"])
    assert report["parity"]["cpu"]["where"]["max_abs"] == 0.0


def test_a_declared_output_size_the_first_run_exceeds_is_replaced_by_the_real_one(tmp_path: Path) -> None:
    """y declared [N, 3] but expanded to [N, 1000]: 4000 bytes per sample, not 12. Batch size 64 fits the
    declaration but not the real size, and is skipped after the first run shows it."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "understated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.array([1, 1000], np.int64), "shape")],
    )
    path = save(graph, tmp_path / "understated.onnx")
    info = inspect_model(path)
    config, limits = EvalConfig(batch_sizes=(1, 64), **FAST), Limits(max_output_bytes=10_000)
    assert check_request(info, config, limits) == []  # 12 + 64 * 12 bytes by the declaration
    rows = evaluate(path, info, config, limits=limits)["results"]
    assert rows[0]["latency"] and rows[1]["error"].startswith("skipped: outputs too large: at batch size 64")


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"providers": "gpu"}, "providers 'gpu' is not one of cpu, cuda, trt"),
        ({"providers": ""}, "providers is empty"),
        ({"providers": "cpu,cpu"}, "twice"),
        ({"runs": 0}, r"runs 0 is outside 1\.\.10000"),
        ({"runs": 10001}, "runs"),
        ({"warmup": -1}, "warmup"),
        ({"batch_sizes": "0"}, r"1\.\.4096"),
        ({"batch_sizes": "5000"}, r"1\.\.4096"),
        ({"batch_sizes": "1,x"}, "not a comma-separated list of whole numbers"),
        ({"labels": "1,-1"}, "labels"),
        ({"trt_workspace_gb": 0}, "trt workspace gb"),
        ({"intra_op_threads": -2}, "intra op threads"),
        ({"image_scaling": "0-2"}, "image scaling '0-2' is not one of"),
        ({"model": None}, "give either a model"),
        ({"example": "wav2lip"}, "give either a model"),
        ({"model": None, "images": "a.png,net.onnx"}, r"net\.onnx was taken as one of the images .* before --images"),
        ({"runs": True}, "runs must be a whole number"),
        ({"model": None, "images": "a.png,net.zip"}, r"net\.zip was taken as one of the images"),
        ({"trt_workspace_gb": 8}, r"trt workspace gb applies to the trt provider, not asked for \(cpu\)"),
    ],
)
def test_config_validate_refusals(changes: dict, message: str) -> None:
    with pytest.raises(EvalError, match=message):
        EvalConfig.build({"model": "m.onnx", **changes})


def test_a_model_and_an_example_both_given_are_refused_as_both() -> None:
    """It said "give either...", as for neither."""
    with pytest.raises(EvalError, match=r"or a built-in example: wav2lip, s3fd, not both \(got the model m\.onnx and "
                       r"the example wav2lip\)"):  # fmt: skip
        InspectConfig.build({"model": "m.onnx", "example": "wav2lip"})
    with pytest.raises(EvalError, match=r"give either a model .* s3fd$"):
        InspectConfig.build({})


def test_image_options_without_images_and_too_many_images_are_refused() -> None:
    """Each image option given without images is named (it would silently do nothing); the image count's limit is
    the largest number accepted."""
    model = Path("m.onnx")
    resize = EvalConfig(model=model, image_resize="crop").problems()
    assert resize == ["no images were given, so image resize would do nothing: give images, or leave it out"]
    channels = EvalConfig(model=model, image_channels="bgr", image_input="x").problems()
    assert channels == ["no images were given, so image input, image channels would do nothing: give images, or "
                        "leave them out"]  # fmt: skip
    images = tuple(Path(f"{i}.png") for i in range(257))
    assert EvalConfig(model=model, images=images[:256]).problems() == []
    assert EvalConfig(model=model, images=images).problems() == ["images: 257 given, at most 256"]


def test_speedup_is_the_cpu_p50_over_the_row_p50_and_none_for_a_fallback_to_the_cpu() -> None:
    """5x faster reads 5.0; a GPU row that ran on the CPU provider (a fallback) gets no speed-up at all."""
    from types import SimpleNamespace

    from engine.runtimes.ort_session import PROVIDERS

    def row(provider: str, ran_on: str, p50: float) -> dict:
        return {"provider": provider, "ran_on": ran_on, "batch": 1, "latency": {"p50_ms": p50, "mean_ms": p50}}

    rows = [row("cuda", PROVIDERS["cuda"], 2.0), row("cpu", PROVIDERS["cpu"], 10.0), row("trt", PROVIDERS["cpu"], 9.0)]
    eval_report._finish_rows(rows, SimpleNamespace(flops=None, inputs=[]), SimpleNamespace(batch_symbols=[]))
    assert [r.get("speedup_vs_cpu") for r in rows] == [5.0, 1.0, None]


def test_the_few_runs_note_counts_one_run_as_one() -> None:
    """It said "where 1 runs were timed"."""
    rows = [{"latency": {"n": 1}}]
    assert few_runs_note(rows).startswith("p90, p95, p99 left out where only 1 run was timed: ")
    assert few_runs_note([{"latency": {"n": 5}}]).startswith("p90, p95, p99 left out where 5 runs were timed: ")


def test_config_defaults_valid_and_symbol_refusals(mlp_model: tuple[Path, ModelInfo]) -> None:
    EvalConfig(example="wav2lip").validate()
    path, info = mlp_model
    with pytest.raises(EvalError, match="batch dimension"):
        evaluate(path, info, EvalConfig(symbols=(("N", 4),), **FAST))
    with pytest.raises(ModelError, match="unknown symbol"):
        evaluate(path, info, EvalConfig(symbols=(("T", 4),), **FAST))
    with pytest.raises(InputError, match="unknown provider"):
        runner._session_options("tpu", EvalConfig(**FAST), Placement())


# ---------------------------------------------------------------------------------------------- odd models (fuzzed)


def _graph(nodes: list, inputs: list, outputs: list) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", inputs, outputs)


def _io(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def test_a_sequence_of_tensors_of_different_shapes_is_compared_tensor_by_tensor(tmp_path: Path) -> None:
    x = _io("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Concat", ["x", "x"], ["xx"], axis=1), helper.make_node("SequenceConstruct", ["x", "xx"],
             ["y"])]  # fmt: skip
    path = save(_graph(nodes, [x], [y]), tmp_path / "ragged.onnx")
    report = evaluate(path, inspect_model(path), EvalConfig(**FAST))
    assert report["results"][0]["error"] is None
    assert report["parity"]["cpu"]["y"]["max_abs"] == 0.0 and report["parity"]["cpu"]["y"]["finite_compared"] == 6
    ragged = [np.ones((1, 2)), np.ones((1, 4))]
    assert parity({"y": ragged}, {"y": [np.ones((1, 2)), np.ones((1, 4)) + 0.5]})["y"]["max_abs"] == 0.5
    shorter = parity({"y": ragged}, {"y": ragged[:1]})["y"]
    assert shorter == {"shape_mismatch": True, "reference_shape": [[1, 2], [1, 4]], "shape": [[1, 2]]}


def test_outputs_that_cannot_be_read_or_scored_are_refused_before_running(tmp_path: Path) -> None:
    x = _io("x", TensorProto.FLOAT, ["N", 4])
    no_outputs = save(_graph([helper.make_node("Relu", ["x"], ["r"])], [x], []), tmp_path / "none.onnx")
    with pytest.raises(EvalError, match="declares no outputs"):
        check_request(inspect_model(no_outputs), EvalConfig(**FAST))
    text = _io("y", TensorProto.STRING, ["N", 4])
    words = save(_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)], [x], [text]),
                 tmp_path / "words.onnx")  # fmt: skip
    info = inspect_model(words)
    np.savez(tmp_path / "want.npz", y=np.zeros((1, 4)))
    with pytest.raises(EvalError, match="labels score numeric tensor outputs, and output 'y' is string"):
        check_request(info, EvalConfig(labels=(1,), **FAST))
    with pytest.raises(EvalError, match=r"expected outputs compare .* 'y' is string: leave it out of the \.npz"):
        check_request(info, EvalConfig(expected=tmp_path / "want.npz", **FAST))
    report = evaluate(words, info, EvalConfig(**FAST))  # strings themselves run, compared exactly
    assert report["parity"]["cpu"]["y"] == {"shape_mismatch": False, "exact_match": True}
    model = helper.make_model(_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT4)], [x],
                              [_io("y", TensorProto.INT4, ["N", 4])]), opset_imports=[helper.make_opsetid("", 21)],
                              ir_version=10)  # fmt: skip
    onnx.save(model, str(tmp_path / "int4.onnx"))
    with pytest.raises(EvalError, match="output 'y' is int4, which ONNX Runtime cannot hand back to Python"):
        check_request(inspect_model(tmp_path / "int4.onnx"), EvalConfig(**FAST))


def test_a_model_with_a_string_output_is_scored_on_its_numeric_one(tmp_path: Path) -> None:
    """An sklearn-style model: its words first, its scores second. Accuracy needed every output in the .npz (the
    words too, which cannot be compared), and labels were refused for the first output's type."""
    x = _io("x", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING), helper.make_node("Relu", ["x"], ["r"])]
    path = save(_graph(nodes, [x], [_io("y", TensorProto.STRING, ["N", 4]), _io("r", TensorProto.FLOAT, ["N", 4])]),
                tmp_path / "words_and_scores.onnx")  # fmt: skip
    data = np.array([[0.1, -1.0, 0.7, 0.2]], np.float32)
    np.savez(tmp_path / "x.npz", x=data)
    np.savez(tmp_path / "want.npz", r=np.maximum(data, 0))
    config = EvalConfig(inputs=tmp_path / "x.npz", expected=tmp_path / "want.npz", labels=(2,), **FAST)
    report = evaluate(path, inspect_model(path), config)
    accuracy = report["accuracy"]
    assert list(accuracy["expected"]["cpu"]) == ["r"] and accuracy["expected"]["cpu"]["r"]["max_error"] == 0.0
    assert any(note.endswith("expected-outputs .npz leaves them out: 'y' (string)") for note in report["notes"])
    assert accuracy["topk"]["cpu"]["output"] == "r" and accuracy["topk"]["cpu"]["top1"] == 1.0


def test_a_model_newer_than_onnx_runtime_loads_is_refused_before_running(tmp_path: Path) -> None:
    """onnx describes opsets and IR versions ahead of ONNX Runtime: such a model passed submit and failed as a job."""
    import onnxruntime

    ir_version, opset = runtime_limits()
    assert ir_version >= 10 and opset >= 21  # ORT 1.20 loads IR 10 and opset 21; the probe found no less
    graph = _graph([helper.make_node("Relu", ["x"], ["y"])], [_io("x", TensorProto.FLOAT, [1, 4])],
                   [_io("y", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    cases = [
        (ir_version, opset, None),
        (ir_version, opset + 1, f"loads up to opset {opset}: re-export"),
        (ir_version + 1, opset, rf"newer than ONNX Runtime .* loads \(up to {ir_version}\)"),
    ]
    for ir, ops, refusal in cases:
        path = tmp_path / f"ir{ir}-opset{ops}.onnx"
        path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops)], ir_version=ir)
                         .SerializeToString())  # fmt: skip
        if ops > onnx.defs.onnx_opset_version() or ir > onnx.IR_VERSION:
            continue  # this onnx does not know it either: inspect_model refuses it (test_onnx_model)
        info = inspect_model(path)
        if refusal is None:  # the newest it loads is run
            assert evaluate(path, info, EvalConfig(**FAST))["results"][0]["error"] is None
            continue
        with pytest.raises(EvalError, match=refusal):
            check_request(info, EvalConfig(**FAST))
        with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail):  # what the job met at its session
            onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_a_model_whose_every_input_is_empty_is_refused_before_running(tmp_path: Path) -> None:
    """A fixed zero batch ran as "batch 1" at tens of thousands of samples a second, over nothing."""
    for shape, shown in (([0, 4], r"x \[0, 4\]"), (["N", 0], r"x \[1, 0\]")):
        empty = save(_graph([helper.make_node("Relu", ["x"], ["y"])], [_io("x", TensorProto.FLOAT, shape)],
                            [_io("y", TensorProto.FLOAT, shape)]), tmp_path / "empty.onnx")  # fmt: skip
        with pytest.raises(EvalError, match=f"every input is empty \\({shown}\\): a run would compute nothing"):
            check_request(inspect_model(empty), EvalConfig(**FAST))


def test_labels_outside_a_declared_class_count_are_refused_before_running(tmp_path: Path) -> None:
    path = classifier(tmp_path / "c.onnx", np.eye(4, 3, dtype=np.float32))
    info = inspect_model(path)
    classes = info.outputs[0].shape[-1]
    with pytest.raises(
        EvalError, match=rf"labels \[{classes}\] are not classes of output .*: they are 0\.\.{classes - 1}"
    ):
        check_request(info, EvalConfig(labels=(classes,), **FAST))


def test_npz_inputs_keep_their_values_or_are_refused(tmp_path: Path) -> None:
    """Integers of the other signedness are checked by value (a round trip would let -5 through as 251), byte
    strings reach ONNX Runtime as text, and a damaged .npy header is a refusal, not a traceback."""
    specs = [
        TensorSpec("u", "uint8", ["N", 2]),
        TensorSpec("i", "int64", ["N", 1]),
        TensorSpec("s", "object", ["N", 2]),
    ]
    cases = {"u": np.array([[-5, 1]], np.int8), "i": np.array([[2**63 + 5]], np.uint64)}
    for name, array in cases.items():
        np.savez(tmp_path / f"{name}.npz", **{name: array})
        with pytest.raises(EvalError, match=f"input '{name}' in the .npz is {array.dtype} with values that do not fit"):
            load_npz_inputs(tmp_path / f"{name}.npz", specs, {"N": 1})
    np.savez(tmp_path / "ok.npz", u=np.array([[0, 255]], np.int16), s=np.array([[b"abcd", "é".encode()]]))
    loaded = load_npz_inputs(tmp_path / "ok.npz", specs, {"N": 1})
    assert loaded["u"].dtype == np.uint8 and loaded["u"].tolist() == [[0, 255]]
    assert loaded["s"].dtype == object and loaded["s"].tolist() == [["abcd", "é"]]
    np.savez(tmp_path / "latin.npz", s=np.array([[b"\xe9", b"b"]]))
    with pytest.raises(EvalError, match="bytes that are not UTF-8 text"):
        load_npz_inputs(tmp_path / "latin.npz", specs, {"N": 1})
    np.savez(tmp_path / "bad.npz", u=np.zeros((1, 2), np.uint8))
    blob = (tmp_path / "bad.npz").read_bytes().replace(b"'descr'", b"('descr'")  # an unclosed bracket in the header
    (tmp_path / "bad.npz").write_bytes(blob)
    with pytest.raises(EvalError, match="array 'u' cannot be read"):
        load_npz_inputs(tmp_path / "bad.npz", specs, {"N": 1})


def test_an_npz_is_read_by_its_arrays_whatever_else_its_zip_holds(tmp_path: Path) -> None:
    """A zip tool's folder entry is passed over, as np.load does; a member that is no .npy array is refused by its own
    name (it would be read as an array named 'notes.')."""
    specs = [TensorSpec("x", "float32", ["N", 4])]
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((1, 4), np.float32))
    with zipfile.ZipFile(npz, "a") as zf:
        zf.writestr("extra/", b"")
    assert load_npz_inputs(npz, specs, {"N": 1})["x"].tolist() == [[1.0] * 4]
    with zipfile.ZipFile(npz, "a") as zf:
        zf.writestr("notes.txt", b"made by hand")
    with pytest.raises(EvalError, match=r"^inputs in\.npz: member 'notes\.txt' is not a \.npy array$"):
        load_npz_inputs(npz, specs, {"N": 1})


def test_a_name_the_model_lacks_is_told_the_inputs_with_a_default_too(tmp_path: Path) -> None:
    """The refusal lists what may be given: the inputs, and the initializers a run may replace."""
    np.savez(tmp_path / "typo.npz", scael=np.ones(3, np.float32))
    with pytest.raises(EvalError, match=r"'scael' that are not model inputs; the model's inputs are: 'x'; with a "
                       r"default a run may replace: 'scale'$"):  # fmt: skip
        load_npz_inputs(tmp_path / "typo.npz", [TensorSpec("x", "float32", [3])], {}, [TensorSpec("scale", "float32",
                        [3])])  # fmt: skip


def test_an_empty_array_is_converted_and_raw_bytes_of_another_width_are_refused(tmp_path: Path) -> None:
    """An empty int64 array for an int32 input has no values to check (min() of nothing raised a traceback); float8
    bytes (|V1) for a bfloat16 input (two bytes each) are refused, not viewed as half as many bfloat16 values."""
    import ml_dtypes

    specs = [TensorSpec("ids", "int32", ["N", 0]), TensorSpec("x", "bfloat16", ["N", 4])]
    np.savez(tmp_path / "empty.npz", ids=np.zeros((1, 0), np.int64))
    loaded = load_npz_inputs(tmp_path / "empty.npz", specs, {"N": 1})["ids"]
    assert loaded.dtype == np.int32 and loaded.shape == (1, 0)
    np.savez(tmp_path / "huge.npz", f=np.full((1, 4), 1e300))  # float64 that no float32 holds: it would become inf
    with pytest.raises(EvalError, match=r"input 'f' in the \.npz is float64 with values that do not fit float32"):
        load_npz_inputs(tmp_path / "huge.npz", [TensorSpec("f", "float32", ["N", 4])], {"N": 1})
    np.savez(tmp_path / "f8.npz", x=np.zeros((1, 4), ml_dtypes.float8_e4m3fn))
    with pytest.raises(EvalError, match=r"input 'x' in the \.npz is \|V1, the model wants bfloat16; .* save it as "
                       r"ml_dtypes\.bfloat16"):  # fmt: skip
        load_npz_inputs(tmp_path / "f8.npz", specs, {"N": 1})


def test_expected_outputs_at_the_element_limit_are_read_and_one_past_it_refused(tmp_path: Path) -> None:
    """The limit is how many elements an expected output may hold: exactly that many is allowed."""
    outputs, limits = [TensorSpec("y", "float32", ["N", 4])], Limits(max_input_elements=4)
    np.savez(tmp_path / "four.npz", y=np.ones((1, 4), np.float32))
    assert load_expected(tmp_path / "four.npz", outputs, limits)["y"].shape == (1, 4)
    np.savez(tmp_path / "five.npz", y=np.ones((1, 5), np.float32))
    with pytest.raises(EvalError, match=r"^expected output 'y' has 5 elements, over 4$"):
        load_expected(tmp_path / "five.npz", outputs, limits)


def test_expected_bfloat16_outputs_may_be_saved_as_ml_dtypes(tmp_path: Path) -> None:
    import ml_dtypes

    x, y = _io("x", TensorProto.FLOAT, ["N", 2]), _io("y", TensorProto.BFLOAT16, ["N", 2])
    model = helper.make_model(_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)], [x], [y]),
                              opset_imports=[helper.make_opsetid("", 19)], ir_version=9)  # fmt: skip
    onnx.save(model, str(tmp_path / "bf16.onnx"))
    np.savez(tmp_path / "in.npz", x=np.array([[1.5, -2.0]], np.float32))
    np.savez(tmp_path / "want.npz", y=np.array([[1.5, -2.0]], ml_dtypes.bfloat16))  # raw bytes, |V2
    config = EvalConfig(inputs=tmp_path / "in.npz", expected=tmp_path / "want.npz", **FAST)
    report = evaluate(tmp_path / "bf16.onnx", inspect_model(tmp_path / "bf16.onnx"), config)
    assert report["accuracy"]["expected"]["cpu"]["y"]["max_error"] == 0.0


def test_an_output_whose_shape_is_not_the_declared_one_is_named(tmp_path: Path) -> None:
    x, y = _io("x", TensorProto.FLOAT, ["N", 4]), _io("y", TensorProto.FLOAT, ["N", 4])
    path = save(_graph([helper.make_node("Concat", ["x", "x"], ["y"], axis=1)], [x], [y]), tmp_path / "wide.onnx")
    report = evaluate(path, inspect_model(path), EvalConfig(batch_sizes=(2,), **FAST))
    assert "output 'y' declares ['N', 4] ([2, 4] here) but is [2, 8]" in report["warnings"]
    assert not eval_report._misdeclared_outputs(inspect_model(path).outputs, {"N": 2}, {"y": np.zeros((2, 4))})


def test_scalar_inputs_keep_their_rank(tmp_path: Path) -> None:
    """A rank-0 input: synthetic bools were a numpy scalar, not an array (the run failed), and a .npz scalar was fed
    with shape [1] (np.ascontiguousarray makes a 0-d array 1-d), so the expected scalar output never matched."""
    nodes = [helper.make_node("Not", ["flag"], ["flipped"]), helper.make_node("Mul", ["x", "x"], ["y"])]

    def scalar(name: str, kind: int) -> object:
        return helper.make_tensor_value_info(name, kind, [])

    inputs, outputs = [scalar("flag", TensorProto.BOOL), scalar("x", TensorProto.FLOAT)], [
        scalar("flipped", TensorProto.BOOL), scalar("y", TensorProto.FLOAT)]  # fmt: skip
    graph = helper.make_graph(nodes, "scalars", inputs, outputs)
    path = save(graph, tmp_path / "scalars.onnx")
    info = inspect_model(path)
    synthetic = synthetic_inputs(info.inputs, {}, seed=0)
    assert all(isinstance(v, np.ndarray) and v.shape == () for v in synthetic.values())
    assert all(r["error"] is None for r in evaluate(path, info, EvalConfig(**FAST))["results"])
    np.savez(tmp_path / "in.npz", flag=np.array(True), x=np.array(3.0, np.float32))
    np.savez(tmp_path / "want.npz", flipped=np.array(False), y=np.array(9.0, np.float32))
    assert load_npz_inputs(tmp_path / "in.npz", info.inputs, {})["x"].shape == ()
    report = evaluate(path, info, EvalConfig(inputs=tmp_path / "in.npz", expected=tmp_path / "want.npz", **FAST))
    assert report["accuracy"]["expected"]["cpu"]["y"]["max_error"] == 0.0


def test_labels_score_the_scores_output_and_say_which(tmp_path: Path) -> None:
    """An sklearn-style classifier gives its int64 labels first and its probabilities second: --labels scored the
    labels (any label 0 a hit, 100% top-1 where it was 0%); now the first float output of rank 2, or the one named."""
    probs = numpy_helper.from_array(np.array([[0.1, 0.7, 0.2], [0.2, 0.1, 0.7]], np.float32), "p")
    nodes = [
        helper.make_node("Add", ["x", "p"], ["prob"]),
        helper.make_node("ArgMax", ["prob"], ["label"], axis=1, keepdims=0),
        helper.make_node("Mul", ["x", "p"], ["feat"]),
    ]
    graph = helper.make_graph(
        nodes, "sklearnish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, [2, 3])],
        [probs],
    )  # fmt: skip
    path = save(graph, tmp_path / "classifier.onnx")
    info = inspect_model(path)
    np.savez(tmp_path / "zeros.npz", x=np.zeros((2, 3), np.float32))
    wrong = EvalConfig(inputs=tmp_path / "zeros.npz", labels=(0, 0), **FAST)  # the classes are 1 and 2
    top = evaluate(path, info, wrong)["accuracy"]["topk"]["cpu"]
    assert (top["output"], top["top1"]) == ("prob", 0.0)
    right = EvalConfig(inputs=tmp_path / "zeros.npz", labels=(1, 2), labels_output="feat", **FAST)
    top = evaluate(path, info, right)["accuracy"]["topk"]["cpu"]
    assert top["output"] == "feat" and top["top1"] == 0.0  # x * p is all zeros: class 0 ranks first
    with pytest.raises(EvalError, match="labels output 'logits' is not an output of the model"):
        evaluate(path, info, EvalConfig(labels=(1, 2), labels_output="logits", **FAST))
    made_up = evaluate(path, info, EvalConfig(labels=(1, 2), **FAST))  # labels scored on random inputs: said
    assert any(w.startswith("accuracy is scored on seeded synthetic inputs (seed 0)") for w in made_up["warnings"])
    assert "labels output names the output --labels score" in " ".join(EvalConfig(labels_output="prob").problems())


def test_a_sequence_output_is_held_to_the_output_limit(tmp_path: Path) -> None:
    """A sequence's size is known only by running: measured then, like an array's, so a larger batch that would
    not fit is skipped (sequences went unbounded through every batch size)."""
    split = helper.make_node("SplitToSequence", ["x"], ["parts"], axis=0, keepdims=1)
    graph = helper.make_graph(
        [split], "sequence", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])],
        [helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, None)],
    )  # fmt: skip
    path = save(graph, tmp_path / "sequence.onnx")
    info = inspect_model(path)
    rows = evaluate(path, info, EvalConfig(batch_sizes=(1, 64), **FAST), limits=Limits(max_output_bytes=50_000))
    assert rows["results"][0]["latency"] and rows["results"][1]["error"].startswith("skipped: outputs too large")


def test_gflops_come_from_the_mean_latency_as_samples_per_s(mlp_model: tuple[Path, ModelInfo], monkeypatch) -> None:
    """GFLOP/s came from the p50 and samples/s from the mean: one slow run in five made a row's GFLOP/s twice its
    FLOPs times its samples/s. Both rates come from the mean now, as the benchmark's TFLOP/s (FLOPs x samples/s)."""
    monkeypatch.setattr(runner, "_timed_runs", lambda fn, n, tick: [1.0] * (n - 1) + [1.0 + n])  # mean 2 ms, p50 1 ms
    path, info = mlp_model
    rows = evaluate(path, info, EvalConfig(batch_sizes=(1, 4), **FAST))["results"]
    for row in rows:
        assert (row["latency"]["mean_ms"], row["latency"]["p50_ms"]) == (2.0, 1.0)
        assert row["achieved_gflops"] * 1e9 == pytest.approx(info.flops * row["samples_per_s"])  # inspected at N=1


def test_gflops_scale_from_the_batch_the_model_was_inspected_at(mlp_model: tuple[Path, ModelInfo], monkeypatch) -> None:
    """A model inspected at N=4 (its FLOPs counted for four samples) gives batch 1 a quarter of them: every row's
    GFLOP/s is the one-sample FLOPs times its samples/s, whatever batch the inspection used."""
    monkeypatch.setattr(runner, "_timed_runs", lambda fn, n, tick: [2.0] * n)
    path, one = mlp_model
    four = inspect_model(path, symbols={"N": 4})
    assert four.flops == pytest.approx(4 * one.flops)
    rows = evaluate(path, four, EvalConfig(batch_sizes=(1, 4), **FAST))["results"]
    assert [r["batch"] for r in rows] == [1, 4]
    for row in rows:
        assert row["achieved_gflops"] * 1e9 == pytest.approx(one.flops * row["samples_per_s"])


def test_npz_inputs_repeat_along_every_batch_axis_and_flops_scale_only_where_linear(tmp_path: Path) -> None:
    """x[N, N] @ x[N, N] from a .npz at N=1: batch 2 repeats it along both axes (only the first was, and the run
    failed), and its FLOPs grow as N³, so achieved GFLOP/s are given only at the inspected batch."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "x"], ["y"])], "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "N"])],
    )  # fmt: skip
    path = save(graph, tmp_path / "square.onnx")
    info = inspect_model(path)
    np.savez(tmp_path / "one.npz", x=np.ones((1, 1), np.float32))
    rows = evaluate(path, info, EvalConfig(inputs=tmp_path / "one.npz", batch_sizes=(1, 2), **FAST))["results"]
    assert [r["error"] for r in rows] == [None, None]
    assert rows[0]["achieved_gflops"] is not None and rows[1]["achieved_gflops"] is None


def test_integer_parity_is_exact_past_two_to_the_53_and_across_64_bits() -> None:
    ids = np.array([2**53 + 1, -(2**63), 5, 7], np.int64)
    moved = np.array([2**53, 2**63 - 1, 5, 7], np.int64)
    result = parity({"ids": ids}, {"ids": moved})["ids"]
    assert result["max_abs"] == float(2**64 - 1) and result["tolerance_to_pass"] == float(2**64 - 1)
    assert result["mean_abs"] == pytest.approx((1 + 2**64 - 1) / 4) and result["finite_compared"] == 4
    assert parity({"b": np.array([True, False])}, {"b": np.array([True, True])})["b"]["max_abs"] == 1.0


def test_a_run_failing_on_made_up_ids_says_so(tmp_path: Path) -> None:
    """Synthetic integers are 0..99: a two-row embedding table fails on them, and the row says what to give."""
    table = numpy_helper.from_array(np.zeros((2, 4), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4])], [table],
    )  # fmt: skip
    path = save(graph, tmp_path / "embedding.onnx")
    row = evaluate(path, inspect_model(path), EvalConfig(**FAST))["results"][0]
    assert "the integer input(s) ids were made up, 0 to 99" in row["error"] and "inputs .npz" in row["error"]


def test_accuracy_takes_nan_and_inf_as_parity_does() -> None:
    got = {"y": np.array([1.0, np.nan, np.inf, 2.0], np.float32)}
    same = accuracy(got, {"y": np.array([1.0, np.nan, np.inf, 2.5], np.float32)})["y"]
    assert (same["max_error"], same["mae"], same["nonfinite_differ"]) == (0.5, 0.25, False)  # NaNs matched: finite
    moved = accuracy(got, {"y": np.array([1.0, 0.0, np.inf, 2.0], np.float32)})["y"]
    assert moved["max_error"] == moved["mae"] == moved["rmse"] == math.inf and moved["nonfinite_differ"]


def test_the_cosine_of_a_zero_output_against_a_nonzero_one_is_zero() -> None:
    """An output that is all zeros on one side only is as far apart as it gets: a cosine of 1.0 there read as a
    perfect match."""
    zero_vs_ones = parity({"y": np.zeros(4, np.float32)}, {"y": np.ones(4, np.float32)})["y"]
    assert zero_vs_ones["cosine"] == 0.0 and zero_vs_ones["rel_l2"] == math.inf
    assert parity({"y": np.ones(4)}, {"y": np.zeros(4)})["y"]["cosine"] == 0.0
    assert parity({"y": np.zeros(4)}, {"y": np.zeros(4)})["y"]["cosine"] == 1.0


def test_two_empty_sequence_outputs_match_exactly() -> None:
    """A sequence output with no tensors on both providers is the same output: it read as a mismatch."""
    assert parity({"s": []}, {"s": []})["s"] == {"shape_mismatch": False, "exact_match": True}


def test_topk_ties_go_to_the_lower_class_however_many_classes() -> None:
    """Tied scores rank the lower class first, as the docstring says: numpy's default sort keeps ties in order only
    for small rows, so with 1000 classes a tied label scored a miss or a hit by chance."""
    scores = np.zeros((2, 1000))
    scores[:, ::2] = 1.0  # every even class ties for first
    result = topk(scores, [0, 8])
    assert (result["top1"], result["top5"]) == (0.5, 1.0)


def test_topk_refuses_labels_that_are_not_one_per_sample() -> None:
    """Two labels for four samples were scored against the scores reshaped to two rows of twice the classes."""
    with pytest.raises(EvalError, match=r"one label per sample: output has \(4,\) samples, 2 labels"):
        topk(np.zeros((4, 10)), [0, 1])


def test_p99_needs_100_runs_and_times_must_be_non_negative() -> None:
    """p99 of 50 runs is in effect the slowest run; a negative time is a clock error, not a fast run."""
    assert latency_stats([float(v) for v in range(1, 100)], batch=1)["p99_ms"] is None
    assert latency_stats([float(v) for v in range(1, 101)], batch=1)["p99_ms"] is not None
    with pytest.raises(EvalError, match="finite, non-negative"):
        latency_stats([1.0, -0.5, 2.0], 1)


def test_the_few_runs_note_goes_by_the_fewest_runs_and_names_the_runs_that_give_them_all() -> None:
    """The note is for the row with the fewest timed runs, and its --runs hint gives every missing percentile
    (it said --runs 10 where p95 and p99 were missing too); 100 runs miss none."""
    rows = [{"latency": {"n": 100}}, {"latency": {"n": 15}}, {"error": "failed"}]
    note = few_runs_note(rows)
    assert note.startswith("p95, p99 left out where 15 runs were timed: one run in 20, 100 lies above them")
    assert note.endswith("--runs 100 gives them")
    assert few_runs_note([{"latency": {"n": 20}}]).endswith("--runs 100 gives them")
    assert few_runs_note([{"latency": {"n": 100}}]) is None
    assert few_runs_note([{"error": "failed"}]) is None


def _budget(declared: dict[int, dict[str, int | None]], first_batch: int = 1, limit: int = 2**30) -> object:
    return onnx_plan._OutputBudget(limit, 1, first_batch, declared, batch_free=True, other_symbols="")


def test_a_measured_output_size_scales_up_and_a_fixed_declared_one_does_not() -> None:
    """A measured size is scaled to a batch size rounding up (the budget errs on the side of refusing), and only
    where it exceeds the declared one: an output of fixed declared shape that the run confirmed was scaled by the
    batch size as if it grew with it."""
    budget = _budget({2: {"open": None, "fixed": 40}, 3: {"open": None, "fixed": 40}}, first_batch=2)
    budget.measured = (2, {"open": 5, "fixed": 40})
    assert budget.estimate(3) == {"open": 8, "fixed": 40}  # 5 * 3 / 2 = 7.5 bytes: 8


def test_an_output_refusal_names_four_outputs_and_counts_the_rest() -> None:
    """The refusal lists the four largest outputs and says how many more there are: it dropped the rest unsaid."""
    sizes = {f"out{i}": 2**20 * (i + 1) for i in range(6)}
    refusal = _budget({1: sizes}, limit=2**20).refusal(1)
    assert "'out5' 6.0 MiB, 'out4' 5.0 MiB, 'out3' 4.0 MiB, 'out2' 3.0 MiB and 2 more)" in refusal


def test_a_string_output_holds_its_text_beyond_its_pointers() -> None:
    """A string output's bytes are its pointers and its text: counting the pointers alone let megabytes of text
    through the output budget."""
    text = np.array(["x" * 1000, "y" * 500], dtype=object)
    assert onnx_plan._held_bytes(text) == text.nbytes + 1500
    assert onnx_plan._held_bytes([text, np.zeros(4, np.float32)]) == text.nbytes + 1500 + 16


def test_fewer_labels_than_samples_are_refused_before_running(tmp_path: Path) -> None:
    """Two labels for four samples passed submit (only more labels than samples were refused) and failed in the
    job."""
    path = classifier(tmp_path / "c.onnx", np.eye(4, 3, dtype=np.float32))
    with pytest.raises(EvalError, match=r"2 labels for output 'logits', which has 4 samples"):
        check_request(inspect_model(path), EvalConfig(batch_sizes=(4,), labels=(0, 1), **FAST))


def test_no_default_symbol_warning_where_the_inputs_file_sets_the_sizes(tmp_path: Path) -> None:
    """With the user's inputs the sizes are theirs (an .npz at seq=1 is timed at the length it holds), not a default
    to warn of: the warning told them to give symbols."""
    path = sequence(tmp_path / "seq.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((2, 1), np.float32))
    warned = check_request(inspect_model(path), EvalConfig(batch_sizes=(2,), inputs=tmp_path / "x.npz", **FAST))
    assert not any("default of 1" in w for w in warned)


def test_a_fixed_model_asked_for_its_own_batch_size_is_not_warned(tmp_path: Path) -> None:
    """--batch-sizes 2 on a model fixed at 2 samples per run asks for what runs: it was told its sizes were
    ignored."""
    path = fixed(tmp_path / "fixed.onnx")
    assert not any(
        "were ignored" in w for w in check_request(inspect_model(path), EvalConfig(batch_sizes=(2,), **FAST))
    )
    assert any("were ignored" in w for w in check_request(inspect_model(path), EvalConfig(batch_sizes=(4,), **FAST)))


def test_labels_score_the_first_float_output_of_rank_two(mlp_model: tuple[Path, ModelInfo]) -> None:
    """A per-sample float output ([N], a confidence) before the scores ([N, classes]) is not the scores."""
    _, info = mlp_model
    outputs = [TensorSpec("confidence", "float32", ["N"]), TensorSpec("scores", "float32", ["N", 3])]
    assert onnx_plan.scored_output(dataclasses.replace(info, outputs=outputs), None).name == "scores"


def test_inspection_figures_describe_a_run_only_at_the_inspected_symbols(mlp_model: tuple[Path, ModelInfo]) -> None:
    """FLOPs and output shapes found at T=4 were used for a run at T=8."""
    _, info = mlp_model
    inspected = dataclasses.replace(info, symbols={"N": 1, "T": 4})
    plan = onnx_plan.Plan({"N": 1, "T": 8}, ["N"], [1], ["cpu"], False, [], [])
    assert onnx_plan.inspected_batch(inspected, plan) is None
    plan.values["T"] = 4
    assert onnx_plan.inspected_batch(inspected, plan) == 1


def test_parity_of_mixed_kinds_and_nan_matched_outputs() -> None:
    """Guards the dtype dispatch and the tolerance's own dtype: a string output against a numeric one is an exact
    comparison (not a float cast that raised), an integer reference against a float output is compared as floats
    (0.5 apart, not truncated to 0), float16 outputs get their tolerance in float16, where np.allclose compares them
    (60000 and -60000 differ by more than float16 holds: inf), and outputs NaN at the same places are equal, not an
    error."""
    strings = parity({"y": np.zeros(2, np.float32)}, {"y": np.array(["a", "b"])})["y"]
    assert strings == {"shape_mismatch": False, "exact_match": False}
    mixed = parity({"y": np.array([1, 2], np.int64)}, {"y": np.array([1.0, 2.5], np.float32)})["y"]
    assert mixed["max_abs"] == mixed["tolerance_to_pass"] == 0.5
    wide = parity({"y": np.array([60000], np.float16)}, {"y": np.array([-60000], np.float16)})["y"]
    assert wide["max_abs"] == 120000.0 and wide["tolerance_to_pass"] == math.inf  # float16's range ends at 65504
    both_nan = parity({"y": np.full(3, np.nan, np.float32)}, {"y": np.full(3, np.nan, np.float32)})["y"]
    assert both_nan["tolerance_to_pass"] == both_nan["max_abs"] == 0.0 and not both_nan["nonfinite_differ"]
    assert both_nan["finite_compared"] == 0 and math.isnan(both_nan["cosine"])


def test_expected_outputs_and_labels_the_model_cannot_meet_are_messages() -> None:
    """Guards the refusals a user reads: an expected output the model did not give is named (not a KeyError), a score
    of no sample axis needs one label per sample (not an IndexError), and a negative label is outside 0..classes-1
    (it indexed from the end)."""
    with pytest.raises(EvalError, match=r"expected outputs \['z'\] are not outputs the model gave"):
        accuracy({"y": np.zeros(2)}, {"y": np.zeros(2), "z": np.zeros(2)})
    with pytest.raises(EvalError, match="top-k needs one label per sample"):
        topk(np.float32(1.0), [0])
    with pytest.raises(EvalError, match=r"labels \[-1\] are outside 0\.\.2 \(the output has 3 classes\)"):
        topk(np.zeros((2, 3), np.float32), [0, -1])
