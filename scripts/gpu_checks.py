"""Every check that needs an NVIDIA GPU, as one bounded run: the doctor, `pytest -m gpu` and the GPU benchmarks,
each under its own time limit, with their result files and logs packed into one archive.

Why: GPU time comes in short leases (a lent machine, a spot instance), and the issues' GPU figures (#16, #17) are
still to be measured. A prepared run spends the lease measuring. A step that hangs or fails costs only its own
limit. A step that no longer fits the budget is skipped, and the summary says so.

Steps, in the order the issues ask for them (`--list` shows each one's command and limit); the limits are what the
steps took on an H200 (2026-12-04) with room to spare, and `--only` picks the ones a lease can hold.
- Each benchmark writes its JSON where it always does: benchmarks/results/, named by the GPU and the date.
- The doctor's, the tests' and the telemetry table's console output are kept there as .txt files.
- --archive packs every file the run added to benchmarks/results/ at its top level, and in logs/ the other steps'
  logs and gpu-checks.json (each step's command, status, seconds and the tail of its output). The top level goes
  into benchmarks/results/; then run scripts/results_readme.py (a new GPU's files need their block in its README).

For a GPU machine without a package registry (the lent H100/H200: CUDA PyTorch, OpenCV 5, the CPU onnxruntime):
- `wheels DIR`, run here (online), downloads the wheels the image lacks (CARRIED), at this repository's pins, and
  packs them into one site archive: unpacked, ONNX Runtime's CUDA kernels cut to one GPU architecture (--cuda-arch,
  90 for Hopper), xz-compressed; about 123 MiB in all, split into loads of at most --load-mib (DIR/load-1, ...).
- `install DIR... --target T`, run there, joins the parts and unpacks them into T (put T on PYTHONPATH); it
  removes the image's CPU onnxruntime, which the doctor reports as a conflict.
- A call carries at most 64 MiB with the repository, so the loads go in calls made back to back (the machine
  keeps /tmp for 30 s after a call): carry load-1 and copy it to /tmp/loads; the same for the next loads; the last
  call carries the last load and runs `install /tmp/loads/* .whl/load-N --target /tmp/site` and then the steps.
  Each call's start and idle time count against the lease, so have the next call ready before the first returns.
  The trimmed ONNX Runtime has not run on a GPU yet (2026-12-04: it did not fit the lease): if its CUDA provider
  fails to load, `--cuda-arch all` packs it whole (about 130 MiB more).

Usage:
  python scripts/gpu_checks.py [--only a,b] [--skip a,b] [--budget SECONDS] [--upstream-wav2lip PATH]
                               [--label TEXT] [--note TEXT] [--archive FILE] [--list] [--dry-run]
  python scripts/gpu_checks.py wheels DIR [--load-mib 56] [--python-version 3.12] [--cuda-arch 90|all]
  python scripts/gpu_checks.py install DIR... --target /tmp/site
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_BUDGET_S = 540  # one 10-minute command with room to pack and return
TAIL_CHARS = 4000


@dataclass(frozen=True)
class Context:
    """What the steps' commands are built from."""

    tag: str  # the GPU's name as result files spell it, e.g. nvidia-h200
    day: str
    upstream_wav2lip: Path | None
    context: list[str]  # --label/--note for the benchmarks


@dataclass(frozen=True)
class Step:
    name: str
    why: str
    limit_s: int
    command: Callable[[Context], list[str]]
    log: str | None = None  # keep the console output as benchmarks/results/<log>-<tag>-<day>.txt


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


