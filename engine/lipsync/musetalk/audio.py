"""MuseTalk's speech features: whisper-tiny's hidden states cut into one (50, 384) audio prompt per video frame.

Upstream (musetalk/utils/audio_processor.py): 16 kHz speech is cut into 30 s segments; each becomes 80x3000 log-mel
input features (transformers' WhisperFeatureExtractor, which pads every segment to 30 s and normalises by the
segment's own loudest value, so the cut points are part of the features); the encoder's five hidden states are
stacked per row (50 rows per second, 1500 per segment), the segments concatenated and trimmed to the speech; zero
rows pad both ends; frame f takes 10 rows from floor(f * 50 / fps) in the padded rows, flattened with the layer
varying fastest; a sinusoidal positional encoding is added before the UNet's cross-attention.

Where we differ from upstream (on purpose):
- the real frame rate: upstream truncates fps to an int (29.97 -> 29, so the lips drift by about a second per 30 s
  of speech), and its real-time script takes its --fps (25 by default) for every avatar whatever the video's rate;
  we use the video's own float fps in the frame count and the window starts;
- 50 and 60 fps work: upstream's right padding (6 rows there) is too short for the last windows, its assert fails
  and the process exits with status 0; we pad with as many zero rows as the last window needs (upstream's rows
  otherwise, so every window upstream can cut is identical);
- the last, partial frame is kept: upstream makes floor(seconds * fps) frames, we make ceil(seconds * fps), so the
  video covers all of the speech;
- silence and speech shorter than one video frame are refused with an InputError instead of producing a still face.

Every segment is encoded whole, short speech included: the encoder takes exactly 3000 mel frames and attends over
all of them, so the rows a short clip needs depend on the whole padded segment (tests/test_musetalk_engine.py).

The network is injected (`encode_segment`), so this module needs neither weights nor transformers' model code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from engine.core.errors import InputError

SAMPLE_RATE = 16000
ROWS_PER_SECOND = 50  # whisper's encoder: 2 mel frames (10 ms hop) per output row
SEGMENT_SECONDS = 30
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE
MEL_BINS = 80
MEL_FRAMES = 3000  # whisper's encoder takes exactly this many mel frames
SEGMENT_ROWS = SEGMENT_SECONDS * ROWS_PER_SECOND  # 1500 hidden-state rows per segment
PADDING_LEFT = 2  # upstream's audio_padding_length_left
PADDING_RIGHT = 2  # upstream's audio_padding_length_right
WINDOW_ROWS = 2 * (PADDING_LEFT + PADDING_RIGHT + 1)  # 10 rows per video frame
PROMPT_DIM = 384  # whisper-tiny's d_model, the UNet's cross-attention width
SILENCE_PEAK_DBFS = -60.0  # a clip whose loudest sample is below this has nothing to lip-sync to

# Frame counts are ceil(seconds * fps); products such as 16016 samples at 30000/1001 fps land a hair above an
# integer in floating point, and that hair must not add a frame.
_COUNT_TOLERANCE = 1e-6

SegmentEncoder = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- checks


def check_fps(fps: float) -> float:
    """A positive finite frame rate as a float; anything else is the caller's input error."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise InputError(f"fps must be a positive number of frames per second, got {fps!r}")
    value = float(fps)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"fps must be a positive finite number of frames per second, got {fps!r}")
    return value


def check_speech(speech: np.ndarray, fps: float) -> np.ndarray:
    """16 kHz mono float32 speech that can drive at least one frame; silence is refused, not lip-synced to."""
    fps = check_fps(fps)
    x = np.asarray(speech)
    if x.ndim != 1:
        raise InputError(f"expected 1-D mono speech at {SAMPLE_RATE} Hz, got an array of shape {x.shape}")
    if x.size == 0:
        raise InputError("the speech is empty (0 samples); MuseTalk needs speech to lip-sync to")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"expected float samples (full scale 1.0), got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise InputError(f"the speech has {bad} NaN or infinite samples; only finite samples are accepted")
    frame_seconds = 1.0 / fps
    if x.size * fps < SAMPLE_RATE * (1.0 - _COUNT_TOLERANCE):
        raise InputError(
            f"the speech is too short: {x.size / SAMPLE_RATE * 1000:.1f} ms, but one video frame at {fps:g} fps "
            f"lasts {frame_seconds * 1000:.1f} ms; give at least {math.ceil(SAMPLE_RATE / fps)} samples at "
            f"{SAMPLE_RATE} Hz"
        )
    peak = float(np.max(np.abs(x)))
    peak_dbfs = 20.0 * math.log10(peak) if peak > 0 else -math.inf
    if peak_dbfs < SILENCE_PEAK_DBFS:
        level = "digital silence" if peak == 0 else f"peak {peak_dbfs:.1f} dBFS"
        raise InputError(
            f"the speech is silent ({level}, below {SILENCE_PEAK_DBFS:g} dBFS): there is nothing to lip-sync to"
        )
    return x


