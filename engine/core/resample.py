"""Speech resampled to 16 kHz the way each upstream's librosa.load resampled it: Wav2Lip's librosa 0.7 with its
default, resampy's `kaiser_best` (below), and MuseTalk's librosa 0.11 with its default, libsoxr's "HQ" quality
(the soxr package, as librosa calls it). Both then pad with zeros to ceil(n * target / rate) samples.

kaiser_best is resampy's filter (a Kaiser-windowed sinc, 50 zero crossings, 2**13 table entries per crossing, linear
interpolation between entries, the table stepped by int(scale * 2**13)).

resampy evaluates that filter sample by sample in numba. For a rational rate ratio P/Q the weights repeat: output
t = phase + P * m lies the same fraction past its input sample n = (phase * Q) // P + Q * m for every m, so each
phase is one weight vector, and its outputs are a matrix-vector product over windows of the signal Q samples apart
(numpy and BLAS only; scipy.signal alone takes over a second to import). Rates whose weight table would be too big
(a ratio with a large P, e.g. 44101 Hz) run resampy's loop itself, vectorised over blocks of outputs.

Each output's time here is exact where resampy takes the float t * (rate / target); at the common rates (8 to
192 kHz) that reads the same table positions and the outputs agree within 1e-6 (tests/test_audio.py); at odd
rates an output that falls exactly on an input sample can read the neighbouring positions (about 1e-5 apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np

# resampy's kaiser_best table (its data/kaiser_best.npz): these parameters rebuild it to within 1e-8.
_ZERO_CROSSINGS = 50
_TABLE_PER_CROSSING = 2**13
_KAISER_BETA = 12.9846
_ROLLOFF = 0.9173473712608761
_BLOCK_ROWS = 1 << 13  # outputs of one phase per matrix-vector product
_MAX_GRID = 1 << 20  # phases x taps per wing in a weight table (16 MB); past it, resampy's loop in blocks
_DIRECT_BLOCK = 1 << 14  # outputs per block of that loop

KAISER_BEST = "kaiser_best"  # librosa 0.7's default: upstream Wav2Lip
SOXR_HQ = "soxr_hq"  # librosa 0.10 and later: upstream MuseTalk
METHODS = (KAISER_BEST, SOXR_HQ)


def resample(x: np.ndarray, rate: int, target: int, method: str = KAISER_BEST) -> np.ndarray:
    """`x` (1-D) at `rate` Hz as float32 at `target` Hz, ceil(len(x) * target / rate) samples, as librosa's
    `resample(x, orig_sr=rate, target_sr=target, res_type=method)` gives it."""
    if method not in METHODS:
        raise ValueError(f"resampling method {method!r} is not one of {', '.join(METHODS)}")
    x = np.asarray(x, dtype=np.float32)
    if rate == target:
        return x.copy()
    wanted = int(np.ceil(x.size * (float(target) / rate)))
    if method == SOXR_HQ:
        import soxr

        y = soxr.resample(x, rate, target, quality="soxr_hq").astype(np.float32, copy=False)
        return y[:wanted] if y.size >= wanted else np.pad(y, (0, wanted - y.size))
    computed = int(x.size * float(target) / float(rate))  # resampy's length; librosa pads the rest with zeros
    out = np.zeros(wanted, np.float32)
    if computed < 1:
        return out
    g = gcd(rate, target)
    up, down = target // g, rate // g
    taps = _Taps.of(up, down)
    if up * taps.count > _MAX_GRID:  # an odd rate: a weight table per phase would be too big
        out[:computed] = _direct(x, taps, 1.0 / (float(target) / rate), computed)  # resampy's increment
        return out
    out[:computed] = _polyphase(x, up, down, computed)
    return out


@dataclass(frozen=True)
class _Taps:
    """kaiser_best's table for one ratio (scaled down when downsampling, as resampy scales it) and how it is read."""

    win: np.ndarray
    delta: np.ndarray  # forward differences, for the linear interpolation
    step: int  # table entries between taps: int(scale * 2**13)
    scale: float
    count: int  # more taps per wing than any phase uses

    @staticmethod
    @lru_cache(maxsize=4)
    def of(up: int, down: int) -> _Taps:
        scale = min(1.0, up / down)
        win = _half_window() * (up / down if up < down else 1.0)
        step = max(1, int(scale * _TABLE_PER_CROSSING))
        return _Taps(win, np.diff(win, append=win[-1]), step, scale, (win.size + _TABLE_PER_CROSSING) // step + 1)

    def weights(self, frac: np.ndarray, tap: np.ndarray) -> np.ndarray:
        """resampy's weight for tap `tap` of a wing whose fraction is `frac`: the table read at
        frac * 2**13 + tap * step, linearly interpolated; zero past the table's end."""
        position = frac * _TABLE_PER_CROSSING
        offset = position.astype(np.int64)
        eta = position - offset
        valid = tap < (self.win.size - offset) // self.step
        index = np.where(valid, offset + tap * self.step, 0)
        return np.where(valid, self.win[index] + eta * self.delta[index], 0.0)


@lru_cache(maxsize=2)
def _phase_weights(up: int, down: int) -> np.ndarray:
    """For output t = phase + up * m, whose time lies (phase * down mod up) / up past its input sample n, the
    weights of x[n - T + 1 .. n + T]: the left wing reversed, then the right wing (read at scale - frac)."""
    taps = _Taps.of(up, down)
    tap = np.arange(taps.count)[None, :]
    frac = taps.scale * ((np.arange(up) * down % up) / up)[:, None]
    left = taps.weights(frac, tap)
    right = taps.weights(taps.scale - frac, tap)
    return np.concatenate([left[:, ::-1], right], axis=1).astype(np.float32)  # resampy sums in float32 too


def _polyphase(x: np.ndarray, up: int, down: int, computed: int) -> np.ndarray:
    """The outputs phase by phase, each phase's in blocks of rows (the windows are a strided view of the signal:
    only a block at a time is copied)."""
    weights = _phase_weights(up, down)
    half = weights.shape[1] // 2
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    # windows[n + 1] is x[n - half + 1 : n + half + 1]
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half)
    out = np.empty(computed, np.float32)
    for phase in range(min(up, computed)):
        rows = windows[phase * down // up + 1 :: down][: len(range(phase, computed, up))]
        for start in range(0, len(rows), _BLOCK_ROWS):
            block = np.ascontiguousarray(rows[start : start + _BLOCK_ROWS])
            out[phase + up * start : phase + up * (start + len(block)) : up] = block @ weights[phase]
    return out


def _direct(x: np.ndarray, taps: _Taps, increment: float, computed: int) -> np.ndarray:
    """resampy's loop itself, vectorised over blocks of outputs (output t's time the float t * increment, as
    resampy takes it): for ratios whose weight table would be too big, at the cost of time, not memory."""
    out = np.empty(computed, np.float64)
    for t0 in range(0, computed, _DIRECT_BLOCK):
        time = np.arange(t0, min(computed, t0 + _DIRECT_BLOCK)) * increment
        n = time.astype(np.int64)
        frac = taps.scale * (time - n)
        acc = np.zeros(time.size)
        for tap in range(taps.count):
            at = np.full(n.shape, tap)
            left = n - tap  # x[n - i], with the left wing's weight at frac
            acc += np.where(left >= 0, taps.weights(frac, at) * x[np.maximum(left, 0)], 0.0)
            right = n + tap + 1  # x[n + k + 1], with the right wing's weight at scale - frac
            inside = right < x.size
            acc += np.where(inside, taps.weights(taps.scale - frac, at) * x[np.where(inside, right, 0)], 0.0)
        out[t0 : t0 + time.size] = acc
    return out


@lru_cache(maxsize=1)
def _half_window() -> np.ndarray:
    """The right half of kaiser_best's windowed sinc, _TABLE_PER_CROSSING entries per zero crossing."""
    n = _TABLE_PER_CROSSING * _ZERO_CROSSINGS
    sinc = _ROLLOFF * np.sinc(_ROLLOFF * np.linspace(0, _ZERO_CROSSINGS, num=n + 1, endpoint=True))
    taper = np.kaiser(2 * n + 1, _KAISER_BETA)[n:]
    return taper * sinc
