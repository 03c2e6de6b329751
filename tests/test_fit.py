"""``anomstream fit`` (issue 33, item 1) and parts of a recording by time (``clip.mp4?end=70%``):
the footage split with the calibration's part never trained on, the budget turned into training
steps, one short real fit on vtest.avi that writes a calibrated checkpoint."""

from __future__ import annotations

import pytest

from anomstream.pipeline.errors import AnomstreamError, SourceError
from anomstream.pipeline.sources.clip import parse_clip
from anomstream.pipeline.sources.resolve import open_sources
from anomstream.pipeline.training.fit import Costs, Footage, channels_of, plan_schedule, split_footage


@pytest.fixture(scope="module")
def vtest(shared_data):
    return str(shared_data / "vtest.avi")  # 795 frames at 10 fps, 768x576, colour


def test_parts_of_a_recording_by_share_seconds_and_frames(vtest):
    (early,) = open_sources(f"{vtest}?end=70%")
    (late,) = open_sources(f"{vtest}?start=70%")
    frames = [frame for frame in early.frames()]
    assert early.stream_id == "vtest_end70%" and early.frame_count == len(frames) == 556
    assert [f.index for f in frames[:3]] == [0, 1, 2] and frames[-1].timestamp == pytest.approx(55.5)
    rest = list(late.frames())
    assert len(rest) == late.frame_count == 239 and rest[0].index == 0 and rest[0].timestamp == pytest.approx(55.6)
    (seconds,) = open_sources(f"{vtest}?start=10&end=12.5s")
    assert [f.timestamp for f in seconds.frames()] == pytest.approx([10.0 + k / 10 for k in range(25)])
    assert seconds.frame_span() == (100, 125) and late.frame_span() == (556, 795) and seconds.frame_count == 25
    (indexed,) = open_sources(f"{vtest}?start_frame=5&end_frame=9")
    assert [f.timestamp for f in indexed.frames()] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert indexed.describe() == f"{vtest}?start_frame=5&end_frame=9" and indexed.stream_id == "vtest_start5_end9"
    assert parse_clip("a.mp4") is None and parse_clip("rtsp://cam/live?channel=1") is None
    for spec, error in [
        (f"{vtest}?start=x", f"{vtest}?start=x: start='x' is not seconds (12.5) or a share of the recording (70%)"),
        (f"{vtest}?start=9&end=5", f"{vtest}?start=9&end=5: end 5s is not after start 9s"),
        (f"{vtest}?start=1&fps=3", f"{vtest}?start=1&fps=3: unknown key 'fps' of a part of a recording "
                                   "(start, end, start_frame, end_frame)"),
        (f"{vtest}?start=1&start_frame=3", f"{vtest}?start=1&start_frame=3: start given twice"),
    ]:
        with pytest.raises(SourceError) as refused:
            open_sources(spec)
        assert str(refused.value) == error


def test_the_footage_is_split_by_time_and_the_budget_buys_steps(vtest):
    footage = split_footage([f"{vtest}?end=70%"], 0.2)
    assert footage.train == [f"{vtest}?start_frame=0&end_frame=445"]
    assert footage.calibration == [f"{vtest}?start_frame=445&end_frame=556"]
    assert (footage.train_frames, footage.calibration_frames) == ([445], 111)
    assert channels_of(vtest) == 3
    costs = Costs(train_step=0.5, decode_frame=0.01, score_window=0.05)
    # 600 s - 20 overhead - 4.45 decoding - 222 x 0.06 calibration = 562.2 s: 1124 steps of 55 an epoch
    schedule = plan_schedule(10, costs, footage, 5, 8)
    assert (schedule.epochs, schedule.steps_per_epoch, schedule.windows_per_epoch) == (20, 55, None)
    assert schedule.units == {"decode_frame": 445 + 222, "train_step": 1100, "calibration_frame": 222}
    short = plan_schedule(1, Costs(train_step=1.0, decode_frame=0.01, score_window=0.05), footage, 5, 8)
    assert (short.epochs, short.steps_per_epoch, short.windows_per_epoch) == (1, 22, 176)  # part of an epoch
    with pytest.raises(AnomstreamError) as refused:
        plan_schedule(1, Costs(train_step=5.0, decode_frame=0.01, score_window=0.05), footage, 5, 8)
    assert str(refused.value) == ("--minutes 1: decoding and calibrating this footage alone take about 0.6 min here; "
                                  "give at least 2 minutes (or less footage)")
    with pytest.raises(AnomstreamError) as refused:
        split_footage([f"{vtest}?end=10%"], 0.2)
    assert str(refused.value) == ("fit: 16 frames held back for the calibration; it needs at least 60: give longer "
                                  "footage or a larger --holdout")
    with pytest.raises(AnomstreamError) as refused:
        split_footage(["rtsp://127.0.0.1:9/cam"], 0.2)
    assert str(refused.value) == ("fit: rtsp://127.0.0.1:9/cam: recorded footage of known length only (video files, "
                                  "frame folders); record the camera first")
    assert isinstance(footage, Footage)


def test_fit_refuses_a_rate_outside_0_to_1_before_any_work(vtest, tmp_path, capsys):
    from anomstream.pipeline.cli import main
    from anomstream.pipeline.training.fit import FitOptions, fit

    with pytest.raises(SystemExit) as refused:
        main(["fit", vtest, "--out", str(tmp_path / "m.pt"), "--false-alarm-rate", "5"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("anomstream fit: error: argument --false-alarm-rate: must be "
                                                        "strictly between 0 and 1, got 5")
    with pytest.raises(AnomstreamError) as refused:  # the same from Python, where argparse does not check it
        fit([f"{vtest}?end=40%"], tmp_path / "m.pt", FitOptions(false_alarm_rate=5))
    assert str(refused.value) == "--false-alarm-rate: Input should be less than 1 (got 5)"
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.fit").exists()


def test_a_short_fit_writes_a_calibrated_checkpoint_from_held_out_frames(vtest, tmp_path, capsys):
    from anomstream.pipeline.checkpoint import read_checkpoint
    from anomstream.pipeline.cli import main

    out = tmp_path / "cam.pt"
    assert main(["fit", f"{vtest}?end=40%", "--out", str(out), "--minutes", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    payload = read_checkpoint(out)
    calibration = payload["calibration"]
    assert payload["config"]["train"]["calibration_data"] == [f"{vtest}?start_frame=254&end_frame=318"]
    assert payload["config"]["train"]["data"] == [f"{vtest}?start_frame=0&end_frame=254"]
    assert payload["config"]["model"]["params"]["channels"] == 3  # colour footage: the Avenue config, fine-tuned
    assert payload["config"]["train"]["init_checkpoint"].endswith("avenue_dmad_cpu.pt")
    assert f"model: {out} (calibrated on 60 held-out frames" in printed and "next: anomstream live" in printed
    assert calibration is not None
    assert main(["fit", vtest, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --out {out}: exists; give another path (a fitted model is "
                                               f"never overwritten)")
