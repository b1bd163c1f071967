"""Load, validate and inspect an uploaded ONNX model, without running it.

Uploads are hostile until proven otherwise. `prepare_model` turns an upload (a bare `.onnx`, or a
`.zip` holding a model plus its external-data files) into a private folder, refusing zip bombs,
path tricks and symlinks *before* anything is written. `inspect_model` parses the protobuf without
following external data, validates every external-data reference (relative, inside the model's
folder, no symlinks, within the file), refuses custom-op domains (they would need user shared
libraries, which are never loaded), runs the ONNX checker, then reports inputs, outputs, operators,
parameters and an estimate of the FLOPs at chosen values of the symbolic dimensions.

No ONNX Runtime here: sessions and evaluation live in engine/onnx/evaluate.py. onnx is imported inside the
functions that need it, so importing the engine stays cheap.
"""

from __future__ import annotations

import hashlib
import math
import operator
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import InputError, one_line
from engine.core.words import format_bytes

if TYPE_CHECKING:
    import numpy as np
    import onnx

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # how a zip starts: a file, or an empty archive
ACCEPTED = "an .onnx model file, or a .zip holding exactly one .onnx model plus its external-data files"
# ONNX, ONNX-ML and ORT's contrib ops are implemented by ONNX Runtime itself; anything else is a custom op.
ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# Domains of the provider-specific operators in a model ONNX Runtime optimized and saved (the CPU's NCHWc layout).
ORT_LAYOUT_DOMAINS = {"com.microsoft.nchwc"}
MAX_SYMBOL_VALUE = 1_000_000
_CHUNK = 1 << 20
# Tiny members are exempt from the ratio test: zipfile never inflates past the declared size, and a
# few kB of zeros (a zero bias) compress far beyond any sane ratio. The declared total still applies.
_RATIO_MIN_BYTES = 1 << 20
# Central-directory bytes allowed per permitted member (name + extra fields), checked before zipfile
# parses it: a forged directory could otherwise hold millions of entries.
_CD_BYTES_PER_MEMBER = 1024
# Tensors larger than this lose their data before shape inference, which only needs small shape tensors.
_STRIP_BYTES = 64 * 1024
_EXTERNAL = 1  # TensorProto.EXTERNAL
_LARGE_MODEL_BYTES = 1 << 30
_LISTED = 5  # names a note lists before "and N more"
DEFAULTS_LISTED = 10  # inputs with a default that a description (onnx inspect, the tab's table) shows by name

# Bits per element of each TensorProto.DataType (STRING has no fixed size).
_DTYPE_BITS = {
    **{1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128},
    **{16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2, 27: 6, 28: 6},
}
_FLOAT16, _BFLOAT16, _STRING = 10, 16, 8


