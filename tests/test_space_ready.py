"""The repository can be pushed to a Hugging Face Space as it is: the Hub refuses binary files pushed as plain git
objects and any file over 10 MB outside LFS/Xet, so every tracked binary file is routed through LFS by
.gitattributes and no plain file is near the limit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HUB_PLAIN_LIMIT = 10 * 2**20  # bytes: the Hub's limit for a file outside LFS/Xet


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def _is_binary(path: Path) -> bool:
    return b"\0" in path.read_bytes()[:8192]


def _lfs_routed(names: list[str]) -> set[str]:
    out = subprocess.run(["git", "check-attr", "filter", "--stdin", "-z"], cwd=ROOT, input="\0".join(names).encode(),
                         capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    # -z output: path, attribute, value, repeated
    return {out[i] for i in range(0, len(out) - 2, 3) if out[i + 2] == "lfs"}


def test_every_binary_file_goes_through_lfs() -> None:
    names = _tracked()
    binaries = [n for n in names if _is_binary(ROOT / n)]
    assert binaries, "the examples are binary files: the check must see them"
    assert sorted(set(binaries) - _lfs_routed(binaries)) == []


def test_no_plain_file_reaches_the_hubs_limit() -> None:
    names = _tracked()
    routed = _lfs_routed(names)
    big = [n for n in names if n not in routed and (ROOT / n).stat().st_size >= HUB_PLAIN_LIMIT]
    assert big == []
