import sys
import time
import types
from collections import namedtuple

import psutil
import pytest

from engine.system import telemetry
from engine.system.gpu_memory import gpu_memory
from engine.system.telemetry import NvmlSource, TelemetrySampler, render_table, series
from ui.telemetry import current_values_html, strip_html

real_nvml = pytest.importorskip("pynvml")  # nvidia-ml-py's own error classes, as a driver raises them


class NotSupported(Exception):
    pass


def fake_nvml(
    unsupported: set[str] = frozenset(),
    devices: int = 1,
    init_error: Exception | None = None,
    handle_errors: dict[int, Exception] | None = None,
):
    """A pynvml stand-in: two GPUs' worth of plausible values; names in `unsupported` raise, and so does the handle
    of a GPU in `handle_errors`."""
    Util = namedtuple("Util", "gpu memory")
    Mem = namedtuple("Mem", "used total free")
    Proc = namedtuple("Proc", "pid usedGpuMemory")
    Pci = namedtuple("Pci", "busId")
    mod = types.ModuleType("pynvml")
    mod.NVMLError = Exception
    mod.NVML_TEMPERATURE_GPU, mod.NVML_CLOCK_SM, mod.NVML_CLOCK_MEM = 0, 1, 2
    mod.NVML_PCIE_UTIL_TX_BYTES, mod.NVML_PCIE_UTIL_RX_BYTES = 0, 1
    values = {
        "nvmlDeviceGetName": lambda h: f"NVIDIA Test GPU {h}",
        "nvmlDeviceGetUUID": lambda h: f"GPU-0000-{h}",
        "nvmlDeviceGetUtilizationRates": lambda h: Util(87, 40),
        "nvmlDeviceGetMemoryInfo": lambda h: Mem(20 * 2**30, 80 * 2**30, 60 * 2**30),
        "nvmlDeviceGetTemperature": lambda h, kind: 61,
        "nvmlDeviceGetPowerUsage": lambda h: 312_500,
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700_000,
        "nvmlDeviceGetClockInfo": lambda h, kind: {1: 1980, 2: 2619}[kind],
        "nvmlDeviceGetPcieThroughput": lambda h, kind: {0: 2048, 1: 4096}[kind],
        "nvmlDeviceGetEncoderUtilization": lambda h: [12, 167000],
        "nvmlDeviceGetDecoderUtilization": lambda h: [3, 167000],
        "nvmlDeviceGetFanSpeed": lambda h: 30,
        "nvmlDeviceGetPerformanceState": lambda h: 0,
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0x4 | 0x20,
        "nvmlDeviceGetMigMode": lambda h: [0, 0],
        "nvmlDeviceGetPciInfo": lambda h: Pci(f"00000000:{0x3B + h:02X}:00.0".encode()),  # pynvml's bytes
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [Proc(1, 3 * 2**30), Proc(999_999_999, None)],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda h: [Proc(1, 3 * 2**30)],
    }

    calls = mod.calls = {}

    def raising(name):
        def call(*args):
            calls[name] = calls.get(name, 0) + 1
            raise NotSupported("Not Supported")

        return call

    for name, fn in values.items():
        setattr(mod, name, raising(name) if name in unsupported else fn)

    def init():
        if init_error is not None:
            raise init_error

    mod.nvmlInit = init
    mod.nvmlDeviceGetCount = lambda: devices

    def handle(index: int) -> int:
        if index in (handle_errors or {}):
            raise handle_errors[index]
        return index

    mod.nvmlDeviceGetHandleByIndex = handle
    mod.nvmlSystemGetDriverVersion = lambda: b"580.159.04"
    mod.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    return mod


@pytest.fixture
def use_fake(monkeypatch):
    def install(**kwargs):
        monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(**kwargs))
        return NvmlSource()

    return install


