"""Jobs that outlive a web request: SQLite rows with status, queue position and results, plus a blob store.

ONNX evaluations (and later benchmark sweeps) take minutes, so the browser only submits a job and polls
it; the row survives an app restart, and `recover()` marks jobs a dead process left RUNNING as FAILED
(their worker is gone, so they would otherwise look busy forever and block their device's queue).

Decisions worth knowing:
- One connection per JobStore, guarded by a lock, rather than one per thread: Gradio serves requests from
  a pool of threads that come and go, and per-thread connections would leak with them. Every statement
  is milliseconds, so the lock costs nothing noticeable. Across processes (two stores on one file),
  SQLite's own locking applies: WAL mode lets readers run beside a writer, a busy timeout makes writers
  wait rather than fail, and multi-statement writes use BEGIN IMMEDIATE so two claimers never both read
  "nothing running" before either writes (a deferred transaction could also fail on the lock upgrade).
- Queue order is the insertion order (an autoincrement `seq`), not `created`: two submits in the same
  clock tick must still have a definite order. `position` is computed when read, never stored, so it
  cannot go stale.
- Workers claim per device key ("cuda:N" or "cpu"), at most `max_running` at once (one worker process each).
  Each job takes a *share* of its device (1/N with N workers per GPU for its kind) and starts only when its
  share fits beside the running jobs' (they add up to at most 1). A *timed* job's share is 1: it has its device
  to itself, so a measurement never times other work. The queue order is kept: a head that does not fit waits,
  and the jobs behind it wait with it.
- Every job has an owner (a login, or a browser session); reads can be limited to one owner, so one user
  never sees or changes another's jobs. owner=None reads everything (the operator).
- Blobs are content-addressed (sha256), so a model uploaded twice is stored once, and a job names its
  model by hash: the row stays meaningful even if the user's original upload path disappears.
- JSON columns are text written with allow_nan=True: evaluation results hold float('inf') / NaN.
- A fork (ZeroGPU's `spaces` forks the app for its GPU process) waits until no store of this process is inside a
  statement: SQLite keeps its locks' bookkeeping in process memory, and a child forked mid-write believed its own
  process held the write lock, so every store it opened waited 30 s and failed with "database is locked".
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from weakref import WeakSet

from engine.core.errors import InputError, SetupError
from engine.core.words import counted

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
CPU = "cpu"

_OPEN_STORES: WeakSet[JobStore] = WeakSet()  # held still across a fork (see the module docstring)
_FORK_HELD: list[threading.RLock] = []


def _hold_stores_for_fork() -> None:
    """Before a fork: every store's lock, so that none is inside a statement (and holds an SQLite lock) meanwhile."""
    held = []
    for store in list(_OPEN_STORES):
        store._lock.acquire()
        held.append(store._lock)
    _FORK_HELD[:] = held


def _release_stores_after_fork() -> None:
    for lock in reversed(_FORK_HELD):
        lock.release()
    _FORK_HELD.clear()


os.register_at_fork(
    before=_hold_stores_for_fork,
    after_in_parent=_release_stores_after_fork,
    after_in_child=_release_stores_after_fork,
)

_SCHEMA_VERSION = 2
_SHARE_SLACK = 1e-6  # N shares of 1/N may add up to a whisker over 1 in floating point (ninths do in SQLite)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class QueueLimits:
    """How many jobs may wait in the queue: per owner, and from everyone together."""

    per_owner: int
    total: int

    def check(self, mine: int, everyone: int) -> None:
        if mine >= self.per_owner:
            raise QueueFull(
                f"you have {counted(mine, 'job')} waiting in the queue, the most one person may have at once "
                f"({self.per_owner}, AVATARBENCH_MAX_QUEUED_JOBS): queue more when they start, or cancel some"
            )
        if everyone >= self.total:
            raise QueueFull(
                f"the queue holds {everyone} waiting jobs, the most it takes ({self.total}, "
                "AVATARBENCH_MAX_QUEUED_TOTAL): try again when some have started"
            )


