"""Live GPU and host telemetry: an NVML layer that never raises, a 1 Hz sampler, a text table.

Drivers, MIG slices, laptops and containers each leave different NVML calls unsupported.
Every call goes through `_NvmlDevice.get`, which turns any failure into None ("N/A" when
shown), so one missing counter never hides the rest. Without NVML at all (no driver, a Mac,
CI) the sampler still reports host figures plus a plain reason why no GPU is visible.
"""

from __future__ import annotations

import logging
import os
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psutil

from engine.system.gpu_memory import memory_info, nvml_index

log = logging.getLogger(__name__)

# Clock event ("throttle") reason bits from nvml.h; names as a user would search for them.
THROTTLE_REASONS = {
    0x1: "idle",
    0x2: "applications clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
    0x100: "display clock setting",
    0x200: "board limit",  # newer drivers' bits: without them a GPU held back by one alone read "none"
    0x400: "reliability",
}


@dataclass
class GpuProcess:
    pid: int
    name: str
    kind: str  # "C" compute, "G" graphics, as nvidia-smi labels them
    used_memory_bytes: int | None


@dataclass
class GpuSample:
    index: int
    name: str
    uuid: str | None = None
    util_gpu_percent: float | None = None
    util_memory_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    pcie_rx_kbs: int | None = None
    pcie_tx_kbs: int | None = None
    encoder_percent: float | None = None
    decoder_percent: float | None = None
    fan_percent: float | None = None
    performance_state: str | None = None
    throttle_reasons: list[str] | None = None
    mig_mode: bool | None = None
    pci_bus_id: str | None = None  # NVML's "00000000:3B:00.0": what the driver's kernel log lines name the GPU by
    processes: list[GpuProcess] = field(default_factory=list)
    error: str | None = None  # why NVML cannot read this GPU at all ("GPU is lost"), shown instead of a row of N/A

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes


COMPUTE_MODES = {0: "Default", 1: "Exclusive Thread", 2: "Prohibited", 3: "Exclusive Process"}


@dataclass
class GpuHealth:
    """What decides whether a readable GPU can do a job at full speed, beyond the live sample: read when the doctor
    asks, not every second. None: the driver or the card does not say (no ECC on GeForce cards, no row remapping
    before Ampere)."""

    compute_mode: str | None = None  # one of COMPUTE_MODES' names
    persistence_mode: bool | None = None
    ecc_uncorrected: int | None = None  # uncorrectable ECC errors since the driver loaded (volatile)
    retired_pages_pending: bool | None = None  # pages to retire at the next reset (before Ampere)
    row_remap_pending: bool | None = None  # rows to remap at the next reset (Ampere on)
    row_remap_failed: bool | None = None
    default_power_limit_w: float | None = None


@dataclass
class HostSample:
    cpu_percent: float
    cpu_count: int
    ram_used_bytes: int
    ram_total_bytes: int
    process_rss_bytes: int
    process_cpu_percent: float


@dataclass
class WorkerActivity:
    """One job worker and what it is running: the job queue's side of a device, beside NVML's."""

    device: str  # the device key its jobs are queued under: "cuda:N", "cpu" (a Ray actor's: "NODE/cuda:N")
    worker: int | None  # its id (a process id for local workers)
    kind: str | None = None  # the running job's kind; None while idle
    progress: float = 0.0  # no progress text: every visitor sees the telemetry, and a job's text is its owner's

    @property
    def gpu_index(self) -> int | None:
        """The NVML index of a local "cuda:N" key's GPU (through this process's CUDA_VISIBLE_DEVICES, by index)."""
        head, _, index = self.device.partition("cuda:")
        return nvml_index(int(index)) if not head and index.isdigit() else None

    @property
    def doing(self) -> str:
        return "idle" if self.kind is None else f"{self.kind} {100 * self.progress:.0f}%"


@dataclass
class Snapshot:
    timestamp: float
    host: HostSample
    gpus: list[GpuSample]
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpu_status: str = ""  # empty when GPUs are visible, otherwise the reason none are
    workers: list[WorkerActivity] = field(default_factory=list)  # the job workers and their jobs, when the app has them

    def workers_on(self, gpu_index: int) -> list[WorkerActivity]:
        return [w for w in self.workers if w.gpu_index == gpu_index]

    @property
    def time_text(self) -> str:
        return datetime.fromtimestamp(self.timestamp).strftime("%Y-%m-%d %H:%M:%S")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = self.time_text
        for gpu, raw in zip(self.gpus, out["gpus"], strict=True):
            raw["memory_percent"] = gpu.memory_percent
        return out


