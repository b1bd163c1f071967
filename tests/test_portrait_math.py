"""LivePortrait's keypoint maths and the crop / paste-back, against values worked out by hand."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine.portrait.crop import PasteBack, crop_image, crop_transform, paste_mask
from engine.portrait.motion import (
    EYE_KEYPOINTS,
    LIP_KEYPOINTS,
    KeypointInfo,
    compose,
    motion_multiplier,
    neutral_expression,
    relative_driving,
    rotation_matrix,
    stitch,
    transform_keypoints,
)


def _info(n: int = 1, yaw: float = 0.0, seed: int = 0) -> KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    return KeypointInfo(
        pitch=torch.zeros(n),
        yaw=torch.full((n,), yaw),
        roll=torch.zeros(n),
        t=torch.rand(n, 3, generator=g) * 0.1,
        exp=torch.rand(n, 21, 3, generator=g) * 0.02,
        scale=torch.ones(n) + 0.1 * torch.rand(n, generator=g),
        kp=torch.rand(n, 21, 3, generator=g) - 0.5,
    )


def test_rotation_matrix_convention() -> None:
    r = rotation_matrix(torch.tensor([30.0]), torch.zeros(1), torch.zeros(1))[0]
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    assert torch.allclose(r, torch.tensor([[1.0, 0, 0], [0, c, s], [0, -s, c]]), atol=1e-6)  # (Rx)^T
    many = rotation_matrix(torch.tensor([10.0, -40]), torch.tensor([25.0, 5]), torch.tensor([-15.0, 60]))
    assert torch.allclose(many @ many.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(many), torch.ones(2), atol=1e-6)
    # degrees to radians as upstream's camera.py rounds them (x / 180 * pi), so its matrices come out bit for bit
    angles = torch.linspace(-97.5, 97.5, 1001)
    rx = rotation_matrix(angles, torch.zeros(1001), torch.zeros(1001))  # (Rx)^T: cos and sin of the radians
    radians = angles / 180 * math.pi
    assert torch.equal(rx[:, 1, 1], radians.cos()) and torch.equal(rx[:, 1, 2], radians.sin())


def test_compose_ignores_z_translation() -> None:
    kp = torch.zeros(1, 21, 3)
    out = compose(kp, torch.eye(3)[None], torch.zeros(1, 21, 3), torch.ones(1), torch.tensor([[0.1, 0.2, 0.3]]))
    assert torch.allclose(out[0, 0], torch.tensor([0.1, 0.2, 0.0]))


def test_relative_motion() -> None:
    source = _info(seed=1)
    first = _info(seed=2)
    still = relative_driving(source, first, first)  # the first driving frame itself: the source as it is
    assert torch.allclose(still, transform_keypoints(source), atol=1e-6)
    turned = _info(yaw=20.0, seed=2)  # the driver turns 20 degrees and keeps its expression
    moved = relative_driving(source, turned, first)
    want = compose(source.kp, rotation_matrix(torch.zeros(1), torch.tensor([20.0]), torch.zeros(1)), source.exp,
                   source.scale, source.t)  # fmt: skip
    assert torch.allclose(moved, want, atol=1e-5)  # the source was frontal, so its rotation is the driver's delta
    smiling = _info(seed=2)
    smiling.exp = smiling.exp + 0.05
    lips = relative_driving(source, smiling, first, region="lip")
    changed = (lips - transform_keypoints(source)).abs().sum(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == sorted(LIP_KEYPOINTS)
    assert torch.allclose(relative_driving(source, smiling, first, region="pose"), transform_keypoints(source))
    with pytest.raises(ValueError, match="animation region"):
        relative_driving(source, smiling, first, region="hands")


def test_regions_move_upstreams_keypoints() -> None:
    """The lip and eye keypoints are upstream's (live_portrait_pipeline.py: [6, 12, 14, 17, 19, 20] and
    [11, 13, 15, 16, 18]); a keypoint left out would keep the source's lips or eyes still there."""
    source, first = _info(seed=1), _info(seed=2)
    moved = replace(first, exp=first.exp + 0.05)
    for region, keypoints in (("lip", [6, 12, 14, 17, 19, 20]), ("eyes", [11, 13, 15, 16, 18])):
        changed = (relative_driving(source, moved, first, region=region) - transform_keypoints(source)).abs()
        assert (changed.sum(-1)[0] > 1e-6).nonzero().flatten().tolist() == keypoints, region


def test_relative_rotation_is_the_drivers_turn_since_its_first_frame_applied_to_the_source() -> None:
    """Upstream: R_new = (R_d_i @ R_d_0^T) @ R_s. With the source and the first driving frame both turned (they
    were frontal in test_relative_motion, where any order of the three gives the same), the order shows."""

    def turned(pitch: float, yaw: float, roll: float, seed: int) -> KeypointInfo:
        return replace(
            _info(seed=seed), pitch=torch.tensor([pitch]), yaw=torch.tensor([yaw]), roll=torch.tensor([roll])
        )

    source, first, driving = turned(10, -25, 5, 1), turned(-5, 15, 20, 2), turned(20, 30, -10, 2)
    rotation = (driving.rotation @ first.rotation.transpose(1, 2)) @ source.rotation
    want = compose(source.kp, rotation, source.exp, source.scale, source.t)
    assert torch.allclose(relative_driving(source, driving, first), want, atol=1e-5)


def test_relative_pose_moves_the_head_but_only_all_rescales_it() -> None:
    """Upstream: the driver's translation delta applies for "all" and "pose", its scale ratio for "all" only, and
    its expression delta for "all" and "exp" (every keypoint)."""
    source, first = _info(seed=1), _info(seed=2)
    shift, smile = torch.tensor([[0.1, -0.2, 0.3]]), torch.linspace(0, 0.05, 63).view(1, 21, 3)
    driving = replace(first, t=first.t + shift, scale=first.scale * 1.5, exp=first.exp + smile)
    for region, rescaled, shifted in (("all", True, True), ("pose", False, True), ("exp", False, False)):
        scale = source.scale * 1.5 if rescaled else source.scale
        t = source.t + shift if shifted else source.t
        exp = source.exp if region == "pose" else source.exp + smile
        want = compose(source.kp, source.rotation, exp, scale, t)
        assert torch.allclose(relative_driving(source, driving, first, region=region), want, atol=1e-6), region


def test_expression_friendly_rescales_about_the_first_frame_and_recentres_on_the_source() -> None:
    """Upstream: x_d_i_new = (x_d_i_new - x_d_0_new) * motion_multiplier + x_s."""
    from engine.portrait.motion import expression_friendly

    x_driving, x_first, x_source = torch.rand(3, 21, 3), torch.rand(1, 21, 3), torch.rand(1, 21, 3)
    got = expression_friendly(x_driving, x_first, x_source, 1.7)
    assert torch.allclose(got, (x_driving - x_first) * 1.7 + x_source)


def test_motion_outputs_are_read_as_upstreams_get_kp_info_reads_them() -> None:
    """Pose from 66 bins of 3 degrees from -97.5 (soft-argmax), and kp and exp reshaped (B, 21, 3) in row order, as
    upstream's get_kp_info: keypoint k is values 3k, 3k + 1, 3k + 2."""
    from engine.portrait.motion import keypoint_info

    bins = torch.full((2, 66), -1e4)
    bins[0, 0], bins[1, 40] = 1e4, 1e4
    values = torch.arange(126.0).view(2, 63)
    info = keypoint_info({"pitch": bins, "yaw": torch.zeros(2, 66), "roll": bins.flip(0), "t": torch.zeros(2, 3),
                          "exp": values, "scale": torch.ones(2, 1), "kp": -values})  # fmt: skip
    assert info.pitch.tolist() == [-97.5, 22.5] and info.roll.tolist() == [22.5, -97.5]
    assert info.yaw.tolist() == pytest.approx([0.0, 0.0], abs=1e-5)  # uniform bins: the middle
    assert info.exp[0, 1].tolist() == [3.0, 4.0, 5.0] and info.kp[1, 20].tolist() == [-123.0, -124.0, -125.0]


