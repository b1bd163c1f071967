"""`avatarbench lipsync`: a face and speech in, a lip-synced MP4 out; the flags are LipSyncConfig's fields."""

from __future__ import annotations

import argparse

from engine.core.commands import Command, print_run, run_flags
from engine.core.options import from_args
from engine.lipsync.config import LipSyncConfig


def _lipsync(args: argparse.Namespace) -> int:
    from engine.core.progress import ProgressBar
    from engine.lipsync.pipeline import run_lipsync

    config = from_args(LipSyncConfig, args)
    with ProgressBar(args.quiet) as bar:
        result = run_lipsync(config, args.out, progress=bar, device=args.device)
    m = result.metrics
    return print_run(args, result, f"{result.outputs['video']}: {m['frames']} frames at {m['fps']:g} fps by "
                     f"{m['engine_label']} on {result.device} ({result.precision}), batch {m['batch_size']}, "
                     f"{m['faces_missed']} without a face")  # fmt: skip


COMMANDS = [
    Command(
        "lipsync", "lip-sync a face image or video to speech (writes an MP4)", _lipsync, LipSyncConfig, run_flags
    ),
]
