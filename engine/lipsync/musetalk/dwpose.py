"""DWPose's 68 face landmarks through ONNX Runtime: the face box MuseTalk was trained with, without mmpose.

Upstream (musetalk/utils/preprocessing.py, get_landmark_and_bbox) runs DWPose-l through mmpose (the config
rtmpose-l_8xb32-270e_coco-ubody-wholebody-384x288, models/dwpose/dw-ll_ucoco_384.pth) as
`inference_topdown(model, frame)`: no person boxes, so the whole frame is the box, and takes the whole-body
keypoints 23..90, the 68 face points. DWPose's ONNX release (huggingface.co/yzd-v/DWPose, dw-ll_ucoco_384.onnx) is
the same network without mmpose's pre- and post-processing; those are here, computed as mmpose 1.1 (MuseTalk's pin)
computes them for that config:

- the box (x1, y1, x2, y2), by default (0, 0, width, height), becomes a centre and a scale 1.25 times its size,
  widened or heightened to 288:384 (w:h); cv2.warpAffine (bilinear, black outside) maps it onto the 288x384 input
  with the matrix cv2.getAffineTransform makes from the same float32 point triples as mmpose's get_warp_matrix;
- BGR to RGB, then (x - mean) / std per channel in float32 (ImageNet's statistics on 0..255);
- the flip test the config asks for (test_cfg flip_test=True): the input mirrored left to right goes through the
  network too, its SimCC vectors are mirrored back (bins reversed, left and right points swapped as COCO-WholeBody's
  swap table says) and averaged with the first pass's;
- SimCC decoding: each point's argmax over its 576 x bins and 768 y bins, divided by the split ratio 2.0; a point
  whose score (the x peak, or the y peak where lower) is not positive goes to bin -1 (mmpose's rule), then back to
  the frame as x / 288 * scale_w + centre_x - scale_w / 2, in float64 as mmpose's numpy promotes it.

Where we differ (on purpose): a frame with a NaN or infinite score has no points, and its box is the detector's;
upstream would take them at the first NaN's bin (a network that overflowed, or a damaged file).

The person detector of the same release (yolox_l.onnx) is an option, off by default because upstream has none: when
on, the highest-scoring person (objectness x class score above 0.3, the bar DWPose's ONNX wrapper keeps) is the box
instead of the whole frame, and a frame without one keeps the whole frame. YOLOX sees the frame resized into its
640x640 input (aspect kept, top-left, grey 114 padding) as BGR 0..255, as YOLOX is trained on OpenCV images (DWPose's
ControlNet wrapper hands it RGB); its box is computed in float32 step by step, as that wrapper's is.

The release may fix its batch dimension at 1; then every image is its own call, else `batch_size` frames (two images
each with the flip test) go in one call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from engine.core.errors import InputError
from engine.models.checkpoints import CheckpointError, sniff
from engine.runtimes.ort_session import OrtOptions, OrtSession, SessionError

if TYPE_CHECKING:
    import onnxruntime as ort

NAME = "dwpose"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DETECTOR_FILE = "yolox_l.onnx"
POSE_EXPECTED = f"DWPose-l's ONNX release ({POSE_FILE} from huggingface.co/yzd-v/DWPose)"
DETECTOR_EXPECTED = f"DWPose's YOLOX-L person detector ({DETECTOR_FILE} from huggingface.co/yzd-v/DWPose)"

INPUT_WIDTH, INPUT_HEIGHT = 288, 384  # the config's codec input_size (w, h)
SPLIT_RATIO = 2.0  # SimCC bins per input pixel
X_BINS, Y_BINS = int(INPUT_WIDTH * SPLIT_RATIO), int(INPUT_HEIGHT * SPLIT_RATIO)  # 576, 768
KEYPOINTS = 133  # COCO-WholeBody: body 0..16, feet 17..22, face 23..90, hands 91..132
FACE_FIRST, FACE_POINTS = 23, 68
PADDING = 1.25  # GetBBoxCenterScale's default
MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB, the config's data_preprocessor
STD = np.array([58.395, 57.12, 57.375], np.float32)

DETECTOR_SIZE = 640  # yolox_l.onnx's input side (read from the file where it says)
DETECTOR_STRIDES = (8, 16, 32)
DETECTOR_PAD = 114
PERSON_SCORE = 0.3  # DWPose's ONNX wrapper keeps persons scoring above this

WHOLE_FRAME, PERSON_BOX = "whole frame", "YOLOX person box"


def _face_mirror() -> tuple[int, ...]:
    """Each face point's mirror image in iBUG's 68-point order (COCO-WholeBody's `swap` for face-0..67): the jaw,
    the brows, the lower nose and the mouth's four arcs are reversed runs, the eyes swap corner by corner, and the
    points on the face's middle line (nose bridge, nose base, chin, the lips' middles) are their own mirror images."""
    mirror = list(range(FACE_POINTS))
    for first, last in ((0, 16), (17, 26), (31, 35), (48, 54), (55, 59), (60, 64), (65, 67)):
        for i in range(first, last + 1):
            mirror[i] = first + last - i
    for right, left in ((36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)):
        mirror[right], mirror[left] = left, right
    return tuple(mirror)


FACE_MIRROR = _face_mirror()
_FACE_ROWS = np.arange(FACE_FIRST, FACE_FIRST + FACE_POINTS)
_MIRRORED_FACE_ROWS = FACE_FIRST + np.array(FACE_MIRROR)


# --------------------------------------------------------------------------- mmpose's top-down geometry


def whole_frame_box(frame_shape: tuple[int, ...]) -> np.ndarray:
    """inference_topdown's box when it is given none: (0, 0, width, height), float32."""
    return np.array([0, 0, frame_shape[1], frame_shape[0]], np.float32)


