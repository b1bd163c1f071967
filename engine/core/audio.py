"""Audio for the lip-sync engines: decoding anything to 16 kHz mono, Wav2Lip's mel features, and a loudness track.

The mel spectrogram must match what Wav2Lip was trained on (Rudrabha/Wav2Lip `audio.py` with its
`hparams.py`), or the model sees features it never learnt. That upstream code ran on librosa 0.7,
whose centred STFT padded by reflection; librosa >= 0.10 pads with zeros, which quietly changes the
first and last two frames. So the framing and FFT are done here in numpy and do not depend on the
installed librosa; the Slaney mel filterbank is written out here too (checked against librosa in the tests).

Heavy imports (PyAV, scipy) happen inside the functions, so importing the engine stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import InputError
from engine.core.media import check_file, ffmpeg_reason, is_image
from engine.core.resample import KAISER_BEST, METHODS, resample
from engine.core.words import counted

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 200  # mel frames are 80 per second at 16 kHz
MEL_STEP = 16  # mel frames per Wav2Lip chunk

# Wav2Lip hparams.py: the features the released checkpoints were trained on.
N_FFT = 800
WIN_LENGTH = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second

ACCEPTED_FORMATS = "audio (wav, mp3, m4a/aac, ogg vorbis/opus, flac) or a video with sound (mp4, mkv, webm, mov)"

# Codec padding (AAC priming, MP3 frames) can add a few tens of ms to a clip cut at exactly the limit.
_LIMIT_SLACK_S = 0.1
# Frames per STFT block, so an hour of audio never needs an (frames x 800) float64 matrix at once.
_STFT_BLOCK = 4096

# frame_energy's mapping from dBFS to [0, 1] and its smoothing, chosen for a mouth-opening signal.
_ENERGY_FLOOR_DB = -50.0  # at or below this a frame counts as silence (0)
_ENERGY_MIN_RANGE_DB = 25.0  # the ceiling is never closer to the floor than this (-25 dBFS at least)
_ENERGY_CEIL_PERCENTILE = 95.0
_ATTACK_S = 0.015
_RELEASE_S = 0.08
_FILTER_PAD = 2048  # zeros around the clip so the zero-phase filter works on clips of any length


class AudioError(InputError):
    """Bad audio input; the message says what was wrong and what is accepted."""


# --------------------------------------------------------------------------- decoding


CLIP_WARNING_PEAK = 1.05  # past this the sound track's clipping is audible, and not a decoder's overshoot


def load_audio(
    path: str | os.PathLike,
    max_seconds: float | None = None,
    resampler: str = KAISER_BEST,
    sixteen_bit: bool = False,
) -> np.ndarray:
    """Decode a file's first audio stream to float32 mono 16 kHz, resampled as upstream's librosa did
    (engine/core/resample.py: Wav2Lip's `kaiser_best`, the default, or MuseTalk's `soxr_hq`).

    Decoding streams frame by frame and gives up as soon as `max_seconds` is passed, so an
    hour-long upload is rejected after decoding only the allowed amount. Samples past full scale (float files,
    lossy decoders' overshoot) are kept, as librosa.load keeps them, unless `sixteen_bit`: then each channel is
    first made 16-bit PCM as FFmpeg writes a WAV (`as_sixteen_bit`), as upstream's speech was wherever FFmpeg
    decoded it for librosa: Wav2Lip's ffmpeg conversion (`wav2lip_converts`), MuseTalk's librosa through audioread
    (`librosa_via_ffmpeg`). The video's sound track is clipped either way (`loudness_warning` says when that
    matters).
    """
    file = Path(os.fspath(path))
    check_file(file, "audio", f"expected an audio or video file ({ACCEPTED_FORMATS})", AudioError)
    if resampler not in METHODS:
        raise ValueError(f"resampler {resampler!r} is not one of {', '.join(METHODS)}")
    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise AudioError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    mono, rate = _decode(file, max_seconds, channels=False, sixteen_bit=sixteen_bit)
    if mono.size == 0:
        raise AudioError(f"{file.name}: the audio stream is empty (0 samples decoded); a clip with sound is needed")
    wav = resample(mono, rate, SAMPLE_RATE, resampler)
    _check_finite(wav, file.name)
    return np.ascontiguousarray(wav, dtype=np.float32)


@dataclass(frozen=True)
class Sound:
    """A file's sound as a video's track carries it: float32 samples (n, channels), mono or stereo, at `rate`."""

    samples: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def fitted(self, seconds: float, start_s: float = 0.0, cut: bool = False) -> Sound:
        """The sound from `start_s` (negative: that much silence first), padded with silence to `seconds`, and cut
        there too when `cut`."""
        first = round(start_s * self.rate)
        samples = self.samples[max(0, first) :]
        if first < 0:
            samples = np.concatenate([np.zeros((-first, samples.shape[1]), np.float32), samples])
        want = round(seconds * self.rate)
        if cut:
            samples = samples[:want]
        if len(samples) < want:
            samples = np.concatenate([samples, np.zeros((want - len(samples), samples.shape[1]), np.float32)])
        return Sound(np.ascontiguousarray(samples), self.rate)


# The rates AAC (FFmpeg's encoder) takes; a sound at another rate is resampled to 48 kHz for the track.
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def load_sound(path: str | os.PathLike, max_seconds: float | None = None) -> Sound:
    """A file's first audio stream for a video's sound track, at its own rate and channels, as upstream's ffmpeg
    mux keeps them (the features' 16 kHz mono would cut everything above 8 kHz and fold stereo): more than two
    channels are mixed down to stereo (FFmpeg's matrix), and a rate AAC cannot carry becomes 48 kHz."""
    file = Path(os.fspath(path))
    check_file(file, "audio", f"expected an audio or video file ({ACCEPTED_FORMATS})", AudioError)
    samples, rate = _decode(file, max_seconds, channels=True)
    if samples.size == 0:
        raise AudioError(f"{file.name}: the audio stream is empty (0 samples decoded); a clip with sound is needed")
    _check_finite(samples, file.name)
    return Sound(np.ascontiguousarray(samples, dtype=np.float32), rate)


def wav2lip_converts(path: str | os.PathLike) -> bool:
    """Whether upstream Wav2Lip's inference.py would turn this speech file into a 16-bit WAV with the ffmpeg CLI
    before librosa reads it: every name not ending in ".wav", as it tests it (".WAV" and a video's sound too)."""
    return not os.fspath(path).endswith(".wav")


# FFmpeg's demuxers for the files libsndfile 1.2 (soundfile 0.12, MuseTalk's pin) reads itself, as librosa.load tries
# first: anything else (MP4/M4A, AAC, WebM/Matroska, AVI...) reaches librosa through audioread's ffmpeg, as 16-bit PCM.
_LIBSNDFILE_FORMATS = frozenset({"wav", "w64", "flac", "ogg", "mp3", "aiff", "au", "caf", "voc", "ircam", "nistsphere"})


def librosa_via_ffmpeg(path: str | os.PathLike) -> bool:
    """Whether librosa.load (0.11, with soundfile 0.12) would hand this file to audioread, whose ffmpeg decodes it
    to 16-bit PCM, because libsndfile cannot read it; decided by the container, as libsndfile decides by content."""
    import av

    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as container:
            names = set((container.format.name or "").split(","))
    except (av.error.FFmpegError, UnicodeDecodeError, OSError):
        return False  # load_audio says what is wrong with it
    return not names & _LIBSNDFILE_FORMATS


def as_sixteen_bit(samples: np.ndarray, source_format: str) -> np.ndarray:
    """Float samples (decoded from `source_format`) as FFmpeg's pcm_s16le makes them, read back as floats: floats
    rounded to the nearest step and clipped at full scale (a lossy decoder's overshoot past 1.0 goes), 32-bit
    integers cut to their top 16 bits; 16-bit and 8-bit sources are unchanged."""
    scaled = samples * np.float32(32768)
    steps = np.floor(scaled) if source_format in ("s32", "s32p") else np.rint(scaled)
    return (np.clip(steps, -32768, 32767) / np.float32(32768)).astype(np.float32)


def _decode(file: Path, max_seconds: float | None, channels: bool, sixteen_bit: bool = False) -> tuple[np.ndarray, int]:
    """Demux and decode only the audio stream; PyAV errors become AudioError."""
    import av

    try:
        container = av.open(str(file), metadata_errors="ignore")
    except av.error.PermissionError as exc:
        raise AudioError(f"{file.name} could not be read: {ffmpeg_reason(exc)}") from exc
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise _undecodable(file, exc) from exc
    with container:
        if not container.streams.audio:
            if is_image(file) or _holds_an_image(container):  # by its name, or by its content (a PNG named .wav)
                raise AudioError(f"{file.name} is an image; speech comes from an audio file or a video with sound")
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise AudioError(
                f"{file.name} has no audio stream (streams found: {', '.join(kinds)}); "
                "a video without sound cannot drive lip-sync: use a file with an audio track"
            )
        stream = container.streams.audio[0]
        try:
            return _decode_stream(container, stream, file, max_seconds, channels, sixteen_bit)
        except av.error.FFmpegError as exc:
            raise _undecodable(file, exc) from exc


def _holds_an_image(container: Any) -> bool:
    """Whether FFmpeg read the file as a still image (its image demuxers: png_pipe, jpeg_pipe, ..., image2)."""
    name = container.format.name or ""
    return name == "image2" or name.endswith("_pipe")


def _decode_stream(
    container, stream, file: Path, max_seconds: float | None, channels: bool, sixteen_bit: bool = False
) -> tuple[np.ndarray, int]:
    """The stream as float32 samples and their rate: without `channels`, mono at the stream's own rate, as
    upstream's librosa.load mixed it before resampling (channels averaged: FFmpeg's downmix would weight each
    0.707, 3 dB louder, and clip a loud stereo peak; load_audio then resamples with that librosa's default filter,
    engine/core/resample.py, as FFmpeg's resampler changed the features' top mel bands, to librosa's length,
    ceil(n * 16000 / rate)); with `channels`, (n, 1 or 2) as load_sound keeps them. `sixteen_bit`: each channel
    made 16-bit PCM first (`as_sixteen_bit`, from the format the decoder gave).

    In MP4/MOV the samples past the edit list's end are dropped: AAC's end padding, up to a codec frame, which
    FFmpeg 9 drops and older FFmpeg, PyAV's included, decodes (a video frame too many). Decoding stops as soon as
    `max_seconds` is passed, so an hour-long upload costs only the allowed amount."""
    import av

    converter, shape = None, None  # to float, channels interleaved, at the first frame's rate (a new converter
    # where a concatenated file changes rate or layout): PyAV reads planar frames of 8 or more channels past their
    # end (a crash, not an error), and interleaved ones correctly
    pieces: list[np.ndarray] = []
    native = 0  # samples kept, at `rate`
    rate = 0
    edit_end = _EditEnd(container, stream)

    layout: str | None = None  # with `channels`: every frame in the first one's layout (stereo past two)

    def keep(frames, source_format: str) -> None:
        nonlocal native
        for frame in frames:
            samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[: edit_end.room(native, rate)]
            if sixteen_bit:
                samples = as_sixteen_bit(samples, source_format)
            pieces.append(samples if channels else samples.mean(axis=1, dtype=np.float32))
            native += len(samples)
            if max_seconds is not None and native > (max_seconds + _LIMIT_SLACK_S) * rate:
                raise _too_long(file, stream, container, native / rate, max_seconds)

    packets = skipped = 0
    for packet in container.demux(stream):
        edit_end.saw(packet)
        packets += 1
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            # FFmpeg's command line (upstream's decoder) skips a packet it cannot decode and goes on: two MP3s
            # joined with `cat` hold the second one's ID3 tag mid-stream. A file with no good packet first, or
            # more bad packets than good, stays refused.
            skipped += 1
            if converter is None or 2 * skipped > packets:
                raise
            continue
        for frame in frames:
            edit_end.starts_at(frame)
            if converter is None:
                rate = _checked_rate(frame.sample_rate, file)
                if channels:
                    rate = rate if rate in AAC_RATES else 48000
                    layout = "mono" if len(frame.layout.channels) == 1 else "stereo"
            if (frame.sample_rate, frame.layout.name, frame.format.name) != shape:
                if converter is not None:
                    keep(converter.resample(None), shape[2])
                converter = av.AudioResampler(format="flt", layout=layout, rate=rate)
                shape = (frame.sample_rate, frame.layout.name, frame.format.name)
            keep(converter.resample(frame), shape[2])
    if converter is not None:
        keep(converter.resample(None), shape[2])
    if skipped:
        log.warning("%s: %d of %d audio packets could not be decoded and were skipped", file.name, skipped, packets)
    if not native:
        return np.zeros((0, 1) if channels else 0, dtype=np.float32), rate or SAMPLE_RATE
    return np.concatenate(pieces), rate


MIN_RATE, MAX_RATE = 1000, 192_000  # sample rates accepted (speech; past them resampling is costly and pointless)


def _checked_rate(rate: int, file: Path) -> int:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"{file.name}: its sample rate, {rate} Hz, is outside {MIN_RATE}..{MAX_RATE} Hz; convert the speech "
            "(e.g. to 48 kHz)"
        )
    return rate


class _EditEnd:
    """Where an MP4/MOV audio stream's edit list ends, in samples from its first decoded one: the demuxer shortens
    the last packet's duration to that end, so the latest packet end seen so far bounds what is decoded so far."""

    def __init__(self, container, stream) -> None:
        self.active = "mov" in container.format.name.split(",") and stream.time_base is not None
        self.time_base = stream.time_base
        self.end: int | None = None  # in the stream's time base
        self.first: int | None = None

    def saw(self, packet) -> None:
        if self.active and packet.pts is not None and packet.duration:
            self.end = max(self.end or packet.pts, packet.pts + packet.duration)

    def starts_at(self, frame) -> None:
        if self.first is None and frame.pts is not None:
            self.first = frame.pts

    def room(self, passed: int, rate: int) -> int | None:
        """How many more samples at `rate` fit before the end (None: no limit known)."""
        if not self.active or self.end is None or self.first is None:
            return None
        return max(0, round((self.end - self.first) * self.time_base * rate) - passed)


def _undecodable(file: Path, exc: Exception) -> AudioError:
    return AudioError(
        f"{file.name} could not be decoded as audio or video ({ffmpeg_reason(exc)}); "
        f"the file may be corrupt or in an unsupported format. Accepted: {ACCEPTED_FORMATS}"
    )


def _too_long(file: Path, stream, container, decoded_s: float, max_seconds: float | None) -> AudioError:
    declared = _declared_seconds(stream, container)
    if declared is not None and declared > decoded_s:
        length = f"{declared:.1f} s long"
    else:  # no declared duration, or an estimate that is plainly wrong
        length = f"longer than {decoded_s:.1f} s"
    return AudioError(f"{file.name} is {length}; the limit is {max_seconds:g} s (AVATARBENCH_MAX_SECONDS): trim the "
                      "audio or raise the limit")  # fmt: skip


def _declared_seconds(stream, container) -> float | None:
    """The duration the container claims, only for the error message (it can be an estimate)."""
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_finite(wav: np.ndarray, what: str) -> None:
    if not np.isfinite(wav).all():
        bad = int(np.count_nonzero(~np.isfinite(wav)))
        raise AudioError(
            f"{what}: {bad} samples are NaN or infinite (or, in a 64-bit float file, past float32's ±3.4e38); only "
            "finite samples are accepted"
        )


def audio_streams_warning(path: str | os.PathLike) -> str | None:
    """A warning when the speech file holds several audio streams (a video's languages or commentary): the first is
    taken, as upstream's ffmpeg and librosa take it, and nothing said which. None for one stream, or none."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = list(container.streams.audio)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None  # the decode has said why already
    if len(streams) < 2:
        return None
    tags = [", ".join(v for v in (s.metadata.get("language"), s.metadata.get("title")) if v) for s in streams]
    names = "; ".join(f"#{i} {tag}" if tag else f"#{i}" for i, tag in enumerate(tags))
    return (
        f"{Path(path).name} has {len(streams)} audio streams ({names}): the first (#0) is the speech; give a file "
        "with only the one you mean to use another"
    )


def cut_short_warning(path: str | os.PathLike, decoded_s: float) -> str | None:
    """A warning when a speech file holds clearly less sound than its header declares (an interrupted copy or
    upload): the video is as short as what was decoded, and nothing said why. A WAV's declared length is its data
    chunk's (FFmpeg takes the file's size instead); others' is the stream's duration. None otherwise."""
    import av

    path = Path(path)
    declared = _wav_data_seconds(path)
    if declared is None:
        try:
            with av.open(str(path), metadata_errors="ignore") as container:
                stream = container.streams.audio[0]
                if stream.duration is not None and stream.time_base is not None:
                    declared = float(stream.duration * stream.time_base)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError, IndexError):
            return None
    if declared is None or declared - decoded_s < max(0.5, 0.1 * declared):  # an estimate's slack, codec padding
        return None
    return (
        f"{path.name} holds {decoded_s:.2f} s of sound where its header declares {declared:.2f} s: it looks cut "
        "short (an interrupted copy or upload?), and the video is as long as what it holds"
    )


def _wav_data_seconds(path: Path) -> float | None:
    """The seconds a RIFF WAVE file's header declares (its data chunk's size over the byte rate), else None."""
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
    except OSError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at, byte_rate = 12, 0
    while at + 8 <= len(head):
        kind, size = head[at : at + 4], struct.unpack("<I", head[at + 4 : at + 8])[0]
        if kind == b"fmt " and at + 16 <= len(head):
            byte_rate = struct.unpack("<I", head[at + 16 : at + 20])[0]
        if kind == b"data":
            return size / byte_rate if byte_rate and size != 0xFFFFFFFF else None  # a streamed WAV says "unknown"
        at += 8 + size + (size & 1)
    return None


def loudness_warning(wav: np.ndarray, features_clipped: bool = False) -> str | None:
    """A warning when the speech goes clearly past full scale (a float file): the features take it as it is, as
    upstream's do, unless `features_clipped` (it went through 16-bit PCM, as upstream Wav2Lip's non-WAV speech
    does), but the video's sound track, like any audio file, cannot and is clipped. None otherwise (a lossy
    decoder's slight overshoot is not worth one)."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak <= CLIP_WARNING_PEAK:
        return None
    clipped = float(np.mean(np.abs(wav) > 1.0)) * 100
    heard = (
        "lip-sync hears it clipped too, as upstream's 16-bit WAV conversion made it"
        if features_clipped
        else "lip-sync takes it as it is, but the video's sound track is clipped there"
    )
    return (
        f"the speech peaks at {peak:.3g}x full scale ({clipped:.3g}% of its samples past it): {heard}; scale the "
        "file to [-1, 1] for clean sound"
    )


