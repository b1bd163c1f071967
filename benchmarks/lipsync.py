"""Lip-sync speed: end to end with per-stage timings, the network alone, and upstream Wav2Lip beside it.

Cases, on inputs this script makes (the public-domain portrait in assets/, the generated speech
there tiled to length):
  video    a 1280x720, 25 fps clip of the portrait drifting, with 10 s of speech
  image    the 512x512 portrait, with 40 s of speech
           (on CUDA each case runs twice in one process: first, paying for loading, cuDNN's autotuning of each new
           shape and compilation, then "again", as a warm worker's next job)
  network  the Wav2Lip generator alone, by batch size and precision (CUDA events on the GPU)
  side by side  with --upstream PATH (a Rudrabha/Wav2Lip checkout): for the image and the video case, our
           `avatarbench lipsync` command and upstream's inference.py, each a separate process (so each pays
           its start-up, imports and model loading, with the process settings its users get), in turn for
           --pairs rounds (ours, upstream, ours, upstream, ...): the same random checkpoint, the same fixed
           face box (--box on both: no detection), fp32 on the CPU (CUDA hidden from both), our engine
           forced to wav2lip. Per run: wall time and peak RSS (the kernel's, from wait4); per side their
           medians and spreads; per pair upstream wall / ours and our peak RSS / upstream's, with the
           median and spread of those ratios (the figures to quote). The outputs are not compared (the
           encoders differ). --only-side-by-side skips the in-process runs and the network sweep.
  targets  speed targets as ratios of two network rows measured side by side in this run (fp16 over
           fp32 at the same batch, where both ran), each with its floor: printed, written, and the exit
           status is 1 when one is missed (tests make no timing assertions).
Weights are random-initialised in the official checkpoint format: speed does not depend on
trained values. Usage:
  python benchmarks/lipsync.py [--device auto] [--quick] [--compile] [--precisions LIST] [--upstream PATH [--pairs 3]
                               [--only-side-by-side]] [--out DIR] [--label TEXT] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import paired  # noqa: E402
from benchmarks.recording import RESULTS, add_context_flags, cpu_model, header, result_path, write_result  # noqa: E402
from engine.core.audio import SAMPLE_RATE, load_audio  # noqa: E402
from engine.core.device import apply_backend_flags, capabilities, resolve_device  # noqa: E402
from engine.core.media import VideoWriter  # noqa: E402
from engine.core.settings import load_settings  # noqa: E402
from engine.faces.detection import HaarDetector  # noqa: E402
from engine.faces.tracking import FaceTracker  # noqa: E402
from engine.jobs.measure import measured  # noqa: E402
from engine.lipsync.config import LipSyncConfig  # noqa: E402
from engine.lipsync.pipeline import run_lipsync  # noqa: E402
from engine.models.wav2lip import load_wav2lip, random_wav2lip_checkpoint  # noqa: E402

FACE = ROOT / "assets" / "face.jpg"
SPEECH = ROOT / "assets" / "speech.wav"

# (name, the faster row, the slower row, the floor of faster/slower): rows are (precision, variant) of the network
# sweep at TARGET_BATCH. fp16 tensor cores must beat fp32 at the same batch, in eager mode and with channels_last.
TARGET_BATCH = 128
TARGETS = (
    ("fp16 eager over fp32 eager", ("fp16", "eager"), ("fp32", "eager"), 1.0),
    ("fp16 channels_last over fp32 eager", ("fp16", "eager+channels_last"), ("fp32", "eager"), 1.0),
)

# Run by the upstream checkout's own Python files: librosa >= 0.10 takes mel's arguments by keyword
# only, which upstream's audio.py passes positionally; nothing else is changed.
UPSTREAM_SHIM = """
import runpy, sys
import librosa.filters
_mel = librosa.filters.mel
def _mel_positional(*args, **kwargs):
    kwargs.update(zip(("sr", "n_fft"), args))
    return _mel(**kwargs)
