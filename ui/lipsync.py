"""The Lip-sync tab: face + speech in, lip-synced MP4 out, with per-stage timings.

The form has one component per LipSyncConfig field; the `/lipsync` API endpoint takes the same fields, with the
CLI's names, defaults and checks (ui/forms.py). Both build the config, call the engine and show the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from engine.core.hls import LiveStream
from engine.core.hub import where_to_put
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.weights import WAV2LIP
from engine.core.words import counted
from engine.jobs.kinds import shown_report
from engine.lipsync.config import LipSyncConfig, bbox_shift_words, precision_summary
from engine.lipsync.jobs import LipSyncJobs
from ui.examples import Example, example_gallery
from ui.forms import FormTerms, api_examples, choices, default, form_handler
from ui.jobs import Access, Ended, job_endpoints, run_panel
from ui.media_inputs import MEDIA_HEIGHT, action_row, checked_image, media_choice
from ui.weights import weights_panel
from ui.widgets import (
    ASSETS,
    chart,
    delivered,
    markdown_literal,
    measurement_line,
    optional_number,
    scroll_into_view,
    segments_lines,
    server_file_picker,
    slider,
    timing_figure,
    video_so_far,
)

log = logging.getLogger(__name__)

# (face photo, face video, speech file, video whose sound is the speech); see assets/PROVENANCE.md for their sources.
LIPSYNC_EXAMPLES = [
    Example("US voice", (ASSETS / "face.jpg", None, ASSETS / "speech.wav", None)),
    Example("UK voice", (ASSETS / "hopper.jpg", None, ASSETS / "speech-gb.wav", None)),
    Example("Face video", (None, ASSETS / "face-video.mp4", ASSETS / "speech-us.wav", None)),
    Example("Video's sound", (ASSETS / "hopper.jpg", None, None, ASSETS / "face-video.mp4")),
]


def summary_markdown(result: RunResult) -> str:
    m = result.metrics
    lines = [
        f"**{m['engine_label']}** on `{result.device}` ({result.device_name}, {result.precision}) · "
        f"{counted(m['frames'], 'frame')} at {m['fps']:g} fps · batch {m['batch_size']} · encoder `{m['encoder']}` · "
        f"detector `{m['detector']}` · {counted(m['faces_missed'], 'frame')} without a face · "
        f"{m['pipeline_seconds']:.2f}s in the pipeline ({m['frames_per_second']:.1f} frames/s)",
    ]
    if shift := bbox_shift_words(m):
        lines.append(f"- {shift}")
    if check := m.get("precision_check"):
        lines.append(f"- {precision_summary(result.precision, check)}")
    lines += measurement_line(result) + segments_lines(result)
    lines += [f"- ⚠️ {markdown_literal(w)}" for w in result.warnings]
    return "\n".join(lines)


def build_lipsync_tab(settings: Settings, jobs: LipSyncJobs, access: Access) -> None:
    """Render the tab in the current Blocks context and register the `/lipsync` and `/lipsync_submit` API.

    The first screen holds what a first run needs: the face (photo, webcam or video) and the speech (a file, the
    microphone or a video's sound) with their previews, the engine, the button and the examples; the options wait in
    an accordion, the result shows beside."""
    c = LipSyncConfig
    with gr.Row():
        with gr.Column():
            with gr.Row(equal_height=True):
                with gr.Column(min_width=240):
                    face = media_choice(
                        "face",
                        {
                            "Photo": lambda: checked_image(
                                label="Face photo", sources=["upload", "webcam", "clipboard"], height=MEDIA_HEIGHT
                            ),
                            "Video": lambda: gr.Video(label="Face video", sources=["upload", "webcam"]),
                        },
                    )
                with gr.Column(min_width=240):
                    audio = media_choice(
                        "audio",
                        {
                            "Speech": lambda: gr.Audio(  # the tab says what it is: no label, a smaller box
                                label="Speech", show_label=False, sources=["upload", "microphone"], type="filepath"
                            ),
                            "From a video": lambda: gr.Video(
                                label="A video whose sound track is the speech", sources=["upload"],
                            ),
                        },
                    )  # fmt: skip
            engine, run, cancel = action_row(c, "Lip-sync")
            example_gallery(
                LIPSYNC_EXAMPLES, [*face.inputs.values(), *audio.inputs.values()], (False, False, True, True),
                settings.cache_dir / "examples", "Examples", "lipsync-examples",
            )  # fmt: skip
            # At most three controls a row, most checkboxes in rows of their own: on a laptop each control has the
            # width its label and value need, on a phone the screen's (ui/style.py: no checkbox is squeezed;
            # tests/test_browser_layout.py checks both widths).
            with gr.Accordion("Options", open=False, elem_id="lipsync-options"):
                gr.Markdown(f"ℹ️ {where_to_put(WAV2LIP, settings)}")
                checkpoint = server_file_picker(settings, "Wav2Lip checkpoint (empty: the configured one)")
                with gr.Row():
                    batch_size = optional_number(c, "batch_size", "Batch size (empty: auto)", "auto")
                    precision = gr.Dropdown(choices(c, "precision"), value=default(c, "precision"), label="Precision")
                    audio_offset = slider(c, "audio_offset", "Audio offset (frames; + if lips are late)", step=1)
                with gr.Row():
                    compile_ = gr.Checkbox(value=default(c, "compile"), label="torch.compile")
                    check_precision = gr.Checkbox(
                        value=default(c, "check_precision"), label="fp16/bf16: compare the first frames with fp32"
                    )
                    stream = gr.Checkbox(value=True, label="Show the video while it is made")
                with gr.Row():
                    detector = gr.Dropdown(choices(c, "detector"), value=default(c, "detector"), label="Face detector")
                    detector_checkpoint = server_file_picker(settings, "S3FD checkpoint (empty: the configured one)")
                    detect_scale = slider(c, "detect_scale", "Detection scale", step=0.05)
                with gr.Row():
                    pads = gr.Textbox(value=default(c, "pads"), label="Pads in pixels: TOP, BOTTOM, LEFT, RIGHT")
                    box = gr.Textbox(label="Fixed face box X1, Y1, X2, Y2 (empty: detect every frame)")
                    paste = gr.Radio(choices(c, "paste"), value=default(c, "paste"), label="Paste mode")
                with gr.Row():  # upstream inference.py's edits of a face video, and a photo's frame rate
                    fps = slider(c, "fps", "Photo: frames per second", step=1)
                    resize_factor = slider(c, "resize_factor", "Video: shrink by", step=1)
                    crop = gr.Textbox(
                        value=default(c, "crop"), label="Video: keep TOP, BOTTOM, LEFT, RIGHT (-1: to the edge)"
                    )
                with gr.Row():
                    smooth = gr.Checkbox(value=default(c, "smooth"), label="Smooth face boxes")
                    static = gr.Checkbox(value=default(c, "static"), label="Video: its first frame only, held still")
                    rotate = gr.Checkbox(value=default(c, "rotate"), label="Video: turn a quarter clockwise")
                with gr.Row():  # the musetalk engine's own options
                    musetalk_weights = server_file_picker(
                        settings, "MuseTalk weights folder (empty: the configured one)"
                    )
                    musetalk_version = gr.Dropdown(
                        choices(c, "musetalk_version"), value=default(c, "musetalk_version"), label="MuseTalk version"
                    )
                    musetalk_runtime = gr.Dropdown(
                        choices(c, "musetalk_runtime"), value=default(c, "musetalk_runtime"),
                        label="MuseTalk UNet + decoder runtime",
                    )  # fmt: skip
                with gr.Row():  # MuseTalk's avatar: upstream's box shift, margin, blur, parsing mode and cheek widths
                    bbox_shift = slider(c, "bbox_shift", "MuseTalk box shift (pixels; + shows more mouth)", step=1)
                    musetalk_extra_margin = optional_number(
                        c, "musetalk_extra_margin", "MuseTalk extra margin below the box (pixels; auto 0 for v1)",
                        "auto: 10 for v1.5",
                    )  # fmt: skip
                    musetalk_blur = gr.Number(
                        value=default(c, "musetalk_blur"),
                        label="MuseTalk paste-back blur (0.05: upstream's inference.py)",
                    )
                with gr.Row():
                    musetalk_parsing_mode = gr.Dropdown(
                        choices(c, "musetalk_parsing_mode"), value=default(c, "musetalk_parsing_mode"),
                        label="MuseTalk parsing mode",
                    )  # fmt: skip
                    musetalk_cheek_widths = gr.Textbox(
                        value=default(c, "musetalk_cheek_widths"), label="MuseTalk cheek widths LEFT, RIGHT (pixels)"
                    )
                    person_box = gr.Checkbox(
                        value=default(c, "musetalk_person_box"), label="MuseTalk: DWPose in the person box"
                    )
            results_column = gr.Column()
        with gr.Column():
            gr.Markdown(
                "A face (photo or video) and speech become a lip-synced MP4. Without a Wav2Lip checkpoint a clearly "
                "labelled **baseline** engine (speech energy opens the mouth) runs. **MuseTalk** needs its weights "
                "(see the Lip-sync section of the README for the files and where they go)."
            )
            # Each output's label is its name on the API page (else "value_86"): the README's names for them.
            video = gr.Video(label="Result", interactive=False, elem_id="lipsync-result")
            summary = gr.Markdown(label="summary", elem_id="lipsync-summary")
            stages = gr.Plot(label="chart", show_label=False, visible=False)  # shown with a result
            with gr.Accordion("Full result (JSON)", open=False):
                details = gr.JSON(label="report", show_label=False)

    def render(report: dict[str, Any], say: Callable[[str], str] | None = None) -> tuple[Any, ...]:
        """A finished job's panes; its summary in `say`'s terms (the API's), else the tab's."""
        result = RunResult.from_dict(report)
        video_file, summary_text = delivered(result.outputs.get("video")), (say or terms)(summary_markdown(result))
        return video_file, summary_text, chart(timing_figure(result)), shown_report(report)

    inputs = dict(
        face=face, audio=audio, engine=engine, checkpoint=checkpoint, batch_size=batch_size, precision=precision,
        compile=compile_, check_precision=check_precision, pads=pads, smooth=smooth, box=box, detector=detector,
        detector_checkpoint=detector_checkpoint, detect_scale=detect_scale, paste=paste, audio_offset=audio_offset,
        fps=fps, static=static, resize_factor=resize_factor, rotate=rotate, crop=crop,
        musetalk_weights=musetalk_weights, musetalk_version=musetalk_version, bbox_shift=bbox_shift,
        musetalk_person_box=person_box, musetalk_runtime=musetalk_runtime, musetalk_extra_margin=musetalk_extra_margin,
        musetalk_parsing_mode=musetalk_parsing_mode, musetalk_cheek_widths=musetalk_cheek_widths,
        musetalk_blur=musetalk_blur, stream=stream,
    )  # fmt: skip
    terms = FormTerms.of(inputs)  # the engine's messages name these options by flag: here, by label
    outputs = [video, summary, stages, details]
    about = "Lip-sync a face image or video to speech; parameters as `avatarbench lipsync`."

    def live(seen: LiveStream) -> tuple[Any, ...]:
        return (*video_so_far(seen), gr.update(), gr.update())

    def ended(outcome: Ended, say: Callable[[str], str] | None = None) -> tuple[Any, ...]:
        """A failed or cancelled job (or an id that names none): the reason, the video it made before it stopped,
        and no earlier job's chart or result."""
        return outcome.video, outcome.summary(say or terms), chart(None), outcome.record

    with api_examples(face="assets/face.jpg", audio="assets/speech.wav"):
        lipsync = job_endpoints(LipSyncConfig, jobs, access, render, outputs, "lipsync", about, live, ended, terms)
    handler = audio.handler(face.handler(form_handler(LipSyncConfig, inputs, lipsync, "lip-sync", terms)))
    run.click(handler, inputs_kwargs=audio.kwargs(face.kwargs(inputs)), outputs=outputs, api_visibility="private",
              concurrency_limit=16, show_progress_on=video)  # fmt: skip
    scroll_into_view(run, video)
    with results_column:
        run_panel(jobs, access, render, ended, outputs, cancel)
        weights_panel(settings, access, "wav2lip", [checkpoint, detector_checkpoint])
        weights_panel(settings, access, "musetalk", [musetalk_weights])
