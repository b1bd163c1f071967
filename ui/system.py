"""The System tab: the GPU doctor, an nvidia-smi style table, the device in use and settings.

The table refreshes only while the tab is open (its own timer, started and stopped by tab selection), so the pages
that show another tab do not pay for it. Also registers the JSON API endpoints (`/doctor`, `/telemetry`, `/device`) that
`gradio_client` and the API page show.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import gradio as gr

from engine.core.device import DeviceChoice, capabilities, current_backend_flags
from engine.core.settings import ZEROGPU_CARD, Settings, documented_values
from engine.system.checks import INFO, OK, PROBLEM, WARNING, DoctorReport
from engine.system.doctor import run_doctor
from engine.system.telemetry import TelemetrySampler, render_table
from ui.forms import refusal

SYSTEM_TAB = "System"  # the tab's label, as app.py gives it
SMI_BUDGET_BYTES_S = 3 * 1024
HISTORY_LIMIT_S = 86_400.0  # /telemetry's history_seconds: more than the sampler keeps gives all it keeps
_BADGES = {
    OK: ("ok", "#2e7d32"),
    INFO: ("info", "#1565c0"),
    WARNING: ("warning", "#b26a00"),
    PROBLEM: ("problem", "#c62828"),
}


class DoctorCache:
    """The last doctor report, shared by all visitors. A fresh run is started at most once every
    `min_interval_s` (the doctor spawns a provider probe: 20 clients asking at once must not queue 20 of them);
    a request for a fresh report inside that interval gets the report just made."""

    def __init__(self, settings: Settings, min_interval_s: float = 30.0):
        self.settings, self.min_interval_s = settings, min_interval_s
        self._report: DoctorReport | None = None
        self._made = 0.0
        self._lock = threading.Lock()

    def get(self, fresh: bool = False) -> DoctorReport:
        with self._lock:
            stale = time.monotonic() - self._made >= self.min_interval_s
            if self._report is None or (fresh and stale):
                self._report = run_doctor(self.settings)
                self._made = time.monotonic()
            return self._report

    def warm_up(self) -> None:
        """Run the first doctor in the background so the first page view does not wait for it."""
        threading.Thread(target=self.get, name="avatarbench-doctor", daemon=True).start()


def doctor_html(report: DoctorReport) -> str:
    rows = []
    for c in report.checks:
        label, color = _BADGES[c.status]
        fix = "" if c.status == OK else html.escape(c.fix)
        rows.append(
            f"<tr><td><span class='ab-badge' style='background:{color}'>{label}</span></td>"
            f"<td><b>{html.escape(c.name)}</b></td><td>{html.escape(c.found)}</td>"
            f"<td class='ab-fix'>{fix}</td></tr>"
        )
    n = report.counts()
    label, color = _BADGES[report.status]
    summary = (
        f"<p><span class='ab-badge' style='background:{color}'>{label}</span> "
        f"{n[OK]} ok · {n[INFO]} info · {n[WARNING]} warning(s) · {n[PROBLEM]} problem(s) · "
        f"ran in {report.seconds:.1f}s</p>"
    )
    # In a scrolling box: on a phone the Fix column is scrolled into view rather than cut off.
    return (
        f"{summary}<div class='ab-scroll'><table class='ab-doctor'><thead><tr><th>Status</th><th>Check</th>"
        f"<th>Found</th><th class='ab-fix'>Fix</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def device_info(choice: DeviceChoice) -> dict[str, Any]:
    """The System tab's and /device's device. On ZeroGPU `spaces` makes torch here name a card it has not attached
    (an A100 MIG slice): the card is not asked about, the jobs' results name the one they got."""
    from engine.jobs.zerogpu import on_zerogpu

    flags = current_backend_flags()
    zerogpu = on_zerogpu()
    return {
        "device": ZEROGPU_CARD if zerogpu else str(choice.device),
        "requested": choice.requested,
        "reason": "GPU jobs run inside @spaces.GPU calls, each result names its card" if zerogpu else choice.reason,
        "capabilities": None if zerogpu else capabilities(choice.device).as_dict(),
        "backend_flags": {"cudnn_benchmark": flags.cudnn_benchmark, "tf32": flags.tf32},
    }


