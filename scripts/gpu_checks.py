"""Every check that needs an NVIDIA GPU, as one bounded run: the doctor, `pytest -m gpu` and the GPU benchmarks,
each under its own time limit, with their result files and logs packed into one archive.

Why: GPU time comes in short leases (a lent machine, a spot instance), and the issues' GPU figures (#16, #17) are
still to be measured. A prepared run spends the lease measuring. A step that hangs or fails costs only its own
limit. A step that no longer fits the budget is skipped, and the summary says so.

Steps, in the order the issues ask for them (`--list` shows each one's command and limit): doctor, pytest-gpu,
lipsync, generator, portrait, onnx-overhead, musetalk, musetalk-onnx, telemetry-overhead, telemetry-table.
- Each benchmark writes its JSON where it always does: benchmarks/results/, named by the GPU and the date.
- The doctor's, the tests' and the telemetry table's console output are kept there as .txt files.
- --archive packs every file the run added to benchmarks/results/ at its top level, and in logs/ the other steps'
  logs and gpu-checks.json (each step's command, status, seconds and the tail of its output). The top level goes
  into benchmarks/results/; then run scripts/results_readme.py (a new GPU's files need their block in its README).

For a GPU machine without a package registry:
- `wheels DIR`, run here (online), downloads the wheels a CUDA PyTorch image usually lacks, at this repository's
  pins. It splits them into loads of at most --load-mib each (DIR/load-1, DIR/load-2, ...), cutting large wheels
  into numbered parts.
- `install DIR --target T`, run there, joins the parts and installs the wheels offline into T (put T on
  PYTHONPATH). With onnxruntime-gpu it removes the CPU onnxruntime, which the doctor reports as a conflict.

Usage:
  python scripts/gpu_checks.py [--only a,b] [--skip a,b] [--budget SECONDS] [--upstream-wav2lip PATH]
                               [--label TEXT] [--note TEXT] [--archive FILE] [--list] [--dry-run]
  python scripts/gpu_checks.py wheels DIR [--load-mib 56] [--python-version 3.12]
  python scripts/gpu_checks.py install DIR --target /tmp/site
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
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
    Step("doctor", "why the GPU is or is not used", 90, lambda c: _py("-m", "engine", "doctor"), log="doctor"),
    Step("pytest-gpu", "the GPU tests: each fails when a provider fell back or a counter is missing", 420,
         lambda c: _py("-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider"), log="pytest-gpu"),
    Step("lipsync", "#17: end to end (still + 40 s, 720p 10 s clip), the generator by batch and precision, compiled; "
         "side by side with upstream, on the CPU, when given", 480,
         lambda c: _py("benchmarks/lipsync.py", "--compile",
                       *(["--upstream", str(c.upstream_wav2lip)] if c.upstream_wav2lip else []), *c.context)),
    Step("generator", "#17: the Wav2Lip generator in fp16 with CUDA graphs, compiled with CUDA graphs "
         "(reduce-overhead) and through ORT-CUDA and ORT-TensorRT (target 40,000 frames/s)", 420,
         lambda c: _py("-m", "engine", "bench", "--model", "wav2lip", "--runtime", "eager,cudagraphs,ort-cuda,ort-trt",
                       "--precision", "fp16", "--batch", "512,1024", "--compile", "off,on", "--compile-mode",
                       "reduce-overhead", "--channels-last", "on", "--quiet",
                       "--json", str(RESULTS / f"bench-wav2lip-generator-{c.tag}-{c.day}.json"), *c.context)),
    Step("portrait", "#17: LivePortrait warp + decode per frame in PyTorch (eager, compiled), ORT-CUDA and "
         "ORT-TensorRT, fp32 and fp16 (target 5 ms a frame)", 480,
         lambda c: _py("benchmarks/portrait.py", "--backends", "torch,onnx-cuda,onnx-trt", "--precisions",
                       "fp32,fp16", "--compile", *c.context)),
    Step("onnx-overhead", "#17: ONNX eval's overhead over a bare session on the CUDA provider (target 3%)", 240,
         lambda c: _py("benchmarks/onnx_overhead.py", "--providers", "cpu,cuda", *c.context)),
    Step("musetalk", "#16: a prepared avatar end to end at the real networks' sizes, eager, compiled and with CUDA "
         "graphs (target 150 frames/s), and the UNet and decoder by batch and precision (target 300 frames/s)", 540,
         lambda c: _py("benchmarks/musetalk.py", "--runtimes", "eager,compile,cuda-graphs", *c.context)),
    Step("musetalk-onnx", "#16: the MuseTalk pipeline with its UNet and decoder through ORT-CUDA and TensorRT", 540,
         lambda c: _py("benchmarks/musetalk.py", "--runtimes", "onnx,tensorrt", "--precisions", "fp16", "--batches",
                       "32", "--out", str(RESULTS / f"musetalk-{c.tag}-{c.day}-onnx.json"), *c.context)),
    Step("telemetry-overhead", "what the live telemetry costs per sample on this driver", 90,
         lambda c: _py("benchmarks/telemetry_overhead.py", *c.context)),
    Step("telemetry-table", "the nvidia-smi style table, as printed", 60,
         lambda c: _py("-m", "engine", "telemetry"), log="telemetry-table"),
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

# What a CUDA PyTorch image (with numpy, scipy, OpenCV, transformers, scikit-learn, numba) lacks for the GPU tests
# and benchmarks: PyAV, diffusers, ONNX Runtime's GPU build, and librosa for upstream Wav2Lip's inference.py.
CARRIED = ["av", "diffusers", "onnxruntime-gpu", "librosa", "audioread", "decorator", "platformdirs", "pooch",
           "soundfile", "soxr"]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]  # fmt: skip
PART = re.compile(r"^(?P<name>.+\.whl)\.part-(?P<index>\d+)-of-(?P<count>\d+)$")


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
        elif path.suffix == ".whl":
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


def download_wheels(folder: Path, load_mib: int, python_version: str) -> list[Path]:
    pinned = pins(CARRIED)
    download = folder / "download"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(download),
               *(f"{name}=={version}" for name, version in pinned.items())]  # fmt: skip
    subprocess.run(command, check=True)
    loads = split_into_loads(sorted(download.glob("*.whl")), folder, load_mib * 2**20)
    download.rmdir()
    return loads


def install_wheels(folders: list[Path], target: Path) -> None:
    with tempfile.TemporaryDirectory() as joined:
        wheels = join_parts(folders, Path(joined))
        if not wheels:
            raise SystemExit(f"no wheels under {', '.join(map(str, folders))}")
        if any(w.name.startswith("onnxruntime_gpu-") for w in wheels):
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], check=False)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)],
                       check=True)  # fmt: skip
    print(f"installed {len(wheels)} wheel(s) into {target}: export PYTHONPATH={target}")


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wheels"]:
        parser = argparse.ArgumentParser(prog="gpu_checks.py wheels", description="download and split the wheels")
        parser.add_argument("folder", type=Path)
        parser.add_argument("--load-mib", type=int, default=56, help="the most one load may hold (MiB)")
        parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
        args = parser.parse_args(argv[1:])
        for load in download_wheels(args.folder, args.load_mib, args.python_version):
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
