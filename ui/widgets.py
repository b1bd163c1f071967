"""Pieces the tabs share: the example assets, number inputs ranged by their config field, the stage-time chart,
chart layout (readable log axes, labels inside the figure, empty charts hidden), tables without the columns a
result leaves empty, timestamps, job-id lists, and the status poller behind gr.Timer."""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from engine.core.hls import LiveStream, join_segments
from engine.core.options import Config
from engine.core.results import RunResult
from engine.jobs.store import DONE, FINISHED, QUEUED, RUNNING, StoreError
from ui.forms import default, field, refusal

ASSETS = Path(__file__).resolve().parent.parent / "assets"


DELIVERY_KEEP_S = 600.0  # Gradio copies a returned file into its cache at once; the hand-over copy goes after this
_handed_over: deque[tuple[float, Path]] = deque()
_hand_over_lock = threading.Lock()


def delivered(path: str | os.PathLike | None) -> str | None:
    """An output file as a component returns it: a link to it (a copy across file systems) in a folder of its own,
    named at random, in the system's temp directory; None where the file is gone (the store's budget may have
    removed it; the summary says so).

    Why: Gradio serves every file under launch()'s allowed_paths to anyone who names it, and outputs are named by
    their job's id, which other users can come to know; so the outputs folder is not among them (app.py). Gradio
    takes returned files from the temp directory into its own cache (content-hashed names) without serving that
    directory."""
    if not path or not Path(path).is_file():
        return None
    now = time.time()
    with _hand_over_lock:
        while _handed_over and now - _handed_over[0][0] > DELIVERY_KEEP_S:
            shutil.rmtree(_handed_over.popleft()[1], ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="avatarbench-out-"))
    target = folder / Path(path).name
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    with _hand_over_lock:
        _handed_over.append((now, folder))
    return str(target)


def joined_video(stream: LiveStream) -> Path:
    """The segments so far as one MP4 (no encode), joined once for each count of segments: a stopped job's last
    preview, reopened, is the file already made."""
    parts = stream.segments
    so_far = parts[-1].parent / f"so-far-{len(parts)}.mp4"
    return so_far if so_far.is_file() else join_segments(parts, so_far)


def video_so_far(stream: LiveStream) -> tuple[str | None, str]:
    """A Result pane while its job streams: the first seconds as one MP4, and the line saying so."""
    return delivered(joined_video(stream)), f"⏳ the first {stream.duration:.1f} s, made so far; the rest follows"


def scroll_into_view(button: gr.Button, pane: Any) -> None:
    """Pressing `button` brings `pane` (a component with an elem_id) into view where it is below the screen: on a
    phone the result comes under the whole form, and a run's progress and outcome were out of sight. Where the pane
    is already on the screen (beside the form on a laptop), nothing moves. In the browser only; Gradio 6.31 does not
    act on an event's scroll_to_output."""
    script = f"""() => {{
      const pane = document.getElementById({pane.elem_id!r});
      if (pane && pane.getBoundingClientRect().top > window.innerHeight - 120) {{
        pane.scrollIntoView({{behavior: "smooth", block: "start"}});
      }}
    }}"""
    button.click(None, None, None, js=script, queue=False, show_progress="hidden", api_visibility="private")


_MARKUP = re.compile(r"([\\`*_\[\]<>|~#])")
_CODE_SPAN = re.compile(r"(`[^`\n]+`)")


def markdown_literal(text: str) -> str:
    """A message as written, in a Markdown pane: the names in it are the user's (files, models, outputs), and a `*`,
    a leading `_` or a `<` in one made italics or vanished; the message's own `code` spans stay code."""
    parts = _CODE_SPAN.split(text)
    return "".join(part if i % 2 else _MARKUP.sub(r"\\\1", part) for i, part in enumerate(parts))


def measurement_line(result: RunResult) -> list[str]:
    """The run's measured window (wall time, peaks, energy) as a summary line, when the job was measured."""
    if not result.measurement:
        return []
    from engine.jobs.measure import describe

    return [f"- measured: {describe(result.measurement)} (stages overlap: their times do not add up to the wall)"]


