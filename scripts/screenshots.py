"""The README's pictures of the five tabs, taken from the running app in headless Chromium (`make screenshot`).

Starts app.py on a free port with its data in a temporary folder (nothing of yours is touched), opens it at
1366x768 as a laptop would, does each tab's first action (the Lip-sync and Portrait examples, the ONNX example's
evaluation and a sweep at their defaults, the doctor) and saves each tab as assets/screenshot-<tab>.jpg. The
pictures show what this machine did: on one without a GPU, the baseline engines and CPU figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1366, "height": 768}
MAX_HEIGHT = 1500  # pixels of the page kept below its top: the first screen and the result beside it
WAIT_MS = 240_000  # a CPU-only machine runs each action in well under a minute; this is the limit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, AVATARBENCH_DATA_DIR=str(data), GRADIO_ANALYTICS_ENABLED="False")
    log = open(data / "app.log", "wb")  # noqa: SIM115 - the app's log for as long as it runs
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"app.py exited with {proc.returncode}; see {data / 'app.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"app.py did not answer within 180 s; see {data / 'app.log'}")


def _lipsync(page, expect) -> None:
    page.locator("#lipsync-examples .thumbnail-item").first.click()
    expect(page.locator("img[src*='face.jpg']").first).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Lip-sync", exact=True).click()
    final = re.compile(r"lipsync-[0-9a-f]{12}\.mp4")  # the job's whole MP4, after the video made so far
    expect(page.locator("#lipsync-result video")).to_have_attribute("src", final, timeout=WAIT_MS)


def _portrait(page, expect) -> None:
    page.locator("#portrait-examples .thumbnail-item").first.click()
    expect(page.locator("video[src*='driving']").first).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Animate", exact=True).click()
    final = re.compile(r"portrait-[0-9a-f]{12}\.mp4")  # the job's whole MP4, after the video made so far
    expect(page.locator("#portrait-result video")).to_have_attribute("src", final, timeout=WAIT_MS)


def _onnx(page, expect) -> None:
    page.get_by_role("button", name="Inspect", exact=True).click()
    page.get_by_role("button", name="Queue evaluation").click()
    expect(page.locator("body")).to_contain_text("sessions:", timeout=WAIT_MS)  # the result's summary


def _bench(page, expect) -> None:
    page.get_by_role("button", name="Queue sweep").click()
    expect(page.locator("body")).to_contain_text("GFLOP per sample", timeout=WAIT_MS)


def _system(page, expect) -> None:
    expect(page.locator("#doctor-report table")).to_be_visible(timeout=WAIT_MS)


TABS: dict[str, tuple[str, Callable]] = {  # file name: (the tab's label, its first action)
    "lipsync": ("Lip-sync", _lipsync),
    "portrait": ("Portrait animation", _portrait),
    "onnx": ("ONNX eval", _onnx),
    "bench": ("GPU benchmark", _bench),
    "system": ("System", _system),
}


def _open(page, expect, label: str) -> None:
    """Click a tab until it is selected (a click while the page is still hydrating is lost)."""
    tab = page.locator("#ab-tabs [role=tablist]").first.get_by_role("tab", name=label, exact=True)
    for _ in range(3):
        tab.click()
        try:
            expect(tab).to_have_attribute("aria-selected", "true", timeout=10_000)
            return
        except AssertionError:
            continue
    raise SystemExit(f"the {label} tab did not open")


def _save(png: bytes, out: Path) -> None:
    """The top MAX_HEIGHT pixels of the page as a JPEG (about a tenth of the PNG's size)."""
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:MAX_HEIGHT]
    cv2.imwrite(str(out), picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"{out.relative_to(ROOT)}: {picture.shape[1]}x{picture.shape[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="folder for screenshot-<tab>.jpg")
    parser.add_argument("--tabs", default=",".join(TABS), help=f"which, comma-separated (of {', '.join(TABS)})")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    chromium = os.environ.get("AB_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium (apt-get install chromium) or AB_TEST_CHROMIUM")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="avatarbench-screenshots-") as data:
        proc, url = _serve(Path(data))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url, wait_until="domcontentloaded")
                expect(page.locator("#telemetry-timestamp")).to_contain_text("Updated", timeout=60_000)
                for name in args.tabs.split(","):
                    label, action = TABS[name]
                    _open(page, expect, label)
                    action(page, expect)
                    page.wait_for_timeout(1500)  # charts and previews finish drawing
                    page.evaluate("window.scrollTo(0, 0)")
                    _save(page.screenshot(full_page=True), args.out / f"screenshot-{name}.jpg")
                browser.close()
        finally:
            proc.send_signal(2)
            proc.wait(60)


if __name__ == "__main__":
    main()
