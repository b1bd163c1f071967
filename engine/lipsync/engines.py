"""The generators behind lip-sync: Wav2Lip, and a weight-free baseline for when no checkpoint is set.

Both take a batch of face crops (uint8 BGR, size x size) with the matching speech features and
return generated crops (float32, 0..255, BGR) of the same size, so the pipeline treats them alike. A
generator may add a fourth channel, the coverage (0..1) of what it changed; the paste then blends by it
instead of its lower-face ellipse (the baseline does, so the rest of the face keeps its own pixels).
Wav2Lip's work stays on the device between the upload of the crops and the download of the result.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from engine.core.device import DeviceCapabilities, apply_backend_flags, precision_dtype, usable_gpu_memory
from engine.lipsync.mouth import mouth_line, open_mouth
from engine.models.wav2lip import StillFace, load_wav2lip
from engine.models.winograd import onednn_has_avx512, use_winograd
from engine.models.winograd_f4 import mkl_at_full_speed, use_winograd_f4

log = logging.getLogger(__name__)


class Generator(Protocol):
    name: str
    label: str
    crop_size: int
    context_frames: int  # earlier face crops an output depends on (a split job's segment shows them first)

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Generated crops (B, S, S, 3 or 4), 0..255; rows above ``first_row`` (the paste does not read them) may
        be left zero."""


CPU_BATCH_SIZE = 16
PRECISION_CHECK_FRAMES = 4  # frames of the first batch that --check-precision also runs in fp32
ROW_STEP = 8  # Wav2Lip computes its crops from a multiple of this row down (the first row the paste reads, rounded)
# What a CPU batch's decoded frames may take. About five batches of frames are alive at once (being decoded, queued,
# generated and pasted, queued for the encoder, being encoded), so this bounds them to about 120 MiB.
CPU_BATCH_FRAME_BYTES = 24 * 2**20
# What a CPU batch takes per frame beyond its frames: Wav2Lip's activations and the batch's crops, kept for reuse
# (engine/core/memory.py). Measured in fp32 on a 256x256 photo, peak RSS 0.66 / 1.32 / 3.23 GB at batch 16 / 64 /
# 256 (10-14 MiB a frame); a 720p clip at 16 / 64 took 0.93 / 2.00 GB, the rest being its frames.
CPU_NETWORK_SAMPLE_BYTES = 14 * 2**20
CPU_FRAMES_ALIVE = 5  # batches of frames alive at once (see CPU_BATCH_FRAME_BYTES)


def cpu_sample_bytes(frame_size: tuple[int, int], network: bool) -> int:
    """Host memory one frame of a CPU batch takes (`frame_size` is width, height): its copies in flight, and the
    network's share where Wav2Lip runs."""
    frames = CPU_FRAMES_ALIVE * frame_size[0] * frame_size[1] * 3
    return frames + (CPU_NETWORK_SAMPLE_BYTES if network else 0)


