"""DWPose's face landmarks through ONNX Runtime (engine/lipsync/musetalk/dwpose.py) with tiny ONNX models made here
under the release's input and output names and shapes: the real dw-ll_ucoco_384.onnx and yolox_l.onnx are not used.

- a "profile" pose model puts each SimCC bin's value at the mean brightness of the input column (x) or row (y) it
  stands for, so a bright blob in a frame comes back at the blob's place: that checks the box, the affine warp, the
  normalisation, the flip test and the decoding against an independent computation, for frames of any aspect;
- a "constant" pose model gives fixed concave SimCC vectors, so the flip test's mirroring of points is seen exactly;
- a constant YOLOX model gives one person row (and decoys), checking the person box.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.core.errors import InputError
from engine.core.media import load_image
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.lipsync.musetalk.avatar import DETECTOR, LANDMARKS, prepare_avatar
from engine.lipsync.musetalk.dwpose import (
    FACE_MIRROR,
    PERSON_BOX,
    POSE_FILE,
    WHOLE_FRAME,
    DWPose,
    center_scale,
    pose_input,
    to_frame,
    whole_frame_box,
)
from engine.lipsync.musetalk.geometry import bbox_shift_range, landmark_box
from engine.lipsync.musetalk.random_weights import write_random_weights
from engine.lipsync.musetalk.run import landmark_files
from engine.lipsync.musetalk.weights import load_networks, locate, require
from engine.models.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
FACE = ROOT / "assets" / "face.jpg"
FACE_BOX = (170, 60, 285, 200, 0.9)  # around the face in assets/face.jpg
MEAN = np.array([123.675, 116.28, 103.53])  # RGB
STD = np.array([58.395, 57.12, 57.375])
BIG = 1.0e6  # above every squared bin distance, so every SimCC peak is positive


# --------------------------------------------------------------------------- tiny ONNX models


def _save(nodes, inputs, outputs, initializers, path: Path) -> Path:
    from onnx import helper, save_model

    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _tensor(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _pose_io(batch: int | str, size: tuple[int, int] = (288, 384)):
    """The release's names: input (N, 3, 384, 288) -> simcc_x (N, 133, 576), simcc_y (N, 133, 768)."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size[1], size[0]])
    simcc_x = helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, 133, 576])
    simcc_y = helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, 133, 768])
    return image, simcc_x, simcc_y


def profile_model(path: Path, batch: int | str = "batch") -> Path:
    """simcc_x[n, k, 2c] = 10 + the mean of column c of the input's first channel (red, in the RGB the network
    takes; always positive), odd bins 0; simcc_y likewise for rows. A bright red blob's column peaks on an even bin,
    so it decodes to a whole input pixel."""
    from onnx import helper

    to_x = np.zeros((288, 576), np.float32)
    to_x[np.arange(288), 2 * np.arange(288)] = 1
    to_y = np.zeros((384, 768), np.float32)
    to_y[np.arange(384), 2 * np.arange(384)] = 1
    nodes = [
        helper.make_node("Gather", ["input", "red"], ["first"], axis=1),
        helper.make_node("ReduceMean", ["first"], ["columns"], axes=[1, 2], keepdims=0),
        helper.make_node("ReduceMean", ["first"], ["rows"], axes=[1, 3], keepdims=0),
        helper.make_node("Add", ["columns", "ten"], ["columns_up"]),
        helper.make_node("Add", ["rows", "ten"], ["rows_up"]),
        helper.make_node("MatMul", ["columns_up", "to_x"], ["x_up"]),
        helper.make_node("MatMul", ["rows_up", "to_y"], ["y_up"]),
        helper.make_node("Unsqueeze", ["x_up", "axis1"], ["x_one"]),
        helper.make_node("Unsqueeze", ["y_up", "axis1"], ["y_one"]),
        helper.make_node("Mul", ["x_one", "ones"], ["simcc_x"]),
        helper.make_node("Mul", ["y_one", "ones"], ["simcc_y"]),
    ]
    constants = [
        _tensor("to_x", to_x),
        _tensor("to_y", to_y),
        _tensor("ten", np.array(10, np.float32)),
        _tensor("red", np.array([0], np.int64)),
        _tensor("axis1", np.array([1], np.int64)),
        _tensor("ones", np.ones((133, 1), np.float32)),
    ]
    return _save(nodes, [_pose_io(batch)[0]], list(_pose_io(batch)[1:]), constants, path)


