"""The Lip-sync and Portrait tabs' inputs: one field fed by one of several inputs (tabs), images handed on unread
(the engine checks them), example thumbnails, and the API page's examples made from the configs."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from engine.core.options import fields  # noqa: E402
from engine.lipsync.config import LipSyncConfig  # noqa: E402
from engine.portrait.config import PortraitConfig  # noqa: E402
from ui.examples import INSET, SIDE, STRIP, Example, thumbnail  # noqa: E402
from ui.forms import api_examples, form_handler, hidden_inputs  # noqa: E402
from ui.media_inputs import RAW_UPLOAD, checked_image, media_choice  # noqa: E402

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
    # Should several come (the page clears the others, a direct call need not), the first tab's input is the one run.
    handler(face__photo="face.jpg", face__video="clip.mp4", audio="speech.wav", batch_size=None)
    assert seen[2]["face"] == "face.jpg"


def test_setting_one_input_clears_the_others_and_shows_its_tab() -> None:
    with gr.Blocks() as demo:
        driving = media_choice("driving", {"Video": gr.Video, "Image": gr.Image, "Template": gr.File})
    image = driving.inputs["Image"]
    keep_one = next(f for f in demo.fns.values() if f.inputs == [image]).fn
    tabs, *others = keep_one("pose.jpg")
    assert tabs.selected == 1 and others == [None, None]  # the video and the template are cleared
    shown = next(b for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.id == tabs.selected)
    assert shown.label == "Image"  # the tab selected is the one holding the image
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
    assert checked_image(elem_classes="face", render=False).elem_classes == ["face", RAW_UPLOAD]  # one class, as text


def test_a_pasted_or_captured_image_reaches_the_engine_as_a_file(tmp_path: Path) -> None:
    """A photo pasted from the clipboard or taken with the webcam may come inline (a data: URL, no file): Gradio
    writes it to a file, which the engine then reads; handing on its missing path sent the job the text "None"."""
    import base64

    from gradio.components.image import ImageData

    ok, png = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))
    pasted = ImageData(url="data:image/png;base64," + base64.b64encode(png.tobytes()).decode(), orig_name="face.png")
    with gr.Blocks():
        image = checked_image(label="Face photo")
    written = image.preprocess(pasted)
    assert ok and Path(written).is_file() and cv2.imread(written).shape == (8, 8, 3)


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


def test_a_drivers_picture_goes_in_the_top_right_corner_and_a_silent_track_draws_a_flat_line(tmp_path: Path) -> None:
    """The portrait's driver sits in the top-right corner, the face (its upper middle) left whole beside and below;
    a speech track with no sound at all is drawn as a flat line, where its loudness scale divided by zero."""
    import wave

    plain = cv2.imread(str(thumbnail(Example("face", (ASSETS / "face.jpg",)), (False,), tmp_path, "f"))).astype(int)
    driven = Example("own clip", (ASSETS / "face.jpg", ASSETS / "driving.mp4"))
    corner = cv2.imread(str(thumbnail(driven, (False, False), tmp_path, "d"))).astype(int)
    changed = np.abs(corner - plain).mean(axis=2)
    assert changed[:INSET, SIDE - INSET :].mean() > 20  # the driver's picture
    assert changed[INSET + 4 :].mean() < 3 and changed[:, : SIDE - INSET - 4].mean() < 3  # the face as it was
    silence = tmp_path / "silence.wav"
    with wave.open(str(silence), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(bytes(32000))  # a second of zeros
    quiet = cv2.imread(str(thumbnail(Example("quiet", (ASSETS / "face.jpg", silence)), (False, True), tmp_path, "q")))
    assert quiet.shape == (SIDE, SIDE, 3)


def test_each_example_shows_its_own_picture_and_a_click_loads_its_files(tmp_path: Path) -> None:
    """One thumbnail per example, each its own picture and caption, all in one row (wrapping on a phone, ui/style.py),
    and a click on one loads that example's files, an input it leaves out emptied."""
    from ui.examples import EXAMPLES_CLASS, example_gallery
    from ui.style import CSS

    examples = [Example("Photo", (ASSETS / "face.jpg", None)), Example("Video", (None, ASSETS / "driving.mp4")),
                Example("Both", (ASSETS / "hopper.jpg", ASSETS / "driving.mp4"))]  # fmt: skip
    with gr.Blocks() as demo:
        photo, video = gr.Image(type="filepath"), gr.Video()
        gallery = example_gallery(examples, [photo, video], [False, False], tmp_path, "Examples", "ex")
    assert [item["caption"] for item in gallery.value] == ["Photo", "Video", "Both"]
    pictures = [cv2.imread(item["image"]["path"]) for item in gallery.value]
    assert not any(np.array_equal(a, b) for i, a in enumerate(pictures) for b in pictures[i + 1 :])
    assert gallery.columns == len(examples) and gallery.rows == 1
    assert EXAMPLES_CLASS in gallery.elem_classes and f".{EXAMPLES_CLASS} " in CSS
    (select,) = [f for f in demo.fns.values() if f.outputs == [photo, video]]
    assert select.fn(gr.SelectData(gallery, {"index": 1, "value": None})) == (None, str(ASSETS / "driving.mp4"))
    assert select.fn(gr.SelectData(gallery, {"index": 0, "value": None})) == (str(ASSETS / "face.jpg"), None)


