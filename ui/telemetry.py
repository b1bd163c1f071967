"""Live telemetry above every tab: a compact strip (one line per GPU and one for the host, with sparklines of the
last minute) that expands into the full panel (a table of every counter and history plots).

Cheap by design, because every open page pays for it (at most 10 KiB/s, tests/test_browser_layout.py measures it):
the strip is a few hundred bytes of HTML a line, sent once a second; the full panel's table and plots are sent only
while it is open, every few seconds, with the history averaged down to PLOT_POINTS points and no plotly template;
with many GPUs both refresh less often (RefreshPeriods). gr.Timer only ticks while the page is visible
(document.visibilityState), so a hidden browser tab costs nothing. It reads the process's one sampler
(engine.system.telemetry) and never runs GPU work, so its ticks bypass the queue (`queue=False`): a busy GPU queue
never freezes the gauges.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import gradio as gr
import plotly.graph_objects as go

from engine.system.telemetry import GpuSample, Snapshot, TelemetrySampler, WorkerActivity, series, throttle_text

if TYPE_CHECKING:
    from engine.jobs.zerogpu import ZeroGpuPanel

STRIP_PERIOD_S = 1.0  # the strip never refreshes faster than this, whatever the sampling interval
PANEL_PERIOD_S = 5.0  # the full panel's table and plots, while it is open (longer with many GPUs)
STRIP_BUDGET_BYTES_S = 4 * 1024  # the strip's share of the 10 KiB/s a page may cost
PANEL_BUDGET_BYTES_S = 5 * 1024  # the open panel's share (the rest: HTTP headers)
SPARK_WINDOW_S = 60.0
SPARK_POINTS = 31  # 2 px apart
SPARK_WIDTH, SPARK_HEIGHT = 60, 16
PLOT_POINTS = 120
PLOT_HEIGHT = 230
_COLORS = ("#76b900", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b")
_TOGGLE_LABELS = {False: "Details ▾", True: "Hide details ▴"}


def _pct(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.0f}%"


def _gib(value: int | float | None) -> str:
    return "N/A" if value is None else f"{value / 2**30:.1f}"


def averaged(values: Sequence[float | None], points: int) -> list[float | None]:
    """At most `points` values: the mean of each run of consecutive samples (None where a run has no value, so a
    counter NVML did not give stays a gap rather than a false zero)."""
    n = len(values)
    if n <= points:
        return list(values)
    out: list[float | None] = []
    for i in range(points):
        run = [v for v in values[i * n // points : (i + 1) * n // points] if v is not None]
        out.append(sum(run) / len(run) if run else None)
    return out


def sparkline(values: Sequence[float | None], top: float) -> str:
    """An inline SVG line of the values on 0..top, newest at the right edge, None as a gap. Whole pixels and
    relative steps ("M0 9l2-3 2 1") keep it to about 4 bytes a point: the strip is sent every second."""
    values = averaged(values, SPARK_POINTS)
    step = SPARK_WIDTH // (SPARK_POINTS - 1)
    segments: list[list[tuple[int, int]]] = [[]]
    for i, value in enumerate(values):
        if value is None or top <= 0:
            segments.append([])
            continue
        y = round(1 + (SPARK_HEIGHT - 2) * (1 - min(max(value / top, 0.0), 1.0)))
        segments[-1].append((SPARK_WIDTH - (len(values) - 1 - i) * step, y))
    path = []
    for points in filter(None, segments):
        (x, y), steps = points[0], []
        for (_, y0), (_, y1) in itertools.pairwise(points):
            steps.append(f"{step}{y1 - y0}" if y1 < y0 else f"{step} {y1 - y0}")
        path.append(f"M{x} {y}" + ("l" + " ".join(steps) if steps else "h0"))
    return f"<svg class='ab-spark' viewBox='0 0 {SPARK_WIDTH} {SPARK_HEIGHT}'><path d='{''.join(path)}'/></svg>"


def _metric(text: str, history: list[float | None], top: float) -> str:
    """One figure of a strip line: its value now, then its sparkline over the recent samples."""
    return f"<span class='ab-metric'>{html.escape(text)}{sparkline(history, top)}</span>"


def _line(head: str, title: str, parts: list[str]) -> str:
    return f"<div class='ab-strip-line' title='{html.escape(title)}'>{head}{''.join(parts)}</div>"


def _gpu_history(snaps: list[Snapshot], index: int, get: Callable[[GpuSample], float | None]) -> list[float | None]:
    return [next((get(g) for g in s.gpus if g.index == index), None) for s in snaps]


def _jobs_text(workers: list[WorkerActivity]) -> str:
    """What a device's workers run: "lipsync 40% · idle" (one entry per worker)."""
    return " · ".join(w.doing for w in workers)


