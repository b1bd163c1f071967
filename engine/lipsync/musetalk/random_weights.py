"""Random MuseTalk weights in upstream's models/ layout, for tests and benchmarks: no download, no licence.

Small configs of the real classes (diffusers' UNet and VAE, transformers' Whisper, our BiSeNet at full size), so our
loader reads them exactly as it reads the official files and every stage of the pipeline runs, fast on a CPU. The VAE
keeps four blocks, so the latents are 32x32 as the real ones; whisper keeps its real input (80 mel bins, 3000 frames,
1500 rows) and its five hidden states, narrow. Speed measured with them says nothing about the real networks'
(benchmarks/musetalk.py times those from their configs).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.lipsync.musetalk.audio import SAMPLE_RATE
from engine.lipsync.musetalk.weights import UNET_CONFIG, VAE_CONFIG, meta_unet, meta_vae
from engine.models.bisenet import random_bisenet_state

SMALL_UNET = {
    **UNET_CONFIG,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 2,
    "cross_attention_dim": 16,
    "sample_size": 32,
}
SMALL_VAE = {**VAE_CONFIG, "block_out_channels": [4, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4}
SMALL_WHISPER = {  # whisper's real input (80 mel bins, 3000 frames -> 1500 rows) and five hidden states, narrow
    "model_type": "whisper",
    "d_model": 16,
    "encoder_layers": 4,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 8,
    "vocab_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
}


class UNetStep(torch.nn.Module):
    """MuseTalk's one UNet call per frame (timestep 0, the audio prompt cross-attended), tensors in and out: the
    module benchmark sweeps time (engine/bench/workloads.py)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("timestep", torch.zeros(1, dtype=torch.long), persistent=False)  # upstream's one step

    def forward(self, latents: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, self.timestep, encoder_hidden_states=prompts).sample


class LatentDecoder(torch.nn.Module):
    """The VAE's decode of UNet latents to 256x256 pixels, tensors in and out (78% of a frame's arithmetic)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def random_real_network(part: str, seed: int = 0) -> torch.nn.Module:
    """ "unet" (a UNetStep of the real v1.5 UNet) or "decoder" (a LatentDecoder of sd-vae-ft-mse) with every tensor
    drawn from N(0, 0.02²), fp32 on the CPU, in eval mode: the real shapes and arithmetic without the weights
    (speed does not depend on trained values)."""
    net = meta_unet() if part == "unet" else meta_vae()
    net = net.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return (UNetStep(net) if part == "unet" else LatentDecoder(net)).eval()


def random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of `model` drawn from N(0, 0.1²): values that keep small networks' activations in range."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in model.state_dict().items()}


def write_random_weights(root: Path) -> Path:
    """Random weights for the small configs in upstream's models/ layout (v1.5) under `root`; returns `root`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    for sub in ("musetalkV15", "sd-vae", "whisper", "face-parse-bisent"):
        (root / sub).mkdir(parents=True)
    torch.save(random_state(UNet2DConditionModel.from_config(SMALL_UNET), 1), root / "musetalkV15" / "unet.pth")
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(SMALL_UNET))
    torch.save(random_state(AutoencoderKL.from_config(SMALL_VAE), 2), root / "sd-vae" / "diffusion_pytorch_model.bin")
    (root / "sd-vae" / "config.json").write_text(json.dumps(SMALL_VAE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        whisper = WhisperForConditionalGeneration(WhisperConfig.from_dict(SMALL_WHISPER)).state_dict()
    encoder_and_decoder = {k: v.clone() for k, v in whisper.items() if k != "proj_out.weight"}  # proj_out is tied
    torch.save(encoder_and_decoder, root / "whisper" / "pytorch_model.bin")
    (root / "whisper" / "config.json").write_text(json.dumps(SMALL_WHISPER))
    (root / "whisper" / "preprocessor_config.json").write_text(
        json.dumps({"feature_size": 80, "sampling_rate": SAMPLE_RATE})
    )
    legacy_pickle = {"_use_new_zipfile_serialization": False}  # as the official 79999_iter.pth
    torch.save(random_bisenet_state(4), root / "face-parse-bisent" / "79999_iter.pth", **legacy_pickle)
    return root
