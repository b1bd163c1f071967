"""The Wav2Lip and S3FD networks, and loading their checkpoints (right files, and each kind of wrong one).

Weights are random, written in the official formats by the modules' own helpers: no downloads.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.serialization
from torch import nn

from engine.models.checkpoints import CheckpointError, load_strict, read_checkpoint, strip_module_prefix
from engine.models.s3fd import (
    ANCHOR_SIZES,
    INPUT_MEAN,
    S3FD,
    STRIDES,
    VARIANCES,
    L2Norm,
    head_map_sizes,
    load_s3fd,
    random_s3fd_checkpoint,
)
from engine.models.wav2lip import ConvUnit, Wav2Lip, load_wav2lip, random_wav2lip_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Random checkpoints in each official format, written once for the whole module."""
    d = tmp_path_factory.mktemp("ckpt")
    paths = {name: d / f"{name}.pth" for name in ("official", "no_prefix", "legacy_cuda", "s3fd")}
    random_wav2lip_checkpoint(paths["official"], seed=0)
    random_wav2lip_checkpoint(paths["no_prefix"], seed=0, prefix=False)
    # Checkpoints saved on a GPU by old torch are legacy (non-zip) pickles whose storages are tagged "cuda:0".
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        random_wav2lip_checkpoint(paths["legacy_cuda"], seed=0, legacy=True)
    random_s3fd_checkpoint(paths["s3fd"], seed=0)
    yield paths
    for path in paths.values():  # about 530 MB: do not leave it to pytest's retained temp dirs
        path.unlink(missing_ok=True)


def assert_names_problem(err: pytest.ExceptionInfo[CheckpointError], path: Path, *words: str) -> None:
    message = str(err.value)
    assert path.name in message and str(path.parent) not in message  # the file's name, never a server path
    assert "wav2lip.pth" in message  # the expected file
    for word in words:
        assert word in message, message


# --- Wav2Lip: the architecture ---------------------------------------------------------------------------------


def test_wav2lip_matches_the_published_layout() -> None:
    model = Wav2Lip()
    state = model.state_dict()
    assert len(state) == 352
    assert sum(p.numel() for p in model.parameters()) == 36_298_035
    keys = list(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert keys[0] == "face_encoder_blocks.0.0.conv_block.0.weight"
    assert shapes[keys[0]] == (16, 6, 7, 7)
    assert keys[-1] == "output_block.1.bias"
    assert shapes["output_block.1.weight"] == (3, 32, 1, 1)
    assert shapes["face_encoder_blocks.6.1.conv_block.0.weight"] == (512, 512, 1, 1)
    assert shapes["audio_encoder.0.conv_block.0.weight"] == (32, 1, 3, 3)
    assert shapes["audio_encoder.12.conv_block.0.weight"] == (512, 512, 1, 1)
    assert "audio_encoder.13.conv_block.0.weight" not in shapes
    # Decoder stages open with a transposed conv, whose weight is (cin, cout, k, k); cin includes the skip.
    assert shapes["face_decoder_blocks.1.0.conv_block.0.weight"] == (1024, 512, 3, 3)
    assert shapes["face_decoder_blocks.6.0.conv_block.0.weight"] == (160, 64, 3, 3)
    assert shapes["face_decoder_blocks.6.2.conv_block.1.running_var"] == (64,)
    assert shapes["output_block.0.conv_block.0.weight"] == (32, 80, 3, 3)


def test_wav2lip_units_add_their_input_where_upstreams_do() -> None:
    """Upstream's unit is conv, BatchNorm, then (residual units only) the input added, then ReLU; its residual units
    are the width-keeping 3x3 ones after each stage's first unit (28 in all); the output is a sigmoid. None of it shows
    in the state dict's keys or shapes: only in the numbers."""
    model = Wav2Lip().eval()
    units = {name: unit for name, unit in model.named_modules() if isinstance(unit, ConvUnit)}
    per_face_stage = [sum(units[f"face_encoder_blocks.{i}.{j}"].residual for j in range(len(block)))
                      for i, block in enumerate(model.face_encoder_blocks)]  # fmt: skip
    per_decoder_stage = [sum(getattr(unit, "residual", False) for unit in block) for block in model.face_decoder_blocks]
    audio = [i for i, unit in enumerate(model.audio_encoder) if unit.residual]
    assert per_face_stage == [0, 2, 3, 2, 2, 1, 0]
    assert per_decoder_stage == [0, 1, 2, 2, 2, 2, 2]
    assert audio == [1, 2, 4, 5, 7, 8, 10]
    assert not units["output_block.0"].residual
    assert sum(unit.residual for unit in units.values()) == 28

    generator = torch.Generator().manual_seed(2)
    for unit in units.values():  # BatchNorm statistics that are not the identity
        norm = unit.conv_block[1]
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    x = torch.randn(2, 32, 12, 12, generator=generator)
    with torch.no_grad():
        for name, add in (("face_encoder_blocks.1.1", True), ("audio_encoder.0", False)):
            unit = units[name]
            conv, norm = unit.conv_block
            inputs = x if add else x[:, :1]
            expected = F.relu(norm(conv(inputs)) + (inputs if add else 0))
            assert torch.allclose(unit(inputs.clone()), expected, atol=1e-6), name
        transposed = model.face_decoder_blocks[6][0]
        conv, norm = transposed.conv_block
        y = torch.randn(2, 160, 6, 6, generator=generator)
        assert torch.allclose(transposed(y), F.relu(norm(conv(y))), atol=1e-6)
        head, z = model.output_block, torch.randn(2, 80, 6, 6, generator=generator) * 4
        assert torch.allclose(head(z), torch.sigmoid(head[1](head[0](z))), atol=1e-6)  # a logistic output, not a ramp


def test_wav2lip_forward_on_loaded_official_checkpoint(files: dict[str, Path]) -> None:
    model = load_wav2lip(files["official"])
    assert not model.training
    generator = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 1, 80, 16, generator=generator)
    face = torch.rand(2, 6, 96, 96, generator=generator)
    with torch.no_grad():
        out = model(mel, face)
        other = model(mel, torch.rand(2, 6, 96, 96, generator=generator))
    assert out.shape == (2, 3, 96, 96)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert out.std().item() > 0.05  # random BatchNorm statistics keep eval outputs away from 0/1 saturation
    assert (out - other).abs().mean().item() > 1e-3  # the face input matters


