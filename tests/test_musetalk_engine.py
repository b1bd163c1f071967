"""MuseTalk's engine core: prepare an avatar, generate frames for speech, save and load the avatar.

The networks are diffusers' UNet2DConditionModel and AutoencoderKL, transformers' Whisper and our BiSeNet in small
random configs (the same classes and block types; a 4-block VAE, so the latents are 32x32 as the real ones), written
in upstream's models/ layout and loaded by our loader. Faces come from assets/face.jpg with a stub detector at a
fixed box (one case uses the Haar cascade). CPU only, no network, speech generated here.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from engine.core.errors import InputError
from engine.core.media import load_image
from engine.core.results import RunResult
from engine.core.settings import Settings
from engine.faces.detection import HaarDetector
from engine.lipsync.musetalk import audio
from engine.lipsync.musetalk.accelerate import StepFaces, StepRunner
from engine.lipsync.musetalk.avatar import (
    DETECTOR,
    LANDMARKS,
    PreparedAvatar,
    best_detection,
    frame_box,
    load_avatar,
    payload_digest,
    prepare_avatar,
    save_avatar,
)
from engine.lipsync.musetalk.blend import SKIN
from engine.lipsync.musetalk.generate import SpeechWindows, generate
from engine.lipsync.musetalk.geometry import blend_region, detector_box, landmark_box
from engine.lipsync.musetalk.random_weights import write_random_weights
from engine.lipsync.musetalk.weights import MuseTalkNetworks, load_networks, require

ROOT = Path(__file__).resolve().parent.parent
SR = 16000
FACE_BOX = (170, 60, 285, 200, 0.9)  # around the face in assets/face.jpg (Haar finds 172, 60, 280, 190)


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> MuseTalkNetworks:
    base = tmp_path_factory.mktemp("musetalk")
    write_random_weights(base / "models")
    files = require(Settings(data_dir=base, weights_dir=base / "weights"), base / "models")
    return load_networks(files, "cpu", torch.float32)


class StubDetector:
    """A fixed face box in every frame that is not (nearly) black."""

    name = "stub"

    def __init__(self, box: tuple[float, ...] = FACE_BOX) -> None:
        self.box = np.array([box], np.float32)
        self.calls = 0

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        return [self.box.copy() if f.mean() > 5 else np.zeros((0, 5), np.float32) for f in frames]


class SkinParser(torch.nn.Module):
    """A face parser that calls everything skin, so the blend mask covers the box's lower half."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 19, x.shape[2], x.shape[3], dtype=x.dtype)
        logits[:, SKIN] = 1.0
        return logits


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t))
    noise = 0.02 * np.random.default_rng(0).standard_normal(len(t))
    return (voiced + noise).astype(np.float32)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return load_image(ROOT / "assets" / "face.jpg")


@pytest.fixture(scope="module")
def frames(face: np.ndarray) -> list[np.ndarray]:
    """A face, a frame without one (black), the face moved a little."""
    return [face, np.zeros_like(face), np.roll(face, 3, axis=1)]


@pytest.fixture(scope="module")
def avatar(frames: list[np.ndarray], networks: MuseTalkNetworks) -> PreparedAvatar:
    return prepare_avatar(frames, networks, detector=StubDetector())


def _outside(shape: tuple[int, ...], region: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    x1, y1, x2, y2 = region
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = False
    return mask


# --------------------------------------------------------------------------- preparation


def test_prepare_finds_boxes_latents_plans_and_the_cycle(avatar: PreparedAvatar, frames) -> None:
    box = detector_box(FACE_BOX, frames[0].shape)
    with_margin = (box[0], box[1], box[2], box[3] + 10)  # v1.5's extra margin below
    assert avatar.version == "v15" and avatar.parsing_mode == "jaw" and avatar.extra_margin == 10
    assert avatar.boxes == (with_margin, None, with_margin)
    assert avatar.box_sources == (DETECTOR, None, DETECTOR)
    assert avatar.latent_rows == (0, -1, 1) and avatar.faces == 2
    assert avatar.latents.shape == (2, 8, 32, 32) and avatar.latents.dtype == torch.float32
    assert avatar.plans[1] is None
    assert avatar.plans[0].box == with_margin and avatar.plans[0].region == blend_region(with_margin)
    assert avatar.cycle == (0, 1, 2, 2, 1, 0)
    assert [avatar.source_frame(i) for i in range(13)] == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]
    assert np.array_equal(avatar.frames[2], frames[2])
    assert any("1 of 3 frames have no face" in w for w in avatar.warnings)
    assert any("no face-landmark model" in w for w in avatar.warnings)


def test_latents_are_the_posterior_mean_masked_first(avatar: PreparedAvatar, networks, frames) -> None:
    """Row 0 is [masked, reference] of frame 0's crop: the same as encoding each alone, up to the float rounding of
    a batched encode (4e-7 here; the encoder's input in the standard layout, as upstream's, or it was 1e-4)."""
    from engine.lipsync.musetalk.geometry import crop_face, vae_pixels

    crop = torch.from_numpy(crop_face(frames[0], avatar.boxes[0]))[None]
    with torch.no_grad():
        masked = networks.vae.encode(vae_pixels(crop, masked=True)).latent_dist.mean * 0.18215
        reference = networks.vae.encode(vae_pixels(crop, masked=False)).latent_dist.mean * 0.18215
    assert torch.allclose(avatar.latents[0, :4], masked[0], atol=2e-6)
    assert torch.allclose(avatar.latents[0, 4:], reference[0], atol=2e-6)
    assert (masked - reference).abs().max() > 1e-3  # the order is seen: the two differ far more than that


def test_landmark_boxes_take_bbox_shift_and_fall_back_to_the_detector(networks, face) -> None:
    points = np.tile(np.array([230.0, 180.0], np.float32), (68, 1))
    points[0, 0], points[16, 0] = 180.0, 280.0  # the sides
    points[8, 1], points[29, 1] = 210.0, 140.0  # the chin and the nose bridge

    class Landmarks:
        name = "stub-landmarks"

        def landmarks(self, frames):
            return [points if i == 0 else None for i in range(len(frames))]

    avatar = prepare_avatar(
        [face, face], dataclasses.replace(networks, face_parser=SkinParser()), detector=StubDetector(),
        landmarks=Landmarks(), bbox_shift=5, parsing_mode="raw",
    )  # fmt: skip
    assert landmark_box(points, 5) == (180, 80, 280, 210)  # the bridge, moved to 145, mirrored from the chin
    assert avatar.boxes[0] == (180, 80, 280, 220) and avatar.box_sources == (LANDMARKS, DETECTOR)
    assert avatar.landmarks == "stub-landmarks" and avatar.bbox_shift == 5 and avatar.parsing_mode == "raw"
    assert "1 frame without usable landmarks took the detector's box" in avatar.warnings


def test_the_bbox_shift_range_upstream_prints_comes_with_the_avatar(networks, face, tmp_path: Path) -> None:
    """Upstream prints the range to choose bbox_shift from after finding the boxes: minus the mean of y30 - y29 to
    the mean of y29 - y28 over the frames with a face, truncated, before any shift (its README: run once, then pick
    a value inside). It was computed nowhere, so a user could not follow that advice."""
    points = []
    # landmarks 28, 29, 30: 18 and 21 below the bridge, 20 and 18 above it
    for bridge_top, bridge, middle in ((120.0, 140.0, 158.0), (121.0, 139.0, 160.0)):
        p = np.tile(np.array([230.0, 180.0], np.float32), (68, 1))
        p[0, 0], p[16, 0], p[8, 1] = 180.0, 280.0, 210.0
        p[28, 1], p[29, 1], p[30, 1] = bridge_top, bridge, middle
        points.append(p)

    class Landmarks:
        name = "stub-landmarks"

        def landmarks(self, frames):
            return [points[0] if frame.mean() > 100 else points[1] for frame in frames]

    darker = np.clip(face.astype(int) - 40, 0, 255).astype(np.uint8)
    parser = dataclasses.replace(networks, face_parser=SkinParser())
    avatar = prepare_avatar([face, np.zeros_like(face), darker], parser, detector=StubDetector(),
                            landmarks=Landmarks(), bbox_shift=5)  # fmt: skip
    assert face.mean() > 100 > darker.mean()
    assert avatar.bbox_shift_range == (-19, 19)  # -int(19.5), int(19.0); the black frame has no face
    assert load_avatar(save_avatar(avatar, tmp_path / "a.pt")).bbox_shift_range == (-19, 19)
    assert prepare_avatar([face], parser, detector=StubDetector()).bbox_shift_range is None  # no landmarks