def test_the_page_hides_empty_result_boxes_and_says_an_event_finished_in_words() -> None:
    """The CSS hides a box with HIDDEN_WHEN_EMPTY while Gradio shows it empty (the report files, the motion template),
    and the words app.py adds to Gradio's page: a screen reader heard "common.complete" (the browser tests see both;
    this one runs without a browser)."""
    from ui.style import CSS, HIDDEN_WHEN_EMPTY, MISSING_TRANSLATIONS

    assert f".{HIDDEN_WHEN_EMPTY}:has(> .empty) {{ display: none; }}" in CSS
    assert MISSING_TRANSLATIONS["en"]["common.complete"] == "Complete"


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


def test_api_page_examples_for_each_kind_of_field() -> None:
    """What the API page's snippets show beyond the tabs' files: a value given as it is (the bench tab's GPU), the
    paths of a field of several files one handle_file each (one path too), a required choice its first choice, a
    required number Gradio's own placeholder (a value the page can write); nested api_examples add up, and none
    outlives its block."""
    import json

    from engine.bench.config import CostConfig
    from engine.onnx.config import EvalConfig
    from ui.forms import api_example, field

    def handle(path: str) -> dict:
        return {"path": path, "url": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}

    assert api_example(field(EvalConfig, "images"), {"images": "assets/a.png"}, None) == [handle("assets/a.png")]
    with gr.Blocks(), api_examples(runs=7), api_examples(images=("assets/a.png", "assets/b.png")):
        given = hidden_inputs(EvalConfig)
    with gr.Blocks():
        cost, after = hidden_inputs(CostConfig), hidden_inputs(EvalConfig)
        skipping = hidden_inputs(EvalConfig, ("images",))
    assert given["runs"].example_inputs() == 7
    assert given["images"].example_inputs() == [handle("assets/a.png"), handle("assets/b.png")]
    assert given["images"].file_count == "multiple" and "images" not in skipping
    assert after["runs"].example_inputs() == after["runs"].value  # the block's examples are gone
    assert cost["measured_on"].example_inputs() == "cpu"
    json.dumps(cost["throughput"].example_inputs())


def test_api_parameters_are_typed_and_described_as_their_fields() -> None:
    """gradio_client and the API page read each parameter's type and description from its hidden component: a whole
    number is an integer (not any number), a switch a boolean, the rest text; each is described by its help, and an
    optional text field starts empty, never None."""
    with gr.Blocks():
        components = hidden_inputs(LipSyncConfig)
    for f in fields(LipSyncConfig):
        if not f.option.file:
            kind = (
                {bool: "boolean", int: "integer", float: "number"}.get(f.type, "string")
                if f.option.text is None
                else "string"
            )
            assert components[f.name].api_info()["type"] == kind, f.name
            assert f.option.help in components[f.name].label, f.name
    assert components["checkpoint"].value == ""


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
    assert poll(None, None)[0] == poll("", None)[0] == "No job yet."  # an emptied id box is no job either
    keeping = job_poller(lambda job, reader: {"status": "running"}, str, lambda job, reader: (), 2, "", access, kept=1)
    assert keeping("new", None)[2:] == (None, {"__type__": "update"})  # the ONNX tab's inspection stays
    # The benchmark tab's: a sweep stopped part way shows the rows it finished, and the timer stops.

    def rendered(job: str, reader: str | None) -> tuple[str, str]:
        return f"{job} table", f"{job} chart"

    stopping = job_poller(lambda job, reader: {"status": states[job]}, lambda state: state["status"], rendered, 2, "",
                          access, stopped_too=True)  # fmt: skip
    text, timer, *outputs = stopping("gone", None)
    assert text == "cancelled" and not timer.active and outputs == ["gone table", "gone chart"]


def test_the_status_poller_says_a_job_that_is_not_there_and_stops() -> None:
    """A job id the store does not know (another's, or swept): the store's words as the status, and no more ticks
    (the error escaped every second, a red toast each time); the panes are emptied, so an earlier job's results do
    not stand under "no job" (the last `kept`, which other buttons fill, stay as they are)."""
    from engine.jobs.store import StoreError
    from ui.widgets import job_poller

    def status(job: str, reader: str | None) -> dict:
        raise StoreError(f"no job {job}")

    poll = job_poller(status, str, lambda job, reader: (), 2, "", SimpleNamespace(reader=lambda request: "o"), kept=1)
    text, timer, table, inspection = poll("deadbeef0000", None)
    assert text == "no job deadbeef0000" and not timer.active
    assert table is None and inspection == gr.update()


def test_first_in_line_behind_a_running_job_says_so_not_starting() -> None:
    from ui.jobs import _report

    said: list[str] = []
    queued = {"status": "queued", "device": "cpu", "ahead": 0, "running": 1}
    for status in (queued, {**queued, "ahead": 2}, {**queued, "ahead": 1}, {**queued, "running": 0}):
        _report(status, lambda fraction, text: said.append(text))
    assert said == ["queued on cpu: next, after 1 running job(s)", "queued on cpu: 2 job(s) ahead",
                    "queued on cpu: 1 job(s) ahead", "starting"]  # fmt: skip


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


def _stopping_job(monkeypatch, tmp_path: Path, status: str, reason: str) -> SimpleNamespace:
    """A lip-sync job (faked) that streams 4 s of video, then ends `status` with `reason`."""
    import ui.jobs
    from engine.core.hls import LiveStream
    from ui.jobs import JobEnded

    stream = LiveStream((tmp_path / "part-00000.ts",), (4.0,), False)

    def follow_live(jobs: object, job_id: str, *args: object) -> object:
        yield stream
        raise JobEnded(job_id, status, reason)

    def joined(seen: LiveStream) -> Path:
        (tmp_path / "so-far-1.mp4").write_bytes(b"mp4")
        return tmp_path / "so-far-1.mp4"

    monkeypatch.setattr(ui.jobs, "follow_live", follow_live)
    monkeypatch.setattr(ui.jobs, "joined_video", joined)
    return SimpleNamespace(
        settings=None, kind="lipsync", files=(), submit=lambda config, owner: SimpleNamespace(id="j1"),
        live=lambda job, owner: stream, status=lambda job, owner: {"id": job, "status": status, "error": reason},
    )  # fmt: skip


