"""One long lip-sync or portrait job split into time segments over idle GPUs, assembled into one MP4.

When: at submit, the job's output lasts longer than AVATARBENCH_SPLIT_SECONDS and two or more GPUs have nothing
queued or running (`split_devices`), each segment lasting at least a quarter of that threshold, and the workers
are local processes (a Ray actor or a ZeroGPU slot sees a private store and no shared folder). The devices are
taken at once (`submit_split`): a parent job on the first idle GPU and one segment job on each other, each taking
its whole card, so jobs submitted after it are placed beside its segments as independent jobs, never split again
over the same cards.

How (files in one work folder, `work_folder`; the parent is segment 0 and runs its own share):
1. setup (parent): what every segment must agree on (the frame count, the batch size), written as setup.json with
   the segment ranges; each segment starts at a multiple of the batch size, so its batches are the unsplit run's.
2. measure (every segment, in parallel, when the capability has such a pass): what is per frame and independent,
   e.g. the face detections of its frames, saved as measured-<i>.npz.
3. plan (parent): the unsplit run's sequential part over everything measured (the face tracker and its smoothing
   state, the driving clip's one face box and its motion measured against the first face frame), cut into each
   segment's per-frame state (plan-<i>.npz, with the frames before the segment a causal generator must see again).
4. render (every segment): its frames from that state; a segment job writes them losslessly (segment-<i>.mkv),
   the parent straight into the final MP4, opened exactly as the unsplit run opens it (same encoder, options,
   threads, and the whole speech or driving sound).
5. assemble (parent): each segment's frames appended in order as its job finishes, then the MP4 is closed.
A segment that fails fails the parent with its reason; a parent that ends (failed, cancelled) cancels its queued
segments, and running ones stop at their next batch (they watch their parent). The parent's result is the kind's
usual one plus `segments` (per GPU: frames, seconds, frames per second, load) and the plan's and assembly's time.

Why lossless segments re-encoded once, not H.264 segments joined by stream copy. Measured on this 2-core CPU with
a 60 s still-face lip-sync (baseline engine, 1497 frames at 512x512; unsplit 3.9 s, its libx264 encode 2.75 s):
- H.264 segments: 1.70 s of encoding (spread over the GPUs' workers), joined by stream copy in 0.03 s; but each
  segment's encoder starts afresh (a key frame, its own rate control and look-ahead), so every frame differs from the
  unsplit run's by encoder noise, and "the same frames" could only be checked before encoding.
- lossless segments (x264's RGB mode at qp 0): 0.91 s of encoding (spread), 2.1-2.2 MiB a segment; the parent
  decodes them (0.79 s) and encodes once with the unsplit run's writer (3.40 s with decoding, sequential, overlapped
  with the segments still rendering). The MP4 is then the unsplit run's, byte for byte: the frames users get are
  the ones compared. That sequential encode is the price; with NVENC it is small beside what makes a job worth
  splitting (detection and the networks).
libx264 itself is not always repeatable: with mb-tree look-ahead it reads heap memory it never wrote, so two encodes
of the same frames can differ (glibc's MALLOC_PERTURB_ makes them equal; tests/test_split_jobs.py sets it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.core.errors import AvatarbenchError
from engine.core.media import LOSSLESS_SUFFIX, read_frames
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.jobs.broker import Broker, spawn_process
from engine.jobs.store import CANCELLED, CPU, DONE, FAILED, QUEUED, RUNNING, Job, JobStore, QueueLimits

log = logging.getLogger("avatarbench.split")
Progress = Callable[[float, str], None]
SEGMENT_PARTS = 4  # a segment lasts at least AVATARBENCH_SPLIT_SECONDS / 4: fewer GPUs rather than tiny segments
POLL_S = 0.1
PARENT_CHECK_S = 0.5  # how often a rendering segment asks whether its parent still runs
SUBMIT_GRACE_S = 30.0  # a parent that starts before its segments' rows are written waits this long for them
SETUP = "setup.json"


class SplitError(AvatarbenchError):
    """A segment failed or was cancelled, or a segment's parent ended: the text says which and why."""


