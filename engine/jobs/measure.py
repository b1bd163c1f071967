"""The measurement core: one window that every job kind, the CLI commands, each sweep point and the benchmarks
measure with, so a run's figures are that run's and mean the same everywhere.

Why each figure is measured the way it is:
- wall_s: the window's own clock, from opening to closing, after a CUDA device has finished its queued work
  (kernels run asynchronously). Stages overlap across threads, so their times are reported beside it, never
  summed into it.
- peak_allocated_bytes (CUDA, when the run used PyTorch there): PyTorch's allocator peak, reset when the window
  opens and read when it closes, so it is this run's high-water mark and not the process's all-time one. The
  allocator has one peak counter per device and windows nest (a job around a sweep, a window per sweep point),
  so a window that resets it first folds the peak so far into every open window, and hands its own back on
  closing. Where CUDA was not yet initialised at the opening, the counter starts inside the window anyway.
- peak_device_used_bytes (CUDA): NVML's used memory of the whole device (every process, CUDA contexts, the
  caching allocator's reserve, ONNX Runtime's arena): the highest sample taken while the window is open. Read
  after teardown it would show only what is left.
- peak_rss_bytes: this process's resident set, the highest sample, with readings at the start and the end. The
  OS's high-water mark (ru_maxrss) cannot be reset, so it reports the biggest job the process ever ran.
- energy_j: NVML's total-energy counter (mJ since the driver loaded) read at both ends where the card has one
  (energy_source "NVML counter"; None where it did not move: the window was shorter than its ~100 ms update), else
  the power samples integrated over time ("integrated power"), else None.
- telemetry: the samples as rows of TELEMETRY_COLUMNS, thinned evenly to at most MAX_TELEMETRY_ROWS (peaks and
  energy use every sample, not the thinned rows).

torch is only touched when it is already imported and has initialised CUDA, and the device is CUDA, so CPU jobs
and the CLI do not pay for importing it; any NVML call may be unavailable, and then its figure is None.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from engine.system.gpu_memory import memory_info

log = logging.getLogger(__name__)

TELEMETRY_COLUMNS = (
    "seconds",
    "gpu_util_percent",
    "device_used_bytes",
    "power_w",
    "host_cpu_percent",
    "process_rss_bytes",
)
MAX_TELEMETRY_ROWS = 240
KEPT_ROWS = 8 * MAX_TELEMETRY_ROWS  # rows held while open; beyond that every other one goes (a long job stays small)
NVML_COUNTER = "NVML counter"
INTEGRATED_POWER = "integrated power"


class PeakCounter(Protocol):
    """A device allocator's one resettable high-water mark (PyTorch's CUDA caching allocator, or a test's)."""

    def in_use(self) -> bool: ...
    def allocated(self) -> int: ...
    def peak(self) -> int: ...
    def reset_peak(self) -> None: ...
    def synchronize(self) -> None: ...


@dataclass(frozen=True)
class TorchCudaAllocator:
    """PyTorch's CUDA allocator on one device, equal per device (nested windows share its one counter).

    It is read only once torch is imported and has initialised CUDA: before that nothing can have been allocated,
    so a window opened earlier (a worker's first job) still gets the whole peak, and touching the allocator
    would import torch or initialise CUDA for a job that may never use them."""

    index: int

    def _cuda(self) -> Any:
        torch = sys.modules.get("torch")
        return torch.cuda if torch is not None and torch.cuda.is_initialized() else None

    def in_use(self) -> bool:
        return self._cuda() is not None

    def allocated(self) -> int:
        cuda = self._cuda()
        return 0 if cuda is None else int(cuda.memory_allocated(self.index))

    def peak(self) -> int:
        cuda = self._cuda()
        return 0 if cuda is None else int(cuda.max_memory_allocated(self.index))

    def reset_peak(self) -> None:
        cuda = self._cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats(self.index)

    def synchronize(self) -> None:
        cuda = self._cuda()
        if cuda is not None:
            cuda.synchronize(self.index)


_open_windows: list[Window] = []
_open_lock = threading.Lock()


@functools.cache
def _shared_nvml() -> Any:
    """One NVML source per process (initialising NVML lists every device: not something to do per window)."""
    from engine.system.gpu_memory import nvml_source

    return nvml_source()


def _cuda_index(device: str) -> int:
    from engine.runtimes.base import cuda_index

    return cuda_index(device)


def _torch_allocator(device: str) -> TorchCudaAllocator | None:
    return TorchCudaAllocator(_cuda_index(device)) if device.startswith("cuda") else None