def _endpoints(jobs: SimpleNamespace) -> tuple:
    """(the tab's handler, the /t API's handler) for `jobs`, showing (video, summary, record)."""
    from ui.jobs import job_endpoints

    access = SimpleNamespace(server_files=lambda values, settings, request: values, owner=lambda r: "o",
                             reader=lambda r: "o")  # fmt: skip
    with gr.Blocks() as demo:
        tab = job_endpoints(LipSyncConfig, jobs, access, lambda report, say: (), [gr.Video(), gr.Markdown(), gr.JSON()],
                            "t", "t.", lambda seen: (f"{seen.duration:g} s", "so far", None),
                            lambda ended, say: (ended.video, ended.summary(say), ended.record))  # fmt: skip
    (api,) = [f.fn for f in demo.fns.values() if f.api_name == "t"]
    return tab, api


def test_a_failed_run_stays_in_the_tabs_panes_and_the_api_still_raises(monkeypatch, tmp_path: Path) -> None:
    """The reason was only in a toast that faded: the Result pane was left with a bare "Error" badge."""
    jobs = _stopping_job(monkeypatch, tmp_path, "failed", "no face found in blank_1.png; use a clear, frontal face")
    tab, api = _endpoints(jobs)
    with pytest.warns(UserWarning, match="job j1 failed: no face found"):  # the toast, outside a page
        *_, (video, summary, record) = tab({"face": "blank_1.png", "audio": "a.wav"}, lambda *a: None, None)
    assert summary.startswith("**✗ Failed** · job `j1` · no face found in blank\\_1.png; use a clear, frontal face")
    assert "The first 4.0 s it made before it stopped are above" in summary and Path(video).read_bytes() == b"mp4"
    assert record["status"] == "failed"
    shown = []
    with pytest.raises(gr.Error, match=r"job j1 failed: no face found in blank_1\.png"):  # /lipsync: an AppError
        for update in api(face="blank_1.png", audio="a.wav"):
            shown.append(update)
    assert shown[0] == ("4 s", "so far", None)  # the video so far, then it stops promising the rest
    assert len(shown) == 2 and "✗ Failed" in shown[1][1] and "the rest follows" not in shown[1][1]


