"""Images and video through PyAV: decode frame by frame, encode H.264 + AAC, and pick the encoder.

A listed encoder is not a working one: PyAV's FFmpeg lists `h264_nvenc` on every machine,
but it needs libcuda, an NVENC-capable card and a free encoder session. So an encoder counts
as usable only after it has encoded a few real frames, and the choice is cached per process.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.core.errors import InputError, SetupError

# Preference order: GPU first, then the software encoders PyAV wheels carry.
H264_ENCODERS = ("h264_nvenc", "libx264", "libopenh264")


@dataclass(frozen=True)
class EncoderProbe:
    codec: str
    listed: bool
    works: bool
    error: str | None = None


def available_encoders(names: tuple[str, ...] = (*H264_ENCODERS, "hevc_nvenc", "av1_nvenc")) -> list[str]:
    import av

    return [name for name in names if name in av.codecs_available]


def _test_frames(count: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    return [np.roll(base, shift=4 * i, axis=1) for i in range(count)]


def probe_encoder(codec: str, frames: int = 8, size: int = 128) -> EncoderProbe:
    """Encode a few frames into an in-memory MP4; any failure comes back as text, never raised."""
    import av
    import av.logging

    if codec not in av.codecs_available:
        return EncoderProbe(codec, listed=False, works=False, error=f"{codec} is not in this FFmpeg build")
    buffer = io.BytesIO()
    # With FFmpeg logging at ERROR, PyAV appends the encoder's own reason ("Cannot load
    # libcuda.so.1", "OpenEncodeSessionEx failed: out of memory") to the exception text.
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.open(buffer, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=25)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for array in _test_frames(frames, size):
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except Exception as exc:  # av.error.*, OSError from a missing libcuda, ...
        return EncoderProbe(codec, listed=True, works=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        av.logging.set_level(previous_level)
    if buffer.tell() == 0:
        return EncoderProbe(codec, listed=True, works=False, error="encoder produced no output")
    return EncoderProbe(codec, listed=True, works=True)


@lru_cache(maxsize=1)
def pick_h264_encoder() -> str:
    """The first H.264 encoder that really encodes here (NVENC when it works, else software)."""
    for codec in H264_ENCODERS:
        if probe_encoder(codec).works:
            return codec
    raise SetupError(f"no working H.264 encoder among {', '.join(H264_ENCODERS)} in PyAV's FFmpeg")


# ---------------------------------------------------------------------------- decoding

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif")


class MediaError(InputError):
    """An input image or video we cannot use; the message says why and what is accepted."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # from the container; None where it does not say
    duration_s: float | None
    has_audio: bool
    codec: str


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _check_size(width: int, height: int, max_side: int, what: str) -> None:
    if width < 16 or height < 16:
        raise MediaError(f"{what} is {width}x{height}: too small (at least 16x16 pixels)")
    if max(width, height) > max_side:
        raise MediaError(
            f"{what} is {width}x{height}, larger than the limit of {max_side} pixels on the longer side "
            f"(AVATARBENCH_MAX_SIDE); downscale it first"
        )


def load_image(path: str | os.PathLike, max_side: int = 4096) -> np.ndarray:
    """Any common image as HxWx3 uint8 BGR: greyscale is expanded, alpha composited on white."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise MediaError(f"{path.name} could not be decoded as an image (accepted: {', '.join(IMAGE_EXTENSIONS)})")
    if image.dtype != np.uint8:  # 16-bit PNG/TIFF
        image = (image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)).round().astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    _check_size(image.shape[1], image.shape[0], max_side, path.name)
    return np.ascontiguousarray(image)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's header: size, frame rate, length, whether it has sound."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 25.0
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            frames = stream.frames or (round(duration * fps) if duration else None)
            return VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=fps,
                frames=frames or None,
                duration_s=duration,
                has_audio=bool(container.streams.audio),
                codec=stream.codec_context.name,
            )
    except MediaError:
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise MediaError(
            f"{path.name} could not be read as a video ({exc}); accepted: {', '.join(VIDEO_EXTENSIONS)}"
        ) from None


def validate_video(info: VideoInfo, name: str, max_side: int, max_seconds: float) -> None:
    _check_size(info.width, info.height, max_side, name)
    if not 1.0 <= info.fps <= 120.0:
        raise MediaError(f"{name} reports {info.fps:.2f} frames per second; accepted: 1 to 120")
    if info.duration_s is not None and info.duration_s > max_seconds:
        raise MediaError(
            f"{name} lasts {info.duration_s:.0f} s, longer than the limit of {max_seconds:.0f} s "
            "(AVATARBENCH_MAX_SECONDS); trim it first"
        )


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode frame by frame as HxWx3 uint8 BGR: the whole video is never in memory."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads: decoding is often the slowest CPU stage
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="bgr24")
    except av.error.FFmpegError as exc:
        raise MediaError(f"{Path(path).name}: decoding failed part-way ({exc})") from None


# ---------------------------------------------------------------------------- encoding

_ENCODER_OPTIONS = {
    "h264_nvenc": {"preset": "p4", "rc": "vbr", "cq": "21"},
    "libx264": {"preset": "veryfast", "crf": "18"},
    "libopenh264": {},
}


class VideoWriter:
    """H.264 MP4 (NVENC when it works, else libx264) with an optional AAC track from mono float audio.

    The audio is given up front and muxed alongside the frames as they come, so the muxer never
    has to buffer a whole video waiting for the other stream. Odd sizes are padded by one pixel
    (yuv420p needs even sizes).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        width: int,
        height: int,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        codec: str | None = None,
    ):
        import av

        self.path = Path(path)
        self.codec = codec or pick_h264_encoder()
        self.fps, self.width, self.height = fps, width, height
        self.frames_written = 0
        self._container = av.open(str(self.path), mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self._video = self._container.add_stream(self.codec, rate=rate, options=_ENCODER_OPTIONS.get(self.codec, {}))
        self._video.width, self._video.height = width + width % 2, height + height % 2
        self._video.pix_fmt = "yuv420p"
        self._audio = None
        self._samples = None
        self._sample_rate = sample_rate
        self._audio_done = 0
        if audio is not None and audio.size:
            self._samples = np.clip(audio, -1.0, 1.0).astype(np.float32)
            self._audio = self._container.add_stream("aac", rate=sample_rate, layout="mono")
            self._audio.bit_rate = 96_000

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            raise MediaError(f"frame is {frame.shape[1]}x{frame.shape[0]}, writer expects {self.width}x{self.height}")
        if self.width % 2 or self.height % 2:
            frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        for packet in self._video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
            self._container.mux(packet)
        self.frames_written += 1
        self._write_audio_until(round(self.frames_written / self.fps * self._sample_rate))

    def _write_audio_until(self, end: int) -> None:
        import av

        if self._audio is None or self._samples is None:
            return
        end = min(end, len(self._samples))
        if end <= self._audio_done:
            return
        chunk = self._samples[self._audio_done : end].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.pts = self._audio_done
        for packet in self._audio.encode(frame):
            self._container.mux(packet)
        self._audio_done = end

    def close(self) -> None:
        """Flush both encoders; the audio runs to its own end (the caller sizes it to the video)."""
        for packet in self._video.encode(None):
            self._container.mux(packet)
        if self._audio is not None and self._samples is not None:
            self._write_audio_until(len(self._samples))
            for packet in self._audio.encode(None):
                self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        """Close and delete a half-written file after a failure."""
        with contextlib.suppress(Exception):
            self._container.close()
        self.path.unlink(missing_ok=True)