librosa.filters.mel = _mel_positional
upstream = sys.argv[1]
sys.path.insert(0, upstream)
sys.argv = [upstream + "/inference.py"] + sys.argv[2:]
runpy.run_path(upstream + "/inference.py", run_name="__main__")
"""

SIDE_BY_SIDE_NOTES = [
    "Both sides: the same random checkpoint in the official layout, the same fixed face box (--box on both, so "
    "neither detects faces), fp32 on the CPU with CUDA hidden from both, each run a separate process; wall_s and "
    "peak_rss_bytes are the whole process (start-up, imports, loading, inference, writing).",
    "Ours runs as users run it (`avatarbench lipsync` with its defaults: batch, the feathered lower-face paste) and "
    "writes an H.264 MP4 with the speech; upstream's inference.py pastes the face rectangle, writes an OpenCV AVI, "
    "then muxes it with the speech by calling ffmpeg (muxed_with_ffmpeg: whether that ran; without ffmpeg on the "
    "PATH it is skipped, which shortens upstream's time). The outputs are not compared.",
    "Upstream runs through a shim that only makes librosa >= 0.10 accept its positional mel arguments.",
]


def write_speech(path: Path, seconds: float) -> Path:
    import av

    speech = load_audio(SPEECH)
    samples = np.tile(speech, int(np.ceil(seconds * SAMPLE_RATE / len(speech))))[: int(seconds * SAMPLE_RATE)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (samples * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def write_video(path: Path, seconds: float, width: int = 1280, height: int = 720, fps: float = 25.0) -> Path:
    face = cv2.resize(cv2.imread(str(FACE)), (int(height * 0.8), int(height * 0.8)))
    writer = VideoWriter(path, fps, width, height, codec="libx264")
    background = np.full((height, width, 3), 60, np.uint8)
    for i in range(int(seconds * fps)):
        frame = background.copy()
        x = int((width - face.shape[1]) / 2 + 40 * np.sin(i / 12))
        y = int((height - face.shape[0]) / 2)
        frame[y : y + face.shape[0], x : x + face.shape[1]] = face
        writer.write(frame)
    writer.close()
    return path


def end_to_end(name: str, job: tuple[LipSyncConfig, Path, str], settings) -> dict:
    config, out, device = job
    with measured(device) as window:
        result = run_lipsync(config, out, settings, device=device)
    figures = window.figures()
    wall = figures["wall_s"]
    frames = result.metrics["frames"]
    row = {
        "case": name,
        "wall_s": wall,
        "frames": frames,
        "frames_per_s": frames / wall,
        "batch_size": result.metrics["batch_size"],
        "precision": result.precision,
        "encoder": result.metrics["encoder"],
        "decoded_on": result.metrics.get("decoded_on"),  # nvdec or cpu; None for a still image
        "nvdec_unused": result.metrics.get("nvdec_unused"),
        "stages_s": {s.name: round(s.seconds, 4) for s in result.stages},
        "slowest_stage": result.slowest_stage.name,
        "peak_gpu_bytes": figures["peak_allocated_bytes"],
        "peak_host_bytes": figures["peak_rss_bytes"],
        "peak_device_used_bytes": figures["peak_device_used_bytes"],
        "energy_j": figures["energy_j"],
        "energy_source": figures["energy_source"],
    }
    print(
        f"{name:<18} {wall:7.2f} s  {frames / wall:7.1f} frames/s  batch {row['batch_size']:<4} "
        f"{result.precision:<5} decoded on: {row['decoded_on'] or '-'}  slowest: {row['slowest_stage']}  "
        f"{row['stages_s']}",
        flush=True,
    )
    return row


def network_sweep(
    checkpoint: Path,
    device: torch.device,
    batches: list[int],
    precisions: list[str],
    compile_: bool,
    on_precision: Callable[[list[dict]], object] = lambda rows: None,
) -> list[dict]:
    """Forward time by precision x batch x memory format (x torch.compile at the large batches); `on_precision` gets
    the rows so far after each precision (the caller saves them).

    fp32 is true fp32 (TF32 off); tf32 is fp32 tensors with TF32 tensor-core maths allowed.
    """
    rows = []
    rng = np.random.default_rng(0)
    cuda = device.type == "cuda"
    for precision in precisions:
        apply_backend_flags(cudnn_benchmark=True, tf32=precision == "tf32")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        model = load_wav2lip(checkpoint, device=device, dtype=dtype)
        variants = [("eager", model, False)]
        if cuda:
            # A second copy: Module.to(memory_format=...) converts in place.
            cl_model = load_wav2lip(checkpoint, device=device, dtype=dtype).to(memory_format=torch.channels_last)
            variants.append(("eager+channels_last", cl_model, True))
        for label, net, channels_last in variants:
            for batch in batches:
                rows.append(_sweep_point(net, precision, label, batch, dtype, channels_last, device, rng))
        if compile_ and cuda:
            for batch in [b for b in batches if b >= 128]:
                torch._dynamo.reset()  # one graph per batch size, no recompile limit across the sweep
                compiled = torch.compile(model.to(memory_format=torch.channels_last), dynamic=False)
                rows.append(
                    _sweep_point(compiled, precision, "compiled+channels_last", batch, dtype, True, device, rng)
                )
        on_precision(rows)
    apply_backend_flags(cudnn_benchmark=True, tf32=False)
    return rows


def _sweep_point(net, precision: str, label: str, batch: int, dtype, channels_last: bool, device, rng) -> dict:
    mel = torch.from_numpy(rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32)).to(device, dtype)
    face = torch.from_numpy(rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32)).to(device, dtype)
    if channels_last:
        face = face.contiguous(memory_format=torch.channels_last)
    row = {"precision": precision, "variant": label, "batch": batch}
    try:
        ms = _time_forward(net, mel, face, device, runs=10 if device.type == "cuda" else 3)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {**row, "oom": True}
    print(f"network {precision:<5} {label:<24} batch {batch:<5} {ms:9.2f} ms  {batch / ms * 1e3:9.0f}/s", flush=True)
    return {**row, "ms_median": ms, "samples_per_s": batch / ms * 1e3}


def _time_forward(net, mel, face, device: torch.device, runs: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            net(mel, face)
        times = []
        for _ in range(runs):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                net(mel, face)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                net(mel, face)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def speed_targets(network: list[dict], batch: int = TARGET_BATCH) -> list[dict]:
    """Each target's ratio where both of its rows ran at `batch` (the CPU sweeps fp32 only: no targets there)."""
    speeds = {(r["precision"], r["variant"]): r.get("samples_per_s") for r in network if r["batch"] == batch}
    rows = []
    for name, faster, slower, floor in TARGETS:
        if not speeds.get(faster) or not speeds.get(slower):
            continue
        ratio = speeds[faster] / speeds[slower]
        rows.append({"name": name, "batch": batch, "ratio": ratio, "floor": floor, "met": ratio > floor})
        print(f"target {name} at batch {batch}: {ratio:.2f}x (floor {floor:g}x) {'met' if ratio > floor else 'MISSED'}")
    return rows


