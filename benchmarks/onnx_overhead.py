"""Does the ONNX eval harness distort what it measures? Target: its p50 within 3% of a bare run loop.

For each model and provider, in one process and on the same inputs:
- bare: `InferenceSession(path, providers=[...])` with ORT's defaults, a few warm-up calls, then N calls
  of `session.run(None, feeds)` timed with perf_counter_ns; the p50;
- ours: `engine.onnx.evaluate.evaluate` with the same runs and warm-up; the p50 of its row.
The two alternate for several rounds in ABBA order so that drift in clocks or load hits both, and
the overhead is the median over rounds of ours/bare - 1. Session creation and the first
run are excluded from both, as they are reported separately by the harness.

Both use the same intra-op thread count (default 1): on a small shared machine, ORT's thread pool
placement varies from session to session by far more than 3%, which would drown what is measured.

Usage: python benchmarks/onnx_overhead.py [--models wav2lip,matmul] [--providers cpu] [--runs 50]
       [--rounds 5] [--batch 1] [--threads 1] [--label TEXT] [--note TEXT] [--out PATH]
Writes benchmarks/results/onnx_overhead-<gpu or cpu-only>-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.recording import add_context_flags, header, result_path, write_result
from engine.onnx.config import EvalConfig
from engine.onnx.evaluate import evaluate
from engine.onnx.examples import example_path
from engine.onnx.inputs import synthetic_inputs
from engine.onnx.inspection import inspect_model
from engine.runtimes.ort_session import PROVIDERS

TARGET = 0.03


def matmul_model(path: Path, size: int = 1024) -> Path:
    """A small model (one 1024x1024 MatMul + Relu) where per-call overhead weighs the most."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32) / size**0.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.write_bytes(model.SerializeToString())
    return path


def bare_p50(path: Path, provider: str, feeds: dict, runs: int, warmup: int, threads: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=[PROVIDERS[provider]])
    for _ in range(warmup + 1):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feeds)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times)


def ours_p50(path: Path, info, provider: str, batch: int, runs: int, warmup: int, threads: int) -> float:
    config = EvalConfig(model=path, providers=(provider,), batch_sizes=(batch,), runs=runs, warmup=warmup,
                        intra_op_threads=threads)  # fmt: skip
    row = evaluate(path, info, config)["results"][-1]
    if row["error"] or row["fell_back"]:
        raise RuntimeError(f"{provider}: {row['error'] or 'fell back to the CPU'}")
    return row["latency"]["p50_ms"]


def measure(name: str, path: Path, provider: str, args: argparse.Namespace) -> dict:
    batch, runs, warmup, threads = args.batch, args.runs, args.warmup, args.threads
    info = inspect_model(path)
    values = {**info.symbols, **{s: batch for s in info.symbols if s == "batch"}}
    feeds = synthetic_inputs(info.inputs, values, seed=0)  # what evaluate feeds at seed 0
    pairs = []
    for i in range(args.rounds):
        if i % 2:  # ABBA order: whatever drifts over the run (clocks, caches, load) hits both sides alike
            ours = ours_p50(path, info, provider, batch, runs, warmup, threads)
            bare = bare_p50(path, provider, feeds, runs, warmup, threads)
        else:
            bare = bare_p50(path, provider, feeds, runs, warmup, threads)
            ours = ours_p50(path, info, provider, batch, runs, warmup, threads)
        pairs.append({"bare_p50_ms": bare, "ours_p50_ms": ours, "ratio": ours / bare})
    ratios = [p["ratio"] for p in pairs]
    return {
        "model": name,
        "provider": provider,
        "batch": batch,
        "runs": runs,
        "intra_op_threads": threads,
        "rounds": pairs,
        "bare_p50_ms_median": statistics.median(p["bare_p50_ms"] for p in pairs),
        "ours_p50_ms_median": statistics.median(p["ours_p50_ms"] for p in pairs),
        "overhead_median": statistics.median(ratios) - 1,
        "overhead_spread": [min(ratios) - 1, max(ratios) - 1],
        "within_target": statistics.median(ratios) - 1 < TARGET,
    }


def machine() -> dict:
    import onnxruntime as ort

    from engine.system.telemetry import TelemetrySampler

    snapshot = TelemetrySampler().sample_now()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "gpus": [g.name for g in snapshot.gpus],
        "driver": snapshot.driver_version,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="wav2lip,matmul", help="wav2lip, s3fd (slow on a CPU), matmul")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for both (0: ORT default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    add_context_flags(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onnx-overhead-"))
    rows = []
    for name in args.models.split(","):
        path = matmul_model(work / "matmul.onnx") if name == "matmul" else example_path(name, work)
        for provider in args.providers.split(","):
            rows.append(measure(name, path, provider, args))
            r = rows[-1]
            print(
                f"{name:<8} {provider:<4} b{args.batch}: bare p50 {r['bare_p50_ms_median']:9.3f} ms, "
                f"ours {r['ours_p50_ms_median']:9.3f} ms, overhead {100 * r['overhead_median']:+.2f}% "
                f"(rounds {100 * r['overhead_spread'][0]:+.2f}%..{100 * r['overhead_spread'][1]:+.2f}%)",
                flush=True,
            )
    env = machine()
    record = {**header("onnx_overhead", args), "machine": env, "target_overhead": TARGET, "results": rows}
    write_result(record, args.out or result_path("onnx_overhead", env["gpus"][0] if env["gpus"] else None))
    return 0 if all(r["within_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
