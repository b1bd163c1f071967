"""Eye and lip retargeting: the optional landmark model (a stand-in ONNX with known landmarks), openness
ratios, and the retargeting deltas in the driving keypoints: to one fixed openness, or (upstream's mode) to each
driving frame's own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

pytest.importorskip("onnxruntime")
from tiny_onnx import landmark_model

from engine.portrait.config import PortraitConfig, PortraitError
from engine.portrait.landmarks import LandmarkError, LandmarkModel, eye_open_ratios, lip_open_ratio
from engine.portrait.liveportrait_plan import _driving_keypoints
from engine.portrait.motion import KeypointInfo, concatenated, neutral_expression, transform_keypoints

FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"


def test_openness_from_the_landmark_model(tmp_path: Path) -> None:
    import cv2

    model = LandmarkModel(landmark_model(tmp_path / "landmark.onnx"))
    rgb = cv2.imread(str(FACE))[:, :, ::-1].copy()
    points = model(rgb, np.array([172.0, 60.0, 280.0, 190.0]))
    assert points.shape == (203, 2)
    assert 150 < points[:, 0].mean() < 300  # mapped back to the image, around the face
    assert eye_open_ratios(points) == pytest.approx([0.25, 0.2], abs=1e-4)  # ratios survive the mapping
    assert lip_open_ratio(points) == pytest.approx(0.2, abs=1e-4)
    with pytest.raises(LandmarkError, match="no landmark model"):
        LandmarkModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(LandmarkError, match="not a usable ONNX"):
        LandmarkModel(tmp_path / "junk.onnx")


def test_landmarks_stay_float32_as_upstreams_runner_maps_them(tmp_path: Path) -> None:
    """Upstream's human_landmark_runner scales the model's float32 output by 224 and maps it back with its float32
    crop-to-original matrix (`pts @ M[:2, :2].T + M[:2, 2]`): the points, and the openness ratios computed from them,
    stay float32. Points mapped in float64 gave ratios one float32 step away for most faces."""
    import cv2

    from engine.portrait.crop import crop_image, crop_transform

    path = landmark_model(tmp_path / "landmark.onnx", tilt_deg=7.0)
    model = LandmarkModel(path)
    rgb = cv2.imread(str(FACE))[:, :, ::-1].copy()
    box = np.array([171.3, 58.7, 283.9, 191.2])
    points = model(rgb, box)
    transform = crop_transform(box, scale=1.5, vy=-0.1, size=224)
    crop = crop_image(rgb, transform).astype(np.float32) / 255
    output = model.session.run(None, {model.input: crop.transpose(2, 0, 1)[None]})[2]
    c2o = np.linalg.inv(np.vstack([transform.to_crop, np.array([0, 0, 1], np.float32)]))
    assert c2o.dtype == np.float32
    raw = output[0].reshape(-1, 2) * 224
    expected = raw @ c2o[:2, :2].T + c2o[:2, 2]
    assert points.dtype == np.float32
    np.testing.assert_array_equal(points, expected)

    def ratio(a: int, b: int, c: int, d: int) -> np.ndarray:  # upstream's calculate_distance_ratio
        lmk = expected[None]
        top = np.linalg.norm(lmk[:, a] - lmk[:, b], axis=1, keepdims=True)
        return top / (np.linalg.norm(lmk[:, c] - lmk[:, d], axis=1, keepdims=True) + 1e-6)

    np.testing.assert_array_equal(
        eye_open_ratios(points), np.concatenate([ratio(6, 18, 0, 12), ratio(30, 42, 24, 36)], 1)[0]
    )
    assert np.float32(lip_open_ratio(points)) == ratio(90, 102, 48, 66)[0, 0]


def test_an_eye_or_mouth_of_no_width_is_closed_not_nan() -> None:
    """Upstream's ratio adds 1e-6 to the width it divides by: landmarks all in one place (a model that found no face
    there) give openness 0, not NaN from 0 / 0, which would turn every retargeted keypoint into NaN."""
    with np.errstate(all="raise"):  # numpy's 0 / 0 is a warning and a NaN; here an error as well
        assert eye_open_ratios(np.full((203, 2), 80.0, np.float32)).tolist() == [0.0, 0.0]
        assert lip_open_ratio(np.full((203, 2), 80.0, np.float32)) == 0.0


@pytest.mark.parametrize(
    "inputs",
    [
        [],  # a constant graph
        [("x", TensorProto.FLOAT, [1, 10])],  # another rank
        [("x", TensorProto.FLOAT, [1, 3, 224, 224, 1])],  # one axis more: the image's four, then another
        [("x", TensorProto.FLOAT, [1, 3, 64, 64])],  # another size
        [("x", TensorProto.INT64, ["n", 3, 224, 224])],  # not an image of floats
        [("x", TensorProto.FLOAT, [1, 3, 224, 224]), ("y", TensorProto.FLOAT, [1])],  # a second input
    ],
)
def test_a_model_that_takes_no_face_crop_is_refused_when_loaded(tmp_path: Path, inputs: list) -> None:
    """Any ONNX model given as --landmarks ended in onnxruntime's tracebacks (a missing input, a wrong rank, an
    IndexError for a graph without inputs): it is refused as it loads, saying what it takes."""
    values = [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs]
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value=numpy_helper.from_array(np.zeros(406, np.float32)))],
        "other", values, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [406])],
    )  # fmt: skip
    path = tmp_path / "other.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    )
    with pytest.raises(LandmarkError, match=r"other\.onnx is not a landmark model: it takes .*one float image batch"):
        LandmarkModel(path)


def test_a_landmark_model_with_an_unsized_batch_and_a_fourth_output_is_read_at_its_third(tmp_path: Path) -> None:
    """An exported model may leave its batch axis unsized (neither a number nor a name: any batch), and upstream's
    runner reads the third output whatever follows it: such a model is taken, and its third output read, not its
    last (here one with every point in one place, where no eye or lip is open)."""
    import onnx

    model = onnx.load(landmark_model(tmp_path / "landmark.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.node.append(helper.make_node("Identity", ["decoy_a"], ["decoy_c"]))
    model.graph.output.append(helper.make_tensor_value_info("decoy_c", TensorProto.FLOAT, [1, 406]))
    path = tmp_path / "four.onnx"
    path.write_bytes(model.SerializeToString())
    landmarks = LandmarkModel(path)
    assert landmarks.session.get_inputs()[0].shape[0] is None and len(landmarks.session.get_outputs()) == 4
    points = landmarks(np.zeros((256, 256, 3), np.uint8), np.array([50.0, 50.0, 200.0, 200.0]))
    assert eye_open_ratios(points) == pytest.approx([0.25, 0.2], abs=1e-4)
    assert lip_open_ratio(points) == pytest.approx(0.2, abs=1e-4)


def test_a_landmark_model_that_fails_as_it_runs_is_an_input_error(tmp_path: Path) -> None:
    """A graph that takes the crop but fails inside (here a reshape the crop's size does not allow)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["out"])], "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([5, -1], np.int64), "shape")],
    )  # fmt: skip
    path = tmp_path / "bad.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    )
    with pytest.raises(LandmarkError, match="the landmark model failed on a face crop"):
        LandmarkModel(path)(np.zeros((256, 256, 3), np.uint8), np.array([50.0, 50.0, 200.0, 200.0]))


