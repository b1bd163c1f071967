"""The arrays an evaluation feeds the model, and the expected outputs it is checked against. Synthetic inputs are
drawn from the seed, so every provider and run sees the same tensors; the user's own (an inputs .npz, images) are
checked against the model's names, types and shapes at the first batch size, and repeated along the batch axes for
the others; an expected-outputs .npz is read under the same rules. A .npz's headers are read before its data, so a
wrong file is refused before anything is allocated.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from engine.core.errors import one_line
from engine.core.npz import npy_header
from engine.onnx.config import EvalConfig, EvalError
from engine.onnx.images import ImageInputError, ImageOptions, images_to_tensor, pick_image_input
from engine.onnx.model import Limits, ModelInfo, TensorSpec
from engine.onnx.plan import Plan, symbols_at
from engine.onnx.symbols import batch_symbols
from engine.runtimes.ort_session import BITS_ONLY

SYNTHETIC_INT_HIGH = 100
# What reading a damaged .npz raises: numpy parses a .npy header as a Python literal (SyntaxError, TokenError).
_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, SyntaxError, tokenize.TokenError)


def _image_options(config: EvalConfig) -> ImageOptions:
    return ImageOptions(resize=config.image_resize, scaling=config.image_scaling, channels=config.image_channels)


def np_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return spec.numpy_dtype()
    except TypeError:
        raise EvalError(
            f"input {spec.name!r} has type {spec.dtype}, which this evaluation cannot build; supported: "
            "float16/32/64, bfloat16, the float8 types, int8..int64, uint8..uint64, bool, string (from an inputs .npz)"
        ) from None


def synthetic_dtype(spec: TensorSpec) -> np.dtype:
    """The dtype synthetic inputs fill ``spec`` with; EvalError for one they cannot (a string, a packed 4-bit type)."""
    dtype = np_dtype(spec)
    if not (spec.is_float or dtype.kind in "iub"):
        raise EvalError(
            f"input {spec.name!r} is {spec.type_name}: synthetic inputs are numeric or bool only; "
            "give its values in an inputs .npz"
        )
    return dtype


def synthetic_inputs(specs: list[TensorSpec], values: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Reproducible inputs: the same seed and shapes give the same tensors on every provider and run."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape, dtype = spec.concrete(values), synthetic_dtype(spec)
        if spec.is_float:
            draw = rng.random(shape, dtype=np.float64 if dtype == np.float64 else np.float32)
            out[spec.name] = draw.astype(dtype, copy=False)
        elif dtype.kind in "iu":
            high = min(SYNTHETIC_INT_HIGH, int(np.iinfo(dtype).max) + 1)
            out[spec.name] = rng.integers(0, high, size=shape, dtype=dtype)
        else:
            out[spec.name] = np.asarray(rng.random(shape) < 0.5)  # an array even for a scalar's shape ()
    return out


def _npz_headers(path: str | os.PathLike, what: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array, read from the .npy headers before any data is allocated."""
    name = Path(path).name
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        accepted = "a zip of .npy arrays, as np.savez writes"
        raise EvalError(f"{what} {name} is not a readable .npz ({accepted}): {one_line(exc)}") from None
    headers = {}
    with zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            if not member.filename.endswith(".npy"):
                raise EvalError(f"{what} {name}: member {member.filename!r} is not a .npy array")
            try:
                with zf.open(member) as f:
                    shape, dtype = npy_header(f)
            except _NPZ_ERRORS as exc:
                raise EvalError(
                    f"{what} {name}: array {member.filename[:-4]!r} cannot be read: {one_line(exc)}"
                ) from None
            headers[member.filename[:-4]] = (shape, dtype)
    return headers


def _load_arrays(path: str | os.PathLike, names: list[str], what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in names}
    except _NPZ_ERRORS as exc:
        raise EvalError(f"{what} {Path(path).name} cannot be read: {one_line(exc)}") from None


