"""The Wav2Lip generator (Prajwal et al., 2020), laid out so the official checkpoints load unchanged.

Module attribute names (``face_encoder_blocks``, ``audio_encoder``, ``face_decoder_blocks``,
``output_block``, and ``conv_block`` inside every unit) are the upstream ones, because they are the
state-dict keys of ``wav2lip.pth`` / ``wav2lip_gan.pth``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.checkpoints import load_into

WAV2LIP_EXPECTED = "the official Wav2Lip generator checkpoint wav2lip.pth or wav2lip_gan.pth (about 416 MB)"
FACE_SIZE = 96  # the generator's face crops are FACE_SIZE x FACE_SIZE
MEL_SHAPE = (1, 80, 16)  # one mel window: 80 mel bins x 16 frames (0.2 s of audio at 80 mel frames per second)
N_STATE_ENTRIES = 352  # state-dict entries of the published generator (parameters and BatchNorm buffers)
N_PARAMETERS = 36_298_035


class ConvUnit(nn.Module):
    """Conv2d + BatchNorm + ReLU, optionally adding the input before the ReLU (then cin == cout, stride 1)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual  # a Python constant: torch.compile and ONNX export see a fixed graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        # In place, into the BatchNorm's fresh output (nothing else holds it; its backward needs only its input):
        # the same values with one full-size buffer fewer per unit, which lowers the CPU's peak memory.
        if self.residual:
            y += x
        return torch.relu_(y)


