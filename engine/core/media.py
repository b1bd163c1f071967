"""Images and video through PyAV: decode frame by frame, encode H.264 + AAC, and pick the encoder.

Images and frames come out upright, as OpenCV's imread and VideoCapture give them to upstream's pipelines: an
image's EXIF orientation and a video's display rotation (how phones store portrait shots) are applied.

A listed encoder is not a working one: PyAV's FFmpeg lists `h264_nvenc` on every machine,
but it needs libcuda, an NVENC-capable card and a free encoder session. So an encoder counts
as usable only after it has encoded a few real frames, and the choice is cached per process.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import InputError, SetupError, one_line
from engine.core.hls import SEGMENT_SECONDS, HlsCopy

log = logging.getLogger(__name__)

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


@contextlib.contextmanager
def _ffmpeg_errors() -> Iterator[None]:
    """FFmpeg logging at ERROR for the block, its lines kept off the terminal and logged at debug: PyAV then
    appends a device's own reason ("Cannot load libcuda.so.1", "OpenEncodeSessionEx failed: out of memory") to
    the exception text."""
    import av.logging

    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    lines: list = []
    try:
        with av.logging.Capture() as lines:
            yield
    finally:
        av.logging.set_level(previous_level)
        for _, source, message in lines:
            log.debug("FFmpeg %s: %s", source, message.strip())


def probe_encoder(codec: str, frames: int = 8, size: int = 128) -> EncoderProbe:
    """Encode a few frames into an in-memory MP4; any failure comes back as text, never raised. FFmpeg's own lines
    ("Cannot load libcuda.so.1" on a machine without a GPU) are kept off the terminal and the progress text, logged
    at debug: the error text carries the reason."""
    import av
    import av.logging

    if codec not in av.codecs_available:
        return EncoderProbe(codec, listed=False, works=False, error=f"{codec} is not in this FFmpeg build")
    buffer = io.BytesIO()
    try:
        with _ffmpeg_errors(), av.open(buffer, mode="w", format="mp4") as container:
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
VIDEOS = ", ".join(VIDEO_EXTENSIONS)
# what an input taking either (a face, a driving clip or image) accepts: a file in neither list is probed as a video
IMAGES_OR_VIDEOS = f"an image ({', '.join(IMAGE_EXTENSIONS)}) or a video ({VIDEOS})"
IMAGE_FORMATS = "PNG, JPEG, BMP, WebP or TIFF"
# A pixel cap besides the side limit: a 36-megapixel camera photo and 8K UHD (33 MP) pass, while a
# 16-bit RGBA frame at the cap still decodes to no more than 320 MB.
MAX_PIXELS = 40_000_000
LARGEST_MAX_SIDE = 8192  # the most AVATARBENCH_MAX_SIDE allows (settings.py)
MIN_SIDE = 16  # pixels: smaller faces or frames are refused


class MediaError(InputError):
    """An input image or video we cannot use; the message says why and what is accepted."""


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as shown: a video turned a quarter by its display rotation has its coded height here
    height: int
    fps: float
    frames: int | None  # from the container; None where it does not say
    duration_s: float | None
    has_audio: bool
    codec: str
    turns: int = 0  # quarter turns counter-clockwise that show its frames upright (read_frames applies them)
    audio_lag_s: float = 0.0  # how much later its sound starts than its pictures (negative: sooner), by the header


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def check_file(path: Path, kind: str, accepted: str, error: type[InputError] = MediaError) -> None:
    """Missing, not a file or empty, said plainly before a decoder answers "invalid data". Messages name the
    file only: in the web app the full path is a server's temporary folder, meaningless to the user."""
    try:
        found = path.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL in it
        raise error(
            f"{kind} file {path.name[:60]!r}... cannot be opened: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not found:
        raise error(f"{kind} file not found: {path.name}")
    if not path.is_file():
        raise error(f"{path.name} is not a file; {accepted}")
    if path.stat().st_size == 0:
        raise error(f"{path.name} is empty (0 bytes); {accepted}")
    try:
        path.open("rb").close()
    except OSError as exc:  # no permission to read it: a PermissionError traceback from whatever read it first
        raise error(f"{kind} file {path.name} cannot be read: {exc.strerror or exc}") from None


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's reason on one line, without the path that PyAV's str(exc) ends with."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return one_line(reason)


def _check_size(width: int, height: int, max_side: int, what: str, max_pixels: int = MAX_PIXELS) -> None:
    small, large = min(width, height) < MIN_SIDE, max(width, height) > max_side
    if small and large:  # a sliver: saying only one of the two sent the user to fix the wrong side first
        raise MediaError(
            f"{what} is {width}x{height}: too narrow (at least {MIN_SIDE}x{MIN_SIDE} pixels) and too long (at most "
            f"{max_side} pixels on the longer side, AVATARBENCH_MAX_SIDE)"
        )
    if small:
        raise MediaError(f"{what} is {width}x{height}: too small (at least {MIN_SIDE}x{MIN_SIDE} pixels)")
    if large:
        raise MediaError(
            f"{what} is {width}x{height}, larger than the limit of {max_side} pixels on the longer side "
            f"(AVATARBENCH_MAX_SIDE); downscale it first"
        )
    if width * height > max_pixels:
        raise MediaError(
            f"{what} is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the limit of "
            f"{max_pixels / 1e6:.0f} megapixels; downscale it first"
        )


# Image headers, read by hand so that nothing is decoded before the size is checked: OpenCV allocates
# the whole image first (a 0.4 MB PNG declaring 12000x12000 costs 430 MB), and only files whose header
# we read ever reach it. Each reader returns (width, height); running off the end raises struct.error
# or IndexError, a malformed field ValueError or KeyError.


def _png_size(data: bytes) -> tuple[int, int]:
    length, kind, width, height = struct.unpack_from(">I4sII", data, 8)
    if kind != b"IHDR" or length != 13:
        raise ValueError("the first chunk is not IHDR")
    return width, height


# Start-of-frame markers: baseline, extended, progressive and lossless, Huffman or arithmetic coded.
_JPEG_FRAME_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_STANDALONE_MARKERS = frozenset((0x01, *range(0xD0, 0xD8)))


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments to the frame header; APPn segments (EXIF thumbnails too) are skipped whole."""
    position = 2
    while True:
        if data[position] != 0xFF:
            raise ValueError("expected a marker")
        while data[position] == 0xFF:  # fill bytes may pad a marker
            position += 1
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("the image data starts before any frame header")
        (length,) = struct.unpack_from(">H", data, position)
        if marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", data, position + 3)
            return width, height
        if length < 2:
            raise ValueError("a segment shorter than its own length field")
        position += length


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = struct.unpack_from("<I", data, 14)
    width, height = struct.unpack_from("<HH" if header_size == 12 else "<ii", data, 18)  # OS/2 1.x: 16-bit sizes
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise ValueError("shorter than any WebP header")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, 24 bits each, minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame: 14 bits each, 2 bits of scaling
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    raise ValueError("no VP8, VP8L or VP8X chunk first")


def _tiff_size(data: bytes) -> tuple[int, int]:
    """ImageWidth and ImageLength from the first directory (the page OpenCV decodes); classic or BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"+\0", b"\0+"):  # BigTIFF: 64-bit offsets and counts, 20-byte entries
        (offset,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, offset)
        first, entry_size, value_at = offset + 8, 20, 12
    else:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
        first, entry_size, value_at = offset + 2, 12, 8
    sizes = {}
    for entry in range(first, first + count * entry_size, entry_size):
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or (BigTIFF) LONG8
            (sizes[tag],) = struct.unpack_from(order + {3: "H", 4: "I", 16: "Q"}[kind], data, entry + value_at)
    return sizes[256], sizes[257]


