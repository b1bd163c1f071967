"""engine.runtimes on the CPU: the registry, the one interface, the runtimes' own refusals, a real run through eager
PyTorch and ONNX Runtime, and the ORT session wrapper (provider options, fallback, IOBinding on its own device)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnxruntime as ort
import torch
from fake_cuda import FakeCuda
from tiny_onnx import B, W, classifier, mlp

import engine.runtimes.ort_session as ort_session
from engine.core.errors import InputError, SetupError
from engine.runtimes.base import Runtime, RuntimeUnavailable
from engine.runtimes.cuda_graphs import CudaGraphsRuntime
from engine.runtimes.ort_cpu import OrtCpuRuntime
from engine.runtimes.ort_cuda import OrtCudaRuntime
from engine.runtimes.ort_session import OrtOptions, OrtSession, SessionError
from engine.runtimes.ort_trt import OrtTrtRuntime
from engine.runtimes.registry import (
    ORT_RUNTIMES,
    REGISTRY,
    RUNTIMES,
    TORCH_RUNTIMES,
    make_runtime,
    runtime_class,
)
from engine.runtimes.torch_compiled import CompiledRuntime
from engine.runtimes.torch_eager import EagerRuntime
from engine.system.gpu_memory import gpu_memory


@dataclass(frozen=True)
class Point:
    """What the sweep's BenchPoint offers a runtime (engine.runtimes.base.RuntimeOptions)."""

    runtime: str = "eager"
    precision: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = True
    compile_mode: str = "default"


class _Mlp(torch.nn.Module):
    """The torch twin of tiny_onnx.mlp's first output: y = Relu(x @ W + B); k is taken and ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = torch.nn.Parameter(torch.from_numpy(W)), torch.nn.Parameter(torch.from_numpy(B))

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w + self.b)


@dataclass
class Model:
    """What a runtime asks of a model (engine.runtimes.base.RuntimeModel)."""

    name: str
    build_torch: Any = None
    onnx_path: Any = None

    @property
    def has_torch(self) -> bool:
        return self.build_torch is not None


@pytest.fixture
def model(tmp_path: Path) -> Model:
    path = mlp(tmp_path / "mlp.onnx")
    return Model("mlp", lambda: _Mlp().eval(), lambda: path)


def _inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 4, generator=g), torch.randint(0, 9, (batch, 1), generator=g)


# ---------------------------------------------------------------------------------------------- registry


def test_a_failed_run_raises_without_ort_logging_it_to_stderr_too(tmp_path: Path, capfd) -> None:
    """The exception carries ORT's message (shown by the caller in one line); the same text also went to stderr as
    a red "[E:onnxruntime...]" line before it."""
    from onnx import TensorProto, helper
    from tiny_onnx import save

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )  # fmt: skip
    session = OrtSession(save(graph, tmp_path / "reshape.onnx"), OrtOptions(intra_op_threads=1))
    with pytest.raises(Exception, match="Reshape"):
        session.run({"x": np.zeros(6, np.float32), "shape": np.array([4], np.int64)})
    assert "onnxruntime" not in capfd.readouterr().err


def test_every_name_maps_to_its_class_in_order() -> None:
    expected = {
        "eager": EagerRuntime,
        "compile": CompiledRuntime,
        "cudagraphs": CudaGraphsRuntime,
        "ort-cpu": OrtCpuRuntime,
        "ort-cuda": OrtCudaRuntime,
        "ort-trt": OrtTrtRuntime,
    }
    assert expected == REGISTRY and tuple(expected) == RUNTIMES
    assert (RUNTIMES[:3], RUNTIMES[3:]) == (TORCH_RUNTIMES, ORT_RUNTIMES)
    assert [REGISTRY[n].provider for n in ORT_RUNTIMES] == ["cpu", "cuda", "trt"]  # type: ignore[attr-defined]
    assert all(runtime_class(name) is cls for name, cls in REGISTRY.items())


def test_an_unknown_runtime_is_refused_with_the_accepted_names(model: Model) -> None:
    with pytest.raises(InputError, match=r"unknown runtime 'tensorflow'; accepted: eager, compile, .*ort-trt"):
        runtime_class("tensorflow")
    with pytest.raises(InputError, match="unknown runtime"):
        make_runtime(model, Point("tvm"), "cpu")


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=list(REGISTRY))
def test_every_runtime_implements_the_base_interface(cls: type[Runtime]) -> None:
    assert issubclass(cls, Runtime) and not inspect.isabstract(cls)
    assert REGISTRY[cls.name] is cls and cls.family in ("torch", "onnxruntime")
    for method in ("check", "load", "set_inputs", "run", "sync", "timed_runs", "output", "close"):
        assert callable(getattr(cls, method)), method


# ---------------------------------------------------------------------------------------------- refusals


def test_runtimes_refuse_what_they_cannot_run(model: Model) -> None:
    assert issubclass(RuntimeUnavailable, SetupError)
    onnx_only, torch_only = Model("onnx-only", onnx_path=model.onnx_path), Model("torch-only", model.build_torch)
    cases = [
        (onnx_only, Point("eager"), "cpu", "is an ONNX model"),
        (model, Point("cudagraphs"), "cpu", "CUDA graphs need a CUDA device"),
        (torch_only, Point("ort-cpu"), "cpu", "has no ONNX file"),
        (model, Point("ort-cuda", "fp16"), "cuda:0", "fp16 only through TensorRT"),
        (model, Point("ort-trt", "bf16"), "cuda:0", "bf16 is not offered"),
        (model, Point("ort-cpu", "bf16"), "cpu", "bf16 is not offered"),
    ]
    for m, point, device, message in cases:
        with pytest.raises(RuntimeUnavailable, match=message):
            make_runtime(m, point, device)
    trt = make_runtime(model, Point("ort-trt", "fp16"), "cuda:1", memory_fraction=0.5)  # built, not loaded
    options = trt.session_options()  # type: ignore[attr-defined]
    assert (options.provider, options.device_id, options.trt_fp16, options.gpu_memory_fraction) == ("trt", 1, True, 0.5)


# ---------------------------------------------------------------------------------------------- real runs


def test_eager_and_ort_cpu_agree_through_the_interface(model: Model) -> None:
    x, k = _inputs()
    expected = np.maximum(x.numpy() @ W + B, 0).astype(np.float64)
    for name in ("eager", "ort-cpu"):
        runtime = make_runtime(model, Point(name), "cpu")
        try:
            runtime.load()
            runtime.set_inputs((x, k))
            runtime.run()
            runtime.sync()
            times = runtime.timed_runs(3)
            assert len(times) == 3 and all(t >= 0 for t in times)
            np.testing.assert_allclose(runtime.output(), expected, rtol=1e-5, atol=1e-6)
            assert not runtime.fell_back and runtime.fallback_reason is None
            assert runtime.ran_on == ("cpu" if name == "eager" else "CPUExecutionProvider")
        finally:
            runtime.close()


def test_ort_runtime_takes_numpy_feeds_by_name(model: Model) -> None:
    x, k = _inputs(2)
    runtime = make_runtime(model, Point("ort-cpu"), "cpu")
    runtime.load()
    runtime.set_inputs({"x": x.numpy(), "k": k.numpy()})
    runtime.run()
    assert runtime.output().shape == (2, 3)
    runtime.close()


def test_ort_runtime_refuses_torch_inputs_that_do_not_match_the_models(model: Model) -> None:
    """A tensor more than the model takes was dropped without a word, and the point measured on the rest."""
    runtime = make_runtime(model, Point("ort-cpu"), "cpu")
    runtime.load()
    with pytest.raises(ValueError, match="zip"):
        runtime.set_inputs((*_inputs(), torch.zeros(3, 1)))
    runtime.close()


def test_ort_cuda_without_cuda_falls_back_loudly_and_still_runs(model: Model) -> None:
    from engine.system.ort_probe import probe_provider

    if probe_provider("CUDAExecutionProvider")["loaded"]:
        pytest.skip("CUDA really loads here: no fallback to observe")
    runtime = make_runtime(model, Point("ort-cuda"), "cuda:0")
    runtime.load()
    assert runtime.fell_back and runtime.ran_on == "CPUExecutionProvider" and runtime.fallback_reason
    runtime.set_inputs(_inputs())
    runtime.run()  # on the CPU, with no device binding
    assert runtime.binding is None and runtime.output().shape == (3, 3)  # type: ignore[attr-defined]
    runtime.close()


def test_the_cuda_providers_own_words_on_the_c_level_stderr_are_the_fallback_reason(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where dlopen names no library, ORT's C++ log (written to file descriptor 2, not through Python) is all there is
    to say why CUDA was not used: the session keeps it rather than say ORT gave no reason."""
    from engine.system.ort_probe import probe_provider

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("a CPU build of onnxruntime has no CUDA provider to fail")
    if probe_provider("CUDAExecutionProvider")["loaded"]:
        pytest.skip("CUDA really loads here: no fallback to observe")
    monkeypatch.setattr(ort_session, "loader_error", lambda name: None)
    session = OrtSession(model.onnx_path(), OrtOptions("cuda"))
    assert session.fell_back and "CUDAExecutionProvider" in session.log  # whichever of ORT's notices it was
    assert session.fallback_reason and session.fallback_reason != "ORT gave no reason"


