"""The live telemetry panel shown above every tab: current values and history plots.

It reads the process's one sampler (engine.system.telemetry) and never runs GPU work, so its timer
ticks bypass the queue (`queue=False`): a busy GPU queue never freezes the gauges.
"""

from __future__ import annotations

import html

import gradio as gr
import plotly.graph_objects as go

from engine.system.telemetry import Snapshot, TelemetrySampler, series, throttle_text

PLOT_HEIGHT = 230
_COLORS = ("#76b900", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b")


def _pct(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.0f}%"


def current_values_html(snap: Snapshot) -> str:
    """A compact table of the newest sample: one row per GPU, then the host."""
    rows = []
    for g in snap.gpus:
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
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Device", "Util", "Memory", "Temp", "Power", "SM / mem clock", "Enc / dec", "Perf", "Throttle")
    )
    h = snap.host
    host = (
        f"Host CPU {h.cpu_percent:.0f}% of {h.cpu_count} cores · RAM {h.ram_used_bytes / 2**30:.1f} / "
        f"{h.ram_total_bytes / 2**30:.1f} GiB · this process {h.process_rss_bytes / 2**20:.0f} MiB RSS, "
        f"{h.process_cpu_percent:.0f}% CPU"
    )
    gpu_part = (
        f"<table class='ab-telemetry'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if snap.gpus
        else f"<p class='ab-no-gpu'>⚠️ {html.escape(snap.gpu_status)}: host telemetry only.</p>"
    )
    return f"{gpu_part}<p>{html.escape(host)}</p>"


def _figure(title: str, unit: str, traces: list[tuple[str, list]], times: list, y_max: float | None) -> go.Figure:
    fig = go.Figure()
    for i, (name, values) in enumerate(traces):
        fig.add_trace(
            go.Scatter(
                x=times,
                y=values,
                name=name,
                mode="lines",
                line={"color": _COLORS[i % len(_COLORS)], "width": 2},
                connectgaps=False,
            )
        )
    if not traces:
        fig.add_annotation(text="no NVIDIA GPU visible", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=PLOT_HEIGHT,
        margin={"l": 40, "r": 10, "t": 30, "b": 25},
        yaxis={"title": unit, "rangemode": "tozero", **({"range": [0, y_max]} if y_max else {})},
        legend={"orientation": "h", "y": -0.25},
        showlegend=True,
        template="plotly_white",
    )
    return fig


def history_figures(snaps: list[Snapshot]) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Utilisation, memory and power over the kept history."""
    cols = series(snaps)
    times = cols["time"]
    gpu_ids = sorted({k.split(".")[0] for k in cols if k.startswith("gpu")})
    util = [(f"{g} util", cols[f"{g}.util_percent"]) for g in gpu_ids]
    util += [(f"{g} mem-bus", cols[f"{g}.memory_util_percent"]) for g in gpu_ids]
    util.append(("host CPU", cols["host.cpu_percent"]))
    memory = [(f"{g} used", cols[f"{g}.memory_gib"]) for g in gpu_ids]
    memory += [("host RAM", cols["host.ram_gib"]), ("this process", cols["host.rss_gib"])]
    power = [(f"{g} power", cols[f"{g}.power_w"]) for g in gpu_ids]
    return (
        _figure("Utilisation", "%", util, times, 100),
        _figure("Memory", "GiB", memory, times, None),
        _figure("GPU power" if gpu_ids else "GPU power (no GPU visible)", "W", power, times, None),
    )


def build_telemetry_panel(demo: gr.Blocks, sampler: TelemetrySampler) -> gr.Timer:
    """Render the panel in the current Blocks context, filled on page load and on every tick."""
    with gr.Accordion("Live telemetry", open=True, elem_id="telemetry-panel"):
        stamp = gr.Markdown(elem_id="telemetry-timestamp")
        values = gr.HTML(elem_id="telemetry-values")
        with gr.Row(equal_height=True):
            util_plot = gr.Plot(show_label=False, elem_id="telemetry-util")
            mem_plot = gr.Plot(show_label=False, elem_id="telemetry-memory")
            power_plot = gr.Plot(show_label=False, elem_id="telemetry-power")

    def refresh() -> tuple:
        snap = sampler.latest()
        return (
            f"Updated **{snap.time_text}** · sampling every {sampler.interval_s:g}s",
            current_values_html(snap),
            *history_figures(sampler.history()),
        )

    timer = gr.Timer(sampler.interval_s)
    gr.on(
        [demo.load, timer.tick],
        refresh,
        outputs=[stamp, values, util_plot, mem_plot, power_plot],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )
    return timer
