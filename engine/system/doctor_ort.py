"""The doctor's ONNX Runtime checks: one package installed (not several sharing the import name, nor the CPU
build beside a GPU), PyTorch and onnxruntime-gpu built for one CUDA major version (they share a worker process), and
each GPU provider loading in the probe's session. A provider that does not load sends ONNX models silently to the
CPU, so each cause (libraries off the loader's path, a provider not built in, a driver too old, no device, TensorRT
missing) is told apart, with its own fix."""

from __future__ import annotations

import contextlib
import re
import sys
from importlib import metadata

from engine.system.checks import OK, PROBLEM, WARNING, Check, Context
from engine.system.doctor_gpu import cuda_major, cuda_wheel_tag, hidden_gpus, ort_driver_fix, torch_install


def check_ort_packages(ctx: Context) -> Check:
    installed = {}
    # Every distribution that installs the `onnxruntime` import package (as onnxruntime's print_debug_info finds
    # them): a fixed list of names misses any new variant installed beside another.
    for dist in metadata.packages_distributions().get("onnxruntime", []):
        name = re.sub(r"[-_.]+", "-", dist).lower()
        with contextlib.suppress(metadata.PackageNotFoundError):
            installed.setdefault(name, metadata.version(dist))
    details = {"installed": installed}
    listing = ", ".join(f"{k} {v}" for k, v in installed.items()) or "none"
    if not installed:
        return Check(
            "onnxruntime-packages",
            PROBLEM,
            "no ONNX Runtime package is installed",
            "pip install onnxruntime-gpu (Linux x86-64 with an NVIDIA GPU) or pip install onnxruntime",
            details,
        )
    if len(installed) > 1:
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in installed else next(iter(installed))
        others = " ".join(k for k in installed if k != keep)
        return Check(
            "onnxruntime-packages",
            PROBLEM,
            f"several ONNX Runtime packages are installed together ({listing}); they share one import name, "
            "so whichever was installed last wins, a common cause of CPU-only runs",
            f"pip uninstall -y {others} {keep} && pip install {keep}=={installed[keep]}",
            details,
        )
    (name,) = installed
    if name == "onnxruntime" and (ctx.gpu_in_use or ctx.pci_gpus) and sys.platform.startswith("linux"):
        return Check(
            "onnxruntime-packages",
            WARNING,
            f"{listing}: the CPU-only build, but an NVIDIA GPU is present",
            f"pip uninstall -y onnxruntime && pip install onnxruntime-gpu=={installed[name]}",  # the same release
            details,
        )
    return Check("onnxruntime-packages", OK, listing, details=details)


_ORT_FIX_CUDA = (
    "ONNX Runtime {version} (CUDA {cuda}) needs the CUDA {major} runtime and cuDNN {cudnn} libraries. Either\n"
    "pip install 'onnxruntime-gpu[cuda,cudnn]'   (NVIDIA's wheels of them), which a worker finds where PyTorch is "
    "built for CUDA {major} too (it imports torch first, and torch loads them); with another PyTorch put their "
    "site-packages/nvidia/*/lib folders on LD_LIBRARY_PATH;\n"
    "or install the CUDA {major} toolkit and cuDNN {cudnn} system-wide and put their lib folders on LD_LIBRARY_PATH."
)


def _cudnn_major(cuda_major: str) -> int:
    """The cuDNN major version onnxruntime-gpu's builds for this CUDA major link: 8 for CUDA 11 (ONNX Runtime's
    requirements table; cuDNN 8 and 9 do not serve each other's builds), 9 for CUDA 12 (from 1.18.1) and 13."""
    return 8 if cuda_major == "11" else 9


