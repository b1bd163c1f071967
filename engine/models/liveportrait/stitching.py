"""Stitching and retargeting MLPs S / R: small networks on flattened keypoints. The official
retargeting_models/stitching_retargeting_module.pth holds three state dicts: `retarget_shoulder`
(stitching), `retarget_mouth` (lip) and `retarget_eye` (eye), saved from DataParallel (`module.` prefix)."""

from __future__ import annotations

import torch
from torch import nn

SHAPES = {  # name: (input, hidden widths, output)
    "stitching": (126, (128, 128, 64), 65),  # source + driving keypoints -> keypoint deltas + (tx, ty)
    "lip": (65, (128, 128, 64), 63),  # source keypoints + source and target lip openness
    "eye": (66, (256, 256, 128, 128, 64), 63),  # source keypoints + two source eye ratios + target
}
FILE_KEYS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


class RetargetingMLP(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        cin, hidden, cout = SHAPES[kind]
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(cin, width), nn.ReLU()]
            cin = width
        layers.append(nn.Linear(cin, cout))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