def _fits(array: np.ndarray, dtype: np.dtype) -> bool:
    """Whether a downcast keeps the values: integers within the type's range (a round trip would pass -5 as a
    uint8 251), finite floats stay finite."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return array.size == 0 or (info.min <= int(array.min()) and int(array.max()) <= info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype)
    return bool(np.array_equal(np.isfinite(cast), np.isfinite(array)))


def _cast_rule(have: np.dtype, want: np.dtype) -> str:
    """'same', 'safe' (always exact), 'check' (allowed when the values fit), 'bits' (an ml_dtypes array as np.save
    writes it: raw bytes of the wanted width, read as the model's type) or 'refuse'."""
    if have == want:
        return "same"
    if want.name in BITS_ONLY:
        return "bits" if have.kind == "V" and have.itemsize == want.itemsize else "refuse"
    if have.kind in "fiub" and np.can_cast(have, want, casting="safe"):
        return "safe"
    if have.kind == want.kind == "f" or (have.kind in "iu" and want.kind in "iu"):
        return "check"
    if have.kind in "US" and want.kind in "OUS":
        return "safe"
    return "refuse"


def _symbols_hint(spec: TensorSpec, shape: tuple[int, ...], values: dict[str, int], batch: list[str]) -> str:
    """Where only the array's other symbolic sizes differ (a sequence length), the --symbols that takes them: the
    sizes are the run's, set before any input is read, so the file's cannot set them."""
    if len(shape) != len(spec.shape):
        return ""
    sizes = dict(zip(spec.shape, shape, strict=True))
    if any(not isinstance(dim, str) and dim != size for dim, size in sizes.items()):
        return ""  # a fixed dimension differs: no symbol makes it fit
    other = {dim: size for dim, size in sizes.items() if isinstance(dim, str) and dim not in batch}
    if not any(values.get(dim) != size for dim, size in other.items()):
        return ""
    return f"; --symbols {','.join(f'{dim}={size}' for dim, size in other.items())} runs at the file's sizes"


def load_npz_inputs(
    path: str | os.PathLike,
    specs: list[TensorSpec],
    values: dict[str, int],
    overridable: Sequence[TensorSpec] = (),
    constants: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """The user's inputs, checked against the model (names, dtypes, shapes at `values`).

    Inputs the file leaves out are not an error: evaluate fills them with synthetic data, and an `overridable` one
    (an initializer listed as a graph input) keeps the model's own value. A name the model does not have is refused
    (a typo would otherwise be silently ignored), and one of its `constants` is refused saying so.
    """
    by_name = {spec.name: spec for spec in (*specs, *overridable)}
    headers = _npz_headers(path, "inputs")
    if not headers:  # every input made up, as with no file, with no word of it
        raise EvalError(f"inputs {Path(path).name} holds no arrays; give one per input, named as the model's: "
                        f"{', '.join(repr(spec.name) for spec in specs) or 'none (it takes no inputs)'}")  # fmt: skip
    _refuse_unknown_inputs(sorted(set(headers) - set(by_name)), specs, overridable, constants)
    for name, (shape, dtype) in headers.items():
        spec = by_name[name]
        want_shape, want_dtype = spec.concrete(values), np_dtype(spec)
        if shape != want_shape:
            at = ", ".join(f"{k}={v}" for k, v in values.items() if k in spec.shape) or "fixed shape"
            why = (
                "the shape of the model's own value, which it replaces"
                if name not in {s.name for s in specs}
                else f"{spec.shape} at {at}; npz inputs must match the first batch size"
            )
            raise EvalError(
                f"input {name!r} in the .npz has shape {list(shape)}, the model wants {list(want_shape)} ({why})"
                f"{_symbols_hint(spec, shape, values, batch_symbols(specs))}"
            )
        if _cast_rule(dtype, want_dtype) == "refuse":
            save_as = f"ml_dtypes.{want_dtype}" if want_dtype.name in BITS_ONLY else str(want_dtype)
            raise EvalError(
                f"input {name!r} in the .npz is {dtype}, the model wants {want_dtype}; {dtype} cannot be converted "
                f"without changing values: save it as {save_as}"
            )
    arrays = _load_arrays(path, list(headers), "inputs")
    out = {}
    for name, array in arrays.items():
        want = np_dtype(by_name[name])
        rule = _cast_rule(array.dtype, want)
        if rule == "check" and not _fits(array, want):
            raise EvalError(f"input {name!r} in the .npz is {array.dtype} with values that do not fit {want}")
        if rule == "bits":
            out[name] = np.asarray(array, order="C").view(want)  # asarray: ascontiguousarray makes a scalar 1-d
        elif want.kind == "O":  # a string input: ONNX Runtime reads str objects (fixed-width bytes it overruns)
            out[name] = _text_array(array, name)
        else:
            out[name] = np.asarray(array, dtype=want, order="C")
    return out


def _refuse_unknown_inputs(
    unknown: list[str], specs: list[TensorSpec], overridable: Sequence[TensorSpec], constants: Collection[str]
) -> None:
    """An .npz array the model cannot take: one of its constants (said so: ONNX Runtime refuses to set one), or a
    name it does not have at all; the message lists what may be given."""
    if not unknown:
        return
    accepted = ", ".join(repr(spec.name) for spec in specs) or "none (it takes no inputs)"
    if overridable:
        accepted += f"; with a default a run may replace: {', '.join(repr(spec.name) for spec in overridable)}"
    if fixed := [name for name in unknown if name in set(constants)]:
        one = len(fixed) == 1
        raise EvalError(
            f"inputs .npz sets {', '.join(map(repr, fixed))}, {'a constant' if one else 'constants'} of the model (an "
            "initializer not listed as a graph input, or, before IR version 4, any initializer): ONNX Runtime does "
            f"not let a run set {'it' if one else 'them'}; leave {'it' if one else 'them'} out (the model's inputs "
            f"are: {accepted})"
        )
    raise EvalError(
        f"inputs .npz has array(s) {', '.join(map(repr, unknown))} that are not model inputs; "
        f"the model's inputs are: {accepted}"
    )


def _text_array(array: np.ndarray, name: str) -> np.ndarray:
    """A string input's values as an object array of str; bytes must be UTF-8 text."""
    if array.dtype.kind == "S":
        try:
            array = np.char.decode(array, "utf-8")
        except UnicodeDecodeError as exc:
            raise EvalError(
                f"input {name!r} in the .npz holds bytes that are not UTF-8 text: {one_line(exc)}"
            ) from None
    return np.asarray(array.astype(object), order="C")


def load_expected(path: str | os.PathLike, outputs: list[TensorSpec], limits: Limits) -> dict[str, np.ndarray]:
    """Expected values of some or all of the model's outputs (those not in the file are not compared: a model's
    string or sequence outputs, or ones the user has no reference for), keys checked before the model runs; shapes
    are compared with the real outputs afterwards (output shapes are often only known by running)."""
    headers = _npz_headers(path, "expected outputs")
    names = [spec.name for spec in outputs]
    extra = sorted(set(headers) - set(names))
    if extra or not headers:
        found = f"it holds {extra}, which the model does not give" if extra else "it is empty"
        raise EvalError(
            f"expected-outputs .npz holds arrays named after the model's outputs ({', '.join(map(repr, names))}), "
            f"one or more of them: {found}"
        )
    bits = {}  # a bfloat16 or float8 output's values saved as ml_dtypes' type (np.save writes their raw bytes)
    for spec in (spec for spec in outputs if spec.name in headers):
        if not spec.is_numeric:
            raise EvalError(f"expected outputs compare numeric tensor outputs, and output {spec.name!r} is "
                            f"{spec.type_name}: leave it out of the .npz")  # fmt: skip
        shape, dtype = headers[spec.name]
        if _cast_rule(dtype, spec.numpy_dtype()) == "bits":
            bits[spec.name] = spec.numpy_dtype()
        elif dtype.kind not in "fiub":
            raise EvalError(f"expected output {spec.name!r} is {dtype}; accuracy needs numeric arrays")
        if math.prod(shape) > limits.max_input_elements:
            raise EvalError(
                f"expected output {spec.name!r} has {math.prod(shape):,} elements, over {limits.max_input_elements:,}"
            )
    arrays = _load_arrays(path, [n for n in names if n in headers], "expected outputs")
    return {name: array.view(bits[name]) if name in bits else array for name, array in arrays.items()}


def inputs_for(info: ModelInfo, config: EvalConfig, plan: Plan, batch: int, user: dict[str, np.ndarray]):
    """Synthetic inputs at this batch, with the user's arrays in place (repeated along every batch axis: an input
    whose batch symbol is not its first dimension kept its .npz size)."""
    values = symbols_at(plan, batch)
    missing = [spec for spec in info.inputs if spec.name not in user]
    feeds = synthetic_inputs(missing, values, config.seed)
    # an input with a default (an initializer) is fed only where the user set it; otherwise the model's value holds
    fed = [*info.inputs, *(spec for spec in info.overridable_inputs if spec.name in user)]
    for spec in fed:
        if spec.name not in user:
            continue
        array = user[spec.name]
        for axis, dim in enumerate(spec.shape[: array.ndim]):
            if dim in plan.batch_symbols and array.shape[axis] not in (0, batch):
                array = np.take(array, np.arange(batch) % array.shape[axis], axis=axis)
        feeds[spec.name] = array
    return {spec.name: feeds[spec.name] for spec in fed}


def user_inputs(info: ModelInfo, config: EvalConfig, plan: Plan) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays from the inputs .npz and the images, checked against the model at the first batch size, and
    where each came from ("npz" or "images").

    Images fill one input; their count need not match the batch (they are repeated or cut along it),
    except for a fixed-shape input, whose own batch is what the model accepts.
    """
    user = {}
    if config.inputs:
        user = load_npz_inputs(config.inputs, info.inputs, plan.values, info.overridable_inputs, info.constants)
    sources = dict.fromkeys(user, "npz")
    if not config.images:
        return user, sources
    try:
        spec = pick_image_input(info.inputs, config.image_input)
        array = images_to_tensor(list(config.images), spec, plan.values, _image_options(config))
    except ImageInputError as exc:
        raise EvalError(str(exc)) from None
    if spec.name in user:
        raise EvalError(f"input {spec.name!r} is given twice: in the inputs .npz and as images")
    batch = spec.shape[0]
    if not isinstance(batch, str):  # fixed batch: repeat or cut the images to it
        want = int(batch) if isinstance(batch, int) else 1
        if array.shape[0] != want:
            plan.warnings.append(f"{array.shape[0]} image(s) for input {spec.name!r} with a fixed batch of {want}")
            array = np.take(array, np.arange(want) % array.shape[0], axis=0)
    elif array.shape[0] != plan.batches[0]:
        plan.warnings.append(
            f"{array.shape[0]} image(s) at batch size {plan.batches[0]}: images are repeated or cut to each batch "
            "size; for accuracy over all of them, make the first batch size the number of images"
        )
    user[spec.name], sources[spec.name] = array, "images"
    return user, sources
