"""ONNX evaluation reports as tables and charts: one report, or several side by side for comparison.

Pure functions from the report dict (engine.onnx.evaluate.evaluate's JSON) to rows and plotly figures,
so the live result, a reopened job and the compare view all render the same way. A latency whose runs are too
scattered to trust is flagged in its row, on its box and in the note beside the charts (spread_markdown).
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from engine.core.words import format_bytes
from engine.onnx.flops import flops_line
from engine.onnx.model import DEFAULTS_LISTED, type_name
from engine.onnx.timing import spread_warning
from ui.widgets import layout, log_axis, markdown_literal

RESULT_HEADERS = [
    "provider",
    "ran on",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ± std ms",
    "samples/s",
    "× CPU (p50)",
    "GFLOP/s",
    "first run ms",
    "TRT build s",
    "device-resident p50 ms",
    "GPU mem Δ MiB",
    "process GPU MiB",
    "host RSS Δ MiB",
    "note",
]
PARITY_HEADERS = [
    "provider", "output", "max abs", "max rel", "mean abs", "rel L2", "cosine", "tolerance to pass", "NaN/Inf",
]  # fmt: skip
ACCURACY_HEADERS = ["provider", "output", "MAE", "RMSE", "max error", "cosine", "top-1", "top-5"]
IO_HEADERS = ["kind", "name", "dtype", "shape"]
COMPARE_HEADERS = ["job", "model", "provider", "ran on", "batch", "p50 ms", "p99 ms", "samples/s", "× CPU (p50)"]
REFERENCE = "cpu"  # the provider whose fp32 outputs every other's are compared with (its own row: itself, all zeros)
_OLD_BATCH_NOTE = "dynamic batch: "  # stored inspections listed the (normal) free batch among their warnings


def _num(value: Any, digits: int = 3) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return round(float(value), digits)


def _significant(value: Any, digits: int = 3) -> Any:
    """A small ratio kept readable: 2.4e-07 stays that, not 0.0 at six decimals."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return float(f"{float(value):.{digits}g}")


def _rate(value: Any) -> Any:
    """A rate at one decimal where that keeps three figures, else at three significant ones: a tiny model's
    0.0042 GFLOP/s read 0.0."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or abs(value) >= 100:
        return _num(value, 1)
    return _significant(value)


def _mib(value: Any) -> Any:
    return "" if value is None else round(value / 2**20, 1)


def _label(row: dict) -> str:
    return f"{row['provider']} b{row['batch']}"


def _note(row: dict) -> str:
    if row.get("error"):
        return ("OOM: " if row.get("out_of_memory") else "") + str(row["error"])[:200]
    ran_on = str(row.get("ran_on") or "CPUExecutionProvider").removesuffix("ExecutionProvider")
    parts = [f"⚠️ fell back to {ran_on}"] if row.get("fell_back") else []  # TensorRT falls back to CUDA first
    if spread_warning(row.get("latency")):
        parts.append("⚠️ wide spread (see beside the charts)")
    return "; ".join(parts)


def spread_markdown(report: dict) -> str:
    """The configurations whose latency is too scattered to trust, with why: shown beside the charts."""
    lines = [
        f"- ⚠️ **{_label(r)}**: {why}" for r in report.get("results", []) if (why := spread_warning(r.get("latency")))
    ]
    return "\n".join(lines)


def result_rows(report: dict) -> list[list]:
    rows = []
    for r in report.get("results", []):
        lat, io, mem = r.get("latency") or {}, r.get("latency_iobinding") or {}, r.get("memory") or {}
        spread = f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f}" if lat else ""
        rows.append(
            [
                r["provider"],
                (r.get("ran_on") or "").replace("ExecutionProvider", ""),
                r["batch"],
                _num(lat.get("p50_ms")),
                _num(lat.get("p90_ms")),
                _num(lat.get("p99_ms")),
                spread,
                _num(r.get("samples_per_s"), 1),
                _num(r.get("speedup_vs_cpu"), 2),
                _rate(r.get("achieved_gflops")),
                _num(r.get("first_run_ms"), 1),
                _num(r.get("trt_build_s"), 2),
                _num(io.get("p50_ms")),
                _mib(mem.get("gpu_delta_bytes")),
                _mib(mem.get("gpu_process_bytes")),
                _mib(mem.get("host_rss_delta_bytes")),
                _note(r),
            ]
        )
    return rows


def parity_rows(report: dict) -> list[list]:
    """Each provider's outputs against the CPU's; not the CPU's own row (the reference against itself: zeros)."""
    rows, sessions = [], report.get("sessions") or {}
    for key, outputs in (report.get("parity") or {}).items():
        if key == REFERENCE:
            continue
        provider = f"{key} ⚠️ fell back" if sessions.get(key, {}).get("fell_back") else key
        if "error" in outputs and not isinstance(outputs["error"], dict):
            rows.append([provider, "", "", "", "", "", "", "", outputs["error"]])
            continue
        for name, p in outputs.items():
            if "exact_match" in p:  # not numbers (strings, maps): compared exactly
                rows.append([provider, name, "", "", "", "", "", "", "identical" if p["exact_match"] else "differs"])
                continue
            if p.get("missing") or p.get("shape_mismatch") or "max_abs" not in p:
                rows.append([provider, name, "", "", "", "", "", "", "missing / shape or type differs"])
                continue
            bad = f"{p['nan']['other']}/{p['inf']['other']} (ref {p['nan']['reference']}/{p['inf']['reference']})"
            rows.append(
                [
                    provider,
                    name,
                    _num(p["max_abs"], 6),
                    _num(p["max_rel"], 6),
                    _num(p["mean_abs"], 6),
                    _significant(p.get("rel_l2")),  # reports stored before it have none
                    _num(p["cosine"], 6),
                    _num(p["tolerance_to_pass"], 6),
                    bad,
                ]
            )
    return rows


