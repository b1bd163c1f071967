"""Evaluate an inspected ONNX model with ONNX Runtime: latency, batch sweep, provider parity, accuracy.

`inspect_model` has already accepted the model; this module runs it. Every number in the report says
which execution provider really produced it: onnxruntime-gpu silently falls back to the CPU when the
CUDA or TensorRT libraries do not load, so each session (engine.runtimes.ort_session) compares its
`get_providers()` with the request, and a fallback becomes a loud warning and a `fell_back` flag on its
rows (the rows still run, so the user sees what the fallback measured, labelled as such).

The steps, one module each: plan.py (the plan and the refusals before running), inputs.py (the arrays fed and the
expected outputs), runner.py (the sessions and the timed runs), compare.py (parity, accuracy, top-k), latency.py (a
latency figure) and report.py (the report).

Decisions worth knowing:
- Inputs are generated (or loaded) once per batch size from the seed, so every provider sees the same
  tensors; parity and accuracy use the first batch size only.
- The CPU session is the parity reference. When the user did not ask for CPU it runs once, untimed, at
  the first batch size, and its session is marked `reference_only` (no CPU rows, so no speed-up).
- Outputs are budgeted like inputs (Limits.max_output_bytes): each session keeps its outputs at the first batch
  size for parity beside one run's at the batch being measured, and that total is refused at submit when the
  shapes tell it is over; sizes only running can tell are checked after the first run (see plan.py's
  _OutputBudget). Parity and accuracy walk the outputs in chunks, never converting a whole output to float64.
- An out-of-memory row is recorded, and the larger batch sizes of that provider are skipped rather
  than retried smaller: the user asked for those batch sizes, a silently smaller one would mislead.
- The device-resident (IOBinding) figure is measured only when a GPU provider really runs; on the
  CPU it would be the same run, so it is None and marked not applicable.
- Non-finite results stay as float('inf') / float('nan') (json.dumps writes Infinity / NaN).
- Empty runs/warmup are chosen per session by where it really runs (engine/onnx/timing.py): the defaults on a GPU,
  a quick budget on the CPU (a fallback included), said in the report's notes; each row records its counts, and a
  latency too scattered to trust carries a spread warning (also in the report's warnings).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from engine.onnx.config import EvalConfig
from engine.onnx.inputs import load_expected, synthetic_dtype, user_inputs
from engine.onnx.model import Limits, ModelInfo
from engine.onnx.plan import checked_plan
from engine.onnx.report import evaluation_report
from engine.onnx.runner import Placement, Progress, Runner


def check_request(info: ModelInfo, config: EvalConfig, limits: Limits | None = None) -> list[str]:
    """Every refusal evaluate() would make before running, without creating a session; returns the
    plan's warnings. A queue calls this at submit time, so bad settings never become failed jobs."""
    limits = limits or Limits()
    config = config.checked()
    plan = checked_plan(info, config, limits)
    if config.expected:
        load_expected(config.expected, info.outputs, limits)
    user, _ = user_inputs(info, config, plan)
    for spec in info.inputs:
        if spec.name not in user:
            synthetic_dtype(spec)  # the inputs evaluate() would make up: refused now, not in the job
    return plan.warnings


def evaluate(
    model_path: str | os.PathLike,
    info: ModelInfo,
    config: EvalConfig,
    progress: Progress | None = None,
    *,
    limits: Limits | None = None,
    placement: Placement | None = None,
    partial: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Run the model on every asked provider and batch size; the full report, JSON-serialisable.

    Input problems raise EvalError / ModelError before any session is created; a provider that
    cannot create a session, or a batch that fails, is recorded in the report and the rest still run.
    `partial(report)` gets the report of the providers measured so far after each one (but the last), so that an
    evaluation stopped on the way (cancelled, out of time) keeps what it measured.
    """
    limits = limits or Limits()
    config = config.checked()
    plan = checked_plan(info, config, limits)
    expected = load_expected(config.expected, info.outputs, limits) if config.expected else None
    runner = Runner(model_path, info, config, plan, progress, placement or Placement())
    keys = plan.run_keys
    for done, key in enumerate(keys, 1):
        runner.run_provider(key, reference_only=key == "cpu" and plan.reference_only)
        if partial is not None and done < len(keys):
            partial(evaluation_report(runner, expected, keys[:done]))
    report = evaluation_report(runner, expected, keys)
    if progress is not None:
        progress(1.0, "done")
    return report
