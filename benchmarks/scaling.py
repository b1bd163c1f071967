"""Scale-out: jobs per hour and frames per second at 1, 2 and 4 workers, and one long lip-sync split over GPUs.

Workers: the same batch of lip-sync jobs (Wav2Lip with random weights in the official layout by default: its speed
does not depend on the values; or --engine baseline; the example face and speech) submitted at once to a broker
with W workers, for each W in --workers: W CPU workers where no GPU is visible, W workers per GPU on every visible
GPU otherwise (each job then takes 1/W of its card). Figures: the wall time from the first submit to the last
result, jobs per hour, output frames per second, and the speed-up over the first W.

Split (--split-seconds S, default 60; 0 skips it): one lip-sync of S seconds of speech (the example speech looped)
run unsplit on one device, then split over the GPUs (engine/jobs/split.py), alternating (A B A B, --pairs), medians
and spreads. The target where two GPUs are lent is 1.8x on 2 GPUs. Without GPUs it runs over --logical-gpus
logical GPUs mapped to the CPU: that checks the path end to end, and its speed-up only says what the CPU's cores
allow (recorded as such, never as a GPU figure).

Usage: python benchmarks/scaling.py [--workers 1 2 4] [--jobs 8] [--split-seconds 60] [--pairs 2]
       [--engine wav2lip|baseline] [--label TEXT] [--note TEXT] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.recording import add_context_flags, header, result_path, write_result  # noqa: E402

SPLIT_TARGET = 1.8  # on 2 GPUs (issue #13)
FACE = ROOT / "assets" / "face.jpg"
SPEECH = ROOT / "assets" / "speech.wav"
KINDS = {"lipsync": "engine.lipsync.jobs:handle"}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _wait(store: Any, ids: list[str], timeout_s: float = 3600) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(j.status not in ("queued", "running") for j in jobs):
            failed = [f"{j.id}: {j.status} {j.error}" for j in jobs if j.status != "done"]
            if failed:
                raise RuntimeError("jobs did not finish: " + "; ".join(failed))
            return jobs
        time.sleep(0.05)
    raise RuntimeError(f"jobs still running after {timeout_s:g} s")


def looped_speech(seconds: float, folder: Path) -> Path:
    """The example speech repeated to `seconds` (a long job made from a public-domain recording)."""
    with wave.open(str(SPEECH)) as w:
        rate, width, channels, data = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    samples = np.frombuffer(data, np.int16)
    total = int(seconds * rate) * channels
    looped = np.resize(samples, total)
    path = folder / f"speech-{seconds:g}s.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(looped.tobytes())
    return path


class Rig:
    """A job store and a broker over chosen devices, in a scratch data folder of its own (its workers, spawned
    with this environment, read the same one)."""

    def __init__(self, workers: dict[str, int], run_on: dict[str, str] | None = None) -> None:
        from engine.core.settings import load_settings

        os.environ["AVATARBENCH_DATA_DIR"] = tempfile.mkdtemp(prefix="scaling-bench-")
        from engine.jobs.broker import Broker
        from engine.jobs.store import JobStore
        from engine.lipsync.jobs import LipSyncJobs

        self.settings = load_settings()
        self.settings.ensure_dirs()
        self.store = JobStore(self.settings.db_path, self.settings.data_dir / "blobs")
        per_gpu = {"default": max(workers.values())}
        self.broker = Broker(self.store, KINDS, workers, per_gpu=per_gpu, run_on=run_on, poll_s=0.05).start()
        self.jobs = LipSyncJobs(self.broker, self.settings)

    def run(self, configs: list[Any]) -> tuple[float, list[Any]]:
        start = time.perf_counter()
        ids = [self.jobs.submit(c, "bench").id for c in configs]
        jobs = _wait(self.store, ids)
        return time.perf_counter() - start, jobs

    def close(self) -> None:
        self.broker.stop(10)
        self.store.close()


def gpu_keys() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def workers_sweep(counts: list[int], jobs: int, config: Any) -> list[dict[str, Any]]:
    """The same `jobs` submitted at once to W workers per device, for each W."""
    gpus = gpu_keys()
    rows = []
    for count in counts:
        workers = dict.fromkeys(gpus, count) if gpus else {"cpu": count}
        rig = Rig(workers)
        try:
            rig.run([config])  # warm-up: every worker's first job pays imports and loading
            rig.run([config] * len(rig.broker.pids()))
            wall, done = rig.run([config] * jobs)
        finally:
            rig.close()
        frames = sum(j.result["metrics"]["frames"] for j in done)
        devices = sorted({j.device for j in done})
        rows.append({"workers_per_device": count, "devices": devices, "jobs": jobs, "wall_s": wall,
                     "jobs_per_hour": 3600 * jobs / wall, "frames_per_s": frames / wall})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["speedup"] = row["jobs_per_hour"] / rows[0]["jobs_per_hour"]
    return rows


def split_pairs(seconds: float, pairs: int, logical: int, config: Any, folder: Path) -> dict[str, Any]:
    """One long lip-sync unsplit (one device) and split (every GPU), alternating."""
    import dataclasses

    gpus = gpu_keys()
    keys = gpus or [f"cuda:{i}" for i in range(logical)]
    run_on = None if gpus else dict.fromkeys(keys, "cpu")
    long_job = dataclasses.replace(config, audio=looped_speech(seconds, folder))
    split_rig = Rig({**dict.fromkeys(keys, 1), "cpu": 1}, run_on)
    whole_rig = Rig({keys[0]: 1, "cpu": 1}, run_on)  # the same job with only one device: never split
    unsplit, split, segments = [], [], None
    try:
        for _ in range(pairs):
            wall, (job,) = whole_rig.run([long_job])
            assert "segments" not in job.result["metrics"], "the one-device run was split"
            unsplit.append(wall)
            wall, (job,) = split_rig.run([long_job])
            segments = job.result["metrics"].get("segments")
            if not segments:
                raise RuntimeError(f"the {seconds:g} s job was not split over {keys}")
            split.append(wall)
    finally:
        split_rig.close()
        whole_rig.close()
    ratio = statistics.median(unsplit) / statistics.median(split)
    return {"speech_s": seconds, "devices": keys, "logical_gpus_on_cpu": not gpus, "unsplit_s": _spread(unsplit),
            "split_s": _spread(split), "speedup": ratio, "segments": segments,
            "target": SPLIT_TARGET if len(gpus) == 2 else None,
            "within_target": ratio >= SPLIT_TARGET if len(gpus) == 2 else None}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--split-seconds", type=float, default=60.0, help="the long job's speech (0: no split run)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--logical-gpus", type=int, default=2, help="without GPUs: logical GPUs mapped to the CPU")
    parser.add_argument("--engine", choices=("wav2lip", "baseline"), default="wav2lip")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/scaling-...)")
    add_context_flags(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scaling-speech-"))
    from engine.core.device import capabilities, resolve_device
    from engine.lipsync.config import LipSyncConfig
    from engine.models.wav2lip import random_wav2lip_checkpoint

    checkpoint = None
    if args.engine == "wav2lip":
        checkpoint = str(work / "wav2lip.pth")
        random_wav2lip_checkpoint(checkpoint)
    config = LipSyncConfig(face=FACE, audio=SPEECH, engine=args.engine, checkpoint=checkpoint)
    choice = resolve_device("auto")
    gpu_name = capabilities(choice.device).name if choice.is_cuda else None
    rows: dict[str, Any] = {"engine": args.engine, "workers": workers_sweep(args.workers, args.jobs, config)}
    if args.split_seconds > 0:
        rows["split"] = split_pairs(args.split_seconds, args.pairs, args.logical_gpus, config, work)
        print(json.dumps(rows["split"], indent=2), flush=True)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "gpus": len(gpu_keys()), "gpu": gpu_name}  # fmt: skip
    write_result({**header("scaling", args), "machine": machine, **rows}, args.out or result_path("scaling", gpu_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
