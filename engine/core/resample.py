"""Speech resampled to 16 kHz the way each upstream's librosa.load resampled it: Wav2Lip's librosa 0.7 with its
default, resampy's `kaiser_best` (below), and MuseTalk's librosa 0.11 with its default, libsoxr's "HQ" quality
(the soxr package, as librosa calls it). Both then pad with zeros to ceil(n * target / rate) samples.

kaiser_best is resampy's filter (a Kaiser-windowed sinc, 50 zero crossings, 2**13 table entries per crossing, linear
interpolation between entries, the table stepped by int(scale * 2**13)).

resampy evaluates that filter sample by sample in numba. The same sums are a polyphase FIR for a rational rate
ratio P/Q: an output's phase is its time's fraction of an input sample, r/P, and every tap is a function of
(r, tap), i.e. of one integer distance r + tap * P on a grid of 1/P input samples. So the filter is laid out once
on that grid and scipy's `upfirdn` runs it, in blocks so a long clip never needs float64 copies of itself.

Each output's time here is exact where resampy takes the float t * (rate / target); for 8 to 96 kHz (and 44.1 kHz
+ 1) that gives the same table positions and the outputs agree to within 1e-6 (tests/test_audio.py).
"""

from __future__ import annotations

from functools import lru_cache
from math import ceil, gcd

import numpy as np

# resampy's kaiser_best table (its data/kaiser_best.npz): these parameters rebuild it to within 1e-8.
_ZERO_CROSSINGS = 50
_TABLE_PER_CROSSING = 2**13
_KAISER_BETA = 12.9846
_ROLLOFF = 0.9173473712608761
_BLOCK_OUTPUTS = 1 << 16  # outputs per upfirdn call (rounded to whole phase cycles)

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
    h, shift, reach = _polyphase_filter(up, down)
    from scipy.signal import upfirdn

    block = up * max(1, _BLOCK_OUTPUTS // up)  # whole phase cycles: each block starts on an input sample
    padded = np.concatenate([np.zeros(reach, np.float32), x, np.zeros(reach + block // up * down + 1, np.float32)])
    for t0 in range(0, computed, block):
        n0 = t0 // up * down  # the input sample output t0 falls on
        count = min(block, computed - t0)
        piece = padded[n0 : n0 + 2 * reach + ceil(count * down / up) + 1].astype(np.float64)
        out[t0 : t0 + count] = upfirdn(h, piece, up, down)[shift : shift + count]
    return out


@lru_cache(maxsize=8)
def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int, int]:
    """resampy's taps for a ratio up/down laid out on the grid of 1/up input samples, as `upfirdn`'s filter;
    with the output offset that aligns an output with its input sample and the filter's reach in input samples."""
    win = _half_window()
    scale = min(1.0, up / down)
    if up < down:
        win = win * (up / down)
    delta = np.diff(win, append=win[-1])
    step = int(scale * _TABLE_PER_CROSSING)
    taps = (win.size + _TABLE_PER_CROSSING) // max(step, 1) + 1  # more than any phase uses
    # Left wing: the output at phase r/up reads x[n - i] at grid distance d = r + i * up (d >= 0).
    d = np.arange(taps * up)
    left = _taps(win, delta, step, scale * (d % up) / up, d // up)
    # Right wing: x[n + k + 1] at distance e = s + k * up with s = up - r in 1..up (e >= 1).
    e = np.arange(1, taps * up + 1)
    s = (e - 1) % up + 1
    right = _taps(win, delta, step, scale * s / up, (e - s) // up)
    reach = taps + 1  # input samples each side an output can read
    # upfirdn(h, p, up, down)[j] = sum_k p[k] h[j * down - k * up]; an output t read from p = x[n0 - reach:]
    # needs h[m] = g[m - origin] with g[d] the taps above (g[-e] the right wing) and origin = c * down - reach * up.
    c = ceil((right.size + reach * up) / down)
    origin = c * down - reach * up
    h = np.zeros(origin + left.size, np.float64)
    h[origin:] = left
    h[origin - right.size : origin] = right[::-1]
    return h, c, reach


def _taps(win: np.ndarray, delta: np.ndarray, step: int, frac: np.ndarray, tap: np.ndarray) -> np.ndarray:
    """resampy's weight for tap `tap` of a wing whose fraction is `frac`: the table read at
    frac * 2**13 + tap * step, linearly interpolated; zero past the table's end."""
    position = frac * _TABLE_PER_CROSSING
    offset = position.astype(np.int64)
    eta = position - offset
    valid = tap < (win.size - offset) // step
    index = np.where(valid, offset + tap * step, 0)
    return np.where(valid, win[index] + eta * delta[index], 0.0)


@lru_cache(maxsize=1)
def _half_window() -> np.ndarray:
    """The right half of kaiser_best's windowed sinc, _TABLE_PER_CROSSING entries per zero crossing."""
    from scipy.signal import get_window

    n = _TABLE_PER_CROSSING * _ZERO_CROSSINGS
    sinc = _ROLLOFF * np.sinc(_ROLLOFF * np.linspace(0, _ZERO_CROSSINGS, num=n + 1, endpoint=True))
    taper = get_window(("kaiser", _KAISER_BETA), 2 * n + 1, fftbins=False)[n:]
    return taper * sinc
