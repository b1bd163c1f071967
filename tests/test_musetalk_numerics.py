"""engine/lipsync/musetalk numerics: speech windows, positional encoding, face box, VAE pixels, blending.

Expected values are worked out by hand from upstream's rules (TMElyralab/MuseTalk audio_processor.py,
preprocessing.py, vae.py, blending.py, face_parsing); the comparison against upstream's own functions is a scratch
script outside the repository, since tests must not depend on a checkout. CPU only, no network, no weights.
"""

from __future__ import annotations

import math
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.errors import InputError
from engine.lipsync.musetalk import audio, blend, geometry
from engine.lipsync.musetalk.audio import (
    audio_prompts,
    check_speech,
    encode_speech,
    frame_count,
    window_padding,
    window_rows,
    window_starts,
)
from engine.lipsync.musetalk.blend import BlendPlan, blend_face, parsing_mask, prepare_blend
from engine.lipsync.musetalk.geometry import blend_region, detector_box, face_box, landmark_box, with_extra_margin

SR = 16000


def _tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# --------------------------------------------------------------------------- frame counts and windows


@pytest.mark.parametrize(
    ("samples", "fps", "frames", "upstream_frames"),
    [
        (16000, 25, 25, 25),
        (16001, 25, 26, 25),  # a sliver of speech past the 25th frame still gets a frame
        (8000, 25, 13, 12),  # 12.5 frames of speech
        (16000, 30, 30, 30),
        (160000, 29.97, 300, 290),  # upstream runs 29.97 as 29: 10 frames short, lips a third of a second late
        (16016, 30000 / 1001, 30, 29),
        (10010, 24000 / 1001, 15, 14),  # exactly 15 frames, 15.000000000000002 in floats: no 16th frame
        (16000, 24, 24, 24),
        (16000, 12.5, 13, 12),
        (16000, 50, 50, 50),
        (16000, 60, 60, 60),
    ],
)
def test_frame_count_is_ceil_of_seconds_times_real_fps(samples, fps, frames, upstream_frames) -> None:
    assert frame_count(samples, fps) == frames
    assert math.floor(samples / SR * int(fps)) == upstream_frames  # what upstream makes, for the record


@pytest.mark.parametrize(
    ("fps", "rows", "frames", "padding", "starts"),
    [
        # 50 / 25 = 2 rows per frame: pads 2*2 and 6*2
        (25, 50, 25, (4, 12), {0: 0, 1: 2, 12: 24, 24: 48}),
        # 50 / 30 = 1.667, ceil 2: floor(f * 1.667)
        (30, 50, 30, (4, 12), {0: 0, 1: 1, 2: 3, 3: 5, 4: 6, 5: 8, 6: 10, 7: 11, 29: 48}),
        # 50 / 29.97 = 1.668335: frame 100 at 166.83, frame 299 at 498.83
        (29.97, 500, 300, (4, 12), {100: 166, 299: 498}),
        # 50 / 24 = 2.083, ceil 3: pads 6 and 18
        (24, 50, 24, (6, 18), {1: 2, 12: 25, 23: 47}),
        # 50 / 12.5 = 4 exactly: pads 8 and 24
        (12.5, 50, 13, (8, 24), {1: 4, 12: 48}),
        # 50 / 60 = 0.833, ceil 1: left 2; upstream's right 6 is one short of frame 59's window (49 + 10 = 59 > 58)
        (60, 50, 60, (2, 7), {1: 0, 2: 1, 6: 5, 59: 49}),
        # 50 fps: one row per frame; frame 49's window ends at 59 > 2 + 50 + 6
        (50, 50, 50, (2, 7), {1: 1, 49: 49}),
    ],
)
def test_window_starts_and_padding(fps, rows, frames, padding, starts) -> None:
    assert window_padding(rows, frames, fps) == padding
    found = window_starts(frames, fps)
    assert len(found) == frames
    for frame, start in starts.items():
        assert found[frame] == start, frame


def test_window_rows_at_the_ends() -> None:
    # 25 fps, 1 s: frame 0 takes 4 zero rows then rows 0..5; frame 24 takes rows 44..49 then 4 zero rows.
    rows = window_rows(50, 25, 25)
    assert rows[0].tolist() == [-1, -1, -1, -1, 0, 1, 2, 3, 4, 5]
    assert rows[24].tolist() == [44, 45, 46, 47, 48, 49, -1, -1, -1, -1]
    # 29.97 fps, 10 s: frame 299 starts at padded row 498, i.e. speech row 494; speech ends at row 499.
    assert window_rows(500, 300, 29.97)[299].tolist() == [494, 495, 496, 497, 498, 499, -1, -1, -1, -1]
    # 24 fps: six zero rows on the left.
    assert window_rows(50, 24, 24)[0].tolist() == [-1] * 6 + [0, 1, 2, 3]
    # 12.5 fps: the extra 13th frame (speech rows 40..49) exists and is all speech.
    assert window_rows(50, 13, 12.5)[12].tolist() == list(range(40, 50))
    # 60 fps: the last frame needs seven zero rows after the speech.
    assert window_rows(50, 60, 60)[59].tolist() == [47, 48, 49] + [-1] * 7


def _labelled_hidden(rows: int, layers: int = 5, width: int = 3) -> torch.Tensor:
    """Hidden states whose value says where they came from: 1000 + 10 * row + layer."""
    row = torch.arange(rows, dtype=torch.float32)[:, None, None]
    layer = torch.arange(layers, dtype=torch.float32)[None, :, None]
    return (1000 + 10 * row + layer).expand(rows, layers, width).clone()


