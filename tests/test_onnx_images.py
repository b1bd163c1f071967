"""engine.onnx.images and images as evaluation inputs: layouts, scaling, resizing, refusals, top-k on images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import cv2
from tiny_onnx import colour_classifier, mlp

from engine.onnx.config import EvalConfig, EvalError
from engine.onnx.evaluate import check_request, evaluate
from engine.onnx.images import (
    ImageInputError,
    ImageOptions,
    image_layout,
    images_to_tensor,
    pick_image_input,
)
from engine.onnx.inspection import inspect_model
from engine.onnx.model import TensorSpec

MODEL = Path("model.onnx")  # the request's model name; evaluate() runs the file it is handed

RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR, as OpenCV writes


def _image(path: Path, bgr: tuple[int, int, int], size: tuple[int, int] = (40, 20)) -> str:
    """A solid colour image, `size` = (width, height)."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = bgr
    cv2.imwrite(str(path), image)
    return str(path)


def test_layout_from_the_input_shape() -> None:
    nchw = image_layout(TensorSpec("x", "float32", ["N", 3, 224, 200]), {"N": 1})
    assert (nchw.channels_first, nchw.channels, nchw.height, nchw.width) == (True, 3, 224, 200)
    nhwc = image_layout(TensorSpec("x", "float32", [1, "H", "W", 1]), {"H": 32, "W": 48})
    assert (nhwc.channels_first, nhwc.channels, nhwc.height, nhwc.width) == (False, 1, 32, 48)
    with pytest.raises(ImageInputError, match="give values for H, W"):
        image_layout(TensorSpec("x", "float32", [1, 3, "H", "W"]), {})
    with pytest.raises(ImageInputError, match="1x1"):
        image_layout(TensorSpec("x", "float32", [1, 3, "H", "W"]), {"H": 1, "W": 1})
    with pytest.raises(ImageInputError, match=r"are 64x1 \(symbols at their default 1\); give real values for W$"):
        image_layout(TensorSpec("x", "float32", [1, 3, "H", "W"]), {"H": 64, "W": 1})  # images were squashed to 64x1
    assert image_layout(TensorSpec("x", "float32", [1, 3, 1, "W"]), {"W": 64}).height == 1  # the model's own 1
    with pytest.raises(ImageInputError, match="no channel axis"):
        image_layout(TensorSpec("x", "float32", [1, 5, 8, 8]), {})
    with pytest.raises(ImageInputError, match="rank-4"):
        image_layout(TensorSpec("x", "float32", [1, 3, 8]), {})


def test_pick_image_input() -> None:
    specs = [TensorSpec("ids", "int64", ["N", 7]), TensorSpec("pixels", "float32", ["N", 3, 8, 8])]
    assert pick_image_input(specs, None).name == "pixels"
    assert pick_image_input(specs, "ids").name == "ids"
    with pytest.raises(ImageInputError, match="no input 'nope'"):
        pick_image_input(specs, "nope")
    with pytest.raises(
        ImageInputError,
        match=r"no input looks like an image .*; name the one the images fill with "
        r"--image-input \(the model's inputs: ids \['N', 7\]\)$",
    ):  # it said "name the input to use"
        pick_image_input(specs[:1], None)


