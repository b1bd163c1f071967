"""engine/core/audio.py: decoding through PyAV, Wav2Lip's mel features and chunks, and the loudness track.

Every test file is generated here with PyAV (or the stdlib `wave`), so the suite needs no data and no network.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import av
import librosa
import numpy as np
import pytest
from scipy.signal import get_window, lfilter
from test_media import png_bytes, refusal

from engine.core import audio
from engine.core.audio import (
    HOP,
    MEL_STEP,
    SAMPLE_RATE,
    AudioError,
    Sound,
    audio_track,
    frame_energy,
    load_audio,
    load_sound,
    loudness_warning,
    mel_chunks,
    mel_spectrogram,
)
from engine.core.resample import SOXR_HQ, resample

TONE_HZ = 440.0
SECONDS = 1.5


def _tone(rate: int, seconds: float, hz: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
    """A stereo (2, n) float32 tone, the same in both channels."""
    t = np.arange(round(rate * seconds)) / rate
    mono = (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([mono, mono])


def _write_audio(
    path: Path,
    codec: str,
    rate: int,
    seconds: float = SECONDS,
    container_format: str | None = None,
    video_codec: str | None = None,
    data: np.ndarray | None = None,
    sample_format: str = "fltp",
) -> Path:
    """Encode planar float audio (and optionally a few tiny video frames) into any PyAV container."""
    data = _tone(rate, seconds) if data is None else data
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo" if data.shape[0] == 2 else "mono")
        if video_codec:
            _mux_video(container, video_codec, seconds)
        pts = 0
        for start in range(0, data.shape[1], 1024):
            piece = np.ascontiguousarray(data[:, start : start + 1024])
            if sample_format == "flt":
                piece = piece.T.reshape(1, -1)  # packed: channels interleaved in one plane
            frame = av.AudioFrame.from_ndarray(piece, format=sample_format, layout=stream.layout.name)
            frame.sample_rate, frame.pts = rate, pts
            pts += frame.samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _mux_video(container, codec: str, seconds: float) -> None:
    video = container.add_stream(codec, rate=25)
    video.width = video.height = 64
    video.pix_fmt = "yuv420p"
    for k in range(round(seconds * 25)):
        image = np.full((64, 64, 3), (k * 7) % 255, dtype=np.uint8)
        for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in video.encode(None):
        container.mux(packet)


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_wav16(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _dominant_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / wav.size)


def _ogg_codec() -> str:
    for codec in ("libvorbis", "libopus"):
        if codec in av.codecs_available:
            return codec
    pytest.skip("PyAV's FFmpeg has neither libvorbis nor libopus")


# --------------------------------------------------------------------------- load_audio: good inputs

CASES = [
    pytest.param("tone.wav", "pcm_s16le", 44100, None, None, id="wav-pcm_s16le-44k1"),
    pytest.param("tone.flac", "flac", 48000, None, None, id="flac-48k"),
    pytest.param("tone.mp3", "libmp3lame", 44100, None, None, id="mp3-44k1"),
    pytest.param("tone.m4a", "aac", 44100, "ipod", None, id="m4a-aac-44k1"),
    pytest.param("tone.ogg", "ogg", 48000, None, None, id="ogg-48k"),
    pytest.param("clip.mp4", "aac", 48000, None, "video", id="mp4-video-aac-48k"),
    pytest.param("clip.mkv", "flac", 44100, None, "video", id="mkv-video-flac-44k1"),
]


@pytest.mark.parametrize(("name", "codec", "rate", "container_format", "video"), CASES)
def test_load_audio_decodes_to_16k_mono(
    tmp_path: Path, name: str, codec: str, rate: int, container_format: str | None, video: str | None
) -> None:
    if codec == "ogg":
        codec = _ogg_codec()
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} is not in PyAV's FFmpeg")
    video_codec = _video_codec() if video else None
    path = _write_audio(tmp_path / name, codec, rate, container_format=container_format, video_codec=video_codec)

    wav = load_audio(path)

    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.flags.c_contiguous
    assert wav.size == round(SECONDS * SAMPLE_RATE), wav.size  # exact: see the next test
    assert abs(_dominant_hz(wav) - TONE_HZ) < 1.0
    assert wav.min() >= -1.0 and wav.max() <= 1.0
    middle = wav[SAMPLE_RATE // 4 : -SAMPLE_RATE // 4]
    assert 0.3 < np.sqrt(np.mean(middle**2)) < 0.6  # a steady tone, not silence and not clipped noise


@pytest.mark.parametrize("seconds", [1.2345, 0.7777])
@pytest.mark.parametrize(("name", "codec", "rate", "container_format", "video"), CASES)
def test_the_length_is_the_speechs_own_as_librosa_resamples_it(
    tmp_path: Path, name: str, codec: str, rate: int, container_format: str | None, video: str | None, seconds: float
) -> None:
    """ceil(n * 16000 / rate) samples for n at the file's rate, whatever the codec: AAC's end padding in MP4/M4A
    (past the edit list's end) gave up to a codec frame more, one more video frame; swresample's flush could stop
    one sample short of librosa.resample's length (FLAC and Ogg at 48 kHz here)."""
    if codec == "ogg":
        codec = _ogg_codec()
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} is not in PyAV's FFmpeg")
    video_codec = _video_codec() if video else None
    path = _write_audio(tmp_path / name, codec, rate, seconds, container_format=container_format,
                        video_codec=video_codec)  # fmt: skip
    source = _tone(rate, seconds).shape[1]
    assert load_audio(path).size == math.ceil(source * SAMPLE_RATE / rate)


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 11025, 44101])
def test_resampling_is_librosa_0_7s_default_kaiser_best(rate: int) -> None:
    """Upstream Wav2Lip's librosa.load (0.7) resampled with resampy's kaiser_best and padded to
    ceil(n * 16000 / rate); FFmpeg's resampler differed in the 7-8 kHz band (the top mel bands)."""
    x = (np.random.default_rng(rate).standard_normal(int(rate * 1.3) + 7) * 0.2).astype(np.float32)
    ours = resample(x, rate, SAMPLE_RATE)
    theirs = librosa.resample(x, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="kaiser_best")
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 2e-6
    same = resample(x, SAMPLE_RATE, SAMPLE_RATE)
    assert np.array_equal(same, x) and not np.shares_memory(same, x)  # a copy: the caller's samples stay theirs
    hq = librosa.resample(x, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")  # MuseTalk's librosa 0.11
    assert np.array_equal(resample(x, rate, SAMPLE_RATE, SOXR_HQ), hq)
    with pytest.raises(ValueError, match="not one of"):
        resample(x, rate, SAMPLE_RATE, "fft")


def test_decoded_speech_is_what_upstreams_librosa_load_gives(tmp_path: Path) -> None:
    """A 44.1 kHz stereo file: the same samples as Wav2Lip's librosa.load(sr=16000) (librosa 0.7's resampler), so
    the same mel features; MuseTalk's with its librosa 0.11's."""
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((2, 44100 * 2 + 123)) * 0.15).astype(np.float32)
    path = _write_audio(tmp_path / "stereo.wav", "pcm_f32le", 44100, data=data, sample_format="flt")
    ours = load_audio(path)
    theirs = librosa.load(path, sr=SAMPLE_RATE, res_type="kaiser_best")[0]
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 2e-6
    assert np.abs(mel_spectrogram(ours) - mel_spectrogram(theirs)).max() < 1e-3
    musetalk = load_audio(path, resampler=SOXR_HQ)  # upstream MuseTalk: librosa 0.11's default
    assert np.abs(musetalk - librosa.load(path, sr=SAMPLE_RATE)[0]).max() < 1e-6


