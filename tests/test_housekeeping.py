"""Disk housekeeping: Gradio's cache is swept on the settings' schedule, work folders of killed processes go at
start-up, and stored inputs and outputs stay under a size and age budget (least recently used first, never a file a
queued or running job needs), with finished jobs still readable and saying which output went."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.errors import InputError, SetupError
from engine.core.results import RunResult
from engine.core.settings import Settings, load_settings
from engine.jobs.broker import Broker
from engine.jobs.housekeeping import Budget, enforce_budget, gradio_cache_policy, sweep_ended_splits, sweep_orphans
from engine.jobs.kinds import shown_report
from engine.jobs.store import CANCELLED, DONE, QUEUED, RUNNING, JobStore

DAY = 86400.0
ROOMY = 2**40  # a size budget nothing in these tests reaches
FOREVER = 1000 * DAY


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "AVATARBENCH_UPLOAD_CACHE_HOURS": "2"})
    s.ensure_dirs()
    return s


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = JobStore(settings.db_path, settings.data_dir / "blobs")
    yield s
    s.close()


def _age(path: Path, days: float) -> Path:
    """Make a file or folder look last written `days` ago."""
    when = time.time() - days * DAY
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def _blob(store: JobStore, tmp: Path, content: bytes, days: float = 0.0) -> str:
    """A stored blob of `content`, last written `days` ago; its sha256."""
    src = tmp / f"upload-{len(content)}-{content[:8].hex()}"
    src.write_bytes(content)
    sha = store.put_blob(src)
    _age(store.blob_path(sha), days)
    return sha


def _output(settings: Settings, name: str, size: int, days: float) -> Path:
    path = settings.outputs_dir / name
    path.write_bytes(b"o" * size)
    return _age(path, days)


def _names(removed: list) -> list[str]:
    return [r.file.path.name for r in removed]


def test_a_stopped_split_jobs_folder_goes_with_the_chores_and_a_live_ones_stays(
    settings: Settings, store: JobStore
) -> None:
    """A split parent stopped with its worker (cancelled, past a limit) never removes its folder; the chores do,
    once the job has ended, and leave a queued or running job's, one of an ended job written to just now (a segment
    still stopping), and a worker's tempfile folder, which names no job (hex or not)."""
    ended, live = store.submit("lipsync", {}, "cuda:0"), store.submit("lipsync", {}, "cuda:1")
    running, just_ended = store.submit("lipsync", {}, "cuda:2"), store.submit("lipsync", {}, "cuda:3")
    store.fail(ended.id, "cancelled by its owner while it ran", CANCELLED)
    assert store.claim_next("cuda:2").id == running.id
    store.fail(just_ended.id, "cancelled by its owner while it ran", CANCELLED)

    def folder(name: str, days: float) -> Path:
        path = settings.cache_dir / name
        path.mkdir(parents=True)
        (path / "segment-1.mkv").write_bytes(b"x")
        _age(path / "segment-1.mkv", days)
        return _age(path, days)

    stopped, queued = folder(f"job-{ended.id[:8]}", 1), folder(f"job-{live.id[:8]}", 1)
    kept = [queued, folder(f"job-{running.id[:8]}", 1), folder(f"job-{just_ended.id[:8]}", 0)]
    tempfile_folders = [folder("job-0123abcd", 1), folder("job-n0wrunn1", 1)]  # no such job
    assert sweep_ended_splits(store, settings.cache_dir) == [stopped]
    assert not stopped.exists() and all(f.exists() for f in (*kept, *tempfile_folders))


# -- Gradio's cache ----------------------------------------------------------------------------------------------


def test_gradio_cache_policy_follows_the_setting() -> None:
    assert gradio_cache_policy(load_settings({"AVATARBENCH_UPLOAD_CACHE_HOURS": "2"})) == (1800, 7200)
    assert gradio_cache_policy(load_settings({})) == (3600, 6 * 3600)  # checked at most hourly
    assert gradio_cache_policy(load_settings({"AVATARBENCH_UPLOAD_CACHE_HOURS": "0.1"})) == (90, 360)


