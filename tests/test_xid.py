"""The doctor's gpu-errors check: the NVIDIA driver's Xid lines read from a kernel log the test controls (a file or a
FIFO standing in for /dev/kmsg, a script standing in for dmesg), each code's meaning and action, and the GPU index
NVML gives the PCI address."""

import errno
import os
import sys
from pathlib import Path

import pytest
from test_doctor import _ctx
from test_telemetry import fake_nvml

from engine.system import doctor, xid
from engine.system.checks import INFO, OK, PROBLEM, WARNING, Check, Context, DoctorReport
from engine.system.telemetry import GpuSample

LOST = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus."
OLD_FORMAT = "NVRM: Xid (0000:03:00): 14, Channel 00000001"
APP_FAULT = "NVRM: Xid (PCI:0000:3c:00): 13, pid=77, name=python, Graphics Exception: ESR 0x405840=0x1"


def _kmsg(*messages: str, start_us: int = 5_000_000) -> str:
    """/dev/kmsg records for these messages, one second apart, each with a continuation line as the kernel adds."""
    return "".join(
        f"4,{i},{start_us + i * 1_000_000},-;{message}\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n"
        for i, message in enumerate(messages)
    )


def _check(tmp_path: Path, log: str, ctx: Context | None = None, **kw) -> Check:
    """The check over a kernel log written to a file standing in for /dev/kmsg (dmesg never asked)."""
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(log)
    kw.setdefault("boot_time", 1_800_000_000.0)
    return xid.check_gpu_errors(ctx or _ctx(tmp_path), kmsg=kmsg, dmesg=("false",), **kw)


def test_both_line_formats_are_parsed_and_other_messages_are_not() -> None:
    lost = xid.parse_xid(LOST, 12.5)
    assert (lost.pci, lost.code, lost.seconds) == ("0000:3b:00", 79, 12.5)
    assert lost.rest == "pid=1234, name=python, GPU has fallen off the bus."
    old = xid.parse_xid("[  88.1] " + OLD_FORMAT)
    assert (old.pci, old.code, old.rest) == ("0000:03:00", 14, "Channel 00000001")
    assert xid.parse_xid("NVRM: GPU at PCI:0000:3b:00: GPU-b850f46d-d5ea-c752-ddf3-c4453e44d3f7") is None
    assert xid.parse_xid("nvidia-uvm: Loaded the UVM driver, major device number 510.") is None


def test_kmsg_records_give_their_time_and_message_and_continuation_lines_are_skipped() -> None:
    assert xid.parse_kmsg_record("6,1234,5678901,-;" + LOST) == (5.678901, LOST)
    assert xid.parse_kmsg_record("6,1235,1,c;a;message with ; inside") == (1e-6, "a;message with ; inside")
    assert xid.parse_kmsg_record(" SUBSYSTEM=pci") is None
    assert xid.parse_kmsg_record(" DRIVER=nvidia;0,1,2,-;x") is None  # a dictionary value may hold any printable
    assert xid.parse_kmsg_record("") is None


def test_a_kmsg_file_is_read_whole_with_its_continuation_lines_left_out(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_kmsg("usb 1-1: new device", LOST, APP_FAULT))
    log = xid.read_kmsg(kmsg)
    assert log.source == str(kmsg) and not log.truncated
    assert log.lines == [(5.0, "usb 1-1: new device"), (6.0, LOST), (7.0, APP_FAULT)]


def test_a_kmsg_that_stays_open_is_read_until_eagain_and_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # held open, as the kernel holds /dev/kmsg: no EOF, only EAGAIN
    try:
        os.write(writer, _kmsg(LOST, APP_FAULT).encode())
        log = xid.read_kmsg(fifo)
    finally:
        os.close(writer)
    assert [message for _, message in log.lines] == [LOST, APP_FAULT]