def constant_outputs(x_centres: np.ndarray, y_centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concave SimCC vectors BIG - (bin - centre)^2: whole numbers, exact in float32, averaged exactly."""
    x = BIG - (np.arange(576)[None] - x_centres[:, None]) ** 2
    y = BIG - (np.arange(768)[None] - y_centres[:, None]) ** 2
    return x.astype(np.float32), y.astype(np.float32)


def constant_model(
    path: Path,
    x_centres: np.ndarray,
    y_centres: np.ndarray,
    batch: int | str = "batch",
    size: tuple[int, int] = (288, 384),
) -> Path:
    """The same SimCC vectors for any image (the input only sets the batch)."""
    from onnx import helper

    x, y = constant_outputs(x_centres, y_centres)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Squeeze", ["mean", "axis3"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "x"], ["simcc_x"]),
        helper.make_node("Add", ["nothing", "y"], ["simcc_y"]),
    ]
    constants = [
        _tensor("axis3", np.array([3], np.int64)),
        _tensor("zero", np.array(0, np.float32)),
        _tensor("x", x[None]),
        _tensor("y", y[None]),
    ]
    return _save(nodes, [_pose_io(batch, size)[0]], list(_pose_io(batch)[1:]), constants, path)


def yolox_model(path: Path, rows: np.ndarray) -> Path:
    """yolox_l.onnx's shapes, images (1, 3, 640, 640) -> output (1, 8400, 85), giving `rows` for any image."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Squeeze", ["mean", "axis3"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "rows"], ["output"]),
    ]
    constants = [
        _tensor("axis3", np.array([3], np.int64)),
        _tensor("zero", np.array(0, np.float32)),
        _tensor("rows", rows[None].astype(np.float32)),
    ]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])
    return _save(nodes, [image], [output], constants, path)


# --------------------------------------------------------------------------- independent references


