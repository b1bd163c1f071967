"""`avatarbench bench`, `avatarbench plan` and `avatarbench cost`: sweeps, what fits where, what it costs."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.core.parsing import int_list


def _choices(allowed: tuple[str, ...] | list[str], what: str):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{what}: {bad or text!r} not in {', '.join(allowed)}")
        return values

    return parse


def _switches(text: str) -> list[bool]:
    mapping = {"on": True, "off": False, "true": True, "false": False}
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    if not values or any(v not in mapping for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give on, off or on,off")
    return list(dict.fromkeys(mapping[v] for v in values))


def _batches(text: str) -> list[int]:
    try:
        return int_list(text, "batch sizes", minimum=1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextlib.contextmanager
def _model(name: str, cache_dir: Path) -> Iterator[Any]:
    """A built-in network by name, or an .onnx / .zip path (prepared and inspected in a private folder)."""
    import tempfile

    from engine.bench.workloads import BUILTIN, builtin_model, onnx_model
    from engine.onnx.model import file_sha256, inspect_model, prepare_model

    if name in BUILTIN:
        yield builtin_model(name, cache_dir)
        return
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        path = prepare_model(name, work)
        yield onnx_model(path, Path(name).name, inspect_model(path, sha256=file_sha256(name)))


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from engine.bench.sweep import SweepConfig, grid, preset, rows_to_csv, run_sweep
    from engine.core.device import resolve_device
    from engine.core.settings import get_settings
    from engine.system.telemetry import TelemetrySampler

    settings = get_settings()
    settings.ensure_dirs()
    has_gpu = torch.cuda.is_available()
    if args.preset:
        config = preset(args.preset, args.model, has_gpu, args.runs, args.warmup)
    else:
        runtimes = list(args.runtime)
        if True in args.compile and "compile" not in runtimes:
            runtimes.append("compile")
        if False not in args.compile:
            runtimes = [r for r in runtimes if r != "eager"] or ["compile"]
        devices = args.device or (["cuda"] if has_gpu else ["cpu"])
        points, notes = grid(
            runtimes, args.precision, args.batch, devices, args.channels_last, args.cudnn_benchmark, args.compile_mode
        )
        config = SweepConfig(args.model, points, args.runs, args.warmup, notes=notes)
    config.validate()
    gpu = str(resolve_device("cuda").device) if has_gpu else None
    sampler = TelemetrySampler(interval_s=0.5, history_s=3600).start()
    try:
        with _model(args.model, settings.cache_dir) as model:
            report = run_sweep(
                config, model, gpu, None if args.quiet else _progress, sampler, settings.gpu_memory_fraction
            )
    finally:
        sampler.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.csv:
        Path(args.csv).write_text(rows_to_csv(report))
    _print_sweep(report)
    return 0 if all(r["status"] != "error" for r in report["results"]) else 1


def _progress(fraction: float, label: str) -> None:
    from engine.cli import _progress_bar

    _progress_bar(fraction, label[:40])


def _fmt(value: Any, spec: str) -> str:
    """format(value, spec), or a dash padded to the spec's width so the columns stay aligned."""
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 0))
    return format(value, spec)


def _print_sweep(report: dict[str, Any]) -> None:
    model = report["model"]
    flops = model["flops_per_sample"]
    gflops = f"{flops / 1e9:.2f} GFLOP/sample" if flops else "FLOPs unknown"
    print(f"{model['title']} ({gflops}); {report['notes'][-1]}")
    for note in report["notes"][:-1]:
        print(f"  note: {note}")
    print(f"{'configuration':<36} {'status':<6} {'p50 ms':>9} {'samples/s':>10} {'x base':>7} {'TFLOP/s':>8} "
          f"{'% peak':>7} {'peak MiB':>9} {'rel err':>9}")  # fmt: skip
    for r in report["results"]:
        lat = r["latency"] or {}
        err = (r["error_vs_fp32"] or {}).get("rel_l2")
        peak = r["peak_allocated_bytes"] or r["device_used_bytes"]
        print(
            f"{r['label']:<36} {r['status']:<6} {_fmt(lat.get('p50_ms'), '9.3f')} {_fmt(r['samples_per_s'], '10.1f')} "
            f"{_fmt(r['speedup'], '7.2f')} {_fmt(r['achieved_tflops'], '8.3f')} {_fmt(r['percent_of_peak'], '7.1f')} "
            f"{_fmt(peak / 2**20 if peak else None, '9.0f')} {_fmt(err, '9.2e')}"
        )
        if r["error"]:
            print(f"    {r['status']}: {r['error'][:300]}")
        for warning in r["warnings"]:
            print(f"    warning: {warning}")


