import importlib.util
import json
import logging
import re
import sys
import types
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from test_telemetry import fake_nvml

from engine.core.settings import load_settings
from engine.system import doctor, doctor_gpu, doctor_host, doctor_ort, gpu_state
from engine.system.checks import INFO, NOTHING_TO_FIX, OK, PROBLEM, STATUSES, WARNING, Check, Context, DoctorReport
from engine.system.doctor import run_doctor
from engine.system.telemetry import GpuHealth, GpuProcess, GpuSample

NO_NVML = "the NVML library (libnvidia-ml.so.1) was not found: no NVIDIA driver is installed or mounted"


@pytest.fixture(scope="module")
def real_probe() -> dict:
    """This machine's own provider probe (a subprocess), run once for the module."""
    probe, error = doctor.run_ort_probe()
    assert probe is not None, error
    return probe


@pytest.fixture(scope="module")
def report(tmp_path_factory, real_probe):
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path_factory.mktemp("doctor"))})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(doctor, "run_ort_probe", lambda: (real_probe, None))
        return run_doctor(settings)


def _no_gpu_here() -> bool:
    import torch

    return not torch.cuda.is_available() and not doctor._gather_nvml()["nvml_gpus"] and not doctor._nvidia_on_pci()


def _has(package: str) -> bool:
    try:
        metadata.version(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_every_check_has_a_status_what_it_found_and_a_fix(report) -> None:
    assert len(report.checks) == len(doctor.CHECKS)
    for check in report.checks:
        assert check.status in STATUSES
        assert check.found.strip() and check.fix.strip()
        if check.status != OK:
            assert check.fix != NOTHING_TO_FIX
    data = json.loads(report.to_json())
    assert data["status"] == report.status and sum(data["counts"].values()) == len(report.checks)
    text = report.render_text()
    assert "fix:" in text or report.status == OK


def test_cuda_provider_failure_carries_the_loaders_own_error(report, real_probe, tmp_path: Path) -> None:
    if not _no_gpu_here() or not _has("onnxruntime-gpu"):
        pytest.skip("checks a machine with onnxruntime-gpu and no GPU, like CI")
    # Without a GPU the failure is expected: ok, with the loader's own text kept in the details (--json).
    quiet = report.get("onnxruntime-cuda")
    assert quiet.status == OK and "cannot open shared object file" in quiet.details["probe"]["error"]
    # The same probe where NVML sees a GPU: a problem, with the real dlopen text and the recipe.
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=real_probe))
    assert check.status == PROBLEM
    assert "cannot open shared object file" in check.found and ".so" in check.found
    assert check.details["probe"]["session_providers"] == ["CPUExecutionProvider"]
    assert "LD_LIBRARY_PATH" in check.fix and "onnxruntime-gpu[cuda,cudnn]" in check.fix


def test_without_a_gpu_the_report_says_so_once_as_information(report) -> None:
    if not _no_gpu_here():
        pytest.skip("this machine has a GPU")
    assert report.get("nvidia-driver").status == INFO
    assert report.get("nvidia-driver").found.startswith("no NVIDIA GPU on this machine")
    assert report.counts()[WARNING] == 0 and report.status == OK
    assert report.render_text().count("no NVIDIA GPU") == 1
    assert report.get("disk").status == OK


_LOADER_ERROR = "libcublasLt.so.13: cannot open shared object file: No such file or directory"


def _failing_probe() -> dict:
    failed = {"loaded": False, "session_providers": ["CPUExecutionProvider"], "error": _LOADER_ERROR}
    return {
        "version": "1.31.1",
        "available": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "build_cuda_version": "13.0",
        "providers": {"CUDAExecutionProvider": dict(failed), "TensorrtExecutionProvider": dict(failed)},
        "preload": {"providers": {"CUDAExecutionProvider": dict(failed), "TensorrtExecutionProvider": dict(failed)}},
    }


def _doctor_on(
    monkeypatch, tmp_path: Path, nvml: list[str], pci: int = 0, zero_gpu: bool = False, torch_cuda: str | None = None
):
    """The whole doctor on a described machine: PyTorch without a GPU (a CPU-only build unless `torch_cuda`),
    onnxruntime-gpu whose CUDA libraries are missing, and the GPUs NVML and the PCI bus show."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    driver, cuda = ("580.65", "13.0") if nvml else (None, None)
    facts = {"nvml_gpus": nvml, "nvml_status": "" if nvml else NO_NVML, "driver_version": driver}
    facts["cuda_driver_version"] = cuda
    monkeypatch.setattr(doctor, "_gather_nvml", lambda: facts)
    monkeypatch.setattr(doctor, "_nvidia_on_pci", lambda: pci)
    monkeypatch.setattr(doctor, "run_ort_probe", lambda: (_failing_probe(), None))
    if zero_gpu:
        monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    else:
        monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    return run_doctor(load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))


RECIPES = ("pip install", "download.pytorch.org", "tensorrt-cu", "LD_LIBRARY_PATH", "cuDNN", "libcuda", "--gpus all")


def test_no_gpu_is_one_line_of_information_and_no_install_recipe(monkeypatch, tmp_path: Path) -> None:
    report = _doctor_on(monkeypatch, tmp_path, nvml=[])
    assert report.counts()[WARNING] == 0 and report.counts()[PROBLEM] == 0 and report.status == OK
    assert [c.name for c in report.checks if c.status == INFO] == ["nvidia-driver", "weights"]
    text = report.render_text()
    assert text.count("no NVIDIA GPU") == 1 and "[info] nvidia-driver" in text and "no GPU" not in text
    assert not [r for r in RECIPES if r.lower() in text.lower()], text
    # The loader's error is not lost: --json keeps it.
    assert _LOADER_ERROR in report.to_json()


def test_a_gpu_that_is_not_used_keeps_the_install_recipes(monkeypatch, tmp_path: Path) -> None:
    report = _doctor_on(monkeypatch, tmp_path, nvml=["NVIDIA L4"])
    torch_check = report.get("pytorch")
    assert torch_check.status == PROBLEM and "NVIDIA L4" in torch_check.found
    # pinned to the installed version, and forced: pip would otherwise keep the CPU build or take the newest torch
    version = torch_version()
    assert f"pip install --force-reinstall torch=={version} --index-url https://download.pytorch.org/whl/cu130" in (
        torch_check.fix
    )
    cuda = report.get("onnxruntime-cuda")
    assert cuda.status == PROBLEM and _LOADER_ERROR in cuda.found and "onnxruntime-gpu[cuda,cudnn]" in cuda.fix
    assert "pip install 'tensorrt-cu13>=10,<11'" in report.get("onnxruntime-tensorrt").fix  # TensorRT 11 won't load
    assert report.get("device").status == WARNING and report.get("nvidia-driver").status == OK
    assert report.status == PROBLEM


def test_a_gpu_on_the_pci_bus_without_a_driver_gets_the_driver_recipe(monkeypatch, tmp_path: Path) -> None:
    report = _doctor_on(monkeypatch, tmp_path, nvml=[], pci=2)
    driver = report.get("nvidia-driver")
    assert driver.status == WARNING and driver.found.startswith("2 NVIDIA GPU(s) on the PCI bus")
    assert "--gpus all" in driver.fix
    assert report.get("pytorch").status == WARNING and "download.pytorch.org/whl/" in report.get("pytorch").fix
    assert "download.pytorch.org/whl/cu130" in report.get("pytorch").fix  # a driver installed now runs CUDA 13
    assert report.get("onnxruntime-cuda").status == WARNING and report.get("device").status == WARNING


def test_zero_gpu_outside_a_gpu_function_is_information_and_keeps_the_provider_checks(
    monkeypatch, tmp_path: Path
) -> None:
    report = _doctor_on(monkeypatch, tmp_path, nvml=[], zero_gpu=True, torch_cuda="13.0")
    assert report.get("nvidia-driver").status == INFO and "ZeroGPU" in report.get("nvidia-driver").found
    assert report.get("pytorch").status == OK
    # Without the `spaces` package no job can reach the GPU, so everything would run on the CPU: a problem, with
    # what to do instead.
    device = report.get("device")
    assert device.status == PROBLEM and "every job runs on the CPU" in device.found and "Hardware" in device.fix
    assert "the `spaces` package does not import" in device.found
    assert report.get("video-encoders").status == OK  # libx264: ZeroGPU's cards (H200) have no NVENC
    cuda = report.get("onnxruntime-cuda")  # inside @spaces.GPU the missing CUDA library still fails
    assert cuda.status == WARNING and _LOADER_ERROR in cuda.found and "@spaces.GPU" in cuda.fix


@pytest.fixture
def spaces_standin(monkeypatch) -> Iterator[None]:
    """The stand-in `spaces` of tests/zerogpu_spaces/ importable for one test, and unimportable again after it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "zerogpu_spaces"))
    try:
        yield
    finally:
        sys.modules.pop("spaces", None)


def test_zero_gpu_with_spaces_says_jobs_get_the_gpu_inside_gpu_functions(
    monkeypatch, tmp_path: Path, spaces_standin: None
) -> None:
    report = _doctor_on(monkeypatch, tmp_path, nvml=[], zero_gpu=True, torch_cuda="13.0")
    device = report.get("device")
    assert device.status == OK and device.details["zero_gpu"] and "@spaces.GPU" in device.found
    assert "attached only while a job runs" in device.found and "CPU" not in device.found
    assert report.counts()[PROBLEM] == 0 and report.get("nvidia-driver").status == INFO


def test_zero_gpu_with_a_spaces_that_offers_no_gpu_decorator_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setitem(sys.modules, "spaces", types.ModuleType("spaces"))  # some other package of that name
    check = doctor_gpu.check_device(_ctx(tmp_path, nvml_gpus=[], driver_version=None, cuda_driver_version=None))
    assert check.status == PROBLEM and "has no GPU decorator" in check.found
    sys.modules["spaces"].GPU = types.ModuleType("spaces.GPU")  # a submodule of that name: not callable
    assert "has no GPU decorator" in doctor_gpu.spaces_gpu_problem()
    assert "every job runs on the CPU" in check.found and check.details["spaces_problem"] and "Hardware" in check.fix


def test_nvidia_gpus_are_counted_from_sysfs_without_a_driver(tmp_path: Path) -> None:
    for name, vendor, kind in [
        ("0000:01:00.0", "0x10de", "0x030200"),  # an NVIDIA 3D controller (A100, H100, L4)
        ("0000:02:00.0", "0x10de", "0x030000"),  # an NVIDIA VGA controller
        ("0000:01:00.1", "0x10de", "0x040300"),  # the same card's audio function
        ("0000:03:00.0", "0x8086", "0x030000"),  # an Intel GPU
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "class").write_text(kind + "\n")
    (tmp_path / "0000:04:00.0").mkdir()  # unreadable entries are skipped
    assert doctor._nvidia_on_pci(tmp_path) == 2
    assert doctor._nvidia_on_pci(tmp_path / "absent") == 0


def test_the_video_check_keeps_ffmpegs_lines_off_the_terminal(capfd, caplog, tmp_path: Path) -> None:
    pytest.importorskip("av")
    caplog.set_level(logging.INFO)
    check = doctor_host.check_video(_ctx(tmp_path, nvml_gpus=[]))
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    # FFmpeg's lines reach the terminal through Python logging ("libav.*"): only debug records are allowed.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("libav")] == []
    if not check.details["h264_nvenc"]["works"]:  # the reason is kept in the details
        assert check.details["h264_nvenc"]["error"]
        assert "libcuda" not in check.found


