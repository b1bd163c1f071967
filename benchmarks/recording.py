"""What every benchmark writes beside its figures, and where: the date, the exact command it was run with, the
context its runner gave (--label, --note) and the file under benchmarks/results/.

Why one place: results are written only by the scripts that measured them, never edited afterwards, so whatever a
reader needs to know about a run (what else shared the machine, why it was run) must be said on the command line
and stored as given; and scripts/results_readme.py reads every file the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path
from typing import Any

from engine.core.commands import add_context_flags, command_line

RESULTS = Path(__file__).resolve().parent / "results"


def header(benchmark: str, args: argparse.Namespace) -> dict[str, Any]:
    """The keys every result file starts with."""
    return {
        "benchmark": benchmark,
        "date": date.today().isoformat(),
        "command": command_line(),
        "label": args.label,
        "note": args.note,
    }


def device_tag(gpu_name: str | None) -> str:
    """The part of a result's file name that says where it ran: the GPU's name, or cpu-only."""
    return (gpu_name.replace(" ", "-") if gpu_name else "cpu-only").lower()


def result_path(benchmark: str, gpu_name: str | None, suffix: str = "", folder: Path = RESULTS) -> Path:
    """benchmarks/results/<benchmark>-<gpu or cpu-only>-<date><suffix>.json (or the same name in `folder`)."""
    return folder / f"{benchmark}-{device_tag(gpu_name)}-{date.today().isoformat()}{suffix}.json"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model and its widest vector unit, e.g. "AMD EPYC (AVX2)": side-by-side ratios on the CPU
    depend on it, and the platform module only says "x86_64"."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    name = name or platform.processor() or platform.machine()
    return f"{name} ({vector})" if vector else name


def write_result(record: dict[str, Any], path: Path) -> Path:
    """The result as indented JSON (numbers as measured, nothing rounded), and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return path


__all__ = [
    "RESULTS",
    "add_context_flags",
    "command_line",
    "cpu_model",
    "device_tag",
    "header",
    "result_path",
    "write_result",
]
