"""Built-in ONNX examples: exports of our own networks, made once, inspectable and runnable."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

import engine.onnx.examples as examples
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


def test_an_export_is_the_same_file_every_time_and_leaves_no_trace_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights are seeded, so an example's file (and hash) is the same whatever the caller's random state, which
    the export leaves as it found it; an export that fails leaves neither the model nor its temporary file."""
    import torch

    def tiny() -> tuple:
        return torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}}

    monkeypatch.setitem(examples.EXAMPLES, "tiny", examples.Example("tiny", "Tiny", "x (batch,4) -> y (batch,2)", tiny))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = example_path("tiny", tmp_path / "a")
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(7)
    assert example_path("tiny", tmp_path / "b").read_bytes() == first.read_bytes()

    def crashing(example: examples.Example, out: Path) -> None:
        out.write_bytes(b"half a model")
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(examples, "_export", crashing)
    with pytest.raises(RuntimeError, match="the exporter crashed"):
        example_path("tiny", tmp_path / "c")
    assert list((tmp_path / "c" / "onnx-examples").iterdir()) == []


def test_an_export_made_by_another_format_or_opset_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached export is named by the example's format version and opset: after either changes, the next use exports
    again instead of serving the stale file."""
    import torch

    def tiny() -> tuple:
        return torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}}

    monkeypatch.setitem(examples.EXAMPLES, "tiny", examples.Example("tiny", "Tiny", "x (batch,4) -> y (batch,2)", tiny))
    first = example_path("tiny", tmp_path)
    monkeypatch.setattr(examples, "_FORMAT", examples._FORMAT + 1)
    bumped = example_path("tiny", tmp_path)
    monkeypatch.setattr(examples, "_OPSET", examples._OPSET - 1)
    older_opset = example_path("tiny", tmp_path)
    assert len({first, bumped, older_opset}) == 3 and all(p.is_file() for p in (first, bumped, older_opset))
