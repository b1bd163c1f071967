"""The LivePortrait crop and paste-back: a similarity transform from a detected face box into a 512x512 crop
(scale 2.3 around the face, shifted up by 0.125 of the crop), and the way back with a feathered mask,
blended on the device the frames are on.

The official crop is built from InsightFace's 106 landmarks (non-commercial weights): so is ours where the user
supplied them (`landmark_crop_transform` of the 106 points, engine/portrait/insightface.py). Otherwise it comes from
the face box of engine/faces/detection.py (Haar or S3FD), turned upright by LivePortrait's optional landmark model when
the user supplied it, its tilt measured as upstream measures it (`roll_from_landmarks`); without it the crop is
axis-aligned. The landmark model's own 224 crop of a face first found is then the box's, axis-aligned (upstream's
follows InsightFace's 106 points and their tilt); of a face followed from earlier landmarks (a driving clip's next
frame) it is upstream's crop from those 203 points (`landmark_crop_transform`). The driving crop is upstream's
unturned crop of one box (`bbox_transform`): with the landmark model the mean (`mean_bbox`) of each followed frame's
box from its 203 points (`landmark_bbox`), as upstream makes it; without it the same square around the detector's
face box (`square_bbox`, `bbox_crop_transform`). The paste-back mask is our own
formula for the released template (a 512x512 square feathered over 16 pixels with rounded corners, within one grey
level of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.errors import InputError
from engine.portrait.config import DRIVING_SCALE, DRIVING_VY, SOURCE_SCALE, SOURCE_VY

CROP_SIZE = 512
NETWORK_SIZE = 256
_FEATHER = 16


@dataclass(frozen=True)
class CropTransform:
    """Affine maps between the original image and the crop (2x3 float32 as upstream's, pixel coordinates, OpenCV
    convention)."""

    to_crop: np.ndarray
    to_original: np.ndarray
    size: int

    @property
    def scale(self) -> float:
        return float(np.hypot(self.to_crop[0, 0], self.to_crop[0, 1]))

    @property
    def angle(self) -> float:
        """The face's tilt the crop removed, in degrees (positive: clockwise in the image)."""
        return float(np.degrees(np.arctan2(self.to_crop[0, 1], self.to_crop[0, 0])))


def _corners(box: tuple[float, float, float, float] | np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"face box {box} is empty: x2 must exceed x1 and y2 exceed y1")
    return x1, y1, x2, y2


def crop_transform(
    box: tuple[float, float, float, float] | np.ndarray,
    scale: float = SOURCE_SCALE,
    vy: float = SOURCE_VY,
    size: int = CROP_SIZE,
    angle: float = 0.0,
    vx: float = 0.0,
    rotate: bool = True,
) -> CropTransform:
    """The square crop around a face box (x1, y1, x2, y2): side = scale x the box's larger side, centre moved
    by vy x side along the face's vertical (negative: towards the forehead) and vx x side along its horizontal (as
    upstream's vx_ratio and vy_ratio), the face's axes being turned `angle` degrees (its clockwise tilt in the image),
    and the crop turned by it too so the face comes out upright unless `rotate` is False (upstream's flag_do_rot off
    still shifts the centre along the tilted face's own axes and leaves only the turn out), resampled to size x size."""
    x1, y1, x2, y2 = _corners(box)
    side = max(x2 - x1, y2 - y1) * scale
    theta = math.radians(angle)
    c, s_ = math.cos(theta), math.sin(theta)
    across, down = np.array([c, s_]), np.array([-s_, c])  # the face's axes in the image (y down: clockwise)
    cx, cy = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + across * (vx * side) + down * (vy * side)
    if not rotate:
        c, s_ = 1.0, 0.0
    k, half = size / side, size / 2
    # Upstream's M_INV, term by term and stored as float32 (its DTYPE); the way back is that matrix's inverse in
    # float32 (its M_c2o). OpenCV's warp rounds positions to 1/32 pixel, so float64 entries move some pixels.
    to_crop = np.array(
        [[k * c, k * s_, half - k * (c * cx + s_ * cy)], [-k * s_, k * c, half - k * (-s_ * cx + c * cy)]],
        dtype=np.float32,
    )
    to_original = np.linalg.inv(np.vstack([to_crop, np.array([0, 0, 1], np.float32)]))[:2]
    return CropTransform(to_crop, to_original, size)


