"""`avatarbench lipsync --engine musetalk` end to end on the CPU with tiny random MuseTalk weights in upstream's
layout: a photo and a short video become MP4s one frame per video frame of the speech, with the speech; without
the weights, one message names every missing file and where it goes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from engine.core.audio import SAMPLE_RATE
from engine.core.errors import SetupError
from engine.core.media import MediaError, VideoWriter, probe_video, read_frames
from engine.core.settings import load_settings
from engine.lipsync.config import LipSyncConfig, LipSyncError
from engine.lipsync.musetalk.audio import frame_count
from engine.lipsync.musetalk.random_weights import write_random_weights
from engine.lipsync.pipeline import run_lipsync

ROOT = Path(__file__).resolve().parent.parent
SR = SAMPLE_RATE
FACE = ROOT / "assets" / "face.jpg"
BOX = (170, 60, 285, 200)  # around the face in assets/face.jpg


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("musetalk_weights") / "models"
    write_random_weights(root)
    return root


def speech_file(path: Path, seconds: float) -> Path:
    """A speech-like tone (a 180 Hz carrier at 3 syllables a second) as a 16 kHz WAV."""
    import av

    t = np.arange(round(seconds * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray((wave * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def _face_video(path: Path, frames: int) -> Path:
    """The example face drifting a pixel a frame, at 25 fps."""
    import cv2

    face = cv2.imread(str(FACE))
    writer = VideoWriter(path, 25, face.shape[1], face.shape[0], codec="libx264")
    for i in range(frames):
        writer.write(np.roll(face, i, axis=1))
    writer.close()
    return path


def _settings(tmp_path: Path):
    return load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})


def test_a_photo_becomes_one_frame_per_25th_of_a_second_of_speech(weights, tmp_path) -> None:
    speech = speech_file(tmp_path / "speech.wav", 1.3)
    config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", musetalk_weights=str(weights), box=BOX)
    result = run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    frames = list(read_frames(tmp_path / "out.mp4"))
    assert len(frames) == result.metrics["frames"] == frame_count(round(1.3 * SR), 25.0) == 33
    assert result.metrics["engine"] == "musetalk" and result.metrics["detector"] == "fixed box"
    assert any(w.startswith("the face box is the fixed --box, as given") for w in result.warnings)  # not a fallback
    stages = {stage.name for stage in result.stages}  # the video's decode and encode beside the networks' stages
    assert {"audio", "decode", "load", "detect", "vae encode", "parse", "whisper", "unet", "vae decode", "blend",
            "encode"} <= stages  # fmt: skip
    info = probe_video(tmp_path / "out.mp4")
    assert info.has_audio and abs(info.duration_s - 33 / 25) < 0.1
    # The generated face is blended in around the box; far from it the photo stays (through the codec's rounding).
    import cv2

    change = np.abs(frames[0].astype(int) - cv2.imread(str(FACE)).astype(int)).mean(axis=2)
    assert change[60:200, 170:285].mean() > 10 and change[:, :100].mean() < 4 and change[400:].mean() < 4


def test_speech_librosa_reads_through_ffmpeg_is_heard_as_16_bit_pcm(weights, tmp_path, monkeypatch) -> None:
    """Upstream's librosa.load gives an MP4's sound (audioread's ffmpeg) as 16-bit PCM, a WAV's as it is."""
    import av

    from engine.core.errors import InputError
    from engine.lipsync.musetalk import run

    asked: list[bool] = []

    def recording(path, max_seconds=None, resampler=None, sixteen_bit=False):
        asked.append(sixteen_bit)
        raise InputError("enough")

    monkeypatch.setattr(run, "load_audio", recording)
    m4a = tmp_path / "speech.m4a"
    with av.open(str(m4a), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, SR), np.float32), format="fltp", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    for speech in (speech_file(tmp_path / "speech.wav", 0.5), m4a):
        config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", musetalk_weights=str(weights), box=BOX)
        with pytest.raises(InputError, match="enough"):
            run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    assert asked == [False, True]


def test_a_box_past_the_picture_is_said(weights, tmp_path, monkeypatch) -> None:
    from engine.core.errors import InputError
    from engine.core.results import RunResult
    from engine.lipsync.musetalk import run

    said: list[str] = []
    monkeypatch.setattr(RunResult, "warn", lambda self, message: said.append(message))
    monkeypatch.setattr(run, "load_audio", lambda *a, **k: (_ for _ in ()).throw(InputError("enough")))
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "speech.wav", 0.5), engine="musetalk",
                           musetalk_weights=str(weights), box=(300, 0, 600, 200))  # fmt: skip
    with pytest.raises(InputError, match="enough"):
        run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    assert any(m.startswith("the face box 300,0,600,200 reaches past the 512x512 picture") for m in said)


def test_a_second_clip_for_the_same_face_reuses_its_prepared_avatar(weights, tmp_path) -> None:
    """MuseTalk's real-time mode: in one process (a worker), the networks and the prepared avatar stay; a second
    clip costs whisper, UNet, VAE decode and blend only, and the same photo under another name is the same face."""
    from engine.lipsync.musetalk import run

    run.NETWORKS.clear()
    run.AVATARS.clear()
    settings = _settings(tmp_path)
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "a.wav", 0.6), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    first = run_lipsync(config, tmp_path / "first.mp4", settings, device="cpu")
    renamed = tmp_path / "renamed.jpg"
    renamed.write_bytes(FACE.read_bytes())
    second = run_lipsync(dataclasses.replace(config, face=renamed, audio=speech_file(tmp_path / "b.wav", 0.9)),
                         tmp_path / "second.mp4", settings, device="cpu")  # fmt: skip
    assert not first.metrics["avatar_cached"] and not first.metrics["networks_cached"]
    assert second.metrics["avatar_cached"] and second.metrics["networks_cached"]
    stages = {stage.name for stage in second.stages}
    assert {"whisper", "unet", "vae decode", "blend"} <= stages and not stages & {"detect", "vae encode", "parse"}
    assert second.metrics["frames"] == 23 and len(list(read_frames(tmp_path / "second.mp4"))) == 23
    # Another box is another avatar.
    third = run_lipsync(dataclasses.replace(config, box=(160, 50, 290, 210)), tmp_path / "third.mp4", settings,
                        device="cpu")  # fmt: skip
    assert not third.metrics["avatar_cached"] and third.metrics["networks_cached"]
    assert [first.metrics["avatar_source"], second.metrics["avatar_source"]] == ["prepared", "memory"]


def test_upstreams_margin_parsing_mode_cheek_widths_and_blur_make_their_own_avatar(weights, tmp_path) -> None:
    """--musetalk-extra-margin, --musetalk-parsing-mode, --musetalk-cheek-widths (upstream's --extra_margin,
    --parsing_mode, --left/right_cheek_width) and --musetalk-blur (its two scripts' blur) reach the prepared avatar,
    and another choice is another avatar."""
    from engine.lipsync.musetalk import run

    run.AVATARS.clear()
    settings = _settings(tmp_path)
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "a.wav", 0.3), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    run_lipsync(config, tmp_path / "default.mp4", settings, device="cpu")
    (default,) = [avatar for avatar, _ in run.AVATARS.values()]
    assert (default.extra_margin, default.parsing_mode, default.cheek_widths) == (10, "jaw", (90, 90))  # v1.5's
    assert default.blur_fraction == 0.1  # realtime_inference.py's
    chosen = dataclasses.replace(config, musetalk_extra_margin=0, musetalk_parsing_mode="neck",
                                 musetalk_cheek_widths=(70, 80), musetalk_blur=0.05)  # fmt: skip
    result = run_lipsync(chosen, tmp_path / "chosen.mp4", settings, device="cpu")
    assert result.metrics["avatar_source"] == "prepared"
    avatar = next(a for a, _ in run.AVATARS.values() if a is not default)
    assert (avatar.extra_margin, avatar.parsing_mode, avatar.cheek_widths) == (0, "neck", (70, 80))
    assert avatar.blur_fraction == 0.05  # inference.py's
    assert avatar.boxes[0][3] == default.boxes[0][3] - 10  # the margin below the box
    blurred = dataclasses.replace(config, musetalk_blur=0.05)  # the blur alone makes another avatar
    assert run_lipsync(blurred, tmp_path / "blurred.mp4", settings, device="cpu").metrics["avatar_source"] == "prepared"
    # v1.5's defaults written out, or cheek widths the neck mode never reads, are the same avatar: not prepared again
    # (memory keeps the last two, so from disk)
    written = dataclasses.replace(config, musetalk_extra_margin=10, musetalk_parsing_mode="jaw")
    assert run_lipsync(written, tmp_path / "written.mp4", settings, device="cpu").metrics["avatar_source"] == "disk"
    cheeks = dataclasses.replace(chosen, musetalk_cheek_widths=(10, 20))
    assert run_lipsync(cheeks, tmp_path / "cheeks.mp4", settings, device="cpu").metrics["avatar_source"] == "disk"


def test_weights_replaced_in_place_prepare_the_avatar_again(weights, tmp_path) -> None:
    """An avatar's latents and masks come from its networks: weights replaced under the same names (a new download,
    a fine-tune) must not reuse the avatar made with the old ones, from memory or from disk."""
    import os
    import shutil

    from engine.lipsync.musetalk import run

    mine = Path(shutil.copytree(weights, tmp_path / "weights"))
    settings = _settings(tmp_path)
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "a.wav", 0.3), engine="musetalk",
                           musetalk_weights=str(mine), box=BOX)  # fmt: skip
    assert run_lipsync(config, tmp_path / "a.mp4", settings, device="cpu").metrics["avatar_source"] == "prepared"
    vae = next((mine / "sd-vae").glob("diffusion_pytorch_model.*"))
    later = vae.stat().st_mtime_ns + 10**9
    os.utime(vae, ns=(later, later))  # as a file written again
    assert run_lipsync(config, tmp_path / "b.mp4", settings, device="cpu").metrics["avatar_source"] == "prepared"
    run.NETWORKS.clear()
    run.AVATARS.clear()  # a fresh worker: the avatar stored on disk for these weights is found
    assert run_lipsync(config, tmp_path / "c.mp4", settings, device="cpu").metrics["avatar_source"] == "disk"


def test_one_owners_prepared_avatar_is_never_anothers(weights, tmp_path) -> None:
    """In the app, that a face came back prepared (and fast) told one person that another had lip-synced that very
    face: jobs reuse only their own owner's avatars, from memory or from disk."""
    from engine.lipsync.musetalk import run
    from engine.lipsync.musetalk.avatar_store import AVATAR_OWNER

    settings = _settings(tmp_path)
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "a.wav", 0.3), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip

    def source(owner: str, name: str) -> str:
        token = AVATAR_OWNER.set(owner)
        try:
            return run_lipsync(config, tmp_path / name, settings, device="cpu").metrics["avatar_source"]
        finally:
            AVATAR_OWNER.reset(token)

    assert [source("alice", "1.mp4"), source("alice", "2.mp4"), source("bob", "3.mp4")] == ["prepared", "memory",
                                                                                          "prepared"]  # fmt: skip
    run.AVATARS.clear()  # a fresh worker: each finds their own on disk
    assert [source("bob", "4.mp4"), source("alice", "5.mp4")] == ["disk", "disk"]
    assert len(list((tmp_path / "data" / "avatars").glob("*.avatar"))) == 2


