"""MuseTalk's per-batch network work as one fixed-shape step, and the faster ways to run it (issue #16).

The step (FaceStep): the avatar frames' latents (B, 8, 32, 32) and their audio prompts (B, 50, 384) in, the decoded
faces as uint8 BGR (B, 256, 256, 3) out: the UNet once at timestep 0, the VAE decoder, and decoded_to_bgr, exactly
the operations generate.py ran before, so "eager" keeps upstream's numerics bit for bit. Beside the faces, whether
each decoded face was finite: fp16 can overflow to NaN or infinity, which the uint8 conversion turns into arbitrary
pixels (upstream pastes them); the flag is computed where the decoder's output still exists, so every runtime
(compiled, captured, exported) carries it out. The ways to run it:

- eager: the step as written, the UNet and the decoder timed apart as before; any batch size.
- compile: torch.compile(dynamic=False) of the whole step; every batch is padded to the batch size (the last short
  one, and batches thinned by frames without a face) and cut back, so one graph serves the whole clip.
- cuda-graphs: the eager step captured once per batch shape on CUDA into static buffers and replayed.
- onnx: the step exported once per weights, dtype and batch shape into settings.cache_dir/musetalk-onnx/<key>/ and
  run by ONNX Runtime on the job's device (the CUDA provider on a GPU, the CPU provider on the CPU).
- tensorrt: the same export through ORT's TensorRT provider (its engines cached beside the export).

Why not engine.runtimes' Runtime classes: they build a fresh fp32 copy of a model on the CPU (build_torch), hold
one fixed input set for timing, and take a sweep's options; here the networks are already loaded on the device in
the job's dtype (a second copy would double 1.7 GB) and every batch brings new inputs. What fits is reused: the
one ORT session wrapper (OrtSession, with its fallback check and TensorRT cache), RuntimeUnavailable,
CAPTURE_WARMUP_RUNS of the CUDA-graph runtime and pad_batch.

ONNX sessions take numpy on the host: the inputs are a few hundred KiB a batch and the faces have to come to the
CPU anyway for the blend, so IOBinding would save nothing. A provider that fell back to the CPU is a warning in
the result, worded as ONNX eval words it; for "tensorrt", whose only point is TensorRT, a fallback is an error.
The export key is a hash of the UNet's and VAE's configs and every tensor's bytes (not the files' dates), so
changed weights export again whoever loaded them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from engine.core.device import pad_batch
from engine.core.errors import InputError, one_line
from engine.core.results import RunResult
from engine.lipsync.musetalk.geometry import decoded_to_bgr, decoder_latents
from engine.lipsync.musetalk.stages import timed
from engine.lipsync.musetalk.weights import MuseTalkNetworks
from engine.runtimes.base import RuntimeUnavailable, cuda_index
from engine.runtimes.cuda_graphs import CAPTURE_WARMUP_RUNS

EAGER, COMPILE, CUDA_GRAPHS, ONNX, TENSORRT = "eager", "compile", "cuda-graphs", "onnx", "tensorrt"
RUNTIMES = (EAGER, COMPILE, CUDA_GRAPHS, ONNX, TENSORRT)  # LipSyncConfig.musetalk_runtime's choices
STEP_STAGE = "unet + vae decode"  # the fused paths' per-batch stage (eager keeps "unet" and "vae decode")
OPSET = 17
EXPORT_VERSION = 2  # part of the export key: bump when the exported graph changes
EXPORT_FOLDER = "musetalk-onnx"  # under settings.cache_dir
KEPT_EXPORTS = 2  # the exports kept there, most recently used first
STEP_FILE = "face_step.onnx"
INPUT_NAMES, OUTPUT_NAMES = ("latents", "prompts"), ("faces", "finite")
_ONNX_DTYPES = {torch.float32: "fp32", torch.float16: "fp16"}


class StepFaces(NamedTuple):
    """One batch's decoded faces, uint8 BGR (B, 256, 256, 3), and per face whether the decoder's output was finite
    (B,) bool: a face that was not must not be pasted."""

    faces: torch.Tensor
    finite: torch.Tensor


class FaceStep(nn.Module):
    """One batch's network work: latents and prompts -> uint8 BGR faces and their finite flags (StepFaces' fields,
    as a plain tuple for the exporters), on the networks' device and dtype."""

    def __init__(self, unet: nn.Module, vae: nn.Module) -> None:
        super().__init__()
        self.unet, self.vae = unet, vae
        self.scaling_factor = float(vae.config.scaling_factor)
        device = next(unet.parameters()).device
        self.register_buffer("timestep", torch.tensor([0], device=device), persistent=False)  # upstream's one step

    def predict(self, latents: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, self.timestep, encoder_hidden_states=prompts).sample

    def decode(self, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = decoder_latents(predicted, self.scaling_factor).to(self.vae.dtype)
        images = self.vae.decode(latents).sample
        return decoded_to_bgr(images), torch.isfinite(images).flatten(1).all(dim=1)

    def forward(self, latents: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.predict(latents, prompts))


def check_runtime(runtime: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before any work, a runtime that cannot run here: InputError for a name or precision it does not
    take, RuntimeUnavailable (a SetupError) naming what is missing."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown MuseTalk runtime {runtime!r}; accepted: {', '.join(RUNTIMES)}")
    on_cuda = torch.device(device).type == "cuda"
    if runtime == CUDA_GRAPHS and not on_cuda:
        raise RuntimeUnavailable(
            "the cuda-graphs MuseTalk runtime needs a CUDA GPU (this job runs on the CPU); use eager, compile or onnx"
        )
    if runtime == TENSORRT and not on_cuda:
        raise RuntimeUnavailable(
            "the tensorrt MuseTalk runtime needs a CUDA GPU and onnxruntime-gpu with TensorRT's libraries "
            "(this job runs on the CPU); use onnx for ONNX Runtime on the CPU"
        )
    if runtime not in (ONNX, TENSORRT):
        return
    if dtype not in _ONNX_DTYPES or (not on_cuda and dtype != torch.float32):
        accepted = "fp32 or fp16" if on_cuda else "fp32 (on the CPU)"
        raise InputError(f"the {runtime} MuseTalk runtime runs {accepted}, not {dtype}: choose another --precision")
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeUnavailable(
            f"the {runtime} MuseTalk runtime needs onnxruntime (pip install onnxruntime-gpu)"
        ) from None
    if runtime == TENSORRT and "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise RuntimeUnavailable(
            "the tensorrt MuseTalk runtime needs onnxruntime-gpu built with TensorrtExecutionProvider "
            f"(this onnxruntime offers {', '.join(ort.get_available_providers())})"
        )


