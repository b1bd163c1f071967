"""ONNX evaluations as queued jobs: checked at submit, stored by content, run in a worker process.

This is the one place that joins the upload checks (onnx.prepare, onnx.inspection), the evaluation (onnx.evaluate)
and the broker, so the web app and any other front end share one behaviour:
- submit() refuses bad models and settings at once (they never become failed jobs), stores the model
  and data files by content, and queues a timed job (it has its device to itself while it measures) on the
  least-loaded GPU when a GPU provider is asked for and a GPU exists, else on the CPU;
- handle() runs in the worker: it unpacks the stored model again in a private folder, runs the evaluation on
  the worker's device and returns the report (with the inspection) as the job's result.
Where a job runs (device id, memory share, TensorRT cache) is the server's choice, never a submitter's: it is not
part of EvalConfig at all (engine.onnx.runner.Placement).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from engine.jobs.kinds import JobKind
from engine.jobs.store import CPU, Job
from engine.jobs.worker import Progress, WorkerContext
from engine.onnx.config import EvalConfig
from engine.onnx.evaluate import check_request, evaluate
from engine.onnx.inspection import inspect_model
from engine.onnx.model import Limits
from engine.onnx.prepare import prepare_model
from engine.onnx.runner import Placement
from engine.onnx.uploads import model_source, prepared
from engine.runtimes.ort_session import GPU_KEYS

KIND = "onnx_eval"
FILE_FIELDS = ("model", "example", "inputs", "expected", "images")  # stored as blobs, not as options


@dataclass
class Submission:
    job: Job
    warnings: list[str]


class OnnxEvalJobs(JobKind):
    kind = KIND

    def submit(self, config: EvalConfig, owner: str) -> Submission:
        """Check everything evaluate() would refuse, store the files, queue the job (raises InputError)."""
        config = config.checked()
        self.check_quota(owner)
        source = model_source(config.model, config.example, self.settings)
        with prepared(source, self.settings, config.symbol_values) as (_, info):
            warnings = [*info.warnings, *check_request(info, config, source.limits)]
        files = {
            "model": self.store.put_blob(source.path),
            "inputs": self.store.put_blob(config.inputs) if config.inputs else None,
            "expected": self.store.put_blob(config.expected) if config.expected else None,
            "images": [self.store.put_blob(p) for p in config.images or ()],
        }
        options = {k: v for k, v in config.to_text().items() if k not in FILE_FIELDS}
        record = {"model_name": source.name, "example": config.example, "options": options, "files": files}
        wants_gpu = any(p in GPU_KEYS for p in config.providers)
        with self.broker.placing:
            device = self.broker.place(wants_gpu)
            if device == CPU and wants_gpu:
                warnings.append(
                    "this machine has no CUDA device: the cuda/trt rows will show ONNX Runtime's fallback to the CPU"
                )
            # Timed (the card to itself) unless the operator shares each GPU between several evaluations.
            timed = self.broker.share(KIND, device) == 1.0 or device == CPU
            if not timed:
                warnings.append(
                    f"this GPU is shared by up to {round(1 / self.broker.share(KIND, device))} evaluations "
                    "(AVATARBENCH_WORKERS_PER_GPU): latencies may include the others' work"
                )
            record["warnings"] = warnings
            job = self.broker.submit(KIND, record, device, owner, model_sha256=files["model"], timed=timed,
                                     limits=self.limits())  # fmt: skip
        return Submission(job, warnings)

    def summary(self, job: Job) -> dict[str, Any]:
        return {
            **super().summary(job),
            "model_name": job.settings.get("model_name"),
            "model_sha256": job.model_sha256,
            "providers": str(job.settings.get("options", {}).get("providers", "cpu")).split(","),
            "warnings": job.settings.get("warnings", []),
            "measured": len((job.result or {}).get("results") or []),  # rows so far; a stopped job's kept rows
        }


def handle(job: Job, progress: Progress, context: WorkerContext) -> dict[str, Any]:
    """The worker's handler: the full report, with the inspection and what was submitted."""
    record, store, settings = job.settings, context.store, context.settings
    files = record["files"]
    blobs = {k: store.blob_path(files[k]) if files.get(k) else None for k in ("inputs", "expected")}
    images = [store.blob_path(sha) for sha in files.get("images") or []] or None
    config = EvalConfig.build({**record["options"], "model": store.blob_path(files["model"]), **blobs,
                               "images": images})  # fmt: skip
    placement = Placement(
        device_id=int(job.device.partition(":")[2] or 0) if job.device != CPU else 0,
        gpu_memory_fraction=settings.gpu_memory_fraction * job.share,  # 1/N of the card with N workers per GPU
    )
    limits = Limits() if record.get("example") else Limits(max_file_bytes=settings.max_upload_bytes)
    progress(0.0, "unpacking and inspecting the model")
    settings.ensure_dirs()

    def described(report: dict[str, Any]) -> dict[str, Any]:
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

    def partial(report: dict[str, Any]) -> None:  # an evaluation cancelled or out of time keeps these
        store.save_partial(job.id, described(report))

    with tempfile.TemporaryDirectory(prefix="onnx-job-", dir=settings.cache_dir) as work:
        path = prepare_model(config.model, work, limits)
        info = inspect_model(path, config.symbol_values or None, limits, sha256=job.model_sha256)
        return described(evaluate(path, info, config, progress, limits=limits, placement=placement, partial=partial))


__all__ = ["KIND", "OnnxEvalJobs", "Submission", "handle"]