def test_a_gpu_whose_video_engines_do_not_work_is_told_what_they_need(monkeypatch, tmp_path: Path) -> None:
    """NVENC and NVDEC both probed for real (here without a GPU neither works): decoding falls back to the CPU too."""
    import torch

    pytest.importorskip("av")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/test_gpu.py checks NVDEC itself")
    check = doctor_host.check_video(_ctx(tmp_path, nvml_gpus=["NVIDIA L4"]))
    assert check.status == WARNING and "NVDEC does not decode (NVDEC could not start on cuda:0" in check.found
    assert "libnvcuvid.so.1" in check.fix and "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in check.fix
    assert check.details["nvdec"]["ran_on"] == "cpu"
    quiet = doctor_host.check_video(_ctx(tmp_path, nvml_gpus=[]))  # no GPU: nothing to say about NVDEC
    assert quiet.status == OK and "NVDEC" not in quiet.found and quiet.details["nvdec"]["ran_on"] == "cpu"


def test_a_crashing_check_becomes_a_problem_not_an_exception(monkeypatch, tmp_path: Path) -> None:
    def broken(ctx):
        raise KeyError("boom")

    monkeypatch.setattr(doctor, "CHECKS", (doctor_host.check_python, broken))
    monkeypatch.setattr(doctor, "run_ort_probe", lambda: (None, "skipped"))
    result = run_doctor(load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))
    assert [c.status for c in result.checks] == [OK, PROBLEM]
    assert "KeyError" in result.checks[1].found and result.status == PROBLEM


def _one_l4_on_cuda_13(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch built for CUDA 13.0 seeing one NVIDIA L4 (8.9) it has kernels for."""
    import torch

    props = types.SimpleNamespace(name="NVIDIA L4", major=8, minor=9)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_89"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)


def _ctx(tmp_path: Path, **kw) -> Context:
    base = dict(
        settings=load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}),
        nvml_gpus=["NVIDIA T4"],
        nvml_status="",
        driver_version="535.0",
        cuda_driver_version="12.2",
    )
    base.update(kw)
    return Context(**base)


def _installed(monkeypatch, versions: dict[str, str]) -> None:
    """These distributions, and no other, install the `onnxruntime` import package (names as their metadata
    spells them)."""

    def fake_version(name: str) -> str:
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(doctor_ort.metadata, "version", fake_version)
    monkeypatch.setattr(doctor_ort.metadata, "packages_distributions", lambda: {"onnxruntime": list(versions)})


def test_two_onnxruntime_packages_together_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    _installed(monkeypatch, {"onnxruntime": "1.31.0", "onnxruntime-gpu": "1.31.1"})
    check = doctor_ort.check_ort_packages(_ctx(tmp_path))
    assert check.status == PROBLEM and "CPU-only runs" in check.found
    assert check.fix == "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu==1.31.1"
    _installed(monkeypatch, {"onnxruntime": "1.31.0"})
    check = doctor_ort.check_ort_packages(_ctx(tmp_path))  # the GPU build of the same release, not pip's newest
    assert (
        check.status == WARNING and check.fix == "pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.0"
    )
    # any variant that installs the package is found, whatever its name: no fixed list to fall behind
    _installed(monkeypatch, {"onnxruntime_gpu": "1.31.1", "onnxruntime-qnn": "1.31.0"})
    check = doctor_ort.check_ort_packages(_ctx(tmp_path))
    assert check.status == PROBLEM and "onnxruntime-qnn 1.31.0" in check.found
    assert check.fix == "pip uninstall -y onnxruntime-qnn onnxruntime-gpu && pip install onnxruntime-gpu==1.31.1"


def test_a_gpu_nvml_cannot_use_is_named_with_its_reset_and_the_driver_is_still_read(monkeypatch, tmp_path) -> None:
    pynvml = pytest.importorskip("pynvml")  # its real error classes, as a lost GPU raises them
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    fake.nvmlSystemGetCudaDriverVersion_v2 = lambda: 12040
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetName = lambda handle: "NVIDIA H100 80GB HBM3"
    fake.nvmlDeviceGetUUID = fake.nvmlDeviceGetMigMode = lambda handle: None

    def handle(index: int) -> int:
        if index == 1:  # fell off the bus (Xid 79)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    fake.nvmlDeviceGetHandleByIndex = handle
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    ctx = _ctx(tmp_path, **doctor._gather_nvml(), pci_gpus=2)
    assert ctx.nvml_gpus == ["NVIDIA H100 80GB HBM3"] and ctx.cuda_driver_version == "12.4"
    check = doctor_gpu.check_driver(ctx)
    assert check.status == PROBLEM and "GPU 1 (GPU is lost)" in check.found and "driver 550.54.15" in check.found
    assert "; the others work: NVIDIA H100 80GB HBM3" in check.found
    assert "nvidia-smi -r -i 1" in check.fix and "reboot" in check.fix and "Install the NVIDIA driver" not in check.fix
    assert "`sudo dmesg | grep -i xid` says why it failed (Xid 79: it fell off the bus" in check.fix
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda index: (_ for _ in ()).throw(pynvml.NVMLError_NoPermission())
    only = doctor_gpu.check_driver(_ctx(tmp_path, **doctor._gather_nvml(), pci_gpus=1))  # no GPU left to use
    assert only.status == PROBLEM and "GPU 0 (no permission)" in only.found and "/dev/nvidia0" in only.fix


def test_nvml_failing_to_start_gets_the_fix_for_its_cause(tmp_path: Path) -> None:
    from engine.system.telemetry import NVML_START_ERRORS

    what, fix = NVML_START_ERRORS["LibRmVersionMismatch"]
    ctx = _ctx(tmp_path, nvml_gpus=[], nvml_status=f"no NVIDIA GPU visible ({what})", nvml_fix=fix, pci_gpus=1)
    check = doctor_gpu.check_driver(ctx)
    assert check.status == WARNING and "without a reboot" in check.found
    assert check.fix.startswith("Reboot") and "Install the NVIDIA driver" not in check.fix


def test_a_driver_too_old_for_onnxruntime_gets_advice_for_onnxruntime_not_torch(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.6")  # runs on this CUDA 12.4 driver; onnxruntime's 13.0 does not
    ctx = _ctx(tmp_path, driver_version="550.54", cuda_driver_version="12.4", ort_probe={"build_cuda_version": "13.0"})
    check = doctor_gpu.check_driver(ctx)
    assert check.status == PROBLEM and "onnxruntime-gpu is built for CUDA 13.0" in check.found
    assert "PyTorch" not in check.found and "download.pytorch.org" not in check.fix
    assert "driver 580 or newer" in check.fix and "cuda-compat-13-0" in check.fix and "built for the CUDA" in check.fix
    # and the provider's own error says the same instead of the CUDA-libraries recipe
    probe = _failing_probe()
    probe["providers"]["CUDAExecutionProvider"]["error"] = (
        "session creation failed: CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version"
    )
    cuda = doctor_ort.check_ort_cuda(_ctx(tmp_path, cuda_driver_version="12.4", ort_probe=probe))
    assert cuda.status == PROBLEM and "too old for onnxruntime-gpu's CUDA 13.0" in cuda.found
    assert "cuda-compat" in cuda.fix and "onnxruntime-gpu[cuda,cudnn]" not in cuda.fix


def test_a_driver_too_old_for_both_wheels_gets_a_fix_for_each(monkeypatch, tmp_path: Path) -> None:
    """PyTorch's own build for the driver does nothing for onnxruntime-gpu: both fixes are given, each with its
    minimum driver; a CUDA 12 onnxruntime-gpu on a CUDA 11 driver gets CUDA 12's minimum and compat package."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    ctx = _ctx(tmp_path, driver_version="550.54", cuda_driver_version="12.4", ort_probe={"build_cuda_version": "13.0"})
    check = doctor_gpu.check_driver(ctx)
    assert check.status == PROBLEM
    assert "PyTorch is built for CUDA 13.0" in check.found and "onnxruntime-gpu is built for CUDA 13.0" in check.found
    torch_fix, ort_fix = check.fix.splitlines()
    assert torch_fix.startswith("PyTorch: Install its build for this driver") and "whl/cu126" in torch_fix
    assert ort_fix.startswith("onnxruntime-gpu (CUDA 13.0) needs driver 580 or newer")
    monkeypatch.setattr(torch.version, "cuda", None)
    old = _ctx(tmp_path, driver_version="470.82", cuda_driver_version="11.4", ort_probe={"build_cuda_version": "12.8"})
    fix = doctor_gpu.check_driver(old).fix
    assert fix.startswith("onnxruntime-gpu (CUDA 12.8) needs driver 525.60.13 or newer")
    assert "apt install cuda-compat-12-8, then put /usr/local/cuda-12.8/compat on LD_LIBRARY_PATH" in fix


def test_a_cudnn_that_does_not_load_is_a_warning_with_the_reinstall_of_this_build(monkeypatch, tmp_path) -> None:
    """CUDA works but cuDNN does not: convolutions fail or crawl, so the check says so and reinstalls this very
    build (its nvidia-cudnn wheel comes with it)."""
    import torch

    _one_l4_on_cuda_13(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=["NVIDIA L4"]))
    assert check.status == WARNING and "cuDNN not available" in check.found and check.details["cudnn"] is None
    assert check.fix.startswith("cuDNN does not load: reinstall torch")
    recipe = (
        f"pip install --force-reinstall torch=={torch_version()} --index-url https://download.pytorch.org/whl/cu130"
    )
    assert recipe in check.fix


def test_torch_and_onnxruntime_built_for_different_cuda_majors_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    check = doctor_ort.check_cuda_majors(_ctx(tmp_path, ort_probe={"build_cuda_version": "13.0"}))
    assert check.status == PROBLEM and "CUDA 12.6" in check.found and "CUDA 13.0" in check.found
    assert "download.pytorch.org/whl/cu130" in check.fix
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert doctor_ort.check_cuda_majors(_ctx(tmp_path, ort_probe={"build_cuda_version": "13.0"})).status == OK
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # one major: minor versions do not matter
    assert doctor_ort.check_cuda_majors(_ctx(tmp_path, ort_probe={"build_cuda_version": "12.6"})).status == OK
    monkeypatch.setattr(torch.version, "cuda", "12.6")  # no GPU anywhere: neither loads CUDA, nothing to fix
    no_gpu = _ctx(tmp_path, nvml_gpus=[], ort_probe={"build_cuda_version": "13.0"})
    assert doctor_ort.check_cuda_majors(no_gpu).status == OK


def test_tensorrt_failing_beside_a_working_cuda_provider_is_a_warning(tmp_path: Path) -> None:
    """The CUDA provider still serves the GPU; where it fails too, TensorRT's fix also carries the CUDA recipe."""
    probe = _failing_probe()
    probe["preload"] = {}
    failing = doctor_ort.check_ort_tensorrt(_ctx(tmp_path, ort_probe=probe))
    assert failing.status == PROBLEM and "TensorRT also needs what the CUDA provider needs" in failing.fix
    assert "onnxruntime-gpu[cuda,cudnn]" in failing.fix
    probe["providers"]["CUDAExecutionProvider"] = {"loaded": True, "session_providers": [], "error": None}
    served = doctor_ort.check_ort_tensorrt(_ctx(tmp_path, ort_probe=probe))
    assert served.status == WARNING and "TensorRT also needs" not in served.fix


