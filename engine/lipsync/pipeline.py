"""Lip-sync: a face (image or video) plus speech becomes an MP4 with the speech as its sound.

Stages, run per batch of frames and overlapped with threads: decode (a reader thread), detect,
inference, paste, encode (a writer thread); audio and mel run once up front. Memory stays
bounded by a few batches, whatever the video's length.

Length policy: the output lasts as long as the speech (one frame per mel chunk, as upstream: the frames may end
up to about 0.2 s before the speech, whose whole sound track is kept, the last frame held). A video longer
than the speech is trimmed to it; a shorter one is looped from its first frame. An image is a
still face for the whole speech, at --fps (25) frames per second, and so is a video's first frame with --static (at
the video's rate). A video's frames are edited first as upstream's --resize_factor, --rotate and --crop ask
(video_edits.py).

A long job may be split into time segments over idle GPUs (engine/jobs/split.py): `LipSyncSegments` is that run's
side, with the same batches, face boxes and generator state at each segment's start as the unsplit run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.audio import (
    SAMPLE_RATE,
    Sound,
    audio_streams_warning,
    audio_track,
    cut_short_warning,
    frame_energy,
    load_audio,
    load_sound,
    loudness_warning,
    mel_chunks,
    mel_spectrogram,
    wav2lip_converts,
)
from engine.core.device import (
    DeviceChoice,
    auto_precision,
    batch_within,
    capabilities,
    not_finite_hint,
    resolve_device,
    run_with_oom_backoff,
    usable_host_memory,
)
from engine.core.hls import stream_folder
from engine.core.hub import where_to_put
from engine.core.media import (
    IMAGES_OR_VIDEOS,
    Decoding,
    LosslessWriter,
    VideoWriter,
    is_image,
    load_image,
    probe_video,
    read_frames,
    validate_video,
)
from engine.core.results import RunResult
from engine.core.settings import Settings, get_settings
from engine.core.weights import S3FD, WAV2LIP, WeightsError, resolve
from engine.core.words import counted, listed
from engine.faces.detection import FaceDetector, make_detector, missed_face_hint
from engine.faces.tracking import (
    THUMB_SIDE,
    FaceTracker,
    SceneCuts,
    check_fixed_box,
    clipped_box_warning,
    is_cut,
)
from engine.lipsync.config import (
    LipSyncConfig,
    LipSyncError,
    box_passed_over,
    fps_passed_over,
    one_frame_words,
    precision_summary,
)
from engine.lipsync.encoding import EncoderThread
from engine.lipsync.engines import (
    CPU_BATCH_SIZE,
    BaselineEngine,
    Generator,
    Wav2LipEngine,
    auto_batch_size,
    cpu_sample_bytes,
)
from engine.lipsync.paste import Box, crop, first_row_read, paste
from engine.lipsync.video_edits import VideoEdits

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


def _background(items: Iterator, depth: int, name: str) -> Iterator:
    """Run an iterator in a thread, `depth` items ahead; its exceptions surface in the caller."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:
            q.put(exc)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _frames(
    config: LipSyncConfig,
    image: np.ndarray | None,
    count: int,
    max_seconds: float,
    threads: int | None,
    decoding: Decoding,
) -> Iterator[np.ndarray]:
    """`count` frames of the face input: the still image repeated, or the video trimmed or looped. Each pass over
    the video stops at the length limit, which its header may not state (read_frames counts); a video without
    a decodable frame is refused there too, so looping always advances."""
    if image is not None:
        for _ in range(count):
            yield image
        return
    produced, edit = 0, VideoEdits.of(config)
    while produced < count:
        for frame in read_frames(config.face, max_seconds=max_seconds, threads=threads, decoding=decoding):
            yield edit(frame)
            produced += 1
            if produced == count:
                return


def _make_generator(config: LipSyncConfig, settings: Settings, device, caps, precision: str) -> Generator:
    checkpoint = resolve(WAV2LIP, settings, config.checkpoint) if config.engine != "baseline" else None
    if checkpoint is not None:
        return Wav2LipEngine(
            checkpoint, device, caps, precision, compile=config.compile, check_precision=config.check_precision
        )
    if config.engine == "wav2lip":
        raise WeightsError("the wav2lip engine needs a checkpoint. " + where_to_put(WAV2LIP, settings))
    return BaselineEngine(device)


