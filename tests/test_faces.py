"""Face detection: Haar on the real face, NMS, S3FD decoding and batching, the tracker, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.core.weights import WeightsError
from engine.faces.detection import (
    FaceDetector,
    FaceError,
    HaarDetector,
    S3FDDetector,
    box_iou,
    decode_s3fd,
    largest,
    make_detector,
    nms,
)
from engine.faces.tracking import FaceTracker
from engine.models.s3fd import head_map_sizes, random_s3fd_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# Where the face is in assets/face.jpg (looked up by eye): hairline to chin, cheek to cheek.
FACE_REGION = (180.0, 70.0, 272.0, 180.0)


def _iou(a, b) -> float:
    """IoU of two x1 y1 x2 y2 boxes, written out: the reference for the vectorised code."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    image = cv2.imread(str(ROOT / "assets" / "face.jpg"))
    assert image is not None and image.shape == (512, 512, 3)
    return image


@pytest.fixture(scope="module")
def s3fd(tmp_path_factory: pytest.TempPathFactory) -> S3FDDetector:
    path = tmp_path_factory.mktemp("s3fd") / "s3fd.pth"
    random_s3fd_checkpoint(path, seed=0)
    return S3FDDetector(path, device="cpu", detect_scale=0.5, batch_size=4)


# ---------------------------------------------------------------------------------------------- Haar


def test_haar_finds_the_face_at_both_scales(face: np.ndarray) -> None:
    boxes = {}
    for scale in (0.5, 1.0):
        (dets,) = HaarDetector(detect_scale=scale).detect([face])
        assert dets.dtype == np.float32 and dets.shape == (1, 5), dets
        x1, y1, x2, y2, score = dets[0]
        assert 200 < (x1 + x2) / 2 < 255 and 100 < (y1 + y2) / 2 < 150, dets
        assert _iou(dets[0], FACE_REGION) > 0.6
        assert y2 >= 175, "the box is extended down to the chin"
        assert 0 < score <= 1
        boxes[scale] = dets[0]
    assert _iou(boxes[0.5], boxes[1.0]) > 0.6


def test_haar_boxes_in_a_wide_frame_are_clipped_to_its_width(face: np.ndarray) -> None:
    """The face at the right of a frame twice as wide as high: its box lies past x = height, so it is kept there
    (x is clipped to the width, y to the height) and lands where the face was put."""
    wide = np.zeros((512, 1024, 3), np.uint8)
    wide[:, 512:] = face
    (dets,) = HaarDetector(detect_scale=0.5).detect([wide])
    assert dets.shape == (1, 5) and dets[0, 2] > 512, dets
    shifted = np.array(FACE_REGION) + np.array([512, 0, 512, 0])
    assert _iou(dets[0], shifted) > 0.6


def test_haar_min_face_is_in_full_frame_pixels(face: np.ndarray) -> None:
    """min_face counts pixels of the frame given, whatever the detect scale: a face 70 pixels wide (35 on the half-size
    copy) is found at the default 40 and not at 80."""
    small = cv2.resize(face, (384, 384), interpolation=cv2.INTER_AREA)
    (dets,) = HaarDetector(detect_scale=0.5).detect([small])
    assert dets.shape == (1, 5) and 60 < dets[0, 2] - dets[0, 0] < 80, dets
    (none,) = HaarDetector(detect_scale=0.5, min_face=80).detect([small])
    assert none.shape == (0, 5)


def test_haar_finds_nothing_in_blank_or_noise() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    blank = np.full((360, 480, 3), 127, np.uint8)
    for dets in HaarDetector().detect([blank, noise]):
        assert dets.shape == (0, 5) and dets.dtype == np.float32


