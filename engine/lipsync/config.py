"""What a lip-sync run is asked to do: the one source of `avatarbench lipsync`'s flags, the `/lipsync` API's
parameters and their checks. Light to import (no torch), so the CLI starts fast.

Where the result goes (`out`) and which device runs it are not part of the request: the CLI names the file and
the device, the app writes into its outputs folder on the device its settings (or its job placement) choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import InputError
from engine.core.hls import stream_option
from engine.core.options import Config, TextForm, is_whole_number, number_tuple, option, subset_config
from engine.faces import DETECTORS

ENGINES = ("auto", "wav2lip", "musetalk", "baseline")
MUSETALK_VERSIONS = ("v15", "v1")
PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")
PASTE_MODES = ("blend", "upstream")


class LipSyncError(InputError):
    """Options or inputs the pipeline cannot use; the message says what is accepted."""


def parse_box(text: str | None) -> tuple[int, int, int, int] | None:
    """'X1,Y1,X2,Y2' (commas or spaces) -> a box; empty -> None (detect every frame)."""
    if not text or not str(text).strip():
        return None
    parts = str(text).replace(",", " ").split()
    if len(parts) != 4 or not all(is_whole_number(p) for p in parts):
        negative = len(parts) == 4 and all(is_whole_number(p.removeprefix("-")) for p in parts)
        raise LipSyncError(
            f"{text!r}: pixel coordinates are 0 or more (the image's top left is 0,0): X1,Y1,X2,Y2"
            if negative
            else f"{text!r} must be four pixel coordinates: X1,Y1,X2,Y2"
        )
    x1, y1, x2, y2 = (int(p) for p in parts)
    if x2 <= x1 or y2 <= y1:
        raise LipSyncError(f"{text!r} is empty: X2 must exceed X1 and Y2 exceed Y1")
    return x1, y1, x2, y2


def _format_box(box: Any) -> str:
    return ",".join(str(int(v)) for v in box)


@dataclass
class LipSyncConfig(Config):
    error = LipSyncError

    face: Path = option(help="face image or video", file=True)
    audio: Path = option(help="speech: any audio file, or a video's sound track", file=True)
    engine: str = option(
        "auto", help="auto: Wav2Lip when a checkpoint is found, else the baseline; musetalk needs its weights",
        choices=ENGINES,
    )  # fmt: skip
    checkpoint: str | None = option(None, help="Wav2Lip checkpoint: a path or hf:OWNER/REPO/FILE (empty: settings)")
    batch_size: int | None = option(
        None,
        help="frames per batch (empty: from free GPU memory; on the CPU, Wav2Lip 16, fewer for large frames, and "
        "MuseTalk 2)",
        low=1,
        high=4096,
    )
    precision: str = option(
        "auto", help="auto: fp16 on a GPU that runs it fast (not compute capability 6.1), else fp32", choices=PRECISIONS
    )
    compile: bool = option(False, help="torch.compile the generator")
    check_precision: bool = option(
        False, help="Wav2Lip at fp16 or bf16: also run the first frames in fp32 (a second copy of the generator, "
        "once) and report how far the output is from it, in grey levels",
    )  # fmt: skip
    pads: tuple[int, ...] = option(
        (0, 10, 0, 0), help="pixels added to the face box: TOP,BOTTOM,LEFT,RIGHT (negative: taken off)", low=-200,
        high=200,
        text=number_tuple(int, 4, example="0,10,0,0"),
    )  # fmt: skip
    smooth: bool = option(True, help="smooth face boxes over time")
    box: tuple[int, ...] | None = option(
        None, help="fixed face box X1,Y1,X2,Y2 in pixels (left, top, right, bottom; upstream's --box is TOP,BOTTOM,"
        "LEFT,RIGHT): no detection at all (empty: detect)",
        text=TextForm(parse_box, _format_box),
    )  # fmt: skip
    detector: str = option("haar", help="face detector (s3fd needs s3fd.pth)", choices=DETECTORS)
    detector_checkpoint: str | None = option(None, help="s3fd.pth for the s3fd detector (empty: settings)")
    detect_scale: float = option(
        0.5, help="detect on frames scaled by this (1: whole frames, as upstream runs s3fd)", low=0.1, high=1.0
    )
    paste: str = option("blend", help="blend: feathered lower face; upstream: Wav2Lip's own paste", choices=PASTE_MODES)
    fps: float = option(
        25.0, help="frames per second of the video made from a still photo (upstream's --fps; a video keeps its own)",
        low=1.0, high=120.0,
    )  # fmt: skip
    static: bool = option(
        False, help="Wav2Lip: a face video's first frame only, held for the whole speech at the video's frame rate "
        "(upstream's --static)",
    )  # fmt: skip
    resize_factor: int = option(
        1, help="Wav2Lip: shrink a face video by this factor first (upstream's --resize_factor: faster, and the "
        "output has that size)", low=1, high=16,
    )  # fmt: skip
    rotate: bool = option(
        False, help="Wav2Lip: turn a face video a quarter clockwise after the shrink (upstream's --rotate)"
    )
    crop: tuple[int, ...] = option(
        (0, -1, 0, -1), help="Wav2Lip: keep rows TOP..BOTTOM and columns LEFT..RIGHT of a face video after the shrink "
        "and turn, -1: to the last (upstream's --crop)", low=-1, high=8192,
        text=number_tuple(int, 4, example="0,720,0,-1"),
    )  # fmt: skip
    audio_offset: int = option(0, help="shift the speech by N frames (+: the lips were late)", low=-25, high=25)
    stream: bool = stream_option()
    musetalk_weights: str | None = option(
        None, help="MuseTalk weights: a folder in upstream's models/ layout, or hf:OWNER/REPO (empty: settings)"
    )
    musetalk_version: str = option("v15", help="MuseTalk version: v15 (1.5) or v1 (1.0)", choices=MUSETALK_VERSIONS)
    bbox_shift: int = option(
        0, help="MuseTalk: move the face box's top by N pixels (+: more mouth); v1.5 too, where upstream's scripts "
        "fix it at 0", low=-100, high=100,
    )  # fmt: skip
    musetalk_extra_margin: int | None = option(
        None, help="MuseTalk: pixels added below the face box, clipped to the frame (upstream's --extra_margin; "
        "empty: 10 for v1.5, 0 for v1)", low=0, high=200,
    )  # fmt: skip
    musetalk_parsing_mode: str = option(
        "auto", help="MuseTalk: which parsed parts are pasted (upstream's --parsing_mode): jaw (v1.5's), raw (v1's), "
        "neck; auto: the version's", choices=("auto", "jaw", "raw", "neck"),
    )  # fmt: skip
    musetalk_cheek_widths: tuple[int, ...] = option(
        (90, 90), help="MuseTalk: LEFT,RIGHT cheek widths the jaw mode's mask keeps (upstream's --left_cheek_width "
        "and --right_cheek_width)", low=0, high=256, text=number_tuple(int, 2, example="90,90"),
    )  # fmt: skip
    musetalk_blur: float = option(
        0.1, help="MuseTalk: the paste-back mask's Gaussian blur, its kernel as a fraction of the blend region's side: "
        "0.1 as upstream's realtime_inference.py (prepared avatars), 0.05 as its inference.py", low=0.0, high=0.5,
    )  # fmt: skip
    musetalk_person_box: bool = option(
        False, help="MuseTalk: DWPose looks inside YOLOX's best person box (dwpose/yolox_l.onnx) rather than the whole "
        "frame as upstream does (for small faces in wide shots)",
    )  # fmt: skip
    musetalk_runtime: str = option(
        "eager", help="MuseTalk: how the UNet and decoder run: eager (upstream's numerics), compile (torch.compile), "
        "cuda-graphs (CUDA only), onnx (ONNX Runtime on the job's device), tensorrt (ORT's TensorRT); all but eager "
        "pad every batch to the batch size, and the first batch compiles or exports (ONNX exports are cached)",
        choices=("eager", "compile", "cuda-graphs", "onnx", "tensorrt"),
    )  # fmt: skip

    def problems(self) -> list[str]:
        """A crop that keeps nothing whatever the video's size, refused at submit (it failed in the worker)."""
        top, bottom, left, right = self.crop
        given = ",".join(map(str, self.crop))
        if top < 0 or left < 0:
            return [f"crop {given}: TOP and LEFT are 0 or more (-1 is for BOTTOM and RIGHT: to the last row or column)"]
        if (bottom != -1 and bottom <= top) or (right != -1 and right <= left):
            return [f"crop {given} keeps no pixels: TOP must be below BOTTOM and LEFT below RIGHT (or -1: the last)"]
        return []


