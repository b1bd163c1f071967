"""Stage timing for MuseTalk's preparation and generation, shared by avatar.py and generate.py.

A stage is recorded only when the caller passes a RunResult. On CUDA the stage then waits for the device before it
ends, so the figure is the work's time and not only its launch's; that wait also stops the device from running ahead
of the CPU, so timed runs give per-stage figures and untimed runs the best end-to-end speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engine.core.results import RunResult


@contextmanager
def timed(result: RunResult | None, name: str, device: torch.device, items: int | None = None) -> Iterator[None]:
    """Time the block as stage `name` of `result` (nothing at all without a result)."""
    if result is None:
        yield
        return
    with result.stage(name, items=items):
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