def test_a_record_overwritten_while_reading_is_skipped_and_the_read_goes_on(monkeypatch, tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.touch()
    replies = iter([_kmsg("first").encode(), BrokenPipeError(), _kmsg(LOST).encode(), BlockingIOError()])

    def read(fd: int, size: int) -> bytes:  # /dev/kmsg's EPIPE: the ring buffer wrapped past the read position
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(xid.os, "read", read)
    assert [message for _, message in xid.read_kmsg(kmsg).lines] == ["first", LOST]


def test_the_read_stops_at_its_bound(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_kmsg(*[f"message {i}" for i in range(50)], LOST))
    log = xid.read_kmsg(kmsg, max_records=10)
    assert len(log.lines) == 10 and log.truncated
    assert xid.read_kmsg(kmsg, max_bytes=100).truncated and not xid.read_kmsg(kmsg).truncated
    check = _check(tmp_path, _kmsg(*[f"message {i}" for i in range(50)], LOST), max_records=10)
    assert check.status == OK and "only 10 of its records read" in check.found, check
    assert _check(tmp_path, _kmsg(*[f"message {i}" for i in range(50)], LOST)).status == PROBLEM


def test_a_refused_kmsg_falls_back_to_dmesg(monkeypatch, tmp_path: Path) -> None:
    dmesg = tmp_path / "dmesg"
    dmesg.write_text(f"#!/bin/sh\necho '[    1.000000] Linux version 6.8'\necho '[ 3600.250000] {LOST}'\n")
    dmesg.chmod(0o755)
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_kmsg(APP_FAULT))

    def refused(path, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))  # kernel.dmesg_restrict=1

    monkeypatch.setattr(xid, "read_kmsg", refused)
    log = xid.read_kernel_log(kmsg, (str(dmesg),))
    assert log.source == "dmesg" and log.lines == [(1.0, "Linux version 6.8"), (3600.25, LOST)]
    newest = xid.read_dmesg((str(dmesg),), max_records=1)  # past the bound, the newest lines are kept
    assert newest.truncated and newest.lines == [(3600.25, LOST)]
    check = xid.check_gpu_errors(_ctx(tmp_path), kmsg=kmsg, dmesg=(str(dmesg),), boot_time=0.0)
    assert check.status == PROBLEM and "(dmesg)" in check.found and "1970-01-01 01:00:00 UTC" in check.found, check


def test_a_kernel_log_this_user_may_not_read_is_information_with_the_command_for_the_host(tmp_path: Path) -> None:
    refused = tmp_path / "refused"
    refused.write_text("#!/bin/sh\necho 'dmesg: read kernel buffer failed: Operation not permitted' >&2\nexit 1\n")
    refused.chmod(0o755)
    check = xid.check_gpu_errors(_ctx(tmp_path), kmsg=tmp_path / "absent", dmesg=(str(refused),))
    assert check.status == INFO and "cannot be read here" in check.found, check
    assert "Operation not permitted" in check.found
    assert "sudo dmesg | grep -i xid" in check.fix and "journalctl -k | grep -i xid" in check.fix


def test_a_dmesg_that_hangs_is_given_up_on(monkeypatch, tmp_path: Path) -> None:
    hangs = tmp_path / "hangs"
    hangs.write_text("#!/bin/sh\nexec sleep 60\n")
    hangs.chmod(0o755)
    monkeypatch.setattr(xid, "DMESG_TIMEOUT_S", 0.5)
    check = xid.check_gpu_errors(_ctx(tmp_path), kmsg=tmp_path / "absent", dmesg=(str(hangs),))
    assert check.status == INFO and "timed out" in check.found, check


def test_without_any_nvidia_gpu_there_is_nothing_to_check(tmp_path: Path) -> None:
    check = _check(tmp_path, _kmsg(LOST), _ctx(tmp_path, nvml_gpus=[]))
    assert check.status == OK and "nothing to check" in check.found and "Xid" not in check.found, check


def test_a_log_without_xid_is_ok_since_boot(tmp_path: Path) -> None:
    check = _check(tmp_path, _kmsg("usb 1-1: new device", "NVRM: loading NVIDIA UNIX x86_64 Kernel Module"))
    assert check.status == OK and "no Xid in the kernel log since boot" in check.found, check


def test_a_lost_gpu_is_a_problem_named_by_its_nvml_index_with_a_reboot_and_its_power_and_seating(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(devices=2))  # GPU 0 at 0000:3b:00, GPU 1 at 0000:3c:00
    ctx = _ctx(tmp_path, **doctor._gather_nvml())
    check = _check(tmp_path, _kmsg(LOST, "other message", LOST), ctx, boot_time=1_800_000_000.0)
    assert check.status == PROBLEM, check
    assert "GPU 0 (PCI 0000:3b:00): Xid 79 x2, GPU has fallen off the bus" in check.found
    assert "RESTART_BM" in check.found and "since boot" in check.found
    assert "latest 2027-01-15 08:00:07 UTC: pid=1234, name=python, GPU has fallen off the bus." in check.found
    assert "GPU 0 (PCI 0000:3b:00), Xid 79: reboot the machine" in check.fix
    assert "power cables, cooling and seating" in check.fix


