"""Who may see and name what in the web app: owners, operators, and the server's model files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("gradio")
from engine.core.errors import InputError
from engine.core.settings import load_settings
from ui.jobs import LOCAL, OWNER_COOKIE, Access, cancel_own


def _request(username: str | None = None, session: str | None = "s1", cookie: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(username=username, session_hash=session, cookies={OWNER_COOKIE: cookie} if cookie else {})


def test_owners_and_readers() -> None:
    access = Access(frozenset({"carol"}))
    assert access.owner(None) == LOCAL
    owner = access.owner(_request(session="abc"))
    assert owner.startswith("session:") and "abc" not in owner and owner == access.reader(_request(session="abc"))
    assert access.owner(_request(session="abd")) != owner  # the store keeps a hash of the session, not the session
    assert access.owner(_request("alice")) == "user:alice" == access.reader(_request("alice", session="other"))
    assert access.owner(_request("carol")) == "user:carol" and access.reader(_request("carol")) is None
    assert Access(frozenset({"*"})).reader(_request(session="anyone")) is None
    # A bare REST call has neither a login nor a session: it owns nothing, or all such callers would share their jobs.
    for bare in (_request(session=None), _request(session="")):
        with pytest.raises(InputError, match="send a session_hash"):
            access.owner(bare)
        with pytest.raises(InputError, match="send a session_hash"):
            access.reader(bare)
    assert access.owner(_request("alice", session=None)) == "user:alice"


def test_a_browsers_owner_token_outlives_its_sessions_and_only_a_well_formed_one_counts() -> None:
    access, token = Access(frozenset({"carol"})), "0123456789abcdef" * 3
    owner = access.owner(_request(session="before-reload", cookie=token))
    assert owner.startswith("browser:") and token not in owner  # the store keeps a hash, not the token
    assert access.owner(_request(session="after-reload", cookie=token)) == owner
    assert access.reader(_request(session="another-tab", cookie=token)) == owner
    assert access.owner(_request(session=None, cookie=token)) == owner  # a REST call with the cookie: no session needed
    session_x = access.owner(_request(session="x"))
    assert access.owner(_request(session="x", cookie="fedcba9876543210" * 3)) not in (owner, session_x)
    assert access.owner(_request("alice", cookie=token)) == "user:alice"  # a login is who you are, on any browser
    for odd in ("short0123", "0123456789ABCDEF" * 3, token + ";admin", "g" * 48, "a" * 129):
        assert access.owner(_request(session="x", cookie=odd)) == session_x


def test_visitors_pick_the_servers_weights_and_only_operators_name_paths(tmp_path: Path) -> None:
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WEIGHTS_DIR": str(tmp_path / "w")})
    (tmp_path / "w" / "liveportrait" / "base_models").mkdir(parents=True)
    (tmp_path / "w" / "wav2lip_gan.pth").write_bytes(b"x")
    visitor, access = _request(session="v"), Access(frozenset({"carol"}))
    picked = access.server_files({"checkpoint": "wav2lip_gan.pth", "weights": "liveportrait", "pads": "0,10,0,0"},
                                 settings, visitor)  # fmt: skip
    assert picked == {"checkpoint": str(tmp_path / "w" / "wav2lip_gan.pth"), "weights": str(tmp_path / "w" /
                      "liveportrait"), "pads": "0,10,0,0"}  # fmt: skip
    assert access.server_files({"checkpoint": ""}, settings, visitor) == {"checkpoint": ""}  # empty: the default
    for probe in ("/etc/passwd", "../w/wav2lip_gan.pth", "hf:someone/anything/model.pth"):
        with pytest.raises(InputError, match="choose one of the weights this server has \\(liveportrait, "):
            access.server_files({"checkpoint": probe}, settings, visitor)
    operator = _request("carol")
    assert access.server_files({"checkpoint": "/etc/passwd"}, settings, operator) == {"checkpoint": "/etc/passwd"}


def test_outputs_reach_gradio_through_a_private_copy_not_the_outputs_folder(tmp_path: Path, monkeypatch) -> None:
    """Gradio serves launch()'s allowed_paths to anyone who names a file, and outputs are named by job id: a
    component gets a copy in a folder of its own (random name) in the temp directory, removed later."""
    import tempfile

    from ui import widgets

    output = tmp_path / "outputs" / "lipsync-0123456789ab.mp4"
    output.parent.mkdir()
    output.write_bytes(b"video")
    handed = Path(widgets.delivered(output))
    assert handed.read_bytes() == b"video" and handed.name == output.name
    assert handed.parent.parent == Path(tempfile.gettempdir()) and handed.parent.name.startswith("avatarbench-out-")
    assert widgets.delivered(tmp_path / "gone.mp4") is None and widgets.delivered(None) is None
    later = widgets.time.time() + widgets.DELIVERY_KEEP_S + 1
    monkeypatch.setattr(widgets.time, "time", lambda: later)
    widgets.delivered(output)  # each hand-over clears the ones past their time
    assert not handed.exists()


def test_the_cancel_button_stops_only_its_users_jobs_even_an_operators() -> None:
    bob = Access().owner(_request(session="bob"))
    queued = {"j1": "user:carol", "j2": bob, "j3": "user:carol"}
    cancelled: list[tuple[str, str | None]] = []

    class Jobs:
        def queue(self, owner: str | None) -> list[dict]:
            return [{"id": j} for j, o in queued.items() if owner is None or o == owner]

        def cancel(self, job: str, owner: str | None) -> dict:
            cancelled.append((job, owner))
            return {"id": job}

    access = Access(frozenset({"carol"}))  # carol reads everyone's jobs
    assert cancel_own(Jobs(), access, _request("carol")) == ["j1", "j3"]
    assert cancel_own(Jobs(), access, _request(session="bob")) == ["j2"]
    assert cancelled == [("j1", "user:carol"), ("j3", "user:carol"), ("j2", bob)]


def test_a_tabs_earlier_runs_and_its_cancel_button_read_and_stop_only_the_requesters_jobs() -> None:
    """The tab's events take a job id from the page (a gr.State, a typed id), which a hand-made request can name:
    every read and cancel names the requester as the owner, so that another's job is "no job"."""
    import gradio as gr

    from ui.jobs import run_panel, wire_cancel

    asked: list[tuple[str, str | None]] = []

    class Jobs:
        kind, files = "lipsync", ("face",)

        def history(self, owner: str | None, limit: int) -> list[dict]:
            asked.append(("history", owner))
            return [{"id": "j1", "status": "failed", "face": "f.jpg", "device": "cpu", "created": 0.0,
                     "error": "x" * 500}]  # fmt: skip

        def cancel(self, job: str, owner: str | None) -> dict:
            asked.append((f"cancel {job}", owner))
            return {"status": "cancelled"}

    access, bob = Access(frozenset({"carol"})), _request(session="bob")
    with gr.Blocks() as demo:
        job_id, cancel = gr.State("j2"), gr.Button()
        run_panel(Jobs(), access, lambda report: (), lambda ended: (), [gr.Video()], gr.Button())
        wire_cancel(cancel, Jobs(), access, job_id)
    handlers = {f.name: f.fn for f in demo.fns.values()}
    ((job, status, inputs, device, _, error),) = handlers["rows"](bob)
    assert (job, status, inputs, device, error) == ("j1", "failed", "f.jpg", "cpu", "x" * 160)  # a long error cut
    handlers["cancel"]("j2", bob)
    assert asked == [("history", access.owner(bob)), ("cancel j2", access.owner(bob))]
    with pytest.raises(gr.Error, match="No job to cancel yet"):
        handlers["cancel"](None, bob)


