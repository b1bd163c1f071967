"""Images as model inputs: resize, channel order, scaling and layout for image models in ONNX eval.

Users evaluating a classifier or a depth model have pictures, not .npz files. This turns a list of
images into the one input tensor the model expects: the layout (NCHW or NHWC) and the channel count
come from the input's shape, the size from its height and width (symbolic ones must be given), and
the values from the chosen scaling. Every choice is explicit in the options, so a report says exactly
how the tensor was made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.core.errors import InputError
from engine.onnx.config import CHANNEL_ORDERS, MAX_IMAGES, RESIZE_MODES

if TYPE_CHECKING:  # onnx_model imports onnx; the CLI imports this module for its option lists
    from engine.onnx.model import TensorSpec

SCALINGS = {
    # name: (multiplier applied to 0..255 values, mean, std) per channel in RGB order
    "0-1": (1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "-1-1": (1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0-255": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class ImageInputError(InputError):
    """The images cannot become this model's input; the message says why and what is accepted."""


@dataclass(frozen=True)
class ImageOptions:
    resize: str = "stretch"  # stretch to the input size, centre-crop after resizing, or letterbox (grey pad)
    scaling: str = "0-1"  # see SCALINGS; integer inputs take raw 0-255 pixel values only
    channels: str = "rgb"  # order the model was trained with; OpenCV decodes BGR
    max_side: int = 8192  # larger images (and any over MAX_PIXELS) are refused from their header, undecoded

    def validate(self) -> None:
        problems = []
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.scaling not in SCALINGS:
            problems.append(f"scaling {self.scaling!r} is not one of {', '.join(SCALINGS)}")
        if self.channels not in CHANNEL_ORDERS:
            problems.append(f"channels {self.channels!r} is not one of {', '.join(CHANNEL_ORDERS)}")
        if problems:
            raise ImageInputError("invalid image options: " + "; ".join(problems))


@dataclass(frozen=True)
class ImageLayout:
    channels_first: bool
    channels: int
    height: int
    width: int


def image_layout(spec: TensorSpec, values: dict[str, int]) -> ImageLayout:
    """NCHW or NHWC from a rank-4 input whose channel axis holds 1 or 3; height and width must be known."""
    if len(spec.shape) != 4:
        raise ImageInputError(
            f"input {spec.name!r} has shape {spec.shape}; images need a rank-4 input (N,C,H,W or N,H,W,C)"
        )

    def size(dim: int | str | None) -> int | None:
        return dim if isinstance(dim, int) else values.get(dim) if isinstance(dim, str) else None

    _, d1, d2, d3 = (size(d) for d in spec.shape)
    if d1 in (1, 3):
        layout = ImageLayout(True, d1, d2, d3)  # type: ignore[arg-type]
        hw_names = spec.shape[2:]
    elif d3 in (1, 3):
        layout = ImageLayout(False, d3, d1, d2)  # type: ignore[arg-type]
        hw_names = spec.shape[1:3]
    else:
        raise ImageInputError(
            f"input {spec.name!r} {spec.shape}: no channel axis of 1 or 3 in position 1 (NCHW) or 3 (NHWC)"
        )
    if not layout.height or not layout.width or layout.height < 1 or layout.width < 1:
        unset = [str(d) for d in hw_names if not isinstance(d, int)]
        raise ImageInputError(
            f"input {spec.name!r} {spec.shape}: height and width must be known to resize images; "
            + (f"give values for {', '.join(unset)}" if unset else "a fixed size of 0 holds no image")
        )
    at_one = [str(d) for d, v in zip(hw_names, (layout.height, layout.width), strict=True) if v == 1 and d != 1]
    if at_one:  # one symbol at 1 squashed every image to a line
        raise ImageInputError(
            f"input {spec.name!r} {spec.shape}: height and width are {layout.height}x{layout.width} (symbols at "
            f"their default 1); give real values for {', '.join(at_one)}"
        )
    if (layout.height, layout.width) == (1, 1):
        raise ImageInputError(
            f"input {spec.name!r} {spec.shape}: the model fixes its height and width at 1x1, which holds no image; "
            "evaluate it without images (random or .npz inputs)"
        )
    return layout


def looks_like_images(shape: list[int | str | None]) -> bool:
    """Rank 4 with a channel axis of 1 or 3: a batch of images, N,C,H,W or N,H,W,C (its first dimension is N)."""
    return len(shape) == 4 and (shape[1] in (1, 3) or shape[3] in (1, 3))


