"""The portrait pipeline on the CPU with random weights in the official layout: video and template drivers,
the PyTorch and ONNX Runtime backends agreeing, and every refusal a message."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.media import VideoWriter, probe_video
from engine.models.liveportrait import write_random_weights
from engine.portrait import PortraitConfig, PortraitError, load_template, run_portrait

ASSETS = Path(__file__).resolve().parent.parent / "assets"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("lp"))


@pytest.fixture(scope="module")
def driving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example face sliding right, 6 frames at 25 fps."""
    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))
    path = tmp_path_factory.mktemp("drive") / "drive.mp4"
    writer = VideoWriter(path, 25, 320, 320)
    for i in range(6):
        writer.write(cv2.warpAffine(face, np.float32([[1, 0, 4 * i], [0, 1, 0]]), (320, 320)))
    writer.close()
    return path


def test_video_driver_writes_the_animated_portrait_and_its_motion(weights: Path, driving: Path, tmp_path: Path) -> None:
    out, template = tmp_path / "out.mp4", tmp_path / "motion.npz"
    config = PortraitConfig(ASSETS / "face.jpg", driving, out, weights=str(weights), max_frames=1,
                            save_template=template)  # fmt: skip
    result = run_portrait(config)
    info = probe_video(out)
    assert (info.width, info.height) == (512, 512) and info.frames == 1  # pasted back into the 512x512 source
    assert result.metrics["frames"] == 1 and result.metrics["backend"] == "torch"
    stages = [s.name for s in result.stages]
    for name in ("load", "source features", "detect", "crop", "motion", "warp + decode", "paste", "encode"):
        assert name in stages
    motion, fps, count = load_template(template)
    assert fps == 25.0 and count == 1 and motion.kp.shape == (1, 21, 3)


def test_onnx_backend_matches_pytorch(weights: Path, tmp_path: Path) -> None:
    from engine.portrait import _Networks
    from engine.portrait_onnx import onnx_networks

    torch_nets = _Networks(weights, torch.device("cpu"), "fp32")
    onnx_nets = onnx_networks(weights, tmp_path / "cache", "onnx-cpu")
    assert set(onnx_nets.providers) == {"appearance", "motion", "warping", "decoder"} and not onnx_nets.warnings
    image = torch.rand(1, 3, 256, 256)
    feature = torch_nets.appearance(image)
    assert torch.allclose(onnx_nets.appearance(image), feature, atol=1e-4)
    a, b = torch_nets.motion(image), onnx_nets.motion(image)
    assert torch.allclose(a.kp, b.kp, atol=1e-4) and torch.allclose(a.yaw, b.yaw, atol=1e-3)
    x_s = a.kp
    frame_torch = torch_nets.render(feature, x_s, x_s + 0.02)
    frame_onnx = onnx_nets.render(feature, x_s, x_s + 0.02)
    assert frame_onnx.shape == (1, 3, 512, 512)
    assert (frame_torch - frame_onnx).abs().max() < 1e-3


def test_refusals_are_messages(weights: Path, driving: Path, tmp_path: Path) -> None:
    source = ASSETS / "face.jpg"
    with pytest.raises(PortraitError, match="no LivePortrait weights"):
        run_portrait(PortraitConfig(source, driving, tmp_path / "o.mp4", weights=str(tmp_path / "none")))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(PortraitError, match="no face found in the source"):
        run_portrait(PortraitConfig(blank, driving, tmp_path / "o.mp4", weights=str(weights)))
    bad = tmp_path / "motion.npz"
    np.savez(bad, kp=np.zeros((3, 21, 3)))
    with pytest.raises(PortraitError, match="not a motion template"):
        load_template(bad)
    with pytest.raises(PortraitError, match="animation region"):
        PortraitConfig(source, driving, tmp_path / "o.mp4", region="hair").validate()
    with pytest.raises(PortraitError, match="driving file not found"):
        PortraitConfig(source, tmp_path / "missing.mp4", tmp_path / "o.mp4").validate()
    assert not (tmp_path / "o.mp4").exists()
