"""The NVML device behind a CUDA device id, and its memory: what caps ONNX Runtime's arena, and what ONNX eval and
the sweeps record. NVML numbers every GPU of the machine, CUDA only the visible ones, so the id is translated."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def nvml_source() -> Any:
    """engine.system.telemetry's NVML layer (every call has a fallback, so a machine without NVML is fine)."""
    from engine.system.telemetry import NvmlSource

    return NvmlSource()


def nvml_index(device_id: int, uuids: Sequence[str | None] = ()) -> int | None:
    """The NVML index of the GPU CUDA calls `device_id` in this process, or None where there is none.

    CUDA numbers only the GPUs CUDA_VISIBLE_DEVICES lists (by index, or by UUID, found among `uuids`, NVML's; set
    but empty: none), NVML every GPU of the machine. Both count in PCI bus order (engine/__init__.py sets
    CUDA_DEVICE_ORDER=PCI_BUS_ID; a user's FASTEST_FIRST numbers mixed GPUs otherwise)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return device_id
    listed = [v.strip() for v in visible.split(",") if v.strip()]
    if device_id >= len(listed):
        return None
    want = listed[device_id]
    if want.isdigit():
        return int(want)
    return next((i for i, uuid in enumerate(uuids) if uuid and uuid.startswith(want)), None)


def nvml_device(source: Any, device_id: int = 0) -> Any:
    """The NVML device that CUDA calls `device_id` (NVML ignores CUDA_VISIBLE_DEVICES, CUDA does not): a MIG
    instance named by its UUID (CUDA_VISIBLE_DEVICES=MIG-...) is its own device, with the slice's memory."""
    devices = getattr(source, "devices", [])
    index = nvml_index(device_id, [d.uuid for d in devices])
    if index is None:
        listed = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        want = listed[device_id] if device_id < len(listed) else ""
        return next(filter(None, (mig_instance(d, want) for d in devices)), None) if want.startswith("MIG-") else None
    return devices[index] if index < len(devices) else None


def mig_instance(gpu: Any, uuid: str) -> Any:
    """The MIG instance of `gpu` (engine.system.telemetry's device) whose UUID starts with `uuid`, as a device of its
    own, or None: NVML lists only whole GPUs, their instances only through nvmlDeviceGetMigDeviceHandleByIndex."""
    nvml = gpu.nvml
    if not getattr(gpu, "mig_mode", False):
        return None
    for slot in range(gpu.get(getattr(nvml, "nvmlDeviceGetMaxMigDeviceCount", None)) or 0):
        handle = gpu.get(getattr(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", None), slot)  # None: an empty slot
        instance = None if handle is None else type(gpu)(nvml, gpu.index, handle)
        if instance is not None and (instance.uuid or "").startswith(uuid):
            return instance
    return None


def memory_info(device: Any) -> Any:
    """NVML's memory figures of `device` (engine.system.telemetry's, or anything with its `.nvml` and forgiving
    `.get`), or None: the v2 struct where the driver has it, whose `used` leaves out the memory the driver reserves,
    as nvidia-smi and nvitop show it (v1's counts it: hundreds of MiB on an idle card); v1 on older drivers."""
    read = getattr(device.nvml, "nvmlDeviceGetMemoryInfo", None)
    v2 = getattr(device.nvml, "nvmlMemory_v2", None)
    info = device.get(read, v2) if v2 is not None else None
    return info if info is not None else device.get(read)


def gpu_memory(source: Any, device_id: int = 0) -> dict[str, int | None] | None:
    """Used and total bytes of the GPU, and this process's share (None where NVML cannot tell: in some
    containers NVML reports host PIDs), or None without NVML."""
    device = nvml_device(source, device_id)
    if device is None:
        return None
    info = memory_info(device)
    if info is None:
        return None
    mine = next((p.used_memory_bytes for p in device.processes() if p.pid == os.getpid()), None)
    return {"used": int(info.used), "total": int(info.total), "process": mine}


__all__ = ["gpu_memory", "memory_info", "mig_instance", "nvml_device", "nvml_index", "nvml_source"]
