"""The head of a portrait run (not the head in the picture): what it decides before it reads the driving input.
The device, precision and batch size; the source loaded within its limits and its face found; the engine
(LivePortrait where its weights are, else the baseline); and what is refused before any work: a GPU backend on a CPU
job, a faceless source the engine cannot take, fp16 where the device lacks it, a batch over the memory left. A whole
run and each segment of a split job start from it, so it stands apart from both."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.device import (
    DeviceChoice,
    auto_precision,
    capabilities,
    precision_dtype,
    resolve_device,
    usable_gpu_memory,
    usable_host_memory,
)
from engine.core.errors import SetupError
from engine.core.media import LARGEST_MAX_SIDE, load_image
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.config import PortraitConfig, PortraitError
from engine.portrait.crop import source_within_limits
from engine.portrait.driving import driving_frames
from engine.portrait.frames import largest_face
from engine.portrait.insightface import optional_insightface
from engine.portrait.weights import HUB_REPO, pick_engine

GPU_BATCH_SIZE = 8
CPU_BATCH_SIZE = 1  # on the CPU, batch 8 was 16-24 % slower per frame than 1 and took 3x the memory (issue #17)


def default_batch_size(device: torch.device, backend: str = "torch") -> int:
    """Frames per batch when none is asked for: 8 on a GPU; 1 where the networks run on the CPU (the CPU device, or
    the onnx-cpu backend), where a batch of 8 made LivePortrait's decoder 30 % slower per frame and the process 3x
    bigger (4.7 GB against upstream's 1.65 GB), and batch 1 is level with upstream."""
    on_gpu = device.type == "cuda" and backend != "onnx-cpu"
    return GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE


@dataclass
class Head:
    """What a run decides before the driving input: device, precision, the source and its face, the engine."""

    config: PortraitConfig  # with the batch size resolved
    settings: Settings
    result: RunResult
    device: torch.device
    precision: str
    detector: Any
    source_bgr: np.ndarray
    box: np.ndarray | None  # None: no face, LivePortrait uncropped
    engine: str
    folder: Path | None  # LivePortrait's weights; None: the baseline

    def report(self, plan_metrics: dict[str, Any]) -> None:
        face_box = None if self.box is None else [round(float(v), 1) for v in self.box]
        self.result.metrics.update(
            engine=self.engine, face_box=face_box, batch_size=self.config.batch_size, **plan_metrics
        )


def run_head(config: PortraitConfig, settings: Settings, device: str | None, batch_size: int | None = None) -> Head:
    choice = resolve_device(device or settings.device)
    caps = capabilities(choice.device)
    precision = auto_precision(caps) if config.precision == "auto" else config.precision
    result = RunResult(device=str(choice.device), device_name=caps.name, precision=precision)
    result.config = config.to_text()  # as asked: an empty batch size stays empty, resolved again on each device
    batch_size = batch_size or config.batch_size or default_batch_size(choice.device, config.backend)
    config = replace(config, batch_size=batch_size)
    if not choice.is_cuda:
        result.warn(f"running on the CPU: {choice.reason}")
    from engine.faces.detection import HaarDetector

    detector = HaarDetector(detect_scale=0.5)
    with result.stage("decode source"):
        # a source shrunk within the limit before any work may be larger, as upstream's resize_to_limit takes any
        # photo (a phone's 4032x3024 was refused at the 2560 limit, whatever --source-max-dim said)
        shrunk = 0 < config.source_max_dim <= settings.max_side
        source = load_image(config.source, max_side=LARGEST_MAX_SIDE if shrunk else settings.max_side)
        source_bgr = source_within_limits(source, config.source_max_dim, config.source_division)
    box = largest_face(source_bgr, detector)
    engine, folder = pick_engine(config, settings)
    if box is None and engine == "liveportrait" and folder is not None:
        box = _insightface_box(folder, source_bgr, result)
    if engine == "liveportrait":
        _refuse_a_gpu_backend_off_the_gpu(config.backend, choice)
    if box is None:  # a face the source limit shrank past finding is said to be lost to it, not missing
        limited = 0 < config.source_max_dim < max(source.shape[:2])  # shrunk, not only cut to source division
        lost = limited and largest_face(source, detector) is not None
        _faceless_source(config, engine, result, (source.shape, source_bgr.shape) if lost else None)
    if engine == "liveportrait" and config.backend == "torch":  # fp16 on the CPU: emulated, far slower than fp32
        precision_dtype(precision, caps)  # refused with what the device supports
    frames = driving_frames(config)  # a batch is never longer than the driving input
    _refuse_a_batch_over_memory(
        min(batch_size, frames or batch_size), source_bgr.shape, engine, precision, choice.device, settings
    )
    if folder is None and config.engine == "auto":
        result.warn(
            "no LivePortrait weights found: using the baseline engine (optical-flow motion transfer, not "
            f"LivePortrait). Put the official pretrained_weights (from the Hugging Face repository {HUB_REPO}) in "
            f"{settings.weights_dir / 'liveportrait'}, keeping their folders (`avatarbench weights get liveportrait` "
            "downloads them), or set AVATARBENCH_LIVEPORTRAIT_DIR to where they are, to use LivePortrait."
        )
    return Head(config, settings, result, choice.device, precision, detector, source_bgr, box, engine, folder)


def _insightface_box(folder: Path, source_bgr: np.ndarray, result: RunResult) -> np.ndarray | None:
    """Upstream finds the source's face with InsightFace's detector: where ours finds none and the user has
    InsightFace's models beside the weights, theirs looks too (a face ours misses is cropped, as upstream crops it);
    the run's `source_face` metric says so."""
    insightface = optional_insightface(folder, None)
    box = None if insightface is None else insightface.largest_box(source_bgr)
    if box is None:
        return None
    result.metrics["source_face"] = "insightface (our detector found none)"
    return box.astype(np.float64)


def _refuse_a_gpu_backend_off_the_gpu(backend: str, choice: DeviceChoice) -> None:
    """onnx-cuda and onnx-trt on a CPU job, before the export: ONNX Runtime fell back to its CPU provider after
    the export (20 s), or, with --device cpu on a GPU machine, ran on the GPU the job was told not to use, and the
    run said "on cpu" either way (as MuseTalk's GPU runtimes are refused)."""
    if backend in ("onnx-cuda", "onnx-trt") and not choice.is_cuda:
        raise SetupError(
            f"the {backend} backend runs LivePortrait on a CUDA GPU, and this job runs on the CPU ({choice.reason}); "
            "use --backend onnx-cpu or torch"
        )


def _faceless_source(
    config: PortraitConfig, engine: str, result: RunResult, shrunk: tuple[tuple[int, ...], tuple[int, ...]] | None
) -> None:
    """A source with no face found: LivePortrait animates it uncropped (--no-crop), as upstream does (a stylised
    face our detector misses), without what needs its landmarks; anything else is refused. `shrunk`: (the photo's
    shape, the shape the source limit left) where the face was found before the limit shrank it."""
    name = Path(config.source).name
    if shrunk is not None and (config.crop or engine == "baseline"):
        (height, width), (small_height, small_width) = shrunk[0][:2], shrunk[1][:2]
        raise PortraitError(
            f"no face found in the source {name} as --source-max-dim {config.source_max_dim} shrank it "
            f"({width}x{height} to {small_width}x{small_height}): give a larger one, or 0 (no limit)"
        )
    if config.crop or engine == "baseline":
        uncropped = " (LivePortrait with --no-crop animates the whole picture without one)" if config.crop else ""
        raise PortraitError(f"no face found in the source {name}: a frontal portrait is needed{uncropped}")
    if config.eye_open is not None or config.lip_open is not None or config.follows_driver:
        raise PortraitError(f"retargeting the eyes or lips measures the source's face, and none was found in {name}")
    result.warn(f"no face found in the source {name}: the whole picture is animated, without lip normalisation")


# What one frame of a batch holds at its peak, measured on the CPU in fp32 (peak RSS at batch 8 against batch 1, a
# face filling the source): the baseline about 50 bytes a source pixel since its warp works inside the face's reach
# (1280x1280: 611 to 1124 MiB; 2048x2048: 1047 to 2445 MiB; `/usr/bin/time -f %M avatarbench portrait --engine
# baseline --max-frames 16 --batch-size 1|8`, 2026-12-06), counted as 16 float32 maps; LivePortrait's paste-back
# at the source's size as 32 maps, and its networks about 470 MB more (issue #17: 4.7 GB at batch 8 against 1.4 GB
# at batch 1), half that in fp16 or bf16.
SOURCE_BYTES_PER_PIXEL = {"baseline": 16 * 4, "liveportrait": 32 * 4}
LIVEPORTRAIT_FRAME_BYTES = 470 * 2**20


def _refuse_a_batch_over_memory(
    batch: int, source_shape: tuple[int, ...], engine: str, precision: str, device: torch.device, settings: Settings
) -> None:
    """A batch whose frames cannot fit in the memory left is refused with one that fits, before any work (batch 256
    of a 1280x1280 source would need about 50 GB, and the out-of-memory killer would end the process)."""
    per_frame = SOURCE_BYTES_PER_PIXEL[engine] * source_shape[0] * source_shape[1]
    if engine == "liveportrait":
        per_frame += LIVEPORTRAIT_FRAME_BYTES // (1 if precision == "fp32" else 2)
    free = usable_gpu_memory(device) if device.type == "cuda" else usable_host_memory(settings.job_memory_gb)
    if batch > 1 and batch * per_frame > free:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise PortraitError(
            f"batch {batch} needs about {batch * per_frame / 2**30:.1f} GiB for its frames "
            f"({per_frame / 2**20:.0f} MiB each, {engine} on a {source_shape[1]}x{source_shape[0]} source) and "
            f"{free / 2**30:.1f} GiB of {where} is free for this job: use a batch size of at most "
            f"{max(1, int(0.75 * free) // per_frame)} (a quarter left for the rest), or a smaller source max dim"
        )
