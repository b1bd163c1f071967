"""Validate a prepared .onnx and describe it, without running it. `inspect_model` parses the protobuf without
following external data, validates every external-data reference, refuses versions this onnx does not know and
custom-op domains (they would need user shared libraries, which are never loaded), runs the ONNX checker, then
reports inputs, outputs, operators, parameters, an estimate of the FLOPs at chosen values of the symbolic
dimensions, and the notes a user should know (precision, symbols left at 1, size, parts inference ignores).

No ONNX Runtime here: sessions and evaluation live in engine/onnx/evaluate.py. onnx is imported inside the
functions that need it, so importing the engine stays cheap.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core.errors import one_line
from engine.core.words import format_bytes
from engine.onnx.flops import concrete_model, estimate_flops, inferred_shapes, strip_large_tensors
from engine.onnx.model import Limits, ModelError, ModelInfo, TensorSpec
from engine.onnx.prepare import check_size, file_sha256, regular_file_size
from engine.onnx.proto import graphs, load_proto, node_domain, node_lists, op_key, tensor_nbytes, validate_external_data
from engine.onnx.symbols import GraphIO, batch_symbols, check_input_budget, default_symbols, graph_io

if TYPE_CHECKING:
    import onnx

# ONNX, ONNX-ML and ORT's contrib ops are implemented by ONNX Runtime itself; anything else is a custom op.
ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# Domains of the provider-specific operators in a model ONNX Runtime optimized and saved (the CPU's NCHWc layout).
ORT_LAYOUT_DOMAINS = {"com.microsoft.nchwc"}

_LARGE_MODEL_BYTES = 1 << 30
_LISTED = 5  # names a note lists before "and N more"

_FLOAT16, _BFLOAT16 = 10, 16


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain in ("", "ai.onnx") else entry.domain
        opsets[domain] = max(opsets.get(domain, 0), int(entry.version))
    return opsets


def _check_versions(model: onnx.ModelProto, opsets: dict[str, int]) -> None:
    """Refuse what this onnx cannot describe, with a clearer message than the checker's."""
    import onnx

    if model.ir_version > onnx.IR_VERSION:
        raise ModelError(
            f"the model's IR version {model.ir_version} is newer than onnx {onnx.__version__} knows "
            f"(up to {onnx.IR_VERSION}); re-export it with an older exporter setting"
        )
    newest = onnx.defs.onnx_opset_version()
    if opsets.get("", 0) > newest:
        raise ModelError(
            f"the model uses ONNX opset {opsets['']}, newer than onnx {onnx.__version__} knows (up to {newest}); "
            "re-export it with a lower opset_version"
        )


def _check_domains(model: onnx.ModelProto) -> None:
    local_functions = {(f.domain, f.name) for f in model.functions}
    custom: dict[str, set[str]] = defaultdict(set)
    for container in node_lists(model):
        for node in container.node:
            if node.domain not in ALLOWED_DOMAINS and (node.domain, node.op_type) not in local_functions:
                custom[node.domain].add(node.op_type)
    if custom:
        listed = "; ".join(f"{d!r} ({', '.join(sorted(ops)[:5])})" for d, ops in sorted(custom.items()))
        if set(custom) <= ORT_LAYOUT_DOMAINS:
            raise ModelError(
                f"the model uses {listed}: operators ONNX Runtime's own graph optimizer writes for one execution "
                "provider (a model saved with optimized_model_filepath), which the others cannot run; give the "
                "model as it was before ONNX Runtime optimized it (each provider here optimizes it for itself)"
            )
        raise ModelError(
            f"the model uses custom-operator domain(s) {listed}: custom operators need user shared libraries, "
            f"which are never loaded; accepted domains: ai.onnx (default), ai.onnx.ml, com.microsoft"
        )


def _run_checker(model: onnx.ModelProto, path: Path, total_bytes: int, has_external: bool) -> None:
    """onnx's checker, with the external data loaded (it then also checks the data's size against the shapes).

    On the path for models over protobuf's 2 GB, as it requires, and for models without external
    data, where it is the same check without serialising a second copy of the weights.
    """
    import onnx

    try:
        if total_bytes > onnx.checker.MAXIMUM_PROTOBUF or not has_external:
            onnx.checker.check_model(str(path))
        else:
            full = onnx.ModelProto()
            full.CopyFrom(model)
            onnx.load_external_data_for_model(full, str(path.parent))
            onnx.checker.check_model(full)
            del full
    except Exception as exc:
        raise ModelError(f"the ONNX checker refused {path.name}: {one_line(exc)}") from exc