@dataclass(frozen=True)
class Case:
    """One side-by-side input: a face (image or video), speech, and the face box both sides are given."""

    name: str
    face: Path
    speech: Path
    box: tuple[int, int, int, int]  # x1, y1, x2, y2
    inputs: str


def ours_lipsync(case: Case, checkpoint: Path, work: Path) -> list[str]:
    """`avatarbench lipsync` on the case: wav2lip forced, fp32 on the CPU, the fixed box (no detection)."""
    stem = work / f"ours-{case.name.replace(' ', '-')}"
    return [
        *paired.avatarbench_command(), "lipsync", "--face", str(case.face), "--audio", str(case.speech),
        "--engine", "wav2lip", "--checkpoint", str(checkpoint), "--precision", "fp32",
        "--box", ",".join(map(str, case.box)), "--device", "cpu", "--out", f"{stem}.mp4", "--json", f"{stem}.json",
        "--quiet",
    ]  # fmt: skip


def upstream_inference(upstream: Path, case: Case, checkpoint: Path, folder: Path) -> list[str]:
    """Upstream's inference.py through the shim, with the same box in its order (top, bottom, left, right); run in
    `folder`, which holds the temp/ folder it writes to."""
    x1, y1, x2, y2 = case.box
    return [
        sys.executable, str(folder / "upstream_shim.py"), str(upstream.resolve()), "--checkpoint_path",
        str(checkpoint), "--face", str(case.face), "--audio", str(case.speech), "--outfile", str(folder / "result.mp4"),
        "--box", str(y1), str(y2), str(x1), str(x2),
    ]  # fmt: skip


