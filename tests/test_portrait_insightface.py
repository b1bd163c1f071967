"""InsightFace's detector and 106-point model as upstream LivePortrait's cropper runs them (stand-in ONNX models in
the official files' layouts, with known outputs), and the source crop and first landmark reading made from their
106 points."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from tiny_onnx import landmark_model, points_106_model, scrfd_detector, scrfd_outputs

from engine.core.results import RunResult
from engine.portrait.config import PortraitConfig
from engine.portrait.crop import CROP_SIZE, landmark_crop_transform, roll_from_landmarks
from engine.portrait.insightface import (
    BUFFALO_L,
    InsightFace,
    InsightFaceError,
    buffalo_folder,
    decode_detections,
    detector_input,
    input_normalisation,
    largest_first,
    points_from_output,
    points_transform,
    suppress,
)
from engine.portrait.landmarks import LandmarkModel
from engine.portrait.liveportrait_plan import _crop_basis, _source_crop
from engine.portrait.networks import optional_landmark_model

FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"


def layout_106(tilt_deg: float = 0.0) -> np.ndarray:
    """106 points in the 192 input's pixels: the eyes (33, 35, 40, 39 and 87, 89, 94, 93) and mouth corners (52, 61)
    of an upright face, turned `tilt_deg` clockwise about the input's centre; the rest at the centre."""
    pts = np.full((106, 2), 96.0, np.float32)
    pts[[33, 35, 40, 39]] = [(60, 80), (70, 76), (80, 80), (70, 84)]
    pts[[87, 89, 94, 93]] = [(112, 80), (122, 76), (132, 80), (122, 84)]
    pts[52], pts[61] = (76, 130), (116, 130)
    c, s = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
    return ((pts - 96) @ np.array([[c, s], [-s, c]], np.float32) + 96).astype(np.float32)


def test_the_106_point_layout_gives_the_tilt_and_crop_upstream_measures() -> None:
    """parse_pt2_from_pt106: each eye the mean of its four points, the lips the mouth corners' midpoint."""
    assert roll_from_landmarks(layout_106(9.0)) == pytest.approx(9.0, abs=1e-4)
    shuffled = layout_106(9.0)
    shuffled[[36, 90]] = (0, 0)  # points outside the eyes' and lips' sets move the square, never the tilt
    assert roll_from_landmarks(shuffled) == pytest.approx(9.0, abs=1e-4)
    assert landmark_crop_transform(layout_106(9.0), 2.3, -0.125, size=512).angle == pytest.approx(9.0, abs=1e-4)
    with pytest.raises(Exception, match="203 x 2 points or InsightFace's 106 x 2"):
        roll_from_landmarks(np.zeros((68, 2), np.float32))


def test_the_detector_sees_the_image_fitted_top_left_on_black_in_rgb_around_127_5() -> None:
    """RetinaFace.detect: a 200x100 image grows to 512x256 in a 512x512 canvas; blobFromImage swaps BGR to RGB and
    takes (x - 127.5) / 128."""
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    blob, scale = detector_input(image)
    assert blob.shape == (1, 3, 512, 512) and blob.dtype == np.float32 and scale == 2.56
    assert blob[0, 2, 0, 0] == pytest.approx(127.5 / 128) and blob[0, 0, 0, 0] == pytest.approx(-127.5 / 128)
    assert np.all(blob[0, :, 256:, :] == np.float32(-127.5 / 128))  # below the image: the black canvas
    tall, tall_scale = detector_input(np.zeros((300, 100, 3), np.uint8))
    assert tall_scale == pytest.approx(512 / 300) and tall.shape == (1, 3, 512, 512)


