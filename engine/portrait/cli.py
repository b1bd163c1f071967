"""`avatarbench portrait` (animate a portrait) and `avatarbench portrait export` (write the ONNX files)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cmd_portrait(args: argparse.Namespace) -> int:
    from engine.cli import _progress_bar
    from engine.portrait.pipeline import PortraitConfig, run_portrait

    config = PortraitConfig(
        source=Path(args.source),
        driving=Path(args.driving),
        out=Path(args.out),
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        region=args.region,
        relative=not args.absolute,
        driving_option=args.driving_option,
        multiplier=args.multiplier,
        stitching=not args.no_stitching,
        paste_back=not args.no_paste_back,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        save_template=Path(args.save_template) if args.save_template else None,
        backend=args.backend,
        engine=args.engine,
        crop=not args.no_crop,
        rotate=(args.pitch, args.yaw, args.roll),
        eye_open=args.eye_open,
        lip_open=args.lip_open,
        landmarks=args.landmarks,
        normalize_lips=not args.no_normalize_lips,
        compile=args.compile,
    )
    result = run_portrait(config, progress=None if args.quiet else _progress_bar)
    if args.json:
        Path(args.json).write_text(result.to_json(indent=2) + "\n")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    m = result.metrics
    print(f"{result.outputs['video']}: {m['frames']} frames at {m['fps']:g} fps, {m['engine']} ({m['backend']}) on "
          f"{result.device} ({result.precision})")  # fmt: skip
    for stage in result.stages:
        rate = f" ({stage.items_per_s:.2f}/s)" if stage.items_per_s else ""
        print(f"  {stage.name:<16} {stage.seconds:8.3f} s{rate}")
    return 0


def export_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="avatarbench portrait export", description="write LivePortrait as ONNX")
    parser.add_argument("--weights", required=True, help="folder with base_models/ and retargeting_models/")
    parser.add_argument("--out", required=True, help="folder for the .onnx files")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "fp16"],
        help="fp16: appearance, warping and decoder in fp16 with GridSample and the motion extractor in fp32",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from engine.portrait.onnx_backend import export_onnx

    paths = export_onnx(args.weights, args.out, args.precision)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def add_commands(sub: Any) -> None:
    from engine.portrait.motion import REGIONS
    from engine.portrait.pipeline import BACKENDS, DRIVING_OPTIONS, ENGINES

    p = sub.add_parser(
        "portrait", help="animate a portrait with a driving video, image or motion template (also: portrait export)"
    )
    p.add_argument("--source", required=True, help="the portrait (an image)")
    p.add_argument("--driving", required=True, help="driving video, image, or motion template (.npz)")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument(
        "--weights",
        help="LivePortrait weights folder, or hf:KwaiVGI/LivePortrait to download (default: "
        "AVATARBENCH_LIVEPORTRAIT_DIR, then the Hub's local cache)",
    )
    p.add_argument("--engine", default="auto", choices=ENGINES, help="auto: liveportrait when its weights are found")
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--precision", choices=["fp32", "fp16", "bf16"],
        help="default fp16 on CUDA; ONNX backends: fp32 or fp16 (the motion extractor always fp32)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the warping module and decoder (torch)")
    p.add_argument("--region", default="all", choices=REGIONS, help="what the driver moves")
    p.add_argument("--absolute", action="store_true", help="the driver's own pose, not motion relative to frame 0")
    p.add_argument("--driving-option", default="expression-friendly", choices=DRIVING_OPTIONS)
    p.add_argument("--multiplier", type=float, default=1.0, help="scale of the driving motion (0..3)")
    p.add_argument("--no-stitching", action="store_true", help="skip the stitching network")
    p.add_argument("--no-paste-back", action="store_true", help="write the 512x512 crop instead of the full image")
    p.add_argument("--no-crop", action="store_true", help="use the whole source image, not a crop around the face")
    p.add_argument("--pitch", type=float, default=0.0, help="extra head pitch in degrees (-45..45)")
    p.add_argument("--yaw", type=float, default=0.0, help="extra head yaw in degrees (-45..45)")
    p.add_argument("--roll", type=float, default=0.0, help="extra head roll in degrees (-45..45)")
    p.add_argument("--eye-open", type=float, help="retarget the eyes to this openness, 0 (closed)..0.8")
    p.add_argument("--lip-open", type=float, help="retarget the lips to this openness, 0 (closed)..0.8")
    p.add_argument("--landmarks", help="LivePortrait's landmark.onnx for retargeting (default: in --weights)")
    p.add_argument(
        "--no-normalize-lips", action="store_true", help="keep an open source mouth open (default: closed first)"
    )
    p.add_argument("--max-frames", type=int, help="stop after N driving frames")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--save-template", help="also save the driving motion here (.npz) for reuse as --driving")
    p.add_argument("--json", help="write the full result (timings, memory, warnings) to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_portrait)