@pytest.mark.parametrize(
    ("error", "available", "said"),
    [
        ("CUDA driver version is insufficient for CUDA runtime version", None, "too old for onnxruntime-gpu's CUDA"),
        ("cudaErrorNoDevice: no CUDA-capable device is detected", None, "CUDA sees no GPU in this process"),
        ("", ["CPUExecutionProvider"], "CUDAExecutionProvider is not built into onnxruntime 1.31.1"),
    ],
)
def test_each_cuda_provider_failure_is_named_by_its_cause(
    monkeypatch, tmp_path: Path, error: str, available: list[str] | None, said: str
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    probe = _failing_probe()
    probe["preload"] = {}
    probe["providers"]["CUDAExecutionProvider"]["error"] = error
    probe["available"] = available or probe["available"]
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert check.status == PROBLEM and said in check.found, check.found
    if "not built into" in said:  # the GPU build of the release installed
        assert check.fix == "pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.1"


def test_onnxruntime_failing_even_on_the_cpu_is_a_problem_without_a_gpu(tmp_path: Path) -> None:
    probe = _failing_probe()
    probe["providers"]["CUDAExecutionProvider"] = {"loaded": False, "session_providers": [], "error": "bad build"}
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, nvml_gpus=[], ort_probe=probe))
    assert check.status == PROBLEM and "cannot create a session even on the CPU: bad build" in check.found


@pytest.mark.parametrize(
    ("visible", "said"),
    [
        ("", "hides every GPU"),
        ("-1", "hides every GPU"),
        ("NoDevFiles", "hides every GPU"),
        (" ", "hides every GPU"),
        ("1", "names 1, which NVML does not know (it numbers GPUs 0 to 0)"),  # NVML numbers its one GPU 0
        ("3", "names 3, which NVML does not know"),
        ("GPU-deadbeef", "names GPU-deadbeef, which NVML does not know"),
    ],
)
def test_cuda_visible_devices_hiding_the_gpus_is_named(monkeypatch, tmp_path: Path, visible: str, said: str) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    devices = [GpuSample(0, "NVIDIA L4", "GPU-1234-abcd")]
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=["NVIDIA L4"], nvml_devices=devices))
    assert check.status == PROBLEM and f"CUDA_VISIBLE_DEVICES={visible!r}" in check.found and said in check.found
    assert "CUDA_VISIBLE_DEVICES" in check.fix and "download.pytorch.org" not in check.fix
    probe = _failing_probe()
    probe["providers"]["CUDAExecutionProvider"]["error"] = "CUDA failure 100: no CUDA-capable device is detected"
    cuda = doctor_ort.check_ort_cuda(_ctx(tmp_path, nvml_devices=devices, ort_probe=probe))
    assert said in cuda.found and "onnxruntime-gpu[cuda,cudnn]" not in cuda.fix
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,GPU-1234")  # known index and UUID prefix: not the explanation
    assert "CUDA_VISIBLE_DEVICES=" not in doctor_gpu.check_torch(_ctx(tmp_path, nvml_devices=devices)).found
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # NVML named its GPU but kept no record of it: still GPU 0
    assert "CUDA_VISIBLE_DEVICES=" not in doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=["NVIDIA L4"])).found


def test_mig_mode_without_an_instance_for_cuda_says_how_to_make_one(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = [GpuSample(0, "NVIDIA A100-SXM4-80GB", "GPU-a100", mig_mode=True)]
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=["NVIDIA A100-SXM4-80GB"], nvml_devices=devices))
    assert check.status == PROBLEM and "GPU 0 in MIG mode" in check.found
    assert "CUDA_VISIBLE_DEVICES=MIG-<uuid>" in check.fix and "nvidia-smi -i 0 -mig 0" in check.fix
    assert "sudo nvidia-smi mig -cgi <profile> -C" in check.fix  # -C: with its compute instance, which CUDA uses
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5f1e2d3c-aaaa-bbbb-cccc-0123456789ab")  # an instance is given
    given = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=["NVIDIA A100-SXM4-80GB"], nvml_devices=devices))
    assert "MIG mode" not in given.found and "NVML does not know" not in given.found


def test_a_gpu_on_the_pci_bus_that_cuda_cannot_use_is_said_to_leave_jobs_on_the_cpu(monkeypatch, tmp_path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=[], pci_gpus=1))
    assert check.status == WARNING
    assert "an NVIDIA GPU is on the PCI bus but CUDA is not available: everything runs on the CPU" in check.found
    assert check.fix == "First make the driver work (see nvidia-driver)."  # this PyTorch is already a CUDA build


def test_zero_gpu_with_a_cpu_only_torch_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=[]))
    assert check.status == PROBLEM and "CPU-only build" in check.found and "whl/cpu" in check.fix
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=[])).status == OK


def test_driver_older_than_the_wheels_cuda_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    ctx = _ctx(tmp_path, ort_probe={"build_cuda_version": "13.0"})
    check = doctor_gpu.check_driver(ctx)
    assert check.status == PROBLEM and "PyTorch is built for CUDA 13.0" in check.found
    assert f"torch=={torch_version()} --index-url https://download.pytorch.org/whl/cu126" in check.fix  # 12.2 runs it
    old = doctor_gpu.check_driver(_ctx(tmp_path, cuda_driver_version="11.8", ort_probe={"build_cuda_version": "13.0"}))
    # PyTorch 2.11-2.13 have no CUDA 11 build: the driver is what must change
    assert "download.pytorch.org" not in old.fix and "525.60.13 or newer runs CUDA 12 builds" in old.fix
    assert "580 or newer CUDA 13 builds" in old.fix
    ok = doctor_gpu.check_driver(_ctx(tmp_path, cuda_driver_version="13.1", ort_probe={"build_cuda_version": "13.0"}))
    assert ok.status == OK


def test_cpu_torch_next_to_a_visible_gpu_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = doctor_gpu.check_torch(_ctx(tmp_path))
    assert check.status == PROBLEM and "NVIDIA T4" in check.found
    assert "download.pytorch.org/whl/cu126" in check.fix
    old = doctor_gpu.check_torch(_ctx(tmp_path, driver_version="470.82", cuda_driver_version="11.4"))
    assert old.status == PROBLEM and old.fix.startswith("No build of the PyTorch this project pins runs on a driver")
    assert old.fix.endswith("; then install a CUDA build of PyTorch.")  # the driver first, then the wheel


def test_the_probe_imports_torch_before_onnxruntime_as_workers_do(real_probe) -> None:
    import torch

    assert real_probe["torch"] == torch.__version__


def test_provider_that_loads_only_after_preload_says_workers_do_not_get_it(tmp_path: Path) -> None:
    failed = {"loaded": False, "session_providers": ["CPUExecutionProvider"], "error": "libcudnn.so.9: missing"}
    loaded = {"loaded": True, "session_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "error": None}
    probe = {
        "version": "1.31.1",
        "available": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "build_cuda_version": "13.0",
        "providers": {"CUDAExecutionProvider": failed, "TensorrtExecutionProvider": failed},
        "preload": {"providers": {"CUDAExecutionProvider": loaded, "TensorrtExecutionProvider": failed}},
    }
    probe["torch"] = "2.13.0+cu126"
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))  # what a worker gets, with torch imported first
    assert check.status == PROBLEM and "does not load in a worker (PyTorch 2.13.0+cu126 imported first" in check.found
    assert "LD_LIBRARY_PATH" in check.fix and "download.pytorch.org/whl/cu130" in check.fix
    assert "Call onnxruntime.preload_dlls()" not in check.fix  # the app never does; the user cannot either
    trt = doctor_ort.check_ort_tensorrt(_ctx(tmp_path, ort_probe=probe))
    assert trt.status == PROBLEM and "tensorrt-cu13>=10,<11" in trt.fix
    probe["tensorrt_major"] = 11  # a later onnxruntime linked against TensorRT 11
    assert "tensorrt-cu13>=11,<12" in doctor_ort.check_ort_tensorrt(_ctx(tmp_path, ort_probe=probe)).fix
    probe["build_cuda_version"] = "12.8"  # a CUDA 12 onnxruntime-gpu: the PyTorch whose import loads CUDA 12's
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert "install the PyTorch built for CUDA 12, " in check.fix and "download.pytorch.org/whl/cu126" in check.fix


def torch_version() -> str:
    from importlib import metadata

    return metadata.version("torch").split("+")[0]


@pytest.mark.parametrize(
    ("arch", "capability", "runs"),
    [
        ("sm_80", (8, 6), True),  # a cubin runs on its major's later minors
        ("sm_86", (8, 6), True),  # and on its own
        ("sm_86", (8, 0), False),
        ("sm_80", (9, 0), False),  # not on the next major
        ("compute_80", (9, 0), True),  # PTX is compiled for anything newer on load
        ("compute_120", (12, 0), True),  # on its own capability too
        ("compute_120", (7, 0), False),  # but not for older GPUs: a Volta has no kernel in a wheel of sm_80+ only
        ("sm_90a", (9, 0), True),
        ("sm_90a", (9, 1), False),  # architecture-specific: that GPU only
        ("sm_100f", (10, 3), True),  # family-specific: its family's later members
        ("sm_100", (12, 0), False),
    ],
)
def test_which_built_architectures_run_on_a_gpu(arch: str, capability: tuple[int, int], runs: bool) -> None:
    assert doctor_gpu._arch_runs(arch, *capability) is runs


def test_the_tensorrt_the_provider_links_is_read_from_its_soname(tmp_path: Path) -> None:
    from engine.system.ort_probe import linked_major

    library = tmp_path / "libonnxruntime_providers_tensorrt.so"
    library.write_bytes(b"\x7fELF\0\0libcudart.so.13\0libnvinfer.so.10\0libnvinfer_plugin.so.10\0")
    assert linked_major(library, "libnvinfer") == 10 and linked_major(library, "libnvonnxparser") is None
    assert linked_major(tmp_path / "missing.so", "libnvinfer") is None


def test_unwritable_data_dir_is_a_problem(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ctx = _ctx(tmp_path, settings=load_settings({"AVATARBENCH_DATA_DIR": str(blocker / "data")}))
    check = doctor_host.check_disk(ctx)
    assert check.status == PROBLEM and "AVATARBENCH_DATA_DIR" in check.fix
    assert f"data dir {blocker / 'data'} is not writable ([Errno" in check.found  # with the system's reason


def test_every_bad_setting_is_reported_and_the_other_checks_still_run(monkeypatch, tmp_path: Path) -> None:
    """Start-up stops at the first bad AVATARBENCH_* value; the doctor names them all and reports the rest."""
    from engine.core.settings import settings_despite_bad_values

    env = {"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_MAX_SIDE": "abc", "AVATARBENCH_DEVICE": "gpu",
           "AVATARBENCH_DEVCE": "cpu"}  # fmt: skip
    settings, problems = settings_despite_bad_values(env)
    assert settings.max_side == 2560 and settings.device == "auto" and settings.data_dir == tmp_path
    assert len(problems) == 2 and "AVATARBENCH_DEVICE 'gpu'" in problems[0] and "AVATARBENCH_MAX_SIDE" in problems[1]
    check = doctor_host.check_settings(_ctx(tmp_path, settings=settings, settings_problems=problems))
    assert check.status == PROBLEM and "AVATARBENCH_MAX_SIDE='abc'" in check.found and "defaults" in check.found
    assert "unknown variables: AVATARBENCH_DEVCE" in check.found  # the misspelling was dropped beside a problem
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(doctor, "run_ort_probe", lambda: (None, "skipped"))
    report = run_doctor()
    assert report.get("settings").status == PROBLEM and report.get("disk").status == OK


def test_check_objects_default_to_nothing_to_fix() -> None:
    assert Check("x", OK, "fine").fix == NOTHING_TO_FIX


def test_weights_check_says_where_missing_files_go_and_flags_a_wrong_path(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    check = doctor_host.check_weights(ctx)
    assert check.status == INFO and "wav2lip_gan.pth" in check.fix and "non-commercial" in check.fix
    (ctx.settings.weights_dir).mkdir(parents=True, exist_ok=True)
    (ctx.settings.weights_dir / "wav2lip.pth").write_bytes(b"x")
    (ctx.settings.weights_dir / "s3fd.pth").write_bytes(b"x")
    assert doctor_host.check_weights(ctx).status == OK
    bad = _ctx(
        tmp_path,
        settings=load_settings(
            {"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WAV2LIP_CHECKPOINT": str(tmp_path / "nope.pth")}
        ),
    )
    assert doctor_host.check_weights(bad).status == PROBLEM
    (tmp_path / "file").write_bytes(b"x")
    folders = {
        "AVATARBENCH_LIVEPORTRAIT_DIR": str(tmp_path / "nope"),
        "AVATARBENCH_MUSETALK_DIR": str(tmp_path / "file"),
    }
    wrong = doctor_host.check_weights(
        _ctx(tmp_path, settings=load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)} | folders))
    )
    assert wrong.status == PROBLEM and "set by AVATARBENCH_LIVEPORTRAIT_DIR) does not exist" in wrong.found
    assert "set by AVATARBENCH_MUSETALK_DIR) is a file" in wrong.found


