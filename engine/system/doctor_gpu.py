"""The doctor's checks of the way to the GPU: whether PyTorch's CUDA build, the NVIDIA driver and the device
choice let jobs reach it, and where they do not, why (a CPU-only wheel, one built for a newer CUDA than the driver
runs or with no kernels for the card, GPUs hidden by CUDA_VISIBLE_DEVICES or MIG, CUDA's own start error, a container
started without the GPU, ZeroGPU without `spaces`) with the exact install or setting that fixes it. Its install
recipes and driver fixes serve the ONNX Runtime checks too."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.core.settings import PREFIX, is_zerogpu_space
from engine.system.checks import INFO, OK, PROBLEM, WARNING, Check, Context
from engine.system.telemetry import INSTALL_DRIVER, GpuSample

# The oldest driver that runs each CUDA major version (NVIDIA's minor-version compatibility table).
MIN_DRIVER = {12: "525.60.13", 13: "580"}
# Where CUDA runs but NVML's library is missing: the driver's NVML part was not passed in or installed.
NVML_WITH_CUDA_FIX = (
    "In a container add utility to NVIDIA_DRIVER_CAPABILITIES (compute,utility,video, or all), which passes in "
    "libnvidia-ml.so.1 and nvidia-smi; elsewhere reinstall the NVIDIA driver, whose libnvidia-ml.so.1 is missing."
)
CONTAINER_MARKERS = (Path("/.dockerenv"), Path("/run/.containerenv"))  # Docker's and Podman's
CONTAINER_GPU_FIX = (
    "This container was started without the GPU, and the driver belongs on the host, not in the image: start it with "
    "`docker run --gpus all` (the NVIDIA Container Toolkit on the host: nvidia-ctk runtime configure), with "
    "NVIDIA_VISIBLE_DEVICES=all where it is set; in Kubernetes ask for nvidia.com/gpu in the pod's resources limits."
)
NO_CUDA_DEVICES = ("", "-1", "NoDevFiles")  # CUDA_VISIBLE_DEVICES values that hide every GPU on purpose


def _major_minor(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    try:
        parts = version.split(".")
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def cuda_wheel_tag(cuda_driver_version: str | None) -> str | None:
    """A PyTorch index tag the driver can run, for the fix text; None where no build of the pinned PyTorch can.

    CUDA's minor-version compatibility lets any 12.x (or 13.x) build run on any driver of the
    same major version, so the major version alone decides. PyTorch 2.11 to 2.13 (our pins) are built for CUDA
    12.6 and 13.0 (no longer 11.8).
    """
    mm = _major_minor(cuda_driver_version)
    if mm is None or mm[0] >= 13:
        return "cu130"
    return "cu126" if mm[0] == 12 else None


OLD_DRIVER_FIX = (
    "No build of the PyTorch this project pins runs on a driver for CUDA {cuda}: update the NVIDIA driver (525.60.13 "
    "or newer runs CUDA 12 builds, 580 or newer CUDA 13 builds)"
)


def torch_install(tag: str | None, cuda_driver_version: str | None) -> str:
    """The command that installs this PyTorch's version built for `tag` (pinned, and forced: without
    --force-reinstall pip keeps the installed build of the same version, and without the pin it takes whatever is
    newest on that index)."""
    if tag is None:
        return OLD_DRIVER_FIX.format(cuda=cuda_driver_version)
    try:
        version = "==" + metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        version = ""
    return f"pip install --force-reinstall torch{version} --index-url https://download.pytorch.org/whl/{tag}"


def _arch_runs(arch: str, major: int, minor: int) -> bool:
    """Whether code built for `arch` (torch.cuda.get_arch_list: sm_86, sm_90a, compute_120) runs on a GPU of compute
    capability major.minor: a cubin (sm_XY) on the same major with an equal or higher minor (an sm_XYa or sm_XYf one
    on XY itself only, as a family member at most), PTX (compute_XY) on XY and anything newer, compiled on load."""
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
    if match is None:
        return False
    kind, arch_major, arch_minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if kind == "compute":
        return (major, minor) >= (arch_major, arch_minor)
    if suffix == "a":
        return (major, minor) == (arch_major, arch_minor)
    return major == arch_major and minor >= arch_minor


def check_torch(ctx: Context) -> Check:
    try:
        import torch
    except ImportError as exc:
        return Check("pytorch", PROBLEM, f"PyTorch does not import: {exc}", "pip install -r requirements.txt")
    details = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
    }
    build = f"PyTorch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build'})"
    if is_zerogpu_space() and torch.version.cuda is None:
        return Check(
            "pytorch",
            PROBLEM,
            f"{build} on a ZeroGPU Space: jobs inside @spaces.GPU functions run on the CPU too",
            "Install PyTorch from PyPI (its Linux wheels are CUDA builds): drop any CPU-only pin or "
            "--index-url .../whl/cpu from requirements.txt.",
            details,
        )
    if is_zerogpu_space():  # `spaces` patches torch here to report a card it has not attached: not asked about
        return Check(
            "pytorch",
            OK,
            f"{build}; ZeroGPU (a card attached per job): the GPU is attached only inside @spaces.GPU functions",
            details=details,
        )
    if not torch.cuda.is_available():
        tag = cuda_wheel_tag(ctx.cuda_driver_version)
        install = torch_install(tag, ctx.cuda_driver_version)
        if ctx.gpu_present and torch.version.cuda is None:
            fix = (
                f"Install a CUDA build of PyTorch matching the driver (CUDA {ctx.cuda_driver_version}):\n{install}"
                if tag is not None
                else f"{install}; then install a CUDA build of PyTorch."
            )
            return Check(
                "pytorch", PROBLEM, f"{build}, but NVML sees {', '.join(ctx.nvml_gpus)}: everything runs on the CPU",
                fix, details,
            )  # fmt: skip
        if ctx.gpu_present:
            sees = f"{build}, NVML sees {', '.join(ctx.nvml_gpus)}, but"
            cause = hidden_gpus(ctx) or _driver_older_than_torch(ctx, torch.version.cuda)
            cause = cause or _cuda_start_failure(ctx, (ctx.ort_probe or {}).get("torch_cuda_error"))
            return Check("pytorch", PROBLEM, f"{sees} {cause[0]}", cause[1], details)
        if ctx.pci_gpus:
            fix = "First make the driver work (see nvidia-driver)."
            if torch.version.cuda is None:
                fix += f" Then install a CUDA build of PyTorch: {install}"
            return Check(
                "pytorch",
                WARNING,
                f"{build}; an NVIDIA GPU is on the PCI bus but CUDA is not available: everything runs on the CPU",
                fix,
                details,
            )
        return Check("pytorch", OK, f"{build}; runs on the CPU", details=details)
    devices = []
    problems, fixes = [], []
    arch_list = details["arch_list"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(f"cuda:{i} {props.name} (compute capability {props.major}.{props.minor})")
        if arch_list and not any(_arch_runs(arch, props.major, props.minor) for arch in arch_list):
            problems.append(
                f"{props.name} is sm_{props.major}{props.minor}, but this PyTorch has kernels only for "
                + ", ".join(arch_list)
                + " ('no kernel image is available for execution on the device')"
            )
            current = "cu" + (torch.version.cuda or "").replace(".", "")
            fixes.append(_arch_fix(props.name, (props.major, props.minor), arch_list, current))
    raw = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    cudnn = f"{raw // 10000}.{raw % 10000 // 100}.{raw % 100}" if raw else None
    details.update(devices=devices, cudnn=cudnn)
    found = f"{build}; cuDNN {cudnn or 'not available'}; " + "; ".join(devices)
    if problems:
        return Check(
            "pytorch",
            PROBLEM,
            found + ". " + "; ".join(problems),
            "\n".join(dict.fromkeys(fixes)),
            details,
        )
    if cudnn is None:
        return Check(
            "pytorch",
            WARNING,
            found,
            "cuDNN does not load: reinstall torch so its nvidia-cudnn wheel matches: "
            + torch_install("cu" + (torch.version.cuda or "").replace(".", ""), None),
            details,
        )
    return Check("pytorch", OK, found, details=details)


# The compute capabilities the pinned PyTorch's CUDA builds have kernels for (PyTorch's CUDA support matrix for
# 2.11 to 2.13): cu126 from Maxwell (5.0) to Hopper (9.0), cu130 from Turing (7.5) to Blackwell (12.0, and PTX).
TORCH_BUILD_CAPABILITIES = {"cu126": ((5, 0), (9, 0)), "cu130": ((7, 5), (12, 0))}


def _arch_fix(name: str, capability: tuple[int, int], arch_list: list[str], current: str) -> str:
    """Which PyTorch build has kernels for a GPU this one (index tag `current`, cu126) has none for: a card newer
    than the build needs a newer CUDA build (a Blackwell card on cu126), an older card an older one (a Volta card on
    cu130); a card older than every build the pin offers needs another card."""
    built = [(int(m.group(1)), int(m.group(2))) for a in arch_list if (m := re.fullmatch(r"\D+_(\d+)(\d)\D?", a))]
    newer = bool(built) and capability > max(built)
    for tag, (low, high) in sorted(TORCH_BUILD_CAPABILITIES.items(), reverse=newer):
        if tag != current and low <= capability and (capability <= high or (newer and tag == "cu130")):
            direction = "a newer" if newer else "an older"
            return f"{name}: install the PyTorch built for {direction} CUDA ({tag}): {torch_install(tag, None)}"
    if newer:
        return f"{name}: no build of this PyTorch has kernels for it yet: install a newer PyTorch built for it."
    low = min(bounds[0] for bounds in TORCH_BUILD_CAPABILITIES.values())
    return (
        f"{name}: no build of the PyTorch this project pins has kernels for compute capability "
        f"{capability[0]}.{capability[1]} (they start at {low[0]}.{low[1]}): use a newer GPU, or run on the CPU "
        f"({PREFIX}DEVICE=cpu)."
    )


def hidden_gpus(ctx: Context) -> tuple[str, str] | None:
    """(what, fix) where CUDA is kept from NVML's GPUs on purpose or by mistake: CUDA_VISIBLE_DEVICES hiding them or
    naming GPUs NVML does not know (CUDA stops at the first unknown entry), or MIG mode on with no MIG instance
    given to CUDA (a GPU in MIG mode offers CUDA only its instances); None where neither explains it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    variable = f"CUDA_VISIBLE_DEVICES={visible!r}"
    if visible is not None and visible.strip() in NO_CUDA_DEVICES:
        return f"{variable} hides every GPU from CUDA", "Unset CUDA_VISIBLE_DEVICES, or list the GPUs to use (0,1)."
    if visible is not None:
        uuids = [d.uuid for d in ctx.nvml_devices if d.uuid]
        count = len(ctx.nvml_devices) or len(ctx.nvml_gpus)
        unknown = [
            v
            for v in (v.strip() for v in visible.split(","))
            if not (v.isdigit() and int(v) < count)
            and not v.startswith("MIG-")  # a MIG instance's UUID: NVML lists only whole GPUs here
            and not (v.startswith("GPU-") and any(u.startswith(v) for u in uuids))
        ]
        if unknown:
            return (
                f"{variable} names {', '.join(unknown)}, which NVML does not know (it numbers GPUs 0 to "
                f"{count - 1}): CUDA sees no GPU from the first unknown entry on",
                "Set CUDA_VISIBLE_DEVICES to indices or UUIDs that `nvidia-smi -L` lists, or unset it.",
            )
    mig = [d for d in ctx.nvml_devices if d.mig_mode]
    if mig and not (visible or "").strip().startswith("MIG-"):
        gpus = ", ".join(f"GPU {d.index}" for d in mig)
        return (
            f"{gpus} in MIG mode, and CUDA is given no MIG instance",
            "Create a MIG instance (sudo nvidia-smi mig -cgi <profile> -C) and set CUDA_VISIBLE_DEVICES=MIG-<uuid> "
            "(`nvidia-smi -L` lists them); or disable MIG: "
            + "; ".join(f"sudo nvidia-smi -i {d.index} -mig 0" for d in mig),
        )
    return None


