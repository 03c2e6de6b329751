"""Live runs end to end on Ray against loopback MJPEG cameras (stopped and restarted by PID) and
recordings played in real time: reconnects, gaps, stalls, frozen feeds, policies, accounting, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from servers import REPO, LoopbackCamera

from anomstream.pipeline.cli import main
from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.store import FrameStatus, open_results

S = FrameStatus


@pytest.fixture
def vtest(shared_data):
    return shared_data / "vtest.avi"


def _wait_for_rows(out, rows: int, timeout_s: float = 120) -> None:
    """Until some stream of the store ``out`` has ``rows`` rows on disk (the run is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            root = open_results(out)
            if any(root[key].attrs.get("written", 0) >= rows for key in root.group_keys()):
                return
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.2)


def _accounted(group) -> dict[str, int]:
    """Checks, with the store's arrays only, that every captured frame has one row and one status
    and that the attrs say the same; returns the counts per status."""
    status, frame_index = group["status"][:], group["frame_index"][:]
    assert len(status) == group.attrs["written"] and (status != 255).all()
    np.testing.assert_array_equal(frame_index, np.arange(len(frame_index)))  # nothing lost, nothing twice
    counts = {name: int((status == code).sum()) for name, code in group.attrs["status_codes"].items()}
    assert counts == group.attrs["frame_counts"] and sum(counts.values()) == len(status)
    np.testing.assert_array_equal(group["valid"][:], status == S.SCORED)
    assert np.isfinite(group["score"][:][status == S.SCORED]).all() and np.isnan(group["score"][:][status != S.SCORED]).all()
    return counts


def test_camera_restart_is_a_gap_and_the_other_stream_goes_on(ray_session, vtest, shipped_checkpoint, tmp_path,
                                                               capsys):
    down, up = LoopbackCamera(vtest, 10), LoopbackCamera(vtest, 10)
    out = tmp_path / "live.zarr"
    times = {}

    def outage():
        _wait_for_rows(out, 20)
        down.stop()  # SIGKILL, then waited for: no frame leaves the camera after this moment
        times["killed"] = time.time()
        time.sleep(3)
        down.start()
        times["back"] = time.time()

    threading.Thread(target=outage, daemon=True).start()
    try:
        code = main(["live", down.url, up.url, "--out", str(out), "--duration", "16", "--policy", "latest",
                     "--checkpoint", str(shipped_checkpoint), "--quiet"])
    finally:
        down.stop(), up.stop()
    printed = capsys.readouterr()
    assert code == 0, printed.err
    root = open_results(out)
    by_source = {root[key].attrs["source"]: root[key] for key in root.group_keys()}
    restarted, steady = by_source[down.url], by_source[up.url]
    for group in (restarted, steady):
        assert group.attrs["complete"] is True and group.attrs["stopped"] is True and group.attrs["error"] is None
    (gap,) = restarted.attrs["gaps"]
    assert gap["kind"] == "disconnect" and restarted.attrs["reconnections"] == 1
    assert times["killed"] - 1.0 < gap["start"] <= times["killed"]  # the last frame before the kill
    assert times["back"] <= gap["end"] < times["back"] + 5.0  # the first frame after the restart (backoff)
    timestamps, status = restarted["timestamp"][:], restarted["status"][:]
    after = timestamps >= gap["end"]
    assert (status[after][:4] == S.SOURCE_GAP).all() and (status[after] == S.SCORED).sum() > 20  # scored again
    before = timestamps <= gap["start"]
    assert before.sum() > 10 and (status[before] == S.SOURCE_GAP).sum() == 0
    counts = _accounted(restarted)
    assert counts["source_gap"] == 4 and counts["warmup"] == 4
    steady_counts = _accounted(steady)
    assert steady.attrs["gaps"] == [] and steady_counts["source_gap"] == 0
    assert np.diff(steady["timestamp"][:]).max() < 1.0  # the other camera's outage did not touch this one
    assert steady_counts["scored"] > 30
    for group in (restarted, steady):
        assert set(group.attrs["latency_ms"]) == {"p50", "p95", "p99"} and group.attrs["latency_ms"]["p50"] > 0
    assert "latency ms p50" in printed.out


