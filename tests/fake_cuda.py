"""torch.cuda's device, stream and graph calls faked on the CPU, shared by the CUDA-graph runners' tests: what those
runners get right or wrong is which card is current, which stream runs, and what a capture holds, and none of it
runs without a GPU (nor, for the card, on a machine with one GPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

Outputs = tuple[torch.Tensor, ...]  # what a captured call returns


class FakeCuda:
    """Installs the fakes; `log` gets (what, current card, stream, capturing) for each recorded call and replay."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, str | None, str, bool]] = []
        self.devices: list[str] = []
        self.stream_name = "default"
        self.graph: Graph | None = None  # the graph being captured
        fake = self

        class Stream:
            def __init__(self, device: Any = None, name: str = "side") -> None:
                self.name = name

            def wait_stream(self, other: Stream) -> None:
                pass

        class Graph:
            def __init__(self) -> None:
                self.kernels: list[Callable[[], None]] = []  # what a replay reruns: the calls it captured

            def replay(self) -> None:
                fake.record("replay")
                for kernel in self.kernels:
                    kernel()

        @contextlib.contextmanager
        def device(name: Any) -> Iterator[None]:
            fake.devices.append(str(name))
            yield
            fake.devices.pop()

        @contextlib.contextmanager
        def on_stream(stream: Stream) -> Iterator[None]:
            fake.stream_name = stream.name
            yield
            fake.stream_name = "default"

        @contextlib.contextmanager
        def graph(captured: Graph) -> Iterator[None]:
            fake.graph = captured
            yield
            fake.graph = None

        fakes = {"device": device, "Stream": Stream, "current_stream": lambda device=None: Stream(name="default"),
                 "stream": on_stream, "CUDAGraph": Graph, "graph": graph}  # fmt: skip
        for name, value in fakes.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def record(self, what: str) -> None:
        self.log.append((what, self.devices[-1] if self.devices else None, self.stream_name, self.graph is not None))

    def captured(self, fn: Callable[..., Outputs], what: str) -> Callable[..., Outputs]:
        """`fn`, each call recorded as `what`; a call made during a capture is what that graph's replays rerun, as a
        GPU replays kernels: on the same input tensors, its outputs written into the ones the capture returned."""

        def call(*inputs: torch.Tensor) -> Outputs:
            self.record(what)
            outputs = fn(*inputs)
            if self.graph is not None:

                def kernel() -> None:
                    for static, new in zip(outputs, fn(*inputs), strict=True):
                        static.copy_(new)

                self.graph.kernels.append(kernel)
            return outputs

        return call
