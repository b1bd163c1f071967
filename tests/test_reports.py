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
    odd = {"parity": {"cuda": {"y": report["parity"]["cpu"]["y"], "words": {"shape_mismatch": False,
           "exact_match": False}}}, "sessions": {"cuda": {"fell_back": True}}}  # fmt: skip
    assert [row[:2] + row[-1:] for row in onnx_report.parity_rows(odd)][1] == ["cuda ⚠️ fell back", "words", "differs"]
    assert onnx_report.parity_rows(odd)[0][0] == "cuda ⚠️ fell back"
    described = onnx_report.inspection_markdown(report["inspection"])
    assert "mlp.onnx" in described and "- 24 FLOP per run at N=1; not counted: Add, Relu" in described  # 0.000 GFLOP
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
