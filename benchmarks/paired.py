"""Side-by-side runs of whole processes: each side a separate command, run in turn (A B A B ...), each run's wall time
and peak RSS, and medians and spreads of each side and of the per-pair ratios.

Why whole processes: a comparison with another project's script is fair only when both pay what a user pays
(interpreter start-up, imports, model loading, their process settings), and peak RSS is only comparable per
process. Why interleaved pairs: on a machine whose speed drifts (other work, thermal limits, a noisy neighbour) a
ratio taken within a pair of neighbouring runs drifts much less than either side's own times, so the median of the
per-pair ratios is the figure to quote, with its spread beside it.

Peak RSS comes from the kernel (`os.wait4`'s ru_maxrss: the largest resident set of the process and of the children
it waited for), not from sampling, so a short spike is not missed; a small launcher starts each command, so that the
benchmark's own memory is not counted in it (see `run_measured`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ru_maxrss is in KiB on Linux and in bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024
_LOG_TAIL = 4000


@dataclass(frozen=True)
class ProcessRun:
    """One finished command: what it cost and what it said."""

    command: tuple[str, ...]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    output: str  # stdout and stderr, interleaved as written

    def tail(self, chars: int = _LOG_TAIL) -> str:
        return self.output[-chars:]


class ProcessFailed(RuntimeError):
    """A measured command exited with an error; the message ends with the end of its output."""

    def __init__(self, run: ProcessRun) -> None:
        super().__init__(f"{run.command[0]} exited with {run.returncode}:\n{run.tail()}")
        self.run = run


def run_measured(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> ProcessRun:
    """Run `command` to its end: wall time from start to exit, peak RSS from the kernel. Past `timeout_s` it is
    killed (returncode < 0). Output goes to a file (a pipe would have to be drained while the launcher waits).

    Why a launcher: Linux keeps a process's pre-exec memory high-water mark in its ru_maxrss, and a child started
    from this process begins as a copy of it (or shares it, with vfork), so its ru_maxrss would be at least ours:
    a benchmark holding models would inflate every figure. The command is started instead by a bare `python -S`
    (about 10 MiB), which waits for it and reports its wall time and ru_maxrss."""
    with tempfile.TemporaryDirectory(prefix="paired-") as folder:
        report, log_path = Path(folder) / "report.json", Path(folder) / "output.log"
        with log_path.open("wb") as log:
            start = time.perf_counter()
            launcher = subprocess.Popen(
                [sys.executable, "-S", "-c", _LAUNCHER, str(report), *map(str, command)],
                cwd=cwd, env=None if env is None else dict(env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # the launcher and the command form one group: a timeout kills both
            )  # fmt: skip
            try:
                launcher.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(launcher)
            except BaseException:  # interrupted: leave nothing running
                _kill_group(launcher)
                raise
            wall = time.perf_counter() - start
        output = log_path.read_bytes().decode("utf-8", errors="replace")
        figures = json.loads(report.read_text()) if report.exists() else None
    if figures is None:  # killed, or the command could not be started (the launcher's traceback is in the output)
        return ProcessRun(tuple(map(str, command)), launcher.returncode or 1, wall, 0, output)
    peak = figures["maxrss"] * _RSS_UNIT
    return ProcessRun(tuple(map(str, command)), figures["returncode"], figures["wall_s"], peak, output)


def _kill_group(launcher: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()


# Started with `python -S -c`: imports only what a bare interpreter has, so that its own footprint stays small.
_LAUNCHER = """
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(command[0], command, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
figures = {"returncode": os.waitstatus_to_exitcode(status), "wall_s": wall, "maxrss": usage.ru_maxrss}
with open(report, "w") as out:
    json.dump(figures, out)
"""


def alternation(names: Sequence[str], rounds: int) -> list[str]:
    """The order the sides run in: each round runs every side once, in the given order (A B A B ... for two)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"sides must be distinct and at least one: {list(names)}")
    return [name for _ in range(rounds) for name in names]