def reference_geometry(box: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """The box's centre and frame pixels per input pixel, from the definitions (1.25 x the box, made 3:4)."""
    x1, y1, x2, y2 = box
    width, height = 1.25 * (x2 - x1), 1.25 * (y2 - y1)
    return (x1 + x2) / 2, (y1 + y2) / 2, max(width, height * 0.75) / 288


def reference_point(frame: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Where the profile model puts every point, computed without dwpose.py: the warp written out as a scale and a
    shift, the RGB normalisation, column and row means, their argmax, and back to the frame."""
    cx, cy, per_pixel = reference_geometry(box)
    s = 1 / per_pixel
    matrix = np.array([[s, 0, 144 - s * cx], [0, s, 192 - s * cy]])
    warped = cv2.warpAffine(frame, matrix, (288, 384), flags=cv2.INTER_LINEAR).astype(np.float64)
    red = (warped[:, :, 2] - MEAN[0]) / STD[0]
    column, row = int(np.argmax(red.mean(axis=0))), int(np.argmax(red.mean(axis=1)))
    return (column - 144) * per_pixel + cx, (row - 192) * per_pixel + cy


def blob_frame(width: int, height: int, x: float, y: float, sigma: float) -> np.ndarray:
    """A BGR frame: a red blob at (x, y) and a brighter blue decoy at the mirrored place (seen if red and blue were
    mixed up)."""
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3))
    frame[:, :, 2] = 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    frame[:, :, 0] = 255 * np.exp(-((xx - width + x) ** 2 + (yy - height + y) ** 2) / (2 * sigma**2))
    return frame.round().astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dwpose")
    return {"profile": profile_model(root / "profile.onnx"), "profile3": profile_model(root / "profile3.onnx", 3)}


# --------------------------------------------------------------------------- geometry and decoding


@pytest.mark.parametrize(
    ("width", "height", "blob"),
    [(640, 360, (500.0, 100.0)), (300, 500, (70.0, 420.0)), (240, 320, (180.0, 160.0)), (512, 512, (300.0, 210.0))],
)
@pytest.mark.parametrize("flip_test", [True, False])
def test_a_blob_comes_back_where_it_is_for_frames_of_any_aspect(models, width, height, blob, flip_test) -> None:
    frame = blob_frame(width, height, *blob, sigma=0.04 * max(width, height))
    points = DWPose(models["profile"], flip_test=flip_test).landmarks([frame])[0]
    assert points.shape == (68, 2)
    expected = reference_point(frame, (0, 0, width, height))
    np.testing.assert_allclose(points, np.tile(expected, (68, 1)), atol=1e-4)
    per_pixel = reference_geometry((0, 0, width, height))[2]
    assert abs(expected[0] - blob[0]) <= per_pixel and abs(expected[1] - blob[1]) <= per_pixel  # one input pixel


def test_the_input_is_rgb_normalised_with_black_outside_the_frame() -> None:
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[:] = (10, 20, 30)  # BGR
    image = pose_input(frame, *center_scale(whole_frame_box(frame.shape)))
    assert image.shape == (3, 384, 288) and image.dtype == np.float32
    np.testing.assert_allclose(image[:, 192, 144], (np.array([30, 20, 10]) - MEAN) / STD, rtol=1e-6)
    np.testing.assert_allclose(image[:, 0, 0], -MEAN / STD, rtol=1e-6)  # the 1.25 padding: black


def test_a_fixed_batch_gives_the_same_points(models) -> None:
    frames = [blob_frame(320, 240, 40.0 + 90 * i, 60.0 + 40 * i, 12) for i in range(3)]
    dynamic = DWPose(models["profile"], batch_size=2).landmarks(frames)
    fixed = DWPose(models["profile3"], batch_size=2).landmarks(frames)
    for a, b, frame in zip(dynamic, fixed, frames, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a[0], reference_point(frame, (0, 0, 320, 240)), atol=1e-4)


def test_the_face_mirror_is_coco_wholebodys_swap_table() -> None:
    assert all(FACE_MIRROR[FACE_MIRROR[i]] == i for i in range(68))  # an involution
    assert {i for i in range(68) if FACE_MIRROR[i] == i} == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}  # the midline
    pairs = {(0, 16), (7, 9), (17, 26), (21, 22), (31, 35), (36, 45), (39, 42), (40, 47), (41, 46), (48, 54),
             (55, 59), (60, 64), (65, 67)}  # fmt: skip
    assert all(FACE_MIRROR[a] == b for a, b in pairs)


def test_the_flip_test_averages_each_point_with_its_mirror_image(tmp_path) -> None:
    """Concave vectors centred on p (x) and q (y): the average of a point's own and its mirror image's peaks at the
    midpoint of p and the mirrored 575 - p' (ties to the lower bin), and of q and q'."""
    rng = np.random.default_rng(1)
    p, q = rng.integers(150, 420, 133).astype(np.float64), rng.integers(150, 620, 133).astype(np.float64)
    frame = np.zeros((200, 260, 3), np.uint8)
    model = DWPose(constant_model(tmp_path / "constant.onnx", p, q))
    points = model.landmarks([frame])[0]
    own, mirror = 23 + np.arange(68), 23 + np.array(FACE_MIRROR)
    x_bins = np.floor((p[own] + 575 - p[mirror]) / 2)
    y_bins = np.floor((q[own] + q[mirror]) / 2)
    cx, cy, per_pixel = reference_geometry((0, 0, 260, 200))
    expected = np.stack([(x_bins / 2 - 144) * per_pixel + cx, (y_bins / 2 - 192) * per_pixel + cy], axis=1)
    np.testing.assert_allclose(points, expected, atol=1e-4)
    plain = DWPose(tmp_path / "constant.onnx", flip_test=False).landmarks([frame])[0]
    np.testing.assert_allclose(plain[:, 0], (p[own] / 2 - 144) * per_pixel + cx, atol=1e-4)
    assert not np.allclose(plain, points)  # the mirror images are seen


def test_a_point_without_a_positive_peak_goes_to_bin_minus_one(tmp_path) -> None:
    """mmpose's rule: such a point sits half an input pixel left of and above the input; upstream's landmark box
    then starts left of the frame and the detector's box is used."""
    p, q = np.full(133, 300.0), np.full(133, 300.0)
    path = constant_model(tmp_path / "negative.onnx", p, q)
    from onnx import load, numpy_helper, save

    graph = load(str(path))
    for tensor in graph.graph.initializer:
        if tensor.name == "x":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) - 2 * BIG, "x"))
    save(graph, str(path))
    points, scores = DWPose(path, flip_test=False).face_keypoints([np.zeros((100, 100, 3), np.uint8)])
    assert (scores <= 0).all()
    cx, cy, per_pixel = reference_geometry((0, 0, 100, 100))
    np.testing.assert_allclose(points[0], np.tile([(-0.5 - 144) * per_pixel + cx, (-0.5 - 192) * per_pixel + cy],
                                                  (68, 1)), atol=1e-4)  # fmt: skip
    assert landmark_box(points[0]) is None


