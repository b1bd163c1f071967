"""The telemetry strip and panel (ui/telemetry.py) from snapshots the tests make: what they draw, and that what a
page is sent stays within its budget however many GPUs the machine has."""

from __future__ import annotations

import random
import re

import pytest

pytest.importorskip("gradio")

from engine.system.telemetry import GpuSample, HostSample, Snapshot
from ui import telemetry
from ui.telemetry import RefreshPeriods, current_values_html, history_figures, sparkline, strip_html

NO_GPU = "no NVIDIA GPU visible (the NVML library (libnvidia-ml.so.1) was not found)"


def _history(gpus: int, seconds: int = 600, interval: float = 1.0, power: bool = True, seed: int = 0) -> list:
    """A full history of noisy samples (the worst case for the payload: every value differs)."""
    rng = random.Random(seed)
    start = 1_700_000_000.0
    snaps = []
    for i in range(int(seconds / interval)):
        host = HostSample(rng.uniform(0, 100), 16, int(rng.uniform(8, 30) * 2**30), 128 * 2**30, 2**30, 12.5)
        cards = [
            GpuSample(
                index=k,
                name="NVIDIA H200",
                util_gpu_percent=float(rng.randint(0, 100)),
                util_memory_percent=float(rng.randint(0, 100)),
                memory_used_bytes=int(rng.uniform(1, 140) * 2**30),
                memory_total_bytes=141 * 2**30,
                temperature_c=float(rng.randint(30, 80)),
                power_w=rng.uniform(80, 700) if power else None,
                power_limit_w=700.0 if power else None,
                performance_state="P0",
                throttle_reasons=["software power cap"],
            )
            for k in range(gpus)
        ]
        snaps.append(Snapshot(start + i * interval, host, cards, gpu_status="" if gpus else NO_GPU))
    return snaps


def _points(svg: str) -> list[list[tuple[int, int]]]:
    """The absolute points of each piece of a sparkline's path ("M0 9l2-3 2 1M8 4l2 0")."""
    pieces = []
    for piece in re.findall(r"M[^M']+", svg):
        numbers = [int(n) for n in re.findall(r"-?\d+", piece)]
        x, y = numbers[0], numbers[1]
        points = [(x, y)]
        for dx, dy in zip(numbers[2::2], numbers[3::2], strict=True):
            x, y = x + dx, y + dy
            points.append((x, y))
        pieces.append(points)
    return pieces


def test_a_sparkline_draws_its_values_on_their_scale_newest_at_the_right_with_gaps() -> None:
    pieces = _points(sparkline([0.0, 50.0, 100.0, None, 100.0, 25.0], 100))
    right, bottom = telemetry.SPARK_WIDTH, telemetry.SPARK_HEIGHT - 1
    assert pieces == [
        [(right - 10, bottom), (right - 8, 8), (right - 6, 1)],  # 0 at the bottom, 100 at the top
        [(right - 2, 1), (right, 12)],  # after the gap left by None
    ]
    assert _points(sparkline([250.0, -5.0], 100)) == [[(right - 2, 1), (right, bottom)]]  # clipped to the box


def test_a_long_history_is_averaged_down_to_the_sparklines_points() -> None:
    values = [float(i % 2) * 100 for i in range(600)]  # alternating 0 and 100: averages of 50
    (piece,) = _points(sparkline(values, 100))
    assert len(piece) == telemetry.SPARK_POINTS and {y for _, y in piece} == {8}
    assert piece[0][0] == 0 and piece[-1][0] == telemetry.SPARK_WIDTH


def test_the_strip_has_one_line_per_gpu_and_one_for_the_host() -> None:
    snaps = _history(2, seconds=60)
    strip = strip_html(snaps[-1], snaps, 1.0)
    assert strip.count("class='ab-strip-line'") == 3
    assert "<b>GPU 0</b>" in strip and "<b>GPU 1</b>" in strip and "<b>Host</b>" in strip
    assert strip.count("<svg") == 2 * 3 + 2  # util, memory, power a GPU; CPU and RAM
    assert "throttled: software power cap" in strip and "P0" in strip
    assert re.search(r"id='telemetry-timestamp'[^>]*>Updated \d\d:\d\d:\d\d · every 1 s<", strip)


