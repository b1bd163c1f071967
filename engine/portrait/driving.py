"""The driving input read for a run: a clip streamed twice and never held whole (its frames counted against
AVATARBENCH_MAX_SECONDS), first to find its face in every frame (and with the landmark model, its 203 points followed
from frame to frame as upstream's cropper follows them) for one crop box and the reference frame, then to crop each
frame and measure its motion in batches (with the eye and lip openness of the followed points when asked); a
driving image measured once; a saved motion template read back. The crop box is upstream's where the landmark model
is there (each followed frame's landmark box, averaged); without it, the same square around the mean of our
detector's face boxes. Both engines and the split jobs read the driving clip, so its reading lives in one place."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.errors import InputError
from engine.core.media import (
    IMAGE_FORMATS,
    MediaError,
    VideoInfo,
    is_image,
    load_image,
    probe_video,
    read_frames,
    validate_video,
)
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.config import TEMPLATE_SUFFIXES, PortraitConfig, PortraitError, changed_nothing, is_template
from engine.portrait.crop import (
    CropTransform,
    bbox_crop_transform,
    bbox_transform,
    crop_image,
    landmark_bbox,
    mean_bbox,
    network_input,
    stretched_input,
)
from engine.portrait.frames import Progress, largest_face, to_rgb
from engine.portrait.landmarks import LandmarkModel, openness
from engine.portrait.motion import KeypointInfo, concatenated
from engine.portrait.networks import Networks
from engine.portrait.templates import Openness, read_template

IMAGE_FPS = 25.0
DRIVING_CROP_SHAPE = ("scale_crop_driving", "vx_ratio_crop_driving", "vy_ratio_crop_driving")


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _timed(items: Iterator[Any], result: RunResult, stage: str) -> Iterator[Any]:
    """`items` with the time each takes to come counted as `stage`: a clip decoded as it is read shows in the
    stage chart rather than nowhere."""
    iterator = iter(items)
    while True:
        with result.stage(stage):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


_END = object()


def clip_frames(path: Path, max_frames: int | None, max_seconds: float) -> Iterator[np.ndarray]:
    """The clip's frames, at most `max_frames`; past `max_seconds` worth of them reading stops with a message (a
    header without a duration, such as a raw H.264 stream's, passes validate_video: the frames are counted)."""
    return itertools.islice(read_frames(path, max_seconds=max_seconds), max_frames)


class LandmarkTrack:
    """A driving clip's 203 points from its first face on, followed as upstream's cropper follows them
    (crop_driving_video, calc_lmks_from_cropped_video): the first frame with a face read as `LandmarkModel` reads a
    face first found (from InsightFace's 106 points, as upstream, where the user has its models; else in that frame's
    face box from our detector), each later frame
    in the crop built from the frame before's points (its landmark runner's run(img, lmk)), whether or not the
    detector finds a face there (upstream's tracking does not look again). Points that leave the picture (the face
    lost and followed into nothing, as upstream follows it, silently) are a warning in `result`, once."""

    def __init__(self, model: LandmarkModel, result: RunResult) -> None:
        self.model, self.result = model, result
        self.points: list[np.ndarray] = []
        self.left_at: int | None = None  # the first frame whose points' centre is outside the picture

    def add(self, rgb: np.ndarray, box: np.ndarray | None, frame: int) -> None:
        """The next frame's points (`frame`: its index in the clip); a frame before the first face (no points yet, no
        `box`) is skipped. Points that span no area (the face lost and the model reading nothing there: all in one
        place, or not numbers) make neither the next frame's crop nor a crop box: the run stops naming the frame,
        rather than with a bare error from the crop's arithmetic later."""
        if self.points:
            points = self.model.following(rgb, self.points[-1])
        elif box is not None:
            points = self.model(rgb, box)
        else:
            return
        try:
            landmark_bbox(points, 1.0, 0.0)
        except InputError as exc:
            raise PortraitError(
                f"driving frame {frame}: {exc}, so the face followed from frame to frame is lost there; trim the "
                "driving clip to the frames that show the face"
            ) from None
        self.points.append(points)
        x, y = points.mean(0)
        if self.left_at is None and not (0 <= x < rgb.shape[1] and 0 <= y < rgb.shape[0]):
            self.left_at = frame
            self.result.warn(
                f"the face followed through the driving clip left the picture at frame {frame} (its landmarks' "
                "centre is outside the frame): the landmarks from there on read no face and move the crop box and "
                "openness; trim the driving clip to the frames that show the face"
            )


