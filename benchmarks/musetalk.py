"""MuseTalk speed: a prepared avatar end to end, per stage, and the real UNet and VAE decoder alone.

Two parts, one run:
  pipeline  prepare an avatar from assets/face-video.mp4 (its first --avatar-frames frames; Haar boxes), then
            --seconds of speech through whisper, UNet, VAE decoder and blend into an H.264 MP4 (encoded in the
            engine's encoding thread, overlapping the rest): each stage's time, the first frame's latency and frames
            per second end to end. With --weights (the official files) the real networks run; without, random
            weights in the official layout (engine/lipsync/musetalk/random_weights.py): `--random-networks real`
            (the default on CUDA) at the real networks' sizes, so the whole pipeline costs what it costs with the
            official files; `small` (the default on the CPU) small networks of the same classes, which time the
            pipeline's own work only.
  networks  the real v1.5 UNet (timestep 0, a 50x384 audio prompt) and the sd-vae-ft-mse decoder (32x32 latents
            to 256x256), built from their configs with random weights, by batch and precision: milliseconds per
            frame, frames per second and TFLOP/s from FLOPs counted once per frame (torch's FlopCounterMode on the
            meta device).
Targets where an H100/H200 is lent (issue #16): at least 150 frames/s end to end for a prepared avatar and 10 s of
speech, UNet + decoder at least 300 frames/s in fp16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.lipsync import write_speech  # noqa: E402
from benchmarks.recording import add_context_flags, header, result_path, write_result  # noqa: E402
from engine.core.audio import load_audio  # noqa: E402
from engine.core.device import capabilities, resolve_device  # noqa: E402
from engine.core.errors import SetupError  # noqa: E402
from engine.core.media import VideoWriter, read_frames  # noqa: E402
from engine.core.results import RunResult  # noqa: E402
from engine.core.settings import load_settings  # noqa: E402
from engine.lipsync.encoding import EncoderThread  # noqa: E402
from engine.lipsync.musetalk.accelerate import EAGER, RUNTIMES, make_step  # noqa: E402
from engine.lipsync.musetalk.audio import feature_extractor  # noqa: E402
from engine.lipsync.musetalk.avatar import prepare_avatar  # noqa: E402
from engine.lipsync.musetalk.generate import generate  # noqa: E402
from engine.lipsync.musetalk.random_weights import write_random_weights  # noqa: E402
from engine.lipsync.musetalk.run import default_batch_size  # noqa: E402
from engine.lipsync.musetalk.weights import load_networks, meta_unet, meta_vae, require  # noqa: E402

FACE_VIDEO = ROOT / "assets" / "face-video.mp4"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline(weights: Path | None, device: torch.device, precision: str, seconds: float, avatar_frames: int,
             batch: int | None, work: Path, runtimes: list[str], real_size: bool) -> list[dict[str, Any]]:  # fmt: skip
    """Prepare, then generate and encode once per runtime (accelerate.py; the first batch pays for a compile,
    capture or export, so each runtime runs twice and the second run is recorded); the stages as RunResult records
    them (per stage and items)."""
    settings = load_settings({"AVATARBENCH_DATA_DIR": str(work / "data")})
    files = require(settings, weights or write_random_weights(work / "models", real_size=real_size))
    networks_used = (
        "official weights" if weights else
        "random weights at the real sizes" if real_size else "small random networks (random_weights.py)"
    )  # fmt: skip
    started = time.perf_counter()
    networks = load_networks(files, device, DTYPES[precision])
    _sync(device)
    load_s = time.perf_counter() - started
    batch = batch or default_batch_size(device, DTYPES[precision])  # the engine's own choice, from free memory
    frames = [f for _, f in zip(range(avatar_frames), read_frames(FACE_VIDEO), strict=False)]
    prepared = RunResult(device=str(device))
    started = time.perf_counter()
    avatar = prepare_avatar(frames, networks, batch_size=batch, fps=25.0, result=prepared)
    prepare_s = time.perf_counter() - started
    speech = load_audio(write_speech(work / "speech.wav", seconds))
    extractor = feature_extractor(str(files["whisper_preprocessor"].parent))
    height, width = avatar.frames[0].shape[:2]
    codec_threads = None if device.type == "cuda" else 1
    rows = []
    for runtime in runtimes:
        try:
            step = make_step(networks, runtime, batch, cache_dir=work / "cache")
        except SetupError as exc:  # not here (no TensorRT, no CUDA for CUDA graphs): said in the row, the rest run
            print(f"pipeline {runtime}: not run: {exc}", flush=True)
            rows.append({"runtime": runtime, "precision": precision, "batch": batch, "error": str(exc)})
            continue
        for _ in range(2):  # the first run compiles, captures or exports
            generated = RunResult(device=str(device))
            # Encoded as the engine encodes (run.py): in the encoding thread, a few frames at a time, FFmpeg's
            # threads only beside a GPU.
            encoder = EncoderThread(VideoWriter(work / "out.mp4", 25.0, width, height, threads=codec_threads),
                                    generated)  # fmt: skip
            started, first, count = time.perf_counter(), None, 0
            for frame in generate(avatar, speech, 25.0, networks, batch, extractor=extractor, result=generated,
                                  runtime=step):  # fmt: skip
                first = first if first is not None else time.perf_counter() - started
                encoder.put_frame(frame)
                count += 1
            encoder.finish()
            total = time.perf_counter() - started
        stages = {s.name: round(s.seconds, 4) for s in generated.stages}
        print(f"pipeline {runtime} {precision}: {count} frames in {total:.2f} s ({count / total:.1f}/s), first after "
              f"{first:.2f} s; stages {stages}", flush=True)  # fmt: skip
        rows.append({
            "networks": networks_used,
            "runtime": runtime, "ran_on": generated.metrics.get("musetalk_runtime_ran_on"), "warnings":
            generated.warnings, "precision": precision, "batch": batch, "avatar_frames": len(frames),
            "speech_s": seconds, "load_s": load_s, "prepare_s": prepare_s,
            "prepare_stages_s": {s.name: s.seconds for s in prepared.stages},
            "frames": count, "end_to_end_s": total, "first_frame_s": first, "frames_per_s": count / total,
            "stages_s": {s.name: s.seconds for s in generated.stages},
        })  # fmt: skip
    return rows


def _random_(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A meta-device model made real with random values: speed does not depend on trained values."""
    model = model.to_empty(device=device)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.normal_(0.0, 0.02)
    return model.to(dtype).eval()