def test_a_cancelled_run_is_shown_as_cancelled_with_the_video_it_made(monkeypatch, tmp_path: Path) -> None:
    """A cancel was a red "Error" over the Result pane, and the video made before it was not shown."""
    jobs = _stopping_job(monkeypatch, tmp_path, "cancelled", "cancelled by its owner while it ran")
    tab, _ = _endpoints(jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no toast: the Cancel button already said it
        updates = list(tab({"face": "f.jpg", "audio": "a.wav"}, lambda *a: None, None))
    video, summary, record = updates[-1]
    assert record["status"] == "cancelled"
    assert summary.startswith("**Cancelled** · job `j1` · cancelled by its owner while it ran")
    assert "✗" not in summary and "4.0 s" in summary and Path(video).read_bytes() == b"mp4"


def test_the_video_so_far_is_shown_each_time_it_doubles_and_a_preview_that_fails_costs_nothing(
    monkeypatch, tmp_path: Path
) -> None:
    """Each preview joins every segment so far into one MP4: shown at every new second, a long job's previews cost
    as much as the job. And a preview that cannot be made (a segment cut off mid-write) must not lose the result."""
    import ui.jobs
    from engine.core.hls import LiveStream

    def stream(seconds: float, ended: bool = False) -> LiveStream:
        return LiveStream((tmp_path / "part-00000.ts",), (seconds,), ended)

    def follow_live(jobs: object, job_id: str, *args: object) -> object:
        yield from (stream(s) for s in (1.0, 1.5, 2.0, 3.0, 4.5))
        yield stream(9.0, ended=True)  # the whole video, doubled again: the result shows it, not a preview
        yield {"video": "done.mp4"}

    def live(seen: LiveStream) -> tuple:
        if seen.duration == 1.0:
            raise OSError("segment cut off mid-write")
        return (f"{seen.duration:g} s", "so far", None)

    monkeypatch.setattr(ui.jobs, "follow_live", follow_live)
    jobs = SimpleNamespace(
        settings=None, kind="lipsync", files=(), submit=lambda config, owner: SimpleNamespace(id="j1")
    )
    access = SimpleNamespace(server_files=lambda values, settings, request: values, owner=lambda r: "o",
                             reader=lambda r: "o")  # fmt: skip
    with gr.Blocks():
        outputs = [gr.Video(), gr.Markdown(), gr.JSON()]
        tab = ui.jobs.job_endpoints(LipSyncConfig, jobs, access, lambda report, say: (report["video"], "done", None),
                                    outputs, "t", "t.", live, lambda ended, say: ())  # fmt: skip
    updates = list(tab({"face": "f.jpg", "audio": "a.wav"}, lambda *a: None, None))
    assert [u[0] for u in updates] == ["2 s", "4.5 s", "done.mp4"]


def test_earlier_runs_list_when_opened_and_a_clicked_row_gives_its_id() -> None:
    from types import SimpleNamespace

    from ui.jobs import run_panel

    jobs = SimpleNamespace(history=lambda reader, limit: [], files=(), kind="lipsync")
    access = SimpleNamespace(reader=lambda request: "o")
    with gr.Blocks() as demo:
        outputs = [gr.Video()]
        run_panel(jobs, access, lambda report: (), lambda ended: (), outputs, gr.Button())
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
        run_panel(jobs, access, lambda report: (report["video"],), lambda ended: (), outputs, gr.Button())
    (reopen,) = [f for f in demo.fns.values() if f.outputs == outputs]
    progress = []
    shown = reopen.fn("1a855ac6d4db", None, lambda part, desc: progress.append((part, desc)))
    assert shown == ("1a855ac6d4db.mp4",) and seen == [("1a855ac6d4db", "o")] * 3
    assert progress == [(0.0, "queued on cpu: 1 job(s) ahead"), (0.5, "frame 5/10")]


def _streamed(out: Path, frames: int) -> tuple[float, int]:
    """A run's live stream beside `out`, cut off as a stopped worker leaves it (no MP4): its seconds and frames."""
    from engine.core.hls import read_stream, stream_folder
    from engine.core.media import VideoWriter, read_frames

    writer = VideoWriter(out, 25, 64, 64, stream_to=stream_folder(out), codec="libx264")
    for i in range(frames):
        writer.write(np.full((64, 64, 3), i, np.uint8))
    writer.abort()
    stream = read_stream(stream_folder(out))
    return stream.duration, sum(len(list(read_frames(part))) for part in stream.segments)


@contextlib.contextmanager
def _job_tabs(tmp_path: Path) -> Iterator[tuple[Any, Any, gr.Blocks, dict[str, Any]]]:
    """(settings, store, blocks, each tab's Open handler by kind): the Lip-sync and Portrait tabs over a store whose
    jobs a test writes by hand (its broker never starts)."""
    from engine.core.settings import load_settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import CPU, JobStore
    from engine.lipsync.jobs import LipSyncJobs
    from engine.portrait.jobs import PortraitJobs
    from ui.jobs import Access
    from ui.lipsync import build_lipsync_tab
    from ui.portrait import build_portrait_tab

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    settings.ensure_dirs()
    with JobStore(settings.db_path, settings.data_dir / "blobs") as store, gr.Blocks() as demo:
        broker = Broker(store, {}, {CPU: 1})
        build_lipsync_tab(settings, LipSyncJobs(broker, settings), Access())
        build_portrait_tab(settings, PortraitJobs(broker, settings), Access())
        reopens = {f.concurrency_id.removesuffix("_reopen"): f for f in demo.fns.values() if f.name == "reopen"}
        assert sorted(reopens) == ["lipsync", "portrait"]
        yield settings, store, demo, reopens


def test_reopening_a_stopped_or_unknown_job_shows_that_job_in_every_pane_of_both_tabs(tmp_path: Path) -> None:
    """Opening a cancelled job, or an id of none, left the last job's video, summary, chart and strip under a red
    "Error": as if they were that job's. And on a phone the result is below the form: Lip-sync, Animate and Open
    bring it into view."""
    from engine.core.media import read_frames
    from engine.jobs.kinds import output_path
    from engine.jobs.store import CPU
    from ui.jobs import LOCAL

    with _job_tabs(tmp_path) as (settings, store, demo, reopens):
        for kind, result_id in (("lipsync", "lipsync-result"), ("portrait", "portrait-result")):
            reopen = reopens[kind]
            job = store.submit(kind, {"files": {}, "options": {}}, CPU, owner=LOCAL)
            seconds, frames = _streamed(output_path(settings, job), frames=50)  # streamed before it stopped
            store.cancel_queued(job.id, "cancelled by its owner while it ran")
            video, summary, *rest, record = reopen.fn(job.id, None, lambda *a, **k: None)
            why, made = "cancelled by its owner while it ran", f"The first {seconds:.1f} s it made before it stopped"
            assert seconds > 1 and summary == f"**Cancelled** · job `{job.id}` · {why}\n\n{made} are above."
            assert len(list(read_frames(video))) == frames  # the segments, joined
            assert record["status"] == "cancelled" and record["id"] == job.id
            panes = {type(o).__name__: v for o, v in zip(reopen.outputs[2:-1], rest, strict=True)}
            assert panes.pop("Plot") == {"value": None, "visible": False, "__type__": "update"}  # the chart hidden
            assert all(v is None for v in panes.values()), panes  # the strip and template emptied
            video, summary, *_, record = reopen.fn("deadbeef0000", None, lambda *a, **k: None)
            assert (video, summary, record) == (None, "✗ no job deadbeef0000", None)
            with pytest.warns(UserWarning, match="Give a job id"):  # nothing typed: the panes stay as they were
                unchanged = reopen.fn("  ", None, lambda *a, **k: None)
            assert all(u == {"__type__": "update"} for u in unchanged)
            scrolls = [f.js for f in demo.fns.values() if f.fn is None and f.js and result_id in f.js]
            assert len(scrolls) == 2, scrolls  # the tab's button and Open


def test_the_video_so_far_leaves_the_tabs_other_panes_as_they_are(monkeypatch, tmp_path: Path) -> None:
    """While a job streams, each preview replaces the video and its line only: the chart, strip, template and JSON
    pane keep what they show until the result comes (emptying them on every preview made the page flicker)."""
    import ui.lipsync
    import ui.portrait
    from engine.core.hls import read_stream, stream_folder
    from ui.jobs import job_endpoints

    previews: dict[str, tuple[list[Any], Any]] = {}

    def recorded(cls, jobs, access, render, outputs, name, about, live, ended, terms) -> Any:
        previews[name] = (outputs, live)
        return job_endpoints(cls, jobs, access, render, outputs, name, about, live, ended, terms)

    for module in (ui.lipsync, ui.portrait):
        monkeypatch.setattr(module, "job_endpoints", recorded)
    out = tmp_path / "streamed.mp4"
    seconds, _ = _streamed(out, frames=50)
    with _job_tabs(tmp_path):
        assert sorted(previews) == ["lipsync", "portrait"]
        for name, (outputs, live) in previews.items():
            video, line, *rest = live(read_stream(stream_folder(out)))
            assert len(rest) == len(outputs) - 2 and Path(video).is_file(), name
            assert line == f"⏳ the first {seconds:.1f} s, made so far; the rest follows"
            assert all(u == {"__type__": "update"} for u in rest), (name, rest)


def test_a_finished_jobs_report_in_the_tabs_json_pane_names_its_files_not_the_servers_folders(tmp_path: Path) -> None:
    """The JSON pane under a result is what its owner reads and copies: each output by its file's name, as the API's
    /job_result gives it, never the place on the server (which the visitor cannot reach and which shows its folders)."""
    from engine.core.results import RunResult
    from engine.jobs.kinds import output_path
    from engine.jobs.store import CPU
    from ui.jobs import LOCAL

    with _job_tabs(tmp_path) as (settings, store, _, reopens):
        metrics = {
            "lipsync": {"engine_label": "baseline", "frames": 25, "fps": 25.0, "batch_size": 16, "encoder": "libx264",
                        "detector": "haar", "faces_missed": 0, "pipeline_seconds": 1.0, "frames_per_second": 25.0},
            "portrait": {"engine": "baseline", "backend": "torch", "frames": 25, "fps": 25.0, "frames_per_second": 25.0,
                         "encoder": "libx264", "compiled": False, "cache": {}},
        }  # fmt: skip
        for kind, reopen in reopens.items():
            job = store.submit(kind, {"files": {}, "options": {}}, CPU, owner=LOCAL)
            assert store.claim_next(CPU).id == job.id
            video = output_path(settings, job)
            video.parent.mkdir(parents=True, exist_ok=True)
            video.write_bytes(b"not played here")
            report = RunResult(device="cpu", outputs={"video": str(video)}, metrics=metrics[kind])
            store.finish(job.id, report.to_dict())
            *_, record = reopen.fn(job.id, None, lambda *a, **k: None)
            assert record["outputs"] == {"video": video.name}, kind
            assert str(settings.data_dir) not in repr(record), kind


def test_a_request_refused_before_its_job_exists_stays_in_the_tabs_panes(monkeypatch, tmp_path: Path) -> None:
    """Bad input was a toast that faded over a bare "Error" badge, and the panes kept an earlier job's result."""
    jobs = _stopping_job(monkeypatch, tmp_path, "failed", "never reached")
    tab, api = _endpoints(jobs)
    with pytest.warns(UserWarning, match="batch size 0 is outside"):  # the toast, outside a page
        (video, summary, record), *more = tab({"face": "f.jpg", "audio": "a.wav", "batch_size": 0}, lambda *a: 0, None)
    assert not more and video is None and record is None  # nothing of an earlier job is left showing
    assert summary.startswith("✗ batch size 0 is outside")
    with pytest.raises(gr.Error, match="batch size 0 is outside"):  # /t still raises it: scripts read the error
        list(api(face="f.jpg", audio="a.wav", batch_size=0))


def test_an_api_handler_takes_the_configs_fields_and_says_its_errors_in_words() -> None:
    """What gradio_client and the API page read from a handler: a required field has no default, an optional one
    a type that admits None; a script's call without progress still runs, and hands on only the fields given; our
    refusals come back as their message and a bug as an internal error id, from a plain handler as from a streaming
    one; a hidden number reaches the config as sent, whose check names the field (not Gradio's rounding)."""
    import inspect
    import re
    import typing

    from engine.core.errors import InputError

    seen: list[dict] = []
    callers: list[object] = []

    def run(values: dict, progress, request) -> str:
        progress(0.5, "half way")
        seen.append(values)
        callers.append(request)
        if values.get("batch_size") == 3:
            raise InputError("three is refused")
        if values.get("batch_size") == 4:
            raise KeyError("a bug")
        return "ok"

    handler = form_handler(LipSyncConfig, {f.name: None for f in fields(LipSyncConfig)}, run, "the test")
    parameters = inspect.signature(handler).parameters
    for f in fields(LipSyncConfig):
        assert (parameters[f.name].default is inspect.Parameter.empty) == f.required, f.name
        if f.optional or f.option.file:
            assert type(None) in typing.get_args(parameters[f.name].annotation), f.name
    assert handler(face="f.jpg", audio="a.wav") == "ok" and seen == [{"face": "f.jpg", "audio": "a.wav"}]
    handler(face="f.jpg", audio="a.wav", request="the caller")  # Gradio's: whose job it is, not a field
    assert seen[-1] == {"face": "f.jpg", "audio": "a.wav"} and callers == [None, "the caller"]
    said: list[tuple] = []
    handler(face="f.jpg", audio="a.wav", progress=lambda fraction, desc=None: said.append((fraction, desc)))
    assert said == [(0.5, "half way")]  # Gradio's progress bar shows the words too
    with pytest.raises(gr.Error) as refused:
        handler(face="f.jpg", audio="a.wav", batch_size=3)
    assert refused.value.message == "three is refused"
    with pytest.raises(gr.Error) as bug:
        handler(face="f.jpg", audio="a.wav", batch_size=4)
    assert re.fullmatch(r"internal error in the test \(KeyError; id [0-9a-f]{8} in the server log\)", bug.value.message)
    with gr.Blocks():
        batch_size = hidden_inputs(LipSyncConfig)["batch_size"]
    assert batch_size.preprocess("abc") == "abc"


def test_form_terms_name_a_forms_own_flags_by_its_labels_and_leave_the_rest() -> None:
    """The engine's messages are the CLI's (`--fps`); a web form shows its label instead. Upstream's flags, a command
    to copy (in backticks, escaped or not as Markdown text), a flag the form lacks and a name that only ends in one
    stay as written."""
    from ui.forms import FormTerms

    with gr.Blocks():
        terms = FormTerms.of({
            "fps": gr.Number(label="Photo: frames per second (a video keeps its own)"), "smooth": gr.Checkbox(
                label="Smooth face boxes"), "detect_scale": gr.Number(label="Detection scale"), "face": object(),
        })  # fmt: skip
    assert terms.labels == {"fps": "Photo: frames per second", "smooth": "Smooth face boxes",
                            "detect_scale": "Detection scale"}  # fmt: skip
    assert terms("--fps applies to a still face; with --no-smooth, try --detect-scale 1") == (
        "“Photo: frames per second” applies to a still face; with “Smooth face boxes” off, try “Detection scale” 1"
    )
    kept = "upstream's --fps; `avatarbench lipsync --fps 25`; --json; --fps-cap; take--fps.mp4; (--fps)"
    assert terms(kept) == kept.replace("(--fps)", "(“Photo: frames per second”)")
    assert terms(r"in \`a --fps\` --fps") == r"in \`a “Photo: frames per second”\` “Photo: frames per second”"
    assert FormTerms({})("--fps") == "--fps"
    with gr.Blocks():  # only a label's closing note goes; a component with no words is no term
        noted = FormTerms.of(
            {"scale": gr.Number(label="Crop (pixels) scale (empty: auto)"), "face": gr.Image(label="")}
        )
    assert noted.labels == {"scale": "Crop (pixels) scale"} and noted("--face") == "--face"


def _live_tab(kind: str, jobs: object, tmp_path: Path) -> tuple[Any, Any]:
    """The real Lip-sync (or Portrait) tab's Run handler, called with only its files and the defaults, and the tab's
    /kind API handler."""
    import inspect

    import ui.lipsync
    import ui.portrait
    from ui.jobs import Access

    with gr.Blocks() as demo:
        if kind == "lipsync":
            ui.lipsync.build_lipsync_tab(jobs.settings, jobs, Access())
        else:
            ui.portrait.build_portrait_tab(jobs.settings, jobs, Access())
    api = next(f.fn for f in demo.fns.values() if f.api_name == kind)
    run = next(f.fn for f in demo.fns.values() if "face__photo" in inspect.signature(f.fn).parameters
               or "driving__video" in inspect.signature(f.fn).parameters)  # fmt: skip
    given = {"face__photo": str(ASSETS / "face.jpg"), "audio__speech": str(ASSETS / "speech.wav"),
             "source": str(ASSETS / "face.jpg"), "driving__video": str(ASSETS / "driving.mp4")}  # fmt: skip
    parameters = inspect.signature(run).parameters
    values = {name: given.get(name, p.default if p.default is not inspect.Parameter.empty else None)
              for name, p in parameters.items() if name not in ("progress", "request")}  # fmt: skip

    def tab() -> tuple[str, list[str]]:
        """The summary pane as the run left it, and the toasts on the way."""
        with warnings.catch_warnings(record=True) as toasts:
            warnings.simplefilter("always")
            shown = list(run(**values, progress=None))
        return shown[-1][1], [str(t.message) for t in toasts]

    return tab, api


def test_the_tabs_say_the_engines_flags_by_their_labels_and_the_api_by_its_parameters(
    monkeypatch, tmp_path: Path
) -> None:
    """A web user was told "--fps applies to a still face" and "a fixed --box changed --detector": flags of a command
    line they never saw. The tab's refusal, toast, failure and result summary name its fields as it labels them;
    the API's refusal and result summary name its parameters."""
    import ui.jobs
    from engine.core.errors import InputError
    from engine.core.results import RunResult
    from engine.core.settings import load_settings

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    refused = "a fixed --box is used as it is: --detector (for detected boxes) changed nothing; see `--box`"

    def submit(config: object, owner: object) -> object:
        raise InputError(refused)

    jobs = SimpleNamespace(settings=settings, kind="lipsync", files=(), submit=submit)
    tab, api = _live_tab("lipsync", jobs, tmp_path)
    summary, toasts = tab()
    words = "a fixed “Fixed face box X1, Y1, X2, Y2” is used as it is: “Face detector” (for detected boxes) changed"
    assert summary.startswith(f"✗ {words}") and summary.endswith("see `--box`") and toasts[0].startswith(words)
    with pytest.raises(gr.Error) as by_api:
        list(api(face=str(ASSETS / "face.jpg"), audio=str(ASSETS / "speech.wav")))
    assert by_api.value.message.startswith("a fixed “box” is used as it is: “detector” (for detected boxes)")

    result = RunResult(device="cpu", device_name="CPU", precision="fp32", metrics={
        "engine_label": "Baseline", "frames": 1, "fps": 25.0, "batch_size": 1, "encoder": "libx264",
        "detector": "haar", "faces_missed": 0, "pipeline_seconds": 0.5, "frames_per_second": 2.0})  # fmt: skip
    result.warn("--static holds a video's first frame: a photo is held still already")

    def follow_live(jobs: object, job_id: str, *args: object) -> object:
        yield result.to_dict()

    monkeypatch.setattr(ui.jobs, "follow_live", follow_live)
    jobs.submit = lambda config, owner: SimpleNamespace(id="j1")
    summary, toasts = tab()
    assert "- ⚠️ “Video: its first frame only, held still” holds a video's first frame" in summary
    by_api = list(api(face=str(ASSETS / "face.jpg"), audio=str(ASSETS / "speech.wav")))[-1][1]
    assert "- ⚠️ “static” holds a video's first frame" in by_api  # the API's result names its parameter

    def failing(jobs: object, job_id: str, *args: object) -> object:
        raise ui.jobs.JobEnded("j1", "failed", "no face: try --detect-scale 1")
        yield

    monkeypatch.setattr(ui.jobs, "follow_live", failing)
    jobs.live, jobs.status = (lambda job, owner: None), (lambda job, owner: {"id": job, "status": "failed"})
    summary, toasts = tab()
    assert summary.endswith("no face: try “Detection scale” 1") and toasts == [
        "job j1 failed: no face: try “Detection scale” 1"
    ]


def test_the_portrait_tab_says_the_engines_flags_by_its_labels(tmp_path: Path) -> None:
    """The portrait tab's refusal: `--no-crop` is its "Crop around the face" box unticked."""
    from engine.core.errors import InputError
    from engine.core.settings import load_settings

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})

    def submit(config: object, owner: object) -> object:
        raise InputError("with --no-crop the source is not cropped: --scale changes nothing")

    jobs = SimpleNamespace(settings=settings, kind="portrait", files=(), submit=submit)
    tab, _ = _live_tab("portrait", jobs, tmp_path)
    summary, _ = tab()
    assert summary == "✗ with “Crop around the face” off the source is not cropped: “Source crop scale” changes nothing"


