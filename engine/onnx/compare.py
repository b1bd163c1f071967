"""How far one set of outputs is from another: a provider's from the CPU reference's (parity), the model's from the
user's expected values (accuracy), and scores from labels (top-1 and top-5). Outputs are walked in chunks of
_COMPARE_CHUNK elements, so comparing a large output never makes a float64 copy of it, and a NaN or inf where the
other side has something else is an unbounded difference, never an equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.onnx.config import EvalError

_REL_FLOOR = 1e-6

_COMPARE_CHUNK = 1 << 20  # elements compared at a time: each float64 temporary of a chunk is 8 MiB


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