def test_every_job_route_shows_and_stops_only_the_requesters_jobs(tmp_path: Path) -> None:
    """/job_status, /job_result, /job_files, /job_cancel, /job_stream, /job_queue and /job_history, called with
    another visitor's session: their job is "no job", their queued job a count."""
    import gradio as gr

    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from engine.lipsync.jobs import LipSyncJobs
    from ui.jobs import register_job_api

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    access, alice, bob = Access(), _request(session="alice"), _request(session="bob")
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        jobs = LipSyncJobs(Broker(store, {}, {CPU: 1}), settings)  # never started: the job stays queued
        register_job_api(store, {"lipsync": jobs}, access)
        job = store.submit("lipsync", {"files": {}, "options": {}}, CPU, owner=access.owner(alice)).id
        routes = {f.api_name: f.fn for f in demo.fns.values()}
        for name in ("job_status", "job_result", "job_files", "job_cancel", "job_stream"):
            with pytest.raises(gr.Error, match=f"no job {job}"):
                list(routes[name](job, bob)) if name == "job_stream" else routes[name](job, bob)
        assert routes["job_queue"](bob) == {"yours": [], "others_queued": 1, "others_running": 0}
        assert routes["job_history"](50, bob) == []
        assert [j["id"] for j in routes["job_queue"](alice)["yours"]] == [j["id"] for j in routes["job_history"](
            50, alice)] == [job]  # fmt: skip
        assert routes["job_status"](job, alice)["status"] == "queued"  # bob's cancel left it be
        assert routes["job_cancel"](job, alice)["status"] == "cancelled"