def box_passed_over(config: LipSyncConfig, flags: dict[str, str]) -> str | None:
    """With a fixed --box, the set detection options among `flags` (field -> its flag), which it makes no use of."""
    unused = [flag for name, flag in flags.items() if getattr(config, name) != getattr(LipSyncConfig, name)]
    if config.box is None or not unused:
        return None
    return f"a fixed --box is used as it is: {', '.join(unused)} (for detected boxes) changed nothing"


def fps_passed_over(config: LipSyncConfig, video_fps: float) -> str | None:
    """--fps given with a face video, which keeps its own rate (upstream's --fps applies to a still only): said
    rather than dropped."""
    if config.fps == LipSyncConfig.fps:
        return None
    return f"--fps applies to a still face: the video keeps its own {video_fps:g} fps"


def one_frame_words(name: str, fps: float, video_fps: float) -> str:
    """A video of one frame (a one-frame GIF) is lip-synced as a still face at --fps: its frame rate is only its
    container's default (FFmpeg reads a GIF without delays at 100 fps), and taken as a video it was repeated at
    that rate, with the same face detected on every copy. Upstream's Wav2Lip plays it at that rate."""
    return f"{name} has one frame: lip-synced as a still face at {fps:g} fps (--fps), not its container's {video_fps:g}"


