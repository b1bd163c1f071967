"""How counts, sizes and lists read in messages: one way in every room, the CLI and the tabs."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """'1 frame', '2 frames', '3 face boxes' (a headline read '1 frames at 25 fps' for every portrait driven by an
    image)."""
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{number} {noun}s"


def format_bytes(n: int) -> str:
    """Bytes for a message: 1.5 GiB, 12.0 MiB, 300 bytes."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def listed(items: list[str]) -> str:
    """'roll', 'scale and place', 'roll, scale and place'."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)
