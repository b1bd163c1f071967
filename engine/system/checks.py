"""What a doctor's check is given and returns, and how a report of them reads: the facts gathered once for every
check (Context), the statuses, one check's finding and fix, the whole report (text for the terminal, JSON for
machines). Shared by the doctor and every check it runs, wherever the check lives."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.core.settings import Settings, is_zerogpu_space
from engine.system.telemetry import GpuHealth, GpuSample

OK, INFO, WARNING, PROBLEM = "ok", "info", "warning", "problem"
STATUSES = (OK, INFO, WARNING, PROBLEM)
_ORDER = {OK: 0, INFO: 0, WARNING: 1, PROBLEM: 2}  # information never makes a report worse than ok
NOTHING_TO_FIX = "Nothing to fix."


@dataclass
class Context:
    """Facts several checks need, gathered once."""

    settings: Settings
    nvml_gpus: list[str]
    nvml_status: str
    driver_version: str | None
    cuda_driver_version: str | None
    ort_probe: dict[str, Any] | None = None
    ort_probe_error: str | None = None
    pci_gpus: int = 0  # NVIDIA GPUs the kernel lists on the PCI bus, driver or not
    settings_problems: list[str] = field(default_factory=list)  # variables left at their defaults for this report
    nvml_devices: list[GpuSample] = field(default_factory=list)  # every GPU NVML numbers, those it cannot read too
    nvml_fix: str = ""  # the fix for nvml_status's cause, where NVML did not start
    cuda_gpus: int = 0  # GPUs PyTorch's CUDA runs on in this process, whatever NVML says
    gpu_states: list[tuple[GpuSample, GpuHealth]] = field(default_factory=list)  # each readable GPU, read in full

    @property
    def gpu_present(self) -> bool:
        return bool(self.nvml_gpus)

    @property
    def zero_gpu(self) -> bool:
        return is_zerogpu_space()

    @property
    def no_gpu(self) -> bool:
        """No NVIDIA GPU anywhere: the CPU is the expected device, not a fault with a recipe."""
        return not self.gpu_present and not self.pci_gpus and not self.zero_gpu and not self.cuda_gpus

    @property
    def gpu_in_use(self) -> bool:
        """A GPU that jobs reach (NVML sees it, or CUDA runs on it without NVML): a provider that fails there means
        silent CPU runs."""
        return self.gpu_present or bool(self.cuda_gpus)


@dataclass
class Check:
    name: str
    status: str
    found: str
    fix: str = NOTHING_TO_FIX
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    checks: list[Check]
    created: float = field(default_factory=time.time)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        found = worst([c.status for c in self.checks])
        return OK if found == INFO else found

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "counts": self.counts(),
            "created": self.created,
            "seconds": round(self.seconds, 3),
            "checks": [asdict(c) for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def render_text(self) -> str:
        marks = {OK: "[ ok ]", INFO: "[info]", WARNING: "[warn]", PROBLEM: "[FAIL]"}
        lines = []
        for c in self.checks:
            lines.append(f"{marks[c.status]} {c.name}: {c.found}")
            if c.status != OK:
                label = "hint" if c.status == INFO else " fix"  # information has nothing to fix, only a way on
                lines.extend(
                    f"        {label}: " + ln if i == 0 else "              " + ln
                    for i, ln in enumerate(c.fix.splitlines())
                )
        n = self.counts()
        lines.append(
            f"\n{n[OK]} ok, {n[INFO]} info, {n[WARNING]} warning(s), {n[PROBLEM]} problem(s) in {self.seconds:.1f}s"
        )
        return "\n".join(lines)


def worst(statuses: list[str]) -> str:
    """The most serious of some statuses (information counts as ok)."""
    return max(statuses, key=_ORDER.__getitem__, default=OK)


__all__ = [
    "INFO",
    "NOTHING_TO_FIX",
    "OK",
    "PROBLEM",
    "STATUSES",
    "WARNING",
    "Check",
    "Context",
    "DoctorReport",
    "worst",
]
