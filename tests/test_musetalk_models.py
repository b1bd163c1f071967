"""MuseTalk's networks and files: BiSeNet face parsing, and the UNet, VAE and Whisper encoder loaded from upstream's
models/ layout into diffusers' and transformers' classes.

Weights are random, in small configs of the same classes, written as upstream ships them (raw state dicts, the
VAE's 2022 attention names, a legacy-pickle BiSeNet file); the real configs are checked on the meta device. No test
reaches the network: the Hub's cache is a temporary folder and HF_HUB_OFFLINE is on.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from engine.core.errors import InputError, SetupError
from engine.core.settings import Settings, load_settings
from engine.lipsync.musetalk import random_weights
from engine.lipsync.musetalk.random_weights import random_state, write_random_weights
from engine.lipsync.musetalk.weights import (
    UNET_CONFIG,
    UNET_PARAMETERS,
    UNET_TENSORS,
    VAE_CONFIG,
    VAE_PARAMETERS,
    VAE_TENSORS,
    WHISPER_ENCODER_CONFIG,
    WHISPER_ENCODER_PARAMETERS,
    WHISPER_ENCODER_TENSORS,
    convert_legacy_vae_names,
    load_networks,
    load_unet,
    load_vae,
    load_whisper_encoder,
    locate,
    meta_unet,
    meta_vae,
    meta_whisper_encoder,
    parts,
    require,
)
from engine.models.bisenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    N_PARAMETERS,
    N_STATE_ENTRIES,
    BiSeNet,
    load_bisenet,
    normalise,
    parsing_input,
    random_bisenet_state,
)
from engine.models.checkpoints import CheckpointError

# Small configs of the published classes: the same block types and layout, a few thousand times fewer parameters.
TINY_UNET = {
    **UNET_CONFIG,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 2,
    "cross_attention_dim": 16,
    "sample_size": 8,
}
TINY_VAE = {
    **VAE_CONFIG,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 16,
}
TINY_WHISPER = {
    "architectures": ["WhisperForConditionalGeneration"],
    "model_type": "whisper",
    "d_model": 16,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
    "num_mel_bins": 8,
    "max_source_positions": 20,
    "max_target_positions": 8,
    "vocab_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
}
PREPROCESSOR = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000}
# sha256 of "key (shape)" lines of upstream's BiSeNet (musetalk/utils/face_parsing/model.py) state dict, in order,
# as printed by `f"{k} {tuple(v.shape)}\n"`: taken from upstream's class with the same PyTorch.
BISENET_LAYOUT_SHA256 = "e32c97ee2fd22e1c973ae301d2008b8a69f32fd88170ab718e55ba9caa7d3748"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 3400000000\n"
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Google Drive</body></html>"


def _legacy_vae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers 0.4's names for the mid-block attention, as sd-vae-ft-mse's .bin has them."""
    old = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for key, value in state.items():
        for new_name, old_name in old.items():
            if ".mid_block.attentions." in key:
                key = key.replace(new_name, old_name)
        out[key] = value
    return out