def test_haar_works_on_grey_images(face: np.ndarray) -> None:
    grey = cv2.cvtColor(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    (dets,) = HaarDetector().detect([grey])
    assert dets.shape == (1, 5) and _iou(dets[0], FACE_REGION) > 0.6


def test_haar_rejects_bad_frames() -> None:
    with pytest.raises(FaceError, match="uint8"):
        HaarDetector().detect([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(FaceError, match="HxWx3"):
        HaarDetector().detect([np.zeros((64, 64, 4), np.uint8)])


# ----------------------------------------------------------------------------------------------- NMS


def _reference_nms(boxes: list[list[float]], scores: np.ndarray, thresh: float) -> list[int]:
    """Plain greedy NMS, one box at a time."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if _iou(boxes[i], boxes[j]) <= thresh]
    return keep


def test_opencv_without_haar_support_is_a_setup_message(monkeypatch) -> None:
    """OpenCV 5 wheels dropped both the cascade files and CascadeClassifier (seen on a GPU image): each is a
    FaceError naming the version to install, not an AttributeError from deep in the detector."""
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(FaceError, match=r"no CascadeClassifier.*opencv-python-headless>=4.10,<5"):
        HaarDetector()
    monkeypatch.undo()
    monkeypatch.setattr(cv2.data, "haarcascades", "/nonexistent/")
    with pytest.raises(FaceError, match=r"no Haar cascade haarcascade_frontalface_default.xml.*<5"):
        HaarDetector()


def test_nms_keeps_the_right_boxes() -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [21, 21, 31, 31], [0.5, 0, 10.5, 10]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [3, 0]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2, 4]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_nms_is_greedy_through_suppression_chains() -> None:
    # A suppresses B, B would suppress C, but B is gone, so C stays.
    boxes = torch.tensor([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], dtype=torch.float32)
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


@pytest.mark.parametrize("thresh", [0.1, 0.3, 0.5, 0.7])
def test_nms_matches_reference_on_random_boxes(thresh: float) -> None:
    rng = np.random.default_rng(int(thresh * 10))
    xy = rng.uniform(0, 200, (150, 2))
    wh = rng.uniform(10, 60, (150, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 150).astype(np.float32)
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).tolist()
    assert got == _reference_nms(boxes.tolist(), scores, thresh)
    ious = box_iou(torch.from_numpy(boxes[:20]), torch.from_numpy(boxes[:20])).numpy()
    assert np.allclose(ious, [[_iou(a, b) for b in boxes[:20].tolist()] for a in boxes[:20].tolist()], atol=1e-6)


def _upstream_s3fd_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Upstream S3FD's NMS rule (face_detection/detection/sfd/bbox.py), written out: widths and heights count both
    end pixels (+1), and a box survives the current best when their overlap is at most `thresh`."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = [int(i) for i in rest[overlap <= thresh]]
    return keep


def test_s3fd_nms_counts_both_end_pixels_as_upstream() -> None:
    """Small face boxes overlap more by upstream's pixel count: two 10-pixel boxes 7 apart are 0.176 by area but
    0.222 counted upstream's way, so at 0.2 upstream suppresses the second and plain IoU keeps it."""
    pair = torch.tensor([[0, 0, 10, 10], [7, 0, 17, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert nms(pair, scores, 0.2).tolist() == [0, 1] and nms(pair, scores, 0.2, pixel=1.0).tolist() == [0]
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 120, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 40, (200, 2))], axis=1).astype(np.float32)
    dets = np.concatenate([boxes, rng.uniform(0, 1, (200, 1)).astype(np.float32)], axis=1)
    got = nms(torch.from_numpy(boxes), torch.from_numpy(dets[:, 4]), 0.3, pixel=1.0).tolist()
    assert got == _upstream_s3fd_nms(dets, 0.3)
    assert got != nms(torch.from_numpy(boxes), torch.from_numpy(dets[:, 4]), 0.3).tolist()  # the rule matters here


# ---------------------------------------------------------------------------------------------- S3FD


def _synthetic_outputs(batch: int, height: int, width: int) -> list[torch.Tensor]:
    """Head outputs of the right shapes: every anchor background (face probability 0.01), zero offsets. The cls
    maps are raw scores, as the network gives them: log-probabilities, whose softmax is the probabilities."""
    outputs = []
    for rows, cols in head_map_sizes(height, width):
        cls = torch.zeros(batch, 2, rows, cols)
        cls[:, 0], cls[:, 1] = math.log(0.99), math.log(0.01)
        outputs += [cls, torch.zeros(batch, 4, rows, cols)]
    return outputs


def _set_anchor(outputs, image: int, head: int, row: int, col: int, score: float, loc) -> None:
    outputs[2 * head][image, :, row, col] = torch.tensor([math.log(1 - score), math.log(score)])
    outputs[2 * head + 1][image, :, row, col] = torch.tensor(loc, dtype=torch.float32)


def test_decode_s3fd_recovers_a_hand_computed_box() -> None:
    height, width = 128, 160
    outputs = _synthetic_outputs(2, height, width)
    # Head 2: stride 16, anchor 64. Cell (row 3, col 5) is centred at (8 + 5*16, 8 + 3*16) = (88, 56).
    loc = (0.5, -0.25, math.log(1.5) / 0.2, 0.0)
    _set_anchor(outputs, image=0, head=2, row=3, col=5, score=0.9, loc=loc)
    # cx = 88 + 0.5*0.1*64 = 91.2; cy = 56 - 0.25*0.1*64 = 54.4; w = 64*1.5 = 96; h = 64.
    expected = [91.2 - 48, 54.4 - 32, 91.2 + 48, 54.4 + 32, 0.9]
    # A weaker face elsewhere in image 1 only (head 0: stride 4, anchor 16; cell (10, 20) -> centre (82, 42)).
    _set_anchor(outputs, image=1, head=0, row=10, col=20, score=0.4, loc=(0, 0, 0, 0))

    dets = decode_s3fd(outputs, (height, width), threshold=0.5, nms_iou=0.3)
    assert len(dets) == 2
    assert dets[0].shape == (1, 5) and dets[0].dtype == torch.float32
    assert torch.allclose(dets[0][0], torch.tensor(expected), atol=1e-4)
    assert dets[1].shape == (0, 5)

    low = decode_s3fd(outputs, (height, width), threshold=0.3, nms_iou=0.3)
    assert low[0].shape == (1, 5)
    assert torch.allclose(low[1][0], torch.tensor([82 - 8, 42 - 8, 82 + 8, 42 + 8, 0.4]), atol=1e-4)


def test_decode_s3fd_clips_to_the_image_and_suppresses_duplicates() -> None:
    height, width = 64, 64
    outputs = _synthetic_outputs(1, height, width)
    _set_anchor(outputs, 0, head=1, row=0, col=0, score=0.8, loc=(0, 0, 0, 0))  # centre (4, 4), side 32
    _set_anchor(outputs, 0, head=1, row=0, col=1, score=0.7, loc=(-0.5, 0, 0, 0))  # centre (10.4, 4): overlaps it
    (dets,) = decode_s3fd(outputs, (height, width), threshold=0.5, nms_iou=0.3)
    assert dets.shape == (1, 5)
    assert torch.allclose(dets[0], torch.tensor([0, 0, 20, 20, 0.8]), atol=1e-4)
    with pytest.raises(FaceError, match="12 head outputs"):
        decode_s3fd(outputs[:10], (height, width), 0.5, 0.3)


def test_decode_s3fd_keeps_corrupt_sizes_finite() -> None:
    """A corrupt checkpoint's huge size offsets give finite boxes, clipped to the image: two such boxes overlap almost
    wholly and NMS keeps one, where infinite sides would make their overlap inf / inf = nan and keep both."""
    outputs = _synthetic_outputs(1, 64, 64)
    _set_anchor(outputs, 0, head=2, row=1, col=1, score=0.9, loc=(0, 0, 1e4, 1e4))
    _set_anchor(outputs, 0, head=2, row=2, col=2, score=0.8, loc=(0, 0, 1e4, 1e4))
    (dets,) = decode_s3fd(outputs, (64, 64), threshold=0.5, nms_iou=0.3)
    assert torch.isfinite(dets).all() and dets.tolist() == [[0, 0, 64, 64, pytest.approx(0.9)]]


def test_nms_keeps_a_box_whose_overlap_equals_the_threshold() -> None:
    """Upstream keeps a box whose overlap with a better one is at most the threshold (``overlap <= thresh``): an
    overlap of exactly 0.5 survives NMS at 0.5, by area and by upstream's pixel count alike."""
    scores = torch.tensor([0.9, 0.8])
    assert nms(torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32), scores, 0.5).tolist() == [0, 1]
    pixels = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 4]], dtype=torch.float32)  # 10x10 and 10x5 pixels
    assert nms(pixels, scores, 0.5, pixel=1.0).tolist() == [0, 1]
    assert nms(pixels, scores, 0.49, pixel=1.0).tolist() == [0]