def test_a_lipsync_job_runs_as_its_owner(monkeypatch) -> None:
    from types import SimpleNamespace

    from engine.lipsync import jobs
    from engine.lipsync.musetalk.avatar_store import AVATAR_OWNER

    monkeypatch.setattr(jobs, "run_file_job", lambda *args, **kwargs: AVATAR_OWNER.get())
    assert jobs.handle(SimpleNamespace(owner="browser:ab12"), lambda f, label: None, None) == "browser:ab12"
    assert AVATAR_OWNER.get() is None  # the worker's next job starts as nobody


def test_a_prepared_avatar_outlives_its_worker_on_disk(weights, tmp_path) -> None:
    """A new worker (empty in-memory caches) finds the avatar an earlier one prepared in DATA_DIR/avatars and makes
    the same frames from it; a damaged file is prepared again; the least recently used go past the budget."""
    from engine.lipsync.musetalk import run
    from engine.lipsync.musetalk.avatar_store import AvatarStore

    settings = _settings(tmp_path)
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "a.wav", 0.6), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    outputs = []
    for name in ("first", "second", "third"):
        run.NETWORKS.clear()
        run.AVATARS.clear()  # as in a fresh worker process
        if name == "third":  # damage the stored file: it is prepared again, not an error
            (stored,) = (settings.data_dir / "avatars").glob("*.avatar")
            stored.write_bytes(b"not an avatar")
        result = run_lipsync(config, tmp_path / f"{name}.mp4", settings, device="cpu")
        outputs.append((result, [f.astype(int) for f in read_frames(tmp_path / f"{name}.mp4")]))
    sources = [r.metrics["avatar_source"] for r, _ in outputs]
    assert sources == ["prepared", "disk", "prepared"]
    stages = {stage.name for stage in outputs[1][0].stages}
    assert not stages & {"detect", "vae encode", "parse"}  # the stored avatar's work is not done again
    for _, frames in outputs[1:]:  # the same frames (through the encoder's rounding)
        assert len(frames) == len(outputs[0][1])
        assert max(np.abs(a - b).mean() for a, b in zip(frames, outputs[0][1], strict=True)) < 0.5
    store = AvatarStore(settings.data_dir / "avatars", budget_bytes=0)
    (kept,) = store.folder.glob("*.avatar")
    extra = store.folder / ("0" * 32 + ".avatar")
    extra.write_bytes(kept.read_bytes())
    assert store.evict(keep=extra) == [kept] and [p.name for p in store.folder.glob("*.avatar")] == [extra.name]