def run_ours(command: list[str], env: dict[str, str], _round: int = 0) -> dict:
    run = paired.run_measured(command, cwd=ROOT, env=env)
    if run.returncode:
        raise paired.ProcessFailed(run)
    result = json.loads(Path(command[command.index("--json") + 1]).read_text())
    return {
        "wall_s": run.wall_s,
        "peak_rss_bytes": run.peak_rss_bytes,
        "frames": result["metrics"]["frames"],
        "batch_size": result["metrics"]["batch_size"],
        "winograd_method": result["metrics"].get("winograd_method"),  # nnpack, f4 or None: by the CPU
        "in_process_wall_s": result["measurement"].get("wall_s"),
        "stages_s": {stage["name"]: stage["seconds"] for stage in result["stages"]},
    }


def run_upstream(command: list[str], folder: Path, env: dict[str, str], _round: int = 0) -> dict:
    out = folder / "result.mp4"
    out.unlink(missing_ok=True)
    run = paired.run_measured(command, cwd=folder, env=env)
    if run.returncode:
        raise paired.ProcessFailed(run)
    frames = re.search(r"Length of mel chunks: (\d+)", run.output)
    return {
        "wall_s": run.wall_s,
        "peak_rss_bytes": run.peak_rss_bytes,
        "frames": int(frames.group(1)) if frames else None,
        "muxed_with_ffmpeg": out.exists(),  # its last step; without ffmpeg on the PATH it is skipped (and not timed)
    }


