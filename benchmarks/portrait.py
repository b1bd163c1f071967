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

Precisions apply to the torch backend (autocast) and to ONNX Runtime's CUDA (our fp16 graphs) and TensorRT
(its fp16 engines) providers; the CPU provider runs fp32 only. `--compile` adds torch.compile rows.

Usage: python benchmarks/portrait.py [--backends torch,onnx-cpu] [--precisions fp32,fp16] [--compile]
       [--frames 8] [--runs 5] [--device auto] [--label TEXT] [--note TEXT] [--out PATH]
Writes benchmarks/results/portrait-<gpu or cpu-only>-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.recording import add_context_flags, header, result_path, write_result
from engine.core.device import resolve_device
from engine.core.settings import get_settings
from engine.jobs.measure import measured
from engine.models.liveportrait import write_random_weights
from engine.portrait import cache as portrait_cache
from engine.portrait.config import PortraitConfig
from engine.portrait.pipeline import _load_networks, run_portrait
from engine.system.telemetry import TelemetrySampler

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASELINE_FRAMES = 75  # the whole driving clip: the baseline is fast enough


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
    nets = _load_networks(config, get_settings(), weights, device, precision)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,onnx-cpu")
    parser.add_argument("--precisions", default="fp32", help="e.g. fp32,fp16 (the ONNX CPU provider: fp32 only)")
    parser.add_argument("--compile", action="store_true", help="also time the torch backend under torch.compile")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    add_context_flags(parser)
    args = parser.parse_args()
    choice = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="portrait-bench-"))
    weights = write_random_weights(work / "weights")
    rows = []
    configs = []
    for backend in args.backends.split(","):
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
    baseline = end_to_end(None, "torch", "fp32", False, str(choice.device), BASELINE_FRAMES, work / "baseline.mp4")
    print(f"baseline end to end: {describe_runs(baseline)}")
    snapshot = TelemetrySampler().sample_now()
    gpu = snapshot.gpus[0].name if snapshot.gpus and choice.is_cuda else None
    record = {
        **header("portrait", args),
        "device": str(choice.device),
        "gpu": gpu,
        "torch": torch.__version__,
        "weights": "random weights in the official layout: speed does not depend on trained values",
        "results": rows,
        "baseline": baseline,
    }
    write_result(record, args.out or result_path("portrait", gpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
