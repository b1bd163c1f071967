"""A portrait job split into time segments over idle GPUs (engine/jobs/split.py calls setup, measure, plan,
output_writer, render and report), equal frame for frame to the unsplit run: what needs the whole driving clip (its
face box, its reference frame, its motion) is gathered by the parent, and each segment renders and encodes its own
frames. Apart from the pipeline because a split job runs the same stages in another order, across processes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.media import LosslessWriter, VideoInfo, VideoWriter, is_image, probe_video, validate_video
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.baseline_plan import baseline_batches, baseline_checks, baseline_motion
from engine.portrait.config import PortraitConfig, PortraitError, is_template
from engine.portrait.driving import clip_box, clip_frames, clip_motion, cropped, face_boxes, followed_landmarks
from engine.portrait.frames import Progress, image_tensor
from engine.portrait.head import Head, run_head
from engine.portrait.liveportrait_plan import (
    Source,
    keypoints,
    liveportrait_batches,
    liveportrait_source,
    name_unused_options,
)
from engine.portrait.templates import NPZ
from engine.portrait.writing import driving_audio, encode


class PortraitSegments:
    """A portrait job with a driving clip split into time segments (engine/jobs/split.py), equal frame for frame to
    the unsplit run.

    Segments scan their own frames for the driving face (frames are independent); the parent makes the clip's face
    box and its reference frame from all of them; with the landmark model, reads the clip once more to follow its
    landmarks from the first face on (each frame follows the one before, across the segments' bounds: the unsplit
    run follows them in its scan), which make the driving crop box and the openness as the unsplit run's; then the
    motion the unsplit run makes (the baseline's
    tracking is causal, each frame seeded by the one before; LivePortrait's keypoints are measured against the
    reference frame, with stitching and retargeting), and hands each segment its frames' motion: the baseline's head
    motion and flow, LivePortrait's driving keypoints. Segments load the networks and encode the source while the
    parent plans. Driving images and motion templates are not split (one frame, or nothing to scan)."""

    def __init__(self, config: PortraitConfig, out: Path, settings: Settings, device: str | None = None) -> None:
        self.config, self.out, self.settings, self.device = config.checked(), Path(out), settings, device
        self.head: Head | None = None
        self.source: Source | torch.Tensor | None = None  # LivePortrait's source side, or the baseline's image
        self.info: VideoInfo | None = None
        self.count = 0
        self.plan_metrics: dict[str, Any] = {"backend": "torch"}

    def _ready(self) -> Head:
        assert self.head is not None, "setup or join first"
        return self.head

    def _prepare(self, progress: Progress, batch_size: int | None = None) -> None:
        head = self.head = run_head(self.config, self.settings, self.device, batch_size)
        path = Path(head.config.driving)
        if is_template(path) or is_image(path):
            raise PortraitError(f"{path.name}: only a driving video is split into segments")
        if head.folder is None:
            baseline_checks(head.config, head.result)
            self.source = image_tensor(head.source_bgr, head.device)
        else:
            name_unused_options(head.config, head.result)
            self.source = liveportrait_source(head, progress)
            self.plan_metrics = self.source.metrics
        self.info = probe_video(path)
        validate_video(self.info, path.name, self.settings.max_side, self.settings.max_seconds)

    def _size(self) -> tuple[int, int]:
        if isinstance(self.source, Source):
            return self.source.size
        height, width = self._ready().source_bgr.shape[:2]
        return width, height

    def setup(self, progress: Progress) -> dict[str, Any]:
        self._prepare(progress)
        config, info = self._ready().config, self.info
        assert info is not None
        frames = info.frames or round((info.duration_s or 0.0) * info.fps)
        frames = min(frames, config.max_frames or frames)
        return {"frames": frames, "align": config.batch_size, "batch_size": config.batch_size, "measure": True,
                "open_end": True}  # fmt: skip

    def join(self, setup: dict[str, Any], progress: Progress) -> None:
        self._prepare(progress, batch_size=setup["batch_size"])

    def measure(self, start: int, stop: int | None, progress: Progress) -> dict[str, np.ndarray]:
        """Each of frames start..stop-1's largest face (stop None: to the clip's end)."""
        head = self._ready()
        clip = clip_frames(Path(head.config.driving), head.config.max_frames, self.settings.max_seconds)
        boxes = face_boxes(itertools.islice(clip, start, stop), head.detector, head.result)
        progress(1.0, f"faces in {len(boxes)} frames")
        found = np.array([box is not None for box in boxes], bool)
        rows = np.stack([np.zeros(4, np.float32) if box is None else box for box in boxes] or [np.zeros(4, np.float32)])
        return {"boxes": rows[: len(boxes)], "found": found}

    def plan(
        self, ranges: list[tuple[int, int | None]], measured: list[dict[str, np.ndarray] | None], progress: Progress
    ) -> tuple[list[tuple[int, int]], list[dict[str, np.ndarray]]]:
        """The clip's box and reference frame from every segment's faces, then the whole clip's motion, cut up."""
        head, info = self._ready(), self.info
        assert info is not None
        boxes: list[np.ndarray | None] = []
        for part in measured:
            assert part is not None, "every segment scans its frames for the driving face"
            boxes += [row if found else None for row, found in zip(part["boxes"], part["found"], strict=True)]
        box, first = clip_box(boxes, Path(head.config.driving).name)
        count = self.count = len(boxes)
        final = [(min(start, count), count if stop is None else min(stop, count)) for start, stop in ranges]
        if isinstance(self.source, Source):
            template = self.out.with_suffix(NPZ) if head.config.save_template else None
            measures_driver = head.config.follows_driver or template is not None
            model, followed = self.source.landmark_model, None
            if model is not None and (measures_driver or cropped(head.config, info.width, info.height)):
                first_box = boxes[first]
                assert first_box is not None
                followed = followed_landmarks(head.config, self.settings, first, first_box, model, head.result)
            landmarks = model if measures_driver else None
            driving = clip_motion(
                head.config, self.settings, self.source.nets, info, box, first, landmarks, head.result, progress,
                followed,
            )  # fmt: skip
            x_driving, x_source = (t.detach().cpu().numpy() for t in keypoints(head, self.source, driving, template))
            states = [{"x": x_driving[a:b], "x_source": x_source} for a, b in final]
        else:
            motion = baseline_motion(head.config, self.settings, box, first, head.result, progress)
            states = [{"head": motion.head[a:b], "flow": motion.flow[a:b]} for a, b in final]
        return final, states

    def output_writer(self, out: Path) -> VideoWriter:
        head, info = self._ready(), self.info
        assert info is not None
        audio = driving_audio(head.config, info.fps, self.count, self.settings, head.result) if info.has_audio else None
        return VideoWriter(out, info.fps, *self._size(), audio=audio)

    def segment_writer(self, path: Path) -> LosslessWriter:
        assert self.info is not None
        return LosslessWriter(path, self.info.fps, *self._size())

    def render(self, start: int, stop: int, state: dict[str, np.ndarray], writer: Any, progress: Progress) -> None:
        """Frames start..stop-1 from their planned motion."""
        head = self._ready()
        if isinstance(self.source, Source):
            x_driving, x_source = torch.from_numpy(state["x"]), torch.from_numpy(state["x_source"])
            batches = liveportrait_batches(head.config, self.source, x_driving, x_source, head.result)
        else:
            assert self.source is not None
            batches = baseline_batches(head.config, self.source, head.box, state["head"], state["flow"], head.result)
        encode(batches, writer, head.result, progress, stop - start, low=0.0)

    def report(self, frames: int, seconds: float, writer: Any) -> RunResult:
        head, info = self._ready(), self.info
        assert info is not None
        head.result.metrics.update(
            frames=frames, fps=info.fps, frames_per_second=frames / max(seconds, 1e-9), encoder=writer.codec
        )
        head.report(self.plan_metrics)
        return head.result


__all__ = ["PortraitSegments"]
