"""The portrait pipeline on the CPU with random weights in the official layout: video and template drivers,
retargeting to the driver, the weights folder as downloaded, the PyTorch and ONNX Runtime backends agreeing, and
every refusal a message (a clip too long for its header included)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from engine.core.errors import InputError
from engine.core.media import LosslessWriter, probe_video, read_frames
from engine.core.settings import Settings
from engine.core.weights import WeightsError
from engine.models.liveportrait import write_random_weights
from engine.portrait.config import PortraitConfig, PortraitError
from engine.portrait.pipeline import run_portrait
from engine.portrait.templates import read_template, save_template

ASSETS = Path(__file__).resolve().parent.parent / "assets"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("lp"))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def driving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example face sliding right, 6 frames at 25 fps."""
    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))
    frames = [cv2.warpAffine(face, np.float32([[1, 0, 4 * i], [0, 1, 0]]), (320, 320)) for i in range(6)]
    return _video(tmp_path_factory.mktemp("drive") / "drive.mp4", frames)


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings under which no LivePortrait weights are found anywhere (an empty Hub cache, offline)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")


def test_video_driver_writes_the_animated_portrait_and_its_motion(weights: Path, driving: Path, tmp_path: Path) -> None:
    out, template = tmp_path / "out.mp4", tmp_path / "out.npz"
    config = PortraitConfig(ASSETS / "face.jpg", driving, weights=str(weights), max_frames=2, save_template=True)
    result = run_portrait(config, out)
    assert result.outputs["template"] == str(template)
    info = probe_video(out)
    assert (info.width, info.height) == (512, 512) and info.frames == 2  # pasted back into the 512x512 source
    assert result.metrics["frames"] == 2 and result.metrics["backend"] == "torch"
    stages = [s.name for s in result.stages]
    expected = "decode source, load, source features, detect, decode driving, crop, motion, warp, decode network, paste"
    assert {*expected.split(", "), "encode"} <= set(stages)
    kept = read_template(template)
    assert kept.fps == 25.0 and kept.motion.kp.shape == (2, 21, 3)
    with np.load(template) as saved:
        assert "eyes" not in saved  # no landmark model: no openness to keep
    assert result.metrics["cache"] == {"networks": False, "source": False} and result.metrics["crop_angle"] == 0
    assert result.metrics["landmarks"].startswith("none")  # no landmark.onnx: axis-aligned, no lip normalisation
    # the saved motion drives a second run, which reuses the loaded networks and the source's features
    asked = PortraitConfig(ASSETS / "face.jpg", template, weights=str(weights), normalize_lips=True)
    again = run_portrait(asked, tmp_path / "again.mp4")
    assert again.metrics["cache"] == {"networks": True, "source": True} and again.metrics["frames"] == 2
    assert any("--normalize-lips needs LivePortrait's landmark model" in w for w in again.warnings)  # not silent
    assert not any("normalize" in w for w in result.warnings)
    assert "source features" not in [s.name for s in again.stages]
    # and as upstream LivePortrait's pickled template (its rotation matrices) the same motion again
    from test_portrait_templates import upstream_pickle

    pickled = upstream_pickle(tmp_path / "upstream.pkl", kept.motion)
    third = run_portrait(PortraitConfig(ASSETS / "face.jpg", pickled, weights=str(weights)), tmp_path / "pkl.mp4")
    assert third.metrics["frames"] == 2 and probe_video(tmp_path / "pkl.mp4").fps == pytest.approx(25.0)
    names = ("out.mp4", "again.mp4", "pkl.mp4")
    frames = [list(read_frames(tmp_path / name))[-1].astype(np.float32) for name in names]
    assert np.abs(frames[0] - frames[1]).mean() < 1.0  # the same motion gives the same frame
    assert np.abs(frames[1] - frames[2]).mean() < 1.0


def test_the_weights_folder_as_downloaded_and_its_liveportrait_subfolder(
    weights: Path, driving: Path, tmp_path: Path
) -> None:
    """`--weights pretrained_weights` (the Hub's layout, liveportrait/ inside) and `--weights
    pretrained_weights/liveportrait` both run LivePortrait; a named folder without weights is an error."""
    from engine.cli import main

    root = tmp_path / "pretrained_weights"
    root.mkdir()
    (root / "liveportrait").symlink_to(weights, target_is_directory=True)
    for i, given in enumerate((root, root / "liveportrait")):
        report = tmp_path / f"run{i}.json"
        files = ["--source", str(ASSETS / "face.jpg"), "--driving", str(driving), "--out", str(tmp_path / f"{i}.mp4")]
        assert main(["portrait", *files, "--weights", str(given), "--max-frames", "1", "--json", str(report)]) == 0
        assert '"engine": "liveportrait"' in report.read_text()
    with pytest.raises(WeightsError, match="no LivePortrait weights in"):  # engine auto: still no fallback
        run_portrait(PortraitConfig(ASSETS / "face.jpg", driving, weights=str(tmp_path)), tmp_path / "none.mp4")


def test_fp16_on_the_cpu_is_refused_before_the_networks_run(weights: Path, driving: Path, tmp_path: Path) -> None:
    """As lip-sync refuses it: emulated fp16 ran LivePortrait many times slower than fp32, with no word."""
    from engine.core.device import DeviceError

    config = PortraitConfig(ASSETS / "face.jpg", driving, weights=str(weights), precision="fp16", max_frames=1)
    with pytest.raises(DeviceError, match=r"fp16 is not supported on .* \(cpu\); supported: fp32"):
        run_portrait(config, tmp_path / "half.mp4", device="cpu")