@dataclass
class _Prepared:
    """What a run decides before its first frame; a split run's segments decide the same (the batch size the
    parent chose), so their batches, crops and speech features are the unsplit run's."""

    config: LipSyncConfig
    settings: Settings
    result: RunResult
    choice: DeviceChoice
    still: bool
    image: np.ndarray | None
    fps: float
    size: tuple[int, int]  # width, height
    wav: np.ndarray  # 16 kHz mono: the features'
    speech: Sound  # the sound track's, at the file's own rate and channels
    chunks: np.ndarray
    generator: Generator
    energy: np.ndarray
    detector: FaceDetector | None
    batch_size: int
    codec_threads: int | None
    decoding: Decoding  # NVDEC on a GPU where it can (engine/core/media.py), and where the frames were decoded

    @property
    def count(self) -> int:
        return len(self.chunks)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """The face input's frames start..stop-1 of the whole run (decoded from the start: a looped clip's frame
        is known by counting)."""
        frames = _frames(
            self.config, self.image, self.count, self.settings.max_seconds, self.codec_threads, self.decoding
        )
        return itertools.islice(frames, start, stop)

    def sound(self) -> Sound:
        return audio_track(self.speech, self.count, self.fps)

    def tracker(self) -> FaceTracker:
        return FaceTracker(pads=self.config.pads, smooth=self.config.smooth, fixed_box=self.config.box)

    def report(self, frames: int, missed: int, writer: Any, wall: float) -> None:
        self.result.metrics.update(
            engine=self.generator.name,
            engine_label=self.generator.label,
            frames=frames,
            fps=self.fps,
            faces_missed=missed,
            batch_size=self.batch_size,
            width=self.size[0],
            height=self.size[1],
            audio_seconds=len(self.wav) / SAMPLE_RATE,
            encoder=writer.codec,
            pipeline_seconds=wall,
            frames_per_second=frames / wall if wall > 0 else None,
            detector=self.detector.name if self.detector else "fixed box",
        )
        if self.decoding.ran_on is not None:  # a video was decoded
            self.result.metrics["decoded_on"] = self.decoding.ran_on
            if self.decoding.reason:
                self.result.metrics["nvdec_unused"] = self.decoding.reason
        winograd = getattr(self.generator, "winograd_layers", 0)
        if winograd:
            self.result.metrics["winograd_layers"] = winograd  # the 3x3 units computed by a Winograd transform
            self.result.metrics["winograd_method"] = self.generator.winograd_method  # nnpack or f4 (engines.py)
        check = getattr(self.generator, "precision_check", None)
        if check is not None:
            self.result.metrics["precision_check"] = check
            if check["max_grey_levels"] is None or check["max_grey_levels"] > 1.0:
                self.result.warn(precision_summary(self.result.precision, check))


def _no_face(config: LipSyncConfig, tracker: FaceTracker, count: int, still: bool) -> LipSyncError:
    name = Path(config.face).name
    if tracker.padded_away:
        pads = ",".join(str(p) for p in config.pads)
        return LipSyncError(
            f"a face was found in {name}, but --pads {pads} (TOP,BOTTOM,LEFT,RIGHT; negative ones take pixels off) "
            "leave nothing of its box: use smaller negative pads"
        )
    hint = missed_face_hint(config.detect_scale)
    if still:
        return LipSyncError(f"no face found in {name}; use a clear, frontal face photo, or {hint}")
    # `count` is the run's frames, not the video's: a short clip is looped to the speech's length, a long one cut;
    # the detector saw the frames as the video edits left them (a face shrunk or cropped away)
    edits = VideoEdits.of(config).flags
    edited = f" as {listed(edits)} left it" if edits else ""
    return LipSyncError(
        f"no face found in {name}{edited}: none in the {counted(count, 'frame')} taken from it for the speech (the "
        f"video looped, or cut, to the speech's length); {hint}"
    )


# What a fixed --box makes no use of (field -> its flag).
DETECTION = {"pads": "--pads", "smooth": "--no-smooth", "detector": "--detector", "detect_scale": "--detect-scale",
             "detector_checkpoint": "--detector-checkpoint"}  # fmt: skip