def _face_at(outputs: dict[str, np.ndarray], stride: int, x: int, y: int, anchor: int, score: float,
             distances: tuple[float, float, float, float], size: int = 512) -> int:  # fmt: skip
    row = (y * (size // stride) + x) * 2 + anchor
    outputs[f"score_{stride}"][row] = score
    outputs[f"bbox_{stride}"][row] = distances
    outputs[f"kps_{stride}"][row] = np.arange(10) / 10
    return row


def _ordered(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [outputs[f"{kind}_{s}"] for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]


def test_detections_decode_as_distances_from_each_anchors_place_times_the_stride() -> None:
    outputs = scrfd_outputs()
    _face_at(outputs, 16, x=10, y=8, anchor=1, score=0.8, distances=(2, 3, 2, 3))
    _face_at(outputs, 8, x=3, y=5, anchor=0, score=0.1, distances=(1, 1, 1, 1))  # at LivePortrait's threshold: kept
    _face_at(outputs, 32, x=1, y=1, anchor=0, score=0.0999, distances=(1, 1, 1, 1))  # below it: dropped
    scores, boxes, points = decode_detections(_ordered(outputs), 512, 512)
    assert scores.tolist() == pytest.approx([0.1, 0.8])  # stride by stride
    assert boxes.tolist() == [[16, 32, 32, 48], [128, 80, 192, 176]]
    assert points is not None and points.shape == (2, 5, 2)
    assert np.allclose(points[1], np.arange(10).reshape(5, 2) / 10 * 16 + (160, 128))
    batched = [output[None] for output in _ordered(outputs)]  # a model exported with a batch dimension
    assert decode_detections(batched, 512, 512)[1].tolist() == boxes.tolist()
    with pytest.raises(InsightFaceError, match=r"stride-8 outputs hold 8192 scores .* a 256x256 input has 2048"):
        decode_detections(_ordered(outputs), 256, 256)


def test_suppression_keeps_the_best_of_boxes_overlapping_beyond_0_4_counting_areas_plus_one_pixel() -> None:
    """Boxes 4 pixels apart overlap by 0.429 with InsightFace's +1 (0.385 without it): the lower score goes; 5 apart
    (0.333) both stay; the kept rows come best score first."""
    detections = np.array(
        [[0, 0, 9, 9, 0.5], [0, 4, 9, 13, 0.9], [50, 50, 60, 60, 0.7], [0, 9, 9, 18, 0.3]], np.float32
    )
    assert suppress(detections) == [1, 2, 3]
    assert suppress(detections[[0, 3]]) == [0, 1]
    exactly = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 3, 0.5]], np.float32)  # 40 of 100 pixels: 0.4, kept
    assert suppress(exactly) == [0, 1]


def test_faces_are_taken_largest_first_ties_in_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 20, 5], [0, 0, 30, 30], [5, 5, 15, 15]], np.float32)
    assert largest_first(boxes) == [2, 0, 1, 3]


def test_the_106_point_input_is_1_5x_the_boxs_larger_side_and_its_output_maps_back() -> None:
    box = np.array([10, 20, 50, 100, 0.9], np.float32)
    to_input = points_transform(box, 192)
    assert np.allclose(to_input, [[1.6, 0, 96 - 48], [0, 1.6, 0]])
    centre = points_from_output(np.zeros(212, np.float32), to_input, 192)
    assert centre.dtype == np.float32 and centre.shape == (106, 2) and np.allclose(centre, (30, 60))
    longer = np.concatenate([np.full(8, 5.0, np.float32), np.full(212, -1.0, np.float32)])  # the last 106 are read
    assert np.allclose(points_from_output(longer, to_input, 192), (30 - 96 / 1.6, 60 - 96 / 1.6))
    with pytest.raises(InsightFaceError, match="holds 10 values, not 106 x 2"):
        points_from_output(np.zeros(10, np.float32), to_input, 192)


def test_the_106_point_inputs_normalisation_is_found_from_the_graphs_first_nodes(tmp_path: Path) -> None:
    """As InsightFace's Landmark: an MXNet export that subtracts and multiplies in its first 8 nodes (or starts with
    bn_data) takes raw pixels; others (x - 127.5) / 128."""
    values = np.zeros(212, np.float32)
    assert input_normalisation(points_106_model(tmp_path / "a.onnx", values)) == (127.5, 128.0)
    assert input_normalisation(points_106_model(tmp_path / "b.onnx", values, ("_minus0", "_mul0"))) == (0.0, 1.0)
    assert input_normalisation(points_106_model(tmp_path / "c.onnx", values, ("Sub_1",))) == (127.5, 128.0)
    assert input_normalisation(points_106_model(tmp_path / "d.onnx", values, ("bn_data",))) == (0.0, 1.0)


