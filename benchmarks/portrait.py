"""Portrait animation speed: per-module times and end-to-end frames per second, per backend and precision.

Fixed input: assets/face.jpg animated by assets/driving.mp4, random weights in the official layout (speed
does not depend on trained values). For each configuration:
- modules: the appearance extractor, motion extractor, warping module and decoder timed alone on one
  frame (median of `--runs` after warm-up; CUDA synchronised), which is what a frame costs once the
  source is cached (warping + decoding is the per-frame hot path);
- end to end: `run_portrait` on the first `--frames` driving frames, reporting its stages and frames/s.
The baseline engine (no weights) is timed end to end too, as the floor a learned engine must beat.
Reference points to beat (published): 12.8 ms per frame on an RTX 4090 (official, PyTorch), 30+ fps on an
RTX 3090 (TensorRT).

Precisions apply to the torch backend (autocast) and to ONNX Runtime's CUDA (our fp16 graphs) and TensorRT
(its fp16 engines) providers; the CPU provider runs fp32 only. `--compile` adds torch.compile rows.

Usage: python benchmarks/portrait.py [--backends torch,onnx-cpu] [--precisions fp32,fp16] [--compile]
       [--frames 8] [--runs 5] [--device auto]
Writes benchmarks/results/portrait-<gpu or cpu>-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.core.device import resolve_device
from engine.core.settings import get_settings
from engine.jobs.measure import measured
from engine.models.liveportrait import write_random_weights
from engine.portrait import cache as portrait_cache
from engine.portrait.config import PortraitConfig
from engine.portrait.pipeline import _load_networks, run_portrait
from engine.system.telemetry import TelemetrySampler

ASSETS = Path(__file__).resolve().parent.parent / "assets"


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


def end_to_end(
    weights: Path | None, backend: str, precision: str, compiled: bool, device: str, frames: int, out: Path
) -> dict:
    engine = "liveportrait" if weights else "baseline"
    config = PortraitConfig(
        ASSETS / "face.jpg", ASSETS / "driving.mp4", weights=str(weights) if weights else None, precision=precision,
        backend=backend, max_frames=frames, engine=engine, compile=compiled,
    )  # fmt: skip
    runs = []
    for _ in range(2 if weights else 1):  # LivePortrait twice: the re-run finds networks and source cached
        with measured(device) as window:
            result = run_portrait(config, out, device=device)
        runs.append((result, window.figures()))
    (result, figures), rerun = runs[0], runs[-1][1]
    return {
        "engine": engine,
        "frames": result.metrics["frames"],
        "frames_per_second": result.metrics["frames_per_second"],
        "stages_s": {s.name: s.seconds for s in result.stages},
        "wall_s": figures["wall_s"],
        "rerun_wall_s": rerun["wall_s"] if weights else None,
        "peak_gpu_bytes": figures["peak_allocated_bytes"],
        "peak_host_bytes": figures["peak_rss_bytes"],
        "peak_device_used_bytes": figures["peak_device_used_bytes"],
        "energy_j": figures["energy_j"],
        "energy_source": figures["energy_source"],
        "warnings": result.warnings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,onnx-cpu")
    parser.add_argument("--precisions", default="fp32", help="e.g. fp32,fp16 (the ONNX CPU provider: fp32 only)")
    parser.add_argument("--compile", action="store_true", help="also time the torch backend under torch.compile")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
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
            f"decoder {mods['decoder_ms']:8.1f} ms"
            f"  -> {per_frame:8.1f} ms/frame; end to end {e2e['frames_per_second']:.2f} frames/s, "
            f"{e2e['wall_s']:.1f} s (re-run with the cache {e2e['rerun_wall_s']:.1f} s)",
            flush=True,
        )
    for _ in range(2):  # the first run after other libraries' work is slower (thread pools); keep the second
        baseline = end_to_end(None, "torch", "fp32", False, str(choice.device), 75, work / "baseline.mp4")
    print(f"baseline   end to end {baseline['frames_per_second']:.1f} frames/s over {baseline['frames']} frames")
    snapshot = TelemetrySampler().sample_now()
    gpu = snapshot.gpus[0].name if snapshot.gpus and choice.is_cuda else None
    tag = (gpu.replace(" ", "-") if gpu else "cpu-only").lower()
    path = (
        Path(args.out)
        if args.out
        else Path(__file__).resolve().parent / "results" / f"portrait-{tag}-{date.today()}.json"
    )
    record = {
        "date": str(date.today()),
        "command": "python benchmarks/portrait.py " + " ".join(sys.argv[1:]),
        "device": str(choice.device),
        "gpu": gpu,
        "torch": torch.__version__,
        "results": rows,
        "baseline": baseline,
        "note": "random weights in the official layout: speed does not depend on trained values",
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