def test_the_budget_reads_its_settings_in_gib_and_days() -> None:
    env = {"AVATARBENCH_STORE_BUDGET_GB": "1.5", "AVATARBENCH_STORE_MAX_AGE_DAYS": "3"}
    assert Budget.from_settings(load_settings(env)) == Budget(max_bytes=3 * 2**29, max_age_s=3 * DAY)


def test_the_app_sweeps_and_budgets_at_start_up_and_its_blocks_clean_gradios_cache(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_jobs (with its workers left unstarted) and build_app, in this process."""
    import app
    from engine.core.device import resolve_device
    from engine.system.telemetry import TelemetrySampler
    from ui.jobs import Access

    orphan = settings.cache_dir / "onnx-job-k1ll3d_0"
    orphan.mkdir()
    _age(orphan, 1)
    with JobStore(settings.db_path, settings.data_dir / "blobs") as early:
        stale = early.blob_path(_blob(early, tmp_path, b"stale upload", days=400))
    monkeypatch.setattr(Broker, "start", lambda self: self)
    monkeypatch.setattr("ui.system.DoctorCache.warm_up", lambda self: None)

    services = app.start_jobs(settings)
    try:
        assert not orphan.exists() and not stale.exists()
        assert services.broker.chores is not None  # the budget runs again from the broker's watch
        demo = app.build_app(settings, resolve_device("cpu"), TelemetrySampler(), services, Access())
        assert demo.delete_cache == gradio_cache_policy(settings) == (1800, 7200)
    finally:
        services.broker.store.close()


# -- orphaned work folders ---------------------------------------------------------------------------------------


def test_orphan_sweep_removes_old_work_folders_and_keeps_fresh_ones_and_caches(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    cache = settings.cache_dir
    kept_blob = store.blob_path(_blob(store, tmp_path, b"an input"))

    def folder(name: str, days: float) -> Path:
        path = cache / name
        (path / "inner").mkdir(parents=True)
        _age(path / "inner", days)
        return _age(path, days)

    killed = [folder("onnx-job-abcd_123", 1), folder("bench-q9x2m0pz", 2), folder("onnx-zz12ab34", 1)]
    staged = folder("job-s7aged00", 1)
    os.symlink(kept_blob, staged / "inner" / "face.png")  # a killed lip-sync job's staged input
    _age(staged / "inner" / "face.png", 1)
    _age(staged / "inner", 1)
    _age(staged, 1)
    fresh = folder("job-n0wrunn1", 0)
    busy = folder("onnx-job-busy_123", 1)  # the folder is old, but something inside it was just written
    (busy / "inner" / "model.onnx").write_bytes(b"x")
    _age(busy / "inner", 1)  # a file written in place changes no folder's time: the file's own counts
    caches = [folder(name, 30) for name in ("onnx-examples", "onnx-trt", "liveportrait-onnx", "tmpabcdefgh")]
    stray, writing = store.blobs_dir / ".incoming-abc.tmp", store.blobs_dir / ".incoming-new.tmp"
    stray.touch()
    writing.touch()
    _age(stray, 1)

    removed = sweep_orphans(cache, store.blobs_dir)

    assert sorted(removed) == sorted([*killed, staged, stray])
    assert not any(p.exists() for p in removed)
    assert kept_blob.is_file()  # the staged link went, not what it pointed to
    assert all(p.is_dir() for p in (fresh, busy, *caches)) and writing.exists()
    assert sweep_orphans(cache, store.blobs_dir) == []


# -- the budget --------------------------------------------------------------------------------------------------


def test_budget_removes_the_least_recently_used_until_the_size_fits(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    oldest = _blob(store, tmp_path, b"a" * 1000, days=10)
    older = _blob(store, tmp_path, b"b" * 1000, days=5)
    video = _output(settings, "lipsync-0123456789ab.mp4", 1000, days=3)
    newer = _blob(store, tmp_path, b"c" * 1000, days=2)

    exactly = enforce_budget(store, settings.outputs_dir, Budget(max_bytes=3000, max_age_s=FOREVER))
    assert _names(exactly) == [oldest]  # 3000 bytes left: exactly the budget fits it
    removed = exactly + enforce_budget(store, settings.outputs_dir, Budget(max_bytes=2500, max_age_s=FOREVER))

    assert _names(removed) == [oldest, older] and {r.reason for r in removed} == {"size"}
    assert video.is_file() and store.blob_path(newer).is_file()
    for sha in (oldest, older):
        with pytest.raises(Exception, match="no stored file"):
            store.blob_path(sha)
    assert enforce_budget(store, settings.outputs_dir, Budget(max_bytes=2500, max_age_s=FOREVER)) == []


def test_files_queued_or_running_jobs_need_are_kept_even_when_oldest(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    face = _blob(store, tmp_path, b"face" * 100, days=300)
    model = _blob(store, tmp_path, b"model" * 100, days=300)
    image = _blob(store, tmp_path, b"image" * 100, days=300)
    swept = _blob(store, tmp_path, b"swept" * 100, days=300)
    done_input = _blob(store, tmp_path, b"done" * 100, days=300)
    unused = _blob(store, tmp_path, b"unused" * 100, days=1)

    lipsync = store.submit("lipsync", {"files": {"face": {"sha256": face, "name": "face.png"}}}, "cpu")
    onnx = store.submit(
        "onnx_eval", {"files": {"model": model, "inputs": None, "images": [image]}}, "cpu", model_sha256=model
    )
    assert store.claim_next("cpu").id == lipsync.id  # one running, the rest queued
    sweep = store.submit("bench", {"sweep": {"model": f"onnx:{swept}"}}, "cuda:0")
    done = store.submit("lipsync", {"files": {"face": {"sha256": done_input, "name": "old.png"}}}, "cuda:1")
    store.claim_next("cuda:1")
    store.finish(done.id, {"outputs": {}})
    writing = _output(settings, f"lipsync-{lipsync.id}.mp4", 100, days=300)  # the running job's, being written

    later = time.time() + 2 * DAY  # the jobs were submitted just now: look from later, past the recent window
    removed = enforce_budget(store, settings.outputs_dir, Budget(max_bytes=0, max_age_s=FOREVER), now=later)

    assert sorted(_names(removed)) == sorted([unused, done_input])
    for sha in (face, model, image, swept):
        assert store.blob_path(sha).is_file()
    assert writing.is_file()
    assert [store.get(j.id).status for j in (lipsync, onnx, sweep, done)] == [RUNNING, QUEUED, QUEUED, DONE]
    assert store.get(done.id).settings["files"]["face"]["sha256"] == done_input  # the row stays as it was


def test_what_failed_or_cancelled_jobs_left_half_written_goes(settings: Settings, store: JobStore) -> None:
    """A running job cancelled is stopped with its worker, whose writer never deletes the partial MP4: the chore
    does, and keeps every other job's files (done, running, unknown to this store)."""
    jobs = {name: store.submit("lipsync", {}, "cpu") for name in ("cancelled", "failed", "done", "running")}
    for _ in jobs:
        store.claim_next("cpu")
    store.fail(jobs["cancelled"].id, "cancelled by its owner while it ran", CANCELLED)
    store.fail(jobs["failed"].id, "its worker died")
    store.finish(jobs["done"].id, {"outputs": {}})
    files = {name: _output(settings, f"lipsync-{job.id}.mp4", 48, days=0) for name, job in jobs.items()}
    stranger = _output(settings, "lipsync-0123456789ab.mp4", 48, days=0)
    strip = _output(settings, f"portrait-{jobs['failed'].id}.strip.png", 10, days=0)
    removed = enforce_budget(store, settings.outputs_dir, Budget(max_bytes=10**9, max_age_s=FOREVER))
    assert removed == []  # the budget itself removed nothing: the sweep ran before it
    assert sorted(p.name for p in settings.outputs_dir.iterdir()) == sorted(
        [files["done"].name, files["running"].name, stranger.name]
    )
    assert not strip.exists()


def test_the_budget_sweeps_ended_jobs_streams_and_leaves_a_running_ones_files(
    settings: Settings, store: JobStore
) -> None:
    """A live stream's parts are no outputs of their own: a running job's stay however full the budget (their names
    carry no job id), and an ended job's stream goes whole with the chores, past its keeping time."""
    running = store.submit("lipsync", {}, "cpu")
    store.claim_next("cpu")

    def stream(name: str) -> Path:
        folder = settings.outputs_dir / f"{name}.stream"
        folder.mkdir()
        _output(settings, f"{folder.name}/part-00000.ts", 1000, days=1)
        return _age(folder, 1)

    live, ended = stream(f"lipsync-{running.id}"), stream("lipsync-0123456789ab")
    other = settings.outputs_dir / "lipsync-0123456789ab.frames"  # a folder, but no stream: never swept whole
    other.mkdir()
    _age(other, 1)
    later = time.time() + 2 * DAY  # past the recent window
    assert enforce_budget(store, settings.outputs_dir, Budget(max_bytes=0, max_age_s=DAY), now=later) == []
    assert (live / "part-00000.ts").is_file() and not ended.exists() and other.is_dir()


def test_age_limit_removes_unused_files_and_a_job_naming_a_blob_counts_as_its_use(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    expired = _blob(store, tmp_path, b"expired", days=40)
    recent = _blob(store, tmp_path, b"recent", days=20)
    reused = _blob(store, tmp_path, b"reused", days=400)  # written long ago, named by a job just now
    job = store.submit("lipsync", {"files": {"face": {"sha256": reused, "name": "face.png"}}}, "cpu")
    store.claim_next("cpu")
    store.finish(job.id, {"outputs": {}})
    old_csv = _output(settings, "bench-0123456789ab.csv", 10, days=31)
    budget = Budget(max_bytes=ROOMY, max_age_s=30 * DAY)

    removed = enforce_budget(store, settings.outputs_dir, budget)

    assert sorted(_names(removed)) == sorted([expired, old_csv.name]) and {r.reason for r in removed} == {"age"}
    assert store.blob_path(recent).is_file() and store.blob_path(reused).is_file()
    in_a_month = time.time() + 31 * DAY
    assert reused in _names(enforce_budget(store, settings.outputs_dir, budget, now=in_a_month))


def test_each_removed_output_says_which_limit_in_its_units(settings: Settings, store: JobStore) -> None:
    """The note a job's result gets names the limit and its setting as the user wrote it (days, GB of 2**30 bytes);
    a file both too old and over the size goes for its age."""
    jobs = [store.submit("lipsync", {}, "cpu") for _ in range(2)]
    old = _output(settings, f"lipsync-{jobs[0].id}.mp4", 1000, days=40)
    big = settings.outputs_dir / f"lipsync-{jobs[1].id}.mp4"
    with big.open("wb") as sparse:  # 2 GiB that take no disk
        sparse.truncate(2 * 2**30)
    _age(big, 5)
    for job, path in zip(jobs, (old, big), strict=True):
        store.claim_next("cpu")
        store.finish(job.id, {"outputs": {"video": str(path)}})
    removed = enforce_budget(store, settings.outputs_dir, Budget(max_bytes=3 * 2**29, max_age_s=30 * DAY))
    assert [(r.file.path, r.reason) for r in removed] == [(old, "age"), (big, "size")]
    notes = [store.get(job.id).result["warnings"][-1] for job in jobs]
    assert notes[0].startswith("removed after 30 days unused (AVATARBENCH_STORE_MAX_AGE_DAYS) on ")
    assert notes[1].startswith("removed to keep stored files under 1.5 GB (AVATARBENCH_STORE_BUDGET_GB) on ")


def test_put_blob_of_stored_content_counts_as_a_use(settings: Settings, store: JobStore, tmp_path: Path) -> None:
    sha = _blob(store, tmp_path, b"uploaded twice", days=40)
    assert _blob(store, tmp_path, b"uploaded twice") == sha  # the second upload, about to be named by a job
    assert enforce_budget(store, settings.outputs_dir, Budget(max_bytes=0, max_age_s=30 * DAY)) == []


def test_a_finished_job_whose_output_was_removed_reads_cleanly_and_says_so(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    from engine.lipsync.jobs import LipSyncJobs

    face = _blob(store, tmp_path, b"face")
    job = store.submit("lipsync", {"options": {}, "files": {"face": {"sha256": face, "name": "me.png"}}}, "cpu")
    store.claim_next("cpu")
    video = _output(settings, f"lipsync-{job.id}.mp4", 5000, days=10)
    report = _output(settings, f"bench-{job.id}.json", 10, days=10)  # a file the tab writes again when it shows one
    store.finish(job.id, RunResult(outputs={"video": str(video)}, warnings=["a warning of the run"]).to_dict())

    removed = enforce_budget(store, settings.outputs_dir, Budget(max_bytes=0, max_age_s=FOREVER))

    assert sorted(_names(removed)) == sorted([video.name, report.name])
    assert store.blob_path(face).is_file()  # the job's input was named just now: too recent to remove
    jobs = LipSyncJobs(Broker(store, {}, {"cpu": 1}), settings)
    assert [h["id"] for h in jobs.history(owner="")] == [job.id]
    result = jobs.result(job.id, owner="")
    assert result["status"] == DONE and result["error"] is None
    assert result["report"]["removed_outputs"] == {"video": str(video)}
    note = result["report"]["warnings"][-1]
    assert "AVATARBENCH_STORE_BUDGET_GB" in note and video.name in note and report.name not in note
    shown = RunResult.from_dict(result["report"])  # what the tab renders from
    assert shown.outputs["video"] == str(video) and not Path(shown.outputs["video"]).exists()
    assert len(shown.warnings) == 2
    assert shown_report(result["report"])["removed_outputs"] == {"video": video.name}  # no server folder
    with pytest.raises(InputError, match=f"job {job.id}'s files were removed .*run it again"):
        jobs.output_files(job.id, owner="")


def test_an_outputs_folder_replaced_by_a_file_is_the_operators_to_fix_said_before_the_run(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    """It failed the job as "internal error: FileExistsError" once the run had done its work."""
    from types import SimpleNamespace

    from engine.lipsync.jobs import handle

    files = {
        name: {"sha256": _blob(store, tmp_path, name.encode()), "name": f"{name}.bin"} for name in ("face", "audio")
    }
    job = store.submit("lipsync", {"options": {}, "files": files}, "cpu")
    shutil.rmtree(settings.outputs_dir, ignore_errors=True)
    settings.outputs_dir.write_text("a file where the folder goes")
    context = SimpleNamespace(settings=settings, store=store)
    with pytest.raises(
        SetupError, match=r"outputs folder cannot be used \(File exists\): its operator must make DATA_DIR/outputs"
    ):
        handle(store.claim_next("cpu"), lambda fraction, label: None, context)
    assert job.id


def test_the_broker_runs_the_chores_from_its_watch(store: JobStore) -> None:
    ran = threading.Event()
    broker = Broker(store, {}, {"cpu": 1}, monitor_s=0.01, chores=ran.set, chores_s=0.0).start()
    try:
        assert ran.wait(60)
    finally:
        broker.stop(grace_s=5)


def test_uploads_a_killed_run_left_are_swept_at_start(tmp_path: Path) -> None:
    from engine.jobs.housekeeping import sweep_uploads

    old, fresh = tmp_path / "aa11" / "face.jpg", tmp_path / "bb22" / "speech.wav"
    for path in (old, fresh):
        path.parent.mkdir()
        path.write_bytes(b"x")
    past = time.time() - 7 * 3600
    for path in (old, old.parent):
        os.utime(path, (past, past))
    assert sweep_uploads(tmp_path, 6 * 3600) == 1
    assert not old.parent.exists() and fresh.exists()
    assert sweep_uploads(tmp_path / "missing", 60) == 0


def test_a_job_without_files_says_why_it_has_none(settings: Settings, store: JobStore) -> None:
    """A failed job never made its files (not "they come once it is done": they never will), and a done job whose
    report names no file made none (not "they were removed"). One that streamed nothing is told of no stream."""
    from engine.lipsync.jobs import LipSyncJobs

    jobs = LipSyncJobs(Broker(store, {}, {"cpu": 1}), settings)
    failed = store.submit("lipsync", {"options": {}, "files": {}}, "cpu")
    store.fail(failed.id, "no face found")
    refusal = rf"^job {failed.id} failed \(no face found\) and has no files: only a finished job keeps them$"
    with pytest.raises(InputError, match=refusal):  # nothing streamed: no word of a stream
        jobs.output_files(failed.id, owner="")
    bare = store.submit("lipsync", {"options": {}, "files": {}}, "cpu")
    store.claim_next("cpu")
    store.finish(bare.id, {"outputs": {}})
    with pytest.raises(InputError, match=rf"^job {bare.id} made no files: its report \(/job_result\) is what it made$"):
        jobs.output_files(bare.id, owner="")


def test_a_file_job_refused_by_its_owners_queue_limit_stores_none_of_its_files(
    settings: Settings, tmp_path: Path
) -> None:
    """The limit is checked before the uploads are stored: a refused request would otherwise leave its face and
    speech in the blob store, named by no job, until the budget swept them."""
    from dataclasses import replace

    from engine.jobs.store import QueueFull
    from engine.lipsync.config import LipSyncConfig
    from engine.lipsync.jobs import LipSyncJobs

    root = Path(__file__).resolve().parent.parent
    capped = replace(settings, max_queued_jobs=1)
    with JobStore(tmp_path / "jobs.db", tmp_path / "blobs") as store:
        store.submit("lipsync", {"options": {}, "files": {}}, "cpu", owner="alice")
        jobs = LipSyncJobs(Broker(store, {}, {"cpu": 1}), capped)
        config = LipSyncConfig(root / "assets" / "face.jpg", root / "assets" / "speech.wav", engine="baseline")
        with pytest.raises(QueueFull, match="you have 1 job waiting"):
            jobs.submit(config, "alice")
        assert not [p for p in store.blobs_dir.rglob("*") if p.is_file()]


def test_a_config_made_in_code_is_checked_at_submit_before_its_files_are_stored(
    settings: Settings, store: JobStore
) -> None:
    """Guards FileJobs.submit's check: a config made directly (the CLI, a script), not through build(), is checked
    as a front end's would be, so a crop that keeps no pixels is refused now, with its message, rather than stored,
    queued and failed in the worker."""
    from engine.lipsync.config import LipSyncConfig, LipSyncError
    from engine.lipsync.jobs import LipSyncJobs

    assets = Path(__file__).resolve().parent.parent / "assets"
    jobs = LipSyncJobs(Broker(store, {"lipsync": "engine.lipsync.jobs:handle"}, {"cpu": 1}), settings)  # not started
    config = LipSyncConfig(assets / "face.jpg", assets / "speech.wav", engine="baseline", crop=(10, 5, 0, -1))
    with pytest.raises(LipSyncError, match=r"crop 10,5,0,-1 keeps no pixels"):
        jobs.submit(config, "alice")
    assert store.history() == [] and not [p for p in store.blobs_dir.rglob("*") if p.is_file()]


def test_an_input_is_stored_under_its_file_name_not_the_servers_path(store: JobStore, tmp_path: Path) -> None:
    """Guards store_inputs' name: the job's summary and report show it to its owner, who must not see the server's
    folders (and the decoder needs only its extension)."""
    from engine.jobs.kinds import store_inputs

    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "face.png").write_bytes(b"a face")
    stored = store_inputs(store, {"face": tmp_path / "uploads" / "face.png"})
    assert stored["face"]["name"] == "face.png"
    assert store.blob_path(stored["face"]["sha256"]).read_bytes() == b"a face"


def test_a_stored_input_is_staged_in_its_own_folder_whatever_its_recorded_name(store: JobStore, tmp_path: Path) -> None:
    """Only the name's last part is used: a record naming an input "../../x.png" still stages it in the job's private
    folder, never a link written outside it."""
    from engine.jobs.kinds import staged_inputs

    sha = _blob(store, tmp_path, b"a face")
    work = tmp_path / "work"
    with staged_inputs(store, {"face": {"sha256": sha, "name": "../../x.png"}}, work) as staged:
        assert staged["face"].name == "x.png" and staged["face"].parent.name == "face"
        assert staged["face"].parent.parent.parent == work and staged["face"].read_bytes() == b"a face"
    assert not (tmp_path / "x.png").exists() and not (work / "x.png").exists()


def test_a_file_jobs_report_names_its_inputs_as_uploaded_not_by_the_workers_folder(
    settings: Settings, store: JobStore
) -> None:
    """Guards run_file_job's report: each input the report's config names is the name it was uploaded with, not the
    worker's staging path (a server folder, gone once the job ends); a field the config does not name stays out."""
    from types import SimpleNamespace

    from engine.jobs.kinds import run_file_job, store_inputs
    from engine.lipsync.config import LipSyncConfig

    assets = Path(__file__).resolve().parent.parent / "assets"
    files = store_inputs(store, {"face": assets / "face.jpg", "audio": assets / "speech.wav"})
    job = store.submit("lipsync", {"options": {}, "files": files}, "cpu", owner="me")
    staged: list[str] = []

    def run(config: LipSyncConfig, out: Path, settings: Settings, progress: object, device: str) -> SimpleNamespace:
        staged.append(str(config.face))
        return SimpleNamespace(to_dict=lambda: {"config": {"face": str(config.face), "fps": 25.0}})

    context = SimpleNamespace(settings=settings, store=store)
    report = run_file_job(job, lambda fraction, label: None, context, LipSyncConfig, run)
    assert staged[0] != "face.jpg" and report["config"] == {"face": "face.jpg", "fps": 25.0}


def test_a_failed_file_jobs_half_written_video_is_swept_by_the_name_it_was_written_under(
    settings: Settings, store: JobStore
) -> None:
    """Guards output_path's name: housekeeping knows a job's files by "-<job id>." in their names, so the video a
    killed lip-sync job left half-written at output_path is removed once the job failed (and kept while it runs)."""
    from engine.jobs.housekeeping import sweep_unfinished
    from engine.jobs.kinds import output_path

    job = store.submit("lipsync", {"options": {}, "files": {}}, "cpu", owner="me")
    video = output_path(settings, job)
    video.parent.mkdir(parents=True, exist_ok=True)
    video.write_bytes(b"half a video")
    store.claim_next("cpu")
    assert sweep_unfinished(store, settings.outputs_dir) == [] and video.is_file()
    store.fail(job.id, "its worker was killed")
    assert sweep_unfinished(store, settings.outputs_dir) == [video] and not video.exists()


def test_a_stopped_jobs_refusal_says_how_much_it_streamed_and_for_how_long_it_stays(
    settings: Settings, store: JobStore
) -> None:
    """Guards FileJobs.streamed_note: a cancelled job keeps no MP4, but its owner is told the seconds its live stream
    holds (to a tenth) and that /job_stream keeps them STREAM_KEEP_S (600 s: 10 minutes) after it ended."""
    from engine.core.hls import PLAYLIST, stream_folder
    from engine.jobs.kinds import output_path
    from engine.lipsync.jobs import LipSyncJobs

    jobs = LipSyncJobs(Broker(store, {"lipsync": "engine.lipsync.jobs:handle"}, {"cpu": 1}), settings)
    files = {name: {"sha256": "0" * 64, "name": f"{name}.bin"} for name in ("face", "audio")}
    job = store.submit("lipsync", {"options": {}, "files": files}, "cpu", owner="me")
    jobs.cancel(job.id, "me")
    folder = stream_folder(output_path(settings, job))
    folder.mkdir(parents=True)
    (folder / PLAYLIST).write_text("#EXTM3U\n#EXTINF:1.000000,\npart-00000.ts\n#EXTINF:0.960000,\npart-00001.ts\n")
    note = r"; the first 2\.0 s it streamed come from /job_stream for at least 10 minutes after it ended$"
    with pytest.raises(
        InputError, match=r"was cancelled \(.*\) and has no files: only a finished job keeps them" + note
    ):
        jobs.output_files(job.id, "me")