class ConvTransposeUnit(nn.Module):
    """ConvTranspose2d + BatchNorm + ReLU: the decoder's upsampling step."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.conv_block(x))  # in place, as in ConvUnit


def _residuals(channels: int, count: int) -> list[nn.Module]:
    return [ConvUnit(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def _down(cin: int, cout: int, kernel_size: int, stride: int, padding: int, n_residual: int) -> nn.Sequential:
    """One encoder stage: a (strided) unit then ``n_residual`` residual units at the new width."""
    return nn.Sequential(ConvUnit(cin, cout, kernel_size, stride, padding), *_residuals(cout, n_residual))


def _up(cin: int, cout: int, stride: int, padding: int, output_padding: int, n_residual: int) -> nn.Sequential:
    """One decoder stage: a 3x3 transposed unit then ``n_residual`` residual units."""
    return nn.Sequential(
        ConvTransposeUnit(cin, cout, 3, stride, padding, output_padding), *_residuals(cout, n_residual)
    )


class Wav2Lip(nn.Module):
    """The published 96x96 Wav2Lip generator.

    ``forward(mel, face)``: ``mel`` (B, 1, 80, 16) is one mel-spectrogram window per frame; ``face`` (B, 6, 96, 96)
    holds, in [0, 1] and BGR channel order, the target crop with its lower half masked (channels 0-2)
    stacked with a reference crop (channels 3-5). Returns the generated crops (B, 3, 96, 96) in [0, 1], BGR.

    Only 4-D inputs; the upstream's 5-D (B, T, ...) training layout is flattened by the caller. The forward
    has no data-dependent Python control flow, so it traces, compiles and exports as one static graph.
    """

    def __init__(self) -> None:
        super().__init__()
        # Face encoder: 96 -> 96, 48, 24, 12, 6, 3, 1 (each stage's output is kept for a skip connection).
        self.face_encoder_blocks = nn.ModuleList(
            [
                _down(6, 16, 7, 1, 3, 0),
                _down(16, 32, 3, 2, 1, 2),
                _down(32, 64, 3, 2, 1, 3),
                _down(64, 128, 3, 2, 1, 2),
                _down(128, 256, 3, 2, 1, 2),
                _down(256, 512, 3, 2, 1, 1),
                nn.Sequential(ConvUnit(512, 512, 3, 1, 0), ConvUnit(512, 512, 1, 1, 0)),
            ]
        )
        # Audio encoder, one flat Sequential (its indices are checkpoint keys): 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1.
        self.audio_encoder = nn.Sequential(
            ConvUnit(1, 32, 3, 1, 1),
            *_residuals(32, 2),
            ConvUnit(32, 64, 3, (3, 1), 1),
            *_residuals(64, 2),
            ConvUnit(64, 128, 3, 3, 1),
            *_residuals(128, 2),
            ConvUnit(128, 256, 3, (3, 2), 1),
            *_residuals(256, 1),
            ConvUnit(256, 512, 3, 1, 0),
            ConvUnit(512, 512, 1, 1, 0),
        )
        # Decoder: from the 512x1x1 audio embedding back to 96x96; every stage's input is the previous
        # stage's output concatenated with the encoder feature of the same size, hence the odd widths.
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvUnit(512, 512, 1, 1, 0)),  # 1x1
                _up(1024, 512, 1, 0, 0, 1),  # 3x3
                _up(1024, 512, 2, 1, 1, 2),  # 6x6
                _up(768, 384, 2, 1, 1, 2),  # 12x12
                _up(512, 256, 2, 1, 1, 2),  # 24x24
                _up(320, 128, 2, 1, 1, 2),  # 48x48
                _up(160, 64, 2, 1, 1, 2),  # 96x96
            ]
        )
        self.output_block = nn.Sequential(ConvUnit(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        return self.decode(mel, self.encode_face(face))

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        """The face encoder's seven stage outputs (96x96 down to 1x1), the decoder's skip connections.

        Separate from ``decode`` so a caller whose crops do not change (a still photo) can encode one crop
        once and reuse its skips for every frame; ``forward`` composes the two, so its numerics are the same.
        """
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        return skips

    def decode(self, mel: torch.Tensor, skips: list[torch.Tensor], first_row: int = 0) -> torch.Tensor:
        """The audio encoder and the decoder: the generated crops from the mel windows and ``encode_face``'s skips.

        Every op here reads the skips and none writes them, so they may be one sample's expanded to the batch
        (though on the CPU torch.cat copies such stride-0 views slowly: Wav2LipEngine copies them out first).
        ``first_row`` > 0 computes only the output rows from it down (``row_starts``); the rows above are zero.
        """
        keeps = self.row_starts(first_row)
        x, held = self.audio_encoder(mel), 0  # held: the first row x holds at its scale
        for block, skip, keep in zip(self.face_decoder_blocks, reversed(skips), keeps, strict=True):
            x, held = block(x), held * _stride(block[0])
            x, held = torch.cat((x[:, :, keep - held :], skip[:, :, keep:]), dim=1), keep
        return _from_row(self.output_block(x), held, first_row)

    def row_starts(self, first_row: int) -> list[int]:
        """Per decoder block, the first row of its output that must be computed for output rows ``first_row``
        onwards to be exact (every block's rows for ``first_row`` 0).

        A caller that reads only the lower rows (the blend paste reads the lower face) need not compute the upper
        ones, and each stage needs few rows above the ones below it needs: a 3x3 convolution (padding 1) reads one
        row above each row it writes, and a transposed one (stride 2, padding 1, output padding 1) computes output
        rows 2a onwards exactly from input rows a onwards. So each block's output is cut to this row before the next
        block reads it; the rows above the cut are never computed. With the blend paste's usual first row (about
        24) this skips a fifth of the 96x96 and a sixth of the 48x48 stages: about a tenth of the decoder.
        """
        if not 0 <= first_row < FACE_SIZE:
            raise ValueError(f"first_row {first_row} is not within 0..{FACE_SIZE - 1}")
        keeps = [0] * len(self.face_decoder_blocks)
        need = max(0, first_row - 1)  # the output block's 3x3 unit reads one row above
        for index in range(len(keeps) - 1, 0, -1):
            keeps[index] = need
            block = self.face_decoder_blocks[index]
            stride, residuals = _stride(block[0]), len(block) - 1
            # Its input, cut at row a, gives exact rows from stride * a, less one per residual 3x3 unit after it;
            # the stride-1 block reads the 1x1 bottleneck, which has no rows to skip.
            need = max(0, (need - residuals) // stride) if stride > 1 else 0
        return keeps

    def still_face(self, skips: list[torch.Tensor]) -> StillFace:
        """What ``decode_still`` needs for one face whose skips (``encode_face`` of one crop, batch 1) are fixed.

        The decoder's concatenating units (each upsampling block's first unit and the output block's) convolve
        ``cat(x, skip)``, and a convolution is linear in its input channels: ``W @ cat(x, skip) + b`` equals
        ``W_x @ x + (W_skip @ skip + b)``. With the skip fixed, the bracket is one map per unit, computed here
        once; per frame only ``W_x @ x`` is left. That drops 6% of the decoder's arithmetic and every
        concatenation (a copy of each stage's activations), within float rounding of ``decode``.
        """
        constants, weights = [], []
        for unit, skip in zip(self._concatenating_units(), reversed(skips), strict=True):
            conv = unit.conv_block[0]
            width = conv.in_channels - skip.shape[1]  # the channels of x, ahead of the skip's
            zeros = skip.new_zeros((1, width, *skip.shape[2:]))
            constants.append(conv(torch.cat((zeros, skip), dim=1)))
            weight = conv.weight[:width] if isinstance(conv, nn.ConvTranspose2d) else conv.weight[:, :width]
            weights.append(weight.contiguous(memory_format=_layout_of(conv.weight)))  # a view for the transposed ones
        return StillFace(constants, weights)

    def decode_still(self, mel: torch.Tensor, still: StillFace, first_row: int = 0) -> torch.Tensor:
        """``decode`` for a face prepared by ``still_face``: the same crops, each frame from its own mel window
        (``first_row`` as in ``decode``)."""
        keeps = self.row_starts(first_row)
        x, held = self.face_decoder_blocks[0](self.audio_encoder(mel)), 0
        rests = [block[1:] for block in self.face_decoder_blocks[1:]] + [self.output_block[1:]]
        units = self._concatenating_units()
        for unit, rest, constant, weight, keep in zip(units, rests, still.constants, still.weights, keeps, strict=True):
            conv = unit.conv_block[0]
            x, held = x[:, :, keep - held :], keep * _stride(unit)
            if isinstance(conv, nn.ConvTranspose2d):
                y = F.conv_transpose2d(x, weight, None, conv.stride, conv.padding, conv.output_padding)
            else:
                y = F.conv2d(x, weight, None, conv.stride, conv.padding)
            y += constant[:, :, held:]  # the skip's share and the bias, the same for every frame
            for after in unit.conv_block[1:]:  # the BatchNorm, unless folded into the convolution
                y = after(y)
            x = rest(torch.relu_(y))
        return _from_row(x, held, first_row)

    def _concatenating_units(self) -> list[nn.Module]:
        """The units whose input is ``cat(x, skip)``, in ``decode``'s order (their skips: ``reversed(skips)``)."""
        return [*(block[0] for block in self.face_decoder_blocks[1:]), self.output_block[0]]


@dataclass
class StillFace:
    """One fixed face's share of the decoder's concatenating units (``Wav2Lip.still_face``): per unit, the map
    its skip and bias add (1, C, H, W) and the weights that act on the rest of its input."""

    constants: list[torch.Tensor]
    weights: list[torch.Tensor]


def _stride(unit: nn.Module) -> int:
    """The row stride of a unit's convolution (square in every decoder unit)."""
    return unit.conv_block[0].stride[0]


def _from_row(x: torch.Tensor, held: int, first_row: int) -> torch.Tensor:
    """The full-height output from ``x``, which holds rows ``held`` onwards, exact from ``first_row``: rows above
    ``first_row`` are zero (finite, so a caller that checks for NaN sees only what it reads)."""
    if first_row == 0:
        return x
    out = x.new_zeros((x.shape[0], x.shape[1], held + x.shape[2], x.shape[3]))
    out[:, :, first_row:] = x[:, :, first_row - held :]
    return out


def _layout_of(weight: torch.Tensor) -> torch.memory_format:
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def load_wav2lip(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    fold_batchnorm: bool = False,
) -> Wav2Lip:
    """The generator with the weights in ``path``, in eval mode on ``device``; CheckpointError names any wrong file.

    ``channels_last`` lays the weights out NHWC before they are loaded (loading copies into that layout), so no
    second copy of the 145 MB of weights is made to convert them afterwards. ``fold_batchnorm`` folds each
    BatchNorm into its convolution (see ``fold_batchnorms``) in fp32 on the CPU, before the cast to ``dtype``.
    """
    model = Wav2Lip()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not fold_batchnorm:
        return load_into(model, path, WAV2LIP_EXPECTED, device, dtype)
    model = fold_batchnorms(load_into(model, path, WAV2LIP_EXPECTED, "cpu", torch.float32))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device=device, dtype=dtype)


