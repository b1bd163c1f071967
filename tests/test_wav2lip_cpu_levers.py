"""Wav2Lip's CPU levers (issue #17): a still face encoded once, channels_last on the CPU, BatchNorms folded into the
convolutions, a small CPU batch, only the rows the paste reads computed.

Each lever must leave the frames as they were: the generator's outputs are compared with the full forward of the
checkpoint as it loads (no lever applied).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core.device import capabilities
from engine.lipsync.engines import (
    CPU_BATCH_SIZE,
    CPU_FRAMES_ALIVE,
    CPU_NETWORK_SAMPLE_BYTES,
    ROW_STEP,
    Wav2LipEngine,
    auto_batch_size,
    cpu_sample_bytes,
)
from engine.lipsync.paste import first_row_read, paste
from engine.models.wav2lip import FACE_SIZE, MEL_SHAPE, load_wav2lip

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small batches in many calls: on a shared CPU, two threads meeting at every layer's barrier wait far longer
    than the work takes (the results do not depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(wav2lip_checkpoint: Path) -> Path:
    return wav2lip_checkpoint


def engine(checkpoint: Path, channels_last: bool = True) -> Wav2LipEngine:
    return Wav2LipEngine(checkpoint, CPU, capabilities(CPU), "fp32", channels_last=channels_last)


@pytest.fixture(scope="module")
def reference(checkpoint) -> torch.nn.Module:
    """The checkpoint as it loads: BatchNorms kept, the plain layout."""
    return load_wav2lip(checkpoint)


def crops_of(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)


def full_forward(
    model: torch.nn.Module, mels: np.ndarray, crops: np.ndarray, layout: torch.memory_format
) -> np.ndarray:
    """The generator's full forward, the input made here as upstream's inference makes it (on the model's device,
    in its dtype); (B, S, S, 3) in [0, 1], float32."""
    weight = next(model.parameters())
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    masked = faces.clone()
    masked[:, :, FACE_SIZE // 2 :] = 0
    face = torch.cat([masked, faces], dim=1).to(weight.device, weight.dtype).contiguous(memory_format=layout)
    mel = torch.from_numpy(mels).unsqueeze(1).to(weight.device, weight.dtype)
    with torch.inference_mode():
        return model(mel, face).float().permute(0, 2, 3, 1).cpu().numpy()


def test_forward_is_decode_of_encode_face(checkpoint) -> None:
    model = load_wav2lip(checkpoint)
    generator = torch.Generator().manual_seed(3)
    mel, face = (
        torch.randn(2, *MEL_SHAPE, generator=generator),
        torch.rand(2, 6, FACE_SIZE, FACE_SIZE, generator=generator),
    )
    with torch.inference_mode():
        skips = model.encode_face(face)
        assert [tuple(s.shape[1:]) for s in skips] == [
            (16, 96, 96), (32, 48, 48), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3), (512, 1, 1)
        ]  # fmt: skip
        assert torch.equal(model(mel, face), model.decode(mel, skips))


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_decode_still_is_decode_with_one_face_s_skips(checkpoint, fold, layout) -> None:
    model = load_wav2lip(checkpoint, channels_last=layout == torch.channels_last, fold_batchnorm=fold)
    generator = torch.Generator().manual_seed(4)
    face = torch.rand(1, 6, FACE_SIZE, FACE_SIZE, generator=generator).contiguous(memory_format=layout)
    mel = torch.randn(5, *MEL_SHAPE, generator=generator)
    with torch.inference_mode():
        skips = model.encode_face(face)
        expected = model.decode(mel, [s.expand(5, -1, -1, -1).contiguous(memory_format=layout) for s in skips])
        still = model.still_face(skips)
        # Per concatenating unit: the skip's share as one map, and only the weights that act on the rest.
        assert [tuple(c.shape) for c in still.constants] == [
            (1, 512, 3, 3), (1, 512, 6, 6), (1, 384, 12, 12), (1, 256, 24, 24), (1, 128, 48, 48),
            (1, 64, 96, 96), (1, 32, 96, 96)
        ]  # fmt: skip
        assert [w.shape[0] for w in still.weights[:-1]] == [512, 512, 512, 384, 256, 128]
        assert tuple(still.weights[-1].shape) == (32, 64, 3, 3)
        out = model.decode_still(mel, still)
        assert out.is_contiguous(memory_format=layout)
        assert (out - expected).abs().max() <= 1e-5
        assert (out[0] - out[1]).abs().mean() > 1e-3  # each frame follows its own mel


def test_identical_crops_are_encoded_once_and_give_the_full_forward(checkpoint, reference) -> None:
    gen = engine(checkpoint)
    face, other = crops_of(1, 1), crops_of(2, 1)
    mels = np.random.default_rng(0).standard_normal((14, 80, 16)).astype(np.float32)  # a different mel per frame
    plain = torch.contiguous_format
    expected = full_forward(reference, mels, np.repeat(face, 14, 0), plain)
    mixed = np.concatenate([face, other, face])
    expected_mixed = full_forward(reference, mels[9:12], mixed, plain)
    expected_other = full_forward(reference, mels[12:14], np.repeat(other, 2, 0), plain)
    encoder_batches: list[int] = []  # the batch size of each face encoder run, from here on
    gen.model.face_encoder_blocks[0].register_forward_hook(lambda m, i, o: encoder_batches.append(i[0].shape[0]))

    def run(start: int, crops: np.ndarray) -> np.ndarray:
        out = gen(mels[start : start + len(crops)], crops, np.zeros(len(crops), np.float32)) / 255.0
        assert out.shape == (len(crops), FACE_SIZE, FACE_SIZE, 3)
        return out

    first = run(0, np.repeat(face, 3, 0))  # the first batch: one crop encoded
    assert encoder_batches == [1]
    assert np.abs(first[0] - first[1]).mean() > 1e-3  # each frame follows its own mel, so a mix-up would show
    later = run(3, np.repeat(face, 3, 0))  # a later batch: the encoder does not run again
    one = run(6, face.copy())  # a batch of one
    last = run(7, np.repeat(face, 2, 0))  # the last, shorter batch
    assert encoder_batches == [1]
    assert np.abs(np.concatenate([first, later, one, last]) - expected[:9]).max() <= 1e-4

    assert np.abs(run(9, mixed) - expected_mixed).max() <= 1e-4  # crops that differ take the full forward
    assert encoder_batches == [1, 3]

    crops = np.repeat(other, 2, 0)  # another still face is encoded, not served from the kept one
    assert np.abs(run(12, crops) - expected_other).max() <= 1e-4
    crops[:] = face  # the caller reuses its array: the kept crop is a copy, so this is seen as a new face
    assert np.abs(run(12, crops) - expected[12:14]).max() <= 1e-4
    assert encoder_batches == [1, 3, 1, 1]


def test_a_moving_face_one_frame_a_batch_takes_the_full_forward(checkpoint, monkeypatch) -> None:
    """A batch of one is not a still face by itself: only where it repeats the crop the batch before ended on."""
    gen = engine(checkpoint)
    still_calls: list[int] = []
    decode_still = gen.model.decode_still
    monkeypatch.setattr(gen.model, "decode_still", lambda *a, **k: still_calls.append(1) or decode_still(*a, **k))
    mels = np.random.default_rng(1).standard_normal((1, 80, 16)).astype(np.float32)
    for seed in (3, 4, 5):  # a moving face at batch size 1
        gen(mels, crops_of(seed, 1), np.zeros(1, np.float32))
    assert still_calls == []
    gen(mels, crops_of(5, 1), np.zeros(1, np.float32))  # the same crop again: a still face
    gen(mels, np.repeat(crops_of(6, 1), 2, 0), np.zeros(2, np.float32))
    assert still_calls == [1, 1]


def test_channels_last_is_on_for_the_cpu_and_changes_nothing_visible(checkpoint, reference) -> None:
    on, off = engine(checkpoint), engine(checkpoint, channels_last=False)
    assert on.channels_last and not off.channels_last
    weight = on.model.face_encoder_blocks[1][0].conv_block[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    crops = crops_of(6, 4)  # all different: the full forward
    mels = np.random.default_rng(6).standard_normal((4, 80, 16)).astype(np.float32)
    a = on(mels, crops, np.zeros(4, np.float32)) / 255.0
    b = off(mels, crops, np.zeros(4, np.float32)) / 255.0
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a - full_forward(reference, mels, crops, torch.contiguous_format)).max() <= 1e-4
    # The still path in the plain layout too (the default one is covered above).
    still = np.repeat(crops[:1], 4, 0)
    expected = full_forward(reference, mels, still, torch.contiguous_format)
    assert np.abs(off(mels, still, np.zeros(4, np.float32)) / 255.0 - expected).max() <= 1e-4


def test_batchnorms_are_folded_into_the_convolutions(checkpoint, reference) -> None:
    gen = engine(checkpoint)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gen.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules()) == 50
    crops = crops_of(8, 3)
    mels = np.random.default_rng(8).standard_normal((3, 80, 16)).astype(np.float32)
    folded = gen(mels, crops, np.zeros(3, np.float32)) / 255.0
    expected = full_forward(reference, mels, crops, torch.contiguous_format)
    assert np.abs(folded - expected).max() <= 1e-4  # float rounding only: about 3e-5 seen
    assert np.abs(folded - expected).max() > 0  # folded for real: the sums are taken in another order
    # The reference still loads as the official checkpoint: folding happens in the engine's copy only.
    assert "face_encoder_blocks.0.0.conv_block.1.running_mean" in reference.state_dict()


@pytest.mark.parametrize("first_row", [1, 2, 7, 24, 41, 95])
def test_decoding_from_a_row_gives_the_rows_below_it_unchanged(checkpoint, first_row) -> None:
    model = load_wav2lip(checkpoint, channels_last=True, fold_batchnorm=True)
    generator = torch.Generator().manual_seed(5)
    layout = torch.channels_last
    faces = torch.rand(3, 6, FACE_SIZE, FACE_SIZE, generator=generator).contiguous(memory_format=layout)
    mel = torch.randn(3, *MEL_SHAPE, generator=generator)
    with torch.inference_mode():
        skips = model.encode_face(faces)
        still = model.still_face(model.encode_face(faces[:1]))
        for full, cut in [
            (model.decode(mel, skips), model.decode(mel, skips, first_row)),
            (model.decode_still(mel, still), model.decode_still(mel, still, first_row)),
        ]:
            assert cut.shape == full.shape
            assert (cut[:, :, first_row:] - full[:, :, first_row:]).abs().max() <= 1e-5
            assert not cut[:, :, :first_row].any()  # above: zeros, not computed
    keeps = model.row_starts(first_row)
    assert keeps[0] == 0 and keeps[-1] == max(0, first_row - 1)  # the 1x1 bottleneck is whole
    assert keeps == sorted(keeps)  # a deeper, smaller stage never needs rows further down
    with pytest.raises(ValueError, match="not within"):
        model.row_starts(FACE_SIZE)


def test_the_rows_skipped_are_a_real_share_of_the_decoder(checkpoint) -> None:
    """The blend paste's usual first row (24) skips a fifth of the 96x96 stage and a sixth of the 48x48 one."""
    keeps = load_wav2lip(checkpoint).row_starts(24)
    assert keeps == [0, 0, 0, 1, 4, 10, 23]  # per block: 1, 3, 6, 12, 24, 48 and 96 rows high