def _png_animated(data: bytes) -> bool:
    """An APNG declares its animation (acTL) before its first image data (IDAT)."""
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind in (b"acTL", b"IDAT"):
            return kind == b"acTL"
        at += 12 + length
    return False


_IMAGE_HEADERS = (
    ("PNG", lambda data: data[:8] == b"\x89PNG\r\n\x1a\n", _png_size),
    ("JPEG", lambda data: data[:3] == b"\xff\xd8\xff", _jpeg_size),
    ("BMP", lambda data: data[:2] == b"BM", _bmp_size),
    ("WebP", lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP", _webp_size),
    ("TIFF", lambda data: data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), _tiff_size),
)


def read_image_header(data: bytes, name: str) -> ImageHeader:
    """The format (from the file's first bytes, whatever its extension) and the size its header declares."""
    for image_format, matches, size in _IMAGE_HEADERS:
        if matches(data):
            try:
                width, height = size(data)
            except (struct.error, IndexError, KeyError, ValueError):
                raise MediaError(
                    f"{name} could not be decoded as an image: its {image_format} header is truncated or damaged"
                ) from None
            return ImageHeader(image_format, width, height)
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:  # in an MP4-like box, and not a video
        raise MediaError(f"{name} is an AVIF or HEIC image, which is not read here: convert it to PNG or JPEG")
    video = next((kind for kind, matches in _VIDEO_HEADERS if matches(data)), None)
    if video is not None:  # "not a PNG, JPEG..." left the user to guess why their video was not taken
        suffix = ".gif" if video == "GIF" else ".mp4"
        renamed = f"; a file named as an image is read as one: name it {suffix} where videos are accepted"
        raise MediaError(f"{name} is a video ({video}), where a still image ({IMAGE_FORMATS}) is needed"
                         + (renamed if is_image(name) else ""))  # fmt: skip
    raise MediaError(f"{name} could not be decoded as an image: it is not a {IMAGE_FORMATS} file")


