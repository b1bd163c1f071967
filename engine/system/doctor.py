"""The GPU doctor: why the GPU is (not) being used, and the exact fix.

Each check looks at one layer (Python, PyTorch and CUDA, the NVIDIA driver, ONNX Runtime's
packages and providers, video encoders, disk, settings) and returns a status, what it found
and what to do. A check that itself crashes becomes a "problem" naming the crash, so the
report always comes back whole.

Quiet where nothing is wrong: on a machine with no NVIDIA GPU at all (none through NVML, none on the
PCI bus, not a ZeroGPU Space) running on the CPU is the expected state, so the doctor says "no GPU"
once, as information, and keeps its install recipes for machines where a GPU exists but is not used.

This module gathers once the facts several checks need (NVML, the PCI bus, PyTorch's CUDA, the ONNX
Runtime provider probe in a subprocess) and runs the checks in order; the checks live by layer in
doctor_gpu.py, gpu_state.py, xid.py, doctor_ort.py and doctor_host.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.core.settings import Settings, is_zerogpu_space, settings_despite_bad_values
from engine.system.checks import PROBLEM, Check, Context, DoctorReport
from engine.system.doctor_gpu import check_device, check_driver, check_torch
from engine.system.doctor_host import check_disk, check_python, check_ray, check_settings, check_video, check_weights
from engine.system.doctor_ort import check_cuda_majors, check_ort_cuda, check_ort_packages, check_ort_tensorrt
from engine.system.gpu_state import check_gpu_state
from engine.system.telemetry import GpuHealth, GpuSample, NvmlSource
from engine.system.xid import check_gpu_errors

PCI_DEVICES = Path("/sys/bus/pci/devices")
NVIDIA_PCI_VENDOR = "0x10de"
log = logging.getLogger(__name__)


def _gather_nvml() -> dict[str, Any]:
    """NVML's facts, as Context's fields: `nvml_gpus` names only the GPUs it can read."""
    source = NvmlSource()
    devices = [d.identity() for d in source.devices]
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


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_python,
    check_torch,
    check_driver,
    check_device,
    check_gpu_state,
    check_gpu_errors,
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
    ctx = Context(
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
