"""The GPU doctor: why the GPU is (not) being used, and the exact fix.

Each check looks at one layer (Python, PyTorch and CUDA, the NVIDIA driver, ONNX Runtime's
packages and providers, video encoders, disk, settings) and returns a status, what it found
and what to do. A check that itself crashes becomes a "problem" naming the crash, so the
report always comes back whole.

Quiet where nothing is wrong: on a machine with no NVIDIA GPU at all (none through NVML, none on the
PCI bus, not a ZeroGPU Space) running on the CPU is the expected state, so the doctor says "no GPU"
once, as information, and keeps its install recipes for machines where a GPU exists but is not used.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.core.settings import DOCUMENTED, PREFIX, Settings, is_zerogpu_space, settings_despite_bad_values
from engine.system.checks import INFO, OK, PROBLEM, WARNING, Check, DoctorReport, worst
from engine.system.gpu_state import gpu_findings, gpu_summary, own_pids
from engine.system.telemetry import INSTALL_DRIVER, GpuHealth, GpuSample, NvmlSource

PCI_DEVICES = Path("/sys/bus/pci/devices")
NVIDIA_PCI_VENDOR = "0x10de"
log = logging.getLogger(__name__)
MIN_FREE_BYTES = 5 * 2**30
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


# ---------------------------------------------------------------------------- context


@dataclass
class _Context:
    """Facts several checks need, gathered once."""

    settings: Settings
    nvml_gpus: list[str]
    nvml_status: str
    driver_version: str | None
    cuda_driver_version: str | None
    ort_probe: dict[str, Any] | None = None
    ort_probe_error: str | None = None
    pci_gpus: int = 0  # NVIDIA GPUs the kernel lists on the PCI bus, driver or not
    settings_problems: list[str] = field(default_factory=list)  # variables left at their defaults for this report
    nvml_devices: list[GpuSample] = field(default_factory=list)  # every GPU NVML numbers, those it cannot read too
    nvml_fix: str = ""  # the fix for nvml_status's cause, where NVML did not start
    cuda_gpus: int = 0  # GPUs PyTorch's CUDA runs on in this process, whatever NVML says
    gpu_states: list[tuple[GpuSample, GpuHealth]] = field(default_factory=list)  # each readable GPU, read in full

    @property
    def gpu_present(self) -> bool:
        return bool(self.nvml_gpus)

    @property
    def zero_gpu(self) -> bool:
        return is_zerogpu_space()

    @property
    def no_gpu(self) -> bool:
        """No NVIDIA GPU anywhere: the CPU is the expected device, not a fault with a recipe."""
        return not self.gpu_present and not self.pci_gpus and not self.zero_gpu and not self.cuda_gpus

    @property
    def gpu_in_use(self) -> bool:
        """A GPU that jobs reach (NVML sees it, or CUDA runs on it without NVML): a provider that fails there means
        silent CPU runs."""
        return self.gpu_present or bool(self.cuda_gpus)


def _gather_nvml() -> dict[str, Any]:
    """NVML's facts, as _Context's fields: `nvml_gpus` names only the GPUs it can read."""
    source = NvmlSource()
    devices = [GpuSample(d.index, d.name, d.uuid, mig_mode=d.mig_mode, error=d.error) for d in source.devices]
    return {
        "nvml_gpus": [d.name for d in devices if d.error is None],
        "nvml_status": source.status,
        "driver_version": source.driver_version,
        "cuda_driver_version": source.cuda_driver_version,
        "nvml_devices": devices,
        "nvml_fix": source.fix,
        "gpu_states": _gpu_states(source),
    }


def _gpu_states(source: NvmlSource) -> list[tuple[GpuSample, GpuHealth]]:
    """Every readable GPU's full sample and health; a GPU whose reads fail is left to the driver check."""
    states = []
    for device in source.devices:
        if device.error is None:
            try:
                states.append((device.sample(), device.health()))
            except Exception:  # an NVML binding without some call: that GPU's state is not judged
                log.debug("cannot read GPU %d's state", device.index, exc_info=True)
    return states


