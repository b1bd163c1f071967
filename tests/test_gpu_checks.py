"""scripts/gpu_checks.py, the prepared run for a lent GPU, checked where there is none: the steps' bounds (a step
over its limit is stopped with its children, one that no longer fits the budget is skipped, a failure does not stop
the rest), the archive, and carrying wheels in loads (split, joined byte for byte, a missing part named, installed
offline), and trimming ONNX Runtime's GPU kernels to one architecture."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_checks  # noqa: E402
from gpu_checks import Context, Step, join_parts, new_files, pack, pick, pins, run_all, snapshot, split_into_loads  # noqa: E402


def _python(code: str):
    return lambda c: [sys.executable, "-c", code]


def test_steps_are_bounded_and_every_outcome_is_recorded(tmp_path: Path) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    results.mkdir(), logs.mkdir()
    (results / "old.json").write_text("{}")
    before = snapshot(results)
    marker = tmp_path / "child-still-running"
    # The slow step starts a child that would write the marker after the step's limit: it must be stopped too.
    child, slow = tmp_path / "child.py", tmp_path / "slow.py"
    child.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    slow.write_text(
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(child)!r}])\ntime.sleep(30)\n"
    )
    steps = [
        Step("fine", "prints", 30, _python("print('hello')"), log="fine"),
        Step("broken", "exits 3", 30, _python("import sys; print('bad input'); sys.exit(3)")),
        Step("slow", "outlives its limit", 2, lambda c: [sys.executable, str(slow)]),
        Step("too-long", "cannot fit what is left", 1000, _python("print('never')")),
        Step("short", "still fits", 30, _python("print('short')")),
    ]
    said = []
    context = Context("test-gpu", "2026-12-02", None, [])
    started = time.perf_counter()
    records = run_all(steps, context, budget_s=60, logs=logs, results=results, say=said.append)
    assert time.perf_counter() - started < 25
    by_step = {r["step"]: r for r in records}
    assert [r["step"] for r in records] == ["fine", "broken", "slow", "too-long", "short"]
    assert by_step["fine"]["status"] == "ok" and "hello" in by_step["fine"]["tail"]
    assert (results / "fine-test-gpu-2026-12-02.txt").read_text() == "hello\n"  # a log kept as a result file
    assert by_step["broken"]["status"] == "failed (exit 3)" and "bad input" in by_step["broken"]["tail"]
    assert by_step["slow"]["status"] == "timed out" and by_step["slow"]["seconds"] < 10
    assert by_step["too-long"]["status"].startswith("skipped: needs up to 1000 s")
    assert by_step["short"]["status"] == "ok"
    time.sleep(3.5)
    assert not marker.exists(), "the timed-out step's child ran on"
    assert any("too-long: skipped" in line for line in said)

    (results / "bench-new.json").write_text("{}")
    assert [p.name for p in new_files(before, results)] == ["bench-new.json", "fine-test-gpu-2026-12-02.txt"]
    archive = tmp_path / "out" / "gpu-checks.tar.gz"
    pack(archive, new_files(before, results), {"steps": records}, logs)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        summary = json.load(tar.extractfile("logs/gpu-checks.json"))
    assert {"bench-new.json", "fine-test-gpu-2026-12-02.txt", "logs/broken.log", "logs/gpu-checks.json"} <= set(names)
    assert "old.json" not in names
    assert [s["status"] for s in summary["steps"]][:2] == ["ok", "failed (exit 3)"]


def test_steps_are_chosen_by_name_in_the_tables_order() -> None:
    assert [s.name for s in pick("portrait,doctor", None)] == ["doctor", "portrait"]
    assert "musetalk-onnx" not in [s.name for s in pick(None, "musetalk-onnx")]
    with pytest.raises(SystemExit, match=r"unknown step.*nope"):
        pick("doctor,nope", None)


def test_dry_run_shows_the_commands_and_no_gpu_is_a_clear_error(capsys) -> None:
    assert (
        gpu_checks.main(["--dry-run", "--only", "lipsync", "--upstream-wav2lip", "/tmp/w2l", "--label", "H200 x"]) == 0
    )
    out = capsys.readouterr().out
    assert "benchmarks/lipsync.py --precisions fp32,fp16 --upstream /tmp/w2l --label 'H200 x'" in out
    pytest.importorskip("torch")
    import torch

    if not torch.cuda.is_available():
        assert gpu_checks.main(["--only", "doctor"]) == 3
        assert "no CUDA device" in capsys.readouterr().err


def test_wheels_travel_in_loads_and_join_byte_for_byte(tmp_path: Path) -> None:
    download = tmp_path / "download"
    download.mkdir()
    sizes = {"big-1.0-py3-none-any.whl": 2500, "mid-1.0-py3-none-any.whl": 700, "small-1.0-py3-none-any.whl": 90}
    contents = {name: bytes((i * 7 + len(name)) % 256 for i in range(size)) for name, size in sizes.items()}
    for name, data in contents.items():
        (download / name).write_bytes(data)
    loads = split_into_loads(sorted(download.iterdir()), tmp_path / "wheels", load_bytes=1000)
    assert not list(download.iterdir())
    assert all(sum(p.stat().st_size for p in load.iterdir()) <= 1000 for load in loads)
    assert sorted(p.name for p in loads[0].iterdir()) == ["mid-1.0-py3-none-any.whl", "small-1.0-py3-none-any.whl"]
    assert sorted(p.name for load in loads for p in load.iterdir() if p.name.startswith("big")) == [
        f"big-1.0-py3-none-any.whl.part-{i}-of-3" for i in (1, 2, 3)
    ]
    joined = join_parts([tmp_path / "wheels"], tmp_path / "joined")
    assert {p.name: p.read_bytes() for p in joined} == contents

    next(p for p in (tmp_path / "wheels").rglob("big-*.part-2-of-3")).unlink()
    with pytest.raises(SystemExit, match=r"big-1.0-py3-none-any.whl: part\(s\) 2 of 3 missing"):
        join_parts([tmp_path / "wheels"], tmp_path / "joined-again")


def test_carried_wheels_pack_into_one_site_archive_that_installs_offline(tmp_path: Path) -> None:
    wheel = tmp_path / "download" / "carried_probe-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    info = "carried_probe-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("carried_probe/__init__.py", "ANSWER = 42\n" + "# padding\n" * 200)
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n")
    archive = gpu_checks.pack_site([wheel], tmp_path / "site.tar.xz", cuda_arch=90)
    split_into_loads([archive], tmp_path / "loads", load_bytes=300)
    assert len(list((tmp_path / "loads").iterdir())) > 1  # the archive travelled in parts
    target = tmp_path / "site"
    gpu_checks.install_wheels(sorted((tmp_path / "loads").iterdir()), target)
    out = subprocess.run([sys.executable, "-c", "import carried_probe; print(carried_probe.ANSWER)"],
                         env={"PYTHONPATH": str(target)}, capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "42"


def _elf_with_fatbin(fatbins: list[list[tuple[int, int, bytes]]]) -> bytearray:
    """A minimal 64-bit ELF file whose .nv_fatbin section holds `fatbins`, each a list of (kind, arch, payload)
    entries laid out as nvcc does (a 16-byte fat binary header, 64-byte entry headers)."""
    section = bytearray()
    for entries in fatbins:
        body = b"".join(
            struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + bytes(12) + struct.pack("<I", arch) + bytes(32)
            + payload
            for kind, arch, payload in entries
        )  # fmt: skip
        section += struct.pack("<IHHQ", gpu_checks.FATBIN_MAGIC, 1, 16, len(body)) + body + bytes(8)  # + padding
    names = b"\0.shstrtab\0.nv_fatbin\0"
    data_at, names_at = 64, 64 + len(section)
    headers_at = names_at + len(names)
    elf = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    struct.pack_into("<Q", elf, 0x28, headers_at)
    struct.pack_into("<HHH", elf, 0x3A, 64, 3, 1)
    elf += section + names
    elf += bytes(64)  # the null section
    elf += struct.pack("<IIQQQQ", 1, 3, 0, 0, names_at, len(names)) + bytes(24)
    elf += struct.pack("<IIQQQQ", 11, 1, 2, 0, data_at, len(section)) + bytes(24)
    return elf


def test_only_the_kept_architectures_cubins_survive_trimming() -> None:
    """keep_cuda_arch zeroes other architectures' cubins where the fat binary has one for the kept architecture, and
    nothing else: PTX stays (a driver may compile it), a fat binary without a cubin for it stays whole, and no byte
    outside those payloads changes."""
    sm80, sm90, ptx, sm120 = b"\x80" * 40, b"\x90" * 48, b"ptx-code" * 3, b"\x12" * 32
    elf = _elf_with_fatbin([[(2, 80, sm80), (2, 90, sm90), (1, 80, ptx)], [(2, 120, sm120)]])
    before = bytes(elf)
    assert gpu_checks.keep_cuda_arch(elf, 90) == len(sm80)
    assert sm80 not in elf and bytes(len(sm80)) in elf
    assert sm90 in elf and ptx in elf and sm120 in elf
    changed = [i for i in range(len(elf)) if elf[i] != before[i]]
    assert len(changed) == len(sm80) and before[changed[0] : changed[-1] + 1] == sm80
    with pytest.raises(ValueError, match=r"no \.text section"):
        gpu_checks.elf_section(elf, ".text")


def test_carried_wheels_are_this_repositorys_pins() -> None:
    found = pins(gpu_checks.CARRIED)
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"onnxruntime-gpu=={found['onnxruntime-gpu']}" in requirements
    assert f"av=={found['av']}" in requirements
    with pytest.raises(SystemExit, match="no pin for not-a-package"):
        pins(["av", "not-a-package"])