def _buffalo(folder: Path, tilt_deg: float = 0.0, faces: bool = True) -> Path:
    """InsightFace's two files in `folder`: a detector with a 50x75 face at (100, 62.5) and a smaller one scoring
    higher (the larger is upstream's), and a 106-point model whose points are `layout_106(tilt_deg)`."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs = scrfd_outputs()
    if faces:  # a 400x300 image is 1.28x in the 512 input
        _face_at(outputs, 16, x=10, y=8, anchor=1, score=0.8, distances=(2, 3, 2, 3))
        _face_at(outputs, 8, x=40, y=30, anchor=0, score=0.95, distances=(1, 1, 1, 1))
    scrfd_detector(folder / "det_10g.onnx", outputs)
    points_106_model(folder / "2d106det.onnx", layout_106(tilt_deg) / 96 - 1)
    return folder


def test_the_largest_faces_106_points_come_back_in_image_pixels(tmp_path: Path) -> None:
    model = InsightFace(_buffalo(tmp_path / BUFFALO_L, tilt_deg=9.0))
    rgb = np.full((300, 400, 3), 90, np.uint8)
    detections, points = model.detect(np.ascontiguousarray(rgb[..., ::-1]))
    assert detections[:, 4].tolist() == pytest.approx([0.95, 0.8])  # best score first
    assert detections[1, :4].tolist() == pytest.approx([100, 62.5, 150, 137.5])
    assert points is not None and points.shape == (2, 5, 2)
    face = model.largest_face(rgb)
    scale = 192 / (75 * 1.5)
    assert face is not None and np.allclose(face, (layout_106(9.0) - 96) / scale + (125, 100), atol=1e-3)
    assert roll_from_landmarks(face) == pytest.approx(9.0, abs=1e-3)
    assert InsightFace(_buffalo(tmp_path / "none", faces=False)).largest_face(rgb) is None


def test_files_that_are_not_insightfaces_are_refused_with_what_is_expected(tmp_path: Path) -> None:
    folder = _buffalo(tmp_path / "bad")
    outputs = scrfd_outputs()
    del outputs["kps_32"]
    scrfd_detector(folder / "det_10g.onnx", outputs)
    with pytest.raises(InsightFaceError, match="has 1 inputs and 8 outputs, where an SCRFD has one input and 6, 9"):
        InsightFace(folder)
    (folder / "det_10g.onnx").write_text("<html>not found</html>")
    with pytest.raises(InsightFaceError, match=r"det_10g\.onnx is not a usable ONNX model: this is a web page"):
        InsightFace(folder)


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (np.zeros(3309, np.float32), r"gives \[\[1, 3309\]\]"),  # InsightFace's 3D 68-point model (1k3d68)
        (np.zeros(136, np.float32), r"gives \[\[1, 136\]\]"),  # 68 points in 2D
    ],
)
def test_a_points_model_of_another_size_is_refused_before_it_gives_points(
    tmp_path: Path, values: np.ndarray, said: str
) -> None:
    """Upstream's Landmark takes its point count from the output's size and its cropper wants 106 of them; a model
    giving more values than 212 read as their last 212 would be points that are no face's."""
    folder = _buffalo(tmp_path / "other")
    points_106_model(folder / "2d106det.onnx", values)
    with pytest.raises(InsightFaceError, match=r"2d106det\.onnx is not InsightFace's 106-point model: .*" + said):
        InsightFace(folder)