# Options only another engine reads: Wav2Lip's network (the baseline has none) and MuseTalk's.
_NETWORK_ONLY = ("checkpoint", "compile", "check_precision")
_MUSETALK_ONLY = (
    "musetalk_weights",
    "musetalk_version",
    "bbox_shift",
    "musetalk_extra_margin",
    "musetalk_parsing_mode",
    "musetalk_cheek_widths",
    "musetalk_blur",
    "musetalk_person_box",
    "musetalk_runtime",
)


def unused_options(config: LipSyncConfig, engine: str) -> list[str]:
    """The flags set away from their defaults that `engine` (wav2lip or baseline) does not read."""
    names = (*_NETWORK_ONLY, *_MUSETALK_ONLY) if engine == "baseline" else _MUSETALK_ONLY
    return ["--" + n.replace("_", "-") for n in names if getattr(config, n) != getattr(LipSyncConfig, n)]


def _prepare(
    config: LipSyncConfig,
    settings: Settings,
    choice: DeviceChoice,
    progress: Progress,
    batch_size: int | None = None,
) -> _Prepared:
    """Checks, speech, generator, detector and batch size: everything before the frames."""
    device, caps = choice.device, capabilities(choice.device)
    precision = auto_precision(caps) if config.precision == "auto" else config.precision
    result = RunResult(device=str(device), device_name=caps.name, precision=precision, config=config.to_text())
    if not choice.is_cuda:
        result.warn(f"running on the CPU: {choice.reason}")
    if config.check_precision and precision not in ("fp16", "bf16") and config.engine != "baseline":
        result.warn(f"--check-precision compares fp16 or bf16 with fp32; this run is {precision}: nothing to compare")
    if words := box_passed_over(config, DETECTION):
        result.warn(words)

    # The face first: its checks read headers (an image is decoded only within the limits), so a bad face is
    # refused before up to max_seconds of speech is decoded.
    still = is_image(config.face)
    image = load_image(config.face, max_side=settings.max_side) if still else None
    if image is not None:
        fps, size = config.fps, (image.shape[1], image.shape[0])
        if edits := VideoEdits.of(config).flags:
            result.warn(f"{', '.join(edits)} {'edits' if len(edits) == 1 else 'edit'} a video's frames (as "
                        "upstream's): a photo is kept as it is")  # fmt: skip
        if config.static:
            result.warn("--static holds a video's first frame: a photo is held still already")
    else:
        info = probe_video(config.face, settings.max_side, accepted=IMAGES_OR_VIDEOS)
        validate_video(info, Path(config.face).name, settings.max_side, settings.max_seconds)
        edit = VideoEdits.of(config)
        one_frame = info.frames == 1  # a one-frame GIF: a still face (one_frame_words)
        fps, size = (config.fps if one_frame else info.fps), edit.size(info.width, info.height)
        if one_frame:
            result.warn(one_frame_words(Path(config.face).name, fps, info.fps))
        elif words := fps_passed_over(config, fps):
            result.warn(words)
        if config.static or one_frame:  # upstream's --static: the first frame only, a still face at the video's rate
            with contextlib.closing(read_frames(config.face, max_seconds=settings.max_seconds)) as frames:
                image, still = edit(next(frames)), True
    if config.box is not None:
        check_fixed_box(config.box, *size)
        if words := clipped_box_warning(config.box, *size):
            result.warn(words)
    progress(0.0, "reading the speech")
    with result.stage("audio"):
        converted = wav2lip_converts(config.audio)  # as upstream's ffmpeg step: 16-bit PCM, clipped at full scale
        wav = load_audio(config.audio, max_seconds=settings.max_seconds, sixteen_bit=converted)
        speech = load_sound(config.audio, max_seconds=settings.max_seconds)
    with result.stage("mel"):
        chunks = mel_chunks(mel_spectrogram(wav), fps, config.audio_offset)
    count = len(chunks)
    cut = cut_short_warning(config.audio, len(wav) / SAMPLE_RATE)
    loud = loudness_warning(speech.samples, features_clipped=converted)  # the track's peak: it is what is clipped
    for words in (audio_streams_warning(config.audio), cut, loud):
        if words is not None:
            result.warn(words)
    if float(np.abs(wav).max()) < 1e-4:
        result.warn("the speech is silent: the mouth will not move")

    generator = _make_generator(config, settings, device, caps, precision)
    # Only the baseline reads speech energy; Wav2Lip works from the mel chunks.
    energy = (
        frame_energy(wav, fps, count, offset_frames=config.audio_offset)
        if generator.name == "baseline"
        else np.zeros(count, np.float32)
    )
    if generator.name == "baseline":
        if config.engine == "auto":
            result.warn(
                "no Wav2Lip checkpoint configured: using the baseline engine (not Wav2Lip). "
                + where_to_put(WAV2LIP, settings)
            )
        if config.precision not in ("auto", "fp32"):
            result.warn(f"the baseline engine computes in fp32; --precision {config.precision} applies to Wav2Lip")
        result.precision = "fp32"
    if unused := unused_options(config, generator.name):
        result.warn(f"the {generator.name} engine does not use {', '.join(unused)} (other engines' options)")
    detector = None  # a fixed box needs no detection at all
    if config.box is None:
        ckpt = resolve(S3FD, settings, config.detector_checkpoint) if config.detector == "s3fd" else None
        detector = make_detector(config.detector, device=device, checkpoint=ckpt, detect_scale=config.detect_scale)
    if batch_size is None:
        batch_size = config.batch_size or auto_batch_size(device, precision, size)
        if generator.name == "baseline" and batch_size > BASELINE_MAX_BATCH:
            if config.batch_size:  # asked for: said, not silently cut
                result.warn(f"the baseline engine runs at most {BASELINE_MAX_BATCH} frames a batch: batch size "
                            f"{batch_size} runs as {BASELINE_MAX_BATCH}")  # fmt: skip
            batch_size = BASELINE_MAX_BATCH
        if config.batch_size and not choice.is_cuda:  # a GPU's batch is halved on OOM; the host's is killed first
            _check_host_batch(batch_size, size, generator.name, settings)
    # A network on the CPU needs both cores: the decoder and the encoder then run in their own threads only,
    # not in FFmpeg's thread pools (with OpenMP sleeping at its barriers, engine/core/openmp.py, 7-9% sooner).
    codec_threads = None if choice.is_cuda else 1
    decoding = Decoding(cuda_device=device.index or 0 if choice.is_cuda else None)
    return _Prepared(
        config, settings, result, choice, still, image, fps, size, wav, speech, chunks, generator, energy, detector,
        batch_size, codec_threads, decoding,
    )  # fmt: skip


