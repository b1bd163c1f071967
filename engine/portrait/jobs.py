"""Portrait animation runs as jobs, like lip-sync (engine/lipsync/jobs.py): run in a worker process on the device
the broker picks, the MP4 (and the motion template, when asked) kept with the job. A driving clip longer than
AVATARBENCH_SPLIT_SECONDS is split over the idle GPUs (engine/jobs/split.py, PortraitSegments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.errors import InputError
from engine.core.media import is_image, probe_video
from engine.core.settings import Settings
from engine.jobs.kinds import FileJobs, run_file_job
from engine.jobs.store import Job
from engine.jobs.worker import Progress, WorkerContext
from engine.portrait.config import PortraitConfig, is_template

KIND = "portrait"


class PortraitJobs(FileJobs):
    kind = KIND
    config = PortraitConfig
    files = ("source", "driving")

    def refuse(self, config: PortraitConfig) -> None:  # type: ignore[override]
        from engine.portrait.weights import refuse_template_without_weights

        refuse_template_without_weights(config, self.settings)

    def seconds(self, config: PortraitConfig) -> float | None:  # type: ignore[override]
        """The driving clip's length (up to max_frames); a driving image or motion template is never split."""
        path = Path(config.driving)
        if is_image(path) or is_template(path):
            return None
        try:
            info = probe_video(path)
        except InputError:
            return None  # refused with its reason when the job runs
        seconds = info.duration_s if info.duration_s is not None else (info.frames or 0) / info.fps
        return min(seconds, config.max_frames / info.fps) if config.max_frames else seconds


def handle(job: Job, progress: Progress, context: WorkerContext) -> dict[str, Any]:
    from engine.portrait.pipeline import run_portrait
    from engine.portrait.segments import PortraitSegments
    from engine.portrait.strip import save_strip

    def add_strip(result: Any, inputs: dict[str, Path]) -> None:
        video = Path(result.outputs["video"])
        strip = save_strip(inputs["driving"], video, result.metrics["frames"])
        if strip is not None:
            result.outputs["strip"] = str(strip)

    def segments(config: PortraitConfig, out: Path, settings: Settings, device: str) -> PortraitSegments:
        return PortraitSegments(config, out, settings, device)

    return run_file_job(job, progress, context, PortraitConfig, run_portrait, add_strip, segments)


__all__ = ["KIND", "PortraitJobs", "handle"]
