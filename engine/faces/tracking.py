"""From per-frame detections to the one box per frame the lip-sync model crops: the largest face, Wav2Lip's
``--pads``, a smoothing filter that steadies a static face without lagging a moving one, and a bounded hold-over
of the last box through short detection gaps that ends at a scene cut (a new shot holds no box of the last).

Deliberately different from upstream's inference.py, which takes S3FD's highest-scoring box (the largest differs
only with several faces) and averages each padded box, cut to whole pixels, with the next four in place (the last
four frames average boxes already smoothed; a clip of under five frames gets its last boxes): a look-ahead a split
job's segments cannot make, so the tracker is causal. With one face and no smoothing the boxes are those of
upstream's --nosmooth exactly."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.faces.detection import FaceError, largest


@dataclass
class FaceTrack:
    """The tracker's box for one frame (x1, y1, x2, y2, padded and clipped; None = pass the frame through)."""

    box: tuple[int, int, int, int] | None
    detected: bool


class BoxSmoother:
    """Adaptive exponential smoothing of box corners that steadies jitter and follows real motion at once.

    The blend weight grows with how far the new box is from the smoothed one, relative to the box size:
    ``alpha = min_alpha + (1 - min_alpha) * min(1, move / follow)**2``. Jitter of 1-3% of the size gets
    alpha near ``min_alpha`` (heavy smoothing); a move of ``follow`` (10%) or more of the size gets alpha 1,
    so the box is where the face is in the same frame: no lag on fast motion or cuts.
    """

    def __init__(self, min_alpha: float = 0.15, follow: float = 0.1) -> None:
        self.min_alpha, self.follow = min_alpha, follow
        self.state: np.ndarray | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float64)
        if self.state is None:
            self.state = box.copy()
            return self.state.copy()
        size = max(1.0, 0.5 * ((self.state[2] - self.state[0]) + (self.state[3] - self.state[1])))
        move = float(np.abs(box - self.state).max()) / size
        alpha = self.min_alpha + (1.0 - self.min_alpha) * min(1.0, move / self.follow) ** 2
        self.state = self.state + alpha * (box - self.state)
        return self.state.copy()


def _pad_and_clip(
    box: np.ndarray, pads: tuple[int, int, int, int], frame_shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """Wav2Lip's --pads (top, bottom, left, right; negative ones take pixels off), then clipped to the frame, as
    upstream's inference.py does it: the box clipped at 0 and truncated to whole pixels, then padded and clipped.
    None when nothing is left."""
    height, width = frame_shape[:2]
    top, bottom, left, right = pads
    bx1, by1, bx2, by2 = (int(max(float(v), 0.0)) for v in box[:4])
    x1, x2 = min(max(bx1 - left, 0), width), min(max(bx2 + right, 0), width)
    y1, y2 = min(max(by1 - top, 0), height), min(max(by2 + bottom, 0), height)
    return (x1, y1, x2, y2) if x2 - x1 >= 2 and y2 - y1 >= 2 else None


def check_fixed_box(box: tuple[int, ...], width: int, height: int) -> None:
    """Refuse a fixed face box (x1, y1, x2, y2) with less than 2x2 pixels inside width x height frames: every frame
    would pass through unsynced, which no one asking for a box wants."""
    if _pad_and_clip(np.asarray(box, float), (0, 0, 0, 0), (height, width)) is None:
        x1, y1, x2, y2 = (int(v) for v in box)
        inside = 0 <= x1 < width and 0 <= y1 < height and 0 < x2 <= width and 0 < y2 <= height
        where = "leaves under 2x2 pixels of" if inside else "lies outside"
        raise FaceError(
            f"the face box {x1},{y1},{x2},{y2} (X1,Y1,X2,Y2) {where} the {width}x{height} picture: give one "
            "inside it, at least 2 pixels wide and high"
        )


def clipped_box_warning(box: tuple[int, ...], width: int, height: int) -> str | None:
    """A warning where a fixed face box reaches past the picture: it is clipped to it (upstream's inference.py stops
    there with an index error), and the face crop is then not the box asked for."""
    x1, y1, x2, y2 = (int(v) for v in box)
    if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
        return None
    kept = f"{max(x1, 0)},{max(y1, 0)},{min(x2, width)},{min(y2, height)}"
    return f"the face box {x1},{y1},{x2},{y2} reaches past the {width}x{height} picture: it is clipped to {kept}"


THUMB_SIDE = 32  # consecutive frames are compared as grey thumbnails this many pixels a side
CUT_THRESHOLD = 30.0  # mean grey-level change between consecutive thumbnails (0..255) that is a new shot


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A frame's THUMB_SIDE² grey thumbnail (float32, 0..255), area-averaged from about 100 pixels a side (every
    n-th pixel: a quarter of a millisecond at 720p). Camera noise and small motion average out; a change of shot
    does not."""
    step = max(1, min(frame.shape[:2]) // 96)
    small = cv2.resize(
        np.ascontiguousarray(frame[::step, ::step]), (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA
    )
    small = small.astype(np.float32)
    return small.mean(axis=2) if small.ndim == 3 else small


def is_cut(before: np.ndarray | None, after: np.ndarray) -> bool:
    """Whether the frame of thumbnail `after` starts a new shot after the frame of `before` (None: the first)."""
    return before is not None and float(np.abs(after - before).mean()) > CUT_THRESHOLD


class SceneCuts:
    """Fed a clip's frames in order, says of each whether it starts a new shot (the first frame does not)."""

    def __init__(self) -> None:
        self.first: np.ndarray | None = None  # the first and last frames' thumbnails
        self.last: np.ndarray | None = None

    def __call__(self, frame: np.ndarray) -> bool:
        thumb = thumbnail(frame)
        cut, self.last = is_cut(self.last, thumb), thumb
        self.first = thumb if self.first is None else self.first
        return cut


