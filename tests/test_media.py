"""engine/core/media.py on bad inputs: image bombs refused from their header without decoding, videos whose
header states no length held to the limit while streaming, and every refusal one line naming the file only.

Every file is made here. PNGs are written chunk by chunk: a bomb's pixel data compresses a thousandfold, so
it is written without ever holding the image; the rest comes from OpenCV and PyAV.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engine.core.errors import InputError, SetupError
from engine.core.media import (
    H264_ENCODERS,
    NVDEC_PLANAR,
    Decoding,
    EncoderProbe,
    MediaError,
    VideoInfo,
    VideoWriter,
    _as_software_decoders,
    _note_decoder,
    check_file,
    declared_seconds,
    exif_orientation,
    is_image,
    load_image,
    pick_h264_encoder,
    probe_video,
    read_frames,
    read_image_header,
    to_yuv420p,
    validate_video,
)
from engine.core.settings import load_settings

PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def refusal(action: Callable[[], object], path: Path, error: type[InputError] = MediaError) -> str:
    """The message `action` is refused with: one line, naming the file but not the folder it is in."""
    with pytest.raises(error) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message and path.name in message and str(path.parent) not in message, message
    return message


def _zlib_zeros(size: int, block: int = 1 << 20) -> bytes:
    """zlib data of `size` zero bytes, compressing only two blocks: after a full flush deflate starts afresh,
    so every block of zeros compresses to the same bytes; the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    whole_block = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(size, block)
    last = deflate.compress(bytes(rest)) + deflate.flush()
    return b"\x78\xda" + whole_block * count + last + struct.pack(">I", (size % 65521) << 16 | 1)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, pixels: bytes | None = None) -> bytes:
    """A PNG of zero pixels (black; transparent with alpha); `pixels` replaces the image data (a header that lies)."""
    row = 1 + width * PNG_CHANNELS[colour_type] * bit_depth // 8  # a filter byte, then the samples
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = _zlib_zeros(row * height) if pixels is None else pixels
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _encoded(extension: str, image: np.ndarray, *params: int) -> bytes:
    ok, buffer = cv2.imencode(extension, image, list(params))
    assert ok
    return buffer.tobytes()


def raw_h264(path: Path, seconds: float, size: int = 64, fps: int = 25) -> Path:
    """A raw H.264 (Annex B) stream: no container, so its header states neither a duration nor a frame count."""
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(round(seconds * fps)):
            image = np.full((size, size, 3), index * 3 % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


RANDOM = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- image headers


def test_the_png_writer_makes_real_images(tmp_path: Path) -> None:
    """The bombs below come from this writer: small ones decode, so the big ones are real images too."""
    black = load_image(_write(tmp_path / "black.png", png_bytes(300, 200)))
    assert black.shape == (200, 300, 3) and not black.any()
    transparent = load_image(_write(tmp_path / "clear.png", png_bytes(300, 200, bit_depth=16, colour_type=6)))
    assert transparent.shape == (200, 300, 3) and (transparent == 255).all()  # composited on white


@pytest.mark.parametrize(
    ("extension", "params", "chunk"),
    [
        (".png", (), None),
        (".jpg", (), None),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), None),
        (".bmp", (), None),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), b"VP8 "),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), b"VP8L"),
        (".tiff", (), None),
    ],
)
def test_headers_give_the_size_that_decodes(tmp_path: Path, extension: str, params: tuple, chunk: bytes | None) -> None:
    data = _encoded(extension, RANDOM, *params)
    if chunk is not None:
        assert data[12:16] == chunk
    assert _size(data) == (40, 24)
    assert load_image(_write(tmp_path / f"x{extension}", data), max_side=40, max_pixels=40 * 24).shape == (24, 40, 3)


def _size(data: bytes) -> tuple[int, int]:
    header = read_image_header(data, "x")
    return header.width, header.height


def test_jpeg_header_skips_an_exif_thumbnail() -> None:
    """An APP1 segment may hold a whole JPEG (the thumbnail, with its own frame header): it is skipped whole."""
    thumbnail = _encoded(".jpg", RANDOM[:8, :8])
    main = _encoded(".jpg", RANDOM)
    app1 = b"Exif\0\0" + thumbnail
    data = main[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(app1)) + app1 + main[2:]
    assert read_image_header(data, "x") == read_image_header(main, "x")
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (24, 40, 3)


def test_headers_written_by_hand() -> None:
    """Layouts OpenCV does not write: big-endian TIFF, BigTIFF, extended WebP (VP8X), OS/2 BMP."""
    entries = struct.pack(">HHII", 256, 3, 1, 40 << 16) + struct.pack(">HHII", 257, 4, 1, 24)
    assert _size(b"MM\0*" + struct.pack(">IH", 8, 2) + entries) == (40, 24)
    entries = struct.pack("<HHQQ", 256, 16, 1, 40) + struct.pack("<HHQQ", 257, 3, 1, 24)
    assert _size(b"II+\0" + struct.pack("<HHQQ", 8, 0, 16, 2) + entries) == (40, 24)
    vp8x = b"RIFF\0\0\0\0WEBPVP8X" + bytes(8) + (39).to_bytes(3, "little") + (23).to_bytes(3, "little")
    assert _size(vp8x) == (40, 24)
    os2 = b"BM" + bytes(12) + struct.pack("<IHH", 12, 40, 24)
    assert _size(os2) == (40, 24)
    lossy = bytearray(_encoded(".webp", RANDOM, cv2.IMWRITE_WEBP_QUALITY, 80))
    struct.pack_into("<HH", lossy, 26, 40 | 0x4000, 24 | 0xC000)  # VP8's top two bits: an upscaling hint, not size
    assert _size(bytes(lossy)) == (40, 24)