HEIF_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1")  # stills in ISO boxes
_VIDEO_HEADERS = (  # the containers people hand over, from their first bytes
    ("MP4/MOV", lambda data: data[4:8] == b"ftyp"),
    ("Matroska/WebM", lambda data: data[:4] == b"\x1a\x45\xdf\xa3"),
    ("AVI", lambda data: data[:4] == b"RIFF" and data[8:12] == b"AVI "),
    ("GIF", lambda data: data[:4] == b"GIF8"),
)


def load_image(path: str | os.PathLike, max_side: int = 4096, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any common image as HxWx3 uint8 BGR, upright: greyscale is expanded, alpha composited on white, the EXIF
    orientation applied (exif_upright).

    The size is checked from the header before any pixel is decoded."""
    import cv2

    path = Path(path)
    check_file(path, "image", f"accepted: {IMAGE_FORMATS} images")
    data = path.read_bytes()
    header = read_image_header(data, path.name)
    _check_size(header.width, header.height, max_side, path.name, max_pixels)
    if header.format == "WebP" and data[12:16] == b"VP8X" and data[20] & 0x02:  # the extended header's animation bit
        raise MediaError(f"{path.name} is an animated WebP: give one still image, or the animation as a video (MP4)")
    if header.format == "PNG" and _png_animated(data):  # OpenCV reads an APNG as its first frame, silently
        raise MediaError(f"{path.name} is an animated PNG: give one still image, or the animation as a video (MP4)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's own checks, in its multi-line assertion text
        image = None
    if image is None:
        raise MediaError(
            f"{path.name} could not be decoded as an image: its {header.format} data is truncated or damaged"
        )
    _check_size(image.shape[1], image.shape[0], max_side, path.name, max_pixels)  # as decoded, to be sure
    if header.format != "TIFF":  # OpenCV's TIFF decoder has already applied it
        image = exif_upright(image, exif_orientation(data))
    return _bgr8(image, path.name)


EXIF_ORIENTATION = 0x0112


def exif_orientation(data: bytes) -> int:
    """An image file's EXIF Orientation, 1 to 8 (1, upright, where it has none or it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # any unreadable EXIF block means "as stored", as OpenCV reads it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def exif_upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as EXIF `orientation` says to show it, turned and mirrored exactly as OpenCV's imread does (its
    IMREAD_UNCHANGED, which keeps alpha and 16-bit samples, skips this step): 5 to 8 transpose, then 2, 6 mirror
    left-right, 4, 8 top-bottom, 3, 7 both. A view where possible."""
    if orientation in (5, 6, 7, 8):
        image = image.swapaxes(0, 1)
    if orientation in (2, 3, 6, 7):
        image = image[:, ::-1]
    if orientation in (3, 4, 7, 8):
        image = image[::-1]
    return image


def _bgr8(image: np.ndarray, name: str) -> np.ndarray:
    """8-bit BGR from what OpenCV decodes: 8 or 16 bits, grey or colour, with or without alpha (composited on
    white, in integers: exact, and a quarter of the memory of float32)."""
    import cv2

    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255 / 65535)
    elif image.dtype != np.uint8:
        raise MediaError(f"{name} stores {image.dtype} samples; accepted: 8- or 16-bit images")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels not in (1, 2, 3, 4):
        raise MediaError(f"{name} has {channels} channels; accepted: grey or colour, with or without alpha")
    colour, alpha = (image[:, :, :-1], image[:, :, -1:]) if channels in (2, 4) else (image, None)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if alpha is not None:  # 255 - (255 - c) * a / 255, rounded: c over white
        colour = (255 - ((255 - colour).astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(colour)


def _video_stream(container, name: str, accepted: str = VIDEOS):
    if not container.streams.video:
        raise MediaError(f"{name} has no video stream; accepted: {accepted}")
    return container.streams.video[0]


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0


def _unreadable_video(name: str, exc: Exception, accepted: str = VIDEOS) -> MediaError:
    return MediaError(f"{name} could not be read as a video ({ffmpeg_reason(exc)}); accepted: {accepted}")


def probe_video(path: str | os.PathLike, max_side: int = LARGEST_MAX_SIDE, accepted: str = VIDEOS) -> VideoInfo:
    """Read a video's header: size, frame rate, length, whether it has sound. A still image given as a video is
    checked against `max_side` from its own header first: FFmpeg decodes it to open it (a 2 MB PNG declaring
    16000x16000, named .mp4, took 2.2 GB before validate_video refused it). `accepted` is what a refusal offers
    (IMAGES_OR_VIDEOS where an image was taken too: a face.heic told "accepted: .mp4, ..." read as no photos)."""
    import av

    path = Path(path)
    check_file(path, "video", f"accepted: {accepted}")
    _check_still_size(path, max_side)
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = _video_stream(container, path.name, accepted)
            fps = _frame_rate(stream)
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            frames = stream.frames or (round(duration * fps) if duration else None)
            width, height = stream.codec_context.width, stream.codec_context.height
            turns = _first_frame_turns(container, stream)
            return VideoInfo(
                width=height if turns % 2 else width,
                height=width if turns % 2 else height,
                fps=fps,
                frames=frames or None,
                duration_s=duration,
                has_audio=bool(container.streams.audio),
                codec=stream.codec_context.name,
                turns=turns,
                audio_lag_s=_audio_lag_s(stream, container.streams.audio[0]) if container.streams.audio else 0.0,
            )
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:  # InvalidDataError and friends
        raise _unreadable_video(path.name, exc, accepted) from None


def _check_still_size(path: Path, max_side: int) -> None:
    """The size an image file declares, against the limits, whatever its name; nothing for other files."""
    try:
        with open(path, "rb") as file:
            header = read_image_header(file.read(1 << 20), path.name)
    except (OSError, MediaError):  # not an image (or its header is damaged): FFmpeg says what it is
        return
    _check_size(header.width, header.height, max_side, path.name)


def _audio_lag_s(video: Any, audio: Any) -> float:
    """How much later the audio stream starts than the video stream on the file's timeline (clips cut by stream
    copy, phone recordings: a few tenths of a second either way); 0 where either start is not stated."""
    if None in (video.start_time, audio.start_time, video.time_base, audio.time_base):
        return 0.0
    return float(audio.start_time * audio.time_base - video.start_time * video.time_base)


def display_turns(frame: Any) -> int:
    """Quarter turns counter-clockwise (0 to 3) that show a decoded frame upright: its display rotation, rounded to
    a quarter (mirroring in the display matrix is not applied). OpenCV's VideoCapture applies the same turn."""
    rotation = getattr(frame, "rotation", 0) or 0
    return round(rotation / 90) % 4