def write_models(root: Path, version: str = "v15", legacy_vae: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Random tiny weights in upstream's models/ layout; returns the state dicts written (by part)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    unet_dir, unet_name = ("musetalkV15", "unet.pth") if version == "v15" else ("musetalk", "pytorch_model.bin")
    for sub in (unet_dir, "sd-vae", "whisper", "face-parse-bisent"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    unet = random_state(UNet2DConditionModel.from_config(TINY_UNET), 1)
    torch.save(unet, root / unet_dir / unet_name)
    (root / unet_dir / "musetalk.json").write_text(json.dumps(TINY_UNET))
    vae = random_state(AutoencoderKL.from_config(TINY_VAE), 2)
    torch.save(_legacy_vae(vae) if legacy_vae else vae, root / "sd-vae" / "diffusion_pytorch_model.bin")
    (root / "sd-vae" / "config.json").write_text(json.dumps(TINY_VAE))
    whisper = WhisperForConditionalGeneration(WhisperConfig.from_dict(TINY_WHISPER)).state_dict()
    whisper = {k: v.clone() for k, v in whisper.items() if k != "proj_out.weight"}  # tied to the token embedding
    torch.save(whisper, root / "whisper" / "pytorch_model.bin")
    (root / "whisper" / "config.json").write_text(json.dumps(TINY_WHISPER))
    (root / "whisper" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    bisenet = random_bisenet_state(4)
    torch.save(bisenet, root / "face-parse-bisent" / "79999_iter.pth", _use_new_zipfile_serialization=False)
    return {"unet": unet, "vae": vae, "whisper": whisper, "face_parse": bisenet}


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # nothing here may reach the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def settings(tmp_path: Path, offline_hub: Path) -> Settings:
    return Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("musetalk") / "models"
    return root, write_models(root)


def _cache_snapshot(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """The Hub's cache layout with one snapshot of `repo` holding `files` (repo path -> local file to copy)."""
    revision = "1" * 40
    base = cache / f"models--{repo.replace('/', '--')}"
    for name, source in files.items():
        target = base / "snapshots" / revision / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(revision)


# --- the real networks, on the meta device ---------------------------------------------------------------------


def test_real_unet_config_has_the_published_size() -> None:
    unet = meta_unet()
    state = unet.state_dict()
    assert sum(p.numel() for p in unet.parameters()) == UNET_PARAMETERS == 849_947_844
    assert len(state) == UNET_TENSORS == 686
    shapes = {
        "conv_in.weight": (320, 8, 3, 3),  # masked + reference latents
        "conv_out.weight": (4, 320, 3, 3),
        "time_embedding.linear_1.weight": (1280, 320),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 384),  # whisper's width
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight": (1280, 384),
        "up_blocks.3.attentions.2.proj_out.weight": (320, 320, 1, 1),  # 1x1 conv projections, as SD 1.x
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    heads = {m.heads for name, m in unet.named_modules() if name.endswith((".attn1", ".attn2"))}
    assert heads == {8}  # attention_head_dim 8 is SD-1.x's name for 8 heads
    assert not any(k.startswith(("add_embedding", "class_embedding")) for k in state)


def test_real_vae_and_whisper_encoder_configs() -> None:
    vae = meta_vae()
    state = vae.state_dict()
    assert len(state) == VAE_TENSORS == 248
    assert sum(p.numel() for p in vae.parameters()) == VAE_PARAMETERS == 83_653_863
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    attention = sorted(k.split("attentions.0.")[1] for k in state if k.startswith("decoder.mid_block.attentions.0."))
    assert attention == sorted(f"{n}.{p}" for n in ("group_norm", "to_q", "to_k", "to_v", "to_out.0")
                               for p in ("weight", "bias"))  # fmt: skip
    assert tuple(state["quant_conv.weight"].shape) == (8, 8, 1, 1)
    assert tuple(state["decoder.conv_out.weight"].shape) == (3, 128, 3, 3)

    encoder = meta_whisper_encoder()
    state = encoder.state_dict()
    assert len(state) == WHISPER_ENCODER_TENSORS == 67
    assert sum(p.numel() for p in encoder.parameters()) == WHISPER_ENCODER_PARAMETERS == 8_208_384
    assert tuple(state["conv1.weight"].shape) == (384, 80, 3)
    assert tuple(state["embed_positions.weight"].shape) == (1500, 384)  # 30 s at 50 rows per second
    assert tuple(state["layers.3.fc1.weight"].shape) == (1536, 384)
    assert encoder.config.d_model == WHISPER_ENCODER_CONFIG["d_model"]


def test_real_size_random_weights_are_the_real_networks(tmp_path: Path, monkeypatch) -> None:
    """What the GPU benchmark runs without the Hub: the official layout at the published sizes (shapes only here;
    the values would be 3.4 GB of UNet)."""
    monkeypatch.setattr(random_weights, "random_state", lambda model, seed, scale=0.1: {
        k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()})  # fmt: skip
    root = write_random_weights(tmp_path / "models", real_size=True)

    def read(name: str) -> dict[str, torch.Tensor]:
        return torch.load(root / name, map_location="meta", weights_only=True)

    unet, vae, whisper = read("musetalkV15/unet.pth"), read("sd-vae/diffusion_pytorch_model.bin"), read(
        "whisper/pytorch_model.bin")  # fmt: skip
    assert (len(unet), sum(t.numel() for t in unet.values())) == (UNET_TENSORS, UNET_PARAMETERS)
    assert (len(vae), sum(t.numel() for t in vae.values())) == (VAE_TENSORS, VAE_PARAMETERS)
    encoder = [t for k, t in whisper.items() if k.startswith("model.encoder.")]
    assert (len(encoder), sum(t.numel() for t in encoder)) == (WHISPER_ENCODER_TENSORS, WHISPER_ENCODER_PARAMETERS)
    assert json.loads((root / "musetalkV15/musetalk.json").read_text()) == json.loads(json.dumps(UNET_CONFIG))
    assert json.loads((root / "sd-vae/config.json").read_text()) == json.loads(json.dumps(VAE_CONFIG))


# --- BiSeNet ---------------------------------------------------------------------------------------------------


def test_bisenet_has_upstreams_layout() -> None:
    state = BiSeNet().state_dict()
    lines = "".join(f"{k} {tuple(v.shape)}\n" for k, v in state.items())
    assert hashlib.sha256(lines.encode()).hexdigest() == BISENET_LAYOUT_SHA256
    assert len(state) == N_STATE_ENTRIES == 191
    assert sum(p.numel() for p in BiSeNet().parameters()) == N_PARAMETERS == 13_300_416
    assert tuple(state["conv_out.conv_out.weight"].shape) == (19, 256, 1, 1)
    assert tuple(state["conv_out16.conv_out.weight"].shape) == (19, 64, 1, 1)
    assert tuple(state["cp.resnet.layer4.1.conv2.weight"].shape) == (512, 512, 3, 3)
    assert sum(k.endswith("num_batches_tracked") for k in state) == 31


def test_bisenet_legacy_pickle_loads_strictly_and_runs_the_main_head_only(models) -> None:
    root, written = models
    model = load_bisenet(root / "face-parse-bisent" / "79999_iter.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(value, written["face_parse"][key]), key
    calls = []
    for head in (model.conv_out16, model.conv_out32):
        head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 19, 64, 96) and torch.isfinite(logits).all()
    assert not calls  # the auxiliary heads are loaded but never run


def test_bisenet_without_batchnorm_counters_and_with_a_missing_tensor(tmp_path: Path) -> None:
    state = random_bisenet_state(1)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # PyTorch < 0.4.1 saves
    torch.save(old, tmp_path / "old.pth")
    model = load_bisenet(tmp_path / "old.pth")
    assert torch.equal(model.cp.resnet.conv1.weight, state["cp.resnet.conv1.weight"])
    damaged = {k: v for k, v in state.items() if k != "conv_out16.conv.bn.running_var"}
    torch.save(damaged, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=r"Missing keys \(1\): conv_out16.conv.bn.running_var"):
        load_bisenet(tmp_path / "damaged.pth")


def test_bisenet_loads_in_eval_mode_strips_a_wrapper_prefix_and_refuses_a_file_missing_one_counter(
    tmp_path: Path,
) -> None:
    """Eval mode (train-mode BatchNorm would use each crop's own statistics: other masks); a DataParallel save's
    'module.' prefix is stripped; and counters are filled in only when all are absent (an old PyTorch's file), so a
    file missing just one is damaged and refused by name."""
    state = random_bisenet_state(2)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "wrapped.pth")
    model = load_bisenet(tmp_path / "wrapped.pth")
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(model.conv_out.conv_out.weight, state["conv_out.conv_out.weight"])
    one_short = {k: v for k, v in state.items() if k != "cp.arm16.bn_atten.num_batches_tracked"}
    torch.save(one_short, tmp_path / "one_short.pth")
    with pytest.raises(CheckpointError, match=r"Missing keys \(1\): cp\.arm16\.bn_atten\.num_batches_tracked"):
        load_bisenet(tmp_path / "one_short.pth")


def test_parsing_input_averages_when_it_shrinks() -> None:
    """PIL's bilinear filter averages over the source pixels when shrinking (upstream's resize): one-pixel stripes of
    0 and 255 shrunk to a quarter are mid-grey, where sampling (nearest, or OpenCV's bilinear) would keep 0 or 255."""
    import numpy as np

    stripes = np.zeros((2048, 2048, 3), dtype=np.uint8)
    stripes[:, 1::2] = 255
    grey = parsing_input(stripes)[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to [0, 1]
    assert torch.allclose(grey[8:-8, 8:-8], torch.full_like(grey[8:-8, 8:-8], 0.5), atol=0.02)


def test_parsing_input_is_upstreams_preprocessing() -> None:
    import numpy as np

    image = np.full((40, 30, 3), (255, 128, 0), dtype=np.uint8)
    x = parsing_input(image)
    assert x.shape == (1, 3, 512, 512) and x.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225])
    assert torch.allclose(x[0, :, 100, 200], expected, atol=1e-6)
    batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2)
    assert torch.allclose(normalise(batch)[:, :, 5, 5], expected.expand(2, 3), atol=1e-6)
    with pytest.raises(ValueError, match="uint8 RGB"):
        parsing_input(image[..., :2])


def _upstream_bisenet_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Upstream's BiSeNet forward (zllrunning/face-parsing.PyTorch model.py, as MuseTalk ships it), written out op by
    op on the state dict in eval mode: ResNet-18, the context path (global context added to arm32, nearest upsampling,
    arm16 plus the upsampled 1/32 map), the fusion of the 1/8 backbone map with the 1/8 context map (its attention
    added to itself) and the main head, upsampled bilinearly with align_corners. The reference for every op."""
    F = torch.nn.functional

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False, eps=1e-5)  # fmt: skip

    def conv(h: torch.Tensor, name: str, stride: int = 1, padding: int = 0) -> torch.Tensor:
        return F.conv2d(h, state[f"{name}.weight"], stride=stride, padding=padding)

    def conv_bn_relu(h: torch.Tensor, name: str, padding: int = 1) -> torch.Tensor:
        return F.relu(bn(conv(h, f"{name}.conv", padding=padding), f"{name}.bn"))

    def block(h: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        out = F.relu(bn(conv(h, f"{name}.conv1", stride, 1), f"{name}.bn1"))
        out = bn(conv(out, f"{name}.conv2", 1, 1), f"{name}.bn2")
        shortcut = h
        if f"{name}.downsample.0.weight" in state:
            shortcut = bn(conv(h, f"{name}.downsample.0", stride), f"{name}.downsample.1")
        return F.relu(out + shortcut)

    def layer(h: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        return block(block(h, f"{name}.0", stride), f"{name}.1", 1)

    def pooled(h: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(h, h.size()[2:])

    def arm(h: torch.Tensor, name: str) -> torch.Tensor:
        feat = conv_bn_relu(h, f"{name}.conv")
        return feat * torch.sigmoid(bn(conv(pooled(feat), f"{name}.conv_atten"), f"{name}.bn_atten"))

    r = "cp.resnet"
    h = F.max_pool2d(F.relu(bn(conv(x, f"{r}.conv1", 2, 3), f"{r}.bn1")), 3, 2, 1)
    feat8 = layer(layer(h, f"{r}.layer1", 1), f"{r}.layer2", 2)
    feat16 = layer(feat8, f"{r}.layer3", 2)
    feat32 = layer(feat16, f"{r}.layer4", 2)
    context = F.interpolate(conv_bn_relu(pooled(feat32), "cp.conv_avg", padding=0), feat32.size()[2:], mode="nearest")
    up32 = conv_bn_relu(F.interpolate(arm(feat32, "cp.arm32") + context, feat16.size()[2:], mode="nearest"),
                        "cp.conv_head32")  # fmt: skip
    up16 = conv_bn_relu(F.interpolate(arm(feat16, "cp.arm16") + up32, feat8.size()[2:], mode="nearest"),
                        "cp.conv_head16")  # fmt: skip
    fused = conv_bn_relu(torch.cat([feat8, up16], dim=1), "ffm.convblk", padding=0)
    attention = torch.sigmoid(conv(F.relu(conv(pooled(fused), "ffm.conv1")), "ffm.conv2"))
    logits = conv(conv_bn_relu(fused * attention + fused, "conv_out.conv"), "conv_out.conv_out")
    return F.interpolate(logits, x.size()[2:], mode="bilinear", align_corners=True)


def test_bisenet_forward_is_upstreams_written_out() -> None:
    """An 80x112 input gives 1/32 and 1/16 maps of 3x4 and 5x7, so nearest upsampling is not a plain doubling and
    the final bilinear upsampling's corner alignment shows; random BatchNorm statistics keep each branch's share
    visible."""
    model = BiSeNet()
    model.load_state_dict(random_bisenet_state(5))
    model.eval()
    x = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got, want = model(x), _upstream_bisenet_forward(model.state_dict(), x)
    assert got.shape == want.shape == (2, 19, 80, 112)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


# --- loading the layout ----------------------------------------------------------------------------------------


def test_the_official_layout_loads_into_diffusers_and_transformers(models, settings: Settings) -> None:
    root, written = models
    files = require(settings, root)
    assert files.complete and files.folder == root
    assert files["vae_weights"].name == "diffusion_pytorch_model.bin"
    nets = load_networks(files, "cpu", torch.float32)
    for key, value in nets.unet.state_dict().items():
        assert torch.equal(value, written["unet"][key]), key
    assert torch.equal(nets.vae.decoder.mid_block.attentions[0].to_q.weight,
                       written["vae"]["decoder.mid_block.attentions.0.to_q.weight"])  # fmt: skip
    for key, value in nets.whisper.state_dict().items():
        assert torch.equal(value, written["whisper"][f"model.encoder.{key}"]), key
    assert not nets.unet.training and not any(p.requires_grad for p in nets.unet.parameters())
    with torch.no_grad():
        out = nets.unet(torch.randn(2, 8, 8, 8), 0, encoder_hidden_states=torch.randn(2, 50, 16)).sample
        hidden = nets.whisper(torch.randn(1, 8, 40), output_hidden_states=True).hidden_states
    assert out.shape == (2, 4, 8, 8)
    assert len(hidden) == 3 and hidden[0].shape == (1, 20, 16)  # embeddings + one per layer
    half = load_networks(files, "cpu", torch.float16)  # upstream parses faces in fp32 whatever the rest runs in
    assert half.unet.dtype == torch.float16 and next(half.face_parser.parameters()).dtype == torch.float32


def test_loads_match_diffusers_and_transformers_own_loaders(models) -> None:
    """Our meta-device loading gives the networks that from_pretrained (diffusers' own legacy-name conversion) and
    upstream's UNet class (build in fp32, load_state_dict) give, output for output."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperModel

    root, written = models
    reference = UNet2DConditionModel.from_config(TINY_UNET).eval()
    reference.load_state_dict(written["unet"])
    ours = load_unet(root / "musetalkV15" / "unet.pth", root / "musetalkV15" / "musetalk.json", dtype=torch.float32)
    sample, audio = torch.randn(1, 8, 8, 8), torch.randn(1, 50, 16)
    with torch.no_grad():
        assert torch.equal(ours(sample, 0, audio).sample, reference(sample, 0, audio).sample)

    vae_ref = AutoencoderKL.from_pretrained(root / "sd-vae").eval()
    vae = load_vae(
        root / "sd-vae" / "config.json", root / "sd-vae" / "diffusion_pytorch_model.bin", "cpu", torch.float32
    )
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.encode(image).latent_dist.mean, vae_ref.encode(image).latent_dist.mean)
        latent = torch.randn(1, 4, 4, 4)
        assert torch.equal(vae.decode(latent).sample, vae_ref.decode(latent).sample)

    whisper_ref = WhisperModel.from_pretrained(root / "whisper").encoder.eval()
    whisper = load_whisper_encoder(root / "whisper" / "config.json", root / "whisper" / "pytorch_model.bin",
                                   "cpu", torch.float32)  # fmt: skip
    features = torch.randn(1, 8, 40)
    with torch.no_grad():
        got = whisper(features, output_hidden_states=True).hidden_states
        want = whisper_ref(features, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_half_precision_is_converted_tensor_by_tensor(models) -> None:
    root, written = models
    unet = load_unet(root / "musetalkV15" / "unet.pth", root / "musetalkV15" / "musetalk.json", "cpu", torch.float16)
    assert {p.dtype for p in unet.parameters()} == {torch.float16}
    assert torch.equal(unet.conv_in.weight, written["unet"]["conv_in.weight"].half())
    parser = load_bisenet(root / "face-parse-bisent" / "79999_iter.pth", dtype=torch.bfloat16)
    assert parser.cp.resnet.bn1.running_var.dtype == torch.bfloat16
    assert parser.cp.resnet.bn1.num_batches_tracked.dtype == torch.long


def test_new_vae_names_safetensors_and_the_v1_layout(tmp_path: Path, settings: Settings) -> None:
    from safetensors.torch import save_file

    root = tmp_path / "checkout" / "models"  # an upstream checkout: the layout is its models/ folder
    written = write_models(root, version="v1", legacy_vae=False)
    files = require(settings, root.parent, version="v1")
    assert files.folder == root and files["unet"] == root / "musetalk" / "pytorch_model.bin"
    nets = load_networks(files, "cpu", torch.float32)
    assert torch.equal(nets.unet.conv_in.weight, written["unet"]["conv_in.weight"])
    save_file(_legacy_vae(written["vae"]), root / "sd-vae" / "diffusion_pytorch_model.safetensors")
    files = require(settings, root, version="v1")
    assert files["vae_weights"].suffix == ".safetensors"  # preferred over the pickle when both are there
    vae = load_vae(files["vae_config"], files["vae_weights"], "cpu", torch.float32)
    assert torch.equal(vae.encoder.mid_block.attentions[0].to_out[0].bias,
                       written["vae"]["encoder.mid_block.attentions.0.to_out.0.bias"])  # fmt: skip


def test_legacy_names_are_renamed_only_in_the_mid_block_attention() -> None:
    state = {
        "encoder.mid_block.attentions.0.query.weight": torch.zeros(1),
        "decoder.mid_block.attentions.0.proj_attn.bias": torch.zeros(1),
        "decoder.mid_block.attentions.0.group_norm.weight": torch.zeros(1),
        "decoder.up_blocks.0.resnets.0.conv1.weight": torch.zeros(1),
        "encoder.down_blocks.0.attentions.0.query.weight": torch.zeros(1),  # not sd-vae's: left for the strict load
    }
    assert list(convert_legacy_vae_names(state)) == [
        "encoder.mid_block.attentions.0.to_q.weight",
        "decoder.mid_block.attentions.0.to_out.0.bias",
        "decoder.mid_block.attentions.0.group_norm.weight",
        "decoder.up_blocks.0.resnets.0.conv1.weight",
        "encoder.down_blocks.0.attentions.0.query.weight",
    ]
    both = {"encoder.mid_block.attentions.0.key.weight": torch.zeros(1),
            "encoder.mid_block.attentions.0.to_k.weight": torch.zeros(1)}  # fmt: skip
    with pytest.raises(CheckpointError, match="both its old and its new name"):
        convert_legacy_vae_names(both)


# --- where the files are found ---------------------------------------------------------------------------------


def test_a_missing_file_is_named_with_its_place_and_source(tmp_path: Path, settings: Settings) -> None:
    root = tmp_path / "models"
    write_models(root)
    (root / "musetalkV15" / "unet.pth").unlink()
    (root / "face-parse-bisent" / "79999_iter.pth").unlink()
    with pytest.raises(SetupError) as err:
        require(settings, root)
    message = str(err.value)
    assert "musetalkV15/unet.pth" in message and "huggingface.co/TMElyralab/MuseTalk" in message
    assert "face-parse-bisent/79999_iter.pth" in message and "drive.google.com" in message
    assert "AVATARBENCH_MUSETALK_DIR" in message and "MIT" in message and "\n" not in message
    assert [p.name for p in locate(settings, root).missing] == ["unet", "face_parse"]
    with pytest.raises(SetupError, match=r"missing musetalkV15/unet\.pth"):  # not a KeyError for the first absent
        load_networks(locate(settings, root), "cpu", torch.float32)
    with pytest.raises(SetupError, match=r"sd-vae/config\.json"):
        require(settings, tmp_path / "nowhere")  # a folder named explicitly is never replaced by the Hub's cache
    with pytest.raises(SetupError, match=r"^\S*nowhere: there is no such folder\. MuseTalk v15: missing "):
        require(settings, tmp_path / "nowhere")  # a typo listed a dozen files missing from it, and nothing more
    with pytest.raises(InputError, match="'v2' is not one of v15, v1"):
        locate(settings, root, version="v2")


def test_weights_folder_setting_and_hub_cache(tmp_path: Path, settings: Settings, offline_hub: Path) -> None:
    assert not locate(settings).complete  # nothing anywhere
    assert len(locate(settings).missing) == len(parts())
    source = tmp_path / "source"
    write_models(source)
    default = settings.weights_dir / "musetalk"
    for sub in ("musetalkV15", "face-parse-bisent"):  # only MuseTalk's own files in the weights folder...
        (default / sub).mkdir(parents=True)
        for f in (source / sub).iterdir():
            (default / sub / f.name).write_bytes(f.read_bytes())
    assert {p.name for p in locate(settings).missing} == {
        "vae_config", "vae_weights", "whisper_config", "whisper_weights", "whisper_preprocessor"}  # fmt: skip
    # ...and the VAE and Whisper in the Hub's cache, as the official repositories name them.
    _cache_snapshot(offline_hub, "stabilityai/sd-vae-ft-mse", {n: source / "sd-vae" / n for n in
                    ("config.json", "diffusion_pytorch_model.bin")})  # fmt: skip
    _cache_snapshot(offline_hub, "openai/whisper-tiny", {n: source / "whisper" / n for n in
                    ("config.json", "pytorch_model.bin", "preprocessor_config.json")})  # fmt: skip
    files = require(settings)
    assert files["unet"] == default / "musetalkV15" / "unet.pth"
    assert "models--stabilityai--sd-vae-ft-mse" in str(files["vae_weights"])
    assert load_networks(files, "cpu", torch.float32).vae.config.latent_channels == 4
    # The setting names a folder that must hold everything.
    named = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path), "AVATARBENCH_WEIGHTS_DIR": str(settings.weights_dir),
                           "AVATARBENCH_MUSETALK_DIR": str(tmp_path / "elsewhere")})  # fmt: skip
    with pytest.raises(SetupError, match="elsewhere"):
        require(named)
    named = Settings(data_dir=tmp_path, weights_dir=settings.weights_dir, musetalk_dir=str(source))
    assert require(named).folder == source


