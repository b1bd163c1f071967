"""Runtimes a benchmark point runs on: PyTorch (eager, torch.compile, CUDA graphs) and ONNX Runtime
(CPU, CUDA, TensorRT providers). One small class per family behind one interface, so the sweep in
engine/bench/sweep.py never branches on the runtime.

Timing: on CUDA each run is bracketed by CUDA events and read after one synchronize at the end (no host
sync between runs, so launch overlap is real); on the CPU by perf_counter. ONNX Runtime on a GPU runs
through IOBinding with inputs and outputs on the device, the same footing as PyTorch's tensors.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.bench.workloads import BenchModel, first_output

TORCH_RUNTIMES = ("eager", "compile", "cudagraphs")
ORT_RUNTIMES = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "trt"}
RUNTIMES = TORCH_RUNTIMES + tuple(ORT_RUNTIMES)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class RuntimeUnavailable(RuntimeError):
    """This runtime cannot run here (no CUDA for CUDA graphs, no torch module for an ONNX-only model)."""


class TorchRuntime:
    def __init__(self, model: BenchModel, point: Any, device: str) -> None:
        if not model.has_torch:
            raise RuntimeUnavailable(f"{model.name} is an ONNX model: PyTorch runtimes need one of our networks")
        if point.runtime == "cudagraphs" and not device.startswith("cuda"):
            raise RuntimeUnavailable("CUDA graphs need a CUDA device")
        self.model, self.point, self.device = model, point, device
        self.module: Any = None
        self.fn: Any = None
        self.inputs: tuple[Any, ...] = ()
        self.last: Any = None
        self.ran_on = device
        self.fell_back = False
        self.fallback_reason: str | None = None

    def load(self) -> None:
        import torch

        from engine.core.device import apply_backend_flags

        apply_backend_flags(cudnn_benchmark=self.point.cudnn_benchmark, tf32=self.point.precision == "tf32")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.point.precision, torch.float32)
        module = self.model.build_torch().to(self.device, dtype)  # type: ignore[misc]
        if self.point.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module, self.dtype = module, dtype
        self.fn = torch.compile(module, mode=self.point.compile_mode) if self.point.runtime == "compile" else module

    def set_inputs(self, inputs: tuple[Any, ...]) -> None:
        import torch

        def place(t: Any) -> Any:
            t = t.to(self.device, self.dtype)
            if self.point.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return t

        self.inputs = tuple(place(t) for t in inputs)
        if self.point.runtime == "cudagraphs":
            self._capture()

    def _capture(self) -> None:
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up cuDNN/cuBLAS choices outside the capture
                self.module(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            static_out = self.module(*self.inputs)

        def replay() -> Any:
            graph.replay()
            return static_out

        self.fn = replay

    def run(self) -> None:
        import torch

        with torch.inference_mode():
            self.last = self.fn() if self.point.runtime == "cudagraphs" else self.fn(*self.inputs)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def timed_runs(self, n: int) -> list[float]:
        if not self.device.startswith("cuda"):
            return _host_timed(self.run, n)
        import torch

        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            self.run()
            end.record()
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in events]

    def output(self) -> np.ndarray:
        return first_output(self.last)

    def peak_bytes(self) -> int | None:
        if not self.device.startswith("cuda"):
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        self.module = self.fn = self.last = None
        self.inputs = ()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


class OrtRuntime:
    def __init__(self, model: BenchModel, point: Any, device: str, memory_fraction: float) -> None:
        if model.onnx_path is None:
            raise RuntimeUnavailable(f"{model.name} has no ONNX file")
        if point.precision == "fp16" and point.runtime != "ort-trt":
            raise RuntimeUnavailable("ONNX Runtime runs the model's own precision; fp16 only through TensorRT")
        if point.precision in ("bf16",):
            raise RuntimeUnavailable("bf16 is not offered for ONNX Runtime here")
        self.model, self.point, self.device = model, point, device
        self.key = ORT_RUNTIMES[point.runtime]
        self.memory_fraction = memory_fraction
        self.session: Any = None
        self.binding: Any = None
        self.feeds: dict[str, np.ndarray] = {}
        self.last: Any = None
        self.ran_on = ""
        self.fell_back = False
        self.fallback_reason: str | None = None
        self.on_gpu = False

    def load(self) -> None:
        from engine.onnx.evaluate import EvalConfig, make_session

        device_id = int(self.device.partition(":")[2] or 0) if self.device.startswith("cuda") else 0
        config = EvalConfig(
            providers=[self.key],
            trt_fp16=self.point.precision == "fp16",
            gpu_memory_fraction=self.memory_fraction,
            device_id=device_id,
            cuda_tf32=self.point.precision == "tf32",
        )
        self.session, meta = make_session(self.model.onnx_path(), self.key, config)  # type: ignore[misc]
        self.ran_on = meta["got"][0] if meta["got"] else "?"
        self.fell_back, self.fallback_reason = bool(meta["fell_back"]), meta["fallback_reason"]
        self.on_gpu = self.ran_on != "CPUExecutionProvider"
        self.device_id = device_id

    def set_inputs(self, inputs: tuple[Any, ...] | dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        names = [i.name for i in self.session.get_inputs()]
        if isinstance(inputs, dict):
            self.feeds = inputs
        else:
            self.feeds = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, inputs, strict=True)}
        self.output_names = [o.name for o in self.session.get_outputs()]
        if not self.on_gpu:
            return
        binding = self.session.io_binding()
        self._device_inputs = {
            n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.device_id) for n, a in self.feeds.items()
        }
        for name, value in self._device_inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        binding.synchronize_inputs()
        self.binding = binding

    def run(self) -> None:
        if self.binding is None:
            self.last = self.session.run(self.output_names, self.feeds)
            return
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()

    def sync(self) -> None:
        """Runs are synchronous for ORT (run_with_iobinding waits for its outputs)."""

    def timed_runs(self, n: int) -> list[float]:
        return _host_timed(self.run, n)

    def output(self) -> np.ndarray:
        if self.binding is not None:
            return np.asarray(self.binding.copy_outputs_to_cpu()[0], dtype=np.float64)
        return first_output(self.last)

    def peak_bytes(self) -> int | None:
        return None  # ORT's arena has no public high-water mark; NVML's device figure stands in

    def close(self) -> None:
        self.session = self.binding = self.last = None
        self._device_inputs = {}


def _host_timed(fn: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def make_runtime(model: BenchModel, point: Any, device: str, memory_fraction: float) -> TorchRuntime | OrtRuntime:
    if point.runtime in TORCH_RUNTIMES:
        return TorchRuntime(model, point, device)
    if point.runtime in ORT_RUNTIMES:
        return OrtRuntime(model, point, device, memory_fraction)
    raise RuntimeUnavailable(f"unknown runtime {point.runtime!r}; accepted: {', '.join(RUNTIMES)}")


__all__ = ["COMPILE_MODES", "ORT_RUNTIMES", "RUNTIMES", "TORCH_RUNTIMES", "RuntimeUnavailable", "make_runtime"]
