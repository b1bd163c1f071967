"""Reading and validating checkpoint files, shared by every model loader.

Most failures users hit are not bugs in the network but a wrong file: an HTML login page saved as
``.pth``, a Git LFS pointer, a half-finished download, or the weights of a different model. Each of
these is recognised here and reported as a :class:`CheckpointError` that says what the file is and
which file was expected, instead of a pickle traceback or a wall of missing keys.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from engine.core.errors import InputError
from engine.core.weights import unusable
from engine.core.words import format_bytes

M = TypeVar("M", bound=nn.Module)

# How many names of each kind of mismatch a message lists before it says "and N more".
_LIST_LIMIT = 10
_ZIP_MAGIC = b"PK\x03\x04"
_MODULE_PREFIX = "module."


class CheckpointError(InputError):
    """A checkpoint file cannot be used; the message says what is wrong with it and which file is expected."""

    def __init__(self, problem: str, *, path: str | os.PathLike[str] | None = None, expected: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.expected = expected
        # The file's own name, never its server path (uploads live under paths a visitor has no business seeing).
        message = problem if self.path is None else f"{Path(self.path).name}: {problem}"
        if expected:
            message += f"; expected {expected}"
        super().__init__(message)


def sniff(path: Path, expected: str) -> None:
    """Reject files whose first or last bytes show they are no checkpoint: clearer than an unpickling error."""
    if not path.exists():
        raise CheckpointError("no such file: download it first or fix the path", path=path, expected=expected)
    if not path.is_file():
        raise CheckpointError("this is a directory, not a checkpoint file", path=path, expected=expected)
    try:
        problem = unusable(path)
    except OSError as exc:  # no permission to read it, an I/O error
        raise CheckpointError(f"it cannot be read: {exc.strerror or exc}", path=path, expected=expected) from None
    if problem:
        raise CheckpointError(problem, path=path, expected=expected)


def _torch_load(path: Path, expected: str) -> object:
    try:
        # map_location="cpu": checkpoints saved from a GPU (including torch's legacy non-zip format, whose
        # storages are tagged "cuda:0") load on any machine; the caller moves the model afterwards.
        # mmap (zip files; the legacy format cannot): tensors are read from the page cache as the model copies
        # them, so the file is never a second copy on the heap, and what a loader skips (the official Wav2Lip
        # files' optimizer state, about 270 of their 416 MB) is never read. With freed memory kept for a model
        # (engine/core/memory.py) a heap copy would stay in the process: 90-170 MB less peak RSS for Wav2Lip.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported global: GLOBAL (\S+)", str(e), re.IGNORECASE)
        if found:  # a real pickle naming a class weights_only will not import; torch's advice is to trust the file
            problem = (
                f"the file holds Python objects besides tensors ({found[1]}), which loading weights only refuses "
                "to run: it is not a plain PyTorch checkpoint of the expected kind"
            )
            raise CheckpointError(problem, path=path, expected=expected) from e
        raise CheckpointError(_unreadable(path, e), path=path, expected=expected) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError, zipfile errors... for broken files
        raise CheckpointError(_unreadable(path, e), path=path, expected=expected) from e


def _unreadable(path: Path, e: Exception) -> str:
    """Why torch.load failed: what the file is where its first bytes say (a photo or a model of another format given
    as the checkpoint), else torch's own reason."""
    kind = _file_kind(path)
    if kind:
        return f"this is {kind}, not a PyTorch checkpoint"
    problem = "torch.load could not read it: the file is truncated or corrupt, or not a PyTorch checkpoint"
    return f"{problem} ({_first_line(e)})"


_MAGIC_KINDS = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"\x1aE\xdf\xa3", "a Matroska or WebM video"), (b"ID3", "an MP3 file"), (b"OggS", "an Ogg file"),
    (b"fLaC", "a FLAC file"),
)  # fmt: skip
_RIFF_KINDS = {b"WAVE": "a WAV file", b"AVI ": "an AVI video", b"WEBP": "a WebP image"}