def looks_like_one_image(shape: list[int | str | None]) -> bool:
    """Rank 3 with a channel axis of 1 or 3 first or last and a picture's height and width (at least 8, neither over
    4x the other): C,H,W or H,W,C, whose first dimension is not a batch ([8, 1024, 3], 8 point clouds, is none)."""
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        return False
    dims = [int(d) for d in shape]  # type: ignore[arg-type]
    for channels, (height, width) in ((dims[0], dims[1:]), (dims[2], dims[:2])):
        if channels in (1, 3) and min(height, width) >= 8 and max(height, width) <= 4 * min(height, width):
            return True
    return False


def pick_image_input(inputs: list[TensorSpec], name: str | None) -> TensorSpec:
    """The named input, or the first rank-4 numeric input with a channel axis of 1 or 3."""
    if name:
        for spec in inputs:
            if spec.name == name:
                return spec
        raise ImageInputError(f"no input {name!r}; the model's inputs are {', '.join(s.name for s in inputs)}")
    for spec in inputs:
        if looks_like_images(spec.shape) and spec.dtype not in ("bool", "string"):
            return spec
    shapes = ", ".join(f"{spec.name} {spec.shape}" for spec in inputs)
    raise ImageInputError(
        "no input looks like an image batch (rank 4 with a channel axis of 1 or 3); name the one the images fill "
        f"with --image-input (the model's inputs: {shapes})"
    )


def _fit(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if mode == "stretch":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if w > width else cv2.INTER_LINEAR)
    if mode == "crop":  # the centre the input's shape covers, cut before it is resized: resizing the whole image to
        # the covering scale first took the square of its long side (1.7 GB for a 16x8192 image into 1024x1024)
        scale = max(height / h, width / w)
        ch, cw = min(h, max(1, round(height / scale))), min(w, max(1, round(width / scale)))
        top, left = (h - ch) // 2, (w - cw) // 2
        centre = image[top : top + ch, left : left + cw]
        return cv2.resize(centre, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((height, width, 3), 114, dtype=np.uint8)  # the usual letterbox grey
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return canvas


def images_to_tensor(
    paths: list[str | os.PathLike], spec: TensorSpec, values: dict[str, int], options: ImageOptions
) -> np.ndarray:
    """One array with a leading image axis (len(paths) images), in the input's layout and dtype."""
    from engine.core.media import MediaError, load_image

    options.validate()
    if not paths:
        raise ImageInputError("no images given")
    if len(paths) > MAX_IMAGES:
        raise ImageInputError(f"{len(paths)} images; at most {MAX_IMAGES} per evaluation")
    layout = image_layout(spec, values)
    try:
        dtype: np.dtype | None = spec.numpy_dtype()
    except TypeError:
        dtype = None
    if dtype is None or not (spec.is_float or dtype.kind in "iu"):
        raise ImageInputError(
            f"input {spec.name!r} is {spec.type_name}; images fill float (16, 32 or 64 bits, bfloat16, float8) or "
            "integer (8 to 64 bits) inputs"
        )
    if dtype.kind in "iu" and options.scaling != "0-255":
        raise ImageInputError(
            f"input {spec.name!r} is {dtype}: integer inputs take raw pixel values, so use scaling '0-255'"
        )
    frames = []
    for path in paths:
        try:
            bgr = load_image(path, max_side=options.max_side)
        except MediaError as exc:
            raise ImageInputError(str(exc)) from None
        frames.append(_fit(bgr, layout.height, layout.width, options.resize))
    batch = np.stack(frames)  # N,H,W,3 uint8 BGR
    if layout.channels == 1:
        grey = batch.astype(np.float32) @ np.array([0.114, 0.587, 0.299], dtype=np.float32)  # BT.601 from BGR
        pixels = grey[..., None]
    else:
        pixels = batch[..., ::-1] if options.channels == "rgb" else batch
        pixels = pixels.astype(np.float32)
    multiplier, mean, std = SCALINGS[options.scaling]
    if spec.is_float:
        mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if options.channels == "bgr":
            mean_a, std_a = mean_a[::-1], std_a[::-1]
        if layout.channels == 1:
            mean_a, std_a = mean_a.mean(keepdims=True), std_a.mean(keepdims=True)
        pixels = (pixels * np.float32(multiplier) - mean_a) / std_a
    else:
        pixels = np.clip(np.rint(pixels), 0, min(255, np.iinfo(dtype).max))
    tensor = pixels.astype(dtype)
    if layout.channels_first:
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor)


__all__ = [
    "CHANNEL_ORDERS",
    "RESIZE_MODES",
    "SCALINGS",
    "ImageInputError",
    "ImageLayout",
    "ImageOptions",
    "image_layout",
    "images_to_tensor",
    "looks_like_images",
    "looks_like_one_image",
    "pick_image_input",
]