def _first_frame_turns(container: Any, stream: Any) -> int:
    """The first frame's display turns (FFmpeg gives the stream's display matrix to every decoded frame); 0 where no
    frame decodes here (read_frames then says why)."""
    import av

    try:
        return display_turns(next(container.decode(stream)))
    except (StopIteration, av.error.FFmpegError):
        return 0


def declared_seconds(path: str | os.PathLike, kind: str = "audio") -> float | None:
    """How long a file's first audio (or video) stream lasts by its header, for decisions made before decoding (a
    job split into time segments); None where the header does not say or the file cannot be read."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                return None
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / 1_000_000 if container.duration is not None else None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None


def validate_video(info: VideoInfo, name: str, max_side: int, max_seconds: float) -> None:
    """The header's size, rate and duration against the limits. A header without a duration passes here:
    read_frames(max_seconds=...) holds the limit while streaming."""
    _check_size(info.width, info.height, max_side, name)
    if not 1.0 <= info.fps <= 120.0:
        raise MediaError(f"{name} reports {info.fps:.3g} frames per second; accepted: 1 to 120")
    if info.duration_s is not None and info.duration_s > max_seconds:
        raise MediaError(
            f"{name} lasts {info.duration_s:.1f} s, longer than the limit of {max_seconds:g} s "
            "(AVATARBENCH_MAX_SECONDS); trim it first"
        )


@dataclass
class Decoding:
    """Where read_frames should decode a video, and where it did.

    Why: on a GPU machine the lip-sync job's other stages leave the CPU little to spare, and a GPU's NVDEC engines
    decode H.264, HEVC, VP9 and AV1 beside its compute units. With `cuda_device` set, FFmpeg decodes on that GPU's
    NVDEC where it can (the codec has a CUDA decoder, the driver's libnvcuvid loads, the stream's profile, bit depth
    and size suit it) and the frames are copied to memory as NV12; anywhere else it decodes on the CPU as before,
    and `reason` says why. `ran_on` ("nvdec" or "cpu") is set when the first frame is out."""

    cuda_device: int | None = None
    ran_on: str | None = None
    reason: str | None = None


def _open_for_decoding(path: Path, decoding: Decoding) -> Any:
    """The container, with NVDEC attached where `decoding` asks for it and a CUDA device context can be made."""
    import av

    if decoding.cuda_device is not None:
        from av.codec.hwaccel import HWAccel

        nvdec = HWAccel("cuda", device=str(decoding.cuda_device), allow_software_fallback=True)
        try:
            with _ffmpeg_errors():
                return av.open(str(path), metadata_errors="ignore", hwaccel=nvdec)
        except (av.error.FFmpegError, OSError, RuntimeError, NotImplementedError) as exc:
            decoding.reason = f"NVDEC could not start on cuda:{decoding.cuda_device} ({one_line(exc)})"
    return av.open(str(path), metadata_errors="ignore")


def _note_decoder(stream: Any, decoding: Decoding) -> None:
    """After the first frame: whether FFmpeg chose the CUDA decoder (the context's format is then "cuda")."""
    context = stream.codec_context
    fmt = context.format if context.is_hwaccel else None
    decoding.ran_on = "nvdec" if fmt is not None and fmt.name == "cuda" else "cpu"
    if decoding.cuda_device is not None and decoding.ran_on == "cpu" and decoding.reason is None:
        decoding.reason = (
            f"NVDEC cannot decode this {context.name} stream (its profile, bit depth or size): decoded on the CPU"
            if context.is_hwaccel
            else f"FFmpeg has no CUDA decoder for {context.name}: decoded on the CPU"
        )


# NVDEC's frames come to memory with their chroma interleaved; the software decoders give the same samples planar.
NVDEC_PLANAR = {"nv12": "yuv420p", "p010le": "yuv420p10le", "p016le": "yuv420p16le"}


def _as_software_decoders(frame: Any) -> Any:
    """An NVDEC frame in the software decoder's planar format (a lossless rearrangement).

    Why: FFmpeg's conversion to BGR upsamples interleaved chroma differently from planar chroma (up to 17 grey
    levels apart at a portrait's edges), so converting NV12 directly would make a GPU job's frames, and its
    lip-sync crops, differ from the CPU's and from upstream's OpenCV decode; after the rearrangement they are
    the same conversion of the same samples."""
    planar = NVDEC_PLANAR.get(frame.format.name)
    return frame.reformat(format=planar) if planar else frame


def read_frames(
    path: str | os.PathLike,
    max_seconds: float | None = None,
    threads: int | None = None,
    decoding: Decoding | None = None,
) -> Iterator[np.ndarray]:
    """Decode frame by frame as HxWx3 uint8 BGR: the whole video is never in memory.

    `threads`: None lets FFmpeg thread the decoder by frames and slices (decoding is often the slowest CPU stage);
    1 decodes in the calling thread alone, for when a network running on the CPU needs the cores. `decoding` asks
    for NVDEC and says where the frames were decoded (Decoding); where NVDEC fails partway, the rest of the video
    is decoded on the CPU (from the start, the frames already given skipped) and `decoding.reason` says so.

    With `max_seconds`, frames are counted as they come and reading stops with a message past
    fps x max_seconds of them: a header may not state a length (a raw H.264 stream's does not), so
    the count is the limit that always holds. Every frame must have the size the header states (or
    the first frame's), so a stream cannot switch to a larger size than the one validated. Frames come upright
    (display_turns), in the size probe_video reports."""
    path, decoding = Path(path), decoding or Decoding()
    given = 0
    try:
        for image in _decoded(path, max_seconds, threads, decoding):
            yield image
            given += 1
    except _NvdecFailed as failed:
        decoding.ran_on = "cpu"
        decoding.reason = f"NVDEC failed after {given} frames ({failed}): the rest were decoded on the CPU"
        yield from itertools.islice(_decoded(path, max_seconds, threads, Decoding()), given, None)


def probe_nvdec(cuda_device: int = 0) -> Decoding:
    """Decode a small H.264 clip (made here with libx264) as a GPU lip-sync job decodes its video: where the frames
    were decoded, and why not on NVDEC (the doctor's check; NVDEC needs the driver's libnvcuvid.so.1, which a
    container gets with NVIDIA_DRIVER_CAPABILITIES including video)."""
    import tempfile

    decoding = Decoding(cuda_device=cuda_device)
    with tempfile.TemporaryDirectory(prefix="avatarbench-nvdec-") as folder:
        clip = Path(folder) / "probe.mp4"
        try:
            writer = VideoWriter(clip, 25, 128, 128, codec="libx264")
            for frame in _test_frames(8, 128):
                writer.write(frame)
            writer.close()
            for _ in read_frames(clip, decoding=decoding):
                pass
        except Exception as exc:  # a probe reports, never raises
            decoding.ran_on, decoding.reason = None, f"the probe clip did not decode ({type(exc).__name__}: {exc})"
    return decoding


class _NvdecFailed(Exception):
    """FFmpeg's error from an NVDEC decode: the video may still decode on the CPU."""


def _decoded(path: Path, max_seconds: float | None, threads: int | None, decoding: Decoding) -> Iterator[np.ndarray]:
    """read_frames' one pass over the video, decoded where `decoding` says."""
    import av

    decoded = 0
    try:
        with _open_for_decoding(path, decoding) as container:
            stream = _video_stream(container, path.name)
            if threads is None:
                stream.thread_type = "AUTO"  # frame + slice threads
            else:
                stream.codec_context.thread_count = threads
            fps = _frame_rate(stream)
            allowed = None if max_seconds is None else math.ceil(max_seconds * fps)
            size = (stream.codec_context.width, stream.codec_context.height)
            cut_off = False  # the last packet came short of its stated size: the file ends early
            for packet in container.demux(stream):
                cut_off = packet.is_corrupt if packet.size else cut_off
                for frame in packet.decode():
                    if allowed is not None and decoded == allowed:
                        raise MediaError(
                            f"{path.name} runs longer than the limit of {max_seconds:g} s ({allowed} frames at "
                            f"{fps:g} fps, AVATARBENCH_MAX_SECONDS); trim it first"
                        )
                    size = size if all(size) else (frame.width, frame.height)
                    if (frame.width, frame.height) != size:
                        raise MediaError(
                            f"{path.name} changes its frame size from {size[0]}x{size[1]} to "
                            f"{frame.width}x{frame.height} at frame {decoded + 1}; accepted: videos with one frame size"
                        )
                    decoded += 1
                    if decoding.ran_on is None:
                        _note_decoder(stream, decoding)
                    if decoding.ran_on == "nvdec":
                        frame = _as_software_decoders(frame)
                    image, turns = frame.to_ndarray(format="bgr24"), display_turns(frame)
                    yield np.ascontiguousarray(np.rot90(image, turns)) if turns else image
            if cut_off and decoded:  # threaded decoders drop the error the cut packet gives; one thread raises it
                raise MediaError(
                    f"{path.name} is cut off after {decoded} frames (its last packet is incomplete): the file is "
                    "truncated; upload or copy it again"
                )
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if decoding.ran_on == "nvdec":
            raise _NvdecFailed(ffmpeg_reason(exc)) from None
        raise MediaError(
            f"{path.name}: decoding failed after {decoded} frames ({ffmpeg_reason(exc)}); the file may be "
            "truncated or damaged"
        ) from None
    if decoded == 0:
        raise MediaError(f"{path.name} holds no decodable video frame; the file may be truncated or damaged")


# ---------------------------------------------------------------------------- encoding

_ENCODER_OPTIONS = {
    "h264_nvenc": {"preset": "p4", "rc": "vbr", "cq": "21", "forced-idr": "1"},  # a live stream's forced keyframes
    "libx264": {"preset": "veryfast", "crf": "18"},
    "libopenh264": {},
}


SMPTE170M, LIMITED_RANGE = 6, 1  # FFmpeg's AVCOL_SPC_SMPTE170M (BT.601's matrix) and AVCOL_RANGE_MPEG


def to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """A BGR frame (even sides) as the encoders' yuv420p planes, stacked (1.5 H, W): BT.601, limited range.

    The same matrix and range as FFmpeg's default BGR to yuv420p conversion (luma within one level of it), several
    times faster on one core (OpenCV's SIMD code), with each 2x2 block's chroma its mean rather than one sample.
    Why: the encoding thread shares the CPU with the network (and on a GPU machine it is what the run waits for).
    """
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)


