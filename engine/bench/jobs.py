"""Benchmark sweeps as timed jobs: run in a worker process with the device to themselves (nothing else runs there
while a sweep measures), results kept with the machine they ran on, and reports from other machines imported
for comparison.

A sweep's model is a built-in network (wav2lip, s3fd, ...) or `onnx:<sha256>` of a model its owner's ONNX
evaluations stored; the latter is unpacked and inspected again by the handler, exactly as an evaluation is.
"""

from __future__ import annotations

import json
import math
import tempfile
from typing import Any

from engine.bench.config import BenchError, SweepRequest
from engine.bench.sweep import MAX_POINTS, SweepConfig, run_sweep
from engine.bench.workloads import BUILTIN, builtin_model, onnx_model
from engine.core.errors import InputError
from engine.core.json_text import parse_json
from engine.jobs.kinds import JobKind
from engine.jobs.store import CPU, Job, StoreError, checked_sha256
from engine.jobs.worker import Progress, WorkerContext
from engine.onnx.inspection import inspect_model
from engine.onnx.model import Limits
from engine.onnx.prepare import prepare_model

KIND = "bench"
IMPORTED = "imported"  # the device key of imported reports: no worker claims it


class BenchJobs(JobKind):
    kind = KIND

    def submit(self, sweep: SweepRequest | SweepConfig, owner: str) -> Job:
        """Queue a sweep (a timed job: it has its device to itself): a request as the CLI and the API take it, or
        the configurations themselves."""
        self.check_quota(owner)
        has_gpu = bool(self.broker.gpus())
        config = sweep.plan(has_gpu) if isinstance(sweep, SweepRequest) else sweep
        config.validate()
        self._check_model(config.model, owner)
        wants_gpu = any(p.device == "cuda" for p in config.points)
        if wants_gpu and not has_gpu:
            raise BenchError("this sweep has GPU configurations but this machine has no CUDA device")
        sha = config.model.removeprefix("onnx:").lower() if config.model.startswith("onnx:") else None
        with self.broker.placing:
            device = self.broker.place(wants_gpu)
            return self.broker.submit(KIND, {"sweep": config.to_dict()}, device, owner, model_sha256=sha,
                                      timed=True, limits=self.limits())  # fmt: skip

    def _check_model(self, name: str, owner: str | None) -> None:
        if name.startswith("onnx:"):
            sha = checked_sha256(name.removeprefix("onnx:"))
            # ownership first, and one message either way: another user's upload and no upload at all must read
            # alike, or the answer would say whether anyone stored a file one holds
            if owner is not None and not self.store.owns_model(owner, sha):
                raise StoreError(f"no stored file with sha256 {sha}")
            self.store.blob_path(sha)  # "no stored file": the owner's upload has gone (the store's budget)
        elif name not in BUILTIN:
            raise BenchError(f"no model {name!r}: use {', '.join(BUILTIN)} or onnx:<sha256> of a stored model")

    def import_report(self, report: dict[str, Any] | str, owner: str) -> Job:
        """A report saved on another machine (its JSON export), checked in full and only then stored as a finished
        job for comparison: a bad report is refused with what is wrong, never stored to break the history."""
        if isinstance(report, str) and len(report) > MAX_REPORT_BYTES:
            raise BenchError(f"the report is {len(report) / 2**20:.1f} MiB; at most {MAX_REPORT_BYTES // 2**20} MiB")
        size = len(report) if isinstance(report, str) else len(json.dumps(report, default=str))
        report = restore_non_finite(_object(report))
        problems = report_problems(report)
        if problems:
            problems = [wrapped] if (wrapped := _job_answer(report)) else problems
            raise BenchError("not a benchmark report as avatarbench exports it: " + "; ".join(problems[:8]))
        sweep = SweepConfig.from_dict(report["config"])
        sweep.validate()
        # Imports are done on arrival, so no queue limit holds them: each owner keeps their newest, and when
        # everyone's together fill the shared budget a new one is refused (evicting the oldest of anyone's let
        # one person's imports delete another's).
        others = self.store.result_bytes(IMPORTED, but=owner)
        if others + size > IMPORTS_TOTAL_BYTES:
            raise BenchError(
                f"the imported reports of everyone fill the {IMPORTS_TOTAL_BYTES // 2**20} MiB kept for them: try "
                "later, or compare it on the machine that measured it"
            )
        job = self.store.submit(KIND, {"sweep": sweep.to_dict(), "imported": True}, IMPORTED, owner=owner)
        self.store.finish(job.id, report)
        self.store.keep_newest(IMPORTED, owner, IMPORTS_PER_OWNER, IMPORT_BYTES_PER_OWNER)
        return self.store.get(job.id)

    def stored_onnx_models(self, owner: str | None, limit: int = 200) -> list[tuple[str, str]]:
        """(label, "onnx:<sha256>") for the models this owner's ONNX evaluations stored (and the store still has),
        newest first, each once."""
        seen: dict[str, str] = {}
        for job in self.store.history(limit, kind="onnx_eval", owner=owner):
            if job.model_sha256 and job.model_sha256 not in seen and self.store.has_blob(job.model_sha256):
                seen[job.model_sha256] = f"{job.settings.get('model_name', 'model')} ({job.model_sha256[:8]})"
        return [(label, f"onnx:{sha}") for sha, label in seen.items()]

    def summary(self, job: Job) -> dict[str, Any]:
        sweep = job.settings.get("sweep", {})
        machine = (job.result or {}).get("machine") or {}
        gpu = machine.get("gpu") or {}
        return {
            **super().summary(job),
            "model": sweep.get("model"),
            "preset": sweep.get("preset"),
            "points": len(sweep.get("points", [])),
            "measured": len((job.result or {}).get("results") or []),  # fewer than points: it stopped on the way
            "machine": gpu.get("name") or (f"CPU, {machine.get('cpu_count')} cores" if machine else None),
            "imported": bool(job.settings.get("imported")),
        }


