"""What the ONNX room knows of a model, as the types every step shares: ModelError (an upload or a model refused,
saying what is accepted), Limits (what an upload and one run may hold), TensorSpec (an input or output: its type, and
its shape with symbolic dimensions by name) and ModelInfo (what inspection found). The steps that make them live
beside it: prepare.py (an upload into a private folder), proto.py (the protobuf read and walked), symbols.py (inputs,
outputs and their symbols), flops.py (the FLOP estimate) and inspection.py (validating and describing a model).
No onnx and no ONNX Runtime here, so a tab or a command that only names these types imports them cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from engine.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np

DEFAULTS_LISTED = 10  # inputs with a default that a description (onnx inspect, the tab's table) shows by name


class ModelError(InputError):
    """The upload or model is refused; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 2 * 2**30  # the uploaded file (onnx or zip)
    max_unpacked_bytes: int = 4 * 2**30  # sum of a zip's members, as declared and as actually read
    max_members: int = 2000
    max_ratio: float = 200.0  # a zip member's uncompressed/compressed ratio above this is a bomb
    max_input_elements: int = 256 * 2**20  # all inputs of one run together, after symbolic dims are filled
    # Output bytes an evaluation holds at once (each provider's outputs at the first batch size, kept for parity,
    # plus one run's at the largest): 1 GiB, what the input limit is in float32, so a job's data stays within a
    # few GiB of host memory next to the other jobs; a talking-head model's frames are a few MiB per sample.
    max_output_bytes: int = 2**30


def type_name(dtype: str) -> str:
    """A tensor type as people name it: numpy calls ONNX's string tensors "object"."""
    return "string" if dtype == "object" else dtype


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64", "bool", "float16"
    shape: list[int | str | None]  # ints, symbolic names ("batch", "N"), or None for unknown

    def concrete(self, values: dict[str, int]) -> tuple[int, ...]:
        """The shape with symbols filled in; every symbol must have a value (None dims cannot be filled)."""
        missing = [d for d in self.shape if isinstance(d, str) and d not in values]
        missing += [f"dimension {k} (unknown)" for k, d in enumerate(self.shape) if d is None]
        if missing:
            raise ModelError(f"input {self.name!r} {self.shape}: no value for {', '.join(missing)}")
        return tuple(d if isinstance(d, int) else int(values[d]) for d in self.shape)  # type: ignore[index]

    def numpy_dtype(self) -> np.dtype:
        """numpy's dtype for ``dtype``: ONNX's bfloat16 and float8 types are ml_dtypes' (OrtSession feeds them as
        their bits); TypeError for one ONNX Runtime's Python cannot pass or return (the packed 2- and 4-bit types,
        float4, float6, float8_e8m0fnu)."""
        import numpy as np

        from engine.runtimes.ort_session import BITS_ONLY

        if self.dtype in BITS_ONLY:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.dtype))
        dtype = np.dtype(self.dtype)
        if dtype.kind == "V":  # another ml_dtypes type (int4, float8_e8m0fnu...): ONNX Runtime's Python has no way
            raise TypeError(f"{self.dtype} cannot be passed to or read from ONNX Runtime")
        return dtype

    @property
    def type_name(self) -> str:
        return type_name(self.dtype)

    @property
    def is_tensor(self) -> bool:
        """A tensor, not a sequence, map or optional value (whose dtype is its kind, e.g. "sequence_type")."""
        return not self.dtype.endswith("_type") and self.dtype != "undefined"

    @property
    def is_numeric(self) -> bool:
        """A tensor of numbers or bools that numpy can hold: what accuracy figures and top-k can be computed on."""
        try:
            return self.is_tensor and self.numpy_dtype().kind in "biufV"
        except TypeError:
            return False

    @property
    def is_float(self) -> bool:
        """A floating-point input: numpy's kinds and the ml_dtypes ones (bfloat16, float8)."""
        return self.dtype.startswith(("float", "bfloat"))


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]
    parameters: int
    parameter_bytes: int
    flops: int | None
    flops_counted: dict[str, int]
    flops_not_counted: list[str]
    symbols: dict[str, int]
    external_data: list[str]
    warnings: list[str] = field(default_factory=list)
    # The symbols that are some input's first dimension: the batch an evaluation sets to each size asked for. The
    # normal case, so a fact shown beside the symbols, not a warning.
    batch_symbols: list[str] = field(default_factory=list)
    # Each output's shape at `symbols` as shape inference found it; missing where only running can tell.
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    # The floating-point type holding most of the weights' bytes (fp32, fp16 or bf16); None where no weight is one.
    weights_precision: str | None = None
    # Graph inputs an initializer gives a default (IR 4 on): a run uses it unless the user's inputs set them, at its
    # shape. Not in `inputs`, which a run must be given (synthetic data would replace the model's own values).
    overridable_inputs: list[TensorSpec] = field(default_factory=list)
    # The top-level initializers a run cannot set (ONNX Runtime holds them constant, an IR 3 model's listed inputs
    # too): named so that an inputs .npz setting one is told so. Not in to_dict: a large model has thousands.
    constants: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "constants"}