@pytest.mark.parametrize("size", [(108, 140), (200, 200), (60, 60), (40, 80), (500, 300), (97, 191), (12, 12)])
def test_first_row_read_is_the_first_row_the_blend_paste_reads(size) -> None:
    """Not one row too cautious nor one too bold: a finite value however large in the rows above it changes
    nothing, in it the paste (its weight there is small but not zero, except where a cubic tap falls exactly on a
    row, as at 96 rows high)."""
    width, height = size
    rng = np.random.default_rng(width * height)
    box = (7, 5, 7 + width, 5 + height)
    frame = rng.integers(0, 256, (height + 12, width + 20, 3), dtype=np.uint8)
    prediction = rng.uniform(0, 255, (FACE_SIZE, FACE_SIZE, 3)).astype(np.float32)
    top = first_row_read(box, FACE_SIZE)
    assert first_row_read(box, FACE_SIZE, "upstream") == 0  # it pastes the whole box
    assert height < 40 or 10 <= top <= 40  # about a quarter of the way down
    expected = frame.copy()
    paste(expected, box, prediction)
    for rows, changes in ((slice(0, top), False), (slice(top, top + 1), True)):
        poisoned, got = prediction.copy(), frame.copy()
        poisoned[rows] = 1e30
        paste(got, box, poisoned)
        assert np.array_equal(got, expected) != changes, (rows, top)


