"""Lip-sync: a face (image or video) plus speech becomes an MP4 with the speech as its sound.

Stages, run per batch of frames and overlapped with threads: decode (a reader thread), detect,
inference, paste, encode (a writer thread); audio and mel run once up front. Memory stays
bounded by a few batches, whatever the video's length.

Length policy: the output lasts as long as the speech (one frame per mel chunk). A video longer
than the speech is trimmed to it; a shorter one is looped from its first frame. An image is a
still face for the whole speech, at 25 frames per second.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from engine.core.audio import SAMPLE_RATE, frame_energy, load_audio, mel_chunks, mel_spectrogram
from engine.core.device import capabilities, resolve_device, run_with_oom_backoff
from engine.core.media import VideoWriter, is_image, load_image, probe_video, read_frames, validate_video
from engine.core.results import RunResult
from engine.core.settings import Settings, get_settings
from engine.core.weights import S3FD, WAV2LIP, resolve, where_to_put
from engine.faces.detection import FaceDetector, make_detector
from engine.faces.tracking import FaceTracker
from engine.lipsync.config import LipSyncConfig, LipSyncError
from engine.lipsync.engines import BaselineEngine, Generator, Wav2LipEngine, auto_batch_size, default_precision
from engine.lipsync.paste import crop, paste

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
IMAGE_FPS = 25.0


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


class _Encoder:
    """The writer thread: frames go in batches through a queue one batch deep, errors come back on close.

    One batch, like the reader's: every batch waiting is a batch of full frames in memory, and one is enough to
    keep the threads overlapped."""

    def __init__(self, writer: VideoWriter, result: RunResult):
        self.writer, self.result = writer, result
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lipsync-encode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                with self.result.stage("encode", items=len(batch)):
                    for frame in batch:
                        self.writer.write(frame)
            except BaseException as exc:
                self.error = exc

    def put(self, frames: list[np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(frames)

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        with self.result.stage("encode"):
            self.writer.close()

    def cancel(self) -> None:
        """Stop after the batch in hand and delete the partial file."""
        self.error = self.error or RuntimeError("cancelled")
        if self.thread.is_alive():
            self.queue.put(None)  # the worker drains the queue once an error is set
            self.thread.join()
        self.writer.abort()


def _frames(
    config: LipSyncConfig, image: np.ndarray | None, count: int, max_seconds: float, threads: int | None
) -> Iterator[np.ndarray]:
    """`count` frames of the face input: the still image repeated, or the video trimmed or looped. Each pass over
    the video stops at the length limit, which its header may not state (read_frames counts); a video without
    a decodable frame is refused there too, so looping always advances."""
    if image is not None:
        for _ in range(count):
            yield image
        return
    produced = 0
    while produced < count:
        for frame in read_frames(config.face, max_seconds=max_seconds, threads=threads):
            yield frame
            produced += 1
            if produced == count:
                return


def _make_generator(config: LipSyncConfig, settings: Settings, device, caps, precision: str) -> Generator:
    checkpoint = resolve(WAV2LIP, settings, config.checkpoint) if config.engine != "baseline" else None
    if checkpoint is not None:
        return Wav2LipEngine(checkpoint, device, caps, precision, compile=config.compile)
    if config.engine == "wav2lip":
        raise LipSyncError("the wav2lip engine needs a checkpoint. " + where_to_put(WAV2LIP, settings))
    return BaselineEngine(device)


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
        raise LipSyncError(f"output {out.name} must be an .mp4 file")
    choice = resolve_device(device or settings.device)
    if config.engine == "musetalk":
        from engine.lipsync.musetalk.run import run_musetalk  # diffusers and transformers load only for MuseTalk

        return run_musetalk(config, out, settings, choice, progress)
    device, caps = choice.device, capabilities(choice.device)
    precision = default_precision(device) if config.precision == "auto" else config.precision
    result = RunResult(device=str(device), device_name=caps.name, precision=precision, config=config.to_text())
    if not choice.is_cuda:
        result.warn(f"running on the CPU: {choice.reason}")

    # The face first: its checks read headers (an image is decoded only within the limits), so a bad face is
    # refused before up to max_seconds of speech is decoded.
    still = is_image(config.face)
    image = load_image(config.face, max_side=settings.max_side) if still else None
    if image is not None:
        fps, size = IMAGE_FPS, (image.shape[1], image.shape[0])
    else:
        info = probe_video(config.face)
        validate_video(info, Path(config.face).name, settings.max_side, settings.max_seconds)
        fps, size = info.fps, (info.width, info.height)
    progress(0.0, "reading the speech")
    with result.stage("audio"):
        wav = load_audio(config.audio, max_seconds=settings.max_seconds)
    with result.stage("mel"):
        chunks = mel_chunks(mel_spectrogram(wav), fps, config.audio_offset)
    count = len(chunks)
    if float(np.abs(wav).max()) < 1e-4:
        result.warn("the speech is silent: the mouth will not move")

    generator = _make_generator(config, settings, device, caps, precision)
    # Only the baseline reads speech energy; Wav2Lip works from the mel chunks.
    energy = frame_energy(wav, fps, count) if generator.name == "baseline" else np.zeros(count, np.float32)
    if generator.name == "baseline":
        result.warn(
            "no Wav2Lip checkpoint configured: using the baseline engine (not Wav2Lip). "
            + where_to_put(WAV2LIP, settings)
        )
    detector = None  # a fixed box needs no detection at all
    if config.box is None:
        ckpt = resolve(S3FD, settings, config.detector_checkpoint) if config.detector == "s3fd" else None
        detector = make_detector(config.detector, device=device, checkpoint=ckpt, detect_scale=config.detect_scale)
    tracker = FaceTracker(pads=config.pads, smooth=config.smooth, fixed_box=config.box)
    batch_size = config.batch_size or auto_batch_size(device, precision, size)
    if generator.name == "baseline":
        batch_size = min(batch_size, 64)
    # The audio track runs exactly as long as the frames.
    audio = np.zeros(round(count / fps * SAMPLE_RATE), np.float32)
    audio[: min(len(wav), len(audio))] = wav[: len(audio)]
    out.parent.mkdir(parents=True, exist_ok=True)
    # A network on the CPU needs both cores: the decoder and the encoder then run in their own threads only,
    # not in FFmpeg's thread pools (with OpenMP sleeping at its barriers, engine/core/openmp.py, 7-9% sooner).
    codec_threads = None if choice.is_cuda else 1
    writer = VideoWriter(out, fps, size[0], size[1], audio=audio, threads=codec_threads)
    encoder = _Encoder(writer, result)
    face_frames = _frames(config, image, count, settings.max_seconds, codec_threads)
    batches = _detected(_batched(face_frames, batch_size, result), detector, still, result)
    done = 0
    started = time.perf_counter()
    try:
        # Decoding and detection run ahead in one thread (one batch queued), encoding behind in another, while
        # this thread tracks, generates and pastes: the stages overlap.
        for frames, detections in _background(batches, 1, "decode-detect"):
            tracks = [tracker.update(d, f.shape) for d, f in zip(detections, frames, strict=True)]
            with_face = [i for i, t in enumerate(tracks) if t.box is not None]
            if still and not with_face:
                raise LipSyncError(f"no face found in {Path(config.face).name}; use a clear, frontal face photo")
            # Decoded frames are fresh arrays and are pasted into in place; the still image is shared.
            outputs = [frame.copy() for frame in frames] if still else frames
            if with_face:
                crops = np.stack([crop(frames[i], tracks[i].box, generator.crop_size) for i in with_face])
                index = np.array([done + i for i in with_face])
                with result.stage("inference", items=len(with_face)):
                    generated, used = run_with_oom_backoff(
                        lambda b, c=crops, k=index: _generate(generator, chunks[k], c, energy[k], b), len(crops)
                    )
                if used < len(crops):
                    result.warn(f"out of GPU memory at batch {len(crops)}: ran at {used}")
                with result.stage("paste", items=len(with_face)):
                    for j, i in enumerate(with_face):
                        paste(outputs[i], tracks[i].box, generated[j], config.paste)
            encoder.put(outputs)
            done += len(frames)
            progress(done / count, f"frame {done}/{count}")
        encoder.finish()
    except BaseException:
        encoder.cancel()
        raise
    wall = time.perf_counter() - started
    if tracker.missed == count:
        out.unlink(missing_ok=True)
        raise LipSyncError(f"no face found in any of the {count} frames of {Path(config.face).name}")
    if tracker.missed:
        result.warn(f"{tracker.missed} of {count} frames had no detected face")
    result.outputs["video"] = str(out)
    result.metrics.update(
        engine=generator.name,
        engine_label=generator.label,
        frames=count,
        fps=fps,
        faces_missed=tracker.missed,
        batch_size=batch_size,
        width=size[0],
        height=size[1],
        audio_seconds=len(wav) / SAMPLE_RATE,
        encoder=writer.codec,
        pipeline_seconds=wall,
        frames_per_second=count / wall if wall > 0 else None,
        detector=detector.name if detector else "fixed box",
    )
    progress(1.0, "done")
    return result


def _generate(generator: Generator, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray, batch: int) -> np.ndarray:
    parts = [
        generator(mels[i : i + batch], crops[i : i + batch], energy[i : i + batch]) for i in range(0, len(crops), batch)
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
