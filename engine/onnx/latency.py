"""One latency figure from a list of timed runs: mean, spread, percentiles and throughput, with the tail percentiles
left out where too few runs were timed to give them, and the note that says which and why. ONNX eval and sweeps
both report latency through here, so that their figures mean the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.onnx.config import EvalError

# The fewest timed runs for which a tail percentile is more than the slowest run or a blend of the slowest few: one
# run in 10, 20, 100 lies above p90, p95, p99. With fewer the figure is None (the report says why).
PERCENTILE_MIN_RUNS = {90: 10, 95: 20, 99: 100}


def latency_stats(times_ms: list[float], batch: int) -> dict[str, Any]:
    """Summary of timed runs; std is the sample std (n-1), percentiles interpolate linearly (numpy's), the tail ones
    None below PERCENTILE_MIN_RUNS (p99 of 50 runs was in effect the slowest one)."""
    times = np.asarray(times_ms, dtype=np.float64)
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0):
        raise EvalError("latency_stats needs at least one finite, non-negative time")
    mean = float(times.mean())
    p50, p90, p95, p99 = (
        float(v) if times.size >= PERCENTILE_MIN_RUNS.get(q, 1) else None
        for q, v in zip((50, 90, 95, 99), np.percentile(times, [50, 90, 95, 99]), strict=True)
    )
    return {
        "n": int(times.size),
        "mean_ms": mean,
        "std_ms": float(times.std(ddof=1)) if times.size > 1 else 0.0,
        "min_ms": float(times.min()),
        "max_ms": float(times.max()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
        "p99_ms": p99,
        "throughput_per_s": batch / (mean / 1000.0) if mean > 0 else None,
    }


def few_runs_note(rows: list[dict[str, Any]]) -> str | None:
    """Which tail percentiles are left out for too few timed runs, and how many runs give them."""
    runs = min((row["latency"]["n"] for row in rows if row.get("latency")), default=None)
    if runs is None:
        return None
    missing = [q for q, least in PERCENTILE_MIN_RUNS.items() if runs < least]
    if not missing:
        return None
    return (
        f"{', '.join(f'p{q}' for q in missing)} left out where "
        f"{'only 1 run was' if runs == 1 else f'{runs} runs were'} timed: one run in "
        f"{', '.join(str(PERCENTILE_MIN_RUNS[q]) for q in missing)} lies above them, so with fewer they are the "
        f"slowest run or a blend of the slowest few; --runs {PERCENTILE_MIN_RUNS[missing[-1]]} gives them"
    )
