"""The weight-free lip-sync on the tab's own example reads as speech: judged on what the pipeline hands the encoder
and on the MP4 it writes, with the mouth region taken from the face box alone.

A 2.4 s slice of assets/speech.wav (a pause in the middle) drives assets/face.jpg through run_lipsync with the
baseline engine: the mouth's dark area must follow the speech energy frame by frame, be closed in the pause and
open on loud frames, the chin must keep its colour (no grey band), and nothing outside the lower face may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
from test_lipsync import write_wav

from engine.core.audio import SAMPLE_RATE, frame_energy, load_audio
from engine.core.media import VideoWriter, read_frames
from engine.core.settings import load_settings
from engine.faces.detection import HaarDetector
from engine.faces.tracking import FaceTracker
from engine.lipsync import pipeline
from engine.lipsync.config import LipSyncConfig
from engine.lipsync.engines import BaselineEngine
from engine.lipsync.mouth import mouth_line, open_mouth
from engine.lipsync.paste import crop
from engine.lipsync.pipeline import run_lipsync

ROOT = Path(__file__).resolve().parent.parent
FACE, SPEECH = ROOT / "assets" / "face.jpg", ROOT / "assets" / "speech.wav"
SLICE = (2.0, 4.4)  # seconds: "...avatar bench. | This voice...", with a pause of about 0.3 s
CHIN = (0.72, 0.82)  # rows of the face box between the lower lip and the jaw's edge
DARK = 60  # grey level under which a pixel counts as the mouth's inside (the face's darkest lip pixel is ~100)


class _Recorder(VideoWriter):
    """The pipeline's writer, keeping a copy of every frame it is given (before H.264 touches them)."""

    frames: ClassVar[list[np.ndarray]] = []

    def write(self, frame: np.ndarray) -> None:
        _Recorder.frames.append(frame.copy())
        super().write(frame)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("baseline-speech")
    wav = load_audio(SPEECH)
    speech = write_wav(folder / "slice.wav", wav[int(SLICE[0] * SAMPLE_RATE) : int(SLICE[1] * SAMPLE_RATE)])
    out = folder / "out.mp4"
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(folder / "data")})
    _Recorder.frames = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "VideoWriter", _Recorder)
        result = run_lipsync(LipSyncConfig(face=FACE, audio=speech, engine="baseline"), out, settings, device="cpu")
    face = cv2.imread(str(FACE))
    box = FaceTracker().update(HaarDetector().detect([face])[0], face.shape).box
    count = result.metrics["frames"]
    energy = frame_energy(load_audio(speech), 25.0, count)
    return dict(
        result=result, face=face, box=box, energy=energy, given=_Recorder.frames, written=list(read_frames(out))
    )