def test_a_v1_avatar_names_its_own_version_in_its_warnings(networks, face) -> None:
    """Both versions were trained on boxes from the 68 landmarks; a v1.0 run said v1.5's."""
    v1 = dataclasses.replace(networks, version="v1", face_parser=SkinParser())
    avatar = prepare_avatar([face], v1, detector=StubDetector())
    assert avatar.extra_margin == 0 and avatar.parsing_mode == "raw"  # v1.0's conventions
    assert any("68 landmarks MuseTalk v1.0 was trained with" in w for w in avatar.warnings)
    assert not any("v1.5" in w for w in avatar.warnings)


def test_a_v1_avatar_takes_a_margin_and_parsing_mode_when_given(networks, face) -> None:
    """Guards the documented difference: upstream's v1.0 path adds no margin and parses "raw" whatever is asked;
    ours uses what was given (and its defaults, above, are upstream's)."""
    v1 = dataclasses.replace(networks, version="v1", face_parser=SkinParser())
    avatar = prepare_avatar([face], v1, detector=StubDetector(), extra_margin=6, parsing_mode="jaw")
    x1, y1, x2, y2 = detector_box(FACE_BOX, face.shape)
    assert avatar.extra_margin == 6 and avatar.parsing_mode == "jaw" and avatar.boxes == ((x1, y1, x2, y2 + 6),)


def test_a_box_past_the_frame_is_clipped() -> None:
    points = np.full((68, 2), 100.0, np.float32)
    points[16, 0], points[8, 1], points[29, 1] = 140.0, 130.0, 90.0  # right edge past a 120-wide frame
    box, source = frame_box(np.array([10, 10, 50, 50, 1.0]), points, (125, 120, 3), 0, 10)
    assert (box, source) == ((100, 50, 120, 125), LANDMARKS)
    assert frame_box(None, points, (125, 120, 3), 0, 10) == (None, None)  # no detection: no face


def test_haar_finds_the_face_in_the_example(networks, face) -> None:
    detector = HaarDetector()
    found = detector.detect([face])[0]
    if len(found) == 0:
        pytest.skip("the Haar cascade of this OpenCV finds no face in assets/face.jpg")
    avatar = prepare_avatar([face], dataclasses.replace(networks, face_parser=SkinParser()), detector=detector)
    x1, y1, x2, y2 = detector_box(found[0], face.shape)
    assert avatar.boxes == ((x1, y1, x2, y2 + 10),) and avatar.box_sources == (DETECTOR,)
    assert avatar.detector == "haar" and avatar.cycle == (0, 0)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "no frames"),
        (
            [np.zeros((64, 64, 3), np.uint8)] * 2,
            "no face found in any of the 2 frames .* or give the face's box in pixels with --box X1,Y1,X2,Y2",
        ),
        ([np.zeros((64, 64), np.uint8)], "HxWx3 uint8"),
        ([np.full((64, 64, 3), 99, np.uint8), np.full((64, 48, 3), 99, np.uint8)], "one size"),
        ([np.full((64, 64, 3), 99.0, np.float32)], "uint8"),
    ],
)
def test_bad_frames_are_input_errors(networks, frames, message) -> None:
    with pytest.raises(InputError, match=message):
        prepare_avatar(frames, networks, detector=StubDetector((0, 0, 60, 60, 0.9)))


def test_a_face_too_small_for_the_crop_says_so(networks) -> None:
    """A box of a few pixels (a --box 2,2,4,4) was "no face found", though the face was where it was told to be."""
    frames = [np.full((64, 64, 3), 99, np.uint8)] * 2
    with pytest.raises(InputError, match="the face box is under 8 pixels on a side in 2 of the 2 frames"):
        prepare_avatar(frames, networks, detector=StubDetector((2, 2, 6, 6, 0.9)))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"parsing_mode": "chin"}, "parsing mode"), ({"extra_margin": -1}, "extra_margin"),
     ({"batch_size": 0}, "batch_size"), ({"bbox_shift": 1.5}, "bbox_shift"), ({"blur_fraction": 2}, "blur")],
)  # fmt: skip
def test_bad_options_are_input_errors(networks, face, options, message) -> None:
    with pytest.raises(InputError, match=message):
        prepare_avatar([face], networks, detector=StubDetector(), **options)


def test_a_tiny_box_is_no_face(networks, face) -> None:
    with pytest.raises(InputError, match="the face box is under 8 pixels on a side in 1 of the 1 frame "):
        prepare_avatar([face], networks, detector=StubDetector((10, 10, 14, 14, 0.9)), extra_margin=0)


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize(("fps", "expected"), [(25, 33), (29.97, 39)])
def test_generate_gives_one_frame_per_frame_of_speech(avatar, networks, frames, fps, expected) -> None:
    speech = _speech(1.3)
    assert audio.frame_count(len(speech), fps) == expected  # ceil(1.3 s * fps): the last partial frame kept
    out = generate(avatar, speech, fps, networks, batch_size=8)
    first = next(out)  # a generator: frames come before the rest are computed
    rest = list(out)
    assert len(rest) + 1 == expected
    for i, frame in enumerate([first, *rest]):
        assert frame.shape == frames[0].shape and frame.dtype == np.uint8
        source = avatar.source_frame(i)
        if avatar.plans[source] is None:
            assert np.array_equal(frame, frames[source])  # no face: bit-identical
        else:
            assert not np.array_equal(frame, frames[source])


def test_a_frame_without_a_face_passes_through_unchanged(avatar, networks, frames) -> None:
    out = list(generate(avatar, _speech(0.5), 25, networks, batch_size=3))
    assert len(out) == 13
    black = [i for i in range(13) if avatar.source_frame(i) == 1]
    assert black == [1, 4, 7, 10]
    for i in black:
        assert np.array_equal(out[i], frames[1])
        out[i][:] = 7  # the caller may write into a frame it was given: the avatar keeps its own
    assert not avatar.frames[1].any()


def test_blending_changes_nothing_outside_the_blend_region(networks, frames) -> None:
    avatar = prepare_avatar(frames, dataclasses.replace(networks, face_parser=SkinParser()), detector=StubDetector())
    out = list(generate(avatar, _speech(0.3), 25, networks, batch_size=4))
    assert len(out) == 8
    changed_somewhere = False
    for i, frame in enumerate(out):
        source = avatar.source_frame(i)
        plan = avatar.plans[source]
        if plan is None:
            assert np.array_equal(frame, frames[source])
            continue
        outside = _outside(frame.shape, plan.region)
        assert np.array_equal(frame[outside], frames[source][outside]), i
        x1, y1, x2, y2 = plan.box
        changed_somewhere |= not np.array_equal(frame[y1:y2, x1:x2], frames[source][y1:y2, x1:x2])
        top = plan.region[1] + (plan.region[3] - plan.region[1]) // 2 - (plan.region[3] - plan.region[1]) // 20 - 1
        assert np.array_equal(frame[:top], frames[source][:top])  # above the lower half less the blur
    assert changed_somewhere