def test_a_top_down_bmp_is_read_as_its_header_says(tmp_path: Path) -> None:
    """A negative BMP height means rows stored top-down (some tools write them so), not a picture -24 pixels high."""
    data = bytearray(_encoded(".bmp", RANDOM))
    (pixels_at,) = struct.unpack_from("<I", data, 10)
    row = 40 * 3  # a multiple of 4: no padding
    rows = [data[pixels_at + i * row : pixels_at + (i + 1) * row] for i in range(24)]
    data[pixels_at : pixels_at + 24 * row] = b"".join(reversed(rows))
    struct.pack_into("<i", data, 22, -24)
    assert _size(bytes(data)) == (40, 24)
    assert np.array_equal(load_image(_write(tmp_path / "top-down.bmp", bytes(data))), RANDOM)


def test_grey_16_bit_and_translucent_images_come_out_as_8_bit_bgr(tmp_path: Path) -> None:
    """Every image reaches the pipelines as HxWx3 uint8: grey repeated in three channels, 16-bit samples scaled
    (65535 is 255, not 65535 cut down), alpha composited on white and rounded."""
    grey = np.array([[0, 100, 200, 255] * 6] * 16, np.uint8)
    got = load_image(_write(tmp_path / "grey.png", _encoded(".png", grey)))
    assert got.shape == (16, 24, 3) and np.array_equal(got, np.repeat(grey[:, :, None], 3, axis=2))
    deep = (grey.astype(np.uint16) * 257)[:, :, None].repeat(3, axis=2)  # 8-bit values as 16-bit ones
    assert np.array_equal(load_image(_write(tmp_path / "deep.png", _encoded(".png", deep))), got)
    translucent = np.dstack([np.full((16, 16, 3), 100, np.uint8), np.full((16, 16), 128, np.uint8)])
    over_white = load_image(_write(tmp_path / "translucent.png", _encoded(".png", translucent)))
    assert (over_white == 177).all()  # 100 over white at 128/255: 177.2, rounded (flooring the share gave 178)


def test_the_smallest_side_accepted_is_16_pixels_and_a_smaller_one_is_told_so(tmp_path: Path) -> None:
    assert load_image(_write(tmp_path / "least.png", png_bytes(16, 16))).shape == (16, 16, 3)
    path = _write(tmp_path / "thin.png", png_bytes(40, 15))
    assert refusal(lambda: load_image(path), path) == "thin.png is 40x15: too small (at least 16x16 pixels)"


BOMBS = [
    pytest.param(12000, 12000, 8, 2, None, id="12000x12000-rgb8"),
    pytest.param(12000, 12000, 16, 6, None, id="12000x12000-rgba16"),
    pytest.param(64000, 64000, 8, 2, _zlib_zeros(1000), id="64000x64000-header-only"),
]


@pytest.mark.parametrize(("width", "height", "depth", "colour", "pixels"), BOMBS)
def test_bombs_are_refused_from_the_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int, depth: int, colour: int, pixels
) -> None:
    path = _write(tmp_path / "bomb.png", png_bytes(width, height, depth, colour, pixels))
    assert path.stat().st_size < 1_200_000  # 0.4 MB and 1.1 MB, as in the issue; decoded: 0.43 and 1.15 GB
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *args: decoded.append(args))
    tracemalloc.start()
    try:
        message = refusal(lambda: load_image(path, max_side=2560), path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"is {width}x{height}, larger than the limit of 2560 pixels" in message and "AVATARBENCH_MAX_SIDE" in message
    assert not decoded and peak < 2 * path.stat().st_size + 1_000_000  # the file's bytes, nothing the size of pixels


def test_the_pixel_cap_holds_below_the_side_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "wide.png", png_bytes(5000, 5000, pixels=_zlib_zeros(1000)))
    monkeypatch.setattr(cv2, "imdecode", lambda *args: pytest.fail("decoded"))
    message = refusal(lambda: load_image(path, max_side=8192, max_pixels=20_000_000), path)
    assert "5000x5000 (25 megapixels), more than the limit of 20 megapixels" in message


def test_a_camera_photo_and_8k_video_pass_the_pixel_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap is meant for bombs, not for a 36-megapixel camera's photos or 8K UHD video (33 megapixels)."""
    photo = _write(tmp_path / "camera.png", png_bytes(7360, 4912, pixels=_zlib_zeros(1000)))
    monkeypatch.setattr(cv2, "imdecode", lambda *args: None)  # past the size checks, nothing is decoded here
    assert "its PNG data is truncated or damaged" in refusal(lambda: load_image(photo, max_side=8192), photo)
    validate_video(VideoInfo(7680, 4320, 25.0, 25, 1.0, False, "hevc"), "8k.mp4", 8192, 10.0)


