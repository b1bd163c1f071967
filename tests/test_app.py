"""End to end: app.py in a subprocess, driven through gradio_client and a real headless Chromium."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import RunningApp, chromium_path, stop_app

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(running_app: RunningApp):
    from gradio_client import Client

    return Client(running_app.url, verbose=False)


def test_api_page_lists_the_endpoints(client) -> None:
    api = client.view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    assert {"/doctor", "/telemetry", "/device", "/lipsync"} <= names
    assert {"/onnx_submit", "/onnx_status", "/onnx_queue", "/onnx_result", "/onnx_inspect"} <= names
    assert {"/bench_submit", "/bench_status", "/bench_result", "/bench_import", "/plan_llm", "/cost"} <= names
    assert {"/portrait", "/plan_network"} <= names


# Each endpoint's outputs by the names the README's snippets give them: the API page names an output by its
# component's label, and one without a label "value_86".
OUTPUT_NAMES = {
    "/lipsync": ["Result", "summary", "chart", "report"],
    "/portrait": ["Result", "summary", "Driving (top) and result (bottom)", "chart", "Motion template", "report"],
    "/lipsync_submit": ["job"],
    "/portrait_submit": ["job"],
    "/job_stream": ["segments", "status"],
    "/job_files": ["files"],
    "/onnx_submit": ["job"],
    "/onnx_inspect": ["description", "inputs and outputs"],
    "/plan_network": ["plan"],
}


def test_the_api_page_names_each_output(client) -> None:
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint, names in OUTPUT_NAMES.items():
        assert [r["label"] for r in api[endpoint]["returns"]] == names, endpoint


CAPABILITIES = {
    "/lipsync": ("engine.lipsync.config", "LipSyncConfig"),
    "/portrait": ("engine.portrait.config", "PortraitConfig"),
    "/onnx_submit": ("engine.onnx.config", "EvalConfig"),
    "/onnx_inspect": ("engine.onnx.config", "InspectConfig"),
    "/bench_submit": ("engine.bench.config", "SweepRequest"),
    "/plan_llm": ("engine.bench.config", "LlmRequest"),
    "/plan_network": ("engine.bench.config", "NetworkPlanConfig"),
    "/cost": ("engine.bench.config", "CostConfig"),
}


def test_every_api_parameter_is_its_configs_field_with_the_same_default(client) -> None:
    """The API page's parameters are the config's fields, in order, with the CLI's defaults; every optional one
    has a default, so a call with only the required values works."""
    import importlib

    from engine.core.options import fields

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint, (module, name) in CAPABILITIES.items():
        cls = getattr(importlib.import_module(module), name)
        params = api[endpoint]["parameters"]
        assert [p["parameter_name"] for p in params] == [f.name for f in fields(cls)], endpoint
        for p, f in zip(params, fields(cls), strict=True):
            assert p["parameter_has_default"] == (not f.required), (endpoint, f.name)
            if not f.required:
                shown = f.text_of(f.default)
                assert p["parameter_default"] in ((shown,) if shown is not None else (None, "")), (endpoint, f.name)


def test_doctor_endpoint_reports_every_check_with_a_fix(client) -> None:
    report = client.predict(fresh=True, api_name="/doctor")
    names = [c["name"] for c in report["checks"]]
    for expected in (
        "python",
        "pytorch",
        "nvidia-driver",
        "device",
        "onnxruntime-packages",
        "onnxruntime-cuda",
        "onnxruntime-tensorrt",
        "video-encoders",
        "disk",
        "weights",
        "settings",
    ):
        assert expected in names
    assert report["status"] in ("ok", "warning", "problem")
    for check in report["checks"]:
        assert check["status"] in ("ok", "info", "warning", "problem")
        assert check["fix"].strip()
        assert check["found"].strip()


def test_telemetry_endpoint_returns_live_host_figures(client) -> None:
    import psutil

    first = client.predict(history_seconds=30, api_name="/telemetry")
    snap = first["snapshot"]
    assert snap["host"]["ram_total_bytes"] == psutil.virtual_memory().total
    assert snap["host"]["process_rss_bytes"] > 10 * 2**20
    assert "Host: CPU" in first["table"]
    if not snap["gpus"]:
        assert snap["gpu_status"].startswith("no NVIDIA GPU visible (")
    time.sleep(1.2)
    second = client.predict(history_seconds=30, api_name="/telemetry")
    assert second["snapshot"]["timestamp"] > snap["timestamp"]
    assert len(second["history"]) >= 2
    from gradio_client.exceptions import AppError

    for odd in ("x", None, -1, True):  # they were TypeErrors in the server, "an exception" in the client
        with pytest.raises(AppError, match=r"history_seconds must be a number of seconds in 0\.\.86400"):
            client.predict(history_seconds=odd, api_name="/telemetry")
    with pytest.raises(AppError, match="fresh must be true or false, got 'x'"):
        client.predict(fresh="x", api_name="/doctor")


def test_device_endpoint(client) -> None:
    info = client.predict(api_name="/device")
    assert info["device"].startswith(("cpu", "cuda"))
    assert "fp32" in info["capabilities"]["precisions"]


ASSETS = Path(__file__).resolve().parent.parent / "assets"
BAD_LIPSYNC_MESSAGE = "batch size 0 is outside 1..4096; pads: give 4 whole numbers, e.g. 0,10,0,0"


def _video_path(video: dict | str) -> Path:
    return Path(video["video"] if isinstance(video, dict) else video)


def test_lipsync_endpoint_makes_a_video_from_only_its_files(client, running_app: RunningApp) -> None:
    import urllib.error
    import urllib.request

    from gradio_client import handle_file

    video, summary, _chart, details = client.predict(
        face=handle_file(str(ASSETS / "face.jpg")), audio=handle_file(str(ASSETS / "speech.wav")), api_name="/lipsync"
    )
    path = _video_path(video)
    assert path.exists() and path.stat().st_size > 10_000
    assert "not Wav2Lip" in summary and details["metrics"]["frames"] > 100
    # The result names its files and inputs, never their places on the server (it showed the server's folders, and
    # the worker's staging folder, gone once the job ended).
    name = details["outputs"]["video"]
    assert "/" not in name and details["config"]["face"] == "face.jpg" and details["config"]["audio"] == "speech.wav"
    # the file in the outputs folder, named by the job's id, is not served to whoever names it: only its owner's
    # copy, through Gradio's cache, is
    stored = running_app.log_path.parent / "outputs" / name
    assert stored.is_file()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{running_app.url}/gradio_api/file={stored}", timeout=30)
    assert refused.value.code in (403, 404)


def test_a_streaming_lipsync_shows_its_video_so_far_and_its_segments_reach_only_its_owner(
    client, running_app: RunningApp
) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from engine.core.media import read_frames

    files = dict(face=handle_file(str(ASSETS / "face.jpg")), audio=handle_file(str(ASSETS / "speech.wav")))
    live = [d for d in client.config["dependencies"] if d["api_name"] in ("lipsync", "job_stream")]
    assert len(live) == 2 and all(d["types"]["generator"] for d in live)
    updates = list(client.submit(**files, engine="baseline", stream=True, api_name="/lipsync"))
    final_video, _summary, _chart, details = updates[-1]
    assert details["config"]["stream"] is True and _video_path(final_video).stat().st_size > 10_000
    for video, summary, *_ in updates[:-1]:  # the video so far: a playable MP4, said to be the first seconds
        assert "made so far" in summary and _video_path(video).stat().st_size > 0

    job = client.predict(**files, engine="baseline", stream=True, api_name="/lipsync_submit")
    with pytest.raises(AppError, match=f"no job {job['job_id']}"):
        Client(running_app.url, verbose=False).predict(job["job_id"], api_name="/job_stream")
    *streamed, (last_files, final) = list(client.submit(job["job_id"], api_name="/job_stream"))
    segments = [path for files_now, _status in streamed for path in files_now]
    assert last_files == [] and final["status"] == "done" and segments
    frames = [frame for path in segments for frame in read_frames(path)]
    (whole_file,) = client.predict(job["job_id"], api_name="/job_files")  # the finished video, downloaded
    assert Path(whole_file).name == final["report"]["outputs"]["video"] == f"lipsync-{job['job_id']}.mp4"
    with pytest.raises(AppError, match=f"no job {job['job_id']}"):  # another client's
        Client(running_app.url, verbose=False).predict(job["job_id"], api_name="/job_files")
    whole = list(read_frames(whole_file))
    assert len(frames) == len(whole) and all((a == b).all() for a, b in zip(frames, whole, strict=True))


def test_lipsync_bad_input_is_a_message_and_the_app_keeps_serving(client, tmp_path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bogus = tmp_path / "speech.wav"
    bogus.write_bytes(b"this is not audio" * 50)
    face = handle_file(str(ASSETS / "face.jpg"))
    with pytest.raises(AppError, match="could not be decoded"):
        client.predict(face=face, audio=handle_file(str(bogus)), api_name="/lipsync")
    speech = handle_file(str(ASSETS / "speech.wav"))
    with pytest.raises(AppError) as refused:
        client.predict(face=face, audio=speech, batch_size=0, pads="1,2", api_name="/lipsync")
    assert str(refused.value) == BAD_LIPSYNC_MESSAGE  # in the CLI's words (tests/test_cli.py checks those)
    assert client.predict(api_name="/device")["device"]


def _job_status(client, job_id: str, until: tuple[str, ...], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := client.predict(job_id, api_name="/job_status"))["status"] not in until:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def test_a_failed_or_cancelled_lipsync_has_no_files_and_says_why(client, tmp_path) -> None:
    """/job_files said "its files come once it is done" of a job that never will be. /lipsync still raises a failed
    job's reason (the tab shows it in its panes instead)."""
    import cv2
    import numpy as np
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from test_musetalk_lipsync import speech_file

    cv2.imwrite(str(tmp_path / "blank.png"), np.full((256, 256, 3), 128, np.uint8))
    files = dict(face=handle_file(str(tmp_path / "blank.png")), audio=handle_file(str(ASSETS / "speech.wav")))
    with pytest.raises(AppError, match=r"job [0-9a-f]{12} failed: no face found in blank\.png; use a clear"):
        client.predict(**files, api_name="/lipsync")
    failed = client.predict(**files, api_name="/lipsync_submit")["job_id"]
    assert _job_status(client, failed, ("failed",))["error"].startswith("no face found in blank.png")
    with pytest.raises(AppError, match=rf"job {failed} failed \(no face found in blank\.png; .*\) and has no files: "
                                       "only a finished job keeps them$"):  # fmt: skip
        client.predict(failed, api_name="/job_files")

    long = speech_file(tmp_path / "long.wav", 40.0)  # 1000 frames: still running when the cancel lands
    job = client.predict(face=handle_file(str(ASSETS / "face.jpg")), audio=handle_file(str(long)), stream=True,
                         engine="baseline", api_name="/lipsync_submit")["job_id"]  # fmt: skip
    deadline = time.monotonic() + 120
    while client.predict(job, api_name="/job_status")["progress"] < 0.2:  # a few seconds of it streamed
        assert time.monotonic() < deadline
        time.sleep(0.2)
    client.predict(job, api_name="/job_cancel")
    assert _job_status(client, job, ("cancelled", "done"))["status"] == "cancelled"
    with pytest.raises(AppError, match=rf"job {job} was cancelled \(cancelled by its owner while it ran\) and has no "
                                       r"files: only a finished job keeps them; the first \d+\.\d s it streamed come "
                                       "from /job_stream"):  # fmt: skip
        client.predict(job, api_name="/job_files")
    streamed = [path for segments, _status in client.submit(job, api_name="/job_stream") for path in segments]
    assert streamed and all(Path(path).stat().st_size > 0 for path in streamed)


