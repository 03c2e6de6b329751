"""Batch jobs: inputs from a manifest, and resuming a store only from the inputs it was scored from."""

from __future__ import annotations

import os
import shutil

import pytest
import zarr

from anomstream.pipeline.cli import main
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.sources.manifest import read_manifest


def test_manifest_lines_and_tables(tmp_path):
    plain = tmp_path / "jobs" / "list.txt"
    plain.parent.mkdir()
    plain.write_text("# Ped2 clips\nclips/01\n\n  /data/02.avi  \nrtsp://cam.example/1\ncamera:0\nmtd:../MTD?split=test\n")
    assert read_manifest(plain) == [(str(plain.parent / "clips/01"), None), ("/data/02.avi", None),
                                    ("rtsp://cam.example/1", None), ("camera:0", None), ("mtd:../MTD?split=test", None)]
    table = tmp_path / "jobs" / "list.csv"
    table.write_text("# today's job\nSource, stream_id\nclips/01,gate\n# not this one\n/data/02.avi,\n\n")
    assert read_manifest(table) == [(str(table.parent / "clips/01"), "gate"), ("/data/02.avi", None)]
    only = tmp_path / "only.csv"
    only.write_text("source\n/data/a.avi\n")
    assert read_manifest(only) == [("/data/a.avi", None)]


@pytest.mark.parametrize(("text", "message"), [
    ("source,stream_id\n,lobby\n", "line 2: empty source"),
    ("source,stream_id\na.mp4,lobby\nb.mp4,lobby\n", "line 3: stream_id 'lobby' is already used on line 2"),
    ("path,id\na.mp4,lobby\n", "a CSV manifest needs a 'source' column (its first line names 'path', 'id')"),
    ("# nothing yet\n\n", "no sources listed"),
    (b"\xff\xfe\x00bad", "cannot read (UnicodeDecodeError"),
])
def test_bad_manifest_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(AnomstreamError) as error:
        read_manifest(path)
    assert str(error.value).startswith(f"--manifest {path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_manifest_job_scores_the_rest_and_resume_refuses_a_changed_input(ray_session, short_clip, shipped_checkpoint,
                                                                          tmp_path, capsys):
    first, second = tmp_path / "clips" / "a", tmp_path / "clips" / "b"
    shutil.copytree(short_clip, first)
    shutil.copytree(short_clip, second)
    manifest, out = tmp_path / "job.csv", tmp_path / "job.zarr"
    manifest.write_text("source,stream_id\nclips/a,gate\nclips/missing,lobby\nclips/b,\n")
    args = ["score", "--manifest", str(manifest), "--out", str(out), "--quiet", "--batch-size", "16"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'clips' / 'missing'}: no such file or folder"]
    root = zarr.open_group(str(out), mode="r")
    assert sorted(root.group_keys()) == ["b", "gate"]
    for stream in ("b", "gate"):
        assert root[stream].attrs["complete"] is True and root[stream].attrs["written"] == 48
        assert root[stream].attrs["source_fingerprint"]["files"] == 48

    # one frame of clip a rewritten: its stream is refused, clip b's (complete, unchanged) skipped
    frame = sorted(first.iterdir())[10]
    frame.write_bytes(frame.read_bytes())
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))
    manifest.write_text("source,stream_id\nclips/a,gate\nclips/b,\n")
    assert main([*args[:-2], "--resume"]) == 2  # nothing left to score: no run starts
    printed = capsys.readouterr()
    assert printed.out == (f"store: {out}  streams: 2  nothing to score: 1 complete already, 1 refused (below) "
                           f"(--overwrite scores them again)\n")
    assert printed.err.strip().splitlines() == [
        f"error: gate: {first}: changed since the store's stream 'gate' was scored from it (files, size or "
        f"modification time differ); score into another store, or --overwrite (the store keeps its 48 frames)"]
    assert zarr.open_group(str(out), mode="r")["gate"].attrs["written"] == 48  # kept as it was


def test_auto_address_left_by_a_dead_head_fails_fast(tmp_path, monkeypatch):
    """``--address auto`` reads the address ``ray start`` left on this machine; a head that died
    leaves it behind: one line naming it, not minutes of Ray's retries."""
    from anomstream.pipeline.driver import ray_setup

    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    monkeypatch.setattr(ray_setup.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(AnomstreamError, match=r"^--address auto: no Ray cluster answers there \(.*refused"):
        ray_setup._check_reachable("auto")
