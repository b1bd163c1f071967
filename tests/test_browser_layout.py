"""The first five minutes in a real headless Chromium: what a laptop (1366x768) and a phone (390x844) show on load,
whether the examples and every option's label and value can be read there, what a screen reader hears, what the
live telemetry costs an open page, and the Lip-sync example's result.

One app for the module (conftest's running_app) and one browser; each test opens its own page.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import cv2
import numpy as np
import pytest
from conftest import RunningApp, chromium_path

from engine.core.audio import frame_energy, load_audio
from engine.core.media import read_frames
from engine.faces.detection import HaarDetector
from engine.faces.tracking import FaceTracker

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.browser]

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
TABS = ("Lip-sync", "Portrait animation", "ONNX eval", "GPU benchmark", "System")
MAX_KIB_PER_S = 10.0  # what one open page may cost (the strip alone costs about 2 KiB/s on a CPU machine)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
TICKS = "/gradio_api/run/predict"  # where the telemetry's queue-free events go


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser, running_app: RunningApp) -> Iterator:
    """open_page(viewport): a fresh page on the app, once its tabs and the first telemetry line are there."""
    contexts = []

    def open_(viewport: dict[str, int]):
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.goto(running_app.url, wait_until="domcontentloaded")
        main_tab(page, "Lip-sync").wait_for(timeout=60_000)
        sync_api.expect(page.locator("#telemetry-timestamp")).to_contain_text("Updated", timeout=60_000)
        return page

    yield open_
    for context in contexts:
        context.close()


def main_tab(page, name: str):
    """A tab of the main tab bar (the tabs inside a tab have tab bars of their own)."""
    return page.locator("#ab-tabs [role=tablist]").first.get_by_role("tab", name=name, exact=True)


def open_tab(page, name: str) -> None:
    """Click a tab until it is selected: a click that lands while the page is still hydrating is lost."""
    tab = main_tab(page, name)
    for _ in range(3):
        tab.click()
        try:
            sync_api.expect(tab).to_have_attribute("aria-selected", "true", timeout=10_000)
            return
        except AssertionError:
            continue
    sync_api.expect(tab).to_have_attribute("aria-selected", "true", timeout=10_000)


def on_first_screen(page, locator, what: str) -> None:
    """The element is wholly inside the viewport of a page that has not been scrolled."""
    locator.wait_for(timeout=30_000)
    box, view = locator.bounding_box(), page.viewport_size
    assert page.evaluate("window.scrollY") == 0
    assert box is not None, f"{what} is not displayed"
    inside = box["x"] >= 0 and box["y"] >= 0
    inside = inside and box["x"] + box["width"] <= view["width"] and box["y"] + box["height"] <= view["height"]
    where = f"x={box['x']:.0f}+{box['width']:.0f}, y={box['y']:.0f}+{box['height']:.0f}"
    print(f"{what}: {where}")
    assert inside, f"{what} is at {where}, outside the {view['width']}x{view['height']} first screen"


def first_example(page, gallery_id: str):
    """The first example of a tab's gallery (its thumbnails, or the rows of a table of examples)."""
    return page.locator(f"#{gallery_id}").locator(".gallery-item, tbody tr").first


def test_a_laptop_shows_each_tabs_inputs_button_and_examples_on_the_first_screen(open_page) -> None:
    page = open_page(LAPTOP)
    header = page.locator("#ab-tabs [role=tablist]").first.bounding_box()
    print(f"header (banner, telemetry strip, tab bar) ends at y={header['y'] + header['height']:.0f}")
    sync_api.expect(page.locator("#telemetry-panel")).to_be_hidden()  # the full panel waits for "Details"
    on_first_screen(page, page.get_by_role("button", name="Lip-sync", exact=True), "the Lip-sync button")
    on_first_screen(page, first_example(page, "lipsync-examples"), "the first Lip-sync example")
    open_tab(page, "Portrait animation")
    on_first_screen(page, page.get_by_role("button", name="Animate", exact=True), "the Animate button")
    on_first_screen(page, first_example(page, "portrait-examples"), "the first Portrait example")


