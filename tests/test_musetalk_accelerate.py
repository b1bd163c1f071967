"""MuseTalk's fast paths (accelerate.py): the UNet + decoder step run eagerly, compiled, as CUDA graphs, through
ONNX Runtime or TensorRT, at a fixed batch shape.

Small random networks in upstream's layout (random_weights.py), fp32 on the CPU; the GPU case runs only with CUDA.
The frames compared are the step's uint8 faces, so "within N grey levels" is what a viewer would see.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_cuda import FakeCuda
from test_musetalk_lipsync import speech_file

from engine.core.errors import InputError
from engine.core.results import RunResult
from engine.core.settings import Settings, load_settings
from engine.lipsync.musetalk.accelerate import (
    RUNTIMES,
    STEP_STAGE,
    FaceStep,
    OnnxStep,
    check_runtime,
    make_step,
)
from engine.lipsync.musetalk.geometry import decoded_to_bgr, decoder_latents
from engine.lipsync.musetalk.random_weights import write_random_weights
from engine.lipsync.musetalk.weights import MuseTalkNetworks, load_networks, require
from engine.runtimes.base import RuntimeUnavailable

ROOT = Path(__file__).resolve().parent.parent
BATCH = 3


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("musetalk_accelerate") / "models")


def _networks(weights: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> MuseTalkNetworks:
    base = weights.parent
    files = require(Settings(data_dir=base, weights_dir=base / "weights"), weights)
    return load_networks(files, device, dtype)


@pytest.fixture(scope="module")
def networks(weights: Path) -> MuseTalkNetworks:
    return _networks(weights)


def _inputs(networks: MuseTalkNetworks, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and prompts of the step's real shapes (8x32x32, 50 prompt rows of the UNet's width)."""
    generator = torch.Generator().manual_seed(seed)
    width = networks.unet.config.cross_attention_dim
    latents = torch.randn(rows, 8, 32, 32, generator=generator)
    prompts = torch.randn(rows, 50, width, generator=generator)
    return latents.to(networks.device, networks.dtype), prompts.to(networks.device, networks.dtype)


def _levels(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.cpu().int() - b.cpu().int()).abs().max())


def test_the_config_offers_exactly_these_runtimes() -> None:
    from engine.core.options import fields
    from engine.lipsync.config import LipSyncConfig

    option = {f.name: f.option for f in fields(LipSyncConfig)}["musetalk_runtime"]
    assert tuple(option.choices) == RUNTIMES and LipSyncConfig.musetalk_runtime == "eager"


def test_eager_is_the_unet_then_the_decoder_as_before(networks) -> None:
    """The step is the exact operations generate.py ran before it (bit for bit), at any batch size, and eager times
    the UNet and the decoder as their own stages."""
    latents, prompts = _inputs(networks, 2)
    with torch.inference_mode():
        vae = networks.vae
        predicted = networks.unet(latents, torch.tensor([0]), encoder_hidden_states=prompts).sample
        before = decoded_to_bgr(vae.decode(decoder_latents(predicted, vae.config.scaling_factor)).sample)
        result = RunResult()
        faces, finite = make_step(networks, "eager", BATCH)(latents, prompts, result)
        assert torch.equal(FaceStep(networks.unet, networks.vae)(latents, prompts)[0], before)
    assert torch.equal(faces, before) and faces.shape == (2, 256, 256, 3) and faces.dtype == torch.uint8
    assert finite.tolist() == [True, True]
    assert {stage.name for stage in result.stages} == {"unet", "vae decode"}