def test_the_job_history_takes_a_whole_number_of_jobs_up_to_500() -> None:
    """/job_history reads the store in one query: its limit is checked before the store is read. A whole number
    sent as 2.0 (a JSON number from some clients) is taken as 2; 2.5 is not whole."""
    import gradio as gr

    from ui.jobs import register_job_api

    asked: list[int] = []
    store = SimpleNamespace(history=lambda limit, owner: asked.append(limit) or [])
    with gr.Blocks() as demo:
        register_job_api(store, {}, Access())
    (history,) = [f.fn for f in demo.fns.values() if f.api_name == "job_history"]
    for odd in (0, 501, True, 2.5, "10"):
        with pytest.raises(gr.Error, match=r"limit must be a whole number in 1\.\.500"):
            history(odd, None)
    assert history(1, None) == history(500, None) == history(2.0, None) == [] and asked == [1, 500, 2]


def test_one_owner_waits_on_a_few_jobs_at_once_and_a_refused_wait_queues_nothing() -> None:
    """A browser with 16 tabs held every shared slot of /job_stream (or /lipsync, or Open): another person's
    finished job then waited behind them for as long as the first person's jobs ran."""
    import gradio as gr

    from engine.lipsync.config import LipSyncConfig
    from ui.jobs import WAITS, Waits, job_endpoints, register_job_api, run_panel

    waits = Waits(limit=2)
    with waits.waiting("alice"), waits.waiting("alice"):
        with pytest.raises(InputError, match=r"already waiting on 2 jobs .* /lipsync_submit"), waits.waiting("alice"):
            pass
        with waits.waiting("bob"):  # another owner is not held up
            pass
    with waits.waiting("alice"):  # the ended waits gave their places back
        assert waits.held == {"alice": 1}
    assert not waits.held

    submitted, read = [], []
    jobs = SimpleNamespace(submit=lambda config, owner: submitted.append(owner), settings=load_settings({}),
                           kind="lipsync", files=(), status=lambda job, owner: read.append(job))  # fmt: skip
    with gr.Blocks() as demo:
        outputs = [gr.JSON()]
        tab = job_endpoints(LipSyncConfig, jobs, Access(), lambda report, say: (), outputs, "lipsync", "about",
                            lambda seen: (), lambda ended, say: ())  # fmt: skip
        run_panel(jobs, Access(), lambda report: (), lambda ended: (), outputs, gr.Button())
        register_job_api(SimpleNamespace(), {}, Access())
    (api,) = [f.fn for f in demo.fns.values() if f.api_name == "lipsync"]
    (reopen,) = [f.fn for f in demo.fns.values() if f.name == "reopen"]
    (stream,) = [f.fn for f in demo.fns.values() if f.api_name == "job_stream"]
    waits = {  # every handler that waits on a job: the API's, the tab's button, Open, /job_stream
        "/lipsync": lambda: list(api(face="f.png", audio="a.wav")),
        "the tab": lambda: list(tab({"face": "f.png", "audio": "a.wav"}, lambda fraction, label: None, None)),
        "Open": lambda: reopen("0123456789ab", None, lambda *a, **k: None),
        "/job_stream": lambda: list(stream("0123456789ab", None)),
    }
    with contextlib.ExitStack() as held:
        for _ in range(WAITS.limit):
            held.enter_context(WAITS.waiting(LOCAL))
        for name, wait in waits.items():
            with pytest.raises((InputError, gr.Error), match="already waiting on"):
                wait()
            assert submitted == read == [], name  # refused before it was queued or read: no job to wait for
    assert not WAITS.held  # none lost