def test_a_phone_opens_every_tab_and_scrolls_the_doctors_fix_column_into_view(open_page) -> None:
    page = open_page(PHONE)
    for name in TABS:
        sync_api.expect(main_tab(page, name)).to_be_visible()  # in the bar, none behind an overflow menu
        open_tab(page, name)
        page.wait_for_timeout(300)  # the tab's contents lay out
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the {name} tab is {width[0]} px wide on a {width[1]} px screen: clipped"
    sync_api.expect(page.locator("#smi-text")).to_contain_text("Host: CPU", timeout=30_000)  # refreshed once shown
    fix = page.locator("#doctor-report th.ab-fix")
    fix.wait_for(timeout=120_000)
    scroller = page.locator("#doctor-report .ab-scroll")
    widths = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert widths[0] > widths[1], f"the doctor's table ({widths[0]} px) should scroll in its {widths[1]} px box"
    fix.scroll_into_view_if_needed()
    box = fix.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert scroller.evaluate("e => e.scrollLeft") > 0  # the box scrolled, not the page


MIN_CONTROL_PX = 150  # narrower, a control's label wraps a word or two a line (Gradio's own minimum is 160)

# What cannot be read inside `root`: text cut off by a box that hides its overflow (a label's word wider than its
# field, a slider's range, a caption's ellipsis), a text box's value or placeholder wider than the box, a control
# squeezed narrower than `minWidth`, or anything past the right edge of the screen.
UNREADABLE = """([root, minWidth]) => {
  const problems = [];
  const shown = e => { const r = e.getBoundingClientRect(); return r.width > 2 && r.height > 2; };
  const name = e => {
    const label = e.closest('.block')?.querySelector('[data-testid=block-info], .label-text, .caption-label');
    return (label || e).textContent.trim().slice(0, 60);
  };
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode()); ) {
    const text = node.textContent.trim();
    if (!text || !shown(node.parentElement) || node.parentElement.closest('.hide, [aria-hidden=true]')) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter(r => r.width > 0);
    if (rects.some(r => r.right > window.innerWidth + 1)) problems.push(`"${text.slice(0, 50)}" is off the screen`);
    for (let box = node.parentElement; box && box !== root.parentElement; box = box.parentElement) {
      const style = getComputedStyle(box);
      if (style.overflowX === "visible" && style.overflowY === "visible") continue;
      const edge = box.getBoundingClientRect();
      if (edge.width <= 2) break;  // a screen reader's text, kept out of sight on purpose
      if (rects.some(r => r.left < edge.left - 1 || r.right > edge.right + 1 || r.bottom > edge.bottom + 1)) {
        problems.push(`"${text.slice(0, 50)}" is cut off (${edge.width | 0} px box)`);
        break;
      }
    }
  }
  const pen = document.createElement("canvas").getContext("2d");
  for (const input of root.querySelectorAll("input:not([type]), input[type=text], input[type=number]")) {
    const text = input.value || input.placeholder;
    if (!text || !shown(input)) continue;
    const style = getComputedStyle(input);
    pen.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    if (pen.measureText(text).width > room + 1) problems.push(`"${name(input)}": "${text}" is cut off`);
  }
  for (const block of root.querySelectorAll(".block")) {
    if (!shown(block) || !block.querySelector("input, textarea, button.thumbnail-item")) continue;
    const width = block.getBoundingClientRect().width;
    if (width < minWidth) problems.push(`"${name(block)}" is ${width | 0} px wide`);
  }
  return problems;
}"""


def unreadable(page, root) -> list[str]:
    """What cannot be read in `root` (a locator), at the page's width."""
    return page.evaluate(UNREADABLE, [root.element_handle(), MIN_CONTROL_PX])


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_every_example_and_option_label_and_value_can_be_read_on_a_laptop_and_a_phone(open_page, viewport) -> None:
    page = open_page(viewport)
    problems = []
    for tab, prefix in (("Lip-sync", "lipsync"), ("Portrait animation", "portrait")):
        open_tab(page, tab)
        examples = page.locator(f"#{prefix}-examples")
        examples.locator(".thumbnail-item").last.wait_for(timeout=30_000)
        problems += [f"{tab} examples: {p}" for p in unreadable(page, examples)]
        options = page.locator(f"#{prefix}-options")
        options.get_by_role("button", name="Options").click()
        options.locator("input").first.wait_for(timeout=10_000)
        page.wait_for_timeout(300)  # the panel lays out
        problems += [f"{tab} options: {p}" for p in unreadable(page, options)]
    assert not problems, "\n".join(problems)
    # the built-in engine never makes a motion template: no empty box for one
    sync_api.expect(page.get_by_text("Motion template", exact=True)).to_be_hidden()
    # nor empty report boxes before an evaluation or a sweep is shown
    for tab, label in (("ONNX eval", "Full report (JSON)"), ("GPU benchmark", "Report (JSON)")):
        open_tab(page, tab)
        sync_api.expect(page.get_by_text(label, exact=True)).to_be_hidden()


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_the_cost_and_planner_controls_can_be_read_on_a_laptop_and_a_phone(open_page, viewport) -> None:
    """The planner's config.json box, 90 px high under a two-line label, hid its "Click to Upload"; the CPU price's
    placeholder was cut off. (The price tables scroll sideways by design: only the controls are read.)"""
    page = open_page(viewport)
    open_tab(page, "GPU benchmark")
    problems = []
    for accordion, button in (("Cost per request", "Compute cost"), ("Planner: what fits on which GPU", None)):
        page.get_by_text(accordion, exact=True).click()
        page.wait_for_timeout(500)  # the accordion lays out
        opened = page.locator("button", has_text=accordion).locator("xpath=ancestor::div[contains(@class,'block')][1]")
        controls = opened.locator(".row").filter(has=page.get_by_role("button", name=button)).last if button else opened
        problems += [f"{accordion}: {p}" for p in unreadable(page, controls)]
    assert not problems, "\n".join(problems)