# --- Wav2Lip: loading the right files --------------------------------------------------------------------------


def test_all_official_formats_load_the_same_weights(files: dict[str, Path]) -> None:
    raw = torch.load(files["official"], map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert files["legacy_cuda"].read_bytes()[:2] == b"\x80\x02"  # a pickle, not a zip
    if not torch.cuda.is_available():  # really CUDA-tagged: without a GPU it loads only with map_location
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(files["legacy_cuda"], weights_only=True)

    reference = read_checkpoint(files["no_prefix"], "x")
    assert next(iter(reference)) == "face_encoder_blocks.0.0.conv_block.0.weight"
    for name in ("official", "legacy_cuda"):
        state = strip_module_prefix(read_checkpoint(files[name], "x"))
        assert list(state) == list(reference)
        assert all(torch.equal(state[k], reference[k]) for k in reference)

    model = load_wav2lip(files["legacy_cuda"])
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    model = load_wav2lip(files["no_prefix"], dtype=torch.float64)
    assert model.output_block[1].weight.dtype == torch.float64
    assert model.output_block[0].conv_block[1].num_batches_tracked.dtype == torch.int64


def test_strip_module_prefix_strips_one_leading_prefix_only() -> None:
    t = torch.zeros(1)
    state = {"module.a.module.b": t, "c.module.d": t, "module.module.e": t, "f": t}
    assert list(strip_module_prefix(state)) == ["a.module.b", "c.module.d", "module.e", "f"]
    with pytest.raises(CheckpointError, match="both with and without"):
        strip_module_prefix({"module.a": t, "a": t})


def test_a_layer_named_module_is_not_over_stripped(tmp_path: Path) -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)  # a legitimate submodule called "module"

    saved = {"module." + k: v for k, v in Wrapper().state_dict().items()}  # as DataParallel saves it
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": saved, "optimizer": {"state": {}, "param_groups": []}, "global_step": 7}, path)
    state = strip_module_prefix(read_checkpoint(path, "a wrapper"))
    assert list(state) == ["module.weight", "module.bias"]
    load_strict(Wrapper(), state, "a wrapper")