def test_the_engine_computes_from_the_first_row_read_rounded_down(checkpoint) -> None:
    gen = engine(checkpoint)
    still, moving = np.repeat(crops_of(9, 1), 3, 0), crops_of(10, 3)
    mels = np.random.default_rng(9).standard_normal((3, 80, 16)).astype(np.float32)
    quiet = np.zeros(3, np.float32)
    for crops in (still, moving):
        full = gen(mels, crops, quiet)
        cut = gen(mels, crops, quiet, first_row=29)
        top = 29 - 29 % ROW_STEP  # 24: a dozen shapes at most for a moving face
        # Grey levels: the same rows, rounded differently only where NNPACK's Winograd tiles start elsewhere
        # (models/winograd.py); a row computed wrongly would be off by whole grey levels.
        assert np.abs(cut[:, top:] - full[:, top:]).max() <= 0.05
        assert not cut[:, :top].any() and cut[:, top].any()


def test_the_cpu_batch_is_small() -> None:
    assert CPU_BATCH_SIZE == 16
    assert auto_batch_size(CPU, "fp32") == 16
    assert auto_batch_size(CPU, "bf16") == 16
    # Large frames take fewer per batch, so that the frames in flight stay small beside the network.
    assert auto_batch_size(CPU, "fp32", (512, 512)) == 16
    assert auto_batch_size(CPU, "fp32", (1280, 720)) == 8
    assert auto_batch_size(CPU, "fp32", (1920, 1080)) == 4
    assert auto_batch_size(CPU, "fp32", (3840, 2160)) == 4


