"""Portrait animation: a source portrait animated by a driving video (or image, or a saved motion template)
through our LivePortrait networks, pasted back into the full source image and written as MP4 with the
driving video's sound.

Stages: the source is detected, cropped (2.3x the face, shifted up) and encoded once (appearance features
and keypoints: the per-source cache); the driving clip is streamed twice, never held in memory: once to
detect its face and fix one crop box for the whole clip, once to crop every frame and extract its motion in
batches (and, for retargeting to the driver, its eye and lip openness). Frames are counted while streaming: a
clip that runs past AVATARBENCH_MAX_SECONDS stops there with a message, even when its header gives no
duration. Driving keypoints are computed for all frames (a few hundred numbers each), then output frames are
rendered in batches: warping + decoding + paste-back on the device, encoding in order.

Precision: on CUDA the appearance extractor, warping module and decoder run under fp16 autocast (PyTorch
keeps grid_sample in fp32 there); the motion extractor always runs in strict fp32 with TF32 off, because
TF32 moves its pose logits by about 0.1 degree-bins (a deliberate difference: upstream runs it under the same fp16
autocast as the others when flag_use_half_precision is on, its default). With `compile`, the warping module and
decoder go through torch.compile at one fixed batch shape (the last batch is padded), so they compile once.

Between runs in one process the loaded networks and each source's features stay cached (engine/portrait/cache.py):
re-animating a portrait with other options costs warping + decoding only.

Where each part is: head.py (what a run decides before the driving input), weights.py, networks.py, driving.py (the
driving input read and measured), liveportrait_plan.py and baseline_plan.py (each engine's frames), writing.py (the
MP4) and segments.py (a job split over GPUs); this module runs them in order.
"""

from __future__ import annotations

from pathlib import Path

from engine.core.results import RunResult
from engine.core.settings import Settings, get_settings
from engine.portrait.baseline_plan import baseline_plan
from engine.portrait.config import PortraitConfig, PortraitError
from engine.portrait.frames import Progress
from engine.portrait.head import run_head
from engine.portrait.liveportrait_plan import liveportrait_plan, liveportrait_source, name_unused_options
from engine.portrait.templates import NPZ
from engine.portrait.writing import write


def run_portrait(
    config: PortraitConfig,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
    device: str | None = None,
) -> RunResult:
    """Animate the source with the driving motion into `out` (.mp4) on `device` (default: the settings' device); the
    result has the video, stage timings and warnings. With save_template the motion goes to `out` with .npz."""
    settings = settings or get_settings()
    progress = progress or (lambda fraction, label: None)
    config = config.checked()
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise PortraitError(f"output {out.name or '(no name)'} must be a file name ending in .mp4")
    head = run_head(config, settings, device)
    config, result = head.config, head.result
    if head.folder is None:
        plan = baseline_plan(head, progress)
    else:
        name_unused_options(config, result)
        template = out.with_suffix(NPZ) if config.save_template else None
        source = liveportrait_source(head, progress)
        plan = liveportrait_plan(head, source, template, progress)
    write(plan, config, settings, out, result, progress)
    head.report(plan.metrics)
    progress(1.0, "done")
    return result


__all__ = ["run_portrait"]