def _cmd_plan(args: argparse.Namespace) -> int:
    from engine.bench.catalog import CATALOG
    from engine.bench.planner import LlmRequest, plan_llm, plan_model_memory

    if args.llm:
        request = LlmRequest(args.gpu, args.llm, args.count, args.max_input_tokens, args.max_total_tokens)
        request.concurrent_requests, request.quantize = args.concurrent, args.quantize
        request.memory_fraction = args.memory_fraction
        report = plan_llm(request)
        _write_json(args.json, report)
        verdict = "fits" if report["fits"] else "does NOT fit"
        m = report["memory"]
        print(f"{report['model']['name']} on {args.count} x {report['gpu']['name']}: {verdict}")
        for part, value in m["per_gpu"].items():
            print(f"  {part.removesuffix('_bytes'):<26} {value / 1e9:8.2f} GB per GPU")
        print(f"  KV cache: {m['kv_bytes_per_token'] / 1024:.0f} KiB/token, room for {m['kv_token_capacity']:,} tokens")
        print(f"  {report['launch']}")
        for reason in report["reasons"]:
            print(f"  why: {reason}")
        for warning in report["warnings"]:
            print(f"  warning: {warning}")
        return 0 if report["fits"] else 1
    if args.model:
        gpu = CATALOG.get(args.gpu)
        if gpu is None:
            raise ValueError(f"unknown GPU {args.gpu!r}; known: {', '.join(CATALOG)}")
        from engine.bench.planner import calibration_from_report
        from engine.bench.workloads import builtin_model, memory_profile
        from engine.core.settings import get_settings

        model = builtin_model(args.model, get_settings().cache_dir)
        calibrated = None
        if args.calibrate:
            calibrated = calibration_from_report(json.loads(Path(args.calibrate).read_text()), args.precision)
            if calibrated is None:
                raise ValueError(f"{args.calibrate} has no GPU eager {args.precision} rows at two batch sizes")
        if calibrated:
            act, weights = calibrated
            basis = f"calibrated from {args.calibrate} (allocator peaks by batch)"
        else:
            weights, act = memory_profile(model, args.precision)
            basis = "estimate: every layer output of one sample kept (an upper bound; --calibrate with a GPU sweep)"
        fit = plan_model_memory(
            gpu, weights, act, args.precision, args.memory_fraction, target_samples_per_s=args.target_throughput,
            samples_per_s_per_gpu=args.throughput_per_gpu, basis=basis,
        )  # fmt: skip
        _write_json(args.json, fit.to_dict())
        print(f"{model.title} on {gpu.name} at {args.precision}: fixed {fit.weights_bytes / 2**20:.0f} MiB, "
              f"activations {fit.activation_bytes_per_sample / 2**20:.1f} MiB/sample ({basis})")  # fmt: skip
        print(f"  largest batch under {args.memory_fraction:g} of memory: {fit.max_batch}")
        print(f"  recommended batch: {fit.recommended_batch}, precision: {fit.recommended_precision}")
        if fit.gpus_for_target:
            print(f"  GPUs for {args.target_throughput:g} samples/s: {fit.gpus_for_target}")
        for warning in fit.warnings:
            print(f"  warning: {warning}")
        return 0 if fit.max_batch else 1
    raise ValueError("plan needs --llm (LLM serving) or --model (one of our networks)")


def _cmd_cost(args: argparse.Namespace) -> int:
    from engine.bench.catalog import CATALOG, PriceBook
    from engine.bench.planner import cost_table
    from engine.core.settings import get_settings

    measured_on = None if args.on.lower() == "cpu" else CATALOG.get(args.on)
    if args.on.lower() != "cpu" and measured_on is None:
        raise ValueError(f"unknown GPU {args.on!r}; known: cpu, {', '.join(CATALOG)}")
    prices = PriceBook.load(get_settings().data_dir / "prices.json")
    rows = cost_table(args.throughput, args.precision, measured_on, prices, args.samples_per_request)
    _write_json(args.json, rows)
    print(f"{'GPU':<16} {'$/h':>6} {'samples/s':>10} {'$ per 1000 req':>15} {'req per $10':>13}  basis")
    for r in rows:
        print(
            f"{r['gpu']:<16} {r['price_per_hour']:6.2f} {_fmt(r['samples_per_s'], '10.1f')} "
            f"{_fmt(r['cost_per_1000_requests'], '15.4f')} {_fmt(r['requests_per_10_usd'], '13,.0f')}  {r['basis']}"
        )
    return 0