def driving_face_box(
    frames: Iterable[np.ndarray], name: str, detector: Any, result: RunResult, track: LandmarkTrack | None = None
) -> tuple[np.ndarray, int]:
    """The clip's face box (the mean of the faces found; every frame is scanned once, its landmarks followed on the
    way into `track` when given) and the index of the first frame with a face (relative motion is measured
    against it)."""
    return clip_box(face_boxes(frames, detector, result, track), name)


def face_boxes(
    frames: Iterable[np.ndarray], detector: Any, result: RunResult, track: LandmarkTrack | None = None
) -> list[np.ndarray | None]:
    """Each frame's largest face box (None where there is none), and with `track` the landmarks followed from the
    first face on in the same pass. Detection is frame by frame, so a split job's segments scan their own frames;
    the following is not (`followed_landmarks`). A clip decoded as it is scanned counts its decoding as "decode
    driving", not "detect"."""
    boxes = []
    for frame in _timed(frames, result, "decode driving"):
        with result.stage("detect"):
            box = largest_face(frame, detector)
        boxes.append(box)
        if track is not None and (track.points or box is not None):
            with result.stage("driving landmarks"):
                track.add(to_rgb(frame), box, len(boxes) - 1)
    return boxes


def followed_landmarks(
    config: PortraitConfig,
    settings: Settings,
    first: int,
    first_box: np.ndarray,
    model: LandmarkModel,
    result: RunResult,
) -> list[np.ndarray]:
    """The landmarks of the clip's frames from `first` (its first face, found in `first_box`) on, followed as the
    unsplit scan follows them: a split job's parent reads the clip once more for them, each frame following the one
    before across its segments' bounds."""
    track = LandmarkTrack(model, result)
    frames = itertools.islice(clip_frames(Path(config.driving), config.max_frames, settings.max_seconds), first, None)
    for index, frame in enumerate(_timed(frames, result, "decode driving"), first):
        with result.stage("driving landmarks"):
            track.add(to_rgb(frame), None if track.points else first_box, index)
    return track.points


def clip_box(boxes: list[np.ndarray | None], name: str) -> tuple[np.ndarray, int]:
    """The mean of the faces found and the index of the first frame with one."""
    found = [box for box in boxes if box is not None]
    if not found:
        raise PortraitError(f"no face found in the driving video {name}: a frontal face must be visible")
    return np.mean(found, axis=0), next(i for i, box in enumerate(boxes) if box is not None)


@dataclass
class Driving:
    """The driving motion and what goes with it."""

    motion: KeypointInfo
    fps: float
    count: int
    has_audio: bool = False
    reference: int = 0  # the frame relative motion is measured against
    image: bool = False  # one driving image (or a one-frame template): its expression against the neutral one
    openness: Openness | None = None  # measured when retargeting to the driver or saving a template


class _FollowedOpenness:
    """A driving clip's (eyes, lips) openness frame by frame from its followed landmarks (`LandmarkTrack`, from the
    first face `first_face` on). Frames before the first face, which upstream drops from the clip and ours keeps,
    are read here in the clip's face box (`LandmarkModel.in_box`: no InsightFace detection for them). Each
    frame's openness is measured where upstream measures it (`_openness_in`)."""

    def __init__(
        self,
        landmarks: LandmarkModel,
        box: np.ndarray,
        first_face: int,
        followed: list[np.ndarray],
        crop: CropTransform | None,
    ) -> None:
        self.landmarks, self.box, self.first_face, self.followed, self.crop = landmarks, box, first_face, followed, crop
        self.index = 0

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """The next frames' openness, in the clip's order."""
        rows = []
        for rgb in images:
            if self.index < self.first_face:
                points = self.landmarks.in_box(rgb, self.box)
            else:
                points = self.followed[self.index - self.first_face]
            self.index += 1
            rows.append(_openness_in(points, self.crop))
        return rows


def _openness_in(points: np.ndarray, crop: CropTransform | None) -> tuple[np.ndarray, float]:
    """A driving frame's openness from its landmarks as upstream's pipeline takes them: mapped into the driving crop
    by its float32 matrix (crop_driving_video's lmk_crop, `pts @ M[:2, :2].T + M[:2, 2]`) where the frame is cropped,
    in the frame's own pixels where it is taken whole (calc_lmks_from_cropped_video). The ratios are the same up to
    float32 rounding, which the mapping changes by a step in some frames."""
    if crop is not None:
        points = points @ crop.to_crop[:2, :2].T + crop.to_crop[:, 2]
    return openness(points)


