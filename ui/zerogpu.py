"""ZeroGPU's per-visitor quota: the X-IP-Token header of the request that submits a job, carried to its GPU call.

ZeroGPU counts a call against the visitor whose token `spaces` finds in the Gradio request of the call's context
(gradio.context.LocalContext.request, header X-IP-Token). Our calls are made from the job thread, outside any
request, so without this every visitor shared the Space's own allowance ("Space app has reached its GPU limit").
The token is kept in memory per owner (engine/jobs/zerogpu.py), never in the store or a result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gradio as gr
from gradio.context import LocalContext

from engine.jobs.zerogpu import VISITOR_TOKENS

TOKEN_HEADER = "x-ip-token"  # spaces.zero.client.TOKEN_HEADER, lower-cased as it reads it


def remember_visitor_token(owner: str, request: gr.Request | None) -> None:
    """Keep the request's X-IP-Token (HF's proxy adds it on ZeroGPU Spaces) for the owner's next GPU calls."""
    headers = getattr(request, "headers", None) if request is not None else None
    token = headers.get(TOKEN_HEADER) if headers is not None and hasattr(headers, "get") else None
    if token:
        VISITOR_TOKENS.remember(owner, str(token))


@contextlib.contextmanager
def visitor_request(token: str | None) -> Iterator[None]:
    """The Gradio request context `spaces` reads its visitor from, holding only the token; none without one (the
    call then counts against the Space's own allowance, shared by every visitor)."""
    if token is None:
        yield
        return
    reset = LocalContext.request.set(gr.Request(headers={TOKEN_HEADER: token}))
    try:
        yield
    finally:
        LocalContext.request.reset(reset)
