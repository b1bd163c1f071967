"""The terminal progress bar every CLI command shares: the engine reports `progress(fraction, label)`, this draws it
on stderr with tqdm (so stdout stays clean for results and JSON)."""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm

STEPS = 1000  # the bar counts thousandths of the work


class ProgressBar:
    """A callable `progress(fraction, label)` drawing one bar; `quiet` draws nothing. Use it as a context manager so
    the bar is closed (and the cursor back on its own line) whether the work ends or fails."""

    def __init__(self, quiet: bool = False, label_width: int = 40) -> None:
        self.label_width = label_width
        self.bar = None if quiet else tqdm(
            total=STEPS, file=sys.stderr, leave=True, dynamic_ncols=True,
            bar_format="{percentage:5.1f}% |{bar:30}| {desc}",
        )  # fmt: skip

    def __call__(self, fraction: float, label: str) -> None:
        if self.bar is None:
            return
        self.bar.n = round(STEPS * max(0.0, min(1.0, float(fraction))))
        self.bar.set_description_str(label[: self.label_width], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ProgressBar"]
