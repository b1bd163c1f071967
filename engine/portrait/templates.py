"""Motion templates: a driving clip's motion kept for reuse, as our .npz or as upstream LivePortrait's .pkl.

Ours (`save_template`) holds per frame the pose angles, translation, expression, scale and canonical keypoints,
the eye and lip openness when they were measured, and the rotation matrices `R` when the motion came as matrices
(an upstream .pkl saved again as .npz drives with its own matrices, not ones remade from their angles). Upstream's
(`make_motion_template` in KwaiVGI/LivePortrait, pickled) holds per frame `scale`, the rotation matrix `R` (`R_d`
in its older files), `exp` and `t` (`kp` and `x_s` in newer ones), and `c_eyes_lst` / `c_lip_lst` (older:
`c_d_eyes_lst` / `c_d_lip_lst`; none in its expression templates). Driving keypoints need no canonical keypoints of
the driver, so a template without them drives all the same; its rotations are used as the matrices they
are, as upstream uses them.

A pickle can run any code while it loads, so an uploaded one is read by an unpickler that builds only dicts,
lists, numbers and numpy arrays of numbers, and refuses anything else by name.
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.errors import one_line
from engine.core.npz import npy_header
from engine.portrait.config import TEMPLATE_SUFFIXES, PortraitError
from engine.portrait.motion import KeypointInfo, euler_angles

NPZ, PICKLE = TEMPLATE_SUFFIXES
MAX_PICKLE_BYTES = 64 * 2**20  # about 60,000 frames of upstream's newest layout
FPS_RANGE = (1.0, 240.0)
UPSTREAM_FPS = 25  # what upstream assumes of a .pkl template without an output_fps
MIN_SCALE = 1e-6
_FIELDS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
_OPENNESS_FIELDS = ("eyes", "lips")  # optional: each frame's eye (left, right) and lip openness
_MATRIX = "R"  # optional: each frame's rotation matrix, where the motion came as matrices
_PER_FRAME = {"pitch": (), "yaw": (), "roll": (), "t": (3,), "exp": (21, 3), "scale": (), "kp": (21, 3), "eyes": (2,),
              "lips": (), _MATRIX: (3, 3)}  # fmt: skip
# What numpy's own pickles of arrays and scalars name (numpy 1 wrote numpy.core, numpy 2 numpy._core), and the
# bytes helper protocol 2 uses: nothing here runs code of the file's choosing.
_MULTIARRAY = np._core.multiarray
_ARRAY_NAMES = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _MULTIARRAY._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _MULTIARRAY._reconstruct,
    ("numpy.core.multiarray", "scalar"): _MULTIARRAY.scalar,
    ("numpy._core.multiarray", "scalar"): _MULTIARRAY.scalar,
    ("_codecs", "encode"): codecs.encode,
    # protocol 5 (pickle.dump(..., protocol=5)): an array from its own bytes in the file
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
}

Openness = tuple[np.ndarray, np.ndarray]  # per driving frame: eyes (N, 2), lips (N,)


@dataclass
class Template:
    motion: KeypointInfo
    fps: float
    openness: Openness | None = None
    frames_in_file: int | None = None  # before a max_frames cut: a one-frame template drives as an image does


def save_template(path: Path, motion: KeypointInfo, fps: float, openness: Openness | None = None) -> None:
    """The driving motion (per frame: pose, translation, expression, scale, keypoints; the eye and lip openness
    when measured, for retargeting to the driver; the rotation matrices where it came as matrices) as our .npz."""
    arrays = {f: getattr(motion, f).detach().cpu().numpy() for f in _FIELDS}
    if motion.matrix is not None:
        arrays[_MATRIX] = motion.matrix.detach().cpu().numpy()
    if openness is not None:
        arrays.update(zip(_OPENNESS_FIELDS, openness, strict=True))
    np.savez(path, fps=np.float64(fps), **arrays)


def read_template(path: Path, max_frames: int | None = None, max_seconds: float | None = None) -> Template:
    """Either kind of template, its first `max_frames` frames, checked; longer than `max_seconds` is refused (before
    its frames are unpacked: a small file may hold millions of them)."""
    template = _read_pickle(path, max_seconds) if path.suffix.lower() == PICKLE else _read_npz(path, max_seconds)
    frames = template.motion.exp.shape[0]
    n = frames if max_frames is None else min(max_frames, frames)
    motion = template.motion.select(slice(0, n))
    openness = None if template.openness is None else (template.openness[0][:n], template.openness[1][:n])
    return Template(motion, template.fps, openness, frames)


def _fps(path: Path, value: Any) -> float:
    """The template's frame rate: one real number in FPS_RANGE, checked before any frame is unpacked (its length in
    seconds, which the limit is on, depends on it)."""
    try:
        array, shown = np.asarray(value), ""
    except ValueError:  # a ragged list: named so (np.asarray(None) alone showed "None")
        array, shown = np.asarray(None), "a ragged list"
    if array.size != 1 or array.dtype.kind not in "fiu" or not FPS_RANGE[0] <= float(array.reshape(())) <= FPS_RANGE[1]:
        shown = shown or (repr(array.reshape(()).item())[:40] if array.size == 1 else f"{array.size} values")
        raise PortraitError(
            f"{path.name}: a motion template's fps must be one number in {FPS_RANGE[0]:g}..{FPS_RANGE[1]:g} "
            f"(it holds {shown})"
        )
    return float(array.reshape(()))


def _check_length(path: Path, frames: int, fps: float, max_seconds: float | None) -> None:
    """Refuse motion longer than `max_seconds`."""
    if max_seconds is not None and frames / fps > max_seconds:
        raise PortraitError(
            f"{path.name} holds {frames / fps:.1f} s of motion ({frames} frames at {fps:g} fps); "
            f"at most {max_seconds:g} s is accepted (AVATARBENCH_MAX_SECONDS)"
        )


def _checked(path: Path, motion: KeypointInfo, fps: float, openness: Openness | None) -> Template:
    """Values a driver can use: finite, and no face of scale 0 (the shapes are checked as the file is read)."""
    values = [getattr(motion, f) for f in (*_FIELDS, "matrix") if getattr(motion, f) is not None]
    values += [torch.from_numpy(np.asarray(a)) for a in openness or ()]
    if not all(bool(torch.isfinite(v).all()) for v in values):
        raise PortraitError(f"{path.name}: the motion template holds NaN or infinite values")
    if bool((motion.scale.abs() < MIN_SCALE).any()):  # relative motion divides by the reference frame's scale
        raise PortraitError(f"{path.name}: the motion template holds a scale of 0 (a face of no size)")
    return Template(motion, fps, openness)


def _read_npz(path: Path, max_seconds: float | None) -> Template:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip, truncated, empty, text: numpy's many ways of saying no
        reason = "it is not an .npz archive" if "pickle" in str(exc) else f"{type(exc).__name__}: {one_line(exc)}"
        raise PortraitError(f"{path.name} cannot be read as a motion template (.npz): {reason}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise PortraitError(f"{path.name} is one .npy array, not a motion template (an .npz archive of several)")
    try:
        with data:
            frames = _checked_npz_headers(path, data)
            fps = _fps(path, data["fps"])  # one value: the headers were checked
            _check_length(path, frames, fps, max_seconds)
            arrays = {f: torch.from_numpy(np.asarray(data[f], dtype=np.float32)) for f in _FIELDS}
            saved = [np.asarray(data[f], dtype=np.float32) for f in _OPENNESS_FIELDS if f in data]
            if _MATRIX in data:
                arrays["matrix"] = torch.from_numpy(np.asarray(data[_MATRIX], dtype=np.float32))
    except PortraitError:
        raise
    except Exception as exc:  # a member damaged past its header
        raise PortraitError(
            f"{path.name} cannot be read as a motion template (.npz): {type(exc).__name__}: {one_line(exc)}"
        ) from None
    return _checked(path, KeypointInfo(**arrays), fps, (saved[0], saved[1]) if saved else None)


def _checked_npz_headers(path: Path, data: Any) -> int:
    """The frame count, from the members' headers before their data is read: every field there, of numbers, one
    row per frame of the shape it needs (a small file may hold a huge member: zeros compress)."""
    missing = [f for f in (*_FIELDS, "fps") if f not in data]
    if missing:
        raise PortraitError(f"{path.name} is not a motion template: missing {', '.join(missing)}")
    if sum(f in data for f in _OPENNESS_FIELDS) == 1:
        raise PortraitError(f"{path.name}: a motion template keeps both the eyes' and the lips' openness, or neither")
    headers = {f: _npy_header(data, f) for f in ("fps", *_PER_FRAME) if f in data}
    frames = (headers["exp"][0] or (0,))[0]
    rows_ok = frames >= 1 and all(shape == (frames, *_PER_FRAME[f]) for f, (shape, _) in headers.items() if f != "fps")
    if (
        not rows_ok
        or any(dtype.kind not in "fiu" for _, dtype in headers.values())
        or headers["fps"][0] not in ((), (1,))
    ):
        raise PortraitError(
            f"{path.name}: a motion template needs at least one frame, keypoints and expressions (frames, 21, 3), "
            "translations (frames, 3), pitch, yaw, roll and scale (frames,), eyes and lips (frames, 2) and "
            "(frames,), rotations R (frames, 3, 3) where kept, and one fps, all real numbers"
        )
    return frames


def _npy_header(data: Any, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """An .npz member's shape and dtype from its header, before its data is read."""
    with data.zip.open(f"{name}.npy") as f:
        return npy_header(f)


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ARRAY_NAMES.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, and a motion template holds only arrays")
        return found