def handle(job: Job, progress: Progress, context: WorkerContext) -> dict[str, Any]:
    """The worker's handler: the sweep on this worker's device, its rows stored as they are measured (a sweep
    cancelled or out of time ends with the configurations it finished)."""
    config = SweepConfig.from_dict(job.settings["sweep"])
    device = job.device if job.device != CPU else None
    settings = context.settings

    def partial(report: dict[str, Any]) -> None:
        context.store.save_partial(job.id, report)

    if not config.model.startswith("onnx:"):
        model = builtin_model(config.model, settings.cache_dir)
        return run_sweep(config, model, device, progress, settings.gpu_memory_fraction, partial, settings.job_memory_gb)
    sha = config.model.removeprefix("onnx:")
    settings.ensure_dirs()
    with tempfile.TemporaryDirectory(prefix="bench-", dir=settings.cache_dir) as work:
        path = prepare_model(context.store.blob_path(sha), work, Limits())
        model = onnx_model(path, f"onnx:{sha[:12]}", inspect_model(path, sha256=sha))
        return run_sweep(config, model, device, progress, settings.gpu_memory_fraction, partial, settings.job_memory_gb)


MAX_REPORT_BYTES = 8 * 2**20
IMPORTS_PER_OWNER = 20  # imported reports one owner keeps; an older one goes when a new one comes
IMPORT_BYTES_PER_OWNER = 32 * 2**20  # and their size: the oldest go first, the newest always stays
IMPORTS_TOTAL_BYTES = 256 * 2**20  # imported reports kept from everyone together: past it, new imports are refused
_ROW_TEXT = ("label", "status", "runtime", "precision", "device")
_ROW_NUMBERS = ("batch", "samples_per_s", "speedup", "peak_allocated_bytes", "device_used_bytes", "achieved_tflops",
                "percent_of_peak", "energy_j_per_sample", "flops_per_sample", "load_s", "first_run_s")  # fmt: skip
_ROW_TEXT_OR_NULL = ("error", "ran_on")
_LATENCY_KEYS = ("mean_ms", "std_ms", "p50_ms")  # what the tables read of a row's latency (p95 too: None under 20 runs)
# strict JSON's names for the non-finite error metrics of a row (engine/core/commands.py, strict_json)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_ROW_POSITIVE = ("batch", "samples_per_s", "speedup")  # what the cost table and the charts divide by or log


