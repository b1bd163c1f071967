"""Winograd F(4x4, 3x3) convolutions by matrix products, for a model's wide 3x3 layers on Intel CPUs.

Why: on a CPU with AVX-512, oneDNN's direct 3x3 convolutions run near the cores' fp32 peak and NNPACK's Winograd
(AVX2 at most, models/winograd.py) is slower than them, so the only lever left is less arithmetic done by kernels
as fast as oneDNN's. Lavin & Gray's F(4x4, 3x3) (interpolation points 0, +-1, +-2) turns every 6x6 input tile into
a 4x4 output tile with 36 multiplications per channel pair instead of 144, and each of the 36 becomes one large
matrix product over (tiles x channels) that BLAS runs at full speed. The weights are transformed once, when the
layer is swapped (NNPACK transforms them on every call), and the input and output transforms are one product each
with the Kronecker matrices B^T (x) B^T and A^T (x) A^T. On a 2-core AVX-512 Xeon at batch 16 the generator ran
1.14x faster per frame for a still face and 1.10x for moving crops (benchmarks/wav2lip_levers.py, its 2026-12-04
intel-xeon-avx512 result), where NNPACK made it 0.78x and 0.80x as fast.

Where it pays: where the products run at full speed, which with PyTorch's BLAS (MKL) means on Intel CPUs only
(``mkl_at_full_speed``), with or without AVX-512; elsewhere the engine keeps NNPACK or oneDNN.

Numerics: the transforms round differently from direct convolution; outputs differ from an fp64 reference by up to
about 1e-4 on unit-scale activations (direct: about 1e-5); on the generator's frames, under a hundredth of a grey
level (0.0054 and 0.0063 in that result). fp32 on the CPU only; the layer returns its input's memory layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.winograd import swap_wide_3x3

MIN_CHANNELS = 128  # narrower layers lose: the transforms cost about as much as the products save
# Wider layers are left to oneDNN: their transformed weights (36 x Cin x Cout floats, 4x the weights: 36 MiB for a
# 512-channel unit) would add 144 MiB for Wav2Lip's four 512-channel units, which run at 3x3 and 6x6 pixels and
# save a few milliseconds per batch of 16; with them the peak came near the 1 GB that issue #17 allows.
MAX_CHANNELS = 384
CHUNK_TILES = 512  # tiles per step: the transformed tiles of a step take a few tens of MiB at most

_BT = torch.tensor(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
     [0, 4, 0, -5, 0, 1]], dtype=torch.float64,
)  # fmt: skip
_G = torch.tensor(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
     [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64,
)  # fmt: skip
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                   dtype=torch.float64)  # fmt: skip
INPUT_TRANSFORM = torch.kron(_BT, _BT).float()  # (36, 36): tile element (i, j) -> transformed (a, b)
OUTPUT_TRANSFORM = torch.kron(_AT, _AT).float()  # (16, 36): transformed (a, b) -> output element (i, j)


def mkl_at_full_speed(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether F4's matrix products run at full speed here: PyTorch's CPU BLAS is MKL, and the CPU is an Intel one.

    Why: MKL picks its fast code paths only on Intel CPUs. On a 2-core AMD EPYC its sgemm ran at about 40 GFLOP/s;
    on a 2-core Xeon F4's products ran at 284 GFLOP/s, 180 with MKL held to AVX2 and 70 held to SSE4.2 (ad hoc
    timings), and with oneDNN held to AVX2 F4 made the generator 1.25x and 1.19x faster per frame (still face,
    moving crops) with MKL at AVX2, where NNPACK gained nothing, but 0.90x and 0.92x as fast with MKL at SSE4.2
    (benchmarks/wav2lip_levers.py, its 2026-12-05 intel-xeon-capped-avx2 and -avx2-mkl-sse42 results)."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(
        line.split(":", 1)[-1].strip() == "GenuineIntel" for line in text.splitlines() if line.startswith("vendor_id")
    )


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (36, Cin, Cout): G w G^T per channel pair, computed in fp64, ready for the products."""
    u = _G @ weight.detach().double() @ _G.T
    return u.permute(2, 3, 1, 0).reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 3x3, stride-1, padding-1 convolution of `x` (N, C, H, W) by F(4x4, 3x3) with `transformed` weights, a few
    images at a time (about CHUNK_TILES tiles), so the transformed tiles stay small."""
    n, c, h, w = x.shape
    rows, cols = (h + 3) // 4, (w + 3) // 4
    out = transformed.shape[2]
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 4 * cols + 1 - w, 1, 4 * rows + 1 - h))  # NHWC
    s_n, s_h, s_w, s_c = padded.stride()
    full = torch.empty((n, rows, 4, cols, 4, out), dtype=x.dtype)
    step = max(1, CHUNK_TILES // (rows * cols))
    for first in range(0, n, step):
        images = min(step, n - first)
        tiles = images * rows * cols
        patches = padded.as_strided((6, 6, images, rows, cols, c), (s_h, s_w, s_n, 4 * s_h, 4 * s_w, s_c),
                                    padded.storage_offset() + first * s_n)  # fmt: skip
        v = torch.mm(INPUT_TRANSFORM, patches.reshape(36, tiles * c)).view(36, tiles, c)
        m = torch.bmm(v, transformed)  # (36, tiles, Cout): 36 products instead of 144 per tile
        y = torch.mm(OUTPUT_TRANSFORM, m.view(36, tiles * out)).view(4, 4, images, rows, cols, out)
        y = y.permute(2, 3, 0, 4, 1, 5)
        if bias is None:
            full[first : first + images].copy_(y)
        else:
            torch.add(y, bias, out=full[first : first + images])
    nhwc = full.view(n, 4 * rows, 4 * cols, out)[:, :h, :w]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return nhwc.permute(0, 3, 1, 2).contiguous(memory_format=layout)


class WinogradF4Conv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 Conv2d computed by ``winograd_conv3x3`` on fp32 CPU tensors (anything else: the
    direct convolution); the same parameters, attributes and state-dict keys. The transformed weights are made
    when the layer is swapped in (``use_winograd_f4``): for inference, with the weights fixed from then on."""

    transformed: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or self.weight.dtype != torch.float32:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return winograd_conv3x3(x, self.transformed, self.bias)


def use_winograd_f4(model: nn.Module, min_channels: int = MIN_CHANNELS, max_channels: int = MAX_CHANNELS) -> int:
    """Compute `model`'s fp32 CPU 3x3 stride-1 convolutions with `min_channels` to `max_channels` inputs by
    F(4x4, 3x3), in place; returns how many were swapped."""
    layers = swap_wide_3x3(model, min_channels, WinogradF4Conv2d, max_channels)
    for layer in layers:
        layer.register_buffer("transformed", transform_weight(layer.weight), persistent=False)
    return len(layers)
