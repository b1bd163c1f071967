"""The Lip-sync tab: face + speech in, lip-synced MP4 out, with per-stage timings.

The handler only converts Gradio values into a LipSyncConfig, calls the engine, and turns the
result into components; every input error becomes a gr.Error message, never a traceback.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from engine.core.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.core.weights import WAV2LIP, where_to_put
from engine.lipsync.paste import PASTE_MODES
from engine.lipsync.pipeline import ENGINES, LipSyncConfig, LipSyncError, parse_box, run_lipsync

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
INPUT_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def timing_figure(result: RunResult) -> go.Figure:
    names = [s.name for s in result.stages]
    seconds = [s.seconds for s in result.stages]
    slowest = result.slowest_stage.name if result.stages else None
    colors = ["#d62728" if n == slowest else "#76b900" for n in names]
    fig = go.Figure(
        go.Bar(
            x=seconds,
            y=names,
            orientation="h",
            marker_color=colors,
            text=[f"{s:.2f}s" for s in seconds],
            textposition="auto",
        )
    )
    fig.update_layout(
        title={"text": "Time per stage (slowest in red)", "font": {"size": 13}},
        height=260,
        margin={"l": 70, "r": 10, "t": 30, "b": 30},
        xaxis_title="seconds",
        yaxis={"autorange": "reversed"},
        template="plotly_white",
    )
    return fig


def summary_markdown(result: RunResult) -> str:
    m = result.metrics
    lines = [
        f"**{m['engine_label']}** on `{result.device}` ({result.device_name}, {result.precision}) · "
        f"{m['frames']} frames at {m['fps']:g} fps · batch {m['batch_size']} · encoder `{m['encoder']}` · "
        f"detector `{m['detector']}` · {m['faces_missed']} frame(s) without a face · "
        f"{m['pipeline_seconds']:.2f}s wall ({m['frames_per_second']:.1f} frames/s; stages overlap)",
    ]
    lines += [f"- ⚠️ {w}" for w in result.warnings]
    return "\n".join(lines)


def build_lipsync_tab(settings: Settings) -> None:
    """Render the tab in the current Blocks context; its button is the `/lipsync` API endpoint."""
    gr.Markdown(
        "Turn a face (photo or video) and speech into a lip-synced MP4. With no Wav2Lip checkpoint "
        "configured, a clearly labelled **baseline** engine (speech energy opens the jaw) runs instead.\n\n"
        f"ℹ️ {where_to_put(WAV2LIP, settings)}"
    )
    with gr.Row():
        with gr.Column():
            face = gr.File(
                label="Face: image or video", file_types=list(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS), type="filepath"
            )
            speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath")
            with gr.Row():
                engine = gr.Radio(list(ENGINES), value="auto", label="Engine")
                checkpoint = gr.Textbox(label="Wav2Lip checkpoint (path or hf:OWNER/REPO/FILE; empty: settings)")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    batch = gr.Number(value=0, precision=0, minimum=0, maximum=4096, label="Batch size (0: auto)")
                    precision = gr.Dropdown(["auto", "fp32", "tf32", "fp16", "bf16"], value="auto", label="Precision")
                    compile_ = gr.Checkbox(value=False, label="torch.compile")
                with gr.Row():
                    pad_top = gr.Number(value=0, precision=0, minimum=0, maximum=200, label="Pad top")
                    pad_bottom = gr.Number(value=10, precision=0, minimum=0, maximum=200, label="Pad bottom")
                    pad_left = gr.Number(value=0, precision=0, minimum=0, maximum=200, label="Pad left")
                    pad_right = gr.Number(value=0, precision=0, minimum=0, maximum=200, label="Pad right")
                with gr.Row():
                    smooth = gr.Checkbox(value=True, label="Smooth face boxes")
                    detector = gr.Dropdown(["haar", "s3fd"], value="haar", label="Face detector")
                    scale = gr.Slider(0.1, 1.0, value=0.5, step=0.05, label="Detection scale")
                with gr.Row():
                    paste_mode = gr.Radio(list(PASTE_MODES), value="blend", label="Paste mode")
                    offset = gr.Slider(-10, 10, value=0, step=1, label="Audio offset (frames; + if lips are late)")
                    fixed_box = gr.Textbox(label="Fixed face box X1,Y1,X2,Y2 (empty: detect every frame)")
            run = gr.Button("Lip-sync", variant="primary")
        with gr.Column():
            video = gr.Video(label="Result", interactive=False)
            summary = gr.Markdown()
            chart = gr.Plot(show_label=False)
            with gr.Accordion("Full result (JSON)", open=False):
                details = gr.JSON()

    def lipsync(
        face_path,
        speech_path,
        engine_name,
        ckpt,
        batch_size,
        prec,
        use_compile,
        top,
        bottom,
        left,
        right,
        use_smooth,
        detector_name,
        detect_scale,
        mode,
        audio_offset,
        box_text,
        progress=gr.Progress(),
    ) -> tuple[Any, ...]:
        if not face_path:
            raise gr.Error("Upload a face image or video.")
        if not speech_path:
            raise gr.Error("Upload or record the speech.")
        try:
            box = parse_box(box_text)
        except LipSyncError as exc:
            raise gr.Error(str(exc)) from None
        config = LipSyncConfig(
            face=Path(face_path),
            audio=Path(speech_path),
            out=settings.outputs_dir / f"lipsync-{uuid.uuid4().hex[:12]}.mp4",
            engine=engine_name,
            checkpoint=(ckpt or "").strip() or None,
            device=settings.device,
            batch_size=int(batch_size) or None,
            precision=None if prec == "auto" else prec,
            compile=bool(use_compile),
            pads=(int(top), int(bottom), int(left), int(right)),
            smooth=bool(use_smooth),
            detector=detector_name,
            detect_scale=float(detect_scale),
            paste_mode=mode,
            audio_offset=int(audio_offset),
            fixed_box=box,
        )
        try:
            result = run_lipsync(config, settings, progress=lambda f, label: progress(f, desc=label))
        except INPUT_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # keep serving; the log has the traceback
            log.exception("lip-sync failed")
            raise gr.Error(f"lip-sync failed: {type(exc).__name__}: {exc}") from None
        return result.outputs["video"], summary_markdown(result), timing_figure(result), result.to_dict()

    inputs = [
        face,
        speech,
        engine,
        checkpoint,
        batch,
        precision,
        compile_,
        pad_top,
        pad_bottom,
        pad_left,
        pad_right,
        smooth,
        detector,
        scale,
        paste_mode,
        offset,
        fixed_box,
    ]
    run.click(
        lipsync, inputs, [video, summary, chart, details], api_name="lipsync", concurrency_id="gpu", concurrency_limit=1
    )
    gr.Examples(
        examples=[[str(ASSETS / "face.jpg"), str(ASSETS / "speech.wav")]],
        inputs=[face, speech],
        label="Example (public-domain portrait, generated speech; see assets/PROVENANCE.md)",
    )
