"""LivePortrait's keypoint maths, batched: pose from bins, rotations, the keypoint transform, relative motion
from a driving clip or one image, absolute motion, animation regions, the expression-friendly multiplier,
stitching and retargeting.

Conventions (the official ones, which the weights were trained with): angles in degrees, pose bins 3 degrees
wide from -97.5; `rotation_matrix` returns (Rz Ry Rx) transposed, because keypoints are row vectors multiplied
on the right; keypoints x = s * (x_c R + exp) + t with only tx, ty applied (no z translation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from engine.core.errors import InputError
from engine.models.liveportrait.motion import bins_to_degrees
from engine.portrait.config import REGIONS

LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)
# Absolute motion takes only these expression coordinates (x, y, z = 0, 1, 2) from the driver, per keypoint; the
# others stay the source's (upstream: LivePortraitPipeline.execute in src/live_portrait_pipeline.py).
ABSOLUTE_EXPRESSION = {
    **{k: (0, 1, 2) for k in (1, 2, 6, *range(11, 21))},
    3: (1,), 4: (1,), 5: (2,), 8: (2,), 9: (1, 2),
}  # fmt: skip
# The neutral expression a single driving image is measured against: part of the released model's calibration,
# copied as data from `lip_array` (src/utils/resources/lip_array.pkl, a float64 (1, 21, 3) array, loaded as
# InferenceConfig.lip_array) in KwaiVGI/LivePortrait, MIT License, Copyright (c) 2024 Kuaishou Visual Generation
# and Interaction Center. Upstream converts it to float32 before use, as we do.
NEUTRAL_EXPRESSION = (
    (-9.4524e-05, 0.00024222, -4.009739999999999e-05),
    (0.000208596, 0.000468054, 1.2746399999999999e-05),
    (-0.000124602, 0.00032497200000000003, 4.425e-06),
    (0.000119652, -0.000456624, 5.40852e-05),
    (-0.000265254, -7.459799999999999e-05, -1.5527999999999998e-05),
    (-3.3488399999999996e-05, -0.000183036, -3.4940399999999998e-06),
    (-4.7542799999999996e-07, -4.5246599999999997e-07, 1.59498e-06),
    (-0.000541296, 0.0026328000000000002, 7.2485999999999995e-06),
    (-1.1694e-05, 5.00502e-06, 9.9888e-06),
    (8.028599999999999e-07, 5.1913199999999995e-06, -0.00040934399999999996),
    (0.000166878, -1.9815000000000003e-05, -8.854799999999999e-05),
    (-1.51536e-05, 8.2506e-05, 5.94012e-06),
    (-2.61054e-07, 2.7591e-06, 2.21028e-06),
    (-6.6282e-05, -6.828599999999999e-05, -3.4531799999999997e-06),
    (-0.00083262, -0.00179592, -2.59176e-06),
    (6.9714e-06, 3.65514e-05, -1.8977999999999999e-06),
    (-4.808759999999999e-06, 7.1148e-06, -1.03236e-05),
    (-0.0006368400000000001, -0.0011661, 5.62314e-05),
    (0.00028329, -1.4565599999999998e-05, 1.09746e-05),
    (-4.16022e-06, -0.0150906, -0.0025494),
    (0.000222474, 0.00562788, 0.0027264599999999996),
)


@dataclass
class KeypointInfo:
    """One batch of motion-extractor outputs in usable form (B = frames)."""

    pitch: torch.Tensor  # (B,) degrees
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor  # (B, 3)
    exp: torch.Tensor  # (B, 21, 3)
    scale: torch.Tensor  # (B,)
    kp: torch.Tensor  # (B, 21, 3) canonical keypoints
    # (B, 3, 3) the rotation itself where the motion came as matrices (upstream's .pkl templates), used as given;
    # the angles above are then its Euler angles. None: the rotation is made from the angles.
    matrix: torch.Tensor | None = None

    @property
    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll) if self.matrix is None else self.matrix

    def select(self, index: int | slice) -> KeypointInfo:
        """A sub-batch (an int keeps a batch axis of 1)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index
        fields = (getattr(self, f) for f in self.__dataclass_fields__)
        return KeypointInfo(*(None if v is None else v[sl] for v in fields))