def test_the_app_serves_the_last_report_and_runs_a_fresh_one_at_most_every_interval(monkeypatch) -> None:
    pytest.importorskip("gradio")
    import ui.system
    from engine.core.settings import load_settings

    runs: list[int] = []
    monkeypatch.setattr(ui.system, "run_doctor", lambda settings: runs.append(1) or f"report {len(runs)}")
    cache = ui.system.DoctorCache(load_settings({}), min_interval_s=3600)
    assert cache.get() == "report 1" and cache.get() == "report 1"  # the cached one unless asked
    assert cache.get(fresh=True) == "report 1"  # asked again within the interval: the report just made
    cache.min_interval_s = 0
    assert cache.get(fresh=True) == "report 2" and len(runs) == 2


def test_a_file_the_user_may_not_read_is_a_problem_not_the_doctors_bug(monkeypatch, tmp_path: Path) -> None:
    def denied(ctx):
        raise PermissionError(13, "Permission denied", "/srv/weights/wav2lip_gan.pth")

    denied.__name__ = "check_weights"
    monkeypatch.setattr(doctor, "CHECKS", [denied])
    monkeypatch.setattr(doctor, "run_ort_probe", lambda: (None, "skipped"))
    (check,) = run_doctor(load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})).checks
    assert check.name == "weights" and check.status == PROBLEM
    assert "cannot read /srv/weights/wav2lip_gan.pth" in check.found and "report" not in check.fix


def test_the_ray_check_says_whether_the_cluster_answers(tmp_path: Path) -> None:
    """An unreachable AVATARBENCH_RAY_ADDRESS kept the app from starting while the doctor reported no problem."""
    import socket

    def check(address: str | None) -> Check:
        env = {"AVATARBENCH_DATA_DIR": str(tmp_path)} | ({"AVATARBENCH_RAY_ADDRESS": address} if address else {})
        return doctor_host.check_ray(_ctx(tmp_path, settings=load_settings(env)))

    assert check(None).status == OK and "not used" in check(None).found
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        if importlib.util.find_spec("ray") is None:
            assert check(f"127.0.0.1:{port}").status == PROBLEM
            return
        assert check(f"127.0.0.1:{port}").status == OK
    gone = check(f"127.0.0.1:{port}")
    assert gone.status == PROBLEM and f"nothing answers on 127.0.0.1:{port}" in gone.found


def test_weights_that_cannot_load_are_a_problem_with_the_command_that_fetches_them(tmp_path: Path) -> None:
    """The doctor said "[ ok ] weights" of a web page saved as wav2lip_gan.pth and of an empty s3fd.pth."""
    ctx = _ctx(tmp_path)
    ctx.settings.weights_dir.mkdir(parents=True, exist_ok=True)
    (ctx.settings.weights_dir / "wav2lip_gan.pth").write_bytes(b"<!DOCTYPE html><html>Not found</html>")
    (ctx.settings.weights_dir / "s3fd.pth").write_bytes(b"")
    check = doctor_host.check_weights(ctx)
    assert check.status == PROBLEM
    assert f"{ctx.settings.weights_dir / 'wav2lip_gan.pth'}: this is a web page (37 bytes)" in check.found
    assert f"{ctx.settings.weights_dir / 's3fd.pth'}: the file is empty (0 bytes)" in check.found
    assert check.fix.count("`avatarbench weights get wav2lip --accept-licence`") == 1  # one model's two files: once


def test_an_hf_weights_setting_of_another_shape_is_a_problem(tmp_path: Path) -> None:
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WAV2LIP_CHECKPOINT": "hf:foo"})
    check = doctor_host.check_weights(_ctx(tmp_path, settings=settings))
    assert check.status == PROBLEM and "'hf:foo' is not hf:OWNER/REPO/PATH/TO/FILE" in check.found


def test_an_hf_weights_setting_is_never_fetched_by_the_doctor(tmp_path: Path, monkeypatch) -> None:
    """With AVATARBENCH_WAV2LIP_CHECKPOINT=hf:..., the doctor (and the System tab, which runs it) downloaded the
    416 MB checkpoint to say it was found, or, offline, called a reference a run fetches when online a problem."""
    import engine.core.hub

    monkeypatch.setattr(engine.core.hub, "fetch_file", lambda *a: pytest.fail("the doctor reached the Hub"))
    reference = "hf:camenduru/Wav2Lip/checkpoints/wav2lip_gan.pth"
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WAV2LIP_CHECKPOINT": reference})
    check = doctor_host.check_weights(_ctx(tmp_path, settings=settings))
    assert check.status == INFO and f"{reference} (from the Hub when a run first needs it)" in check.found


def test_a_driver_older_than_torchs_cuda_is_named_with_one_fix(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    check = doctor_gpu.check_torch(_ctx(tmp_path, driver_version="550.54", cuda_driver_version="12.4"))
    assert check.status == PROBLEM and "runs CUDA up to 12.4, older than the CUDA 13.0" in check.found
    assert f"torch=={torch_version()} --index-url https://download.pytorch.org/whl/cu126" in check.fix
    assert "580 or newer" in check.fix and "or the device is hidden" not in check.fix
    # a driver no pinned build runs on: one instruction, not "install a build the driver supports: No build ..."
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    old = _ctx(tmp_path, driver_version="470.82", cuda_driver_version="11.4", ort_probe={"build_cuda_version": "12.8"})
    check = doctor_gpu.check_torch(old)
    assert "older than the CUDA 12.6" in check.found and check.fix.startswith("No build of the PyTorch")
    assert "supports: No build" not in doctor_gpu.check_driver(old).fix
    assert "for this driver: No build" not in doctor_gpu.check_driver(old).fix


@pytest.mark.parametrize(
    ("error", "found", "fix"),
    [
        ("CUDA unknown error - this may be due to an incorrectly set up environment, e.g. changing env variable "
         "CUDA_VISIBLE_DEVICES after program start. Setting the available devices to be zero.",
         "nvidia-uvm", "sudo modprobe nvidia-uvm"),
        ("CUDA error: all CUDA-capable devices are busy or unavailable", "Exclusive Process", "-c DEFAULT"),
        ("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver",
         "libcuda.so.1", "NVIDIA_DRIVER_CAPABILITIES=compute"),
        ("some new error", "torch.cuda.is_available() is False: some new error", "torch.cuda.init()"),
    ],
)  # fmt: skip
def test_cudas_own_error_names_why_pytorch_sees_no_gpu(
    monkeypatch, tmp_path: Path, error: str, found: str, fix: str
) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    check = doctor_gpu.check_torch(_ctx(tmp_path, ort_probe={"torch_cuda_error": error}))
    assert check.status == PROBLEM and found in check.found and fix in check.fix, check


def test_the_probe_keeps_cudas_own_error_when_it_does_not_start(monkeypatch) -> None:
    import torch

    from engine.system import ort_probe

    assert ort_probe.torch_cuda_error() is None or torch.version.cuda  # a CPU-only build has no CUDA to start
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def init() -> None:
        raise RuntimeError("CUDA unknown error - this may be due to\nan incorrectly set up environment")

    monkeypatch.setattr(torch.cuda, "init", init)
    assert ort_probe.torch_cuda_error() == "CUDA unknown error - this may be due to an incorrectly set up environment"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ort_probe.torch_cuda_error() is None


CU126_ARCHES = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU130_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize(
    ("name", "capability", "build", "arches", "fix"),
    [
        ("NVIDIA GeForce RTX 5090", (12, 0), "12.6", CU126_ARCHES, "a newer CUDA (cu130): pip install"),
        ("Tesla V100-SXM2-16GB", (7, 0), "13.0", CU130_ARCHES, "an older CUDA (cu126): pip install"),
        (
            "Tesla K80",
            (3, 7),
            "12.6",
            CU126_ARCHES,
            "no build of the PyTorch this project pins has kernels for "
            "compute capability 3.7 (they start at 5.0): use a newer GPU, or run on the CPU (AVATARBENCH_DEVICE=cpu)",
        ),
        ("Tesla M60", (5, 2), "13.0", CU130_ARCHES, "an older CUDA (cu126): pip install"),  # Maxwell: cu126 has it
        ("NVIDIA GB10", (12, 1), "12.6", CU126_ARCHES, "a newer CUDA (cu130): pip install"),  # runs cu130's PTX
    ],
)
def test_a_gpu_the_build_has_no_kernels_for_gets_the_build_that_has(
    monkeypatch, tmp_path: Path, name: str, capability: tuple[int, int], build: str, arches: list[str], fix: str
) -> None:
    import torch

    props = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arches)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=[name]))
    assert check.status == PROBLEM and "no kernel image is available" in check.found
    assert fix in check.fix, check.fix
    assert "download.pytorch.org/whl/cu" + build.replace(".", "") not in check.fix  # never the build that has none


def test_cuda_running_without_nvml_is_not_called_no_gpu(monkeypatch, tmp_path: Path) -> None:
    """A container given the driver's CUDA part but not its NVML (NVIDIA_DRIVER_CAPABILITIES=compute): jobs run on
    the GPU, so the report must not say "no NVIDIA GPU" nor go quiet about a provider that falls back to the CPU."""
    import torch

    props = types.SimpleNamespace(name="NVIDIA L4", major=8, minor=9, total_memory=24 * 2**30, multi_processor_count=58)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CU130_ARCHES)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    from engine.system.telemetry import NVML_START_ERRORS

    what, fix = NVML_START_ERRORS["LibraryNotFound"]
    facts = {"nvml_gpus": [], "nvml_status": f"no NVIDIA GPU visible ({what})", "nvml_fix": fix}
    monkeypatch.setattr(doctor, "_gather_nvml", lambda: {**facts, "driver_version": None, "cuda_driver_version": None})
    monkeypatch.setattr(doctor, "_nvidia_on_pci", lambda: 0)  # sysfs hidden, as in some sandboxes
    monkeypatch.setattr(doctor, "run_ort_probe", lambda: (_failing_probe(), None))
    report = run_doctor(load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))
    driver = report.get("nvidia-driver")
    assert driver.status == WARNING and driver.found.startswith("CUDA runs on 1 GPU(s), but NVML does not answer")
    assert "libnvidia-ml.so.1, is not found" in driver.found and "no NVIDIA driver is installed" not in driver.found
    assert "NVIDIA_DRIVER_CAPABILITIES" in driver.fix and "no NVIDIA GPU" not in report.render_text()
    assert report.get("onnxruntime-cuda").status == PROBLEM and _LOADER_ERROR in report.get("onnxruntime-cuda").found
    assert report.get("device").status == OK and "cuda:0" in report.get("device").found