def test_the_wrong_files_in_insightfaces_place_are_said_to_be_what_they_are(tmp_path: Path) -> None:
    """A Git LFS pointer or an empty download is named as such, not as ORT's protobuf error; the detector put where
    the 106-point model goes is refused at loading, not as a reshape error when a face is found."""
    folder = _buffalo(tmp_path / "pointer")
    (folder / "2d106det.onnx").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 5030888\n")
    with pytest.raises(InsightFaceError, match=r"2d106det\.onnx is not a usable ONNX model: this is a Git LFS pointer"):
        InsightFace(folder)
    (folder / "2d106det.onnx").write_bytes(b"")
    with pytest.raises(InsightFaceError, match=r"2d106det\.onnx is not a usable ONNX model: the file is empty"):
        InsightFace(folder)
    (folder / "2d106det.onnx").write_bytes((folder / "det_10g.onnx").read_bytes())
    with pytest.raises(InsightFaceError, match=r"2d106det\.onnx is not InsightFace's 106-point model"):
        InsightFace(folder)
    with pytest.raises(InsightFaceError, match="holds 213 values, not 106 x 2"):
        points_from_output(np.zeros(213, np.float32), np.eye(2, 3), 192)


def test_a_face_first_found_is_read_in_upstreams_crop_around_its_106_points(tmp_path: Path) -> None:
    """Upstream's landmark runner starts from InsightFace's 106 points (run(img, lmk106)); without InsightFace, or
    where it finds no face, ours reads the face in our detector's box."""
    rgb = np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8)
    box = np.array([90.0, 50.0, 160.0, 150.0])
    path = landmark_model(tmp_path / "landmark.onnx", tilt_deg=5.0)
    insight = InsightFace(_buffalo(tmp_path / "buffalo", tilt_deg=9.0))
    with_faces = LandmarkModel(path, insightface=insight)
    points, face = with_faces.first_reading(rgb, box)
    assert face is not None and np.array_equal(face, insight.largest_face(rgb))
    assert np.array_equal(points, with_faces.following(rgb, face))
    assert np.array_equal(with_faces(rgb, box), points)
    plain = LandmarkModel(path)
    assert not np.allclose(points, plain(rgb, box), atol=1)
    no_face = LandmarkModel(path, insightface=InsightFace(_buffalo(tmp_path / "none", faces=False)))
    assert no_face.first_reading(rgb, box)[1] is None
    assert np.array_equal(no_face(rgb, box), plain(rgb, box))


def test_the_source_crop_is_upstreams_crop_from_the_106_points_when_they_are_there() -> None:
    face = (layout_106(9.0) - 96) / 1.7 + (125, 100)
    config = PortraitConfig(str(FACE), str(FACE), vy_ratio=-0.1, scale=2.0, vx_ratio=0.05, upright=False)
    box = np.array([100.0, 62.5, 150.0, 137.5])
    made = _source_crop(config, box, None, face)
    expected = landmark_crop_transform(face, 2.0, -0.1, size=CROP_SIZE, vx=0.05, rotate=False)
    assert made is not None and np.array_equal(made.to_crop, expected.to_crop)
    assert _crop_basis(None, face) == "insightface 106 points"
    from_box = _source_crop(config, box, None, None)
    assert from_box is not None and not np.allclose(from_box.to_crop, made.to_crop)
    assert _crop_basis(None, None) == "face box"
    assert _source_crop(PortraitConfig(str(FACE), str(FACE), crop=False), box, None, face) is None


def test_insightface_is_found_where_the_official_weights_folder_keeps_it(tmp_path: Path) -> None:
    """pretrained_weights/insightface/models/buffalo_l/ beside pretrained_weights/liveportrait/ (or inside it)."""
    weights = tmp_path / "pretrained_weights" / "liveportrait"
    weights.mkdir(parents=True)
    landmark_model(weights / "landmark.onnx")
    assert buffalo_folder(weights) is None
    result = RunResult()
    config = PortraitConfig(str(FACE), str(FACE))
    model = optional_landmark_model(config, weights, result, torch.device("cpu"))
    assert model is not None and model.insightface is None
    _buffalo(tmp_path / "pretrained_weights" / BUFFALO_L)
    assert buffalo_folder(weights) == tmp_path / "pretrained_weights" / BUFFALO_L
    (tmp_path / "pretrained_weights" / BUFFALO_L / "2d106det.onnx").unlink()  # half of it: not used
    assert buffalo_folder(weights) is None
    _buffalo(weights / BUFFALO_L)
    assert buffalo_folder(weights) == weights / BUFFALO_L
    model = optional_landmark_model(config, weights, result, torch.device("cpu"))
    assert model is not None and model.insightface is not None and not result.warnings
    assert onnx.load(str(weights / BUFFALO_L / "det_10g.onnx")).graph.input[0].name == "input.1"


