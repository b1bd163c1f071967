"""Does each ONNX Runtime execution provider really load? Run as `python -m engine.system.ort_probe`.

`get_available_providers()` lists what the package was *built* with, not what can load:
onnxruntime-gpu lists CUDA and TensorRT on a machine with no CUDA libraries at all, then
silently runs on the CPU. The only honest test is to create a session asking for the provider
and compare `get_providers()` with the request. ORT prints the loader's error on the C-level
stderr, so it is captured at the file-descriptor level. The doctor runs this in a subprocess,
because a broken CUDA install can crash the process that loads it, and because a failed load
followed by `preload_dlls()` must not leave state in the app's own process. It imports PyTorch first and starts
CUDA in it, as a worker does before a CUDA job (engine.jobs.worker.prepare_process): the CUDA libraries torch
loads are then found by onnxruntime too, so the probe reports what a job gets.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_PROVIDER_LIBS = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


def tiny_model_bytes() -> bytes:
    """y = x + x on a (1, 8) float tensor: the smallest graph every provider can take."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """Capture everything written to fd 2 (C and C++ code included) during the block."""
    out = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.write(tmp.read().decode("utf-8", errors="replace"))


def loader_error(provider: str) -> str | None:
    """dlopen the provider library ourselves: the OSError names the first missing dependency."""
    import onnxruntime

    lib = _PROVIDER_LIBS.get(provider)
    if lib is None or not sys.platform.startswith("linux"):
        return None
    path = Path(onnxruntime.__file__).parent / "capi" / lib
    if not path.exists():
        return f"{lib} is not part of this onnxruntime package"
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return str(exc)
    return None


def linked_major(library: Path, dependency: str) -> int | None:
    """The major version of `dependency` (e.g. libnvinfer) that `library` was linked against, from the soname in its
    dynamic string table (libnvinfer.so.10): which TensorRT the installed provider loads, whatever pip offers."""
    try:
        data = library.read_bytes()
    except OSError:
        return None
    found = re.search(rb"\0" + re.escape(dependency.encode()) + rb"\.so\.(\d+)\0", data)
    return int(found.group(1)) if found else None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_lines(text: str) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    important = [ln for ln in lines if any(w in ln for w in ("Error", "error", "Failed", "failed", "cannot"))]
    return "\n".join(important or lines)[-2000:]


def probe_provider(provider: str) -> dict[str, Any]:
    """Create a session asking for `provider`; report what it really got and why not."""
    import numpy as np
    import onnxruntime as ort

    result: dict[str, Any] = {"provider": provider, "loaded": False, "session_providers": [], "error": None}
    if provider not in ort.get_available_providers():
        result["error"] = f"{provider} is not built into this onnxruntime package"
        return result
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keeps the captured text to the point
    try:
        with captured_stderr() as err:
            session = ort.InferenceSession(
                tiny_model_bytes(), sess_options=options, providers=[provider, "CPUExecutionProvider"]
            )
            got = session.get_providers()
            x = np.arange(8, dtype=np.float32).reshape(1, 8)
            (y,) = session.run(None, {"x": x})
    except Exception as exc:
        result["error"] = f"session creation failed: {exc}"
        return result
    result["session_providers"] = got
    result["loaded"] = got[0] == provider and bool(np.allclose(y, 2 * x))
    if not result["loaded"]:
        result["error"] = loader_error(provider) or error_lines(err.getvalue()) or "fell back to CPU"
        result["log"] = error_lines(err.getvalue())
    return result


def import_torch_as_workers_do() -> str | None:
    """PyTorch's version once imported, with CUDA started where it has a GPU; None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        torch.cuda.init()
    return torch.__version__


def torch_cuda_error() -> str | None:
    """Why CUDA does not start for this CUDA build of PyTorch, in CUDA's own words ("CUDA unknown error", "Found no
    NVIDIA driver", "all CUDA-capable devices are busy or unavailable"): the doctor tells the causes apart by them.
    None where CUDA starts, for a CPU-only build, or without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.version.cuda:
        return None
    with warnings.catch_warnings(record=True) as caught:  # is_available() only warns; init() raises the reason
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
        try:
            torch.cuda.init()
        except Exception as exc:
            return " ".join(str(exc).split())[:500]
    said = [str(w.message) for w in caught]
    return " ".join(said[-1].split())[:500] if said else None


def probe_all() -> dict[str, Any]:
    """Probe every GPU provider, PyTorch imported first as in a worker; if CUDA fails, retry once after
    `onnxruntime.preload_dlls()` (which the app never calls: it tells whether the libraries are there at all)."""
    torch_version = import_torch_as_workers_do()  # before onnxruntime, as in a worker
    import onnxruntime as ort

    report: dict[str, Any] = {
        "torch": torch_version,
        "torch_cuda_error": torch_cuda_error(),
        "version": ort.__version__,
        "device": ort.get_device(),
        "available": ort.get_available_providers(),
        "build_cuda_version": _build_cuda_version(),
        "providers": {p: probe_provider(p) for p in GPU_PROVIDERS},
        "preload": None,
        "tensorrt_major": linked_major(
            Path(ort.__file__).parent / "capi" / _PROVIDER_LIBS["TensorrtExecutionProvider"], "libnvinfer"
        ),
    }
    if not report["providers"]["CUDAExecutionProvider"]["loaded"] and hasattr(ort, "preload_dlls"):
        with captured_stderr() as err, contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                ort.preload_dlls()
                preload_error = None
            except Exception as exc:
                preload_error = str(exc)
        report["preload"] = {
            "error": preload_error,
            "messages": error_lines(out.getvalue() + err.getvalue()),
            "providers": {p: probe_provider(p) for p in GPU_PROVIDERS},
        }
    return report


def _build_cuda_version() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    return getattr(info, "cuda_version", None) or None


def main() -> None:
    # onnxruntime prints its own fallback notices on stdout: keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        report = probe_all()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
