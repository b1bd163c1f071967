"""Charts, tables and progress as the tabs show them: log axes labelled at real values, labels kept inside the
figure, empty charts and empty columns hidden (the exports complete), one progress display per action, run counts
scaled to the device, and a warning on a latency too scattered to trust."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
gr = pytest.importorskip("gradio")

import plotly.graph_objects as go  # noqa: E402
from tiny_onnx import mlp  # noqa: E402

import engine.bench.sweep as sweep_module  # noqa: E402
import engine.onnx.runner as runner  # noqa: E402
from engine.bench.config import SweepRequest  # noqa: E402
from engine.bench.sweep import OWN_WEIGHTS_NOTE, BenchPoint, SweepConfig, rows_to_csv, run_sweep  # noqa: E402
from engine.bench.workloads import onnx_model  # noqa: E402
from engine.onnx import timing  # noqa: E402
from engine.onnx.config import EvalConfig  # noqa: E402
from engine.onnx.evaluate import evaluate  # noqa: E402
from engine.onnx.inspection import inspect_model  # noqa: E402
from engine.onnx.model import ModelInfo  # noqa: E402
from engine.runtimes.ort_session import OrtSession  # noqa: E402
from ui import bench_report, onnx_report, widgets  # noqa: E402

MODEL = Path("model.onnx")  # the request's model name; evaluate() runs the file it is handed
SLOW_S = 0.05  # one run this much slower than the rest (the model's own runs take microseconds)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelInfo]:
    path = mlp(tmp_path_factory.mktemp("m") / "mlp.onnx")
    return path, inspect_model(path)


@pytest.fixture(scope="module")
def onnx_result(model) -> dict:
    path, info = model
    return evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1, 2, 4], runs=3, warmup=0))


@pytest.fixture(scope="module")
def sweep(model) -> dict:
    path, info = model
    points = [BenchPoint("ort-cpu", "fp32", 1, "cpu"), BenchPoint("ort-cpu", "fp32", 4, "cpu")]
    return run_sweep(SweepConfig("mlp", points, runs=3, warmup=0), onnx_model(path, "mlp", info), None)


# ---------------------------------------------------------------------------------------------- axes and labels


def test_log_axes_are_labelled_at_the_batch_sizes(onnx_result: dict, sweep: dict) -> None:
    for figure, batches in (
        (onnx_report.throughput_figure([("", onnx_result)]), [1, 2, 4]),
        (bench_report.throughput_figure(sweep), [1, 4]),
    ):
        axis = figure.layout.xaxis
        assert axis.type == "log" and axis.tickmode == "array"
        assert list(axis.tickvals) == batches and list(axis.ticktext) == [str(b) for b in batches]


def test_throughput_axes_start_at_zero(onnx_result: dict, sweep: dict) -> None:
    """The throughput-vs-batch charts' samples/s axis started near the lowest point (7), exaggerating differences."""
    for figure in (onnx_report.throughput_figure([("", onnx_result)]), bench_report.throughput_figure(sweep)):
        assert figure.layout.yaxis.rangemode == "tozero" and figure.layout.yaxis.type != "log"


def test_many_values_get_one_two_five_ticks() -> None:
    assert widgets.one_two_five(3, 700) == [2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert widgets.one_two_five(0.3, 0.9) == [0.2, 0.5, 1]
    fig = go.Figure(go.Scatter(x=[2**i for i in range(13)], y=list(range(13))))
    axis = widgets.log_axis(fig, [2**i for i in range(13)]).layout.xaxis
    assert list(axis.tickvals) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    assert list(axis.ticktext)[-3:] == ["1,000", "2,000", "5,000"]
    assert widgets.log_axis(go.Figure(), []).layout.xaxis.type is None  # nothing to label: left alone
    assert list(widgets.log_axis(go.Figure(), [1.5, 3]).layout.xaxis.ticktext) == ["1.5", "3"]  # as they are


def test_latency_memory_labels_stay_inside_the_figure(sweep: dict) -> None:
    fig = bench_report.latency_memory_figure(sweep)
    (points,) = fig.data
    assert points.cliponaxis is False and points.mode == "markers+text"
    assert [t.removesuffix(" ⚠️") for t in points.text] == ["b1", "b4"]  # what differs; the rest said once:
    assert "cpu ort-cpu fp32" in fig.layout.title.text
    # a label sits on the side of its point that faces the middle; neighbours one above, one below
    middle = (min(points.x) + max(points.x)) / 2
    sides = [position.split(" ")[1] for position in points.textposition]
    assert sides == ["left" if x > middle else "right" for x in points.x]
    assert sorted(position.split(" ")[0] for position in points.textposition) == ["bottom", "top"]
    low, high = fig.layout.xaxis.range
    assert low < min(points.x) and high > max(points.x)
    low, high = fig.layout.yaxis.range
    assert low < min(points.y) and high > max(points.y)
    assert fig.layout.xaxis.automargin and fig.layout.yaxis.automargin
    assert "process RSS peak" in fig.layout.xaxis.title.text  # what measured the memory on a CPU
    assert fig.layout.legend.yref == "container"  # the legend under the plot, inside the figure


# ---------------------------------------------------------------------------------------------- empty charts


def test_charts_with_nothing_to_draw_are_hidden(onnx_result: dict, sweep: dict) -> None:
    failed = {**sweep, "results": [{**r, "latency": None, "samples_per_s": None, "speedup": None, "telemetry": []}
                                   for r in sweep["results"]]}  # fmt: skip
    nothing = {
        **onnx_result,
        "results": [{**r, "times_ms": None, "samples_per_s": None} for r in onnx_result["results"]],
    }
    for empty in (
        bench_report.speedup_figure(failed),
        bench_report.throughput_figure(failed),
        bench_report.latency_memory_figure(failed),
        bench_report.telemetry_figure(failed),
        bench_report.compare_figure([("a", "cpu", failed)]),
        onnx_report.latency_figure(nothing),
        onnx_report.throughput_figure([("", nothing)]),
    ):
        update = widgets.chart(empty)
        assert update["visible"] is False and update["value"] is None, empty.layout.title.text
    for drawn in (bench_report.telemetry_figure(sweep), onnx_report.latency_figure(onnx_result)):
        update = widgets.chart(drawn)
        assert update["visible"] is True and update["value"] is drawn
    assert widgets.has_data(go.Figure(go.Histogram(x=[1.0])))  # values along x only (a histogram) are drawn too
    assert "yaxis2" not in bench_report.telemetry_figure(sweep).to_plotly_json()["layout"]  # no power axis on a CPU


def test_the_stage_chart_lists_the_stages_as_they_ran_the_slowest_in_red() -> None:
    """The Lip-sync result's chart: one bar per stage, top to bottom in the order they ran, each labelled in seconds,
    the slowest in the red its title promises; a run with no stages draws nothing (the chart is hidden)."""
    from engine.core.results import RunResult, StageTiming

    result = RunResult(stages=[StageTiming("detect", 0.5), StageTiming("infer", 2.25), StageTiming("encode", 0.75)])
    figure = widgets.timing_figure(result)
    (bars,) = figure.data
    assert list(bars.y) == ["detect", "infer", "encode"] and figure.layout.yaxis.autorange == "reversed"
    assert list(bars.x) == [0.5, 2.25, 0.75] and list(bars.text) == ["0.50s", "2.25s", "0.75s"]
    assert "slowest in red" in figure.layout.title.text and list(bars.marker.color).count("#d62728") == 1
    assert bars.marker.color[1] == "#d62728"
    assert widgets.chart(widgets.timing_figure(RunResult()))["visible"] is False
    assert widgets.chart(None)["visible"] is False  # no figure at all


def test_a_measured_runs_summary_says_its_window_and_why_the_stages_do_not_add_up() -> None:
    from engine.core.results import RunResult

    (line,) = widgets.measurement_line(RunResult(measurement={"wall_s": 2.0, "peak_rss_bytes": 2**30}))
    assert line.startswith("- measured: wall 2.00 s, peak RSS") and "do not add up to the wall" in line
    assert widgets.measurement_line(RunResult()) == []


# ---------------------------------------------------------------------------------------------- tables


def test_a_table_leaves_out_the_columns_every_row_leaves_empty() -> None:
    shown = widgets.table(["a", "b", "c", "d"], [[0, None, "N/A", ""], ["", "", "x", " "]])
    assert shown == {"headers": ["a", "c"], "data": [[0, "N/A"], ["", "x"]]}  # 0 is a value
    assert widgets.table(["a", "b"], []) == {"headers": ["a", "b"], "data": []}
    assert widgets.shown_table(["a"], [])["visible"] is False and widgets.shown_table(["a"], [[1]])["visible"]


def test_cpu_results_hide_the_gpu_columns_and_the_exports_keep_them(onnx_result: dict, sweep: dict) -> None:
    onnx = widgets.table(onnx_report.RESULT_HEADERS, onnx_report.result_rows(onnx_result))
    hidden = set(onnx_report.RESULT_HEADERS) - set(onnx["headers"])
    assert {"TRT build s", "device-resident p50 ms", "GPU mem Δ MiB", "process GPU MiB"} <= hidden
    assert {"provider", "batch", "p50 ms", "samples/s"} <= set(onnx["headers"])
    assert all(len(row) == len(onnx["headers"]) for row in onnx["data"])
    assert all("trt_build_s" in row and "latency_iobinding" in row for row in onnx_result["results"])  # the JSON
    bench = widgets.table(bench_report.RESULT_HEADERS, bench_report.result_rows(sweep))
    assert {"% of peak", "peak alloc MiB", "device used MiB", "J/sample"} <= set(bench_report.RESULT_HEADERS) - set(
        bench["headers"]
    )
    header = next(csv.reader(io.StringIO(rows_to_csv(sweep))))
    assert {"percent_of_peak", "peak_allocated_bytes", "device_used_bytes", "energy_j_per_sample",
            "energy_source"} <= set(header)  # fmt: skip


# ---------------------------------------------------------------------------------------------- spread


def test_spread_warning_by_hand() -> None:
    wide = timing.spread_warning({"p50_ms": 1.0, "p95_ms": 3.5, "mean_ms": 1.2, "std_ms": 0.5})
    assert wide is not None and "p95 3.5 ms is 3.5x p50 1 ms" in wide and "std" not in wide
    noisy = timing.spread_warning({"p50_ms": 1.0, "p95_ms": 2.0, "mean_ms": 1.0, "std_ms": 1.5})
    assert noisy is not None and "std 1.5 ms exceeds the mean 1 ms" in noisy
    assert timing.spread_warning({"p50_ms": 1.0, "p95_ms": 3.0, "mean_ms": 1.0, "std_ms": 1.0}) is None  # at the limit
    assert timing.spread_warning(None) is None


class _OneSlowRun(OrtSession):
    """A real session whose `slow_call`-th run is SLOW_S slower: a measurable outlier among fast runs."""

    slow_call = 0

    def run(self, feeds):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.slow_call:
            time.sleep(SLOW_S)
        return super().run(feeds)


def test_a_scattered_onnx_latency_is_flagged_in_the_json_and_beside_the_chart(model, monkeypatch) -> None:
    path, info = model
    monkeypatch.setattr(_OneSlowRun, "slow_call", 11)  # the first run, then 10 timed: the last one is slow
    monkeypatch.setattr(runner, "OrtSession", _OneSlowRun)
    report = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1], runs=10, warmup=0))
    (row,) = report["results"]
    assert row["spread_warning"] and "spread too wide to trust" in row["spread_warning"]
    assert f"cpu at batch 1: {row['spread_warning']}" in report["warnings"]  # the CLI prints the warnings
    json.dumps(report)
    assert (
        "**cpu b1**" in onnx_report.spread_markdown(report) and "wide spread" in onnx_report.result_rows(report)[0][-1]
    )
    assert "⚠️" in onnx_report.latency_figure(report).data[0].name
    assert "spread too wide" not in onnx_report.summary_markdown(report)  # said beside the charts, not twice