# ---------------------------------------------------------------------------------------------- the ORT session


def test_session_info_run_and_binding_on_the_cpu(model: Model) -> None:
    session = OrtSession(model.onnx_path(), OrtOptions(intra_op_threads=1))
    info = session.info
    assert list(info) == ["requested", "provider", "got", "fell_back", "log", "create_s", "fallback_reason"]
    assert info["got"] == ["CPUExecutionProvider"] and not info["fell_back"] and info["create_s"] > 0
    assert session.device == ("cpu", 0) and session.input_names == ["x", "k"] and session.output_names == ["y", "k2"]
    feeds = {"x": _inputs()[0].numpy(), "k": _inputs()[1].numpy()}
    y, k2 = session.run(feeds)
    binding = session.bind(feeds)
    binding.run()
    bound_y, bound_k2 = binding.outputs()
    np.testing.assert_array_equal(bound_y, y)
    np.testing.assert_array_equal(bound_k2, k2)
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.run(feeds)


def test_torch_tensors_run_through_iobinding_on_the_cpu(tmp_path: Path) -> None:
    weights = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    session = OrtSession(classifier(tmp_path / "cls.onnx", weights), OrtOptions())
    assert session.torch_device == torch.device("cpu")
    x = torch.rand(5, 4, dtype=torch.float64)  # converted to float32 on the way in
    (logits,) = session.run_torch({"x": x}, {"logits": (5, 6)})
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    np.testing.assert_allclose(logits.numpy(), x.float().numpy() @ weights, rtol=1e-5, atol=1e-6)


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(InputError, match="unknown provider 'tpu'; accepted: cpu, cuda, trt"):
        OrtOptions(provider="tpu")


class _FakeBinding:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def bind_ortvalue_input(self, name: str, value: Any) -> None:
        self.calls.append(("input", name, value.device))

    def bind_output(self, name: str, kind: str, index: int) -> None:
        self.calls.append(("output", name, (kind, index)))

    def synchronize_inputs(self) -> None:
        pass

    def synchronize_outputs(self) -> None:
        pass

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        """A first output and a second, as a network with two outputs answers."""
        return [np.full((2, 3), 1.5, np.float32), np.zeros(1, np.float32)]