def test_absolute_motion_refuses_an_unknown_region() -> None:
    """As relative motion does: an unknown region moved nothing but the source's own pose, without a word."""
    from engine.core.errors import InputError
    from engine.portrait.motion import absolute_driving

    with pytest.raises(InputError, match="animation region 'hands' is not one of"):
        absolute_driving(_info(seed=1), _info(seed=2), region="hands")


def test_concatenated_keeps_rotation_matrices_only_where_every_part_has_them() -> None:
    """One part without matrices: the batch is made from the angles (a cat of the others' matrices alone would be
    too short for the batch); every part with them: they are kept, in order."""
    from engine.portrait.motion import concatenated

    plain, with_matrix = _info(seed=1), replace(_info(seed=2), matrix=torch.eye(3)[None] * 2)
    assert concatenated([plain, with_matrix]).matrix is None
    both = concatenated([with_matrix, replace(with_matrix, matrix=torch.eye(3)[None] * 3)])
    assert both.matrix.shape == (2, 3, 3) and both.matrix[:, 0, 0].tolist() == [2.0, 3.0]
    assert both.select(1).matrix[0, 0, 0] == 3.0 and both.select(1).kp.shape == (1, 21, 3)


def test_the_neutral_expression_is_upstreams_lip_array() -> None:
    """The SHA-256 of the float64 (1, 21, 3) array in KwaiVGI/LivePortrait src/utils/resources/lip_array.pkl
    (commit 1986663): a digit mistyped in NEUTRAL_EXPRESSION would skew every single-image drive."""
    import hashlib

    from engine.portrait.motion import NEUTRAL_EXPRESSION

    digest = hashlib.sha256(np.array(NEUTRAL_EXPRESSION, np.float64).tobytes()).hexdigest()
    assert digest == "67e3075dd5d939f7c299afcbeb012ad0b6cf5bbe28b1deca2b5aeda7dab24606"
    assert torch.equal(neutral_expression(), torch.tensor(NEUTRAL_EXPRESSION, dtype=torch.float64).float()[None])


def test_motion_multiplier_is_the_volume_ratio() -> None:
    pts = torch.rand(1, 21, 3)
    assert motion_multiplier(pts, pts * 2) == pytest.approx(1 / math.sqrt(8))


def test_stitching_with_a_zero_network_changes_nothing() -> None:
    mlp = nn.Sequential(nn.Linear(126, 65))
    nn.init.zeros_(mlp[0].weight)
    nn.init.zeros_(mlp[0].bias)
    x = torch.rand(3, 21, 3)
    assert torch.equal(stitch(mlp, torch.rand(1, 21, 3), x), x)
    nn.init.constant_(mlp[0].bias, 0.5)
    out = stitch(mlp, torch.rand(1, 21, 3), x)
    assert torch.allclose(out[..., :2], x[..., :2] + 1.0) and torch.allclose(out[..., 2], x[..., 2] + 0.5)


def test_stitching_feeds_the_source_keypoints_first_then_the_driving_ones() -> None:
    """Upstream's concat_feat(kp_source, kp_driving): the network's first 63 inputs are the source's."""
    mlp = nn.Sequential(nn.Linear(126, 65))
    nn.init.zeros_(mlp[0].weight)
    nn.init.zeros_(mlp[0].bias)
    with torch.no_grad():
        mlp[0].weight[0, 0] = 1.0  # keypoint 0's x delta reads input 0
        mlp[0].weight[1, 63] = 1.0  # its y delta reads input 63
    x_source, x_driving = torch.rand(1, 21, 3), torch.rand(2, 21, 3)
    out = stitch(mlp, x_source, x_driving)
    assert torch.allclose(out[:, 0, 0], x_driving[:, 0, 0] + x_source[0, 0, 0])
    assert torch.allclose(out[:, 0, 1], x_driving[:, 0, 1] + x_driving[:, 0, 0])


def test_crop_transform_and_its_inverse() -> None:
    t = crop_transform((100, 200, 200, 300))  # a 100 px face centred at (150, 250)
    side = 230.0
    assert t.scale == pytest.approx(512 / side)
    centre = t.to_original @ np.array([256, 256, 1.0])
    assert centre == pytest.approx([150, 250 - 0.125 * side])  # moved up towards the forehead
    m = np.vstack([t.to_crop, [0, 0, 1]]) @ np.vstack([t.to_original, [0, 0, 1]])
    assert np.allclose(m, np.eye(3), atol=1e-5)  # float32 matrices, as upstream's
    with pytest.raises(ValueError, match="empty"):
        crop_transform((10, 10, 10, 50))


def test_the_crop_side_is_the_boxs_longer_side_times_the_scale() -> None:
    """Upstream squares the face's extent on its longer side (need_square: max(w, h)) before scaling."""
    for box in ((100, 200, 160, 300), (100, 200, 200, 260)):  # 60 x 100 and 100 x 60
        assert crop_transform(box).scale == pytest.approx(512 / 230)
        assert crop_transform(box, scale=2.0).scale == pytest.approx(512 / 200)


def test_crop_shifts_along_the_faces_axes_as_upstreams_vx_and_vy_ratios() -> None:
    """Upstream moves the crop's centre by vx_ratio x side along the face's horizontal and vy_ratio x side along its
    vertical (both turned with the face)."""
    side = 200.0  # a 100 px face at scale 2
    level = crop_transform((100, 200, 200, 300), 2.0, -0.1, vx=0.2)
    assert level.to_original @ np.array([256, 256, 1.0]) == pytest.approx([150 + 0.2 * side, 250 - 0.1 * side])
    turned = crop_transform((100, 200, 200, 300), 2.0, -0.1, angle=90.0, vx=0.2)  # the face's x axis points down
    assert turned.to_original @ np.array([256, 256, 1.0]) == pytest.approx([150 + 0.1 * side, 250 + 0.2 * side])


def test_a_crop_not_turned_upright_still_shifts_along_the_tilted_faces_axes() -> None:
    """Upstream's flag_do_rot off (--no-upright) measures the face in its own tilted frame and leaves only the turn
    out of the crop: the centre moves along the face's vertical (it moved straight up the image, 22 px off in a 512
    crop at 20 degrees of tilt)."""
    side, angle = 230.0, 20.0  # a 100 px face at scale 2.3
    flat = crop_transform((100, 200, 200, 300), 2.3, -0.125, angle=angle, rotate=False)
    theta = np.radians(angle)
    centre = np.array([150.0, 250.0]) + side * -0.125 * np.array([-np.sin(theta), np.cos(theta)])
    k = 512 / side  # upstream's M_INV without the turn: [[s, 0, 256 - s cx], [0, s, 256 - s cy]]
    assert flat.to_crop == pytest.approx(np.array([[k, 0, 256 - k * centre[0]], [0, k, 256 - k * centre[1]]]))
    assert flat.angle == 0.0
    turned = crop_transform((100, 200, 200, 300), 2.3, -0.125, angle=angle)
    assert turned.to_original @ np.array([256, 256, 1.0]) == pytest.approx(centre)  # the same centre, turned


def _upstreams_crop_matrix(centre: tuple[float, float], side: float, angle: float, size: int = 512) -> np.ndarray:
    """LivePortrait's M_INV (_estimate_similar_transform_from_pts; flag_do_rot on) for a crop centre, side and tilt:
    [[s cos, s sin, t - s (cos cx + sin cy)], [-s sin, s cos, t - s (-sin cx + cos cy)]], stored as float32."""
    theta = math.radians(angle)
    c, sn, s, t = math.cos(theta), math.sin(theta), size / side, size / 2
    cx, cy = centre
    return np.array([[s * c, s * sn, t - s * (c * cx + sn * cy)], [-s * sn, s * c, t - s * (-sn * cx + c * cy)]],
                    dtype=np.float32)  # fmt: skip