def _check_host_batch(batch: int, size: tuple[int, int], engine: str, settings: Settings) -> None:
    """A CPU batch that cannot fit in the memory left for the job is refused with one that does, before any frame
    (batch 1024 took 9.6 GB, and the out-of-memory killer ends the process; a worker past its
    AVATARBENCH_JOB_MEMORY_GB is stopped)."""
    per_sample = cpu_sample_bytes(size, engine != "baseline")
    budget = usable_host_memory(settings.job_memory_gb)
    if batch > 1 and batch * per_sample > budget:
        raise LipSyncError(
            f"batch size {batch} needs about {batch * per_sample / 2**30:.1f} GiB of memory on the CPU "
            f"({per_sample / 2**20:.0f} MiB a frame: the {engine} engine on {size[0]}x{size[1]} frames) and "
            f"{budget / 2**30:.1f} GiB is free for this job: use a batch size of at most "
            f"{batch_within(0.75 * budget, per_sample)} (a quarter left for the rest), or leave it to the default "
            f"({CPU_BATCH_SIZE} or fewer on a CPU: larger batches are no faster there)"
        )


BASELINE_MAX_BATCH = 64  # the baseline's frames are cheap: larger batches only hold more memory


def run_lipsync(
    config: LipSyncConfig,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
    device: str | None = None,
) -> RunResult:
    """Run the whole pipeline into `out` (.mp4) on `device` (default: the settings' device); returns the result with
    the output path, counts and stage timings."""
    settings = settings or get_settings()
    progress = progress or (lambda fraction, label: None)
    config = config.checked()
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise LipSyncError(f"output {out.name or '(no name)'} must be a file name ending in .mp4")
    choice = resolve_device(device or settings.device)
    if config.engine == "musetalk":
        from engine.lipsync.musetalk.run import run_musetalk  # diffusers and transformers load only for MuseTalk

        return run_musetalk(config, out, settings, choice, progress)
    run = _prepare(config, settings, choice, progress)
    result, count, still = run.result, run.count, run.still
    tracker = run.tracker()
    live = stream_folder(out) if config.stream else None
    writer = VideoWriter(out, run.fps, run.size[0], run.size[1], audio=run.sound(), threads=run.codec_threads,
                         stream_to=live)  # fmt: skip
    encoder = EncoderThread(writer, result)
    batches = _detected(_batched(run.frames(), run.batch_size, result), run.detector, still, result)
    cuts = SceneCuts()
    done = 0
    started = time.perf_counter()
    try:
        # Decoding and detection run ahead in one thread (one batch queued), encoding behind in another, while
        # this thread tracks, generates and pastes: the stages overlap.
        for frames, detections in _background(batches, 1, "decode-detect"):
            shots = [not still and cuts(f) for f in frames]  # a still image has one shot
            tracks = [tracker.update(d, f.shape, c) for d, f, c in zip(detections, frames, shots, strict=True)]
            if still and all(t.box is None for t in tracks):
                raise _no_face(config, tracker, count, still)
            encoder.put(_synthesised(run, frames, [t.box for t in tracks], done))
            done += len(frames)
            progress(done / count, f"frame {done}/{count}")
        if tracker.missed == count:  # before the writer closes: a file already at `out` stays as it was
            raise _no_face(config, tracker, count, still)
        encoder.finish()
    except BaseException:
        encoder.cancel()
        raise
    wall = time.perf_counter() - started
    if tracker.missed:
        result.warn(f"{tracker.missed} of {count} frames had no detected face")
    result.outputs["video"] = str(out)
    run.report(count, tracker.missed, writer, wall)
    progress(1.0, "done")
    return result