@pytest.mark.parametrize("backend", ["onnx-cuda", "onnx-trt"])
def test_a_gpu_backend_on_a_cpu_job_is_refused_before_the_export(
    weights: Path, driving: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """It exported the networks (20 s), then ONNX Runtime ran them on its CPU provider, and the run ended well."""
    from engine.core.errors import SetupError
    from engine.portrait import onnx_backend

    monkeypatch.setattr(onnx_backend, "cached_export", lambda *a, **k: pytest.fail("exported before the refusal"))
    config = PortraitConfig(ASSETS / "face.jpg", driving, weights=str(weights), backend=backend, max_frames=1)
    with pytest.raises(SetupError, match=rf"the {backend} backend runs LivePortrait on a CUDA GPU, and this job runs "
                       r"on the CPU \(.*\); use --backend onnx-cpu or torch"):  # fmt: skip
        run_portrait(config, tmp_path / "o.mp4", device="cpu")
    assert not (tmp_path / "o.mp4").exists()


def test_retargeting_to_each_driving_frame(weights: Path, driving: Path, tmp_path: Path) -> None:
    """The landmark model measures every driving frame; the template keeps those measurements, so it can drive
    retargeting later; a template without them cannot. The driving crop is made from the followed landmarks."""
    from tiny_onnx import landmark_model

    model = str(landmark_model(tmp_path / "landmark.onnx"))
    out = tmp_path / "eyes.mp4"
    config = PortraitConfig(ASSETS / "face.jpg", driving, weights=str(weights), landmarks=model, eye_retargeting=True,
                            max_frames=2, batch_size=2, save_template=True, crop_driving=True)  # fmt: skip
    result = run_portrait(config, out)
    assert result.metrics["frames"] == 2 and result.metrics["lips_normalised"] is False  # upstream: not with it
    assert result.metrics["driving_crop"] == "followed landmarks"
    assert "driving landmarks" in [s.name for s in result.stages]
    with np.load(out.with_suffix(".npz")) as saved:  # the stand-in's eyes (0.25, 0.2) and lips (0.2), each frame
        assert saved["eyes"] == pytest.approx(np.array([[0.25, 0.2]] * 2), abs=1e-3)
        assert saved["lips"] == pytest.approx([0.2, 0.2], abs=1e-3)
    again = PortraitConfig(ASSETS / "face.jpg", out.with_suffix(".npz"), weights=str(weights), landmarks=model,
                           lip_retargeting=True)  # fmt: skip
    assert run_portrait(again, tmp_path / "lips.mp4").metrics["frames"] == 2
    saved = read_template(out.with_suffix(".npz"))
    save_template(tmp_path / "bare.npz", saved.motion, saved.fps)
    bare = PortraitConfig(ASSETS / "face.jpg", tmp_path / "bare.npz", weights=str(weights), landmarks=model,
                          eye_retargeting=True)  # fmt: skip
    with pytest.raises(PortraitError, match="has none"):
        run_portrait(bare, tmp_path / "bare.mp4")


def test_landmarks_turn_the_crop_upright_and_close_the_lips(weights: Path, tmp_path: Path) -> None:
    from tiny_onnx import landmark_model

    from engine.portrait.motion import KeypointInfo

    g = torch.Generator().manual_seed(4)
    frames = KeypointInfo(torch.zeros(2), torch.tensor([0.0, 5.0]), torch.zeros(2), torch.zeros(2, 3),
                          torch.zeros(2, 21, 3), torch.ones(2), torch.rand(2, 21, 3, generator=g) - 0.5)  # fmt: skip
    save_template(tmp_path / "turn.npz", frames, 25.0)  # a two-frame driver: relative motion, lips normalised
    model = landmark_model(tmp_path / "landmark.onnx", tilt_deg=12.0)
    config = PortraitConfig(ASSETS / "face.jpg", tmp_path / "turn.npz", weights=str(weights), landmarks=str(model),
                            max_frames=2, batch_size=2, normalize_lips=True)  # fmt: skip
    result = run_portrait(config, tmp_path / "out.mp4")
    m = result.metrics
    assert m["frames"] == 2 and m["crop_angle"] == pytest.approx(12.0, abs=0.01)  # the stand-in's eye line
    assert m["source_openness"]["lips"] == pytest.approx(0.2, abs=1e-3) and m["lips_normalised"] is True
    assert "landmarks" in [s.name for s in result.stages]
    assert probe_video(tmp_path / "out.mp4").frames == 2
    square = run_portrait(replace(config, upright=False, max_frames=1), tmp_path / "square.mp4").metrics
    assert square["crop_angle"] == 0 and square["lips_normalised"] is True  # upstream's flag_do_rot off


def test_onnx_backend_matches_pytorch(weights: Path, onnx_cache: Path) -> None:
    from engine.portrait.networks import Networks
    from engine.portrait.onnx_backend import OnnxNetworks, cached_export, onnx_networks

    torch_nets = Networks(weights, torch.device("cpu"), "fp32")
    onnx_nets = onnx_networks(weights, onnx_cache, "onnx-cpu")
    assert set(onnx_nets.providers) == {"appearance", "motion", "warping", "decoder"} and not onnx_nets.warnings
    image = torch.rand(1, 3, 256, 256)
    feature = torch_nets.appearance(image)
    assert torch.allclose(onnx_nets.appearance(image), feature, atol=1e-4)
    a, b = torch_nets.motion(image), onnx_nets.motion(image)
    assert torch.allclose(a.kp, b.kp, atol=1e-4) and torch.allclose(a.yaw, b.yaw, atol=1e-3)
    x_s = a.kp
    warped = torch_nets.warp(feature, x_s, x_s + 0.02)
    assert (onnx_nets.warp(feature, x_s, x_s + 0.02) - warped).abs().max() < 1e-3
    small = warped[:, :, :16, :16]  # the decoder is fully convolutional: a 16x16 feature map is a 128x128 image
    frame_torch, frame_onnx = torch_nets.decode(small), onnx_nets.decode(small)
    assert frame_onnx.shape == (1, 3, 128, 128)
    assert (frame_torch - frame_onnx).abs().max() < 1e-3
    # padded to a fixed batch (as for TensorRT): the same rows come back
    padded = OnnxNetworks(cached_export(weights, onnx_cache), "onnx-cpu", {}, batch=3)
    two = torch.rand(2, 3, 256, 256)
    assert torch.allclose(padded.motion(two).kp, onnx_nets.motion(two).kp, atol=1e-5)
    pair = small.expand(2, -1, -1, -1)
    assert padded.decode(pair).shape == (2, 3, 128, 128)
    assert torch.allclose(padded.decode(pair), onnx_nets.decode(pair), atol=1e-5)


def test_under_tensorrt_the_motion_extractor_runs_on_the_cuda_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT computes fp32 layers in TF32 (ONNX Runtime cannot clear its flag): the pose logits' network goes to
    the CUDA provider with TF32 off, the others to TensorRT, fp16 engines only for the half networks."""
    from types import SimpleNamespace

    import engine.portrait.onnx_backend as onnx_backend

    asked = {}

    def fake_session(path: Path, options) -> SimpleNamespace:
        asked[Path(path).stem] = options
        return SimpleNamespace(got=[], fell_back=False, torch_device=torch.device("cpu"))

    monkeypatch.setattr(onnx_backend, "OrtSession", fake_session)
    paths = {name: Path(f"{name}.onnx") for name in onnx_backend.FILES}
    onnx_backend.OnnxNetworks(paths, "onnx-trt", {}, precision="fp16")
    assert asked["motion"].provider == "cuda" and not asked["motion"].cuda_tf32 and not asked["motion"].trt_fp16
    assert all(asked[name].provider == "trt" and asked[name].trt_fp16 for name in onnx_backend.HALF_NETWORKS)


def _network_paths() -> dict[str, Path]:
    """A path per network whose stem is the network's name (what the recording sessions below key on)."""
    from engine.portrait.onnx_backend import FILES

    return {name: Path(f"{name}.onnx") for name in FILES}


@pytest.fixture
def recorded_sessions(monkeypatch: pytest.MonkeyPatch) -> dict:
    """OrtSession stand-ins for the ONNX backend: each records the options its network asked for and the shapes it
    was fed, answers zeros of the output shapes asked for, and falls back to the CPU where seen["fall_back"] names
    its network."""
    import engine.portrait.onnx_backend as onnx_backend

    seen: dict = {"options": {}, "fed": [], "fall_back": set()}

    class RecordingSession:
        def __init__(self, path: Path, options) -> None:
            self.name = Path(path).stem
            seen["options"][self.name] = options
            self.fell_back = self.name in seen["fall_back"]
            self.requested, self.ran_on = "CUDAExecutionProvider", "CPUExecutionProvider"
            self.got = [self.ran_on]
            self.fallback_reason = "libcudnn.so.9: cannot open shared object file"
            self.torch_device = torch.device("cpu") if self.fell_back else torch.device("cuda", options.device_id)

        def run_torch(self, feeds: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
            seen["fed"].append((self.name, {name: tuple(t.shape) for name, t in feeds.items()}))
            return [torch.zeros(shape) for shape in shapes.values()]

    monkeypatch.setattr(onnx_backend, "OrtSession", RecordingSession)
    return seen


def test_fp32_sessions_ask_for_the_jobs_card_with_tf32_and_fp16_engines_off(recorded_sessions: dict) -> None:
    """A job on cuda:2 ran its networks on card 0; fp32 is strict: no TF32 on the CUDA provider and no fp16
    engines from TensorRT, whichever backend."""
    from engine.portrait.onnx_backend import OnnxNetworks

    for backend, provider in (("onnx-cpu", "cpu"), ("onnx-cuda", "cuda"), ("onnx-trt", "trt")):
        OnnxNetworks(_network_paths(), backend, {}, device_id=2)
        asked = recorded_sessions["options"]
        motion = "cuda" if provider == "trt" else provider  # TensorRT's TF32 is not for the pose logits
        expected = {"appearance": provider, "motion": motion, "warping": provider, "decoder": provider}
        assert {name: options.provider for name, options in asked.items()} == expected, backend
        assert all(o.device_id == 2 and not o.cuda_tf32 and not o.trt_fp16 for o in asked.values()), backend


def test_a_network_that_fell_back_is_a_warning_that_names_it(recorded_sessions: dict) -> None:
    from engine.portrait.onnx_backend import OnnxNetworks

    on_the_gpu = OnnxNetworks(_network_paths(), "onnx-cuda", {}, device_id=1)
    assert on_the_gpu.warnings == [] and on_the_gpu.device == torch.device("cuda", 1)
    recorded_sessions["fall_back"].update({"warping", "decoder"})
    networks = OnnxNetworks(_network_paths(), "onnx-cuda", {}, device_id=1)
    assert networks.device == torch.device("cpu")  # the rendered frames are where the decoder ran
    assert networks.warnings == [
        f"WARNING: the {name} network asked for CUDAExecutionProvider but runs on CPUExecutionProvider "
        "(libcudnn.so.9: cannot open shared object file)"
        for name in ("warping", "decoder")
    ]


def test_a_fixed_batch_pads_every_call_and_cuts_the_rows_back(recorded_sessions: dict) -> None:
    """TensorRT builds one engine per batch size it meets: calls are padded up to the fixed batch, the callers get
    their own rows back, and a call with more rows runs as it is."""
    from engine.portrait.onnx_backend import OnnxNetworks

    networks = OnnxNetworks(_network_paths(), "onnx-trt", {}, batch=4)
    assert networks.appearance(torch.rand(2, 3, 256, 256)).shape == (2, 32, 16, 64, 64)
    motion = networks.motion(torch.rand(2, 3, 256, 256))
    assert motion.kp.shape == (2, 21, 3) and motion.yaw.shape == (2,)
    warped = networks.warp(torch.rand(1, 32, 16, 64, 64), torch.rand(1, 21, 3), torch.rand(3, 21, 3))
    assert warped.shape == (3, 256, 64, 64)
    assert networks.decode(torch.rand(3, 256, 16, 16)).shape == (3, 3, 128, 128)
    assert networks.decode(torch.rand(5, 256, 8, 12)).shape == (5, 3, 64, 96)  # any size, 8x each side
    assert recorded_sessions["fed"] == [
        ("appearance", {"image": (2, 3, 256, 256)}),  # once per source: never padded
        ("motion", {"image": (4, 3, 256, 256)}),
        ("warping", {"feature": (4, 32, 16, 64, 64), "kp_driving": (4, 21, 3), "kp_source": (4, 21, 3)}),
        ("decoder", {"feature": (4, 256, 16, 16)}),
        ("decoder", {"feature": (5, 256, 8, 12)}),
    ]


def test_each_backend_runs_the_graphs_of_its_precision(
    recorded_sessions: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fp16 on the CUDA provider runs our fp16 graphs; TensorRT builds its own fp16 engines from the fp32 graphs
    (given ours, it would build from graphs already rounded); a precision neither offers is refused before the
    export."""
    import engine.models.liveportrait as liveportrait
    from engine.portrait import onnx_backend

    exported: list[str] = []

    def cached_export(weights_dir: Path, cache_dir: Path, graphs: str) -> dict[str, Path]:
        exported.append(graphs)
        return _network_paths()

    monkeypatch.setattr(onnx_backend, "cached_export", cached_export)
    monkeypatch.setattr(liveportrait, "load_retargeting", lambda weights_dir: {"eye": "retargeting MLP"})
    with pytest.raises(InputError, match="the ONNX backends run fp32 or fp16, not bf16"):
        onnx_backend.onnx_networks(tmp_path, tmp_path, "onnx-cuda", precision="bf16")
    assert exported == []
    cuda = onnx_backend.onnx_networks(tmp_path, tmp_path, "onnx-cuda", device_id=1, precision="fp16", batch=8)
    assert exported == ["fp16"] and cuda.batch == 8 and cuda.retargeting == {"eye": "retargeting MLP"}
    assert recorded_sessions["options"]["decoder"].device_id == 1
    onnx_backend.onnx_networks(tmp_path, tmp_path, "onnx-trt", precision="fp16")
    assert exported == ["fp16", "fp32"] and recorded_sessions["options"]["decoder"].trt_fp16
    onnx_backend.onnx_networks(tmp_path, tmp_path, "onnx-cpu")
    assert exported == ["fp16", "fp32", "fp32"]


def test_the_export_cache_key_follows_the_weights_and_the_export_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced weights (in the folder or a sub-folder) or a changed export must not reuse an old export."""
    from engine.portrait import onnx_backend

    (tmp_path / "base_models").mkdir()
    weight = tmp_path / "base_models" / "warping_module.pth"
    weight.write_bytes(b"1234")
    key = onnx_backend.weights_digest(tmp_path)
    (tmp_path / "README.md").write_text("not a weight")
    assert onnx_backend.weights_digest(tmp_path) == key
    mtime = weight.stat().st_mtime_ns
    weight.write_bytes(b"12345")
    os.utime(weight, ns=(mtime, mtime))  # another size at the same time (a copy that kept its date)
    resized = onnx_backend.weights_digest(tmp_path)
    os.utime(weight, ns=(mtime, mtime + 1))  # the same size at another time
    touched = onnx_backend.weights_digest(tmp_path)
    renamed_weight = weight.rename(weight.with_name("spade_generator.pth"))  # same size and time, another network
    renamed = onnx_backend.weights_digest(tmp_path)
    renamed_weight.rename(weight)
    monkeypatch.setattr(onnx_backend, "EXPORT_VERSION", onnx_backend.EXPORT_VERSION + 1)
    bumped = onnx_backend.weights_digest(tmp_path)
    monkeypatch.setattr(onnx_backend, "OPSET", onnx_backend.OPSET + 1)  # another opset is another export
    assert len({key, resized, touched, renamed, bumped, onnx_backend.weights_digest(tmp_path)}) == 6


def test_the_export_cache_is_reused_only_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export stopped half-way is made again; the fp16 graphs are converted once, beside the fp32 motion
    extractor they share."""
    from engine.portrait import onnx_backend
    from engine.portrait.onnx_backend import FILES, HALF_NETWORKS, cached_export

    exports: list[Path] = []
    converted: list[str] = []

    def export_onnx(weights_dir: Path, folder: Path) -> dict[str, Path]:
        exports.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for file in FILES.values():
            (folder / file).write_text("fp32 graph")
        return {name: folder / file for name, file in FILES.items()}

    def to_fp16(source: Path, target: Path) -> None:
        converted.append(target.name)
        target.write_text("fp16 graph")

    monkeypatch.setattr(onnx_backend, "export_onnx", export_onnx)
    monkeypatch.setattr(onnx_backend, "to_fp16", to_fp16)
    cache = tmp_path / "cache"
    first = cached_export(tmp_path, cache)
    assert cached_export(tmp_path, cache) == first and len(exports) == 1
    first["warping"].unlink()
    assert cached_export(tmp_path, cache) == first and len(exports) == 2
    half = cached_export(tmp_path, cache, "fp16")
    assert half["motion"] == first["motion"] and half["decoder"] == first["decoder"].parent / "fp16" / FILES["decoder"]
    assert sorted(converted) == sorted(FILES[name] for name in HALF_NETWORKS)
    assert cached_export(tmp_path, cache, "fp16") == half and len(converted) == len(HALF_NETWORKS)


def test_two_workers_converting_one_graph_at_once_both_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers on several GPUs fill one export cache: a conversion that starts and ends while another is writing
    the same file leaves both whole (with one shared temporary name the first found its file renamed away)."""
    import onnx
    from onnx import TensorProto, helper

    from engine.portrait import onnx_backend

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    source, target = tmp_path / "relu.onnx", tmp_path / "fp16" / "relu.onnx"
    onnx.save(helper.make_model(graph), str(source))
    target.parent.mkdir()
    save, nested = onnx.save, []

    def save_then_let_another_worker_convert(model: onnx.ModelProto, path: str) -> None:
        save(model, path)
        if not nested:
            nested.append(path)
            onnx_backend.to_fp16(source, target)

    monkeypatch.setattr(onnx, "save", save_then_let_another_worker_convert)
    onnx_backend.to_fp16(source, target)
    onnx.checker.check_model(str(target))
    assert nested and [p.name for p in target.parent.iterdir()] == ["relu.onnx"]


def test_fp16_conversion_keeps_grid_sample_and_the_io_in_fp32_in_a_sorted_graph(tmp_path: Path) -> None:
    """The real networks' check is slow; a Conv into a GridSample shows the same in a second: the Conv's weights
    become fp16, GridSample reads fp32 (its fp16 kernel moves the warp), the inputs and outputs stay fp32 for the
    callers' float32 tensors, and the converter's late casts are sorted before their users."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from engine.portrait import onnx_backend

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GridSample", ["c", "grid"], ["y"], align_corners=0)],
        "conv-sample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 4, 4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    source, target = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(source))
    onnx_backend.to_fp16(source, target)
    onnx.checker.check_model(str(target))  # refuses a node listed before the one that makes its input
    half = onnx.load(str(target)).graph
    made_by = {out: n for n in half.node for out in n.output}
    (sampler,) = [n for n in half.node if n.op_type == "GridSample"]
    for name in sampler.input:
        cast = made_by.get(name)
        assert name == "grid" or (cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT), name
    assert {t.name: t.data_type for t in half.initializer}["w"] == TensorProto.FLOAT16
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*half.input, *half.output])
    feeds = {"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32),
             "grid": rng.uniform(-1, 1, (1, 4, 4, 2)).astype(np.float32)}  # fmt: skip
    (full,) = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feeds)
    (rounded,) = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert rounded.dtype == np.float32 and np.abs(rounded - full).max() < 2e-2


def test_options_that_changed_nothing_are_named_as_the_flags_given() -> None:
    """A boolean turned off is named by the flag that turned it off (--no-upright, not --upright), and the verb agrees
    with how many there are ("--scale change nothing here" read as a slip)."""
    from engine.portrait.config import changed_nothing

    names = ("scale", "vx_ratio", "vy_ratio", "upright")
    assert changed_nothing(PortraitConfig("s.jpg", "d.mp4"), names) is None
    assert (
        changed_nothing(PortraitConfig("s.jpg", "d.mp4", upright=False), names) == "--no-upright changes nothing here"
    )
    both = PortraitConfig("s.jpg", "d.mp4", scale=2.5, upright=False)
    assert changed_nothing(both, names) == "--scale, --no-upright change nothing here"


def test_an_export_precision_not_offered_is_refused_before_loading(tmp_path: Path) -> None:
    from engine.portrait.onnx_backend import export_onnx

    with pytest.raises(InputError, match="ONNX export precision 'int8' is not one of fp32, fp16"):
        export_onnx(tmp_path / "no-weights", tmp_path / "out", "int8")


def test_the_export_names_orders_and_converts_each_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the sessions rely on, without exporting real networks: the motion extractor's outputs in the order the
    backend reads them back, the warping module's as named, opset 20 (GridSample on 5-D volumes), a free batch axis
    and a decoder free in size, and fp16 conversion for the half networks of an fp16 export only."""
    from engine.portrait import onnx_backend

    class Returns(torch.nn.Module):
        """A network stand-in that answers a dict whose values say which key they came from."""

        def __init__(self, keys: list[str]) -> None:
            super().__init__()
            self.keys = keys

        def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: torch.full((1,), float(i)) for i, k in reversed(list(enumerate(self.keys)))}

    motion_keys = ["pitch", "yaw", "roll", "t", "exp", "scale", "kp"]
    warping_keys = ["occlusion_map", "deformation", "out"]
    nets = SimpleNamespace(appearance=torch.nn.Identity(), motion=Returns(motion_keys),
                           warping=Returns(warping_keys), decoder=torch.nn.Identity())  # fmt: skip
    exported: dict[str, dict[str, Any]] = {}
    converted: list[str] = []

    def export(module: torch.nn.Module, args: tuple, path: str, **options: Any) -> None:
        name = next(n for n, f in onnx_backend.FILES.items() if f in Path(path).name)  # a temporary sibling
        exported[name] = {"returns": module(*args), **options}
        Path(path).write_text("graph")

    monkeypatch.setattr(onnx_backend, "load_liveportrait", lambda weights_dir: nets)
    monkeypatch.setattr(torch.onnx, "export", export)
    monkeypatch.setattr(onnx_backend, "to_fp16", lambda source, target: converted.append(Path(target).stem))
    paths = onnx_backend.export_onnx(tmp_path, tmp_path / "fp32")
    assert converted == [] and {n: p.name for n, p in paths.items()} == onnx_backend.FILES
    assert all(p.read_text() == "graph" for p in paths.values())
    motion, warping, decoder = exported["motion"], exported["warping"], exported["decoder"]
    assert [float(v) for v in motion["returns"]] == list(range(7)) and motion["output_names"] == motion_keys
    assert [float(v) for v in warping["returns"]] == [0.0, 1.0, 2.0] and warping["output_names"] == warping_keys
    assert all(e["opset_version"] == 20 for e in exported.values())
    assert motion["dynamic_axes"] == {n: {0: "batch"} for n in ["image", *motion_keys]}
    assert decoder["dynamic_axes"] == {
        "feature": {0: "batch", 2: "height", 3: "width"},
        "image": {0: "batch", 2: "height8", 3: "width8"},
    }
    onnx_backend.export_onnx(tmp_path, tmp_path / "fp16", "fp16")
    assert converted == [Path(onnx_backend.FILES[n]).stem for n in ("appearance", "warping", "decoder")]


def test_fp16_export_keeps_grid_sample_and_the_motion_extractor_in_fp32(weights: Path, onnx_cache: Path) -> None:
    import onnx

    from engine.models.liveportrait import load_retargeting
    from engine.portrait.onnx_backend import OnnxNetworks, cached_export

    full, half = cached_export(weights, onnx_cache), cached_export(weights, onnx_cache, "fp16")
    assert half["motion"] == full["motion"] and half["decoder"] != full["decoder"]
    for name in ("appearance", "warping", "decoder"):
        onnx.checker.check_model(str(half[name]))  # the converter's casts came after their users: sorted again
    graph = onnx.load(str(half["warping"])).graph
    made_by = {out: node for node in graph.node for out in node.output}
    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    samplers = [n for n in graph.node if n.op_type == "GridSample"]
    assert len(samplers) == 2  # the dense-motion deformation and the final warp
    for node in samplers:
        for name in node.input:
            cast = made_by.get(name)
            to_float = cast is not None and cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
            assert to_float or name in float_inputs, name
    dtypes = {t.name: t.data_type for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) >= 10 and all(dtypes[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)  # fp16 convs
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in graph.input)  # io stays fp32
    fp32 = OnnxNetworks(full, "onnx-cpu", load_retargeting(weights))
    fp16 = OnnxNetworks(half, "onnx-cpu", load_retargeting(weights))
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    a, b = fp32.appearance(image), fp16.appearance(image)
    assert b.dtype == torch.float32 and (a - b).abs().max() < 1e-2
    small = torch.rand(1, 256, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    assert (fp32.decode(small) - fp16.decode(small)).abs().mean() < 2e-3  # under a grey level on average


def test_compiled_networks_pad_the_last_batch(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.portrait.networks as networks

    monkeypatch.setattr(networks, "COMPILE_BACKEND", "eager")  # the plumbing, without a C++ toolchain
    plain = networks.Networks(weights, torch.device("cpu"), "fp32")
    compiled = networks.Networks(weights, torch.device("cpu"), "fp32", compile=True, batch=3)
    feature = torch.rand(2, 256, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.1
    out = compiled.decode(feature)  # two rows padded to three, then cut back
    assert out.shape == (2, 3, 64, 64) and torch.allclose(out, plain.decode(feature), atol=1e-5)
    with pytest.raises(PortraitError, match="torch backend only"):
        PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", backend="onnx-cpu", compile=True).validate()


def test_a_source_face_our_detector_misses_is_looked_for_with_insightface_when_it_is_there(
    weights: Path, driving: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream finds the source's face with InsightFace's detector: where ours finds none, theirs looks too (its
    stand-in finds a face at (64, 40, 96, 88) of a 256x256 picture), and the source is cropped there, not refused."""
    from test_portrait_insightface import _buffalo

    import engine.portrait.head as head_module
    from engine.portrait.head import run_head
    from engine.portrait.insightface import InsightFace

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    config = PortraitConfig(blank, driving, weights=str(weights))
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path)
    monkeypatch.setattr(head_module, "optional_insightface", lambda folder, cuda: InsightFace(_buffalo(tmp_path / "b")))
    head = run_head(config, settings, "cpu")
    assert head.box is not None and head.box.tolist() == [64, 40, 96, 88]
    assert head.result.metrics["source_face"] == "insightface (our detector found none)"
    assert not any("no face found" in w for w in head.result.warnings)
    monkeypatch.setattr(head_module, "optional_insightface", lambda folder, cuda: None)
    with pytest.raises(PortraitError, match=r"no face found in the source blank\.png"):
        run_head(config, settings, "cpu")


def test_refusals_are_messages(weights: Path, driving: Path, tmp_path: Path) -> None:
    source = ASSETS / "face.jpg"
    missing = str(tmp_path / "none")
    with pytest.raises(WeightsError, match=r"no LivePortrait weights in \S*none \(there is no such folder\)"):
        run_portrait(PortraitConfig(source, driving, weights=missing, engine="liveportrait"), tmp_path / "o.mp4")
    with pytest.raises(WeightsError, match="no LivePortrait weights"):  # a weights folder named: no fallback
        run_portrait(PortraitConfig(source, driving, weights=missing), tmp_path / "o.mp4")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(PortraitError, match=r"no face found in the source .*with --no-crop animates the whole"):
        run_portrait(PortraitConfig(blank, driving, weights=str(weights)), tmp_path / "o.mp4")
    with pytest.raises(PortraitError, match="retargeting the eyes or lips measures the source's face"):
        run_portrait(PortraitConfig(blank, driving, weights=str(weights), crop=False, eye_open=0.3), tmp_path / "o.mp4")
    bad = tmp_path / "motion.npz"
    np.savez(bad, kp=np.zeros((3, 21, 3)))
    with pytest.raises(PortraitError, match="not a motion template"):
        read_template(bad)
    with pytest.raises(PortraitError, match="region 'hair' is not one of all, exp, pose, lip, eyes"):
        PortraitConfig(source, driving, region="hair").validate()
    with pytest.raises(PortraitError, match="driving file not found"):
        PortraitConfig(source, tmp_path / "missing.mp4").validate()
    with pytest.raises(PortraitError, match=r"landmarks file not found: none\.onnx"):  # even with nothing to retarget
        PortraitConfig(source, driving, landmarks=str(tmp_path / "none.onnx")).validate()
    assert not (tmp_path / "o.mp4").exists()
    # Uncropped, a source without a face is animated whole, as upstream does (a stylised face the detector misses)
    one = _video(tmp_path / "one.mp4", [cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))])
    result = run_portrait(PortraitConfig(blank, one, weights=str(weights), crop=False, scale=2.5),
                          tmp_path / "uncropped.mp4")  # fmt: skip
    assert result.metrics["face_box"] is None and result.metrics["frames"] == 1
    assert (
        "one.mkv is a video of one frame: its motion relative to itself moves nothing; give the frame as an image to "
        "transfer its expression"
    ) in result.warnings
    assert any("no face found in the source blank.png: the whole picture is animated" in w for w in result.warnings)
    assert "--scale changes nothing here: with --no-crop the source is not cropped" in result.warnings
    from engine.core.results import RunResult
    from engine.portrait.liveportrait_plan import _unused_crop_options

    told = RunResult()
    _unused_crop_options(PortraitConfig(source, tmp_path / "motion.pkl", crop_driving=True, vy_ratio_crop_driving=0.1),
                         told)  # fmt: skip
    assert told.warnings == ["--crop-driving, --vy-ratio-crop-driving change nothing here: a motion template's "
                             "motion was measured when saved"]  # fmt: skip


def test_a_split_job_names_the_options_that_change_nothing_as_a_whole_run(
    weights: Path, driving: Path, tmp_path: Path
) -> None:
    """A job split over GPUs warned of none of them (only the whole run's pipeline named them)."""
    from engine.core.settings import load_settings
    from engine.portrait.segments import PortraitSegments

    config = PortraitConfig(ASSETS / "face.jpg", driving, weights=str(weights), crop=False, scale=2.5,
                            relative=False, yaw=10.0)  # fmt: skip
    split = PortraitSegments(config, tmp_path / "split.mp4", load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)}))
    split.setup(lambda fraction, label: None)
    warnings = split.report(0, 1.0, SimpleNamespace(codec="libx264")).warnings
    assert "--scale changes nothing here: with --no-crop the source is not cropped" in warnings
    assert any(w.startswith("--yaw changes nothing here: with --no-relative and region all") for w in warnings)


def test_head_offsets_absolute_motion_leaves_unused_are_named(weights: Path, driving: Path, tmp_path: Path) -> None:
    """--pitch, --yaw and --roll turn the source's pose: with --no-relative in region all or pose the head takes the
    driver's pose instead, and the offsets moved nothing without a word."""
    from engine.core.results import RunResult
    from engine.portrait.liveportrait_plan import _unused_head_offsets

    source = ASSETS / "face.jpg"
    config = PortraitConfig(source, driving, weights=str(weights), relative=False, yaw=10.0, roll=-5.0, max_frames=1)
    result = run_portrait(config, tmp_path / "absolute.mp4")
    assert (
        "--yaw, --roll change nothing here: with --no-relative and region all the head takes the driver's pose, "
        "and the offsets turn the source's (relative motion, or regions exp, lip and eyes)" in result.warnings
    )
    for used in (dict(yaw=10.0), dict(relative=False, region="exp", yaw=10.0), dict(relative=False)):
        quiet = RunResult()
        _unused_head_offsets(PortraitConfig(source, driving, **used), quiet)
        assert quiet.warnings == []


def test_driving_crop_options_for_a_square_driver_taken_whole_are_named(
    weights: Path, driving: Path, tmp_path: Path
) -> None:
    """A square driving clip is taken whole unless --crop-driving asks: the driving crop's scale and shifts given
    without it changed nothing, silently."""
    source = ASSETS / "face.jpg"
    config = PortraitConfig(source, driving, weights=str(weights), scale_crop_driving=2.6, max_frames=1)
    result = run_portrait(config, tmp_path / "whole.mp4")
    assert (
        "--scale-crop-driving changes nothing here: the square drive.mkv is taken whole (--crop-driving crops it)"
        in (result.warnings)
    )
    cropped = run_portrait(replace(config, crop_driving=True), tmp_path / "cropped.mp4")
    assert not any("nothing here" in w for w in cropped.warnings)


def _video(path: Path, frames: list[np.ndarray]) -> Path:
    """The frames exactly as given (lossless Matroska): the Haar detector is borderline on a 320-pixel face, and
    whether H.264's noise lets it see one is not what these tests are about."""
    path = path.with_suffix(".mkv")
    writer = LosslessWriter(path, 25, frames[0].shape[1], frames[0].shape[0])
    for frame in frames:
        writer.write(frame)
    writer.close()
    return path


def test_a_batch_whose_frames_cannot_fit_in_memory_is_refused_before_any_work(
    driving: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holds its frames at the source's size (batch 256 of a 1280x1280 source needed about 50 GB, and the
    out-of-memory killer ended the process); a batch no longer than the driving input is what counts."""
    import psutil

    free = 64 * 2**20
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=free))
    source = ASSETS / "face.jpg"  # 512x512: 16 MiB a frame for the baseline's warp
    config = PortraitConfig(source, driving, engine="baseline", batch_size=256)
    with pytest.raises(PortraitError, match=r"batch 6 needs about 0\.1 GiB .*\(16 MiB each, baseline on a 512x512 "
                       r"source\) and 0\.1 GiB of memory is free for this job: "
                       r"use a batch size of at most 3 "):  # fmt: skip
        run_portrait(config, tmp_path / "o.mp4")  # the clip's 6 frames, not 256
    assert run_portrait(replace(config, max_frames=1), tmp_path / "o.mp4").metrics["frames"] == 1


def test_the_memory_a_batch_needs_is_sized_by_engine_precision_and_source_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LivePortrait's networks hold about 470 MiB a frame in fp32 and half that in fp16, on top of the warp's maps of a
    WxH source; the suggestion is never below 1, and one frame is never refused (there is nothing smaller to offer)."""
    import psutil

    from engine.portrait.head import _refuse_a_batch_over_memory

    free = 256 * 2**20
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=free))
    settings, cpu = Settings(data_dir=tmp_path, weights_dir=tmp_path), torch.device("cpu")
    with pytest.raises(PortraitError, match=r"batch 2 needs about 0\.9 GiB for its frames \(475 MiB each, "
                       r"liveportrait on a 400x100 source\) and 0\.2 GiB of memory is free for this job: use a "
                       r"batch size of at most 1 "):  # fmt: skip
        _refuse_a_batch_over_memory(2, (100, 400, 3), "liveportrait", "fp32", cpu, settings)
    with pytest.raises(PortraitError, match=r"\(240 MiB each, liveportrait on a 400x100 source\)"):
        _refuse_a_batch_over_memory(2, (100, 400, 3), "liveportrait", "fp16", cpu, settings)
    _refuse_a_batch_over_memory(1, (100, 400, 3), "liveportrait", "fp32", cpu, settings)  # 475 MiB over 256: run it
    _refuse_a_batch_over_memory(3, (100, 400, 3), "baseline", "fp32", cpu, settings)  # 5 MiB each: fits


def test_baseline_engine_without_weights(driving: Path, tmp_path: Path, no_weights: Settings) -> None:
    from engine.core.media import read_frames

    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))
    tilted = []
    for i in range(8):
        m = cv2.getRotationMatrix2D((160, 160), 2.0 * i, 1.0)
        tilted.append(cv2.warpAffine(face, m, (320, 320), borderMode=cv2.BORDER_REFLECT))
    tilt = _video(tmp_path / "tilt.mp4", tilted)
    still = _video(tmp_path / "still.mp4", [face] * 4)
    result = run_portrait(PortraitConfig(ASSETS / "face.jpg", tilt), tmp_path / "tilt-out.mp4", no_weights)
    assert result.metrics["engine"] == "baseline" and result.metrics["frames"] == 8
    (why,) = [w for w in result.warnings if "baseline engine" in w]
    assert why == (
        "no LivePortrait weights found: using the baseline engine (optical-flow motion transfer, not LivePortrait). "
        "Put the official pretrained_weights (from the Hugging Face repository KwaiVGI/LivePortrait) in "
        f"{no_weights.weights_dir / 'liveportrait'}, keeping their folders (`avatarbench weights get liveportrait` "
        "downloads them), or set AVATARBENCH_LIVEPORTRAIT_DIR to where they are, to use LivePortrait."
    )  # where they go, and the command that puts them there (only the variable was named)
    source = cv2.imread(str(ASSETS / "face.jpg")).astype(np.float32)
    out = [f.astype(np.float32) for f in read_frames(tmp_path / "tilt-out.mp4")]
    assert len(out) == 8 and out[0].shape == source.shape
    corner = (slice(0, 40), slice(0, 40))  # far from the face: the background stays put
    assert np.abs(out[-1][corner] - source[corner]).mean() < 4
    face_region = (slice(60, 190), slice(172, 280))
    moved = np.abs(out[-1][face_region] - out[0][face_region]).mean()
    calm = run_portrait(PortraitConfig(ASSETS / "face.jpg", still), tmp_path / "still-out.mp4", no_weights)
    still_out = [f.astype(np.float32) for f in read_frames(tmp_path / "still-out.mp4")]
    assert calm.metrics["frames"] == 4
    still_change = np.abs(still_out[-1][face_region] - still_out[0][face_region]).mean()
    assert still_change < 2 < moved  # a still driver moves nothing; a tilting one moves the face
    still_driver = PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", engine="baseline")
    image = run_portrait(still_driver, tmp_path / "x.mp4", no_weights)
    assert image.metrics["frames"] == 1 and image.metrics["pose_transfer"]["roll_degrees"] == 0  # a still driver


