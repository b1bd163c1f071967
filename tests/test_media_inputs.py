"""The Lip-sync and Portrait tabs' inputs: one field fed by one of several inputs (tabs), images handed on unread
(the engine checks them), example thumbnails, and the API page's examples made from the configs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from engine.core.options import fields  # noqa: E402
from engine.lipsync.config import LipSyncConfig  # noqa: E402
from engine.portrait.config import PortraitConfig  # noqa: E402
from ui.examples import SIDE, STRIP, Example, thumbnail  # noqa: E402
from ui.forms import api_examples, form_handler, hidden_inputs  # noqa: E402
from ui.media_inputs import checked_image, media_choice  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def test_a_choice_hands_the_given_input_to_its_field_and_keeps_the_rest() -> None:
    seen: list[dict] = []
    with gr.Blocks():
        face = media_choice("face", {"Photo": lambda: gr.Image(type="filepath"), "Video": lambda: gr.Video()})
        audio = gr.Audio(type="filepath")
    inputs = {"face": face, "audio": audio, "batch_size": gr.Number()}
    handler = face.handler(form_handler(LipSyncConfig, inputs, lambda values, progress, request: seen.append(values),
                                        "lip-sync"))  # fmt: skip
    assert list(face.kwargs(inputs)) == ["face__photo", "face__video", "audio", "batch_size"]
    handler(face__photo=None, face__video="clip.mp4", audio="speech.wav", batch_size=None)
    handler(face__photo="face.jpg", face__video=None, audio="speech.wav", batch_size=8)
    assert [v["face"] for v in seen] == ["clip.mp4", "face.jpg"]
    assert seen[1] == {"face": "face.jpg", "audio": "speech.wav", "batch_size": 8}


def test_setting_one_input_clears_the_others_and_shows_its_tab() -> None:
    with gr.Blocks() as demo:
        driving = media_choice("driving", {"Video": gr.Video, "Image": gr.Image, "Template": gr.File})
    image = driving.inputs["Image"]
    keep_one = next(f for f in demo.fns.values() if f.inputs == [image]).fn
    tabs, *others = keep_one("pose.jpg")
    assert tabs.selected == 1 and others == [None, None]  # the video and the template are cleared
    assert all(update == {"__type__": "update"} for update in keep_one(None))  # clearing one changes nothing else


def test_an_image_upload_reaches_the_engine_unread(tmp_path: Path) -> None:
    """Gradio's Image would open a broken upload with PIL and fail without our message; ours hands it on."""
    from gradio.data_classes import FileData

    broken = tmp_path / "face.png"
    broken.write_bytes(b"not an image" * 20)
    with gr.Blocks():
        image = checked_image(label="Face photo", elem_classes=["face"])
        plain = gr.Image(type="filepath")
    upload = FileData(path=str(broken), orig_name="face.png")
    assert image.preprocess(upload) == str(broken)
    assert image.preprocess(None) is None
    # Gradio rebuilds a component from its constructor arguments in a session that sent it an update (keep_one's
    # gr.update()): the rebuilt one must hand the upload on unread too (it opened it with PIL: a bare "Error").
    rebuilt = type(image)(**{**image.constructor_args, "render": False})
    assert rebuilt.preprocess(upload) == str(broken) and "face" in rebuilt.elem_classes
    with pytest.raises(Exception, match="cannot identify image file"):
        plain.preprocess(upload)  # every other gr.Image is Gradio's own


def test_a_thumbnail_shows_the_face_with_its_speech_as_a_waveform(tmp_path: Path) -> None:
    example = Example("US voice", (ASSETS / "face.jpg", None, ASSETS / "speech.wav"))
    picture = cv2.imread(str(thumbnail(example, (False, False, True), tmp_path, "t")))
    assert picture.shape == (SIDE, SIDE, 3)
    strip, face = picture[:STRIP], picture[STRIP:]
    bars = (strip[..., 0].astype(int) - strip[..., 2].astype(int)) > 60  # the waveform's blue bars
    assert 0.05 < bars.mean() < 0.9 and face.std() > 20  # a drawn waveform over a real picture
    # A second picture goes in the corner instead (a portrait's driver).
    driven = Example("own clip", (ASSETS / "face.jpg", ASSETS / "driving.mp4"))
    corner = cv2.imread(str(thumbnail(driven, (False, False), tmp_path, "d")))
    assert corner.shape == (SIDE, SIDE, 3) and not np.array_equal(corner, picture)


@pytest.mark.parametrize("cls", [LipSyncConfig, PortraitConfig])
def test_api_page_examples_are_the_defaults_and_the_given_files(cls) -> None:
    files = {f.name: f"assets/{f.name}.bin" for f in fields(cls) if f.option.file}
    with gr.Blocks(), api_examples(**files):
        components = hidden_inputs(cls)
    for f in fields(cls):
        example = components[f.name].example_inputs()
        if f.option.file:
            assert example["url"] == files[f.name] and example["meta"] == {"_type": "gradio.FileData"}
        else:  # what the page shows as the parameter's default, never Gradio's "Hello!!" or 3
            assert example == components[f.name].value, f.name


