"""Live output: a run asked to stream writes its MP4's own packets into one-second HLS segments as it goes. The
segments finished mid-run are readable (never half a segment), decode to exactly the MP4's frames, end with the
playlist's end mark, and join into a playable MP4; lip-sync (MuseTalk and the baseline) streams through its
jobs, only to the job's owner; finished jobs' streams are swept."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from test_musetalk_lipsync import speech_file

from engine.core.hls import PLAYLIST, join_segments, read_stream, stream_folder, stream_note
from engine.core.media import VideoWriter
from engine.core.settings import load_settings
from engine.lipsync.config import LipSyncConfig
from engine.lipsync.pipeline import run_lipsync

ROOT = Path(__file__).resolve().parent.parent
FACE = ROOT / "assets" / "face.jpg"
SR = 16000


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def _audio_packets(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(audio=0) if p.size)


def test_the_segments_are_the_mp4s_frames_and_grow_while_it_is_written(tmp_path) -> None:
    out = tmp_path / "a.mp4"
    audio = (0.2 * np.sin(np.arange(SR * 4) / SR * 2 * np.pi * 300)).astype(np.float32)
    writer = VideoWriter(out, 25, 321, 240, audio=audio, stream_to=stream_folder(out), codec="libx264")
    rng = np.random.default_rng(0)
    seen_mid_run = None
    for i in range(100):
        writer.write(rng.integers(0, 255, (240, 321, 3), np.uint8))
        if i == 70:
            seen_mid_run = read_stream(stream_folder(out))
    writer.close()
    assert seen_mid_run is not None and seen_mid_run.segments and not seen_mid_run.ended
    assert all(p.suffix == ".ts" and p.is_file() for p in seen_mid_run.segments)  # finished ones only
    final = read_stream(stream_folder(out))
    assert final.ended and final.segments[: len(seen_mid_run.segments)] == seen_mid_run.segments
    assert final.duration == pytest.approx(4.0, abs=0.05)
    assert len(final.segments) >= 4  # a keyframe about every second (a two-second GOP made two segments)
    playlist = (stream_folder(out) / PLAYLIST).read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist  # played from its start
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in playlist  # each segment starts at a keyframe: a player may start at any
    whole = _frames(out)
    streamed = [frame for part in final.segments for frame in _frames(part)]
    assert len(streamed) == len(whole) == 100
    assert all(np.array_equal(a, b) for a, b in zip(whole, streamed, strict=True))
    assert all(_audio_packets(part) > 0 for part in final.segments)  # the sound is in every segment
    joined_path = join_segments(final.segments[:2], tmp_path / "first.mp4")
    joined = _frames(joined_path)  # the first two segments, every frame of them, with their sound
    assert len(joined) == sum(len(_frames(part)) for part in final.segments[:2]) < 100 and all(
        np.array_equal(a, b) for a, b in zip(whole, joined, strict=False)
    )
    assert _audio_packets(joined_path) > 0 and not list(tmp_path.glob("first.mp4.*"))  # no partial file left


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_each_segment_starts_at_its_second_whatever_keyframes_the_encoder_chose(tmp_path, fps: float) -> None:
    """Scenes cut every 7 frames: libx264's own keyframes (every 24 frames at 25 fps, and at scene cuts) made
    segments of 1.92 s and almost 2 s, the first picture a viewer waits for twice as late. A keyframe forced at
    each second's first frame makes FFmpeg's HLS muxer cut every segment there."""
    out = tmp_path / "a.mp4"
    writer = VideoWriter(out, fps, 64, 48, stream_to=stream_folder(out), codec="libx264")
    for i in range(round(4 * fps)):
        writer.write(np.full((48, 64, 3), (i // 7) * 40 % 256, np.uint8))
    writer.close()
    frames = [len(_frames(part)) for part in read_stream(stream_folder(out)).segments]
    assert frames == [math.ceil(fps)] * 4


def test_a_streams_seconds_are_its_playlists_a_short_last_segment_included(tmp_path) -> None:
    """Guards read_stream's lengths: they are the playlist's own, so a run of 2.4 s says 2.4 s (a stopped job's
    note and a preview say it), not three whole seconds."""
    out = tmp_path / "short.mp4"
    writer = VideoWriter(out, 25, 64, 64, stream_to=stream_folder(out), codec="libx264")
    for i in range(60):
        writer.write(np.full((64, 64, 3), i, np.uint8))
    writer.close()
    stream = read_stream(stream_folder(out))
    assert stream.seconds == pytest.approx((1.0, 1.0, 0.4)) and stream.duration == pytest.approx(2.4)


def test_a_failed_join_leaves_no_partial_file(tmp_path) -> None:
    """Each viewer's join writes its own temporary file beside the output: one that fails is removed, not left to
    fill the stream's folder."""
    import av

    folder = tmp_path / "x.stream"
    folder.mkdir()
    (folder / "part-00000.ts").write_bytes(b"not a transport stream" * 50)
    with pytest.raises(av.error.FFmpegError):
        join_segments([folder / "part-00000.ts"], folder / "so-far-1.mp4")
    assert [p.name for p in folder.iterdir()] == ["part-00000.ts"]