def test_the_status_poller_reads_and_renders_only_the_requesters_job() -> None:
    """The timer sends back the job id the page holds, which a hand-made request can name: the status and the
    result it shows are read as the requester, so another's job is "no job"."""
    from ui.widgets import job_poller

    asked: list[tuple[str, str, str | None]] = []

    def status(job: str, reader: str | None) -> dict:
        asked.append(("status", job, reader))
        return {"status": "done"}

    def render(job: str, reader: str | None) -> tuple:
        asked.append(("render", job, reader))
        return ("table",)

    poll = job_poller(status, str, render, 1, "", SimpleNamespace(reader=lambda request: f"{request}'s"))
    assert poll("j1", "bob")[2:] == ("table",)
    assert asked == [("status", "j1", "bob's"), ("render", "j1", "bob's")]


def test_a_stopped_jobs_video_and_record_are_read_as_its_reader() -> None:
    """The panes of a failed or cancelled job show its video so far and its record: both read as the requester."""
    from engine.core.hls import LiveStream
    from ui.jobs import JobEnded, stopped

    asked: list[tuple[str, str | None]] = []
    jobs = SimpleNamespace(
        live=lambda job, owner: asked.append(("live", owner)) or LiveStream((), (), True),
        status=lambda job, owner: asked.append(("status", owner)) or {"status": "failed"},
    )
    shown = stopped(jobs, JobEnded("j1", "failed", None), "bob")
    assert asked == [("live", "bob"), ("status", "bob")]
    assert (shown.video, shown.record, shown.reason) == (None, {"status": "failed"}, "no reason recorded")


