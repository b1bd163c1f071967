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
from engine.lipsync.musetalk.weights import UNET_CONFIG, VAE_CONFIG
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