class _LatentsAsImage(torch.nn.Module):
    """The UNet stood in for: it records the timestep it is given and predicts the masked latents unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.timesteps: list[torch.Tensor] = []

    def forward(self, latents, timestep, encoder_hidden_states):
        self.timesteps.append(timestep.clone())
        return SimpleNamespace(sample=latents[:, :4])


class _RecordingDecoder(torch.nn.Module):
    """The VAE stood in for (scaling factor 0.5): it records the latents it decodes and returns images of 0.5."""

    dtype = torch.float32

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=0.5)
        self.decoded: list[torch.Tensor] = []

    def decode(self, latents):
        self.decoded.append(latents.clone())
        return SimpleNamespace(sample=torch.full((latents.shape[0], 3, 4, 4), 0.5))


def test_the_step_runs_the_unet_at_timestep_0_unscales_by_the_vaes_factor_and_flags_any_bad_pixel(
    monkeypatch,
) -> None:
    """Guards FaceStep's numerics: upstream's one UNet step is timestep 0, the prediction is multiplied by 1 / the
    VAE's own scaling factor before decoding, and one non-finite value anywhere in a decoded face (here the blue
    channel of one pixel) flags that face, not a whole batch and not only faces that are non-finite throughout."""
    unet, vae = _LatentsAsImage(), _RecordingDecoder()
    step = FaceStep(unet, vae)
    latents = torch.arange(3 * 8 * 2 * 2, dtype=torch.float32).reshape(3, 8, 2, 2)
    faces, finite = step(latents, torch.zeros(3, 50, 4))
    assert [t.tolist() for t in unet.timesteps] == [[0]]
    assert torch.equal(vae.decoded[0], (1 / 0.5) * latents[:, :4])
    assert faces.shape == (3, 4, 4, 3) and faces.dtype == torch.uint8 and finite.tolist() == [True, True, True]

    def one_bad_pixel(latents):
        images = torch.full((latents.shape[0], 3, 4, 4), 0.5)
        images[1, 2, 3, 1] = float("inf")
        return SimpleNamespace(sample=images)

    monkeypatch.setattr(vae, "decode", one_bad_pixel)
    assert step(latents, torch.zeros(3, 50, 4))[1].tolist() == [True, False, True]


def test_tensorrt_without_its_provider_is_refused_naming_what_this_onnxruntime_offers(monkeypatch) -> None:
    """Guards the TensorRT check before any work: onnxruntime-gpu without TensorrtExecutionProvider would otherwise
    export the step and then fail (or run on CUDA while the result says tensorrt)."""
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(RuntimeUnavailable, match=r"built with TensorrtExecutionProvider \(this onnxruntime offers "
                                                 r"CUDAExecutionProvider, CPUExecutionProvider\)"):  # fmt: skip
        check_runtime("tensorrt", torch.device("cuda"), torch.float16)
    check_runtime("onnx", torch.device("cuda"), torch.float16)  # the CUDA provider is enough for onnx


def test_compile_pads_every_batch_to_one_shape_and_cuts_it_back(networks, monkeypatch) -> None:
    """torch.compile(dynamic=False) sees the batch size only: a short batch is padded with its last row and the
    padding's faces dropped (the compiler is stood in for here: the real one is the slow test below)."""
    seen: list[tuple[int, ...]] = []
    asked: dict = {}

    def fake_compile(module, **options):
        asked.update(options)

        def run(latents, prompts):
            seen.append(tuple(latents.shape))
            return module(latents, prompts)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    step = make_step(networks, "compile", BATCH)
    latents, prompts = _inputs(networks, BATCH)
    result = RunResult()
    full, short = step(latents, prompts, result).faces, step(latents[:1], prompts[:1], result).faces
    eager = make_step(networks, "eager", BATCH)(latents, prompts).faces
    assert asked == {"dynamic": False} and seen == [(BATCH, 8, 32, 32)] * 2
    assert torch.equal(full, eager) and torch.equal(short, eager[:1])
    assert [stage.name for stage in result.stages] == ["compile", STEP_STAGE]
    step.report(result)
    assert result.metrics["musetalk_runtime"] == "compile"


@pytest.mark.slow  # torch.compile's inductor takes about 4 minutes on a 2-core CPU
def test_compiled_faces_match_eager_within_one_grey_level(networks) -> None:
    latents, prompts = _inputs(networks, BATCH)
    eager = make_step(networks, "eager", BATCH)(latents, prompts).faces
    step = make_step(networks, "compile", BATCH)
    assert _levels(step(latents, prompts).faces, eager) <= 1
    assert _levels(step(latents[:2], prompts[:2]).faces, eager[:2]) <= 1  # the last, short batch: the same graph


