"""The weight-free portrait engine with one driving image: the driver's head pose lands on the source.

Drivers are made from the source itself, turned, scaled or moved by known amounts, so the right answer is known;
the output's face is measured against the source's with features matched by the test (ORB, RANSAC), not with
the engine's own eye finder.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.core.media import read_frames
from engine.core.settings import Settings
from engine.faces.detection import HaarDetector
from engine.portrait.baseline import pose_transfer, still_pose
from engine.portrait.config import PortraitConfig, PortraitError
from engine.portrait.driving import IMAGE_FPS
from engine.portrait.pipeline import run_portrait

FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
FACE_CENTRE = (226.0, 125.0)  # the example face's box centre in the 512x512 image


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")


def _driver(folder: Path, angle: float = 0.0, scale: float = 1.0, shift: tuple[float, float] = (0, 0)) -> Path:
    """The source turned by `angle` degrees (counter-clockwise on screen) and scaled about the face, then moved."""
    face = cv2.imread(str(FACE))
    m = cv2.getRotationMatrix2D(FACE_CENTRE, angle, scale)
    m[:, 2] += shift
    path = folder / f"driver-{angle}-{scale}-{shift[0]}.png"
    cv2.imwrite(str(path), cv2.warpAffine(face, m, face.shape[1::-1], borderMode=cv2.BORDER_REFLECT))
    return path


def _similarity(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """(counter-clockwise degrees, scale) taking the face in `before` to the face in `after`, from matched ORB
    features around the face."""
    mask = np.zeros(before.shape[:2], np.uint8)
    cv2.circle(mask, (int(FACE_CENTRE[0]), int(FACE_CENTRE[1])), 90, 255, -1)
    orb = cv2.ORB_create(1500)
    points_a, desc_a = orb.detectAndCompute(cv2.cvtColor(before, cv2.COLOR_BGR2GRAY), mask)
    points_b, desc_b = orb.detectAndCompute(cv2.cvtColor(after, cv2.COLOR_BGR2GRAY), mask)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(desc_a, desc_b)
    a = np.float32([points_a[m.queryIdx].pt for m in matches])
    b = np.float32([points_b[m.trainIdx].pt for m in matches])
    m, inliers = cv2.estimateAffinePartial2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=2.0)
    assert m is not None and inliers.sum() >= 20
    return float(np.degrees(np.arctan2(-m[1, 0], m[0, 0]))), float(np.hypot(m[0, 0], m[1, 0]))


@pytest.mark.parametrize("angle", [12.0, -9.0])
def test_a_driving_image_turns_the_source_face_by_its_roll(angle: float, tmp_path: Path, settings: Settings) -> None:
    driving = _driver(tmp_path, angle)
    source = cv2.imread(str(FACE))
    assert abs(_similarity(source, cv2.imread(str(driving)))[0] - angle) < 0.5  # the measurement itself is right
    out = tmp_path / "out.mp4"
    result = run_portrait(PortraitConfig(FACE, driving, engine="baseline"), out, settings)
    frames = list(read_frames(out))
    assert len(frames) == result.metrics["frames"] == 1 and result.metrics["fps"] == IMAGE_FPS
    assert frames[0].shape == source.shape
    turned, scale = _similarity(source, frames[0])
    assert abs(turned - angle) < 1.5 and abs(scale - 1.0) < 0.04
    transferred = result.metrics["pose_transfer"]
    assert abs(transferred["roll_degrees"] + angle) < 1.0  # image axes (y down): counter-clockwise is negative
    assert transferred["measured_from"] == "eye lines"
    assert any("only its head pose was transferred" in w and "expression" in w for w in result.warnings)
    corner = (slice(0, 40), slice(0, 40))  # far from the face the background stays put
    assert np.abs(frames[0][corner].astype(int) - source[corner]).mean() < 4


def test_a_driver_framed_like_the_source_moves_nothing(tmp_path: Path, settings: Settings) -> None:
    out = tmp_path / "same.mp4"
    config = PortraitConfig(FACE, FACE, engine="baseline", yaw=20.0, crop=False, multiplier=1.2, precision="fp16")
    result = run_portrait(config, out, settings)
    assert result.metrics["pose_transfer"]["roll_degrees"] == 0 and result.metrics["pose_transfer"]["scale"] == 1
    ignored = "the baseline engine does not use --precision, --crop, --yaw (LivePortrait's options)"
    assert ignored in result.warnings and result.precision == "fp32"  # not silent; and it said fp16, as asked
    frame, source = next(iter(read_frames(out))), cv2.imread(str(FACE))
    turned, scale = _similarity(source, frame)
    assert abs(turned) < 0.3 and abs(scale - 1) < 0.01
    assert np.abs(frame.astype(int) - source).mean() < 5  # the encoder's loss (4:2:0 chroma, the flag's stripes)


def test_the_baseline_takes_the_source_limits_it_is_given(tmp_path: Path, settings: Settings) -> None:
    """The source is shrunk and cut by --source-max-dim and --source-division for every engine: the baseline said it
    did not use them while its output came out at the shrunk size."""
    out = tmp_path / "small.mp4"
    config = PortraitConfig(FACE, FACE, engine="baseline", source_max_dim=300, source_division=8)
    result = run_portrait(config, out, settings)
    assert next(iter(read_frames(out))).shape == (296, 296, 3)  # 512 shrunk to 300, cut to a multiple of 8
    assert not any("--source-max-dim" in w or "--source-division" in w for w in result.warnings)


def test_scale_and_place_are_transferred_within_a_head_movement(tmp_path: Path) -> None:
    detector = HaarDetector(detect_scale=0.5)
    source = still_pose(cv2.imread(str(FACE)), detector)
    box = np.array([172.0, 60.0, 280.0, 190.0])  # centred on FACE_CENTRE, 130 px: the units of the head motion
    closer = still_pose(cv2.imread(str(_driver(tmp_path, 0.0, 1.07, (8, -5)))), detector)
    head, report = pose_transfer(source, closer, box)
    assert abs(report["scale"] - 1.07) < 0.02 and abs(report["roll_degrees"]) < 1 and not report["limited"]
    assert np.allclose(head[:, 2] * 130, [8, -5], atol=2.5)  # the face moved 8 px right and 5 px up
    cropped = still_pose(cv2.imread(str(_driver(tmp_path, 0.0, 1.6, (150, 0)))), detector)  # framed much tighter
    _, report = pose_transfer(source, cropped, box)
    assert report["limited"] and report["scale"] == 1.1 and np.hypot(*report["shift_face_sizes"]) < 0.152


def test_eyes_behind_glasses_are_found() -> None:
    hopper = FACE.parent / "hopper.jpg"
    if not hopper.is_file():
        pytest.skip("assets/hopper.jpg is not in this checkout")
    pose = still_pose(cv2.imread(str(hopper)), HaarDetector(detect_scale=0.5))
    assert pose is not None and pose.eyes is not None and abs(pose.roll) < 8
    apart = pose.eyes[1, 0] - pose.eyes[0, 0]
    assert 0.3 * pose.size < apart < 0.55 * pose.size


def test_a_driving_image_without_a_face_is_refused(tmp_path: Path, settings: Settings) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(PortraitError, match=r"no face found in the driving image blank\.png: it needs a face"):
        run_portrait(PortraitConfig(FACE, blank, engine="baseline"), tmp_path / "x.mp4", settings)


def test_a_photo_over_the_size_limit_is_taken_when_it_is_shrunk_within_it(tmp_path: Path) -> None:
    """Upstream's resize_to_limit takes any photo; a phone's 4032x3024 was refused at the 2560 limit before
    --source-max-dim (1280 by default) could shrink it."""
    from engine.core.media import MediaError
    from engine.core.settings import load_settings
    from engine.portrait.head import run_head

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_MAX_SIDE": "800"})
    big = tmp_path / "phone.jpg"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(FACE)), (1600, 1600)))
    head = run_head(PortraitConfig(big, FACE, engine="baseline", source_max_dim=640), settings, "cpu")
    assert head.source_bgr.shape == (640, 640, 3) and head.box is not None
    with pytest.raises(MediaError, match="larger than the limit of 800 pixels"):  # not shrunk within it: refused
        run_head(PortraitConfig(big, FACE, engine="baseline", source_max_dim=1200), settings, "cpu")