def test_hf_reference_offline(settings: Settings) -> None:
    with pytest.raises(SetupError, match=r"musetalkV15/unet\.pth of TMElyralab/MuseTalk is not in the Hub's local "
                       "cache and HF_HUB_OFFLINE is set"):  # fmt: skip
        locate(settings, "hf:TMElyralab/MuseTalk", download=True)
    files = locate(settings, "hf:", download=False)  # the Hub's cache only: empty here
    assert not files.complete and files.hub_repo == "TMElyralab/MuseTalk"


def test_the_folder_given_beats_the_setting_and_a_file_here_beats_the_hub_cache(
    models, tmp_path: Path, settings: Settings, offline_hub: Path
) -> None:
    """The order a user relies on: --musetalk-weights over AVATARBENCH_MUSETALK_DIR; in the weights folder a file
    there over the Hub cache's copy of it; and a folder named holds what it holds, never topped up from the cache."""
    import dataclasses
    import shutil

    root = models[0]
    _cache_snapshot(offline_hub, "stabilityai/sd-vae-ft-mse", {n: root / "sd-vae" / n for n in
                    ("config.json", "diffusion_pytorch_model.bin")})  # fmt: skip
    default = Path(shutil.copytree(root, settings.weights_dir / "musetalk"))
    assert locate(settings)["vae_weights"] == default / "sd-vae" / "diffusion_pytorch_model.bin"
    partial = Path(shutil.copytree(root, tmp_path / "partial"))
    shutil.rmtree(partial / "sd-vae")
    assert [p.name for p in locate(settings, partial).missing] == ["vae_config", "vae_weights"]
    named = dataclasses.replace(settings, musetalk_dir=str(partial))
    assert locate(named, default).folder == default and locate(named, default).complete