class ModelError(InputError):
    """The upload or model is refused; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 2 * 2**30  # the uploaded file (onnx or zip)
    max_unpacked_bytes: int = 4 * 2**30  # sum of a zip's members, as declared and as actually read
    max_members: int = 2000
    max_ratio: float = 200.0  # a zip member's uncompressed/compressed ratio above this is a bomb
    max_input_elements: int = 256 * 2**20  # all inputs of one run together, after symbolic dims are filled
    # Output bytes an evaluation holds at once (each provider's outputs at the first batch size, kept for parity,
    # plus one run's at the largest): 1 GiB, what the input limit is in float32, so a job's data stays within a
    # few GiB of host memory next to the other jobs; a talking-head model's frames are a few MiB per sample.
    max_output_bytes: int = 2**30


def type_name(dtype: str) -> str:
    """A tensor type as people name it: numpy calls ONNX's string tensors "object"."""
    return "string" if dtype == "object" else dtype


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64", "bool", "float16"
    shape: list[int | str | None]  # ints, symbolic names ("batch", "N"), or None for unknown

    def concrete(self, values: dict[str, int]) -> tuple[int, ...]:
        """The shape with symbols filled in; every symbol must have a value (None dims cannot be filled)."""
        missing = [d for d in self.shape if isinstance(d, str) and d not in values]
        missing += [f"dimension {k} (unknown)" for k, d in enumerate(self.shape) if d is None]
        if missing:
            raise ModelError(f"input {self.name!r} {self.shape}: no value for {', '.join(missing)}")
        return tuple(d if isinstance(d, int) else int(values[d]) for d in self.shape)  # type: ignore[index]

    def numpy_dtype(self) -> np.dtype:
        """numpy's dtype for ``dtype``: ONNX's bfloat16 and float8 types are ml_dtypes' (OrtSession feeds them as
        their bits); TypeError for one ONNX Runtime's Python cannot pass or return (the packed 2- and 4-bit types,
        float4, float6, float8_e8m0fnu)."""
        import numpy as np

        from engine.runtimes.ort_session import BITS_ONLY

        if self.dtype in BITS_ONLY:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.dtype))
        dtype = np.dtype(self.dtype)
        if dtype.kind == "V":  # another ml_dtypes type (int4, float8_e8m0fnu...): ONNX Runtime's Python has no way
            raise TypeError(f"{self.dtype} cannot be passed to or read from ONNX Runtime")
        return dtype

    @property
    def type_name(self) -> str:
        return type_name(self.dtype)

    @property
    def is_tensor(self) -> bool:
        """A tensor, not a sequence, map or optional value (whose dtype is its kind, e.g. "sequence_type")."""
        return not self.dtype.endswith("_type") and self.dtype != "undefined"

    @property
    def is_numeric(self) -> bool:
        """A tensor of numbers or bools that numpy can hold: what accuracy figures and top-k can be computed on."""
        try:
            return self.is_tensor and self.numpy_dtype().kind in "biufV"
        except TypeError:
            return False

    @property
    def is_float(self) -> bool:
        """A floating-point input: numpy's kinds and the ml_dtypes ones (bfloat16, float8)."""
        return self.dtype.startswith(("float", "bfloat"))


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]
    parameters: int
    parameter_bytes: int
    flops: int | None
    flops_counted: dict[str, int]
    flops_not_counted: list[str]
    symbols: dict[str, int]
    external_data: list[str]
    warnings: list[str] = field(default_factory=list)
    # The symbols that are some input's first dimension: the batch an evaluation sets to each size asked for. The
    # normal case, so a fact shown beside the symbols, not a warning.
    batch_symbols: list[str] = field(default_factory=list)
    # Each output's shape at `symbols` as shape inference found it; missing where only running can tell.
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    # The floating-point type holding most of the weights' bytes (fp32, fp16 or bf16); None where no weight is one.
    weights_precision: str | None = None
    # Graph inputs an initializer gives a default (IR 4 on): a run uses it unless the user's inputs set them, at its
    # shape. Not in `inputs`, which a run must be given (synthetic data would replace the model's own values).
    overridable_inputs: list[TensorSpec] = field(default_factory=list)
    # The top-level initializers a run cannot set (ONNX Runtime holds them constant, an IR 3 model's listed inputs
    # too): named so that an inputs .npz setting one is told so. Not in to_dict: a large model has thousands.
    constants: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "constants"}


# ---------------------------------------------------------------------------------------------- helpers


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