def test_a_gpu_nvml_does_not_number_is_named_by_its_pci_address(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, nvml_devices=[GpuSample(0, "NVIDIA H100", pci_bus_id="00000000:3C:00.0")])
    check = _check(tmp_path, _kmsg("NVRM: Xid (PCI:0000:3b:00): 95, pid=5, Uncontained: FBHUB"), ctx)
    assert check.status == PROBLEM and "the GPU at PCI 0000:3b:00: Xid 95 x1" in check.found, check
    assert "sudo nvidia-smi -r -i 00000000:3b:00.0" in check.fix and "nvidia-smi -q -d ROW_REMAPPER" in check.fix


def test_an_application_fault_is_a_warning_to_restart_and_debug_the_job(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, nvml_devices=[GpuSample(1, "NVIDIA H100", pci_bus_id="00000000:3C:00.0")])
    check = _check(tmp_path, _kmsg(APP_FAULT), ctx)
    assert check.status == WARNING, check
    assert "GPU 1 (PCI 0000:3c:00): Xid 13 x1, Graphics Engine Exception" in check.found
    assert "restart the job" in check.fix and "compute-sanitizer" in check.fix and "nvidia-smi -r" not in check.fix


@pytest.mark.parametrize(
    ("code", "status", "advice"),
    [
        (8, WARNING, "restart the job"),
        (11, WARNING, "restart the job that hit it"),
        (32, WARNING, "PCI Express link's quality"),
        (46, PROBLEM, "sudo nvidia-smi -r -i 0"),
        (54, PROBLEM, "auxiliary power cables"),
        (61, PROBLEM, "contact your hardware vendor"),
        (109, PROBLEM, "sudo nvidia-smi -r -i 0"),
        (120, PROBLEM, "GPU Debug Guidelines"),
        (121, INFO, "to retrain the link"),
        (150, WARNING, "Xid 144-150 table"),
        (158, PROBLEM, "sudo nvidia-smi -r -i 0"),
        (31, WARNING, "compute-sanitizer"),
        (43, WARNING, "compute-sanitizer"),
        (45, WARNING, "follow the other Xid"),
        (48, PROBLEM, "nvidia-smi -q -d ECC -i 0"),
        (62, PROBLEM, "sudo nvidia-smi -r -i 0"),
        (63, INFO, "no action now"),
        (64, PROBLEM, "nvidia-smi -q -d ROW_REMAPPER -i 0"),
        (74, PROBLEM, "nvidia-smi nvlink -s -i 0"),
        (92, INFO, "no action now"),
        (94, WARNING, "reset the GPU when convenient"),
        (119, PROBLEM, "GPU Debug Guidelines"),
        (140, PROBLEM, "sudo nvidia-smi -r -i 0"),
        (149, WARNING, "Xid 144-150 table"),
    ],
)
def test_each_code_gets_nvidias_action_as_its_status(tmp_path: Path, code: int, status: str, advice: str) -> None:
    ctx = _ctx(tmp_path, nvml_devices=[GpuSample(0, "NVIDIA H100", pci_bus_id="00000000:3B:00.0")])
    check = _check(tmp_path, _kmsg(f"NVRM: Xid (PCI:0000:3b:00): {code}, pid=1, text"), ctx)
    assert check.status == status and xid.CATALOG[code].description in check.found, check
    assert advice in check.fix, check


# NVIDIA's Resolution Bucket (Immediate Action) of each code in the table, as the Xid catalog gives it
# (https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html).
NVIDIA_ACTIONS = {
    **dict.fromkeys([8, 11, 13, 31, 32, 68, 69, 94], "RESTART_APP"),
    **dict.fromkeys([43, 63, 92, 121], "IGNORE"),
    **dict.fromkeys([46, 62, 64, 95, 109, 119, 120, 140, 143, 158], "RESET_GPU"),
    **dict.fromkeys(range(144, 151), "WORKFLOW_NVLINK5_ERR"),
    45: "WORKFLOW_XID_45",
    48: "WORKFLOW_XID_48",
    54: "CHECK_MECHANICALS",
    61: "CONTACT_SUPPORT",
    74: "WORKFLOW_NVLINK_ERR",
    79: "RESTART_BM",
    154: "XID_154",
}
# The status an action gives: the card unusable or its data unsafe until a reset, a reboot or the vendor; the job
# restarted; nothing asked.
ACTION_STATUS = {
    **dict.fromkeys(["RESET_GPU", "RESTART_BM", "CONTACT_SUPPORT", "CHECK_MECHANICALS"], PROBLEM),
    **dict.fromkeys(["WORKFLOW_XID_48", "WORKFLOW_NVLINK_ERR"], PROBLEM),
    **dict.fromkeys(["RESTART_APP", "WORKFLOW_XID_45", "WORKFLOW_NVLINK5_ERR", "XID_154"], WARNING),
    "IGNORE": INFO,
}


