"""The LivePortrait networks: published parameter counts, the official file layout loaded strictly, spectral-norm
folding against torch's own, shapes, the messages for wrong files, and each network's forward against upstream's
written out op by op."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
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


# Upstream's forwards (KwaiVGI/LivePortrait src/modules), written out op by op on the state dicts: independent
# references for every activation, pool, norm and its epsilon, residual, concatenation order and head. Each network
# gets random values in every parameter that starts constant (norm scales and shifts, GRN's gamma and beta) and in
# BatchNorm's running statistics, so that no term is hidden by an identity at initialisation.


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """`model` in eval mode with its constant-initialised parameters and BatchNorm statistics drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() > 1 and bool((parameter == parameter.flatten()[0]).all()):
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal within float rounding of the different order of operations, relative to the reference's scale."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def _conv(state: dict, name: str, x: torch.Tensor, padding: int = 1) -> torch.Tensor:
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    return conv(x, state[f"{name}.weight"], state.get(f"{name}.bias"), padding=padding)


def _batch_norm(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """Eval mode: the running statistics, torch's default epsilon (upstream sets none)."""
    mean, var, weight, bias = (state[f"{name}.{s}"] for s in ("running_mean", "running_var", "weight", "bias"))
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=1e-5)


def _conv_bn_relu(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.relu(_batch_norm(state, f"{name}.norm", _conv(state, f"{name}.conv", x)))


def _upstream_appearance(state: dict, image: torch.Tensor) -> torch.Tensor:
    x = _conv_bn_relu(state, "first", image)
    for i in range(2):  # DownBlock2d: conv, BatchNorm, ReLU, then a 2x2 average pool
        x = F.avg_pool2d(_conv_bn_relu(state, f"down_blocks.{i}", x), 2)
    x = _conv(state, "second", x, padding=0)
    x = x.view(x.shape[0], 32, 16, *x.shape[2:])
    for i in range(6):  # ResBlock3d, pre-activation: BatchNorm, ReLU, conv twice, plus the input
        name = f"resblocks_3d.3dr{i}"
        out = _conv(state, f"{name}.conv1", F.relu(_batch_norm(state, f"{name}.norm1", x)))
        x = x + _conv(state, f"{name}.conv2", F.relu(_batch_norm(state, f"{name}.norm2", out)))
    return x


def test_appearance_extractor_is_upstreams() -> None:
    """A 24x40 image (any multiple of 4 runs): 6x10 positions, 16 deep, 32 channels."""
    torch.manual_seed(11)
    model = _randomised(AppearanceFeatureExtractor(), 1)
    image = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = model(image), _upstream_appearance(model.state_dict(), image)
    assert got.shape == (2, 32, 16, 6, 10) and _close(got, want)


def _channels_first_layer_norm(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    normed = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], state[f"{name}.weight"], state[f"{name}.bias"], 1e-6)
    return normed.permute(0, 3, 1, 2)


