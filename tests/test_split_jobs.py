"""A long lip-sync or portrait job split into time segments over four logical GPUs (device keys whose workers run
on the CPU): the frames and the sound equal the unsplit run's, each GPU's part is reported, and what must not be
split is not (short jobs, busy GPUs, a pinned device); a failing segment fails its job with the reason."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from job_kinds import settle
from test_lipsync import expected_frames, face_video, speech_like, write_wav

from engine.core.audio import load_audio
from engine.core.media import VideoWriter, read_frames
from engine.core.results import RunResult
from engine.core.settings import Settings, load_settings
from engine.jobs.broker import Broker
from engine.jobs.split import segment_ranges, split_devices, work_folder
from engine.jobs.store import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Job, JobStore
from engine.lipsync.config import LipSyncConfig
from engine.lipsync.jobs import LipSyncJobs
from engine.portrait.config import PortraitConfig
from engine.portrait.jobs import PortraitJobs

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"lipsync": "engine.lipsync.jobs:handle", "portrait": "engine.portrait.jobs:handle"}
GPUS = ("cuda:0", "cuda:1", "cuda:2", "cuda:3")
SPEECH_S = 3.0  # 72 frames at 25 fps: four segments of 16, 16, 32 and 8 frames (starts on the batch size, 16)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data dir the workers (spawned with this environment) and the submitting side share.

    libx264 (its mb-tree look-ahead with B-frames) reads heap memory it never wrote, so the same frames encoded
    twice, even by one process, may give different packets (measured: the first encode in a process differs from
    the next ones, and now and then another). glibc's MALLOC_PERTURB_ fills every allocation with one byte, so the
    workers' encodes depend on their frames only, and the split MP4 can be compared with the unsplit one."""
    folder = tmp_path_factory.mktemp("split")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVATARBENCH_DATA_DIR", str(folder / "data"))
        patch.setenv("MALLOC_PERTURB_", "85")
        yield folder


@pytest.fixture(scope="module")
def media(data: Path) -> dict[str, Path]:
    """Speech; a talking face shorter than the speech (so it loops) whose face is gone for frames 13-18 (the
    tracker holds its box across the segment boundary at 16); a driving clip with sound."""
    speech = speech_like(SPEECH_S)
    driving = data / "driving.mp4"
    face = cv2.resize(cv2.imread(str(ROOT / "assets" / "face.jpg")), (320, 320))
    writer = VideoWriter(driving, 25, 320, 320, audio=speech[: 40 * 640], codec="libx264")
    for i in range(40):
        turn = cv2.getRotationMatrix2D((160, 160), 6 * np.sin(i / 4), 1.0 + 0.02 * np.sin(i / 7))
        turn[:, 2] += (3 * np.sin(i / 3), 2 * np.cos(i / 5))
        writer.write(cv2.warpAffine(face, turn, (320, 320), borderMode=cv2.BORDER_REFLECT))
    writer.close()
    return {
        "speech": write_wav(data / "speech.wav", speech),
        "face": face_video(data / "face.mp4", 40, blank_from=13, blank_to=19),
        "driving": driving,
    }


def _settings(data: Path, **env: str) -> Settings:
    return load_settings({"AVATARBENCH_DATA_DIR": str(data / "data"), **env})


@pytest.fixture(scope="module")
def broker(data: Path, media: dict[str, Path]) -> Iterator[Broker]:
    store = JobStore(data / "jobs.db", data / "blobs")
    workers = {**dict.fromkeys(GPUS, 1), "cpu": 1}
    running = Broker(store, KINDS, workers, run_on=dict.fromkeys(GPUS, "cpu"), poll_s=0.1).start()
    yield running
    running.stop(5)
    store.close()


def _frames(path: str) -> list[np.ndarray]:
    return list(read_frames(path))


