"""The Portrait animation tab: a source portrait animated by a driving video, image or motion template, with
per-stage timings and a side-by-side strip; also registers the `/portrait` API endpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from engine.core.hls import LiveStream
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.words import counted
from engine.jobs.kinds import shown_report
from engine.portrait.config import PortraitConfig
from engine.portrait.jobs import PortraitJobs
from ui.examples import Example, example_gallery
from ui.forms import FormTerms, api_examples, choices, default, field, form_handler
from ui.jobs import Access, Ended, job_endpoints, run_panel
from ui.media_inputs import MEDIA_HEIGHT, TAB_BAR_HEIGHT, action_row, checked_image, media_choice
from ui.style import HIDDEN_WHEN_EMPTY
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

# What each engine accepts as the driving input, said where it is chosen.
DRIVING_LABELS = {
    "video": "Driving video (any engine)",
    "image": "Driving image (any engine)",
    "template": "Motion template .npz or LivePortrait .pkl (LivePortrait only)",
}
# (source, driving video, driving image, driving template); see assets/PROVENANCE.md for where each comes from. No
# template: a motion template holds LivePortrait keypoints, which only a run with its weights can save.
PORTRAIT_EXAMPLES = [
    Example("Own clip", (ASSETS / "face.jpg", ASSETS / "driving.mp4", None, None)),
    Example("Collins clip", (ASSETS / "hopper.jpg", ASSETS / "driving.mp4", None, None)),
    Example("Hopper clip", (ASSETS / "face.jpg", ASSETS / "driving-hopper.mp4", None, None)),
    Example("Still image", (ASSETS / "hopper.jpg", None, ASSETS / "driving-pose.jpg", None)),
]


def openness_label(part: str, cls: type[PortraitConfig]) -> str:
    """The eye/lip openness box's label, with its range written from the config (low..high, as the CLI says)."""
    f = field(cls, "eye_open" if part == "eyes" else "lip_open")
    return f"Or set the {part} to one openness in every frame: {f.option.low:g} (closed) to {f.option.high:g}"


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
        f"{counted(m['frames'], 'frame')} at {m['fps']:g} fps · {m['frames_per_second']:.1f} frames/s · "
        f"encoder `{m['encoder']}`"
    ]
    lines += measurement_line(result) + segments_lines(result)
    lines += [f"- ⚠️ {markdown_literal(w)}" for w in result.warnings]
    return "\n".join(lines)


