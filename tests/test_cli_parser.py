"""The ``anomstream`` argument parser alone: what each command parses into, the options commands share,
and each option declared once in pipeline/cli.py. Fast: no Ray, no model."""

from __future__ import annotations

import ast
import inspect
from collections import Counter

import pytest

from anomstream.pipeline import cli
from anomstream.pipeline.assets import SHIPPED_CHECKPOINT

SCORING_DEFAULTS = {  # what score and live share
    "checkpoint": str(SHIPPED_CHECKPOINT), "config": None, "replicas": None, "batch_size": None, "writers": None,
    "backend": None, "precision": None, "address": None, "overwrite": False, "resume": False, "max_frames": None,
    "calibration": None, "event_threshold": None, "event_low": None, "event_end_after": 10, "event_min_frames": 3,
    "event_merge_gap": 25, "webhook": None, "mqtt": None, "quiet": False, "connect_timeout": None,
    "quantization_data": None,  # added by issue 34
}
LIVE_DEFAULTS = {
    "policy": None, "duration": None, "max_latency_ms": None, "reconnect_attempts": None, "stall_timeout": 10.0,
    "frozen_after": 5.0, "keep_maps": 1, "rotate": None, "view": None, "view_host": "127.0.0.1",
    "auth_retries": 2, "auth_backoff": 60.0, "view_token_file": None, "metrics": None, "cameras": None,  # added by issue 32
    "decoder_threads": 1, "scale_in_decoder": False,  # added by issue 32 (2026-12-06)
}