def test_every_image_extension_is_taken_as_an_image_whatever_its_case() -> None:
    """A photo named .jpeg or .TIF went to the video reader, which took it as a one-frame video."""
    for name in ("a.jpg", "a.JPEG", "a.png", "a.bmp", "a.webp", "a.tif", "a.TIFF"):
        assert is_image(name), name
    assert not any(is_image(name) for name in ("a.mp4", "a.gif", "a.mov", "a.jpg.mp4"))


def test_a_sliver_too_narrow_and_too_long_is_told_both(tmp_path: Path) -> None:
    """10000x10 was "too small" only: widening it would still leave it past the side limit."""
    path = _write(tmp_path / "sliver.png", png_bytes(10000, 10, pixels=_zlib_zeros(1000)))
    message = refusal(lambda: load_image(path, max_side=4096), path)
    assert message == ("sliver.png is 10000x10: too narrow (at least 16x16 pixels) and too long (at most 4096 pixels "
                       "on the longer side, AVATARBENCH_MAX_SIDE)")  # fmt: skip
    assert "too small" in refusal(lambda: load_image(path, max_side=10000), path)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


DAMAGED = [
    pytest.param("empty.png", b"", "is empty (0 bytes); accepted: PNG, JPEG, BMP, WebP or TIFF", id="zero-bytes"),
    pytest.param("notes.png", b"this is not an image\n" * 20, "not a PNG, JPEG, BMP, WebP or TIFF file", id="text"),
    pytest.param("clip.jpg", b"\x00\x00\x00\x18ftypmp42" + bytes(64), "is a video (MP4/MOV)", id="video-renamed"),
    pytest.param("cut.png", _half(_encoded(".png", RANDOM)), "its PNG data is truncated or damaged", id="png-cut"),
    pytest.param("cut.jpg", _half(_encoded(".jpg", RANDOM)), "its JPEG data is truncated or damaged", id="jpeg-cut"),
    pytest.param("cut.webp", _half(_encoded(".webp", RANDOM)), "WebP data is truncated", id="webp-cut"),
    # OpenCV writes the TIFF directory after the pixels: cut in half, the header is what goes missing
    pytest.param("cut.tiff", _half(_encoded(".tiff", RANDOM)), "its TIFF header is truncated", id="tiff-cut"),
    pytest.param("stub.png", b"\x89PNG\r\n\x1a\n\0\0\0\x0dIH", "its PNG header is truncated", id="png-header-cut"),
    pytest.param("stub.jpg", _encoded(".jpg", RANDOM)[:30], "its JPEG header is truncated", id="jpeg-header-cut"),
]


@pytest.mark.parametrize(("name", "data", "expected"), DAMAGED)
def test_damaged_images_get_one_line(tmp_path: Path, name: str, data: bytes, expected: str) -> None:
    path = _write(tmp_path / name, data)
    assert expected in refusal(lambda: load_image(path), path)


def test_missing_image_and_folder(tmp_path: Path) -> None:
    assert "image file not found" in refusal(lambda: load_image(tmp_path / "gone.png"), tmp_path / "gone.png")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert "is not a file" in refusal(lambda: load_image(folder), folder)


def test_an_animated_webp_or_png_is_refused_not_read_as_its_first_frame(tmp_path: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 32, 3), 60 * k, np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "moving.webp", save_all=True, append_images=frames[1:], duration=40)
    frames[1].save(tmp_path / "still.webp", lossless=True)
    message = refusal(lambda: load_image(tmp_path / "moving.webp"), tmp_path / "moving.webp")
    assert "is an animated WebP: give one still image, or the animation as a video" in message
    assert load_image(tmp_path / "still.webp").max() == 60
    frames[0].save(tmp_path / "moving.png", save_all=True, append_images=frames[1:], duration=40)  # read as frame 0
    message = refusal(lambda: load_image(tmp_path / "moving.png"), tmp_path / "moving.png")
    assert "is an animated PNG: give one still image, or the animation as a video" in message
    frames[1].save(tmp_path / "still.png")
    assert load_image(tmp_path / "still.png").max() == 60


def test_a_video_given_as_an_image_is_named_as_one(tmp_path: Path) -> None:
    """It was "not a PNG, JPEG, ... file", which left the user to guess."""
    clip = Path(__file__).resolve().parent.parent / "assets" / "face-video.mp4"
    message = refusal(lambda: load_image(clip), clip)
    assert "face-video.mp4 is a video (MP4/MOV), where a still image (PNG, JPEG" in message and "named" not in message
    renamed = _write(tmp_path / "clip.jpg", clip.read_bytes())
    assert "a file named as an image is read as one: name it .mp4" in refusal(lambda: load_image(renamed), renamed)
    gif = _write(tmp_path / "moving.png", b"GIF89a" + bytes(32))  # it was told to call itself .mp4
    assert "is a video (GIF), where a still image" in (message := refusal(lambda: load_image(gif), gif))
    assert "name it .gif where videos are accepted" in message
    avif = _write(tmp_path / "photo.jpg", bytes([0, 0, 0, 28]) + b"ftypavif" + bytes(16))  # it was "a video"
    assert "photo.jpg is an AVIF or HEIC image, which is not read here: convert it to PNG or JPEG" in refusal(
        lambda: load_image(avif), avif
    )


