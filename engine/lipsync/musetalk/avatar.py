"""MuseTalk's prepared avatar: everything about the face video that does not depend on the speech, computed once.

Upstream's real-time mode (scripts/realtime_inference.py, Avatar.prepare_material) finds a face box per frame,
encodes each 256x256 crop with its lower half blanked and unblanked into the UNet's 8 latent channels, prepares a
face-parsing blend mask per frame, and plays the frames forward then backward so a loop has no jump. Every later
speech clip then costs only whisper, the UNet, the VAE decoder and the blend (generate.py).

Where we differ from upstream (on purpose):
- a frame without a face keeps its place and passes through unchanged: upstream drops its latents, which pairs every
  later frame's latents with the wrong frame, and its mask preparation fails on the placeholder box;
- latents are the VAE posterior's mean (geometry.scaled_latents), so a prepared avatar is reproducible;
- a batch's masked and reference crops go through the VAE encoder in one call (upstream: two batch-1 calls a frame);
- the cycle is frame indices, not a second copy of every frame, latent row and mask;
- a face box is clipped to the frame on every side (a landmark box may reach past the right edge, where upstream's
  crop and paste-back then disagree in size), and one smaller than MIN_FACE_SIDE is no face, with a warning;
- a v1.0 avatar takes an extra margin and a parsing mode when they are given (upstream's v1.0 path adds no margin
  and parses "raw" whatever is asked); left to version_defaults, both are upstream's;
- bbox_shift_range is taken over the frames given (run.py gives a speech shorter than the video its first frames
  only; upstream's is over the whole video);
- the artefact is one file (save_avatar/load_avatar: tensors and plain values, read back with weights_only, with a
  digest of its contents checked on loading) instead of a folder of PNGs and pickles that upstream decodes again for
  every clip.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from engine.core.errors import InputError, one_line
from engine.core.results import RunResult
from engine.core.words import counted
from engine.faces.detection import FaceDetector, make_detector, missed_face_hint
from engine.lipsync.musetalk.blend import (
    BLUR_PREPARED,
    CHEEK_WIDTH,
    PARSING_MODES,
    BlendPlan,
    parser_input,
    parsing_labels,
    prepare_blend,
    region_pixels,
)
from engine.lipsync.musetalk.geometry import (
    EXTRA_MARGIN,
    Box,
    bbox_shift_range,
    blend_region,
    crop_face,
    face_box,
    landmark_box,
    scaled_latents,
    unet_input,
    vae_pixels,
    with_extra_margin,
)
from engine.lipsync.musetalk.stages import timed
from engine.lipsync.musetalk.weights import V15, MuseTalkNetworks
from engine.models.checkpoints import CheckpointError, sniff

LANDMARKS, DETECTOR = "landmarks", "detector"  # where a frame's face box came from
FIXED_BOX = "fixed box"  # the detector name of --box: no detection at all
FORMAT = "avatarbench/musetalk-avatar"
FORMAT_VERSION = 2  # 2: the payload's digest
EXPECTED = f"a MuseTalk avatar prepared by avatarbench (format {FORMAT_VERSION})"
MIN_FACE_SIDE = 8  # pixels: a smaller box has no blend region worth the name (upstream crashes on it)
DETECT_BATCH = 16  # frames per detector call: bounds S3FD's batch on the GPU

Progress = Callable[[float, str], None]


class LandmarkProvider(Protocol):
    """68 face landmarks (iBUG order, as DWPose's whole-body keypoints 23..90) per frame, None where none."""

    name: str

    def landmarks(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]: ...


@dataclass(frozen=True)
class PreparedAvatar:
    """A face video (or image) made ready for any speech. Plain CPU data: picklable, and one file with save_avatar.

    Per source frame: its face box (margin included; None without a face), where the box came from, its row in
    `latents` (-1 without a face) and its blend plan. Output frame i shows source frame `source_frame(i)`.
    """

    version: str  # the MuseTalk version whose conventions made it (margin, parsing mode)
    frames: np.ndarray  # (N, H, W, 3) uint8 BGR, in order
    boxes: tuple[Box | None, ...]
    box_sources: tuple[str | None, ...]  # LANDMARKS, DETECTOR or None
    latent_rows: tuple[int, ...]
    latents: torch.Tensor  # (faces, 8, h, w): [masked, reference] scaled posterior means, in the VAE's dtype
    plans: tuple[BlendPlan | None, ...]
    bbox_shift: int
    extra_margin: int
    parsing_mode: str
    blur_fraction: float
    cheek_widths: tuple[int, int]
    detector: str  # the face detector's name
    landmarks: str | None  # the landmark provider's name, None when boxes came from the detector alone
    fps: float | None = None  # the source video's frame rate, when the caller knows it
    warnings: tuple[str, ...] = ()
    bbox_shift_range: tuple[int, int] | None = None  # what upstream suggests for bbox_shift; None without landmarks

    @property
    def cycle(self) -> tuple[int, ...]:
        """Source frame of each output frame, repeating: forward then backward, as upstream plays an avatar."""
        count = len(self.frames)
        return (*range(count), *reversed(range(count)))

    def source_frame(self, index: int) -> int:
        """The source frame output frame `index` shows (cycle[index % len(cycle)])."""
        count = len(self.frames)
        position = index % (2 * count)
        return position if position < count else 2 * count - 1 - position

    @property
    def faces(self) -> int:
        return sum(box is not None for box in self.boxes)


# --------------------------------------------------------------------------- checks


def _check_frames(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR frames of one size, as one array; anything else is the caller's input error."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if len(frames) == 0:
        raise InputError("no frames to prepare a MuseTalk avatar from: give a face image or a video with frames")
    first = frames[0]
    for index, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            kind = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InputError(f"frame {index}: expected an HxWx3 uint8 BGR image, got {kind}")
        if frame.shape != first.shape:
            raise InputError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {first.shape[1]}x{first.shape[0]}; "
                "an avatar's frames must all have one size"
            )
    if first.shape[0] < 2 or first.shape[1] < 2:
        raise InputError(f"frames of {first.shape[1]}x{first.shape[0]} pixels are too small to hold a face")
    return np.stack(frames)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must be a number from 0 to 1, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- face boxes


def best_detection(detections: np.ndarray) -> np.ndarray | None:
    """The highest-scoring detection (x1, y1, x2, y2, score), as upstream takes S3FD's first after NMS; None if none."""
    rows = np.asarray(detections, dtype=np.float32).reshape(-1, 5)
    rows = rows[np.isfinite(rows).all(axis=1)]
    return rows[int(np.argmax(rows[:, 4]))] if len(rows) else None


def _detect(detector: FaceDetector, frames: np.ndarray) -> list[np.ndarray | None]:
    found: list[np.ndarray | None] = []
    for start in range(0, len(frames), DETECT_BATCH):
        found += [best_detection(d) for d in detector.detect(list(frames[start : start + DETECT_BATCH]))]
    return found


def _landmarks(
    provider: LandmarkProvider | None, frames: np.ndarray, detections: list[np.ndarray | None]
) -> list[np.ndarray | None]:
    """Landmarks for the frames the detector found a face in (upstream's rule needs a detection either way)."""
    points: list[np.ndarray | None] = [None] * len(frames)
    wanted = [i for i, d in enumerate(detections) if d is not None]
    if provider is None or not wanted:
        return points
    found = provider.landmarks([frames[i] for i in wanted])
    if len(found) != len(wanted):
        raise ValueError(f"landmark provider {provider.name!r} gave {len(found)} results for {len(wanted)} frames")
    for i, p in zip(wanted, found, strict=True):
        points[i] = p
    return points


def frame_box(
    detection: np.ndarray | None,
    landmarks: np.ndarray | None,
    frame_shape: tuple[int, ...],
    bbox_shift: int,
    extra_margin: int,
) -> tuple[Box | None, str | None]:
    """One frame's crop and paste box and where it came from: geometry.face_box's rule (no detection, no face; the
    landmark box where usable, else the detector's), then the extra margin below, clipped to the frame."""
    if detection is None:
        return None, None
    box, source = (landmark_box(landmarks, bbox_shift), LANDMARKS) if landmarks is not None else (None, None)
    if box is None:
        box, source = face_box(None, detection, frame_shape), DETECTOR
    if box is None:
        return None, None
    height, width = int(frame_shape[0]), int(frame_shape[1])
    x1, y1, x2, y2 = with_extra_margin(box, height, extra_margin)
    return (x1, y1, min(x2, width), min(y2, height)), source


# --------------------------------------------------------------------------- the networks


def _encode(
    frames: np.ndarray, boxes: list[Box], indices: list[int], networks: MuseTalkNetworks, batch_size: int
) -> torch.Tensor:
    """The UNet's 8 latent channels per face frame, on the CPU: masked and reference crops in one encoder call."""
    vae, rows = networks.vae, []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        crops = torch.from_numpy(np.stack([crop_face(frames[i], boxes[i]) for i in chunk])).to(networks.device)
        pixels = torch.cat([vae_pixels(crops, masked=True), vae_pixels(crops, masked=False)]).to(vae.dtype)
        latents = scaled_latents(vae.encode(pixels).latent_dist.mean, vae.config.scaling_factor)
        masked, reference = latents.chunk(2)
        rows.append(unet_input(masked, reference).cpu())
    return torch.cat(rows).contiguous()  # the encoder may give channels-last; a loaded file never does


def _parse(
    frames: np.ndarray,
    boxes: list[Box],
    indices: list[int],
    networks: MuseTalkNetworks,
    batch_size: int,
    mode: str,
    blur_fraction: float,
    cheek_widths: tuple[int, int],
) -> dict[int, BlendPlan]:
    """BiSeNet once per face frame, on its blend region, and the frame's blend plan from the labels."""
    parser = networks.face_parser
    dtype = next(parser.parameters()).dtype
    plans: dict[int, BlendPlan] = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        inputs = torch.cat([parser_input(region_pixels(frames[i], blend_region(boxes[i]))) for i in chunk])
        logits = parser(inputs.to(device=networks.device, dtype=dtype))
        for row, i in enumerate(chunk):
            plan = prepare_blend(boxes[i], parsing_labels(logits[row]), mode, blur_fraction, cheek_widths)
            assert plan is not None
            plans[i] = plan
    return plans


# --------------------------------------------------------------------------- preparation


def prepare_avatar(
    frames: Sequence[np.ndarray] | np.ndarray,
    networks: MuseTalkNetworks,
    *,
    detector: FaceDetector | None = None,
    landmarks: LandmarkProvider | None = None,
    bbox_shift: int = 0,
    extra_margin: int | None = None,
    parsing_mode: str | None = None,
    blur_fraction: float = BLUR_PREPARED,
    cheek_widths: tuple[int, int] = (CHEEK_WIDTH, CHEEK_WIDTH),
    batch_size: int = 8,
    fps: float | None = None,
    result: RunResult | None = None,
    progress: Progress | None = None,
) -> PreparedAvatar:
    """Prepare `frames` (uint8 BGR, one size) for MuseTalk with `networks` (their VAE and face parser).

    Boxes come from `landmarks` where it gives a usable landmark box, else from `detector` (default: the Haar
    cascade), which also decides whether a frame has a face at all, as upstream. Defaults follow networks.version:
    v1.5 adds a 10-pixel margin below and parses in "jaw" mode; v1.0 adds none and parses "raw". `blur_fraction` is
    the real-time script's 0.1 (blend.BLUR_ONE_SHOT, 0.05, gives inference.py's paste-back). `bbox_shift` applies
    to both versions, deliberately: upstream's scripts set it to 0 for v1.5 whatever was asked (the default 0 gives
    upstream's v1.5 box).
    """
    progress = progress or (lambda fraction, label: None)
    stack = _check_frames(frames)
    version = networks.version
    margin, mode = version_defaults(version, extra_margin, parsing_mode)
    margin = _integer(margin, "extra_margin", 0, 10_000)
    shift = _integer(bbox_shift, "bbox_shift", -10_000, 10_000)
    if mode not in PARSING_MODES:
        raise InputError(f"parsing mode {mode!r} is not one of {', '.join(PARSING_MODES)}")
    blur = _fraction(blur_fraction, "blur_fraction")
    cheeks = (
        _integer(cheek_widths[0], "left cheek width", 0, 256),
        _integer(cheek_widths[1], "right cheek width", 0, 256),
    )
    batch = _integer(batch_size, "batch_size", 1, 4096)
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number of frames per second, got {fps!r}")
    detector = detector or make_detector("haar")
    device, count = networks.device, len(stack)

    progress(0.0, "finding faces")
    with timed(result, "detect", device, count):
        detections = _detect(detector, stack)
    with timed(result if landmarks is not None else None, "landmarks", device, count):
        points = _landmarks(landmarks, stack, detections)
    shift_range = suggested_shifts(points)
    boxes: list[Box | None] = []
    sources: list[str | None] = []
    small = 0
    for frame, detection, point in zip(stack, detections, points, strict=True):
        box, source = frame_box(detection, point, frame.shape, shift, margin)
        if box is not None and min(box[2] - box[0], box[3] - box[1]) < MIN_FACE_SIDE:
            box, source, small = None, None, small + 1
        boxes.append(box)
        sources.append(source)
    faces = [i for i, box in enumerate(boxes) if box is not None]
    frames_text = f"{count} frame{'s' if count != 1 else ''}"
    if not faces and small:  # a face was there (a --box, say), only too small for MuseTalk's crop
        raise InputError(
            f"the face box is under {MIN_FACE_SIDE} pixels on a side in {small} of the {frames_text} "
            f"({detector.name} face detector): too small for MuseTalk's crop; use a larger face or box"
        )
    if not faces:
        hint = missed_face_hint(getattr(detector, "detect_scale", 1.0))
        raise InputError(
            f"no face found in any of the {frames_text} ({detector.name} face detector); use a clear, frontal "
            f"face, or {hint}"
        )
    warnings = _warnings(count, len(faces), small, shift, sources, detector, landmarks, version)

    progress(0.2, "encoding the faces")
    with torch.no_grad():
        with timed(result, "vae encode", device, len(faces)):
            latents = _encode(stack, boxes, faces, networks, batch)
        progress(0.5, "parsing the faces")
        with timed(result, "parse", device, len(faces)):
            plans = _parse(stack, boxes, faces, networks, batch, mode, blur, cheeks)
    progress(1.0, "avatar ready")
    row_of = {frame: row for row, frame in enumerate(faces)}
    return PreparedAvatar(
        version=version,
        frames=stack,
        boxes=tuple(boxes),
        box_sources=tuple(sources),
        latent_rows=tuple(row_of.get(i, -1) for i in range(count)),
        latents=latents,
        plans=tuple(plans.get(i) for i in range(count)),
        bbox_shift=shift,
        extra_margin=margin,
        parsing_mode=mode,
        blur_fraction=blur,
        cheek_widths=cheeks,
        detector=detector.name,
        landmarks=None if landmarks is None else landmarks.name,
        fps=None if fps is None else float(fps),
        warnings=warnings,
        bbox_shift_range=shift_range,
    )


def version_defaults(version: str, extra_margin: int | None, parsing_mode: str | None) -> tuple[int, str]:
    """The margin below the box and the parsing mode an avatar is prepared with: as asked, else the version's
    (v1.5: 10 pixels and "jaw"; v1.0: none and "raw"). Upstream's v1.0 path ignores what is asked (deliberately
    different here: an option given is an option used)."""
    margin = (EXTRA_MARGIN if version == V15 else 0) if extra_margin is None else extra_margin
    return margin, parsing_mode or ("jaw" if version == V15 else "raw")


def suggested_shifts(points: Sequence[np.ndarray | None]) -> tuple[int, int] | None:
    """The bbox_shift range upstream prints for choosing it (geometry.bbox_shift_range over the frames with
    landmarks): its README has v1.0 users run once with 0 and pick a value inside. None without any landmarks."""
    found = [p for p in points if p is not None]
    return bbox_shift_range(found) if found else None


def _warnings(
    count: int,
    faces: int,
    small: int,
    shift: int,
    sources: list[str | None],
    detector: FaceDetector,
    landmarks: LandmarkProvider | None,
    version: str,
) -> tuple[str, ...]:
    out = []
    trained = f"the 68 landmarks MuseTalk {'v1.5' if version == V15 else 'v1.0'} was trained with"  # both versions
    if faces < count:
        out.append(f"{count - faces} of {count} frames have no face: they pass through unchanged")
    if small:
        out.append(f"{counted(small, 'face box')} smaller than {MIN_FACE_SIDE} pixels treated as no face")
    if landmarks is None and detector.name == FIXED_BOX:  # asked for, not fallen back to
        out.append(f"the face box is the fixed --box, as given: not made from {trained}")
    elif landmarks is None:
        out.append(
            f"no face-landmark model: the face boxes come from the {detector.name} detector, not from {trained} "
            "(upstream falls back to S3FD on the whole frame: --detector s3fd --detect-scale 1)"
        )
    elif DETECTOR in sources:
        out.append(f"{counted(sources.count(DETECTOR), 'frame')} without usable landmarks took the detector's box")
    if shift and LANDMARKS not in sources:
        out.append("bbox_shift moves only boxes made from face landmarks; these boxes came from the detector")
    return tuple(out)


# --------------------------------------------------------------------------- one file


def save_avatar(avatar: PreparedAvatar, path: str | os.PathLike[str]) -> Path:
    """Write the avatar to one file (torch.save of tensors and plain values), atomically; returns the path."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": avatar.version,
        "frames": torch.from_numpy(np.ascontiguousarray(avatar.frames)),
        "boxes": [None if b is None else list(b) for b in avatar.boxes],
        "box_sources": list(avatar.box_sources),
        "latent_rows": list(avatar.latent_rows),
        "latents": avatar.latents.detach().cpu().contiguous(),
        "regions": [None if p is None else list(p.region) for p in avatar.plans],
        "masks": [None if p is None else p.mask.cpu().contiguous() for p in avatar.plans],
        "bbox_shift": avatar.bbox_shift,
        "extra_margin": avatar.extra_margin,
        "parsing_mode": avatar.parsing_mode,
        "blur_fraction": avatar.blur_fraction,
        "cheek_widths": list(avatar.cheek_widths),
        "detector": avatar.detector,
        "landmarks": avatar.landmarks,
        "fps": avatar.fps,
        "warnings": list(avatar.warnings),
        "bbox_shift_range": None if avatar.bbox_shift_range is None else list(avatar.bbox_shift_range),
    }
    payload["digest"] = payload_digest(payload)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def load_avatar(path: str | os.PathLike[str]) -> PreparedAvatar:
    """An avatar written by save_avatar; any other file, or a damaged one, is a CheckpointError (an InputError)."""
    path = Path(path)
    sniff(path, EXPECTED)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, a pickle with objects, not torch at all
        raise CheckpointError(
            f"torch.load could not read it ({type(exc).__name__}): the file is truncated, corrupt or of another kind",
            path=path,
            expected=EXPECTED,
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError("it is not a prepared MuseTalk avatar", path=path, expected=EXPECTED)
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"it has avatar format {data.get('format_version')!r}, which this avatarbench does not read: prepare the "
            "avatar again",
            path=path,
            expected=EXPECTED,
        )
    if data.get("digest") != payload_digest(data):  # a flipped bit in a frame or a latent loads, and looks plausible
        raise CheckpointError("its contents are damaged (they do not match their digest)", path=path, expected=EXPECTED)
    try:
        avatar = _from_payload(data)
        check_avatar(avatar)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:  # a list for a tensor
        raise CheckpointError(f"its contents are damaged ({one_line(exc)})", path=path, expected=EXPECTED) from None
    return avatar


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of everything in a saved avatar but its digest: the tensors' dtypes, shapes and bytes, the plain
    values' reprs, in key order."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, (list, tuple)):
            digest.update(f"list {len(value)};".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{value!r};".encode())

    for key in sorted(k for k in payload if k != "digest"):
        digest.update(f"{key}=".encode())
        feed(payload[key])
    return digest.hexdigest()


def _from_payload(data: dict[str, Any]) -> PreparedAvatar:
    boxes = tuple(None if b is None else tuple(int(v) for v in b) for b in data["boxes"])
    plans = tuple(
        None if region is None else BlendPlan(box, tuple(int(v) for v in region), mask)
        for box, region, mask in zip(boxes, data["regions"], data["masks"], strict=True)
    )
    return PreparedAvatar(
        version=str(data["version"]),
        frames=data["frames"].numpy(),
        boxes=boxes,
        box_sources=tuple(data["box_sources"]),
        latent_rows=tuple(int(r) for r in data["latent_rows"]),
        latents=data["latents"],
        plans=plans,
        bbox_shift=int(data["bbox_shift"]),
        extra_margin=int(data["extra_margin"]),
        parsing_mode=str(data["parsing_mode"]),
        blur_fraction=float(data["blur_fraction"]),
        cheek_widths=(int(data["cheek_widths"][0]), int(data["cheek_widths"][1])),
        detector=str(data["detector"]),
        landmarks=data["landmarks"],
        fps=data["fps"],
        warnings=tuple(str(w) for w in data["warnings"]),
        bbox_shift_range=_shift_range(data.get("bbox_shift_range")),  # absent from files saved before it was kept
    )


def _shift_range(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def check_avatar(avatar: PreparedAvatar) -> None:
    """Raise ValueError where the parts of an avatar do not fit together (a damaged or hand-made file)."""
    frames = avatar.frames
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames of shape {frames.shape} and dtype {frames.dtype}")
    count = len(frames)
    for name in ("boxes", "box_sources", "latent_rows", "plans"):
        if len(getattr(avatar, name)) != count:
            raise ValueError(f"{len(getattr(avatar, name))} {name} for {count} frames")
    faces = [i for i, b in enumerate(avatar.boxes) if b is not None]
    if not faces or avatar.latents.ndim != 4 or len(avatar.latents) != len(faces) or avatar.latents.shape[1] != 8:
        raise ValueError(f"latents of shape {tuple(avatar.latents.shape)} for {len(faces)} faces")
    height, width = frames.shape[1:3]
    for i, box in enumerate(avatar.boxes):  # a flipped bit made a box of 3 values, or x2 < x1: every run crashed
        if box is not None and not (len(box) == 4 and 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
            raise ValueError(f"frame {i}'s face box {box} does not fit its {width}x{height} frame")
    if [r for r in avatar.latent_rows if r >= 0] != list(range(len(faces))):
        raise ValueError("latent rows out of order")
    for i, (box, row, plan) in enumerate(zip(avatar.boxes, avatar.latent_rows, avatar.plans, strict=True)):
        if (box is None) != (row < 0) or (box is None) != (plan is None):
            raise ValueError(f"frame {i} has a box, a latent row and a plan that disagree")
        if plan is not None:
            side = plan.region[2] - plan.region[0]
            if len(plan.region) != 4 or side <= 0 or plan.region[3] - plan.region[1] != side:
                raise ValueError(f"frame {i}'s blend region {plan.region} is not a square")
            if plan.box != box or tuple(plan.mask.shape) != (side, side) or plan.mask.dtype != torch.uint8:
                raise ValueError(f"frame {i}'s blend plan does not fit its box")