def _file_kind(path: Path) -> str | None:
    """A common kind of file that is no checkpoint, from its first bytes (or an ONNX model's name), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:  # a JSON header of that length
        return "a safetensors file"
    if head[4:8] == b"ftyp":
        return "an MP4 or MOV file"
    if head.startswith(b"RIFF") and head[8:12] in _RIFF_KINDS:
        return _RIFF_KINDS[head[8:12]]
    return next((kind for magic, kind in _MAGIC_KINDS if head.startswith(magic)), None)


def _first_line(e: Exception) -> str:
    """The error's type and its reason: torch's weights_only errors run to a page of advice meant for a developer,
    and what it advises first (loading with weights_only=False, which runs the file's code) suits no file we load."""
    text = str(e).strip()
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
    lines = [found[1]] if found else text.splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def read_checkpoint(path: str | os.PathLike[str], expected: str) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``, on the CPU.

    Accepts a training checkpoint ``{"state_dict": ..., "optimizer": ..., "global_step": ...}`` (only
    ``state_dict`` is used) or a plain state dict. ``expected`` describes the right file for messages,
    e.g. "the official Wav2Lip generator checkpoint wav2lip.pth or wav2lip_gan.pth (about 416 MB)".
    """
    path = Path(path)
    sniff(path, expected)
    obj = _torch_load(path, expected)
    size = format_bytes(path.stat().st_size)

    if isinstance(obj, Mapping) and "state_dict" in obj:
        state = obj["state_dict"]
        where = "its 'state_dict' entry"
    else:
        state = obj
        where = "it"
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"not a checkpoint of the expected kind ({size}): {where} holds a {type(state).__name__}, "
            "not a dict of named tensors",
            path=path,
            expected=expected,
        )
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if not state or len(not_tensors) == len(state):
        keys = ", ".join(not_tensors[:_LIST_LIMIT]) or "none"
        raise CheckpointError(
            f"not a checkpoint of the expected kind ({size}): {where} is a dict without tensors (keys: {keys})",
            path=path,
            expected=expected,
        )
    if not_tensors:
        raise CheckpointError(
            f"not a state dict ({size}): {len(not_tensors)} of its {len(state)} entries are not tensors "
            f"({_names(not_tensors)}); a checkpoint of another format or another model?",
            path=path,
            expected=expected,
        )
    return dict(state)


def read_checkpoint_parts(path: str | os.PathLike[str], expected: str, parts: tuple[str, ...]) -> dict[str, dict]:
    """A file that holds several state dicts under named keys (LivePortrait's retargeting file): each named
    part, checked to be a dict of tensors."""
    path = Path(path)
    sniff(path, expected)
    obj = _torch_load(path, expected)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"holds a {type(obj).__name__}, not a dict of state dicts", path=path, expected=expected)
    missing = [p for p in parts if p not in obj]
    if missing:
        found = _names([str(k) for k in obj])
        raise CheckpointError(f"missing part(s) {', '.join(missing)} (found: {found})", path=path, expected=expected)
    out = {}
    for part in parts:
        state = obj[part]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"part {part!r} is not a state dict of tensors", path=path, expected=expected)
        out[part] = dict(state)
    return out


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the one leading ``module.`` that ``nn.DataParallel`` adds to every key when the model is saved.

    Only a leading prefix, and only once: ``str.replace("module.", "")`` would also rename a layer
    legitimately called ``module`` and hide a twice-wrapped save, which should fail loudly instead.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key[len(_MODULE_PREFIX) :] if key.startswith(_MODULE_PREFIX) else key
        if new in out:
            raise CheckpointError(f"the key {new!r} appears both with and without the 'module.' prefix")
        out[new] = value
    return out


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f" ... and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else "")


def _recognise(keys: list[str]) -> str | None:
    """Name the well-known network whose state-dict keys these are, if any (for the mismatch hint)."""
    if any(k.startswith("face_decoder_blocks.") for k in keys):
        return "the Wav2Lip generator (wav2lip.pth / wav2lip_gan.pth)"
    if any(k.startswith("binary_pred.") for k in keys):
        return "the Wav2Lip visual-quality discriminator (visual_quality_disc.pth)"
    if any(k.startswith("face_encoder.") for k in keys) and any(k.startswith("audio_encoder.") for k in keys):
        return "SyncNet, Wav2Lip's lip-sync expert (lipsync_expert.pth)"
    if "fc7_mbox_conf.weight" in keys:
        return "the S3FD face detector (s3fd.pth)"
    liveportrait = {
        "detector.stages.": "LivePortrait's motion extractor (motion_extractor.pth)",
        "resblocks_3d.": "LivePortrait's appearance feature extractor (appearance_feature_extractor.pth)",
        "dense_motion_network.": "LivePortrait's warping module (warping_module.pth)",
        "G_middle_0.": "LivePortrait's SPADE generator (spade_generator.pth)",
    }
    for prefix, name in liveportrait.items():
        if any(k.startswith(prefix) for k in keys):
            return name
    return None


def _hint(own: list[str], state: list[str], n_matched: int, unexpected: list[str], model: nn.Module) -> str:
    name = type(model).__name__
    if unexpected and all(k.startswith(_MODULE_PREFIX) for k in unexpected) and n_matched == 0:
        return "its keys still start with 'module.' after one was removed: saved from a model wrapped twice?"
    known = _recognise(state)
    if n_matched < len(own) / 2 and known != _recognise(own):
        if known:
            return f"most keys do not match {name}: this looks like a different network, {known}"
        return (
            f"most keys do not match {name}: this looks like a different network "
            "(e.g. the Wav2Lip discriminator/SyncNet or another model)"
        )
    return f"the layout matches {name} only in part: a modified fork (e.g. another input size) or another version?"


def load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    expected: str,
    *,
    path: str | os.PathLike[str] | None = None,
) -> None:
    """Load ``state`` into ``model`` only if every key and shape matches; otherwise say exactly what differs.

    ``path`` (optional) names the file in the message. Dtypes may differ (a half-precision file loads
    into a float32 model); shapes may not.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        n_matched = len(own) - len(missing) - len(mismatched)
        lines = [
            f"the weights do not fit {type(model).__name__}: "
            f"{n_matched} of the model's {len(own)} entries match, the file has {len(state)}."
        ]
        if missing:
            lines.append(f"Missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            lines.append(f"Unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if mismatched:
            lines.append(f"Shape mismatches ({len(mismatched)}): {_names(mismatched)}")
        lines.append("Hint: " + _hint(list(own), list(state), n_matched, unexpected, model))
        raise CheckpointError("\n".join(lines), path=path, expected=expected)
    model.load_state_dict(state, strict=True)


def load_into(model: M, path: str | os.PathLike[str], expected: str, device, dtype: torch.dtype) -> M:
    """Read, check and load a checkpoint into ``model``; returned in eval mode on ``device`` in ``dtype``."""
    state = strip_module_prefix(read_checkpoint(path, expected))
    load_strict(model, state, expected, path=path)
    return model.eval().to(device=device, dtype=dtype)


def _is_zip(path: Path) -> bool:
    """torch's zip format (torch >= 1.6), which torch.load can map; the legacy format it can only read."""
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC
