"""`avatarbench bench`, `avatarbench plan llm|network` and `avatarbench cost`: sweeps, what fits where, what it
costs. The flags are SweepRequest's, LlmRequest's, NetworkPlanConfig's and CostConfig's fields."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.bench.config import BenchError, CostConfig, LlmRequest, NetworkPlanConfig, SweepRequest
from engine.core.commands import (
    Command,
    add_context_flags,
    check_outputs_spare,
    command_line,
    output_flags,
    refuse_fallbacks,
    shown_if_interrupted,
    strict_json,
    write_json,
    write_output,
)
from engine.core.errors import InputError, OutputClash
from engine.core.options import from_args
from engine.onnx.flops import format_flops


@contextlib.contextmanager
def _model(name: str, cache_dir: Path, args: argparse.Namespace) -> Iterator[Any]:
    """A built-in network by name, or an .onnx / .zip path (prepared and inspected in a private folder; a plain
    model's external-data files are taken from beside it, and no output may overwrite them)."""
    import tempfile

    from engine.bench.workloads import BUILTIN, builtin_model, onnx_model
    from engine.onnx.inspection import inspect_model
    from engine.onnx.model import Limits
    from engine.onnx.prepare import file_sha256, prepare_model
    from engine.onnx.uploads import ModelSource, external_files

    if name in BUILTIN:
        yield builtin_model(name, cache_dir)
        return
    if name.startswith("onnx:"):
        raise InputError(f"{name[:20]}... names a model the app's ONNX eval stored: on the command line, give the "
                         ".onnx or .zip file itself")  # fmt: skip
    if not Path(name).exists():
        raise InputError(f"--model {name!r} is neither a built-in network ({', '.join(BUILTIN)}) nor an .onnx or .zip "
                         "file that exists")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        path = prepare_model(name, work, beside=True)
        info = inspect_model(path, sha256=file_sha256(name))
        source = ModelSource(Path(name), Limits(), Path(name).name, None, local=True)
        check_outputs_spare(args, "one of the model's external-data files", external_files(source, info))
        yield onnx_model(path, Path(name).name, info)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from engine.bench.sweep import run_sweep
    from engine.core.device import DeviceError, cuda_unavailable_reason, resolve_device
    from engine.core.memory import keep_freed_memory
    from engine.core.progress import ProgressBar
    from engine.core.settings import get_settings

    request, settings = from_args(SweepRequest, args), get_settings()
    if typed := request.problems(given=set(vars(args))):  # a flag typed at its default value counts too
        raise BenchError("; ".join(typed))
    keep_freed_memory()  # this process runs the models, as a job worker would (engine/core/memory.py)
    settings.ensure_dirs()
    has_gpu = torch.cuda.is_available()
    config = request.plan(has_gpu)
    if not has_gpu and any(point.device == "cuda" for point in config.points):  # before the model is built
        raise DeviceError(f"the sweep asks for cuda, but {cuda_unavailable_reason()}; use --device cpu")
    gpu = str(resolve_device("cuda").device) if has_gpu else None
    with (
        shown_if_interrupted(lambda partial: _report_out(partial, args)) as keep,
        _model(request.model, settings.cache_dir, args) as model,
        ProgressBar(args.quiet) as bar,
    ):
        report = run_sweep(config, model, gpu, bar, settings.gpu_memory_fraction, keep, settings.job_memory_gb)
    _report_out(report, args)
    if any(r["status"] == "error" for r in report["results"]) or all(r["status"] != "ok" for r in report["results"]):
        return 1  # an error, or nothing measured (every configuration out of memory)
    refuse_fallbacks([f"{r['label']} ran on {r['ran_on']}" for r in report["results"] if r.get("fell_back")])
    return 0


def _report_out(report: dict[str, Any], args: argparse.Namespace) -> None:
    """The report on the screen first (one that cannot be written still leaves the table there), then its files."""
    from engine.bench.sweep import rows_to_csv

    report.update(command=command_line("avatarbench"), label=args.label, note=args.note)
    _print_sweep(report)
    write_json(args.json, strict_json(report))
    write_output(args.csv, rows_to_csv(report), "--csv")


def _bench_flags(parser: argparse.ArgumentParser) -> None:
    output_flags(parser, "write the full report to this file")
    parser.add_argument("--csv", metavar="FILE", help="write one row per configuration here")
    add_context_flags(parser)


def _fmt(value: Any, spec: str) -> str:
    """format(value, spec), or a dash padded to the spec's width so the columns stay aligned."""
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 0))
    return format(value, spec)


def _print_sweep(report: dict[str, Any]) -> None:
    model = report["model"]
    flops = model["flops_per_sample"]
    per_sample = f"{format_flops(flops)}/sample" if flops else "FLOPs unknown"  # a small model read 0.00 GFLOP
    print(f"{model['title']} ({per_sample}); {report['notes'][-1]}")
    for note in report["notes"][:-1]:
        print(f"  note: {note}")
    print(f"{'configuration':<36} {'status':<6} {'p50 ms':>9} {'samples/s':>10} {'x base':>7} {'TFLOP/s':>8} "
          f"{'% peak':>7} {'peak MiB':>9} {'rel err':>9}")  # fmt: skip
    for r in report["results"]:
        lat = r["latency"] or {}
        err = (r["error_vs_fp32"] or {}).get("rel_l2")
        peak = r["peak_allocated_bytes"] or r["device_used_bytes"]
        tflops = r["achieved_tflops"]  # three significant figures below 0.1: a tiny model on a CPU read 0.000
        print(
            f"{r['label']:<36} {r['status']:<6} {_fmt(lat.get('p50_ms'), '9.3f')} {_fmt(r['samples_per_s'], '10.1f')} "
            f"{_fmt(r['speedup'], '7.2f')} {_fmt(tflops, '8.3f' if tflops is None or tflops >= 0.1 else '8.3g')} "
            f"{_fmt(r['percent_of_peak'], '7.1f')} "
            f"{_fmt(peak / 2**20 if peak else None, '9.0f')} {_fmt(err, '9.2e')}"
        )
        if r["error"]:
            print(f"    {r['status']}: {r['error'][:300]}")
        if (r["error_vs_fp32"] or {}).get("error"):  # why the row has no error against fp32
            print(f"    rel err: {r['error_vs_fp32']['error']}")
        for warning in r["warnings"]:
            print(f"    warning: {warning}")


def _plan_llm(args: argparse.Namespace) -> int:
    from engine.bench.llms import parameters_text
    from engine.bench.planner import plan_llm

    report = plan_llm(from_args(LlmRequest, args))
    write_json(args.json, json.dumps(report, indent=2, default=str))
    verdict = "fits" if report["fits"] else "does NOT fit"
    m = report["memory"]
    copies = f", {report['replicas']} replicas" if report["replicas"] > 1 else ""
    model = report["model"]
    print(f"{model['name'] or model['key']} on {m['shards']} x {report['gpu']['name']}{copies}: {verdict}")
    print(f"  parameters: {parameters_text(model['parameters'])}, {model['parameters_basis']}")
    for part, value in m["per_gpu"].items():
        print(f"  {part.removesuffix('_bytes'):<26} {value / 1e9:8.2f} GB per GPU")
    print(f"  KV cache: {m['kv_bytes_per_token'] / 1024:.0f} KiB/token, room for {m['kv_token_capacity']:,} tokens")
    print(f"  {report['launch']}")
    for reason in report["reasons"]:
        print(f"  why: {reason}")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
    return 0 if report["fits"] else 1


def _plan_network(args: argparse.Namespace) -> int:
    from engine.bench.planner import plan_network
    from engine.core.settings import get_settings

    config = from_args(NetworkPlanConfig, args)
    title, fit = plan_network(config, get_settings().cache_dir)
    write_json(args.json, json.dumps({"model": title, **fit.to_dict()}, indent=2))  # as the API's /plan_network
    print(f"{title} on {config.gpu} at {config.precision}: fixed {fit.weights_bytes / 2**20:.0f} MiB, "
          f"activations {fit.activation_bytes_per_sample / 2**20:.1f} MiB/sample ({fit.basis})")  # fmt: skip
    print(f"  largest batch under {config.memory_fraction:g} of memory: {fit.max_batch_text}")
    print(f"  recommended batch at {config.precision}: {fit.recommended_batch}; the precision this card suits: "
          f"{fit.recommended_precision}")  # fmt: skip
    if fit.gpus_for_target:
        print(f"  GPUs for {config.target_throughput:g} samples/s: {fit.gpus_for_target}")
    for warning in fit.warnings:
        print(f"  warning: {warning}")
    return 0 if fit.max_batch else 1


def _cost(args: argparse.Namespace) -> int:
    from engine.bench.catalog import CATALOG, PriceBook
    from engine.bench.planner import cost_for, unpriced_cards
    from engine.core.settings import get_settings

    prices = get_settings().prices_path
    # the same file whether or not it exists yet: written once, every later cost would refuse it as prices
    same = args.json and (Path(args.json).resolve() == prices.resolve() or (
        prices.exists() and Path(args.json).exists() and os.path.samefile(args.json, prices)))  # fmt: skip
    if same:
        raise OutputClash(f"--json {args.json} is the price file cost reads ({prices}): writing it would overwrite "
                         "your prices; give another file name")  # fmt: skip
    config, book = from_args(CostConfig, args), PriceBook.load(prices)
    rows = cost_for(config, book)
    write_json(args.json, json.dumps(rows, indent=2))
    print(f"{'GPU':<16} {'$/h':>6} {'samples/s':>10} {'$ per 1000 req':>15} {'req per $10':>13}  basis")
    for r in rows:
        print(
            f"{r['gpu']:<16} {_fmt(r['price_per_hour'], '6.2f')} {_fmt(r['samples_per_s'], '10.1f')} "
            f"{_fmt(r['cost_per_1000_requests'], '15.4g')} {_fmt(r['requests_per_10_usd'], '13,.0f')}  {r['basis']}"
        )
    on_card = config.measured_on != "cpu"  # only then are other cards estimated: a price would add a row of dashes
    if on_card and (left_out := unpriced_cards(book, CATALOG.get(config.measured_on))):
        print(f"left out, with no price: {', '.join(left_out)} (give their dollars per hour in {prices})")
    if not on_card and config.cpu_price_per_hour is None:  # a table of dashes, with nothing to try
        print("a card's speed cannot be told from the CPU's, so nothing above is priced: --cpu-price-per-hour "
              "(the CPU machine's dollars per hour) prices the measurement itself")  # fmt: skip
    return 0


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the result here")


COMMANDS = [
    Command("bench", "benchmark sweep: runtime x precision x batch x ... (or a preset)", _bench, SweepRequest,
            _bench_flags),
    Command("plan llm", "does an LLM fit a GPU with Text Generation Inference, and with which flags", _plan_llm,
            LlmRequest, _json_flag),
    Command("plan network", "batch size and GPU count for one of our networks", _plan_network, NetworkPlanConfig,
            _json_flag),
    Command("cost", "cost per 1000 requests on each priced GPU from a measured throughput", _cost, CostConfig,
            _json_flag),
]  # fmt: skip
