"""`avatarbench` (also `python -m engine`): one subcommand per capability.

The engine's commands import no UI code. `serve` is the one exception by design: it hands
over to app.py, the composition root, and imports it only when that command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.core.parsing import int_list, name_value
from engine.core.settings import SettingsError
from engine.onnx.images import CHANNEL_ORDERS, RESIZE_MODES, SCALINGS


def _cmd_doctor(args: argparse.Namespace) -> int:
    from engine.system.doctor import PROBLEM, run_doctor

    report = run_doctor()
    print(report.to_json() if args.json else report.render_text())
    return 1 if report.status == PROBLEM else 0


def _cmd_telemetry(args: argparse.Namespace) -> int:
    from engine.system.telemetry import TelemetrySampler, render_table

    sampler = TelemetrySampler(interval_s=args.interval, history_s=max(10.0, args.interval * 2))
    count = 0
    try:
        while True:
            # CPU percentages are measured between two samples: wait one interval (a short one
            # for a single reading) after the sampler starts.
            time.sleep(args.interval if args.watch else min(args.interval, 0.25))
            snap = sampler.sample_now()
            if args.json:
                print(json.dumps(snap.to_dict()), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\033[2J\033[H", end="")
                print(render_table(snap), flush=True)
            count += 1
            if not args.watch or (args.count and count >= args.count):
                return 0
    except KeyboardInterrupt:
        return 0


def _progress_bar(fraction: float, label: str) -> None:
    width = 30
    filled = int(width * max(0.0, min(1.0, fraction)))
    end = "\n" if fraction >= 1.0 else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {label:<24}", end=end, file=sys.stderr)


def _pads(text: str) -> tuple[int, int, int, int]:
    parts = text.replace(",", " ").split()
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError("pads are four pixel counts: TOP BOTTOM LEFT RIGHT, e.g. 0,10,0,0")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _box(text: str) -> tuple[int, int, int, int] | None:
    from engine.lipsync.pipeline import LipSyncError, parse_box

    try:
        return parse_box(text)
    except LipSyncError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_lipsync(args: argparse.Namespace) -> int:
    from engine.lipsync.pipeline import LipSyncConfig, run_lipsync

    config = LipSyncConfig(
        face=Path(args.face),
        audio=Path(args.audio),
        out=Path(args.out),
        engine=args.engine,
        checkpoint=args.checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        compile=args.compile,
        pads=args.pads,
        smooth=not args.no_smooth,
        detector=args.detector,
        detector_checkpoint=args.detector_checkpoint,
        detect_scale=args.detect_scale,
        paste_mode=args.paste,
        audio_offset=args.audio_offset,
        fixed_box=args.box,
    )
    result = run_lipsync(config, progress=None if args.quiet else _progress_bar)
    if args.json:
        Path(args.json).write_text(result.to_json(indent=2) + "\n")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    m = result.metrics
    print(
        f"{result.outputs['video']}: {m['frames']} frames at {m['fps']:g} fps by {m['engine_label']} on "
        f"{result.device} ({result.precision}), batch {m['batch_size']}, {m['faces_missed']} without a face"
    )
    for stage in result.stages:
        rate = f" ({stage.items_per_s:.1f}/s)" if stage.items_per_s else ""
        print(f"  {stage.name:<10} {stage.seconds:8.3f} s{rate}")
    return 0


def _symbol(text: str) -> tuple[str, int]:
    try:
        return name_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


EXAMPLE_PREFIX = "example:"
MODEL_HELP = ".onnx file, .zip holding one model and its external-data files, or example:wav2lip / example:s3fd"


@contextlib.contextmanager
def _prepared_model(model: str, symbols: dict[str, int] | None = None) -> Iterator[tuple[Path, Any]]:
    """The upload prepared (checked, unpacked) in a private folder under the cache, and its inspection."""
    import tempfile

    from engine.core.settings import get_settings
    from engine.onnx.model import file_sha256, inspect_model, prepare_model

    settings = get_settings()
    settings.ensure_dirs()
    if model.startswith(EXAMPLE_PREFIX):
        from engine.onnx.examples import example_path

        model = str(example_path(model.removeprefix(EXAMPLE_PREFIX), settings.cache_dir))
    with tempfile.TemporaryDirectory(dir=settings.cache_dir) as work:
        path = prepare_model(model, work)
        yield path, inspect_model(path, symbols, sha256=file_sha256(model))


def _cmd_onnx_inspect(args: argparse.Namespace) -> int:
    with _prepared_model(args.model, dict(args.symbol)) as (_, info):
        if args.json:
            print(json.dumps(info.to_dict(), indent=2, default=str))
            return 0
    print(f"{args.model}: IR {info.ir_version}, opsets {info.opsets}, produced by {info.producer or 'unknown'}")
    print(f"  sha256 {info.sha256}, {info.size_bytes / 2**20:.1f} MiB, {info.parameters:,} parameters")
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for spec in specs:
            print(f"  {kind:<6} {spec.name}: {spec.dtype} {spec.shape}")
    print(f"  symbols {info.symbols}")
    print("  ops " + ", ".join(f"{op} x{n}" for op, n in info.op_counts.items()))
    flops = "unknown" if info.flops is None else f"{info.flops / 1e9:.3f} GFLOP per run"
    print(f"  {flops}; not counted: {', '.join(info.flops_not_counted) or 'nothing'}")
    for warning in info.warnings:
        print(f"  warning: {warning}")
    return 0


def _labels(text: str) -> list[int]:
    try:
        return int_list(text, "labels")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_list(text: str) -> list[int]:
    try:
        return int_list(text, minimum=1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_onnx_eval(args: argparse.Namespace) -> int:
    from engine.core.settings import get_settings
    from engine.onnx.evaluate import EvalConfig, evaluate

    settings = get_settings()
    config = EvalConfig(
        providers=[p.strip() for p in args.providers.split(",") if p.strip()],
        batch_sizes=args.batch,
        symbols=dict(args.symbol),
        runs=args.runs,
        warmup=args.warmup,
        inputs_npz=args.inputs,
        expected_npz=args.expected,
        seed=args.seed,
        labels=args.labels,
        trt_fp16=args.trt_fp16,
        trt_workspace_gb=args.trt_workspace,
        gpu_memory_fraction=settings.gpu_memory_fraction,
        images=args.images,
        image_input=args.image_input,
        image_resize=args.resize,
        image_scaling=args.scaling,
        image_channels=args.channels,
    )
    config.validate()
    with _prepared_model(args.model) as (path, info):
        report = evaluate(path, info, config, progress=None if args.quiet else _progress_bar)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    for row in report["results"]:
        if row.get("error"):
            print(f"{row['provider']:<5} batch {row['batch']:<5} failed: {row['error']}")
            continue
        lat = row["latency"]
        speedup = f"  {row['speedup_vs_cpu']:.2f}x CPU" if row.get("speedup_vs_cpu") else ""
        print(
            f"{row['provider']:<5} batch {row['batch']:<5} on {row.get('ran_on', '?'):<26} p50 {lat['p50_ms']:8.3f} ms"
            f"  p99 {lat['p99_ms']:8.3f} ms  {lat['throughput_per_s']:10.1f}/s{speedup}"
        )
    for provider, outputs in report["parity"].items():
        for name, p in outputs.items():
            if isinstance(p, dict) and "max_abs" in p:
                print(f"parity {provider} {name}: max abs {p['max_abs']:.3g}, cosine {p['cosine']:.6f}")
    for warning in report["warnings"]:
        print(warning if warning.lower().startswith("warning") else f"warning: {warning}", file=sys.stderr)
    return 0


def _serve(app_args: list[str]) -> int:
    import app  # the composition root; see the module docstring

    return app.main(app_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatarbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", help="diagnose why the GPU is (not) used, with fixes")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.set_defaults(func=_cmd_doctor)

    tele = sub.add_parser("telemetry", help="nvidia-smi style GPU and host telemetry")
    tele.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    tele.add_argument("--json", action="store_true", help="one JSON object per sample")
    tele.add_argument("--interval", type=float, default=1.0, help="seconds between samples with --watch")
    tele.add_argument("--count", type=int, default=0, help="stop after N samples with --watch (0: never)")
    tele.set_defaults(func=_cmd_telemetry)

    lip = sub.add_parser("lipsync", help="lip-sync a face image or video to speech (writes an MP4)")
    lip.add_argument("--face", required=True, help="face image or video")
    lip.add_argument("--audio", required=True, help="speech: any audio file, or a video's sound track")
    lip.add_argument("--out", required=True, help="output .mp4")
    lip.add_argument("--engine", default="auto", choices=["auto", "wav2lip", "baseline"])
    lip.add_argument("--checkpoint", help="Wav2Lip checkpoint (path or hf:OWNER/REPO/FILE)")
    lip.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    lip.add_argument("--batch-size", type=int, help="frames per batch (default: from free GPU memory; 128 on CPU)")
    lip.add_argument("--precision", choices=["fp32", "tf32", "fp16", "bf16"], help="default: fp16 on CUDA, fp32 on CPU")
    lip.add_argument("--compile", action="store_true", help="torch.compile the generator")
    lip.add_argument("--pads", type=_pads, default=(0, 10, 0, 0), help="TOP,BOTTOM,LEFT,RIGHT (default 0,10,0,0)")
    lip.add_argument("--no-smooth", action="store_true", help="do not smooth face boxes over time")
    lip.add_argument("--box", type=_box, help="fixed face box X1,Y1,X2,Y2 in pixels: no detection at all")
    lip.add_argument("--detector", default="haar", choices=["haar", "s3fd"])
    lip.add_argument("--detector-checkpoint", help="s3fd.pth for --detector s3fd")
    lip.add_argument("--detect-scale", type=float, default=0.5, help="detect on frames scaled by this (0.1..1)")
    lip.add_argument("--paste", default="blend", choices=["blend", "upstream"])
    lip.add_argument("--audio-offset", type=int, default=0, help="shift speech by N frames (+: lips were late)")
    lip.add_argument("--json", help="write the full result (timings, memory, warnings) to this file")
    lip.add_argument("--quiet", action="store_true", help="no progress bar")
    lip.set_defaults(func=_cmd_lipsync)

    onnx_cmd = sub.add_parser("onnx", help="ONNX models: validate and inspect")
    onnx_sub = onnx_cmd.add_subparsers(dest="onnx_command", required=True)
    inspect = onnx_sub.add_parser("inspect", help="validate an .onnx (or a .zip with external data) and describe it")
    inspect.add_argument("model", help=MODEL_HELP)
    inspect.add_argument(
        "--symbol",
        type=_symbol,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="value for a symbolic dimension (repeatable), e.g. --symbol batch=8",
    )
    inspect.add_argument("--json", action="store_true", help="the full description as JSON")
    inspect.set_defaults(func=_cmd_onnx_inspect)
    ev = onnx_sub.add_parser("eval", help="run a model on execution providers: latency, throughput, parity")
    ev.add_argument("model", help=MODEL_HELP)
    ev.add_argument("--providers", default="cpu", help="comma-separated: cpu,cuda,trt (default cpu)")
    ev.add_argument("--batch", type=_int_list, default=[1], help="batch sizes when the batch is free, e.g. 1,8,32")
    ev.add_argument(
        "--symbol",
        type=_symbol,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="value for another symbolic dimension (repeatable)",
    )
    ev.add_argument("--runs", type=int, default=50, help="timed runs per configuration (default 50)")
    ev.add_argument("--warmup", type=int, default=5, help="untimed runs after the first (default 5)")
    ev.add_argument("--inputs", help=".npz of inputs keyed by input name (default: seeded synthetic)")
    ev.add_argument("--expected", help=".npz of expected outputs keyed by output name: accuracy metrics")
    ev.add_argument("--images", nargs="+", metavar="IMAGE", help="images for an image input (resized and scaled)")
    ev.add_argument("--image-input", help="the input the images fill (default: the first image-shaped one)")
    ev.add_argument("--resize", default="stretch", choices=RESIZE_MODES, help="how images meet the input size")
    ev.add_argument("--scaling", default="0-1", choices=list(SCALINGS), help="pixel values (imagenet: mean/std)")
    ev.add_argument("--channels", default="rgb", choices=CHANNEL_ORDERS, help="channel order the model expects")
    ev.add_argument("--labels", type=_labels, help="class labels of the first batch, e.g. 3,1,7: top-1/top-5")
    ev.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    ev.add_argument("--trt-fp16", action="store_true", help="allow fp16 in TensorRT engines")
    ev.add_argument("--trt-workspace", type=float, default=4.0, help="TensorRT workspace in GiB (default 4)")
    ev.add_argument("--json", help="write the full report to this file")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_onnx_eval)

    from engine.bench import cli as cli_bench
    from engine.portrait import cli as cli_portrait

    cli_bench.add_commands(sub)
    cli_portrait.add_commands(sub)

    # Listed for --help only: main() hands `serve ...` to app.py's own parser untouched.
    sub.add_parser("serve", help="start the web app (flags: --host --port --share --device --auth)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:2] == ["portrait", "export"]:
        from engine.portrait.cli import export_main

        return export_main(argv[2:])
    args = build_parser().parse_args(argv)
    if getattr(args, "interval", 1.0) <= 0:
        print("avatarbench: --interval must be > 0", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except _input_errors() as exc:
        print(f"avatarbench: {exc}", file=sys.stderr)
        return 2


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or set-up (a message, not a traceback).

    Every input error the engine raises (LipSyncError, AudioError, MediaError, FaceError,
    CheckpointError) is a ValueError; WeightsError is a FileNotFoundError; DeviceError is looked up
    only if engine.core.device was imported, so `telemetry` does not pay for importing torch.
    """
    errors: list[type[BaseException]] = [SettingsError, ValueError, FileNotFoundError]
    device = sys.modules.get("engine.core.device")
    if device is not None:
        errors.append(device.DeviceError)
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
