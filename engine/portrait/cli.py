"""`avatarbench portrait` (animate a portrait; the flags are PortraitConfig's fields) and `avatarbench
portrait-export` (write our LivePortrait networks as ONNX files)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.core.commands import Command, print_run, run_flags
from engine.core.errors import InputError
from engine.core.options import from_args
from engine.core.words import counted
from engine.portrait.config import PortraitConfig


def _portrait(args: argparse.Namespace) -> int:
    from engine.core.device import resolve_device
    from engine.core.hls import stream_note
    from engine.core.memory import keep_freed_memory
    from engine.core.progress import ProgressBar
    from engine.core.settings import get_settings
    from engine.jobs.measure import describe, measured
    from engine.portrait.pipeline import run_portrait

    config = from_args(PortraitConfig, args)
    keep_freed_memory()  # this process runs the model: glibc keeps its freed scratch memory (engine/core/memory.py)
    device = str(resolve_device(args.device or get_settings().device).device)  # the one the pipeline resolves
    with ProgressBar(args.quiet) as bar, measured(device) as window:
        result = run_portrait(config, args.out, progress=bar, device=args.device)
    result.measurement = window.figures()
    m = result.metrics
    headline = (f"{result.outputs['video']}: {counted(m['frames'], 'frame')} at {m['fps']:g} fps, {m['engine']} "
                f"({m['backend']}) on {result.device} ({result.precision})")  # fmt: skip
    if "template" in result.outputs:
        headline += f"\nmotion template: {result.outputs['template']}"
    return print_run(args, result, f"{headline}\n{describe(result.measurement)}{stream_note(config.stream, args.out)}")


def _export(args: argparse.Namespace) -> int:
    from engine.core.media import missing_folders, remove_empty_folders
    from engine.core.settings import get_settings
    from engine.portrait.onnx_backend import export_onnx
    from engine.portrait.weights import weights_folder

    out = Path(args.out.strip())
    if not args.out.strip():
        raise InputError("--out is empty: give the folder for the .onnx files")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder for the .onnx files")
    made = missing_folders(out)
    try:  # before the weights load and the export, not after
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {args.out}: the folder cannot be made ({exc.strerror or exc})") from None
    try:  # the weights found as for portrait
        paths = export_onnx(weights_folder(args.weights, get_settings()), out, args.precision)
    except BaseException:  # no weights, a file that cannot load, Ctrl-C: no empty folder left as if it held an export
        remove_empty_folders(made)
        raise
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", help="the official pretrained_weights folder (or its liveportrait/ subfolder) or hf:OWNER/REPO "
        "(default: found as for portrait: AVATARBENCH_LIVEPORTRAIT_DIR, the weights folder, the Hub's cache)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="folder for the .onnx files")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "fp16"],
        help="fp16: appearance, warping and decoder in fp16 with GridSample and the motion extractor in fp32",
    )  # fmt: skip


COMMANDS = [
    Command("portrait", "animate a portrait with a driving video, image or motion template", _portrait,
            PortraitConfig, run_flags),
    Command("portrait-export", "write our LivePortrait networks as ONNX (opset 20)", _export, flags=_export_flags),
]  # fmt: skip