def test_the_landmark_model_sees_upstreams_face_crop_in_0_to_1(tmp_path: Path) -> None:
    """The model was trained on a crop of 1.5x the face box moved up by 0.1 of its side, as RGB in [0, 1]: an image
    whose pixels hold their own position shows which pixels the crop took."""
    model = LandmarkModel(landmark_model(tmp_path / "landmark.onnx"))
    seen = []
    run = model.session.run
    model.session = SimpleNamespace(run=lambda names, feed: seen.append(feed[model.input]) or run(names, feed))
    ys, xs = np.mgrid[0:256, 0:256]
    rgb = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)  # red: x, green: y
    model(rgb, np.array([50.0, 60.0, 150.0, 160.0]))  # a 100 px face centred on (100, 110): a 150 px crop at (100, 95)
    crop = seen[0][0]
    assert seen[0].shape == (1, 3, 224, 224) and seen[0].dtype == np.float32 and crop.max() <= 1.0
    for (row, col), (x, y) in {(0, 0): (25, 20), (112, 112): (100, 95), (223, 223): (175, 170)}.items():
        assert crop[0, row, col] * 255 == pytest.approx(x, abs=1.5) and crop[1, row, col] * 255 == pytest.approx(
            y, abs=1.5
        )


def test_the_landmark_model_follows_earlier_points_in_upstreams_crop_from_them(tmp_path: Path) -> None:
    """Upstream's runner reads a face already found (run(img, lmk)) in crop_image's square around the earlier 203
    points: 1.5x their extent on the face's axes, moved up 0.1 of it along the face's vertical, turned upright, 224
    wide; the points come back through that crop's float32 inverse. An image whose pixels hold their own position
    shows which pixels the crop took."""
    import cv2

    from engine.portrait.crop import landmark_crop_transform

    model = LandmarkModel(landmark_model(tmp_path / "landmark.onnx", tilt_deg=7.0))
    seen = []
    run = model.session.run
    model.session = SimpleNamespace(run=lambda names, feed: seen.append(feed[model.input]) or run(names, feed))
    ys, xs = np.mgrid[0:256, 0:256]
    rgb = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)  # red: x, green: y
    earlier = np.tile(np.array([[100.0, 100.0], [200.0, 200.0]], np.float32), (102, 1))[:203]  # a 100 px square
    earlier[[0, 6, 12, 18]], earlier[[24, 30, 36, 42]] = (120.0, 130.0), (180.0, 130.0)
    earlier[[48, 66]] = (130.0, 180.0), (170.0, 180.0)  # upright: the crop is 150 px at (150, 150 - 0.1 x 150)
    points = model.following(rgb, earlier)
    crop = seen[0][0]
    for (row, col), (x, y) in {(0, 0): (75, 60), (112, 112): (150, 135), (223, 223): (225, 210)}.items():
        assert crop[0, row, col] * 255 == pytest.approx(x, abs=1.5) and crop[1, row, col] * 255 == pytest.approx(
            y, abs=1.5
        )
    turn = np.radians(20.0)  # the same face tilted 20 degrees clockwise about (150, 150): the crop turns with it
    tilted = (earlier - 150.0) @ np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]) + 150.0
    points = model.following(rgb, tilted.astype(np.float32))
    transform = landmark_crop_transform(tilted, scale=1.5, vy=-0.1, size=224)
    assert transform.angle == pytest.approx(20.0, abs=1e-3)
    want = cv2.warpAffine(rgb, transform.to_crop, (224, 224), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
    np.testing.assert_array_equal(seen[1][0], want.transpose(2, 0, 1))
    c2o = np.linalg.inv(np.vstack([transform.to_crop, np.array([0, 0, 1], np.float32)]))
    raw = run(None, {model.input: seen[1]})[2][0].reshape(-1, 2) * 224
    assert points.dtype == np.float32 and np.array_equal(points, raw @ c2o[:2, :2].T + c2o[:2, 2])
    with pytest.raises(LandmarkError, match="the landmarks to follow make no face crop: the 203 landmarks span no"):
        model.following(rgb, np.full((203, 2), 50.0, np.float32))


def test_a_landmark_model_whose_output_is_not_203_points_is_an_input_error(tmp_path: Path) -> None:
    """A model that takes the crop but answers with another number of values is refused with what it gave (the
    reshape failed with numpy's own error)."""
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value=numpy_helper.from_array(np.zeros((1, 10), np.float32)))],
        "short", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])],
    )  # fmt: skip
    path = tmp_path / "short.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    )
    with pytest.raises(LandmarkError, match=r"the landmark model's only output holds 10 values, not 203 x 2"):
        LandmarkModel(path)(np.zeros((256, 256, 3), np.uint8), np.array([50.0, 50.0, 200.0, 200.0]))
    graph.node.append(helper.make_node("Identity", ["out"], ["again"]))  # two outputs: the first is read
    graph.output.append(helper.make_tensor_value_info("again", TensorProto.FLOAT, [1, 10]))
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    )
    with pytest.raises(LandmarkError, match=r"the landmark model's first output holds 10 values"):  # not its "only"
        LandmarkModel(path)(np.zeros((256, 256, 3), np.uint8), np.array([50.0, 50.0, 200.0, 200.0]))