def audio_track(speech: Sound, frames: int, fps: float) -> Sound:
    """The sound a video of `frames` frames gets: the whole speech (never cut, as upstream muxes it whole), then
    silence to the last frame's end where the frames last longer."""
    return speech.fitted(max(speech.seconds, frames / fps))


# --------------------------------------------------------------------------- Wav2Lip mel features


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel features, float32 (80, 1 + len(wav) // 200)."""
    x = _as_mono(wav, "mel_spectrogram")
    emphasised = _preemphasis(x)
    mel = np.concatenate([_mel_magnitudes(block) for block in _stft_blocks(emphasised)], axis=1)
    db = 20.0 * np.log10(np.maximum(10.0 ** (MIN_LEVEL_DB / 20.0), mel)) - REF_LEVEL_DB
    normalised = 2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def _as_mono(wav: np.ndarray, caller: str) -> np.ndarray:
    x = np.asarray(wav)
    if x.ndim != 1:
        raise AudioError(f"{caller}: expected a 1-D mono waveform at {SAMPLE_RATE} Hz, got shape {x.shape}")
    if x.size == 0:
        raise AudioError(f"{caller}: the waveform is empty; at least one sample is needed")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise AudioError(f"{caller}: expected real float samples, got dtype {x.dtype}")
    x = x.astype(np.float64)
    _check_finite(x, caller)
    return x


def _preemphasis(x: np.ndarray) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1] with x[-1] = 0, as scipy.signal.lfilter([1, -0.97], [1], x) does upstream."""
    y = x.copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def _stft_blocks(y: np.ndarray):
    """Centred frames (reflect padding, as librosa 0.7) in blocks of frames, windowed and ready for the FFT."""
    padded = np.pad(y, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (1 + len // HOP, N_FFT), a view
    window = _hann_window()
    for start in range(0, frames.shape[0], _STFT_BLOCK):
        yield frames[start : start + _STFT_BLOCK] * window


def _mel_magnitudes(windowed: np.ndarray) -> np.ndarray:
    magnitude = np.abs(np.fft.rfft(windowed, n=N_FFT, axis=1))  # magnitude, not power, as upstream
    return _mel_basis() @ magnitude.T


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """Periodic Hann as scipy's get_window('hann', 800, fftbins=True) computes it (the window librosa's stft uses):
    0.5 + 0.5 cos over WIN_LENGTH + 1 points from -pi to pi, the last dropped; the same values to the last bit."""
    window = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, WIN_LENGTH + 1)[:-1])
    window.setflags(write=False)
    return window


# Slaney's mel scale as librosa computes it: 200/3 Hz per mel below 1 kHz, logarithmic above, the break at
# 1000 / (200 / 3) mels as librosa divides it (14.999999999999998; 15 gives the same filters at Wav2Lip's settings).
_F_SP = 200.0 / 3
_MIN_LOG_MEL = 1000.0 / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / 1000.0) / _LOGSTEP
    return np.where(hz >= 1000.0, log_part, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= _MIN_LOG_MEL, 1000.0 * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, as librosa's defaults (and so upstream) make them.

    Written out here rather than taken from librosa so the engine does not need librosa (and numba)
    at run time; a test checks it against librosa.filters.mel.
    """
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(FMIN), _hz_to_slaney_mel(FMAX), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    # As librosa: each triangle stored as float32, then scaled by the Slaney norm in place (rounded again).
    basis = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    basis *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    # librosa's float32 values, applied in float64 (the dot product is float64 with today's librosa, which keeps
    # the STFT in complex128; librosa 0.7's complex64 STFT made it float32: within 1e-6 of ours).
    basis = basis.astype(np.float64)
    basis.setflags(write=False)
    return basis