@pytest.mark.parametrize(("samples", "fps"), [(16000, 25), (16000, 30), (160000, 29.97), (8000, 12.5), (16000, 60)])
def test_audio_prompts_flatten_rows_with_the_layer_fastest(samples, fps) -> None:
    rows = audio.speech_rows(samples)
    hidden = _labelled_hidden(rows + 7)  # rows past the speech are trimmed, as upstream trims the last segment
    prompts = audio_prompts(hidden, samples, fps)
    frames = frame_count(samples, fps)
    assert prompts.shape == (frames, 50, 3)
    index = window_rows(rows, frames, fps)
    for f in (0, frames // 2, frames - 1):
        for j in range(50):
            row, layer = index[f, j // 5], j % 5
            expected = 0.0 if row < 0 else 1000 + 10 * row + layer
            assert prompts[f, j, 0].item() == expected, (f, j)


def test_audio_prompts_keep_precision_and_reject_short_hidden_states() -> None:
    hidden = _labelled_hidden(50).half()
    assert audio_prompts(hidden, 16000, 25).dtype == torch.float16
    with pytest.raises(ValueError, match="rows"):
        audio_prompts(_labelled_hidden(49), 16000, 25)


# --------------------------------------------------------------------------- whisper segments


class _FakeExtractor:
    """Records the segments it is given and returns features that say the segment's length."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def __call__(self, segment, return_tensors, sampling_rate):
        assert return_tensors == "pt" and sampling_rate == SR
        self.lengths.append(len(segment))
        return types.SimpleNamespace(input_features=torch.full((1, 80, 3000), float(len(segment))))


def test_encode_speech_cuts_30_s_segments_and_concatenates_at_50_rows_per_second() -> None:
    speech = _tone(31.0)
    extractor = _FakeExtractor()
    calls: list[tuple[int, ...]] = []

    def encode_segment(features: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(features.shape))
        segment = len(calls) - 1
        row = torch.arange(1500, dtype=torch.float32)[None, :, None]
        layer = torch.arange(5, dtype=torch.float32)[:, None, None]
        return (segment * 100000 + 10 * row + layer).expand(5, 1500, 4)

    hidden = encode_speech(speech, encode_segment, extractor)
    assert extractor.lengths == [480000, 16000]
    assert calls == [(1, 80, 3000), (1, 80, 3000)]
    assert hidden.shape == (1550, 5, 4)  # floor(31 s * 50)
    assert hidden[1499, 2, 0].item() == 14992  # segment 0, row 1499, layer 2
    assert hidden[1500, 3, 0].item() == 100003  # segment 1, row 0, layer 3
    with pytest.raises(ValueError, match="1500"):
        encode_speech(speech, lambda f: torch.zeros(5, 1499, 4), extractor)


def test_whisper_features_pad_each_segment_on_its_own() -> None:
    features = audio.whisper_input_features(_tone(31.0))
    assert [tuple(f.shape) for f in features] == [(1, 80, 3000), (1, 80, 3000)]
    assert all(f.dtype == torch.float32 for f in features)
    second = features[1][0]
    # 1 s of tone, then padding: every padded frame sits at the segment's floor (its own max - 8 dB, rescaled).
    assert torch.all(second[:, 200:] == second.min())
    assert second[:, :90].max() > second.min() + 0.5


# --------------------------------------------------------------------------- bad speech


@pytest.mark.parametrize(
    ("speech", "fps", "message"),
    [
        (np.zeros(16000, np.float32), 25, "silent"),
        (np.full(16000, 1e-5, np.float32), 25, "silent"),  # -100 dBFS
        (_tone(0.02), 25, "too short"),  # 20 ms, one frame lasts 40 ms
        (np.zeros(0, np.float32), 25, "empty"),
        (np.stack([_tone(1.0), _tone(1.0)]), 25, "mono"),
        (np.array([0.1, np.nan] * 8000, np.float32), 25, "NaN"),
        (np.arange(16000, dtype=np.int16), 25, "float"),
        (_tone(1.0), 0, "fps"),
        (_tone(1.0), float("nan"), "fps"),
    ],
)
def test_bad_speech_is_an_input_error(speech, fps, message) -> None:
    with pytest.raises(InputError, match=message):
        check_speech(speech, fps)


def test_speech_of_one_frame_is_accepted() -> None:
    assert check_speech(_tone(0.04), 25).dtype == np.float32


# --------------------------------------------------------------------------- positional encoding


def _hand_pe(position: int, feature: int) -> float:
    frequency = math.exp((feature - feature % 2) * -math.log(10000.0) / 384)
    return math.sin(position * frequency) if feature % 2 == 0 else math.cos(position * frequency)


def test_positional_encoding_values() -> None:
    pe = audio.positional_encoding()
    assert pe.shape == (50, 384) and pe.dtype == torch.float32
    assert pe[0, 0].item() == 0.0 and pe[0, 1].item() == 1.0
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert pe[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert pe[2, 2].item() == pytest.approx(math.sin(2 * 10000 ** (-2 / 384)), abs=1e-6)
    for position, feature in [(10, 100), (49, 382), (49, 383), (7, 31)]:
        assert pe[position, feature].item() == pytest.approx(_hand_pe(position, feature), abs=2e-6)


def test_positional_encoding_is_added_in_the_prompts_precision() -> None:
    prompts = torch.zeros(2, 50, 384, dtype=torch.float16)
    out = audio.add_positional_encoding(prompts)
    assert out.dtype == torch.float16
    assert torch.equal(out[1], audio.positional_encoding().half())


# --------------------------------------------------------------------------- face box


def _landmarks(bridge_y: float = 180.9, chin_y: float = 300.6, left_x: float = 100.7) -> np.ndarray:
    """68 points at (150, 150) but for the leftmost (0), the chin (8), the rightmost (16) and the bridge (29)."""
    points = np.full((68, 2), 150.0, np.float32)
    points[0] = (left_x, 150)
    points[8] = (150.4, chin_y)
    points[16] = (200.2, 150)
    points[29] = (150.0, bridge_y)
    return points


def test_landmark_box_mirrors_the_nose_bridge_from_the_chin() -> None:
    # chin 300, bridge 180: the top is 180 - (300 - 180) = 60; the sides are the outermost points, truncated.
    assert landmark_box(_landmarks()) == (100, 60, 200, 300)
    assert landmark_box(_landmarks(), bbox_shift=10) == (100, 80, 200, 300)  # bridge 190: 190 - 110
    assert landmark_box(_landmarks(), bbox_shift=-10) == (100, 40, 200, 300)  # bridge 170: 170 - 130


def test_landmark_box_clamps_at_zero_and_falls_back() -> None:
    assert landmark_box(_landmarks(bridge_y=100.0)) == (100, 0, 200, 300)  # 100 - 200 < 0
    assert landmark_box(_landmarks(left_x=-0.9)) == (0, 60, 200, 300)  # truncated toward zero, as upstream
    assert landmark_box(_landmarks(left_x=-3.7)) is None  # starts left of the frame
    assert landmark_box(_landmarks(), bbox_shift=130) is None  # the bridge moved below the chin: no height
    detection = (90.6, 50.2, 210.9, 320.0, 0.99)
    assert face_box(_landmarks(), detection, (480, 640, 3), bbox_shift=130) == (90, 50, 210, 320)
    assert face_box(None, detection, (480, 640, 3)) == (90, 50, 210, 320)  # no landmark model
    assert face_box(_landmarks(), None, (480, 640, 3)) is None  # no face detected: the frame passes through


def test_a_landmark_box_of_no_width_falls_back() -> None:
    """Guards `x2 - x1 <= 0` in upstream's unusable-box rule: a face squeezed to one column is not a box."""
    points = _landmarks()
    points[:, 0] = 120.4
    assert landmark_box(points) is None
    assert face_box(points, (90.6, 50.2, 210.9, 320.0, 0.99), (480, 640, 3)) == (90, 50, 210, 320)


def test_landmarks_and_detections_of_the_wrong_shape_are_refused() -> None:
    """Guards the input checks: 5 points or a 3-value box would make a wrong box silently, not an error."""
    with pytest.raises(ValueError, match="68 face landmarks"):
        landmark_box(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="68 face landmarks"):
        geometry.bbox_shift_range([np.zeros((68,), np.float32)])
    for bad in [(1.0, 2.0, 3.0), (0.0, 0.0, float("nan"), 50.0)]:
        with pytest.raises(ValueError, match="detector box"):
            detector_box(bad, (480, 640, 3))


def test_detector_box_is_clipped_to_the_frame() -> None:
    assert detector_box((-5.7, 10.2, 700.9, 99.9, 0.9), (480, 640, 3)) == (0, 10, 640, 99)
    assert detector_box((700.0, 10.0, 800.0, 50.0), (480, 640, 3)) is None
    # a box that starts exactly at the right or bottom edge holds no pixels either: no face, not an empty box
    assert detector_box((640.0, 10.0, 800.0, 50.0), (480, 640, 3)) is None
    assert detector_box((10.0, 480.0, 50.0, 500.0), (480, 640, 3)) is None


def test_extra_margin_is_clipped_at_the_frame() -> None:
    assert with_extra_margin((100, 60, 200, 300), 480) == (100, 60, 200, 310)
    assert with_extra_margin((100, 60, 200, 300), 305) == (100, 60, 200, 305)
    assert with_extra_margin((100, 60, 200, 300), 480, extra_margin=0) == (100, 60, 200, 300)


def test_bbox_shift_range() -> None:
    points = _landmarks()
    points[28] = (150, 170.2)
    points[30] = (150, 195.0)
    assert geometry.bbox_shift_range([points, points]) == (-15, 10)
    # landmark 30 above 29 (a face upside down): means of -2.5 and 7.5 truncate toward zero, as upstream's int()
    above, further_above = points.copy(), points.copy()
    above[30], further_above[30] = (150, 178.0), (150, 177.0)
    further_above[28] = (150, 175.0)
    assert geometry.bbox_shift_range([above, further_above]) == (2, 7)


def test_crop_face_is_lanczos_to_256() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[60:310, 100:200] = (10, 20, 30)
    crop = geometry.crop_face(frame, (100, 60, 200, 310))
    assert crop.shape == (256, 256, 3)
    assert (crop == (10, 20, 30)).all()
    with pytest.raises(ValueError, match="no pixels"):
        geometry.crop_face(frame, (100, 60, 100, 310))


def test_crop_face_resamples_with_lanczos() -> None:
    """Guards the filter: a flat patch looks the same through any filter, a textured one only through Lanczos."""
    frame = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    crop = geometry.crop_face(frame, (100, 60, 201, 311))
    expected = cv2.resize(frame[60:311, 100:201], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    assert np.array_equal(crop, expected)


# --------------------------------------------------------------------------- VAE pixels


def test_half_mask_blanks_the_lower_half_before_normalising() -> None:
    mask = geometry.half_mask()
    assert mask[:128].eq(1).all() and mask[128:].eq(0).all()
    crop = np.zeros((1, 256, 256, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 0, 128, 255  # B, G, R
    reference = geometry.vae_pixels(torch.from_numpy(crop), masked=False)
    masked = geometry.vae_pixels(torch.from_numpy(crop), masked=True)
    assert reference.shape == (1, 3, 256, 256) and reference.dtype == torch.float32
    # upstream's layout: a channels-last view would run the encoder's other kernels (latents up to 6e-5 apart)
    assert reference.is_contiguous() and masked.is_contiguous()
    assert reference[0, 0].eq(1.0).all()  # R first
    assert reference[0, 1].eq((torch.tensor(128 / 255) - 0.5) / 0.5).all()  # float32, as upstream
    assert reference[0, 2].eq(-1.0).all()
    assert torch.equal(masked[:, :, :128], reference[:, :, :128])
    assert masked[:, :, 128:].eq(-1.0).all()  # black in [0, 1] space, -1 after normalising


def test_unet_input_puts_the_masked_latents_first() -> None:
    masked, reference = torch.zeros(2, 4, 32, 32), torch.ones(2, 4, 32, 32)
    latents = geometry.unet_input(geometry.scaled_latents(masked), geometry.scaled_latents(reference))
    assert latents.shape == (2, 8, 32, 32)
    assert latents[:, :4].eq(0).all() and latents[:, 4:].eq(np.float32(0.18215)).all()
    assert torch.equal(geometry.decoder_latents(torch.ones(1)), torch.tensor([1 / 0.18215]))
    # upstream multiplies by the rounded reciprocal; dividing by 0.18215 differs in the last bit for about 1 in 5
    latents = torch.linspace(-5, 5, 1001)
    assert torch.equal(geometry.decoder_latents(latents), (1 / 0.18215) * latents)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_rounds_half_to_even_clamps_and_gives_bgr(dtype) -> None:
    images = torch.zeros(1, 3, 2, 4, dtype=dtype)
    # R: x = -3, -1, 1, 3 -> 0, 0, 255, 255 (clamped); G: 0 -> 127.5 -> 128 (half to even), ±0.5 -> 64, 191
    images[0, 0] = torch.tensor([[-3.0, -1.0, 1.0, 3.0], [-3.0, -1.0, 1.0, 3.0]])
    images[0, 1] = torch.tensor([[0.0, -0.5, 0.5, 0.0], [0.0, -0.5, 0.5, 0.0]])
    images[0, 2] = -1.0  # B
    pixels = geometry.decoded_to_bgr(images)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 2, 4, 3)
    assert pixels[0, 0, :, 2].tolist() == [0, 0, 255, 255]  # R is last
    assert pixels[0, 0, :, 1].tolist() == [128, 64, 191, 128]
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 0, 0]


def test_blend_region_is_a_square_of_1_5_half_sides() -> None:
    # centre (150, 185); larger side 250 -> 125 * 1.5 = 187.5 -> 187
    assert blend_region((100, 60, 200, 310)) == (-37, -2, 337, 372)
    # odd sizes: centre (150, 130) by floor division, 141 // 2 = 70 -> 105
    assert blend_region((100, 60, 201, 201)) == (45, 25, 255, 235)
    # the centre is floored, not rounded: (101 + 202) / 2 = 151.5 -> 151, (61 + 202) / 2 = 131.5 -> 131
    assert blend_region((101, 61, 202, 202)) == (46, 26, 256, 236)
    # the half-side halves the side by floor division first: 103 // 2 * 1.5 = 76.5 -> 76 (103 / 2 * 1.5 gives 77)
    assert blend_region((100, 60, 150, 163)) == (49, 35, 201, 187)


# --------------------------------------------------------------------------- parsing masks


def test_parsing_modes() -> None:
    labels = np.array([[0, 1, 10, 11], [12, 13, 14, 17]])
    raw = parsing_mask(labels, "raw")
    assert raw.tolist() == [[0, 255, 0, 255], [255, 255, 0, 0]]
    assert parsing_mask(labels, "neck").tolist() == [[0, 255, 0, 255], [255, 255, 255, 0]]
    with pytest.raises(ValueError, match="jaw, raw, neck"):
        parsing_mask(labels, "chin")


def test_jaw_mode_grows_the_jaw_spares_the_nose_and_erodes_the_cheeks() -> None:
    labels = np.zeros((512, 512), np.int64)
    labels[150:351, 100:413] = blend.SKIN
    labels[240:280, 236:276] = blend.NOSE
    labels[300:310, 230:280] = blend.MOUTH
    mask = parsing_mask(labels, "jaw")
    assert mask[355, 256] == 255 and mask[357, 256] == 0  # 5 px below the skin in the middle, not 7
    assert mask[260, 256] == 0  # the nose is never replaced
    assert mask[305, 256] == 255
    assert mask[250, 95] == 0 and mask[250, 125] == 255  # the cheeks give up their outer 10+ px
    assert parsing_mask(labels, "raw")[355, 256] == 0
    assert blend.cheek_mask(90, 90)[0, 166] == 255 and blend.cheek_mask(90, 90)[0, 167] == 0
    assert blend.cheek_mask(90, 90)[0, 345] == 0 and blend.cheek_mask(90, 90)[0, 346] == 255


def test_jaw_mode_dilates_one_skin_pixel_into_upstreams_kernel() -> None:
    """Guards the kernel's shape: one skin pixel in the middle band grows 16 px up at full width (10 px each side),
    then narrows by a pixel a row to a 1-pixel tip 6 px below it, as upstream's cone and stem."""
    labels = np.zeros((512, 512), np.int64)
    labels[300, 256] = blend.SKIN
    mask = parsing_mask(labels, "jaw")
    expected = np.zeros((512, 512), np.uint8)
    for dy in range(-16, 7):
        half = 10 if dy <= -4 else 6 - dy
        expected[300 + dy, 256 - half : 256 + half + 1] = 255
    assert np.array_equal(mask, expected)


def test_jaw_mode_spares_the_nose_where_the_skin_grows_over_it() -> None:
    """Guards the nose rule: the skin below the nose dilates 16 px up into it, and those pixels stay the frame's."""
    labels = np.zeros((512, 512), np.int64)
    labels[280:351, 200:313] = blend.SKIN
    labels[240:280, 236:276] = blend.NOSE
    mask = parsing_mask(labels, "jaw")
    assert (mask[270:280, 236:276] == 0).all()  # nose pixels the dilated skin reaches
    assert (mask[270:280, 226:236] == 255).all()  # beside the nose, the same rows are replaced


def test_jaw_mode_erodes_the_cheeks_twice_within_the_cheek_widths() -> None:
    """Guards the cheek erosion: two passes of the 35x3 ellipse take 34 px off the dilated skin's sides, only on
    the columns the cheek widths give (left width, then right); the default widths are v1.5's 90, not 80."""
    labels = np.zeros((512, 512), np.int64)
    labels[150:351, 170:343] = blend.SKIN  # dilated: columns 160..352; eroded twice: 194..318

    def replaced(*widths: int) -> tuple[int, int]:
        columns = np.nonzero(parsing_mask(labels, "jaw", *([widths] if widths else [])))[1]
        return int(columns.min()), int(columns.max())

    assert replaced() == (167, 345)  # cheeks 0..166 and 346..511: the dilated skin in the middle band
    assert replaced(60, 120) == (194, 352)  # the left cheek (0..196) eroded, the right one (376..511) beyond it
    assert replaced(120, 60) == (160, 318)


def test_jaw_mode_always_replaces_the_mouth_and_both_lips() -> None:
    """Guards the jaw mode's mouth classes: lips away from any skin are still replaced, the neck is not."""
    labels = np.zeros((512, 512), np.int64)
    labels[100:110, 100:110] = blend.MOUTH
    labels[200:210, 200:210] = blend.UPPER_LIP
    labels[300:310, 300:310] = blend.LOWER_LIP
    labels[400:410, 400:410] = blend.NECK
    mask = parsing_mask(labels, "jaw")
    assert (mask[100:110, 100:110] == 255).all() and (mask[200:210, 200:210] == 255).all()
    assert (mask[300:310, 300:310] == 255).all() and mask.sum() == 3 * 100 * 255


# --------------------------------------------------------------------------- prepare and blend


BOX = (100, 60, 201, 201)  # region (45, 25, 255, 235): side 210, lower half from row 25 + 105 = 130


def _frame_and_face(box=BOX, shape=(240, 320)):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (box[3] - box[1], box[2] - box[0], 3), dtype=np.uint8)
    return frame, face


def _skin_labels() -> np.ndarray:
    return np.full((512, 512), blend.SKIN, np.int64)


def test_prepared_mask_is_the_box_below_the_middle() -> None:
    plan = prepare_blend(BOX, _skin_labels(), "raw", blur_fraction=0.0)  # kernel 1: no blur
    assert plan.region == (45, 25, 255, 235) and plan.mask.shape == (210, 210)
    expected = np.zeros((210, 210), np.uint8)
    expected[105:176, 55:156] = 255  # rows 130..200 and columns 100..200 of the frame
    assert np.array_equal(plan.mask.numpy(), expected)
    assert blend.blur_kernel_size(210, blend.BLUR_PREPARED) == 21
    assert blend.blur_kernel_size(210, blend.BLUR_ONE_SHOT) == 11


def test_blur_kernel_truncates_before_making_it_odd() -> None:
    """Guards upstream's int(fraction * side // 2 * 2) + 1: 21.5 and 21.9 give 21, not a rounded 23."""
    assert blend.blur_kernel_size(215) == 21 and blend.blur_kernel_size(219) == 21
    assert blend.blur_kernel_size(220) == 23 and blend.blur_kernel_size(9) == 1


def test_prepared_mask_is_resized_bicubic_and_blurred_with_the_kernels_own_sigma() -> None:
    """Guards the resampling and the blur: a parsed edge reaches the region through PIL's bicubic filter, and the
    mask is blurred with cv2's sigma for the kernel size (sigma 0), as upstream's get_image_prepare_material."""
    rows, columns = np.mgrid[0:512, 0:512]
    labels = np.where((rows // 16 + columns // 16) % 2 == 0, blend.SKIN, 0)  # a checkerboard of parsed edges
    sharp = prepare_blend(BOX, labels, "raw", blur_fraction=0.0).mask.numpy()
    resized = np.asarray(Image.fromarray(parsing_mask(labels, "raw")).resize((210, 210), Image.Resampling.BICUBIC))
    expected = np.zeros((210, 210), np.uint8)
    expected[105:176, 55:156] = resized[105:176, 55:156]
    assert np.array_equal(sharp, expected)
    blurred = prepare_blend(BOX, labels, "raw").mask.numpy()
    assert np.array_equal(blurred, cv2.GaussianBlur(expected, (21, 21), 0))


def test_the_parsers_region_is_black_past_the_frame() -> None:
    """Guards region_pixels: as PIL's crop, the part of the blend region outside the frame is black (0)."""
    frame = np.full((100, 120, 3), 200, np.uint8)
    frame[0, 0] = (1, 2, 3)
    region = blend.region_pixels(frame, (-10, -20, 50, 40))
    assert region.shape == (60, 60, 3)
    assert (region[:20] == 0).all() and (region[:, :10] == 0).all()
    assert tuple(region[20, 10]) == (1, 2, 3) and (region[21:, 11:] == 200).all()


def test_the_parsers_region_is_black_past_the_right_and_bottom_of_a_wide_frame() -> None:
    """Guards region_pixels on a frame wider than tall: the region is cut at the frame's width on the right and at
    its height below, black beyond both."""
    frame = np.full((100, 160, 3), 200, np.uint8)
    frame[99, 159] = (1, 2, 3)
    region = blend.region_pixels(frame, (130, 70, 190, 130))
    assert region.shape == (60, 60, 3)
    assert (region[30:] == 0).all() and (region[:, 30:] == 0).all()
    assert tuple(region[29, 29]) == (1, 2, 3) and (region[:29, :29] == 200).all()


def test_the_jaw_mode_spares_bisenets_class_10_the_nose_only() -> None:
    """Guards the nose's class number: of the pixels the dilated skin reaches, those BiSeNet labels 10 (nose) stay
    the frame's, those it labels 9 (an earring, CelebAMask-HQ's "ear_r") are replaced."""
    labels = np.zeros((512, 512), np.int64)
    labels[280:351, 200:313] = 1  # skin
    labels[270:280, 236:256] = 10
    labels[270:280, 256:276] = 9
    mask = parsing_mask(labels, "jaw")
    assert (mask[270:280, 236:256] == 0).all() and (mask[270:280, 256:276] == 255).all()


def test_a_face_box_too_small_for_a_blend_region_is_refused() -> None:
    """Guards prepare_blend's check: a 1-pixel box has a region of side 0, said as such rather than left to PIL."""
    with pytest.raises(ValueError, match="too small for a blend region"):
        prepare_blend((10, 10, 11, 11), _skin_labels())


def test_a_face_box_without_parsing_labels_is_refused() -> None:
    """Guards prepare_blend's check: a face with no labels would otherwise fail deep inside the mask's resize."""
    with pytest.raises(ValueError, match="parsing labels"):
        prepare_blend(BOX, None)


def test_blending_changes_nothing_outside_the_blend_region() -> None:
    frame, face = _frame_and_face()
    plan = prepare_blend(BOX, _skin_labels(), "jaw")
    out = blend_face(frame, face, plan)
    x1, y1, x2, y2 = plan.region
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], frame[outside])
    assert not np.array_equal(out[y1:y2, x1:x2], frame[y1:y2, x1:x2])
    assert np.array_equal(out[:120], frame[:120])  # above the region's middle less the blur radius (10)
    assert np.array_equal(frame, _frame_and_face()[0])  # the input is not modified


def test_unblurred_mask_puts_the_face_exactly_in_the_lower_box() -> None:
    frame, face = _frame_and_face()
    out = blend_face(frame, face, prepare_blend(BOX, _skin_labels(), "raw", blur_fraction=0.0))
    assert np.array_equal(out[130:201, 100:201], face[70:141])
    assert np.array_equal(out[:130], frame[:130])


def _pil_paste(frame: np.ndarray, face: np.ndarray, plan: BlendPlan) -> np.ndarray:
    """The reference: PIL pastes the face into the region, then the region into the frame through the mask."""
    body = Image.fromarray(frame)
    region = body.crop(plan.region)
    x1, y1 = plan.box[0] - plan.region[0], plan.box[1] - plan.region[1]
    region.paste(Image.fromarray(face), (x1, y1, x1 + face.shape[1], y1 + face.shape[0]))
    body.paste(region, plan.region[:2], Image.fromarray(plan.mask.numpy()))
    return np.asarray(body)


@pytest.mark.parametrize(
    ("box", "mode"),
    [(BOX, "jaw"), ((0, 0, 90, 110), "raw"), ((250, 150, 320, 240), "neck"), ((100, 100, 103, 103), "raw")],
)  # the last: a 3-pixel box reaches past its 2-pixel region, where upstream's paste stops
def test_blend_matches_pil_paste_even_past_the_frame_edges(box, mode) -> None:
    frame, face = _frame_and_face(box)
    labels = _skin_labels()
    labels[300:, 200:300] = blend.LOWER_LIP
    labels[:, :40] = blend.NECK
    plan = prepare_blend(box, labels, mode)
    out = blend_face(frame, face, plan)
    assert np.array_equal(out, _pil_paste(frame, face, plan))
    as_torch = blend_face(torch.from_numpy(frame), torch.from_numpy(face), plan)
    assert isinstance(as_torch, torch.Tensor) and np.array_equal(as_torch.numpy(), out)


def test_a_frame_without_a_face_passes_through_unchanged() -> None:
    frame, face = _frame_and_face()
    assert prepare_blend(None, None) is None
    assert blend_face(frame, face, None) is frame
    assert geometry.face_box(None, None, frame.shape) is None


def test_blend_rejects_a_face_of_the_wrong_size() -> None:
    frame, face = _frame_and_face()
    plan = prepare_blend(BOX, _skin_labels(), "raw")
    with pytest.raises(ValueError, match="box"):
        blend_face(frame, face[:-1], plan)


def test_face_to_box_is_cv2_bilinear() -> None:
    face = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    resized = blend.face_to_box(face, BOX)
    assert resized.shape == (141, 101, 3)
    assert np.array_equal(resized, cv2.resize(face, (101, 141), interpolation=cv2.INTER_LINEAR))


def test_parser_input_is_imagenet_normalised_512() -> None:
    region = np.zeros((300, 300, 3), np.uint8)
    region[..., 2] = 255  # red in BGR
    pixels = blend.parser_input(region)
    assert pixels.shape == (1, 3, 512, 512)
    assert pixels[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-6)
    assert pixels[0, 2, 0, 0].item() == pytest.approx((0 - 0.406) / 0.225, abs=1e-6)
    logits = torch.zeros(1, 19, 4, 4)
    logits[0, 13, 1, 2] = 1.0
    labels = blend.parsing_labels(logits)
    assert labels[1, 2] == 13 and labels[0, 0] == 0
    # a textured region: PIL's bilinear filter (antialiased when shrinking), every channel normalised
    textured = np.random.default_rng(4).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(textured[:, :, ::-1])).resize((512, 512), Image.BILINEAR))
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    expected = ((rgb.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)
    assert np.allclose(blend.parser_input(textured)[0].numpy(), expected, atol=1e-5)


def test_window_starts_take_the_ratio_first_as_upstream() -> None:
    """Guards floor(f * (50 / fps)): at 24000/1001 fps frame 480 starts exactly 1001 rows in, which the ratio first
    gives in floats, while f * 50 / fps gives 1000.9999999999999 and the frame's window would start a row early."""
    fps = 24000 / 1001
    assert window_starts(961, fps)[[480, 960]].tolist() == [1001, 2002]


def test_one_frame_of_50_fps_speech_has_its_whole_window() -> None:
    """Guards the right padding of a one-frame clip: 320 samples are one 50 fps frame and one speech row, and the
    frame's window needs seven zero rows after it, one more than upstream's six (too few cut a short window)."""
    assert frame_count(320, 50) == 1 and window_padding(1, 1, 50) == (2, 7)
    prompts = audio_prompts(_labelled_hidden(1), 320, 50)
    assert prompts.shape == (1, 50, 3)
    assert prompts[0, 10:15, 0].tolist() == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]  # row 2 of the window
    assert prompts[0, :10].eq(0).all() and prompts[0, 15:].eq(0).all()