def test_the_detector_input_truncates_the_fitted_side_to_whole_pixels() -> None:
    """RetinaFace.detect's int(): a 100x300 image fits 512 high and 170.67 wide, so 170 columns of it, the rest the
    black canvas (171 where rounded); so too a 300x100 one's rows."""
    white = np.float32(127.5 / 128)
    black = np.float32(-127.5 / 128)
    tall, _ = detector_input(np.full((300, 100, 3), 255, np.uint8))
    assert np.all(tall[0, :, :, 169] == white) and np.all(tall[0, :, :, 170] == black)
    wide, _ = detector_input(np.full((100, 300, 3), 255, np.uint8))
    assert np.all(wide[0, :, 169, :] == white) and np.all(wide[0, :, 170, :] == black)


def test_the_normalisation_rule_reads_bn_data_in_the_first_3_nodes_and_sub_mul_in_the_first_8(tmp_path: Path) -> None:
    values = np.zeros(212, np.float32)
    third = points_106_model(tmp_path / "third.onnx", values, ("a", "b", "bn_data"))
    assert input_normalisation(third) == (0.0, 1.0)
    fourth = points_106_model(tmp_path / "fourth.onnx", values, ("a", "b", "c", "bn_data"))
    assert input_normalisation(fourth) == (127.5, 128.0)
    late = points_106_model(tmp_path / "late.onnx", values, ("a", "b", "c", "d", "e", "f", "g", "Sub_1", "Mul_1"))
    assert input_normalisation(late) == (127.5, 128.0)  # the 8th node subtracts, the 9th is past the rule
    first_8 = points_106_model(tmp_path / "first_8.onnx", values, ("a", "b", "c", "d", "e", "f", "Sub_1", "Mul_1"))
    assert input_normalisation(first_8) == (0.0, 1.0)


class _Recorded:
    """An ORT session that keeps each input it was fed, as the network saw it."""

    def __init__(self, session: object) -> None:
        self.session, self.fed = session, []

    def get_inputs(self) -> list:
        return self.session.get_inputs()

    def get_outputs(self) -> list:
        return self.session.get_outputs()

    def run(self, names: list | None, feeds: dict[str, np.ndarray]) -> list:
        self.fed.append(next(iter(feeds.values())))
        return self.session.run(names, feeds)


def test_both_models_see_the_rgb_image_as_upstreams_see_its_bgr_copy(tmp_path: Path) -> None:
    """The cropper hands InsightFace BGR (its blobs swap it back to RGB); the 106-point model sees a bilinear 192
    crop of the largest face, (x - 127.5) / 128."""
    import cv2

    model = InsightFace(_buffalo(tmp_path / BUFFALO_L))
    model.detector, model.points_model = _Recorded(model.detector), _Recorded(model.points_model)
    rgb = np.random.default_rng(2).integers(0, 255, (300, 400, 3), np.uint8)
    model.largest_face(rgb)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    assert np.array_equal(model.detector.fed[0], detector_input(bgr)[0])
    largest = model.detect(bgr)[0][1]  # the 50x75 face, scoring lower
    crop = cv2.warpAffine(bgr, points_transform(largest, 192), (192, 192), borderValue=0.0)
    expected = (crop[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) - 127.5) / 128
    assert np.allclose(model.points_model.fed[0], expected, atol=1e-6)


def test_key_points_come_with_their_own_box_best_score_first(tmp_path: Path) -> None:
    """RetinaFace.detect orders the boxes and their key points by score before suppression; the face decoded first
    here scores lower."""
    outputs = scrfd_outputs()
    _face_at(outputs, 8, x=40, y=30, anchor=0, score=0.5, distances=(1, 1, 1, 1))
    _face_at(outputs, 16, x=10, y=8, anchor=1, score=0.8, distances=(2, 3, 2, 3))
    folder = _buffalo(tmp_path / "order", faces=False)
    scrfd_detector(folder / "det_10g.onnx", outputs)
    detections, points = InsightFace(folder).detect(np.zeros((300, 400, 3), np.uint8))
    assert detections[:, 4].tolist() == pytest.approx([0.8, 0.5])
    offsets = np.arange(10).reshape(5, 2) / 10
    assert points is not None
    assert np.allclose(points[0], (offsets * 16 + (160, 128)) / 1.28)
    assert np.allclose(points[1], (offsets * 8 + (320, 240)) / 1.28)