def test_without_a_gpu_the_strip_is_the_host_line_and_says_why() -> None:
    snaps = _history(0, seconds=60)
    strip = strip_html(snaps[-1], snaps, 1.0)
    assert strip.count("class='ab-strip-line'") == 1 and "GPU 0" not in strip
    assert "no NVIDIA GPU visible" in strip and "libnvidia-ml.so.1" in strip  # the reason, on hover
    without_power = _history(1, seconds=60, power=False)
    assert strip_html(without_power[-1], without_power, 1.0).count("<svg") == 2 + 2  # no empty power line


def test_the_panel_plots_no_power_chart_where_no_gpu_reports_power() -> None:
    cpu = _history(0, seconds=60)
    assert [f.layout.title.text for f in history_figures(cpu, 1.0, with_power=False)] == ["Utilisation", "Memory"]
    gpu = _history(1, seconds=60)
    figures = history_figures(gpu, 1.0, with_power=telemetry.has_power_readings(gpu[-1]))
    assert [f.layout.title.text for f in figures] == ["Utilisation", "Memory", "GPU power"]
    assert not telemetry.has_power_readings(cpu[-1])


def test_the_plots_span_the_history_in_seconds_before_now_and_keep_a_gap_where_sampling_stopped() -> None:
    snaps = _history(1)
    util = history_figures(snaps, 1.0)[0].data[0]
    assert len(util.y) == telemetry.PLOT_POINTS and util.x is None
    bucket = 600 / telemetry.PLOT_POINTS  # each point is the mean of this many seconds, placed at their mean time
    assert util.x0 == pytest.approx(-600, abs=bucket) and util.x0 + util.dx * (len(util.y) - 1) > -bucket
    stalled = snaps[:300] + [Snapshot(s.timestamp + 120, s.host, s.gpus) for s in snaps[300:]]  # 2 min suspended
    util = history_figures(stalled, 1.0)[0].data[0]
    steps = [b - a for a, b in zip(util.x, util.x[1:], strict=False)]
    assert max(steps) > 100 and -bucket < util.x[-1] <= 0


@pytest.mark.parametrize("gpus", [0, 1, 2, 8, 16])
def test_what_a_page_is_sent_stays_within_10_kib_per_s_for_any_number_of_gpus(gpus: int) -> None:
    """The strip and the open panel, as Gradio sends them (the HTML; each figure's JSON), with every value noisy,
    divided by their refresh periods: each within its share, together with room for HTTP headers."""
    snaps = _history(gpus, power=gpus > 0)
    periods = RefreshPeriods.for_machine(gpus, gpus > 0, 1.0)
    strip = len(strip_html(snaps[-1], snaps[-60:], periods.strip_s).encode())
    panel = len(current_values_html(snaps[-1]).encode())
    panel += sum(len(f.to_json().encode()) for f in history_figures(snaps, 1.0, with_power=gpus > 0))
    strip_rate, panel_rate = strip / periods.strip_s, panel / periods.panel_s
    assert strip_rate <= telemetry.STRIP_BUDGET_BYTES_S, (strip, periods)
    assert panel_rate <= telemetry.PANEL_BUDGET_BYTES_S, (panel, periods)
    assert periods.strip_s == 1.0 or gpus >= 4  # a usual machine's strip is live every second
    assert strip_rate + panel_rate <= 9.5 * 1024


def test_the_strip_never_refreshes_faster_than_the_sampler() -> None:
    assert RefreshPeriods.for_machine(0, False, 0.2).strip_s == 1.0
    assert RefreshPeriods.for_machine(0, False, 3.0) == RefreshPeriods(3.0, 5.0)


