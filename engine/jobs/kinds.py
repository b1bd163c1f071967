"""A capability's jobs as the front ends see them: submitted through the broker, read only by their owner.

Each capability (ONNX eval, sweeps, lip-sync, portrait) subclasses JobKind with its submit-time checks and its
summary fields; status, result, history, queue and cancel are the same for all, and every read names its owner
(None: the operator, who sees everything). Another owner's job is "no job": ids reveal nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from engine.core.errors import AvatarbenchError, InputError, SetupError
from engine.core.hls import LiveStream, read_stream, stream_folder
from engine.core.options import Config
from engine.core.settings import Settings
from engine.jobs import split
from engine.jobs.broker import Broker
from engine.jobs.housekeeping import STREAM_KEEP_S
from engine.jobs.store import CANCELLED, CPU, DONE, FAILED, QUEUED, Job, JobStore, QueueLimits, StoreError

log = logging.getLogger(__name__)


def summary(job: Job) -> dict[str, Any]:
    """What a status poll needs (the result itself only comes with result())."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "position": job.position,
        "ahead": job.position - 1 if job.status == QUEUED and job.position else 0,  # jobs before this one
        "progress": job.progress,
        "progress_label": job.progress_label,
        "device": job.device,
        "error": job.error,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        **split.describe(job),  # a split job's parts: "segment i/n of job X", the parent's devices
    }


def shown_report(report: Any) -> Any:
    """A result as its owner sees it in the tab and the API: each output by its file's name, not its place on the
    server, which they cannot reach (the files come through Gradio: /job_files) and which shows the server's
    folders."""
    if not isinstance(report, dict):
        return report
    shown = dict(report)
    for key in ("outputs", "removed_outputs"):  # removed_outputs: what the store's limits removed (housekeeping.py)
        if isinstance(report.get(key), dict):
            shown[key] = {name: Path(path).name if isinstance(path, str) and path else path
                          for name, path in report[key].items()}  # fmt: skip
    return shown


def readable_summary(kind: JobKind | None, job: Job) -> dict[str, Any]:
    """The job's summary by its kind; a record this version cannot read (damaged, or written by another version, or
    of a kind this app does not run) is shown as such, never allowed to break a list."""
    try:
        return kind.summary(job) if kind is not None else summary(job)
    except Exception as exc:
        log.warning("job %s cannot be summarised: %s", job.id, exc)
        return {**summary(job), "error": f"this job's record cannot be read ({type(exc).__name__})"}


