"""--check-precision: the first frames of a fp16/bf16 Wav2Lip run also go through fp32, and the run says how far
apart the two are (issue #17: bf16 is an option with its error reported, never the default)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lipsync import write_wav

from engine.core.audio import SAMPLE_RATE, load_audio
from engine.core.device import capabilities
from engine.core.results import RunResult
from engine.lipsync.cli import precision_line
from engine.lipsync.config import LipSyncConfig, precision_summary
from engine.lipsync.engines import PRECISION_CHECK_FRAMES, Wav2LipEngine
from engine.models.wav2lip import FACE_SIZE, load_wav2lip, random_wav2lip_checkpoint

CPU = torch.device("cpu")
ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("precision_check") / "wav2lip.pth"
    random_wav2lip_checkpoint(path, seed=3)
    return path


def inputs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (count, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    return rng.standard_normal((count, 80, 16)).astype(np.float32), crops, np.zeros(count, np.float32)


def fp32_forward(checkpoint: Path, mels: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """The checkpoint as it loads, in fp32, with the face input made as upstream makes it; 0..255."""
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    masked = faces.clone()
    masked[:, :, FACE_SIZE // 2 :] = 0
    with torch.inference_mode():
        out = load_wav2lip(checkpoint)(torch.from_numpy(mels).unsqueeze(1), torch.cat([masked, faces], dim=1))
    return out.permute(0, 2, 3, 1).numpy() * 255.0


def test_the_first_frames_are_compared_with_fp32_once(checkpoint) -> None:
    gen = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "bf16", check_precision=True)
    mels, crops, energy = inputs(PRECISION_CHECK_FRAMES + 2)
    out = gen(mels, crops, energy)
    check = gen.precision_check
    assert check is not None and check["against"] == "fp32" and check["frames"] == PRECISION_CHECK_FRAMES
    diff = np.abs(out[:PRECISION_CHECK_FRAMES] - fp32_forward(checkpoint, mels, crops)[:PRECISION_CHECK_FRAMES])
    assert check["max_grey_levels"] == pytest.approx(float(diff.max()), abs=0.01)
    assert check["mean_grey_levels"] == pytest.approx(float(diff.mean()), abs=0.001)
    assert check["max_grey_levels"] > 0.01  # bf16 is not fp32: a check that compared bf16 with itself would be 0
    gen(*inputs(2, seed=1))
    assert gen.precision_check == check  # measured once, on the first batch


def test_only_the_rows_computed_are_compared(checkpoint) -> None:
    """On the CPU the generator computes only the rows the paste reads (from first_row, rounded down to a multiple
    of 8) and leaves the rows above zero: compared too, those skipped rows would count as differences."""
    gen = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "bf16", check_precision=True)
    mels, crops, energy = inputs(2)
    out = gen(mels, crops, energy, 24)
    diff = np.abs(out[:, 24:] - fp32_forward(checkpoint, mels, crops)[:, 24:])
    check = gen.precision_check
    assert check is not None and check["max_grey_levels"] == pytest.approx(float(diff.max()), abs=0.01)
    assert check["mean_grey_levels"] == pytest.approx(float(diff.mean()), abs=0.001)


def test_a_short_first_batch_is_compared_whole(checkpoint) -> None:
    gen = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "bf16", check_precision=True)
    gen(*inputs(2))
    assert gen.precision_check is not None and gen.precision_check["frames"] == 2


@pytest.mark.parametrize(("precision", "asked"), [("bf16", False), ("fp32", True)])
def test_no_check_unless_asked_at_a_reduced_precision(checkpoint, precision, asked) -> None:
    gen = Wav2LipEngine(checkpoint, CPU, capabilities(CPU), precision, check_precision=asked)
    gen(*inputs(2))
    assert gen.precision_check is None


def test_the_run_reports_the_check(checkpoint, tmp_path) -> None:
    from engine.core.settings import load_settings
    from engine.lipsync.pipeline import run_lipsync

    settings = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    speech = write_wav(tmp_path / "speech.wav", load_audio(ASSETS / "speech.wav")[:SAMPLE_RATE])  # a short run
    config = LipSyncConfig(
        face=ASSETS / "face.jpg", audio=speech, checkpoint=str(checkpoint),
        precision="bf16", check_precision=True, box=(172, 60, 280, 200),
    )  # fmt: skip
    result = run_lipsync(config, tmp_path / "out.mp4", settings, device="cpu")
    check = result.metrics["precision_check"]
    assert check["frames"] == PRECISION_CHECK_FRAMES and np.isfinite(check["max_grey_levels"])
    warned = any(w.startswith("bf16 against fp32") for w in result.warnings)
    assert warned == (check["max_grey_levels"] > 1.0)
    assert precision_line(result).startswith(f"bf16 against fp32 on the first {PRECISION_CHECK_FRAMES} frames")
    assert precision_line(RunResult()) == ""
    fp32 = run_lipsync(dataclasses.replace(config, precision="fp32"), tmp_path / "fp32.mp4", settings, device="cpu")
    assert "precision_check" not in fp32.metrics  # it said nothing at all
    assert "--check-precision compares fp16 or bf16 with fp32; this run is fp32: nothing to compare" in fp32.warnings


def test_a_check_that_met_nan_says_so() -> None:
    check = {"against": "fp32", "frames": 4, "max_grey_levels": None, "mean_grey_levels": None}
    assert precision_summary("fp16", check) == "fp16 against fp32 on the first 4 frames: NaN or infinite values"
    result = RunResult(precision="fp16", metrics={"precision_check": check})
    assert precision_line(result) == precision_summary("fp16", check) + "\n"


def test_a_finite_check_gives_its_largest_and_its_mean_difference() -> None:
    """The line a user reads: the largest difference to two decimals, then the mean to three (not swapped)."""
    check = {"against": "fp32", "frames": 3, "max_grey_levels": 2.3456, "mean_grey_levels": 0.01234}
    assert precision_summary("bf16", check) == (
        "bf16 against fp32 on the first 3 frames: up to 2.35 grey levels apart (mean 0.012)"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_check_on_the_gpu(checkpoint, precision) -> None:
    cuda = torch.device("cuda")
    caps = capabilities(cuda)
    if precision == "bf16" and not caps.bf16:
        pytest.skip(f"{caps.name} has no bf16")
    gen = Wav2LipEngine(checkpoint, cuda, caps, precision, check_precision=True)
    mels, crops, energy = inputs(8)
    out = gen(mels, crops, energy)
    check = gen.precision_check
    assert check is not None and check["frames"] == PRECISION_CHECK_FRAMES
    expected = fp32_forward(checkpoint, mels[:PRECISION_CHECK_FRAMES], crops[:PRECISION_CHECK_FRAMES])
    # The fp32 side ran on the GPU too (TF32 off): within float rounding of the CPU's fp32 forward.
    diff = np.abs(out[:PRECISION_CHECK_FRAMES] - expected)
    assert 0 < check["max_grey_levels"] == pytest.approx(float(diff.max()), abs=0.05)