def bbox_shift_words(metrics: dict[str, Any]) -> str | None:
    """The --bbox-shift range a MuseTalk result holds, in words, as upstream prints it after finding the boxes (its
    README: run once, then choose a value inside); None where the boxes were not made from landmarks."""
    found = metrics.get("bbox_shift_range")
    if not found:
        return None
    low, high = found
    return (
        f"--bbox-shift range for this face: {low} to {high} (from its nose landmarks, as upstream suggests; + shows "
        f"more mouth), used: {metrics.get('bbox_shift', 0)}"
    )


def precision_summary(precision: str, check: dict[str, Any]) -> str:
    """--check-precision's finding (the result's `precision_check`) in words."""
    where = f"{precision} against fp32 on the first {check['frames']} frames"
    if check["max_grey_levels"] is None:
        return f"{where}: NaN or infinite values"
    return f"{where}: up to {check['max_grey_levels']:.2f} grey levels apart (mean {check['mean_grey_levels']:.3f})"


# `avatarbench avatar`: a face prepared once into a MuseTalk avatar, with lipsync's own options for it.
AvatarConfig = subset_config(
    LipSyncConfig,
    "AvatarConfig",
    ("face", "batch_size", "precision", "box", "detector", "detector_checkpoint", "detect_scale", "musetalk_weights",
     "musetalk_version", "bbox_shift", "musetalk_extra_margin", "musetalk_parsing_mode", "musetalk_cheek_widths",
     "musetalk_blur", "musetalk_person_box"),
    "A face (image or video) prepared into a MuseTalk avatar kept for later lip-syncs of it (DATA_DIR/avatars).",
)  # fmt: skip


__all__ = [
    "DETECTORS",
    "ENGINES",
    "MUSETALK_VERSIONS",
    "PASTE_MODES",
    "PRECISIONS",
    "AvatarConfig",
    "LipSyncConfig",
    "LipSyncError",
    "bbox_shift_words",
    "box_passed_over",
    "fps_passed_over",
    "parse_box",
    "precision_summary",
]