# --------------------------------------------------------------------------- per-video-frame chunks


def mel_chunks(mel: np.ndarray, fps: float, offset_frames: int = 0) -> np.ndarray:
    """One (80, 16) mel window per video frame, float32 (N, 80, 16), as Wav2Lip's inference loop cuts them.

    The count follows upstream: regular chunks while they fit, then one chunk aligned to the end.
    Starts use upstream's `int(i * (80. / fps))` so frame alignment is bit-identical to Wav2Lip.
    `offset_frames` moves the audio against the video without changing the count.
    """
    mel = _check_mel(mel)
    _check_fps(fps, "mel_chunks")
    multiplier = MEL_FPS / fps  # computed first and multiplied after, exactly as upstream
    n_mel = mel.shape[1]
    last = n_mel - MEL_STEP
    n_regular = 0
    while int(n_regular * multiplier) <= last:
        n_regular += 1
    frames = range(int(offset_frames), int(offset_frames) + n_regular + 1)
    starts = np.clip(np.array([int(j * multiplier) for j in frames], dtype=np.int64), 0, last)
    index = starts[:, None] + np.arange(MEL_STEP)[None, :]  # (N, 16)
    return np.ascontiguousarray(mel[:, index].transpose(1, 0, 2), dtype=np.float32)


def _check_mel(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise AudioError(f"expected a mel spectrogram of shape ({N_MELS}, T), got shape {mel.shape}")
    n_mel = mel.shape[1]
    if n_mel < MEL_STEP:
        have_s = (n_mel - 1) * HOP / SAMPLE_RATE
        need_s = (MEL_STEP - 1) * HOP / SAMPLE_RATE
        # one frame is any sound shorter than a hop: "about 0 ms" read as if nothing had been heard
        have = f"about {have_s * 1000:.0f} ms" if n_mel > 1 else f"under {HOP / SAMPLE_RATE * 1000:g} ms"
        raise AudioError(
            f"audio too short: {counted(n_mel, 'mel frame')} ({have}) but one Wav2Lip chunk needs "
            f"{MEL_STEP} (at least {need_s * 1000:.0f} ms, {(MEL_STEP - 1) * HOP} samples at {SAMPLE_RATE} Hz)"
        )
    return mel


def _check_fps(fps: float, caller: str) -> None:
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps) and fps > 0):
        raise AudioError(f"{caller}: fps must be a positive finite number, got {fps!r}")


