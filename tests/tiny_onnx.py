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


def sequence(path: Path) -> Path:
    """y = Relu(x) on x[batch, seq]: a model with a symbolic dimension beside its batch."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )  # fmt: skip
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


def landmark_layout(tilt_deg: float = 0.0) -> np.ndarray:
    """203 points in crop units: left eye 0.2 wide, open 0.05; right eye 0.2 wide, open 0.04; mouth 0.3 wide,
    open 0.06 (so openness 0.25, 0.2 and 0.2); `tilt_deg` turns it clockwise about the crop's centre."""
    pts = np.full((203, 2), 0.5, np.float32)
    pts[0], pts[12], pts[6], pts[18] = (0.3, 0.4), (0.5, 0.4), (0.4, 0.375), (0.4, 0.425)
    pts[24], pts[36], pts[30], pts[42] = (0.55, 0.4), (0.75, 0.4), (0.65, 0.38), (0.65, 0.42)
    pts[48], pts[66], pts[90], pts[102] = (0.375, 0.7), (0.675, 0.7), (0.525, 0.67), (0.525, 0.73)  # eyes' midline
    c, s = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
    return ((pts - 0.5) @ np.array([[c, s], [-s, c]], np.float32) + 0.5).astype(np.float32)


def landmark_model(path: Path, tilt_deg: float = 0.0) -> Path:
    """A stand-in for LivePortrait's landmark.onnx: 'input' (1,3,224,224) -> three outputs of (1, 406), the third
    (the one upstream reads) a constant layout (the input summed, times zero, plus the layout); the first two are
    the same size but hold other points (all in one place; scattered at random), so reading the wrong output shows."""
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["layout", "nothing"], ["landmarks"]),
        helper.make_node("Mul", ["landmarks", "zero"], ["decoy_a"]),  # every point at one place: nothing is open
        helper.make_node("Identity", ["scattered"], ["decoy_b"]),
    ]
    graph = helper.make_graph(
        nodes,
        "landmarks",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 406]) for name in ("decoy_a", "decoy_b",
                                                                                        "landmarks")],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
         numpy_helper.from_array(np.random.default_rng(0).random((1, 406), np.float32), "scattered"),
         numpy_helper.from_array(landmark_layout(tilt_deg).reshape(1, 406), "layout")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def huge_output(path: Path, elements: int = 10 * 2**30 // 4) -> Path:
    """y[N, elements] float32 = x[N, 1] expanded: 10 GiB at N=1 by default, from a file of a few hundred bytes."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", elements])],
        [numpy_helper.from_array(np.array([1, elements], np.int64), "shape")],
    )
    return save(graph, path)


def nonzero(path: Path) -> Path:
    """where[2, count] int64 = NonZero(x) on x[N, 4]: its size is only known by running (8 * 4N bytes per row for
    the seeded synthetic inputs, which are never exactly zero)."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["where"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [2, None])],
    )
    return save(graph, path)


SCALE = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def with_default(path: Path, ir_version: int = 8) -> Path:
    """y = x * scale + B on x[N, 3]: `scale` an initializer also listed as a graph input (from IR 4 a default a run
    may set; before, every initializer was listed and ONNX Runtime holds them constant), B an initializer only."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"])],
        "with_default",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3]),
            *([helper.make_tensor_value_info("B", TensorProto.FLOAT, [3])] if ir_version < 4 else []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(SCALE, "scale"), numpy_helper.from_array(B, "B")],
    )
    opset = 7 if ir_version < 4 else 17  # what IR 3 (ONNX 1.2) could carry
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    path.write_bytes(model.SerializeToString())
    return path


def _constant_outputs(
    name: str, input_shape: list, outputs: dict[str, np.ndarray], first_nodes: tuple = ()
) -> GraphProto:
    """A graph whose outputs are the given constants (each plus the input summed times zero, so the input is read),
    `first_nodes` (names of Identity nodes) put first, as an exporter's normalising nodes would be."""
    nodes = [helper.make_node("Identity", ["zero"], [f"{node}_out"], name=node) for node in first_nodes]
    nodes += [
        helper.make_node("ReduceSum", ["input.1"], ["total"], keepdims=0, name="total"),
        helper.make_node("Mul", ["total", "zero"], ["nothing"], name="nothing"),
    ]
    nodes += [helper.make_node("Add", [f"{key}_value", "nothing"], [key], name=key) for key in outputs]
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(key, TensorProto.FLOAT, list(value.shape)) for key, value in outputs.items()],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
        + [numpy_helper.from_array(value.astype(np.float32), f"{key}_value") for key, value in outputs.items()],
    )


def scrfd_outputs(size: int = 512, height: int | None = None) -> dict[str, np.ndarray]:
    """Empty outputs in det_10g.onnx's layout for a size x size input (size x `height` where given): per stride 8,
    16, 32, two anchors a place, (rows, 1) scores, then (rows, 4) box distances, then (rows, 10) key-point offsets
    (in strides)."""
    rows = {stride: (size // stride) * ((height or size) // stride) * 2 for stride in (8, 16, 32)}
    out = {f"score_{s}": np.zeros((n, 1), np.float32) for s, n in rows.items()}
    out |= {f"bbox_{s}": np.zeros((n, 4), np.float32) for s, n in rows.items()}
    return out | {f"kps_{s}": np.zeros((n, 10), np.float32) for s, n in rows.items()}


def scrfd_detector(path: Path, outputs: dict[str, np.ndarray], fixed: int | tuple[int, int] | None = None) -> Path:
    """A stand-in for InsightFace's det_10g.onnx ('input.1', any image size unless `fixed`: a side, or width and
    height) with constant outputs (`scrfd_outputs` filled in)."""
    width, height = fixed if isinstance(fixed, tuple) else (fixed, fixed)
    shape = [1, 3, height, width] if fixed else [1, 3, "height", "width"]
    return save(_constant_outputs("scrfd", shape, outputs), path)


def points_106_model(path: Path, values: np.ndarray, first_nodes: tuple = (), size: int = 192) -> Path:
    """A stand-in for InsightFace's 2d106det.onnx: 'input.1' (1,3,192,192; `size` a side) -> (1, 212) constant
    `values` (x, y in [-1, 1] of its input); `first_nodes` named like an MXNet export's normalising nodes (Sub, Mul)."""
    graph = _constant_outputs("points_106", [1, 3, size, size], {"fc1": values.reshape(1, -1)}, first_nodes)
    return save(graph, path)