def test_load_audio_accepts_pathlike_and_str(tmp_path: Path) -> None:
    path = _write_wav16(tmp_path / "mono.wav", np.full(1600, 0.25))
    assert np.array_equal(load_audio(path), load_audio(str(path)))
    assert load_audio(path).size == 1600


def test_samples_past_full_scale_are_kept_as_librosa_load_keeps_them(tmp_path: Path) -> None:
    """Upstream's features see a loud float file as it is; only the video's sound track is clipped (the writer),
    and the run says so."""
    loud = _tone(SAMPLE_RATE, 0.5, amplitude=1.5)  # float PCM can exceed full scale
    path = _write_audio(tmp_path / "loud.wav", "pcm_f32le", SAMPLE_RATE, 0.5, data=loud, sample_format="flt")
    wav = load_audio(path)
    assert 1.49 < wav.max() <= 1.5 and np.abs(wav - librosa.load(path, sr=SAMPLE_RATE)[0]).max() < 1e-6
    warning = loudness_warning(wav)
    assert warning is not None and "peaks at 1.5x full scale" in warning and "clipped" in warning
    assert loudness_warning(np.full(100, 1.02, np.float32)) is None  # a lossy decoder's overshoot: no warning
    assert loudness_warning(np.zeros(0, np.float32)) is None


def test_the_loudness_warning_says_what_share_of_the_speech_is_past_full_scale() -> None:
    """A quarter of the samples past full scale reads as 25%, not 0.25%."""
    wav = np.full(100, 0.5, np.float32)
    wav[:25] = 1.5
    assert "(25% of its samples past it)" in loudness_warning(wav)