def test_each_code_carries_nvidias_action_and_the_status_that_action_gives() -> None:
    assert {code: info.action for code, info in xid.CATALOG.items()} == NVIDIA_ACTIONS
    job_ended = {43: WARNING}  # IGNORE for the GPU, which stays healthy; but the job that hit it had to end
    for code, info in xid.CATALOG.items():
        assert info.status == job_ended.get(code, ACTION_STATUS[info.action]), (code, info)


def test_the_recovery_action_xid_154_says_is_its_status(tmp_path: Path) -> None:
    reboot = (
        "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"
    )
    none = "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x2 (Node Reboot Required) to 0x0 (None)"
    assert _check(tmp_path, _kmsg(reboot)).status == PROBLEM
    assert _check(tmp_path, _kmsg(reboot, none)).status == INFO  # the latest line counts


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("0x0 (None)", INFO),
        ("0x3 (Drain P2P)", WARNING),
        ("0x4 (Drain and Reset)", PROBLEM),
        ("0x1 (GPU Reset Required)", PROBLEM),
        ("0x2 (Node Reboot Required)", PROBLEM),
    ],
)
def test_each_recovery_action_nvidia_lists_gives_its_status(tmp_path: Path, action: str, status: str) -> None:
    line = f"NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to {action}"
    assert _check(tmp_path, _kmsg(line)).status == status


@pytest.mark.parametrize(
    ("action", "asks", "not_asked"),
    [
        ("0x0 (None)", "recovery action for the Xid before it: none needed.", "nvidia-smi -r"),
        ("0x3 (Drain P2P)", "drain the GPU's peer-to-peer work.", "nvidia-smi -r"),
        ("0x4 (Drain and Reset)", "drain the GPU's work, then reset it when nothing runs on it", "reboot the machine"),
        ("0x1 (GPU Reset Required)", "it: reset it when nothing runs on it (`sudo nvidia-smi -r -i 0", "drain"),
        ("0x2 (Node Reboot Required)", "recovery action for the Xid before it: reboot the machine.", "nvidia-smi -r"),
    ],
)
def test_each_recovery_action_is_told_as_what_it_asks_for(
    tmp_path: Path, action: str, asks: str, not_asked: str
) -> None:
    """A node reboot is not offered as a GPU reset, nor a reset as a drain."""
    ctx = _ctx(tmp_path, nvml_devices=[GpuSample(0, "NVIDIA H100", pci_bus_id="00000000:3B:00.0")])
    line = f"NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to {action}"
    check = _check(tmp_path, _kmsg(line), ctx)
    assert asks in check.fix and not_asked not in check.fix, check.fix


def test_an_xid_154_whose_recovery_action_is_not_known_is_a_warning_sent_to_the_catalog(tmp_path: Path) -> None:
    """No drain or reset is made up for an action NVIDIA's catalog does not list, nor for a line that names none."""
    unnamed = _check(tmp_path, _kmsg("NVRM: Xid (PCI:0000:3b:00): 154, pid=1"))
    assert unnamed.status == WARNING and "drain" not in unnamed.fix and xid.CATALOG_URL in unnamed.fix, unnamed
    assert "not named in the line" in unnamed.fix
    line = "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to 0x6 (Bus Reset)"
    newer = _check(tmp_path, _kmsg(line))
    assert newer.status == WARNING and "'Bus Reset', an action not in our table" in newer.fix, newer
    assert "drain" not in newer.fix and xid.CATALOG_URL in newer.fix


def test_the_worst_code_decides_and_each_gpu_and_code_is_counted_apart(tmp_path: Path) -> None:
    log = _kmsg(APP_FAULT, LOST, APP_FAULT, "NVRM: Xid (PCI:0000:3b:00): 13, pid=9, Graphics Exception")
    check = _check(tmp_path, log)
    assert check.status == PROBLEM, check
    assert [(e["pci"], e["code"], e["count"]) for e in check.details["events"]] == [
        ("0000:3c:00", 13, 2),
        ("0000:3b:00", 79, 1),
        ("0000:3b:00", 13, 1),
    ]


def test_an_unknown_code_is_named_with_a_pointer_to_nvidias_catalog(tmp_path: Path) -> None:
    check = _check(tmp_path, _kmsg("NVRM: Xid (PCI:0000:3b:00): 999, pid=1, something new"))
    assert check.status == WARNING and "Xid 999 x1, a code not in our table" in check.found, check
    assert xid.CATALOG_URL in check.fix