def checked_sha256(text: object) -> str:
    """A stored file's name as the store keeps it (lower-case hex), or a StoreError saying what one is."""
    if not isinstance(text, str) or not _SHA256.fullmatch(text.lower()):
        raise StoreError(f"not a sha256 (64 hex characters): {text!r}")
    return text.lower()


_BLOB_REF = re.compile(r"(?:onnx:)?([0-9a-f]{64})")  # how settings name a blob: bare, or a sweep's onnx:<sha256>
_COLUMNS = (
    "id, kind, model_sha256, settings, device, status, progress, progress_label, error, result, "
    "created, started, finished, seq, owner, timed, worker, share"
)
# Columns added after v1, with their definitions: a v1 database gains them in place.
_ADDED = {
    "owner": "TEXT NOT NULL DEFAULT ''",
    "timed": "INTEGER NOT NULL DEFAULT 0",
    "worker": "INTEGER",
    "share": "REAL NOT NULL DEFAULT 1",
}


MAX_ID_CHARS = 64  # ids are 12 hex digits; longer text is no id, and is not echoed whole


class StoreError(InputError):
    """A request the store cannot satisfy (unknown job, bad or missing blob); its text is shown to users."""


class QueueFull(InputError):
    """A job refused because too many wait already (QueueLimits)."""


@dataclass
class Job:
    id: str
    kind: str
    model_sha256: str | None
    settings: dict
    device: str
    status: str
    progress: float
    progress_label: str
    error: str | None
    result: dict | None
    created: float
    started: float | None
    finished: float | None
    owner: str = ""
    timed: bool = False
    worker: int | None = None  # the process id of the worker running it
    share: float = 1.0  # the part of its device it takes (1/N with N workers per GPU for its kind; 1 when timed)
    position: int | None = None  # 1-based place among the device's queued jobs; None unless queued


@dataclass
class Usage:
    """What the jobs say about stored files, for the disk budget: what queued and running jobs need, and when
    each blob was last named by a job."""

    active_jobs: set[str] = field(default_factory=set)
    active_blobs: set[str] = field(default_factory=set)
    blob_last_used: dict[str, float] = field(default_factory=dict)


