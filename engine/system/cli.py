"""`avatarbench doctor` and `avatarbench telemetry`: why the GPU is (not) used, and what every GPU is doing."""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.core.commands import Command
from engine.core.errors import InputError


def _doctor(args: argparse.Namespace) -> int:
    from engine.system.checks import PROBLEM
    from engine.system.doctor import run_doctor

    report = run_doctor()
    print(report.to_json() if args.json else report.render_text())
    return 1 if report.status == PROBLEM else 0


def _doctor_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable report")


def _telemetry(args: argparse.Namespace) -> int:
    from engine.core.settings import get_settings
    from engine.system.telemetry import TelemetrySampler, render_table

    # --interval or --count alone asks for samples over time, as nvidia-smi's -l does (they were ignored: one sample)
    watch = args.watch or args.interval is not None or args.count is not None  # `--count 0` too, as -h says
    args.count = args.count or 0
    if args.interval is None:
        args.interval = get_settings().telemetry_interval_s
    if not 0.1 <= args.interval <= 60:  # the range AVATARBENCH_TELEMETRY_INTERVAL takes (NaN fails too)
        raise InputError(f"--interval must be 0.1..60 seconds, got {args.interval:g}")
    if args.count < 0:
        raise InputError(f"--count must be 0 (never stop) or more samples, got {args.count}")
    sampler = TelemetrySampler(interval_s=args.interval, history_s=max(10.0, args.interval * 2))
    count = 0
    try:
        while True:
            # CPU percentages are measured between two samples: wait one interval (a short one for a single
            # reading) after the sampler starts.
            time.sleep(args.interval if watch else min(args.interval, 0.25))
            snap = sampler.sample_now()
            if args.json:
                print(json.dumps(snap.to_dict()), flush=True)
            else:
                if watch and sys.stdout.isatty():
                    print("\033[2J\033[H", end="")
                print(render_table(snap), flush=True)
            count += 1
            if not watch or (args.count and count >= args.count):
                return 0
    except KeyboardInterrupt:  # how --watch is meant to end
        return 0


def _telemetry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    parser.add_argument("--interval", type=float, help="seconds between samples; given alone, it watches too "
                        "(default: AVATARBENCH_TELEMETRY_INTERVAL, else 1)")  # fmt: skip
    parser.add_argument("--count", type=int, help="stop after N samples; given alone, it watches until then "
                        "(0: never stop)")  # fmt: skip


COMMANDS = [
    Command("doctor", "diagnose why the GPU is (not) used, with fixes", _doctor, flags=_doctor_flags),
    Command("telemetry", "nvidia-smi style GPU and host telemetry", _telemetry, flags=_telemetry_flags),
]