def _mlp(cin: int, bias: float, per_target: float = 0.0) -> nn.Module:
    """A retargeting network whose delta is `bias` + `per_target` x the target openness (its last input)."""
    layer = nn.Linear(cin, 63)
    nn.init.zeros_(layer.weight)
    nn.init.constant_(layer.bias, bias)
    with torch.no_grad():
        layer.weight[:, -1] = per_target
    return layer


def _source(seed: int) -> KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    return KeypointInfo(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1, 3),
                        torch.zeros(1, 21, 3), torch.ones(1), torch.rand(1, 21, 3, generator=g) - 0.5)  # fmt: skip


def _still_clip(source: KeypointInfo, frames: int = 2) -> KeypointInfo:
    return concatenated([source] * frames)


def test_retargeting_to_a_fixed_openness_adds_the_networks_deltas(tmp_path: Path) -> None:
    source = _source(0)
    clip = _still_clip(source)
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01), "lip": _mlp(65, 0.02)})
    openness = (np.array([0.3, 0.3], np.float32), 0.01)  # lips nearly closed: no lip normalisation here
    base = PortraitConfig(FACE, FACE, stitching=False)
    plain, _ = _driving_keypoints(base, source, clip, nets, openness)
    assert torch.allclose(plain, transform_keypoints(source).expand(2, 21, 3))
    eyes = PortraitConfig(FACE, FACE, stitching=False, eye_open=0.0)
    x, _ = _driving_keypoints(eyes, source, clip, nets, openness)
    assert torch.allclose(x, plain + 0.01)
    both = PortraitConfig(FACE, FACE, stitching=False, eye_open=0.0, lip_open=0.5)
    x, _ = _driving_keypoints(both, source, clip, nets, openness)
    assert torch.allclose(x, plain + 0.03)
    with pytest.raises(ValueError, match=r"outside 0\.\.0\.8"):
        PortraitConfig(FACE, FACE, eye_open=1.5).validate()