# --------------------------------------------------------------------------- videos


def test_a_stream_without_duration_is_held_to_the_limit(tmp_path: Path) -> None:
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "AVATARBENCH_MAX_SECONDS": "1"})
    path = raw_h264(tmp_path / "raw.mp4", seconds=3)
    info = probe_video(path)
    assert (info.duration_s, info.frames, info.fps) == (None, None, 25.0)
    validate_video(info, path.name, settings.max_side, settings.max_seconds)  # nothing to check it against
    frames = []
    message = refusal(lambda: frames.extend(read_frames(path, max_seconds=settings.max_seconds)), path)
    assert "runs longer than the limit of 1 s (25 frames at 25 fps, AVATARBENCH_MAX_SECONDS)" in message
    assert len(frames) == 25  # stopped at the limit, not after 3 s
    assert sum(1 for _ in read_frames(path, max_seconds=3)) == 75  # exactly at the limit is fine


def test_a_frame_rate_out_of_range_is_said_with_its_digits() -> None:
    for fps, said in ((2 / 3000, "reports 0.000667 frames per second"), (240.0, "reports 240 frames per second")):
        with pytest.raises(MediaError, match=f"clip.mp4 {said}; accepted: 1 to 120"):  # it said 0.00
            validate_video(VideoInfo(64, 64, fps, 2, 3000.0, False, "h264"), "clip.mp4", 4096, 10**6)


def test_a_stream_cannot_grow_past_the_size_its_header_states(tmp_path: Path) -> None:
    small, large = raw_h264(tmp_path / "a.h264", 0.4), raw_h264(tmp_path / "b.h264", 0.4, size=128)
    path = _write(tmp_path / "grows.mp4", small.read_bytes() + large.read_bytes())  # a second SPS mid-stream
    assert (probe_video(path).width, probe_video(path).height) == (64, 64)
    frames = []
    message = refusal(lambda: frames.extend(read_frames(path)), path)
    assert "changes its frame size from 64x64 to 128x128 at frame 11" in message and len(frames) == 10


def _mp4(path: Path) -> bytearray:
    """A second of 64x64 H.264 in MP4, its index (moov) after the pictures (mdat)."""
    writer = VideoWriter(path, 25, 64, 64, codec="libx264")
    for index in range(25):
        writer.write(np.full((64, 64, 3), index * 9, np.uint8))
    writer.close()
    return bytearray(path.read_bytes())


def _pictures_zeroed(path: Path) -> bytes:
    data = _mp4(path)
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)
    return bytes(data)


def _index_first_mp4(path: Path) -> bytes:
    """A second of 64x64 noise as H.264 in MP4 with its index (moov) before the pictures, as for the web."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        for index in range(25):
            noise = np.random.default_rng(index).integers(0, 256, (64, 64, 3), np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(noise, format="bgr24")))
        container.mux(video.encode(None))
    return path.read_bytes()


def _sound_only_mkv(path: Path) -> Path:
    """A Matroska file declaring an H.264 track that holds no picture, beside a second of sound."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*sound.encode(frame), *sound.encode(None)]:
            container.mux(packet)
    return path


UNREADABLE = [
    pytest.param("empty.mp4", lambda d: b"", "is empty (0 bytes); accepted: .mp4, .mov", id="zero-bytes"),
    pytest.param("notes.mp4", lambda d: b"not a video\n" * 50, "could not be read as a video", id="text"),
    pytest.param(
        "cut.mp4",
        lambda d: _half(_mp4(d / "whole.mp4")),  # the index goes with the second half
        "cut.mp4 could not be read as a video (Invalid data found when processing input); accepted: .mp4",
        id="truncated",
    ),
]


@pytest.mark.parametrize(("name", "make", "expected"), UNREADABLE)
def test_unreadable_videos_get_one_line(tmp_path: Path, name: str, make: Callable[[Path], bytes], expected: str):
    path = _write(tmp_path / name, make(tmp_path))
    assert expected in refusal(lambda: probe_video(path), path)


def test_missing_video(tmp_path: Path) -> None:
    assert "video file not found" in refusal(lambda: probe_video(tmp_path / "gone.mp4"), tmp_path / "gone.mp4")