def square_bbox(
    box: tuple[float, float, float, float] | np.ndarray, scale: float, vy: float, vx: float = 0.0
) -> tuple[float, float, float, float]:
    """The square upstream's driving crop takes around a face box (x1, y1, x2, y2), as its bbox of float32 corners
    (left, top, right, bottom): side scale x the box's larger side, centre moved by vx and vy x side. Our stand-in
    where there is no landmark model (upstream makes it from the landmarks: `landmark_bbox`)."""
    x1, y1, x2, y2 = _corners(box)
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2 + vx * side, (y1 + y2) / 2 + vy * side
    left, top, right, bottom = (
        float(np.float32(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    )
    return left, top, right, bottom


def bbox_transform(bbox: tuple[float, float, float, float] | np.ndarray, size: int = CROP_SIZE) -> CropTransform:
    """The unturned crop of a bbox (left, top, right, bottom) as upstream's crop_image_by_bbox makes it: the box is
    not scaled again, its centre rounded to float32, the scale size / (right - left) (the width alone: the box is
    square up to rounding), each term computed in float64 (numpy 1.26, which upstream pins, promotes a Python float
    times a float32 scalar to float64) and stored as float32; the way back is that matrix's float32 inverse."""
    left, top, right, bottom = _corners(bbox)
    centre = np.array([(left + right) / 2, (top + bottom) / 2], np.float32).astype(np.float64)
    k, half = size / (right - left), float(np.float32(size / 2))
    to_crop = np.array([[k, 0, half - k * centre[0]], [0, k, half - k * centre[1]]], dtype=np.float32)
    to_original = np.linalg.inv(np.vstack([to_crop, np.array([0, 0, 1], np.float32)]))[:2]
    return CropTransform(to_crop, to_original, size)


def bbox_crop_transform(
    box: tuple[float, float, float, float] | np.ndarray,
    scale: float,
    vy: float,
    vx: float = 0.0,
    size: int = CROP_SIZE,
) -> CropTransform:
    """The unturned square crop around a face box (x1, y1, x2, y2) as upstream builds its driving crop: the crop's
    square (`square_bbox`) made into the crop by its crop_image_by_bbox (`bbox_transform`). Within a float32 step of
    `crop_transform`'s matrix, which moved a few pixels."""
    return bbox_transform(square_bbox(box, scale, vy, vx), size)


def landmark_bbox(points: np.ndarray, scale: float, vy: float, vx: float = 0.0) -> np.ndarray:
    """(left, top, right, bottom) float32: the box upstream's crop_driving_video makes of one frame's 203 points
    (parse_bbox_from_landmark, its unturned bbox's corners 0 and 2): the square of `_landmark_square` (on the face's
    tilted axes, `scale` x their larger extent, moved by vx and vy x side along them) taken axis-aligned around its
    centre, each corner computed in float64 from the float32 centre and side (numpy 1.26's promotion of a float32
    scalar with a Python number) and stored as float32."""
    centre, side, _ = _landmark_square(points, scale, vy, vx)
    cx, cy, half = float(centre[0]), float(centre[1]), float(side[0]) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


def mean_bbox(bboxes: list[np.ndarray]) -> tuple[float, float, float, float]:
    """One box for a whole clip as upstream's average_bbox_lst makes it: the float32 boxes' mean (numpy's, in
    float32), as Python floats."""
    left, top, right, bottom = np.mean(np.array(bboxes, np.float32), axis=0).tolist()
    return left, top, right, bottom


def source_within_limits(image: np.ndarray, max_dim: int, division: int) -> np.ndarray:
    """The source as upstream's pipeline takes it (its resize_to_limit): a longer side above `max_dim` (0: no limit)
    shrunk to it with OpenCV's bilinear resize (the other side truncated to whole pixels), then the bottom and right
    edges cut so both sides are multiples of `division`. A shorter side that would truncate to 0 keeps 1 pixel (upstream
    stops there with OpenCV's assertion)."""
    import cv2

    height, width = image.shape[:2]
    if max_dim > 0 and max(height, width) > max_dim:
        if height > width:
            size = (max(1, int(width * (max_dim / height))), max_dim)
        else:
            size = (max_dim, max(1, int(height * (max_dim / width))))
        image = cv2.resize(image, size)
    division = max(division, 1)
    height, width = image.shape[0] - image.shape[0] % division, image.shape[1] - image.shape[1] % division
    if height == 0 or width == 0 or (height, width) == image.shape[:2]:
        return image
    return np.ascontiguousarray(image[:height, :width])


# Per landmark layout (upstream's parse_pt2_from_pt203 and parse_pt2_from_pt106): the four points averaged for each
# eye and the two mouth corners whose midpoint is the lips' centre.
_EYES_AND_LIPS = {
    203: ([0, 6, 12, 18], [24, 30, 36, 42], 48, 66),  # LivePortrait's landmark.onnx
    106: ([33, 35, 40, 39], [87, 89, 94, 93], 52, 61),  # InsightFace's 2d106det
}


def _face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The face's horizontal and vertical unit axes in the image (float32) and its tilt in radians (positive:
    clockwise), from the 203- or 106-point layout as upstream's parse_rect_from_landmark finds them (use_lip on): the
    vertical runs from the eyes' centre (each eye the mean of four points) to the lips' centre (the mouth corners'
    midpoint), the horizontal is its normal (down_y, -down_x). Eyes and lips within 1e-3 pixel of each other:
    upright (upstream's uy = (0, 1))."""
    left, right, corner, other_corner = _EYES_AND_LIPS[len(points)]
    eyes = (points[left].mean(0) + points[right].mean(0)) / 2
    down = (points[corner] + points[other_corner]) / 2 - eyes
    length = np.linalg.norm(down)
    down = np.array([0, 1], np.float32) if length <= 1e-3 else down / length
    across = np.array((down[1], -down[0]), np.float32)
    angle = math.acos(float(across[0]))
    return across, down, -angle if across[1] < 0 else angle


def _landmark_points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) not in _EYES_AND_LIPS:
        raise InputError(
            f"expected the landmark model's 203 x 2 points or InsightFace's 106 x 2, got an array of shape {pts.shape}"
        )
    return pts


def roll_from_landmarks(points: np.ndarray) -> float:
    """The face's tilt in degrees (positive: clockwise) from the 203-point layout, as upstream's flag_do_rot measures
    it (parse_rect_from_landmark with parse_pt2_from_pt203, in float32): the face's vertical is the axis from the
    eyes' centre (each eye the mean of four points) to the lips' centre (the mouth corners' midpoint), and the
    tilt is its normal's angle; `crop_transform(..., angle=roll)` turns that axis upright. On a symmetric face this
    is the eye line's angle; where the mouth sits off the eyes' midline (a turned head) the two differ."""
    return math.degrees(_face_axes(_landmark_points(points))[2])


def _landmark_square(points: np.ndarray, scale: float, vy: float, vx: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The square upstream's parse_rect_from_landmark finds around 203 (or 106) landmarks, in float32 as upstream's, its
    points float32: the points, centred on their mean, turned onto the face's axes (`_face_axes`); the side (both
    entries) `scale` x the larger extent there and the centre the middle of that extent, moved by vx and vy x side
    along the face's horizontal and vertical; with the face's tilt in radians."""
    pts = _landmark_points(points)
    across, down, angle = _face_axes(pts)
    mean = pts.mean(0)
    turned = (pts - mean) @ np.array([across, down]).T
    low, high = turned.min(0), turned.max(0)
    middle = (low + high) / 2
    extent = high - low
    side = np.full(2, max(extent[0], extent[1]), np.float32)
    side *= np.float32(scale)
    if not side[0] > 0:  # upstream divides by it: an infinite or NaN matrix
        raise InputError(f"the {len(pts)} landmarks span no area (a crop side of {side[0]} pixels)")
    centre = mean + across * middle[0] + down * middle[1]
    centre = centre + across * (np.float32(vx) * side) + down * (np.float32(vy) * side)
    return centre, side, angle


def landmark_crop_transform(
    points: np.ndarray,
    scale: float = 1.5,
    vy: float = -0.1,
    size: int = 224,
    vx: float = 0.0,
    rotate: bool = True,
) -> CropTransform:
    """The square crop around 203 landmarks (or InsightFace's 106) as upstream's crop_image(img, pts) builds it (its
    landmark runner's crop: scale 1.5, vy -0.1, 224; its source crop from the 106 points: 2.3, -0.125, 512;
    parse_rect_from_landmark, then _estimate_similar_transform_from_pts). In float32
    as upstream's, its points float32: the points, centred on their mean, turned onto the face's axes
    (`_face_axes`); the square's side is `scale` x the larger extent there and its centre the middle of that extent,
    moved by vx and vy x side along the face's horizontal and vertical (upstream's crop_image never passes a vx on:
    0 there); the crop turned upright by the tilt unless `rotate` is False (flag_do_rot). The matrix's terms come
    out in float64 (numpy 1.26, which upstream pins, promotes a Python number with a float32 scalar to float64) and
    are stored as float32; the way back is that matrix's float32 inverse (its M_c2o)."""
    centre, side, angle = _landmark_square(points, scale, vy, vx)
    cx, cy = float(centre[0]), float(centre[1])
    k, half = size / float(side[0]), float(np.float32(size / 2))
    if rotate:
        c, s_ = math.cos(angle), math.sin(angle)
        rows = [[k * c, k * s_, half - k * (c * cx + s_ * cy)], [-k * s_, k * c, half - k * (-s_ * cx + c * cy)]]
    else:
        rows = [[k, 0.0, half - k * cx], [0.0, k, half - k * cy]]
    to_crop = np.array(rows, dtype=np.float32)
    to_original = np.linalg.inv(np.vstack([to_crop, np.array([0, 0, 1], np.float32)]))[:2]
    return CropTransform(to_crop, to_original, size)


def crop_image(image: np.ndarray, transform: CropTransform) -> np.ndarray:
    """The crop (HxWx3 uint8, black outside the image), bilinear."""
    import cv2

    return cv2.warpAffine(image, transform.to_crop, (transform.size, transform.size), flags=cv2.INTER_LINEAR)


def network_input(crop: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """512 crop (RGB uint8) -> 1x3x256x256 float in [0, 1], area-downsampled as the official pipeline does."""
    return _resized(crop, device, area=True)


def stretched_input(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A whole image (RGB uint8, any shape) -> 1x3x256x256 float in [0, 1], stretched with OpenCV's bilinear
    resize: what upstream feeds the networks where it does not crop (a source with crop off, a square driving
    frame)."""
    return _resized(image, device, area=False)


def _resized(image: np.ndarray, device: torch.device | str, area: bool) -> torch.Tensor:
    import cv2

    interpolation = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    small = cv2.resize(image, (NETWORK_SIZE, NETWORK_SIZE), interpolation=interpolation)
    return torch.from_numpy(small).to(device).permute(2, 0, 1)[None].float().div_(255)


def paste_mask(size: int = CROP_SIZE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: 1 inside, a 16-pixel linear feather to 0 at the border, rounded corners."""
    i = np.arange(size, dtype=np.float64)
    edge = np.minimum(i, size - i)  # distance from the nearer border, per axis
    inset = np.maximum(_FEATHER - edge, 0)
    d = np.hypot(inset[None, :], inset[:, None])
    return (np.clip(np.round(_FEATHER * (_FEATHER - d) - 1), 0, 255) / 255).astype(np.float32)


def _affine_grid(to_original: np.ndarray, out_h: int, out_w: int, src: int, like: torch.Tensor) -> torch.Tensor:
    """The sampling grid that maps each original-image pixel into the crop (normalised, align_corners=False)."""
    m = np.vstack([to_original, [0, 0, 1]])
    inv = np.linalg.inv(m)[:2]  # original -> crop
    ys, xs = torch.meshgrid(
        torch.arange(out_h, device=like.device, dtype=torch.float32),
        torch.arange(out_w, device=like.device, dtype=torch.float32),
        indexing="ij",
    )
    a = torch.as_tensor(inv, dtype=torch.float32, device=like.device)
    cx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    cy = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    # pixel centres: crop pixel k covers [k, k+1) in OpenCV's warpAffine convention
    grid = torch.stack([(2 * cx + 1) / src - 1, (2 * cy + 1) / src - 1], dim=-1)
    return grid[None]


class PasteBack:
    """Blends generated 512x512 crops back into full frames on the frames' device; the warped mask and grid
    are computed once per source (the crop transform does not change). Bilinear at the exact positions, where
    upstream's OpenCV warp rounds them to 1/32 pixel: on a smooth crop the two agree within 2 grey levels, on
    pixel-scale noise (random weights) within about 8. Upstream also rounds the crop, its warp and the mask to
    8 bits before the blend; here they stay float until the frame is written (within 3 grey levels of it)."""

    def __init__(self, transform: CropTransform, height: int, width: int, device: torch.device | str) -> None:
        dummy = torch.empty(0, device=device)
        self.grid = _affine_grid(transform.to_original, height, width, transform.size, dummy)
        mask = torch.from_numpy(paste_mask(transform.size)).to(device)[None, None]
        self.mask = F.grid_sample(mask, self.grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __call__(self, generated: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """generated: (B, 3, 512, 512) in [0, 1]; original: (B or 1, 3, H, W) in [0, 1] -> (B, 3, H, W)."""
        b = generated.shape[0]
        warped = F.grid_sample(
            generated.float(), self.grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="zeros",
            align_corners=False,
        )  # fmt: skip
        return (self.mask * warped + (1 - self.mask) * original.float()).clamp_(0, 1)


__all__ = [
    "CROP_SIZE",
    "DRIVING_SCALE",
    "DRIVING_VY",
    "NETWORK_SIZE",
    "SOURCE_SCALE",
    "SOURCE_VY",
    "CropTransform",
    "PasteBack",
    "bbox_crop_transform",
    "bbox_transform",
    "crop_image",
    "crop_transform",
    "landmark_bbox",
    "landmark_crop_transform",
    "mean_bbox",
    "network_input",
    "paste_mask",
    "roll_from_landmarks",
    "source_within_limits",
    "square_bbox",
    "stretched_input",
]
