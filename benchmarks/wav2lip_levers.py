"""Wav2Lip's CPU levers one at a time (issue #17): the generator with each lever against without it, in the same
process, interleaved (with, without, with, without, ...), and the median of the per-round ratios.

Why in-process and one lever at a time: the side-by-side runs in benchmarks/lipsync.py measure the whole command
against upstream, where one lever's share drowns in a noisy machine's drift; here each round times one call of each
side on the same inputs, back to back, so a lever's effect shows as a ratio within a round.

Levers (every one is on in Wav2LipEngine by default), each timed as the engine makes the call:
  rows            only the rows the blend paste reads (first_row_read of the case's face box, rounded down to
                  ROW_STEP), against every row; for a still face (decode_still) and for moving crops (decode)
  still face      a photo's crop encoded once with its skips' share of the decoder (decode_still), against the
                  full forward per frame
  folded BN       the BatchNorms folded into the convolutions, against them kept
  channels_last   NHWC activations and weights, against the plain layout
  winograd        the wide 3x3 units by NNPACK's Winograd transform (models/winograd.py, as the engine runs it:
                  calls of fewer than MIN_PIXELS output pixels by oneDNN), against oneDNN's direct convolutions;
                  for a still face (with the rows lever) and for moving crops
  winograd f4     the wide 3x3 units by our F(4x4, 3x3) matrix products (models/winograd_f4.py; the engine's
                  choice on Intel CPUs), against oneDNN's direct convolutions; still face and moving crops
  small calls direct  Winograd's calls of fewer than MIN_PIXELS output pixels (the generator's 3x3 and 6x6 stages
                  at batch 16) by oneDNN, against every call of a wide 3x3 unit by NNPACK; still face and moving
                  crops
The other levers are timed on the generator without Winograd, so that each shows its own effect.
Per lever: seconds per frame of each side (median and extremes), without / with per round (above 1: the lever
saves time), and the largest difference between the two sides' outputs in grey levels (on the rows both compute),
so a lever that changed the frames would show. Glibc keeps freed memory here and OpenMP threads sleep at their
barriers, as in the lip-sync command.
Weights are random-initialised in the official checkpoint format. Usage:
  python benchmarks/wav2lip_levers.py [--rounds 7] [--batch 16] [--file-tag TEXT] [--out DIR] [--label TEXT]
                                      [--note TEXT]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.openmp import sleep_at_barriers  # noqa: E402

OPENMP_SLEEPS = sleep_at_barriers()  # before torch loads, as in the lip-sync command (engine/core/openmp.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import paired  # noqa: E402
from benchmarks.recording import RESULTS, add_context_flags, cpu_model, header, result_path, write_result  # noqa: E402
from engine.core.media import load_image  # noqa: E402
from engine.core.memory import keep_freed_memory  # noqa: E402
from engine.faces.detection import HaarDetector  # noqa: E402
from engine.faces.tracking import FaceTracker  # noqa: E402
from engine.lipsync.engines import ROW_STEP  # noqa: E402
from engine.lipsync.paste import crop, first_row_read  # noqa: E402
from engine.models.wav2lip import FACE_SIZE, load_wav2lip, random_wav2lip_checkpoint  # noqa: E402
from engine.models.winograd import use_winograd  # noqa: E402
from engine.models.winograd_f4 import use_winograd_f4  # noqa: E402

FACE = ROOT / "assets" / "face.jpg"
Call = Callable[[], torch.Tensor]


def face_input(crops: np.ndarray, layout: torch.memory_format) -> torch.Tensor:
    """The generator's face input as Wav2LipEngine makes it: each crop with its lower half masked, then the crop."""
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    masked = faces.clone()
    masked[:, :, FACE_SIZE // 2 :] = 0
    return torch.cat([masked, faces], dim=1).contiguous(memory_format=layout)


def timed_side(call: Call, frames: int, outputs: dict[str, torch.Tensor], name: str, _round: int) -> dict[str, float]:
    with torch.inference_mode():
        start = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - start
    outputs[name] = out
    return {"per_frame_s": seconds / frames}


def compare_sides(
    name: str, inputs: str, with_lever: Call, without: Call, frames: int, rounds: int, first_row: int = 0
) -> dict:
    """One lever: a warm-up call of each side, then `rounds` interleaved rounds."""
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        with_lever(), without()  # one-off costs (oneDNN's kernel choice per shape, first-touch pages) stay out
    sides = {
        "with": partial(timed_side, with_lever, frames, outputs, "with"),
        "without": partial(timed_side, without, frames, outputs, "without"),
    }
    runs = paired.interleaved(sides, rounds)
    ratio = paired.pair_ratios(runs["without"], runs["with"], "per_frame_s")
    difference = (outputs["with"][:, :, first_row:] - outputs["without"][:, :, first_row:]).abs().max()
    row = {
        "lever": name,
        "inputs": inputs,
        "first_row": first_row,
        "sides": {side: paired.spread([r["per_frame_s"] for r in runs[side]]) for side in runs},
        "without_over_with": {"of": "without / with", **ratio},
        "max_grey_levels": float(difference) * 255.0,
    }
    print(
        f"  {name:<14} {inputs:<22} with {row['sides']['with']['median'] * 1e3:7.1f} ms/frame  without "
        f"{row['sides']['without']['median'] * 1e3:7.1f}  without/with {paired.describe_spread(ratio, 'x')}  "
        f"max diff {row['max_grey_levels']:.4f} grey levels",
        flush=True,
    )
    return row


def levers(checkpoint: Path, batch: int, rounds: int) -> tuple[list[dict], tuple[int, ...]]:
    image = load_image(FACE)
    box = tuple(int(v) for v in FaceTracker().update(HaarDetector().detect([image])[0], image.shape).box)
    first_row = first_row_read(box, FACE_SIZE)
    first_row -= first_row % ROW_STEP
    rng = np.random.default_rng(0)
    still_crops = np.repeat(crop(image, box, FACE_SIZE)[None], batch, 0)
    moving_crops = rng.integers(0, 256, (batch, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    mel = torch.from_numpy(rng.standard_normal((batch, 1, 80, 16)).astype(np.float32))
    cl, plain = torch.channels_last, torch.contiguous_format
    model = load_wav2lip(checkpoint, channels_last=True, fold_batchnorm=True)  # as Wav2LipEngine loads it on the CPU
    winograd = load_wav2lip(checkpoint, channels_last=True, fold_batchnorm=True)
    every_call = load_wav2lip(checkpoint, channels_last=True, fold_batchnorm=True)
    if not (use_winograd(winograd) and use_winograd(every_call, min_pixels=0)):
        print("  (NNPACK cannot run here: the winograd rows time the same model twice)", flush=True)
    f4 = load_wav2lip(checkpoint, channels_last=True, fold_batchnorm=True)
    use_winograd_f4(f4)
    unfolded = load_wav2lip(checkpoint, channels_last=True)
    plain_model = load_wav2lip(checkpoint, fold_batchnorm=True)
    face, moving = face_input(still_crops, cl), face_input(moving_crops, cl)
    moving_plain = face_input(moving_crops, plain)
    with torch.inference_mode():
        still = model.still_face(model.encode_face(face[:1]))
        still_winograd = winograd.still_face(winograd.encode_face(face[:1]))
        still_every_call = every_call.still_face(every_call.encode_face(face[:1]))
        still_f4 = f4.still_face(f4.encode_face(face[:1]))
    still_text, moving_text = f"still face, batch {batch}", f"moving crops, batch {batch}"
    rows = [
        compare_sides("rows", still_text, lambda: model.decode_still(mel, still, first_row),
                      lambda: model.decode_still(mel, still), batch, rounds, first_row),
        compare_sides("rows", moving_text, lambda: model.decode(mel, model.encode_face(moving), first_row),
                      lambda: model(mel, moving), batch, rounds, first_row),
        compare_sides("still face", still_text, lambda: model.decode_still(mel, still), lambda: model(mel, face),
                      batch, rounds),
        compare_sides("folded BN", moving_text, lambda: model(mel, moving), lambda: unfolded(mel, moving), batch,
                      rounds),
        compare_sides("channels_last", moving_text, lambda: model(mel, moving),
                      lambda: plain_model(mel, moving_plain), batch, rounds),
        compare_sides("winograd", still_text, lambda: winograd.decode_still(mel, still_winograd, first_row),
                      lambda: model.decode_still(mel, still, first_row), batch, rounds, first_row),
        compare_sides("winograd", moving_text, lambda: winograd(mel, moving), lambda: model(mel, moving), batch,
                      rounds),
        compare_sides("winograd f4", still_text, lambda: f4.decode_still(mel, still_f4, first_row),
                      lambda: model.decode_still(mel, still, first_row), batch, rounds, first_row),
        compare_sides("winograd f4", moving_text, lambda: f4(mel, moving), lambda: model(mel, moving), batch, rounds),
        compare_sides("small calls direct", still_text,
                      lambda: winograd.decode_still(mel, still_winograd, first_row),
                      lambda: every_call.decode_still(mel, still_every_call, first_row), batch, rounds, first_row),
        compare_sides("small calls direct", moving_text, lambda: winograd(mel, moving),
                      lambda: every_call(mel, moving), batch, rounds),
    ]  # fmt: skip
    return rows, box


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per lever")
    parser.add_argument("--batch", type=int, default=16, help="frames per call (16: the CPU batch)")
    parser.add_argument("--file-tag", default="", help="added to the result file's name, e.g. the machine")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the folder the JSON goes to")
    add_context_flags(parser)
    args = parser.parse_args()
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    memory_kept = keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix="avatarbench-levers-") as work:
        checkpoint = Path(work) / "wav2lip.pth"
        random_wav2lip_checkpoint(checkpoint)
        print(f"Wav2Lip levers on the CPU, {torch.get_num_threads()} threads, {args.rounds} rounds:", flush=True)
        rows, box = levers(checkpoint, args.batch, args.rounds)
    report = {
        **header("wav2lip_levers", args),
        "machine": {"device": "cpu", "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__},
        "weights": "random-initialised, official Wav2Lip checkpoint format",
        "precision": "fp32",
        "torch_threads": torch.get_num_threads(),
        "memory_kept": memory_kept,
        "openmp_sleeps_at_barriers": OPENMP_SLEEPS,
        "rounds": args.rounds,
        "batch": args.batch,
        "face_box": list(box),
        "levers": rows,
    }
    suffix = paired.file_tag_suffix(args)
    write_result(report, result_path("wav2lip_levers", None, suffix, folder=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