STEPS = [
    Step("doctor", "why the GPU is or is not used", 45, lambda c: _py("-m", "engine", "doctor"), log="doctor"),
    Step("portrait", "#17: LivePortrait per module and end to end in PyTorch, fp32 and fp16", 90,
         lambda c: _py("benchmarks/portrait.py", "--backends", "torch", "--precisions", "fp32,fp16",
                       "--out", str(RESULTS / f"portrait-{c.tag}-{c.day}-torch.json"), *c.context)),
    Step("generator", "#17: the Wav2Lip generator in fp16, eager and with CUDA graphs, compiled with CUDA graphs "
         "(reduce-overhead) or not (target 40,000 frames/s)", 120,
         lambda c: _py("-m", "engine", "bench", "--model", "wav2lip", "--runtime", "eager,cudagraphs", "--precision",
                       "fp16", "--batch", "512,1024", "--compile", "off,on", "--compile-mode", "reduce-overhead",
                       "--channels-last", "on", "--quiet",
                       "--json", str(RESULTS / f"bench-wav2lip-generator-{c.tag}-{c.day}.json"), *c.context)),
    Step("lipsync", "#17: end to end (still + 40 s, 720p 10 s clip; each twice, the second a warm worker's job, "
         "now one generator shape per job) and the generator by batch in fp32 and fp16; side by side with upstream, "
         "on the CPU, when given", 200,
         lambda c: _py("benchmarks/lipsync.py", "--precisions", "fp32,fp16",
                       *(["--upstream", str(c.upstream_wav2lip)] if c.upstream_wav2lip else []), *c.context)),
    Step("portrait-compiled", "#17: LivePortrait in PyTorch fp16 under torch.compile (warp + decode target 5 ms a "
         "frame)", 150,
         lambda c: _py("benchmarks/portrait.py", "--backends", "torch", "--precisions", "fp16", "--compile",
                       "--out", str(RESULTS / f"portrait-{c.tag}-{c.day}-torch-compiled.json"), *c.context)),
    Step("musetalk", "#16: a prepared avatar end to end at the real networks' sizes, eager and with CUDA graphs "
         "(target 150 frames/s), and the UNet and decoder by batch and precision (target 300 frames/s)", 120,
         lambda c: _py("benchmarks/musetalk.py", "--runtimes", "eager,cuda-graphs", "--precisions", "fp16,bf16",
                       "--batches", "8,32", *c.context)),
    Step("musetalk-threads", "#16: the eager pipeline again with PyTorch on one CPU thread (on the H200 the CPU blend "
         "took several times longer a frame than on a 2-core VM; its composite no longer uses PyTorch)", 90,
         lambda c: _py("benchmarks/musetalk.py", "--runtimes", "eager", "--precisions", "fp16", "--batches", "32",
                       "--threads", "1", "--out", str(RESULTS / f"musetalk-{c.tag}-{c.day}-threads-1.json"),
                       *c.context)),
    Step("telemetry-table", "the nvidia-smi style table, as printed", 30,
         lambda c: _py("-m", "engine", "telemetry"), log="telemetry-table"),
    Step("musetalk-compiled", "#16: the prepared avatar with the UNet and decoder under torch.compile", 150,
         lambda c: _py("benchmarks/musetalk.py", "--runtimes", "compile", "--precisions", "fp16", "--batches", "32",
                       "--out", str(RESULTS / f"musetalk-{c.tag}-{c.day}-compiled.json"), *c.context)),
    Step("pytest-gpu", "the GPU tests: each fails when a provider fell back or a counter is missing", 180,
         lambda c: _py("-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider"), log="pytest-gpu"),
    Step("portrait-onnx", "#17: LivePortrait through ORT-CUDA and ORT-TensorRT, fp32 and fp16", 120,
         lambda c: _py("benchmarks/portrait.py", "--backends", "onnx-cuda,onnx-trt", "--precisions", "fp32,fp16",
                       "--out", str(RESULTS / f"portrait-{c.tag}-{c.day}-onnx.json"), *c.context)),
    Step("onnx-overhead", "#17: ONNX eval's overhead over a bare session on the CUDA provider (target 3%)", 60,
         lambda c: _py("benchmarks/onnx_overhead.py", "--providers", "cpu,cuda", *c.context)),
    Step("generator-onnx", "#17: the Wav2Lip generator in fp16 through ORT-CUDA and ORT-TensorRT", 90,
         lambda c: _py("-m", "engine", "bench", "--model", "wav2lip", "--runtime", "ort-cuda,ort-trt", "--precision",
                       "fp16", "--batch", "512,1024", "--quiet",
                       "--json", str(RESULTS / f"bench-wav2lip-generator-{c.tag}-{c.day}-onnx.json"), *c.context)),
    Step("telemetry-overhead", "what the live telemetry costs per sample on this driver", 60,
         lambda c: _py("benchmarks/telemetry_overhead.py", *c.context)),
    Step("musetalk-onnx", "#16: the MuseTalk pipeline with its UNet and decoder through ORT-CUDA and TensorRT", 240,
         lambda c: _py("benchmarks/musetalk.py", "--runtimes", "onnx,tensorrt", "--precisions", "fp16", "--batches",
                       "32", "--out", str(RESULTS / f"musetalk-{c.tag}-{c.day}-onnx.json"), *c.context)),
]  # fmt: skip