# --------------------------------------------------------------------------- the person detector


def _yolox_rows() -> np.ndarray:
    rows = np.zeros((8400, 85), np.float32)
    person = 6400 + 5 * 40 + 10  # stride 16, cell (10, 5)
    rows[person, :6] = [0.5, 0.25, math.log(6), math.log(10), 0.9, 0.8]  # score 0.72
    rows[100, :4], rows[100, 4], rows[100, 6] = [0, 0, 1, 1], 0.99, 0.99  # a confident non-person
    rows[200, :6] = [0, 0, 1, 1, 0.5, 0.5]  # a person scoring 0.25: below 0.3
    return rows


def test_the_person_box_is_yoloxs_best_person(models, tmp_path) -> None:
    detector = yolox_model(tmp_path / "yolox_l.onnx", _yolox_rows())
    frame = blob_frame(800, 400, 200.0, 110.0, 10)
    model = DWPose(models["profile"], detector, person_boxes=True)
    assert model.box == PERSON_BOX
    # The row's cell and stride: centre (10.5, 5.25) x 16, size exp(log 6, log 10) x 16; 640 / 800 = 0.8 per pixel.
    box = np.array([168 - 48, 84 - 80, 168 + 48, 84 + 80]) / 0.8
    np.testing.assert_allclose(model.boxes([frame])[0], box, rtol=1e-6, atol=2e-5)  # float32's exp, as DWPose's
    points = model.landmarks([frame])[0]
    np.testing.assert_allclose(points[0], reference_point(frame, tuple(box)), atol=1e-4)
    assert DWPose(models["profile"], detector).box == WHOLE_FRAME  # off unless asked for


def test_no_person_keeps_the_whole_frame(models, tmp_path) -> None:
    rows = _yolox_rows()
    rows[:, 5] = 0.1  # every person score 0.09 or less
    model = DWPose(models["profile"], yolox_model(tmp_path / "yolox_l.onnx", rows), person_boxes=True)
    frame = np.zeros((90, 160, 3), np.uint8)
    np.testing.assert_array_equal(model.boxes([frame])[0], [0, 0, 160, 90])
    with pytest.raises(InputError, match=r"yolox_l\.onnx"):
        DWPose(models["profile"], None, person_boxes=True)


# --------------------------------------------------------------------------- wrong files