def test_the_report_shows_the_finding_and_each_fix_line(tmp_path: Path) -> None:
    check = _check(tmp_path, _kmsg(LOST, APP_FAULT))
    text = DoctorReport([check]).render_text()
    assert text.startswith("[FAIL] gpu-errors: Xid events since boot (")
    assert "        fix: the GPU at PCI 0000:3b:00, Xid 79: reboot the machine" in text
    assert "              the GPU at PCI 0000:3c:00, Xid 13: restart the job" in text


def test_the_doctor_runs_it_after_gpu_state() -> None:
    names = [fn.__name__ for fn in doctor.CHECKS]
    assert names.index("check_gpu_errors") == names.index("check_gpu_state") + 1


def test_a_line_with_only_the_code_is_still_an_xid_and_is_shown_as_without_text(tmp_path: Path) -> None:
    bare = xid.parse_xid("NVRM: Xid (PCI:0000:3b:00): 79")
    assert (bare.pci, bare.code, bare.rest) == ("0000:3b:00", 79, "")
    assert xid.parse_xid(LOST + "  \r").rest == "pid=1234, name=python, GPU has fallen off the bus."
    check = _check(tmp_path, _kmsg("NVRM: Xid (PCI:0000:3b:00): 79"))
    assert check.status == PROBLEM and check.found.endswith("(no text)"), check


def test_a_kmsg_record_without_a_readable_time_keeps_its_message() -> None:
    """A record of fewer fields or a time that is not a number: the message is kept, its time is unknown, and the
    read does not fail."""
    assert xid.parse_kmsg_record("6,1234;" + LOST) == (None, LOST)
    assert xid.parse_kmsg_record("6,1234,soon,-;" + LOST) == (None, LOST)


def test_a_last_kmsg_record_without_its_newline_is_read(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_kmsg("usb 1-1: new device") + "4,9,9000000,-;" + LOST)
    assert xid.read_kmsg(kmsg).lines == [(5.0, "usb 1-1: new device"), (9.0, LOST)]


def test_dmesg_at_exactly_its_bound_is_whole_and_the_bound_reaches_it_through_the_fallback(
    monkeypatch, tmp_path: Path
) -> None:
    dmesg = tmp_path / "dmesg"
    dmesg.write_text(f"#!/bin/sh\necho '[    1.000000] Linux version 6.8'\necho '[ 3600.250000] {LOST}'\n")
    dmesg.chmod(0o755)
    whole = xid.read_dmesg((str(dmesg),), max_records=2)
    assert not whole.truncated and len(whole.lines) == 2

    def refused(path, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(xid, "read_kmsg", refused)
    bounded = xid.read_kernel_log(tmp_path / "kmsg", (str(dmesg),), max_records=1)
    assert bounded.truncated and bounded.lines == [(3600.25, LOST)]


def test_a_bus_id_of_another_shape_numbers_no_gpu_and_does_not_fail() -> None:
    gpus = [
        GpuSample(0, "NVIDIA H100", pci_bus_id="00000000:3B:00.0"),
        GpuSample(1, "NVIDIA H100", pci_bus_id="3C:00.0"),  # no domain
        GpuSample(2, "NVIDIA H100", pci_bus_id="0000:zz:00.0"),
        GpuSample(3, "NVIDIA H100", pci_bus_id=None),
    ]
    assert xid.gpu_indices(gpus) == {"0000:3b:00": 0}


def test_without_nvml_devices_the_gpus_read_in_full_number_the_cards(tmp_path: Path) -> None:
    sample = GpuSample(2, "NVIDIA H100", pci_bus_id="00000000:3B:00.0")
    ctx = _ctx(tmp_path, gpu_states=[(sample, None)])
    check = _check(tmp_path, _kmsg(LOST), ctx)
    assert "GPU 2 (PCI 0000:3b:00): Xid 79 x1" in check.found and "GPU 2 (PCI 0000:3b:00), Xid 79: reboot" in check.fix


def test_the_time_is_the_boot_time_plus_the_seconds_in_utc_whatever_the_local_zone(monkeypatch, tmp_path: Path) -> None:
    import time

    import psutil

    monkeypatch.setattr(psutil, "boot_time", lambda: 1_800_000_000.0)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        check = _check(tmp_path, _kmsg(LOST), boot_time=None)  # the boot time psutil gives
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "latest 2027-01-15 08:00:05 UTC: pid=1234" in check.found, check


def test_without_a_boot_time_the_time_is_given_since_boot(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(xid, "_boot_time", lambda: None)
    check = _check(tmp_path, _kmsg(LOST, start_us=3_600_250_000), boot_time=None)
    assert "latest 3600 s after boot: pid=1234" in check.found, check