def test_scaling_channel_order_and_layout_values(tmp_path: Path) -> None:
    path = _image(tmp_path / "red.png", RED, (32, 32))
    spec = TensorSpec("x", "float32", ["N", 3, 8, 8])
    rgb = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="0-1"))
    assert rgb.shape == (1, 3, 8, 8) and rgb.dtype == np.float32
    assert np.allclose(rgb[0, :, 0, 0], [1, 0, 0])
    bgr = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="0-1", channels="bgr"))
    assert np.allclose(bgr[0, :, 0, 0], [0, 0, 1])
    net = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="imagenet"))
    want = (np.array([1, 0, 0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert np.allclose(net[0, :, 3, 3], want, atol=1e-5)
    sym = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="-1-1"))
    assert np.allclose(sym[0, :, 0, 0], [1, -1, -1])
    raw = images_to_tensor([path], TensorSpec("x", "uint8", [1, 8, 8, 3]), {}, ImageOptions(scaling="0-255"))
    assert raw.dtype == np.uint8 and raw.shape == (1, 8, 8, 3) and raw[0, 0, 0].tolist() == [255, 0, 0]
    grey = images_to_tensor([path], TensorSpec("x", "float32", [1, 1, 8, 8]), {}, ImageOptions())
    assert grey.shape == (1, 1, 8, 8) and np.isclose(grey[0, 0, 0, 0], 0.299, atol=1e-3)  # BT.601 red weight
    half = images_to_tensor([path], TensorSpec("x", "float16", [1, 3, 8, 8]), {}, ImageOptions())
    assert half.dtype == np.float16
    brain = images_to_tensor([path], TensorSpec("x", "bfloat16", [1, 3, 8, 8]), {}, ImageOptions(scaling="-1-1"))
    assert brain.dtype.name == "bfloat16" and brain[0, :, 0, 0].astype(np.float32).tolist() == [1, -1, -1]


def test_resize_modes(tmp_path: Path) -> None:
    wide = np.zeros((20, 80, 3), np.uint8)
    wide[:, :40] = 255  # left half white
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    spec = TensorSpec("x", "float32", [1, 3, 10, 10])
    stretch = images_to_tensor([tmp_path / "wide.png"], spec, {}, ImageOptions(resize="stretch"))
    crop = images_to_tensor([tmp_path / "wide.png"], spec, {}, ImageOptions(resize="crop"))
    box = images_to_tensor([tmp_path / "wide.png"], spec, {}, ImageOptions(resize="letterbox"))
    assert stretch.shape == crop.shape == box.shape == (1, 3, 10, 10)
    assert np.isclose(stretch[0, 0].mean(), 0.5, atol=0.05)  # both halves kept
    assert np.isclose(crop[0, 0, :, :5].mean(), 1.0) and np.isclose(crop[0, 0, :, 5:].mean(), 0.0)  # the centre
    assert np.allclose(box[0, 0, 0, :], 114 / 255)  # top rows are padding: the image is 2.5 px tall


def test_a_crop_resizes_only_the_centre_it_keeps(tmp_path: Path) -> None:
    """A 16x4096 strip into 512x512: the whole strip resized to the covering scale first took 200 MB (1.7 GB for a
    16x8192 one into 1024x1024); the centre alone is cut, then resized."""
    import tracemalloc

    strip = np.zeros((16, 4096, 3), np.uint8)
    strip[:, 2040:2056] = 255  # the centre 16x16 is white, the rest black
    cv2.imwrite(str(tmp_path / "strip.png"), strip)
    spec = TensorSpec("x", "float32", [1, 3, 512, 512])
    tracemalloc.start()
    try:
        out = images_to_tensor([tmp_path / "strip.png"], spec, {}, ImageOptions(resize="crop"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 3, 512, 512) and np.allclose(out, 1.0) and peak < 30 * 2**20


def test_refusals(tmp_path: Path) -> None:
    spec = TensorSpec("x", "float32", [1, 3, 8, 8])
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(ImageInputError, match="could not be decoded"):
        images_to_tensor([not_image], spec, {}, ImageOptions())
    with pytest.raises(ImageInputError, match="not found"):
        images_to_tensor([tmp_path / "missing.png"], spec, {}, ImageOptions())
    good = _image(tmp_path / "ok.png", RED)
    with pytest.raises(ImageInputError, match="use scaling '0-255'"):
        images_to_tensor([good], TensorSpec("x", "uint8", [1, 3, 8, 8]), {}, ImageOptions(scaling="0-1"))
    with pytest.raises(ImageInputError, match="is int4; images fill float"):
        images_to_tensor([good], TensorSpec("x", "int4", [1, 3, 8, 8]), {}, ImageOptions())
    with pytest.raises(ImageInputError, match="resize 'zoom'"):
        images_to_tensor([good], spec, {}, ImageOptions(resize="zoom"))
    with pytest.raises(ImageInputError, match="no images"):
        images_to_tensor([], spec, {}, ImageOptions())
    with pytest.raises(ImageInputError, match="at most"):
        images_to_tensor([good] * 300, spec, {}, ImageOptions())
    with pytest.raises(ImageInputError, match=r"larger than|exceeds|too large|over"):
        images_to_tensor([good], spec, {}, ImageOptions(max_side=10))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_images_drive_top_k_through_evaluate(tmp_path: Path, layout: str) -> None:
    model = colour_classifier(tmp_path / "colours.onnx", layout)
    info = inspect_model(model)
    paths = [_image(tmp_path / f"{i}.png", c) for i, c in enumerate((RED, GREEN, BLUE, GREEN))]
    labels = [0, 1, 2, 1]  # RGB order: red is class 0
    config = EvalConfig(model=MODEL, batch_sizes=[4, 2], runs=3, warmup=0, images=paths, labels=labels)
    report = evaluate(model, info, config)
    assert report["accuracy"]["topk"]["cpu"]["top1"] == 1.0
    assert report["input_source"]["image"] == "images"
    assert [r["batch"] for r in report["results"]] == [4, 2]  # images cut to the smaller batch
    bgr = EvalConfig(model=MODEL, batch_sizes=[4], runs=2, warmup=0, images=paths, labels=labels, image_channels="bgr")
    swapped = evaluate(model, info, bgr)
    assert swapped["accuracy"]["topk"]["cpu"]["top1"] == 0.5  # red and blue swap; green stays


def test_image_count_warning_and_conflicts(tmp_path: Path) -> None:
    model = colour_classifier(tmp_path / "colours.onnx")
    info = inspect_model(model)
    paths = [_image(tmp_path / "r.png", RED), _image(tmp_path / "g.png", GREEN)]
    warnings = check_request(info, EvalConfig(model=MODEL, batch_sizes=[8], images=paths))
    assert any("2 image(s) at batch size 8" in w for w in warnings)
    npz = tmp_path / "in.npz"
    np.savez(npz, image=np.zeros((8, 3, 8, 8), np.float32))
    with pytest.raises(EvalError, match="given twice"):
        check_request(info, EvalConfig(model=MODEL, batch_sizes=[8], images=paths, inputs=npz))
    plain = mlp(tmp_path / "mlp.onnx")
    with pytest.raises(EvalError, match="no input looks like an image"):
        check_request(inspect_model(plain), EvalConfig(model=MODEL, images=paths))
    assert EvalConfig.build({"model": "m.onnx", "images": []}).images is None  # no files chosen: none