# --------------------------------------------------------------------------- loudness per video frame


def frame_energy(
    wav: np.ndarray, fps: float, n_frames: int, band: tuple[float, float] = (300.0, 3000.0), offset_frames: int = 0
) -> np.ndarray:
    """Speech-band loudness per video frame in [0, 1], smoothed, for the weight-free baseline engine's mouth.
    `offset_frames` moves the speech against the video as mel_chunks' does: frame i gets frame i + offset's level,
    held at the first and last.

    Silence (below -50 dBFS) maps to 0; the ceiling is the clip's 95th-percentile frame level but at
    least 25 dB above the floor, so quiet and loud recordings both use the range and a short burst
    in silence still reaches 1. Attack is fast and release slower so the mouth closes smoothly.
    """
    _check_fps(fps, "frame_energy")
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 0:
        raise AudioError(f"frame_energy: n_frames must be a non-negative integer, got {n_frames!r}")
    n_frames = int(n_frames)
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim != 1:
        raise AudioError(f"frame_energy: expected a 1-D mono waveform at {SAMPLE_RATE} Hz, got shape {x.shape}")
    _check_finite(x, "frame_energy")
    if n_frames == 0:
        return np.zeros(0, dtype=np.float32)
    level_db = _frame_levels_db(_band_pass(x, _check_band(band)), fps, n_frames)
    energy = _smooth(_db_to_unit(level_db), fps).astype(np.float32)
    return energy[np.clip(np.arange(n_frames) + int(offset_frames), 0, n_frames - 1)]


