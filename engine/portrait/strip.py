"""The side-by-side strip of a portrait run: driving frames above, result frames below, at evenly spaced times, saved
beside the video so the tab (or anyone reading the job's result) can show it without decoding the clips again."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.core.media import is_image, load_image, read_frames
from engine.portrait.config import is_template

STRIP_FRAMES = 4
TILE = 192


def side_by_side(driving: Path, video: Path, count: int) -> np.ndarray | None:
    """Driving frames above, result frames below (BGR); None for a motion template, which has no frames."""
    if is_template(driving):
        return None
    picks = set(np.linspace(0, max(count - 1, 0), STRIP_FRAMES).round().astype(int).tolist())

    def frames(path: Path) -> list[np.ndarray]:
        if is_image(path):
            return [load_image(path)] * len(picks)
        out = []
        for i, frame in enumerate(read_frames(path)):  # stop at the last pick: no need to decode the rest
            if i in picks:
                out.append(frame)
            if i >= max(picks):
                break
        return out

    rows = []
    for path in (driving, video):
        tiles = [_tile(f) for f in frames(path)]
        if not tiles:
            return None
        rows.append(np.hstack(tiles[: len(picks)]))
    width = min(r.shape[1] for r in rows)
    return np.vstack([r[:, :width] for r in rows])


def _tile(frame: np.ndarray) -> np.ndarray:
    """The frame shrunk to fit a TILE x TILE square, its shape kept (a 400x320 clip was squashed square), on a dark
    ground."""
    height, width = frame.shape[:2]
    scale = TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    tile = np.full((TILE, TILE, 3), 32, np.uint8)
    top, left = (TILE - size[1]) // 2, (TILE - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = fitted
    return tile


def save_strip(driving: Path, video: Path, count: int) -> Path | None:
    """The strip as a PNG next to the video (None when there is nothing to show)."""
    image = side_by_side(driving, video, count)
    if image is None:
        return None
    path = video.with_suffix(".strip.png")
    cv2.imwrite(str(path), image)
    return path
