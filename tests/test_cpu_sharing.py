"""A network on the CPU shares the cores with the codecs (issue #17): OpenMP sleeps at its barriers in the
processes that run pipelines (set before torch loads; the user's policy wins), and a lip-sync on the CPU decodes
and encodes on one thread each, with the same frames as FFmpeg's thread pools give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.core.media import VideoWriter, read_frames

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, os, sys
if sys.argv[1] == "after-torch":
    import torch
from engine.core.openmp import sleep_at_barriers
print(json.dumps({"sleeps": sleep_at_barriers(), "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _child(mode: str, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openmp_sleeps_when_asked_before_torch_loads() -> None:
    assert _child("before-torch", None) == {"sleeps": True, "policy": "PASSIVE"}
    assert _child("before-torch", "active") == {"sleeps": False, "policy": "active"}  # the user's choice wins
    assert _child("before-torch", "passive") == {"sleeps": True, "policy": "passive"}
    # Too late once torch is loaded: the process is told so, and the environment is left as it was.
    assert _child("after-torch", None) == {"sleeps": False, "policy": None}


def test_the_lipsync_command_asks_before_it_loads_torch() -> None:
    source = (ROOT / "engine" / "lipsync" / "cli.py").read_text()
    body = source[source.index("def _lipsync") :]
    assert body.index("sleep_at_barriers()") < body.index("from engine.core.device import")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 2 s clip of a face panning, so that the encoder has decisions to make."""
    import cv2

    path = tmp_path_factory.mktemp("codec_threads") / "clip.mp4"
    face = cv2.resize(cv2.imread(str(ROOT / "assets" / "face.jpg")), (420, 420))
    writer = VideoWriter(path, 25, 320, 240, codec="libx264")
    for i in range(50):
        writer.write(np.ascontiguousarray(face[60:300, 2 * i : 2 * i + 320]))
    writer.close()
    return path


def test_one_decoder_thread_gives_the_same_frames(clip) -> None:
    pooled, single = list(read_frames(clip)), list(read_frames(clip, threads=1))
    assert len(pooled) == len(single) == 50
    assert all(np.array_equal(a, b) for a, b in zip(pooled, single, strict=True))


def test_one_encoder_thread_encodes_the_same_picture(clip, tmp_path) -> None:
    frames = list(read_frames(clip))
    source = np.stack(frames).astype(np.int16)
    outputs = {}
    for threads in (None, 1):
        path = tmp_path / f"threads-{threads}.mp4"
        writer = VideoWriter(path, 25, 320, 240, codec="libx264", threads=threads)
        for frame in frames:
            writer.write(frame)
        writer.close()
        outputs[threads] = np.stack(list(read_frames(path))).astype(np.int16)
    assert outputs[None].shape == outputs[1].shape == (50, 240, 320, 3)
    # With its threads x264 decides with less look-ahead, so the bits differ; the picture is the same within a grey
    # level on average (0.72 seen), and as close to what was written (2.02 and 2.08 grey levels at crf 18).
    assert np.abs(outputs[None] - outputs[1]).mean() < 1.0
    error = {threads: np.abs(decoded - source).mean() for threads, decoded in outputs.items()}
    assert error[1] < 3.0 and error[None] < 3.0 and abs(error[1] - error[None]) < 0.25


def test_a_cpu_lipsync_runs_its_codecs_on_one_thread(tmp_path, monkeypatch) -> None:
    import engine.lipsync.pipeline as pipeline
    from engine.lipsync.config import LipSyncConfig

    seen: dict[str, list] = {"writer": [], "reader": []}
    real_writer, real_reader = pipeline.VideoWriter, pipeline.read_frames

    def writer(*args, **kwargs):
        seen["writer"].append(kwargs.get("threads"))
        return real_writer(*args, **kwargs)

    def reader(*args, **kwargs):
        seen["reader"].append(kwargs.get("threads"))
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(pipeline, "VideoWriter", writer)
    monkeypatch.setattr(pipeline, "read_frames", reader)
    video = tmp_path / "face.mp4"
    face = np.full((96, 96, 3), 128, np.uint8)
    out = VideoWriter(video, 25, 96, 96, codec="libx264")
    for _ in range(10):
        out.write(face)
    out.close()
    speech = ROOT / "assets" / "speech.wav"
    config = LipSyncConfig(face=str(video), audio=str(speech), engine="baseline", box=(10, 10, 86, 86))
    pipeline.run_lipsync(config, tmp_path / "out.mp4", device="cpu")
    assert seen["writer"] == [1] and set(seen["reader"]) == {1}