def test_videos_whose_pictures_do_not_decode(tmp_path: Path) -> None:
    """The header reads fine, so these get past probe_video; reading the frames says what is wrong."""
    zeroed = _write(tmp_path / "zeroed.mp4", _pictures_zeroed(tmp_path / "whole.mp4"))
    assert probe_video(zeroed).frames == 25
    message = refusal(lambda: list(read_frames(zeroed)), zeroed)
    assert "decoding failed after 0 frames (Invalid data found when processing input)" in message
    cut = _write(tmp_path / "cut.mp4", _half(_index_first_mp4(tmp_path / "web.mp4")))  # the index is whole
    assert probe_video(cut).frames == 25
    for threads in (None, 1):  # FFmpeg's threaded decoders dropped the error: 12 of 25 frames, said nowhere
        message = refusal(lambda: list(read_frames(cut, threads=threads)), cut)  # noqa: B023
        assert re.search(r"cut\.mp4( is cut off|: decoding failed) after \d+ frames", message), message
    empty_track = _sound_only_mkv(tmp_path / "sound.mkv")
    assert probe_video(empty_track).width == 64
    assert "holds no decodable video frame" in refusal(lambda: list(read_frames(empty_track)), empty_track)


def test_an_image_renamed_mp4_is_a_one_frame_video(tmp_path: Path) -> None:
    path = _write(tmp_path / "still.mp4", png_bytes(32, 32))
    assert probe_video(path).width == 32 and sum(1 for _ in read_frames(path)) == 1


def test_frames_are_converted_to_yuv_as_ffmpeg_does_but_faster(tmp_path: Path) -> None:
    """VideoWriter's BGR to yuv420p (to_yuv420p): FFmpeg's matrix and range, so colours come back as they went in."""
    face = cv2.resize(cv2.imread(str(Path(__file__).resolve().parent.parent / "assets" / "face.jpg")), (320, 240))
    ffmpeg = av.VideoFrame.from_ndarray(face, format="bgr24").reformat(format="yuv420p").to_ndarray()
    ours = to_yuv420p(face)
    assert ours.shape == ffmpeg.shape == (360, 320) and ours.dtype == np.uint8
    assert np.abs(ours[:240].astype(int) - ffmpeg[:240]).max() <= 1  # luma: rounding only
    assert np.abs(ours[240:].astype(int) - ffmpeg[240:]).mean() < 1.5  # chroma: 2x2 means against FFmpeg's samples
    path = tmp_path / "colours.mp4"
    writer = VideoWriter(path, 25, 320, 240, codec="libx264")
    for _ in range(3):
        writer.write(face)
    writer.close()
    back = next(iter(read_frames(path)))
    # crf 18 and chroma subsampling (FFmpeg's own conversion: 3.5 and a shift of 2), no colour shift or range change
    assert np.abs(back.astype(int) - face).mean() < 4
    assert all(abs(float(back[..., c].mean()) - float(face[..., c].mean())) < 1.5 for c in range(3))


def test_a_29_97_fps_video_keeps_its_rate_and_every_frame(tmp_path: Path) -> None:
    """NTSC's 30000/1001: written and probed as 29.97, never 29 or 30 (the pictures then drift from the sound, by a
    second every 30 s or every 17 minutes), and every frame counted, also where the header gives only a duration
    (Matroska)."""
    ntsc = 30000 / 1001
    mp4 = tmp_path / "ntsc.mp4"
    writer = VideoWriter(mp4, ntsc, 16, 16, codec="libx264")
    for index in range(30):
        writer.write(np.full((16, 16, 3), index * 8, np.uint8))
    writer.close()
    info = probe_video(mp4)
    assert info.fps == pytest.approx(ntsc, abs=1e-9) and info.frames == 30 and not info.has_audio
    assert info.duration_s == pytest.approx(1.001, abs=1e-6) and sum(1 for _ in read_frames(mp4)) == 30
    mkv = tmp_path / "ntsc.mkv"
    with av.open(str(mkv), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index in range(30):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), index, np.uint8), "bgr24")))
        container.mux(stream.encode(None))
    assert probe_video(mkv).frames == 30  # 1.001 s x 29.97 is 29.999999999999996 in floats


def test_the_limits_on_rate_and_length_hold_at_their_edges() -> None:
    """1 and 120 fps are accepted, and a video exactly as long as the limit; a tenth of a second more is refused
    with its length and the limit."""

    def video(fps: float, seconds: float) -> VideoInfo:
        return VideoInfo(64, 64, fps, round(fps * seconds), seconds, False, "h264")

    for fps in (1.0, 120.0):
        validate_video(video(fps, 12.0), "clip.mp4", 4096, 12.0)
    with pytest.raises(MediaError) as refused:
        validate_video(video(25.0, 12.1), "clip.mp4", 4096, 12.0)
    assert str(refused.value) == (
        "clip.mp4 lasts 12.1 s, longer than the limit of 12 s (AVATARBENCH_MAX_SECONDS); trim it first"
    )


def test_the_streamed_limit_counts_every_frame_that_starts_within_it(tmp_path: Path) -> None:
    """Half a second at 25 fps is 12.5 frames: frames 0 to 12 start before 0.5 s, so 13 pass and the 14th is
    refused (rounding 12.5 to even, or down, refused a clip the limit allows)."""
    thirteen, fourteen = raw_h264(tmp_path / "13.h264", 13 / 25), raw_h264(tmp_path / "14.h264", 14 / 25)
    assert sum(1 for _ in read_frames(thirteen, max_seconds=0.5)) == 13
    frames: list[np.ndarray] = []
    message = refusal(lambda: frames.extend(read_frames(fourteen, max_seconds=0.5)), fourteen)
    assert "runs longer than the limit of 0.5 s (13 frames at 25 fps" in message and len(frames) == 13