def _split_and_unsplit(broker: Broker, kinds: type, config, data: Path) -> tuple[Job, Job, list[dict]]:
    """The job split over the four GPUs (threshold 1 s), and the same job unsplit (the default 20 s threshold)."""
    split = kinds(broker, _settings(data, AVATARBENCH_SPLIT_SECONDS="1")).submit(config, "tester")
    segments = [kinds(broker, _settings(data)).summary(j) for j in broker.store.queue() if j.id != split.id]
    whole = kinds(broker, _settings(data)).submit(config, "tester")
    split, whole = settle(broker.store, [split.id, whole.id], 400)
    assert split.status == DONE, split.error
    assert whole.status == DONE, whole.error
    return split, whole, segments


def _check_parts(split: Job, frames: int, segments: list[dict], data: Path) -> None:
    rows = split.result["metrics"]["segments"]
    assert [r["device"] for r in rows] == list(GPUS) and len({r["device"] for r in rows}) == 4
    assert sum(r["frames"] for r in rows) == frames and all(r["frames"] > 0 for r in rows)
    assert [r["start"] for r in rows[1:]] == [r["stop"] for r in rows[:-1]]  # in order, no gap, no overlap
    assert all(r["ran_on"] == "cpu" and 0 < r["load"] <= 1 and r["frames_per_second"] > 0 for r in rows)
    assert split.result["metrics"]["plan_seconds"] > 0 and split.result["metrics"]["assemble_seconds"] >= 0
    labels = sorted(s["segment"]["label"] for s in segments)
    assert labels == [f"segment {i}/4 of job {split.id}" for i in (2, 3, 4)]
    assert not work_folder(_settings(data), split.id).exists()  # the segments' files are gone


def test_a_long_lipsync_job_split_over_four_gpus_equals_the_unsplit_run(
    broker: Broker, media: dict[str, Path], data: Path
) -> None:
    config = LipSyncConfig(media["face"], media["speech"], engine="baseline")
    split, whole, segments = _split_and_unsplit(broker, LipSyncJobs, config, data)
    assert split.settings["split"]["devices"] == list(GPUS) and "split" not in whole.settings
    ours, theirs = _frames(split.result["outputs"]["video"]), _frames(whole.result["outputs"]["video"])
    assert len(ours) == len(theirs) == whole.result["metrics"]["frames"] == split.result["metrics"]["frames"]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))  # exact: every pixel
    sound = load_audio(split.result["outputs"]["video"])
    assert len(ours) == expected_frames(SPEECH_S) and 0 <= len(sound) - SPEECH_S * 16000 < 1024  # the whole speech
    assert np.array_equal(sound, load_audio(whole.result["outputs"]["video"]))
    assert split.result["metrics"]["faces_missed"] == whole.result["metrics"]["faces_missed"] > 0
    _check_parts(split, len(ours), segments, data)


def test_a_long_portrait_job_split_over_four_gpus_equals_the_unsplit_run(
    broker: Broker, media: dict[str, Path], data: Path
) -> None:
    config = PortraitConfig(ROOT / "assets" / "face.jpg", media["driving"], engine="baseline")
    split, whole, segments = _split_and_unsplit(broker, PortraitJobs, config, data)
    ours, theirs = _frames(split.result["outputs"]["video"]), _frames(whole.result["outputs"]["video"])
    assert len(ours) == len(theirs) == 40
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not np.array_equal(ours[0], ours[20])  # the portrait moves: equal frames are not still ones
    sound = load_audio(split.result["outputs"]["video"])
    assert abs(len(sound) / 16000 - 40 / 25) < 0.05  # the driving clip's sound, all of it
    assert np.array_equal(sound, load_audio(whole.result["outputs"]["video"]))
    assert Path(split.result["outputs"]["strip"]).is_file()
    _check_parts(split, 40, segments, data)