def hold_data_dir(data_dir: Path) -> IO[str]:
    """Take `data_dir` for this app process alone: an exclusive lock on a file in it, held while the returned file
    stays open and released when the process ends, however it ends. Why: an app's start-up fails every job left
    running (JobStore.recover) and its broker knows only its own workers, so a second app on the same data dir
    failed the first one's running jobs (their results then lost) and ran jobs the first could not cancel."""
    import fcntl

    handle = (data_dir / "app.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):  # a filesystem without locks (some network mounts)
            log.warning("cannot lock %s (%s): make sure no other app uses this data dir", data_dir, exc)
            return handle
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise SetupError(
            f"another avatarbench app{f' (process {holder})' if holder.isdigit() else ''} is using the data dir "
            f"{data_dir}: stop it, or give this one its own AVATARBENCH_DATA_DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def blob_refs(value: Any) -> Iterator[str]:
    """Every blob a job's settings name, wherever they name it (files, a sweep's model): a string that merely looks
    like a sha256 only keeps a blob longer, never loses one."""
    if isinstance(value, str):
        if match := _BLOB_REF.fullmatch(value):
            yield match.group(1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from blob_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from blob_refs(item)


def _row_to_job(row: tuple, position: int | None = None) -> Job:
    (job_id, kind, sha, settings, device, status, progress, label, error, result, created, started, finished) = row[:13]
    owner, timed, worker, share = row[14:18]
    return Job(
        id=job_id,
        kind=kind,
        model_sha256=sha,
        settings=json.loads(settings),
        device=device,
        status=status,
        progress=progress,
        progress_label=label,
        error=error,
        result=None if result is None else json.loads(result),
        created=created,
        started=started,
        finished=finished,
        owner=owner,
        timed=bool(timed),
        worker=worker,
        share=share,
        position=position,
    )


class JobStore:
    """The job table and the blob directory. Thread-safe; several processes may share one database file."""

    def __init__(self, db_path: str | os.PathLike, blobs_dir: str | os.PathLike) -> None:
        self.db_path = Path(db_path)
        self.blobs_dir = Path(blobs_dir)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        _OPEN_STORES.add(self)
        # isolation_level=None: autocommit, so transactions are exactly the BEGINs written below.
        self._conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            with self._tx() as c:
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version > _SCHEMA_VERSION:
                    raise StoreError(f"{self.db_path} has job schema v{version}; this app knows v{_SCHEMA_VERSION}")
                c.execute(
                    """CREATE TABLE IF NOT EXISTS jobs (
                        id TEXT NOT NULL UNIQUE,
                        kind TEXT NOT NULL,
                        model_sha256 TEXT,
                        settings TEXT NOT NULL,
                        device TEXT NOT NULL,
                        status TEXT NOT NULL,
                        progress REAL NOT NULL DEFAULT 0,
                        progress_label TEXT NOT NULL DEFAULT '',
                        error TEXT,
                        result TEXT,
                        created REAL NOT NULL,
                        started REAL,
                        finished REAL,
                        seq INTEGER PRIMARY KEY AUTOINCREMENT
                    )"""
                )
                have = {r[1] for r in c.execute("PRAGMA table_info(jobs)")}
                for name, definition in _ADDED.items():
                    if name not in have:
                        c.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
                c.execute("CREATE INDEX IF NOT EXISTS jobs_status_device ON jobs (status, device, seq)")
                c.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)")
                c.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # -- plumbing -----------------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes SQLite's write lock up front (see the module docstring)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _write(self, sql: str, params: tuple) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start-up -----------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Fail jobs a dead process left RUNNING. Call once at start-up, before the broker starts its workers.

        With several app processes on one file this would also fail the other processes' running jobs;
        the app runs one process per database.
        """
        now = time.time()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        n = self._write(
            "UPDATE jobs SET status = ?, error = ?, finished = ? WHERE status = ?",
            (FAILED, f"the app stopped while this job was running (restart at {when})", now, RUNNING),
        )
        if n:
            log.warning("marked %d job(s) left running by a previous process as failed", n)
        return n

    # -- blobs --------------------------------------------------------------------------------------------

    def put_blob(self, path: str | os.PathLike) -> str:
        """Store a file by content; return its sha256. Hashes while copying, so the upload is read once."""
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"no file {src}")
        digest = hashlib.sha256()
        # The temp file sits in blobs_dir so the final rename stays on one filesystem, hence atomic: a
        # reader never sees a half-written blob, and a crash leaves only a stray .tmp file.
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=self.blobs_dir)
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb") as out, src.open("rb") as inp:
                while chunk := inp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            dest = self.blobs_dir / sha[:2] / sha
            if dest.is_file():
                os.utime(dest)  # used again now: the budget (engine/jobs/housekeeping.py) evicts by last use
                return sha  # already stored: the content is identical by construction
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)  # two racing puts of one content both write identical bytes
            return sha
        finally:
            tmp.unlink(missing_ok=True)

    def has_blob(self, sha256: str) -> bool:
        try:
            self.blob_path(sha256)
        except StoreError:
            return False
        return True

    def blob_path(self, sha256: str) -> Path:
        sha = checked_sha256(sha256)
        path = self.blobs_dir / sha[:2] / sha
        if not path.is_file():
            raise StoreError(f"no stored file with sha256 {sha}")
        return path

    # -- jobs ---------------------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        settings: dict,
        device: str,
        model_sha256: str | None = None,
        owner: str = "",
        timed: bool = False,
        share: float = 1.0,
        limits: QueueLimits | None = None,
    ) -> Job:
        """A queued job. `share` is the part of its device it takes while it runs (a timed job takes all of it).
        `limits` are checked in the transaction that inserts it, so concurrent submits cannot all pass them."""
        if not isinstance(settings, dict):
            raise StoreError(f"settings must be a dict, not {type(settings).__name__}")
        if not kind or not device:
            raise StoreError("a job needs a kind and a device")
        share = 1.0 if timed else float(share)
        if not 0.0 < share <= 1.0:
            raise StoreError(f"a job's share of its device is in (0, 1], not {share}")
        settings_text = _dumps(settings)  # fails here, in the request, if the settings are not JSON
        for _ in range(5):
            job_id = secrets.token_hex(6)
            try:
                with self._tx() as c:
                    if limits is not None:
                        limits.check(*self._waiting(c, owner))
                    c.execute(
                        "INSERT INTO jobs (id, kind, model_sha256, settings, device, status, created, owner, timed, "
                        "share) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (job_id, kind, model_sha256, settings_text, device, QUEUED, time.time(), owner, int(timed),
                         share),
                    )  # fmt: skip
            except sqlite3.IntegrityError as exc:  # 48-bit id collision: vanishingly rare, just draw again
                if "jobs.id" not in str(exc):  # another constraint (a missing owner) is not a collision
                    raise StoreError(f"the job could not be stored: {exc}") from None
                continue
            return self.get(job_id)
        raise StoreError("could not allocate a job id")

    def waiting(self, owner: str) -> tuple[int, int]:
        """(the owner's, everyone's) queued jobs, as `limits` count them."""
        with self._lock:
            return self._waiting(self._conn, owner)

    @staticmethod
    def _waiting(c: sqlite3.Connection, owner: str) -> tuple[int, int]:
        """(the owner's, everyone's) queued jobs, a split job's segments not counted (its parent counts once)."""
        mine, everyone = c.execute(
            "SELECT COALESCE(SUM(owner = ?), 0), COUNT(*) FROM jobs WHERE status = ? "
            "AND json_extract(settings, '$.segment') IS NULL",
            (owner, QUEUED),
        ).fetchone()
        return int(mine), int(everyone)

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job; with an owner, only that owner's (another's is "no job", so ids reveal nothing)."""
        if not isinstance(job_id, str) or len(job_id) > MAX_ID_CHARS:  # an API caller may send anything
            shown = repr(job_id) if len(repr(job_id)) <= MAX_ID_CHARS else f"{repr(job_id)[:MAX_ID_CHARS]}..."
            raise StoreError(f"no job {shown}: a job id is the text a submit returned (12 hex digits)")
        if not job_id.strip():  # an empty Job id field or job_id="": "no job " said nothing of what was wrong
            raise StoreError("no job id given: a job id is the text a submit returned (12 hex digits)")
        # One statement, so the status and the position agree even while a worker claims the job.
        rows = self._read(
            f"SELECT {_COLUMNS}, (SELECT COUNT(*) FROM jobs q WHERE q.status = ? AND q.device = jobs.device "
            "AND q.seq <= jobs.seq) FROM jobs WHERE id = ?",
            (QUEUED, job_id),
        )
        if not rows or (owner is not None and rows[0][14] != owner):
            raise StoreError(f"no job {job_id}")
        row = rows[0]
        return _row_to_job(row, row[18] if row[5] == QUEUED else None)

    def statuses(self, id_prefix: str) -> set[str]:
        """The statuses of the jobs whose ids start with `id_prefix` (hex digits): what a folder named after a job's
        id may belong to."""
        if not re.fullmatch(r"[0-9a-f]+", id_prefix):
            raise StoreError(f"a job id prefix is hex digits, not {id_prefix!r}")
        return {row[0] for row in self._read("SELECT status FROM jobs WHERE id LIKE ?", (id_prefix + "%",))}

    def running_on(self, device: str) -> int:
        """How many jobs (anyone's) run on the device now: what a queued job first in line waits for."""
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE status = ? AND device = ?", (RUNNING, device))[0][0])

    def queue(self, owner: str | None = None) -> list[Job]:
        """Queued and running jobs in order, positions counted over everyone's; with an owner, only theirs."""
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY seq", (QUEUED, RUNNING))
        seen: dict[str, int] = {}
        jobs = []
        for row in rows:
            position = None
            if row[5] == QUEUED:
                position = seen[row[4]] = seen.get(row[4], 0) + 1
            if owner is None or row[14] == owner:
                jobs.append(_row_to_job(row, position))
        return jobs

    def history(self, limit: int = 50, kind: str | None = None, owner: str | None = None) -> list[Job]:
        """Newest first, all statuses. Positions are left None: this is a log, the queue view has them."""
        where, params = [], []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs {clause}ORDER BY seq DESC LIMIT ?", (*params, int(limit)))
        return [_row_to_job(r) for r in rows]

    def usage(self) -> Usage:
        """Which jobs and blobs are queued or running, and each blob's last use (the newest submit, start or end of
        a job naming it); one pass over the table."""
        usage = Usage()
        rows = self._read(
            "SELECT id, status, model_sha256, settings, MAX(created, COALESCE(started, 0), COALESCE(finished, 0)) "
            "FROM jobs"
        )
        for job_id, status, model_sha, settings, used in rows:
            active = status in (QUEUED, RUNNING)
            if active:
                usage.active_jobs.add(job_id)
            try:
                named = {*blob_refs(json.loads(settings)), *blob_refs(model_sha)}
            except ValueError:  # a damaged row: its model column still counts
                log.warning("job %s has unreadable settings; only its model column names blobs", job_id)
                named = set(blob_refs(model_sha))
            for sha in named:
                usage.blob_last_used[sha] = max(used, usage.blob_last_used.get(sha, 0.0))
                if active:
                    usage.active_blobs.add(sha)
        return usage

    def record_removed_outputs(self, job_id: str, paths: Iterable[str | os.PathLike], note: str) -> list[str]:
        """Say in a job's result which of the output files it names were removed (and why, in `note`): the row
        stays, its result keeps the old paths, and readers learn the files are gone from `removed_outputs` and a
        warning. Returns the output keys marked."""
        names = {Path(p).name for p in paths}
        with self._tx() as c:
            row = c.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            result = json.loads(row[0]) if row and row[0] else None
            outputs = result.get("outputs") if isinstance(result, dict) else None
            if not isinstance(outputs, dict):
                return []
            gone = {k: v for k, v in outputs.items() if isinstance(v, str) and Path(v).name in names}
            if gone:
                result.setdefault("removed_outputs", {}).update(gone)
                result.setdefault("warnings", []).append(f"{note}: {', '.join(Path(v).name for v in gone.values())}")
                c.execute("UPDATE jobs SET result = ? WHERE id = ?", (_dumps(result), job_id))
            return list(gone)

    def owns_model(self, owner: str, sha256: str) -> bool:
        """Whether this owner submitted a job with this model (a sweep may only reuse its owner's uploads)."""
        return bool(self._read("SELECT 1 FROM jobs WHERE owner = ? AND model_sha256 = ? LIMIT 1", (owner, sha256)))

    def claim_next(self, device: str, worker: int | None = None, max_running: int = 1) -> Job | None:
        """Move the device's oldest queued job to RUNNING for `worker` (a process id), unless `max_running` jobs
        already run there or its share does not fit beside theirs (shares add up to at most the whole device; a
        timed job's share is 1, so it runs alone). The queue order is kept: a head that does not fit waits."""
        with self._tx() as c:
            count, taken = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(share), 0) FROM jobs WHERE status = ? AND device = ?", (RUNNING, device)
            ).fetchone()
            if count >= max_running:
                return None
            row = c.execute(
                "SELECT id, share FROM jobs WHERE status = ? AND device = ? ORDER BY seq LIMIT 1", (QUEUED, device)
            ).fetchone()
            if row is None or taken + row[1] > 1.0 + _SHARE_SLACK:
                return None
            c.execute(
                "UPDATE jobs SET status = ?, started = ?, worker = ? WHERE id = ?",
                (RUNNING, time.time(), worker, row[0]),
            )
            return _row_to_job(c.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (row[0],)).fetchone())

    def running(self) -> list[Job]:
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs WHERE status = ? ORDER BY seq", (RUNNING,))
        return [_row_to_job(r) for r in rows]

    def load(self) -> dict[str, float]:
        """The shares of the queued and running jobs per device, added up: where new work should go."""
        rows = self._read(
            "SELECT device, SUM(share) FROM jobs WHERE status IN (?, ?) GROUP BY device", (QUEUED, RUNNING)
        )
        return dict(rows)

    def update_progress(self, job_id: str, fraction: float, label: str) -> None:
        """Only a running job's progress moves: a late callback must not touch a finished row."""
        fraction = min(1.0, max(0.0, float(fraction)))
        self._write(
            "UPDATE jobs SET progress = ?, progress_label = ? WHERE id = ? AND status = ?",
            (fraction, str(label), job_id, RUNNING),
        )

    def save_partial(self, job_id: str, result: dict) -> None:
        """What a running job has made so far, as its result: a job stopped on the way (cancelled, out of time, its
        worker gone) ends with it rather than with nothing; `finish` replaces it."""
        if not isinstance(result, dict):
            raise StoreError(f"a job result must be a dict, not {type(result).__name__}")
        self._write("UPDATE jobs SET result = ? WHERE id = ? AND status = ?", (_dumps(result), job_id, RUNNING))

    def finish(self, job_id: str, result: dict) -> None:
        """A running job's result (a job that was cancelled or failed meanwhile keeps that state)."""
        if not isinstance(result, dict):
            raise StoreError(f"a job result must be a dict, not {type(result).__name__}")
        text = _dumps(result)
        self._end(job_id, "status = ?, progress = 1.0, result = ?, error = NULL", (DONE, text))

    def keep_newest(self, device: str, owner: str, count: int, owner_bytes: int) -> int:
        """Delete `owner`'s oldest finished jobs queued under `device` (imported reports: no worker runs them, and
        no budget covers their rows) past their newest `count`, or past `owner_bytes` of results; how many went.
        Another owner's rows are never touched: one person's imports cannot push out another's."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, LENGTH(result) FROM jobs WHERE device = ? AND owner = ? ORDER BY seq DESC", (device, owner)
            ).fetchall()
            size, doomed = 0, []
            for kept, (job_id, length) in enumerate(rows, 1):
                size += length or 0
                if kept > 1 and (kept > count or size > owner_bytes):  # the newest stays whatever its size
                    doomed.append((job_id,))
            c.executemany("DELETE FROM jobs WHERE id = ?", doomed)
        return len(doomed)

    def result_bytes(self, device: str, but: str) -> int:
        """The results' size of every job queued under `device` but owner `but`'s."""
        sql = "SELECT COALESCE(SUM(LENGTH(result)), 0) FROM jobs WHERE device = ? AND owner IS NOT ?"
        ((total,),) = self._read(sql, (device, but))  # a read: no write lock taken
        return int(total)

    def fail(self, job_id: str, error: str, status: str = FAILED) -> bool:
        """End a queued or running job with the reason; False when it had already ended."""
        return self._end(job_id, "status = ?, error = ?", (status, str(error)))

    def requeue(self, job_id: str) -> None:
        """Put a running job back at its place in the queue (its worker was stopped for another job's sake)."""
        self._write(
            "UPDATE jobs SET status = ?, started = NULL, worker = NULL, progress = 0, progress_label = '', "
            "result = NULL "
            "WHERE id = ? AND status = ?",
            (QUEUED, job_id, RUNNING),
        )

    def cancel_queued(self, job_id: str, reason: str) -> bool:
        """Cancel a job only if it is still queued, in one statement: a worker may claim it between a read and a
        write, and a job marked cancelled while its worker ran it escaped every limit and held the device."""
        return self._end(job_id, "status = ?, error = ?", (CANCELLED, reason), (QUEUED,))

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel a queued job (a running one is stopped by whoever runs its worker, then failed)."""
        self.get(job_id, owner)  # "no job" for a stranger
        self.cancel_queued(job_id, "cancelled by its owner before it started")
        return self.get(job_id)

    def _end(self, job_id: str, assignments: str, params: tuple, ending: tuple[str, ...] = (QUEUED, RUNNING)) -> bool:
        n = self._write(
            f"UPDATE jobs SET {assignments}, finished = ? WHERE id = ? AND status IN ({', '.join('?' * len(ending))})",
            (*params, time.time(), job_id, *ending),
        )
        if not n:
            self.get(job_id)  # "no job" when it does not exist at all
        return bool(n)


__all__ = [
    "CANCELLED",
    "CPU",
    "DONE",
    "FAILED",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "Job",
    "JobStore",
    "StoreError",
    "Usage",
    "blob_refs",
    "hold_data_dir",
]
