"""The encoding thread both lip-sync engines write through: frames in order, the caller free while a group is
being written, errors back to the caller, and a cancelled run's partial file deleted."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.core.results import RunResult
from engine.lipsync.encoding import EncoderThread


class _Writer:
    """A VideoWriter stand-in that records what reached it, and from which thread."""

    def __init__(self, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.frames: list[int] = []
        self.threads: set[str] = set()
        self.closed = self.aborted = False
        self.fail_at, self.gate = fail_at, gate

    def write(self, frame: np.ndarray) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise OSError("disk full")
        self.frames.append(int(frame[0, 0, 0]))
        self.threads.add(threading.current_thread().name)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def _group(first: int, count: int) -> list[np.ndarray]:
    return [np.full((2, 2, 3), i, np.uint8) for i in range(first, first + count)]


def test_frames_are_written_in_order_in_the_encoding_thread_and_the_writer_closed() -> None:
    writer, result = _Writer(), RunResult()
    encoder = EncoderThread(writer, result, name="test-encode")
    for first in range(0, 20, 8):
        encoder.put(_group(first, min(8, 20 - first)))
    encoder.finish()
    assert writer.frames == list(range(20)) and writer.closed and not writer.aborted
    assert writer.threads == {"test-encode"}
    assert [(s.name, s.items) for s in result.stages] == [("encode", 20)]


def test_frames_put_one_by_one_go_over_in_groups_and_the_rest_on_finish() -> None:
    writer, sizes = _Writer(), []
    encoder = EncoderThread(writer, RunResult(), group=4)
    put = encoder.put
    encoder.put = lambda frames: (sizes.append(len(frames)), put(frames))  # type: ignore[method-assign]
    for frame in _group(0, 10):
        encoder.put_frame(frame)
    assert sizes == [4, 4]
    encoder.finish()
    assert sizes == [4, 4, 2] and writer.frames == list(range(10)) and writer.closed


def test_the_caller_goes_on_while_a_group_is_written() -> None:
    gate = threading.Event()
    writer = _Writer(gate=gate)
    encoder = EncoderThread(writer, RunResult())
    encoder.put(_group(0, 2))  # taken by the thread, which waits inside write()
    encoder.put(_group(2, 2))  # queued: put returns while the first group is still being written
    assert writer.frames == [] and encoder.queue.full()  # one group waits, no more: each is whole frames in memory
    gate.set()
    encoder.finish()
    assert writer.frames == [0, 1, 2, 3]


def test_a_segment_leaves_the_writer_open_for_the_next() -> None:
    writer = _Writer()
    encoder = EncoderThread(writer, RunResult(), close=False)
    encoder.put(_group(0, 3))
    encoder.finish()
    assert writer.frames == [0, 1, 2] and not writer.closed


def test_a_write_error_reaches_the_caller_and_cancel_deletes_the_partial_file() -> None:
    writer = _Writer(fail_at=3)
    encoder = EncoderThread(writer, RunResult())
    encoder.put(_group(0, 8))
    with pytest.raises(OSError, match="disk full"):
        for first in range(8, 80, 8):  # a later put, or finish, raises it
            encoder.put(_group(first, 8))
        encoder.finish()
    encoder.cancel()
    assert writer.frames == [0, 1, 2] and writer.aborted and not writer.closed
    assert not encoder.thread.is_alive()


def test_the_error_of_the_last_group_reaches_finish_and_the_writer_is_not_closed() -> None:
    """A write that fails in the last group must not end as a closed, playable file of the frames before it."""
    writer = _Writer(fail_at=3)
    encoder = EncoderThread(writer, RunResult())
    encoder.put(_group(0, 8))
    with pytest.raises(OSError, match="disk full"):
        encoder.finish()
    assert writer.frames == [0, 1, 2] and not writer.closed


def test_after_a_write_error_the_next_put_raises_it() -> None:
    """The caller stops making frames at its next group, not after the whole video."""
    writer = _Writer(fail_at=0)
    encoder = EncoderThread(writer, RunResult())
    encoder.put(_group(0, 2))
    deadline = time.monotonic() + 10
    while encoder.error is None and time.monotonic() < deadline:  # the encoding thread meets the error
        time.sleep(0.01)
    with pytest.raises(OSError, match="disk full"):
        encoder.put(_group(2, 2))
    encoder.cancel()
    assert writer.frames == [] and writer.aborted


def test_cancel_stops_after_the_group_in_hand() -> None:
    gate = threading.Event()
    writer = _Writer(gate=gate)
    encoder = EncoderThread(writer, RunResult())
    encoder.put(_group(0, 2))
    encoder.put(_group(2, 2))
    threading.Timer(0.2, gate.set).start()
    encoder.cancel()
    assert writer.frames == [0, 1] and writer.aborted and not encoder.thread.is_alive()
