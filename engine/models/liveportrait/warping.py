"""Warping module W: moves the source feature volume from the source keypoints to the driving keypoints.

A dense-motion network predicts, from keypoint heatmaps and the source features shifted by each keypoint's
translation, a soft assignment of every voxel to one of 21 keypoint motions or the background; the mixed
flow warps the 32x16x64x64 volume (5-D grid_sample), which is flattened to 512x64x64, refined by two 2-D
convolutions and multiplied by a predicted occlusion map. Official file: base_models/warping_module.pth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.liveportrait.blocks import Hourglass, SameBlock2d, coordinate_grid, keypoint_gaussians

NUM_KP = 21
COMPRESSED = 4


class DenseMotionNetwork(nn.Module):
    def __init__(self, feature_channels: int = 32, depth: int = 16) -> None:
        super().__init__()
        cin = (NUM_KP + 1) * (COMPRESSED + 1)  # per slot (background + 21 keypoints): heatmap + 4 features
        self.hourglass = Hourglass(32, cin, 5, 1024)
        self.mask = nn.Conv3d(self.hourglass.out_filters, NUM_KP + 1, 7, padding=3)
        self.compress = nn.Conv3d(feature_channels, COMPRESSED, 1)
        self.norm = nn.BatchNorm3d(COMPRESSED)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * depth, 1, 7, padding=3)

    def sparse_motions(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        """(B, 22, D, H, W, 3): identity (background) first, then each keypoint's translation."""
        b, _, d, h, w = feature.shape
        identity = coordinate_grid(d, h, w, like=kp_source)[None, None]  # 1,1,D,H,W,3
        # upstream's order of operations, (identity - driving) + source, so the sums round as upstream's do
        moved = identity - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        return torch.cat([identity.expand(b, 1, d, h, w, 3), moved], dim=1)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict:
        feature = F.relu(self.norm(self.compress(feature)))
        b, c, d, h, w = feature.shape
        motions = self.sparse_motions(feature, kp_driving, kp_source)
        slots = NUM_KP + 1
        repeated = feature.unsqueeze(1).expand(b, slots, c, d, h, w).reshape(b * slots, c, d, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(b * slots, d, h, w, 3), align_corners=False)
        deformed = deformed.view(b, slots, c, d, h, w)
        heat = keypoint_gaussians(kp_driving, (d, h, w)) - keypoint_gaussians(kp_source, (d, h, w))
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)  # B,22,1,D,H,W
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w))
        mask = F.softmax(self.mask(prediction), dim=1)  # B,22,D,H,W
        deformation = (mask.unsqueeze(-1) * motions).sum(dim=1)  # B,D,H,W,3
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return {"mask": mask, "deformation": deformation, "occlusion_map": occlusion}


class WarpingNetwork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork()
        self.third = SameBlock2d(512, 256, lrelu=True)
        self.fourth = nn.Conv2d(256, 256, 1)

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict:
        """The official positional order (driving before source); call it with keywords."""
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = F.grid_sample(feature_3d, dense["deformation"], align_corners=False)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(b, c * d, h, w)))
        out = out * dense["occlusion_map"]
        return {"occlusion_map": dense["occlusion_map"], "deformation": dense["deformation"], "out": out}