class JobKind:
    kind: ClassVar[str]

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker, self.store, self.settings = broker, broker.store, settings

    def place(self, wants_gpu: bool) -> str:
        """The device for a new job: the one AVATARBENCH_DEVICE names ("cpu", "cuda:N"), else the broker's choice."""
        setting = self.settings.device
        return self.broker.place(wants_gpu, setting if setting == CPU or setting.startswith("cuda:") else None)

    def summary(self, job: Job) -> dict[str, Any]:
        """The capability's own fields beside the common ones (override)."""
        return summary(job)

    def limits(self) -> QueueLimits:
        """AVATARBENCH_MAX_QUEUED_JOBS per owner (of every kind; a split job's segments are one job) and
        AVATARBENCH_MAX_QUEUED_TOTAL from everyone: the queue is first come, first served, and forty sweeps queued
        from one session held every other visitor's job for hours."""
        return QueueLimits(self.settings.max_queued_jobs, self.settings.max_queued_total)

    def check_quota(self, owner: str) -> None:
        """Refuse a new job before the work of storing it where the limits already refuse it; the submit itself
        holds them again, atomically (JobStore.submit)."""
        self.limits().check(*self.store.waiting(owner))

    def _get(self, job_id: str, owner: str | None) -> Job:
        job = self.store.get(job_id, owner)
        if job.kind != self.kind:
            raise StoreError(f"job {job_id} is not of kind {self.kind} (it is {job.kind})")
        return job

    def status(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """The summary, and for a queued job the jobs running on its device (what the first in line waits for)."""
        job = self._get(job_id, owner)
        running = self.store.running_on(job.device) if job.status == QUEUED else 0
        return {**self.summary(job), "running": running}

    def result(self, job_id: str, owner: str | None) -> dict[str, Any]:
        job = self._get(job_id, owner)
        return {**self.summary(job), "report": job.result}

    def output_files(self, job_id: str, owner: str | None) -> dict[str, Path]:
        """A finished job's output files that are still there, by their role ("video", "strip", ...)."""
        job = self._get(job_id, owner)
        if job.status in (FAILED, CANCELLED):  # it never will be done: its half-made files are removed
            raise InputError(f"job {job_id} {'was ' if job.status == CANCELLED else ''}{job.status} ({job.error}) and "
                             f"has no files: only a finished job keeps them{self.streamed_note(job)}")  # fmt: skip
        if job.status != DONE:
            raise InputError(f"job {job_id} is {job.status}: its files come once it is done")
        outputs = (job.result or {}).get("outputs") or {}
        files = {name: Path(path) for name, path in outputs.items() if isinstance(path, str) and Path(path).is_file()}
        if not outputs:
            raise InputError(f"job {job_id} made no files: its report (/job_result) is what it made")
        if not files:
            raise InputError(f"job {job_id}'s files were removed (the store's size or age limit); run it again")
        return files

    def streamed_note(self, job: Job) -> str:
        """Where the video a stopped job streamed before it stopped can still be had (override)."""
        return ""

    def history(self, owner: str | None, limit: int = 50) -> list[dict[str, Any]]:
        """The owner's jobs, newest first. A row this version cannot read (damaged, or written by another version)
        is shown as such, never allowed to break the list."""
        return [readable_summary(self, job) for job in self.store.history(limit, kind=self.kind, owner=owner)]

    def queue(self, owner: str | None) -> list[dict[str, Any]]:
        """The owner's queued and running jobs of this kind; a record this version cannot read is shown as such, as in
        the history (the tab's queue and the Cancel button read this list)."""
        return [readable_summary(self, j) for j in self.store.queue(owner) if j.kind == self.kind]

    def cancel(self, job_id: str, owner: str | None) -> dict[str, Any]:
        self._get(job_id, owner)
        return readable_summary(self, self.broker.cancel(job_id, owner))


def queue_view(store: Any, owner: str | None) -> dict[str, Any]:
    """Your queued and running jobs in full, everyone else's as counts."""
    jobs = store.queue()
    mine = [summary(j) for j in jobs if owner is None or j.owner == owner]
    others = [j for j in jobs if owner is not None and j.owner != owner]
    return {
        "yours": mine,
        "others_queued": sum(j.status == QUEUED for j in others),
        "others_running": sum(j.status != QUEUED for j in others),
    }


class FileJobs(JobKind):
    """A capability whose request is a config naming input files (lip-sync, portrait): the files are stored by
    content with their names, the rest of the config as its text form. One lasting longer than
    AVATARBENCH_SPLIT_SECONDS is split into time segments over the idle GPUs (engine/jobs/split.py)."""

    config: ClassVar[type[Config]]
    files: ClassVar[tuple[str, ...]]

    def submit(self, config: Config, owner: str) -> Job:
        config = config.checked()
        self.check_quota(owner)
        self.refuse(config)
        record = {
            "options": {k: v for k, v in config.to_text().items() if k not in self.files},
            "files": store_inputs(self.store, {name: getattr(config, name) for name in self.files}),
            "process": self.process(config),
        }
        with self.broker.placing:
            devices = split.split_devices(self.broker, self.settings, self.seconds(config))
            if devices:
                return split.submit_split(self.broker, self.kind, record, devices, owner, self.limits())
            return self.broker.submit(self.kind, record, self.place(True), owner, limits=self.limits())

    def refuse(self, config: Config) -> None:
        """Refusals that need the server's settings or files, made at submit so they never become failed jobs
        (override; raise the capability's error)."""

    def seconds(self, config: Config) -> float | None:
        """How long the job's video will last, from headers, when it may be split into time segments (override);
        None: never split."""
        return None

    def cancel(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """A split job's queued segments go with it (running ones stop at their next batch: they watch it)."""
        cancelled = super().cancel(job_id, owner)
        job = self.store.get(job_id)
        if split.role(job) == "parent":
            for segment in split.segments_of(self.store, job):
                if segment.status == QUEUED:
                    with contextlib.suppress(StoreError):
                        self.broker.cancel(segment.id, owner)
        return cancelled

    def process(self, config: Config) -> dict[str, Any]:
        """Process-wide switches the job needs in its worker (see engine.jobs.worker.prepare_process)."""
        return {}

    def summary(self, job: Job) -> dict[str, Any]:
        files = {name: ref["name"] for name, ref in job.settings["files"].items()}
        return {**super().summary(job), **files}

    def streamed_note(self, job: Job) -> str:
        """A stopped job keeps no MP4, but the segments it streamed stay until the stream is swept."""
        stream = read_stream(stream_folder(output_path(self.settings, job)))
        if not stream.segments:
            return ""
        return (f"; the first {stream.duration:.1f} s it streamed come from /job_stream for at least "
                f"{STREAM_KEEP_S / 60:g} minutes after it ended")  # fmt: skip

    def live(self, job_id: str, owner: str | None) -> LiveStream:
        """One of the owner's jobs' live stream as it stands: its finished segments and whether it ended (nothing
        where the job was not asked to stream, has not started, or ran where the app cannot see its files: a Ray
        actor's outputs come back only at the end)."""
        return read_stream(stream_folder(output_path(self.settings, self._get(job_id, owner))))


def run_file_job(
    job: Job,
    progress: Callable[[float, str], None],
    context: Any,
    config: type[Config],
    run: Callable[..., Any],
    after: Callable[[Any, dict[str, Path]], None] | None = None,
    segments: Callable[[Any, Path, Settings, str], split.SegmentedRun] | None = None,
) -> dict[str, Any]:
    """A FileJobs job in its worker: the inputs staged under their names, `run(config, out, settings, progress,
    device=...)` writing outputs/<kind>-<job id>.mp4, then `after(result, inputs)` while the inputs are still
    there; the result as a dict. A split job's parent or segment runs through engine/jobs/split.py with the
    capability's `segments(config, out, settings, device)`; a segment's result is its part only (no `after`)."""
    settings = context.settings
    with staged_inputs(context.store, job.settings["files"], settings.cache_dir) as paths:
        built = config.build({**job.settings["options"], **paths})
        out = output_path(settings, job)
        _check_folder(out.parent)
        role = split.role(job)
        if role is None:
            result = run(built, out, settings, progress, device=job.device)
        elif segments is None:
            raise AvatarbenchError(f"{job.kind} jobs cannot be split into segments")
        else:
            result = split.run_split(job, progress, context, segments(built, out, settings, job.device), out)
            if role == "segment":
                return result.to_dict()
        if after is not None:
            after(result, paths)
        return _with_upload_names(result.to_dict(), job.settings["files"])


def _with_upload_names(report: dict[str, Any], files: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The report's config naming each input by the name it came with, not the worker's staging folder (gone once
    the job ends, and a server path)."""
    config = report.get("config")
    if isinstance(config, dict):
        report["config"] = {**config, **{name: ref["name"] for name, ref in files.items() if name in config}}
    return report


def output_path(settings: Settings, job: Job) -> Path:
    """Where a file job writes its video (its live stream beside it: engine/core/hls.py)."""
    return settings.outputs_dir / f"{job.kind}-{job.id}.mp4"


def _check_folder(folder: Path) -> None:
    """The outputs folder made where missing; one that cannot be (a file in its place, no permission, a full disk)
    is the operator's to fix, said before the run rather than as an internal error after it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"the server's outputs folder cannot be used ({exc.strerror or type(exc).__name__}): its "
                         "operator must make DATA_DIR/outputs a folder this app can write") from None  # fmt: skip


def store_inputs(store: JobStore, paths: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """Upload files kept by content for the worker (and for a queued job that outlives a restart), with the names
    they came with: decoders look at the extension."""
    return {name: {"sha256": store.put_blob(path), "name": Path(path).name} for name, path in paths.items()}


@contextlib.contextmanager
def staged_inputs(store: JobStore, files: Mapping[str, Mapping[str, str]], work_dir: Path) -> Iterator[dict[str, Path]]:
    """The stored inputs under their own names in a private folder (links to the blobs, removed afterwards)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="job-", dir=work_dir) as folder:
        staged = {}
        for name, ref in files.items():
            path = Path(folder) / name / Path(ref["name"]).name
            path.parent.mkdir()
            os.symlink(store.blob_path(ref["sha256"]), path)
            staged[name] = path
        yield staged


__all__ = [
    "FileJobs",
    "JobKind",
    "output_path",
    "queue_view",
    "run_file_job",
    "shown_report",
    "staged_inputs",
    "store_inputs",
    "summary",
]