def test_models_with_fixed_input_sizes_are_run_at_their_own_sizes(tmp_path: Path) -> None:
    """RetinaFace keeps a detector's own input size (width, height) over det_size 512; the 106-point model's crop is
    its input's side."""
    folder = _buffalo(tmp_path / "fixed", faces=False)
    outputs = scrfd_outputs(320, height=256)
    _face_at(outputs, 16, x=5, y=4, anchor=1, score=0.8, distances=(2, 3, 2, 3), size=320)
    scrfd_detector(folder / "det_10g.onnx", outputs, fixed=(320, 256))
    points_106_model(folder / "2d106det.onnx", layout_106() / 96 - 1, size=160)
    model = InsightFace(folder)
    assert model.detect_size == (320, 256) and model.points_size == 160
    rgb = np.zeros((300, 400, 3), np.uint8)  # fitted into 320x240 of the 320x256 input: 0.8x
    detections, _ = model.detect(rgb)
    assert len(detections) == 1 and detections[0, :4].tolist() == pytest.approx(
        [60, 20, 140, 140]
    )  # (48, 16, 112, 112) / 0.8
    face = model.largest_face(rgb)
    assert face is not None and np.allclose(face, (layout_106() - 96) * 180 / 192 + (100, 80), atol=1e-3)


def test_insightfaces_models_run_on_the_runs_gpu_and_say_when_they_cannot(tmp_path: Path, monkeypatch) -> None:
    """As upstream's cropper runs them (CUDAExecutionProvider on its device); a CUDA session that fell back is a
    warning naming the file, with ORT's reason."""
    import onnxruntime as ort

    from engine.portrait import landmarks as module

    weights = tmp_path / "liveportrait"
    weights.mkdir()
    landmark_model(weights / "landmark.onnx")
    _buffalo(tmp_path / BUFFALO_L)
    asked: list[tuple[str, str, int]] = []

    class CudaThatFellBack:
        reason = "libcudnn.so.9: cannot open shared object file"

        def __init__(self, model_path: Path, options) -> None:
            asked.append((Path(model_path).name, options.provider, options.device_id))
            self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
            self.fell_back, self.fallback_reason = True, self.reason

    monkeypatch.setattr(module, "OrtSession", CudaThatFellBack)
    result = RunResult()
    config = PortraitConfig(str(FACE), str(FACE))
    model = optional_landmark_model(config, weights, result, torch.device("cuda", 1))
    names = ["det_10g.onnx", "2d106det.onnx", "landmark.onnx"]
    assert sorted(asked) == sorted((name, "cuda", 1) for name in names)
    assert sorted(result.warnings) == sorted(
        f"{name} runs on the CPU, not cuda:1: {CudaThatFellBack.reason}" for name in names
    )
    assert model is not None and model.insightface is not None
    assert model.insightface.largest_face(np.zeros((300, 400, 3), np.uint8)) is not None


def test_a_driving_clips_first_face_is_followed_from_insightfaces_106_points(tmp_path: Path) -> None:
    """crop_driving_video: the first face frame's 203 points read from InsightFace's 106 (run(img, lmk106)), each
    later frame's from the frame before's; split jobs follow through the same track (`followed_landmarks`)."""
    from engine.portrait.driving import LandmarkTrack

    rgb = np.random.default_rng(3).integers(0, 255, (300, 400, 3), np.uint8)
    insight = InsightFace(_buffalo(tmp_path / "buffalo", tilt_deg=9.0))
    model = LandmarkModel(landmark_model(tmp_path / "landmark.onnx", tilt_deg=5.0), insightface=insight)
    track = LandmarkTrack(model, RunResult())
    track.add(rgb, np.array([90.0, 50.0, 160.0, 150.0]), 0)
    track.add(rgb, None, 1)
    face = insight.largest_face(rgb)
    assert face is not None and np.array_equal(track.points[0], model.following(rgb, face))
    assert np.array_equal(track.points[1], model.following(rgb, track.points[0]))


