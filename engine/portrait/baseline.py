"""The weight-free portrait engine: not LivePortrait, a classical baseline so the Portrait tab works with no
downloads, and a floor any learned engine must beat.

From the driving clip it takes two motions, both relative to the first frame and expressed in units of the
driving face box, so they transfer to a source face of any size:
- head motion: a similarity transform (scale, rotation, translation) fitted to corner points tracked with
  pyramidal Lucas-Kanade inside the face;
- local facial motion: dense Farneback optical flow between each frame, with the head motion undone, and
  the first frame, on a 128x128 crop around the face.
On the source, each output frame is one backward warp with `grid_sample` (batched, on the GPU when there is
one): undo the head motion about the source face, add the local flow inside a feathered face region, and
fade the whole displacement out away from the face so the background stays put.

From one driving image there is no motion to track: its head pose is compared with the source's instead (roll
from the eye line, scale from the eye distance and position from the eyes' midpoint, each relative to its own
image; the face box when the eyes are not found) and that still similarity is the one frame's head motion.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.errors import InputError

if TYPE_CHECKING:
    from engine.faces.detection import FaceDetector

FLOW_SIZE = 128
CROP_EXTENT = 0.8  # the flow crop spans +-0.8 box sizes around the face centre
HEAD_REACH = 1.1  # the warp fades to zero by 1.1 box sizes from the face centre


@dataclass
class DrivingMotion:
    """Per driving frame, relative to frame 0, in face-box units (x right, y down, origin at the box centre)."""

    head: np.ndarray  # (N, 2, 3) similarity: normalised frame-0 point -> normalised frame-i point
    flow: np.ndarray  # (N, 2, FLOW_SIZE, FLOW_SIZE) for a point of the stabilised frame i, offset to frame 0


def _normaliser(box: np.ndarray) -> tuple[np.ndarray, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), max(x2 - x1, y2 - y1)


def _crop_matrix(center: np.ndarray, size: float, extra: np.ndarray | None = None) -> np.ndarray:
    """2x3 map from image pixels to the FLOW_SIZE crop of +-CROP_EXTENT box sizes (after `extra`, a 3x3
    image-to-image transform applied first)."""
    s = FLOW_SIZE / (2 * CROP_EXTENT * size)
    m = np.array([[s, 0, FLOW_SIZE / 2 - s * center[0]], [0, s, FLOW_SIZE / 2 - s * center[1]], [0, 0, 1]])
    return (m @ extra)[:2] if extra is not None else m[:2]


def _grey(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _fit_similarity(first: np.ndarray, other: np.ndarray, points: np.ndarray) -> np.ndarray:
    """3x3 similarity taking `points` of `first` to where Lucas-Kanade finds them in `other` (identity when
    too few points track)."""
    import cv2

    if len(points) < 3:
        return np.eye(3)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(first, other, points.reshape(-1, 1, 2), None)
    ok = status.reshape(-1) == 1
    if ok.sum() < 3:
        return np.eye(3)
    estimate, _ = cv2.estimateAffinePartial2D(points[ok], moved.reshape(-1, 2)[ok], method=cv2.RANSAC)
    return np.eye(3) if estimate is None else np.vstack([estimate, [0, 0, 1]])


def track_motion(frames: Iterator[np.ndarray], box: np.ndarray, refinements: int = 2) -> DrivingMotion:
    """Head and local motion of every frame relative to the first (frames are BGR, streamed once).

    Lucas-Kanade alone under-reads rotations (by about 9% at 6 degrees: a rotating patch is not a shifted
    one), so each frame's similarity is refined: the frame is warped back by the estimate and the residual
    motion against the first frame is fitted again, until the residual is negligible (two rounds).
    """
    import cv2

    center, size = _normaliser(box)
    heads, flows = [], []
    first = points = crop0 = None
    similarity = np.eye(3)
    for frame in frames:
        grey = _grey(frame)
        h, w = grey.shape
        if first is None:
            first = grey
            mask = np.zeros_like(grey)
            x1, y1, x2, y2 = (int(v) for v in box)
            mask[max(0, y1) : y2, max(0, x1) : x2] = 255
            found = cv2.goodFeaturesToTrack(grey, 200, 0.01, max(3, int(size / 30)), mask=mask)
            points = np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2).astype(np.float32)
            crop0 = cv2.warpAffine(grey, _crop_matrix(center, size), (FLOW_SIZE, FLOW_SIZE))
            heads.append(np.array([[1.0, 0, 0], [0, 1.0, 0]]))
            flows.append(np.zeros((2, FLOW_SIZE, FLOW_SIZE), np.float32))
            continue
        for _ in range(refinements + 1):  # seeded by the previous frame's estimate (identity for the second)
            back = cv2.warpAffine(grey, np.linalg.inv(similarity)[:2], (w, h), borderMode=cv2.BORDER_REFLECT)
            similarity = similarity @ _fit_similarity(first, back, points)
        # the frame with the head motion undone, in the first frame's crop
        inverse = np.linalg.inv(similarity)
        stabilised = cv2.warpAffine(grey, _crop_matrix(center, size, inverse), (FLOW_SIZE, FLOW_SIZE))
        flow = cv2.calcOpticalFlowFarneback(stabilised, crop0, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flows.append((flow.transpose(2, 0, 1) * (2 * CROP_EXTENT / FLOW_SIZE)).astype(np.float32))
        # similarity in box units: u' = (S(c + size u) - c) / size
        t = (similarity[:2, :2] @ center + similarity[:2, 2] - center) / size
        heads.append(np.hstack([similarity[:2, :2], t[:, None]]))
    if first is None:
        raise InputError("the driving video has no frames")
    return DrivingMotion(np.stack(heads), np.stack(flows))


def still_before(motion: DrivingMotion, frames: int) -> DrivingMotion:
    """`frames` frames of no motion put before the tracked ones (a clip whose face appears late)."""
    head = np.broadcast_to(np.eye(2, 3), (frames, 2, 3))
    flow = np.zeros((frames, *motion.flow.shape[1:]), motion.flow.dtype)
    return DrivingMotion(np.concatenate([head, motion.head]), np.concatenate([flow, motion.flow]))


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    """3x^2 - 2x^3 of x clamped to [0, 1], as x * x * (3 - 2 * x); `x` is a temporary and is overwritten."""
    x = x.clamp_(0, 1)
    return (x * x).mul_(torch.rsub(x * 2, 3))


class SourceWarp:
    """The source's half of the warp, computed once for every frame it is moved by (render_batch is `render` of a
    fresh one). Where the warp has faded out to nothing (`reach` is 0, past HEAD_REACH box sizes from the face) each
    output pixel samples the source at its own place whatever the motion, so that part of a frame is the same for
    every frame: it is sampled once (`still`) and only the bounding box of the pixels the warp reaches is computed
    per frame, by the same operations on the same values as over the whole picture, so the frames are the same to
    the bit."""

    def __init__(self, source: torch.Tensor, source_box: np.ndarray) -> None:
        device = source.device
        _, _, h, w = source.shape
        self.source, (self.center, self.size) = source, _normaliser(source_box)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32), torch.arange(w, device=device, dtype=torch.float32),
            indexing="ij",
        )  # fmt: skip
        center, size = self.center, self.size
        self.u = torch.stack([(xs - center[0]) / size, (ys - center[1]) / size], -1)  # H,W,2 output point, box units
        self.reach = _smoothstep((HEAD_REACH - self.u.norm(dim=-1)) / 0.5)  # fade the warp out away from the face
        rows, cols = (torch.nonzero((self.reach > 0).any(dim)).reshape(-1).tolist() for dim in (1, 0))
        self.region = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)) if rows else None
        if self.region is not None:  # contiguous copies: the same values, faster to compute with
            self.region_u = self.u[self.region].contiguous()
            self.region_reach = self.reach[self.region].contiguous()
        self._still: torch.Tensor | None = None

    @property
    def still(self) -> torch.Tensor:
        """(1, 3, H, W): the source sampled where no motion reaches (sample = u there, as `_warp` computes it)."""
        if self._still is None:
            self._still = self._sample(self.u[None])
        return self._still

    def render(self, head: np.ndarray, flow: np.ndarray, multiplier: float = 1.0) -> torch.Tensor:
        """(B, 3, H, W) frames: the source moved by B frames of driving motion."""
        finite = np.isfinite(head).all() and np.isfinite(flow).all() and np.isfinite(multiplier)
        if not finite:  # a NaN or infinite motion reaches every pixel (0 times it is NaN): the whole picture, as is
            return self._warp(self.u, self.reach, head, flow, multiplier)
        out = self.still.expand(head.shape[0], -1, -1, -1).clone()
        if self.region is not None:
            rows, cols = self.region
            out[:, :, rows, cols] = self._warp(self.region_u, self.region_reach, head, flow, multiplier)
        return out

    def _warp(
        self, u: torch.Tensor, reach: torch.Tensor, head: np.ndarray, flow: np.ndarray, multiplier: float
    ) -> torch.Tensor:
        """The frames' pixels at the output points `u` (h, w, 2) whose warp is faded by `reach` (h, w)."""
        device = u.device
        a = torch.as_tensor(head[:, :, :2], dtype=torch.float32, device=device)  # B,2,2
        t = torch.as_tensor(head[:, :, 2], dtype=torch.float32, device=device)  # B,2
        a_inv = torch.linalg.inv(a)
        stab = torch.einsum("bij,bhwj->bhwi", a_inv, u[None] - t[:, None, None, :])  # where it was in frame 0
        flow_t = torch.as_tensor(flow, dtype=torch.float32, device=device)  # B,2,S,S
        grid = (stab / CROP_EXTENT).clamp_(-2, 2)
        local = F.grid_sample(flow_t, grid, align_corners=False).permute(0, 2, 3, 1)  # B,h,w,2
        inside = _smoothstep(torch.rsub(stab.abs().amax(-1).div_(CROP_EXTENT), 1).div_(0.25))  # feathered crop
        origin = stab.add_(local.mul_(inside[..., None]))
        # u + (origin - u) * reach * multiplier, in place (a sum is the same either way round)
        sample = origin.sub_(u).mul_((reach * multiplier)[..., None]).add_(u)
        return self._sample(sample)

    def _sample(self, sample: torch.Tensor) -> torch.Tensor:
        """The source at (B, h, w, 2) points in box units (bilinear, the border repeated). x and y go through the
        same float32 steps as one (..., 2) tensor against per-axis values: pixels = point * size + centre, then
        grid_sample's -1..1 = (2 * pixels + 1) / (width, height) - 1, in 6 passes where x and y apart took 11."""
        _, _, h, w = self.source.shape
        device = sample.device
        centre = torch.tensor(self.center, dtype=torch.float32, device=device)
        extent = torch.tensor([w, h], dtype=torch.float32, device=device)
        norm_grid = (sample * self.size).add_(centre).mul_(2).add_(1).div_(extent).sub_(1)
        source = self.source.expand(sample.shape[0], -1, -1, -1)
        return F.grid_sample(source, norm_grid, padding_mode="border", align_corners=False)