def segments_lines(result: RunResult) -> list[str]:
    """A job split over GPUs: each GPU's part (frames, time, frames/s, load), then the planning and joining."""
    segments = result.metrics.get("segments")
    if not segments:
        return []
    rows = [
        f"  - `{s['device']}`: frames {s['start']}-{s['stop'] - 1} ({s['frames']}) in {s['seconds']:.2f}s"
        + (f", {s['frames_per_second']:.1f} frames/s" if s.get("frames_per_second") else "")
        + (f", busy {100 * s['load']:.0f}% of the job" if s.get("load") is not None else "")
        for s in segments
    ]
    plan, join = result.metrics.get("plan_seconds"), result.metrics.get("assemble_seconds")
    tail = " · ".join(t for t in (plan and f"planned in {plan:.2f}s", join and f"joined in {join:.2f}s") if t)
    return [f"- split over {len(segments)} GPUs" + (f" ({tail})" if tail else "") + ":", *rows]


def server_file_picker(settings: Any, label: str) -> gr.Dropdown:
    """A model file among the weights this server has (by name; empty: the settings' default). An operator may
    type a path or an hf: reference instead; visitors may not (ui/jobs.py Access.server_files)."""
    from engine.core.weights import server_files

    return gr.Dropdown(["", *server_files(settings)], value="", label=label, allow_custom_value=True)


def number(cls: type[Config], name: str, label: str) -> gr.Number:
    """A number box at the field's default, for fields that are never empty (optional_number for those that may be).
    No bounds here: the config checks the range, with the same words as the CLI and the API."""
    return gr.Number(value=default(cls, name), label=label, precision=0 if field(cls, name).type is int else None)


def optional_number(cls: type[Config], name: str, label: str, empty: str, **extra: Any) -> gr.Textbox:
    """A number field that may be left empty (`empty` says what that means: auto, off, all), as a one-line text box:
    Gradio 6.31's gr.Number shows and sends a missing value as 0, a real setting (or a refusal, like "runs 0"). The
    config parses and checks the text. `extra`: more gr.Textbox arguments (info, elem_id)."""
    value = default(cls, name)
    return gr.Textbox("" if value is None else str(value), label=label, placeholder=empty, max_lines=1, **extra)


def slider(cls: type[Config], name: str, label: str, step: float) -> gr.Slider:
    """A slider over the field's range, at its default."""
    f = field(cls, name)
    return gr.Slider(f.option.low, f.option.high, value=default(cls, name), step=step, label=label)


def timing_figure(result: RunResult) -> go.Figure:
    """Seconds per stage, the slowest in red; stage names get the room they need (automargin)."""
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
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": "seconds", "automargin": True},
        yaxis={"autorange": "reversed", "automargin": True},
        template="plotly_white",
    )
    return fig


def layout(fig: go.Figure, title: str, x: str, y: str, height: int = 320) -> go.Figure:
    """The tabs' chart style. Axes take the margin their tick labels and titles need (automargin), and the legend
    sits under the plot, anchored to the figure's bottom edge, so neither is cut off in a narrow column."""
    fig.update_layout(
        title={"text": title, "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        height=height,
        margin={"l": 10, "r": 10, "t": 35, "b": 10},
        xaxis={"title": x, "automargin": True},
        yaxis={"title": y, "automargin": True},
        template="plotly_white",
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
    )
    return fig


def _tick_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 and float(value).is_integer() else f"{value:g}"


def one_two_five(low: float, high: float) -> list[float]:
    """1, 2, 5 x 10^k from the step at or below `low` to the one at or above `high` (both > 0)."""
    ticks: list[float] = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10.0**exponent for m in (1, 2, 5)]
    below = max([t for t in ticks if t <= low], default=ticks[0])
    above = min([t for t in ticks if t >= high], default=ticks[-1])
    return [round(t, 12) for t in ticks if below <= t <= above]


