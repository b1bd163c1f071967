"""Portrait animation speed: per-module times and end-to-end frames per second, per backend and precision.

Fixed input: assets/face.jpg animated by assets/driving.mp4, random weights in the official layout (speed
does not depend on trained values). For each configuration:
- modules: the appearance extractor, motion extractor, warping module and decoder timed alone on one
  frame (median of `--runs` after warm-up; CUDA synchronised), which is what a frame costs once the
  source is cached (warping + decoding is the per-frame hot path);
- end to end: `run_portrait` on the first `--frames` driving frames, twice: a first run with nothing of this job in
  the process (each configuration starts with the portrait cache cleared; LivePortrait loads its networks and
  encodes the source) and a re-run of the same job (networks and source features cached, thread pools warm), both
  with the same figures (wall, frames/s, stages, peaks, energy).
The baseline engine (no weights) is timed end to end the same way, first run and re-run, as the floor a learned
engine must beat.
Reference points to beat (published): 12.8 ms per frame on an RTX 4090 (official, PyTorch), 30+ fps on an
RTX 3090 (TensorRT).

Side by side (`--upstream PATH`, a KwaiVGI/LivePortrait checkout): our `avatarbench portrait` command (torch backend,
fp32 on the CPU, at the default batch size, and at batch 8 when that is not the default) against upstream's
LivePortraitWrapper driven by benchmarks/upstream_liveportrait.py, each run a separate process, in turn for `--pairs`
rounds (ours, upstream, ours at batch 8, ours, ...): the same random weights files, the source face.jpg and the
first `--frames` frames of driving.mp4. Per run: seconds per frame (without model loading and the source's
features), the whole process's wall time and peak RSS (the kernel's, from wait4); per side medians and spreads; per
round upstream / ours (time) and ours / upstream (peak RSS), with their medians and spreads. What each side's
per-frame time covers, and where the two pipelines differ, is written into the result's notes.

Precisions apply to the torch backend (autocast) and to ONNX Runtime's CUDA (our fp16 graphs) and TensorRT
(its fp16 engines) providers; the CPU provider runs fp32 only. `--compile` adds torch.compile rows.

Usage: python benchmarks/portrait.py [--backends torch,onnx-cpu] [--precisions fp32,fp16] [--compile]
       [--frames 8] [--runs 5] [--quick] [--device auto] [--upstream PATH [--pairs 3] [--only-side-by-side]]
       [--label TEXT] [--note TEXT] [--out PATH]
Writes benchmarks/results/portrait-<gpu or cpu-only>-<date>.json (or that name in --out when it is a folder) and
prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import paired
from benchmarks.recording import add_context_flags, cpu_model, header, result_path, write_result
from engine.core.device import resolve_device
from engine.core.media import load_image
from engine.core.settings import get_settings
from engine.faces.detection import HaarDetector, largest
from engine.jobs.measure import measured
from engine.models.liveportrait import write_random_weights
from engine.portrait import cache as portrait_cache
from engine.portrait.config import PortraitConfig
from engine.portrait.crop import crop_transform
from engine.portrait.networks import load_networks
from engine.portrait.pipeline import run_portrait
from engine.system.telemetry import TelemetrySampler

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
BASELINE_FRAMES = 75  # the whole driving clip: the baseline is fast enough
UPSTREAM_DRIVER = Path(__file__).resolve().with_name("upstream_liveportrait.py")
# Our stages that do the per-frame work the upstream driver times (crop also holds the source's one crop: a few ms).
PER_FRAME_STAGES = ("crop", "motion", "warp", "decode network", "paste")
SETUP_STAGES = ("decode source", "load", "source features")  # once per run: left out of every per-frame figure
EXTRA_BATCH = 8
EXTRA_SIDE = f"ours at batch {EXTRA_BATCH}"
SIDE_BY_SIDE_NOTES = [
    "Both sides run fp32 on the CPU (CUDA hidden from both) from the same random weights files in the official "
    "layout, each run a separate process.",
    "Upstream's cropper needs InsightFace and its landmark model (not dependencies here), so the source crop is the "
    "one our pipeline makes (our face detector's box, scale 2.3, axis-aligned without landmarks), given to the "
    "upstream driver as the crop's affine: the same face region on both sides; no lip normalisation on either "
    "(upstream's default) and no eye/lip retargeting.",
    "Driving frames: upstream resizes the whole square clip to 256x256 (its default with flag_crop_driving_video "
    "off); ours detects the driving face once and crops every frame around it.",
    "per_frame_s, ours: the crop, motion, warp, decode network and paste stages over the frames; upstream: its "
    "per-frame loop (resize, motion extraction, keypoint transform and stitching, warp_decode, parse_output, "
    "paste_back). Neither includes model loading, the source's features, decoding the clip or writing a video. "
    "per_frame_all_s (ours) is everything after the source's features: with the driving-face detection, the "
    "conversion to 8-bit and encoding.",
    "wall_s and peak_rss_bytes are the whole process (start-up, imports, loading, everything); ours writes an MP4 "
    "with the driving clip's sound, the upstream driver writes no video (upstream's own pipeline writes two).",
]


def _median_ms(fn, runs: int, device: torch.device) -> float:
    fn()  # warm-up (and, for ONNX Runtime, the first-run allocations)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def modules(weights: Path, backend: str, precision: str, compiled: bool, device: torch.device, runs: int) -> dict:
    source, driving = ASSETS / "face.jpg", ASSETS / "driving.mp4"
    config = PortraitConfig(source, driving, backend=backend, compile=compiled, batch_size=1)
    nets = load_networks(config, get_settings(), weights, device, precision)
    dev = nets.device
    image = torch.rand(1, 3, 256, 256, device=dev)
    feature = nets.appearance(image)
    x = nets.motion(image).kp.to(dev)
    warped = nets.warp(feature, x, x + 0.02)
    return {
        "appearance_ms": _median_ms(lambda: nets.appearance(image), runs, dev),
        "motion_ms": _median_ms(lambda: nets.motion(image), runs, dev),
        "warping_ms": _median_ms(lambda: nets.warp(feature, x, x + 0.02), runs, dev),
        "decoder_ms": _median_ms(lambda: nets.decode(warped), runs, dev),
    }


def timed_run(config: PortraitConfig, device: str, out: Path) -> dict[str, Any]:
    """One end-to-end run in a measurement window: the figures every run reports, first or re-run alike."""
    with measured(device) as window:
        result = run_portrait(config, out, device=device)
    figures = window.figures()
    return {
        "frames": result.metrics["frames"],
        "frames_per_second": result.metrics["frames_per_second"],
        "wall_s": figures["wall_s"],
        "stages_s": {s.name: s.seconds for s in result.stages},
        "peak_gpu_bytes": figures["peak_allocated_bytes"],
        "peak_host_bytes": figures["peak_rss_bytes"],
        "peak_device_used_bytes": figures["peak_device_used_bytes"],
        "energy_j": figures["energy_j"],
        "energy_source": figures["energy_source"],
        "warnings": result.warnings,
    }


def end_to_end(
    weights: Path | None, backend: str, precision: str, compiled: bool, device: str, frames: int, out: Path
) -> dict[str, Any]:
    """LivePortrait (with weights) or the baseline, reported the same way: the first run, then the same job again."""
    engine = "liveportrait" if weights else "baseline"
    config = PortraitConfig(
        ASSETS / "face.jpg", ASSETS / "driving.mp4", weights=str(weights) if weights else None, precision=precision,
        backend=backend, max_frames=frames, engine=engine, compile=compiled,
    )  # fmt: skip
    first_run = timed_run(config, device, out)
    rerun = timed_run(config, device, out)
    return {"engine": engine, "first_run": first_run, "rerun": rerun}


def describe_runs(e2e: dict[str, Any]) -> str:
    first, again = e2e["first_run"], e2e["rerun"]
    return (
        f"first run {first['wall_s']:.1f} s ({first['frames_per_second']:.2f} frames/s), "
        f"re-run {again['wall_s']:.1f} s ({again['frames_per_second']:.2f} frames/s) over {first['frames']} frames"
    )


def source_crop_to_image(source: Path) -> list[float]:
    """The 512 crop -> image affine our pipeline uses for this source without a landmark model (its detector, its
    crop): given to the upstream driver so that both sides animate the same face region."""
    image = load_image(source)
    face = largest(HaarDetector(detect_scale=0.5).detect([image])[0])
    if face is None:
        raise SystemExit(f"no face found in {source}")
    return [float(v) for v in crop_transform(face[:4]).to_original.ravel()]


def ours_portrait(weights: Path, frames: int, stem: Path, batch: int | None) -> list[str]:
    """`avatarbench portrait`: LivePortrait, torch backend, fp32 on the CPU; `batch` None keeps the default."""
    return [
        *paired.avatarbench_command(), "portrait", "--source", str(ASSETS / "face.jpg"),
        "--driving", str(ASSETS / "driving.mp4"), "--engine", "liveportrait", "--weights", str(weights),
        "--backend", "torch", "--precision", "fp32", "--max-frames", str(frames), "--device", "cpu",
        "--out", f"{stem}.mp4", "--json", f"{stem}.json", "--quiet",
        *(["--batch-size", str(batch)] if batch else []),
    ]  # fmt: skip


def upstream_portrait(upstream: Path, weights: Path, frames: int, crop: list[float], out: Path) -> list[str]:
    return [
        sys.executable, str(UPSTREAM_DRIVER), "--upstream", str(upstream.resolve()), "--weights", str(weights),
        "--source", str(ASSETS / "face.jpg"), "--driving", str(ASSETS / "driving.mp4"), "--frames", str(frames),
        "--crop-to-image", ",".join(f"{v:.9g}" for v in crop), "--device", "cpu", "--json", str(out),
    ]  # fmt: skip


def run_ours(command: list[str], env: dict[str, str], _round: int = 0) -> dict[str, Any]:
    run = paired.run_measured(command, cwd=ROOT, env=env)
    if run.returncode:
        raise paired.ProcessFailed(run)
    result = json.loads(Path(command[command.index("--json") + 1]).read_text())
    stages = {stage["name"]: stage["seconds"] for stage in result["stages"]}
    frames = result["metrics"]["frames"]
    in_process = result["measurement"]["wall_s"]
    return {
        "wall_s": run.wall_s,
        "peak_rss_bytes": run.peak_rss_bytes,
        "frames": frames,
        "batch_size": result["metrics"].get("batch_size"),
        "per_frame_s": sum(stages.get(name, 0.0) for name in PER_FRAME_STAGES) / frames,
        "per_frame_all_s": (in_process - sum(stages.get(name, 0.0) for name in SETUP_STAGES)) / frames,
        "load_s": stages.get("load"),
        "in_process_wall_s": in_process,
        "stages_s": stages,
    }


def run_upstream(command: list[str], env: dict[str, str], _round: int = 0) -> dict[str, Any]:
    report = Path(command[command.index("--json") + 1])
    report.unlink(missing_ok=True)
    run = paired.run_measured(command, cwd=ROOT, env=env)
    if run.returncode:
        raise paired.ProcessFailed(run)
    result = json.loads(report.read_text())
    return {
        "wall_s": run.wall_s,
        "peak_rss_bytes": run.peak_rss_bytes,
        **{key: result[key] for key in ("frames", "per_frame_s", "load_s", "source_s", "stages_s", "threads")},
    }


def side_by_side(upstream: Path, weights: Path, frames: int, pairs: int, work: Path) -> dict[str, Any]:
    """Ours (default batch, and batch 8 when that is not the default) and upstream's wrapper in alternating
    whole-process runs; see the module's docstring."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "AVATARBENCH_DEVICE": "cpu"}
    crop = source_crop_to_image(ASSETS / "face.jpg")
    default = next(f.default for f in dataclasses.fields(PortraitConfig) if f.name == "batch_size")
    commands = {
        "ours": ours_portrait(weights, frames, work / "ours", None),
        "upstream": upstream_portrait(upstream, weights, frames, crop, work / "upstream.json"),
    }
    if default != EXTRA_BATCH:
        commands[EXTRA_SIDE] = ours_portrait(weights, frames, work / "ours-batch", EXTRA_BATCH)
    sides = {
        name: partial(run_upstream if name == "upstream" else run_ours, command, env)
        for name, command in commands.items()
    }
    names = {
        str(work): "<work>",
        str(weights): "<weights>",
        str(ROOT) + os.sep: "",
        str(upstream.resolve()): "<upstream>",
        sys.executable: "python",
    }
    record = {
        "upstream": "KwaiVGI/LivePortrait's LivePortraitWrapper, driven by benchmarks/upstream_liveportrait.py",
        "pairs": pairs,
        "round_order": list(commands),
        "device": "cpu",
        "precision": "fp32",
        "frames": frames,
        "torch_threads": torch.get_num_threads(),
        "source_crop_to_image": crop,
        "commands": {name: paired.command_text(command, names) for name, command in commands.items()},
        "notes": SIDE_BY_SIDE_NOTES,
    }
    print(f"side by side with upstream LivePortrait, {frames} frames, fp32 CPU:", flush=True)
    try:
        runs = paired.interleaved(sides, pairs, report=_print_run)
    except paired.ProcessFailed as exc:  # keep the rest of the report
        print(exc, flush=True)
        return {**record, "error": str(exc)[-2000:]}
    comparison = paired.compare(runs, reference="upstream", time_keys=("per_frame_s", "wall_s"))
    record["default_batch_size"] = runs["ours"][0]["batch_size"]  # what the config's default came to on the CPU
    print("\n".join(paired.table_lines(comparison, time_keys=("per_frame_s", "wall_s"))), flush=True)
    return {**record, **comparison}


