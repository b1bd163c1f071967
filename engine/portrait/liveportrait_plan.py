"""LivePortrait's side of a run: the networks loaded (or reused) and the source cropped and encoded (or its
features reused: engine/portrait/cache.py); the driving keypoints composed as upstream's pipeline composes them
(relative, absolute or image motion, the expression-friendly rescaling, eye and lip retargeting, stitching, lip
normalisation, the driving multiplier; the maths is engine/portrait/motion.py's); and the frames rendered batch by
batch: warped, decoded, pasted back. A whole run and a split job both build their frames from it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.results import RunResult
from engine.portrait.config import PortraitConfig, PortraitError, changed_nothing, is_template
from engine.portrait.crop import (
    CROP_SIZE,
    CropTransform,
    PasteBack,
    crop_image,
    crop_transform,
    landmark_crop_transform,
    network_input,
    roll_from_landmarks,
    stretched_input,
)
from engine.portrait.driving import DRIVING_CROP_SHAPE, Driving, driving_motion
from engine.portrait.frames import Progress, image_tensor, sync, to_rgb
from engine.portrait.head import Head
from engine.portrait.landmarks import LandmarkModel, openness
from engine.portrait.motion import (
    KeypointInfo,
    absolute_driving,
    driving_multiplier,
    expression_friendly,
    image_driving,
    motion_multiplier,
    relative_driving,
    retarget,
    stitch,
    transform_keypoints,
)
from engine.portrait.networks import load_networks, onnx_precision, optional_landmark_model
from engine.portrait.templates import Openness, save_template
from engine.portrait.writing import Plan

LIP_NORMALIZE_THRESHOLD = 0.03  # source lips open at least this much are closed before animating (upstream's)


@dataclass
class Source:
    """LivePortrait's side of the source: the networks, the crop, the appearance features and keypoints."""

    nets: Any
    device: torch.device
    landmark_model: LandmarkModel | None
    openness: tuple[np.ndarray, float] | None
    transform: CropTransform | None  # None: the whole source, stretched (crop off)
    feature: torch.Tensor
    motion: KeypointInfo
    paste: PasteBack | None
    original: torch.Tensor
    size: tuple[int, int]  # the frames' width, height
    metrics: dict[str, Any]