class VideoWriter:
    """H.264 MP4 (NVENC when it works, else libx264) with an optional AAC track: float samples, (n, 1 or 2) at
    `sample_rate` (engine/core/audio.py's Sound gives both), or mono (n,).

    The audio is given up front and muxed alongside the frames as they come, so the muxer never
    has to buffer a whole video waiting for the other stream. Odd sizes are padded by one pixel
    (yuv420p needs even sizes). `threads=1` keeps the encoder in the writing thread, for when a network running
    on the CPU needs the cores. With `stream_to`, the same packets also go into a live HLS stream in that folder
    (engine/core/hls.py), with a keyframe forced at each segment's start time so that it is cut there: the encoder's
    own keyframe interval drifts (libx264 asked for one every 25 frames at 25 fps placed them every 24, so FFmpeg's
    HLS muxer, which cuts at the first keyframe at or after each multiple of SEGMENT_SECONDS, made the first segment
    1.92 s, and a scene cut just before a boundary made a segment of almost 2 s).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        width: int,
        height: int,
        audio: Any = None,
        sample_rate: int = 16000,
        codec: str | None = None,
        threads: int | None = None,
        stream_to: Path | None = None,
    ):
        import av

        self.path = Path(path)
        self.codec = codec or pick_h264_encoder()
        self.fps, self.width, self.height = fps, width, height
        self.frames_written = 0
        self._made = missing_folders(self.path.parent)  # made here, removed by abort() while empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(partial_path(self.path)), mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self._video = self._container.add_stream(self.codec, rate=rate, options=_ENCODER_OPTIONS.get(self.codec, {}))
        self._video.width, self._video.height = width + width % 2, height + height % 2
        self._video.pix_fmt = "yuv420p"
        # to_yuv420p's matrix and range, stated: untagged, a player may take an HD video's colours as BT.709 (green
        # shown as (0, 213, 0), red gaining 23 levels of green)
        self._video.codec_context.colorspace = SMPTE170M
        self._video.codec_context.color_range = LIMITED_RANGE
        if threads is not None:  # None: the encoder's own choice (libx264: 1.5 threads per core)
            self._video.codec_context.thread_count = threads
        self._audio = None
        self._samples = None
        self._sample_rate = sample_rate
        self._audio_done = 0
        if hasattr(audio, "rate"):  # a Sound
            audio, self._sample_rate = audio.samples, audio.rate
        if audio is not None and audio.size:
            self._samples = np.clip(audio, -1.0, 1.0).astype(np.float32).reshape(len(audio), -1)
            self._layout = "mono" if self._samples.shape[1] == 1 else "stereo"
            self._audio = self._container.add_stream("aac", rate=self._sample_rate, layout=self._layout)
            self._audio.bit_rate = 96_000 * self._samples.shape[1]
        self._live: HlsCopy | None = None
        if stream_to is not None:
            # the forced keyframes set the segments; the encoder's own interval, twice as long, never comes first
            self._video.codec_context.gop_size = max(1, 2 * round(fps * SEGMENT_SECONDS))
            self._keyframes_forced = 0
            streams = [self._video] + ([self._audio] if self._audio is not None else [])
            for stream in streams:
                stream.codec_context.open()  # now: their parameter sets are what the live copy needs
            self._live = HlsCopy(Path(stream_to), streams)

    def _mux(self, packet: Any) -> None:
        if self._live is not None:
            self._live.mux(packet)
        self._container.mux(packet)

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            raise MediaError(f"frame is {frame.shape[1]}x{frame.shape[0]}, writer expects {self.width}x{self.height}")
        if self.width % 2 or self.height % 2:
            frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        picture = av.VideoFrame.from_ndarray(to_yuv420p(frame), format="yuv420p")
        if self._live is not None and self.frames_written >= self._keyframes_forced * self.fps * SEGMENT_SECONDS - 1e-6:
            picture.pict_type = av.video.frame.PictureType.I  # the first frame at or after a segment's start
            self._keyframes_forced += 1
        for packet in self._video.encode(picture):
            self._mux(packet)
        self.frames_written += 1
        self._write_audio_until(round(self.frames_written / self.fps * self._sample_rate))

    def _write_audio_until(self, end: int) -> None:
        import av

        if self._audio is None or self._samples is None:
            return
        end = min(end, len(self._samples))
        if end <= self._audio_done:
            return
        chunk = self._samples[self._audio_done : end].reshape(1, -1)  # interleaved, as "flt" is
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout=self._layout)
        frame.sample_rate = self._sample_rate
        frame.pts = self._audio_done
        for packet in self._audio.encode(frame):
            self._mux(packet)
        self._audio_done = end

    def close(self) -> None:
        """Flush both encoders; the audio runs to its own end (the caller sizes it to the video)."""
        for packet in self._video.encode(None):
            self._mux(packet)
        if self._audio is not None and self._samples is not None:
            self._write_audio_until(len(self._samples))
            for packet in self._audio.encode(None):
                self._mux(packet)
        if self._live is not None:
            self._live.close()
        self._container.close()
        os.replace(partial_path(self.path), self.path)

    def abort(self) -> None:
        """Close and delete a half-written file after a failure (a live stream is ended where it got to), and the
        folders made for it while nothing else is in them (an empty out/ stayed after a run that found no face)."""
        if self._live is not None:
            self._live.close()
        _discard(self._container, partial_path(self.path))
        remove_empty_folders(self._made)


# Lossless, in BGR as the pipelines make frames: x264's RGB variant at qp 0 (inter prediction keeps a talking head
# small: 2.5 MiB for a minute of a still-face lip-sync at 256 px, where Ut Video takes 150), else FFV1 (4-5x slower).
LOSSLESS_ENCODERS = (("libx264rgb", "bgr24", {"qp": "0", "preset": "ultrafast"}), ("ffv1", "bgr0", {}))
LOSSLESS_SUFFIX = ".mkv"


class LosslessWriter:
    """Frames stored exactly (Matroska, lossless RGB), so that decoding gives back every BGR byte written: the
    segments of a split job (engine/jobs/split.py), which are re-encoded once, in order, into the final MP4.
    The same interface as VideoWriter (write, close, abort, codec, frames_written); no sound."""

    def __init__(
        self, path: str | os.PathLike, fps: float, width: int, height: int, threads: int | None = None
    ) -> None:
        import av

        codec, pix_fmt, options = next(
            ((c, p, o) for c, p, o in LOSSLESS_ENCODERS if c in av.codecs_available), (None, None, None)
        )
        if codec is None:
            names = ", ".join(c for c, _, _ in LOSSLESS_ENCODERS)
            raise SetupError(f"no lossless encoder among {names} in PyAV's FFmpeg")
        self.path, self.codec = Path(path), codec
        self.fps, self.width, self.height = fps, width, height
        self.frames_written = 0
        self._container = av.open(str(partial_path(self.path)), mode="w", format="matroska")
        self._video = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, pix_fmt
        if threads is not None:
            self._video.codec_context.thread_count = threads

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.shape[:2] != (self.height, self.width):
            raise MediaError(f"frame is {frame.shape[1]}x{frame.shape[0]}, writer expects {self.width}x{self.height}")
        for packet in self._video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        for packet in self._video.encode(None):
            self._container.mux(packet)
        self._container.close()
        os.replace(partial_path(self.path), self.path)

    def abort(self) -> None:
        _discard(self._container, partial_path(self.path))


def partial_path(path: Path) -> Path:
    """Where a writer writes until it closes: a failed run leaves a file already at `path` (an earlier result the
    command was asked to replace) as it was, where it used to delete it."""
    return path.with_name(f".{path.name}.partial")


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and the folders above it that are not there yet, deepest first: what an output's mkdir will make."""
    return [f for f in (folder.absolute(), *folder.absolute().parents) if not f.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """The folders a failed command made for its output (`missing_folders`), deepest first, while they are empty:
    no empty folder is left as if it held a result, and what else was written there stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _discard(container: Any, path: Path) -> None:
    """A half-written file after a failure: closed as far as it goes, then deleted."""
    with contextlib.suppress(Exception):
        container.close()
    path.unlink(missing_ok=True)
