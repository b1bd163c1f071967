"""SPADE decoder G: the warped 256x64x64 features -> a 512x512 RGB image in [0, 1]. Official file:
base_models/spade_generator.pth (spectral-normalised convolutions, folded at load time)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.liveportrait.blocks import SPADEResnetBlock


class SPADEDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        label = 256
        self.fc = nn.Conv2d(label, 512, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(512, 512, label))
        self.up_0 = SPADEResnetBlock(512, 256, label)
        self.up_1 = SPADEResnetBlock(256, 64, label)
        self.up = nn.Upsample(scale_factor=2)
        self.conv_img = nn.Sequential(nn.Conv2d(64, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(self.up(x), seg)
        x = self.up_1(self.up(x), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))
