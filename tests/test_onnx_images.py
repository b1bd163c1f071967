"""engine.onnx.images and images as evaluation inputs: layouts, scaling, resizing, refusals, top-k on images."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import cv2
from onnx import TensorProto, helper
from tiny_onnx import colour_classifier, mlp, save

from engine.onnx.config import EvalConfig, EvalError
from engine.onnx.evaluate import check_request, evaluate
from engine.onnx.images import (
    ImageInputError,
    ImageOptions,
    image_layout,
    images_to_tensor,
    looks_like_one_image,
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
    with pytest.raises(ImageInputError, match=r"give values for H$"):  # the fixed width needs none
        image_layout(TensorSpec("x", "float32", [1, 3, "H", 8]), {})
    with pytest.raises(ImageInputError, match="1x1"):
        image_layout(TensorSpec("x", "float32", [1, 3, "H", "W"]), {"H": 1, "W": 1})
    with pytest.raises(ImageInputError, match=r"are 64x1 \(symbols at their default 1\); give real values for W$"):
        image_layout(TensorSpec("x", "float32", [1, 3, "H", "W"]), {"H": 64, "W": 1})  # images were squashed to 64x1
    assert image_layout(TensorSpec("x", "float32", [1, 3, 1, "W"]), {"W": 64}).height == 1  # the model's own 1
    with pytest.raises(ImageInputError) as fixed:  # the model's own 1x1: still no picture, and nothing to set
        image_layout(TensorSpec("x", "float32", [1, 3, 1, 1]), {})
    assert str(fixed.value) == (
        "input 'x' [1, 3, 1, 1]: the model fixes its height and width at 1x1, which holds no image; evaluate it "
        "without images (random or .npz inputs)"
    )
    with pytest.raises(ImageInputError, match="no channel axis"):
        image_layout(TensorSpec("x", "float32", [1, 5, 8, 8]), {})
    with pytest.raises(ImageInputError, match="rank-4"):
        image_layout(TensorSpec("x", "float32", [1, 3, 8]), {})


def test_one_image_has_sides_of_at_least_8_and_at_most_4_to_1() -> None:
    """What tells one fixed C,H,W or H,W,C picture (not a batch of 3) from 8 point clouds [8, 1024, 3]: the limits
    themselves count as a picture, one past them does not, and a symbolic size is no picture's."""
    assert looks_like_one_image([3, 8, 32]) and looks_like_one_image([32, 8, 1])
    assert not looks_like_one_image([3, 7, 28]) and not looks_like_one_image([3, 8, 33])
    assert not looks_like_one_image([3, "H", 32]) and not looks_like_one_image([3, 8, 8, 1])