def test_a_twice_wrapped_save_fails_with_a_hint() -> None:
    state = {"module.module." + k: v for k, v in Wav2Lip().state_dict().items()}
    with pytest.raises(CheckpointError, match="wrapped twice") as err:
        load_strict(Wav2Lip(), strip_module_prefix(state), "wav2lip.pth")
    assert "Missing keys (352)" in str(err.value)


# --- Wav2Lip: wrong files --------------------------------------------------------------------------------------


def test_html_page(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip.pth"
    path.write_text("\n  <!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>")
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "web page", "login or error page")
    path.write_text("<HTML><body>403 Forbidden</body></HTML>")
    with pytest.raises(CheckpointError, match="web page"):
        load_wav2lip(path)


def test_git_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip_gan.pth"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8\nsize 435801865\n"
    )
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "Git LFS pointer", "git lfs pull")


@pytest.mark.parametrize("name", ["official", "legacy_cuda"])
def test_truncated_download(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    data = files[name].read_bytes()
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "truncated")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "wav2lip.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(empty)
    assert_names_problem(err, empty, "empty (0 bytes)")
    missing = tmp_path / "nowhere" / "wav2lip.pth"
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(missing)
    assert_names_problem(err, missing, "no such file")
    with pytest.raises(CheckpointError, match="this is a directory, not a checkpoint file"):
        load_wav2lip(tmp_path)


def test_a_file_that_cannot_be_read_is_named_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No permission to read (the tests run as root, so the refusal is stood in for): a message, not an OSError."""
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(b"PK\x03\x04")

    def refuse(path: Path) -> str | None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("engine.models.checkpoints.unusable", refuse)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "it cannot be read: Permission denied")


def test_a_riff_file_of_an_unlisted_kind_gets_torchs_reason(tmp_path: Path) -> None:
    """A RIFF container that is none of WAV, AVI or WebP (a MIDI RMID) is not named, and is no KeyError."""
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(b"RIFF\x24\x00\x00\x00RMIDdata" + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "not a PyTorch checkpoint (")


def test_not_a_checkpoint_at_all(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "not a PyTorch checkpoint")
    path.write_bytes(b"\xfe\x01garbage" * 100)  # torch's reason without its advice to load it with weights_only off
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "not a PyTorch checkpoint (UnpicklingError: Unsupported operand 254)")
    assert "weights_only" not in str(err.value)
    # Objects weights_only loading refuses (e.g. training args) are reported, not executed.
    torch.save({"state_dict": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, "Python objects besides tensors (argparse.Namespace)")
    assert "weights_only" not in str(err.value) and "\x1b" not in str(err.value)  # not torch's advice to trust it


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("wav2lip.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
        ("wav2lip.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image"),
        ("wav2lip.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ", "a WAV file"),
        ("wav2lip.mp4", b"\x00\x00\x00\x20ftypisom", "an MP4 or MOV file"),
        ("wav2lip.onnx", b"\x08\x08\x12\x07pytorch", "an ONNX model"),
        ("wav2lip.pth", (40).to_bytes(8, "little") + b'{"a":{"dtype":"F32"}}', "a safetensors file"),
    ],
)
def test_a_file_of_another_kind_is_named_not_met_with_torchs_advice(tmp_path: Path, name: str, head: bytes,
                                                                    kind: str) -> None:  # fmt: skip
    """A photo or an ONNX model given as the checkpoint got torch's advice to load it with weights_only=False, which
    'will likely succeed' (it runs the file's code, and would not have succeeded)."""
    path = tmp_path / name
    path.write_bytes(head + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, f"this is {kind}, not a PyTorch checkpoint")
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (torch.zeros(3), "holds a Tensor"),
        ([torch.zeros(3)], "holds a list"),
        ({"epoch": 3, "lr": 0.1}, "dict without tensors (keys: epoch, lr)"),
        ({"state_dict": {"epoch": 3}}, "'state_dict' entry is a dict without tensors"),
        ({"state_dict": [1, 2]}, "'state_dict' entry holds a list"),
        ({"a": torch.zeros(1), "epoch": 3}, "1 of its 2 entries are not tensors (epoch)"),
        ({"a": torch.zeros(1), 0: torch.zeros(1)}, "1 of its 2 entries are not tensors (0)"),  # a key is a name
        ({}, "dict without tensors (keys: none)"),
        (
            {"a": torch.zeros(1), **{f"n{i}": i for i in range(12)}},
            "12 of its 13 entries are not tensors (n0, n1, n2, n3, n4, n5, n6, n7, n8, n9 ... and 2 more)",
        ),
    ],
)
def test_wrong_content(tmp_path: Path, content: object, words: str) -> None:
    path = tmp_path / "wav2lip.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(err, path, words)