def _sound_from_first_frame(path: Path) -> np.ndarray:
    """The decoded sound from the instant the first video frame is shown (a stream's own timestamps)."""
    import av

    with av.open(str(path)) as container:
        shown = next(container.decode(video=0)).time
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    sound = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return sound[round((shown - frames[0].time) * frames[0].sample_rate) :]


def test_the_streams_sound_keeps_the_mp4s_sync_with_the_picture(tmp_path) -> None:
    """AAC's encoder delay (1024 samples before the first real one): the MP4 skips it with an edit list, which an
    MPEG-TS segment has not; FFmpeg starts the segment's sound that much before its picture instead. Checked, so
    the stream's lips stay where the MP4's are: the sound from the first frame on is the same, sample for sample."""
    out = tmp_path / "sync.mp4"
    t = np.arange(SR * 2) / SR
    chirp = (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)  # any shift shows
    writer = VideoWriter(out, 25, 64, 64, audio=chirp, stream_to=stream_folder(out), codec="libx264")
    for i in range(50):
        writer.write(np.full((64, 64, 3), i * 5, np.uint8))
    writer.close()
    first = read_stream(stream_folder(out)).segments[0]
    whole, streamed = _sound_from_first_frame(out), _sound_from_first_frame(first)
    assert len(streamed) > SR // 2
    assert np.abs(whole[: len(streamed)] - streamed).max() < 1e-3


def test_a_failed_run_ends_its_stream_and_a_missing_one_is_empty(tmp_path) -> None:
    assert read_stream(tmp_path / "nothing.stream") == read_stream(tmp_path / "none")
    assert not read_stream(tmp_path / "none").segments
    (tmp_path / "file.stream").write_text("a file where the folder would be")  # nothing to show, no traceback
    assert read_stream(tmp_path / "file.stream") == read_stream(tmp_path / "none")
    out = tmp_path / "b.mp4"
    writer = VideoWriter(out, 25, 64, 64, stream_to=stream_folder(out), codec="libx264")
    for i in range(40):
        writer.write(np.full((64, 64, 3), i, np.uint8))
    writer.abort()
    assert not out.exists() and read_stream(stream_folder(out)).ended


def test_a_second_run_to_the_same_output_starts_a_fresh_stream(tmp_path) -> None:
    """The first run's finished playlist (and its later segments) stayed until the second run's first segment: a
    player opened then played the old video. A killed run's half-written files (FFmpeg's `.tmp` names) go too."""
    out = tmp_path / "again.mp4"
    for frames in (275, 10):  # eleven seconds (part-00010.ts too), then less than one
        if frames == 10:
            for half_written in ("part-00011.ts.tmp", PLAYLIST + ".tmp"):
                (stream_folder(out) / half_written).write_bytes(b"cut short")
        writer = VideoWriter(out, 25, 64, 64, stream_to=stream_folder(out), codec="libx264")
        if frames == 10:
            assert not list(stream_folder(out).iterdir())  # nothing of the first run's stream is left
        for i in range(frames):
            writer.write(np.full((64, 64, 3), i % 256, np.uint8))
        writer.close()
    assert len(read_stream(stream_folder(out)).segments) == 1


def test_a_playlist_cannot_point_outside_its_folder(tmp_path) -> None:
    folder = tmp_path / "x.stream"
    folder.mkdir()
    (folder / PLAYLIST).write_text("#EXTM3U\n#EXTINF:1.0,\n../../etc/passwd\n#EXTINF:oops,\npart-1.ts\n")
    stream = read_stream(folder)
    assert stream.segments == (folder / "passwd", folder / "part-1.ts") and not stream.ended


def test_a_command_names_its_playlist_only_when_it_streamed() -> None:
    """Guards stream_note: the line after a command's result points at talk.stream/index.m3u8 beside talk.mp4, and
    a run that did not stream prints nothing about a stream."""
    assert stream_note(False, "out/talk.mp4") == ""
    assert (
        stream_note(True, "out/talk.mp4")
        == f"\nlive stream (HLS, as it was made): {Path('out/talk.stream/index.m3u8')}"
    )


