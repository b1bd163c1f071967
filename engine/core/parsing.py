"""Small text formats shared by the command line and the web forms ("1,8,32", "batch=8, seq=128")."""

from __future__ import annotations


def int_list(text: str, what: str = "values", minimum: int = 0) -> list[int]:
    """Comma- or space-separated whole numbers, at least one, each >= minimum."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of whole numbers, e.g. 1,8,32") from None
    if not values:
        raise ValueError(f"{what}: give at least one whole number, e.g. 1,8,32")
    low = [v for v in values if v < minimum]
    if low:
        raise ValueError(f"{what}: {low} are below {minimum}")
    return values


def name_value(text: str) -> tuple[str, int]:
    """NAME=VALUE with a whole number >= 1 (a symbolic dimension's value)."""
    name, sep, value = str(text).partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise ValueError(f"{text!r} is not NAME=VALUE with a whole number >= 1, e.g. seq=128")
    return name, int(value)


def name_values(text: str) -> dict[str, int]:
    """Comma-separated NAME=VALUE pairs; empty text gives {}. A name given twice is refused."""
    out: dict[str, int] = {}
    for part in (p for p in str(text or "").split(",") if p.strip()):
        name, value = name_value(part)
        if name in out:
            raise ValueError(f"{name} is given twice")
        out[name] = value
    return out