def test_retargeting_to_each_driving_frames_openness(tmp_path: Path) -> None:
    """Upstream's mode: the eye and lip networks take each driving frame's openness; with relative motion the
    frame is the source's keypoints plus their deltas (the driver's head turn is dropped), with absolute motion
    the driver's keypoints plus them; stitching comes after, then the driving multiplier; no lip normalisation."""
    source = _source(2)
    clip = _still_clip(source)
    clip.yaw = torch.tensor([0.0, 20.0])  # motion that relative driving would otherwise apply
    stitching = nn.Linear(126, 65)  # adds 0.5 to every coordinate and 0.5 more to x and y
    nn.init.zeros_(stitching.weight)
    nn.init.constant_(stitching.bias, 0.5)
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.0, 1.0), "lip": _mlp(65, 0.01, 1.0), "stitching": stitching})
    source_open = (np.array([0.3, 0.3], np.float32), 0.1)  # lips open: normalisation would add 0.01
    driver_open = (np.array([[0.1, 0.5], [0.2, 0.6]], np.float32), np.array([0.05, 0.25], np.float32))
    x_s = transform_keypoints(source)

    def driven(**options) -> torch.Tensor:
        config = PortraitConfig(FACE, FACE, **{"stitching": False, **options})
        return _driving_keypoints(config, source, clip, nets, source_open, driving_openness=driver_open)[0]

    def per_frame(*values: float) -> torch.Tensor:
        return torch.tensor(values).view(-1, 1, 1)

    eyes = driven(eye_retargeting=True)  # each frame's left eye: 0.1, then 0.2
    assert torch.allclose(eyes, x_s + per_frame(0.1, 0.2), atol=1e-6)
    lips = per_frame(0.06, 0.26)  # each frame's lips, plus the network's 0.01
    assert torch.allclose(driven(lip_retargeting=True), x_s + lips, atol=1e-6)
    assert torch.allclose(driven(eye_retargeting=True, lip_retargeting=True), x_s + per_frame(0.16, 0.46), atol=1e-6)
    assert torch.allclose(driven(eye_retargeting=True, lip_open=0.4), x_s + per_frame(0.51, 0.61), atol=1e-6)
    absolute = driven(relative=False)
    assert not torch.allclose(absolute[1], x_s[0], atol=1e-3)  # the driver's turn
    assert torch.allclose(driven(relative=False, lip_retargeting=True), absolute + lips, atol=1e-6)
    shift = torch.tensor([1.0, 1.0, 0.5])
    stitched = driven(lip_retargeting=True, stitching=True, multiplier=2.0)
    assert torch.allclose(stitched, x_s + 2 * (lips + shift), atol=1e-6)
    with pytest.raises(PortraitError, match="has none"):  # a motion template saved without the openness
        config = PortraitConfig(FACE, FACE, eye_retargeting=True)
        _driving_keypoints(config, source, clip, nets, source_open, driving_openness=None)
    with pytest.raises(PortraitError, match="not both"):
        PortraitConfig(FACE, FACE, lip_retargeting=True, lip_open=0.2).validate()


