"""The terminal progress bar every CLI command shares: the engine reports `progress(fraction, label)`, this draws it
on stderr with tqdm (so stdout stays clean for results and JSON). Where stderr is not a terminal (a log file, a
pipe, a CI job or a container's log), a redrawn bar is a carriage return per update piled into one endless line, so
there it writes plain lines instead: one when the stage changes or another tenth of the work is done."""

from __future__ import annotations

import re
import sys
from types import TracebackType

from tqdm import tqdm

STEPS = 1000  # the bar counts thousandths of the work


def _stage(label: str) -> str:
    """A label with its counts masked: "frame 12/250" and "frame 13/250" are one stage, so a log gets no line per
    frame."""
    return re.sub(r"\d+", "#", label)


def on_a_terminal() -> bool:
    return sys.stderr.isatty()


class ProgressBar:
    """A callable `progress(fraction, label)` drawing one bar; `quiet` draws nothing. Use it as a context manager so
    the bar is closed (and the cursor back on its own line) whether the work ends or fails."""

    def __init__(self, quiet: bool = False, label_width: int = 40) -> None:
        self.label_width = label_width
        self.lines = not quiet and not on_a_terminal()
        self.logged: tuple[int, str] | None = None  # (tenth of the work, stage) of the last line written
        self.bar = None if quiet or self.lines else tqdm(
            total=STEPS, file=sys.stderr, leave=True, dynamic_ncols=True,
            bar_format="{percentage:5.1f}% |{bar:30}| {desc}",
        )  # fmt: skip

    def __call__(self, fraction: float, label: str) -> None:
        done = round(STEPS * max(0.0, min(1.0, float(fraction))))
        label = label[: self.label_width].rstrip()
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_description_str(label, refresh=False)
            self.bar.refresh()
        elif self.lines and (mark := (done * 10 // STEPS, _stage(label))) != self.logged:
            self.logged = mark
            print(f"{100 * done / STEPS:5.1f}% {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.lines = False
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ProgressBar"]