def test_s3fd_detector_end_to_end_with_random_weights(s3fd: S3FDDetector) -> None:
    rng = np.random.default_rng(1)
    frames = [
        rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
        rng.integers(0, 256, (128, 96, 3), dtype=np.uint8),
        rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
    ]
    results = s3fd.detect(frames)
    assert len(results) == 3
    for frame, dets in zip(frames, results, strict=True):
        height, width = frame.shape[:2]
        assert isinstance(dets, np.ndarray) and dets.dtype == np.float32
        assert dets.ndim == 2 and dets.shape[1] == 5 and len(dets) <= 50
        assert np.isfinite(dets).all()
        assert (dets[:, 0] >= 0).all() and (dets[:, 2] <= width).all() and (dets[:, 0] <= dets[:, 2]).all()
        assert (dets[:, 1] >= 0).all() and (dets[:, 3] <= height).all() and (dets[:, 1] <= dets[:, 3]).all()
        assert ((dets[:, 4] > 0.5) & (dets[:, 4] <= 1)).all()
    # A frame's result does not depend on the other frames in the call (grouping keeps the order).
    (alone,) = s3fd.detect([frames[1]])
    assert alone.shape == results[1].shape and np.allclose(alone, results[1], atol=1e-3)
    assert s3fd.detect([]) == []
    # The smallest frame its network takes: 64 px at detect scale 0.5; smaller ones were a RuntimeError from a pool
    assert len(s3fd.detect([np.zeros((64, 64, 3), np.uint8)])) == 1
    with pytest.raises(FaceError, match=r"S3FD sees these 62x80 frames at 31x40 \(detect scale 0.5\); its network "
                                        "needs 32 pixels a side: raise the detect scale"):  # fmt: skip
        s3fd.detect([np.zeros((80, 62, 3), np.uint8)])