def test_a_driving_clip_that_starts_without_a_face(tmp_path: Path) -> None:
    from engine.core.results import RunResult
    from engine.faces.detection import HaarDetector
    from engine.portrait.driving import driving_face_box

    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))
    late = _video(tmp_path / "late.mp4", [np.zeros_like(face), face, face])  # a fade-in from black
    box, first = driving_face_box(read_frames(late), late.name, HaarDetector(detect_scale=0.5), RunResult())
    assert first == 1 and box[2] > box[0]  # relative motion is measured against frame 1, with a warning
    result = run_portrait(PortraitConfig(ASSETS / "face.jpg", late, engine="baseline"), tmp_path / "o.mp4")
    assert result.metrics["frames"] == 3 and any("first frame shows no face" in w for w in result.warnings)


def test_the_baseline_scales_a_driving_videos_motion_by_the_multiplier(driving: Path, tmp_path: Path) -> None:
    """--multiplier 0: the face sliding right moves nothing, every frame is the first."""
    config = PortraitConfig(ASSETS / "face.jpg", driving, engine="baseline", multiplier=0.0)
    run_portrait(config, tmp_path / "still.mp4")
    frames = [f.astype(np.float32) for f in read_frames(tmp_path / "still.mp4")]
    assert len(frames) == 6 and np.abs(frames[-1] - frames[0]).mean() < 0.5
    run_portrait(replace(config, multiplier=1.0), tmp_path / "moved.mp4")
    moved = [f.astype(np.float32) for f in read_frames(tmp_path / "moved.mp4")]
    assert np.abs(moved[-1] - moved[0]).mean() > 2


def test_the_baseline_says_a_one_frame_driving_video_moves_nothing(tmp_path: Path) -> None:
    """As LivePortrait does: a video of one frame has no motion relative to itself, and the run says so."""
    one = _video(tmp_path / "one.mp4", [cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))])
    result = run_portrait(PortraitConfig(ASSETS / "face.jpg", one, engine="baseline"), tmp_path / "o.mp4")
    assert result.metrics["frames"] == 1
    assert (
        "one.mkv is a video of one frame: its motion relative to itself moves nothing; give the frame as an image to "
        "transfer its head pose (its expression needs LivePortrait)"
    ) in result.warnings  # an image gives the baseline a head pose only, never an expression


