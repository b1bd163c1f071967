"""LivePortrait through ONNX Runtime: our own export of the networks, and sessions that the portrait pipeline
uses in place of the PyTorch modules.

The export is fp32 at opset 20 (the first opset whose GridSample takes 5-D volumes, which the warping module
needs); the batch axis is free. The fp16 variant converts the appearance extractor, warping module and decoder
with ONNX Runtime's float16 converter, keeping GridSample in fp32 (casts around it) and the inputs and outputs
fp32; the motion extractor always stays fp32 because its pose logits are precision-sensitive. TensorRT builds
its own fp16 engines from the fp32 graphs instead (`trt_fp16_enable`, again not for the motion extractor).

Sessions are engine.runtimes.ort_session.OrtSession, so a provider that falls back to the CPU is reported, never
silent; TF32 stays off on the CUDA provider (ORT turns it on by default, and it shifts the motion extractor's
pose logits). With TensorRT, the nodes TensorRT cannot take (GridSample) run on the CUDA provider inside the
same session, and the motion extractor runs on the CUDA provider alone: TensorRT computes fp32 layers in TF32 by
default (its kTF32 builder flag, which ONNX Runtime's TensorRT provider has no option to clear). Runs use IOBinding
on torch tensors, so on a GPU the frames never leave the device.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from engine.core.device import pad_batch
from engine.core.errors import InputError
from engine.core.files import written_whole
from engine.models.liveportrait import load_liveportrait
from engine.portrait.motion import KeypointInfo, keypoint_info
from engine.runtimes.ort_session import OrtOptions, OrtSession

OPSET = 20
EXPORT_VERSION = 3  # the cache key's version: bump when the export changes (2: decoder size free; 3: fp16 sorted)
FILES = {
    "appearance": "appearance_feature_extractor.onnx",
    "motion": "motion_extractor.onnx",
    "warping": "warping_module.onnx",
    "decoder": "spade_generator.onnx",
}
BACKENDS = {"onnx-cpu": "cpu", "onnx-cuda": "cuda", "onnx-trt": "trt"}
PRECISIONS = ("fp32", "fp16")
HALF_NETWORKS = ("appearance", "warping", "decoder")  # the motion extractor stays strict fp32
HALF_KEEP_FP32 = ("GridSample",)
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


def to_fp16(source: Path, target: Path) -> None:
    """An exported network converted to fp16 (`target` may be `source`): GridSample stays fp32, and so do the
    inputs and outputs. The converter appends its input casts after their users; the nodes are sorted again, as
    the ONNX standard (and its checker, and tools other than ONNX Runtime) require."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(
        onnx.load(str(source)), keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *HALF_KEEP_FP32]
    )
    OnnxModel(model).topological_sort()
    with written_whole(target) as tmp:
        onnx.save(model, str(tmp))


def export_onnx(weights_dir: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp32") -> dict[str, Path]:
    """Export the four base networks from the official weights; returns name -> .onnx path."""
    if precision not in PRECISIONS:
        raise InputError(f"ONNX export precision {precision!r} is not one of {', '.join(PRECISIONS)}")
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
        axes = {n: {0: "batch"} for n in (*inputs, *outputs)}
        if name == "decoder":  # fully convolutional: any feature size (the pipeline uses 64x64 -> 512x512)
            axes = {"feature": {0: "batch", 2: "height", 3: "width"}, "image": {0: "batch", 2: "height8", 3: "width8"}}
        with written_whole(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), args, str(tmp), dynamo=False, opset_version=OPSET, input_names=inputs,
                output_names=outputs, dynamic_axes=axes,
            )  # fmt: skip
        if precision == "fp16" and name in HALF_NETWORKS:
            to_fp16(path, path)
        paths[name] = path
    return paths