def test_each_tabs_run_button_streams_its_job_as_its_visitor_and_cancel_cancels(tmp_path: Path) -> None:
    """The buttons under the inputs: "Lip-sync" (or "Animate") runs the tab's job and Cancel cancels, never the other
    way round. The run handler, rebuilt over the media tabs, must stay a generator (Gradio streams the video so far
    only from one) and keep its gr.Request (Gradio hands the visitor only to a parameter annotated so: without it,
    every visitor's job would be one owner's). The engine picker starts at the config's default, each choice named."""
    import inspect

    from gradio.helpers import special_args

    from ui.forms import default

    with _job_tabs(tmp_path) as (_, _, demo, _):

        def triggered_by(label: str) -> list[Any]:
            buttons = {i for i, b in demo.blocks.items() if isinstance(b, gr.Button) and b.value == label}
            return [f for f in demo.fns.values() if f.fn and any(t[0] in buttons for t in f.targets)]

        for label, field, cls in (("Lip-sync", "face__photo", LipSyncConfig), ("Animate", "driving__video",
                                                                                PortraitConfig)):  # fmt: skip
            (run,) = [f for f in triggered_by(label) if field in inspect.signature(f.fn).parameters]
            assert run.types_generator, label
            params = list(inspect.signature(run.fn).parameters)
            filled, progress_at, *_ = special_args(run.fn, [None] * (len(params) - 2), request="the visitor")
            assert filled[params.index("request")] == "the visitor" and progress_at == params.index("progress")
            (engine,) = [b for b in run.inputs if isinstance(b, gr.Dropdown) and b.label == "Engine"]
            assert engine.value == default(cls, "engine") and engine.value in [value for _, value in engine.choices]
            assert all(shown == f"Engine: {value}" for shown, value in engine.choices)
        assert sorted(f.fn.__name__ for f in triggered_by("Cancel")) == ["cancel_mine", "cancel_mine"]


