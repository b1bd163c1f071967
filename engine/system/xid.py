"""The NVIDIA driver's Xid events, read from the kernel log by the doctor's gpu-errors check: what each code means and
what to do about it, per GPU, since boot.

The driver prints each GPU fault to the kernel log as `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the
bus.` (older drivers leave out `PCI:`). The log is read without root where the machine lets a user read it: /dev/kmsg,
opened non-blocking and read until nothing is left, else the `dmesg` command. Both are refused where
kernel.dmesg_restrict=1 or in a container without CAP_SYSLOG; the check then says so and gives the command for the host.
The kernel keeps only what it logged since boot, in a ring buffer of bounded size, so the read is bounded too.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.system.checks import INFO, OK, PROBLEM, WARNING, Check, Context, worst
from engine.system.telemetry import GpuSample

KMSG = Path("/dev/kmsg")
DMESG = ("dmesg",)
DMESG_TIMEOUT_S = 5.0
MAX_RECORDS = 200_000  # the kernel's ring buffer (at most a few MiB) holds far fewer; a bound against a runaway read
MAX_BYTES = 64 * 2**20
HOST_COMMAND = "`sudo dmesg | grep -i xid` (or `journalctl -k | grep -i xid`)"
CATALOG_URL = "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html"

# "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."; older drivers: "Xid (0000:03:00): 14, ..."
XID_LINE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<domain>[0-9a-fA-F]{1,8}):(?P<bus>[0-9a-fA-F]{1,2}):(?P<device>[0-9a-fA-F]{1,2})"
    r"(?:\.[0-9a-fA-F])?\): (?P<code>\d+)(?:,\s*(?P<rest>.*))?"
)
DMESG_LINE = re.compile(r"^(?:<\d+>)?\[\s*(?P<seconds>\d+(?:\.\d+)?)\]\s?(?P<message>.*)$")  # "[   12.345678] text"
RECOVERY_ACTION = re.compile(
    r"to 0x[0-9a-fA-F]+ \((?P<action>[^)]*)\)"
)  # Xid 154's "... to 0x2 (Node Reboot Required)"


@dataclass(frozen=True)
class XidInfo:
    """One code's row of NVIDIA's catalog: its mnemonic, description and Resolution Bucket (Immediate Action), with
    the status the doctor gives it and the kind of advice that goes with it."""

    mnemonic: str
    description: str
    action: str
    status: str
    advice: str  # a key of ADVICE


# From NVIDIA's "Analyzing Xid Errors with the Xid Catalog" (https://docs.nvidia.com/deploy/xid-errors/, the catalog
# for Ampere and newer GPUs): mnemonic, description and Resolution Bucket (Immediate Action) as NVIDIA gives them.
# Status: PROBLEM where the action is a GPU reset, a reboot or support (the card is unusable or its data is not safe),
# WARNING where the application is restarted (often a bug in the job), INFO where NVIDIA asks for no action.
CATALOG: dict[int, XidInfo] = {
    8: XidInfo("ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "GPU stopped processing", "RESTART_APP", WARNING, "app"),
    11: XidInfo(
        "ROBUST_CHANNEL_GR_ERROR_MISSING_HW", "Invalid or corrupted push buffer stream", "RESTART_APP", WARNING, "app"
    ),
    13: XidInfo("ROBUST_CHANNEL_GR_EXCEPTION", "Graphics Engine Exception", "RESTART_APP", WARNING, "app_bug"),
    31: XidInfo("ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "GPU memory page fault", "RESTART_APP", WARNING, "app_bug"),
    32: XidInfo(
        "ROBUST_CHANNEL_PBDMA_ERROR", "Invalid or corrupted push buffer stream", "RESTART_APP", WARNING, "pcie"
    ),
    43: XidInfo(
        "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
        "GPU stopped processing (the application hit a software fault and had to end; the GPU stays healthy)",
        "IGNORE",
        WARNING,
        "app_bug",
    ),
    45: XidInfo(
        "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
        "Preemptive cleanup, due to previous errors: the driver tore down an application that was aborted (Ctrl-C, "
        "a kill, a GPU reset, or an earlier error)",
        "WORKFLOW_XID_45",
        WARNING,
        "follow_other",
    ),
    46: XidInfo("ROBUST_CHANNEL_GPU_TIMEOUT_ERROR", "GPU stopped processing", "RESET_GPU", PROBLEM, "reset"),
    48: XidInfo("ROBUST_CHANNEL_GPU_ECC_DBE", "Double Bit ECC Error", "WORKFLOW_XID_48", PROBLEM, "memory_reset"),
    54: XidInfo(
        "SILENT_RUNNING_PWR_REDUCED_CLOCKING",
        "Auxiliary power is not connected to the GPU board",
        "CHECK_MECHANICALS",
        PROBLEM,
        "mechanicals",
    ),
    61: XidInfo(
        "PMU_BREAKPOINT",
        "PMU breakpoint, listed as Unused on Ampere and newer GPUs",
        "CONTACT_SUPPORT",
        PROBLEM,
        "support",
    ),
    62: XidInfo("PMU_HALT_ERROR", "Internal micro-controller halt (newer drivers)", "RESET_GPU", PROBLEM, "reset"),
    63: XidInfo("INFOROM_DRAM_RETIREMENT_EVENT", "GPU memory remapping event", "IGNORE", INFO, "memory_info"),
    64: XidInfo(
        "INFOROM_DRAM_RETIREMENT_FAILURE", "GPU memory remapping failure", "RESET_GPU", PROBLEM, "memory_reset"
    ),
    68: XidInfo("ROBUST_CHANNEL_NVDEC0_ERROR", "NVDEC0 Exception (the video decoder)", "RESTART_APP", WARNING, "app"),
    69: XidInfo("ROBUST_CHANNEL_GR_CLASS_ERROR", "Graphics Engine class error", "RESTART_APP", WARNING, "app"),
    74: XidInfo("NVLINK_ERROR", "NVLINK Error", "WORKFLOW_NVLINK_ERR", PROBLEM, "nvlink"),
    79: XidInfo(
        "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "GPU has fallen off the bus", "RESTART_BM", PROBLEM, "off_the_bus"
    ),
    92: XidInfo("EXCESSIVE_SBE_INTERRUPTS", "High single-bit ECC error rate", "IGNORE", INFO, "memory_info"),
    94: XidInfo(
        "ROBUST_CHANNEL_CONTAINED_ERROR",
        "Contained memory error: one application was stopped, the others run on",
        "RESTART_APP",
        WARNING,
        "contained",
    ),
    95: XidInfo(
        "ROBUST_CHANNEL_UNCONTAINED_ERROR",
        "Uncontained memory error: every application on the GPU is affected",
        "RESET_GPU",
        PROBLEM,
        "memory_reset",
    ),
    109: XidInfo("ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "Context Switch Timeout Error", "RESET_GPU", PROBLEM, "reset"),
    119: XidInfo("GSP_RPC_TIMEOUT", "GSP RPC Timeout (the GPU's GSP core did not answer)", "RESET_GPU", PROBLEM, "gsp"),
    120: XidInfo("GSP_ERROR", "GSP Error (in code running on the GPU's GSP core)", "RESET_GPU", PROBLEM, "gsp"),
    121: XidInfo(
        "C2C_ERROR", "C2C Error: corrected errors on the NVLink to a Grace CPU", "IGNORE", INFO, "reset_when_convenient"
    ),
    140: XidInfo("UNRECOVERABLE_ECC_ERROR_ESCAPE", "ECC Unrecovered Error", "RESET_GPU", PROBLEM, "memory_reset"),
    143: XidInfo("GPU_INIT_ERROR", "GPU Initialization Error", "RESET_GPU", PROBLEM, "reset"),
    **{
        code: XidInfo(mnemonic, f"NVLINK: {unit} Error", "WORKFLOW_NVLINK5_ERR", WARNING, "nvlink5")
        for code, mnemonic, unit in (
            (144, "NVLINK_SAW_ERROR", "SAW"),
            (145, "NVLINK_RLW_ERROR", "RLW"),
            (146, "NVLINK_TLW_ERROR", "TLW"),
            (147, "NVLINK_TREX_ERROR", "TREX"),
            (148, "NVLINK_NVLPW_CTRL_ERROR", "NVLPW_CTRL"),
            (149, "NVLINK_NETIR_ERROR", "NETIR"),
            (150, "NVLINK_MSE_ERROR", "MSE"),
        )
    },
    154: XidInfo("GPU_RECOVERY_ACTION_CHANGED", "GPU Recovery Action Changed", "XID_154", WARNING, "recovery_action"),
    158: XidInfo("GPU_FATAL_TIMEOUT", "GPU Fatal Timeout", "RESET_GPU", PROBLEM, "reset"),
}

# Xid 154's recovery actions (NVIDIA's catalog lists None, Drain P2P, Drain and Reset, GPU Reset Required, Node Reboot
# Required): the status each gives and what it asks for ("{reset}" is the GPU's reset command). An action not listed,
# or a line that names none, is a warning sent to the catalog: nothing here says what it asks for.
RECOVERY_ACTIONS = {
    "none": (INFO, "none needed"),
    "drain p2p": (WARNING, "drain the GPU's peer-to-peer work"),
    "drain and reset": (PROBLEM, "drain the GPU's work, then {reset}"),
    "gpu reset required": (PROBLEM, "{reset}"),
    "node reboot required": (PROBLEM, "reboot the machine"),
}


@dataclass
class XidEvent:
    pci: str  # "0000:3b:00": domain, bus and device, as the driver prints them
    code: int
    rest: str  # the line after the code: pid, process name, the driver's words
    seconds: float | None  # since boot; None where the log line has no time


@dataclass
class KernelLog:
    source: str  # "/dev/kmsg" or "dmesg"
    lines: list[tuple[float | None, str]] = field(default_factory=list)  # (seconds since boot, message)
    truncated: bool = False  # the read stopped at its bound before the log's end


@dataclass
class XidGroup:
    """One code on one GPU: how often since boot, and its latest line."""

    pci: str
    code: int
    count: int
    latest: XidEvent


def parse_xid(message: str, seconds: float | None = None) -> XidEvent | None:
    """The Xid event in one kernel log message, or None where the message is not the driver's Xid line."""
    match = XID_LINE.search(message)
    if match is None:
        return None
    pci = f"{int(match['domain'], 16):04x}:{int(match['bus'], 16):02x}:{int(match['device'], 16):02x}"
    return XidEvent(pci, int(match["code"]), (match["rest"] or "").strip(), seconds)


