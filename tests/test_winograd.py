"""NNPACK's Winograd convolutions (engine/models/winograd.py): the same outputs within float rounding, only where
they apply, and oneDNN's direct convolutions wherever NNPACK cannot run as asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.core.device import capabilities
from engine.lipsync import engines
from engine.lipsync.engines import Wav2LipEngine
from engine.models import winograd
from engine.models.wav2lip import FACE_SIZE, load_wav2lip
from engine.models.winograd import NnpackConv2d, nnpack_threads, use_winograd
from engine.models.winograd_f4 import WinogradF4Conv2d, mkl_at_full_speed

CPU = torch.device("cpu")
WIDE_3X3_UNITS = 17  # the generator's 3x3 stride-1 padding-1 convolutions with 128 or more input channels
F4_UNITS = 13  # those with at most 384 (winograd_f4.MAX_CHANNELS)

needs_nnpack = pytest.mark.skipif(not nnpack_threads(), reason="this PyTorch has no usable NNPACK")


@pytest.fixture(autouse=True)
def nnpack_pool_threads() -> Iterator[None]:
    """PyTorch's thread count as NNPACK's pool has it (made once per process), so that NNPACK really runs here."""
    threads = torch.get_num_threads()
    if nnpack_threads():
        torch.set_num_threads(nnpack_threads())
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(wav2lip_checkpoint: Path) -> Path:
    return wav2lip_checkpoint


@pytest.fixture
def nnpack_calls(monkeypatch) -> list[int]:
    """One entry per call that reached NNPACK (which still computes it)."""
    called: list[int] = []
    real = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: called.append(1) or real(*a))
    return called


def wide_conv(channels: int = 128) -> nn.Conv2d:
    torch.manual_seed(channels)
    return nn.Conv2d(channels, channels // 2, 3, 1, 1).eval()


@needs_nnpack
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_nnpack_matches_the_direct_convolution_and_keeps_the_layout(layout, nnpack_calls) -> None:
    conv = wide_conv()
    model = nn.Sequential(conv)
    assert use_winograd(model) == 1 and type(model[0]) is NnpackConv2d
    x = torch.randn(3, 128, 19, 20).contiguous(memory_format=layout)  # odd sizes: partial Winograd tiles
    with torch.inference_mode():
        expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 1, 1)
        got = model(x)
    assert nnpack_calls, "NNPACK was not used"
    assert got.shape == expected.shape and got.is_contiguous(memory_format=layout)
    assert (got.double() - expected).abs().max() <= 1e-4
    assert not torch.equal(got, F.conv2d(x, conv.weight, conv.bias, 1, 1))  # a different computation, really


def test_only_wide_3x3_stride_1_fp32_convolutions_are_swapped() -> None:
    model = nn.Sequential(
        nn.Conv2d(128, 64, 3, 1, 1),  # swapped
        nn.Conv2d(64, 64, 3, 1, 1),  # too narrow
        nn.Conv2d(128, 128, 3, 2, 1),  # strided
        nn.Conv2d(128, 128, 3, 1, 0),  # unpadded
        nn.Conv2d(128, 128, 1, 1, 0),  # 1x1
        nn.Conv2d(128, 128, 3, 1, 1, groups=2),  # grouped
        nn.Conv2d(128, 128, 3, 1, 1, dilation=2),  # dilated: NNPACK and F4 compute adjacent taps
        nn.Conv2d(128, 128, 3, 1, 1, padding_mode="reflect"),  # they pad with zeros
        nn.ConvTranspose2d(128, 128, 3, 1, 1),  # transposed
        nn.Conv2d(128, 128, 3, 1, 1).to(torch.bfloat16),  # not fp32
    )
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = use_winograd(model)
    assert swapped == (1 if nnpack_threads() else 0)
    assert [type(m) for m in model][1:] == [nn.Conv2d] * 7 + [nn.ConvTranspose2d, nn.Conv2d]
    after = model.state_dict()
    assert after.keys() == keys.keys() and all(torch.equal(after[k], keys[k]) for k in keys)


def test_nothing_is_swapped_where_nnpack_cannot_run(monkeypatch) -> None:
    monkeypatch.setattr(winograd, "_pool_threads", 0)
    model = nn.Sequential(wide_conv())
    assert use_winograd(model) == 0 and type(model[0]) is nn.Conv2d


@needs_nnpack
def test_another_thread_count_falls_back_to_the_direct_convolution(monkeypatch) -> None:
    conv = wide_conv()
    model = nn.Sequential(conv)
    use_winograd(model)
    x = torch.randn(2, 128, 24, 24)  # large enough for NNPACK

    def refuse(*_args):
        raise AssertionError("NNPACK ran on a pool made for another thread count")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    monkeypatch.setattr(torch, "get_num_threads", lambda: nnpack_threads() + 1)
    with torch.inference_mode():
        assert torch.equal(model(x), F.conv2d(x, conv.weight, conv.bias, 1, 1))


@needs_nnpack
def test_calls_of_few_pixels_run_the_direct_convolution(nnpack_calls) -> None:
    """Below MIN_PIXELS output pixels (batch x height x width) NNPACK's per-call weight transform costs more than
    it saves, so such calls go to oneDNN; one pixel more and NNPACK runs."""
    conv = wide_conv()
    model = nn.Sequential(conv)
    use_winograd(model, min_pixels=2 * 6 * 6 + 1)
    small, large = torch.randn(2, 128, 6, 6), torch.randn(1, 128, 7, 11)
    with torch.inference_mode():
        assert torch.equal(model(small), F.conv2d(small, conv.weight, conv.bias, 1, 1)) and not nnpack_calls
        model(large)
    assert nnpack_calls
    nnpack_calls.clear()
    exact = nn.Sequential(wide_conv())
    use_winograd(exact, min_pixels=2 * 6 * 6)
    with torch.inference_mode():
        exact(small)  # exactly min_pixels: NNPACK
    assert nnpack_calls
    default = nn.Sequential(wide_conv())
    use_winograd(default)
    assert default[0].min_pixels == winograd.MIN_PIXELS


@pytest.mark.parametrize("method", ["nnpack", "f4"])
def test_the_generator_gives_the_same_frames_with_winograd(checkpoint, nnpack_calls, monkeypatch, method) -> None:
    """Still face (decode_still, from a first row) and moving crops (the full forward), by each Winograd method
    against oneDNN's direct convolutions: within a few hundredths of a grey level, and each frame still follows its
    own mel."""
    if method == "nnpack" and not nnpack_threads():
        pytest.skip("this PyTorch has no usable NNPACK")
    monkeypatch.setattr(engines, "mkl_at_full_speed", lambda: method == "f4")  # whatever this CPU is
    monkeypatch.setattr(engines, "onednn_has_avx512", lambda: False)
    fast = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "fp32")
    direct = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "fp32", winograd=False)
    units = F4_UNITS if method == "f4" else WIDE_3X3_UNITS
    assert (fast.winograd_method, fast.winograd_layers) == (method, units)
    assert direct.winograd_layers == 0 and direct.winograd_method is None
    rng = np.random.default_rng(5)
    mels = rng.standard_normal((4, 80, 16)).astype(np.float32)
    still = np.repeat(rng.integers(0, 256, (1, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8), 4, 0)
    moving = rng.integers(0, 256, (4, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    quiet = np.zeros(4, np.float32)
    for crops, first_row in ((still, 24), (moving, 0)):
        nnpack_calls.clear()
        got = fast(mels, crops, quiet, first_row)
        assert bool(nnpack_calls) == (method == "nnpack")
        expected = direct(mels, crops, quiet, first_row)
        assert 0 < np.abs(got - expected).max() <= 0.05  # grey levels: another computation, the same frames
        assert np.abs(got[0] - got[1]).mean() > 0.1


@pytest.mark.parametrize(("intel", "avx512"), [(True, True), (True, False), (False, False), (False, True)])
def test_the_engine_picks_f4_on_intel_else_nnpack_without_avx512(checkpoint, monkeypatch, intel, avx512) -> None:
    """F4 where MKL's products run at full speed (Intel); elsewhere NNPACK unless oneDNN has AVX-512, where the
    direct convolutions stay."""
    monkeypatch.setattr(engines, "mkl_at_full_speed", lambda: intel)
    monkeypatch.setattr(engines, "onednn_has_avx512", lambda: avx512)
    gen = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "fp32")
    if intel:
        assert (gen.winograd_method, gen.winograd_layers) == ("f4", F4_UNITS)
        assert sum(isinstance(m, WinogradF4Conv2d) for m in gen.model.modules()) == F4_UNITS
        return
    assert not any(isinstance(m, WinogradF4Conv2d) for m in gen.model.modules())
    swapped = WIDE_3X3_UNITS if nnpack_threads() and not avx512 else 0
    assert (gen.winograd_method, gen.winograd_layers) == ("nnpack" if swapped else None, swapped)
    assert sum(isinstance(m, NnpackConv2d) for m in gen.model.modules()) == swapped


@pytest.mark.parametrize(
    ("vendor", "mkl", "full_speed"),
    [("GenuineIntel", True, True), ("AuthenticAMD", True, False), ("GenuineIntel", False, False),
     ("HygonGenuine", True, False), (None, True, False)],
)  # fmt: skip
def test_mkl_runs_at_full_speed_on_intel_cpus_only(tmp_path, monkeypatch, vendor, mkl, full_speed) -> None:
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    cpuinfo = tmp_path / "cpuinfo"
    if vendor is not None:  # None: no /proc/cpuinfo (not Linux)
        cpuinfo.write_text("".join(f"processor\t: {i}\nvendor_id\t: {vendor}\nflags\t\t: avx2\n\n" for i in range(2)))
    assert mkl_at_full_speed(cpuinfo) is full_speed


@pytest.mark.parametrize(
    ("avx512", "cap", "has"),
    [(False, None, False), (True, None, True), (True, "AVX512_CORE", True), (True, "avx10_1_512", True),
     (True, "ALL", True), (True, "AVX2", False), (True, "sse41", False)],
)  # fmt: skip
def test_onednn_has_avx512_unless_the_cpu_or_its_cap_says_otherwise(monkeypatch, avx512, cap, has) -> None:
    """NNPACK is AVX2 at most: it loses to oneDNN's AVX-512 direct convolutions, unless oneDNN is capped below."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert winograd.onednn_has_avx512() is has


