"""The Portrait animation tab: a source portrait animated by a driving video, image or motion template, with
per-stage timings and a side-by-side strip; its button is the `/portrait` API endpoint."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np

from engine.core.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_image, load_image, read_frames
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.portrait.motion import REGIONS
from engine.portrait.pipeline import BACKENDS, DRIVING_OPTIONS, ENGINES, PortraitConfig, run_portrait
from ui.lipsync import ASSETS, INPUT_ERRORS, timing_figure

log = logging.getLogger(__name__)
STRIP_FRAMES = 4


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
    lines += [f"- ⚠️ {w}" for w in result.warnings]
    return "\n".join(lines)


def side_by_side(driving: Path, video: Path, count: int) -> np.ndarray | None:
    """Driving frames above, result frames below, at evenly spaced times (RGB for gr.Image)."""
    if driving.suffix.lower() == ".npz":
        return None
    picks = set(np.linspace(0, max(count - 1, 0), STRIP_FRAMES).round().astype(int).tolist())

    def frames(path: Path) -> list[np.ndarray]:
        if is_image(path):
            return [load_image(path)] * len(picks)
        out = []
        for i, frame in enumerate(read_frames(path)):  # stop at the last pick: no need to decode the rest
            if i in picks:
                out.append(frame)
            if i >= max(picks):
                break
        return out

    rows = []
    for path in (driving, video):
        tiles = [cv2.resize(f, (192, 192), interpolation=cv2.INTER_AREA) for f in frames(path)]
        if not tiles:
            return None
        rows.append(np.hstack(tiles[: len(picks)]))
    width = min(r.shape[1] for r in rows)
    return np.vstack([r[:, :width] for r in rows])[:, :, ::-1]


def build_portrait_tab(settings: Settings) -> None:
    gr.Markdown(
        "Animate a portrait with a driving video (or image, or a saved motion template). With LivePortrait's "
        "weights (`AVATARBENCH_LIVEPORTRAIT_DIR`: the official `pretrained_weights/liveportrait` folder) our "
        "LivePortrait engine runs in PyTorch or through ONNX Runtime; without them a clearly labelled "
        "**baseline** engine (tracked head motion + optical flow) runs, so the example works with no download."
    )
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
                engine = gr.Radio(list(ENGINES), value="auto", label="Engine")
                backend = gr.Dropdown(list(BACKENDS), value="torch", label="Backend (LivePortrait)")
                precision = gr.Dropdown(["auto", "fp32", "fp16", "bf16"], value="auto", label="Precision")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    relative = gr.Checkbox(value=True, label="Relative motion")
                    option = gr.Radio(list(DRIVING_OPTIONS), value="expression-friendly", label="Driving option")
                    region = gr.Dropdown(list(REGIONS), value="all", label="Animation region")
                with gr.Row():
                    multiplier = gr.Slider(0.0, 3.0, value=1.0, step=0.05, label="Driving multiplier")
                    stitching = gr.Checkbox(value=True, label="Stitching")
                    paste_back = gr.Checkbox(value=True, label="Paste back into the full image")
                with gr.Row():
                    max_frames = gr.Number(value=0, precision=0, minimum=0, label="Max frames (0: all)")
                    batch = gr.Number(value=8, precision=0, minimum=1, maximum=256, label="Batch size")
                    keep_template = gr.Checkbox(value=False, label="Save the driving motion as a template")
                with gr.Row():
                    crop = gr.Checkbox(value=True, label="Crop around the face")
                    pitch = gr.Slider(-45, 45, value=0, step=1, label="Head pitch (°)")
                    yaw = gr.Slider(-45, 45, value=0, step=1, label="Head yaw (°)")
                    roll = gr.Slider(-45, 45, value=0, step=1, label="Head roll (°)")
                with gr.Row():  # retargeting needs LivePortrait's landmark.onnx beside its weights
                    eyes_on = gr.Checkbox(value=False, label="Retarget eyes")
                    eyes = gr.Slider(0.0, 0.8, value=0.35, step=0.01, label="Eye openness")
                    lips_on = gr.Checkbox(value=False, label="Retarget lips")
                    lips = gr.Slider(0.0, 0.8, value=0.0, step=0.01, label="Lip openness")
                with gr.Row():
                    normalize = gr.Checkbox(value=True, label="Normalise lips (close an open source mouth first)")
                    compiled = gr.Checkbox(value=False, label="torch.compile (torch backend; first run compiles)")
            run = gr.Button("Animate", variant="primary")
        with gr.Column():
            video = gr.Video(label="Result", interactive=False)
            summary = gr.Markdown()
            strip = gr.Image(label="Driving (top) and result (bottom)", interactive=False)
            chart = gr.Plot(show_label=False)
            template = gr.File(label="Motion template", interactive=False)
            with gr.Accordion("Full result (JSON)", open=False):
                details = gr.JSON()

    def animate(
        source_path, driving_path, engine_name, backend_name, prec, rel, opt, reg, mult, stitch, paste,
        frames_cap, batch_size, save, crop_face, p_deg, y_deg, r_deg, eye_on, eye_v, lip_on, lip_v, norm_lips,
        compile_nets, progress=gr.Progress(),
    ) -> tuple[Any, ...]:  # fmt: skip
        if not source_path:
            raise gr.Error("Upload a source portrait.")
        if not driving_path:
            raise gr.Error("Upload a driving video, image or motion template.")
        name = uuid.uuid4().hex[:12]
        config = PortraitConfig(
            source=Path(source_path),
            driving=Path(driving_path),
            out=settings.outputs_dir / f"portrait-{name}.mp4",
            device=settings.device,
            precision=None if prec == "auto" else prec,
            region=reg,
            relative=bool(rel),
            driving_option=opt,
            multiplier=float(mult),
            stitching=bool(stitch),
            paste_back=bool(paste),
            max_frames=int(frames_cap) or None,
            batch_size=int(batch_size),
            save_template=settings.outputs_dir / f"motion-{name}.npz" if save else None,
            backend=backend_name,
            engine=engine_name,
            crop=bool(crop_face),
            rotate=(float(p_deg), float(y_deg), float(r_deg)),
            eye_open=float(eye_v) if eye_on else None,
            lip_open=float(lip_v) if lip_on else None,
            normalize_lips=bool(norm_lips),
            compile=bool(compile_nets),
        )
        try:
            result = run_portrait(config, settings, progress=lambda f, label: progress(f, desc=label))
        except INPUT_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # keep serving; the log has the traceback
            log.exception("portrait animation failed")
            raise gr.Error(f"portrait animation failed: {type(exc).__name__}: {exc}") from None
        out = Path(result.outputs["video"])
        return (
            str(out),
            summary_markdown(result),
            side_by_side(Path(driving_path), out, result.metrics["frames"]),
            timing_figure(result),
            result.outputs.get("template"),
            result.to_dict(),
        )

    inputs = [source, driving, engine, backend, precision, relative, option, region, multiplier, stitching]
    inputs += [paste_back, max_frames, batch, keep_template, crop, pitch, yaw, roll, eyes_on, eyes, lips_on, lips]
    inputs += [normalize, compiled]
    run.click(
        animate,
        inputs,
        [video, summary, strip, chart, template, details],
        api_name="portrait",
        concurrency_id="gpu",
        concurrency_limit=1,
    )
    gr.Examples(
        examples=[[str(ASSETS / "face.jpg"), str(ASSETS / "driving.mp4")]],
        inputs=[source, driving],
        label="Example (public-domain portrait, a driving clip we made from it; see assets/PROVENANCE.md)",
    )
