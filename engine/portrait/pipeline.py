"""Portrait animation: a source portrait animated by a driving video (or image, or a saved motion template)
through our LivePortrait networks, pasted back into the full source image and written as MP4 with the
driving video's sound.

Stages: the source is detected, cropped (2.3x the face, shifted up) and encoded once (appearance features
and keypoints: the per-source cache); the driving clip is streamed twice, never held in memory: once to
detect its face and fix one crop box for the whole clip, once to crop every frame and extract its motion in
batches (and, for retargeting to the driver, its eye and lip openness). Frames are counted while streaming: a
clip that runs past AVATARBENCH_MAX_SECONDS stops there with a message, even when its header gives no
duration. Driving keypoints are computed for all frames (a few hundred numbers each), then output frames are
rendered in batches: warping + decoding + paste-back on the device, encoding in order.

Precision: on CUDA the appearance extractor, warping module and decoder run under fp16 autocast (PyTorch
keeps grid_sample in fp32 there); the motion extractor always runs in strict fp32 with TF32 off, because
TF32 moves its pose logits by about 0.1 degree-bins. With `compile`, the warping module and decoder go through
torch.compile at one fixed batch shape (the last batch is padded), so they compile once.

Between runs in one process the loaded networks and each source's features stay cached (engine/portrait/cache.py):
re-animating a portrait with other options costs warping + decoding only.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.device import (
    DeviceChoice,
    apply_backend_flags,
    capabilities,
    pad_batch,
    precision_dtype,
    resolve_device,
    usable_gpu_memory,
    usable_host_memory,
)
from engine.core.errors import SetupError, one_line
from engine.core.hls import stream_folder
from engine.core.hub import LIVEPORTRAIT, checked_repo
from engine.core.media import (
    IMAGE_FORMATS,
    LARGEST_MAX_SIDE,
    LosslessWriter,
    MediaError,
    VideoInfo,
    VideoWriter,
    is_image,
    load_image,
    probe_video,
    read_frames,
    validate_video,
)
from engine.core.results import RunResult
from engine.core.settings import Settings, get_settings
from engine.core.weights import WeightsError
from engine.portrait.config import BASELINE_OPTIONS, TEMPLATE_SUFFIXES, PortraitConfig, PortraitError, is_template
from engine.portrait.crop import (
    CropTransform,
    PasteBack,
    crop_image,
    crop_transform,
    network_input,
    roll_from_landmarks,
    source_within_limits,
    stretched_input,
)
from engine.portrait.landmarks import LandmarkModel, openness
from engine.portrait.motion import (
    KeypointInfo,
    absolute_driving,
    concatenated,
    driving_multiplier,
    expression_friendly,
    image_driving,
    keypoint_info,
    motion_multiplier,
    relative_driving,
    retarget,
    stitch,
    transform_keypoints,
)
from engine.portrait.templates import NPZ, Openness, read_template, save_template

Progress = Callable[[float, str], Any]
IMAGE_FPS = 25.0
LIP_NORMALIZE_THRESHOLD = 0.03  # source lips open at least this much are closed before animating (upstream's)
HUB_REPO = LIVEPORTRAIT.repo
COMPILE_BACKEND = "inductor"  # tests use "eager" to check the plumbing without a C++ toolchain
GPU_BATCH_SIZE = 8
CPU_BATCH_SIZE = 1  # on the CPU, batch 8 was 16-24 % slower per frame than 1 and took 3x the memory (issue #17)


def hub_weights(reference: str, download: bool) -> Path | None:
    """The `liveportrait/` folder of a Hub snapshot (`hf:OWNER/REPO`): downloaded when asked for and online,
    otherwise only looked up in the Hub's local cache (None when it is not there)."""
    repo = checked_repo(reference.removeprefix("hf:").strip("/"), LIVEPORTRAIT)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(repo, allow_patterns=list(LIVEPORTRAIT.patterns), local_files_only=not download)
    except Exception as exc:  # offline, not cached, no such repo, huggingface_hub missing
        if download:
            raise WeightsError(f"could not fetch the LivePortrait weights from {reference}: {one_line(exc)}") from None
        return None
    folder = Path(snapshot) / "liveportrait"
    return folder if (folder / "base_models").is_dir() else None


def _weights_in(folder: Path) -> Path | None:
    """The folder holding base_models/: the one given, or its liveportrait/ subfolder (the official
    pretrained_weights folder as downloaded from the Hub)."""
    for candidate in (folder, folder / "liveportrait"):
        if (candidate / "base_models").is_dir():
            return candidate
    return None


def weights_folder(given: str | None, settings: Settings) -> Path:
    """Explicit path or `hf:` reference (`given`) > AVATARBENCH_LIVEPORTRAIT_DIR > weights dir > the Hub's cache."""
    configured = given or settings.liveportrait_dir
    if configured and str(configured).startswith("hf:"):
        found = hub_weights(str(configured), download=True)
        if found is None:
            raise WeightsError(f"{configured} has no liveportrait/base_models folder")
        return _complete(found)
    folder = Path(configured or settings.weights_dir / "liveportrait")
    found = _weights_in(folder) or (None if configured else hub_weights(f"hf:{HUB_REPO}", download=False))
    if found is not None:
        return _complete(found)
    if folder.is_file():
        raise WeightsError(f"{folder} is a file: the LivePortrait weights are a folder (pretrained_weights)")
    where = (
        "there is no such folder" if not folder.exists() else "no base_models/ there or in its liveportrait/ subfolder"
    )
    raise WeightsError(
        f"no LivePortrait weights in {folder} ({where}): put the "
        f"official pretrained_weights folder there (liveportrait/base_models/*.pth and liveportrait/"
        f"retargeting_models/stitching_retargeting_module.pth, from the Hugging Face repository {HUB_REPO}), "
        f"set AVATARBENCH_LIVEPORTRAIT_DIR / --weights, or give --weights hf:{HUB_REPO} to download it"
    )


def _complete(folder: Path) -> Path:
    """The weights folder, once it holds all five files: the ones missing are named together, before any loads."""
    from engine.models.liveportrait import WEIGHT_FILES

    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(
            f"{folder} lacks {len(missing)} of LivePortrait's {len(WEIGHT_FILES)} weight files: {', '.join(missing)} "
            f"(pretrained_weights/liveportrait/ of the Hugging Face repository {HUB_REPO}); download them, or give "
            f"--weights hf:{HUB_REPO}"
        )
    return folder


def _largest_face(image: np.ndarray, detector: Any) -> np.ndarray | None:
    from engine.faces.detection import largest

    found = largest(detector.detect([image])[0])
    return None if found is None else found[:4]


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _timed(items: Iterator[Any], result: RunResult, stage: str) -> Iterator[Any]:
    """`items` with the time each takes to come counted as `stage`: a clip decoded as it is read shows in the
    stage chart rather than nowhere."""
    iterator = iter(items)
    while True:
        with result.stage(stage):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


_END = object()