def test_the_sound_is_kept_whole_and_the_video_s_length_is_its_pictures(tmp_path: Path) -> None:
    """Two seconds of sound under one second of pictures: the MP4 keeps all of the sound (the caller sizes it), and
    the probed length and frame count are the pictures' (the container's longer length would be refused against
    the limit and count frames that are not there)."""
    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    path = tmp_path / "talk.mp4"
    writer = VideoWriter(path, 25, 16, 16, audio=tone, codec="libx264")
    for _ in range(25):
        writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.close()
    info = probe_video(path)
    assert info.has_audio and info.duration_s == pytest.approx(1.0) and info.frames == 25
    with av.open(str(path)) as container:
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(sound) >= 2 * rate  # whole, and AAC's last frame padded; cut at the pictures' end it was 16384
    assert declared_seconds(path) == pytest.approx(2.0, abs=0.1)  # a job's split is planned on the sound's length
    assert declared_seconds(path, "video") == pytest.approx(1.0)
    assert declared_seconds(raw_h264(tmp_path / "silent.h264", 0.2)) is None


def test_odd_sizes_are_padded_by_repeating_the_edge_and_a_frame_of_another_size_is_refused(tmp_path: Path) -> None:
    """yuv420p needs even sides: a 17x15 video is written 18x16 with its last column and row repeated (black bars
    showed at the edge), and a frame of another size is refused rather than stretched by the encoder to fit."""
    path = tmp_path / "odd.mp4"
    writer = VideoWriter(path, 25, 17, 15, codec="libx264")
    for _ in range(3):
        writer.write(np.full((15, 17, 3), 200, np.uint8))
    with pytest.raises(MediaError, match="frame is 18x15, writer expects 17x15"):
        writer.write(np.zeros((15, 18, 3), np.uint8))
    writer.close()
    first = next(iter(read_frames(path)))
    assert first.shape == (16, 18, 3) and np.abs(first.astype(int) - 200).max() < 8


def test_a_sounds_own_rate_and_channels_reach_the_mp4(tmp_path: Path) -> None:
    """A Sound at 48 kHz in stereo (engine/core/audio.py's) is muxed at 48 kHz in two channels, left and right kept
    apart: taken at the writer's 16 kHz default, or as mono, it played three or two times too long."""
    from engine.core.audio import Sound

    rate = 48000
    left = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    path = tmp_path / "stereo.mp4"
    writer = VideoWriter(path, 25, 16, 16, audio=Sound(np.stack([left, np.zeros_like(left)], axis=1), rate),
                         codec="libx264")  # fmt: skip
    for _ in range(25):
        writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.close()
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    sound = np.concatenate([f.to_ndarray() for f in frames], axis=1)  # planar: (channels, samples)
    assert frames[0].sample_rate == rate and sound.shape[0] == 2 and rate <= sound.shape[1] < rate + 2048
    assert np.abs(sound[0]).max() > 0.2 and np.abs(sound[1]).max() < 0.01


def test_lossless_segments_give_back_every_byte_at_the_videos_rate(tmp_path: Path) -> None:
    """A split job's segments (LosslessWriter) decode to exactly the frames written, at 29.97 fps as given, and a
    frame of another size is refused rather than stretched."""
    from engine.core.media import LosslessWriter

    frames = [np.random.default_rng(seed).integers(0, 256, (16, 24, 3), np.uint8) for seed in range(3)]
    path = tmp_path / "segment.mkv"
    writer = LosslessWriter(path, 30000 / 1001, 24, 16)
    for frame in frames:
        writer.write(frame)
    with pytest.raises(MediaError, match="frame is 16x16, writer expects 24x16"):
        writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.close()
    assert all(np.array_equal(a, b) for a, b in zip(read_frames(path), frames, strict=True))
    assert probe_video(path).fps == pytest.approx(30000 / 1001, abs=1e-9)


