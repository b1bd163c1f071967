"""The generators behind lip-sync: Wav2Lip, and a weight-free baseline for when no checkpoint is set.

Both take a batch of face crops (uint8 BGR, size x size) with the matching speech features and
return generated crops (float32, 0..255, BGR) of the same size, so the pipeline treats them alike.
Work stays on the device between the upload of the crops and the download of the result.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.device import DeviceCapabilities, apply_backend_flags, precision_dtype

log = logging.getLogger(__name__)


class Generator(Protocol):
    name: str
    label: str
    crop_size: int

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray) -> np.ndarray: ...


def default_precision(device: torch.device) -> str:
    """fp16 on CUDA (bf16 is visibly lossy on Wav2Lip), fp32 on the CPU."""
    return "fp16" if device.type == "cuda" else "fp32"


def auto_batch_size(device: torch.device, precision: str, cap: int = 512) -> int:
    """Largest power of two that fits half the free GPU memory (128 on the CPU).

    Wav2Lip's inference activations peak at roughly 6 MiB a sample in fp32 (3 in fp16/bf16);
    the OOM back-off catches the cases where this guess is too bold.
    """
    if device.type != "cuda":
        return 128
    free, _ = torch.cuda.mem_get_info(device)
    per_sample = (3 if precision in ("fp16", "bf16") else 6) * 2**20
    fits = max(1, int(free * 0.5 // per_sample))
    return max(1, min(cap, 2 ** int(math.log2(fits))))


class Wav2LipEngine:
    """The official Wav2Lip generator: batched, fp16/bf16, channels_last, optionally compiled."""

    name = "wav2lip"
    crop_size = 96

    def __init__(
        self,
        checkpoint: str | Path,
        device: torch.device,
        caps: DeviceCapabilities,
        precision: str,
        compile: bool = False,
    ):
        from engine.models.wav2lip import load_wav2lip

        self.device = device
        self.dtype = precision_dtype(precision, caps)
        if device.type == "cuda":
            # Same-shaped batches all run long: let cuDNN pick its fastest kernels once; TF32 only on request.
            apply_backend_flags(cudnn_benchmark=True, tf32=precision == "tf32")
        self.label = f"Wav2Lip ({Path(checkpoint).name}, {precision})"
        model = load_wav2lip(checkpoint, device=device, dtype=self.dtype)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.compiled = compile
        self.model = torch.compile(model, dynamic=False) if compile else model
        self._fixed_batch: int | None = None

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray) -> np.ndarray:
        count = len(crops)
        if self.compiled:
            # A compiled graph is specialised to its batch size: pad the last, shorter batch
            # instead of paying a recompilation for it.
            self._fixed_batch = self._fixed_batch or count
            if count < self._fixed_batch:
                pad = self._fixed_batch - count
                crops = np.concatenate([crops, np.repeat(crops[-1:], pad, axis=0)])
                mels = np.concatenate([mels, np.repeat(mels[-1:], pad, axis=0)])
        with torch.inference_mode():
            faces = torch.from_numpy(crops).to(self.device, non_blocking=True)  # uint8 (B, S, S, 3)
            faces = faces.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
            masked = faces.clone()
            masked[:, :, self.crop_size // 2 :] = 0  # the lower half is what the network must fill in
            x = torch.cat([masked, faces], dim=1)
            mel = torch.from_numpy(mels).to(self.device, non_blocking=True).unsqueeze(1).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.model(mel, x)
            out = (out.float() * 255.0).permute(0, 2, 3, 1).cpu().numpy()
        return out[:count]


class BaselineEngine:
    """Not Wav2Lip: a weight-free stand-in so the tab works out of the box.

    Speech-band energy opens the jaw: the lower face is warped downwards below the mouth line
    (an inverse displacement field sampled with grid_sample, batched on the device) and the gap
    between the lips is shaded a little. It shows the pipeline end to end; it does not read lips.
    """

    name = "baseline"
    label = "Baseline (energy-driven jaw warp; not Wav2Lip)"
    crop_size = 128

    def __init__(self, device: torch.device, max_open: float = 0.09):
        self.device = device
        self.max_open = max_open  # jaw drop at full energy, as a fraction of the crop height
        size = self.crop_size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.grid = torch.stack([xs, ys], dim=-1).to(device)  # (S, S, 2) in grid_sample's (x, y) order
        yn, xn = (ys + 1) / 2, (xs + 1) / 2  # 0..1 down and across the crop
        mouth, chin = 0.70, 0.97
        # Displacement rises from 0 at the mouth line to its peak a little below, and falls back to 0
        # at the chin, so the box edge stays put; across, it is strongest at the centre.
        below = ((yn - mouth) / (chin - mouth)).clamp(0, 1)
        profile = torch.sin(math.pi * below) * (1 - below * 0.3)
        across = torch.exp(-(((xn - 0.5) / 0.2) ** 2))
        self.field = (profile * across).to(device)  # (S, S)
        lips = torch.exp(-(((yn - (mouth + 0.04)) / 0.03) ** 2)) * torch.exp(-(((xn - 0.5) / 0.12) ** 2))
        self.lip_gap = lips.to(device)

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            faces = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float()
            e = torch.from_numpy(np.asarray(energy, np.float32)).to(self.device).view(-1, 1, 1)
            shift = 2 * self.max_open * e * self.field  # grid units: the crop spans 2
            grid = self.grid.unsqueeze(0).repeat(len(crops), 1, 1, 1)
            grid[..., 1] = grid[..., 1] - shift  # sample from above: content moves down
            warped = F.grid_sample(faces, grid, mode="bilinear", padding_mode="border", align_corners=True)
            warped = warped * (1 - 0.45 * e.unsqueeze(1) * self.lip_gap)
            return warped.clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
