"""The writer thread both lip-sync engines encode through, so that encoding overlaps the work that makes frames.

Why a thread: the encoder (colour conversion, libx264 or NVENC, the muxer) releases the GIL, so while it compresses
one group of frames the calling thread generates and pastes the next. On a GPU machine the CPU's work is what a run
waits for: MuseTalk's encode took about as long as its networks on the H200 when both ran in one thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from engine.core.results import RunResult


class EncoderThread:
    """Frames go in groups through a queue one group deep and are written in order; errors come back on the next
    put or on finish.

    One group waiting: every group queued is full frames in memory, and one is enough to keep the threads
    overlapped. `close=False` leaves the writer open (more frames follow: a split job's segment). The time spent
    writing is the result's "encode" stage, which overlaps the other stages."""

    def __init__(
        self, writer: Any, result: RunResult, close: bool = True, name: str = "lipsync-encode", group: int = 8
    ) -> None:
        self.writer, self.result, self.close = writer, result, close
        self.group = group  # frames that put_frame gathers before handing them over
        self._gathered: list[np.ndarray] = []
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (frames := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                with self.result.stage("encode", items=len(frames)):
                    for frame in frames:
                        self.writer.write(frame)
            except BaseException as exc:
                self.error = exc

    def put(self, frames: list[np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(frames)

    def put_frame(self, frame: np.ndarray) -> None:
        """One frame, handed over with the next ones `group` at a time (for a source that makes frames one by one:
        a few at a time keep the queue's memory small and reach a live stream soon)."""
        self._gathered.append(frame)
        if len(self._gathered) >= self.group:
            self.put(self._gathered)
            self._gathered = []

    def finish(self) -> None:
        """Wait for every frame put, then close the writer (unless close=False)."""
        if self._gathered:
            self.put(self._gathered)
            self._gathered = []
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.close:
            with self.result.stage("encode"):
                self.writer.close()

    def cancel(self) -> None:
        """Stop after the group in hand and delete the partial file."""
        self.error = self.error or RuntimeError("cancelled")
        if self.thread.is_alive():
            self.queue.put(None)  # the thread drains the queue once an error is set
            self.thread.join()
        self.writer.abort()
