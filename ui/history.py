"""The history tables of the ONNX eval and GPU benchmark tabs, wired as the other tabs' earlier runs are (ui/jobs.py
run_panel): listed when their accordion is opened or refreshed, and a clicked row's job id put in the ids box,
first, ready for Open (which opens the first) and Compare (which takes them all)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr


def clicked_first(text: str | None, selected: gr.SelectData) -> str:
    """The ids box after a row is clicked: that row's job id first, then the ids already there (once each)."""
    job = str((selected.row_value or [""])[0]).strip()
    kept = [j for j in (text or "").replace(",", " ").split() if j != job]
    return ", ".join([job, *kept]) if job else (text or "")


def wire_history(
    panel: gr.Accordion, refresh: gr.Button, table: gr.Dataframe, chosen: gr.Textbox, rows: Callable[..., Any]
) -> None:
    """`rows(request)` fills `table` when `panel` is opened (it was empty until Refresh) and on Refresh; a row
    clicked puts its id (the table's first column) in `chosen`."""
    for event in (refresh.click, panel.expand):
        event(rows, None, table, queue=False, api_visibility="private")
    table.select(clicked_first, chosen, chosen, queue=False, api_visibility="private")


__all__ = ["clicked_first", "wire_history"]
