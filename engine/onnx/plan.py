"""What an evaluation decides before it runs anything: the symbol values, the batch sizes (or a fixed-shape model's
samples per run), the providers' order and the output budget; and every refusal the model and the request alone can
tell (a model ONNX Runtime cannot load, outputs it cannot hand back, labels that do not fit the scored output).
check_request and evaluate both start here, so a request refused at submit is refused the same way in the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.core.words import format_bytes
from engine.onnx.config import EvalConfig, EvalError
from engine.onnx.images import looks_like_images, looks_like_one_image
from engine.onnx.model import Limits, ModelInfo, TensorSpec
from engine.onnx.symbols import batch_symbols, check_input_budget, default_symbols, output_bytes, tensor_bytes
from engine.runtimes.ort_session import runtime_limits


def _total(sizes: dict[str, int | None]) -> int:
    return sum(size or 0 for size in sizes.values())


@dataclass
class _OutputBudget:
    """The output bytes an evaluation holds at once, checked at submit and again before each batch size runs.

    Every session keeps its outputs at the first batch size (the CPU's are the parity reference), and one run's
    outputs at the batch size being measured are alive beside them: held(batch) = copies * outputs(first batch) +
    outputs(batch), copies counting every session that runs, the CPU reference included.

    An output's bytes come from its declared shape. Where the declaration leaves a dimension open, or is exceeded, a
    measured size takes its place, scaled linearly with the batch size: first what shape inference found at the
    inspected symbol values, then what the first real run returned. An output neither knows (a data-dependent
    dimension) counts as 0 until then: that first run is the one the budget cannot bound up front, and the batch
    sizes after it are checked against its real outputs.
    """

    limit: int
    copies: int
    first_batch: int
    declared: dict[int, dict[str, int | None]]  # batch size -> output -> bytes of its declared shape (None: open)
    batch_free: bool  # whether the request sets the batch size
    other_symbols: str  # the other symbols' values, as "H=512, W=512"
    measured: tuple[int, dict[str, int]] | None = None  # (batch size, output -> bytes) found by inference or a run
    ran: bool = False  # whether `measured` comes from a real run

    def estimate(self, batch: int) -> dict[str, int | None]:
        """Each output's bytes in one run at this batch size; None where nothing tells yet."""
        sizes = dict(self.declared[batch])
        if self.measured is not None:
            at, measured = self.measured
            for name, size in measured.items():
                declared = self.declared[at].get(name)
                if declared is None or size > declared:
                    sizes[name] = -(-size * batch // at)
        return sizes

    def held(self, batch: int) -> int:
        return self.copies * _total(self.estimate(self.first_batch)) + _total(self.estimate(batch))

    def observe(self, batch: int, outputs: dict[str, Any]) -> None:
        """The first real run's output sizes replace every estimate made before it (sequences, maps and strings
        too: a sequence of 900 MiB went unbounded through every later batch size)."""
        if not self.ran:
            self.measured, self.ran = (batch, {name: _held_bytes(value) for name, value in outputs.items()}), True

    def refusal(self, batch: int) -> str | None:
        """Why this batch size must not run, or None when it fits."""
        held = self.held(batch)
        if held <= self.limit:
            return None
        run = self.estimate(batch)
        largest = sorted(((size, name) for name, size in run.items() if size), reverse=True)
        listed = ", ".join(f"{name!r} {format_bytes(size)}" for size, name in largest[:4])
        more = f" and {len(largest) - 4} more" if len(largest) > 4 else ""
        return (
            f"outputs too large: at batch size {batch} the evaluation would hold {format_bytes(held)} of outputs, "
            f"{format_bytes(held - self.limit)} over the limit of {format_bytes(self.limit)}. One run returns "
            f"{format_bytes(_total(run))} ({listed}{more}), and each of the {self.copies} session(s) keeps its outputs "
            f"at batch size {self.first_batch} ({format_bytes(_total(self.estimate(self.first_batch)))}) for parity; "
            f"{self.advice(batch)}"
        )

    def advice(self, batch: int) -> str:
        """What the request can change to make the outputs smaller."""
        ways = ["smaller batch sizes"] if self.batch_free and max(batch, self.first_batch) > 1 else []
        if self.other_symbols:
            ways.append(f"smaller symbol values (now {self.other_symbols})")
        if self.copies > 1:
            ways.append("fewer providers")
        if not ways:
            return "no setting makes them smaller: the model cannot be evaluated here"
        return "use " + " or ".join(ways)


@dataclass
class Plan:
    """What evaluate decided before running anything."""

    values: dict[str, int]  # symbol values at the first batch size
    batch_symbols: list[str]
    batches: list[int]
    run_keys: list[str]  # providers in run order (CPU first)
    reference_only: bool
    warnings: list[str]
    notes: list[str]  # how the samples per run were counted, for a model with no batch symbol
    budget: _OutputBudget = field(init=False)


# How a model with no batch symbol's samples per run are told to be otherwise: the batch is then swept.
_NAMED_BATCH = "export the model with a named batch dimension (then --batch-sizes sweeps it)"


def _fixed_batch(info: ModelInfo, values: dict[str, int]) -> tuple[int, str | None]:
    """Samples per run of a model whose inputs' first dimensions are all fixed, and the note saying how they were
    counted (None where every input starts with 1 or nothing: one sample, nothing to decide).

    A fixed first dimension is a batch only on evidence, since samples/s multiplies by it: x[3, 224, 224] is one
    image, x[4, N] may be four channels of one signal. Every input of rank 2 or more must start with the same size,
    and either one of them is a batch of images (N,C,H,W or N,H,W,C), or none is one image (C,H,W or H,W,C) and
    every output whose first dimension is known starts with it too (at least one). Otherwise one sample per run."""
    ranked = [spec for spec in info.inputs if len(spec.shape) >= 2]
    leads = {int(spec.shape[0]) for spec in ranked}  # type: ignore[arg-type]  # a symbol there is a batch symbol
    if not leads or max(leads) <= 1:
        return 1, None
    one = "samples/s counts 1 sample per run (it is runs/s): the model's shapes are fixed, and"
    several = f"if a run holds several samples, {_NAMED_BATCH}"
    if len(leads) > 1:
        starts = ", ".join(f"{spec.name!r} {spec.shape[0]}" for spec in ranked)
        return 1, f"{one} its inputs start with different sizes ({starts}), so none is taken as a batch; {several}"
    (lead,) = leads
    many = f"samples/s counts {lead} samples per run: the model's shapes are fixed, and"
    if images := next((spec for spec in ranked if looks_like_images(spec.shape)), None):
        return lead, (f"{many} its input {images.name!r} {images.shape} is a batch of {lead} images; if a run holds "
                      f"another number of samples, {_NAMED_BATCH}")  # fmt: skip
    not_batch = f"{one} the first dimension {lead} of its inputs is not taken as a batch"
    if single := next((spec for spec in ranked if looks_like_one_image(spec.shape)), None):
        return 1, f"{not_batch}: input {single.name!r} {single.shape} is one image; {several}"
    firsts = {spec.name: first for spec in info.outputs if (first := _output_first(info, spec, values)) is not None}
    if other := next((name for name, first in firsts.items() if first != lead), None):
        shape = info.output_shapes.get(other) or next(s.shape for s in info.outputs if s.name == other)
        return 1, f"{not_batch}: output {other!r} {shape} does not start with it; {several}"
    if not firsts:
        return 1, f"{not_batch}: no output's shape tells whether it is one; {several}"
    return lead, (f"{many} every input of rank 2 or more and every output whose shape is known start with {lead}, "
                  f"taken as its batch; if a run holds another number of samples, {_NAMED_BATCH}")  # fmt: skip


def _output_first(info: ModelInfo, spec: TensorSpec, values: dict[str, int]) -> int | None:
    """An output's first dimension where the model declares it, or shape inference found it; None where neither
    tells (a scalar, a sequence, a data-dependent size)."""
    first = spec.shape[0] if spec.shape else None
    if isinstance(first, str):
        first = values.get(first)
    if first is None and (inferred := info.output_shapes.get(spec.name)):
        first = inferred[0]
    return first


def symbols_at(plan: Plan, batch: int) -> dict[str, int]:
    return {**plan.values, **dict.fromkeys(plan.batch_symbols, batch)}


def _plan(info: ModelInfo, config: EvalConfig, limits: Limits) -> Plan:
    warns: list[str] = []
    batch_syms = batch_symbols(info.inputs)
    clash = [s for s in config.symbol_values if s in batch_syms]
    if clash:
        raise EvalError(f"{', '.join(clash)} is the batch dimension: set it with batch_sizes, not symbols")
    inspected = {k: v for k, v in info.symbols.items() if k not in batch_syms}
    values = default_symbols(info.inputs, {**inspected, **config.symbol_values, **dict.fromkeys(batch_syms, 1)})
    defaulted = [s for s, v in values.items() if v == 1 and s not in batch_syms and s not in config.symbol_values]
    if defaulted and config.inputs is None:  # a sequence model was timed at length 1, unsaid
        warns.append(f"symbolic dimensions at their default of 1: {', '.join(defaulted)} (give symbols, e.g. "
                     f"{defaulted[0]}=N, for the size the model really runs at)")  # fmt: skip
    notes = []
    if batch_syms:
        batches = [int(b) for b in config.batch_sizes]
        if len(batch_syms) > 1:
            warns.append(f"several batch dimensions ({', '.join(batch_syms)}): each is set to the batch size")
    else:
        samples, note = _fixed_batch(info, values)
        batches, notes = [samples], [note] if note else []
        if list(config.batch_sizes) not in ([1], batches):  # sizes asked for (1 is the default) were not run
            warns.append(
                f"the model has no batch dimension (all input shapes fixed in the first dimension); batch sizes "
                f"{list(config.batch_sizes)} were ignored: it ran at its fixed shapes, counted as {samples} "
                f"sample{'s' if samples != 1 else ''} per run (the notes say why)"
            )
    plan = Plan(values, batch_syms, batches, [], "cpu" not in config.providers, warns, notes)
    for batch in batches:  # refuse before anything is allocated
        if info.inputs and check_input_budget(info.inputs, symbols_at(plan, batch), limits) == 0:
            shapes = ", ".join(f"{s.name} {list(s.concrete(symbols_at(plan, batch)))}" for s in info.inputs)
            raise EvalError(f"every input is empty ({shapes}): a run would compute nothing, so there is nothing "
                            "to time; give the zero-sized dimensions a size")  # fmt: skip
    plan.values = symbols_at(plan, batches[0])
    plan.run_keys = ["cpu", *(p for p in config.providers if p != "cpu")]
    plan.budget = _output_budget(info, plan, limits)
    return plan


def _output_budget(info: ModelInfo, plan: Plan, limits: Limits) -> _OutputBudget:
    """The plan's output budget, refused at once when a batch size is over it; outputs whose size only running tells
    are named in a warning."""
    inspected = inspected_batch(info, plan)
    sizes_at = {*plan.batches, *([inspected] if inspected is not None else [])}
    declared = {batch: output_bytes(info.outputs, symbols_at(plan, batch)) for batch in sizes_at}
    others = ", ".join(f"{k}={v}" for k, v in plan.values.items() if k not in plan.batch_symbols)
    budget = _OutputBudget(
        limits.max_output_bytes, len(plan.run_keys), plan.batches[0], declared, bool(plan.batch_symbols), others
    )
    if inspected is not None:
        dtypes = {spec.name: spec.dtype for spec in info.outputs}
        inferred = {name: tensor_bytes(dtypes[name], shape) for name, shape in info.output_shapes.items()}
        budget.measured = (inspected, {name: size for name, size in inferred.items() if size is not None})
    unknown = [name for name, size in budget.estimate(plan.batches[0]).items() if size is None]
    if unknown:
        plan.warnings.append(
            f"the size of output(s) {', '.join(map(repr, unknown))} is only known by running (strings, or a "
            "data-dependent or undeclared dimension): the first run is not bounded by the output limit, the batch "
            "sizes after it are checked against what it returned"
        )
    refusal = budget.refusal(max(plan.batches, key=budget.held))
    if refusal is not None:
        raise EvalError(refusal)
    return budget


def _held_bytes(value: Any) -> int:
    """What an output holds in memory: an array's bytes (a string array's text too, beyond its pointers), a
    sequence's or a map's parts added up."""
    if isinstance(value, np.ndarray):
        text = sum(len(str(v)) for v in value.flat) if value.dtype.kind == "O" else 0
        return int(value.nbytes) + text
    if isinstance(value, dict):
        return sum(_held_bytes(np.asarray(k)) + _held_bytes(np.asarray(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_held_bytes(v if isinstance(v, (np.ndarray, dict, list, tuple)) else np.asarray(v)) for v in value)
    return 0


def inspected_batch(info: ModelInfo, plan: Plan) -> int | None:
    """The batch size the inspection's figures (FLOPs, output shapes) were found at; None when they do not describe
    this run (other symbols differ, or the batch symbols were inspected at different values)."""
    others_same = all(info.symbols.get(k) == v for k, v in plan.values.items() if k not in plan.batch_symbols)
    bases = {info.symbols.get(s) for s in plan.batch_symbols}
    if not others_same or len(bases) > 1 or None in bases:
        return None
    return next(iter(bases)) if bases else plan.batches[0]


def scored_output(info: ModelInfo, name: str | None) -> TensorSpec:
    """The output `--labels` score: the one named, else the first float output of rank 2 or more (a classifier's
    scores; an sklearn model gives its int64 labels first, and scoring those made any label 0 a hit), else the
    first."""
    if name is not None:
        named = next((spec for spec in info.outputs if spec.name == name), None)
        if named is None:
            names = ", ".join(spec.name for spec in info.outputs)
            raise EvalError(f"labels output {name!r} is not an output of the model (its outputs: {names})")
        return named
    return next((s for s in info.outputs if s.is_float and len(s.shape) >= 2), info.outputs[0])


def _check_labels(info: ModelInfo, plan: Plan, labels: list[int], scored: str | None) -> None:
    """Refuse before running when the scored output's sample count is known and differs from the labels, or its
    class count is known and a label is not one of its classes."""
    output = scored_output(info, scored)
    shape = output.shape
    first = shape[0] if shape else None
    n = first if isinstance(first, int) else plan.values.get(first) if isinstance(first, str) else None
    if n is not None and n != len(labels):
        # a free batch: two images and two labels at the default batch size 1 were refused with nothing to say
        # that --batch-sizes makes room for them
        sized = f", or make the first batch size {len(labels)} (--batch-sizes {len(labels)})" if (
            isinstance(first, str) and first in plan.batch_symbols) else ""  # fmt: skip
        raise EvalError(
            f"{len(labels)} labels for output {output.name!r}, which has {n} sample{'s' if n != 1 else ''} at the "
            f"first batch size ({shape}); give one label per sample{sized}"
        )
    if len(shape) > 1 and all(isinstance(d, int) for d in shape[1:]):
        classes = math.prod(shape[1:])
        bad = [label for label in labels if not 0 <= int(label) < classes]
        if bad:
            raise EvalError(
                f"labels {bad[:10]} are not classes of output {output.name!r} {shape}: "
                + (f"they are 0..{classes - 1}" if classes else "it has none")
            )


def _check_outputs(info: ModelInfo, config: EvalConfig) -> None:
    """Refuse a model whose outputs cannot be read back, and labels scored on an output that is not numbers."""
    if not info.outputs:
        raise EvalError("the model declares no outputs: there is nothing to run or measure")
    for spec in info.outputs:
        try:
            if spec.is_tensor:
                spec.numpy_dtype()
        except TypeError:
            raise EvalError(
                f"output {spec.name!r} is {spec.dtype}, which ONNX Runtime cannot hand back to Python; outputs may "
                "be float16/32/64, bfloat16, the float8 types (but float8_e8m0fnu), int8..int64, uint8..uint64, bool, "
                "string, or sequences, maps and optionals of those"
            ) from None
    # (expected outputs are checked against the file's names: the .npz may leave out a string output)
    if config.labels is not None and not (scored := scored_output(info, config.labels_output)).is_numeric:
        raise EvalError(
            f"labels score numeric tensor outputs, and output {scored.name!r} is {scored.type_name}; name one that "
            "holds the scores with --labels-output"
        )


def _check_runtime_versions(info: ModelInfo) -> None:
    """Refuse before queueing what this ONNX Runtime cannot load: it passed submit and failed as a job, at its
    sessions."""
    import onnxruntime as ort

    ir_version, opset = runtime_limits()
    if info.ir_version > ir_version:
        raise EvalError(
            f"the model's IR version {info.ir_version} is newer than ONNX Runtime {ort.__version__} loads (up to "
            f"{ir_version}); save it with an older onnx, or set model.ir_version = {ir_version} if nothing needs more"
        )
    if info.opsets.get("", 0) > opset:
        raise EvalError(
            f"the model uses ONNX opset {info.opsets['']}, and ONNX Runtime {ort.__version__} loads up to opset "
            f"{opset}: re-export it with opset_version={opset} or lower"
        )


def checked_plan(info: ModelInfo, config: EvalConfig, limits: Limits) -> Plan:
    _check_runtime_versions(info)
    _check_outputs(info, config)
    plan = _plan(info, config, limits)
    if config.labels is not None:
        _check_labels(info, plan, list(config.labels), config.labels_output)
    if (config.expected or config.labels is not None) and not (config.inputs or config.images) and info.inputs:
        # the figures are real numbers of made-up inputs: scored against a user's references they read as theirs
        plan.warnings.append(
            f"accuracy is scored on seeded synthetic inputs (seed {config.seed}), not on your data: it means something "
            "only where the expected outputs or labels were made from those same inputs; give the inputs .npz (or the "
            "images) they belong to"
        )
    return plan
