"""Files written whole or not at all, by any number of writers at once (worker processes on several GPUs filling
one cache, two visitors saving one price book)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` for the block to write; renamed over `path` when the block ends, removed when
    it raises. Each writer gets a name of its own: two writers sharing one `.tmp` name renamed each other's
    half-written file into place, or found their own gone. The file gets the permissions one made here gets
    (mkstemp's are 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def umask() -> int:
    """This process's umask, read without setting it (os.umask sets it for every thread at once)."""
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    return 0o022


__all__ = ["umask", "written_whole"]
