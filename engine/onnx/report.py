"""An evaluation's report, from what its runner collected: each row's speed-up against the CPU and achieved GFLOP/s,
parity against the CPU reference, accuracy and top-k, the model and the environment, the warnings, and the notes
(an evaluation stopped on the way, outputs accuracy did not check, run counts chosen for the CPU, percentiles too
few runs cannot give), all as plain JSON-ready values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from engine.onnx.compare import accuracy, parity, topk
from engine.onnx.config import DEFAULT_RUNS, EvalError
from engine.onnx.latency import few_runs_note
from engine.onnx.model import ModelInfo, TensorSpec
from engine.onnx.plan import Plan, inspected_batch, scored_output
from engine.onnx.runner import Runner
from engine.onnx.timing import auto_runs_note
from engine.runtimes.ort_session import PROVIDERS

PARTIAL_NOTE = "the evaluation stopped before its end"


def _finish_rows(rows: list[dict], info: ModelInfo, plan: Plan) -> None:
    """Speed-up against the CPU row of the same batch (of the p50s), and achieved GFLOP/s where the FLOPs apply: from
    the mean latency, as samples/s is, so one row's two rates agree (GFLOP/s from the p50 disagreed with samples/s
    wherever a slow run moved the mean) and mean the same as the benchmark's TFLOP/s, FLOPs times throughput."""
    cpu = {r["batch"]: r for r in rows if r["provider"] == "cpu" and r["latency"]}
    scale_base = inspected_batch(info, plan) if info.flops else None
    # FLOPs grow with the batch only where it is each input's first dimension alone (x[N,3] @ z[3,N] grows as N²)
    linear = all(
        all(axis == 0 for axis, dim in enumerate(spec.shape) if dim in plan.batch_symbols) for spec in info.inputs
    )
    for row in rows:
        if not row["latency"]:
            continue
        p50 = row["latency"]["p50_ms"]
        ref = cpu.get(row["batch"])
        cpu_vs_cpu = row["provider"] != "cpu" and row["ran_on"] == PROVIDERS["cpu"]  # a fallback: no speed-up
        if ref is not None and p50 > 0 and not cpu_vs_cpu:
            row["speedup_vs_cpu"] = ref["latency"]["p50_ms"] / p50
        mean = row["latency"]["mean_ms"]
        if scale_base is not None and mean > 0 and (linear or row["batch"] == scale_base or not plan.batch_symbols):
            scale = row["batch"] / scale_base if plan.batch_symbols else 1.0
            row["achieved_gflops"] = info.flops * scale / (mean / 1000.0) / 1e9  # type: ignore[operator]


def _accuracy_report(
    runner: Runner, expected: dict[str, np.ndarray] | None, labels: list[int] | None, scored: str | None
) -> dict:
    report: dict[str, Any] = {}
    providers = [k for k in runner.outputs if not runner.sessions[k].get("reference_only")]
    if expected is not None:
        report["expected"] = {k: accuracy(runner.outputs[k], expected) for k in providers}
    if labels is not None:
        report["topk"] = {}
        output = scored_output(runner.info, scored).name
        for key in providers:
            try:
                report["topk"][key] = {**topk(runner.outputs[key][output], labels), "output": output}
            except EvalError as exc:
                report["topk"][key] = {"error": str(exc), "output": output}
    return report


def _misdeclared_outputs(outputs: list[TensorSpec], values: dict[str, int], got: dict[str, Any]) -> list[str]:
    """Outputs whose shape at the first batch size is not the one the model declares (which misleads the output
    budget, and anyone who reads the model's signature)."""
    notes = []
    for spec in outputs:
        array = got.get(spec.name)
        declared = [values.get(d) if isinstance(d, str) else d for d in spec.shape]
        if not spec.is_tensor or not isinstance(array, np.ndarray) or not declared or None in declared:
            continue  # a rank or dimension the model leaves open, or one named only by its outputs
        if list(array.shape) != declared:
            notes.append(f"output {spec.name!r} declares {spec.shape} ({declared} here) but is {list(array.shape)}")
    return notes


def _no_outputs(key: str, runner: Runner) -> str:
    session = runner.sessions.get(key, {})
    row = next((r for r in runner.rows if r["provider"] == key), None)
    why = session.get("error") or (row or {}).get("error") or "it did not run"
    return f"no outputs at the first batch size: {why}"


def _environment() -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "onnxruntime": ort.__version__,
        "available_providers": list(ort.get_available_providers()),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }


def _model_summary(info: ModelInfo) -> dict[str, Any]:
    return {
        "sha256": info.sha256,
        "inputs": [asdict(s) for s in info.inputs],
        "outputs": [asdict(s) for s in info.outputs],
        "flops": info.flops,
        "parameters": info.parameters,
        "symbols": dict(info.symbols),
    }


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays, tuples and paths become plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def evaluation_report(runner: Runner, expected: dict[str, np.ndarray] | None, ran: Sequence[str]) -> dict[str, Any]:
    """The report of the providers in `ran` (all of the plan's: the whole evaluation; fewer: where it stopped,
    said in its notes)."""
    info, config, plan = runner.info, runner.config, runner.plan
    _finish_rows(runner.rows, info, plan)
    warnings = list(runner.warnings)
    reference = runner.outputs.get("cpu")
    parity_report: dict[str, Any] = {}
    stopped = len(ran) < len(plan.run_keys)
    if reference is None:
        warnings.append("no CPU reference outputs: parity was not computed")
    else:
        warnings += _misdeclared_outputs(info.outputs, plan.values, reference)
        for key in (k for k in config.providers if k in ran):
            out = runner.outputs.get(key)
            parity_report[key] = parity(reference, out) if out is not None else {"error": _no_outputs(key, runner)}
    report = {
        "model": _model_summary(info),
        "config": config.to_text(),
        "environment": _environment(),
        "symbols": plan.values,
        "batch_symbols": plan.batch_symbols,
        "input_source": {
            **{s.name: runner.sources.get(s.name, "synthetic") for s in info.inputs},
            **{s.name: "npz" for s in info.overridable_inputs if s.name in runner.sources},  # the rest: the model's
        },
        "sessions": runner.sessions,
        "results": runner.rows,
        "parity": parity_report,
        "accuracy": _accuracy_report(runner, expected, config.labels, config.labels_output),
        "warnings": warnings,
        "notes": [
            *([f"{PARTIAL_NOTE}: {', '.join(ran)} of {', '.join(plan.run_keys)} measured"] if stopped else []),
            *plan.notes,
            *([unchecked] if (unchecked := _unchecked_note(info.outputs, expected)) else []),
            *(
                [auto_runs_note(runner.auto_counts, DEFAULT_RUNS, config.runs is None, config.warmup is None)]
                if runner.auto_counts
                else []
            ),
            *([few] if (few := few_runs_note(runner.rows)) else []),
        ],
    }
    return _plain(report)


def _unchecked_note(outputs: list[TensorSpec], expected: dict[str, np.ndarray] | None) -> str | None:
    """The outputs the expected-outputs .npz leaves out, which accuracy does not check (a string or sequence output,
    or one the user has no reference for): said, so that accuracy on some outputs does not read as on all."""
    if expected is None:
        return None
    left_out = [spec for spec in outputs if spec.name not in expected]
    if not left_out:
        return None
    named = ", ".join(repr(s.name) + ("" if s.is_numeric else f" ({s.type_name})") for s in left_out)
    checked = ", ".join(map(repr, expected))
    return (
        f"accuracy checks the expected output(s) {checked}; not checked, as the expected-outputs .npz leaves them "
        f"out: {named}"
    )
