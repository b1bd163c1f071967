"""Face crops in, generated crops back into the frame.

Two paste modes: "upstream" reproduces the reference Wav2Lip inference exactly (the whole box
replaced, predictions truncated to uint8 before resizing), and "blend" (the default) rounds
and feathers the prediction over the lower face only, so the eyes, forehead and box edges stay
the original pixels and no seam shows. A prediction with a fourth channel (the baseline's) carries its
own coverage: "blend" then feathers it in by that coverage, so only the pixels it changed change.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from engine.core.errors import InputError
from engine.lipsync.config import PASTE_MODES

Box = tuple[int, int, int, int]


def crop(frame: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The box resized to size x size (uint8 BGR), as the generators take it: OpenCV's bilinear resize, as
    upstream's inference.py and its training data loader make Wav2Lip's crops (an area filter would differ by tens
    of grey levels on a large face)."""
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


def _edge_taper(length: int, ramp: float) -> np.ndarray:
    """1 inside, easing (smoothstep) to 0 over `ramp` pixels before the two edge pixels at each end, which are 0."""
    from_edge = np.minimum(np.arange(length), np.arange(length)[::-1]) - 1.0
    t = np.clip(from_edge / ramp, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@lru_cache(maxsize=64)
def lower_face_mask(height: int, width: int) -> np.ndarray:
    """A soft (h, w, 1) float32 mask: an ellipse over mouth and jaw, fading out before the box edges.

    The ellipse reaches the chin, near the box's bottom edge, so the blur alone left about 0.7 there: the last
    `sigma` pixels before each edge ease to 0 (the two edge pixels are always the original), where a step from 0.7
    to 0 drew a line under the chin."""
    mask = np.zeros((height, width), np.float32)
    centre = (width // 2, int(height * 0.72))
    axes = (max(1, int(width * 0.36)), max(1, int(height * 0.26)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, thickness=-1)
    sigma = max(1.0, 0.06 * min(height, width))
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    mask *= _edge_taper(height, sigma)[:, None] * _edge_taper(width, sigma)[None, :]
    mask.setflags(write=False)
    return mask[:, :, None]


def first_row_read(box: Box, size: int, mode: str = "blend") -> int:
    """The first row of a size x size three-channel prediction that ``paste`` reads for this box: rows above it
    may hold anything finite, so a generator need not compute them.

    "upstream" reads every row. "blend" reads the rows its resize needs for the mask's non-zero rows: the mask's
    first such row mapped back into the prediction (cv2's cubic resize: source y = (y + 0.5) * size / height - 0.5,
    taps from floor(y) - 1), typically about a quarter of the way down.
    """
    if mode != "blend":
        return 0
    x1, y1, x2, y2 = box
    height, width = y2 - y1, x2 - x1
    rows = np.flatnonzero(lower_face_mask(height, width).max(axis=(1, 2)) > 0)
    if len(rows) == 0:
        return 0
    source = (rows[0] + 0.5) * size / height - 0.5
    return int(min(size - 1, max(0, math.floor(source) - 1)))


def paste(frame: np.ndarray, box: Box, prediction: np.ndarray, mode: str = "blend") -> None:
    """Write a generated crop (float, 0..255, BGR) back into `frame` in place."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    coverage = None
    if prediction.shape[-1] == 4:  # a generator that says what it changed
        prediction, coverage = prediction[..., :3], prediction[..., 3]
    if mode == "upstream":
        frame[y1:y2, x1:x2] = cv2.resize(prediction.astype(np.uint8), (width, height))
        return
    if mode != "blend":
        raise InputError(f"paste mode {mode!r} is not one of {', '.join(PASTE_MODES)}")
    generated = cv2.resize(prediction.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    if coverage is None:
        mask = lower_face_mask(height, width)
    else:  # zero wherever the generator changed nothing: those pixels stay exactly as they were
        mask = np.clip(cv2.resize(coverage, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)[..., None]
    region = frame[y1:y2, x1:x2].astype(np.float32)
    blended = region + mask * (generated - region)
    frame[y1:y2, x1:x2] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