def _nvml_for(device: str) -> Any:
    if not device.startswith("cuda"):
        return None
    from engine.system.gpu_memory import nvml_device

    return nvml_device(_shared_nvml(), _cuda_index(device))


def thin(rows: list[list[Any]], limit: int = MAX_TELEMETRY_ROWS) -> list[list[Any]]:
    """At most `limit` (>= 2) rows, evenly spaced, the first and the last kept."""
    if len(rows) <= limit:
        return list(rows)
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


class Window:
    """One measured run. Open it with `measured(...)`; `figures()` gives the figures (so far, while open)."""

    def __init__(self, device: str, interval_s: float, nvml_device: Any, allocator: PeakCounter | None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.device, self.interval_s = device, interval_s
        self._nvml, self._allocator = nvml_device, allocator
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_reading = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0
        self._samples = 0
        self._rows: list[list[Any]] = []
        self._stride = 1  # keep every stride-th reading as a row
        self._last_row: list[Any] | None = None
        self._peak_rss: int | None = None
        self._peak_used: int | None = None
        self._peak_allocated: int | None = None
        self._allocator_used = False  # whether the allocator was in use when the window closed
        self._integrated_j = 0.0
        self._powered = False  # two readings with power: the integral means something
        self._last_power: tuple[float, float] | None = None  # (seconds, watts) of the latest reading with power
        self._counter_start: float | None = None
        self._counter_end: float | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------- opening, closing

    def _open(self) -> None:
        if self._allocator is not None:
            with _open_lock:
                self._hand_to_open_windows(self._allocator.peak())
                self._allocator.reset_peak()
                self._peak_allocated = self._allocator.allocated()
                _open_windows.append(self)
        self._counter_start = self._energy_counter()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample_loop, name="avatarbench-measure", daemon=True)
        self._thread.start()
        self._first_reading.wait(5.0)

    def _close(self, finished: bool) -> None:
        """`finished`: the body ended normally, so queued device work is waited for (after an error it may be the
        device that failed, and waiting would replace that error with another)."""
        try:
            if finished and self._allocator is not None:
                self._allocator.synchronize()
        finally:
            self._t1 = time.perf_counter()
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5.0)
            self._counter_end = self._energy_counter()
            self._closed = True
            if self._allocator is not None:
                self._allocator_used = self._allocator.in_use()
                with _open_lock:
                    peak = self._allocator.peak()  # since the latest reset, which every open window contains
                    self._fold(peak)
                    _open_windows.remove(self)
                    self._hand_to_open_windows(peak)

    def _fold(self, peak: int) -> None:
        self._peak_allocated = peak if self._peak_allocated is None else max(self._peak_allocated, peak)

    def _hand_to_open_windows(self, peak: int) -> None:
        """Fold an allocator peak into the other open windows on the same allocator (with _open_lock held)."""
        for other in _open_windows:
            if other is not self and other._allocator == self._allocator:
                other._fold(peak)

    # ------------------------------------------------------------------------------------------------ sampling

    def _sample_loop(self) -> None:
        psutil.cpu_percent(interval=None)  # primes this thread's CPU baseline (psutil keeps one per thread)
        self._reading(cpu_percent=None)
        self._first_reading.set()
        while not self._stop.wait(self.interval_s):
            self._reading(psutil.cpu_percent(interval=None))
        self._reading(psutil.cpu_percent(interval=None))

    def _reading(self, cpu_percent: float | None) -> None:
        """One sample; a sampler must outlive any one bad reading."""
        try:
            seconds = time.perf_counter() - self._t0
            try:
                rss: int | None = int(self._process.memory_info().rss)
            except (psutil.Error, OSError):
                rss = None
            util, used, power = self._gpu_reading()
            self._record([seconds, util, used, power, cpu_percent, rss])
        except Exception:
            log.exception("measurement sample failed")

    def _gpu_reading(self) -> tuple[float | None, int | None, float | None]:
        nvml = self._nvml
        if nvml is None:
            return None, None, None
        util = nvml.get(getattr(nvml.nvml, "nvmlDeviceGetUtilizationRates", None))
        memory = memory_info(nvml)
        milliwatts = nvml.get(getattr(nvml.nvml, "nvmlDeviceGetPowerUsage", None))
        return (
            None if util is None else float(util.gpu),
            None if memory is None else int(memory.used),
            None if milliwatts is None else milliwatts / 1000.0,
        )

    def _record(self, row: list[Any]) -> None:
        seconds, _, used, power, _, rss = row
        with self._lock:
            self._samples += 1
            if rss is not None:
                self._peak_rss = rss if self._peak_rss is None else max(self._peak_rss, rss)
            if used is not None:
                self._peak_used = used if self._peak_used is None else max(self._peak_used, used)
            if power is not None:
                if self._last_power is not None:  # trapezoid rule between readings that have power
                    before_s, before_w = self._last_power
                    self._integrated_j += (before_w + power) / 2 * (seconds - before_s)
                    self._powered = True
                self._last_power = (seconds, power)
            row = [round(seconds, 3), *row[1:]]
            self._last_row = row
            if (self._samples - 1) % self._stride == 0:
                self._rows.append(row)
                if len(self._rows) > KEPT_ROWS:
                    self._rows = self._rows[::2]
                    self._stride *= 2

    def _energy_counter(self) -> float | None:
        """Joules since the driver loaded, where the card counts them."""
        if self._nvml is None:
            return None
        millijoules = self._nvml.get(getattr(self._nvml.nvml, "nvmlDeviceGetTotalEnergyConsumption", None))
        return None if millijoules is None else float(millijoules) / 1000.0

    # --------------------------------------------------------------------------------------------------- figures

    def _energy(self) -> tuple[float | None, str | None]:
        end = self._counter_end if self._closed else self._energy_counter()
        if self._counter_start is not None and end is not None:
            # A counter that did not move: a window shorter than its update (about 100 ms). Power readings say no
            # more there (on recent cards each is a 1 s average): no figure rather than a guess.
            return (end - self._counter_start, NVML_COUNTER) if end > self._counter_start else (None, None)
        if self._powered:
            return self._integrated_j, INTEGRATED_POWER
        return None, None

    def figures(self) -> dict[str, Any]:
        """The window's figures, JSON-ready (see the module's docstring for what each one means)."""
        peak_allocated = None
        if self._allocator is not None and not self._closed and self._allocator.in_use():
            peak_allocated = max(self._peak_allocated or 0, self._allocator.peak())
        elif self._allocator_used:
            peak_allocated = self._peak_allocated
        energy_j, energy_source = self._energy()
        with self._lock:
            rows = list(self._rows)
            if self._last_row is not None and (not rows or rows[-1] is not self._last_row):
                rows.append(self._last_row)
            return {
                "device": self.device,
                "wall_s": (self._t1 if self._closed else time.perf_counter()) - self._t0,
                "peak_rss_bytes": self._peak_rss,
                "peak_allocated_bytes": peak_allocated,
                "peak_device_used_bytes": self._peak_used,
                "energy_j": energy_j,
                "energy_source": energy_source,
                "samples": self._samples,
                "telemetry_columns": list(TELEMETRY_COLUMNS),
                "telemetry": thin(rows),
            }