def test_an_avatar_folder_that_cannot_be_made_costs_the_next_run_a_preparation_not_this_its_result(
    tmp_path: Path,
) -> None:
    """A file where DATA_DIR/avatars goes (or a read-only data folder) ended the run in a traceback after its work."""
    from engine.lipsync.musetalk.avatar_store import PREPARED, AvatarStore

    (tmp_path / "avatars").write_text("a file, not a folder")
    prepared = object()
    assert AvatarStore(tmp_path / "avatars").get_or_prepare([("key",)], lambda: prepared) == (prepared, PREPARED)


def test_a_run_that_fails_midway_keeps_the_earlier_file_and_leaves_no_partial(weights, tmp_path, monkeypatch) -> None:
    """Frames go to the encoding thread in groups while the rest are made; a failure after some were written
    deletes the half-written file and leaves what was at the output path before."""
    from engine.lipsync.musetalk import run

    def fails_after_some_frames(*args, **kwargs):
        for i, frame in enumerate(generate(*args, **kwargs)):
            if i == 19:  # the encoding thread has written two groups of 8
                raise RuntimeError("the device went away")
            yield frame

    generate = run.generate
    monkeypatch.setattr(run, "generate", fails_after_some_frames)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "s.wav", 1.3), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    with pytest.raises(RuntimeError, match="the device went away"):
        run_lipsync(config, out, _settings(tmp_path), device="cpu")
    assert out.read_bytes() == b"an earlier result" and not list(tmp_path.glob(".*partial"))
    assert not [t for t in threading.enumerate() if t.name == "musetalk-encode"]