def test_the_media_tabs_wiring_stays_off_the_api_page(tmp_path: Path) -> None:
    """Setting one input clears the others in the page: those events are no API of ours, which lists the jobs only."""
    with _job_tabs(tmp_path) as (_, _, demo, _):
        pass
    shown = demo.get_api_info()
    assert sorted(shown["named_endpoints"]) == ["/lipsync", "/lipsync_submit", "/portrait", "/portrait_submit"]
    assert not shown.get("unnamed_endpoints")


def test_a_reloaded_module_leaves_every_other_image_to_gradio() -> None:
    """Gradio's reload mode runs the module again: the patch must wrap Gradio's own preprocess, not itself (an
    endless recursion for every image but ours)."""
    import importlib

    import ui.media_inputs

    importlib.reload(ui.media_inputs)
    with gr.Blocks():
        plain = gr.Image(type="filepath")
    with pytest.raises(Exception, match="cannot identify image file"):
        plain.preprocess(gr.FileData(path=str(ASSETS / "speech.wav"), orig_name="face.png"))


def test_a_segment_written_after_its_job_stopped_is_still_streamed() -> None:
    """On ZeroGPU a cancelled job's GPU process runs on until it sees the cancel (up to STOP_CHECK_S): a segment it
    writes after the poll that saw the job end is read once more before the end is reported (/job_stream sends it)."""
    from engine.core.hls import LiveStream
    from ui.jobs import JobEnded, follow_live

    parts = tuple(Path(f"part-{i:05d}.ts") for i in range(2))
    in_playlist = iter([1, 2])  # the second read finds the segment written after the cancel
    jobs = SimpleNamespace(
        status=lambda job, owner: {"status": "cancelled", "error": "cancelled by its owner while it ran"},
        live=lambda job, owner: LiveStream(parts[: (n := next(in_playlist))], (1.0,) * n, False),
    )
    streamed = []
    with pytest.raises(JobEnded, match="job j1 cancelled"):
        for stream in follow_live(jobs, "j1", "o", lambda fraction, label: None, poll_s=0):
            streamed.append(len(stream.segments))
    assert streamed == [1, 2]


