"""A model's inputs and outputs read from its graph as TensorSpecs, and the values of their symbolic dimensions:
every symbol 1 unless set (an unknown name or a value out of range refused, since a typo would run at the default),
the batch symbols an evaluation sweeps, and what one run holds at those values: its inputs' elements (refused over
the limit before anything is allocated) and its outputs' bytes (what the output budget counts).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.onnx.model import Limits, ModelError, TensorSpec
from engine.onnx.proto import DTYPE_BITS

if TYPE_CHECKING:
    import onnx

MAX_SYMBOL_VALUE = 1_000_000


def _dtype_name(elem_type: int) -> str:
    from onnx import TensorProto, helper

    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return (
            TensorProto.DataType.Name(elem_type).lower() if elem_type in TensorProto.DataType.values() else "undefined"
        )


def _text(value: str | bytes, what: str) -> str:
    """A name from the model; protobuf hands back a string that is not valid UTF-8 as bytes."""
    if not isinstance(value, str):
        raise ModelError(f"{what} ({value!r}) is not valid UTF-8 text, which ONNX requires of names")
    return value


def _spec(value_info: Any, is_input: bool, limits: Limits, warnings: list[str]) -> TensorSpec:
    """A graph input/output as a TensorSpec; unnamed input dims get a generated symbol so they can be set."""
    _text(value_info.name, f"the graph {'input' if is_input else 'output'} name")
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        warnings.append(f"{value_info.name!r} is a {kind or 'untyped value'}, not a tensor")
        return TensorSpec(value_info.name, kind or "undefined", [])
    tensor_type = value_info.type.tensor_type
    spec = TensorSpec(value_info.name, _dtype_name(tensor_type.elem_type), [])
    if not tensor_type.HasField("shape"):
        warnings.append(f"{value_info.name!r} has no declared shape (unknown rank); shown as []")
        return spec
    for k, dim in enumerate(tensor_type.shape.dim):
        which = dim.WhichOneof("value")
        if which == "dim_value":
            if dim.dim_value < 0:
                raise ModelError(f"{value_info.name!r} declares a negative dimension {dim.dim_value}")
            if is_input and dim.dim_value > limits.max_input_elements:
                raise ModelError(
                    f"input {value_info.name!r} declares dimension {k} = {dim.dim_value:,}, more than the limit of "
                    f"{limits.max_input_elements:,} input elements on its own"
                )
            spec.shape.append(int(dim.dim_value))
        elif which == "dim_param" and dim.dim_param:
            spec.shape.append(_text(dim.dim_param, f"the name of dimension {k} of {value_info.name!r}"))
        elif is_input:
            spec.shape.append(f"{value_info.name}_dim{k}")
            warnings.append(f"input {value_info.name!r} dimension {k} has no value or name; called {spec.shape[-1]!r}")
        else:
            spec.shape.append(None)
    return spec


@dataclass
class GraphIO:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    overridable: list[TensorSpec]  # graph inputs with an initializer as their default (IR 4 on)
    constants: list[str]  # every other top-level initializer


def graph_io(model: onnx.ModelProto, limits: Limits, warnings: list[str]) -> GraphIO:
    """Inputs a run must be given, outputs, and the initializers: those a run may set (listed as graph inputs, IR 4
    on; ONNX Runtime's overridable initializers) and the constants (ONNX Runtime holds an IR 3 model's listed ones
    constant too: before ONNX 1.3 every initializer was listed)."""
    graph = model.graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    dims |= {sparse.values.name: list(sparse.dims) for sparse in graph.sparse_initializer}
    inputs = [_spec(vi, True, limits, warnings) for vi in graph.input if vi.name not in dims]
    listed = [vi for vi in graph.input if vi.name in dims] if model.ir_version >= 4 else []
    overridable = [_default_spec(vi, dims[vi.name], limits) for vi in listed]
    outputs = [_spec(vi, False, limits, warnings) for vi in graph.output]
    for spec in outputs:
        fixed = math.prod(d for d in spec.shape if isinstance(d, int))
        if fixed > limits.max_input_elements:
            warnings.append(f"output {spec.name!r} declares at least {fixed:,} elements")
    settable = {spec.name for spec in overridable}
    return GraphIO(inputs, outputs, overridable, [name for name in dims if name not in settable])


def _default_spec(value_info: Any, dims: list[int], limits: Limits) -> TensorSpec:
    """An input with an initializer as its default, at the initializer's shape: what a value set in its place must
    have (a size the model leaves open is the default's too, so the user's array is bounded as the model is)."""
    spec = _spec(value_info, False, limits, [])  # its declared shape's gaps are the default's sizes: nothing to say
    if spec.is_tensor:
        spec.shape = list(dims)
    return spec


def _symbol_names(inputs: list[TensorSpec]) -> list[str]:
    return list(dict.fromkeys(d for spec in inputs for d in spec.shape if isinstance(d, str)))


def batch_symbols(inputs: list[TensorSpec]) -> list[str]:
    """The batch dimensions: every symbol that is some input's first dimension (what an evaluation sweeps)."""
    return list(dict.fromkeys(spec.shape[0] for spec in inputs if spec.shape and isinstance(spec.shape[0], str)))


