"""Benchmark reports as tables and charts: one sweep, or several from different runs and machines."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from ui.widgets import layout

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


def _mib(value: Any) -> Any:
    return "" if value is None else round(value / 2**20)


def _note(row: dict) -> str:
    parts = []
    if row.get("error"):
        parts.append(row["error"][:200])
    if row.get("fell_back"):
        parts.append("⚠️ fell back to the CPU")
    parts += row.get("warnings", [])
    return "; ".join(parts)


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
                _num(r.get("achieved_tflops"), 3),
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
    cost = f"{flops / 1e9:.2f} GFLOP per sample" if flops else "FLOPs unknown"
    lines = [
        f"**{model.get('title', model.get('name'))}** on {where} · torch {machine.get('torch')} · onnxruntime "
        f"{machine.get('onnxruntime')} · {cost}",
    ]
    if job:
        lines[0] += f" · job `{job['id']}`" + (" (imported)" if job.get("imported") else "")
    lines += [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def speedup_figure(report: dict) -> go.Figure:
    rows = [r for r in report.get("results", []) if r.get("speedup")]
    fig = go.Figure(
        go.Bar(
            x=[r["speedup"] for r in rows],
            y=[r["label"] for r in rows],
            orientation="h",
            marker_color=["#d62728" if r.get("fell_back") else "#76b900" for r in rows],
            text=[f"{r['speedup']:.2f}×" for r in rows],
            textposition="auto",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return layout(fig, "Speed-up against the baseline (first configuration)", "× baseline throughput", "")


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
    fig.update_xaxes(type="log")
    return layout(fig, "Throughput vs batch size", "batch size", "samples/s")


def latency_memory_figure(report: dict) -> go.Figure:
    rows = [r for r in report.get("results", []) if r.get("latency")]
    memory = [
        (r.get("peak_allocated_bytes") or r.get("device_used_bytes") or r.get("host_rss_bytes") or 0) / 2**20
        for r in rows
    ]
    fig = go.Figure(
        go.Scatter(
            x=memory,
            y=[r["latency"]["p50_ms"] for r in rows],
            mode="markers+text",
            text=[r["label"] for r in rows],
            textposition="top center",
            marker={"size": 9, "color": "#1f77b4"},
        )
    )
    label = "peak memory MiB (GPU allocator, else device, else host RSS)"
    return layout(fig, "Latency vs memory", label, "p50 latency per batch, ms")


def telemetry_figure(report: dict) -> go.Figure:
    """GPU utilisation and power (or host CPU without a GPU) during each configuration's timed runs."""
    fig = go.Figure()
    offset = 0.0
    for r in report.get("results", []):
        samples = r.get("telemetry") or []
        if not samples:
            continue
        t = [offset + s[0] for s in samples]
        has_gpu = any(s[1] is not None for s in samples)
        y = [s[1] if has_gpu else s[4] for s in samples]
        fig.add_trace(go.Scatter(x=t, y=y, mode="lines+markers", name=f"{r['label']} {'GPU' if has_gpu else 'CPU'} %"))
        if any(s[3] is not None for s in samples):
            fig.add_trace(go.Scatter(x=t, y=[s[3] for s in samples], mode="lines", name=f"{r['label']} W", yaxis="y2"))
        offset = t[-1] + 1.0
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "W"})
    return layout(fig, "Telemetry during the timed runs", "seconds (configurations back to back)", "utilisation %")


def compare_rows(jobs: list[tuple[str, str, dict]]) -> list[list]:
    rows = []
    for job_id, machine, report in jobs:
        model = report.get("model", {}).get("name", "")
        for r in report.get("results", []):
            lat = r.get("latency") or {}
            rows.append(
                [job_id, machine, model, r["label"], r["status"], _num(lat.get("p50_ms")),
                 _num(r.get("samples_per_s"), 1), _num(r.get("speedup"), 2), _num(r.get("achieved_tflops"), 3)]
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
            r["price_per_hour"],
            _num(r["samples_per_s"], 1),
            _num(r["cost_per_1000_requests"], 5),
            "" if r["requests_per_10_usd"] is None else f"{r['requests_per_10_usd']:,.0f}",
            r["basis"],
            r["price_source"],
        ]
        for r in rows
    ]