def auto_batch_size(device: torch.device, precision: str, frame_size: tuple[int, int] = (0, 0), cap: int = 512) -> int:
    """Largest power of two that fits half the GPU memory this process may use; on the CPU, CPU_BATCH_SIZE (16) or
    fewer for large frames (`frame_size` is width, height).

    Wav2Lip's inference activations peak at roughly 6 MiB a sample in fp32 (3 in fp16/bf16);
    the OOM back-off catches the cases where this guess is too bold.

    On the CPU a bigger batch buys little speed and costs memory, because freed memory is kept for reuse
    (engine/core/memory.py) and the process stays at its high-water mark: a 9 s photo lip-sync peaked at
    0.78-0.85 GB RSS at batch 16, 1.0-1.17 GB at 32 and 2.4-3.1 GB at 128, with the same wall time within the
    noise of a 2-core machine; the generator alone ran 4-5% (photo) or 1-8% (moving face) slower per frame at 16
    than at 64-128, and about 2% slower at 8 than at 16. Large frames lower it further: the frames in flight,
    not the network, are what a 720p clip's batch costs (16 frames are 42 MiB), so a batch's frames stay
    within CPU_BATCH_FRAME_BYTES: 8 for 720p, 4 (the floor) for 1080p.
    """
    if device.type != "cuda":
        frame_bytes = max(1, frame_size[0] * frame_size[1] * 3)
        fits = max(4, CPU_BATCH_FRAME_BYTES // frame_bytes)
        return min(CPU_BATCH_SIZE, 2 ** int(math.log2(fits)))
    free = usable_gpu_memory(device)
    per_sample = (3 if precision in ("fp16", "bf16") else 6) * 2**20
    fits = max(1, int(free * 0.5 // per_sample))
    return max(1, min(cap, 2 ** int(math.log2(fits))))


class Wav2LipEngine:
    """The official Wav2Lip generator: batched, fp16/bf16, channels_last, optionally compiled.

    A still face is prepared once. For a photo (the pipeline hands the same crop every frame) or a video whose face
    does not change, the face encoder (7.85% of the generator's arithmetic) would compute the same skips for every
    frame, and the decoder the same skips' share of each unit that reads them (``Wav2Lip.still_face``, 6% of the
    decoder). When all crops of a batch are byte-identical, one crop is encoded and prepared, kept with that crop's
    bytes, so later batches of the same crop only run the audio encoder and the rest of the decoder (outputs within
    1e-5 of the full forward: float rounding). A compiled model keeps the full forward: its graph is one static
    function of (mel, face), specialised to one batch size.

    The BatchNorms are folded into the convolutions (``fold_batchnorms``): one pass over every activation fewer.
    On the CPU in fp32 (not compiled), ``winograd`` computes the wide 3x3 units with a Winograd transform, frames
    within a few hundredths of a grey level: on Intel CPUs our F(4x4, 3x3) by matrix products (models/winograd_f4.py),
    which needs MKL's full-speed sgemm; elsewhere NNPACK's (models/winograd.py; 1.10-1.14x per frame on a 2-core
    AMD EPYC) where oneDNN has no AVX-512, as NNPACK is slower than oneDNN's AVX-512 direct convolutions, else the
    direct ones. ``winograd_method`` says which ran ("nnpack", "f4" or None).

    ``first_row`` (the first row the paste reads, about a quarter of the way down for the blend paste) is rounded
    down to a multiple of ROW_STEP and, on the CPU, the decoder computes only the rows from it down
    (``Wav2Lip.row_starts``): about a tenth less arithmetic, the rows it does compute unchanged, the rows above zero.
    On CUDA every call has one shape instead (all rows, the last batch padded to the first's size): cuDNN's
    autotuning (cudnn.benchmark) of each new shape costs far more than a tenth of a GPU's arithmetic saves.

    ``check_precision`` (fp16/bf16 only): the first call's first PRECISION_CHECK_FRAMES frames also go through an
    fp32 copy of the generator, loaded for that and dropped, and ``precision_check`` says how far apart the two are
    in grey levels: the price of a faster precision, measured on the user's own face and speech.
    """

    name = "wav2lip"
    crop_size = 96
    context_frames = 0  # every frame is its own

    def __init__(
        self,
        checkpoint: str | Path,
        device: torch.device,
        caps: DeviceCapabilities,
        precision: str,
        compile: bool = False,
        channels_last: bool = True,
        check_precision: bool = False,
        winograd: bool = True,
    ):
        self.device = device
        self.checkpoint = checkpoint
        self._check_pending = check_precision and precision in ("fp16", "bf16")
        self.precision_check: dict[str, Any] | None = None
        self.dtype = precision_dtype(precision, caps)
        if device.type == "cuda":
            # Same-shaped batches all run long: let cuDNN pick its fastest kernels once; TF32 only on request.
            apply_backend_flags(cudnn_benchmark=True, tf32=precision == "tf32")
        self.label = f"Wav2Lip ({Path(checkpoint).name}, {precision})"
        # NHWC suits cuDNN's tensor cores and oneDNN's CPU convolutions alike (13-17% less CPU time at batch 16-32).
        self.channels_last = channels_last
        self._layout = torch.channels_last if channels_last else torch.contiguous_format
        model = load_wav2lip(
            checkpoint, device=device, dtype=self.dtype, channels_last=channels_last, fold_batchnorm=True
        )
        self.compiled = compile
        on_cpu_fp32 = device.type == "cpu" and self.dtype == torch.float32 and not compile
        self.winograd_method: str | None = None
        self.winograd_layers = 0
        if winograd and on_cpu_fp32:
            if mkl_at_full_speed():
                self.winograd_method, self.winograd_layers = "f4", use_winograd_f4(model)
            elif not onednn_has_avx512() and (layers := use_winograd(model)):  # 0 where NNPACK cannot run here
                self.winograd_method, self.winograd_layers = "nnpack", layers
        self.model = torch.compile(model, dynamic=False) if compile else model
        self._fixed_batch: int | None = None
        self._still_crop: np.ndarray | None = None  # the crop whose prepared decoder share is kept
        self._last_crop: np.ndarray | None = None  # the last crop of the batch before
        self._still: StillFace | None = None

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray, first_row: int = 0) -> np.ndarray:
        count = len(crops)
        # A compiled graph is one static shape, and on CUDA each new shape costs cuDNN an autotuning round: both
        # compute every row and pad the last, shorter batch to the first one's size.
        one_shape = self.compiled or self.device.type == "cuda"
        # Rounded down to a multiple of ROW_STEP, so a moving face gives oneDNN a dozen shapes at most (each new one
        # costs it a kernel choice).
        first_row = 0 if one_shape else first_row - first_row % ROW_STEP
        # Stops at the first crop that differs, so a moving face costs one comparison. A batch of one is still where
        # it shows the crop the batch before ended on (a photo's last frame), not merely because it is alone: a
        # moving face at batch size 1 keeps the full forward, and upstream's numerics.
        still = not self.compiled and count > 0 and all(np.array_equal(c, crops[0]) for c in crops[1:])
        if count == 1:
            still = still and self._last_crop is not None and np.array_equal(crops[0], self._last_crop)
        self._last_crop = crops[count - 1].copy() if count else None
        if one_shape:
            self._fixed_batch = self._fixed_batch or count
            if count < self._fixed_batch:
                pad = self._fixed_batch - count
                crops = np.concatenate([crops, np.repeat(crops[-1:], pad, axis=0)])
                mels = np.concatenate([mels, np.repeat(mels[-1:], pad, axis=0)])
        with torch.inference_mode():
            mel = torch.from_numpy(mels).to(self.device, non_blocking=True).unsqueeze(1).to(self.dtype)
            if still:
                out = self.model.decode_still(mel, self._prepared(crops[0]), first_row)
            elif first_row:
                out = self.model.decode(mel, self.model.encode_face(self._face_input(crops)), first_row)
            else:
                out = self.model(mel, self._face_input(crops))
            out = (out.float() * 255.0).permute(0, 2, 3, 1).cpu().numpy()
        if self._check_pending:
            self._check_pending = False
            sample = min(count, PRECISION_CHECK_FRAMES)
            self.precision_check = self._against_fp32(mels[:sample], crops[:sample], out[:sample], first_row)
        return out[:count]

    def _against_fp32(self, mels: np.ndarray, crops: np.ndarray, out: np.ndarray, first_row: int) -> dict[str, Any]:
        """How far `out` (0..255, computed from `first_row` down) is from the fp32 generator's output for the same
        inputs (full forward); None where `out` holds NaN or inf."""
        reference = load_wav2lip(
            self.checkpoint, device=self.device, channels_last=self.channels_last, fold_batchnorm=True
        )
        with torch.inference_mode():
            mel = torch.from_numpy(mels).to(self.device).unsqueeze(1)
            face = self._face_input(crops, torch.float32)
            expected = (reference(mel, face) * 255.0).permute(0, 2, 3, 1).cpu().numpy()
        del reference
        diff = np.abs(out[:, first_row:].astype(np.float64) - expected[:, first_row:])
        finite = bool(np.isfinite(diff).all())  # None below, not inf: results are JSON
        return {
            "against": "fp32",
            "frames": len(out),
            "max_grey_levels": float(diff.max()) if finite else None,
            "mean_grey_levels": float(diff.mean()) if finite else None,
        }

    def _face_input(self, crops: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The generator's face input (B, 6, S, S) in [0, 1]: each crop with its lower half masked, then the crop."""
        faces = torch.from_numpy(crops).to(self.device, non_blocking=True)  # uint8 (B, S, S, 3)
        faces = faces.permute(0, 3, 1, 2).to(dtype or self.dtype).div_(255.0)
        masked = faces.clone()
        masked[:, :, self.crop_size // 2 :] = 0  # the lower half is what the network must fill in
        x = torch.cat([masked, faces], dim=1)
        # The layout is set here, not left to the strides the permute happens to give (they vary with the batch).
        return x.contiguous(memory_format=self._layout)

    def _prepared(self, crop: np.ndarray) -> StillFace:
        """One crop encoded (batch 1) and its skips' share of the decoder computed, once while the same crop
        keeps coming."""
        if self._still is None or not np.array_equal(crop, self._still_crop):
            self._still = self.model.still_face(self.model.encode_face(self._face_input(crop[None])))
            self._still_crop = crop.copy()
        return self._still


class BaselineEngine:
    """Not Wav2Lip: a weight-free stand-in so the tab works out of the box.

    Speech-band energy per video frame opens the mouth: the lip line is found in each crop (engine.lipsync.mouth),
    the lower lip and jaw are warped down, the upper lip up a little, and the gap is filled with a dark mouth
    interior. It shows the pipeline end to end; it does not read lips. The crops come back with a fourth
    channel, the coverage of what changed, so the paste leaves every other pixel of the frame as it was.
    """

    name = "baseline"
    label = "Baseline (speech energy opens the mouth; not Wav2Lip)"
    crop_size = 160

    def __init__(self, device: torch.device | None = None, max_open: float = 0.09, steadiness: int = 5):
        self.device = device  # the warp runs in OpenCV on the CPU whatever the device: it is cheap
        self.max_open = max_open  # the opening at full energy, as a fraction of the crop height
        self._lines: deque[float] = deque(maxlen=steadiness)  # the last lip lines: their median steadies a video
        self.context_frames = steadiness - 1

    def opening(self, energy: float) -> float:
        """The mouth's opening for one frame's energy (0..1): closed below a whisper, linear above."""
        return self.max_open * float(np.clip((energy - 0.05) / 0.95, 0.0, 1.0))

    def __call__(self, mels: np.ndarray, crops: np.ndarray, energy: np.ndarray, first_row: int = 0) -> np.ndarray:
        # Every row: the warp is cheap, and the coverage channel, not first_row, says what the paste changes.
        count, height, width = crops.shape[:3]
        out = np.empty((count, height, width, 4), np.float32)
        for i in range(count):
            self._lines.append(mouth_line(crops[i]))
            line = float(np.median(self._lines))
            out[i, ..., :3], out[i, ..., 3] = open_mouth(crops[i], line, self.opening(float(energy[i])))
        return out
