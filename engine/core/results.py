"""The result type every capability returns.

A run is a sequence of named stages; each stage's wall time is recorded as it happens, so
the slowest stage is always visible. Stages overlap across threads, so they are never summed
into a run time: the run's wall time, memory peaks, energy and telemetry are `measurement`,
the figures of the window (engine/jobs/measure.py) that whoever ran the pipeline opened
around it; a pipeline alone cannot see the whole run. The object is plain data: picklable
and JSON-serialisable, never holding tensors, so it can come back from a ZeroGPU worker or
another process unchanged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

_LOCK = threading.Lock()


@dataclass
class StageTiming:
    name: str
    seconds: float
    items: int | None = None  # frames, batches or samples handled, where that makes sense

    @property
    def items_per_s(self) -> float | None:
        if not self.items or self.seconds <= 0:
            return None
        return self.items / self.seconds


@dataclass
class RunResult:
    """Outputs plus everything needed to judge the run: where time and memory went, what ran."""

    device: str = "cpu"
    device_name: str = ""
    precision: str = "fp32"
    outputs: dict[str, str] = field(default_factory=dict)
    stages: list[StageTiming] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)  # the measurement window's figures, set by the caller

    @contextmanager
    def stage(self, name: str, items: int | None = None) -> Iterator[StageTiming]:
        """Time a stage; entering the same stage again adds to it (a pipeline runs each stage once
        per batch), so `stages` holds one total per stage in first-seen order. Safe to use from the
        pipeline's worker threads. The caller may set `.items` on the yielded record.

        On CUDA the caller synchronises before leaving the block where the stage's last work
        is asynchronous, so the wall time is the work's time and not only the launch's.
        """
        record = StageTiming(name=name, seconds=0.0, items=items)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            with _LOCK:
                existing = next((s for s in self.stages if s.name == name), None)
                if existing is None:
                    self.stages.append(record)
                else:
                    existing.seconds += record.seconds
                    if record.items is not None:
                        existing.items = (existing.items or 0) + record.items

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    @property
    def slowest_stage(self) -> StageTiming | None:
        return max(self.stages, key=lambda s: s.seconds, default=None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        slowest = self.slowest_stage
        out["slowest_stage"] = slowest.name if slowest else None
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["stages"] = [StageTiming(**s) for s in data.get("stages", [])]
        return cls(**data)
