"""InsightFace's buffalo_l face detector (det_10g.onnx, an SCRFD) and 106-point model (2d106det.onnx), run as
upstream LivePortrait's cropper runs them (its vendored insightface: RetinaFace.detect, Landmark.get and
FaceAnalysisDIY.get with det_size 512, det_thresh 0.1, the largest face first). Upstream builds the source crop from
the largest face's 106 points and starts following a face's 203 points from them; with these files beside the
weights ours does too (`engine/portrait/landmarks.py`). They are optional and never downloaded: InsightFace's
weights are for non-commercial research only, and the user supplies them where upstream keeps them
(pretrained_weights/insightface/models/buffalo_l/, next to liveportrait/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import InputError, one_line
from engine.core.weights import unusable_here
from engine.portrait.landmarks import onnx_session

BUFFALO_L = Path("insightface/models/buffalo_l")
DETECTOR_FILE = "det_10g.onnx"
POINTS_FILE = "2d106det.onnx"
DETECT_SIZE = 512  # upstream's det_size
DETECT_THRESHOLD = 0.1  # LivePortrait's CropConfig.det_thresh (InsightFace's own default is 0.5)
NMS_THRESHOLD = 0.4
POINTS = 106
# The detector's layouts by output count (SCRFD's, as InsightFace reads them): strides, anchors per place, key points.
_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


class InsightFaceError(InputError):
    """InsightFace's files cannot be used; the message says which and why."""


def buffalo_folder(weights: Path) -> Path | None:
    """Where InsightFace's two files are, if they are: in the weights folder's insightface/models/buffalo_l/ or, as
    the official pretrained_weights folder lays it out, its parent's."""
    for base in (weights, weights.parent):
        folder = base / BUFFALO_L
        if (folder / DETECTOR_FILE).is_file() and (folder / POINTS_FILE).is_file():
            return folder
    return None


def _blob(image_bgr: np.ndarray, mean: float, std: float) -> np.ndarray:
    """InsightFace's network input: OpenCV's blobFromImage, RGB, (x - mean) / std, 1x3xHxW float32."""
    import cv2

    height, width = image_bgr.shape[:2]
    return cv2.dnn.blobFromImage(image_bgr, 1.0 / std, (width, height), (mean, mean, mean), swapRB=True)


def detector_input(
    image_bgr: np.ndarray, size: tuple[int, int] = (DETECT_SIZE, DETECT_SIZE)
) -> tuple[np.ndarray, float]:
    """The detector's input and the image's scale in it, as RetinaFace.detect makes them: the image shrunk or grown
    to fit `size` (width, height) keeping its shape (the other side truncated to whole pixels; at least one here,
    where upstream's resize fails), placed at the top left of a black canvas."""
    import cv2

    height, width = image_bgr.shape[:2]
    if float(height) / width > float(size[1]) / size[0]:
        new_height = size[1]
        new_width = max(1, int(new_height / (float(height) / width)))
    else:
        new_width = size[0]
        new_height = max(1, int(new_width * (float(height) / width)))
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image_bgr, (new_width, new_height))
    return _blob(canvas, 127.5, 128.0), float(new_height) / height


def _anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    centres = (np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, anchors, axis=0) if anchors > 1 else centres