def file_sha256(path: str | os.PathLike) -> str:
    """The content address of an upload (pass it to inspect_model as sha256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _regular_file_size(path: Path, what: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"{what} {path.name!r} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{what} {path.name!r} is not a regular file; accepted: {ACCEPTED}")
    return st.st_size


def _exact_bytes(n: int) -> str:
    return f"{format_bytes(n)} ({n:,} bytes)" if n >= 1024 else f"{n} bytes"


def _check_size(name: str, size: int, limits: Limits) -> None:
    if size > limits.max_file_bytes:
        raise ModelError(
            f"{name} is {_exact_bytes(size)}, over the limit of {_exact_bytes(limits.max_file_bytes)} "
            "(AVATARBENCH_MAX_UPLOAD_MB)"
        )
    if size == 0:
        raise ModelError(f"{name} is empty (0 bytes): it is not an ONNX model or a .zip; accepted: {ACCEPTED}")


# ModelProto field number -> protobuf wire type; serialisers write field 1 (ir_version) first.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _looks_like_model_proto(head: bytes) -> bool:
    """Whether the first tag is one a ModelProto can start with (a cheap sniff, not a validation)."""
    tag, shift = 0, 0
    for byte in head[:5]:
        tag |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return _MODEL_FIELDS.get(tag >> 3) == (tag & 7)
        shift += 7
    return False


# ---------------------------------------------------------------------------------------------- prepare


def prepare_model(
    upload: str | os.PathLike, workdir: str | os.PathLike, limits: Limits = Limits(), beside: bool = False
) -> Path:
    """Copy or unpack an upload into a fresh folder under workdir; returns the .onnx path inside it.

    Each call gets its own folder (`workdir/model-XXXX`), so a reused workdir never mixes uploads. With `beside`
    (a file the user named on the command line, never an upload) a plain model's external data files are taken
    from its own folder too, under the same rules as a zip's (relative, inside the folder, no links, within the
    limits), copied beside the copy of the model.
    """
    src = Path(upload)
    size = _regular_file_size(src, "model" if beside else "upload")
    _check_size(src.name, size, limits)
    with open(src, "rb") as f:
        head = f.read(16)
    is_zip = head.startswith(ZIP_MAGIC)
    if not is_zip and not _looks_like_model_proto(head):
        raise ModelError(
            f"{src.name} is not an ONNX model or a .zip (it starts with {head[:8]!r}); accepted: {ACCEPTED}"
        )
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="model-", dir=root))
    try:
        if is_zip:
            return _extract_zip(src, size, dest, limits)
        # the upload's own name, so that messages about the copy name the file the user gave
        target = dest / (src.name if src.suffix.lower() == ".onnx" and src.name.isprintable() else "model.onnx")
        _copy_limited(src, target, limits.max_file_bytes)
        if beside:
            for rel in _validate_external_data(_load_proto(src), src.parent, limits):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src.parent / rel, dest / rel)  # not a hard link: onnx's checker refuses those
        return target
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _copy_limited(src: Path, dst: Path, limit: int) -> None:
    """Copy counting bytes, so a file that grows after the size check is still caught."""
    written = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise ModelError(f"{src.name} grew beyond the limit of {format_bytes(limit)} while being copied")
            fout.write(chunk)


_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _central_directory(path: Path, size: int) -> tuple[int, int]:
    """(entries, bytes) of a zip's central directory, read from its end records before zipfile parses it."""
    with open(path, "rb") as f:
        tail_len = min(size, _EOCD.size + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + _EOCD.size > len(tail):
            raise ModelError(f"{path.name} starts like a zip but has no end-of-central-directory record (truncated?)")
        _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
        if (entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF) and pos >= _ZIP64_LOCATOR.size:
            sig, _, z64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, pos - _ZIP64_LOCATOR.size)
            if sig == b"PK\x06\x07" and z64_offset + _ZIP64_EOCD.size <= size:
                f.seek(z64_offset)
                record = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
                if record[0] == b"PK\x06\x06":
                    entries, cd_size = record[7], record[8]
    return entries, cd_size


def _member_parts(name: str) -> list[str]:
    """The path components of a zip member, refusing anything that could land outside the folder."""
    bad = None
    if not name or "\x00" in name:
        bad = "an empty or NUL-containing name"
    elif "\\" in name:
        bad = "a backslash (Windows path trick)"
    elif name.startswith("/"):
        bad = "an absolute path"
    elif re.match(r"^[A-Za-z]:", name):
        bad = "a drive letter"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if bad is None and ".." in parts:
        bad = "a '..' component"
    if bad is None and not parts:
        bad = "no file name"
    if bad:
        raise ModelError(f"zip member {name!r} has {bad}; members must be relative paths inside the archive")
    return parts


def _plan_zip(infos: list[zipfile.ZipInfo], limits: Limits) -> tuple[list[tuple[zipfile.ZipInfo, list[str]]], str]:
    """Every bomb and path check, before a byte is written; returns (members to extract, the .onnx member)."""
    if len(infos) > limits.max_members:
        raise ModelError(f"the zip has {len(infos):,} members, over the limit of {limits.max_members:,}")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_unpacked_bytes:
        raise ModelError(
            f"the zip declares {format_bytes(declared)} ({declared:,} bytes) unpacked, over the limit of "
            f"{format_bytes(limits.max_unpacked_bytes)}"
        )
    seen: set[str] = set()
    plan: list[tuple[zipfile.ZipInfo, list[str]]] = []
    models: list[str] = []
    for info in infos:
        parts = _member_parts(info.filename)
        key = "/".join(parts)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ModelError(f"zip member {info.filename!r} is a symlink; symlinks are refused")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ModelError(f"zip member {info.filename!r} is not a regular file or folder")
        if info.flag_bits & 0x1:
            raise ModelError(f"zip member {info.filename!r} is encrypted; upload an unencrypted zip")
        if key in seen:
            raise ModelError(f"zip member {key!r} appears more than once")
        seen.add(key)
        if parts[0] == "__MACOSX":  # Finder's resource forks ("._model.onnx"): not part of the model
            continue
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise ModelError(
                f"zip member {key!r} inflates {ratio:,.0f}x ({info.compress_size:,} -> {info.file_size:,} bytes), "
                f"over the limit of {limits.max_ratio:g}x: refused as a zip bomb"
            )
        plan.append((info, parts))
        if not info.is_dir() and parts[-1].lower().endswith(".onnx"):
            models.append(key)
    if len(models) != 1:
        members = ", ".join(sorted(seen)[:20]) if seen else "none (an empty zip)"
        found = ", ".join(models) if models else f"no .onnx file; members: {members}"
        raise ModelError(f"the zip must hold exactly one .onnx model (at any depth); found {found}")
    return plan, models[0]