def test_tf32_on_the_cpu_is_refused_as_wav2lip_refuses_it(weights, tmp_path) -> None:
    """It ran as plain fp32, silently (and on CUDA without TensorFloat-32)."""
    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "s.wav", 0.5), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX, precision="tf32")  # fmt: skip
    with pytest.raises(SetupError, match=r"tf32 is not supported on .* \(cpu\); supported: fp32"):
        run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")


def test_a_face_in_neither_format_is_told_a_photo_or_a_video_is_taken(weights, tmp_path) -> None:
    """The video reader's refusal listed videos alone, as though MuseTalk took no photos."""
    face = tmp_path / "face.heic"
    face.write_bytes(b"not a picture\n" * 50)
    config = LipSyncConfig(face=face, audio=speech_file(tmp_path / "s.wav", 0.5), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    with pytest.raises(MediaError, match=r"face\.heic could not be read as a video .*; accepted: an image \(\.jpg, "):
        run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")


def test_a_video_shorter_than_the_speech_plays_forward_then_backward(weights, tmp_path) -> None:
    video = _face_video(tmp_path / "face.mp4", 10)
    speech = speech_file(tmp_path / "speech.wav", 1.0)
    config = LipSyncConfig(face=video, audio=speech, engine="musetalk", musetalk_weights=str(weights), box=BOX,
                           batch_size=4, paste="upstream", check_precision=True, detect_scale=0.7,
                           fps=30.0)  # fmt: skip
    result = run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    assert result.metrics["frames"] == 25 and len(list(read_frames(tmp_path / "out.mp4"))) == 25
    # Wav2Lip's options, and those a fixed box or a video make no use of: said and left (some were silent)
    assert "MuseTalk does not use --paste, --check-precision (Wav2Lip's options)" in result.warnings
    assert "a fixed --box is used as it is: --detect-scale (for detected boxes) changed nothing" in result.warnings
    assert "--fps applies to a still face: the video keeps its own 25 fps" in result.warnings


def test_an_avatar_that_would_not_fit_in_memory_is_refused_before_the_networks_load(
    weights, tmp_path, monkeypatch
) -> None:
    """An avatar keeps every frame it plays: a long high-resolution face video ended the process out of memory
    once the networks were loaded."""
    import engine.lipsync.musetalk.run as musetalk

    video = _face_video(tmp_path / "face.mp4", 130)  # 512x512: 1.5 MiB a frame, twice while it is prepared
    settings = _settings(tmp_path)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2**28))  # 0.25 GiB free
    loads = []
    monkeypatch.setattr(musetalk, "_load", lambda *a: loads.append(a) or pytest.fail("the networks were loaded"))
    config = LipSyncConfig(face=video, audio=speech_file(tmp_path / "speech.wav", 5.0), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    message = r"avatar of 125 frames of 512x512 needs about 0\.18 GiB .* than the 0\.17 GiB .* shorter face"
    with pytest.raises(LipSyncError, match=message):
        run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu")
    with pytest.raises(LipSyncError, match="avatar of 130 frames of 512x512"):  # `avatarbench avatar`: all of it
        musetalk.prepare_stored_avatar(config, settings, device="cpu")
    monkeypatch.setattr(musetalk, "MEMORY_CHECK_FRAMES", 10)  # a header that states no length: checked as read
    with pytest.raises(LipSyncError, match="avatar of 120 frames"):
        musetalk._video_frames(config, settings, None)
    assert len(musetalk._video_frames(config, settings, 100)) == 100 and not loads


def test_a_one_frame_gif_is_a_photo(weights, tmp_path) -> None:
    """Read as a video it played at its container's default of 100 fps (4x the frames of a photo)."""
    from PIL import Image

    Image.open(FACE).save(tmp_path / "face.gif")
    config = LipSyncConfig(face=tmp_path / "face.gif", audio=speech_file(tmp_path / "s.wav", 0.4), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    result = run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    assert result.metrics["frames"] == 10 and probe_video(tmp_path / "out.mp4").fps == 25
    assert "face.gif has one frame: lip-synced as a still face at 25 fps (--fps), not its container's 100" in (
        result.warnings
    )


def test_a_cpu_batch_that_would_not_fit_in_memory_is_refused_with_one_that_does(weights, tmp_path, monkeypatch) -> None:
    """The decoder takes about 320 MiB a frame in fp32: batch 64 on the CPU needed about 20 GB, and the
    out-of-memory killer ended the process. The default batch is left alone."""
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2**30))
    speech = speech_file(tmp_path / "s.wav", 0.3)
    config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", musetalk_weights=str(weights), box=BOX,
                           batch_size=64)  # fmt: skip
    message = (r"MuseTalk batch size 64 needs about 20\.0 GiB of memory on the CPU \(320 MiB a frame, .*\) and "
               r"1\.0 GiB is free for this job: use a batch size of at most 2 ")  # fmt: skip
    with pytest.raises(LipSyncError, match=message):
        run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    for batch in (2, None):
        result = run_lipsync(dataclasses.replace(config, batch_size=batch), tmp_path / "out.mp4", _settings(tmp_path),
                             device="cpu")  # fmt: skip
        assert result.metrics["batch_size"] == 2


