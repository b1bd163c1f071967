"""The lip-sync pipeline end to end on the CPU, with weights and media the tests make."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
from test_media import png_bytes, raw_h264, refusal

from engine.core.audio import AudioError, load_audio, mel_chunks, mel_spectrogram
from engine.core.media import MediaError, VideoWriter, probe_video, read_frames
from engine.core.settings import load_settings
from engine.core.weights import WeightsError
from engine.faces.detection import FaceError
from engine.lipsync.config import LipSyncConfig, LipSyncError
from engine.lipsync.engines import BaselineEngine
from engine.lipsync.paste import paste
from engine.lipsync.pipeline import run_lipsync
from engine.models.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
FACE = ROOT / "assets" / "face.jpg"


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame) if samples.size else []:
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Voiced syllables: a 140 Hz buzz with formants, switched on and off four times a second."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((140, 700, 1200, 2500)))
    gate = (np.sin(2 * np.pi * 4 * t) > 0).astype(np.float32)
    return (0.3 * buzz * gate + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def face_video(path: Path, frames: int, size: int = 256, blank_from: int | None = None, blank_to: int = 0) -> Path:
    """The test portrait drifting a few pixels per frame; optionally blank (no face) for a span."""
    face = cv2.resize(cv2.imread(str(FACE)), (size + 40, size + 40), interpolation=cv2.INTER_AREA)
    writer = VideoWriter(path, 25, size, size, codec="libx264")
    for i in range(frames):
        dx = int(20 + 12 * np.sin(i / 5))
        frame = np.ascontiguousarray(face[20 : 20 + size, dx : dx + size])
        if blank_from is not None and blank_from <= i < blank_to:
            frame = np.full_like(frame, 90)
        writer.write(frame)
    writer.close()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    from engine.models.s3fd import random_s3fd_checkpoint
    from engine.models.wav2lip import random_wav2lip_checkpoint

    d = tmp_path_factory.mktemp("lipsync")
    out = {
        "speech": write_wav(d / "speech.wav", speech_like(1.0)),
        "silence": write_wav(d / "silence.wav", np.zeros(16000, np.float32)),
        "video": face_video(d / "face.mp4", 30),
        "short_video": face_video(d / "short.mp4", 10),
        "checkpoint": d / "wav2lip.pth",
        "s3fd": d / "s3fd.pth",
    }
    random_wav2lip_checkpoint(out["checkpoint"], seed=0)
    random_s3fd_checkpoint(out["s3fd"], seed=0)
    return out


@pytest.fixture
def settings(tmp_path):
    return load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})


def expected_frames(seconds: float, fps: float = 25.0) -> int:
    return len(mel_chunks(mel_spectrogram(np.zeros(int(seconds * 16000), np.float32)), fps))


def test_paste_blend_changes_only_the_lower_face() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    before = frame.copy()
    box = (40, 20, 120, 100)
    paste(frame, box, np.full((96, 96, 3), 255.0, np.float32), "blend")
    outside = np.ones(frame.shape[:2], bool)
    outside[20:100, 40:120] = False
    assert np.array_equal(frame[outside], before[outside])
    assert np.array_equal(frame[20:40, 40:120], before[20:40, 40:120])  # eyes and forehead untouched
    assert (frame[80:90, 70:90].astype(int) - before[80:90, 70:90]).mean() > 50  # the mouth was replaced


def test_paste_upstream_replaces_the_box_with_truncated_values() -> None:
    frame = np.zeros((50, 50, 3), np.uint8)
    paste(frame, (10, 10, 30, 30), np.full((96, 96, 3), 10.9, np.float32), "upstream")
    assert (frame[10:30, 10:30] == 10).all() and (frame[:10] == 0).all()


def test_paste_upstream_truncates_then_resizes_as_upstream() -> None:
    """Upstream's inference.py: ``cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))``, the prediction cut to
    uint8 before OpenCV's default bilinear resize (resizing first, or another filter, differs on a varied face)."""
    rng = np.random.default_rng(1)
    prediction = rng.uniform(0, 255, (96, 96, 3)).astype(np.float32)
    frame = np.zeros((200, 160, 3), np.uint8)
    paste(frame, (10, 20, 130, 170), prediction, "upstream")
    assert np.array_equal(frame[20:170, 10:130], cv2.resize(prediction.astype(np.uint8), (120, 150)))


def test_the_crop_is_upstreams_bilinear_resize_of_the_box() -> None:
    """The generator's input is the box (rows y1:y2, columns x1:x2) resized as upstream's ``cv2.resize(face,
    (img_size, img_size))``: an area filter or the box read transposed would feed Wav2Lip another face."""
    from engine.lipsync.paste import crop

    frame = cv2.resize(cv2.imread(str(FACE)), (400, 300))
    box = (60, 20, 300, 280)  # not square: rows and columns cannot be swapped unseen
    assert np.array_equal(crop(frame, box, 96), cv2.resize(frame[20:280, 60:300], (96, 96)))