def test_a_screen_reader_hears_in_words_that_an_event_finished(open_page) -> None:
    """Gradio 6.31 announces it with a key its own translations lack ("common.complete"); app.py adds the word."""
    page = open_page(LAPTOP)
    page.evaluate("""() => {
      const region = document.querySelector("[aria-live]");
      window.announced = [];
      new MutationObserver(() => window.announced.push(region.textContent.trim()))
        .observe(region, {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_role("button", name="Cancel", exact=True).locator("visible=true").first.click()  # nothing to cancel
    page.wait_for_function("window.announced.some(text => text)", timeout=30_000)
    assert [text for text in page.evaluate("window.announced") if text] == ["Complete"]


class TrafficMeter:
    """Bytes the page receives (responses with their headers, as they came over the network) and sends (request
    bodies), from Chromium's own network events; and the telemetry responses' bodies."""

    def __init__(self, page):
        self.page, self.received, self.sent, self.ticks = page, 0, 0, []
        self.on = False
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.on("Network.loadingFinished", self._finished)
        cdp.on("Network.requestWillBeSent", self._sent)
        page.on("response", lambda r: self.on and TICKS in r.url and self.ticks.append(r))

    def _finished(self, event: dict) -> None:
        if self.on:
            self.received += event.get("encodedDataLength", 0)

    def _sent(self, event: dict) -> None:
        if self.on:
            self.sent += len(event["request"].get("postData") or "")

    def measure(self, seconds: float) -> tuple[float, list[str]]:
        """KiB/s over the next `seconds`, and the bodies of the telemetry responses in that time."""
        self.received = self.sent = 0
        self.ticks = []
        self.on, started = True, time.monotonic()
        self.page.wait_for_timeout(seconds * 1000)
        self.on, elapsed = False, time.monotonic() - started
        bodies = [r.text() for r in self.ticks]
        return (self.received + self.sent) / 1024 / elapsed, bodies


def test_telemetry_costs_an_open_page_at_most_10_kib_per_s_and_plots_only_while_open(open_page) -> None:
    page = open_page(LAPTOP)
    meter = TrafficMeter(page)
    page.wait_for_timeout(2000)  # past the page's first requests
    collapsed, bodies = meter.measure(12)
    print(f"telemetry strip: {collapsed:.2f} KiB/s")
    assert len(bodies) >= 5  # the strip is live
    assert collapsed <= MAX_KIB_PER_S, f"{collapsed:.1f} KiB/s with the full panel collapsed"
    assert not [b for b in bodies if '"plotly"' in b], "the collapsed panel's plots were sent"

    page.locator("#telemetry-toggle").click()
    sync_api.expect(page.locator("#telemetry-util .js-plotly-plot")).to_be_visible(timeout=30_000)
    opened, bodies = meter.measure(12)
    print(f"telemetry strip and open panel: {opened:.2f} KiB/s")
    assert [b for b in bodies if '"plotly"' in b], "the open panel's plots were not refreshed"
    assert opened <= MAX_KIB_PER_S, f"{opened:.1f} KiB/s with the full panel open"

    page.locator("#telemetry-toggle").click()
    sync_api.expect(page.locator("#telemetry-panel")).to_be_hidden(timeout=10_000)
    page.wait_for_timeout(1000)
    _, bodies = meter.measure(8)
    assert len(bodies) >= 3 and not [b for b in bodies if '"plotly"' in b], "plots were sent after collapsing"


HIDE = """hidden => {
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => hidden ? "hidden" : "visible"});
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_telemetry_pauses_while_the_page_is_hidden(open_page) -> None:
    """As when the user switches to another browser tab: the page's visibilityState says hidden."""
    page = open_page(LAPTOP)
    page.locator("#telemetry-toggle").click()  # the open panel's timer pauses too
    sync_api.expect(page.locator("#telemetry-util .js-plotly-plot")).to_be_visible(timeout=30_000)
    meter = TrafficMeter(page)
    page.evaluate(HIDE, True)
    page.wait_for_timeout(1500)  # a request already on its way may still land
    _, hidden = meter.measure(7)
    stamp = page.locator("#telemetry-timestamp").inner_text()
    assert hidden == [], f"{len(hidden)} telemetry update(s) reached a hidden page"
    page.evaluate(HIDE, False)
    _, visible = meter.measure(4)
    assert len(visible) >= 2 and [b for b in visible if "telemetry-timestamp" in b]
    sync_api.expect(page.locator("#telemetry-timestamp")).not_to_have_text(stamp, timeout=10_000)


