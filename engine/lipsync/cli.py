"""`avatarbench lipsync`: a face and speech in, a lip-synced MP4 out; the flags are LipSyncConfig's fields.
`avatarbench avatar`: a face prepared once into a MuseTalk avatar that later lip-syncs of it reuse."""

from __future__ import annotations

import argparse

from engine.core.commands import Command, output_flags, print_run, run_flags
from engine.core.options import from_args
from engine.core.results import RunResult
from engine.core.words import counted
from engine.lipsync.config import AvatarConfig, LipSyncConfig, bbox_shift_words, precision_summary


def _lipsync(args: argparse.Namespace) -> int:
    from engine.core.openmp import sleep_at_barriers

    sleep_at_barriers()  # before torch loads: the codec threads need the cores too (engine/core/openmp.py)
    from engine.core.device import resolve_device
    from engine.core.hls import stream_note
    from engine.core.memory import keep_freed_memory
    from engine.core.progress import ProgressBar
    from engine.core.settings import get_settings
    from engine.jobs.measure import describe, measured
    from engine.lipsync.pipeline import run_lipsync

    config = from_args(LipSyncConfig, args)
    keep_freed_memory()  # this process runs the model: glibc keeps its freed scratch memory (engine/core/memory.py)
    device = str(resolve_device(args.device or get_settings().device).device)  # the one the pipeline resolves
    with ProgressBar(args.quiet) as bar, measured(device) as window:
        result = run_lipsync(config, args.out, progress=bar, device=args.device)
    result.measurement = window.figures()
    m = result.metrics
    frames = counted(m["frames"], "frame")
    return print_run(args, result, f"{result.outputs['video']}: {frames} at {m['fps']:g} fps by "
                     f"{m['engine_label']} on {result.device} ({result.precision}), batch {m['batch_size']}, "
                     f"{m['faces_missed']} without a face\n{shift_line(result)}{precision_line(result)}"
                     f"{describe(result.measurement)}{stream_note(config.stream, args.out)}")  # fmt: skip


def shift_line(result: RunResult) -> str:
    """MuseTalk's --bbox-shift range for the face, as a line (empty without one)."""
    words = bbox_shift_words(result.metrics)
    return f"{words}\n" if words else ""


def precision_line(result: RunResult) -> str:
    """What --check-precision found, as a line (empty when it did not run)."""
    check = result.metrics.get("precision_check")
    return f"{precision_summary(result.precision, check)}\n" if check else ""


def _avatar(args: argparse.Namespace) -> int:
    from engine.core.memory import keep_freed_memory
    from engine.core.progress import ProgressBar
    from engine.core.settings import get_settings
    from engine.lipsync.musetalk.run import prepare_stored_avatar

    config = from_args(AvatarConfig, args)
    keep_freed_memory()
    with ProgressBar(args.quiet) as bar:
        result = prepare_stored_avatar(config, get_settings(), device=args.device, progress=bar)
    m = result.metrics
    return print_run(args, result, f"{config.face}: a MuseTalk avatar of {counted(m['frames'], 'frame')}, "
                     f"{m['faces']} with a face ({m['avatar_source']}), kept for `lipsync --engine musetalk` of this "
                     f"face with these options\n{shift_line(result)}".rstrip())  # fmt: skip


def _avatar_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: AVATARBENCH_DEVICE, else auto)")
    output_flags(parser, "write the full result (timings, warnings) to this file")


COMMANDS = [
    Command("lipsync", "lip-sync a face image or video to speech (writes an MP4)", _lipsync, LipSyncConfig, run_flags),
    Command(
        "avatar",
        "prepare a face once into a MuseTalk avatar that later lip-syncs reuse",
        _avatar,
        AvatarConfig,
        _avatar_flags,
    ),
]
