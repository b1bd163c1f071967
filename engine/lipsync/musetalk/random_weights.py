"""Random MuseTalk weights in upstream's models/ layout, for tests and benchmarks: no download, no licence.

Small configs of the real classes (diffusers' UNet and VAE, transformers' Whisper, our BiSeNet at full size), so our
loader reads them exactly as it reads the official files and every stage of the pipeline runs, fast on a CPU. The VAE
keeps four blocks, so the latents are 32x32 as the real ones; whisper keeps its real input (80 mel bins, 3000 frames,
1500 rows) and its five hidden states, narrow. Speed measured with them says nothing about the real networks'.
``write_random_weights(root, real_size=True)`` writes the real configs instead (a 3.4 GB UNet file): the whole
pipeline at the real networks' cost where the official files cannot be had (a GPU machine without the Hub).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.lipsync.musetalk.audio import SAMPLE_RATE
from engine.lipsync.musetalk.weights import UNET_CONFIG, VAE_CONFIG, WHISPER_ENCODER_CONFIG, meta_unet, meta_vae
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


def random_state(model: torch.nn.Module, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """Every tensor of `model` (which may be on the meta device) drawn from N(0, scale²); 0.1 keeps small networks'
    activations in range."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * scale for k, v in model.state_dict().items()}


# whisper-tiny's encoder at its real size; the decoder, which MuseTalk never runs, stays small.
REAL_SIZE_WHISPER = {**SMALL_WHISPER, **WHISPER_ENCODER_CONFIG}


def write_random_weights(root: Path, real_size: bool = False) -> Path:
    """Random weights in upstream's models/ layout (v1.5) under `root`, for the small configs or, with `real_size`,
    the real UNet, VAE and whisper encoder (values from N(0, 0.02²) then, as `random_real_network`'s); returns
    `root`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    unet, vae, whisper_config = (UNET_CONFIG, VAE_CONFIG, REAL_SIZE_WHISPER) if real_size else (
        SMALL_UNET, SMALL_VAE, SMALL_WHISPER)  # fmt: skip
    scale = 0.02 if real_size else 0.1
    for sub in ("musetalkV15", "sd-vae", "whisper", "face-parse-bisent"):
        (root / sub).mkdir(parents=True)
    with torch.device("meta"):  # only the shapes: real_size's UNet would take 3.4 GB twice over
        unet_model, vae_model = UNet2DConditionModel.from_config(unet), AutoencoderKL.from_config(vae)
    torch.save(random_state(unet_model, 1, scale), root / "musetalkV15" / "unet.pth")
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(unet))
    torch.save(random_state(vae_model, 2, scale), root / "sd-vae" / "diffusion_pytorch_model.bin")
    (root / "sd-vae" / "config.json").write_text(json.dumps(vae))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        whisper = WhisperForConditionalGeneration(WhisperConfig.from_dict(whisper_config)).state_dict()
    encoder_and_decoder = {k: v.clone() for k, v in whisper.items() if k != "proj_out.weight"}  # proj_out is tied
    torch.save(encoder_and_decoder, root / "whisper" / "pytorch_model.bin")
    (root / "whisper" / "config.json").write_text(json.dumps(whisper_config))
    (root / "whisper" / "preprocessor_config.json").write_text(
        json.dumps({"feature_size": 80, "sampling_rate": SAMPLE_RATE})
    )
    legacy_pickle = {"_use_new_zipfile_serialization": False}  # as the official 79999_iter.pth
    torch.save(random_bisenet_state(4), root / "face-parse-bisent" / "79999_iter.pth", **legacy_pickle)
    return root