def _gpu_state_on(monkeypatch, tmp_path: Path, **calls) -> Check:
    """The gpu-state check on one 80 GiB GPU that NVML reads through a stand-in, with these calls replaced."""
    nvml = fake_nvml()
    for name, fn in calls.items():
        setattr(nvml, name, fn)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    facts = doctor._gather_nvml()
    return gpu_state.check_gpu_state(
        _ctx(tmp_path, **facts, settings=load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))
    )


def test_a_healthy_gpu_is_ok_and_each_fault_is_named_with_its_command(monkeypatch, tmp_path: Path) -> None:
    healthy = {
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0x4,  # the power cap under load is no fault
        "nvmlDeviceGetComputeMode": lambda h: 0,
        "nvmlDeviceGetPersistenceMode": lambda h: 1,
        "nvmlDeviceGetTotalEccErrors": lambda h, kind, counter: 0,
        "nvmlDeviceGetRemappedRows": lambda h: (0, 0, 0, 0),
        "nvmlDeviceGetPowerManagementDefaultLimit": lambda h: 700_000,
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda h: [],
    }
    check = _gpu_state_on(monkeypatch, tmp_path, **healthy)
    assert check.status == OK and "GPU 0 NVIDIA Test GPU 0: 20.0 of 80.0 GiB used, 61 C" in check.found, check
    faults = {
        "nvmlDeviceGetComputeMode": (lambda h: 2, PROBLEM, "compute mode Prohibited", "nvidia-smi -i 0 -c DEFAULT"),
        "nvmlDeviceGetTotalEccErrors": (lambda h, k, c: 3, PROBLEM, "3 uncorrectable ECC", "nvidia-smi -r -i 0"),
        "nvmlDeviceGetRemappedRows": (lambda h: (0, 1, 1, 0), WARNING, "waits for a reset", "nvidia-smi -r -i 0"),
        "nvmlDeviceGetCurrentClocksEventReasons": (lambda h: 0x8, WARNING, "held down by hardware slowdown", "cooling"),
        "nvmlDeviceGetEnforcedPowerLimit": (lambda h: 300_000, WARNING, "power limit 300 W", "nvidia-smi -i 0 -pl 700"),
        "nvmlDeviceGetPersistenceMode": (lambda h: 0, INFO, "persistence mode off", "nvidia-smi -i 0 -pm 1"),
    }
    for name, (fn, status, found, fix) in faults.items():
        check = _gpu_state_on(monkeypatch, tmp_path, **{**healthy, name: fn})
        assert check.status == status and found in check.found and fix in check.fix, (name, check)


def test_gpu_memory_held_by_another_process_is_named_but_the_apps_own_is_not(monkeypatch, tmp_path: Path) -> None:
    Mem = types.SimpleNamespace
    Proc = types.SimpleNamespace
    busy = {
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0,
        "nvmlDeviceGetMemoryInfo": lambda h, *version: Mem(used=70 * 2**30, total=80 * 2**30, free=10 * 2**30),
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [Proc(pid=1, usedGpuMemory=70 * 2**30)],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda h: [],
    }
    check = _gpu_state_on(monkeypatch, tmp_path, **busy)
    assert check.status == WARNING and "70.0 of 80.0 GiB held by" in check.found and "(pid 1, 70.0 GiB)" in check.found
    assert "jobs get 10.0 GiB, not the 72.0 GiB" in check.found and "kill PID" in check.fix
    # the app's own worker (a child of this process) holding it is the app at work, not a fault
    monkeypatch.setattr(gpu_state, "own_pids", lambda: {1})
    assert _gpu_state_on(monkeypatch, tmp_path, **busy).status == OK


def test_jobs_kept_on_one_of_several_gpus_are_said_with_the_setting_that_keeps_them(monkeypatch, tmp_path) -> None:
    import torch

    props = types.SimpleNamespace(
        name="NVIDIA A10G", major=8, minor=6, total_memory=24 * 2**30, multi_processor_count=80
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    gpus = ["NVIDIA A10G"] * 4
    pinned_env = {"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_DEVICE": "cuda:0"}
    pinned = load_settings(pinned_env)
    check = doctor_gpu.check_device(_ctx(tmp_path, settings=pinned, nvml_gpus=gpus))
    assert check.status == INFO and "the other 3 GPU(s) CUDA sees stay idle" in check.found
    assert "AVATARBENCH_DEVICE=auto" in check.fix
    ray = load_settings({**pinned_env, "AVATARBENCH_RAY_ADDRESS": "head:6379"})
    on_ray = doctor_gpu.check_device(_ctx(tmp_path, settings=ray, nvml_gpus=gpus))
    assert on_ray.status == OK and "idle" not in on_ray.found and "spread" not in on_ray.found
    spread = doctor_gpu.check_device(_ctx(tmp_path, nvml_gpus=gpus))
    assert spread.status == OK and "spread over 4 GPUs" in spread.found
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hidden = doctor_gpu.check_device(_ctx(tmp_path, nvml_gpus=gpus))
    assert hidden.status == INFO and "shows CUDA 1 of the 4 GPUs NVML lists" in hidden.found and "0,1,2,3" in hidden.fix
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # every GPU listed: nothing is left idle
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert doctor_gpu.check_device(_ctx(tmp_path, nvml_gpus=gpus)).status == OK


def test_one_gpu_named_in_the_device_setting_leaves_none_idle(monkeypatch, tmp_path) -> None:
    import torch

    props = types.SimpleNamespace(name="NVIDIA L4", major=8, minor=9, total_memory=24 * 2**30, multi_processor_count=58)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    pinned = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_DEVICE": "cuda:0"})
    check = doctor_gpu.check_device(_ctx(tmp_path, settings=pinned, nvml_gpus=["NVIDIA L4"]))
    assert check.status == OK and "idle" not in check.found
    alone = doctor_gpu.check_device(_ctx(tmp_path, nvml_gpus=["NVIDIA L4"]))  # auto, one GPU: nothing to spread
    assert alone.status == OK and "spread" not in alone.found


def test_the_cudnn_version_is_read_as_major_minor_patch(monkeypatch, tmp_path: Path) -> None:
    """cuDNN 9 reports 91002 for 9.10.2 (major * 10000 + minor * 100 + patch)."""
    import torch

    _one_l4_on_cuda_13(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    check = doctor_gpu.check_torch(_ctx(tmp_path, nvml_gpus=["NVIDIA L4"]))
    assert check.status == OK and "cuDNN 9.10.2" in check.found and check.details["cudnn"] == "9.10.2"


def test_a_container_started_without_gpus_is_told_to_start_with_them_not_to_install_a_driver(
    monkeypatch, tmp_path: Path
) -> None:
    from engine.system.telemetry import INSTALL_DRIVER, NVML_START_ERRORS

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    marker = tmp_path / ".dockerenv"
    marker.touch()
    monkeypatch.setattr(doctor_gpu, "CONTAINER_MARKERS", (marker,))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    what, fix = NVML_START_ERRORS["LibraryNotFound"]
    status = f"no NVIDIA GPU visible ({what})"
    ctx = _ctx(tmp_path, nvml_gpus=[], nvml_status=status, nvml_fix=fix, pci_gpus=1, driver_version=None)
    check = doctor_gpu.check_driver(ctx)
    assert check.status == WARNING and "NVIDIA_VISIBLE_DEVICES='void', which asks for no GPU" in check.found
    assert "--gpus all" in check.fix and "belongs on the host" in check.fix and INSTALL_DRIVER not in check.fix
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "none")
    assert "NVIDIA_VISIBLE_DEVICES='none', which asks for no GPU" in doctor_gpu.check_driver(ctx).found
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES")
    assert "a container started without GPUs" in doctor_gpu.check_driver(ctx).found
    mismatch, reboot = NVML_START_ERRORS["LibRmVersionMismatch"]
    other = _ctx(tmp_path, nvml_gpus=[], nvml_status=f"no NVIDIA GPU visible ({mismatch})", nvml_fix=reboot,
                 pci_gpus=1, driver_version=None)  # fmt: skip
    assert "container" not in doctor_gpu.check_driver(other).found and doctor_gpu.check_driver(other).fix == reboot
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # a pod, without Docker's marker file
    marker.unlink()
    assert "nvidia.com/gpu" in doctor_gpu.check_driver(ctx).fix
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")  # not a container: installing the driver is the fix
    assert doctor_gpu.check_driver(ctx).fix == INSTALL_DRIVER


def test_the_cuda_recipe_asks_nothing_of_the_user_the_app_does_not_do(monkeypatch, tmp_path: Path) -> None:
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=_failing_probe()))
    assert check.status == PROBLEM and "onnxruntime-gpu[cuda,cudnn]" in check.fix
    assert "preload_dlls" not in check.fix  # the app never calls it, and its user cannot
    assert "site-packages/nvidia/*/lib folders on LD_LIBRARY_PATH" in check.fix


def test_a_missing_libcuda_is_the_drivers_not_a_pip_package(tmp_path: Path) -> None:
    probe = _failing_probe()
    probe["providers"]["CUDAExecutionProvider"]["error"] = (
        "libcuda.so.1: cannot open shared object file: No such file or directory"
    )
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert check.status == PROBLEM and "the NVIDIA driver's own library" in check.found
    assert "NVIDIA_DRIVER_CAPABILITIES" in check.fix and "onnxruntime-gpu[cuda,cudnn]" not in check.fix


def test_a_missing_libcuda_on_zero_gpu_outside_a_gpu_function_gets_the_library_recipe(monkeypatch, tmp_path) -> None:
    """Outside @spaces.GPU no driver library is mapped, so libcuda.so.1's absence is expected there: the finding
    must not send the Space's owner to install a driver, and the fix says which missing library still matters."""
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    probe = _failing_probe()
    probe["preload"] = {}
    probe["providers"]["CUDAExecutionProvider"]["error"] = (
        "libcuda.so.1: cannot open shared object file: No such file or directory"
    )
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, nvml_gpus=[], ort_probe=probe))
    assert check.status == WARNING and "the NVIDIA driver's own library" not in check.found
    assert "NVIDIA_DRIVER_CAPABILITIES" not in check.fix and "onnxruntime-gpu[cuda,cudnn]" in check.fix
    assert "a missing libcuda.so.1 is expected; a missing CUDA library (libcublas, libcudnn) is not" in check.fix


def test_memory_repairs_already_done_and_corrected_ecc_errors_are_no_fault(monkeypatch, tmp_path: Path) -> None:
    """Remapped rows (corrected, uncorrected, pending, failed) that are done, corrected ECC errors, and uncorrected
    ones from before the driver loaded (the aggregate counter) need no reset: only pending or volatile ones do."""
    quiet = {
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0,
        "nvmlDeviceGetPersistenceMode": lambda h: 1,
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda h: [],
    }
    uncorrected, corrected, volatile, aggregate = 1, 0, 0, 1  # nvml.h's values
    ecc = {(uncorrected, volatile): 0, (uncorrected, aggregate): 7, (corrected, volatile): 50}
    done = {
        "nvmlDeviceGetRemappedRows": lambda h: (5, 2, 0, 0),
        "nvmlDeviceGetTotalEccErrors": lambda h, kind, counter: ecc[kind, counter],
    }
    assert _gpu_state_on(monkeypatch, tmp_path, **quiet, **done).status == OK
    pending = {**done, "nvmlDeviceGetRemappedRows": lambda h: (0, 0, 1, 0)}
    check = _gpu_state_on(monkeypatch, tmp_path, **quiet, **pending)
    assert check.status == WARNING and "waits for a reset" in check.found


def _state_check(monkeypatch, tmp_path: Path, *states, own: frozenset[int] = frozenset()) -> Check:
    """The gpu-state check over these (GpuSample, GpuHealth) pairs, with `own` the app's processes."""
    monkeypatch.setattr(gpu_state, "own_pids", lambda: set(own))
    return gpu_state.check_gpu_state(_ctx(tmp_path, gpu_states=list(states)))


