"""Motion extractor M: ConvNeXt-V2-tiny on a 256x256 RGB face -> head pose (66 bins each for pitch, yaw and
roll), translation, expression deltas, scale and 21 canonical 3-D keypoints. Keys start with `detector.`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_KP, NUM_BINS = 21, 66
DEPTHS, DIMS = (3, 3, 9, 3), (96, 192, 384, 768)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (biased variance, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """ConvNeXt-V2 global response normalisation on NHWC tensors."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, DIMS[0], 4, stride=4), ChannelsFirstLayerNorm(DIMS[0]))]
        for i in range(1, 4):
            layers.append(
                nn.Sequential(ChannelsFirstLayerNorm(DIMS[i - 1]), nn.Conv2d(DIMS[i - 1], DIMS[i], 2, stride=2))
            )
        self.downsample_layers = nn.ModuleList(layers)
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(d) for _ in range(n))) for d, n in zip(DIMS, DEPTHS, strict=True)
        )
        self.norm = nn.LayerNorm(DIMS[-1], eps=1e-6)
        self.fc_kp = nn.Linear(DIMS[-1], 3 * NUM_KP)
        self.fc_scale = nn.Linear(DIMS[-1], 1)
        self.fc_pitch = nn.Linear(DIMS[-1], NUM_BINS)
        self.fc_yaw = nn.Linear(DIMS[-1], NUM_BINS)
        self.fc_roll = nn.Linear(DIMS[-1], NUM_BINS)
        self.fc_t = nn.Linear(DIMS[-1], 3)
        self.fc_exp = nn.Linear(DIMS[-1], 3 * NUM_KP)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        x = self.norm(x.mean((-2, -1)))
        return {
            "pitch": self.fc_pitch(x),
            "yaw": self.fc_yaw(x),
            "roll": self.fc_roll(x),
            "t": self.fc_t(x),
            "exp": self.fc_exp(x),
            "scale": self.fc_scale(x),
            "kp": self.fc_kp(x),
        }


class MotionExtractor(nn.Module):
    """Official file: base_models/motion_extractor.pth (every key under `detector.`)."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = ConvNeXtV2()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(image)


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Soft-argmax over the 66 pose bins: 3 degrees per bin, offset -97.5 (uniform logits give 0)."""
    idx = torch.arange(NUM_BINS, dtype=logits.dtype, device=logits.device)
    return (F.softmax(logits, dim=1) * idx).sum(1) * 3 - 97.5