def test_a_scattered_sweep_point_is_flagged(model, monkeypatch) -> None:
    path, info = model
    make = sweep_module.make_runtime

    def one_slow_run(*args, **kwargs):
        runtime, calls = make(*args, **kwargs), []
        fast = runtime.run

        def run() -> None:
            calls.append(1)
            if len(calls) == 11:  # the first run, then 10 timed: the last one is slow
                time.sleep(SLOW_S)
            fast()

        runtime.run = run
        return runtime

    monkeypatch.setattr(sweep_module, "make_runtime", one_slow_run)
    config = SweepConfig("mlp", [BenchPoint("ort-cpu", "fp32", 1, "cpu")], runs=10, warmup=0)
    report = run_sweep(config, onnx_model(path, "mlp", info), None)
    (row,) = report["results"]
    assert row["spread_warning"] and row["spread_warning"] in row["warnings"]
    assert "**cpu ort-cpu fp32 b1**" in bench_report.spread_markdown(report)
    assert bench_report.result_rows(report)[0][-1] == "⚠️ wide spread (see beside the charts)"
    assert row["spread_warning"] in rows_to_csv(report)


# ---------------------------------------------------------------------------------------------- run counts


def test_run_counts_by_hand() -> None:
    assert timing.warmup_count(None, True, 5) == 1 and timing.warmup_count(None, False, 5) == 5
    assert timing.warmup_count(3, True, 5) == 3 and timing.warmup_count(0, False, 5) == 0
    assert timing.timed_count(None, False, 50, 10.0) == 50  # a GPU keeps the default
    assert timing.timed_count(None, True, 50, 0.5) == timing.CPU_MIN_RUNS  # 4 would fit: the floor
    assert timing.timed_count(None, True, 50, 0.1) == 20  # 2 s at 0.1 s per run
    assert timing.timed_count(None, True, 50, 1e-5) == 50  # no more than the default
    assert timing.timed_count(7, True, 50, 9.0) == 7  # given counts are kept


def test_run_counts_and_the_spread_at_their_edges() -> None:
    """A default under the CPU's floor is kept, a warm-up timed at 0 s is no division by zero, and counts round down;
    the spread falls back to the slowest run where there is no p95, a p50 of 0 is no division, and long times are
    shown in whole milliseconds."""
    assert timing.timed_count(None, True, 5, 10.0) == 5  # the floor is the default's where that is under 10
    assert timing.timed_count(None, True, 50, 0.0) == 50
    assert timing.timed_count(None, True, 50, 0.07) == 28  # 28.6 fit in 2 s
    slow = {"p50_ms": 400.0, "p95_ms": None, "max_ms": 1234.4, "mean_ms": 450.0, "std_ms": 100.0}
    assert "(the slowest run 1234 ms is 3.1x p50 400 ms)" in (timing.spread_warning(slow) or "")
    assert timing.spread_warning({"p50_ms": 0.0, "p95_ms": 1.0, "mean_ms": 0.1, "std_ms": 0.05}) is None


def test_the_help_and_the_note_say_where_the_cpus_count_stops() -> None:
    """They said "as many as fit in about 2 s, at least 10": a 0.01 ms model ran 100 times, not 200,000."""
    from engine.bench.config import SweepRequest
    from engine.onnx.config import EvalConfig

    def runs_help(config: type) -> str:
        return config.__dataclass_fields__["runs"].metadata["option"].help

    assert runs_help(EvalConfig).endswith("on the CPU as many as fit in about 2 s, from 10 to 100)")
    assert runs_help(SweepRequest).endswith("on the CPU as many as fit in about 2 s, from 10 to 20)")
    assert "timed: as many as fit in about 2 s, from 10 to 100), warm-up + timed: cpu b1 1 + 100;" in (
        timing.auto_runs_note([("cpu b1", 1, 100)], 100))  # fmt: skip


def test_the_note_says_chosen_only_of_the_counts_left_empty(model) -> None:
    """With --runs 3 given, the note said the timed runs were "as many as fit in about 2 s" (a sweep's); with the
    warm-up given, ONNX eval's said nothing of the timed count it chose."""
    path, info = model
    given_runs = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1], runs=3))["notes"]
    assert "the warm-up count left empty was chosen for the CPU (warm-up 1), warm-up + timed: cpu b1 1 + 3; set " \
        "warmup for a fixed count" in given_runs  # fmt: skip
    given_warmup = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1], warmup=2))["notes"]
    timed = "the timed count left empty was chosen for the CPU (timed: as many as fit in about 2 s, from 10 to 100)"
    assert any(note.startswith(f"{timed}, warm-up + timed: cpu b1 2 + ") for note in given_warmup)


def test_empty_onnx_counts_are_quick_on_the_cpu_and_said(model, monkeypatch) -> None:
    path, info = model

    class Sleepy(OrtSession):
        def run(self, feeds):
            time.sleep(0.01)
            return super().run(feeds)

    monkeypatch.setattr(runner, "OrtSession", Sleepy)
    monkeypatch.setattr(timing, "CPU_BUDGET_S", 0.2)  # about 20 runs of 10 ms
    report = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1]))
    (row,) = report["results"]
    runs = row["latency"]["n"]
    assert row["warmup"] == timing.CPU_WARMUP and timing.CPU_MIN_RUNS <= runs < 50
    note, few = report["notes"]  # the quick budget's counts, then the tail percentiles they cannot give
    assert "chosen for the CPU" in note and f"cpu b1 1 + {runs}" in note
    assert note in onnx_report.summary_markdown(report)
    assert few.startswith("p95, p99 left out" if runs >= 10 else "p90, p95, p99 left out")
    fixed = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[1], runs=100, warmup=0))
    assert fixed["results"][0]["latency"]["n"] == 100 and fixed["results"][0]["warmup"] == 0 and fixed["notes"] == []


