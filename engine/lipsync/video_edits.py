"""Upstream Wav2Lip's edits of a face video before anything else is done with it (inference.py's --resize_factor,
--rotate and --crop), in its order: shrink by a whole factor, turn a quarter clockwise, then keep a rectangle.

Why: a 4K clip is shrunk to save time, a clip stored on its side is turned upright, and a cut keeps one face of
several; the output video has the edited frames' size, as upstream's does. A photo is never edited, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engine.core.media import MIN_SIDE
from engine.lipsync.config import LipSyncError


@dataclass(frozen=True)
class VideoEdits:
    resize_factor: int = 1
    rotate: bool = False
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)  # top, bottom, left, right; -1: to the last row or column

    @classmethod
    def of(cls, config: Any) -> VideoEdits:
        return cls(int(config.resize_factor), bool(config.rotate), tuple(int(v) for v in config.crop))

    @property
    def none(self) -> bool:
        return self == VideoEdits()

    @property
    def flags(self) -> list[str]:
        """The options that ask for an edit, by their flags."""
        default = VideoEdits()
        asked = (self.resize_factor != default.resize_factor, self.rotate, self.crop != default.crop)
        return [flag for flag, on in zip(("--resize-factor", "--rotate", "--crop"), asked, strict=True) if on]

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The edited frames' (width, height) for a video of `width` x `height`; LipSyncError where the edits leave
        no picture (checked before any frame is decoded)."""
        width, height = width // self.resize_factor, height // self.resize_factor
        if self.rotate:
            width, height = height, width
        top, bottom, left, right = self._window(width, height)
        if bottom - top < MIN_SIDE or right - left < MIN_SIDE:
            raise LipSyncError(
                f"crop {','.join(map(str, self.crop))} leaves {max(right - left, 0)}x{max(bottom - top, 0)} pixels "
                f"of the {width}x{height} video (after --resize-factor and --rotate); at least {MIN_SIDE}x{MIN_SIDE} "
                "are needed, as for any face: TOP below BOTTOM and LEFT below RIGHT, within the frame"
            )
        return right - left, bottom - top

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.none:
            return frame
        if self.resize_factor > 1:
            height, width = frame.shape[:2]
            frame = cv2.resize(frame, (width // self.resize_factor, height // self.resize_factor))
        if self.rotate:
            frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
        top, bottom, left, right = self._window(frame.shape[1], frame.shape[0])
        return np.ascontiguousarray(frame[top:bottom, left:right])

    def _window(self, width: int, height: int) -> tuple[int, int, int, int]:
        top, bottom, left, right = self.crop
        if top < 0 or left < 0:
            raise LipSyncError(f"crop {','.join(map(str, self.crop))}: TOP and LEFT are 0 or more (-1 is for BOTTOM "
                               "and RIGHT: to the last row or column)")  # fmt: skip
        bottom = height if bottom == -1 else min(bottom, height)
        right = width if right == -1 else min(right, width)
        return top, bottom, left, right


__all__ = ["VideoEdits"]