def fold_batchnorms(model: Wav2Lip) -> Wav2Lip:
    """Fold every unit's eval-mode BatchNorm into the convolution before it, in place: an inference-only model.

    Each BatchNorm is an affine map per channel, so scaling the convolution's weights and shifting its bias gives
    the same outputs (within 1e-4 on [0, 1] outputs in fp32, two hundredths of a grey level: float rounding) with
    one pass over every activation fewer: about 4% less time per forward on a 2-core CPU. The folded model has no
    BatchNorm keys, so it cannot be trained or saved as an official checkpoint; ``forward``, ``encode_face`` and
    ``decode`` are unchanged.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for unit in [m for m in model.modules() if isinstance(m, ConvUnit | ConvTransposeUnit)]:
        conv, norm = unit.conv_block
        fused = fuse_conv_bn_eval(conv.eval(), norm.eval(), transpose=isinstance(unit, ConvTransposeUnit))
        unit.conv_block = nn.Sequential(fused)
    return model


def random_wav2lip_checkpoint(
    path: str | os.PathLike[str], seed: int = 0, prefix: bool = True, legacy: bool = False
) -> None:
    """Write random generator weights in the official checkpoint layout, so tests and benchmarks need no download.

    Same structure as the released files: ``{"state_dict": {"module." + key: tensor}, "optimizer": ...,
    "global_step": 0, "global_epoch": 0}`` (``prefix=False`` drops the DataParallel prefix; ``legacy=True``
    uses torch's old non-zip serialisation). BatchNorm statistics come from one pass over random inputs, so
    eval-mode outputs vary with the input instead of saturating at 0 or 1. About 145 MB: the official files
    are larger because their optimizer state holds Adam moments for every parameter; here it is a stand-in.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = Wav2Lip()
        batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in batchnorms:
            bn.weight.copy_(1.0 + 0.1 * torch.randn(bn.num_features))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features))
            bn.momentum = 1.0  # the next batch's statistics become the running statistics
        # One train-mode pass on random inputs sets every BatchNorm's running mean/var to the statistics
        # its input really has, so eval-mode activations stay in range instead of exploding or dying.
        model.train()(torch.randn(4, *MEL_SHAPE), torch.rand(4, 6, FACE_SIZE, FACE_SIZE))
        for bn in batchnorms:
            bn.momentum = 0.1
            bn.running_var.clamp_(min=1e-3)
            bn.num_batches_tracked.fill_(1000)
        model.eval()
    state = {("module." if prefix else "") + k: v for k, v in model.state_dict().items()}
    optimizer = {
        "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}},
        "param_groups": [
            {
                "lr": 1e-4,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0,
                "amsgrad": False,
                "params": list(range(len(list(model.parameters())))),
            }
        ],
    }
    checkpoint = {"state_dict": state, "optimizer": optimizer, "global_step": 0, "global_epoch": 0}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