def test_portrait_endpoint_animates_the_example_from_only_its_files(client) -> None:
    from gradio_client import handle_file

    video, summary, strip, _chart, _template, details = client.predict(
        source=handle_file(str(ASSETS / "face.jpg")), driving=handle_file(str(ASSETS / "driving.mp4")),
        api_name="/portrait",
    )  # fmt: skip
    path = Path(video["video"] if isinstance(video, dict) else video)
    assert path.exists() and path.stat().st_size > 5_000
    assert "baseline" in summary and details["metrics"]["frames"] == 75 and strip  # the whole 3 s clip


def test_portrait_bad_input_is_a_message(client, tmp_path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    blank = tmp_path / "blank.png"
    blank.write_bytes(b"not an image at all" * 10)
    driving = handle_file(str(ASSETS / "driving.mp4"))
    with pytest.raises(AppError, match="could not be decoded"):
        client.predict(source=handle_file(str(blank)), driving=driving, max_frames=2, api_name="/portrait")


def _wait_for_job(client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/onnx_status")
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {status['status']} after {timeout_s}s")


def test_onnx_job_api_end_to_end(client, tmp_path) -> None:
    from gradio_client import handle_file
    from tiny_onnx import mlp

    model = mlp(tmp_path / "mlp.onnx")
    submitted = client.predict(
        model=handle_file(str(model)), batch_sizes="1,4", runs=5, warmup=1, api_name="/onnx_submit"
    )
    job_id = submitted["job_id"]
    assert submitted["status"] in ("queued", "running", "done") and submitted["model_name"] == "mlp.onnx"
    listed = client.predict(api_name="/onnx_queue")
    assert all(j["status"] in ("queued", "running") for j in listed)
    status = _wait_for_job(client, job_id)
    assert status["status"] == "done", status["error"]
    result = client.predict(job_id, api_name="/onnx_result")
    rows = result["report"]["results"]
    assert [(r["provider"], r["batch"]) for r in rows] == [("cpu", 1), ("cpu", 4)]
    for row in rows:  # throughput is batch / mean latency
        assert row["samples_per_s"] == pytest.approx(row["batch"] / (row["latency"]["mean_ms"] / 1000))
    assert result["report"]["parity"]["cpu"]["y"]["max_abs"] == 0.0
    described, io_rows = client.predict(model=handle_file(str(model)), api_name="/onnx_inspect")
    assert "mlp.onnx" in described and [row[1] for row in io_rows["data"]] == ["x", "k", "y", "k2"]
    assert io_rows["headers"] == ["kind", "name", "dtype", "shape"]  # it was 1, 2, 3, 4


def test_onnx_job_api_refusals_are_messages(client, tmp_path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    page = tmp_path / "model.onnx"
    page.write_text("<!DOCTYPE html><html>a download page, not a model</html>")
    with pytest.raises(AppError, match="not an ONNX model"):
        client.predict(model=handle_file(str(page)), api_name="/onnx_submit")
    with pytest.raises(AppError, match="providers 'tpu' is not one of cpu, cuda, trt"):
        client.predict(example="wav2lip", providers="cpu,tpu", api_name="/onnx_submit")
    with pytest.raises(AppError, match="give either a model"):
        client.predict(api_name="/onnx_submit")
    with pytest.raises(AppError, match="no job"):
        client.predict("000000000000", api_name="/onnx_result")


def test_bench_api_end_to_end(client, tmp_path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    submitted = client.predict(model="wav2lip", device="cpu", batch="1,2", runs=2, api_name="/bench_submit")
    deadline = time.monotonic() + 180
    while (status := client.predict(submitted["job_id"], api_name="/bench_status"))["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["status"] == "done", status["error"]
    report = client.predict(submitted["job_id"], api_name="/bench_result")["report"]
    assert [r["label"] for r in report["results"]] == ["cpu eager fp32 b1", "cpu eager fp32 b2"]
    assert report["results"][0]["speedup"] == 1.0
    imported = client.predict(json.dumps(report), api_name="/bench_import")
    assert imported["status"] == "done" and imported["imported"]
    with pytest.raises(AppError, match="no CUDA device"):
        client.predict(points=json.dumps([{"device": "cuda"}]), api_name="/bench_submit")
    plan = client.predict(gpu="T4", llm="tinyllama-1.1b", max_total_tokens=2048, concurrent_requests=4,
                          api_name="/plan_llm")  # fmt: skip
    assert plan["fits"] and plan["flags"]["--max-total-tokens"] == 2048
    with pytest.raises(AppError, match="unknown GPU"):
        client.predict(gpu="TPU", llm="tinyllama-1.1b", api_name="/plan_llm")
    with pytest.raises(AppError, match=r"memory fraction 5 is outside 0\.05\.\.1"):
        client.predict(gpu="T4", llm="tinyllama-1.1b", memory_fraction=5, api_name="/plan_llm")
    config = tmp_path / "config.json"  # any model, uploaded: its config names it
    config.write_text(json.dumps(dict(model_type="llama", hidden_size=2048, intermediate_size=5632,
                                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                      vocab_size=32000, max_position_embeddings=2048,
                                      _name_or_path="TinyLlama/TinyLlama-1.1B-Chat-v1.0")))  # fmt: skip
    uploaded = client.predict(gpu="T4", config=handle_file(str(config)), api_name="/plan_llm")
    assert uploaded["model"]["name"] == "TinyLlama/TinyLlama-1.1B-Chat-v1.0" and uploaded["fits"]
    assert uploaded["model"]["parameters"] == pytest.approx(1.10e9, rel=1e-3)  # 1,100,048,384
    network = client.predict(gpu="T4", model="s3fd", api_name="/plan_network")
    assert network["model"].startswith("S3FD") and network["gpu"] == "NVIDIA T4" and network["recommended_batch"] >= 1
    rows = client.predict(throughput=1000.0, measured_on="H100", precision="fp16", samples_per_request=250.0,
                          api_name="/cost")  # fmt: skip
    h100 = next(r for r in rows if r["gpu"] == "H100")
    assert h100["basis"] == "measured" and h100["requests_per_s"] == pytest.approx(4.0)


@pytest.mark.browser
def test_page_shows_tabs_and_live_telemetry(running_app: RunningApp, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(running_app.url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Lip-sync").wait_for(timeout=60_000)
            _queue_an_onnx_evaluation_in_the_page(page, sync_api)
            _queue_a_sweep_in_the_page(page, sync_api)
            _animate_the_portrait_example(page, sync_api)
            page.get_by_role("tab", name="System").click()
            stamp = page.locator("#telemetry-timestamp")
            sync_api.expect(stamp).to_contain_text("Updated", timeout=60_000)
            first = _updated_at(stamp.inner_text())
            # Compare the time itself: the element also shows Gradio's render timer ("0.1s") while it refreshes.
            deadline = time.monotonic() + 20
            while _updated_at(stamp.inner_text()) in (first, None) and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert _updated_at(stamp.inner_text()) not in (first, None), stamp.inner_text()
            sync_api.expect(page.locator("#doctor-report")).to_contain_text("onnxruntime-cuda", timeout=120_000)
            page.wait_for_timeout(1500)  # let the plots draw their first history
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 10_000
        finally:
            browser.close()


def _updated_at(stamp_text: str) -> str | None:
    """The time in the telemetry stamp ("Updated 2026-12-02 00:23:16 ..."), without the render timer around it."""
    found = re.search(r"Updated (\d\d:\d\d:\d\d)", stamp_text)
    return found.group(1) if found else None


def _open_tab(page, sync_api, name: str, marker) -> None:
    """Click a tab until its content shows: a click that lands while the page is still hydrating is lost."""
    for _ in range(3):
        page.get_by_role("tab", name=name).click()
        try:
            sync_api.expect(marker).to_be_visible(timeout=20_000)
            return
        except AssertionError:
            continue
    sync_api.expect(marker).to_be_visible(timeout=20_000)


def _queue_an_onnx_evaluation_in_the_page(page, sync_api) -> None:
    """The tab's own flow: the built-in example, queue, the timer polls, the results table fills."""
    _open_tab(page, sync_api, "ONNX eval", page.get_by_role("button", name="Queue evaluation"))
    page.get_by_label("Batch sizes (when the batch is free)").fill("2")
    page.get_by_label("Timed runs").fill("3")
    page.get_by_role("button", name="Queue evaluation").click()
    sync_api.expect(page.locator("body")).to_contain_text("finished", timeout=120_000)
    sync_api.expect(page.locator("body")).to_contain_text("cpu → CPU", timeout=10_000)  # the result summary


def _queue_a_sweep_in_the_page(page, sync_api) -> None:
    """The benchmark tab's own flow: a one-configuration custom grid, queued, polled, charted."""
    _open_tab(page, sync_api, "GPU benchmark", page.get_by_role("button", name="Queue sweep"))
    page.locator("#bench-batches textarea").fill("1")
    page.locator("#bench-runs input").fill("2")
    page.get_by_role("button", name="Queue sweep").click()
    sync_api.expect(page.locator("body")).to_contain_text("GFLOP per sample", timeout=120_000)
    sync_api.expect(page.locator("body")).to_contain_text("cpu eager fp32 b1", timeout=10_000)


def _animate_the_portrait_example(page, sync_api) -> None:
    _open_tab(page, sync_api, "Portrait animation", page.get_by_role("button", name="Animate"))
    page.locator("#portrait-examples .thumbnail-item").first.click()
    for preview in ("img[src*='face.jpg']", "video[src*='driving.mp4']"):  # the example's files are loaded first
        sync_api.expect(page.locator(preview).first).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Animate").click()
    sync_api.expect(page.locator("body")).to_contain_text(
        "optical-flow motion transfer, not LivePortrait", timeout=120_000
    )


def test_app_stops_cleanly_on_ctrl_c(running_app: RunningApp) -> None:
    code = stop_app(running_app)
    assert code == 0, running_app.log()[-2000:]