def center_scale(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A box's centre and its scale (size x 1.25, widened or heightened to 288:384), float32 as mmpose keeps them."""
    x1, y1, x2, y2 = np.asarray(box, np.float32)[:4]
    center = np.array([x1 + x2, y1 + y2], np.float32) * np.float32(0.5)
    width, height = np.array([x2 - x1, y2 - y1], np.float32) * np.float32(PADDING)
    aspect = np.float32(INPUT_WIDTH / INPUT_HEIGHT)  # float32 under NumPy 1.x's scalar rules too, as mmpose's arrays
    scale = [width, width / aspect] if width > height * aspect else [height * aspect, height]
    return center, np.array(scale, np.float32)


def warp_matrix(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The 2x3 matrix from the frame to the network's input: the scale's width onto 288 columns, the centre onto
    the input's centre. Built as mmpose 1.1's get_warp_matrix does (rotation 0): three float32 point pairs (the
    centre, a point half a width above it, a third at a right angle) through cv2.getAffineTransform."""
    half = np.float32(scale[0]) * np.float32(-0.5)
    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, half])
    src[2] = src[1] + np.array([-(src[0, 1] - src[1, 1]), src[0, 0] - src[1, 0]], np.float32)
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [INPUT_WIDTH * 0.5, INPUT_HEIGHT * 0.5]
    dst[1] = dst[0] + np.array([0.0, INPUT_WIDTH * -0.5])
    dst[2] = dst[1] + np.array([-(dst[0, 1] - dst[1, 1]), dst[0, 0] - dst[1, 0]], np.float32)
    return cv2.getAffineTransform(src, dst)


def pose_input(frame: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(3, 384, 288) float32: the box's pixels warped onto the input, RGB, normalised as the config's preprocessor."""
    warped = cv2.warpAffine(frame, warp_matrix(center, scale), (INPUT_WIDTH, INPUT_HEIGHT), flags=cv2.INTER_LINEAR)
    rgb = warped[:, :, ::-1].astype(np.float32)
    return ((rgb - MEAN) / STD).transpose(2, 0, 1)


def flip_averaged(
    simcc_x: np.ndarray, simcc_y: np.ndarray, flipped_x: np.ndarray, flipped_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The face rows (N, 68, bins) of the flip test's average: the mirrored pass's vectors taken from each point's
    mirror image, x bins reversed, then (first + mirrored) * 0.5 as mmpose's RTMCCHead averages them."""
    x = (simcc_x[:, _FACE_ROWS] + flipped_x[:, _MIRRORED_FACE_ROWS, ::-1]) * np.float32(0.5)
    y = (simcc_y[:, _FACE_ROWS] + flipped_y[:, _MIRRORED_FACE_ROWS]) * np.float32(0.5)
    return x, y


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, bins) SimCC vectors -> (N, K, 2) float32 input-pixel coordinates and (N, K) scores: argmax / 2.0;
    the score is the x peak, or the y peak where that is lower, and a point scoring 0 or less is put at bin -1
    (mmpose's rule, NaN peaks included: a NaN y peak leaves the x peak as the score)."""
    x_bins, y_bins = np.argmax(simcc_x, axis=2), np.argmax(simcc_y, axis=2)
    points = np.stack([x_bins, y_bins], axis=-1).astype(np.float32)
    scores, y_peaks = np.max(simcc_x, axis=2), np.max(simcc_y, axis=2)
    lower = scores > y_peaks
    scores[lower] = y_peaks[lower]
    points[scores <= 0] = -1
    return points / np.float32(SPLIT_RATIO), scores


def to_frame(points: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Input-pixel coordinates (K, 2) back to the frame, in mmpose's order of operations and its float64."""
    size = np.array([INPUT_WIDTH, INPUT_HEIGHT], np.float64)
    return points / size * scale.astype(np.float64) + center.astype(np.float64) - np.float32(0.5) * scale


# --------------------------------------------------------------------------- YOLOX's person box


def detector_input(
    frame: np.ndarray, side: tuple[int, int] = (DETECTOR_SIZE, DETECTOR_SIZE)
) -> tuple[np.ndarray, float]:
    """(3, height, width) float32 BGR 0..255 for a detector input of `side` (height, width): the frame resized to fit
    (aspect kept) at the top left, grey 114 around it, as YOLOX's own preprocessing; and the resize ratio."""
    height, width = frame.shape[:2]
    ratio = min(side[0] / height, side[1] / width)
    size = (max(1, int(width * ratio)), max(1, int(height * ratio)))  # a sliver keeps a pixel (OpenCV refuses 0)
    canvas = np.full((side[0], side[1], 3), DETECTOR_PAD, np.uint8)
    canvas[: size[1], : size[0]] = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
    return canvas.transpose(2, 0, 1).astype(np.float32), ratio


def _grid(side_h: int, side_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Each YOLOX output row's cell (x, y) and stride: strides 8, 16, 32 in turn, each grid row by row."""
    cells, strides = [], []
    for stride in DETECTOR_STRIDES:
        ys, xs = np.meshgrid(np.arange(side_h // stride), np.arange(side_w // stride), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full(xs.size, stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def best_person(rows: np.ndarray, ratio: float, side: tuple[int, int]) -> np.ndarray | None:
    """The highest-scoring person (class 0) among YOLOX's raw rows (cx, cy, w, h offsets, objectness, class
    scores; sigmoids applied in the export) as (x1, y1, x2, y2) in the frame; None when none scores above 0.3.
    The best box survives YOLOX's class-wise NMS by construction, so NMS is not needed to find it."""
    scores = rows[:, 4] * rows[:, 5]
    best = int(np.argmax(scores))
    if not float(scores[best]) > PERSON_SCORE:  # in float64, as the wrapper's stacked scores (float32's 0.3 passes)
        return None
    cells, strides = _grid(*side)
    cx, cy = (rows[best, :2] + cells[best]) * strides[best]
    with np.errstate(over="ignore"):
        w, h = np.exp(rows[best, 2:4].astype(np.float32)) * strides[best]
    half_w, half_h = w / np.float32(2), h / np.float32(2)
    box = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32)
    return box / np.float32(ratio)  # every step in float32, as DWPose's wrapper computes its boxes


# --------------------------------------------------------------------------- sessions


def _ort_status(exc: BaseException) -> str:
    """ORT's status word (INVALID_PROTOBUF, INVALID_GRAPH...) without the server path its message holds."""
    found = re.search(r"\b\d+\s*:\s*([A-Z_]{4,})\b", str(exc))
    return found[1] if found else type(exc.__cause__ or exc).__name__


def _open(path: str | os.PathLike[str], expected: str, options: OrtOptions) -> OrtSession:
    """A session for an ONNX file; a web page, an LFS pointer or a file ORT cannot load is a CheckpointError."""
    path = Path(path)
    sniff(path, expected)
    try:
        return OrtSession(path, options)
    except SessionError as exc:
        raise CheckpointError(
            f"ONNX Runtime cannot load it ({_ort_status(exc)}): the file is truncated, corrupt or not an ONNX model",
            path=path,
            expected=expected,
        ) from None


def _fixed(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_dims(found: Sequence[object], wanted: Sequence[int | None], what: str, path: Path, expected: str) -> None:
    """Every fixed dimension of `found` equals `wanted`'s (None: any); symbolic dimensions are checked when run."""
    if len(found) != len(wanted) or any(
        w is not None and _fixed(f) not in (None, w) for f, w in zip(found, wanted, strict=True)
    ):
        shape = "x".join("N" if w is None else str(w) for w in wanted)
        raise CheckpointError(f"its {what} has shape {list(found)}, not {shape}", path=path, expected=expected)


def _ort(session: OrtSession) -> ort.InferenceSession:
    if session.session is None:
        raise RuntimeError("the DWPose session was closed")
    return session.session


def _session_batch(session: OrtSession) -> int | None:
    """The batch size the file fixes (the release may say 1), or None for a dynamic batch."""
    return _fixed(_ort(session).get_inputs()[0].shape[0])


class DWPose:
    """A LandmarkProvider (avatar.py): DWPose's 68 face landmarks per frame, from its ONNX release.

    `device` is the job's (torch.device or "cpu"/"cuda[:N]"): the CUDA provider on a GPU, checked for ORT's silent
    fall back to the CPU (then `warnings` says so and why). `person_boxes` uses `detector_path` (yolox_l.onnx) for
    the box instead of the whole frame; `flip_test=False` halves the work and leaves mmpose's numerics.
    """

    name = NAME

    def __init__(
        self,
        pose_path: str | os.PathLike[str],
        detector_path: str | os.PathLike[str] | None = None,
        *,
        device: object = "cpu",
        person_boxes: bool = False,
        flip_test: bool = True,
        batch_size: int = 8,
        gpu_memory_fraction: float = 0.9,
    ) -> None:
        if person_boxes and detector_path is None:
            raise InputError(f"DWPose's person boxes need its detector, {DETECTOR_FILE}: put it beside {POSE_FILE}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
            raise InputError(f"DWPose's batch_size must be a whole number from 1 to 1024, got {batch_size!r}")
        kind, _, index = str(device).partition(":")
        options = OrtOptions(
            provider="cuda" if kind == "cuda" else "cpu",
            device_id=int(index or 0),
            gpu_memory_fraction=gpu_memory_fraction,
        )
        self.flip_test, self.batch_size = bool(flip_test), batch_size
        self.pose_path = Path(pose_path)
        self.pose = _open(self.pose_path, POSE_EXPECTED, options)
        self._pose_names = self._check_pose()
        self.detector: OrtSession | None = None
        self.detector_path = None if detector_path is None else Path(detector_path)
        self.detector_side = (DETECTOR_SIZE, DETECTOR_SIZE)
        self._detector_rows = 0
        if person_boxes and self.detector_path is not None:
            self.detector = _open(self.detector_path, DETECTOR_EXPECTED, options)
            self._check_detector(self.detector_path)
        self.warnings = [
            f"DWPose's {label} asked for {s.requested} but runs on {s.ran_on} ({s.fallback_reason})"
            for label, s in (("landmark model", self.pose), ("person detector", self.detector))
            if s is not None and s.fell_back
        ]

    @property
    def box(self) -> str:
        """What the network sees of each frame: the whole frame (upstream's way) or YOLOX's person box."""
        return WHOLE_FRAME if self.detector is None else PERSON_BOX

    @property
    def provider(self) -> str:
        return self.pose.ran_on

    def close(self) -> None:
        self.pose.close()
        if self.detector is not None:
            self.detector.close()

    # ------------------------------------------------------------------ checks

    def _check_pose(self) -> tuple[str, str]:
        """The input's shape and the two SimCC outputs (by name, else by their bins); returns their names."""
        session, path = _ort(self.pose), self.pose_path
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"it has {len(inputs)} inputs, not 1 image", path=path, expected=POSE_EXPECTED)
        _check_dims(inputs[0].shape, [None, 3, INPUT_HEIGHT, INPUT_WIDTH], "input", path, POSE_EXPECTED)
        outputs = {o.name: o.shape for o in session.get_outputs()}
        names = []
        for name, bins in (("simcc_x", X_BINS), ("simcc_y", Y_BINS)):
            if name not in outputs:
                name = next((n for n, s in outputs.items() if len(s) == 3 and _fixed(s[2]) == bins), name)
            if name not in outputs:
                raise CheckpointError(
                    f"it has no SimCC output of {bins} bins (its outputs: {', '.join(outputs)})",
                    path=path,
                    expected=POSE_EXPECTED,
                )
            _check_dims(outputs[name], [None, KEYPOINTS, bins], f"output {name}", path, POSE_EXPECTED)
            names.append(name)
        return names[0], names[1]

    def _check_detector(self, path: Path) -> None:
        assert self.detector is not None
        session = _ort(self.detector)
        shape = session.get_inputs()[0].shape
        _check_dims(shape, [None, 3, None, None], "input", path, DETECTOR_EXPECTED)
        side_h, side_w = _fixed(shape[2]) or DETECTOR_SIZE, _fixed(shape[3]) or DETECTOR_SIZE
        if side_h % 32 or side_w % 32:
            raise CheckpointError(f"its input is {side_w}x{side_h}, not a multiple of 32", path=path,
                                  expected=DETECTOR_EXPECTED)  # fmt: skip
        self.detector_side = (side_h, side_w)
        self._detector_rows = sum((side_h // s) * (side_w // s) for s in DETECTOR_STRIDES)
        _check_dims(
            session.get_outputs()[0].shape, [None, self._detector_rows, None], "output", path, DETECTOR_EXPECTED
        )

    # ------------------------------------------------------------------ running

    def _run(self, session: OrtSession, images: np.ndarray) -> list[np.ndarray]:
        """Every output for `images`, in calls of the file's fixed batch (padded) or of any size when dynamic."""
        fixed = _session_batch(session)
        step = fixed or len(images)
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            real = len(chunk)
            if fixed and real < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - real, *chunk.shape[1:]), chunk.dtype)])
            outputs = session.run({session.input_names[0]: np.ascontiguousarray(chunk)})
            parts.append([np.asarray(o)[:real] for o in outputs])
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def _simcc(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = dict(zip(self.pose.output_names, self._run(self.pose, images), strict=True))
        simcc_x, simcc_y = (outputs[name] for name in self._pose_names)
        count = len(images)
        if simcc_x.shape != (count, KEYPOINTS, X_BINS) or simcc_y.shape != (count, KEYPOINTS, Y_BINS):
            raise CheckpointError(
                f"it gave SimCC outputs of shapes {simcc_x.shape} and {simcc_y.shape} for {count} images, not "
                f"({count}, {KEYPOINTS}, {X_BINS}) and ({count}, {KEYPOINTS}, {Y_BINS})",
                path=self.pose_path,
                expected=POSE_EXPECTED,
            )
        return simcc_x.astype(np.float32, copy=False), simcc_y.astype(np.float32, copy=False)

    def boxes(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each frame's box for the network: the whole frame, or YOLOX's best person where asked for and found."""
        if self.detector is None:
            return [whole_frame_box(frame.shape) for frame in frames]
        boxes = []
        for frame in frames:
            image, ratio = detector_input(frame, self.detector_side)
            rows = self._run(self.detector, image[None])[0][0]
            if rows.ndim != 2 or rows.shape[0] != self._detector_rows or rows.shape[1] < 6:
                raise CheckpointError(
                    f"it gave rows of shape {rows.shape}, not ({self._detector_rows}, 5 + classes)",
                    path=self.detector_path,
                    expected=DETECTOR_EXPECTED,
                )
            person = best_person(rows, ratio, self.detector_side)
            boxes.append(whole_frame_box(frame.shape) if person is None else person)
        return boxes

    def face_keypoints(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 68, 2) float64 face points in frame pixels and their (N, 68) scores, `batch_size` frames a call."""
        points, scores = [], []
        for start in range(0, len(frames), self.batch_size):
            chunk = [
                _checked_frame(frame, start + i) for i, frame in enumerate(frames[start : start + self.batch_size])
            ]
            geometry = [center_scale(box) for box in self.boxes(chunk)]
            images = np.stack([pose_input(frame, c, s) for frame, (c, s) in zip(chunk, geometry, strict=True)])
            count = len(images)
            if self.flip_test:
                simcc_x, simcc_y = self._simcc(np.concatenate([images, images[..., ::-1]]))
                x, y = flip_averaged(simcc_x[:count], simcc_y[:count], simcc_x[count:], simcc_y[count:])
            else:
                simcc_x, simcc_y = self._simcc(images)
                x, y = simcc_x[:, _FACE_ROWS], simcc_y[:, _FACE_ROWS]
            found, score = simcc_decode(x, y)
            points += [to_frame(p, c, s) for p, (c, s) in zip(found, geometry, strict=True)]
            scores.append(score)
        if not points:
            return np.zeros((0, FACE_POINTS, 2)), np.zeros((0, FACE_POINTS), np.float32)
        return np.stack(points), np.concatenate(scores)

    def landmarks(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The LandmarkProvider call: (68, 2) points per frame as upstream takes them (keypoints 23..90, every
        score kept, as upstream keeps them); None where a face point's score is NaN or infinite: the network gave
        no numbers there (an overflow, a damaged file), and the frame's box comes from the detector, where upstream
        would take the points at the first NaN's bins."""
        points, scores = self.face_keypoints(frames)
        return [p if np.isfinite(s).all() else None for p, s in zip(points, scores, strict=True)]


def _checked_frame(frame: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        kind = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"frame {index}: DWPose takes HxWx3 uint8 BGR images, got {kind}")
    return frame


__all__ = [
    "DETECTOR_FILE",
    "FACE_MIRROR",
    "NAME",
    "PERSON_BOX",
    "POSE_FILE",
    "WHOLE_FRAME",
    "DWPose",
    "best_person",
    "center_scale",
    "detector_input",
    "flip_averaged",
    "pose_input",
    "simcc_decode",
    "to_frame",
    "warp_matrix",
    "whole_frame_box",
]