def gpu_tag() -> str | None:
    """The first CUDA device's name as result files spell it (benchmarks/recording.py), None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    sys.path.insert(0, str(ROOT))
    from benchmarks.recording import device_tag

    return device_tag(torch.cuda.get_device_name(0))


def pick(names: str | None, skip: str | None) -> list[Step]:
    """The steps named in `names` (all when None), minus `skip`, in the table's order; an unknown name is an error."""
    known = {step.name for step in STEPS}
    wanted = set(names.split(",")) if names else known
    unwanted = set(skip.split(",")) if skip else set()
    unknown = (wanted | unwanted) - known
    if unknown:
        raise SystemExit(
            f"unknown step(s) {', '.join(sorted(unknown))}; the steps are {', '.join(s.name for s in STEPS)}"
        )
    return [step for step in STEPS if step.name in wanted - unwanted]


def run_step(command: list[str], limit_s: float, log: Path) -> tuple[str, float]:
    """Run `command` from the repository root with its output in `log`; ("ok" | "failed (exit N)" | "timed out",
    seconds). A step over its limit is stopped with everything it started (its own process group)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timed out", time.perf_counter() - started
    return ("ok" if code == 0 else f"failed (exit {code})"), time.perf_counter() - started


def run_all(steps: Iterable[Step], context: Context, budget_s: float, logs: Path, results: Path = RESULTS,
            say: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Each step in turn, within its limit and what is left of the budget: a step whose limit no longer fits is
    skipped (later, shorter ones may still run). Logs kept as results go to `results`, the others to `logs`.
    Returns one record per step."""
    records, started = [], time.perf_counter()
    for step in steps:
        command = step.command(context)
        left = budget_s - (time.perf_counter() - started)
        record = {"step": step.name, "why": step.why, "command": command, "limit_s": step.limit_s}
        if step.limit_s > left:
            record.update(status=f"skipped: needs up to {step.limit_s} s, {left:.0f} s of the budget left", seconds=0)
            say(f"{step.name}: {record['status']}")
            records.append(record)
            continue
        name = f"{step.log}-{context.tag}-{context.day}.txt" if step.log else f"{step.name}.log"
        log = (results if step.log else logs) / name
        say(f"{step.name}: running (up to {step.limit_s} s): {shlex.join(command)}")
        status, seconds = run_step(command, step.limit_s, log)
        text = log.read_text(errors="replace")
        record.update(status=status, seconds=round(seconds, 1), log=name, tail=text[-TAIL_CHARS:])
        say(f"{step.name}: {status} in {seconds:.0f} s")
        records.append(record)
    return records


def snapshot(results: Path = RESULTS) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in results.iterdir() if p.is_file()}


def new_files(before: dict[str, float], results: Path = RESULTS) -> list[Path]:
    """Files in `results` that are new or changed since `before` (a `snapshot`)."""
    return sorted(p for p in results.iterdir() if p.is_file() and before.get(p.name) != p.stat().st_mtime)


def pack(archive: Path, files: list[Path], summary: dict, logs: Path) -> None:
    """One .tar.gz: the new result files at its top level, gpu-checks.json and the other steps' logs in logs/."""
    (logs / "gpu-checks.json").write_text(json.dumps(summary, indent=2) + "\n")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
        for path in sorted(logs.iterdir()):
            tar.add(path, arcname=f"logs/{path.name}")


# ---------------------------------------------------------------------------------------------- wheels

# What the lent machines' CUDA PyTorch image (numpy, scipy, transformers, scikit-learn, numba; OpenCV 5, whose wheels
# dropped the Haar cascades and CascadeClassifier) lacks for the GPU tests and benchmarks: PyAV, diffusers, OpenCV 4,
# ONNX Runtime's GPU build, librosa for upstream Wav2Lip's inference.py, and cffi for soundfile (transformers imports
# soundfile whenever it is installed, and without cffi that import fails, taking diffusers' VAE down with it).
CARRIED = ["av", "diffusers", "opencv-python-headless", "onnxruntime-gpu", "librosa", "audioread", "decorator",
           "platformdirs", "pooch", "soundfile", "soxr", "cffi", "pycparser"]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]  # fmt: skip