def test_s3fd_detector_feeds_rgb_minus_the_mean_and_maps_boxes_back_to_the_frame(
    s3fd: S3FDDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network's input is the frame flipped from BGR to RGB minus INPUT_MEAN (the released weights' training
    input, as upstream feeds it); its boxes come back clipped to the detection frame and scaled by each axis's own
    ratio; and upstream's defaults apply: scores above 0.5 (0.5 itself is no face) and NMS at IoU 0.3, counting both
    end pixels."""
    frame = np.empty((75, 150, 3), np.uint8)
    frame[:] = (10, 20, 30)  # BGR; at 0.5 the detector sees 75x38 (37.5 rounds to 38): x ratio 2, y ratio 75/38
    seen: list[torch.Tensor] = []

    def network(x: torch.Tensor) -> list[torch.Tensor]:
        seen.append(x.clone())
        outputs = _synthetic_outputs(1, 38, 75)
        # Head 1 (stride 8, side 32), (row, col) -> centre (4 + 8 col, 4 + 8 row); head 0 (stride 4, side 16).
        _set_anchor(outputs, 0, head=1, row=1, col=2, score=0.9, loc=(0, 0, 0, 0))  # (4, -4, 36, 28)
        # 17.5 pixels right of the first: IoU 0.293 by area, 0.307 counting end pixels as upstream: suppressed.
        _set_anchor(outputs, 0, head=1, row=1, col=4, score=0.8, loc=(1.5 / 3.2, 0, 0, 0))
        _set_anchor(outputs, 0, head=1, row=2, col=8, score=0.7, loc=(0, 0, 0, 0))  # (52, 4, 84, 36): past the edge
        _set_anchor(outputs, 0, head=0, row=8, col=2, score=0.55, loc=(0, 0, 0, 0))  # (2, 26, 18, 42)
        _set_anchor(outputs, 0, head=0, row=2, col=16, score=0.5, loc=(0, 0, 0, 0))  # at the threshold
        return outputs

    monkeypatch.setattr(s3fd, "model", network)
    (dets,) = s3fd.detect([frame])
    (x,) = seen
    assert x.shape == (1, 3, 38, 75)
    assert torch.equal(x[0, :, 0, 0], torch.tensor([30 - 104.0, 20 - 117.0, 10 - 123.0]))
    sy = 75 / 38
    expected = [
        [8, 0, 72, 28 * sy, 0.9],
        [104, 4 * sy, 150, 36 * sy, 0.7],  # x2 clipped at the detection frame's width, 75, then doubled
        [4, 26 * sy, 36, 75, 0.55],
    ]
    assert np.allclose(dets, expected, atol=1e-3), dets


def test_s3fd_detector_backs_off_on_out_of_memory(s3fd: S3FDDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_batch(frames: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(frames))
        if len(frames) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [np.full((1, 5), i, np.float32) for i in range(len(frames))]

    monkeypatch.setattr(s3fd, "_detect_batch", fake_batch)
    monkeypatch.setattr(s3fd, "batch_size", 4)
    frames = [np.zeros((32, 32, 3), np.uint8)] * 5
    results = s3fd.detect(frames)
    assert calls == [4, 2, 2, 1] and s3fd.batch_size == 2
    assert [float(r[0, 0]) for r in results] == [0, 1, 0, 1, 0]


def test_s3fd_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FaceError, match=r"s3fd\.pth.*user-supplied"):
        S3FDDetector(tmp_path / "s3fd.pth")
    page = tmp_path / "page.pth"
    page.write_text("<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(FaceError, match="web page"):
        S3FDDetector(page)


# ------------------------------------------------------------------------------------------ make_detector


def test_make_detector() -> None:
    detector = make_detector("Haar", detect_scale=0.25)
    assert isinstance(detector, HaarDetector) and isinstance(detector, FaceDetector)
    assert detector.name == "haar" and detector.detect_scale == 0.25
    with pytest.raises(FaceError, match=r"unknown face detector 'mtcnn'.*haar, s3fd"):
        make_detector("mtcnn")
    with pytest.raises(WeightsError, match=r"needs a checkpoint.*s3fd\.pth.*user-supplied"):
        make_detector("s3fd")
    with pytest.raises(FaceError, match="detect_scale"):
        make_detector("haar", detect_scale=0)


def test_make_detector_refusals_and_limits(tmp_path: Path) -> None:
    """An empty checkpoint path (a blank form field) is no checkpoint: the weights message, not a missing '.' file;
    the detect scale may be 4 but no more; and the other settings that cannot work are refused by name."""
    with pytest.raises(WeightsError, match=r"needs a checkpoint.*s3fd\.pth"):
        make_detector("s3fd", checkpoint="")
    assert make_detector("haar", detect_scale=4).detect_scale == 4
    for bad in (4.01, float("nan"), float("inf")):
        with pytest.raises(FaceError, match=r"detect_scale .* must be in \(0, 4\]"):
            make_detector("haar", detect_scale=bad)
    with pytest.raises(FaceError, match="min_face 0 must be at least 1 pixel"):
        HaarDetector(min_face=0)
    with pytest.raises(FaceError, match="batch_size 0 must be at least 1"):
        S3FDDetector(tmp_path / "s3fd.pth", batch_size=0)
    with pytest.raises(FaceError, match=r"frame 0: image of shape \(1, 40, 3\) is too small"):
        HaarDetector().detect([np.zeros((1, 40, 3), np.uint8)])


# ------------------------------------------------------------------------------------------------ tracker


def _det(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> np.ndarray:
    return np.array([[x1, y1, x2, y2, score]], np.float32)


NONE = np.zeros((0, 5), np.float32)
SHAPE = (480, 640, 3)


def test_largest_picks_by_area() -> None:
    dets = np.concatenate([_det(0, 0, 10, 10, 0.99), _det(50, 50, 90, 100, 0.6), _det(0, 0, 30, 20, 0.8)])
    assert largest(dets).tolist() == pytest.approx([50, 50, 90, 100, 0.6])
    assert largest(NONE) is None
    # A row with NaN (a corrupt detection) or an inverted box (negative width and height) is never the largest.
    odd = np.concatenate([dets, _det(0, 0, np.nan, 500), _det(400, 400, 0, 0, 0.9)])
    assert largest(odd).tolist() == pytest.approx([50, 50, 90, 100, 0.6])


def test_tracker_pads_and_clips() -> None:
    tracker = FaceTracker(pads=(5, 10, 20, 30))
    track = tracker.update(_det(10, 20, 110, 150), (200, 300, 3))
    assert track.box == (0, 15, 140, 160) and track.detected
    track = FaceTracker(pads=(0, 10, 0, 0)).update(_det(200, 100, 290, 195), (200, 300, 3))
    assert track.box == (200, 100, 290, 200)


def test_the_tracker_pads_as_upstreams_default() -> None:
    """Without pads given, the box takes Wav2Lip's default --pads 0 10 0 0: 10 pixels more below the chin."""
    assert FaceTracker(smooth=False).update(_det(10, 20, 110, 150), (200, 300, 3)).box == (10, 20, 110, 160)


