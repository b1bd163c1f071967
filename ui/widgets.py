"""Pieces the tabs share: the example assets, number inputs ranged by their config field, the stage-time chart,
chart layout, timestamps, job-id lists, and the status poller behind gr.Timer."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from engine.core.options import Config
from engine.core.results import RunResult
from engine.jobs.store import DONE, FINISHED, StoreError
from ui.forms import default, field

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def kept(path: str | None) -> str | None:
    """An output file still on disk, else None (the store's budget may have removed it; the summary says so)."""
    return path if path and Path(path).is_file() else None


def measurement_line(result: RunResult) -> list[str]:
    """The run's measured window (wall time, peaks, energy) as a summary line, when the job was measured."""
    if not result.measurement:
        return []
    from engine.jobs.measure import describe

    return [f"- measured: {describe(result.measurement)} (stages overlap: their times do not add up to the wall)"]


def server_file_picker(settings: Any, label: str) -> gr.Dropdown:
    """A model file among the weights this server has (by name; empty: the settings' default). An operator may
    type a path or an hf: reference instead; visitors may not (ui/jobs.py Access.server_files)."""
    from engine.core.weights import server_files

    return gr.Dropdown(["", *server_files(settings)], value="", label=label, allow_custom_value=True)


def number(cls: type[Config], name: str, label: str) -> gr.Number:
    """A number box at the field's default (empty where the field accepts None). No bounds here: the config checks
    the range, with the same words as the CLI and the API."""
    return gr.Number(value=default(cls, name), label=label, precision=0 if field(cls, name).type is int else None)


def slider(cls: type[Config], name: str, label: str, step: float) -> gr.Slider:
    """A slider over the field's range, at its default."""
    f = field(cls, name)
    return gr.Slider(f.option.low, f.option.high, value=default(cls, name), step=step, label=label)


def timing_figure(result: RunResult) -> go.Figure:
    names = [s.name for s in result.stages]
    seconds = [s.seconds for s in result.stages]
    slowest = result.slowest_stage.name if result.stages else None
    colors = ["#d62728" if n == slowest else "#76b900" for n in names]
    fig = go.Figure(
        go.Bar(
            x=seconds,
            y=names,
            orientation="h",
            marker_color=colors,
            text=[f"{s:.2f}s" for s in seconds],
            textposition="auto",
        )
    )
    fig.update_layout(
        title={"text": "Time per stage (slowest in red)", "font": {"size": 13}},
        height=260,
        margin={"l": 70, "r": 10, "t": 30, "b": 30},
        xaxis_title="seconds",
        yaxis={"autorange": "reversed"},
        template="plotly_white",
    )
    return fig


def layout(fig: go.Figure, title: str, x: str, y: str, height: int = 300) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=height,
        margin={"l": 60, "r": 10, "t": 35, "b": 40},
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def job_ids(text: str) -> list[str]:
    """Job ids typed into a box, comma- or space-separated; an empty box is a message, not a crash."""
    found = [t for t in (text or "").replace(",", " ").split() if t]
    if not found:
        raise gr.Error("Give one or more job ids from the history table.")
    return found


def finished_results(result: Callable[[str], dict], text: str) -> list[dict]:
    """The results of the typed job ids, every one finished (a message names the first that is not)."""
    out = []
    for job in job_ids(text):
        try:
            r = result(job)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        if r["status"] != DONE:
            raise gr.Error(f"job {job} is {r['status']}; only finished jobs can be compared")
        out.append(r)
    return out


def job_poller(
    status: Callable[[str, str | None], dict],
    describe: Callable[[dict], str],
    render: Callable[[str, str | None], tuple[Any, ...]],
    outputs: int,
    empty: str,
    access: Any,
) -> Callable[[str | None, gr.Request], tuple[Any, ...]]:
    """A gr.Timer handler: (status text, the timer's next state, *outputs), for the asking owner's job only. The
    outputs are rendered once, when the job is done; the timer stops when the job has ended."""
    blank = tuple(gr.update() for _ in range(outputs))

    def poll(job: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not job:
            return (empty, gr.Timer(active=False), *blank)
        reader = access.reader(request)
        try:
            state = status(job, reader)
        except StoreError as exc:
            return (str(exc), gr.Timer(active=False), *blank)
        if state["status"] == DONE:
            return (describe(state), gr.Timer(active=False), *render(job, reader))
        return (describe(state), gr.Timer(active=state["status"] not in FINISHED), *blank)

    return poll
