"""Portrait animation runs as jobs, like lip-sync (engine/lipsync/jobs.py): run in a worker process on the device
the broker picks, the MP4 (and the motion template, when asked) kept with the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.jobs.kinds import FileJobs, run_file_job
from engine.jobs.store import Job
from engine.jobs.worker import Progress, WorkerContext
from engine.portrait.config import PortraitConfig

KIND = "portrait"


class PortraitJobs(FileJobs):
    kind = KIND
    config = PortraitConfig
    files = ("source", "driving")


def handle(job: Job, progress: Progress, context: WorkerContext) -> dict[str, Any]:
    from engine.portrait.pipeline import run_portrait
    from engine.portrait.strip import save_strip

    def add_strip(result: Any, inputs: dict[str, Path]) -> None:
        video = Path(result.outputs["video"])
        strip = save_strip(inputs["driving"], video, result.metrics["frames"])
        if strip is not None:
            result.outputs["strip"] = str(strip)

    return run_file_job(job, progress, context, PortraitConfig, run_portrait, add_strip)


__all__ = ["KIND", "PortraitJobs", "handle"]
