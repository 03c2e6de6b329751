"""Calibrated causal scores: the rarity mapping, the trailing window across batches, calibration
files, and `anomstream calibrate` on real normal footage used by `anomstream score`."""

from __future__ import annotations

import numpy as np
import pytest

from anomstream.pipeline.calibration.fit import position_statistics
from anomstream.pipeline.calibration.scores import Calibration, StreamCalibrator, fit_rarity, term_statistics
from anomstream.pipeline.calibration.stored import load_calibration, run_calibration, save_calibration
from anomstream.pipeline.checkpoint import file_sha256, read_checkpoint, write_payload
from anomstream.pipeline.cli import main
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.store import open_results


def _calibration(sample: np.ndarray, smoothing: int = 1, rate: float = 1e-2) -> Calibration:
    quantiles, tail = fit_rarity(sample)
    return Calibration("dmad", {"a": term_statistics(sample, 1.0)}, smoothing, quantiles, tail, rate, "normal", len(sample))


def test_rarity_is_the_false_alarm_rate_on_normal_data():
    rng = np.random.default_rng(0)
    normal = rng.gumbel(size=20000)
    calibration = _calibration(normal[:10000])
    assert calibration.threshold == pytest.approx(2.0)
    fresh = calibration.rarity(normal[10000:])  # held out normal values: the threshold passes ~1 %
    assert 0.007 < np.mean(fresh > calibration.threshold) < 0.013
    assert 0.07 < np.mean(fresh > 1.0) < 0.13
    grid = np.linspace(-5, 30, 500)
    assert np.all(np.diff(calibration.rarity(grid)) >= 0) and calibration.rarity(np.array([30.0]))[0] > 8
    assert calibration.rarity(np.array([-10.0]))[0] == 0.0 and np.isnan(calibration.rarity(np.array([np.nan]))[0])