def _gpu_line(gpu: GpuSample, recent: list[Snapshot], workers: list[WorkerActivity]) -> str:
    head = f"<b>GPU {gpu.index}</b><span class='ab-dim ab-gpu-name'>{html.escape(gpu.name)}</span>"
    if gpu.error is not None:  # one plain reason, not a row of N/A
        return _line(head, f"GPU {gpu.index}: NVML cannot read it", [f"<span>⚠️ {html.escape(gpu.error)}</span>"])
    used = "N/A" if gpu.memory_used_bytes is None else _gib(gpu.memory_used_bytes)
    parts = [
        _metric(
            f"util {_pct(gpu.util_gpu_percent)}", _gpu_history(recent, gpu.index, lambda g: g.util_gpu_percent), 100
        ),
        _metric(
            f"mem {used}/{_gib(gpu.memory_total_bytes)} GiB",
            _gpu_history(recent, gpu.index, lambda g: g.memory_percent),
            100,
        ),
    ]
    if gpu.power_w is not None:
        power = _gpu_history(recent, gpu.index, lambda g: g.power_w)
        cap = f"/{gpu.power_limit_w:.0f}" if gpu.power_limit_w else ""
        top = gpu.power_limit_w or max((v for v in power if v), default=1.0)
        parts.append(_metric(f"{gpu.power_w:.0f}{cap} W", power, top))
    if gpu.temperature_c is not None:
        parts.append(f"<span>{gpu.temperature_c:.0f} °C</span>")
    if gpu.performance_state:
        parts.append(f"<span>{html.escape(gpu.performance_state)}</span>")
    throttling = [r for r in gpu.throttle_reasons or () if r != "idle"]
    if throttling:
        parts.append(f"<span>⚠️ throttled: {html.escape(throttle_text(throttling))}</span>")
    if workers:
        parts.append(f"<span class='ab-jobs' title='its job workers'>jobs: {html.escape(_jobs_text(workers))}</span>")
    title = f"GPU {gpu.index}: utilisation, memory used and power; the lines show the last {SPARK_WINDOW_S:.0f} s"
    return _line(head, title, parts)


def _host_line(snap: Snapshot, recent: list[Snapshot], interval_s: float) -> str:
    h = snap.host
    parts = [
        _metric(f"CPU {h.cpu_percent:.0f}% of {h.cpu_count}", [s.host.cpu_percent for s in recent], 100),
        _metric(
            f"RAM {_gib(h.ram_used_bytes)}/{_gib(h.ram_total_bytes)} GiB",
            [100 * s.host.ram_used_bytes / s.host.ram_total_bytes for s in recent],
            100,
        ),
        f"<span>app {h.process_rss_bytes / 2**20:.0f} MiB</span>",
        *elsewhere(snap),
        f"<span id='telemetry-timestamp' class='ab-dim'>Updated {datetime.fromtimestamp(snap.timestamp):%H:%M:%S}"
        f" · every {interval_s:g} s</span>",
    ]
    no_gpu = f"<span class='ab-dim' title='{html.escape(snap.gpu_status)}'>no NVIDIA GPU visible</span>"
    head = "<b>Host</b>" + ("" if snap.gpus else no_gpu)
    title = f"Host CPU and RAM, and this app's resident memory; the lines show the last {SPARK_WINDOW_S:.0f} s"
    return _line(head, title, parts)