def test_another_owners_job_is_no_job_even_where_its_kind_cannot_stream(tmp_path: Path) -> None:
    """/job_stream looks up the job's kind before it follows it: a lookup that did not name the requester answered
    bob with "job X is a benchmark job" for alice's job, so ids told him what others ran."""
    import gradio as gr

    from engine.jobs.store import CPU, JobStore
    from ui.jobs import register_job_api

    access, alice, bob = Access(), _request(session="alice"), _request(session="bob")
    with JobStore(tmp_path / "jobs.db", tmp_path / "blobs") as store, gr.Blocks() as demo:
        register_job_api(store, {"benchmark": SimpleNamespace(kind="benchmark")}, access)
        job = store.submit("benchmark", {}, CPU, owner=access.owner(alice)).id
        (stream,) = [f.fn for f in demo.fns.values() if f.api_name == "job_stream"]
        with pytest.raises(gr.Error, match=f"no job {job}"):
            list(stream(job, bob))
        with pytest.raises(gr.Error, match="is a benchmark job: only lip-sync and portrait jobs stream"):
            list(stream(job, alice))  # its owner is told why


def test_an_owner_is_kept_as_a_digest_too_long_to_collide() -> None:
    """Two visitors whose digests agree share their jobs: a digest cut to a few hex digits makes that likely among
    a busy server's sessions. Each is kept at 128 bits at least."""
    access = Access()
    for request in (_request(session="s"), _request(session=None, cookie="0123456789abcdef" * 3)):
        kind, digest = access.owner(request).split(":")
        assert len(digest) >= 32 and int(digest, 16) >= 0, kind


def test_every_job_route_reads_and_changes_the_job_as_its_requester() -> None:
    """Each route reads the job's kind as the requester, and then reads or changes the job as the requester again:
    the second is what still keeps bob out should a route find the kind some other way (a kind named in the
    request, a cache). Checked with a store that would find anyone's job."""
    import gradio as gr

    from engine.core.hls import LiveStream
    from ui.jobs import register_job_api

    asked: list[tuple[str, str | None]] = []

    def said(what: str, value: Any) -> Any:
        return lambda job, owner: asked.append((what, owner)) or value

    segment = LiveStream((Path("part-00000.ts"),), (1.0,), True)
    kind = SimpleNamespace(
        kind="lipsync",
        status=said("status", {"status": "done", "error": None}),
        result=said("result", {"report": None}),
        output_files=said("output_files", {}),
        cancel=said("cancel", {}),
        live=said("live", segment),
    )
    store = SimpleNamespace(get=lambda job, owner: SimpleNamespace(kind="lipsync"))
    access, bob = Access(), _request(session="bob")
    with gr.Blocks() as demo:
        register_job_api(store, {"lipsync": kind}, access)
    routes = {f.api_name: f.fn for f in demo.fns.values()}
    for name in ("job_status", "job_result", "job_files", "job_cancel", "job_stream"):
        asked.clear()
        list(routes[name]("j1", bob)) if name == "job_stream" else routes[name]("j1", bob)
        assert asked and {owner for _, owner in asked} == {access.owner(bob)}, (name, asked)


