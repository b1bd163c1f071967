"""Winograd F(4x4, 3x3) by matrix products (engine/models/winograd_f4.py): the direct convolution's outputs within
float rounding for any size and layout, and only the 128-384-channel 3x3 layers swapped (the generator's frames
with it: tests/test_winograd.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.models.winograd_f4 import (
    CHUNK_TILES,
    WinogradF4Conv2d,
    transform_weight,
    use_winograd_f4,
    winograd_conv3x3,
)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("batch", "height", "width"), [(3, 1, 1), (3, 4, 8), (3, 5, 7), (3, 19, 20), (5, 44, 48), (2, 99, 100)]
)
def test_it_matches_the_direct_convolution_and_keeps_the_layout(layout, batch, height, width) -> None:
    """Partial tiles at the bottom and right (sizes not a multiple of 4), a single pixel, more tiles than one
    step takes (CHUNK_TILES: 5 images of 132 tiles go in steps of 3 and 2), and images of more tiles than a step
    holds (625 of 512: still one image a step)."""
    torch.manual_seed(height * 100 + width)
    tiles = ((height + 3) // 4) * ((width + 3) // 4)
    assert batch * tiles <= CHUNK_TILES or CHUNK_TILES // tiles < batch  # one step, or several
    x = torch.randn(batch, 16, height, width).contiguous(memory_format=layout)
    weight, bias = torch.randn(8, 16, 3, 3) / 12, torch.randn(8)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), 1, 1)
    got = winograd_conv3x3(x, transform_weight(weight), bias)
    assert got.shape == expected.shape and got.dtype == torch.float32 and got.is_contiguous(memory_format=layout)
    assert (got.double() - expected).abs().max() <= 2e-4
    no_bias = winograd_conv3x3(x, transform_weight(weight), None)
    assert (no_bias.double() - (expected - bias.double()[:, None, None])).abs().max() <= 2e-4


def test_every_output_pixel_sees_its_own_neighbourhood() -> None:
    """A single 1 in the input gives the flipped kernel around it, wherever it falls in a tile (and nothing else)."""
    weight = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) + 1
    transformed = transform_weight(weight)
    for row, col in [(0, 0), (3, 4), (4, 3), (7, 7), (6, 1)]:
        x = torch.zeros(1, 1, 8, 8)
        x[0, 0, row, col] = 1
        assert torch.allclose(winograd_conv3x3(x, transformed, None), F.conv2d(x, weight, None, 1, 1), atol=1e-5)


def test_only_wide_3x3_layers_are_swapped_and_the_state_dict_is_unchanged() -> None:
    model = nn.Sequential(
        nn.Conv2d(128, 64, 3, 1, 1),  # swapped
        nn.Conv2d(64, 64, 3, 1, 1),  # too narrow
        nn.Conv2d(512, 512, 3, 1, 1),  # too wide: its transformed weights would cost more memory than it saves time
        nn.Conv2d(384, 8, 3, 1, 1),  # swapped: MAX_CHANNELS is the widest taken
        nn.Conv2d(128, 128, 3, 2, 1),  # strided
        nn.Conv2d(128, 128, 1, 1, 0),  # 1x1
        nn.ConvTranspose2d(128, 128, 3, 1, 1),  # transposed
        nn.Conv2d(128, 128, 3, 1, 1).to(torch.bfloat16),  # not fp32
    ).eval()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_winograd_f4(model) == 2
    assert use_winograd_f4(model) == 0  # a swapped layer is no plain Conv2d: not swapped again
    assert [type(m) for m in model] == [WinogradF4Conv2d, nn.Conv2d, nn.Conv2d, WinogradF4Conv2d, nn.Conv2d,
                                        nn.Conv2d, nn.ConvTranspose2d, nn.Conv2d]  # fmt: skip
    after = model.state_dict()  # the transformed weights are not saved
    assert after.keys() == keys.keys() and all(torch.equal(after[k], keys[k]) for k in keys)
    x = torch.randn(2, 128, 9, 10)
    with torch.inference_mode():
        assert (model[0](x) - F.conv2d(x, model[0].weight, model[0].bias, 1, 1)).abs().max() <= 2e-4
        x16 = x.to(torch.bfloat16)  # anything but fp32 runs the direct convolution on the fp32 weights' layer
        swapped = model[0].to(torch.bfloat16)
        assert torch.equal(swapped(x16), F.conv2d(x16, swapped.weight, swapped.bias, 1, 1))