def _number_or_none(value: Any) -> bool:
    """None, or a number a float holds finite (an int of 400 digits is refused, not an OverflowError)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 2**63 if isinstance(value, int) else math.isfinite(value)


def report_problems(report: dict[str, Any]) -> list[str]:
    """What keeps a report from being shown and compared like one of ours (everything the tab and the charts read)."""
    problems = []
    for key, kind in (("machine", dict), ("model", dict), ("config", dict), ("results", list)):
        if not isinstance(report.get(key), kind):
            problems.append(f"{key} must be a JSON {'object' if kind is dict else 'list'}, got {report.get(key)!r:.40}")
    if problems:
        return problems
    gpu = report["machine"].get("gpu")
    if gpu is not None and not (isinstance(gpu, dict) and isinstance(gpu.get("name", ""), str)):
        problems.append("machine.gpu must be an object with a name, or null")
    cores = report["machine"].get("cpu_count")
    if cores is not None and not (isinstance(cores, int) and not isinstance(cores, bool) and 0 < cores < 2**20):
        problems.append(f"machine.cpu_count must be a whole number of cores, or null; got {cores!r:.40}")
    if not isinstance(report["model"].get("name"), str):
        problems.append("model.name must be text")
    if not _number_or_none(report["model"].get("flops_per_sample")):
        problems.append("model.flops_per_sample must be a finite number or null")
    if not isinstance(report.get("notes", []), list) or not all(isinstance(n, str) for n in report.get("notes", [])):
        problems.append("notes must be a list of text")
    for i, row in enumerate(report["results"][: MAX_POINTS + 1]):
        where = f"results[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{where} must be an object")
            continue
        problems += [f"{where}.{k} must be text" for k in _ROW_TEXT if not isinstance(row.get(k), str)]
        problems += [f"{where}.{k} must be a finite number or null" for k in _ROW_NUMBERS
                     if not _number_or_none(row.get(k))]  # fmt: skip
        problems += [f"{where}.{k} must be above 0 (or null), got {row[k]!r:.40}" for k in _ROW_POSITIVE
                     if _number_or_none(row.get(k)) and row.get(k) is not None and row[k] <= 0]  # fmt: skip
        problems += [f"{where}.{k} must be text or null" for k in _ROW_TEXT_OR_NULL
                     if not isinstance(row.get(k), str | None)]  # fmt: skip
        latency = row.get("latency")
        if latency is not None and not (
            isinstance(latency, dict)
            and all(map(_number_or_none, latency.values()))
            and all(latency.get(k) is not None for k in _LATENCY_KEYS)
        ):
            problems.append(f"{where}.latency must be an object of numbers with {', '.join(_LATENCY_KEYS)}, or null")
        error = row.get("error_vs_fp32")
        if error is not None and not (isinstance(error, dict) and all(_metric(v) for v in error.values())):
            problems.append(f"{where}.error_vs_fp32 must be an object of numbers, or null")
        if not all(isinstance(w, str) for w in _list(row.get("warnings", []))):
            problems.append(f"{where}.warnings must be a list of text")
        if not all(_telemetry_sample(t) for t in _list(row.get("telemetry", []))):
            problems.append(f"{where}.telemetry must be a list of samples (lists of numbers or nulls)")
    if not report["results"]:
        problems.append("results is empty: a report has a row per configuration")
    if len(report["results"]) > MAX_POINTS:
        problems.append(f"{len(report['results'])} results; at most {MAX_POINTS}")
    return problems


def _list(value: Any) -> list:
    """A list as it is; anything else as a list of one thing no check accepts."""
    return value if isinstance(value, list) else [object()]


def _metric(value: Any) -> bool:
    """An error metric: a number (NaN and infinities included, as strict JSON's names restore them) or null."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _telemetry_sample(sample: Any) -> bool:
    """A telemetry sample as the sweep records it: time, then readings (numbers or null)."""
    return isinstance(sample, list) and len(sample) >= 5 and all(map(_number_or_none, sample))


def restore_non_finite(report: dict[str, Any]) -> dict[str, Any]:
    """A strict-JSON export's "NaN" and "Infinity" error metrics back to numbers (an fp16 row that overflowed has
    an infinite relative error), so a report we wrote imports, and shows, as it was measured."""
    for row in report.get("results") or []:
        error = row.get("error_vs_fp32") if isinstance(row, dict) else None
        if isinstance(error, dict):
            for key, value in error.items():
                if isinstance(value, str) and value in _NON_FINITE:
                    error[key] = _NON_FINITE[value]
    return report


def _job_answer(value: dict[str, Any]) -> str | None:
    """What to import instead, where `value` is a job route's whole answer (/bench_result's: the report is one of
    its fields) rather than a report: its four missing fields alone did not say so."""
    kind = value.get("kind")
    if not isinstance(value.get("report"), dict) or not isinstance(kind, str):
        return None
    if kind == KIND:
        return "this is a sweep's status and result (what /bench_result answers): import its 'report' field"
    return f"this is the result of a job of kind {kind[:40]!r}, not a sweep's: import a GPU benchmark sweep's report"


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = parse_json(value, "the report")
        except InputError as exc:
            raise BenchError(str(exc)) from None
    if not isinstance(value, dict):
        raise BenchError(f"expected a JSON object, got {type(value).__name__}")
    return value


__all__ = ["IMPORTED", "KIND", "BenchJobs", "handle"]