def _nvidia_on_pci(devices: Path = PCI_DEVICES) -> int:
    """NVIDIA display and 3D controllers (PCI class 0x03....) in sysfs: a GPU that is there even when no driver
    answers (e.g. a container started without `--gpus all`). 0 where sysfs is absent (macOS, Windows)."""
    count = 0
    with contextlib.suppress(OSError):
        for device in devices.iterdir():
            with contextlib.suppress(OSError):
                vendor = (device / "vendor").read_text().strip().lower()
                kind = (device / "class").read_text().strip().lower()
                count += vendor == NVIDIA_PCI_VENDOR and kind.startswith("0x03")
    return count


def _cuda_gpus() -> int:
    """The GPUs PyTorch's CUDA runs on here; 0 without PyTorch or CUDA, and on ZeroGPU, where `spaces` makes PyTorch
    report a card it has not attached."""
    if is_zerogpu_space():
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken PyTorch is the pytorch check's to report
        return 0


def run_ort_probe(timeout_s: float = 180.0) -> tuple[dict[str, Any] | None, str | None]:
    """Run engine.system.ort_probe in a subprocess: (report, None) or (None, why it failed)."""
    root = Path(__file__).resolve().parents[2]  # the repository root, above engine/
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "engine.system.ort_probe"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=root,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"the provider probe did not finish in {timeout_s:.0f}s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return None, f"the provider probe exited with code {proc.returncode}: " + " | ".join(tail)
    if proc.stderr.strip():  # loader chatter outside the captured session: kept for debugging, not shown
        log.debug("provider probe stderr:\n%s", proc.stderr.strip()[-4000:])
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), None
    except (json.JSONDecodeError, IndexError):
        return None, "the provider probe printed no report: " + proc.stdout[-500:]