def concatenated(infos: list[KeypointInfo]) -> KeypointInfo:
    """One batch of several, in order (rotation matrices kept only where every part has them)."""
    fields = [[getattr(i, f) for i in infos] for f in KeypointInfo.__dataclass_fields__]
    return KeypointInfo(*(None if any(v is None for v in values) else torch.cat(values) for values in fields))


def keypoint_info(motion: dict[str, torch.Tensor]) -> KeypointInfo:
    b = motion["kp"].shape[0]
    return KeypointInfo(
        pitch=bins_to_degrees(motion["pitch"].float()),
        yaw=bins_to_degrees(motion["yaw"].float()),
        roll=bins_to_degrees(motion["roll"].float()),
        t=motion["t"].float(),
        exp=motion["exp"].float().view(b, 21, 3),
        scale=motion["scale"].float().view(b),
        kp=motion["kp"].float().view(b, 21, 3),
    )


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3): (Rz(roll) Ry(yaw) Rx(pitch)) transposed, angles in degrees (to radians as upstream's camera.py
    rounds them: / 180 * pi; * (pi / 180) differs by one ulp for about 4 angles in 10)."""
    x, y, z = (a.float() / 180 * math.pi for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).view(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def euler_angles(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pitch, yaw, roll) in degrees of (B, 3, 3) rotations made as `rotation_matrix` makes them (its inverse, with
    yaw in [-90, 90])."""
    m = rotation.double().transpose(1, 2)  # Rz Ry Rx
    pitch = torch.atan2(m[:, 2, 1], m[:, 2, 2])
    yaw = torch.atan2(-m[:, 2, 0], torch.hypot(m[:, 2, 1], m[:, 2, 2]))
    roll = torch.atan2(m[:, 1, 0], m[:, 0, 0])
    return tuple(torch.rad2deg(a).float() for a in (pitch, yaw, roll))  # type: ignore[return-value]


