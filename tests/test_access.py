"""Who may see and name what in the web app: owners, operators, and the server's model files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

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


def test_one_owner_waits_on_a_few_jobs_at_once_and_a_refused_wait_queues_nothing() -> None:
    """A browser with 16 tabs held every shared slot of /job_stream (or /lipsync, or Open): another person's
    finished job then waited behind them for as long as the first person's jobs ran."""
    import gradio as gr

    from engine.lipsync.config import LipSyncConfig
    from ui.jobs import WAITS, Waits, job_endpoints

    waits = Waits(limit=2)
    with waits.waiting("alice"), waits.waiting("alice"):
        with pytest.raises(InputError, match=r"already waiting on 2 jobs .* /lipsync_submit"), waits.waiting("alice"):
            pass
        with waits.waiting("bob"):  # another owner is not held up
            pass
    with waits.waiting("alice"):  # the ended waits gave their places back
        assert waits.held == {"alice": 1}
    assert not waits.held

    submitted = []
    jobs = SimpleNamespace(submit=lambda config, owner: submitted.append(owner), settings=load_settings({}))
    with gr.Blocks():
        run = job_endpoints(LipSyncConfig, jobs, Access(), lambda report: (), [gr.JSON()], "lipsync", "about",
                            lambda seen: (), lambda ended: ())  # fmt: skip
    with contextlib.ExitStack() as held:
        for _ in range(WAITS.limit):
            held.enter_context(WAITS.waiting(LOCAL))
        with pytest.raises(InputError, match="already waiting on"):
            list(run({"face": "f.png", "audio": "a.wav"}, lambda fraction, label: None, None))
    assert submitted == [] and not WAITS.held  # refused before it was queued: no job to wait for, none lost
