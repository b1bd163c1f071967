"""The networks a benchmark sweep can run: our own PyTorch models (random weights; speed does not depend on
trained values), their ONNX exports, and any ONNX model stored by the ONNX eval tab.

A BenchModel knows how to build its PyTorch module, make a batch of inputs, count its FLOPs per sample, and
where its ONNX file is; the runtimes in engine/runtimes/ use nothing else (see engine.runtimes.base.RuntimeModel).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import InputError

SEED = 0


@dataclass
class BenchModel:
    name: str
    title: str
    onnx_path: Callable[[], Path] | None  # the ONNX file for the ORT runtimes (exported on first use)
    build_torch: Callable[[], Any] | None = None  # a torch.nn.Module in eval mode, fp32, on the CPU
    torch_inputs: Callable[[int], tuple[Any, ...]] | None = None  # fp32 CPU tensors for a batch
    flops_fixed: float | None = None  # FLOPs per sample when known without counting (ONNX estimate)
    numpy_inputs: Callable[[int], dict[str, np.ndarray]] | None = None  # ONNX-only models: feeds for a batch
    weights_precision: str | None = None  # ONNX-only models: what ONNX Runtime runs (fp32, fp16, bf16), if known
    notes: tuple[str, ...] = ()  # what the report should say about how the model was run

    @property
    def has_torch(self) -> bool:
        return self.build_torch is not None


def _seeded(build: Callable[[], Any]) -> Callable[[], Any]:
    def make() -> Any:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return build().eval()

    return make


def _wav2lip() -> Any:
    from engine.models.wav2lip import Wav2Lip

    return Wav2Lip()


def _s3fd() -> Any:
    from engine.models.s3fd import S3FD

    return S3FD()


def _randn(*shape: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(SEED)
    return torch.rand(*shape, generator=g)  # [0, 1): what a face crop or a mel in [0, 1] looks like


def _liveportrait(kind: str) -> Callable[[], Any]:
    def build() -> Any:
        from engine.models import liveportrait as lp

        classes = {
            "appearance": lp.AppearanceFeatureExtractor,
            "motion": lp.MotionExtractor,
            "warping": lp.WarpingNetwork,
            "decoder": lp.SPADEDecoder,
        }
        return classes[kind]()

    return build


def _musetalk(part: str) -> Callable[[], Any]:
    def build() -> Any:
        from engine.lipsync.musetalk.random_weights import random_real_network

        return random_real_network(part, SEED)

    return build


def _keypoints(b: int) -> Any:
    return _randn(b, 21, 3) * 0.4 - 0.2  # canonical keypoints sit well inside [-1, 1]


BUILTIN = {
    "wav2lip": ("Wav2Lip generator", _wav2lip, lambda b: (_randn(b, 1, 80, 16), _randn(b, 6, 96, 96))),
    "s3fd": ("S3FD face detector (384x640)", _s3fd, lambda b: (_randn(b, 3, 384, 640),)),
    "liveportrait-appearance": (
        "LivePortrait appearance feature extractor",
        _liveportrait("appearance"),
        lambda b: (_randn(b, 3, 256, 256),),
    ),
    "liveportrait-motion": (
        "LivePortrait motion extractor (ConvNeXt-V2-tiny)",
        _liveportrait("motion"),
        lambda b: (_randn(b, 3, 256, 256),),
    ),
    "liveportrait-warping": (
        "LivePortrait warping module (5-D grid_sample)",
        _liveportrait("warping"),
        lambda b: (_randn(b, 32, 16, 64, 64), _keypoints(b), _keypoints(b)),
    ),
    "liveportrait-decoder": (
        "LivePortrait SPADE decoder (512x512 out)",
        _liveportrait("decoder"),
        lambda b: (_randn(b, 256, 64, 64),),
    ),
    "musetalk-unet": (
        "MuseTalk v1.5 UNet (one step at timestep 0, 8x32x32 latents, 50x384 audio prompt)",
        _musetalk("unet"),
        lambda b: (_randn(b, 8, 32, 32) * 2 - 1, _randn(b, 50, 384) * 2 - 1),
    ),
    "musetalk-vae-decoder": (
        "MuseTalk's sd-vae-ft-mse decoder (4x32x32 latents to 256x256)",
        _musetalk("decoder"),
        lambda b: (_randn(b, 4, 32, 32) * 2 - 1,),
    ),
}


def builtin_model(name: str, cache_dir: str | os.PathLike) -> BenchModel:
    if name not in BUILTIN:
        raise InputError(f"no built-in model {name!r}; available: {', '.join(BUILTIN)} or onnx:<sha256>")
    from engine.onnx.examples import EXAMPLES, example_path

    title, build, inputs = BUILTIN[name]

    def onnx_path() -> Path:
        return example_path(name, cache_dir)

    return BenchModel(name, title, onnx_path if name in EXAMPLES else None, _seeded(build), inputs)


def onnx_model(path: str | os.PathLike, name: str, info: Any) -> BenchModel:
    """An ONNX model prepared and inspected by engine.onnx.inspection (`info`): ORT runtimes only, seeded
    synthetic inputs. Its batch must be free (a symbolic first dimension) so the sweep can set it."""
    from engine.onnx.inputs import synthetic_inputs

    file = Path(path)
    batch_symbols = {s.shape[0] for s in info.inputs if s.shape and isinstance(s.shape[0], str)}
    if not info.inputs or len(batch_symbols) != 1 or any(not s.shape for s in info.inputs):
        raise InputError(
            f"{name}: a benchmark sets the batch, so every input needs the same symbolic first dimension "
            f"(found {[s.shape for s in info.inputs]}); evaluate fixed-shape models in the ONNX eval tab"
        )
    symbol = next(iter(batch_symbols))
    shapes = {s.name: list(s.concrete({**info.symbols, symbol: 1})) for s in info.inputs}
    if all(0 in shape for shape in shapes.values()):  # ONNX Runtime runs it; the sweep's reductions then failed
        raise InputError(
            f"{name}: every input is empty ({', '.join(f'{k} {v}' for k, v in shapes.items())}): a run would compute "
            "nothing, so there is nothing to time; give the model inputs of non-zero size"
        )
    linear = _batch_only_first(info.inputs, symbol)
    per_sample = info.flops / info.symbols.get(symbol, 1) if info.flops and linear else None

    def feeds(batch: int) -> dict[str, np.ndarray]:
        return synthetic_inputs(info.inputs, {**info.symbols, symbol: batch}, SEED)

    others = {s: v for s, v in info.symbols.items() if s != symbol}
    notes = (f"the model's other symbolic dimensions ran at {', '.join(f'{s}={v}' for s, v in others.items())}, "
             "as inspection set them (onnx eval takes other values)",) if others else ()  # fmt: skip
    if info.flops and not linear:
        notes += (f"no FLOPs per sample, so no TFLOP/s: the batch {symbol} also sizes another axis of an input, so "
                  "the FLOPs grow faster than the batch",)  # fmt: skip
    return BenchModel(name, f"ONNX model {name}", lambda: file, flops_fixed=per_sample, numpy_inputs=feeds,
                      weights_precision=info.weights_precision, notes=notes)  # fmt: skip


def _batch_only_first(inputs: list[Any], symbol: str) -> bool:
    """Whether the batch symbol sizes only the inputs' first axes: only then do FLOPs grow in step with the batch
    (x[N, N] @ x[N, N] grows as N³, and its FLOPs at N=1 times the samples/s made up a TFLOP/s)."""
    return all(dim != symbol for spec in inputs for dim in spec.shape[1:])


def _attention_flops(
    query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    """Scaled dot-product attention's two matrix products, (B, H, Lq, E) x (B, H, Lk, E) and by (B, H, Lk, Ev), as
    torch's flop counter counts the CUDA kernels'."""
    *batch, queries, depth = query_shape
    keys, value_depth = key_shape[-2], value_shape[-1]
    heads = math.prod(batch)
    return 2 * heads * queries * keys * depth + 2 * heads * queries * keys * value_depth


def count_flops(model: BenchModel) -> float | None:
    """FLOPs per sample (2 per multiply-add) from torch's flop counter on one fp32 sample on the CPU.

    The counter knows the attention kernels of CUDA but not the CPU's (`_scaled_dot_product_flash_attention_for_cpu`,
    torch 2.13), which it would count as nothing: MuseTalk's UNet came to 169.6 GFLOP a frame instead of 177.8."""
    if model.flops_fixed is not None or not model.has_torch:
        return model.flops_fixed
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = model.build_torch()  # type: ignore[misc]
    inputs = model.torch_inputs(1)  # type: ignore[misc]
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: _attention_flops})
    with torch.inference_mode(), counter:
        module(*inputs)
    return float(counter.get_total_flops())


_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}


def memory_profile(model: BenchModel, precision: str) -> tuple[int, int]:
    """(weight bytes, activation bytes per sample) at this precision, from one build of the network.

    Activations are every leaf module's output for one sample, summed: an upper bound on inference
    activations (a real run frees most of them early), from a CPU forward. A GPU sweep's peaks calibrate
    the real figure (engine.bench.planner.calibration_from_report)."""
    import torch

    module = model.build_torch()  # type: ignore[misc]
    width = _BYTES[precision]
    weights = sum(p.numel() for p in module.parameters()) * width
    # float buffers (BatchNorm's statistics) are cast with the weights, as .half() does; counts stay integers
    weights += sum(b.numel() * (width if b.is_floating_point() else b.element_size()) for b in module.buffers())
    inputs = model.torch_inputs(1)  # type: ignore[misc]
    total = [sum(t.numel() for t in inputs) * width]

    def hook(_m: Any, _i: Any, out: Any) -> None:
        for t in out if isinstance(out, list | tuple) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * width

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return weights, total[0]


__all__ = [
    "BUILTIN",
    "BenchModel",
    "builtin_model",
    "count_flops",
    "memory_profile",
    "onnx_model",
]