def compose(
    kp: torch.Tensor, rotation: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """s * (kp R + exp) + t, with t's z component ignored (the official transform)."""
    out = scale.view(-1, 1, 1) * (kp @ rotation + exp)
    shift = t.clone()
    shift[:, 2] = 0
    return out + shift[:, None, :]


def transform_keypoints(info: KeypointInfo) -> torch.Tensor:
    return compose(info.kp, info.rotation, info.exp, info.scale, info.t)


def _check_region(region: str) -> None:
    if region not in REGIONS:
        raise InputError(f"animation region {region!r} is not one of {', '.join(REGIONS)}")


def _expression_mask(region: str, absolute: bool = False) -> torch.Tensor:
    """(21, 3) booleans: the expression coordinates the driver moves in `region` (absolute motion moves only
    upstream's subset of them for all and exp)."""
    mask = torch.zeros(21, 3, dtype=torch.bool)
    if region in ("all", "exp") and not absolute:
        mask[:] = True
    elif region in ("all", "exp"):
        for keypoint, axes in ABSOLUTE_EXPRESSION.items():
            mask[keypoint, list(axes)] = True
    elif region in ("lip", "eyes"):
        mask[list(LIP_KEYPOINTS if region == "lip" else EYE_KEYPOINTS)] = True
    return mask


def relative_driving(
    source: KeypointInfo, driving: KeypointInfo, first: KeypointInfo, region: str = "all"
) -> torch.Tensor:
    """Driving keypoints for the source face: the driving frames' motion relative to the first driving frame
    (rotation, expression, scale and translation deltas) applied to the source, limited to a region."""
    _check_region(region)
    n = driving.kp.shape[0]
    r_s, r_d, r_0 = source.rotation, driving.rotation, first.rotation
    posed = region in ("all", "pose")
    rotation = (r_d @ r_0.transpose(1, 2)) @ r_s if posed else r_s.expand(n, 3, 3)
    moved_exp = source.exp + (driving.exp - first.exp)
    exp = torch.where(_expression_mask(region).to(moved_exp.device), moved_exp, source.exp.expand(n, 21, 3))
    scale = source.scale * (driving.scale / first.scale) if region == "all" else source.scale.expand(n)
    t = source.t + (driving.t - first.t) if posed else source.t.expand(n, 3)
    return compose(source.kp.expand(n, 21, 3), rotation, exp, scale, t)


def image_driving(source: KeypointInfo, image: KeypointInfo, region: str = "all") -> torch.Tensor:
    """Relative motion from one driving image, as upstream: no pose, scale or position change; its expression
    measured against the neutral expression (for the eyes region, upstream measures it against zero)."""
    neutral = torch.zeros_like(image.exp) if region == "eyes" else neutral_expression().to(image.exp)
    return relative_driving(source, image, replace(image, exp=neutral.expand_as(image.exp)), region)


def absolute_driving(source: KeypointInfo, driving: KeypointInfo, region: str = "all") -> torch.Tensor:
    """The driver's own pose and position (all, pose) and its expression (all, exp: upstream's subset of
    coordinates, ABSOLUTE_EXPRESSION; lip, eyes: their keypoints), always at the source's scale."""
    _check_region(region)
    n = driving.kp.shape[0]
    posed = region in ("all", "pose")
    rotation = driving.rotation if posed else source.rotation.expand(n, 3, 3)
    mask = _expression_mask(region, absolute=True).to(driving.exp.device)
    exp = torch.where(mask, driving.exp, source.exp.expand(n, 21, 3))
    t = driving.t if posed else source.t.expand(n, 3)
    return compose(source.kp.expand(n, 21, 3), rotation, exp, source.scale.expand(n), t)


def neutral_expression() -> torch.Tensor:
    """(1, 21, 3) float32: NEUTRAL_EXPRESSION, rounded from float64 as upstream rounds it."""
    return torch.tensor(NEUTRAL_EXPRESSION, dtype=torch.float64).float()[None]


def hull_volume(points: torch.Tensor) -> float:
    from scipy.spatial import ConvexHull

    return float(ConvexHull(points.detach().double().cpu().numpy()).volume)


def motion_multiplier(x_source: torch.Tensor, x_first_driving: torch.Tensor) -> float:
    """The expression-friendly scale: sqrt of the ratio of the keypoint clouds' convex-hull volumes."""
    return math.sqrt(hull_volume(x_source[0])) / math.sqrt(hull_volume(x_first_driving[0]))


def expression_friendly(x_driving: torch.Tensor, x_first: torch.Tensor, x_source: torch.Tensor, mult: float):
    """Driving keypoints rescaled about the first driving frame and re-centred on the source."""
    return (x_driving - x_first) * mult + x_source


def stitch(mlp: torch.nn.Module, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
    """Keypoint deltas and a global (tx, ty) that keep the animated face seamless with the pasted-back frame."""
    b = x_driving.shape[0]
    feat = torch.cat([x_source.expand(b, 21, 3).reshape(b, 63), x_driving.reshape(b, 63)], dim=1)
    delta = mlp(feat.to(next(mlp.parameters()).dtype)).float()
    out = x_driving + delta[:, :63].view(b, 21, 3)
    out[..., :2] += delta[:, 63:65].view(b, 1, 2)
    return out


def retarget(mlp: torch.nn.Module, x_source: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """Eye (ratios: source left, source right, target) or lip (source, target) keypoint deltas."""
    b = ratios.shape[0]
    feat = torch.cat([x_source.expand(b, 21, 3).reshape(b, 63), ratios.to(x_source)], dim=1)
    return mlp(feat.to(next(mlp.parameters()).dtype)).float().view(b, 21, 3)


def driving_multiplier(x_driving: torch.Tensor, x_source: torch.Tensor, factor: float) -> torch.Tensor:
    return x_source + (x_driving - x_source) * factor


__all__ = [
    "ABSOLUTE_EXPRESSION",
    "EYE_KEYPOINTS",
    "LIP_KEYPOINTS",
    "NEUTRAL_EXPRESSION",
    "REGIONS",
    "KeypointInfo",
    "absolute_driving",
    "compose",
    "driving_multiplier",
    "expression_friendly",
    "image_driving",
    "keypoint_info",
    "motion_multiplier",
    "neutral_expression",
    "relative_driving",
    "retarget",
    "rotation_matrix",
    "stitch",
    "transform_keypoints",
]
