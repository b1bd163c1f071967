"""engine.onnx.model: hostile uploads are refused, honest ones are described correctly (FLOPs by hand)."""

from __future__ import annotations

import json
import os
import random
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from engine.onnx.inspection import inspect_model  # noqa: E402
from engine.onnx.model import Limits, ModelError, TensorSpec  # noqa: E402
from engine.onnx.prepare import file_sha256, prepare_model  # noqa: E402
from engine.onnx.symbols import (  # noqa: E402
    check_input_budget,
    default_symbols,
    graph_io,
    output_bytes,
    tensor_bytes,
)

F = TensorProto.FLOAT


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),), ir_version=8, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    imports = [helper.make_opsetid(d, v) for d, v in opsets]
    return helper.make_model(graph, opset_imports=imports, ir_version=ir_version, **kw)


def _write(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def conv_net() -> onnx.ModelProto:
    """x[batch,3,8,8] -> Conv 3x3 (4 ch, pad 1) -> Relu -> Flatten -> Gemm(256->10, +C) -> MatMul(10->5)."""
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W2", "C"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "W3"], ["y"]),
    ]
    inits = [
        _init("W", (4, 3, 3, 3)),
        _init("B", (4,)),
        _init("W2", (10, 256)),
        _init("C", (10,)),
        _init("W3", (10, 5)),
    ]
    x = helper.make_tensor_value_info("x", F, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", F, ["batch", 5])
    return _model(nodes, [x], [y], inits, producer_name="avatarbench-test", producer_version="1.0")


def conv_net_flops(batch: int) -> int:
    """2 FLOPs per multiply-add; neither bias is counted (torch's flop counter counts none: the bench compares them)."""
    conv = 2 * (batch * 4 * 8 * 8) * 3 * (3 * 3)
    gemm = 2 * batch * 10 * 256
    matmul = 2 * batch * 5 * 10
    return conv + gemm + matmul


def test_conv_net_inspection(tmp_path: Path) -> None:
    upload = _write(conv_net(), tmp_path / "net.onnx")
    path = prepare_model(upload, tmp_path / "work")
    assert path.parent.parent == tmp_path / "work" and path.read_bytes() == upload.read_bytes()
    assert path.name == "net.onnx"  # the upload's name: messages about the private copy name the user's file
    info = inspect_model(path, sha256=file_sha256(upload))
    assert info.sha256 == file_sha256(upload) and info.path == str(path)
    assert info.ir_version == 8 and info.opsets == {"": 17} and info.producer == "avatarbench-test 1.0"
    assert info.inputs == [TensorSpec("x", "float32", ["batch", 3, 8, 8])]
    assert info.outputs == [TensorSpec("y", "float32", ["batch", 5])]
    assert info.op_counts == {"Conv": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1, "Relu": 1}
    assert info.parameters == 108 + 4 + 2560 + 10 + 50
    assert info.parameter_bytes == 4 * info.parameters
    assert info.symbols == {"batch": 1}
    assert info.flops == conv_net_flops(1) == 19044
    assert info.flops_counted == {"Conv": 13824, "Gemm": 5120, "MatMul": 100}  # its bias C counted 10 more
    assert info.flops_not_counted == ["Flatten", "Relu"]
    assert info.external_data == [] and info.size_bytes == upload.stat().st_size
    # a free batch is the normal case: a fact, not a warning (every model's inspection and job warned of it)
    assert info.batch_symbols == ["batch"] and not any("dynamic batch" in w for w in info.warnings)
    json.dumps(info.to_dict())  # plain data all the way down

    assert info.output_shapes == {"y": [1, 5]}  # shape inference at the inspected symbols

    info8 = inspect_model(path, symbols={"batch": 8})
    assert info8.symbols == {"batch": 8} and info8.output_shapes == {"y": [8, 5]}
    assert info8.flops == conv_net_flops(8) == 8 * info.flops
    assert info8.sha256 == file_sha256(path)  # without the upload's hash, the model file's own


def test_depth_like_model_and_input_budget(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["image", "W"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Squeeze", ["c", "axes"], ["depth"]),
    ]
    inits = [_init("W", (1, 3, 1, 1)), numpy_helper.from_array(np.array([1], np.int64), "axes")]
    image = helper.make_tensor_value_info("image", F, [8, 3, 448, 448])
    depth = helper.make_tensor_value_info("depth", F, [8, 448, 448])
    info = inspect_model(_write(_model(nodes, [image], [depth], inits), tmp_path / "depth.onnx"))
    assert info.inputs == [TensorSpec("image", "float32", [8, 3, 448, 448])]
    assert info.outputs == [TensorSpec("depth", "float32", [8, 448, 448])]
    assert info.symbols == {}
    assert info.flops == 2 * (8 * 448 * 448) * 3
    assert check_input_budget(info.inputs, {}, Limits()) == 8 * 3 * 448 * 448
    with pytest.raises(ModelError, match=r"4,816,896 input elements.*over the limit of 1,000,000"):
        check_input_budget(info.inputs, {}, Limits(max_input_elements=1_000_000))


# ---------------------------------------------------------------------------------------------- external data


def _external_model_dir(folder: Path) -> Path:
    """model.onnx + weights.bin (the 64x64 MatMul weight, 16 KiB); the bias stays inline."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "bias"], ["y"])]
    x = helper.make_tensor_value_info("x", F, ["batch", 64])
    y = helper.make_tensor_value_info("y", F, ["batch", 64])
    model = _model(nodes, [x], [y], [_init("W", (64, 64)), _init("bias", (64,))])
    folder.mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(folder)  # onnx refuses a location that already exists relative to the *working* directory
    try:
        onnx.save_model(
            model, "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin"
        )
    finally:
        os.chdir(cwd)
    return folder / "model.onnx"


def _set_external(model_path: Path, **entries: str) -> None:
    """Rewrite W's external-data entries in place (without touching the data)."""
    model = onnx.load(str(model_path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == "W")
    current = {e.key: e.value for e in tensor.external_data} | entries
    del tensor.external_data[:]
    for key, value in current.items():
        tensor.external_data.add(key=key, value=value)
    model_path.write_bytes(model.SerializeToString())


def test_zipped_external_data_model(tmp_path: Path) -> None:
    model_path = _external_model_dir(tmp_path / "src")
    upload = tmp_path / "upload.zip"
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("other.onnx", b"nested zips are just data")
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(model_path, "pkg/model.onnx")
        zf.write(model_path.parent / "weights.bin", "pkg/weights.bin")
        zf.write(inner, "pkg/extras/inner.zip")
        zf.writestr("__MACOSX/pkg/._model.onnx", b"Finder metadata")
    path = prepare_model(upload, tmp_path / "work")
    assert path.name == "model.onnx" and path.parent.name == "pkg"
    info = inspect_model(path, sha256=file_sha256(upload))
    assert info.external_data == ["weights.bin"]
    assert info.size_bytes == path.stat().st_size + 64 * 64 * 4
    assert info.parameters == 64 * 64 + 64 and info.parameter_bytes == 4 * info.parameters
    assert info.flops == 2 * 64 * 64 and info.flops_not_counted == ["Add"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("escape", "leaves the model's folder"),
        ("absolute", "absolute paths are refused"),
        ("symlink", "is a symlink"),
        ("symlinked_folder", "'sub' is a symlink"),
        ("missing", r"the file is missing; an uploaded model is read alone, so give a \.zip"),
        ("beyond", "beyond the file's 16,384 bytes"),
        ("short", "holds 100 bytes but its shape and type need 16,384"),
        ("long", "holds 16,484 bytes but its shape and type need 16,384"),
        ("negative", "negative offset or length"),
        ("short_file", "holds 100 bytes but its shape and type need 16,384"),
        ("offset_without_length", "holds 16,284 bytes but its shape and type need 16,384"),
        ("backslash", r"\('sub\\\\weights\.bin'\): backslashes are refused"),
        ("drive_letter", "'C:/weights.bin'.*absolute paths are refused"),
        ("nul", "no usable location"),
        ("only_dots", r"'\./\.'\): the path leaves the model's folder"),
        ("file_as_folder", "'weights.bin' is not a folder"),
        ("folder", "not a regular file"),
    ],
)
def test_external_data_refusals(tmp_path: Path, setup: str, message: str) -> None:
    model_path = _external_model_dir(tmp_path / "m")
    weights = model_path.parent / "weights.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(weights.read_bytes())
    if setup == "escape":
        _set_external(model_path, location="../outside.bin")
    elif setup == "absolute":
        _set_external(model_path, location=str(outside))
    elif setup == "symlink":
        weights.unlink()
        weights.symlink_to(outside)
    elif setup == "symlinked_folder":
        (tmp_path / "real").mkdir()
        os.replace(weights, tmp_path / "real" / "weights.bin")
        (model_path.parent / "sub").symlink_to(tmp_path / "real", target_is_directory=True)
        _set_external(model_path, location="sub/weights.bin")
    elif setup == "missing":
        weights.unlink()
    elif setup == "beyond":
        _set_external(model_path, offset="100", length="16384")
    elif setup == "short":
        _set_external(model_path, length="100")
    elif setup == "long":  # a length longer than the tensor: another tensor's bytes, or junk, would be read
        weights.write_bytes(weights.read_bytes() + bytes(100))
        _set_external(model_path, length="16484")
    elif setup == "negative":
        _set_external(model_path, offset="-1")
    elif setup == "short_file":  # no length given: the file's size is what the tensor gets
        weights.write_bytes(weights.read_bytes()[:100])
        _set_external(model_path, length="")
    elif setup == "offset_without_length":  # no length given: what lies after the offset is what the tensor gets
        weights.write_bytes(weights.read_bytes() + bytes(100))
        _set_external(model_path, offset="200", length="")
    elif setup == "backslash":
        _set_external(model_path, location="sub\\weights.bin")
    elif setup == "drive_letter":
        _set_external(model_path, location="C:/weights.bin")
    elif setup == "nul":
        _set_external(model_path, location="weights.bin\x00.txt")
    elif setup == "only_dots":
        _set_external(model_path, location="./.")
    elif setup == "file_as_folder":
        _set_external(model_path, location="weights.bin/inner.bin")
    elif setup == "folder":
        (model_path.parent / "data").mkdir()
        _set_external(model_path, location="data")
    with pytest.raises(ModelError, match=message):
        inspect_model(model_path)


# ---------------------------------------------------------------------------------------------- zips


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.onnx", "'..' component"),
        ("/tmp/evil.onnx", "absolute path"),
        ("..\\evil.onnx", "backslash"),
        ("C:/evil.onnx", "drive letter"),
    ],
)
def test_zip_member_paths_refused(tmp_path: Path, name: str, message: str) -> None:
    upload = _zip(tmp_path / "u.zip", {name: conv_net().SerializeToString()})
    with pytest.raises(ModelError, match=message):
        prepare_model(upload, tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []  # nothing left behind
    assert not (tmp_path / "evil.onnx").exists()


def test_zip_symlink_and_duplicate_members_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("weights.bin")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr("model.onnx", conv_net().SerializeToString())
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ModelError, match="symlink"):
        prepare_model(tmp_path / "link.zip", tmp_path / "work")

    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate it writes
        zf.writestr("model.onnx", conv_net().SerializeToString())
        zf.writestr("model.onnx", b"second copy")
    with pytest.raises(ModelError, match="more than once"):
        prepare_model(tmp_path / "dup.zip", tmp_path / "work")


