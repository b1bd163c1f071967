"""The LivePortrait networks: published parameter counts, the official file layout loaded strictly, spectral-norm
folding against torch's own, shapes, and the messages for wrong files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.models.checkpoints import CheckpointError, load_strict
from engine.models.liveportrait import (
    AppearanceFeatureExtractor,
    MotionExtractor,
    RetargetingMLP,
    SPADEDecoder,
    WarpingNetwork,
    bins_to_degrees,
    fold_spectral_norm,
    load_base_model,
    load_liveportrait,
    load_retargeting,
    write_random_weights,
)
from engine.models.liveportrait.blocks import coordinate_grid

# Parameters of the official networks (LivePortrait's speed table: 0.84 M, 28.12 M, 45.53 M, 55.37 M, 0.23 M).
COUNTS = {
    AppearanceFeatureExtractor: 836_224,
    MotionExtractor: 28_118_728,
    WarpingNetwork: 45_529_829,
    SPADEDecoder: 55_365_388,
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("liveportrait"))


def test_parameter_counts_match_the_published_networks() -> None:
    for cls, count in COUNTS.items():
        assert sum(p.numel() for p in cls().parameters()) == count, cls.__name__
    sizes = {k: sum(p.numel() for p in RetargetingMLP(k).parameters()) for k in ("stitching", "lip", "eye")}
    assert sizes == {"stitching": 45_249, "lip": 37_311, "eye": 144_703}


def test_files_have_the_official_layout(weights: Path) -> None:
    appearance = torch.load(weights / "base_models/appearance_feature_extractor.pth", weights_only=True)
    assert len(appearance) == 107 and "resblocks_3d.3dr5.norm2.num_batches_tracked" in appearance
    motion = torch.load(weights / "base_models/motion_extractor.pth", weights_only=True)
    assert len(motion) == 212 and all(k.startswith("detector.") for k in motion)
    assert motion["detector.stages.2.8.grn.gamma"].shape == (1, 1, 1, 1536)
    warping = torch.load(weights / "base_models/warping_module.pth", weights_only=True)
    assert len(warping) == 97 and warping["dense_motion_network.occlusion.weight"].shape == (1, 2272, 7, 7)
    assert warping["dense_motion_network.hourglass.decoder.conv.weight"].shape == (142, 142, 3, 3, 3)
    decoder = torch.load(weights / "base_models/spade_generator.pth", weights_only=True)
    assert len(decoder) == 182  # 18 spectral-normalised convs stored as weight_orig, weight_u, weight_v
    assert decoder["up_0.conv_s.weight_orig"].shape == (256, 512, 1, 1) and "up_0.conv_s.bias" not in decoder
    assert decoder["G_middle_0.conv_0.weight_v"].shape == (4608,) and "G_middle_0.conv_0.weight" not in decoder
    parts = torch.load(weights / "retargeting_models/stitching_retargeting_module.pth", weights_only=True)
    assert set(parts) == {"retarget_shoulder", "retarget_mouth", "retarget_eye"}
    assert parts["retarget_eye"]["module.mlp.10.weight"].shape == (63, 64)


def test_spectral_norm_folding_matches_torch_in_eval_mode() -> None:
    torch.manual_seed(0)
    conv = nn.utils.spectral_norm(nn.Conv2d(8, 6, 3, padding=1))
    x = torch.randn(2, 8, 5, 5)
    conv(x)  # one training-mode pass runs a power iteration, as training left u and v
    conv.eval()
    state = {f"conv.{k}": v for k, v in conv.state_dict().items()}
    assert {"conv.weight_orig", "conv.weight_u", "conv.weight_v"} <= set(state)
    folded = fold_spectral_norm(state)
    plain = nn.Conv2d(8, 6, 3, padding=1)
    plain.load_state_dict({k.removeprefix("conv."): v for k, v in folded.items()})
    with torch.no_grad():
        assert torch.allclose(plain(x), conv(x), atol=1e-6)
    # a half-precision file: divided in fp32 and kept so, as upstream's fp32 parameters are (it was rounded back)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    weight = fold_spectral_norm(half)["conv.weight"]
    w, u, v = (half[f"conv.weight_{s}"].float() for s in ("orig", "u", "v"))
    assert weight.dtype == torch.float32 and torch.equal(weight, w / torch.dot(u, w.reshape(6, -1) @ v))
    del state["conv.weight_u"]
    with pytest.raises(CheckpointError, match="weight_u"):
        fold_spectral_norm(state)


def test_loaded_networks_run_with_the_expected_shapes(weights: Path) -> None:
    nets = load_liveportrait(weights)
    image = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        feature = nets.appearance(image)
        motion = nets.motion(image)
        kp = motion["kp"].view(1, 21, 3)
        warped = nets.warping(feature, kp_driving=kp + 0.02, kp_source=kp)
        frame = nets.decoder(warped["out"])
    assert feature.shape == (1, 32, 16, 64, 64)
    assert {k: tuple(v.shape) for k, v in motion.items()} == {
        "pitch": (1, 66), "yaw": (1, 66), "roll": (1, 66), "t": (1, 3), "exp": (1, 63), "scale": (1, 1), "kp": (1, 63),
    }  # fmt: skip
    assert warped["out"].shape == (1, 256, 64, 64) and warped["occlusion_map"].shape == (1, 1, 64, 64)
    assert warped["deformation"].shape == (1, 16, 64, 64, 3)
    assert frame.shape == (1, 3, 512, 512) and float(frame.min()) >= 0 and float(frame.max()) <= 1
    assert set(nets.retargeting) == {"stitching", "lip", "eye"}
    assert nets.retargeting["stitching"](torch.zeros(1, 126)).shape == (1, 65)


def test_no_motion_means_the_identity_flow() -> None:
    """When driving and source keypoints coincide, every candidate motion is the identity grid, so the mixed
    flow is the identity whatever the network predicts."""
    net = WarpingNetwork().eval()
    feature = torch.rand(1, 32, 16, 64, 64)
    kp = torch.rand(1, 21, 3) * 2 - 1
    with torch.inference_mode():
        dense = net.dense_motion_network(feature, kp, kp)
    assert torch.allclose(dense["deformation"][0], coordinate_grid(16, 64, 64, like=kp), atol=1e-5)
    assert torch.allclose(dense["mask"].sum(1), torch.ones(1, 16, 64, 64), atol=1e-5)


def test_candidate_motions_round_as_upstreams() -> None:
    """Each keypoint's candidate motion is upstream's (identity - driving) + source, in that order: the other
    order, identity + (source - driving), moved the warped features by up to 2.5e-5 (float rounding)."""
    net = WarpingNetwork().eval()
    feature = torch.rand(2, 4, 16, 64, 64)
    kp_driving, kp_source = torch.rand(2, 21, 3) * 2 - 1, torch.rand(2, 21, 3) * 2 - 1
    motions = net.dense_motion_network.sparse_motions(feature, kp_driving, kp_source)
    identity = coordinate_grid(16, 64, 64, like=kp_source)[None, None]
    upstream = identity - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
    assert torch.equal(motions[:, 1:], upstream) and torch.equal(motions[:, :1], identity.expand(2, 1, 16, 64, 64, 3))


def test_pose_bins_to_degrees() -> None:
    logits = torch.full((3, 66), -1e4)
    logits[0] = 0.0  # uniform: the middle, 0 degrees
    logits[1, 0] = 0.0  # all on the first bin
    logits[2, 65] = 0.0  # all on the last
    assert torch.allclose(bins_to_degrees(logits), torch.tensor([0.0, -97.5, 97.5]), atol=1e-4)


def test_wrong_files_are_named(weights: Path, tmp_path: Path) -> None:
    swapped = tmp_path / "base_models"
    swapped.mkdir()
    (swapped / "appearance_feature_extractor.pth").write_bytes(
        (weights / "base_models/motion_extractor.pth").read_bytes()
    )
    with pytest.raises(CheckpointError, match="motion extractor"):
        load_base_model("appearance", tmp_path)
    (tmp_path / "retargeting_models").mkdir()
    torch.save({"retarget_shoulder": {}}, tmp_path / "retargeting_models/stitching_retargeting_module.pth")
    with pytest.raises(CheckpointError, match="missing part"):
        load_retargeting(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_base_model("warping", tmp_path)
    torch.save(torch.zeros(3), tmp_path / "retargeting_models/stitching_retargeting_module.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict of state dicts"):
        load_retargeting(tmp_path)
    parts = {k: {"w": torch.zeros(1)} for k in ("retarget_shoulder", "retarget_mouth", "retarget_eye")}
    parts["retarget_mouth"] = {"w": torch.zeros(1), "step": 3}
    torch.save(parts, tmp_path / "retargeting_models/stitching_retargeting_module.pth")
    with pytest.raises(CheckpointError, match="part 'retarget_mouth' is not a state dict of tensors"):
        load_retargeting(tmp_path)


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("resblocks_3d.0.weight", "appearance feature extractor"),
        ("dense_motion_network.0.weight", "warping module"),
        ("G_middle_0.0.weight", "SPADE generator"),
        ("detector.stages.0.weight", "motion extractor"),
    ],
)
def test_each_liveportrait_network_is_recognised_in_a_wrong_file(key: str, named: str) -> None:
    """A file of one LivePortrait network given for another names the network it holds."""
    with pytest.raises(CheckpointError, match=f"different network, LivePortrait's {named}"):
        load_strict(nn.Linear(2, 2), {key: torch.zeros(1)}, "a linear layer")
