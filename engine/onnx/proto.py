"""A model's protobuf as the other steps read it: loaded without its external data (a truncated or foreign file
refused saying so), walked through every graph, subgraph and model-local function to its nodes and tensors, and its
external-data references checked (relative, inside the model's folder, no symlinks, within their files, of the size
their tensors need) before onnx reads any of them. Preparation, inspection and the FLOP count all read it this way.
onnx is imported inside the functions that need it, so importing the engine stays cheap.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import one_line
from engine.core.words import format_bytes
from engine.onnx.model import Limits, ModelError

if TYPE_CHECKING:
    import onnx

EXTERNAL = 1  # TensorProto.EXTERNAL

# Bits per element of each TensorProto.DataType (STRING has no fixed size).
DTYPE_BITS = {
    **{1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128},
    **{16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2, 27: 6, 28: 6},
}


def _subgraphs(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from graphs(attr.g)
            for graph in attr.graphs:
                yield from graphs(graph)


def graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph (If/Loop/Scan bodies) inside it."""
    yield graph
    yield from _subgraphs(graph.node)


def node_lists(model: onnx.ModelProto) -> Iterator[Any]:
    """Every graph, subgraph and model-local function body: the containers of nodes."""
    yield from graphs(model.graph)
    for function in model.functions:
        yield function
        yield from _subgraphs(function.node)


def _attribute_tensors(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
                yield sparse.values
                yield sparse.indices


def all_tensors(model: onnx.ModelProto) -> Iterator[Any]:
    """Initializers, sparse initializers and attribute tensors, in graphs, subgraphs and functions."""
    for container in node_lists(model):
        if hasattr(container, "initializer"):
            yield from container.initializer
            for sparse in container.sparse_initializer:
                yield sparse.values
                yield sparse.indices
        yield from _attribute_tensors(container.node)


def node_domain(node: Any) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def op_key(node: Any) -> str:
    """Op type, qualified by domain outside the default one (as ORT's docs write `com.microsoft.Attention`)."""
    domain = node_domain(node)
    return f"{domain}.{node.op_type}" if domain else node.op_type


def load_proto(path: Path) -> onnx.ModelProto:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise ModelError(f"{path.name}: truncated or not an ONNX protobuf: {one_line(exc)}") from exc
    missing = [
        name for name, ok in (("ir_version", model.ir_version > 0), ("graph", model.HasField("graph"))) if not ok
    ]
    if missing:
        raise ModelError(
            f"{path.name}: truncated or not an ONNX protobuf: it parses, but has no {' or '.join(missing)}"
        )
    return model


def _external_data_file(tensor: Any, base: Path) -> tuple[str, int]:
    """Validate one tensor's external-data reference; returns (relative path, file size)."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    who = f"external data of tensor {tensor.name!r} ({location!r})"
    if not location or "\x00" in location:
        raise ModelError(f"{who}: no usable location")
    if "\\" in location:
        raise ModelError(f"{who}: backslashes are refused; use a relative path with forward slashes")
    if location.startswith("/") or os.path.isabs(location) or re.match(r"^[A-Za-z]:", location):
        raise ModelError(f"{who}: absolute paths are refused; it must be relative to the model's folder")
    parts = [p for p in location.split("/") if p not in ("", ".")]
    # Any '..' is refused, not just an escaping one: the OS resolves 'dir/..' through 'dir' if it is a link.
    if not parts or ".." in parts:
        raise ModelError(f"{who}: the path leaves the model's folder; it must stay inside it")
    current = base
    for k, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise ModelError(
                f"{who}: the file is missing; an uploaded model is read alone, so give a .zip that holds the model "
                "and its data files (on the command line, they may also sit beside the model)"
            ) from None
        except OSError as exc:
            raise ModelError(f"{who}: cannot be read: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise ModelError(f"{who}: {'/'.join(parts[: k + 1])!r} is a symlink; symlinks are refused")
        if k < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise ModelError(f"{who}: {'/'.join(parts[: k + 1])!r} is not a folder")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{who}: not a regular file")
    _check_extent(tensor, entries, st.st_size, who)
    return "/".join(parts), st.st_size


def _check_extent(tensor: Any, entries: dict[str, str], file_size: int, who: str) -> None:
    """offset/length must lie within the file and match what the tensor's shape and type need."""
    try:
        offset = int(entries.get("offset", "0") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise ModelError(f"{who}: offset/length are not integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{who}: negative offset or length")
    end = offset + (length or 0)
    if offset > file_size or end > file_size:
        raise ModelError(f"{who}: offset {offset:,} + length {length or 0:,} is beyond the file's {file_size:,} bytes")
    need = tensor_nbytes(tensor)
    bits = DTYPE_BITS.get(tensor.data_type, 0)
    if need is None or bits % 8:
        return  # strings, and packed sub-byte types whose padding rules vary
    available = length if length is not None else file_size - offset
    if (length is not None and available != need) or available < need:
        raise ModelError(f"{who}: holds {available:,} bytes but its shape and type need {need:,}")


def validate_external_data(model: onnx.ModelProto, base: Path, limits: Limits) -> dict[str, int]:
    """Every external reference checked before onnx reads any of it; returns {relative path: size}."""
    files: dict[str, int] = {}
    for tensor in all_tensors(model):
        if tensor.data_location == EXTERNAL:
            rel, size = _external_data_file(tensor, base)
            files[rel] = size
    total = sum(files.values())
    if total > limits.max_unpacked_bytes:
        raise ModelError(
            f"the external data files hold {format_bytes(total)}, "
            f"over the limit of {format_bytes(limits.max_unpacked_bytes)}"
        )
    return files


def tensor_nbytes(tensor: Any) -> int | None:
    """Bytes of a tensor from its metadata (never its data); None for strings."""
    bits = DTYPE_BITS.get(tensor.data_type)
    if bits is None:
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8