def test_lip_normalisation_closes_an_open_source_mouth_before_relative_motion(tmp_path: Path) -> None:
    source = _source(1)
    clip = _still_clip(source)
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01), "lip": _mlp(65, 0.02)})
    still = transform_keypoints(source).expand(2, 21, 3)

    def driven(openness: tuple, **options) -> torch.Tensor:
        config = PortraitConfig(FACE, FACE, stitching=False, **{"normalize_lips": True, **options})
        return _driving_keypoints(config, source, clip, nets, openness)[0]

    eyes = np.array([0.3, 0.3], np.float32)
    assert PortraitConfig(FACE, FACE).normalize_lips is False  # upstream's default (argument_config.py)
    assert torch.allclose(driven((eyes, 0.1)), still + 0.02)  # lips open 0.1 >= 0.03: closed first
    assert torch.allclose(driven((eyes, 0.01)), still)  # already (nearly) closed: untouched
    assert torch.allclose(driven((eyes, 0.03)), still + 0.02)  # upstream's threshold itself counts as open
    assert torch.allclose(driven((eyes, 0.0299)), still)
    # Upstream compares the float32 ratio tensor with the scalar 0.03, which torch casts to float32: a ratio whose
    # float32 value is float32(0.03), just under 0.03 itself, counts as open there.
    just_under = float(np.float32(0.03))
    assert just_under < 0.03 and bool(torch.tensor([[just_under]], dtype=torch.float32)[0][0] >= 0.03)
    assert torch.allclose(driven((eyes, just_under)), still + 0.02)
    below = float(np.nextafter(np.float32(0.03), np.float32(0)))  # the float32 just under: closed in both
    assert torch.allclose(driven((eyes, below)), still)
    assert torch.allclose(driven((eyes, 0.1), normalize_lips=False), still)
    assert torch.allclose(driven((eyes, 0.1), relative=False), still)  # upstream: relative motion only
    assert torch.allclose(driven((eyes, 0.1), lip_open=0.4), still + 0.02)  # explicit lip retargeting instead
    follows = PortraitConfig(FACE, FACE, stitching=False, normalize_lips=True, eye_retargeting=True)
    driver = (np.full((2, 2), 0.3, np.float32), np.full(2, 0.1, np.float32))
    x, _ = _driving_keypoints(follows, source, clip, nets, (eyes, 0.1), driving_openness=driver)
    assert torch.allclose(x, still + 0.01)  # retargeting to the driver: the eyes' delta only, no lips closed
    assert torch.allclose(driven(None), still)  # no landmark model: nothing to normalise with
    image = PortraitConfig(FACE, FACE, stitching=False, normalize_lips=True)  # one driving image: closed too
    neutral = replace(source, exp=neutral_expression())
    x, x_source = _driving_keypoints(image, source, neutral, nets, (eyes, 0.1))
    assert torch.allclose(x, x_source + 0.02, atol=1e-6)


