"""Loading the official LivePortrait weights unchanged, and writing random weights in the same layout.

The weights directory mirrors the release (`pretrained_weights/liveportrait/` on the Hub):
  base_models/appearance_feature_extractor.pth, motion_extractor.pth, warping_module.pth, spade_generator.pth
  retargeting_models/stitching_retargeting_module.pth
Base models load strictly with no renaming; the SPADE generator's spectral-normalised convolutions are
folded into plain weights (W = weight_orig / (u . (W_mat v)), torch's eval-mode value, no power iteration);
the retargeting file's three state dicts lose their one leading `module.` each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.models.checkpoints import (
    CheckpointError,
    load_strict,
    read_checkpoint,
    read_checkpoint_parts,
    strip_module_prefix,
)
from engine.models.liveportrait.appearance import AppearanceFeatureExtractor
from engine.models.liveportrait.decoder import SPADEDecoder
from engine.models.liveportrait.motion import MotionExtractor
from engine.models.liveportrait.stitching import FILE_KEYS, RetargetingMLP
from engine.models.liveportrait.warping import WarpingNetwork

BASE_FILES = {
    "appearance": ("base_models/appearance_feature_extractor.pth", AppearanceFeatureExtractor),
    "motion": ("base_models/motion_extractor.pth", MotionExtractor),
    "warping": ("base_models/warping_module.pth", WarpingNetwork),
    "decoder": ("base_models/spade_generator.pth", SPADEDecoder),
}
RETARGETING_FILE = "retargeting_models/stitching_retargeting_module.pth"
WEIGHT_FILES = (*(name for name, _ in BASE_FILES.values()), RETARGETING_FILE)
_SPECTRAL = ("weight_orig", "weight_u", "weight_v")


def _expected(name: str) -> str:
    return f"LivePortrait's official {name} (pretrained_weights/liveportrait/{name})"


def fold_spectral_norm(state: dict[str, torch.Tensor], path: str | os.PathLike[str] | None = None) -> dict:
    """Replace every (weight_orig, weight_u, weight_v) triple by the normalised `weight` it stands for."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".weight_orig")]:
        prefix = key[: -len("weight_orig")]
        missing = [prefix + s for s in _SPECTRAL[1:] if prefix + s not in state]
        if missing:
            raise CheckpointError(f"spectral-norm entries missing: {', '.join(missing)}", path=path)
        w, u, v = (state[prefix + s].float() for s in _SPECTRAL)
        sigma = torch.dot(u, w.reshape(w.shape[0], -1) @ v)
        out[prefix + "weight"] = w / sigma  # in fp32, as upstream's spectral norm divides its fp32 parameters
        for s in _SPECTRAL:
            del out[prefix + s]
    return out


def load_base_model(kind: str, weights_dir: str | os.PathLike[str], device="cpu", dtype=torch.float32) -> nn.Module:
    """One of appearance, motion, warping, decoder from the weights directory, in eval mode."""
    name, cls = BASE_FILES[kind]
    path = Path(weights_dir) / name
    state = read_checkpoint(path, _expected(name))
    if kind == "decoder":
        state = fold_spectral_norm(state, path)
    model = cls()
    load_strict(model, state, _expected(name), path=path)
    return model.eval().to(device=device, dtype=dtype)


def load_retargeting(weights_dir: str | os.PathLike[str], device="cpu", dtype=torch.float32) -> dict[str, nn.Module]:
    """{"stitching", "lip", "eye"} MLPs from the one retargeting file (only those three parts are read)."""
    path = Path(weights_dir) / RETARGETING_FILE
    parts = read_checkpoint_parts(path, _expected(RETARGETING_FILE), tuple(FILE_KEYS.values()))
    out = {}
    for kind, key in FILE_KEYS.items():
        model = RetargetingMLP(kind)
        load_strict(model, strip_module_prefix(parts[key]), _expected(RETARGETING_FILE) + f", part {key}", path=path)
        out[kind] = model.eval().to(device=device, dtype=dtype)
    return out


@dataclass
class LivePortraitNetworks:
    appearance: nn.Module
    motion: nn.Module
    warping: nn.Module
    decoder: nn.Module
    retargeting: dict[str, nn.Module]


def load_liveportrait(weights_dir: str | os.PathLike[str], device="cpu", dtype=torch.float32) -> LivePortraitNetworks:
    base = {kind: load_base_model(kind, weights_dir, device, dtype) for kind in BASE_FILES}
    return LivePortraitNetworks(**base, retargeting=load_retargeting(weights_dir, device, torch.float32))


def _spectral_state(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The decoder's state dict as the official file stores it: spectral-normalised convs as orig/u/v."""
    state = model.state_dict()
    spectral = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and name.rsplit(".", 1)[-1] in ("conv_0", "conv_1", "conv_s")
    ]
    for name in spectral:
        w = state.pop(f"{name}.weight")
        u = torch.randn(w.shape[0], generator=generator)
        v = torch.randn(w[0].numel(), generator=generator)
        state[f"{name}.weight_orig"] = w
        state[f"{name}.weight_u"] = u / u.norm()
        state[f"{name}.weight_v"] = v / v.norm()
    return state


def write_random_weights(weights_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Random-initialised weights in the official files and layout (for tests and benchmarks: no download).
    BatchNorm running statistics are set to plausible values so eval-mode outputs are not degenerate."""
    root = Path(weights_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for kind, (name, cls) in BASE_FILES.items():
            model = cls()
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                    m.running_mean.normal_(0, 0.1, generator=generator)
                    m.running_var.uniform_(0.5, 2.0, generator=generator)
            state = _spectral_state(model, generator) if kind == "decoder" else model.state_dict()
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, root / name)
        parts = {
            key: {f"module.{k}": v for k, v in RetargetingMLP(kind).state_dict().items()}
            for kind, key in FILE_KEYS.items()
        }
        (root / RETARGETING_FILE).parent.mkdir(parents=True, exist_ok=True)
        torch.save(parts, root / RETARGETING_FILE)
    return root


__all__ = [
    "BASE_FILES",
    "RETARGETING_FILE",
    "WEIGHT_FILES",
    "LivePortraitNetworks",
    "fold_spectral_norm",
    "load_base_model",
    "load_liveportrait",
    "load_retargeting",
    "write_random_weights",
]