def test_zip_member_count_and_bombs_refused(tmp_path: Path) -> None:
    model = conv_net().SerializeToString()
    many = _zip(tmp_path / "many.zip", {"model.onnx": model} | {f"d{i}.bin": b"x" for i in range(5)})
    with pytest.raises(ModelError, match=r"6 members.*limit of 3"):
        prepare_model(many, tmp_path / "work", Limits(max_members=3))

    bomb = _zip(tmp_path / "bomb.zip", {"model.onnx": model, "zeros.bin": bytes(50 * 2**20)}, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ModelError, match="zip bomb"):
        prepare_model(bomb, tmp_path / "work")
    with pytest.raises(ModelError, match=r"declares 50\.0 MiB"):
        prepare_model(bomb, tmp_path / "work", Limits(max_unpacked_bytes=10 * 2**20))
    assert list((tmp_path / "work").iterdir()) == []


def test_zip_with_lying_declared_size_refused(tmp_path: Path) -> None:
    """The directory claims 1000 bytes for a member that inflates to 200 kB: caught while reading."""
    payload = random.Random(0).randbytes(200_000)
    upload = _zip(tmp_path / "lie.zip", {"model.onnx": conv_net().SerializeToString(), "data.bin": payload}, 8)
    raw = bytearray(upload.read_bytes())
    central = raw.rfind(b"data.bin") - 46
    local = raw.find(b"data.bin") - 30
    assert raw[central : central + 4] == b"PK\x01\x02" and raw[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<L", raw, central + 24, 1000)
    struct.pack_into("<L", raw, local + 22, 1000)
    upload.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=r"not a readable zip|beyond its declared size"):
        prepare_model(upload, tmp_path / "work")


