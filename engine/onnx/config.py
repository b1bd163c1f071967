"""What an ONNX evaluation (and an inspection) is asked to do: the one source of `avatarbench onnx eval`'s flags, the
`/onnx_submit` API's parameters and their checks. Light to import (no onnx, no onnxruntime).

Where the work runs (the device id, its memory share, TensorRT's engine cache) is the server's business and not
part of a request: see engine/runtimes/ort_session.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import InputError
from engine.core.options import Config, number_tuple, option, pairs, word_tuple
from engine.onnx.timing import auto_help

PROVIDER_KEYS = ("cpu", "cuda", "trt")
EXAMPLE_NAMES = ("wav2lip", "s3fd")  # engine/onnx/examples.py builds them
RESIZE_MODES = ("stretch", "crop", "letterbox")
SCALING_NAMES = ("0-1", "-1-1", "imagenet", "0-255")  # engine/onnx/images.py holds their values
CHANNEL_ORDERS = ("rgb", "bgr")
MAX_RUNS, MAX_WARMUP, MAX_BATCH = 10_000, 1_000, 4096
DEFAULT_RUNS, DEFAULT_WARMUP = 100, 5  # empty runs and warmup on a GPU: 100 runs give a p99 (engine/onnx/timing.py)
MAX_IMAGES = 256
MODEL_HELP = ".onnx file, or a .zip holding one model and its external-data files (empty: give example)"


class EvalError(InputError):
    """The evaluation request is refused; the message says what was wrong and what is accepted."""


def _model_or_example(model: Path | None, example: str | None) -> list[str]:
    either = f"give either a model ({MODEL_HELP.split(' (')[0]}) or a built-in example: {', '.join(EXAMPLE_NAMES)}"
    if model is not None and example is not None:
        return [f"{either}, not both (got the model {model.name} and the example {example})"]
    return [either] if model is None and example is None else []


@dataclass
class InspectConfig(Config):
    error = EvalError

    model: Path | None = option(None, help=MODEL_HELP, file=True, positional=True)
    example: str | None = option(None, help="a built-in example instead of a file", choices=EXAMPLE_NAMES)
    symbols: tuple[tuple[str, int], ...] = option(
        (), help="values for symbolic dimensions, e.g. batch=8,seq=128 (empty: inspected defaults)", text=pairs()
    )

    def problems(self) -> list[str]:
        return _model_or_example(self.model, self.example)


_PROVIDER_OPTIONS = {"trt_fp16": ("trt",), "trt_workspace_gb": ("trt",), "cuda_tf32": ("cuda", "trt")}


@dataclass
class EvalConfig(Config):
    error = EvalError

    model: Path | None = option(None, help=MODEL_HELP, file=True, positional=True)
    example: str | None = option(None, help="a built-in example instead of a file", choices=EXAMPLE_NAMES)
    providers: tuple[str, ...] = option(
        ("cpu",), help="execution providers, e.g. cpu,cuda,trt", choices=PROVIDER_KEYS, text=word_tuple("provider")
    )
    batch_sizes: tuple[int, ...] = option(
        (1,), help="batch sizes when the model's batch is free, e.g. 1,8,32", low=1, high=MAX_BATCH,
        text=number_tuple(int),
    )  # fmt: skip
    symbols: tuple[tuple[str, int], ...] = option(
        (), help="values for other symbolic dimensions, e.g. seq=128 (empty: inspected defaults)", text=pairs()
    )
    runs: int | None = option(
        None,
        help=f"timed runs per configuration (empty: {DEFAULT_RUNS}; {auto_help(DEFAULT_RUNS)})",
        low=1,
        high=MAX_RUNS,
    )
    warmup: int | None = option(
        None, help=f"untimed runs after the first (empty: {DEFAULT_WARMUP}; 1 on the CPU)", low=0, high=MAX_WARMUP
    )
    seed: int = option(0, help="seed of the synthetic inputs", low=0, high=2**63 - 1)
    inputs: Path | None = option(None, help=".npz of inputs keyed by input name (empty: seeded synthetic)", file=True)
    expected: Path | None = option(
        None, help=".npz of expected outputs keyed by output name (any of them): accuracy metrics", file=True
    )
    labels: tuple[int, ...] | None = option(
        None, help="class labels of the first batch, e.g. 3,1,7: top-1/top-5", low=0,
        text=number_tuple(int, distinct=False),
    )  # fmt: skip
    labels_output: str | None = option(
        None, help="the output --labels score (empty: the first float output of rank 2 or more, else the first)"
    )
    images: tuple[Path, ...] | None = option(
        None, help="images for an image input (resized and scaled)", file=True, many=True
    )
    image_input: str | None = option(None, help="the input the images fill (empty: the first image-shaped one)")
    image_resize: str = option("stretch", help="how images meet the input size", choices=RESIZE_MODES)
    image_scaling: str = option("0-1", help="pixel values (imagenet: mean/std)", choices=SCALING_NAMES)
    image_channels: str = option("rgb", help="channel order the model expects", choices=CHANNEL_ORDERS)
    trt_fp16: bool = option(False, help="allow fp16 in TensorRT engines")
    trt_workspace_gb: float = option(4.0, help="TensorRT workspace in GiB", low=0.0625, high=1024)
    cuda_tf32: bool = option(False, help="let the CUDA provider use TF32 (ORT's own default is on)")
    intra_op_threads: int = option(0, help="ONNX Runtime intra-op threads (0: its default)", low=0, high=1024)

    def problems(self) -> list[str]:
        out = _model_or_example(self.model, self.example)
        swallowed = [p.name for p in self.images or () if p.suffix.lower() in (".onnx", ".zip")]
        if self.model is None and self.example is None and swallowed:  # `--images a.png model.onnx`
            out = [f"{swallowed[0]} was taken as one of the images (--images takes every file after it): give the "
                   "model before --images"]  # fmt: skip
        if self.images is not None and len(self.images) > MAX_IMAGES:
            out.append(f"images: {len(self.images)} given, at most {MAX_IMAGES}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.labels_output is not None and self.labels is None:
            out.append("labels output names the output --labels score: give labels, or leave it out")
        if not self.images:  # they were ignored, silently
            image_options = ("image_input", "image_resize", "image_scaling", "image_channels")
            given = [name.replace("_", " ") for name in image_options if getattr(self, name) != defaults[name]]
            if given:
                out.append(f"no images were given, so {', '.join(given)} would do nothing: give images, or leave "
                           f"{'it' if len(given) == 1 else 'them'} out")  # fmt: skip
        for name, users in _PROVIDER_OPTIONS.items():  # they were ignored, silently, on the other providers
            if getattr(self, name) != defaults[name] and not set(users) & set(self.providers):
                out.append(f"{name.replace('_', ' ')} applies to the {' or '.join(users)} provider, not asked for "
                           f"({', '.join(self.providers)}): add it, or leave the option out")  # fmt: skip
        return out

    @property
    def symbol_values(self) -> dict[str, int]:
        return dict(self.symbols)


__all__ = [
    "CHANNEL_ORDERS",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "EXAMPLE_NAMES",
    "MAX_BATCH",
    "MAX_IMAGES",
    "MAX_RUNS",
    "MAX_WARMUP",
    "PROVIDER_KEYS",
    "RESIZE_MODES",
    "SCALING_NAMES",
    "EvalConfig",
    "EvalError",
    "InspectConfig",
]