@contextmanager
def measured(
    device: str, interval_s: float = 0.05, *, nvml_device: Any = None, allocator: PeakCounter | None = None
) -> Iterator[Window]:
    """Measure the block as one run on `device` ("cpu", "cuda", "cuda:N"), sampling every `interval_s`.

    On a CUDA device the NVML device behind it is read, and PyTorch's allocator once the run has initialised
    CUDA; `nvml_device` (an object with `.nvml` and a forgiving `.get(fn, *args)`, as engine.system.telemetry's)
    and `allocator` replace them (tests, other libraries). Windows nest and may be opened from any thread.
    """
    window = Window(
        device,
        interval_s,
        nvml_device if nvml_device is not None else _nvml_for(device),
        allocator if allocator is not None else _torch_allocator(device),
    )
    window._open()
    try:
        yield window
    except BaseException:
        window._close(finished=False)
        raise
    window._close(finished=True)


def _size(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def describe(figures: dict[str, Any]) -> str:
    """The figures in one line, for a terminal."""
    parts = [f"wall {figures['wall_s']:.2f} s", f"peak RSS {_size(figures['peak_rss_bytes'])}"]
    if figures.get("peak_allocated_bytes") is not None:
        parts.append(f"peak allocated {_size(figures['peak_allocated_bytes'])}")
    if figures.get("peak_device_used_bytes") is not None:
        parts.append(f"peak device used {_size(figures['peak_device_used_bytes'])}")
    if figures.get("energy_j") is not None:
        parts.append(f"energy {figures['energy_j']:.1f} J ({figures['energy_source']})")
    return ", ".join(parts)


__all__ = [
    "INTEGRATED_POWER",
    "MAX_TELEMETRY_ROWS",
    "NVML_COUNTER",
    "TELEMETRY_COLUMNS",
    "PeakCounter",
    "TorchCudaAllocator",
    "Window",
    "describe",
    "measured",
    "thin",
]