def _card(index: int = 0, **figures) -> GpuSample:
    """An idle 80 GiB GPU at 40 C, with these figures changed."""
    base = dict(memory_used_bytes=0, memory_total_bytes=80 * 2**30, temperature_c=40, throttle_reasons=[])
    return GpuSample(index, f"NVIDIA Test GPU {index}", **{**base, **figures})


def test_several_faults_come_most_serious_first_each_with_its_fix(monkeypatch, tmp_path: Path) -> None:
    """The report's status is its worst finding, the findings are in the order that stops a job first, and every
    finding keeps its own fix line: not just the first."""
    health = GpuHealth(compute_mode="Exclusive Process", persistence_mode=False)
    hot = _card(throttle_reasons=["hardware thermal slowdown"], temperature_c=91)
    check = _state_check(monkeypatch, tmp_path, (hot, health))
    assert check.status == WARNING  # one process at a time is a warning, not "no CUDA at all"
    parts = check.found.split("; ")
    assert parts[0].startswith("GPU 0: compute mode Exclusive Process: one process at a time")
    assert parts[1] == "GPU 0: clocks held down by hardware thermal slowdown at 91 C"
    assert parts[2].startswith("GPU 0: persistence mode off")
    fixes = check.fix.splitlines()
    assert len(fixes) == 3 and "-c DEFAULT" in fixes[0] and "cooling" in fixes[1] and "-pm 1" in fixes[2]
    worse = _state_check(monkeypatch, tmp_path, (hot, GpuHealth(compute_mode="Prohibited", persistence_mode=False)))
    assert worse.status == PROBLEM and "no process may use CUDA on it" in worse.found


def test_failing_memory_and_repairs_waiting_for_a_reset_are_named(monkeypatch, tmp_path: Path) -> None:
    failed = _state_check(monkeypatch, tmp_path, (_card(), GpuHealth(row_remap_pending=True, row_remap_failed=True)))
    assert failed.status == PROBLEM and "its memory is failing" in failed.found and "needs replacing" in failed.fix
    retired = _state_check(monkeypatch, tmp_path, (_card(), GpuHealth(retired_pages_pending=True)))
    assert retired.status == WARNING and "waits for a reset" in retired.found and "nvidia-smi -r -i 0" in retired.fix


@pytest.mark.parametrize(
    "reason", ["hardware slowdown", "hardware thermal slowdown", "software thermal slowdown", "hardware power brake"]
)
def test_every_fault_that_holds_clocks_down_is_a_warning(monkeypatch, tmp_path: Path, reason: str) -> None:
    check = _state_check(monkeypatch, tmp_path, (_card(throttle_reasons=[reason, "software power cap"]), GpuHealth()))
    assert check.status == WARNING and f"clocks held down by {reason} at 40 C" in check.found


def test_what_a_gpu_does_not_report_is_no_fault(monkeypatch, tmp_path: Path) -> None:
    """Persistence mode NVML cannot read is not "off"; a MIG GPU's memory is its instances', not held by others."""
    full_mig = _card(memory_used_bytes=79 * 2**30, mig_mode=True)
    check = _state_check(monkeypatch, tmp_path, (full_mig, GpuHealth(persistence_mode=None)))
    assert check.status == OK and "compute mode N/A" in check.found
    monkeypatch.setattr(gpu_state.sys, "platform", "win32")  # persistence mode is a Linux setting
    assert _state_check(monkeypatch, tmp_path, (_card(), GpuHealth(persistence_mode=False))).status == OK


def test_only_other_processes_are_named_as_holding_the_memory(monkeypatch, tmp_path: Path) -> None:
    processes = [GpuProcess(7, "python", "C", 30 * 2**30), GpuProcess(8, "ollama", "C", 40 * 2**30)]
    busy = _card(memory_used_bytes=70 * 2**30, processes=processes)
    check = _state_check(monkeypatch, tmp_path, (busy, GpuHealth()), own=frozenset({7}))
    assert check.status == WARNING and "40.0 of 80.0 GiB held by ollama (pid 8, 40.0 GiB)" in check.found
    assert "python" not in check.found and "jobs get 40.0 GiB" in check.found


def test_a_fault_on_any_gpu_is_found(monkeypatch, tmp_path: Path) -> None:
    check = _state_check(monkeypatch, tmp_path, (_card(0), GpuHealth()), (_card(1), GpuHealth(ecc_uncorrected=2)))
    assert check.status == PROBLEM and check.found.startswith("GPU 1: 2 uncorrectable ECC")


def test_a_report_is_as_bad_as_its_worst_check_and_information_is_no_fault() -> None:
    """The overall status a user and `avatarbench doctor`'s exit code go by, and how each kind of finding reads."""
    from engine.system.checks import DoctorReport

    fine, info = Check("python", OK, "fine"), Check("weights", INFO, "missing", "where they go")
    warn, problem = (
        Check("device", WARNING, "CPU fallback", "first fix\nsecond line"),
        Check("pytorch", PROBLEM, "x", "y"),
    )
    assert DoctorReport([info]).status == OK and DoctorReport([info, fine]).status == OK
    assert DoctorReport([info, warn]).status == WARNING and DoctorReport([warn, problem, info]).status == PROBLEM
    assert DoctorReport([fine, info, warn, problem, problem], seconds=1.5).render_text().splitlines() == [
        "[ ok ] python: fine",
        "[info] weights: missing",
        "        hint: where they go",
        "[warn] device: CPU fallback",
        "         fix: first fix",
        "              second line",
        "[FAIL] pytorch: x",
        "         fix: y",
        "[FAIL] pytorch: x",
        "         fix: y",
        "",
        "1 ok, 1 info, 1 warning(s), 2 problem(s) in 1.5s",
    ]


def test_the_cpu_onnxruntime_is_flagged_beside_a_gpu_nvml_does_not_read(monkeypatch, tmp_path: Path) -> None:
    """A GPU on the PCI bus without a driver, or one CUDA runs on without NVML, still wants onnxruntime-gpu."""
    _installed(monkeypatch, {"onnxruntime": "1.31.0"})
    for facts in ({"pci_gpus": 1}, {"cuda_gpus": 1}):
        check = doctor_ort.check_ort_packages(_ctx(tmp_path, nvml_gpus=[], **facts))
        assert check.status == WARNING and "pip install onnxruntime-gpu" in check.fix, facts


def _disk_check_with_free(monkeypatch, tmp_path: Path, free_bytes: int) -> Check:
    """The disk check where every folder's disk has `free_bytes` left."""
    monkeypatch.setattr(doctor_host.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free_bytes))
    return doctor_host.check_disk(_ctx(tmp_path))


def test_a_folder_that_exists_but_cannot_be_written_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    """A folder that is there is not yet writable (a read-only mount, a root-owned volume): a file is written to
    find out, and its refusal is the problem, ahead of a nearly full disk."""

    data_dir = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}).data_dir
    write = doctor_host.tempfile.NamedTemporaryFile

    def read_only_data_dir(*args, dir, **kwargs):  # the other folders can be written
        if Path(dir) == data_dir:
            raise OSError(30, "Read-only file system")
        return write(*args, dir=dir, **kwargs)

    monkeypatch.setattr(doctor_host.tempfile, "NamedTemporaryFile", read_only_data_dir)
    check = _disk_check_with_free(monkeypatch, tmp_path, 2**30)  # and only 1 GiB left for them
    assert check.status == PROBLEM and f"data dir {data_dir} is not writable ([Errno 30] Read-only" in check.found
    assert check.details["data"]["writable"] is False and check.details["weights"]["writable"] is True
    assert "AVATARBENCH_DATA_DIR" in check.fix


def test_a_nearly_full_disk_is_a_warning_that_says_how_much_is_left(monkeypatch, tmp_path: Path) -> None:
    """Weights, TensorRT engine caches and output videos need several GiB: under 5 GiB free each folder is named with
    the GiB left, and the fix says where to point the data folder; from 5 GiB on the disk is fine."""
    data_dir = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}).data_dir
    low = _disk_check_with_free(monkeypatch, tmp_path, int(4.5 * 2**30))
    assert low.status == WARNING and f"data dir {data_dir} has only 4.5 GiB free" in low.found
    assert all(f"{label} dir" in low.found for label in ("data", "weights", "cache", "outputs"))
    assert "AVATARBENCH_DATA_DIR at a larger disk" in low.fix
    assert _disk_check_with_free(monkeypatch, tmp_path, 5 * 2**30 - 1).status == WARNING
    enough = _disk_check_with_free(monkeypatch, tmp_path, 5 * 2**30)
    assert enough.status == OK and enough.found == f"data dir {data_dir} (5.0 GiB free); all folders writable"
    assert enough.details["data"] == {"dir": str(data_dir), "writable": True, "free_bytes": 5 * 2**30}