def test_empty_sweep_counts_on_the_cpu(model) -> None:
    path, info = model
    config = SweepConfig("mlp", [BenchPoint("ort-cpu", "fp32", 2, "cpu")])
    report = run_sweep(config, onnx_model(path, "mlp", info), None)
    (row,) = report["results"]
    runs = row["runs"]
    assert row["warmup"] == 1 and runs == row["latency"]["n"]
    assert timing.CPU_MIN_RUNS <= runs <= sweep_module.DEFAULT_RUNS  # microsecond runs: the default, unless preempted
    assert f"cpu ort-cpu fp32 b2 1 + {runs}" in report["notes"][-2] and report["notes"][-1] == OWN_WEIGHTS_NOTE
    planned = SweepRequest.build({}).plan(has_gpu=False)
    assert [p.batch for p in planned.points] == [1, 4] and planned.runs is None and planned.warmup is None


# ---------------------------------------------------------------------------------------------- widgets


def test_tri_state_radios_write_the_api_switch_lists() -> None:
    from ui.bench import CHANNELS_LAST_CHOICES, CUDNN_BENCHMARK_CHOICES

    for choices, name in ((CHANNELS_LAST_CHOICES, "channels_last"), (CUDNN_BENCHMARK_CHOICES, "cudnn_benchmark")):
        built = {label.split(" ")[0]: getattr(SweepRequest.build({name: value}), name) for label, value in choices}
        assert set(built) == {"on", "off", "both"}
        assert built["on"] == (True,) and built["off"] == (False,) and set(built["both"]) == {True, False}
    both = SweepRequest.build({"channels_last": CHANNELS_LAST_CHOICES[2][1], "batch": "1"}).plan(has_gpu=False)
    assert [p.channels_last for p in both.points] == [False, True]


def _visible(block) -> bool:
    while block is not None:
        if getattr(block, "visible", True) is False:
            return False
        block = getattr(block, "parent", None)
    return True


def test_one_progress_display_per_action(tmp_path: Path) -> None:
    """Every visible button's event shows its progress on one pane at most (Gradio's default: on every output)."""
    from engine.bench.jobs import BenchJobs
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from engine.onnx.jobs import OnnxEvalJobs
    from ui.bench import build_bench_tab
    from ui.jobs import Access, run_panel
    from ui.onnx_eval import build_onnx_eval_tab

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        handlers = {"onnx_eval": "engine.onnx.jobs:handle", "bench": "engine.bench.jobs:handle"}
        broker = Broker(store, handlers, {CPU: 1})  # never started: only the wiring is read
        build_onnx_eval_tab(settings, OnnxEvalJobs(broker, settings), Access())
        build_bench_tab(settings, BenchJobs(broker, settings), Access())
        outputs = [gr.Video(), gr.Markdown(), gr.Plot()]
        run_panel(SimpleNamespace(kind="lipsync"), Access(), lambda report: (None, "", None),
                  lambda ended: (None, "", None), outputs, gr.Button("Cancel"))  # fmt: skip
    checked = 0
    for fn in demo.fns.values():
        buttons = [demo.blocks[target] for target, _ in fn.targets if target in demo.blocks]
        if fn.show_progress == "hidden" or not any(isinstance(b, gr.Button) and _visible(b) for b in buttons):
            continue
        panes = fn.show_progress_on or [o for o in fn.outputs if not isinstance(o, gr.State | gr.Timer)]
        assert len(panes) <= 1, (fn.name, [type(o).__name__ for o in panes])
        checked += 1
    assert checked >= 10
    reopen = next(fn for fn in demo.fns.values() if list(fn.outputs) == outputs)
    assert list(reopen.show_progress_on) == [outputs[0]]  # the main result
    # It may wait for a running job: not in the queue's default group, where one waiting handler blocks the rest.
    assert (reopen.concurrency_id, reopen.concurrency_limit) == ("lipsync_reopen", 16)
    plots = [b for b in demo.blocks.values() if isinstance(b, gr.Plot) and b is not outputs[2]]
    assert plots and not any(p.visible for p in plots)  # no empty chart boxes before a result


def test_the_cost_table_and_network_plan_with_no_finished_sweep_open(tmp_path: Path) -> None:
    """The tab's sweep still queued, or a mistyped id opened: the cost table was a bare "Error" (TypeError), the
    network plan too (StoreError); now a refusal that says what to do, and the plan's estimate, its figures the
    planner's own in the units the pane names."""
    from engine.bench.catalog import CATALOG
    from engine.bench.config import NetworkPlanConfig, SweepRequest
    from engine.bench.jobs import BenchJobs
    from engine.bench.planner import plan_network
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from ui.bench import build_bench_tab
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        jobs = BenchJobs(Broker(store, {"bench": "engine.bench.jobs:handle"}, {CPU: 1}), settings)  # never started
        build_bench_tab(settings, jobs, Access())
        queued = jobs.submit(SweepRequest.build({"device": "cpu", "batch": "1"}), Access().owner(request)).id
        handler = {fn.name: fn.fn for fn in demo.fns.values()}
        for job, message in ((queued, "Run or open a sweep that finished"), ("deadbeef0000", "no job deadbeef0000")):
            with pytest.raises(gr.Error, match=message):
                handler["price_configuration"](job, "cpu eager fp32 b1", 1, "", request)
        plan = handler["fit_form"]("H100", "wav2lip", "fp16", 0.9, 0, 0, "deadbeef0000", request)
        # of the H100's total as CUDA reports it (85.0e9 bytes), not the 80 GB it is sold as
        assert "largest batch under 0.9 of 85.0 GB (the card's total as CUDA reports it)" in plan
        assert "at fp16 (estimate: " in plan
        config = NetworkPlanConfig.build({"gpu": "H100", "model": "wav2lip", "precision": "fp16"})
        _, fit = plan_network(config, settings.cache_dir, None, CATALOG["H100"])
        mib, gib = 2**20, 2**30  # the figures as the engine gives them, in the units the pane names
        assert f"fixed {fit.weights_bytes / mib:.0f} MiB, {fit.activation_bytes_per_sample / mib:.1f} MiB per " in plan
        assert f"CUDA context {fit.overhead_bytes / mib:.0f} MiB" in plan
        assert f"**{fit.recommended_batch}** (predicted {fit.predicted_bytes / gib:.2f} GiB)" in plan


def test_a_refused_plan_says_why_in_its_pane_in_place_of_the_last_plan(tmp_path: Path) -> None:
    """A typo in the LLM list, a Hub id not in the cache or the network plan's half-given throughput was a toast
    that faded over the last plan, another model's, which then read as the answer."""
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, handler, _ = _bench_tab(settings, store)
        form = ("V100-16GB", 1, "mistral7b", None, "auto", 0, 0, 1, 0.9, "auto")
        with pytest.warns(UserWarning, match="llm 'mistral7b' is neither a preset"):  # the toast, outside a page
            text, plan = handler["plan_form"](*form)
        assert text.startswith("✗ llm 'mistral7b' is neither a preset") and plan is None
        with pytest.warns(UserWarning, match="target throughput and throughput per GPU go together"):
            text = handler["fit_form"]("H100", "wav2lip", "fp16", 0.9, 1000, 0, None, request)
        assert text.startswith("✗ target throughput and throughput per GPU go together")


def test_the_tabs_llm_plan_offers_and_plans_tgis_bitsandbytes_4_bit(tmp_path: Path) -> None:
    """The Quantize list holds bitsandbytes-nf4 and -fp4, as TGI's launcher spells them, and planning one gives its
    launch line."""
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        demo, handler, _ = _bench_tab(settings, store)
    quantize = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Quantize")
    assert {"bitsandbytes-nf4", "bitsandbytes-fp4"} <= {value for _, value in quantize.choices}
    _, plan = handler["plan_form"]("L4", 1, "mistral-7b", None, "bitsandbytes-nf4", 0, 0, 1, 0.9, "auto")
    assert plan is not None and plan["flags"]["--quantize"] == "bitsandbytes-nf4"