def test_trailing_window_is_the_same_however_rows_are_batched():
    rng = np.random.default_rng(1)
    calibration = _calibration(rng.normal(size=1000), smoothing=5)
    frames = np.arange(40)
    terms = {"a": rng.normal(size=40) * 3}
    scored = rng.random(40) > 0.2
    whole = StreamCalibrator(calibration)(frames, terms, scored)
    pieces = StreamCalibrator(calibration)
    parts = [pieces(frames[s], {"a": terms["a"][s]}, scored[s]) for s in np.array_split(np.arange(40), 9)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert np.isnan(whole[~scored]).all() and np.isfinite(whole[scored]).all()
    # by hand at one frame: the mean of the standardised term over the scored frames of the last 5
    t = int(np.flatnonzero(scored)[-1])
    stats = calibration.terms["a"]
    window = [(terms["a"][f] - stats.median) / stats.scale for f in range(t - 4, t + 1) if scored[f]]
    shrunk = np.mean(window) * (len(window) / 5) ** 0.5  # fewer than 5 values: shrunk towards the normal level
    assert whole[t] == pytest.approx(calibration.rarity(np.array([shrunk]))[0], rel=1e-6)


def test_position_statistics_are_the_median_and_a_floored_robust_scale():
    maps = np.stack([np.full((2, 3), value, np.float32) for value in (1.0, 2.0, 4.0)])
    maps[:, 0, 0] = 5.0  # a position that never changes in the normal maps
    median, scale = position_statistics(maps)
    assert median[0, 0] == 5.0 and np.all(median.ravel()[1:] == 2.0)
    assert np.allclose(scale.ravel()[1:], 1.4826)  # MAD of (1, 2, 4) is 1
    assert scale[0, 0] == pytest.approx(0.1 * 5 * 1.4826 / 6)  # floored at 0.1 of the mean scale
    assert median.dtype == scale.dtype == np.float32


def test_calibration_files_round_trip_and_are_checked(tmp_path, shipped_checkpoint):
    calibration = _calibration(np.random.default_rng(2).normal(size=500))
    calibration.reference = {"gradient_difference": np.ones((4, 4), np.float32)}
    calibration.checkpoint_sha256 = "0" * 64
    save_calibration(calibration, tmp_path / "c.pt")
    loaded = load_calibration(tmp_path / "c.pt")
    assert loaded.summary() == calibration.summary() and loaded.reference["gradient_difference"].shape == (4, 4)
    assert "position_scale" not in calibration.summary()  # as in stores from before the option: they resume
    payload = read_checkpoint(shipped_checkpoint)
    with pytest.raises(AnomstreamError, match=r"^--calibration .*c.pt: fitted for another checkpoint \(sha256 000000000000...\); "
                                              r"run anomstream calibrate for this one$"):
        run_calibration(payload, file_sha256(shipped_checkpoint), tmp_path / "c.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a calibration")
    with pytest.raises(AnomstreamError, match=r"^--calibration .*bad.pt: not an anomstream calibration file \(\w+\)$"):
        load_calibration(tmp_path / "bad.pt")
    with pytest.raises(AnomstreamError, match=r"^--calibration .*none.pt: file not found$"):
        load_calibration(tmp_path / "none.pt")


def test_calibrate_on_normal_footage_then_score_with_it(ray_session, ped2, short_clip, shipped_checkpoint, tmp_path,
                                                        capsys):
    """`anomstream calibrate` on one Ped2 training clip (normal only); `score --calibration` uses it;
    a checkpoint without a calibration of its own stores raw scores."""
    bare = tmp_path / "bare.pt"
    payload = read_checkpoint(shipped_checkpoint)
    write_payload(bare, {key: value for key, value in payload.items() if key != "calibration"})
    normal = ped2 / "training" / "frames" / "01"
    assert main(["calibrate", str(bare), "--data", str(normal), "--smoothing", "5", "--false-alarm-rate", "0.01",
                 "--position-scale", "--quiet", "--threads", "2"]) == 0
    written = tmp_path / "bare.calibration.pt"
    assert capsys.readouterr().out == (f"calibration: {written}  normal frames: 116  smoothing: 5  position scale: on  "
                                       f"threshold: 2.00 "
                                       f"(false-alarm rate 0.01 per frame)\n")
    calibration = load_calibration(written)
    assert calibration.checkpoint_sha256 == file_sha256(bare) and calibration.data == str(normal)
    assert calibration.reference["gradient_difference"].shape == (128, 128)
    scale = calibration.reference["gradient_difference_scale"]
    assert scale.shape == (128, 128) and scale.min() > 0 and calibration.summary()["position_scale"] is True
    assert set(calibration.terms) == {"gradient_excess", "deformation"}

    assert main(["score", str(short_clip), "--checkpoint", str(bare), "--out", str(tmp_path / "raw.zarr"), "--quiet"]) == 0
    assert main(["score", str(short_clip), "--checkpoint", str(bare), "--out", str(tmp_path / "cal.zarr"),
                 "--calibration", str(written), "--event-threshold", "99", "--quiet"]) == 0
    raw, calibrated = open_results(tmp_path / "raw.zarr"), open_results(tmp_path / "cal.zarr")
    assert raw.attrs["score_kind"] == "raw" and raw.attrs["calibration"] is None
    assert calibrated.attrs["score_kind"] == "calibrated" and calibrated.attrs["calibration"]["smoothing"] == 5
    assert calibrated.attrs["events"]["threshold"] == 99 and calibrated.attrs["events"]["low_threshold"] == 98
    a, b = raw["short02"], calibrated["short02"]
    np.testing.assert_array_equal(a["score"][:], a["score_raw"][:])
    np.testing.assert_allclose(b["score_raw"][:], a["score_raw"][:], rtol=1e-5, equal_nan=True)
    scored = b["valid"][:]
    assert np.all(b["score"][:][scored] >= 0) and not np.allclose(b["score"][:][scored], b["score_raw"][:][scored])
    # the reference changes only the term that uses it
    np.testing.assert_allclose(b["term_deformation"][:], a["term_deformation"][:], rtol=1e-5, equal_nan=True)
    assert not np.allclose(b["term_gradient_excess"][:][scored], a["term_gradient_excess"][:][scored])

    code = main(["score", str(short_clip), "--out", str(tmp_path / "x.zarr"), "--calibration", str(written), "--quiet"])
    assert (code, capsys.readouterr().err.splitlines()[-1]) == (
        2, f"error: --calibration {written}: fitted for another checkpoint (sha256 {file_sha256(bare)[:12]}...); "
           f"run anomstream calibrate for this one")