def _torch_driver_fix(ctx: Context, torch_cuda: str) -> str:
    """What lets a PyTorch built for CUDA `torch_cuda` run where the driver runs an older CUDA: its build for this
    driver, where the pinned PyTorch has one, or a newer driver."""
    newer = f"{MIN_DRIVER.get(cuda_major(torch_cuda) or 0, 'a newer one')} or newer"
    tag = cuda_wheel_tag(ctx.cuda_driver_version)
    if tag is None:
        return OLD_DRIVER_FIX.format(cuda=ctx.cuda_driver_version) + "."
    install = torch_install(tag, ctx.cuda_driver_version)
    return f"Install its build for this driver: {install}; or update the NVIDIA driver to {newer}."


def _driver_older_than_torch(ctx: Context, torch_cuda: str | None) -> tuple[str, str] | None:
    """(what, fix) where the driver runs an older CUDA major version than PyTorch is built for (CUDA's "driver
    version is insufficient for CUDA runtime version"); None where it does not, or is not known."""
    driver = cuda_major(ctx.cuda_driver_version)
    if driver is None or torch_cuda is None or (cuda_major(torch_cuda) or 0) <= driver:
        return None
    return (
        f"driver {ctx.driver_version} runs CUDA up to {ctx.cuda_driver_version}, older than the CUDA {torch_cuda} this "
        "PyTorch is built for: CUDA does not start",
        _torch_driver_fix(ctx, torch_cuda),
    )