def test_a_partial_hidden_state_row_at_the_end_is_trimmed() -> None:
    """Guards floor(seconds * 50) as the speech's rows: 16319 samples are 50.997 rows, so row 50 (mostly the
    segment's padding) is cut and the last frame's window sees zeros there, as upstream trims it."""
    assert audio.speech_rows(16319) == 50
    extractor = _FakeExtractor()
    hidden = encode_speech(_tone(16319 / SR), lambda f: torch.ones(5, 1500, 2), extractor)
    assert hidden.shape == (50, 5, 2)
    prompts = audio_prompts(_labelled_hidden(60), 16319, 25)
    assert prompts.shape == (26, 50, 3)  # ceil(25.4984 frames)
    # frame 25 starts at padded row 50, speech row 46: rows 46..49, then zeros where row 50 would be
    assert prompts[25, 15:20, 0].tolist() == [1490.0, 1491.0, 1492.0, 1493.0, 1494.0]
    assert prompts[25, 20:].eq(0).all()


def test_speech_is_silent_below_minus_60_dbfs_and_says_its_peak() -> None:
    """Guards the silence threshold a user meets: a clip peaking at -59 dBFS is lip-synced to, one at -61 dBFS is
    refused with its peak and the threshold in the message."""
    assert check_speech(_tone(0.5, amplitude=10 ** (-59 / 20)), 25).dtype == np.float32
    with pytest.raises(InputError, match=r"the speech is silent \(peak -61\.0 dBFS, below -60 dBFS\)"):
        check_speech(_tone(0.5, amplitude=10 ** (-61 / 20)), 25)
    with pytest.raises(InputError, match=r"\(digital silence, below -60 dBFS\)"):
        check_speech(np.zeros(8000, np.float32), 25)