# argv -> (the command's function, every value of the Namespace but ``run``), as the parser before the
# split into one function per command gave them (score's connect_timeout was 30.0 there: now None, and
# 30 s where the command uses it, see test_score_connects_for_30_s_unless_told).
CASES = {
    "demo": (["demo"], cli._cmd_demo, {"out": "anomstream_demo", "replicas": 2, "quiet": False}),
    "demo typical": (["demo", "--out", "d", "--replicas", "3", "--quiet"], cli._cmd_demo,
                     {"out": "d", "replicas": 3, "quiet": True}),
    "train": (["train", "configs/ped2_dmad_cpu.yaml"], cli._cmd_train,
              {"config": "configs/ped2_dmad_cpu.yaml", "resume": False, "data": None, "epochs": None, "output_dir": None,
               "stage1": None, "quiet": False}),
    "train typical": (["train", "c.yaml", "--resume", "--data", "normal/", "--epochs", "2", "--output-dir", "runs/x",
                       "--stage1", "s1.pt"], cli._cmd_train,
                      {"config": "c.yaml", "resume": True, "data": "normal/", "epochs": 2, "output_dir": "runs/x",
                       "stage1": "s1.pt", "quiet": False}),
    "score": (["score", "clip.mp4", "--out", "clip.zarr"], cli._cmd_score,
              {**SCORING_DEFAULTS, "sources": ["clip.mp4"], "out": "clip.zarr", "manifest": None}),
    "score typical": (["score", "a.mp4", "b/", "--out", "s3://runs/v.zarr", "--checkpoint", "m.pt", "--config", "c.yaml",
                       "--replicas", "8", "--batch-size", "4", "--writers", "2", "--backend", "openvino", "--precision",
                       "bf16", "--address", "auto", "--resume", "--max-frames", "100", "--calibration", "c.pt",
                       "--event-threshold", "3.5", "--event-low", "2", "--event-end-after", "4", "--event-min-frames",
                       "1", "--event-merge-gap", "0", "--webhook", "http://h/hook", "--manifest", "jobs.csv",
                       "--connect-timeout", "5"], cli._cmd_score,
                      {**SCORING_DEFAULTS, "sources": ["a.mp4", "b/"], "out": "s3://runs/v.zarr", "checkpoint": "m.pt",
                       "config": "c.yaml", "replicas": 8, "batch_size": 4, "writers": 2, "backend": "openvino",
                       "precision": "bf16", "address": "auto", "resume": True, "max_frames": 100, "calibration": "c.pt",
                       "event_threshold": 3.5, "event_low": 2.0, "event_end_after": 4, "event_min_frames": 1,
                       "event_merge_gap": 0, "webhook": "http://h/hook", "manifest": "jobs.csv", "connect_timeout": 5.0}),
    "score manifest only": (["score", "--manifest", "jobs.csv", "--out", "j.zarr", "--overwrite"], cli._cmd_score,
                            {**SCORING_DEFAULTS, "sources": [], "out": "j.zarr", "overwrite": True, "manifest": "jobs.csv"}),
    "live": (["live", "rtsp://camera/stream", "--out", "cam.zarr"], cli._cmd_live,
             {**SCORING_DEFAULTS, **LIVE_DEFAULTS, "sources": ["rtsp://camera/stream"], "out": "cam.zarr"}),
    "live typical": (["live", "rtsp://camera/stream", "camera:0", "--out", "cam.zarr", "--view", "8080", "--view-host",
                      "0.0.0.0", "--policy", "latest", "--duration", "60", "--max-latency-ms", "250",
                      "--reconnect-attempts", "5", "--stall-timeout", "2.5", "--connect-timeout", "0", "--frozen-after",
                      "0", "--keep-maps", "8", "--rotate", "hour", "--quiet"], cli._cmd_live,
                     {**SCORING_DEFAULTS, **LIVE_DEFAULTS, "sources": ["rtsp://camera/stream", "camera:0"],
                      "out": "cam.zarr", "view": 8080, "view_host": "0.0.0.0", "policy": "latest", "duration": 60.0,
                      "max_latency_ms": 250.0, "reconnect_attempts": 5, "stall_timeout": 2.5, "connect_timeout": 0.0,
                      "frozen_after": 0.0, "keep_maps": 8, "rotate": "hour", "quiet": True}),
    "calibrate": (["calibrate", "m.pt", "--data", "normal.mp4"], cli._cmd_calibrate,
                  {"checkpoint": "m.pt", "data": ["normal.mp4"], "out": None, "into": None, "smoothing": 9,
                   "false_alarm_rate": 1e-3, "position_scale": False, "threads": None, "quiet": False}),
    "calibrate typical": (["calibrate", "m.pt", "--data", "a.mp4", "b/", "--into", "m.pt", "--smoothing", "1",
                           "--false-alarm-rate", "0.01", "--position-scale", "--threads", "2", "--out", "c.pt"],
                          cli._cmd_calibrate,
                          {"checkpoint": "m.pt", "data": ["a.mp4", "b/"], "out": "c.pt", "into": "m.pt", "smoothing": 1,
                           "false_alarm_rate": 0.01, "position_scale": True, "threads": 2, "quiet": False}),
    "export": (["export", "m.pt", "--format", "onnx", "--out", "m_onnx"], cli._cmd_export,
               {"checkpoint": "m.pt", "format": "onnx", "out": "m_onnx", "calibration": None, "precision": "fp32",
                "quantization_data": None}),
    "eval": (["eval", "ped2.zarr"], cli._cmd_eval,
             {"store": "ped2.zarr", "dataset": "ped2", "labels": None, "normalisation": ["offline", "causal", "raw"],
              "smoothing": 0, "robust_smoothing": False, "combine": "score", "pixel": False, "json": None}),
    "eval typical": (["eval", "mtd.zarr", "--dataset", "mtd", "--labels", "l/", "--normalisation", "raw", "--smoothing",
                      "9", "--robust-smoothing", "--combine", "terms", "--pixel", "--json", "r.json"], cli._cmd_eval,
                     {"store": "mtd.zarr", "dataset": "mtd", "labels": "l/", "normalisation": ["raw"], "smoothing": 9,
                      "robust_smoothing": True, "combine": "terms", "pixel": True, "json": "r.json"}),
    "bench": (["bench"], cli._cmd_bench,
              {"source": "../shared/data/ped2/testing/frames/04", "checkpoint": str(SHIPPED_CHECKPOINT), "batch_size": 16,
               "repeats": 4, "rounds": 3, "out": "bench_out", "json": None, "backends": None, "accuracy": None,
               "save_verdict": False, "quantization_data": None}),
    "bench typical": (["bench", "--rounds", "1", "--backends", "torch,onnxruntime", "--batch-size", "8",
                       "--quantization-data", "normal/", "day.mp4"], cli._cmd_bench,
                      {"source": "../shared/data/ped2/testing/frames/04", "checkpoint": str(SHIPPED_CHECKPOINT),
                       "batch_size": 8, "repeats": 4, "rounds": 1, "out": "bench_out", "json": None,
                       "backends": "torch,onnxruntime", "accuracy": None, "save_verdict": False,
                       "quantization_data": ["normal/", "day.mp4"]}),
}


def parse(argv: list[str]):
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("case", CASES)
def test_each_command_parses_as_before(case):
    argv, run, expected = CASES[case]
    values = vars(parse(argv))
    assert values.pop("run") is run
    assert values == {"command": argv[0], **expected}


@pytest.mark.parametrize("argv", [["demo"], ["train", "c.yaml"], ["score", "clip.mp4", "--out", "s.zarr"],
                                  ["live", "camera:0", "--out", "s.zarr"], ["calibrate", "m.pt", "--data", "n.mp4"]])
def test_quiet_is_accepted_where_there_are_progress_bars(argv):
    assert parse(argv).quiet is False
    assert parse([*argv, "--quiet"]).quiet is True


@pytest.mark.parametrize("argv", [["export", "m.pt", "--format", "onnx", "--out", "o", "--quiet"],
                                  ["eval", "s.zarr", "--quiet"], ["bench", "--quiet"],
                                  ["demo", "--connect-timeout", "1"], ["calibrate", "m.pt", "--data", "n", "--out", "o",
                                                                       "--connect-timeout", "1"]])
def test_shared_options_stay_where_they_belong(argv):
    with pytest.raises(SystemExit):
        parse(argv)


