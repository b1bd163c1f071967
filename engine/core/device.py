"""Device choice, what the device supports, backend flags, memory fraction, OOM back-off.

Everything that decides *where* and *how* tensors run goes through here, so a run's
result can say exactly which device and precision it used, and so out-of-memory handling
is one shared mechanism instead of a try/except in every pipeline.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from engine.core.errors import InputError, SetupError
from engine.core.settings import validate_device_spec

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeviceError(SetupError):
    """The requested device cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run will use and, when it is not what was asked for, why."""

    device: torch.device
    requested: str
    reason: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def cuda_unavailable_reason() -> str:
    """Why torch sees no CUDA device, in words a user can act on."""
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return (
            f"PyTorch {torch.__version__} is built for CUDA {torch.version.cuda}, but no usable NVIDIA GPU "
            "or driver was found (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
        )
    return ""


def resolve_device(spec: str = "auto") -> DeviceChoice:
    """Turn auto|cpu|cuda|cuda:N into a torch device; asking for a GPU that is not there is an error."""
    spec = validate_device_spec(spec)
    available = torch.cuda.is_available()
    if spec == "cpu":  # where there is no GPU that is the reason, whoever chose the CPU (the app's broker does);
        # GPUs hidden on purpose (a Ray CPU actor empties CUDA_VISIBLE_DEVICES) are not "no GPU"
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES") == ""
        reason = "CPU requested" if available or hidden else f"no GPU: {cuda_unavailable_reason()}"
        return DeviceChoice(torch.device("cpu"), spec, reason)
    if spec == "auto":
        if available:
            return DeviceChoice(torch.device("cuda", 0), spec, "CUDA is available")
        return DeviceChoice(torch.device("cpu"), spec, f"no GPU: {cuda_unavailable_reason()}")
    if not available:
        raise DeviceError(f"device {spec!r} requested but {cuda_unavailable_reason()}; use --device cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {spec!r} requested but only {count} CUDA device(s) are visible (0..{count - 1})")
    return DeviceChoice(torch.device("cuda", index), spec, "requested")


@dataclass(frozen=True)
class DeviceCapabilities:
    """What a device can do, as the precision and speed options need to know it."""

    device: str
    name: str
    compute_capability: str | None = None
    total_memory_bytes: int | None = None
    multiprocessors: int | None = None
    fp16: bool = False
    bf16: bool = False
    tf32: bool = False
    tensor_cores: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def precisions(self) -> list[str]:
        """Precisions worth offering on this device, fastest-safe first after fp32."""
        out = ["fp32"]
        if self.tf32:
            out.append("tf32")
        if self.fp16:
            out.append("fp16")
        if self.bf16:
            out.append("bf16")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precisions": self.precisions}


def capabilities(device: torch.device) -> DeviceCapabilities:
    if device.type != "cuda":
        import platform

        return DeviceCapabilities(
            device=str(device),
            name=platform.processor() or platform.machine() or "CPU",
            bf16=True,
            notes=[
                "CPU: fp16 is not offered (emulated and slow); bf16 runs but is fast only with AVX-512 BF16 or AMX",
            ],
        )
    props = torch.cuda.get_device_properties(device)
    major, minor = props.major, props.minor
    notes = []
    if major < 8:
        notes.append(f"compute capability {major}.{minor} < 8.0: no bf16 or TF32 tensor cores")
    if (major, minor) == (6, 1):
        notes.append("compute capability 6.1: fp16 arithmetic runs at 1/64 of fp32's rate; auto precision is fp32")
    elif major < 7:
        notes.append("no tensor cores: fp16 saves memory but gives little speed")
    return DeviceCapabilities(
        device=str(device),
        name=props.name,
        compute_capability=f"{major}.{minor}",
        total_memory_bytes=int(props.total_memory),
        multiprocessors=int(props.multi_processor_count),
        fp16=major >= 6,
        bf16=major >= 8,
        tf32=major >= 8,
        tensor_cores=major >= 7,
        notes=notes,
    )


def auto_precision(caps: DeviceCapabilities) -> str:
    """What precision `auto` runs: fp16 on a GPU that computes it at least as fast as fp32 (tensor cores from
    compute capability 7.0; the P100's and Jetson's double-rate fp16), else fp32. Pascal's 6.1 chips (GTX 10x0,
    Tesla P4 and P40) run fp16 arithmetic at 1/64 of fp32's rate, and cards older than 6.0 have none to offer.
    Never bf16: it is visibly lossy on Wav2Lip."""
    return "fp16" if caps.fp16 and caps.compute_capability != "6.1" else "fp32"


def precision_dtype(precision: str, caps: DeviceCapabilities) -> torch.dtype:
    """Map fp32|tf32|fp16|bf16 to a dtype, refusing what the device cannot do (with the reason)."""
    precision = precision.lower()
    if precision not in ("fp32", "tf32", "fp16", "bf16"):
        raise InputError(f"precision {precision!r} is not one of fp32, tf32, fp16, bf16")
    if precision not in caps.precisions:
        raise DeviceError(
            f"{precision} is not supported on {caps.name} ({caps.device}); supported: {', '.join(caps.precisions)}"
        )
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


@dataclass(frozen=True)
class BackendFlags:
    cudnn_benchmark: bool
    tf32: bool


def apply_backend_flags(cudnn_benchmark: bool = True, tf32: bool = False) -> BackendFlags:
    """Set cuDNN autotuning and TF32 explicitly, so results never depend on library defaults.

    TF32 is off unless asked for: it changes float32 results by about 1e-3 relative.
    """
    torch.backends.cudnn.benchmark = cudnn_benchmark
    mode = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    return current_backend_flags()


def current_backend_flags() -> BackendFlags:
    return BackendFlags(
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        tf32=torch.backends.cuda.matmul.fp32_precision == "tf32",
    )


def pad_batch(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """The batch filled up to `rows` by repeating its last row: compiled graphs and TensorRT engines then see
    one shape and are built once (callers cut the outputs back)."""
    if tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(rows - tensor.shape[0], *tensor.shape[1:])])


def set_memory_fraction(fraction: float, device: torch.device) -> bool:
    """Cap this process's share of GPU memory; returns False (and does nothing) on a CPU device.

    PyTorch checks the cap only when it asks the driver for more memory, so blocks its cache already holds (a
    previous job's, under a larger share) would be handed out past a lowered cap: lowering it empties the cache."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"memory fraction {fraction} must be in (0, 1]")
    if device.type != "cuda":
        return False
    if fraction < torch.cuda.get_per_process_memory_fraction(device):
        torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return True


def usable_gpu_memory(device: torch.device) -> int:
    """Bytes this process may still allocate on `device`: the card's free memory, within this process's cap (a job
    worker sharing its GPU is capped at its share: set_memory_fraction) less what PyTorch already holds."""
    free, total = torch.cuda.mem_get_info(device)
    cap = torch.cuda.get_per_process_memory_fraction(device) * total
    return int(max(0.0, min(free, cap - torch.cuda.memory_reserved(device))))


def usable_host_memory(job_memory_gb: float) -> int:
    """Bytes this process may still take from the host: what the kernel reports available, within the job's cap
    (AVATARBENCH_JOB_MEMORY_GB, against which a broker worker's whole RSS is counted) less what it already holds."""
    import psutil

    held = psutil.Process().memory_info().rss
    return int(max(0.0, min(psutil.virtual_memory().available, job_memory_gb * 2**30 - held)))


def batch_within(budget: float, per_sample: int) -> int:
    """The largest power of two whose samples take at most `budget` bytes (at least 1)."""
    fits = int(budget // max(1, per_sample))
    return 2 ** int(math.log2(fits)) if fits >= 1 else 1


# Texts that ONNX Runtime and CUDA libraries use for a failed allocation. ORT raises its own
# exception types (RuntimeException / Fail) for every error, so only the text tells OOM apart.
_OOM_MARKERS = (
    "out of memory",
    "failed to allocate memory",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "bfcarena",
    # PyTorch's host allocator, where malloc fails (a memory limit, no overcommit); Linux's words, then Windows'
    "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True only for a real out-of-memory error (PyTorch's type, or ORT/CUDA allocation failures)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    module = type(exc).__module__ or ""
    if "onnxruntime" in module or isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _OOM_MARKERS)
    return False


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_backoff(
    fn: Callable[[int], T],
    batch_size: int,
    min_batch_size: int = 1,
    on_backoff: Callable[[int, int, BaseException], None] | None = None,
) -> tuple[T, int]:
    """Call fn(batch_size); on a real OOM halve the batch and retry, down to min_batch_size.

    Returns (fn's result, the batch size that worked). Any other error propagates unchanged,
    with its own message and traceback: a shape bug must not be retried into a smaller batch.
    """
    if batch_size < 1 or min_batch_size < 1:
        raise ValueError("batch sizes must be >= 1")
    while True:
        try:
            return fn(batch_size), batch_size
        except Exception as exc:
            if not is_out_of_memory(exc) or batch_size <= min_batch_size:
                raise
            smaller = max(min_batch_size, batch_size // 2)
            log.warning("out of memory at batch %d, retrying at %d: %s", batch_size, smaller, exc)
            if on_backoff is not None:
                on_backoff(batch_size, smaller, exc)
        # Outside the except block the traceback (and the tensors its frames hold) is gone,
        # so the allocator can really give the memory back before the retry.
        release_cached_memory()
        batch_size = smaller


def not_finite_hint(dtype: Any) -> str:
    """Why a network's output was NaN or infinite: fp16's range, or (at fp32 or bf16) what it was given."""
    if dtype == torch.float16:
        return "fp32 or bf16 have the range fp16 lacks"
    return "not a matter of range at this precision: the weights or the inputs hold NaN or infinite values"
