"""The Lip-sync tab: face + speech in, lip-synced MP4 out, with per-stage timings.

The form has one component per LipSyncConfig field; the `/lipsync` API endpoint takes the same fields, with the
CLI's names, defaults and checks (ui/forms.py). Both build the config, call the engine and show the result.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from engine.core.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.weights import WAV2LIP, where_to_put
from engine.lipsync.config import LipSyncConfig
from engine.lipsync.jobs import LipSyncJobs
from ui.forms import choices, default, form_handler
from ui.jobs import Access, job_endpoints, run_panel
from ui.widgets import ASSETS, kept, measurement_line, number, server_file_picker, slider, timing_figure

log = logging.getLogger(__name__)


def summary_markdown(result: RunResult) -> str:
    m = result.metrics
    lines = [
        f"**{m['engine_label']}** on `{result.device}` ({result.device_name}, {result.precision}) · "
        f"{m['frames']} frames at {m['fps']:g} fps · batch {m['batch_size']} · encoder `{m['encoder']}` · "
        f"detector `{m['detector']}` · {m['faces_missed']} frame(s) without a face · "
        f"{m['pipeline_seconds']:.2f}s in the pipeline ({m['frames_per_second']:.1f} frames/s)",
    ]
    lines += measurement_line(result)
    lines += [f"- ⚠️ {w}" for w in result.warnings]
    return "\n".join(lines)


def build_lipsync_tab(settings: Settings, jobs: LipSyncJobs, access: Access) -> None:
    """Render the tab in the current Blocks context and register the `/lipsync` and `/lipsync_submit` API."""
    gr.Markdown(
        "Turn a face (photo or video) and speech into a lip-synced MP4. With no Wav2Lip checkpoint "
        "configured, a clearly labelled **baseline** engine (speech energy opens the jaw) runs instead.\n\n"
        f"ℹ️ {where_to_put(WAV2LIP, settings)}"
    )
    c = LipSyncConfig
    with gr.Row():
        with gr.Column():
            face = gr.File(
                label="Face: image or video", file_types=list(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS), type="filepath"
            )
            audio = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath")
            with gr.Row():
                engine = gr.Radio(choices(c, "engine"), value=default(c, "engine"), label="Engine")
                checkpoint = server_file_picker(settings, "Wav2Lip checkpoint (empty: the configured one)")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    batch_size = number(c, "batch_size", "Batch size (empty: auto)")
                    precision = gr.Dropdown(choices(c, "precision"), value=default(c, "precision"), label="Precision")
                    compile_ = gr.Checkbox(value=default(c, "compile"), label="torch.compile")
                with gr.Row():
                    pads = gr.Textbox(value=default(c, "pads"), label="Pads TOP,BOTTOM,LEFT,RIGHT (pixels)")
                    smooth = gr.Checkbox(value=default(c, "smooth"), label="Smooth face boxes")
                    box = gr.Textbox(label="Fixed face box X1,Y1,X2,Y2 (empty: detect every frame)")
                with gr.Row():
                    detector = gr.Dropdown(choices(c, "detector"), value=default(c, "detector"), label="Face detector")
                    detector_checkpoint = server_file_picker(settings, "S3FD checkpoint (empty: the configured one)")
                    detect_scale = slider(c, "detect_scale", "Detection scale", step=0.05)
                with gr.Row():
                    paste = gr.Radio(choices(c, "paste"), value=default(c, "paste"), label="Paste mode")
                    audio_offset = slider(c, "audio_offset", "Audio offset (frames; + if lips are late)", step=1)
            with gr.Row():
                run = gr.Button("Lip-sync", variant="primary", scale=4)
                cancel = gr.Button("Cancel", variant="stop", scale=1)
        with gr.Column():
            video = gr.Video(label="Result", interactive=False)
            summary = gr.Markdown()
            chart = gr.Plot(show_label=False)
            with gr.Accordion("Full result (JSON)", open=False):
                details = gr.JSON()

    def render(report: dict[str, Any]) -> tuple[Any, ...]:
        result = RunResult.from_dict(report)
        return kept(result.outputs.get("video")), summary_markdown(result), timing_figure(result), report

    inputs = dict(
        face=face, audio=audio, engine=engine, checkpoint=checkpoint, batch_size=batch_size, precision=precision,
        compile=compile_, pads=pads, smooth=smooth, box=box, detector=detector,
        detector_checkpoint=detector_checkpoint, detect_scale=detect_scale, paste=paste, audio_offset=audio_offset,
    )  # fmt: skip
    outputs = [video, summary, chart, details]
    about = "Lip-sync a face image or video to speech; parameters as `avatarbench lipsync`."
    lipsync = job_endpoints(LipSyncConfig, jobs, access, render, outputs, "lipsync", about)
    handler = form_handler(LipSyncConfig, inputs, lipsync, "lip-sync")
    run.click(handler, inputs_kwargs=inputs, outputs=outputs, api_visibility="private", concurrency_limit=16)
    run_panel(jobs, access, render, outputs, cancel)
    gr.Examples(
        examples=[[str(ASSETS / "face.jpg"), str(ASSETS / "speech.wav")]],
        inputs=[face, audio],
        label="Example (public-domain portrait, generated speech; see assets/PROVENANCE.md)",
    )