def log_axis(fig: go.Figure, values: Iterable[float], axis: str = "x", at_values: bool = True) -> go.Figure:
    """A log axis labelled at the values themselves (a handful of batch sizes, with `at_values`), else at 1-2-5 steps:
    never Plotly's digit-only minor labels ("9 1 2 ... 9")."""
    found = sorted({float(v) for v in values if v is not None and v > 0})
    if not found:
        return fig
    ticks = found if at_values and len(found) <= 8 else one_two_five(found[0], found[-1])
    update = {"type": "log", "tickmode": "array", "tickvals": ticks, "ticktext": [_tick_text(t) for t in ticks]}
    fig.update_xaxes(**update) if axis == "x" else fig.update_yaxes(**update)
    return fig


def has_data(fig: go.Figure | None) -> bool:
    """Whether a figure has anything to draw: at least one trace with a value."""
    return fig is not None and any(
        len(getattr(trace, "x", None) or ()) or len(getattr(trace, "y", None) or ()) for trace in fig.data
    )


def chart(fig: go.Figure | None) -> dict[str, Any]:
    """A gr.Plot's update: the figure, or the plot hidden when it has nothing to draw (no empty boxes)."""
    shown = has_data(fig)
    return gr.update(value=fig if shown else None, visible=shown)


EMPTY_CELLS = ("", "N/A", "n/a", "-", "—")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in EMPTY_CELLS)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """A gr.Dataframe value without the columns every row leaves empty (None, "", N/A): what this machine did not
    measure (no GPU memory on a CPU, no TensorRT build). Exports (JSON, CSV) keep every column."""
    if not rows:
        return {"headers": list(headers), "data": []}
    kept_columns = [i for i in range(len(headers)) if not all(_empty(row[i]) for row in rows)]
    return {"headers": [headers[i] for i in kept_columns], "data": [[row[i] for i in kept_columns] for row in rows]}


def shown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """A table that is hidden while it has no rows (e.g. accuracy when no expected outputs were given)."""
    return gr.update(value=table(headers, rows), visible=bool(rows))


def when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def job_ids(text: str) -> list[str]:
    """Job ids typed into a box, comma- or space-separated; an empty box is a message, not a crash."""
    found = [t for t in (text or "").replace(",", " ").split() if t]
    if not found:
        raise refusal("Give one or more job ids from the history table.", "the job list")
    return found


def finished_results(result: Callable[[str], dict], text: str) -> list[dict]:
    """The results of the typed job ids, every one finished or stopped with the rows it finished (a message names
    the first that has none)."""
    out = []
    for job in job_ids(text):
        try:
            r = result(job)
        except StoreError as exc:
            raise refusal(str(exc), "the compare") from None
        if r["status"] not in FINISHED or not (r.get("report") or {}).get("results"):
            kept = "" if r["status"] in (QUEUED, RUNNING) else " and kept no results"
            raise refusal(f"job {job} is {r['status']}{kept}; only jobs with results can be compared", "the compare")
        out.append(r)
    return out


def job_poller(
    status: Callable[[str, str | None], dict],
    describe: Callable[[dict], str],
    render: Callable[[str, str | None], tuple[Any, ...]],
    outputs: int,
    empty: str,
    access: Any,
    kept: int = 0,
    stopped_too: bool = False,
) -> Callable[[str | None, gr.Request], tuple[Any, ...]]:
    """A gr.Timer handler: (status text, the timer's next state, *outputs), for the asking owner's job only. The
    outputs are rendered once, when the job is done, and empty until then (an earlier job's results never stand
    under a new job's status), but for the last `kept`, which other buttons fill too (the ONNX tab's inspection);
    the timer stops when the job has ended. `stopped_too`: a failed or cancelled job is rendered as well (its
    result holds what it finished; `render` returns None where it holds nothing)."""
    blank = tuple(gr.update() for _ in range(outputs))
    # plain values: an update would make Gradio rebuild each component every tick
    cleared = (None,) * (outputs - kept) + blank[outputs - kept :]

    def poll(job: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not job:
            return (empty, gr.Timer(active=False), *blank)
        reader = access.reader(request)
        try:
            state = status(job, reader)
        except StoreError as exc:  # "no job X": an earlier job's results must not stand under it
            return (str(exc), gr.Timer(active=False), *cleared)
        ended = state["status"] in FINISHED
        shown = render(job, reader) if state["status"] == DONE or (ended and stopped_too) else None
        return (describe(state), gr.Timer(active=not ended), *(cleared if shown is None else shown))

    return poll
