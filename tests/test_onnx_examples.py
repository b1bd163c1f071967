"""Built-in ONNX examples: exports of our own networks, made once, inspectable and runnable."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from engine.onnx.config import EvalConfig
from engine.onnx.evaluate import evaluate
from engine.onnx.examples import EXAMPLES, example_path
from engine.onnx.inspection import inspect_model

MODEL = Path("model.onnx")  # the request's model name; evaluate() runs the file it is handed


def test_wav2lip_example_is_the_generator_and_is_exported_once(tmp_path: Path) -> None:
    path = example_path("wav2lip", tmp_path)
    info = inspect_model(path)
    # The published generator has 36,298,035; the exporter folds BatchNorms that follow a Conv into it.
    assert 36_200_000 < info.parameters <= 36_298_035
    assert (info.op_counts["Conv"], info.op_counts["ConvTranspose"]) == (45, 6)
    assert [(s.name, s.shape) for s in info.inputs] == [("mel", ["batch", 1, 80, 16]), ("face", ["batch", 6, 96, 96])]
    assert [(s.name, s.shape) for s in info.outputs] == [("frames", ["batch", 3, 96, 96])]
    assert info.flops and info.flops > 1e9
    stamp = path.stat().st_mtime_ns
    assert example_path("wav2lip", tmp_path) == path and path.stat().st_mtime_ns == stamp  # cached, not redone
    assert not list(path.parent.glob("*.tmp"))
    report = evaluate(path, info, EvalConfig(model=MODEL, batch_sizes=[2], runs=2, warmup=0))
    row = report["results"][0]
    assert row["latency"]["n"] == 2 and row["ran_on"] == "CPUExecutionProvider"
    assert report["parity"]["cpu"]["frames"]["max_abs"] == 0.0


def test_s3fd_example_has_six_class_and_box_maps(tmp_path: Path) -> None:
    info = inspect_model(example_path("s3fd", tmp_path))
    assert info.parameters == 22_459_110
    assert [s.name for s in info.outputs] == [f"{k}{i}" for i in range(6) for k in ("cls", "reg")]
    assert info.inputs[0].shape == ["batch", 3, 384, 640]


def test_unknown_example(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available: " + ", ".join(EXAMPLES)):
        example_path("resnet", tmp_path)