def test_wrong_files_are_clear_errors(models, tmp_path) -> None:
    corrupt = tmp_path / POSE_FILE
    corrupt.write_bytes(b"\x08\x07" + bytes(range(256)) * 40)
    with pytest.raises(CheckpointError, match=r"dw-ll_ucoco_384\.onnx: ONNX Runtime cannot load it .*corrupt") as e:
        DWPose(corrupt)
    assert str(tmp_path) not in str(e.value)  # the file's name, never its server path
    page = tmp_path / "page.onnx"
    page.write_text("<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(CheckpointError, match="web page"):
        DWPose(page)
    graph = constant_model(tmp_path / "other.onnx", np.zeros(133), np.zeros(133), batch=1, size=(192, 256))
    with pytest.raises(CheckpointError, match=r"its input has shape \[1, 3, 256, 192\], not Nx3x384x288"):
        DWPose(graph)
    with pytest.raises(InputError, match="uint8 BGR"):
        DWPose(models["profile"]).landmarks([np.zeros((10, 10), np.uint8)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall-back report where there is no GPU")
def test_asking_for_cuda_without_a_gpu_says_where_it_runs(models) -> None:
    model = DWPose(models["profile"], device="cuda")
    assert model.provider == "CPUExecutionProvider"
    assert model.warnings and "CUDAExecutionProvider but runs on CPUExecutionProvider" in model.warnings[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_cuda_provider_gives_the_cpus_points(models) -> None:
    frame = blob_frame(640, 360, 500.0, 100.0, 25)
    model = DWPose(models["profile"], device="cuda:0")
    assert model.provider == "CUDAExecutionProvider" and not model.warnings
    np.testing.assert_allclose(model.landmarks([frame])[0], DWPose(models["profile"]).landmarks([frame])[0])


# --------------------------------------------------------------------------- MuseTalk's use of them


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("musetalk") / "models"
    write_random_weights(root)
    return root


def _face_model(path: Path) -> Path:
    """Constant landmarks spread over the face of assets/face.jpg (512x512: bins 210..314 wide, 208..334 high), the
    nose bridge above the chin, so they make a usable box."""
    i = np.arange(133)
    p = 210.0 + (i * 53) % 105
    q = 208.0 + (i * 37) % 127
    q[23 + 29], q[23 + 8] = 250.0, 334.0
    return constant_model(path, p, q, batch=1)


class StubDetector:
    name = "stub"

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [np.array([FACE_BOX], np.float32) for _ in frames]


def test_prepare_avatar_takes_its_boxes_from_dwpose(weights, tmp_path) -> None:
    face = load_image(FACE)
    files = require(Settings(data_dir=tmp_path, weights_dir=tmp_path / "w"), weights)
    networks = load_networks(files, "cpu", torch.float32)
    model = DWPose(_face_model(tmp_path / POSE_FILE))
    points = model.landmarks([face])[0]
    result = RunResult()
    avatar = prepare_avatar([face, face], networks, detector=StubDetector(), landmarks=model, result=result)
    box = landmark_box(points)
    assert box is not None and avatar.box_sources == (LANDMARKS, LANDMARKS) and avatar.landmarks == "dwpose"
    assert avatar.boxes[0] == (box[0], box[1], box[2], min(box[3] + 10, 512))  # v1.5's margin below
    assert "landmarks" in {stage.name for stage in result.stages}
    assert not any("landmark" in w for w in avatar.warnings)
    without = prepare_avatar([face], networks, detector=StubDetector())
    assert without.box_sources == (DETECTOR,) and without.landmarks is None
    assert any("no face-landmark model: the face boxes come from the stub detector" in w for w in without.warnings)


def _linked(weights: Path, folder: Path) -> Path:
    """A weights folder of its own: links to the random MuseTalk files, and a dwpose/ to fill."""
    folder.mkdir()
    for sub in weights.iterdir():
        (folder / sub.name).symlink_to(sub, target_is_directory=True)
    (folder / "dwpose").mkdir()
    return folder


def test_the_files_are_found_beside_musetalks_and_missing_ones_are_said(weights, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "w")
    result = RunResult()
    files = locate(settings, weights)
    assert files.complete and "dwpose" not in files.optional
    assert landmark_files(files, False, result) is None
    assert any(POSE_FILE in w and "dwpose/" in w for w in result.warnings)
    folder = _linked(weights, tmp_path / "models")
    pose = _face_model(folder / "dwpose" / POSE_FILE)
    files = locate(settings, folder)
    assert files.complete and files.optional == {"dwpose": pose}
    assert landmark_files(files, False, RunResult()) == (pose, None)
    result = RunResult()
    assert landmark_files(files, True, result) == (pose, None)  # person boxes asked for, no detector: said
    assert any("no yolox_l.onnx" in w for w in result.warnings)
    detector = yolox_model(folder / "dwpose" / "yolox_l.onnx", _yolox_rows())
    assert landmark_files(locate(settings, folder), True, RunResult()) == (pose, detector)
    # without --musetalk-person-box DWPose sees the whole frame, as upstream, even with the detector beside it
    assert landmark_files(locate(settings, folder), False, RunResult()) == (pose, None)


def test_lipsync_uses_dwpose_when_its_file_is_there(weights, tmp_path) -> None:
    import av

    from engine.core.settings import load_settings
    from engine.lipsync.config import LipSyncConfig
    from engine.lipsync.pipeline import run_lipsync

    speech = tmp_path / "speech.wav"
    wave = (0.3 * np.sin(2 * np.pi * 180 * np.arange(4800) / 16000) * 32767).astype(np.int16)
    with av.open(str(speech), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    folder = _linked(weights, tmp_path / "models")
    _face_model(folder / "dwpose" / POSE_FILE)
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    config = LipSyncConfig(face=FACE, audio=speech, engine="musetalk", musetalk_weights=str(folder))
    result = run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu")
    assert result.metrics["landmarks"] == "dwpose" and result.metrics["boxes_from_landmarks"] == 1
    points = DWPose(folder / "dwpose" / POSE_FILE).landmarks([load_image(FACE)])[0]
    assert result.metrics["bbox_shift_range"] == list(bbox_shift_range([points]))  # what upstream prints
    assert result.metrics["bbox_shift"] == 0
    assert result.metrics["detector"] == "haar" and "landmarks" in {stage.name for stage in result.stages}
    assert not any("landmark" in w for w in result.warnings)


def test_a_nan_peak_decodes_as_mmpose_decodes_it() -> None:
    """mmpose's get_simcc_maximum keeps the x peak as the score unless the y peak is lower: a NaN y peak leaves the x
    peak (and its -1 rule), where the minimum of the two gave NaN and skipped the rule."""
    from engine.lipsync.musetalk.dwpose import simcc_decode

    x = np.array([[[0.0, -3.0, -1.0], [0.0, 2.0, 1.0]]], np.float32)  # peaks -0.0 at bin 0, 2 at bin 1
    y = np.array([[[np.nan, 0.0], [0.0, 5.0]]], np.float32)
    points, scores = simcc_decode(x, y)
    np.testing.assert_array_equal(scores, [[0.0, 2.0]])
    np.testing.assert_array_equal(points, [[[-0.5, -0.5], [0.5, 0.5]]])  # the first point at bin -1


def test_a_face_the_network_gave_no_numbers_for_has_no_landmarks(models, monkeypatch) -> None:
    model = DWPose(models["profile"])
    frames = [np.zeros((64, 48, 3), np.uint8)] * 2
    points, scores = model.face_keypoints(frames)
    scores[1, 7] = np.nan
    monkeypatch.setattr(model, "face_keypoints", lambda frames: (points, scores))
    found = model.landmarks(frames)
    assert found[0] is not None and found[1] is None  # the detector's box is used for that frame


def _dwpose_wrapper_box(rows: np.ndarray, ratio: float) -> np.ndarray:
    """DWPose's ONNX wrapper (onnxdet.py demo_postprocess and inference_detector) on YOLOX rows, array by array in
    its dtypes: the offsets and sizes come back into the float32 rows, the corners are float32, divided in place."""
    out = rows.copy()
    grids, strides = [], []
    for stride in (8, 16, 32):
        xv, yv = np.meshgrid(np.arange(640 // stride), np.arange(640 // stride))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out[:, :2] = (out[:, :2] + grid) * stride
    with np.errstate(over="ignore"):
        out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    boxes = np.ones_like(out[:, :4])
    boxes[:, 0] = out[:, 0] - out[:, 2] / 2.0
    boxes[:, 1] = out[:, 1] - out[:, 3] / 2.0
    boxes[:, 2] = out[:, 0] + out[:, 2] / 2.0
    boxes[:, 3] = out[:, 1] + out[:, 3] / 2.0
    boxes /= ratio
    return boxes


def test_the_person_box_is_computed_in_float32_as_dwposes_wrapper_does() -> None:
    from engine.lipsync.musetalk.dwpose import best_person

    rng = np.random.default_rng(5)
    for _ in range(200):
        rows = rng.uniform(-3, 3, (8400, 85)).astype(np.float32)
        rows[:, 4:] = rng.uniform(0, 1, (8400, 81))
        ratio = 640 / int(rng.integers(641, 4000))  # a Python float, as both compute it
        best = int(np.argmax(rows[:, 4] * rows[:, 5]))
        np.testing.assert_array_equal(best_person(rows, ratio, (640, 640)), _dwpose_wrapper_box(rows, ratio)[best])


def test_a_sliver_of_a_frame_still_goes_to_the_detector() -> None:
    from engine.lipsync.musetalk.dwpose import detector_input

    image, ratio = detector_input(np.zeros((2, 1500, 3), np.uint8))  # 640 / 1500 of 2 rows: 0 rows before
    assert image.shape == (3, 640, 640) and ratio == 640 / 1500


def test_points_go_back_to_the_frame_in_float64() -> None:
    """Guards to_frame's precision: mmpose promotes the input-pixel points to float64 before scaling them back,
    so a float32 computation lands up to a few thousandths of a pixel away on a large frame."""
    points = np.array([[100.5, 200.25], [3.5, 700.0], [287.5, 0.5]], np.float32)
    center, scale = np.array([960.3, 540.7], np.float32), np.array([2400.1, 3200.1333], np.float32)
    frame_points = to_frame(points, center, scale)
    assert frame_points.dtype == np.float64
    scale64 = scale.astype(np.float64)
    expected = points.astype(np.float64) / [288.0, 384.0] * scale64 + center.astype(np.float64) - 0.5 * scale64
    assert np.array_equal(frame_points, expected)


def test_a_person_must_score_above_0_3() -> None:
    """Guards the bar DWPose's ONNX wrapper keeps: a best person scoring 0.28 is no person (the whole frame is
    used), one scoring 0.32 gives the box."""
    from engine.lipsync.musetalk.dwpose import best_person

    rows = np.zeros((8400, 85), np.float32)
    rows[:, 4], rows[:, 5] = 0.7, 0.4  # objectness x person score 0.28
    assert best_person(rows, 1.0, (640, 640)) is None
    rows[7, 5] = 0.46  # 0.322
    assert best_person(rows, 1.0, (640, 640)) is not None


def test_a_person_scoring_float32s_0_3_passes_the_bar_as_in_dwposes_wrapper() -> None:
    """Guards the bar's comparison: the wrapper's multiclass_nms stacks the float32 scores beside float64 class
    indices, so `final_scores > 0.3` compares in float64 and float32(0.3) = 0.3000000119 passes; compared in
    float32 (NumPy 2's rule for a float32 scalar and a Python float) it would equal the bar and fail."""
    from engine.lipsync.musetalk.dwpose import best_person

    rows = np.zeros((8400, 85), np.float32)
    rows[11, 4], rows[11, 5] = 1.0, np.float32(0.3)
    wrapper_score = np.concatenate([rows[11:12, 4:5] * rows[11:12, 5:6], np.zeros((1, 1))], 1)[0, 0]
    assert wrapper_score > 0.3  # the wrapper keeps this person
    assert best_person(rows, 1.0, (640, 640)) is not None


def test_the_detector_sees_the_frame_top_left_on_grey() -> None:
    """Guards YOLOX's letterbox for a file whose input is not square: the ratio fits the frame's height to the
    input's height and its width to the input's width, and the rest is grey 114."""
    from engine.lipsync.musetalk.dwpose import detector_input

    image, ratio = detector_input(np.full((100, 300, 3), 7, np.uint8), (320, 640))
    assert ratio == 640 / 300 and image.shape == (3, 320, 640)
    assert (image[:, :213] == 7).all() and (image[:, 213:] == 114).all()  # int(100 x 640 / 300) = 213 rows
