"""Run where CUDA is available (skipped elsewhere): real NVML, real providers, a real OOM."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.gpu


def test_telemetry_fields_come_from_real_nvml() -> None:
    import torch

    from engine.telemetry import TelemetrySampler, render_table

    x = torch.ones(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB so this process shows up
    snap = TelemetrySampler().sample_now()
    assert snap.gpu_status == "" and snap.gpus
    assert snap.driver_version and snap.cuda_driver_version
    g = snap.gpus[0]
    assert g.name.startswith("NVIDIA") and g.uuid and g.uuid.startswith(("GPU-", "MIG-"))
    assert g.memory_total_bytes and g.memory_used_bytes >= 256 * 2**20
    for field in (
        "util_gpu_percent",
        "temperature_c",
        "power_w",
        "power_limit_w",
        "sm_clock_mhz",
        "memory_clock_mhz",
        "performance_state",
    ):
        assert getattr(g, field) is not None, field
    assert isinstance(g.throttle_reasons, list)
    mine = [p for p in g.processes if p.pid == os.getpid()]
    if mine:  # absent when NVML sees another PID namespace
        assert mine[0].used_memory_bytes is None or mine[0].used_memory_bytes >= 256 * 2**20
    assert g.name[:20] in render_table(snap)
    del x


def test_doctor_sees_the_cuda_provider_load(tmp_path) -> None:
    from engine.doctor import OK, run_doctor
    from engine.settings import load_settings

    report = run_doctor(load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))
    assert report.get("pytorch").status == OK
    assert report.get("nvidia-driver").status == OK
    assert report.get("device").status == OK
    cuda = report.get("onnxruntime-cuda")
    probe, after = cuda.details["probe"], cuda.details["after_preload"]
    assert probe["loaded"] or (after and after["loaded"]), cuda.found
    print("\n" + report.render_text())


def test_device_and_precision_support() -> None:
    import torch

    from engine.device import capabilities, precision_dtype, resolve_device

    choice = resolve_device("auto")
    assert choice.is_cuda
    caps = capabilities(choice.device)
    major = torch.cuda.get_device_capability(choice.device)[0]
    assert caps.bf16 == (major >= 8) and caps.tf32 == (major >= 8) and caps.fp16
    assert precision_dtype("fp16", caps) is torch.float16
    with pytest.raises(Exception, match="only"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_oom_backoff_on_a_real_out_of_memory_error() -> None:
    import torch

    from engine.device import run_with_oom_backoff

    free, total = torch.cuda.mem_get_info()
    gib = 2**30
    start = 1 << (int(2 * total / gib) - 1).bit_length()  # a power of two above the card's memory

    def allocate(batch_gib: int) -> int:
        block = torch.empty(batch_gib * gib, dtype=torch.uint8, device="cuda")
        size = block.numel()
        del block
        return size

    tried = []
    size, used = run_with_oom_backoff(allocate, start, on_backoff=lambda a, b, e: tried.append(a))
    assert used < start and size == used * gib and tried[0] == start
    assert used * gib <= free
    with pytest.raises(RuntimeError, match="shape"):
        run_with_oom_backoff(lambda b: torch.zeros(2, 3, device="cuda") @ torch.zeros(2, 3, device="cuda"), 8)
