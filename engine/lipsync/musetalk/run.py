"""`avatarbench lipsync --engine musetalk`: a face (image or video) and speech in, an MP4 out, through MuseTalk.

One-shot use of the prepared-avatar path: the face's frames that the speech needs are prepared (boxes, latents,
blend plans), then generate() streams the lip-synced frames into the encoder while it computes the rest. Length
policy, as upstream: one output frame per video frame of the speech (the real frame rate; the last partial frame
kept); a video shorter than the speech plays forward then backward; a photo is a still face at 25 fps. The face box
comes from the fixed box when one is given, else from the chosen detector (MuseTalk's own fallback to a detector
box when no landmarks are available; the result says which was used).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.core.audio import SAMPLE_RATE, load_audio
from engine.core.device import DeviceChoice, capabilities, precision_dtype
from engine.core.media import VideoWriter, is_image, load_image, probe_video, read_frames, validate_video
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.weights import S3FD, resolve
from engine.faces.detection import FaceDetector, make_detector
from engine.lipsync.config import LipSyncConfig
from engine.lipsync.musetalk.audio import check_speech, feature_extractor, frame_count
from engine.lipsync.musetalk.avatar import prepare_avatar
from engine.lipsync.musetalk.generate import generate
from engine.lipsync.musetalk.weights import MuseTalkNetworks, load_networks, require

Progress = Callable[[float, str], None]
IMAGE_FPS = 25.0
WAV2LIP_ONLY = ("checkpoint", "compile", "pads", "smooth", "paste", "audio_offset")  # said when set, then left


class FixedBox:
    """A detector that finds the box it was given in every frame: `--box` means no detection at all."""

    name = "fixed box"

    def __init__(self, box: tuple[int, ...]) -> None:
        self.detection = np.array([[*box, 1.0]], np.float32)

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [self.detection.copy() for _ in frames]


def default_batch_size(device: torch.device) -> int:
    """8 output frames per network call on a GPU (upstream's 20 needs 8+ GB in fp32); 2 on the CPU, where each
    frame costs about 0.8 TFLOP and a batch only adds memory."""
    return 8 if device.type == "cuda" else 2


def _dtype(config: LipSyncConfig, choice: DeviceChoice) -> torch.dtype:
    precision = config.precision
    if precision == "auto":
        precision = "fp16" if choice.is_cuda else "fp32"
    return precision_dtype("fp32" if precision == "tf32" else precision, capabilities(choice.device))


def _face_frames(config: LipSyncConfig, settings: Settings, count: int) -> tuple[list[np.ndarray], float]:
    """The face's frames the speech needs (at most `count`: the rest would never be shown) and the frame rate."""
    if is_image(config.face):
        return [load_image(config.face, max_side=settings.max_side)], IMAGE_FPS
    info = probe_video(config.face)
    validate_video(info, Path(config.face).name, settings.max_side, settings.max_seconds)
    frames = []
    for frame in read_frames(config.face, max_seconds=settings.max_seconds):
        frames.append(frame)
        if len(frames) >= count:
            break
    return frames, info.fps


def _detector(config: LipSyncConfig, settings: Settings, device: torch.device) -> FaceDetector | FixedBox:
    if config.box is not None:
        return FixedBox(config.box)
    checkpoint = resolve(S3FD, settings, config.detector_checkpoint) if config.detector == "s3fd" else None
    return make_detector(config.detector, device=device, checkpoint=checkpoint, detect_scale=config.detect_scale)


def run_musetalk(
    config: LipSyncConfig, out: Path, settings: Settings, choice: DeviceChoice, progress: Progress
) -> RunResult:
    """Run MuseTalk for a checked `config` into `out` (.mp4) on `choice`'s device."""
    device = choice.device
    dtype = _dtype(config, choice)
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    result = RunResult(device=str(device), device_name=capabilities(device).name, precision=precision,
                       config=config.to_text())  # fmt: skip
    if not choice.is_cuda:
        result.warn(f"running on the CPU: {choice.reason}; MuseTalk costs about 0.8 TFLOP a frame")
    ignored = [name for name in WAV2LIP_ONLY if getattr(config, name) != getattr(LipSyncConfig, name)]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        result.warn(f"MuseTalk does not use {flags} (Wav2Lip's options)")
    weights = config.musetalk_weights
    files = require(settings, weights, config.musetalk_version, download=bool(weights and weights.startswith("hf:")))
    progress(0.0, "reading the speech")
    with result.stage("audio"):
        speech = load_audio(config.audio, max_seconds=settings.max_seconds)
    # The face's frame rate decides the frame count: read the header (or the photo) first, then the frames needed.
    fps = IMAGE_FPS if is_image(config.face) else probe_video(config.face).fps
    speech = check_speech(speech, fps)
    count = frame_count(len(speech), fps)
    with result.stage("decode"):
        frames, fps = _face_frames(config, settings, count)
    progress(0.02, "loading MuseTalk")
    with result.stage("load"):
        networks: MuseTalkNetworks = load_networks(files, device, dtype, parser_dtype=torch.float32)
    detector = _detector(config, settings, device)
    batch = config.batch_size or default_batch_size(device)
    progress(0.05, "preparing the avatar")
    avatar = prepare_avatar(
        frames, networks, detector=detector, bbox_shift=config.bbox_shift, batch_size=batch, fps=fps, result=result,
        progress=lambda fraction, label: progress(0.05 + 0.05 * fraction, label),
    )  # fmt: skip
    del frames
    for warning in avatar.warnings:
        result.warn(warning)
    extractor = feature_extractor(str(files["whisper_preprocessor"].parent))
    audio = np.zeros(round(count / fps * SAMPLE_RATE), np.float32)
    audio[: min(len(speech), len(audio))] = speech[: len(audio)]
    out.parent.mkdir(parents=True, exist_ok=True)
    height, width = avatar.frames[0].shape[:2]
    writer = VideoWriter(out, fps, width, height, audio=audio)
    started, done = time.perf_counter(), 0
    try:
        for frame in generate(avatar, speech, fps, networks, batch, extractor=extractor, result=result):
            with result.stage("encode", items=1):
                writer.write(frame)
            done += 1
            if done % batch == 0 or done == count:
                progress(0.1 + 0.9 * done / count, f"frame {done}/{count}")
        with result.stage("encode"):
            writer.close()
    except BaseException:
        writer.abort()
        raise
    wall = time.perf_counter() - started
    missed = sum(avatar.plans[avatar.source_frame(i)] is None for i in range(count))
    result.outputs["video"] = str(out)
    result.metrics.update(
        engine="musetalk", engine_label=f"MuseTalk {config.musetalk_version} ({precision})", frames=count, fps=fps,
        faces_missed=missed, batch_size=batch, width=width, height=height,
        audio_seconds=len(speech) / SAMPLE_RATE, encoder=writer.codec, pipeline_seconds=wall,
        frames_per_second=count / wall if wall > 0 else None, detector=getattr(detector, "name", "detector"),
    )  # fmt: skip
    progress(1.0, "done")
    return result