def test_stalled_and_frozen_cameras_are_gaps_not_scores(ray_session, vtest, shipped_checkpoint, tmp_path):
    stalled = LoopbackCamera(vtest, 10, "--stall-after", "4")
    frozen = LoopbackCamera(vtest, 10, "--freeze-after", "4")
    out = tmp_path / "stall.zarr"
    try:
        code = main(["live", stalled.url, frozen.url, "--out", str(out), "--duration", "12", "--stall-timeout", "1.5",
                     "--frozen-after", "1", "--checkpoint", str(shipped_checkpoint), "--quiet"])
    finally:
        stalled.stop(), frozen.stop()
    assert code == 0
    root = open_results(out)
    by_source = {root[key].attrs["source"]: root[key] for key in root.group_keys()}
    stall_group, frozen_group = by_source[stalled.url], by_source[frozen.url]
    stall_gaps = stall_group.attrs["gaps"]
    assert [gap["kind"] for gap in stall_gaps] == ["stall"]  # still open at the end: closed there
    assert stall_gaps[0]["end"] - stall_gaps[0]["start"] > 3
    _accounted(stall_group)
    (frozen_gap,) = frozen_group.attrs["gaps"]
    assert frozen_gap["kind"] == "frozen"
    counts = _accounted(frozen_group)
    assert counts["frozen"] > 20 and counts["scored"] > 5
    status = frozen_group["status"][:]
    assert (status[np.argmax(status == S.FROZEN):] == S.FROZEN).all()  # never scored again while frozen


