"""Disk housekeeping: what the app writes is bounded, so a long-running server never fills its disk.

Three things grow without it:
- Gradio's own cache (uploads, copies of served results). Gradio deletes what it created on a schedule when the
  Blocks are given `delete_cache`; `gradio_cache_policy` turns AVATARBENCH_UPLOAD_CACHE_HOURS into that pair. The
  schedule may take any upload at any time: a job's inputs are copied into the job store when it is submitted.
- Work folders of killed workers (tempfile folders under the cache dir) and half-written blobs of a killed submit.
  `sweep_orphans` removes them at start-up, when no worker of ours runs yet; only a folder whose newest entry is over
  a minute old goes, and never one of the caches kept on purpose.
- Stored job inputs (content-addressed blobs) and outputs. `enforce_budget` keeps both, together, under a size and an
  age (AVATARBENCH_STORE_BUDGET_GB, AVATARBENCH_STORE_MAX_AGE_DAYS): least recently used first, where a blob's use is
  the newest job naming it or the file's mtime (a re-upload touches it), an output's its mtime (atime is often
  disabled, so it is never read). A file a queued or running job needs, or one touched in the last few minutes (a
  submit in flight, an output being written), is never removed. A finished job whose output goes keeps its row, and
  its result says which file was removed and why. What a failed or cancelled job left half-written goes first.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from engine.core.hls import STREAM_SUFFIX
from engine.core.settings import PREFIX, Settings
from engine.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, JobStore, StoreError

log = logging.getLogger("avatarbench.housekeeping")

# tempfile.TemporaryDirectory/mkdtemp folders the workers and the upload checks make under the cache dir: a prefix
# and tempfile's eight random characters.
WORK_FOLDER = re.compile(r"(?:onnx-job-|bench-|job-|onnx-)[a-z0-9_]{8}")
# Caches under the cache dir that are kept on purpose; "onnx-examples" also fits WORK_FOLDER's pattern.
KEPT_CACHES = frozenset({"onnx-examples", "onnx-trt", "liveportrait-onnx"})
SPLIT_FOLDER = re.compile(r"job-([0-9a-f]{8})")  # a split job's, named after its parent's id (split.work_folder)
INCOMING_BLOB = re.compile(r"\.incoming-.*\.tmp")  # JobStore.put_blob's temporary file
BLOB = re.compile(r"[0-9a-f]{64}")
OUTPUT_JOB = re.compile(r"-([0-9a-f]{12})(?=\.)")  # lipsync-<job>.mp4, portrait-<job>.strip.png, bench-<job>.csv
ORPHAN_MIN_AGE_S = 60.0
STREAM_KEEP_S = 600.0  # a finished job's live stream is kept this long: a follower may still be reading it
RECENT_S = 600.0  # never evicted: a submit between put_blob and its row, an output still being written


def gradio_cache_policy(settings: Settings) -> tuple[int, int]:
    """Gradio's `delete_cache` (frequency, age) in seconds: files older than the setting go, checked every quarter
    of that (between once a minute and once an hour)."""
    age_s = round(settings.upload_cache_hours * 3600)
    return min(3600, max(60, age_s // 4)), age_s


# -- orphans ---------------------------------------------------------------------------------------------------


def _newest_mtime(folder: Path) -> float:
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def sweep_orphans(cache_dir: Path, blobs_dir: Path, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[Path]:
    """Remove work folders and half-written blobs that killed processes left; call it before any worker starts
    (a folder a live worker uses would look the same). Returns what was removed."""
    cutoff = time.time() - min_age_s
    removed = []
    for folder in _entries(cache_dir):
        if folder.name in KEPT_CACHES or not WORK_FOLDER.fullmatch(folder.name) or folder.is_symlink():
            continue
        if folder.is_dir() and _newest_mtime(folder) <= cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for tmp in _entries(blobs_dir):
        if INCOMING_BLOB.fullmatch(tmp.name) and tmp.is_file() and tmp.lstat().st_mtime <= cutoff:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    for path in removed:
        log.info("removed %s, left by a process that was killed", path)
    return removed


def sweep_ended_splits(store: JobStore, cache_dir: Path, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[Path]:
    """Remove the work folders of split jobs that have ended (engine/jobs/split.py names them after the parent's
    id): the parent removes its own when it ends, but not when its worker is stopped (cancelled, past its time
    limit or memory cap), and its segments' lossless videos would stay until the next start. Runs with the app's
    chores; a folder of a job still queued or running is kept, as is one changed in the last `min_age_s`."""
    cutoff, removed = time.time() - min_age_s, []
    for folder in _entries(cache_dir):
        named = SPLIT_FOLDER.fullmatch(folder.name)
        if not named or folder.is_symlink() or not folder.is_dir() or _newest_mtime(folder) > cutoff:
            continue
        statuses = store.statuses(named[1])
        if statuses and not statuses & {QUEUED, RUNNING}:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("removed %s, left by split job %s... when it was stopped", folder, named[1])
    return removed


def sweep_uploads(folder: Path, max_age_s: float) -> int:
    """Remove what Gradio's upload folder holds beyond `max_age_s` (files a killed run left: Gradio's own cleanup
    only knows the files of its current run); returns how many entries went."""
    cutoff, removed = time.time() - max_age_s, 0
    for entry in _entries(folder):
        if entry.is_symlink() or _newest_mtime(entry) > cutoff:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d upload(s) older than %.1f h from %s", removed, max_age_s / 3600, folder)
    return removed


# -- the budget ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How much the stored inputs and outputs may take together, and how long an unused one stays."""

    max_bytes: int
    max_age_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Budget:
        return cls(int(settings.store_budget_gb * 2**30), settings.store_max_age_days * 86400)


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    last_used: float
    job_id: str | None = None  # an output's job (its name carries the id)
    needed: bool = False  # named by a queued or running job


