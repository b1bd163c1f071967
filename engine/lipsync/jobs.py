"""Lip-sync runs as jobs: submitted by the tab, the API or a script, run in a worker process on the device the
broker picks, the MP4 and the full result kept with the job (history, reopen, restarts)."""

from __future__ import annotations

from typing import Any

from engine.jobs.kinds import FileJobs, run_file_job
from engine.jobs.store import Job
from engine.jobs.worker import Progress, WorkerContext
from engine.lipsync.config import LipSyncConfig

KIND = "lipsync"


class LipSyncJobs(FileJobs):
    kind = KIND
    config = LipSyncConfig
    files = ("face", "audio")

    def process(self, config: LipSyncConfig) -> dict[str, Any]:  # type: ignore[override]
        return {"tf32": config.precision == "tf32"}


def handle(job: Job, progress: Progress, context: WorkerContext) -> dict[str, Any]:
    from engine.lipsync.pipeline import run_lipsync

    return run_file_job(job, progress, context, LipSyncConfig, run_lipsync)


__all__ = ["KIND", "LipSyncJobs", "handle"]