def test_another_model(files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(files["s3fd"])
    assert_names_problem(
        err, files["s3fd"], "different network, the S3FD face detector", "Missing keys (352)", "Unexpected keys (65)"
    )
    assert "... and 342 more" in str(err.value)


def test_other_wav2lip_networks_are_recognised() -> None:
    def unit(cin: int, cout: int) -> dict[str, torch.Tensor]:
        return {"conv_block.0.weight": torch.zeros(cout, cin, 3, 3), "conv_block.0.bias": torch.zeros(cout)}

    syncnet = {
        f"{enc}.{i}.{k}": v
        for enc in ("face_encoder", "audio_encoder")
        for i in range(3)
        for k, v in unit(1, 32).items()
    }
    disc = {
        **{f"face_encoder_blocks.0.0.{k}": v for k, v in unit(3, 32).items()},
        "binary_pred.0.weight": torch.zeros(1),
    }
    for state, name in ((syncnet, "SyncNet"), (disc, "discriminator")):
        with pytest.raises(CheckpointError, match=f"different network, .*{name}"):
            load_strict(Wav2Lip(), state, "wav2lip.pth")
    with pytest.raises(CheckpointError, match=r"different network \(e\.g\."):
        load_strict(Wav2Lip(), {"backbone.weight": torch.zeros(1)}, "wav2lip.pth")


def test_one_wrong_shape_and_one_missing_key(files: dict[str, Path], tmp_path: Path) -> None:
    state = read_checkpoint(files["no_prefix"], "x")
    state["face_encoder_blocks.0.0.conv_block.0.weight"] = torch.zeros(32, 6, 3, 3)
    del state["audio_encoder.3.conv_block.1.running_var"]
    path = tmp_path / "fork.pth"
    torch.save(state, path)  # a plain state dict, as forks often save
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert_names_problem(
        err,
        path,
        "350 of the model's 352 entries match",
        "Missing keys (1): audio_encoder.3.conv_block.1.running_var",
        "Shape mismatches (1): face_encoder_blocks.0.0.conv_block.0.weight (file (32, 6, 3, 3), model (16, 6, 7, 7))",
        "only in part",
    )
    assert "Unexpected keys" not in str(err.value)


def test_a_wav2lip_file_missing_most_keys_is_not_called_another_network() -> None:
    """Only the decoder's keys: the file is Wav2Lip's own network, so the hint is a partial match, not 'a different
    network, the Wav2Lip generator'."""
    decoder_only = {k: v for k, v in Wav2Lip().state_dict().items() if k.startswith("face_decoder_blocks.")}
    with pytest.raises(CheckpointError, match="only in part") as err:
        load_strict(Wav2Lip(), decoder_only, "wav2lip.pth")
    assert "different network" not in str(err.value)


def test_extra_keys_of_a_known_network_beside_a_full_match_are_a_partial_match() -> None:
    """Every key of the model is there and one more that S3FD has: a modified file, not a different network. And
    extra 'module.' keys beside matched ones are no sign of a model wrapped twice."""
    model = nn.Linear(2, 2)
    for extra in ("fc7_mbox_conf.weight", "module.scale"):
        state = {**model.state_dict(), extra: torch.zeros(1)}
        with pytest.raises(CheckpointError, match="only in part") as err:
            load_strict(model, state, "a linear layer")
        assert "2 of the model's 2 entries match, the file has 3." in str(err.value)
        assert f"Unexpected keys (1): {extra}" in str(err.value)


def test_a_wrong_shape_alone_is_refused_in_words() -> None:
    """Every key there, one of another shape: a CheckpointError naming it, not torch's RuntimeError."""
    state = {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"Shape mismatches \(1\): weight \(file \(3, 2\), model \(2, 2\)\)"):
        load_strict(nn.Linear(2, 2), state, "a linear layer")


def test_exactly_ten_names_are_listed_without_and_more() -> None:
    model = nn.Sequential(*(nn.Linear(1, 1, bias=False) for _ in range(10)))
    with pytest.raises(CheckpointError) as err:
        load_strict(model, {"other.weight": torch.zeros(1)}, "ten layers")
    assert "Missing keys (10): 0.weight, 1.weight," in str(err.value) and "more" not in str(err.value)


# --- S3FD ------------------------------------------------------------------------------------------------------


def test_s3fd_layout() -> None:
    model = S3FD()
    state = model.state_dict()
    assert len(state) == 65  # 31 convolutions x (weight, bias) + 3 L2Norm weights
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 22_459_110  # 89.8 MB of float32: the size of the released s3fd.pth
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert next(iter(state)) == "conv1_1.weight"
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
    assert shapes["fc6.weight"] == (1024, 512, 3, 3)
    assert shapes["fc7.weight"] == (1024, 1024, 1, 1)
    assert shapes["conv3_3_norm_mbox_conf.weight"] == (4, 256, 3, 3)
    assert shapes["conv7_2_mbox_loc.weight"] == (4, 256, 3, 3)
    for name, channels, scale in (("conv3_3_norm", 256, 10.0), ("conv4_3_norm", 512, 8.0), ("conv5_3_norm", 512, 5.0)):
        assert torch.equal(state[f"{name}.weight"], torch.full((channels,), scale))
    assert model.fc6.padding == (3, 3) and model.fc6.dilation == (1, 1)


def test_s3fd_constants() -> None:
    assert STRIDES == (4, 8, 16, 32, 64, 128)
    assert ANCHOR_SIZES == (16, 32, 64, 128, 256, 512)
    assert VARIANCES == (0.1, 0.2)
    assert INPUT_MEAN == (104.0, 117.0, 123.0)
    assert head_map_sizes(128, 128) == [(32, 32), (16, 16), (8, 8), (8, 8), (4, 4), (2, 2)]
    assert head_map_sizes(480, 640) == [(120, 160), (60, 80), (30, 40), (19, 24), (10, 12), (5, 6)]


def test_s3fd_loads_strictly_and_runs_batched(files: dict[str, Path]) -> None:
    model = load_s3fd(files["s3fd"])
    saved = torch.load(files["s3fd"], map_location="cpu", weights_only=True)
    assert "state_dict" not in saved and len(saved) == 65  # a plain state dict, like s3fd.pth
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())

    raw_cls1: list[torch.Tensor] = []
    model.conv3_3_norm_mbox_conf.register_forward_hook(lambda m, i, o: raw_cls1.append(o))
    raw_cls2: list[torch.Tensor] = []
    model.conv4_3_norm_mbox_conf.register_forward_hook(lambda m, i, o: raw_cls2.append(o))
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 60
    with torch.no_grad():
        out = model(x)
        single = model(x[1:])
    assert len(out) == 12
    for i, (h, w) in enumerate(head_map_sizes(128, 128)):
        cls, reg = out[2 * i], out[2 * i + 1]
        assert cls.shape == (2, 2, h, w)
        assert reg.shape == (2, 4, h, w)
        assert torch.allclose(cls[1:], single[2 * i], atol=1e-4, rtol=1e-4)  # batching changes nothing
        assert torch.allclose(reg[1:], single[2 * i + 1], atol=1e-4, rtol=1e-4)
    # Max-out background: first head's background = largest of its 3 background scores; raw scores, as upstream's
    # network returns them (its detect.py takes the softmax)
    raw = raw_cls1[0]
    assert torch.equal(out[0], torch.stack((raw[:, :3].amax(dim=1), raw[:, 3]), dim=1))
    assert torch.equal(out[2], raw_cls2[0])


