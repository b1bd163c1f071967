"""What portrait runs keep between them in this process: the loaded networks (one set: they hold hundreds of
MB of device memory) and, per source image, its appearance features and keypoints, so re-running a portrait
with other options or another driver skips loading and the source pass (the per-frame hot path is then warping
+ decoding only). Entries are keyed by everything that changes them; `clear()` frees them."""

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


NETWORKS = LruCache(1)
SOURCES = LruCache(8)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the same image uploaded twice under other names is one source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clear() -> None:
    """Forget every cached network and source (their device memory is freed once no run holds them)."""
    NETWORKS.clear()
    SOURCES.clear()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["NETWORKS", "SOURCES", "LruCache", "clear", "file_digest"]