def _stacked(rows: list[tuple[np.ndarray, float]]) -> Openness:
    return np.stack([eyes for eyes, _ in rows]).astype(np.float32), np.array([lips for _, lips in rows], np.float32)


def warn_one_frame(
    info: VideoInfo, path: Path, config: PortraitConfig, result: RunResult, transferred: str = "its expression"
) -> None:
    """A driving video of one frame: relative motion against itself moves nothing (upstream's rule too, silent),
    where the same frame as an image transfers `transferred` (the baseline engine takes only an image's head
    pose)."""
    if info.frames == 1 and config.relative:
        result.warn(
            f"{path.name} is a video of one frame: its motion relative to itself moves nothing; give the frame as "
            f"an image to transfer {transferred}"
        )


def driving_motion(
    config: PortraitConfig,
    settings: Settings,
    nets: Networks,
    detector: Any,
    landmarks: LandmarkModel | None,
    result: RunResult,
    progress: Progress,
    measure_openness: bool = True,
) -> Driving:
    """Motion of every driving frame, in upstream's crop box made from the landmarks followed from frame to frame
    where the landmark model `landmarks` is there (our detector's box without it), with the eye and lip openness of
    each when `measure_openness` asks (and the model is there), and the reference frame for relative motion (the
    first, or the first with a face when the clip starts without one)."""
    path = Path(config.driving)
    if is_template(path):
        saved = read_template(path, config.max_frames, settings.max_seconds)
        count = saved.motion.exp.shape[0]
        # a template of one frame drives as one image does (upstream's rule for its templates); a longer one cut to
        # its first frame by max_frames is a clip's first frame, measured against itself as a video's would be
        return Driving(saved.motion, saved.fps, count, image=saved.frames_in_file == 1, openness=saved.openness)
    if is_image(path):
        bgr = load_image(path, max_side=settings.max_side)
        box = largest_face(bgr, detector)  # the detector takes BGR, as it takes a clip's frames
        image = to_rgb(bgr)
        if box is None:
            raise PortraitError(f"no face found in the driving image {path.name}")
        height, width = image.shape[:2]
        points = None
        if landmarks is not None and (measure_openness or cropped(config, width, height)):
            with result.stage("driving landmarks", items=1):
                points = landmarks(image, box)
        transform = _driving_crop(config, box, width, height, None if points is None else [points], path.name, result)
        with result.stage("motion", items=1):
            motion = nets.motion(_driving_input(image, transform, nets.device))
        measured = _stacked([_openness_in(points, transform)]) if points is not None and measure_openness else None
        return Driving(motion, IMAGE_FPS, 1, image=True, openness=measured)
    info = driving_video(path, settings)
    warn_one_frame(info, path, config, result)
    progress(0.05, "finding the driving face")
    follows = measure_openness or cropped(config, info.width, info.height)
    track = LandmarkTrack(landmarks, result) if landmarks is not None and follows else None
    box, reference = driving_face_box(
        clip_frames(path, config.max_frames, settings.max_seconds), path.name, detector, result, track
    )
    measuring = landmarks if measure_openness else None
    followed = None if track is None else track.points
    return clip_motion(config, settings, nets, info, box, reference, measuring, result, progress, followed)


def clip_motion(
    config: PortraitConfig,
    settings: Settings,
    nets: Networks,
    info: VideoInfo,
    box: np.ndarray,
    reference: int,
    landmarks: LandmarkModel | None,
    result: RunResult,
    progress: Progress,
    followed: list[np.ndarray] | None = None,
) -> Driving:
    """A driving clip's motion relative to frame `reference` (the first with a face), cropped by upstream's box from
    the landmarks `followed` from that frame on where given, else around the clip's face `box`; with `landmarks`
    each frame's openness, from its followed points (`_FollowedOpenness`: `followed` is then needed)."""
    if reference and config.relative:
        result.warn(
            f"the driving clip's first frame shows no face: motion is measured against frame {reference}, the "
            "first with a face (trim the clip to start on the face for the upstream behaviour)"
        )
    transform = _driving_crop(config, box, info.width, info.height, followed, Path(config.driving).name, result)
    infos: list[KeypointInfo] = []
    rows: list[tuple[np.ndarray, float]] = []
    if landmarks is not None and followed is None:
        raise ValueError("the driving openness needs the clip's followed landmarks (LandmarkTrack)")
    measure = None if landmarks is None else _FollowedOpenness(landmarks, box, reference, followed or [], transform)
    frames = clip_frames(Path(config.driving), config.max_frames, settings.max_seconds)
    total = min(info.frames or 1, config.max_frames or info.frames or 1)
    for batch in _timed(_batches(frames, config.batch_size), result, "decode driving"):
        images = [to_rgb(f) for f in batch]
        with result.stage("crop", items=len(batch)):
            tensor = torch.cat([_driving_input(rgb, transform, nets.device) for rgb in images])
        with result.stage("motion", items=len(batch)):
            infos.append(nets.motion(tensor))
        if measure is not None:
            with result.stage("driving landmarks", items=len(batch)):
                rows += measure(images)
        progress(0.05 + 0.25 * min(1.0, len(infos) * config.batch_size / total), "driving motion")
    merged = concatenated(infos)
    measured = _stacked(rows) if rows else None
    return Driving(merged, info.fps, merged.kp.shape[0], info.has_audio, reference, openness=measured)