def _raw_h264(path: Path, frames: int) -> Path:
    """A faceless raw H.264 stream (no container, so no duration in any header) under the name `path`."""
    import av

    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")))
        out.mux(stream.encode())
    return path


def test_a_clip_longer_than_the_limit_stops_at_the_limit(tmp_path: Path, no_weights: Settings) -> None:
    """A raw stream renamed .mp4 has no duration to refuse it by: the frames are counted while streaming."""
    from engine.portrait.driving import clip_frames

    clip = _raw_h264(tmp_path / "raw.mp4", 60)  # 2.4 s at 25 fps
    info = probe_video(clip)
    assert info.duration_s is None and info.frames is None
    assert len(list(clip_frames(clip, None, 3.0))) == 60
    assert len(list(clip_frames(clip, 10, 1.0))) == 10  # max_frames stops first: no message
    with pytest.raises(InputError, match=r"longer than the limit of 2 s \(50 frames at 25 fps, AVATARBENCH_MAX"):
        list(clip_frames(clip, None, 2.0))
    short = replace(no_weights, max_seconds=2.0)
    with pytest.raises(InputError, match="longer than the limit"):  # the face search stops there too
        run_portrait(PortraitConfig(ASSETS / "face.jpg", clip, engine="baseline"), tmp_path / "o.mp4", short)


def test_frames_with_nan_or_inf_are_written_defined_and_warned_about() -> None:
    """fp16 overflow gives inf/NaN, whose cast to uint8 is undefined: they become 0 (NaN, -inf) or 255 (+inf)."""
    from engine.core.results import RunResult
    from engine.portrait.writing import encode

    class Frames:
        def __init__(self) -> None:
            self.frames: list[np.ndarray] = []

        def write(self, frame: np.ndarray) -> None:
            self.frames.append(frame)

    clean = torch.full((2, 3, 4, 4), 0.5)
    bad = clean.clone()
    bad[0, 0, 0, 0], bad[0, 1, 0, 0], bad[1, 2, 1, 1] = float("nan"), float("-inf"), float("inf")
    writer, result = Frames(), RunResult()
    encode([clean], writer, result, lambda *_: None, 2)
    assert not result.warnings
    encode([bad], writer, result, lambda *_: None, 2)
    first, second = writer.frames[2], writer.frames[3]
    assert first[0, 0].tolist() == [127, 0, 0]  # BGR: the NaN (R) and -inf (G) are 0, B is 127.5 truncated
    assert second[1, 1].tolist() == [255, 127, 127]  # +inf (B) is 255
    assert any("NaN or infinite" in w for w in result.warnings)
    over = clean.clone()  # a decoder's values a little past [0, 1] are clipped, never wrapped round
    over[0, 0, 0, 0], over[0, 1, 0, 0] = 1.5, -0.25
    encode([over], writer, result, lambda *_: None, 2)
    assert writer.frames[4][0, 0].tolist() == [127, 0, 255]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_one_pass_finite_check_agrees_with_isfinite_everywhere(dtype: torch.dtype) -> None:
    """all_finite reads only the least and greatest value: a NaN, +inf or -inf anywhere (the last value of a
    vectorised loop's tail too) must be found as torch.isfinite(...).all() finds it, in each precision a network
    writes, and finite frames, however large, must pass."""
    from engine.portrait.writing import all_finite

    generator = torch.Generator().manual_seed(3)
    for shape in [(1, 3, 5, 7), (2, 3, 33, 17), (1, 3, 64, 64)]:
        clean = (torch.rand(shape, generator=generator) * 2 - 0.5).to(dtype)
        assert (
            all_finite(clean)
            and all_finite(clean * 1e4)
            and all_finite(torch.full(shape, torch.finfo(dtype).max, dtype=dtype))
        )
        for bad in (float("nan"), float("inf"), float("-inf")):
            for where in (0, clean.numel() - 1, int(torch.randint(clean.numel(), (1,), generator=generator))):
                frames = clean.clone()
                frames.view(-1)[where] = bad
                assert not all_finite(frames), (shape, bad, where)
    assert all_finite(torch.zeros((0, 3, 4, 4), dtype=dtype))


def test_crop_off_and_stitching_off_give_the_networks_frame_as_upstream(weights: Path, driving: Path,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    """Upstream pastes back only from a crop and only with stitching: a 640x512 source gives a 640x512 video by
    default, and the networks' 512x512 frame with stitching off, or with the crop off (the whole source stretched
    to their square: no crop scale, no turn); a source past source_max_dim is shrunk first."""
    face = cv2.imread(str(ASSETS / "face.jpg"))
    source = tmp_path / "wide.png"
    cv2.imwrite(str(source), cv2.copyMakeBorder(face, 0, 0, 64, 64, cv2.BORDER_REPLICATE))
    sizes, metrics = {}, {}
    runs = {"default": {}, "no stitching": {"stitching": False}, "no crop": {"crop": False},
            "limited": {"source_max_dim": 320}}  # fmt: skip
    for name, options in runs.items():
        config = PortraitConfig(source, driving, weights=str(weights), max_frames=1, **options)
        result = run_portrait(config, tmp_path / f"{len(sizes)}.mp4")
        info = probe_video(tmp_path / f"{len(sizes)}.mp4")
        sizes[name], metrics[name] = (info.width, info.height), result.metrics
    # upstream's source_max_dim: the source shrunk to a longer side of 320 first, so the pasted-back video is 320x256
    assert sizes == {"default": (640, 512), "no stitching": (512, 512), "no crop": (512, 512), "limited": (320, 256)}
    assert [metrics[n]["pasted_back"] for n in sizes] == [True, False, False, True]
    assert metrics["no crop"]["crop_scale"] is None and metrics["no crop"]["crop_angle"] is None
    assert metrics["default"]["crop_scale"] > 0


def test_a_square_driver_is_taken_whole_unless_asked_as_upstream() -> None:
    """Upstream crops the driving video only when asked (flag_crop_driving_video) or when it is not square; a square
    one is stretched whole to 256x256 with OpenCV's bilinear resize."""
    from engine.portrait.driving import _driving_input, _driving_transform

    config, box = PortraitConfig(ASSETS / "face.jpg", ASSETS / "driving.mp4"), np.array([100.0, 80.0, 220.0, 240.0])
    assert _driving_transform(config, box, 320, 320) is None
    assert _driving_transform(replace(config, crop_driving=True), box, 320, 320) is not None
    assert _driving_transform(config, box, 640, 360) is not None
    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    expected = torch.from_numpy(cv2.resize(rgb, (256, 256))).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(_driving_input(rgb, None, torch.device("cpu")), expected)
    cropped = _driving_input(rgb, _driving_transform(config, box, 640, 360), torch.device("cpu"))
    assert cropped.shape == expected.shape and not torch.equal(cropped, expected)


def _clip_with_sound(path: Path, lag_s: float) -> Path:
    """1 s of the face at 25 fps and 1 s of a 48 kHz stereo tone starting `lag_s` after the pictures (negative:
    before them), as clips cut by stream copy and phone recordings have them."""
    import av

    rate, face = 48000, cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (320, 320))
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 320, 320, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="stereo")
        for i in range(0, rate, 1024):
            chunk = np.ascontiguousarray(np.stack([tone[i : i + 1024]] * 2, axis=1).reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="stereo")
            frame.sample_rate, frame.pts = rate, max(0, round(lag_s * rate)) + i
            for packet in audio.encode(frame):
                container.mux(packet)
        for i in range(25):
            picture = av.VideoFrame.from_ndarray(face, format="bgr24")
            picture.pts = max(0, round(-lag_s * 25)) + i
            for packet in video.encode(picture):
                container.mux(packet)
        for packet in [*audio.encode(None), *video.encode(None)]:
            container.mux(packet)
    return path


@pytest.mark.parametrize("lag_s", [0.4, -0.4])
def test_the_driving_sound_keeps_its_place_against_the_pictures(tmp_path: Path, no_weights: Settings,
                                                                lag_s: float) -> None:  # fmt: skip
    """A driving clip whose sound starts 0.4 s after (or before) its pictures: the output's sound starts as late
    (or with that much cut), at the clip's own rate and channels (its sound came out 0.4 s off, at 16 kHz mono)."""
    import av

    clip = _clip_with_sound(tmp_path / "clip.mp4", lag_s)
    run_portrait(PortraitConfig(ASSETS / "face.jpg", clip), tmp_path / "out.mp4", no_weights)
    with av.open(str(tmp_path / "out.mp4")) as container:
        track = container.streams.audio[0]
        assert (track.codec_context.sample_rate, len(track.codec_context.layout.channels)) == (48000, 2)
        sound = np.concatenate([f.to_ndarray() for f in container.decode(track)], axis=1)[0]
    loud = np.flatnonzero(np.abs(sound) > 0.1)
    if lag_s > 0:  # silence, then the tone from 0.4 s (AAC's own delays are a few ms)
        assert abs(loud[0] / 48000 - lag_s) < 0.03
    else:  # the tone's first 0.4 s came before the first picture: from the start, ending 0.4 s before the tone did
        assert loud[0] / 48000 < 0.03 and abs(loud[-1] / 48000 - (1 - 0.4)) < 0.03


def test_the_strip_keeps_each_pictures_shape(tmp_path: Path) -> None:
    """A 400x320 driving picture and a 300x600 result: each fits its tile with its shape kept (both were squashed
    square), on a dark ground."""
    from engine.core.media import VideoWriter
    from engine.portrait.strip import TILE, side_by_side

    driver = tmp_path / "wide.png"
    cv2.imwrite(str(driver), np.full((320, 400, 3), 200, np.uint8))
    writer = VideoWriter(tmp_path / "tall.mp4", 25, 300, 600, codec="libx264")
    for _ in range(4):
        writer.write(np.full((600, 300, 3), 200, np.uint8))
    writer.close()
    strip = side_by_side(driver, tmp_path / "tall.mp4", 4)
    assert strip is not None and strip.shape[:2] == (2 * TILE, 4 * TILE)
    wide, tall = strip[:TILE, :TILE, 1] > 100, strip[TILE:, :TILE, 1] > 100
    rows, cols = np.flatnonzero(wide.any(axis=1)), np.flatnonzero(wide.any(axis=0))
    assert (len(cols), abs(len(rows) - round(TILE * 320 / 400)) <= 1) == (TILE, True)
    rows, cols = np.flatnonzero(tall.any(axis=1)), np.flatnonzero(tall.any(axis=0))
    assert len(rows) == TILE and abs(len(cols) - TILE // 2) <= 1


def test_the_driving_clip_scanned_for_faces_counts_its_decoding_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a frame (10 s on a fake clock) is "decode driving", looking for its face (1 s) is "detect": the
    first pass over a clip decoded as it is read timed both as "detect"."""
    import engine.core.results
    from engine.core.results import RunResult
    from engine.portrait.driving import face_boxes

    clock = [0.0]
    monkeypatch.setattr(engine.core.results.time, "perf_counter", lambda: clock[0])

    def decoded() -> Iterator[np.ndarray]:
        for _ in range(3):
            clock[0] += 10.0
            yield np.zeros((8, 8, 3), np.uint8)

    def detect(images: list[np.ndarray]) -> list[list]:
        clock[0] += 1.0
        return [[] for _ in images]

    result = RunResult()
    assert face_boxes(decoded(), SimpleNamespace(detect=detect), result) == [None] * 3
    assert {s.name: s.seconds for s in result.stages} == {"decode driving": 30.0, "detect": 3.0}


def _grey_clip(path: Path, count: int) -> Path:
    """`count` 64x64 frames, frame i all grey level 20 * i: each frame's motion can name the frame it came from."""
    return _video(path, [np.full((64, 64, 3), 20 * i, np.uint8) for i in range(count)])


def _quiet(fraction: float, label: str) -> None:
    """A progress callback that keeps nothing."""


def _level_motion(tensor: torch.Tensor) -> Any:
    """A motion extractor stand-in whose keypoints are each input frame's mean level (the frame's identity)."""
    from engine.portrait.motion import KeypointInfo

    b = tensor.shape[0]
    level = tensor.mean(dim=(1, 2, 3))[:, None, None].expand(b, 21, 3)
    zeros = torch.zeros(b)
    return KeypointInfo(zeros, zeros, zeros, torch.zeros(b, 3), torch.zeros(b, 21, 3), torch.ones(b), level.clone())


def test_every_driving_frame_gets_its_motion_in_order_the_last_partial_batch_too(tmp_path: Path) -> None:
    """Five frames in batches of two: the fifth (a batch of one) is measured, the frames keep their order, the count
    is the frames measured, and progress ends where the driving stage ends (0.30); max_frames cuts the clip."""
    from engine.core.results import RunResult
    from engine.portrait.driving import clip_motion

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    config = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2)
    settings, box, info = (
        Settings(data_dir=tmp_path, weights_dir=tmp_path),
        np.array([0.0, 0.0, 64.0, 64.0]),
        probe_video(clip),
    )
    told: list[tuple[float, str]] = []

    def told_progress(fraction: float, label: str) -> None:
        told.append((fraction, label))

    driving = clip_motion(config, settings, nets, info, box, 0, None, RunResult(), told_progress)
    levels = driving.motion.kp[:, 0, 0] * 255
    assert driving.count == 5 and levels.round().tolist() == [0.0, 20.0, 40.0, 60.0, 80.0]
    assert driving.fps == 25.0 and driving.reference == 0 and driving.openness is None and not driving.has_audio
    assert [round(f, 3) for f, _ in told] == [0.15, 0.25, 0.3]
    told.clear()  # cut to three frames, by a clip with sound: the progress is of the three, the sound is kept
    sound = replace(info, has_audio=True)
    cut = clip_motion(replace(config, max_frames=3), settings, nets, sound, box, 0, None, RunResult(), told_progress)
    assert cut.count == 3 and (cut.motion.kp[:, 0, 0] * 255).round().tolist() == [0.0, 20.0, 40.0]
    assert cut.has_audio and [round(f, 3) for f, _ in told] == [0.217, 0.3]


