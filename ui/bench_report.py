"""Benchmark reports as tables and charts: one sweep, or several from different runs and machines. A latency whose
runs are too scattered to trust is flagged in its row, on its point and in the note beside the charts."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from engine.bench.planner import CPU_ROW
from engine.onnx.flops import format_flops
from engine.onnx.timing import spread_warning
from ui.widgets import layout, log_axis, markdown_literal

RESULT_HEADERS = [
    "configuration",
    "status",
    "ran on",
    "p50 ms",
    "p95 ms",
    "mean ± std ms",
    "samples/s",
    "× baseline",
    "TFLOP/s",
    "% of peak",
    "peak alloc MiB",
    "device used MiB",
    "rel. error vs fp32",
    "J/sample",
    "load s",
    "first run s",
    "note",
]
COMPARE_HEADERS = ["job", "machine", "model", "configuration", "status", "p50 ms", "samples/s", "× baseline", "TFLOP/s"]
COST_HEADERS = ["GPU", "$/hour", "samples/s", "$ per 1000 requests", "requests per $10", "basis", "price source"]


def _num(value: Any, digits: int = 3) -> Any:
    return "" if value is None else round(float(value), digits)


def _tflops(value: Any) -> Any:
    """TFLOP/s at three decimals, or three significant figures below 0.1: a tiny model on a CPU read 0.0."""
    if value is None or abs(value) >= 0.1:
        return _num(value, 3)
    return float(f"{float(value):.3g}")


def _mib(value: Any) -> Any:
    return "" if value is None else round(value / 2**20)


def _note(row: dict) -> str:
    parts = []
    if row.get("error"):
        parts.append(row["error"][:200])
    if row.get("fell_back"):  # TensorRT falls back to CUDA first: name what it ran on
        ran_on = str(row.get("ran_on") or "CPUExecutionProvider").removesuffix("ExecutionProvider")
        parts.append(f"⚠️ fell back to {'the CPU' if ran_on == 'CPU' else ran_on}")
    wide = spread_warning(row.get("latency"))
    parts += [w for w in row.get("warnings", []) if w != wide]  # the full reason is beside the charts
    if wide:
        parts.append("⚠️ wide spread (see beside the charts)")
    return "; ".join(parts)


def spread_markdown(report: dict) -> str:
    """The configurations whose latency is too scattered to trust, with why: shown beside the charts."""
    rows = report.get("results", [])
    return "\n".join(f"- ⚠️ **{r['label']}**: {why}" for r in rows if (why := spread_warning(r.get("latency"))))


def result_rows(report: dict) -> list[list]:
    rows = []
    for r in report.get("results", []):
        lat = r.get("latency") or {}
        err = (r.get("error_vs_fp32") or {}).get("rel_l2")
        rows.append(
            [
                r["label"],
                r["status"],
                (r.get("ran_on") or "").replace("ExecutionProvider", ""),
                _num(lat.get("p50_ms")),
                _num(lat.get("p95_ms")),
                f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f}" if lat else "",
                _num(r.get("samples_per_s"), 1),
                _num(r.get("speedup"), 2),
                _tflops(r.get("achieved_tflops")),
                _num(r.get("percent_of_peak"), 1),
                _mib(r.get("peak_allocated_bytes")),
                _mib(r.get("device_used_bytes")),
                "" if err is None else f"{err:.2e}",
                _num(r.get("energy_j_per_sample"), 4),
                _num(r.get("load_s"), 2),
                _num(r.get("first_run_s"), 2),
                _note(r),
            ]
        )
    return rows


def summary_markdown(report: dict, job: dict | None = None) -> str:
    model, machine = report.get("model", {}), report.get("machine", {})
    gpu = machine.get("gpu") or {}
    where = gpu.get("name") or f"CPU ({machine.get('cpu_count')} cores)"
    flops = model.get("flops_per_sample")
    cost = f"{format_flops(flops)} per sample" if flops else "FLOPs unknown"  # a tiny model read 0.00 GFLOP
    title = markdown_literal(str(model.get("title", model.get("name"))))  # an imported report's text is anyone's
    lines = [
        f"**{title}** on {markdown_literal(where)} · torch {markdown_literal(str(machine.get('torch')))} · "
        f"onnxruntime {markdown_literal(str(machine.get('onnxruntime')))} · {cost}",
    ]
    if job:
        lines[0] += f" · job `{job['id']}`" + (" (imported)" if job.get("imported") else "")
    lines += [f"- {markdown_literal(n)}" for n in report.get("notes", [])]
    return "\n".join(lines)


def speedup_figure(report: dict) -> go.Figure:
    """Throughput against the baseline configuration's; a log axis (1-2-5 ticks) when they differ by more than 20x."""
    rows = [r for r in report.get("results", []) if r.get("speedup")]
    short, common = _short_labels([r["label"] for r in rows]) if rows else ([], "")
    fig = go.Figure(
        go.Bar(
            x=[r["speedup"] for r in rows],
            y=short,
            orientation="h",
            marker_color=["#d62728" if r.get("fell_back") else "#76b900" for r in rows],
            text=[f"{r['speedup']:.2f}×" for r in rows],
            textposition="auto",
            customdata=[r["label"] for r in rows],
            hovertemplate="%{customdata}: %{x:.2f}× the baseline<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    speedups = [r["speedup"] for r in rows]
    if speedups and max(speedups) / min(speedups) > 20:
        log_axis(fig, speedups, at_values=False)
    baseline = (report.get("config") or {}).get("baseline", 0)
    results = report.get("results", [])
    against = results[baseline]["label"] if baseline < len(results) else "the baseline"
    title = f"Speed-up against {against}" + (f" (every bar: {common})" if common else "")
    return layout(fig, title, "× baseline throughput", "")


def throughput_figure(report: dict) -> go.Figure:
    """Samples/s against batch size, one line per device, runtime and precision."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in report.get("results", []):
        if r.get("samples_per_s"):
            key = f"{r['device']} {r['runtime']} {r['precision']}" + (" cl" if r.get("channels_last") else "")
            series.setdefault(key, []).append((r["batch"], r["samples_per_s"]))
    fig = go.Figure()
    for key, points in series.items():
        points.sort()
        fig.add_trace(go.Scatter(x=[b for b, _ in points], y=[t for _, t in points], mode="lines+markers", name=key))
    log_axis(fig, [b for points in series.values() for b, _ in points])
    fig.update_yaxes(rangemode="tozero")  # from 0: an axis starting at 7 made small differences look large
    return layout(fig, "Throughput vs batch size", "batch size", "samples/s")


_MEMORY_SOURCES = (("peak_allocated_bytes", "GPU allocator peak"), ("device_used_bytes", "device memory used"),
                   ("host_rss_bytes", "process RSS peak"))  # fmt: skip


def _memory(row: dict) -> tuple[float, str]:
    """A point's memory in MiB and what measured it: the allocator's peak, else the device's, else the host's."""
    for key, what in _MEMORY_SOURCES:
        if row.get(key):
            return row[key] / 2**20, what
    return 0.0, "not measured"


def _padded(values: list[float], fraction: float = 0.15) -> list[float]:
    """An axis range with room around the points, so the labels beside the outermost ones stay inside."""
    low, high = min(values), max(values)
    pad = (high - low) * fraction or abs(high) * fraction or 1.0
    return [low - pad, high + pad]


def _short_labels(labels: list[str]) -> tuple[list[str], str]:
    """The words every label shares (e.g. "cpu eager fp32") said once, and what tells the points apart."""
    words = [label.split(" ") for label in labels]
    common = [w for w in words[0] if all(w in other for other in words[1:])] if len(words) > 1 else []
    short = [" ".join(w for w in each if w not in common) or label for each, label in zip(words, labels, strict=True)]
    return short, " ".join(common)


def _beside(x: list[float]) -> list[str]:
    """Label positions that stay inside the plot: points on the right get their label on their left and the other
    way round; neighbours (by memory) alternate above and below."""
    middle = (min(x) + max(x)) / 2
    order = sorted(range(len(x)), key=lambda i: x[i])
    rank = {i: n for n, i in enumerate(order)}
    return [f"{'top' if rank[i] % 2 == 0 else 'bottom'} {'left' if x[i] > middle else 'right'}" for i in range(len(x))]


def latency_memory_figure(report: dict) -> go.Figure:
    """p50 latency against peak memory, one labelled point per configuration (⚠️: spread too wide to trust)."""
    rows = [r for r in report.get("results", []) if r.get("latency")]
    fig = go.Figure()
    if not rows:
        return layout(fig, "Latency vs memory", "peak memory, MiB", "p50 latency per batch, ms")
    memory = [_memory(r) for r in rows]
    x, latency = [m for m, _ in memory], [r["latency"]["p50_ms"] for r in rows]
    wide = [spread_warning(r["latency"]) is not None for r in rows]
    short, common = _short_labels([r["label"] for r in rows])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=latency,
            mode="markers+text",
            text=[label + (" ⚠️" if w else "") for label, w in zip(short, wide, strict=True)],
            textposition=_beside(x),
            cliponaxis=False,  # a label near the edge runs into the margin instead of being cut
            customdata=[[r["label"], what] for r, (_, what) in zip(rows, memory, strict=True)],
            hovertemplate="%{customdata[0]}<br>%{x:.0f} MiB (%{customdata[1]})<br>p50 %{y:.3g} ms<extra></extra>",
            marker={"size": 9, "color": ["#ff7f0e" if w else "#1f77b4" for w in wide]},
            showlegend=False,
        )
    )
    fig.update_xaxes(range=_padded(x))
    fig.update_yaxes(range=_padded(latency, 0.25))
    sources = ", ".join(sorted({what for _, what in memory}))
    title = "Latency vs memory" + (f": {common}" if common else "") + (" (⚠️ spread too wide)" if any(wide) else "")
    return layout(fig, title, f"peak memory, MiB ({sources})", "p50 latency per batch, ms")


def telemetry_figure(report: dict) -> go.Figure:
    """GPU utilisation and power (host CPU where a configuration ran without a GPU) during each configuration's timed
    runs, back to back: one line per measure (the hover names the configuration), broken between configurations."""
    series: dict[str, tuple[list, list, list]] = {}  # name -> x, y, configuration

    def add(name: str, t: list[float], values: list, label: str) -> None:
        xs, ys, labels = series.setdefault(name, ([], [], []))
        if xs:
            xs.append(None), ys.append(None), labels.append(None)  # no line across configurations
        xs.extend(t), ys.extend(values), labels.extend([label] * len(t))

    offset = 0.0
    for r in report.get("results", []):
        samples = r.get("telemetry") or []
        if not samples:
            continue
        t = [offset + s[0] for s in samples]
        if any(s[1] is not None for s in samples):
            add("GPU utilisation %", t, [s[1] for s in samples], r["label"])
        else:
            add("host CPU %", t, [s[4] for s in samples], r["label"])
        if any(s[3] is not None for s in samples):
            add("GPU power W", t, [s[3] for s in samples], r["label"])
        offset = t[-1] + 1.0
    fig = go.Figure()
    for name, (xs, ys, labels) in series.items():
        watts = name.endswith(" W")
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, customdata=labels, mode="lines+markers", name=name, yaxis="y2" if watts else "y",
                hovertemplate=f"%{{customdata}}<br>%{{y:.0f}} {'W' if watts else '%'}<extra></extra>",
            )
        )  # fmt: skip
    if "GPU power W" in series:  # no second axis where nothing reports power (a CPU)
        fig.update_layout(
            yaxis2={"overlaying": "y", "side": "right", "title": "W", "automargin": True, "rangemode": "tozero"}
        )
    fig.update_yaxes(range=[0, 105])
    return layout(fig, "Telemetry during the timed runs", "seconds (configurations back to back)", "utilisation %")


def compare_rows(jobs: list[tuple[str, str, dict]]) -> list[list]:
    rows = []
    for job_id, machine, report in jobs:
        model = report.get("model", {}).get("name", "")
        for r in report.get("results", []):
            lat = r.get("latency") or {}
            rows.append(
                [job_id, machine, model, r["label"], r["status"], _num(lat.get("p50_ms")),
                 _num(r.get("samples_per_s"), 1), _num(r.get("speedup"), 2), _tflops(r.get("achieved_tflops"))]
            )  # fmt: skip
    return rows


def compare_figure(jobs: list[tuple[str, str, dict]]) -> go.Figure:
    fig = go.Figure()
    for job_id, machine, report in jobs:
        rows = [r for r in report.get("results", []) if r.get("samples_per_s")]
        fig.add_trace(
            go.Bar(name=f"{job_id} {machine}", x=[r["label"] for r in rows], y=[r["samples_per_s"] for r in rows])
        )
    fig.update_layout(barmode="group")
    return layout(fig, "Throughput by configuration, per run", "", "samples/s")


def cost_rows(rows: list[dict]) -> list[list]:
    return [
        [
            r["gpu"],
            "" if r["price_per_hour"] is None else r["price_per_hour"],
            _num(r["samples_per_s"], 1),
            "" if r["cost_per_1000_requests"] is None else f"{r['cost_per_1000_requests']:.4g}",
            "" if r["requests_per_10_usd"] is None else f"{r['requests_per_10_usd']:,.0f}",
            r["basis"],
            r["price_source"],
        ]
        for r in rows
    ]


def cost_notes_markdown(rows: list[dict], unpriced: list[str], on_cpu: bool) -> str:
    """What a cost table leaves out, and how to get it: the CPU machine without a price (its row missing, every card
    "not estimated"), and the cards left out for want of a price."""
    lines = []
    if on_cpu and not any(r["gpu"] == CPU_ROW for r in rows):
        lines.append(
            "- ℹ️ Measured on the CPU: give the CPU machine's **$/hour** above to price it. The GPU cards are not "
            "estimated from a CPU measurement: a sweep on a GPU estimates them."
        )
    if unpriced:
        lines.append(
            f"- ℹ️ Left out, with no price: {', '.join(unpriced)}. Type their $/hour in the price table above and "
            "press **Save prices** to include them."
        )
    return "\n".join(lines)