def test_zip_file_and_folder_of_the_same_name_refused(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "clash.zip", {"pkg": b"a file", "pkg/model.onnx": conv_net().SerializeToString()})
    with pytest.raises(ModelError, match="could not be unpacked"):
        prepare_model(upload, tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []


def test_zip_needs_exactly_one_onnx(tmp_path: Path) -> None:
    model = conv_net().SerializeToString()
    with pytest.raises(ModelError, match=r"found no \.onnx file; members: readme\.txt"):
        prepare_model(_zip(tmp_path / "none.zip", {"readme.txt": b"hi"}), tmp_path / "work")
    two = _zip(tmp_path / "two.zip", {"a.onnx": model, "sub/b.onnx": model})
    with pytest.raises(ModelError, match=r"exactly one \.onnx.*found a\.onnx, sub/b\.onnx"):
        prepare_model(two, tmp_path / "work")


# ---------------------------------------------------------------------------------------------- domains and versions


def test_custom_domain_refused_and_contrib_ops_allowed(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", F, ["batch", 4, 8])
    y = helper.make_tensor_value_info("y", F, ["batch", 4, 8])
    custom = _model(
        [helper.make_node("MyOp", ["x"], ["y"], domain="custom.ops")], [x], [y], opsets=[("", 17), ("custom.ops", 1)]
    )
    with pytest.raises(ModelError, match=r"'custom\.ops' \(MyOp\).*shared libraries"):
        inspect_model(_write(custom, tmp_path / "custom.onnx"))
    nchwc = _model([helper.make_node("ReorderInput", ["x"], ["y"], domain="com.microsoft.nchwc")], [x], [y],
                   opsets=[("", 17), ("com.microsoft.nchwc", 1)])  # fmt: skip
    with pytest.raises(ModelError, match="ONNX Runtime's own graph optimizer writes for one execution provider"):
        inspect_model(_write(nchwc, tmp_path / "optimized.onnx"))  # not a custom op needing a library

    attention = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2)
    contrib = _model(
        [attention], [x], [y], [_init("w", (8, 24)), _init("b", (24,))], opsets=[("", 17), ("com.microsoft", 1)]
    )
    info = inspect_model(_write(contrib, tmp_path / "contrib.onnx"))
    assert info.opsets == {"": 17, "com.microsoft": 1}
    assert info.op_counts == {"com.microsoft.Attention": 1}
    # projection 2*B*S*8*24, then Q·Kᵀ and A·V at 2*B*S*Skv*8 each (B=1, S=Skv=4)
    assert info.flops_counted == {"com.microsoft.Attention": 1536 + 256 + 256}


def test_attention_mha_and_einsum_flops(tmp_path: Path) -> None:
    q = helper.make_tensor_value_info("q", F, [1, 2, 4, 8])
    k = helper.make_tensor_value_info("k", F, [1, 2, 6, 8])
    v = helper.make_tensor_value_info("v", F, [1, 2, 6, 8])
    o = helper.make_tensor_value_info("o", F, [1, 2, 4, 8])
    onnx_attention = _model([helper.make_node("Attention", ["q", "k", "v"], ["o"])], [q, k, v], [o], opsets=[("", 23)])
    info = inspect_model(_write(onnx_attention, tmp_path / "attn.onnx"))
    assert info.flops == 2 * 2 * 1 * 2 * 4 * 6 * 8

    q3 = helper.make_tensor_value_info("q", F, [1, 4, 8])
    kv3 = [helper.make_tensor_value_info(n, F, [1, 6, 8]) for n in ("k", "v")]
    o3 = helper.make_tensor_value_info("o", F, [1, 4, 8])
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=2)
    model = _model([mha], [q3, *kv3], [o3], opsets=[("", 17), ("com.microsoft", 1)])
    assert inspect_model(_write(model, tmp_path / "mha.onnx")).flops == 2 * 2 * 4 * 6 * 8

    a = helper.make_tensor_value_info("a", F, [2, 3, 4])
    b = helper.make_tensor_value_info("b", F, [2, 4, 5])
    c = helper.make_tensor_value_info("c", F, [2, 3, 5])
    einsum = _model([helper.make_node("Einsum", ["a", "b"], ["c"], equation="bij,bjk->bik")], [a, b], [c])
    assert inspect_model(_write(einsum, tmp_path / "einsum.onnx")).flops == 2 * 2 * 3 * 4 * 5


def test_subgraphs_counted_not_estimated_and_fp16_noted(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT16, [2])
    branch_out = helper.make_tensor_value_info("b_out", TensorProto.FLOAT16, [2])
    then = helper.make_graph([helper.make_node("Add", ["x", "h"], ["b_out"])], "then", [], [branch_out])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b_out"])], "else", [], [branch_out])
    nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)]
    model = _model(nodes, [cond, x], [out], [_init("h", (2,), np.float16)])
    info = inspect_model(_write(model, tmp_path / "if.onnx"))
    assert info.op_counts == {"Add": 1, "If": 1, "Neg": 1}
    assert info.flops is None
    assert "If (its subgraphs are not counted: 1 node)" in info.flops_not_counted
    assert "Neg (inside a subgraph: 1 node)" in info.flops_not_counted
    assert info.inputs[1] == TensorSpec("x", "float16", [2]) and info.parameter_bytes == 4
    assert any(w.startswith("float16 weights: 1 initializer(s)") for w in info.warnings)


def test_versions_newer_than_onnx_knows_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", F, [1])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    y = helper.make_tensor_value_info("y", F, [1])
    with pytest.raises(ModelError, match="opset 999, newer than onnx"):
        inspect_model(_write(_model(nodes, [x], [y], opsets=[("", 999)]), tmp_path / "opset.onnx"))
    with pytest.raises(ModelError, match="IR version 999 is newer"):
        inspect_model(_write(_model(nodes, [x], [y], ir_version=999), tmp_path / "ir.onnx"))


# ---------------------------------------------------------------------------------------------- broken files


def test_broken_uploads_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(ModelError, match="truncated or not an ONNX protobuf"):
        inspect_model(noise)
    with pytest.raises(ModelError, match=r"not an ONNX model or a \.zip|truncated or not an ONNX protobuf"):
        inspect_model(prepare_model(noise, work))

    whole = conv_net().SerializeToString()
    truncated = tmp_path / "half.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelError, match="truncated or not an ONNX protobuf"):
        inspect_model(prepare_model(truncated, work))

    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelError, match=r"is not an ONNX model or a \.zip"):
        prepare_model(text, work)
    with pytest.raises(ModelError, match="truncated or not an ONNX protobuf"):
        inspect_model(text)

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx is empty \(0 bytes\): it is not an ONNX model or a \.zip"):
        prepare_model(empty, work)
    too_big = r"big\.onnx is 11\.0 KiB \(11,\d{3} bytes\), over the limit of 100 bytes \(AVATARBENCH_MAX_UPLOAD_MB\)"
    with pytest.raises(ModelError, match=too_big):
        prepare_model(_write(conv_net(), tmp_path / "big.onnx"), work, Limits(max_file_bytes=100))
    with pytest.raises(ModelError, match=r"upload 'absent\.onnx' cannot be read"):
        prepare_model(tmp_path / "absent.onnx", work)
    with pytest.raises(ModelError, match=r"model 'absent\.onnx' cannot be read"):  # named on the command line
        prepare_model(tmp_path / "absent.onnx", work, beside=True)
    with pytest.raises(ModelError, match=r"not a readable zip|no end-of-central-directory"):
        prepare_model(_write_bytes(tmp_path / "cut.zip", b"PK\x03\x04" + bytes(100)), work)
    unsorted = conv_net()
    unsorted.graph.node.insert(0, unsorted.graph.node.pop(1))  # Relu before the Conv that makes its input
    with pytest.raises(ModelError, match=r"checker refused unsorted\.onnx: Nodes in a graph must be topo") as e:
        inspect_model(_write(unsorted, tmp_path / "unsorted.onnx"))
    assert "\n" not in str(e.value)  # the checker's message spans lines


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_huge_declared_dims_refused(tmp_path: Path) -> None:
    y = helper.make_tensor_value_info("y", F, None)
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    huge = helper.make_tensor_value_info("x", F, [1, 10**12])
    y = helper.make_tensor_value_info("y", F, [1, 10**12])
    with pytest.raises(ModelError, match="dimension 1 = 1,000,000,000,000"):
        inspect_model(_write(_model(nodes, [huge], [y]), tmp_path / "huge.onnx"))
    wide = helper.make_tensor_value_info("x", F, [100_000, 100_000])
    y = helper.make_tensor_value_info("y", F, [100_000, 100_000])
    with pytest.raises(ModelError, match="10,000,000,000 input elements"):
        inspect_model(_write(_model(nodes, [wide], [y]), tmp_path / "wide.onnx"))


