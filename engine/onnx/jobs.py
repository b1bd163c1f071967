"""ONNX evaluations as queued jobs: checked at submit, stored by content, run by the JobRunner.

This is the one place that joins the upload checks (onnx_model), the evaluation (onnx_eval) and the
job store, so the web app and any other front end share one behaviour:
- submit() refuses bad models and settings at once (they never become failed jobs), stores the model
  and data files by content, and queues a job on the GPU's queue when a GPU provider is asked for
  and a CUDA device exists, else on the CPU queue;
- handle() is the JobRunner handler: it unpacks the stored model again in a private folder, runs
  the evaluation and returns the report (with the inspection) as the job's result.
Settings the server owns (paths, memory fraction, device id) cannot be set by a submitter.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.core.settings import Settings
from engine.jobs.store import CPU, Job, JobStore, StoreError
from engine.onnx.evaluate import GPU_KEYS, EvalConfig, EvalError, check_request, evaluate
from engine.onnx.examples import EXAMPLES, example_path
from engine.onnx.model import Limits, file_sha256, inspect_model, prepare_model

KIND = "onnx_eval"
SERVER_OWNED = ("inputs_npz", "expected_npz", "images", "trt_cache_dir", "gpu_memory_fraction", "device_id")
USER_OPTIONS = tuple(f.name for f in fields(EvalConfig) if f.name not in SERVER_OWNED)


@dataclass
class Submission:
    job: Job
    warnings: list[str]


class OnnxEvalJobs:
    """Submit, run and read ONNX evaluation jobs. `gpu_device` is "cuda:N" or None on a CPU-only machine."""

    def __init__(
        self, store: JobStore, settings: Settings, gpu_device: str | None, wake: Callable[[], None] = lambda: None
    ) -> None:
        self.store, self.settings, self.gpu_device, self.wake = store, settings, gpu_device, wake

    # -- submit -------------------------------------------------------------------------------------------

    def submit(
        self,
        options: dict[str, Any],
        model: str | os.PathLike | None = None,
        example: str | None = None,
        inputs_npz: str | os.PathLike | None = None,
        expected_npz: str | os.PathLike | None = None,
        images: list[str | os.PathLike] | None = None,
    ) -> Submission:
        """Check everything evaluate() would refuse, store the files, queue the job (raises ValueError)."""
        if (model is None) == (example is None):
            raise EvalError("give either a model file (.onnx or .zip) or the name of a built-in example")
        options = _user_options(options)
        model_path, limits, name = self._model_source(model, example)
        images = list(images or [])
        config = self._config(options, inputs_npz, expected_npz, images, device_id=0)
        with self._workdir() as work:
            prepared = prepare_model(model_path, work, limits)
            info = inspect_model(prepared, options.get("symbols") or None, limits, sha256=file_sha256(model_path))
            warnings = [*info.warnings, *check_request(info, config, limits)]
        device = self._device_for(config.providers)
        if device == CPU and any(p in GPU_KEYS for p in config.providers):
            warnings.append(
                "this machine has no CUDA device: the cuda/trt rows will show ONNX Runtime's fallback to the CPU"
            )
        files = {
            "model": self.store.put_blob(model_path),
            "inputs_npz": self.store.put_blob(inputs_npz) if inputs_npz else None,
            "expected_npz": self.store.put_blob(expected_npz) if expected_npz else None,
            "images": [self.store.put_blob(p) for p in images],
        }
        record = {"model_name": name, "example": example, "options": options, "files": files, "warnings": warnings}
        job = self.store.submit(KIND, record, device, model_sha256=files["model"])
        self.wake()
        return Submission(job, warnings)

    def _model_source(self, model: str | os.PathLike | None, example: str | None) -> tuple[Path, Limits, str]:
        if example is not None:
            if example not in EXAMPLES:
                raise EvalError(f"no built-in example {example!r}; available: {', '.join(EXAMPLES)}")
            return example_path(example, self.settings.cache_dir), Limits(), f"example: {example}"
        path = Path(model)  # type: ignore[arg-type]
        return path, Limits(max_file_bytes=self.settings.max_upload_bytes), path.name

    def _device_for(self, providers: list[str]) -> str:
        return self.gpu_device if self.gpu_device and any(p in GPU_KEYS for p in providers) else CPU

    def _config(
        self,
        options: dict[str, Any],
        inputs_npz: str | os.PathLike | None,
        expected_npz: str | os.PathLike | None,
        images: list[str | os.PathLike],
        device_id: int,
    ) -> EvalConfig:
        config = EvalConfig(
            **options,
            inputs_npz=os.fspath(inputs_npz) if inputs_npz else None,
            expected_npz=os.fspath(expected_npz) if expected_npz else None,
            images=[os.fspath(p) for p in images] or None,
            gpu_memory_fraction=self.settings.gpu_memory_fraction,
            device_id=device_id,
        )
        config.validate()
        return config

    def _workdir(self) -> tempfile.TemporaryDirectory:
        self.settings.ensure_dirs()
        return tempfile.TemporaryDirectory(prefix="onnx-job-", dir=self.settings.cache_dir)

    # -- run ----------------------------------------------------------------------------------------------

    def handle(self, job: Job, progress: Callable[[float, str], None]) -> dict[str, Any]:
        """JobRunner handler: the full report, with the inspection and what was submitted."""
        record, store = job.settings, self.store
        files = record["files"]
        blob = store.blob_path(files["model"])
        device_id = int(job.device.partition(":")[2] or 0) if job.device != CPU else 0
        config = self._config(
            dict(record["options"]),
            store.blob_path(files["inputs_npz"]) if files.get("inputs_npz") else None,
            store.blob_path(files["expected_npz"]) if files.get("expected_npz") else None,
            [store.blob_path(sha) for sha in files.get("images") or []],
            device_id,
        )
        limits = Limits() if record.get("example") else Limits(max_file_bytes=self.settings.max_upload_bytes)
        progress(0.0, "unpacking and inspecting the model")
        with self._workdir() as work:
            prepared = prepare_model(blob, work, limits)
            info = inspect_model(prepared, record["options"].get("symbols") or None, limits, sha256=job.model_sha256)
            report = evaluate(prepared, info, config, progress, limits=limits)
        for key in ("inputs_npz", "expected_npz", "images"):  # blob paths mean nothing to a reader
            report["config"][key] = files.get(key) or None
        report["config"]["trt_cache_dir"] = None
        # No "path" key: gradio_client takes any dict with one for a file to download.
        report["inspection"] = {
            **{k: v for k, v in info.to_dict().items() if k != "path"},
            "name": record["model_name"],
        }
        report["job"] = {"id": job.id, "model_name": record["model_name"], "device": job.device}
        return report

    # -- read ---------------------------------------------------------------------------------------------

    def status(self, job_id: str) -> dict[str, Any]:
        return job_summary(self.store.get(job_id))

    def queue(self) -> list[dict[str, Any]]:
        return [job_summary(j) for j in self.store.queue() if j.kind == KIND]

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return [job_summary(j) for j in self.store.history(limit, kind=KIND)]

    def result(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        if job.kind != KIND:
            raise StoreError(f"job {job_id} is not an ONNX evaluation")
        return {**job_summary(job), "report": job.result}


def _user_options(options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise EvalError(f"settings must be a JSON object, not {type(options).__name__}")
    owned = sorted(set(options) & set(SERVER_OWNED))
    if owned:
        raise EvalError(f"{', '.join(owned)} are set by the server, not by a submission")
    unknown = sorted(set(options) - set(USER_OPTIONS))
    if unknown:
        raise EvalError(f"unknown setting(s) {', '.join(unknown)}; accepted: {', '.join(USER_OPTIONS)}")
    return dict(options)


def job_summary(job: Job) -> dict[str, Any]:
    """What a status poll needs; the report itself only comes with result()."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "position": job.position,
        "progress": job.progress,
        "progress_label": job.progress_label,
        "device": job.device,
        "model_name": job.settings.get("model_name"),
        "model_sha256": job.model_sha256,
        "providers": job.settings.get("options", {}).get("providers", ["cpu"]),
        "error": job.error,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "warnings": job.settings.get("warnings", []),
    }


__all__ = ["KIND", "SERVER_OWNED", "USER_OPTIONS", "OnnxEvalJobs", "Submission", "job_summary"]