class _RecordingLandmarks:
    """A landmark model stand-in that says how each frame was read: in the face box, or following earlier points.
    Frame i's points (it reads the frame's grey level 20 * i) are upstream's tiny layout, scaled by 100 + i, so a
    frame followed from another's points names it."""

    def __init__(self) -> None:
        from tiny_onnx import landmark_layout

        self.layout, self.reads = landmark_layout(), []

    def _points(self, rgb: np.ndarray) -> np.ndarray:
        return (self.layout * (100 + round(rgb.mean() / 20))).astype(np.float32)

    def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        self.reads.append(("box", round(rgb.mean() / 20), tuple(box)))
        return self._points(rgb)

    def in_box(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        self.reads.append(("in box", round(rgb.mean() / 20), tuple(box)))
        return self._points(rgb)

    def following(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        self.reads.append(("follow", round(rgb.mean() / 20), round(float(points[0, 0] / self.layout[0, 0])) - 100))
        return self._points(rgb)


def _faces_from_frame_2(images: list[np.ndarray]) -> list[np.ndarray]:
    """A detector stand-in for `_grey_clip`: no face in frames 0 and 1, nor in frame 3 (a miss upstream's tracking
    does not notice); frames 2 and 4 a face at (i, i + 1, 60, 62), so the clip's face box (their mean) is (3, 4, 60,
    62) and a read in a frame's own box names it."""
    found = []
    for image in images:
        level = round(image.mean() / 20)
        face = level >= 2 and level != 3
        found.append(np.array([[level, level + 1, 60, 62, 0.9]], np.float32) if face else np.zeros((0, 5)))
    return found


def test_driving_landmarks_follow_the_face_from_frame_to_frame_as_upstreams_cropper(tmp_path: Path) -> None:
    """Upstream's crop_driving_video (and calc_lmks_from_cropped_video) reads the first face from its detection on
    that frame and each later frame in the crop built from the frame before's 203 points. Ours, in the scan for faces:
    the first face frame (here 2) in its own detector box, frames 3 and 4 following frames 2 and 3, each frame read
    once; frames 0 and 1, before the face (upstream drops them), are read in the motion pass in the clip's face box,
    for their openness only. The points are followed where the crop box needs them (a cropped clip) or the openness
    is measured, and not otherwise. Every frame's openness comes in order, one row a frame."""
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, detector = Settings(data_dir=tmp_path, weights_dir=tmp_path), SimpleNamespace(detect=_faces_from_frame_2)
    followed = [("box", 2, (2.0, 3.0, 60.0, 62.0)), ("follow", 3, 2), ("follow", 4, 3)]
    before_the_face = [("in box", i, (3.0, 4.0, 60.0, 62.0)) for i in (0, 1)]  # never from InsightFace's points
    for crop_driving, measure, reads in (
        (True, True, followed + before_the_face),
        (False, True, followed + before_the_face),
        (True, False, followed),
        (False, False, []),
    ):
        config = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2, crop_driving=crop_driving)
        landmarks, result = _RecordingLandmarks(), RunResult()
        driving = driving_motion(config, settings, nets, detector, landmarks, result, _quiet, measure_openness=measure)
        assert landmarks.reads == reads and driving.reference == 2
        assert (driving.openness is not None) == measure
    assert driving.count == 5 and "driving landmarks" not in {stage.name for stage in result.stages}
    config = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2)
    driving = driving_motion(config, settings, nets, detector, _RecordingLandmarks(), RunResult(), _quiet)
    assert driving.openness is not None
    eyes, lips = driving.openness
    assert eyes.shape == (5, 2) and lips.shape == (5,)
    assert eyes == pytest.approx(np.tile([0.25, 0.2], (5, 1)), abs=1e-4) and lips == pytest.approx([0.2] * 5, abs=1e-4)


def test_the_driving_crop_box_is_made_from_the_followed_landmarks_and_from_the_detector_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream crops a driving clip by one box: each followed frame's landmark box (parse_bbox_from_landmark,
    2.2x, up 0.1) averaged over the frames from the first face on. Ours does with the landmark model (frames 2 to 4
    here, not the frames before the face nor the detector's boxes); without it, the square around the mean of the
    detector's boxes. Every frame is cropped by that one box, and the run names which made it."""
    import engine.portrait.driving as driving_module
    from engine.core.results import RunResult
    from engine.portrait.crop import bbox_crop_transform, bbox_transform, landmark_bbox, mean_bbox
    from engine.portrait.driving import driving_motion

    crops: list[np.ndarray] = []
    real_crop = driving_module.crop_image
    monkeypatch.setattr(driving_module, "crop_image", lambda rgb, t: crops.append(t.to_crop) or real_crop(rgb, t))
    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, detector = Settings(data_dir=tmp_path, weights_dir=tmp_path), SimpleNamespace(detect=_faces_from_frame_2)
    layout = _RecordingLandmarks().layout
    boxes = [landmark_bbox(layout * (100 + i), 2.2, -0.1) for i in (2, 3, 4)]
    from_landmarks = bbox_transform(mean_bbox(boxes)).to_crop
    from_detector = bbox_crop_transform(np.array([3.0, 4.0, 60.0, 62.0], np.float32), 2.2, -0.1).to_crop
    assert not np.array_equal(from_landmarks, from_detector)
    config = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2, crop_driving=True)
    for landmarks, crop, made in ((_RecordingLandmarks(), from_landmarks, "followed landmarks"),
                                  (None, from_detector, "face detector")):  # fmt: skip
        crops.clear()
        result = RunResult()
        driving_motion(config, settings, nets, detector, landmarks, result, _quiet, measure_openness=False)
        assert len(crops) == 5 and all(np.array_equal(seen, crop) for seen in crops)
        assert result.metrics["driving_crop"] == made
    square = RunResult()
    driving_motion(replace(config, crop_driving=False), settings, nets, detector, None, square, _quiet)
    assert square.metrics["driving_crop"] == "none (taken whole)"


def test_a_driving_face_lost_to_the_followed_landmarks_stops_the_run_naming_its_frame(tmp_path: Path) -> None:
    """The landmarks are followed from frame to frame whatever the frame shows; where the face is lost and the model
    reads points that span no area, neither the next frame's crop nor the clip's crop box can be made. The run stops
    naming the driving frame and what to do, in the scan and in a split job's parent alike: mid-clip (frame 3) it
    was a LandmarkError of the crop for the next frame, on the last frame (4) a bare InputError from the box's
    arithmetic, neither naming the driving clip nor a frame."""
    from engine.core.results import RunResult
    from engine.portrait.config import PortraitError
    from engine.portrait.driving import driving_motion, followed_landmarks
    from engine.portrait.landmarks import LandmarkModel

    class Losing(_RecordingLandmarks):
        """Upstream's layout until frame `lost`, then all 203 points in one place; followed as the real model."""

        def __init__(self, lost: int) -> None:
            super().__init__()
            self.lost = lost

        def _points(self, rgb: np.ndarray) -> np.ndarray:
            level = round(rgb.mean() / 20)
            return np.full((203, 2), 30.0, np.float32) if level >= self.lost else super()._points(rgb)

        def following(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
            return LandmarkModel.following(self, rgb, points)  # type: ignore[arg-type]

        def _read(self, rgb: np.ndarray, transform: Any) -> np.ndarray:
            return self._points(rgb)

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, detector = Settings(data_dir=tmp_path, weights_dir=tmp_path), SimpleNamespace(detect=_faces_from_frame_2)
    config = PortraitConfig(ASSETS / "face.jpg", clip, crop_driving=True)
    for lost in (3, 4):
        said = rf"driving frame {lost}: the 203 landmarks span no area .* trim the driving clip to the frames that show"
        with pytest.raises(PortraitError, match=said):
            driving_motion(config, settings, nets, detector, Losing(lost), RunResult(), _quiet, measure_openness=False)
        face = np.array([2.0, 3.0, 60.0, 62.0], np.float32)
        with pytest.raises(PortraitError, match=said):
            followed_landmarks(config, settings, 2, face, Losing(lost), RunResult())  # type: ignore[arg-type]
    kept = followed_landmarks(config, settings, 2, face, Losing(5), RunResult())  # type: ignore[arg-type]
    assert len(kept) == 3


def test_a_driving_face_followed_out_of_the_picture_is_said_once_naming_the_frame(tmp_path: Path) -> None:
    """Upstream follows a lost face's landmarks wherever they go, silently, and averages their boxes into the crop;
    ours does too (parity), and now says at which frame the followed points left the picture, once, in the scan and
    in a split job's parent alike."""
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion, followed_landmarks

    class Drifting(_RecordingLandmarks):
        """Upstream's layout, moved 100 pixels right from frame 3 on (off the 64-pixel frame)."""

        def _points(self, rgb: np.ndarray) -> np.ndarray:
            points = super()._points(rgb)
            return points + np.float32([100, 0]) if round(rgb.mean() / 20) >= 3 else points

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, detector = Settings(data_dir=tmp_path, weights_dir=tmp_path), SimpleNamespace(detect=_faces_from_frame_2)
    config = PortraitConfig(ASSETS / "face.jpg", clip, crop_driving=True, batch_size=2)
    said = "the face followed through the driving clip left the picture at frame 3 (its landmarks' centre is outside"
    scanned = RunResult()
    driving_motion(config, settings, nets, detector, Drifting(), scanned, _quiet, measure_openness=False)
    left = [w for w in scanned.warnings if "left the picture" in w]
    assert len(left) == 1 and left[0].startswith(said)
    split = RunResult()
    followed_landmarks(config, settings, 2, np.float32([2, 3, 60, 62]), Drifting(), split)  # type: ignore[arg-type]
    assert len(split.warnings) == 1 and split.warnings[0].startswith(said)
    kept = RunResult()
    followed_landmarks(config, settings, 2, np.float32([2, 3, 60, 62]), _RecordingLandmarks(), kept)  # type: ignore[arg-type]
    assert not kept.warnings


def test_a_split_jobs_parent_follows_the_landmarks_as_the_unsplit_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split job's segments find the faces; its parent then follows the landmarks from the first face over the
    whole clip (each frame from the one before, across segment bounds) and hands the clip's motion the unsplit
    scan's points, so its crop box and openness are the unsplit run's; where neither needs them (a square clip
    taken whole, no openness) it reads nothing more."""
    import engine.portrait.segments as segments
    from engine.core.results import RunResult
    from engine.portrait.driving import Driving, LandmarkTrack, clip_frames, face_boxes
    from engine.portrait.liveportrait_plan import Source

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    settings, detector = Settings(data_dir=tmp_path, weights_dir=tmp_path), SimpleNamespace(detect=_faces_from_frame_2)
    unsplit = LandmarkTrack(_RecordingLandmarks(), RunResult())
    face_boxes(clip_frames(clip, None, settings.max_seconds), detector, RunResult(), unsplit)
    asked: list[tuple[Any, Any]] = []

    def clip_motion(*args: Any) -> Driving:
        asked.append((args[6], args[9]))  # the openness model, the followed landmarks
        return Driving(_level_motion(torch.zeros(5, 3, 8, 8)), 25.0, 5)

    monkeypatch.setattr(segments, "clip_motion", clip_motion)
    monkeypatch.setattr(segments, "keypoints", lambda *args: (torch.zeros(5, 21, 3), torch.zeros(1, 21, 3)))
    for crop_driving, follows in ((True, True), (False, False)):
        config = PortraitConfig(ASSETS / "face.jpg", clip, crop_driving=crop_driving)
        split = _planning_segments(tmp_path, config, monkeypatch)
        split.source = Source.__new__(Source)
        split.source.landmark_model, split.source.nets = _RecordingLandmarks(), None
        parts = [face_boxes(itertools.islice(clip_frames(clip, None, 60.0), a, b), detector, RunResult())
                 for a, b in ((0, 3), (3, 5))]  # fmt: skip
        measured = [{"boxes": np.stack([np.zeros(4, np.float32) if b is None else b for b in part]),
                     "found": np.array([b is not None for b in part])} for part in parts]  # fmt: skip
        asked.clear()
        split.plan([(0, 3), (3, None)], measured, _quiet)
        (landmarks, followed), reads = asked[0], split.source.landmark_model.reads
        assert landmarks is None  # no openness asked
        if follows:
            assert reads == unsplit.model.reads == [("box", 2, (2.0, 3.0, 60.0, 62.0)), ("follow", 3, 2),
                                                     ("follow", 4, 3)]  # fmt: skip
            assert len(followed) == 3 and all(
                np.array_equal(a, b) for a, b in zip(followed, unsplit.points, strict=True)
            )
        else:
            assert followed is None and reads == []


def _upstreams_ratios(lmk: np.ndarray) -> np.ndarray:
    """Upstream's calc_eye_close_ratio and calc_lip_close_ratio (calculate_distance_ratio) on float32 points: the
    left eye's, the right eye's, the lips'."""

    def ratio(a: int, b: int, c: int, d: int) -> np.float32:
        return np.linalg.norm(lmk[a] - lmk[b]) / (np.linalg.norm(lmk[c] - lmk[d]) + 1e-6)

    return np.array([ratio(6, 18, 0, 12), ratio(30, 42, 24, 36), ratio(90, 102, 48, 66)], np.float32)


def test_driving_openness_is_measured_in_the_driving_crop_where_upstream_measures_it(tmp_path: Path) -> None:
    """Upstream's pipeline takes a cropped driving clip's openness from its landmarks mapped into the crop by the
    crop's float32 matrix (crop_driving_video's lmk_crop) and a clip taken whole from the frame's own (its
    calc_lmks_from_cropped_video). The ratios agree up to float32 rounding: a step apart in some frames here. The
    crop is the one upstream makes of the followed points (their landmark boxes averaged); a driving image's of its
    own points."""
    from engine.core.results import RunResult
    from engine.portrait.crop import bbox_transform, landmark_bbox, mean_bbox
    from engine.portrait.driving import clip_motion, driving_motion

    def crop_of(followed: list[np.ndarray]) -> np.ndarray:
        return bbox_transform(mean_bbox([landmark_bbox(points, 2.2, -0.1) for points in followed])).to_crop

    class Scattered(_RecordingLandmarks):
        def _points(self, rgb: np.ndarray) -> np.ndarray:  # frame i: its own scatter over the 64 px frame
            return np.random.default_rng(round(rgb.mean() / 20)).uniform(0, 64, (203, 2)).astype(np.float32)

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, info = Settings(data_dir=tmp_path, weights_dir=tmp_path), probe_video(clip)
    box, landmarks = np.array([8.0, 9.0, 50.0, 55.0]), Scattered()
    in_frame = [landmarks._points(np.full((2, 2, 3), 20 * i, np.uint8)) for i in range(5)]
    m = crop_of(in_frame)
    in_crop = [points @ m[:2, :2].T + m[:2, 2] for points in in_frame]
    for crop_driving, seen in ((True, in_crop), (False, in_frame)):
        config = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2, crop_driving=crop_driving)
        driving = clip_motion(config, settings, nets, info, box, 0, landmarks, RunResult(), _quiet, in_frame)
        assert driving.openness is not None
        eyes, lips = driving.openness
        assert np.array_equal(np.column_stack([eyes, lips]), [_upstreams_ratios(points) for points in seen])
    steps = [_upstreams_ratios(a) != _upstreams_ratios(b) for a, b in zip(in_crop, in_frame, strict=True)]
    assert np.any(steps)  # where the two ways part
    alone = [points @ crop_of([points])[:2, :2].T + crop_of([points])[:2, 2] for points in in_frame]
    parted = [np.any(_upstreams_ratios(a) != _upstreams_ratios(b)) for a, b in zip(alone, in_frame, strict=True)]
    level = parted.index(True)  # a driving image of that frame, cropped by its own points' box: its crop's too
    cv2.imwrite(str(tmp_path / "still.png"), np.full((64, 64, 3), 20 * level, np.uint8))
    detector = SimpleNamespace(detect=lambda images: [np.array([[*box, 0.9]], np.float32)])
    for crop_driving, seen in ((True, alone), (False, in_frame)):
        config = PortraitConfig(ASSETS / "face.jpg", tmp_path / "still.png", crop_driving=crop_driving)
        still = driving_motion(config, settings, nets, detector, landmarks, RunResult(), _quiet)
        assert still.image and still.openness is not None
        assert np.array_equal(np.column_stack(still.openness)[0], _upstreams_ratios(seen[level]))