def test_an_input_dimension_at_the_element_limit_is_allowed_and_one_past_it_refused() -> None:
    """The limit is on the elements one run may hold, so a dimension of exactly that many is still a valid model."""

    def read(size: int) -> list:
        x, y = helper.make_tensor_value_info("x", F, [size]), helper.make_tensor_value_info("y", F, [size])
        return graph_io(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), Limits(max_input_elements=100),
                        []).inputs  # fmt: skip

    assert read(100) == [TensorSpec("x", "float32", [100])]
    with pytest.raises(ModelError, match="declares dimension 0 = 101, more than the limit of 100 input elements"):
        read(101)


def test_a_sparse_initializer_is_a_default_or_a_constant_never_an_input() -> None:
    """Sparse initializers are initializers too: listed as a graph input one is a default a run may replace, else a
    constant; never an input a run must be given (synthetic data would then replace the weights)."""
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "S")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 2], np.int64), "S_at"), [3])
    x, listed = helper.make_tensor_value_info("x", F, [3]), helper.make_tensor_value_info("S", F, [3])
    y = helper.make_tensor_value_info("y", F, [3])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "S"], ["y"])], "g", [x, listed], [y],
                              sparse_initializer=[sparse])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    io = graph_io(model, Limits(), [])
    assert [spec.name for spec in io.inputs] == ["x"] and [(s.name, s.shape) for s in io.overridable] == [("S", [3])]
    del model.graph.input[1]
    assert graph_io(model, Limits(), []).constants == ["S"]


def test_an_output_declaring_more_elements_than_the_limit_is_warned_of() -> None:
    """Outputs are not refused at inspection (their real size is known by running), but a declared size over the
    limit is said; the fixed dimensions alone count, a symbol being at least 1."""
    x, y = helper.make_tensor_value_info("x", F, [4]), helper.make_tensor_value_info("y", F, ["N", 10, 20])
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    warnings: list[str] = []
    graph_io(model, Limits(max_input_elements=100), warnings)
    assert warnings == ["output 'y' declares at least 200 elements"]
    graph_io(model, Limits(max_input_elements=200), warnings)
    assert len(warnings) == 1  # at the limit: nothing to say


def test_ir_4_is_the_first_version_whose_listed_initializers_a_run_may_replace() -> None:
    """From IR 4 an initializer listed as a graph input is a default (ONNX Runtime's overridable initializer); before
    it, every initializer was listed and ONNX Runtime holds them constant."""
    x, scale = helper.make_tensor_value_info("x", F, [3]), helper.make_tensor_value_info("scale", F, [None])
    y = helper.make_tensor_value_info("y", F, [3])
    model = _model([helper.make_node("Mul", ["x", "scale"], ["y"])], [x, scale], [y], [_init("scale", (3,))])
    for ir_version, overridable, constants in ((4, [("scale", [3])], []), (3, [], ["scale"])):
        model.ir_version = ir_version
        io = graph_io(model, Limits(), [])  # a default's open size is its initializer's: what a value must match
        assert ([(spec.name, spec.shape) for spec in io.overridable], io.constants) == (overridable, constants)


def test_unnamed_dims_get_symbols(tmp_path: Path) -> None:
    empty_name = helper.make_tensor_value_info("x", F, ["", 4])  # dim_param set to "": no name either
    io = graph_io(_model([helper.make_node("Relu", ["x"], ["y"])], [empty_name], [empty_name]), Limits(), [])
    assert io.inputs == [TensorSpec("x", "float32", ["x_dim0", 4])]
    x = helper.make_tensor_value_info("x", F, [None, 4])
    y = helper.make_tensor_value_info("y", F, [None, 4])
    info = inspect_model(_write(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), tmp_path / "u.onnx"))
    assert info.inputs == [TensorSpec("x", "float32", ["x_dim0", 4])]
    assert info.outputs == [TensorSpec("y", "float32", [None, 4])]
    assert info.symbols == {"x_dim0": 1} and info.flops is None and info.flops_not_counted == ["Relu"]


def test_a_sequence_input_and_an_output_of_unknown_rank_are_said() -> None:
    """Neither has a shape to show: reading the graph says why instead of listing them as bare [] without a word (the
    checker refuses a missing shape first when a file is inspected, so the graph is read here directly)."""
    seq = helper.make_tensor_sequence_value_info("s", F, [2])
    count = helper.make_tensor_value_info("n", TensorProto.INT64, None)  # no shape field at all: its rank is unknown
    model = _model([helper.make_node("SequenceLength", ["s"], ["n"])], [seq], [count])
    warnings: list[str] = []
    io = graph_io(model, Limits(), warnings)
    assert warnings == ["'s' is a sequence_type, not a tensor", "'n' has no declared shape (unknown rank); shown as []"]
    assert [(spec.name, spec.dtype, spec.shape) for spec in (*io.inputs, *io.outputs)] == [
        ("s", "sequence_type", []), ("n", "int64", [])]  # fmt: skip


def test_names_that_are_not_utf8_are_refused_at_inspection(tmp_path: Path) -> None:
    """Protobuf hands a name that is not valid UTF-8 back as bytes (found by mutating model files)."""
    relu = [helper.make_node("Relu", ["xx"], ["y"])]
    model = _model(relu, [helper.make_tensor_value_info("xx", F, ["batch", 4])], [helper.make_tensor_value_info("y", F,
                   ["batch", 4])])  # fmt: skip
    blob = model.SerializeToString()
    for old, new, message in ((b"batch", b"ba\xd5ch", "the name of dimension 0 of 'xx'"),
                              (b"xx", b"\xff\xff", "the graph input name")):  # fmt: skip
        path = tmp_path / "odd.onnx"
        path.write_bytes(blob.replace(old, new))
        with pytest.raises(ModelError, match=f"{message} .* is not valid UTF-8 text"):
            inspect_model(path)


