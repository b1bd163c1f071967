"""Find model files: explicit path > setting > weights dir > Hugging Face Hub (only when online).

Weights are never bundled (several carry non-commercial terms), so every model says where its
file goes. A hub reference is `hf:OWNER/REPO/PATH/IN/REPO`; it is downloaded only when the user
asked for it and the machine is online, and lands in the hub's own cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import InputError, SetupError
from engine.core.settings import PREFIX, Settings
from engine.core.words import format_bytes


class WeightsError(SetupError, FileNotFoundError):
    """A model file is missing or cannot be fetched; the message says where it should go."""


@dataclass(frozen=True)
class ModelFile:
    """What a model needs: the setting that names it, the usual file names, and how to get it."""

    key: str  # Settings attribute and AVATARBENCH_ variable suffix
    filenames: tuple[str, ...]
    description: str
    licence: str


WAV2LIP = ModelFile(
    key="wav2lip_checkpoint",
    filenames=("wav2lip_gan.pth", "wav2lip.pth"),
    description="the official Wav2Lip generator checkpoint (wav2lip_gan.pth or wav2lip.pth, about 416 MB)",
    licence="Wav2Lip weights are for research and non-commercial use only (see the Rudrabha/Wav2Lip README).",
)
S3FD = ModelFile(
    key="s3fd_checkpoint",
    filenames=("s3fd.pth", "s3fd-619a316812.pth"),
    description="the S3FD face detector checkpoint s3fd.pth (about 86 MB)",
    licence="S3FD weights come with the face_alignment project (BSD-3-Clause).",
)


def hub_reference(reference: str) -> tuple[str, str]:
    """`hf:OWNER/REPO/PATH` as (OWNER/REPO, PATH), before anything reaches the network; a reference of another shape
    is bad input (it was a set-up error, exit 3, as if the machine lacked something)."""
    parts = reference.removeprefix("hf:").strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise InputError(
            f"{reference!r} is not hf:OWNER/REPO/PATH/TO/FILE, e.g. hf:camenduru/Wav2Lip/checkpoints/wav2lip_gan.pth"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_download(reference: str) -> Path:
    """Fetch `hf:OWNER/REPO/PATH` through huggingface_hub's cache; refused when offline."""
    repo, filename = hub_reference(reference)
    from engine.core.hub import fetch_file  # here: hub.py builds on this module

    return fetch_file(repo, filename)


def resolve(model: ModelFile, settings: Settings, explicit: str | os.PathLike | None = None) -> Path | None:
    """The file to load, or None when none is configured (callers then use a weight-free engine).

    A path that was given explicitly (argument or setting) but does not exist is an error, not a
    silent fall-back: the user meant that file.
    """
    configured = explicit if explicit not in (None, "") else getattr(settings, model.key)
    if configured:
        text = str(configured)
        if text.startswith("hf:"):
            return hub_download(text)
        path = Path(text).expanduser()
        if not path.is_file():
            source = "" if explicit not in (None, "") else f" (set by {PREFIX}{model.key.upper()})"
            problem = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise WeightsError(f"{path}{source} {problem}; expected {model.description}")
        return path
    for name in model.filenames:
        for folder in (settings.weights_dir, settings.weights_dir / model.key.split("_")[0]):
            if (folder / name).is_file():
                return folder / name
    return None


_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_END_MAGIC = b"PK\x05\x06"  # end-of-central-directory record, always in the last ~64 KiB of a zip


def unusable(path: Path) -> str | None:
    """Why a model file cannot be one, told by its first and last bytes: empty, a web page, a Git LFS pointer, a zip
    cut short; None when it may be (only loading it tells). The loaders refuse such a file with this, and `weights
    list` and the doctor name it (they said "ready" of a login page saved as wav2lip_gan.pth). Raises OSError when
    the file cannot be read."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): the download probably failed or was interrupted"
    with open(path, "rb") as f:
        head = f.read(512)
        tail = b""
        if head.startswith(_ZIP_MAGIC):
            f.seek(max(0, size - 66_000))
            tail = f.read()
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype", b"<html")):
        return (
            f"this is a web page ({format_bytes(size)}), not a checkpoint: "
            "the download link probably returned a login or error page"
        )
    if text.startswith(_LFS_MAGIC):
        return (
            f"this is a Git LFS pointer ({format_bytes(size)}), not the weights: "
            "run git lfs pull or download the real file"
        )
    if head.startswith(_ZIP_MAGIC) and _ZIP_END_MAGIC not in tail:
        return (
            f"the file is truncated ({format_bytes(size)}; its zip end record is missing): "
            "the download stopped early, download it again"
        )
    return None


def unusable_here(path: Path) -> str | None:
    """`unusable`, with a file this user may not read told as such (for listings, which go on to the next file)."""
    try:
        return unusable(path)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"


SERVER_FILE_SUFFIXES = (".pth", ".pt", ".onnx")


def server_files(settings: Settings) -> dict[str, Path]:
    """The weights this server has, by the name a visitor may pick (the path under the weights folder): model files,
    and the folders holding LivePortrait's base_models/ or MuseTalk's musetalkV15/. Visitors of a shared app choose
    among these; paths and Hub downloads are for the operator."""
    root = settings.weights_dir
    if not root.is_dir():
        return {}
    found = {}
    for path in sorted(root.rglob("*")):
        folder = (path / "base_models").is_dir() or (path / "musetalkV15").is_dir()
        if (path.is_file() and path.suffix in SERVER_FILE_SUFFIXES) or folder:
            found[path.relative_to(root).as_posix()] = path
    return found
