"""An upload made into a private folder before anything reads it as a model. Uploads are hostile until proven
otherwise: `prepare_model` takes a bare .onnx (copied, counting its bytes) or a .zip holding one model plus its
external-data files, and refuses zip bombs, path tricks, symlinks and files over the limits before a byte is
written. Inspection checks the prepared file's size again with the same rules (regular_file_size, check_size).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

from engine.core.errors import one_line
from engine.core.words import format_bytes
from engine.onnx.model import Limits, ModelError
from engine.onnx.proto import load_proto, validate_external_data

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # how a zip starts: a file, or an empty archive
ACCEPTED = "an .onnx model file, or a .zip holding exactly one .onnx model plus its external-data files"

_CHUNK = 1 << 20
# Tiny members are exempt from the ratio test: zipfile never inflates past the declared size, and a
# few kB of zeros (a zero bias) compress far beyond any sane ratio. The declared total still applies.
_RATIO_MIN_BYTES = 1 << 20
# Central-directory bytes allowed per permitted member (name + extra fields), checked before zipfile
# parses it: a forged directory could otherwise hold millions of entries.
_CD_BYTES_PER_MEMBER = 1024


def file_sha256(path: str | os.PathLike) -> str:
    """The content address of an upload (pass it to inspect_model as sha256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def regular_file_size(path: Path, what: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"{what} {path.name!r} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{what} {path.name!r} is not a regular file; accepted: {ACCEPTED}")
    return st.st_size


def _exact_bytes(n: int) -> str:
    return f"{format_bytes(n)} ({n:,} bytes)" if n >= 1024 else f"{n} bytes"


def check_size(name: str, size: int, limits: Limits) -> None:
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
    size = regular_file_size(src, "model" if beside else "upload")
    check_size(src.name, size, limits)
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
            for rel in validate_external_data(load_proto(src), src.parent, limits):
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
