"""`avatarbench onnx inspect` and `avatarbench onnx eval`: validate and describe a model, then run it on execution
providers. The flags are InspectConfig's and EvalConfig's fields."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.core.commands import (
    Command,
    check_outputs_spare,
    output_flags,
    refuse_fallbacks,
    shown_if_interrupted,
    strict_json,
    warning_line,
    write_json,
)
from engine.core.options import from_args
from engine.onnx.config import EvalConfig, EvalError, InspectConfig


def _inspect(args: argparse.Namespace) -> int:
    from engine.core.settings import get_settings
    from engine.onnx.flops import flops_line
    from engine.onnx.model import DEFAULTS_LISTED
    from engine.onnx.uploads import model_source, prepared

    config, settings = from_args(InspectConfig, args), get_settings()
    source = model_source(config.model, config.example, settings, local=True)
    with prepared(source, settings, dict(config.symbols)) as (_, info):
        if args.json:
            print(json.dumps(info.to_dict(), indent=2, default=str))
            return 0
    print(f"{source.name}: IR {info.ir_version}, opsets {info.opsets}, produced by {info.producer or 'unknown'}")
    print(f"  sha256 {info.sha256}, {info.size_bytes / 2**20:.1f} MiB, {info.parameters:,} parameters")
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for spec in specs:
            print(f"  {kind:<6} {spec.name}: {spec.type_name} {spec.shape}")
    defaults = info.overridable_inputs  # an old exporter's model lists every weight: the first few
    for spec in defaults[:DEFAULTS_LISTED]:
        print(f"  input  {spec.name}: {spec.type_name} {spec.shape}, with a default (an initializer an inputs .npz "
              "may set)")  # fmt: skip
    if len(defaults) > DEFAULTS_LISTED:
        print(f"  ... and {len(defaults) - DEFAULTS_LISTED} more inputs with a default (--json lists them)")
    print(f"  symbols {info.symbols}")
    if info.batch_symbols:
        print(f"  batch  {', '.join(info.batch_symbols)}: free (an evaluation runs each batch size asked for)")
    print("  ops " + ", ".join(f"{op} x{n}" for op, n in info.op_counts.items()))
    print(f"  {flops_line(info.flops, info.flops_not_counted)}")
    for warning in info.warnings:
        print(f"  warning: {warning}")
    return 0


def _inspect_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the full description as JSON")


def _eval(args: argparse.Namespace) -> int:
    from engine.core.memory import keep_freed_memory
    from engine.core.progress import ProgressBar
    from engine.core.settings import get_settings
    from engine.onnx.evaluate import evaluate
    from engine.onnx.runner import Placement
    from engine.onnx.uploads import external_files, model_source, prepared
    from engine.runtimes.ort_session import stop_runs_on_interrupt

    config, settings = from_args(EvalConfig, args), get_settings()
    keep_freed_memory()  # this process runs the model, as a job worker would (engine/core/memory.py)
    source = model_source(config.model, config.example, settings, local=True)
    with (
        shown_if_interrupted(lambda partial: _report_out(partial, args)) as keep,
        prepared(source, settings, config.symbol_values) as (path, info),
        ProgressBar(args.quiet) as bar,
        stop_runs_on_interrupt(),  # a model's run is one long C++ call: Ctrl-C stops it too
    ):
        check_outputs_spare(args, "one of the model's external-data files", external_files(source, info))
        placement = Placement(gpu_memory_fraction=settings.gpu_memory_fraction)
        report = evaluate(path, info, config, bar, limits=source.limits, placement=placement, partial=keep)
    _report_out(report, args)
    if not any(not row.get("error") for row in report["results"]):
        print("avatarbench: the model ran on no provider (the reasons are above)", file=sys.stderr)
        return 1  # a command's own "no", as a failed sweep point
    _refuse_unmeasured_accuracy(report["accuracy"])
    refuse_fallbacks([
        f"{key} ({meta['requested']}) ran on {meta['got'][0]}"
        for key, meta in report["sessions"].items() if meta.get("fell_back")
    ])  # fmt: skip
    return 0


def _refuse_unmeasured_accuracy(accuracy: dict) -> None:
    """Exit 2 once the report is out when --expected or --labels could not be compared with what the model gave (a
    shape that differs): the accuracy asked for was not measured, and exit 0 let a script read it as measured."""
    failed = [
        f"{provider} {name}: {a['error']}"
        for provider, outputs in (accuracy.get("expected") or {}).items()
        for name, a in outputs.items()
        if a.get("error")
    ]
    failed += [
        f"labels {provider}: {t['error']}" for provider, t in (accuracy.get("topk") or {}).items() if t.get("error")
    ]
    if failed:
        raise EvalError(f"the accuracy asked for was not measured: {'; '.join(failed)}")


def _ms_or_dash(value: float | None) -> str:
    """A latency to print; a dash where too few runs give none (the report's notes say how many do)."""
    return f"{'-':>8} ms" if value is None else f"{value:8.3f} ms"


def _report_out(report: dict[str, Any], args: argparse.Namespace) -> None:
    """The rows, parity, accuracy and warnings on the screen, then the report's file."""
    for row in report["results"]:
        if row.get("error"):
            print(f"{row['provider']:<5} batch {row['batch']:<5} failed: {row['error']}")
            continue
        lat = row["latency"]
        speedup = f"  {row['speedup_vs_cpu']:.2f}x CPU (p50)" if row.get("speedup_vs_cpu") else ""
        print(
            f"{row['provider']:<5} batch {row['batch']:<5} on {row.get('ran_on', '?'):<26} p50 {lat['p50_ms']:8.3f} ms"
            f"  p99 {_ms_or_dash(lat['p99_ms'])}  {lat['throughput_per_s']:10.1f}/s{speedup}"
        )
    if list(report["parity"]) == ["cpu"]:
        print("parity: only the CPU ran, and its outputs are the reference: nothing to compare them with")
    for provider, outputs in report["parity"].items():
        if provider == "cpu":  # the reference against itself: zeros
            continue
        session = report["sessions"].get(provider, {})
        where = f" (fell back: ran on {session['got'][0]})" if session.get("fell_back") else ""
        for name, p in outputs.items():
            if isinstance(p, dict) and ("max_abs" in p or "exact_match" in p):
                print(f"parity {provider}{where} {name}: {_parity_text(p)}")
    for line in _accuracy_lines(report["accuracy"]):
        print(line)
    for note in report["notes"]:
        print(f"note: {note}")
    for warning in report["warnings"]:
        print(warning_line(warning), file=sys.stderr)
    write_json(args.json, strict_json(report))


def _parity_text(p: dict) -> str:
    """Max abs, relative L2 and cosine over the values both outputs hold finite, and the NaN and inf counts where
    any; for an output that is not numbers (strings, maps), whether it is identical."""
    if "max_abs" not in p:
        return "identical (compared exactly: not numbers)" if p["exact_match"] else "differs (compared exactly)"
    text = f"max abs {p['max_abs']:.3g}, rel L2 {p['rel_l2']:.3g}, cosine {p['cosine']:.6f} over "
    text += f"{p['finite_compared']:,} finite values"
    for kind in ("nan", "inf"):
        counts = p.get(kind) or {}
        if any(counts.values()):
            text += f"; {'NaN' if kind == 'nan' else 'inf'}: {counts['reference']:,} in the CPU reference, "
            text += f"{counts['other']:,} here"
    return text


def _accuracy_lines(accuracy: dict) -> list[str]:
    """Against --expected outputs and --labels, per provider; their refusals too (else only the JSON had them)."""
    lines = []
    for provider, outputs in (accuracy.get("expected") or {}).items():
        for name, a in outputs.items():
            if a.get("error"):
                lines.append(f"expected {provider} {name}: {a['error']}")
            else:
                lines.append(f"expected {provider} {name}: mae {a['mae']:.3g}, rmse {a['rmse']:.3g}, max error "
                             f"{a['max_error']:.3g}, cosine {a['cosine']:.6f}")  # fmt: skip
    for provider, t in (accuracy.get("topk") or {}).items():
        if t.get("error"):
            lines.append(f"labels {provider}: {t['error']}")
        else:
            wider = f", top-{t['top5_k']} {t['top5']:.1%}" if t["top5_k"] > 1 else ""  # one class: top-1 twice
            lines.append(f"labels {provider} ({t['output']}): top-1 {t['top1']:.1%}{wider} of {t['n']}")
    return lines


COMMANDS = [
    Command("onnx inspect", "validate an .onnx (or a .zip with external data) and describe it", _inspect,
            InspectConfig, _inspect_flags),
    Command("onnx eval", "run a model on execution providers: latency, throughput, parity", _eval, EvalConfig,
            lambda parser: output_flags(parser, "write the full report to this file")),
]  # fmt: skip