def test_batches_do_not_change_the_frames(avatar, networks) -> None:
    """Batch size and batch boundaries only group the work: frame i pairs prompt i with avatar frame i's latents."""
    speech = _speech(0.5)
    one = list(generate(avatar, speech, 25, networks, batch_size=1))
    five = list(generate(avatar, speech, 25, networks, batch_size=5))
    assert len(one) == len(five) == 13
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(one, five, strict=True))
    assert worst <= 1  # float sums in another order may move a decoded pixel by one level, no more


def test_saved_avatar_loads_back_to_the_same_frames(avatar, networks, tmp_path: Path) -> None:
    path = save_avatar(avatar, tmp_path / "avatar.pt")
    assert path.is_file() and not list(tmp_path.glob("*.partial"))
    loaded = load_avatar(path)
    assert loaded.boxes == avatar.boxes and loaded.latent_rows == avatar.latent_rows
    assert loaded.box_sources == avatar.box_sources and loaded.warnings == avatar.warnings
    assert torch.equal(loaded.latents, avatar.latents)
    assert all(
        (a is None and b is None) or torch.equal(a.mask, b.mask)
        for a, b in zip(loaded.plans, avatar.plans, strict=True)
    )
    speech = _speech(0.4)
    want = list(generate(avatar, speech, 25, networks, batch_size=4))
    got = list(generate(loaded, speech, 25, networks, batch_size=4))
    assert len(got) == len(want) == 10
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    unpickled = pickle.loads(pickle.dumps(avatar))  # plain data: it can cross to a worker process
    assert unpickled.boxes == avatar.boxes and np.array_equal(unpickled.frames, avatar.frames)


def test_stages_are_timed_when_asked(networks, face) -> None:
    result = RunResult()
    avatar = prepare_avatar(
        [face], dataclasses.replace(networks, face_parser=SkinParser()), detector=StubDetector(), result=result
    )
    assert len(list(generate(avatar, _speech(0.2), 25, networks, result=result))) == 5
    stages = {s.name: s.items for s in result.stages}
    assert list(stages) == ["detect", "vae encode", "parse", "whisper", "unet", "vae decode", "blend"]
    assert stages["vae encode"] == 1 and stages["unet"] == 5 and stages["blend"] == 5


@pytest.mark.parametrize(
    ("speech", "message"),
    [(np.zeros(SR, np.float32), "silent"), (np.full(SR, 1e-5, np.float32), "silent"), (_speech(0.01), "too short")],
)
def test_silence_is_an_input_error_before_any_work(avatar, networks, speech, message) -> None:
    with pytest.raises(InputError, match=message):
        generate(avatar, speech, 25, networks)  # raised by the call itself, not by the first frame


def test_bad_generate_options(avatar, networks) -> None:
    with pytest.raises(InputError, match="batch_size"):
        generate(avatar, _speech(0.2), 25, networks, batch_size=0)
    with pytest.raises(InputError, match="fps"):
        generate(avatar, _speech(0.2), 0, networks)
    other = dataclasses.replace(avatar, latents=avatar.latents[:, :4])
    with pytest.raises(InputError, match="prepare the avatar again"):
        generate(other, _speech(0.2), 25, networks)


