"""What every stage of a portrait run shares: the progress callback's shape, frames turned from the decoder's BGR
to the networks' RGB (as arrays or as a tensor), an image's largest face, and the device waited for, so that a
stage's timing holds its own work (CUDA runs asynchronously). Both engines, the driving clip's reading and the split
jobs use them, so they live below all of those."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Progress = Callable[[float, str], Any]


def largest_face(image: np.ndarray, detector: Any) -> np.ndarray | None:
    from engine.faces.detection import largest

    found = largest(detector.detect([image])[0])
    return None if found is None else found[:4]


def to_rgb(bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgr[:, :, ::-1])


def image_tensor(bgr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A whole BGR picture as the (1, 3, H, W) RGB tensor in [0, 1] that paste-back and the baseline draw on."""
    return torch.from_numpy(to_rgb(bgr)).to(device).permute(2, 0, 1)[None].float() / 255


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