def test_the_first_h264_encoder_that_really_encodes_is_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVENC is listed in every FFmpeg build but works only with a GPU and its driver: it is preferred where it
    encodes, passed over where it is listed and fails, and no working encoder at all is a setup error naming them."""
    import engine.core.media as media

    def probes(working: set[str]):
        return lambda codec: EncoderProbe(codec, listed=True, works=codec in working)

    try:
        for working, expected in (({"h264_nvenc", "libx264"}, "h264_nvenc"), ({"libx264", "libopenh264"}, "libx264"),
                                  ({"libopenh264"}, "libopenh264")):  # fmt: skip
            monkeypatch.setattr(media, "probe_encoder", probes(working))
            pick_h264_encoder.cache_clear()
            assert pick_h264_encoder() == expected
        monkeypatch.setattr(media, "probe_encoder", probes(set()))
        pick_h264_encoder.cache_clear()
        with pytest.raises(SetupError, match="no working H.264 encoder among " + ", ".join(H264_ENCODERS)):
            pick_h264_encoder()
    finally:
        pick_h264_encoder.cache_clear()  # the real machine's answer for the tests after this one


# ------------------------------------------------------------------------------------- NVDEC


def _face_clip(path: Path, frames: int = 4) -> Path:
    face = cv2.resize(cv2.imread(str(Path(__file__).resolve().parent.parent / "assets" / "face.jpg")), (320, 240))
    writer = VideoWriter(path, 25, 320, 240, codec="libx264")
    for i in range(frames):
        writer.write(np.roll(face, 3 * i, axis=1))
    writer.close()
    return path


def test_nvdec_asked_for_where_it_cannot_start_decodes_on_the_cpu_and_says_why(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/test_gpu.py checks NVDEC itself")
    clip = _face_clip(tmp_path / "clip.mp4")
    asked = Decoding(cuda_device=0)
    frames = list(read_frames(clip, decoding=asked))
    plain = Decoding()
    assert all((a == b).all() for a, b in zip(frames, read_frames(clip, decoding=plain), strict=True))
    assert asked.ran_on == plain.ran_on == "cpu" and plain.reason is None
    assert asked.reason is not None and asked.reason.startswith("NVDEC could not start on cuda:0 (")


def test_where_nvdec_fails_partway_the_rest_is_decoded_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hardware decode error mid-video (here made after 3 frames) is not a damaged file: the frames keep coming,
    from the CPU, in order, none twice, and the reason is kept."""
    import engine.core.media as media

    clip = _face_clip(tmp_path / "clip.mp4", frames=8)
    expected = list(read_frames(clip))
    converted = {"frames": 0}

    def claims_nvdec(stream, decoding: Decoding) -> None:  # where NVDEC was asked for, say it ran
        decoding.ran_on = "nvdec" if decoding.cuda_device is not None else "cpu"

    def fails_after_three(frame):
        converted["frames"] += 1
        if converted["frames"] > 3:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return frame

    monkeypatch.setattr(media, "_note_decoder", claims_nvdec)
    monkeypatch.setattr(media, "_as_software_decoders", fails_after_three)
    decoding = Decoding(cuda_device=0)
    frames = list(read_frames(clip, decoding=decoding))
    assert len(frames) == 8 and all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))
    assert decoding.ran_on == "cpu" and decoding.reason.startswith("NVDEC failed after 3 frames (")
    assert decoding.reason.endswith("the rest were decoded on the CPU")
    # a video that fails on the CPU too is still refused as damaged
    monkeypatch.setattr(media, "_note_decoder", lambda stream, decoding: setattr(decoding, "ran_on", "cpu"))
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) * 2 // 3])
    with pytest.raises(MediaError):
        list(read_frames(damaged, decoding=Decoding(cuda_device=0)))


@pytest.mark.parametrize("nvdec_format", sorted(NVDEC_PLANAR))
def test_nvdec_frames_convert_to_bgr_exactly_as_the_software_decoders_do(nvdec_format: str) -> None:
    """NVDEC's frames (NV12, P010, P016) are rearranged into the planar format the software decoder gives before
    FFmpeg's conversion to BGR, which upsamples interleaved chroma differently."""
    face = cv2.resize(cv2.imread(str(Path(__file__).resolve().parent.parent / "assets" / "face.jpg")), (320, 240))
    software = av.VideoFrame.from_ndarray(face, format="bgr24").reformat(format=NVDEC_PLANAR[nvdec_format])
    software.color_range = 2  # a full-range stream stays full range through the rearrangement
    nvdec = software.reformat(format=nvdec_format)
    expected = software.to_ndarray(format="bgr24")
    assert np.array_equal(_as_software_decoders(nvdec).to_ndarray(format="bgr24"), expected)
    if nvdec_format == "nv12":  # what the rearrangement is for: converted directly, edges move by many grey levels
        assert np.abs(nvdec.to_ndarray(format="bgr24").astype(int) - expected).max() > 8


@pytest.mark.parametrize(
    ("is_hwaccel", "chosen", "asked", "ran_on", "reason"),
    [
        (True, "cuda", 0, "nvdec", None),
        (True, "yuv420p10le", 0, "cpu", "NVDEC cannot decode this h264 stream"),
        (False, "yuv420p", 0, "cpu", "FFmpeg has no CUDA decoder for h264"),
        (False, "yuv420p", None, "cpu", None),
    ],
)
def test_where_the_frames_were_decoded_is_read_from_the_format_ffmpeg_chose(
    is_hwaccel: bool, chosen: str, asked: int | None, ran_on: str, reason: str | None
) -> None:
    from types import SimpleNamespace

    context = SimpleNamespace(is_hwaccel=is_hwaccel, format=SimpleNamespace(name=chosen), name="h264")
    decoding = Decoding(cuda_device=asked)
    _note_decoder(SimpleNamespace(codec_context=context), decoding)
    assert decoding.ran_on == ran_on
    assert decoding.reason == reason if reason is None else decoding.reason.startswith(reason)


# ------------------------------------------------------------------------------------- orientation


