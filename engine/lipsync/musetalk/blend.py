"""MuseTalk's paste-back: a face-parsing mask per avatar frame (prepared once) and a cheap composite per output frame.

Upstream: musetalk/utils/face_parsing/__init__.py (FaceParsing: the parser's input, the parsing modes) and
musetalk/utils/blending.py (get_image_prepare_material, get_image_blending, get_image). The blend region is a
square around the face box (geometry.blend_region); BiSeNet labels that region resized to 512x512; the chosen mode
turns the labels into a 0/255 mask, which is resized back to the region (PIL bicubic), cut to the face box, cut to
the lower half of the region and blurred (cv2 Gaussian); the generated face, resized to the box (cv2 bilinear),
replaces the box inside the region, and the region is alpha-composited into the frame with PIL's rounding.

Prepared avatars reuse the mask, the region and the frame for every speech clip, so `prepare_blend` runs once per
avatar frame (on the CPU, with PIL and OpenCV for upstream's exact resampling) and `blend_face` is all that runs per
generated frame (integer torch ops, on any device). Frames without a face have no plan and pass through unchanged.

Blur: upstream's real-time script (prepared avatars) blurs with a kernel of 10% of the region's side, its one-shot
script (get_image) with 5%; both are here (BLUR_PREPARED, BLUR_ONE_SHOT).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import cv2
import numpy as np
import torch

from engine.lipsync.musetalk.geometry import Box, blend_region

PARSING_SIZE = 512  # BiSeNet's input and output side
PARSING_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, RGB
PARSING_STD = (0.229, 0.224, 0.225)

# BiSeNet face-parsing classes (CelebAMask-HQ, 19 with background) that the modes use.
SKIN = 1
NOSE = 10
MOUTH = 11
UPPER_LIP = 12
LOWER_LIP = 13
NECK = 14

PARSING_MODES = ("jaw", "raw", "neck")  # v1.5 uses "jaw" by default; v1.0 always "raw"
CHEEK_WIDTH = 90  # v1.5 scripts' --left_cheek_width / --right_cheek_width (FaceParsing's own default is 80)
UPPER_BOUNDARY_RATIO = 0.5  # only the region's lower half is ever blended
BLUR_PREPARED = 0.1  # realtime_inference.py (get_image_prepare_material): kernel side / region side
BLUR_ONE_SHOT = 0.05  # inference.py (get_image)

# The jaw mode's dilation kernel: a cone (rows 10..20 of a 33x33 square, widening by 2 per row from a 1-pixel tip)
# on a 12-row stem as wide as the cone's base. Dilating with it (anchor at the centre) grows the skin 10 px sideways,
# 16 px upwards and up to 6 px downwards with tapered corners, so the mask reaches just past the parsed jaw line.
_CONE_ROWS = 21
_STEM_ROWS = 12
_CHEEK_ERODE = (35, 3)  # a flat ellipse: erodes the cheeks sideways only
_CHEEK_ERODE_ITERATIONS = 2

Frame = TypeVar("Frame", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------- parsing masks


@lru_cache(maxsize=1)
def jaw_kernel() -> np.ndarray:
    """The 33x33 uint8 kernel upstream's FaceParsing dilates the skin with in "jaw" mode."""
    side = _CONE_ROWS + _STEM_ROWS
    centre = side // 2
    kernel = np.zeros((side, side), dtype=np.uint8)
    for row in range(_CONE_ROWS // 2, _CONE_ROWS):
        half = row - _CONE_ROWS // 2
        kernel[row, centre - half : centre + half + 1] = 1
    base_half = int(kernel[_CONE_ROWS - 1].sum()) // 2
    kernel[_CONE_ROWS:, max(0, centre - base_half) : min(side, centre + base_half + 1)] = 1
    kernel.setflags(write=False)
    return kernel


@lru_cache(maxsize=8)
def cheek_mask(left_width: int = CHEEK_WIDTH, right_width: int = CHEEK_WIDTH) -> np.ndarray:
    """(512, 512) uint8: 255 on the outer columns (the cheeks, where the jaw mode erodes), 0 in the middle band.

    Columns 0 .. 256 - left_width and 256 + right_width .. 511, both ends included, as upstream's filled
    cv2.rectangle draws them.
    """
    mask = np.zeros((PARSING_SIZE, PARSING_SIZE), dtype=np.uint8)
    centre = PARSING_SIZE // 2
    mask[:, : max(0, centre - left_width + 1)] = 255
    mask[:, max(0, centre + right_width) :] = 255
    mask.setflags(write=False)
    return mask


def parsing_mask(
    labels: np.ndarray, mode: str = "jaw", cheek_widths: tuple[int, int] = (CHEEK_WIDTH, CHEEK_WIDTH)
) -> np.ndarray:
    """0/255 uint8 mask of what may be replaced, from BiSeNet's (512, 512) labels, as upstream's FaceParsing.

    "raw" (v1.0): skin, mouth and lips. "neck": those and the neck. "jaw" (v1.5): the skin dilated with
    jaw_kernel (so a moved jaw line is replaced, not ghosted), then eroded sideways outside the middle band
    (cheek_mask) so the cheeks keep the original, without the nose, plus mouth and lips.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {labels.shape}")
    if mode == "raw":
        keep = np.isin(labels, [SKIN, MOUTH, UPPER_LIP, LOWER_LIP])
    elif mode == "neck":
        keep = np.isin(labels, [SKIN, MOUTH, UPPER_LIP, LOWER_LIP, NECK])
    elif mode == "jaw":
        cheeks = cheek_mask(*cheek_widths)
        if labels.shape != cheeks.shape:
            raise ValueError(f"the jaw mode needs BiSeNet's {PARSING_SIZE}x{PARSING_SIZE} labels, got {labels.shape}")
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, jaw_kernel(), iterations=1)
        cheek_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, _CHEEK_ERODE)
        eroded = cv2.erode(dilated, cheek_kernel, iterations=_CHEEK_ERODE_ITERATIONS)
        region = cv2.bitwise_or(cv2.bitwise_and(eroded, cheeks), cv2.bitwise_and(dilated, cv2.bitwise_not(cheeks)))
        keep = ((region == 255) & (labels != NOSE)) | np.isin(labels, [MOUTH, UPPER_LIP, LOWER_LIP])
    else:
        raise ValueError(f"unknown parsing mode {mode!r}; accepted: {', '.join(PARSING_MODES)}")
    return np.where(keep, 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------- the parser's input and output


def region_pixels(frame: np.ndarray, region: Box) -> np.ndarray:
    """The frame's pixels in the region, black where the region reaches past the frame (as PIL's crop)."""
    x1, y1, x2, y2 = region
    out = np.zeros((y2 - y1, x2 - x1, frame.shape[2]), dtype=frame.dtype)
    fx1, fy1, fx2, fy2 = max(x1, 0), max(y1, 0), min(x2, frame.shape[1]), min(y2, frame.shape[0])
    if fx2 > fx1 and fy2 > fy1:
        out[fy1 - y1 : fy2 - y1, fx1 - x1 : fx2 - x1] = frame[fy1:fy2, fx1:fx2]
    return out


def parser_input(region_bgr: np.ndarray) -> torch.Tensor:
    """BiSeNet's (1, 3, 512, 512) float32 input: the RGB region resized with PIL's bilinear filter (which
    antialiases when shrinking, unlike OpenCV's) and ImageNet-normalised in float32, as upstream does."""
    from PIL import Image

    rgb = np.ascontiguousarray(region_bgr[:, :, ::-1])
    resized = np.asarray(Image.fromarray(rgb).resize((PARSING_SIZE, PARSING_SIZE), Image.Resampling.BILINEAR))
    pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(PARSING_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(PARSING_STD, dtype=torch.float32)[:, None, None]
    return ((pixels - mean) / std).unsqueeze(0)


def parsing_labels(logits: torch.Tensor) -> np.ndarray:
    """BiSeNet's main-head logits (1, 19, H, W) or (19, H, W) -> (H, W) int64 labels (first maximum wins)."""
    scores = logits[0] if logits.ndim == 4 else logits
    return scores.argmax(0).cpu().numpy()


# --------------------------------------------------------------------------- prepare once, apply per frame


@dataclass(frozen=True)
class BlendPlan:
    """What one avatar frame's paste-back needs: where the face goes, the region, and its uint8 mask."""

    box: Box  # the face box the generated face is resized to (v1.5: with its extra margin)
    region: Box  # the blend region (may reach past the frame)
    mask: torch.Tensor  # uint8 (region height, region width); 0 leaves the frame's pixel as it is

    def to(self, device: torch.device | str) -> BlendPlan:
        """The same plan with its mask on `device`, so applying it costs no transfer."""
        return BlendPlan(self.box, self.region, self.mask.to(device))


def blur_kernel_size(region_side: int, blur_fraction: float = BLUR_PREPARED) -> int:
    """The odd Gaussian kernel side upstream computes: int(fraction * side // 2 * 2) + 1."""
    return int(blur_fraction * region_side // 2 * 2) + 1


def prepare_blend(
    box: Box | None,
    labels: np.ndarray | None,
    mode: str = "jaw",
    blur_fraction: float = BLUR_PREPARED,
    cheek_widths: tuple[int, int] = (CHEEK_WIDTH, CHEEK_WIDTH),
    upper_boundary_ratio: float = UPPER_BOUNDARY_RATIO,
) -> BlendPlan | None:
    """One avatar frame's blend plan from its face box and the labels BiSeNet gave for blend_region(box).

    None for a frame without a face (no box): such frames pass through unchanged. The mask follows upstream's
    get_image_prepare_material: the mode's mask resized to the region (PIL bicubic), kept only inside the face box
    and below upper_boundary_ratio of the region's height, blurred with sigma from the kernel size.
    """
    if box is None:
        return None
    if labels is None:
        raise ValueError("a frame with a face box needs its parsing labels")
    from PIL import Image

    region = blend_region(box)
    side = region[2] - region[0]
    if side <= 0:
        raise ValueError(f"the face box {box} is too small for a blend region")
    full = np.asarray(
        Image.fromarray(parsing_mask(labels, mode, cheek_widths)).resize((side, side), Image.Resampling.BICUBIC)
    )
    x1, y1, x2, y2 = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, side), min(y2, side)
    mask = np.zeros((side, side), dtype=np.uint8)
    top = max(y1, int(side * upper_boundary_ratio))
    if x2 > x1 and y2 > top:
        mask[top:y2, x1:x2] = full[top:y2, x1:x2]
    size = blur_kernel_size(side, blur_fraction)
    mask = cv2.GaussianBlur(mask, (size, size), 0)
    return BlendPlan(tuple(int(v) for v in box), region, torch.from_numpy(mask))


def face_to_box(face: np.ndarray, box: Box) -> np.ndarray:
    """The decoded 256x256 BGR face resized to the box with cv2's bilinear filter, as upstream's paste-back."""
    x1, y1, x2, y2 = box
    return cv2.resize(face.astype(np.uint8, copy=False), (x2 - x1, y2 - y1))


def _composite(under: Frame, over: Frame, mask: Frame) -> Frame:
    """PIL's paste with an "L" mask: (under * (255 - m) + over * m) / 255, rounded as PIL's integer DIV255.

    numpy in uint16 (the sum is at most 255 * 255 + 128 + 254, so nothing overflows; half the memory traffic of
    int32), torch in int32 (its uint16 arithmetic is not available on every device)."""
    if isinstance(under, np.ndarray):
        m = mask.astype(np.uint16)[..., None]
        total = under.astype(np.uint16) * (255 - m) + over.astype(np.uint16) * m + 128
        return (((total >> 8) + total) >> 8).astype(np.uint8)
    m = mask.to(torch.int32)[..., None]
    total = under.to(torch.int32) * (255 - m) + over.to(torch.int32) * m + 128
    return (((total >> 8) + total) >> 8).to(torch.uint8)


def blend_face(frame: Frame, face: Frame, plan: BlendPlan | None) -> Frame:
    """The frame with the generated face blended in by the plan; unchanged (the same object) without a plan.

    `frame` is uint8 BGR (H, W, 3) and `face` uint8 BGR already at the box's size (face_to_box), both numpy or
    both torch (on the plan's device). Pixels outside the blend region are never touched; the frame given is not
    modified. Matches upstream's get_image_blending pixel for pixel.

    Upstream pastes the face into the region and composites the whole region through the mask; outside the face
    box the pasted region is the frame itself, and compositing a pixel with itself gives it back exactly (PIL's
    DIV255 of u * 255 is u), so only the face box (within the region and the frame) is composited here.
    """
    if plan is None:
        return frame
    bx1, by1, bx2, by2 = plan.box
    if tuple(face.shape) != (by2 - by1, bx2 - bx1, frame.shape[2]):
        raise ValueError(f"the face is {tuple(face.shape)}, but the box {plan.box} needs {(by2 - by1, bx2 - bx1)}")
    rx1, ry1, rx2, ry2 = plan.region
    height, width = frame.shape[0], frame.shape[1]
    x1, y1 = max(bx1, rx1, 0), max(by1, ry1, 0)
    x2, y2 = min(bx2, rx2, width), min(by2, ry2, height)
    out = frame.copy() if isinstance(frame, np.ndarray) else frame.clone()
    if x2 <= x1 or y2 <= y1:
        return out
    mask = plan.mask[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1]
    mask = mask.cpu().numpy() if isinstance(frame, np.ndarray) else mask.to(frame.device)
    over = face[y1 - by1 : y2 - by1, x1 - bx1 : x2 - bx1]
    out[y1:y2, x1:x2] = _composite(frame[y1:y2, x1:x2], over, mask)
    return out
