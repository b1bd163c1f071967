"""Tiny ONNX models built with onnx.helper, shared by the ONNX tests (IR 8: onnxruntime 1.31 loads it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import GraphProto, TensorProto, helper, numpy_helper

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
B = np.array([0.1, -0.2, 0.3], dtype=np.float32)


def save(graph: GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def mlp(path: Path) -> Path:
    """y = Relu(x @ W + B) on x[N, 4]; k2 = k + k on k[N, 1] int64 (an integer input to feed)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "B"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
        helper.make_node("Add", ["k", "k"], ["k2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("k2", TensorProto.INT64, ["N", 1]),
        ],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    return save(graph, path)


def fixed(path: Path) -> Path:
    """y = x + 1 on a fixed x[2, 4]: no batch dimension to sweep."""
    one = numpy_helper.from_array(np.ones((2, 4), np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [one],
    )
    return save(graph, path)


def classifier(path: Path, weights: np.ndarray) -> Path:
    """logits = x @ weights on x[N, 4]: six classes."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wc"], ["logits"])],
        "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights, "Wc")],
    )
    return save(graph, path)


def colour_classifier(path: Path, layout: str = "nchw", size: int = 8) -> Path:
    """scores[N, 3] = the mean of each input channel: an image's dominant channel is its class."""
    shape, axes = (["N", 3, size, size], [2, 3]) if layout == "nchw" else (["N", size, size, 3], [1, 2])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["scores"], axes=axes, keepdims=0)],
        "colours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    return save(graph, path)
