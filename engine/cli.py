"""The engine's command table: one subcommand per capability, each room's commands listed in its own cli.py.

A capability's flags are made from its config (engine/core/options.py), so they carry the same names, defaults and
checks as the API; a command adds only its front-end flags (where to write, how to print). app.py adds `serve` and
is the `avatarbench` console script; `python -m engine` runs this table without it (no web app).

Exit codes: 0 done; 1 a bug (the traceback is printed) or a command's own "no" (the doctor found a problem, a plan
does not fit); 2 bad input (one line); 3 the machine or installation lacks something (one line; after the report,
when a measuring command's execution provider fell back); 130 Ctrl-C; 141 its reader went away (`| head`: the
work is done, the rest of the text unread); 143 SIGTERM (stopped as Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from engine.core.commands import Command, FailedRunRecord, check_output_paths
from engine.core.errors import AvatarbenchError, InputError, OutputClash
from engine.core.options import add_arguments

EXIT_INPUT, EXIT_SETUP, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_TERMINATED = 2, 3, 130, 141, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, a batch scheduler) raised in the main thread as Ctrl-C is, so that a run
    stops and its temporary files are removed as they are for Ctrl-C (by default SIGTERM ends Python at once)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs from the main thread, unless something else already handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def engine_commands() -> list[Command]:
    from engine.bench.cli import COMMANDS as BENCH
    from engine.core.cli import COMMANDS as WEIGHTS
    from engine.lipsync.cli import COMMANDS as LIPSYNC
    from engine.onnx.cli import COMMANDS as ONNX
    from engine.portrait.cli import COMMANDS as PORTRAIT
    from engine.system.cli import COMMANDS as SYSTEM

    return [*SYSTEM, *WEIGHTS, *LIPSYNC, *PORTRAIT, *ONNX, *BENCH]


_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    about = "Run, evaluate and tune GPU inference of talking-head models."
    parser = argparse.ArgumentParser(prog="avatarbench", description=about)
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in commands:
        group, _, word = command.name.rpartition(" ")
        if group and group not in groups:
            holder = top.add_parser(group, help=f"{group} commands: see `avatarbench {group} -h`")
            groups[group] = holder.add_subparsers(dest=f"{group}_command", required=True, metavar="COMMAND")
        sub = (groups[group] if group else top).add_parser(word, help=command.help, description=command.help)
        # A value that starts with a minus and a digit is a value, not a flag: `--pads -5,0,0,0` (argparse only
        # takes plain negative numbers so, and no flag of ours looks like one).
        sub._negative_number_matcher = _NEGATIVE_VALUE
        if command.config is not None:
            add_arguments(sub, command.config)
        if command.flags is not None:
            command.flags(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None, extra: Sequence[Command] = ()) -> int:
    """Parse, run, and turn our errors into one line and an exit code; anything else is a bug and keeps its
    traceback."""
    parser = build_parser([*engine_commands(), *extra])
    args, unknown = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if unknown:  # upstream's `--pads 0 10 0 0` left one to guess that ours takes commas
        numbers = all(_NEGATIVE_VALUE.match(w) or w.replace(".", "", 1).isdigit() for w in unknown)
        hint = "; several numbers after one flag are written with commas (--pads 0,10,0,0)" if numbers else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    failed: FailedRunRecord | None = None  # set once the outputs are checked: a refused --json is not written

    def fail(exit_status: int, error: str, record: bool = True) -> int:
        print(f"avatarbench: {error}", file=sys.stderr)
        if failed and record:
            failed.write(exit_status, error)
        return exit_status

    try:
        with _sigterm_as_interrupt():
            check_output_paths(args)
            failed = FailedRunRecord(args)
            code = int(args.run(args) or 0)
            sys.stdout.flush()  # text still buffered meets a reader that went away here, not at exit
            return code
    except BrokenPipeError:
        _stdout_to_nowhere()
        return EXIT_BROKEN_PIPE
    except InputError as exc:
        return fail(EXIT_INPUT, str(exc), record=not isinstance(exc, OutputClash))
    except AvatarbenchError as exc:
        return fail(EXIT_SETUP, str(exc))
    except PermissionError as exc:  # the machine's doing, not a bug: a folder or file this user may not read
        where = f" {exc.filename}" if exc.filename else ""
        return fail(EXIT_SETUP, f"permission denied:{where}: give this user access, or point the setting that names "
                    "it elsewhere")  # fmt: skip
    except Terminated:
        return fail(EXIT_TERMINATED, "terminated (SIGTERM)")
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # a bug: its traceback follows; the file says so too
        if failed:
            failed.write(1, f"a bug ({type(exc).__name__}: {exc}); the traceback is on standard error")
        raise


def _stdout_to_nowhere() -> None:
    """`avatarbench ... | head`: the reader took what it wanted and left. Python would print a traceback for the next
    write, and another for the text still buffered at exit; what is left goes nowhere instead (as `yes | head`)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