def test_a_model_that_starts_with_its_device_configurations_is_a_model(tmp_path: Path) -> None:
    """ModelProto's field 26 (onnx 1.18's device configurations) may come first in a file; onnx.load reads it."""
    head = onnx.ModelProto()
    head.configuration.add(name="one", num_devices=1)
    whole = head.SerializeToString() + conv_net().SerializeToString()
    info = inspect_model(prepare_model(_write_bytes(tmp_path / "configured.onnx", whole), tmp_path / "work"))
    assert [spec.name for spec in info.inputs] == ["x"]


def test_only_first_dimensions_are_batch_dimensions(tmp_path: Path) -> None:
    """What an evaluation sweeps: a symbol named like a batch elsewhere is an ordinary one, and inspection says so."""
    x, y = helper.make_tensor_value_info("x", F, [4, "batch"]), helper.make_tensor_value_info("y", F, [4, "batch"])
    info = inspect_model(_write(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), tmp_path / "t.onnx"))
    assert not any("dynamic batch" in w for w in info.warnings) and info.batch_symbols == []
    assert "other symbolic dimensions set to their default 1: batch" in info.warnings


# ---------------------------------------------------------------------------------------------- symbols


def test_default_symbols_and_overrides() -> None:
    specs = [TensorSpec("x", "float32", ["batch", 3, "H", "W"]), TensorSpec("mask", "bool", ["batch", "H"])]
    assert default_symbols(specs) == {"batch": 1, "H": 1, "W": 1}
    assert default_symbols(specs, {"H": 64, "batch": 2}) == {"batch": 2, "H": 64, "W": 1}
    with pytest.raises(ModelError, match=r"unknown symbol.*T.*symbols are: batch, H, W"):
        default_symbols(specs, {"T": 2})
    for bad in (0, 1_000_001, True, "8", 2.5):
        with pytest.raises(ModelError, match="symbol 'H' must be"):
            default_symbols(specs, {"H": bad})
    assert default_symbols(specs, {"H": np.int64(5), "W": 7.0}) == {"batch": 1, "H": 5, "W": 7}
    assert default_symbols(specs, {"H": 1_000_000})["H"] == 1_000_000  # the largest allowed
    with pytest.raises(ModelError, match="no value for W"):
        specs[0].concrete({"batch": 1, "H": 2})
    assert specs[0].concrete({"batch": 2, "H": 5, "W": 6}) == (2, 3, 5, 6)
    assert check_input_budget(specs, {"batch": 2, "H": 5, "W": 6}, Limits()) == 180 + 10
    with pytest.raises(ModelError, match=r"over the limit of 100 \(at batch=2, H=5, W=6; use smaller values\)$"):
        check_input_budget(specs, {"batch": 2, "H": 5, "W": 6}, Limits(max_input_elements=100))
    assert check_input_budget(specs, {"batch": 2, "H": 5, "W": 6}, Limits(max_input_elements=190)) == 190  # at it
    with pytest.raises(ModelError, match=r"needs 190 input elements \(x \[2, 3, 5, 6\] = 180; "):
        check_input_budget(specs, {"batch": 2, "H": 5, "W": 6}, Limits(max_input_elements=189))


def test_output_bytes_from_declared_shapes() -> None:
    outputs = [
        TensorSpec("frames", "float32", ["batch", 3, 96, 96]),
        TensorSpec("mask", "bool", ["batch", 96, 96]),
        TensorSpec("boxes", "float32", ["batch", None, 4]),  # data-dependent
        TensorSpec("tokens", "int64", ["batch", "out_len"]),  # a symbol no input has
        TensorSpec("names", "object", [2]),  # strings: no fixed size
        TensorSpec("half", "bfloat16", [3]),
    ]
    sizes = output_bytes(outputs, {"batch": 4})
    assert sizes == {"frames": 4 * 3 * 96 * 96 * 4, "mask": 4 * 96 * 96, "boxes": None, "tokens": None,
                     "names": None, "half": 6}  # fmt: skip
    assert tensor_bytes("int4", [3]) == 2 and tensor_bytes("float64", []) == 8 and tensor_bytes("sequence", [1]) is None


def test_external_data_beside_a_model_named_on_the_command_line(tmp_path: Path) -> None:
    """A plain model's data files are read from its folder only when the user named the file (the CLI): an
    upload is read alone. The same rules as a zip's hold: a data file outside the folder is refused."""
    model_path = _external_model_dir(tmp_path / "m")
    with pytest.raises(ModelError, match=r"an uploaded model is read alone, so give a \.zip"):
        inspect_model(prepare_model(model_path, tmp_path / "upload"))
    path = prepare_model(model_path, tmp_path / "cli", beside=True)
    assert (path.parent / "weights.bin").read_bytes() == (model_path.parent / "weights.bin").read_bytes()
    assert not (path.parent / "weights.bin").samefile(model_path.parent / "weights.bin")  # a copy, not a link
    assert inspect_model(path).parameters == 64 * 64 + 64
    (tmp_path / "outside.bin").write_bytes((model_path.parent / "weights.bin").read_bytes())
    _set_external(model_path, location="../outside.bin")
    with pytest.raises(ModelError, match="leaves the model's folder"):
        prepare_model(model_path, tmp_path / "cli", beside=True)