def test_onnx_on_the_cpu_matches_eager_for_full_and_short_batches(networks, tmp_path) -> None:
    latents, prompts = _inputs(networks, BATCH, seed=1)
    eager = make_step(networks, "eager", BATCH)(latents, prompts).faces
    step = make_step(networks, "onnx", BATCH, cache_dir=tmp_path)
    result = RunResult()
    full = step(latents, prompts, result).faces
    short = step(latents[1:2], prompts[1:2], result).faces
    assert full.shape == (BATCH, 256, 256, 3) and full.dtype == torch.uint8 and short.shape == (1, 256, 256, 3)
    assert _levels(full, eager) <= 2 and _levels(short, eager[1:2]) <= 2
    assert [stage.name for stage in result.stages] == ["onnx export + session", STEP_STAGE]
    step.report(result)
    assert result.metrics["musetalk_runtime"] == "onnx"
    assert result.metrics["musetalk_runtime_ran_on"] == "CPUExecutionProvider" and not result.warnings
    exported = Path(result.metrics["musetalk_onnx"])
    assert exported.is_file() and exported.parent.parent == tmp_path / "musetalk-onnx"
    assert result.metrics["musetalk_onnx_exported"]
    assert not step.metrics()["musetalk_onnx_exported"]  # reported: the next run served by this step exports nothing


def test_a_face_that_decodes_to_nan_is_flagged_by_eager_and_onnx(networks, tmp_path) -> None:
    """fp16 overflow stood in for by a NaN latent: that row's flag is False, the others' True, on both paths (the
    flag is part of the exported graph, so ONNX Runtime computes it too)."""
    latents, prompts = _inputs(networks, BATCH, seed=5)
    latents[1, 0, 3, 4] = float("nan")
    eager = make_step(networks, "eager", BATCH)(latents, prompts)
    onnx = make_step(networks, "onnx", BATCH, cache_dir=tmp_path)(latents, prompts)
    assert eager.finite.tolist() == onnx.finite.tolist() == [True, False, True]
    assert eager.finite.dtype == onnx.finite.dtype == torch.bool
    assert _levels(onnx.faces[::2], eager.faces[::2]) <= 2


def test_generate_keeps_the_avatar_frame_where_the_face_decoded_to_nan(networks) -> None:
    """A frame whose decoded face is not finite shows its avatar frame unchanged (not the arbitrary pixels NaN
    converts to), the others are generated as before, and the result warns once with the count."""
    from engine.core.media import load_image
    from engine.lipsync.musetalk.avatar import prepare_avatar
    from engine.lipsync.musetalk.generate import generate
    from engine.lipsync.musetalk.run import FixedBox

    face = load_image(ROOT / "assets" / "face.jpg")
    avatar = prepare_avatar([face, np.roll(face, 4, axis=1)], networks, detector=FixedBox((170, 60, 285, 200)))
    speech = (0.3 * np.sin(np.arange(3200) / 16000 * 2 * np.pi * 180)).astype(np.float32)
    clean = list(generate(avatar, speech, 25.0, networks, 2))
    latents = avatar.latents.clone()
    latents[avatar.latent_rows[1], 0, 0, 0] = float("nan")
    broken, result = dataclasses.replace(avatar, latents=latents), RunResult()
    frames = list(generate(broken, speech, 25.0, networks, 2, result=result))
    sources = [avatar.source_frame(i) for i in range(len(frames))]
    assert len(frames) == 5 and sources.count(1) == 2
    for frame, before, source in zip(frames, clean, sources, strict=True):
        if source == 1:
            assert np.array_equal(frame, avatar.frames[1])
        else:
            assert np.array_equal(frame, before) and not np.array_equal(frame, avatar.frames[0])
    assert result.warnings == [
        "MuseTalk gave NaN or infinite values for 2 of 5 frames; they keep the avatar's own pixels (not a matter of "
        "range at this precision: the weights or the inputs hold NaN or infinite values)"  # fp32: no use advising it
    ]


def test_the_export_is_reused_and_made_again_when_the_weights_change(networks, weights, tmp_path) -> None:
    latents, prompts = _inputs(networks, BATCH, seed=2)
    first = make_step(networks, "onnx", BATCH, cache_dir=tmp_path)
    faces = first(latents, prompts).faces
    path = Path(first.metrics()["musetalk_onnx"])
    stamp = path.stat().st_mtime_ns

    again = make_step(networks, "onnx", BATCH, cache_dir=tmp_path)  # another worker, the same weights
    assert torch.equal(again(latents, prompts).faces, faces)
    assert again.metrics()["musetalk_onnx"] == str(path) and not again.metrics()["musetalk_onnx_exported"]
    assert path.stat().st_mtime_ns == stamp

    unet = _networks(weights).unet  # a fresh copy, one tensor changed
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)
    changed = dataclasses.replace(networks, unet=unet)
    other = make_step(changed, "onnx", BATCH, cache_dir=tmp_path)
    moved = other(latents, prompts).faces
    assert other.metrics()["musetalk_onnx_exported"] and other.metrics()["musetalk_onnx"] != str(path)
    assert _levels(moved, make_step(changed, "eager", BATCH)(latents, prompts).faces) <= 2
    assert _levels(moved, faces) > 2  # the new export holds the new weights
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "musetalk-onnx").iterdir()) == ["fp32", "fp32"]


