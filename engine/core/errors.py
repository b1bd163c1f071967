"""The one error base of the engine, so that every front end can tell our messages from bugs.

- `InputError`: the user can fix it (a bad file, an option out of range). One line; the CLI exits 2.
- `SetupError`: the machine or the installation cannot do what was asked (weights missing, no CUDA device, an
  execution provider that does not load). One line with what to do; the CLI exits 3.
- Anything that is not an `AvatarbenchError` is a bug: the CLI prints the traceback and exits 1, the web app
  shows "internal error" with an id that is also in the server log beside the traceback.
"""

from __future__ import annotations


class AvatarbenchError(Exception):
    """A failure we anticipated and can explain in one line."""


class InputError(AvatarbenchError, ValueError):
    """Bad input or options; the message says what was wrong and what is accepted."""


class OutputClash(InputError):
    """An output file that is also an input (a price file, a model's external data): refused, and never written,
    not even with the run's error."""


class SetupError(AvatarbenchError):
    """The machine or installation lacks something the request needs; the message says what and how to fix it."""


def one_line(exc: BaseException | str) -> str:
    """A library's error text on one line: ours quote it, and ONNX Runtime's, FFmpeg's or the Hub's run over
    several."""
    return " ".join(str(exc).split())


__all__ = ["AvatarbenchError", "InputError", "OutputClash", "SetupError", "one_line"]
