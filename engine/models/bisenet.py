"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch, as MuseTalk ships it), laid out so the official
``face-parse-bisent/79999_iter.pth`` loads unchanged and strictly.

The network is a ResNet-18 context path with two attention-refinement modules, a feature-fusion module and three
output heads. The file holds all three heads; only the main one (``conv_out``) decides the output, so ``forward``
computes only that one: the two auxiliary heads (``conv_out16``, ``conv_out32``, training-time deep supervision)
are kept as modules so the checkpoint loads strictly, and are never run. Attribute names are upstream's, because
they are the state-dict keys. Unlike upstream, building the network reads no file and reaches no network (upstream's
backbone loads ImageNet weights in its constructor, only to have them overwritten by the checkpoint).

Classes (CelebAMask-HQ): 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 glasses, 7/8 ears, 9 earring, 10 nose,
11 mouth, 12 upper lip, 13 lower lip, 14 neck, 15 necklace, 16 cloth, 17 hair, 18 hat.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.models.checkpoints import load_strict, read_checkpoint, strip_module_prefix

BISENET_EXPECTED = (
    "the face-parsing checkpoint face-parse-bisent/79999_iter.pth (BiSeNet, about 53 MB; upstream MuseTalk's "
    "download_weights.sh fetches it from Google Drive, id 154JgKpzCPW82qINcVieuPH3fZ2e0P812)"
)
N_CLASSES = 19
INPUT_SIZE = 512  # upstream resizes every crop to 512x512 before parsing
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
N_STATE_ENTRIES = 191  # parameters and BatchNorm buffers (31 num_batches_tracked included), all three heads
N_PARAMETERS = 13_300_416  # including the two auxiliary heads


class ConvBNReLU(nn.Module):
    """Conv (no bias) + BatchNorm + ReLU; upstream's ``ConvBNReLU`` (keys ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, 1, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet-18's two-conv residual block, with a 1x1 projection where the width or stride changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class ResNet18(nn.Module):
    """The backbone without its classifier; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_average(x: torch.Tensor) -> torch.Tensor:
    # Upstream's own reduction, avg_pool2d over the whole map: x.mean((2, 3)) sums in another order (last bits).
    return F.avg_pool2d(x, x.shape[2:])


class AttentionRefinement(nn.Module):
    """A 3x3 ConvBNReLU whose output is reweighted per channel by a sigmoid of its global average."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_average(feat))))


class ContextPath(nn.Module):
    """The backbone plus the top-down path: returns the 1/8 backbone feature and the refined 1/8 and 1/16 maps."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel_size=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(_global_average(feat32))  # (N, 128, 1, 1): upstream upsamples it; adding broadcasts
        feat32_sum = self.arm32(feat32) + context
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusion(nn.Module):
    """Concatenates the spatial and context features, then adds a channel-attention reweighting of the fusion."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, kernel_size=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat((spatial, context), dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_average(feat)))))
        return feat * attention + feat


class OutputHead(nn.Module):
    """A 3x3 ConvBNReLU then a 1x1 convolution to the class logits (upstream's ``BiSeNetOutput``)."""

    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parsing: ``forward(x)`` takes (N, 3, H, W) RGB normalised with ImageNet's mean and std (see
    ``parsing_input``; upstream uses H = W = 512) and returns (N, 19, H, W) class logits, upsampled bilinearly
    (align_corners=True) from 1/8 resolution: upstream's first output. The auxiliary heads are never run."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)  # training-time only: loaded, never run
        self.conv_out32 = OutputHead(128, 64, n_classes)  # training-time only: loaded, never run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, feat_cp8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, feat_cp8))  # the backbone's 1/8 map stands in for a spatial path
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def parsing_input(image_rgb: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """Upstream's preprocessing of one face crop: (H, W, 3) uint8 RGB -> (1, 3, size, size) float32 on the CPU.

    The crop is resized with PIL's bilinear filter (which, unlike OpenCV's, averages over the source pixels when
    shrinking), scaled to [0, 1] and normalised with ImageNet's mean and std, as torchvision's ToTensor + Normalize.
    """
    from PIL import Image

    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
    resized = np.asarray(Image.fromarray(image_rgb).resize((size, size), Image.BILINEAR))
    return normalise(torch.from_numpy(resized.copy()).permute(2, 0, 1).unsqueeze(0))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB, already at the network's size, on any device -> the network's float32 input."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _with_batchnorm_counters(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A file saved by PyTorch < 0.4.1 has no ``num_batches_tracked`` entries (unused in eval); torch's own loader
    fills them with 0 for such files, and so do we, but only when all of them are absent (a file missing some is
    damaged and fails the strict check)."""
    counters = [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]
    if any(k in state for k in counters):
        return state
    return {**state, **{k: torch.tensor(0, dtype=torch.long) for k in counters}}


def load_bisenet(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> BiSeNet:
    """The parser with the weights in ``path`` (all three heads, strictly), in eval mode on ``device``."""
    model = BiSeNet()
    state = _with_batchnorm_counters(strip_module_prefix(read_checkpoint(path, BISENET_EXPECTED)), model)
    load_strict(model, state, BISENET_EXPECTED, path=path)
    return model.eval().to(device=device, dtype=dtype)


def random_bisenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the published layout (BatchNorm statistics near the identity, so outputs stay in range)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BiSeNet()
        state = {}
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                state[key] = 1.0 + 0.1 * torch.rand(value.shape)
            elif key.endswith(("running_mean", "bias")):
                state[key] = 0.1 * torch.randn(value.shape)
            elif key.endswith("num_batches_tracked"):
                state[key] = torch.tensor(80_000, dtype=torch.long)
            elif value.ndim == 1:  # BatchNorm scale
                state[key] = 1.0 + 0.1 * torch.randn(value.shape)
            else:
                state[key] = value.clone()
    return state


__all__ = [
    "BISENET_EXPECTED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "N_CLASSES",
    "BiSeNet",
    "load_bisenet",
    "normalise",
    "parsing_input",
    "random_bisenet_state",
]
