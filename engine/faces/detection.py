"""Face detection: pluggable detectors, S3FD box decoding, NMS, and the largest face of a frame.

Two detectors share one interface (:class:`FaceDetector`): ``haar``, OpenCV's frontal-face cascade, which
needs no downloaded weights and is the built-in default; and ``s3fd``, the network Wav2Lip uses, run in
GPU batches with the user-supplied ``s3fd.pth``. Both detect on a downscaled copy of each frame (detection
is the usual bottleneck, and faces in talking-head video are large) and return boxes in full-frame pixels.

engine.faces.tracking turns per-frame detections into one box per frame.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.core.device import resolve_device, run_with_oom_backoff
from engine.core.errors import InputError
from engine.core.weights import WeightsError
from engine.faces import DETECTORS
from engine.models.checkpoints import CheckpointError
from engine.models.s3fd import ANCHOR_SIZES, FACE_CLASS, INPUT_MEAN, STRIDES, VARIANCES, load_s3fd

Detections = np.ndarray  # (K, 5) float32: x1, y1, x2, y2, score, in full-frame pixel coordinates

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# How far a Haar box is grown, as fractions of its own height (top, bottom) and width (left, right), to look
# like an S3FD box. The cascade's square box runs from the forehead to just below the mouth; S3FD's (which
# Wav2Lip was trained on) reaches the chin. On assets/face.jpg the chin is 10-18% of the box height below
# the Haar box (detect scale 0.5 / 1.0), so 20% puts the bottom at or just under the chin and gives the
# height/width ratio of about 1.2 that S3FD boxes of frontal faces have. Top and sides already match.
HAAR_TO_S3FD = (0.0, 0.2, 0.0, 0.0)
# Candidates kept per image before NMS, by score. Real faces give tens; the cap bounds the IoU matrix
# (1000 x 1000) when a bad or random checkpoint scores thousands of anchors above the threshold.
PRE_NMS_TOP_K = 1000
# exp() argument limit for decoded box sizes: 10 is e^10 = 22026 anchors wide, far beyond any frame. Without it a
# corrupt output decodes to an infinite box, and two of them overlap by inf/inf = nan in NMS, which then keeps both.
_MAX_LOG_SIZE = 10.0


S3FD_MIN_SIDE = 32  # the smallest frame side S3FD's six poolings leave a pixel of


class FaceError(InputError):
    """Face detection cannot run as asked; the message says why and what to do."""


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in BGR frames: ``detect`` returns one (K, 5) float32 array per frame."""

    name: str

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]: ...


# ---------------------------------------------------------------------------------------------- helpers


def _empty() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def _check_scale(detect_scale: float) -> float:
    scale = float(detect_scale)
    if not 0.0 < scale <= 4.0 or not math.isfinite(scale):
        raise FaceError(f"detect_scale {detect_scale} must be in (0, 4] (0.5 detects on half-size frames)")
    return scale


def _check_frame(frame: np.ndarray, index: int, allow_grey: bool = False) -> np.ndarray:
    """Frames must be HxWx3 uint8 BGR (the cascade also takes HxW grey): fail here, not deep inside cv2."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        kind = getattr(frame, "dtype", type(frame).__name__)
        raise FaceError(f"frame {index}: expected a uint8 numpy image, got {kind}")
    grey_ok = allow_grey and frame.ndim == 2
    if not grey_ok and (frame.ndim != 3 or frame.shape[2] != 3):
        raise FaceError(f"frame {index}: expected an HxWx3 BGR image, got shape {frame.shape}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise FaceError(f"frame {index}: image of shape {frame.shape} is too small")
    return frame


def _downscale(frame: np.ndarray, scale: float) -> np.ndarray:
    """The copy the detector sees; INTER_AREA averages pixels, so small faces keep their shape."""
    if scale == 1.0:
        return frame
    height, width = frame.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interpolation)


def _clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def _weights_hint() -> str:
    """Where the user's s3fd.pth is expected, in words (the settings may be unreadable: never fail here)."""
    try:
        from engine.core.settings import get_settings

        where = str(get_settings().weights_dir / "s3fd.pth")
    except Exception:
        where = "$AVATARBENCH_WEIGHTS_DIR/s3fd.pth"
    return (
        "S3FD needs its weights file s3fd.pth (the face detector Wav2Lip uses, about 86 MB), which avatarbench "
        f"never downloads or bundles: it is user-supplied. Put it at {where} (the weights folder is set by "
        "AVATARBENCH_WEIGHTS_DIR) and pass that path, or use the built-in 'haar' detector, which needs no weights"
    )


