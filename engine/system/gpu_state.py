"""What keeps a working GPU from a job's full speed or memory, read from NVML by the doctor's gpu-state check: other
processes holding its memory, a compute mode that shuts processes out, memory errors, clocks held down, persistence
mode off. Each rule gives (status, what it found, the nvidia-smi command that fixes it), or None; check_gpu_state runs
them over every GPU NVML reads."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict

from engine.core.settings import PREFIX
from engine.system.checks import INFO, OK, PROBLEM, WARNING, Check, Context, worst
from engine.system.telemetry import GpuHealth, GpuSample

Finding = tuple[str, str, str]  # (status, what was found, its fix)

# Clock event reasons that cost speed for a fault rather than by design (the power cap under load, or idle, do not).
SLOWDOWN_REASONS = (
    "hardware slowdown",
    "hardware thermal slowdown",
    "software thermal slowdown",
    "hardware power brake",
)
FREE_SHARE_WARNING = 0.75  # warn when less than this share of what the settings let jobs take is free


def own_pids() -> set[int]:
    """This process and its descendants (the app's job workers): the GPU memory they hold is the app's own."""
    import psutil

    own = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        own.update(child.pid for child in psutil.Process().children(recursive=True))
    return own


def _memory_held(gpu: GpuSample, fraction: float, own: set[int]) -> Finding | None:
    """(status, what, fix) where other processes hold so much of the GPU's memory that jobs get well under the share
    the settings give them: they run out of memory at batch sizes an idle card takes."""
    if gpu.mig_mode or gpu.memory_used_bytes is None or not gpu.memory_total_bytes:
        return None
    mine = sum(p.used_memory_bytes or 0 for p in gpu.processes if p.pid in own)
    free = gpu.memory_total_bytes - gpu.memory_used_bytes + mine
    allowed = fraction * gpu.memory_total_bytes
    if free >= FREE_SHARE_WARNING * allowed:
        return None
    others = [p for p in gpu.processes if p.pid not in own]
    holders = (
        ", ".join(
            f"{p.name} (pid {p.pid}" + (f", {p.used_memory_bytes / 2**30:.1f} GiB)" if p.used_memory_bytes else ")")
            for p in others
        )
        or "processes NVML does not list here (another container, or outside this one's PID namespace)"
    )
    what = (
        f"GPU {gpu.index}: {(gpu.memory_used_bytes - mine) / 2**30:.1f} of {gpu.memory_total_bytes / 2**30:.1f} GiB "
        f"held by {holders}; jobs get {free / 2**30:.1f} GiB, not the {allowed / 2**30:.1f} GiB "
        f"{PREFIX}GPU_MEMORY_FRACTION allows, and run out of memory at batch sizes an idle card takes"
    )
    fix = (
        f"GPU {gpu.index}: stop what holds it if it is not yours (`nvidia-smi` lists the processes; kill PID), or run "
        f"on a free GPU ({PREFIX}DEVICE=cuda:N, or CUDA_VISIBLE_DEVICES); otherwise use smaller batches."
    )
    return WARNING, what, fix


def _compute_mode(gpu: GpuSample, health: GpuHealth) -> Finding | None:
    """A compute mode that keeps the app's processes off the GPU: Prohibited (no CUDA at all), or Exclusive Process
    (one process at a time: the job workers, the doctor's probe and NVDEC cannot share it)."""
    if health.compute_mode in (None, "Default"):
        return None
    status = PROBLEM if health.compute_mode == "Prohibited" else WARNING
    what = f"GPU {gpu.index}: compute mode {health.compute_mode}" + (
        ": no process may use CUDA on it" if status == PROBLEM else ": one process at a time may use it"
    )
    return status, what, f"GPU {gpu.index}: sudo nvidia-smi -i {gpu.index} -c DEFAULT"


def _memory_errors(gpu: GpuSample, health: GpuHealth) -> Finding | None:
    """Uncorrectable ECC errors, or memory repairs waiting for a reset: wrong results or failing CUDA calls (Xid 48,
    63, 94, 95) until the GPU is reset."""
    reset = f"sudo nvidia-smi -r -i {gpu.index} (with no process on it), or reboot"
    if health.row_remap_failed:
        return (
            PROBLEM,
            f"GPU {gpu.index}: a memory row could not be remapped: its memory is failing",
            f"GPU {gpu.index}: the card needs replacing (on a cloud VM, ask for another host); until then hide it "
            "with CUDA_VISIBLE_DEVICES.",
        )
    if health.ecc_uncorrected:
        return (
            PROBLEM,
            f"GPU {gpu.index}: {health.ecc_uncorrected} uncorrectable ECC error(s) since the driver "
            "loaded: results can be wrong and CUDA calls fail",
            f"GPU {gpu.index}: {reset}; `sudo dmesg | grep -i xid` says more. If they come back, the card needs "
            "replacing (on a cloud VM, ask for another host).",
        )
    if health.row_remap_pending or health.retired_pages_pending:
        return (WARNING, f"GPU {gpu.index}: a repair of its memory waits for a reset", f"GPU {gpu.index}: {reset}.")
    return None


def _slowed_down(gpu: GpuSample, health: GpuHealth) -> Finding | None:
    """Clocks held down by heat or the power supply, or a power limit set below the card's default: the GPU runs
    but slower than its figures (and the benchmark's peaks) say."""
    reasons = [r for r in gpu.throttle_reasons or [] if r in SLOWDOWN_REASONS]
    if reasons:
        temperature = f" at {gpu.temperature_c} C" if gpu.temperature_c is not None else ""
        return (
            WARNING,
            f"GPU {gpu.index}: clocks held down by {', '.join(reasons)}{temperature}",
            f"GPU {gpu.index}: check its cooling and power (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`); "
            "hardware slowdown and power brake point at the power supply or an overheating card (on a cloud VM, "
            "ask for another host).",
        )
    default, limit = health.default_power_limit_w, gpu.power_limit_w
    if default and limit and limit < 0.95 * default:
        return (
            WARNING,
            f"GPU {gpu.index}: power limit {limit:.0f} W, below the card's default {default:.0f} W: "
            "it runs slower under load",
            f"GPU {gpu.index}: sudo nvidia-smi -i {gpu.index} -pl {default:.0f}",
        )
    return None


def _persistence_off(gpu: GpuSample, health: GpuHealth) -> Finding | None:
    """Persistence mode off on Linux: the driver tears the GPU down whenever no process holds it, so every new worker
    waits seconds for it to start again."""
    if health.persistence_mode is not False or not sys.platform.startswith("linux"):
        return None
    return (
        INFO,
        f"GPU {gpu.index}: persistence mode off (each new process waits for the GPU to start)",
        f"GPU {gpu.index}: sudo nvidia-smi -i {gpu.index} -pm 1 (or enable nvidia-persistenced), on the host",
    )


def gpu_summary(gpu: GpuSample, health: GpuHealth) -> str:
    memory = (
        f"{gpu.memory_used_bytes / 2**30:.1f} of {gpu.memory_total_bytes / 2**30:.1f} GiB used"
        if gpu.memory_used_bytes is not None and gpu.memory_total_bytes
        else "memory N/A"
    )
    temperature = f", {gpu.temperature_c} C" if gpu.temperature_c is not None else ""
    return f"GPU {gpu.index} {gpu.name}: {memory}{temperature}, compute mode {health.compute_mode or 'N/A'}"


def gpu_findings(gpu: GpuSample, health: GpuHealth, memory_fraction: float, own: set[int]) -> list[Finding]:
    """Every rule's finding for one GPU, the most likely to stop a job first."""
    found = (
        _compute_mode(gpu, health),
        _memory_errors(gpu, health),
        _memory_held(gpu, memory_fraction, own),
        _slowed_down(gpu, health),
        _persistence_off(gpu, health),
    )
    return [f for f in found if f is not None]


def check_gpu_state(ctx: Context) -> Check:
    """What keeps a working GPU from a job's full speed or memory (the rules above)."""
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


__all__ = ["Finding", "check_gpu_state", "gpu_findings", "gpu_summary", "own_pids"]