def test_keypoints_take_the_drivings_reference_frame_and_image_flag_and_save_its_openness(tmp_path: Path) -> None:
    """What the driving measurement says reaches the keypoints: relative motion against its reference frame (not
    the first), a template cut to one frame moved against itself (not as an image); the template is saved with the
    driver's openness and named in the outputs; the source's openness and whether its lips were closed are
    reported."""
    from engine.core.results import RunResult
    from engine.portrait.driving import Driving
    from engine.portrait.liveportrait_plan import keypoints
    from engine.portrait.templates import read_template

    source = _source(3)
    x_source = transform_keypoints(source)
    clip = _still_clip(source, 3)
    clip.yaw = torch.tensor([30.0, 0.0, 5.0])  # frame 0 turned away (no face was found there, say)
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01), "lip": _mlp(65, 0.02)})
    stand_in = SimpleNamespace(nets=nets, motion=source, openness=(np.array([0.3, 0.25], np.float32), 0.1))
    head = SimpleNamespace(config=PortraitConfig(FACE, FACE, stitching=False, normalize_lips=True), result=RunResult())
    driver_open = (np.full((3, 2), 0.3, np.float32), np.full(3, 0.2, np.float32))
    template = tmp_path / "motion.npz"
    x, _ = keypoints(head, stand_in, Driving(clip, 25.0, 3, reference=1, openness=driver_open), template)
    assert torch.allclose(x[1], x_source[0] + 0.02, atol=1e-6)  # the reference frame: no motion, lips closed
    assert not torch.allclose(x[0], x[1], atol=1e-3)
    saved = read_template(template)
    assert saved.openness is not None and np.array_equal(saved.openness[1], driver_open[1])
    assert head.result.outputs["template"] == str(template)
    assert head.result.metrics["source_openness"] == {"eyes": pytest.approx([0.3, 0.25]), "lips": 0.1}
    assert head.result.metrics["lips_normalised"] is True
    smiling = replace(source, exp=source.exp + 0.05)  # one frame far from upstream's neutral expression
    cut = Driving(smiling, 25.0, 1, image=False)
    x, _ = keypoints(head, SimpleNamespace(nets=nets, motion=source, openness=None), cut, None)
    assert torch.allclose(x, x_source, atol=1e-6)  # a clip's only frame, against itself: no motion


@pytest.mark.parametrize(
    ("options", "saves", "measured"),
    [({}, False, False), ({}, True, True), ({"eye_retargeting": True}, False, True)],
)
def test_the_driver_is_measured_with_the_landmark_model_only_when_its_openness_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict, saves: bool, measured: bool
) -> None:
    """The driver's openness costs a landmark pass a frame: it is measured to retarget to the driver or to keep in
    a saved template (as upstream's templates keep it), and not otherwise; the plan carries the driving's frame
    rate, count and sound and the source's frame size."""
    import engine.portrait.liveportrait_plan as plan
    from engine.core.results import RunResult
    from engine.portrait.driving import Driving

    source = _source(4)
    asked = []

    def driving_motion(config: PortraitConfig, settings: object, nets: object, detector: object, landmarks: object,
                       *rest: object, measure_openness: bool) -> Driving:  # fmt: skip
        asked.append((landmarks, measure_openness))
        return Driving(_still_clip(source), 30.0, 2, has_audio=True, openness=(np.full((2, 2), 0.3), np.full(2, 0.1)))

    monkeypatch.setattr(plan, "driving_motion", driving_motion)
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01), "lip": _mlp(65, 0.02)})
    landmark_model = object()
    stand_in = SimpleNamespace(nets=nets, motion=source, openness=(np.array([0.3, 0.3]), 0.01),
                               landmark_model=landmark_model, size=(160, 120), device=torch.device("cpu"),
                               metrics={})  # fmt: skip
    head = SimpleNamespace(config=PortraitConfig(FACE, FACE, stitching=False, **options), result=RunResult(),
                           settings=None, detector=None)  # fmt: skip
    made = plan.liveportrait_plan(head, stand_in, tmp_path / "t.npz" if saves else None, lambda f, s: None)
    assert asked == [(landmark_model, measured)]  # the model is there for the crop box; the openness only if used
    assert (made.fps, made.count, made.has_audio, made.size) == (30.0, 2, True, (160, 120))
    if saves:  # the template replays at the driver's own rate, not a default one
        from engine.portrait.templates import read_template

        assert read_template(tmp_path / "t.npz").fps == 30.0


def test_lip_normalisation_closes_the_source_mouth_to_zero_openness(tmp_path: Path) -> None:
    """The lip network is asked to go from the source's openness to closed (0), not the other way: with a network
    whose delta grows with the target, closing adds its bias alone."""
    source = _source(5)
    nets = SimpleNamespace(retargeting={"lip": _mlp(65, 0.02, per_target=1.0)})
    config = PortraitConfig(FACE, FACE, stitching=False, normalize_lips=True)
    x, x_source = _driving_keypoints(config, source, _still_clip(source), nets, (np.array([0.3, 0.3]), 0.25))
    assert torch.allclose(x, x_source.expand(2, 21, 3) + 0.02, atol=1e-6)


