"""The catalogue of bad inputs, sent through the launched app's API: each one gets a one-line message naming the
problem (never a traceback, never a server path), and the app keeps answering afterwards."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import RunningApp, start_app, stop_app

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _png(width: int, height: int, bit_depth: int = 8, colour: int = 2, rows: bool = True) -> bytes:
    """A PNG of that size whose pixels are all zero, written without ever holding them: a decompression bomb of
    a few hundred KiB when `rows`, or only a header claiming the size when not."""
    channels = {0: 1, 2: 3, 6: 4}[colour]
    row = b"\x00" * (1 + width * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush() if rows else b""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A float32 WAV (format 3), so NaN and inf survive into the file."""
    body = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data"
            + struct.pack("<I", len(body)) + body)  # fmt: skip


def _raw_h264(path: Path, seconds: float) -> Path:
    """An H.264 elementary stream (no container, so no duration in any header), named .mp4."""
    import av

    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        for _ in range(int(seconds * 25)):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    made: dict[str, bytes] = {
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n" * 20,
        "text.mp4": b"this is not a video\n" * 20,
        "text.wav": b"this is not audio\n" * 20,
        "image.wav": (ASSETS / "face.jpg").read_bytes(),  # a photo named as speech
        "empty.wav": b"",
        "truncated.jpg": (ASSETS / "face.jpg").read_bytes()[:600],
        "truncated.mp4": (ASSETS / "driving.mp4").read_bytes()[:3000],
        "bomb.png": _png(12000, 12000),
        "bomb16.png": _png(6000, 6000, bit_depth=16, colour=6),
        "claims-64000.png": _png(64000, 64000, rows=False),
        "nan.wav": _wav(np.full(16000, np.nan, np.float32)),
        "inf.wav": _wav(np.full(16000, np.inf, np.float32)),
        "no-samples.wav": _wav(np.zeros(0, np.float32)),
        "page.onnx": b"<!DOCTYPE html><html><body>Download</body></html>",
        "empty.onnx": b"",
        "not.npz": b"PK\x03\x04 not really a zip",
        "motion.npz": b"",
        "report.json": b'{"machine": "m"}',
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    np.savez(folder / "motion.npz", kp=np.zeros((3, 21, 3)))  # an .npz, but not a motion template
    blank = np.full((200, 200, 3), 128, np.uint8)
    import cv2

    cv2.imwrite(str(folder / "blank.png"), blank)
    _raw_h264(folder / "long-headerless.mp4", seconds=16)
    with zipfile.ZipFile(folder / "traversal.zip", "w") as z:
        z.writestr("../../evil.onnx", b"x")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.onnx", b"\x00" * (64 * 2**20))
    (folder / "bomb.zip").write_bytes(bomb.getvalue())
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    running = start_app(tmp_path_factory.mktemp("bad-app"), AVATARBENCH_MAX_SECONDS="12")
    try:
        yield running
    finally:
        stop_app(running)


FACE, SPEECH, DRIVING = "assets/face.jpg", "assets/speech.wav", "assets/driving.mp4"
F = "file:"  # a value naming one of the files above (or an asset), sent as an upload

CASES: list[tuple[str, dict, str]] = [
    # lip-sync: media
    ("/lipsync", {"face": F + "empty.jpg", "audio": F + SPEECH}, "empty.jpg"),
    ("/lipsync", {"face": F + "text.jpg", "audio": F + SPEECH}, "text.jpg"),
    ("/lipsync", {"face": F + "text.mp4", "audio": F + SPEECH}, "text.mp4"),
    ("/lipsync", {"face": F + "truncated.jpg", "audio": F + SPEECH}, "truncated.jpg"),
    ("/lipsync", {"face": F + "truncated.mp4", "audio": F + SPEECH}, "truncated.mp4"),
    ("/lipsync", {"face": F + "bomb.png", "audio": F + SPEECH}, "12000x12000"),
    ("/lipsync", {"face": F + "bomb16.png", "audio": F + SPEECH}, "6000x6000"),
    ("/lipsync", {"face": F + "claims-64000.png", "audio": F + SPEECH}, "64000x64000"),
    ("/lipsync", {"face": F + "blank.png", "audio": F + SPEECH}, "no face"),
    ("/lipsync", {"face": F + FACE, "audio": F + "text.wav"}, "text.wav"),
    ("/lipsync", {"face": F + FACE, "audio": F + "image.wav"}, "image.wav is an image; speech comes from"),
    ("/lipsync", {"face": F + FACE, "audio": F + "empty.wav"}, "empty.wav"),
    ("/lipsync", {"face": F + FACE, "audio": F + "nan.wav"}, "nan.wav"),
    ("/lipsync", {"face": F + FACE, "audio": F + "inf.wav"}, "inf.wav"),
    ("/lipsync", {"face": F + FACE, "audio": F + "no-samples.wav"}, "no-samples.wav"),
    # lip-sync: options
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "batch_size": 0}, "batch size 0 is outside 1..4096"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "batch_size": 1e9}, "batch size 1000000000 is outside"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "detect_scale": 5}, "detect scale 5 is outside 0.1..1"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "pads": "a,b"}, "pads: 'a,b' is not"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "box": "1,2"}, "must be four pixel coordinates"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "audio_offset": 999}, "audio offset 999 is outside"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "precision": "fp7"}, "precision 'fp7' is not one of"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "engine": "sadtalker"}, "engine 'sadtalker' is not"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "checkpoint": "/etc/passwd"}, "paths and downloads are"),
    ("/lipsync", {"face": F + FACE, "audio": F + SPEECH, "checkpoint": "hf:x/y/z.pth"}, "paths and downloads are"),
    ("/lipsync", {"face": None, "audio": F + SPEECH}, "face is required"),
    # portrait
    ("/portrait", {"source": F + "empty.jpg", "driving": F + DRIVING}, "empty.jpg"),
    (
        "/portrait",
        {"source": F + FACE, "driving": F + "text.mp4"},
        "; a driving file may also be an image (PNG, JPEG, BMP, WebP or TIFF) or a motion template (.npz, .pkl)",
    ),
    ("/portrait", {"source": F + FACE, "driving": F + "motion.npz"}, "motion template"),
    ("/portrait", {"source": F + FACE, "driving": F + "long-headerless.mp4"}, "longer than the limit of 12 s"),
    ("/portrait", {"source": F + FACE, "driving": F + DRIVING, "multiplier": 99}, "multiplier 99 is outside 0..3"),
    ("/portrait", {"source": F + FACE, "driving": F + DRIVING, "pitch": 1000}, "pitch 1000 is outside -45..45"),
    ("/portrait", {"source": F + FACE, "driving": F + DRIVING, "eye_open": -1}, "eye open -1 is outside 0..0.8"),
    ("/portrait", {"source": F + FACE, "driving": F + DRIVING, "region": "hair"}, "region 'hair' is not one of"),
    ("/portrait", {"source": F + FACE, "driving": F + DRIVING, "max_frames": 0}, "max frames 0 is outside"),
    ("/portrait", {"source": F + FACE, "driving": F + DRIVING, "weights": "/etc"}, "paths and downloads are"),
    # ONNX eval
    ("/onnx_submit", {"model": F + "empty.onnx"}, "empty.onnx"),
    ("/onnx_submit", {"model": F + "page.onnx"}, "not an ONNX model"),
    ("/onnx_submit", {"model": F + "traversal.zip"}, "has a '..' component"),
    ("/onnx_submit", {"model": F + "bomb.zip"}, "refused as a zip bomb"),
    ("/onnx_submit", {"example": "wav2lip", "providers": "tpu"}, "providers 'tpu' is not one of cpu, cuda, trt"),
    ("/onnx_submit", {"example": "wav2lip", "batch_sizes": "0"}, "batch sizes 0 is outside 1..4096"),
    ("/onnx_submit", {"example": "wav2lip", "runs": -1}, "runs -1 is outside"),
    ("/onnx_submit", {"example": "wav2lip", "symbols": "N"}, "is not NAME=VALUE"),
    ("/onnx_submit", {"example": "wav2lip", "labels": "a"}, "labels: 'a' is not"),
    ("/onnx_submit", {"example": "resnet"}, "example 'resnet' is not one of"),
    ("/onnx_submit", {"example": "wav2lip", "inputs": F + "not.npz"}, "not.npz"),
    ("/onnx_submit", {}, "give either a model"),
    # sweeps, plans, costs
    ("/bench_submit", {"points": "{"}, "points: not valid JSON"),
    ("/bench_submit", {"points": json.dumps([{"device": "cuda"}])}, "no CUDA device"),
    ("/bench_submit", {"batch": "0", "runtime": "tensor"}, "runtime 'tensor' is not one of"),
    ("/bench_submit", {"precision": "fp7", "runs": 0}, "precision 'fp7' is not one of"),
    ("/bench_submit", {"model": "/etc/passwd"}, "no model '/etc/passwd'"),
    ("/bench_import", {"report_json": "{"}, "not valid JSON"),
    ("/bench_import", {"report_json": '{"machine": "m", "model": {}, "config": {}, "results": []}'}, "machine must"),
    ("/plan_llm", {"gpu": "T4", "llm": "mistral-7b", "max_total_tokens": 1e15}, "max total tokens"),
    ("/plan_llm", {"gpu": "T4", "llm": "mistral-7b", "memory_fraction": 5}, "memory fraction 5 is outside"),
    ("/plan_llm", {"gpu": "TPU", "llm": "mistral-7b"}, "unknown GPU 'TPU'"),
    ("/plan_llm", {"gpu": "T4", "llm": "gpt-5"}, "llm 'gpt-5' is neither a preset"),
    ("/plan_llm", {"gpu": "T4", "llm": "mistral-7b", "count": 0}, "count 0 is outside 1..64"),
    ("/plan_network", {"gpu": "TPU"}, "unknown GPU 'TPU'"),
    ("/plan_network", {"gpu": "T4", "model": "resnet"}, "model 'resnet' is not one of"),
    ("/plan_network", {"gpu": "T4", "calibrate": F + "report.json"}, "does not say which network it measured"),
    ("/cost", {"throughput": 1.0, "measured_on": "H100", "precision": "fp7"}, "precision 'fp7' is not one of"),
    ("/cost", {"throughput": 1e308, "measured_on": "H100"}, "throughput 1e+308 is outside"),
    ("/cost", {"throughput": 1.0, "measured_on": "TPU"}, "measured on 'TPU' is not one of"),
    ("/cost", {"throughput": 1.0, "measured_on": "H100", "samples_per_request": 0}, "samples per request 0 is"),
    # unknown ids
    ("/job_status", {"job_id": "zzz"}, "no job zzz"),
    ("/job_result", {"job_id": "000000000000"}, "no job 000000000000"),
    ("/job_cancel", {"job_id": "nope"}, "no job nope"),
    ("/onnx_result", {"job_id": "000000000000"}, "no job 000000000000"),
    ("/bench_result", {"job_id": "x"}, "no job x"),
]


def _values(kwargs: dict, files: dict[str, Path]) -> dict:
    from gradio_client import handle_file

    root = ASSETS.parent
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith(F):
            name = value.removeprefix(F)
            out[key] = handle_file(str(files[name] if name in files else root / name))
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("endpoint", "kwargs", "expected"), CASES, ids=[f"{i}{c[0]}" for i, c in enumerate(CASES)])
def test_each_bad_input_is_one_clear_line(app: RunningApp, files, endpoint: str, kwargs: dict, expected: str) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app.url, verbose=False)
    with pytest.raises(AppError) as refused:
        client.predict(**_values(kwargs, files), api_name=endpoint)
    message = str(refused.value)
    assert expected in message, message
    assert "\n" not in message.strip() and "Traceback" not in message and "internal error" not in message
    assert "/tmp/" not in message and str(app.log_path.parent) not in message  # no server paths
    assert client.predict(history_seconds=0, api_name="/telemetry")["snapshot"]["host"]  # still answering


def test_the_catalogue_is_long_enough() -> None:
    assert len(CASES) >= 40