class _FakeOrtValue:
    @staticmethod
    def ortvalue_from_numpy(array: np.ndarray, kind: str, index: int) -> Any:
        return SimpleNamespace(array=array, device=(kind, index))


def _fake_ort(
    monkeypatch: pytest.MonkeyPatch,
    got: list[str],
    totals: tuple[int, ...] = (80, 80, 80, 80),
    then_got: list[str] | None = None,
) -> dict:
    """InferenceSession and OrtValue stand-ins that record what they are asked; NVML sees cards of `totals` GiB.
    A session gets `got` providers (a reopened one `then_got`, where given); seen["on_open"](providers), where a
    test sets it, runs inside each session's creation (to print or warn as ORT does)."""
    seen: dict[str, Any] = {"binding": []}

    class FakeSession:
        def __init__(self, path: str, sess_options: Any, providers: list) -> None:
            seen["providers"], seen["options"] = providers, sess_options
            seen.setdefault("opened", []).append(providers)
            seen.get("on_open", lambda providers: None)(providers)
            self.got = got if len(seen["opened"]) == 1 or then_got is None else then_got
            self.fallback = True

        def get_providers(self) -> list[str]:
            return self.got

        def disable_fallback(self) -> None:
            self.fallback = False

        def get_inputs(self) -> list:
            return [SimpleNamespace(name="x", type="tensor(float)")]

        def get_outputs(self) -> list:
            return [SimpleNamespace(name="y", type="tensor(float)")]

        def io_binding(self) -> _FakeBinding:
            return _FakeBinding(seen["binding"])

        def run_with_iobinding(self, binding: _FakeBinding, run_options: Any) -> None:
            seen["bound_runs"] = seen.get("bound_runs", 0) + 1

    def card(total_gib: int) -> SimpleNamespace:
        memory = SimpleNamespace(used=1, total=total_gib * 2**30)
        return SimpleNamespace(uuid=f"GPU-{total_gib}", nvml=SimpleNamespace(nvmlDeviceGetMemoryInfo=lambda: memory),
                               get=lambda fn: fn(), processes=lambda: [])  # fmt: skip

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "OrtValue", _FakeOrtValue)
    monkeypatch.setattr(ort_session, "nvml_source", lambda: SimpleNamespace(devices=[card(t) for t in totals]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return seen


def test_binding_uses_the_sessions_own_device_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug this wrapper fixes: ONNX eval's device-resident figure bound to device 0 whatever the session used."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("cuda", device_id=3, gpu_memory_fraction=0.5))
    assert not session.fell_back and session.on_gpu and session.device == ("cuda", 3)
    (cuda, cuda_options), cpu = seen["providers"]
    assert cuda == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert cuda_options["device_id"] == 3 and cuda_options["use_tf32"] == 0
    assert cuda_options["gpu_mem_limit"] == 40 * 2**30  # half of the card's 80 GiB, read from NVML
    # the arena grows by what is asked, not to the next power of two (which overshoots the cap), and convolutions
    # time every cuDNN algorithm once rather than take a heuristic's pick
    assert cuda_options["arena_extend_strategy"] == "kSameAsRequested"
    assert cuda_options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    session.bind({"x": np.zeros((2, 4), np.float32)})
    assert seen["binding"] == [("input", "x", ("cuda", 3)), ("output", "y", ("cuda", 3))]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU build of PyTorch beside onnxruntime-gpu
    assert session.torch_device == torch.device("cpu")  # torch tensors cannot live on the card: ORT copies them


def test_a_bound_run_returns_only_once_its_outputs_are_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT's GPU run returns when its work is queued: a host timer around binding.run() measures the device's work
    only when the run waits for the outputs."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    runs_when_synchronized: list[int] = []
    monkeypatch.setattr(
        _FakeBinding, "synchronize_outputs", lambda self: runs_when_synchronized.append(seen.get("bound_runs", 0))
    )
    binding = OrtSession("model.onnx", OrtOptions("cuda")).bind({"x": np.zeros((2, 4), np.float32)})
    binding.run()
    assert runs_when_synchronized == [1]  # after the run, once


def test_after_a_fallback_the_binding_stays_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("cuda", device_id=2))
    assert session.fell_back and session.fallback_reason and session.ran_on == "CPUExecutionProvider"
    assert session.device == ("cpu", 0) and session.torch_device == torch.device("cpu")
    session.bind({"x": np.zeros((2, 4), np.float32)})
    assert seen["binding"] == [("input", "x", ("cpu", 0)), ("output", "y", ("cpu", 0))]


def test_tensorrt_options_and_its_engine_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _fake_ort(monkeypatch, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    options = OrtOptions("trt", device_id=1, trt_fp16=True, trt_workspace_gb=2, trt_cache_dir=str(tmp_path))
    session = OrtSession("model.onnx", options)
    assert session.device == ("cuda", 1) and not session.fell_back
    (trt, trt_options), (cuda, _), _ = seen["providers"]
    assert (trt, cuda) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt_options["device_id"] == 1 and trt_options["trt_fp16_enable"] is True
    assert trt_options["trt_max_workspace_size"] == 2 * 2**30
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "fp16") and (tmp_path / "fp16").is_dir()


def test_a_tensorrt_fp32_session_keeps_its_engines_apart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """fp16 is asked for, never assumed; fp32 engines are cached in their own folder, and cached at all."""
    seen = _fake_ort(monkeypatch, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    OrtSession("model.onnx", OrtOptions("trt", trt_cache_dir=str(tmp_path)))
    trt_options = seen["providers"][0][1]
    assert trt_options["trt_fp16_enable"] is False and trt_options["trt_engine_cache_enable"] is True
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "fp32") and (tmp_path / "fp32").is_dir()


def test_the_intra_op_thread_count_reaches_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    OrtSession("model.onnx", OrtOptions(intra_op_threads=3))
    assert seen["options"].intra_op_num_threads == 3


def test_a_tensorrt_failure_reopens_on_our_cuda_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ORT reopens a session whose TensorRT provider failed on [CUDA, CPU] without any provider option (device 0, no
    memory cap, TF32 on): the session is reopened on our CUDA provider, and still reported as a fallback."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("trt", device_id=2, trt_cache_dir=str(tmp_path)))
    first, second = seen["opened"]
    assert first[0][0] == "TensorrtExecutionProvider" and second == first[1:]
    assert second[0][1]["device_id"] == 2 and second[0][1]["use_tf32"] == 0
    assert session.fell_back and session.ran_on == "CUDAExecutionProvider" and session.device == ("cuda", 2)


def test_a_cpu_session_asks_for_the_cpu_provider_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """ort-cpu is the CPU baseline: given a CUDA provider too, onnxruntime-gpu would run it on the GPU."""
    seen = _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("cpu"))
    assert seen["opened"] == [["CPUExecutionProvider"]]
    assert not session.fell_back and session.fallback_reason is None and session.device == ("cpu", 0)