def test_the_gpu_batch_is_the_largest_power_of_two_in_half_its_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """About 6 MiB a sample in fp32 (tf32 too) and 3 in fp16 or bf16, within half the GPU memory the process may use,
    at most `cap` and at least 1 (the OOM back-off halves a guess too bold). No GPU needed: the memory is given."""
    import engine.lipsync.engines as engines

    gpu, free = torch.device("cuda", 0), {"bytes": 2**30}
    monkeypatch.setattr(engines, "usable_gpu_memory", lambda device: free["bytes"])
    assert auto_batch_size(gpu, "fp32") == auto_batch_size(gpu, "tf32") == 64  # 512 MiB / 6 MiB: 85
    assert auto_batch_size(gpu, "fp16") == auto_batch_size(gpu, "bf16") == 128  # 512 MiB / 3 MiB: 170
    free["bytes"] = 80 * 2**30
    assert auto_batch_size(gpu, "fp16") == 512 and auto_batch_size(gpu, "fp16", cap=64) == 64
    free["bytes"] = 2**20
    assert auto_batch_size(gpu, "fp32") == 1


def test_a_cpu_frame_costs_the_networks_share_only_where_wav2lip_runs() -> None:
    """A CPU batch's memory check charges each frame its copies in flight, plus Wav2Lip's activations for Wav2Lip;
    the baseline has no network, and a batch it can hold was refused for Wav2Lip's share."""
    width, height = 1280, 720
    frames = CPU_FRAMES_ALIVE * width * height * 3
    assert cpu_sample_bytes((width, height), network=False) == frames
    assert cpu_sample_bytes((width, height), network=True) == frames + CPU_NETWORK_SAMPLE_BYTES


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_still_path_on_the_gpu(checkpoint, precision) -> None:
    device = torch.device("cuda")
    gen = Wav2LipEngine(checkpoint, device, capabilities(device), precision)
    crops = np.repeat(crops_of(7, 1), 16, 0)
    mels = np.random.default_rng(7).standard_normal((16, 80, 16)).astype(np.float32)
    out = np.concatenate([gen(mels[:12], crops[:12], np.zeros(12)), gen(mels[12:], crops[12:], np.zeros(4))]) / 255.0
    err = np.abs(out - full_forward(load_wav2lip(checkpoint, device), mels, crops, torch.contiguous_format))
    assert np.abs(out[0] - out[1]).mean() > 1e-3  # the mels matter, so a mix-up would show
    if precision == "fp32":  # TF32 is off: only batch-size dependent kernel choices differ
        assert err.max() <= 1e-4
    else:  # fp16 rounding through random weights, as in tests/test_gpu.py's fp16 check, and far less on average
        assert err.mean() <= 0.5 / 255 and err.max() <= 40 / 255


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_shape_per_job_on_the_gpu(checkpoint, precision) -> None:
    """On CUDA every call has the first call's shape: all rows whatever the first row read, and a shorter last
    batch padded (cuDNN autotunes each new shape), with the same frames as unpadded calls."""
    device = torch.device("cuda")
    gen = Wav2LipEngine(checkpoint, device, capabilities(device), precision)
    weight = next(gen.model.parameters())  # what was asked for is what runs: CUDA, in that precision
    assert weight.device.type == "cuda" and weight.dtype == (torch.float16 if precision == "fp16" else torch.float32)
    assert gen.winograd_layers == 0
    mels = np.random.default_rng(11).standard_normal((4, 80, 16)).astype(np.float32)
    for crops in (np.repeat(crops_of(11, 1), 4, 0), crops_of(12, 4)):  # the still path and the full one
        full = gen(mels, crops, np.zeros(4))
        cut = gen(mels, crops, np.zeros(4), first_row=24)
        assert cut[:, :24].any() and np.array_equal(cut, full)
    still = np.repeat(crops_of(11, 1), 4, 0)
    last = gen(mels[:2], still[:2], np.zeros(2))  # padded to 4: the same kernels, so the same values
    assert last.shape == (2, *full.shape[1:]) and np.array_equal(last, gen(mels, still, np.zeros(4))[:2])


def test_the_levers_benchmark_times_each_lever_on_and_off(checkpoint) -> None:
    """benchmarks/wav2lip_levers.py (no timing asserted): every lever, both sides per round, outputs compared."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "wav2lip_levers.py"
    spec = importlib.util.spec_from_file_location("wav2lip_levers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wav2lip_levers"] = module
    spec.loader.exec_module(module)
    rows, box = module.levers(checkpoint, batch=2, rounds=2)
    levers = ["rows", "rows", "still face", "folded BN", "channels_last", "winograd", "winograd", "winograd f4"]
    levers += ["winograd f4"] + ["small calls direct"] * 2
    assert [row["lever"] for row in rows] == levers
    first_row = first_row_read(box, FACE_SIZE)
    assert rows[0]["first_row"] == first_row - first_row % ROW_STEP > 0
    for row in rows:
        assert row["sides"]["with"]["n"] == row["sides"]["without"]["n"] == 2
        assert len(row["without_over_with"]["per_pair"]) == 2 and row["without_over_with"]["median"] > 0
        assert row["max_grey_levels"] <= (1e-3 if row["lever"] == "rows" else 0.05)  # the same frames