def _mouth_darkness(frame: np.ndarray, box: tuple[int, int, int, int]) -> int:
    """Dark pixels (the mouth's inside) in the middle half of the box's width, from under the nose to the chin."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    mouth = frame[y1 + round(0.50 * h) : y1 + round(0.80 * h), x1 + round(0.25 * w) : x1 + round(0.75 * w)]
    return int((cv2.cvtColor(mouth, cv2.COLOR_BGR2GRAY) < 60).sum())


def test_the_lipsync_example_makes_a_video_whose_mouth_moves_with_the_speech(open_page, tmp_path) -> None:
    """What a newcomer does first: click the first example, press Lip-sync, watch the result (the baseline engine)."""
    page = open_page(LAPTOP)
    page.locator("#lipsync-examples .thumbnail-item").first.click()
    sync_api.expect(page.locator("img[src*='face.jpg']").first).to_be_visible(timeout=30_000)  # the face's preview
    page.get_by_role("button", name="Lip-sync", exact=True).click()
    result = page.locator("#lipsync-result video")
    # The video made so far shows first (so-far-N.mp4, as the job streams it); then the job's whole MP4.
    sync_api.expect(result).to_have_attribute("src", re.compile(r"lipsync-[0-9a-f]{12}\.mp4"), timeout=180_000)
    response = page.request.get(urljoin(page.url, result.get_attribute("src")))
    assert response.ok, response.status
    (tmp_path / "result.mp4").write_bytes(response.body())
    frames = list(read_frames(tmp_path / "result.mp4"))

    face = cv2.imread(str(ASSETS / "face.jpg"))
    box = FaceTracker().update(HaarDetector().detect([face])[0], face.shape).box
    energy = frame_energy(load_audio(ASSETS / "speech.wav"), 25.0, len(frames))
    closed = _mouth_darkness(face, box)
    darkness = np.array([_mouth_darkness(f, box) - closed for f in frames], np.float64)
    correlation = np.corrcoef(darkness, energy)[0, 1]
    print(f"{len(frames)} frames; the mouth's dark area against the speech energy: r = {correlation:.3f}")
    assert len(frames) >= 200 and frames[0].shape == face.shape  # 9 s of speech at 25 fps
    assert correlation >= 0.8
    assert darkness[energy > 0.8].min() > 0 and darkness[energy < 0.05].max() <= 2  # opens when loud, shut in pauses
    _, top, _, bottom = box
    upper = slice(0, top + (bottom - top) // 3)  # above the nose: untouched (H.264 aside)
    assert max(np.abs(f[upper].astype(int) - face[upper]).mean() for f in frames) < 3


def test_a_reload_keeps_a_queued_lipsync_job_which_the_earlier_runs_list_follows_to_its_video(
    open_page, running_app: RunningApp
) -> None:
    """Press Lip-sync while someone else's job holds the CPU worker, reload the page: the browser's owner cookie
    still names the job, the earlier runs list shows it queued, and Open follows it until its video is made."""
    from gradio_client import Client

    someone_else = Client(running_app.url, verbose=False)
    blocker = someone_else.predict(model="wav2lip", batch="1", device="cpu", runs=2000, api_name="/bench_submit")
    try:
        page = open_page(LAPTOP)
        page.locator("#lipsync-examples .thumbnail-item").first.click()
        sync_api.expect(page.locator("img[src*='face.jpg']").first).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Lip-sync", exact=True).click()
        result = page.locator("#lipsync-result")
        sync_api.expect(result).to_contain_text("queued on cpu", timeout=30_000)  # behind the other job
        cookie = next(c for c in page.context.cookies() if c["name"] == "avatarbench_owner")
        assert re.fullmatch(r"[0-9a-f]{48}", cookie["value"])

        page.reload(wait_until="domcontentloaded")
        main_tab(page, "Lip-sync").wait_for(timeout=60_000)
        assert next(c for c in page.context.cookies() if c["name"] == "avatarbench_owner")["value"] == cookie["value"]
        panel = page.locator(".gradio-container").get_by_text("Your earlier runs", exact=True).locator("visible=true")
        panel.first.click()
        row = page.get_by_role("row").filter(has_text="face.jpg, speech.wav").filter(has_text="queued").first
        sync_api.expect(row).to_be_visible(timeout=30_000)
        cell = row.get_by_role("gridcell").first
        job = cell.inner_text().strip()
        assert re.fullmatch(r"[0-9a-f]{12}", job), job
        cell.click()
        page.get_by_role("button", name="Open", exact=True).locator("visible=true").first.click()
        sync_api.expect(result).to_contain_text("queued on cpu", timeout=30_000)  # followed, not refused
    finally:
        someone_else.predict(blocker["job_id"], api_name="/job_cancel")
    sync_api.expect(result.locator("video")).to_have_attribute("src", re.compile(rf"lipsync-{job}\.mp4"),
                                                               timeout=180_000)  # fmt: skip


def _upload(page, face: Path, speech: Path) -> None:
    """The Lip-sync tab's face photo and speech, as a file picker would give them."""
    page.locator("input[type=file][accept*=image]").first.set_input_files(str(face))
    page.locator("input[type=file][accept*=audio]").first.set_input_files(str(speech))
    sync_api.expect(page.locator(f"img[src*='{face.name}']").first).to_be_visible(timeout=30_000)