def test_the_hub_cache_is_read_under_each_repositorys_own_names(tmp_path: Path, settings: Settings, offline_hub):
    """transformers' from_pretrained leaves whisper-tiny's model.safetensors alone in the cache (no .bin): it is
    looked up at the repository's top level, not under the models/ layout's whisper/ folder."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"locate only looks")
    _cache_snapshot(offline_hub, "openai/whisper-tiny", {"model.safetensors": weights})
    found = locate(settings).paths["whisper_weights"]
    assert found.name == "model.safetensors" and "models--openai--whisper-tiny" in str(found)


def test_dwpose_comes_from_the_hub_cache_only_when_no_folder_is_named(
    models, tmp_path: Path, settings: Settings, offline_hub: Path
) -> None:
    """The optional landmark model is taken from yzd-v/DWPose's cache for the default folder and hf:, but a folder
    the user names holds what it holds: its avatars are not silently given landmarks from elsewhere."""
    pose = tmp_path / "dw-ll_ucoco_384.onnx"
    pose.write_bytes(b"locate only looks")
    _cache_snapshot(offline_hub, "yzd-v/DWPose", {"dw-ll_ucoco_384.onnx": pose})
    assert "models--yzd-v--DWPose" in str(locate(settings).optional["dwpose"])
    assert "models--yzd-v--DWPose" in str(locate(settings, "hf:").optional["dwpose"])
    assert locate(settings, models[0]).optional == {}


def test_a_copy_of_the_hub_repository_is_named_and_the_shared_files_keep_theirs(
    models, settings: Settings, offline_hub: Path
) -> None:
    """hf:OWNER/REPO replaces TMElyralab/MuseTalk's own files only: the UNet is asked of the copy (and said to come
    from it), the VAE and Whisper still come from their official repositories."""
    root = models[0]
    _cache_snapshot(offline_hub, "stabilityai/sd-vae-ft-mse", {n: root / "sd-vae" / n for n in
                    ("config.json", "diffusion_pytorch_model.bin")})  # fmt: skip
    with pytest.raises(SetupError, match=r"musetalkV15/unet\.pth of someone/MuseTalk is not in the Hub's local cache"):
        locate(settings, "hf:someone/MuseTalk", download=True)
    files = locate(settings, "hf:someone/MuseTalk")
    assert "models--stabilityai--sd-vae-ft-mse" in str(files["vae_weights"])
    message = files.describe_missing()
    assert "musetalkV15/unet.pth, musetalkV15/musetalk.json (from huggingface.co/someone/MuseTalk)" in message


def test_the_missing_files_message_names_every_accepted_name_the_folder_and_the_versions_command(
    tmp_path: Path, settings: Settings
) -> None:
    """The message is what a user acts on: each file's every accepted name (the Hub's VAE is the .bin), the folder
    to put them in, and the download command of the version asked for."""
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(SetupError) as v1:
        require(settings, folder, version="v1")
    message = str(v1.value)
    assert "sd-vae/diffusion_pytorch_model.safetensors or sd-vae/diffusion_pytorch_model.bin" in message
    assert "whisper/model.safetensors or whisper/pytorch_model.bin" in message
    assert f"put them under {folder} in upstream's models/ layout" in message
    assert "`avatarbench weights get musetalk-v1 --accept-licence`" in message
    (folder / "musetalk").write_text("")
    with pytest.raises(SetupError, match=r"^\S*musetalk is a file, not a folder\. MuseTalk v15: missing "):
        require(settings, folder / "musetalk")


# --- wrong files -----------------------------------------------------------------------------------------------


def _copy(models_root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(models_root, tmp_path / "models"))


@pytest.mark.parametrize(
    ("place", "content", "words"),
    [
        ("musetalkV15/unet.pth", LFS_POINTER, "Git LFS pointer"),
        ("sd-vae/diffusion_pytorch_model.bin", HTML_PAGE, "web page"),
        ("sd-vae/config.json", HTML_PAGE, "web page"),
        ("whisper/pytorch_model.bin", LFS_POINTER, "Git LFS pointer"),
        ("whisper/model.safetensors", LFS_POINTER, "Git LFS pointer"),  # a clone without git lfs: the preferred name
        ("face-parse-bisent/79999_iter.pth", HTML_PAGE, "web page"),
        ("musetalkV15/musetalk.json", b"{not json", "not a JSON config"),
        ("sd-vae/config.json", b"[4, 8]", "holds a JSON list, not an object"),  # not torch's AttributeError
        ("musetalkV15/unet.pth", b"PK\x03\x04" + b"\0" * 100, "truncated"),
    ],
)
def test_wrong_files_are_named(models, tmp_path: Path, settings: Settings, place: str, content: bytes, words: str):
    root = _copy(models[0], tmp_path)
    (root / place).write_bytes(content)
    with pytest.raises(InputError) as err:
        load_networks(require(settings, root), "cpu", torch.float32)
    message = str(err.value)
    assert Path(place).name in message and words in message, message
    assert str(tmp_path) not in message  # the file's name, never its server path


def test_another_networks_weights_or_config(models, tmp_path: Path, settings: Settings) -> None:
    root = _copy(models[0], tmp_path)
    state = torch.load(root / "musetalkV15" / "unet.pth", weights_only=True)
    torch.save({**state, "extra.weight": torch.zeros(1)}, root / "musetalkV15" / "unet.pth")
    with pytest.raises(CheckpointError, match=r"Unexpected keys \(1\): extra.weight"):
        load_unet(root / "musetalkV15" / "unet.pth", root / "musetalkV15" / "musetalk.json")
    with pytest.raises(CheckpointError, match="_class_name is 'AutoencoderKL'"):
        load_unet(root / "musetalkV15" / "unet.pth", root / "sd-vae" / "config.json")
    with pytest.raises(CheckpointError, match="Missing keys"):  # the VAE's weights given as the UNet's
        load_unet(root / "sd-vae" / "diffusion_pytorch_model.bin", root / "musetalkV15" / "musetalk.json")
    with pytest.raises(CheckpointError, match="no Whisper encoder weights"):
        load_whisper_encoder(root / "whisper" / "config.json", root / "sd-vae" / "diffusion_pytorch_model.bin")
    (root / "wav2vec2.json").write_text(json.dumps({**TINY_WHISPER, "model_type": "wav2vec2"}))
    with pytest.raises(CheckpointError, match=r"^wav2vec2\.json: its model_type is 'wav2vec2', not 'whisper'"):
        load_whisper_encoder(root / "wav2vec2.json", root / "whisper" / "pytorch_model.bin")
    big = {**TINY_UNET, "cross_attention_dim": 32}  # a config that does not match the weights
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(big))
    with pytest.raises(CheckpointError, match="Shape mismatches"):
        load_unet(root / "musetalkV15" / "unet.pth", root / "musetalkV15" / "musetalk.json")


def test_a_config_without_its_class_name_still_loads(models, tmp_path: Path) -> None:
    """Only a class name that says another network is refused: a config written by hand may leave it out."""
    root, written = _copy(models[0], tmp_path), models[1]
    config = root / "musetalkV15" / "musetalk.json"
    config.write_text(json.dumps({k: v for k, v in TINY_UNET.items() if k != "_class_name"}))
    unet = load_unet(root / "musetalkV15" / "unet.pth", config, "cpu", torch.float32)
    assert torch.equal(unet.conv_in.weight, written["unet"]["conv_in.weight"])


@pytest.mark.parametrize(
    ("place", "change"),
    [
        ("musetalkV15/musetalk.json", {"block_out_channels": [999999, 999999]}),  # diffusers' ValueError
        ("musetalkV15/musetalk.json", {"in_channels": "eight"}),  # torch's TypeError, building a convolution
        ("sd-vae/config.json", {"latent_channels": -4}),
        ("whisper/config.json", {"d_model": -5}),  # a tensor of negative size
    ],
)
def test_a_config_no_network_can_be_built_from_is_named(models, tmp_path: Path, place: str, change: dict) -> None:
    """Each was a traceback from diffusers, transformers or torch; now one line naming the file."""
    root = _copy(models[0], tmp_path)
    config = root / place
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    files = {"musetalkV15": ("musetalkV15/unet.pth", "musetalkV15/musetalk.json"),
             "sd-vae": ("sd-vae/config.json", "sd-vae/diffusion_pytorch_model.bin"),
             "whisper": ("whisper/config.json", "whisper/pytorch_model.bin")}[place.split("/")[0]]  # fmt: skip
    load = {"musetalkV15": load_unet, "sd-vae": load_vae, "whisper": load_whisper_encoder}[place.split("/")[0]]
    with pytest.raises(CheckpointError, match=rf"^{re.escape(config.name)}: no network can be built from it \("):
        load(*(root / f for f in files))


@pytest.mark.parametrize("change", [{"sampling_rate": 0}, {"feature_size": 128}, {"chunk_length": "x"}])
def test_a_whisper_preprocessor_config_musetalk_cannot_use_is_named(tmp_path: Path, change: dict) -> None:
    from engine.lipsync.musetalk.audio import feature_extractor

    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000,
                    "hop_length": 160, "chunk_length": 30, "n_fft": 400, **change})
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"^preprocessor_config\.json: it (makes|cannot be used)"):
        feature_extractor(str(folder))
