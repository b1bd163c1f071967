"""Benchmark sweeps as queued jobs in the shared store: one GPU job at a time per device (ONNX evaluations
and sweeps share that queue, so they never time each other), results kept with the machine they ran on,
and reports from other machines imported for comparison.

A sweep's model is a built-in network (wav2lip, s3fd) or `onnx:<sha256>` of a model the ONNX eval tab
stored; the latter is unpacked and inspected again by the handler, exactly as an evaluation is.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from typing import Any

from engine.bench.config import BenchError, SweepRequest
from engine.bench.sweep import SweepConfig, run_sweep
from engine.bench.workloads import BUILTIN, BenchModel, builtin_model, onnx_model
from engine.core.settings import Settings
from engine.jobs.store import CPU, Job, JobStore, StoreError
from engine.onnx.model import Limits, inspect_model, prepare_model

KIND = "bench"
IMPORTED = "imported"  # the device key of imported reports: no worker claims it


class BenchJobs:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        gpu_device: str | None,
        wake: Callable[[], None] = lambda: None,
        sampler: Any = None,
    ) -> None:
        self.store, self.settings, self.gpu_device, self.wake, self.sampler = store, settings, gpu_device, wake, sampler

    def submit(self, sweep: SweepRequest | SweepConfig) -> Job:
        """Queue a sweep: a request as the CLI and the API take it, or the configurations themselves."""
        config = sweep.plan(self.gpu_device is not None) if isinstance(sweep, SweepRequest) else sweep
        config.validate()
        self._check_model(config.model)
        wants_gpu = any(p.device == "cuda" for p in config.points)
        if wants_gpu and not self.gpu_device:
            raise BenchError("this sweep has GPU configurations but this machine has no CUDA device")
        device = self.gpu_device if wants_gpu else CPU
        sha = config.model.removeprefix("onnx:") if config.model.startswith("onnx:") else None
        job = self.store.submit(KIND, {"sweep": config.to_dict()}, device, model_sha256=sha)  # type: ignore[arg-type]
        self.wake()
        return job

    def _check_model(self, name: str) -> None:
        if name.startswith("onnx:"):
            self.store.blob_path(name.removeprefix("onnx:"))  # raises StoreError when not stored
        elif name not in BUILTIN:
            raise BenchError(f"no model {name!r}: use {', '.join(BUILTIN)} or onnx:<sha256> of a stored model")

    def handle(self, job: Job, progress: Callable[[float, str], None]) -> dict[str, Any]:
        config = SweepConfig.from_dict(job.settings["sweep"])
        device = job.device if job.device != CPU else None
        if config.model.startswith("onnx:"):
            with tempfile.TemporaryDirectory(prefix="bench-", dir=self.settings.cache_dir) as work:
                model = self._stored_onnx(config.model, work)
                return self._run(config, model, device, progress)
        return self._run(config, builtin_model(config.model, self.settings.cache_dir), device, progress)

    def _stored_onnx(self, name: str, work: str) -> BenchModel:
        sha = name.removeprefix("onnx:")
        prepared = prepare_model(self.store.blob_path(sha), work, Limits())
        info = inspect_model(prepared, sha256=sha)
        return onnx_model(prepared, f"onnx:{sha[:12]}", info)

    def _run(self, config: SweepConfig, model: BenchModel, device: str | None, progress: Any) -> dict[str, Any]:
        return run_sweep(config, model, device, progress, self.sampler, self.settings.gpu_memory_fraction)

    def import_report(self, report: dict[str, Any]) -> Job:
        """A report saved on another machine (its JSON export), stored as a finished job for comparison."""
        report = _object(report)
        if not isinstance(report.get("results"), list) or "machine" not in report or "config" not in report:
            raise BenchError("not a benchmark report: it needs results, machine and config (export one as JSON)")
        sweep = SweepConfig.from_dict(report["config"])
        job = self.store.submit(KIND, {"sweep": sweep.to_dict(), "imported": True}, IMPORTED)
        self.store.finish(job.id, report)
        return self.store.get(job.id)

    def stored_onnx_models(self, limit: int = 200) -> list[tuple[str, str]]:
        """(label, "onnx:<sha256>") for the models the ONNX eval tab stored, newest first, each once."""
        seen: dict[str, str] = {}
        for job in self.store.history(limit, kind="onnx_eval"):
            if job.model_sha256 and job.model_sha256 not in seen:
                seen[job.model_sha256] = f"{job.settings.get('model_name', 'model')} ({job.model_sha256[:8]})"
        return [(label, f"onnx:{sha}") for sha, label in seen.items()]

    def result(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        if job.kind != KIND:
            raise StoreError(f"job {job_id} is not a benchmark sweep")
        return {**summary(job), "report": job.result}

    def status(self, job_id: str) -> dict[str, Any]:
        return summary(self.store.get(job_id))

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return [summary(j) for j in self.store.history(limit, kind=KIND)]


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BenchError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BenchError(f"expected a JSON object, got {type(value).__name__}")
    return value


def summary(job: Job) -> dict[str, Any]:
    sweep = job.settings.get("sweep", {})
    machine = (job.result or {}).get("machine") or {}
    gpu = machine.get("gpu") or {}
    return {
        "id": job.id,
        "status": job.status,
        "position": job.position,
        "progress": job.progress,
        "progress_label": job.progress_label,
        "device": job.device,
        "model": sweep.get("model"),
        "preset": sweep.get("preset"),
        "points": len(sweep.get("points", [])),
        "machine": gpu.get("name") or (f"CPU, {machine.get('cpu_count')} cores" if machine else None),
        "imported": bool(job.settings.get("imported")),
        "error": job.error,
        "created": job.created,
        "finished": job.finished,
    }


__all__ = ["IMPORTED", "KIND", "BenchJobs", "summary"]
