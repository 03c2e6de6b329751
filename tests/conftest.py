"""Shared fixtures: the one way tests reach ../shared/data, one Ray instance per session, bundled assets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from anomstream.pipeline.assets import SAMPLE_CLIP, SHIPPED_CHECKPOINT

# OpenVINO's usage telemetry left out of the tests too, before any test imports openvino: its forked
# sender made the suite hang at exit without a network (pipeline/backends/ov.py)
sys.modules.setdefault("openvino_telemetry", None)
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
def field_cases(shared_data: Path) -> Path:
    """../shared/cases/field: small inputs from the field with their right results (README there)."""
    folder = shared_data.parent / "cases" / "field"
    if not (folder / "README.md").is_file():
        reason = f"field cases not found at {folder}"
        if os.environ.get("ANOMSTREAM_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; ANOMSTREAM_REQUIRE_DATA=1 requires them")
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def ped2(shared_data: Path) -> Path:
    return shared_data / "ped2"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session."""
    import ray

    from anomstream.pipeline.driver.ray_setup import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shipped_checkpoint() -> Path:
    assert SHIPPED_CHECKPOINT.is_file(), f"shipped checkpoint missing: {SHIPPED_CHECKPOINT}"
    return SHIPPED_CHECKPOINT


@pytest.fixture(scope="session")
def avenue_checkpoint() -> Path:
    """The shipped Avenue checkpoint (configs/avenue_dmad_cpu.yaml, calibrated with position scales)."""
    path = REPO / "configs" / "weights" / "avenue_dmad_cpu.pt"
    assert path.is_file(), f"shipped checkpoint missing: {path}"
    return path


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    assert SAMPLE_CLIP.is_file(), f"bundled clip missing: {SAMPLE_CLIP}"
    return SAMPLE_CLIP


@pytest.fixture(scope="session")
def short_clip(ped2, tmp_path_factory) -> Path:
    """A frame folder of Ped2 test clip 02's first 48 frames (folder name ``short02``): runs that
    test the pipeline's mechanics, not the model, need no 180 frames each."""
    import shutil

    folder = tmp_path_factory.mktemp("clips") / "short02"
    folder.mkdir()
    for path in sorted((ped2 / "testing" / "frames" / "02").iterdir())[:48]:
        shutil.copy(path, folder / path.name)
    return folder


CLEAN_RUN_BATCH = 8


def first_frames(ped2: Path, clip: str, count: int, folder: Path) -> Path:
    """A frame folder ``folder/clip`` holding the first ``count`` frames of Ped2 test clip ``clip``
    (links): the same stream id and rows as the clean run's, fewer of them."""
    made = folder / clip
    made.mkdir(parents=True)
    for frame in sorted((ped2 / "testing" / "frames" / clip).iterdir())[:count]:
        (made / frame.name).symlink_to(frame)
    return made


@pytest.fixture(scope="session")
def clean_run(ray_session, ped2, shipped_checkpoint, tmp_path_factory):
    """(store, report) of Ped2 test clips 01 and 02 (frame folders) scored on the local Ray with 2
    replicas of 1 thread, batches of 8, nothing going wrong: what runs with faults are compared
    with, and what the shipped checkpoint's AUC is measured on."""
    from anomstream.pipeline.config import ScoreSection
    from anomstream.pipeline.driver.plan import RunPlan
    from anomstream.pipeline.driver.run import score_sources

    out = tmp_path_factory.mktemp("clean") / "run.zarr"
    report = score_sources(RunPlan(specs=[str(ped2 / "testing" / "frames" / clip) for clip in ("01", "02")],
                                   checkpoint=str(shipped_checkpoint), out=out,
                                   settings=ScoreSection(replicas=2, batch_size=CLEAN_RUN_BATCH, replica_threads=1),
                                   progress=False))
    return out, report


@pytest.fixture
def http_server(shared_data):
    """A loopback HTTP server over ../shared/data, standing in for an IP camera."""
    from servers import serve_folder

    server = serve_folder(shared_data)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