def test_every_gpu_shows_its_workers_and_their_jobs_and_the_others_show_on_the_host_line() -> None:
    from engine.system.telemetry import GpuProcess, WorkerActivity, render_table

    snaps = _history(2, seconds=10)
    snap = snaps[-1]
    snap.gpus[0].processes = [GpuProcess(101, "python", "C", 2**30)]  # NVML's view of the worker's process
    snap.workers = [
        WorkerActivity("cuda:0", 101, "lipsync", 0.42),
        WorkerActivity("cuda:0", 102, "onnx_eval", 0.1),
        WorkerActivity("cuda:1", 103),
        WorkerActivity("cpu", 104, "portrait", 0.5),
        WorkerActivity("node-b/cuda:0", 105),  # a Ray actor on another machine: not one of these GPUs
    ]
    strip = strip_html(snap, snaps, 1.0)
    lines = strip.split("class='ab-strip-line'")[1:]
    assert "jobs: lipsync 42% · onnx_eval 10%" in lines[0] and "jobs: idle" in lines[1]
    assert "cpu: portrait 50%" in lines[2] and "node-b/cuda:0: idle" in lines[2]
    panel = current_values_html(snap)
    assert "<th>Jobs</th>" in panel and "<td>lipsync 42% · onnx_eval 10%</td>" in panel and "<td>idle</td>" in panel
    table = render_table(snap)
    assert "Job workers:" in table and "cuda:0        101        lipsync 42%" in table
    assert "101       C     python [lipsync 42%]" in table


def _one_gpu(**changes: object) -> Snapshot:
    """One H100 and its host with round figures, so the test can name each one as the user reads it."""
    card = GpuSample(
        index=0,
        name="NVIDIA H100",
        util_gpu_percent=42.4,
        memory_used_bytes=20 * 2**30,
        memory_total_bytes=80 * 2**30,
        temperature_c=65.0,
        power_w=250.4,
        power_limit_w=700.0,
        sm_clock_mhz=1980,
        memory_clock_mhz=2619,
        encoder_percent=3.0,
        decoder_percent=0.0,
        performance_state="P0",
        throttle_reasons=["idle"],
    )
    for name, value in changes.items():
        setattr(card, name, value)
    host = HostSample(12.6, 16, 8 * 2**30, 64 * 2**30, 512 * 2**20, 3.2)
    return Snapshot(1_700_000_000.0, host, [card])


def test_the_strip_and_the_panel_show_each_figure_rounded_and_in_its_unit() -> None:
    """What a user reads: whole percents, GiB of memory (MiB for the app), watts of the power cap, °C."""
    snap = _one_gpu()
    strip = strip_html(snap, [snap], 1.0)
    for shown in ("util 42%<svg", "mem 20.0/80.0 GiB<svg", "250/700 W<svg", "65 °C", "P0",
                  "CPU 13% of 16<svg", "RAM 8.0/64.0 GiB<svg", "app 512 MiB"):  # fmt: skip
        assert shown in strip, shown
    assert "throttled" not in strip  # an idle GPU's clocks are down because it is idle, not throttled
    assert "jobs:" not in strip  # no workers on it: nothing to say
    panel = current_values_html(snap)
    cells = re.findall(r"<td>([^<]*)</td>", panel)
    assert cells == ["GPU 0: NVIDIA H100", "42%", "20.0 / 80.0 GiB", "65.0 °C", "250 W / 700 W", "1980 / 2619 MHz",
                     "3% / 0%", "P0", "idle", "no workers"]  # fmt: skip
    headers = re.findall(r"<th>([^<]*)</th>", panel)
    assert headers == ["Device", "Util", "Memory", "Temp", "Power", "SM / mem clock", "Enc / dec", "Perf", "Throttle",
                       "Jobs"]  # fmt: skip
    assert "Host CPU 13% of 16 cores · RAM 8.0 / 64.0 GiB · this process 512 MiB RSS, 3% CPU" in panel