def elsewhere(snap: Snapshot) -> list[str]:
    """The workers not on a local GPU (the CPU's, Ray actors'), each device with its jobs."""
    devices: dict[str, list[WorkerActivity]] = {}
    for w in snap.workers:
        if w.gpu_index is None or w.gpu_index not in {g.index for g in snap.gpus}:
            devices.setdefault(w.device, []).append(w)
    return [
        f"<span class='ab-jobs'>{html.escape(d)}: {html.escape(_jobs_text(ws))}</span>" for d, ws in devices.items()
    ]


def strip_html(snap: Snapshot, recent: list[Snapshot], interval_s: float) -> str:
    """The compact strip: one line per GPU, then the host (with the time of the newest sample)."""
    lines = [_gpu_line(g, recent, snap.workers_on(g.index)) for g in snap.gpus]
    lines.append(_host_line(snap, recent, interval_s))
    return f"<div class='ab-strip'>{''.join(lines)}</div>"


def current_values_html(snap: Snapshot) -> str:
    """The full panel's table of the newest sample: one row per GPU, then the host."""
    rows = []
    for g in snap.gpus:
        if g.error is not None:
            device, reason = html.escape(f"GPU {g.index}: {g.name}"), html.escape(g.error)
            rows.append(f"<tr><td>{device}</td><td colspan='9'>⚠️ {reason}</td></tr>")
            continue
        mem = "N/A"
        if g.memory_used_bytes is not None and g.memory_total_bytes:
            mem = f"{g.memory_used_bytes / 2**30:.1f} / {g.memory_total_bytes / 2**30:.1f} GiB"
        power = "N/A" if g.power_w is None else f"{g.power_w:.0f} W"
        if g.power_limit_w is not None:
            power += f" / {g.power_limit_w:.0f} W"
        clocks = "N/A" if g.sm_clock_mhz is None else f"{g.sm_clock_mhz} / {g.memory_clock_mhz or 'N/A'} MHz"
        temp = "N/A" if g.temperature_c is None else f"{g.temperature_c} °C"
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(c))}</td>"
                for c in (
                    f"GPU {g.index}: {g.name}",
                    _pct(g.util_gpu_percent),
                    mem,
                    temp,
                    power,
                    clocks,
                    f"{_pct(g.encoder_percent)} / {_pct(g.decoder_percent)}",
                    g.performance_state or "N/A",
                    throttle_text(g.throttle_reasons),
                    _jobs_text(snap.workers_on(g.index)) or "no workers",
                )
            )
            + "</tr>"
        )
    columns = ("Device", "Util", "Memory", "Temp", "Power", "SM / mem clock", "Enc / dec", "Perf", "Throttle", "Jobs")
    head = "".join(f"<th>{h}</th>" for h in columns)
    h = snap.host
    host = (
        f"Host CPU {h.cpu_percent:.0f}% of {h.cpu_count} cores · RAM {h.ram_used_bytes / 2**30:.1f} / "
        f"{h.ram_total_bytes / 2**30:.1f} GiB · this process {h.process_rss_bytes / 2**20:.0f} MiB RSS, "
        f"{h.process_cpu_percent:.0f}% CPU"
    )
    gpu_part = (
        f"<div class='ab-scroll'><table class='ab-telemetry'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        if snap.gpus
        else f"<p class='ab-no-gpu'>⚠️ {html.escape(snap.gpu_status)}: host telemetry only.</p>"
    )
    others = "".join(f" · {part}" for part in elsewhere(snap))
    return f"{gpu_part}<p>{html.escape(host)}{others} · updated {snap.time_text}</p>"


def _x_axis(ages: list[float], interval_s: float) -> dict[str, Any]:
    """The plots' x values: as a start and a step where the points are evenly spaced (the usual case: half the
    bytes of a figure), the list itself where the sampler fell behind and left a gap."""
    if len(ages) < 3:
        return {"x": ages}
    step = (ages[-1] - ages[0]) / (len(ages) - 1)
    if all(abs(b - a - step) <= max(interval_s, 0.25 * step) for a, b in itertools.pairwise(ages)):
        return {"x0": ages[0], "dx": round(step, 3)}
    return {"x": ages}