def _synthesised(run: _Prepared, frames: list[np.ndarray], boxes: list[Box | None], first: int) -> list[np.ndarray]:
    """One batch's output frames: the generated mouths pasted where there is a face box (frame `first` onwards)."""
    result, generator = run.result, run.generator
    with_face = [i for i, box in enumerate(boxes) if box is not None]
    # Decoded frames are fresh arrays and are pasted into in place; the still image is shared.
    outputs = [frame.copy() for frame in frames] if run.still else frames
    if with_face:
        crops = np.stack([crop(frames[i], boxes[i], generator.crop_size) for i in with_face])
        index = np.array([first + i for i in with_face])
        # The paste reads only the lower rows of each crop (the blend mask's): the generator may skip the rest.
        top = min(first_row_read(boxes[i], generator.crop_size, run.config.paste) for i in with_face)
        with result.stage("inference", items=len(with_face)):
            generated, used = run_with_oom_backoff(
                lambda b, c=crops, k=index: _generate(generator, run.chunks[k], c, run.energy[k], b, top), len(crops)
            )
        if used < len(crops):
            result.warn(f"out of {'GPU' if run.choice.is_cuda else 'host'} memory at batch {len(crops)}: ran at {used}")
        # fp16 can overflow to inf/NaN, which would paste as black or random pixels: such a frame keeps its own.
        finite = np.isfinite(generated.reshape(len(generated), -1)).all(axis=1)
        if not finite.all():
            result.warn(
                f"{generator.label} gave NaN or infinite values for some frames; they keep their original pixels "
                f"({not_finite_hint(generator.dtype)})"
            )
        with result.stage("paste", items=len(with_face)):
            for j, i in enumerate(with_face):
                if finite[j]:
                    paste(outputs[i], boxes[i], generated[j], run.config.paste)
    return outputs