def _print_run(side: str, round_: int, figures: dict[str, Any]) -> None:
    batch = f"  batch {figures['batch_size']}" if figures.get("batch_size") else ""
    print(
        f"  round {round_ + 1} {side:<16} {figures['per_frame_s']:7.2f} s/frame  process {figures['wall_s']:7.2f} s  "
        f"peak RSS {figures['peak_rss_bytes'] / 2**30:.2f} GiB{batch}",
        flush=True,
    )


def output_path(out: Path | None, gpu: str | None, suffix: str = "") -> Path:
    """--out as given (a .json path), or the usual name in it when it is a folder, or the usual place. `suffix`
    marks a partial run (side by side only), so that it never replaces a full run's file of the same day."""
    if out is None:
        return result_path("portrait", gpu, suffix)
    if out.is_dir() or not out.suffix:
        return result_path("portrait", gpu, suffix, folder=out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,onnx-cpu")
    parser.add_argument("--precisions", default="fp32", help="e.g. fp32,fp16 (the ONNX CPU provider: fp32 only)")
    parser.add_argument("--compile", action="store_true", help="also time the torch backend under torch.compile")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="2 frames and 1 timed run per module: a check")
    paired.add_side_by_side_flags(parser, "KwaiVGI/LivePortrait", "in-process runs (modules, end to end)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path or folder (default: benchmarks/results/)")
    add_context_flags(parser)
    args = parser.parse_args()
    paired.check_side_by_side_flags(parser, args, "src/live_portrait_wrapper.py")
    if args.quick:
        args.frames, args.runs = 2, 1
    choice = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="portrait-bench-"))
    weights = write_random_weights(work / "weights")
    rows = []
    configs = []
    for backend in [] if args.only_side_by_side else args.backends.split(","):
        precisions = ["fp32"] if backend == "onnx-cpu" else args.precisions.split(",")
        configs += [(backend, p, False) for p in precisions]
        configs += [(backend, p, True) for p in precisions if args.compile and backend == "torch"]
    for backend, precision, compiled in configs:
        mods = modules(weights, backend, precision, compiled, choice.device, args.runs)
        out = work / f"{backend}.mp4"
        e2e = end_to_end(weights, backend, precision, compiled, str(choice.device), args.frames, out)
        rows.append(
            {"backend": backend, "precision": precision, "compiled": compiled, "modules": mods, "end_to_end": e2e}
        )
        portrait_cache.clear()  # the next configuration starts cold, with no other networks alive
        gc.collect()
        per_frame = mods["warping_ms"] + mods["decoder_ms"]
        label = backend + ("+compile" if compiled else "")
        print(
            f"{label:<14} {precision:<5} appearance {mods['appearance_ms']:8.1f} ms  motion "
            f"{mods['motion_ms']:7.1f} ms  warping {mods['warping_ms']:8.1f} ms  "
            f"decoder {mods['decoder_ms']:8.1f} ms  -> {per_frame:8.1f} ms/frame; end to end: {describe_runs(e2e)}",
            flush=True,
        )
    baseline = None
    if not args.only_side_by_side:
        frames = 2 if args.quick else BASELINE_FRAMES
        baseline = end_to_end(None, "torch", "fp32", False, str(choice.device), frames, work / "baseline.mp4")
        print(f"baseline end to end: {describe_runs(baseline)}")
    upstream = None
    if args.upstream:
        upstream = side_by_side(args.upstream, weights, args.frames, args.pairs, work / "side-by-side")
    snapshot = TelemetrySampler().sample_now()
    gpu = snapshot.gpus[0].name if snapshot.gpus and choice.is_cuda else None
    record = {
        **header("portrait", args),
        "device": str(choice.device),
        "gpu": gpu,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "weights": "random weights in the official layout: speed does not depend on trained values",
        "results": rows,
        "baseline": baseline,
        "side_by_side": upstream,
    }
    suffix = ("-side-by-side" if args.only_side_by_side else "") + paired.file_tag_suffix(args)
    write_result(record, output_path(args.out, gpu, suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
