"""Appearance feature extractor F: a 256x256 RGB face in [0, 1] -> a 32x16x64x64 feature volume."""

from __future__ import annotations

import torch
from torch import nn

from engine.models.liveportrait.blocks import DownBlock2d, ResBlock3d, SameBlock2d

FEATURE_CHANNELS, FEATURE_DEPTH = 32, 16


class AppearanceFeatureExtractor(nn.Module):
    """2-D encoder (64 -> 128 -> 256 channels, 256 -> 64 px), a 1x1 conv to 512, reshaped to a 32-channel,
    16-deep volume, then six 3-D residual blocks. Official file: base_models/appearance_feature_extractor.pth."""

    def __init__(self) -> None:
        super().__init__()
        self.first = SameBlock2d(3, 64)
        self.down_blocks = nn.ModuleList([DownBlock2d(64, 128), DownBlock2d(128, 256)])
        self.second = nn.Conv2d(256, FEATURE_CHANNELS * FEATURE_DEPTH, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(6):  # the official names start with a digit: 3dr0 .. 3dr5
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(FEATURE_CHANNELS))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.first(image)
        for block in self.down_blocks:
            x = block(x)
        x = self.second(x)
        b, _, h, w = x.shape
        return self.resblocks_3d(x.view(b, FEATURE_CHANNELS, FEATURE_DEPTH, h, w))