INSTALL_DRIVER = (
    "Install the NVIDIA driver (it provides libnvidia-ml.so.1 and libcuda.so.1); in a container run "
    "with `--gpus all` (NVIDIA Container Toolkit)."
)
# nvmlInit's failures by pynvml error class: what it means, and the fix (each cause has its own).
NVML_START_ERRORS = {
    "LibRmVersionMismatch": (
        "the NVIDIA kernel module and its library (libnvidia-ml) are different versions: the driver was "
        "upgraded without a reboot",
        "Reboot; or stop every process using the GPU and reload the kernel modules: sudo rmmod nvidia_uvm "
        "nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia",
    ),
    "LibraryNotFound": (
        "the NVML library (libnvidia-ml.so.1) was not found: no NVIDIA driver is installed or mounted",
        INSTALL_DRIVER,
    ),
    "DriverNotLoaded": (
        "the NVIDIA kernel driver is not loaded",
        "Load it: sudo modprobe nvidia; if that fails, `sudo dmesg | grep -i nvidia` says why (with Secure Boot "
        "on, an unsigned module is refused: sign it, or install your distribution's signed driver package).",
    ),
    "NoPermission": (
        "no permission to open the NVIDIA device files (/dev/nvidia*)",
        "Give this user read-write access to /dev/nvidia* (on some distributions: sudo usermod -aG video $USER, "
        "then log in again); in a container run with `--gpus all`.",
    ),
}
PYNVML_MISSING = "nvidia-ml-py is not installed"
PYNVML_FIX = "pip install nvidia-ml-py (NVML's Python binding; the driver itself may be fine)"
# A device's own failures (its handle, or any read), as nvitop shows them in place of its figures.
DEVICE_ERRORS = {"GpuIsLost": "GPU is lost", "NoPermission": "no permission", "InsufficientPower": "insufficient power"}
# Errors that will not change while the process runs: the call is not asked again.
_PERMANENT = ("NotSupported", "FunctionNotFound", "ArgumentVersionMismatch")


def _error_class(exc: BaseException) -> str:
    """pynvml's class name without its prefix: NVMLError_GpuIsLost -> GpuIsLost."""
    return type(exc).__name__.removeprefix("NVMLError_")


def _describe_nvml_error(exc: BaseException) -> tuple[str, str]:
    """Why nvmlInit failed, and the fix for that cause."""
    text = str(exc) or type(exc).__name__
    found = NVML_START_ERRORS.get(_error_class(exc))
    if found is None and "Library Not Found" in text:
        found = NVML_START_ERRORS["LibraryNotFound"]
    return found or (f"NVML failed to start: {text}", INSTALL_DRIVER)


def device_error(exc: BaseException) -> str:
    """A short text for a device NVML cannot read ("GPU is lost")."""
    return DEVICE_ERRORS.get(_error_class(exc)) or str(exc) or type(exc).__name__


