"""Drive upstream LivePortrait's own wrapper (KwaiVGI/LivePortrait, `src/live_portrait_wrapper.py`) through the
per-frame work its pipeline does for a still source and a driving clip, and time it: run by benchmarks/portrait.py
as a separate process, from a checkout named on the command line. No upstream code is copied here: every network
call, keypoint transform, stitching, warp/decode, output parsing and paste-back is upstream's, imported from the
checkout; this script only feeds it, in the order upstream's `LivePortraitPipeline.execute` does with its defaults
(relative motion, expression-friendly driving, stitching, paste-back, driving frames resized to 256x256 as upstream
does for a square clip with `flag_crop_driving_video` off).

What differs from upstream's full pipeline, and why: its cropper needs InsightFace and a landmark model (neither
is a dependency here), so the source crop is the one our pipeline makes for the same image, given as the crop's
512->image affine (`--crop-to-image`): the same face region on both sides. Without landmarks there is no lip
normalisation (off by default upstream too) and no eye/lip ratios (used only for retargeting, off by default).
Upstream's writing of the result videos (imageio, ffmpeg) is not done. It imports nothing from avatarbench, so the
process's memory is upstream's.

Usage (the benchmark runs it; by hand for a check):
  python benchmarks/upstream_liveportrait.py --upstream PATH --weights DIR --source IMG --driving VIDEO
      --frames 8 --crop-to-image a,b,c,d,e,f --json OUT
Writes {frames, load_s, source_s, loop_s, per_frame_s, stages_s, device, threads} to OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

CROP = 512  # the crop the generator's output stands for (upstream's crop_cfg.dsize)
NETWORK = 256  # the networks' input side


def driving_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames, RGB (decoded before timing: upstream loads the whole clip first too)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise SystemExit(f"no frames in {path}")
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a KwaiVGI/LivePortrait checkout")
    parser.add_argument("--weights", type=Path, required=True, help="the folder holding base_models/")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--driving", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--crop-to-image", required=True, help="the 512 crop -> image affine, six numbers")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda:N")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(args.upstream.resolve()))
    from src.config.inference_config import InferenceConfig
    from src.live_portrait_wrapper import LivePortraitWrapper
    from src.utils.camera import get_rotation_matrix
    from src.utils.crop import paste_back, prepare_paste_back
    from src.utils.helper import calc_motion_multiplier

    stages = {"motion": 0.0, "keypoints and stitching": 0.0, "warp and decode": 0.0, "output and paste-back": 0.0}

    def timed(stage: str, fn, *a, **kw):
        start = time.perf_counter()
        out = fn(*a, **kw)
        stages[stage] += time.perf_counter() - start
        return out

    frames = driving_frames(args.driving, args.frames)
    base = args.weights / "base_models"
    start = time.perf_counter()
    config = InferenceConfig(
        checkpoint_F=str(base / "appearance_feature_extractor.pth"),
        checkpoint_M=str(base / "motion_extractor.pth"),
        checkpoint_W=str(base / "warping_module.pth"),
        checkpoint_G=str(base / "spade_generator.pth"),
        checkpoint_S=str(args.weights / "retargeting_models" / "stitching_retargeting_module.pth"),
        flag_use_half_precision=False,
        flag_force_cpu=args.device == "cpu",
        device_id=int(args.device.partition(":")[2] or 0),
        flag_normalize_lip=False,
    )
    wrapper = LivePortraitWrapper(inference_cfg=config)
    load_s = time.perf_counter() - start

    start = time.perf_counter()
    source = cv2.cvtColor(cv2.imread(str(args.source)), cv2.COLOR_BGR2RGB)
    crop_to_image = np.array([float(v) for v in args.crop_to_image.split(",")], np.float32).reshape(2, 3)
    crop = cv2.warpAffine(source, cv2.invertAffineTransform(crop_to_image), (CROP, CROP), flags=cv2.INTER_LINEAR)
    source_256 = cv2.resize(crop, (NETWORK, NETWORK), interpolation=cv2.INTER_AREA)
    source_input = wrapper.prepare_source(source_256)
    source_info = wrapper.get_kp_info(source_input)
    source_rotation = get_rotation_matrix(source_info["pitch"], source_info["yaw"], source_info["roll"])
    feature = wrapper.extract_feature_3d(source_input)
    x_s = wrapper.transform_keypoint(source_info)
    mask = prepare_paste_back(config.mask_crop, crop_to_image, dsize=(source.shape[1], source.shape[0]))
    source_s = time.perf_counter() - start

    start = time.perf_counter()
    first = first_rotation = first_new = multiplier = None
    for rgb in frames:
        driving = timed("motion", wrapper.prepare_source, cv2.resize(rgb, (NETWORK, NETWORK)))
        info = timed("motion", wrapper.get_kp_info, driving)
        step = time.perf_counter()
        rotation = get_rotation_matrix(info["pitch"], info["yaw"], info["roll"])
        if first is None:
            first, first_rotation = info, rotation
        # Relative motion, all regions (upstream's default): the driver's change since its first frame, on the source.
        new_rotation = (rotation @ first_rotation.permute(0, 2, 1)) @ source_rotation
        expression = source_info["exp"] + (info["exp"] - first["exp"])
        scale = source_info["scale"] * (info["scale"] / first["scale"])
        shift = source_info["t"] + (info["t"] - first["t"])
        shift[..., 2].fill_(0)
        x_new = scale * (source_info["kp"] @ new_rotation + expression) + shift
        if first_new is None:  # expression-friendly: motion measured from the first frame, scaled to the source
            first_new = x_new
            multiplier = calc_motion_multiplier(x_s, first_new)
        x_new = (x_new - first_new) * multiplier + x_s
        x_new = wrapper.stitching(x_s, x_new)
        x_new = x_s + (x_new - x_s) * config.driving_multiplier
        stages["keypoints and stitching"] += time.perf_counter() - step
        out = timed("warp and decode", wrapper.warp_decode, feature, x_s, x_new)
        step = time.perf_counter()
        generated = wrapper.parse_output(out["out"])[0]
        paste_back(generated, crop_to_image, source, mask)
        stages["output and paste-back"] += time.perf_counter() - step
    loop_s = time.perf_counter() - start

    args.json.write_text(
        json.dumps(
            {
                "frames": len(frames),
                "load_s": load_s,
                "source_s": source_s,
                "loop_s": loop_s,
                "per_frame_s": loop_s / len(frames),
                "stages_s": stages,
                "device": wrapper.device,
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
