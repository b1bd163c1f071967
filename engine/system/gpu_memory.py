"""The NVML device behind a CUDA device id, and its memory: what caps ONNX Runtime's arena, and what ONNX eval and
the sweeps record. NVML numbers every GPU of the machine, CUDA only the visible ones, so the id is translated."""

from __future__ import annotations

import os
from typing import Any


def nvml_source() -> Any:
    """engine.system.telemetry's NVML layer (every call has a fallback, so a machine without NVML is fine)."""
    from engine.system.telemetry import NvmlSource

    return NvmlSource()


def nvml_device(source: Any, device_id: int = 0) -> Any:
    """The NVML device that CUDA calls `device_id` (NVML ignores CUDA_VISIBLE_DEVICES, CUDA does not)."""
    devices = getattr(source, "devices", [])
    if not devices:
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return devices[device_id] if device_id < len(devices) else None
    if device_id >= len(visible):
        return None
    want = visible[device_id]
    if want.isdigit():
        return devices[int(want)] if int(want) < len(devices) else None
    return next((d for d in devices if d.uuid and d.uuid.startswith(want)), None)


def gpu_memory(source: Any, device_id: int = 0) -> dict[str, int | None] | None:
    """Used and total bytes of the GPU, and this process's share (None where NVML cannot tell: in some
    containers NVML reports host PIDs), or None without NVML."""
    device = nvml_device(source, device_id)
    if device is None:
        return None
    info = device.get(device.nvml.nvmlDeviceGetMemoryInfo)
    if info is None:
        return None
    mine = next((p.used_memory_bytes for p in device.processes() if p.pid == os.getpid()), None)
    return {"used": int(info.used), "total": int(info.total), "process": mine}


__all__ = ["gpu_memory", "nvml_device", "nvml_source"]
