"""How many runs to time, and whether the times they give can be trusted. Shared by ONNX eval and sweeps.

Run counts left empty are chosen by where the configuration runs. On a GPU a run is milliseconds, so the fixed
defaults (100 for ONNX eval, whose p99 needs them, or 20 for sweeps) cost little. On a CPU one run of a real network
can take a second: there one warm-up run is made, and the timed runs are as many as fit in about CPU_BUDGET_S
seconds, judged from that warm-up run, within [CPU_MIN_RUNS, the GPU default]. Counts the user gives are always
used as given.

A latency figure whose runs disagree too much (p95 above SPREAD_P95_OVER_P50 times p50, or a standard deviation
above the mean) describes the machine's other work more than the model: such a figure carries a warning.
"""

from __future__ import annotations

from typing import Any

CPU_BUDGET_S = 2.0  # timed seconds per configuration on the CPU when runs is left empty
CPU_MIN_RUNS = 10  # the fewest with a p90 (latency.py PERCENTILE_MIN_RUNS); p95 needs 20, p99 100
CPU_WARMUP = 1
SPREAD_P95_OVER_P50 = 3.0


def _cpu_runs(default: int) -> str:
    """How many runs the CPU times when the count is left empty and `default` is the GPU's count: the CPU's stops
    there too (the help and the note said "at least 10" only, and a 0.01 ms model ran 100 times, not the 200,000
    that fit in the time)."""
    return f"as many as fit in about {CPU_BUDGET_S:g} s, from {CPU_MIN_RUNS} to {default}"


def auto_help(default: int) -> str:
    """An empty --runs on the CPU, for the flag's help."""
    return f"on the CPU {_cpu_runs(default)}"


def warmup_count(requested: int | None, on_cpu: bool, default: int) -> int:
    """Untimed runs after the first: as given, else `default` (CPU_WARMUP on the CPU)."""
    if requested is not None:
        return requested
    return CPU_WARMUP if on_cpu else default


def timed_count(requested: int | None, on_cpu: bool, default: int, seconds_per_run: float) -> int:
    """Timed runs: as given, else `default`; on the CPU as many as fit in CPU_BUDGET_S at `seconds_per_run` (a
    warm-up run's time), from CPU_MIN_RUNS up to `default`."""
    if requested is not None:
        return requested
    if not on_cpu:
        return default
    fit = int(CPU_BUDGET_S / max(seconds_per_run, 1e-9))
    return max(min(CPU_MIN_RUNS, default), min(default, fit))


def auto_runs_note(
    counts: list[tuple[str, int, int]], default: int, runs_chosen: bool = True, warmup_chosen: bool = True
) -> str:
    """What the CPU's quick counts were, per configuration: (label, warm-up runs, timed runs). Only a count left
    empty is said to be chosen: with --runs 1 given, the note said the timed runs were as many as fit in 2 s."""
    each = ", ".join(f"{label} {warm} + {runs}" for label, warm, runs in counts)
    rules = [f"warm-up {CPU_WARMUP}"] * warmup_chosen + [f"timed: {_cpu_runs(default)}"] * runs_chosen
    which, flags = ("run counts left empty were", "runs and warmup for fixed counts") if len(rules) == 2 else (
        ("the timed count left empty was", "runs for a fixed count") if runs_chosen else
        ("the warm-up count left empty was", "warmup for a fixed count"))  # fmt: skip
    return f"{which} chosen for the CPU ({'; '.join(rules)}), warm-up + timed: {each}; set {flags}"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"


def spread_warning(latency: dict[str, Any] | None) -> str | None:
    """Why a latency figure is too scattered to trust, or None: p95 > 3 x p50 (the slowest run, where too few
    runs give no p95), or std > mean."""
    if not latency:
        return None
    tail, name = latency.get("p95_ms"), "p95"
    if tail is None:
        tail, name = latency.get("max_ms"), "the slowest run"
    p50, tail = latency.get("p50_ms") or 0.0, tail or 0.0
    mean, std = latency.get("mean_ms") or 0.0, latency.get("std_ms") or 0.0
    reasons = []
    if p50 > 0 and tail > SPREAD_P95_OVER_P50 * p50:
        reasons.append(f"{name} {_ms(tail)} is {tail / p50:.1f}x p50 {_ms(p50)}")
    if mean > 0 and std > mean:
        reasons.append(f"std {_ms(std)} exceeds the mean {_ms(mean)}")
    if not reasons:
        return None
    return (
        f"spread too wide to trust ({'; '.join(reasons)}): other work on the machine, clock changes or too few "
        "runs; rerun on an idle machine or with more runs"
    )


__all__ = [
    "CPU_BUDGET_S",
    "CPU_MIN_RUNS",
    "CPU_WARMUP",
    "SPREAD_P95_OVER_P50",
    "auto_help",
    "auto_runs_note",
    "spread_warning",
    "timed_count",
    "warmup_count",
]