def _read_pickle(path: Path, max_seconds: float | None) -> Template:
    """Upstream's template, read without running anything the file names."""
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise PortraitError(f"{path.name} is {size / 2**20:.0f} MiB; a motion template (.pkl) may be at most "
                            f"{MAX_PICKLE_BYTES // 2**20} MiB")  # fmt: skip
    raw = path.read_bytes()
    accepted = "a motion template is the .pkl upstream's --flag_write_template writes, or the .npz of --save-template"
    if raw.startswith(b"PK\x03\x04"):  # its pickler's "persistent id" error said nothing of what the file is
        raise PortraitError(f"{path.name} is a zip archive (an .npz, or a torch.save file) named .pkl: {accepted}")
    try:
        data = _ArraysOnly(io.BytesIO(raw)).load()
        return _upstream_template(path, data, max_seconds)
    except PortraitError:
        raise
    except Exception as exc:  # any malformed pickle: truncated, other objects, wrong types or shapes
        raise PortraitError(
            f"{path.name} cannot be read as LivePortrait's motion template (.pkl): "
            f"{type(exc).__name__}: {one_line(exc)}; {accepted}"
        ) from None


def _upstream_template(path: Path, data: Any, max_seconds: float | None) -> Template:
    frames = data.get("motion") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise PortraitError(f"{path.name} is not LivePortrait's motion template: no list of frames under 'motion'")
    fps = _fps(path, data.get("output_fps", UPSTREAM_FPS))
    _check_length(path, len(frames), fps, max_seconds)  # before they are unpacked
    key_r = "R" if "R" in frames[0] else "R_d"  # as upstream reads its older files
    missing = [k for k in ("scale", key_r, "exp", "t") if k not in frames[0]]
    if missing:
        raise PortraitError(f"{path.name} is not LivePortrait's motion template: its frames lack {', '.join(missing)}")

    def stacked(key: str, shape: tuple[int, ...], rows: list[Any]) -> torch.Tensor:
        arrays = [np.asarray(row) for row in rows]
        if any(a.dtype.kind not in "fiu" or a.size != int(np.prod(shape)) for a in arrays):
            raise PortraitError(f"{path.name}: each frame's {key!r} must be {int(np.prod(shape))} numbers")
        return torch.from_numpy(np.stack([a.reshape(shape) for a in arrays]).astype(np.float32))

    n = len(frames)
    rotation = stacked(key_r, (3, 3), [f.get(key_r) for f in frames])
    pitch, yaw, roll = euler_angles(rotation)
    kp = stacked("kp", (21, 3), [f["kp"] for f in frames]) if all("kp" in f for f in frames) else None
    motion = KeypointInfo(
        pitch=pitch,
        yaw=yaw,
        roll=roll,
        t=stacked("t", (3,), [f.get("t") for f in frames]),
        exp=stacked("exp", (21, 3), [f.get("exp") for f in frames]),
        scale=stacked("scale", (), [f.get("scale") for f in frames]),
        kp=torch.zeros(n, 21, 3) if kp is None else kp,  # a driver's own keypoints never enter its motion
        matrix=rotation,
    )
    eyes = data.get("c_eyes_lst", data.get("c_d_eyes_lst"))
    lips = data.get("c_lip_lst", data.get("c_d_lip_lst"))
    openness = None
    if eyes is not None and lips is not None:
        if not isinstance(eyes, list) or not isinstance(lips, list) or len(eyes) != n or len(lips) != n:
            raise PortraitError(f"{path.name}: its eye and lip openness must have one entry per frame ({n})")
        openness = (stacked("c_eyes_lst", (2,), eyes).numpy(), stacked("c_lip_lst", (), lips).numpy())
    return _checked(path, motion, fps, openness)