# --------------------------------------------------------------------------- whisper input features


def speech_segments(speech: np.ndarray) -> list[np.ndarray]:
    """30 s pieces from the start, the last one shorter, exactly where upstream cuts them.

    The cut points matter: each segment is padded to 30 s and normalised by its own loudest mel value.
    """
    return [speech[start : start + SEGMENT_SAMPLES] for start in range(0, len(speech), SEGMENT_SAMPLES)]


@lru_cache(maxsize=4)
def feature_extractor(path: str | None = None) -> Any:
    """transformers' WhisperFeatureExtractor: from the whisper folder when given, else its defaults.

    The defaults (80 bins, 400-sample FFT, 160 hop, 30 s) are whisper-tiny's preprocessor_config.json; the mel
    filters stored in that file are recomputed by the constructor either way. Imported here because importing
    transformers takes seconds.
    """
    from transformers import WhisperFeatureExtractor

    from engine.models.checkpoints import CheckpointError

    if path is None:
        return WhisperFeatureExtractor()
    expected = "whisper-tiny's preprocessor_config.json"
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(path)
    except (ValueError, TypeError, KeyError, OSError, ZeroDivisionError) as exc:
        raise CheckpointError(f"it cannot be used ({type(exc).__name__}: {str(exc)[:300]})",
                              path=f"{path}/preprocessor_config.json", expected=expected) from None  # fmt: skip
    made = (extractor.feature_size, extractor.sampling_rate, extractor.nb_max_frames)
    if made != (MEL_BINS, SAMPLE_RATE, MEL_FRAMES):  # MuseTalk's audio network takes nothing else
        raise CheckpointError(
            f"it makes {made[0]} mel bins of {made[1]} Hz speech, {made[2]} frames a segment, where MuseTalk takes "
            f"{MEL_BINS} of {SAMPLE_RATE} Hz, {MEL_FRAMES} frames",
            path=f"{path}/preprocessor_config.json", expected=expected,
        )  # fmt: skip
    return extractor


def whisper_input_features(speech: np.ndarray, extractor: Any | None = None) -> list[torch.Tensor]:
    """One float32 (1, 80, 3000) log-mel tensor per 30 s segment, as upstream's get_audio_feature makes them."""
    extractor = feature_extractor() if extractor is None else extractor
    features = []
    for segment in speech_segments(np.asarray(speech, dtype=np.float32)):
        mel = extractor(segment, return_tensors="pt", sampling_rate=SAMPLE_RATE).input_features
        if tuple(mel.shape) != (1, MEL_BINS, MEL_FRAMES):
            raise ValueError(f"the feature extractor gave shape {tuple(mel.shape)}, not (1, 80, 3000)")
        features.append(mel)
    return features


def speech_rows(num_samples: int) -> int:
    """Hidden-state rows that hold speech, floor(seconds * 50), computed as upstream does (its trim length)."""
    return math.floor((num_samples / SAMPLE_RATE) * ROWS_PER_SECOND)


def encode_speech(speech: np.ndarray, encode_segment: SegmentEncoder, extractor: Any | None = None) -> torch.Tensor:
    """Whisper's stacked hidden states for the whole speech, (rows, layers, width), trimmed to the speech.

    `encode_segment` takes one (1, 80, 3000) float32 CPU tensor and returns (layers, 1500, width): all the
    encoder's hidden states (embeddings and every layer, five for whisper-tiny) in order. It moves the features
    to its own device and precision; the result keeps them. Validate the speech with check_speech first.
    """
    rows = []
    for features in whisper_input_features(speech, extractor):
        hidden = encode_segment(features)
        if hidden.ndim != 3 or hidden.shape[1] != SEGMENT_ROWS:
            raise ValueError(
                f"encode_segment must return (layers, {SEGMENT_ROWS}, width) per 30 s segment, "
                f"got {tuple(hidden.shape)}"
            )
        rows.append(hidden.permute(1, 0, 2))  # (1500, layers, width), as upstream's stack(..., dim=2)
    return torch.cat(rows, dim=0)[: speech_rows(len(speech))]


# --------------------------------------------------------------------------- per-frame windows


def frame_count(num_samples: int, fps: float) -> int:
    """Video frames for the speech: ceil(seconds * fps), so the last partial frame is kept (upstream: floor)."""
    fps = check_fps(fps)
    return max(0, math.ceil(num_samples * fps / SAMPLE_RATE - _COUNT_TOLERANCE))


