"""Pieces the job tabs share: chart layout, timestamps, job-id lists, and the status poller behind gr.Timer."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from engine.jobs.store import DONE, FAILED, StoreError


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
    status: Callable[[str], dict],
    describe: Callable[[dict], str],
    render: Callable[[str], tuple[Any, ...]],
    outputs: int,
    empty: str,
) -> Callable[[str | None], tuple[Any, ...]]:
    """A gr.Timer handler: (status text, the timer's next state, *outputs). The outputs are rendered once,
    when the job is done; the timer stops when the job is done or failed."""
    blank = tuple(gr.update() for _ in range(outputs))

    def poll(job: str | None) -> tuple[Any, ...]:
        if not job:
            return (empty, gr.Timer(active=False), *blank)
        try:
            state = status(job)
        except StoreError as exc:
            return (str(exc), gr.Timer(active=False), *blank)
        if state["status"] == DONE:
            return (describe(state), gr.Timer(active=False), *render(job))
        return (describe(state), gr.Timer(active=state["status"] != FAILED), *blank)

    return poll
