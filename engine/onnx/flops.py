"""An estimate of one run's FLOPs, per op type, at the chosen symbol values: large tensors' data dropped, the values
written into the graph's inputs, shapes inferred, then a rule per op that does the heavy work (Conv, ConvTranspose,
MatMul, Gemm, Einsum, ONNX's Attention and ONNX Runtime's attention ops). Every op left out is listed with the reason
(no rule, a shape unknown, inside a subgraph), so the count says what it covers; format_flops and flops_line write
it as the tab and `onnx inspect` show it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.onnx.model import TensorSpec
from engine.onnx.proto import EXTERNAL, all_tensors, graphs, node_domain, op_key, tensor_nbytes

if TYPE_CHECKING:
    import onnx

# Tensors larger than this lose their data before shape inference, which only needs small shape tensors.
_STRIP_BYTES = 64 * 1024


def format_flops(n: float) -> str:
    """A FLOP count in the unit that keeps it readable: 24 FLOP, 19.05 kFLOP, 7.934 GFLOP (a tiny model's count
    read 0.000 GFLOP)."""
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:g} FLOP"


def flops_line(flops: int | None, not_counted: list[str], at: str = "") -> str:
    """The inspection's FLOP count as one line (the tab's and `onnx inspect`'s), `at` saying at which shapes; where
    no op could be counted, what is unknown and why ("unknown; not counted: Add, Mul" said neither)."""
    left_out = ", ".join(not_counted)
    if flops is None:
        if not left_out:
            return "FLOPs per run unknown: the graph has no ops"
        return f"FLOPs per run unknown: none of its ops has a FLOP count here (not counted: {left_out})"
    return f"{format_flops(flops)} per run{at}; not counted: {left_out or 'nothing'}"


Shapes = dict[str, tuple[int, ...]]


def _shape(shapes: Shapes, node: Any, index: int, output: bool = False) -> tuple[int, ...] | None:
    names = node.output if output else node.input
    return shapes.get(names[index]) if index < len(names) and names[index] else None


def _has_input(node: Any, index: int) -> bool:
    return index < len(node.input) and bool(node.input[index])


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _conv_flops(node: Any, shapes: Shapes) -> int | None:
    y, w = _shape(shapes, node, 0, output=True), _shape(shapes, node, 1)
    if y is None or w is None or len(w) < 3:
        return None
    return 2 * math.prod(y) * math.prod(w[1:])  # W is (Cout, Cin/group, k...)


def _conv_transpose_flops(node: Any, shapes: Shapes) -> int | None:
    x, w = _shape(shapes, node, 0), _shape(shapes, node, 1)
    if x is None or w is None or len(w) < 3:
        return None
    return 2 * math.prod(x) * math.prod(w[1:])  # W is (Cin, Cout/group, k...)


def _matmul_flops(node: Any, shapes: Shapes) -> int | None:
    a, y = _shape(shapes, node, 0), _shape(shapes, node, 0, output=True)
    if a is None or y is None or not a:
        return None
    return 2 * math.prod(y) * a[-1]  # prod(Y) = broadcast batch * M * N; K = A's last dim


def _gemm_flops(node: Any, shapes: Shapes) -> int | None:
    """2·M·N·K, the bias C left out as Conv's bias and torch's flop counter leave theirs (a Linear exported as Gemm
    counted M·N more than the same network counted by torch)."""
    a, y = _shape(shapes, node, 0), _shape(shapes, node, 0, output=True)
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return 2 * math.prod(y) * k


def _kv_length(shapes: Shapes, node: Any, key: int, past: int, seq_axis_3d: int, seq_axis_4d: int) -> int | None:
    """Keys' sequence length, plus a past KV cache's length when one is given."""
    k = _shape(shapes, node, key)
    if k is None:
        return None
    length = k[seq_axis_3d] if len(k) in (3, 5) else k[seq_axis_4d] if len(k) == 4 else None
    if length is not None and _has_input(node, past):
        past_shape = _shape(shapes, node, past)
        if past_shape is None or len(past_shape) != 4:
            return None
        length += past_shape[2]
    return length


def _onnx_attention_flops(node: Any, shapes: Shapes) -> int | None:
    """ONNX Attention (opset 23+): Q·Kᵀ costs 2·B·Sq·Skv·(q heads·head size) = 2·|Q|·Skv, A·V costs 2·|Y|·Skv."""
    q, y = _shape(shapes, node, 0), _shape(shapes, node, 0, output=True)
    skv = _kv_length(shapes, node, 1, 4, 1, 2)
    if q is None or y is None or skv is None:
        return None
    return 2 * skv * (math.prod(q) + math.prod(y))


def _ms_attention_flops(node: Any, shapes: Shapes) -> int | None:
    """com.microsoft Attention: the fused QKV projection plus 2·2·B·heads·Sq·Skv·head_size."""
    x, w = _shape(shapes, node, 0), _shape(shapes, node, 1)
    if x is None or w is None or len(x) != 3 or len(w) != 2:
        return None
    batch, seq, _ = x
    sizes = _attr(node, "qkv_hidden_sizes") or [w[1] // 3] * 3
    skv = seq
    if _has_input(node, 4):  # past: (2, B, heads, past_len, head_size)
        past = _shape(shapes, node, 4)
        if past is None or len(past) != 5:
            return None
        skv += past[3]
    projection = 2 * math.prod(x) * w[1]
    return projection + 2 * batch * seq * skv * (sizes[0] + sizes[2])


def _ms_mha_flops(node: Any, shapes: Shapes) -> int | None:
    """com.microsoft MultiHeadAttention: 3-D, 4-D (BNSH) or packed 5-D query/key/value layouts."""
    q = _shape(shapes, node, 0)
    if q is None or len(q) not in (3, 5):
        return None
    batch, seq = q[0], q[1]
    d_q = q[2] if len(q) == 3 else q[2] * q[4]
    d_v = d_q
    if not _has_input(node, 1):  # packed QKV in the query
        skv = seq
    else:
        k = _shape(shapes, node, 1)
        skv = _kv_length(shapes, node, 1, 6, 1, 2)
        if k is None or skv is None:
            return None
        if len(k) == 5:  # packed KV: (B, Skv, heads, 2, head_size)
            d_v = k[2] * k[4]
        elif _has_input(node, 2):
            v = _shape(shapes, node, 2)
            if v is None:
                return None
            d_v = v[2] if len(v) == 3 else v[1] * v[3] if len(v) == 4 else d_q
    return 2 * batch * seq * skv * (d_q + d_v)


def _einsum_flops(node: Any, shapes: Shapes) -> int | None:
    """Two-operand einsum with an explicit output: 2 · product of every index's size."""
    equation = _attr(node, "equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    lhs, _, _ = equation.partition("->")
    terms = lhs.split(",")
    if "->" not in equation or "..." in equation or len(terms) != 2:
        raise _Unsupported("only two-operand equations with '->' and no '...' are estimated")
    sizes: dict[str, int] = {}
    for index, term in enumerate(terms):
        shape = _shape(shapes, node, index)
        if shape is None:
            return None
        if len(shape) != len(term):
            raise _Unsupported("equation does not match the operand ranks")
        for letter, size in zip(term, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return 2 * math.prod(sizes.values())


class _Unsupported(Exception):
    """A FLOP rule exists but this node's form is not estimated (the reason is listed)."""


_FLOP_RULES: dict[tuple[str, str], Callable[[Any, Shapes], int | None]] = {
    ("", "Conv"): _conv_flops,
    ("", "ConvTranspose"): _conv_transpose_flops,
    ("", "MatMul"): _matmul_flops,
    ("", "Gemm"): _gemm_flops,
    ("", "Einsum"): _einsum_flops,
    ("", "Attention"): _onnx_attention_flops,
    ("com.microsoft", "Attention"): _ms_attention_flops,
    ("com.microsoft", "MultiHeadAttention"): _ms_mha_flops,
}
_CONTROL_FLOW = ("If", "Loop", "Scan")


def strip_large_tensors(model: onnx.ModelProto) -> None:
    """Drop big tensors' data (after the checker has seen it): shape inference needs only small shape tensors."""
    data_fields = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    for tensor in all_tensors(model):
        if tensor.data_location == EXTERNAL or (tensor_nbytes(tensor) or 0) <= _STRIP_BYTES:
            continue
        for name in data_fields:
            tensor.ClearField(name)
        tensor.data_location = EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "stripped-for-shape-inference"


def concrete_model(model: onnx.ModelProto, inputs: list[TensorSpec], values: dict[str, int]) -> None:
    """Write the symbol values into the graph inputs, and drop stale intermediate shapes."""
    specs = {spec.name: spec for spec in inputs}
    for value_info in model.graph.input:
        spec = specs.get(value_info.name)
        if spec is None or value_info.type.WhichOneof("value") != "tensor_type":
            continue
        dims = value_info.type.tensor_type.shape.dim
        for dim, size in zip(dims, spec.concrete(values), strict=False):
            dim.dim_value = size
    del model.graph.value_info[:]


def inferred_shapes(model: onnx.ModelProto, warnings: list[str]) -> Shapes:
    import onnx

    inferred = None
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(
                model, check_type=False, strict_mode=False, data_prop=data_prop
            )
            break
        except Exception as exc:
            error = exc
    if inferred is None:
        warnings.append(f"shape inference failed ({error}); FLOPs counted only where declared shapes suffice")
        inferred = model
    graph = inferred.graph
    shapes: Shapes = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    for value_info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = value_info.type.tensor_type if value_info.type.HasField("tensor_type") else None
        if tensor_type is None or not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.WhichOneof("value") == "dim_value" and d.dim_value >= 0 for d in dims):
            shapes[value_info.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def estimate_flops(
    model: onnx.ModelProto, shapes: Shapes, warnings: list[str]
) -> tuple[int | None, dict[str, int], list[str]]:
    """FLOPs per op type of the top-level graph; every op left out is listed with the reason.

    flops is None when no node could be counted at all (a graph of only elementwise ops has no
    estimate rather than a misleading 0); otherwise it is the sum of the counted nodes, a lower bound
    when some heavy nodes had unknown shapes (said in the warnings).
    """
    counted: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for node in model.graph.node:
        key, rule = op_key(node), _FLOP_RULES.get((node_domain(node), node.op_type))
        if node.op_type in _CONTROL_FLOW and not node_domain(node):
            reasons[key]["its subgraphs are not counted"] += 1
        elif rule is None:
            reasons[key][""] += 1
        else:
            try:
                flops = rule(node, shapes)
            except _Unsupported as exc:
                reasons[key][str(exc)] += 1
                continue
            except Exception:  # hostile attributes (a wrong-length qkv_hidden_sizes...) must not crash inspection
                reasons[key]["malformed attributes"] += 1
                continue
            if flops is None:
                reasons[key]["shape unknown"] += 1
            else:
                counted[key] += flops
    for graph in list(graphs(model.graph))[1:]:
        for node in graph.node:
            reasons[op_key(node)]["inside a subgraph"] += 1
    not_counted = []
    for key in sorted(reasons):
        notes = [f"{why}: {n} node{'s' if n > 1 else ''}" for why, n in sorted(reasons[key].items()) if why]
        not_counted.append(f"{key} ({'; '.join(notes)})" if notes else key)
    unknown = sum(r["shape unknown"] for r in reasons.values())
    if unknown and counted:
        warnings.append(f"FLOPs are a lower bound: {unknown} node(s) with a FLOP rule had unknown shapes")
    total = sum(counted.values()) if counted else None
    return total, dict(sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))), not_counted