# CUDA's own words when it does not start for PyTorch (torch.cuda.init()'s error in the probe), with what they mean
# and the fix: each has one common cause that `nvidia-smi` working does not rule out.
CUDA_START_FAILURES = (
    (
        "unknown error",
        "CUDA fails to start with 'unknown error' (999): the nvidia-uvm kernel module is not loaded (no "
        "/dev/nvidia-uvm), or the GPU was suspended and resumed",
        "Load it: sudo modprobe nvidia-uvm (or sudo nvidia-modprobe -u -c 0), so that /dev/nvidia-uvm exists; in a "
        "container it must exist on the host, and --gpus passes it in. After a suspend: sudo rmmod nvidia_uvm && "
        "sudo modprobe nvidia_uvm, or reboot.",
    ),
    (
        "busy or unavailable",
        "CUDA finds every GPU busy or unavailable: a GPU in Exclusive Process compute mode already used by another "
        "process, or in Prohibited mode",
        "`nvidia-smi -q -d COMPUTE` shows the mode: set it back with sudo nvidia-smi -i <index> -c DEFAULT, or stop "
        "the process holding the GPU (`nvidia-smi` lists it).",
    ),
    (
        "no nvidia driver",
        "CUDA finds no driver library (libcuda.so.1) although NVML answers: in a container the CUDA part of the driver "
        "was not passed in",
        "In a container set NVIDIA_DRIVER_CAPABILITIES=compute,utility,video (or all) with --gpus all; on the host "
        "reinstall the NVIDIA driver so that libcuda.so.1 is in the loader's path (ldconfig -p | grep libcuda).",
    ),
)


