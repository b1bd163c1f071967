import json
from importlib import metadata
from pathlib import Path

import pytest

from engine.core.settings import load_settings
from engine.system import doctor
from engine.system.doctor import OK, PROBLEM, WARNING, Check, _Context, run_doctor


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path_factory.mktemp("doctor"))})
    return run_doctor(settings)


def _has(package: str) -> bool:
    try:
        metadata.version(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_every_check_has_a_status_what_it_found_and_a_fix(report) -> None:
    assert len(report.checks) == len(doctor.CHECKS)
    for check in report.checks:
        assert check.status in (OK, WARNING, PROBLEM)
        assert check.found.strip() and check.fix.strip()
        if check.status != OK:
            assert check.fix != doctor.NOTHING_TO_FIX
    data = json.loads(report.to_json())
    assert data["status"] == report.status and sum(data["counts"].values()) == len(report.checks)
    text = report.render_text()
    assert "fix:" in text or report.status == OK


def test_cuda_provider_failure_carries_the_loaders_own_error(report) -> None:
    import torch

    if torch.cuda.is_available() or not _has("onnxruntime-gpu"):
        pytest.skip("checks a machine with onnxruntime-gpu and no GPU, like CI")
    check = report.get("onnxruntime-cuda")
    assert check.status == WARNING
    # The real dlopen text, e.g. "libcublasLt.so.13: cannot open shared object file".
    assert "cannot open shared object file" in check.found and ".so" in check.found
    assert check.details["probe"]["session_providers"] == ["CPUExecutionProvider"]
    assert "preload_dlls" in check.fix and "onnxruntime-gpu[cuda,cudnn]" in check.fix


def test_without_a_gpu_the_report_says_so_plainly(report) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert report.get("device").status == WARNING and "CPU fallback" in report.get("device").found
    assert report.get("nvidia-driver").found.startswith("no NVIDIA GPU visible")
    assert report.get("disk").status == OK


def test_a_crashing_check_becomes_a_problem_not_an_exception(monkeypatch, tmp_path: Path) -> None:
    def broken(ctx):
        raise KeyError("boom")

    monkeypatch.setattr(doctor, "CHECKS", (doctor.check_python, broken))
    monkeypatch.setattr(doctor, "run_ort_probe", lambda: (None, "skipped"))
    result = run_doctor(load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))
    assert [c.status for c in result.checks] == [OK, PROBLEM]
    assert "KeyError" in result.checks[1].found and result.status == PROBLEM


def _ctx(tmp_path: Path, **kw) -> _Context:
    base = dict(
        settings=load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}),
        nvml_gpus=["NVIDIA T4"],
        nvml_status="",
        driver_version="535.0",
        cuda_driver_version="12.2",
    )
    base.update(kw)
    return _Context(**base)


def test_two_onnxruntime_packages_together_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    versions = {"onnxruntime": "1.31.0", "onnxruntime-gpu": "1.31.1"}

    def fake_version(name: str) -> str:
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(doctor.metadata, "version", fake_version)
    check = doctor.check_ort_packages(_ctx(tmp_path))
    assert check.status == PROBLEM and "CPU-only runs" in check.found
    assert check.fix.startswith("pip uninstall -y onnxruntime onnxruntime-gpu")
    versions.pop("onnxruntime-gpu")
    check = doctor.check_ort_packages(_ctx(tmp_path))
    assert check.status == WARNING and "pip install onnxruntime-gpu" in check.fix


def test_driver_older_than_the_wheels_cuda_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    ctx = _ctx(tmp_path, ort_probe={"build_cuda_version": "13.0"})
    check = doctor.check_driver(ctx)
    assert check.status == PROBLEM and "PyTorch is built for CUDA 13.0" in check.found
    assert "cu126" in check.fix  # a build the 12.2 driver can run
    ok = doctor.check_driver(_ctx(tmp_path, cuda_driver_version="13.1", ort_probe={"build_cuda_version": "13.0"}))
    assert ok.status == OK


def test_cpu_torch_next_to_a_visible_gpu_is_a_problem(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = doctor.check_torch(_ctx(tmp_path))
    assert check.status == PROBLEM and "NVIDIA T4" in check.found
    assert "download.pytorch.org/whl/cu126" in check.fix


def test_provider_that_loads_only_after_preload_is_a_warning_with_that_fix(tmp_path: Path) -> None:
    failed = {"loaded": False, "session_providers": ["CPUExecutionProvider"], "error": "libcudnn.so.9: missing"}
    loaded = {"loaded": True, "session_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "error": None}
    probe = {
        "version": "1.31.1",
        "available": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "build_cuda_version": "13.0",
        "providers": {"CUDAExecutionProvider": failed, "TensorrtExecutionProvider": failed},
        "preload": {"providers": {"CUDAExecutionProvider": loaded, "TensorrtExecutionProvider": failed}},
    }
    check = doctor.check_ort_cuda(_ctx(tmp_path, ort_probe=probe))
    assert check.status == WARNING and "preload_dlls" in check.fix
    trt = doctor.check_ort_tensorrt(_ctx(tmp_path, ort_probe=probe))
    assert trt.status == PROBLEM and "tensorrt-cu13" in trt.fix


def test_unwritable_data_dir_is_a_problem(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ctx = _ctx(tmp_path, settings=load_settings({"AVATARBENCH_DATA_DIR": str(blocker / "data")}))
    check = doctor.check_disk(ctx)
    assert check.status == PROBLEM and "AVATARBENCH_DATA_DIR" in check.fix


def test_check_objects_default_to_nothing_to_fix() -> None:
    assert Check("x", OK, "fine").fix == doctor.NOTHING_TO_FIX


def test_weights_check_says_where_missing_files_go_and_flags_a_wrong_path(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    check = doctor.check_weights(ctx)
    assert check.status == WARNING and "wav2lip_gan.pth" in check.fix and "non-commercial" in check.fix
    (ctx.settings.weights_dir).mkdir(parents=True, exist_ok=True)
    (ctx.settings.weights_dir / "wav2lip.pth").write_bytes(b"x")
    (ctx.settings.weights_dir / "s3fd.pth").write_bytes(b"x")
    assert doctor.check_weights(ctx).status == OK
    bad = _ctx(
        tmp_path,
        settings=load_settings(
            {"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WAV2LIP_CHECKPOINT": str(tmp_path / "nope.pth")}
        ),
    )
    assert doctor.check_weights(bad).status == PROBLEM


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
