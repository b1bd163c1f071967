"""MuseTalk's generation: speech and a prepared avatar become lip-synced frames, streamed as they are made.

Per clip, whisper-tiny's hidden states once (audio.encode_speech, all hidden states stacked as upstream); then per
batch of output frames: their audio prompts plus the positional encoding, the UNet once at timestep 0 on the avatar
frames' latents with the prompts as its cross-attention input, the VAE decoder, and the blend into the avatar frame.
Output frame i shows avatar frame avatar.source_frame(i) (upstream's forward-then-backward cycle), and a clip has
audio.frame_count(samples, fps) frames: the real frame rate, the last partial frame kept.

Where the work runs: prompts, UNet, decoder and the conversion to uint8 BGR run on the networks' device, in their
dtype (fp16 on CUDA, fp32 on the CPU), a batch at a time; only the decoded 256x256 faces (192 KiB each) come back,
once per batch, and on CUDA the next batch is already queued on the device while this one is blended. The resize to
the face box and the composite run on the CPU, on the face box only, in uint16 numpy arithmetic that does not use
PyTorch's thread pool (blend.face_to_box, blend.blend_face):
upstream resizes with OpenCV's bilinear filter, whose fixed-point rounding torch's bilinear does not reproduce (one
level apart on about 13% of the pixels), so upstream's exact pixels are made where OpenCV runs. No image files are
written between stages.

Frames whose avatar frame has no face pass through unchanged (a copy of the avatar frame) and cost no network time.
A frame whose decoded face holds NaN or infinite values (fp16 overflow) also keeps the avatar frame's pixels, with a
warning in the result, as Wav2Lip's frames do; upstream would paste the arbitrary pixels such values convert to.

How the UNet and the decoder run is accelerate.py's StepRunner: eager as written (the default), or torch.compile,
CUDA graphs, ONNX Runtime or TensorRT at a fixed batch shape; the streaming above is the same for all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.core.device import not_finite_hint
from engine.core.errors import InputError
from engine.core.results import RunResult
from engine.lipsync.musetalk.accelerate import EAGER, StepRunner, make_step
from engine.lipsync.musetalk.audio import (
    WINDOW_ROWS,
    SegmentEncoder,
    SpeechWindows,
    check_speech,
    encode_speech,
    frame_count,
    positional_encoding,
)
from engine.lipsync.musetalk.avatar import PreparedAvatar
from engine.lipsync.musetalk.blend import blend_face, face_to_box
from engine.lipsync.musetalk.stages import timed
from engine.lipsync.musetalk.weights import MuseTalkNetworks

_CPU = torch.device("cpu")


def whisper_segment_encoder(networks: MuseTalkNetworks) -> SegmentEncoder:
    """audio.encode_speech's encode_segment: the whisper encoder on one 30 s segment's features, in its own dtype on
    its own device, every hidden state (the embeddings and each layer's output) stacked: (layers, 1500, width)."""
    whisper = networks.whisper
    dtype = next(whisper.parameters()).dtype

    def encode(features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = whisper(features.to(device=networks.device, dtype=dtype), output_hidden_states=True)
            return torch.stack(out.hidden_states)[:, 0]

    return encode


@dataclass
class _Batch:
    """One batch of output frames: which avatar frame each shows, and the decoded faces of those with a face."""

    sources: list[int]
    faces: torch.Tensor | None  # (frames with a face, 256, 256, 3) uint8 on the CPU, in order
    finite: torch.Tensor | None  # (frames with a face,) bool: whether each decoded face was finite
    ready: torch.cuda.Event | None  # set when `faces` is still being copied from the GPU


def _check_fits(avatar: PreparedAvatar, networks: MuseTalkNetworks) -> None:
    wanted = networks.unet.config.in_channels
    if avatar.latents.ndim != 4 or avatar.latents.shape[1] != wanted:
        raise InputError(
            f"the avatar's latents have {avatar.latents.shape[1] if avatar.latents.ndim == 4 else '?'} channels but "
            f"this MuseTalk UNet takes {wanted}: prepare the avatar again with these networks"
        )


def generate(
    avatar: PreparedAvatar,
    speech: np.ndarray,
    fps: float,
    networks: MuseTalkNetworks,
    batch_size: int = 8,
    *,
    extractor: Any | None = None,
    result: RunResult | None = None,
    runtime: str | StepRunner = EAGER,
    cache_dir: str | os.PathLike | None = None,
) -> Iterator[np.ndarray]:
    """The lip-synced frames (uint8 BGR, the avatar's size) for 16 kHz mono `speech` at `fps`, in order.

    Checks run now (silence, speech shorter than a frame, a bad fps or batch size, a runtime that cannot run here);
    the work runs as the frames are taken, so the first can be encoded while the rest are computed. `extractor` is
    the whisper feature extractor (default: whisper-tiny's settings). `runtime` names how the UNet and decoder run
    (accelerate.RUNTIMES; `cache_dir` holds ONNX exports) or is a StepRunner kept from an earlier call for these
    networks and batch size. With `result`, the stages whisper, unet, decode (or the fused step's) and blend are
    timed (on CUDA each then waits for the device, which costs the overlap of device and CPU work), and the
    runtime's metrics and warnings are added once the last frame is out.
    """
    speech = check_speech(speech, fps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= 4096:
        raise InputError(f"batch_size must be a whole number from 1 to 4096, got {batch_size!r}")
    _check_fits(avatar, networks)
    if isinstance(runtime, StepRunner):
        if runtime.networks is not networks or runtime.batch_size != batch_size:
            raise InputError(
                f"the {runtime.name} step was made for other networks or batch size {runtime.batch_size}, "
                f"not {batch_size}: make one for these (accelerate.make_step)"
            )
        step = runtime
    else:
        step = make_step(networks, runtime, int(batch_size), cache_dir=cache_dir)
    fps = float(fps)
    return _frames(avatar, speech, fps, frame_count(len(speech), fps), networks, step, extractor, result)


def _frames(
    avatar: PreparedAvatar,
    speech: np.ndarray,
    fps: float,
    count: int,
    networks: MuseTalkNetworks,
    step: StepRunner,
    extractor: Any | None,
    result: RunResult | None,
) -> Iterator[np.ndarray]:
    device, batch_size = networks.device, step.batch_size
    with timed(result, "whisper", device, count):
        hidden = encode_speech(speech, whisper_segment_encoder(networks), extractor)
        windows = SpeechWindows(hidden, len(speech), fps, count)
    latents = avatar.latents.to(device=device, dtype=networks.unet.dtype).contiguous()
    run = _Runner(avatar, networks, windows, latents, step, result)
    queue_ahead = device.type == "cuda"  # the CPU computes synchronously: looking ahead would only delay frame 0
    pending: _Batch | None = None
    for start in range(0, count, batch_size):
        launched = run.launch(range(start, min(start + batch_size, count)))
        if pending is not None:
            yield from run.compose(pending)
        pending = launched
        if not queue_ahead:
            yield from run.compose(pending)
            pending = None
    if pending is not None:
        yield from run.compose(pending)
    if result is not None:
        step.report(result)
        if run.not_finite:
            result.warn(
                f"MuseTalk gave NaN or infinite values for {run.not_finite} of {count} frames; they keep the avatar's "
                f"own pixels ({not_finite_hint(networks.unet.dtype)})"
            )


class _Runner:
    """The per-batch work of one generate call: `launch` queues the networks, `compose` blends the results."""

    def __init__(
        self,
        avatar: PreparedAvatar,
        networks: MuseTalkNetworks,
        windows: SpeechWindows,
        latents: torch.Tensor,
        step: StepRunner,
        result: RunResult | None,
    ) -> None:
        self.avatar, self.networks, self.windows, self.latents, self.result = avatar, networks, windows, latents, result
        self.step = step  # the UNet at timestep 0 (upstream's one step), the decoder, the uint8 BGR faces
        self.device = networks.device
        self.not_finite = 0  # frames whose decoded face held NaN or infinity, kept as the avatar frame
        width, rows = windows.padded.shape[2], WINDOW_ROWS * windows.padded.shape[1]
        self.encoding = positional_encoding(rows, width).to(device=self.device, dtype=windows.padded.dtype)

    def launch(self, frames: range) -> _Batch:
        avatar = self.avatar
        sources = [avatar.source_frame(i) for i in frames]
        with_face = [j for j, s in enumerate(sources) if avatar.latent_rows[s] >= 0]
        if not with_face:
            return _Batch(sources, None, None, None)
        rows = torch.tensor([avatar.latent_rows[sources[j]] for j in with_face], device=self.device)
        with torch.inference_mode():
            prompts = self.windows.prompts(np.array([frames[j] for j in with_face])) + self.encoding
            faces, finite = self.step(self.latents[rows], prompts, self.result)
            faces = faces.to(_CPU, non_blocking=True)  # pinned, asynchronous from CUDA (ONNX's are on the CPU)
            finite = finite.to(_CPU, non_blocking=True)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return _Batch(sources, faces, finite, ready)

    def compose(self, batch: _Batch) -> Iterator[np.ndarray]:
        if batch.ready is not None:
            batch.ready.synchronize()
        avatar, row = self.avatar, 0
        for source in batch.sources:
            plan = avatar.plans[source]
            if plan is None:
                yield avatar.frames[source].copy()
                continue
            if not batch.finite[row]:
                self.not_finite += 1
                row += 1
                yield avatar.frames[source].copy()
                continue
            with timed(self.result, "blend", _CPU, 1):
                face = face_to_box(batch.faces[row].numpy(), plan.box)
                frame = blend_face(avatar.frames[source], face, plan)
            row += 1
            yield frame