def _figure(title: str, unit: str, traces: list[tuple[str, list]], x: dict[str, Any], y_max: float | None) -> go.Figure:
    fig = go.Figure()
    for i, (name, values) in enumerate(traces):
        fig.add_trace(
            go.Scatter(
                **x,
                y=[None if v is None else round(v, 1 if unit != "GiB" else 2) for v in values],
                name=name,
                mode="lines",
                line={"color": _COLORS[i % len(_COLORS)], "width": 2},
                connectgaps=False,
            )
        )
    grid = {"gridcolor": "#e5e7eb", "zeroline": False}
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=PLOT_HEIGHT,
        margin={"l": 45, "r": 10, "t": 30, "b": 30},
        xaxis={**grid, "title": {"text": "seconds ago", "standoff": 2}, "ticksuffix": " s"},
        yaxis={**grid, "title": unit, "rangemode": "tozero", **({"range": [0, y_max]} if y_max else {})},
        legend={"orientation": "h", "y": -0.3},
        showlegend=True,
        template="none",  # plotly_white alone is 6.5 KB of JSON a figure, sent with every refresh
        plot_bgcolor="#fff",
        paper_bgcolor="rgba(0,0,0,0)",
    )
    return fig


def has_power_readings(snap: Snapshot) -> bool:
    return any(g.power_w is not None for g in snap.gpus)


def history_figures(snaps: list[Snapshot], interval_s: float, with_power: bool = True) -> list[go.Figure]:
    """Utilisation, memory and (where a GPU reports it) power over the kept history, averaged down to PLOT_POINTS
    points, against seconds before the newest sample."""
    cols = {k: averaged(v, PLOT_POINTS) for k, v in series(snaps).items() if k != "time"}
    newest = snaps[-1].timestamp if snaps else 0.0
    x = _x_axis([round(t - newest, 1) for t in averaged([s.timestamp for s in snaps], PLOT_POINTS)], interval_s)
    gpu_ids = sorted({k.split(".")[0] for k in cols if k.startswith("gpu")})
    util = [(f"{g} util", cols[f"{g}.util_percent"]) for g in gpu_ids]
    util += [(f"{g} mem-bus", cols[f"{g}.memory_util_percent"]) for g in gpu_ids]
    util.append(("host CPU", cols["host.cpu_percent"]))
    memory = [(f"{g} used", cols[f"{g}.memory_gib"]) for g in gpu_ids]
    memory += [("host RAM", cols["host.ram_gib"]), ("this process", cols["host.rss_gib"])]
    figures = [_figure("Utilisation", "%", util, x, 100), _figure("Memory", "GiB", memory, x, None)]
    if with_power:
        power = [(f"{g} power", cols[f"{g}.power_w"]) for g in gpu_ids]
        figures.append(_figure("GPU power", "W", power, x, None))
    return figures


@dataclass(frozen=True)
class RefreshPeriods:
    """Seconds between refreshes of the strip and of the open panel: STRIP_PERIOD_S and PANEL_PERIOD_S (never
    faster than the sampler), or longer where many GPUs would make either cost more than its share of the
    10 KiB/s a page may spend (estimated from the sizes the strip and the plots take a GPU)."""

    strip_s: float
    panel_s: float

    @classmethod
    def for_machine(cls, gpus: int, with_power: bool, interval_s: float) -> RefreshPeriods:
        strip_bytes = 500 + 1000 * gpus
        lines = (2 * gpus + 1) + (gpus + 2) + (gpus if with_power else 0)
        panel_bytes = lines * (PLOT_POINTS * 6 + 150) + 3 * 1200 + 250 * gpus  # values, trace and figure overheads
        return cls(
            _half_seconds(max(STRIP_PERIOD_S, interval_s, strip_bytes / STRIP_BUDGET_BYTES_S)),
            _half_seconds(max(PANEL_PERIOD_S, interval_s, panel_bytes / PANEL_BUDGET_BYTES_S)),
        )