def _parameters(model: onnx.ModelProto) -> tuple[int, int, Counter[int], Counter[int]]:
    """(elements, bytes, bytes by dtype, count by dtype) over initializers in every graph."""
    elements, nbytes = 0, 0
    by_dtype: Counter[int] = Counter()
    count: Counter[int] = Counter()
    for graph in graphs(model.graph):
        tensors = [(t, [t]) for t in graph.initializer]
        tensors += [(s.values, [s.values, s.indices]) for s in graph.sparse_initializer]
        for values, stored in tensors:
            n = math.prod(values.dims)
            size = sum(tensor_nbytes(t) or sum(len(s) for s in t.string_data) for t in stored)
            elements += n
            nbytes += size
            by_dtype[values.data_type] += size
            count[values.data_type] += 1
    return elements, nbytes, by_dtype, count


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(op_key(node) for graph in graphs(model.graph) for node in graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def inspect_model(
    path: str | os.PathLike,
    symbols: dict[str, int] | None = None,
    limits: Limits = Limits(),
    sha256: str | None = None,
) -> ModelInfo:
    """Validate a prepared .onnx and describe it; FLOPs are estimated at `symbols` (default: all 1).

    sha256 is the upload's content address (see file_sha256); without it, the .onnx file's own hash.
    The model is modified in memory (weights dropped) after the checker, never on disk.
    """
    model_path = Path(path)
    if model_path.is_symlink():
        raise ModelError(f"{model_path.name} is a symlink; give the prepared model file itself")
    size = regular_file_size(model_path, "model")
    check_size(model_path.name, size, limits)
    digest = sha256 or file_sha256(model_path)
    model = load_proto(model_path)
    opsets = _opsets(model)
    _check_versions(model, opsets)
    _check_domains(model)
    warnings: list[str] = []
    io = graph_io(model, limits, warnings)
    inputs, outputs = io.inputs, io.outputs
    external = validate_external_data(model, model_path.parent, limits)
    size_bytes = size + sum(external.values())
    _run_checker(model, model_path, size_bytes, bool(external))
    values = default_symbols(inputs, symbols)
    check_input_budget(inputs, values, limits)
    parameters, parameter_bytes, bytes_by_dtype, count_by_dtype = _parameters(model)
    op_counts = _op_counts(model)
    strip_large_tensors(model)
    concrete_model(model, inputs, values)
    shapes = inferred_shapes(model, warnings)
    flops, counted, not_counted = estimate_flops(model, shapes, warnings)
    warnings += _notes(model, opsets, inputs, values, symbols or {}, size_bytes, bytes_by_dtype, count_by_dtype)
    warnings += _initializer_notes(int(model.ir_version), model.graph, io)
    return ModelInfo(
        path=str(model_path),
        sha256=digest,
        size_bytes=size_bytes,
        ir_version=int(model.ir_version),
        opsets=opsets,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=outputs,
        op_counts=op_counts,
        parameters=parameters,
        parameter_bytes=parameter_bytes,
        flops=flops,
        flops_counted=counted,
        flops_not_counted=not_counted,
        symbols=values,
        external_data=sorted(external),
        warnings=warnings,
        batch_symbols=batch_symbols(inputs),
        output_shapes={spec.name: list(shapes[spec.name]) for spec in outputs if spec.name in shapes},
        weights_precision=_weights_precision(bytes_by_dtype),
        overridable_inputs=io.overridable,
        constants=io.constants,
    )


def _initializer_notes(ir_version: int, graph: onnx.GraphProto, io: GraphIO) -> list[str]:
    """Initializers listed among the graph inputs: the defaults an inputs .npz may set, or (IR 3) constants."""
    if ir_version < 4:
        constants = set(io.constants)
        listed = sum(1 for vi in graph.input if vi.name in constants)
        if not listed:
            return []
        return [f"IR version {ir_version} (before ONNX 1.3) lists its initializers as inputs ({listed}); ONNX Runtime "
                "holds them constant, so they are not inputs and an inputs .npz cannot set them"]  # fmt: skip
    if not io.overridable:
        return []
    names = ", ".join(repr(spec.name) for spec in io.overridable[:_LISTED])
    more = f" and {len(io.overridable) - _LISTED} more" if len(io.overridable) > _LISTED else ""
    return [f"{len(io.overridable)} input(s) have a default value, an initializer listed as a graph input: runs use "
            f"it unless an inputs .npz sets them, at its shape ({names}{more}); ONNX Runtime does not fold such "
            "inputs into constants, which may slow its runs"]  # fmt: skip


def _weights_precision(bytes_by_dtype: Counter[int]) -> str | None:
    """fp32, fp16 or bf16: the floating-point type most of the weights' bytes are in (a bench row's precision)."""
    floats = {1: "fp32", _FLOAT16: "fp16", _BFLOAT16: "bf16"}
    present = [(bytes_by_dtype[dtype], name) for dtype, name in floats.items() if bytes_by_dtype[dtype]]
    return max(present)[1] if present else None


def _notes(
    model: onnx.ModelProto,
    opsets: dict[str, int],
    inputs: list[TensorSpec],
    values: dict[str, int],
    overrides: dict[str, int],
    size_bytes: int,
    bytes_by_dtype: Counter[int],
    count_by_dtype: Counter[int],
) -> list[str]:
    """Factual remarks for the user: precision, dynamic dims, versions, size, ignored parts."""
    notes = []
    total = sum(bytes_by_dtype.values())
    for dtype, label in ((_FLOAT16, "float16"), (_BFLOAT16, "bfloat16")):
        if bytes_by_dtype[dtype]:
            notes.append(
                f"{label} weights: {count_by_dtype[dtype]} initializer(s), {format_bytes(bytes_by_dtype[dtype])} "
                f"of {format_bytes(total)}"
            )
    batch = batch_symbols(inputs)  # the normal case: ModelInfo.batch_symbols, not a remark
    others = [s for s in values if s not in batch and s not in overrides]
    if others:
        notes.append(f"other symbolic dimensions set to their default 1: {', '.join(others)}")
    if model.ir_version >= 11:
        notes.append(
            f"IR version {model.ir_version} needs a recent ONNX Runtime (each release loads IR versions up to its own)"
        )
    unused = sorted(set(opsets) - {""} - {node_domain(n) for c in node_lists(model) for n in c.node})
    if unused:
        notes.append(f"opset imports for domain(s) no node uses: {', '.join(unused)}")
    if size_bytes > _LARGE_MODEL_BYTES:
        notes.append(f"large model: {format_bytes(size_bytes)}; loading it takes at least as much memory")
    if len(model.training_info):
        notes.append("the model carries training_info, which inference ignores")
    if len(model.functions):
        names = ", ".join(f"{f.domain}.{f.name}" for f in model.functions[:5])
        notes.append(f"{len(model.functions)} model-local function(s): {names}")
    return notes
