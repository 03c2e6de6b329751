"""Whether a calibrated model fits the scene (pipeline/calibration/scene.py): blocks judged on
scores drawn as a calibration promises them, and on a scene the model does not know."""

from __future__ import annotations

import numpy as np
import pytest

from anomstream.pipeline.calibration.scene import SceneCheck, scene_line


def _block(rng, start: int, frames: int, rate: float, threshold: float = 3.0):
    """Scores of ``frames`` frames, each above ``threshold`` with probability ``rate``."""
    above = rng.random(frames) < rate
    score = np.where(above, threshold + 1.0, threshold - 1.0)
    return np.arange(start, start + frames), score, np.ones(frames, bool)


def test_a_scene_like_the_calibration_fits_and_an_unknown_one_is_a_misfit():
    rng = np.random.default_rng(0)
    fits = SceneCheck(3.0, 1e-3, smoothing=1, frames=600)
    verdict = fits.feed(*_block(rng, 0, 600, 1e-3))
    assert verdict.state == "fits" and fits.state == "fits" and verdict.frames == 600
    assert fits.feed(*_block(rng, 600, 600, 0.01)) is None  # ten times the rate, still far from most frames
    misfit = SceneCheck(3.0, 1e-3, smoothing=10, frames=600)
    assert misfit.feed(*_block(rng, 0, 99, 0.9)) is None  # not judged before 100 frames
    verdict = misfit.feed(*_block(rng, 99, 1, 0.9))  # a misfit is told early: 100 frames already say it
    assert verdict.state == "misfit" and verdict.share > 0.8 and verdict.p_value < 1e-6 and verdict.frames == 100
    assert (verdict.first_frame, verdict.last_frame) == (0, 99)
    assert misfit.feed(*_block(rng, 100, 600, 0.9)) is None  # still a misfit: said once
    line = scene_line("street", verdict.to_dict())
    assert line.startswith("street: the model does not fit this scene: ") and "0.10%" in line
    assert line.endswith("anomstream fit FOOTAGE --out model.pt (docs/own-camera.md)")
    unsure = SceneCheck(3.0, 1e-3, smoothing=10, frames=600)  # 30 % above: not early, and not a misfit at 600
    assert unsure.feed(*_block(rng, 0, 599, 0.3)) is None and unsure.feed(*_block(rng, 599, 1, 0.3)).state == "fits"


def test_a_scene_that_turns_unlike_later_is_drift_and_fits_again_after():
    rng = np.random.default_rng(1)
    check = SceneCheck(3.0, 1e-3, smoothing=5, frames=300)
    states = []
    for rate in (1e-3, 1e-3, 0.95, 0.95, 1e-3):
        start = 300 * len(states)
        verdict = check.feed(*_block(rng, start, 300, rate))
        states.append(verdict.state if verdict else None)
    assert states == ["fits", None, "drift", None, "fits"]
    assert scene_line("cam", check.latest.to_dict()).startswith("cam: the model fits the scene again")


def test_unscored_rows_are_not_counted():
    check = SceneCheck(3.0, 1e-3, frames=10)
    frame_index, score = np.arange(20), np.full(20, 9.0)
    scored = np.arange(20) % 2 == 0
    verdict = check.feed(frame_index, score, scored)
    assert verdict.frames == 10 and verdict.last_frame == 18 and verdict.state == "misfit"


def test_the_shipped_walkway_model_on_a_street_warns_that_it_does_not_fit(ray_session, shared_data, shipped_checkpoint,
                                                                          tmp_path, capsys):
    """The issue's case: the shipped Ped2 (walkway) model scores vtest.avi (a street)."""
    import json

    from anomstream.pipeline.cli import main
    from anomstream.pipeline.store import open_results

    out = tmp_path / "street.zarr"
    code = main(["score", f"{shared_data / 'vtest.avi'}?end=20s", "--out", str(out), "--checkpoint", str(shipped_checkpoint),
                 "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    scene = open_results(out)["vtest_end20s"].attrs["scene"]
    assert scene["state"] == "misfit" and scene["frames"] == 100 and scene["share"] > 0.5  # told after 100 frames
    assert scene["expected"] == pytest.approx(10 ** -scene["threshold"], rel=0.01)
    warning = [line for line in printed.err.splitlines() if "does not fit this scene" in line]
    assert warning == [f"warning: {scene_line('vtest_end20s', scene)}"]
    logged = [json.loads(line) for line in (tmp_path / "street.events" / "events.jsonl").read_text().splitlines()]
    assert [m["type"] for m in logged if m["type"].startswith("scene_")] == ["scene_misfit"]