def test_retargeting_to_the_driver_starts_from_the_turned_source(tmp_path: Path) -> None:
    """With relative motion, retargeting to the driver replaces the motion by the source's keypoints plus the
    deltas: the source as the head-rotation offsets turned it, not as it was."""
    source = _source(6)
    turned = replace(source, yaw=source.yaw + 20.0)
    nets = SimpleNamespace(retargeting={"eye": _mlp(66, 0.01)})
    config = PortraitConfig(FACE, FACE, stitching=False, eye_retargeting=True, yaw=20.0)
    driver = (np.full((2, 2), 0.3, np.float32), np.full(2, 0.1, np.float32))
    x, _ = _driving_keypoints(config, source, _still_clip(source), nets, (np.array([0.3, 0.3]), 0.1),
                              driving_openness=driver)  # fmt: skip
    assert torch.allclose(x, transform_keypoints(turned).expand(2, 21, 3) + 0.01, atol=1e-6)


def test_stitching_is_given_the_source_the_warp_starts_from_not_the_turned_one(tmp_path: Path) -> None:
    """Stitching keeps the animated face seamless with the source it is pasted back into, which the head-rotation
    offsets do not turn: as upstream, the network is given the source's own keypoints (those the warp starts from)
    beside the driven ones, here turned by --yaw."""
    from engine.portrait.motion import stitch

    source = _source(7)
    source.yaw = torch.tensor([5.0])
    stitching = nn.Linear(126, 65)  # its delta follows the source keypoints it is given, and only them
    nn.init.zeros_(stitching.weight)
    nn.init.zeros_(stitching.bias)
    with torch.no_grad():
        stitching.weight[:, :63] = 0.1
    nets = SimpleNamespace(retargeting={"stitching": stitching})
    config = PortraitConfig(FACE, FACE, yaw=20.0)  # stitching on: the default
    x, x_source = _driving_keypoints(config, source, _still_clip(source), nets)
    turned = transform_keypoints(replace(source, yaw=source.yaw + 20.0)).expand(2, 21, 3)
    assert not torch.allclose(stitch(stitching, turned[:1], turned), stitch(stitching, x_source, turned), atol=1e-4)
    assert torch.allclose(x, stitch(stitching, x_source, turned), atol=1e-6)


def test_the_landmark_model_runs_on_the_runs_gpu_and_says_when_it_cannot(tmp_path: Path, monkeypatch) -> None:
    """Upstream's landmark runner runs on the GPU; ours ran on the CPU whatever the run's device, while a cropped
    driving clip is read by it frame by frame. A CUDA session that fell back is a warning with ORT's reason."""
    import cv2
    import onnxruntime as ort

    from engine.core.results import RunResult
    from engine.portrait import landmarks as module
    from engine.portrait.networks import optional_landmark_model

    path = landmark_model(tmp_path / "landmark.onnx")
    asked: list[tuple[Path, str, int]] = []

    class CudaThatFellBack:
        reason = "libcudnn.so.9: cannot open shared object file"

        def __init__(self, model_path: Path, options) -> None:
            asked.append((Path(model_path), options.provider, options.device_id))
            self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
            self.fell_back, self.fallback_reason = True, self.reason

    monkeypatch.setattr(module, "OrtSession", CudaThatFellBack)
    config = PortraitConfig(FACE, FACE, landmarks=str(path))
    result = RunResult()
    model = optional_landmark_model(config, tmp_path, result, torch.device("cuda", 1))
    assert asked == [(path, "cuda", 1)]
    assert result.warnings == [f"landmark.onnx runs on the CPU, not cuda:1: {CudaThatFellBack.reason}"]
    rgb = cv2.imread(str(FACE))[:, :, ::-1].copy()
    assert model is not None and model(rgb, np.array([172.0, 60.0, 280.0, 190.0])).shape == (203, 2)
    on_cpu = optional_landmark_model(config, tmp_path, cpu_result := RunResult(), torch.device("cpu"))
    assert len(asked) == 1 and on_cpu is not None and on_cpu.fallback is None and not cpu_result.warnings