def test_a_run_is_its_requesters_job_and_a_visitor_names_no_server_path(tmp_path: Path) -> None:
    """/lipsync_submit and the tab's button queue the job as the requester's (another owner's reads then find it
    "no job"), and pass its model files through the operator check first: a visitor's path never reaches a job."""
    import gradio as gr

    from engine.lipsync.config import LipSyncConfig
    from ui.jobs import job_endpoints

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WEIGHTS_DIR": str(tmp_path / "w")})
    submitted: list[tuple[str, str]] = []
    jobs = SimpleNamespace(
        settings=settings, kind="lipsync", files=(),
        submit=lambda config, owner: submitted.append((owner, config.checkpoint)) or SimpleNamespace(id="j1"),
        status=lambda job, owner: {"id": job, "status": "queued", "ahead": 0, "device": "cpu"},
    )  # fmt: skip
    access, bob = Access(frozenset({"carol"})), _request(session="bob")
    with gr.Blocks() as demo:
        tab = job_endpoints(LipSyncConfig, jobs, access, lambda report, say: (), [gr.JSON()], "lipsync", "about",
                            lambda seen: (), lambda ended, say: (ended.reason,))  # fmt: skip
    (api,) = [f.fn for f in demo.fns.values() if f.api_name == "lipsync_submit"]
    assert api(face="f.jpg", audio="a.wav", request=bob)["job_id"] == "j1"
    assert submitted == [(access.owner(bob), None)]
    with pytest.raises(gr.Error, match="checkpoint: choose one of the weights this server has"):
        api(face="f.jpg", audio="a.wav", checkpoint="/etc/passwd", request=bob)
    with pytest.warns(UserWarning, match="paths and downloads are for the operator"):
        (shown,) = tab({"face": "f.jpg", "audio": "a.wav", "checkpoint": "/etc/passwd"}, lambda *a: None, bob)
    assert "choose one of the weights" in shown[0] and len(submitted) == 1
    api(face="f.jpg", audio="a.wav", checkpoint="/etc/passwd", request=_request("carol"))  # the operator may
    assert submitted[-1] == ("user:carol", "/etc/passwd")


def test_job_stream_sends_each_segment_once(tmp_path: Path) -> None:
    """A client joins the segments /job_stream sends one after another: one sent twice plays twice."""
    import gradio as gr

    from engine.core.hls import LiveStream
    from ui.jobs import register_job_api

    parts = [tmp_path / f"part-0000{i}.ts" for i in range(2)]
    for part in parts:
        part.write_bytes(b"ts")
    states = iter([("running", 1), ("done", 2), ("done", 2)])
    now = {"status": "running", "count": 1}

    def status(job: str, owner: str | None) -> dict:
        now["status"], now["count"] = next(states, ("done", 2))
        return {"status": now["status"], "error": None, "progress": 0.5, "progress_label": ""}

    kind = SimpleNamespace(
        kind="lipsync",
        status=status,
        live=lambda job, owner: LiveStream(tuple(parts[: now["count"]]), (1.0,) * now["count"], False),
        result=lambda job, owner: {"report": None},
    )
    store = SimpleNamespace(get=lambda job, owner: SimpleNamespace(kind="lipsync"))
    with gr.Blocks() as demo:
        register_job_api(store, {"lipsync": kind}, Access())
    (stream,) = [f.fn for f in demo.fns.values() if f.api_name == "job_stream"]
    sent = [[Path(p).name for p in new] for new, _ in stream("j1", _request(session="bob"))]
    assert sent == [["part-00000.ts"], ["part-00001.ts"], []]