def _extract_zip(src: Path, size: int, dest: Path, limits: Limits) -> Path:
    entries, cd_bytes = _central_directory(src, size)
    if entries > limits.max_members or cd_bytes > limits.max_members * _CD_BYTES_PER_MEMBER + 65536:
        raise ModelError(
            f"the zip's directory lists {entries:,} members in {cd_bytes:,} bytes, over the limit of "
            f"{limits.max_members:,} members"
        )
    try:
        with zipfile.ZipFile(src) as zf:
            plan, model = _plan_zip(zf.infolist(), limits)
            _extract_members(zf, plan, dest, limits)
    except ModelError:
        raise
    except OSError as exc:  # writing: disk full, a member that is both a file and a folder...
        raise ModelError(f"{src.name} could not be unpacked: {one_line(exc)}") from exc
    except Exception as exc:  # BadZipFile, CRC errors, unsupported compression or encryption...
        raise ModelError(f"{src.name} is not a readable zip: {one_line(exc)}") from exc
    return dest.joinpath(*model.split("/"))


def _extract_members(
    zf: zipfile.ZipFile, plan: list[tuple[zipfile.ZipInfo, list[str]]], dest: Path, limits: Limits
) -> None:
    """Our own loop: count the bytes actually inflated, since declared sizes can lie."""
    total = 0
    for info, parts in plan:
        target = dest.joinpath(*parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(info) as fin, open(target, "xb") as fout:
            while chunk := fin.read(_CHUNK):
                written += len(chunk)
                total += len(chunk)
                if written > info.file_size:
                    raise ModelError(f"zip member {info.filename!r} inflates beyond its declared size")
                if total > limits.max_unpacked_bytes:
                    raise ModelError(f"the zip unpacks to more than {format_bytes(limits.max_unpacked_bytes)}")
                fout.write(chunk)


# ---------------------------------------------------------------------------------------------- graph walking


def _subgraphs(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for graph in attr.graphs:
                yield from _graphs(graph)


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph (If/Loop/Scan bodies) inside it."""
    yield graph
    yield from _subgraphs(graph.node)


def _node_lists(model: onnx.ModelProto) -> Iterator[Any]:
    """Every graph, subgraph and model-local function body: the containers of nodes."""
    yield from _graphs(model.graph)
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


def _all_tensors(model: onnx.ModelProto) -> Iterator[Any]:
    """Initializers, sparse initializers and attribute tensors, in graphs, subgraphs and functions."""
    for container in _node_lists(model):
        if hasattr(container, "initializer"):
            yield from container.initializer
            for sparse in container.sparse_initializer:
                yield sparse.values
                yield sparse.indices
        yield from _attribute_tensors(container.node)


def _domain(node: Any) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _op_key(node: Any) -> str:
    """Op type, qualified by domain outside the default one (as ORT's docs write `com.microsoft.Attention`)."""
    domain = _domain(node)
    return f"{domain}.{node.op_type}" if domain else node.op_type


# ---------------------------------------------------------------------------------------------- validation


def _load_proto(path: Path) -> onnx.ModelProto:
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
    for container in _node_lists(model):
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
    need = _tensor_nbytes(tensor)
    bits = _DTYPE_BITS.get(tensor.data_type, 0)
    if need is None or bits % 8:
        return  # strings, and packed sub-byte types whose padding rules vary
    available = length if length is not None else file_size - offset
    if (length is not None and available != need) or available < need:
        raise ModelError(f"{who}: holds {available:,} bytes but its shape and type need {need:,}")


def _validate_external_data(model: onnx.ModelProto, base: Path, limits: Limits) -> dict[str, int]:
    """Every external reference checked before onnx reads any of it; returns {relative path: size}."""
    files: dict[str, int] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location == _EXTERNAL:
            rel, size = _external_data_file(tensor, base)
            files[rel] = size
    total = sum(files.values())
    if total > limits.max_unpacked_bytes:
        raise ModelError(
            f"the external data files hold {format_bytes(total)}, "
            f"over the limit of {format_bytes(limits.max_unpacked_bytes)}"
        )
    return files


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


# ---------------------------------------------------------------------------------------------- shapes and symbols


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
class _GraphIO:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    overridable: list[TensorSpec]  # graph inputs with an initializer as their default (IR 4 on)
    constants: list[str]  # every other top-level initializer


def _graph_io(model: onnx.ModelProto, limits: Limits, warnings: list[str]) -> _GraphIO:
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
    return _GraphIO(inputs, outputs, overridable, [name for name in dims if name not in settable])


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
        return _DTYPE_BITS.get(TensorProto.DataType.Value(dtype.upper().replace("_", "")))
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


# ---------------------------------------------------------------------------------------------- parameters


def _tensor_nbytes(tensor: Any) -> int | None:
    """Bytes of a tensor from its metadata (never its data); None for strings."""
    bits = _DTYPE_BITS.get(tensor.data_type)
    if bits is None:
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def _parameters(model: onnx.ModelProto) -> tuple[int, int, Counter[int], Counter[int]]:
    """(elements, bytes, bytes by dtype, count by dtype) over initializers in every graph."""
    elements, nbytes = 0, 0
    by_dtype: Counter[int] = Counter()
    count: Counter[int] = Counter()
    for graph in _graphs(model.graph):
        tensors = [(t, [t]) for t in graph.initializer]
        tensors += [(s.values, [s.values, s.indices]) for s in graph.sparse_initializer]
        for values, stored in tensors:
            n = math.prod(values.dims)
            size = sum(_tensor_nbytes(t) or sum(len(s) for s in t.string_data) for t in stored)
            elements += n
            nbytes += size
            by_dtype[values.data_type] += size
            count[values.data_type] += 1
    return elements, nbytes, by_dtype, count


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(_op_key(node) for graph in _graphs(model.graph) for node in graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------------------------------- FLOPs

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


def _strip_large_tensors(model: onnx.ModelProto) -> None:
    """Drop big tensors' data (after the checker has seen it): shape inference needs only small shape tensors."""
    data_fields = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    for tensor in _all_tensors(model):
        if tensor.data_location == _EXTERNAL or (_tensor_nbytes(tensor) or 0) <= _STRIP_BYTES:
            continue
        for name in data_fields:
            tensor.ClearField(name)
        tensor.data_location = _EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "stripped-for-shape-inference"


def _concrete_model(model: onnx.ModelProto, inputs: list[TensorSpec], values: dict[str, int]) -> None:
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


def _inferred_shapes(model: onnx.ModelProto, warnings: list[str]) -> Shapes:
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


def _estimate_flops(
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
        key, rule = _op_key(node), _FLOP_RULES.get((_domain(node), node.op_type))
        if node.op_type in _CONTROL_FLOW and not _domain(node):
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
    for graph in list(_graphs(model.graph))[1:]:
        for node in graph.node:
            reasons[_op_key(node)]["inside a subgraph"] += 1
    not_counted = []
    for key in sorted(reasons):
        notes = [f"{why}: {n} node{'s' if n > 1 else ''}" for why, n in sorted(reasons[key].items()) if why]
        not_counted.append(f"{key} ({'; '.join(notes)})" if notes else key)
    unknown = sum(r["shape unknown"] for r in reasons.values())
    if unknown and counted:
        warnings.append(f"FLOPs are a lower bound: {unknown} node(s) with a FLOP rule had unknown shapes")
    total = sum(counted.values()) if counted else None
    return total, dict(sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))), not_counted


# ---------------------------------------------------------------------------------------------- inspect


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
    size = _regular_file_size(model_path, "model")
    _check_size(model_path.name, size, limits)
    digest = sha256 or file_sha256(model_path)
    model = _load_proto(model_path)
    opsets = _opsets(model)
    _check_versions(model, opsets)
    _check_domains(model)
    warnings: list[str] = []
    io = _graph_io(model, limits, warnings)
    inputs, outputs = io.inputs, io.outputs
    external = _validate_external_data(model, model_path.parent, limits)
    size_bytes = size + sum(external.values())
    _run_checker(model, model_path, size_bytes, bool(external))
    values = default_symbols(inputs, symbols)
    check_input_budget(inputs, values, limits)
    parameters, parameter_bytes, bytes_by_dtype, count_by_dtype = _parameters(model)
    op_counts = _op_counts(model)
    _strip_large_tensors(model)
    _concrete_model(model, inputs, values)
    shapes = _inferred_shapes(model, warnings)
    flops, counted, not_counted = _estimate_flops(model, shapes, warnings)
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


def _initializer_notes(ir_version: int, graph: onnx.GraphProto, io: _GraphIO) -> list[str]:
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
    unused = sorted(set(opsets) - {""} - {_domain(n) for c in _node_lists(model) for n in c.node})
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