@pytest.mark.parametrize(("samples", "fps"), [(SR, 25), (SR + 123, 29.97), (SR // 2, 12.5), (SR, 60)])
def test_speech_windows_are_audio_prompts_frame_by_frame(samples: int, fps: float) -> None:
    rows = audio.speech_rows(samples)
    hidden = torch.randn(rows + 3, 5, 4)
    frames = audio.frame_count(samples, fps)
    windows = SpeechWindows(hidden, samples, fps, frames)
    everything = audio.audio_prompts(hidden, samples, fps)
    pick = np.array([frames - 1, 0, frames // 2, 1])
    assert torch.equal(windows.prompts(pick), everything[torch.from_numpy(pick)])
    assert torch.equal(windows.prompts(np.arange(frames)), everything)


# --------------------------------------------------------------------------- generate's bookkeeping, networks stood in


class _LabelledWhisper(torch.nn.Module):
    """Whisper's encoder stood in for: hidden state (layer, row) holds 1000 + 10 * row + layer in every feature."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate reads the encoder's dtype from its parameters

    def forward(self, features: torch.Tensor, output_hidden_states: bool) -> SimpleNamespace:
        row = torch.arange(audio.SEGMENT_ROWS, dtype=torch.float32)[None, :, None]
        layers = tuple((1000 + 10 * row + layer).expand(1, -1, self.width) for layer in range(5))
        return SimpleNamespace(hidden_states=layers)


class _SilentExtractor:
    """Whisper's feature extractor stood in for (the labelled encoder ignores its input): no transformers import."""

    def __call__(self, segment, return_tensors, sampling_rate) -> SimpleNamespace:
        return SimpleNamespace(input_features=torch.zeros(1, 80, 3000))


class _SpyStep(StepRunner):
    """Records what generate hands the UNet + decoder step and returns flat faces, one grey level per face made
    (1, 2, 3, ... in order); the faces numbered in `not_finite` are flagged as NaN would be."""

    name = "spy"

    def __init__(self, networks: Any, batch_size: int, not_finite: tuple[int, ...] = ()) -> None:
        self.networks, self.batch_size, self.device = networks, batch_size, torch.device("cpu")
        self.warnings, self.ran_on, self.not_finite = [], "spy", not_finite
        self.latents: list[torch.Tensor] = []
        self.prompts: list[torch.Tensor] = []

    def __call__(self, latents: torch.Tensor, prompts: torch.Tensor, result: RunResult | None = None) -> StepFaces:
        made = sum(len(batch) for batch in self.latents)
        self.latents.append(latents.clone())
        self.prompts.append(prompts.clone())
        levels = torch.arange(made + 1, made + len(latents) + 1, dtype=torch.uint8)
        faces = levels[:, None, None, None].expand(-1, 256, 256, 3).contiguous()
        finite = torch.tensor([made + j not in self.not_finite for j in range(len(latents))])
        return StepFaces(faces, finite)


def _stub_avatar() -> PreparedAvatar:
    """Three 120x160 frames, the middle one without a face, another box in the last; face rows 0 and 1
    hold latents 10 and 20."""
    from engine.lipsync.musetalk.blend import prepare_blend

    frames = np.random.default_rng(7).integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    boxes = ((40, 20, 100, 90), None, (44, 24, 108, 90))
    skin = np.full((512, 512), SKIN, np.int64)
    plans = tuple(None if box is None else prepare_blend(box, skin, "raw", blur_fraction=0.0) for box in boxes)
    latents = torch.tensor([10.0, 20.0])[:, None, None, None].expand(2, 8, 2, 2).contiguous()
    return PreparedAvatar(
        version="v15", frames=frames, boxes=boxes, box_sources=(DETECTOR, None, DETECTOR),
        latent_rows=(0, -1, 1), latents=latents, plans=plans, bbox_shift=0, extra_margin=10,
        parsing_mode="raw", blur_fraction=0.0, cheek_widths=(90, 90), detector="stub", landmarks=None,
    )  # fmt: skip


def _stub_networks(width: int = 4) -> SimpleNamespace:
    unet = SimpleNamespace(config=SimpleNamespace(in_channels=8), dtype=torch.float32)
    return SimpleNamespace(device=torch.device("cpu"), whisper=_LabelledWhisper(width), unet=unet)


def test_generate_gives_each_face_its_own_prompt_plus_the_positional_encoding_and_its_own_latents() -> None:
    """Guards the pairing upstream's numerics rely on: output frame i's prompt is speech window i (not the batch's
    i-th) with the sinusoidal encoding added, its latents are its avatar frame's row, frames without a face reach no
    network, and each decoded face lands in its own frame; on the CPU frame 0 comes before batch 2 is computed."""
    from engine.lipsync.musetalk.blend import blend_face, face_to_box

    avatar, networks = _stub_avatar(), _stub_networks()
    speech = _speech(0.5)  # 13 frames at 25 fps, batches of 3
    step, result = _SpyStep(networks, 3), RunResult()
    out = generate(avatar, speech, 25, networks, 3, extractor=_SilentExtractor(), result=result,
                   runtime=step)  # type: ignore[arg-type]  # fmt: skip
    frames = [next(out)]
    assert len(step.latents) == 1  # the CPU does not look a batch ahead: that would only delay frame 0
    frames += list(out)
    sources = [avatar.source_frame(i) for i in range(13)]
    with_face = [i for i in range(13) if sources[i] != 1]
    hidden = networks.whisper(None, True).hidden_states
    windows = audio.audio_prompts(torch.stack(hidden)[:, 0].permute(1, 0, 2), len(speech), 25)
    expected = windows[with_face] + audio.positional_encoding(50, 4)
    assert torch.equal(torch.cat(step.prompts), expected)
    assert torch.cat(step.latents)[:, 0, 0, 0].tolist() == [10.0 if sources[i] == 0 else 20.0 for i in with_face]
    for i, frame in enumerate(frames):
        if sources[i] == 1:
            assert np.array_equal(frame, avatar.frames[1]), i
            continue
        face = np.full((256, 256, 3), with_face.index(i) + 1, np.uint8)
        want = blend_face(
            avatar.frames[sources[i]], face_to_box(face, avatar.boxes[sources[i]]), avatar.plans[sources[i]]
        )
        assert np.array_equal(frame, want), i
    assert result.warnings == []  # every face was finite


def test_a_face_that_is_not_finite_keeps_its_frame_and_the_next_faces_keep_their_places() -> None:
    """Guards the row bookkeeping past a NaN face: frame 0 (the batch's first face) keeps the avatar's pixels, the
    face after it in the batch still goes to its own frame, and the warning counts the one frame."""
    avatar, networks = _stub_avatar(), _stub_networks()
    step, result = _SpyStep(networks, 3, not_finite=(0,)), RunResult()
    frames = list(generate(avatar, _speech(0.2), 25, networks, 3, extractor=_SilentExtractor(), result=result,
                           runtime=step))  # type: ignore[arg-type]  # fmt: skip
    assert len(frames) == 5 and [avatar.source_frame(i) for i in range(5)] == [0, 1, 2, 2, 1]
    assert np.array_equal(frames[0], avatar.frames[0])
    x1, y1, _, _ = avatar.boxes[2]
    assert (frames[2][y1 + 40, x1 + 30] == 2).all() and (frames[3][y1 + 40, x1 + 30] == 3).all()  # lower half
    assert result.warnings == [
        "MuseTalk gave NaN or infinite values for 1 of 5 frames; they keep the avatar's own pixels (not a matter of "
        "range at this precision: the weights or the inputs hold NaN or infinite values)"
    ]
    assert result.metrics["musetalk_runtime"] == "spy"


def test_a_step_made_for_other_networks_is_refused_even_at_the_same_batch_size() -> None:
    """Guards the step's owner check: a cached step runs the networks it was made for, not the ones passed."""
    avatar, mine, other = _stub_avatar(), _stub_networks(), _stub_networks()
    with pytest.raises(InputError, match="made for other networks or batch size 3, not 3"):
        generate(avatar, _speech(0.2), 25, other, 3, runtime=_SpyStep(mine, 3))  # type: ignore[arg-type]


def test_generate_refuses_a_batch_past_4096_and_latents_another_unet_cannot_take() -> None:
    """Guards generate's checks before any work: the batch size's upper bound, and an avatar prepared for a UNet
    of another input width (its latents would fail deep inside the first batch)."""
    avatar, networks = _stub_avatar(), _stub_networks()
    with pytest.raises(InputError, match="batch_size must be a whole number from 1 to 4096, got 4097"):
        generate(avatar, _speech(0.2), 25, networks, 4097)  # type: ignore[arg-type]
    networks.unet.config.in_channels = 4
    with pytest.raises(InputError, match="latents have 8 channels but this MuseTalk UNet takes 4: prepare the avatar"):
        generate(avatar, _speech(0.2), 25, networks, 3)  # type: ignore[arg-type]


def test_a_timed_stage_waits_for_its_cuda_device_before_it_ends(monkeypatch) -> None:
    """Guards stages.timed: a CUDA stage's time includes the device's work (the wait is inside the stage), the CPU
    waits for nothing, the items handled are recorded, and without a result nothing is timed or waited for."""
    from engine.lipsync.musetalk.stages import timed

    result, waits = RunResult(), []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waits.append((device, len(result.stages))))
    with timed(result, "unet", torch.device("cuda", 1), 4):
        pass
    assert waits == [(torch.device("cuda", 1), 0)]  # the stage was still open when it waited
    with timed(result, "blend", torch.device("cpu"), 1):
        pass
    with timed(None, "unet", torch.device("cuda", 1), 4):
        pass
    assert len(waits) == 1
    assert [(stage.name, stage.items) for stage in result.stages] == [("unet", 4), ("blend", 1)]


# --------------------------------------------------------------------------- the file


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "web page"),
        (b"", "empty"),
        (b"PK\x03\x04" + b"\0" * 64, "truncated"),
    ],
)
def test_a_file_that_is_no_avatar(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "avatar.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=words) as err:
        load_avatar(path)
    assert str(tmp_path) not in str(err.value)  # the file's name, never its folder


def test_another_torch_file_or_format_version(avatar, tmp_path: Path) -> None:
    torch.save({"state": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(InputError, match="not a prepared MuseTalk avatar"):
        load_avatar(tmp_path / "weights.pt")
    path = save_avatar(avatar, tmp_path / "avatar.pt")
    data = torch.load(path, weights_only=True)

    def save(changed: dict, name: str) -> Path:  # a damaged file whose digest was made for it: check_avatar's work
        payload = {**data, **changed}
        torch.save({**payload, "digest": payload_digest(payload)}, tmp_path / name)
        return tmp_path / name

    with pytest.raises(InputError, match=r"format 99.*prepare the avatar again"):
        load_avatar(save({"format_version": 99}, "newer.pt"))
    with pytest.raises(InputError, match="damaged"):
        load_avatar(save({"latent_rows": [0, 1, -1]}, "damaged.pt"))
    # a flipped bit that loads: a box of three values or turned inside out crashed every later run of the face
    face = next(i for i, b in enumerate(data["boxes"]) if b is not None)
    for box in ([1, 2, 30], [40, 2, 30, 60], [0, 0, 10**6, 60]):
        boxes = [box if i == face else b for i, b in enumerate(data["boxes"])]
        with pytest.raises(InputError, match="damaged"):
            load_avatar(save({"boxes": boxes}, "flipped.pt"))
    with pytest.raises(InputError, match="damaged"):  # a list where the frames tensor goes
        load_avatar(save({"frames": [1, 2]}, "list.pt"))


def test_a_flipped_bit_in_a_stored_avatar_is_found(avatar, tmp_path: Path) -> None:
    """One bit of a frame, a latent or a mask that flips on disk still loads into a plausible avatar, and every clip
    made from it would carry the damage: the saved digest finds it, and the store prepares the avatar again."""
    path = save_avatar(avatar, tmp_path / "avatar.pt")
    assert load_avatar(path).frames.tobytes() == avatar.frames.tobytes()
    data = torch.load(path, weights_only=True)
    mask = next(m for m in data["masks"] if m is not None)
    for name, tensor in (("frames", data["frames"]), ("latents", data["latents"]), ("mask", mask)):
        flat = tensor.view(-1).view(torch.uint8)
        flat[flat.numel() // 2] ^= 4
        torch.save(data, tmp_path / f"{name}.pt")
        with pytest.raises(InputError, match="do not match their digest"):
            load_avatar(tmp_path / f"{name}.pt")
        flat[flat.numel() // 2] ^= 4
    torch.save(data, tmp_path / "restored.pt")
    load_avatar(tmp_path / "restored.pt")


def test_whisper_must_see_the_whole_30_s_segment(networks) -> None:
    """Issue #16 asks whether whisper could encode only what a clip needs: no. Its encoder takes exactly 3000 mel
    frames, and its attention spans the whole segment, so the rows of a clip's first seconds change with what the
    rest of the segment holds (here only mel frames past the first four seconds differ); upstream's features come
    from the whole padded segment, and so do ours."""
    from engine.lipsync.musetalk.audio import whisper_input_features
    from engine.lipsync.musetalk.generate import whisper_segment_encoder

    t = np.arange(2 * SR) / SR
    (features,) = whisper_input_features((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    assert features.shape == (1, 80, 3000)
    changed = features.clone()
    changed[..., 400:] += 0.5  # nothing in the first four seconds (100 mel frames a second)
    encode = whisper_segment_encoder(networks)
    first, other = encode(features)[:, :190], encode(changed)[:, :190]  # rows of the first 3.8 s (50 a second)
    assert torch.equal(first[0], other[0])  # the embeddings of those rows are the same...
    assert not torch.allclose(first[1:], other[1:], atol=1e-4)  # ...every layer's output is not
    with pytest.raises(ValueError, match="3000"):
        networks.whisper(features[..., :400])  # and a shorter input is refused by the encoder itself


def test_workers_that_want_one_avatar_at_once_prepare_it_once(avatar, tmp_path: Path) -> None:
    """Two workers asked for the same new face at the same time both prepared it (seconds of detection, parsing and
    VAE encoding each): the second now waits on the first's lock and loads what it stored."""
    import threading

    from engine.lipsync.musetalk.avatar_store import DISK, PREPARED, AvatarStore

    store, keys = AvatarStore(tmp_path / "avatars"), [("owner", "face", "all")]
    started, go, results, second_prepared = threading.Event(), threading.Event(), {}, []

    def first() -> PreparedAvatar:
        started.set()
        go.wait(10)
        return avatar

    one = threading.Thread(target=lambda: results.update(first=store.get_or_prepare(keys, first)))
    two = threading.Thread(
        target=lambda: results.update(second=store.get_or_prepare(keys, lambda: second_prepared.append(1) or avatar))
    )
    one.start()
    assert started.wait(10)
    two.start()
    two.join(0.5)  # it is waiting, not preparing
    assert not second_prepared
    go.set()
    one.join(10)
    two.join(10)
    assert results["first"][1] == PREPARED and results["second"][1] == DISK and not second_prepared
    assert results["second"][0].frames.tobytes() == avatar.frames.tobytes()


def test_a_lock_left_by_an_evicted_avatar_goes_with_it(avatar, tmp_path: Path) -> None:
    from engine.lipsync.musetalk.avatar_store import AvatarStore

    store = AvatarStore(tmp_path / "avatars", budget_bytes=0)
    store.get_or_prepare([("a",)], lambda: avatar)
    store.get_or_prepare([("b",)], lambda: avatar)  # a goes past the budget, and its lock with it
    assert sorted(p.name for p in store.folder.iterdir()) == sorted(
        [store.path(("b",)).name, store.path(("b",)).with_suffix(".lock").name]
    )


def test_the_store_prepares_under_the_first_key_and_finds_any_key_later(tmp_path: Path) -> None:
    """Guards the keys' roles: a new avatar is stored under the first key (the exact one), and a later run finds it
    under any of its keys, in order, from disk."""
    from engine.lipsync.musetalk.avatar_store import DISK, PREPARED, AvatarStore

    store, stub = AvatarStore(tmp_path / "avatars"), _stub_avatar()
    avatar, source = store.get_or_prepare([("13 frames",), ("all",)], lambda: stub)
    assert source == PREPARED and avatar is stub and store.path(("13 frames",)).is_file()
    assert not store.path(("all",)).exists()

    def unwanted() -> PreparedAvatar:
        raise AssertionError("prepared again")

    again, source = store.get_or_prepare([("26 frames",), ("13 frames",)], unwanted)
    assert source == DISK and again.frames.tobytes() == stub.frames.tobytes()


def test_a_stored_avatar_that_cannot_be_read_is_replaced(tmp_path: Path, caplog) -> None:
    """Guards the damaged-file path: the avatar is prepared again and stored whole under the first key, with a
    warning in the log, and a damaged file under another key is removed, not read (and warned about) every run."""
    from engine.lipsync.musetalk.avatar_store import DISK, PREPARED, AvatarStore

    store, stub = AvatarStore(tmp_path / "avatars"), _stub_avatar()
    store.folder.mkdir()
    for key in ("face", "all"):
        store.path((key,)).write_bytes(b"PK\x03\x04" + b"\0" * 64)
    assert store.get_or_prepare([("face",), ("all",)], lambda: stub)[1] == PREPARED
    assert "a stored avatar could not be read, preparing it again" in caplog.text
    assert not store.path(("all",)).exists()
    assert store.get_or_prepare([("face",)], lambda: stub)[1] == DISK


def test_the_least_recently_used_avatars_go_first_once_the_budget_is_passed(tmp_path: Path) -> None:
    """Guards eviction: avatars that fill the budget exactly all stay; past it the least recently used goes, with its
    lock file, where using one (finding it on disk) makes it the most recent; the avatar just stored stays even over
    a budget of 0."""
    import os

    from engine.lipsync.musetalk.avatar_store import AvatarStore

    stub = _stub_avatar()
    probe = AvatarStore(tmp_path / "probe")
    probe.get_or_prepare([("size",)], lambda: stub)
    size = probe.path(("size",)).stat().st_size
    store = AvatarStore(tmp_path / "avatars", budget_bytes=2 * size)
    for age, key in ((300, "a"), (200, "b")):
        store.get_or_prepare([(key,)], lambda: stub)
        os.utime(store.path((key,)), (1_000_000 - age, 1_000_000 - age))
    assert store.path(("a",)).is_file() and store.path(("b",)).is_file()  # exactly the budget: both stay
    store.get_or_prepare([("a",)], lambda: stub)  # a is used: b is now the least recently used
    store.get_or_prepare([("c",)], lambda: stub)
    assert sorted(p.name for p in store.folder.glob("*.avatar")) == sorted(
        store.path((key,)).name for key in ("a", "c")
    )
    # b's lock went with it; the stored avatars keep theirs (removing a lock someone may be about to take races)
    assert sorted(p.name for p in store.folder.glob("*.lock")) == sorted(
        store.path((key,)).with_suffix(".lock").name for key in ("a", "c")
    )
    tight = AvatarStore(tmp_path / "tight", budget_bytes=0)
    tight.get_or_prepare([("only",)], lambda: stub)
    assert tight.path(("only",)).is_file()


def test_a_store_that_cannot_read_or_write_costs_a_preparation_never_the_run(tmp_path: Path, monkeypatch, caplog):
    """Guards the store's OSError paths: a stored file it may not read is prepared again, and a folder that cannot
    be made (a file in its place) gives the prepared avatar back with a warning instead of failing the run."""
    from engine.lipsync.musetalk import avatar_store

    stub = _stub_avatar()
    store = avatar_store.AvatarStore(tmp_path / "avatars")
    store.get_or_prepare([("face",)], lambda: stub)

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(avatar_store, "load_avatar", unreadable)
    assert store.get_or_prepare([("face",)], lambda: stub) == (stub, avatar_store.PREPARED)
    (tmp_path / "taken").write_text("a file where the folder goes")
    blocked = avatar_store.AvatarStore(tmp_path / "taken" / "avatars")
    assert blocked.get_or_prepare([("face",)], lambda: stub) == (stub, avatar_store.PREPARED)
    assert "could not keep the prepared avatar" in caplog.text


def test_eviction_goes_by_last_use_not_size_and_passes_over_the_kept_avatar(tmp_path: Path) -> None:
    """Guards evict's order and `keep`: the least recently used go first whatever their size (a large avatar used
    a moment ago is the one most likely wanted next), and the avatar being kept is passed over, not an end to the
    eviction: another worker may have stored or used one after it, so it need not be the newest."""
    import os

    from engine.lipsync.musetalk.avatar_store import AvatarStore

    store = AvatarStore(tmp_path / "avatars", budget_bytes=300)
    store.folder.mkdir()
    for name, size, used in (("old_big", 300, 100), ("middle", 200, 200), ("new_small", 100, 300)):
        (store.folder / f"{name}.avatar").write_bytes(b"\0" * size)
        os.utime(store.folder / f"{name}.avatar", (used, used))
    assert [p.stem for p in store.evict()] == ["old_big"]  # 600 bytes: the oldest alone brings them to 300

    (store.folder / "old_big.avatar").write_bytes(b"\0" * 300)
    os.utime(store.folder / "old_big.avatar", (100, 100))
    assert [p.stem for p in store.evict(keep=store.folder / "old_big.avatar")] == ["middle", "new_small"]
    assert [p.stem for p in store.folder.glob("*.avatar")] == ["old_big"]


def test_a_full_disk_leaves_no_partial_file_and_costs_only_the_next_run(tmp_path: Path, monkeypatch, caplog) -> None:
    """Guards the failed save: a disk that fills during the write gives this run its avatar, with a warning, and
    leaves no half-written .partial file behind to fill the disk further (nothing else ever removes one); the next
    run prepares the avatar again and stores it."""
    import errno

    from engine.lipsync.musetalk import avatar_store

    stub = _stub_avatar()

    def disk_fills(avatar: PreparedAvatar, path: Path) -> Path:
        path.with_name(path.name + ".partial").write_bytes(b"PK\x03\x04 half an avatar")
        raise OSError(errno.ENOSPC, "No space left on device")

    store = avatar_store.AvatarStore(tmp_path / "avatars")
    monkeypatch.setattr(avatar_store, "save_avatar", disk_fills)
    assert store.get_or_prepare([("face",)], lambda: stub) == (stub, avatar_store.PREPARED)
    assert "could not keep the prepared avatar" in caplog.text and "No space left" in caplog.text
    assert not [p.name for p in store.folder.iterdir() if not p.name.endswith(".lock")]
    monkeypatch.undo()
    assert store.get_or_prepare([("face",)], lambda: stub)[1] == avatar_store.PREPARED
    assert store.get_or_prepare([("face",)], lambda: stub)[1] == avatar_store.DISK


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a device that is always full")
def test_a_save_onto_a_really_full_device_costs_only_the_next_run(tmp_path: Path, caplog) -> None:
    """A full disk made the run fail after all its work: torch.save's zip writer reports a failed write (ENOSPC) as a
    RuntimeError, not an OSError. Here the real save_avatar writes its .partial file onto /dev/full (through a link
    where that file goes): the run keeps its avatar, the log says why it was not stored, the link is gone, and the
    next run stores it."""
    from engine.lipsync.musetalk.avatar_store import DISK, PREPARED, AvatarStore

    stub, store = _stub_avatar(), AvatarStore(tmp_path / "avatars")
    store.folder.mkdir()
    partial = store.path(("face",)).with_name(store.path(("face",)).name + ".partial")
    partial.symlink_to("/dev/full")
    assert store.get_or_prepare([("face",)], lambda: stub) == (stub, PREPARED)
    assert "could not keep the prepared avatar" in caplog.text
    assert not partial.is_symlink() and not store.path(("face",)).exists()
    assert store.get_or_prepare([("face",)], lambda: stub)[1] == PREPARED
    assert store.get_or_prepare([("face",)], lambda: stub)[1] == DISK


def test_eviction_leaves_a_lock_another_worker_holds_and_does_not_wait_for_it(tmp_path: Path) -> None:
    """Guards _remove_idle_locks: while one worker prepares a new face (its lock held, no avatar stored yet) another
    worker's eviction neither waits for it nor removes that lock; a removed lock would let a third worker that wants
    the same face take a new lock file at once and prepare it a second time instead of waiting and loading it."""
    import threading

    from engine.lipsync.musetalk.avatar_store import DISK, AvatarStore

    stub, results, prepared_again = _stub_avatar(), {}, []
    store = AvatarStore(tmp_path / "avatars", budget_bytes=0)
    started, go = threading.Event(), threading.Event()

    def slow() -> PreparedAvatar:
        started.set()
        go.wait(30)
        return stub

    first = threading.Thread(target=lambda: store.get_or_prepare([("face",)], slow), daemon=True)
    evicting = threading.Thread(target=lambda: store.get_or_prepare([("other",)], lambda: stub), daemon=True)
    third = threading.Thread(
        target=lambda: results.update(
            third=store.get_or_prepare([("face",)], lambda: prepared_again.append(1) or stub)
        ),
        daemon=True,
    )
    first.start()
    try:
        assert started.wait(10)
        evicting.start()
        evicting.join(10)
        assert not evicting.is_alive()  # it did not wait for the lock the first worker holds
        assert store.path(("face",)).with_suffix(".lock").exists()
        third.start()
        third.join(0.5)  # it waits for the first worker, not preparing
        assert not prepared_again
    finally:
        go.set()
        first.join(10)
    third.join(10)
    assert results["third"][1] == DISK and not prepared_again


def test_a_worker_preparing_one_frame_count_does_not_hold_up_another_of_the_same_face(tmp_path: Path) -> None:
    """Guards the lock's key: workers take turns on the exact avatar they prepare (the first key), not on the shared
    whole-video key, so a 13-frame preparation does not wait for a 26-frame one of the same face to finish."""
    import threading

    from engine.lipsync.musetalk.avatar_store import PREPARED, AvatarStore

    stub, results = _stub_avatar(), {}
    store = AvatarStore(tmp_path / "avatars")
    started, go = threading.Event(), threading.Event()

    def slow() -> PreparedAvatar:
        started.set()
        go.wait(30)
        return stub

    first = threading.Thread(target=lambda: store.get_or_prepare([("26 frames",), ("all",)], slow), daemon=True)
    second = threading.Thread(
        target=lambda: results.update(second=store.get_or_prepare([("13 frames",), ("all",)], lambda: stub)),
        daemon=True,
    )
    first.start()
    try:
        assert started.wait(10)
        second.start()
        second.join(10)
        assert results["second"][1] == PREPARED  # done while the first is still preparing
    finally:
        go.set()
        first.join(10)


def test_the_best_detection_is_the_most_confident() -> None:
    """Guards best_detection: upstream takes S3FD's most confident face, not the first or the least confident one,
    and a row with a NaN is no detection."""
    rows = np.array(
        [[0, 0, 10, 10, 0.5], [20, 20, 40, 40, 0.9], [50, 50, 60, 60, 0.7], [1, 1, 2, 2, np.nan]], np.float32
    )
    assert best_detection(rows).tolist() == pytest.approx([20, 20, 40, 40, 0.9])
    assert best_detection(rows[[3]]) is None and best_detection(np.zeros((0, 5), np.float32)) is None


def test_a_box_of_exactly_the_smallest_side_is_a_face(networks, face) -> None:
    """Guards MIN_FACE_SIDE's bound: a box of 8 pixels on its shorter side is a face, one of 7 is not."""
    parser = dataclasses.replace(networks, face_parser=SkinParser())
    avatar = prepare_avatar([face], parser, detector=StubDetector((10, 10, 18, 60, 0.9)), extra_margin=0)
    assert avatar.boxes == ((10, 10, 18, 60),)
    with pytest.raises(InputError, match="under 8 pixels"):
        prepare_avatar([face], parser, detector=StubDetector((10, 10, 60, 17, 0.9)), extra_margin=0)


def test_bbox_shift_on_detector_boxes_says_it_moves_nothing(networks, face) -> None:
    """Guards the warning's condition: bbox_shift moves only landmark boxes, so a shift given with detector boxes
    alone is said, and one given with landmark boxes is not."""
    parser = dataclasses.replace(networks, face_parser=SkinParser())
    said = "bbox_shift moves only boxes made from face landmarks"
    assert any(said in w for w in prepare_avatar([face], parser, detector=StubDetector(), bbox_shift=5).warnings)
    assert not any(said in w for w in prepare_avatar([face], parser, detector=StubDetector()).warnings)
    points = np.tile(np.array([230.0, 180.0], np.float32), (68, 1))
    points[0, 0], points[16, 0], points[8, 1], points[29, 1] = 180.0, 280.0, 210.0, 140.0

    class Landmarks:
        name = "stub-landmarks"

        def landmarks(self, frames):
            return [points for _ in frames]

    avatar = prepare_avatar([face], parser, detector=StubDetector(), landmarks=Landmarks(), bbox_shift=5)
    assert avatar.box_sources == (LANDMARKS,) and not any(said in w for w in avatar.warnings)


def test_a_changed_setting_in_a_stored_avatar_is_found(avatar, tmp_path: Path) -> None:
    """Guards the digest over the plain values: a bbox_shift or a box changed on disk loads into a plausible avatar
    (or one check_avatar calls damaged for another reason) unless the digest covers them too."""
    data = torch.load(save_avatar(avatar, tmp_path / "avatar.pt"), weights_only=True)
    face = next(i for i, b in enumerate(data["boxes"]) if b is not None)
    moved = [[b[0] + 1, *b[1:]] if i == face else b for i, b in enumerate(data["boxes"])]
    for name, changed in (("shift", {"bbox_shift": 4}), ("box", {"boxes": moved}), ("mode", {"parsing_mode": "raw"})):
        torch.save({**data, **changed}, tmp_path / f"{name}.pt")
        with pytest.raises(InputError, match="do not match their digest"):
            load_avatar(tmp_path / f"{name}.pt")


def test_every_frame_reaches_the_detector_and_every_face_the_encoder(networks, face) -> None:
    """Guards the batching: 17 frames take two detector calls of 16 and 1 (the last frame, the only face, is
    found), and 3 faces in batches of 2 give 3 latent rows, each the same as its frame's alone."""
    detector = StubDetector()
    parser = dataclasses.replace(networks, face_parser=SkinParser())
    avatar = prepare_avatar([np.zeros_like(face)] * 16 + [face], parser, detector=detector)
    assert detector.calls == 2 and avatar.faces == 1 and avatar.boxes[16] is not None
    batched = prepare_avatar([face] * 3, parser, detector=StubDetector(), batch_size=2)
    assert batched.latents.shape[0] == 3 and batched.latent_rows == (0, 1, 2)
    assert torch.allclose(batched.latents[2], batched.latents[0], atol=1e-5)


def test_cheek_widths_keep_their_sides_and_fps_must_be_positive(networks, face) -> None:
    """Guards the options' checks: the left and right cheek widths are kept in that order, and fps 0 is refused
    (it would divide every later clip's timing by zero)."""
    parser = dataclasses.replace(networks, face_parser=SkinParser())
    avatar = prepare_avatar([face], parser, detector=StubDetector(), cheek_widths=(60, 120), fps=25)
    assert avatar.cheek_widths == (60, 120) and avatar.fps == 25.0
    with pytest.raises(InputError, match="fps"):
        prepare_avatar([face], parser, detector=StubDetector(), fps=0)


def test_whisper_states_are_the_embeddings_each_layers_output_and_the_final_layer_norm(networks) -> None:
    """Upstream stacks whisper.encoder(..., output_hidden_states=True).hidden_states as transformers 4.39.2 (its pin)
    made them: the embeddings (conv1, conv2, GELUs, positions), then each layer's output but the last, then the last
    layer's output after the final layer norm. Written out here so a transformers release that records other
    tensors (its hooks changed how hidden states are collected) cannot change the prompts unnoticed."""
    from torch.nn.functional import gelu

    from engine.lipsync.musetalk.audio import whisper_input_features
    from engine.lipsync.musetalk.generate import whisper_segment_encoder

    t = np.arange(SR) / SR
    (features,) = whisper_input_features((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    whisper = networks.whisper
    with torch.inference_mode():
        state = gelu(whisper.conv2(gelu(whisper.conv1(features)))).permute(0, 2, 1) + whisper.embed_positions.weight
        expected = []
        for layer in whisper.layers:
            expected.append(state[0])
            state = layer(state, None)
            state = state[0] if isinstance(state, tuple) else state
        expected.append(whisper.layer_norm(state)[0])
        ours = whisper_segment_encoder(networks)(features)
    assert ours.shape == (len(whisper.layers) + 1, 1500, whisper.config.d_model)
    torch.testing.assert_close(ours, torch.stack(expected), rtol=0, atol=1e-6)


class _RandomHalfWhisper(torch.nn.Module):
    """An fp16 whisper stood in for: five small random fp16 hidden states per segment (fixed by the seed)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))
        self.width = width

    def forward(self, features: torch.Tensor, output_hidden_states: bool) -> SimpleNamespace:
        assert features.dtype == torch.float16  # upstream: input_feature.to(device).to(weight_dtype)
        generator = torch.Generator().manual_seed(3)
        states = tuple(torch.randn(1, audio.SEGMENT_ROWS, self.width, generator=generator).half() for _ in range(5))
        return SimpleNamespace(hidden_states=states)


def test_fp16_prompts_add_upstreams_halved_encoding_in_fp16_and_latents_reach_the_unet_in_its_dtype() -> None:
    """Upstream's fp16 path: pe.half() is added to the fp16 whisper windows in fp16 (not in float32 and then
    rounded, which differs by a step of fp16 on some values), and the latents are cast to the UNet's dtype."""
    avatar, width = _stub_avatar(), 4
    unet = SimpleNamespace(config=SimpleNamespace(in_channels=8), dtype=torch.float16)
    networks = SimpleNamespace(device=torch.device("cpu"), whisper=_RandomHalfWhisper(width), unet=unet)
    speech = _speech(0.5)
    step = _SpyStep(networks, 4)
    list(generate(avatar, speech, 25, networks, 4, extractor=_SilentExtractor(), runtime=step))  # type: ignore[arg-type]
    states = networks.whisper(torch.zeros(1, dtype=torch.float16), True).hidden_states
    windows = audio.audio_prompts(torch.stack(states)[:, 0].permute(1, 0, 2), len(speech), 25)
    with_face = [i for i in range(13) if avatar.source_frame(i) != 1]
    expected = windows[with_face] + audio.positional_encoding(50, width).half()
    prompts = torch.cat(step.prompts)
    assert prompts.dtype == torch.float16 and torch.equal(prompts, expected)
    assert all(latents.dtype == torch.float16 for latents in step.latents)


# --------------------------------------------------------------------------- upstream's real-time Avatar, written out
# scripts/realtime_inference.py's Avatar.prepare_material and process_frames, step by step in PIL, OpenCV and numpy
# as upstream's code runs them, with the posterior's mean for its sample (our deliberate difference) and every
# frame holding a face (upstream's cycle of latents slips past a frame without one; ours passes it through).

REALTIME_MARGIN = 10  # upstream's --extra_margin default, v1.5 only


class _ColourParser(torch.nn.Module):
    """A face parser whose labels follow the pixels (skin where red leads, nose where green does, the upper lip
    where blue does), so the blend masks depend on where the region was cut and how it was resized."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # _parse reads the parser's dtype from its parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from engine.lipsync.musetalk.blend import NOSE, UPPER_LIP

        logits = torch.full((x.shape[0], 19, x.shape[2], x.shape[3]), -10.0, dtype=x.dtype)
        logits[:, SKIN], logits[:, NOSE], logits[:, UPPER_LIP] = x[:, 0], x[:, 1], x[:, 2]
        return logits


class _BoxPerFrame:
    """A detector that finds frame i's face at boxes[i]."""

    name = "stub"

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        self.boxes, self.seen = boxes, 0

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        found = [np.array([[*self.boxes[self.seen + i], 0.9]], np.float32) for i in range(len(frames))]
        self.seen += len(frames)
        return found


class _TexturedStep(_SpyStep):
    """As _SpyStep, but every decoded face is random texture (a flat face looks the same however it is resized),
    kept in `faces`."""

    def __init__(self, networks: Any, batch_size: int) -> None:
        super().__init__(networks, batch_size)
        self.faces: list[torch.Tensor] = []

    def __call__(self, latents: torch.Tensor, prompts: torch.Tensor, result: RunResult | None = None) -> StepFaces:
        self.latents.append(latents.clone())
        rng = np.random.default_rng(len(self.faces))
        faces = torch.from_numpy(rng.integers(0, 256, (len(latents), 256, 256, 3), dtype=np.uint8))
        self.faces.append(faces)
        return StepFaces(faces, torch.ones(len(latents), dtype=torch.bool))


def _upstream_latents(crop_bgr: np.ndarray, vae: Any) -> torch.Tensor:
    """vae.get_latents_for_unet on a 256x256 BGR crop: preprocess_img with and without the half mask (float64
    division, float32 tensor, rows 128.. zeroed, Normalize(0.5, 0.5)), each encoded alone, [masked, reference]."""
    import cv2

    rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
    pixels = torch.FloatTensor(np.transpose(np.asarray([rgb]) / 255.0, (3, 0, 1, 2))).squeeze()
    mask = torch.zeros(256, 256)
    mask[:128] = 1
    encoded = []
    for image in (pixels * (mask > 0.5), pixels):
        normalised = ((image - 0.5) / 0.5).unsqueeze(0)
        with torch.no_grad():
            encoded.append(vae.config.scaling_factor * vae.encode(normalised).latent_dist.mean)
    return torch.cat(encoded, dim=1)


def _upstream_prepare_material(frame: np.ndarray, box: list[int], parser: torch.nn.Module) -> tuple[np.ndarray, list]:
    """blending.get_image_prepare_material(frame, box, fp=fp, mode="jaw") with its defaults (upper_boundary_ratio
    0.5, expand 1.5, blur 0.1), FaceParsing's call (PIL bilinear to 512, ToTensor, ImageNet Normalize, the first
    output's argmax, the jaw mode with 90-pixel cheeks) and face_seg's resize back (PIL's default filter)."""
    import cv2
    from PIL import Image

    from engine.lipsync.musetalk.blend import parsing_mask

    body = Image.fromarray(frame[:, :, ::-1])
    x, y, x1, y1 = box
    centre_x, centre_y = (x + x1) // 2, (y + y1) // 2
    s = int(max(x1 - x, y1 - y) // 2 * 1.5)
    crop_box = [centre_x - s, centre_y - s, centre_x + s, centre_y + s]
    x_s, y_s = crop_box[0], crop_box[1]
    face_large = body.crop(crop_box)
    ori_shape = face_large.size
    scaled = np.asarray(face_large.resize((512, 512), Image.BILINEAR)).astype(np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    tensor = torch.from_numpy(((scaled - mean) / std).transpose(2, 0, 1).copy()).unsqueeze(0)
    with torch.no_grad():
        labels = parser(tensor)[0].numpy().argmax(0)
    seg = Image.fromarray(parsing_mask(labels, "jaw", (90, 90))).resize(ori_shape)
    inner = (x - x_s, y - y_s, x1 - x_s, y1 - y_s)
    mask_image = Image.new("L", ori_shape, 0)
    mask_image.paste(seg.crop(inner), inner)
    width, height = mask_image.size
    top = int(height * 0.5)
    kept = Image.new("L", ori_shape, 0)
    kept.paste(mask_image.crop((0, top, width, height)), (0, top))
    kernel = int(0.1 * ori_shape[0] // 2 * 2) + 1
    return cv2.GaussianBlur(np.array(kept), (kernel, kernel), 0), crop_box


def _upstream_blending(
    frame: np.ndarray, face: np.ndarray, box: list[int], mask: np.ndarray, crop_box: list
) -> np.ndarray:
    """blending.get_image_blending: the face pasted into the region's crop, the crop pasted through the mask."""
    from PIL import Image

    body = Image.fromarray(frame[:, :, ::-1])
    x, y, x1, y1 = box
    x_s, y_s = crop_box[0], crop_box[1]
    face_large = body.crop(crop_box)
    face_large.paste(Image.fromarray(face[:, :, ::-1]), (x - x_s, y - y_s, x1 - x_s, y1 - y_s))
    body.paste(face_large, crop_box[:2], Image.fromarray(mask).convert("L"))
    return np.array(body)[:, :, ::-1]


def test_a_prepared_avatar_plays_as_upstreams_realtime_avatar(networks) -> None:
    """Guards every step of the real-time path against upstream's Avatar written out: v1.5's margin below each
    box, clipped at the bottom; the Lanczos crop and its [masked, reference] latents; the forward-then-backward
    cycle of frames, boxes, latents and masks; each mask from the parsed region (expand 1.5, the lower half, blur
    0.1); output frame i taking cycle entry i % len(cycle); the decoded face resized to the box with cv2's default
    (bilinear) filter and blended through the mask. Boxes reach past the top, left and bottom of the frame."""
    import cv2

    rng = np.random.default_rng(11)
    frames = [cv2.GaussianBlur(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8), (9, 9), 0) for _ in range(3)]
    boxes = [(60, 40, 150, 140), (70, 50, 170, 195), (10, 20, 100, 120)]  # 195 + 10 passes the bottom
    parsed = dataclasses.replace(networks, face_parser=_ColourParser())
    avatar = prepare_avatar(frames, parsed, detector=_BoxPerFrame(boxes), batch_size=2)

    coord_list, latent_list = [], []
    for (x1, y1, x2, y2), frame in zip(boxes, frames, strict=True):
        y2 = min(y2 + REALTIME_MARGIN, frame.shape[0])
        coord_list.append([x1, y1, x2, y2])
        crop = cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4)
        latent_list.append(_upstream_latents(crop, networks.vae))
    frame_cycle, coord_cycle = frames + frames[::-1], coord_list + coord_list[::-1]
    latent_cycle = latent_list + latent_list[::-1]
    material = [
        _upstream_prepare_material(f, c, parsed.face_parser) for f, c in zip(frame_cycle, coord_cycle, strict=True)
    ]

    for i in range(3):
        plan = avatar.plans[i]
        assert avatar.boxes[i] == plan.box == tuple(coord_list[i]), i
        assert list(plan.region) == material[i][1] and np.array_equal(plan.mask.numpy(), material[i][0]), i
    assert avatar.plans[1].mask.numpy().max() > 0 and coord_list[1][3] == 200  # a real mask; the margin clipped

    speech = _speech(0.5)  # 13 frames: the 6-frame cycle twice and once more
    stub = _stub_networks()
    step = _TexturedStep(stub, 4)
    out = list(generate(avatar, speech, 25, stub, 4, extractor=_SilentExtractor(), runtime=step))  # type: ignore[arg-type]
    faces, fed = torch.cat(step.faces).numpy(), torch.cat(step.latents)
    assert len(out) == 13 == len(fed)
    for i, frame in enumerate(out):
        k = i % len(frame_cycle)
        assert torch.allclose(fed[i], latent_cycle[k][0], atol=2e-6), i  # one batched encode against two
        x1, y1, x2, y2 = coord_cycle[k]
        face = cv2.resize(faces[i].astype(np.uint8), (x2 - x1, y2 - y1))
        want = _upstream_blending(frame_cycle[k], face, coord_cycle[k], *material[k])
        assert np.array_equal(frame, want), i