def test_tracker_truncates_then_pads_as_upstream() -> None:
    """Upstream clips the detection at 0 and truncates it to whole pixels (int()), then pads and clips: a box at
    10.9 stays at 10 (rounding would give 11), and a negative pad takes pixels off."""
    raw = FaceTracker(smooth=False, pads=(0, 10, 0, 0))
    assert raw.update(_det(10.9, 20.6, 110.5, 150.99), (200, 300, 3)).box == (10, 20, 110, 160)
    assert raw.update(_det(-3.7, -0.2, 50.2, 60.8), (200, 300, 3)).box == (0, 0, 50, 70)
    shrunk = FaceTracker(smooth=False, pads=(-5, -10, 4, -4))
    assert shrunk.update(_det(10.9, 20.6, 110.5, 150.99), (200, 300, 3)).box == (6, 25, 106, 140)
    # Clipped at 0 before the pads: a box past the top left edge, shrunk by negative pads, starts 4 and 5 pixels in
    # (truncating -3.7 and -2.2 without the clip would start it at 1 and 3).
    inward = FaceTracker(smooth=False, pads=(-5, 0, -4, 0))
    assert inward.update(_det(-3.7, -2.2, 50.5, 60.5), (200, 300, 3)).box == (4, 5, 50, 60)


def test_tracker_uses_the_largest_face() -> None:
    dets = np.concatenate([_det(0, 0, 20, 20), _det(300, 200, 400, 320)])
    assert FaceTracker(pads=(0, 0, 0, 0)).update(dets, SHAPE).box == (300, 200, 400, 320)


def test_tracker_smooths_a_static_jittering_face() -> None:
    rng = np.random.default_rng(0)
    base = np.array([200.0, 120.0, 320.0, 270.0])
    tracker = FaceTracker(pads=(0, 0, 0, 0))
    inputs, outputs = [], []
    for _ in range(300):
        box = base + rng.normal(0, 2.0, 4)
        inputs.append(box)
        outputs.append(tracker.update(_det(*box), SHAPE).box)
    inputs, outputs = np.array(inputs[20:]), np.array(outputs[20:], dtype=float)
    assert (outputs.var(axis=0) < 0.25 * inputs.var(axis=0)).all(), (outputs.var(axis=0), inputs.var(axis=0))
    assert np.abs(outputs.mean(axis=0) - base).max() < 1.0
    assert FaceTracker(smooth=False, pads=(0, 0, 0, 0)).update(_det(*base), SHAPE).box == (200, 120, 320, 270)


def test_tracker_follows_a_jump_without_lag() -> None:
    tracker = FaceTracker(pads=(0, 0, 0, 0))
    for _ in range(30):
        tracker.update(_det(100, 100, 220, 250), SHAPE)
    shift = 0.3 * SHAPE[1]  # 30% of the frame width
    moved = (100 + shift, 100, 220 + shift, 250)
    followed = [tracker.update(_det(*moved), SHAPE).box for _ in range(2)]
    assert np.abs(np.array(followed[-1]) - np.array(moved)).max() <= 1


def test_tracker_follows_steady_motion_closely() -> None:
    tracker = FaceTracker(pads=(0, 0, 0, 0))
    lags = []
    for t in range(60):
        x = 100 + 5.0 * t  # 5 px a frame, 4% of the face width
        box = tracker.update(_det(x, 100, x + 120, 250), SHAPE).box
        lags.append(x - box[0])
    assert max(lags[10:]) < 6.0  # under a frame's step, plus the truncation to whole pixels (as upstream)