def test_the_memory_cap_is_a_share_of_the_sessions_own_card(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cards of other sizes side by side: device 2's cap comes from device 2's memory, not device 0's."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], totals=(80, 40, 24, 16))
    OrtSession("model.onnx", OrtOptions("cuda", device_id=2, gpu_memory_fraction=0.5))
    assert seen["providers"][0][1]["gpu_mem_limit"] == 12 * 2**30


def _loader_says(monkeypatch: pytest.MonkeyPatch, errors: dict[str, str]) -> None:
    """Every provider built into ORT; dlopen of a provider's library fails with errors[provider], if any."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ort_session.PROVIDERS.values()))
    monkeypatch.setattr(ort_session, "loader_error", lambda name: errors.get(name))


def test_a_provider_not_built_in_is_the_fallback_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("cuda"))
    assert session.fell_back and session.info["fell_back"] is True
    assert session.fallback_reason == "CUDAExecutionProvider is not built into this onnxruntime package"


def test_the_requested_providers_missing_library_is_the_fallback_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The requested provider's dlopen error names the missing library, ahead of ORT's log."""
    seen = _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    seen["on_open"] = lambda providers: print("EP Error: CUDA provider failed to load")
    _loader_says(monkeypatch, {"CUDAExecutionProvider": "libcublasLt.so.12: cannot open shared object file"})
    session = OrtSession("model.onnx", OrtOptions("cuda"))
    assert session.fallback_reason == "libcublasLt.so.12: cannot open shared object file"
    assert session.info["fallback_reason"] == session.fallback_reason


def test_without_a_loader_error_orts_last_words_are_the_fallback_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT prints the TensorRT notice on stdout and warns in Python; the last error line of both is the reason."""
    import warnings

    seen = _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    _loader_says(monkeypatch, {})

    def chatter(providers: list) -> None:
        print("EP Error: first failure while loading")
        warnings.warn("CUDA failed: cudaErrorNoDevice, the last word", RuntimeWarning, stacklevel=1)

    seen["on_open"] = chatter
    session = OrtSession("model.onnx", OrtOptions("cuda"))
    assert "EP Error: first failure while loading" in session.log
    assert session.fallback_reason == "CUDA failed: cudaErrorNoDevice, the last word"


def test_a_fallback_ort_said_nothing_about_still_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    _loader_says(monkeypatch, {})
    session = OrtSession("model.onnx", OrtOptions("cuda"))
    assert session.fell_back and session.fallback_reason == "ORT gave no reason"


def test_tensorrt_fallen_back_to_cuda_keeps_tensorrts_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The reason is TensorRT's, from the first session's log: the reopening on CUDA says nothing about TensorRT."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    _loader_says(monkeypatch, {})

    def notice(providers: list) -> None:
        if providers[0][0] == "TensorrtExecutionProvider":
            print("EP Error: TensorRT EP failed to create: libnvinfer.so.10: cannot open shared object file")

    seen["on_open"] = notice
    session = OrtSession("model.onnx", OrtOptions("trt", device_id=1, trt_cache_dir=str(tmp_path)))
    assert session.fell_back and session.ran_on == "CUDAExecutionProvider" and session.on_gpu
    assert session.fallback_reason.endswith("libnvinfer.so.10: cannot open shared object file")
    assert session.info["requested"] == "TensorrtExecutionProvider"


def test_a_reopened_session_reports_where_it_really_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TensorRT failed, ORT's option-less CUDA worked, ours (device 1) did not: the session runs on the CPU."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], then_got=["CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("trt", device_id=1, trt_cache_dir=str(tmp_path)))
    assert len(seen["opened"]) == 2
    assert session.got == ["CPUExecutionProvider"] and session.fell_back and session.device == ("cpu", 0)


def test_tensorrt_fallen_back_to_the_cpu_is_not_reopened(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ORT kept no GPU provider at all: our CUDA options would not bring one back."""
    seen = _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    session = OrtSession("model.onnx", OrtOptions("trt", trt_cache_dir=str(tmp_path)))
    assert len(seen["opened"]) == 1 and session.fell_back and session.device == ("cpu", 0)


def test_sessions_never_switch_providers_after_a_failed_run(tmp_path: Path) -> None:
    """ORT's run() retries a run that failed in a provider on its fallback list, silently; ours raise instead."""
    session = OrtSession(mlp(tmp_path / "m.onnx"), OrtOptions())
    assert session.session is not None and session.session._enable_fallback is False


def test_sessions_apply_every_graph_optimisation(tmp_path: Path) -> None:
    """The latency a report gives is that of ORT's fully optimised graph (its fusions and layout changes), not of a
    basic pass a user's deployment would beat."""
    session = OrtSession(mlp(tmp_path / "m.onnx"), OrtOptions())
    assert session.session is not None
    chosen = session.session.get_session_options().graph_optimization_level
    assert chosen == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize("dtype", list(ort_session.BITS_ONLY))
def test_each_type_numpy_lacks_goes_in_and_comes_out_as_its_own_onnx_type(tmp_path: Path, dtype: str) -> None:
    """Each ml_dtypes array reaches ORT under its own ONNX type code (float8 e5m2 and its fnuz twin are one byte
    each: a swapped code is a type ORT refuses, or other numbers), and comes back widened to float32."""
    import ml_dtypes
    import onnx
    from onnx import TensorProto, helper

    code = getattr(TensorProto, dtype.replace("_", "").upper())  # BFLOAT16, FLOAT8E5M2FNUZ ...
    x, y = (helper.make_tensor_value_info(name, code, ["N", 4]) for name in "xy")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "same", [x], [y])
    path = tmp_path / f"{dtype}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    values = np.array([[1.5, -2.0, 0.25, 3.0]], getattr(ml_dtypes, dtype))
    (out,) = OrtSession(path, OrtOptions()).run({"x": values})
    assert out.dtype == np.float32 and out.tolist() == [[1.5, -2.0, 0.25, 3.0]]


