"""The generators behind lip-sync: Wav2Lip, and a weight-free baseline for when no checkpoint is set.

Both take a batch of face crops (uint8 BGR, size x size) with the matching speech features and
return generated crops (float32, 0..255, BGR) of the same size, so the pipeline treats them alike. A
generator may add a fourth channel, the coverage (0..1) of what it changed; the paste then blends by it
instead of its lower-face ellipse (the baseline does, so the rest of the face keeps its own pixels).
Wav2Lip's work stays on the device between the upload of the crops and the download of the result.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.core.device import DeviceCapabilities, apply_backend_flags, precision_dtype
from engine.lipsync.mouth import mouth_line, open_mouth

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

    Speech-band energy per video frame opens the mouth: the lip line is found in each crop (engine.lipsync.mouth),
    the lower lip and jaw are warped down, the upper lip up a little, and the gap is filled with a dark mouth
    interior. It shows the pipeline end to end; it does not read lips. The crops come back with a fourth
    channel, the coverage of what changed, so the paste leaves every other pixel of the frame as it was.
    """

    name = "baseline"
    label = "Baseline (speech energy opens the mouth; not Wav2Lip)"
    crop_size = 160

    def __init__(self, device: torch.device | None = None, max_open: float = 0.09, steadiness: int = 5):
        self.device = device  # the warp runs in OpenCV on the CPU whatever the device: it is cheap
        self.max_open = max_open  # the opening at full energy, as a fraction of the crop height
        self._lines: deque[float] = deque(maxlen=steadiness)  # the last lip lines: their median steadies a video

    def opening(self, energy: float) -> float:
        """The mouth's opening for one frame's energy (0..1): closed below a whisper, linear above."""
        return self.max_open * float(np.clip((energy - 0.05) / 0.95, 0.0, 1.0))

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray) -> np.ndarray:
        count, height, width = crops.shape[:3]
        out = np.empty((count, height, width, 4), np.float32)
        for i in range(count):
            self._lines.append(mouth_line(crops[i]))
            line = float(np.median(self._lines))
            out[i, ..., :3], out[i, ..., 3] = open_mouth(crops[i], line, self.opening(float(energy[i])))
        return out