def _write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def add_commands(sub: Any) -> None:
    from engine.runtimes.bench_runtimes import COMPILE_MODES, RUNTIMES

    precisions = ("fp32", "tf32", "fp16", "bf16")
    bench = sub.add_parser("bench", help="benchmark sweep: runtime x precision x batch x ... (or a preset)")
    bench.add_argument("--model", default="wav2lip", help="wav2lip, s3fd, or an .onnx/.zip path (ORT runtimes)")
    bench.add_argument("--preset", choices=["wav2lip-ladder", "precision-grid", "cpu-vs-gpu", "onnx-providers"])
    bench.add_argument("--runtime", type=_choices(RUNTIMES, "runtime"), default=["eager"], help=", ".join(RUNTIMES))
    bench.add_argument("--batch", type=_batches, default=[1, 8], help="batch sizes, e.g. 128,512")
    bench.add_argument(
        "--precision", type=_choices(precisions, "precision"), default=["fp32"], help="fp32,tf32,fp16,bf16"
    )
    bench.add_argument("--compile", type=_switches, default=[False], help="off, on or off,on (adds torch.compile)")
    bench.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    bench.add_argument("--channels-last", type=_switches, default=[False], help="off, on or off,on")
    bench.add_argument("--cudnn-benchmark", type=_switches, default=[True], help="on, off or on,off")
    bench.add_argument("--device", type=_choices(("cpu", "cuda"), "device"), help="cpu,cuda (default: cuda if present)")
    bench.add_argument("--runs", type=int, default=20, help="timed runs per configuration")
    bench.add_argument("--warmup", type=int, default=3, help="untimed runs after the first")
    bench.add_argument("--json", help="write the full report here")
    bench.add_argument("--csv", help="write one row per configuration here")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_cmd_bench)

    plan = sub.add_parser("plan", help="what fits on a GPU: LLM serving (TGI flags) or one of our networks")
    plan.add_argument("--gpu", required=True, help="catalog key, e.g. T4, V100-16GB, A100-80GB, H100")
    plan.add_argument("--count", type=int, default=1, help="GPUs available (tensor-parallel shards)")
    plan.add_argument("--llm", help="tinyllama-1.1b, phi-2, gemma-2b, mistral-7b, llama-2-7b, llama-2-13b")
    plan.add_argument("--model", help="one of our networks: wav2lip, s3fd")
    plan.add_argument("--precision", default="fp16", choices=precisions, help="for --model")
    plan.add_argument("--max-input-tokens", type=int, help="default: max-total-tokens - 1")
    plan.add_argument("--max-total-tokens", type=int, default=4096)
    plan.add_argument("--concurrent", type=int, default=1, help="requests at max-total-tokens held at once")
    plan.add_argument("--quantize", default="auto", choices=["auto", "none", "eetq", "bitsandbytes", "awq", "gptq"])
    plan.add_argument("--memory-fraction", type=float, default=0.9)
    plan.add_argument("--calibrate", metavar="REPORT.json", help="for --model: a GPU sweep's report (bench --json)")
    plan.add_argument("--target-throughput", type=float, help="for --model: samples/s wanted in total")
    plan.add_argument("--throughput-per-gpu", type=float, help="for --model: measured samples/s on one card")
    plan.add_argument("--json", help="write the plan here")
    plan.set_defaults(func=_cmd_plan)

    cost = sub.add_parser("cost", help="cost per 1000 requests on each priced GPU from a measured throughput")
    cost.add_argument("--throughput", type=float, required=True, help="measured samples per second")
    cost.add_argument("--on", required=True, help="where it was measured: cpu or a catalog key (H100, T4, ...)")
    cost.add_argument("--precision", default="fp16", choices=precisions)
    cost.add_argument("--samples-per-request", type=float, default=1.0, help="e.g. 250 frames per 10 s video")
    cost.add_argument("--json", help="write the table here")
    cost.set_defaults(func=_cmd_cost)


__all__ = ["add_commands"]