def _cuda_start_failure(ctx: Context, error: str | None) -> tuple[str, str]:
    """(what, fix) for a CUDA build of PyTorch that sees no GPU where NVML sees some, from CUDA's own error where the
    probe caught it; the error itself, and where to look, otherwise."""
    for words, what, fix in CUDA_START_FAILURES:
        if error and words in error.lower():
            return f"{what} ({error})", fix
    said = f": {error}" if error else ""
    return (
        f"torch.cuda.is_available() is False{said}",
        "Check CUDA_VISIBLE_DEVICES (now "
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}) and that `nvidia-smi` lists the GPU; "
        "`python -c 'import torch; torch.cuda.init()'` prints CUDA's own error.",
    )


def check_driver(ctx: Context) -> Check:
    details = {
        "driver": ctx.driver_version,
        "cuda_driver": ctx.cuda_driver_version,
        "gpus": ctx.nvml_gpus,
        "nvml": ctx.nvml_status,
        "pci_gpus": ctx.pci_gpus,
    }
    if ctx.zero_gpu and not ctx.gpu_present:
        return Check(
            "nvidia-driver",
            INFO,
            "ZeroGPU Space: the GPU is attached only inside @spaces.GPU functions, so none is visible here",
            "Nothing to install: a ZeroGPU card is reached only inside @spaces.GPU functions (see the device check).",
            details,
        )
    unreadable = [d for d in ctx.nvml_devices if d.error is not None]
    if unreadable:
        return Check(
            "nvidia-driver",
            PROBLEM,
            f"driver {ctx.driver_version}; NVML cannot use "
            + "; ".join(f"GPU {d.index} ({d.error})" for d in unreadable)
            + (f"; the others work: {', '.join(ctx.nvml_gpus)}" if ctx.gpu_present else ""),
            "\n".join(_unreadable_gpu_fix(d) for d in unreadable),
            details,
        )
    if ctx.cuda_gpus and not ctx.gpu_present:
        return Check(
            "nvidia-driver",
            WARNING,
            f"CUDA runs on {ctx.cuda_gpus} GPU(s), but NVML does not answer ({_why_no_nvml(ctx)}): jobs use the "
            "GPU, but its telemetry (utilisation, memory, power, processes) and the driver's CUDA version cannot be "
            "read",
            NVML_WITH_CUDA_FIX if ctx.nvml_fix in ("", INSTALL_DRIVER) else ctx.nvml_fix,
            details,
        )
    if ctx.pci_gpus and not ctx.gpu_present:
        return Check(
            "nvidia-driver",
            WARNING,
            f"{ctx.pci_gpus} NVIDIA GPU(s) on the PCI bus, but no driver answers "
            f"({ctx.nvml_status or 'NVML sees no GPU'}): everything runs on the CPU{_container_without_gpus(ctx)}",
            CONTAINER_GPU_FIX if ctx.nvml_fix == INSTALL_DRIVER and _in_container() else ctx.nvml_fix or INSTALL_DRIVER,
            details,
        )
    if not ctx.gpu_present:
        return Check(
            "nvidia-driver",
            INFO,
            "no NVIDIA GPU on this machine: every tab runs on the CPU, more slowly",
            "For GPU speed use a machine with an NVIDIA GPU and its driver (on Hugging Face Spaces: "
            "Settings > Hardware, or ZeroGPU).",
            details,
        )
    driver_cuda = _major_minor(ctx.cuda_driver_version)
    needs = {}
    try:
        import torch

        if torch.version.cuda:
            needs["PyTorch"] = torch.version.cuda
    except ImportError:
        pass
    if ctx.ort_probe and ctx.ort_probe.get("build_cuda_version"):
        needs["onnxruntime-gpu"] = ctx.ort_probe["build_cuda_version"]
    details["wheel_cuda"] = needs
    found = (
        f"driver {ctx.driver_version}, supports CUDA up to {ctx.cuda_driver_version}; "
        f"{len(ctx.nvml_gpus)} GPU(s): {', '.join(ctx.nvml_gpus)}"
    )
    # CUDA minor-version compatibility: a wheel runs on any driver of the same major version or newer.
    too_new = [pkg for pkg, v in needs.items() if driver_cuda and (cuda_major(v) or 0) > driver_cuda[0]]
    if too_new:
        fixes = []
        if "PyTorch" in too_new:
            fixes.append("PyTorch: " + _torch_driver_fix(ctx, needs["PyTorch"]))
        if "onnxruntime-gpu" in too_new:
            fixes.append(ort_driver_fix(needs["onnxruntime-gpu"]))
        return Check(
            "nvidia-driver",
            PROBLEM,
            found + "; but " + "; ".join(f"{pkg} is built for CUDA {needs[pkg]}" for pkg in too_new),
            "\n".join(fixes),
            details,
        )
    return Check("nvidia-driver", OK, found, details=details)


