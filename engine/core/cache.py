"""Small in-process caches: what a worker keeps between jobs (loaded networks, prepared inputs), keyed by everything
that changes them, and the file digest such keys use (the same upload under another name is the same input)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class LruCache:
    """A small thread-safe keyed cache that keeps the most recently used `size` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> tuple[T, bool]:
        """The cached value and True, or the newly built (and now cached) value and False. Builds are
        serialised, so two runs never load the same networks twice."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], True
            value = build()
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value, False

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[Any]:
        """The cached values, least recently used first."""
        with self._lock:
            return list(self._items.values())


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the same image uploaded twice under other names is one source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_stamp(path: str | Path) -> tuple[str, int, int]:
    """(path, size, modification time in ns): what changes when a file is replaced in place, without reading it (a
    3.4 GB UNet is not hashed on every run). Keys of what was built from a file (networks, a prepared avatar)."""
    found = Path(path).stat()
    return str(path), found.st_size, found.st_mtime_ns


__all__ = ["LruCache", "file_digest", "file_stamp"]
