"""The field cases of ../shared/cases/field (README there) through the command line and Ray, each
with its right result, plus the command-line faults found beside them (issue 15)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from servers import free_port

from anomstream.pipeline.cli import main
from anomstream.pipeline.store import open_results

REPO = Path(__file__).resolve().parent.parent


def _score(*args: str) -> int:
    return main(["score", *args, "--quiet"])


def _streams(store: Path) -> dict[str, tuple[int, bool]]:
    root = open_results(store)
    return {k: (int(root[k].attrs["written"]), bool(root[k].attrs["complete"])) for k in sorted(root.group_keys())}



def test_case_02_rotated_clip_scores_as_the_upright_one(ray_session, field_cases, tmp_path):
    folder = field_cases / "02-rotation-metadata"
    out = tmp_path / "rot.zarr"
    assert _score(str(folder / "upright.mp4"), str(folder / "rotated.mp4"), "--out", str(out)) == 0
    root = open_results(out)
    upright, rotated = (np.nanmean(root[k]["score"][:]) for k in ("upright", "rotated"))
    assert abs(rotated / upright - 1) < 0.02  # sideways it was 2.6x
    valid = root["upright"]["valid"][:]
    maps = [root[k]["map"][:][valid].astype(np.float32) for k in ("upright", "rotated")]
    assert np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1] > 0.9  # maps upright too, not turned


@pytest.mark.parametrize("name, held", [("audio_cover.mp4", "audio and cover art"), ("audio_only.mp4", "audio")])
def test_case_04_audio_with_cover_art_is_no_video(ray_session, field_cases, tmp_path, capsys, name, held):
    path = field_cases / "04-audio-with-cover-art" / name
    assert _score(str(path), "--out", str(tmp_path / "a.zarr")) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {path}: no video stream (the file holds {held})"
    assert not (tmp_path / "a.zarr").exists()


def test_case_05_mpegts_recordings(ray_session, field_cases, tmp_path):
    folder = field_cases / "05-mpegts-recordings" / "recordings"
    assert _score(str(folder), "--out", str(tmp_path / "r.zarr")) == 0
    assert _streams(tmp_path / "r.zarr") == {"cam1_0800": (12, True), "cam1_0900": (12, True), "cam1_1000": (12, True)}
    assert _score(str(folder / "cam1_0900.ts"), "--out", str(tmp_path / "t.zarr")) == 0
    assert _streams(tmp_path / "t.zarr") == {"cam1_0900": (12, True)}


def test_case_06_folder_named_with_digits(ray_session, field_cases, tmp_path, monkeypatch):
    monkeypatch.chdir(field_cases / "06-numeric-folder-name" / "clips")
    assert _score("01", "--out", str(tmp_path / "n.zarr")) == 0
    assert _streams(tmp_path / "n.zarr") == {"01": (12, True)}
    np.testing.assert_array_equal(open_results(tmp_path / "n.zarr")["01"]["frame_index"][:], np.arange(12))


def test_case_11_empty_clip_among_good_ones(ray_session, field_cases, tmp_path, capsys):
    folder = field_cases / "11-empty-clip-in-folder" / "clips"
    out = tmp_path / "c.zarr"
    assert _score(str(folder), "--out", str(out)) == 2
    assert capsys.readouterr().err.strip() == f"error: {folder / 'cam_0900.mp4'}: empty file (0 bytes)"
    assert _streams(out) == {"cam_0800": (12, True), "cam_1000": (12, True)}
    assert open_results(out).attrs["failed_inputs"] == [f"{folder / 'cam_0900.mp4'}: empty file (0 bytes)"]


def test_case_12_leftover_ray_address_is_ignored(field_cases, tmp_path):
    """Its own process: the test session's Ray is running, as a user's cluster might be."""
    port = free_port()
    clip = field_cases / "12-ray-address-env" / "clip.mp4"
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "score", str(clip), "--quiet"]
    done = subprocess.run([*command, "--out", str(tmp_path / "c.zarr")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert _streams(tmp_path / "c.zarr") == {"clip": (12, True)}
    started = time.monotonic()
    refused = subprocess.run([*command, "--out", str(tmp_path / "d.zarr"), "--address", f"127.0.0.1:{port}"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert time.monotonic() - started < 30
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: --address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"


@pytest.mark.parametrize("name", ["vidéo #1 50% ?x=1 – überwachung"])  # one name with all of them: the CI's time budget
def test_any_legal_path_survives_score_store_and_eval(ray_session, field_cases, tmp_path, capsys, name):
    """A Ped2-layout dataset and the store under names with spaces, #, ?, % and non-ASCII letters."""
    root = tmp_path / name
    shutil.copytree(field_cases / "07-ped2-masks-0-1" / "ped2_255", root)
    frames, out = root / "testing" / "frames", tmp_path / f"{name}.zarr"
    assert _score(str(frames), "--out", str(out)) == 0
    assert open_results(out)["01"].attrs["source"] == str(frames / "01")
    assert _streams(out) == {"01": (24, True)}
    capsys.readouterr()
    assert main(["eval", str(out), "--dataset", "ped2", "--labels", str(root), "--pixel", "--normalisation", "raw"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("raw      micro AUC ") and printed[0].endswith(
        "(20 frames)  causal: the stored score as written (calibrated: what a live stream gets)")
    assert printed[1].startswith("pixel AUROC ")


def test_live_prints_each_streams_error(ray_session, tmp_path, capsys):
    code = main(["live", "rtsp://127.0.0.1:9/cam", "--connect-timeout", "0", "--out", str(tmp_path / "l.zarr"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = ("error: rtsp_127.0.0.1_9_cam: rtsp://127.0.0.1:9/cam: camera is unreachable or cannot be opened "
                "(Connection refused) (frames before it are kept: 0)")
    assert err == [expected]


@pytest.mark.parametrize("args, message", [
    (["train", "configs/ped2_dmad_cpu.yaml", "--epochs", "-1"], "--epochs: Input should be greater than or equal to 1 (got -1)"),
    (["train", "configs/ped2_dmad_cpu.yaml", "--epochs", "0"], "--epochs: Input should be greater than or equal to 1 (got 0)"),
    (["score", "x.mp4", "--out", "o.zarr", "--replicas", "0"], "--replicas: Input should be greater than or equal to 1 (got 0)"),
    (["score", "x.mp4", "--out", "o.zarr", "--batch-size", "0"],
     "--batch-size: Input should be greater than or equal to 1 (got 0)"),
    (["live", "camera:0", "--out", "o.zarr", "--batch-size", "999"],
     "--batch-size: Input should be less than or equal to 256 (got 999)"),
])
def test_command_line_overrides_are_validated_as_the_config(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_config_without_train_section(tmp_path, capsys):
    config = tmp_path / "score_only.yaml"
    config.write_text("model:\n  name: dmad\n  image_size: 64\n")
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {config}: no train: section; add one (train.data: the normal "
                                               f"data) or pass --data")


def test_resume_refuses_another_input_under_a_streams_name(ray_session, field_cases, tmp_path, capsys):
    """And a clip shorter than the model's window is scored with a warning, not silently."""
    first, second = tmp_path / "a" / "cam.mp4", tmp_path / "b" / "cam.mp4"
    for path in (first, second):
        path.parent.mkdir()
    from anomstream.pipeline.encode import encode_video
    from anomstream.pipeline.sources.video import VideoFileSource

    frames = [f.image for f in VideoFileSource(field_cases / "12-ray-address-env" / "clip.mp4").frames()]
    encode_video(frames[:3], first, fps=10)
    shutil.copy(field_cases / "12-ray-address-env" / "clip.mp4", second)
    out = tmp_path / "s.zarr"
    assert _score(str(first), "--out", str(out)) == 0
    assert capsys.readouterr().err.strip() == (f"warning: cam: {first}: 3 frame(s), fewer than the 5 of the model's "
                                               f"window: no frame is scored")
    assert _score(str(second), "--out", str(out), "--resume") == 2
    assert capsys.readouterr().err.strip() == (f"error: cam: {second}: the store's stream 'cam' was scored from {first}; "
                                               f"score into another store, or --overwrite (the store keeps its 3 frames)")
    group = open_results(out)["cam"]
    assert group.attrs["source"] == str(first) and group.attrs["written"] == 3


def test_address_that_is_not_ray_fails_fast(ray_session):
    from anomstream.pipeline.driver.ray_setup import _check_reachable
    from anomstream.pipeline.errors import AnomstreamError

    _check_reachable(ray_session.get_runtime_context().gcs_address)  # the session's own cluster answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(AnomstreamError, match=rf"^--address {address}: no Ray cluster answers there \(timed out\)$"):
            _check_reachable(address, timeout_s=2)
        assert time.monotonic() - started < 5
    for address, message in [("localhost", "expected auto or HOST:PORT"),
                             ("ray://10.0.0.1:10001", "Ray Client addresses (ray://) are not supported")]:
        with pytest.raises(AnomstreamError, match=rf"^--address {address}: {re.escape(message)}"):
            _check_reachable(address)


@pytest.mark.parametrize("args, option", [
    (["score", "x.mp4", "--out", "o.zarr", "--connect-timeout", "nan"], "--connect-timeout"),
    (["score", "x.mp4", "--out", "o.zarr", "--max-frames", "0"], "--max-frames"),
    (["demo", "--replicas", "0"], "--replicas"),
    (["bench", "--rounds", "-1"], "--rounds"),  # 0: --accuracy alone
    (["eval", "s.zarr", "--labels", "x", "--smoothing", "-3"], "--smoothing"),
])
def test_numbers_out_of_range_are_refused_by_name(args, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert f"error: argument {option}: must be at least" in capsys.readouterr().err.splitlines()[-1]
