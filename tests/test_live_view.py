"""The live view in a real headless browser (Debian's chromium and chromedriver, installed by
.ci/run): the page loads, shows each stream's own picture (its size, not the model's input) with
the map laid over it, the frame changes, no console errors."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from servers import free_port

from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.sources.resolve import SourceOptions
from anomstream.pipeline.store.accounting import StreamAccounting
from anomstream.pipeline.stream.live import LiveOptions
from anomstream.pipeline.view import server as view_server
from anomstream.pipeline.view.server import LiveView
from anomstream.pipeline.visualize import map_png, picture_jpeg

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



def test_live_view_page_shows_changing_frames_without_console_errors(ray_session, sample_clip, shipped_checkpoint,
                                                                     tmp_path):
    browser = _browser()
    port = free_port()
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


def _view(frame_time: float, jpeg: bytes, map_bytes: bytes | None) -> dict:
    """One stream's view snapshot as the writer gives it (see workers/writer.py view_snapshot)."""
    return {**StreamAccounting(live=True).attrs(), "trace": [], "fps": 0.0, "frame_time": frame_time,
            "frame_score": 0.1, "picture": "camera", "threshold": None, "events": [], "jpeg": jpeg, "map_png": map_bytes}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_picture_and_its_map_are_served_for_the_frame_the_json_named(monkeypatch):
    monkeypatch.setattr(view_server, "SNAPSHOT_MAX_AGE_S", 0.0)  # every request asks the writer
    now = {"cam": _view(1.5, b"picture one", b"map one")}
    port = free_port()
    server = LiveView(lambda: dict(now), "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}/api/streams/0"
    try:
        assert _get(f"http://127.0.0.1:{port}/api/streams")[0] == 200
        now["cam"] = _view(1.75, b"model input two", None)  # the view moved on between the JSON and the pictures
        assert _get(f"{base}/frame.jpg?t=1.5") == (200, b"picture one")
        assert _get(f"{base}/map.png?t=1.5") == (200, b"map one")
        assert _get(f"{base}/frame.jpg?t=1.75") == (200, b"model input two")
        assert _get(f"{base}/map.png?t=1.75")[0] == 404
        assert _get(f"{base}/frame.jpg?t=9.0")[0] == 404  # not (or no longer) kept: no picture of another frame
        assert _get(f"{base}/frame.jpg") == (200, b"model input two")  # no t: the newest
        assert _get(f"http://127.0.0.1:{port}/api/streams/1/frame.jpg?t=1.5")[0] == 404
    finally:
        server.close()


class _SlowView(LiveView):
    """A view whose pictures take ``delay_s`` to arrive (a slow link)."""

    delay_s = 0.0

    def shown_view(self, index, frame_time):
        time.sleep(self.delay_s)
        return super().shown_view(index, frame_time)


@pytest.mark.parametrize(("delay_s", "least_frames", "watch_s"), [(0.0, 6, 6.0), (0.7, 3, 12.0)])
def test_the_page_swaps_a_picture_and_its_map_together_and_keeps_the_last_pair_when_one_fails(delay_s, least_frames,
                                                                                              watch_s):
    """Frames change every 0.25 s and every third one's map is broken: the page shows picture and map
    of one frame, never a failed one; with pictures slower than its 0.5 s polling (0.7 s), it still
    shows the newest frames it can load (not none: each new frame used to cancel the last)."""
    rng = np.random.default_rng(0)
    pictures = [picture_jpeg(rng.integers(0, 255, (240, 360, 3), np.uint8), 360) for _ in range(2)]
    map_bytes = map_png(rng.random((240, 360)).astype(np.float32), 1.0)
    start = time.monotonic()

    def snapshot() -> dict:
        n = int((time.monotonic() - start) * 4)  # a new frame every 0.25 s; every third one's map is broken
        return {"cam": _view(100.0 + n, pictures[n % 2], b"not a png" if n % 3 == 2 else map_bytes)}

    browser = _browser()
    port = free_port()
    server = _SlowView(snapshot, "127.0.0.1", port)
    server.delay_s = delay_s
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        shown, samples = set(), 0
        while time.monotonic() - start < watch_s:  # slow pictures under a loaded CI: 2 frames in 6 s seen
            pair = browser.execute_script(
                "return [...document.querySelectorAll('.stream .picture img')].map(i => [i.className, i.complete, "
                "i.naturalWidth, new URL(i.src || location.href).searchParams.get('t')])")
            if len(pair) == 2 and pair[0][3] is not None:  # none until the first /api/streams answer
                samples += 1
                picture, overlay = pair
                assert picture[1:3] == [True, 360] and overlay[1:3] == [True, 360] and picture[3] == overlay[3], pair
                assert (int(float(picture[3])) - 100) % 3 != 2, pair  # a frame whose map failed is never shown
                shown.add(picture[3])
            time.sleep(0.05)
        assert samples > 20 and len(shown) >= least_frames, (samples, shown)
    finally:
        browser.quit()
        server.close()