def test_tracker_holds_the_box_through_short_gaps_then_passes_through() -> None:
    tracker = FaceTracker(pads=(0, 0, 0, 0), max_gap=6)
    first = tracker.update(_det(100, 100, 220, 250), SHAPE)
    held = [tracker.update(NONE, SHAPE) for _ in range(5)]
    assert all(t.box == first.box and not t.detected for t in held)
    assert tracker.missed == 5
    assert tracker.update(_det(100, 100, 220, 250), SHAPE).detected
    tracks = [tracker.update(NONE, SHAPE) for _ in range(8)]
    assert [t.box is None for t in tracks] == [False] * 6 + [True] * 2
    assert not any(t.detected for t in tracks)
    assert tracker.missed == 13
    # A face after a long gap starts afresh at its own position (no blending with the old one).
    assert tracker.update(_det(400, 50, 500, 180), SHAPE).box == (400, 50, 500, 180)


def test_the_default_hold_over_is_the_readmes_12_frames() -> None:
    """The README promises a frame without a face keeps the last box for up to 12 frames of the same shot."""
    tracker = FaceTracker(pads=(0, 0, 0, 0))
    tracker.update(_det(100, 100, 220, 250), SHAPE)
    assert [tracker.update(NONE, SHAPE).box is None for _ in range(13)] == [False] * 12 + [True]


def test_no_hold_over_passes_the_first_frame_without_a_face_through() -> None:
    """max_gap=0 is a valid choice (no hold-over at all), not a refusal: a missed frame passes through at once."""
    tracker = FaceTracker(pads=(0, 0, 0, 0), max_gap=0)
    assert tracker.update(_det(100, 100, 220, 250), SHAPE).box == (100, 100, 220, 250)
    assert tracker.update(NONE, SHAPE).box is None and tracker.missed == 1


def test_a_face_the_pads_leave_nothing_of_is_counted_and_held_over() -> None:
    """A lip-sync run without a box names the pads where a face was found but padded away (not "no face found"):
    the tracker counts those frames, and holds the last box over them as over a missed detection."""
    tracker = FaceTracker(pads=(-40, -40, 0, 0), smooth=False, max_gap=1)
    assert tracker.update(_det(100, 100, 220, 250), SHAPE).box == (100, 140, 220, 210) and tracker.padded_away == 0
    track = tracker.update(_det(100, 100, 160, 160), SHAPE)  # 60 px high: 80 px of pads leave nothing
    assert (track.box, track.detected, tracker.padded_away) == ((100, 140, 220, 210), False, 1)
    assert tracker.update(_det(100, 100, 160, 160), SHAPE).box is None and tracker.padded_away == 2


def test_a_face_back_near_its_old_place_after_a_long_gap_is_not_smoothed_towards_it() -> None:
    """A gap past max_gap resets the smoother as well as the held box: a face back 4 px from where it was (jitter
    to the smoother, which would move a sixth of the way) is at its own detection, not blended with a face gone for
    longer than any hold-over."""
    tracker = FaceTracker(pads=(0, 0, 0, 0), max_gap=2)
    tracker.update(_det(100, 100, 220, 250), SHAPE)
    assert [tracker.update(NONE, SHAPE).box is None for _ in range(3)] == [False, False, True]
    assert tracker.update(_det(104, 100, 224, 250), SHAPE).box == (104, 100, 224, 250)


def test_a_scene_cut_ends_the_hold_over() -> None:
    """A cut to a shot without a face got the last shot's box, and a pasted mouth, for up to max_gap frames; a new
    shot's face starts a fresh track."""
    tracker = FaceTracker(pads=(0, 0, 0, 0), max_gap=6)
    tracker.update(_det(100, 100, 220, 250), SHAPE)
    assert tracker.update(NONE, SHAPE).box == (100, 100, 220, 250)  # a missed detection in the same shot: held
    tracks = [tracker.update(NONE, SHAPE, cut=i == 0) for i in range(3)]
    assert [t.box for t in tracks] == [None] * 3 and tracker.missed == 4  # nothing held past the cut
    tracker.update(_det(100, 100, 220, 250), SHAPE)
    assert tracker.update(_det(104, 100, 224, 250), SHAPE, cut=True).box == (104, 100, 224, 250)  # not smoothed
    assert FaceTracker(fixed_box=(0, 0, 50, 50)).update(NONE, SHAPE, cut=True).box == (0, 0, 50, 50)