@needs_nnpack
def test_a_swapped_layer_turned_to_bfloat16_runs_the_direct_convolution(nnpack_calls) -> None:
    """NNPACK computes fp32 only: a model cast to bf16 after the swap still convolves, by oneDNN."""
    model = nn.Sequential(wide_conv())
    use_winograd(model)
    model.to(torch.bfloat16)
    x = torch.randn(2, 128, 24, 24).to(torch.bfloat16)  # large enough for NNPACK
    with torch.inference_mode():
        got = model(x)
    assert not nnpack_calls and torch.equal(got, F.conv2d(x, model[0].weight, model[0].bias, 1, 1))


def test_the_older_dnnl_name_caps_onednn_too(monkeypatch) -> None:
    """DNNL_MAX_CPU_ISA is oneDNN's older name for the cap, still read; ONEDNN_MAX_CPU_ISA wins where both are set."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert winograd.onednn_has_avx512() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert winograd.onednn_has_avx512() is True


def test_winograd_is_for_the_cpu_in_fp32_only(checkpoint) -> None:
    assert Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "bf16").winograd_layers == 0
    model = load_wav2lip(checkpoint, fold_batchnorm=True)
    assert use_winograd(model) == (WIDE_3X3_UNITS if nnpack_threads() else 0)


@pytest.mark.parametrize("intel", [True, False])
def test_the_run_says_which_winograd_computed_it(checkpoint, tmp_path, monkeypatch, intel) -> None:
    from test_lipsync import write_wav

    from engine.core.audio import SAMPLE_RATE, load_audio
    from engine.core.settings import load_settings
    from engine.lipsync.config import LipSyncConfig
    from engine.lipsync.pipeline import run_lipsync

    monkeypatch.setattr(engines, "mkl_at_full_speed", lambda: intel)
    monkeypatch.setattr(engines, "onednn_has_avx512", lambda: False)
    assets = Path(__file__).resolve().parent.parent / "assets"
    speech = write_wav(tmp_path / "speech.wav", load_audio(assets / "speech.wav")[: SAMPLE_RATE // 2])
    config = LipSyncConfig(face=assets / "face.jpg", audio=speech, checkpoint=str(checkpoint), precision="fp32",
                           box=(172, 60, 280, 200))  # fmt: skip
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    metrics = run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu").metrics
    if intel:
        assert (metrics["winograd_method"], metrics["winograd_layers"]) == ("f4", F4_UNITS)
    elif nnpack_threads():
        assert (metrics["winograd_method"], metrics["winograd_layers"]) == ("nnpack", WIDE_3X3_UNITS)
    else:
        assert "winograd_method" not in metrics and "winograd_layers" not in metrics