def test_on_a_phone_a_failed_lipsync_comes_into_view_and_its_reason_stays_on_the_page(open_page, tmp_path) -> None:
    """The reason was only in a toast that faded, under a bare "Error" badge; on a phone all of it was below the
    screen."""
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    page = open_page(PHONE)
    _upload(page, blank, ASSETS / "speech.wav")
    page.get_by_role("button", name="Lip-sync", exact=True).click()
    summary, result = page.locator("#lipsync-summary"), page.locator("#lipsync-result")
    sync_api.expect(summary).to_contain_text("✗ Failed · job", timeout=60_000)
    sync_api.expect(summary).to_contain_text("no face found in blank.png; use a clear, frontal face photo")
    sync_api.expect(result).to_be_in_viewport(timeout=10_000)
    sync_api.expect(result.get_by_text("Error", exact=True)).to_have_count(0)


def test_a_cancelled_lipsync_is_not_an_error_and_shows_the_video_made_before_it(open_page, tmp_path) -> None:
    from test_musetalk_lipsync import speech_file

    page = open_page(LAPTOP)
    _upload(page, ASSETS / "face.jpg", speech_file(tmp_path / "long.wav", 40.0))  # 1000 frames: time to cancel
    page.get_by_role("button", name="Lip-sync", exact=True).click()
    video = page.locator("#lipsync-result video")
    sync_api.expect(video).to_have_attribute("src", re.compile(r"so-far-\d+\.mp4"), timeout=120_000)
    page.get_by_role("button", name="Cancel", exact=True).locator("visible=true").first.click()
    summary = page.locator("#lipsync-summary")
    sync_api.expect(summary).to_contain_text("Cancelled · job", timeout=30_000)
    sync_api.expect(summary).to_contain_text("cancelled by its owner while it ran")
    sync_api.expect(summary).to_contain_text(re.compile(r"The first \d+\.\d s it made before it stopped are above"))
    sync_api.expect(video).to_have_attribute("src", re.compile(r"so-far-\d+\.mp4"))
    sync_api.expect(page.locator("#lipsync-result").get_by_text("Error", exact=True)).to_have_count(0)