def test_the_crop_warps_with_upstreams_float32_matrix() -> None:
    """Upstream builds its crop matrix as a float32 array (DTYPE) and its way back as that matrix's float32
    inverse (crop_image: M_c2o = inv(vstack(M_o2c, [0, 0, 1]))); OpenCV's warp rounds each position to 1/32
    pixel, so a float64 matrix, a few millionths away, moves about a hundred pixels of a 512 crop across a rounding
    step. The crop centre and side here are our box's (on purpose), the rest upstream's."""
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for box, angle in (((201.3, 151.7, 333.9, 301.1), 7.3), ((250.5, 120.25, 390.75, 280.5), -12.0)):
        side = max(box[2] - box[0], box[3] - box[1]) * 2.3
        theta = math.radians(angle)  # the face's vertical, turned: (-sin, cos); vy = -0.125 moves along it
        centre = (
            (box[0] + box[2]) / 2 + side * 0.125 * math.sin(theta),
            (box[1] + box[3]) / 2 - side * 0.125 * math.cos(theta),
        )
        expected = _upstreams_crop_matrix(centre, side, angle)
        t = crop_transform(box, 2.3, -0.125, angle=angle)
        assert t.to_crop.dtype == np.float32
        np.testing.assert_allclose(t.to_crop, expected, rtol=0, atol=1e-4)
        crop = crop_image(frame, t)
        assert np.array_equal(crop, cv2.warpAffine(frame, expected, (512, 512), flags=cv2.INTER_LINEAR))
        back = np.linalg.inv(np.vstack([t.to_crop, np.array([0, 0, 1], np.float32)]))[:2]
        assert t.to_original.dtype == np.float32 and np.array_equal(t.to_original, back)


def test_the_source_is_limited_as_upstreams_resize_to_limit() -> None:
    from engine.portrait.crop import source_within_limits

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (999, 2001, 3), dtype=np.uint8)
    limited = source_within_limits(wide, 1280, 2)
    assert limited.shape == (638, 1280, 3)  # 999 x 1280 / 2001 = 639.04, truncated, then cut to even
    assert np.array_equal(limited, cv2.resize(wide, (1280, 639))[:638]) and limited.flags.c_contiguous
    tall = rng.integers(0, 256, (1500, 900, 3), dtype=np.uint8)
    assert source_within_limits(tall, 1280, 2).shape == (1280, 768, 3)
    odd = rng.integers(0, 256, (51, 101, 3), dtype=np.uint8)
    assert np.array_equal(source_within_limits(odd, 0, 2), odd[:50, :100])  # no size limit: only the cut
    assert source_within_limits(odd, 1280, 1) is odd
    strip = rng.integers(0, 256, (20, 2560, 3), dtype=np.uint8)  # 20 x 64 / 2560 truncates to 0: upstream's assertion
    assert source_within_limits(strip, 64, 1).shape == (1, 64, 3)
    for shape, limited in (((1000, 2001, 3), (638, 1280, 3)), ((2001, 1000, 3), (1280, 638, 3))):
        image = np.zeros(shape, np.uint8)  # 1000 x 1280 / 2001 = 639.68: truncated (int), not rounded, to 639
        assert source_within_limits(image, 1280, 2).shape == limited


def test_a_tilted_face_comes_out_upright() -> None:
    from engine.portrait.crop import roll_from_landmarks

    tilt = np.radians(15)  # eyes 60 px apart, the right one lower: the face leans clockwise by 15 degrees
    turn = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])  # clockwise on screen (y down)

    def face(mouth_off_centre: float = 0.0, turned: bool = True) -> np.ndarray:
        """Eyes at (-30, 0) and (30, 0), each of four points; mouth corners 40 px below, about the midline."""
        points = np.zeros((203, 2))
        eye = np.array([[-10.0, 0.0], [0.0, -3.0], [10.0, 0.0], [0.0, 3.0]])
        points[[0, 6, 12, 18]], points[[24, 30, 36, 42]] = eye - (30.0, 0.0), eye - (-30.0, 0.0)
        points[[48, 66]] = [[-15.0 + mouth_off_centre, 40.0], [15.0 + mouth_off_centre, 40.0]]
        return (points @ turn.T if turned else points) + (150.0, 240.0)

    left, right = face()[[0, 12]].mean(0), face()[[24, 36]].mean(0)
    assert roll_from_landmarks(face()) == pytest.approx(15.0, abs=1e-4)  # a symmetric face: the eye line's angle
    # upstream's measure (eyes' centre to lips' centre): with the mouth 5 px right of the eyes' midline, 40 px below,
    # the level eyes say 0 but the face's vertical leans by atan(5 / 40)
    assert roll_from_landmarks(face(5.0, turned=False)) == pytest.approx(-np.degrees(np.arctan(5 / 40)), abs=1e-4)
    t = crop_transform((100, 200, 200, 300), angle=15.0)
    eyes = [t.to_crop @ np.append(p, 1.0) for p in (left, right)]
    assert eyes[0][1] == pytest.approx(eyes[1][1]) and eyes[0][0] < eyes[1][0]  # level, left stays left
    assert t.angle == pytest.approx(15.0) and t.scale == pytest.approx(512 / 230)
    m = np.vstack([t.to_crop, [0, 0, 1]]) @ np.vstack([t.to_original, [0, 0, 1]])
    assert np.allclose(m, np.eye(3), atol=1e-5)  # float32 matrices, as upstream's
    up = t.to_original @ np.array([256, 256, 1.0]) - np.array([150, 250])  # the shift follows the face's vertical
    assert np.hypot(*up) == pytest.approx(0.125 * 230) and up[0] > 0 and up[1] < 0


def test_the_tilt_is_upstreams_from_the_eyes_centre_to_the_lips_centre() -> None:
    """parse_pt2_from_pt203: each eye the mean of four points (0, 6, 12, 18 and 24, 30, 36, 42), the lips' centre
    the midpoint of 48 and 66; the tilt is the angle of the normal (uy[1], -uy[0]) of the unit vector between them,
    on landmarks as scattered as a detector's. Eyes and lips at one point: no tilt (upstream takes uy = (0, 1))."""
    from engine.portrait.crop import roll_from_landmarks

    rng = np.random.default_rng(4)
    for _ in range(5):
        points = rng.uniform(100, 300, (203, 2))
        eyes = (points[[0, 6, 12, 18]].mean(0) + points[[24, 30, 36, 42]].mean(0)) / 2
        dx, dy = (points[48] + points[66]) / 2 - eyes
        assert roll_from_landmarks(points) == pytest.approx(math.degrees(math.atan2(-dx, dy)), abs=1e-3)
    points = np.zeros((203, 2))
    assert roll_from_landmarks(points + 50.0) == 0.0