def interleaved(
    sides: Mapping[str, Callable[[int], dict[str, Any]]],
    rounds: int,
    report: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Each side's figures, one dict per round, from calling `sides[name](round)` in alternation order.
    `report(name, round, figures)` sees each run as it ends (for a live table)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for name in alternation(list(sides), rounds):
        round_ = len(runs[name])
        figures = sides[name](round_)
        runs[name].append(figures)
        if report:
            report(name, round_, figures)
    return runs


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, extremes and quartiles (the inclusive method: with two or three values they lie between the extremes)
    of the values; `n` says how many."""
    if not values:
        raise ValueError("no values")
    data = sorted(float(v) for v in values)
    q1, q3 = (statistics.quantiles(data, n=4, method="inclusive")[i] for i in (0, 2)) if len(data) > 1 else data * 2
    return {"n": len(data), "median": statistics.median(data), "min": data[0], "max": data[-1], "q1": q1, "q3": q3}


def side_summary(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The spread of each figure in `keys` over one side's runs (runs without that figure are left out)."""
    out = {}
    for key in keys:
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            out[key] = spread(values)
    return out


def pair_ratios(
    numerator: Sequence[Mapping[str, Any]], denominator: Sequence[Mapping[str, Any]], key: str
) -> dict[str, Any]:
    """numerator[i][key] / denominator[i][key] for each round i (the runs of one round ran next to each other), and
    the spread of those ratios: the median ratio is the figure to quote."""
    if len(numerator) != len(denominator):
        raise ValueError(f"{len(numerator)} runs against {len(denominator)}: ratios need whole rounds")
    ratios = [float(a[key]) / float(b[key]) for a, b in zip(numerator, denominator, strict=True)]
    return {"per_pair": ratios, **spread(ratios)}


def compare(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    reference: str,
    time_keys: Sequence[str] = ("wall_s",),
    memory_key: str = "peak_rss_bytes",
) -> dict[str, Any]:
    """Every side's runs and spreads, and each other side's per-round ratios against `reference`: for each of
    `time_keys` reference / side (above 1: the side is faster), for `memory_key` side / reference (below 1: the
    side's peak is smaller). Sides without a figure in some run get no ratio for it."""
    keys = [*time_keys, memory_key]
    out: dict[str, Any] = {
        "sides": {name: {"runs": list(side), "summary": side_summary(side, keys)} for name, side in runs.items()},
        "ratios": {},
    }
    for name, side in runs.items():
        if name == reference:
            continue
        ratios = {}
        for key in time_keys:
            if all(r.get(key) for r in (*side, *runs[reference])):
                ratios[key] = {"of": f"{reference} / {name}", **pair_ratios(runs[reference], side, key)}
        if all(r.get(memory_key) for r in (*side, *runs[reference])):
            ratios[memory_key] = {"of": f"{name} / {reference}", **pair_ratios(side, runs[reference], memory_key)}
        out["ratios"][name] = ratios
    return out


def table_lines(comparison: Mapping[str, Any], time_keys: Sequence[str] = ("wall_s",)) -> list[str]:
    """A comparison as text: each side's medians (and extremes), then each ratio's median (and extremes)."""
    lines = []
    for name, side in comparison["sides"].items():
        summary = side["summary"]
        cells = [f"{key} {describe_spread(summary[key], ' s')}" for key in time_keys if key in summary]
        if "peak_rss_bytes" in summary:
            peak = {k: v / 2**30 if k != "n" else v for k, v in summary["peak_rss_bytes"].items()}
            cells.append(f"peak RSS {describe_spread(peak, ' GiB')}")
        lines.append(f"  {name:<22} " + "  ".join(cells))
    for ratios in comparison["ratios"].values():
        for key, ratio in ratios.items():
            lines.append(f"  {key:<15} {ratio['of']:<26} {describe_spread(ratio, 'x')}  per pair: "
                         + ", ".join(f"{r:.2f}" for r in ratio["per_pair"]))  # fmt: skip
    return lines


def describe_spread(stats: Mapping[str, Any], unit: str = "", digits: int = 2) -> str:
    """'12.30 s (11.90 … 12.80, n=3)': the median and the extremes."""
    fmt = f"{{:.{digits}f}}"
    low, high = fmt.format(stats["min"]), fmt.format(stats["max"])
    return f"{fmt.format(stats['median'])}{unit} ({low} … {high}, n={stats['n']})"


def avatarbench_command() -> list[str]:
    """Our console script beside this interpreter (what users run: its process settings are theirs), else
    `python -m engine` (the same command table, without the web app's `serve`)."""
    script = Path(sys.executable).with_name("avatarbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def command_text(command: Sequence[str], names: Mapping[str, str]) -> str:
    """The command as one shell line, each text in `names` replaced by its name (a temporary folder by `<work>`, the
    repository by nothing): readable, and the same on every machine. Longer texts are replaced first."""
    line = shlex.join(str(part) for part in command)
    for text in sorted(names, key=len, reverse=True):
        line = line.replace(text, names[text])
    return line


def add_side_by_side_flags(parser: argparse.ArgumentParser, checkout: str, skipped: str) -> None:
    """--upstream PATH (a `checkout` of the upstream repository), --pairs N, --only-side-by-side (skips `skipped`),
    --file-tag TEXT (side-by-side ratios depend on the CPU, so one day may bring several machines' files)."""
    parser.add_argument("--upstream", type=Path, help=f"a {checkout} checkout to run side by side with ours")
    parser.add_argument("--pairs", type=int, default=3, help="side-by-side rounds (each side once per round)")
    parser.add_argument("--only-side-by-side", action="store_true", help=f"with --upstream: no {skipped}")
    parser.add_argument("--file-tag", default="", help="added to the result file's name, e.g. the machine, when "
                        "two machines' runs share a device and a date")  # fmt: skip


def file_tag_suffix(args: argparse.Namespace) -> str:
    """What --file-tag adds to the result file's name ("" without one)."""
    return f"-{args.file_tag}" if args.file_tag else ""


def check_side_by_side_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, marker: str) -> None:
    """The side-by-side flags make sense together, and --upstream holds `marker` (a file of the checkout)."""
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if args.only_side_by_side and not args.upstream:
        parser.error("--only-side-by-side needs --upstream PATH")
    if args.upstream and not (args.upstream / marker).is_file():
        parser.error(f"--upstream {args.upstream}: no {marker} there (give the upstream checkout)")


__all__ = [
    "ProcessFailed",
    "ProcessRun",
    "add_side_by_side_flags",
    "alternation",
    "avatarbench_command",
    "check_side_by_side_flags",
    "command_text",
    "compare",
    "describe_spread",
    "file_tag_suffix",
    "interleaved",
    "pair_ratios",
    "run_measured",
    "side_summary",
    "spread",
    "table_lines",
]
