"""PyTorch with CUDA graphs: the eager module captured once on the placed inputs and replayed, so a run is one
launch instead of one per kernel. The graph owns its input and output buffers, so inputs are set before capture."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.runtimes.base import RuntimeUnavailable
from engine.runtimes.torch_eager import EagerRuntime

CAPTURE_WARMUP_RUNS = 3  # cuDNN/cuBLAS pick their algorithms before the capture, not inside it


class CudaGraphsRuntime(EagerRuntime):
    name = "cudagraphs"

    replay: Any = None

    def check(self) -> None:
        super().check()
        if not self.on_cuda:
            raise RuntimeUnavailable("CUDA graphs need a CUDA device")

    def set_inputs(self, inputs: tuple[Any, ...] | dict[str, np.ndarray]) -> None:
        super().set_inputs(inputs)
        self._capture()

    def _capture(self) -> None:
        import torch

        # Streams, the capture and the replays on the module's card: torch.cuda.graph captures on a stream of the
        # current device, which on any other card would capture (and replay) nothing.
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(CAPTURE_WARMUP_RUNS):
                    self.module(*self.inputs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self.module(*self.inputs)

        def replay() -> Any:
            with torch.cuda.device(self.device):
                graph.replay()
            return static_out

        self.replay = replay

    def run(self) -> None:
        self.last = self.replay()

    def close(self) -> None:
        self.replay = None
        super().close()


__all__ = ["CudaGraphsRuntime"]