def build_system_tab(
    demo: gr.Blocks,
    tabs: gr.Tabs,
    settings: Settings,
    sampler: TelemetrySampler,
    choice: DeviceChoice,
    doctor: DoctorCache,
) -> None:
    """Render the tab's contents in the current Blocks context (a gr.Tab labelled SYSTEM_TAB inside `tabs`) and
    register its API endpoints."""
    gr.Markdown("### GPU doctor\nWhy the GPU is (or is not) being used, layer by layer, with the exact fix.")
    doctor_view = gr.HTML(elem_id="doctor-report")
    rerun = gr.Button("Run the doctor again", variant="secondary", elem_id="doctor-rerun")
    with gr.Accordion("Doctor report (JSON)", open=False):
        doctor_json = gr.JSON()
    gr.Markdown("### GPUs and host (nvidia-smi style)")
    smi = gr.Code(lines=18, show_line_numbers=False, elem_id="smi-text", buttons=["copy"])
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Device in use")
            gr.JSON(value=device_info(choice))
        with gr.Column():
            gr.Markdown("### Settings (environment variables)")
            gr.Dataframe(
                value=[list(row) for row in documented_values(settings)],
                headers=["Variable", "Value", "Meaning"],
                interactive=False,
                wrap=True,
            )

    def show(fresh: bool) -> tuple[str, dict[str, Any]]:
        report = doctor.get(fresh=fresh)
        return doctor_html(report), report.to_dict()

    demo.load(
        lambda: show(False),
        outputs=[doctor_view, doctor_json],
        api_visibility="private",
        concurrency_id="doctor",
        concurrency_limit=1,
    )
    rerun.click(
        lambda: show(True),
        outputs=[doctor_view, doctor_json],
        api_visibility="private",
        concurrency_id="doctor",
        concurrency_limit=1,
    )
    # Once a second, or less often where many GPUs make the table long: its share of a page's 10 KiB/s.
    smi_timer = gr.Timer(
        max(1.0, sampler.interval_s, len(render_table(sampler.latest())) / SMI_BUDGET_BYTES_S), active=False
    )
    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}

    def follow(evt: gr.SelectData) -> tuple[Any, Any]:
        """Tick while this tab is the one shown, with a fresh table at once; otherwise stop."""
        shown = evt.value == SYSTEM_TAB
        return gr.Timer(active=shown), render_table(sampler.latest()) if shown else gr.skip()

    tabs.select(follow, outputs=[smi_timer, smi], **quiet)
    smi_timer.tick(lambda: render_table(sampler.latest()), outputs=smi, **quiet)

    def doctor_api(fresh: bool = False) -> dict[str, Any]:
        """The GPU doctor's report as JSON: status, counts and every check. The last report unless fresh=True
        (a fresh run at most every 30 s; sooner, the report just made)."""
        if not isinstance(fresh, bool):
            raise refusal(f"fresh must be true or false, got {fresh!r:.40}", "the doctor")
        return doctor.get(fresh=fresh).to_dict()

    def telemetry_api(history_seconds: float = 0.0) -> dict[str, Any]:
        """The newest telemetry sample, its nvidia-smi style text, and optionally the recent history."""
        number = isinstance(history_seconds, int | float) and not isinstance(history_seconds, bool)
        if not number or not 0 <= history_seconds <= HISTORY_LIMIT_S:  # NaN fails too
            raise refusal(f"history_seconds must be a number of seconds in 0..{HISTORY_LIMIT_S:g}, got "
                          f"{history_seconds!r:.40}", "the telemetry")  # fmt: skip
        snap = sampler.latest()
        out = {"snapshot": snap.to_dict(), "table": render_table(snap)}
        if history_seconds > 0:
            out["history"] = [s.to_dict() for s in sampler.history(history_seconds)]
        return out

    def device_api() -> dict[str, Any]:
        """The device this server runs on, its capabilities and backend flags."""
        return device_info(choice)

    gr.api(doctor_api, api_name="doctor", concurrency_id="doctor", concurrency_limit=1)
    gr.api(telemetry_api, api_name="telemetry", queue=False)
    gr.api(device_api, api_name="device", queue=False)
