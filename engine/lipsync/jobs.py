"""Lip-sync runs as jobs: submitted by the tab, the API or a script, run in a worker process on the device the
broker picks, the MP4 and the full result kept with the job (history, reopen, restarts). Speech longer than
AVATARBENCH_SPLIT_SECONDS is split over the idle GPUs (engine/jobs/split.py, LipSyncSegments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.media import declared_seconds
from engine.core.settings import Settings
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

    def seconds(self, config: LipSyncConfig) -> float | None:  # type: ignore[override]
        """The speech's length (the video lasts as long); MuseTalk is never split (its avatar cycles whole)."""
        return None if config.engine == "musetalk" else declared_seconds(config.audio)


def handle(job: Job, progress: Progress, context: WorkerContext) -> dict[str, Any]:
    from engine.lipsync.musetalk.avatar_store import AVATAR_OWNER
    from engine.lipsync.pipeline import LipSyncSegments, run_lipsync

    def segments(config: LipSyncConfig, out: Path, settings: Settings, device: str) -> LipSyncSegments:
        return LipSyncSegments(config, settings, device)

    owner = AVATAR_OWNER.set(job.owner)  # MuseTalk reuses only this owner's prepared avatars
    try:
        return run_file_job(job, progress, context, LipSyncConfig, run_lipsync, segments=segments)
    finally:
        AVATAR_OWNER.reset(owner)


__all__ = ["KIND", "LipSyncJobs", "handle"]