def test_every_field_is_read_from_nvml(use_fake) -> None:
    source = use_fake(devices=2)
    assert source.status == "" and source.driver_version == "580.159.04" and source.cuda_driver_version == "13.0"
    gpu = source.sample()[1]
    assert gpu.name == "NVIDIA Test GPU 1" and gpu.uuid == "GPU-0000-1" and gpu.pci_bus_id == "00000000:3C:00.0"
    assert (gpu.util_gpu_percent, gpu.util_memory_percent, gpu.temperature_c) == (87, 40, 61)
    assert gpu.memory_percent == pytest.approx(25.0)
    assert (gpu.power_w, gpu.power_limit_w) == (312.5, 700.0)
    assert (gpu.sm_clock_mhz, gpu.memory_clock_mhz, gpu.pcie_rx_kbs, gpu.pcie_tx_kbs) == (1980, 2619, 4096, 2048)
    assert (gpu.encoder_percent, gpu.decoder_percent, gpu.fan_percent) == (12, 3, 30)
    assert gpu.performance_state == "P0" and gpu.mig_mode is False
    assert gpu.throttle_reasons == ["software power cap", "software thermal slowdown"]
    # A PID seen by both process lists is listed once; a PID from another namespace gets N/A.
    assert [(p.pid, p.kind) for p in gpu.processes] == [(1, "C"), (999_999_999, "C")]
    assert gpu.processes[1].name == "N/A" and gpu.processes[1].used_memory_bytes is None


def test_unsupported_calls_become_na_not_exceptions(use_fake) -> None:
    missing = {
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEncoderUtilization",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetPcieThroughput",
    }
    source = use_fake(unsupported=missing)  # like a MIG slice
    gpu = source.sample()[0]
    assert gpu.fan_percent is None and gpu.power_w is None and gpu.encoder_percent is None
    assert gpu.throttle_reasons is None and gpu.util_gpu_percent is None and gpu.pcie_rx_kbs is None
    assert gpu.memory_used_bytes == 20 * 2**30  # the supported fields are still there
    sampler = TelemetrySampler(nvml=source)
    table = render_table(sampler.sample_now())
    assert "N/A" in table and "NVIDIA Test GPU 0" in table and "20480MiB / 81920MiB" in table
    assert "Driver Version: 580.159.04" in table
    # An unsupported call is asked once, not on every tick.
    source.sample()
    calls = sys.modules["pynvml"].calls
    assert calls.pop("nvmlDeviceGetPcieThroughput") == 2  # asked once for RX, once for TX
    assert set(calls.values()) == {1} and len(calls) == len(missing) - 1


def test_a_gpu_nvml_cannot_open_is_named_and_the_others_keep_their_figures(use_fake) -> None:
    lost, denied = real_nvml.NVMLError(real_nvml.NVML_ERROR_GPU_IS_LOST), real_nvml.NVMLError_NoPermission()
    source = use_fake(devices=3, handle_errors={1: lost, 2: denied})
    assert source.status == "" and source.driver_version == "580.159.04" and source.cuda_driver_version == "13.0"
    gpus = source.sample()
    assert [g.error for g in gpus] == [None, "GPU is lost", "no permission"]
    assert gpus[0].memory_used_bytes == 20 * 2**30 and gpus[1].memory_used_bytes is None
    table = render_table(TelemetrySampler(nvml=source).sample_now())
    assert "1    GPU 1" in table and "GPU is lost" in table and "no permission" in table


def test_a_gpu_lost_mid_run_says_so_and_is_not_asked_again(use_fake) -> None:
    source = use_fake(devices=2)
    fake = sys.modules["pynvml"]
    asked = []

    def lost(handle, *args):
        asked.append(handle)
        if handle == 1:
            raise real_nvml.NVMLError(real_nvml.NVML_ERROR_GPU_IS_LOST)
        return namedtuple("Util", "gpu memory")(5, 5)

    fake.nvmlDeviceGetUtilizationRates = lost
    first = source.sample()
    assert [g.error for g in first] == [None, "GPU is lost"] and first[0].util_gpu_percent == 5
    assert source.sample()[1].error == "GPU is lost" and asked == [0, 1, 0]
    strip = strip_html(TelemetrySampler(nvml=source).sample_now(), [], 1.0)
    panel = current_values_html(TelemetrySampler(nvml=source).sample_now())
    assert "GPU is lost" in strip and "GPU is lost" in panel


