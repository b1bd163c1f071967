"""Video encoding through PyAV: which H.264 encoders exist, and which really work here.

A listed encoder is not a working one: PyAV's FFmpeg lists `h264_nvenc` on every machine,
but it needs libcuda, an NVENC-capable card and a free encoder session. So an encoder counts
as usable only after it has encoded a few real frames, and the choice is cached per process.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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
    raise RuntimeError(f"no working H.264 encoder among {', '.join(H264_ENCODERS)} in PyAV's FFmpeg")
