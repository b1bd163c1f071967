"""Evaluate an inspected ONNX model with ONNX Runtime: latency, batch sweep, provider parity, accuracy.

`inspect_model` has already accepted the model; this module runs it. Every number in the report says
which execution provider really produced it: onnxruntime-gpu silently falls back to the CPU when the
CUDA or TensorRT libraries do not load, so each session (engine.runtimes.ort_session) compares its
`get_providers()` with the request, and a fallback becomes a loud warning and a `fell_back` flag on its
rows (the rows still run, so the user sees what the fallback measured, labelled as such).

Decisions worth knowing:
- Inputs are generated (or loaded) once per batch size from the seed, so every provider sees the same
  tensors; parity and accuracy use the first batch size only.
- The CPU session is the parity reference. When the user did not ask for CPU it runs once, untimed, at
  the first batch size, and its session is marked `reference_only` (no CPU rows, so no speed-up).
- Outputs are budgeted like inputs (Limits.max_output_bytes): each session keeps its outputs at the first batch
  size for parity beside one run's at the batch being measured, and that total is refused at submit when the
  shapes tell it is over; sizes only running can tell are checked after the first run (see _OutputBudget). Parity
  and accuracy walk the outputs in chunks, never converting a whole output to float64.
- An out-of-memory row is recorded, and the larger batch sizes of that provider are skipped rather
  than retried smaller: the user asked for those batch sizes, a silently smaller one would mislead.
- The device-resident (IOBinding) figure is measured only when a GPU provider really runs; on the
  CPU it would be the same run, so it is None and marked not applicable.
- Non-finite results stay as float('inf') / float('nan') (json.dumps writes Infinity / NaN).
- Empty runs/warmup are chosen per session by where it really runs (engine/onnx/timing.py): the defaults on a GPU,
  a quick budget on the CPU (a fallback included), said in the report's notes; each row records its counts, and a
  latency too scattered to trust carries a spread warning (also in the report's warnings).
"""

from __future__ import annotations

import math
import os
import time
import tokenize
import zipfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import one_line
from engine.core.npz import npy_header
from engine.core.words import format_bytes
from engine.onnx.config import DEFAULT_RUNS, DEFAULT_WARMUP, EvalConfig, EvalError
from engine.onnx.images import (
    ImageInputError,
    ImageOptions,
    images_to_tensor,
    looks_like_images,
    looks_like_one_image,
    pick_image_input,
)
from engine.onnx.model import Limits, ModelInfo, TensorSpec
from engine.onnx.symbols import batch_symbols, check_input_budget, default_symbols, output_bytes, tensor_bytes
from engine.onnx.timing import auto_runs_note, spread_warning, timed_count, warmup_count
from engine.runtimes.ort_session import (
    BITS_ONLY,
    GPU_KEYS,
    PROVIDERS,
    OrtOptions,
    OrtSession,
    SessionError,
    runtime_limits,
)
from engine.system.gpu_memory import gpu_memory, nvml_source

_SYNTHETIC_INT_HIGH = 100
# What reading a damaged .npz raises: numpy parses a .npy header as a Python literal (SyntaxError, TokenError).
_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, SyntaxError, tokenize.TokenError)
_REL_FLOOR = 1e-6
PARTIAL_NOTE = "the evaluation stopped before its end"
_COMPARE_CHUNK = 1 << 20  # elements compared at a time: each float64 temporary of a chunk is 8 MiB

Progress = Callable[[float, str], Any]


# ---------------------------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Where an evaluation runs: the server's (or the CLI's) choice, never part of a submitted request."""

    device_id: int = 0  # the CUDA device the GPU providers use
    gpu_memory_fraction: float = 0.9  # ORT's arena limit on that device
    trt_cache_dir: str | None = None  # TensorRT's engine cache (default: the settings' cache dir)


def _image_options(config: EvalConfig) -> ImageOptions:
    return ImageOptions(resize=config.image_resize, scaling=config.image_scaling, channels=config.image_channels)


# ---------------------------------------------------------------------------------------------- inputs


def _np_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return spec.numpy_dtype()
    except TypeError:
        raise EvalError(
            f"input {spec.name!r} has type {spec.dtype}, which this evaluation cannot build; supported: "
            "float16/32/64, bfloat16, the float8 types, int8..int64, uint8..uint64, bool, string (from an inputs .npz)"
        ) from None


def _synthetic_dtype(spec: TensorSpec) -> np.dtype:
    """The dtype synthetic inputs fill ``spec`` with; EvalError for one they cannot (a string, a packed 4-bit type)."""
    dtype = _np_dtype(spec)
    if not (spec.is_float or dtype.kind in "iub"):
        raise EvalError(
            f"input {spec.name!r} is {spec.type_name}: synthetic inputs are numeric or bool only; "
            "give its values in an inputs .npz"
        )
    return dtype


