"""A stand-in for Hugging Face's `spaces` package, for tests only: what a ZeroGPU Space does to a call of a function
decorated with `@spaces.GPU`, on a machine without ZeroGPU.

It lives under tests/zerogpu_spaces/, which is not on sys.path: a test adds that folder to import it, so `import
spaces` fails everywhere else, as it does off Spaces.

What it does as ZeroGPU does (from its documentation and its client): `GPU` decorates bare or with a duration (seconds,
a timedelta, or a callable taking the function's own arguments); off ZeroGPU the decorator hands back the function
itself, as the real one does when SPACES_ZERO_GPU, read when it decorates, is not 1, t or true (any case). On ZeroGPU
each call runs in a process forked for it; the arguments and the return value cross a pickle boundary; an exception
raised inside is raised in the caller; a call that runs past its duration is stopped. Its refusals are the real
client's (spaces/zero/client.py, wrappers.py), as gradio.Error: "GPU task aborted" when the GPU process ended without a
result (past its duration, or died), "The requested GPU duration (Ns) is larger than the maximum allowed" past
MAX_DURATION_S, and, when a test sets `refuse`, the quota (429) and no-GPU (503) messages. What it cannot do: attach a
GPU, queue, or count quota. A result holding a torch tensor on a CUDA device is refused (it cannot leave the GPU
process); the check asks the tensor's `is_cuda`, so a test without a GPU can hand it a tensor subclass that answers
True.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

DEFAULT_DURATION_S = 60  # ZeroGPU's own default
MAX_DURATION_S = 300  # the largest per-call duration ZeroGPU allows (a test may lower it)
ABORTED = "GPU task aborted"  # what the real client raises when the GPU process ended without a result
refuse: str | None = None  # a test sets "quota" or "nogpu": calls are refused as ZeroGPU's /schedule refuses them
# A call is stopped past its duration x slack. ZeroGPU's is 1; a test whose jobs run on this machine's CPU, perhaps
# shared with other work, in place of a GPU may let them run longer than the asks (sized for a GPU) allow.
slack = 1.0
_FORK = multiprocessing.get_context("fork")

requested: list[float] = []  # the duration every call asked for, in seconds, in call order (read by tests)
tokens: list[str | None] = []  # the X-IP-Token every call carried (None: the Space's own allowance), in call order


class ZeroGpuError(RuntimeError):
    """The stand-in's own refusals: a result that cannot leave the GPU process, a call past its duration."""


class _Boundary(pickle.Pickler):
    """The result's way out of the GPU process: plain pickling, except that CUDA tensors are refused."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor) and obj.is_cuda:
            raise ZeroGpuError("a CUDA tensor cannot leave the GPU process (return plain data, or .cpu() first)")
        return NotImplemented


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Boundary(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _seconds(duration: Any, args: tuple, kwargs: dict) -> float:
    if callable(duration):
        duration = duration(*args, **kwargs)
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    return float(DEFAULT_DURATION_S if duration is None else duration)


def _child(task: Callable[..., Any], payload: bytes, sender: Any) -> None:
    """The forked GPU process: unpickle the arguments, run, pickle the outcome back (an error if that fails)."""
    try:
        args, kwargs = pickle.loads(payload)
        data = _dumps(("ok", task(*args, **kwargs)))
    except BaseException as exc:
        try:
            data = pickle.dumps(("error", exc))
        except Exception:  # an exception that does not pickle still comes back, as text
            data = pickle.dumps(("error", ZeroGpuError(f"{type(exc).__name__}: {exc}")))
    sender.send_bytes(data)
    sender.close()


def _error(message: str) -> Exception:
    """The real client raises gradio.Error (HTMLError, a subclass, for quota): a plain RuntimeError without gradio."""
    try:
        import gradio
    except ImportError:
        return ZeroGpuError(message)
    return gradio.Error(message)


def _token() -> str | None:
    """The visitor's token as the real client finds it: the X-IP-Token header of gradio.context.LocalContext.request
    (spaces.zero.client._get_token)."""
    try:
        from gradio.context import LocalContext
    except ImportError:
        return None
    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) if request is not None else None
    return headers.get("x-ip-token") if headers is not None else None


def _schedule(seconds: float) -> None:
    """client.schedule's refusals, in its words."""
    if seconds > MAX_DURATION_S:
        raise _error(f"The requested GPU duration ({int(seconds)}s) is larger than the maximum allowed")
    if refuse == "quota":
        raise _error(f"You have exceeded your GPU quota ({int(seconds)}s requested vs. 30s left). Try again in 0:42:00")
    if refuse == "nogpu":
        raise _error("No GPU was available")


def _run_forked(task: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> Any:
    payload = pickle.dumps((args, kwargs))  # the arguments cross the boundary too: a live object fails here
    receiver, sender = _FORK.Pipe(duplex=False)
    process = _FORK.Process(target=_child, args=(task, payload, sender), daemon=True)
    process.start()
    sender.close()
    deadline = time.monotonic() + seconds * slack
    try:
        while not receiver.poll(0.02):
            if not process.is_alive() and not receiver.poll(0):
                raise _error(ABORTED)  # the process died: the real client cannot tell this from a timeout
            if time.monotonic() > deadline:
                process.kill()
                raise _error(ABORTED)
        try:
            status, value = pickle.loads(receiver.recv_bytes())
        except EOFError:
            raise _error(ABORTED) from None
    finally:
        receiver.close()
        process.join(5)
    if status == "error":
        raise value
    return value


def GPU(task: Callable[..., Any] | None = None, *, duration: Any = DEFAULT_DURATION_S) -> Any:
    """`@GPU`, `@GPU(duration=120)` or `@GPU(duration=fn)`, as `spaces.GPU` is used."""
    if task is None:
        return functools.partial(GPU, duration=duration)
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "t", "true"):  # spaces.utils.boolean
        return task

    @functools.wraps(task)
    def call(*args: Any, **kwargs: Any) -> Any:
        seconds = _seconds(duration, args, kwargs)
        requested.append(seconds)
        tokens.append(_token())
        _schedule(seconds)
        return _run_forked(task, args, kwargs, seconds)

    return call


__all__ = ["ABORTED", "GPU", "MAX_DURATION_S", "ZeroGpuError", "refuse", "requested", "slack", "tokens"]