class ParentEnded(SplitError):
    """A segment's parent job ended first (failed, cancelled, stopped): the segment has no one to hand its frames."""


class Writer(Protocol):
    codec: str
    frames_written: int

    def write(self, frame: np.ndarray) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class SegmentedRun(Protocol):
    """A capability's side of a split run, one object per job in each worker taking part (engine/lipsync/pipeline.py,
    engine/portrait/segments.py). The parent calls setup, measure, plan, output_writer, render, report; a segment
    join, measure, segment_writer, render, report."""

    def setup(self, progress: Progress) -> dict[str, Any]:
        """Parent: JSON the segments need, with "frames" (expected), "align" (segment starts are multiples of it),
        "measure" (whether segments measure before the plan) and "open_end" (the last segment reads to the end of
        a clip whose header may miscount)."""
        ...

    def join(self, setup: dict[str, Any], progress: Progress) -> None:
        """Segment: prepare with the parent's setup (models loaded while the plan is made)."""
        ...

    def measure(self, start: int, stop: int | None, progress: Progress) -> dict[str, np.ndarray]: ...

    def plan(
        self, ranges: list[tuple[int, int | None]], measured: list[dict[str, np.ndarray] | None], progress: Progress
    ) -> tuple[list[tuple[int, int]], list[dict[str, np.ndarray]]]:
        """Parent: the ranges as they really are (a clip's true length) and each segment's per-frame state."""
        ...

    def output_writer(self, out: Path) -> Writer: ...

    def segment_writer(self, path: Path) -> Writer: ...

    def render(self, start: int, stop: int, state: dict[str, np.ndarray], writer: Writer, progress: Progress) -> None:
        """Frames start..stop-1 into `writer`, left open (aborted on failure)."""
        ...

    def report(self, frames: int, seconds: float, writer: Writer) -> RunResult:
        """The run's result with the kind's metrics for `frames` made in `seconds` through `writer`."""
        ...


# -- at submit ---------------------------------------------------------------------------------------------------