def test_cancelling_a_split_job_stops_its_segments(broker: Broker, media: dict[str, Path], data: Path) -> None:
    """The parent is stopped with its worker while its segments work: they stop at their next check, saying why,
    and the last of them removes the work folder the killed parent left."""
    speech = write_wav(data / "long.wav", speech_like(20.0))
    config = LipSyncConfig(media["face"], speech, engine="baseline")
    kind = LipSyncJobs(broker, _settings(data, AVATARBENCH_SPLIT_SECONDS="1"))
    parent = kind.submit(config, "tester")
    ids = [j.id for j in broker.store.queue() if j.settings.get("segment", {}).get("parent") == parent.id]
    deadline = time.monotonic() + 120
    while broker.store.get(parent.id).status == QUEUED and time.monotonic() < deadline:
        time.sleep(0.05)
    kind.cancel(parent.id, "tester")
    jobs = settle(broker.store, [parent.id, *ids], 400)
    assert jobs[0].status == CANCELLED
    for segment in jobs[1:]:
        assert segment.status in (FAILED, CANCELLED), (segment.status, segment.error)
        assert f"parent job {parent.id}" in segment.error or "cancelled by its owner" in segment.error
    time.sleep(0.5)
    assert not work_folder(_settings(data), parent.id).exists()


def test_what_is_not_split_and_what_a_split_takes(media: dict[str, Path], data: Path, tmp_path: Path) -> None:
    """Placement only (no workers): short jobs, busy GPUs and a pinned device are not split; a split takes its GPUs
    at once, so a job submitted with it goes beside it, whole; cancelling a split cancels its queued segments."""
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    idle = Broker(store, KINDS, {**dict.fromkeys(GPUS, 1), "cpu": 1})  # never started: jobs stay queued
    config = LipSyncConfig(media["face"], media["speech"], engine="baseline")
    threshold = _settings(data, AVATARBENCH_SPLIT_SECONDS="1")

    def submitted(settings: Settings) -> list[Job]:
        job = LipSyncJobs(idle, settings).submit(config, "tester")
        return [j for j in store.queue() if j.id == job.id or j.settings.get("segment", {}).get("parent") == job.id]

    short = submitted(_settings(data, AVATARBENCH_SPLIT_SECONDS=str(SPEECH_S + 0.5)))  # 3 s of speech: not longer
    assert [("split" in j.settings, j.device) for j in short] == [(False, "cuda:0")]
    pinned = submitted(replace(threshold, device="cuda:1"))
    assert [("split" in j.settings, j.device) for j in pinned] == [(False, "cuda:1")]
    two = submitted(threshold)  # cuda:0 and cuda:1 hold a job each: the two idle GPUs
    assert [j.device for j in two] == ["cuda:2", "cuda:3"] == two[0].settings["split"]["devices"]
    together = submitted(threshold)  # every GPU is taken now: a whole job on the least-loaded one
    assert len(together) == 1 and "split" not in together[0].settings
    for job in store.queue():
        store.fail(job.id, "cleared", CANCELLED)
    four = submitted(threshold)
    assert [j.device for j in four] == list(GPUS)
    assert [j.settings.get("segment", {}).get("index") for j in four] == [None, 1, 2, 3]
    beside = submitted(threshold)  # all busy again: whole
    assert len(beside) == 1 and "split" not in beside[0].settings
    LipSyncJobs(idle, threshold).cancel(four[0].id, "tester")
    assert all(store.get(j.id).status == CANCELLED for j in four)
    assert store.get(beside[0].id).status == QUEUED
    eight = Broker(store, KINDS, {f"cuda:{i}": 1 for i in range(8)})
    # cuda:0 holds the job above; of the seven idle, six: a segment lasts at least a quarter of the threshold
    assert split_devices(eight, threshold, 1.6) == [f"cuda:{i}" for i in range(1, 7)]
    assert split_devices(eight, threshold, 1.0) == []  # not longer than the threshold
    store.close()