def test_eval_refuses_to_write_its_report_onto_the_models_external_data(tmp_path: Path, monkeypatch) -> None:
    """`onnx eval model.onnx --json weights.bin` replaced the model's weights with the report and exited 0: the
    data files are only known once the model is read, and are outputs' inputs from then on."""
    from engine.cli import main

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    model_path = _external_model_dir(tmp_path / "m")
    weights = (model_path.parent / "weights.bin").read_bytes()
    args = ["onnx", "eval", str(model_path), "--providers", "cpu", "--runs", "1", "--quiet", "--json"]
    assert main([*args, str(model_path.parent / "./weights.bin")]) == 2
    assert (model_path.parent / "weights.bin").read_bytes() == weights
    assert main([*args, str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["results"]


def test_an_empty_zip_says_it_is_empty(tmp_path: Path) -> None:
    """It read "no .onnx file; members: " with nothing after it."""
    with pytest.raises(ModelError, match=r"no \.onnx file; members: none \(an empty zip\)"):
        prepare_model(_zip(tmp_path / "empty.zip", {}), tmp_path / "work")


def test_flop_counts_are_shown_in_a_unit_that_keeps_them_readable() -> None:
    """A 24-FLOP model read "0.000 GFLOP per run"."""
    from engine.onnx.flops import flops_line, format_flops

    assert [format_flops(n) for n in (24, 19054, 1_555_200, 7.934e9, 2.5e12)] == [
        "24 FLOP", "19.05 kFLOP", "1.555 MFLOP", "7.934 GFLOP", "2.5 TFLOP"]  # fmt: skip
    assert [format_flops(n) for n in (1000, 1e6, 1e9, 1e12)] == ["1 kFLOP", "1 MFLOP", "1 GFLOP", "1 TFLOP"]
    assert flops_line(24, ["Add"], " at N=1") == "24 FLOP per run at N=1; not counted: Add"
    assert flops_line(24, []) == "24 FLOP per run; not counted: nothing"
    assert flops_line(None, []) == "FLOPs per run unknown: the graph has no ops"
    assert flops_line(None, ["Add", "Mul"]).startswith("FLOPs per run unknown: none of its ops has a FLOP count")


def _flops_counted(tmp_path: Path, name: str, model: onnx.ModelProto) -> dict[str, int]:
    return inspect_model(_write(model, tmp_path / f"{name}.onnx")).flops_counted


def test_conv_transpose_and_transposed_gemm_flops_by_hand(tmp_path: Path) -> None:
    """ConvTranspose costs 2·|X|·(Cout/group·k·k) (each input pixel scatters into a kernel's worth of outputs, so
    its output's size is not the one to count); a Gemm with transA takes K from A's first dimension."""
    nodes = [
        helper.make_node("ConvTranspose", ["x", "Wt"], ["up"], kernel_shape=[3, 3]),
        helper.make_node("Gemm", ["a", "Wg"], ["g"], transA=1),
    ]
    inputs = [helper.make_tensor_value_info("x", F, [1, 4, 5, 5]), helper.make_tensor_value_info("a", F, [6, 3])]
    outputs = [helper.make_tensor_value_info("up", F, [1, 2, 7, 7]), helper.make_tensor_value_info("g", F, [3, 5])]
    model = _model(nodes, inputs, outputs, [_init("Wt", (4, 2, 3, 3)), _init("Wg", (6, 5))])
    assert _flops_counted(tmp_path, "transposed", model) == {
        "ConvTranspose": 2 * (1 * 4 * 5 * 5) * (2 * 3 * 3),
        "Gemm": 2 * (3 * 5) * 6,  # M=3, N=5, K=6 (A is 6x3, transposed)
    }


def test_attention_flops_with_a_kv_cache_and_unequal_head_sizes_by_hand(tmp_path: Path) -> None:
    """The keys' length includes the past KV cache, and the value's head size (A·V) may differ from the query's."""
    io = helper.make_tensor_value_info
    q, k, v = io("q", F, [1, 2, 4, 8]), io("k", F, [1, 2, 6, 8]), io("v", F, [1, 2, 6, 16])
    past_k, past_v = io("past_k", F, [1, 2, 3, 8]), io("past_v", F, [1, 2, 3, 16])
    outputs = [io("o", F, [1, 2, 4, 16]), io("present_k", F, [1, 2, 9, 8]), io("present_v", F, [1, 2, 9, 16])]
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_k", "past_v"], ["o", "present_k", "present_v"])
    model = _model([node], [q, k, v, past_k, past_v], outputs, opsets=[("", 23)])
    skv = 6 + 3
    # Q·Kᵀ: 2·B·heads·Sq·Skv·8 = 2·|Q|·Skv; A·V: 2·B·heads·Sq·Skv·16 = 2·|Y|·Skv
    assert _flops_counted(tmp_path, "attention", model) == {"Attention": 2 * skv * (1 * 2 * 4 * 8 + 1 * 2 * 4 * 16)}


def test_onnx_runtime_attention_flops_by_hand(tmp_path: Path) -> None:
    """com.microsoft Attention: the fused QKV projection, then Q·Kᵀ at the query's hidden size and A·V at the value's
    (qkv_hidden_sizes may make them differ), over the keys' length including a past KV cache."""
    io = helper.make_tensor_value_info
    ms = [("", 17), ("com.microsoft", 1)]

    def attention(name: str, hidden: int, out_hidden: int, inputs: list[str], extra: list, **attrs) -> dict[str, int]:
        node = helper.make_node("Attention", inputs, ["y"], domain="com.microsoft", num_heads=2, **attrs)
        model = _model([node], [io("x", F, [1, 4, 8]), *extra], [io("y", F, [1, 4, out_hidden])],
                       [_init("w", (8, hidden)), _init("b", (hidden,))], opsets=ms)  # fmt: skip
        return _flops_counted(tmp_path, name, model)

    sizes = attention("sizes", 32, 16, ["x", "w", "b"], [], qkv_hidden_sizes=[8, 8, 16])
    assert sizes == {"com.microsoft.Attention": 2 * (4 * 8) * 32 + 2 * 1 * 4 * 4 * (8 + 16)}
    past = io("past", F, [2, 1, 2, 3, 4])  # (2, B, heads, past length, head size)
    cached = attention("cached", 24, 8, ["x", "w", "b", "", "past"], [past])
    assert cached == {"com.microsoft.Attention": 2 * (4 * 8) * 24 + 2 * 1 * 4 * (4 + 3) * (8 + 8)}


def test_multi_head_attention_flops_in_each_layout_by_hand(tmp_path: Path) -> None:
    """com.microsoft MultiHeadAttention: QKV packed in the query (5-D), KV packed in the key (5-D), and 4-D (BNSH)
    keys and values with a past key, each at its own sequence lengths and head sizes."""
    io = helper.make_tensor_value_info
    ms = [("", 17), ("com.microsoft", 1)]

    def mha(name: str, inputs: list, out_hidden: int) -> int:
        names = [vi.name if vi is not None else "" for vi in inputs]
        node = helper.make_node("MultiHeadAttention", names, ["y"], domain="com.microsoft", num_heads=2)
        model = _model([node], [vi for vi in inputs if vi is not None], [io("y", F, [1, 4, out_hidden])], opsets=ms)
        return _flops_counted(tmp_path, name, model)["com.microsoft.MultiHeadAttention"]

    packed_qkv = io("qkv", F, [1, 4, 2, 3, 8])  # (B, S, heads, 3, head size): Skv = S = 4, hidden 16
    assert mha("packed_qkv", [packed_qkv], 16) == 2 * 1 * 4 * 4 * (16 + 16)
    q = io("q", F, [1, 4, 16])
    packed_kv = io("kv", F, [1, 6, 2, 2, 4])  # (B, Skv, heads, 2, head size): Skv = 6, value hidden 8
    assert mha("packed_kv", [q, packed_kv], 16) == 2 * 1 * 4 * 6 * (16 + 8)
    k, v = io("k", F, [1, 2, 6, 8]), io("v", F, [1, 2, 6, 4])  # (B, heads, Skv, head size): value hidden 8
    past_k, past_v = io("past_k", F, [1, 2, 3, 8]), io("past_v", F, [1, 2, 3, 4])
    bnsh = [q, k, v, None, None, None, past_k, past_v]
    assert mha("bnsh", bnsh, 8) == 2 * 1 * 4 * (6 + 3) * (16 + 8)


def test_einsum_flops_broadcast_and_unestimated_forms(tmp_path: Path) -> None:
    """An index of size 1 in one operand broadcasts to the other's size; an implicit-output equation is listed as
    not estimated, with the reason, rather than counted wrong."""
    io = helper.make_tensor_value_info
    a, b = io("a", F, [2, 3, 4]), io("b", F, [1, 4, 5])
    broadcast = _model([helper.make_node("Einsum", ["a", "b"], ["c"], equation="bij,bjk->bik")], [a, b],
                       [io("c", F, [2, 3, 5])])  # fmt: skip
    assert _flops_counted(tmp_path, "broadcast", broadcast) == {"Einsum": 2 * 2 * 3 * 4 * 5}
    m, n = io("m", F, [3, 4]), io("n", F, [4, 5])
    implicit = _model([helper.make_node("Einsum", ["m", "n"], ["p"], equation="ij,jk")], [m, n], [io("p", F, [3, 5])])
    info = inspect_model(_write(implicit, tmp_path / "implicit.onnx"))
    assert info.flops is None
    assert info.flops_not_counted == [
        "Einsum (only two-operand equations with '->' and no '...' are estimated: 1 node)"
    ]


def test_an_upload_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(tmp_path: Path) -> None:
    """The limit is the largest size accepted, in bytes as the message says (1 KiB reads "1.0 KiB (1,024 bytes)")."""
    upload = _write(conv_net(), tmp_path / "net.onnx")
    size = upload.stat().st_size
    assert prepare_model(upload, tmp_path / "work", Limits(max_file_bytes=size)).read_bytes() == upload.read_bytes()
    with pytest.raises(ModelError, match=rf"over the limit of .* \({size - 1:,} bytes\)"):
        prepare_model(upload, tmp_path / "work", Limits(max_file_bytes=size - 1))
    with pytest.raises(ModelError, match=r"over the limit of 1\.0 KiB \(1,024 bytes\) \(AVATARBENCH_MAX_UPLOAD_MB\)"):
        prepare_model(upload, tmp_path / "work", Limits(max_file_bytes=1024))


def test_a_folder_given_as_the_upload_is_refused_in_words(tmp_path: Path) -> None:
    """Not an OSError from open(): the user is told what is accepted."""
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ModelError, match=r"upload 'model\.onnx' is not a regular file; accepted: an \.onnx model file"):
        prepare_model(tmp_path / "model.onnx", tmp_path / "work")


def test_a_zip_of_exactly_the_member_limit_is_accepted(tmp_path: Path) -> None:
    members = {"model.onnx": conv_net().SerializeToString()} | {f"d{i}.bin": b"x" for i in range(2)}
    path = prepare_model(_zip(tmp_path / "three.zip", members), tmp_path / "work", Limits(max_members=3))
    assert path.name == "model.onnx"


def test_uploads_are_held_to_the_upload_limit_and_read_alone(tmp_path: Path) -> None:
    """engine.onnx.uploads, the one way the CLI, the tab and the job queue take a model: an upload is held to
    AVATARBENCH_MAX_UPLOAD_MB and never reads the files beside it; a file named on the command line may."""
    from engine.core.settings import load_settings
    from engine.onnx.uploads import external_files, model_source, prepared

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "AVATARBENCH_MAX_UPLOAD_MB": "1"})
    big = tmp_path / "big.onnx"
    big.write_bytes(bytes(2 * 2**20))
    too_big = r"big\.onnx is 2\.0 MiB \(2,097,152 bytes\), over the limit of 1\.0 MiB \(1,048,576 bytes\)"
    with pytest.raises(ModelError, match=too_big), prepared(model_source(big, None, settings), settings):
        pass

    model_path = _external_model_dir(tmp_path / "m")
    upload = model_source(model_path, None, settings)
    with pytest.raises(ModelError, match=r"an uploaded model is read alone"), prepared(upload, settings):
        pass
    local = model_source(model_path, None, settings, local=True)
    with prepared(local, settings, {"batch": 4}) as (_, info):
        assert info.external_data == ["weights.bin"] and info.symbols == {"batch": 4}
        assert info.sha256 == file_sha256(model_path) and info.flops == 4 * 2 * 64 * 64
    assert external_files(local, info) == [model_path.parent / "weights.bin"]

    zipped = tmp_path / "upload.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(model_path, "model.onnx")
        zf.write(model_path.parent / "weights.bin", "weights.bin")
    with prepared(model_source(zipped, None, settings), settings) as (_, info):
        assert info.sha256 == file_sha256(zipped)  # the upload's content address, not the unpacked model's


