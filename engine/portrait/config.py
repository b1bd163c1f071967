"""What a portrait animation is asked to do: the one source of `avatarbench portrait`'s flags, the `/portrait`
API's parameters and their checks. Light to import (no torch).

The output file and the device are not part of the request (see engine/lipsync/config.py for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import InputError
from engine.core.hls import stream_option
from engine.core.options import Config, option

ENGINES = ("auto", "liveportrait", "baseline")
BACKENDS = ("torch", "onnx-cpu", "onnx-cuda", "onnx-trt")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
REGIONS = ("all", "exp", "pose", "lip", "eyes")
DRIVING_OPTIONS = ("expression-friendly", "pose-friendly")
MAX_ANGLE = 45.0
MAX_OPENNESS = 0.8
MIN_SOURCE_DIM = 64  # a source shrunk below this has no face left to find
# What the weight-free baseline engine reads (the source's limits too: every engine's source is shrunk and cut by them
# first); every other option is LivePortrait's (the run says it was ignored).
BASELINE_OPTIONS = ("source", "driving", "engine", "source_max_dim", "source_division", "max_frames", "batch_size",
                    "multiplier", "save_template", "stream")  # fmt: skip
TEMPLATE_SUFFIXES = (".npz", ".pkl")  # motion templates: ours, and upstream LivePortrait's pickles


def is_template(path: str | Path) -> bool:
    return Path(path).suffix.lower() in TEMPLATE_SUFFIXES


# Upstream's crop defaults (its --scale and --vy_ratio; --scale_crop_driving_video and --vy_ratio_crop_driving_video)
SOURCE_SCALE, SOURCE_VY = 2.3, -0.125
DRIVING_SCALE, DRIVING_VY = 2.2, -0.1


class PortraitError(InputError):
    """The request cannot run; the message says what was wrong and what is accepted."""


@dataclass
class PortraitConfig(Config):
    error = PortraitError

    source: Path = option(help="the portrait (an image)", file=True)
    driving: Path = option(help="driving video, image, or motion template (our .npz or LivePortrait's .pkl)", file=True)
    engine: str = option(
        "auto", help="auto: LivePortrait when its weights are found, else the baseline", choices=ENGINES
    )
    weights: str | None = option(
        None, help="LivePortrait weights: the official pretrained_weights folder or its liveportrait/ subfolder, "
        "or hf:KwaiVGI/LivePortrait to download (empty: AVATARBENCH_LIVEPORTRAIT_DIR, then the Hub's local cache)",
    )  # fmt: skip
    backend: str = option("torch", help="how LivePortrait runs: PyTorch or our ONNX export", choices=BACKENDS)
    precision: str = option(
        "auto", help="auto: fp16 on a GPU that runs it fast (not compute capability 6.1), else fp32; the ONNX "
        "backends run fp32 or fp16", choices=PRECISIONS,
    )  # fmt: skip
    compile: bool = option(False, help="torch.compile the warping module and decoder (torch backend)")
    region: str = option("all", help="what the driver moves", choices=REGIONS)
    relative: bool = option(
        True, help="motion relative to the driver's first frame (off: absolute, the driver's own pose and position "
        "and upstream's subset of its expression, at the source's scale)",
    )  # fmt: skip
    driving_option: str = option("expression-friendly", help="how relative motion is applied", choices=DRIVING_OPTIONS)
    multiplier: float = option(1.0, help="scale of the driving motion", low=0.0, high=3.0)
    stitching: bool = option(True, help="the stitching network keeps the shoulders still")
    paste_back: bool = option(
        True, help="paste the animated crop back into the full image, as upstream only from a crop and with "
        "stitching (off: the 512x512 crop)",
    )  # fmt: skip
    crop: bool = option(
        True, help="crop around the face (off: the whole source image, stretched to the networks' square, is their "
        "view, and the output is their 512x512 frame)",
    )  # fmt: skip
    upright: bool = option(
        True, help="turn the source crop upright by the face's tilt (upstream's flag_do_rot; needs the landmark model; "
        "off: a crop square with the image)",
    )  # fmt: skip
    scale: float = option(
        SOURCE_SCALE, help="the source crop's side over the face's (upstream's --scale; larger: a smaller face)",
        low=1.0, high=4.0,
    )  # fmt: skip
    vx_ratio: float = option(
        0.0, help="move the source crop sideways by this share of its side (upstream's --vx_ratio)", low=-0.5,
        high=0.5,
    )  # fmt: skip
    vy_ratio: float = option(
        SOURCE_VY, help="move the source crop up or down by this share of its side (upstream's --vy_ratio; "
        "negative: more forehead)", low=-0.5, high=0.5,
    )  # fmt: skip
    source_max_dim: int = option(
        1280, help="shrink a source whose longer side is larger to this side first (upstream's --source_max_dim; "
        "0: no limit)", low=0, high=8192,
    )  # fmt: skip
    source_division: int = option(
        2, help="then cut the source's sides down to multiples of this (upstream's --source_division)", low=1, high=64
    )
    crop_driving: bool = option(
        False, help="crop the driving video or image around its face even when it is square (upstream's "
        "flag_crop_driving_video: a square one is otherwise taken whole, as a face-centred clip; one that is not "
        "square is always cropped)",
    )  # fmt: skip
    scale_crop_driving: float = option(
        DRIVING_SCALE, help="the driving crop's side over the face's (upstream's --scale_crop_driving_video)",
        low=1.0, high=4.0,
    )  # fmt: skip
    vx_ratio_crop_driving: float = option(
        0.0, help="move the driving crop sideways by this share of its side (upstream's "
        "--vx_ratio_crop_driving_video)", low=-0.5, high=0.5,
    )  # fmt: skip
    vy_ratio_crop_driving: float = option(
        DRIVING_VY, help="move the driving crop up or down by this share of its side (upstream's "
        "--vy_ratio_crop_driving_video)", low=-0.5, high=0.5,
    )  # fmt: skip
    pitch: float = option(0.0, help="extra head pitch in degrees", low=-MAX_ANGLE, high=MAX_ANGLE)
    yaw: float = option(0.0, help="extra head yaw in degrees", low=-MAX_ANGLE, high=MAX_ANGLE)
    roll: float = option(0.0, help="extra head roll in degrees", low=-MAX_ANGLE, high=MAX_ANGLE)
    eye_retargeting: bool = option(
        False, help="the eyes follow each driving frame's eye openness (upstream's eye retargeting; needs the "
        "landmark model; with relative motion only the retargeted eyes and lips move)",
    )  # fmt: skip
    lip_retargeting: bool = option(
        False, help="the lips follow each driving frame's lip openness (upstream's lip retargeting; needs the "
        "landmark model; with relative motion only the retargeted eyes and lips move)",
    )  # fmt: skip
    eye_open: float | None = option(
        None, help="instead, retarget the eyes to this one openness in every frame, 0: closed (empty: off)",
        low=0.0, high=MAX_OPENNESS,
    )  # fmt: skip
    lip_open: float | None = option(
        None, help="instead, retarget the lips to this one openness in every frame, 0: closed (empty: off)",
        low=0.0, high=MAX_OPENNESS,
    )  # fmt: skip
    landmarks: str | None = option(None, help="LivePortrait's landmark.onnx for retargeting (empty: in the weights)")
    normalize_lips: bool = option(
        False, help="close an open source mouth before relative motion (upstream's flag_normalize_lip; off there too)"
    )
    max_frames: int | None = option(None, help="stop after N driving frames (empty: all)", low=1, high=10**7)
    batch_size: int | None = option(
        None, help="frames rendered per batch (empty: 8 on a GPU, 1 on the CPU, where bigger batches are slower per "
        "frame and need more memory)", low=1, high=256,
    )  # fmt: skip
    save_template: bool = option(False, help="also save the driving motion as a template (.npz beside the video)")
    stream: bool = stream_option()

    def problems(self) -> list[str]:
        out = []
        if self.compile and self.backend != "torch":
            out.append("torch.compile applies to the torch backend only")
        if self.backend != "torch" and self.precision == "bf16":
            out.append("the ONNX backends run fp32 or fp16, not bf16")
        for part, name in (("eye", "eyes"), ("lip", "lips")):
            if getattr(self, f"{part}_retargeting") and getattr(self, f"{part}_open") is not None:
                out.append(f"the {name} follow the driver ({part} retargeting) or one openness ({part} open), not both")
        files = {"source": self.source, "driving": self.driving}
        if self.landmarks:  # named but missing, it was passed over in silence when no retargeting asked for it
            files["landmarks"] = self.landmarks
        for name, file in files.items():
            path = Path(file)
            if path.is_dir():
                out.append(f"{name} {path.name} is a folder; give a file")
            elif not path.is_file():
                out.append(f"{name} file not found: {path.name}")
        if 0 < self.source_max_dim < MIN_SOURCE_DIM:
            out.append(f"source max dim {self.source_max_dim} leaves no face to find: give 0 (no limit) or at least "
                       f"{MIN_SOURCE_DIM}")  # fmt: skip
        return out

    @property
    def follows_driver(self) -> bool:
        """The eyes or the lips are retargeted to each driving frame's openness (upstream's retargeting)."""
        return self.eye_retargeting or self.lip_retargeting

    @property
    def rotation(self) -> tuple[float, float, float]:
        return self.pitch, self.yaw, self.roll


def changed_nothing(config: PortraitConfig, names: tuple[str, ...]) -> str | None:
    """The options among `names` given other than their defaults, as the flags that gave them (`--no-upright` for
    upright turned off) and with the verb that agrees: "--scale changes nothing here", "--yaw, --roll change
    nothing here"; None where none was given. Runs name so the options that had no effect."""
    defaults = PortraitConfig(config.source, config.driving)
    turned_off = {name for name in names if getattr(config, name) is False and getattr(defaults, name) is True}
    flags = [
        ("--no-" if name in turned_off else "--") + name.replace("_", "-")
        for name in names
        if getattr(config, name) != getattr(defaults, name)
    ]
    if not flags:
        return None
    return f"{', '.join(flags)} {'changes' if len(flags) == 1 else 'change'} nothing here"


__all__ = [
    "BACKENDS",
    "DRIVING_OPTIONS",
    "ENGINES",
    "PRECISIONS",
    "REGIONS",
    "PortraitConfig",
    "PortraitError",
    "changed_nothing",
]
