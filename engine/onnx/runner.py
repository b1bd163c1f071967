"""The measuring loop of one evaluation: a session per provider (on the device the server placed it), then at each
batch size the first run, the warm-up and the timed runs, the device-resident (IOBinding) figure, and the memory
before and after. A provider whose session cannot be made, or a batch that fails (out of memory included), is
recorded in its row and the rest still run; the outputs at the first batch size are kept for parity and accuracy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.core.errors import one_line
from engine.onnx.config import DEFAULT_RUNS, DEFAULT_WARMUP, EvalConfig
from engine.onnx.inputs import SYNTHETIC_INT_HIGH, inputs_for, np_dtype, user_inputs
from engine.onnx.latency import latency_stats
from engine.onnx.model import ModelInfo
from engine.onnx.plan import Plan
from engine.onnx.timing import spread_warning, timed_count, warmup_count
from engine.runtimes.ort_session import GPU_KEYS, PROVIDERS, OrtOptions, OrtSession, SessionError
from engine.system.gpu_memory import gpu_memory, nvml_source

Progress = Callable[[float, str], Any]


@dataclass(frozen=True)
class Placement:
    """Where an evaluation runs: the server's (or the CLI's) choice, never part of a submitted request."""

    device_id: int = 0  # the CUDA device the GPU providers use
    gpu_memory_fraction: float = 0.9  # ORT's arena limit on that device
    trt_cache_dir: str | None = None  # TensorRT's engine cache (default: the settings' cache dir)


def _session_options(provider: str, config: EvalConfig, placement: Placement) -> OrtOptions:
    """The session settings of one provider of an evaluation."""
    return OrtOptions(
        provider=provider,
        device_id=placement.device_id,
        cuda_tf32=config.cuda_tf32,
        trt_fp16=config.trt_fp16,
        trt_workspace_gb=config.trt_workspace_gb,
        trt_cache_dir=placement.trt_cache_dir,
        gpu_memory_fraction=placement.gpu_memory_fraction,
        intra_op_threads=config.intra_op_threads,
    )


def _timed_runs(fn: Callable[[], Any], n: int, tick: Callable[[int], None]) -> list[float]:
    times = []
    every = max(1, n // 10)
    for i in range(n):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
        if (i + 1) % every == 0:
            tick(i + 1)
    return times


def _iobinding_latency(session: OrtSession, feeds: dict[str, np.ndarray], config: EvalConfig, batch: int) -> dict:
    """Inputs already on the session's device, outputs left there: the device-resident figure (measured for GPU
    providers, with the GPU's run counts; on a CPU session it binds to the CPU, which is how the tests drive it)."""
    binding = session.bind(feeds)
    for _ in range(warmup_count(config.warmup, False, DEFAULT_WARMUP) + 1):
        binding.run()
    runs = timed_count(config.runs, False, DEFAULT_RUNS, 0.0)
    return latency_stats(_timed_runs(binding.run, runs, lambda _: None), batch)


def _memory_now(nvml: Any, device_id: int = 0) -> dict[str, int | None]:
    import psutil

    gpu = gpu_memory(nvml, device_id) if nvml is not None else None
    return {
        "rss": int(psutil.Process().memory_info().rss),
        "gpu": gpu["used"] if gpu else None,
        "process": gpu["process"] if gpu else None,
    }


def _memory_delta(before: dict[str, int | None], after: dict[str, int | None]) -> dict[str, int | None]:
    gpu_delta = after["gpu"] - before["gpu"] if after["gpu"] is not None and before["gpu"] is not None else None
    return {
        "host_rss_before_bytes": before["rss"],
        "host_rss_after_bytes": after["rss"],
        "host_rss_delta_bytes": after["rss"] - before["rss"],  # type: ignore[operator]
        "gpu_used_before_bytes": before["gpu"],
        "gpu_used_after_bytes": after["gpu"],
        "gpu_delta_bytes": gpu_delta,
        # ORT's GPU arena only grows, so the process's GPU memory after a batch is its peak so far
        # (the CUDA context included); NVML's device delta also counts other processes.
        "gpu_process_bytes": after["process"],
    }


def _is_oom(exc: BaseException) -> bool:
    """engine.core.device decides (the shared list of ORT/CUDA allocation texts); it imports torch, so it is only
    asked when the text mentions memory at all."""
    text = str(exc).lower()
    if "memory" not in text and "alloc" not in text:
        return False
    try:
        from engine.core.device import is_out_of_memory
    except Exception:
        return "out of memory" in text or "failed to allocate" in text
    return is_out_of_memory(exc)