def test_a_musetalk_job_is_never_split_and_tf32_reaches_its_worker(
    media: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """MuseTalk's prepared avatar cycles over the whole clip, so its long job stays whole on idle GPUs; a job at
    --precision tf32 asks its worker process for TF32 (a process-wide switch), the others not; both files are kept."""
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    idle = Broker(store, KINDS, {**dict.fromkeys(GPUS, 1), "cpu": 1})  # never started: jobs stay queued
    kind = LipSyncJobs(idle, _settings(data, AVATARBENCH_SPLIT_SECONDS="1"))  # 3 s of speech: a baseline job splits
    musetalk = kind.submit(LipSyncConfig(media["face"], media["speech"], engine="musetalk"), "tester")
    assert [j.id for j in store.queue()] == [musetalk.id] and "split" not in musetalk.settings
    assert musetalk.settings["process"] == {"tf32": False}
    assert sorted(musetalk.settings["files"]) == ["audio", "face"]
    tf32 = LipSyncJobs(idle, _settings(data)).submit(LipSyncConfig(media["face"], media["speech"], precision="tf32"),
                                                     "tester")  # fmt: skip
    assert tf32.settings["process"] == {"tf32": True}
    store.close()


def test_a_segment_that_reads_another_length_of_speech_is_refused(media: dict[str, Path], data: Path) -> None:
    """A segment whose speech comes to another number of frames than its job's would paste mouths out of step with
    the sound: it is refused, with both counts."""
    from engine.lipsync.config import LipSyncError
    from engine.lipsync.pipeline import LipSyncSegments

    config = LipSyncConfig(ROOT / "assets" / "face.jpg", media["speech"], engine="baseline")
    segments = LipSyncSegments(config, _settings(data), "cpu")
    setup = segments.setup(lambda fraction, label: None)
    frames = setup["frames"]
    segments.join(setup, lambda fraction, label: None)  # the same count: joined
    refusal = f"this segment reads {frames} frames of speech where its job read {frames + 1}$"
    with pytest.raises(LipSyncError, match=refusal):
        segments.join({**setup, "frames": frames + 1}, lambda fraction, label: None)


def test_split_jobs_submitted_at_once_never_share_a_gpu(
    media: dict[str, Path], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two submits at the same moment: the load read for one placement is slowed, so without the broker's placing
    lock both read every GPU idle and split over the same four (and their rows could interleave so that each
    job's parent waited behind the other's segment)."""
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    idle = Broker(store, KINDS, {**dict.fromkeys(GPUS, 1), "cpu": 1})
    read_load = store.load

    def slow_load() -> dict[str, float]:
        load = read_load()
        time.sleep(0.3)
        return load

    monkeypatch.setattr(store, "load", slow_load)
    config = LipSyncConfig(media["face"], media["speech"], engine="baseline")
    kind = LipSyncJobs(idle, _settings(data, AVATARBENCH_SPLIT_SECONDS="1"))
    with ThreadPoolExecutor(2) as pool:
        parents = list(pool.map(lambda owner: kind.submit(config, owner), ["alice", "bob"]))
    devices = [[j.device for j in store.queue() if j.owner == p.owner] for p in parents]
    assert sorted(map(len, devices)) == [1, 4]  # the first split over all four; the second whole, beside it
    rows = [j.owner for j in store.queue()]
    assert rows in (["alice"] * 4 + ["bob"], ["bob"] * 4 + ["alice"])  # one placement's rows, then the other's
    store.close()


def test_segment_ranges_start_on_batches_and_cover_every_frame() -> None:
    assert segment_ranges(75, 4, 16) == [(0, 16), (16, 32), (32, 64), (64, 75)]
    assert segment_ranges(1497, 4, 16) == [(0, 384), (384, 752), (752, 1120), (1120, 1497)]
    for frames, parts, align in ((1, 4, 16), (40, 4, 1), (100, 3, 8), (7, 2, 4)):
        ranges = segment_ranges(frames, parts, align)
        assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == frames
        assert all(a % align == 0 and a <= b for a, b in ranges[:-1] if a < frames)
        assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ranges))


def test_segments_find_the_scene_cuts_the_unsplit_run_finds(media: dict[str, Path], data: Path) -> None:
    """A cut on a segment's first frame is seen by comparing it with the last frame the segment before measured."""
    from engine.faces.tracking import SceneCuts
    from engine.lipsync.pipeline import LipSyncSegments, _split_cuts

    config = LipSyncConfig(media["face"], media["speech"], engine="baseline")
    frames = _frames(media["face"])
    run = LipSyncSegments(config, _settings(data))
    count = run.setup(lambda f, label: None)["frames"]
    cuts = SceneCuts()
    whole = [cuts(frames[i % len(frames)]) for i in range(count)]  # the video loops under longer speech
    assert [i for i, cut in enumerate(whole) if cut][:2] == [13, 19]  # into the blank span and out of it
    for ranges in ([(0, count)], [(0, 13), (13, count)], [(0, 19), (19, 20), (20, count)], segment_ranges(count, 4, 1)):
        measured = [run.measure(a, b, lambda f, label: None) for a, b in ranges]
        assert list(_split_cuts(measured)) == whole, ranges


def test_a_failing_segment_fails_its_job_with_the_reason(media: dict[str, Path], data: Path, tmp_path: Path) -> None:
    """The second GPU's worker runs on a card that is not there: its segment fails, and so does the job, saying so."""
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    run_on = {"cuda:0": "cpu", "cuda:1": "cuda:99"}
    broken = Broker(store, KINDS, {"cuda:0": 1, "cuda:1": 1}, run_on=run_on, poll_s=0.1).start()
    try:
        config = LipSyncConfig(media["face"], media["speech"], engine="baseline")
        parent = LipSyncJobs(broken, _settings(data, AVATARBENCH_SPLIT_SECONDS="1")).submit(config, "tester")
        jobs = settle(store, [j.id for j in store.queue()], 400)
    finally:
        broken.stop(5)
        store.close()
    [job] = [j for j in jobs if j.id == parent.id]
    [segment] = [j for j in jobs if j.id != parent.id]
    assert segment.status == FAILED and segment.error  # whatever stopped it (no such card), in its words
    assert job.status == FAILED and job.error == f"segment 2/2 (job {segment.id} on cuda:1) failed: {segment.error}"
    assert not (data / "data" / "outputs" / f"lipsync-{job.id}.mp4").exists()


def test_the_tabs_summary_lists_each_gpus_part() -> None:
    pytest.importorskip("gradio")
    from engine.core.results import RunResult
    from ui.widgets import segments_lines

    result = RunResult(device="cuda:0", device_name="H200", precision="fp16", config={})
    assert segments_lines(result) == []  # an unsplit run says nothing about segments
    result.metrics.update(plan_seconds=0.5, assemble_seconds=1.25, segments=[
        {"device": "cuda:0", "start": 0, "stop": 128, "frames": 128, "seconds": 2.0, "frames_per_second": 64.0,
         "load": 0.9},
        {"device": "cuda:1", "start": 128, "stop": 250, "frames": 122, "seconds": 1.9, "frames_per_second": None,
         "load": None},
    ])  # fmt: skip
    head, first, second = segments_lines(result)
    assert head == "- split over 2 GPUs (planned in 0.50s · joined in 1.25s):"
    assert first == "  - `cuda:0`: frames 0-127 (128) in 2.00s, 64.0 frames/s, busy 90% of the job"
    assert second == "  - `cuda:1`: frames 128-249 (122) in 1.90s"


def test_a_gpu_that_did_none_of_the_work_says_so() -> None:
    """A load of 0 is a measured value (that GPU got no frames' worth of the time), not a missing one."""
    pytest.importorskip("gradio")
    from engine.core.results import RunResult
    from ui.widgets import segments_lines

    result = RunResult(device="cuda:0", device_name="H200", precision="fp16", config={})
    result.metrics.update(segments=[
        {"device": "cuda:1", "start": 0, "stop": 1, "frames": 1, "seconds": 0.0, "frames_per_second": None,
         "load": 0.0},
    ])  # fmt: skip
    assert segments_lines(result) == [
        "- split over 1 GPUs:",
        "  - `cuda:1`: frames 0-0 (1) in 0.00s, busy 0% of the job",
    ]


# ------------------------------------------------- the split protocol in one process, with frames that carry numbers


class _Kept:
    """The parent's output writer: keeps the frames it is given, in order."""

    codec = "kept"

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.frames_written = 0
        self.closed = self.aborted = False

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame)
        self.frames_written += 1

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class _Numbered:
    """A SegmentedRun whose frame i is a grey picture of level i: the numbers a segment measured become its plan and
    then its frames, so a part assembled out of place, twice or not at all shows in the output. The header counts
    `header_frames` and the clip has `frames` (the last segment reads to the end); `fails_in`: the step of this job
    that fails ("setup", "render"); each segment's report warns with its first frame."""

    def __init__(self, frames: int, header_frames: int, output: _Kept, fails_in: str | None = None) -> None:
        self.frames, self.header_frames, self.output, self.fails_in = frames, header_frames, output, fails_in

    def _step(self, name: str) -> None:
        if self.fails_in == name:
            raise RuntimeError(f"the card fell off the bus in {name}")

    def setup(self, progress) -> dict:
        self._step("setup")
        return {"frames": self.header_frames, "align": 4, "measure": True, "open_end": True}

    def join(self, setup: dict, progress) -> None:
        pass

    def measure(self, start: int, stop: int | None, progress) -> dict[str, np.ndarray]:
        return {"numbers": np.arange(start, self.frames if stop is None else stop)}

    def plan(self, ranges: list, measured: list, progress) -> tuple[list, list]:
        final = [(start, self.frames if stop is None else stop) for start, stop in ranges]
        return final, [{"numbers": m["numbers"]} for m in measured]

    def output_writer(self, out: Path) -> _Kept:
        return self.output

    def segment_writer(self, path: Path):
        from engine.core.media import LosslessWriter

        return LosslessWriter(path, 25, 16, 16)

    def render(self, start: int, stop: int, state: dict, writer, progress) -> None:
        assert len(state["numbers"]) == stop - start
        self._step("render")
        for number in state["numbers"]:
            writer.write(np.full((16, 16, 3), int(number), np.uint8))
        self.first = start

    def report(self, frames: int, seconds: float, writer) -> RunResult:
        result = RunResult(metrics={"frames": frames})
        if writer is not self.output:
            result.warn(f"the part from frame {self.first} was made on a slow card")
        return result


def _split_in_threads(
    tmp_path: Path, frames: int, header_frames: int, failing: dict[str, tuple[str, str]] | None = None, claim: int = 4
) -> tuple[list[Job], _Kept]:
    """A split over the four GPUs run by this process: the parent and the first `claim - 1` segments each in a thread
    of its own (their rows claimed as their workers would); `failing`: device -> (the step that fails there, how its
    job ends). The jobs as they ended, and the parent's output."""
    from engine.jobs import split

    failing = failing or {}
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    never_started = Broker(store, {"numbered": "unused:unused"}, dict.fromkeys(GPUS, 1))
    parent = split.submit_split(never_started, "numbered", {}, list(GPUS), "alice")
    context = SimpleNamespace(store=store, settings=_settings(tmp_path))
    claimed = [store.claim_next(device, worker=100 + i) for i, device in enumerate(GPUS[:claim])]
    assert claimed[0].id == parent.id
    output = _Kept()

    def run(job: Job) -> None:
        step, ends = failing.get(job.device, (None, FAILED))
        work = _Numbered(frames, header_frames, output, step)
        try:
            result = split.run_split(job, lambda fraction, label: None, context, work, tmp_path / "out.mp4")
        except Exception as exc:
            store.fail(job.id, str(exc), ends)
        else:
            store.finish(job.id, result.to_dict())

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a part of the split never ended"
    jobs = [store.get(job.id) for job in [parent, *split.segments_of(store, parent)]]
    store.close()
    return jobs, output


def _numbers(output: _Kept) -> list[int]:
    return [int(frame[0, 0, 0]) for frame in output.frames]


def test_the_parent_assembles_every_segment_in_order_to_the_clips_true_end(tmp_path: Path) -> None:
    """The header says 26 frames and the clip has 30: the last segment reads to the end; every frame comes once,
    in order, and each GPU's row says which frames it made; the segments' warnings are the job's."""
    jobs, output = _split_in_threads(tmp_path, frames=30, header_frames=26)
    assert [j.status for j in jobs] == [DONE] * 4, [j.error for j in jobs]
    assert _numbers(output) == list(range(30)) and output.closed and not output.aborted
    metrics = jobs[0].result["metrics"]
    assert [(r["device"], r["start"], r["stop"], r["frames"]) for r in metrics["segments"]] == [
        ("cuda:0", 0, 8, 8), ("cuda:1", 8, 16, 8), ("cuda:2", 16, 20, 4), ("cuda:3", 20, 30, 10),
    ]  # fmt: skip
    assert metrics["frames"] == 30 and [r["share"] for r in metrics["segments"]] == [8 / 30, 8 / 30, 4 / 30, 10 / 30]
    assert jobs[0].result["warnings"] == [f"the part from frame {f} was made on a slow card" for f in (8, 16, 20)]
    assert not work_folder(_settings(tmp_path), jobs[0].id).exists()


@pytest.mark.parametrize("ends", [FAILED, CANCELLED])
def test_a_segment_that_fails_or_is_cancelled_fails_the_parent_by_its_number(tmp_path: Path, ends: str) -> None:
    jobs, output = _split_in_threads(tmp_path, frames=30, header_frames=30, failing={"cuda:2": ("render", ends)})
    parent, segment = jobs[0], jobs[2]
    assert output.aborted and not output.closed  # the half-made video is not left as if it were whole
    assert segment.status == ends and segment.error == "the card fell off the bus in render"
    verb = "failed" if ends == FAILED else "was cancelled"
    assert parent.status == FAILED
    assert parent.error == f"segment 3/4 (job {segment.id} on cuda:2) {verb}: the card fell off the bus in render"


@pytest.mark.parametrize("ends", [FAILED, CANCELLED])
def test_a_parent_that_ends_ends_its_segments(tmp_path: Path, ends: str) -> None:
    """The parent fails (or is stopped) at its setup: the segment already running stops, saying why, and the two
    still waiting in the queue are cancelled, never to run."""
    failing = {"cuda:0": ("setup", ends)}
    jobs, _ = _split_in_threads(tmp_path, frames=30, header_frames=30, failing=failing, claim=2)
    parent, *segments = jobs
    assert parent.status == ends and parent.error == "the card fell off the bus in setup"
    assert segments[0].status == FAILED and f"its parent job {parent.id} ended ({ends}" in segments[0].error
    for queued in segments[1:]:
        assert queued.status == CANCELLED
        assert queued.error == f"its parent job {parent.id} failed: the card fell off the bus in setup"


def test_cancelling_a_split_leaves_its_running_segments_to_stop_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards FileJobs.cancel: the split's queued segments are cancelled with it, but a running one is not stopped
    through the broker (which would kill its worker and the networks it loaded): it sees its parent ended at its next
    batch and stops itself."""
    from engine.jobs.split import segments_of, submit_split

    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    broker = Broker(store, KINDS, dict.fromkeys(GPUS[:3], 1))  # never started: only what the test claims runs
    parent = submit_split(broker, "lipsync", {"files": {}, "options": {}}, list(GPUS[:3]), "alice")
    running, waiting = segments_of(store, parent)
    assert store.claim_next(running.device).id == running.id
    stopped: list[str] = []
    cancel = broker.cancel
    monkeypatch.setattr(broker, "cancel", lambda job_id, owner: stopped.append(job_id) or cancel(job_id, owner))
    LipSyncJobs(broker, _settings(tmp_path)).cancel(parent.id, "alice")
    assert stopped == [parent.id, waiting.id]
    assert [store.get(j.id).status for j in (parent, running, waiting)] == [CANCELLED, RUNNING, CANCELLED]
    store.close()


def test_a_split_takes_whole_idle_cards_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers per GPU: a card with a half-share job is not idle, nor is one that is down, and one idle card is
    no split; workers that are not local processes never split. A split's parent and segments each take their whole
    card, its queue limit holds for the parent, and each parent finds its own segments only."""
    from engine.jobs.split import describe, segments_of, submit_split
    from engine.jobs.store import QueueFull, QueueLimits

    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    shared = Broker(store, KINDS, dict.fromkeys(GPUS[:3], 2), per_gpu={"default": 2})  # never started
    threshold = _settings(tmp_path, AVATARBENCH_SPLIT_SECONDS="1")
    assert split_devices(shared, threshold, 2.0) == list(GPUS[:3])
    remote = Broker(store, KINDS, dict.fromkeys(GPUS[:3], 2), launcher=lambda spec, wake, stop: None)
    assert split_devices(remote, threshold, 2.0) == []  # a Ray actor or a ZeroGPU slot: no shared folder
    assert shared.submit("lipsync", {}, "cuda:0", "bob").share == 0.5
    with monkeypatch.context() as patch:
        patch.setattr(shared, "down", lambda device: "its node is gone" if device == "cuda:2" else None)
        assert split_devices(shared, threshold, 2.0) == []  # cuda:1 alone is idle
    first = submit_split(shared, "lipsync", {}, ["cuda:1", "cuda:2"], "alice")
    assert [(j.device, j.share) for j in store.queue("alice")] == [("cuda:1", 1.0), ("cuda:2", 1.0)]
    second = submit_split(shared, "lipsync", {}, ["cuda:2", "cuda:1", "cuda:0"], "alice")
    for parent, count in ((first, 2), (second, 3)):
        segments = segments_of(store, parent)
        assert [describe(j)["segment"]["label"] for j in segments] == [
            f"segment {i}/{count} of job {parent.id}" for i in range(2, count + 1)
        ]
    with pytest.raises(QueueFull, match="you have 2 jobs waiting"):
        submit_split(shared, "lipsync", {}, ["cuda:1", "cuda:2"], "alice", QueueLimits(per_owner=2, total=100))
    store.close()


def test_the_seconds_a_portrait_job_is_split_by(tmp_path: Path) -> None:
    """A driving clip's length, cut by max_frames, decides the split; a driving image, a motion template and a file
    that cannot be read (refused when the job runs) are never split."""
    from test_portrait import _grey_clip, _level_motion

    from engine.portrait.templates import save_template

    face = ROOT / "assets" / "face.jpg"
    clip = _grey_clip(tmp_path / "clip.mp4", 10)  # 0.4 s at 25 fps
    save_template(tmp_path / "t.npz", _level_motion(torch.zeros(3, 3, 8, 8)), 25.0)
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with JobStore(tmp_path / "jobs.db", tmp_path / "blobs") as store:
        jobs = PortraitJobs(Broker(store, KINDS, {"cpu": 1}), _settings(tmp_path))  # never started
        assert jobs.seconds(PortraitConfig(face, clip)) == pytest.approx(0.4)
        assert jobs.seconds(PortraitConfig(face, clip, max_frames=5)) == pytest.approx(0.2)
        assert jobs.seconds(PortraitConfig(face, clip, max_frames=50)) == pytest.approx(0.4)
        for driving in (face, tmp_path / "t.npz", tmp_path / "junk.mp4"):
            assert jobs.seconds(PortraitConfig(face, driving)) is None