def test_pick_image_input() -> None:
    specs = [TensorSpec("ids", "int64", ["N", 7]), TensorSpec("pixels", "float32", ["N", 3, 8, 8])]
    assert pick_image_input(specs, None).name == "pixels"
    mask = TensorSpec("mask", "bool", ["N", 1, 8, 8])  # image-shaped, but no picture's values fit it
    assert pick_image_input([mask, specs[1]], None).name == "pixels"
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
    net_bgr = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="imagenet", channels="bgr"))
    assert np.allclose(net_bgr[0, :, 3, 3], want[::-1], atol=1e-5)  # each channel keeps its own mean and std
    sym = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="-1-1"))
    assert np.allclose(sym[0, :, 0, 0], [1, -1, -1])
    raw = images_to_tensor([path], TensorSpec("x", "uint8", [1, 8, 8, 3]), {}, ImageOptions(scaling="0-255"))
    assert raw.dtype == np.uint8 and raw.shape == (1, 8, 8, 3) and raw[0, 0, 0].tolist() == [255, 0, 0]
    grey = images_to_tensor([path], TensorSpec("x", "float32", [1, 1, 8, 8]), {}, ImageOptions())
    assert grey.shape == (1, 1, 8, 8) and np.isclose(grey[0, 0, 0, 0], 0.299, atol=1e-3)  # BT.601 red weight
    grey_net = images_to_tensor([path], TensorSpec("x", "float32", [1, 1, 8, 8]), {}, ImageOptions(scaling="imagenet"))
    assert np.isclose(grey_net[0, 0, 0, 0], (0.299 - 0.449) / 0.226, atol=1e-3)  # the channels' mean mean and std
    raw_float = images_to_tensor([path], spec, {"N": 1}, ImageOptions(scaling="0-255"))
    assert raw_float[0, :, 0, 0].tolist() == [255, 0, 0]  # a float input takes the raw values too
    small = images_to_tensor([path], TensorSpec("x", "int8", [1, 8, 8, 3]), {}, ImageOptions(scaling="0-255"))
    assert small[0, 0, 0].tolist() == [127, 0, 0]  # clipped to int8's range, not wrapped round to -1
    green = _image(tmp_path / "green.png", GREEN, (32, 32))
    grey_green = images_to_tensor([green], TensorSpec("x", "uint8", [1, 1, 8, 8]), {}, ImageOptions(scaling="0-255"))
    assert grey_green[0, 0, 0, 0] == 150  # 0.587 x 255 = 149.7, rounded to the nearest
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
    checks = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1 px black and white squares
    cv2.imwrite(str(tmp_path / "checks.png"), np.dstack([checks] * 3))
    shrunk = images_to_tensor([tmp_path / "checks.png"], spec, {}, ImageOptions(resize="stretch"))
    assert np.allclose(shrunk, 0.5, atol=0.05)  # shrinking averages the pixels (area), not picks some (aliasing)


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
    with pytest.raises(ImageInputError, match="257 images; at most 256 per evaluation"):
        images_to_tensor([good] * 257, spec, {}, ImageOptions())
    assert images_to_tensor([good] * 256, spec, {}, ImageOptions()).shape == (256, 3, 8, 8)  # the limit itself
    with pytest.raises(ImageInputError, match=r"larger than|exceeds|too large|over"):
        images_to_tensor([good], spec, {}, ImageOptions(max_side=10))


def test_a_scaling_or_channel_order_outside_the_lists_is_refused_in_words(tmp_path: Path) -> None:
    """Only the resize mode's refusal was tested: an unknown scaling would be a KeyError from the table, and an
    unknown channel order would silently give BGR."""
    good = _image(tmp_path / "ok.png", RED)
    spec = TensorSpec("x", "float32", [1, 3, 8, 8])
    refusals = {
        "invalid image options: scaling '0-2' is not one of 0-1, -1-1, imagenet, 0-255": ImageOptions(scaling="0-2"),
        "invalid image options: channels 'grb' is not one of rgb, bgr": ImageOptions(channels="grb"),
    }
    for message, options in refusals.items():
        with pytest.raises(ImageInputError, match=f"^{re.escape(message)}$"):
            images_to_tensor([good], spec, {}, options)
    with pytest.raises(ImageInputError, match=r"resize 'zoom' .*; scaling 'x' .*; channels 'y' is not"):
        ImageOptions(resize="zoom", scaling="x", channels="y").validate()  # every problem at once


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


def test_images_for_a_fixed_batch_are_repeated_or_cut_to_it_and_said(tmp_path: Path) -> None:
    """A model whose batch is fixed at 2 takes exactly 2 images: one is repeated, three are cut, and either is said;
    with a batch symbol, the count is compared with the first batch size, which the accuracy covers."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["scores"], axes=[2, 3], keepdims=0)], "fixed",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 3])],
    )  # fmt: skip
    path = save(graph, tmp_path / "fixed.onnx")
    info = inspect_model(path)
    red, green, blue = (_image(tmp_path / f"{i}.png", c) for i, c in enumerate((RED, GREEN, BLUE)))
    one = evaluate(path, info, EvalConfig(model=MODEL, runs=2, warmup=0, images=[red]))
    assert one["results"][0]["error"] is None
    assert "1 image(s) for input 'image' with a fixed batch of 2" in one["warnings"]
    three = check_request(info, EvalConfig(model=MODEL, images=[red, green, blue]))
    assert "3 image(s) for input 'image' with a fixed batch of 2" in three
    colours = inspect_model(colour_classifier(tmp_path / "colours.onnx"))
    warnings = check_request(colours, EvalConfig(model=MODEL, batch_sizes=[8, 2], images=[red, green]))
    assert any(w.startswith("2 image(s) at batch size 8: ") for w in warnings)


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