def _in_container() -> bool:
    """A Docker or Podman container, or a Kubernetes pod: where the driver comes from the host, never from the image."""
    return any(marker.exists() for marker in CONTAINER_MARKERS) or "KUBERNETES_SERVICE_HOST" in os.environ


def _container_without_gpus(ctx: Context) -> str:
    """ "; this container ..." where the container is asked for no GPU (NVIDIA_VISIBLE_DEVICES void or none) or just
    was not given one; empty elsewhere, or where NVML failed for a cause of its own."""
    if ctx.nvml_fix != INSTALL_DRIVER or not _in_container():
        return ""
    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() in ("", "void", "none"):
        return f"; this container runs with NVIDIA_VISIBLE_DEVICES={visible!r}, which asks for no GPU"
    return "; this is a container started without GPUs (no driver libraries were passed in)"


def _why_no_nvml(ctx: Context) -> str:
    """NVML's failure where CUDA works: its status without "no NVIDIA GPU visible", which is not so here, and
    without "no driver is installed", where only the NVML part of the driver is missing."""
    if ctx.nvml_fix == INSTALL_DRIVER:
        return "its library, libnvidia-ml.so.1, is not found"
    status = ctx.nvml_status or "it sees no GPU"
    inner = re.fullmatch(r"no NVIDIA GPU visible \((.*)\)", status)
    return inner.group(1) if inner else status