def _half_seconds(seconds: float) -> float:
    return math.ceil(seconds * 2) / 2


def zerogpu_html(panel: ZeroGpuPanel) -> str:
    """On ZeroGPU: why the live view shows no GPU, and the readings the latest jobs took inside their GPU functions."""
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in (
                job["kind"],
                datetime.fromtimestamp(job["finished"]).strftime("%H:%M:%S") if job.get("finished") else "N/A",
                f"{job['ran_s']:.1f} of {job['asked_s']} s" if job.get("ran_s") is not None else "N/A",
                job.get("samples") or 0,
                "N/A" if job.get("peak_device_used_bytes") is None else _gib(job["peak_device_used_bytes"]) + " GiB",
                "N/A" if job.get("energy_j") is None else f"{job['energy_j']:.0f} J",
            )
        )
        + "</tr>"
        for job in panel.jobs
    )
    head = "".join(f"<th>{h}</th>" for h in ("Job", "Finished", "GPU time used", "Samples", "Peak memory", "Energy"))
    table = f"<table class='ab-telemetry'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>" if rows else ""
    return f"<p class='ab-zerogpu'>{html.escape(panel.note)}</p>{table}"


def build_telemetry(
    demo: gr.Blocks, sampler: TelemetrySampler, zerogpu: Callable[[], ZeroGpuPanel] | None = None
) -> None:
    """Render the strip and its hidden full panel in the current Blocks context, with their timers: the strip
    refreshes on page load and then on its timer; the panel when opened and then on its own timer, which runs only
    while the panel is open. `zerogpu` (on a ZeroGPU Space) gives the panel's note and the jobs' own readings."""
    first = sampler.latest()
    with_power = has_power_readings(first)  # no empty "GPU power" chart on a machine without one
    periods = RefreshPeriods.for_machine(len(first.gpus), with_power, sampler.interval_s)
    with gr.Row(equal_height=False, elem_id="telemetry-strip-row"):
        strip = gr.HTML(elem_id="telemetry-strip", js_on_load=None, min_width=0)
        toggle = gr.Button(_TOGGLE_LABELS[False], size="sm", scale=0, min_width=0, elem_id="telemetry-toggle")
    is_open = gr.State(False)
    with gr.Column(visible=False, elem_id="telemetry-panel") as panel:
        values = gr.HTML(elem_id="telemetry-values", js_on_load=None)
        with gr.Row(equal_height=True):
            plots = [gr.Plot(show_label=False, elem_id="telemetry-util"), gr.Plot(show_label=False)]
            if with_power:
                plots.append(gr.Plot(show_label=False, elem_id="telemetry-power"))
    strip_timer = gr.Timer(periods.strip_s)
    panel_timer = gr.Timer(periods.panel_s, active=False)
    quiet: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}

    def refresh_strip() -> str:
        return strip_html(sampler.latest(), sampler.history(SPARK_WINDOW_S), periods.strip_s)

    def refresh_panel(opened: bool = True) -> tuple:
        if not opened:
            return (gr.skip(),) * (1 + len(plots))
        extra = zerogpu_html(zerogpu()) if zerogpu is not None else ""
        return current_values_html(sampler.latest()) + extra, *history_figures(
            sampler.history(), sampler.interval_s, with_power
        )

    def flip(opened: bool) -> tuple:
        opened = not opened
        return opened, gr.Column(visible=opened), gr.Timer(active=opened), gr.Button(_TOGGLE_LABELS[opened])

    gr.on([demo.load, strip_timer.tick], refresh_strip, outputs=strip, **quiet)
    panel_timer.tick(refresh_panel, outputs=[values, *plots], **quiet)
    toggle.click(flip, inputs=is_open, outputs=[is_open, panel, panel_timer, toggle], **quiet).then(
        refresh_panel, inputs=is_open, outputs=[values, *plots], **quiet
    )
