"""`avatarbench lipsync --engine musetalk`: a face (image or video) and speech in, an MP4 out, through MuseTalk.

One-shot use of the prepared-avatar path: the face's frames that the speech needs are prepared (boxes, latents,
blend plans), then generate() streams the lip-synced frames, a few at a time, to the encoding thread (encoding.py)
while it computes and blends the rest. Length policy, as upstream: one output frame per video frame of the speech
(the real frame rate; the last partial frame kept); a video shorter than the speech plays forward then backward; a
photo is a still face at 25 fps, read with OpenCV's imread as upstream's inference.py reads it (deliberately:
its realtime_inference.py reads any face file through VideoCapture, whose FFmpeg JPEG decoder gives other pixels;
a PNG, and a video's frames, are the same either way). The face box comes from the fixed box when one is given;
else from DWPose's 68 face landmarks, as upstream makes it, when its ONNX release is in the weights folder's dwpose/
(dwpose.py), and from the chosen detector where it is not or where a frame's landmarks make no usable box
(upstream's own fallback). The result says which: `landmarks` ("dwpose" or None), `boxes_from_landmarks`, and a
warning naming the detector and where DWPose's file goes.

Between runs in one process (a job worker, the app's tests) the loaded networks and the two most recent prepared
avatars stay cached, keyed by everything that changes them; prepared avatars are also kept on disk (DATA_DIR/avatars,
avatar_store.py), so that another worker or a restarted app finds them. A second clip for the same face costs
whisper, UNet, VAE decode and blend only, which is MuseTalk's real-time mode; the result's `avatar_source` says
where its avatar came from (memory, disk or prepared).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.audio import (
    SAMPLE_RATE,
    audio_streams_warning,
    audio_track,
    cut_short_warning,
    librosa_via_ffmpeg,
    load_audio,
    load_sound,
    loudness_warning,
)
from engine.core.cache import LruCache, file_digest, file_stamp
from engine.core.device import (
    DeviceChoice,
    apply_backend_flags,
    auto_precision,
    batch_within,
    capabilities,
    precision_dtype,
    resolve_device,
    usable_gpu_memory,
    usable_host_memory,
)
from engine.core.hls import stream_folder
from engine.core.media import (
    IMAGES_OR_VIDEOS,
    VideoWriter,
    is_image,
    load_image,
    probe_video,
    read_frames,
    validate_video,
)
from engine.core.resample import SOXR_HQ
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.weights import S3FD, resolve
from engine.faces.detection import FaceDetector, make_detector
from engine.faces.tracking import check_fixed_box, clipped_box_warning
from engine.lipsync.config import LipSyncConfig, LipSyncError, box_passed_over, fps_passed_over, one_frame_words
from engine.lipsync.encoding import EncoderThread
from engine.lipsync.musetalk.accelerate import StepRunner, check_runtime, make_step
from engine.lipsync.musetalk.audio import check_speech, feature_extractor, frame_count
from engine.lipsync.musetalk.avatar import FIXED_BOX, LANDMARKS, PreparedAvatar, prepare_avatar, version_defaults
from engine.lipsync.musetalk.avatar_store import AVATAR_OWNER, MEMORY, PREPARED, AvatarStore
from engine.lipsync.musetalk.avatar_store import FOLDER as AVATAR_FOLDER
from engine.lipsync.musetalk.dwpose import DETECTOR_FILE, POSE_FILE, DWPose
from engine.lipsync.musetalk.generate import generate
from engine.lipsync.musetalk.weights import DWPOSE_REPO, MuseTalkFiles, load_networks, require

Progress = Callable[[float, str], None]
IMAGE_FPS = 25.0
NETWORKS = LruCache(1)  # one set: MuseTalk's networks hold about 1.7 GB in fp16
STEPS = LruCache(1)  # their step runner (a compiled graph, CUDA graphs, an ONNX session), keyed by theirs
AVATAR_COPIES, AVATAR_MEMORY_SHARE = 2, 0.7  # frames held while an avatar is made; of the memory it may take
MEMORY_CHECK_FRAMES = 250  # read frames between two checks of an avatar's memory
AVATARS = LruCache(2)  # an avatar holds its frames (about 70 MB a second of 720p)
LANDMARK_MODELS = LruCache(1)  # DWPose's ONNX Runtime sessions (the release's files are over 100 MB each)
WAV2LIP_ONLY = (
    "checkpoint",
    "compile",
    "pads",
    "smooth",
    "paste",
    "audio_offset",
    "static",
    "resize_factor",
    "rotate",
    "crop",
    "check_precision",
)  # said when set, then left
# What a fixed --box makes no use of (field -> its flag).
DETECTION = {"detector": "--detector", "detector_checkpoint": "--detector-checkpoint", "detect_scale": "--detect-scale",
             "musetalk_person_box": "--musetalk-person-box"}  # fmt: skip


class FixedBox:
    """A detector that finds the box it was given in every frame: `--box` means no detection at all."""

    name = FIXED_BOX

    def __init__(self, box: tuple[int, ...]) -> None:
        self.detection = np.array([[*box, 1.0]], np.float32)

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [self.detection.copy() for _ in frames]


GPU_BATCH_CAP = 64  # past this the decoder's arithmetic, not launches, is all there is
# Measured on the CPU in fp32 with the real configs: the VAE decoder's peak grows by about 230 MiB a frame (its
# 256x256 blocks), the UNet's by about 18; with some room, per frame in the networks' dtype:
BYTES_PER_FRAME = {torch.float32: 320 * 2**20, torch.float16: 160 * 2**20, torch.bfloat16: 160 * 2**20}


def default_batch_size(device: torch.device, dtype: torch.dtype = torch.float16) -> int:
    """On a GPU, the largest power of two (up to GPU_BATCH_CAP) whose UNet + decoder activations fit half the
    memory this process may still use (its share of a shared card, after the networks are loaded): 8 on a 6 GB card,
    64 on an 80 GB one (upstream's fixed 20 needs 8+ GB in fp32). 2 on the CPU, where each frame costs about 0.8
    TFLOP and a batch only adds memory."""
    if device.type != "cuda":
        return 2
    fits = int(usable_gpu_memory(device) * 0.5 // BYTES_PER_FRAME.get(dtype, BYTES_PER_FRAME[torch.float32]))
    return max(1, min(GPU_BATCH_CAP, 2 ** int(math.log2(fits)) if fits >= 1 else 1))


def _check_host_batch(batch: int, dtype: torch.dtype, settings: Settings) -> None:
    """A CPU batch whose UNet and decoder activations cannot fit in the memory left for the job is refused with
    one that does, before any frame (batch 64 needs about 20 GB in fp32; the out-of-memory killer would end the
    process, or the broker stop the worker past AVATARBENCH_JOB_MEMORY_GB)."""
    per_frame = BYTES_PER_FRAME.get(dtype, BYTES_PER_FRAME[torch.float32])
    budget = usable_host_memory(settings.job_memory_gb)
    if batch > 1 and batch * per_frame > budget:
        raise LipSyncError(
            f"MuseTalk batch size {batch} needs about {batch * per_frame / 2**30:.1f} GiB of memory on the CPU "
            f"({per_frame / 2**20:.0f} MiB a frame, mostly the VAE decoder's) and {budget / 2**30:.1f} GiB is free "
            f"for this job: use a batch size of at most {batch_within(0.75 * budget, per_frame)} (a quarter left for "
            f"the rest), or leave it to the default ({default_batch_size(torch.device('cpu'))} on a CPU)"
        )


def _precision(config: LipSyncConfig, choice: DeviceChoice) -> tuple[torch.dtype, str]:
    """The networks' dtype and the precision's name; what the device lacks (tf32 or fp16 on a CPU) refused, as
    Wav2Lip refuses it. TF32 is fp32 with TensorFloat-32 matmuls and convolutions, set (or unset) on CUDA here:
    it was run as plain fp32, silently."""
    caps = capabilities(choice.device)
    precision = auto_precision(caps) if config.precision == "auto" else config.precision
    dtype = precision_dtype(precision, caps)
    if choice.is_cuda:
        apply_backend_flags(cudnn_benchmark=torch.backends.cudnn.benchmark, tf32=precision == "tf32")  # as it was
    return dtype, precision


@dataclass(frozen=True)
class _Face:
    """The face input as its header or pixels say: its frame rate (a photo's is the caller's), the photo itself,
    and a video's frame count where its header states one."""

    fps: float
    photo: np.ndarray | None
    frames: int | None
    width: int
    height: int
    note: str | None = None  # a video of one frame, taken as a photo (one_frame_words)


def _checked_face(config: Any, settings: Settings, photo_fps: float = IMAGE_FPS) -> _Face:
    """A video is checked from its header here, before anything expensive, and read later (only the frames
    needed)."""
    if is_image(config.face):
        photo = load_image(config.face, max_side=settings.max_side)
        if config.box is not None:
            check_fixed_box(config.box, photo.shape[1], photo.shape[0])
        return _Face(photo_fps, photo, None, photo.shape[1], photo.shape[0])
    info = probe_video(config.face, settings.max_side, accepted=IMAGES_OR_VIDEOS)
    validate_video(info, Path(config.face).name, settings.max_side, settings.max_seconds)
    if config.box is not None:
        check_fixed_box(config.box, info.width, info.height)
    if info.frames == 1:
        with contextlib.closing(read_frames(config.face, max_seconds=settings.max_seconds)) as frames:
            photo = next(frames)
        note = one_frame_words(Path(config.face).name, photo_fps, info.fps)
        return _Face(photo_fps, photo, None, photo.shape[1], photo.shape[0], note)
    return _Face(info.fps, None, info.frames, info.width, info.height)


def check_avatar_memory(frames: int, width: int, height: int, settings: Settings) -> None:
    """Refuse an avatar whose frames would not fit in memory while it is prepared: it holds every frame it plays
    (as upstream's does), each twice while it is made (as read, then as one array), and a long high-resolution
    video would end the process out of memory after the networks were loaded. Checked from the header first, then
    while frames are read (a header may state no length)."""
    need = AVATAR_COPIES * frames * width * height * 3
    budget = AVATAR_MEMORY_SHARE * usable_host_memory(settings.job_memory_gb)
    if need > budget:
        raise LipSyncError(
            f"a MuseTalk avatar of {frames} frames of {width}x{height} needs about {need / 2**30:.2f} GiB of memory "
            f"while it is prepared (it keeps every frame it plays), more than the {budget / 2**30:.2f} GiB this "
            "machine can give it: use a shorter face video (an avatar loops it forward and back, so a few seconds "
            "do) or a smaller one"
        )


def _video_frames(config: Any, settings: Settings, count: int | None) -> list[np.ndarray]:
    """The video's first `count` frames (all with None): the rest would never be shown."""
    frames: list[np.ndarray] = []
    for frame in read_frames(config.face, max_seconds=settings.max_seconds):
        frames.append(frame)
        if len(frames) % MEMORY_CHECK_FRAMES == 0:  # a header that stated no length (or a wrong one)
            check_avatar_memory(len(frames), frame.shape[1], frame.shape[0], settings)
        if count is not None and len(frames) >= count:
            break
    return frames


def _detector(config: LipSyncConfig, settings: Settings, device: torch.device) -> FaceDetector | FixedBox:
    if config.box is not None:
        return FixedBox(config.box)
    checkpoint = resolve(S3FD, settings, config.detector_checkpoint) if config.detector == "s3fd" else None
    return make_detector(config.detector, device=device, checkpoint=checkpoint, detect_scale=config.detect_scale)


def landmark_files(files: MuseTalkFiles, person_boxes: bool, result: RunResult) -> tuple[Path, Path | None] | None:
    """DWPose's landmark model and, when person boxes are asked for and it is there, its detector; None (and a
    warning saying where the file goes) without the landmark model: the detector's boxes are used then."""
    pose = files.optional.get("dwpose")
    if pose is None:
        result.warn(
            f"for the face boxes upstream makes from DWPose's 68 face landmarks, put {POSE_FILE} "
            f"(huggingface.co/{DWPOSE_REPO}) in the MuseTalk weights folder's dwpose/"
        )
        return None
    detector = files.optional.get("dwpose_detector") if person_boxes else None
    if person_boxes and detector is None:
        result.warn(f"no {DETECTOR_FILE} beside {POSE_FILE}: DWPose sees the whole frame, as upstream")
    return pose, detector


def landmark_model(
    paths: tuple[Path, Path | None], device: torch.device, settings: Settings, result: RunResult
) -> DWPose:
    """DWPose's sessions on the job's device, kept between runs; their fall-back warnings go into `result`."""
    pose, detector = paths
    model, _ = LANDMARK_MODELS.get_or_build(
        (str(pose), str(detector), str(device)),
        lambda: DWPose(pose, detector, device=device, person_boxes=detector is not None,
                       gpu_memory_fraction=settings.gpu_memory_fraction),
    )  # fmt: skip
    for warning in model.warnings:
        result.warn(warning)
    return model


ALL_FRAMES = "all"  # in an avatar's key: it holds the whole video (or the photo), good for speech of any length


@dataclass
class _Loaded:
    """The networks on their device, and what an avatar's key needs of them."""

    files: MuseTalkFiles
    networks: Any
    key: tuple  # the weight files, the device and the dtype
    avatar_key: tuple  # the same with the device's kind, not its index: cuda:1 makes the avatar cuda:0 prepared
    cached: bool  # kept from an earlier run of this process
    device: torch.device
    batch: int
    step: StepRunner | None = None  # how the UNet and decoder run (None when preparing an avatar only)


def _load(config: Any, settings: Settings, choice: DeviceChoice, dtype: torch.dtype, result: RunResult,
          progress: Progress) -> _Loaded:  # fmt: skip
    weights = config.musetalk_weights
    files = require(settings, weights, config.musetalk_version, download=bool(weights and weights.startswith("hf:")))
    progress(0.02, "loading MuseTalk")
    device = choice.device
    # The files' stamps, not their names alone: weights replaced in place are other networks (and other avatars).
    stamps = tuple(sorted((name, file_stamp(path)) for name, path in files.paths.items()))
    key = (stamps, str(device), dtype)

    def build() -> Any:
        STEPS.clear()  # a step holds the networks it runs: the old set goes with it
        return load_networks(files, device, dtype)

    with result.stage("load"):
        networks, cached = NETWORKS.get_or_build(key, build)
    batch = config.batch_size or default_batch_size(device, dtype)  # after loading: what is left
    if config.batch_size and device.type != "cuda":
        _check_host_batch(batch, dtype, settings)
    runtime = getattr(config, "musetalk_runtime", None)  # an avatar's preparation runs no step
    step = None
    if runtime is not None:
        step, _ = STEPS.get_or_build((key, runtime, batch), lambda: make_step(
            networks, runtime, batch, cache_dir=settings.cache_dir, gpu_memory_fraction=settings.gpu_memory_fraction
        ))  # fmt: skip
    return _Loaded(files, networks, key, (stamps, device.type, dtype), cached, device, batch, step)


def _avatar(config: Any, settings: Settings, loaded: _Loaded, fps: float, photo: np.ndarray | None,
            wanted: int | str, result: RunResult, progress: Progress) -> tuple[PreparedAvatar, str]:  # fmt: skip
    """The avatar of `wanted` frames (ALL_FRAMES: the whole video) from memory, from disk, or prepared now; where
    it came from (MEMORY, DISK or PREPARED)."""
    device = loaded.device
    detection = (config.box,) if config.box is not None else (config.detector, config.detector_checkpoint,
                                                              config.detect_scale)  # fmt: skip
    # A fixed box is used as it is; otherwise DWPose's landmarks make the boxes where its file is there.
    landmark_paths = None if config.box is not None else landmark_files(loaded.files, config.musetalk_person_box,
                                                                        result)  # fmt: skip
    face = file_digest(config.face)
    marks = None if landmark_paths is None else tuple(p if p is None else file_stamp(p) for p in landmark_paths)

    mode = None if config.musetalk_parsing_mode == "auto" else config.musetalk_parsing_mode
    cheeks = tuple(int(w) for w in config.musetalk_cheek_widths)
    # upstream's options for the avatar, as they are used: a default written out, or cheek widths that only the jaw
    # mode reads, prepare the same avatar again
    margin, used_mode = version_defaults(loaded.networks.version, config.musetalk_extra_margin, mode)
    looks = (config.bbox_shift, margin, used_mode, cheeks if used_mode == "jaw" else None, float(config.musetalk_blur))

    def key(frames: int | str) -> tuple:
        return (AVATAR_OWNER.get(), face, frames, looks, detection, loaded.avatar_key, marks)

    def prepare() -> PreparedAvatar:
        with result.stage("decode"):
            frames = [photo] if photo is not None else _video_frames(config, settings, None if wanted == ALL_FRAMES
                                                                     else int(wanted))  # fmt: skip
        progress(0.05, "preparing the avatar")
        landmarks = None if landmark_paths is None else landmark_model(landmark_paths, device, settings, result)
        return prepare_avatar(
            frames, loaded.networks, detector=_detector(config, settings, device), landmarks=landmarks,
            bbox_shift=config.bbox_shift, extra_margin=config.musetalk_extra_margin, parsing_mode=mode,
            cheek_widths=cheeks, blur_fraction=config.musetalk_blur, batch_size=loaded.batch, fps=fps, result=result,
            progress=lambda fraction, label: progress(0.05 + 0.05 * fraction, label),
        )  # fmt: skip

    keys = [key(wanted)] if wanted == ALL_FRAMES else [key(wanted), key(ALL_FRAMES)]
    stored = AvatarStore(settings.data_dir / AVATAR_FOLDER)
    (avatar, source), in_memory = AVATARS.get_or_build(keys[0], lambda: stored.get_or_prepare(keys, prepare))
    return avatar, MEMORY if in_memory else source


def shift_metrics(avatar: PreparedAvatar) -> dict[str, Any]:
    """The bbox_shift used and the range upstream prints beside it (None without landmarks), for the result."""
    found = avatar.bbox_shift_range
    return {"bbox_shift": avatar.bbox_shift, "bbox_shift_range": None if found is None else list(found)}


def run_musetalk(
    config: LipSyncConfig, out: Path, settings: Settings, choice: DeviceChoice, progress: Progress
) -> RunResult:
    """Run MuseTalk for a checked `config` into `out` (.mp4) on `choice`'s device."""
    device = choice.device
    dtype, precision = _precision(config, choice)
    check_runtime(config.musetalk_runtime, device, dtype)  # before any work: cuda-graphs on a CPU, no TensorRT
    result = RunResult(device=str(device), device_name=capabilities(device).name, precision=precision,
                       config=config.to_text())  # fmt: skip
    if not choice.is_cuda:
        result.warn(f"running on the CPU: {choice.reason}; MuseTalk costs about 0.8 TFLOP a frame")
    ignored = [name for name in WAV2LIP_ONLY if getattr(config, name) != getattr(LipSyncConfig, name)]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        hint = "; MuseTalk's own is --musetalk-runtime compile" if "compile" in ignored else ""
        result.warn(f"MuseTalk does not use {flags} (Wav2Lip's options){hint}")
    if words := box_passed_over(config, DETECTION):
        result.warn(words)
    # the face first, from its header (a photo decoded within the limits): a bad face is refused before up to
    # max_seconds of speech is decoded, as Wav2Lip's pipeline does; its frame rate decides the frame count
    face = _checked_face(config, settings, config.fps)
    if words := face.note or (face.photo is None and fps_passed_over(config, face.fps)):
        result.warn(words)
    if config.box is not None and (words := clipped_box_warning(config.box, face.width, face.height)):
        result.warn(words)
    progress(0.0, "reading the speech")
    with result.stage("audio"):
        converted = librosa_via_ffmpeg(config.audio)  # upstream's librosa.load gets 16-bit PCM from audioread's ffmpeg
        speech = load_audio(config.audio, settings.max_seconds, resampler=SOXR_HQ, sixteen_bit=converted)
        sound = load_sound(config.audio, max_seconds=settings.max_seconds)  # the track's, at the file's own rate
    for words in (audio_streams_warning(config.audio), cut_short_warning(config.audio, len(speech) / SAMPLE_RATE)):
        if words is not None:
            result.warn(words)
    fps, photo, total = face.fps, face.photo, face.frames
    speech = check_speech(speech, fps)
    if (loud := loudness_warning(sound.samples, features_clipped=converted)) is not None:  # the track is clipped
        result.warn(loud)
    count = frame_count(len(speech), fps)
    if photo is None:
        check_avatar_memory(count if total is None else min(count, total), face.width, face.height, settings)
    loaded = _load(config, settings, choice, dtype, result, progress)
    # A video's avatar holds the frames this speech needs (a longer speech prepares more of them); one of the whole
    # video, as `avatarbench avatar` prepares, serves any speech: its first frames are the same.
    wanted = ALL_FRAMES if photo is not None or (total is not None and count >= total) else count
    extractor = feature_extractor(str(loaded.files["whisper_preprocessor"].parent))  # its file checked first
    avatar, source = _avatar(config, settings, loaded, fps, photo, wanted, result, progress)
    for warning in avatar.warnings:
        result.warn(warning)
    audio = audio_track(sound, count, fps)
    height, width = avatar.frames[0].shape[:2]
    # A network on the CPU needs both cores: the encoder then runs in its thread only, as Wav2Lip's does.
    writer = VideoWriter(out, fps, width, height, audio=audio, threads=None if choice.is_cuda else 1,
                         stream_to=stream_folder(out) if config.stream else None)  # fmt: skip
    encoder = EncoderThread(writer, result, name="musetalk-encode")
    started, done = time.perf_counter(), 0
    try:
        frames = generate(avatar, speech, fps, loaded.networks, loaded.batch, extractor=extractor, result=result,
                          runtime=loaded.step or config.musetalk_runtime)  # fmt: skip
        for frame in frames:
            encoder.put_frame(frame)
            done += 1
            if done % loaded.batch == 0 or done == count:
                progress(0.1 + 0.9 * done / count, f"frame {done}/{count}")
        encoder.finish()
    except BaseException:
        encoder.cancel()
        raise
    wall = time.perf_counter() - started
    missed = sum(avatar.plans[avatar.source_frame(i)] is None for i in range(count))
    result.outputs["video"] = str(out)
    result.metrics.update(
        engine="musetalk", engine_label=f"MuseTalk {config.musetalk_version} ({precision})", frames=count, fps=fps,
        faces_missed=missed, batch_size=loaded.batch, width=width, height=height,
        audio_seconds=len(speech) / SAMPLE_RATE, encoder=writer.codec, pipeline_seconds=wall,
        frames_per_second=count / wall if wall > 0 else None, detector=avatar.detector, landmarks=avatar.landmarks,
        boxes_from_landmarks=avatar.box_sources.count(LANDMARKS), networks_cached=loaded.cached,
        avatar_cached=source != PREPARED, avatar_source=source, **shift_metrics(avatar),
    )  # fmt: skip
    progress(1.0, "done")
    return result


def prepare_stored_avatar(
    config: Any, settings: Settings, device: str | None = None, progress: Progress | None = None
) -> RunResult:
    """`avatarbench avatar`: the whole face (a photo, or every frame of a video) prepared into a MuseTalk avatar and
    kept in DATA_DIR/avatars, where any later `lipsync --engine musetalk` of that face with the same options finds
    it, in this process or another, for speech of any length."""
    progress = progress or (lambda fraction, label: None)
    config = config.checked()
    choice = resolve_device(device or settings.device)
    dtype, precision = _precision(config, choice)
    result = RunResult(device=str(choice.device), device_name=capabilities(choice.device).name, precision=precision,
                       config=config.to_text())  # fmt: skip
    face = _checked_face(config, settings)
    fps, photo = face.fps, face.photo
    if face.note:
        result.warn(face.note)
    if face.frames is not None:
        check_avatar_memory(face.frames, face.width, face.height, settings)
    loaded = _load(config, settings, choice, dtype, result, progress)
    avatar, source = _avatar(config, settings, loaded, fps, photo, ALL_FRAMES, result, progress)
    for warning in avatar.warnings:
        result.warn(warning)
    result.metrics.update(
        engine="musetalk", frames=len(avatar.frames), faces=avatar.faces, fps=fps, avatar_source=source,
        detector=avatar.detector, landmarks=avatar.landmarks, boxes_from_landmarks=avatar.box_sources.count(LANDMARKS),
        **shift_metrics(avatar),
    )  # fmt: skip
    progress(1.0, "avatar ready")
    return result