def test_memory_used_is_nvml_v2s_where_the_driver_has_it(use_fake) -> None:
    source = use_fake()
    fake = sys.modules["pynvml"]
    Mem = namedtuple("Mem", "used total free")
    versions = []

    def memory(handle, version=None):
        versions.append(version)
        if version is None:  # v1 counts the driver's reserved memory in "used"
            return Mem(21 * 2**30, 80 * 2**30, 59 * 2**30)
        if fake.v2_missing:
            raise real_nvml.NVMLError(real_nvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return Mem(20 * 2**30, 80 * 2**30, 59 * 2**30)

    fake.nvmlDeviceGetMemoryInfo, fake.nvmlMemory_v2, fake.v2_missing = memory, real_nvml.nvmlMemory_v2, False
    assert source.sample()[0].memory_used_bytes == 20 * 2**30 and versions == [real_nvml.nvmlMemory_v2]
    old = use_fake()  # a driver before 510: v1, with v2 asked only once
    fake = sys.modules["pynvml"]
    fake.nvmlDeviceGetMemoryInfo, fake.nvmlMemory_v2, fake.v2_missing = memory, real_nvml.nvmlMemory_v2, True
    versions.clear()
    assert [old.sample()[0].memory_used_bytes for _ in range(2)] == [21 * 2**30] * 2
    assert versions == [real_nvml.nvmlMemory_v2, None, None]


@pytest.mark.parametrize(
    ("error", "said", "fix"),
    [
        (real_nvml.NVMLError_LibRmVersionMismatch(), "upgraded without a reboot", "sudo modprobe nvidia"),
        (real_nvml.NVMLError_DriverNotLoaded(), "kernel driver is not loaded", "dmesg"),
        (real_nvml.NVMLError_NoPermission(), "/dev/nvidia*", "usermod -aG video"),
        (real_nvml.NVMLError_LibraryNotFound(), "libnvidia-ml.so.1", "Install the NVIDIA driver"),
    ],
)
def test_each_nvml_start_failure_has_its_own_reason_and_fix(use_fake, error, said, fix) -> None:
    source = use_fake(init_error=error)
    assert source.devices == [] and said in source.status and fix in source.fix


def test_nvml_start_failure_is_a_plain_reason(use_fake) -> None:
    class NVMLError_LibraryNotFound(Exception):
        pass

    source = use_fake(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    assert source.devices == []
    assert source.status.startswith("no NVIDIA GPU visible (") and "libnvidia-ml.so.1" in source.status
    assert use_fake(devices=0).status == "no NVIDIA GPU visible (NVML is working but reports no devices)"


def test_without_nvml_host_telemetry_is_real_and_the_status_is_clear(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as on a Mac
    sampler = TelemetrySampler()
    time.sleep(0.1)
    snap = sampler.sample_now()
    assert snap.gpus == [] and snap.gpu_status == "no NVIDIA GPU visible (nvidia-ml-py is not installed)"
    assert sampler._nvml.fix.startswith("pip install nvidia-ml-py")
    assert snap.host.ram_total_bytes == psutil.virtual_memory().total
    assert snap.host.cpu_count == psutil.cpu_count()
    assert 0 < snap.host.process_rss_bytes <= snap.host.ram_total_bytes
    assert 0 <= snap.host.cpu_percent <= 100
    text = render_table(snap)
    assert "nvidia-ml-py is not installed" in text and "Host: CPU" in text


def test_this_machine_reports_its_real_state() -> None:
    snap = TelemetrySampler().sample_now()
    if snap.gpus:
        assert snap.gpu_status == ""
    else:
        assert snap.gpu_status.startswith("no NVIDIA GPU visible (")


def test_ring_buffer_keeps_only_the_history_window(use_fake) -> None:
    sampler = TelemetrySampler(interval_s=1.0, history_s=5.0, nvml=use_fake())
    assert sampler.capacity == 5
    for _ in range(8):
        sampler.sample_now()
    history = sampler.history()
    assert len(history) == 5 and history[-1] is sampler.latest()
    assert [s.timestamp for s in history] == sorted(s.timestamp for s in history)
    assert sampler.history(seconds=0) == [history[-1]]
    cols = series(history)
    assert len(cols["time"]) == 5 and cols["gpu0.util_percent"] == [87.0] * 5
    assert cols["gpu0.memory_gib"] == [20.0] * 5


@pytest.mark.parametrize(
    ("history_s", "interval_s", "kept"),
    [
        (10.0, 0.3, 33),  # 33.3 samples: the nearest whole number, not one more
        (10.0, 0.6, 17),  # 16.7 samples: the nearest, not one fewer
        (600.0, 0.5, 1200),  # a sample every half second keeps twice as many as the seconds
        (10.0, 60.0, 2),  # the shortest history at the longest interval (both settings' bounds): still two
    ],
)
def test_the_history_keeps_as_many_samples_as_fit_its_seconds(
    history_s: float, interval_s: float, kept: int, use_fake
) -> None:
    """AVATARBENCH_TELEMETRY_HISTORY seconds at AVATARBENCH_TELEMETRY_INTERVAL: the charts get that much back, and
    never fewer than two samples, the least a sparkline draws a line through (a zero-length buffer kept nothing)."""
    sampler = TelemetrySampler(interval_s=interval_s, history_s=history_s, nvml=use_fake())
    for _ in range(kept + 3):
        sampler.sample_now()
    history = sampler.history()
    assert len(history) == kept and history[-1] is sampler.latest()


def test_background_thread_samples_at_its_interval_and_stops(use_fake) -> None:
    sampler = TelemetrySampler(interval_s=0.05, history_s=60, nvml=use_fake()).start()
    try:
        deadline = time.monotonic() + 5
        while len(sampler.history()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sampler.running and len(sampler.history()) >= 4
    finally:
        sampler.stop()
    assert not sampler.running
    count = len(sampler.history())
    time.sleep(0.15)
    assert len(sampler.history()) == count


def test_the_process_sampler_is_a_singleton(monkeypatch) -> None:
    monkeypatch.setattr(telemetry, "_sampler", None)
    first = telemetry.get_sampler(interval_s=0.5, history_s=10)
    try:
        assert telemetry.get_sampler() is first and first.running
    finally:
        first.stop()


def test_snapshot_dict_is_json_ready(use_fake) -> None:
    import json

    snap = TelemetrySampler(nvml=use_fake()).sample_now()
    data = json.loads(json.dumps(snap.to_dict()))
    assert data["gpus"][0]["memory_percent"] == pytest.approx(25.0)
    assert data["time"] == snap.time_text


@pytest.mark.parametrize(
    ("visible", "cuda_id", "expected"),
    [
        (None, 1, 1),  # every GPU visible: the same numbers
        ("2,0", 0, 2),  # CUDA's cuda:0 is the machine's GPU 2
        ("2,0", 1, 0),
        ("2,0", 2, None),  # only two visible
        ("", 0, None),  # set but empty: no GPU at all
        ("GPU-bbbb", 0, 1),  # by UUID prefix, found among NVML's
        ("GPU-cccc", 0, None),
    ],
)
def test_cuda_device_ids_are_translated_to_nvml_indices(monkeypatch, visible, cuda_id, expected) -> None:
    from engine.system.gpu_memory import nvml_index

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_index(cuda_id, ["GPU-aaaa-1", "GPU-bbbb-2", None]) == expected
    worker = telemetry.WorkerActivity(f"cuda:{cuda_id}", 1)
    if visible is None or "GPU" not in visible:  # the worker rows of the GPU table follow the same translation
        assert worker.gpu_index == expected


def test_a_mig_instance_in_cuda_visible_devices_is_found_with_its_slices_memory(use_fake, monkeypatch) -> None:
    source = use_fake(devices=2)
    fake = sys.modules["pynvml"]
    slices = {"mig-0": "MIG-1111-aaaa", "mig-2": "MIG-2222-bbbb"}  # slot 1 is empty
    Mem = namedtuple("Mem", "used total free")
    whole = fake.nvmlDeviceGetMemoryInfo
    fake.nvmlDeviceGetMaxMigDeviceCount = lambda handle: 7
    fake.nvmlDeviceGetUUID = lambda handle: slices.get(handle, f"GPU-0000-{handle}")
    fake.nvmlDeviceGetMemoryInfo = lambda h: Mem(2**30, 10 * 2**30, 9 * 2**30) if h in slices else whole(h)

    def slot(handle, index):
        if handle != 1 or f"mig-{index}" not in slices:
            raise real_nvml.NVMLError(real_nvml.NVML_ERROR_NOT_FOUND)
        return f"mig-{index}"

    fake.nvmlDeviceGetMigDeviceHandleByIndex = slot
    source.devices[1].mig_mode = True
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-2222")
    assert gpu_memory(source, 0) == {"used": 2**30, "total": 10 * 2**30, "process": None}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-3333")  # no such instance: no figures rather than the wrong ones
    assert gpu_memory(source, 0) is None


def test_gpus_are_numbered_in_pci_bus_order_as_nvml_numbers_them() -> None:
    """CUDA's default order (fastest first) numbers mixed GPUs differently from NVML; the engine asks for NVML's."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = "import os, engine; print(os.environ['CUDA_DEVICE_ORDER'])"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_ORDER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=root)
    assert out.stdout.strip() == "PCI_BUS_ID"
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                            env={**env, "CUDA_DEVICE_ORDER": "FASTEST_FIRST"})  # fmt: skip
    assert chosen.stdout.strip() == "FASTEST_FIRST"  # the user's choice stays


def _host(ram_used_gib: float = 8.0, rss_mib: int = 512) -> telemetry.HostSample:
    """A host sample whose figures are distinct in every unit the table could confuse (GiB, MiB, bytes)."""
    return telemetry.HostSample(12.0, 16, int(ram_used_gib * 2**30), 64 * 2**30, rss_mib * 2**20, 50.0)


def test_the_table_shows_each_figure_in_its_unit_and_its_column(use_fake) -> None:
    """nvidia-smi's layout: a figure in the wrong unit or column (mW as W, KB/s as MB/s, power beside its cap the
    wrong way round) reads as a plausible number, so every one is checked where the header puts it."""
    (gpu,) = use_fake().sample()
    table = render_table(telemetry.Snapshot(0.0, _host(), [gpu], "580.159.04", "13.0"))
    # Fan, Temp, Perf, Pwr:Usage/Cap, Memory-Usage; then GPU-Util, Mem-Util, SM/Mem clock, PCIe RX/TX, Enc/Dec
    assert "30%   61C   P0    312W / 700W        20480MiB / 81920MiB" in table
    assert "     87%       40%       1980/2619 MHz       4.0/2.0             12%/3%    software power cap, " in table
    assert "1         C     " in table and "3072MiB" in table  # a process's GPU memory, in MiB
    assert "Host: CPU 12% of 16 cores   RAM 8.0/64.0 GiB   this process: RSS 512 MiB, CPU 50%" in table


def test_a_gpu_with_no_processes_says_so_in_the_table(use_fake) -> None:
    nvml = use_fake(unsupported={"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"})
    table = render_table(telemetry.Snapshot(0.0, _host(), nvml.sample()))
    assert "No running processes found" in table


def test_ram_used_is_what_new_processes_cannot_have(monkeypatch) -> None:
    """Used RAM is total minus available (page cache counts as free), as the host line and strip show it."""
    Memory = namedtuple("Memory", "total available used free")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory(64 * 2**30, 48 * 2**30, 10 * 2**30, 2 * 2**30))
    host = telemetry.HostSource().sample()
    assert (host.ram_used_bytes, host.ram_total_bytes) == (16 * 2**30, 64 * 2**30)


def test_clocks_held_by_nothing_read_none_and_an_unsupported_reading_na(use_fake) -> None:
    """No throttle reason is news ("none"); a card that cannot say is not (N/A): the two must not merge."""
    nvml = use_fake()
    fake = sys.modules["pynvml"]
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0
    gpu = nvml.sample()[0]
    assert gpu.throttle_reasons == [] and telemetry.throttle_text(gpu.throttle_reasons) == "none"
    assert telemetry.throttle_text(None) == "N/A"


def test_throttle_reasons_have_nvmls_bits() -> None:
    """Each reason's name is on the bit nvml.h gives it (a swap would blame the power supply for heat)."""
    names = {
        "nvmlClocksThrottleReasonGpuIdle": "idle",
        "nvmlClocksThrottleReasonApplicationsClocksSetting": "applications clocks setting",
        "nvmlClocksThrottleReasonSwPowerCap": "software power cap",
        "nvmlClocksThrottleReasonHwSlowdown": "hardware slowdown",
        "nvmlClocksThrottleReasonSyncBoost": "sync boost",
        "nvmlClocksThrottleReasonSwThermalSlowdown": "software thermal slowdown",
        "nvmlClocksThrottleReasonHwThermalSlowdown": "hardware thermal slowdown",
        "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": "hardware power brake",
        "nvmlClocksThrottleReasonDisplayClockSetting": "display clock setting",
        "nvmlClocksThrottleReasonBoardLimit": "board limit",
        "nvmlClocksThrottleReasonReliability": "reliability",
    }
    assert {getattr(real_nvml, constant): name for constant, name in names.items()} == telemetry.THROTTLE_REASONS


def test_an_unknown_performance_state_is_na_not_p32(use_fake) -> None:
    nvml = use_fake()
    sys.modules["pynvml"].nvmlDeviceGetPerformanceState = lambda h: real_nvml.NVML_PSTATE_UNKNOWN
    assert nvml.sample()[0].performance_state is None


def test_mig_mode_is_the_current_one_and_unknown_where_nvml_cannot_tell(use_fake) -> None:
    """nvmlDeviceGetMigMode gives (current, pending): a change waiting for a reset is not in force yet."""
    for modes, expected in (([1, 0], True), ([0, 1], False)):
        use_fake()
        sys.modules["pynvml"].nvmlDeviceGetMigMode = lambda h, modes=modes: modes
        assert NvmlSource().devices[0].mig_mode is expected
    assert use_fake(unsupported={"nvmlDeviceGetMigMode"}).devices[0].mig_mode is None  # a GeForce card: not False


def test_a_gpu_reporting_no_memory_total_has_no_memory_share() -> None:
    assert telemetry.GpuSample(0, "GPU 0", memory_used_bytes=0, memory_total_bytes=0).memory_percent is None


def test_nvml_that_starts_but_cannot_count_its_gpus_says_so(use_fake) -> None:
    use_fake()
    sys.modules["pynvml"].nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(real_nvml.NVMLError_Unknown())
    source = NvmlSource()
    assert source.devices == [] and source.status.startswith("no NVIDIA GPU visible (NVML could not count devices")
    assert source.driver_version == "580.159.04"  # read before counting: still true


def test_a_library_not_found_error_of_any_class_gets_the_driver_install(use_fake) -> None:
    source = use_fake(init_error=RuntimeError("NVML Shared Library Not Found"))
    assert "libnvidia-ml.so.1" in source.status and source.fix == telemetry.INSTALL_DRIVER


def test_history_columns_keep_gaps_where_a_gpu_gave_no_figure() -> None:
    """A GPU missing from a sample, or a figure NVML did not give, plots as a gap: never a false zero."""
    full = telemetry.GpuSample(0, "GPU 0", util_gpu_percent=50.0, memory_used_bytes=2**30, power_w=100.0,
                               power_limit_w=300.0)  # fmt: skip
    bare = telemetry.GpuSample(0, "GPU 0")
    snaps = [
        telemetry.Snapshot(1.0, _host(), [full]),
        telemetry.Snapshot(2.0, _host(), [bare, telemetry.GpuSample(1, "GPU 1", power_w=80.0)]),
    ]
    cols = series(snaps)
    assert cols["gpu0.util_percent"] == [50.0, None] and cols["gpu0.memory_gib"] == [1.0, None]
    assert cols["gpu0.power_w"] == [100.0, None] and cols["gpu1.power_w"] == [None, 80.0]
    assert cols["host.ram_gib"] == [8.0, 8.0] and cols["host.rss_gib"] == [0.5, 0.5]


def test_the_drivers_cuda_version_is_read_from_older_bindings_too(use_fake) -> None:
    """Bindings without the _v2 call still give the CUDA version the doctor picks install recipes by."""
    use_fake()
    fake = sys.modules["pynvml"]
    del fake.nvmlSystemGetCudaDriverVersion_v2
    fake.nvmlSystemGetCudaDriverVersion = lambda: 12040
    assert NvmlSource().cuda_driver_version == "12.4"
