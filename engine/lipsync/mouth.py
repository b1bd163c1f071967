"""Where the mouth is in a face crop and how it opens, without any model: the weight-free lip-sync baseline.

No landmark model is available without weights, so the mouth is found from the face box's proportions (the lip
line sits at about 0.64 of a detected, chin-padded box) refined by two image cues measured across the middle of
the face: lips are redder (higher Cr) and the line between them is darker than the skin around them.

Opening the mouth is one backward warp (cv2.remap) in crop pixels: below the lip line the jaw drops, the lower
lip stretching from the lens-shaped opening (widest in the middle, closed at the corners) to the chin's broader
drop, and the displacement fades out smoothly before the neck; above it the upper lip lifts a little. The gap
between the two lip edges is filled with a dark mouth interior (a hint of upper teeth once it is wide open).
Every change is confined to a region whose coverage (returned beside the pixels) is exactly 0 elsewhere, so
pasting by it leaves the rest of the frame untouched.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

MOUTH_PRIOR = 0.64  # the lip line, as a fraction of the box height (Haar or S3FD box with Wav2Lip's chin pad)
MOUTH_RANGE = (0.54, 0.74)  # where the cues are searched; the estimate is kept inside it
MOUTH_HALF_WIDTH = 0.16  # the opening closes at this distance from the middle (fraction of the crop width)
JAW_HALF_WIDTH = 0.26  # the chin's drop fades out sideways by this distance
JAW_SPAN = 0.30  # the jaw's displacement fades to zero this far below the lip line (fraction of the height)
STRETCH = 0.10  # over this height under the lips the lower lip stretches from the lens-shaped gap to the jaw's drop
LIP_SPAN = 0.12  # the upper lip's lift fades to zero this far above it, below the nose
UPPER_LIFT = 0.25  # share of the opening taken by the upper lip (the jaw takes the rest)
INTERIOR_BGR = np.array([34.0, 36.0, 78.0], np.float32)  # the mouth's dark, slightly red inside
TEETH_BGR = np.array([196.0, 206.0, 214.0], np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def mouth_line(crop: np.ndarray) -> float:
    """The row between the lips as a fraction of the crop height: the box prior, moved towards the lips.

    Per row of the face's middle fifth: how much darker than the skin and how much redder (YCrCb's Cr) it is,
    each scaled by its own spread so a grey or pale image still uses its darkness; the estimate is the centroid
    of that score, weighted by a prior around MOUTH_PRIOR, so a nostril or the jaw's shadow cannot capture it.
    """
    height, width = crop.shape[:2]
    top, bottom = (round(f * height) for f in MOUTH_RANGE)
    band = crop[top:bottom, round(0.40 * width) : round(0.60 * width)]
    ycc = cv2.cvtColor(np.ascontiguousarray(band), cv2.COLOR_BGR2YCrCb).astype(np.float32)
    luma, red = ycc[..., 0].mean(axis=1), ycc[..., 1].mean(axis=1)
    score = np.zeros_like(luma)
    for profile, sign in ((luma, -1.0), (red, 1.0)):
        excess = sign * (profile - np.median(profile))
        spread = float(np.percentile(np.abs(excess), 90))
        if spread > 1.0:  # a flat profile (a greyscale image's Cr) carries no information
            score += np.clip(excess / spread, 0.0, 2.0)
    rows = (np.arange(top, bottom, dtype=np.float32) + 0.5) / height
    weight = score * np.exp(-0.5 * ((rows - MOUTH_PRIOR) / 0.05) ** 2)
    if weight.sum() < 1e-6:
        return MOUTH_PRIOR
    found = float((weight * rows).sum() / weight.sum())
    return float(np.clip(found, *MOUTH_RANGE))


def _interior(window: np.ndarray) -> np.ndarray:
    """The mouth's inside colour, as saturated as the face around it: dark red on a colour face, dark grey on a
    greyscale or washed-out one."""
    ycc = cv2.cvtColor(np.ascontiguousarray(window), cv2.COLOR_BGR2YCrCb).reshape(-1, 3).astype(np.float32)
    chroma = float(np.hypot(ycc[:, 1].mean() - 128.0, ycc[:, 2].mean() - 128.0))
    grey = float(INTERIOR_BGR @ np.array([0.114, 0.587, 0.299], np.float32))
    return grey + min(chroma / 12.0, 1.0) * (INTERIOR_BGR - grey)


def open_mouth(crop: np.ndarray, line: float, amount: float) -> tuple[np.ndarray, np.ndarray]:
    """The crop (uint8 BGR) with its mouth opened by `amount` (a fraction of the crop height) at row `line`
    (a fraction too), and the coverage (0..1) of what changed: float32 (h, w, 3) and (h, w)."""
    height, width = crop.shape[:2]
    pixels = crop.astype(np.float32)
    coverage = np.zeros((height, width), np.float32)
    opening = amount * height
    if opening < 0.25:  # under a quarter pixel nothing would show: the crop as it is
        return pixels, coverage
    cy, cx = line * height, 0.5 * width
    jaw_span = max(min(JAW_SPAN * height, height - 2 - cy), 2.0)
    lip_span = LIP_SPAN * height
    # Only this window can change (the displacement is exactly zero outside it): the work is done there.
    top, bottom = max(0, int(cy - lip_span) - 1), min(height, int(np.ceil(cy + jaw_span)) + 2)
    left = max(0, int(cx - JAW_HALF_WIDTH * width) - 1)
    right = min(width, int(np.ceil(cx + JAW_HALF_WIDTH * width)) + 2)
    all_ys, all_xs = _grid(height, width)
    ys, xs = all_ys[top:bottom, left:right], all_xs[top:bottom, left:right]
    dx = np.abs(xs[0] - cx)
    lens = np.clip(1.0 - (dx / (MOUTH_HALF_WIDTH * width)) ** 2, 0.0, 1.0) ** 1.5  # (w,): the lips part
    jaw = np.clip(1.0 - (dx / (JAW_HALF_WIDTH * width)) ** 2, 0.0, 1.0) ** 2  # (w,): the chin moves
    gap_down = opening * (1.0 - UPPER_LIFT) * lens  # where the lower lip's edge ends up, below cy
    gap_up = opening * UPPER_LIFT * lens  # where the upper lip's edge ends up, above cy
    drop = opening * (1.0 - UPPER_LIFT) * jaw  # the chin's drop: the lower lip stretches from one to the other
    # Backward map: each output pixel samples the crop at (x, source_y). Below the gap the rows come from higher
    # up (by the gap at the lip, by the drop under it, fading to 0 at the end of the jaw); above it from lower
    # down by the upper lip's lift, fading to 0 under the nose.
    below = ys - (cy + gap_down)
    stretch = gap_down + (drop - gap_down) * _smoothstep(below / (STRETCH * height))
    down = stretch * (1.0 - _smoothstep(below / (jaw_span - gap_down)))
    above = (cy - gap_up) - ys
    up = gap_up * (1.0 - _smoothstep(above / (lip_span - gap_up)))
    shift = np.where(below >= 0, -down, np.where(above >= 0, up, 0.0))
    source_y = np.where((below < 0) & (above < 0), cy, ys + shift).astype(np.float32)
    warped = cv2.remap(pixels, xs, source_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    # The inside of the mouth, anti-aliased between the two lip edges: dark red, darker in the middle and at the
    # corners, in the shadow of the upper lip; a hint of upper teeth once the mouth is open more than a little.
    gap = gap_down + gap_up
    inside = np.clip(np.minimum(-below, -above) + 0.5, 0.0, 1.0) * np.clip(gap, 0.0, 1.0)
    depth = np.clip((ys - (cy - gap_up)) / np.maximum(gap, 1e-3), 0.0, 1.0)  # 0 at the upper lip, 1 at the lower
    shade = (0.55 + 0.45 * depth) * (0.6 + 0.4 * lens)
    colour = _interior(crop[top:bottom, left:right]) * shade[..., None]
    teeth_rows = np.clip(0.28 * gap, 0.0, 0.045 * height)
    teeth = 1.0 - _smoothstep((ys - (cy - gap_up)) / np.maximum(teeth_rows, 1e-3))
    teeth *= _smoothstep((opening - 0.035 * height) / (0.035 * height)) * np.clip(1.4 * lens, 0.0, 1.0) * 0.75
    colour += teeth[..., None] * (TEETH_BGR * (0.7 + 0.3 * lens)[..., None] - colour)
    pixels[top:bottom, left:right] = warped + inside[..., None] * (colour - warped)
    coverage[top:bottom, left:right] = np.maximum(np.clip(np.abs(source_y - ys), 0.0, 1.0), inside)
    return pixels, coverage


__all__ = ["mouth_line", "open_mouth"]