def liveportrait_source(head: Head, progress: Progress) -> Source:
    """Networks loaded (or reused), the source cropped and encoded (or its features reused)."""
    from engine.portrait.cache import NETWORKS, SOURCES, file_digest
    from engine.portrait.onnx_backend import weights_digest

    config, settings, result, folder = head.config, head.settings, head.result, head.folder
    assert folder is not None
    device, precision, source_bgr, box = head.device, head.precision, head.source_bgr, head.box
    progress(0.0, "loading the networks")
    if config.backend != "torch":
        precision = onnx_precision(config, precision, device, result)
    fixed_batch = config.batch_size if config.compile or config.backend == "onnx-trt" else None
    nets_key = (str(folder.resolve()), weights_digest(folder), config.backend, str(device), precision, fixed_batch)
    with result.stage("load"):
        nets, nets_hit = NETWORKS.get_or_build(
            nets_key, lambda: load_networks(config, settings, folder, device, precision)
        )
    if not nets_hit:
        SOURCES.clear()  # features made by other networks
    for warning in getattr(nets, "warnings", []):
        result.warn(warning)
    if config.backend != "torch":
        result.metrics["providers"] = nets.providers
    result.precision = precision
    device = nets.device  # where the ONNX backend's frames come out
    height, width = source_bgr.shape[:2]
    landmark_model = optional_landmark_model(config, folder, result, device)
    landmarks = face_points = None
    if landmark_model is not None and box is not None:  # no face: uncropped, nothing to measure (head.py warns of it)
        with result.stage("landmarks"):
            landmarks, face_points = landmark_model.first_reading(to_rgb(source_bgr), box)
        if landmark_model.insightface is not None and face_points is None:  # crop off: only the landmarks' read
            fallback = (
                "it is cropped around our detector's" if config.crop else "its landmarks are read in our detector's"
            )
            result.warn(f"InsightFace's detector found no face in the source: {fallback} face box")
    transform = _source_crop(config, box, landmarks, face_points)

    def encode_source() -> tuple[torch.Tensor, KeypointInfo]:
        with result.stage("crop"):
            rgb = to_rgb(source_bgr)
            source_input = stretched_input(rgb, device) if transform is None else network_input(
                crop_image(rgb, transform), device
            )  # fmt: skip
        with result.stage("source features"):
            return nets.appearance(source_input), nets.motion(source_input)

    angle = None if transform is None else transform.angle
    # The features depend on the pixels the networks saw: the file, its limits and the crop (off, turn, scale, shift).
    crop_key = None if transform is None else transform.to_crop.tobytes()
    source_key = (file_digest(config.source), config.source_max_dim, config.source_division, crop_key, nets_key)
    (feature, source_motion), source_hit = SOURCES.get_or_build(source_key, encode_source)
    result.metrics["cache"] = {"networks": nets_hit, "source": source_hit}
    # As upstream: pasted back only from a crop, and only with stitching (without it the shoulders move and would
    # show a seam); otherwise the frames are the networks' 512x512 output.
    pasted = transform is not None and config.paste_back and config.stitching
    paste = PasteBack(transform, height, width, device) if pasted else None
    original = image_tensor(source_bgr, device)
    size = (width, height) if pasted else (512, 512)
    metrics = {"backend": config.backend, "crop_scale": None if transform is None else transform.scale,
               "crop_angle": angle, "pasted_back": pasted}  # fmt: skip
    metrics["compiled"] = config.compile
    metrics["source_crop"] = None if transform is None else _crop_basis(landmarks, face_points)
    source_openness = None if landmarks is None else openness(landmarks)
    return Source(
        nets, device, landmark_model, source_openness, transform, feature, source_motion, paste, original, size,
        metrics,
    )  # fmt: skip


def _source_crop(
    config: PortraitConfig, box: np.ndarray | None, landmarks: np.ndarray | None, face_points: np.ndarray | None
) -> CropTransform | None:
    """None with crop off (upstream stretches the whole source to the networks' size). With InsightFace's 106 points,
    upstream's crop from them (crop_image), where `vx_ratio` moves it too (upstream's crop_image drops it: the same
    crop at its default 0); else the crop around our detector's face box, upright by the 203 points' tilt when the
    landmark model read them."""
    if not config.crop:
        return None
    if face_points is not None:
        return landmark_crop_transform(face_points, config.scale, config.vy_ratio, size=CROP_SIZE,
                                       vx=config.vx_ratio, rotate=config.upright)  # fmt: skip
    tilt = roll_from_landmarks(landmarks) if landmarks is not None else 0.0
    return crop_transform(box, config.scale, config.vy_ratio, angle=tilt, vx=config.vx_ratio, rotate=config.upright)


def _crop_basis(landmarks: np.ndarray | None, face_points: np.ndarray | None) -> str:
    """What the source crop was built from, for the run's metrics."""
    if face_points is not None:
        return "insightface 106 points"
    return "face box, upright by the 203 landmarks" if landmarks is not None else "face box"


def liveportrait_plan(head: Head, source: Source, template: Path | None, progress: Progress) -> Plan:
    config, result = head.config, head.result
    measures_driver = config.follows_driver or template is not None  # upstream's templates keep the openness too
    driving = driving_motion(
        config,
        head.settings,
        source.nets,
        head.detector,
        source.landmark_model,  # the driving crop box follows its landmarks, as upstream's, when it is there
        result,
        progress,
        measure_openness=measures_driver,
    )
    x_driving, x_source = keypoints(head, source, driving, template)
    batches = liveportrait_batches(config, source, x_driving, x_source, result)
    return Plan(batches, driving.fps, driving.count, driving.has_audio, source.size, source.device, source.metrics)