def _ffmpeg_s16(samples: np.ndarray, source_format: str) -> np.ndarray:
    """What FFmpeg's own converter (swresample, as the ffmpeg CLI writes a 16-bit WAV) makes of mono samples."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=source_format, layout="mono")
    frame.sample_rate = SAMPLE_RATE
    converter = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().ravel() for f in converter.resample(frame)]
    out += [f.to_ndarray().ravel() for f in converter.resample(None)]
    return np.concatenate(out)


def test_sixteen_bit_pcm_is_ffmpegs() -> None:
    """as_sixteen_bit against FFmpeg's converter: floats rounded half to even and clipped, 32-bit integers cut to
    their top 16 bits (not rounded)."""
    rng = np.random.default_rng(2)
    floats = np.concatenate([rng.uniform(-1.3, 1.3, 5000), np.arange(-8, 9) / 65536 + 0.25]).astype(np.float32)
    expected = _ffmpeg_s16(floats, "flt")
    np.testing.assert_array_equal(audio.as_sixteen_bit(floats, "flt") * 32768, expected)
    assert expected.max() == 32767 and expected.min() == -32768  # the overshoot clipped
    integers = (rng.integers(-(2**23), 2**23, 5000) * 256).astype(np.int32)  # 24-bit samples, as FLAC decodes them
    as_floats = (integers / 2**31).astype(np.float32)  # what our decoding's float conversion makes of them
    np.testing.assert_array_equal(audio.as_sixteen_bit(as_floats, "s32") * 32768, _ffmpeg_s16(integers, "s32"))
    pcm16 = rng.integers(-32768, 32768, 100).astype(np.float32) / 32768
    np.testing.assert_array_equal(audio.as_sixteen_bit(pcm16, "s16"), pcm16)


@pytest.mark.parametrize(
    ("name", "codec", "container"),
    [
        ("a.wav", "pcm_s16le", None),
        ("a.flac", "flac", None),
        ("a.ogg", "libopus", None),
        ("a.mp3", "libmp3lame", None),
        ("a.m4a", "aac", "mp4"),
        ("a.mka", "flac", "matroska"),
        ("a.wav.mp4", "aac", "mp4"),  # by content, as libsndfile decides, not by name
    ],
)
def test_librosa_via_ffmpeg_is_where_soundfile_cannot_read_the_file(tmp_path: Path, name, codec, container) -> None:
    """MuseTalk's librosa.load reads what libsndfile reads and hands the rest to audioread's ffmpeg (16-bit PCM)."""
    import soundfile

    rate = 48000 if codec == "libopus" else SAMPLE_RATE
    path = _write_audio(tmp_path / name, codec, rate, 0.3, container_format=container)
    try:
        soundfile.info(str(path))
        readable = True
    except soundfile.LibsndfileError:
        readable = False
    assert audio.librosa_via_ffmpeg(path) == (not readable)


def test_wav2lip_hears_non_wav_speech_through_16_bit_pcm_as_upstream(tmp_path: Path) -> None:
    """Upstream's inference.py turns any speech not named .wav into a 16-bit WAV with ffmpeg before librosa: the
    lossy decoder's overshoot past full scale is clipped there, and the rest rounded to 16 bits."""
    loud = _tone(SAMPLE_RATE, 0.5, amplitude=1.3)
    named = {}
    for name in ("loud.wav", "loud.WAV"):
        named[name] = _write_audio(tmp_path / name, "pcm_f32le", SAMPLE_RATE, 0.5, data=loud, sample_format="flt")
    assert [audio.wav2lip_converts(p) for p in named.values()] == [False, True]
    assert audio.wav2lip_converts("speech.mp3") and audio.wav2lip_converts("clip.mp4")
    kept = load_audio(named["loud.wav"], sixteen_bit=audio.wav2lip_converts(named["loud.wav"]))
    converted = load_audio(named["loud.WAV"], sixteen_bit=audio.wav2lip_converts(named["loud.WAV"]))
    assert kept.max() > 1.29 and converted.max() == 32767 / 32768
    np.testing.assert_array_equal(converted, np.clip(np.rint(kept * 32768), -32768, 32767) / 32768)  # 16 kHz mono
    warning = loudness_warning(converted, features_clipped=True)
    assert warning is None  # the clipped features are not the measure: the sound track's peak is
    warning = loudness_warning(loud, features_clipped=True)
    assert warning is not None and "lip-sync hears it clipped too" in warning