def test_picking_an_llm_in_the_list_lets_go_of_an_uploaded_config(tmp_path: Path) -> None:
    """The model chosen last is planned: an uploaded config.json over the preset the list still shows, and picking in
    the list afterwards lets go of the file (it was planned whatever was picked after it)."""
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        demo, handler, _ = _bench_tab(settings, store)
    config = tmp_path / "config.json"  # given beside a preset still shown in the list: the file is what is planned
    config.write_text(json.dumps(dict(model_type="llama", hidden_size=2048, intermediate_size=5632,
                                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                      vocab_size=32000, max_position_embeddings=2048,
                                      _name_or_path="TinyLlama/TinyLlama-1.1B-Chat-v1.0")))  # fmt: skip
    _, plan = handler["plan_form"]("T4", 1, "mistral-7b", str(config), "auto", 0, 0, 1, 0.9, "auto")
    assert plan is not None and plan["model"]["name"] == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    blocks = list(demo.blocks.values())
    llm = next(b for b in blocks if isinstance(b, gr.Dropdown) and b.label == "LLM")
    upload = next(b for b in blocks if isinstance(b, gr.File) and "config.json" in (b.label or ""))
    picked = next(fn for fn in demo.fns.values() if (llm._id, "select") in fn.targets)
    assert (llm._id, "change") in picked.targets  # typed: a Hub id
    assert (llm._id, "input") not in picked.targets  # Gradio sends it on every blur: a click in and out
    assert list(picked.outputs) == [upload] and picked.fn() is None


def test_the_api_pages_planner_snippets_name_a_card_and_a_model_and_run_as_shown(tmp_path: Path) -> None:
    """They sent gpu="Hello!!" (Gradio's placeholder for text), and /plan_llm no model at all: both were refused."""
    from engine.bench.catalog import CATALOG
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        demo, _, _ = _bench_tab(settings, store)
    pages = demo.get_api_info()["named_endpoints"]
    for name, model in (("plan_llm", "llm"), ("plan_network", "model")):
        shown = {p["parameter_name"]: p["example_input"] for p in pages[f"/{name}"]["parameters"]}
        assert shown["gpu"] in CATALOG and shown[model], shown
        endpoint = next(fn for fn in demo.fns.values() if fn.api_name == name)
        assert "H100" in str(endpoint.fn(**shown)["gpu"])  # planned, not refused


def test_a_stopped_sweep_shows_the_configurations_it_finished(tmp_path: Path, model) -> None:
    """The bench tab renders a cancelled or failed sweep's stored rows (and says so); one that stopped before its
    first configuration leaves the outputs empty."""
    from engine.bench.jobs import BenchJobs
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CANCELLED, CPU, FAILED, JobStore
    from ui.bench import build_bench_tab
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    owner = Access().owner(request)
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        jobs = BenchJobs(Broker(store, {"bench": "engine.bench.jobs:handle"}, {CPU: 1}), settings)  # never started
        build_bench_tab(settings, jobs, Access())
        sweep = SweepRequest.build({"device": "cpu", "batch": "1,2"})
        stopped, empty = jobs.submit(sweep, owner), jobs.submit(sweep, owner)
        assert store.claim_next(CPU).id == stopped.id  # the other stops before it starts
        path, info = model
        config = SweepConfig("mlp", [BenchPoint("ort-cpu", "fp32", 1, "cpu")], runs=2, warmup=0)
        partial = run_sweep(config, onnx_model(path, "mlp", info), None)
        partial["notes"].insert(0, f"{sweep_module.PARTIAL_NOTE}: 1 of 2 configurations measured")
        store.save_partial(stopped.id, partial)
        store.fail(stopped.id, "cancelled by its owner while it ran", CANCELLED)
        store.fail(empty.id, "the sweep ran past its time limit", FAILED)
        poll = next(fn.fn for fn in demo.fns.values() if fn.name == "poll")
        status, _, summary, table, *_ = poll(stopped.id, request)
        assert "cancelled by its owner" in status and "The 1 configuration(s) it finished are below" in status
        assert "1 of 2 configurations measured" in summary and len(table["value"]["data"]) == 1
        status, _, summary, table, *_ = poll(empty.id, request)
        assert "time limit" in status and "finished are below" not in status and summary is None and table is None
        compare = next(fn.fn for fn in demo.fns.values() if fn.name == "compare")
        rows, _ = compare(stopped.id, request)  # its rows compare as a finished sweep's do
        assert len(rows["data"]) == 1
        with pytest.raises(gr.Error, match=f"job {empty.id} is failed and kept no results"):
            compare(f"{stopped.id} {empty.id}", request)


def test_the_cost_table_keeps_small_costs_in_significant_figures() -> None:
    """A T4 at 20,000 samples/s costs 4.86e-6 dollars per 1000 frames: five decimals showed 0.0."""
    from engine.bench.catalog import CATALOG, PriceBook
    from engine.bench.planner import cost_table

    rows = {r[0]: r for r in bench_report.cost_rows(cost_table(20_000.0, "fp16", CATALOG["T4"], PriceBook.defaults()))}
    assert float(rows["T4"][3]) == pytest.approx(0.35 / (20_000 * 3600) * 1000, rel=1e-3) and "e-06" in rows["T4"][3]


def _bench_tab(settings, store, access=None) -> tuple[gr.Blocks, dict, object]:
    """The bench tab built in a Blocks (its broker never started): the Blocks, its handlers by name, its jobs."""
    from engine.bench.jobs import BenchJobs
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU
    from ui.bench import build_bench_tab
    from ui.jobs import Access

    jobs = BenchJobs(Broker(store, {"bench": "engine.bench.jobs:handle"}, {CPU: 1}), settings)
    with gr.Blocks() as demo:
        build_bench_tab(settings, jobs, access or Access())
    return demo, {fn.name: fn.fn for fn in demo.fns.values()}, jobs


def test_saved_prices_are_shown_on_load_to_their_visitor_only(tmp_path: Path) -> None:
    """A visitor's saved T4 price came back as the catalog's after a reload (the table was the one the page was
    built with), and saving any other edit from it wrote the old price back; the edited row kept the catalog's
    source; the tab named a server path. Now the table is each visitor's on load, an edited price is marked as
    theirs, and their file holds only their changes (the operator's later prices still reach the rest)."""
    import datetime

    from engine.bench.catalog import CATALOG, PriceBook
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    alice, bob = (SimpleNamespace(username=None, session_hash=s, cookies={}) for s in ("alice", "bob"))
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        demo, handler, _ = _bench_tab(settings, store)
        loads = [fn for fn in demo.fns.values() if fn.name == "own_prices"]
        assert loads and all(t[1] == "load" for fn in loads for t in fn.targets)  # the page's load fills it

        def price(rows: list[list], gpu: str) -> list:
            return next(r for r in rows if r[0] == gpu)

        rows = handler["own_prices"](alice)
        assert price(rows, "T4")[1] == CATALOG["T4"].price_per_hour
        price(rows, "T4")[1] = 0.99
        saved = handler["save"](rows, alice)
        assert price(saved, "T4")[1:] == [0.99, f"your price, {datetime.date.today().isoformat()}"]
        reloaded = handler["own_prices"](alice)  # a reload: her price, not the catalog's
        assert price(reloaded, "T4") == price(saved, "T4")
        assert price(handler["own_prices"](bob), "T4")[1] == CATALOG["T4"].price_per_hour  # his stay his
        price(reloaded, "L4")[1:] = [0.5, "my provider"]  # a second edit from the reloaded table
        again = handler["save"](reloaded, alice)
        assert price(again, "T4")[1] == 0.99 and price(again, "L4")[1:] == [0.5, "my provider"]
        (own,) = (settings.data_dir / "prices").glob("*.json")
        assert set(json.loads(own.read_text())["prices"]) == {"T4", "L4"}  # her changes only
        shared = PriceBook.load(settings.prices_path)
        shared.update({"A10G": 2.0}, {"A10G": "operator"})
        shared.save(settings.prices_path)
        assert price(handler["own_prices"](alice), "A10G")[1:] == [2.0, "operator"]
        rows = handler["own_prices"](alice)
        price(rows, "L4")[2] = "my invoice"  # the source alone: the price it had, now with where it came from
        assert price(handler["save"](rows, alice), "L4")[1:] == [0.5, "my invoice"]
    text = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert str(settings.data_dir) not in text and "prices.json" not in text and "kept for you alone" in text