def _unet_call(unet: torch.nn.Module, batch: int, device: torch.device, dtype: torch.dtype):
    latents = torch.randn(batch, 8, 32, 32, device=device, dtype=dtype)
    prompts = torch.randn(batch, 50, 384, device=device, dtype=dtype)
    timestep = torch.zeros(1, device=device)
    return lambda: unet(latents, timestep, encoder_hidden_states=prompts).sample


def _decoder_call(vae: torch.nn.Module, batch: int, device: torch.device, dtype: torch.dtype):
    latents = torch.randn(batch, 4, 32, 32, device=device, dtype=dtype)
    return lambda: vae.decode(latents).sample


def flops_per_frame() -> dict[str, float]:
    """FLOPs of one frame through each network, counted on the meta device (no memory, no arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    counts = {}
    for name, model, call in (("unet", meta_unet(), _unet_call), ("vae_decoder", meta_vae(), _decoder_call)):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            call(model.eval(), 1, meta, torch.float32)()
        counts[name] = float(counter.get_total_flops())
    return counts


def networks(device: torch.device, precisions: list[str], batches: list[int], runs: int) -> list[dict[str, Any]]:
    flops = flops_per_frame()
    print(f"FLOPs per frame: UNet {flops['unet'] / 1e9:.1f} G, VAE decoder {flops['vae_decoder'] / 1e9:.1f} G")
    rows = []
    for precision in precisions:
        dtype = DTYPES[precision]
        models = {"unet": (_random_(meta_unet(), device, dtype), _unet_call),
                  "vae_decoder": (_random_(meta_vae(), device, dtype), _decoder_call)}  # fmt: skip
        for name, (model, make_call) in models.items():
            for batch in batches:
                call = make_call(model, batch, device, dtype)
                with torch.inference_mode():
                    call()  # warm-up: kernels chosen, memory allocated
                    _sync(device)
                    times = []
                    for _ in range(runs):
                        started = time.perf_counter()
                        call()
                        _sync(device)
                        times.append(time.perf_counter() - started)
                ms = statistics.median(times) / batch * 1e3
                row = {"network": name, "precision": precision, "batch": batch, "runs": runs, "ms_per_frame": ms,
                       "frames_per_s": 1e3 / ms, "tflops": flops[name] / (ms / 1e3) / 1e12,
                       "gflop_per_frame": flops[name] / 1e9}  # fmt: skip
                print(f"{name:<12} {precision} batch {batch:<3} {ms:9.1f} ms/frame {row['frames_per_s']:8.2f}/s "
                      f"{row['tflops']:6.2f} TFLOP/s", flush=True)  # fmt: skip
                rows.append(row)
        del models
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", type=Path, default=None, help="MuseTalk's models/ folder (default: random)")
    parser.add_argument("--random-networks", choices=("small", "real"), default=None,
                        help="without --weights: random networks at their real sizes or small (default: real on "
                        "CUDA, small on the CPU)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0, help="speech for the pipeline")
    parser.add_argument("--avatar-frames", type=int, default=50, help="frames of assets/face-video.mp4 prepared")
    parser.add_argument("--batches", default=None, help="network batches (default: 1,2 on the CPU; 1,8,16,32)")
    parser.add_argument("--precisions", default=None, help="default: fp32 on the CPU; fp16,bf16,fp32 on CUDA")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="pipeline batch (default: the engine's choice)")
    parser.add_argument("--runtimes", default=None, help="MuseTalk runtimes for the pipeline (default: eager on the "
                        "CPU; eager,compile,cuda-graphs,onnx,tensorrt on CUDA)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="PyTorch's CPU threads (default: its own, one per "
                        "core): the blend's tensor work runs on them beside OpenCV's and libx264's")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/)")
    add_context_flags(parser)
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: give 1 or more")
        torch.set_num_threads(args.threads)
    choice = resolve_device(args.device)
    device, cuda = choice.device, choice.is_cuda
    precisions = (args.precisions or ("fp16,bf16,fp32" if cuda else "fp32")).split(",")
    batches = [int(b) for b in (args.batches or ("1,8,16,32" if cuda else "1,2")).split(",")]
    work = Path(tempfile.mkdtemp(prefix="musetalk-bench-"))
    print(f"device {device} ({capabilities(device).name}); work in {work}", flush=True)
    runtimes = (args.runtimes or (",".join(RUNTIMES) if cuda else EAGER)).split(",")
    real_size = (args.random_networks or ("real" if cuda else "small")) == "real"
    rows = pipeline(args.weights, device, precisions[0], args.seconds, args.avatar_frames, args.batch, work, runtimes,
                    real_size)  # fmt: skip
    report = {
        **header("musetalk", args),
        "device": str(device),
        "gpu": capabilities(device).name if cuda else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "pipeline": rows,
        "networks": networks(device, precisions, batches, args.runs),
        "notes": [
            "networks: random values in the real configs (v1.5 musetalk.json, sd-vae-ft-mse); FLOPs counted for one "
            "frame with torch.utils.flop_counter on the meta device.",
            "pipeline: prepare then generate; stages as the engine records them (on CUDA each stage then waits for "
            "the device, which costs the overlap of device and CPU work). Each runtime runs the clip twice with one "
            "step runner (the first run compiles, captures or exports); the second run is recorded.",
        ],
    }
    gpu = capabilities(device).name if cuda else None
    write_result(report, args.out or result_path("musetalk", gpu))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
