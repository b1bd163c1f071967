"""The weight-free baseline engine's side of a run: LivePortrait's options it does not use named, the driving
clip's head motion and flow tracked from its first face (or one driving image's head pose taken instead), and the
source warped by them batch by batch. The algorithm itself is engine/portrait/baseline.py, free of configs, files
and reports; this is what a run and a split job make of it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.media import is_image, load_image
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.words import listed
from engine.portrait.config import BASELINE_OPTIONS, PortraitConfig, PortraitError, is_template
from engine.portrait.driving import IMAGE_FPS, clip_frames, driving_face_box, driving_video, warn_one_frame
from engine.portrait.frames import Progress, image_tensor, sync
from engine.portrait.head import Head
from engine.portrait.weights import template_refusal
from engine.portrait.writing import Plan


def baseline_plan(head: Head, progress: Progress) -> Plan:
    config, settings, result = head.config, head.settings, head.result
    path = Path(config.driving)
    baseline_checks(config, result)
    result.precision = "fp32"  # the baseline's warp always is (the GPU's default of fp16 is LivePortrait's)
    if is_image(path):
        return _baseline_image_plan(head)
    info = driving_video(path, settings)
    warn_one_frame(info, path, config, result, "its head pose (its expression needs LivePortrait)")
    progress(0.05, "finding the driving face")
    driving_box, first_face = driving_face_box(
        clip_frames(path, config.max_frames, settings.max_seconds), path.name, head.detector, result
    )
    motion = baseline_motion(config, settings, driving_box, first_face, result, progress)
    source = image_tensor(head.source_bgr, head.device)
    batches = baseline_batches(config, source, head.box, motion.head, motion.flow, result)
    height, width = head.source_bgr.shape[:2]
    count = motion.head.shape[0]
    return Plan(batches, info.fps, count, info.has_audio, (width, height), head.device, {"backend": "torch"})


def baseline_checks(config: PortraitConfig, result: RunResult) -> None:
    if is_template(config.driving):
        raise template_refusal(config)
    if config.save_template:
        result.warn("motion templates hold LivePortrait keypoints: the baseline engine does not save one")
    defaults = PortraitConfig(config.source, config.driving)
    ignored = [
        f.name
        for f in fields(config)
        if f.name not in BASELINE_OPTIONS and getattr(config, f.name) != getattr(defaults, f.name)
    ]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        result.warn(f"the baseline engine does not use {flags} (LivePortrait's options)")


def baseline_motion(
    config: PortraitConfig,
    settings: Settings,
    driving_box: np.ndarray,
    first_face: int,
    result: RunResult,
    progress: Progress,
) -> Any:
    """The baseline's driving motion of every frame: tracked from the first face frame on, still before it."""
    from engine.portrait.baseline import still_before, track_motion

    if first_face:
        result.warn(
            f"the driving clip's first frame shows no face: motion is measured against frame {first_face}, the "
            "first with a face; the frames before it show the source still"
        )
    clip = clip_frames(Path(config.driving), config.max_frames, settings.max_seconds)
    frames = itertools.islice(clip, first_face, None)
    progress(0.15, "tracking the driving motion")
    with result.stage("motion"):
        return still_before(track_motion(frames, driving_box), first_face)


def baseline_batches(
    config: PortraitConfig,
    source: torch.Tensor,
    box: np.ndarray,
    head: np.ndarray,
    flow: np.ndarray,
    result: RunResult,
) -> Iterator[torch.Tensor]:
    """The source moved by each frame's head motion and local flow, batch by batch (what depends on the source alone
    computed once for all of them)."""
    from engine.portrait.baseline import SourceWarp

    count, warp = head.shape[0], None
    for start in range(0, count, config.batch_size):
        end = start + config.batch_size
        with result.stage("warp", items=min(end, count) - start):
            if warp is None:  # in the first batch's time
                warp = SourceWarp(source, box)
            out = warp.render(head[start:end], flow[start:end], config.multiplier)
            sync(source.device)
        yield out


def _baseline_image_plan(head: Head) -> Plan:
    """One driving image with the baseline engine: its head pose (roll, scale, place) on the source, as one frame at
    IMAGE_FPS like LivePortrait's still driver; its expression is not transferred (that needs LivePortrait)."""
    from engine.portrait.baseline import (
        FLOW_SIZE,
        MAX_ROLL,
        MAX_SHIFT,
        SCALE_RANGE,
        pose_transfer,
        render_batch,
        still_pose,
    )

    config, result, source_bgr, box, device = head.config, head.result, head.source_bgr, head.box, head.device
    path = Path(config.driving)
    driving_bgr = load_image(path, max_side=head.settings.max_side)
    with result.stage("motion", items=1):
        driving = still_pose(driving_bgr, head.detector)
        if driving is None:
            raise PortraitError(
                f"no face found in the driving image {path.name}: it needs a face, upright or tilted by less than "
                "about 40 degrees"
            )
        source = still_pose(source_bgr, head.detector, box=box)
        head, transferred = pose_transfer(source, driving, box)
    held = transferred["limited"]
    limited = (
        f"; {listed(held)} held to a head's movement (a roll of at most {MAX_ROLL:g} degrees, a scale of "
        f"{SCALE_RANGE[0]:g} to {SCALE_RANGE[1]:g}, a move of {MAX_SHIFT:g} face sizes)"
    )
    result.warn(
        f"baseline engine with a driving image: only its head pose was transferred (roll {transferred['roll_degrees']}"
        f" degrees, scale {transferred['scale']}, measured from the {transferred['measured_from']}"
        f"{limited if held else ''}); its expression needs LivePortrait"
    )
    image = image_tensor(source_bgr, device)
    still_flow = np.zeros((1, 2, FLOW_SIZE, FLOW_SIZE), np.float32)

    def batches() -> Iterator[torch.Tensor]:
        with result.stage("warp", items=1):
            out = render_batch(image, box, head[None], still_flow, config.multiplier)
            sync(device)
        yield out

    height, width = source_bgr.shape[:2]
    metrics = {"backend": "torch", "pose_transfer": transferred}
    return Plan(batches(), IMAGE_FPS, 1, False, (width, height), device, metrics)
