"""NNPACK's Winograd convolutions for a model's wide 3x3 layers on the CPU: fewer multiplications, same outputs
within float rounding.

Why: on the CPU, Wav2Lip's generator spends over 95% of its time in convolutions, and oneDNN (PyTorch's CPU
convolutions) computes them directly; its Winograd kernels exist only for AVX-512 and PyTorch does not ask for
them. NNPACK, built into PyTorch's Linux x86 wheels (torch._nnpack_available() says where), computes 3x3 stride-1
convolutions with a Winograd transform: fewer multiplications at the cost of transforming inputs and outputs, which
pays where the layer has many channels. On a 2-core AVX2 CPU at batch 16 the generator ran 1.14x faster per frame
for a still face and 1.10x for moving crops (benchmarks/wav2lip_levers.py, its 2026-12-04 amd-epyc-avx2 result);
with 64 or 32 as the channel floor it was slower. NNPACK transforms the weights on every call (ATen keeps no
transformed copy), a cost that does not shrink with the call: on calls of fewer than MIN_PIXELS output pixels
(batch x height x width: the generator's 3x3 and 6x6 stages at batch 16) the direct convolution was faster, 2-5x on
the 3x3 stages, so those go to oneDNN.

Where it pays: only where oneDNN has no AVX-512 (``onednn_has_avx512``). NNPACK's kernels are AVX2 at most,
while oneDNN's direct convolutions use AVX-512 where the CPU has it, and there they win: on a 2-core AVX-512 Xeon
the generator ran slower per frame with NNPACK (the wav2lip_levers intel-xeon-avx512 result of
2026-12-04: 0.78x for a still face, 0.80x for moving crops). On Intel CPUs models/winograd_f4.py does the Winograd
transform with matrix products instead, with or without AVX-512 (with oneDNN and MKL held to AVX2 there, NNPACK
gained nothing and F4 about a fifth), so NNPACK is the engine's choice on other CPUs without AVX-512.

The transforms round differently from direct convolution: outputs differ by up to about 1e-4 on unit-scale
activations, about a hundredth of a grey level on the generator's frames.

Only fp32 on the CPU (NNPACK has nothing else). NNPACK reads and writes NCHW, so a channels_last input is converted
there and back (included in the figure above). NNPACK's thread pool is made once per process, with PyTorch's thread
count at that moment (ATen's nnpack_threadpool): a layer run when PyTorch's thread count differs from the pool's
falls back to oneDNN rather than run on the wrong number of threads.
"""

from __future__ import annotations

import os
import threading
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 128  # narrower layers gain little or lose: the transforms cost about as much as they save
MIN_PIXELS = 1024  # calls of fewer output pixels (batch x height x width) go to oneDNN: see the module docstring

C = TypeVar("C", bound=nn.Conv2d)

_lock = threading.Lock()
_pool_threads: int | None = None  # PyTorch's thread count when NNPACK's pool was made; 0: NNPACK unusable here


def nnpack_threads() -> int:
    """NNPACK's thread count in this process (its pool is made on the first call, with PyTorch's thread count then),
    or 0 where NNPACK cannot run: not built in, or its initialisation refuses this CPU."""
    global _pool_threads
    with _lock:
        if _pool_threads is None:
            _pool_threads = _try_nnpack()
        return _pool_threads


def _try_nnpack() -> int:
    # _nnpack_available() also initialises NNPACK: without that call its convolution fails.
    if not torch._nnpack_available():
        return 0
    threads = torch.get_num_threads()
    try:
        x = torch.ones(1, 1, 4, 4)
        y = torch._nnpack_spatial_convolution(x, torch.ones(1, 1, 3, 3), torch.zeros(1), [1, 1], [1, 1])
    except RuntimeError:
        return 0
    return threads if y.shape == x.shape and abs(float(y[0, 0, 1, 1]) - 9.0) < 1e-3 else 0


class NnpackConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 Conv2d computed by NNPACK on calls of at least ``min_pixels`` output pixels; the
    same parameters, attributes and state-dict keys, so code that reads a convolution's weight or stride works
    unchanged. Returns the input's memory layout."""

    min_pixels = MIN_PIXELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = x.shape[0] * x.shape[2] * x.shape[3] < self.min_pixels
        if small or torch.get_num_threads() != nnpack_threads() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        y = torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, list(self.padding), [1, 1])
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def onednn_has_avx512() -> bool:
    """Whether oneDNN's direct convolutions run with AVX-512 here: the CPU has it and ONEDNN_MAX_CPU_ISA does not
    cap oneDNN below it. Where they do, NNPACK is the slower one (see the module docstring)."""
    if not torch.cpu._is_avx512_supported():
        return False
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap == "ALL" or cap.startswith(("AVX512", "AVX10"))


def is_wide_3x3(conv: nn.Module, min_channels: int, max_channels: int | None = None) -> bool:
    """A plain fp32 CPU Conv2d, 3x3, stride 1, padding 1, with `min_channels` to `max_channels` inputs: what a
    Winograd transform computes."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min_channels <= conv.in_channels <= (max_channels or conv.in_channels)
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


def swap_wide_3x3(model: nn.Module, min_channels: int, cls: type[C], max_channels: int | None = None) -> list[C]:
    """Replace `model`'s wide 3x3 convolutions (``is_wide_3x3``) by `cls` layers holding the same parameters, in
    place; returns the new layers."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not is_wide_3x3(child, min_channels, max_channels):
                continue
            conv = cls(child.in_channels, child.out_channels, 3, 1, 1, bias=child.bias is not None, device="meta")
            conv.weight = nn.Parameter(child.weight.detach().contiguous(), requires_grad=False)
            conv.bias = None if child.bias is None else nn.Parameter(child.bias.detach(), requires_grad=False)
            setattr(parent, name, conv)
            swapped.append(conv)
    return swapped


def use_winograd(model: nn.Module, min_channels: int = MIN_CHANNELS, min_pixels: int = MIN_PIXELS) -> int:
    """Compute `model`'s fp32 CPU 3x3 stride-1 convolutions with at least `min_channels` inputs by NNPACK, in place,
    on calls of at least `min_pixels` output pixels; returns how many were swapped (0 where NNPACK cannot run here).
    For inference: the weights are kept as they are, in NCHW."""
    if not nnpack_threads():
        return 0
    layers = swap_wide_3x3(model, min_channels, NnpackConv2d)
    for layer in layers:
        layer.min_pixels = min_pixels
    return len(layers)
