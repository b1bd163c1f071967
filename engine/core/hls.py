"""A run's live stream: the MP4's own encoded packets, copied as they come into an HLS playlist of short MPEG-TS
segments beside it, so that the first seconds can be watched (and fetched through the API) while the rest is made.

No second encode: VideoWriter hands every H.264 and AAC packet it muxes into the MP4 to `HlsCopy` as well, and
FFmpeg's HLS muxer cuts a segment at the first keyframe at or after each multiple of SEGMENT_SECONDS (the writer
forces a keyframe there). A segment file appears under its final name only once it is complete and the playlist is
replaced whole each time (FFmpeg's temp_file flag), so a reader never sees half a segment; `#EXT-X-ENDLIST` says the run
ended. The segments decode to exactly the MP4's frames. Any HLS player (ffplay, VLC, Safari, hls.js) plays
`index.m3u8` while it grows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.options import option

PLAYLIST = "index.m3u8"
SEGMENT_SECONDS = 1.0  # short: the first segment is the wait before anything can be shown
SEGMENT_PATTERN = "part-%05d.ts"
ENDED = "#EXT-X-ENDLIST"
STREAM_SUFFIX = ".stream"


def stream_option() -> Any:
    """The `stream` field of a config whose run writes a video (lip-sync, portrait): its CLI flag and API value."""
    return option(
        False, help="also write a live HLS stream beside the output (for talk.mp4: talk.stream/index.m3u8): the first "
        "seconds can be watched while the rest is made",
    )  # fmt: skip


def stream_folder(out: str | Path) -> Path:
    """Where a run writing `out` (an .mp4) keeps its live stream: `<out without .mp4>.stream/`."""
    out = Path(out)
    return out.with_name(out.stem + STREAM_SUFFIX)


def stream_note(streamed: bool, out: str | Path) -> str:
    """The line a command prints after its result when it streamed: where the playlist is."""
    return f"\nlive stream (HLS, as it was made): {stream_folder(out) / PLAYLIST}" if streamed else ""


class HlsCopy:
    """An HLS muxer fed with copies of another container's packets. Its streams are made from the source streams
    after their encoders are open, so H.264's parameter sets (in the encoder's extradata, as MP4 wants them) reach
    the MPEG-TS muxer, which puts them back in front of every keyframe."""

    def __init__(self, folder: Path, streams: list[Any]) -> None:
        import av

        folder.mkdir(parents=True, exist_ok=True)
        # an earlier run's stream to the same output goes first: its finished playlist played the old video; a
        # killed run's half-written segment and playlist (FFmpeg's temp_file names, `*.tmp`) go with it
        for old in (folder / PLAYLIST, *folder.glob(SEGMENT_PATTERN.replace("%05d", "*")), *folder.glob("*.tmp")):
            old.unlink(missing_ok=True)
        self.folder = folder
        self._container = av.open(
            str(folder / PLAYLIST), mode="w", format="hls",
            options={"hls_time": f"{SEGMENT_SECONDS:g}", "hls_list_size": "0", "hls_playlist_type": "event",
                     "hls_flags": "temp_file+independent_segments",
                     "hls_segment_filename": str(folder / SEGMENT_PATTERN)},
        )  # fmt: skip
        self._streams = {}
        for source in streams:
            copy = self._container.add_stream_from_template(source)
            copy.codec_context.extradata = source.codec_context.extradata
            self._streams[source.index] = copy

    def mux(self, packet: Any) -> None:
        """A copy of `packet` (muxing hands a packet's data over, so the original stays the caller's)."""
        import av

        if packet.size == 0:
            return
        copy = av.Packet(bytes(packet))
        copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
        copy.is_keyframe = packet.is_keyframe
        copy.stream = self._streams[packet.stream.index]
        self._container.mux(copy)

    def close(self) -> None:
        """The last segment and `#EXT-X-ENDLIST` (also after a failure: the job's status says how it ended). A run
        that failed before its first packet leaves no folder: an empty talk.stream/ stayed beside no talk.mp4."""
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when nothing was streamed


@dataclass(frozen=True)
class LiveStream:
    """What a live stream holds so far: its finished segments in order and their lengths, and whether it ended."""

    segments: tuple[Path, ...]
    seconds: tuple[float, ...]
    ended: bool

    @property
    def duration(self) -> float:
        return sum(self.seconds)


NOTHING_YET = LiveStream((), (), False)


def read_stream(folder: Path) -> LiveStream:
    """The playlist in `folder` as it stands (nothing yet when it is not there)."""
    try:
        text = (folder / PLAYLIST).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return NOTHING_YET
    segments: list[Path] = []
    seconds: list[float] = []
    length = 0.0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXTINF:"):
            with contextlib.suppress(ValueError):
                length = float(line[len("#EXTINF:") :].split(",")[0])
        elif line and not line.startswith("#"):
            name = Path(line).name  # the muxer writes bare names; never follow a path out of the folder
            segments.append(folder / name)
            seconds.append(length)
    return LiveStream(tuple(segments), tuple(seconds), ENDED in text)


def join_segments(segments: list[Path] | tuple[Path, ...], out: Path) -> Path:
    """The segments so far as one MP4, packets copied (no encode): what a player without HLS can show while the
    run goes on."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=out.parent)  # two viewers, two files
    os.close(handle)
    partial = Path(name)
    try:
        with av.open(str(partial), mode="w", format="mp4") as target:
            streams: dict[int, Any] = {}
            for path in segments:
                with av.open(str(path)) as source:
                    if not streams:
                        streams = {s.index: target.add_stream_from_template(s) for s in source.streams if
                                   s.type in ("video", "audio")}  # fmt: skip
                    for packet in source.demux(*source.streams):
                        if packet.dts is None or packet.stream.index not in streams:
                            continue  # the demuxer's empty flush packets
                        packet.stream = streams[packet.stream.index]
                        target.mux(packet)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)  # what a failed join left
    return out


__all__ = [
    "PLAYLIST",
    "SEGMENT_SECONDS",
    "STREAM_SUFFIX",
    "HlsCopy",
    "LiveStream",
    "join_segments",
    "read_stream",
    "stream_folder",
    "stream_note",
    "stream_option",
]