def test_a_driving_images_face_is_found_in_bgr_as_a_clips_frames(tmp_path: Path) -> None:
    """The face detector takes BGR frames (a clip's are read so, and upstream's cropper flips its RGB frames back for
    InsightFace); a driving image must be searched in the same order, its landmarks and motion read in RGB. A blue
    picture: the detector sees its blue first, the landmark model and the motion network its blue last."""
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion

    blue = np.zeros((64, 80, 3), np.uint8)
    blue[..., 0] = 255  # BGR
    cv2.imwrite(str(tmp_path / "blue.png"), blue)
    seen: dict[str, np.ndarray] = {}

    def detect(images: list[np.ndarray]) -> list[np.ndarray]:
        seen["detector"] = images[0].reshape(-1, 3).mean(0)
        return [np.array([[8.0, 9.0, 50.0, 55.0, 0.9]], np.float32)]

    class Seeing(_RecordingLandmarks):
        def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
            seen["landmarks"] = rgb.reshape(-1, 3).mean(0)
            return super().__call__(rgb, box)

    def motion(tensor: torch.Tensor) -> Any:
        seen["motion"] = tensor.mean(dim=(0, 2, 3)).numpy() * 255
        return _level_motion(tensor)

    nets = SimpleNamespace(motion=motion, device=torch.device("cpu"))
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path)
    config = PortraitConfig(ASSETS / "face.jpg", tmp_path / "blue.png")
    driving_motion(config, settings, nets, SimpleNamespace(detect=detect), Seeing(), RunResult(), _quiet)
    assert seen["detector"].round().tolist() == [255.0, 0.0, 0.0]
    assert seen["landmarks"].round().tolist() == [0.0, 0.0, 255.0]
    assert seen["motion"][0] < 1 and seen["motion"][2] > 100  # the crop's black border darkens its blue


def test_motion_against_a_later_frame_is_warned_of_only_when_relative(tmp_path: Path) -> None:
    """The reference frame matters for relative motion only: absolute motion from a clip that starts without a face
    is not warned of; a one-frame video is warned of only when relative; a clip with no face at all is refused."""
    from engine.core.media import VideoInfo
    from engine.core.results import RunResult
    from engine.portrait.driving import clip_box, clip_motion, warn_one_frame

    clip = _grey_clip(tmp_path / "three.mp4", 3)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    config, settings = (
        PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2),
        Settings(data_dir=tmp_path, weights_dir=tmp_path),
    )
    box, info = np.array([0.0, 0.0, 64.0, 64.0]), probe_video(clip)
    for relative, warned in ((True, 1), (False, 0)):
        result = RunResult()
        driving = clip_motion(replace(config, relative=relative), settings, nets, info, box, 2, None, result, _quiet)
        assert driving.reference == 2 and len(result.warnings) == warned
        assert all("motion is measured against frame 2, the first with a face" in w for w in result.warnings)
    one = VideoInfo(64, 64, 25.0, 1, 0.04, False, "h264")
    for relative, warned in ((True, 1), (False, 0)):
        result = RunResult()
        warn_one_frame(one, clip, replace(config, relative=relative), result)
        assert len(result.warnings) == warned
    warn_one_frame(replace(one, frames=2), clip, config, quiet := RunResult())
    assert quiet.warnings == []
    with pytest.raises(PortraitError, match=r"^no face found in the driving video three\.mkv: a frontal face must"):
        clip_box([None, None], clip.name)


def test_the_frames_a_run_expects_from_its_driving_input(tmp_path: Path) -> None:
    """What sizes a batch: max_frames or the video's length, whichever is fewer; an image is one frame; a template's
    length is not known before it is read."""
    from engine.portrait.driving import driving_frames

    clip, face = _grey_clip(tmp_path / "five.mp4", 5), ASSETS / "face.jpg"
    save_template(tmp_path / "t.npz", _level_motion(torch.zeros(3, 3, 8, 8)), 25.0)
    assert driving_frames(PortraitConfig(face, clip)) == 5
    assert driving_frames(PortraitConfig(face, clip, max_frames=3)) == 3
    assert driving_frames(PortraitConfig(face, clip, max_frames=9)) == 5
    assert driving_frames(PortraitConfig(face, face)) == 1
    assert driving_frames(PortraitConfig(face, tmp_path / "t.npz")) is None
    assert driving_frames(PortraitConfig(face, tmp_path / "t.npz", max_frames=2)) == 2


def test_the_writer_writes_every_frame_of_every_batch_and_reports_them(tmp_path: Path) -> None:
    """Batches of 2, 2 and 1: the MP4 holds all five frames in order, the report counts them, progress ends at 1;
    a plan that fails halfway leaves no half-written file behind, and its error is the run's."""
    from engine.core.results import RunResult
    from engine.portrait.writing import Plan, write

    def batches(fail: bool = False) -> Iterator[torch.Tensor]:
        for start, size in ((0, 2), (2, 2), (4, 1)):
            if fail and start:
                raise RuntimeError("the decoder ran out of memory")
            yield torch.stack([torch.full((3, 32, 48), (start + i) / 5) for i in range(size)])

    config, settings = PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg"), Settings(tmp_path, tmp_path)
    plan = Plan(batches(), 25.0, 5, False, (48, 32), torch.device("cpu"), {})
    told: list[tuple[float, str]] = []
    result = RunResult()
    write(plan, config, settings, tmp_path / "out.mp4", result, lambda f, s: told.append((f, s)))
    frames = list(read_frames(tmp_path / "out.mp4"))
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)
    assert [round(float(f.mean()) / 51) for f in frames] == [0, 1, 2, 3, 4]  # in order, none dropped
    assert result.outputs["video"] == str(tmp_path / "out.mp4")
    assert result.metrics["frames"] == 5 and result.metrics["fps"] == 25.0 and result.metrics["frames_per_second"] > 0
    assert told == [(pytest.approx(0.58), "frame 2/5"), (pytest.approx(0.86), "frame 4/5"), (1.0, "frame 5/5")]
    failed = Plan(batches(fail=True), 25.0, 5, False, (48, 32), torch.device("cpu"), {})
    with pytest.raises(RuntimeError, match="ran out of memory"):
        write(failed, config, settings, tmp_path / "new" / "failed.mp4", RunResult(), _quiet)
    assert not (tmp_path / "new").exists()  # nor the folder made for it


def test_an_output_not_named_mp4_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.portrait.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_head", lambda *a, **k: pytest.fail("the run started"))
    config = PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg")
    for name, shown in (("out.avi", "out.avi"), ("out", "out"), ("", "(no name)")):
        with pytest.raises(PortraitError, match=rf"^output {re.escape(shown)} must be a file name ending in \.mp4$"):
            run_portrait(config, tmp_path / name if name else Path(""))
    with pytest.raises(pytest.fail.Exception, match="the run started"):  # any case of .mp4 is a video's name
        run_portrait(config, tmp_path / "OUT.MP4")


