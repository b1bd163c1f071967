"""`avatarbench` (also `python -m engine`): one subcommand per capability.

The engine's commands import no UI code. `serve` is the one exception by design: it hands
over to app.py, the composition root, and imports it only when that command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from engine.settings import SettingsError


def _cmd_doctor(args: argparse.Namespace) -> int:
    from engine.doctor import PROBLEM, run_doctor

    report = run_doctor()
    print(report.to_json() if args.json else report.render_text())
    return 1 if report.status == PROBLEM else 0


def _cmd_telemetry(args: argparse.Namespace) -> int:
    from engine.telemetry import TelemetrySampler, render_table

    sampler = TelemetrySampler(interval_s=args.interval, history_s=max(10.0, args.interval * 2))
    count = 0
    try:
        while True:
            # CPU percentages are measured between two samples: wait one interval (a short one
            # for a single reading) after the sampler starts.
            time.sleep(args.interval if args.watch else min(args.interval, 0.25))
            snap = sampler.sample_now()
            if args.json:
                print(json.dumps(snap.to_dict()), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\033[2J\033[H", end="")
                print(render_table(snap), flush=True)
            count += 1
            if not args.watch or (args.count and count >= args.count):
                return 0
    except KeyboardInterrupt:
        return 0


def _serve(app_args: list[str]) -> int:
    import app  # the composition root; see the module docstring

    return app.main(app_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatarbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", help="diagnose why the GPU is (not) used, with fixes")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.set_defaults(func=_cmd_doctor)

    tele = sub.add_parser("telemetry", help="nvidia-smi style GPU and host telemetry")
    tele.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    tele.add_argument("--json", action="store_true", help="one JSON object per sample")
    tele.add_argument("--interval", type=float, default=1.0, help="seconds between samples with --watch")
    tele.add_argument("--count", type=int, default=0, help="stop after N samples with --watch (0: never)")
    tele.set_defaults(func=_cmd_telemetry)

    # Listed for --help only: main() hands `serve ...` to app.py's own parser untouched.
    sub.add_parser("serve", help="start the web app (flags: --host --port --share --device --auth)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "interval", 1.0) <= 0:
        print("avatarbench: --interval must be > 0", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"avatarbench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