def _upstream_rect(
    pts: np.ndarray, scale: float, vy_ratio: float, vx_ratio: float = 0.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Upstream's parse_rect_from_landmark (with parse_pt2_from_pt203, use_lip and need_square on) written out:
    float32 points, float32 axes, extents and centre (array ops on float32 stay float32); its centre, size, angle."""
    pts = np.asarray(pts).astype(np.float32)
    pt2 = np.stack([(np.mean(pts[[0, 6, 12, 18]], axis=0) + np.mean(pts[[24, 30, 36, 42]], axis=0)) / 2,
                    (pts[48] + pts[66]) / 2])  # fmt: skip
    uy = pt2[1] - pt2[0]
    norm = np.linalg.norm(uy)
    uy = np.array([0, 1], np.float32) if norm <= 1e-3 else uy / norm
    ux = np.array((uy[1], -uy[0]), dtype=np.float32)
    angle = math.acos(ux[0]) * (-1 if ux[1] < 0 else 1)
    center0 = np.mean(pts, axis=0)
    rpts = (pts - center0) @ np.array([ux, uy]).T
    lt, rb = np.min(rpts, axis=0), np.max(rpts, axis=0)
    center1 = (lt + rb) / 2
    size = rb - lt
    size[:] = max(size[0], size[1])
    size *= scale
    center = center0 + ux * center1[0] + uy * center1[1]
    center = center + ux * (vx_ratio * size) + uy * (vy_ratio * size)
    assert center.dtype == size.dtype == np.float32
    return center, size, angle


def _upstream_landmark_crop(
    pts: np.ndarray,
    dsize: int = 224,
    scale: float = 1.5,
    vy_ratio: float = -0.1,
    flag_do_rot: bool = True,
    vx_ratio: float = 0.0,
) -> np.ndarray:
    """Upstream's crop_image(img, pts) matrix (M_o2c, its first two rows), written out from parse_pt2_from_pt203,
    parse_rect_from_landmark and _estimate_similar_transform_from_pts: float32 points, float32 axes, extents and
    centre (array ops on float32 stay float32), then the matrix's terms as numpy 1.26 (upstream's pin) makes them:
    `dsize / size[0]` and a Python float with a float32 scalar promote to float64, stored as float32 (DTYPE)."""
    center, size, angle = _upstream_rect(pts, scale, vy_ratio, vx_ratio)
    s = np.float64(dsize) / np.float64(size[0])  # numpy 1.26: int / float32 scalar -> float64
    cx, cy = np.float64(center[0]), np.float64(center[1])
    t = np.float64(np.float32(dsize / 2))  # tgt_center, a float32 array
    if not flag_do_rot:
        return np.array([[s, 0, t - s * cx], [0, s, t - s * cy]], dtype=np.float32)
    co, si = math.cos(angle), math.sin(angle)
    return np.array([[s * co, s * si, t - s * (co * cx + si * cy)], [-s * si, s * co, t - s * (-si * cx + co * cy)]],
                    dtype=np.float32)  # fmt: skip


def _face_points(rng: np.random.Generator) -> np.ndarray:
    """203 points scattered over a face of random size, place and tilt (up to 40 degrees either way), the eyes above
    the mouth, as the landmark model's are."""
    points = rng.normal(0.0, 0.25, (203, 2))
    points[[0, 6, 12, 18]] = np.array([-0.3, -0.2]) + rng.normal(0, 0.03, (4, 2))
    points[[24, 30, 36, 42]] = np.array([0.3, -0.2]) + rng.normal(0, 0.03, (4, 2))
    points[[48, 66]] = np.array([[-0.2, 0.35], [0.2, 0.35]]) + rng.normal(0, 0.03, (2, 2))
    tilt = math.radians(rng.uniform(-40, 40))
    turn = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    return (points * rng.uniform(60, 300)) @ turn.T + rng.uniform(150, 600, 2)


def test_the_landmark_crop_is_upstreams_crop_image_from_points_bit_for_bit() -> None:
    """Guards `landmark_crop_transform` against upstream's crop_image(img, pts) (what its landmark runner reads the
    next frame's landmarks in: scale 1.5, vy -0.1, 224, and its source crop: 2.3, -0.125, 512), float32 rounding
    included, on random faces and on points scattered anywhere: the same float32 matrix both ways and the same
    crop. The square follows the face's axes (its extent there, its middle, the shifts along them), not the image's."""
    from engine.portrait.crop import landmark_crop_transform, roll_from_landmarks

    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, (720, 960, 3), dtype=np.uint8)
    scattered = [rng.uniform(50, 700, (203, 2)) for _ in range(10)]
    for points in [_face_points(rng) for _ in range(40)] + scattered:
        for scale, vy, size in ((1.5, -0.1, 224), (2.3, -0.125, 512)):
            for rotate in (True, False):
                want = _upstream_landmark_crop(points, size, scale, vy, rotate)
                got = landmark_crop_transform(points, scale=scale, vy=vy, size=size, rotate=rotate)
                assert got.to_crop.dtype == np.float32 and np.array_equal(got.to_crop, want)
                inverse = np.linalg.inv(np.vstack([want, np.array([0, 0, 1], np.float32)]))[:2]
                assert got.to_original.dtype == np.float32 and np.array_equal(got.to_original, inverse)
                assert got.size == size
        assert got.angle == 0.0  # flag_do_rot off: not turned
        turned = landmark_crop_transform(points)
        assert turned.angle == pytest.approx(roll_from_landmarks(points), abs=1e-4)
        upstream = cv2.warpAffine(frame, _upstream_landmark_crop(points), (224, 224), flags=cv2.INTER_LINEAR)
        assert np.array_equal(crop_image(frame, turned), upstream)
    shifted = landmark_crop_transform(scattered[0], vx=0.05)  # parse_rect_from_landmark's vx_ratio, along the face's x
    assert np.array_equal(shifted.to_crop, _upstream_landmark_crop(scattered[0], vx_ratio=0.05))
    assert not np.array_equal(shifted.to_crop, landmark_crop_transform(scattered[0]).to_crop)


def _upstream_driving_bbox(frames: list[np.ndarray], scale: float = 2.2, vy_ratio: float = -0.1) -> list[float]:
    """Upstream's crop_driving_video box, written out: each frame's parse_bbox_from_landmark (its unturned bbox,
    corners 0 and 2, in a float32 array; numpy 1.26 makes `cx - w / 2` of float32 scalars in float64; the
    vx_ratio_crop_driving_video it passes under another name is never used: vx 0), then average_bbox_lst (the
    boxes' float32 mean, as Python floats)."""
    bbox_lst = []
    for pts in frames:
        center, size, _ = _upstream_rect(pts, scale, vy_ratio)
        cx, cy, w, h = (np.float64(v) for v in (center[0], center[1], size[0], size[1]))
        bbox = np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2],
                         [cx - w / 2, cy + h / 2]], dtype=np.float32)  # fmt: skip
        bbox_lst.append([bbox[0, 0], bbox[0, 1], bbox[2, 0], bbox[2, 1]])
    return np.mean(np.array(bbox_lst), axis=0).tolist()


def test_the_driving_crop_from_followed_landmarks_is_upstreams_averaged_landmark_box_bit_for_bit() -> None:
    """Guards the driving crop made from a clip's followed landmarks against upstream's crop_driving_video written
    out: every frame's landmark box (2.2x the points' square on the face's tilted axes, shifted up 0.1 of it along
    them, then taken axis-aligned: not turned, not squared again), averaged in float32 over the frames, cropped by
    crop_image_by_bbox at 512 (no second scale); the same float32 matrix and the same crop. Without landmarks the
    crop is the detector box's square, another matrix."""
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.driving import _driving_transform

    config = PortraitConfig(Path("face.jpg"), Path("d.mp4"))
    rng = np.random.default_rng(23)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    box = np.array([500.0, 200.0, 700.0, 430.0])
    for count in (1, 2, 7, 30):
        followed = [_face_points(rng).astype(np.float32) for _ in range(count)]
        left, top, right, bottom = _upstream_driving_bbox(followed)
        want = _upstream_bbox_crop(left, top, right, bottom)
        got = _driving_transform(config, box, 1280, 720, followed)
        assert got is not None and got.size == 512 and got.angle == 0.0
        assert got.to_crop.dtype == np.float32 and np.array_equal(got.to_crop, want)
        inverse = np.linalg.inv(np.vstack([want, np.array([0, 0, 1], np.float32)]))[:2]
        assert np.array_equal(got.to_original, inverse)
        assert np.array_equal(crop_image(frame, got), cv2.warpAffine(frame, want, (512, 512), flags=cv2.INTER_LINEAR))
        assert not np.array_equal(got.to_crop, _driving_transform(config, box, 1280, 720).to_crop)
    assert _driving_transform(config, box, 720, 720, followed) is None  # a square clip is taken whole, as upstream