def test_too_short_speech_says_how_many_samples_one_frame_needs() -> None:
    """Guards the refusal's numbers: one 30 fps frame lasts 33.3 ms, 533.3 samples, so at least 534 are asked for."""
    with pytest.raises(InputError, match=r"one video frame at 30 fps lasts 33\.3 ms; give at least 534 samples"):
        check_speech(_tone(0.02), 30)


@pytest.mark.parametrize("fps", [float("inf"), True, "25", -25.0])
def test_fps_must_be_a_positive_finite_number(fps) -> None:
    """Guards check_fps: an infinite rate would make every window start at row 0, True would run as 1 fps."""
    with pytest.raises(InputError, match="fps must be a positive"):
        audio.check_fps(fps)
    assert audio.check_fps(np.int64(25)) == 25.0 and isinstance(audio.check_fps(np.float32(12.5)), float)


def test_features_of_another_shape_are_refused() -> None:
    """Guards the feature check: whisper-tiny's encoder takes exactly 3000 mel frames; an extractor set up for
    another length is named, not passed on to fail inside the encoder."""

    class HalfLength(_FakeExtractor):
        def __call__(self, segment, return_tensors, sampling_rate):
            return types.SimpleNamespace(input_features=torch.zeros(1, 80, 1500))

    with pytest.raises(ValueError, match=r"gave shape \(1, 80, 1500\), not \(1, 80, 3000\)"):
        audio.whisper_input_features(_tone(1.0), HalfLength())