def weights_digest(weights_dir: str | os.PathLike) -> str:
    """The export version and the weight files' names, sizes and modification times: a cache key for the export."""
    h = hashlib.sha256(f"export-v{EXPORT_VERSION}-opset{OPSET}".encode())
    for f in sorted(Path(weights_dir).rglob("*.pth")):
        st = f.stat()
        h.update(f"{f.relative_to(weights_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_export(weights_dir: str | os.PathLike, cache_dir: str | os.PathLike, precision: str = "fp32") -> dict:
    """The export for these weights from the cache, made on first use; fp16 files sit in a sub-folder and share
    the fp32 motion extractor."""
    folder = Path(cache_dir) / "liveportrait-onnx" / weights_digest(weights_dir)
    if all((folder / f).is_file() for f in FILES.values()):
        paths = {name: folder / f for name, f in FILES.items()}
    else:
        paths = export_onnx(weights_dir, folder)
    if precision == "fp32":
        return paths
    half = folder / precision
    half.mkdir(exist_ok=True)
    for name in HALF_NETWORKS:
        target = half / FILES[name]
        if not target.is_file():
            to_fp16(paths[name], target)
        paths[name] = target
    return paths


class OnnxNetworks:
    """The same calls as the PyTorch networks (motion, appearance, warp, decode, render), through ORT sessions."""

    def __init__(
        self,
        paths: dict[str, Path],
        backend: str,
        retargeting: dict,
        device_id: int = 0,
        precision: str = "fp32",
        batch: int | None = None,
    ) -> None:
        """`batch`: pad every call to this many rows, so TensorRT builds one engine per network, not one per
        batch size it meets."""
        self.batch = batch
        key = BACKENDS[backend]
        self.sessions: dict[str, OrtSession] = {}
        self.providers: dict[str, list[str]] = {}
        self.warnings: list[str] = []
        for name, path in paths.items():
            trt_fp16 = key == "trt" and precision == "fp16" and name in HALF_NETWORKS
            provider = "cuda" if key == "trt" and name not in HALF_NETWORKS else key  # strict fp32: no TF32
            options = OrtOptions(provider=provider, device_id=device_id, cuda_tf32=False, trt_fp16=trt_fp16)
            session = OrtSession(path, options)
            self.sessions[name], self.providers[name] = session, session.got
            if session.fell_back:
                self.warnings.append(
                    f"WARNING: the {name} network asked for {session.requested} but runs on {session.ran_on} "
                    f"({session.fallback_reason})"
                )
        self.retargeting = retargeting  # the small MLPs stay in PyTorch on the CPU
        self.device = self.sessions["decoder"].torch_device  # where the rendered frames are

    def _rows(self, b: int) -> int:
        return max(b, self.batch or b)

    def motion(self, images: torch.Tensor) -> KeypointInfo:
        b = images.shape[0]
        n = self._rows(b)
        shapes = {"pitch": (n, 66), "yaw": (n, 66), "roll": (n, 66), "t": (n, 3), "exp": (n, 63), "scale": (n, 1)}
        out = self.sessions["motion"].run_torch({"image": pad_batch(images, n)}, {**shapes, "kp": (n, 63)})
        return keypoint_info({k: v[:b].cpu() for k, v in zip(_MOTION_OUTPUTS, out, strict=True)})

    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        shapes = {"feature": (image.shape[0], 32, 16, 64, 64)}
        return self.sessions["appearance"].run_torch({"image": image}, shapes)[0]

    def warp(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        b = x_driving.shape[0]
        n = self._rows(b)
        feeds = {
            "feature": feature.expand(n, -1, -1, -1, -1),
            "kp_driving": pad_batch(x_driving, n),
            "kp_source": x_source.expand(n, -1, -1),
        }
        return self.sessions["warping"].run_torch(feeds, {"out": (n, 256, 64, 64)})[0][:b]

    def decode(self, warped: torch.Tensor) -> torch.Tensor:
        b, _, h, w = warped.shape
        n = self._rows(b)
        feeds, shapes = {"feature": pad_batch(warped, n)}, {"image": (n, 3, 8 * h, 8 * w)}
        return self.sessions["decoder"].run_torch(feeds, shapes)[0][:b]

    def render(self, feature: torch.Tensor, x_source: torch.Tensor, x_driving: torch.Tensor) -> torch.Tensor:
        return self.decode(self.warp(feature, x_source, x_driving))


def onnx_networks(
    weights_dir: Path,
    cache_dir: Path,
    backend: str,
    device_id: int = 0,
    precision: str = "fp32",
    batch: int | None = None,
) -> OnnxNetworks:
    """Sessions for `backend`. fp16 means our fp16 graphs on the CUDA provider, TensorRT's own fp16 engines on
    the TensorRT provider (from the fp32 graphs); the CPU provider runs fp32 only."""
    from engine.models.liveportrait import load_retargeting

    if precision not in PRECISIONS:
        raise InputError(f"the ONNX backends run fp32 or fp16, not {precision}")
    graphs = "fp16" if precision == "fp16" and backend == "onnx-cuda" else "fp32"
    paths = cached_export(weights_dir, cache_dir, graphs)
    return OnnxNetworks(paths, backend, load_retargeting(weights_dir), device_id, precision, batch)


__all__ = [
    "BACKENDS",
    "FILES",
    "HALF_NETWORKS",
    "OPSET",
    "PRECISIONS",
    "OnnxNetworks",
    "cached_export",
    "export_onnx",
    "onnx_networks",
    "to_fp16",
]