class LipSyncSegments:
    """A lip-sync job split into time segments (engine/jobs/split.py), equal frame for frame to the unsplit run.

    Segments measure their frames' face detections (batch by batch, the unsplit run's batches) and scene cuts (their
    first and last frames' thumbnails let the parent compare across segments); the parent runs the
    face tracker over all of them in order (its smoothing, padding and gap hold-over are causal, so only this pass
    knows each frame's box); each segment pastes with its boxes, first showing a causal generator (the baseline's
    lip-line steadiness) the face frames it saw before the segment. A still face or a fixed box needs no measuring.
    MuseTalk is not split (its prepared avatar cycles over the whole clip)."""

    def __init__(self, config: LipSyncConfig, settings: Settings, device: str | None = None) -> None:
        self.config, self.settings = config.checked(), settings
        self.choice = resolve_device(device or settings.device)
        self.run: _Prepared | None = None
        self.missed: int | None = None  # the whole run's frames without a detected face (the parent's plan)
        self.segment_missed = 0

    def _ready(self) -> _Prepared:
        assert self.run is not None, "setup or join first"
        return self.run

    def _measures(self) -> bool:
        return not self._ready().still and self.config.box is None

    def setup(self, progress: Progress) -> dict[str, Any]:
        run = self.run = _prepare(self.config, self.settings, self.choice, progress)
        return {"frames": run.count, "align": run.batch_size, "batch_size": run.batch_size, "measure": self._measures()}

    def join(self, setup: dict[str, Any], progress: Progress) -> None:
        run = self.run = _prepare(self.config, self.settings, self.choice, progress, batch_size=setup["batch_size"])
        if run.count != setup["frames"]:
            raise LipSyncError(f"this segment reads {run.count} frames of speech where its job read {setup['frames']}")

    def measure(self, start: int, stop: int | None, progress: Progress) -> dict[str, np.ndarray]:
        """The face detections of frames start..stop-1, in the unsplit run's batches."""
        run = self._ready()
        stop = run.count if stop is None else stop
        found: list[np.ndarray] = []
        cuts, shots = SceneCuts(), []
        batches = _detected(
            _batched(run.frames(start, stop), run.batch_size, run.result), run.detector, False, run.result
        )
        for frames, detections in _background(batches, 1, "decode-detect"):
            found += [np.asarray(d, np.float32).reshape(-1, 5) for d in detections]
            shots += [cuts(f) for f in frames]
            progress(len(found) / max(1, stop - start), f"faces in frame {start + len(found)}/{stop}")
        edges = [cuts.first, cuts.last] if cuts.first is not None else []  # the plan compares them across segments
        return {
            "detections": np.concatenate(found or [np.zeros((0, 5), np.float32)]),
            "counts": _counts(found),
            "cuts": np.array(shots, bool),
            "edges": np.array(edges, np.float32).reshape(-1, THUMB_SIDE, THUMB_SIDE),
        }

    def plan(
        self, ranges: list[tuple[int, int | None]], measured: list[dict[str, np.ndarray] | None], progress: Progress
    ) -> tuple[list[tuple[int, int]], list[dict[str, np.ndarray]]]:
        """Every frame's box from the tracker over the whole run, cut into segments (each with its context)."""
        run = self._ready()
        tracker, count, shape = run.tracker(), run.count, (run.size[1], run.size[0], 3)
        cuts: Iterator[bool] = itertools.repeat(False, count)
        if self.config.box is not None:
            detections: Iterator[np.ndarray] = itertools.repeat(np.zeros((0, 5), np.float32), count)
        elif run.still:
            assert run.image is not None and run.detector is not None
            with run.result.stage("detect", items=1):
                detections = itertools.repeat(run.detector.detect([run.image])[0], count)
        else:
            detections, cuts = _split_detections(measured), _split_cuts(measured)
        boxes, detected = np.full((count, 4), -1, np.int32), np.zeros(count, bool)
        with run.result.stage("track", items=count):
            for i, found, cut in zip(range(count), detections, cuts, strict=False):
                track = tracker.update(found, shape, cut)
                detected[i] = track.detected
                if track.box is not None:
                    boxes[i] = track.box
        if (run.still and boxes[0, 0] < 0) or tracker.missed == count:
            raise _no_face(self.config, tracker, count, run.still)
        if tracker.missed:
            run.result.warn(f"{tracker.missed} of {count} frames had no detected face")
        self.missed = tracker.missed
        final = [(start, count if stop is None else stop) for start, stop in ranges]
        context, with_face = run.generator.context_frames, np.flatnonzero(boxes[:, 0] >= 0)
        states = []
        for start, stop in final:
            before = with_face[with_face < start][-context:] if context else with_face[:0]
            first = int(before[0]) if len(before) else start
            missed = np.array(int((~detected[start:stop]).sum()))
            states.append({"first": np.array(first), "boxes": boxes[first:stop], "missed": missed})
        progress(1.0, "face boxes planned")
        return final, states

    def output_writer(self, out: Path) -> VideoWriter:
        run = self._ready()
        return VideoWriter(out, run.fps, run.size[0], run.size[1], audio=run.sound(), threads=run.codec_threads)

    def segment_writer(self, path: Path) -> LosslessWriter:
        run = self._ready()
        return LosslessWriter(path, run.fps, run.size[0], run.size[1], threads=run.codec_threads)

    def render(self, start: int, stop: int, state: dict[str, np.ndarray], writer: Any, progress: Progress) -> None:
        """Frames start..stop-1 with the planned boxes, after showing the generator its context frames."""
        run = self._ready()
        first, planned = int(state["first"]), state["boxes"]
        self.segment_missed = int(state["missed"])
        boxes = [tuple(int(v) for v in b) if b[0] >= 0 else None for b in planned]
        frames = run.frames(first, stop)
        crops, index = [], []
        for i, frame in zip(range(first, start), frames, strict=False):  # zip stops before taking frame `start`
            if (box := boxes[i - first]) is not None:
                crops.append(crop(frame, box, run.generator.crop_size))
                index.append(i)
        if crops:  # what the generator saw before this segment: its output is not kept
            with run.result.stage("context", items=len(crops)):
                run.generator(run.chunks[index], np.stack(crops), run.energy[index])
        encoder = EncoderThread(writer, run.result, close=False)
        done = start
        try:
            for batch in _background(_batched(frames, run.batch_size, run.result), 1, "decode"):
                encoder.put(_synthesised(run, batch, boxes[done - first : done - first + len(batch)], done))
                done += len(batch)
                progress((done - start) / max(1, stop - start), f"frame {done}/{stop}")
            encoder.finish()
        except BaseException:
            encoder.cancel()
            raise

    def report(self, frames: int, seconds: float, writer: Any) -> RunResult:
        run = self._ready()
        run.report(frames, self.segment_missed if self.missed is None else self.missed, writer, seconds)
        return run.result