class StepRunner(ABC):
    """Runs FaceStep on batches of at most `batch_size` rows; calling it returns StepFaces (on the device or the
    CPU). What ran, and warnings for the result, are reported by `report`."""

    name: ClassVar[str]

    def __init__(self, networks: MuseTalkNetworks, batch_size: int) -> None:
        self.networks, self.batch_size = networks, int(batch_size)
        self.device = networks.device
        self.step = FaceStep(networks.unet, networks.vae).eval()
        self.warnings: list[str] = []
        self.ran_on = f"pytorch ({self.device.type})"

    @abstractmethod
    def __call__(self, latents: torch.Tensor, prompts: torch.Tensor, result: RunResult | None = None) -> StepFaces:
        """The faces of one batch; with `result`, its stages timed."""

    def rows(self, latents: torch.Tensor) -> int:
        rows = latents.shape[0]
        if not 1 <= rows <= self.batch_size:
            raise ValueError(f"a batch of {rows} rows for a step of batch size {self.batch_size}")
        return rows

    def metrics(self) -> dict[str, Any]:
        return {"musetalk_runtime": self.name, "musetalk_runtime_ran_on": self.ran_on}

    def report(self, result: RunResult) -> None:
        """What ran into the result's metrics, and this step's warnings (again for every run it serves)."""
        result.metrics.update(self.metrics())
        for message in self.warnings:
            result.warn(message)


