"""An .npy array's shape and dtype from its header, before its data is read: what an .npz upload declares is checked
(its size, its element type) before anything is allocated."""

from __future__ import annotations

from typing import IO

import numpy as np


def npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy stream declares (format 1.0 or 2.0); ValueError for any other version, and numpy's
    own errors for a damaged header."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return tuple(int(d) for d in shape), dtype