def render_batch(
    source: torch.Tensor, source_box: np.ndarray, head: np.ndarray, flow: np.ndarray, multiplier: float = 1.0
) -> torch.Tensor:
    """(B, 3, H, W) frames: the source (1, 3, H, W in [0, 1]) moved by B frames of driving motion (a run moving one
    source by many batches keeps one SourceWarp instead)."""
    return SourceWarp(source, source_box).render(head, flow, multiplier)


EYE_CASCADES = ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")  # OpenCV's, bare and behind glasses
TURNS = (0.0, 15.0, -15.0, 30.0, -30.0)  # a strongly tilted head escapes the frontal detector: turn and retry
# A still driver is framed its own way: its roll transfers whole, but its scale and place only as far as a head
# moves on its shoulders (a driver cropped tighter than the source would otherwise blow the head up).
MAX_ROLL, SCALE_RANGE, MAX_SHIFT = 45.0, (0.9, 1.1), 0.15


@dataclass
class StillPose:
    """One face in one image: its box centre and size, its eye centres when both are found (pixels)."""

    centre: np.ndarray  # (2,)
    size: float
    eyes: np.ndarray | None  # (2, 2): the eye on the image's left, then the one on its right
    image_size: tuple[int, int]  # width, height

    @property
    def roll(self) -> float:
        """The eye line's angle in degrees (image axes, y down: positive when the right-hand eye is lower)."""
        assert self.eyes is not None
        (lx, ly), (rx, ry) = self.eyes
        return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def _pupil(grey: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The dark centre of an eye box (the iris and pupil, without the brow above or the lid corners)."""
    import cv2

    x0, y0 = x + w // 6, y + h // 4
    patch = grey[y0 : y + 3 * h // 4, x0 : x + 5 * w // 6].astype(np.float32)
    patch = cv2.GaussianBlur(patch, (0, 0), max(1.0, w / 15))
    weight = np.clip(np.percentile(patch, 15) - patch, 0.0, None)
    if weight.sum() <= 0:
        return np.array([x + w / 2, y + h / 2])
    rows, cols = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
    return np.array([x0 + (weight * cols).sum() / weight.sum(), y0 + (weight * rows).sum() / weight.sum()])


def find_eyes(grey: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """Both eye centres (2, 2) in the upper face of `box`, or None: OpenCV's eye cascades propose, the most
    plausible pair is kept (one each side of the middle, level within 30 degrees, similar sizes, a quarter to
    three quarters of the face apart) and each eye is refined to its pupil."""
    import cv2

    from engine.faces.detection import cascade_path

    height, width = grey.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(box[2])), min(height, int(box[1] + 0.55 * (box[3] - box[1])))
    face_w = x2 - x1
    if face_w < 24 or y2 - y1 < 12:
        return None
    upper = np.ascontiguousarray(grey[y1:y2, x1:x2])
    boxes = []
    for name in EYE_CASCADES:
        found = cv2.CascadeClassifier(str(cascade_path(name))).detectMultiScale(
            upper, 1.05, 3, minSize=(max(6, int(0.12 * face_w)),) * 2, maxSize=(int(0.45 * face_w),) * 2
        )
        boxes += [tuple(int(v) for v in b) for b in np.asarray(found).reshape(-1, 4)]
    best, best_cost = None, np.inf
    for left in boxes:
        for right in boxes:
            (lx, ly), (rx, ry) = (np.array(b[:2]) + np.array(b[2:]) / 2 for b in (left, right))
            apart = rx - lx
            if not (lx < face_w / 2 < rx and 0.25 * face_w < apart < 0.75 * face_w and abs(ry - ly) < 0.58 * apart):
                continue
            cost = abs(np.log(left[2] / right[2])) + abs((lx + rx) / 2 - face_w / 2) / face_w
            if cost < best_cost and max(left[2], right[2]) < 1.5 * min(left[2], right[2]):
                best, best_cost = (left, right), cost
    if best is None:
        return None
    return np.stack([_pupil(upper, *eye) for eye in best]) + np.array([x1, y1])


def still_pose(image: np.ndarray, detector: FaceDetector, box: np.ndarray | None = None) -> StillPose | None:
    """The face's pose in a BGR image (the given box, else the largest face found, turning the image by up to
    30 degrees when upright finds none), or None when there is no face."""
    import cv2

    from engine.faces.detection import largest

    height, width = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    for turn in TURNS if box is None else (0.0,):
        turning = cv2.getRotationMatrix2D((width / 2, height / 2), turn, 1.0)
        turned = grey if turn == 0 else cv2.warpAffine(grey, turning, (width, height), borderMode=cv2.BORDER_REPLICATE)
        found = box if box is not None else largest(detector.detect([turned])[0])
        if found is None:
            continue
        back = cv2.invertAffineTransform(turning)
        x1, y1, x2, y2 = (float(v) for v in found[:4])
        eyes = find_eyes(turned, np.array([x1, y1, x2, y2]))
        centre = back[:, :2] @ np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + back[:, 2]
        eyes = None if eyes is None else eyes @ back[:, :2].T + back[:, 2]
        return StillPose(centre, max(x2 - x1, y2 - y1), eyes, (width, height))
    return None


def pose_transfer(source: StillPose, driving: StillPose, source_box: np.ndarray) -> tuple[np.ndarray, dict]:
    """The head motion (2, 3, in the source box's units, as render_batch takes it) that gives the source face the
    driving face's roll, scale and place in its image, and what was transferred. Scale and place are compared
    relative to each image's size, so a driver framed like the source moves nothing but what differs; what was held
    to a head's movement (a roll past MAX_ROLL, a scale outside SCALE_RANGE, a move past MAX_SHIFT) is named."""
    centre, size = _normaliser(source_box)
    (sw, sh), (dw, dh) = source.image_size, driving.image_size
    by_eyes = source.eyes is not None and driving.eyes is not None
    if by_eyes:
        anchors = (source.eyes.mean(0), driving.eyes.mean(0))
        lengths = (np.linalg.norm(np.diff(source.eyes, axis=0)), np.linalg.norm(np.diff(driving.eyes, axis=0)))
        measured_roll = float(driving.roll - source.roll)
    else:
        anchors, lengths, measured_roll = (source.centre, driving.centre), (source.size, driving.size), 0.0
    roll = float(np.clip(measured_roll, -MAX_ROLL, MAX_ROLL))
    measured_scale = float((lengths[1] / np.sqrt(dw * dh)) / (lengths[0] / np.sqrt(sw * sh)))
    scale = float(np.clip(measured_scale, *SCALE_RANGE))
    turn = np.radians(roll)
    a = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    from_source = (anchors[0] - centre) / size
    to_place = (anchors[1] / np.array([dw, dh]) * np.array([sw, sh]) - centre) / size
    shift = to_place - a @ from_source
    measured_shift = float(np.linalg.norm(shift))
    if measured_shift > MAX_SHIFT:
        shift *= MAX_SHIFT / measured_shift
    held = {"roll": roll != measured_roll, "scale": scale != measured_scale, "place": measured_shift > MAX_SHIFT}
    report = {
        "roll_degrees": round(roll, 2),
        "scale": round(scale, 3),
        "shift_face_sizes": [round(float(v), 3) for v in shift],
        "measured_from": "eye lines" if by_eyes else "face boxes (eyes not found: no roll)",
        "limited": [part for part, was_held in held.items() if was_held],  # held to a head's movement; [] if none
    }
    return np.hstack([a, shift[:, None]]), report


__all__ = [
    "DrivingMotion",
    "SourceWarp",
    "StillPose",
    "pose_transfer",
    "render_batch",
    "still_pose",
    "track_motion",
]