def decode_detections(
    outputs: list[np.ndarray], input_height: int, input_width: int, threshold: float = DETECT_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scores (N,), boxes (N, 4) and key points (N, 5, 2) or None, in the detector's input pixels, of every anchor
    scoring at least `threshold`, stride by stride as RetinaFace.forward decodes them (distances from each anchor's
    place times the stride; outputs ordered scores, boxes, key points, each stride by stride)."""
    strides, anchors, has_points = _LAYOUTS[len(outputs)]
    count = len(strides)
    scores_all, boxes_all, points_all = [], [], []
    for index, stride in enumerate(strides):
        scores = _unbatched(outputs[index])
        distances = _unbatched(outputs[index + count]) * stride
        centres = _anchor_centres(input_height // stride, input_width // stride, stride, anchors)
        if len(scores) != len(centres) or len(distances) != len(centres):
            raise InsightFaceError(
                f"the face detector's stride-{stride} outputs hold {len(scores)} scores and {len(distances)} boxes "
                f"where a {input_width}x{input_height} input has {len(centres)} anchors (InsightFace's det_10g.onnx "
                "is expected)"
            )
        keep = np.where(scores >= threshold)[0]
        boxes = np.stack(
            [centres[:, 0] - distances[:, 0], centres[:, 1] - distances[:, 1],
             centres[:, 0] + distances[:, 2], centres[:, 1] + distances[:, 3]], axis=-1,
        )  # fmt: skip
        scores_all.append(scores[keep])
        boxes_all.append(boxes[keep])
        if has_points:
            offsets = _unbatched(outputs[index + 2 * count]) * stride
            points = offsets.reshape(len(offsets), -1, 2) + centres[:, None, :]
            points_all.append(points[keep])
    points_out = np.concatenate(points_all) if has_points else None
    return np.concatenate(scores_all).ravel(), np.concatenate(boxes_all), points_out


def _unbatched(output: np.ndarray) -> np.ndarray:
    """A stride's output as rows (a model exported with a batch dimension holds one image)."""
    array = np.asarray(output, np.float32)
    return array[0] if array.ndim == 3 else array


def suppress(detections: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Rows of (N, 5) [x1, y1, x2, y2, score] kept by InsightFace's non-maximum suppression: highest score first,
    dropping each box whose overlap (areas counted with +1 pixel, as InsightFace counts them) exceeds `threshold`."""
    x1, y1, x2, y2, scores = (detections[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height
        order = rest[np.where(overlap / (areas[best] + areas[rest] - overlap) <= threshold)[0]]
    return keep


def largest_first(boxes: np.ndarray) -> list[int]:
    """Row order of (N, >=4) boxes by area, largest first, ties in their order (FaceAnalysisDIY's 'large-small')."""
    areas = [(box[2] - box[0]) * (box[3] - box[1]) for box in boxes]
    return sorted(range(len(boxes)), key=lambda row: areas[row], reverse=True)


def points_transform(box: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 float64 map into the 106-point model's input, as Landmark.get makes it: a size x size square 1.5x the
    box's larger side around its centre, unturned. Computed as upstream's under the numpy it pins (1.26): the box's
    sides and corner sums in float32, the rest in float64."""
    x1, y1, x2, y2 = (np.float32(v) for v in box[:4])
    scale = size / (float(max(x2 - x1, y2 - y1)) * 1.5)
    centre_x, centre_y = float(x2 + x1) / 2, float(y2 + y1) / 2
    half = size // 2
    return np.array([[scale, 0.0, half - centre_x * scale], [0.0, scale, half - centre_y * scale]])


def points_from_output(output: np.ndarray, to_input: np.ndarray, size: int) -> np.ndarray:
    """(106, 2) float32 image pixels from the 106-point model's output (the last 106 x 2 values, in [-1, 1] of its
    input) and the map into that input: shifted by 1, times half the input's side, mapped back by the map's inverse
    (OpenCV's invertAffineTransform) in float64 and stored as float32, as Landmark.get does."""
    import cv2

    flat = np.asarray(output, np.float32).ravel()
    if flat.size < 2 * POINTS or flat.size % 2:
        raise InsightFaceError(f"the 106-point model's output holds {flat.size} values, not {POINTS} x 2")
    values = flat[-2 * POINTS :].reshape(POINTS, 2).copy()
    values += 1
    values *= size // 2
    back = cv2.invertAffineTransform(to_input)
    return (values.astype(np.float64) @ back[:, :2].T + back[:, 2]).astype(np.float32)


def input_normalisation(path: Path) -> tuple[float, float]:
    """(mean, std) the 106-point model's input takes, found as InsightFace's Landmark finds it: a graph whose first
    8 nodes subtract and multiply (an MXNet export that normalises itself) takes raw pixels (0, 1); others (x -
    127.5) / 128."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    subtracts = any(node.name.startswith(("Sub", "_minus")) for node in nodes)
    multiplies = any(node.name.startswith(("Mul", "_mul")) for node in nodes)
    if any(index < 3 and node.name == "bn_data" for index, node in enumerate(nodes)):
        subtracts = multiplies = True
    return (0.0, 1.0) if subtracts and multiplies else (127.5, 128.0)


class InsightFace:
    """The two models on ONNX Runtime, on the run's GPU where it has one (as upstream runs them); `fallbacks` says
    why one runs on the CPU instead."""

    def __init__(self, folder: Path, cuda_device: int | None = None) -> None:
        self.fallbacks: list[tuple[str, str]] = []  # (file, why it runs on the CPU)
        self.detector = self._session(folder / DETECTOR_FILE, cuda_device)
        self.points_model = self._session(folder / POINTS_FILE, cuda_device)
        detector_inputs = self.detector.get_inputs()
        count = len(self.detector.get_outputs())
        if len(detector_inputs) != 1 or count not in _LAYOUTS:
            raise InsightFaceError(
                f"{DETECTOR_FILE} is not InsightFace's face detector: it has {len(detector_inputs)} inputs and "
                f"{count} outputs, where an SCRFD has one input and 6, 9, 10 or 15 outputs"
            )
        shape = detector_inputs[0].shape
        fixed = len(shape) == 4 and all(isinstance(side, int) for side in shape[2:])
        self.detect_size = (shape[3], shape[2]) if fixed else (DETECT_SIZE, DETECT_SIZE)
        points_input = self._checked_points_model()
        self.points_size = points_input.shape[2] if isinstance(points_input.shape[2], int) else 192
        try:
            self.mean, self.std = input_normalisation(folder / POINTS_FILE)
        except Exception as exc:
            raise InsightFaceError(f"{POINTS_FILE} cannot be read as an ONNX graph: {one_line(exc)}") from None

    def _checked_points_model(self) -> Any:
        """The 106-point model's input, where the model is shaped as 2d106det.onnx (as InsightFace's Landmark takes
        it: one image in, one output of 106 x 2 values); another model there (InsightFace's 3D 68-point one, a
        detector) is refused before it gives points that are no face's."""
        inputs, outputs = self.points_model.get_inputs(), self.points_model.get_outputs()
        output_shape = outputs[0].shape if len(outputs) == 1 else []
        declared = output_shape[-1] if output_shape else None
        if (
            len(inputs) != 1
            or len(inputs[0].shape) != 4
            or len(outputs) != 1
            or (isinstance(declared, int) and declared != 2 * POINTS)
        ):
            raise InsightFaceError(
                f"{POINTS_FILE} is not InsightFace's 106-point model: it takes {[i.shape for i in inputs]} and gives "
                f"{[o.shape for o in outputs]}, where 2d106det.onnx takes one 1x3x192x192 image and gives "
                f"{2 * POINTS} values"
            )
        return inputs[0]

    def _session(self, file: Path, cuda_device: int | None) -> Any:
        problem = unusable_here(file)  # a web page or Git LFS pointer said as such, not as ORT's protobuf error
        if problem:
            raise InsightFaceError(f"{file.name} is not a usable ONNX model: {problem}")
        try:
            session, fallback = onnx_session(file, cuda_device)
        except Exception as exc:
            raise InsightFaceError(f"{file.name} is not a usable ONNX model: {one_line(exc)}") from None
        if fallback:
            self.fallbacks.append((file.name, fallback))
        return session

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 5) float32 [x1, y1, x2, y2, score] in image pixels after suppression, best score first, and their
        (N, 5, 2) key points (None from a detector without them). Boxes of equal score come in the order numpy's
        argsort gives them, as upstream's (which differs across numpy's versions and CPUs)."""
        blob, scale = detector_input(image_bgr, self.detect_size)
        name = self.detector.get_inputs()[0].name
        try:
            outputs = self.detector.run(None, {name: blob})
        except Exception as exc:
            raise InsightFaceError(f"the face detector {DETECTOR_FILE} failed: {one_line(exc)}") from None
        scores, boxes, points = decode_detections(outputs, blob.shape[2], blob.shape[3])
        order = scores.argsort()[::-1]
        found = np.hstack((boxes / scale, scores[:, None])).astype(np.float32, copy=False)[order]
        keep = suppress(found)
        return found[keep], None if points is None else (points / scale)[order][keep]

    def points(self, image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(106, 2) float32 image pixels of the face in `box`."""
        import cv2

        size = self.points_size
        to_input = points_transform(box, size)
        crop = cv2.warpAffine(image_bgr, to_input, (size, size), borderValue=0.0)
        name = self.points_model.get_inputs()[0].name
        try:
            output = self.points_model.run(None, {name: _blob(crop, self.mean, self.std)})[0][0]
        except Exception as exc:
            raise InsightFaceError(f"the 106-point model {POINTS_FILE} failed: {one_line(exc)}") from None
        points = points_from_output(output, to_input, size)
        if not np.isfinite(points).all() or not np.ptp(points, axis=0).any():
            raise InsightFaceError(
                f"the 106-point model {POINTS_FILE} put every point of the face found at one place (or gave no "
                "numbers): they make no face crop (InsightFace's buffalo_l 2d106det.onnx is expected)"
            )
        return points

    def largest_box(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """(x1, y1, x2, y2) float32 of the image's largest face (upstream's first face, 'large-small'), or None."""
        detections, _ = self.detect(image_bgr)
        return detections[largest_first(detections)[0], :4] if len(detections) else None

    def largest_face(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """The 106 points of the image's largest face, or None."""
        image_bgr = np.ascontiguousarray(image_rgb[..., ::-1])
        box = self.largest_box(image_bgr)
        return None if box is None else self.points(image_bgr, box)


def optional_insightface(weights: Path, cuda_device: int | None) -> InsightFace | None:
    """InsightFace's models when both files are beside the weights (`buffalo_folder`), else None."""
    folder = buffalo_folder(weights)
    return None if folder is None else InsightFace(folder, cuda_device)


__all__ = [
    "BUFFALO_L",
    "DETECTOR_FILE",
    "POINTS_FILE",
    "InsightFace",
    "InsightFaceError",
    "buffalo_folder",
    "decode_detections",
    "detector_input",
    "input_normalisation",
    "largest_first",
    "optional_insightface",
    "points_from_output",
    "points_transform",
    "suppress",
]