def test_the_strip_shows_the_last_frame_and_is_saved_beside_the_video(tmp_path: Path) -> None:
    """The strip's last tile is the clip's last frame (never one short of it); it is saved as name.strip.png next
    to the video; a motion template has no frames to show."""
    from engine.core.media import load_image
    from engine.portrait.strip import STRIP_FRAMES, TILE, save_strip

    clip = _grey_clip(tmp_path / "drive.mp4", 10)
    video = _grey_clip(tmp_path / "out.mp4", 10)
    path = save_strip(clip, video, 10)
    assert path == tmp_path / "out.strip.png"
    strip = load_image(path)
    assert strip.shape[:2] == (2 * TILE, STRIP_FRAMES * TILE)
    levels = [int(strip[TILE // 2, TILE * i + TILE // 2, 0]) for i in range(STRIP_FRAMES)]
    assert levels == [0, 60, 120, 180]  # frames 0, 3, 6 and 9 of 10
    save_template(tmp_path / "t.npz", _level_motion(torch.zeros(2, 3, 8, 8)), 25.0)
    assert save_strip(tmp_path / "t.npz", video, 2) is None


def test_liveportrait_renders_every_driving_frame_in_order_batch_by_batch() -> None:
    """Five frames' keypoints in batches of two: three batches of 2, 2 and 1, each frame rendered from its own
    keypoints, pasted back into the source when there is a paste-back and left as the networks' frames without; the
    warp also takes the source's keypoints (here their mean, 0, and 0.5 in the last check)."""
    from engine.core.results import RunResult
    from engine.portrait.liveportrait_plan import liveportrait_batches

    def warp(feature: torch.Tensor, x_source: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :1, None] + feature + x_source.mean()

    nets = SimpleNamespace(warp=warp, decode=lambda w: w * 2)
    source = SimpleNamespace(nets=nets, device=torch.device("cpu"), feature=torch.zeros(1), paste=None,
                             original=torch.ones(1))  # fmt: skip
    x_driving = torch.arange(5.0).view(5, 1, 1).expand(5, 21, 3)
    config, result = PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", batch_size=2), RunResult()
    batches = list(liveportrait_batches(config, source, x_driving, torch.zeros(1, 21, 3), result))
    assert [b.flatten().tolist() for b in batches] == [[0.0, 2.0], [4.0, 6.0], [8.0]]
    assert {s.name: s.items for s in result.stages} == {"warp": 5, "decode network": 5}
    pasted = SimpleNamespace(**{**vars(source), "paste": lambda frames, original: frames + original})
    batches = list(liveportrait_batches(config, pasted, x_driving, torch.zeros(1, 21, 3), RunResult()))
    assert [b.flatten().tolist() for b in batches] == [[1.0, 3.0], [5.0, 7.0], [9.0]]
    batches = list(liveportrait_batches(config, source, x_driving, torch.full((1, 21, 3), 0.5), RunResult()))
    assert [b.flatten().tolist() for b in batches] == [[1.0, 3.0], [5.0, 7.0], [9.0]]


def test_head_offsets_with_absolute_pose_are_named_in_region_pose_too(tmp_path: Path) -> None:
    """Region pose takes the driver's whole pose as region all does: the offsets change nothing there either."""
    from engine.core.results import RunResult
    from engine.portrait.liveportrait_plan import _unused_head_offsets

    told = RunResult()
    _unused_head_offsets(PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", relative=False, region="pose",
                                        pitch=5.0), told)  # fmt: skip
    assert told.warnings == [
        "--pitch changes nothing here: with --no-relative and region pose the head takes the driver's pose, and the "
        "offsets turn the source's (relative motion, or regions exp, lip and eyes)"
    ]
    _unused_head_offsets(
        PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", region="pose", pitch=5.0), quiet := RunResult()
    )
    assert quiet.warnings == []  # relative motion turns the source's own pose: the offsets are used


def _planning_segments(tmp_path: Path, config: PortraitConfig, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The baseline's split job as the parent holds it after setup (a stand-in head and source, the clip's header),
    its motion stood in by each frame's index, so what plan hands each segment names its frames."""
    import engine.portrait.segments as segments
    from engine.core.results import RunResult

    def motion(config: PortraitConfig, settings: Settings, box: np.ndarray, first: int, *rest: Any) -> Any:
        split.asked = {"box": box, "first": first}
        return SimpleNamespace(head=np.arange(40), flow=-np.arange(40))

    monkeypatch.setattr(segments, "baseline_motion", motion)
    split = segments.PortraitSegments.__new__(segments.PortraitSegments)
    split.config, split.out, split.settings, split.device = (
        config,
        tmp_path / "out.mp4",
        Settings(tmp_path, tmp_path),
        None,
    )
    split.head = SimpleNamespace(config=config, result=RunResult(), detector=None)
    split.source, split.info, split.count, split.plan_metrics = torch.zeros(1), probe_video(config.driving), 0, {}
    return split


def test_a_split_job_plans_each_segment_its_own_frames_to_the_clips_true_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments laid out by a header that promised 48 frames, of a clip that has 40: each gets exactly its frames'
    motion, the open last one to the true end, one past the end none; the clip's box is the mean of its faces, its
    reference the first frame with one."""
    config = PortraitConfig(ASSETS / "face.jpg", _grey_clip(tmp_path / "c.mp4", 2), engine="baseline", batch_size=16)
    split = _planning_segments(tmp_path, config, monkeypatch)
    faces = np.array([[i, 0.0, i + 8.0, 8.0] for i in range(40)], np.float32)  # sliding right, frame by frame
    found = np.arange(40) >= 3  # frames 0-2 without a face
    measured = [{"boxes": faces[a:b], "found": found[a:b]} for a, b in ((0, 16), (16, 32), (32, 40), (40, 40))]
    final, states = split.plan([(0, 16), (16, 32), (32, 48), (48, None)], measured, _quiet)
    assert final == [(0, 16), (16, 32), (32, 40), (40, 40)] and split.count == 40
    assert [s["head"].tolist() for s in states] == [list(range(0, 16)), list(range(16, 32)), list(range(32, 40)), []]
    assert all(np.array_equal(s["flow"], -s["head"]) for s in states)
    assert split.asked["first"] == 3 and split.asked["box"].tolist() == [21.0, 0.0, 29.0, 8.0]  # the faces' mean


def test_a_segment_scans_its_own_frames_for_the_driving_face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames start..stop-1 (stop None: to the clip's end), each with its face's box or none."""
    config = PortraitConfig(ASSETS / "face.jpg", _grey_clip(tmp_path / "c.mp4", 5), engine="baseline", batch_size=2)
    split = _planning_segments(tmp_path, config, monkeypatch)

    def detect(images: list[np.ndarray]) -> list[np.ndarray]:  # a face where the frame is not black
        level = float(images[0].mean())
        return [np.array([[level, 0.0, level + 4.0, 4.0, 1.0]]) if level else np.zeros((0, 5))]

    split.head.detector = SimpleNamespace(detect=detect)
    told: list[str] = []
    part = split.measure(0, 2, lambda f, s: told.append(s))
    assert part["found"].tolist() == [False, True] and part["boxes"][1].tolist() == [20.0, 0.0, 24.0, 4.0]
    assert told == ["faces in 2 frames"]
    rest = split.measure(2, None, _quiet)
    assert rest["found"].tolist() == [True] * 3 and rest["boxes"][:, 0].tolist() == [40.0, 60.0, 80.0]
    past = split.measure(5, None, _quiet)  # a segment the header promised that the clip does not have
    assert past["found"].shape == (0,) and past["boxes"].shape == (0, 4)


def test_a_template_cut_to_one_frame_drives_as_a_clip_and_a_one_frame_template_as_an_image(tmp_path: Path) -> None:
    """Upstream's rule: a template saved from one frame transfers that expression as an image does; a longer one cut
    to its first frame by max_frames is a clip's first frame (moved against itself); either keeps its frame rate."""
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion

    save_template(tmp_path / "three.npz", _level_motion(torch.zeros(3, 3, 8, 8)), 30.0)
    save_template(tmp_path / "one.npz", _level_motion(torch.zeros(1, 3, 8, 8)), 30.0)
    settings, face = Settings(tmp_path, tmp_path), ASSETS / "face.jpg"

    def driven(name: str, max_frames: int | None = None) -> Any:
        config = PortraitConfig(face, tmp_path / name, max_frames=max_frames)
        return driving_motion(config, settings, None, None, None, RunResult(), _quiet)

    whole, cut, one = driven("three.npz"), driven("three.npz", 1), driven("one.npz")
    assert (whole.count, whole.image, whole.fps) == (3, False, 30.0)
    assert (cut.count, cut.image, cut.fps) == (1, False, 30.0)
    assert (one.count, one.image, one.fps) == (1, True, 30.0)


def test_driving_crop_options_are_named_only_where_the_driver_is_taken_whole() -> None:
    """The same options for a wide driver (cropped) are used, so nothing is said; for a square one they are named
    (the whole run's check of this takes minutes on the CPU; this is its rule alone)."""
    from engine.core.results import RunResult
    from engine.portrait.driving import _driving_transform, _unused_driving_crop

    config = PortraitConfig(
        ASSETS / "face.jpg", ASSETS / "driving.mp4", scale_crop_driving=2.6, vx_ratio_crop_driving=0.1
    )
    box = np.array([100.0, 80.0, 220.0, 240.0])
    named = "--scale-crop-driving, --vx-ratio-crop-driving change nothing here: the square d.mp4 is taken whole"
    for width, height, warned in ((640, 360, []), (320, 320, [named + " (--crop-driving crops it)"])):
        told = RunResult()
        _unused_driving_crop(config, _driving_transform(config, box, width, height), "d.mp4", told)
        assert told.warnings == warned
    told = RunResult()
    _unused_driving_crop(PortraitConfig(ASSETS / "face.jpg", ASSETS / "driving.mp4"), None, "d.mp4", told)
    assert told.warnings == []  # the defaults: nothing to name


def test_source_crop_options_are_named_only_with_the_crop_off() -> None:
    """--scale with --no-crop changed nothing, without a word; with the crop on it is used, so nothing is said."""
    from engine.core.results import RunResult
    from engine.portrait.liveportrait_plan import _unused_crop_options

    for crop, warned in (
        (False, ["--scale changes nothing here: with --no-crop the source is not cropped"]),
        (True, []),
    ):
        told = RunResult()
        _unused_crop_options(PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", crop=crop, scale=2.5), told)
        assert told.warnings == warned
    told = RunResult()  # each of the source's crop options, --no-upright too
    offsets = {"vx_ratio": 0.1, "vy_ratio": -0.2, "upright": False}
    _unused_crop_options(PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", crop=False, **offsets), told)
    assert told.warnings == [
        "--vx-ratio, --vy-ratio, --no-upright change nothing here: with --no-crop the source is not cropped"
    ]


def _stand_in_pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)


STAND_IN_BOX = np.array([50.0, 30.0, 110.0, 90.0])


def _stand_in_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    landmarks: bool = False,
    precision: str = "fp32",
    face_points: np.ndarray | bool | None = False,
    device: str = "cpu",
    box: np.ndarray | None = STAND_IN_BOX,
    **options: Any,
) -> tuple[Any, Any]:
    """liveportrait_source on a 160x120 source with a face box (None: no face found), its networks and landmark model
    stood in (no weights loaded) on a job on `device` with `precision`: the appearance features are the pixels the
    networks saw, each network build is recorded in `tmp_path / builds` and warns once, and the networks run on the
    CPU (an ONNX backend's providers too); the landmark model, when there, reads a face tilted by 7 degrees with its
    lips open 0.1, and with InsightFace (`face_points` not False) from those 106 points (None: it found no face)."""
    import engine.portrait.liveportrait_plan as plan
    from engine.core.results import RunResult
    from engine.portrait.head import Head

    def load(config: PortraitConfig, settings: Settings, folder: Path, device: torch.device, precision: str) -> Any:
        with open(tmp_path / "builds", "a") as f:
            f.write(precision + "\n")
        return SimpleNamespace(device=torch.device("cpu"), warnings=["the decoder fell back to the CPU"],
                               appearance=lambda pixels: pixels, motion=lambda pixels: "motion",
                               providers={"decoder": ["CPUExecutionProvider"]})  # fmt: skip

    with_insightface = face_points is not False
    model = SimpleNamespace(
        insightface=object() if with_insightface else None,
        first_reading=lambda rgb, box: (np.zeros((203, 2), np.float32), face_points if with_insightface else None),
    )
    model = model if landmarks else None
    monkeypatch.setattr(plan, "load_networks", load)
    monkeypatch.setattr(plan, "optional_landmark_model", lambda config, folder, result, device: model)
    monkeypatch.setattr(plan, "roll_from_landmarks", lambda points: 7.0)
    monkeypatch.setattr(plan, "openness", lambda points: (np.array([0.3, 0.25], np.float32), 0.1))
    (tmp_path / "weights").mkdir(exist_ok=True)
    config = PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", **{"batch_size": 1, **options})
    head = Head(config, Settings(tmp_path, tmp_path), RunResult(precision=precision), torch.device(device), precision,
                None, _stand_in_pixels(), box, "liveportrait", tmp_path / "weights")  # fmt: skip
    return plan.liveportrait_source(head, _quiet), head.result


@pytest.fixture
def empty_caches() -> Iterator[None]:
    """The networks and sources cached by other tests are not this test's, nor are its own the next test's."""
    from engine.portrait import cache

    cache.clear()
    yield
    cache.clear()


def test_the_source_is_cropped_pasted_back_and_reported_as_its_options_ask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_caches: None
) -> None:
    """Cropped and with stitching the frames are pasted back at the source's size; without stitching or uncropped
    they are the networks' 512x512 (uncropped the networks see the whole source); the crop is turned upright by the
    landmarks' tilt, whose openness is kept; the networks' own warnings reach the run."""
    source, result = _stand_in_source(tmp_path, monkeypatch)
    assert source.size == (160, 120) and source.paste is not None and source.openness is None
    assert source.metrics["pasted_back"] is True and source.metrics["crop_angle"] == pytest.approx(0.0, abs=1e-9)
    assert source.metrics["crop_scale"] == pytest.approx(source.transform.scale)
    assert "the decoder fell back to the CPU" in result.warnings
    turned, _ = _stand_in_source(tmp_path, monkeypatch, landmarks=True)
    assert turned.metrics["crop_angle"] == pytest.approx(7.0, abs=1e-4)
    assert turned.openness[1] == 0.1 and turned.openness[0].tolist() == pytest.approx([0.3, 0.25])
    unstitched, _ = _stand_in_source(tmp_path, monkeypatch, stitching=False)
    assert unstitched.size == (512, 512) and unstitched.paste is None and unstitched.metrics["pasted_back"] is False
    uncropped, _ = _stand_in_source(tmp_path, monkeypatch, crop=False)
    assert uncropped.size == (512, 512) and uncropped.paste is None and uncropped.transform is None
    assert uncropped.metrics["crop_scale"] is None and uncropped.metrics["crop_angle"] is None
    from engine.portrait.crop import stretched_input
    from engine.portrait.frames import to_rgb

    assert torch.equal(uncropped.feature, stretched_input(to_rgb(_stand_in_pixels()), "cpu"))
    assert [turned.metrics["source_crop"], uncropped.metrics["source_crop"]] == [
        "face box, upright by the 203 landmarks", None,
    ]  # fmt: skip


def test_the_source_is_cropped_from_insightfaces_106_points_where_it_finds_a_face(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_caches: None
) -> None:
    """Upstream crops the source around InsightFace's 106 points; where its models find no face there, ours crops
    around our detector's box and says so."""
    from test_portrait_insightface import layout_106

    from engine.portrait.crop import landmark_crop_transform

    face = (layout_106(9.0) - 96) / 3 + (80, 60)
    source, result = _stand_in_source(tmp_path, monkeypatch, landmarks=True, face_points=face)
    assert np.array_equal(source.transform.to_crop, landmark_crop_transform(face, 2.3, -0.125, 512).to_crop)
    assert source.metrics["source_crop"] == "insightface 106 points" and not any(
        "InsightFace" in w for w in result.warnings
    )
    missed, result = _stand_in_source(tmp_path, monkeypatch, landmarks=True, face_points=None)
    assert missed.metrics["source_crop"] == "face box, upright by the 203 landmarks"
    assert "InsightFace's detector found no face in the source: it is cropped around our detector's face box" in (
        result.warnings
    )
    whole, result = _stand_in_source(tmp_path, monkeypatch, landmarks=True, face_points=None, crop=False)
    assert whole.transform is None  # uncropped (upstream's calc_lmk_from_cropped_image): only its landmarks read there
    assert result.warnings[-1] == (
        "InsightFace's detector found no face in the source: its landmarks are read in our detector's face box"
    )


def test_networks_and_source_features_are_reused_only_for_what_made_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_caches: None
) -> None:
    """The same source and options again reuse both; another crop or source limit re-encodes the source with the
    same networks; another precision, or another batch size when compiled, loads the networks again, and networks
    loaded again drop every source encoded before (a source is never reused across a reload)."""

    def cached(**options: Any) -> dict[str, bool]:
        return _stand_in_source(tmp_path, monkeypatch, **options)[1].metrics["cache"]

    assert cached() == {"networks": False, "source": False}
    assert cached() == {"networks": True, "source": True}
    assert cached(scale=2.5) == {"networks": True, "source": False}
    assert cached(landmarks=True) == {"networks": True, "source": False}  # turned upright: other pixels
    assert cached(source_max_dim=1000) == {"networks": True, "source": False}
    assert cached(precision="fp16") == {"networks": False, "source": False}
    assert cached() == {"networks": False, "source": False}  # its source was encoded before the reload
    assert (tmp_path / "builds").read_text().split() == ["fp32", "fp16", "fp32"]
    assert cached(compile=True) == {"networks": False, "source": False}
    assert cached(compile=True, batch_size=2) == {"networks": False, "source": False}  # compiled for batches of 1
    assert cached(batch_size=2) == {"networks": False, "source": False}
    assert cached(batch_size=3) == {"networks": True, "source": True}  # eager networks take any batch
    assert cached(backend="onnx-trt", batch_size=2) == {"networks": False, "source": False}
    assert cached(backend="onnx-trt", batch_size=3) == {"networks": False, "source": False}  # one engine per batch


def test_every_source_crop_option_reaches_the_crop_and_paste_back_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_caches: None
) -> None:
    """--scale, --vx-ratio, --vy-ratio and --no-upright each shape the crop the networks see (none may be dropped on
    the way), and --no-paste-back gives the networks' 512x512 frames even from a stitched crop."""
    from engine.portrait.crop import crop_transform

    options = {"scale": 2.5, "vx_ratio": 0.1, "vy_ratio": -0.2, "upright": False}
    source, _ = _stand_in_source(tmp_path, monkeypatch, landmarks=True, **options)
    expected = crop_transform(STAND_IN_BOX, 2.5, -0.2, angle=7.0, vx=0.1, rotate=False)
    np.testing.assert_allclose(source.transform.to_crop, expected.to_crop, atol=1e-5)
    assert source.metrics["crop_angle"] == pytest.approx(0.0, abs=1e-9)  # tilted, not turned upright
    unpasted, _ = _stand_in_source(tmp_path, monkeypatch, paste_back=False)
    assert unpasted.transform is not None and unpasted.paste is None and unpasted.size == (512, 512)
    assert unpasted.metrics["pasted_back"] is False
    assert _stand_in_source(tmp_path, monkeypatch, compile=True)[0].metrics["compiled"] is True


def test_onnx_on_the_cpu_provider_runs_and_reports_fp32_on_a_gpu_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_caches: None
) -> None:
    """A GPU job asks for fp16 by default; --backend onnx-cpu runs fp32 there: the networks are built in fp32, the
    run says so and reports fp32 (not the fp16 asked), names the providers each network got, and makes its frames
    where the networks put them (the CPU), not on the job's GPU."""
    source, result = _stand_in_source(tmp_path, monkeypatch, precision="fp16", device="cuda", backend="onnx-cpu")
    assert (tmp_path / "builds").read_text().split() == ["fp32"]
    assert result.precision == "fp32"
    assert "onnx-cpu on cuda runs fp32 (fp16 needs the CUDA or TensorRT provider on a GPU)" in result.warnings
    assert result.metrics["providers"] == {"decoder": ["CPUExecutionProvider"]}
    assert source.device == torch.device("cpu") and source.original.device == torch.device("cpu")
    assert source.feature.device == torch.device("cpu")


def test_a_source_without_a_face_is_not_measured_for_its_openness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_caches: None
) -> None:
    """No face found: LivePortrait animates the whole source uncropped and, as the run says, without lip
    normalisation: the landmark model, even when there, has no face box to read and is not run."""
    source, _ = _stand_in_source(tmp_path, monkeypatch, landmarks=True, box=None, crop=False)
    assert source.openness is None and source.transform is None and source.size == (512, 512)


def test_a_run_names_both_kinds_of_unused_options() -> None:
    """The crop options with the crop off and the head offsets under absolute motion of the whole head, together."""
    from engine.core.results import RunResult
    from engine.portrait.liveportrait_plan import name_unused_options

    told = RunResult()
    config = PortraitConfig(ASSETS / "face.jpg", ASSETS / "face.jpg", crop=False, scale=2.5, relative=False, roll=3.0)
    name_unused_options(config, told)
    assert [w.split(":")[0] for w in told.warnings] == ["--scale changes nothing here", "--roll changes nothing here"]


def _liveportrait_plan(
    tmp_path: Path, config: PortraitConfig, monkeypatch: pytest.MonkeyPatch, measured: list[dict[str, np.ndarray]]
) -> tuple[list[tuple[int, int]], list[dict[str, np.ndarray]], dict[str, Any]]:
    """A LivePortrait split job's plan over `measured` segments of `config`'s clip, its clip motion and keypoints
    stood in: what the clip's motion was asked for, and driving keypoints whose every row is its frame's index."""
    import engine.portrait.segments as segments
    from engine.portrait.driving import Driving
    from engine.portrait.liveportrait_plan import Source

    asked: dict[str, Any] = {}

    def clip_motion(config: PortraitConfig, settings: Settings, nets: Any, info: Any, box: np.ndarray,
                    reference: int, landmarks: Any, *rest: Any) -> Driving:  # fmt: skip
        asked.update(box=box, reference=reference, landmarks=landmarks)
        return Driving(_level_motion(torch.zeros(5, 3, 8, 8)), 25.0, 5, reference=reference)

    def keypoints(head: Any, source: Any, driving: Driving, template: Path | None) -> tuple[torch.Tensor, ...]:
        asked["template"] = template
        return torch.arange(5.0)[:, None, None].expand(5, 21, 3), torch.zeros(1, 21, 3)

    monkeypatch.setattr(segments, "clip_motion", clip_motion)
    monkeypatch.setattr(segments, "keypoints", keypoints)
    split = _planning_segments(tmp_path, config, monkeypatch)
    split.source = Source.__new__(Source)
    split.source.landmark_model, split.source.nets = _RecordingLandmarks(), None
    final, states = split.plan([(0, 2), (2, None)], measured, _quiet)
    return final, states, asked