def test_a_bfloat16_input_reaches_a_model_whose_outputs_numpy_has(tmp_path: Path) -> None:
    """Only the input is of a type numpy lacks: it still goes to ORT as its bits, on the plain run path too."""
    import ml_dtypes
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "widen", [x], [y])
    path = tmp_path / "widen.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    session = OrtSession(path, OrtOptions())
    (out,) = session.run({"x": np.array([[1.5, -2.0]], ml_dtypes.bfloat16)})
    assert out.dtype == np.float32 and out.tolist() == [[1.5, -2.0]]


def test_tensorrt_engines_are_cached_per_model_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT names a cached engine after the model's file and graph names, not its weights: two uploads both saved as
    model.onnx with other weights must not share engines; the same bytes elsewhere do."""
    from engine.core.settings import get_settings

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
        first = classifier(tmp_path / "a" / "model.onnx", np.ones((4, 6), np.float32))
        other = classifier(tmp_path / "b" / "model.onnx", np.full((4, 6), 2, np.float32))
        again = classifier(tmp_path / "c" / "model.onnx", np.ones((4, 6), np.float32))
        paths = [ort_session._trt_cache_path(OrtOptions("trt", trt_fp16=True), m) for m in (first, other, again)]
        assert paths[0] != paths[1] and paths[0] == paths[2]
        root = get_settings().cache_dir / "onnx-trt"
        assert Path(paths[0]) == root / ort_session.model_digest(first) / "fp16" and Path(paths[0]).is_dir()
    finally:
        get_settings.cache_clear()


def test_the_model_digest_covers_external_data(tmp_path: Path) -> None:
    import onnx

    def saved(folder: str, weights: np.ndarray) -> Path:
        (tmp_path / folder).mkdir()
        model = onnx.load(str(classifier(tmp_path / folder / "model.onnx", weights)))
        path = tmp_path / folder / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
        return path

    first, other = saved("a", np.ones((4, 6), np.float32)), saved("b", np.full((4, 6), 2, np.float32))
    assert first.read_bytes() == other.read_bytes()  # the graph file alone is the same
    assert ort_session.model_digest(first) != ort_session.model_digest(other)
    (tmp_path / "junk.onnx").write_bytes(b"<html>not a model</html>")  # keyed by its bytes; the session will say
    assert len(ort_session.model_digest(tmp_path / "junk.onnx")) == 16


def test_a_model_rewritten_in_place_with_weights_of_the_same_size_gets_a_new_digest(tmp_path: Path) -> None:
    """A re-export over the same file (random weights of one architecture: the same size) must not be served the
    TensorRT engines built from the old weights."""
    path = classifier(tmp_path / "model.onnx", np.ones((4, 6), np.float32))
    before = ort_session.model_digest(path)
    size, stamp = path.stat().st_size, path.stat().st_mtime_ns
    classifier(path, np.full((4, 6), 2, np.float32))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a later write, whatever the file system's clock grain
    assert path.stat().st_size == size and ort_session.model_digest(path) != before


@pytest.mark.parametrize("where", ["constant", "subgraph"])
def test_the_model_digest_covers_external_data_of_constants_and_subgraphs(tmp_path: Path, where: str) -> None:
    """Weights kept outside the model may belong to a Constant node or to an If branch's graph, not only to the
    main graph's initializers: their files key the engine cache too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def saved(folder: str, fill: float) -> Path:
        weights = numpy_helper.from_array(np.full((4, 6), fill, np.float32), "Wc")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
        inputs = [x]
        if where == "constant":
            nodes = [
                helper.make_node("Constant", [], ["Wc"], value=weights),
                helper.make_node("MatMul", ["x", "Wc"], ["y"]),
            ]
        else:
            branch = helper.make_graph(
                [helper.make_node("MatMul", ["x", "Wc"], ["b"])],
                "branch",
                [],
                [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 6])],
                [weights],
            )
            nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
            inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))  # the branch alone has weights
        model = helper.make_model(helper.make_graph(nodes, "g", inputs, [y]), ir_version=8,
                                  opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0,
                  convert_attribute=True)  # fmt: skip
        return path

    first, other = saved("a", 1.0), saved("b", 2.0)
    assert first.read_bytes() == other.read_bytes()  # the graph files alone are the same
    assert ort_session.model_digest(first) != ort_session.model_digest(other)