def parse_kmsg_record(line: str) -> tuple[float | None, str] | None:
    """(seconds since boot, message) of one /dev/kmsg record line, "priority,sequence,timestamp_us,flags;message";
    None for a continuation line (" KEY=value", the record's dictionary) or a line of another shape."""
    if not line or line[0].isspace():
        return None
    prefix, sep, message = line.partition(";")
    if not sep:
        return None
    fields = prefix.split(",")
    try:
        seconds = int(fields[2]) / 1e6 if len(fields) > 2 else None
    except ValueError:
        seconds = None
    return seconds, message


def read_kmsg(path: Path = KMSG, max_records: int = MAX_RECORDS, max_bytes: int = MAX_BYTES) -> KernelLog:
    """Every record /dev/kmsg holds, read without blocking: each read returns one record, and EAGAIN says none is
    left (a plain file in tests ends instead). Raises OSError (PermissionError where the kernel refuses)."""
    log = KernelLog(str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        pending, total = "", 0
        while True:
            if len(log.lines) >= max_records or total >= max_bytes:
                log.truncated = True
                break
            try:
                chunk = os.read(fd, 16384)
            except BlockingIOError:  # EAGAIN: the newest record was read
                break
            except BrokenPipeError:  # EPIPE: the record at the read position was overwritten; the next read goes on
                continue
            if not chunk:
                break
            total += len(chunk)
            pending += chunk.decode("utf-8", errors="replace")
            *complete, pending = pending.split("\n")
            for line in complete:
                record = parse_kmsg_record(line)
                if record is not None and len(log.lines) < max_records:  # a plain file gives many records a read
                    log.lines.append(record)
        if pending and len(log.lines) < max_records:  # a last line without its newline
            record = parse_kmsg_record(pending)
            if record is not None:
                log.lines.append(record)
    finally:
        os.close(fd)
    return log


def read_dmesg(
    command: Sequence[str] = DMESG, timeout_s: float | None = None, max_records: int = MAX_RECORDS
) -> KernelLog:
    """The kernel log through the `dmesg` command (no shell, a short timeout): its newest `max_records` lines.
    Raises OSError where it is missing or refused, subprocess.TimeoutExpired where it hangs."""
    timeout_s = DMESG_TIMEOUT_S if timeout_s is None else timeout_s
    proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise PermissionError(proc.stderr.strip() or f"{command[0]} exited with code {proc.returncode}")
    lines = proc.stdout.splitlines()
    log = KernelLog("dmesg", truncated=len(lines) > max_records)
    for line in lines[-max_records:]:
        match = DMESG_LINE.match(line)
        log.lines.append((float(match["seconds"]), match["message"]) if match else (None, line))
    return log


def read_kernel_log(kmsg: Path = KMSG, dmesg: Sequence[str] = DMESG, max_records: int = MAX_RECORDS) -> KernelLog | str:
    """The kernel log from /dev/kmsg, else from `dmesg`; where neither may be read, why (for the check's text)."""
    reasons = []
    try:
        return read_kmsg(kmsg, max_records=max_records)
    except OSError as exc:
        reasons.append(f"{kmsg}: {exc.strerror or exc}")
    try:
        return read_dmesg(dmesg, max_records=max_records)
    except (OSError, subprocess.SubprocessError) as exc:
        reasons.append(f"{' '.join(dmesg)}: {getattr(exc, 'strerror', None) or exc}")
    return "; ".join(reasons)


def group_events(log: KernelLog) -> list[XidGroup]:
    """Each (GPU, code) once, counted, with its latest line; in the order they first appeared."""
    groups: dict[tuple[str, int], XidGroup] = {}
    for seconds, message in log.lines:
        event = parse_xid(message, seconds)
        if event is None:
            continue
        key = (event.pci, event.code)
        if key in groups:
            groups[key].count += 1
            groups[key].latest = event
        else:
            groups[key] = XidGroup(event.pci, event.code, 1, event)
    return list(groups.values())


def _pci_key(bus_id: str | None) -> str | None:
    """NVML's "00000000:3B:00.0" as the driver's "0000:3b:00"."""
    if not bus_id:
        return None
    parts = bus_id.split(".")[0].split(":")
    if len(parts) != 3:
        return None
    try:
        return f"{int(parts[0], 16):04x}:{int(parts[1], 16):02x}:{int(parts[2], 16):02x}"
    except ValueError:
        return None


def gpu_indices(gpus: Sequence[GpuSample]) -> dict[str, int]:
    """The driver's PCI address of each GPU NVML numbers -> its NVML index."""
    return {key: gpu.index for gpu in gpus if (key := _pci_key(gpu.pci_bus_id)) is not None}


def _status(group: XidGroup) -> str:
    info = CATALOG.get(group.code)
    if info is None:
        return WARNING
    if group.code == 154:
        known = RECOVERY_ACTIONS.get(_recovery_action(group).lower())
        return known[0] if known else WARNING
    return info.status


def _recovery_action(group: XidGroup) -> str:
    """The recovery action Xid 154's latest line changed to, as the driver words it; "" where it names none."""
    match = RECOVERY_ACTION.search(group.latest.rest)
    return match["action"].strip() if match else ""


def _advice(group: XidGroup, gpu: str, target: str) -> str:
    """The action for one group, in commands: `gpu` names the card, `target` is what nvidia-smi -i takes for it."""
    reset = f"reset it when nothing runs on it (`sudo nvidia-smi -r -i {target}`), or reboot"
    memory = (
        f"`nvidia-smi -q -d ROW_REMAPPER -i {target}` and `nvidia-smi -q -d ECC -i {target}` show its memory's state"
    )
    info = CATALOG.get(group.code)
    kind = info.advice if info else "unknown"
    text = {
        "app": "restart the job that hit it; if it comes back with the same job, report it with the job's inputs",
        "app_bug": "restart the job; repeated ones point at a bug in the job (an out-of-bounds access): run it under "
        "`compute-sanitizer` or with CUDA_LAUNCH_BLOCKING=1 to find the kernel",
        "follow_other": "the job was stopped; follow the other Xid on this GPU, if any (alone, it is a job that "
        "was killed or interrupted)",
        "pcie": "restart the job; NVIDIA puts this down to the PCI Express link's quality rather than the job: "
        "check the card's seating and riser",
        "reset": reset + "; if it comes back, contact your hardware vendor (on a cloud VM, ask for another host)",
        "memory_reset": f"{reset}; {memory}. If it comes back, the card needs replacing (on a cloud VM, ask for "
        "another host)",
        "memory_info": f"no action now; {memory}, and a pending remap is applied at the next reset",
        "contained": f"restart the stopped job; reset the GPU when convenient (`sudo nvidia-smi -r -i {target}`); "
        + memory,
        "mechanicals": "connect the board's auxiliary power cables and check the card is seated; then reboot",
        "support": "contact your hardware vendor (on a cloud VM, ask for another host)",
        "nvlink": f"{reset}; `nvidia-smi nvlink -s -i {target}` shows its links. A GPU at the other end of the link "
        "may be the cause. If it comes back after a reset, contact your hardware vendor",
        "off_the_bus": "reboot the machine (a reset cannot reach a card that is off the bus); then check its power "
        "cables, cooling and seating in the slot (`sudo dmesg | grep -i -e pcie -e aer` shows the link's errors). If "
        "it comes back, the card or its slot is failing (on a cloud VM, ask for another host)",
        "gsp": f"{reset}; if it comes back after a power cycle, follow NVIDIA's GPU Debug Guidelines "
        "(https://docs.nvidia.com/deploy/gpu-debug-guidelines/)",
        "reset_when_convenient": f"no action now; reset the GPU at a convenient time (`sudo nvidia-smi -r -i {target}`)"
        " to retrain the link",
        "nvlink5": f"decode its fields with NVIDIA's Xid 144-150 table ({CATALOG_URL}): some need a GPU reset "
        f"(`sudo nvidia-smi -r -i {target}`), some none",
        "recovery_action": f"the driver's recovery action for the Xid before it: {_recovery_advice(group, reset)}",
        "unknown": f"look it up in NVIDIA's Xid catalog ({CATALOG_URL})",
    }[kind]
    return f"{gpu}, Xid {group.code}: {text}."


def _recovery_advice(group: XidGroup, reset: str) -> str:
    """What Xid 154's recovery action asks for; where it is not one NVIDIA's catalog lists, its words and the
    catalog."""
    action = _recovery_action(group)
    known = RECOVERY_ACTIONS.get(action.lower())
    if known is not None:
        return known[1].format(reset=reset)
    named = f"'{action}'" if action else "not named in the line"
    return f"{named}, an action not in our table: look it up in NVIDIA's Xid catalog ({CATALOG_URL})"


def _when(seconds: float | None, boot_time: float | None) -> str:
    if seconds is None:
        return "at a time the log does not give"
    if boot_time is None:
        return f"{seconds:.0f} s after boot"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(boot_time + seconds))


