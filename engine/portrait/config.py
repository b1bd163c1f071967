"""What a portrait animation is asked to do: the one source of `avatarbench portrait`'s flags, the `/portrait`
API's parameters and their checks. Light to import (no torch).

The output file and the device are not part of the request (see engine/lipsync/config.py for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import InputError
from engine.core.options import Config, option

ENGINES = ("auto", "liveportrait", "baseline")
BACKENDS = ("torch", "onnx-cpu", "onnx-cuda", "onnx-trt")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
REGIONS = ("all", "exp", "pose", "lip", "eyes")
DRIVING_OPTIONS = ("expression-friendly", "pose-friendly")
MAX_ANGLE = 45.0
MAX_OPENNESS = 0.8


class PortraitError(InputError):
    """The request cannot run; the message says what was wrong and what is accepted."""


@dataclass
class PortraitConfig(Config):
    error = PortraitError

    source: Path = option(help="the portrait (an image)", file=True)
    driving: Path = option(help="driving video, image, or motion template (.npz)", file=True)
    engine: str = option(
        "auto", help="auto: LivePortrait when its weights are found, else the baseline", choices=ENGINES
    )
    weights: str | None = option(
        None, help="LivePortrait weights folder, or hf:KwaiVGI/LivePortrait to download (empty: "
        "AVATARBENCH_LIVEPORTRAIT_DIR, then the Hub's local cache)",
    )  # fmt: skip
    backend: str = option("torch", help="how LivePortrait runs: PyTorch or our ONNX export", choices=BACKENDS)
    precision: str = option(
        "auto", help="auto: fp16 on CUDA, fp32 on the CPU; the ONNX backends run fp32 or fp16", choices=PRECISIONS
    )
    compile: bool = option(False, help="torch.compile the warping module and decoder (torch backend)")
    region: str = option("all", help="what the driver moves", choices=REGIONS)
    relative: bool = option(True, help="motion relative to the driver's first frame (off: the driver's own pose)")
    driving_option: str = option("expression-friendly", help="how relative motion is applied", choices=DRIVING_OPTIONS)
    multiplier: float = option(1.0, help="scale of the driving motion", low=0.0, high=3.0)
    stitching: bool = option(True, help="the stitching network keeps the shoulders still")
    paste_back: bool = option(True, help="paste the animated crop back into the full image (off: the 512x512 crop)")
    crop: bool = option(True, help="crop around the face (off: the whole source image is the network's view)")
    pitch: float = option(0.0, help="extra head pitch in degrees", low=-MAX_ANGLE, high=MAX_ANGLE)
    yaw: float = option(0.0, help="extra head yaw in degrees", low=-MAX_ANGLE, high=MAX_ANGLE)
    roll: float = option(0.0, help="extra head roll in degrees", low=-MAX_ANGLE, high=MAX_ANGLE)
    eye_open: float | None = option(
        None, help="retarget the eyes to this openness, 0: closed (empty: no retargeting)", low=0.0, high=MAX_OPENNESS
    )
    lip_open: float | None = option(
        None, help="retarget the lips to this openness, 0: closed (empty: no retargeting)", low=0.0, high=MAX_OPENNESS
    )
    landmarks: str | None = option(None, help="LivePortrait's landmark.onnx for retargeting (empty: in the weights)")
    normalize_lips: bool = option(True, help="close an open source mouth before animating")
    max_frames: int | None = option(None, help="stop after N driving frames (empty: all)", low=1)
    batch_size: int = option(8, help="frames rendered per batch", low=1, high=256)
    save_template: bool = option(False, help="also save the driving motion as a template (.npz beside the video)")

    def problems(self) -> list[str]:
        out = []
        if self.compile and self.backend != "torch":
            out.append("torch.compile applies to the torch backend only")
        if self.backend != "torch" and self.precision == "bf16":
            out.append("the ONNX backends run fp32 or fp16, not bf16")
        for name in ("source", "driving"):
            path = Path(getattr(self, name))
            if not path.is_file():
                out.append(f"{name} file not found: {path.name}")
        return out

    @property
    def rotation(self) -> tuple[float, float, float]:
        return self.pitch, self.yaw, self.roll


__all__ = ["BACKENDS", "DRIVING_OPTIONS", "ENGINES", "PRECISIONS", "REGIONS", "PortraitConfig", "PortraitError"]