class FaceTracker:
    """One box per frame from per-frame detections: largest face, pads, smoothing, short-gap hold-over.

    ``fixed_box`` (x1, y1, x2, y2 in frame pixels) replaces detection: every frame gets it, clipped, with
    ``detected=True`` and no pads; ``missed`` then stays 0. Note Wav2Lip's ``--box`` is ordered
    (top, bottom, left, right): convert before passing it here.
    """

    def __init__(
        self,
        pads: tuple[int, int, int, int] = (0, 10, 0, 0),
        smooth: bool = True,
        max_gap: int = 12,
        fixed_box: tuple[int, int, int, int] | None = None,
    ) -> None:
        if len(pads) != 4:
            raise FaceError(f"pads must be (top, bottom, left, right), got {pads!r}")
        if max_gap < 0:
            raise FaceError(f"max_gap {max_gap} must be >= 0")
        if fixed_box is not None and (
            len(fixed_box) != 4 or fixed_box[2] <= fixed_box[0] or fixed_box[3] <= fixed_box[1]
        ):
            raise FaceError(f"fixed_box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {fixed_box!r}")
        self.pads = tuple(int(p) for p in pads)
        self.smooth, self.max_gap, self.fixed_box = smooth, int(max_gap), fixed_box
        self.missed = 0
        self.padded_away = 0  # frames whose face the pads left no box of
        self._smoother = BoxSmoother()
        self._last: tuple[int, int, int, int] | None = None
        self._gap = 0

    def update(self, detections: np.ndarray, frame_shape: tuple[int, ...], cut: bool = False) -> FaceTrack:
        """The frame's box; `cut`: the frame starts a new shot (SceneCuts), so the last shot's box is not held over
        into it (a mouth was pasted onto whatever the new shot showed there for up to max_gap frames) and its face
        starts a fresh track."""
        if self.fixed_box is not None:
            return FaceTrack(_pad_and_clip(np.asarray(self.fixed_box, float), (0, 0, 0, 0), frame_shape), True)
        if cut:
            self._last = None
            self._smoother.reset()
        face = largest(detections)
        box = None
        if face is not None:
            raw = face[:4].astype(np.float64)
            box = _pad_and_clip(self._smoother(raw) if self.smooth else raw, self.pads, frame_shape)
            self.padded_away += box is None
        if box is not None:
            self._last, self._gap = box, 0
            return FaceTrack(box, True)
        return self._carry_over()

    def _carry_over(self) -> FaceTrack:
        """No face this frame: keep the last box for up to max_gap frames of the same shot, then pass frames
        through."""
        self.missed += 1
        self._gap += 1
        if self._last is not None and self._gap <= self.max_gap:
            return FaceTrack(self._last, False)
        self._last = None
        self._smoother.reset()  # a face that comes back after a long gap starts a fresh track
        return FaceTrack(None, False)
