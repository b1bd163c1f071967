"""LivePortrait through ONNX Runtime: our own export of the networks, and sessions that the portrait pipeline
uses in place of the PyTorch modules.

The export is fp32 at opset 20 (the first opset whose GridSample takes 5-D volumes, which the warping module
needs); the batch axis is free. Sessions go through engine.onnx_eval.make_session, so a provider that falls
back to the CPU is reported, never silent; TF32 stays off on the CUDA provider (ORT turns it on by default,
and it shifts the motion extractor's pose logits). With TensorRT, the nodes TensorRT cannot take (GridSample)
run on the CUDA provider inside the same session.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.models.liveportrait import load_liveportrait
from engine.portrait_motion import KeypointInfo, keypoint_info

OPSET = 20
EXPORT_VERSION = 2  # part of the cache key: bump when the export changes (2: the decoder's size is free)
FILES = {
    "appearance": "appearance_feature_extractor.onnx",
    "motion": "motion_extractor.onnx",
    "warping": "warping_module.onnx",
    "decoder": "spade_generator.onnx",
}
BACKENDS = {"onnx-cpu": "cpu", "onnx-cuda": "cuda", "onnx-trt": "trt"}
_MOTION_OUTPUTS = ["pitch", "yaw", "roll", "t", "exp", "scale", "kp"]


def _specs() -> dict[str, tuple[tuple[torch.Tensor, ...], list[str], list[str]]]:
    kp = torch.rand(1, 21, 3) * 0.4 - 0.2
    return {
        "appearance": ((torch.rand(1, 3, 256, 256),), ["image"], ["feature"]),
        "motion": ((torch.rand(1, 3, 256, 256),), ["image"], _MOTION_OUTPUTS),
        "warping": (
            (torch.rand(1, 32, 16, 64, 64), kp + 0.01, kp),
            ["feature", "kp_driving", "kp_source"],
            ["occlusion_map", "deformation", "out"],
        ),
        "decoder": ((torch.rand(1, 256, 64, 64),), ["feature"], ["image"]),
    }


class _DictOutputs(torch.nn.Module):
    """The motion extractor returns a dict; ONNX wants a tuple in a fixed order."""

    def __init__(self, module: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.module, self.keys = module, keys

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*args)
        return tuple(out[k] for k in self.keys)


def export_onnx(weights_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Export the four base networks from the official weights; returns name -> .onnx path."""
    nets = load_liveportrait(weights_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modules = {"appearance": nets.appearance, "motion": nets.motion, "warping": nets.warping, "decoder": nets.decoder}
    paths = {}
    for name, (args, inputs, outputs) in _specs().items():
        module = modules[name]
        if name in ("motion", "warping"):
            keys = _MOTION_OUTPUTS if name == "motion" else outputs
            module = _DictOutputs(module, keys)
        path = out / FILES[name]
        tmp = path.with_suffix(".tmp")
        axes = {n: {0: "batch"} for n in (*inputs, *outputs)}
        if name == "decoder":  # fully convolutional: any feature size (the pipeline uses 64x64 -> 512x512)
            axes = {"feature": {0: "batch", 2: "height", 3: "width"}, "image": {0: "batch", 2: "height8", 3: "width8"}}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), args, str(tmp), dynamo=False, opset_version=OPSET, input_names=inputs,
                output_names=outputs, dynamic_axes=axes,
            )  # fmt: skip
        os.replace(tmp, path)
        paths[name] = path
    return paths


def weights_digest(weights_dir: str | os.PathLike) -> str:
    """The export version and the weight files' names, sizes and modification times: a cache key for the export."""
    h = hashlib.sha256(f"export-v{EXPORT_VERSION}-opset{OPSET}".encode())
    for f in sorted(Path(weights_dir).rglob("*.pth")):
        st = f.stat()
        h.update(f"{f.relative_to(weights_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_export(weights_dir: str | os.PathLike, cache_dir: str | os.PathLike) -> dict[str, Path]:
    folder = Path(cache_dir) / "liveportrait-onnx" / weights_digest(weights_dir)
    if all((folder / f).is_file() for f in FILES.values()):
        return {name: folder / f for name, f in FILES.items()}
    return export_onnx(weights_dir, folder)


class OnnxNetworks:
    """The same three calls as the PyTorch networks (motion, appearance, render), through ORT sessions."""

    def __init__(self, paths: dict[str, Path], backend: str, retargeting: dict, device_id: int = 0) -> None:
        from engine.onnx_eval import EvalConfig, make_session

        key = BACKENDS[backend]
        config = EvalConfig(providers=[key], device_id=device_id, cuda_tf32=False)
        self.sessions, self.providers, self.warnings = {}, {}, []
        for name, path in paths.items():
            session, meta = make_session(path, key, config)
            self.sessions[name] = session
            self.providers[name] = meta["got"]
            if meta["fell_back"]:
                self.warnings.append(
                    f"WARNING: the {name} network asked for {meta['requested']} but runs on {meta['got'][0]} "
                    f"({meta['fallback_reason']})"
                )
        self.retargeting = retargeting  # the small MLPs stay in PyTorch on the CPU
        self.device = torch.device("cpu")

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[name].run(None, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})

    def motion(self, images: torch.Tensor) -> KeypointInfo:
        out = self._run("motion", {"image": images.cpu().numpy()})
        return keypoint_info({k: torch.from_numpy(v) for k, v in zip(_MOTION_OUTPUTS, out, strict=True)})

    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("appearance", {"image": image.cpu().numpy()})[0])

    def warp(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> np.ndarray:
        b = x_driving.shape[0]
        feeds = {
            "feature": np.broadcast_to(feature.cpu().numpy(), (b, *feature.shape[1:])),
            "kp_driving": x_driving.cpu().numpy(),
            "kp_source": np.broadcast_to(x_source.cpu().numpy(), (b, 21, 3)),
        }
        return self._run("warping", feeds)[2]

    def decode(self, warped: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._run("decoder", {"feature": warped})[0])

    def render(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        return self.decode(self.warp(feature, x_source, x_driving))


def onnx_networks(weights_dir: Path, cache_dir: Path, backend: str, device_id: int = 0) -> Any:
    from engine.models.liveportrait import load_retargeting

    return OnnxNetworks(cached_export(weights_dir, cache_dir), backend, load_retargeting(weights_dir), device_id)


__all__ = ["BACKENDS", "FILES", "OPSET", "OnnxNetworks", "cached_export", "export_onnx", "onnx_networks"]