def test_zip_members_that_are_devices_or_encrypted_are_refused(tmp_path: Path) -> None:
    model = conv_net().SerializeToString()
    pipe = zipfile.ZipInfo("pipe")
    pipe.external_attr = (stat.S_IFIFO | 0o644) << 16
    with zipfile.ZipFile(tmp_path / "fifo.zip", "w") as zf:
        zf.writestr("model.onnx", model)
        zf.writestr(pipe, b"")
    with pytest.raises(ModelError, match=r"zip member 'pipe' is not a regular file or folder"):
        prepare_model(tmp_path / "fifo.zip", tmp_path / "work")
    locked = bytearray(_zip(tmp_path / "locked.zip", {"model.onnx": model}).read_bytes())
    locked[locked.find(b"PK\x03\x04") + 6] |= 0x1  # the encryption bit, in the local header (zipfile clears it)
    locked[locked.rfind(b"PK\x01\x02") + 8] |= 0x1  # and in the central directory
    (tmp_path / "locked.zip").write_bytes(bytes(locked))
    with pytest.raises(ModelError, match=r"zip member 'model\.onnx' is encrypted; upload an unencrypted zip"):
        prepare_model(tmp_path / "locked.zip", tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []


def test_a_small_member_that_compresses_extremely_well_is_not_a_bomb(tmp_path: Path) -> None:
    """A zero bias of a few hundred kB deflates far beyond any sane ratio; only members over 1 MiB are held to it."""
    members = {"model.onnx": conv_net().SerializeToString(), "zeros.bin": bytes(512 * 1024)}
    upload = _zip(tmp_path / "zeros.zip", members, zipfile.ZIP_DEFLATED)
    assert prepare_model(upload, tmp_path / "work").name == "model.onnx"


def test_flops_left_out_for_unknown_shapes_or_malformed_attributes_are_said(tmp_path: Path) -> None:
    """A count that misses a node with a FLOP rule is a lower bound, said in the warnings; a node whose attributes
    break its rule is listed with the reason, not a crash of the inspection."""
    io = helper.make_tensor_value_info
    ms = [("", 17), ("com.microsoft", 1)]
    odd = helper.make_node("Attention", ["flat", "w", "b"], ["att"], domain="com.microsoft", num_heads=2)
    matmul = helper.make_node("MatMul", ["x", "W"], ["y"])
    inputs = [io("x", F, [1, 4]), io("flat", F, [4, 8])]  # a 2-D input: the rule needs (batch, sequence, hidden)
    outputs = [io("y", F, [1, 3]), io("att", F, [4, 8])]
    model = _model([matmul, odd], inputs, outputs, [_init("W", (4, 3)), _init("w", (8, 24)), _init("b", (24,))],
                   opsets=ms)  # fmt: skip
    info = inspect_model(_write(model, tmp_path / "unknown.onnx"))
    assert info.flops == 2 * 3 * 4 and info.flops_not_counted == ["com.microsoft.Attention (shape unknown: 1 node)"]
    assert "FLOPs are a lower bound: 1 node(s) with a FLOP rule had unknown shapes" in info.warnings

    sizes = helper.make_node("Attention", ["x3", "w", "b"], ["att"], domain="com.microsoft", num_heads=2,
                             qkv_hidden_sizes=[8])  # fmt: skip
    malformed = _model([sizes], [io("x3", F, [1, 4, 8])], [io("att", F, [1, 4, 8])], [_init("w", (8, 24)),
                       _init("b", (24,))], opsets=ms)  # fmt: skip
    info = inspect_model(_write(malformed, tmp_path / "malformed.onnx"))
    assert info.flops is None
    assert info.flops_not_counted == ["com.microsoft.Attention (malformed attributes: 1 node)"]


def test_a_symlink_to_a_model_is_refused_at_inspection(tmp_path: Path) -> None:
    """Inspection reads the prepared copy only; a link could point anywhere on the server."""
    real = _write(conv_net(), tmp_path / "real.onnx")
    (tmp_path / "link.onnx").symlink_to(real)
    with pytest.raises(ModelError, match=r"link\.onnx is a symlink; give the prepared model file itself"):
        inspect_model(tmp_path / "link.onnx")


def test_the_newest_opset_ml_ops_and_model_local_functions_are_accepted(tmp_path: Path) -> None:
    """What ONNX Runtime runs itself is not refused: the newest opset this onnx knows, ONNX-ML operators, and a
    model-local function in a domain of its own (its body is made of standard ops)."""
    io = helper.make_tensor_value_info
    newest = onnx.defs.onnx_opset_version()
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [io("x", F, [1, 4])], [io("y", F, [1, 4])],
                  opsets=[("", newest)])  # fmt: skip
    assert inspect_model(_write(relu, tmp_path / "newest.onnx")).opsets == {"": newest}

    binarizer = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    ml = _model([binarizer], [io("x", F, [1, 4])], [io("y", F, [1, 4])], opsets=[("", 17), ("ai.onnx.ml", 3)])
    assert inspect_model(_write(ml, tmp_path / "ml.onnx")).op_counts == {"ai.onnx.ml.Binarizer": 1}

    twice = helper.make_function("local.funcs", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                 [helper.make_opsetid("", 17)])  # fmt: skip
    call = helper.make_node("Twice", ["x"], ["y"], domain="local.funcs")
    local = _model([call], [io("x", F, [1, 4])], [io("y", F, [1, 4])], opsets=[("", 17), ("local.funcs", 1)],
                   functions=[twice])  # fmt: skip
    info = inspect_model(_write(local, tmp_path / "local.onnx"))
    assert "1 model-local function(s): local.funcs.Twice" in info.warnings


