"""The live view in a real headless browser (Debian's chromium and chromedriver, installed by
.ci/run): the page loads, shows each stream's own picture (its size, not the model's input) with
the map laid over it, the frame changes, no console errors."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.sources.resolve import SourceOptions
from anomstream.pipeline.stream.live import LiveOptions

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium and chromedriver are not installed (.ci/run installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=840,820"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_live_view_page_shows_changing_frames_without_console_errors(ray_session, sample_clip, shipped_checkpoint,
                                                                     tmp_path):
    browser = _browser()
    port = _free_port()
    reports = []
    plan = RunPlan(specs=[str(sample_clip), str(sample_clip)], checkpoint=str(shipped_checkpoint),
                   out=tmp_path / "view.zarr", progress=False, source_options=SourceOptions(realtime=True),
                   live=LiveOptions(policy="latest"), view=("127.0.0.1", port))
    run = threading.Thread(target=lambda: reports.append(score_sources(plan)), daemon=True)
    run.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.title == "anomstream live"

        def shown():
            return browser.execute_script(
                "return [...document.querySelectorAll('.stream .picture img:not(.map)')]"
                ".map(i => [i.complete && i.naturalWidth, i.src])")

        seen: list = []
        while time.monotonic() < deadline and not (len(seen) >= 2 and seen[-1] != seen[0]):
            images = shown()
            if len(images) == 2 and all(width for width, _ in images):
                if not seen or images != seen[-1]:
                    seen.append(images)
            time.sleep(0.3)
        assert len(seen) >= 2, f"the page never showed two streams' frames changing: {shown()}"
        cards = browser.find_elements("css selector", ".stream")
        assert len(cards) == 2 and "latency p50" in cards[0].text and "fps" in cards[0].text
        picture = cards[0].find_element("css selector", ".picture")
        first = picture.screenshot_as_png
        time.sleep(1.5)
        assert picture.screenshot_as_png != first  # the picture itself changes
        # the camera's own picture (Ped2: 360x240), not the 128 px model input; its map laid over it
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('.stream .picture img')].map(i => [i.className, i.naturalWidth, "
            "i.naturalHeight, i.getBoundingClientRect().width, i.getBoundingClientRect().height])")
        pictures = [size for size in sizes if size[0] == ""]
        maps = [size for size in sizes if size[0] == "map"]
        assert [size[1:3] for size in pictures] == [[360, 240], [360, 240]], sizes
        assert all(size[1] > 0 for size in maps) and [size[3:] for size in maps] == [size[3:] for size in pictures]
        assert abs(pictures[0][3] / pictures[0][4] - 1.5) < 0.02  # shown at its own aspect ratio
        screenshot = Path(os.environ.get("ANOMSTREAM_VIEW_SCREENSHOT", tmp_path / "live_view.png"))
        browser.save_screenshot(str(screenshot))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()
        run.join(timeout=120)
    assert reports and reports[0].frames == 360 and not reports[0].errors