def _symbol_value(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ModelError(f"symbol {name!r} must be an integer, got {value!r}") from None
    if not 1 <= number <= MAX_SYMBOL_VALUE:
        raise ModelError(f"symbol {name!r} must be between 1 and {MAX_SYMBOL_VALUE:,}, got {number:,}")
    return number


def default_symbols(inputs: list[TensorSpec], overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Every input symbol -> 1 (the smallest run, batch included), unless overrides give a value.

    Batch symbols (an input's first dimension) and the others both default to 1; the distinction only feeds the
    notes. Overrides for symbols the inputs do not have are refused,
    since a typo would otherwise silently run at the default.
    """
    known = _symbol_names(inputs)
    values = dict.fromkeys(known, 1)
    unknown = sorted(set(overrides or {}) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none (every input dimension is fixed)"
        raise ModelError(f"unknown symbol(s) {', '.join(unknown)}; this model's symbols are: {listed}")
    for name, value in (overrides or {}).items():
        values[name] = _symbol_value(name, value)
    return values


def check_input_budget(inputs: list[TensorSpec], symbols: dict[str, int], limits: Limits) -> int:
    """Total input elements of one run; refused above the limit, before anything is allocated."""
    total = 0
    parts = []
    for spec in inputs:
        shape = spec.concrete(symbols)
        count = math.prod(shape)
        total += count
        parts.append(f"{spec.name} {list(shape)} = {count:,}")
    if total > limits.max_input_elements:
        used = {s: symbols[s] for s in _symbol_names(inputs)}
        advice = f"at {', '.join(f'{k}={v}' for k, v in used.items())}; use smaller values" if used else "fixed shapes"
        raise ModelError(
            f"one run needs {total:,} input elements ({'; '.join(parts)}), over the limit of "
            f"{limits.max_input_elements:,} ({advice})"
        )
    return total


def _dtype_bits(dtype: str) -> int | None:
    """Bits per element of a TensorSpec dtype: numpy's name, or ONNX's where numpy has none (bfloat16, float8 and
    the sub-byte types, whose ONNX sizes are exact); None for strings and non-tensors, which have no fixed size."""
    import numpy as np
    from onnx import TensorProto

    try:
        return DTYPE_BITS.get(TensorProto.DataType.Value(dtype.upper().replace("_", "")))
    except ValueError:  # a numpy name: float32, float64, bool...
        pass
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        return None
    return None if np_dtype.kind in "OUS" else np_dtype.itemsize * 8


def tensor_bytes(dtype: str, shape: Iterable[int]) -> int | None:
    """Bytes of a tensor of this dtype and shape (dtype size times elements); None for strings and non-tensors."""
    bits = _dtype_bits(dtype)
    return None if bits is None else (math.prod(shape) * bits + 7) // 8


def output_bytes(outputs: list[TensorSpec], symbols: dict[str, int]) -> dict[str, int | None]:
    """Each output's bytes in one run at `symbols`, from its declared shape; None where the declaration leaves a
    dimension open (unnamed, or a symbol no input has) or the type has no fixed size (strings, sequences)."""
    sizes: dict[str, int | None] = {}
    for spec in outputs:
        dims = [d if isinstance(d, int) else symbols.get(d) if isinstance(d, str) else None for d in spec.shape]
        sizes[spec.name] = None if None in dims else tensor_bytes(spec.dtype, dims)  # type: ignore[arg-type]
    return sizes
