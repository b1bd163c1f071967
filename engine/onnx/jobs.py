"""ONNX evaluations as queued jobs: checked at submit, stored by content, run by the JobRunner.

This is the one place that joins the upload checks (onnx_model), the evaluation (onnx_eval) and the
job store, so the web app and any other front end share one behaviour:
- submit() refuses bad models and settings at once (they never become failed jobs), stores the model
  and data files by content, and queues a job on the GPU's queue when a GPU provider is asked for
  and a CUDA device exists, else on the CPU queue;
- handle() is the JobRunner handler: it unpacks the stored model again in a private folder, runs
  the evaluation and returns the report (with the inspection) as the job's result.
Where a job runs (device id, memory share, TensorRT cache) is the server's choice, never a submitter's: it is not
part of EvalConfig at all (engine.onnx.evaluate.Placement).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.core.settings import Settings
from engine.jobs.store import CPU, Job, JobStore, StoreError
from engine.onnx.config import EvalConfig
from engine.onnx.evaluate import Placement, check_request, evaluate
from engine.onnx.model import Limits, inspect_model, prepare_model
from engine.onnx.uploads import model_source, prepared
from engine.runtimes.ort_session import GPU_KEYS

KIND = "onnx_eval"
FILE_FIELDS = ("model", "example", "inputs", "expected", "images")  # stored as blobs, not as options


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

    def submit(self, config: EvalConfig) -> Submission:
        """Check everything evaluate() would refuse, store the files, queue the job (raises InputError)."""
        config = config.checked()
        source = model_source(config.model, config.example, self.settings)
        with prepared(source, self.settings, config.symbol_values) as (_, info):
            warnings = [*info.warnings, *check_request(info, config, source.limits)]
        device = self._device_for(config.providers)
        if device == CPU and any(p in GPU_KEYS for p in config.providers):
            warnings.append(
                "this machine has no CUDA device: the cuda/trt rows will show ONNX Runtime's fallback to the CPU"
            )
        files = {
            "model": self.store.put_blob(source.path),
            "inputs": self.store.put_blob(config.inputs) if config.inputs else None,
            "expected": self.store.put_blob(config.expected) if config.expected else None,
            "images": [self.store.put_blob(p) for p in config.images or ()],
        }
        options = {k: v for k, v in config.to_text().items() if k not in FILE_FIELDS}
        record = {"model_name": source.name, "example": config.example, "options": options, "files": files}
        record["warnings"] = warnings
        job = self.store.submit(KIND, record, device, model_sha256=files["model"])
        self.wake()
        return Submission(job, warnings)

    def _device_for(self, providers: list[str]) -> str:
        return self.gpu_device if self.gpu_device and any(p in GPU_KEYS for p in providers) else CPU

    def _workdir(self) -> tempfile.TemporaryDirectory:
        self.settings.ensure_dirs()
        return tempfile.TemporaryDirectory(prefix="onnx-job-", dir=self.settings.cache_dir)

    # -- run ----------------------------------------------------------------------------------------------

    def handle(self, job: Job, progress: Callable[[float, str], None]) -> dict[str, Any]:
        """JobRunner handler: the full report, with the inspection and what was submitted."""
        record, store = job.settings, self.store
        files = record["files"]
        blobs = {k: store.blob_path(files[k]) if files.get(k) else None for k in ("inputs", "expected")}
        images = [store.blob_path(sha) for sha in files.get("images") or []] or None
        config = EvalConfig.build({**record["options"], "model": store.blob_path(files["model"]), **blobs,
                                   "images": images})  # fmt: skip
        placement = Placement(
            device_id=int(job.device.partition(":")[2] or 0) if job.device != CPU else 0,
            gpu_memory_fraction=self.settings.gpu_memory_fraction,
        )
        limits = Limits() if record.get("example") else Limits(max_file_bytes=self.settings.max_upload_bytes)
        progress(0.0, "unpacking and inspecting the model")
        with self._workdir() as work:
            path = prepare_model(config.model, work, limits)
            info = inspect_model(path, config.symbol_values or None, limits, sha256=job.model_sha256)
            report = evaluate(path, info, config, progress, limits=limits, placement=placement)
        report["config"].update(  # blob paths mean nothing to a reader: name the files by content
            model=files["model"], example=record.get("example"), inputs=files.get("inputs"),
            expected=files.get("expected"), images=files.get("images") or None,
        )  # fmt: skip
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
        "providers": str(job.settings.get("options", {}).get("providers", "cpu")).split(","),
        "error": job.error,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "warnings": job.settings.get("warnings", []),
    }


__all__ = ["KIND", "OnnxEvalJobs", "Submission", "job_summary"]