def test_connect_timeout_default_per_command():
    assert cli._connect_timeout(parse(["score", "clip.mp4", "--out", "s.zarr"])) == 30.0
    assert cli._connect_timeout(parse(["live", "camera:0", "--out", "s.zarr"])) is None
    for command in (["score", "clip.mp4"], ["live", "camera:0"]):
        assert cli._connect_timeout(parse([*command, "--out", "s.zarr", "--connect-timeout", "7.5"])) == 7.5
        assert cli._connect_timeout(parse([*command, "--out", "s.zarr", "--connect-timeout", "0"])) == 0.0  # one try
        with pytest.raises(SystemExit):
            parse([*command, "--out", "s.zarr", "--connect-timeout", "-1"])


@pytest.mark.parametrize("argv, connect_timeout_s", [
    (["score", "clip.mp4", "--out", "s.zarr"], 30.0),
    (["score", "clip.mp4", "--out", "s.zarr", "--connect-timeout", "2"], 2.0),
    (["live", "camera:0", "--out", "s.zarr"], None),
    (["live", "camera:0", "--out", "s.zarr", "--connect-timeout", "2"], 2.0),
])
def test_score_connects_for_30_s_unless_told(monkeypatch, argv, connect_timeout_s):
    """What the command hands the cameras: ``score`` retries a first connection 30 s, ``live`` as
    ``--reconnect-attempts`` says (None), either the value given."""
    seen = []
    monkeypatch.setattr(cli, "_run_scoring", lambda args, options, *rest: seen.append(options) or 0)
    args = parse(argv)
    assert args.run(args) == 0
    assert seen[0].reconnect.connect_timeout_s == connect_timeout_s


def test_connect_timeout_help_says_both_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at hyphens ("--reconnect-" / "attempts") on narrow terminals
    for command in ("score", "live"):
        with pytest.raises(SystemExit):
            parse([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert "30 under score" in shown and "as --reconnect-attempts says under live" in shown


# Names two commands use for options of their own (different help, defaults or types): each command
# declares its own. Every other option is declared once, shared through a parent parser.
SAME_NAME_OTHER_OPTION = {"--out": 6, "--replicas": 2, "--checkpoint": 2, "--batch-size": 2, "--resume": 2, "--data": 2,
                          "--calibration": 2, "--smoothing": 2, "--json": 2,
                          "--config": 2, "--false-alarm-rate": 2, "--threads": 2,  # fit (issue 33) beside score and calibrate
                          "--precision": 2, "--quantization-data": 3}  # export's (fp32 or int8; issue 34); bench's


def _declarations() -> dict[str, list[ast.Call]]:
    """option string -> the add_argument calls in pipeline/cli.py that declare it."""
    found: dict[str, list[ast.Call]] = {}
    for node in ast.walk(ast.parse(inspect.getsource(cli))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("-"):
                found.setdefault(first.value, []).append(node)
    return found


def test_each_option_is_declared_once():
    declared = _declarations()
    assert len(declared["--quiet"]) == 1 and len(declared["--connect-timeout"]) == 1
    repeated = {option: len(calls) for option, calls in declared.items() if len(calls) > 1}
    assert repeated == SAME_NAME_OTHER_OPTION
    for option in SAME_NAME_OTHER_OPTION:  # never one option copied: the declarations differ
        keywords = Counter(" ".join(ast.dump(keyword) for keyword in call.keywords) for call in declared[option])
        assert max(keywords.values()) == 1, option


@pytest.mark.parametrize("argv, error", [
    (["bench", "--backends", ","], "error: --backends ',': no backend named; e.g. torch,openvino,openvino:int8-bf16"),
    (["bench", "--backends", "onnxruntime,openvino:int9"],
     "error: --backends: 'openvino:int9' is not BACKEND[:PRECISION] with BACKEND one of torch, onnxruntime, openvino "
     "and PRECISION one of fp32, bf16, int8, int8-bf16"),
    (["bench", "--backends", "onnxrt"], "error: --backends: 'onnxrt' is not BACKEND[:PRECISION] with BACKEND one of "
     "torch, onnxruntime, openvino and PRECISION one of fp32, bf16, int8, int8-bf16"),
    (["bench", "--backends", "onnxruntime,openvino:int8", "--quantization-data", "no/such/folder"],
     "error: --quantization-data no/such/folder: not found (normal footage: a video, a frame or image folder, or a "
     "dataset spec such as mtd:ROOT?split=train)"),
    (["score", "clip.mp4", "--out", "s.zarr", "--quantization-data", "mtd:no/such/mtd?split=train"],
     "error: --quantization-data mtd:no/such/mtd?split=train: not found (normal footage: a video, a frame or image "
     "folder, or a dataset spec such as mtd:ROOT?split=train)")])
def test_bench_and_score_refuse_what_they_could_not_use_before_any_work(argv, error, capsys, tmp_path, monkeypatch):
    """A typo in --backends, or footage that is not there, is one line and exit 2 at once, not a
    traceback or a 'failed' row after the other backends were measured (a new user's trial)."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [error]
    assert list(tmp_path.iterdir()) == []  # nothing made (no bench_out)