def _boot_time() -> float | None:
    with contextlib.suppress(Exception):
        import psutil

        return float(psutil.boot_time())
    return None


def check_gpu_errors(
    ctx: Context,
    kmsg: Path = KMSG,
    dmesg: Sequence[str] = DMESG,
    boot_time: float | None = None,
    max_records: int = MAX_RECORDS,
) -> Check:
    """The driver's Xid events since boot, per GPU: what each means (NVIDIA's catalog) and what to do."""
    if ctx.no_gpu:
        return Check("gpu-errors", OK, "nothing to check: no NVIDIA card here, so no driver to report faults")
    log = read_kernel_log(kmsg, dmesg, max_records)
    if isinstance(log, str):
        return Check(
            "gpu-errors",
            INFO,
            f"the kernel log, where the NVIDIA driver reports GPU faults (Xid), cannot be read here ({log})",
            f"On the host run {HOST_COMMAND}; kernel.dmesg_restrict=1 or a container without CAP_SYSLOG keeps it "
            "from this user.",
        )
    groups = group_events(log)
    bound = f" (only {len(log.lines)} of its records read: the bound of the read)" if log.truncated else ""
    details = {"source": log.source, "records": len(log.lines), "truncated": log.truncated}
    if not groups:
        return Check("gpu-errors", OK, f"no Xid in the kernel log since boot ({log.source}){bound}", details=details)
    boot = boot_time if boot_time is not None else _boot_time()
    indices = gpu_indices(ctx.nvml_devices or [gpu for gpu, _ in ctx.gpu_states])
    found, fixes = [], []
    for group in groups:
        info = CATALOG.get(group.code)
        index = indices.get(group.pci)
        gpu = f"GPU {index} (PCI {group.pci})" if index is not None else f"the GPU at PCI {group.pci}"
        target = str(index) if index is not None else f"0000{group.pci}.0"
        meaning = f"{info.description} ({info.mnemonic}; NVIDIA: {info.action})" if info else "a code not in our table"
        found.append(
            f"{gpu}: Xid {group.code} x{group.count}, {meaning}; latest {_when(group.latest.seconds, boot)}: "
            f"{group.latest.rest or '(no text)'}"
        )
        fixes.append(_advice(group, gpu, target))
    status = worst([_status(g) for g in groups])
    details["events"] = [
        {"pci": g.pci, "code": g.code, "count": g.count, "latest": g.latest.rest, "seconds": g.latest.seconds}
        for g in groups
    ]
    return Check(
        "gpu-errors",
        status,
        f"Xid events since boot ({log.source}){bound}: " + "; ".join(found),
        "\n".join(fixes),
        details,
    )


__all__ = [
    "CATALOG",
    "KernelLog",
    "XidEvent",
    "XidGroup",
    "XidInfo",
    "check_gpu_errors",
    "gpu_indices",
    "group_events",
    "parse_kmsg_record",
    "parse_xid",
    "read_dmesg",
    "read_kernel_log",
    "read_kmsg",
]