PART = re.compile(r"^(?P<name>.+)\.part-(?P<index>\d+)-of-(?P<count>\d+)$")
SITE_ARCHIVE = "site.tar.xz"
FATBIN_MAGIC = 0xBA55ED50  # each fat binary in a library's .nv_fatbin section starts with it
ORT_CUDA = "onnxruntime/capi/libonnxruntime_providers_cuda.so"


def elf_section(data: bytes | bytearray, name: str) -> tuple[int, int]:
    """(file offset, size) of the section `name` in a 64-bit little-endian ELF file."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    entsize, count, names = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple[int, ...]:  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        return struct.unpack_from("<IIQQQQ", data, shoff + index * entsize)

    table = header(names)[4]
    for index in range(count):
        start = table + header(index)[0]
        if data[start : data.index(b"\0", start)] == name.encode():
            return header(index)[4], header(index)[5]
    raise ValueError(f"no {name} section")


def keep_cuda_arch(data: bytearray, arch: int) -> int:
    """Zero, in place, the GPU machine code (cubins) for other architectures than sm_`arch` in a library's fat
    binaries, where the same fat binary has a cubin for `arch`; PTX and every other byte stay. Returns the bytes
    zeroed.

    Why: onnxruntime-gpu's CUDA provider is 270 MB, most of it the same kernels built for six architectures; a lent
    machine takes 56 MiB a call. The runtime loads only the cubin that matches the device, so the zeroed ones are
    never read, and zeros compress to nothing. Offsets and sizes are unchanged, so nothing else in the file moves.
    """
    start, size = elf_section(data, ".nv_fatbin")
    position, end, zeroed = start, start + size, 0
    while position + 16 <= end:
        magic, _, header, body = struct.unpack_from("<IHHQ", data, position)
        if magic != FATBIN_MAGIC:
            position += 8  # padding between fat binaries
            continue
        entries, entry = [], position + header
        while entry < position + header + body:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            entry_arch = struct.unpack_from("<I", data, entry + 28)[0]
            entries.append((kind, entry_arch, entry + entry_header, payload))
            entry += entry_header + payload
        if any(kind == 2 and entry_arch == arch for kind, entry_arch, _, _ in entries):  # kind 2: a cubin
            for kind, entry_arch, offset, payload in entries:
                if kind == 2 and entry_arch != arch:
                    data[offset : offset + payload] = bytes(payload)
                    zeroed += payload
        position += header + body
    return zeroed


def pack_site(wheels: Iterable[Path], archive: Path, cuda_arch: int | None) -> Path:
    """The wheels unpacked into one site-packages tree (what `pip install --target` makes of them, less the
    scripts), trimmed, in one .tar.xz: xz packs the unpacked libraries far tighter than the wheels' zip does.
    Trimmed: ONNX Runtime's CUDA provider to one GPU architecture (keep_cuda_arch; None keeps all), and its C API
    library, which the Python binding does not load (it links the runtime in)."""
    with tempfile.TemporaryDirectory() as site:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
        provider = Path(site) / ORT_CUDA
        if cuda_arch is not None and provider.is_file():
            data = bytearray(provider.read_bytes())
            zeroed = keep_cuda_arch(data, cuda_arch)
            provider.write_bytes(data)
            print(f"{ORT_CUDA}: {zeroed / 2**20:.0f} MiB of other architectures' kernels zeroed (sm_{cuda_arch} kept)")
        for unused in Path(site).glob("onnxruntime/capi/libonnxruntime.so*"):
            unused.unlink()
        _write_xz_tar(Path(site), archive)
    return archive


def _write_xz_tar(folder: Path, archive: Path) -> None:
    """folder's contents as .tar.xz at xz's tightest preset: through the xz program on every core where there is one
    (a few minutes for the site), else Python's single-threaded lzma (several times longer)."""
    xz = shutil.which("xz")
    if xz is None:
        with tarfile.open(archive, "w:xz", preset=9) as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        return
    with archive.open("wb") as out:
        process = subprocess.Popen([xz, "-9", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
        with tarfile.open(fileobj=process.stdin, mode="w|") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        process.stdin.close()
        if process.wait() != 0:
            raise SystemExit(f"xz failed (exit {process.returncode}) packing {archive}")


def pins(names: Iterable[str], files: Iterable[Path] = (ROOT / "requirements.txt", ROOT / "constraints.txt")) -> dict:
    """name -> version for each of `names`, from this repository's `name==version` lines (the Linux x86-64 line
    where markers differ)."""
    found = {}
    for path in files:
        for line in path.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
            if match and match.group(1).lower().replace("_", "-") in names:
                found.setdefault(match.group(1).lower().replace("_", "-"), match.group(2))
    missing = sorted(set(names) - set(found))
    if missing:
        raise SystemExit(f"no pin for {', '.join(missing)} in requirements.txt or constraints.txt")
    return found


def split_into_loads(files: list[Path], folder: Path, load_bytes: int) -> list[Path]:
    """Move `files` into folder/load-1, load-2, ... of at most `load_bytes` each: the wheels that fit a load whole
    first (so load-1 alone lets most checks run), then the parts of larger ones, named NAME.part-I-of-N. Returns
    the loads."""
    counts = {path: -(-path.stat().st_size // load_bytes) for path in files}
    by_size = sorted(files, key=lambda p: (counts[p] > 1, -p.stat().st_size))
    pieces = [(path, offset, min(load_bytes, path.stat().st_size - offset), offset // load_bytes + 1)
              for path in by_size for offset in range(0, path.stat().st_size, load_bytes)]  # fmt: skip
    loads: list[list] = []
    for piece in pieces:  # first fit
        target = next((load for load in loads if sum(p[2] for p in load) + piece[2] <= load_bytes), None)
        if target is None:
            loads.append(target := [])
        target.append(piece)
    made = []
    for number, load in enumerate(loads, 1):
        (where := folder / f"load-{number}").mkdir(parents=True, exist_ok=True)
        for path, offset, size, index in load:
            name = path.name if counts[path] == 1 else f"{path.name}.part-{index}-of-{counts[path]}"
            with path.open("rb") as source, (where / name).open("wb") as out:
                source.seek(offset)
                out.write(source.read(size))
        made.append(where)
    for path in files:
        path.unlink()
    return made


def join_parts(folders: Iterable[Path], into: Path) -> list[Path]:
    """Every wheel under `folders` (whole, or joined from all its parts, in order) copied into `into`; a wheel with
    a part missing is an error that names the part."""
    whole, parts = {}, {}
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        match = PART.match(path.name)
        if match:
            parts.setdefault((match["name"], int(match["count"])), {})[int(match["index"])] = path
        elif path.suffix == ".whl" or path.name.endswith(".tar.xz"):
            whole[path.name] = path
    into.mkdir(parents=True, exist_ok=True)
    out = [Path(shutil.copy(path, into / name)) for name, path in whole.items()]
    for (name, count), found in sorted(parts.items()):
        missing = [i for i in range(1, count + 1) if i not in found]
        if missing:
            raise SystemExit(f"{name}: part(s) {', '.join(map(str, missing))} of {count} missing; each load-N folder "
                             "that `wheels` made must be carried")  # fmt: skip
        with (into / name).open("wb") as joined:
            for index in range(1, count + 1):
                joined.write(found[index].read_bytes())
        out.append(into / name)
    return out


def download_wheels(folder: Path, load_mib: int, python_version: str, cuda_arch: int | None) -> list[Path]:
    """The CARRIED wheels at this repository's pins, packed into one trimmed site archive (pack_site) and split into
    loads of at most `load_mib` MiB (folder/load-1, ...)."""
    pinned = pins(CARRIED)
    download = folder / "download"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(download),
               *(f"{name}=={version}" for name, version in pinned.items())]  # fmt: skip
    subprocess.run(command, check=True)
    wheels = sorted(download.glob("*.whl"))
    archive = pack_site(wheels, folder / SITE_ARCHIVE, cuda_arch)
    for wheel in wheels:
        wheel.unlink()
    download.rmdir()
    return split_into_loads([archive], folder, load_mib * 2**20)


def install_wheels(folders: list[Path], target: Path) -> None:
    """Join the loads' parts and install what they hold into `target`: a site archive unpacked, wheels through pip
    offline. With ONNX Runtime's GPU build, the image's CPU build is removed (the doctor reports the two as a
    conflict, and either may win the import)."""
    with tempfile.TemporaryDirectory() as joined:
        files = join_parts(folders, Path(joined))
        if not files:
            raise SystemExit(f"nothing to install under {', '.join(map(str, folders))}")
        target.mkdir(parents=True, exist_ok=True)
        for archive in (f for f in files if f.name.endswith(".tar.xz")):
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="fully_trusted")
        wheels = [f for f in files if f.suffix == ".whl"]
        names = [p.name for p in target.glob("onnxruntime_gpu-*.dist-info")] + [w.name for w in wheels]
        if any(name.startswith("onnxruntime_gpu-") for name in names):
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], check=False)
        if wheels:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)],
                           check=True)  # fmt: skip
    print(f"installed {len(files)} file(s) into {target}: export PYTHONPATH={target}")


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wheels"]:
        parser = argparse.ArgumentParser(prog="gpu_checks.py wheels", description="download and split the wheels")
        parser.add_argument("folder", type=Path)
        parser.add_argument("--load-mib", type=int, default=56, help="the most one load may hold (MiB)")
        parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
        parser.add_argument("--cuda-arch", default="90", help="the GPU kernels ONNX Runtime keeps: 90 for H100/H200, "
                            "'all' to keep every architecture (the loads grow by about 130 MiB)")  # fmt: skip
        args = parser.parse_args(argv[1:])
        arch = None if args.cuda_arch == "all" else int(args.cuda_arch)
        for load in download_wheels(args.folder, args.load_mib, args.python_version, arch):
            size = sum(p.stat().st_size for p in load.iterdir()) / 2**20
            print(f"{load}: {size:.1f} MiB: {', '.join(sorted(p.name for p in load.iterdir()))}")
        return 0
    if argv[:1] == ["install"]:
        parser = argparse.ArgumentParser(prog="gpu_checks.py install", description="join and install the wheels")
        parser.add_argument("folders", type=Path, nargs="+")
        parser.add_argument("--target", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        install_wheels(args.folders, args.target)
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated steps (default: all)")
    parser.add_argument("--skip", help="comma-separated steps to leave out")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all the steps")
    parser.add_argument("--upstream-wav2lip", type=Path, help="a Rudrabha/Wav2Lip checkout, for the side by side")
    parser.add_argument("--label", default="lent GPU machine, scripts/gpu_checks.py")
    parser.add_argument("--note", default=None)
    parser.add_argument("--archive", type=Path, help="pack the new result files and the logs into this .tar.gz")
    parser.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="as --list, for the steps chosen, without a GPU")
    args = parser.parse_args(argv)
    steps = STEPS if args.list else pick(args.only, args.skip)
    tag = None if (args.list or args.dry_run) else gpu_tag()
    if tag is None and not (args.list or args.dry_run):
        print("no CUDA device: these checks need an NVIDIA GPU that PyTorch sees (try `python -m engine doctor`)",
              file=sys.stderr)  # fmt: skip
        return 3
    context_flags = ["--label", args.label, *(["--note", args.note] if args.note else [])]
    context = Context(tag or "<gpu>", date.today().isoformat(), args.upstream_wav2lip, context_flags)
    if args.list or args.dry_run:
        for step in steps:
            print(f"{step.name} (up to {step.limit_s} s): {step.why}\n  {shlex.join(step.command(context))}")
        print(f"total of the limits: {sum(s.limit_s for s in steps)} s; budget {args.budget:.0f} s")
        return 0
    before = snapshot()
    logs = Path(tempfile.mkdtemp(prefix="gpu-checks-"))
    records = run_all(steps, context, args.budget, logs)
    summary = {"date": context.day, "gpu": tag, "budget_s": args.budget, "steps": records}
    files = new_files(before)
    print("new result files: " + (", ".join(p.name for p in files) or "none"))
    if args.archive:
        pack(args.archive, files, summary, logs)
        print(f"packed into {args.archive}")
    else:
        (logs / "gpu-checks.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"logs in {logs}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
