"""The shape of a CLI command, and the flags the commands share. The command table (engine/cli.py) lists every
room's commands; each room's cli.py declares its own with `Command`, so no room imports the table."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import InputError, OutputClash, SetupError
from engine.core.options import Config

if TYPE_CHECKING:
    from engine.core.results import RunResult


@dataclass(frozen=True)
class Command:
    name: str  # one word, or "group word" for a subcommand of a group (e.g. "onnx eval")
    help: str
    run: Callable[[argparse.Namespace], int | None]
    config: type[Config] | None = None  # its fields become flags; run() builds it with options.from_args
    flags: Callable[[argparse.ArgumentParser], None] | None = None  # the command's own front-end flags


@contextlib.contextmanager
def shown_if_interrupted(report_out: Callable[[dict[str, Any]], None]) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A `partial(report)` callback for a long measurement (a sweep, an evaluation): on Ctrl-C or SIGTERM inside the
    block, the last report it was given is shown and written by `report_out` before the interrupt goes on, so a
    run stopped after an hour keeps the hour's rows."""
    latest: list[dict[str, Any]] = []

    def keep(report: dict[str, Any]) -> None:
        latest[:] = [report]

    try:
        yield keep
    except KeyboardInterrupt:
        if latest:
            report_out(latest[0])
        raise


def write_json(path: str | None, text: str) -> None:
    """--json FILE: the full result, for machines (its folder made where missing, as --out's is)."""
    write_output(path, text, "--json")


def write_output(path: str | None, text: str, flag: str) -> None:
    """A command's text output ``flag`` FILE (--json, --csv), its folder made where missing; a file that cannot be
    written (a full disk, no permission) is one line, and the work itself is done and kept."""
    if path:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text.rstrip("\n") + "\n")
        except OSError as exc:
            raise InputError(f"{flag} {path} could not be written: {exc.strerror or exc}") from None


class FailedRunRecord:
    """--json FILE after a failed run: its error and exit status, so that a script reading the file never takes an
    earlier run's result for this one's. A file the run wrote itself (an interrupted sweep's rows, a report whose
    provider fell back) is kept: only a file as it was before the run is replaced."""

    def __init__(self, args: argparse.Namespace) -> None:
        value = getattr(args, "json", None)  # a FILE; a command whose --json prints to standard output has a bool
        self.path = Path(value) if isinstance(value, str) and value else None
        self.before = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat() if self.path else None
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size) if stat else None

    def write(self, exit_status: int, error: str) -> None:
        if self.path is None or self._stamp() != self.before:
            return
        try:
            write_json(str(self.path), strict_json({"error": error, "exit_status": exit_status}))
        except InputError as exc:  # the run's own error is the one to see; this one only follows it
            print(f"avatarbench: {exc}", file=sys.stderr)


def strict_json(value: Any) -> str:
    """JSON that every parser reads: a NaN or infinity (an evaluation's tolerance, an error metric of NaN outputs)
    becomes the string "NaN", "Infinity" or "-Infinity" rather than the bare token Python writes."""

    def plain(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(value), indent=2, allow_nan=False)


def refuse_fallbacks(fallbacks: list[str]) -> None:
    """Exit 3 once the report is out when an execution provider that was asked for did not load (ONNX Runtime then
    runs the session on the next provider in its chain, usually the CPU's): the figures are written and marked, but
    they do not measure what was asked, and a script must not read them as if they did.

    ``fallbacks``: one "what was asked ran on what" per provider (the reasons are in the warnings above)."""
    if fallbacks:
        raise SetupError(
            f"not measured where asked, the provider did not load (see the warnings): {'; '.join(fallbacks)}. "
            "The report marks these rows fell_back; `avatarbench doctor` says what to install"
        )


MAX_NAME_BYTES = 255  # one file or folder name, on every common file system


def check_output_paths(args: argparse.Namespace) -> None:
    """A command's output files (a video command's --out, any --json or --csv FILE), before any work: a folder, a
    place no file can be written, or a file the command also reads or writes (a hard or symbolic link to it too)
    is refused; it would end the run in an error after all its work, or overwrite an input or another output."""
    outputs = _outputs(args)
    empty = [name for name, value in outputs.items() if value == ""]
    if empty:  # it wrote nothing, silently
        raise InputError(f"--{empty[0]} needs a file name (it was given an empty one)")
    dash = [name for name, value in outputs.items() if isinstance(value, str) and value.strip() == "-"]
    if dash:  # it wrote a file named "-"; standard output carries the command's tables, so it cannot be the file
        raise InputError(f"--{dash[0]} -: '-' is not standard output here (that carries the tables); give a file path")
    outputs = {name: value for name, value in outputs.items() if isinstance(value, str) and value}
    for name, value in outputs.items():
        _check_writable(name, value)
    inputs = [  # (name, file): each of a list flag's files too (--images)
        (name, item)
        for name, value in vars(args).items()
        if name not in outputs
        for item in (value if isinstance(value, list | tuple) else [value])
        if isinstance(item, str | Path) and str(item) and _is(Path.is_file, item)
    ]
    if "out" in outputs and getattr(args, "stream", False) is True:  # the other outputs are not for it either
        others = [(name, value) for name, value in outputs.items() if name != "out"]
        _check_stream_folder(outputs["out"], [*inputs, *others])
    taken = {_identity(value): name for name, value in inputs}  # then each output as it is checked
    for name, value in outputs.items():
        other = taken.get(_identity(value))
        if other is not None:
            raise OutputClash(
                f"--{name} {value} is also --{other.replace('_', '-')}: writing it would overwrite that; "
                "give another file name"
            )
        taken[_identity(value)] = name