def test_a_throttled_gpu_warns_on_the_strip_and_without_a_total_its_memory_is_na() -> None:
    """A real throttle reason is flagged beside the idle one; a card that reports no memory total shows N/A in
    the panel, not a division error."""
    throttled = _one_gpu(throttle_reasons=["idle", "software power cap"])
    assert "⚠️ throttled: software power cap</span>" in strip_html(throttled, [throttled], 1.0)
    no_total = _one_gpu(memory_total_bytes=0)
    assert re.findall(r"<td>([^<]*)</td>", current_values_html(no_total))[2] == "N/A"


def test_the_sparklines_follow_their_own_figure_on_its_own_scale() -> None:
    """Memory's line is the share of memory used (not utilisation), power's is on the card's limit, and the RAM line
    is a percentage of the host's RAM."""
    busy = _one_gpu(util_gpu_percent=100.0, memory_used_bytes=0, power_w=350.0)
    svgs = re.findall(r"<svg.*?</svg>", strip_html(busy, [busy, busy], 1.0))
    bottom, middle, top = telemetry.SPARK_HEIGHT - 1, 8, 1
    util, memory, power, _cpu, ram = (_points(svg)[0][-1][1] for svg in svgs)
    assert (util, memory, power) == (top, bottom, middle)  # 100% util, 0 GiB used, half of 700 W
    assert ram == round(1 + (telemetry.SPARK_HEIGHT - 2) * (1 - 8 / 64))  # 8 of 64 GiB


def test_a_sparkline_with_no_scale_or_a_gap_draws_no_false_zero() -> None:
    """A zero top (a counter with no range yet) draws nothing rather than failing the strip; a run of samples without
    a value stays a gap when averaged down, not a zero."""
    assert _points(sparkline([5.0, 7.0], 0)) == []
    values: list[float | None] = [None] * 300 + [50.0] * 300
    averaged = telemetry.averaged(values, 10)
    assert averaged[:5] == [None] * 5 and averaged[5:] == [50.0] * 5


def test_a_worker_on_a_gpu_nvml_does_not_list_is_shown_on_the_host_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker queued on a "cuda:N" that is none of the GPUs shown (NVML cannot see it) still says what it runs,
    with the host, rather than vanishing from both the strip and the panel."""
    from engine.system.telemetry import WorkerActivity

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    snap = _one_gpu()
    snap.workers = [WorkerActivity("cuda:3", 7, "lipsync", 0.5)]
    assert "cuda:3: lipsync 50%" in strip_html(snap, [snap], 1.0).split("<b>Host</b>")[1]
    assert "cuda:3: lipsync 50%" in current_values_html(snap)


def test_without_a_gpu_the_panel_says_why_and_its_utilisation_axis_stays_0_to_100() -> None:
    """The reason NVML gave is in the panel, not only on hover; a percentage chart never rescales to its data; the
    panel never refreshes faster than the sampler."""
    snaps = _history(0, seconds=10)
    assert f"⚠️ {NO_GPU}: host telemetry only." in current_values_html(snaps[-1])
    utilisation = history_figures(snaps, 1.0, with_power=False)[0]
    assert list(utilisation.layout.yaxis.range) == [0, 100]
    assert RefreshPeriods.for_machine(0, False, 7.0).panel_s == 7.0


def test_the_zerogpu_panel_gives_each_jobs_energy_in_joules_and_na_where_unmeasured() -> None:
    """The energy a job's GPU function used, as measured (not in kJ); a job without the reading says N/A."""
    from engine.jobs.zerogpu import ZeroGpuPanel

    measured = {"kind": "lipsync", "finished": 0.0, "asked_s": 34, "ran_s": 12.5, "energy_j": 1800.0}
    unmeasured = {"kind": "portrait", "finished": None, "asked_s": 20, "ran_s": None}
    shown = telemetry.zerogpu_html(ZeroGpuPanel("attached only while a job runs", [measured, unmeasured]))
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in shown.split("<tr>")[2:]]
    assert rows[0][-1] == "1800 J" and rows[1][1:] == ["N/A", "N/A", "0", "N/A", "N/A"]