def test_detectors_of_the_other_scrfd_layouts_decode_as_retinafaces_reads_them() -> None:
    """6 outputs: strides 8, 16, 32, two anchors a place, no key points; 15: strides 8 to 128, one anchor a place,
    with key points (10 without them). A 256x256 input here."""
    places = {stride: (256 // stride) ** 2 for stride in (8, 16, 32, 64, 128)}
    two = [np.zeros((places[s] * 2, 1), np.float32) for s in (8, 16, 32)]
    two += [np.zeros((places[s] * 2, 4), np.float32) for s in (8, 16, 32)]
    two[1][(16 + 1) * 2 + 1] = 0.9  # stride 16: the place at x 1, y 1 (16 a row), its second anchor
    two[4][(16 + 1) * 2 + 1] = (1, 1, 1, 1)
    scores, boxes, points = decode_detections(two, 256, 256)
    assert scores.tolist() == pytest.approx([0.9]) and boxes.tolist() == [[0, 0, 32, 32]] and points is None
    one = [np.zeros((places[s], 1), np.float32) for s in places]
    one += [np.zeros((places[s], 4), np.float32) for s in places]
    one += [np.zeros((places[s], 10), np.float32) for s in places]
    one[4][3] = 0.5  # stride 128: the place at x 1, y 1 (2 a row), one anchor
    one[5 + 4][3] = (0, 0, 1, 1)
    one[10 + 4][3] = np.arange(10) / 10
    scores, boxes, points = decode_detections(one, 256, 256)
    assert boxes.tolist() == [[128, 128, 256, 256]] and points is not None
    assert np.allclose(points[0], np.arange(10).reshape(5, 2) / 10 * 128 + 128)
    scores, boxes, points = decode_detections(one[:10], 256, 256)
    assert boxes.tolist() == [[128, 128, 256, 256]] and points is None


def test_a_driving_image_is_read_from_insightfaces_106_points(tmp_path: Path) -> None:
    """Upstream crops a driving image as a clip of one frame (crop_driving_video): its 203 points read from
    InsightFace's 106 points of the image, the same pixels ours reads (RGB)."""
    import cv2

    from engine.core.settings import Settings
    from engine.portrait.driving import driving_motion
    from engine.portrait.frames import to_rgb

    insight = InsightFace(_buffalo(tmp_path / "buffalo", tilt_deg=9.0))
    seen: list[np.ndarray] = []
    found = insight.largest_face
    insight.largest_face = lambda rgb: seen.append(rgb) or found(rgb)  # type: ignore[method-assign]
    model = LandmarkModel(landmark_model(tmp_path / "landmark.onnx", tilt_deg=5.0), insightface=insight)
    detector = SimpleNamespace(detect=lambda images: [np.array([[90, 50, 160, 150, 0.9]], np.float32)])
    nets = SimpleNamespace(motion=lambda pixels: pixels.mean(), device=torch.device("cpu"))
    config = PortraitConfig(str(FACE), str(FACE), batch_size=1)
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path)
    driving = driving_motion(config, settings, nets, detector, model, RunResult(), lambda *_: None)
    assert driving.image and driving.openness is not None
    assert len(seen) == 1 and np.array_equal(seen[0], to_rgb(cv2.imread(str(FACE))))


@pytest.mark.parametrize("value", [0.0, np.nan])
def test_106_points_that_make_no_face_crop_are_said_to_come_from_the_points_model(tmp_path: Path, value: float) -> None:
    """All 106 points at one place (or not numbers) make no crop: said of 2d106det.onnx when they are read, not as
    the landmark crop's error about points with no name."""
    folder = _buffalo(tmp_path / "flat")
    points_106_model(folder / "2d106det.onnx", np.full(212, value, np.float32))
    with pytest.raises(InsightFaceError, match=r"106-point model 2d106det\.onnx put every point .* at one place"):
        InsightFace(folder).largest_face(np.full((300, 400, 3), 90, np.uint8))