def test_another_batch_size_is_another_export(networks, tmp_path) -> None:
    latents, prompts = _inputs(networks, 2, seed=3)
    two = make_step(networks, "onnx", 2, cache_dir=tmp_path)
    one = make_step(networks, "onnx", 1, cache_dir=tmp_path)
    assert _levels(two(latents, prompts).faces[1:], one(latents[1:], prompts[1:]).faces) <= 1  # batched rounding
    assert two.metrics()["musetalk_onnx"] != one.metrics()["musetalk_onnx"]


@pytest.mark.parametrize(
    ("runtime", "needs"),
    [
        ("cuda-graphs", "needs a CUDA GPU"),
        ("tensorrt", "needs a CUDA GPU and onnxruntime-gpu with TensorRT's libraries"),
    ],
)
def test_cuda_only_runtimes_say_what_they_need_on_a_cpu(networks, runtime, needs) -> None:
    with pytest.raises(RuntimeUnavailable, match=needs):
        check_runtime(runtime, torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeUnavailable, match=needs):
        make_step(networks, runtime, BATCH)


def test_bad_runtimes_and_precisions_are_input_errors(networks) -> None:
    with pytest.raises(InputError, match="unknown MuseTalk runtime 'fast'; accepted: eager, compile, cuda-graphs"):
        make_step(networks, "fast", BATCH)
    with pytest.raises(InputError, match=r"runs fp32 \(on the CPU\), not torch.float16"):
        check_runtime("onnx", torch.device("cpu"), torch.float16)
    with pytest.raises(InputError, match=r"runs fp32 or fp16, not torch\.bfloat16"):
        check_runtime("onnx", torch.device("cuda"), torch.bfloat16)
    with pytest.raises(ValueError, match="a batch of 4 rows for a step of batch size 3"):
        make_step(networks, "eager", BATCH)(*_inputs(networks, 4))


def test_a_fallen_back_provider_is_a_warning_for_onnx_and_an_error_for_tensorrt(networks, tmp_path,
                                                                                monkeypatch) -> None:  # fmt: skip
    """ONNX Runtime runs on the CPU when the CUDA or TensorRT libraries do not load; OrtSession says so, and the
    step reports it as ONNX eval does (onnx) or refuses (tensorrt). The session is stood in for: no GPU here."""
    from engine.runtimes import ort_session

    class FellBack(ort_session.OrtSession):
        def __init__(self, path, options):
            super().__init__(path, dataclasses.replace(options, provider="cpu"))
            self.options, self.fell_back = options, True
            self.fallback_reason = "libcudnn.so.9: cannot open shared object file"

    monkeypatch.setattr(ort_session, "OrtSession", FellBack)
    latents, prompts = _inputs(networks, BATCH)
    onnx = OnnxStep(networks, BATCH, "onnx", tmp_path)
    onnx.provider = "cuda"  # as on a GPU
    onnx(latents, prompts)
    result = RunResult()
    onnx.report(result)
    assert result.warnings == [
        "WARNING: CUDAExecutionProvider was requested but the MuseTalk onnx step runs on CPUExecutionProvider "
        "(libcudnn.so.9: cannot open shared object file); its figures measure CPUExecutionProvider, not "
        "CUDAExecutionProvider"
    ]
    trt = OnnxStep(networks, BATCH, "onnx", tmp_path)
    trt.name, trt.provider = "tensorrt", "trt"
    with pytest.raises(RuntimeUnavailable, match=r"asked for TensorrtExecutionProvider but .*\(libcudnn\.so\.9"):
        trt(latents, prompts)


def test_a_step_made_for_other_networks_or_batch_size_is_refused(networks) -> None:
    from engine.lipsync.musetalk.generate import generate

    step = make_step(networks, "eager", 2)
    speech = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 180).astype(np.float32) * 0.3

    class Avatar:
        latents = torch.zeros(1, 8, 32, 32)

    with pytest.raises(InputError, match="made for other networks or batch size 2, not 3"):
        generate(Avatar(), speech, 25.0, networks, 3, runtime=step)  # type: ignore[arg-type]