class _Networks:
    """The loaded networks and how to run each in the chosen precision (optionally compiled at `batch` rows)."""

    def __init__(
        self, folder: Path, device: torch.device, precision: str, compile: bool = False, batch: int = 8
    ) -> None:
        from engine.models.liveportrait import load_liveportrait

        self.nets = load_liveportrait(folder, device)
        self.retargeting = self.nets.retargeting
        self.device, self.precision = device, precision
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.autocast = half is not None
        self.half = half
        self.warping, self.decoder = self.nets.warping, self.nets.decoder
        self.batch = batch if compile else None
        if compile:
            self.warping = torch.compile(self.warping, backend=COMPILE_BACKEND, dynamic=False)
            self.decoder = torch.compile(self.decoder, backend=COMPILE_BACKEND, dynamic=False)

    def amp(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.half)

    @torch.inference_mode()
    def motion(self, images: torch.Tensor) -> KeypointInfo:
        apply_backend_flags(tf32=False)  # strict fp32: TF32 shifts the pose logits
        return keypoint_info(self.nets.motion(images.float()))

    @torch.inference_mode()
    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        with self.amp():
            return self.nets.appearance(image).float()

    @torch.inference_mode()
    def warp(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        """The source features moved to the driving keypoints: (B, 256, 64, 64)."""
        b = x_driving.shape[0]
        rows = self.batch or b
        with self.amp():
            warped = self.warping(
                feature.expand(rows, -1, -1, -1, -1),
                kp_driving=pad_batch(x_driving, rows),
                kp_source=x_source.expand(rows, -1, -1),
            )
            return warped["out"][:b]

    @torch.inference_mode()
    def decode(self, warped: torch.Tensor) -> torch.Tensor:
        """(B, 3, 512, 512) frames in [0, 1]."""
        b = warped.shape[0]
        with self.amp():
            return self.decoder(pad_batch(warped, self.batch or b))[:b].float()

    def render(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        return self.decode(self.warp(feature, x_source, x_driving))


def _clip_frames(path: Path, max_frames: int | None, max_seconds: float) -> Iterator[np.ndarray]:
    """The clip's frames, at most `max_frames`; past `max_seconds` worth of them reading stops with a message (a
    header without a duration, such as a raw H.264 stream's, passes validate_video: the frames are counted)."""
    return itertools.islice(read_frames(path, max_seconds=max_seconds), max_frames)


def _driving_box(frames: Iterable[np.ndarray], name: str, detector: Any, result: RunResult) -> tuple[np.ndarray, int]:
    """One crop box for the whole clip (the mean of the faces found; every frame is scanned once) and the
    index of the first frame with a face (relative motion is measured against it)."""
    return _clip_box(_face_boxes(frames, detector, result), name)


def _face_boxes(frames: Iterable[np.ndarray], detector: Any, result: RunResult) -> list[np.ndarray | None]:
    """Each frame's largest face box (None where there is none); frames are independent, so a split job's segments
    scan their own frames. A clip decoded as it is scanned counts its decoding as "decode driving", not "detect"."""
    boxes = []
    for frame in _timed(frames, result, "decode driving"):
        with result.stage("detect"):
            boxes.append(_largest_face(frame, detector))
    return boxes


def _clip_box(boxes: list[np.ndarray | None], name: str) -> tuple[np.ndarray, int]:
    """The mean of the faces found and the index of the first frame with one."""
    found = [box for box in boxes if box is not None]
    if not found:
        raise PortraitError(f"no face found in the driving video {name}: a frontal face must be visible")
    return np.mean(found, axis=0), next(i for i, box in enumerate(boxes) if box is not None)


@dataclass
class _Driving:
    """The driving motion and what goes with it."""

    motion: KeypointInfo
    fps: float
    count: int
    has_audio: bool = False
    reference: int = 0  # the frame relative motion is measured against
    image: bool = False  # one driving image (or a one-frame template): its expression against the neutral one
    openness: Openness | None = None  # measured when retargeting to the driver or saving a template


def _measured_openness(
    landmarks: LandmarkModel, images: list[np.ndarray], box: np.ndarray
) -> list[tuple[np.ndarray, float]]:
    """Each RGB image's (eyes, lips) openness, the face looked for in `box`."""
    return [openness(landmarks(rgb, box)) for rgb in images]


def _stacked(rows: list[tuple[np.ndarray, float]]) -> Openness:
    return np.stack([eyes for eyes, _ in rows]).astype(np.float32), np.array([lips for _, lips in rows], np.float32)


def _warn_one_frame(info: VideoInfo, path: Path, config: PortraitConfig, result: RunResult) -> None:
    """A driving video of one frame: relative motion against itself moves nothing (upstream's rule too, silent),
    where the same frame as an image transfers its expression."""
    if info.frames == 1 and config.relative:
        result.warn(
            f"{path.name} is a video of one frame: its motion relative to itself moves nothing; give the frame as "
            "an image to transfer its expression"
        )


def _driving_motion(
    config: PortraitConfig,
    settings: Settings,
    nets: _Networks,
    detector: Any,
    landmarks: LandmarkModel | None,
    result: RunResult,
    progress: Progress,
) -> _Driving:
    """Motion of every driving frame, with the eye and lip openness of each when `landmarks` is given (measured
    in the clip's one face box, as the motion is), and the reference frame for relative motion (the first, or
    the first with a face when the clip starts without one)."""
    path = Path(config.driving)
    if is_template(path):
        saved = read_template(path, config.max_frames, settings.max_seconds)
        count = saved.motion.exp.shape[0]
        # a template of one frame drives as one image does (upstream's rule for its templates); a longer one cut to
        # its first frame by max_frames is a clip's first frame, measured against itself as a video's would be
        return _Driving(saved.motion, saved.fps, count, image=saved.frames_in_file == 1, openness=saved.openness)
    if is_image(path):
        image = _rgb(load_image(path, max_side=settings.max_side))
        box = _largest_face(image, detector)
        if box is None:
            raise PortraitError(f"no face found in the driving image {path.name}")
        transform = _driving_transform(config, box, image.shape[1], image.shape[0])
        _unused_driving_crop(config, transform, path.name, result)
        with result.stage("motion", items=1):
            motion = nets.motion(_driving_input(image, transform, nets.device))
        measured = None if landmarks is None else _stacked(_measured_openness(landmarks, [image], box))
        return _Driving(motion, IMAGE_FPS, 1, image=True, openness=measured)
    info = _driving_video(path, settings)
    _warn_one_frame(info, path, config, result)
    progress(0.05, "finding the driving face")
    box, reference = _driving_box(
        _clip_frames(path, config.max_frames, settings.max_seconds), path.name, detector, result
    )
    return _clip_motion(config, settings, nets, info, box, reference, landmarks, result, progress)


def _clip_motion(
    config: PortraitConfig,
    settings: Settings,
    nets: _Networks,
    info: VideoInfo,
    box: np.ndarray,
    reference: int,
    landmarks: LandmarkModel | None,
    result: RunResult,
    progress: Progress,
) -> _Driving:
    """A driving clip's motion in its one face `box`, relative to frame `reference` (the first with a face)."""
    if reference and config.relative:
        result.warn(
            f"the driving clip's first frame shows no face: motion is measured against frame {reference}, the "
            "first with a face (trim the clip to start on the face for the upstream behaviour)"
        )
    transform = _driving_transform(config, box, info.width, info.height)
    _unused_driving_crop(config, transform, Path(config.driving).name, result)
    infos: list[KeypointInfo] = []
    rows: list[tuple[np.ndarray, float]] = []
    frames = _clip_frames(Path(config.driving), config.max_frames, settings.max_seconds)
    total = min(info.frames or 1, config.max_frames or info.frames or 1)
    for batch in _timed(_batches(frames, config.batch_size), result, "decode driving"):
        images = [_rgb(f) for f in batch]
        with result.stage("crop", items=len(batch)):
            tensor = torch.cat([_driving_input(rgb, transform, nets.device) for rgb in images])
        with result.stage("motion", items=len(batch)):
            infos.append(nets.motion(tensor))
        if landmarks is not None:
            with result.stage("driving landmarks", items=len(batch)):
                rows += _measured_openness(landmarks, images, box)
        progress(0.05 + 0.25 * min(1.0, len(infos) * config.batch_size / total), "driving motion")
    merged = concatenated(infos)
    measured = _stacked(rows) if rows else None
    return _Driving(merged, info.fps, merged.kp.shape[0], info.has_audio, reference, openness=measured)


def _driving_transform(config: PortraitConfig, box: np.ndarray, width: int, height: int) -> CropTransform | None:
    """The driving crop around the face (2.2x its box, shifted up 0.1), or None where upstream takes the driving
    frames whole: a square video or image, unless `crop_driving` asks (upstream's flag_crop_driving_video)."""
    if width == height and not config.crop_driving:
        return None
    return crop_transform(box, config.scale_crop_driving, config.vy_ratio_crop_driving, vx=config.vx_ratio_crop_driving)


def _unused_driving_crop(config: PortraitConfig, transform: CropTransform | None, name: str, result: RunResult) -> None:
    """The driving crop's scale and shifts given for a square driver taken whole: they changed nothing, silently."""
    defaults = PortraitConfig(config.source, config.driving)
    changed = [n for n in DRIVING_CROP_SHAPE if getattr(config, n) != getattr(defaults, n)]
    if transform is None and changed:
        result.warn(
            f"{', '.join('--' + n.replace('_', '-') for n in changed)} change nothing here: the square {name} is "
            "taken whole (--crop-driving crops it)"
        )


def _driving_input(rgb: np.ndarray, transform: CropTransform | None, device: torch.device) -> torch.Tensor:
    return stretched_input(rgb, device) if transform is None else network_input(crop_image(rgb, transform), device)


def _driving_keypoints(
    config: PortraitConfig,
    source: KeypointInfo,
    motion: KeypointInfo,
    nets: Any,
    openness: tuple[np.ndarray, float] | None = None,
    reference: int = 0,
    *,
    driving_openness: Openness | None = None,
    driving_image: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints that move the source as the driver moves, then (as upstream's pipeline) the expression-friendly
    rescaling, eye and lip retargeting (given the source's `openness`), stitching, lip normalisation and the
    driving multiplier.

    Relative motion from a clip is measured against its `reference` frame; one driving image (`driving_image`;
    by default, a single frame) keeps the source's pose, scale and position and measures its expression against
    upstream's neutral expression; absolute motion takes the driver's pose, position and upstream's subset of its
    expression, at the source's scale. Retargeting to the driver (`driving_openness`, per frame) replaces the
    motion, as upstream: the source's keypoints (relative) or the driver's (absolute) plus the deltas. The
    head-rotation offsets turn the source's own pose wherever it is used (the expression-friendly rescaling
    re-centres on it too); a fixed eye or lip openness adds its delta to the animated keypoints (both ours, not
    upstream's)."""
    x_source = transform_keypoints(source)
    posed = source
    if any(config.rotation):  # the head-rotation sliders: the source's own pose, turned by the offsets
        dp, dy, dr = config.rotation
        posed = replace(source, pitch=source.pitch + dp, yaw=source.yaw + dy, roll=source.roll + dr)
    x_posed = transform_keypoints(posed)  # x_source itself when there are no offsets
    n = motion.kp.shape[0]
    image = n == 1 if driving_image is None else driving_image
    if not config.relative:
        x = absolute_driving(posed, motion, config.region)
    elif image:
        x = image_driving(posed, motion, config.region)
    else:
        x = relative_driving(posed, motion, motion.select(reference), config.region)
        if config.driving_option == "expression-friendly":
            x_first = x[reference : reference + 1]
            x = expression_friendly(x, x_first, x_posed, motion_multiplier(x_source, x_first))
    with torch.inference_mode():
        deltas = _retargeting_deltas(config, nets, x_source, n, openness, driving_openness)
        if config.follows_driver and config.relative:
            x = x_posed.expand(n, 21, 3)
        for delta in deltas:
            x = x + delta
        if config.stitching:
            x = stitch(nets.retargeting["stitching"], x_source, x)
        if openness is not None and _normalises_lips(config, openness[1]):
            x = x + retarget(nets.retargeting["lip"], x_source, torch.tensor([[openness[1], 0.0]]))
    return driving_multiplier(x, x_source, config.multiplier), x_source


def _retargeting_deltas(
    config: PortraitConfig,
    nets: Any,
    x_source: torch.Tensor,
    frames: int,
    openness: tuple[np.ndarray, float] | None,
    driving_openness: Openness | None,
) -> list[torch.Tensor]:
    """The eye, then lip, keypoint deltas asked for, from the source's openness to each driving frame's (for the
    eyes upstream takes the driver's left eye) or to one fixed openness."""
    if openness is None:
        return []
    if config.follows_driver and driving_openness is None:
        raise PortraitError(
            "retargeting to the driver needs each driving frame's eye and lip openness, and this motion template "
            "has none: save it again with LivePortrait's landmark.onnx beside the weights (or --landmarks)"
        )
    driver = (None, None) if driving_openness is None else (driving_openness[0][:, 0], driving_openness[1])
    follows = (config.eye_retargeting, config.lip_retargeting)
    parts = zip(("eye", "lip"), follows, (config.eye_open, config.lip_open), openness, driver, strict=True)
    deltas = []
    for name, follows_driver, fixed, source_ratios, driver_ratios in parts:
        if not follows_driver and fixed is None:
            continue
        target = driver_ratios if follows_driver else np.full(frames, fixed)
        own = np.broadcast_to(np.atleast_1d(source_ratios), (frames, np.size(source_ratios)))
        ratios = torch.tensor(np.column_stack([own, target]), dtype=torch.float32)
        deltas.append(retarget(nets.retargeting[name], x_source, ratios))
    return deltas


def _normalises_lips(config: PortraitConfig, source_lips: float) -> bool:
    """Upstream closes an open source mouth before relative motion unless it retargets the eyes or lips to the
    driver; a fixed lip openness replaces it too, a fixed eye openness does not."""
    wanted = config.normalize_lips and config.relative and config.lip_open is None and not config.follows_driver
    return wanted and source_lips >= LIP_NORMALIZE_THRESHOLD


@dataclass
class _Plan:
    """What an engine hands the writer: frames in batches, on `device`, as (B, 3, H, W) in [0, 1]."""

    batches: Iterator[torch.Tensor]
    fps: float
    count: int
    has_audio: bool
    size: tuple[int, int]  # width, height
    device: torch.device
    metrics: dict[str, Any]


def default_batch_size(device: torch.device, backend: str = "torch") -> int:
    """Frames per batch when none is asked for: 8 on a GPU; 1 where the networks run on the CPU (the CPU device, or
    the onnx-cpu backend), where a batch of 8 made LivePortrait's decoder 30 % slower per frame and the process 3x
    bigger (4.7 GB against upstream's 1.65 GB), and batch 1 is level with upstream."""
    on_gpu = device.type == "cuda" and backend != "onnx-cpu"
    return GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE


def _pick_engine(config: PortraitConfig, settings: Settings) -> tuple[str, Path | None]:
    """The engine and, for LivePortrait, its weights folder (looked up once: it may search the Hub's cache). Weights
    asked for (the liveportrait engine, or a --weights folder) must be there: only a search falls back."""
    if config.engine == "baseline":
        return "baseline", None
    if config.engine == "liveportrait" or config.weights:
        return "liveportrait", weights_folder(config.weights, settings)
    try:
        return "liveportrait", weights_folder(config.weights, settings)
    except WeightsError:
        return "baseline", None


@dataclass
class _Head:
    """What a run decides before the driving input: device, precision, the source and its face, the engine."""

    config: PortraitConfig  # with the batch size resolved
    settings: Settings
    result: RunResult
    device: torch.device
    precision: str
    detector: Any
    source_bgr: np.ndarray
    box: np.ndarray | None  # None: no face, LivePortrait uncropped
    engine: str
    folder: Path | None  # LivePortrait's weights; None: the baseline

    def report(self, plan_metrics: dict[str, Any]) -> None:
        face_box = None if self.box is None else [round(float(v), 1) for v in self.box]
        self.result.metrics.update(
            engine=self.engine, face_box=face_box, batch_size=self.config.batch_size, **plan_metrics
        )


def _head(config: PortraitConfig, settings: Settings, device: str | None, batch_size: int | None = None) -> _Head:
    choice = resolve_device(device or settings.device)
    precision = ("fp16" if choice.is_cuda else "fp32") if config.precision == "auto" else config.precision
    result = RunResult(device=str(choice.device), device_name=capabilities(choice.device).name, precision=precision)
    result.config = config.to_text()  # as asked: an empty batch size stays empty, resolved again on each device
    batch_size = batch_size or config.batch_size or default_batch_size(choice.device, config.backend)
    config = replace(config, batch_size=batch_size)
    if not choice.is_cuda:
        result.warn(f"running on the CPU: {choice.reason}")
    from engine.faces.detection import HaarDetector

    detector = HaarDetector(detect_scale=0.5)
    with result.stage("decode source"):
        # a source shrunk within the limit before any work may be larger, as upstream's resize_to_limit takes any
        # photo (a phone's 4032x3024 was refused at the 2560 limit, whatever --source-max-dim said)
        shrunk = 0 < config.source_max_dim <= settings.max_side
        source = load_image(config.source, max_side=LARGEST_MAX_SIDE if shrunk else settings.max_side)
        source_bgr = source_within_limits(source, config.source_max_dim, config.source_division)
    box = _largest_face(source_bgr, detector)
    engine, folder = _pick_engine(config, settings)
    if engine == "liveportrait":
        _refuse_a_gpu_backend_off_the_gpu(config.backend, choice)
    if box is None:
        _faceless_source(config, engine, result)
    if engine == "liveportrait" and config.backend == "torch":  # fp16 on the CPU: emulated, far slower than fp32
        precision_dtype(precision, capabilities(choice.device))  # refused with what the device supports
    frames = _driving_frames(config)  # a batch is never longer than the driving input
    _refuse_a_batch_over_memory(
        min(batch_size, frames or batch_size), source_bgr.shape, engine, precision, choice.device, settings
    )
    if folder is None and config.engine == "auto":
        result.warn(
            "no LivePortrait weights found: using the baseline engine (optical-flow motion transfer, not "
            "LivePortrait). Put the weights in AVATARBENCH_LIVEPORTRAIT_DIR to use LivePortrait."
        )
    return _Head(config, settings, result, choice.device, precision, detector, source_bgr, box, engine, folder)


def _refuse_a_gpu_backend_off_the_gpu(backend: str, choice: DeviceChoice) -> None:
    """onnx-cuda and onnx-trt on a CPU job, before the export: ONNX Runtime fell back to its CPU provider after
    the export (20 s), or, with --device cpu on a GPU machine, ran on the GPU the job was told not to use, and the
    run said "on cpu" either way (as MuseTalk's GPU runtimes are refused)."""
    if backend in ("onnx-cuda", "onnx-trt") and not choice.is_cuda:
        raise SetupError(
            f"the {backend} backend runs LivePortrait on a CUDA GPU, and this job runs on the CPU ({choice.reason}); "
            "use --backend onnx-cpu or torch"
        )


def _faceless_source(config: PortraitConfig, engine: str, result: RunResult) -> None:
    """A source with no face found: LivePortrait animates it uncropped (--no-crop), as upstream does (a stylised
    face our detector misses), without what needs its landmarks; anything else is refused."""
    name = Path(config.source).name
    if config.crop or engine == "baseline":
        uncropped = " (LivePortrait with --no-crop animates the whole picture without one)" if config.crop else ""
        raise PortraitError(f"no face found in the source {name}: a frontal portrait is needed{uncropped}")
    if config.eye_open is not None or config.lip_open is not None or config.follows_driver:
        raise PortraitError(f"retargeting the eyes or lips measures the source's face, and none was found in {name}")
    result.warn(f"no face found in the source {name}: the whole picture is animated, without lip normalisation")


# What one frame of a batch holds at its peak, measured on the CPU in fp32: the baseline's warp about 32 float32 maps
# of the source's size (about 200 MB a frame at 1280x1280); LivePortrait's networks about 470 MB more (issue #17:
# 4.7 GB at batch 8 against 1.4 GB at batch 1), half that in fp16 or bf16.
SOURCE_BYTES_PER_PIXEL = 32 * 4
LIVEPORTRAIT_FRAME_BYTES = 470 * 2**20


def _driving_video(path: Path, settings: Settings) -> VideoInfo:
    """A driving file that is neither an image nor a template, read and checked as a video; one that cannot be read
    so is told every kind a driving file may be (the video reader's own message lists videos only)."""
    try:
        info = probe_video(path, settings.max_side)
    except MediaError as exc:
        raise PortraitError(f"{exc}; a driving file may also be an image ({IMAGE_FORMATS}) or a motion template "
                            f"({', '.join(TEMPLATE_SUFFIXES)})") from None  # fmt: skip
    validate_video(info, path.name, settings.max_side, settings.max_seconds)
    return info


def _driving_frames(config: PortraitConfig) -> int | None:
    """How many driving frames a run expects (`max_frames`, or a video's header: a hint), None where unknown."""
    counts = [config.max_frames] if config.max_frames else []
    if is_image(config.driving):
        counts.append(1)
    elif not is_template(config.driving):
        with contextlib.suppress(MediaError):  # an unreadable video is reported where it is read
            counts.append(probe_video(config.driving).frames or 0)
    return min(count for count in counts if count) if any(counts) else None


def _refuse_a_batch_over_memory(
    batch: int, source_shape: tuple[int, ...], engine: str, precision: str, device: torch.device, settings: Settings
) -> None:
    """A batch whose frames cannot fit in the memory left is refused with one that fits, before any work (batch 256
    of a 1280x1280 source would need about 50 GB, and the out-of-memory killer would end the process)."""
    per_frame = SOURCE_BYTES_PER_PIXEL * source_shape[0] * source_shape[1]
    if engine == "liveportrait":
        per_frame += LIVEPORTRAIT_FRAME_BYTES // (1 if precision == "fp32" else 2)
    free = usable_gpu_memory(device) if device.type == "cuda" else usable_host_memory(settings.job_memory_gb)
    if batch > 1 and batch * per_frame > free:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise PortraitError(
            f"batch {batch} needs about {batch * per_frame / 2**30:.1f} GiB for its frames "
            f"({per_frame / 2**20:.0f} MiB each, {engine} on a {source_shape[1]}x{source_shape[0]} source) and "
            f"{free / 2**30:.1f} GiB of {where} is free for this job: use a batch size of at most "
            f"{max(1, int(0.75 * free) // per_frame)} (a quarter left for the rest), or a smaller source max dim"
        )


def run_portrait(
    config: PortraitConfig,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
    device: str | None = None,
) -> RunResult:
    """Animate the source with the driving motion into `out` (.mp4) on `device` (default: the settings' device); the
    result has the video, stage timings and warnings. With save_template the motion goes to `out` with .npz."""
    settings = settings or get_settings()
    progress = progress or (lambda fraction, label: None)
    config = config.checked()
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise PortraitError(f"output {out.name or '(no name)'} must be a file name ending in .mp4")
    head = _head(config, settings, device)
    config, result = head.config, head.result
    if head.folder is None:
        plan = _baseline_plan(config, settings, head.source_bgr, head.box, head.detector, head.device, result, progress)
    else:
        _unused_crop_options(config, result)
        _unused_head_offsets(config, result)
        template = out.with_suffix(NPZ) if config.save_template else None
        source = _liveportrait_source(head, progress)
        plan = _liveportrait_plan(head, source, template, progress)
    _write(plan, config, settings, out, result, progress)
    head.report(plan.metrics)
    progress(1.0, "done")
    return result


@dataclass
class _Source:
    """LivePortrait's side of the source: the networks, the crop, the appearance features and keypoints."""

    nets: Any
    device: torch.device
    landmark_model: LandmarkModel | None
    openness: tuple[np.ndarray, float] | None
    transform: CropTransform | None  # None: the whole source, stretched (crop off)
    feature: torch.Tensor
    motion: KeypointInfo
    paste: PasteBack | None
    original: torch.Tensor
    size: tuple[int, int]  # the frames' width, height
    metrics: dict[str, Any]


def _liveportrait_source(head: _Head, progress: Progress) -> _Source:
    """Networks loaded (or reused), the source cropped and encoded (or its features reused)."""
    from engine.portrait.cache import NETWORKS, SOURCES, file_digest
    from engine.portrait.onnx_backend import weights_digest

    config, settings, result, folder = head.config, head.settings, head.result, head.folder
    assert folder is not None
    device, precision, source_bgr, box = head.device, head.precision, head.source_bgr, head.box
    progress(0.0, "loading the networks")
    if config.backend != "torch":
        precision = _onnx_precision(config, precision, device, result)
    fixed_batch = config.batch_size if config.compile or config.backend == "onnx-trt" else None
    nets_key = (str(folder.resolve()), weights_digest(folder), config.backend, str(device), precision, fixed_batch)
    with result.stage("load"):
        nets, nets_hit = NETWORKS.get_or_build(
            nets_key, lambda: _load_networks(config, settings, folder, device, precision)
        )
    if not nets_hit:
        SOURCES.clear()  # features made by other networks
    for warning in getattr(nets, "warnings", []):
        result.warn(warning)
    if config.backend != "torch":
        result.metrics["providers"] = nets.providers
    result.precision = precision
    device = nets.device  # where the ONNX backend's frames come out
    height, width = source_bgr.shape[:2]
    landmark_model = _landmark_model(config, folder, result)
    landmarks = None
    if landmark_model is not None and box is not None:  # no face: uncropped, nothing to measure (_faceless_source)
        with result.stage("landmarks"):
            landmarks = landmark_model(_rgb(source_bgr), box)
    transform: CropTransform | None = None  # crop off: upstream stretches the whole source to the networks' size
    if config.crop:  # upright by the face's tilt when the landmark model is there (upstream crops from landmarks too)
        tilt = roll_from_landmarks(landmarks) if landmarks is not None else 0.0
        transform = crop_transform(box, config.scale, config.vy_ratio, angle=tilt, vx=config.vx_ratio,
                                   rotate=config.upright)  # fmt: skip

    def encode_source() -> tuple[torch.Tensor, KeypointInfo]:
        with result.stage("crop"):
            rgb = _rgb(source_bgr)
            source_input = stretched_input(rgb, device) if transform is None else network_input(
                crop_image(rgb, transform), device
            )  # fmt: skip
        with result.stage("source features"):
            return nets.appearance(source_input), nets.motion(source_input)

    angle = None if transform is None else transform.angle
    # The features depend on the pixels the networks saw: the file, its limits and the crop (off, turn, scale, shift).
    crop_key = None if transform is None else transform.to_crop.tobytes()
    source_key = (file_digest(config.source), config.source_max_dim, config.source_division, crop_key, nets_key)
    (feature, source_motion), source_hit = SOURCES.get_or_build(source_key, encode_source)
    result.metrics["cache"] = {"networks": nets_hit, "source": source_hit}
    # As upstream: pasted back only from a crop, and only with stitching (without it the shoulders move and would
    # show a seam); otherwise the frames are the networks' 512x512 output.
    pasted = transform is not None and config.paste_back and config.stitching
    paste = PasteBack(transform, height, width, device) if pasted else None
    original = torch.from_numpy(_rgb(source_bgr)).to(device).permute(2, 0, 1)[None].float() / 255
    size = (width, height) if pasted else (512, 512)
    metrics = {"backend": config.backend, "crop_scale": None if transform is None else transform.scale,
               "crop_angle": angle, "pasted_back": pasted}  # fmt: skip
    metrics["compiled"] = config.compile
    source_openness = None if landmarks is None else openness(landmarks)
    return _Source(
        nets, device, landmark_model, source_openness, transform, feature, source_motion, paste, original, size,
        metrics,
    )  # fmt: skip


def _liveportrait_plan(head: _Head, source: _Source, template: Path | None, progress: Progress) -> _Plan:
    config, result = head.config, head.result
    measures_driver = config.follows_driver or template is not None  # upstream's templates keep the openness too
    driving = _driving_motion(
        config,
        head.settings,
        source.nets,
        head.detector,
        source.landmark_model if measures_driver else None,
        result,
        progress,
    )
    x_driving, x_source = _keypoints(head, source, driving, template)
    batches = _liveportrait_batches(config, source, x_driving, x_source, result)
    return _Plan(batches, driving.fps, driving.count, driving.has_audio, source.size, source.device, source.metrics)


def _keypoints(
    head: _Head, source: _Source, driving: _Driving, template: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The driving keypoints of every frame (the template saved first, when asked)."""
    config, result = head.config, head.result
    if template is not None:
        save_template(template, driving.motion, driving.fps, driving.openness)
        result.outputs["template"] = str(template)
    if source.openness is not None:
        result.metrics["source_openness"] = {"eyes": source.openness[0].tolist(), "lips": source.openness[1]}
        result.metrics["lips_normalised"] = _normalises_lips(config, source.openness[1])
    return _driving_keypoints(
        config,
        source.motion,
        driving.motion,
        source.nets,
        source.openness,
        driving.reference,
        driving_openness=driving.openness,
        driving_image=driving.image,
    )


def _liveportrait_batches(
    config: PortraitConfig, source: _Source, x_driving: torch.Tensor, x_source: torch.Tensor, result: RunResult
) -> Iterator[torch.Tensor]:
    """Frames rendered from `x_driving`'s keypoints, batch by batch: warped, decoded, pasted back."""
    nets, device = source.nets, source.device
    for start in range(0, x_driving.shape[0], config.batch_size):
        x = x_driving[start : start + config.batch_size].to(device)
        with result.stage("warp", items=x.shape[0]):
            warped = nets.warp(source.feature, x_source.to(device), x)
            _sync(device)
        with result.stage("decode network", items=x.shape[0]):
            frames = nets.decode(warped)
            _sync(device)
        if source.paste is None:
            yield frames
            continue
        with result.stage("paste", items=x.shape[0]):
            yield source.paste(frames, source.original)


def _baseline_plan(
    config: PortraitConfig,
    settings: Settings,
    source_bgr: np.ndarray,
    box: np.ndarray,
    detector: Any,
    device: torch.device,
    result: RunResult,
    progress: Progress,
) -> _Plan:
    path = Path(config.driving)
    _baseline_checks(config, result)
    result.precision = "fp32"  # the baseline's warp always is (the GPU's default of fp16 is LivePortrait's)
    if is_image(path):
        return _baseline_image_plan(config, settings, source_bgr, box, detector, device, result)
    info = _driving_video(path, settings)
    _warn_one_frame(info, path, config, result)
    progress(0.05, "finding the driving face")
    driving_box, first_face = _driving_box(
        _clip_frames(path, config.max_frames, settings.max_seconds), path.name, detector, result
    )
    motion = _baseline_motion(config, settings, driving_box, first_face, result, progress)
    source = _baseline_source(source_bgr, device)
    batches = _baseline_batches(config, source, box, motion.head, motion.flow, result)
    height, width = source_bgr.shape[:2]
    count = motion.head.shape[0]
    return _Plan(batches, info.fps, count, info.has_audio, (width, height), device, {"backend": "torch"})


def refuse_template_without_weights(config: PortraitConfig, settings: Settings) -> None:
    """At submit: a motion template that would meet the baseline engine (chosen, or no LivePortrait weights to find)
    is refused now rather than as a failed job. A Hub reference is left to the run (looking it up may download)."""
    configured = config.weights or settings.liveportrait_dir
    if not is_template(config.driving) or str(configured or "").startswith("hf:"):
        return
    if _pick_engine(config, settings)[0] == "baseline":
        raise _template_refusal(config)


SOURCE_CROP_OPTIONS = ("scale", "vx_ratio", "vy_ratio", "upright")
DRIVING_CROP_SHAPE = ("scale_crop_driving", "vx_ratio_crop_driving", "vy_ratio_crop_driving")
DRIVING_CROP_OPTIONS = ("crop_driving", *DRIVING_CROP_SHAPE)


def _unused_crop_options(config: PortraitConfig, result: RunResult) -> None:
    """Crop options changed where nothing is cropped are named (they changed nothing, without a word): the
    source's with --no-crop, the driving clip's with a motion template, whose motion was measured before. Upstream
    warns of the second."""
    defaults = PortraitConfig(config.source, config.driving)
    for names, unused, why in (
        (SOURCE_CROP_OPTIONS, not config.crop, "with --no-crop the source is not cropped"),
        (DRIVING_CROP_OPTIONS, is_template(config.driving), "a motion template's motion was measured when saved"),
    ):
        changed = [name for name in names if getattr(config, name) != getattr(defaults, name)]
        if unused and changed:
            result.warn(f"{', '.join('--' + n.replace('_', '-') for n in changed)} change nothing here: {why}")


HEAD_OFFSETS = ("pitch", "yaw", "roll")


def _unused_head_offsets(config: PortraitConfig, result: RunResult) -> None:
    """The head-rotation offsets turn the source's own pose, and absolute motion of the whole head (region all or
    pose) puts the driver's pose in its place: offsets given there changed nothing, without a word."""
    given = [name for name in HEAD_OFFSETS if getattr(config, name)]
    if given and not config.relative and config.region in ("all", "pose"):
        result.warn(
            f"{', '.join('--' + name for name in given)} change nothing here: with --no-relative and region "
            f"{config.region} the head takes the driver's pose, and the offsets turn the source's (relative motion, "
            "or regions exp, lip and eyes)"
        )


def _template_refusal(config: PortraitConfig) -> PortraitError:
    why = "no LivePortrait weights were found" if config.engine == "auto" else "the baseline engine was chosen"
    return PortraitError(
        f"motion templates hold LivePortrait keypoints, which need LivePortrait's weights, and {why}: give the "
        "weights (AVATARBENCH_LIVEPORTRAIT_DIR or --weights), or a driving video or image"
    )


def _baseline_checks(config: PortraitConfig, result: RunResult) -> None:
    if is_template(config.driving):
        raise _template_refusal(config)
    if config.save_template:
        result.warn("motion templates hold LivePortrait keypoints: the baseline engine does not save one")
    defaults = PortraitConfig(config.source, config.driving)
    ignored = [
        f.name
        for f in fields(config)
        if f.name not in BASELINE_OPTIONS and getattr(config, f.name) != getattr(defaults, f.name)
    ]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        result.warn(f"the baseline engine does not use {flags} (LivePortrait's options)")


def _baseline_motion(
    config: PortraitConfig,
    settings: Settings,
    driving_box: np.ndarray,
    first_face: int,
    result: RunResult,
    progress: Progress,
) -> Any:
    """The baseline's driving motion of every frame: tracked from the first face frame on, still before it."""
    from engine.portrait.baseline import still_before, track_motion

    if first_face:
        result.warn(
            f"the driving clip's first frame shows no face: motion is measured against frame {first_face}, the "
            "first with a face; the frames before it show the source still"
        )
    clip = _clip_frames(Path(config.driving), config.max_frames, settings.max_seconds)
    frames = itertools.islice(clip, first_face, None)
    progress(0.15, "tracking the driving motion")
    with result.stage("motion"):
        return still_before(track_motion(frames, driving_box), first_face)


def _baseline_source(source_bgr: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_rgb(source_bgr)).to(device).permute(2, 0, 1)[None].float() / 255


def _baseline_batches(
    config: PortraitConfig,
    source: torch.Tensor,
    box: np.ndarray,
    head: np.ndarray,
    flow: np.ndarray,
    result: RunResult,
) -> Iterator[torch.Tensor]:
    """The source moved by each frame's head motion and local flow, batch by batch."""
    from engine.portrait.baseline import render_batch

    count = head.shape[0]
    for start in range(0, count, config.batch_size):
        end = start + config.batch_size
        with result.stage("warp", items=min(end, count) - start):
            out = render_batch(source, box, head[start:end], flow[start:end], config.multiplier)
            _sync(source.device)
        yield out


def _baseline_image_plan(
    config: PortraitConfig,
    settings: Settings,
    source_bgr: np.ndarray,
    box: np.ndarray,
    detector: Any,
    device: torch.device,
    result: RunResult,
) -> _Plan:
    """One driving image with the baseline engine: its head pose (roll, scale, place) on the source, as one frame at
    IMAGE_FPS like LivePortrait's still driver; its expression is not transferred (that needs LivePortrait)."""
    from engine.portrait.baseline import FLOW_SIZE, pose_transfer, render_batch, still_pose

    path = Path(config.driving)
    driving_bgr = load_image(path, max_side=settings.max_side)
    with result.stage("motion", items=1):
        driving = still_pose(driving_bgr, detector)
        if driving is None:
            raise PortraitError(
                f"no face found in the driving image {path.name}: it needs a face, upright or tilted by less than "
                "about 40 degrees"
            )
        source = still_pose(source_bgr, detector, box=box)
        head, transferred = pose_transfer(source, driving, box)
    limited = "; scale and place limited to a head's movement, the driver being framed differently"
    result.warn(
        f"baseline engine with a driving image: only its head pose was transferred (roll {transferred['roll_degrees']}"
        f" degrees, scale {transferred['scale']}, measured from the {transferred['measured_from']}"
        f"{limited if transferred['limited'] else ''}); its expression needs LivePortrait"
    )
    image = torch.from_numpy(_rgb(source_bgr)).to(device).permute(2, 0, 1)[None].float() / 255
    still_flow = np.zeros((1, 2, FLOW_SIZE, FLOW_SIZE), np.float32)

    def batches() -> Iterator[torch.Tensor]:
        with result.stage("warp", items=1):
            out = render_batch(image, box, head[None], still_flow, config.multiplier)
            _sync(device)
        yield out

    height, width = source_bgr.shape[:2]
    metrics = {"backend": "torch", "pose_transfer": transferred}
    return _Plan(batches(), IMAGE_FPS, 1, False, (width, height), device, metrics)


def _write(
    plan: _Plan, config: PortraitConfig, settings: Settings, out: Path, result: RunResult, progress: Progress
) -> None:
    audio = _driving_audio(config, plan.fps, plan.count, settings, result) if plan.has_audio else None
    live = stream_folder(out) if config.stream else None
    writer = VideoWriter(out, plan.fps, plan.size[0], plan.size[1], audio=audio, stream_to=live)
    started = time.perf_counter()
    try:
        _encode(plan.batches, writer, result, progress, plan.count)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    result.outputs["video"] = str(out)
    result.metrics.update(
        frames=plan.count,
        fps=plan.fps,
        frames_per_second=plan.count / max(time.perf_counter() - started, 1e-9),
        encoder=writer.codec,
    )


def _encode(
    batches: Iterable[torch.Tensor], writer: Any, result: RunResult, progress: Progress, total: int, low: float = 0.3
) -> None:
    """Frames in [0, 1] to 8-bit BGR, written in order."""
    done = 0
    for frames in batches:
        if not bool(torch.isfinite(frames).all()):  # fp16 overflow: casting NaN to uint8 is undefined
            frames = torch.nan_to_num(frames, nan=0.0, posinf=1.0, neginf=0.0)
            result.warn(
                "the networks gave NaN or infinite values in some frames; those pixels are written black (white for "
                "+inf): fp32 or bf16 has the range fp16 lacks"
            )
        # Truncated, not rounded, as upstream converts its frames (np.uint8 of x 255): half a grey level darker.
        pixels = (frames * 255).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).flip(-1).cpu().numpy()
        with result.stage("encode", items=len(pixels)):
            for frame in pixels:
                writer.write(np.ascontiguousarray(frame))
        done += len(pixels)
        progress(low + (1 - low) * min(1.0, done / max(1, total)), f"frame {done}/{total}")


class PortraitSegments:
    """A portrait job with a driving clip split into time segments (engine/jobs/split.py), equal frame for frame to
    the unsplit run.

    Segments scan their own frames for the driving face (frames are independent); the parent makes the one crop box
    of the clip and its reference frame from all of them, then the motion the unsplit run makes (the baseline's
    tracking is causal, each frame seeded by the one before; LivePortrait's keypoints are measured against the
    reference frame, with stitching and retargeting), and hands each segment its frames' motion: the baseline's head
    motion and flow, LivePortrait's driving keypoints. Segments load the networks and encode the source while the
    parent plans. Driving images and motion templates are not split (one frame, or nothing to scan)."""

    def __init__(self, config: PortraitConfig, out: Path, settings: Settings, device: str | None = None) -> None:
        self.config, self.out, self.settings, self.device = config.checked(), Path(out), settings, device
        self.head: _Head | None = None
        self.source: _Source | torch.Tensor | None = None  # LivePortrait's source side, or the baseline's image
        self.info: VideoInfo | None = None
        self.count = 0
        self.plan_metrics: dict[str, Any] = {"backend": "torch"}

    def _ready(self) -> _Head:
        assert self.head is not None, "setup or join first"
        return self.head

    def _prepare(self, progress: Progress, batch_size: int | None = None) -> None:
        head = self.head = _head(self.config, self.settings, self.device, batch_size)
        path = Path(head.config.driving)
        if is_template(path) or is_image(path):
            raise PortraitError(f"{path.name}: only a driving video is split into segments")
        if head.folder is None:
            _baseline_checks(head.config, head.result)
            self.source = _baseline_source(head.source_bgr, head.device)
        else:
            self.source = _liveportrait_source(head, progress)
            self.plan_metrics = self.source.metrics
        self.info = probe_video(path)
        validate_video(self.info, path.name, self.settings.max_side, self.settings.max_seconds)

    def _size(self) -> tuple[int, int]:
        if isinstance(self.source, _Source):
            return self.source.size
        height, width = self._ready().source_bgr.shape[:2]
        return width, height

    def setup(self, progress: Progress) -> dict[str, Any]:
        self._prepare(progress)
        config, info = self._ready().config, self.info
        assert info is not None
        frames = info.frames or round((info.duration_s or 0.0) * info.fps)
        frames = min(frames, config.max_frames or frames)
        return {"frames": frames, "align": config.batch_size, "batch_size": config.batch_size, "measure": True,
                "open_end": True}  # fmt: skip

    def join(self, setup: dict[str, Any], progress: Progress) -> None:
        self._prepare(progress, batch_size=setup["batch_size"])

    def measure(self, start: int, stop: int | None, progress: Progress) -> dict[str, np.ndarray]:
        """Each of frames start..stop-1's largest face (stop None: to the clip's end)."""
        head = self._ready()
        clip = _clip_frames(Path(head.config.driving), head.config.max_frames, self.settings.max_seconds)
        boxes = _face_boxes(itertools.islice(clip, start, stop), head.detector, head.result)
        progress(1.0, f"faces in {len(boxes)} frames")
        found = np.array([box is not None for box in boxes], bool)
        rows = np.stack([np.zeros(4, np.float32) if box is None else box for box in boxes] or [np.zeros(4, np.float32)])
        return {"boxes": rows[: len(boxes)], "found": found}

    def plan(
        self, ranges: list[tuple[int, int | None]], measured: list[dict[str, np.ndarray] | None], progress: Progress
    ) -> tuple[list[tuple[int, int]], list[dict[str, np.ndarray]]]:
        """The clip's box and reference frame from every segment's faces, then the whole clip's motion, cut up."""
        head, info = self._ready(), self.info
        assert info is not None
        boxes: list[np.ndarray | None] = []
        for part in measured:
            assert part is not None, "every segment scans its frames for the driving face"
            boxes += [row if found else None for row, found in zip(part["boxes"], part["found"], strict=True)]
        box, first = _clip_box(boxes, Path(head.config.driving).name)
        count = self.count = len(boxes)
        final = [(min(start, count), count if stop is None else min(stop, count)) for start, stop in ranges]
        if isinstance(self.source, _Source):
            template = self.out.with_suffix(NPZ) if head.config.save_template else None
            measures_driver = head.config.follows_driver or template is not None
            landmarks = self.source.landmark_model if measures_driver else None
            driving = _clip_motion(
                head.config, self.settings, self.source.nets, info, box, first, landmarks, head.result, progress
            )
            x_driving, x_source = (t.detach().cpu().numpy() for t in _keypoints(head, self.source, driving, template))
            states = [{"x": x_driving[a:b], "x_source": x_source} for a, b in final]
        else:
            motion = _baseline_motion(head.config, self.settings, box, first, head.result, progress)
            states = [{"head": motion.head[a:b], "flow": motion.flow[a:b]} for a, b in final]
        return final, states

    def output_writer(self, out: Path) -> VideoWriter:
        head, info = self._ready(), self.info
        assert info is not None
        audio = (
            _driving_audio(head.config, info.fps, self.count, self.settings, head.result) if info.has_audio else None
        )
        return VideoWriter(out, info.fps, *self._size(), audio=audio)

    def segment_writer(self, path: Path) -> LosslessWriter:
        assert self.info is not None
        return LosslessWriter(path, self.info.fps, *self._size())

    def render(self, start: int, stop: int, state: dict[str, np.ndarray], writer: Any, progress: Progress) -> None:
        """Frames start..stop-1 from their planned motion."""
        head = self._ready()
        if isinstance(self.source, _Source):
            x_driving, x_source = torch.from_numpy(state["x"]), torch.from_numpy(state["x_source"])
            batches = _liveportrait_batches(head.config, self.source, x_driving, x_source, head.result)
        else:
            assert self.source is not None
            batches = _baseline_batches(head.config, self.source, head.box, state["head"], state["flow"], head.result)
        _encode(batches, writer, head.result, progress, stop - start, low=0.0)

    def report(self, frames: int, seconds: float, writer: Any) -> RunResult:
        head, info = self._ready(), self.info
        assert info is not None
        head.result.metrics.update(
            frames=frames, fps=info.fps, frames_per_second=frames / max(seconds, 1e-9), encoder=writer.codec
        )
        head.report(self.plan_metrics)
        return head.result


def _landmark_model(config: PortraitConfig, folder: Path, result: RunResult) -> LandmarkModel | None:
    """LivePortrait's optional landmark model (the source's upright crop, the eyes' and lips' openness of the
    source and, when asked, of the driver, for retargeting and lip normalisation). Retargeting asked for
    explicitly needs the model; otherwise it is used when it is there."""
    retargeting = config.eye_open is not None or config.lip_open is not None or config.follows_driver
    path = Path(config.landmarks or folder / "landmark.onnx")
    if not retargeting and not path.is_file():
        result.metrics["landmarks"] = f"none (no {path}): axis-aligned crop, no lip normalisation"
        if config.normalize_lips:
            result.warn(f"--normalize-lips needs LivePortrait's landmark model ({path} is missing): not applied")
        return None
    return LandmarkModel(path)


def _onnx_precision(config: PortraitConfig, precision: str, device: torch.device, result: RunResult) -> str:
    """fp16 needs the CUDA or TensorRT provider on a CUDA device; ONNX Runtime's CPU provider runs fp32."""
    if precision == "fp16" and (config.backend == "onnx-cpu" or device.type != "cuda"):
        result.warn(f"{config.backend} on {device} runs fp32 (fp16 needs the CUDA or TensorRT provider on a GPU)")
        return "fp32"
    return precision


def _load_networks(
    config: PortraitConfig, settings: Settings, folder: Path, device: torch.device, precision: str
) -> Any:
    if config.backend == "torch":
        return _Networks(folder, device, precision, config.compile, config.batch_size)
    from engine.portrait.onnx_backend import onnx_networks

    batch = config.batch_size if config.backend == "onnx-trt" else None  # one TensorRT engine per network
    return onnx_networks(folder, settings.cache_dir, config.backend, device.index or 0, precision, batch)


def _driving_audio(config: PortraitConfig, fps: float, count: int, settings: Settings, result: RunResult) -> Any:
    """The driving clip's sound for the frames written, at its own rate and channels, as upstream's ffmpeg mux keeps
    it: cut at the last frame's end (upstream's -shortest), padded with silence where it ends sooner, and placed
    where it starts against the pictures on the clip's timeline (a sound starting 0.4 s after them stays 0.4 s
    late; upstream's mux keeps that, but not a sound starting before the pictures). None when the clip's sound
    cannot be read, with a warning saying why."""
    from engine.core.audio import AudioError, load_sound

    try:
        sound = load_sound(config.driving, max_seconds=settings.max_seconds)
        lag_s = probe_video(config.driving).audio_lag_s
    except (AudioError, MediaError) as exc:
        result.warn(f"the driving clip's sound is left out: {exc}")
        return None
    return sound.fitted(count / fps, start_s=-lag_s, cut=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = [
    "PortraitSegments",
    "default_batch_size",
    "run_portrait",
]