def test_a_data_dir_not_made_yet_is_measured_on_the_disk_it_will_be_made_on(tmp_path: Path) -> None:
    """The folders are made by the check where missing: their free space is still read, from the nearest parent."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "not" / "yet")})
    check = doctor_host.check_disk(_ctx(tmp_path, settings=settings))
    assert check.status in (OK, WARNING) and check.details["data"]["free_bytes"] is not None
    assert check.details["data"]["writable"] and (tmp_path / "not" / "yet").is_dir()


def _video_check(monkeypatch, ctx: Context, nvenc: bool, x264: bool, nvdec: bool) -> Check:
    """The video check with the encoders and NVDEC working or failing as told (the probes' results stood in)."""
    import engine.core.media as media

    pytest.importorskip("av")

    def probe_encoder(codec: str) -> media.EncoderProbe:
        works = nvenc if codec == "h264_nvenc" else x264
        return media.EncoderProbe(codec, listed=True, works=works, error=None if works else f"{codec} broke")

    ran_on, reason = ("nvdec", None) if nvdec else ("cpu", "no libnvcuvid")
    monkeypatch.setattr(media, "available_encoders", lambda: ["h264_nvenc", "libx264"])
    monkeypatch.setattr(media, "probe_encoder", probe_encoder)
    monkeypatch.setattr(media, "probe_nvdec", lambda: media.Decoding(cuda_device=0, ran_on=ran_on, reason=reason))
    return doctor_host.check_video(ctx)


def test_each_video_encoder_and_decoder_outcome_gets_its_status_and_fix(monkeypatch, tmp_path: Path) -> None:
    """What a user sees for each mix of NVENC, libx264 and NVDEC working, on a GPU machine and without a GPU."""
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    gpu, no_gpu = _ctx(tmp_path), _ctx(tmp_path, nvml_gpus=[])
    both = _video_check(monkeypatch, gpu, nvenc=True, x264=True, nvdec=True)
    assert both.status == OK and "NVENC (h264_nvenc) encodes; NVDEC decodes" in both.found
    cpu_decode = _video_check(monkeypatch, gpu, nvenc=True, x264=True, nvdec=False)
    assert cpu_decode.status == WARNING and "NVDEC does not decode (no libnvcuvid)" in cpu_decode.found
    assert cpu_decode.fix.startswith("Videos are decoded on the CPU") and "libnvidia-encode" not in cpu_decode.fix
    assert "NVDEC needs the driver's libnvcuvid.so.1" in cpu_decode.fix
    x264_only = _video_check(monkeypatch, gpu, nvenc=False, x264=True, nvdec=True)
    assert x264_only.status == WARNING and "NVENC does not work (h264_nvenc broke); NVDEC decodes" in x264_only.found
    assert x264_only.fix.startswith("Videos are encoded with libx264 on the CPU")
    assert "(not A100/H100/H200, which decode on NVDEC but have no encoder)" in x264_only.fix
    cpu_only = _video_check(monkeypatch, no_gpu, nvenc=False, x264=True, nvdec=False)  # the expected encoder here
    assert cpu_only.status == OK and cpu_only.found.endswith("libx264 encodes on the CPU")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # ZeroGPU outside a GPU function: no GPU to encode on either
    zero_gpu = _video_check(monkeypatch, _ctx(tmp_path, nvml_gpus=[]), nvenc=False, x264=True, nvdec=False)
    assert zero_gpu.status == OK and "NVENC" not in zero_gpu.found
    monkeypatch.delenv("SPACES_ZERO_GPU")
    broken = _video_check(monkeypatch, no_gpu, nvenc=False, x264=False, nvdec=False)
    assert broken.status == PROBLEM and "; libx264 fails too (libx264 broke)" in broken.found
    assert broken.fix.startswith("pip install --force-reinstall av")


def test_a_pyav_that_does_not_import_is_a_problem_with_its_install_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    check = doctor_host.check_video(_ctx(tmp_path))
    assert check.status == PROBLEM and check.found.startswith("PyAV does not import") and check.fix == "pip install av"


def test_a_misspelt_setting_alone_is_a_warning_that_lists_the_known_ones(tmp_path: Path) -> None:
    """An AVATARBENCH_* variable the app does not know is ignored: the user is told which, and the right names."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_DEVCE": "cpu"})
    check = doctor_host.check_settings(_ctx(tmp_path, settings=settings))
    assert check.status == WARNING and check.found.endswith("; unknown variables: AVATARBENCH_DEVCE")
    assert check.fix.startswith("Check the spelling; known variables: ") and "AVATARBENCH_DEVICE" in check.fix
    fine = doctor_host.check_settings(_ctx(tmp_path))
    assert fine.status == OK and "unknown" not in fine.found


def test_each_missing_weight_file_is_named_with_where_it_goes(tmp_path: Path) -> None:
    """Both checkpoints missing: each gets its own line saying where it goes and which setting points at it."""
    ctx = _ctx(tmp_path)
    check = doctor_host.check_weights(ctx)
    assert check.status == INFO and "missing: wav2lip_gan.pth, s3fd.pth (the weight-free engines" in check.found
    wav2lip, s3fd = check.fix.splitlines()
    assert f"at {ctx.settings.weights_dir / 'wav2lip_gan.pth'}, or set AVATARBENCH_WAV2LIP_CHECKPOINT" in wav2lip
    assert f"at {ctx.settings.weights_dir / 's3fd.pth'}, or set AVATARBENCH_S3FD_CHECKPOINT" in s3fd


def test_a_weight_path_that_is_not_there_is_told_to_be_fixed_or_unset(tmp_path: Path) -> None:
    env = {"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_S3FD_CHECKPOINT": str(tmp_path / "nope.pth")}
    check = doctor_host.check_weights(_ctx(tmp_path, settings=load_settings(env)))
    assert check.status == PROBLEM and str(tmp_path / "nope.pth") in check.found
    assert check.fix == "Fix the path in the setting, or unset it."


def test_the_ray_check_without_ray_installed_or_with_auto(monkeypatch, tmp_path: Path) -> None:
    """A Ray address with no ray package is a problem with the install command; `auto` is information (the local
    cluster is Ray's to find)."""
    import importlib.util

    def check(address: str) -> Check:
        env = {"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_RAY_ADDRESS": address}
        return doctor_host.check_ray(_ctx(tmp_path, settings=load_settings(env)))

    if importlib.util.find_spec("ray") is not None:
        auto = check("auto")
        assert auto.status == INFO and auto.found.startswith("auto: the app joins the cluster")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "ray" else real_find_spec(name))
    missing = check("127.0.0.1:6379")
    assert (
        missing.status == PROBLEM and "AVATARBENCH_RAY_ADDRESS=127.0.0.1:6379 but ray is not installed" in missing.found
    )
    assert missing.fix.startswith("pip install 'avatarbench[ray]'")


def test_memory_held_where_nvml_lists_no_process_still_says_who_might_hold_it(monkeypatch, tmp_path: Path) -> None:
    """In a container NVML often lists no process for memory another one holds: the finding says so rather than
    naming nobody, and a listed process whose share NVML does not know is named without a size."""
    unlisted = _state_check(monkeypatch, tmp_path, (_card(memory_used_bytes=70 * 2**30), GpuHealth()))
    assert unlisted.status == WARNING
    assert "70.0 of 80.0 GiB held by processes NVML does not list here (another container" in unlisted.found
    sizeless = _card(memory_used_bytes=70 * 2**30, processes=[GpuProcess(9, "ollama", "C", None)])
    check = _state_check(monkeypatch, tmp_path, (sizeless, GpuHealth()))
    assert "held by ollama (pid 9); jobs get 10.0 GiB, not the 72.0 GiB" in check.found


def test_memory_is_called_held_only_below_three_quarters_of_the_jobs_share(monkeypatch, tmp_path: Path) -> None:
    """The default share is 0.9 of 80 GiB, 72 GiB: 54 GiB free (three quarters of it) is fine, a byte less is not."""
    just_enough = _card(memory_used_bytes=26 * 2**30)
    assert _state_check(monkeypatch, tmp_path, (just_enough, GpuHealth())).status == OK
    short = _card(memory_used_bytes=26 * 2**30 + 1)
    assert _state_check(monkeypatch, tmp_path, (short, GpuHealth())).status == WARNING


def test_a_power_limit_is_a_fault_only_more_than_five_percent_below_the_default(monkeypatch, tmp_path: Path) -> None:
    """A limit a few watts under the default is how some cards ship; 95 % of it and below costs speed under load."""
    health = GpuHealth(default_power_limit_w=700.0)
    assert _state_check(monkeypatch, tmp_path, (_card(power_limit_w=665.0), health)).status == OK
    capped = _state_check(monkeypatch, tmp_path, (_card(power_limit_w=664.0), health))
    assert capped.status == WARNING and "power limit 664 W, below the card's default 700 W" in capped.found
    assert capped.fix == "GPU 0: sudo nvidia-smi -i 0 -pl 700"


def test_figures_a_gpu_does_not_report_are_left_out_of_what_the_check_says(monkeypatch, tmp_path: Path) -> None:
    """No memory or temperature reading: the summary says N/A, and a slowdown is named without a temperature."""
    blind = _card(memory_used_bytes=None, temperature_c=None)
    check = _state_check(monkeypatch, tmp_path, (blind, GpuHealth()))
    assert check.status == OK and check.found == "GPU 0 NVIDIA Test GPU 0: memory N/A, compute mode N/A"
    slowed = _card(temperature_c=None, throttle_reasons=["hardware slowdown"])
    check = _state_check(monkeypatch, tmp_path, (slowed, GpuHealth()))
    assert check.found == "GPU 0: clocks held down by hardware slowdown"
    none = gpu_state.check_gpu_state(_ctx(tmp_path))
    assert none.status == OK and none.found == "nothing to check: NVML reads no card here"


def test_the_loaders_lines_keep_the_errors_without_colour_and_end_with_the_last() -> None:
    """What the doctor and a fallback show of ORT's output: colour codes gone, only the lines that name a failure
    (all of them where none does), and, past 2000 characters, the end, where the cause is."""
    from engine.system.ort_probe import error_lines

    said = "\x1b[1;31m[E:onnxruntime] Failed to load\x1b[m\n  chatter  \n\nlibcublasLt.so.12: cannot open it\n"
    assert error_lines(said) == "[E:onnxruntime] Failed to load\nlibcublasLt.so.12: cannot open it"
    assert error_lines("CUDA provider failed to start\nnothing here") == "CUDA provider failed to start"
    assert error_lines("  just chatter\n\nmore chatter ") == "just chatter\nmore chatter"
    long = error_lines("\n".join(f"error {i:04d}" for i in range(400)))
    assert len(long) == 2000 and long.endswith("error 0399")


def _probe_with(
    monkeypatch, providers: list[str], doubles: bool = True, fails: str | None = None, loader: str | None = None
) -> dict:
    """probe_provider("CUDAExecutionProvider") over a stand-in session that gets `providers` and computes y = 2x
    (or y = x where not `doubles`), or whose creation raises `fails`; dlopen of the provider's library says `loader`."""
    import onnxruntime

    from engine.system import ort_probe

    class Session:
        def __init__(self, model: bytes, sess_options: object, providers: list[str]) -> None:
            if fails:
                raise RuntimeError(fails)

        def get_providers(self) -> list[str]:
            return providers

        def run(self, outputs: None, feeds: dict) -> list:
            return [feeds["x"] * (2 if doubles else 1)]

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: [*ort_probe.GPU_PROVIDERS, "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    monkeypatch.setattr(ort_probe, "loader_error", lambda provider: loader)
    return ort_probe.probe_provider("CUDAExecutionProvider")


def test_a_provider_is_loaded_only_when_the_session_runs_on_it_and_computes_right(monkeypatch) -> None:
    """A session that lists the provider first and adds x to x is a loaded provider; one that fell back to the CPU, or
    one that computes wrong, is not, with a reason; a session that cannot be made says why."""
    loaded = _probe_with(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert loaded["loaded"] is True and loaded["error"] is None
    fell_back = _probe_with(monkeypatch, ["CPUExecutionProvider"])
    assert fell_back["loaded"] is False and fell_back["error"] == "fell back to CPU"
    wrong = _probe_with(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], doubles=False)
    assert wrong["loaded"] is False and wrong["error"] == "fell back to CPU"
    broken = _probe_with(monkeypatch, [], fails="CUDA failure 999")
    assert broken["loaded"] is False and broken["error"] == "session creation failed: CUDA failure 999"
    missing = _probe_with(monkeypatch, ["CPUExecutionProvider"], loader="libcublasLt.so.12: cannot open shared object")
    assert missing["error"] == "libcublasLt.so.12: cannot open shared object"  # the missing library, named


def test_the_probe_retries_after_preloading_the_cuda_libraries_only_where_cuda_failed(monkeypatch) -> None:
    """preload_dlls() tells whether the CUDA libraries are there at all; it runs only after CUDA failed to load, and
    the providers are probed again after it."""
    import onnxruntime

    from engine.system import ort_probe

    preloads: list[int] = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: preloads.append(1), raising=False)
    build = types.SimpleNamespace(
        cuda_version="12.9"
    )  # the CUDA the wheel was built for: the doctor's recipes follow it
    monkeypatch.setattr(onnxruntime.capi, "build_and_package_info", build, raising=False)
    monkeypatch.setattr(ort_probe, "import_torch_as_workers_do", lambda: None)
    for cuda_loads in (True, False):

        def probe(provider: str, cuda_loads: bool = cuda_loads) -> dict:
            return {"provider": provider, "loaded": cuda_loads, "after_preload": bool(preloads)}

        monkeypatch.setattr(ort_probe, "probe_provider", probe)
        report = ort_probe.probe_all()
        assert report["build_cuda_version"] == "12.9"
        if cuda_loads:
            assert report["preload"] is None and preloads == []
        else:
            assert preloads == [1] and report["preload"]["error"] is None
            assert report["preload"]["providers"]["CUDAExecutionProvider"]["after_preload"] is True


def test_the_loader_error_names_a_missing_or_unloadable_provider_library(monkeypatch, tmp_path: Path) -> None:
    import onnxruntime

    from engine.system.ort_probe import loader_error

    if not sys.platform.startswith("linux"):
        pytest.skip("the provider libraries are read on Linux")
    package = tmp_path / "onnxruntime"
    (package / "capi").mkdir(parents=True)
    monkeypatch.setattr(onnxruntime, "__file__", str(package / "__init__.py"))
    assert (
        loader_error("CUDAExecutionProvider")
        == "libonnxruntime_providers_cuda.so is not part of this onnxruntime package"
    )
    (package / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"not a shared library")
    assert str(package / "capi" / "libonnxruntime_providers_cuda.so") in (loader_error("CUDAExecutionProvider") or "")
    assert loader_error("CPUExecutionProvider") is None  # no library of its own to load


def test_cudas_last_warning_is_the_reason_and_a_cpu_build_has_none(monkeypatch) -> None:
    """Where init() raises nothing, is_available()'s warnings say why; the last one is the reason. A CPU-only PyTorch
    has no CUDA to fail."""
    import warnings

    import torch

    from engine.system import ort_probe

    def is_available() -> bool:
        warnings.warn("CUDA initialization: first", UserWarning, stacklevel=1)
        warnings.warn("CUDA initialization: the driver is too old", UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    assert ort_probe.torch_cuda_error() == "CUDA initialization: the driver is too old"
    monkeypatch.setattr(torch.version, "cuda", None)
    assert ort_probe.torch_cuda_error() is None


def test_the_apps_own_processes_include_its_workers_children() -> None:
    """GPU memory held by a job worker's own child (a pool's process) is the app's, not another user's."""
    import subprocess
    import time

    import psutil

    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        grandchildren: list[psutil.Process] = []
        deadline = time.monotonic() + 60  # until sh has started sleep (at once, unless the machine is busy)
        while not grandchildren and time.monotonic() < deadline:
            grandchildren = psutil.Process(child.pid).children()
            time.sleep(0.01)
        assert grandchildren and {child.pid, grandchildren[0].pid} <= gpu_state.own_pids()
    finally:
        for process in psutil.Process(child.pid).children():
            process.kill()
        child.kill()
        child.wait()


def test_the_python_check_says_whether_a_virtualenv_is_in_use(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)
    assert doctor_host.check_python(_ctx(tmp_path)).details["virtualenv"] is False
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "system-python"))
    assert doctor_host.check_python(_ctx(tmp_path)).details["virtualenv"] is True