def accuracy_rows(report: dict) -> list[list]:
    acc = report.get("accuracy") or {}
    rows = []
    for provider, outputs in (acc.get("expected") or {}).items():
        for name, m in outputs.items():
            if "error" in m:
                rows.append([provider, name, "", "", "", "", "", m["error"]])
            else:
                errors = [_num(m[k], 6) for k in ("mae", "rmse", "max_error", "cosine")]
                rows.append([provider, name, *errors, "", ""])
    for provider, t in (acc.get("topk") or {}).items():
        scored = t.get("output", "")  # reports from before the output was named lack it
        if "error" in t:
            rows.append([provider, f"{scored} top-k".strip(), "", "", "", "", "", t["error"]])
        else:  # fewer than 5 classes: the top-5 column holds top-k of them all, said so (one class: top-1 again)
            k = t.get("top5_k", 5)  # reports from before k was kept scored 5 or more classes
            wider = f" (top-5 column: top-{k}, {k} classes)" if 1 < k < 5 else " (one class)" if k == 1 else ""
            rows.append([provider, f"{scored} top-k over {t['n']} samples{wider}".strip(), "", "", "", "", t["top1"],
                         t["top5"] if k > 1 else ""])  # fmt: skip
    return rows


def io_rows(inspection: dict) -> list[list]:
    """Inputs, the first of the inputs with a default (an old exporter's model lists every weight), outputs."""
    rows = [["inputs", s["name"], type_name(s["dtype"]), str(s["shape"])] for s in inspection["inputs"]]
    defaults = inspection.get("overridable_inputs") or []  # reports from before they were listed have none
    kind = "input with a default"
    rows += [[kind, s["name"], type_name(s["dtype"]), str(s["shape"])] for s in defaults[:DEFAULTS_LISTED]]
    if len(defaults) > DEFAULTS_LISTED:
        rows.append([kind, f"… and {len(defaults) - DEFAULTS_LISTED} more", "", ""])
    return rows + [["outputs", s["name"], type_name(s["dtype"]), str(s["shape"])] for s in inspection["outputs"]]


