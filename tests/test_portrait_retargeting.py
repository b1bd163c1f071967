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
from onnx import TensorProto, helper, numpy_helper

from engine.portrait import PortraitConfig, _driving_keypoints
from engine.portrait_landmarks import LandmarkError, LandmarkModel, eye_open_ratios, lip_open_ratio
from engine.portrait_motion import KeypointInfo, transform_keypoints

FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"


def _layout() -> np.ndarray:
    """203 points in crop units: left eye 0.2 wide, open 0.05; right eye 0.2 wide, open 0.04; mouth 0.3 wide,
    open 0.06 (so openness 0.25, 0.2 and 0.2)."""
    pts = np.full((203, 2), 0.5, np.float32)
    pts[0], pts[12], pts[6], pts[18] = (0.3, 0.4), (0.5, 0.4), (0.4, 0.375), (0.4, 0.425)
    pts[24], pts[36], pts[30], pts[42] = (0.55, 0.4), (0.75, 0.4), (0.65, 0.38), (0.65, 0.42)
    pts[48], pts[66], pts[90], pts[102] = (0.35, 0.7), (0.65, 0.7), (0.5, 0.67), (0.5, 0.73)
    return pts


def _stand_in_model(path: Path) -> Path:
    """'input' (1,3,224,224) -> a constant (1, 406): the input is summed, times zero, plus the layout."""
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["layout", "nothing"], ["landmarks"]),
    ]
    graph = helper.make_graph(
        nodes,
        "landmarks",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [1, 406])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
         numpy_helper.from_array(_layout().reshape(1, 406), "layout")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def test_openness_from_the_landmark_model(tmp_path: Path) -> None:
    import cv2

    model = LandmarkModel(_stand_in_model(tmp_path / "landmark.onnx"))
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
    base = PortraitConfig(FACE, FACE, tmp_path / "o.mp4", stitching=False)
    plain, _ = _driving_keypoints(base, source, source, nets, openness)
    assert torch.allclose(plain, transform_keypoints(source))
    eyes = PortraitConfig(FACE, FACE, tmp_path / "o.mp4", stitching=False, eye_open=0.0)
    x, _ = _driving_keypoints(eyes, source, source, nets, openness)
    assert torch.allclose(x, plain + 0.01)
    both = PortraitConfig(FACE, FACE, tmp_path / "o.mp4", stitching=False, eye_open=0.0, lip_open=0.5)
    x, _ = _driving_keypoints(both, source, source, nets, openness)
    assert torch.allclose(x, plain + 0.03)
    with pytest.raises(ValueError, match=r"outside 0\.\.0\.8"):
        PortraitConfig(FACE, FACE, tmp_path / "o.mp4", eye_open=1.5).validate()
