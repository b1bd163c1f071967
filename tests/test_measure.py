"""engine.jobs.measure: per-run peaks, nesting over one allocator counter, wall time beside overlapping stages,
energy from NVML's counter or integrated power, telemetry thinning. NVML and the allocator are faked on the CPU;
the CUDA allocator's folding is checked for real where a GPU is present."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import engine.jobs.measure as measure
from engine.core.results import RunResult
from engine.jobs.measure import INTEGRATED_POWER, MAX_TELEMETRY_ROWS, NVML_COUNTER, describe, measured, thin

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
MIB = 2**20


def _wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Poll until the sampler thread has seen something (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class NotSupported(Exception):
    """As pynvml's NVMLError_NotSupported: the forgiving layer turns it into None."""


class FakeNvml:
    """The NVML calls the window makes, as pynvml names them; None for a figure makes its call unsupported."""

    def __init__(self, used: int = 2 * GIB, milliwatts: int | None = 200_000, energy_mj: list[int] | None = None):
        self.used, self.milliwatts, self.energy_mj = used, milliwatts, list(energy_mj or [])

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return SimpleNamespace(gpu=75, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(used=self.used, total=80 * GIB)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        if self.milliwatts is None:
            raise NotSupported
        return self.milliwatts

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        if not self.energy_mj:
            raise NotSupported
        return self.energy_mj.pop(0)


class FakeDevice:
    """What engine.system.telemetry's NVML device offers: the bindings and a `get` that never raises."""

    def __init__(self, nvml: FakeNvml) -> None:
        self.nvml = nvml

    def get(self, fn: Callable[..., Any] | None, *args: Any) -> Any:
        try:
            return None if fn is None else fn(None, *args)
        except NotSupported:
            return None


class FakeAllocator:
    """One resettable peak counter, as PyTorch's CUDA caching allocator keeps per device."""

    def __init__(self) -> None:
        self.current = self.high = 0

    def in_use(self) -> bool:
        return True

    def allocate(self, size: int) -> None:
        self.current += size
        self.high = max(self.high, self.current)

    def free(self, size: int) -> None:
        self.current -= size

    def allocated(self) -> int:
        return self.current

    def peak(self) -> int:
        return self.high

    def reset_peak(self) -> None:
        self.high = self.current

    def synchronize(self) -> None:
        pass


def _churn(allocator: FakeAllocator, size: int) -> None:
    allocator.allocate(size)
    allocator.free(size)


def test_a_1_gb_allocation_in_one_job_does_not_appear_in_the_next_jobs_peak() -> None:
    with measured("cpu", interval_s=0.01) as first:
        before = first.figures()["peak_rss_bytes"]  # the reading taken when the window opened
        block = np.ones(GIB, np.uint8)  # every page written: the resident set really grows
        assert _wait_until(lambda: first.figures()["peak_rss_bytes"] >= before + 0.9 * GIB)
        del block
    with measured("cpu", interval_s=0.01) as second:
        at_start = second.figures()["peak_rss_bytes"]
        little = np.ones(MIB, np.uint8)
        del little
    big, small = first.figures(), second.figures()
    assert big["peak_rss_bytes"] >= before + 0.9 * GIB
    assert small["peak_rss_bytes"] < big["peak_rss_bytes"] - 0.5 * GIB
    assert small["peak_rss_bytes"] < at_start + 0.1 * GIB
    json.dumps(big)  # JSON-ready


def test_nested_windows_share_the_allocator_counter_without_losing_the_outer_peak() -> None:
    allocator = FakeAllocator()
    allocator.allocate(100)  # resident before the job: networks kept warm from an earlier one
    with measured("cpu", allocator=allocator) as job:
        _churn(allocator, 500)  # the job's own work before its points
        with measured("cpu", allocator=allocator) as point1:
            _churn(allocator, 300)
        with measured("cpu", allocator=allocator) as point2:
            _churn(allocator, 800)
        with measured("cpu", allocator=allocator) as point3:
            _churn(allocator, 50)
        assert job.figures()["peak_allocated_bytes"] == 900  # read while open, too
        _churn(allocator, 1500)
    with measured("cpu", allocator=allocator) as next_job:
        pass
    peaks = [w.figures()["peak_allocated_bytes"] for w in (point1, point2, point3, job, next_job)]
    assert peaks == [400, 900, 150, 1600, 100]


def test_a_failing_window_still_hands_its_peak_back_and_closes() -> None:
    allocator = FakeAllocator()
    with measured("cpu", allocator=allocator) as job:
        with pytest.raises(ValueError), measured("cpu", allocator=allocator):
            _churn(allocator, 700)
            raise ValueError("the point failed")
        _churn(allocator, 10)
    assert job.figures()["peak_allocated_bytes"] == 700
    assert measure._open_windows == []


def test_an_outer_windows_peak_from_before_a_nested_window_opened_is_kept() -> None:
    """The nested window resets the one counter: what the job reached before its first point must not be lost."""
    allocator = FakeAllocator()
    with measured("cpu", allocator=allocator) as job:
        _churn(allocator, 700)
        with measured("cpu", allocator=allocator) as point:
            _churn(allocator, 300)
    assert (job.figures()["peak_allocated_bytes"], point.figures()["peak_allocated_bytes"]) == (700, 300)


def test_a_window_on_another_devices_allocator_keeps_its_own_peak() -> None:
    """cuda:1's window nested in cuda:0's: each device has its own counter, and neither takes the other's peak."""
    first, second = FakeAllocator(), FakeAllocator()
    with measured("cpu", allocator=first) as outer:
        _churn(first, 100)
        with measured("cpu", allocator=second) as inner:
            _churn(second, 900)
    assert (outer.figures()["peak_allocated_bytes"], inner.figures()["peak_allocated_bytes"]) == (100, 900)


class LostDevice(FakeAllocator):
    """A device that failed: waiting for its queued work raises."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def synchronize(self) -> None:
        self.waits += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_failed_run_keeps_its_own_error_and_a_finished_one_waits_for_its_device() -> None:
    lost = LostDevice()
    with pytest.raises(ValueError, match="the run failed"), measured("cpu", allocator=lost):
        raise ValueError("the run failed")
    assert lost.waits == 0
    with pytest.raises(RuntimeError, match="illegal memory access"), measured("cpu", allocator=lost):
        pass
    assert lost.waits == 1 and measure._open_windows == []


def test_a_window_must_sample_at_some_interval() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"), measured("cpu", interval_s=0):
        pass


def test_wall_time_is_measured_beside_overlapping_stages_not_summed_from_them() -> None:
    result = RunResult()
    both_inside = threading.Barrier(2)

    def stage(name: str) -> None:
        with result.stage(name):
            both_inside.wait()
            time.sleep(0.3)

    with measured("cpu") as window:
        threads = [threading.Thread(target=stage, args=(name,)) for name in ("decode-detect", "encode")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    result.measurement = window.figures()
    stage_seconds = [s.seconds for s in result.stages]
    assert max(stage_seconds) <= result.measurement["wall_s"] < sum(stage_seconds)
    assert RunResult.from_dict(json.loads(result.to_json())).measurement == result.measurement


def test_the_device_memory_peak_is_sampled_during_the_run_not_read_after_it() -> None:
    nvml = FakeNvml(used=1 * GIB)
    with measured("cpu", interval_s=0.01, nvml_device=FakeDevice(nvml)) as window:
        nvml.used = 5 * GIB
        assert _wait_until(lambda: window.figures()["peak_device_used_bytes"] == 5 * GIB)
        nvml.used = 1 * GIB  # torn down before the window closes
    figures = window.figures()
    assert figures["peak_device_used_bytes"] == 5 * GIB
    assert figures["telemetry"][-1][2] == 1 * GIB and figures["telemetry"][-1][1] == 75.0


def test_energy_comes_from_the_nvml_counter_where_the_card_has_one() -> None:
    nvml = FakeNvml(energy_mj=[1_000_000, 1_005_000])  # read when the window opens and when it closes
    with measured("cpu", nvml_device=FakeDevice(nvml)) as window:
        pass
    figures = window.figures()
    assert figures["energy_source"] == NVML_COUNTER and figures["energy_j"] == pytest.approx(5.0)


def test_a_counter_that_did_not_move_gives_no_energy_figure() -> None:
    """A window shorter than the counter's ~100 ms update: its power readings (1 s averages on recent cards) would
    be a guess, and a sweep's 35 ms windows read 4x too low that way."""
    with measured("cpu", interval_s=0.01, nvml_device=FakeDevice(FakeNvml(energy_mj=[7_000, 7_000]))) as window:
        time.sleep(0.05)
    figures = window.figures()
    assert figures["energy_j"] is None and figures["energy_source"] is None


def test_energy_otherwise_integrates_the_power_samples() -> None:
    with measured("cpu", interval_s=0.01, nvml_device=FakeDevice(FakeNvml(energy_mj=[]))) as window:
        time.sleep(0.1)
    figures = window.figures()
    rows = figures["telemetry"]
    assert figures["energy_source"] == INTEGRATED_POWER
    # 200 W constant from the first reading to the last (their times are rounded to the millisecond)
    assert figures["energy_j"] == pytest.approx(200.0 * (rows[-1][0] - rows[0][0]), abs=0.4)
    assert rows[0][3] == 200.0


def test_integrated_energy_follows_the_power_between_readings() -> None:
    """100 W, then 1000 W: each interval counts the mean of the readings at its ends (the trapezoid rule)."""
    nvml = FakeNvml(milliwatts=100_000, energy_mj=[])
    with measured("cpu", interval_s=0.02, nvml_device=FakeDevice(nvml)) as window:
        assert _wait_until(lambda: window.figures()["samples"] >= 3)
        nvml.milliwatts = 1_000_000
        seen = window.figures()["samples"]
        assert _wait_until(lambda: window.figures()["samples"] >= seen + 3)
    figures = window.figures()
    rows = figures["telemetry"]
    assert len(rows) == figures["samples"] and {row[3] for row in rows} == {100.0, 1000.0}
    trapezoids = sum((a[3] + b[3]) / 2 * (b[0] - a[0]) for a, b in pairwise(rows))
    # the rows' times are rounded to the millisecond: at most 0.5 ms x 450 W off at each side of the change, where
    # counting each interval at its end's power alone would be 450 W x the 20 ms interval (9 J) off
    assert figures["energy_j"] == pytest.approx(trapezoids, abs=1.0)


def test_one_power_reading_is_no_energy_figure() -> None:
    """Power read when the window opened and never again: no interval to integrate over, so no figure (not 0 J)."""
    nvml = FakeNvml(energy_mj=[])
    with measured("cpu", interval_s=0.01, nvml_device=FakeDevice(nvml)) as window:
        nvml.milliwatts = None  # the opening reading has been taken: measured() waits for it
        assert _wait_until(lambda: window.figures()["samples"] >= 3)
    assert (window.figures()["energy_j"], window.figures()["energy_source"]) == (None, None)


def test_a_closed_windows_figures_stay_as_they_were() -> None:
    with measured("cpu", interval_s=0.01) as window:
        pass
    closed = window.figures()
    time.sleep(0.05)
    assert window.figures() == closed


def test_no_energy_figure_without_a_counter_or_power_readings() -> None:
    with measured("cpu", nvml_device=FakeDevice(FakeNvml(milliwatts=None))) as window:
        pass
    figures = window.figures()
    assert (figures["energy_j"], figures["energy_source"]) == (None, None)
    assert figures["peak_device_used_bytes"] == 2 * GIB


def test_thinning_keeps_the_first_and_last_rows_evenly_spaced() -> None:
    rows = [[float(i)] for i in range(1000)]
    kept = thin(rows)
    assert len(kept) == MAX_TELEMETRY_ROWS and kept[0] == rows[0] and kept[-1] == rows[-1]
    assert all(a[0] < b[0] for a, b in pairwise(kept))
    assert thin(rows[:10]) == rows[:10]


class CountingNvml(FakeNvml):
    """Its utilisation is the number of readings so far: each telemetry row says which reading it is."""

    def __init__(self) -> None:
        super().__init__()
        self.readings = 0

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        self.readings += 1
        return SimpleNamespace(gpu=self.readings, memory=10)


def test_a_long_window_keeps_bounded_rows_ending_with_the_closing_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows held are every n-th reading, evenly over the whole window (n doubling as they are halved), and the
    closing reading ends them."""
    monkeypatch.setattr(measure, "KEPT_ROWS", 16)  # halve the held rows early, as an hour-long job would
    with measured("cpu", interval_s=0.001, nvml_device=FakeDevice(CountingNvml())) as window:
        assert _wait_until(lambda: window.figures()["samples"] >= 100)
    figures = window.figures()
    rows = figures["telemetry"]
    assert len(rows) <= 17 < figures["samples"]
    assert rows[0][4] is None  # the opening reading has no interval to measure CPU use over
    assert all(a[0] <= b[0] for a, b in pairwise(rows))
    assert rows[-1][0] >= round(figures["wall_s"], 3) - 0.001  # taken as the window closed
    readings = [int(row[1]) for row in rows]
    assert readings[0] == 1 and readings[-1] == figures["samples"]  # the opening and the closing readings
    steps = {b - a for a, b in pairwise(readings[:-1])}
    assert len(steps) == 1 and steps.pop() >= 8, readings  # 100 readings in at most 16 rows: every 8th or fewer


def test_telemetry_is_thinned_to_the_cap() -> None:
    with measured("cpu", interval_s=0.001) as window:
        assert _wait_until(lambda: window.figures()["samples"] >= 2 * MAX_TELEMETRY_ROWS)
    figures = window.figures()
    assert len(figures["telemetry"]) == MAX_TELEMETRY_ROWS
    assert len(figures["telemetry"][0]) == len(figures["telemetry_columns"])


def _run_python(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_windows_import_no_torch_and_leave_cuda_alone_until_the_run_uses_it() -> None:
    _run_python(
        "import sys\nfrom engine.jobs.measure import measured\n"
        "for device in ('cpu', 'cuda:0'):\n"
        "    with measured(device) as window:\n        pass\n"
        "    assert window.figures()['peak_allocated_bytes'] is None\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import torch\n"
        "with measured('cuda:0') as window:\n    torch.ones(4)\n"
        "assert window.figures()['peak_allocated_bytes'] is None and not torch.cuda.is_initialized()\n"
    )


def test_the_figures_read_as_one_line() -> None:
    figures = {
        "wall_s": 69.8, "peak_rss_bytes": 3 * GIB, "peak_allocated_bytes": GIB, "peak_device_used_bytes": 2 * GIB,
        "energy_j": 12_000.0, "energy_source": NVML_COUNTER,
    }  # fmt: skip
    assert describe(figures) == (
        "wall 69.80 s, peak RSS 3.00 GiB, peak allocated 1.00 GiB, peak device used 2.00 GiB, "
        "energy 12000.0 J (NVML counter)"
    )


@pytest.mark.gpu
def test_the_cuda_allocator_peak_is_per_window_and_folded_into_the_enclosing_one() -> None:
    import torch

    torch.cuda.init()
    resident = torch.cuda.memory_allocated(0)
    with measured("cuda:0") as job:
        big = torch.ones(512 * MIB, dtype=torch.uint8, device="cuda:0")
        del big
        with measured("cuda:0") as point:
            small = torch.ones(64 * MIB, dtype=torch.uint8, device="cuda:0")
            del small
        with measured("cuda:0") as idle:
            pass
    with measured("cuda:0") as next_job:
        pass
    job_peak = job.figures()["peak_allocated_bytes"]
    assert job_peak >= resident + 512 * MIB
    assert resident + 64 * MIB <= point.figures()["peak_allocated_bytes"] < resident + 128 * MIB
    assert idle.figures()["peak_allocated_bytes"] < resident + MIB
    assert next_job.figures()["peak_allocated_bytes"] < resident + MIB
    used = job.figures()["peak_device_used_bytes"]
    assert used is None or used >= 512 * MIB  # the caching allocator keeps the block reserved: NVML sees it


@pytest.mark.gpu
def test_a_window_opened_before_torch_was_imported_still_gets_the_allocator_peak() -> None:
    """A worker's first job: its window opens before the job's code imports torch and initialises CUDA."""
    _run_python(
        "from engine.jobs.measure import measured\n"
        "with measured('cuda:0') as window:\n"
        "    import torch\n"
        "    block = torch.ones(256 * 2**20, dtype=torch.uint8, device='cuda:0')\n"
        "    del block\n"
        "assert window.figures()['peak_allocated_bytes'] >= 256 * 2**20, window.figures()\n"
    )
