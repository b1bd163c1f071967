"""OpenMP threads that sleep at their barriers, in the processes whose network shares the CPU with codec threads.

Why: PyTorch's CPU kernels run on GNU OpenMP threads, which by default spin at the barrier that ends each parallel
layer. In a lip-sync or portrait pipeline on the CPU, the decoder and the encoder run in threads beside them; a
spinning thread burns the core a codec thread needs, and a preempted one holds up the whole team. With
OMP_WAIT_POLICY=PASSIVE (and the codecs on one thread each, engine/core/media.py) a 10 s 720p Wav2Lip clip on two
cores used 15-20% less CPU time and finished 7-9% sooner (four alternating rounds; issue #17). A network timed
alone was about 4% slower this way before the NNPACK Winograd lever (with NNPACK's thread pool beside OpenMP's, a
later unrecorded check of 8 process pairs found it about 6% faster); sweeps run by a job worker measure it as it
runs there. LivePortrait on the CPU, whose frames are encoded between batches, was level (34.2-35.2 s against
34.0-34.2 s for 8 frames, two rounds). Set in job workers and in `avatarbench lipsync`.

libgomp reads the variable once, when it is loaded (by `import torch`), so this must run before that; a value the
user set wins.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"


def sleep_at_barriers() -> bool:
    """Ask for OMP_WAIT_POLICY=PASSIVE unless the user chose a policy; whether this process's OpenMP will sleep
    (False when torch is already loaded: its OpenMP has read its settings)."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault(VARIABLE, "PASSIVE")
    return os.environ[VARIABLE].strip().upper() == "PASSIVE"