def _provider_check(ctx: Context, provider: str, name: str) -> Check:
    if ctx.ort_probe is None:
        return Check(
            name,
            PROBLEM,
            f"could not probe ONNX Runtime: {ctx.ort_probe_error}",
            "Run `python -m engine.system.ort_probe` to see the full error, then reinstall onnxruntime-gpu.",
        )
    probe = ctx.ort_probe
    result = probe["providers"][provider]
    preload = (probe.get("preload") or {}).get("providers", {}).get(provider)
    details = {"available": probe["available"], "probe": result, "after_preload": preload}
    cuda = probe.get("build_cuda_version") or "?"
    major = cuda.split(".")[0]
    fix_cuda = _ORT_FIX_CUDA.format(version=probe["version"], cuda=cuda, major=major, cudnn=_cudnn_major(major))
    if result["loaded"]:
        return Check(
            name, OK, f"{provider} loads and runs (session providers: {result['session_providers']})", details=details
        )
    if ctx.no_gpu:
        # The loader's error stays in the details (--json): without a GPU it is expected, not news.
        if provider in probe["available"] and not result["session_providers"]:
            return Check(
                name,
                PROBLEM,
                f"ONNX Runtime {probe['version']} cannot create a session even on the CPU: {result['error']}",
                "pip install --force-reinstall onnxruntime (or onnxruntime-gpu, whichever is installed)",
                details,
            )
        return Check(name, OK, f"{provider} not used: ONNX models run on the CPU provider", details=details)
    # With a GPU in use a failing provider means silent CPU runs; with a GPU the driver does not reach (see
    # nvidia-driver) or on ZeroGPU outside @spaces.GPU, the libraries it names must still be in place.
    status = PROBLEM if ctx.gpu_in_use else WARNING
    if preload and preload["loaded"]:  # the probe imported torch first, as workers do: jobs get no more than this
        after = f" (PyTorch {probe['torch']} imported first, as in a worker)" if probe.get("torch") else ""
        return Check(
            name,
            status,
            f"{provider} does not load in a worker{after}: {result['error']}; its CUDA libraries are installed "
            "(it loads after onnxruntime.preload_dlls(), which the app does not call) but not on the loader's path",
            f"Set LD_LIBRARY_PATH to the nvidia/*/lib folders in site-packages; or install the PyTorch built for "
            f"CUDA {cuda.split('.')[0]}, whose import loads them: " + torch_install(cuda_wheel_tag(cuda), cuda),
            details,
        )
    if provider not in probe["available"]:
        return Check(
            name,
            status,
            f"{provider} is not built into onnxruntime {probe['version']}",
            f"pip uninstall -y onnxruntime && pip install onnxruntime-gpu=={probe['version']}",
            details,
        )
    found = f"{provider} fails to load, sessions fall back to {result['session_providers']}: {result['error']}"
    cuda_error = _cuda_error(ctx, f"{result['error']}\n{result.get('log') or ''}", cuda)
    if cuda_error is not None:  # the libraries loaded; the driver or the device is what failed
        return Check(name, status, f"{found}; {cuda_error[0]}", cuda_error[1], details)
    fix = fix_cuda
    if provider == "TensorrtExecutionProvider":
        major, trt = cuda.split(".")[0], probe.get("tensorrt_major") or 10
        fix = (
            f"Install TensorRT {trt} for CUDA {major} (pip install 'tensorrt-cu{major}>={trt},<{trt + 1}': "
            f"onnxruntime {probe['version']} links libnvinfer.so.{trt}, and another major version does not load) "
            "and put its lib folder on LD_LIBRARY_PATH; or use the CUDA provider, which needs no TensorRT."
        )
        if probe["providers"]["CUDAExecutionProvider"]["loaded"]:
            status = WARNING  # the CUDA provider still serves the GPU
        else:
            fix += "\nTensorRT also needs what the CUDA provider needs:\n" + fix_cuda
    if ctx.zero_gpu and not ctx.gpu_present:
        fix += (
            "\nOn ZeroGPU this probe runs outside @spaces.GPU, where a missing libcuda.so.1 is expected; "
            "a missing CUDA library (libcublas, libcudnn) is not."
        )
    return Check(name, status, found, fix, details)


def _cuda_error(ctx: Context, text: str, ort_cuda: str) -> tuple[str, str] | None:
    """(what, fix) for the driver's part in a provider's message: 35, the driver is older than the CUDA the package
    was built for; the driver's libcuda.so.1 missing; 100, CUDA sees no device here. None for anything else (a
    missing CUDA or cuDNN library, which pip installs)."""
    if "CUDA failure 35" in text or "driver version is insufficient" in text:
        what = f"the driver (CUDA {ctx.cuda_driver_version or '?'}) is too old for onnxruntime-gpu's CUDA {ort_cuda}"
        return what, ort_driver_fix(ort_cuda)
    if "libcuda.so.1" in text and not (ctx.zero_gpu and not ctx.gpu_present):  # outside @spaces.GPU it is expected
        return (
            "libcuda.so.1 is the NVIDIA driver's own library, which no pip package provides: the driver is not "
            "installed, or this container was not given its CUDA part",
            "In a container start it with --gpus all and compute in NVIDIA_DRIVER_CAPABILITIES (compute,utility,video, "
            "or all); elsewhere install the NVIDIA driver (see nvidia-driver). `ldconfig -p | grep libcuda` shows "
            "whether the loader finds it.",
        )
    if "CUDA failure 100" in text or "no CUDA-capable device" in text:
        hidden = hidden_gpus(ctx)
        if hidden is not None:
            return hidden
        return "CUDA sees no GPU in this process", "See the nvidia-driver and pytorch checks: CUDA finds no device."
    return None


def check_cuda_majors(ctx: Context) -> Check:
    """PyTorch and onnxruntime-gpu share one worker process (torch is imported first): with different CUDA major
    versions each needs its own CUDA libraries, and the ones torch loaded first do not serve onnxruntime."""
    try:
        import torch

        torch_cuda = torch.version.cuda
    except ImportError:
        torch_cuda = None
    ort_cuda = (ctx.ort_probe or {}).get("build_cuda_version")
    details = {"torch_cuda": torch_cuda, "onnxruntime_cuda": ort_cuda}
    both = f"PyTorch is built for CUDA {torch_cuda}, onnxruntime-gpu for CUDA {ort_cuda}"
    if not torch_cuda or not ort_cuda:
        return Check("cuda-majors", OK, "not both CUDA builds: nothing to match", details=details)
    if cuda_major(torch_cuda) == cuda_major(ort_cuda) or ctx.no_gpu:  # without a GPU neither loads CUDA
        return Check("cuda-majors", OK, both, details=details)
    return Check(
        "cuda-majors",
        PROBLEM,
        f"{both}: in one worker process the CUDA libraries torch loads first do not serve onnxruntime",
        f"Install the PyTorch built for CUDA {cuda_major(ort_cuda)}: "
        f"{torch_install(cuda_wheel_tag(ort_cuda), ort_cuda)}"
        f"; or an onnxruntime-gpu built for CUDA {cuda_major(torch_cuda)} (https://onnxruntime.ai/docs/install/).",
        details,
    )


def check_ort_cuda(ctx: Context) -> Check:
    return _provider_check(ctx, "CUDAExecutionProvider", "onnxruntime-cuda")


def check_ort_tensorrt(ctx: Context) -> Check:
    return _provider_check(ctx, "TensorrtExecutionProvider", "onnxruntime-tensorrt")