def test_generate_streams_the_same_frames_through_onnx(networks, tmp_path) -> None:
    """generate() with runtime="onnx": 0.2 s of speech is 5 frames, in batches of 2 and a short last one; the
    blended frames stay within the faces' grey levels of eager's, and the result says which path ran."""
    from engine.core.media import load_image
    from engine.lipsync.musetalk.avatar import prepare_avatar
    from engine.lipsync.musetalk.generate import generate
    from engine.lipsync.musetalk.run import FixedBox

    face = load_image(ROOT / "assets" / "face.jpg")
    avatar = prepare_avatar([face, np.roll(face, 4, axis=1)], networks, detector=FixedBox((170, 60, 285, 200)))
    speech = (0.3 * np.sin(np.arange(3200) / 16000 * 2 * np.pi * 180)).astype(np.float32)
    eager = list(generate(avatar, speech, 25.0, networks, 2))
    result = RunResult()
    onnx = list(generate(avatar, speech, 25.0, networks, 2, result=result, runtime="onnx", cache_dir=tmp_path))
    assert len(onnx) == len(eager) == 5
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(onnx, eager, strict=True)) <= 2
    assert result.metrics["musetalk_runtime"] == "onnx"
    assert {s.name: s.items for s in result.stages}[STEP_STAGE] == 3  # batches 2 (the first is the export's), 1


# --------------------------------------------------------------------------- end to end


def test_lipsync_with_onnx_makes_the_video_and_says_which_path_ran(weights, tmp_path) -> None:
    """`avatarbench lipsync --engine musetalk --musetalk-runtime onnx`: 0.5 s of speech is 13 frames, batches of
    2 (the CPU's default), so the last batch is short; the export lands in the settings' cache folder."""
    from engine.core.media import read_frames
    from engine.lipsync.config import LipSyncConfig
    from engine.lipsync.musetalk import run
    from engine.lipsync.pipeline import run_lipsync

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    config = LipSyncConfig(face=ROOT / "assets" / "face.jpg", audio=speech_file(tmp_path / "speech.wav", 0.5),
                           engine="musetalk", musetalk_weights=str(weights), box=(170, 60, 285, 200),
                           musetalk_runtime="onnx")  # fmt: skip
    result = run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu")
    assert len(list(read_frames(tmp_path / "out.mp4"))) == result.metrics["frames"] == 13
    assert result.metrics["musetalk_runtime"] == "onnx" and result.metrics["batch_size"] == 2
    assert result.metrics["musetalk_runtime_ran_on"] == "CPUExecutionProvider"
    assert Path(result.metrics["musetalk_onnx"]).is_relative_to(settings.cache_dir / "musetalk-onnx")
    stages = {stage.name for stage in result.stages}
    assert {"onnx export + session", STEP_STAGE, "blend"} <= stages and not stages & {"unet", "vae decode"}
    # The next clip in this worker keeps the session: no export stage, the export not made again.
    second = run_lipsync(config, tmp_path / "second.mp4", settings, device="cpu")
    assert "onnx export + session" not in {stage.name for stage in second.stages}
    assert not second.metrics["musetalk_onnx_exported"] and len(run.STEPS) == 1


def test_lipsync_with_cuda_graphs_on_a_cpu_stops_before_any_work(weights, tmp_path) -> None:
    from engine.lipsync.config import LipSyncConfig
    from engine.lipsync.pipeline import run_lipsync

    config = LipSyncConfig(face=ROOT / "assets" / "face.jpg", audio=speech_file(tmp_path / "speech.wav", 0.3),
                           engine="musetalk", musetalk_weights=str(weights), box=(170, 60, 285, 200),
                           musetalk_runtime="cuda-graphs")  # fmt: skip
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    with pytest.raises(RuntimeUnavailable, match="cuda-graphs MuseTalk runtime needs a CUDA GPU"):
        run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu")
    assert not (tmp_path / "out.mp4").exists()