def test_without_the_weights_one_message_names_what_to_download(tmp_path) -> None:
    speech = speech_file(tmp_path / "speech.wav", 1.0)
    config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", box=BOX)
    with pytest.raises(SetupError) as error:
        run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
    message = str(error.value)
    assert "musetalkV15/unet.pth" in message and "face-parse-bisent/79999_iter.pth" in message
    assert "AVATARBENCH_MUSETALK_DIR" in message and "\n" not in message
    assert not (tmp_path / "out.mp4").exists()
    with pytest.raises(SetupError, match=r"face\.jpg is a file, not a folder\. MuseTalk v15: missing"):
        run_lipsync(dataclasses.replace(config, musetalk_weights=str(FACE)), tmp_path / "out.mp4", _settings(tmp_path),
                    device="cpu")  # fmt: skip


def test_the_command_line_runs_it(weights, tmp_path) -> None:
    speech = speech_file(tmp_path / "speech.wav", 0.5)
    done = subprocess.run(
        [sys.executable, "-m", "engine", "lipsync", "--face", str(FACE), "--audio", str(speech), "--engine",
         "musetalk", "--musetalk-weights", str(weights), "--box", ",".join(map(str, BOX)), "--bbox-shift", "5",
         "--device", "cpu", "--out", str(tmp_path / "out.mp4"), "--json", str(tmp_path / "out.json"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["metrics"]["frames"] == 13 and "MuseTalk v15" in report["metrics"]["engine_label"]


def test_avatar_prepares_a_whole_video_once_for_speech_of_any_length(weights, tmp_path) -> None:
    """`avatarbench avatar` (another process) prepares every frame of a video into DATA_DIR/avatars; lip-syncs of
    that face, a shorter and a longer speech than the video, then start from it: no detection, encode or parsing."""
    video = _face_video(tmp_path / "face.mp4", 12)
    done = subprocess.run(
        [sys.executable, "-m", "engine", "avatar", "--face", str(video), "--musetalk-weights", str(weights),
         "--box", ",".join(map(str, BOX)), "--device", "cpu", "--json", str(tmp_path / "avatar.json"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "avatar.json").read_text())
    assert report["metrics"]["frames"] == 12 and report["metrics"]["avatar_source"] == "prepared"
    assert "a MuseTalk avatar of 12 frames, 12 with a face (prepared)" in done.stdout
    from engine.lipsync.musetalk import run

    for seconds, frames in ((0.2, 5), (1.0, 25)):  # fewer frames than the video, and more (forward then back)
        run.AVATARS.clear()
        config = LipSyncConfig(face=video, audio=speech_file(tmp_path / f"{seconds}.wav", seconds), engine="musetalk",
                               musetalk_weights=str(weights), box=BOX)  # fmt: skip
        result = run_lipsync(config, tmp_path / f"{seconds}.mp4", _settings(tmp_path), device="cpu")
        assert result.metrics["avatar_source"] == "disk" and result.metrics["frames"] == frames
        assert not {stage.name for stage in result.stages} & {"decode", "detect", "vae encode", "parse"}


def test_an_avatar_of_a_videos_first_frames_is_not_its_whole_video(weights, tmp_path) -> None:
    """Guards the frame count in the avatar's key: a short speech prepares the video's first 5 frames only; a
    longer one needs all 12, and reusing the 5 would loop them where the video goes on."""
    from engine.lipsync.musetalk import run

    run.AVATARS.clear()
    video = _face_video(tmp_path / "face.mp4", 12)
    settings = _settings(tmp_path)
    sources = []
    for seconds in (0.2, 1.0, 0.2):
        config = LipSyncConfig(face=video, audio=speech_file(tmp_path / f"{seconds}.wav", seconds), engine="musetalk",
                               musetalk_weights=str(weights), box=BOX)  # fmt: skip
        sources.append(run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu").metrics["avatar_source"])
    assert sources == ["prepared", "prepared", "memory"]


def test_an_avatar_is_prepared_again_when_its_shift_detector_scale_or_landmark_file_changes(
    weights, tmp_path, monkeypatch
) -> None:
    """Guards the rest of the avatar's key: bbox_shift moves every box, detect_scale changes what the detector finds,
    and a DWPose file replaced in place gives other landmarks; reusing the avatar from before any of them kept the
    old faces. The landmark model here finds no face, so the detector's boxes are used either way."""
    from engine.lipsync.musetalk import run

    landmark_file = tmp_path / "dw-ll_ucoco_384.onnx"
    landmark_file.write_bytes(b"first")
    no_landmarks = SimpleNamespace(name="dwpose", landmarks=lambda frames: [None] * len(frames), warnings=[])
    monkeypatch.setattr(run, "landmark_files", lambda files, person_boxes, result: (landmark_file, None))
    monkeypatch.setattr(run, "landmark_model", lambda paths, device, settings, result: no_landmarks)
    run.AVATARS.clear()
    speech, settings = speech_file(tmp_path / "speech.wav", 0.2), _settings(tmp_path)

    def source(**changes) -> str:
        config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", musetalk_weights=str(weights), **changes)
        return run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu").metrics["avatar_source"]

    assert [source(), source(bbox_shift=4), source(detect_scale=1.0)] == ["prepared"] * 3
    landmark_file.write_bytes(b"second file")
    assert source() == "prepared"


def test_an_avatar_prepared_on_one_gpu_serves_every_gpu_of_that_kind(weights, tmp_path) -> None:
    """The stored avatar's key held the device with its index, so a worker on cuda:1 prepared again what cuda:0's
    had stored; the networks' own cache still tells the devices apart."""
    from engine.core.device import DeviceChoice
    from engine.core.results import RunResult
    from engine.lipsync.musetalk import run

    config = LipSyncConfig(face=FACE, audio=speech_file(tmp_path / "a.wav", 0.6), engine="musetalk",
                           musetalk_weights=str(weights), box=BOX)  # fmt: skip
    settings = _settings(tmp_path)

    def load(device: torch.device) -> run._Loaded:
        return run._load(config, settings, DeviceChoice(device, "cpu", ""), torch.float32, RunResult(), print)

    loaded = [load(torch.device("cpu")), load(torch.device("cpu", 1))]
    assert loaded[0].key != loaded[1].key and loaded[0].avatar_key == loaded[1].avatar_key


def test_a_videos_avatar_holds_its_first_frames_in_order_as_upstreams_cycle_shows_them(
    weights, tmp_path, monkeypatch
) -> None:
    """Guards which frames an avatar holds: upstream's real-time avatar holds every frame of the video and shows
    cycle entry i for output frame i (the video forward, then backward). A speech shorter than the video prepares
    exactly its first frames, which are the ones shown; a longer one prepares them all and plays them back."""
    from engine.lipsync.musetalk import run

    video = _face_video(tmp_path / "face.mp4", 12)
    decoded = list(read_frames(video))
    used = []
    real_generate = run.generate

    def generate_spy(avatar, *args, **kwargs):
        used.append(avatar)
        return real_generate(avatar, *args, **kwargs)

    monkeypatch.setattr(run, "generate", generate_spy)
    for seconds, frames, held in ((0.2, 5, 5), (0.6, 15, 12)):
        run.AVATARS.clear()
        config = LipSyncConfig(face=video, audio=speech_file(tmp_path / f"{seconds}.wav", seconds), engine="musetalk",
                               musetalk_weights=str(weights), box=BOX)  # fmt: skip
        result = run_lipsync(config, tmp_path / "out.mp4", _settings(tmp_path), device="cpu")
        avatar = used[-1]
        assert result.metrics["frames"] == frames and len(avatar.frames) == held
        assert all(np.array_equal(a, b) for a, b in zip(avatar.frames, decoded, strict=False))
    assert [avatar.source_frame(i) for i in range(15)] == [*range(12), 11, 10, 9]