def test_paste_blend_keeps_the_box_edge_and_fades_out_at_its_sides() -> None:
    """The box's outer two pixels stay the frame's own, and the mask fades to almost nothing before the side
    edges (a hard step there would show the box as a seam)."""
    for height, width in ((80, 80), (200, 160), (150, 240)):
        frame = np.zeros((height + 20, width + 20, 3), np.uint8)
        box = (10, 10, 10 + width, 10 + height)
        paste(frame, box, np.full((96, 96, 3), 255.0, np.float32), "blend")
        inside = frame[10 : 10 + height, 10 : 10 + width].max(axis=2)
        ring = np.ones(inside.shape, bool)
        ring[2:-2, 2:-2] = False
        assert not inside[ring].any(), (height, width)
        assert inside[:, [2, 3, -4, -3]].max() <= 0.05 * 255, (height, width)
        assert inside[int(0.72 * height), width // 2] == 255  # the mouth itself is the prediction's


def test_paste_blend_draws_no_line_under_the_chin() -> None:
    """The ellipse reaches the chin, by the box's bottom edge: the mask was about 0.7 on the third row from the
    bottom and 0 on the last two, a line of 70% of the difference under every pasted chin. It eases to 0 now."""
    from engine.lipsync.paste import lower_face_mask

    for height, width in ((96, 96), (150, 240), (250, 200), (600, 500)):
        mask = lower_face_mask(height, width)[:, :, 0]
        assert mask[-2:].max() == 0 and mask[:, :2].max() == 0  # the box edge is still the frame's own
        steps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
        assert steps < 0.25, (height, width, steps)
        assert mask[int(0.72 * height), width // 2] > 0.99  # the mouth is still the prediction's


def test_paste_blend_by_coverage_rounds_a_cubic_resize() -> None:
    """Where a generator's coverage is 1 (or more) the box is its prediction resized by a cubic filter and
    rounded, not truncated; where it is 0 (or less) the frame stays exactly as it was."""
    rng = np.random.default_rng(2)
    prediction = rng.uniform(0, 255, (96, 96, 3)).astype(np.float32)
    resized = np.clip(np.rint(cv2.resize(prediction, (120, 150), interpolation=cv2.INTER_CUBIC)), 0, 255)
    before = rng.integers(0, 256, (200, 160, 3), dtype=np.uint8)
    for cover, expected in (
        (1.0, resized),
        (1.5, resized),
        (0.0, before[20:170, 10:130]),
        (-0.5, before[20:170, 10:130]),
    ):
        frame = before.copy()
        paste(frame, (10, 20, 130, 170), np.dstack([prediction, np.full((96, 96), cover, np.float32)]), "blend")
        assert np.array_equal(frame[20:170, 10:130], expected), cover


def test_paste_refuses_a_mode_it_does_not_know() -> None:
    """A caller past the config's check (a split job's worker, a script) gets the accepted modes, not a blend."""
    from engine.core.errors import InputError

    with pytest.raises(InputError, match="paste mode 'poisson' is not one of blend, upstream"):
        paste(np.zeros((50, 50, 3), np.uint8), (10, 10, 30, 30), np.zeros((96, 96, 3), np.float32), "poisson")


def test_wav2lip_on_a_video_clip(media, settings, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    ckpt = str(media["checkpoint"])
    config = LipSyncConfig(face=media["video"], audio=media["speech"], checkpoint=ckpt, batch_size=8)
    result = run_lipsync(config, out, settings)
    info = probe_video(out)
    frames = expected_frames(1.0)
    assert frames == 22
    assert (info.width, info.height, info.has_audio) == (256, 256, True)
    assert sum(1 for _ in read_frames(out)) == frames  # the 30-frame video was trimmed to the speech
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        sound = float(audio.duration * audio.time_base)  # the whole 1.0 s of speech, though 22 frames end at 0.88 s
        assert abs(sound - 1.0) < 0.03 and sound - frames / 25 > 0.09
    assert result.metrics["engine"] == "wav2lip" and result.metrics["frames"] == frames
    assert result.metrics["decoded_on"] == "cpu" and "nvdec_unused" not in result.metrics  # NVDEC: GPU jobs only
    assert [s.name for s in result.stages] == ["audio", "mel", "decode", "detect", "inference", "paste", "encode"]
    assert result.stages[4].items == frames - result.metrics["faces_missed"]
    assert result.measurement == {} and result.outputs["video"] == str(out)  # its caller measures the run


def test_a_short_video_is_looped_to_the_speech(media, settings, tmp_path) -> None:
    out = tmp_path / "looped.mp4"
    run_lipsync(LipSyncConfig(face=media["short_video"], audio=media["speech"], engine="baseline"), out, settings)
    assert sum(1 for _ in read_frames(out)) == expected_frames(1.0)


def test_speech_not_named_wav_is_heard_through_16_bit_pcm(media, settings, tmp_path, monkeypatch) -> None:
    """Upstream's ffmpeg conversion of speech not named .wav: the pipeline asks for it by the file's name."""
    import engine.lipsync.pipeline as pipeline

    asked: list[bool] = []

    def recording(path, max_seconds=None, resampler=None, sixteen_bit=False):
        asked.append(sixteen_bit)
        return load_audio(path, max_seconds, sixteen_bit=sixteen_bit)

    monkeypatch.setattr(pipeline, "load_audio", recording)
    shutil.copy(media["speech"], tmp_path / "speech.WAV")
    for speech in (media["speech"], tmp_path / "speech.WAV"):
        run_lipsync(LipSyncConfig(face=FACE, audio=speech, engine="baseline"), tmp_path / "out.mp4", settings)
    assert asked == [False, True]


def test_a_baseline_batch_above_its_cap_and_a_box_past_the_picture_are_said(
    media, settings, tmp_path, monkeypatch
) -> None:
    """Both are cut to what runs (upstream's inference.py stops at such a box), and the run says so; a default batch
    above the cap (a GPU's, from its free memory) is cut without a word: nobody asked for it."""
    from engine.lipsync import pipeline as lipsync

    config = LipSyncConfig(face=FACE, audio=media["speech"], engine="baseline", batch_size=4096, box=(300, 0, 600, 200))
    result = run_lipsync(config, tmp_path / "out.mp4", settings)
    assert result.metrics["batch_size"] == 64
    assert any("at most 64 frames a batch: batch size 4096 runs as 64" in w for w in result.warnings)
    assert "the face box 300,0,600,200 reaches past the 512x512 picture: it is clipped to 300,0,512,200" in (
        result.warnings
    )
    monkeypatch.setattr(lipsync, "auto_batch_size", lambda *args, **kwargs: 256)
    inside = run_lipsync(replace(config, box=(300, 0, 512, 200), batch_size=None), tmp_path / "in.mp4", settings)
    assert inside.metrics["batch_size"] == 64
    assert not any("face box" in w or "frames a batch" in w for w in inside.warnings)


def test_the_baseline_names_what_it_leaves_unused_and_nothing_it_uses(media, settings, tmp_path) -> None:
    """--engine baseline runs the baseline even with a Wav2Lip checkpoint given, and names the checkpoint and the
    precision check (it has no network) unused, without a fp16-against-fp32 remark; --precision fp32 (what it
    computes in) and a batch at its cap of 64 are not remarked on; an output named .MP4 is an MP4."""
    config = LipSyncConfig(face=FACE, audio=media["speech"], engine="baseline", checkpoint=str(media["checkpoint"]),
                           check_precision=True, precision="fp32", batch_size=64, rotate=True)  # fmt: skip
    result = run_lipsync(config, tmp_path / "talk.MP4", settings)
    metrics = result.metrics
    assert (metrics["engine"], metrics["batch_size"], metrics["detector"]) == ("baseline", 64, "haar")
    assert result.warnings[0].startswith("running on the CPU: ")
    assert result.warnings[1:] == [
        "--rotate edits a video's frames (as upstream's): a photo is kept as it is",
        "the baseline engine does not use --checkpoint, --check-precision (other engines' options)",
    ]


def test_image_with_the_baseline_engine(media, settings, tmp_path) -> None:
    out = tmp_path / "image.mp4"
    progress = []
    result = run_lipsync(
        LipSyncConfig(face=FACE, audio=media["speech"]), out, settings, progress=lambda f, label: progress.append(f)
    )
    assert result.metrics["engine"] == "baseline" and "not Wav2Lip" in result.metrics["engine_label"]
    assert any("baseline engine" in w for w in result.warnings)
    assert probe_video(out).width == 512 and progress[-1] == 1.0 and "decoded_on" not in result.metrics
    assert progress == sorted(progress)


def _mouth_change(video: Path, reference: np.ndarray) -> float:
    """The largest mean change over the lower third of the detected face box, across frames."""
    from engine.faces.detection import HaarDetector
    from engine.faces.tracking import FaceTracker

    x1, y1, x2, y2 = FaceTracker().update(HaarDetector().detect([reference])[0], reference.shape).box
    y0 = y1 + 2 * (y2 - y1) // 3
    diffs = [np.abs(f[y0:y2, x1:x2].astype(int) - reference[y0:y2, x1:x2]).mean() for f in read_frames(video)]
    return float(np.max(diffs))


def test_baseline_mouth_moves_with_speech_and_not_in_silence(media, settings, tmp_path) -> None:
    crops = np.stack([cv2.resize(cv2.imread(str(FACE)), (128, 128))] * 2)
    engine = BaselineEngine(__import__("torch").device("cpu"))
    still = engine(np.zeros((2, 80, 16), np.float32), crops, np.array([0.0, 1.0], np.float32))
    assert np.abs(still[0][..., :3] - crops[0]).max() < 1.0  # silence: identity warp
    assert np.abs(still[1][90:120, :, :3] - crops[1][90:120]).mean() > 3.0  # speech: the jaw opens
    reference = cv2.imread(str(FACE))
    loud, quiet = tmp_path / "loud.mp4", tmp_path / "quiet.mp4"
    run_lipsync(LipSyncConfig(face=FACE, audio=media["speech"], engine="baseline"), loud, settings)
    result = run_lipsync(LipSyncConfig(face=FACE, audio=media["silence"], engine="baseline"), quiet, settings)
    assert any("silent" in w for w in result.warnings)
    assert _mouth_change(loud, reference) > 2 * _mouth_change(quiet, reference) + 1.0


def test_frames_without_a_face_pass_through_and_are_counted(media, settings, tmp_path) -> None:
    video = face_video(tmp_path / "gap.mp4", 25, blank_from=5, blank_to=22)
    out = tmp_path / "gap-out.mp4"
    result = run_lipsync(LipSyncConfig(face=video, audio=media["speech"], engine="baseline"), out, settings)
    assert result.metrics["faces_missed"] == 17
    assert any("without" in w or "no detected face" in w for w in result.warnings)
    frames = list(read_frames(out))
    # The blank span is a new shot: the face's box is not held over into it (a mouth was pasted on 12 frames)
    assert all(np.abs(f.astype(int) - 90).max() <= 4 for f in frames[5:22])


@pytest.mark.parametrize("kind", ["alpha", "grey"])
def test_images_with_alpha_or_in_greyscale_work(kind, media, settings, tmp_path) -> None:
    image = cv2.imread(str(FACE))
    path = tmp_path / f"{kind}.png"
    if kind == "alpha":
        cv2.imwrite(str(path), np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))
    else:
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    result = run_lipsync(LipSyncConfig(face=path, audio=media["speech"]), tmp_path / "o.mp4", settings)
    assert result.metrics["frames"] == expected_frames(1.0)


def test_auto_without_a_checkpoint_says_where_wav2lip_goes_and_the_command_that_gets_it(
    media, settings, tmp_path
) -> None:
    """The auto engine's fall-back to the baseline named the path and the setting but not the download command,
    which the portrait tab's warning does name (and the weights tab runs)."""
    result = run_lipsync(LipSyncConfig(face=FACE, audio=media["speech"]), tmp_path / "o.mp4", settings)
    target = settings.weights_dir / "wav2lip_gan.pth"
    assert (
        "no Wav2Lip checkpoint configured: using the baseline engine (not Wav2Lip). Put the official Wav2Lip generator "
        f"checkpoint (wav2lip_gan.pth or wav2lip.pth, about 416 MB) at {target}, or set AVATARBENCH_WAV2LIP_CHECKPOINT "
        "to its path (`avatarbench weights get wav2lip --accept-licence`, or the app's Get the official weights "
        "panel, downloads it). Wav2Lip weights are for research and non-commercial use only (see the Rudrabha/Wav2Lip "
        "README)."
    ) in result.warnings


def test_no_face_found_says_what_to_try(media, settings, tmp_path) -> None:
    """It said only "use a clear, frontal face photo", and a clear, frontal, small face (a 256-pixel portrait, lost
    when detection shrinks the frame to 0.5) left nothing to try: the whole-frame scale and a fixed box are named."""
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(LipSyncError, match=r"no face found in blank\.png; use a clear, frontal face photo, or try "
                       r"--detect-scale 1 to detect on whole frames \(at 0\.5 a small face is missed\), or give the "
                       r"face's box in pixels with --box X1,Y1,X2,Y2$"):  # fmt: skip
        run_lipsync(LipSyncConfig(face=blank, audio=media["speech"]), tmp_path / "a.mp4", settings)
    with pytest.raises(LipSyncError, match=r"photo, or give the face's box in pixels with --box X1,Y1,X2,Y2$"):
        run_lipsync(LipSyncConfig(face=blank, audio=media["speech"], detect_scale=1), tmp_path / "a.mp4", settings)


def test_a_run_that_streamed_nothing_leaves_no_stream_folder(media, settings, tmp_path) -> None:
    """A --stream run refused before its first frame left an empty a.stream/ beside no a.mp4."""
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(LipSyncError, match="no face found"):
        run_lipsync(LipSyncConfig(face=blank, audio=media["speech"], stream=True), tmp_path / "a.mp4", settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.png"]


def test_a_failed_run_leaves_no_folder_it_made_for_its_output(media, settings, tmp_path) -> None:
    """--out new/sub/talk.mp4 refused on the way (no face found) left new/sub/ behind, empty; a folder that was there
    stays."""
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "sub" / "a.mp4", tmp_path / "kept" / "sub" / "a.mp4"):
        with pytest.raises(LipSyncError, match="no face found"):
            run_lipsync(LipSyncConfig(face=blank, audio=media["speech"], stream=True), out, settings)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["blank.png", "kept"]


def test_bad_inputs_get_clear_errors(media, settings, tmp_path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(LipSyncError, match="no face found"):
        run_lipsync(LipSyncConfig(face=blank, audio=media["speech"]), tmp_path / "a.mp4", settings)
    faceless = face_video(tmp_path / "faceless.mp4", 10, blank_from=0, blank_to=10)
    # its 10 frames looped to the 1 s of speech's 22: it read "no face found in any of the 22 frames of faceless.mp4"
    looped = (r"^no face found in faceless\.mp4: none in the 22 frames taken from it for the speech \(the video "
              r"looped, or cut, to the speech's length\); ")  # fmt: skip
    with pytest.raises(LipSyncError, match=looped):
        run_lipsync(LipSyncConfig(face=faceless, audio=media["speech"]), tmp_path / "b.mp4", settings)
    edited = r"^no face found in faceless\.mp4 as --resize-factor and --rotate left it: none in the 22 frames "
    with pytest.raises(LipSyncError, match=edited):  # the detector saw the edited frames: the edits are named
        run_lipsync(LipSyncConfig(face=faceless, audio=media["speech"], resize_factor=2, rotate=True),
                    tmp_path / "b.mp4", settings)  # fmt: skip
    assert not (tmp_path / "b.mp4").exists()
    (tmp_path / "earlier.mp4").write_bytes(b"an earlier result")  # a failed run deleted the file it would replace
    with pytest.raises(LipSyncError, match="no face found in faceless"):
        run_lipsync(LipSyncConfig(face=faceless, audio=media["speech"]), tmp_path / "earlier.mp4", settings)
    assert (tmp_path / "earlier.mp4").read_bytes() == b"an earlier result" and not list(tmp_path.glob(".*partial"))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(MediaError, match="could not be read"):
        run_lipsync(LipSyncConfig(face=corrupt, audio=media["speech"]), tmp_path / "c.mp4", settings)
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioError):
        run_lipsync(LipSyncConfig(face=FACE, audio=empty), tmp_path / "d.mp4", settings)
    small = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_MAX_SIDE": "128"})
    with pytest.raises(MediaError, match="larger than the limit"):
        run_lipsync(LipSyncConfig(face=media["video"], audio=media["speech"]), tmp_path / "e.mp4", small)
    short = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_MAX_SECONDS": "1"})
    long_audio = write_wav(tmp_path / "long.wav", speech_like(2.5))
    with pytest.raises(AudioError):
        run_lipsync(LipSyncConfig(face=FACE, audio=long_audio), tmp_path / "f.mp4", short)
    with pytest.raises(CheckpointError):
        config = LipSyncConfig(face=FACE, audio=media["speech"], checkpoint=str(media["s3fd"]))
        run_lipsync(config, tmp_path / "g.mp4", settings)
    with pytest.raises(WeightsError, match="needs a checkpoint"):
        run_lipsync(LipSyncConfig(face=FACE, audio=media["speech"], engine="wav2lip"), tmp_path / "h.mp4", settings)
    with pytest.raises(LipSyncError, match=r"output x.avi must be a file name ending in \.mp4"):
        run_lipsync(LipSyncConfig(face=FACE, audio=media["speech"]), tmp_path / "x.avi", settings)
    for bad, message in (
        (dict(pads=(0, -201, 0, 0)), "pads -201 is outside -200..200"),
        (dict(batch_size=0), "batch size 0 is outside 1..4096"),
        (dict(engine="sadtalker"), "engine 'sadtalker' is not one of auto, wav2lip, musetalk, baseline"),
        (dict(paste="poisson"), "paste 'poisson' is not one of blend, upstream"),
        (dict(detect_scale=2.0), "detect scale 2 is outside 0.1..1"),
        (dict(precision="int8"), "precision 'int8' is not one of auto"),
    ):
        config = LipSyncConfig(face=FACE, audio=media["speech"], **bad)
        with pytest.raises(LipSyncError, match=re.escape(message)):
            run_lipsync(config, tmp_path / "i.mp4", settings)
    for face in (FACE, media["video"]):  # a fixed box with nothing inside: refused, not every frame passed through
        for engine in ("baseline", "musetalk"):
            config = LipSyncConfig(face=face, audio=media["speech"], engine=engine, box=(2000, 2000, 2100, 2100))
            with pytest.raises(FaceError, match=r"the face box 2000,2000,2100,2100 \(X1,Y1,X2,Y2\) lies outside"):
                run_lipsync(config, tmp_path / "j.mp4", settings)
    squeezed = LipSyncConfig(face=FACE, audio=media["speech"], pads=(-200, -200, -200, -200))
    with pytest.raises(LipSyncError, match=re.escape("a face was found in face.jpg, but --pads -200,-200,-200,-200")):
        run_lipsync(squeezed, tmp_path / "k.mp4", settings)


BAD_FACES = [
    pytest.param("empty.jpg", lambda: b"", "is empty (0 bytes); accepted: PNG, JPEG", id="zero-bytes"),
    pytest.param("notes.mp4", lambda: b"not a video\n" * 50, "could not be read as a video", id="text-renamed"),
    # a face is a photo or a video: the video reader's refusal offers both (it listed videos alone)
    pytest.param("face.heic", lambda: b"not a picture\n" * 50, "; accepted: an image (.jpg, ", id="other-format"),
    pytest.param("bomb.png", lambda: png_bytes(64000, 64000, pixels=b""), "is 64000x64000, larger than", id="bomb"),
    pytest.param("cut.jpg", lambda: FACE.read_bytes()[:-2000], "its JPEG data is truncated", id="truncated"),
]


@pytest.mark.parametrize(("name", "data", "expected"), BAD_FACES)
def test_bad_face_files_get_one_line(media, settings, tmp_path, name, data, expected) -> None:
    face = tmp_path / name
    face.write_bytes(data())
    config = LipSyncConfig(face=face, audio=media["speech"])
    assert expected in refusal(partial(run_lipsync, config, tmp_path / "o.mp4", settings), face)
    assert not (tmp_path / "o.mp4").exists()


def test_speech_with_nan_samples_gets_one_line(settings, tmp_path) -> None:
    speech = tmp_path / "nan.wav"
    with av.open(str(speech), "w") as container:
        stream = container.add_stream("pcm_f32le", rate=16000, layout="mono")
        samples = speech_like(1.0)
        samples[100:110] = np.nan
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    run = partial(run_lipsync, LipSyncConfig(face=FACE, audio=speech), tmp_path / "o.mp4", settings)
    assert "10 samples are NaN or infinite" in refusal(run, speech, AudioError)
    huge = tmp_path / "huge.wav"  # finite in the file, infinite as float32: it was called NaN or infinite only
    with av.open(str(huge), "w") as container:
        stream = container.add_stream("pcm_f64le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(speech_like(1.0).astype(np.float64).reshape(1, -1) * 1e300, format="dbl",
                                           layout="mono")  # fmt: skip
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    run = partial(run_lipsync, LipSyncConfig(face=FACE, audio=huge), tmp_path / "o.mp4", settings)
    assert "in a 64-bit float file, past float32's ±3.4e38" in refusal(run, huge, AudioError)


def test_a_video_without_duration_is_read_no_further_than_the_limit(media, tmp_path, monkeypatch) -> None:
    """A raw H.264 stream named .mp4 states no length, so the limit is held while reading: lip-sync reads only
    the frames the speech needs (here under the limit, so the run succeeds), each pass bounded by the limit."""
    import engine.lipsync.pipeline as pipeline

    limits = []

    def read_frames_spy(path, max_seconds=None, **kwargs):
        limits.append(max_seconds)
        return read_frames(path, max_seconds=max_seconds, **kwargs)

    monkeypatch.setattr(pipeline, "read_frames", read_frames_spy)
    short = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "AVATARBENCH_MAX_SECONDS": "1"})
    face = raw_h264(tmp_path / "raw.mp4", seconds=3)
    assert probe_video(face).duration_s is None
    config = LipSyncConfig(face=face, audio=media["speech"], engine="baseline", box=(8, 8, 56, 56), pads=(1, 1, 1, 1),
                           smooth=False, detector_checkpoint="s3fd.pth", fps=30.0)  # fmt: skip
    result = run_lipsync(config, tmp_path / "o.mp4", short)
    assert result.metrics["frames"] == expected_frames(1.0) and limits == [1.0]
    assert result.metrics["detector"] == "fixed box"
    ignored = "a fixed --box is used as it is: --pads, --no-smooth, --detector-checkpoint (for detected boxes) changed"
    assert any(w.startswith(ignored) for w in result.warnings)
    assert "--fps applies to a still face: the video keeps its own 25 fps" in result.warnings  # it was silent


