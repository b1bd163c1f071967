"""JSON text that users send (sweep points in an API field, an uploaded report, a calibration file): every way
json.loads can fail on it is one InputError, never a traceback."""

from __future__ import annotations

import json
from typing import Any

from engine.core.errors import InputError


def parse_json(text: str | bytes, what: str) -> Any:
    """``text`` parsed; InputError naming ``what`` for broken JSON, nesting deeper than Python's recursion limit and
    integers past Python's 4300-digit conversion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{what}: nested too deeply to read") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise InputError(f"{what}: cannot be read: {exc}") from None


__all__ = ["parse_json"]