def test_a_lipsync_run_streams_only_when_asked(tmp_path) -> None:
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    speech = speech_file(tmp_path / "speech.wav", 3.0)
    plain, live = tmp_path / "plain.mp4", tmp_path / "live.mp4"
    run_lipsync(LipSyncConfig(face=FACE, audio=speech, engine="baseline"), plain, settings)
    assert not stream_folder(plain).exists()
    run_lipsync(LipSyncConfig(face=FACE, audio=speech, engine="baseline", stream=True), live, settings)
    stream = read_stream(stream_folder(live))
    assert stream.ended and len(stream.segments) >= 2
    whole = _frames(live)
    streamed = [frame for part in stream.segments for frame in _frames(part)]
    assert len(whole) == len(streamed) > 60 and all(np.array_equal(a, b) for a, b in zip(whole, streamed, strict=True))


def test_a_portrait_run_streams_too(tmp_path) -> None:
    from engine.portrait.config import PortraitConfig
    from engine.portrait.pipeline import run_portrait

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    out = tmp_path / "portrait.mp4"
    config = PortraitConfig(FACE, ROOT / "assets" / "driving.mp4", engine="baseline", max_frames=40, stream=True)
    run_portrait(config, out, settings)
    stream = read_stream(stream_folder(out))
    assert stream.ended and len(stream.segments) >= 1
    whole = _frames(out)
    streamed = [frame for part in stream.segments for frame in _frames(part)]
    assert len(whole) == len(streamed) == 40 and all(np.array_equal(a, b) for a, b in zip(whole, streamed, strict=True))


def test_musetalk_streams_its_first_seconds_before_the_rest_is_made(tmp_path) -> None:
    from engine.lipsync.musetalk.random_weights import write_random_weights

    weights = tmp_path / "models"
    write_random_weights(weights)
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    speech = speech_file(tmp_path / "speech.wav", 3.0)
    out = tmp_path / "musetalk.mp4"
    config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", musetalk_weights=str(weights),
                           box=(170, 60, 285, 200), batch_size=4, stream=True)  # fmt: skip
    seen: list[tuple[float, int]] = []

    def progress(fraction: float, label: str) -> None:
        if label.startswith("frame"):
            seen.append((fraction, len(read_stream(stream_folder(out)).segments)))

    run_lipsync(config, out, settings, progress=progress)
    early = [count for fraction, count in seen if fraction < 0.95]
    assert max(early) >= 1, seen  # a finished segment was there while frames were still being made
    stream = read_stream(stream_folder(out))
    assert stream.ended
    streamed = [frame for part in stream.segments for frame in _frames(part)]
    whole = _frames(out)
    assert len(streamed) == len(whole) == 75 and all(np.array_equal(a, b) for a, b in zip(whole, streamed, strict=True))


def test_finished_jobs_streams_are_swept_and_running_ones_kept(tmp_path) -> None:
    import os

    from engine.jobs.housekeeping import STREAM_KEEP_S, sweep_streams
    from engine.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    running = store.submit("lipsync", {"files": {}, "options": {}}, "cpu", "alice")
    store.claim_next("cpu", 1)
    outputs = tmp_path / "outputs"
    old = time.time() - STREAM_KEEP_S - 5
    folders = {name: outputs / f"lipsync-{name}.stream" for name in (running.id, "0123456789ab", "fedcba987654")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "part-00000.ts").write_bytes(b"x")
    for name in (running.id, "0123456789ab"):
        for path in (folders[name] / "part-00000.ts", folders[name]):
            os.utime(path, (old, old))
    removed = sweep_streams(store, outputs)
    assert removed == [folders["0123456789ab"]]  # the running job's and the recent one stay
    assert folders[running.id].is_dir() and folders["fedcba987654"].is_dir()


def test_a_streaming_job_is_followed_by_its_owner_only(tmp_path, monkeypatch) -> None:
    from engine.jobs.broker import Broker
    from engine.jobs.store import JobStore, StoreError
    from engine.lipsync.jobs import LipSyncJobs
    from ui.jobs import follow_live

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))  # before the worker is spawned
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    broker = Broker(store, {"lipsync": "engine.lipsync.jobs:handle"}, {"cpu": 1}, poll_s=0.1).start()
    try:
        jobs = LipSyncJobs(broker, settings)
        speech = speech_file(tmp_path / "speech.wav", 3.0)
        job = jobs.submit(LipSyncConfig(face=FACE, audio=speech, engine="baseline", stream=True), "alice")
        with pytest.raises(StoreError, match=f"no job {job.id}"):
            jobs.live(job.id, "bob")
        seen = list(follow_live(jobs, job.id, "alice", lambda fraction, label: None, poll_s=0.05))
        *streams, report = seen
        assert streams and isinstance(report, dict) and report["outputs"]["video"].endswith(f"lipsync-{job.id}.mp4")
        assert streams[-1].ended and len(streams[-1].segments) >= 2
        assert [len(s.segments) for s in streams] == sorted({len(s.segments) for s in streams})  # only news
        assert jobs.live(job.id, None).segments == streams[-1].segments  # the operator sees it too
    finally:
        broker.stop(5)
        store.close()