class FixedShapeStep(StepRunner):
    """A runtime specialised to one input shape (a compiled graph, a captured graph, an export): every batch is
    padded to the batch size and cut back, so one of them serves the whole clip; the first batch of a shape is timed
    as `first_stage` (it compiles, captures or exports), the rest as STEP_STAGE."""

    first_stage: ClassVar[str]

    def __init__(self, networks: MuseTalkNetworks, batch_size: int) -> None:
        super().__init__(networks, batch_size)
        self._ready: set[tuple] = set()  # input shapes already compiled, captured or exported
        self._lock = threading.Lock()  # a cached runner may serve two jobs of one worker: one batch at a time

    def __call__(self, latents: torch.Tensor, prompts: torch.Tensor, result: RunResult | None = None) -> StepFaces:
        rows = self.rows(latents)
        latents, prompts = pad_batch(latents, self.batch_size), pad_batch(prompts, self.batch_size)
        shape = (tuple(latents.shape), tuple(prompts.shape), latents.dtype)
        first = shape not in self._ready
        with self._lock, timed(result, self.first_stage if first else STEP_STAGE, self.device, rows):
            faces, finite = self.run(latents, prompts)
            self._ready.add(shape)
        return StepFaces(faces[:rows], finite[:rows])

    @abstractmethod
    def run(self, latents: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The faces and their finite flags for a batch of exactly batch_size rows."""


class EagerStep(StepRunner):
    """Today's path: any batch size, the UNet and the decoder timed as their own stages."""

    name = EAGER

    def __call__(self, latents: torch.Tensor, prompts: torch.Tensor, result: RunResult | None = None) -> StepFaces:
        rows = self.rows(latents)
        with torch.inference_mode():
            with timed(result, "unet", self.device, rows):
                predicted = self.step.predict(latents, prompts)
            with timed(result, "vae decode", self.device, rows):
                return StepFaces(*self.step.decode(predicted))


class CompiledStep(FixedShapeStep):
    """torch.compile of the step at one batch shape; the first batch pays the compilation (stage "compile")."""

    name = COMPILE
    first_stage = "compile"

    def __init__(self, networks: MuseTalkNetworks, batch_size: int) -> None:
        super().__init__(networks, batch_size)
        self.compiled = torch.compile(self.step, dynamic=False)

    def run(self, latents: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.compiled(latents, prompts)


class CudaGraphStep(FixedShapeStep):
    """The eager step captured into a CUDA graph per batch shape; a run copies the inputs into the graph's static
    buffers and replays it (one launch instead of hundreds of kernels)."""

    name = CUDA_GRAPHS
    first_stage = "cuda graph capture"

    def __init__(self, networks: MuseTalkNetworks, batch_size: int) -> None:
        if networks.device.type != "cuda":
            raise RuntimeUnavailable("the cuda-graphs MuseTalk runtime needs a CUDA GPU (this job runs on the CPU)")
        super().__init__(networks, batch_size)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, tuple]] = {}

    def _capture(self, latents: torch.Tensor, prompts: torch.Tensor) -> tuple:
        static_latents, static_prompts = latents.clone(), prompts.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # cuDNN and cuBLAS choose their algorithms before the capture
            for _ in range(CAPTURE_WARMUP_RUNS):
                self.step(static_latents, static_prompts)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = self.step(static_latents, static_prompts)
        return graph, static_latents, static_prompts, static_outputs

    def run(self, latents: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (tuple(latents.shape), tuple(prompts.shape), latents.dtype)
        # torch.cuda.graph captures on a stream of the current device: on any other card it would capture nothing
        # (and replay nothing), so the step's card is made current for the capture and every replay.
        with torch.inference_mode(), torch.cuda.device(self.device):
            if shape not in self.graphs:
                self.graphs[shape] = self._capture(latents, prompts)
            graph, static_latents, static_prompts, static_outputs = self.graphs[shape]
            static_latents.copy_(latents)
            static_prompts.copy_(prompts)
            graph.replay()
            faces, finite = static_outputs
            return faces.clone(), finite.clone()  # the next replay overwrites the static outputs


def weights_fingerprint(step: FaceStep) -> str:
    """A hash of the UNet's and VAE's configs and of every tensor's name, shape, dtype and bytes: the export's
    weights part of its key (a second or so for the real networks, once per step runner)."""
    digest = hashlib.sha256()
    for part in (step.unet, step.vae):
        digest.update(json.dumps(dict(part.config), sort_keys=True, default=str).encode())
        for name, tensor in part.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            host = tensor.detach().to("cpu").contiguous()
            digest.update(host.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def export_key(fingerprint: str, dtype: torch.dtype, latents_shape: tuple, prompts_shape: tuple) -> str:
    """The export's folder name: weights, dtype, batch shape, export version, opset and torch's version."""
    version = ".".join(torch.__version__.split(".")[:2])
    text = f"v{EXPORT_VERSION}|opset{OPSET}|torch{version}|{fingerprint}|{dtype}|{latents_shape}|{prompts_shape}"
    return f"{_ONNX_DTYPES[dtype]}-b{latents_shape[0]}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def export_step(step: FaceStep, latents: torch.Tensor, prompts: torch.Tensor, folder: Path) -> Path:
    """The step exported at these inputs' exact shapes (no free axes) into `folder`, written whole or not at all:
    into a temporary sibling first, then renamed (a second process that got there first wins)."""
    target = folder / STEP_FILE
    if target.is_file():
        return target
    shutil.rmtree(folder, ignore_errors=True)  # what is there without the step file is left over (its TRT engines)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                step, (latents.clone(), prompts.clone()), str(tmp / STEP_FILE), dynamo=False, opset_version=OPSET,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            )  # fmt: skip  # dynamo=False: the dynamo exporter needs onnxscript, which the app does not otherwise need
        try:
            tmp.rename(folder)
        except OSError:
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prune_exports(parent: Path, keep: int) -> list[Path]:
    """All but the `keep` most recently used exports under `parent` removed: each is about 1.9 GB in fp16 (3.7 GB in
    fp32), and a new export comes with every change of weights, precision or batch size."""
    exports = [p for p in parent.iterdir() if p.is_dir() and (p / STEP_FILE).is_file()]
    exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in exports[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return exports[keep:]


class OnnxStep(FixedShapeStep):
    """The step exported to ONNX (once per weights, dtype and batch shape, cached on disk) and run by ONNX Runtime:
    "onnx" on the job's device (CUDA provider on a GPU, CPU provider on the CPU), "tensorrt" through TensorRT."""

    first_stage = "onnx export + session"

    def __init__(self, networks: MuseTalkNetworks, batch_size: int, runtime: str, cache_dir: str | os.PathLike,
                 gpu_memory_fraction: float = 0.9) -> None:  # fmt: skip
        check_runtime(runtime, networks.device, networks.dtype)
        super().__init__(networks, batch_size)
        self.name = runtime  # type: ignore[misc]
        on_cuda = self.device.type == "cuda"
        self.provider = "trt" if runtime == TENSORRT else ("cuda" if on_cuda else "cpu")
        self.cache_dir, self.gpu_memory_fraction = Path(cache_dir), gpu_memory_fraction
        self.fingerprint: str | None = None
        self.sessions: dict[tuple, Any] = {}  # input shapes -> OrtSession
        self.exports: dict[tuple, Path] = {}  # input shapes -> the .onnx file
        self.exported = 0  # exports made since the last report (0: every one came from the cache)

    def _session(self, latents: torch.Tensor, prompts: torch.Tensor) -> Any:
        from engine.runtimes.ort_session import OrtOptions, OrtSession, SessionError

        if self.fingerprint is None:
            self.fingerprint = weights_fingerprint(self.step)
        dtype = self.networks.dtype
        folder = self.cache_dir / EXPORT_FOLDER / export_key(self.fingerprint, dtype, tuple(latents.shape),
                                                               tuple(prompts.shape))  # fmt: skip
        if not (folder / STEP_FILE).is_file():
            self.exported += 1
        path = export_step(self.step, latents, prompts, folder)
        os.utime(folder)  # used now: the exports least recently used go first
        prune_exports(folder.parent, KEPT_EXPORTS)
        options = OrtOptions(
            provider=self.provider, device_id=cuda_index(str(self.device)), cuda_tf32=False,
            trt_fp16=dtype == torch.float16, trt_cache_dir=folder / "trt", gpu_memory_fraction=self.gpu_memory_fraction,
        )  # fmt: skip
        try:
            session = OrtSession(path, options)
        except SessionError as exc:
            raise RuntimeUnavailable(
                f"the {self.name} MuseTalk runtime could not start ONNX Runtime: {one_line(exc)}"
            ) from exc
        self.ran_on = session.ran_on
        if session.fell_back:
            if self.name == TENSORRT:
                session.close()
                raise RuntimeUnavailable(
                    f"the tensorrt MuseTalk runtime asked for {session.requested} but ONNX Runtime would run on "
                    f"{session.ran_on} ({session.fallback_reason}): install TensorRT's libraries for onnxruntime-gpu"
                )
            self.warnings.append(
                f"WARNING: {session.requested} was requested but the MuseTalk {self.name} step runs on "
                f"{session.ran_on} ({session.fallback_reason}); its figures measure {session.ran_on}, not "
                f"{session.requested}"
            )
        self.exports[(tuple(latents.shape), tuple(prompts.shape))] = path
        return session

    def run(self, latents: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (tuple(latents.shape), tuple(prompts.shape))
        if shape not in self.sessions:
            self.sessions[shape] = self._session(latents, prompts)
        session = self.sessions[shape]
        feeds = {
            name: np.ascontiguousarray(t.detach().to("cpu").numpy())
            for name, t in zip(INPUT_NAMES, (latents, prompts), strict=True)
        }
        faces, finite = session.run(feeds)
        return torch.from_numpy(faces), torch.from_numpy(finite)

    def metrics(self) -> dict[str, Any]:
        files = sorted(str(path) for path in self.exports.values())
        return {**super().metrics(), "musetalk_onnx": files[0] if len(files) == 1 else files,
                "musetalk_onnx_exported": self.exported > 0}  # fmt: skip

    def report(self, result: RunResult) -> None:
        super().report(result)
        self.exported = 0  # the next run's count starts again

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()


def make_step(
    networks: MuseTalkNetworks,
    runtime: str = EAGER,
    batch_size: int = 8,
    *,
    cache_dir: str | os.PathLike | None = None,
    gpu_memory_fraction: float = 0.9,
) -> StepRunner:
    """The runner of `runtime` for these networks at `batch_size` (compile, capture and export happen on its first
    batch). `cache_dir` holds ONNX exports (default: the settings' cache_dir)."""
    check_runtime(runtime, networks.device, networks.dtype)
    if runtime == EAGER:
        return EagerStep(networks, batch_size)
    if runtime == COMPILE:
        return CompiledStep(networks, batch_size)
    if runtime == CUDA_GRAPHS:
        return CudaGraphStep(networks, batch_size)
    if cache_dir is None:
        from engine.core.settings import get_settings

        cache_dir = get_settings().cache_dir
    return OnnxStep(networks, batch_size, runtime, cache_dir, gpu_memory_fraction)


__all__ = [
    "COMPILE",
    "CUDA_GRAPHS",
    "EAGER",
    "ONNX",
    "RUNTIMES",
    "STEP_STAGE",
    "TENSORRT",
    "CompiledStep",
    "CudaGraphStep",
    "EagerStep",
    "FaceStep",
    "FixedShapeStep",
    "OnnxStep",
    "StepFaces",
    "StepRunner",
    "check_runtime",
    "export_key",
    "export_step",
    "make_step",
    "prune_exports",
    "weights_fingerprint",
]