def _oriented(fmt: str, orientation: int, image: np.ndarray) -> bytes:
    """`image` (BGR or BGRA) saved by Pillow with an EXIF Orientation tag."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    mode = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    out = io.BytesIO()
    options = {"quality": 100} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(cv2.cvtColor(image, mode)).save(out, format=fmt, exif=exif.tobytes(), **options)
    return out.getvalue()


def _marked(height: int = 20, width: int = 30) -> np.ndarray:
    """An image no turn or mirror maps onto itself: one bright corner, one green edge."""
    image = np.full((height, width, 3), 40, np.uint8)
    image[:5, :5] = 255
    image[-3:, :, 1] = 200
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_images_are_turned_upright_by_their_exif_orientation_as_imread_does(tmp_path, fmt, orientation) -> None:
    """A phone photo stores its pixels as the sensor saw them and the turn in EXIF: the face must come out upright,
    exactly as upstream's cv2.imread gives it (which also decides its size)."""
    data = _oriented(fmt, orientation, _marked())
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    got = load_image(_write(tmp_path / f"face.{fmt.lower()}", data))
    assert got.shape == expected.shape == ((20, 30, 3) if orientation < 5 else (30, 20, 3))
    assert np.array_equal(got, expected) and got.flags.c_contiguous


def test_exif_orientation_also_turns_images_with_alpha_and_tiff_once(tmp_path) -> None:
    with_alpha = np.dstack([_marked(), np.full((20, 30), 255, np.uint8)])
    turned = load_image(_write(tmp_path / "alpha.png", _oriented("PNG", 6, with_alpha)))
    assert np.array_equal(turned, cv2.rotate(_marked(), cv2.ROTATE_90_CLOCKWISE))
    # OpenCV's TIFF decoder turns the pixels itself (even unchanged): turned once, as imread gives it
    tiff = _oriented("TIFF", 6, _marked())
    expected = cv2.imdecode(np.frombuffer(tiff, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(load_image(_write(tmp_path / "face.tiff", tiff)), expected) and expected.shape == (30, 20, 3)
    assert exif_orientation(b"\xff\xd8\xff\xe1 broken") == 1


def _rotated_video(path: Path, degrees: int, frames: int = 3) -> Path:
    """An H.264 MP4 of marked 32x48 frames whose display matrix turns them `degrees` counter-clockwise."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"qp": "0"}
        stream.set_display_rotation(degrees)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_marked(32, 48)), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_videos_are_turned_upright_by_their_display_rotation_as_videocapture_does(tmp_path, degrees) -> None:
    """Phones record portrait video as landscape pixels plus a display rotation; OpenCV's VideoCapture (upstream's
    reader) applies it, and so must we: frames and probed size as shown."""
    path = _rotated_video(tmp_path / f"turned{degrees}.mp4", degrees)
    capture = cv2.VideoCapture(str(path))
    expected = []
    while (grabbed := capture.read())[0]:
        expected.append(grabbed[1])
    capture.release()
    frames = list(read_frames(path))
    info = probe_video(path)
    shown = (48, 32) if degrees in (0, 180) else (32, 48)
    assert (info.width, info.height) == shown and info.turns == degrees // 90
    assert len(frames) == len(expected) == 3
    for got, want in zip(frames, expected, strict=True):
        assert got.shape == want.shape == (shown[1], shown[0], 3)
        assert np.array_equal(got, want) and got.flags.c_contiguous


def test_a_name_too_long_for_the_file_system_is_a_message(tmp_path: Path) -> None:
    """`avatar --face` with a 300-character name ended in OSError: File name too long."""
    with pytest.raises(MediaError, match=r"face file 'x{60}'\.\.\. cannot be opened: File name too long"):
        check_file(tmp_path / ("x" * 300 + ".png"), "face", "an image")
    with pytest.raises(MediaError, match=r"face file not found: missing\.png"):
        check_file(tmp_path / "missing.png", "face", "an image")


def test_written_videos_state_their_colour_matrix_and_range(tmp_path: Path) -> None:
    """to_yuv420p's BT.601 limited range, tagged: untagged HD video is shown by some players as BT.709."""
    import av

    from engine.core.media import LIMITED_RANGE, SMPTE170M, VideoWriter

    writer = VideoWriter(tmp_path / "tagged.mp4", 25, 64, 48, codec="libx264")
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.close()
    with av.open(str(tmp_path / "tagged.mp4")) as container:
        frame = next(container.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (SMPTE170M, LIMITED_RANGE)


def test_a_still_image_named_as_a_video_is_sized_from_its_header_before_ffmpeg_opens_it(tmp_path: Path) -> None:
    """FFmpeg decodes a still to open it: a 2 MB PNG declaring 16000x16000, named .mp4, took 2.2 GB and 15 s before
    validate_video refused it. Here the PNG has no pixels at all: FFmpeg could only say it cannot be read."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 16000, 16000, 16, 6, 0, 0, 0)
    bomb = tmp_path / "face.mp4"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)))
    with pytest.raises(MediaError, match=r"face\.mp4 is 16000x16000, larger than the limit of 2560 pixels"):
        probe_video(bomb, max_side=2560)
    with pytest.raises(MediaError, match="larger than the limit of 8192 pixels"):  # the most any setting allows
        probe_video(bomb)
