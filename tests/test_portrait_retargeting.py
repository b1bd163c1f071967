"""Eye and lip retargeting: the optional landmark model (a stand-in ONNX with known landmarks), openness
ratios, and the retargeting deltas in the driving keypoints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
from tiny_onnx import landmark_model

from engine.portrait.config import PortraitConfig
from engine.portrait.landmarks import LandmarkError, LandmarkModel, eye_open_ratios, lip_open_ratio
from engine.portrait.motion import KeypointInfo, transform_keypoints
from engine.portrait.pipeline import _driving_keypoints

FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"


def test_openness_from_the_landmark_model(tmp_path: Path) -> None:
    import cv2

    model = LandmarkModel(landmark_model(tmp_path / "landmark.onnx"))
    rgb = cv2.imread(str(FACE))[:, :, ::-1].copy()
    points = model(rgb, np.array([172.0, 60.0, 280.0, 190.0]))
    assert points.shape == (203, 2)
    assert 150 < points[:, 0].mean() < 300  # mapped back to the image, around the face
    assert eye_open_ratios(points) == pytest.approx([0.25, 0.2], abs=1e-4)  # ratios survive the mapping
    assert lip_open_ratio(points) == pytest.approx(0.2, abs=1e-4)
    with pytest.raises(LandmarkError, match="no landmark model"):
        LandmarkModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(LandmarkError, match="not a usable ONNX"):
        LandmarkModel(tmp_path / "junk.onnx")


def _mlp(cin: int, bias: float) -> nn.Module:
    layer = nn.Linear(cin, 63)
    nn.init.zeros_(layer.weight)
    nn.init.constant_(layer.bias, bias)
    return layer


def test_retargeting_adds_the_networks_deltas(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    source = KeypointInfo(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1, 3),
                          torch.zeros(1, 21, 3), torch.ones(1), torch.rand(1, 21, 3, generator=g) - 0.5)  # fmt: skip
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01), "lip": _mlp(65, 0.02)})
    openness = (np.array([0.3, 0.3], np.float32), 0.1)
    base = PortraitConfig(FACE, FACE, stitching=False)
    plain, _ = _driving_keypoints(base, source, source, nets, openness)
    assert torch.allclose(plain, transform_keypoints(source))
    eyes = PortraitConfig(FACE, FACE, stitching=False, eye_open=0.0)
    x, _ = _driving_keypoints(eyes, source, source, nets, openness)
    assert torch.allclose(x, plain + 0.01)
    both = PortraitConfig(FACE, FACE, stitching=False, eye_open=0.0, lip_open=0.5)
    x, _ = _driving_keypoints(both, source, source, nets, openness)
    assert torch.allclose(x, plain + 0.03)
    with pytest.raises(ValueError, match=r"outside 0\.\.0\.8"):
        PortraitConfig(FACE, FACE, eye_open=1.5).validate()


def test_lip_normalisation_closes_an_open_source_mouth_before_relative_motion(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    source = KeypointInfo(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1, 3),
                          torch.zeros(1, 21, 3), torch.ones(1), torch.rand(1, 21, 3, generator=g) - 0.5)  # fmt: skip
    clip = KeypointInfo(*(torch.cat([getattr(source, f)] * 2) for f in source.__dataclass_fields__))  # 2 frames
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01), "lip": _mlp(65, 0.02)})
    still = transform_keypoints(source).expand(2, 21, 3)

    def driven(openness: tuple, **options) -> torch.Tensor:
        config = PortraitConfig(FACE, FACE, stitching=False, **options)
        return _driving_keypoints(config, source, clip, nets, openness)[0]

    eyes = np.array([0.3, 0.3], np.float32)
    assert torch.allclose(driven((eyes, 0.1)), still + 0.02)  # lips open 0.1 >= 0.03: closed first
    assert torch.allclose(driven((eyes, 0.01)), still)  # already (nearly) closed: untouched
    assert torch.allclose(driven((eyes, 0.1), normalize_lips=False), still)
    assert torch.allclose(driven((eyes, 0.1), relative=False), still)  # upstream: relative motion only
    assert torch.allclose(driven((eyes, 0.1), lip_open=0.4), still + 0.02)  # explicit lip retargeting instead
    assert torch.allclose(driven(None), still)  # no landmark model: nothing to normalise with
