"""Built-in example models for ONNX eval: ONNX exports of our own networks, made on first use.

The ONNX eval tab and CLI must work with no upload and no download, so the examples are exported
here from the networks in engine/models with seeded random weights (speed and parity do not depend
on trained values). Exports are cached under the cache directory, keyed by name and a format
version, written to a temporary file and renamed, so a crash or two concurrent first uses never
leave a half-written model behind.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import InputError
from engine.core.files import written_whole

_FORMAT = 1  # bump when an export below changes, so stale cached files are not reused
_OPSET = 17
_lock = threading.Lock()


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    description: str
    build: Callable[[], tuple[Any, tuple[Any, ...], list[str], list[str], dict[str, dict[int, str]]]]


def _wav2lip() -> tuple[Any, tuple[Any, ...], list[str], list[str], dict[str, dict[int, str]]]:
    import torch

    from engine.models.wav2lip import Wav2Lip

    model = Wav2Lip().eval()
    args = (torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96))
    axes = {"mel": {0: "batch"}, "face": {0: "batch"}, "frames": {0: "batch"}}
    return model, args, ["mel", "face"], ["frames"], axes


def _s3fd() -> tuple[Any, tuple[Any, ...], list[str], list[str], dict[str, dict[int, str]]]:
    import torch

    from engine.models.s3fd import S3FD

    model = S3FD().eval()
    args = (torch.zeros(1, 3, 384, 640),)
    outputs = [f"{kind}{i}" for i in range(6) for kind in ("cls", "reg")]
    axes = {"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    return model, args, ["image"], outputs, axes


EXAMPLES = {
    "wav2lip": Example(
        "wav2lip",
        "Wav2Lip generator (36.3 M parameters)",
        "mel (batch,1,80,16) + face (batch,6,96,96) -> frames (batch,3,96,96); random weights",
        _wav2lip,
    ),
    "s3fd": Example(
        "s3fd",
        "S3FD face detector (22.5 M parameters)",
        "image (batch,3,384,640) -> six class and box maps; random weights",
        _s3fd,
    ),
}


def example_path(name: str, cache_dir: str | os.PathLike) -> Path:
    """The cached export of one example, exporting it first if needed (a few seconds on a CPU)."""
    if name not in EXAMPLES:
        raise InputError(f"no built-in example {name!r}; available: {', '.join(EXAMPLES)}")
    folder = Path(cache_dir) / "onnx-examples"
    path = folder / f"{name}-v{_FORMAT}-opset{_OPSET}.onnx"
    if path.is_file():
        return path
    with _lock:
        if path.is_file():  # another thread exported it while this one waited
            return path
        with written_whole(path) as tmp:
            _export(EXAMPLES[name], tmp)
    return path


def _export(example: Example, out: Path) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights every time, so the file's hash identifies the example
        model, args, inputs, outputs, axes = example.build()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices are not the user's concern
        torch.onnx.export(
            model,
            args,
            str(out),
            dynamo=False,  # the dynamo exporter needs onnxscript, which the app does not otherwise need
            opset_version=_OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
        )


__all__ = ["EXAMPLES", "Example", "example_path"]
