"""LivePortrait's keypoint maths, batched: pose from bins, rotations, the keypoint transform, relative motion
from a driving clip, animation regions, the expression-friendly multiplier, stitching and retargeting.

Conventions (the official ones, which the weights were trained with): angles in degrees, pose bins 3 degrees
wide from -97.5; `rotation_matrix` returns (Rz Ry Rx) transposed, because keypoints are row vectors multiplied
on the right; keypoints x = s * (x_c R + exp) + t with only tx, ty applied (no z translation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.core.errors import InputError
from engine.models.liveportrait.motion import bins_to_degrees
from engine.portrait.config import REGIONS

LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)


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

    @property
    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def select(self, index: int | slice) -> KeypointInfo:
        """A sub-batch (an int keeps a batch axis of 1)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index
        return KeypointInfo(*(getattr(self, f)[sl] for f in self.__dataclass_fields__))


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
    """(B, 3, 3): (Rz(roll) Ry(yaw) Rx(pitch)) transposed, angles in degrees."""
    x, y, z = (a.float() * (math.pi / 180) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).view(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


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


def _region_exp(base: torch.Tensor, moved: torch.Tensor, region: str) -> torch.Tensor:
    if region in ("all", "exp"):
        return moved
    if region == "pose":
        return base
    out = base.clone()
    idx = list(LIP_KEYPOINTS if region == "lip" else EYE_KEYPOINTS)
    out[:, idx] = moved[:, idx]
    return out


def relative_driving(
    source: KeypointInfo, driving: KeypointInfo, first: KeypointInfo, region: str = "all"
) -> torch.Tensor:
    """Driving keypoints for the source face: the driving frames' motion relative to the first driving frame
    (rotation, expression, scale and translation deltas) applied to the source, limited to a region."""
    if region not in REGIONS:
        raise InputError(f"animation region {region!r} is not one of {', '.join(REGIONS)}")
    n = driving.kp.shape[0]
    r_s, r_d, r_0 = source.rotation, driving.rotation, first.rotation
    posed = region in ("all", "pose")
    rotation = (r_d @ r_0.transpose(1, 2)) @ r_s if posed else r_s.expand(n, 3, 3)
    moved_exp = source.exp + (driving.exp - first.exp)
    exp = _region_exp(source.exp.expand(n, 21, 3), moved_exp, region)
    scale = source.scale * (driving.scale / first.scale) if region == "all" else source.scale.expand(n)
    t = source.t + (driving.t - first.t) if posed else source.t.expand(n, 3)
    return compose(source.kp.expand(n, 21, 3), rotation, exp, scale, t)


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
    feat = torch.cat([x_source.expand(b, 21, 3).reshape(b, 63), ratios.float()], dim=1)
    return mlp(feat.to(next(mlp.parameters()).dtype)).float().view(b, 21, 3)


def driving_multiplier(x_driving: torch.Tensor, x_source: torch.Tensor, factor: float) -> torch.Tensor:
    return x_source + (x_driving - x_source) * factor


__all__ = [
    "EYE_KEYPOINTS",
    "LIP_KEYPOINTS",
    "REGIONS",
    "KeypointInfo",
    "compose",
    "driving_multiplier",
    "expression_friendly",
    "keypoint_info",
    "motion_multiplier",
    "relative_driving",
    "retarget",
    "rotation_matrix",
    "stitch",
    "transform_keypoints",
]