@dataclass(frozen=True)
class Removal:
    file: StoredFile
    reason: str  # "age" or "size"


def stored_files(store: JobStore, outputs_dir: Path) -> Iterator[StoredFile]:
    """Every blob and output file, with its last use and whether a queued or running job needs it."""
    usage = store.usage()
    for path, stat in _regular_files(store.blobs_dir.glob("??/*")):
        if BLOB.fullmatch(path.name):
            used = max(stat.st_mtime, usage.blob_last_used.get(path.name, 0.0))
            yield StoredFile(path, stat.st_size, used, needed=path.name in usage.active_blobs)
    for path, stat in _regular_files(outputs_dir.rglob("*")):
        if path.parent.name.endswith(STREAM_SUFFIX):
            continue  # a live stream: sweep_streams removes it whole
        match = OUTPUT_JOB.search(path.name)
        job_id = match.group(1) if match else None
        yield StoredFile(path, stat.st_size, stat.st_mtime, job_id, job_id in usage.active_jobs)


def _regular_files(paths: Iterable[Path]) -> Iterator[tuple[Path, os.stat_result]]:
    """Plain files (no links, no folders) with their stat; one that vanished meanwhile is skipped."""
    for path in paths:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            continue
        if S_ISREG(stat.st_mode):
            yield path, stat


def sweep_streams(store: JobStore, outputs_dir: Path, now: float | None = None) -> list[Path]:
    """Remove the live streams (engine/core/hls.py) of jobs that ended over STREAM_KEEP_S ago: they only showed the
    video while it was made, and the MP4 holds the same frames. A running job's stream stays."""
    now = time.time() if now is None else now
    active = store.usage().active_jobs
    removed = []
    for folder in _entries(outputs_dir):
        match = OUTPUT_JOB.search(folder.name)
        if not folder.name.endswith(STREAM_SUFFIX) or folder.is_symlink() or not folder.is_dir():
            continue
        if (match and match.group(1) in active) or now - _newest_mtime(folder) < STREAM_KEEP_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d live stream(s) of finished jobs", len(removed))
    return removed


def sweep_unfinished(store: JobStore, outputs_dir: Path) -> list[Path]:
    """Remove the files that failed or cancelled jobs left in the outputs: a worker killed to cancel or stop its job
    never gets to delete its half-written video (its writer's abort does not run), and no result names the file."""
    removed = []
    for path in _entries(outputs_dir):
        match = OUTPUT_JOB.search(path.name)
        if match is None or path.is_symlink() or not path.is_file():
            continue
        try:
            job = store.get(match.group(1))
        except StoreError:
            continue  # not a job of this store: left to the budget
        if job.status in (FAILED, CANCELLED):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d file(s) that failed or cancelled jobs left", len(removed))
    return removed


def enforce_budget(store: JobStore, outputs_dir: Path, budget: Budget, now: float | None = None) -> list[Removal]:
    """Remove unused files past the age limit, then the least recently used until the size fits; never a file a
    queued or running job needs or one touched in the last RECENT_S. Finished jobs whose outputs went say so."""
    now = time.time() if now is None else now
    sweep_streams(store, outputs_dir, now)
    sweep_unfinished(store, outputs_dir)
    files = sorted(stored_files(store, outputs_dir), key=lambda f: f.last_used)
    total = sum(f.size for f in files)
    removed: list[Removal] = []
    for f in files:
        idle_s = now - f.last_used
        reason = "age" if idle_s > budget.max_age_s else "size" if total > budget.max_bytes else None
        if reason is None:
            break  # sorted by last use: everything after is newer and the size fits
        if f.needed or idle_s < RECENT_S:
            continue
        try:
            f.path.unlink(missing_ok=True)
        except OSError as exc:  # a file we may not remove: report it and go on with the others
            log.warning("could not remove %s: %s", f.path, exc)
            continue
        total -= f.size
        removed.append(Removal(f, reason))
    _report(store, removed, total, budget)
    return removed


def _report(store: JobStore, removed: list[Removal], total: int, budget: Budget) -> None:
    """Log every removal, and mark removed outputs in their jobs' results."""
    notes = {
        "age": f"removed after {budget.max_age_s / 86400:g} days unused ({PREFIX}STORE_MAX_AGE_DAYS)",
        "size": f"removed to keep stored files under {budget.max_bytes / 2**30:g} GB ({PREFIX}STORE_BUDGET_GB)",
    }
    by_job: dict[tuple[str, str], list[Path]] = {}
    for r in removed:
        f = r.file
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.last_used))
        log.info("%s: %s (%.1f MB, last used %s)", notes[r.reason], f.path, f.size / 2**20, when)
        if f.job_id is not None:
            by_job.setdefault((f.job_id, r.reason), []).append(f.path)
    for (job_id, reason), paths in by_job.items():
        store.record_removed_outputs(job_id, paths, f"{notes[reason]} on {time.strftime('%Y-%m-%d')}")
    if total > budget.max_bytes:
        log.warning(
            "stored files take %.2f GB, over the %g GB budget (%sSTORE_BUDGET_GB): the rest is in use or new",
            total / 2**30, budget.max_bytes / 2**30, PREFIX,
        )  # fmt: skip


__all__ = [
    "KEPT_CACHES",
    "Budget",
    "Removal",
    "StoredFile",
    "enforce_budget",
    "gradio_cache_policy",
    "stored_files",
    "sweep_orphans",
    "sweep_streams",
    "sweep_unfinished",
]
