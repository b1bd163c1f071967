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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.errors import InputError

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
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def render_batch(
    source: torch.Tensor, source_box: np.ndarray, head: np.ndarray, flow: np.ndarray, multiplier: float = 1.0
) -> torch.Tensor:
    """(B, 3, H, W) frames: the source (1, 3, H, W in [0, 1]) moved by B frames of driving motion."""
    device, b = source.device, head.shape[0]
    _, _, h, w = source.shape
    center, size = _normaliser(source_box)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32), torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )  # fmt: skip
    u = torch.stack([(xs - center[0]) / size, (ys - center[1]) / size], -1)  # H,W,2 output point in box units
    a = torch.as_tensor(head[:, :, :2], dtype=torch.float32, device=device)  # B,2,2
    t = torch.as_tensor(head[:, :, 2], dtype=torch.float32, device=device)  # B,2
    a_inv = torch.linalg.inv(a)
    stab = torch.einsum("bij,bhwj->bhwi", a_inv, u[None] - t[:, None, None, :])  # where it was in frame 0
    flow_t = torch.as_tensor(flow, dtype=torch.float32, device=device)  # B,2,S,S
    grid = (stab / CROP_EXTENT).clamp(-2, 2)
    local = F.grid_sample(flow_t, grid, align_corners=False).permute(0, 2, 3, 1)  # B,H,W,2
    inside = _smoothstep((1 - stab.abs().amax(-1) / CROP_EXTENT) / 0.25)  # feathered crop square
    origin = stab + local * inside[..., None]
    reach = _smoothstep((HEAD_REACH - u.norm(dim=-1)) / 0.5)[None]  # fade the warp out away from the face
    sample = u[None] + (origin - u[None]) * (reach * multiplier)[..., None]
    px = sample[..., 0] * size + center[0]
    py = sample[..., 1] * size + center[1]
    norm_grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)
    return F.grid_sample(source.expand(b, -1, -1, -1), norm_grid, padding_mode="border", align_corners=False)


__all__ = ["DrivingMotion", "render_batch", "track_motion"]