def synthetic_inputs(specs: list[TensorSpec], values: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Reproducible inputs: the same seed and shapes give the same tensors on every provider and run."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape, dtype = spec.concrete(values), _synthetic_dtype(spec)
        if spec.is_float:
            draw = rng.random(shape, dtype=np.float64 if dtype == np.float64 else np.float32)
            out[spec.name] = draw.astype(dtype, copy=False)
        elif dtype.kind in "iu":
            high = min(_SYNTHETIC_INT_HIGH, int(np.iinfo(dtype).max) + 1)
            out[spec.name] = rng.integers(0, high, size=shape, dtype=dtype)
        else:
            out[spec.name] = np.asarray(rng.random(shape) < 0.5)  # an array even for a scalar's shape ()
    return out


def _npz_headers(path: str | os.PathLike, what: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array, read from the .npy headers before any data is allocated."""
    name = Path(path).name
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        accepted = "a zip of .npy arrays, as np.savez writes"
        raise EvalError(f"{what} {name} is not a readable .npz ({accepted}): {one_line(exc)}") from None
    headers = {}
    with zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            if not member.filename.endswith(".npy"):
                raise EvalError(f"{what} {name}: member {member.filename!r} is not a .npy array")
            try:
                with zf.open(member) as f:
                    shape, dtype = npy_header(f)
            except _NPZ_ERRORS as exc:
                raise EvalError(
                    f"{what} {name}: array {member.filename[:-4]!r} cannot be read: {one_line(exc)}"
                ) from None
            headers[member.filename[:-4]] = (shape, dtype)
    return headers


def _load_arrays(path: str | os.PathLike, names: list[str], what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in names}
    except _NPZ_ERRORS as exc:
        raise EvalError(f"{what} {Path(path).name} cannot be read: {one_line(exc)}") from None


def _fits(array: np.ndarray, dtype: np.dtype) -> bool:
    """Whether a downcast keeps the values: integers within the type's range (a round trip would pass -5 as a
    uint8 251), finite floats stay finite."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return array.size == 0 or (info.min <= int(array.min()) and int(array.max()) <= info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype)
    return bool(np.array_equal(np.isfinite(cast), np.isfinite(array)))


def _cast_rule(have: np.dtype, want: np.dtype) -> str:
    """'same', 'safe' (always exact), 'check' (allowed when the values fit), 'bits' (an ml_dtypes array as np.save
    writes it: raw bytes of the wanted width, read as the model's type) or 'refuse'."""
    if have == want:
        return "same"
    if want.name in BITS_ONLY:
        return "bits" if have.kind == "V" and have.itemsize == want.itemsize else "refuse"
    if have.kind in "fiub" and np.can_cast(have, want, casting="safe"):
        return "safe"
    if have.kind == want.kind == "f" or (have.kind in "iu" and want.kind in "iu"):
        return "check"
    if have.kind in "US" and want.kind in "OUS":
        return "safe"
    return "refuse"


def load_npz_inputs(
    path: str | os.PathLike,
    specs: list[TensorSpec],
    values: dict[str, int],
    overridable: Sequence[TensorSpec] = (),
    constants: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """The user's inputs, checked against the model (names, dtypes, shapes at `values`).

    Inputs the file leaves out are not an error: evaluate fills them with synthetic data, and an `overridable` one
    (an initializer listed as a graph input) keeps the model's own value. A name the model does not have is refused
    (a typo would otherwise be silently ignored), and one of its `constants` is refused saying so.
    """
    by_name = {spec.name: spec for spec in (*specs, *overridable)}
    headers = _npz_headers(path, "inputs")
    if not headers:  # every input made up, as with no file, with no word of it
        raise EvalError(f"inputs {Path(path).name} holds no arrays; give one per input, named as the model's: "
                        f"{', '.join(repr(spec.name) for spec in specs) or 'none (it takes no inputs)'}")  # fmt: skip
    _refuse_unknown_inputs(sorted(set(headers) - set(by_name)), specs, overridable, constants)
    for name, (shape, dtype) in headers.items():
        spec = by_name[name]
        want_shape, want_dtype = spec.concrete(values), _np_dtype(spec)
        if shape != want_shape:
            at = ", ".join(f"{k}={v}" for k, v in values.items() if k in spec.shape) or "fixed shape"
            why = (
                "the shape of the model's own value, which it replaces"
                if name not in {s.name for s in specs}
                else f"{spec.shape} at {at}; npz inputs must match the first batch size"
            )
            raise EvalError(
                f"input {name!r} in the .npz has shape {list(shape)}, the model wants {list(want_shape)} ({why})"
            )
        if _cast_rule(dtype, want_dtype) == "refuse":
            save_as = f"ml_dtypes.{want_dtype}" if want_dtype.name in BITS_ONLY else str(want_dtype)
            raise EvalError(
                f"input {name!r} in the .npz is {dtype}, the model wants {want_dtype}; {dtype} cannot be converted "
                f"without changing values: save it as {save_as}"
            )
    arrays = _load_arrays(path, list(headers), "inputs")
    out = {}
    for name, array in arrays.items():
        want = _np_dtype(by_name[name])
        rule = _cast_rule(array.dtype, want)
        if rule == "check" and not _fits(array, want):
            raise EvalError(f"input {name!r} in the .npz is {array.dtype} with values that do not fit {want}")
        if rule == "bits":
            out[name] = np.asarray(array, order="C").view(want)  # asarray: ascontiguousarray makes a scalar 1-d
        elif want.kind == "O":  # a string input: ONNX Runtime reads str objects (fixed-width bytes it overruns)
            out[name] = _text_array(array, name)
        else:
            out[name] = np.asarray(array, dtype=want, order="C")
    return out


def _refuse_unknown_inputs(
    unknown: list[str], specs: list[TensorSpec], overridable: Sequence[TensorSpec], constants: Collection[str]
) -> None:
    """An .npz array the model cannot take: one of its constants (said so: ONNX Runtime refuses to set one), or a
    name it does not have at all; the message lists what may be given."""
    if not unknown:
        return
    accepted = ", ".join(repr(spec.name) for spec in specs) or "none (it takes no inputs)"
    if overridable:
        accepted += f"; with a default a run may replace: {', '.join(repr(spec.name) for spec in overridable)}"
    if fixed := [name for name in unknown if name in set(constants)]:
        one = len(fixed) == 1
        raise EvalError(
            f"inputs .npz sets {', '.join(map(repr, fixed))}, {'a constant' if one else 'constants'} of the model (an "
            "initializer not listed as a graph input, or, before IR version 4, any initializer): ONNX Runtime does "
            f"not let a run set {'it' if one else 'them'}; leave {'it' if one else 'them'} out (the model's inputs "
            f"are: {accepted})"
        )
    raise EvalError(
        f"inputs .npz has array(s) {', '.join(map(repr, unknown))} that are not model inputs; "
        f"the model's inputs are: {accepted}"
    )


def _text_array(array: np.ndarray, name: str) -> np.ndarray:
    """A string input's values as an object array of str; bytes must be UTF-8 text."""
    if array.dtype.kind == "S":
        try:
            array = np.char.decode(array, "utf-8")
        except UnicodeDecodeError as exc:
            raise EvalError(
                f"input {name!r} in the .npz holds bytes that are not UTF-8 text: {one_line(exc)}"
            ) from None
    return np.asarray(array.astype(object), order="C")


def _load_expected(path: str | os.PathLike, outputs: list[TensorSpec], limits: Limits) -> dict[str, np.ndarray]:
    """Expected values of some or all of the model's outputs (those not in the file are not compared: a model's
    string or sequence outputs, or ones the user has no reference for), keys checked before the model runs; shapes
    are compared with the real outputs afterwards (output shapes are often only known by running)."""
    headers = _npz_headers(path, "expected outputs")
    names = [spec.name for spec in outputs]
    extra = sorted(set(headers) - set(names))
    if extra or not headers:
        found = f"it holds {extra}, which the model does not give" if extra else "it is empty"
        raise EvalError(
            f"expected-outputs .npz holds arrays named after the model's outputs ({', '.join(map(repr, names))}), "
            f"one or more of them: {found}"
        )
    bits = {}  # a bfloat16 or float8 output's values saved as ml_dtypes' type (np.save writes their raw bytes)
    for spec in (spec for spec in outputs if spec.name in headers):
        if not spec.is_numeric:
            raise EvalError(f"expected outputs compare numeric tensor outputs, and output {spec.name!r} is "
                            f"{spec.type_name}: leave it out of the .npz")  # fmt: skip
        shape, dtype = headers[spec.name]
        if _cast_rule(dtype, spec.numpy_dtype()) == "bits":
            bits[spec.name] = spec.numpy_dtype()
        elif dtype.kind not in "fiub":
            raise EvalError(f"expected output {spec.name!r} is {dtype}; accuracy needs numeric arrays")
        if math.prod(shape) > limits.max_input_elements:
            raise EvalError(
                f"expected output {spec.name!r} has {math.prod(shape):,} elements, over {limits.max_input_elements:,}"
            )
    arrays = _load_arrays(path, [n for n in names if n in headers], "expected outputs")
    return {name: array.view(bits[name]) if name in bits else array for name, array in arrays.items()}


# ---------------------------------------------------------------------------------------------- sessions


def _session_options(provider: str, config: EvalConfig, placement: Placement) -> OrtOptions:
    """The session settings of one provider of an evaluation."""
    return OrtOptions(
        provider=provider,
        device_id=placement.device_id,
        cuda_tf32=config.cuda_tf32,
        trt_fp16=config.trt_fp16,
        trt_workspace_gb=config.trt_workspace_gb,
        trt_cache_dir=placement.trt_cache_dir,
        gpu_memory_fraction=placement.gpu_memory_fraction,
        intra_op_threads=config.intra_op_threads,
    )


# ---------------------------------------------------------------------------------------------- metrics


# The fewest timed runs for which a tail percentile is more than the slowest run or a blend of the slowest few: one
# run in 10, 20, 100 lies above p90, p95, p99. With fewer the figure is None (the report says why).
PERCENTILE_MIN_RUNS = {90: 10, 95: 20, 99: 100}


def latency_stats(times_ms: list[float], batch: int) -> dict[str, Any]:
    """Summary of timed runs; std is the sample std (n-1), percentiles interpolate linearly (numpy's), the tail ones
    None below PERCENTILE_MIN_RUNS (p99 of 50 runs was in effect the slowest one)."""
    times = np.asarray(times_ms, dtype=np.float64)
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0):
        raise EvalError("latency_stats needs at least one finite, non-negative time")
    mean = float(times.mean())
    p50, p90, p95, p99 = (
        float(v) if times.size >= PERCENTILE_MIN_RUNS.get(q, 1) else None
        for q, v in zip((50, 90, 95, 99), np.percentile(times, [50, 90, 95, 99]), strict=True)
    )
    return {
        "n": int(times.size),
        "mean_ms": mean,
        "std_ms": float(times.std(ddof=1)) if times.size > 1 else 0.0,
        "min_ms": float(times.min()),
        "max_ms": float(times.max()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
        "p99_ms": p99,
        "throughput_per_s": batch / (mean / 1000.0) if mean > 0 else None,
    }


def _chunks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Two same-shaped arrays walked together in C order, `_COMPARE_CHUNK` elements at a time: views where an array
    is contiguous, a chunk-sized copy where not; never a whole copy of either."""
    flat_a = a.reshape(-1) if a.flags.c_contiguous else a.flat
    flat_b = b.reshape(-1) if b.flags.c_contiguous else b.flat
    for start in range(0, a.size, _COMPARE_CHUNK):
        yield flat_a[start : start + _COMPARE_CHUNK], flat_b[start : start + _COMPARE_CHUNK]


class _Sums:
    """What the error metrics need of |b - a|, gathered chunk by chunk (float64): count, sum, sum of squares,
    maximum (NaN propagates, as in numpy's max) and the cosine's dot products.

    Counts and maxima are exact. A sum adds up its chunks' numpy sums, so it equals the whole-array sum up to float
    rounding, and bit for bit when the arrays fit in one chunk (the same pairwise sum and dot on the same elements).
    """

    def __init__(self) -> None:
        self.count = 0
        self.abs_sum = self.square_sum = self.max_abs = 0.0
        self.dot = self.square_a = self.square_b = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Take in one chunk of each; returns its |b - a|."""
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(b - a)
            if diff.size:
                self.count += diff.size
                self.abs_sum += float(diff.sum())
                self.square_sum += float(np.square(diff).sum())
                self.max_abs = float(np.maximum(self.max_abs, diff.max()))
                self.dot += float(np.dot(a, b))
                self.square_a += float(np.dot(a, a))
                self.square_b += float(np.dot(b, b))
        return diff

    def mean_abs(self) -> float:
        return self.abs_sum / self.count if self.count else 0.0

    def rms(self) -> float:
        return math.sqrt(self.square_sum / self.count) if self.count else 0.0

    def rel_l2(self) -> float:
        """|b - a| / |a| (a the reference): tells fp32, TF32 and fp16 apart where the cosine shows 1.000000 and the
        largest elementwise ratio is one value near zero; 0.0 when both are zero, inf when only the reference is."""
        if self.square_a == 0:
            return 0.0 if self.square_sum == 0 else math.inf
        return math.sqrt(self.square_sum) / math.sqrt(self.square_a)

    def cosine(self) -> float:
        """a·b / (|a| |b|); 1.0 when both are zero (or empty), 0.0 when only one is."""
        norm_a, norm_b = math.sqrt(self.square_a), math.sqrt(self.square_b)
        if norm_a == 0 or norm_b == 0:
            return 1.0 if norm_a == norm_b else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):  # the norms' product can underflow to 0 or overflow
            return float(np.float64(self.dot) / (norm_a * norm_b))


def _tolerance(ref: np.ndarray, other: np.ndarray, both_finite: np.ndarray, common: np.dtype) -> float:
    """The largest |other - ref| where both are finite, computed in `common`, the dtype np.allclose itself compares
    in (inf when it overflows there); 0.0 where none are."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(other.astype(common)[both_finite] - ref.astype(common)[both_finite])
    if diff.size == 0:
        return 0.0
    return float(diff.max()) if np.all(np.isfinite(diff)) else math.inf


def _compare_one(ref: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """The parity statistics of one output, walked in chunks so that no float64 copy of a whole output is made."""
    if ref.shape != other.shape:
        return {"shape_mismatch": True, "reference_shape": list(ref.shape), "shape": list(other.shape)}
    if ref.dtype.kind not in "fiub" or other.dtype.kind not in "fiub":
        return {"shape_mismatch": False, "exact_match": bool(np.array_equal(ref, other))}
    if ref.dtype.kind in "iub" and other.dtype.kind in "iub":
        return _compare_integers(ref, other)
    common = np.result_type(ref.dtype, other.dtype, 1.0)
    sums, max_rel, tolerance, nonfinite_differ = _Sums(), 0.0, 0.0, False
    nan, inf = {"reference": 0, "other": 0}, {"reference": 0, "other": 0}
    for ref_part, other_part in _chunks(ref, other):
        r, o = ref_part.astype(np.float64), other_part.astype(np.float64)
        both = np.isfinite(r) & np.isfinite(o)
        rest_r, rest_o = r[~both], o[~both]
        for counts, test in ((nan, np.isnan), (inf, np.isinf)):
            counts["reference"] += int(test(rest_r).sum())
            counts["other"] += int(test(rest_o).sum())
        nonfinite_differ = nonfinite_differ or not np.all((np.isnan(rest_r) & np.isnan(rest_o)) | (rest_r == rest_o))
        finite_r = r[both]
        diff = sums.add(finite_r, o[both])
        if diff.size:
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(finite_r), _REL_FLOOR)).max()))
        if not nonfinite_differ:  # otherwise the tolerance is inf whatever the values
            tolerance = max(tolerance, _tolerance(ref_part, other_part, both, common))
    # A NaN or inf where the other side has something else is an unbounded difference: the finite positions alone
    # would read as equal (an output all NaN on one provider gave max_abs 0 and cosine 1).
    return {
        "shape_mismatch": False,
        "max_abs": math.inf if nonfinite_differ else sums.max_abs,
        "max_rel": math.inf if nonfinite_differ else max_rel,
        "mean_abs": math.inf if nonfinite_differ else sums.mean_abs(),
        "rel_l2": math.inf if nonfinite_differ else sums.rel_l2(),
        "cosine": sums.cosine() if sums.count else math.nan,
        "nan": nan,
        "inf": inf,
        "finite_compared": sums.count,
        "nonfinite_differ": nonfinite_differ,
        "tolerance_to_pass": math.inf if nonfinite_differ else tolerance,
    }


def _compare_integers(ref: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Integer (and bool) outputs compared exactly: through float64, ids past 2**53 that differ by one compared
    equal. Chunk by chunk, as floats are (as Python integers over a whole output it took 14 s and 2.3 GB for 30
    million int64s); the cosine and the relative difference, float measures, are taken in float64."""
    largest, total, worst_rel = 0, 0.0, 0.0
    sums = _Sums()
    for a, b in _chunks(ref, other):
        diff = _exact_differences(a, b)
        if diff.size:
            largest = max(largest, int(diff.max()))
            total += float(diff.sum(dtype=np.float64))
            floor = np.maximum(np.abs(a.astype(np.float64)), _REL_FLOOR)
            worst_rel = max(worst_rel, float((diff.astype(np.float64) / floor).max()))
        sums.add(a.astype(np.float64), b.astype(np.float64))
    nothing = {"reference": 0, "other": 0}
    return {
        "shape_mismatch": False,
        "max_abs": float(largest),
        "max_rel": worst_rel,
        "mean_abs": total / ref.size if ref.size else 0.0,
        "rel_l2": sums.rel_l2(),
        "cosine": sums.cosine() if sums.count else math.nan,
        "nan": dict(nothing),
        "inf": dict(nothing),
        "finite_compared": int(ref.size),
        "nonfinite_differ": False,
        "tolerance_to_pass": float(largest),
    }


def _exact_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|b - a| of two integer (or bool) chunks, exactly, as uint64 (or Python integers where their types differ
    and no integer type holds both)."""
    common = np.promote_types(a.dtype, b.dtype)
    if common.kind == "b" or (common.kind in "iu" and common.itemsize < 8):
        return np.abs(b.astype(np.int64) - a.astype(np.int64)).astype(np.uint64)
    if common.kind in "iu":  # 64-bit: the difference modulo 2**64 is the true one, which is below 2**64
        ua, ub = (x.astype(common).view(np.uint64) for x in (a, b))
        return np.where(b.astype(common) >= a.astype(common), ub - ua, ua - ub)
    return np.array([abs(int(y) - int(x)) for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=object)


def parity(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: how far `other` is from the reference; tolerance_to_pass is the smallest atol with
    np.allclose(other, ref, rtol=0, atol=t, equal_nan=True) true (inf when NaN/inf positions differ)."""
    out: dict[str, dict] = {}
    for name, ref in reference.items():
        if name not in other:
            out[name] = {"missing": True}
        elif isinstance(ref, list) and all(isinstance(part, np.ndarray) for part in ref):
            out[name] = _compare_sequence(ref, other[name])
        else:
            out[name] = _compare_one(np.asarray(ref), np.asarray(other[name]))
    return out


def _compare_sequence(ref: list[np.ndarray], other: Any) -> dict[str, Any]:
    """A sequence output (its tensors may differ in shape): compared as its tensors end to end, when the other
    provider's has as many tensors of the same shapes."""
    shapes = [list(part.shape) for part in ref]
    other_shapes = [list(np.shape(part)) for part in other] if isinstance(other, list) else None
    if shapes != other_shapes:
        return {"shape_mismatch": True, "reference_shape": shapes, "shape": other_shapes}
    if not ref:
        return {"shape_mismatch": False, "exact_match": True}
    flat = [np.concatenate([np.ravel(part) for part in parts]) for parts in (ref, other)]
    return _compare_one(*flat)


def accuracy(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, dict]:
    """Error of the model's outputs against the user's expected values (in float64, chunk by chunk)."""
    if missing := sorted(set(expected) - set(outputs)):
        raise EvalError(f"expected outputs {missing} are not outputs the model gave")
    out: dict[str, dict] = {}
    for name, want in expected.items():
        got, want = np.asarray(outputs[name]), np.asarray(want)
        if got.shape != want.shape:
            out[name] = {"error": f"shape mismatch: the model gave {list(got.shape)}, expected {list(want.shape)}"}
            continue
        sums, differ = _Sums(), False
        for got_part, want_part in _chunks(got, want):
            g, w = got_part.astype(np.float64), want_part.astype(np.float64)
            both = np.isfinite(g) & np.isfinite(w)
            rest_g, rest_w = g[~both], w[~both]
            differ = differ or not np.all((np.isnan(rest_g) & np.isnan(rest_w)) | (rest_g == rest_w))
            sums.add(g[both], w[both])
        # as parity's: a NaN or inf expected where the model gives it is a match, against anything else unbounded
        # (NaNs matched exactly read mae NaN; NaN against 0 read NaN, not a failure)
        unbounded = math.inf if differ else None
        out[name] = {
            "mae": unbounded or sums.mean_abs(),
            "rmse": unbounded or sums.rms(),
            "max_error": unbounded or sums.max_abs,
            "cosine": sums.cosine() if sums.count else math.nan,
            "nonfinite_differ": differ,
        }
    return out


def topk(logits: np.ndarray, labels: list[int]) -> dict[str, Any]:
    """Top-1 / top-5 accuracy of (N, classes) scores; with fewer than 5 classes top5 uses all of them."""
    scores = np.asarray(logits)
    if scores.ndim < 1 or scores.shape[0] != len(labels):
        raise EvalError(
            f"top-k needs one label per sample: output has {scores.shape[:1]} samples, {len(labels)} labels"
        )
    scores = scores.reshape(len(labels), -1).astype(np.float64)
    classes = scores.shape[1]
    bad = [v for v in labels if not 0 <= int(v) < classes]
    if bad:
        raise EvalError(f"labels {bad[:10]} are outside 0..{classes - 1} (the output has {classes} classes)")
    k5 = min(5, classes)
    order = np.argsort(-scores, axis=1, kind="stable")  # ties: the lower class first
    truth = np.asarray(labels, dtype=np.int64)[:, None]
    # a sample with a NaN or inf score is a miss: sorted, all-NaN scores would put class 0 first and count as hits
    finite = np.isfinite(scores).all(axis=1)
    return {
        "top1": float(np.mean((order[:, 0] == truth[:, 0]) & finite)),
        "top5": float(np.mean(np.any(order[:, :k5] == truth, axis=1) & finite)),
        "top5_k": k5,
        "n": len(labels),
        "classes": classes,
        "non_finite": int((~finite).sum()),
    }


# ---------------------------------------------------------------------------------------------- timing


def _timed_runs(fn: Callable[[], Any], n: int, tick: Callable[[int], None]) -> list[float]:
    times = []
    every = max(1, n // 10)
    for i in range(n):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
        if (i + 1) % every == 0:
            tick(i + 1)
    return times


def _iobinding_latency(session: OrtSession, feeds: dict[str, np.ndarray], config: EvalConfig, batch: int) -> dict:
    """Inputs already on the session's device, outputs left there: the device-resident figure (measured for GPU
    providers, with the GPU's run counts; on a CPU session it binds to the CPU, which is how the tests drive it)."""
    binding = session.bind(feeds)
    for _ in range(warmup_count(config.warmup, False, DEFAULT_WARMUP) + 1):
        binding.run()
    runs = timed_count(config.runs, False, DEFAULT_RUNS, 0.0)
    return latency_stats(_timed_runs(binding.run, runs, lambda _: None), batch)


# ---------------------------------------------------------------------------------------------- evaluate


def _total(sizes: dict[str, int | None]) -> int:
    return sum(size or 0 for size in sizes.values())


@dataclass
class _OutputBudget:
    """The output bytes an evaluation holds at once, checked at submit and again before each batch size runs.

    Every session keeps its outputs at the first batch size (the CPU's are the parity reference), and one run's
    outputs at the batch size being measured are alive beside them: held(batch) = copies * outputs(first batch) +
    outputs(batch), copies counting every session that runs, the CPU reference included.

    An output's bytes come from its declared shape. Where the declaration leaves a dimension open, or is exceeded, a
    measured size takes its place, scaled linearly with the batch size: first what shape inference found at the
    inspected symbol values, then what the first real run returned. An output neither knows (a data-dependent
    dimension) counts as 0 until then: that first run is the one the budget cannot bound up front, and the batch
    sizes after it are checked against its real outputs.
    """

    limit: int
    copies: int
    first_batch: int
    declared: dict[int, dict[str, int | None]]  # batch size -> output -> bytes of its declared shape (None: open)
    batch_free: bool  # whether the request sets the batch size
    other_symbols: str  # the other symbols' values, as "H=512, W=512"
    measured: tuple[int, dict[str, int]] | None = None  # (batch size, output -> bytes) found by inference or a run
    ran: bool = False  # whether `measured` comes from a real run

    def estimate(self, batch: int) -> dict[str, int | None]:
        """Each output's bytes in one run at this batch size; None where nothing tells yet."""
        sizes = dict(self.declared[batch])
        if self.measured is not None:
            at, measured = self.measured
            for name, size in measured.items():
                declared = self.declared[at].get(name)
                if declared is None or size > declared:
                    sizes[name] = -(-size * batch // at)
        return sizes

    def held(self, batch: int) -> int:
        return self.copies * _total(self.estimate(self.first_batch)) + _total(self.estimate(batch))

    def observe(self, batch: int, outputs: dict[str, Any]) -> None:
        """The first real run's output sizes replace every estimate made before it (sequences, maps and strings
        too: a sequence of 900 MiB went unbounded through every later batch size)."""
        if not self.ran:
            self.measured, self.ran = (batch, {name: _held_bytes(value) for name, value in outputs.items()}), True

    def refusal(self, batch: int) -> str | None:
        """Why this batch size must not run, or None when it fits."""
        held = self.held(batch)
        if held <= self.limit:
            return None
        run = self.estimate(batch)
        largest = sorted(((size, name) for name, size in run.items() if size), reverse=True)
        listed = ", ".join(f"{name!r} {format_bytes(size)}" for size, name in largest[:4])
        more = f" and {len(largest) - 4} more" if len(largest) > 4 else ""
        return (
            f"outputs too large: at batch size {batch} the evaluation would hold {format_bytes(held)} of outputs, "
            f"{format_bytes(held - self.limit)} over the limit of {format_bytes(self.limit)}. One run returns "
            f"{format_bytes(_total(run))} ({listed}{more}), and each of the {self.copies} session(s) keeps its outputs "
            f"at batch size {self.first_batch} ({format_bytes(_total(self.estimate(self.first_batch)))}) for parity; "
            f"{self.advice(batch)}"
        )

    def advice(self, batch: int) -> str:
        """What the request can change to make the outputs smaller."""
        ways = ["smaller batch sizes"] if self.batch_free and max(batch, self.first_batch) > 1 else []
        if self.other_symbols:
            ways.append(f"smaller symbol values (now {self.other_symbols})")
        if self.copies > 1:
            ways.append("fewer providers")
        if not ways:
            return "no setting makes them smaller: the model cannot be evaluated here"
        return "use " + " or ".join(ways)


@dataclass
class _Plan:
    """What evaluate decided before running anything."""

    values: dict[str, int]  # symbol values at the first batch size
    batch_symbols: list[str]
    batches: list[int]
    run_keys: list[str]  # providers in run order (CPU first)
    reference_only: bool
    warnings: list[str]
    notes: list[str]  # how the samples per run were counted, for a model with no batch symbol
    budget: _OutputBudget = field(init=False)


# How a model with no batch symbol's samples per run are told to be otherwise: the batch is then swept.
_NAMED_BATCH = "export the model with a named batch dimension (then --batch-sizes sweeps it)"


def _fixed_batch(info: ModelInfo, values: dict[str, int]) -> tuple[int, str | None]:
    """Samples per run of a model whose inputs' first dimensions are all fixed, and the note saying how they were
    counted (None where every input starts with 1 or nothing: one sample, nothing to decide).

    A fixed first dimension is a batch only on evidence, since samples/s multiplies by it: x[3, 224, 224] is one
    image, x[4, N] may be four channels of one signal. Every input of rank 2 or more must start with the same size,
    and either one of them is a batch of images (N,C,H,W or N,H,W,C), or none is one image (C,H,W or H,W,C) and
    every output whose first dimension is known starts with it too (at least one). Otherwise one sample per run."""
    ranked = [spec for spec in info.inputs if len(spec.shape) >= 2]
    leads = {int(spec.shape[0]) for spec in ranked}  # type: ignore[arg-type]  # a symbol there is a batch symbol
    if not leads or max(leads) <= 1:
        return 1, None
    one = "samples/s counts 1 sample per run (it is runs/s): the model's shapes are fixed, and"
    several = f"if a run holds several samples, {_NAMED_BATCH}"
    if len(leads) > 1:
        starts = ", ".join(f"{spec.name!r} {spec.shape[0]}" for spec in ranked)
        return 1, f"{one} its inputs start with different sizes ({starts}), so none is taken as a batch; {several}"
    (lead,) = leads
    many = f"samples/s counts {lead} samples per run: the model's shapes are fixed, and"
    if images := next((spec for spec in ranked if looks_like_images(spec.shape)), None):
        return lead, (f"{many} its input {images.name!r} {images.shape} is a batch of {lead} images; if a run holds "
                      f"another number of samples, {_NAMED_BATCH}")  # fmt: skip
    not_batch = f"{one} the first dimension {lead} of its inputs is not taken as a batch"
    if single := next((spec for spec in ranked if looks_like_one_image(spec.shape)), None):
        return 1, f"{not_batch}: input {single.name!r} {single.shape} is one image; {several}"
    firsts = {spec.name: first for spec in info.outputs if (first := _output_first(info, spec, values)) is not None}
    if other := next((name for name, first in firsts.items() if first != lead), None):
        shape = info.output_shapes.get(other) or next(s.shape for s in info.outputs if s.name == other)
        return 1, f"{not_batch}: output {other!r} {shape} does not start with it; {several}"
    if not firsts:
        return 1, f"{not_batch}: no output's shape tells whether it is one; {several}"
    return lead, (f"{many} every input of rank 2 or more and every output whose shape is known start with {lead}, "
                  f"taken as its batch; if a run holds another number of samples, {_NAMED_BATCH}")  # fmt: skip


def _output_first(info: ModelInfo, spec: TensorSpec, values: dict[str, int]) -> int | None:
    """An output's first dimension where the model declares it, or shape inference found it; None where neither
    tells (a scalar, a sequence, a data-dependent size)."""
    first = spec.shape[0] if spec.shape else None
    if isinstance(first, str):
        first = values.get(first)
    if first is None and (inferred := info.output_shapes.get(spec.name)):
        first = inferred[0]
    return first


def _symbols_at(plan: _Plan, batch: int) -> dict[str, int]:
    return {**plan.values, **dict.fromkeys(plan.batch_symbols, batch)}


def _plan(info: ModelInfo, config: EvalConfig, limits: Limits) -> _Plan:
    warns: list[str] = []
    batch_syms = batch_symbols(info.inputs)
    clash = [s for s in config.symbol_values if s in batch_syms]
    if clash:
        raise EvalError(f"{', '.join(clash)} is the batch dimension: set it with batch_sizes, not symbols")
    inspected = {k: v for k, v in info.symbols.items() if k not in batch_syms}
    values = default_symbols(info.inputs, {**inspected, **config.symbol_values, **dict.fromkeys(batch_syms, 1)})
    defaulted = [s for s, v in values.items() if v == 1 and s not in batch_syms and s not in config.symbol_values]
    if defaulted and config.inputs is None:  # a sequence model was timed at length 1, unsaid
        warns.append(f"symbolic dimensions at their default of 1: {', '.join(defaulted)} (give symbols, e.g. "
                     f"{defaulted[0]}=N, for the size the model really runs at)")  # fmt: skip
    notes = []
    if batch_syms:
        batches = [int(b) for b in config.batch_sizes]
        if len(batch_syms) > 1:
            warns.append(f"several batch dimensions ({', '.join(batch_syms)}): each is set to the batch size")
    else:
        samples, note = _fixed_batch(info, values)
        batches, notes = [samples], [note] if note else []
        if list(config.batch_sizes) not in ([1], batches):  # sizes asked for (1 is the default) were not run
            warns.append(
                f"the model has no batch dimension (all input shapes fixed in the first dimension); batch sizes "
                f"{list(config.batch_sizes)} were ignored: it ran at its fixed shapes, counted as {samples} "
                f"sample{'s' if samples != 1 else ''} per run (the notes say why)"
            )
    plan = _Plan(values, batch_syms, batches, [], "cpu" not in config.providers, warns, notes)
    for batch in batches:  # refuse before anything is allocated
        if info.inputs and check_input_budget(info.inputs, _symbols_at(plan, batch), limits) == 0:
            shapes = ", ".join(f"{s.name} {list(s.concrete(_symbols_at(plan, batch)))}" for s in info.inputs)
            raise EvalError(f"every input is empty ({shapes}): a run would compute nothing, so there is nothing "
                            "to time; give the zero-sized dimensions a size")  # fmt: skip
    plan.values = _symbols_at(plan, batches[0])
    plan.run_keys = ["cpu", *(p for p in config.providers if p != "cpu")]
    plan.budget = _output_budget(info, plan, limits)
    return plan


def _output_budget(info: ModelInfo, plan: _Plan, limits: Limits) -> _OutputBudget:
    """The plan's output budget, refused at once when a batch size is over it; outputs whose size only running tells
    are named in a warning."""
    inspected = _inspected_batch(info, plan)
    sizes_at = {*plan.batches, *([inspected] if inspected is not None else [])}
    declared = {batch: output_bytes(info.outputs, _symbols_at(plan, batch)) for batch in sizes_at}
    others = ", ".join(f"{k}={v}" for k, v in plan.values.items() if k not in plan.batch_symbols)
    budget = _OutputBudget(
        limits.max_output_bytes, len(plan.run_keys), plan.batches[0], declared, bool(plan.batch_symbols), others
    )
    if inspected is not None:
        dtypes = {spec.name: spec.dtype for spec in info.outputs}
        inferred = {name: tensor_bytes(dtypes[name], shape) for name, shape in info.output_shapes.items()}
        budget.measured = (inspected, {name: size for name, size in inferred.items() if size is not None})
    unknown = [name for name, size in budget.estimate(plan.batches[0]).items() if size is None]
    if unknown:
        plan.warnings.append(
            f"the size of output(s) {', '.join(map(repr, unknown))} is only known by running (strings, or a "
            "data-dependent or undeclared dimension): the first run is not bounded by the output limit, the batch "
            "sizes after it are checked against what it returned"
        )
    refusal = budget.refusal(max(plan.batches, key=budget.held))
    if refusal is not None:
        raise EvalError(refusal)
    return budget


def _held_bytes(value: Any) -> int:
    """What an output holds in memory: an array's bytes (a string array's text too, beyond its pointers), a
    sequence's or a map's parts added up."""
    if isinstance(value, np.ndarray):
        text = sum(len(str(v)) for v in value.flat) if value.dtype.kind == "O" else 0
        return int(value.nbytes) + text
    if isinstance(value, dict):
        return sum(_held_bytes(np.asarray(k)) + _held_bytes(np.asarray(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_held_bytes(v if isinstance(v, (np.ndarray, dict, list, tuple)) else np.asarray(v)) for v in value)
    return 0


def _inputs_for(info: ModelInfo, config: EvalConfig, plan: _Plan, batch: int, user: dict[str, np.ndarray]):
    """Synthetic inputs at this batch, with the user's arrays in place (repeated along every batch axis: an input
    whose batch symbol is not its first dimension kept its .npz size)."""
    values = _symbols_at(plan, batch)
    missing = [spec for spec in info.inputs if spec.name not in user]
    feeds = synthetic_inputs(missing, values, config.seed)
    # an input with a default (an initializer) is fed only where the user set it; otherwise the model's value holds
    fed = [*info.inputs, *(spec for spec in info.overridable_inputs if spec.name in user)]
    for spec in fed:
        if spec.name not in user:
            continue
        array = user[spec.name]
        for axis, dim in enumerate(spec.shape[: array.ndim]):
            if dim in plan.batch_symbols and array.shape[axis] not in (0, batch):
                array = np.take(array, np.arange(batch) % array.shape[axis], axis=axis)
        feeds[spec.name] = array
    return {spec.name: feeds[spec.name] for spec in fed}


def _user_inputs(info: ModelInfo, config: EvalConfig, plan: _Plan) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays from the inputs .npz and the images, checked against the model at the first batch size, and
    where each came from ("npz" or "images").

    Images fill one input; their count need not match the batch (they are repeated or cut along it),
    except for a fixed-shape input, whose own batch is what the model accepts.
    """
    user = {}
    if config.inputs:
        user = load_npz_inputs(config.inputs, info.inputs, plan.values, info.overridable_inputs, info.constants)
    sources = dict.fromkeys(user, "npz")
    if not config.images:
        return user, sources
    try:
        spec = pick_image_input(info.inputs, config.image_input)
        array = images_to_tensor(list(config.images), spec, plan.values, _image_options(config))
    except ImageInputError as exc:
        raise EvalError(str(exc)) from None
    if spec.name in user:
        raise EvalError(f"input {spec.name!r} is given twice: in the inputs .npz and as images")
    batch = spec.shape[0]
    if not isinstance(batch, str):  # fixed batch: repeat or cut the images to it
        want = int(batch) if isinstance(batch, int) else 1
        if array.shape[0] != want:
            plan.warnings.append(f"{array.shape[0]} image(s) for input {spec.name!r} with a fixed batch of {want}")
            array = np.take(array, np.arange(want) % array.shape[0], axis=0)
    elif array.shape[0] != plan.batches[0]:
        plan.warnings.append(
            f"{array.shape[0]} image(s) at batch size {plan.batches[0]}: images are repeated or cut to each batch "
            "size; for accuracy over all of them, make the first batch size the number of images"
        )
    user[spec.name], sources[spec.name] = array, "images"
    return user, sources


def _memory_now(nvml: Any, device_id: int = 0) -> dict[str, int | None]:
    import psutil

    gpu = gpu_memory(nvml, device_id) if nvml is not None else None
    return {
        "rss": int(psutil.Process().memory_info().rss),
        "gpu": gpu["used"] if gpu else None,
        "process": gpu["process"] if gpu else None,
    }


def _memory_delta(before: dict[str, int | None], after: dict[str, int | None]) -> dict[str, int | None]:
    gpu_delta = after["gpu"] - before["gpu"] if after["gpu"] is not None and before["gpu"] is not None else None
    return {
        "host_rss_before_bytes": before["rss"],
        "host_rss_after_bytes": after["rss"],
        "host_rss_delta_bytes": after["rss"] - before["rss"],  # type: ignore[operator]
        "gpu_used_before_bytes": before["gpu"],
        "gpu_used_after_bytes": after["gpu"],
        "gpu_delta_bytes": gpu_delta,
        # ORT's GPU arena only grows, so the process's GPU memory after a batch is its peak so far
        # (the CUDA context included); NVML's device delta also counts other processes.
        "gpu_process_bytes": after["process"],
    }


def _is_oom(exc: BaseException) -> bool:
    """engine.core.device decides (the shared list of ORT/CUDA allocation texts); it imports torch, so it is only
    asked when the text mentions memory at all."""
    text = str(exc).lower()
    if "memory" not in text and "alloc" not in text:
        return False
    try:
        from engine.core.device import is_out_of_memory
    except Exception:
        return "out of memory" in text or "failed to allocate" in text
    return is_out_of_memory(exc)


def _empty_row(key: str, batch: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": key,
        "ran_on": meta["got"][0] if meta.get("got") else None,
        "batch": batch,
        "fell_back": bool(meta.get("fell_back")),
        "first_run_ms": None,
        "trt_build_s": None,
        "latency": None,
        "times_ms": None,
        "warmup": None,
        "spread_warning": None,
        "latency_iobinding": None,
        "iobinding": None,
        "samples_per_s": None,
        "achieved_gflops": None,
        "speedup_vs_cpu": None,
        "memory": None,
        "error": None,
        "out_of_memory": False,
    }


class _Runner:
    """One evaluation's state: the plan, shared inputs, progress, and what was collected."""

    def __init__(
        self,
        model_path: Any,
        info: ModelInfo,
        config: EvalConfig,
        plan: _Plan,
        progress: Progress | None,
        placement: Placement,
    ) -> None:
        self.model_path, self.info, self.config, self.plan = model_path, info, config, plan
        self.placement = placement
        self.progress = progress
        self.user, self.sources = _user_inputs(info, config, plan)
        self.first_inputs = _inputs_for(info, config, plan, plan.batches[0], self.user)
        self.total = len(config.providers) * len(plan.batches) + (1 if plan.reference_only else 0)
        self.done = 0
        self.sessions: dict[str, dict] = {}
        self.rows: list[dict] = []
        self.outputs: dict[str, dict[str, np.ndarray]] = {}  # provider -> outputs at the first batch
        self.warnings = list(plan.warnings)
        self.auto_counts: list[tuple[str, int, int]] = []  # CPU rows whose counts were chosen: label, warm-up, runs
        self.nvml = nvml_source() if any(p in GPU_KEYS for p in config.providers) else None

    def memory_now(self, key: str) -> dict[str, int | None]:
        return _memory_now(self.nvml if key in GPU_KEYS else None, self.placement.device_id)

    def tell(self, fraction_of_step: float, label: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, (self.done + fraction_of_step) / max(self.total, 1)), label)

    def run_provider(self, key: str, reference_only: bool) -> None:
        self.tell(0.0, f"{key}: creating the session")
        before = self.memory_now(key)
        try:
            session = OrtSession(self.model_path, _session_options(key, self.config, self.placement))
        except (SessionError, OSError) as exc:  # OSError: the TensorRT cache folder cannot be made
            # the private copy's path means nothing to the user (and names the server's folders)
            reason = one_line(str(exc).replace(os.fspath(self.model_path), "the model"))
            self.sessions[key] = {"provider": key, "requested": PROVIDERS[key], "error": reason}
            self.warnings.append(f"{key} ({PROVIDERS[key]}) could not be used: {reason}")
            self.done += 1 if reference_only else len(self.plan.batches)
            return
        meta = {**session.info, "reference_only": reference_only}
        self.sessions[key] = meta
        if meta["fell_back"]:
            self.warnings.append(
                f"WARNING: {meta['requested']} was requested but the session runs on {meta['got'][0]} "
                f"({meta['fallback_reason']}); the '{key}' rows measure {meta['got'][0]}, not {meta['requested']}, "
                "and are marked fell_back"
            )
        try:
            if reference_only:
                self.reference_run(session, key)
            else:
                self.run_batches(session, key, meta, before)
        finally:
            session.close()

    def reference_run(self, session: OrtSession, key: str) -> None:
        self.tell(0.0, "cpu: reference outputs for parity")
        try:
            self.outputs[key] = self.run_once(session, self.first_inputs, self.plan.batches[0])
        except Exception as exc:
            self.sessions[key]["error"] = f"{type(exc).__name__}: {one_line(exc)}"
            self.warnings.append(f"the CPU reference run failed, so there is no parity: {one_line(exc)}")
        self.done += 1

    def run_once(self, session: OrtSession, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        outputs = dict(zip(session.output_names, session.run(feeds), strict=True))
        self.plan.budget.observe(batch, outputs)
        return outputs

    def run_batches(self, session: OrtSession, key: str, meta: dict, before: dict) -> None:
        oom_at = None
        for batch in self.plan.batches:
            row = _empty_row(key, batch, meta)
            if oom_at is not None and batch >= oom_at:
                row["error"] = f"skipped: out of memory at batch {oom_at}"
            elif (too_large := self.plan.budget.refusal(batch)) is not None:
                row["error"] = f"skipped: {too_large}"
                self.warnings.append(f"{key} at batch {batch} was skipped: {too_large}")
            else:
                try:
                    self.measure(session, key, meta, row)
                except Exception as exc:
                    row["error"], row["out_of_memory"] = f"{type(exc).__name__}: {one_line(exc)}", _is_oom(exc)
                    if not row["out_of_memory"] and (made_up := self.synthetic_integer_inputs()):
                        row["error"] += (f" (the integer input(s) {', '.join(made_up)} were made up, 0 to "
                                         f"{_SYNTHETIC_INT_HIGH - 1}: an index out of range wants real values in "
                                         "an inputs .npz)")  # fmt: skip
                    oom_at = batch if row["out_of_memory"] else oom_at
                    self.warnings.append(f"{key} at batch {batch} failed: {row['error'][:500]}")
            row["memory"] = _memory_delta(before, self.memory_now(key))
            self.rows.append(row)
            self.done += 1

    def synthetic_integer_inputs(self) -> list[str]:
        """The integer inputs the run made up (ids, indices, lengths): the likely cause of a run's failure."""
        return [s.name for s in self.info.inputs if s.name not in self.user and _np_dtype(s).kind in "iu"]

    def measure(self, session: OrtSession, key: str, meta: dict, row: dict) -> None:
        batch, config = row["batch"], self.config
        first = batch == self.plan.batches[0]
        feeds = self.first_inputs if first else _inputs_for(self.info, config, self.plan, batch, self.user)
        label = f"{key} batch {batch}"
        self.tell(0.0, f"{label}: first run")
        start = time.perf_counter_ns()
        outputs = self.run_once(session, feeds, batch)
        row["first_run_ms"] = (time.perf_counter_ns() - start) / 1e6
        if meta["got"][0] == PROVIDERS["trt"]:
            # TensorRT builds (or loads) an engine for a static-shape graph when the session is made, for a dynamic
            # one at its first run of each shape: the first batch counts both
            row["trt_build_s"] = row["first_run_ms"] / 1000.0 + (session.create_s if first else 0.0)
        if first:
            self.outputs[key] = outputs
        del outputs
        on_cpu = meta["got"][0] == PROVIDERS["cpu"]
        warmup = warmup_count(config.warmup, on_cpu, DEFAULT_WARMUP)
        self.tell(0.0, f"{label}: warm-up")
        timed_feeds = session.feedable(feeds)  # bfloat16 or float8 inputs made OrtValues once, not in every run
        start = time.perf_counter_ns()
        for _ in range(warmup):
            session.run(timed_feeds)
        per_run_s = (time.perf_counter_ns() - start) / 1e9 / warmup if warmup else row["first_run_ms"] / 1000.0
        runs = timed_count(config.runs, on_cpu, DEFAULT_RUNS, per_run_s)
        if on_cpu and (config.runs is None or config.warmup is None):  # a count chosen here (the note says how)
            self.auto_counts.append((f"{key} b{batch}", warmup, runs))

        def tick(i: int) -> None:
            self.tell(i / runs * 0.9, f"{label}: run {i}/{runs}")

        times = _timed_runs(lambda: session.run(timed_feeds), runs, tick)
        row["latency"] = latency_stats(times, batch)
        row["times_ms"] = [round(t, 4) for t in times]  # the distribution, for plots and re-analysis
        row["warmup"] = warmup
        row["spread_warning"] = spread_warning(row["latency"])
        if row["spread_warning"]:
            self.warnings.append(f"{key} at batch {batch}: {row['spread_warning']}")
        row["samples_per_s"] = row["latency"]["throughput_per_s"]
        row["iobinding"] = self.measure_iobinding(session, meta, feeds, row)

    def measure_iobinding(self, session: OrtSession, meta: dict, feeds: dict, row: dict) -> str:
        if meta["got"][0] == "CPUExecutionProvider":
            return "not applicable: the session runs on the CPU, where inputs and outputs already live"
        self.tell(0.9, f"{meta['provider']} batch {row['batch']}: device-resident runs")
        try:
            row["latency_iobinding"] = _iobinding_latency(session, feeds, self.config, row["batch"])
        except Exception as exc:
            self.warnings.append(f"{meta['provider']} IOBinding timing failed at batch {row['batch']}: {exc}")
            return f"failed: {exc}"
        return "measured"


def _finish_rows(rows: list[dict], info: ModelInfo, plan: _Plan) -> None:
    """Speed-up against the CPU row of the same batch (of the p50s), and achieved GFLOP/s where the FLOPs apply: from
    the mean latency, as samples/s is, so one row's two rates agree (GFLOP/s from the p50 disagreed with samples/s
    wherever a slow run moved the mean) and mean the same as the benchmark's TFLOP/s, FLOPs times throughput."""
    cpu = {r["batch"]: r for r in rows if r["provider"] == "cpu" and r["latency"]}
    scale_base = _inspected_batch(info, plan) if info.flops else None
    # FLOPs grow with the batch only where it is each input's first dimension alone (x[N,3] @ z[3,N] grows as N²)
    linear = all(
        all(axis == 0 for axis, dim in enumerate(spec.shape) if dim in plan.batch_symbols) for spec in info.inputs
    )
    for row in rows:
        if not row["latency"]:
            continue
        p50 = row["latency"]["p50_ms"]
        ref = cpu.get(row["batch"])
        cpu_vs_cpu = row["provider"] != "cpu" and row["ran_on"] == PROVIDERS["cpu"]  # a fallback: no speed-up
        if ref is not None and p50 > 0 and not cpu_vs_cpu:
            row["speedup_vs_cpu"] = ref["latency"]["p50_ms"] / p50
        mean = row["latency"]["mean_ms"]
        if scale_base is not None and mean > 0 and (linear or row["batch"] == scale_base or not plan.batch_symbols):
            scale = row["batch"] / scale_base if plan.batch_symbols else 1.0
            row["achieved_gflops"] = info.flops * scale / (mean / 1000.0) / 1e9  # type: ignore[operator]


def _inspected_batch(info: ModelInfo, plan: _Plan) -> int | None:
    """The batch size the inspection's figures (FLOPs, output shapes) were found at; None when they do not describe
    this run (other symbols differ, or the batch symbols were inspected at different values)."""
    others_same = all(info.symbols.get(k) == v for k, v in plan.values.items() if k not in plan.batch_symbols)
    bases = {info.symbols.get(s) for s in plan.batch_symbols}
    if not others_same or len(bases) > 1 or None in bases:
        return None
    return next(iter(bases)) if bases else plan.batches[0]


def _accuracy_report(
    runner: _Runner, expected: dict[str, np.ndarray] | None, labels: list[int] | None, scored: str | None
) -> dict:
    report: dict[str, Any] = {}
    providers = [k for k in runner.outputs if not runner.sessions[k].get("reference_only")]
    if expected is not None:
        report["expected"] = {k: accuracy(runner.outputs[k], expected) for k in providers}
    if labels is not None:
        report["topk"] = {}
        output = scored_output(runner.info, scored).name
        for key in providers:
            try:
                report["topk"][key] = {**topk(runner.outputs[key][output], labels), "output": output}
            except EvalError as exc:
                report["topk"][key] = {"error": str(exc), "output": output}
    return report


def scored_output(info: ModelInfo, name: str | None) -> TensorSpec:
    """The output `--labels` score: the one named, else the first float output of rank 2 or more (a classifier's
    scores; an sklearn model gives its int64 labels first, and scoring those made any label 0 a hit), else the
    first."""
    if name is not None:
        named = next((spec for spec in info.outputs if spec.name == name), None)
        if named is None:
            names = ", ".join(spec.name for spec in info.outputs)
            raise EvalError(f"labels output {name!r} is not an output of the model (its outputs: {names})")
        return named
    return next((s for s in info.outputs if s.is_float and len(s.shape) >= 2), info.outputs[0])


def _check_labels(info: ModelInfo, plan: _Plan, labels: list[int], scored: str | None) -> None:
    """Refuse before running when the scored output's sample count is known and differs from the labels, or its
    class count is known and a label is not one of its classes."""
    output = scored_output(info, scored)
    shape = output.shape
    first = shape[0] if shape else None
    n = first if isinstance(first, int) else plan.values.get(first) if isinstance(first, str) else None
    if n is not None and n != len(labels):
        # a free batch: two images and two labels at the default batch size 1 were refused with nothing to say
        # that --batch-sizes makes room for them
        sized = f", or make the first batch size {len(labels)} (--batch-sizes {len(labels)})" if (
            isinstance(first, str) and first in plan.batch_symbols) else ""  # fmt: skip
        raise EvalError(
            f"{len(labels)} labels for output {output.name!r}, which has {n} sample{'s' if n != 1 else ''} at the "
            f"first batch size ({shape}); give one label per sample{sized}"
        )
    if len(shape) > 1 and all(isinstance(d, int) for d in shape[1:]):
        classes = math.prod(shape[1:])
        bad = [label for label in labels if not 0 <= int(label) < classes]
        if bad:
            raise EvalError(
                f"labels {bad[:10]} are not classes of output {output.name!r} {shape}: "
                + (f"they are 0..{classes - 1}" if classes else "it has none")
            )


def _misdeclared_outputs(outputs: list[TensorSpec], values: dict[str, int], got: dict[str, Any]) -> list[str]:
    """Outputs whose shape at the first batch size is not the one the model declares (which misleads the output
    budget, and anyone who reads the model's signature)."""
    notes = []
    for spec in outputs:
        array = got.get(spec.name)
        declared = [values.get(d) if isinstance(d, str) else d for d in spec.shape]
        if not spec.is_tensor or not isinstance(array, np.ndarray) or not declared or None in declared:
            continue  # a rank or dimension the model leaves open, or one named only by its outputs
        if list(array.shape) != declared:
            notes.append(f"output {spec.name!r} declares {spec.shape} ({declared} here) but is {list(array.shape)}")
    return notes


def _no_outputs(key: str, runner: _Runner) -> str:
    session = runner.sessions.get(key, {})
    row = next((r for r in runner.rows if r["provider"] == key), None)
    why = session.get("error") or (row or {}).get("error") or "it did not run"
    return f"no outputs at the first batch size: {why}"


def _environment() -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "onnxruntime": ort.__version__,
        "available_providers": list(ort.get_available_providers()),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }


def _model_summary(info: ModelInfo) -> dict[str, Any]:
    return {
        "sha256": info.sha256,
        "inputs": [asdict(s) for s in info.inputs],
        "outputs": [asdict(s) for s in info.outputs],
        "flops": info.flops,
        "parameters": info.parameters,
        "symbols": dict(info.symbols),
    }


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays, tuples and paths become plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _check_outputs(info: ModelInfo, config: EvalConfig) -> None:
    """Refuse a model whose outputs cannot be read back, and labels scored on an output that is not numbers."""
    if not info.outputs:
        raise EvalError("the model declares no outputs: there is nothing to run or measure")
    for spec in info.outputs:
        try:
            if spec.is_tensor:
                spec.numpy_dtype()
        except TypeError:
            raise EvalError(
                f"output {spec.name!r} is {spec.dtype}, which ONNX Runtime cannot hand back to Python; outputs may "
                "be float16/32/64, bfloat16, the float8 types (but float8_e8m0fnu), int8..int64, uint8..uint64, bool, "
                "string, or sequences, maps and optionals of those"
            ) from None
    # (expected outputs are checked against the file's names: the .npz may leave out a string output)
    if config.labels is not None and not (scored := scored_output(info, config.labels_output)).is_numeric:
        raise EvalError(
            f"labels score numeric tensor outputs, and output {scored.name!r} is {scored.type_name}; name one that "
            "holds the scores with --labels-output"
        )


def _check_runtime_versions(info: ModelInfo) -> None:
    """Refuse before queueing what this ONNX Runtime cannot load: it passed submit and failed as a job, at its
    sessions."""
    import onnxruntime as ort

    ir_version, opset = runtime_limits()
    if info.ir_version > ir_version:
        raise EvalError(
            f"the model's IR version {info.ir_version} is newer than ONNX Runtime {ort.__version__} loads (up to "
            f"{ir_version}); save it with an older onnx, or set model.ir_version = {ir_version} if nothing needs more"
        )
    if info.opsets.get("", 0) > opset:
        raise EvalError(
            f"the model uses ONNX opset {info.opsets['']}, and ONNX Runtime {ort.__version__} loads up to opset "
            f"{opset}: re-export it with opset_version={opset} or lower"
        )


def _checked_plan(info: ModelInfo, config: EvalConfig, limits: Limits) -> _Plan:
    _check_runtime_versions(info)
    _check_outputs(info, config)
    plan = _plan(info, config, limits)
    if config.labels is not None:
        _check_labels(info, plan, list(config.labels), config.labels_output)
    return plan


def check_request(info: ModelInfo, config: EvalConfig, limits: Limits | None = None) -> list[str]:
    """Every refusal evaluate() would make before running, without creating a session; returns the
    plan's warnings. A queue calls this at submit time, so bad settings never become failed jobs."""
    limits = limits or Limits()
    config = config.checked()
    plan = _checked_plan(info, config, limits)
    if config.expected:
        _load_expected(config.expected, info.outputs, limits)
    user, _ = _user_inputs(info, config, plan)
    for spec in info.inputs:
        if spec.name not in user:
            _synthetic_dtype(spec)  # the inputs evaluate() would make up: refused now, not in the job
    return plan.warnings


def evaluate(
    model_path: str | os.PathLike,
    info: ModelInfo,
    config: EvalConfig,
    progress: Progress | None = None,
    *,
    limits: Limits | None = None,
    placement: Placement | None = None,
    partial: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Run the model on every asked provider and batch size; the full report, JSON-serialisable.

    Input problems raise EvalError / ModelError before any session is created; a provider that
    cannot create a session, or a batch that fails, is recorded in the report and the rest still run.
    `partial(report)` gets the report of the providers measured so far after each one (but the last), so that an
    evaluation stopped on the way (cancelled, out of time) keeps what it measured.
    """
    limits = limits or Limits()
    config = config.checked()
    plan = _checked_plan(info, config, limits)
    expected = _load_expected(config.expected, info.outputs, limits) if config.expected else None
    runner = _Runner(model_path, info, config, plan, progress, placement or Placement())
    keys = plan.run_keys
    for done, key in enumerate(keys, 1):
        runner.run_provider(key, reference_only=key == "cpu" and plan.reference_only)
        if partial is not None and done < len(keys):
            partial(_report(runner, expected, keys[:done]))
    report = _report(runner, expected, keys)
    if progress is not None:
        progress(1.0, "done")
    return report


def _report(runner: _Runner, expected: dict[str, np.ndarray] | None, ran: Sequence[str]) -> dict[str, Any]:
    """The report of the providers in `ran` (all of the plan's: the whole evaluation; fewer: where it stopped,
    said in its notes)."""
    info, config, plan = runner.info, runner.config, runner.plan
    _finish_rows(runner.rows, info, plan)
    warnings = list(runner.warnings)
    reference = runner.outputs.get("cpu")
    parity_report: dict[str, Any] = {}
    stopped = len(ran) < len(plan.run_keys)
    if reference is None:
        warnings.append("no CPU reference outputs: parity was not computed")
    else:
        warnings += _misdeclared_outputs(info.outputs, plan.values, reference)
        for key in (k for k in config.providers if k in ran):
            out = runner.outputs.get(key)
            parity_report[key] = parity(reference, out) if out is not None else {"error": _no_outputs(key, runner)}
    report = {
        "model": _model_summary(info),
        "config": config.to_text(),
        "environment": _environment(),
        "symbols": plan.values,
        "batch_symbols": plan.batch_symbols,
        "input_source": {
            **{s.name: runner.sources.get(s.name, "synthetic") for s in info.inputs},
            **{s.name: "npz" for s in info.overridable_inputs if s.name in runner.sources},  # the rest: the model's
        },
        "sessions": runner.sessions,
        "results": runner.rows,
        "parity": parity_report,
        "accuracy": _accuracy_report(runner, expected, config.labels, config.labels_output),
        "warnings": warnings,
        "notes": [
            *([f"{PARTIAL_NOTE}: {', '.join(ran)} of {', '.join(plan.run_keys)} measured"] if stopped else []),
            *plan.notes,
            *([unchecked] if (unchecked := _unchecked_note(info.outputs, expected)) else []),
            *(
                [auto_runs_note(runner.auto_counts, DEFAULT_RUNS, config.runs is None, config.warmup is None)]
                if runner.auto_counts
                else []
            ),
            *([few] if (few := few_runs_note(runner.rows)) else []),
        ],
    }
    return _plain(report)


def _unchecked_note(outputs: list[TensorSpec], expected: dict[str, np.ndarray] | None) -> str | None:
    """The outputs the expected-outputs .npz leaves out, which accuracy does not check (a string or sequence output,
    or one the user has no reference for): said, so that accuracy on some outputs does not read as on all."""
    if expected is None:
        return None
    left_out = [spec for spec in outputs if spec.name not in expected]
    if not left_out:
        return None
    named = ", ".join(repr(s.name) + ("" if s.is_numeric else f" ({s.type_name})") for s in left_out)
    checked = ", ".join(map(repr, expected))
    return (
        f"accuracy checks the expected output(s) {checked}; not checked, as the expected-outputs .npz leaves them "
        f"out: {named}"
    )


def few_runs_note(rows: list[dict[str, Any]]) -> str | None:
    """Which tail percentiles are left out for too few timed runs, and how many runs give them."""
    runs = min((row["latency"]["n"] for row in rows if row.get("latency")), default=None)
    if runs is None:
        return None
    missing = [q for q, least in PERCENTILE_MIN_RUNS.items() if runs < least]
    if not missing:
        return None
    return (
        f"{', '.join(f'p{q}' for q in missing)} left out where "
        f"{'only 1 run was' if runs == 1 else f'{runs} runs were'} timed: one run in "
        f"{', '.join(str(PERCENTILE_MIN_RUNS[q]) for q in missing)} lies above them, so with fewer they are the "
        f"slowest run or a blend of the slowest few; --runs {PERCENTILE_MIN_RUNS[missing[-1]]} gives them"
    )