def build_portrait_tab(settings: Settings, jobs: PortraitJobs, access: Access) -> None:
    """Render the tab (one component per PortraitConfig field) and register `/portrait` and `/portrait_submit`.

    The first screen holds the source portrait and the driving input (video, image or motion template) with their
    previews, the engine, the button and the examples; the options wait in an accordion, the result shows beside."""
    c = PortraitConfig
    with gr.Row():
        with gr.Column():
            with gr.Row(equal_height=True):
                with gr.Column(min_width=240):
                    source = checked_image(
                        label="Source portrait (photo)", sources=["upload", "webcam", "clipboard"],
                        height=MEDIA_HEIGHT + TAB_BAR_HEIGHT,
                    )  # fmt: skip
                with gr.Column(min_width=240):
                    driving = media_choice(
                        "driving",
                        {
                            "Video": lambda: gr.Video(
                                label=DRIVING_LABELS["video"], sources=["upload", "webcam"]
                            ),
                            "Image": lambda: checked_image(
                                label=DRIVING_LABELS["image"],
                                sources=["upload", "webcam", "clipboard"], height=MEDIA_HEIGHT,
                            ),
                            "Template": lambda: gr.File(
                                label=DRIVING_LABELS["template"], file_types=[".npz", ".pkl"], type="filepath",
                                height=MEDIA_HEIGHT,
                            ),
                        },
                    )  # fmt: skip
            engine, run, cancel = action_row(c, "Animate")
            example_gallery(
                PORTRAIT_EXAMPLES, [source, *driving.inputs.values()], (False, False, False, False),
                settings.cache_dir / "examples", "Examples", "portrait-examples",
            )  # fmt: skip
            # As the Lip-sync tab's: at most three controls a row, the checkboxes in rows of their own.
            with gr.Accordion("Options", open=False, elem_id="portrait-options"):
                gr.Markdown(
                    "LivePortrait's weights: `AVATARBENCH_LIVEPORTRAIT_DIR`, the official `pretrained_weights` folder "
                    "or its `liveportrait/` subfolder."
                )
                with gr.Row():
                    backend = gr.Dropdown(choices(c, "backend"), value=default(c, "backend"), label="Backend")
                    precision = gr.Dropdown(choices(c, "precision"), value=default(c, "precision"), label="Precision")
                    region = gr.Dropdown(choices(c, "region"), value=default(c, "region"), label="Animation region")
                with gr.Row():
                    driving_option = gr.Radio(
                        choices(c, "driving_option"), value=default(c, "driving_option"), label="Driving option"
                    )
                    multiplier = slider(c, "multiplier", "Driving multiplier", step=0.05)
                with gr.Row():
                    relative = gr.Checkbox(value=default(c, "relative"), label="Relative motion")
                    stitching = gr.Checkbox(value=default(c, "stitching"), label="Stitching")
                    paste_back = gr.Checkbox(value=default(c, "paste_back"), label="Paste back into the full image")
                with gr.Row():
                    crop = gr.Checkbox(value=default(c, "crop"), label="Crop around the face")
                    upright = gr.Checkbox(value=default(c, "upright"), label="Turn the crop upright (landmark model)")
                    crop_driving = gr.Checkbox(
                        value=default(c, "crop_driving"), label="Crop a square driving video too"
                    )
                with gr.Row():  # upstream's crop geometry: the source's, then the driving video's
                    scale = slider(c, "scale", "Source crop scale", step=0.05)
                    vx_ratio = slider(c, "vx_ratio", "Source crop shift x", step=0.005)
                    vy_ratio = slider(c, "vy_ratio", "Source crop shift y", step=0.005)
                with gr.Row():
                    scale_crop_driving = slider(c, "scale_crop_driving", "Driving crop scale", step=0.05)
                    vx_ratio_crop_driving = slider(c, "vx_ratio_crop_driving", "Driving crop shift x", step=0.005)
                    vy_ratio_crop_driving = slider(c, "vy_ratio_crop_driving", "Driving crop shift y", step=0.005)
                with gr.Row():
                    source_max_dim = slider(c, "source_max_dim", "Source: longest side (0: any)", step=2)
                    source_division = slider(c, "source_division", "Source: sides multiple of", step=1)
                with gr.Row():  # a row of their own: a slider's range labels need its width
                    pitch = slider(c, "pitch", "Head pitch (°)", step=1)
                    yaw = slider(c, "yaw", "Head yaw (°)", step=1)
                    roll = slider(c, "roll", "Head roll (°)", step=1)
                with gr.Row():
                    max_frames = optional_number(c, "max_frames", "Max frames (empty: all)", "all")
                    batch_size = optional_number(c, "batch_size", "Batch size", "auto: 8 on a GPU, 1 on a CPU")
                with gr.Row():
                    save_template = gr.Checkbox(
                        value=default(c, "save_template"), label="Save the driving motion as a template"
                    )
                    stream = gr.Checkbox(value=True, label="Show the video while it is made")
                    compile_ = gr.Checkbox(
                        value=default(c, "compile"), label="torch.compile (torch backend; first run compiles)"
                    )
                with gr.Row():  # retargeting needs LivePortrait's landmark.onnx beside its weights
                    eye_open = optional_number(c, "eye_open", openness_label("eyes", c), "off")
                    lip_open = optional_number(c, "lip_open", openness_label("lips", c), "off")
                with gr.Row():
                    eye_retargeting = gr.Checkbox(
                        value=default(c, "eye_retargeting"), label="Eyes follow the driver's openness, frame by frame"
                    )
                    lip_retargeting = gr.Checkbox(
                        value=default(c, "lip_retargeting"), label="Lips follow the driver's openness, frame by frame"
                    )
                    normalize_lips = gr.Checkbox(
                        value=default(c, "normalize_lips"), label="Normalise lips (close an open source mouth first)"
                    )
                with gr.Row():
                    weights = server_file_picker(settings, "LivePortrait weights (empty: the configured ones)")
                    landmarks = server_file_picker(settings, "landmark.onnx (empty: beside the weights)")
            results_column = gr.Column()
        with gr.Column():
            gr.Markdown(
                "Animate a portrait with a driving video, image or motion template. With LivePortrait's weights our "
                "LivePortrait engine runs (PyTorch or ONNX Runtime); without them a clearly labelled **baseline** "
                "engine (tracked head motion + optical flow) runs."
            )
            # Each output's label is its name on the API page (else "value_264"): the README's names for them.
            video = gr.Video(label="Result", interactive=False, elem_id="portrait-result")
            summary = gr.Markdown(label="summary", elem_id="portrait-summary")
            strip = gr.Image(label="Driving (top) and result (bottom)", interactive=False)
            stages = gr.Plot(label="chart", show_label=False, visible=False)  # shown with a result
            # only LivePortrait runs that save the driving motion make one: out of sight until then
            template = gr.File(label="Motion template", interactive=False, elem_classes=[HIDDEN_WHEN_EMPTY])
            with gr.Accordion("Full result (JSON)", open=False):
                details = gr.JSON(label="report", show_label=False)

    def render(report: dict[str, Any], say: Callable[[str], str] | None = None) -> tuple[Any, ...]:
        """A finished job's panes; its summary in `say`'s terms (the API's), else the tab's."""
        result = RunResult.from_dict(report)
        out = result.outputs
        video_file, strip_file, template_file = (delivered(out.get(k)) for k in ("video", "strip", "template"))
        figure = chart(timing_figure(result))
        summary_text = (say or terms)(summary_markdown(result))
        return video_file, summary_text, strip_file, figure, template_file, shown_report(report)

    inputs = dict(
        source=source, driving=driving, engine=engine, weights=weights, backend=backend, precision=precision,
        compile=compile_, region=region, relative=relative, driving_option=driving_option, multiplier=multiplier,
        stitching=stitching, paste_back=paste_back, crop=crop, upright=upright, crop_driving=crop_driving,
        pitch=pitch, yaw=yaw, roll=roll, scale=scale, vx_ratio=vx_ratio, vy_ratio=vy_ratio,
        scale_crop_driving=scale_crop_driving,
        vx_ratio_crop_driving=vx_ratio_crop_driving, vy_ratio_crop_driving=vy_ratio_crop_driving,
        source_max_dim=source_max_dim, source_division=source_division,
        eye_retargeting=eye_retargeting, lip_retargeting=lip_retargeting, eye_open=eye_open, lip_open=lip_open,
        landmarks=landmarks, normalize_lips=normalize_lips, max_frames=max_frames,
        batch_size=batch_size, save_template=save_template, stream=stream,
    )  # fmt: skip
    terms = FormTerms.of(inputs)  # the engine's messages name these options by flag: here, by label
    outputs = [video, summary, strip, stages, template, details]
    about = "Animate a portrait; parameters as `avatarbench portrait`."

    def live(seen: LiveStream) -> tuple[Any, ...]:
        return (*video_so_far(seen), *(gr.update(),) * 4)

    def ended(outcome: Ended, say: Callable[[str], str] | None = None) -> tuple[Any, ...]:
        """A failed or cancelled job (or an id that names none): the reason, the video it made before it stopped,
        and no earlier job's strip, chart, template or result."""
        return outcome.video, outcome.summary(say or terms), None, chart(None), None, outcome.record

    with api_examples(source="assets/face.jpg", driving="assets/driving.mp4"):
        animate = job_endpoints(PortraitConfig, jobs, access, render, outputs, "portrait", about, live, ended, terms)
    handler = driving.handler(form_handler(PortraitConfig, inputs, animate, "portrait animation", terms))
    run.click(handler, inputs_kwargs=driving.kwargs(inputs), outputs=outputs, api_visibility="private",
              concurrency_limit=16, show_progress_on=video)  # fmt: skip
    scroll_into_view(run, video)
    with results_column:
        run_panel(jobs, access, render, ended, outputs, cancel)
        weights_panel(settings, access, "liveportrait", [weights, landmarks])