def _upstream_motion(state: dict, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """ConvNeXt-V2: a 4x4 stride-4 stem then LayerNorm; LayerNorm then a 2x2 stride-2 conv between stages; blocks of
    a 7x7 depthwise conv, LayerNorm, a 4x wide linear, GELU (erf), GRN, a linear back, plus the input; the spatial
    mean, a LayerNorm and seven linear heads. Every LayerNorm's epsilon is 1e-6."""
    x = image
    for stage, depth in enumerate((3, 3, 9, 3)):
        down = f"detector.downsample_layers.{stage}"
        if stage == 0:
            x = F.conv2d(x, state[f"{down}.0.weight"], state[f"{down}.0.bias"], stride=4)
            x = _channels_first_layer_norm(state, f"{down}.1", x)
        else:
            x = _channels_first_layer_norm(state, f"{down}.0", x)
            x = F.conv2d(x, state[f"{down}.1.weight"], state[f"{down}.1.bias"], stride=2)
        dim = x.shape[1]
        for index in range(depth):
            block = f"detector.stages.{stage}.{index}"
            y = F.conv2d(x, state[f"{block}.dwconv.weight"], state[f"{block}.dwconv.bias"], padding=3, groups=dim)
            norm_weight, norm_bias = state[f"{block}.norm.weight"], state[f"{block}.norm.bias"]
            y = F.layer_norm(y.permute(0, 2, 3, 1), (dim,), norm_weight, norm_bias, 1e-6)
            y = F.gelu(F.linear(y, state[f"{block}.pwconv1.weight"], state[f"{block}.pwconv1.bias"]))
            response = y.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
            y = state[f"{block}.grn.gamma"] * y * (response / (response.mean(-1, keepdim=True) + 1e-6)) + y
            y = y + state[f"{block}.grn.beta"]
            x = x + F.linear(y, state[f"{block}.pwconv2.weight"], state[f"{block}.pwconv2.bias"]).permute(0, 3, 1, 2)
    pooled = F.layer_norm(x.mean(dim=(2, 3)), (768,), state["detector.norm.weight"], state["detector.norm.bias"], 1e-6)
    heads = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
    return {h: F.linear(pooled, state[f"detector.fc_{h}.weight"], state[f"detector.fc_{h}.bias"]) for h in heads}


def test_motion_extractor_is_upstreams() -> None:
    """A 96x64 image: 24x16 after the stem, 3x2 in the last stage (the spatial mean and GRN's sum over positions
    see more than one), each output from its own head."""
    torch.manual_seed(12)
    model = _randomised(MotionExtractor(), 3)
    image = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, want = model(image), _upstream_motion(model.state_dict(), image)
    assert list(got) == list(want)
    for key in want:
        assert _close(got[key], want[key]), key


def test_motion_extractor_norms_use_upstreams_epsilon() -> None:
    """1e-6 in every LayerNorm and in GRN's mean, seen where it matters: activations of size 1e-4 (variance 1e-8)."""
    model = MotionExtractor()
    norms = [m for m in model.modules() if "LayerNorm" in type(m).__name__]
    assert len(norms) == 1 + 1 + 3 + 18  # the final one, the stem's, the three between stages, one per block
    assert all(norm.eps == 1e-6 for norm in norms)
    generator = torch.Generator().manual_seed(5)
    channels_first = model.detector.downsample_layers[1][0]  # over the first stage's 96 channels
    grn = model.detector.stages[0][0].grn  # over its blocks' 384
    with torch.no_grad():
        channels_first.weight.copy_(torch.linspace(0.5, 1.5, 96))
        channels_first.bias.copy_(torch.linspace(-1, 1, 96))
        small = torch.randn(2, 96, 3, 5, generator=generator) * 1e-4
        state = {"n.weight": channels_first.weight, "n.bias": channels_first.bias}
        assert _close(channels_first(small), _channels_first_layer_norm(state, "n", small))
        grn.gamma.fill_(1.0)
        small = torch.randn(2, 3, 5, 384, generator=generator) * 1e-7  # NHWC: summed over 15 positions, 4e-7
        response = small.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
        assert _close(grn(small), small * (response / (response.mean(-1, keepdim=True) + 1e-6)) + small)


def _coordinates(depth: int, height: int, width: int) -> torch.Tensor:
    """(D, H, W, 3) of (x, y, z), each from -1 to 1 with both ends included."""
    z, y, x = torch.meshgrid(
        torch.linspace(-1, 1, depth), torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij"
    )
    return torch.stack([x, y, z], dim=-1)


def _upstream_hourglass(state: dict, name: str, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """DownBlock3d (conv, BatchNorm, ReLU, average pool of height and width), then UpBlock3d (nearest upsampling
    of height and width, conv, BatchNorm, ReLU) each followed by the skip of its size; a last conv, BatchNorm, ReLU."""
    skips = [x]
    for i in range(blocks):
        skips.append(F.avg_pool3d(_conv_bn_relu(state, f"{name}.encoder.down_blocks.{i}", skips[-1]), (1, 2, 2)))
    out = skips.pop()
    for i in range(blocks):
        up = F.interpolate(out, scale_factor=(1, 2, 2), mode="nearest")
        out = torch.cat([_conv_bn_relu(state, f"{name}.decoder.up_blocks.{i}", up), skips.pop()], dim=1)
    return _conv_bn_relu(state, f"{name}.decoder", out)


def _upstream_dense_motion(
    state: dict, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
) -> dict[str, torch.Tensor]:
    feature = F.relu(_batch_norm(state, "norm", _conv(state, "compress", feature, padding=0)))
    b, _, d, h, w = feature.shape
    grid = _coordinates(d, h, w)

    def gaussian(kp: torch.Tensor) -> torch.Tensor:  # (B, D, H, W), variance 0.01
        return torch.exp(-0.5 * (grid - kp[:, None, None, None, :]).pow(2).sum(-1) / 0.01)

    motions = [grid.expand(b, d, h, w, 3)]  # the background: no motion
    inputs = [torch.zeros(b, 1, d, h, w), F.grid_sample(feature, motions[0], align_corners=False)]
    for k in range(kp_driving.shape[1]):
        motions.append(grid - kp_driving[:, k, None, None, None, :] + kp_source[:, k, None, None, None, :])
        heat = (gaussian(kp_driving[:, k]) - gaussian(kp_source[:, k]))[:, None]
        inputs += [heat, F.grid_sample(feature, motions[-1], align_corners=False)]
    prediction = _upstream_hourglass(state, "hourglass", torch.cat(inputs, dim=1), blocks=5)
    mask = F.softmax(_conv(state, "mask", prediction, padding=3), dim=1)
    deformation = (mask[..., None] * torch.stack(motions, dim=1)).sum(dim=1)
    flat = prediction.reshape(b, -1, h, w)  # channel-major: channel c at depth z is c * D + z
    occlusion = torch.sigmoid(_conv(state, "occlusion", flat, padding=3))
    return {"mask": mask, "deformation": deformation, "occlusion_map": occlusion}


def test_dense_motion_is_upstreams() -> None:
    """A 3-deep 32x32 volume (the smallest the five pools allow, depth free), keypoints inside and near the grid
    and moved apart, so heatmaps, every candidate motion, the hourglass, mask and occlusion all count."""
    from engine.models.liveportrait.warping import DenseMotionNetwork

    torch.manual_seed(13)
    model = _randomised(DenseMotionNetwork(depth=3), 5)
    generator = torch.Generator().manual_seed(6)
    feature = torch.randn(1, 32, 3, 32, 32, generator=generator)
    kp_source = torch.rand(1, 21, 3, generator=generator) * 1.6 - 0.8
    kp_driving = kp_source + 0.15 * torch.randn(1, 21, 3, generator=generator)
    with torch.no_grad():
        got = model(feature, kp_driving, kp_source)
        want = _upstream_dense_motion(model.state_dict(), feature, kp_driving, kp_source)
    assert list(got) == ["mask", "deformation", "occlusion_map"]
    for key in want:
        assert _close(got[key], want[key]), key


class _FixedMotion(nn.Module):
    """Stands in for the dense-motion network: a given flow and occlusion, and the arguments it was called with."""

    def __init__(self, deformation: torch.Tensor, occlusion: torch.Tensor) -> None:
        super().__init__()
        self.outputs = {"mask": None, "deformation": deformation, "occlusion_map": occlusion}
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, *args: torch.Tensor) -> dict:
        self.calls.append(args)
        return self.outputs


def test_warping_applies_the_flow_then_upstreams_layers_and_occlusion() -> None:
    """The volume sampled at the flow (align_corners False), flattened channel-major to 512 channels, a 3x3 conv,
    BatchNorm, LeakyReLU 0.01, a 1x1 conv, times the occlusion map; the dense motion gets driving before source."""
    torch.manual_seed(14)
    model = _randomised(WarpingNetwork(), 7)
    generator = torch.Generator().manual_seed(8)
    deformation = torch.rand(1, 16, 8, 8, 3, generator=generator) * 2.2 - 1.1
    occlusion = torch.rand(1, 1, 8, 8, generator=generator)
    model.dense_motion_network = _FixedMotion(deformation, occlusion)
    feature = torch.randn(1, 32, 16, 8, 8, generator=generator)
    kp_driving, kp_source = torch.rand(1, 21, 3), torch.rand(1, 21, 3)
    state = model.state_dict()
    with torch.no_grad():
        got = model(feature, kp_driving=kp_driving, kp_source=kp_source)
        warped = F.grid_sample(feature, deformation, align_corners=False).reshape(1, 512, 8, 8)
        third = F.leaky_relu(_batch_norm(state, "third.norm", _conv(state, "third.conv", warped)), 0.01)
        want = _conv(state, "fourth", third, padding=0) * occlusion
    (call,) = model.dense_motion_network.calls
    assert call[0] is feature and call[1] is kp_driving and call[2] is kp_source
    assert _close(got["out"], want)
    assert got["deformation"] is deformation and got["occlusion_map"] is occlusion


def _upstream_spade(state: dict, name: str, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Instance norm (no affine, epsilon 1e-5) scaled by 1 + gamma and shifted by beta, both from the segmentation
    map resized to x's size by nearest neighbour through a shared 3x3 conv and ReLU."""
    hidden = F.relu(_conv(state, f"{name}.mlp_shared.0", F.interpolate(seg, size=x.shape[2:], mode="nearest")))
    gamma, beta = _conv(state, f"{name}.mlp_gamma", hidden), _conv(state, f"{name}.mlp_beta", hidden)
    return F.instance_norm(x, eps=1e-5) * (1 + gamma) + beta


def _upstream_spade_block(state: dict, name: str, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    shortcut = x
    if f"{name}.conv_s.weight" in state:  # widths differ: SPADE then a 1x1 conv without bias
        shortcut = F.conv2d(_upstream_spade(state, f"{name}.norm_s", x, seg), state[f"{name}.conv_s.weight"])
    dx = _conv(state, f"{name}.conv_0", F.leaky_relu(_upstream_spade(state, f"{name}.norm_0", x, seg), 0.2))
    dx = _conv(state, f"{name}.conv_1", F.leaky_relu(_upstream_spade(state, f"{name}.norm_1", dx, seg), 0.2))
    return shortcut + dx


def _upstream_decoder(state: dict, feature: torch.Tensor) -> torch.Tensor:
    x = _conv(state, "fc", feature)
    for i in range(6):
        x = _upstream_spade_block(state, f"G_middle_{i}", x, feature)
    x = _upstream_spade_block(state, "up_0", F.interpolate(x, scale_factor=2, mode="nearest"), feature)
    x = _upstream_spade_block(state, "up_1", F.interpolate(x, scale_factor=2, mode="nearest"), feature)
    return torch.sigmoid(F.pixel_shuffle(_conv(state, "conv_img.0", F.leaky_relu(x, 0.2)), 2))


def test_spade_decoder_is_upstreams() -> None:
    """4x6 features: two nearest upsamplings and the pixel shuffle make a 32x48 image; the segmentation map is
    resized to each block's size."""
    torch.manual_seed(15)
    model = _randomised(SPADEDecoder(), 9)
    feature = torch.randn(1, 256, 4, 6, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        got, want = model(feature), _upstream_decoder(model.state_dict(), feature)
    assert got.shape == (1, 3, 32, 48) and _close(got, want)
    assert float(want.std()) > 0.05  # not saturated: the last activation and conv are seen


def test_retargeting_mlps_are_linear_relu_stacks() -> None:
    """A ReLU after every hidden linear layer and none after the last, as upstream's StitchingRetargetingNetwork."""
    for kind, widths in (("stitching", (126, 128, 128, 64, 65)), ("lip", (65, 128, 128, 64, 63)),
                         ("eye", (66, 256, 256, 128, 128, 64, 63))):  # fmt: skip
        torch.manual_seed(16)
        model = RetargetingMLP(kind).eval()
        state = model.state_dict()
        x = torch.randn(3, widths[0])
        want = x
        for i in range(len(widths) - 1):
            want = F.linear(want, state[f"mlp.{2 * i}.weight"], state[f"mlp.{2 * i}.bias"])
            want = F.relu(want) if i < len(widths) - 2 else want
        with torch.no_grad():
            assert _close(model(x), want), kind
        assert float(want.min()) < 0  # the last layer has no ReLU


def test_loaded_networks_are_in_eval_mode_in_the_asked_dtype_and_retargeting_in_fp32(weights: Path) -> None:
    """Eval mode (BatchNorm's running statistics, as upstream's inference); the retargeting MLPs stay fp32 whatever
    the base networks' precision, as the keypoint maths they belong to does."""
    nets = load_liveportrait(weights, dtype=torch.bfloat16)
    for name in ("appearance", "motion", "warping", "decoder"):
        net = getattr(nets, name)
        assert not any(m.training for m in net.modules()), name
        assert {p.dtype for p in net.parameters()} == {torch.bfloat16}, name
    for kind, mlp in nets.retargeting.items():
        assert not mlp.training and {p.dtype for p in mlp.parameters()} == {torch.float32}, kind