def _cli(*args: str, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AVATARBENCH_DATA_DIR": str(data)}
    return subprocess.run(
        [sys.executable, "-m", "engine", "lipsync", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_cli_lipsync_writes_the_video_and_metrics(media, tmp_path) -> None:
    out, metrics = tmp_path / "cli.mp4", tmp_path / "metrics.json"
    proc = _cli(
        "--face",
        str(FACE),
        "--audio",
        str(media["speech"]),
        "--out",
        str(out),
        "--checkpoint",
        str(media["checkpoint"]),
        "--batch-size",
        "16",
        "--json",
        str(metrics),
        data=tmp_path / "data",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(metrics.read_text())
    assert data["metrics"]["engine"] == "wav2lip" and out.exists()
    assert "100.0%" in proc.stderr and "inference" in proc.stdout
    bad = _cli("--face", "missing.jpg", "--audio", str(media["speech"]), "--out", str(out), data=tmp_path / "data")
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_blend_mode_leaves_every_pixel_outside_the_face_box_as_it_was(media, settings, tmp_path, monkeypatch) -> None:
    from engine.faces.detection import HaarDetector
    from engine.faces.tracking import FaceTracker
    from engine.lipsync import pipeline as lipsync

    written = []
    original = lipsync.VideoWriter.write
    monkeypatch.setattr(
        lipsync.VideoWriter, "write", lambda self, frame: (written.append(frame.copy()), original(self, frame))[1]
    )
    image = cv2.imread(str(FACE))
    x1, y1, x2, y2 = FaceTracker().update(HaarDetector().detect([image])[0], image.shape).box
    ckpt = str(media["checkpoint"])
    config = LipSyncConfig(face=FACE, audio=media["speech"], checkpoint=ckpt)
    run_lipsync(config, tmp_path / "b.mp4", settings)
    assert len(written) == expected_frames(1.0)
    outside = np.ones(image.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    for frame in written:
        assert np.array_equal(frame[outside], image[outside])
    assert any(not np.array_equal(f[y1:y2, x1:x2], image[y1:y2, x1:x2]) for f in written)


def test_parse_box() -> None:
    from engine.lipsync.config import parse_box

    assert parse_box("10, 20, 110,140") == (10, 20, 110, 140) and parse_box("  ") is None
    for bad in ("1,2,3", "a,b,c,d", "10,10,5,20", "-1,0,5,5"):
        with pytest.raises(LipSyncError):
            parse_box(bad)
    with pytest.raises(LipSyncError, match="pixel coordinates are 0 or more"):  # it said "must be four", of four
        parse_box("-50,-50,100,100")
    with pytest.raises(LipSyncError, match="must be four pixel coordinates"):  # not a ValueError from unpacking five
        parse_box("1,2,3,4,5")
    for flat in ("10,10,10,20", "10,20,30,20"):  # X2 at X1, or Y2 at Y1: no pixel inside
        with pytest.raises(LipSyncError, match=f"'{flat}' is empty: X2 must exceed X1 and Y2 exceed Y1"):
            parse_box(flat)


def test_detection_options_are_said_unused_only_with_a_fixed_box() -> None:
    """With --box the detection options change nothing, and each set one is named; without it they are what finds
    the face, and nothing is said."""
    from engine.lipsync.config import box_passed_over
    from engine.lipsync.pipeline import DETECTION

    asked = {"face": "f.jpg", "audio": "a.wav", "pads": "0,0,0,0", "detector": "s3fd", "detect_scale": "1"}
    assert box_passed_over(LipSyncConfig.build(asked), DETECTION) is None
    fixed = LipSyncConfig.build({**asked, "box": "1,1,50,50"})
    assert box_passed_over(fixed, DETECTION) == (
        "a fixed --box is used as it is: --pads, --detector, --detect-scale (for detected boxes) changed nothing"
    )


def test_frames_whose_generated_mouth_is_not_finite_keep_their_pixels(media, settings, tmp_path, monkeypatch) -> None:
    """fp16 overflow gives inf/NaN; pasted, they would be black or random pixels: those frames stay as they were."""
    from engine.lipsync import pipeline as lipsync
    from engine.lipsync.engines import Wav2LipEngine

    written = []
    original_write = lipsync.VideoWriter.write
    monkeypatch.setattr(
        lipsync.VideoWriter, "write", lambda self, frame: (written.append(frame.copy()), original_write(self, frame))[1]
    )
    generate = Wav2LipEngine.__call__

    def overflowing(self, mels, crops, energy, first_row=0):
        out = generate(self, mels, crops, energy, first_row)
        out[::2, 40, 40, 1] = np.nan  # every other frame of each batch
        out[1::4, 50, 50, 2] = np.inf
        return out

    monkeypatch.setattr(Wav2LipEngine, "__call__", overflowing)
    image = cv2.imread(str(FACE))
    config = LipSyncConfig(face=FACE, audio=media["speech"], checkpoint=str(media["checkpoint"]), batch_size=4)
    result = run_lipsync(config, tmp_path / "nan.mp4", settings)
    assert len(written) == expected_frames(1.0)
    for i, frame in enumerate(written):
        kept = i % 4 in (0, 1, 2)  # NaN at 0 and 2, inf at 1; only the fourth of each batch of 4 is finite
        assert np.array_equal(frame, image) == kept, i
    assert any("NaN or infinite" in w and "original pixels" in w for w in result.warnings)


def test_a_batch_the_host_cannot_allocate_is_halved(media, settings, tmp_path, monkeypatch) -> None:
    """PyTorch's host allocator failing (a memory limit) ended a CPU run with a traceback, where the GPU's out of
    memory halves the batch: now both do, and the frames are those of the smaller batch."""
    from engine.lipsync import pipeline as lipsync
    from engine.lipsync.engines import Wav2LipEngine

    written: list[np.ndarray] = []
    original_write = lipsync.VideoWriter.write
    monkeypatch.setattr(
        lipsync.VideoWriter, "write", lambda self, frame: (written.append(frame.copy()), original_write(self, frame))[1]
    )
    generate = Wav2LipEngine.__call__

    def small_host(self, mels, crops, energy, first_row=0):
        if len(crops) > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9663676416 bytes")
        return generate(self, mels, crops, energy, first_row)

    config = LipSyncConfig(face=FACE, audio=media["speech"], checkpoint=str(media["checkpoint"]), batch_size=8)
    run_lipsync(replace(config, batch_size=2), tmp_path / "two.mp4", settings)
    two, written[:] = list(written), []
    monkeypatch.setattr(Wav2LipEngine, "__call__", small_host)
    result = run_lipsync(config, tmp_path / "halved.mp4", settings)
    assert "out of host memory at batch 8: ran at 2" in result.warnings
    assert len(written) == len(two) == expected_frames(1.0)
    diff = max(np.abs(a.astype(int) - b).max() for a, b in zip(written, two, strict=True))
    assert diff <= 1, diff  # float rounding of another batch size at most


def test_a_one_frame_gif_is_a_still_face_at_the_fps_option(media, settings, tmp_path) -> None:
    """FFmpeg reads a GIF without frame delays at 100 fps: taken as a video, one frame became 4x the frames of a
    photo, each detected anew (and a 200 ms delay gave 5 fps, lips moving 5 times a second)."""
    from PIL import Image

    face = Image.open(FACE)
    for name, delay in (("plain.gif", {}), ("slow.gif", {"duration": 200})):
        face.save(tmp_path / name, **delay)
        config = LipSyncConfig(face=tmp_path / name, audio=media["speech"], engine="baseline", fps=30.0)
        result = run_lipsync(config, tmp_path / "out.mp4", settings)
        assert result.metrics["frames"] == expected_frames(1.0, 30.0) and probe_video(tmp_path / "out.mp4").fps == 30
        video_fps = {"plain.gif": 100, "slow.gif": 5}[name]
        words = f"{name} has one frame: lip-synced as a still face at 30 fps (--fps), not its container's {video_fps}"
        assert words in result.warnings


def test_a_cpu_batch_that_would_not_fit_in_memory_is_refused_with_one_that_does(
    media, settings, tmp_path, monkeypatch
) -> None:
    """Batch 1024 on the CPU took 9.6 GB, and the out-of-memory killer ended the process before PyTorch's
    allocator could fail (and the batch be halved). The default batch is left alone."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2**28))  # 0.25 GiB free
    config = LipSyncConfig(face=FACE, audio=media["speech"], checkpoint=str(media["checkpoint"]), batch_size=64)
    message = (r"batch size 64 needs about 1\.1 GiB of memory on the CPU \(18 MiB a frame: the wav2lip engine on "
               r"512x512 frames\) and 0\.2 GiB is free for this job: use a batch size of at most 8 ")  # fmt: skip
    with pytest.raises(LipSyncError, match=message):
        run_lipsync(config, tmp_path / "o.mp4", settings)
    for batch in (8, None):
        result = run_lipsync(replace(config, batch_size=batch), tmp_path / "o.mp4", settings)
        assert result.metrics["frames"] == expected_frames(1.0)


@pytest.mark.parametrize("face", ["image", "video"])
def test_computing_only_the_rows_the_paste_reads_leaves_the_frames_as_they_were(
    face, media, settings, tmp_path, monkeypatch
) -> None:
    """Wav2Lip computes each crop from the first row the blend paste reads (issue #17): the frames are those of the
    whole crop computed."""
    from engine.lipsync import pipeline as lipsync
    from engine.lipsync.engines import Wav2LipEngine

    written: list[np.ndarray] = []
    original_write = lipsync.VideoWriter.write
    monkeypatch.setattr(
        lipsync.VideoWriter, "write", lambda self, frame: (written.append(frame.copy()), original_write(self, frame))[1]
    )
    rows: list[int] = []
    generate = Wav2LipEngine.__call__
    monkeypatch.setattr(Wav2LipEngine, "__call__", lambda self, *args: (rows.append(args[3]), generate(self, *args))[1])
    source = FACE if face == "image" else media["video"]
    config = LipSyncConfig(face=source, audio=media["speech"], checkpoint=str(media["checkpoint"]), batch_size=8)
    run_lipsync(config, tmp_path / "cut.mp4", settings)
    cut, written[:] = list(written), []
    assert rows and all(r >= 8 for r in rows)  # the lower rows only, as the paste reads
    monkeypatch.setattr(lipsync, "first_row_read", lambda box, size, mode: 0)
    run_lipsync(config, tmp_path / "whole.mp4", settings)
    assert rows[-1] == 0 and len(written) == len(cut) == expected_frames(1.0)
    for a, b in zip(cut, written, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1  # float rounding can move a pixel by one grey level


def test_a_phone_video_turned_by_its_display_rotation_comes_out_upright(media, settings, tmp_path) -> None:
    """A portrait phone clip: landscape pixels stored with a quarter turn to show. The face is found and synced in
    the upright frames, and the output is as tall as it is shown (not sideways)."""
    upright = list(read_frames(media["short_video"]))
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256 + 64, 256, "yuv420p"  # as stored: lying on its side
        stream.set_display_rotation(90)  # stored turned a quarter clockwise, shown a quarter counter-clockwise
        for frame in upright:
            tall = np.pad(frame, ((0, 64), (0, 0), (0, 0)), constant_values=90)
            stored = np.ascontiguousarray(np.rot90(tall, -1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out.mp4"
    result = run_lipsync(LipSyncConfig(face=path, audio=media["speech"], engine="baseline"), out, settings)
    info = probe_video(out)
    assert (info.width, info.height, info.turns) == (256, 256 + 64, 0)
    assert result.metrics["faces_missed"] == 0
    first = next(iter(read_frames(out)))
    assert np.abs(first[256 + 8 :].astype(int) - 90).max() < 12  # the padding is at the bottom, as shown


def test_upstreams_video_edits_shrink_turn_and_cut_in_its_order() -> None:
    """inference.py's --resize_factor, --rotate and --crop, in its order, on a frame whose corners differ; sizes
    are known before decoding, and edits that leave no picture are refused with what is accepted."""
    from engine.lipsync.video_edits import VideoEdits

    frame = np.zeros((120, 200, 3), np.uint8)
    frame[:10, :10] = 255  # top-left corner
    edits = VideoEdits(resize_factor=2, rotate=True, crop=(0, 90, 10, -1))
    edited = edits(frame)
    shrunk = cv2.resize(frame, (100, 60))
    assert np.array_equal(edited, cv2.rotate(shrunk, cv2.ROTATE_90_CLOCKWISE)[:90, 10:])
    assert edits.size(200, 120) == (50, 90) == (edited.shape[1], edited.shape[0]) and edited.flags.c_contiguous
    assert edited[:5, 45:].min() == 255  # the top-left corner turned to the top-right
    assert VideoEdits().none and VideoEdits()(frame) is frame
    halved = VideoEdits(resize_factor=2)  # odd sides round down, as the frames' resize does: the writer's size
    assert halved.size(201, 121) == (100, 60) == halved(np.zeros((121, 201, 3), np.uint8)).shape[1::-1]
    beyond = VideoEdits(crop=(20, 500, 30, 900))  # past the frame: to its last row and column, in both
    assert beyond.size(200, 120) == (170, 100) == beyond(frame).shape[1::-1]
    config = LipSyncConfig(face=FACE, audio=FACE, resize_factor=3, rotate=True, crop=(1, 50, 2, 60))
    assert VideoEdits.of(config) == VideoEdits(3, True, (1, 50, 2, 60))
    assert VideoEdits(rotate=True).flags == ["--rotate"] and VideoEdits(crop=(1, -1, 0, -1)).flags == ["--crop"]
    with pytest.raises(LipSyncError, match="leaves 0x120 pixels of the 200x120 video"):
        VideoEdits(crop=(0, -1, 150, 120)).size(200, 120)
    with pytest.raises(LipSyncError, match=r"leaves 15x16 pixels .* at least 16x16"):  # as small as a face may be
        VideoEdits(crop=(10, 26, 10, 25)).size(200, 120)
    assert VideoEdits(crop=(10, 26, 10, 26)).size(200, 120) == (16, 16)
    for crop in ((-1, -1, 0, -1), (0, -1, -1, -1)):
        with pytest.raises(LipSyncError, match="TOP and LEFT are 0 or more"):
            VideoEdits(crop=crop).size(200, 120)
    for crop in ("10,5,0,-1", "5,5,0,-1", "0,0,0,0", "0,-1,30,30"):  # nothing kept whatever the size: refused at submit
        with pytest.raises(LipSyncError, match=f"crop {crop} keeps no pixels: TOP must be below BOTTOM"):
            LipSyncConfig.build({"face": str(FACE), "audio": str(FACE), "crop": crop})
    for crop in ("-1,5,0,9", "0,-1,-1,-1"):
        with pytest.raises(LipSyncError, match=f"crop {crop}: TOP and LEFT are 0 or more"):
            LipSyncConfig.build({"face": str(FACE), "audio": str(FACE), "crop": crop})
    for box in ("²,0,5,5", "٣,0,50,50", "9" * 5000 + ",0,5,5"):  # str.isdigit passed them: int()'s own message, or 3
        with pytest.raises(LipSyncError, match="must be four pixel coordinates: X1,Y1,X2,Y2"):
            LipSyncConfig.build({"face": str(FACE), "audio": str(FACE), "box": box})


def test_video_edits_are_upstreams_pixels_where_the_sides_do_not_divide_by_the_factor() -> None:
    """Guards the order and the interpolation of the edits: on a frame whose sides a factor of 2 does not divide,
    turning before shrinking, or shrinking by area, differs from upstream's shrink-then-turn (cv2.resize's default
    bilinear) by a level in many pixels; at an even size they agree, so the test above cannot tell them apart."""
    from engine.lipsync.video_edits import VideoEdits

    frame = np.random.default_rng(0).integers(0, 256, (121, 201, 3), np.uint8)
    upstream = cv2.rotate(cv2.resize(frame, (201 // 2, 121 // 2)), cv2.ROTATE_90_CLOCKWISE)[3:90, 5:]
    assert np.array_equal(VideoEdits(resize_factor=2, rotate=True, crop=(3, 90, 5, -1))(frame), upstream)


def test_static_resize_rotate_crop_and_fps_as_upstreams_options(media, settings, tmp_path) -> None:
    """--static holds a video's first frame at the video's rate; --resize-factor, --rotate and --crop edit a video's
    frames before detection and give the output their size; --fps sets a photo's rate."""
    video, speech = media["video"], media["speech"]  # 256x256 at 25 fps, the face drifting
    first = next(iter(read_frames(video)))
    out = tmp_path / "static.mp4"
    result = run_lipsync(LipSyncConfig(face=video, audio=speech, engine="baseline", static=True), out, settings)
    frames = list(read_frames(out))
    assert result.metrics["fps"] == 25.0 and len(frames) == expected_frames(1.0)

    def changed(a: np.ndarray, b: np.ndarray) -> float:  # the share of pixels more than a few levels apart
        return float((np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 8).mean())

    assert changed(frames[-1], first) < 0.05  # the first frame still, but for the mouth
    assert changed(list(read_frames(video))[len(frames) - 1], first) > 0.2  # where the video itself had drifted

    edited = tmp_path / "edited.mp4"
    config = LipSyncConfig(face=video, audio=speech, engine="baseline", resize_factor=2, rotate=True,
                           crop=(0, 100, 0, -1), box=(10, 10, 90, 90))  # fmt: skip  # a face on its side: no detection
    result = run_lipsync(config, edited, settings)
    info = probe_video(edited)
    assert (info.width, info.height) == (128, 100) == (result.metrics["width"], result.metrics["height"])

    photo = tmp_path / "photo.mp4"
    config = LipSyncConfig(face=FACE, audio=speech, engine="baseline", fps=30.0, rotate=True, precision="bf16",
                           static=True, resize_factor=2)  # fmt: skip
    result = run_lipsync(config, photo, settings)
    assert result.metrics["fps"] == 30.0 and probe_video(photo).fps == pytest.approx(30.0)
    # only what was asked is named (all three were, whatever was given)
    edits = "--resize-factor, --rotate edit a video's frames (as upstream's): a photo is kept as it is"
    assert edits in result.warnings
    assert "--static holds a video's first frame: a photo is held still already" in result.warnings
    assert any("baseline engine computes in fp32; --precision bf16" in w for w in result.warnings)
    assert result.precision == "fp32" and not any("no Wav2Lip checkpoint" in w for w in result.warnings)
    assert result.metrics["frames"] == expected_frames(1.0, 30.0)
    with pytest.raises(LipSyncError, match="leaves 256x0 pixels"):
        run_lipsync(LipSyncConfig(face=video, audio=speech, crop=(300, -1, 0, -1)), tmp_path / "none.mp4", settings)


def test_options_another_engine_reads_are_named_when_set() -> None:
    """The baseline has no network (no checkpoint, compile or precision check) and neither it nor Wav2Lip reads
    MuseTalk's options: set away from their defaults they are said to be unused, not silently dropped."""
    from engine.lipsync.pipeline import unused_options

    plain = LipSyncConfig.build({"face": "f.jpg", "audio": "a.wav"})
    assert unused_options(plain, "baseline") == unused_options(plain, "wav2lip") == []
    asked = LipSyncConfig.build({"face": "f.jpg", "audio": "a.wav", "compile": True, "bbox_shift": 5})
    assert unused_options(asked, "baseline") == ["--compile", "--bbox-shift"]
    assert unused_options(asked, "wav2lip") == ["--bbox-shift"]


def test_the_videos_sound_is_the_speech_files_own_rate_and_channels(settings, tmp_path) -> None:
    """48 kHz stereo speech with a 12 kHz tone on the right: the MP4's track is 48 kHz stereo and keeps the tone
    (the features' 16 kHz mono made every track 16 kHz mono, nothing above 8 kHz), as upstream's ffmpeg mux does."""
    import av

    rate, seconds = 48000, 1.0
    t = np.arange(int(rate * seconds)) / rate
    voice = 0.4 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    speech = tmp_path / "stereo.wav"
    with av.open(str(speech), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        both = np.stack([voice, voice + 0.2 * np.sin(2 * np.pi * 12000 * t)], axis=1)
        frame = av.AudioFrame.from_ndarray((both * 32767).astype("<i2").reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    out = tmp_path / "stereo.mp4"
    run_lipsync(LipSyncConfig(face=FACE, audio=speech, engine="baseline"), out, settings)
    with av.open(str(out)) as container:
        track = container.streams.audio[0]
        assert (track.codec_context.sample_rate, len(track.codec_context.layout.channels)) == (rate, 2)
        sound = np.concatenate([f.to_ndarray() for f in container.decode(track)], axis=1)  # planar (2, n)
    assert abs(sound.shape[1] / rate - seconds) < 0.05
    spectrum = np.abs(np.fft.rfft(sound[:, rate // 4 : rate // 4 + 8192], axis=1))
    tone = round(12000 * 8192 / rate)
    assert spectrum[1, tone] > 50 * spectrum[0, tone]  # the right channel's tone, the left without it


def test_a_speech_file_with_two_audio_streams_says_which_it_used(settings, tmp_path) -> None:
    """A video with two language tracks: the first was used, and a silent first track read only as "silent"."""
    import av

    path = tmp_path / "two.mka"
    with av.open(str(path), "w") as container:
        streams = [container.add_stream("pcm_s16le", rate=16000, layout="mono") for _ in range(2)]
        streams[0].metadata["language"], streams[1].metadata["language"] = "eng", "fra"
        for k, stream in enumerate(streams):
            samples = (np.sin(np.arange(16000) * (0.05 + 0.05 * k)) * 8000).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    result = run_lipsync(LipSyncConfig(face=FACE, audio=path, engine="baseline"), tmp_path / "out.mp4", settings)
    assert "two.mka has 2 audio streams (#0 eng; #1 fra): the first (#0) is the speech" in " ".join(result.warnings)
    single = tmp_path / "one.wav"
    with av.open(str(single), "w") as container:  # one stream: nothing said
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    from engine.core.audio import audio_streams_warning

    assert audio_streams_warning(single) is None and audio_streams_warning(tmp_path / "gone.wav") is None