def test_cuda_graphs_replay_each_batch_on_its_own_inputs_on_the_steps_card(
    networks: MuseTalkNetworks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.cuda faked, the step's own networks on the CPU: a replay reads the graph's static input buffers, so a
    batch not copied into them got the first batch's faces; its static outputs are overwritten by the next replay,
    so a batch not cloned out of them became the next one's faces (the GPU test compares one batch at a time, its
    second a row of its first, and sees neither). Warm-up runs go on a side stream before the one capture; the
    capture and every replay run with the step's card current ("cuda:1" would capture nothing on card 0)."""
    import engine.lipsync.musetalk.accelerate as accelerate

    cuda = FakeCuda(monkeypatch)
    monkeypatch.setattr(accelerate, "CAPTURE_WARMUP_RUNS", 1)  # one is enough to see where they run, and quicker
    graphs = make_step(dataclasses.replace(networks, device=torch.device("cuda", 1)), "cuda-graphs", 1)
    graphs.step = cuda.captured(graphs.step, "step")
    eager = make_step(networks, "eager", 1)
    first, second = _inputs(networks, 1, seed=1), _inputs(networks, 1, seed=2)
    first_faces, second_faces = graphs(*first).faces, graphs(*second).faces
    assert _levels(second_faces, eager(*second).faces) == 0 and _levels(first_faces, eager(*first).faces) == 0
    assert _levels(first_faces, second_faces) > 0  # the two batches differ, or the checks above say nothing
    *warm_up, capture, replay_1, replay_2 = cuda.log
    assert warm_up and set(warm_up) == {("step", "cuda:1", "side", False)}
    assert capture == ("step", "cuda:1", "default", True) and len(graphs.graphs) == 1
    assert replay_1 == replay_2 == ("replay", "cuda:1", "default", False)


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_every_fast_path_runs_on_cuda_in_fp16_close_to_eager(weights, tmp_path) -> None:
    """fp16 on CUDA as the pipeline runs it: compile and CUDA graphs reproduce eager's faces, ONNX Runtime's CUDA
    provider comes within a few grey levels, and the test fails if that provider fell back to the CPU."""
    networks = _networks(weights, "cuda", torch.float16)
    latents, prompts = _inputs(networks, BATCH, seed=4)
    eager = make_step(networks, "eager", BATCH)(latents, prompts).faces
    graphs = make_step(networks, "cuda-graphs", BATCH)
    assert _levels(graphs(latents, prompts).faces, eager) <= 1
    assert _levels(graphs(latents[:1], prompts[:1]).faces, eager[:1]) <= 1
    assert len(graphs.graphs) == 1  # one capture serves the short batch too
    compiled = make_step(networks, "compile", BATCH)
    assert _levels(compiled(latents, prompts).faces, eager) <= 2
    onnx = make_step(networks, "onnx", BATCH, cache_dir=tmp_path)
    faces = onnx(latents, prompts).faces
    assert onnx.ran_on == "CUDAExecutionProvider" and not onnx.warnings, onnx.warnings
    assert float((faces.int() - eager.cpu().int()).abs().float().mean()) < 1.0 and _levels(faces, eager) <= 8


def test_only_the_most_recently_used_exports_are_kept(tmp_path) -> None:
    import os

    from engine.lipsync.musetalk.accelerate import STEP_FILE, prune_exports

    folders = [tmp_path / f"fp16-b8-{i}" for i in range(4)]
    for age, folder in enumerate(reversed(folders)):
        folder.mkdir()
        (folder / STEP_FILE).write_bytes(b"onnx")
        os.utime(folder, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (tmp_path / "half-made").mkdir()  # no step file: another process's export in progress, never removed here
    assert sorted(prune_exports(tmp_path, 2)) == folders[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16-b8-2", "fp16-b8-3", "half-made"]


@pytest.mark.parametrize(
    ("usable_gib", "dtype", "expected"),
    [
        (4, torch.float16, 8),
        (70, torch.float16, 64),
        (13, torch.float32, 16),
        (0.1, torch.float16, 1),
        (0, torch.float16, 1),
    ],
)
def test_a_gpu_batch_comes_from_the_memory_this_worker_may_still_use(monkeypatch, usable_gib, dtype, expected) -> None:
    from engine.lipsync.musetalk import run

    monkeypatch.setattr(run, "usable_gpu_memory", lambda device: int(usable_gib * 2**30))
    assert run.default_batch_size(torch.device("cuda", 0), dtype) == expected
    assert run.default_batch_size(torch.device("cpu"), dtype) == 2  # the CPU: a batch only adds memory