def rows_per_frame(fps: float) -> float:
    """Hidden-state rows per video frame, 50 / fps, from the real fps (upstream: 50 / int(fps))."""
    return ROWS_PER_SECOND / check_fps(fps)


def window_starts(num_frames: int, fps: float) -> np.ndarray:
    """First padded row of each frame's window: floor(f * (50 / fps)), the ratio first as upstream computes it."""
    multiplier = rows_per_frame(fps)
    return np.floor(np.arange(num_frames, dtype=np.float64) * multiplier).astype(np.int64)


def window_padding(num_rows: int, num_frames: int, fps: float) -> tuple[int, int]:
    """Zero rows before and after the speech rows: 2*ceil(50/fps) and 6*ceil(50/fps) as upstream.

    At 50 fps and above upstream's right padding is shorter than the last windows need (its assert then ends
    the process); we add the zero rows they need, so every window upstream can cut is unchanged.
    """
    per_frame = math.ceil(rows_per_frame(fps))
    left = per_frame * PADDING_LEFT
    right = per_frame * 3 * PADDING_RIGHT
    if num_frames > 0:
        last_end = int(window_starts(num_frames, fps)[-1]) + WINDOW_ROWS
        right = max(right, last_end - left - num_rows)
    return left, right


def window_rows(num_rows: int, num_frames: int, fps: float) -> np.ndarray:
    """(frames, 10) indices into the unpadded speech rows; -1 marks a zero padding row."""
    left, _ = window_padding(num_rows, num_frames, fps)
    index = window_starts(num_frames, fps)[:, None] + np.arange(WINDOW_ROWS)[None, :] - left
    return np.where((index >= 0) & (index < num_rows), index, -1)


class SpeechWindows:
    """The audio prompts of any output frames, cut from whisper's padded rows when a batch needs them.

    All of a 10-minute clip's prompts at once would hold every hidden-state row five times over (0.6 GB in fp16 at
    25 fps); the padded rows, once, do not.
    """

    def __init__(self, hidden: torch.Tensor, num_samples: int, fps: float, num_frames: int) -> None:
        rows = speech_rows(num_samples)
        if hidden.ndim != 3 or hidden.shape[0] < rows:
            raise ValueError(f"hidden states of shape {tuple(hidden.shape)} for speech that needs {rows} rows")
        left, right = window_padding(rows, num_frames, fps)
        speech = hidden[:rows]
        zeros = speech.new_zeros
        self.padded = torch.cat([zeros((left, *speech.shape[1:])), speech, zeros((right, *speech.shape[1:]))])
        self.starts = window_starts(num_frames, fps)

    def prompts(self, frames: np.ndarray) -> torch.Tensor:
        """(len(frames), 10 * layers, width) prompts, the layer varying fastest, on the hidden states' device."""
        index = self.starts[np.asarray(frames)][:, None] + np.arange(WINDOW_ROWS)[None, :]
        windows = self.padded[torch.from_numpy(index).to(self.padded.device)]
        return windows.reshape(len(index), WINDOW_ROWS * windows.shape[2], windows.shape[3])


def audio_prompts(hidden: torch.Tensor, num_samples: int, fps: float, num_frames: int | None = None) -> torch.Tensor:
    """(frames, 10 * layers, width) audio prompts, the layer varying fastest within each row, as upstream.

    `hidden` is encode_speech's (rows, layers, width) for speech of `num_samples` samples; rows past the speech
    are trimmed here too, so untrimmed hidden states give the same prompts. `num_frames` defaults to
    frame_count(num_samples, fps).
    """
    frames = frame_count(num_samples, fps) if num_frames is None else num_frames
    return SpeechWindows(hidden, num_samples, fps, frames).prompts(np.arange(frames))


# --------------------------------------------------------------------------- positional encoding


def positional_encoding(length: int = 50, d_model: int = PROMPT_DIM) -> torch.Tensor:
    """(length, d_model) float32 sinusoids: sin on even features, cos on odd, computed in float32 as upstream's
    PositionalEncoding (musetalk/models/unet.py) computes them, so the values are bit-identical."""
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    encoding = torch.zeros(length, d_model)
    encoding[:, 0::2] = torch.sin(position * div_term)
    encoding[:, 1::2] = torch.cos(position * div_term)
    return encoding


def add_positional_encoding(prompts: torch.Tensor) -> torch.Tensor:
    """Prompts plus the encoding in the prompts' precision (upstream casts its encoding with .half() too)."""
    encoding = positional_encoding(prompts.shape[-2], prompts.shape[-1])
    return prompts + encoding.to(device=prompts.device, dtype=prompts.dtype)
