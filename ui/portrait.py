"""The Portrait animation tab: a source portrait animated by a driving video, image or motion template, with
per-stage timings and a side-by-side strip; also registers the `/portrait` API endpoint."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from engine.core.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.config import PortraitConfig
from engine.portrait.jobs import PortraitJobs
from ui.forms import choices, default, form_handler
from ui.jobs import Access, job_endpoints, run_panel
from ui.widgets import ASSETS, kept, measurement_line, number, server_file_picker, slider, timing_figure

log = logging.getLogger(__name__)


def summary_markdown(result: RunResult) -> str:
    m = result.metrics
    baseline = "**baseline** (optical-flow motion transfer, not LivePortrait)"
    label = "LivePortrait" if m["engine"] == "liveportrait" else baseline
    providers = m.get("providers")
    where = f" · providers {providers}" if providers else ""
    cache = m.get("cache")
    if cache:
        reused = [name for name in ("networks", "source") if cache[name]]
        where += f" · reused from the last run: {', '.join(reused)}" if reused else ""
    if m.get("compiled"):
        where += " · torch.compile"
    if m.get("crop_angle"):
        where += f" · crop turned {m['crop_angle']:.1f}° upright"
    if m.get("lips_normalised"):
        where += " · source lips closed first"
    lines = [
        f"{label} · {m['backend']} on `{result.device}` ({result.device_name}, {result.precision}){where} · "
        f"{m['frames']} frames at {m['fps']:g} fps · {m['frames_per_second']:.1f} frames/s · encoder `{m['encoder']}`"
    ]
    lines += measurement_line(result)
    lines += [f"- ⚠️ {w}" for w in result.warnings]
    return "\n".join(lines)


def build_portrait_tab(settings: Settings, jobs: PortraitJobs, access: Access) -> None:
    """Render the tab (one component per PortraitConfig field) and register `/portrait` and `/portrait_submit`."""
    gr.Markdown(
        "Animate a portrait with a driving video (or image, or a saved motion template). With LivePortrait's "
        "weights (`AVATARBENCH_LIVEPORTRAIT_DIR`: the official `pretrained_weights/liveportrait` folder) our "
        "LivePortrait engine runs in PyTorch or through ONNX Runtime; without them a clearly labelled "
        "**baseline** engine (tracked head motion + optical flow) runs, so the example works with no download."
    )
    c = PortraitConfig
    with gr.Row():
        with gr.Column():
            # a File, not an Image: Gradio's Image decodes uploads itself and fails without a message on a bad one
            source = gr.File(label="Source portrait (image)", file_types=list(IMAGE_EXTENSIONS), type="filepath")
            driving = gr.File(
                label="Driving: video, image, or motion template (.npz)",
                file_types=[*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS, ".npz"],
                type="filepath",
            )
            with gr.Row():
                engine = gr.Radio(choices(c, "engine"), value=default(c, "engine"), label="Engine")
                backend = gr.Dropdown(choices(c, "backend"), value=default(c, "backend"), label="Backend")
                precision = gr.Dropdown(choices(c, "precision"), value=default(c, "precision"), label="Precision")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    relative = gr.Checkbox(value=default(c, "relative"), label="Relative motion")
                    driving_option = gr.Radio(
                        choices(c, "driving_option"), value=default(c, "driving_option"), label="Driving option"
                    )
                    region = gr.Dropdown(choices(c, "region"), value=default(c, "region"), label="Animation region")
                with gr.Row():
                    multiplier = slider(c, "multiplier", "Driving multiplier", step=0.05)
                    stitching = gr.Checkbox(value=default(c, "stitching"), label="Stitching")
                    paste_back = gr.Checkbox(value=default(c, "paste_back"), label="Paste back into the full image")
                with gr.Row():
                    max_frames = number(c, "max_frames", "Max frames (empty: all)")
                    batch_size = number(c, "batch_size", "Batch size")
                    save_template = gr.Checkbox(
                        value=default(c, "save_template"), label="Save the driving motion as a template"
                    )
                with gr.Row():
                    crop = gr.Checkbox(value=default(c, "crop"), label="Crop around the face")
                    pitch = slider(c, "pitch", "Head pitch (°)", step=1)
                    yaw = slider(c, "yaw", "Head yaw (°)", step=1)
                    roll = slider(c, "roll", "Head roll (°)", step=1)
                with gr.Row():  # retargeting needs LivePortrait's landmark.onnx beside its weights
                    eye_retargeting = gr.Checkbox(
                        value=default(c, "eye_retargeting"), label="Eyes follow the driver's openness, frame by frame"
                    )
                    lip_retargeting = gr.Checkbox(
                        value=default(c, "lip_retargeting"), label="Lips follow the driver's openness, frame by frame"
                    )
                    eye_open = number(c, "eye_open", "Or retarget the eyes to one openness, 0..0.8 (empty: off)")
                    lip_open = number(c, "lip_open", "Or retarget the lips to one openness, 0..0.8 (empty: off)")
                    normalize_lips = gr.Checkbox(
                        value=default(c, "normalize_lips"), label="Normalise lips (close an open source mouth first)"
                    )
                    compile_ = gr.Checkbox(
                        value=default(c, "compile"), label="torch.compile (torch backend; first run compiles)"
                    )
                with gr.Row():
                    weights = server_file_picker(settings, "LivePortrait weights (empty: the configured ones)")
                    landmarks = server_file_picker(settings, "landmark.onnx (empty: beside the weights)")
            with gr.Row():
                run = gr.Button("Animate", variant="primary", scale=4)
                cancel = gr.Button("Cancel", variant="stop", scale=1)
        with gr.Column():
            video = gr.Video(label="Result", interactive=False)
            summary = gr.Markdown()
            strip = gr.Image(label="Driving (top) and result (bottom)", interactive=False)
            chart = gr.Plot(show_label=False)
            template = gr.File(label="Motion template", interactive=False)
            with gr.Accordion("Full result (JSON)", open=False):
                details = gr.JSON()

    def render(report: dict[str, Any]) -> tuple[Any, ...]:
        result = RunResult.from_dict(report)
        out = result.outputs
        return (kept(out.get("video")), summary_markdown(result), kept(out.get("strip")), timing_figure(result),
                kept(out.get("template")), report)  # fmt: skip

    inputs = dict(
        source=source, driving=driving, engine=engine, weights=weights, backend=backend, precision=precision,
        compile=compile_, region=region, relative=relative, driving_option=driving_option, multiplier=multiplier,
        stitching=stitching, paste_back=paste_back, crop=crop, pitch=pitch, yaw=yaw, roll=roll,
        eye_retargeting=eye_retargeting, lip_retargeting=lip_retargeting, eye_open=eye_open, lip_open=lip_open,
        landmarks=landmarks, normalize_lips=normalize_lips, max_frames=max_frames,
        batch_size=batch_size, save_template=save_template,
    )  # fmt: skip
    outputs = [video, summary, strip, chart, template, details]
    about = "Animate a portrait; parameters as `avatarbench portrait`."
    animate = job_endpoints(PortraitConfig, jobs, access, render, outputs, "portrait", about)
    handler = form_handler(PortraitConfig, inputs, animate, "portrait animation")
    run.click(handler, inputs_kwargs=inputs, outputs=outputs, api_visibility="private", concurrency_limit=16)
    run_panel(jobs, access, render, outputs, cancel)
    gr.Examples(
        examples=[[str(ASSETS / "face.jpg"), str(ASSETS / "driving.mp4")]],
        inputs=[source, driving],
        label="Example (public-domain portrait, a driving clip we made from it; see assets/PROVENANCE.md)",
    )