def test_scene_cuts_are_changes_of_shot_not_motion() -> None:
    from engine.core.media import read_frames
    from engine.faces.tracking import CUT_THRESHOLD, SceneCuts, thumbnail

    for clip in ("face-video.mp4", "driving.mp4", "driving-hopper.mp4"):  # heads that sway, nod, come closer
        cuts = SceneCuts()
        assert not any(cuts(frame) for frame in read_frames(ROOT / "assets" / clip)), clip
    face, hopper = cv2.imread(str(ROOT / "assets/face.jpg")), cv2.imread(str(ROOT / "assets/hopper.jpg"))
    cuts = SceneCuts()
    assert [cuts(f) for f in (face, face, cv2.add(face, 15), hopper, np.full_like(face, 90), face[:, ::-1])] == [
        False, False, False, True, True, True,
    ]  # fmt: skip
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    assert (
        thumbnail(grey).shape == thumbnail(face).shape == (32, 32)
        and thumbnail(np.zeros((1, 1, 3), np.uint8))[0, 0] == 0
    )
    assert float(np.abs(thumbnail(face) - thumbnail(grey)).mean()) < CUT_THRESHOLD / 10


def test_a_cut_between_grey_frames_is_seen_both_ways() -> None:
    """Grey frames' thumbnails are float32 as colour ones are: in uint8 a white frame after a black one is a change
    of 255, and a black one after a white one wraps around to a change of 1, which no threshold sees."""
    from engine.faces.tracking import SceneCuts, thumbnail

    black, white = np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)
    assert thumbnail(black).dtype == np.float32
    cuts = SceneCuts()
    assert [cuts(frame) for frame in (white, black, white)] == [False, True, True]


def test_heavy_camera_noise_is_not_a_scene_cut() -> None:
    """The thumbnail area-averages about 100 pixels a side, so grain (dim light, a high ISO) averages out; one
    sampled from far fewer pixels keeps each pixel's noise and calls every frame of a grainy 720p shot a cut."""
    from engine.faces.tracking import SceneCuts

    rng = np.random.default_rng(0)
    grain = [np.clip(rng.normal(128, 60, (720, 1280, 1)), 0, 255).astype(np.uint8) for _ in range(3)]
    grainy = [np.repeat(g, 3, axis=2) for g in grain]  # luminance grain: averaging the channels does not help
    cuts = SceneCuts()
    assert [cuts(frame) for frame in grainy] == [False, False, False]


def test_tracker_fixed_box_overrides_detection() -> None:
    tracker = FaceTracker(fixed_box=(-10, 5, 700, 100))
    for dets in (_det(100, 100, 220, 250), NONE):
        track = tracker.update(dets, SHAPE)
        assert track.box == (0, 5, 640, 100) and track.detected
    assert tracker.missed == 0
    with pytest.raises(FaceError, match="fixed_box"):
        FaceTracker(fixed_box=(10, 10, 5, 20))


@pytest.mark.parametrize(
    "options, accepted",
    [
        ({"fixed_box": (10, 10, 10, 20)}, "x2 > x1"),  # no width: every frame would pass through
        ({"fixed_box": (10, 20, 30, 20)}, "y2 > y1"),
        ({"max_gap": -1}, ">= 0"),
        ({"pads": (0, 10, 0)}, "pads must be (top, bottom, left, right)"),  # else a ValueError at the first frame
    ],
)
def test_a_tracker_with_an_empty_fixed_box_a_negative_gap_or_three_pads_is_refused(
    options: dict, accepted: str
) -> None:
    """A box of no width or height, a negative hold-over, or pads that are not four, is a mistake to say, not one to
    run with."""
    with pytest.raises(FaceError, match=re.escape(accepted)):
        FaceTracker(**options)


def test_a_fixed_box_with_nothing_inside_says_why() -> None:
    from engine.faces.tracking import check_fixed_box

    with pytest.raises(FaceError, match=r"0,0,1,1 \(X1,Y1,X2,Y2\) leaves under 2x2 pixels of the 512x512 picture"):
        check_fixed_box((0, 0, 1, 1), 512, 512)
    with pytest.raises(FaceError, match=r"600,0,700,100 .* lies outside the 512x512 picture"):
        check_fixed_box((600, 0, 700, 100), 512, 512)
    check_fixed_box((0, 0, 2, 2), 512, 512)
    for thin in ((0, 0, 1, 100), (0, 0, 100, 1)):  # 2 pixels both ways: one pixel wide or high is too little
        with pytest.raises(FaceError, match="leaves under 2x2 pixels"):
            check_fixed_box(thin, 512, 512)
    with pytest.raises(FaceError, match="leaves under 2x2 pixels of the 512x512"):  # at the edge is still inside
        check_fixed_box((511, 511, 512, 512), 512, 512)


def test_a_fixed_box_past_the_picture_says_what_it_is_clipped_to() -> None:
    """The warning names the box that is used: x clipped to the width, y to the height (a 640x360 picture)."""
    from engine.faces.tracking import clipped_box_warning

    assert clipped_box_warning((-5, -2, 700, 400), 640, 360) == (
        "the face box -5,-2,700,400 reaches past the 640x360 picture: it is clipped to 0,0,640,360"
    )
    assert clipped_box_warning((0, 0, 640, 360), 640, 360) is None
    assert clipped_box_warning((0, 0, 640, 361), 640, 360) is not None