def test_unreachable_camera_retries_then_one_line_error(ray_session, shipped_checkpoint, tmp_path, capsys):
    url = "http://127.0.0.1:9/"
    started = time.monotonic()
    code = main(["live", url, "--out", str(tmp_path / "none.zarr"), "--reconnect-attempts", "2",
                 "--checkpoint", str(shipped_checkpoint), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.monotonic() - started < 60
    assert err == [f"error: http_127.0.0.1_9: {url}: camera is unreachable or cannot be opened (2 reconnection attempts failed) "
                   f"(frames before it are kept: 0)"]


def _reference_scores(clip, checkpoint, out) -> np.ndarray:
    settings = ScoreSection(replicas=1, precision="fp32")  # what the live runs below score in
    score_sources(RunPlan(specs=[str(clip)], checkpoint=str(checkpoint), out=out, settings=settings, progress=False))
    return open_results(out)["ped2_test02"]["score_raw"][:]


def test_latest_drops_whole_windows_and_every_drops_nothing(ray_session, sample_clip, shipped_checkpoint, tmp_path):
    """Two recordings at 25 fps are more than two CPU replicas can score: ``latest`` drops, and what it
    scores comes from whole windows (the same scores as an offline run); ``every`` scores every frame."""
    reference = _reference_scores(sample_clip, shipped_checkpoint, tmp_path / "offline.zarr")
    out = tmp_path / "latest.zarr"
    # fp32: the model must be slower than two 25 fps recordings for "latest" to drop (int8 keeps up here)
    code = main(["live", str(sample_clip), str(sample_clip), "--out", str(out), "--policy", "latest",
                 "--max-frames", "80", "--checkpoint", str(shipped_checkpoint), "--precision", "fp32", "--quiet"])
    assert code == 0
    root = open_results(out)
    for key in root.group_keys():
        group = root[key]
        counts = _accounted(group)
        assert group["status"].shape == (80,) and counts["dropped_behind"] > 0 and counts["scored"] > 0
        scored = group["status"][:] == S.SCORED
        np.testing.assert_allclose(group["score_raw"][:][scored], reference[:80][scored], rtol=1e-4, atol=1e-5)
        assert np.isfinite(group["score"][:][scored]).all()  # calibrated over the frames it scored
        assert group.attrs["complete"] is True and group.attrs["stopped"] is False

    out = tmp_path / "every.zarr"
    code = main(["live", str(sample_clip), "--out", str(out), "--policy", "every", "--max-frames", "40",
                 "--checkpoint", str(shipped_checkpoint), "--precision", "fp32", "--quiet"])
    assert code == 0
    group = open_results(out)["ped2_test02"]
    assert _accounted(group) == {**dict.fromkeys(S.codes(), 0), "scored": 36, "warmup": 4}
    np.testing.assert_allclose(group["score_raw"][:][4:], reference[4:40], rtol=1e-4, atol=1e-5)


def _live_signalled_when(url: str, out: Path, ready, *options: str) -> tuple[int, str, str]:
    """``anomstream live URL --out OUT OPTIONS --quiet`` in a process of its own, sent SIGTERM once
    ``ready(pid)`` holds (polled for 120 s at most): (exit status, stdout, stderr)."""
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "live", url, "--out", str(out), *options, "--quiet"]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None and not ready(run.pid):
            time.sleep(0.005)
        os.kill(run.pid, signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
    return run.returncode, stdout, stderr


def test_sigterm_while_starting_stops_cleanly_and_leaves_a_readable_store(vtest, shipped_checkpoint, tmp_path):
    """SIGTERM as soon as the store exists (Ray up, replicas still loading the model): exit 0, the
    stream closed as stopped, every row accounted for."""
    camera = LoopbackCamera(vtest, 10)
    out = tmp_path / "term.zarr"
    try:
        code, stdout, stderr = _live_signalled_when(camera.url, out, lambda pid: (out / "zarr.json").exists(),
                                                    "--checkpoint", str(shipped_checkpoint))
    finally:
        camera.stop()
    assert code == 0, stderr
    (key,) = open_results(out).group_keys()
    group = open_results(out)[key]
    assert group.attrs["stopped"] is True and group.attrs["complete"] is True
    counts = _accounted(group)
    assert f"{key}: " in stdout and "latency ms" in stdout
    if sum(counts.values()) == 0:
        assert f"warning: {key}: {camera.url}: no frame received before the run stopped" in stderr


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler of its own for SIGTERM (/proc/PID/status, SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def test_sigterm_before_the_model_is_loaded_ends_live_cleanly_with_nothing_written(tmp_path):
    """SIGTERM in the first seconds (imports, the checkpoint), before the run knows its sources:
    it ended the process (exit 15, a Ray started by then left behind); now exit 0 and one line,
    and nothing is started."""
    out = tmp_path / "early.zarr"
    code, stdout, stderr = _live_signalled_when("rtsp://127.0.0.1:9/cam", out, _catches_sigterm)
    assert code == 0, stderr
    assert stderr == "stopped while the run started: nothing was read or written\n" and stdout == ""
    assert not out.exists()


def test_sigterm_while_ray_starts_stops_cleanly(tmp_path):
    """SIGTERM as soon as ray.init has started Ray's first process: Ray's own handlers (sys.exit,
    and abseil's in the driver's core worker) ended the run with exit 15 or -6 and left Ray's
    processes behind; now the run's handler stays and it stops cleanly."""
    def started_ray(pid: int) -> bool:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().strip())

    code, _, stderr = _live_signalled_when("rtsp://127.0.0.1:9/cam", tmp_path / "ray.zarr", started_ray)
    assert code == 0, stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr


def test_live_refuses_resume_and_a_taken_view_port_and_redacts_secrets(ray_session, shipped_checkpoint, tmp_path,
                                                                         capsys):
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    for command in ("live", "score"):  # a camera under score is live too
        assert main([command, "rtsp://127.0.0.1:9/cam", "--out", str(tmp_path / "r.zarr"), "--resume"]) == 2
        assert capsys.readouterr().err.startswith("error: --resume: a live stream cannot continue a store")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # live's set back
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["live", "rtsp://127.0.0.1:9/cam", "--out", str(tmp_path / "v.zarr"), "--view", str(port)]) == 2
        assert capsys.readouterr().err == f"error: --view: cannot serve on 127.0.0.1:{port} (Address already in use)\n"
        assert main(["live", "rtsp://127.0.0.1:9/cam", "--out", str(tmp_path / "v.zarr"), "--view", str(port + 1),
                     "--metrics", str(port + 1)]) == 2
    assert capsys.readouterr().err == (f"error: --metrics {port + 1}: the port --view serves on (the live view serves "
                                       f"/metrics and /healthz too); give another port or leave --metrics out\n")
    assert not (tmp_path / "v.zarr").exists()
    url = "http://admin:pw123@127.0.0.1:9/x?token=s3cret"
    code = main(["live", url, "--out", str(tmp_path / "s.zarr"), "--reconnect-attempts", "0",
                 "--checkpoint", str(shipped_checkpoint), "--quiet"])
    printed = capsys.readouterr()
    assert code == 2 and "pw123" not in printed.out + printed.err and "s3cret" not in printed.out + printed.err
    assert printed.err.strip() == ("error: http_127.0.0.1_9_x: http://admin:***@127.0.0.1:9/x?***: camera is unreachable "
                                   "or cannot be opened (frames before it are kept: 0)")
    group = open_results(tmp_path / "s.zarr")["http_127.0.0.1_9_x"]
    assert group.attrs["source"] == "http://admin:***@127.0.0.1:9/x?***" and "pw123" not in str(dict(group.attrs))