def test_the_landmark_crop_takes_203_or_106_points_spanning_an_area_only() -> None:
    """Upstream reads another layout's eyes and lips from other indices (68, 5 points); ours has the landmark
    model's 203 and InsightFace's 106 only, so any other array is refused rather than read at the wrong indices.
    Points all in one place (or not numbers) make no square: upstream divides by its zero side (an infinite matrix);
    ours says so."""
    from engine.core.errors import InputError
    from engine.portrait.crop import landmark_crop_transform

    for shape in ((68, 2), (203, 3), (203,)):
        with pytest.raises(
            InputError, match=rf"203 x 2 points or InsightFace's 106 x 2, got .* {re.escape(str(shape))}"
        ):
            landmark_crop_transform(np.zeros(shape))
    for points in (np.full((203, 2), 50.0), np.full((203, 2), np.nan)):
        with pytest.raises(InputError, match=r"the 203 landmarks span no area \(a crop side of (0\.0|nan) pixels\)"):
            landmark_crop_transform(points)
    line = np.zeros((203, 2))
    line[:, 0] = np.arange(203)  # a line has an extent along one axis: a square of that side
    assert landmark_crop_transform(line).scale == pytest.approx(224 / (1.5 * 202))


def test_crops_and_network_inputs_are_upstreams_resizes() -> None:
    """The crop is OpenCV's bilinear warp, black outside the image (upstream's _transform_img); a whole image is
    stretched to 256 with OpenCV's bilinear resize (upstream's cv2.resize(img, (256, 256))) and a 512 crop shrunk
    with INTER_AREA (its cropper), both scaled to [0, 1] by 255."""
    from engine.portrait.crop import network_input, stretched_input

    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    t = crop_transform((300, 100, 400, 220), angle=10.0)  # reaches past the right edge
    crop = crop_image(frame, t)
    assert np.array_equal(crop, cv2.warpAffine(frame, t.to_crop, (512, 512), flags=cv2.INTER_LINEAR))
    assert not crop[:, -40:].any()  # past the image: black
    stretched = stretched_input(frame)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(stretched, cv2.resize(frame, (256, 256)).astype(np.float32) / 255)
    shrunk = network_input(crop)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(shrunk, cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32) / 255)
    assert float(network_input(np.full((512, 512, 3), 255, np.uint8)).min()) == 1.0


def test_paste_mask_shape() -> None:
    mask = paste_mask()
    assert mask.shape == (512, 512) and mask[256, 256] == 1.0 and mask[0, 256] == 0.0
    assert mask[8, 256] == pytest.approx((16 * 8 - 1) / 255) and mask[0, 0] == 0.0
    assert np.allclose(mask, mask.T)
    assert mask[256, 511] == pytest.approx(15 / 255)  # like the released template, the far edge starts at 15
    # the rounded corners: these grey levels are the released template's (src/utils/resources/mask_template.png)
    assert [round(float(mask[y, x]) * 255) for y, x in ((10, 12), (3, 14), (8, 8))] == [140, 45, 74]


def test_paste_back_puts_the_crop_back_where_it_came_from() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
    t = crop_transform((200, 120, 280, 200), scale=1.5)
    crop = crop_image(frame, t)
    paste = PasteBack(t, 360, 480, "cpu")
    original = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    generated = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    back = paste(generated, original)
    assert back.shape == (1, 3, 360, 480)
    centre = (slice(None), slice(None), slice(140, 180), slice(220, 260))  # well inside the feathered border
    assert (back[centre] - original[centre]).abs().mean() < 0.06  # resampled twice: close, not exact
    assert torch.equal(back[..., :20, :20], original[..., :20, :20])  # outside the crop: untouched
    right, bottom = (int(v) + 2 for v in t.to_original @ np.array([512.0, 512.0, 1.0]))  # past the crop's edges
    for beyond in ((..., slice(140, 180), slice(right, None)), (..., slice(bottom, None), slice(220, 260))):
        assert torch.equal(back[beyond], original[beyond])  # beside its middle too, where its mask's edge is not 0
    white = paste(torch.ones_like(generated), original)
    assert float(white[centre].min()) > 0.999