def test_eight_channels_and_more_are_averaged(tmp_path: Path) -> None:
    """PyAV reads planar frames of 8 or more channels past their end (a segfault); interleaved ones are read
    right: each sample the mean of its channels, as librosa.load makes it."""
    rng = np.random.default_rng(3)
    for channels in (8, 12):
        data = (rng.uniform(-0.5, 0.5, (SAMPLE_RATE // 2, channels)) * 32767).astype("<i2")
        path = tmp_path / f"{channels}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(channels)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(data.tobytes())
        wav = load_audio(path)
        assert np.abs(wav - (data / 32768.0).mean(axis=1)).max() < 1e-6


def test_the_sound_track_keeps_the_whole_speech() -> None:
    """Upstream muxes the speech whole: the video's last frame may end before it (one frame per mel chunk), and
    the sound still runs to the speech's end; frames that last longer get silence after it."""
    speech = Sound(np.linspace(-0.5, 0.5, 88200, dtype=np.float32).reshape(-1, 2), 22050)  # 2.0 s of stereo
    track = audio_track(speech, 47, 25.0)  # Wav2Lip's 47 frames for 2.0 s: 1.88 s of video
    assert track.rate == 22050 and np.array_equal(track.samples, speech.samples)
    longer = audio_track(speech, 3, 1.0)  # three frames at 1 fps: 3 s
    assert longer.samples.shape == (66150, 2) and np.array_equal(longer.samples[:44100], speech.samples)
    assert not longer.samples[44100:].any()


def test_a_sound_fitted_to_pictures_that_start_sooner_or_later() -> None:
    sound = Sound(np.arange(1, 11, dtype=np.float32).reshape(-1, 1), 10)  # 1 s at 10 Hz
    late = sound.fitted(1.0, start_s=-0.3, cut=True)  # it starts 0.3 s after the pictures: silence first
    assert late.samples[:, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    early = sound.fitted(1.0, start_s=0.4, cut=True)  # it started 0.4 s before them: that part is not shown
    assert early.samples[:, 0].tolist() == [5, 6, 7, 8, 9, 10, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("rate", "layout", "channels", "expected_rate"),
    [(48000, "stereo", 2, 48000), (44100, "mono", 1, 44100), (22050, "5.1", 2, 22050), (37800, "stereo", 2, 48000)],
)
def test_the_sound_track_keeps_the_files_rate_and_channels(
    tmp_path: Path, rate: int, layout: str, channels: int, expected_rate: int
) -> None:
    """The video's sound is the file's, as upstream's ffmpeg mux keeps it (the features' 16 kHz mono cut
    everything above 8 kHz and folded stereo): past two channels mixed to stereo, a rate AAC lacks made 48 kHz."""
    n = len(av.AudioLayout(layout).channels)
    t = np.arange(rate // 2) / rate
    data = np.stack([np.sin(2 * np.pi * (1000 + 500 * c) * t) * 0.3 for c in range(n)]).astype(np.float32)
    path = tmp_path / "speech.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_f32le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(data.T.reshape(1, -1).copy(), format="flt", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    sound = load_sound(path)
    assert (sound.rate, sound.samples.shape[1]) == (expected_rate, channels)
    assert abs(sound.seconds - 0.5) < 0.01
    if (n, rate) == (2, 48000):  # kept as it is
        assert np.abs(sound.samples - data.T).max() < 1e-6


def test_stereo_is_the_mean_of_its_channels_as_librosa_load_makes_it(tmp_path: Path) -> None:
    """Upstream (Wav2Lip and MuseTalk) reads speech with librosa.load: channels averaged, then resampled. FFmpeg's
    own downmix weights each channel 0.707, which made the mel 3 dB louder and clipped loud stereo peaks."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    left, right = 0.6 * np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t + 1.0)
    data = np.stack([left, right]).astype(np.float32)
    path = _write_audio(tmp_path / "two.wav", "pcm_f32le", SAMPLE_RATE, 1.0, data=data, sample_format="flt")
    wav = load_audio(path)
    assert np.abs(wav - (data[0] + data[1]) / 2).max() < 1e-7
    assert np.abs(wav - librosa.load(path, sr=SAMPLE_RATE)[0]).max() < 1e-7
    tone = _tone(44100, 0.5, amplitude=0.9)
    loud = load_audio(_write_audio(tmp_path / "loud.wav", "pcm_f32le", 44100, 0.5, data=tone, sample_format="flt"))
    assert 0.85 < np.abs(loud).max() < 0.95  # the same tone in both channels stays at its level, unclipped


# --------------------------------------------------------------------------- load_audio: bad inputs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_directory_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)


def test_random_bytes_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"could not be decoded.*Accepted: audio \(wav, mp3"):
        load_audio(path)


def test_two_mp3s_joined_end_to_end_play_one_after_the_other(tmp_path: Path, caplog) -> None:
    """`cat a.mp3 b.mp3`: the second file's ID3 tag sits mid-stream, one packet no decoder takes. FFmpeg's command
    line (upstream's decoder) skips it and plays on; it was refused as undecodable. A good first packet followed
    by more junk than sound stays refused."""
    first = _write_audio(tmp_path / "a.mp3", "libmp3lame", 16000, 1.0, data=_tone(16000, 1.0, hz=440)[:1])
    second = _write_audio(tmp_path / "b.mp3", "libmp3lame", 16000, 1.5, data=_tone(16000, 1.5, hz=660)[:1])
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    assert first.read_bytes()[:3] == second.read_bytes()[:3] == b"ID3"
    with caplog.at_level("WARNING", logger="engine.core.audio"):
        sound = load_sound(joined)
    assert 2.5 <= sound.seconds < 2.7  # both, with each encoder's padding
    tail = sound.samples[-8000:, 0]  # the second file's last half second: its 660 Hz tone
    assert np.argmax(np.abs(np.fft.rfft(tail))) * 16000 / len(tail) == pytest.approx(660, abs=4)
    assert "joined.mp3: 1 of " in caplog.text and "could not be decoded and were skipped" in caplog.text
    assert len(load_audio(joined)) == len(sound.samples)  # at 16 kHz already
    junk = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    (tmp_path / "junk.mp3").write_bytes(first.read_bytes()[:800] + junk)
    with pytest.raises(AudioError, match="could not be decoded"):
        load_sound(tmp_path / "junk.mp3")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match="could not be decoded"):
        load_audio(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="0 bytes"):
        load_audio(path)


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        _mux_video(container, _video_codec(), 0.4)
    with pytest.raises(AudioError, match=r"no audio stream.*video"):
        load_audio(path)


def test_zero_length_wav(tmp_path: Path) -> None:
    path = _write_wav16(tmp_path / "zero.wav", np.zeros(0))
    assert path.stat().st_size > 0  # a valid header, no samples
    with pytest.raises(AudioError, match="empty"):
        load_audio(path)


def test_too_long_names_duration_and_limit(tmp_path: Path) -> None:
    path = _write_wav16(tmp_path / "three.wav", np.zeros(3 * SAMPLE_RATE))
    with pytest.raises(AudioError, match=r"3\.0 s long; the limit is 1 s \(AVATARBENCH_MAX_SECONDS\)"):
        load_audio(path, max_seconds=1)
    assert load_audio(path, max_seconds=3).size == 3 * SAMPLE_RATE  # exactly at the limit is fine


def test_too_long_says_what_was_decoded_where_the_declared_length_is_plainly_short(tmp_path: Path) -> None:
    """Raw AAC declares a length estimated from its first frames' bit rate: loud noise, then silence, declares a
    fraction of its 6 s. Past the 3 s limit the message says it is longer than what was decoded, not the 1.4 s
    the header claims (below the limit it was refused for) nor the limit itself."""
    rate = 44100
    noise = np.random.default_rng(0).uniform(-0.9, 0.9, (2, rate)).astype(np.float32)
    data = np.concatenate([noise, np.zeros((2, 5 * rate), np.float32)], axis=1)
    path = _write_audio(tmp_path / "loud-then-quiet.aac", "aac", rate, container_format="adts", data=data)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert float(stream.duration * stream.time_base) < 2  # the header's estimate, well short of the limit
    with pytest.raises(AudioError, match=r"loud-then-quiet\.aac is longer than 3\.1 s; the limit is 3 s \("):
        load_audio(path, max_seconds=3)


def test_a_clip_cut_at_exactly_the_limit_is_taken_despite_its_codecs_padding(tmp_path: Path) -> None:
    """Raw AAC (ADTS) decodes its encoder's priming too: 2.04 s from a 2 s clip. Cut at the limit, it is taken."""
    path = _write_audio(tmp_path / "speech.aac", "aac", 44100, 2.0, container_format="adts")
    assert load_audio(path, max_seconds=2).size > 2 * SAMPLE_RATE


def test_too_long_stops_decoding_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_wav16(tmp_path / "long.wav", np.zeros(60 * SAMPLE_RATE))
    fed = []
    real = av.AudioResampler

    class CountingResampler:
        def __init__(self, **kwargs) -> None:
            self._inner, self._last = real(**kwargs), kwargs.get("rate") == SAMPLE_RATE  # the 16 kHz one

        def resample(self, frame):
            if self._last:
                fed.append(0 if frame is None else frame.samples)
            return self._inner.resample(frame)

    monkeypatch.setattr(av, "AudioResampler", CountingResampler)
    with pytest.raises(AudioError, match="the limit is 2 s"):
        load_audio(path, max_seconds=2)
    assert 2 * SAMPLE_RATE < sum(fed) < 3 * SAMPLE_RATE  # stopped right after the limit, not after 60 s


def test_bad_max_seconds(tmp_path: Path) -> None:
    path = _write_wav16(tmp_path / "a.wav", np.zeros(1600))
    for bad in (0, -1.0, math.inf, math.nan):  # no limit is None, never an infinite one
        with pytest.raises(AudioError, match="max_seconds must be a positive number of seconds"):
            load_audio(path, max_seconds=bad)


def test_nan_samples_in_file(tmp_path: Path) -> None:
    data = _tone(16000, 0.5)
    data[:, 4000:4010] = np.nan
    path = _write_audio(tmp_path / "nan.wav", "pcm_f32le", 16000, 0.5, data=data, sample_format="flt")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def _float_wav_with(path: Path, value: float, rate: int) -> Path:
    data = _tone(rate, 0.5)
    data[:, 4000:4010] = value
    return _write_audio(path, "pcm_f32le", rate, 0.5, data=data, sample_format="flt")


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_AUDIO = [
    pytest.param(lambda p: _write_bytes(p, b""), "is empty (0 bytes); expected an audio", id="zero-bytes"),
    pytest.param(
        lambda p: _write_bytes(p, b"this is not audio\n" * 20),
        "could not be decoded as audio or video (Invalid data found when processing input)",
        id="text-renamed",
    ),
    pytest.param(lambda p: _write_bytes(p, png_bytes(32, 32)), "speech.wav is an image; speech comes from", id="png"),
    pytest.param(lambda p: _write_wav16(p, np.zeros(0)), "the audio stream is empty (0 samples decoded)", id="empty"),
    pytest.param(lambda p: _float_wav_with(p, np.nan, 16000), "are NaN or infinite", id="nan"),
    pytest.param(lambda p: _float_wav_with(p, np.inf, 16000), "are NaN or infinite", id="inf"),
    pytest.param(lambda p: _float_wav_with(p, -np.inf, 48000), "are NaN or infinite", id="inf-resampled"),
]


@pytest.mark.parametrize(("make", "expected"), BAD_AUDIO)
def test_bad_audio_gets_one_line_naming_the_file_only(tmp_path: Path, make, expected: str) -> None:
    path = make(tmp_path / "speech.wav")
    assert expected in refusal(lambda: load_audio(path, max_seconds=10), path, AudioError)


def test_nan_and_inf_samples_in_mel() -> None:
    wav = np.zeros(4000, dtype=np.float32)
    wav[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        mel_spectrogram(wav)
    wav[100] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        mel_spectrogram(wav)


def test_mel_rejects_empty_and_stereo() -> None:
    with pytest.raises(AudioError, match="empty"):
        mel_spectrogram(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="1-D mono"):
        mel_spectrogram(np.zeros((2, 1000), dtype=np.float32))


def test_audio_error_is_a_value_error() -> None:
    assert issubclass(AudioError, ValueError)


# --------------------------------------------------------------------------- mel_spectrogram


def _noise(n: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _normalise(mel_magnitude: np.ndarray) -> np.ndarray:
    db = 20 * np.log10(np.maximum(1e-5, mel_magnitude)) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4)


def _librosa_mel(wav: np.ndarray, pad_mode: str) -> np.ndarray:
    """Upstream's recipe run through today's librosa, with the padding chosen explicitly."""
    emphasised = lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    return _normalise(basis @ np.abs(stft))


@pytest.mark.parametrize("n", [3000, 16000, 16123, 48000])
def test_mel_shape_dtype_range(n: int) -> None:
    mel = mel_spectrogram(_noise(n))
    assert mel.shape == (80, 1 + n // HOP)
    assert mel.dtype == np.float32
    assert mel.min() >= -4.0 and mel.max() <= 4.0


def test_silence_is_minus_four_everywhere() -> None:
    # 0 -> the 1e-5 floor -> -100 dB - 20 dB = -120 dB -> 8 * (-20 / 100) - 4 = -5.6 -> clipped to -4.
    assert np.all(mel_spectrogram(np.zeros(8000, dtype=np.float32)) == -4.0)


def test_loud_tone_lights_up_its_band() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    mel = mel_spectrogram((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    band = int(np.argmin(np.abs(centres - 1000)))
    interior = mel[:, 5:-5]
    assert interior[band].min() > 1.5
    assert np.all(interior.argmax(axis=0) == band)
    assert interior[-1].max() < interior[band].min() - 2  # far bands stay low


def test_interior_frame_matches_hand_computation() -> None:
    wav = _noise(16000, seed=3)
    x = wav.astype(np.float64)
    emphasised = np.concatenate([[x[0]], x[1:] - 0.97 * x[:-1]])
    padded = np.pad(emphasised, 400, mode="reflect")
    t = 37
    frame = padded[t * 200 : t * 200 + 800] * get_window("hann", 800, fftbins=True)
    magnitude = np.abs(np.fft.rfft(frame))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    expected = _normalise(basis @ magnitude)

    got = mel_spectrogram(wav)[:, t]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert expected.min() > -4 and expected.max() < 4  # unclipped, so the comparison means something


def test_matches_upstream_recipe_with_reflect_padding() -> None:
    wav = _noise(16123, seed=4)
    np.testing.assert_allclose(mel_spectrogram(wav), _librosa_mel(wav, "reflect"), atol=1e-5)


def test_edge_frames_use_reflection_not_zero_padding() -> None:
    wav = _noise(16123, seed=5)
    mel = mel_spectrogram(wav)
    zero_padded = _librosa_mel(wav, "constant")
    differs = np.abs(mel - zero_padded).max(axis=0) > 1e-3
    assert differs[[0, 1, -2, -1]].all()  # the frames that reach into the padding
    np.testing.assert_allclose(mel[:, 2:-2], zero_padded[:, 2:-2], atol=1e-5)  # interior: identical either way


# --------------------------------------------------------------------------- mel_chunks


def _upstream_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """Wav2Lip inference.py's loop, restated: regular chunks while they fit, then one aligned to the end."""
    chunks, i, multiplier = [], 0, 80.0 / fps
    while True:
        start = int(i * multiplier)
        if start + MEL_STEP > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - MEL_STEP :])
            return chunks
        chunks.append(mel[:, start : start + MEL_STEP])
        i += 1


@pytest.fixture(scope="module")
def mel_3s() -> np.ndarray:
    mel = mel_spectrogram(_noise(3 * SAMPLE_RATE, seed=6))
    assert mel.shape == (80, 241)
    return mel


def test_chunks_3s_at_25fps(mel_3s: np.ndarray) -> None:
    chunks = mel_chunks(mel_3s, 25)
    assert chunks.shape == (72, 80, 16) and chunks.dtype == np.float32 and chunks.flags.c_contiguous
    np.testing.assert_array_equal(chunks[-1], mel_3s[:, -16:])
    for i in range(71):
        start = int(i * 80 / 25)
        np.testing.assert_array_equal(chunks[i], mel_3s[:, start : start + 16])


@pytest.mark.parametrize("fps", [12.5, 23.976, 24, 24000 / 1001, 25, 29.97, 30, 30000 / 1001, 50, 59.94, 60])
def test_chunks_equal_upstream_loop(mel_3s: np.ndarray, fps: float) -> None:
    chunks = mel_chunks(mel_3s, fps)
    expected = _upstream_chunks(mel_3s, fps)
    assert len(chunks) == len(expected)
    np.testing.assert_array_equal(chunks, np.stack(expected))
    # About one chunk per video frame of the audio, less the 0.2 s window's worth, plus the end chunk.
    assert fps * (3 - 0.2) <= len(chunks) <= fps * 3 + 1


def test_chunk_counts_at_30_and_2997(mel_3s: np.ndarray) -> None:
    assert len(mel_chunks(mel_3s, 30)) == 86
    assert len(mel_chunks(mel_3s, 29.97)) == 86


def test_offset_shifts_audio_by_whole_frames(mel_3s: np.ndarray) -> None:
    plain = mel_chunks(mel_3s, 25)
    ahead = mel_chunks(mel_3s, 25, offset_frames=1)
    behind = mel_chunks(mel_3s, 25, offset_frames=-2)
    assert ahead.shape == behind.shape == plain.shape
    np.testing.assert_array_equal(ahead[:-1], plain[1:])
    np.testing.assert_array_equal(ahead[-1], mel_3s[:, -16:])  # clamped at the end
    np.testing.assert_array_equal(behind[2:], plain[:-2])
    np.testing.assert_array_equal(behind[0], mel_3s[:, :16])  # clamped at the start
    np.testing.assert_array_equal(behind[1], mel_3s[:, :16])
    huge = mel_chunks(mel_3s, 25, offset_frames=1000)
    assert huge.shape == plain.shape and np.array_equal(huge[0], mel_3s[:, -16:])


def test_exactly_one_chunk_of_audio() -> None:
    mel = mel_spectrogram(_noise(3000))  # 1 + 3000 // 200 = 16 mel frames
    chunks = mel_chunks(mel, 25)
    assert chunks.shape == (2, 80, 16)  # upstream: the regular chunk at 0, then the end-aligned one (the same)
    np.testing.assert_array_equal(chunks[0], chunks[1])


def test_too_short_for_a_chunk() -> None:
    mel = mel_spectrogram(_noise(2999))  # 15 mel frames
    with pytest.raises(AudioError, match=r"audio too short: 15 mel frames \(about 175 ms\) but .*needs 16"):
        mel_chunks(mel, 25)
    # 10 samples are one frame: it read "1 mel frames (about 0 ms)", as if there were no sound at all
    with pytest.raises(AudioError, match=r"audio too short: 1 mel frame \(under 12\.5 ms\) but one Wav2Lip chunk"):
        mel_chunks(mel_spectrogram(_noise(10)), 25)


def test_chunks_reject_bad_fps_and_shape(mel_3s: np.ndarray) -> None:
    for fps in (0, -25, float("nan"), float("inf")):
        with pytest.raises(AudioError, match="fps"):
            mel_chunks(mel_3s, fps)
    with pytest.raises(AudioError, match=r"\(80, T\)"):
        mel_chunks(mel_3s.T, 25)


# --------------------------------------------------------------------------- frame_energy


def _burst(seconds: float = 3.0, on: tuple[float, float] = (1.0, 2.0), hz: float = 1000.0) -> np.ndarray:
    wav = np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)
    a, b = (round(s * SAMPLE_RATE) for s in on)
    t = np.arange(b - a) / SAMPLE_RATE
    wav[a:b] = 0.3 * np.sin(2 * np.pi * hz * t)
    return wav


def test_energy_of_silence_is_zero() -> None:
    energy = frame_energy(np.zeros(3 * SAMPLE_RATE, dtype=np.float32), 25, 75)
    assert energy.shape == (75,) and energy.dtype == np.float32
    assert np.all(energy == 0)


def test_energy_of_faint_noise_is_zero() -> None:
    hiss = _noise(3 * SAMPLE_RATE, scale=10 ** (-70 / 20))  # -70 dBFS, far below the -50 dBFS floor
    assert frame_energy(hiss, 25, 75).max() < 0.05


def test_energy_follows_a_tone_burst() -> None:
    energy = frame_energy(_burst(), 25, 75)  # burst covers frames 25..49
    assert energy[26:50].min() > 0.9
    assert energy[:24].max() < 0.05  # fast attack, nothing before
    assert energy[58:].max() < 0.05  # released within a few frames after
    assert np.all(np.diff(energy[50:]) <= 0)  # and it decays smoothly rather than snapping shut


def test_energy_moves_with_the_audio_offset_as_the_mel_chunks_do() -> None:
    """--audio-offset N: frame i shows frame i + N's level (the baseline read no offset, silently)."""
    wav, frames = _burst(), 75  # the burst covers frames 25..49
    base = frame_energy(wav, 25, frames)
    for offset in (3, -4):
        shifted = frame_energy(wav, 25, frames, offset_frames=offset)
        assert np.array_equal(shifted, base[np.clip(np.arange(frames) + offset, 0, frames - 1)])
        assert int(np.argmax(shifted > 0.5)) == int(np.argmax(base > 0.5)) - offset


def test_energy_ignores_out_of_band_sound() -> None:
    rumble = _burst(hz=60.0)  # mains hum: not speech
    speech_band = _burst(hz=1000.0)
    assert frame_energy(rumble, 25, 75).max() < 0.5 * frame_energy(speech_band, 25, 75).max()


def _tone_at(db: float, seconds: float = 3.0) -> np.ndarray:
    """A 1 kHz tone whose RMS is `db` dBFS."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def test_energy_maps_levels_between_the_floor_and_the_ceiling() -> None:
    """-50 dBFS is shut and the ceiling is at least 25 dB above it, so a steady quiet voice at -40 dBFS opens the
    mouth 0.4 of the way, not all of it; and the ceiling is the loud part's level (the 95th percentile), so a voice
    loud a third of the time opens it fully there and 10 dB quieter only three quarters."""
    assert frame_energy(_tone_at(-40), 25, 75)[5:-5] == pytest.approx(0.4, abs=0.01)
    two_levels = _tone_at(-20)
    two_levels[:SAMPLE_RATE] *= 10 ** (10 / 20)  # the first second at -10 dBFS
    energy = frame_energy(two_levels, 25, 75)
    assert energy[5:20] == pytest.approx(1.0, abs=0.01) and energy[35:70] == pytest.approx(0.75, abs=0.01)


def test_energy_after_speech_is_exactly_zero_and_hum_never_opens_the_mouth() -> None:
    """The release tail is cut to 0 once it is negligible (silence reads as silence, not a mouth left ajar), and
    the band-pass is steep enough that loud mains hum is silence too."""
    speech_then_quiet = _burst(on=(0.0, 0.5))
    assert not frame_energy(speech_then_quiet, 25, 75)[-40:].any()
    assert frame_energy(_burst(on=(0.0, 3.0), hz=60.0), 25, 75).max() < 0.05


def test_energy_of_syllable_like_noise_varies_in_range() -> None:
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    # 4 syllables a second, peaking near -20 dBFS like ordinary recorded speech.
    syllables = _noise(t.size, seed=8, scale=0.1) * np.sin(2 * np.pi * 2 * t) ** 2
    energy = frame_energy(syllables, 25, 75)
    assert energy.max() > 0.8
    assert 0.2 < np.percentile(energy, 10) < 0.7  # gaps between syllables are lower, yet not shut like silence
    assert energy.max() - np.percentile(energy, 10) > 0.3


@pytest.mark.parametrize(("seconds", "n_frames"), [(1.0, 75), (5.0, 50), (3.0, 90)])
def test_energy_length_is_n_frames(seconds: float, n_frames: int) -> None:
    wav = _burst(seconds, on=(0.0, seconds))
    fps = 25 if n_frames != 90 else 30
    energy = frame_energy(wav, fps, n_frames)
    assert energy.shape == (n_frames,) and energy.dtype == np.float32
    covered = int(seconds * fps)
    assert energy[0] > 0.8  # the attack takes a frame
    assert energy[1 : min(covered, n_frames) - 1].min() > 0.9
    if covered < n_frames:
        assert energy[covered + 10 :].max() < 0.05  # past the audio: silence


def test_energy_edge_cases() -> None:
    assert frame_energy(np.zeros(0, dtype=np.float32), 25, 10).tolist() == [0.0] * 10
    assert frame_energy(_burst(), 25, 0).shape == (0,)
    assert frame_energy(_burst(), 29.97, 3).shape == (3,)
    for band in ((3000.0, 300.0), (1000.0, 1000.0), (0.0, 300.0), (300.0, 8000.0)):
        with pytest.raises(AudioError, match="band"):
            frame_energy(_burst(), 25, 10, band=band)
    with pytest.raises(AudioError, match="n_frames"):
        frame_energy(_burst(), 25, -1)
    with pytest.raises(AudioError, match="fps"):
        frame_energy(_burst(), 0, 10)


def test_module_constants() -> None:
    assert (SAMPLE_RATE, HOP, MEL_STEP) == (16000, 200, 16)
    assert audio.SAMPLE_RATE // audio.HOP == 80


def test_mel_filterbank_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    from engine.core.audio import _mel_basis

    expected = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert _mel_basis().shape == expected.shape
    np.testing.assert_array_equal(_mel_basis(), expected)  # not merely close: every float32 value


def test_the_stft_window_is_scipys_periodic_hann_to_the_bit() -> None:
    """librosa's STFT windows with scipy's get_window("hann", 800, fftbins=True): 0.5 + 0.5 cos over 801 points
    from -pi to pi, the last dropped. 0.5 - 0.5 cos(2 pi n / 800) differs in the last bit at 535 of the 800."""
    from engine.core.audio import _hann_window

    expected = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, 801)[:-1])
    np.testing.assert_array_equal(_hann_window(), expected)
    np.testing.assert_array_equal(_hann_window(), get_window("hann", 800, fftbins=True))


def test_mel_filterbank_is_librosas_float32_values_to_the_bit() -> None:
    """librosa.filters.mel (0.7 as today) as upstream's audio.py builds it: each triangle stored as float32, then
    scaled by the Slaney norm in place (a second rounding). Rounding once, after the norm, moved 184 of the values
    by a float32 step, and the mel features with them."""
    from engine.core.audio import _mel_basis

    f_sp, logstep = 200.0 / 3, np.log(6.4) / 27.0
    min_log_mel = 1000.0 / f_sp

    def to_mel(hz: float) -> float:
        return min_log_mel + np.log(hz / 1000.0) / logstep if hz >= 1000.0 else hz / f_sp

    mels = np.linspace(to_mel(55.0), to_mel(7600.0), 82)
    edges = np.where(mels >= min_log_mel, 1000.0 * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)
    ramps = np.subtract.outer(edges, np.linspace(0, 16000 / 2, 401))
    fdiff = np.diff(edges)
    weights = np.zeros((80, 401), np.float32)
    for i in range(80):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    np.testing.assert_array_equal(_mel_basis(), weights)


def test_a_file_that_changes_rate_and_layout_midway_decodes(tmp_path: Path) -> None:
    """Two ADTS AAC clips joined (mono 44.1 kHz, then stereo 22.05 kHz): PyAV's converter refused the second
    clip's frames with a bare ValueError; the rest is converted to the first rate, as the ffmpeg CLI does."""
    first = _write_audio(tmp_path / "a.aac", "aac", 44100, 1.0, container_format="adts", data=_tone(44100, 1.0)[:1])
    second = _write_audio(tmp_path / "b.aac", "aac", 22050, 1.0, container_format="adts")
    joined = tmp_path / "joined.aac"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    wav = load_audio(joined)
    assert 2.0 <= wav.size / SAMPLE_RATE < 2.2 and abs(_dominant_hz(wav) - TONE_HZ) < 1.0


def test_a_sample_rate_outside_speechs_range_is_refused(tmp_path: Path) -> None:
    """A header claiming 1 MHz made resampling take gigabytes; 1 kHz to 192 kHz is accepted."""
    path = tmp_path / "odd.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(1_000_001)
        out.writeframes(np.zeros(1000, "<i2").tobytes())
    with pytest.raises(AudioError, match=r"sample rate, 1000001 Hz, is outside 1000\.\.192000 Hz"):
        load_audio(path)
    for rate in (1000, 192_000):  # the ends themselves: 192 kHz is a studio recorder's rate
        edge = _write_wav16(tmp_path / f"{rate}.wav", np.zeros(rate // 10), rate)
        assert load_audio(edge).size == SAMPLE_RATE // 10


def test_a_speech_file_cut_short_is_said_to_be(tmp_path: Path) -> None:
    """A WAV whose data chunk declares 2 s while the file holds 1 s gave a video half as long, without a word
    (FFmpeg takes the file's size as its length, so the header is read here)."""
    import wave

    from engine.core.audio import cut_short_warning

    whole = tmp_path / "whole.wav"
    with wave.open(str(whole), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(np.zeros(32000, np.int16).tobytes())
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 32000])  # the header and half the samples
    assert cut_short_warning(whole, 2.0) is None
    words = cut_short_warning(cut, len(load_audio(cut)) / SAMPLE_RATE)
    assert words is not None and "cut.wav holds 1.00 s of sound where its header declares 2.00 s" in words
    assert cut_short_warning(tmp_path / "gone.wav", 1.0) is None and cut_short_warning(whole, 1.8) is None  # slack
    # the slack is half a second or a tenth of the declared length, whichever is more: a short clip's codec padding
    # and a long file's estimate are not a cut
    assert cut_short_warning(whole, 1.6) is None
    long = tmp_path / "long.wav"
    with wave.open(str(long), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(1000)
        out.writeframes(np.zeros(20_000, np.int16).tobytes())  # 20 s declared
    assert cut_short_warning(long, 18.5) is None
    assert "long.wav holds 17.50 s of sound where its header declares 20.00 s" in (cut_short_warning(long, 17.5) or "")


def test_a_wav_header_is_read_past_odd_chunks_and_a_streamed_one_declares_nothing(tmp_path: Path) -> None:
    """RIFF pads a chunk of odd size to an even one (a 3-byte note takes 4): the data chunk after it is still found,
    and a cut file said to be. A WAV written to a pipe declares 0xFFFFFFFF bytes, 'unknown', never a cut."""
    from engine.core.audio import cut_short_warning

    def wav(path: Path, data_size: int, note: bytes = b"abc") -> Path:
        fmt = struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16)
        pad = b"\0" * (len(note) & 1)
        body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"note" + struct.pack("<I", len(note)) + note
        body += pad + b"data" + struct.pack("<I", data_size) + np.zeros(SAMPLE_RATE, np.int16).tobytes()
        path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
        return path

    cut = wav(tmp_path / "cut.wav", 4 * SAMPLE_RATE)  # 2 s declared, 1 s held
    assert "cut.wav holds 1.00 s of sound where its header declares 2.00 s" in (cut_short_warning(cut, 1.0) or "")
    assert cut_short_warning(wav(tmp_path / "streamed.wav", 0xFFFFFFFF), 1.0) is None