def split_devices(broker: Broker, settings: Settings, seconds: float | None) -> list[str]:
    """The GPUs a job lasting `seconds` is split over: the idle ones (nothing queued or running), at most one per
    quarter of AVATARBENCH_SPLIT_SECONDS it lasts; none when it is not longer than that, when fewer than two are
    idle, when AVATARBENCH_DEVICE pins a device, or when the workers are not local processes."""
    if seconds is None or seconds <= settings.split_seconds:
        return []
    if broker.launcher is not spawn_process or settings.device == CPU or settings.device.startswith("cuda:"):
        return []
    load = broker.store.load()
    idle = [d for d in broker.gpus() if load.get(d, 0.0) <= 0.0 and broker.down(d) is None]
    most = int(seconds // (settings.split_seconds / SEGMENT_PARTS))
    return idle[:most] if min(len(idle), most) >= 2 else []


def submit_split(
    broker: Broker, kind: str, record: dict[str, Any], devices: list[str], owner: str, limits: QueueLimits | None = None
) -> Job:
    """The parent job on the first device and one segment job on each other, each taking its whole card; the parent
    is returned (its result is the whole job's). `limits` hold for the parent: the segments are the same job."""
    count = len(devices)
    parent = broker.submit(kind, {**record, "split": {"devices": devices}}, devices[0], owner, share=1.0,
                           limits=limits)  # fmt: skip
    for index, device in enumerate(devices[1:], 1):
        segment = {"parent": parent.id, "index": index, "of": count}
        broker.submit(kind, {**record, "segment": segment}, device, owner, share=1.0)
    return parent


def role(job: Job) -> str | None:
    """ "parent", "segment", or None for a job that is not split."""
    if "segment" in job.settings:
        return "segment"
    return "parent" if "split" in job.settings else None


def describe(job: Job) -> dict[str, Any]:
    """What a status line says about a split: the parent's devices, or which segment of which job this is."""
    if "segment" in job.settings:
        seg = job.settings["segment"]
        label = f"segment {seg['index'] + 1}/{seg['of']} of job {seg['parent']}"
        return {"segment": {"index": seg["index"], "of": seg["of"], "parent": seg["parent"], "label": label}}
    if "split" in job.settings:
        devices = job.settings["split"]["devices"]
        return {"split": {"devices": devices, "label": f"split into {len(devices)} segments over {', '.join(devices)}"}}
    return {}


def segments_of(store: JobStore, parent: Job) -> list[Job]:
    """The parent's segment jobs (rows written after it, so newest-first history reaches them before the parent)."""
    limit = 64
    while True:
        rows = store.history(limit, kind=parent.kind, owner=parent.owner)
        found = [r for r in rows if (r.settings.get("segment") or {}).get("parent") == parent.id]
        if len(rows) < limit or any(r.id == parent.id for r in rows):
            return sorted(found, key=lambda r: r.settings["segment"]["index"])
        limit *= 4


# -- ranges and files --------------------------------------------------------------------------------------------


def segment_ranges(frames: int, parts: int, align: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering frames 0..frames-1, each starting at a multiple of `align` (the batch
    size, so each segment's batches are the unsplit run's), as even as that allows (some may be empty)."""
    align = max(1, int(align))
    blocks = math.ceil(frames / align)
    bounds = [min(frames, round(blocks * i / parts) * align) for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def work_folder(settings: Settings, parent_id: str) -> Path:
    """Where a split's segments meet. Named like the workers' temporary folders (job-XXXXXXXX), so the start-up
    sweep removes one that a killed run left (engine/jobs/housekeeping.py)."""
    return settings.cache_dir / f"job-{parent_id[:8]}"


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Written under another name and renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _await_file(path: Path, check: Callable[[], None]) -> None:
    while not path.is_file():
        check()
        time.sleep(POLL_S)


def _scaled(progress: Progress, low: float, high: float, prefix: str = "") -> Progress:
    return lambda fraction, label: progress(low + (high - low) * min(1.0, max(0.0, fraction)), prefix + label)


# -- the parent --------------------------------------------------------------------------------------------------


@dataclass
class _Segments:
    """The parent's view of its segment jobs: found once, their failures raised as the parent's."""

    store: JobStore
    parent: Job
    devices: list[str]
    jobs: list[Job] | None = None

    def find(self) -> list[Job]:
        deadline = time.monotonic() + SUBMIT_GRACE_S
        while self.jobs is None:
            found = segments_of(self.store, self.parent)
            if len(found) == len(self.devices) - 1:
                self.jobs = found
            elif time.monotonic() > deadline:
                raise SplitError(f"{len(found)} of its {len(self.devices) - 1} segment jobs were ever submitted")
            else:
                time.sleep(POLL_S)
        return self.jobs

    def check(self) -> None:
        for job in self.find():
            current = self.store.get(job.id)
            if current.status in (FAILED, CANCELLED):
                index = current.settings["segment"]["index"]
                verb = "failed" if current.status == FAILED else "was cancelled"
                where = f"(job {job.id} on {current.device})"
                raise SplitError(f"segment {index + 1}/{len(self.devices)} {where} {verb}: {current.error}")

    def done(self, index: int) -> Job:
        job = self.find()[index - 1]
        while (current := self.store.get(job.id)).status != DONE:
            self.check()
            time.sleep(POLL_S)
        return current

    def cancel_queued(self, reason: str) -> None:
        """Segments not started yet end now; running ones stop at their next batch (they watch their parent)."""
        for job in self.jobs or segments_of(self.store, self.parent):
            with contextlib.suppress(Exception):
                self.store.cancel_queued(job.id, reason)


def run_parent(job: Job, progress: Progress, context: Any, work: SegmentedRun, out: Path) -> RunResult:
    """The whole split job, from the parent's worker: setup, its own segment, the plan, the assembly."""
    store, settings = context.store, context.settings
    devices: list[str] = job.settings["split"]["devices"]
    count = len(devices)
    folder = work_folder(settings, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    segments = _Segments(store, job, devices)
    started = time.perf_counter()
    own = {"measure_seconds": 0.0}
    try:
        setup = work.setup(_scaled(progress, 0.0, 0.05))
        ranges: list[tuple[int, int | None]] = list(segment_ranges(int(setup["frames"]), count, setup["align"]))
        if setup.get("open_end"):
            ranges[-1] = (ranges[-1][0], None)
        _write_json(folder / SETUP, {**setup, "ranges": ranges})
        measured: list[dict[str, np.ndarray] | None] = [None] * count
        if setup["measure"]:
            with _timed(own, "measure_seconds"):
                measured[0] = work.measure(*ranges[0], _scaled(progress, 0.05, 0.15, "measuring segment 1: "))
            for index in range(1, count):
                progress(0.15, f"waiting for segment {index + 1}/{count} on {devices[index]} to measure its frames")
                _await_file(folder / f"measured-{index}.npz", segments.check)
                measured[index] = _load(folder / f"measured-{index}.npz")
        final, states = work.plan(ranges, measured, _scaled(progress, 0.15, 0.25, "planning: "))
        for index in range(1, count):
            _save(folder / f"plan-{index}.npz", {**states[index], "range": np.array(final[index], np.int64)})
        plan_seconds = time.perf_counter() - started
        writer = work.output_writer(out)
        try:
            with _timed(own, "seconds"):
                work.render(*final[0], states[0], writer, _scaled(progress, 0.25, 0.8, f"segment 1/{count}: "))
            assembling, finished = time.perf_counter(), []
            for index in range(1, count):
                progress(0.8 + 0.2 * index / count, f"adding segment {index + 1}/{count} (waiting for it to finish)")
                child = segments.done(index)
                finished.append(child)
                if final[index][1] > final[index][0]:
                    for frame in read_frames(child.result["metrics"]["segment"]["file"]):
                        writer.write(frame)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        wall = time.perf_counter() - started
        result = work.report(final[-1][1], wall, writer)
        result.outputs["video"] = str(out)
        own.update(device=devices[0], ran_on=job.device)
        rows = [_row(0, final[0], own, final[-1][1], wall)]
        for index, child in enumerate(finished, 1):
            timing = child.result["metrics"]["segment"]
            ran = {**timing, "device": child.device, "ran_on": child.result.get("device")}
            rows.append(_row(index, final[index], ran, final[-1][1], wall))
            for warning in child.result.get("warnings", []):
                result.warn(warning)
        result.metrics.update(
            segments=rows,
            plan_seconds=plan_seconds,
            assemble_seconds=time.perf_counter() - assembling,
            split={"devices": devices, "segments": count},
        )
        return result
    except BaseException as exc:
        segments.cancel_queued(f"its parent job {job.id} failed: {exc}")
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _timed(record: dict[str, Any], name: str) -> Any:
    began = time.perf_counter()
    try:
        yield
    finally:
        record[name] = record.get(name, 0.0) + time.perf_counter() - began


def _row(index: int, frames: tuple[int, int], run: dict[str, Any], total: int, wall: float) -> dict[str, Any]:
    """One GPU's part: its frames, its time making them, and its load (the part of the job's time it worked)."""
    count, seconds = frames[1] - frames[0], run["seconds"]
    working = seconds + run.get("measure_seconds", 0.0)
    return {
        "index": index,
        "device": run["device"],
        "ran_on": run["ran_on"],
        "start": frames[0],
        "stop": frames[1],
        "frames": count,
        "share": count / total if total else None,
        "seconds": seconds,
        "frames_per_second": count / seconds if seconds > 0 else None,
        "measure_seconds": run.get("measure_seconds", 0.0),
        "load": min(1.0, working / wall) if wall > 0 else None,
    }


# -- a segment ---------------------------------------------------------------------------------------------------


@dataclass
class _Parent:
    """A segment's view of its parent: while the parent is queued or running the segment goes on, else it stops."""

    store: JobStore
    parent_id: str
    checked: float = 0.0

    def check(self) -> None:
        parent = self.store.get(self.parent_id)
        self.checked = time.monotonic()
        if parent.status not in (QUEUED, RUNNING):
            why = f": {parent.error}" if parent.error else ""
            raise ParentEnded(f"its parent job {self.parent_id} ended ({parent.status}{why}) before this segment did")

    def watching(self, progress: Progress) -> Progress:
        def report(fraction: float, label: str) -> None:
            if time.monotonic() - self.checked >= PARENT_CHECK_S:
                self.check()
            progress(fraction, label)

        return report


def run_segment(job: Job, progress: Progress, context: Any, work: SegmentedRun) -> RunResult:
    """One segment job: its share measured, its plan awaited, its frames written losslessly for the parent."""
    parent_id = str(job.settings["segment"]["parent"])
    parent = _Parent(context.store, parent_id)
    parent.check()
    folder = work_folder(context.settings, parent_id)
    try:
        return _segment(job, progress, work, parent, folder)
    except ParentEnded:
        shutil.rmtree(folder, ignore_errors=True)  # a parent that was killed left the folder behind
        raise


def _segment(job: Job, progress: Progress, work: SegmentedRun, parent: _Parent, folder: Path) -> RunResult:
    seg = job.settings["segment"]
    index, count, parent_id = int(seg["index"]), int(seg["of"]), str(seg["parent"])
    watched = parent.watching(progress)
    prefix = f"segment {index + 1}/{count} of job {parent_id}: "
    watched(0.0, prefix + "waiting for the parent's setup")
    _await_file(folder / SETUP, parent.check)
    setup = json.loads((folder / SETUP).read_text())
    work.join(setup, _scaled(watched, 0.0, 0.05, prefix))
    start, stop = setup["ranges"][index]
    timing = {"measure_seconds": 0.0}
    if setup["measure"]:
        with _timed(timing, "measure_seconds"):
            measured = work.measure(start, stop, _scaled(watched, 0.05, 0.3, prefix + "measuring: "))
        _save(folder / f"measured-{index}.npz", measured)
    watched(0.3, prefix + "waiting for the parent's plan")
    _await_file(folder / f"plan-{index}.npz", parent.check)
    state = _load(folder / f"plan-{index}.npz")
    start, stop = (int(v) for v in state.pop("range"))
    path = folder / f"segment-{index}{LOSSLESS_SUFFIX}"
    writer = work.segment_writer(path)
    rendered = time.perf_counter()
    try:
        work.render(start, stop, state, writer, _scaled(watched, 0.3, 1.0, prefix))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - rendered
    result = work.report(stop - start, seconds, writer)
    result.metrics["segment"] = {**seg, **timing, "start": start, "stop": stop, "file": str(path), "seconds": seconds}
    return result


def run_split(job: Job, progress: Progress, context: Any, work: SegmentedRun, out: Path) -> RunResult:
    """A split job's handler: the parent's whole run, or one segment's."""
    if role(job) == "segment":
        return run_segment(job, progress, context, work)
    return run_parent(job, progress, context, work, out)


__all__ = [
    "ParentEnded",
    "SegmentedRun",
    "SplitError",
    "Writer",
    "describe",
    "role",
    "run_split",
    "segment_ranges",
    "segments_of",
    "split_devices",
    "submit_split",
    "work_folder",
]