def test_a_session_that_cannot_be_created_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        print("[E:onnxruntime:Default] Load model failed: NoSuchOp")  # ORT's log, kept in the message
        raise RuntimeError("op NoSuchOp is not supported")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    with pytest.raises(SessionError, match="CPUExecutionProvider: session creation failed: op NoSuchOp") as caught:
        OrtSession("model.onnx", OrtOptions())
    assert isinstance(caught.value, SetupError) and "Load model failed: NoSuchOp" in str(caught.value)


# ---------------------------------------------------------------------------------------------- NVML memory


class _FakeDevice:
    """Just what engine.system.gpu_memory reads from engine.system.telemetry's NVML device."""

    def __init__(self, uuid: str, used: int, pids: dict[int, int]):
        self.uuid = uuid
        self.nvml = SimpleNamespace(nvmlDeviceGetMemoryInfo=lambda: SimpleNamespace(used=used, total=80 * 2**30))
        self._pids = pids

    def get(self, fn):
        return fn()

    def processes(self):
        from engine.system.telemetry import GpuProcess

        return [GpuProcess(pid, "python", "C", used) for pid, used in self._pids.items()]


def test_gpu_memory_follows_cuda_visible_devices_and_finds_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    source = SimpleNamespace(
        devices=[
            _FakeDevice("GPU-aaa", 1, {}),
            _FakeDevice("GPU-bbb", 2, {os.getpid(): 512}),
            _FakeDevice("GPU-c", 3, {}),
        ]
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_memory(source, 1) == {"used": 2, "total": 80 * 2**30, "process": 512}
    assert gpu_memory(source, 0)["process"] is None  # not on this device
    assert gpu_memory(source, 7) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    assert gpu_memory(source, 0)["used"] == 3 and gpu_memory(source, 1)["used"] == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert gpu_memory(source, 0)["used"] == 2 and gpu_memory(source, 1) is None
    assert gpu_memory(SimpleNamespace(devices=[]), 0) is None


def test_this_processs_gpu_memory_is_its_own_not_another_processs(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX eval records the memory this process holds: a neighbour listed first on the same GPU is not it; a device
    NVML does not list has no figures."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    shared = _FakeDevice("GPU-aaa", 9, {os.getpid() + 1: 7 * 2**30, os.getpid(): 512})
    assert gpu_memory(SimpleNamespace(devices=[shared]), 0) == {"used": 9, "total": 80 * 2**30, "process": 512}
    assert gpu_memory(SimpleNamespace(devices=[shared]), 1) is None


def test_the_memory_used_is_nvmls_used_figure_not_total_less_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML v2's `used` leaves out the memory the driver reserves, as nvidia-smi shows it: total less free counts it
    (here 1 GiB more)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    figures = SimpleNamespace(used=20 * 2**30, free=59 * 2**30, total=80 * 2**30)
    card = SimpleNamespace(
        uuid="GPU-aaa", nvml=SimpleNamespace(nvmlDeviceGetMemoryInfo=lambda: figures), get=lambda fn: fn(),
        processes=lambda: [],
    )  # fmt: skip
    assert gpu_memory(SimpleNamespace(devices=[card]), 0) == {"used": 20 * 2**30, "total": 80 * 2**30, "process": None}


# ---------------------------------------------------------------------------------------------- the shared helpers


def test_host_timed_reports_milliseconds_of_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host clock's nanoseconds become milliseconds per call (a report in microseconds read 1000x slow)."""
    import engine.runtimes.base as base

    clock = iter([0, 2_500_000, 10_000_000, 10_250_000])
    monkeypatch.setattr(base.time, "perf_counter_ns", lambda: next(clock))
    calls: list[int] = []
    assert base.host_timed(lambda: calls.append(1), 2) == [2.5, 0.25] and len(calls) == 2


def test_cuda_index_reads_the_card_number() -> None:
    from engine.runtimes.base import cuda_index

    assert [cuda_index(d) for d in ("cuda", "cuda:0", "cuda:3", "cpu")] == [0, 0, 3, 0]


def test_first_output_lays_a_dict_out_per_sample_in_key_order() -> None:
    """The LivePortrait networks return dicts: each sample's row holds every tensor, keys sorted, so two runtimes'
    outputs compare sample by sample whatever order their dicts were built in."""
    from engine.runtimes.base import first_output

    kp = torch.arange(12.0).view(2, 2, 3)  # two samples
    scale = torch.tensor([[100.0], [200.0]])
    expected = [[0, 1, 2, 3, 4, 5, 100], [6, 7, 8, 9, 10, 11, 200]]
    for value in ({"kp": kp, "scale": scale}, {"scale": scale, "kp": kp}):
        out = first_output(value)
        assert out.dtype == np.float64 and out.tolist() == expected
    assert first_output((scale.half(), kp)).dtype == np.float64 and first_output([scale, kp]).tolist() == [[100], [200]]
    assert first_output(np.array([1, 2], np.int32)).dtype == np.float64


# ---------------------------------------------------------------------------------------------- decisions


def test_cuda_runtimes_accept_any_card_and_still_refuse_an_onnx_model(model: Model) -> None:
    """A runtime on "cuda:1" runs on CUDA too; CUDA graphs need one of our networks as eager does."""
    graphs = make_runtime(model, Point("cudagraphs"), "cuda:1")  # built, not loaded: no GPU needed
    assert graphs.on_cuda and make_runtime(model, Point("eager"), "cuda").on_cuda
    with pytest.raises(RuntimeUnavailable, match="is an ONNX model"):
        make_runtime(Model("onnx-only", onnx_path=model.onnx_path), Point("cudagraphs"), "cuda:0")


def test_cuda_graphs_warm_up_capture_and_replay_on_the_runtimes_card(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.cuda.graph captures on the current card's stream: on "cuda:1" without that card made current, the
    capture and every replay ran on card 0, capturing and replaying nothing (a GPU with one card cannot show it).
    The warm-up runs go on a side stream before the capture, so cuDNN chooses its algorithms outside it; a run is
    a replay that reads the captured output, never the module again."""
    cuda = FakeCuda(monkeypatch)
    captured_output = torch.ones(3, 3)

    class OnAnyCard(torch.nn.Module):
        def to(self, *args: Any, **kwargs: Any) -> OnAnyCard:  # the CPU has no cuda:1 to move to
            return self

        def forward(self, *inputs: Any) -> torch.Tensor:
            cuda.record("module")
            return captured_output

    class Placed:
        """An input already where the module runs."""

        def to(self, *args: Any) -> Placed:
            return self

    runtime = make_runtime(Model("on-any-card", OnAnyCard), Point("cudagraphs"), "cuda:1")
    runtime.load()
    runtime.set_inputs((Placed(),))
    warm_up, capture = cuda.log[:-1], cuda.log[-1]
    assert warm_up and set(warm_up) == {("module", "cuda:1", "side", False)}
    assert capture == ("module", "cuda:1", "default", True)
    runtime.run()
    runtime.run()
    assert cuda.log[len(warm_up) + 1 :] == [("replay", "cuda:1", "default", False)] * 2
    assert runtime.last is captured_output


def test_cuda_graphs_order_their_streams_and_capture_without_autograd(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The side stream waits for the default one (where the inputs were placed) before the warm-ups, and the default
    one for the warm-ups before the capture: without either wait a run reads inputs or buffers not yet written.
    Warm-ups and capture run under inference mode (with autograd on, the graph keeps every activation), and a
    closed runtime lets the captured graph and its output go."""
    import gc
    import weakref

    cuda = FakeCuda(monkeypatch)
    waits: list[tuple[str, str]] = []
    inference: list[bool] = []
    outputs: list[torch.Tensor] = []

    class Stream:
        def __init__(self, device: Any = None, name: str = "side") -> None:
            self.name = name

        def wait_stream(self, other: Stream) -> None:
            waits.append((self.name, other.name))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(name="default"))

    class OnAnyCard(torch.nn.Module):
        def to(self, *args: Any, **kwargs: Any) -> OnAnyCard:
            return self

        def forward(self, *inputs: Any) -> torch.Tensor:
            cuda.record("module")
            inference.append(torch.is_inference_mode_enabled())
            outputs.append(torch.ones(3))
            return outputs[-1]

    runtime = make_runtime(Model("on-any-card", OnAnyCard), Point("cudagraphs"), "cuda:1")
    runtime.load()
    runtime.set_inputs(())  # places nothing, then warms up and captures
    assert waits == [("side", "default"), ("default", "side")]
    assert inference and all(inference)
    runtime.run()
    captured = weakref.ref(outputs[-1])
    outputs.clear()
    runtime.close()
    gc.collect()
    assert captured() is None


def test_eager_on_cuda_times_each_run_by_its_own_events_on_the_runtimes_card(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each time is its run's start event to its end event, in run order, recorded on the runtime's card (on another
    card's stream the events time nothing of ours), and read after one synchronize at the end: a sync per run
    would take away the launch overlap the eager numbers report."""
    cuda = FakeCuda(monkeypatch)
    clock = {"ms": 0.0}
    run_lengths = iter([2.0, 5.0, 7.0])
    recorded: list[tuple[str, str | None]] = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.at: float | None = None

        def record(self) -> None:
            self.at = clock["ms"]
            recorded.append(("event", cuda.devices[-1] if cuda.devices else None))

        def elapsed_time(self, end: Event) -> float:
            assert self.at is not None and end.at is not None
            return end.at - self.at

    def synchronize(device: Any = None) -> None:
        recorded.append(("synchronize", str(device)))

    class Timed(torch.nn.Module):
        def to(self, *args: Any, **kwargs: Any) -> Timed:  # the CPU has no cuda:1 to move to
            return self

        def forward(self, *inputs: Any) -> torch.Tensor:
            clock["ms"] += next(run_lengths)
            return torch.zeros(1)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    runtime = make_runtime(Model("timed", Timed), Point("eager"), "cuda:1")
    runtime.load()
    runtime.set_inputs(())  # a module that takes nothing: no tensor to move to cuda:1
    assert runtime.timed_runs(3) == [2.0, 5.0, 7.0]
    assert recorded == [("event", "cuda:1")] * 6 + [("synchronize", "cuda:1")]


@pytest.mark.parametrize(
    ("runtime", "precision", "tf32", "fp16"),
    [("ort-cuda", "fp32", False, False), ("ort-cuda", "tf32", True, False), ("ort-trt", "tf32", True, False),
     ("ort-trt", "fp32", False, False), ("ort-trt", "fp16", False, True)],
)  # fmt: skip
def test_ort_sessions_ask_for_tf32_and_fp16_only_at_those_points(
    model: Model, runtime: str, precision: str, tf32: bool, fp16: bool
) -> None:
    """An fp32 point with TF32 on (ORT's default) or TensorRT's fp16 engines would report a precision it did not run."""
    options = make_runtime(model, Point(runtime, precision), "cuda").session_options()  # type: ignore[attr-defined]
    assert (options.cuda_tf32, options.trt_fp16, options.device_id) == (tf32, fp16, 0)


def test_an_ort_runtime_on_a_gpu_binds_its_inputs_on_its_card(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU provider the runs read inputs resident on the session's card, not copied from the host each run."""
    seen = _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    runtime = make_runtime(model, Point("ort-cuda"), "cuda:1")
    runtime.load()
    assert runtime.ran_on == "CUDAExecutionProvider" and not runtime.fell_back
    runtime.set_inputs({"x": np.zeros((2, 4), np.float32)})
    assert runtime.binding is not None  # type: ignore[attr-defined]
    assert seen["binding"] == [("input", "x", ("cuda", 1)), ("output", "y", ("cuda", 1))]
    runtime.run()
    output = runtime.output()
    assert seen["bound_runs"] == 1 and output.tolist() == [[1.5] * 3] * 2  # the first output
    assert output.dtype == np.float64  # as the torch runtimes' outputs are compared


def test_eager_sets_tf32_and_cudnn_autotuning_as_the_point_says(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.core.device as device

    asked: list[dict] = []
    monkeypatch.setattr(device, "apply_backend_flags", lambda **flags: asked.append(flags))
    for point in (Point("eager", "tf32", cudnn_benchmark=False), Point("eager", "fp32", cudnn_benchmark=True)):
        make_runtime(model, point, "cpu").load()
    assert asked == [{"cudnn_benchmark": False, "tf32": True}, {"cudnn_benchmark": True, "tf32": False}]


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_eager_runs_the_module_and_its_inputs_at_the_points_precision(
    model: Model, precision: str, dtype: torch.dtype
) -> None:
    x, k = _inputs()
    runtime = make_runtime(model, Point("eager", precision), "cpu")
    runtime.load()
    runtime.set_inputs((x, k))
    runtime.run()
    assert runtime.last.dtype == dtype and not runtime.last.requires_grad  # type: ignore[attr-defined]
    expected = np.maximum(x.numpy() @ W + B, 0)
    np.testing.assert_allclose(runtime.output(), expected, rtol=2e-2, atol=2e-2)


def test_eager_channels_last_puts_the_module_and_its_images_in_that_layout() -> None:
    conv = Model("conv", lambda: torch.nn.Conv2d(3, 4, 3).eval())
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    runtime = make_runtime(conv, Point("eager", channels_last=True), "cpu")
    runtime.load()
    runtime.set_inputs((images,))
    runtime.run()
    channels_last = torch.channels_last
    assert runtime.module.weight.is_contiguous(memory_format=channels_last)  # type: ignore[attr-defined]
    assert runtime.inputs[0].is_contiguous(memory_format=channels_last)  # type: ignore[attr-defined]
    assert not runtime.inputs[0].is_contiguous()  # type: ignore[attr-defined]


def test_closing_a_torch_runtime_lets_its_module_go(model: Model) -> None:
    """The sweep builds point after point in one process: a closed runtime must not keep its module alive."""
    import gc
    import weakref

    runtime = make_runtime(model, Point("eager"), "cpu")
    runtime.load()
    runtime.set_inputs(_inputs())
    runtime.run()
    module = weakref.ref(runtime.module)  # type: ignore[attr-defined]
    runtime.close()
    gc.collect()
    assert module() is None


def test_closing_a_torch_runtime_on_cuda_hands_its_cached_memory_back(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch keeps a closed runtime's blocks in its cache: the next point (an ORT session with its own arena, or a
    measured memory peak) would find the card's memory still taken."""
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    runtime = make_runtime(model, Point("eager"), "cuda:0")  # built, not loaded: no GPU needed
    runtime.close()
    assert emptied == [True]


def test_the_compile_runtime_runs_the_module_compiled_in_the_points_mode(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[str] = []

    def fake_compile(module: torch.nn.Module, mode: str) -> Any:
        def run(*inputs: torch.Tensor) -> torch.Tensor:
            compiled.append(mode)
            return module(*inputs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    runtime = make_runtime(model, Point("compile", compile_mode="max-autotune"), "cpu")
    runtime.load()
    runtime.set_inputs(_inputs())
    runtime.run()
    assert compiled == ["max-autotune"] and runtime.output().shape == (3, 3)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_each_compile_mode_a_sweep_offers_reaches_torch_compile(
    mode: str, model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile's documented modes, asked for as a user does (a sweep request), each compiled in: a mode
    dropped or misspelt in COMPILE_MODES was refused, or measured in another mode under its label."""
    from engine.bench.config import SweepRequest

    compiled: list[str] = []

    def fake_compile(module: torch.nn.Module, mode: str) -> torch.nn.Module:
        compiled.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    request = SweepRequest.build({"compile": "on", "compile_mode": mode, "device": "cpu", "batch": "1"})
    (point,) = request.plan(has_gpu=False).points
    runtime = make_runtime(model, point, "cpu")
    runtime.load()
    runtime.close()
    assert (point.runtime, compiled) == ("compile", [mode])


def test_closing_an_ort_runtime_closes_its_session(model: Model) -> None:
    """The session's arena (on a GPU, its share of the card) is released at close, not when Python collects it."""
    import gc
    import weakref

    runtime = make_runtime(model, Point("ort-cpu"), "cpu")
    runtime.load()
    session = runtime.session  # type: ignore[attr-defined]
    runtime.set_inputs(_inputs())
    fed = weakref.ref(runtime.feeds["x"])  # type: ignore[attr-defined]
    runtime.close()
    gc.collect()
    assert fed() is None  # the inputs go with the session
    with pytest.raises(RuntimeError, match="closed"):
        session.run({"x": np.zeros((1, 4), np.float32), "k": np.zeros((1, 1), np.int64)})
    with pytest.raises(RuntimeError, match=r"ort-cpu: load\(\) first"):
        runtime.set_inputs(_inputs())