# --------------------------------------------------------------------------- upstream's formulas, written out


def _upstream_positional_table(max_len: int = 5000, d_model: int = 384) -> torch.Tensor:
    """unet.py's PositionalEncoding buffer: the whole max_len table in float32, sin on even features, cos on odd."""
    table = torch.zeros(max_len, d_model)
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


def test_positional_encoding_is_bit_identical_to_upstreams_sliced_table() -> None:
    """Upstream slices its 5000-row float32 table to the prompt's 50 rows and, in fp16, halves the table before the
    add; the values (not just within 1e-6) must be the same, or fp16 prompts move by one step."""
    table = _upstream_positional_table()
    assert torch.equal(audio.positional_encoding(50, 384), table[:50])
    prompts = torch.randn(3, 50, 384, generator=torch.Generator().manual_seed(0)).half()
    assert torch.equal(audio.add_positional_encoding(prompts), prompts + table.half()[:50])


def _upstream_vae_input(crop_bgr: np.ndarray, half_mask: bool) -> torch.Tensor:
    """vae.py's preprocess_img on an already resized crop: RGB, float64 / 255, FloatTensor, the half mask applied
    as a bool multiply in [0, 1] space, then Normalize(0.5, 0.5)."""
    x = np.asarray([crop_bgr[..., ::-1]]) / 255.0
    x = torch.squeeze(torch.FloatTensor(np.transpose(x, (3, 0, 1, 2))))
    if half_mask:
        mask = torch.zeros(x.shape[-2], x.shape[-1])
        mask[: x.shape[-2] // 2, :] = 1
        x = x * (mask > 0.5)
    return ((x - 0.5) / 0.5).unsqueeze(0)


@pytest.mark.parametrize("masked", [False, True])
def test_vae_pixels_equal_upstreams_preprocess_for_every_byte(masked: bool) -> None:
    """Every uint8 value in every channel and row (the 256x256 crop holds all 256 values in each row) must reach the
    VAE as upstream's float64-then-float32 division makes it; a float32 multiply by 1/255 would not."""
    ramp = np.arange(256, dtype=np.uint8)
    crop = np.stack([np.tile(ramp, (256, 1)), np.tile(ramp[::-1], (256, 1)), np.roll(np.tile(ramp, (256, 1)), 7, 1)])
    crop = np.ascontiguousarray(crop.transpose(1, 2, 0))  # (256, 256, 3) BGR
    ours = geometry.vae_pixels(torch.from_numpy(crop[None]), masked=masked)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, _upstream_vae_input(crop, masked))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_equals_upstreams_decode_latents_on_random_images(dtype) -> None:
    """vae.py's decode_latents after the decoder: (x / 2 + 0.5).clamp(0, 1) in the decoder's dtype, then float32,
    x 255 and numpy's round (half to even) to uint8, RGB to BGR. In fp16 the clamp must stay in fp16."""
    images = (torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 1.3).to(dtype)
    unit = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    expected = (unit * 255).round().astype("uint8")[..., ::-1]
    assert np.array_equal(geometry.decoded_to_bgr(images).numpy(), expected)


