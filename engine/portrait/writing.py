"""An engine's frames written as the run's MP4: what an engine hands the writer (a plan), frames in [0, 1] cast
to 8 bits as upstream casts them (NaN or infinite values written black or white, with a warning), encoded in order
with the driving clip's sound fitted to the frames written, and streamed live as HLS when asked. A split job's
segments encode through the same steps, so they are shared here."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.hls import stream_folder
from engine.core.media import MediaError, VideoWriter, probe_video
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.config import PortraitConfig
from engine.portrait.frames import Progress


@dataclass
class Plan:
    """What an engine hands the writer: frames in batches, on `device`, as (B, 3, H, W) in [0, 1]."""

    batches: Iterator[torch.Tensor]
    fps: float
    count: int
    has_audio: bool
    size: tuple[int, int]  # width, height
    device: torch.device
    metrics: dict[str, Any]


def write(
    plan: Plan, config: PortraitConfig, settings: Settings, out: Path, result: RunResult, progress: Progress
) -> None:
    audio = driving_audio(config, plan.fps, plan.count, settings, result) if plan.has_audio else None
    live = stream_folder(out) if config.stream else None
    writer = VideoWriter(out, plan.fps, plan.size[0], plan.size[1], audio=audio, stream_to=live)
    started = time.perf_counter()
    try:
        encode(plan.batches, writer, result, progress, plan.count)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    result.outputs["video"] = str(out)
    result.metrics.update(
        frames=plan.count,
        fps=plan.fps,
        frames_per_second=plan.count / max(time.perf_counter() - started, 1e-9),
        encoder=writer.codec,
    )


def encode(
    batches: Iterable[torch.Tensor], writer: Any, result: RunResult, progress: Progress, total: int, low: float = 0.3
) -> None:
    """Frames in [0, 1] to 8-bit BGR, written in order."""
    done = 0
    for frames in batches:
        if not all_finite(frames):  # fp16 overflow: casting NaN to uint8 is undefined
            frames = torch.nan_to_num(frames, nan=0.0, posinf=1.0, neginf=0.0)
            result.warn(
                "the networks gave NaN or infinite values in some frames; those pixels are written black (white for "
                "+inf): fp32 or bf16 has the range fp16 lacks"
            )
        # Truncated, not rounded, as upstream converts its frames (np.uint8 of x 255): half a grey level darker.
        pixels = (frames * 255).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        if pixels.is_cuda:
            pixels = pixels.contiguous()  # laid out for the host where it is cheap, not row by row on the CPU
        # RGB to BGR as a view (reversed channels): the write below copies each frame once; torch's flip of the
        # channels last took 10-15 ms a 512x512 frame on a shared 2-core CPU, numpy's copy about 1 ms
        pixels = pixels.cpu().numpy()[..., ::-1]
        with result.stage("encode", items=len(pixels)):
            for frame in pixels:
                writer.write(np.ascontiguousarray(frame))
        done += len(pixels)
        progress(low + (1 - low) * min(1.0, done / max(1, total)), f"frame {done}/{total}")


def all_finite(frames: torch.Tensor) -> bool:
    """Whether no value is NaN or infinite, from the least and the greatest found in one pass: torch's aminmax
    carries a NaN to both, and an infinity is one of them. torch.isfinite(frames).all() wrote a mask of the
    frames first and took 2-80 ms a 512x512 frame on a shared 2-core CPU (aminmax about 0.2 ms)."""
    if frames.numel() == 0:  # aminmax refuses an empty tensor
        return True
    low, high = torch.aminmax(frames)
    return bool(torch.isfinite(torch.stack([low, high])).all())


def driving_audio(config: PortraitConfig, fps: float, count: int, settings: Settings, result: RunResult) -> Any:
    """The driving clip's sound for the frames written, at its own rate and channels, as upstream's ffmpeg mux keeps
    it: cut at the last frame's end (upstream's -shortest), padded with silence where it ends sooner, and placed
    where it starts against the pictures on the clip's timeline (a sound starting 0.4 s after them stays 0.4 s
    late; upstream's mux keeps that, but not a sound starting before the pictures). None when the clip's sound
    cannot be read, with a warning saying why."""
    from engine.core.audio import AudioError, load_sound

    try:
        sound = load_sound(config.driving, max_seconds=settings.max_seconds)
        lag_s = probe_video(config.driving).audio_lag_s
    except (AudioError, MediaError) as exc:
        result.warn(f"the driving clip's sound is left out: {exc}")
        return None
    return sound.fitted(count / fps, start_s=-lag_s, cut=True)