def _check_band(band: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in band)
    if not 0 < low < high < SAMPLE_RATE / 2:
        raise AudioError(f"frame_energy: band must satisfy 0 < low < high < {SAMPLE_RATE // 2} Hz, got {band!r}")
    return low, high


def _band_pass(x: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Zero-phase Butterworth band-pass: speech formants without hum or hiss, and no time shift."""
    from scipy.signal import butter, sosfiltfilt

    if not x.any():
        return np.zeros_like(x)
    sos = butter(4, band, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    padded = np.pad(x, _FILTER_PAD)
    return sosfiltfilt(sos, padded)[_FILTER_PAD : _FILTER_PAD + x.size]


def _frame_levels_db(y: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """RMS in dBFS over each video frame's span of samples; frames past the audio's end are silence."""
    bounds = np.round(np.arange(n_frames + 1) * (SAMPLE_RATE / fps)).astype(np.int64)
    needed = int(bounds[-1])
    if y.size < needed:
        y = np.pad(y, (0, needed - y.size))
    energy = np.concatenate([[0.0], np.cumsum(y[:needed] ** 2)])
    lengths = np.maximum(np.diff(bounds), 1)
    mean_square = np.maximum(energy[bounds[1:]] - energy[bounds[:-1]], 0.0) / lengths
    return 10.0 * np.log10(np.maximum(mean_square, 1e-12))


def _db_to_unit(level_db: np.ndarray) -> np.ndarray:
    ceiling = max(float(np.percentile(level_db, _ENERGY_CEIL_PERCENTILE)), _ENERGY_FLOOR_DB + _ENERGY_MIN_RANGE_DB)
    return np.clip((level_db - _ENERGY_FLOOR_DB) / (ceiling - _ENERGY_FLOOR_DB), 0.0, 1.0)


def _smooth(level: np.ndarray, fps: float) -> np.ndarray:
    """One-pole envelope follower; time constants in seconds so the feel does not depend on fps."""
    attack = 1.0 - math.exp(-1.0 / (fps * _ATTACK_S))
    release = 1.0 - math.exp(-1.0 / (fps * _RELEASE_S))
    out = np.empty_like(level)
    state = 0.0
    for i, target in enumerate(level.tolist()):
        state += (attack if target > state else release) * (target - state)
        out[i] = state
    out[out < 1e-3] = 0.0  # the release tail never reaches 0 by itself; silence should read as exactly 0
    return out
