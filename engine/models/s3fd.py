"""The S3FD face detector (Zhang et al., 2017) as Wav2Lip runs it, laid out so the official ``s3fd.pth`` loads.

Attribute names (``conv1_1`` ... ``conv7_2``, ``fc6``, ``fc7``, ``conv3_3_norm`` ..., ``*_mbox_conf`` /
``*_mbox_loc``) are the state-dict keys of ``s3fd.pth``. Decoding boxes and NMS live in ``engine/faces/detection.py``;
this module exports the facts they need (strides, anchors, variances, mean, head map sizes).

Note on ``fc6``: it is a plain 3x3 convolution with padding 3 (no dilation), as in the released S3FD model
and every PyTorch port of it. It therefore *grows* the stride-32 map by 4 in each direction, and the three
last heads are larger than ``input / stride``: see :func:`head_map_sizes`. Upstream decodes them anyway with
anchor centres at ``stride / 2 + index * stride``; do the same to reproduce its boxes.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.checkpoints import load_into

S3FD_EXPECTED = "the S3FD face detector weights s3fd.pth used by Wav2Lip (a plain state dict, about 86 MB)"

# Decoding facts, one entry per head in forward's output order (conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2).
STRIDES = (4, 8, 16, 32, 64, 128)  # pixels between anchor centres; centre of cell (i, j) = (stride/2 + j*stride, ...)
ANCHOR_SIZES = tuple(4 * s for s in STRIDES)  # one square anchor per cell, side 4 * stride
VARIANCES = (0.1, 0.2)  # SSD box encoding: centre offsets scaled by 0.1 * anchor, log-sizes by 0.2
# Subtracted from 0-255 RGB pixels before forward (no scaling to 0-1): the released weights were trained
# (face_alignment) on RGB, and upstream flips its BGR frames before subtracting these, in this order.
INPUT_MEAN = (104.0, 117.0, 123.0)
FACE_CLASS = 1  # channel of the cls maps holding the face score (0 = background)
N_STATE_ENTRIES = 65
N_PARAMETERS = 22_459_110  # 89.8 MB (85.7 MiB) of float32, the size of s3fd.pth


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels, times a learned per-channel scale (``weight``).

    Computed in float32 whatever the input dtype: the sum of squares of VGG activations overflows
    float16, and the upstream epsilon (1e-10) underflows to 0 in it (0 / 0 on dead positions).
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        norm = xf.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return (xf / norm * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class S3FD(nn.Module):
    """VGG16 backbone plus six detection heads (one anchor per cell each).

    ``forward(x)``: ``x`` (B, 3, H, W) float, RGB 0-255 minus :data:`INPUT_MEAN`. Returns 12 tensors, as upstream,
    ``[cls1, reg1, ..., cls6, reg6]`` for the heads in :data:`STRIDES` order: ``cls`` (B, 2, h, w) holds the raw
    scores (background, face), ``reg`` (B, 4, h, w) the box offsets, as upstream's network returns them (the
    softmax over ``cls`` is upstream's ``detect.py``'s, and ours is in engine/faces/detection.py). The first head
    predicts 3 background scores and 1 face score; the background is max-out (the largest of the 3), in the
    network as upstream has it. Everything is batched: no per-image loops.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1_1, self.conv1_2 = _conv3(3, 64), _conv3(64, 64)
        self.conv2_1, self.conv2_2 = _conv3(64, 128), _conv3(128, 128)
        self.conv3_1, self.conv3_2, self.conv3_3 = _conv3(128, 256), _conv3(256, 256), _conv3(256, 256)
        self.conv4_1, self.conv4_2, self.conv4_3 = _conv3(256, 512), _conv3(512, 512), _conv3(512, 512)
        self.conv5_1, self.conv5_2, self.conv5_3 = _conv3(512, 512), _conv3(512, 512), _conv3(512, 512)

        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, stride=1, padding=3)  # padding 3, no dilation: see module doc
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.conv6_1 = nn.Conv2d(1024, 256, kernel_size=1)
        self.conv6_2 = nn.Conv2d(256, 512, kernel_size=3, stride=2, padding=1)
        self.conv7_1 = nn.Conv2d(512, 128, kernel_size=1)
        self.conv7_2 = nn.Conv2d(128, 256, kernel_size=3, stride=2, padding=1)

        self.conv3_3_norm = L2Norm(256, scale=10)
        self.conv4_3_norm = L2Norm(512, scale=8)
        self.conv5_3_norm = L2Norm(512, scale=5)

        self.conv3_3_norm_mbox_conf = _conv3(256, 4)  # 3 background scores + 1 face score
        self.conv3_3_norm_mbox_loc = _conv3(256, 4)
        self.conv4_3_norm_mbox_conf = _conv3(512, 2)
        self.conv4_3_norm_mbox_loc = _conv3(512, 4)
        self.conv5_3_norm_mbox_conf = _conv3(512, 2)
        self.conv5_3_norm_mbox_loc = _conv3(512, 4)
        self.fc7_mbox_conf = _conv3(1024, 2)
        self.fc7_mbox_loc = _conv3(1024, 4)
        self.conv6_2_mbox_conf = _conv3(512, 2)
        self.conv6_2_mbox_loc = _conv3(512, 4)
        self.conv7_2_mbox_conf = _conv3(256, 2)
        self.conv7_2_mbox_loc = _conv3(256, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu(self.conv1_2(F.relu(self.conv1_1(x))))
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv2_2(F.relu(self.conv2_1(h))))
        h = F.max_pool2d(h, 2, 2)
        f3 = F.relu(self.conv3_3(F.relu(self.conv3_2(F.relu(self.conv3_1(h))))))
        h = F.max_pool2d(f3, 2, 2)
        f4 = F.relu(self.conv4_3(F.relu(self.conv4_2(F.relu(self.conv4_1(h))))))
        h = F.max_pool2d(f4, 2, 2)
        f5 = F.relu(self.conv5_3(F.relu(self.conv5_2(F.relu(self.conv5_1(h))))))
        h = F.max_pool2d(f5, 2, 2)
        f7 = F.relu(self.fc7(F.relu(self.fc6(h))))
        f6_2 = F.relu(self.conv6_2(F.relu(self.conv6_1(f7))))
        f7_2 = F.relu(self.conv7_2(F.relu(self.conv7_1(f6_2))))

        f3, f4, f5 = self.conv3_3_norm(f3), self.conv4_3_norm(f4), self.conv5_3_norm(f5)

        cls1 = self.conv3_3_norm_mbox_conf(f3)
        # Max-out background: the first head's 3 background scores collapse to their maximum.
        cls1 = torch.cat((cls1[:, :3].amax(dim=1, keepdim=True), cls1[:, 3:]), dim=1)
        heads = [
            (cls1, self.conv3_3_norm_mbox_loc(f3)),
            (self.conv4_3_norm_mbox_conf(f4), self.conv4_3_norm_mbox_loc(f4)),
            (self.conv5_3_norm_mbox_conf(f5), self.conv5_3_norm_mbox_loc(f5)),
            (self.fc7_mbox_conf(f7), self.fc7_mbox_loc(f7)),
            (self.conv6_2_mbox_conf(f6_2), self.conv6_2_mbox_loc(f6_2)),
            (self.conv7_2_mbox_conf(f7_2), self.conv7_2_mbox_loc(f7_2)),
        ]
        return [output for head in heads for output in head]


def head_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The (h, w) of each head's output map for an input of ``height`` x ``width``, in :data:`STRIDES` order.

    The first three are ``size // stride``; fc7's is ``size // 32 + 4`` (fc6's padding 3) and the last two
    halve that with stride-2 3x3 convolutions, so e.g. a 128x128 input gives 32, 16, 8, 8, 4, 2.
    """

    def one(n: int) -> list[int]:
        sizes = [n // 4, n // 8, n // 16]
        fc7 = n // 32 + 4
        conv6 = (fc7 - 1) // 2 + 1
        conv7 = (conv6 - 1) // 2 + 1
        return [*sizes, fc7, conv6, conv7]

    return list(zip(one(height), one(width), strict=True))


def load_s3fd(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> S3FD:
    """The detector with the weights in ``path``, in eval mode on ``device``; CheckpointError names any wrong file."""
    return load_into(S3FD(), path, S3FD_EXPECTED, device, dtype)


def random_s3fd_checkpoint(path: str | os.PathLike[str], seed: int = 0) -> None:
    """Write random detector weights as a plain state dict, like the released ``s3fd.pth`` (about 90 MB)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = S3FD()
    torch.save(model.state_dict(), path)