def test_the_detectors_shrunk_copy_averages_pixels_and_an_enlarged_one_interpolates() -> None:
    """At a detect scale under 1 every pixel counts (INTER_AREA): a one-pixel line every 4 columns is a quarter as
    bright at 0.25, not lost between the samples linear interpolation takes. Above 1 the copy is interpolated."""
    from engine.faces.detection import _downscale

    frame = np.zeros((8, 16, 3), np.uint8)
    frame[:, 3::4] = 200
    small = _downscale(frame, 0.25)
    assert small.shape == (2, 4, 3) and (small == 50).all()
    assert _downscale(frame, 1.0) is frame
    large = _downscale(frame, 2.0)
    assert large.shape == (16, 32, 3) and 0 < large[0, 5, 0] < 200  # between a dark and a bright column


def test_decode_s3fd_rounds_far_corners_as_upstream() -> None:
    """Upstream's batch_decode (sfd/bbox.py) turns centre and size into corners in place: x1 = cx - w/2, then
    x2 = x1 + w (not cx + w/2). In float32 the two differ by an ulp on about a box in five, which can move a corner
    across a whole pixel where the tracker truncates it; pin upstream's rounding, written out here."""
    height, width, images = 128, 160, 8
    outputs = _synthetic_outputs(images, height, width)
    locs = torch.randn(images, 4, generator=torch.Generator().manual_seed(9)) * 0.5
    for image in range(images):  # head 2 (stride 16, anchor 64), cell (row 3, col 5): centre (88, 56)
        _set_anchor(outputs, image, head=2, row=3, col=5, score=0.9, loc=locs[image].tolist())
    prior = torch.tensor([88.0, 56.0, 64.0, 64.0])
    centre = prior[:2] + locs[:, :2] * 0.1 * prior[2:]
    size = prior[2:] * torch.exp(locs[:, 2:] * 0.2)
    near = centre - size / 2
    upstream = torch.cat([near, near + size], dim=1)
    dets = decode_s3fd(outputs, (height, width), threshold=0.5, nms_iou=0.3)
    assert all(d.shape == (1, 5) for d in dets)
    got = torch.stack([d[0, :4] for d in dets])
    assert torch.equal(got, upstream)
    assert not torch.equal(upstream[:, 2:], centre + size / 2)  # the two roundings differ on these inputs


def _upstream_s3fd_pipeline(outputs: list[torch.Tensor], image: int) -> np.ndarray:
    """Upstream's path from S3FD's raw outputs to one image's boxes, written out (sfd/detect.py batch_detect, then
    sfd_detector.py detect_from_batch): softmax, every anchor above 0.05 decoded one at a time in float32 (x2 = x1 +
    w), NMS at 0.3 counting both end pixels, then the boxes scoring above 0.5, highest first."""
    rows = []
    for head, stride in enumerate((4, 8, 16, 32, 64, 128)):
        cls = torch.softmax(outputs[2 * head], dim=1)
        reg = outputs[2 * head + 1]
        for _, row, col in zip(*np.where(cls[:, 1] > 0.05), strict=True):
            # float32 as upstream's torch.Tensor([...]) makes it (numpy's int64 indices would make torch.tensor float64)
            centre_x, centre_y = stride / 2 + col * stride, stride / 2 + row * stride
            prior = torch.tensor([centre_x, centre_y, stride * 4.0, stride * 4.0], dtype=torch.float32)
            loc = reg[image, :, row, col]
            centre = prior[:2] + loc[:2] * 0.1 * prior[2:]
            size = prior[2:] * torch.exp(loc[2:] * 0.2)
            near = centre - size / 2
            rows.append([*near.tolist(), *(near + size).tolist(), float(cls[image, 1, row, col])])
    dets = np.array(rows, dtype=np.float32).reshape(-1, 5)
    kept = dets[_upstream_s3fd_nms(dets, 0.3)]
    return kept[kept[:, 4] > 0.5]


def test_decode_s3fd_gives_upstreams_boxes_on_random_outputs() -> None:
    """The whole post-processing against upstream's, on random head outputs with many anchors above 0.05 and 0.5:
    our order (threshold at 0.5, then NMS) keeps the same boxes, bit for bit, as upstream's (threshold at 0.05, NMS,
    then 0.5), since a box can only be suppressed by a better one. Our boxes are clipped to the image (a documented
    difference), so upstream's are clipped here too before comparing."""
    height, width = 64, 96
    generator = torch.Generator().manual_seed(3)
    outputs = []
    for rows, cols in head_map_sizes(height, width):
        outputs += [
            torch.randn(2, 2, rows, cols, generator=generator) * 2,
            torch.randn(2, 4, rows, cols, generator=generator),
        ]
    dets = decode_s3fd(outputs, (height, width), threshold=0.5, nms_iou=0.3, max_per_image=10_000)
    for image in range(2):
        upstream = _upstream_s3fd_pipeline(outputs, image)
        upstream[:, [0, 2]] = upstream[:, [0, 2]].clip(0, width)
        upstream[:, [1, 3]] = upstream[:, [1, 3]].clip(0, height)
        assert len(upstream) > 5
        assert np.array_equal(dets[image].numpy(), upstream)