def _counts(found: list[np.ndarray]) -> np.ndarray:
    return np.array([len(d) for d in found], np.int64)


def _split_detections(measured: list[dict[str, np.ndarray] | None]) -> Iterator[np.ndarray]:
    """Each frame's detections, in order, from the segments' measurements."""
    for part in measured:
        assert part is not None, "every segment measures its frames' faces"
        rows = np.cumsum(np.concatenate([[0], part["counts"]]))
        for a, b in itertools.pairwise(rows):
            yield part["detections"][a:b]


def _split_cuts(measured: list[dict[str, np.ndarray] | None]) -> Iterator[bool]:
    """Whether each frame starts a new shot, in order, from the segments' measurements: a segment's first frame
    against the one before it, which the segment before measured last (as the unsplit run compares them)."""
    before = None
    for part in measured:
        assert part is not None, "every segment measures its frames' faces"
        cuts, edges = part["cuts"].astype(bool), part["edges"]
        if len(edges):
            yield is_cut(before, edges[0])
            yield from (bool(c) for c in cuts[1:])
            before = edges[1]


def _generate(
    generator: Generator, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray, batch: int, first_row: int
) -> np.ndarray:
    parts = [
        generator(mels[i : i + batch], crops[i : i + batch], energy[i : i + batch], first_row)
        for i in range(0, len(crops), batch)
    ]
    return np.concatenate(parts)


def _detected(
    batches: Iterator[list[np.ndarray]], detector: FaceDetector | None, still: bool, result: RunResult
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Attach detections to each batch (none for a fixed box; once for a still image)."""
    still_detections = None
    for frames in batches:
        with result.stage("detect", items=len(frames)):
            if detector is None:
                detections = [np.zeros((0, 5), np.float32)] * len(frames)
            elif still:
                still_detections = still_detections or detector.detect(frames[:1])
                detections = still_detections * len(frames)
            else:
                detections = detector.detect(frames)
        yield frames, detections


def _batched(frames: Iterator[np.ndarray], size: int, result: RunResult) -> Iterator[list[np.ndarray]]:
    """Group frames into batches, timing the decoding (it runs in the reader thread)."""
    while True:
        with result.stage("decode") as stage:
            batch = [frame for _, frame in zip(range(size), frames, strict=False)]
            stage.items = len(batch)
        if not batch:
            return
        yield batch