def _upstream_whisper_chunks(segment_states: list[torch.Tensor], num_samples: int, fps: int) -> torch.Tensor:
    """audio_processor.py's get_whisper_chunk after the encoder, left and right padding 2: each segment's hidden
    states stacked on dim 2, segments joined, trimmed to floor(seconds * 50) rows, zero rows before (2 * ceil(50 /
    fps)) and after (6 * ceil(50 / fps)), frame f's 10 rows from floor(f * (50 / fps)), flattened 'b c h w -> b (c h)
    w'."""
    stacked = torch.cat([torch.stack(list(states), dim=2) for states in segment_states], dim=1)
    multiplier = 50 / int(fps)
    stacked = stacked[:, : math.floor((num_samples / SR) * 50)]
    pad = math.ceil(multiplier)
    stacked = torch.cat(
        [torch.zeros_like(stacked[:, : pad * 2]), stacked, torch.zeros_like(stacked[:, : pad * 3 * 2])], 1
    )
    clips = []
    for frame in range(math.floor((num_samples / SR) * int(fps))):
        start = math.floor(frame * multiplier)
        clip = stacked[:, start : start + 10]
        assert clip.shape[1] == 10
        clips.append(clip)
    clips = torch.cat(clips, dim=0)
    return clips.reshape(clips.shape[0], clips.shape[1] * clips.shape[2], clips.shape[3])


@pytest.mark.parametrize(("samples", "fps"), [(16000 * 3 + 123, 25), (16000 * 31 + 7, 30), (16000 * 30, 24)])
def test_audio_prompts_equal_upstreams_whisper_chunks(samples: int, fps: int) -> None:
    """Random hidden states through encode_speech and the windows give upstream's prompts for every frame upstream
    makes (at whole frame rates; ours adds the last partial frame after them)."""
    generator = torch.Generator().manual_seed(samples)
    segments: list[tuple[torch.Tensor, ...]] = []

    def encode_segment(features: torch.Tensor) -> torch.Tensor:
        states = tuple(torch.randn(1, 1500, 6, generator=generator) for _ in range(5))  # upstream's hidden_states
        segments.append(states)
        return torch.stack(states)[:, 0]

    hidden = encode_speech(np.full(samples, 0.1, np.float32), encode_segment, _FakeExtractor())
    expected = _upstream_whisper_chunks(segments, samples, fps)
    ours = audio_prompts(hidden, samples, fps)
    assert ours.shape[0] >= expected.shape[0]
    assert torch.equal(ours[: expected.shape[0]], expected)