def side_by_side(upstream: Path, checkpoint: Path, cases: list[Case], pairs: int, work: Path) -> dict:
    """Each case in alternating whole-process runs of ours and upstream's; see the module's docstring."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "AVATARBENCH_DEVICE": "cpu"}
    names = {
        str(work): "<work>",
        str(ROOT) + os.sep: "",
        str(upstream.resolve()): "<upstream>",
        sys.executable: "python",
    }
    rows = []
    for case in cases:
        folder = work / f"upstream-{case.name.replace(' ', '-')}"
        (folder / "temp").mkdir(parents=True, exist_ok=True)
        (folder / "upstream_shim.py").write_text(UPSTREAM_SHIM)
        ours, theirs = ours_lipsync(case, checkpoint, work), upstream_inference(upstream, case, checkpoint, folder)
        row = {
            "case": case.name,
            "inputs": case.inputs,
            "box": list(case.box),
            "commands": {"ours": paired.command_text(ours, names), "upstream": paired.command_text(theirs, names)},
        }
        sides = {"ours": partial(run_ours, ours, env), "upstream": partial(run_upstream, theirs, folder, env)}
        print(f"side by side, {case.name} ({case.inputs}), box {case.box}:", flush=True)
        try:
            runs = paired.interleaved(sides, pairs, report=_print_run)
        except paired.ProcessFailed as exc:  # keep the rest of the report
            print(exc, flush=True)
            rows.append({**row, "error": str(exc)[-2000:]})
            continue
        comparison = paired.compare(runs, reference="upstream")
        print("\n".join(paired.table_lines(comparison)), flush=True)
        rows.append({**row, **comparison})
    return {
        "upstream": "Rudrabha/Wav2Lip inference.py (librosa mel shim only)",
        "pairs": pairs,
        "round_order": ["ours", "upstream"],
        "device": "cpu",
        "precision": "fp32",
        "torch_threads": torch.get_num_threads(),
        "notes": SIDE_BY_SIDE_NOTES,
        "cases": rows,
    }


def _print_run(side: str, round_: int, figures: dict) -> None:
    peak = figures["peak_rss_bytes"] / 2**30
    print(
        f"  round {round_ + 1} {side:<9} {figures['wall_s']:8.2f} s  peak RSS {peak:.2f} GiB  "
        f"{figures.get('frames')} frames",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="short inputs (3 s video, 8 s image), small sweep")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the network sweep (CUDA)")
    parser.add_argument(
        "--precisions",
        default=None,
        help="the network sweep's, e.g. fp32,fp16 (default: fp32,tf32,fp16,bf16 on CUDA; fp32 on the CPU, where bf16 "
        "convolutions crawl without AMX)",
    )
    paired.add_side_by_side_flags(parser, "Rudrabha/Wav2Lip", "in-process runs, no network sweep")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the folder the JSON goes to")
    add_context_flags(parser)
    args = parser.parse_args()
    paired.check_side_by_side_flags(parser, args, "inference.py")
    unknown = set((args.precisions or "fp32").split(",")) - {"fp32", "tf32", "fp16", "bf16"}
    if unknown:
        parser.error(f"--precisions: unknown {', '.join(sorted(unknown))}; accepted: fp32, tf32, fp16, bf16")

    device = resolve_device(args.device).device
    caps = capabilities(device)
    cuda = device.type == "cuda"
    video_s, image_s = (3.0, 8.0) if args.quick else (10.0, 40.0)
    work = Path(tempfile.mkdtemp(prefix="avatarbench-bench-"))
    settings = load_settings({**os.environ, "AVATARBENCH_DATA_DIR": str(work / "data")})
    checkpoint = work / "wav2lip.pth"
    random_wav2lip_checkpoint(checkpoint)
    video = write_video(work / "face720p.mp4", video_s)
    speech_video = write_speech(work / "speech_video.wav", video_s)
    speech_image = write_speech(work / "speech_image.wav", image_s)
    print(f"device {device} ({caps.name}); inputs in {work}", flush=True)

    def config(face: Path, speech: Path, out: str, **kw) -> tuple[LipSyncConfig, Path, str]:
        return LipSyncConfig(face=face, audio=speech, checkpoint=str(checkpoint), **kw), work / out, str(device)

    suffix = ("-quick" if args.quick else "") + ("-side-by-side" if args.only_side_by_side else "")
    path = result_path("lipsync", caps.name if cuda else None, suffix + paired.file_tag_suffix(args), folder=args.out)
    report = {
        **header("lipsync", args),
        "machine": {
            "device": str(device),
            "name": caps.name,
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "weights": "random-initialised, official Wav2Lip checkpoint format",
        "inputs": {"video": f"1280x720 25 fps, {video_s:g} s", "image": f"512x512, {image_s:g} s of speech"},
        "complete": False,  # written after each part, so that a run stopped at its time limit keeps what it measured
        "end_to_end": [],
        "network": [],
        "targets": [],
        "side_by_side": None,
    }
    if not args.only_side_by_side:
        # On CUDA each case runs again in the same process: the first run pays for loading, cuDNN's autotuning of
        # every new input shape and compilation; the second is what a warm worker's next job costs.
        repeats = ["", " (again)"] if cuda else [""]
        cases = [("video 720p", video, speech_video, "video.mp4"), ("image", FACE, speech_image, "image.mp4")]
        report["end_to_end"] = [
            end_to_end(name + again, config(face, speech, out), settings)
            for name, face, speech, out in cases
            for again in repeats
        ]
        write_result(report, path)
        batches = [1, 16, 64, 128, 256, 512] if cuda else [1, 16, 64, 128]
        precisions = (
            args.precisions.split(",") if args.precisions else ["fp32", "tf32", "fp16", "bf16"] if cuda else ["fp32"]
        )
        if args.quick:
            batches = [b for b in batches if b in (16, 128, 512)]
        network_sweep(checkpoint, device, batches, precisions, args.compile,
                      on_precision=lambda rows: (report.update(network=rows), write_result(report, path)))  # fmt: skip
        report["targets"] = speed_targets(report["network"])

    if args.upstream:
        face = work / "face.jpg"  # upstream tells images from videos by the text after the path's first dot
        face.write_bytes(FACE.read_bytes())
        cases = [
            Case("image", face, speech_image, fixed_box(face), f"512x512 still, {image_s:g} s of speech"),
            Case("video 720p", video, speech_video, fixed_box(video), f"1280x720 25 fps, {video_s:g} s"),
        ]
        report["side_by_side"] = side_by_side(args.upstream, checkpoint, cases, args.pairs, work)

    report["complete"] = True
    write_result(report, path)
    return 0 if all(t["met"] for t in report["targets"]) else 1


def fixed_box(face: Path) -> tuple[int, int, int, int]:
    """The face box both sides get: our detector and tracker (with its default pads) on the first frame."""
    from engine.core.media import is_image, load_image, read_frames

    first = load_image(face) if is_image(face) else next(iter(read_frames(face)))
    box = FaceTracker().update(HaarDetector().detect([first])[0], first.shape).box
    return tuple(int(v) for v in box)


if __name__ == "__main__":
    sys.exit(main())