def keypoints(head: Head, source: Source, driving: Driving, template: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The driving keypoints of every frame (the template saved first, when asked)."""
    config, result = head.config, head.result
    if template is not None:
        save_template(template, driving.motion, driving.fps, driving.openness)
        result.outputs["template"] = str(template)
    if source.openness is not None:
        result.metrics["source_openness"] = {"eyes": source.openness[0].tolist(), "lips": source.openness[1]}
        result.metrics["lips_normalised"] = _normalises_lips(config, source.openness[1])
    return _driving_keypoints(
        config,
        source.motion,
        driving.motion,
        source.nets,
        source.openness,
        driving.reference,
        driving_openness=driving.openness,
        driving_image=driving.image,
    )


def liveportrait_batches(
    config: PortraitConfig, source: Source, x_driving: torch.Tensor, x_source: torch.Tensor, result: RunResult
) -> Iterator[torch.Tensor]:
    """Frames rendered from `x_driving`'s keypoints, batch by batch: warped, decoded, pasted back."""
    nets, device = source.nets, source.device
    for start in range(0, x_driving.shape[0], config.batch_size):
        x = x_driving[start : start + config.batch_size].to(device)
        with result.stage("warp", items=x.shape[0]):
            warped = nets.warp(source.feature, x_source.to(device), x)
            sync(device)
        with result.stage("decode network", items=x.shape[0]):
            frames = nets.decode(warped)
            sync(device)
        if source.paste is None:
            yield frames
            continue
        with result.stage("paste", items=x.shape[0]):
            yield source.paste(frames, source.original)


def _driving_keypoints(
    config: PortraitConfig,
    source: KeypointInfo,
    motion: KeypointInfo,
    nets: Any,
    openness: tuple[np.ndarray, float] | None = None,
    reference: int = 0,
    *,
    driving_openness: Openness | None = None,
    driving_image: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints that move the source as the driver moves, then (as upstream's pipeline) the expression-friendly
    rescaling, eye and lip retargeting (given the source's `openness`), stitching, lip normalisation and the
    driving multiplier.

    Relative motion from a clip is measured against its `reference` frame; one driving image (`driving_image`;
    by default, a single frame) keeps the source's pose, scale and position and measures its expression against
    upstream's neutral expression; absolute motion takes the driver's pose, position and upstream's subset of its
    expression, at the source's scale. Retargeting to the driver (`driving_openness`, per frame) replaces the
    motion, as upstream: the source's keypoints (relative) or the driver's (absolute) plus the deltas. The
    head-rotation offsets turn the source's own pose wherever it is used (the expression-friendly rescaling and the
    driving multiplier re-centre on it too); a fixed eye or lip openness adds its delta to the animated keypoints
    (both ours, not upstream's)."""
    x_source = transform_keypoints(source)
    posed = source
    if any(config.rotation):  # the head-rotation sliders: the source's own pose, turned by the offsets
        dp, dy, dr = config.rotation
        posed = replace(source, pitch=source.pitch + dp, yaw=source.yaw + dy, roll=source.roll + dr)
    x_posed = transform_keypoints(posed)  # x_source itself when there are no offsets
    n = motion.kp.shape[0]
    image = n == 1 if driving_image is None else driving_image
    if not config.relative:
        x = absolute_driving(posed, motion, config.region)
    elif image:
        x = image_driving(posed, motion, config.region)
    else:
        x = relative_driving(posed, motion, motion.select(reference), config.region)
        if config.driving_option == "expression-friendly":
            x_first = x[reference : reference + 1]
            x = expression_friendly(x, x_first, x_posed, motion_multiplier(x_source, x_first))
    with torch.inference_mode():
        deltas = _retargeting_deltas(config, nets, x_source, n, openness, driving_openness)
        if config.follows_driver and config.relative:
            x = x_posed.expand(n, 21, 3)
        for delta in deltas:
            x = x + delta
        if config.stitching:
            x = stitch(nets.retargeting["stitching"], x_source, x)
        if openness is not None and _normalises_lips(config, openness[1]):
            x = x + retarget(nets.retargeting["lip"], x_source, torch.tensor([[openness[1], 0.0]]))
    # The multiplier scales the driving motion about the source as the offsets turned it, so that the offsets stay the
    # degrees asked whatever the multiplier; where the driver's pose replaces the source's they change nothing.
    takes_drivers_pose = not config.relative and config.region in ("all", "pose")
    return driving_multiplier(x, x_source if takes_drivers_pose else x_posed, config.multiplier), x_source


def _retargeting_deltas(
    config: PortraitConfig,
    nets: Any,
    x_source: torch.Tensor,
    frames: int,
    openness: tuple[np.ndarray, float] | None,
    driving_openness: Openness | None,
) -> list[torch.Tensor]:
    """The eye, then lip, keypoint deltas asked for, from the source's openness to each driving frame's (for the
    eyes upstream takes the driver's left eye) or to one fixed openness."""
    if openness is None:
        return []
    if config.follows_driver and driving_openness is None:
        raise PortraitError(
            "retargeting to the driver needs each driving frame's eye and lip openness, and this motion template "
            "has none: save it again with LivePortrait's landmark.onnx beside the weights (or --landmarks)"
        )
    driver = (None, None) if driving_openness is None else (driving_openness[0][:, 0], driving_openness[1])
    follows = (config.eye_retargeting, config.lip_retargeting)
    parts = zip(("eye", "lip"), follows, (config.eye_open, config.lip_open), openness, driver, strict=True)
    deltas = []
    for name, follows_driver, fixed, source_ratios, driver_ratios in parts:
        if not follows_driver and fixed is None:
            continue
        target = driver_ratios if follows_driver else np.full(frames, fixed)
        own = np.broadcast_to(np.atleast_1d(source_ratios), (frames, np.size(source_ratios)))
        ratios = torch.tensor(np.column_stack([own, target]), dtype=torch.float32)
        deltas.append(retarget(nets.retargeting[name], x_source, ratios))
    return deltas


def _normalises_lips(config: PortraitConfig, source_lips: float) -> bool:
    """Upstream closes an open source mouth before relative motion unless it retargets the eyes or lips to the
    driver; a fixed lip openness replaces it too, a fixed eye openness does not."""
    wanted = config.normalize_lips and config.relative and config.lip_open is None and not config.follows_driver
    # In float32, as upstream compares its float32 ratio tensor with the scalar (torch casts 0.03 to float32).
    return wanted and bool(np.float32(source_lips) >= np.float32(LIP_NORMALIZE_THRESHOLD))


def name_unused_options(config: PortraitConfig, result: RunResult) -> None:
    """The options given that change nothing in this run are named (a whole run and a split job alike)."""
    _unused_crop_options(config, result)
    _unused_head_offsets(config, result)


SOURCE_CROP_OPTIONS = ("scale", "vx_ratio", "vy_ratio", "upright")
DRIVING_CROP_OPTIONS = ("crop_driving", *DRIVING_CROP_SHAPE)


def _unused_crop_options(config: PortraitConfig, result: RunResult) -> None:
    """Crop options changed where nothing is cropped are named (they changed nothing, without a word): the
    source's with --no-crop, the driving clip's with a motion template, whose motion was measured before. Upstream
    warns of the second."""
    for names, unused, why in (
        (SOURCE_CROP_OPTIONS, not config.crop, "with --no-crop the source is not cropped"),
        (DRIVING_CROP_OPTIONS, is_template(config.driving), "a motion template's motion was measured when saved"),
    ):
        changed = changed_nothing(config, names)
        if unused and changed:
            result.warn(f"{changed}: {why}")


HEAD_OFFSETS = ("pitch", "yaw", "roll")


def _unused_head_offsets(config: PortraitConfig, result: RunResult) -> None:
    """The head-rotation offsets turn the source's own pose, and absolute motion of the whole head (region all or
    pose) puts the driver's pose in its place: offsets given there changed nothing, without a word."""
    given = changed_nothing(config, HEAD_OFFSETS)
    if given and not config.relative and config.region in ("all", "pose"):
        result.warn(
            f"{given}: with --no-relative and region "
            f"{config.region} the head takes the driver's pose, and the offsets turn the source's (relative motion, "
            "or regions exp, lip and eyes)"
        )
