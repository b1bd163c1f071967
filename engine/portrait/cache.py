"""What portrait runs keep between them in this process: the loaded networks (one set: they hold hundreds of
MB of device memory) and, per source image, its appearance features and keypoints, so re-running a portrait
with other options or another driver skips loading and the source pass (the per-frame hot path is then warping
+ decoding only). Entries are keyed by everything that changes them; `clear()` frees them."""

from __future__ import annotations

from engine.core.cache import LruCache, file_digest

NETWORKS = LruCache(1)
SOURCES = LruCache(8)


def clear() -> None:
    """Forget every cached network and source (their device memory is freed once no run holds them)."""
    NETWORKS.clear()
    SOURCES.clear()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["NETWORKS", "SOURCES", "LruCache", "clear", "file_digest"]