def check_outputs_spare(args: argparse.Namespace, what: str, files: list[Path]) -> None:
    """The outputs checked against files a command finds it reads only once it has looked inside its input (a
    model's external-data files beside it), before any work: writing one would destroy that input."""
    read = {_identity(file) for file in files}
    for name, value in _outputs(args).items():
        if isinstance(value, str) and value and _identity(value) in read:
            raise OutputClash(f"--{name} {value} is {what}: writing it would overwrite that; give another file name")


def _outputs(args: argparse.Namespace) -> dict[str, Any]:
    """Each output flag's value (None, or "" when given empty)."""
    out = args.out if getattr(args, "out_is_a_file", False) else None
    return {
        "out": out,
        # portrait's motion template goes beside the video, named after it
        "save-template": str(Path(out).with_suffix(".npz")) if out and getattr(args, "save_template", False) else None,
        **{flag: getattr(args, flag, None) for flag in ("json", "csv")},
    }


def _check_writable(name: str, value: str) -> None:
    """An output file name that can be written: not a folder, no name over the file system's limit, and its nearest
    existing folder one this process may write in (its missing folders are made when it is written)."""
    path = Path(value)
    if _is(Path.is_dir, path):
        raise InputError(f"--{name} {value} is a folder; give a file name")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
        raise InputError(f"--{name}: a file or folder name is over {MAX_NAME_BYTES} bytes, the file system's limit")
    folder = path.absolute().parent
    while not _is(Path.exists, folder) and folder != folder.parent:
        folder = folder.parent
    if not _is(Path.is_dir, folder):
        raise InputError(f"--{name} {value}: {folder} is a file, so no folder can be made there")
    if not os.access(folder, os.W_OK | os.X_OK) or (_is(Path.exists, path) and not os.access(path, os.W_OK)):
        raise InputError(f"--{name} {value} cannot be written here (no permission): give another place")
    try:  # what the permission bits do not tell (root anywhere, /proc, a file system that refuses new files)
        tempfile.NamedTemporaryFile(dir=folder, prefix=".avatarbench-probe-").close()
    except OSError as exc:
        raise InputError(
            f"--{name} {value} cannot be written in {folder} ({exc.strerror}): give another place"
        ) from None


def _check_stream_folder(out: str, inputs: list[tuple[str, str | Path]]) -> None:
    """--stream writes its segments and playlist into a folder beside --out: it must be one, and hold no input or
    other output (--json there replaced its playlist)."""
    from engine.core.hls import stream_folder

    folder = stream_folder(out)
    if _is(Path.exists, folder) and not _is(Path.is_dir, folder):
        raise InputError(f"--stream writes its live stream into {folder}, which is a file: move it or choose --out")
    for name, value in inputs:
        if Path(value).resolve().is_relative_to(folder.resolve()):
            raise InputError(f"--{name.replace('_', '-')} {value} is in {folder}, where --stream writes: move it")


def _identity(value: str | Path) -> Any:
    """What makes two names one file: its device and inode where it exists, under its own name or resolved (hard
    and symbolic links included, and `missing/../file`, which exists once the missing folder is made), else its
    resolved path."""
    for name in (value, Path(value).resolve()):
        try:
            found = os.stat(name)
        except (OSError, ValueError):
            continue
        return (found.st_dev, found.st_ino)
    return Path(value).resolve()


def _is(test: Callable[[Path], bool], value: str | Path) -> bool:
    """``test`` of ``value`` as a path, False for text that can be no path (too long a name, a NUL): every string
    option is looked at here, a JSON list of sweep points or a label included."""
    try:
        return test(Path(value))
    except (OSError, ValueError):
        return False


def add_context_flags(parser: argparse.ArgumentParser) -> None:
    """--label and --note: free text stored in a recorded result exactly as given (the only way to annotate a run:
    results are never edited after the command that measured them wrote them)."""
    parser.add_argument("--label", default="", help="a short name for this run, e.g. the machine and what else ran")
    parser.add_argument("--note", default="", help="anything a reader should know about this run, stored as given")


def command_line(program: str | None = None) -> str:
    """The command as it was really run, quoted for a shell: `program` and the arguments for a console script
    (`avatarbench`), else this interpreter, the script and its arguments."""
    return shlex.join([program, *sys.argv[1:]] if program else [Path(sys.executable).name, *sys.argv])


def output_flags(parser: argparse.ArgumentParser, json_help: str = "write the full result to this file") -> None:
    """The flags most commands share: --json FILE and --quiet (no progress bar)."""
    parser.add_argument("--json", metavar="FILE", help=json_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_flags(parser: argparse.ArgumentParser) -> None:
    """--out and --device for the commands that make a video: where the result goes and what runs it (the request
    itself is the config), plus --json and --quiet."""
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.set_defaults(out_is_a_file=True)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: AVATARBENCH_DEVICE, else auto)")
    output_flags(parser, "write the full result (timings, memory, warnings) to this file")


def warning_line(warning: str) -> str:
    """A warning as a command prints it: "warning: ..." (a loud one already starting "WARNING:" as it is)."""
    return warning if warning.lower().startswith("warning") else f"warning: {warning}"


def print_run(args: argparse.Namespace, result: RunResult, headline: str) -> int:
    """What a video-making command prints: warnings on stderr, the headline, the stage times; then --json's file
    (last: a report that cannot be written does not hide where the video went)."""
    for warning in result.warnings:
        print(warning_line(warning), file=sys.stderr)
    print(headline)
    for stage in result.stages:  # no rate beside a time shown as 0.000 s: it would be the timer's noise
        rate = f" ({stage.items_per_s:.2f}/s)" if stage.items_per_s and round(stage.seconds, 3) > 0 else ""
        print(f"  {stage.name:<16} {stage.seconds:8.3f} s{rate}")
    write_json(args.json, result.to_json(indent=2))
    return 0
