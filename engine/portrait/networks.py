"""LivePortrait's networks as a run loads them and runs each: in PyTorch in the chosen precision (the motion
extractor in strict fp32; optionally compiled at one fixed batch shape), or through ONNX Runtime
(engine/portrait/onnx_backend.py, fp32 on its CPU provider), and the optional landmark model beside them. One
module because the loaded networks are what the cache keeps between runs and what the benchmarks time."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from engine.core.device import apply_backend_flags, pad_batch
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.config import PortraitConfig
from engine.portrait.insightface import optional_insightface
from engine.portrait.landmarks import LandmarkModel
from engine.portrait.motion import KeypointInfo, keypoint_info

COMPILE_BACKEND = "inductor"  # tests use "eager" to check the plumbing without a C++ toolchain


class Networks:
    """The loaded networks and how to run each in the chosen precision (optionally compiled at `batch` rows)."""

    def __init__(
        self, folder: Path, device: torch.device, precision: str, compile: bool = False, batch: int = 8
    ) -> None:
        from engine.models.liveportrait import load_liveportrait

        self.nets = load_liveportrait(folder, device)
        self.retargeting = self.nets.retargeting
        self.device, self.precision = device, precision
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.autocast = half is not None
        self.half = half
        self.warping, self.decoder = self.nets.warping, self.nets.decoder
        self.batch = batch if compile else None
        if compile:
            self.warping = torch.compile(self.warping, backend=COMPILE_BACKEND, dynamic=False)
            self.decoder = torch.compile(self.decoder, backend=COMPILE_BACKEND, dynamic=False)

    def amp(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.half)

    @torch.inference_mode()
    def motion(self, images: torch.Tensor) -> KeypointInfo:
        apply_backend_flags(tf32=False)  # strict fp32: TF32 shifts the pose logits
        return keypoint_info(self.nets.motion(images.float()))

    @torch.inference_mode()
    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        with self.amp():
            return self.nets.appearance(image).float()

    @torch.inference_mode()
    def warp(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        """The source features moved to the driving keypoints: (B, 256, 64, 64)."""
        b = x_driving.shape[0]
        rows = self.batch or b
        with self.amp():
            warped = self.warping(
                feature.expand(rows, -1, -1, -1, -1),
                kp_driving=pad_batch(x_driving, rows),
                kp_source=x_source.expand(rows, -1, -1),
            )
            return warped["out"][:b]

    @torch.inference_mode()
    def decode(self, warped: torch.Tensor) -> torch.Tensor:
        """(B, 3, 512, 512) frames in [0, 1]."""
        b = warped.shape[0]
        with self.amp():
            return self.decoder(pad_batch(warped, self.batch or b))[:b].float()

    def render(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        return self.decode(self.warp(feature, x_source, x_driving))


def optional_landmark_model(
    config: PortraitConfig, folder: Path, result: RunResult, device: torch.device
) -> LandmarkModel | None:
    """LivePortrait's optional landmark model (the source's upright crop, the driving crop's box from the driver's
    followed landmarks, the eyes' and lips' openness of the source and, when asked, of the driver, for retargeting
    and lip normalisation), on the run's GPU where it has one. Retargeting asked for explicitly needs the model;
    otherwise it is used when it is there. InsightFace's models beside the weights (`buffalo_folder`) go with it:
    upstream's cropper needs both."""
    retargeting = config.eye_open is not None or config.lip_open is not None or config.follows_driver
    path = Path(config.landmarks or folder / "landmark.onnx")
    if not retargeting and not path.is_file():
        result.metrics["landmarks"] = f"none (no {path}): axis-aligned crop, no lip normalisation"
        if config.normalize_lips:
            result.warn(f"--normalize-lips needs LivePortrait's landmark model ({path} is missing): not applied")
        return None
    cuda_device = (device.index or 0) if device.type == "cuda" else None
    insightface = optional_insightface(folder, cuda_device)
    model = LandmarkModel(path, cuda_device, insightface)
    if model.fallback:
        result.warn(f"{path.name} runs on the CPU, not {device}: {model.fallback}")
    for name, reason in insightface.fallbacks if insightface is not None else []:
        result.warn(f"{name} runs on the CPU, not {device}: {reason}")
    return model


def onnx_precision(config: PortraitConfig, precision: str, device: torch.device, result: RunResult) -> str:
    """fp16 needs the CUDA or TensorRT provider on a CUDA device; ONNX Runtime's CPU provider runs fp32."""
    if precision == "fp16" and (config.backend == "onnx-cpu" or device.type != "cuda"):
        result.warn(f"{config.backend} on {device} runs fp32 (fp16 needs the CUDA or TensorRT provider on a GPU)")
        return "fp32"
    return precision


def load_networks(
    config: PortraitConfig, settings: Settings, folder: Path, device: torch.device, precision: str
) -> Any:
    if config.backend == "torch":
        return Networks(folder, device, precision, config.compile, config.batch_size)
    from engine.portrait.onnx_backend import onnx_networks

    batch = config.batch_size if config.backend == "onnx-trt" else None  # one TensorRT engine per network
    return onnx_networks(folder, settings.cache_dir, config.backend, device.index or 0, precision, batch)