# ------------------------------------------------------------------------------------------- Haar cascade


def cascade_path(filename: str) -> Path:
    """One of OpenCV's bundled Haar cascades (faces here, eyes for the portrait baseline), or a setup error.

    OpenCV 5 wheels ship neither the cascade files nor the class that reads them (CascadeClassifier moved out of
    the main modules): both are checked here, so the user reads the fix, not an AttributeError."""
    fix = "install opencv-python-headless>=4.10,<5"
    if not hasattr(cv2, "CascadeClassifier"):
        raise FaceError(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 dropped it): {fix}")
    data = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not data or not (Path(data) / filename).is_file():
        raise FaceError(
            f"OpenCV {cv2.__version__} has no Haar cascade {filename} in cv2.data.haarcascades "
            f"(OpenCV 5 wheels no longer ship them): {fix}"
        )
    return Path(data) / filename


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: no weights to download, CPU only, fine for frontal talking heads.

    Boxes are grown by :data:`HAAR_TO_S3FD` so they match what Wav2Lip expects from S3FD. The score is the
    sigmoid of the cascade's last-stage sum (``detectMultiScale3`` level weight): monotone in confidence,
    comparable only among Haar detections.
    """

    name = "haar"

    def __init__(self, detect_scale: float = 0.5, min_face: int = 40, workers: int | None = None) -> None:
        self.detect_scale = _check_scale(detect_scale)
        if min_face < 1:
            raise FaceError(f"min_face {min_face} must be at least 1 pixel")
        self.min_face = int(min_face)
        self._path = cascade_path(HAAR_CASCADE)
        self._local = threading.local()
        _ = self._cascade  # load once now, so a broken install fails here and not in a worker
        # The cascade runs one frame per thread (cv2 releases the GIL); it was the slowest stage of a
        # 720p clip on an H100 machine (17 ms a frame on one core).
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="haar") if self.workers > 1 else None

    @property
    def _cascade(self) -> cv2.CascadeClassifier:
        """One classifier per thread: CascadeClassifier is not safe to share between threads."""
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(str(self._path))
            if cascade.empty():
                raise FaceError(f"OpenCV could not load the Haar cascade {self._path}")
            self._local.cascade = cascade
        return cascade

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        checked = [_check_frame(f, i, allow_grey=True) for i, f in enumerate(frames)]
        if self._pool is None or len(checked) < 2:
            return [self._detect_one(f) for f in checked]
        return list(self._pool.map(self._detect_one, checked))

    def _detect_one(self, frame: np.ndarray) -> np.ndarray:
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        small = cv2.equalizeHist(_downscale(grey, self.detect_scale))
        min_size = max(1, round(self.min_face * self.detect_scale))
        rects, _levels, weights = self._cascade.detectMultiScale3(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size), outputRejectLevels=True
        )
        if len(rects) == 0:
            return _empty()
        rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        height, width = frame.shape[:2]
        sx, sy = width / small.shape[1], height / small.shape[0]
        x1, y1 = rects[:, 0] * sx, rects[:, 1] * sy
        w, h = rects[:, 2] * sx, rects[:, 3] * sy
        top, bottom, left, right = HAAR_TO_S3FD
        boxes = np.stack([x1 - left * w, y1 - top * h, x1 + w * (1 + right), y1 + h * (1 + bottom)], axis=1)
        scores = 1.0 / (1.0 + np.exp(-weights))
        out = np.concatenate([_clip_boxes(boxes, width, height), scores[:, None]], axis=1).astype(np.float32)
        return out[np.argsort(-out[:, 4], kind="stable")]


# ------------------------------------------------------------------------------------------ NMS and S3FD


def box_iou(a: torch.Tensor, b: torch.Tensor, pixel: float = 0.0) -> torch.Tensor:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), x1 y1 x2 y2 -> (N, M).

    ``pixel`` 1 counts both end pixels (width x2 - x1 + 1), the convention of upstream S3FD's NMS."""
    area_a = (a[:, 2] - a[:, 0] + pixel).clamp(min=0) * (a[:, 3] - a[:, 1] + pixel).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0] + pixel).clamp(min=0) * (b[:, 3] - b[:, 1] + pixel).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left + pixel).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, pixel: float = 0.0) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, highest score first (``pixel`` as in ``box_iou``).

    Exact greedy result without a loop over boxes: with boxes sorted by score and ``over[i, j]`` = "i comes
    before j and overlaps it by more than ``iou``", box j is kept iff no *kept* i suppresses it. Iterating
    keep <- not any(keep[i] and over[i, j]) from all-kept fixes one more leading box per pass and stops at
    the unique fixed point, the greedy answer; passes = the longest suppression chain (a few in practice).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order].float()
    over = torch.triu(box_iou(ranked, ranked, pixel) > iou, diagonal=1).float()
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(n):
        new_keep = (keep.float() @ over) == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def s3fd_priors(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Anchors (N, 4) as centre x, centre y, width, height for every cell of every head, in decode order.

    Cell (row i, column j) of a head with stride s is centred at (s/2 + j*s, s/2 + i*s), side 4*s, as upstream
    detect.py does it, also for the three last heads whose maps are larger than input/stride.
    """
    device = outputs[0].device
    parts = []
    for head, (stride, anchor) in enumerate(zip(STRIDES, ANCHOR_SIZES, strict=True)):
        rows, cols = outputs[2 * head].shape[-2:]
        ys = torch.arange(rows, device=device, dtype=torch.float32) * stride + stride / 2
        xs = torch.arange(cols, device=device, dtype=torch.float32) * stride + stride / 2
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        side = torch.full_like(cx, float(anchor))
        parts.append(torch.stack([cx, cy, side, side], dim=-1).reshape(-1, 4))
    return torch.cat(parts)


def _flatten_heads(outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Face probabilities (B, N) (the softmax over each head's raw cls maps, as upstream's detect.py takes it) and
    box offsets (B, N, 4) of all heads, rows then columns per head."""
    scores = [F.softmax(outputs[2 * h].float(), dim=1)[:, FACE_CLASS].flatten(1) for h in range(len(STRIDES))]
    locs = [outputs[2 * h + 1].permute(0, 2, 3, 1).flatten(1, 2) for h in range(len(STRIDES))]
    return torch.cat(scores, dim=1).float(), torch.cat(locs, dim=1).float()


def _decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD decoding: centre = anchor centre + loc * 0.1 * anchor size; size = anchor size * exp(loc * 0.2).

    The far corner is the near one plus the size, as upstream's batch_decode computes it in place (x2 = x1 + w):
    in float32 that differs by an ulp from centre + size / 2 on about a box in five."""
    centre = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp((loc[..., 2:] * VARIANCES[1]).clamp(max=_MAX_LOG_SIZE))
    near = centre - size / 2
    return torch.cat([near, near + size], dim=-1)


def decode_s3fd(
    outputs: list[torch.Tensor],
    image_size: tuple[int, int],
    threshold: float,
    nms_iou: float,
    max_per_image: int = 50,
) -> list[torch.Tensor]:
    """Boxes from S3FD's 12 head outputs: one (K, 5) float32 tensor per image, on the CPU.

    ``outputs`` are ``[cls1, reg1, ..., cls6, reg6]`` with raw ``cls`` scores (as :class:`S3FD` returns them);
    ``image_size`` is the network input's (height, width), to which boxes are clipped after NMS. Scores above
    ``threshold`` go into NMS: the same result as upstream (NMS over scores > 0.05, then > 0.5), since a box
    can only be suppressed by a higher-scoring one; overlaps count both end pixels, as upstream's bbox.nms does.
    At most ``max_per_image`` boxes, highest score first. The scores are taken and ranked on the outputs' device;
    the best candidates are decoded and merged on the CPU, as upstream moves the outputs there first: a GPU's exp
    and fused multiply-adds could move a corner by a float32 step."""
    if len(outputs) != 2 * len(STRIDES):
        raise FaceError(f"S3FD gives {2 * len(STRIDES)} head outputs (cls, reg per head), got {len(outputs)}")
    scores, loc = _flatten_heads(outputs)
    priors = s3fd_priors(outputs)
    k = min(PRE_NMS_TOP_K, scores.shape[1])
    top_scores, top_index = scores.topk(k, dim=1)  # sorted, per image
    top_loc = torch.gather(loc, 1, top_index[..., None].expand(-1, -1, 4))
    on_cpu = torch.cat([top_loc, priors[top_index], top_scores[..., None]], dim=-1).cpu()  # one copy off the device
    top_boxes, top_scores = _decode_boxes(on_cpu[..., :4], on_cpu[..., 4:8]), on_cpu[..., 8]
    height, width = image_size
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    results = []
    for boxes, image_scores in zip(top_boxes, top_scores, strict=True):
        passed = image_scores > threshold
        boxes, image_scores = boxes[passed], image_scores[passed]
        keep = nms(boxes, image_scores, nms_iou, pixel=1.0)[:max_per_image]
        clipped = torch.minimum(boxes[keep].clamp(min=0), limits)
        results.append(torch.cat([clipped, image_scores[keep, None]], dim=1))
    return results


class S3FDDetector:
    """S3FD, the detector Wav2Lip was trained with, run in batches on ``device`` (official ``s3fd.pth``).

    Frames of different sizes in one call are grouped by size (each group is a batch of equal shapes; no
    resizing to a common size, which would change the face scale S3FD sees). Each batch is resized on the
    CPU (INTER_AREA), stacked, uploaded as uint8, and flipped to RGB, mean-subtracted and made NCHW on the device.
    A real out-of-memory error halves the batch (``run_with_oom_backoff``) and the smaller size is kept.
    """

    name = "s3fd"

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str | torch.device = "cpu",
        detect_scale: float = 0.5,
        batch_size: int = 16,
        threshold: float = 0.5,
        nms_iou: float = 0.3,
    ) -> None:
        self.detect_scale = _check_scale(detect_scale)
        if batch_size < 1:
            raise FaceError(f"batch_size {batch_size} must be at least 1")
        self.batch_size, self.threshold, self.nms_iou = int(batch_size), float(threshold), float(nms_iou)
        self.device = device if isinstance(device, torch.device) else resolve_device(device).device
        self.model = _load_detector(Path(checkpoint), self.device)
        self._mean = torch.tensor(INPUT_MEAN, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        checked = [_check_frame(f, i) for i, f in enumerate(frames)]
        results: list[np.ndarray] = [_empty()] * len(checked)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(checked):
            groups.setdefault(frame.shape, []).append(i)
        for indices in groups.values():
            pending = list(indices)
            _, self.batch_size = run_with_oom_backoff(
                lambda size, todo=pending: self._run_pending(checked, todo, results, size), self.batch_size
            )
        return results

    def _run_pending(
        self, frames: list[np.ndarray], pending: list[int], results: list[np.ndarray], batch_size: int
    ) -> None:
        """Detect the frames ``pending`` names, batch by batch, removing each finished batch (an OOM retry
        then resumes where it stopped instead of redoing finished batches)."""
        while pending:
            chunk = pending[:batch_size]
            for i, dets in zip(chunk, self._detect_batch([frames[i] for i in chunk]), strict=True):
                results[i] = dets
            del pending[:batch_size]

    def _detect_batch(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        height, width = frames[0].shape[:2]
        small = np.stack([_downscale(f, self.detect_scale) for f in frames])
        small_h, small_w = small.shape[1:3]
        if min(small_h, small_w) < S3FD_MIN_SIDE:  # its last pooling would have nothing to pool: a RuntimeError
            raise FaceError(
                f"S3FD sees these {width}x{height} frames at {small_w}x{small_h} (detect scale {self.detect_scale:g}); "
                f"its network needs {S3FD_MIN_SIDE} pixels a side: raise the detect scale (up to 1), give a larger "
                "picture, or use the haar detector"
            )
        with torch.inference_mode():
            x = torch.from_numpy(small).to(self.device, non_blocking=True)
            # The released weights were trained (face_alignment) on RGB with this mean subtracted, and
            # upstream Wav2Lip flips its BGR frames before detection: do the same.
            x = x.flip(-1).permute(0, 3, 1, 2).float().sub_(self._mean).contiguous()
            dets = decode_s3fd(self.model(x), (small_h, small_w), self.threshold, self.nms_iou)
            counts = [len(d) for d in dets]
            merged = torch.cat(dets).numpy()
        merged[:, [0, 2]] *= width / small_w
        merged[:, [1, 3]] *= height / small_h
        merged = _clip_boxes(merged, width, height).astype(np.float32)
        return list(np.split(merged, np.cumsum(counts)[:-1]))


def _load_detector(path: Path, device: torch.device) -> torch.nn.Module:
    """load_s3fd with the message users need: where the file goes when it is missing, else the checkpoint's."""
    if not path.is_file():
        raise FaceError(f"no S3FD checkpoint at {path}. {_weights_hint()}")
    try:
        return load_s3fd(path, device=device)
    except CheckpointError as exc:
        raise FaceError(str(exc)) from exc


def make_detector(
    name: str,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    detect_scale: float = 0.5,
) -> FaceDetector:
    """The detector called ``name`` ("haar" or "s3fd"); s3fd needs the path of the user's s3fd.pth."""
    key = str(name).strip().lower()
    if key == "haar":
        return HaarDetector(detect_scale=detect_scale)
    if key == "s3fd":
        if checkpoint is None or str(checkpoint) == "":
            raise WeightsError(f"the s3fd detector needs a checkpoint and none was given. {_weights_hint()}")
        return S3FDDetector(checkpoint, device=device, detect_scale=detect_scale)
    raise FaceError(f"unknown face detector {name!r}: choose one of {', '.join(DETECTORS)}")


def missed_face_hint(detect_scale: float) -> str:
    """What to try when no face was found: detection on the whole frames where it ran on shrunk ones (a face that is
    small in its frame is lost at 0.5: a 256-pixel portrait's), and a fixed box. The refusal said only "use a clear,
    frontal face photo" of a clear, frontal, small one."""
    whole = f"try --detect-scale 1 to detect on whole frames (at {detect_scale:g} a small face is missed), or " if (
        detect_scale < 1) else ""  # fmt: skip
    return f"{whole}give the face's box in pixels with --box X1,Y1,X2,Y2"


def largest(detections: np.ndarray) -> np.ndarray | None:
    """The detection (5,) with the largest box area, or None when there is none."""
    dets = np.asarray(detections, dtype=np.float32).reshape(-1, 5)
    dets = dets[np.isfinite(dets).all(axis=1)]
    if len(dets) == 0:
        return None
    areas = (dets[:, 2] - dets[:, 0]).clip(min=0) * (dets[:, 3] - dets[:, 1]).clip(min=0)
    return dets[int(np.argmax(areas))]