def inspection_markdown(inspection: dict) -> str:
    symbols = inspection["symbols"]
    at = " at " + (", ".join(f"{name}={value}" for name, value in symbols.items()) or "its fixed shapes")
    ops = ", ".join(f"{op} ×{n}" for op, n in sorted(inspection["op_counts"].items(), key=lambda kv: -kv[1]))
    opsets, producer = str(inspection["opsets"]), inspection["producer"] or "unknown"  # the model's own text
    lines = [
        f"**{markdown_literal(inspection['name'])}** · IR {inspection['ir_version']} · opsets "
        f"{markdown_literal(opsets)} · producer {markdown_literal(producer)}",
        f"- {inspection['parameters']:,} parameters, {format_bytes(inspection['parameter_bytes'])} of weights; "
        f"file {format_bytes(inspection['size_bytes'])}; sha256 `{inspection['sha256'][:16]}…`",
        f"- {flops_line(inspection.get('flops'), inspection['flops_not_counted'], at)}",
        f"- ops: {ops}",
    ]
    if batch := inspection.get("batch_symbols"):  # reports stored before it have none
        lines.append(f"- batch: {', '.join(f'`{b}`' for b in batch)}, free (an evaluation runs each batch size "
                     "asked for)")  # fmt: skip
    # the warnings name the model's own functions, domains and inputs (a dynamo export's `pkg.__main__`)
    lines += [f"- ⚠️ {markdown_literal(w)}" for w in inspection.get("warnings", []) if not w.startswith(_OLD_BATCH_NOTE)]
    return "\n".join(lines)


def latency_figure(report: dict) -> go.Figure:
    """The distribution of timed runs per provider and batch size (box with all points)."""
    fig, flagged = go.Figure(), False
    for r in report.get("results", []):
        if r.get("times_ms"):
            wide = spread_warning(r.get("latency")) is not None
            flagged |= wide
            name = _label(r) + (" ⚠️" if wide else "")
            fig.add_trace(go.Box(y=r["times_ms"], name=name, boxpoints="all", jitter=0.4, pointpos=0, showlegend=False))
    title = "Latency per run" + (" (⚠️ spread too wide to trust)" if flagged else "")
    return layout(fig, title, "provider, batch", "ms")


def throughput_figure(reports: list[tuple[str, dict]]) -> go.Figure:
    """Samples/s against batch size, one line per provider (and per job when comparing)."""
    fig = go.Figure()
    batches = []
    for label, report in reports:
        by_provider: dict[str, list[tuple[int, float]]] = {}
        for r in report.get("results", []):
            if r.get("samples_per_s"):
                by_provider.setdefault(r["provider"], []).append((r["batch"], r["samples_per_s"]))
        for provider, points in by_provider.items():
            points.sort()
            name = f"{label} {provider}".strip()
            xs, ys = [b for b, _ in points], [t for _, t in points]
            batches += xs
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name))
    log_axis(fig, batches)
    fig.update_yaxes(rangemode="tozero")  # from 0: an axis starting near the lowest point exaggerates differences
    return layout(fig, "Throughput vs batch size", "batch size", "samples/s")


def compare_rows(jobs: list[tuple[str, str, dict]]) -> list[list]:
    """(job id, model name, report) triples as one table of their timed rows."""
    rows = []
    for job_id, model, report in jobs:
        for r in report.get("results", []):
            lat = r.get("latency") or {}
            rows.append(
                [
                    job_id,
                    model,
                    r["provider"],
                    (r.get("ran_on") or "").replace("ExecutionProvider", ""),
                    r["batch"],
                    _num(lat.get("p50_ms")),
                    _num(lat.get("p99_ms")),
                    _num(r.get("samples_per_s"), 1),
                    _num(r.get("speedup_vs_cpu"), 2),
                ]
            )
    return rows


def summary_markdown(report: dict) -> str:
    job = report.get("job", {})
    env = report.get("environment", {})
    sessions = report.get("sessions", {})
    got = ", ".join(
        f"{key} → {(session.get('got') or ['failed'])[0].replace('ExecutionProvider', '')}"
        for key, session in sessions.items()
    )
    name = markdown_literal(job.get("model_name", "model"))  # the uploaded file's name
    lines = [
        f"**{name}** · job `{job.get('id', '?')}` on `{job.get('device', '?')}` · "
        f"onnxruntime {env.get('onnxruntime', '?')} · symbols {report.get('symbols')} · sessions: {got}",
    ]
    beside_the_charts = {
        f"{r['provider']} at batch {r['batch']}: {r.get('spread_warning')}" for r in report.get("results", [])
    }
    lines += [f"- ℹ️ {markdown_literal(n)}" for n in report.get("notes", [])]
    if list(report.get("parity") or {}) == [REFERENCE]:  # the parity table stays hidden: say why
        lines.append("- ℹ️ parity: only the CPU ran, and its outputs are the reference: nothing to compare them with "
                     "(choose cuda or trt too)")  # fmt: skip
    lines += [f"- ⚠️ {markdown_literal(w)}" for w in report.get("warnings", []) if w not in beside_the_charts]
    return "\n".join(lines)