def test_the_json_report_gives_the_seconds_to_the_millisecond() -> None:
    from engine.system.checks import DoctorReport

    report = DoctorReport([Check("python", OK, "fine")], seconds=1.23456)
    assert report.to_dict()["seconds"] == 1.235 and json.loads(report.to_json())["seconds"] == 1.235


def test_the_probe_prints_only_its_json_on_stdout(monkeypatch, capsys) -> None:
    """The doctor parses the probe's stdout as JSON, and onnxruntime prints its fallback notices there: they go to
    stderr while the probe runs."""
    from engine.system import ort_probe

    def chatty_probe() -> dict:
        print("EP Error: falling back to CPU")
        return {"version": "1.31.1"}

    monkeypatch.setattr(ort_probe, "probe_all", chatty_probe)
    ort_probe.main()
    out, err = capsys.readouterr()
    assert json.loads(out) == {"version": "1.31.1"} and "EP Error: falling back to CPU" in err


def _system_tab_api(monkeypatch) -> dict:
    """The System tab built in-process, as app.py builds it: its API functions by name (no server, no doctor run)."""
    gr = pytest.importorskip("gradio")
    import torch

    import ui.system
    from engine.core.device import DeviceChoice
    from engine.core.settings import load_settings
    from engine.system.telemetry import TelemetrySampler

    monkeypatch.setattr(ui.system, "run_doctor", lambda settings: DoctorReport([Check("python", OK, "3.12")]))
    settings = load_settings({})
    doctor = ui.system.DoctorCache(settings)
    with gr.Blocks() as demo, gr.Tabs() as tabs, gr.Tab(ui.system.SYSTEM_TAB):
        choice = DeviceChoice(torch.device("cpu"), "auto", "no CUDA GPU")
        ui.system.build_system_tab(demo, tabs, settings, TelemetrySampler(), choice, doctor)
    return {f.api_name: f.fn for f in demo.fns.values()}


def test_the_telemetry_api_refuses_odd_history_seconds_and_sends_history_only_when_asked(monkeypatch) -> None:
    """/telemetry: a negative, boolean or over-long history_seconds is refused in words that say the range; 0 (the
    default) sends the newest sample and its table without the history."""
    api = _system_tab_api(monkeypatch)
    telemetry = api["telemetry"]
    for odd in (-1, True, 86_401, float("nan"), "30"):
        with pytest.raises(Exception, match=r"history_seconds must be a number of seconds in 0\.\.86400"):
            telemetry(odd)
    now = telemetry()
    assert set(now) == {"snapshot", "table"} and now["snapshot"]["host"]
    assert "history" in telemetry(86_400)
    with pytest.raises(Exception, match="fresh must be true or false"):
        api["doctor"]("yes")
    assert api["doctor"]()["status"] == OK and api["device"]()["device"] == "cpu"


def test_the_doctor_report_shows_each_status_in_its_colour_and_a_fix_only_where_one_is_needed() -> None:
    """The System tab's table: a warning amber, a problem red, their fixes shown; an OK check's placeholder fix is
    not; the summary counts each status under its own name."""
    pytest.importorskip("gradio")
    from ui.system import doctor_html

    report = DoctorReport(
        [
            Check("python", OK, "3.12", fix="nothing to do here"),
            Check("driver", WARNING, "old driver", fix="update the driver"),
            Check("cuda", PROBLEM, "no CUDA", fix="install a CUDA build"),
            Check("onnx", PROBLEM, "CPU only", fix="install onnxruntime-gpu"),
        ],
        seconds=1.25,
    )
    shown = doctor_html(report)
    badges = re.findall(r"background:(#[0-9a-f]{6})'>(\w+)</span>", shown)
    assert badges[0] == ("#c62828", "problem")  # the summary: the worst status
    assert badges[1:] == [("#2e7d32", "ok"), ("#b26a00", "warning"), ("#c62828", "problem"), ("#c62828", "problem")]
    assert "1 ok · 0 info · 1 warning(s) · 2 problem(s) · ran in 1.2s" in shown
    assert "nothing to do here" not in shown and "update the driver" in shown and "install a CUDA build" in shown


def test_no_onnxruntime_package_at_all_is_a_problem_with_the_install(monkeypatch, tmp_path: Path) -> None:
    _installed(monkeypatch, {})
    check = doctor_ort.check_ort_packages(_ctx(tmp_path))
    assert check.status == PROBLEM and check.found == "no ONNX Runtime package is installed"
    assert "pip install onnxruntime-gpu" in check.fix and check.details == {"installed": {}}


def test_the_cpu_build_beside_a_gpu_is_advice_only_where_a_gpu_build_exists(monkeypatch, tmp_path: Path) -> None:
    """onnxruntime-gpu is installed on Linux (requirements.txt): elsewhere the CPU build is what there is."""
    _installed(monkeypatch, {"onnxruntime": "1.31.1"})
    monkeypatch.setattr(doctor_ort.sys, "platform", "darwin")
    check = doctor_ort.check_ort_packages(_ctx(tmp_path))
    assert check.status == OK and check.found == "onnxruntime 1.31.1", check


def test_a_probe_that_did_not_run_is_a_problem_with_its_reason(tmp_path: Path) -> None:
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=None, ort_probe_error="timed out after 180 s"))
    assert check.status == PROBLEM and check.found == "could not probe ONNX Runtime: timed out after 180 s"
    assert "python -m engine.system.ort_probe" in check.fix


def test_a_provider_that_loads_is_ok_with_the_sessions_providers(tmp_path: Path) -> None:
    probe = _failing_probe()
    loaded = {"loaded": True, "session_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "error": None}
    probe["providers"]["CUDAExecutionProvider"] = loaded
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert check.status == OK and check.found.startswith("CUDAExecutionProvider loads and runs (session providers: ")


def test_without_a_gpu_a_provider_not_built_in_is_the_cpu_build_working_as_meant(tmp_path: Path) -> None:
    """The probe makes no session for a provider the package lacks: that is not a session failing on the CPU."""
    probe = _failing_probe()
    probe["available"] = ["CPUExecutionProvider"]
    not_built = {"loaded": False, "session_providers": [], "error": "not built into this onnxruntime package"}
    probe["providers"]["CUDAExecutionProvider"] = not_built
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, nvml_gpus=[], ort_probe=probe))
    assert check.status == OK and "ONNX models run on the CPU provider" in check.found, check


def test_the_cuda_recipe_names_the_cuda_major_and_cudnn_the_build_needs(tmp_path: Path) -> None:
    probe = _failing_probe()
    probe["preload"] = {}
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert "ONNX Runtime 1.31.1 (CUDA 13.0) needs the CUDA 13 runtime and cuDNN 9 libraries" in check.fix, check.fix
    assert "install the CUDA 13 toolkit and cuDNN 9 system-wide" in check.fix
    probe["build_cuda_version"] = "11.8"  # ONNX Runtime's CUDA 11 builds link cuDNN 8, which cuDNN 9 does not serve
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert "(CUDA 11.8) needs the CUDA 11 runtime and cuDNN 8 libraries" in check.fix, check.fix
    assert "cuDNN 9" not in check.fix


def test_the_drivers_part_is_found_in_the_probes_log_too(tmp_path: Path) -> None:
    """ORT's own error can be a bare fallback; the captured log is where 'CUDA failure 35' is."""
    probe = _failing_probe()
    probe["preload"] = {}
    failing = probe["providers"]["CUDAExecutionProvider"]
    failing["error"] = "fell back to CPU"
    failing["log"] = "CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version"
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, cuda_driver_version="12.4", ort_probe=probe))
    assert "the driver (CUDA 12.4) is too old for onnxruntime-gpu's CUDA 13.0" in check.found, check.found
    assert "onnxruntime-gpu (CUDA 13.0) needs driver 580 or newer" in check.fix, check.fix


def test_on_zero_gpu_inside_a_gpu_function_the_missing_libraries_get_no_zero_gpu_excuse(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    probe = _failing_probe()
    probe["preload"] = {}
    check = doctor_ort.check_ort_cuda(_ctx(tmp_path, nvml_gpus=["NVIDIA H200"], ort_probe=probe))
    assert check.status == PROBLEM and "@spaces.GPU" not in check.fix and "onnxruntime-gpu[cuda,cudnn]" in check.fix


def test_a_cpu_only_or_broken_pytorch_has_no_cuda_major_to_match(monkeypatch, tmp_path: Path) -> None:
    import builtins

    import torch

    ctx = _ctx(tmp_path, ort_probe={"build_cuda_version": "13.0"})
    monkeypatch.setattr(torch.version, "cuda", None)  # the CPU-only build
    assert doctor_ort.check_cuda_majors(ctx).found == "not both CUDA builds: nothing to match"
    real_import = builtins.__import__

    def broken_torch(name, *args, **kw):  # a PyTorch whose own libraries do not load raises a plain ImportError
        if name == "torch":
            raise ImportError("libcudnn.so.9: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", broken_torch)
    check = doctor_ort.check_cuda_majors(ctx)
    assert check.status == OK and check.details["torch_cuda"] is None, check


def test_mismatched_cuda_majors_name_the_pytorch_for_onnxruntimes_major_or_the_onnxruntime_for_torchs(
    monkeypatch, tmp_path: Path
) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    check = doctor_ort.check_cuda_majors(_ctx(tmp_path, ort_probe={"build_cuda_version": "13.0"}))
    assert check.fix.startswith("Install the PyTorch built for CUDA 13: ")
    assert "; or an onnxruntime-gpu built for CUDA 12 (https://onnxruntime.ai/docs/install/)." in check.fix