def test_s3fd_wrong_files(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_s3fd(files["no_prefix"])
    message = str(err.value)
    assert "s3fd.pth" in message and "different network" in message and files["no_prefix"].name in message
    html = tmp_path / "s3fd.pth"
    html.write_text("<!doctype html><title>Error</title>")
    with pytest.raises(CheckpointError, match=r"(?s)web page.*s3fd\.pth"):
        load_s3fd(html)


def test_l2norm_is_safe_in_half_precision() -> None:
    norm = L2Norm(512, scale=10)
    x = torch.rand(1, 512, 2, 2) * 2000  # VGG-sized activations: their sum of squares overflows float16
    x[..., 0, 0] = 0  # a dead position: 0 / eps
    expected = norm(x)
    half = norm(x.half())
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    assert torch.allclose(half.float(), expected, atol=1e-2, rtol=1e-2)
    assert expected[..., 0, 0].abs().max() == 0


def _upstream_s3fd_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Upstream's S3FD forward (face_alignment's net_s3fd.py, as Wav2Lip ships it), written out op by op on the state
    dict: VGG16 with ReLU after every convolution and 2x2 max pools, fc6 3x3 with padding 3, L2-normalised
    conv3_3/4_3/5_3 (times their learned scales), a 3x3 head pair per level, and the first head's background scores
    max-out (the largest of its 3). An independent reference for the layers, activations and head order."""

    def conv(h: torch.Tensor, name: str, stride: int = 1, padding: int = 1) -> torch.Tensor:
        return F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], stride=stride, padding=padding)

    def relu_convs(h: torch.Tensor, *names: str) -> torch.Tensor:
        for name in names:
            h = F.relu(conv(h, name))
        return h

    def l2norm(h: torch.Tensor, name: str) -> torch.Tensor:
        return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) * state[f"{name}.weight"].view(1, -1, 1, 1)

    h = F.max_pool2d(relu_convs(x, "conv1_1", "conv1_2"), 2, 2)
    h = F.max_pool2d(relu_convs(h, "conv2_1", "conv2_2"), 2, 2)
    f3 = relu_convs(h, "conv3_1", "conv3_2", "conv3_3")
    f4 = relu_convs(F.max_pool2d(f3, 2, 2), "conv4_1", "conv4_2", "conv4_3")
    f5 = relu_convs(F.max_pool2d(f4, 2, 2), "conv5_1", "conv5_2", "conv5_3")
    f7 = F.relu(conv(F.relu(conv(F.max_pool2d(f5, 2, 2), "fc6", padding=3)), "fc7", padding=0))
    f6_2 = F.relu(conv(F.relu(conv(f7, "conv6_1", padding=0)), "conv6_2", stride=2))
    f7_2 = F.relu(conv(F.relu(conv(f6_2, "conv7_1", padding=0)), "conv7_2", stride=2))
    features = [
        ("conv3_3_norm", l2norm(f3, "conv3_3_norm")),
        ("conv4_3_norm", l2norm(f4, "conv4_3_norm")),
        ("conv5_3_norm", l2norm(f5, "conv5_3_norm")),
        ("fc7", f7),
        ("conv6_2", f6_2),
        ("conv7_2", f7_2),
    ]
    outputs = [t for name, f in features for t in (conv(f, f"{name}_mbox_conf"), conv(f, f"{name}_mbox_loc"))]
    background, face = outputs[0][:, :3], outputs[0][:, 3:]
    outputs[0] = torch.cat((torch.max(torch.max(background[:, 0:1], background[:, 1:2]), background[:, 2:3]), face), 1)
    return outputs


def test_s3fd_forward_is_upstreams_on_a_frame_of_no_round_size() -> None:
    """88x104 is no multiple of 32 (88 halves to 11, then 5), so the pools' rounding and fc6's padding show in the
    head sizes, and the heads at strides 16 and 32 differ in size (a swap of their order shows); the values check every
    activation and norm."""
    torch.manual_seed(3)
    model = S3FD().eval()
    state = model.state_dict()
    x = torch.randn(2, 3, 88, 104, generator=torch.Generator().manual_seed(4)) * 60
    with torch.no_grad():
        got, want = model(x), _upstream_s3fd_forward(state, x)
    assert [tuple(t.shape[2:]) for t in got[::2]] == head_map_sizes(88, 104)
    assert [t.shape for t in got] == [t.shape for t in want]
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item()), index
