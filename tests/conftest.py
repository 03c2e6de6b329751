"""Shared fixtures: the one way tests reach ../shared/data, one Ray instance per session, bundled assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.assets import SAMPLE_CLIP, SHIPPED_CHECKPOINT

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ANOMSTREAM_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $ANOMSTREAM_DATA). Missing: skip, or fail when ANOMSTREAM_REQUIRE_DATA=1."""
    if not (SHARED_DATA / "ped2" / "testing" / "frames").is_dir():
        reason = f"shared datasets not found at {SHARED_DATA} (set ANOMSTREAM_DATA to their folder)"
        if os.environ.get("ANOMSTREAM_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; ANOMSTREAM_REQUIRE_DATA=1 requires them")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="session")
def ped2(shared_data: Path) -> Path:
    return shared_data / "ped2"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session."""
    import ray

    from pipeline.orchestrator import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shipped_checkpoint() -> Path:
    assert SHIPPED_CHECKPOINT.is_file(), f"shipped checkpoint missing: {SHIPPED_CHECKPOINT}"
    return SHIPPED_CHECKPOINT


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    assert SAMPLE_CLIP.is_file(), f"bundled clip missing: {SAMPLE_CLIP}"
    return SAMPLE_CLIP


@pytest.fixture
def http_server(shared_data):
    """A loopback HTTP server over ../shared/data, standing in for an IP camera."""
    import functools
    import http.server
    import threading

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            pass  # a camera client that stops reading (max_frames) breaks the pipe: expected

    handler = functools.partial(QuietHandler, directory=str(shared_data))
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