def test_the_operators_saved_prices_are_the_shared_ones_marked_as_the_operators(tmp_path: Path) -> None:
    """An operator edits the server's price file, which every visitor's cost figures start from: the price is
    marked as the operator's (not "your price"), no file of their own is written, and a visitor sees it."""
    import datetime

    from engine.bench.catalog import PriceBook
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    operator = SimpleNamespace(username="op", session_hash="op", cookies={})
    visitor = SimpleNamespace(username=None, session_hash="bob", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, handler, _ = _bench_tab(settings, store, Access(operators=frozenset({"op"})))
        rows = handler["own_prices"](operator)
        next(r for r in rows if r[0] == "T4")[1] = 0.77
        saved = next(r for r in handler["save"](rows, operator) if r[0] == "T4")
        mark = f"set by this server's operator, {datetime.date.today().isoformat()}"
        assert saved[1:] == [0.77, mark]
        assert PriceBook.load(settings.prices_path).prices["T4"] == 0.77
        assert not list((settings.data_dir / "prices").glob("*.json"))  # no file of the operator's own
        assert next(r for r in handler["own_prices"](visitor) if r[0] == "T4")[1:] == [0.77, mark]
        rows = handler["own_prices"](operator)
        next(r for r in rows if r[0] == "L4")[1] = 0.66
        handler["save"](rows, operator)  # a second edit keeps the first: the whole book is the server's
        assert {k: v for k, v in PriceBook.load(settings.prices_path).prices.items() if k in ("T4", "L4")} == {
            "T4": 0.77,
            "L4": 0.66,
        }


def test_the_onnx_and_bench_histories_list_when_opened_and_a_clicked_row_gives_its_id(tmp_path: Path) -> None:
    """Their history tables stayed empty until Refresh (Lip-sync's lists when opened), and a row clicked put
    nothing in the ids box, so Open asked for an id. Now both list when opened, and a row clicked puts its id first
    (Open opens it; Compare still takes the ids already there)."""
    from engine.bench.jobs import BenchJobs
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from engine.onnx.jobs import OnnxEvalJobs
    from ui import bench, onnx_eval
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        handlers = {"onnx_eval": "engine.onnx.jobs:handle", "bench": "engine.bench.jobs:handle"}
        broker = Broker(store, handlers, {CPU: 1})  # never started: only the wiring is read
        onnx_eval.build_onnx_eval_tab(settings, OnnxEvalJobs(broker, settings), Access())
        bench.build_bench_tab(settings, BenchJobs(broker, settings), Access())
    for headers in (onnx_eval.HISTORY_HEADERS, bench.HISTORY_HEADERS):
        (history,) = [b for b in demo.blocks.values() if isinstance(b, gr.Dataframe) and b.headers == headers]
        listing = [f for f in demo.fns.values() if f.outputs == [history]]
        events = sorted(t[1] for f in listing for t in f.targets if f.name == "history_rows")
        assert events == ["click", "expand"], headers  # Refresh, and the accordion opened
        (pick,) = [f for f in demo.fns.values() if any(t == (history._id, "select") for t in f.targets)]
        (chosen,) = pick.outputs
        assert isinstance(chosen, gr.Textbox) and pick.inputs == [chosen]
        clicked = gr.SelectData(history, {"index": [1, 2], "value": "done", "row_value": ["1a855ac6d4db", "m"]})
        assert pick.fn("", clicked) == "1a855ac6d4db"
        assert pick.fn("0f00ba4, 1a855ac6d4db", clicked) == "1a855ac6d4db, 0f00ba4"


@contextlib.contextmanager
def _priced_sweep(tmp_path: Path, model, edit) -> Iterator[tuple[dict, str, str, SimpleNamespace]]:
    """(the tab's handlers, the id of a finished one-row CPU sweep of `model` as `edit` leaves its report, the row's
    label, the visitor)."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CPU, JobStore
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, handler, jobs = _bench_tab(settings, store)
        job = jobs.submit(SweepRequest.build({"device": "cpu", "batch": "1"}), Access().owner(request))
        assert store.claim_next(CPU).id == job.id
        path, info = model
        config = SweepConfig("mlp", [BenchPoint("ort-cpu", "fp32", 1, "cpu")], runs=2, warmup=0)
        report = edit(run_sweep(config, onnx_model(path, "mlp", info), None))
        store.finish(job.id, report)
        yield handler, job.id, report["results"][0]["label"], request


def test_a_cpu_configuration_is_priced_at_the_cpu_price_and_unpriced_cards_are_named(tmp_path: Path, model) -> None:
    """After a CPU sweep every cost row read "not estimated: measured on the CPU", and the catalog's boards without a
    price were missing without a word. Now the tab takes the CPU machine's price (as `cost --cpu-price-per-hour`),
    says how to get a CPU figure when it is not given, and names the cards left out and how to price them."""
    from engine.bench.catalog import CATALOG

    with _priced_sweep(tmp_path, model, lambda report: report) as (handler, job_id, label, request):
        rows, notes = handler["price_configuration"](job_id, label, 250, "0.34", request)
        assert rows[0][0] == "CPU (measured)" and rows[0][1] == 0.34 and rows[0][3] != ""  # priced
        unpriced = [key for key, gpu in CATALOG.items() if gpu.price_per_hour is None]
        assert unpriced and "Left out" not in notes  # no card is estimated from a CPU: a price adds nothing
        assert "give the CPU machine's" not in notes and "fell back" not in notes  # measured on the CPU as asked
        with pytest.raises(gr.Error, match="pick one of its configurations"):  # none picked yet
            handler["price_configuration"](job_id, None, 250, "0.34", request)
        rows, notes = handler["price_configuration"](job_id, label, 250, "", request)
        assert "CPU (measured)" not in [r[0] for r in rows] and "give the CPU machine's **$/hour**" in notes
        for price in ("-1", "0"):  # a price of 0 priced nothing: its row read as unpriced
            with pytest.raises(gr.Error, match=rf"cpu price per hour {price} is outside 0.001..10000"):
                handler["price_configuration"](job_id, label, 250, price, request)


def test_a_gpu_configuration_that_fell_back_to_the_cpu_is_priced_as_the_cpu(tmp_path: Path, model) -> None:
    """Its samples/s were the CPU's, shown as the card's "measured" figure (and once scaled to every other card)."""

    def fell_back(report: dict) -> dict:
        """The row as an ort-cuda point whose CUDA provider could not load reads."""
        report["results"][0].update(device="cuda", runtime="ort-cuda", ran_on="CPUExecutionProvider",
                                    fell_back=True, math_precision=None, label="cuda ort-cuda fp32 b1")  # fmt: skip
        report["gpu"] = {"name": "NVIDIA H100 80GB HBM3", "total_memory_bytes": 85 * 10**9, "capability": [9, 0]}
        return report

    with _priced_sweep(tmp_path, model, fell_back) as (handler, job_id, label, request):
        rows, notes = handler["price_configuration"](job_id, label, 250, "0.34", request)
        assert rows[0][0] == "CPU (measured)" and rows[0][1] == 0.34  # the CPU machine, at its price
        assert not [r for r in rows if r[0] == "H100" and r[3] not in ("", None)]  # no card priced from it
        assert notes.startswith("- ⚠️ cuda ort-cuda fp32 b1 fell back to the CPU: it is priced as a CPU measurement")


def test_a_card_configuration_is_priced_from_its_throughput_and_the_unpriced_cards_are_named(
    tmp_path: Path, model
) -> None:
    """Measured on a card: that card's row quotes the sweep's samples/s at the card's price, and the catalog's cards
    without a price are named as left out (not silently missing)."""
    from engine.bench.catalog import CATALOG

    def on_card(report: dict) -> dict:
        report["results"][0].update(device="cuda", runtime="ort-cuda", ran_on="CUDAExecutionProvider",
                                    math_precision=None, label="cuda ort-cuda fp32 b1")  # fmt: skip
        report["results"][0]["samples_per_s"] = 36_000.0
        report["machine"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
        return report

    with _priced_sweep(tmp_path, model, on_card) as (handler, job_id, label, request):
        rows, notes = handler["price_configuration"](job_id, label, 10, "", request)
    price = CATALOG["H100"].price_per_hour
    (h100,) = [r for r in rows if r[0] == "H100"]
    assert h100[1:3] == [price, 36_000.0]  # 3600 requests/s of 10 samples: 12.96 million an hour
    assert float(h100[3]) == pytest.approx(price / 12_960, rel=1e-3) and h100[4] == f"{10 / price * 12.96e6:,.0f}"
    unpriced = [key for key, gpu in CATALOG.items() if gpu.price_per_hour is None]
    assert notes.startswith(f"- ℹ️ Left out, with no price: {', '.join(unpriced)}.")


def test_the_bench_tabs_numbers_out_of_range_are_refused_naming_their_field(tmp_path: Path, model) -> None:
    """The planner's and cost table's number boxes carried Gradio limits: a GPU count of 0 was Gradio's "Value 0 is
    less than minimum value 1.", naming no field among the row's five, and the handler never ran. Now the value
    reaches the config, whose refusal names the field in the plan's pane; an emptied or zero samples-per-request of a
    configuration measured on a card is refused by its field (it was an internal error, or a bare 'must be
    positive')."""

    def on_a_card(report: dict) -> dict:
        report["results"][0].update(device="cuda", runtime="ort-cuda", ran_on="CUDAExecutionProvider",
                                    label="cuda ort-cuda fp32 b1")  # fmt: skip
        report.setdefault("machine", {})["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
        return report

    from engine.bench.catalog import CATALOG
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "tab")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        demo, _, _ = _bench_tab(settings, store)
    numbers = {b.label: b for b in demo.blocks.values() if isinstance(b, gr.Number)}
    assert "GPU count" in numbers and len(numbers) >= 7
    for number in numbers.values():
        assert number.preprocess(-1) == -1  # no Gradio limit stops a value before the handler
    with _priced_sweep(tmp_path, model, on_a_card) as (handler, job_id, label, request):
        form = ["V100-16GB", 0, "mistral-7b", None, "auto", 0, 0, 1, 0.9, "auto"]
        with pytest.warns(UserWarning, match="count 0 is outside 1..64"):
            text, plan = handler["plan_form"](*form)
        assert text.startswith("✗ count 0 is outside 1..64") and plan is None
        form[1], form[7] = 1, 0
        with pytest.warns(UserWarning, match="concurrent requests 0 is outside 1..100000"):
            handler["plan_form"](*form)
        with pytest.warns(UserWarning, match="target throughput -5 is outside"):
            handler["fit_form"]("H100", "wav2lip", "fp16", 0.9, -5, 100, None, request)
        for samples, why in ((0, "samples per request 0 is outside"), (-2, "samples per request -2 is outside")):
            with pytest.raises(gr.Error, match=why):
                handler["price_configuration"](job_id, label, samples, "", request)
        rows, notes = handler["price_configuration"](job_id, label, None, "", request)  # emptied: the default, 1
        assert any(r[3] not in ("", None) for r in rows)  # priced per request of one sample
        unpriced = [key for key, gpu in CATALOG.items() if gpu.price_per_hour is None and key != "H100"]
        assert unpriced and f"Left out, with no price: {', '.join(unpriced)}" in notes and "Save prices" in notes


def test_another_visitors_sweeps_and_evaluations_are_no_job_in_every_event_of_their_tabs(tmp_path: Path, model) -> None:
    """The tabs' events take job ids from the page (a gr.State, a typed id), which a hand-made request can name:
    each reads as the requester, so another visitor's job is "no job" in the lists, Open, Compare, the cost table
    and the stored models, and a job queued from a tab is its visitor's."""
    from engine.bench.jobs import BenchJobs
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from engine.onnx.jobs import OnnxEvalJobs
    from ui import bench, onnx_eval
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    alice, bob = (SimpleNamespace(username=None, session_hash=s, cookies={}) for s in ("alice", "bob"))
    c = EvalConfig
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        handlers = {"onnx_eval": "engine.onnx.jobs:handle", "bench": "engine.bench.jobs:handle"}
        broker = Broker(store, handlers, {CPU: 1})  # never started: the jobs stay queued
        with gr.Blocks() as bench_tab:
            bench.build_bench_tab(settings, BenchJobs(broker, settings), Access())
        with gr.Blocks() as onnx_tab:
            onnx_eval.build_onnx_eval_tab(settings, OnnxEvalJobs(broker, settings), Access())
        on_bench, on_onnx = ({fn.name: fn.fn for fn in tab.fns.values()} for tab in (bench_tab, onnx_tab))
        evaluation, *_ = on_onnx["queue_job"](
            "Upload", None, str(model[0]), ["cpu"], None, None, None, "1", 2, 0, 0, False, c.trt_workspace_gb, "", "",
            c.image_resize, c.image_scaling, c.image_channels, "", "", alice,
        )  # fmt: skip
        sweep, *_ = on_bench["queue"]("wav2lip", bench.CUSTOM, ["eager"], ["fp32"], ["cpu"], "1", "off", "on",
                                      "default", None, None, alice)  # fmt: skip
        for handler, job in ((on_bench, sweep), (on_onnx, evaluation)):
            assert [row[0] for row in handler["history_rows"](alice)] == [job] and handler["history_rows"](bob) == []
            assert handler["open_job"](job, alice)[1].startswith(f"{'Sweep' if handler is on_bench else 'Job'} `{job}`")
            assert handler["open_job"](job, bob)[1] == f"no job {job}"
            with pytest.raises(gr.Error, match=f"no job {job}"):
                handler["compare"](job, bob)
        with pytest.raises(gr.Error, match=f"no job {sweep}"):
            on_bench["price_configuration"](sweep, "cpu eager fp32 b1", 1, "", bob)
        api = {fn.api_name: fn.fn for tab in (bench_tab, onnx_tab) for fn in tab.fns.values() if fn.api_name}
        for name, job in (("bench_status", sweep), ("bench_result", sweep), ("onnx_status", evaluation),
                          ("onnx_result", evaluation)):  # fmt: skip
            assert api[name](job, alice)["id"] == job
            with pytest.raises(gr.Error, match=f"no job {job}"):
                api[name](job, bob)
        assert [j["id"] for j in api["onnx_queue"](alice)] == [evaluation] and api["onnx_queue"](bob) == []
        mine = [value for _, value in on_bench["models"](alice).choices if value.startswith("onnx:")]
        assert len(mine) == 1 and not [v for _, v in on_bench["models"](bob).choices if v.startswith("onnx:")]


def test_a_stopped_evaluation_shows_the_rows_it_finished(tmp_path: Path, model) -> None:
    """The ONNX tab renders a cancelled evaluation's stored rows (and says so), as the bench tab does a sweep's; one
    that stopped before its first provider leaves the outputs empty."""
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CANCELLED, CPU, FAILED, JobStore
    from engine.onnx.jobs import OnnxEvalJobs
    from engine.onnx.report import PARTIAL_NOTE
    from ui.jobs import Access
    from ui.onnx_eval import build_onnx_eval_tab

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    c = EvalConfig
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        broker = Broker(store, {"onnx_eval": "engine.onnx.jobs:handle"}, {CPU: 1})  # never started
        build_onnx_eval_tab(settings, OnnxEvalJobs(broker, settings), Access())
        handlers = {fn.name: fn.fn for fn in demo.fns.values()}
        queued = [
            handlers["queue_job"](
                "Upload", None, str(model[0]), ["cpu", "cuda"], None, None, None, "1,2", 2, 0, 0, False,
                c.trt_workspace_gb, "", "", c.image_resize, c.image_scaling, c.image_channels, "", "", request,
            )[0]
            for _ in range(2)
        ]  # fmt: skip
        stopped, empty = queued
        assert store.claim_next(CPU).id == stopped  # the other stops before it starts
        path, info = model
        partial = evaluate(path, info, EvalConfig(model=MODEL, providers=["cpu"], batch_sizes=[1, 2], runs=2, warmup=0))
        partial["notes"].insert(0, f"{PARTIAL_NOTE}: cpu of cpu, cuda measured")
        store.save_partial(stopped, partial)
        store.fail(stopped, "cancelled by its owner while it ran", CANCELLED)
        store.fail(empty, "the evaluation ran past its time limit", FAILED)
        status, _, summary, results, *_ = handlers["poll"](stopped, request)
        assert "cancelled by its owner" in status and "The 2 result row(s) it finished are below" in status
        assert "cpu of cpu, cuda measured" in summary and len(results["value"]["data"]) == 2
        status, _, summary, results, *_ = handlers["poll"](empty, request)
        assert "time limit" in status and "finished are below" not in status and summary is None and results is None


def test_a_configuration_that_measured_no_throughput_is_refused_in_words(tmp_path: Path, model) -> None:
    """A configuration that failed (out of memory, say) has no samples/s: pricing it said so, not an internal
    error from the arithmetic."""

    def failed(report: dict) -> dict:
        report["results"][0]["samples_per_s"] = None
        return report

    with _priced_sweep(tmp_path, model, failed) as (handler, job_id, label, request), pytest.raises(gr.Error) as no:
        handler["price_configuration"](job_id, label, 250, "0.34", request)
    assert no.value.message == f"{label} has no throughput in the sweep open in this tab"


def test_the_onnx_and_bench_tabs_say_the_engines_flags_by_their_labels(tmp_path: Path) -> None:
    """The ONNX tab refused "labels output names the output --labels score", the planner advised "--count 2" and
    "--kv-cache-dtype fp8_e4m3fn": flags of a command line a web user never saw. Each names the tab's field as it
    is labelled; the launch line, a command to copy, keeps TGI's flags."""
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from engine.onnx.jobs import OnnxEvalJobs
    from ui.jobs import Access
    from ui.onnx_eval import build_onnx_eval_tab

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, bench, _ = _bench_tab(settings, store)
        with gr.Blocks() as demo:
            build_onnx_eval_tab(settings, OnnxEvalJobs(Broker(store, {}, {CPU: 1}), settings), Access())
    onnx = {fn.name: fn.fn for fn in demo.fns.values()}
    form = ["Built-in example", "wav2lip", None, ["cpu"], None, None, None, "1", None, None, 0, False, 4.0, "",
            "", "stretch", "0-1", "rgb", "", "scores", request]  # fmt: skip
    with pytest.raises(gr.Error) as refused:
        onnx["queue_job"](*form)
    assert refused.value.message == (
        "labels output names the output “Class labels, one per sample of the first batch” score: give labels, or "
        "leave it out"
    )
    text, _ = bench["plan_form"]("A10G", 1, "llama-2-13b", None, "auto", 0, 0, 64, 0.9, "auto")
    assert "more GPUs (“GPU count” 2 shards it further), an 8-bit KV cache (“KV cache type” fp8_e4m3fn)" in text
    assert " --num-shard 1 --cuda-memory-fraction 0.9 --max-input-tokens 4095 --max-total-tokens 4096 " in text


def test_a_custom_grid_with_a_box_group_left_unticked_is_refused_by_its_label(tmp_path: Path) -> None:
    """With every device unticked the sweep ran on the default device, a grid the form did not show (unticked
    runtimes or precisions were refused as "runtime is empty ... comma-separated"). Each empty group is named by
    its label and nothing is queued; a preset, which sets its own grid, ignores the boxes."""
    from engine.core.settings import load_settings
    from engine.jobs.store import JobStore
    from ui.jobs import Access

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, bench, jobs = _bench_tab(settings, store)
        form = ["wav2lip", "custom grid", ["eager"], ["fp32"], ["cpu"], "1", "off", "on", "default", 2, 0, request]
        for boxes, named in (((4,), "“Devices”"), ((2, 3), "“Runtimes (custom grid)” or “Precisions”")):
            unticked = [[] if i in boxes else v for i, v in enumerate(form)]
            with pytest.raises(gr.Error) as refused:
                bench["queue"](*unticked)
            assert refused.value.message == f"nothing is ticked in {named}: tick one or more"
        owner = Access().owner(request)
        assert store.history(10, owner=owner) == []
        preset = [*form[:1], "wav2lip-ladder", [], [], [], *form[5:]]
        job_id = bench["queue"](*preset)[0]
        assert jobs.status(job_id, owner)["status"] == "queued"


def test_a_clicked_row_goes_first_once_and_a_blank_row_leaves_the_ids_box_alone() -> None:
    """The ids box after a click: the row's id first, each id once, however the ids there were separated; a row
    with no id (an empty table's placeholder) keeps what the user typed."""
    from ui.history import clicked_first

    table = gr.Dataframe()

    def click(job: str) -> gr.SelectData:
        return gr.SelectData(table, {"index": [0, 0], "value": job, "row_value": [job, "done"]})

    assert clicked_first("b1,c2 a0", click("a0")) == "a0, b1, c2"
    assert clicked_first(None, click("a0")) == "a0"
    assert clicked_first("b1, c2", click("")) == "b1, c2"


def test_the_compare_takes_sweeps_stopped_with_results_and_says_why_it_refuses_the_rest(tmp_path: Path, sweep) -> None:
    """The compare box takes ids as the history shows them (comma- or space-separated): a sweep cancelled part way
    compares with the rows it finished; a queued one, one that kept no results, an id of none and an empty box are
    refused with why, never an internal error."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CANCELLED, CPU, JobStore
    from ui.jobs import LOCAL

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, handlers, _ = _bench_tab(settings, store)
        compare = handlers["compare"]

        def job(ends: str | None, report: dict | None = None) -> str:
            made = store.submit("bench", {"sweep": sweep["config"]}, CPU, owner=LOCAL)
            if ends:
                store.claim_next(CPU)
                if report:
                    store.save_partial(made.id, report)
                store.fail(made.id, f"{ends} on the way", ends)
            return made.id

        stopped, empty = job(CANCELLED, sweep), job("failed")
        table, _ = compare(f"{stopped},{stopped}", None)
        assert [row[0] for row in table["data"]] == [stopped] * (2 * len(sweep["results"]))
        queued = job(None)
        for text, refused in (
            (f"{stopped}, {queued}", f"job {queued} is queued; only jobs with results can be compared"),
            (empty, f"job {empty} is failed and kept no results; only jobs with results can be compared"),
            ("deadbeef0000", "no job deadbeef0000"),
            (" , ", "Give one or more job ids from the history table."),
        ):
            with pytest.raises(gr.Error) as error:
                compare(text, None)
            assert error.value.message.startswith(refused), error.value.message


def test_the_compare_waits_for_a_running_sweep_even_with_rows_so_far(tmp_path: Path, sweep) -> None:
    """A running sweep's rows so far are not its results yet: the compare says it is running (not that it kept no
    results), so the user knows to wait."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CPU, JobStore
    from ui.jobs import LOCAL

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, handlers, _ = _bench_tab(settings, store)
        running = store.submit("bench", {"sweep": sweep["config"]}, CPU, owner=LOCAL)
        store.claim_next(CPU)
        store.save_partial(running.id, sweep)
        with pytest.raises(gr.Error) as error:
            handlers["compare"](running.id, None)
    assert error.value.message.startswith(f"job {running.id} is running; only jobs with results can be compared")


# ------------------------------------------------------------------------------ the shared widgets' words and values


def test_a_users_names_show_as_written_in_a_markdown_pane_and_code_spans_stay_code() -> None:
    """A model or file name with `*`, `_` or `<` in it made italics or vanished from a Markdown message."""
    text = "model *best*_v2 <x> in [a]|b~#c, run `python -m x_y*z`"
    shown = widgets.markdown_literal(text)
    assert shown == r"model \*best\*\_v2 \<x\> in \[a\]\|b\~\#c, run `python -m x_y*z`"
    assert widgets.markdown_literal(r"C:\models\a_b.onnx") == r"C:\\models\\a\_b.onnx"


def test_the_option_fields_start_at_the_configs_defaults_within_its_range() -> None:
    """The form shows what the CLI and the API would use: an empty box for "auto", a whole-number box for an int, a
    slider over the option's own range."""
    from engine.lipsync.config import LipSyncConfig

    assert widgets.number(LipSyncConfig, "resize_factor", "Shrink").precision == 0  # an int: no "1.5" frames
    assert widgets.number(LipSyncConfig, "fps", "FPS").precision is None
    auto = widgets.optional_number(LipSyncConfig, "batch_size", "Batch size", "auto")
    assert auto.value == "" and auto.placeholder == "auto"  # empty means auto, not the word "None"
    assert widgets.optional_number(LipSyncConfig, "audio_offset", "Offset", "none").value == "0"
    offset = widgets.slider(LipSyncConfig, "audio_offset", "Offset", step=1)
    assert (offset.minimum, offset.maximum, offset.value) == (-25, 25, 0)
    scale = widgets.slider(LipSyncConfig, "detect_scale", "Scale", step=0.05)
    assert (scale.minimum, scale.maximum, scale.value) == (0.1, 1.0, 0.5)


def test_a_time_is_shown_to_the_second_and_no_time_as_nothing() -> None:
    import datetime

    moment = datetime.datetime(2026, 3, 4, 5, 6, 7).timestamp()
    assert widgets.when(moment) == "2026-03-04 05:06:07"
    assert widgets.when(None) == ""


def test_a_log_axis_starts_and_ends_at_the_data_when_it_lies_on_a_step() -> None:
    """Data from 2 to 50 is labelled 2..50, not from 1 (an empty decade before the first point); eight batch sizes
    are still few enough to be labelled at themselves; a zero or missing value (a point that did not run) has no
    place on a log axis."""
    assert widgets.one_two_five(2, 50) == [2, 5, 10, 20, 50]
    eight = [2**i for i in range(8)]
    axis = widgets.log_axis(go.Figure(), eight).layout.xaxis
    assert list(axis.tickvals) == eight and list(axis.ticktext) == ["1", "2", "4", "8", "16", "32", "64", "128"]
    assert list(widgets.log_axis(go.Figure(), [0, None, 4, 16]).layout.xaxis.tickvals) == [4, 16]


def _onnx_tab(settings, store, devices: tuple[str, ...]) -> tuple[dict, gr.Blocks]:
    """The ONNX tab's handlers by name, and its Blocks, over a broker of `devices` that is never started."""
    from engine.jobs.broker import Broker
    from engine.onnx.jobs import OnnxEvalJobs
    from ui.jobs import Access
    from ui.onnx_eval import build_onnx_eval_tab

    with gr.Blocks() as demo:
        broker = Broker(store, {"onnx_eval": "engine.onnx.jobs:handle"}, dict.fromkeys(devices, 1))
        build_onnx_eval_tab(settings, OnnxEvalJobs(broker, settings), Access())
    return {fn.name: fn.fn for fn in demo.fns.values()}, demo


def test_the_onnx_history_row_quotes_the_jobs_own_status_best_throughput_and_error(tmp_path: Path, model) -> None:
    """A finished evaluation's row shows its best samples/s; a failed one's its error, cut to 160 characters; Open
    opens the first of the ids given; Compare names each row and line by its job and model; each row its providers
    and device."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CPU, FAILED, JobStore
    from ui.onnx_eval import _best_throughput

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    c = EvalConfig
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        handlers, _ = _onnx_tab(settings, store, ("cuda:0", CPU))
        finished, failed = (
            handlers["queue_job"](
                "Upload", None, str(model[0]), providers, None, None, None, "1,2", 2, 0, 0, False, c.trt_workspace_gb,
                "", "", c.image_resize, c.image_scaling, c.image_channels, "", "", request,
            )[0]
            for providers in (["cpu"], ["cpu", "cuda"])  # the second is placed on the GPU
        )  # fmt: skip
        assert store.claim_next(CPU).id == finished
        path, info = model
        report = evaluate(path, info, EvalConfig(model=MODEL, providers=["cpu"], batch_sizes=[1, 2], runs=2, warmup=0))
        store.finish(finished, report)
        store.fail(failed, "x" * 300, FAILED)
        rows = {row[0]: row for row in handlers["history_rows"](request)}
        opened = handlers["open_job"](f"{failed}, {finished}", request)  # Open: the first id in the box
        compared, plot = handlers["compare"](finished, request)
    assert opened[0] == failed and opened[1].startswith(f"Job `{failed}` · **failed**")
    model_name = rows[finished][1]
    assert [row[:3] for row in compared["data"]] == [[finished, model_name, "cpu"]] * 2
    assert [line.name for line in plot["value"].data] == [f"{finished} {model_name} cpu"]  # each job's lines named
    best = _best_throughput(report)
    assert best != "" and rows[finished][2:5] == ["done", "cpu", "cpu"] and rows[finished][6:] == [best, ""]
    assert rows[failed][2:5] == ["failed", "cpu,cuda", "cuda:0"] and rows[failed][6:] == ["", "x" * 160]


def test_the_onnx_tabs_batch_sizes_start_small_without_a_gpu(tmp_path: Path) -> None:
    """1,4 on a CPU-only machine (an answer in seconds), 1,8 where a GPU takes jobs."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CPU, JobStore
    from ui.onnx_eval import BATCHES_CPU, BATCHES_GPU

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        for devices, batches in (((CPU,), BATCHES_CPU), (("cuda:0", CPU), BATCHES_GPU)):
            _, demo = _onnx_tab(settings, store, devices)
            (box,) = [
                b for b in demo.blocks.values() if getattr(b, "label", None) == "Batch sizes (when the batch is free)"
            ]
            assert box.value == batches, devices
    assert (BATCHES_CPU, BATCHES_GPU) == ("1,4", "1,8")


def test_the_providers_this_onnxruntime_lacks_are_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider the installed onnxruntime lacks is still listed, marked as missing; the others by their keys."""
    import onnxruntime

    from ui.onnx_eval import _provider_choices

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert _provider_choices() == [("cpu", "cpu"), ("cuda", "cuda"), ("trt (not in this onnxruntime)", "trt")]


def _queued_upload(settings: Any, store: Any, path: Path, request: Any) -> tuple[dict, str]:
    """The ONNX tab's handlers and the job its Queue button made of the uploaded model at `path` (CPU, batch 1, 2
    runs)."""
    from engine.jobs.store import CPU

    c = EvalConfig
    handlers, _ = _onnx_tab(settings, store, (CPU,))
    job = handlers["queue_job"](
        "Upload", None, str(path), ["cpu"], None, None, None, "1", 2, 0, 0, False, c.trt_workspace_gb, "", "",
        c.image_resize, c.image_scaling, c.image_channels, "", "", request,
    )[0]  # fmt: skip
    return handlers, job


def test_a_finished_evaluation_fills_each_pane_with_its_own_part(tmp_path: Path, model) -> None:
    """Open on a finished job: the summary, the results, the spread note beside the charts, parity, accuracy and the
    report file each land in their own pane (swapped, the parity table showed the accuracy rows under its header),
    and the model's inspection with them."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CPU, JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        handlers, job = _queued_upload(settings, store, model[0], request)
        assert store.claim_next(CPU).id == job
        path, info = model
        report = evaluate(path, info, EvalConfig(model=MODEL, providers=["cpu"], batch_sizes=[1], runs=2, warmup=0))
        report["results"][0]["latency"] = {"p50_ms": 1.0, "p95_ms": 5.0, "mean_ms": 2.0, "std_ms": 1.0}  # scattered
        report["parity"]["cuda"] = report["parity"]["cpu"]
        report["accuracy"] = {"topk": {"cpu": {"top1": 0.5, "top5": 0.75, "top5_k": 5, "n": 4, "output": "y"}}}
        report["inspection"] = {**{k: v for k, v in info.to_dict().items() if k != "path"}, "name": "mlp.onnx"}
        store.finish(job, report)
        _, _, summary, results, _, _, spread, parity, accuracy, report_file, described, io = handlers["poll"](
            job, request
        )
    raw = onnx_report.summary_markdown(report)  # the tab says the engine's flags by its fields' labels
    assert summary.splitlines()[0] == raw.splitlines()[0] and "--runs" in raw and "--runs" not in summary
    r = onnx_report
    tables = ((results, r.RESULT_HEADERS, r.result_rows(report)), (parity, r.PARITY_HEADERS, r.parity_rows(report)),
              (accuracy, r.ACCURACY_HEADERS, r.accuracy_rows(report)))  # fmt: skip
    for pane, headers, rows in tables:
        assert pane["value"] == widgets.table(headers, rows) and pane["visible"], headers
    assert spread == onnx_report.spread_markdown(report) and spread.startswith("- ⚠️ **cpu b1**")
    assert str(report_file).endswith(f"onnx-eval-{job}.json")
    assert json.loads(Path(report_file).read_text()) == json.loads(json.dumps(report))  # the full report, every column
    assert described.startswith("**mlp.onnx** · IR")  # a reopened job shows the inspection of the model it ran
    assert io == gr.update(value=r.io_rows(report["inspection"]), visible=True)