class _NvmlDevice:
    """One GPU handle; every read is forgiving and yields None when unsupported.

    A GPU whose handle fails (NoPermission in a container's cgroup) or that is lost (Xid 79, at start or mid-run)
    stays in the list with `error` set: the other GPUs keep their figures and their NVML indices."""

    def __init__(self, nvml: Any, index: int, handle: Any = None):
        """`handle`: a MIG instance's of GPU `index` (its memory is the slice's); the whole GPU's when None."""
        self.nvml = nvml
        self.index = index
        self.error: str | None = None
        try:
            self.handle = handle if handle is not None else nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            self.handle, self.error = None, device_error(exc)
            log.warning("NVML cannot open GPU %d: %s", index, self.error)
        self._unsupported: set[tuple[Any, ...]] = set()
        self._proc_names: dict[int, str] = {}
        # Static facts, read once.
        self.name = self.get(nvml.nvmlDeviceGetName) or f"GPU {index}"
        self.uuid = self.get(nvml.nvmlDeviceGetUUID)
        mig = self.get(nvml.nvmlDeviceGetMigMode)
        self.mig_mode = bool(mig[0]) if mig is not None else None
        pci = self.get(getattr(nvml, "nvmlDeviceGetPciInfo", None))
        bus_id = getattr(pci, "busId", None)
        self.pci_bus_id = bus_id.decode() if isinstance(bus_id, bytes) else bus_id

    def get(self, fn: Callable[..., Any] | None, *args: Any) -> Any:
        """fn(handle, *args), or None when it fails; a call the device does not support is not
        asked again (measured on an H100: a failing call costs ~0.4 ms of CPU each time)."""
        key = (fn, *args)
        if fn is None or key in self._unsupported or self.error is not None:
            return None
        try:
            value = fn(self.handle, *args)
        except Exception as exc:  # NVMLError_NotSupported, _NoPermission, _GpuIsLost, missing symbol...
            kind = _error_class(exc)
            if any(p in kind for p in _PERMANENT) or "Not Supported" in str(exc):
                self._unsupported.add(key)
            if kind == "GpuIsLost":  # nothing more will read until the GPU is reset: said once, shown for good
                self.error = device_error(exc)
                log.warning("GPU %d: %s (reset it with `nvidia-smi -r -i %d`, or reboot)", self.index, exc, self.index)
            log.debug("NVML %s on GPU %d: %s", getattr(fn, "__name__", fn), self.index, exc)
            return None
        return value.decode() if isinstance(value, bytes) else value

    def _fn(self, *names: str) -> Callable[..., Any] | None:
        """The first binding that exists: NVML renamed several calls across driver generations."""
        for name in names:
            fn = getattr(self.nvml, name, None)
            if fn is not None:
                return fn
        return None

    def identity(self) -> GpuSample:
        """What names this GPU (read once), without a reading: the doctor's list of every GPU NVML numbers."""
        return GpuSample(
            self.index, self.name, self.uuid, mig_mode=self.mig_mode, pci_bus_id=self.pci_bus_id, error=self.error
        )

    def sample(self) -> GpuSample:
        nv = self.nvml
        s = self.identity()
        if self.error is not None:
            return s
        util = self.get(nv.nvmlDeviceGetUtilizationRates)
        if util is not None:
            s.util_gpu_percent, s.util_memory_percent = float(util.gpu), float(util.memory)
        mem = memory_info(self)
        if mem is not None:
            s.memory_used_bytes, s.memory_total_bytes = int(mem.used), int(mem.total)
        s.temperature_c = self.get(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
        power = self.get(nv.nvmlDeviceGetPowerUsage)
        s.power_w = power / 1000.0 if power is not None else None
        limit = self.get(nv.nvmlDeviceGetEnforcedPowerLimit)
        s.power_limit_w = limit / 1000.0 if limit is not None else None
        s.sm_clock_mhz = self.get(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
        s.memory_clock_mhz = self.get(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM)
        s.pcie_rx_kbs = self.get(nv.nvmlDeviceGetPcieThroughput, nv.NVML_PCIE_UTIL_RX_BYTES)
        s.pcie_tx_kbs = self.get(nv.nvmlDeviceGetPcieThroughput, nv.NVML_PCIE_UTIL_TX_BYTES)
        enc = self.get(nv.nvmlDeviceGetEncoderUtilization)
        s.encoder_percent = float(enc[0]) if enc is not None else None
        dec = self.get(nv.nvmlDeviceGetDecoderUtilization)
        s.decoder_percent = float(dec[0]) if dec is not None else None
        s.fan_percent = self.get(nv.nvmlDeviceGetFanSpeed)
        pstate = self.get(nv.nvmlDeviceGetPerformanceState)
        s.performance_state = f"P{pstate}" if pstate is not None and pstate != 32 else None
        reasons = self.get(
            self._fn("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        )
        if reasons is not None:
            s.throttle_reasons = [text for bit, text in THROTTLE_REASONS.items() if reasons & bit]
        s.processes = self.processes()
        s.error = self.error  # lost during this very sample
        return s

    def health(self) -> GpuHealth:
        """The settings and error counters the doctor judges (compute mode, persistence, ECC, power limit)."""
        nv, h = self.nvml, GpuHealth()
        if self.error is not None:
            return h
        mode = self.get(getattr(nv, "nvmlDeviceGetComputeMode", None))
        h.compute_mode = COMPUTE_MODES.get(mode) if mode is not None else None
        persistence = self.get(getattr(nv, "nvmlDeviceGetPersistenceMode", None))
        h.persistence_mode = bool(persistence) if persistence is not None else None
        h.ecc_uncorrected = self.get(
            getattr(nv, "nvmlDeviceGetTotalEccErrors", None),
            getattr(nv, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(nv, "NVML_VOLATILE_ECC", 0),
        )
        pending = self.get(getattr(nv, "nvmlDeviceGetRetiredPagesPendingStatus", None))
        h.retired_pages_pending = bool(pending) if pending is not None else None
        remapped = self.get(getattr(nv, "nvmlDeviceGetRemappedRows", None))  # (corrected, uncorrected, pending, failed)
        if remapped is not None:
            h.row_remap_pending, h.row_remap_failed = bool(remapped[2]), bool(remapped[3])
        limit = self.get(getattr(nv, "nvmlDeviceGetPowerManagementDefaultLimit", None))
        h.default_power_limit_w = limit / 1000.0 if limit is not None else None
        return h

    def processes(self) -> list[GpuProcess]:
        out: list[GpuProcess] = []
        seen: set[int] = set()
        for kind, fn in (
            ("C", self._fn("nvmlDeviceGetComputeRunningProcesses")),
            ("G", self._fn("nvmlDeviceGetGraphicsRunningProcesses")),
        ):
            for proc in self.get(fn) or []:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                used = getattr(proc, "usedGpuMemory", None)  # pynvml's None: NVML cannot tell; 0 is a real 0
                memory = None if used is None else int(used)
                out.append(GpuProcess(proc.pid, self._process_name(proc.pid), kind, memory))
        return out

    def _process_name(self, pid: int) -> str:
        if pid not in self._proc_names:
            try:
                self._proc_names[pid] = psutil.Process(pid).name()
            except (psutil.Error, OSError):
                # Another PID namespace (a container) or a process that just ended.
                self._proc_names[pid] = "N/A"
        return self._proc_names[pid]


class NvmlSource:
    """Initialises NVML once; on any failure records why, and then reports no GPUs."""

    def __init__(self) -> None:
        self.devices: list[_NvmlDevice] = []
        self.driver_version: str | None = None
        self.cuda_driver_version: str | None = None
        self.status = ""
        self.fix = ""  # the fix for `status`'s cause, where NVML did not start
        try:
            import pynvml
        except ImportError:
            self.status, self.fix = f"no NVIDIA GPU visible ({PYNVML_MISSING})", PYNVML_FIX
            return
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            what, self.fix = _describe_nvml_error(exc)
            self.status = f"no NVIDIA GPU visible ({what})"
            return
        # The driver's versions first: they are true even when a device cannot be read.
        self.driver_version = _safe_decode(pynvml, "nvmlSystemGetDriverVersion")
        cuda = _safe_decode(pynvml, "nvmlSystemGetCudaDriverVersion_v2") or _safe_decode(
            pynvml, "nvmlSystemGetCudaDriverVersion"
        )
        if isinstance(cuda, int):
            cuda = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        self.cuda_driver_version = cuda
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:
            self.status = f"no NVIDIA GPU visible (NVML could not count devices: {exc})"
            return
        self.devices = [_NvmlDevice(pynvml, i) for i in range(count)]
        if not self.devices:
            self.status = "no NVIDIA GPU visible (NVML is working but reports no devices)"

    def sample(self) -> list[GpuSample]:
        return [device.sample() for device in self.devices]


def _safe_decode(nvml: Any, name: str) -> Any:
    fn = getattr(nvml, name, None)
    if fn is None:
        return None
    try:
        value = fn()
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


class HostSource:
    """psutil's CPU percentages are deltas since the last call, so one object keeps that state."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)
        self.process.cpu_percent(interval=None)

    def sample(self) -> HostSample:
        vm = psutil.virtual_memory()
        return HostSample(
            cpu_percent=psutil.cpu_percent(interval=None),
            cpu_count=psutil.cpu_count() or 1,
            ram_used_bytes=int(vm.total - vm.available),
            ram_total_bytes=int(vm.total),
            process_rss_bytes=int(self.process.memory_info().rss),
            process_cpu_percent=self.process.cpu_percent(interval=None),
        )


class TelemetrySampler:
    """A background thread sampling at a fixed rate into a bounded ring buffer."""

    def __init__(
        self,
        interval_s: float = 1.0,
        history_s: float = 600.0,
        nvml: NvmlSource | None = None,
        workers: Callable[[], list[WorkerActivity]] | None = None,
    ):
        """`workers`: what the job workers are running (the broker's `activity`), read with every sample."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self._nvml = nvml if nvml is not None else NvmlSource()
        self._host = HostSource()
        self.workers = workers
        self._buffer: deque[Snapshot] = deque(maxlen=max(2, round(history_s / interval_s)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def capacity(self) -> int:
        return self._buffer.maxlen or 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sample_now(self) -> Snapshot:
        snap = Snapshot(
            timestamp=time.time(),
            host=self._host.sample(),
            gpus=self._nvml.sample(),
            driver_version=self._nvml.driver_version,
            cuda_driver_version=self._nvml.cuda_driver_version,
            gpu_status=self._nvml.status,
            workers=self._read_workers(),
        )
        with self._lock:
            self._buffer.append(snap)
        return snap

    def _read_workers(self) -> list[WorkerActivity]:
        if self.workers is None:
            return []
        try:
            return list(self.workers())
        except Exception:  # a locked store or a broker shutting down: this sample just has no worker view
            log.debug("could not read the workers' activity", exc_info=True)
            return []

    def start(self) -> TelemetrySampler:
        if not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="avatarbench-telemetry", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception:  # a sampler must outlive any one bad reading
                log.exception("telemetry sample failed")
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a suspended process): do not burst to catch up
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def latest(self) -> Snapshot:
        """The newest sample; takes one now if none exists yet."""
        with self._lock:
            if self._buffer:
                return self._buffer[-1]
        return self.sample_now()

    def history(self, seconds: float | None = None) -> list[Snapshot]:
        with self._lock:
            snaps = list(self._buffer)
        if seconds is not None and snaps:
            cutoff = snaps[-1].timestamp - seconds
            snaps = [s for s in snaps if s.timestamp >= cutoff]
        return snaps


_sampler: TelemetrySampler | None = None
_sampler_lock = threading.Lock()


def get_sampler(interval_s: float | None = None, history_s: float | None = None) -> TelemetrySampler:
    """The one running sampler of this process (created and started on first use)."""
    global _sampler
    with _sampler_lock:
        if _sampler is None:
            if interval_s is None or history_s is None:
                from engine.core.settings import get_settings

                settings = get_settings()
                interval_s = interval_s or settings.telemetry_interval_s
                history_s = history_s or settings.telemetry_history_s
            _sampler = TelemetrySampler(interval_s, history_s).start()
        return _sampler


# ---------------------------------------------------------------------------- text table


def _na(value: Any, fmt: str = "{}") -> str:
    return "N/A" if value is None else fmt.format(value)


def _mib(value: int | None) -> str:
    return _na(None if value is None else value / 2**20, "{:.0f}MiB")


def render_table(snap: Snapshot) -> str:
    """An nvidia-smi style table of one snapshot, plus throttle reasons and the host line."""
    width = 100
    rule = "+" + "-" * (width - 2) + "+"

    def row(text: str) -> str:
        parts = textwrap.wrap(text, width - 4, subsequent_indent="  ") or [""]
        return "\n".join("| " + part.ljust(width - 4) + " |" for part in parts)

    lines = [
        snap.time_text,
        rule,
        row(
            f"avatarbench telemetry   Driver Version: {_na(snap.driver_version)}   "
            f"CUDA Version: {_na(snap.cuda_driver_version)}"
        ),
        rule,
    ]
    if not snap.gpus:
        lines.append(row(snap.gpu_status or "no NVIDIA GPU visible"))
    else:
        lines.append(row("GPU  Name                          Fan   Temp  Perf  Pwr:Usage/Cap      Memory-Usage"))
        lines.append(row("     GPU-Util  Mem-Util  SM/Mem clock        PCIe RX/TX (MB/s)   Enc/Dec   Throttle"))
        lines.append(rule.replace("-", "="))
        for g in snap.gpus:
            if g.error is not None:
                lines.extend((row(f"{g.index:<4} {g.name[:29]:<29} {g.error}"), rule))
                continue
            power = f"{_na(g.power_w, '{:.0f}W')} / {_na(g.power_limit_w, '{:.0f}W')}"
            memory = f"{_mib(g.memory_used_bytes)} / {_mib(g.memory_total_bytes)}"
            lines.append(
                row(
                    f"{g.index:<4} {g.name[:29]:<29} {_na(g.fan_percent, '{}%'):<5} "
                    f"{_na(g.temperature_c, '{}C'):<5} {_na(g.performance_state):<5} {power:<18} {memory}"
                )
            )
            clocks = f"{_na(g.sm_clock_mhz)}/{_na(g.memory_clock_mhz)} MHz"
            pcie = f"{_na(_kb_to_mb(g.pcie_rx_kbs), '{:.1f}')}/{_na(_kb_to_mb(g.pcie_tx_kbs), '{:.1f}')}"
            codec = f"{_na(g.encoder_percent, '{:.0f}%')}/{_na(g.decoder_percent, '{:.0f}%')}"
            lines.append(
                row(
                    f"     {_na(g.util_gpu_percent, '{:.0f}%'):<9} {_na(g.util_memory_percent, '{:.0f}%'):<9} "
                    f"{clocks:<19} {pcie:<19} {codec:<9} {throttle_text(g.throttle_reasons)}"
                )
            )
            lines.append(rule)
        lines.append(row("Processes:   GPU   PID       Type  Process name                    GPU Memory Usage"))
        lines.append(rule.replace("-", "="))
        procs = [(g.index, p) for g in snap.gpus for p in g.processes]
        if not procs:
            lines.append(row("No running processes found"))
        jobs = {w.worker: w.doing for w in snap.workers}
        for index, p in procs:
            name = f"{p.name} [{jobs[p.pid]}]" if p.pid in jobs else p.name
            lines.append(
                row(f"             {index:<5} {p.pid:<9} {p.kind:<5} {name[:31]:<31} {_mib(p.used_memory_bytes)}")
            )
        lines.append(rule)
    if snap.workers:
        lines.append(row("Job workers:  Device        Worker     Job"))
        lines.append(rule.replace("-", "="))
        for w in snap.workers:
            lines.append(row(f"              {w.device[:13]:<13} {_na(w.worker):<10} {w.doing}"[: width - 4]))
        lines.append(rule)
    h = snap.host
    lines.append(
        row(
            f"Host: CPU {h.cpu_percent:.0f}% of {h.cpu_count} cores   RAM {h.ram_used_bytes / 2**30:.1f}/"
            f"{h.ram_total_bytes / 2**30:.1f} GiB   this process: RSS {h.process_rss_bytes / 2**20:.0f} MiB, "
            f"CPU {h.process_cpu_percent:.0f}%"
        )
    )
    lines.append(rule)
    return "\n".join(lines)


def _kb_to_mb(value: int | None) -> float | None:
    return None if value is None else value / 1024.0


def throttle_text(reasons: list[str] | None) -> str:
    if reasons is None:
        return "N/A"
    return ", ".join(reasons) if reasons else "none"


def series(snaps: list[Snapshot]) -> dict[str, list[Any]]:
    """History as columns for plotting: time, host figures, and per-GPU util/memory/power.

    GPU columns are keyed "gpu{index}.{metric}"; a value NVML did not give stays None, which
    plots as a gap rather than a false zero.
    """
    out: dict[str, list[Any]] = {
        "time": [datetime.fromtimestamp(s.timestamp) for s in snaps],
        "host.cpu_percent": [s.host.cpu_percent for s in snaps],
        "host.ram_gib": [s.host.ram_used_bytes / 2**30 for s in snaps],
        "host.rss_gib": [s.host.process_rss_bytes / 2**30 for s in snaps],
    }
    metrics: dict[str, Callable[[GpuSample], Any]] = {
        "util_percent": lambda g: g.util_gpu_percent,
        "memory_util_percent": lambda g: g.util_memory_percent,
        "memory_gib": lambda g: None if g.memory_used_bytes is None else g.memory_used_bytes / 2**30,
        "power_w": lambda g: g.power_w,
    }
    indices = sorted({g.index for s in snaps for g in s.gpus})
    for i in indices:
        for name, get in metrics.items():
            out[f"gpu{i}.{name}"] = [next((get(g) for g in s.gpus if g.index == i), None) for s in snaps]
    return out