def test_a_custom_domain_beside_ort_layout_operators_is_refused_as_custom(tmp_path: Path) -> None:
    """The "give the model before ONNX Runtime optimized it" advice is for layout operators alone: a model that
    also needs a custom library would still not run."""
    io = helper.make_tensor_value_info
    nodes = [helper.make_node("ReorderInput", ["x"], ["r"], domain="com.microsoft.nchwc"),
             helper.make_node("MyOp", ["r"], ["y"], domain="custom.ops")]  # fmt: skip
    opsets = [("", 17), ("com.microsoft.nchwc", 1), ("custom.ops", 1)]
    model = _model(nodes, [io("x", F, [1, 8, 4, 4])], [io("y", F, [1, 8, 4, 4])], opsets=opsets)
    with pytest.raises(
        ModelError, match=r"custom-operator domain\(s\) 'com\.microsoft\.nchwc'.*'custom\.ops' \(MyOp\)"
    ):
        inspect_model(_write(model, tmp_path / "mixed.onnx"))


def test_external_data_is_held_to_the_unpacked_limit(tmp_path: Path) -> None:
    """The data files count against the same limit as a zip's contents: the limit itself passes, a byte less refuses."""
    model_path = _external_model_dir(tmp_path / "m")
    assert inspect_model(model_path, limits=Limits(max_unpacked_bytes=16384)).external_data == ["weights.bin"]
    with pytest.raises(ModelError, match=r"the external data files hold 16\.0 KiB, over the limit of 16\.0 KiB"):
        inspect_model(model_path, limits=Limits(max_unpacked_bytes=16383))


def test_a_protobuf_that_is_not_a_model_says_what_it_lacks(tmp_path: Path) -> None:
    """Any bytes parse as some protobuf: a file with no graph, or no IR version, is named as not a model."""
    no_graph = onnx.ModelProto(ir_version=8)
    with pytest.raises(ModelError, match=r"g\.onnx: truncated or not an ONNX protobuf: it parses, but has no graph$"):
        inspect_model(_write(no_graph, tmp_path / "g.onnx"))
    no_version = conv_net()
    no_version.ir_version = 0
    with pytest.raises(ModelError, match=r"it parses, but has no ir_version$"):
        inspect_model(_write(no_version, tmp_path / "v.onnx"))


@pytest.mark.parametrize("where", ["constant", "function"])
def test_external_data_outside_the_initializers_is_checked_too(tmp_path: Path, where: str) -> None:
    """A Constant node's tensor, in the graph or in a model-local function's body, may point at external data too:
    onnx would read it as it reads an initializer's, so it is held to the same rules."""
    io = helper.make_tensor_value_info
    (tmp_path / "outside.bin").write_bytes(bytes(16))
    tensor = TensorProto(name="c", data_type=F, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../outside.bin")
    constant = helper.make_node("Constant", [], ["c"], value=tensor)
    if where == "constant":
        nodes, functions, opsets = [constant, helper.make_node("Add", ["x", "c"], ["y"])], [], [("", 17)]
    else:
        body = [constant, helper.make_node("Add", ["a", "c"], ["b"])]
        functions = [helper.make_function("local.funcs", "Shift", ["a"], ["b"], body, [helper.make_opsetid("", 17)])]
        nodes, opsets = [helper.make_node("Shift", ["x"], ["y"], domain="local.funcs")], [("", 17), ("local.funcs", 1)]
    model = _model(nodes, [io("x", F, [4])], [io("y", F, [4])], opsets=opsets, functions=functions)
    with pytest.raises(ModelError, match=r"external data of tensor 'c' \('\.\./outside\.bin'\): the path leaves"):
        inspect_model(_write(model, tmp_path / "m" / "model.onnx"))


def test_zip_model_names_in_capitals_count_and_a_nameless_member_is_refused(tmp_path: Path) -> None:
    """MODEL.ONNX is the zip's model (exported on Windows, say); a member named "." has no file name to write."""
    path = prepare_model(_zip(tmp_path / "caps.zip", {"MODEL.ONNX": conv_net().SerializeToString()}), tmp_path / "w")
    assert path.name == "MODEL.ONNX"
    nameless = _zip(tmp_path / "dot.zip", {"model.onnx": conv_net().SerializeToString(), ".": b"x"})
    with pytest.raises(ModelError, match=r"zip member '\.' has no file name; members must be relative paths"):
        prepare_model(nameless, tmp_path / "work")