def test_a_liveportrait_split_job_hands_each_segment_its_own_frames_measured_against_the_first_face(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LivePortrait's split plan: the clip's motion is measured against its first face frame (2 here, not 0) in the
    box averaged over the faces found, each segment gets its own frames' driving keypoints (no frame twice, none
    dropped at the bound) with the source's, and a saved template has its openness measured and is written beside
    the output."""
    clip = _grey_clip(tmp_path / "five.mp4", 5)
    faces = np.array([[i, 0.0, i + 8.0, 8.0] for i in range(5)], np.float32)
    found = np.array([False, False, True, False, True])
    measured = [{"boxes": faces[a:b], "found": found[a:b]} for a, b in ((0, 2), (2, 5))]
    config = PortraitConfig(ASSETS / "face.jpg", clip)
    final, states, asked = _liveportrait_plan(tmp_path, config, monkeypatch, measured)
    assert final == [(0, 2), (2, 5)] and asked["reference"] == 2
    assert asked["box"].tolist() == [3.0, 0.0, 11.0, 8.0]  # frames 2 and 4's faces, averaged
    assert [s["x"][:, 0, 0].tolist() for s in states] == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    assert all(s["x_source"].shape == (1, 21, 3) for s in states)
    assert asked["landmarks"] is None and asked["template"] is None
    _, _, saving = _liveportrait_plan(tmp_path, replace(config, save_template=True), monkeypatch, measured)
    assert saving["template"] == tmp_path / "out.npz" and saving["landmarks"] is not None


def test_max_frames_bounds_every_pass_over_the_driving_clip_and_the_split_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-frames 4 of a five-frame clip: the scan follows the landmarks of frames 2 and 3 only (frame 4 is not
    rendered, so neither its face nor its points move the crop box), a split job's parent follows as many, its
    open-ended last segment scans no frame past the cut, and its layout spans the frames kept. A header without a
    frame count is laid out by its duration."""
    from engine.core.media import VideoInfo
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion, followed_landmarks

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, detector = Settings(data_dir=tmp_path, weights_dir=tmp_path), SimpleNamespace(detect=_faces_from_frame_2)
    config = PortraitConfig(ASSETS / "face.jpg", clip, crop_driving=True, max_frames=4, batch_size=2)
    landmarks = _RecordingLandmarks()
    driving = driving_motion(config, settings, nets, detector, landmarks, RunResult(), _quiet, measure_openness=False)
    assert driving.count == 4 and landmarks.reads == [("box", 2, (2.0, 3.0, 60.0, 62.0)), ("follow", 3, 2)]
    face = np.float32([2, 3, 60, 62])
    assert len(followed_landmarks(config, settings, 2, face, _RecordingLandmarks(), RunResult())) == 2  # type: ignore[arg-type]
    split = _planning_segments(tmp_path, replace(config, max_frames=3), monkeypatch)
    split.head.detector = detector
    assert split.measure(2, None, _quiet)["found"].tolist() == [True]
    monkeypatch.setattr(split, "_prepare", lambda progress: None)
    assert split.setup(_quiet)["frames"] == 3
    split.config = split.head.config = replace(config, max_frames=None)
    split.info = VideoInfo(64, 64, 25.0, None, 2.0, False, "h264")  # no frame count: 2 s at 25 fps
    assert split.setup(_quiet)["frames"] == 50


def test_every_pass_over_a_headerless_driving_stream_holds_the_seconds_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw stream has no duration for its header to be refused by: each pass that reads it (a segment's face
    scan, the parent's landmark following, the motion) counts its frames and stops at AVATARBENCH_MAX_SECONDS
    rather than decoding all of it."""
    from engine.core.results import RunResult
    from engine.portrait.driving import clip_motion, followed_landmarks

    clip = _raw_h264(tmp_path / "raw.mp4", 60)  # 2.4 s
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path, max_seconds=1.0)
    config, box = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2), np.float32([8, 8, 56, 56])
    said = r"longer than the limit of 1 s"
    with pytest.raises(InputError, match=said):
        followed_landmarks(config, settings, 0, box, _RecordingLandmarks(), RunResult())  # type: ignore[arg-type]
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    with pytest.raises(InputError, match=said):
        clip_motion(config, settings, nets, probe_video(clip), box, 0, None, RunResult(), _quiet)
    split = _planning_segments(tmp_path, config, monkeypatch)
    split.settings, split.head.detector = settings, SimpleNamespace(detect=lambda images: [np.zeros((0, 5))])
    with pytest.raises(InputError, match=said):
        split.measure(0, None, _quiet)


def test_the_driving_face_box_is_the_mean_of_the_faces_found() -> None:
    """The clip's face box averages every face found (frames without one left out), not the middle one nor the
    first; the reference is the first frame with a face."""
    from engine.portrait.driving import clip_box

    boxes = [None, np.float32([0, 0, 10, 10]), np.float32([0, 0, 10, 10]), None, np.float32([30, 3, 40, 13])]
    box, first = clip_box(boxes, "d.mp4")
    assert box.tolist() == [10.0, 1.0, 20.0, 11.0] and first == 1


def test_a_followed_face_is_said_to_leave_the_picture_by_its_centre_on_either_axis() -> None:
    """A wide frame (160 x 64): a face on its right (x 100, beyond the height) is in the picture; a face half past
    the left edge, its centre in, is in too; a face whose centre is below the picture has left it, at that frame."""
    from tiny_onnx import landmark_layout

    from engine.core.results import RunResult
    from engine.portrait.driving import LandmarkTrack

    face = landmark_layout() * 40 - landmark_layout().mean(0) * 40  # 40 pixels wide, centred on (0, 0)
    centres = [(100.0, 30.0), (2.0, 30.0), (100.0, 80.0), (100.0, 30.0), (100.0, 90.0)]
    assert (face + centres[1]).min(0)[0] < 0  # half out of the picture: points past the left edge
    walk = iter([(face + c).astype(np.float32) for c in centres])

    class Walking:
        """Reads the next face of the walk, in a box or following."""

        def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
            return next(walk)

        def following(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
            return next(walk)

    result, frame = RunResult(), np.zeros((64, 160, 3), np.uint8)
    track = LandmarkTrack(Walking(), result)  # type: ignore[arg-type]
    track.add(frame, np.float32([80, 10, 120, 50]), 0)
    track.add(frame, None, 1)
    assert result.warnings == [] and track.left_at is None
    for index in range(2, 5):
        track.add(frame, None, index)
    assert track.left_at == 2 and len(result.warnings) == 1 and "left the picture at frame 2 " in result.warnings[0]


def test_a_clip_starting_on_its_face_is_not_warned_of_its_reference_frame(tmp_path: Path) -> None:
    """Relative motion against frame 0, the clip's first, is upstream's behaviour: nothing to say."""
    from engine.core.results import RunResult
    from engine.portrait.driving import clip_motion

    clip = _grey_clip(tmp_path / "three.mp4", 3)
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    settings, result = Settings(data_dir=tmp_path, weights_dir=tmp_path), RunResult()
    config = PortraitConfig(ASSETS / "face.jpg", clip, relative=True, batch_size=2)
    clip_motion(config, settings, nets, probe_video(clip), np.float32([0, 0, 64, 64]), 0, None, result, _quiet)
    assert result.warnings == []


def test_a_driving_clips_landmarks_and_motion_are_read_in_rgb(tmp_path: Path) -> None:
    """A clip's frames are decoded in BGR for the detector; its landmarks (the scan's, a split parent's following,
    the frames' before the face) and its motion are read in RGB, as upstream's. A blue clip: its blue last."""
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion, followed_landmarks

    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 0] = 255  # BGR
    clip = _video(tmp_path / "blue.mp4", [blue] * 3)
    seen: list[list[float]] = []

    class Seeing(_RecordingLandmarks):
        def _points(self, rgb: np.ndarray) -> np.ndarray:
            seen.append(rgb.reshape(-1, 3).mean(0).round().tolist())
            return super()._points(rgb)

    motion_seen: list[np.ndarray] = []

    def motion(tensor: torch.Tensor) -> Any:
        motion_seen.append(tensor.mean(dim=(0, 2, 3)).numpy() * 255)
        return _level_motion(tensor)

    def from_frame_1(images: list[np.ndarray]) -> list[np.ndarray]:
        return [np.array([[8.0, 9.0, 50.0, 55.0, 0.9]], np.float32) for _ in images]

    nets = SimpleNamespace(motion=motion, device=torch.device("cpu"))
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path)
    config = PortraitConfig(ASSETS / "face.jpg", clip, batch_size=2)  # square, taken whole: the motion sees blue
    driving_motion(config, settings, nets, SimpleNamespace(detect=from_frame_1), Seeing(), RunResult(), _quiet)
    followed_landmarks(config, settings, 0, np.float32([8, 9, 50, 55]), Seeing(), RunResult())  # type: ignore[arg-type]
    assert len(seen) == 6 and all(mean == [0.0, 0.0, 255.0] for mean in seen)
    assert len(motion_seen) == 2 and all(m[0] < 1 and m[2] > 254 for m in motion_seen)


def test_a_driving_input_over_the_runs_size_limit_is_refused_before_any_work(tmp_path: Path) -> None:
    """AVATARBENCH_MAX_SIDE 64: a 96 x 80 driving image or clip is refused by its size, before a face is looked for
    (the image was read to the loader's own 4096 limit, the clip's header never checked)."""
    from engine.core.media import MediaError
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion

    frame = np.full((80, 96, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), frame)
    clip = _video(tmp_path / "wide.mp4", [frame] * 2)
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path, max_side=64)
    nothing = SimpleNamespace(detect=lambda images: pytest.fail("a face looked for"))
    for driver in (tmp_path / "wide.png", clip):
        config = PortraitConfig(ASSETS / "face.jpg", driver, batch_size=1)
        with pytest.raises(MediaError, match=r"96x80, larger than the limit of 64 pixels"):
            driving_motion(config, settings, None, nothing, None, RunResult(), _quiet)


def test_a_cropped_driving_image_is_cropped_by_its_landmarks_even_without_openness(tmp_path: Path) -> None:
    """Upstream crops a driving image by its landmarks' box; the landmarks are read for that crop alone where no
    openness is asked (and then none is measured), and not at all for a square image taken whole."""
    from engine.core.results import RunResult
    from engine.portrait.driving import driving_motion

    cv2.imwrite(str(tmp_path / "wide.png"), np.full((64, 80, 3), 40, np.uint8))
    cv2.imwrite(str(tmp_path / "square.png"), np.full((64, 64, 3), 40, np.uint8))
    nets = SimpleNamespace(motion=_level_motion, device=torch.device("cpu"))
    detector = SimpleNamespace(detect=lambda images: [np.array([[8.0, 9.0, 50.0, 55.0, 0.9]], np.float32)])
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path)
    for name, reads, made in (("wide.png", 1, "followed landmarks"), ("square.png", 0, "none (taken whole)")):
        landmarks, result = _RecordingLandmarks(), RunResult()
        config = PortraitConfig(ASSETS / "face.jpg", tmp_path / name)
        still = driving_motion(config, settings, nets, detector, landmarks, result, _quiet, measure_openness=False)
        assert still.image and still.openness is None
        assert len(landmarks.reads) == reads and result.metrics["driving_crop"] == made


def test_a_split_job_reports_the_frames_it_wrote_and_their_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 frames in 2 s: 5 frames a second, at the clip's frame rate, with the encoder that wrote them."""
    config = PortraitConfig(ASSETS / "face.jpg", _grey_clip(tmp_path / "c.mp4", 2), engine="baseline")
    split = _planning_segments(tmp_path, config, monkeypatch)
    split.head.report = lambda metrics: None
    metrics = split.report(10, 2.0, SimpleNamespace(codec="libx264")).metrics
    assert (metrics["frames"], metrics["fps"], metrics["frames_per_second"], metrics["encoder"]) == (
        10, 25.0, 5.0, "libx264",
    )  # fmt: skip


def test_a_split_jobs_sound_is_cut_to_the_frames_it_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-frames 10 of a 1 s clip with sound: the split job's output carries 0.4 s of it, the frames' length, as
    the unsplit run's does, not the clip's whole second."""
    from engine.core.audio import load_audio

    clip = _clip_with_sound(tmp_path / "clip.mp4", 0.0)
    config = PortraitConfig(ASSETS / "face.jpg", clip, engine="baseline", max_frames=10)
    split = _planning_segments(tmp_path, config, monkeypatch)
    split.count, split.head.source_bgr = 10, np.zeros((64, 64, 3), np.uint8)
    writer = split.output_writer(tmp_path / "out.mp4")
    for _ in range(10):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.close()
    assert abs(len(load_audio(tmp_path / "out.mp4")) / 16000 - 0.4) < 0.03


def test_a_split_job_takes_the_parents_batch_size_and_refuses_what_the_unsplit_run_refuses(
    tmp_path: Path, no_weights: Settings
) -> None:
    """A segment joining on another device keeps the parent's batch size (the segments' bounds are laid out on it);
    a driving image is not split; a driving clip over the run's limits is refused before any frame is read."""
    from engine.core.media import MediaError
    from engine.portrait.segments import PortraitSegments

    clip = _grey_clip(tmp_path / "five.mp4", 5)
    config = PortraitConfig(ASSETS / "face.jpg", clip, engine="baseline")
    joined = PortraitSegments(config, tmp_path / "o.mp4", no_weights, "cpu")
    joined.join({"batch_size": 3}, _quiet)
    assert joined._ready().config.batch_size == 3
    image = PortraitSegments(replace(config, driving=ASSETS / "face.jpg"), tmp_path / "o.mp4", no_weights, "cpu")
    with pytest.raises(PortraitError, match=r"face\.jpg: only a driving video is split into segments"):
        image.setup(_quiet)
    short = replace(no_weights, max_seconds=0.1)
    with pytest.raises(MediaError, match=r"five\.mkv lasts 0\.2 s, longer than the limit of 0\.1 s"):
        PortraitSegments(config, tmp_path / "o.mp4", short, "cpu").setup(_quiet)


def test_a_segment_renders_its_planned_motion_and_counts_its_own_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames 16..19 from their planned head motion and flow, written in order; its progress ends at its own 4 of
    4 frames."""
    import engine.portrait.segments as segments

    config = PortraitConfig(ASSETS / "face.jpg", _grey_clip(tmp_path / "c.mp4", 2), engine="baseline")
    split = _planning_segments(tmp_path, config, monkeypatch)
    split.head.box = np.float32([0, 0, 8, 8])
    given: dict[str, Any] = {}

    def batches(config: PortraitConfig, source: Any, box: Any, head: Any, flow: Any, result: Any) -> Any:
        given.update(head=head, flow=flow)
        return [torch.full((2, 3, 8, 8), i / 4) for i in (1, 2)]

    monkeypatch.setattr(segments, "baseline_batches", batches)
    written: list[np.ndarray] = []
    told: list[tuple[float, str]] = []
    state = {"head": np.arange(16, 20), "flow": -np.arange(16, 20)}
    split.render(16, 20, state, SimpleNamespace(write=written.append), lambda f, s: told.append((f, s)))
    assert given["head"].tolist() == [16, 17, 18, 19] and given["flow"].tolist() == [-16, -17, -18, -19]
    assert [int(frame[0, 0, 0]) for frame in written] == [63, 63, 127, 127] and told[-1] == (1.0, "frame 4/4")
