"""MuseTalk's face geometry and pixel conventions: the face box, the 256x256 crop, VAE input and output pixels.

Upstream: musetalk/utils/preprocessing.py (get_landmark_and_bbox), scripts/inference.py and realtime_inference.py
(the v1.5 extra margin, the crop), musetalk/models/vae.py (half mask, normalisation, latent scaling, decode) and
musetalk/utils/blending.py (get_crop_box, the blend region). Boxes are (x1, y1, x2, y2) ints, x2/y2 exclusive as
numpy slices use them.

Where we differ from upstream (on purpose):
- latents are the VAE posterior's mean (upstream draws a random sample, so its output is not reproducible);
- a box taken from a plain face detector is clipped to the frame on every side (upstream clips only at 0, so a
  box past the right or bottom edge made the crop and the paste-back disagree in size).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

Box = tuple[int, int, int, int]

CROP_SIZE = 256  # the VAE's input: 256x256 face crops, 32x32 latents
LATENT_SCALE = 0.18215  # sd-vae-ft-mse's scaling_factor
EXTRA_MARGIN = 10  # v1.5: pixels added below the box (the chin), clipped to the frame
BLEND_EXPAND = 1.5  # the blend region's half-side, in units of the box's larger half-side

# The 68 face landmarks (iBUG order) as DWPose gives them (its whole-body keypoints 23..90).
FACE_LANDMARKS = 68
NOSE_TOP = 28  # upper nose bridge
NOSE_BRIDGE = 29  # the box's mirror point: the face above it is as tall as the face below it
NOSE_MIDDLE = 30


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks)
    if points.ndim != 2 or points.shape[0] != FACE_LANDMARKS or points.shape[1] < 2:
        raise ValueError(f"expected {FACE_LANDMARKS} face landmarks as an (68, 2) array, got shape {points.shape}")
    return points[:, :2]


def _int_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks as int32, truncated toward zero as upstream's astype(np.int32) does."""
    return _check_landmarks(landmarks).astype(np.int32)


def landmark_box(landmarks: np.ndarray, bbox_shift: int = 0) -> Box | None:
    """v1.5's (and v1.0's) face box from the 68 landmarks, or None where upstream falls back to the detector box.

    The top is the nose-bridge landmark (29) mirrored from the lowest landmark (the chin), clamped at 0, so the box
    holds as much face above the nose as below it. bbox_shift moves landmark 29 down (positive) or up before the
    mirror; upstream moves it in the landmark array itself, so a shift below the chin also moves the box's bottom,
    and so does ours. The sides are the outermost landmarks. A box with no height or width, or one starting left
    of the frame, is not used (upstream then takes the detector's box).
    """
    points = _int_landmarks(landmarks).copy()
    points[NOSE_BRIDGE, 1] += int(bbox_shift)
    bridge_y = int(points[NOSE_BRIDGE, 1])
    bottom = int(points[:, 1].max())
    upper = max(0, bridge_y - (bottom - bridge_y))
    x1, y1, x2, y2 = int(points[:, 0].min()), int(upper), int(points[:, 0].max()), bottom
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        return None
    return x1, y1, x2, y2


def detector_box(detection: Sequence[float] | np.ndarray, frame_shape: tuple[int, ...]) -> Box | None:
    """The box upstream uses when the landmark box is unusable: the detector's box, clipped at 0, truncated to int.

    Upstream (face_detection/api.py get_detections_for_batch) takes S3FD's raw box, without Wav2Lip's padding. We
    also clip the right and bottom to the frame (upstream does not), so crop and paste-back agree. The same rule
    makes the box when no landmark model is installed; our Haar detector's boxes are made to look like S3FD's.
    None when nothing of the box is inside the frame.
    """
    values = np.asarray(detection, dtype=np.float64).reshape(-1)
    if values.size < 4 or not np.isfinite(values[:4]).all():
        raise ValueError(f"expected a detector box (x1, y1, x2, y2[, score]), got {detection!r}")
    x1, y1, x2, y2 = (int(v) for v in np.clip(values[:4], 0, None))
    height, width = int(frame_shape[0]), int(frame_shape[1])
    x2, y2 = min(x2, width), min(y2, height)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return x1, y1, x2, y2


def face_box(
    landmarks: np.ndarray | None,
    detection: Sequence[float] | np.ndarray | None,
    frame_shape: tuple[int, ...],
    bbox_shift: int = 0,
) -> Box | None:
    """Upstream's per-frame rule: no detected face -> no box (the frame passes through); else the landmark box,
    or the detector box where the landmark box is unusable or no landmarks were computed."""
    if detection is None:
        return None
    if landmarks is not None:
        box = landmark_box(landmarks, bbox_shift)
        if box is not None:
            return box
    return detector_box(detection, frame_shape)