def cropped(config: PortraitConfig, width: int, height: int) -> bool:
    """Whether the driving frames are cropped: upstream takes a square video or image whole unless `crop_driving`
    asks (its flag_crop_driving_video)."""
    return width != height or config.crop_driving


def _driving_transform(
    config: PortraitConfig, box: np.ndarray, width: int, height: int, followed: list[np.ndarray] | None = None
) -> CropTransform | None:
    """The driving crop, or None where upstream takes the driving frames whole (`cropped`). With the landmarks
    `followed` (one array a frame from the first face on) upstream's: each frame's landmark box (2.2x the points'
    square on the face's axes, shifted up 0.1 of it: `landmark_bbox`) averaged into one (`mean_bbox`) and cropped as
    its crop_image_by_bbox crops (`bbox_transform`); without them our stand-in, the same square around the face
    `box` (2.2x its larger side, shifted up 0.1)."""
    if not cropped(config, width, height):
        return None
    shape = config.scale_crop_driving, config.vy_ratio_crop_driving, config.vx_ratio_crop_driving
    if followed:
        return bbox_transform(mean_bbox([landmark_bbox(points, *shape) for points in followed]))
    return bbox_crop_transform(box, *shape)


def _driving_crop(
    config: PortraitConfig,
    box: np.ndarray,
    width: int,
    height: int,
    followed: list[np.ndarray] | None,
    name: str,
    result: RunResult,
) -> CropTransform | None:
    """`_driving_transform`, with the run's result naming what made the crop (metrics["driving_crop"]) and a
    warning for crop options that changed nothing."""
    transform = _driving_transform(config, box, width, height, followed)
    _unused_driving_crop(config, transform, name, result)
    made = "followed landmarks" if followed else "face detector"
    result.metrics["driving_crop"] = "none (taken whole)" if transform is None else made
    return transform


def _unused_driving_crop(config: PortraitConfig, transform: CropTransform | None, name: str, result: RunResult) -> None:
    """The driving crop's scale and shifts given for a square driver taken whole: they changed nothing, silently."""
    unused = changed_nothing(config, DRIVING_CROP_SHAPE)
    if transform is None and unused:
        result.warn(f"{unused}: the square {name} is taken whole (--crop-driving crops it)")


def _driving_input(rgb: np.ndarray, transform: CropTransform | None, device: torch.device) -> torch.Tensor:
    return stretched_input(rgb, device) if transform is None else network_input(crop_image(rgb, transform), device)


def driving_video(path: Path, settings: Settings) -> VideoInfo:
    """A driving file that is neither an image nor a template, read and checked as a video; one that cannot be read
    so is told every kind a driving file may be (the video reader's own message lists videos only)."""
    try:
        info = probe_video(path, settings.max_side)
    except MediaError as exc:
        raise PortraitError(f"{exc}; a driving file may also be an image ({IMAGE_FORMATS}) or a motion template "
                            f"({', '.join(TEMPLATE_SUFFIXES)})") from None  # fmt: skip
    validate_video(info, path.name, settings.max_side, settings.max_seconds)
    return info


def driving_frames(config: PortraitConfig) -> int | None:
    """How many driving frames a run expects (`max_frames`, or a video's header: a hint), None where unknown."""
    counts = [config.max_frames] if config.max_frames else []
    if is_image(config.driving):
        counts.append(1)
    elif not is_template(config.driving):
        with contextlib.suppress(MediaError):  # an unreadable video is reported where it is read
            counts.append(probe_video(config.driving).frames or 0)
    return min(count for count in counts if count) if any(counts) else None
