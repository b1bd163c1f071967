"""JSON text that users send (sweep points in an API field, an uploaded report, a calibration file): every way
json.loads can fail on it is one InputError, never a traceback."""

from __future__ import annotations

import json
from typing import Any

from engine.core.errors import InputError


class _Repeated(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose key appears twice is refused: json.loads keeps the last value and drops the other unsaid
    (`[{"batch": 1, "batch": 8}]` ran batch 8 only)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Repeated(key)
        seen.add(key)
    return dict(pairs)


def parse_json(text: str | bytes, what: str) -> Any:
    """``text`` parsed; InputError naming ``what`` for broken JSON, a key given twice in one object, nesting deeper
    than Python's recursion limit and integers past Python's 4300-digit conversion limit."""
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except _Repeated as exc:
        raise InputError(f"{what}: the key {exc.args[0]!r} is given twice in one object; give it once") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{what}: nested too deeply to read") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise InputError(f"{what}: cannot be read: {exc}") from None


__all__ = ["parse_json"]
