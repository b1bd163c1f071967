"""Optional 203-point face landmarks (LivePortrait's `landmark.onnx`, supplied by the user with the weights)
for eye and lip retargeting: the retargeting networks take how open the source's eyes and lips are, and
retargeting to the driver takes each driving frame's.

The model sees a 224x224 RGB crop in [0, 1]: for a face first found, upstream's crop around InsightFace's 106 points
where the user has InsightFace's models (`engine/portrait/insightface.py`), else 1.5x our detector's face box,
shifted up by 0.1; for a face already found (the driving clip's next frame), upstream's crop from the earlier 203
points (its runner's run(img, lmk): `landmark_crop_transform`, turned upright by their tilt). Its third output (the
one upstream's human_landmark_runner reads; a model with fewer outputs: its first one) holds 203 x 2 values in crop
units (x 224), which are mapped back to the image. Openness is a distance ratio, so it does not depend on the face's
size or position.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.errors import InputError, one_line
from engine.portrait.crop import CropTransform, crop_image, crop_transform, landmark_crop_transform
from engine.runtimes.ort_session import OrtOptions, OrtSession

if TYPE_CHECKING:
    from engine.portrait.insightface import InsightFace

SIZE = 224
POINTS = 203


class LandmarkError(InputError):
    """The landmark model cannot be used; the message says why."""


def _ratio(points: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    return float(np.linalg.norm(points[a] - points[b]) / (np.linalg.norm(points[c] - points[d]) + 1e-6))


def eye_open_ratios(points: np.ndarray) -> np.ndarray:
    """(left, right): eyelid gap over eye width on the 203-point layout."""
    return np.array([_ratio(points, 6, 18, 0, 12), _ratio(points, 30, 42, 24, 36)], np.float32)


def lip_open_ratio(points: np.ndarray) -> float:
    """Inner-lip gap over mouth width on the 203-point layout."""
    return _ratio(points, 90, 102, 48, 66)


def openness(points: np.ndarray) -> tuple[np.ndarray, float]:
    """One face's eye openness (left, right) and lip openness, as the retargeting networks take them."""
    return eye_open_ratios(points), lip_open_ratio(points)


def onnx_session(file: Path, cuda_device: int | None) -> tuple[Any, str | None]:
    """An ONNX Runtime session on the CPU provider, or with `cuda_device` on that GPU through the CUDA provider, as
    upstream runs its landmark and face models; with why it runs on the CPU instead where ORT could not (else
    None)."""
    if cuda_device is None:
        import onnxruntime as ort

        return ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]), None
    opened = OrtSession(file, OrtOptions("cuda", device_id=cuda_device))
    return opened.session, opened.fallback_reason if opened.fell_back else None


class LandmarkModel:
    """The model on ONNX Runtime's CPU provider, or with `cuda_device` on that GPU through the CUDA provider, as
    upstream's landmark runner runs it (a driving clip that is cropped is read by it frame by frame); where ORT cannot
    run it there, it runs on the CPU and `fallback` says why. With `insightface` (InsightFace's models, when the user
    has them) a face first found is read, as upstream reads it, in the crop around the largest face's 106 points."""

    def __init__(
        self, path: str | os.PathLike, cuda_device: int | None = None, insightface: InsightFace | None = None
    ) -> None:
        self.insightface = insightface
        file = Path(path)
        if not file.is_file():
            raise LandmarkError(f"no landmark model at {file} (LivePortrait's landmark.onnx, next to base_models/)")
        try:
            self.session, self.fallback = onnx_session(file, cuda_device)
        except Exception as exc:
            raise LandmarkError(f"{file.name} is not a usable ONNX landmark model: {one_line(exc)}") from None
        self.input = self._checked_input(file.name)

    def _checked_input(self, name: str) -> str:
        """The model takes one float image batch (N, 3, 224, 224), as LivePortrait's does: any other model (one
        with more inputs, another rank, integers) is refused here rather than failing inside the run."""
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        expected = (1, 3, SIZE, SIZE)  # a named (symbolic) dimension takes any size
        takes_image = len(shape) == 4 and all(
            not isinstance(d, int) or d == e for d, e in zip(shape, expected, strict=True)
        )
        if not takes_image or inputs[0].type != "tensor(float)":
            got = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in inputs) or "no inputs"
            raise LandmarkError(
                f"{name} is not a landmark model: it takes {got}, where LivePortrait's landmark.onnx takes one float "
                f"image batch (N, 3, {SIZE}, {SIZE})"
            )
        return inputs[0].name

    def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(203, 2) float32 landmarks in image pixels of a face first found (`first_reading`)."""
        return self.first_reading(rgb, box)[0]

    def first_reading(self, rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(203, 2) float32 landmarks in image pixels of a face first found, and the 106 points they were read
        from: with InsightFace, as upstream, in the crop its runner builds from the largest face's 106 points
        (`following`); without it, or where it finds no face, in an axis-aligned crop of our detector's `box` (our
        stand-in), the 106 points None."""
        points = None if self.insightface is None else self.insightface.largest_face(rgb)
        if points is None:
            return self.in_box(rgb, box), None
        return self.following(rgb, points), points

    def in_box(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(203, 2) float32 landmarks in image pixels read in an axis-aligned crop of `box` (1.5x, shifted up 0.1):
        our stand-in for upstream's crop around InsightFace's 106 points, and how a driving clip's frames before its
        first face (which upstream drops) are read."""
        return self._read(rgb, crop_transform(box, scale=1.5, vy=-0.1, size=SIZE))

    def following(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(203, 2) float32 landmarks in image pixels, read in the crop upstream's runner builds from earlier landmarks
        `points` (203, or InsightFace's 106; its run(img, lmk): crop_image with scale 1.5, vy -0.1, turned
        upright by their tilt), as it follows a driving clip's face from each frame's points to the next
        frame's."""
        try:
            transform = landmark_crop_transform(points, scale=1.5, vy=-0.1, size=SIZE)
        except InputError as exc:
            raise LandmarkError(f"the landmarks to follow make no face crop: {exc}") from None
        return self._read(rgb, transform)

    def _read(self, rgb: np.ndarray, transform: CropTransform) -> np.ndarray:
        crop = crop_image(rgb, transform).astype(np.float32) / 255
        try:
            outputs = self.session.run(None, {self.input: crop.transpose(2, 0, 1)[None]})
        except Exception as exc:  # onnxruntime's own errors (a graph that fails on this input) name no class of ours
            raise LandmarkError(f"the landmark model failed on a face crop: {one_line(exc)}") from None
        read = outputs[2] if len(outputs) > 2 else outputs[0]
        if np.asarray(read).size != POINTS * 2:
            which = "third" if len(outputs) > 2 else "only" if len(outputs) == 1 else "first"
            raise LandmarkError(
                f"the landmark model's {which} output holds "
                f"{np.asarray(read).size} values, not {POINTS} x 2 (LivePortrait's landmark.onnx is expected)"
            )
        # float32 throughout, as upstream's runner maps them (its float32 matrix back): the openness ratios depend on it
        points = np.asarray(read, np.float32).reshape(POINTS, 2) * SIZE
        back = transform.to_original.astype(np.float32)
        return points @ back[:2, :2].T + back[:2, 2]


__all__ = ["LandmarkError", "LandmarkModel", "eye_open_ratios", "lip_open_ratio", "openness"]