def _empty_row(key: str, batch: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": key,
        "ran_on": meta["got"][0] if meta.get("got") else None,
        "batch": batch,
        "fell_back": bool(meta.get("fell_back")),
        "first_run_ms": None,
        "trt_build_s": None,
        "latency": None,
        "times_ms": None,
        "warmup": None,
        "spread_warning": None,
        "latency_iobinding": None,
        "iobinding": None,
        "samples_per_s": None,
        "achieved_gflops": None,
        "speedup_vs_cpu": None,
        "memory": None,
        "error": None,
        "out_of_memory": False,
    }


class Runner:
    """One evaluation's state: the plan, shared inputs, progress, and what was collected."""

    def __init__(
        self,
        model_path: Any,
        info: ModelInfo,
        config: EvalConfig,
        plan: Plan,
        progress: Progress | None,
        placement: Placement,
    ) -> None:
        self.model_path, self.info, self.config, self.plan = model_path, info, config, plan
        self.placement = placement
        self.progress = progress
        self.user, self.sources = user_inputs(info, config, plan)
        self.first_inputs = inputs_for(info, config, plan, plan.batches[0], self.user)
        self.total = len(config.providers) * len(plan.batches) + (1 if plan.reference_only else 0)
        self.done = 0
        self.sessions: dict[str, dict] = {}
        self.rows: list[dict] = []
        self.outputs: dict[str, dict[str, np.ndarray]] = {}  # provider -> outputs at the first batch
        self.warnings = list(plan.warnings)
        self.auto_counts: list[tuple[str, int, int]] = []  # CPU rows whose counts were chosen: label, warm-up, runs
        self.nvml = nvml_source() if any(p in GPU_KEYS for p in config.providers) else None

    def memory_now(self, key: str) -> dict[str, int | None]:
        return _memory_now(self.nvml if key in GPU_KEYS else None, self.placement.device_id)

    def tell(self, fraction_of_step: float, label: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, (self.done + fraction_of_step) / max(self.total, 1)), label)

    def run_provider(self, key: str, reference_only: bool) -> None:
        self.tell(0.0, f"{key}: creating the session")
        before = self.memory_now(key)
        try:
            session = OrtSession(self.model_path, _session_options(key, self.config, self.placement))
        except (SessionError, OSError) as exc:  # OSError: the TensorRT cache folder cannot be made
            # the private copy's path means nothing to the user (and names the server's folders)
            reason = one_line(str(exc).replace(os.fspath(self.model_path), "the model"))
            self.sessions[key] = {"provider": key, "requested": PROVIDERS[key], "error": reason}
            self.warnings.append(f"{key} ({PROVIDERS[key]}) could not be used: {reason}")
            self.done += 1 if reference_only else len(self.plan.batches)
            return
        meta = {**session.info, "reference_only": reference_only}
        self.sessions[key] = meta
        if meta["fell_back"]:
            self.warnings.append(
                f"WARNING: {meta['requested']} was requested but the session runs on {meta['got'][0]} "
                f"({meta['fallback_reason']}); the '{key}' rows measure {meta['got'][0]}, not {meta['requested']}, "
                "and are marked fell_back"
            )
        try:
            if reference_only:
                self.reference_run(session, key)
            else:
                self.run_batches(session, key, meta, before)
        finally:
            session.close()

    def reference_run(self, session: OrtSession, key: str) -> None:
        self.tell(0.0, "cpu: reference outputs for parity")
        try:
            self.outputs[key] = self.run_once(session, self.first_inputs, self.plan.batches[0])
        except Exception as exc:
            self.sessions[key]["error"] = f"{type(exc).__name__}: {one_line(exc)}"
            self.warnings.append(f"the CPU reference run failed, so there is no parity: {one_line(exc)}")
        self.done += 1

    def run_once(self, session: OrtSession, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        outputs = dict(zip(session.output_names, session.run(feeds), strict=True))
        self.plan.budget.observe(batch, outputs)
        return outputs

    def run_batches(self, session: OrtSession, key: str, meta: dict, before: dict) -> None:
        oom_at = None
        for batch in self.plan.batches:
            row = _empty_row(key, batch, meta)
            if oom_at is not None and batch >= oom_at:
                row["error"] = f"skipped: out of memory at batch {oom_at}"
            elif (too_large := self.plan.budget.refusal(batch)) is not None:
                row["error"] = f"skipped: {too_large}"
                self.warnings.append(f"{key} at batch {batch} was skipped: {too_large}")
            else:
                try:
                    self.measure(session, key, meta, row)
                except Exception as exc:
                    row["error"], row["out_of_memory"] = f"{type(exc).__name__}: {one_line(exc)}", _is_oom(exc)
                    if not row["out_of_memory"] and (made_up := self.synthetic_integer_inputs()):
                        row["error"] += (f" (the integer input(s) {', '.join(made_up)} were made up, 0 to "
                                         f"{SYNTHETIC_INT_HIGH - 1}: an index out of range wants real values in "
                                         "an inputs .npz)")  # fmt: skip
                    oom_at = batch if row["out_of_memory"] else oom_at
                    self.warnings.append(f"{key} at batch {batch} failed: {row['error'][:500]}")
            row["memory"] = _memory_delta(before, self.memory_now(key))
            self.rows.append(row)
            self.done += 1

    def synthetic_integer_inputs(self) -> list[str]:
        """The integer inputs the run made up (ids, indices, lengths): the likely cause of a run's failure."""
        return [s.name for s in self.info.inputs if s.name not in self.user and np_dtype(s).kind in "iu"]

    def measure(self, session: OrtSession, key: str, meta: dict, row: dict) -> None:
        batch, config = row["batch"], self.config
        first = batch == self.plan.batches[0]
        feeds = self.first_inputs if first else inputs_for(self.info, config, self.plan, batch, self.user)
        label = f"{key} batch {batch}"
        self.tell(0.0, f"{label}: first run")
        start = time.perf_counter_ns()
        outputs = self.run_once(session, feeds, batch)
        row["first_run_ms"] = (time.perf_counter_ns() - start) / 1e6
        if meta["got"][0] == PROVIDERS["trt"]:
            # TensorRT builds (or loads) an engine for a static-shape graph when the session is made, for a dynamic
            # one at its first run of each shape: the first batch counts both
            row["trt_build_s"] = row["first_run_ms"] / 1000.0 + (session.create_s if first else 0.0)
        if first:
            self.outputs[key] = outputs
        del outputs
        on_cpu = meta["got"][0] == PROVIDERS["cpu"]
        warmup = warmup_count(config.warmup, on_cpu, DEFAULT_WARMUP)
        self.tell(0.0, f"{label}: warm-up")
        timed_feeds = session.feedable(feeds)  # bfloat16 or float8 inputs made OrtValues once, not in every run
        start = time.perf_counter_ns()
        for _ in range(warmup):
            session.run(timed_feeds)
        per_run_s = (time.perf_counter_ns() - start) / 1e9 / warmup if warmup else row["first_run_ms"] / 1000.0
        runs = timed_count(config.runs, on_cpu, DEFAULT_RUNS, per_run_s)
        if on_cpu and (config.runs is None or config.warmup is None):  # a count chosen here (the note says how)
            self.auto_counts.append((f"{key} b{batch}", warmup, runs))

        def tick(i: int) -> None:
            self.tell(i / runs * 0.9, f"{label}: run {i}/{runs}")

        times = _timed_runs(lambda: session.run(timed_feeds), runs, tick)
        row["latency"] = latency_stats(times, batch)
        row["times_ms"] = [round(t, 4) for t in times]  # the distribution, for plots and re-analysis
        row["warmup"] = warmup
        row["spread_warning"] = spread_warning(row["latency"])
        if row["spread_warning"]:
            self.warnings.append(f"{key} at batch {batch}: {row['spread_warning']}")
        row["samples_per_s"] = row["latency"]["throughput_per_s"]
        row["iobinding"] = self.measure_iobinding(session, meta, feeds, row)

    def measure_iobinding(self, session: OrtSession, meta: dict, feeds: dict, row: dict) -> str:
        if meta["got"][0] == "CPUExecutionProvider":
            return "not applicable: the session runs on the CPU, where inputs and outputs already live"
        self.tell(0.9, f"{meta['provider']} batch {row['batch']}: device-resident runs")
        try:
            row["latency_iobinding"] = _iobinding_latency(session, feeds, self.config, row["batch"])
        except Exception as exc:
            self.warnings.append(f"{meta['provider']} IOBinding timing failed at batch {row['batch']}: {exc}")
            return f"failed: {exc}"
        return "measured"