def test_a_job_that_fails_before_any_video_gives_the_api_its_error_only(monkeypatch, tmp_path: Path) -> None:
    """/lipsync's outputs are what the job made: after a video so far, a last update stops promising the rest; with
    none shown there is nothing to take back, and a "✗ Failed" pane before the error would read as a result."""
    import ui.jobs

    jobs = _stopping_job(monkeypatch, tmp_path, "failed", "no face found in blank_1.png")

    def failing(jobs: object, job_id: str, *args: object) -> object:
        raise ui.jobs.JobEnded(job_id, "failed", "no face found in blank_1.png")
        yield

    monkeypatch.setattr(ui.jobs, "follow_live", failing)
    _, api = _endpoints(jobs)
    shown = []
    with pytest.raises(gr.Error, match=r"job j1 failed: no face found in blank_1\.png"):
        for update in api(face="blank_1.png", audio="a.wav"):
            shown.append(update)
    assert shown == []


def test_the_option_boxes_start_at_what_a_run_without_options_does(tmp_path: Path) -> None:
    """Before a visitor changes anything the form shows the defaults: an empty number box says what empty means
    ("auto"), never "None" (which the config refuses); a slider spans its field's range at its default; a weights
    picker starts on its empty choice (the configured file)."""
    from ui.forms import default, field

    with _job_tabs(tmp_path) as (_, _, demo, _):
        shown = {b.label: b for b in demo.blocks.values() if isinstance(getattr(b, "label", None), str)}
    batch_size = shown["Batch size (empty: auto)"]
    assert (batch_size.value, batch_size.placeholder) == ("", "auto")
    for label, name in (("Audio offset (frames; + if lips are late)", "audio_offset"), ("Detection scale",
                                                                                        "detect_scale")):  # fmt: skip
        slider, option = shown[label], field(LipSyncConfig, name).option
        assert (slider.minimum, slider.maximum, slider.value) == (option.low, option.high, default(LipSyncConfig, name))
    picker = shown["Wav2Lip checkpoint (empty: the configured one)"]
    assert picker.value == "" and picker.choices[0] == ("", "")


def test_each_preview_joins_every_segment_so_far_not_an_earlier_shorter_join(tmp_path: Path) -> None:
    """A preview's MP4 is kept by its count of segments (a reopened stopped job shows the one already made): a later
    preview, with more segments, must not be handed the earlier, shorter video."""
    from engine.core.hls import LiveStream, read_stream, stream_folder
    from engine.core.media import read_frames
    from ui.widgets import joined_video

    out = tmp_path / "streamed.mp4"
    _, frames = _streamed(out, frames=75)
    stream = read_stream(stream_folder(out))
    first = LiveStream(stream.segments[:1], stream.seconds[:1], False)
    early = len(list(read_frames(joined_video(first))))
    assert 0 < early < frames == len(list(read_frames(joined_video(stream))))


def test_a_tabs_refusal_names_its_fields_by_their_labels_and_its_api_stays_hidden(tmp_path: Path) -> None:
    """A refusal escaping a tab's handler names the options as the form labels them (unless told other terms); the
    API's own inputs, one per config field, are never shown on the page."""
    from engine.core.errors import InputError

    def run(values: dict, progress, request) -> None:
        raise InputError("try --batch-size 4")

    with gr.Blocks():
        handler = form_handler(LipSyncConfig, {"batch_size": gr.Textbox(label="Batch size (empty: auto)")}, run, "t")
    with pytest.raises(gr.Error, match="try “Batch size” 4"):
        handler(batch_size="")
    with _job_tabs(tmp_path) as (_, _, demo, _):
        (api,) = [f for f in demo.fns.values() if f.api_name == "lipsync"]

    def hidden(block: Any) -> bool:
        while block is not None and getattr(block, "visible", True) is not False:
            block = block.parent
        return block is not None

    assert len(api.inputs) == len(fields(LipSyncConfig)) and all(hidden(b) for b in api.inputs)