def test_a_waiting_evaluation_clears_the_last_results_but_keeps_the_inspection(tmp_path: Path, model) -> None:
    """While a job waits, an earlier job's results must not stand under its status; the inspection, which its own
    button filled, stays (each tick cleared it), also once the job failed, whose error names fields by their labels."""
    from engine.core.settings import load_settings
    from engine.jobs.store import FAILED, JobStore

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    request = SimpleNamespace(username=None, session_hash="s1", cookies={})
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        handlers, job = _queued_upload(settings, store, model[0], request)
        status, timer, *outputs = handlers["poll"](job, request)
        assert "**queued**" in status and timer.active
        assert outputs[:-2] == [None] * 8 and outputs[-2:] == [gr.update(), gr.update()]
        store.fail(job, "--runs 2 is too few", FAILED)  # the engine's words: the status line says the field's label
        status, timer, *outputs = handlers["poll"](job, request)
    assert "❌ “Timed runs” 2 is too few" in status and not timer.active
    assert outputs[-2:] == [gr.update(), gr.update()]


def test_choosing_upload_or_example_shows_its_own_field(tmp_path: Path) -> None:
    """The model radio shows the examples' list for "Built-in example" and the file box for "Upload", never both."""
    from engine.core.settings import load_settings
    from engine.jobs.store import CPU, JobStore
    from ui.onnx_eval import _EXAMPLE, _UPLOAD

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store:
        _, demo = _onnx_tab(settings, store, (CPU,))
    (switch,) = [f for f in demo.fns.values() if [type(o) for o in f.outputs] == [gr.Dropdown, gr.File]]
    assert switch.outputs[0].label == "Built-in example" and switch.outputs[1].label.startswith("ONNX model")
    for choice, shown in ((_EXAMPLE, (True, False)), (_UPLOAD, (False, True))):
        assert tuple(update["visible"] for update in switch.fn(choice)) == shown, choice
