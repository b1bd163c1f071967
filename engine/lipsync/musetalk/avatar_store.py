"""Prepared MuseTalk avatars kept on disk (DATA_DIR/avatars), so that they outlive the worker that made them.

A worker keeps its two latest avatars in memory (run.py); this is the next level: a new worker, a restarted app or
another worker on the same machine finds the avatar a face was prepared into before, and a later speech clip for it
costs whisper, UNet, VAE decode and blend only. Files are named by a digest of everything that changes an avatar
(the face's bytes, the frames prepared, the box options, the networks and the landmark model), written atomically
(save_avatar), and the least recently used go first once together they pass `budget_bytes`. A file that cannot be
read (damaged, another format version) is removed and the avatar prepared again. Workers that want the same avatar
at once take turns on a lock file beside it, so one prepares it and the others load what it stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from pathlib import Path

from engine.lipsync.musetalk.avatar import PreparedAvatar, load_avatar, save_avatar
from engine.models.checkpoints import CheckpointError

log = logging.getLogger(__name__)

FOLDER = "avatars"  # under DATA_DIR
BUDGET_BYTES = 2 * 2**30  # an avatar holds its frames (about 70 MB a second of 720p): a few clips' worth
SUFFIX = ".avatar"
LOCK_SUFFIX = ".lock"  # beside its avatar: held while it is looked for and prepared

# Whose avatars a run may reuse: its job's owner (set by the lip-sync job handler), None for the CLI's one user.
# Another owner's is never reused, from memory or disk: that a face came back prepared, and fast, told one person
# that another had lip-synced that very face.
AVATAR_OWNER: ContextVar[str | None] = ContextVar("avatar_owner", default=None)

# Where an avatar came from, as the result's metrics say.
MEMORY, DISK, PREPARED = "memory", "disk", "prepared"


class AvatarStore:
    def __init__(self, folder: str | os.PathLike, budget_bytes: int = BUDGET_BYTES) -> None:
        self.folder, self.budget_bytes = Path(folder), budget_bytes

    def path(self, key: Hashable) -> Path:
        """The file for `key` (its repr's digest: keys are tuples of text, numbers and dtypes)."""
        return self.folder / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + SUFFIX)

    def get_or_prepare(self, keys: list[Hashable], prepare: Callable[[], PreparedAvatar]) -> tuple[PreparedAvatar, str]:
        """The first stored avatar among `keys` (in order: those that serve equally well) and DISK, or a newly
        prepared one, now stored under the first key, and PREPARED. Another process preparing the first key's
        avatar is waited for (a cancelled job's worker is killed, which lets go of the lock)."""
        with _held(self.path(keys[0]).with_suffix(LOCK_SUFFIX)):
            return self._find_or_prepare(keys, prepare)

    def _find_or_prepare(
        self, keys: list[Hashable], prepare: Callable[[], PreparedAvatar]
    ) -> tuple[PreparedAvatar, str]:
        for key in keys:
            path = self.path(key)
            if not path.is_file():
                continue
            try:
                avatar = load_avatar(path)
            except (CheckpointError, OSError) as exc:  # damaged, or unreadable (its permissions)
                log.warning("a stored avatar could not be read, preparing it again: %s", exc)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: evicted last
            return avatar, DISK
        path = self.path(keys[0])
        avatar = prepare()
        try:  # a full disk, or a folder that cannot be made, costs the next run a preparation, never this its result
            self.folder.mkdir(parents=True, exist_ok=True)
            save_avatar(avatar, path)
        except (OSError, RuntimeError) as exc:  # RuntimeError: how torch.save's zip writer reports ENOSPC
            log.warning("could not keep the prepared avatar in %s: %s", self.folder, exc)
            with contextlib.suppress(OSError):
                path.with_name(path.name + ".partial").unlink(missing_ok=True)  # what an interrupted save left
            return avatar, PREPARED
        self.evict(keep=path)
        return avatar, PREPARED

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used avatars until the rest fit the budget (never `keep`); the removed."""
        files = []
        for path in self.folder.glob("*" + SUFFIX):
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        removed = []
        for _, size, path in sorted(files):
            if total <= self.budget_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                removed.append(path)
        self._remove_idle_locks()
        return removed

    def _remove_idle_locks(self) -> None:
        """Lock files of avatars no longer stored, where nobody holds them: one per face ever prepared would pile up.
        (A process that opened one just before it goes may prepare at the same time as another: work done twice, the
        stored file still whole, as saves are atomic.)"""
        for lock in self.folder.glob("*" + LOCK_SUFFIX):
            if lock.with_suffix(SUFFIX).exists():
                continue
            with contextlib.suppress(OSError), _held(lock, wait=False) as held:
                if held:
                    lock.unlink()


@contextlib.contextmanager
def _held(lock: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on `lock` (made where missing) for the block; whether it was taken (False: `wait` was
    False and another holds it, or there is no folder or no flock, and the block runs unlocked)."""
    try:
        import fcntl

        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+b")  # noqa: SIM115 - closed below, after the lock is let go
    except (ImportError, OSError):  # not POSIX, or the folder cannot be made (a file in its place)
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = ["BUDGET_BYTES", "DISK", "FOLDER", "MEMORY", "PREPARED", "AvatarStore"]