def _major_minor(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    try:
        parts = version.split(".")
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def _cuda_wheel_tag(cuda_driver_version: str | None) -> str | None:
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


def _torch_install(tag: str | None, cuda_driver_version: str | None) -> str:
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


# ---------------------------------------------------------------------------- checks


def check_python(ctx: _Context) -> Check:
    version = platform.python_version()
    found = f"Python {version} ({platform.python_implementation()}) on {platform.system()} {platform.machine()}"
    in_venv = sys.prefix != sys.base_prefix
    return Check("python", OK, found, details={"executable": sys.executable, "virtualenv": in_venv})


def check_torch(ctx: _Context) -> Check:
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
        tag = _cuda_wheel_tag(ctx.cuda_driver_version)
        install = _torch_install(tag, ctx.cuda_driver_version)
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
            cause = _hidden_gpus(ctx) or _driver_older_than_torch(ctx, torch.version.cuda)
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
            + _torch_install("cu" + (torch.version.cuda or "").replace(".", ""), None),
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
            return f"{name}: install the PyTorch built for {direction} CUDA ({tag}): {_torch_install(tag, None)}"
    if newer:
        return f"{name}: no build of this PyTorch has kernels for it yet: install a newer PyTorch built for it."
    low = min(bounds[0] for bounds in TORCH_BUILD_CAPABILITIES.values())
    return (
        f"{name}: no build of the PyTorch this project pins has kernels for compute capability "
        f"{capability[0]}.{capability[1]} (they start at {low[0]}.{low[1]}): use a newer GPU, or run on the CPU "
        f"({PREFIX}DEVICE=cpu)."
    )


def _hidden_gpus(ctx: _Context) -> tuple[str, str] | None:
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


def _torch_driver_fix(ctx: _Context, torch_cuda: str) -> str:
    """What lets a PyTorch built for CUDA `torch_cuda` run where the driver runs an older CUDA: its build for this
    driver, where the pinned PyTorch has one, or a newer driver."""
    newer = f"{MIN_DRIVER.get(_major(torch_cuda) or 0, 'a newer one')} or newer"
    tag = _cuda_wheel_tag(ctx.cuda_driver_version)
    if tag is None:
        return OLD_DRIVER_FIX.format(cuda=ctx.cuda_driver_version) + "."
    install = _torch_install(tag, ctx.cuda_driver_version)
    return f"Install its build for this driver: {install}; or update the NVIDIA driver to {newer}."


def _driver_older_than_torch(ctx: _Context, torch_cuda: str | None) -> tuple[str, str] | None:
    """(what, fix) where the driver runs an older CUDA major version than PyTorch is built for (CUDA's "driver
    version is insufficient for CUDA runtime version"); None where it does not, or is not known."""
    driver = _major(ctx.cuda_driver_version)
    if driver is None or torch_cuda is None or (_major(torch_cuda) or 0) <= driver:
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


def _cuda_start_failure(ctx: _Context, error: str | None) -> tuple[str, str]:
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


def check_driver(ctx: _Context) -> Check:
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
    too_new = [pkg for pkg, v in needs.items() if driver_cuda and (_major(v) or 0) > driver_cuda[0]]
    if too_new:
        fixes = []
        if "PyTorch" in too_new:
            fixes.append("PyTorch: " + _torch_driver_fix(ctx, needs["PyTorch"]))
        if "onnxruntime-gpu" in too_new:
            fixes.append(_ort_driver_fix(needs["onnxruntime-gpu"]))
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


def _container_without_gpus(ctx: _Context) -> str:
    """ "; this container ..." where the container is asked for no GPU (NVIDIA_VISIBLE_DEVICES void or none) or just
    was not given one; empty elsewhere, or where NVML failed for a cause of its own."""
    if ctx.nvml_fix != INSTALL_DRIVER or not _in_container():
        return ""
    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() in ("", "void", "none"):
        return f"; this container runs with NVIDIA_VISIBLE_DEVICES={visible!r}, which asks for no GPU"
    return "; this is a container started without GPUs (no driver libraries were passed in)"


def _why_no_nvml(ctx: _Context) -> str:
    """NVML's failure where CUDA works: its status without "no NVIDIA GPU visible", which is not so here, and
    without "no driver is installed", where only the NVML part of the driver is missing."""
    if ctx.nvml_fix == INSTALL_DRIVER:
        return "its library, libnvidia-ml.so.1, is not found"
    status = ctx.nvml_status or "it sees no GPU"
    inner = re.fullmatch(r"no NVIDIA GPU visible \((.*)\)", status)
    return inner.group(1) if inner else status


def _major(version: str | None) -> int | None:
    mm = _major_minor(version)
    return None if mm is None else mm[0]


def _ort_driver_fix(ort_cuda: str) -> str:
    """What lets onnxruntime-gpu built for CUDA `ort_cuda` run where the driver is older: reinstalling PyTorch does
    nothing for it."""
    major = _major(ort_cuda)
    return (
        f"onnxruntime-gpu (CUDA {ort_cuda}) needs driver {MIN_DRIVER.get(major or 0, 'a newer one')} or newer: "
        f"update the NVIDIA driver; or, on a data-centre GPU, install NVIDIA's cuda-compat package for CUDA "
        f"{major} (apt install cuda-compat-{major}-0, then put /usr/local/cuda-{major}.0/compat on LD_LIBRARY_PATH); "
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


def check_device(ctx: _Context) -> Check:
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


def _gpus_left_idle(ctx: _Context, cuda_count: int) -> tuple[str, str] | None:
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


def check_ort_packages(ctx: _Context) -> Check:
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
            "pip uninstall -y onnxruntime && pip install onnxruntime-gpu",
            details,
        )
    return Check("onnxruntime-packages", OK, listing, details=details)


_ORT_FIX_CUDA = (
    "ONNX Runtime {version} (CUDA {cuda}) needs the CUDA {major} runtime and cuDNN 9 libraries. Either\n"
    "pip install 'onnxruntime-gpu[cuda,cudnn]'   (NVIDIA's wheels of them), which a worker finds where PyTorch is "
    "built for CUDA {major} too (it imports torch first, and torch loads them); with another PyTorch put their "
    "site-packages/nvidia/*/lib folders on LD_LIBRARY_PATH;\n"
    "or install the CUDA {major} toolkit and cuDNN 9 system-wide and put their lib folders on LD_LIBRARY_PATH."
)


def _provider_check(ctx: _Context, provider: str, name: str) -> Check:
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
    fix_cuda = _ORT_FIX_CUDA.format(version=probe["version"], cuda=cuda, major=cuda.split(".")[0])
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
            f"CUDA {cuda.split('.')[0]}, whose import loads them: " + _torch_install(_cuda_wheel_tag(cuda), cuda),
            details,
        )
    if provider not in probe["available"]:
        return Check(
            name,
            status,
            f"{provider} is not built into onnxruntime {probe['version']}",
            "pip uninstall -y onnxruntime && pip install onnxruntime-gpu",
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


def _cuda_error(ctx: _Context, text: str, ort_cuda: str) -> tuple[str, str] | None:
    """(what, fix) for the driver's part in a provider's message: 35, the driver is older than the CUDA the package
    was built for; the driver's libcuda.so.1 missing; 100, CUDA sees no device here. None for anything else (a
    missing CUDA or cuDNN library, which pip installs)."""
    if "CUDA failure 35" in text or "driver version is insufficient" in text:
        what = f"the driver (CUDA {ctx.cuda_driver_version or '?'}) is too old for onnxruntime-gpu's CUDA {ort_cuda}"
        return what, _ort_driver_fix(ort_cuda)
    if "libcuda.so.1" in text and not (ctx.zero_gpu and not ctx.gpu_present):  # outside @spaces.GPU it is expected
        return (
            "libcuda.so.1 is the NVIDIA driver's own library, which no pip package provides: the driver is not "
            "installed, or this container was not given its CUDA part",
            "In a container start it with --gpus all and compute in NVIDIA_DRIVER_CAPABILITIES (compute,utility,video, "
            "or all); elsewhere install the NVIDIA driver (see nvidia-driver). `ldconfig -p | grep libcuda` shows "
            "whether the loader finds it.",
        )
    if "CUDA failure 100" in text or "no CUDA-capable device" in text:
        hidden = _hidden_gpus(ctx)
        if hidden is not None:
            return hidden
        return "CUDA sees no GPU in this process", "See the nvidia-driver and pytorch checks: CUDA finds no device."
    return None


def check_cuda_majors(ctx: _Context) -> Check:
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
    if _major(torch_cuda) == _major(ort_cuda) or ctx.no_gpu:  # without a GPU neither loads CUDA
        return Check("cuda-majors", OK, both, details=details)
    return Check(
        "cuda-majors",
        PROBLEM,
        f"{both}: in one worker process the CUDA libraries torch loads first do not serve onnxruntime",
        f"Install the PyTorch built for CUDA {_major(ort_cuda)}: {_torch_install(_cuda_wheel_tag(ort_cuda), ort_cuda)}"
        f"; or an onnxruntime-gpu built for CUDA {_major(torch_cuda)} (https://onnxruntime.ai/docs/install/).",
        details,
    )


def check_ort_cuda(ctx: _Context) -> Check:
    return _provider_check(ctx, "CUDAExecutionProvider", "onnxruntime-cuda")


def check_ort_tensorrt(ctx: _Context) -> Check:
    return _provider_check(ctx, "TensorrtExecutionProvider", "onnxruntime-tensorrt")


def check_gpu_state(ctx: _Context) -> Check:
    """What keeps a working GPU from a job's full speed or memory (engine/system/gpu_state.py's rules)."""
    if not ctx.gpu_states:
        return Check("gpu-state", OK, "nothing to check: NVML reads no card here")
    own, findings = own_pids(), []
    for gpu, health in ctx.gpu_states:
        findings += gpu_findings(gpu, health, ctx.settings.gpu_memory_fraction, own)
    details = {"gpus": [{**asdict(gpu), "health": asdict(health)} for gpu, health in ctx.gpu_states]}
    if not findings:
        return Check("gpu-state", OK, "; ".join(gpu_summary(g, h) for g, h in ctx.gpu_states), details=details)
    status = worst([f[0] for f in findings])
    return Check("gpu-state", status, "; ".join(f[1] for f in findings), "\n".join(f[2] for f in findings), details)


def check_video(ctx: _Context) -> Check:
    try:
        import av
    except ImportError as exc:
        return Check("video-encoders", PROBLEM, f"PyAV does not import: {exc}", "pip install av")
    from engine.core.media import available_encoders, probe_encoder, probe_nvdec

    listed = available_encoders()
    nvenc = probe_encoder("h264_nvenc")  # the probes keep FFmpeg's own lines off the terminal; errors carry them
    x264 = probe_encoder("libx264")
    nvdec = probe_nvdec()
    details = {
        "pyav": av.__version__,
        "listed": listed,
        "ffmpeg_cli": shutil.which("ffmpeg"),
        "h264_nvenc": asdict(nvenc),
        "libx264": asdict(x264),
        "nvdec": asdict(nvdec),
    }
    found = f"PyAV {av.__version__}; encoders listed: {', '.join(listed) or 'none'}; "
    decode = "; NVDEC decodes" if nvdec.ran_on == "nvdec" else f"; NVDEC does not decode ({nvdec.reason})"
    video_in_docker = "in Docker add NVIDIA_DRIVER_CAPABILITIES=compute,utility,video"
    if nvenc.works and nvdec.ran_on == "nvdec":
        return Check("video-encoders", OK, found + "NVENC (h264_nvenc) encodes" + decode, details=details)
    if x264.works and (ctx.no_gpu or ctx.zero_gpu):  # NVENC's error stays in the details: no GPU, or ZeroGPU's
        return Check("video-encoders", OK, f"PyAV {av.__version__}; libx264 encodes on the CPU", details=details)
    if nvenc.works:
        fix = f"Videos are decoded on the CPU. NVDEC needs the driver's libnvcuvid.so.1; {video_in_docker}."
        return Check("video-encoders", WARNING, found + "NVENC (h264_nvenc) encodes" + decode, fix, details)
    why = f"NVENC does not work ({nvenc.error})" + decode
    if x264.works:
        fix = (
            "Videos are encoded with libx264 on the CPU. NVENC needs an NVIDIA GPU with an encoder (not "
            "A100/H100/H200, which decode on NVDEC but have no encoder) and the driver's libnvidia-encode.so; "
            f"NVDEC the driver's libnvcuvid.so.1; {video_in_docker}."
        )
        return Check("video-encoders", WARNING, found + why + "; libx264 works", fix, details)
    return Check(
        "video-encoders",
        PROBLEM,
        found + why + f"; libx264 fails too ({x264.error})",
        "pip install --force-reinstall av (its wheels bundle FFmpeg with libx264)",
        details,
    )


def _dir_status(path: Path) -> tuple[bool, int | None, str]:
    """Whether the folder can be written (made where missing), its disk's free bytes and why not; a folder this user
    may not enter is an answer ("Permission denied"), not a failure of the check."""
    probe, free = path, None
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free if probe.exists() else None
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        return True, free, ""
    except OSError as exc:
        return False, free, str(exc)


def check_disk(ctx: _Context) -> Check:
    s = ctx.settings
    paths = {"data": s.data_dir, "weights": s.weights_dir, "cache": s.cache_dir, "outputs": s.outputs_dir}
    details, problems, low = {}, [], []
    for label, path in paths.items():
        writable, free, error = _dir_status(path)
        details[label] = {"dir": str(path), "writable": writable, "free_bytes": free}
        if not writable:
            problems.append(f"{label} dir {path} is not writable ({error})")
        elif free is not None and free < MIN_FREE_BYTES:
            low.append(f"{label} dir {path} has only {free / 2**30:.1f} GiB free")
    free_data = details["data"]["free_bytes"]
    found = f"data dir {s.data_dir} ({free_data / 2**30:.1f} GiB free)" if free_data else f"data dir {s.data_dir}"
    if problems:
        return Check(
            "disk",
            PROBLEM,
            "; ".join(problems),
            f"Point {PREFIX}DATA_DIR (and {PREFIX}WEIGHTS_DIR) at a writable folder.",
            details,
        )
    if low:
        return Check(
            "disk",
            WARNING,
            "; ".join(low),
            f"Free space, or point {PREFIX}DATA_DIR at a larger disk: model weights, TensorRT "
            "engine caches and output videos need several GiB.",
            details,
        )
    return Check("disk", OK, found + "; all folders writable", details=details)


def check_settings(ctx: _Context) -> Check:
    s = ctx.settings
    details = s.as_dict()
    found = (
        f"device {s.device}, GPU memory fraction {s.gpu_memory_fraction}, uploads up to {s.max_upload_mb} MiB, "
        f"telemetry every {s.telemetry_interval_s}s"
    )
    unknown = f"; unknown variables: {', '.join(sorted(s.extra))}" if s.extra else ""
    if ctx.settings_problems:
        return Check(
            "settings",
            PROBLEM,
            "; ".join(ctx.settings_problems)
            + " (this report used the defaults instead; the app would not start)"
            + unknown,
            "Fix or unset these variables" + (" and check the unknown ones' spelling." if unknown else "."),
            details,
        )
    if s.extra:
        return Check(
            "settings",
            WARNING,
            found + unknown,
            "Check the spelling; known variables: " + ", ".join(PREFIX + k for k in DOCUMENTED),
            details,
        )
    return Check("settings", OK, found, details=details)


def check_weights(ctx: _Context) -> Check:
    from engine.core.errors import InputError
    from engine.core.weights import S3FD, WAV2LIP, WeightsError, hub_reference, resolve, where_to_put

    found, missing, broken = [], [], []
    for model in (WAV2LIP, S3FD):
        reference = str(getattr(ctx.settings, model.key) or "")
        try:
            if reference.startswith("hf:"):  # never fetched here: resolving it downloaded the file (416 MB)
                hub_reference(reference)
                found.append(f"{model.filenames[0]}: {reference} (from the Hub when a run first needs it)")
                continue
            path = resolve(model, ctx.settings)
        except (WeightsError, InputError) as exc:  # a path that is not there, an hf: reference of another shape
            broken.append(str(exc))
            continue
        (found if path else missing).append(f"{model.filenames[0]}: {path}" if path else model)
    settings = ctx.settings
    for variable, configured in (
        ("LIVEPORTRAIT_DIR", settings.liveportrait_dir),
        ("MUSETALK_DIR", settings.musetalk_dir),
    ):
        folder = Path(configured).expanduser() if configured and not configured.startswith("hf:") else None
        if folder is not None and not folder.is_dir():  # refused only when a run needs it, then as the run's error
            state = "is a file" if folder.exists() else "does not exist"
            broken.append(f"{configured} (set by {PREFIX}{variable}) {state}; expected the folder of official weights")
    unloadable, commands = _unloadable_weights(settings)
    details = {"found": found, "missing": [m.filenames[0] for m in missing], "broken": broken + unloadable}
    if broken or unloadable:
        fixes = (["Fix the path in the setting, or unset it."] if broken else []) + (
            [f"Replace each file that cannot load with the official one: {' or '.join(commands)} (or the app's Get "
             "the official weights panel) fetches it again."] if unloadable else []
        )  # fmt: skip
        return Check("weights", PROBLEM, "; ".join(broken + unloadable), " ".join(fixes), details)
    text = "; ".join(found) if found else "no model weights configured"
    if missing:  # not a fault: the weight-free engines run instead, and the hint says where the files go
        names = ", ".join(m.filenames[0] for m in missing)
        return Check(
            "weights",
            INFO,
            f"{text}; missing: {names} (the weight-free engines are used instead)",
            "\n".join(where_to_put(m, ctx.settings) for m in missing),
            details,
        )
    return Check("weights", OK, text, details=details)


def _unloadable_weights(settings: Settings) -> tuple[list[str], list[str]]:
    """Weight files the engines would load that cannot be weights (a web page, an empty file, a Git LFS pointer, a
    zip cut short), and the commands that fetch them again: the doctor said "ok" of them and the run refused them."""
    from engine.core.hub import inventory

    broken = [item for item in inventory(settings) if item.found is not None and item.broken]
    problems = [f"{item.found.parent if item.found.is_file() else item.found}/{problem}"  # problem: "name: why"
                for item in broken for problem in item.broken]  # fmt: skip
    return problems, list(dict.fromkeys(f"`{item.command}`" for item in broken))


def check_ray(ctx: _Context) -> Check:
    """When the workers are to be a Ray cluster's actors: ray installed and the cluster answering (an unreachable
    address kept the app from starting while the doctor said nothing)."""
    import importlib.util

    from engine.core.errors import SetupError
    from engine.core.settings import ray_reachable

    address = ctx.settings.ray_address
    if address is None:
        return Check("ray", OK, f"not used: jobs run in this machine's worker processes ({PREFIX}RAY_ADDRESS unset)")
    if importlib.util.find_spec("ray") is None:
        return Check("ray", PROBLEM, f"{PREFIX}RAY_ADDRESS={address} but ray is not installed",
                     "pip install 'avatarbench[ray]' (or unset the variable)")  # fmt: skip
    if address == "auto":
        return Check("ray", INFO, "auto: the app joins the cluster started on this machine (ray start --head)")
    try:
        ray_reachable(address)
    except SetupError as exc:
        return Check("ray", PROBLEM, str(exc), f"Start the cluster, or fix {PREFIX}RAY_ADDRESS.")
    return Check("ray", OK, f"the Ray cluster at {address} answers")


CHECKS: tuple[Callable[[_Context], Check], ...] = (
    check_python,
    check_torch,
    check_driver,
    check_device,
    check_gpu_state,
    check_ort_packages,
    check_cuda_majors,
    check_ort_cuda,
    check_ort_tensorrt,
    check_video,
    check_disk,
    check_weights,
    check_ray,
    check_settings,
)


def run_doctor(settings: Settings | None = None) -> DoctorReport:
    """Run every check; never raises."""
    start = time.perf_counter()
    nvml = _gather_nvml()
    probe, probe_error = run_ort_probe()
    problems: list[str] = []
    if settings is None:
        settings, problems = settings_despite_bad_values()
    ctx = _Context(
        settings=settings,
        ort_probe=probe,
        ort_probe_error=probe_error,
        pci_gpus=_nvidia_on_pci(),
        cuda_gpus=_cuda_gpus(),
        settings_problems=problems,
        **nvml,
    )
    checks = []
    for fn in CHECKS:
        name = fn.__name__.removeprefix("check_")
        try:
            checks.append(fn(ctx))
        except PermissionError as exc:  # the machine's answer, not the check's bug
            what = f"cannot read {exc.filename or 'a file it needs'}: {exc.strerror}"
            checks.append(Check(name, PROBLEM, what, "Give this user access, or point its setting elsewhere."))
        except Exception as exc:
            checks.append(
                Check(
                    name,
                    PROBLEM,
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "Please report this with the output of `avatarbench doctor --json`.",
                )
            )
    return DoctorReport(checks=checks, seconds=time.perf_counter() - start)