def test_a_job_not_done_yet_shows_no_earlier_jobs_results() -> None:
    """The ONNX eval and benchmark tabs kept the previous job's tables and charts under a new job's status until
    it finished; now its outputs are empty until it is done, and rendered once then."""
    from types import SimpleNamespace

    from ui.widgets import job_poller

    states = {"new": "running", "old": "done", "gone": "cancelled"}
    access = SimpleNamespace(reader=lambda request: "alice")
    poll = job_poller(
        lambda job, reader: {"status": states[job]},
        lambda state: state["status"],
        lambda job, reader: (f"{job} table", f"{job} chart"),
        2,
        "No job yet.",
        access,
    )
    text, timer, *outputs = poll("new", None)
    assert text == "running" and timer.active and outputs == [None, None]
    text, timer, *outputs = poll("old", None)
    assert not timer.active and outputs == ["old table", "old chart"]
    assert poll("gone", None)[2:] == (None, None) and not poll("gone", None)[1].active
    assert poll(None, None)[0] == "No job yet."
    keeping = job_poller(lambda job, reader: {"status": "running"}, str, lambda job, reader: (), 2, "", access, kept=1)
    assert keeping("new", None)[2:] == (None, {"__type__": "update"})  # the ONNX tab's inspection stays


def test_first_in_line_behind_a_running_job_says_so_not_starting() -> None:
    from ui.jobs import _report

    said: list[str] = []
    queued = {"status": "queued", "device": "cpu", "ahead": 0, "running": 1}
    for status in (queued, {**queued, "ahead": 2}, {**queued, "running": 0}):
        _report(status, lambda fraction, text: said.append(text))
    assert said == ["queued on cpu: next, after 1 running job(s)", "queued on cpu: 2 job(s) ahead", "starting"]


def test_the_last_example_clicked_is_the_one_loaded(tmp_path: Path) -> None:
    """Gradio's default for a select drops a click while the previous one is pending: a quick second click moved
    the highlight but left the first example's inputs."""
    from ui.examples import example_gallery

    examples = [Example("a", (ASSETS / "face.jpg",)), Example("b", (ASSETS / "face.jpg",))]
    with gr.Blocks() as demo:
        face = gr.Image(type="filepath")
        example_gallery(examples, [face], [False], tmp_path, "Examples", "ex")
    (select,) = [f for f in demo.fns.values() if f.outputs == [face]]
    assert select.trigger_mode == "always_last"


def test_a_live_run_that_fails_stops_promising_the_rest(monkeypatch) -> None:
    """The summary kept "the first 4.0 s, made so far; the rest follows" under a failed or cancelled live run."""
    from types import SimpleNamespace

    import ui.jobs
    from engine.core.errors import AvatarbenchError
    from engine.core.hls import LiveStream
    from ui.jobs import job_endpoints

    def follow_live(*args: object) -> object:
        yield LiveStream((Path("seg0.ts"),), (4.0,), False)
        raise AvatarbenchError("job j1 cancelled: cancelled by its owner")

    monkeypatch.setattr(ui.jobs, "follow_live", follow_live)
    jobs = SimpleNamespace(settings=None, submit=lambda config, owner: SimpleNamespace(id="j1"))
    access = SimpleNamespace(server_files=lambda values, settings, request: values, owner=lambda r: "o",
                             reader=lambda r: "o")  # fmt: skip
    with gr.Blocks():
        run = job_endpoints(LipSyncConfig, jobs, access, lambda report: (), [gr.Video(), gr.Markdown()], "t", "t.",
                            live=lambda seen, stopped: (f"{seen.duration:g} s", stopped))  # fmt: skip
    shown = []
    with pytest.raises(AvatarbenchError, match="cancelled"):
        for update in run({"face": "f.jpg", "audio": "a.wav"}, lambda *a: None, None):
            shown.append(update)
    assert shown == [("4 s", None), ("4 s", "job j1 cancelled: cancelled by its owner")]


def test_earlier_runs_list_when_opened_and_a_clicked_row_gives_its_id() -> None:
    from types import SimpleNamespace

    from ui.jobs import run_panel

    jobs = SimpleNamespace(history=lambda reader, limit: [], files=(), kind="lipsync")
    access = SimpleNamespace(reader=lambda request: "o")
    with gr.Blocks() as demo:
        outputs = [gr.Video()]
        run_panel(jobs, access, lambda report: (), outputs, gr.Button())
    table = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataframe))
    listing = [f for f in demo.fns.values() if f.outputs == [table]]
    assert sorted(t[1] for f in listing for t in f.targets) == ["click", "expand"]
    (pick,) = [f for f in demo.fns.values() if any(t[1] == "select" for t in f.targets)]
    clicked = gr.SelectData(table, {"index": [0, 1], "value": "done", "row_value": ["1a855ac6d4db", "done"]})
    assert pick.fn(clicked) == "1a855ac6d4db"


def test_opening_an_earlier_run_still_queued_follows_it_to_its_result() -> None:
    """After a reload the earlier runs list may hold a job still queued or running: Open waits for it (it refused)."""
    from types import SimpleNamespace

    from ui.jobs import run_panel

    states = iter([{"status": "queued", "ahead": 1, "device": "cpu"}, {"status": "running", "progress": 0.5,
                   "progress_label": "frame 5/10"}, {"status": "done"}])  # fmt: skip
    seen = []
    jobs = SimpleNamespace(history=lambda reader, limit: [], files=(), kind="lipsync",
                           status=lambda job, owner: seen.append((job, owner)) or next(states),
                           result=lambda job, owner: {"report": {"video": f"{job}.mp4"}})  # fmt: skip
    access = SimpleNamespace(reader=lambda request: "o", owner=lambda request: "o")
    with gr.Blocks() as demo:
        outputs = [gr.Video()]
        run_panel(jobs, access, lambda report: (report["video"],), outputs, gr.Button())
    (reopen,) = [f for f in demo.fns.values() if f.outputs == outputs]
    progress = []
    shown = reopen.fn("1a855ac6d4db", None, lambda part, desc: progress.append((part, desc)))
    assert shown == ("1a855ac6d4db.mp4",) and seen == [("1a855ac6d4db", "o")] * 3
    assert progress == [(0.0, "queued on cpu: 1 job(s) ahead"), (0.5, "frame 5/10")]