def bbox_shift_range(landmarks: Sequence[np.ndarray]) -> tuple[int, int]:
    """The bbox_shift range upstream suggests: (-mean(y30 - y29), mean(y29 - y28)) over the frames, truncated.

    Moving landmark 29 by more than this puts the mirror point outside the nose.
    """
    if not landmarks:
        raise ValueError("bbox_shift_range needs the landmarks of at least one frame")
    points = [_int_landmarks(p) for p in landmarks]
    minus = [int(p[NOSE_MIDDLE, 1] - p[NOSE_BRIDGE, 1]) for p in points]
    plus = [int(p[NOSE_BRIDGE, 1] - p[NOSE_TOP, 1]) for p in points]
    return -int(sum(minus) / len(minus)), int(sum(plus) / len(plus))


def with_extra_margin(box: Box, frame_height: int, extra_margin: int = EXTRA_MARGIN) -> Box:
    """v1.5 grows the box downwards by extra_margin pixels (the chin moves when talking), clipped to the frame.

    Upstream's v1.5 scripts apply it to the crop, the paste-back and the blend region alike; v1.0 uses 0.
    """
    x1, y1, x2, y2 = box
    return x1, y1, x2, min(y2 + int(extra_margin), int(frame_height))


def crop_face(frame: np.ndarray, box: Box, size: int = CROP_SIZE) -> np.ndarray:
    """The box's pixels resized to size x size with Lanczos (cv2.INTER_LANCZOS4), as upstream feeds the VAE."""
    x1, y1, x2, y2 = box
    patch = frame[y1:y2, x1:x2]
    if patch.shape[0] == 0 or patch.shape[1] == 0:
        raise ValueError(f"the box {box} holds no pixels of a {frame.shape[1]}x{frame.shape[0]} frame")
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LANCZOS4)


def half_mask(size: int = CROP_SIZE) -> torch.Tensor:
    """(size, size) float32: 1 on the upper half, 0 on the lower half (rows from size // 2), as upstream's VAE."""
    mask = torch.zeros(size, size)
    mask[: size // 2] = 1.0
    return mask


def vae_pixels(crops: torch.Tensor, masked: bool) -> torch.Tensor:
    """BGR uint8 crops (N, H, W, 3) -> the VAE's float32 RGB input (N, 3, H, W) in [-1, 1].

    The lower half is blanked in [0, 1] space, before normalising, so it reaches the VAE as -1 (black), as
    upstream's preprocess_img does. uint8 / 255 in float32 equals upstream's float64 division cast to float32
    for all 256 values. The result is in the standard (contiguous) layout, as upstream's is: the permuted
    channels-last view would send the encoder down other convolution kernels, latents up to 6e-5 apart.
    """
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != torch.uint8:
        raise ValueError(f"expected uint8 BGR crops (N, H, W, 3), got {tuple(crops.shape)} {crops.dtype}")
    pixels = crops.flip(-1).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    if masked:
        pixels[:, :, pixels.shape[-2] // 2 :, :] = 0.0  # half_mask's zero rows
    return ((pixels - 0.5) / 0.5).contiguous()


def scaled_latents(posterior_mean: torch.Tensor, scaling_factor: float = LATENT_SCALE) -> torch.Tensor:
    """VAE latents as the UNet expects them: scaling_factor times the posterior's mean.

    Upstream multiplies a random sample of the posterior (latent_dist.sample()); the mean (latent_dist.mean, or
    .mode()) is the sample's expectation and makes the output reproducible.
    """
    return scaling_factor * posterior_mean


def unet_input(masked_latents: torch.Tensor, reference_latents: torch.Tensor) -> torch.Tensor:
    """The UNet's 8 input channels: the masked crop's 4 latent channels first, then the reference crop's."""
    return torch.cat([masked_latents, reference_latents], dim=1)


def decoder_latents(unet_output: torch.Tensor, scaling_factor: float = LATENT_SCALE) -> torch.Tensor:
    """Undo the latent scaling before decoding: (1 / scaling_factor) * latents, in upstream's order of operations
    (a multiplication by the rounded reciprocal, which can differ from a division in the last bit)."""
    return (1 / scaling_factor) * unet_output


def decoded_to_bgr(images: torch.Tensor) -> torch.Tensor:
    """The VAE decoder's (N, 3, H, W) output -> uint8 BGR (N, H, W, 3), as upstream's decode_latents converts it.

    (x / 2 + 0.5) clamped to [0, 1] in the decoder's precision, then float32 x 255 rounded half to even.
    """
    unit = (images / 2 + 0.5).clamp(0, 1)
    pixels = (unit.permute(0, 2, 3, 1).float() * 255).round().to(torch.uint8)
    return pixels.flip(-1)


def blend_region(box: Box, expand: float = BLEND_EXPAND) -> Box:
    """The square around the box that the parsing mask is computed on and pasted into (upstream's get_crop_box).

    Half-side int((larger side // 2) * expand) around the box's integer centre; it may reach past the frame.
    """
    x1, y1, x2, y2 = box
    centre_x, centre_y = (x1 + x2) // 2, (y1 + y2) // 2
    half = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return centre_x - half, centre_y - half, centre_x + half, centre_y + half