def test_paste_back_is_upstreams_bilinear_warp_and_blend_within_3_grey_levels() -> None:
    """Guards the paste-back against upstream's (prepare_paste_back and paste_back with our mask template): the
    generated crop, truncated to uint8 as parse_output does, and the template warped back with OpenCV's bilinear
    filter, black outside the crop, then mask x warped + (1 - mask) x frame clipped and truncated. Ours samples at
    exact positions in float (upstream rounds them to 1/32 pixel and the crop to whole grey levels): on a smooth
    crop at most 3 grey levels apart, and more than 2 on a handful of pixels only. A nearest-pixel warp is 55 away;
    repeating the crop's edge past it, rather than black, shows beyond its bright far edge."""
    rng = np.random.default_rng(2)
    height, width = 360, 480
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    t = crop_transform((200, 120, 280, 200), scale=1.5, angle=10.0)
    ys, xs = np.mgrid[0:512, 0:512] / 512.0
    generated = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (4 * xs + k * ys)) for k in (1, 2, 3)], -1)
    generated[-8:], generated[:, -8:] = 1.0, 1.0  # a bright far edge, where the mask is still 15 / 255
    generated = generated.astype(np.float32)
    crop = (np.clip(generated, 0, 1) * 255).astype(np.uint8)
    template = np.repeat(np.round(paste_mask() * 255).astype(np.uint8)[..., None], 3, axis=2)
    mask = cv2.warpAffine(template, t.to_original, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
    warped = cv2.warpAffine(crop, t.to_original, (width, height), flags=cv2.INTER_LINEAR)
    expected = np.clip(mask * warped + (1 - mask) * frame, 0, 255).astype(np.uint8)
    paste = PasteBack(t, height, width, "cpu")
    original = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    back = paste(torch.from_numpy(generated).permute(2, 0, 1)[None], original)
    ours = (back * 255).clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()  # truncated, as writing.encode
    apart = np.abs(ours.astype(int) - expected.astype(int))
    assert apart.max() <= 3 and (apart > 2).sum() <= 10


def test_the_tilt_of_a_face_a_twentieth_of_a_pixel_tall_is_still_measured() -> None:
    """Guards upstream's threshold: only eyes and lips within 1e-3 pixel of each other mean no tilt; lips 0.05 px
    right of the eyes' centre make the face's vertical point right, a tilt of -90 degrees."""
    from engine.portrait.crop import roll_from_landmarks

    points = np.full((203, 2), 50.0)
    points[[48, 66]] = (50.05, 50.0)
    assert roll_from_landmarks(points) == pytest.approx(-90.0)


def test_head_rotation_offsets_turn_the_driven_keypoints(tmp_path) -> None:
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.liveportrait_plan import _driving_keypoints

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    source = _info(seed=3)
    config = PortraitConfig(face, face, stitching=False, yaw=20.0)
    x, x_source = _driving_keypoints(config, source, source, nets=None, driving_image=False)  # a still clip of itself
    turned = rotation_matrix(source.pitch, source.yaw + 20, source.roll)
    assert torch.allclose(x, compose(source.kp, turned, source.exp, source.scale, source.t), atol=1e-5)
    assert torch.allclose(x_source, transform_keypoints(source))  # the warp still starts from the source as it is


def test_each_head_rotation_offset_turns_its_own_angle_by_its_sign(tmp_path) -> None:
    """--pitch, --yaw and --roll each add to the source's own angle of that name (a negative roll turns the other
    way, not the same)."""
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.liveportrait_plan import _driving_keypoints

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    source = _info(seed=4)
    config = PortraitConfig(face, face, stitching=False, pitch=5.0, yaw=-10.0, roll=-15.0)
    x, _ = _driving_keypoints(config, source, source, nets=None, driving_image=False)
    turned = rotation_matrix(source.pitch + 5, source.yaw - 10, source.roll - 15)
    assert torch.allclose(x, compose(source.kp, turned, source.exp, source.scale, source.t), atol=1e-5)


def test_the_driving_multiplier_keeps_the_head_rotation_offsets(tmp_path) -> None:
    """--multiplier scales the driving motion, not --yaw's degrees: a still driver with --yaw 20 gives the source
    turned by 20 degrees at multiplier 0 and 2 as at 1 (before, 0 lost the turn and 2 stretched the face); with the
    driver's whole pose (absolute, region all) the offsets change nothing, as the run says, at any multiplier."""
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.liveportrait_plan import _driving_keypoints

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    source = _info(seed=9)
    turned = transform_keypoints(replace(source, yaw=source.yaw + 20))
    for multiplier in (0.0, 1.0, 2.0):
        config = PortraitConfig(face, face, stitching=False, yaw=20.0, multiplier=multiplier)
        x, _ = _driving_keypoints(config, source, source, nets=None, driving_image=False)
        assert torch.allclose(x, turned, atol=1e-5)
    for region in ("all", "pose"):
        still = PortraitConfig(face, face, stitching=False, yaw=20.0, multiplier=0.0, relative=False, region=region)
        x, x_source = _driving_keypoints(still, source, source, nets=None, driving_image=False)
        assert torch.allclose(x, x_source, atol=1e-6)


def test_absolute_motion_of_the_expression_alone_keeps_the_head_rotation_offsets(tmp_path) -> None:
    """With --no-relative in region exp (lip and eyes alike) the head keeps the source's own pose, so --yaw turns it,
    and --multiplier scales the driving motion about the turned source: a driver that is the source itself gives
    the turned source at multipliers 0, 1 and 2 (the source as it was, unturned, lost the offset the run kept
    silent about)."""
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.liveportrait_plan import _driving_keypoints

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    source = _info(seed=10)
    turned = transform_keypoints(replace(source, yaw=source.yaw + 20))
    for multiplier in (0.0, 1.0, 2.0):
        config = PortraitConfig(face, face, stitching=False, yaw=20.0, multiplier=multiplier, relative=False,
                                region="exp")  # fmt: skip
        x, _ = _driving_keypoints(config, source, source, nets=None, driving_image=False)
        assert torch.allclose(x, turned, atol=1e-5), multiplier


def test_one_driving_image_keeps_the_head_rotation_offsets(tmp_path) -> None:
    """One driving image keeps the source's pose and moves only its expression: --yaw turns that pose, so an image
    with upstream's neutral expression gives the turned source."""
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.liveportrait_plan import _driving_keypoints

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    source = _info(seed=12)
    neutral = replace(source, exp=neutral_expression())
    config = PortraitConfig(face, face, stitching=False, yaw=20.0)
    x, _ = _driving_keypoints(config, source, neutral, nets=None, driving_image=True)
    assert torch.allclose(x, transform_keypoints(replace(source, yaw=source.yaw + 20)), atol=1e-5)


def test_baseline_recovers_a_known_head_motion() -> None:
    """A driving clip we generate by rotating and shifting a face: the tracked similarity must match it."""
    import cv2

    from engine.portrait.baseline import track_motion

    face = cv2.resize(
        cv2.imread(str(__import__("pathlib").Path(__file__).resolve().parent.parent / "assets/face.jpg")), (320, 320)
    )
    box = np.array([108.0, 38.0, 176.0, 118.0])  # the face in the 320x320 frame (Haar's box, rounded)
    centre = (142.0, 78.0)
    frames = []
    for i in range(6):
        m = cv2.getRotationMatrix2D(centre, 3.0 * i, 1.0)  # counter-clockwise, 3 degrees a frame
        m[0, 2] += 2.0 * i
        frames.append(cv2.warpAffine(face, m, (320, 320), borderMode=cv2.BORDER_REFLECT))
    motion = track_motion(iter(frames), box)
    for i, head in enumerate(motion.head):
        angle = math.degrees(math.atan2(head[0, 1], head[0, 0]))  # OpenCV's matrix: [[cos, sin], [-sin, cos]]
        assert angle == pytest.approx(3.0 * i, abs=0.5)
        assert head[0, 2] * 80 == pytest.approx(2.0 * i, abs=1.0)  # box units x the 80 px box: the shift in px
    assert motion.flow.shape == (6, 2, 128, 128) and np.abs(motion.flow).mean() < 0.05  # rigid: little local flow


def _example_face_320() -> np.ndarray:
    from pathlib import Path

    return cv2.resize(cv2.imread(str(Path(__file__).resolve().parent.parent / "assets/face.jpg")), (320, 320))


def test_baseline_tracks_a_large_turn_in_one_frame() -> None:
    """A driver that turns 12 degrees between two frames: Lucas-Kanade alone reads about 11; refined, it is 12."""
    from engine.portrait.baseline import track_motion

    face = _example_face_320()
    turned = cv2.warpAffine(face, cv2.getRotationMatrix2D((142.0, 78.0), 12.0, 1.0), (320, 320),
                            borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    head = track_motion(iter([face, turned]), np.array([108.0, 38.0, 176.0, 118.0])).head[1]
    assert math.degrees(math.atan2(head[0, 1], head[0, 0])) == pytest.approx(12.0, abs=0.3)


def test_baseline_local_flow_points_back_to_where_the_mouth_was() -> None:
    """The mouth alone moves 4 px right in an 80 px face box: the flow there (box units, to frame 0) is about -4/80 in
    x, and about nothing on the still forehead."""
    from engine.portrait.baseline import track_motion

    face = _example_face_320()
    moved = face.copy()
    moved[92:114, 126:166] = face[92:114, 122:162]
    flow = track_motion(iter([face, moved]), np.array([108.0, 38.0, 176.0, 118.0])).flow[1] * 80  # in pixels
    # the crop is 1.6 box sizes over 128 pixels: at an 80 px box one crop pixel is one image pixel, (142, 78) at 64
    assert -4.5 < np.median(flow[0, 84:96, 52:76]) < -2.5 and abs(np.median(flow[1, 84:96, 52:76])) < 0.3
    assert np.median(np.abs(flow[:, 20:40, 30:90])) < 0.3


def _driven(
    tmp_path,
    source: KeypointInfo,
    driver: KeypointInfo,
    reference: int = 0,
    driving_image: bool | None = None,
    **options,
) -> torch.Tensor:
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.liveportrait_plan import _driving_keypoints

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    config = PortraitConfig(face, face, stitching=False, **options)
    return _driving_keypoints(config, source, driver, nets=None, reference=reference, driving_image=driving_image)[0]


def _no_z(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    out[:, 2] = 0
    return out


def _plain(n: int = 1, **values: torch.Tensor) -> KeypointInfo:
    """Hand-made motion: frontal, no expression, every canonical keypoint at the origin, scale 1, no shift."""
    zeros = torch.zeros(n)
    info = KeypointInfo(
        zeros, zeros, zeros, torch.zeros(n, 3), torch.zeros(n, 21, 3), torch.ones(n), torch.zeros(n, 21, 3)
    )
    return replace(info, **values)


def test_absolute_motion_takes_upstreams_subset_of_the_drivers_expression(tmp_path) -> None:
    source = _plain(scale=torch.tensor([2.0]), t=torch.tensor([[5.0, 5.0, 5.0]]))
    driver = _plain(exp=torch.ones(1, 21, 3), scale=torch.tensor([3.0]), t=torch.tensor([[1.0, 2.0, 3.0]]))
    x = _driven(tmp_path, source, driver, relative=False)[0]
    # x = 2 (the source's scale) * expression + (1, 2, 0) (the driver's position, no z); the expression is the
    # driver's 1 only where upstream copies it, else the source's 0
    for k in (1, 2, 6, *range(11, 21)):
        assert x[k].tolist() == [3, 4, 2]  # all three coordinates
    assert x[3].tolist() == x[4].tolist() == [1, 4, 0]  # y only
    assert x[5].tolist() == x[8].tolist() == [1, 2, 2]  # z only
    assert x[9].tolist() == [1, 4, 2]  # y and z
    assert x[0].tolist() == x[7].tolist() == x[10].tolist() == [1, 2, 0]  # none
    turned = replace(driver, yaw=torch.tensor([90.0]))  # the canonical point (1, 0, 0) turned to (0, 0, -1)
    x = _driven(tmp_path, replace(source, kp=torch.tensor([1.0, 0, 0]).expand(1, 21, 3)), turned, relative=False)
    assert torch.allclose(x[0, 0], torch.tensor([1.0, 2.0, -2.0]), atol=1e-6)
    lips = _driven(tmp_path, source, driver, relative=False, region="lip")[0]  # the source's pose and position
    assert [k for k in range(21) if lips[k].tolist() != [5, 5, 0]] == sorted(LIP_KEYPOINTS)
    assert lips[6].tolist() == [7, 7, 2]
    pose = _driven(tmp_path, source, driver, relative=False, region="pose")[0]  # no expression at all
    assert torch.equal(pose, torch.tensor([1.0, 2.0, 0.0]).expand(21, 3))


def test_one_driving_image_is_measured_against_upstreams_neutral_expression(tmp_path) -> None:
    source = _info(seed=5)
    x_source = transform_keypoints(source)
    neutral = replace(_info(yaw=12.0, seed=6), exp=neutral_expression())  # turned, and showing the neutral face
    assert torch.allclose(_driven(tmp_path, source, neutral), x_source, atol=1e-6)  # the source as it is
    smiling = replace(neutral, exp=neutral.exp.clone())
    smiling.exp[0, 19, 1] += 0.1
    moved = _driven(tmp_path, source, smiling) - x_source  # the driver's change, at the source's scale
    want = torch.zeros(1, 21, 3)
    want[0, 19, 1] = 0.1 * source.scale[0]
    assert torch.allclose(moved, want, atol=1e-6)
    eyes = _driven(tmp_path, source, neutral, region="eyes") - x_source  # upstream: the eyes against zero
    want = torch.zeros(1, 21, 3)
    want[0, list(EYE_KEYPOINTS)] = source.scale[0] * neutral.exp[0, list(EYE_KEYPOINTS)]
    assert torch.allclose(eyes, want, atol=1e-7)
    clip = _driven(tmp_path, source, neutral, driving_image=False)  # a one-frame clip: against itself, no motion
    assert torch.allclose(clip, x_source, atol=1e-6)


def test_relative_motion_is_measured_against_the_reference_frame(tmp_path) -> None:
    source = _info(seed=7)
    clip = _info(n=3, seed=8)
    clip.yaw[:] = torch.tensor([30.0, 0.0, 5.0])  # frame 0 is an outlier (say, no face was found in it)
    x = _driven(tmp_path, source, clip, reference=1, driving_option="pose-friendly")
    assert torch.allclose(x[1], transform_keypoints(source)[0], atol=1e-5)  # the reference frame: no motion
    assert not torch.allclose(x[2], x[1], atol=1e-3)
    friendly = _driven(tmp_path, source, clip, reference=1, driving_option="expression-friendly")
    from_reference = _driven(tmp_path, source, clip.select(slice(1, 3)), driving_option="expression-friendly")
    assert torch.allclose(friendly[1:], from_reference, atol=1e-5)  # the outlier before it changes nothing after it


def _sampled_positions(
    head: np.ndarray,
    flow: np.ndarray | None = None,
    multiplier: float = 1.0,
    box: tuple[float, ...] = (60, 40, 100, 80),
) -> np.ndarray:
    """Where each output pixel of the baseline's warp was sampled from in a 160x120 source, as (H, W, 2) pixels: the
    source holds its own x and y as two ramps, so the warp's bilinear samples read the position back."""
    from engine.portrait.baseline import FLOW_SIZE, render_batch

    h, w = 120, 160
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    source = torch.from_numpy(np.stack([xs / w, ys / h, np.zeros_like(xs)]))[None]
    if flow is None:
        flow = np.zeros((1, 2, FLOW_SIZE, FLOW_SIZE), np.float32)
    # by default centre (80, 60), 40 px: one box unit is 40 px
    out = render_batch(source, np.array(box, np.float64), head[None], flow, multiplier)[0].numpy()
    return np.stack([out[0] * w, out[1] * h], -1)


def test_baseline_warp_without_motion_is_the_source_pixel_for_pixel() -> None:
    """No head motion and no flow: each output pixel samples its own centre (a half-pixel or a width/height mix-up
    shifts or stretches the whole portrait, most on a source that is not square)."""
    positions = _sampled_positions(np.eye(2, 3))
    ys, xs = np.mgrid[0:120, 0:160]
    assert np.allclose(positions, np.stack([xs, ys], -1), atol=1e-3)


def test_baseline_warp_moves_the_face_by_the_head_motion_and_leaves_the_background() -> None:
    """The head motion takes a frame-0 point u (box units) to A u + t: the output there shows the source at u, near
    the face; past HEAD_REACH box sizes from it the background samples itself; --multiplier scales the motion."""
    turn = math.radians(10)
    a = 1.05 * np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    t = np.array([0.1, -0.05])
    positions = _sampled_positions(np.hstack([a, t[:, None]]))
    centre = np.array([80.0, 60.0])
    for x, y in ((92, 58), (74, 71)):  # near the centre, where the warp is whole
        expected = centre + 40 * np.linalg.solve(a, (np.array([x, y]) - centre) / 40 - t)  # u: A u + t is here
        assert np.allclose(positions[y, x], expected, atol=0.05)
    far = positions[5, 5]  # (75, 55) px from the centre: about 2.3 box sizes
    assert np.allclose(far, [5, 5], atol=1e-3)
    unmoved = _sampled_positions(np.hstack([a, t[:, None]]), multiplier=0.0)  # --multiplier 0: no motion at all
    ys, xs = np.mgrid[0:120, 0:160]
    assert np.allclose(unmoved, np.stack([xs, ys], -1), atol=1e-3)
    half = _sampled_positions(np.array([[1.0, 0, 0.1], [0, 1, 0]]), multiplier=0.5)
    assert half[60, 80] == pytest.approx([80 - 0.5 * 0.1 * 40, 60], abs=0.05)  # half the driver's 4 px move


def test_a_face_at_the_edge_moved_inwards_repeats_the_edge_rather_than_black() -> None:
    """A face at the left edge moved right samples from left of the picture: it takes the edge's pixels (a black
    wedge would open beside the face)."""
    positions = _sampled_positions(np.array([[1.0, 0, 0.3], [0, 1, 0]]), box=(0, 40, 40, 80))
    assert positions[60, 0] == pytest.approx([0, 60], abs=0.5)  # sampled 12 px outside: the edge's row 60


def test_baseline_local_flow_moves_the_face_only_inside_its_crop() -> None:
    """The local flow (box units, for a point of the stabilised frame, its offset to frame 0) moves the face, and
    fades out towards the edge of the flow crop (CROP_EXTENT box sizes) even where the head motion's reach goes on."""
    from engine.portrait.baseline import FLOW_SIZE

    flow = np.zeros((1, 2, FLOW_SIZE, FLOW_SIZE), np.float32)
    flow[:, 0] = 0.05  # every point came from 2 px to its right
    positions = _sampled_positions(np.eye(2, 3), flow)
    assert positions[60, 80] == pytest.approx([82, 60], abs=0.02)
    assert 0.3 < positions[60, 80 + 28][0] - (80 + 28) < 1.2  # 0.7 box sizes out: feathered to under half
    assert positions[60, 80 + 34] == pytest.approx([114, 60], abs=0.02)  # 0.85 box sizes out: past the crop


WARP_BOXES = [
    (50.0, 30.0, 80.0, 62.0),  # inside the picture: the warp reaches a part of it
    (-20.0, 10.0, 14.0, 40.0),  # across the left edge
    (20.0, 10.0, 110.0, 80.0),  # so large that the warp reaches the whole picture
    (400.0, 300.0, 420.0, 320.0),  # far outside: the warp reaches none of it
]


def _random_warp_inputs(seed: int = 7) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A 90x130 source of noise, three frames of head motion (turns of up to 20 degrees, scales of 0.9 to 1.1,
    moves of 0.2 box sizes) and of local flow."""
    from engine.portrait.baseline import FLOW_SIZE

    rng = np.random.default_rng(seed)
    source = torch.from_numpy(rng.random((1, 3, 90, 130), dtype=np.float32))
    turns = np.radians(rng.uniform(-20, 20, 3))
    scales = rng.uniform(0.9, 1.1, 3)
    rotations = scales[:, None, None] * np.stack(
        [np.stack([np.cos(turns), -np.sin(turns)], -1), np.stack([np.sin(turns), np.cos(turns)], -1)], 1
    )
    head = np.concatenate([rotations, rng.uniform(-0.2, 0.2, (3, 2, 1))], -1)
    flow = rng.uniform(-0.05, 0.05, (3, 2, FLOW_SIZE, FLOW_SIZE)).astype(np.float32)
    return source, head, flow


@pytest.mark.parametrize("box", WARP_BOXES)
def test_the_warp_computed_near_the_face_only_is_the_whole_pictures_to_the_bit(box: tuple[float, ...]) -> None:
    """SourceWarp computes each frame only where the warp reaches and takes the rest from one still sampling of the
    source: the frames must be exactly those of the warp computed over the whole picture, for any motion, and for a
    NaN motion too (it reaches every pixel)."""
    from engine.portrait.baseline import SourceWarp

    source, head, flow = _random_warp_inputs()
    warp = SourceWarp(source, np.array(box))
    for multiplier in (0.0, 0.7, 1.0, 2.5):
        whole = warp._warp(warp.u, warp.reach, head, flow, multiplier)
        assert torch.equal(warp.render(head, flow, multiplier), whole)
    lost = head.copy()
    lost[1, 0, 2] = np.nan
    whole = warp._warp(warp.u, warp.reach, lost, flow, 1.0)
    torch.testing.assert_close(warp.render(lost, flow, 1.0), whole, rtol=0, atol=0, equal_nan=True)


def _warp_as_written(
    source: torch.Tensor, box: np.ndarray, head: np.ndarray, flow: np.ndarray, multiplier: float
) -> torch.Tensor:
    """The baseline's warp in its plainest form, one step a line over the whole picture: undo the head motion about
    the face, add the local flow inside the feathered crop, fade the displacement out by HEAD_REACH, sample."""
    from engine.portrait.baseline import CROP_EXTENT, HEAD_REACH

    _, _, h, w = source.shape
    cx, cy, size = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    u = torch.stack([(xs - cx) / size, (ys - cy) / size], -1)

    def smoothstep(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0, 1)
        return x * x * (3 - 2 * x)

    a_inv = torch.linalg.inv(torch.as_tensor(head[:, :, :2], dtype=torch.float32))
    t = torch.as_tensor(head[:, :, 2], dtype=torch.float32)
    stab = torch.einsum("bij,bhwj->bhwi", a_inv, u[None] - t[:, None, None, :])
    grid = (stab / CROP_EXTENT).clamp(-2, 2)
    local = F.grid_sample(torch.as_tensor(flow), grid, align_corners=False).permute(0, 2, 3, 1)
    inside = smoothstep((1 - stab.abs().amax(-1) / CROP_EXTENT) / 0.25)
    origin = stab + local * inside[..., None]
    reach = smoothstep((HEAD_REACH - u.norm(dim=-1)) / 0.5)[None]
    sample = u[None] + (origin - u[None]) * (reach * multiplier)[..., None]
    px = sample[..., 0] * size + cx
    py = sample[..., 1] * size + cy
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)
    return F.grid_sample(source.expand(len(head), -1, -1, -1), grid, padding_mode="border", align_corners=False)


@pytest.mark.parametrize("box", WARP_BOXES)
def test_the_warp_is_its_plain_formula_to_the_bit(box: tuple[float, ...]) -> None:
    """However render_batch computes the warp (once-per-source parts kept, fewer passes, in place), its frames are
    those of the formula written out step by step, bit for bit (a 1-ulp change can move a pixel a grey level)."""
    from engine.portrait.baseline import render_batch

    source, head, flow = _random_warp_inputs(11)
    for multiplier in (0.0, 0.7, 1.0, 2.5):
        expected = _warp_as_written(source, np.array(box), head, flow, multiplier)
        assert torch.equal(render_batch(source, np.array(box), head, flow, multiplier), expected)


def test_a_driving_video_without_frames_is_an_input_error() -> None:
    from engine.core.errors import InputError
    from engine.portrait.baseline import track_motion

    with pytest.raises(InputError, match="the driving video has no frames"):
        track_motion(iter([]), np.array([0.0, 0.0, 10.0, 10.0]))


def test_a_late_face_leaves_the_first_frames_still() -> None:
    """A clip whose face appears at frame 2: frames 0 and 1 show no motion, the tracked frames follow in order."""
    from engine.portrait.baseline import FLOW_SIZE, DrivingMotion, still_before

    tracked = DrivingMotion(
        np.array([np.eye(2, 3), [[1.0, 0, 0.2], [0, 1, 0]]]), np.full((2, 2, FLOW_SIZE, FLOW_SIZE), 0.1, np.float32)
    )
    motion = still_before(tracked, 2)
    assert motion.head.shape == (4, 2, 3) and motion.flow.shape == (4, 2, FLOW_SIZE, FLOW_SIZE)
    assert np.array_equal(motion.head[:2], [np.eye(2, 3)] * 2) and not motion.flow[:2].any()
    assert np.array_equal(motion.head[2:], tracked.head) and np.array_equal(motion.flow[2:], tracked.flow)


def _upstream_bbox_crop(left: float, top: float, right: float, bottom: float, dsize: int = 512) -> np.ndarray:
    """Upstream's crop_image_by_bbox (its driving crop), written out: the corners as its float32 bbox array holds
    them, the centre rounded to float32, the scale from the width, each term computed in float64 (numpy 1.26, which
    upstream pins, promotes a Python float times a float32 scalar to float64) and the matrix stored as float32."""
    left, top, right, bottom = (float(np.float32(v)) for v in (left, top, right, bottom))
    centre = np.array([(left + right) / 2, (top + bottom) / 2], np.float32)
    s = dsize / (right - left)
    half = np.float64(np.float32(dsize / 2))
    return np.array(
        [[s, 0, half - s * np.float64(centre[0])], [0, s, half - s * np.float64(centre[1])]], dtype=np.float32
    )


def test_the_driving_crop_is_upstreams_crop_by_bbox_of_its_square() -> None:
    """The driving crop's square (scale x the face box's larger side, shifted by vx and vy of it) becomes the crop
    as upstream's crop_image_by_bbox makes it from its bbox, float32 rounding included (the source crop's formula
    gave a matrix one float32 step off in most boxes, and crops that differed in a few pixels)."""
    from pathlib import Path

    from engine.portrait.config import PortraitConfig
    from engine.portrait.driving import _driving_transform

    config = PortraitConfig(Path("face.jpg"), Path("d.mp4"), vx_ratio_crop_driving=0.05)
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    differs = 0
    for _ in range(40):
        x1, y1, width = rng.uniform(200, 700), rng.uniform(100, 300), rng.uniform(100, 300)
        box = np.array([x1, y1, x1 + width, y1 + width * rng.uniform(0.9, 1.3)])
        side = max(box[2] - box[0], box[3] - box[1]) * 2.2
        cx, cy = (box[0] + box[2]) / 2 + 0.05 * side, (box[1] + box[3]) / 2 - 0.1 * side
        want = _upstream_bbox_crop(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        got = _driving_transform(config, box, 1280, 720)
        assert got.to_crop.dtype == np.float32 and np.array_equal(got.to_crop, want)
        inverse = np.linalg.inv(np.vstack([want, np.array([0, 0, 1], np.float32)]))[:2]
        assert np.array_equal(got.to_original, inverse)
        ours = crop_image(frame, got)
        differs += not np.array_equal(ours, crop_image(frame, crop_transform(box, 2.2, -0.1, vx=0.05)))
        assert np.array_equal(ours, cv2.warpAffine(frame, want, (512, 512), flags=cv2.INTER_LINEAR))
    assert differs  # boxes where the source crop's arithmetic gives other pixels