def _part(frame: np.ndarray, box: tuple, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return frame[y1 + round(rows[0] * h) : y1 + round(rows[1] * h), x1 + round(cols[0] * w) : x1 + round(cols[1] * w)]


def _dark_area(frame: np.ndarray, box: tuple) -> int:
    """Dark pixels in the mouth's region of the box: the middle half across, from under the nose to the chin."""
    mouth = _part(frame, box, (0.50, 0.80), (0.25, 0.75))
    return int((cv2.cvtColor(mouth, cv2.COLOR_BGR2GRAY) < DARK).sum())


def test_the_mouth_opens_and_closes_with_the_speech(example: dict) -> None:
    box, energy = example["box"], example["energy"]
    assert example["result"].metrics["engine"] == "baseline"
    assert len(example["given"]) == len(example["written"]) == len(energy) >= 55  # 25 fps over 2.4 s
    closed = _dark_area(example["face"], box)
    for frames in (example["given"], example["written"]):  # before and after the H.264 encoder
        area = np.array([_dark_area(f, box) - closed for f in frames], np.float64)
        assert np.corrcoef(area, energy)[0, 1] >= 0.8
        assert area[energy < 0.05].max() <= 2  # the pause: the mouth is closed
        mouth_pixels = _part(example["face"], box, (0.50, 0.80), (0.25, 0.75)).shape[:2]
        assert area[energy > 0.8].min() >= 0.04 * np.prod(mouth_pixels)  # loud: a dark opening, not a line
    assert (energy < 0.05).sum() >= 3 and (energy > 0.8).sum() >= 10  # the slice has both, so the test can fail


def test_only_the_lower_face_changes_and_the_chin_keeps_its_colour(example: dict) -> None:
    face, box = example["face"], example["box"]
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    outside = np.ones(face.shape[:2], bool)
    outside[y1 + round(0.45 * h) : y2, x1 + round(0.2 * w) : x2 - round(0.2 * w)] = False
    # The chin under the lower lip moves down with the jaw, so its pixels change, but not its colour: the lower
    # lip coming in from above and the jaw's edge leaving below roughly balance; a grey band shifts it by ~25.
    chin_before = _part(face, box, CHIN, (0.35, 0.65)).reshape(-1, 3).astype(np.float64)
    for frame in example["given"]:
        assert np.abs(frame.astype(int) - face)[outside].max() <= 2
        chin = _part(frame, box, CHIN, (0.35, 0.65)).reshape(-1, 3).astype(np.float64)
        assert np.abs(chin.mean(0) - chin_before.mean(0)).max() < 6
        assert np.abs(np.median(chin, 0) - np.median(chin_before, 0)).max() < 10


def test_the_engine_finds_the_lips_and_leaves_silence_untouched() -> None:
    face = cv2.imread(str(FACE))
    box = FaceTracker().update(HaarDetector().detect([face])[0], face.shape).box
    engine = BaselineEngine()
    crops = np.stack([crop(face, box, engine.crop_size)] * 2)
    line = mouth_line(crops[0])
    assert 0.60 < line < 0.66  # between the upper teeth and the lower lip of the example face (by eye: 0.63)
    grey = cv2.cvtColor(cv2.cvtColor(crops[0], cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert abs(mouth_line(grey) - line) < 0.03  # darkness alone finds it too
    out = engine(np.zeros((2, 80, 16), np.float32), crops, np.array([0.0, 1.0], np.float32))
    assert out.shape == (2, *crops.shape[1:3], 4)
    assert np.array_equal(out[0, ..., :3], crops[0]) and out[0, ..., 3].max() == 0  # silence: nothing changes
    opened, coverage = open_mouth(crops[1], line, engine.max_open)
    assert np.array_equal(opened, out[1, ..., :3]) and np.array_equal(coverage, out[1, ..., 3])
    edge = np.ones(coverage.shape, bool)
    edge[2:-2, 2:-2] = False
    assert coverage[edge].max() == 0 and coverage.max() == 1  # changes stay inside the box: no seam at its edge
    changed = np.abs(opened - crops[1]).max(-1) > 0
    assert not changed[coverage == 0].any()


def test_a_videos_lip_line_is_the_median_of_its_last_five_frames() -> None:
    """One frame whose lips are found elsewhere (a shadow, a jump of the face box) opens its mouth on the line of the
    frames before it, the median of the last five, not on its own line: the mouth does not jump with it."""
    engine = BaselineEngine()
    steady, jumped = _face_crop(0.62, (60, 60, 150)), _face_crop(0.72, (60, 60, 150))
    line, own = mouth_line(steady), mouth_line(jumped)
    assert abs(own - line) > 0.05
    crops = np.stack([steady] * 4 + [jumped])
    out = engine(np.zeros((5, 80, 16), np.float32), crops, np.ones(5, np.float32))
    opened, coverage = open_mouth(jumped, line, engine.opening(1.0))
    assert np.array_equal(opened, out[4, ..., :3]) and np.array_equal(coverage, out[4, ..., 3])


def test_the_mouth_stays_shut_below_a_whisper_and_opens_in_proportion_above() -> None:
    """Hiss under 5% of the speech band's full energy keeps the mouth shut; above it
    the opening grows linearly to its most at full energy, and no further."""
    engine = BaselineEngine(max_open=0.1)
    assert engine.opening(0.0) == engine.opening(0.05) == 0.0
    assert engine.opening(0.525) == pytest.approx(0.05) and engine.opening(1.0) == pytest.approx(0.1)
    assert engine.opening(2.0) == pytest.approx(0.1)


SKIN = (110, 140, 190)  # BGR


def _face_crop(lips: float, lip_bgr: tuple, size: int = 160, extra: dict | None = None) -> np.ndarray:
    """A plain skin-coloured crop with a 6-row lip line across the middle at row fraction `lips`; `extra` maps
    (row from, row to, column from, column to) fractions to a colour painted there (a shadow, a nostril)."""
    crop = np.zeros((size, size, 3), np.uint8)
    crop[:] = SKIN
    row = round(lips * size)
    crop[row - 3 : row + 3, round(0.3 * size) : round(0.7 * size)] = lip_bgr
    for (r0, r1, c0, c1), bgr in (extra or {}).items():
        crop[round(r0 * size) : round(r1 * size), round(c0 * size) : round(c1 * size)] = bgr
    return crop


def _same_luma_redder(bgr: tuple) -> tuple:
    """A colour of the same YCrCb luma as `bgr` but redder (higher Cr)."""
    ycc = cv2.cvtColor(np.uint8([[bgr]]), cv2.COLOR_BGR2YCrCb).astype(int)
    ycc[0, 0, 1] += 25
    return tuple(int(v) for v in cv2.cvtColor(np.clip(ycc, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2BGR)[0, 0])


@pytest.mark.parametrize("lips", [0.58, 0.70])
def test_the_mouth_line_follows_darkness_and_redness_each_alone(lips: float) -> None:
    """Either cue finds lips away from the box prior (0.64): a faint dark line on a grey face (15 grey levels),
    and on a colour face a line only redder than the skin, not darker. A cue read with the wrong sign, or a faint
    one taken for a flat profile, leaves the prior."""
    grey = cv2.cvtColor(cv2.cvtColor(_face_crop(lips, SKIN), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    grey[round(lips * 160) - 3 : round(lips * 160) + 3, 48:112] -= 15
    assert abs(mouth_line(grey) - lips) < 0.01
    assert abs(mouth_line(_face_crop(lips, _same_luma_redder(SKIN))) - lips) < 0.01


def test_the_mouth_line_is_not_pulled_by_shadows_beside_it_or_a_bright_lip() -> None:
    """The cues are read across the face's middle fifth only, so cheek shadows beside the nose do not move the
    line; a highlight (a glossy lip, teeth) is no evidence against a row; and a nostril darker than the lips but
    far above the prior counts for much less than they do."""
    lips, lip = 0.68, (70, 80, 150)
    shadows = {(0.55, 0.58, 0.12, 0.36): (40, 50, 70), (0.55, 0.58, 0.64, 0.88): (40, 50, 70)}
    assert abs(mouth_line(_face_crop(lips, lip, extra=shadows)) - lips) < 0.01
    highlight = {(0.56, 0.58, 0.3, 0.7): (235, 240, 250)}
    assert abs(mouth_line(_face_crop(lips, lip, extra=highlight)) - lips) < 0.01
    nostril = {(0.55, 0.57, 0.42, 0.58): (20, 20, 30)}
    assert abs(mouth_line(_face_crop(0.66, lip, extra=nostril)) - 0.66) < 0.03


def test_a_plain_crop_gives_the_box_prior() -> None:
    """No cue at all (a flat crop, a covered mouth) is the prior, not a division of nothing by nothing."""
    assert mouth_line(_face_crop(0.64, SKIN)) == pytest.approx(0.64)


def _changed(opened: np.ndarray, crop: np.ndarray) -> np.ndarray:
    return np.abs(opened - crop).max(axis=-1) > 0.5


def test_the_opening_is_a_lens_shared_a_quarter_above_and_three_quarters_below_the_line() -> None:
    """On a plain crop only the mouth's inside shows: it spans from a quarter of the opening above the lip line to
    three quarters below it in the middle, closes 0.16 of the width either side of it, and is pasted whole (its
    coverage 1 between the lip edges, where a blend by less would let the closed lips show through)."""
    size, line, amount = 160, 0.6, 0.08
    crop = _face_crop(line, SKIN, size)
    opened, coverage = open_mouth(crop, line, amount)
    cy, cx, opening = line * size, size // 2, amount * size
    rows = np.flatnonzero(_changed(opened, crop)[:, cx])
    assert abs(rows[0] - (cy - 0.25 * opening)) <= 1 and abs(rows[-1] - (cy + 0.75 * opening)) <= 1, rows
    columns = np.flatnonzero(_changed(opened, crop).any(axis=0))
    assert cx - 0.16 * size - 1 <= columns[0] <= cx - 0.12 * size, columns
    assert cx + 0.12 * size <= columns[-1] <= cx + 0.16 * size + 1, columns
    assert (coverage[rows[0] + 1 : rows[-1], cx] == 1).all()


def test_the_mouths_inside_is_as_saturated_as_the_face() -> None:
    """Dark red inside a colour face, dark grey inside a greyscale one (a red mouth on a grey face stands out)."""
    for face, red in ((_face_crop(0.6, SKIN), True), (np.full((160, 160, 3), 150, np.uint8), False)):
        opened, _ = open_mouth(face, 0.6, 0.08)
        b, g, r = opened[100, 80]
        assert (r - b > 35) if red else (abs(r - b) < 1 and abs(g - b) < 1), (b, g, r)


def test_a_wide_opening_shows_upper_teeth_and_a_narrow_one_none() -> None:
    """Under the upper lip of a mouth open wide, light teeth; a mouth barely open is dark all through."""
    crop = _face_crop(0.6, SKIN)
    for amount, teeth in ((0.08, True), (0.02, False)):
        opened, _ = open_mouth(crop, 0.6, amount)
        column = cv2.cvtColor(np.clip(opened, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)[:, 80].astype(int)
        upper = column[: round(0.6 * 160)][_changed(opened, crop)[: round(0.6 * 160), 80]]  # above the lip line
        assert upper.size and (upper.max() > 120) == teeth, (amount, upper)


def test_under_a_quarter_pixel_nothing_opens_and_a_pixel_does() -> None:
    crop = _face_crop(0.6, SKIN)
    opened, coverage = open_mouth(crop, 0.6, 0.2 / 160)
    assert np.array_equal(opened, crop) and not coverage.any()
    opened, coverage = open_mouth(crop, 0.6, 1.0 / 160)  # a quiet syllable still shows
    assert _changed(opened, crop).any() and coverage.max() > 0.5


def test_a_mouth_at_the_lowest_line_found_still_leaves_the_box_edge_alone() -> None:
    """The jaw's displacement is cut short above the crop's last two rows, however low the lip line (0.74, the
    lowest mouth_line returns) and wide the opening: the paste's box edge stays the frame's own."""
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    opened, coverage = open_mouth(crop, 0.74, 0.09)
    assert not coverage[-2:].any() and np.array_equal(opened[-2:], crop[-2:].astype(np.float32))
