"""The one way the engine opens an ONNX Runtime session: ONNX eval, the sweeps' ORT runtimes and the portrait
ONNX backend all go through OrtSession, so they share the provider options, the fallback check and IOBinding.

Why a wrapper: onnxruntime-gpu silently falls back to the CPU when the CUDA or TensorRT libraries do not load, so
every session compares `get_providers()` with the request and keeps the loader's error as the reason (the
TensorRT notice is a Python print on stdout, the CUDA one goes to the C-level stderr: both are captured). And
IOBinding must bind where the session really runs: cuda:<its device_id> on a GPU provider, the CPU after a
fallback, never a fixed device 0. ORT's own fallbacks are taken out of its hands: a session whose TensorRT provider
failed at creation is reopened on our CUDA provider with its options (ORT's reopening drops them all), and ORT's
retry of a failed run on other providers is disabled, so a run either ran where the report says or raised. TensorRT
engines are cached per model content (model_digest): ORT keys them by file and graph names only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import signal
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.errors import InputError, SetupError
from engine.system.gpu_memory import gpu_memory, nvml_source
from engine.system.ort_probe import captured_stderr, error_lines, loader_error

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}
GPU_KEYS = ("cuda", "trt")
GPU_PROVIDERS = tuple(PROVIDERS[key] for key in GPU_KEYS)


# ONNX element types that numpy lacks but ml_dtypes (an onnx dependency) holds one per byte or two: ORT's Python API
# takes and gives them only as OrtValues of raw bits, so OrtSession moves them so (4-bit types are packed: not here).
BITS_ONLY = {"bfloat16": 16, "float8_e4m3fn": 17, "float8_e4m3fnuz": 18, "float8_e5m2": 19, "float8_e5m2fnuz": 20}


def _ort_value(array: np.ndarray, kind: str = "cpu", index: int = 0) -> ort.OrtValue:
    """An array as an OrtValue on (kind, index), a BITS_ONLY dtype's array as its bits under its ONNX type."""
    import onnxruntime as ort

    code = BITS_ONLY.get(array.dtype.name)
    if code is None:
        return ort.OrtValue.ortvalue_from_numpy(array, kind, index)
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), code, kind, index)
    value.update_inplace(np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}"))
    return value


def _host_array(value: ort.OrtValue) -> np.ndarray:
    """An output OrtValue on the host; a BITS_ONLY type's comes back widened to float32 (exact, and what numpy's
    maths and the parity and accuracy figures can use)."""
    import ctypes

    from onnx import helper

    if value.element_type() not in BITS_ONLY.values():
        return value.numpy()
    if value.device_name().lower() != "cpu":  # a run's outputs are put on the host; never read device memory here
        raise RuntimeError(f"a {value.data_type()} output was left on {value.device_name()}")
    bits = np.empty(value.tensor_size_in_bytes(), np.uint8)
    if bits.size:
        ctypes.memmove(bits.ctypes.data, value.data_ptr(), bits.size)
    return bits.view(helper.tensor_dtype_to_np_dtype(value.element_type())).reshape(value.shape()).astype(np.float32)


@functools.cache
def runtime_limits() -> tuple[int, int]:
    """(the newest IR version, the newest ai.onnx opset) this ONNX Runtime loads, found by loading a one-node model
    at each, newest first (milliseconds): a model past them fails only once a job has started its session, and
    ORT states them nowhere else."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def loads(ir_version: int, opset: int) -> bool:
        x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the too-new opset's refusal is also logged as an error
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # a refusal is the answer: ORT raises its own Fail and InvalidGraph types
            return False
        return True

    ir_version = next((v for v in range(onnx.IR_VERSION, 7, -1) if loads(v, 13)), 7)
    opset = next((v for v in range(onnx.defs.onnx_opset_version(), 13, -1) if loads(ir_version, v)), 13)
    return ir_version, opset


class SessionError(SetupError):
    """ONNX Runtime could not create a session for one provider; the message carries ORT's log."""


