"""engine/core/files.py: a file written whole, by several writers at once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.core.files import umask, written_whole


def test_two_writers_of_one_file_at_once_both_finish_and_the_last_one_wins(tmp_path: Path) -> None:
    """The second writer starts and finishes while the first is writing (two workers filling one cache): with one
    shared temporary name, the second renamed the first's file away and the first found nothing to rename."""
    target = tmp_path / "cache" / "graph.onnx"
    with written_whole(target) as first:
        first.write_text("first")
        with written_whole(target) as second:
            second.write_text("second")
        assert target.read_text() == "second"
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["graph.onnx"]  # no temporary file left


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "prices.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="export failed"), written_whole(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("export failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["prices.json"]


def test_the_file_gets_the_permissions_a_file_made_here_gets(tmp_path: Path) -> None:
    """Not the temporary file's 0600: a cache shared by the users of a group stays readable."""
    old = os.umask(0o027)
    try:
        assert umask() == 0o027
        with written_whole(tmp_path / "graph.onnx") as tmp:
            tmp.write_text("graph")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "graph.onnx").stat().st_mode) == 0o640
