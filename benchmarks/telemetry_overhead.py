"""How much CPU does live telemetry cost? Target: under 1% of one core at 1 Hz.

Two measurements in one run:
1. per sample: CPU time of `sample_now()` (thread CPU clock) over many samples; at 1 Hz the
   CPU share of one core is that time per second.
2. in situ: this process's CPU time while the background sampler runs at its interval for a
   while, against the same window idle (the baseline), so thread wake-ups are counted too.

Usage: python benchmarks/telemetry_overhead.py [--seconds 20] [--samples 200] [--interval 1.0] [--label TEXT]
       [--note TEXT] [--out DIR]
Writes benchmarks/results/telemetry_overhead-<gpu or cpu-only>-<date>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.recording import RESULTS, add_context_flags, header, result_path, write_result
from engine.system import telemetry
from engine.system.telemetry import TelemetrySampler

TARGET_PERCENT_OF_ONE_CORE = 1.0


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def per_sample_cost(sampler: TelemetrySampler, samples: int) -> dict:
    for _ in range(5):  # warm caches (process names, NVML handles)
        sampler.sample_now()
    cpu, wall = [], []
    for _ in range(samples):
        c0, w0 = time.thread_time(), time.perf_counter()
        sampler.sample_now()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {
        "samples": samples,
        "cpu_ms_median": 1e3 * statistics.median(cpu),
        "cpu_ms_mean": 1e3 * statistics.fmean(cpu),
        "wall_ms_median": 1e3 * statistics.median(wall),
    }


def per_call_cost(sampler: TelemetrySampler, rounds: int = 50) -> dict[str, float]:
    """CPU ms per NVML call, median over rounds: which counter is worth its price."""
    costs: dict[str, list[float]] = {}
    original = telemetry._NvmlDevice.get

    def timed(self, fn, *args):
        c0 = time.thread_time()
        try:
            return original(self, fn, *args)
        finally:
            name = getattr(fn, "__name__", str(fn)) + (f"({args[0]})" if args else "")
            costs.setdefault(name, []).append(time.thread_time() - c0)

    telemetry._NvmlDevice.get = timed
    try:
        for _ in range(rounds):
            sampler.sample_now()
    finally:
        telemetry._NvmlDevice.get = original
    c0 = time.thread_time()
    for _ in range(rounds):
        sampler._host.sample()
    host = (time.thread_time() - c0) / rounds
    out = {name: 1e3 * statistics.median(values) for name, values in costs.items()}
    out["host (psutil)"] = 1e3 * host
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def in_situ_cost(interval: float, seconds: float) -> dict:
    c0 = process_cpu_seconds()
    time.sleep(seconds)
    idle = process_cpu_seconds() - c0
    sampler = TelemetrySampler(interval_s=interval, history_s=600).start()
    try:
        c0 = process_cpu_seconds()
        time.sleep(seconds)
        busy = process_cpu_seconds() - c0
        taken = len(sampler.history())
    finally:
        sampler.stop()
    return {
        "seconds": seconds,
        "interval_s": interval,
        "samples_taken": taken,
        "idle_cpu_s": idle,
        "sampler_cpu_s": busy,
        "percent_of_one_core": 100.0 * max(0.0, busy - idle) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="the folder the JSON goes to")
    add_context_flags(parser)
    args = parser.parse_args()

    sampler = TelemetrySampler(interval_s=args.interval)
    first = sampler.sample_now()
    gpu_names = [g.name for g in first.gpus]
    per_sample = per_sample_cost(sampler, args.samples)
    per_call = per_call_cost(sampler) if gpu_names else {}
    in_situ = in_situ_cost(args.interval, args.seconds)
    per_sample["percent_of_one_core_at_interval"] = per_sample["cpu_ms_median"] / (10.0 * args.interval)
    result = {
        **header("telemetry_overhead", args),
        "machine": {
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpus": gpu_names,
            "gpu_status": first.gpu_status,
            "driver": first.driver_version,
        },
        "per_sample": per_sample,
        "per_call_cpu_ms": per_call,
        "in_situ": in_situ,
        "target_percent_of_one_core": TARGET_PERCENT_OF_ONE_CORE,
    }
    worst = max(per_sample["percent_of_one_core_at_interval"], in_situ["percent_of_one_core"])
    result["passes_target"] = worst < TARGET_PERCENT_OF_ONE_CORE
    print(json.dumps(result, indent=2))
    path = write_result(result, result_path("telemetry_overhead", gpu_names[0] if gpu_names else None, folder=args.out))
    print(
        f"\nper sample: {per_sample['cpu_ms_median']:.2f} ms CPU ({per_sample['wall_ms_median']:.1f} ms wall) "
        f"-> {per_sample['percent_of_one_core_at_interval']:.3f}% of one core at {args.interval:g} s; "
        f"in situ: {in_situ['percent_of_one_core']:.3f}% over {args.seconds:g} s -> {path}"
    )


if __name__ == "__main__":
    main()