def cuda_major(version: str | None) -> int | None:
    mm = _major_minor(version)
    return None if mm is None else mm[0]


def ort_driver_fix(ort_cuda: str) -> str:
    """What lets onnxruntime-gpu built for CUDA `ort_cuda` run where the driver is older: reinstalling PyTorch does
    nothing for it. The compat package is the build's own CUDA version, as NVIDIA's forward-compatibility guide
    pairs them (its libraries go to /usr/local/cuda-X.Y/compat)."""
    major, minor = _major_minor(ort_cuda) or (0, 0)
    return (
        f"onnxruntime-gpu (CUDA {ort_cuda}) needs driver {MIN_DRIVER.get(major, 'a newer one')} or newer: "
        f"update the NVIDIA driver; or, on a data-centre GPU, install NVIDIA's cuda-compat package for the CUDA it "
        f"was built with (apt install cuda-compat-{major}-{minor}, then put /usr/local/cuda-{major}.{minor}/compat on "
        "LD_LIBRARY_PATH); "
        "or install an onnxruntime-gpu built for the CUDA major version the driver runs "
        "(https://onnxruntime.ai/docs/install/ lists which release and package index has it)."
    )


def _unreadable_gpu_fix(gpu: GpuSample) -> str:
    if gpu.error == "no permission":
        return (
            f"GPU {gpu.index}: give this user access to /dev/nvidia{gpu.index} (in a container, pass that GPU in); "
            f"or hide it with CUDA_VISIBLE_DEVICES."
        )
    return (
        f"GPU {gpu.index}: stop the processes using it and reset it (sudo nvidia-smi -r -i {gpu.index}), or reboot; "
        "`sudo dmesg | grep -i xid` says why it failed (Xid 79: it fell off the bus, check its power and cooling). "
        "Until then hide it with CUDA_VISIBLE_DEVICES."
    )


def spaces_gpu_problem() -> str | None:
    """Why no job can reach ZeroGPU's card here, or None when it can: the card is attached only inside functions
    decorated with @spaces.GPU, so Hugging Face's `spaces` package (preinstalled on ZeroGPU Spaces, never in our
    requirements) must import and offer that decorator. engine/jobs/zerogpu.py asks the same question."""
    try:
        spaces = importlib.import_module("spaces")
    except ImportError as exc:
        return f"the `spaces` package does not import ({exc})"
    except Exception as exc:  # a broken install can fail in any way; the doctor still reports
        return f"`import spaces` fails ({type(exc).__name__}: {exc})"
    if not callable(getattr(spaces, "GPU", None)):
        return "the `spaces` package here has no GPU decorator (it is not Hugging Face's spaces)"
    return None


def _zero_gpu_ready() -> Check:
    """A ZeroGPU Space whose jobs reach the card through @spaces.GPU: ok, said without asking PyTorch about a device
    that is attached only inside those functions."""
    details: dict[str, Any] = {"zero_gpu": True}
    with contextlib.suppress(metadata.PackageNotFoundError):
        details["spaces"] = metadata.version("spaces")
    return Check(
        "device",
        OK,
        "ZeroGPU Space: jobs for cuda:0 run inside @spaces.GPU functions, one call per job asking for the GPU time "
        "its length needs; the GPU is attached only while a job runs, so none is visible here",
        details=details,
    )