@dataclass(frozen=True)
class OrtOptions:
    """How to open a session: the provider asked for (a key of PROVIDERS) and its settings."""

    provider: str = "cpu"
    device_id: int = 0  # the CUDA device the GPU providers use
    cuda_tf32: bool = False  # ORT's own default is on; it moves fp32 results by ~1e-3
    trt_fp16: bool = False
    trt_workspace_gb: float = 4.0
    # TensorRT's engine cache. ORT names a cached engine after the model's file name and graph names, not its
    # weights, so one folder must never serve two models' weights: a given folder is the caller's promise of that
    # (MuseTalk's is beside its weights' export); by default the folder is keyed by the model's bytes (model_digest).
    trt_cache_dir: str | os.PathLike | None = None
    gpu_memory_fraction: float = 0.9  # the CUDA arena's cap, as a share of the card's memory
    intra_op_threads: int = 0  # 0: ORT's default

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise InputError(f"unknown provider {self.provider!r}; accepted: {', '.join(PROVIDERS)}")

    @property
    def requested(self) -> str:
        return PROVIDERS[self.provider]


_DIGESTS: dict[tuple, str] = {}  # model_digest by the files' (path, size, mtime): a sweep opens one model often


def model_digest(model_path: str | os.PathLike) -> str:
    """sha256 of an ONNX model's file and of the external data files it names (16 hex digits): what tells two
    models' weights apart where their file and graph names agree (ONNX eval's uploads, random-weight exports)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(model_path)
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # not a model: its bytes key the folder, and the session says what is wrong with it
        graph = None
    tensors = _tensors(graph) if graph is not None else ()
    external = sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})
    files = [path, *(path.parent / name for name in external)]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as data:
                while block := data.read(1 << 20):
                    h.update(block)
        _DIGESTS[stamp] = h.hexdigest()[:16]
    return _DIGESTS[stamp]


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers and attribute tensors, subgraphs' included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _tensors(sub)


def _trt_cache_path(options: OrtOptions, model_path: str | os.PathLike) -> str:
    if options.trt_cache_dir:
        base = Path(options.trt_cache_dir)
    else:
        from engine.core.settings import get_settings

        base = get_settings().cache_dir / "onnx-trt" / model_digest(model_path)
    path = base / ("fp16" if options.trt_fp16 else "fp32")  # engines of both precisions never mix
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _provider_chain(options: OrtOptions, model_path: str | os.PathLike) -> list[Any]:
    """ORT's providers argument: the asked one with its options, then the fallbacks ORT may use."""
    if options.provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda: dict[str, Any] = {
        "device_id": int(options.device_id),
        "use_tf32": int(bool(options.cuda_tf32)),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
    }
    memory = gpu_memory(nvml_source(), options.device_id)
    if memory is not None:
        cuda["gpu_mem_limit"] = int(options.gpu_memory_fraction * memory["total"])
    chain: list[Any] = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    if options.provider == "trt":
        trt = {
            "device_id": int(options.device_id),
            "trt_fp16_enable": bool(options.trt_fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": _trt_cache_path(options, model_path),
            "trt_max_workspace_size": int(options.trt_workspace_gb * 2**30),
        }
        chain.insert(0, ("TensorrtExecutionProvider", trt))
    return chain


def _fallback_reason(name: str, log: str) -> str:
    """The first missing library when dlopen says so; otherwise ORT's own words."""
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        return f"{name} is not built into this onnxruntime package"
    loader = loader_error(name)
    if loader:
        return loader
    return log.splitlines()[-1] if log else "ORT gave no reason"


def _open(model_path: str | os.PathLike, session_options: Any, chain: list[Any], requested: str) -> tuple[Any, str]:
    """An InferenceSession on `chain` and what ORT said while making it (the TensorRT notice is a Python print on
    stdout, the CUDA one goes to the C-level stderr: both are captured)."""
    import onnxruntime as ort

    stdout, err = io.StringIO(), io.StringIO()
    try:
        with (
            captured_stderr() as err,
            contextlib.redirect_stdout(stdout),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            session = ort.InferenceSession(str(model_path), sess_options=session_options, providers=chain)
    except Exception as exc:
        log = error_lines(err.getvalue() + stdout.getvalue())
        raise SessionError(f"{requested}: session creation failed: {exc}" + (f"\n{log}" if log else "")) from exc
    return session, error_lines("\n".join([err.getvalue(), stdout.getvalue(), *(str(w.message) for w in caught)]))


class OrtSession:
    """A session for one provider and what it really got (ORT falls back silently, so we compare).

    Raises SessionError (with ORT's log) when ORT cannot create the session at all, and OSError when the
    TensorRT cache folder cannot be made.
    """

    def __init__(self, model_path: str | os.PathLike, options: OrtOptions) -> None:
        import onnxruntime as ort

        self.options = options
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        if options.intra_op_threads:
            session_options.intra_op_num_threads = int(options.intra_op_threads)
        chain = _provider_chain(options, model_path)
        start = time.perf_counter()
        session, self.log = _open(model_path, session_options, chain, options.requested)
        self.got: list[str] = list(session.get_providers())
        if options.provider == "trt" and self.got[:1] == ["CUDAExecutionProvider"]:
            # TensorRT failed and ORT reopened the session on its fallback list, which drops every provider option
            # (device 0, no memory cap, TF32 on): reopen on our CUDA provider with its options. Still a fallback.
            session, _ = _open(model_path, session_options, chain[1:], options.requested)
            self.got = list(session.get_providers())
        # ORT's run() would otherwise switch a session to its fallback providers, silently, after a failed run.
        session.disable_fallback()
        self.create_s = time.perf_counter() - start
        self.session: ort.InferenceSession | None = session
        self.fell_back = not self.got or self.got[0] != options.requested
        self.fallback_reason = _fallback_reason(options.requested, self.log) if self.fell_back else None
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        bits_types = {f"tensor({name.replace('_', '')})" for name in BITS_ONLY}
        self._bits_outputs = any(o.type in bits_types for o in session.get_outputs())
        self.run_options = ort.RunOptions()  # its terminate flag stops a run in progress (stop_runs_on_interrupt)
        # A failed run raises with ORT's message, which the caller shows in one line; ORT also logged it to stderr
        # at error level (a red line before ours). Creation keeps its log level: its log is the fallback reason.
        self.run_options.log_severity_level = 4
        _LIVE.add(self)

    @property
    def requested(self) -> str:
        return self.options.requested

    @property
    def ran_on(self) -> str:
        """The provider that really runs the graph (its first nodes, when several share it)."""
        return self.got[0] if self.got else "?"

    @property
    def on_gpu(self) -> bool:
        return self.ran_on in GPU_PROVIDERS

    @property
    def device(self) -> tuple[str, int]:
        """Where IOBinding puts inputs and outputs: ORT's (device type, id) of the provider that really runs."""
        return ("cuda", int(self.options.device_id)) if self.on_gpu else ("cpu", 0)

    @property
    def info(self) -> dict[str, Any]:
        """What the reports keep about the session (the keys ONNX eval's `sessions` section shows)."""
        return {
            "requested": self.requested,
            "provider": self.options.provider,
            "got": list(self.got),
            "fell_back": self.fell_back,
            "log": self.log,
            "create_s": self.create_s,
            "fallback_reason": self.fallback_reason,
        }

    def _live(self) -> ort.InferenceSession:
        if self.session is None:
            raise RuntimeError("the ONNX Runtime session was closed")
        return self.session

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Every output, on the host (ORT copies inputs in and outputs out on each call). Feeds are arrays, which may
        be of a BITS_ONLY dtype (ml_dtypes' bfloat16, say), or ``feedable``'s; such outputs come back as float32."""
        session = self._live()
        feeds = self.feedable(feeds)
        if not self._bits_outputs and all(isinstance(v, np.ndarray) for v in feeds.values()):
            return session.run(self.output_names, feeds, self.run_options)
        values = {name: _ort_value(v) if isinstance(v, np.ndarray) else v for name, v in feeds.items()}
        return [_host_array(v) for v in session.run_with_ort_values(self.output_names, values, self.run_options)]

    def feedable(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Feeds as ``run`` passes them to ORT, made once for many runs (timing loops): arrays of a BITS_ONLY dtype
        become OrtValues (a copy of their bits), the others are left as they are."""
        bits = [name for name, v in feeds.items() if isinstance(v, np.ndarray) and v.dtype.name in BITS_ONLY]
        return {name: _ort_value(v) if name in bits else v for name, v in feeds.items()}

    def bind(self, feeds: dict[str, np.ndarray]) -> DeviceBinding:
        """The inputs copied once to the session's device, the outputs left there: runs without host copies."""
        return DeviceBinding(self, feeds)

    @property
    def torch_device(self) -> torch.device:
        """Where torch tensors meet this session: its GPU when it runs on one (and torch sees CUDA), else the CPU."""
        import torch

        kind, index = self.device
        return torch.device(kind, index) if kind == "cuda" and torch.cuda.is_available() else torch.device("cpu")

    def run_torch(
        self, feeds: dict[str, torch.Tensor], output_shapes: dict[str, tuple[int, ...]]
    ) -> list[torch.Tensor]:
        """Run on float32 torch tensors through IOBinding: inputs are read and outputs written where the tensors
        live (the session's GPU when it runs there), with no host round trip."""
        import torch

        device = self.torch_device
        kind, index = device.type, device.index or 0
        binding = self._live().io_binding()
        held = []  # the bound inputs must outlive the run
        for name, tensor in feeds.items():
            t = tensor.to(device, torch.float32).contiguous()
            held.append(t)
            binding.bind_input(name, kind, index, np.float32, list(t.shape), t.data_ptr())
        results = []
        for name, shape in output_shapes.items():
            out = torch.empty(shape, dtype=torch.float32, device=device)
            binding.bind_output(name, kind, index, np.float32, list(shape), out.data_ptr())
            results.append(out)
        if kind == "cuda":
            torch.cuda.current_stream(device).synchronize()  # ORT runs on its own stream
        self._live().run_with_iobinding(binding, self.run_options)
        return results

    def close(self) -> None:
        self.session = None
        _LIVE.discard(self)


_LIVE: weakref.WeakSet[OrtSession] = weakref.WeakSet()  # open sessions, whose runs Ctrl-C stops


@contextlib.contextmanager
def stop_runs_on_interrupt() -> Iterator[None]:
    """Ctrl-C stops a run in progress (call from the main thread). Python handles a signal only between bytecodes,
    and a model's run is one long C++ call (a Loop of 2**62 steps, say), so Ctrl-C would wait for its end: here the
    signal's byte, which the interpreter writes to a wakeup socket the moment it arrives, wakes a thread that sets
    every open session's terminate flag. The run then fails, and the KeyboardInterrupt follows as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data or signal.SIGTERM in data:  # SIGTERM: when the command handles it (engine/cli.py)
                for session in list(_LIVE):
                    session.run_options.terminate = True

    watcher = threading.Thread(target=watch, name="ort-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        writer.close()  # wakes the watcher with end-of-stream
        watcher.join(timeout=1.0)
        reader.close()


class DeviceBinding:
    """numpy feeds bound once on the session's own device (OrtSession.device), outputs bound there too."""

    def __init__(self, session: OrtSession, feeds: dict[str, np.ndarray]) -> None:
        self._session = session._live()
        self._run_options = session.run_options
        kind, index = session.device
        self._binding = self._session.io_binding()
        self._inputs = {name: _ort_value(array, kind, index) for name, array in feeds.items()}
        for name, value in self._inputs.items():
            self._binding.bind_ortvalue_input(name, value)
        for name in session.output_names:
            self._binding.bind_output(name, kind, index)
        self._binding.synchronize_inputs()

    def run(self) -> None:
        """One run; returns when its outputs are ready (so host timing measures the device's work)."""
        self._session.run_with_iobinding(self._binding, self._run_options)
        self._binding.synchronize_outputs()

    def outputs(self) -> list[np.ndarray]:
        """The last run's outputs, copied to the host."""
        return list(self._binding.copy_outputs_to_cpu())


__all__ = [
    "BITS_ONLY",
    "GPU_KEYS",
    "GPU_PROVIDERS",
    "PROVIDERS",
    "DeviceBinding",
    "OrtOptions",
    "OrtSession",
    "SessionError",
    "runtime_limits",
    "stop_runs_on_interrupt",
]
