"""The tabs' tables and charts render real reports (a tiny sweep and a tiny evaluation), every function."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("gradio")

from tiny_onnx import mlp

from engine.bench.sweep import BenchPoint, SweepConfig, run_sweep
from engine.bench.workloads import onnx_model
from engine.onnx.config import EvalConfig
from engine.onnx.evaluate import evaluate
from engine.onnx.inspection import inspect_model
from engine.onnx.timing import spread_warning
from ui import bench_report, onnx_report

MODEL = Path("model.onnx")  # the request's model name; evaluate() runs the file it is handed


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = mlp(tmp_path_factory.mktemp("m") / "mlp.onnx")
    return path, inspect_model(path)


def test_bench_report_renders(model) -> None:
    path, info = model
    points = [BenchPoint("ort-cpu", "fp32", 1, "cpu"), BenchPoint("ort-cpu", "fp32", 4, "cpu")]
    report = run_sweep(SweepConfig("mlp", points, runs=2, warmup=0), onnx_model(path, "mlp", info), None)
    rows = bench_report.result_rows(report)
    assert len(rows) == 2 and len(rows[0]) == len(bench_report.RESULT_HEADERS)
    assert "the model's own weights" in bench_report.summary_markdown(report, {"id": "abc", "imported": True})
    # an imported report's versions are anyone's text: shown as written, not as Markdown
    edited = {**report, "machine": {**report["machine"], "torch": "2.9*dev*", "onnxruntime": "<b>1.23</b>"}}
    assert r"torch 2.9\*dev\* · onnxruntime \<b\>1.23\</b\> · " in bench_report.summary_markdown(edited)
    for figure in (
        bench_report.speedup_figure(report),
        bench_report.throughput_figure(report),
        bench_report.latency_memory_figure(report),
        bench_report.telemetry_figure(report),
        bench_report.compare_figure([("a", "cpu", report), ("b", "cpu", report)]),
    ):
        assert figure.layout.title.text
    assert len(bench_report.compare_rows([("a", "cpu", report)])[0]) == len(bench_report.COMPARE_HEADERS)
    # the speed-up chart names its baseline, which an API sweep may put anywhere
    second = {**report, "config": {**report["config"], "baseline": 1}}
    assert bench_report.speedup_figure(second).layout.title.text.startswith("Speed-up against cpu ort-cpu fp32 b4 ")


def test_onnx_report_renders(model) -> None:
    path, info = model
    report = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1, 2], runs=2, warmup=0))
    report["inspection"] = {**{k: v for k, v in info.to_dict().items() if k != "path"}, "name": "mlp.onnx"}
    assert len(onnx_report.result_rows(report)[0]) == len(onnx_report.RESULT_HEADERS)
    gflops = onnx_report.RESULT_HEADERS.index("GFLOP/s")
    rates = [{**report["results"][0], "achieved_gflops": value} for value in (0.00423, 12.345, 1234.56)]
    assert [row[gflops] for row in onnx_report.result_rows({"results": rates})] == [0.00423, 12.3, 1234.6]
    # the CPU's outputs are the reference: its own parity row compared them with themselves (all zeros)
    assert list(report["parity"]) == ["cpu"] and onnx_report.parity_rows(report) == []
    assert "nothing to compare them with" in onnx_report.summary_markdown(report)
    both = {**report, "parity": {**report["parity"], "cuda": report["parity"]["cpu"]}}
    assert "nothing to compare them with" not in onnx_report.summary_markdown(both)  # the CUDA row shows
    odd = {"parity": {"cuda": {"y": report["parity"]["cpu"]["y"], "words": {"shape_mismatch": False,
           "exact_match": False}}}, "sessions": {"cuda": {"fell_back": True}}}  # fmt: skip
    assert [row[:2] + row[-1:] for row in onnx_report.parity_rows(odd)][1] == ["cuda ⚠️ fell back", "words", "differs"]
    assert onnx_report.parity_rows(odd)[0][0] == "cuda ⚠️ fell back"
    described = onnx_report.inspection_markdown(report["inspection"])
    assert "mlp.onnx" in described and "- 24 FLOP per run at N=1; not counted: Add, Relu" in described  # 0.000 GFLOP
    starred = onnx_report.inspection_markdown({**report["inspection"], "name": "*mlp*.onnx"})  # the upload's name
    assert starred.startswith("**\\*mlp\\*.onnx** · IR")
    assert "- batch: `N`, free" in described and "⚠️" not in described  # a free batch is no warning
    old = {**report["inspection"], "warnings": ["dynamic batch: N=1"]}  # as inspections stored before it said
    assert "⚠️" not in onnx_report.inspection_markdown(old)
    assert onnx_report.io_rows(report["inspection"])[0] == ["inputs", "x", "float32", "['N', 4]"]
    assert onnx_report.latency_figure(report).layout.title.text
    assert onnx_report.throughput_figure([("", report)]).layout.title.text
    assert len(onnx_report.compare_rows([("j", "mlp", report)])) == 2
    assert "sessions: cpu → CPU" in onnx_report.summary_markdown(report)


def test_inputs_with_a_default_are_listed_apart_and_capped(tmp_path: Path, monkeypatch, capsys) -> None:
    """An initializer listed as a graph input is an input a run may set: the tab's table and `onnx inspect` list it
    apart from the inputs a run must be given, the first few only (an old exporter's model lists every weight)."""
    from tiny_onnx import with_default

    from engine.cli import main
    from engine.onnx.model import DEFAULTS_LISTED

    path = with_default(tmp_path / "default.onnx")
    inspection = {**inspect_model(path).to_dict(), "name": "default.onnx"}
    # no op with a FLOP count: what is unknown, and why (it read "unknown; not counted: Add, Mul")
    assert ("- FLOPs per run unknown: none of its ops has a FLOP count here (not counted: Add, Mul)"
            in onnx_report.inspection_markdown(inspection))  # fmt: skip
    assert onnx_report.io_rows(inspection) == [
        ["inputs", "x", "float32", "['N', 3]"],
        ["input with a default", "scale", "float32", "[3]"],
        ["outputs", "y", "float32", "['N', 3]"],
    ]
    many = {**inspection, "overridable_inputs": inspection["overridable_inputs"] * (DEFAULTS_LISTED + 2)}
    assert onnx_report.io_rows(many)[-2] == ["input with a default", "… and 2 more", "", ""]
    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    assert main(["onnx", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  input  scale: float32 [3], with a default (an initializer an inputs .npz may set)\n" in out


def test_portrait_summary_says_what_was_reused_and_adjusted() -> None:
    from engine.core.results import RunResult
    from ui import portrait

    result = RunResult(device="cuda:0", device_name="NVIDIA H100", precision="fp16")
    result.metrics.update(engine="liveportrait", backend="onnx-cuda", frames=8, fps=25.0, frames_per_second=90.0,
                          encoder="libx264", providers={"decoder": ["CUDAExecutionProvider"]},
                          cache={"networks": True, "source": False}, crop_angle=12.0, lips_normalised=True)  # fmt: skip
    result.warn("an example warning")
    text = portrait.summary_markdown(result)
    assert text.startswith("LivePortrait · onnx-cuda") and "reused from the last run: networks" in text
    assert "crop turned 12.0° upright" in text and "source lips closed first" in text and "⚠️ an example" in text
    result.metrics.update(engine="baseline", cache=None, crop_angle=0.0, lips_normalised=False)
    text = portrait.summary_markdown(result)
    assert "**baseline**" in text and "reused" not in text and "crop turned" not in text


def test_the_lipsync_summary_counts_one_frame_in_the_singular() -> None:
    """'1 frames at 25 fps' and '1 frame(s) without a face' read as typos."""
    from engine.core.results import RunResult
    from ui.lipsync import summary_markdown

    metrics = {"engine_label": "Baseline", "frames": 1, "fps": 25.0, "batch_size": 1, "encoder": "libx264",
               "detector": "haar", "faces_missed": 1, "pipeline_seconds": 0.5, "frames_per_second": 2.0}  # fmt: skip
    text = summary_markdown(RunResult(metrics=metrics))
    assert "1 frame at 25 fps" in text and "1 frame without a face" in text


def test_the_lipsync_summary_gives_musetalks_bbox_shift_range() -> None:
    """Upstream prints the range to choose --bbox-shift from once the boxes are found; the summary gives it where
    the boxes came from landmarks, and says nothing of it otherwise."""
    from engine.core.results import RunResult
    from ui.lipsync import summary_markdown

    metrics = {"engine_label": "MuseTalk v1", "frames": 2, "fps": 25.0, "batch_size": 2, "encoder": "libx264",
               "detector": "haar", "faces_missed": 0, "pipeline_seconds": 0.5, "frames_per_second": 4.0,
               "bbox_shift": 5, "bbox_shift_range": [-19, 19]}  # fmt: skip
    text = summary_markdown(RunResult(metrics=metrics))
    assert "--bbox-shift range for this face: -19 to 19" in text and "used: 5" in text
    assert "bbox-shift" not in summary_markdown(RunResult(metrics={**metrics, "bbox_shift_range": None}))
    from engine.lipsync.cli import shift_line  # the command line's line

    assert shift_line(RunResult(metrics=metrics)).startswith("--bbox-shift range for this face: -19 to 19")
    assert shift_line(RunResult(metrics={**metrics, "bbox_shift_range": None})) == ""


def test_the_lipsync_summary_shows_the_runs_own_figures() -> None:
    """The summary is what a user reads and quotes: each figure is the run's, at the precision the line gives it,
    with the fp16 check's finding and every warning."""
    from engine.core.results import RunResult
    from ui.lipsync import summary_markdown

    metrics = {"engine_label": "Wav2Lip", "frames": 250, "fps": 25.0, "batch_size": 16, "encoder": "libx264",
               "detector": "s3fd", "faces_missed": 3, "pipeline_seconds": 10.126, "frames_per_second": 24.69,
               "precision_check": {"frames": 8, "max_grey_levels": 1.5, "mean_grey_levels": 0.0614}}  # fmt: skip
    result = RunResult(device="cuda:0", device_name="NVIDIA L4", precision="fp16", metrics=metrics)
    result.warn("the first warning")
    result.warn("the second warning")
    assert summary_markdown(result).splitlines() == [
        "**Wav2Lip** on `cuda:0` (NVIDIA L4, fp16) · 250 frames at 25 fps · batch 16 · encoder `libx264` · "
        "detector `s3fd` · 3 frames without a face · 10.13s in the pipeline (24.7 frames/s)",
        "- fp16 against fp32 on the first 8 frames: up to 1.50 grey levels apart (mean 0.061)",
        "- ⚠️ the first warning",
        "- ⚠️ the second warning",
    ]


def test_the_portrait_summary_shows_the_runs_own_figures() -> None:
    from engine.core.results import RunResult
    from ui import portrait

    result = RunResult(device="cpu", device_name="x86_64", precision="fp32")
    result.metrics.update(engine="liveportrait", backend="torch", frames=120, fps=30.0, frames_per_second=7.46,
                          encoder="libx264", compiled=True, cache={"networks": False, "source": True})  # fmt: skip
    assert portrait.summary_markdown(result) == (
        "LivePortrait · torch on `cpu` (x86_64, fp32) · reused from the last run: source · torch.compile · 120 frames "
        "at 30 fps · 7.5 frames/s · encoder `libx264`"
    )


# Hand-built reports: every figure distinct, so a column showing another's figure, a unit or a rounding changed reads
# differently in the cell a user quotes.
_WIDE = {"p50_ms": 1.0, "p95_ms": 5.0, "mean_ms": 2.0, "std_ms": 1.0}  # p95 five times p50: too scattered


def _sweep_report() -> dict:
    """A sweep's report: a GPU row with every figure, a failed row that fell back, a row whose spread is too wide."""
    gpu = {
        "label": "cuda ort-cuda fp16 b8", "status": "ok", "ran_on": "CUDAExecutionProvider", "device": "cuda",
        "runtime": "ort-cuda", "precision": "fp16", "batch": 8,
        "latency": {"p50_ms": 1.23456, "p95_ms": 2.34567, "mean_ms": 1.5, "std_ms": 0.25},
        "samples_per_s": 6480.456, "speedup": 3.14159, "achieved_tflops": 0.0123456, "percent_of_peak": 12.36,
        "peak_allocated_bytes": 1536 * 2**20, "device_used_bytes": 2048 * 2**20,
        "error_vs_fp32": {"rel_l2": 1.23456e-4},
        "energy_j_per_sample": 0.123456, "load_s": 1.23456, "first_run_s": 0.98765, "warnings": ["a warning"],
    }  # fmt: skip
    failed = {"label": "cuda ort-trt fp16 b8", "status": "error", "error": "x" * 300, "fell_back": True,
              "device": "cuda", "runtime": "ort-trt", "precision": "fp16", "batch": 8}  # fmt: skip
    wide = {"label": "cuda ort-cuda fp16 b1", "status": "ok", "device": "cuda", "runtime": "ort-cuda",
            "precision": "fp16", "batch": 1, "latency": _WIDE, "samples_per_s": 500.0, "speedup": 1.0,
            "host_rss_bytes": 100 * 2**20, "warnings": ["another", spread_warning(_WIDE)]}  # fmt: skip
    return {"results": [wide, gpu, failed], "config": {"baseline": 0}, "notes": ["a note"],
            "model": {"name": "mlp", "title": "The MLP", "flops_per_sample": 2.5e9},
            "machine": {"gpu": {"name": "NVIDIA H100"}, "torch": "2.5", "onnxruntime": "1.20",
                        "cpu_count": 8}}  # fmt: skip


def test_a_sweeps_table_shows_each_figure_in_its_column_and_unit() -> None:
    """Each cell is the report's own figure in the unit its header names (MiB, ms, s), rounded as shown."""
    wide, gpu, failed = bench_report.result_rows(_sweep_report())
    assert dict(zip(bench_report.RESULT_HEADERS, gpu, strict=True)) == {
        "configuration": "cuda ort-cuda fp16 b8", "status": "ok", "ran on": "CUDA", "p50 ms": 1.235,
        "p95 ms": 2.346, "mean ± std ms": "1.500 ± 0.250", "samples/s": 6480.5, "× baseline": 3.14,
        "TFLOP/s": 0.0123, "% of peak": 12.4, "peak alloc MiB": 1536, "device used MiB": 2048,
        "rel. error vs fp32": "1.23e-04", "J/sample": 0.1235, "load s": 1.23, "first run s": 0.99, "note": "a warning",
    }  # fmt: skip
    assert failed[-1] == "x" * 200 + "; ⚠️ fell back to the CPU" and failed[3:6] == ["", "", ""]
    # TFLOP/s at three decimals, three significant figures below 0.1 (a tiny model's 0.0004 read 0.0)
    for tflops, shown in ((1.23456, 1.235), (0.00041234, 0.000412)):
        measured = {**_sweep_report()["results"][1], "achieved_tflops": tflops}
        row = bench_report.result_rows({"results": [measured]})[0]
        assert row[bench_report.RESULT_HEADERS.index("TFLOP/s")] == shown
    # the spread's full reason is beside the charts: the row says where, once, after its other warnings
    assert wide[-1] == "another; ⚠️ wide spread (see beside the charts)"
    assert bench_report.spread_markdown(_sweep_report()).splitlines() == [
        f"- ⚠️ **cuda ort-cuda fp16 b1**: {spread_warning(_WIDE)}"
    ]


def test_a_sweeps_compare_table_and_summary_quote_its_own_figures() -> None:
    report = _sweep_report()
    rows = bench_report.compare_rows([("job1", "h100", report)])
    assert rows[1] == ["job1", "h100", "mlp", "cuda ort-cuda fp16 b8", "ok", 1.235, 6480.5, 3.14, 0.0123]
    assert bench_report.summary_markdown(report, {"id": "j1", "imported": True}).splitlines() == [
        "**The MLP** on NVIDIA H100 · torch 2.5 · onnxruntime 1.20 · 2.5 GFLOP per sample · job `j1` (imported)",
        "- a note",
    ]
    cpu = {**report, "machine": {"cpu_count": 8}, "model": {"name": "mlp"}}
    assert bench_report.summary_markdown(cpu).startswith("**mlp** on CPU (8 cores) · torch None")
    assert bench_report.summary_markdown(cpu).endswith("FLOPs unknown\n- a note")


def test_a_sweeps_charts_plot_its_own_figures() -> None:
    """Bars at each configuration's speed-up (red where it fell back), named against the baseline; latency at p50
    against memory in MiB, from the allocator's peak, else the host's."""
    report = _sweep_report()
    report["results"][1]["fell_back"] = True
    bars = bench_report.speedup_figure(report)
    assert list(bars.data[0].x) == [1.0, 3.14159] and list(bars.data[0].text) == ["1.00×", "3.14×"]
    assert list(bars.data[0].marker.color) == ["#76b900", "#d62728"]
    assert bars.layout.title.text.startswith("Speed-up against cuda ort-cuda fp16 b1")
    assert bars.layout.xaxis.type != "log"  # 3x apart: linear
    far = {
        **report,
        "results": [{**r, "speedup": s} for r, s in zip(report["results"], (1.0, 21.0, None), strict=True)],
    }
    assert bench_report.speedup_figure(far).layout.xaxis.type == "log"  # over 20x apart
    near = {
        **report,
        "results": [{**r, "speedup": s} for r, s in zip(report["results"], (1.0, 20.0, None), strict=True)],
    }
    assert bench_report.speedup_figure(near).layout.xaxis.type != "log"
    points = bench_report.latency_memory_figure(report).data[0]
    assert list(points.x) == [100.0, 1536.0] and list(points.y) == [1.0, 1.23456]
    assert [c[1] for c in points.customdata] == ["process RSS peak", "GPU allocator peak"]
    assert list(points.marker.color) == ["#ff7f0e", "#1f77b4"] and points.text[0].endswith(" ⚠️")
    title = bench_report.latency_memory_figure(report).layout
    assert title.title.text.endswith("(⚠️ spread too wide)") and "GPU allocator peak, process RSS peak" in (
        title.xaxis.title.text
    )
    unmeasured = {"results": [{**report["results"][1], "peak_allocated_bytes": None, "device_used_bytes": 2**20}]}
    assert list(bench_report.latency_memory_figure(unmeasured).data[0].x) == [1.0]
    lines = bench_report.throughput_figure({"results": report["results"][::-1]}).data  # listed largest batch first
    assert [(t.name, list(t.x), list(t.y)) for t in lines] == [("cuda ort-cuda fp16", [1, 8], [500.0, 6480.456])]
    (bars,) = bench_report.compare_figure([("j1", "h100", report)]).data
    assert (bars.name, list(bars.x), list(bars.y)) == (
        "j1 h100",
        [report["results"][0]["label"], report["results"][1]["label"]],
        [500.0, 6480.456],
    )


def test_the_telemetry_chart_puts_configurations_back_to_back() -> None:
    """Without a GPU the host's CPU % is drawn; each configuration starts a second after the last one ended."""
    cpu = [[0.0, None, None, None, 40.0], [0.5, None, None, None, 50.0]]  # seconds, GPU %, memory, watts, CPU %
    gpu = [[0.0, 90.0, None, 250.0, 10.0]]
    report = {"results": [{"label": "a", "telemetry": cpu}, {"label": "b", "telemetry": cpu}, {"label": "c",
              "telemetry": gpu}]}  # fmt: skip
    traces = {t.name: (list(t.x), list(t.y)) for t in bench_report.telemetry_figure(report).data}
    assert traces == {
        "host CPU %": ([0.0, 0.5, None, 1.5, 2.0], [40.0, 50.0, None, 40.0, 50.0]),
        "GPU utilisation %": ([3.0], [90.0]),
        "GPU power W": ([3.0], [250.0]),
    }


def test_the_cost_table_quotes_each_figure_under_its_header() -> None:
    row = {"gpu": "T4", "price_per_hour": 0.35, "samples_per_s": 123.456, "cost_per_1000_requests": 0.0123456,
           "requests_per_10_usd": 812345.6, "basis": "measured", "price_source": "catalog"}  # fmt: skip
    assert bench_report.cost_rows([row]) == [["T4", 0.35, 123.5, "0.01235", "812,346", "measured", "catalog"]]
    none = {**row, "price_per_hour": None, "cost_per_1000_requests": None, "requests_per_10_usd": None}
    assert bench_report.cost_rows([none])[0][1:5] == ["", 123.5, "", ""]
    from engine.bench.planner import CPU_ROW

    assert "CPU machine's **$/hour**" in bench_report.cost_notes_markdown([], [], True)
    assert bench_report.cost_notes_markdown([{**row, "gpu": CPU_ROW}], [], True) == ""
    assert bench_report.cost_notes_markdown([row], ["L4", "A10G"], False).startswith(
        "- ℹ️ Left out, with no price: L4, A10G."
    )


def _onnx_report() -> dict:
    """An evaluation's report: a CUDA row with every figure that fell back to the CPU, an out-of-memory row, a row
    whose spread is too wide."""
    full = {
        "provider": "cuda", "ran_on": "CUDAExecutionProvider", "batch": 4, "fell_back": True,
        "latency": {"p50_ms": 1.23456, "p90_ms": 2.34567, "p99_ms": 3.45678, "mean_ms": 1.5, "std_ms": 0.25},
        "samples_per_s": 3240.456, "speedup_vs_cpu": 7.777, "achieved_gflops": 456.789, "first_run_ms": 12.36,
        "trt_build_s": 45.678, "latency_iobinding": {"p50_ms": 0.98765},
        "memory": {"gpu_delta_bytes": 12.34 * 2**20, "gpu_process_bytes": 3 * 2**30, "host_rss_delta_bytes": 5 * 2**20},
    }  # fmt: skip
    oom = {"provider": "trt", "batch": 64, "error": "out of memory", "out_of_memory": True}
    wide = {"provider": "cpu", "batch": 1, "latency": {**_WIDE, "p90_ms": 4.0, "p99_ms": 5.0}, "samples_per_s": 900.0,
            "spread_warning": spread_warning(_WIDE)}  # fmt: skip
    return {"results": [full, oom, wide], "job": {"model_name": "mlp", "id": "j2", "device": "cuda:0"},
            "environment": {"onnxruntime": "1.20"}, "symbols": {"N": 1}, "notes": ["a note"],
            "sessions": {"cpu": {"got": ["CPUExecutionProvider"]}, "cuda": {"got": None}},
            "warnings": ["cpu at batch 1: " + spread_warning(_WIDE), "a warning"]}  # fmt: skip


def test_an_evaluations_table_shows_each_figure_in_its_column_and_unit() -> None:
    full, oom, wide = onnx_report.result_rows(_onnx_report())
    assert dict(zip(onnx_report.RESULT_HEADERS, full, strict=True)) == {
        "provider": "cuda", "ran on": "CUDA", "batch": 4, "p50 ms": 1.235, "p90 ms": 2.346, "p99 ms": 3.457,
        "mean ± std ms": "1.500 ± 0.250", "samples/s": 3240.5, "× CPU (p50)": 7.78, "GFLOP/s": 456.8,
        "first run ms": 12.4, "TRT build s": 45.68, "device-resident p50 ms": 0.988, "GPU mem Δ MiB": 12.3,
        "process GPU MiB": 3072.0, "host RSS Δ MiB": 5.0, "note": "⚠️ fell back to CUDA",
    }  # fmt: skip
    assert oom[-1] == "OOM: out of memory" and oom[3] == ""
    odd = {"results": [{"provider": "cuda", "batch": 1, "error": "e" * 300, "speedup_vs_cpu": float("inf")}]}
    assert onnx_report.result_rows(odd)[0][8] == "inf" and onnx_report.result_rows(odd)[0][-1] == "e" * 200
    assert wide[-1] == "⚠️ wide spread (see beside the charts)"
    assert onnx_report.spread_markdown(_onnx_report()) == f"- ⚠️ **cpu b1**: {spread_warning(_WIDE)}"
    assert onnx_report.compare_rows([("j2", "mlp", _onnx_report())])[0] == [
        "j2", "mlp", "cuda", "CUDA", 4, 1.235, 3.457, 3240.5, 7.78
    ]  # fmt: skip


def test_an_evaluations_summary_and_charts_quote_its_own_figures() -> None:
    """The spread warning already beside the charts is not repeated under the summary; the others are."""
    report = _onnx_report()
    assert onnx_report.summary_markdown(report).splitlines() == [
        "**mlp** · job `j2` on `cuda:0` · onnxruntime 1.20 · symbols {'N': 1} · sessions: cpu → CPU, cuda → failed",
        "- ℹ️ a note",
        "- ⚠️ a warning",
    ]
    report["results"][2]["times_ms"] = [1.0, 5.0]
    report["results"][0]["times_ms"] = [1.2, 1.3]
    boxes = onnx_report.latency_figure(report)
    assert [(b.name, list(b.y)) for b in boxes.data] == [("cuda b4", [1.2, 1.3]), ("cpu b1 ⚠️", [1.0, 5.0])]
    assert boxes.layout.title.text.endswith("(⚠️ spread too wide to trust)")
    lines = onnx_report.throughput_figure([("j2", report)]).data
    assert [(t.name, list(t.x), list(t.y)) for t in lines] == [("j2 cuda", [4], [3240.456]), ("j2 cpu", [1], [900.0])]
    unsorted = {"results": [{"provider": "cpu", "batch": 4, "samples_per_s": 2.0}, {**report["results"][2]}]}
    (line,) = onnx_report.throughput_figure([("", unsorted)]).data
    assert (line.name, list(line.x), list(line.y)) == ("cpu", [1, 4], [900.0, 2.0])


def test_an_evaluations_parity_rows_quote_each_figure() -> None:
    p = {"max_abs": 0.00123456789, "max_rel": 0.0234567891, "mean_abs": 0.000345678912, "rel_l2": 2.41234e-7,
         "cosine": 0.99999912, "tolerance_to_pass": 0.0056789123, "nan": {"other": 1, "reference": 0},
         "inf": {"other": 2, "reference": 3}}  # fmt: skip
    report = {"parity": {"cpu": {"y": p}, "trt": {"y": p}, "cuda": {"error": "it failed"}}}
    assert onnx_report.parity_rows(report) == [
        ["trt", "y", 0.001235, 0.023457, 0.000346, 2.41e-07, 0.999999, 0.005679, "1/2 (ref 0/3)"],
        ["cuda", "", "", "", "", "", "", "", "it failed"],
    ]


def test_the_onnx_history_shows_the_best_throughput() -> None:
    from ui.onnx_eval import _best_throughput

    assert _best_throughput(_onnx_report()) == 3240.5
    assert _best_throughput({"results": _onnx_report()["results"][::-1]}) == 3240.5  # the best, not the first
    assert _best_throughput({"results": [{"samples_per_s": None}]}) == "" and _best_throughput(None) == ""


def test_an_evaluations_accuracy_rows_quote_each_figure_in_its_column() -> None:
    expected = {"mae": 0.00123456789, "rmse": 0.0023456789, "max_error": 0.0345678912, "cosine": 0.99999912}
    accuracy = {
        "expected": {"cuda": {"y": expected, "z": {"error": "shape differs"}}},
        "topk": {"cuda": {"top1": 0.5, "top5": 0.75, "top5_k": 5, "n": 4, "output": "p"}, "trt": {"error": "bad"}},
    }
    assert onnx_report.accuracy_rows({"accuracy": accuracy}) == [
        ["cuda", "y", 0.001235, 0.002346, 0.034568, 0.999999, "", ""],
        ["cuda", "z", "", "", "", "", "", "shape differs"],
        ["cuda", "p top-k over 4 samples", "", "", "", "", 0.5, 0.75],
        ["trt", "top-k", "", "", "", "", "", "bad"],
    ]
    # Fewer than 5 classes: the top-5 column held a top-3 (for 3 classes always 1.0) under its "top-5" header.
    for k, shown, wider in ((3, 1.0, " (top-5 column: top-3, 3 classes)"), (1, "", " (one class)")):
        few = {"topk": {"cpu": {"top1": 0.5, "top5": 1.0, "top5_k": k, "n": 4, "output": "p"}}}
        assert onnx_report.accuracy_rows({"accuracy": few}) == [
            ["cpu", f"p top-k over 4 samples{wider}", "", "", "", "", 0.5, shown]
        ]


def test_summaries_show_users_names_as_written_and_keep_their_own_code() -> None:
    """A warning naming `_take*2*.mp4` showed "take" in italics and lost its stars, and a `<clip>` vanished as a tag;
    an uploaded model's or an imported report's name did the same in bold. The names show as written, each summary
    in its pane's Markdown, and a message's own `code` (a command to run) stays code."""
    from markdown_it import MarkdownIt

    from engine.core.results import RunResult
    from ui import bench, lipsync, onnx_eval, portrait

    def shown(markdown: str) -> str:
        return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)

    odd = "_take*2*.mp4 <clip> [x](y) a|b #1"
    result = RunResult(device="cpu", device_name="CPU", precision="fp32")
    result.metrics.update(engine="baseline", backend="torch", frames=8, fps=25.0, frames_per_second=9.0,
                          encoder="libx264", engine_label="Wav2Lip", batch_size=1, detector="haar", faces_missed=0,
                          pipeline_seconds=1.0)  # fmt: skip
    result.warn(f"no face in {odd}: see `avatarbench doctor`")
    for text in (lipsync.summary_markdown(result), portrait.summary_markdown(result)):
        assert "no face in _take*2*.mp4 &lt;clip&gt; [x](y) a|b #1: see <code>avatarbench doctor</code>" in shown(text)
    report = {"job": {"model_name": "*model*.onnx"}, "notes": [f"output {odd}"], "warnings": [odd]}
    html = shown(onnx_report.summary_markdown(report))
    assert "<strong>*model*.onnx</strong>" in html and f"output {odd}".replace("<clip>", "&lt;clip&gt;") in html
    imported = {"model": {"title": "<b>__init__</b>"}, "machine": {"gpu": {"name": "*A100*"}}, "notes": [odd]}
    html = shown(bench_report.summary_markdown(imported))
    assert "<strong>&lt;b&gt;__init__&lt;/b&gt;</strong> on *A100*" in html and "_take*2*.mp4 &lt;clip&gt;" in html
    failed = {"id": "j1", "status": "failed", "model_name": "*model*.onnx", "model": "*model*.onnx", "points": 1,
              "device": "cpu", "error": f"cannot read {odd}"}  # fmt: skip
    for status in (onnx_eval.status_markdown(failed), bench._status_text(failed)):
        assert "· *model*.onnx " in shown(status) and "❌ cannot read _take*2*.mp4 &lt;clip&gt;" in shown(status)


def _inspection(**changes: object) -> dict:
    """A hand-built inspection with every field inspection_markdown reads."""
    return {"name": "m.onnx", "ir_version": 8, "opsets": {"": 17}, "producer": "pytorch 2.5", "parameters": 12,
            "parameter_bytes": 48, "size_bytes": 300, "sha256": "ab" * 32, "symbols": {}, "flops": None,
            "flops_not_counted": ["Relu"], "op_counts": {"Relu": 1}, "warnings": [], **changes}  # fmt: skip


def test_the_inspection_lists_ops_most_used_first_and_an_unnamed_producer_as_unknown() -> None:
    described = onnx_report.inspection_markdown(_inspection(op_counts={"Add": 1, "MatMul": 3, "Relu": 2}, producer=""))
    assert "- ops: MatMul ×3, Relu ×2, Add ×1" in described.splitlines()
    assert " · producer unknown" in described.splitlines()[0]


def test_the_inputs_with_a_default_stop_at_the_listed_count() -> None:
    """Exactly DEFAULTS_LISTED are all shown with no "… and 0 more"; one more shows DEFAULTS_LISTED and the count."""
    from engine.onnx.model import DEFAULTS_LISTED

    spec = {"name": "w", "dtype": "float32", "shape": [3]}
    for count, more in ((DEFAULTS_LISTED, []), (DEFAULTS_LISTED + 1, ["… and 1 more"])):
        rows = onnx_report.io_rows({"inputs": [], "outputs": [], "overridable_inputs": [spec] * count})
        assert [r[1] for r in rows] == ["w"] * DEFAULTS_LISTED + more


def test_the_inspection_says_at_which_shapes_it_counted_the_flops() -> None:
    fixed = onnx_report.inspection_markdown(_inspection(flops=24, flops_not_counted=[]))
    assert "- 24 FLOP per run at its fixed shapes; not counted: nothing" in fixed.splitlines()


def test_an_evaluations_summary_names_the_provider_each_session_got_first() -> None:
    """ORT lists the providers a session got best first: TensorRT's session ran on TensorRT, not on its CPU fallback."""
    got = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    report = {"sessions": {"trt": {"got": got}}}
    assert onnx_report.summary_markdown(report).endswith("sessions: trt → Tensorrt")


def test_the_latency_chart_is_flagged_when_any_box_is() -> None:
    """The title warns when any configuration's spread is too wide, not only the last one drawn."""
    report = _onnx_report()
    report["results"][2]["times_ms"] = [1.0, 5.0]  # the wide row drawn first, a steady one after it
    report["results"][0]["times_ms"] = [1.2, 1.3]
    report["results"] = report["results"][::-1]
    assert onnx_report.latency_figure(report).layout.title.text.endswith("(⚠️ spread too wide to trust)")


def test_an_evaluations_warnings_show_users_names_as_written() -> None:
    """A warning names the model's outputs: `*logits*` showed in italics and `<raw>` vanished as a tag."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(
        onnx_report.summary_markdown({"warnings": ["output *logits* <raw> differs"]})
    )
    assert "⚠️ output *logits* &lt;raw&gt; differs" in html


def test_a_sweeps_charts_keep_each_configuration_apart_and_in_order() -> None:
    """The bars read top to bottom in the table's order, each hover naming its whole configuration; a channels-last
    series is a line of its own; a baseline the report's rows do not reach is named in words, not an IndexError."""
    report = _sweep_report()
    bars = bench_report.speedup_figure(report)
    assert bars.layout.yaxis.autorange == "reversed"  # the first row on top, as in the table
    assert list(bars.data[0].customdata) == ["cuda ort-cuda fp16 b1", "cuda ort-cuda fp16 b8"]
    assert list(bars.data[0].y) == ["b1", "b8"]  # "cuda ort-cuda fp16" said once, in the title
    beyond = {**report, "config": {"baseline": len(report["results"])}}
    assert bench_report.speedup_figure(beyond).layout.title.text.startswith("Speed-up against the baseline")
    wide, gpu, _ = report["results"]
    lines = bench_report.throughput_figure({"results": [wide, {**gpu, "channels_last": True}]}).data
    assert [(t.name, list(t.x)) for t in lines] == [("cuda ort-cuda fp16", [1]), ("cuda ort-cuda fp16 cl", [8])]


def test_a_sweeps_memory_columns_round_to_the_nearest_mib() -> None:
    """1.6 MiB reads 2, not 1 (truncated)."""
    gpu = {**_sweep_report()["results"][1], "peak_allocated_bytes": int(1.6 * 2**20), "device_used_bytes": 2**20 - 1}
    (row,) = bench_report.result_rows({"results": [gpu]})
    shown = dict(zip(bench_report.RESULT_HEADERS, row, strict=True))
    assert (shown["peak alloc MiB"], shown["device used MiB"]) == (2, 1)


def test_the_telemetry_charts_power_on_its_own_watts_axis() -> None:
    """250 W on the utilisation axis (0-105 %) ran off the chart."""
    report = {"results": [{"label": "a", "telemetry": [[0.0, 90.0, None, 250.0, 10.0]]}]}
    fig = bench_report.telemetry_figure(report)
    assert {t.name: t.yaxis for t in fig.data} == {"GPU utilisation %": "y", "GPU power W": "y2"}
    assert fig.layout.yaxis2.title.text == "W" and list(fig.layout.yaxis.range) == [0, 105]


def test_a_sweep_row_that_fell_back_names_what_it_ran_on() -> None:
    """TensorRT falls back to CUDA before the CPU: an ort-trt row on CUDA read "fell back to the CPU"."""
    failed = {**_sweep_report()["results"][2], "error": None}
    rows = bench_report.result_rows(
        {"results": [{**failed, "ran_on": "CUDAExecutionProvider"}, {**failed, "ran_on": "CPUExecutionProvider"}]}
    )
    assert [row[-1] for row in rows] == ["⚠️ fell back to CUDA", "⚠️ fell back to the CPU"]


def test_a_small_models_flops_per_sample_read_in_a_unit_that_keeps_them() -> None:
    """A 24-FLOP model read "0.00 GFLOP per sample": zero, where the inspection said 24 FLOP."""
    tiny = {**_sweep_report(), "model": {"name": "mlp", "flops_per_sample": 24.0}}
    assert bench_report.summary_markdown(tiny).splitlines()[0].endswith("· 24 FLOP per sample")


def test_the_inspection_shows_the_models_own_names_as_written() -> None:
    """Its warnings name the model's functions, domains and inputs, and its producer is the exporter's text: a
    dynamo export's `pkg.__main__` domain showed as pkg.<strong>main</strong>, `*` made italics."""
    from markdown_it import MarkdownIt

    local = "1 model-local function(s): pkg.__main__.Block"
    opsets = {"": 17, "pkg.__main__": 1}
    described = onnx_report.inspection_markdown(
        _inspection(producer="my*exporter* 1.0", warnings=[local], opsets=opsets)
    )
    html = MarkdownIt("commonmark").render(described)
    assert "opsets {'': 17, 'pkg.__main__': 1} · producer my*exporter* 1.0" in html.replace("&#x27;", "'")
    assert f"⚠️ {local}" in html


def test_an_output_missing_or_of_another_shape_is_said_in_words() -> None:
    """No figures to show: the row says why, under the provider that fell back (flagged)."""
    outputs = {"y": {"missing": True}, "z": {"shape_mismatch": True, "reference_shape": [1, 3], "shape": [1, 4]}}
    report = {"parity": {"cuda": outputs}, "sessions": {"cuda": {"fell_back": True}}}
    assert [(row[0], row[1], row[-1]) for row in onnx_report.parity_rows(report)] == [
        ("cuda ⚠️ fell back", "y", "missing / shape or type differs"),
        ("cuda ⚠️ fell back", "z", "missing / shape or type differs"),
    ]


def test_the_inspection_quotes_the_weights_the_file_and_the_hash_each_in_its_place() -> None:
    """The weights' size and the file's size side by side are easy to swap; the hash is cut to 16 characters, enough
    to tell two uploads apart."""
    sha = "0123456789abcdef" + "9" * 48
    described = onnx_report.inspection_markdown(
        _inspection(parameters=1234567, parameter_bytes=4 * 2**20, size_bytes=5 * 2**20, sha256=sha)
    )
    assert "- 1,234,567 parameters, 4.0 MiB of weights; file 5.0 MiB; sha256 `0123456789abcdef…`" in (
        described.splitlines()
    )


def test_an_older_reports_top_k_row_shows_both_columns() -> None:
    """Reports stored before the scored output and k were kept scored 5 or more classes: both columns shown, no
    "(one class)" and no top-k other than 5 said."""
    old = {"topk": {"cpu": {"top1": 0.5, "top5": 0.75, "n": 4}}}
    assert onnx_report.accuracy_rows({"accuracy": old}) == [["cpu", "top-k over 4 samples", "", "", "", "", 0.5, 0.75]]


def test_a_row_that_fell_back_with_no_provider_named_says_the_cpu() -> None:
    """A session that got no provider list fell back: the note names the CPU (ORT's own fallback), not nothing."""
    row = {"provider": "cuda", "batch": 1, "ran_on": None, "fell_back": True}
    assert onnx_report.result_rows({"results": [row]})[0][-1] == "⚠️ fell back to CPU"


def test_a_sweep_without_a_baseline_in_its_config_is_against_its_first_row() -> None:
    """SweepConfig's baseline defaults to the first configuration: a report whose config leaves it out (an imported
    one, say) names that row as the baseline, not the second."""
    report = {**_sweep_report(), "config": {}}
    assert bench_report.speedup_figure(report).layout.title.text.startswith("Speed-up against cuda ort-cuda fp16 b1")


def test_the_bar_labels_drop_only_the_words_every_configuration_shares() -> None:
    """A word two of three labels share ("cpu") still tells the third apart: only the words in all of them are said
    once, in the title."""
    speedups = {"cpu ort-cpu fp32 b1": 1.0, "cuda ort-cuda fp32 b1": 2.0, "cpu eager fp32 b1": 1.5}
    rows = [{"label": label, "speedup": speedup} for label, speedup in speedups.items()]
    bars = bench_report.speedup_figure({"results": rows, "config": {"baseline": 0}})
    assert list(bars.data[0].y) == ["cpu ort-cpu", "cuda ort-cuda", "cpu eager"]
    assert bars.layout.title.text == "Speed-up against cpu ort-cpu fp32 b1 (every bar: fp32 b1)"


def test_the_latency_memory_axes_leave_room_for_the_labels_beside_the_outermost_points() -> None:
    """The labels sit beside their points: a margin of a unit or two on an axis spanning a thousand MiB cut them."""
    fig = bench_report.latency_memory_figure(_sweep_report())
    (points,) = fig.data
    for axis, values in ((fig.layout.xaxis, points.x), (fig.layout.yaxis, points.y)):
        low, high = axis.range
        room = (max(values) - min(values)) / 10
        assert low <= min(values) - room and high >= max(values) + room


def test_a_gpu_that_reports_no_power_still_draws_its_utilisation() -> None:
    """Utilisation without a power reading (some cards report none) is the GPU's line, not the host CPU's."""
    report = {"results": [{"label": "a", "telemetry": [[0.0, 90.0, None, None, 10.0]]}]}
    fig = bench_report.telemetry_figure(report)
    assert [(t.name, list(t.y)) for t in fig.data] == [("GPU utilisation %", [90.0])]


def test_a_model_with_no_counted_flops_reads_flops_unknown() -> None:
    """A count of 0 means none of its ops has a FLOP count here (the sweep leaves its TFLOP/s out): not "0 FLOP"."""
    report = {**_sweep_report(), "model": {"name": "mlp", "flops_per_sample": 0}}
    assert bench_report.summary_markdown(report).splitlines()[0].endswith("· FLOPs unknown")


def test_a_string_tensor_is_listed_as_string_not_numpys_object() -> None:
    """numpy names ONNX's string tensors "object": the inputs and outputs table says "string"."""
    spec = {"name": "words", "dtype": "object", "shape": ["N"]}
    rows = onnx_report.io_rows({"inputs": [spec], "outputs": [{**spec, "name": "ids", "dtype": "int64"}]})
    assert rows == [["inputs", "words", "string", "['N']"], ["outputs", "ids", "int64", "['N']"]]


def test_the_telemetry_hover_says_watts_for_power_and_percent_for_utilisation() -> None:
    """Each line's hover in its own unit: the power line read "250 %"."""
    report = {"results": [{"label": "a", "telemetry": [[0.0, 90.0, None, 250.0, 10.0]]}]}
    hovers = {t.name: t.hovertemplate for t in bench_report.telemetry_figure(report).data}
    assert hovers["GPU power W"].endswith(" W<extra></extra>") and hovers["GPU utilisation %"].endswith(
        " %<extra></extra>"
    )