def _zero_gpu_unreachable(found: str, details: dict[str, Any], problem: str) -> Check:
    """A ZeroGPU Space whose jobs cannot reach the card: a problem, not the quiet "runs on the CPU" of a machine
    without a GPU."""
    return Check(
        "device",
        PROBLEM,
        f"{found}; ZeroGPU attaches the GPU only inside @spaces.GPU functions, but {problem}: every job runs on "
        "the CPU",
        "ZeroGPU Spaces come with the `spaces` package: check that the Space runs the Gradio SDK on ZeroGPU "
        "hardware and that nothing in requirements.txt replaces `spaces`; or choose a dedicated GPU for the Space "
        "(Settings > Hardware).",
        {**details, "zero_gpu": True, "spaces_problem": problem},
    )


def check_device(ctx: Context) -> Check:
    from engine.core.device import DeviceError, capabilities, resolve_device

    zero_gpu_problem = spaces_gpu_problem() if ctx.zero_gpu else None
    if ctx.zero_gpu and not ctx.gpu_present and zero_gpu_problem is None:
        return _zero_gpu_ready()
    try:
        choice = resolve_device(ctx.settings.device)
    except DeviceError as exc:
        return Check(
            "device",
            PROBLEM,
            str(exc),
            f"Set {PREFIX}DEVICE (or --device) to auto or cpu, or fix the GPU set-up above.",
        )
    caps = capabilities(choice.device)
    found = f"runs on {choice.device} ({caps.name}; {choice.reason}); precisions: {', '.join(caps.precisions)}"
    details = caps.as_dict()
    if not choice.is_cuda and ctx.no_gpu:  # "no GPU" is said once, by nvidia-driver
        precisions = ", ".join(caps.precisions)
        return Check("device", OK, f"runs on {choice.device} ({caps.name}); precisions: {precisions}", details=details)
    if not choice.is_cuda and zero_gpu_problem is not None:
        return _zero_gpu_unreachable(found, details, zero_gpu_problem)
    if not choice.is_cuda and ctx.settings.device == "auto":
        return Check(
            "device",
            WARNING,
            found + "; CPU fallback",
            "See the pytorch and nvidia-driver checks for why no GPU is used.",
            details,
        )
    if not choice.is_cuda or ctx.settings.ray_address is not None:  # a Ray cluster's GPUs are its actors' to use
        return Check("device", OK, found, details=details)
    import torch

    count = torch.cuda.device_count()
    idle = _gpus_left_idle(ctx, count)
    if idle is not None:
        return Check("device", INFO, f"{found}; {idle[0]}", idle[1], details)
    spread = f"; jobs are spread over {count} GPUs (cuda:0 to cuda:{count - 1})" if count > 1 else ""
    return Check("device", OK, found + spread, details=details)


def _gpus_left_idle(ctx: Context, cuda_count: int) -> tuple[str, str] | None:
    """(what, hint) where the jobs use fewer GPUs than the machine has: AVATARBENCH_DEVICE=cuda:N sends every job to
    one, or CUDA_VISIBLE_DEVICES shows CUDA fewer than NVML lists. Information, since either may be on purpose."""
    device, visible = ctx.settings.device, os.environ.get("CUDA_VISIBLE_DEVICES")
    if device.startswith("cuda:") and cuda_count > 1:
        return (
            f"every job goes to {device} ({PREFIX}DEVICE={device}): the other {cuda_count - 1} GPU(s) CUDA sees "
            "stay idle",
            f"Set {PREFIX}DEVICE=auto (or unset it) to spread the jobs over all {cuda_count} GPUs, one worker each.",
        )
    readable = len(ctx.nvml_gpus)
    if visible is not None and 0 < cuda_count < readable:
        return (
            f"CUDA_VISIBLE_DEVICES={visible!r} shows CUDA {cuda_count} of the {readable} GPUs NVML lists: jobs use "
            f"only {'it' if cuda_count == 1 else 'those'}",
            f"If this app should use them all, unset CUDA_VISIBLE_DEVICES or list them all "
            f"({','.join(map(str, range(readable)))}).",
        )
    return None
