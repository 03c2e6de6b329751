"""Issue 30, round 2: frame labels must match what was scored (every mismatching video named with
both lengths), and configs as people write them (a YAML key given twice is an error; ``~`` and
environment variables in every path option and config path, expanded once, the path printed being
the path used). Small inputs written here; field cases 14 and 16 of ../shared/cases/field2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anomstream.pipeline import cli
from anomstream.pipeline.cli import main
from anomstream.pipeline.config import load_config, load_score_config
from anomstream.pipeline.datasets.video_labels import load_frame_labels
from anomstream.pipeline.errors import AnomstreamError, ConfigError
from anomstream.pipeline.evaluation.video import evaluate
from anomstream.pipeline.paths import expand_path, expand_spec
from anomstream.pipeline.sources.manifest import read_manifest
from anomstream.pipeline.store import ResultStore, result_arrays

FRAMES = 6  # every stream written here has 6 rows, frame 0 not scored
SCORES = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.25], np.float32)
LABELS = np.array([0, 0, 1, 1, 0, 1], np.int8)  # scored frames 1-5: AUC 5/6 against SCORES
FIELD2 = Path(__file__).resolve().parent.parent.parent / "shared" / "cases" / "field2"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_store(path: Path, streams: list[str], cut: tuple[str, ...] = ()) -> Path:
    """A store as the pipeline writes it: each stream 6 rows of SCORES with 4x4 maps; the streams in
    ``cut`` end with a decode error (incomplete: their video is longer than what was scored)."""
    store = ResultStore(path, {"model": "dmad"})
    maps = np.zeros((FRAMES, 4, 4), np.float16)
    maps[:, 0, 0] = SCORES
    for stream_id in streams:
        store.open_stream(stream_id, result_arrays((4, 4), []), 8, FRAMES, {})
        store.write(stream_id, 0, {"score": SCORES, "map": maps, "valid": np.arange(FRAMES) > 0,
                                   "frame_index": np.arange(FRAMES), "timestamp": np.arange(FRAMES) / 10})
        store.close_stream(stream_id, "video is truncated" if stream_id in cut else None)
    return path


def frame_masks(folder: Path, lengths: dict[str, int]) -> Path:
    """ShanghaiTech ``test_frame_mask/<video>.npy``: LABELS, cut or padded with 0 to each length."""
    folder.mkdir(parents=True, exist_ok=True)
    for video, length in lengths.items():
        np.save(folder / f"{video}.npy", np.resize(LABELS, length) * (np.arange(length) < FRAMES))
    return folder


# ---- labels must match what was scored -------------------------------------------------------

def test_every_video_whose_labels_are_not_as_long_as_its_frames_is_named_at_once(tmp_path, capsys):
    store = write_store(tmp_path / "s.zarr", ["01_0001", "01_0002", "01_0003"])
    labels = frame_masks(tmp_path / "test_frame_mask", {"01_0001": 6, "01_0002": 7, "01_0003": 5})
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels", str(labels)], capsys)
    assert (code, out) == (2, "")
    assert err == (f"error: labels do not match the scored frames of {store}: 01_0002: 7 labels for 6 frames; "
                   f"01_0003: 5 labels for 6 frames\n")


def test_one_extra_trailing_label_is_an_error_never_dropped_silently(tmp_path, capsys):
    store = write_store(tmp_path / "s.zarr", ["01_0001", "01_0002"])
    labels = frame_masks(tmp_path / "longer", {"01_0001": 6, "01_0002": 7})
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels", str(labels)], capsys)
    assert (code, out) == (2, "")
    assert err == f"error: labels do not match the scored frames of {store}: 01_0002: 7 labels for 6 frames\n"
    labels = frame_masks(tmp_path / "ok", {"01_0001": 6, "01_0002": 6})
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels", str(labels),
                          "--normalisation", "raw"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("raw      micro AUC 0.8333  macro AUC 0.8333  (10 frames)")


def test_streams_without_labels_are_named_at_once(tmp_path):
    store = write_store(tmp_path / "s.zarr", ["01_0001", "01_0002", "01_0003"])
    labels = load_frame_labels("shanghaitech", frame_masks(tmp_path / "m", {"01_0002": 6}))
    with pytest.raises(AnomstreamError) as error:
        evaluate(store, labels, ["raw"])
    assert str(error.value) == f"{store}: no labels for streams 01_0001, 01_0003"


def test_a_stream_cut_short_takes_the_first_labels_of_its_whole_video(tmp_path, capsys):
    """A video whose decoding failed part-way was scored up to the cut: labels of the whole video
    are longer, rightly; labels shorter than what was scored are still an error."""
    store = write_store(tmp_path / "s.zarr", ["01_0001", "01_0002"], cut=("01_0002",))
    labels = frame_masks(tmp_path / "whole", {"01_0001": 6, "01_0002": 9})
    result = evaluate(store, load_frame_labels("shanghaitech", labels), ["raw"]).results["raw"]
    assert (result.frames, round(result.micro, 4)) == (10, 0.8333)
    short = frame_masks(tmp_path / "short", {"01_0001": 6, "01_0002": 5})
    with pytest.raises(AnomstreamError) as error:
        evaluate(store, load_frame_labels("shanghaitech", short), ["raw"])
    assert str(error.value) == f"labels do not match the scored frames of {store}: 01_0002: 5 labels for 6 frames"


def test_avenue_masks_one_more_than_the_video_are_named(tmp_path, capsys):
    folder = tmp_path / "testing_label_mask"
    folder.mkdir()
    masks = np.zeros((7, 4, 4), np.uint8)
    masks[[2, 3, 5], 1, 1] = 1
    np.save(folder / "8_label.npy", masks)  # video 08: 7 masks for 6 frames
    np.save(folder / "20_label.npy", masks[:6])
    store = write_store(tmp_path / "s.zarr", ["08", "20"])
    code, out, err = run(["eval", str(store), "--dataset", "avenue", "--labels", str(folder)], capsys)
    assert (code, out) == (2, "")
    assert err == f"error: labels do not match the scored frames of {store}: 08: 7 labels for 6 frames\n"


def test_ped2_clip_scored_from_a_shorter_copy_is_named(tmp_path, capsys):
    """Ped2's labels are split by the dataset's clip lengths: a stream of another length is named."""
    root = tmp_path / "ped2"
    for clip, length in {"01": 6, "02": 8}.items():
        (root / "testing" / "frames" / clip).mkdir(parents=True)
        for k in range(length):
            Image.new("L", (4, 4)).save(root / "testing" / "frames" / clip / f"{k:03d}.png")
    np.save(root / "frame_labels_ped2.npy", np.concatenate([LABELS, np.ones(8, np.int8)]))
    store = write_store(tmp_path / "s.zarr", ["01", "02"])
    code, out, err = run(["eval", str(store), "--dataset", "ped2", "--labels", str(root)], capsys)
    assert (code, out) == (2, "")
    assert err == f"error: labels do not match the scored frames of {store}: 02: 8 labels for 6 frames\n"


def test_pixel_masks_not_as_long_as_the_video_are_named(tmp_path, capsys):
    labels = frame_masks(tmp_path / "test_frame_mask", {"01_0001": 6, "01_0002": 6})
    (tmp_path / "test_pixel_mask").mkdir()
    masks = np.zeros((7, 4, 4), np.uint8)
    masks[[2, 3, 5], 0, 0] = 1
    np.save(tmp_path / "test_pixel_mask" / "01_0001.npy", masks[:6])
    np.save(tmp_path / "test_pixel_mask" / "01_0002.npy", masks)
    store = write_store(tmp_path / "s.zarr", ["01_0001", "01_0002"])
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels", str(labels), "--pixel",
                          "--normalisation", "raw"], capsys)
    assert (code, out) == (2, "")  # no figure at all
    assert err == f"error: pixel masks do not match the scored frames of {store}: 01_0002: 7 masks for 6 frames\n"


# ---- a YAML key given twice ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("score:\n  replicas: 1\n  batch_size: 4\n\nscore:\n  flush_s: 0.5\n", "score: key given twice (lines 1 and 5)"),
    ("score:\n  replicas: 1\n  batch_size: 4\n  replicas: 2\n", "score.replicas: key given twice (lines 2 and 4)"),
    ("model:\n  name: dmad\n  widths: [8, 16]\n  name: dmad\n", "model.name: key given twice (lines 2 and 4)"),
    ("model: {name: dmad}\ntrain:\n  data: [{a: 1, a: 2}]\n", "train.data[0].a: key given twice (lines 3 and 3)"),
    ("score:\n  1: x\n  01: y\n", "score.1: key given twice (lines 2 and 3)"),
])
def test_a_key_given_twice_is_refused_at_any_depth(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    loader = load_score_config if text.startswith("score") else load_config
    with pytest.raises(ConfigError) as error:
        loader(path)
    assert str(error.value) == f"{path}: {message}; give it once (YAML would keep only the last)"


def test_merge_keys_may_override_what_they_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: dmad}\nscore:\n  <<: {replicas: 1, batch_size: 4}\n  replicas: 3\n")
    section, model = load_score_config(path)
    assert (section.replicas, section.batch_size, model) == (3, 4, "dmad")


# ---- ~ and environment variables ---------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """HOME is a scratch folder, the working folder another one (where a folder named '~' would appear)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DATA", str(tmp_path / "data"))
    monkeypatch.delenv("UNSET_FOR_TEST", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return home


def test_paths_expand_once_and_urls_stay(home, monkeypatch):
    data = os.environ["DATA"]
    monkeypatch.setenv("ODD", "$DATA/~x")  # a value is not expanded again
    assert expand_path("~", "--out") == str(home)
    assert expand_path("~/runs/x.zarr", "--out") == f"{home}/runs/x.zarr"
    assert expand_path("$DATA/a/${DATA}b", "--out") == f"{data}/a/{data}b"
    assert expand_path("$ODD/y", "--out") == "$DATA/~x/y"
    assert expand_path("runs/~x/50$", "--out") == "runs/~x/50$"  # ~ only leads; a lone $ is a character
    for url in ("rtsp://user:$PASS@cam/1", "s3://bucket/~runs/x.zarr", "http://h/~me/$x"):
        assert expand_path(url, "--out") == url == expand_spec(url, "source")
    assert expand_spec("mvtec:~/tiles?split=train", "train.data") == f"mvtec:{home}/tiles?split=train"
    assert expand_spec("linescan:$DATA/strips?tile=8", "source") == f"linescan:{data}/strips?tile=8"
    assert expand_spec("camera:0", "source") == "camera:0"
    Path("$DATA").mkdir()  # an existing path as written stays that path
    assert expand_spec("$DATA", "source") == "$DATA"
    with pytest.raises(ConfigError) as error:
        expand_path("$UNSET_FOR_TEST/x.zarr", "--out")
    assert str(error.value) == "--out: environment variable UNSET_FOR_TEST is not set (in '$UNSET_FOR_TEST/x.zarr')"
    with pytest.raises(ConfigError) as error:
        expand_path("~no_such_user_here/x", "--json")
    assert str(error.value) == ("--json: no user 'no_such_user_here' for ~no_such_user_here in '~no_such_user_here/x' "
                                "(write ./~no_such_user_here/x for a folder of that name)")


def test_config_paths_expand_tilde_and_variables(home, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "padim", "backbone_weights": "~/weights/b.pth"},
        "train": {"data": ["mvtec:~/tiles?split=train", "$DATA/more"], "calibration_data": "${DATA}/normal.mp4",
                  "output_dir": "~/runs/padim", "init_checkpoint": "$DATA/start.pt",
                  "anomalies": "mvtec:~/tiles?split=labelled"}}))
    config = load_config(path)
    data = os.environ["DATA"]
    assert config.train.data == [f"mvtec:{home}/tiles?split=train", f"{data}/more"]
    assert (config.train.calibration_data, config.train.output_dir, config.train.init_checkpoint) == (
        f"{data}/normal.mp4", f"{home}/runs/padim", f"{data}/start.pt")
    assert config.train.anomalies == f"mvtec:{home}/tiles?split=labelled"
    assert config.model.params.backbone_weights == f"{home}/weights/b.pth"
    path.write_text("model: {name: padim}\ntrain:\n  data: x\n  output_dir: $UNSET_FOR_TEST/runs\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (f"{path}: train.output_dir: environment variable UNSET_FOR_TEST is not set "
                                f"(in '$UNSET_FOR_TEST/runs')")


def test_eval_reads_and_writes_where_tilde_points(home, tmp_path, capsys):
    write_store(home / "s.zarr", ["01_0001"])
    frame_masks(home / "st" / "test_frame_mask", {"01_0001": 6})
    code, out, err = run(["eval", "~/s.zarr", "--dataset", "shanghaitech", "--labels=~/st/test_frame_mask",
                          "--normalisation", "raw", "--json=~/results/r.json"], capsys)
    assert (code, err) == (0, "")
    assert out.endswith(f"json: {home}/results/r.json\n") and (home / "results" / "r.json").is_file()
    assert list(Path().iterdir()) == []  # nothing named '~' in the working folder


def fake_scoring(monkeypatch) -> list:
    """score_sources replaced by one that records the plan and reports one stream of 24 frames."""
    from anomstream.pipeline.driver import run as driver_run
    from anomstream.pipeline.driver.report import RunReport, StreamReport

    plans = []

    def score_sources(plan):
        plans.append(plan)
        return RunReport(plan.out, {"clip": StreamReport(plan.specs[0], frames=24)}, seconds=1.0, replicas=1,
                         replica_busy=[0.5], started=True)
    monkeypatch.setattr(driver_run, "score_sources", score_sources)
    return plans


def test_score_options_and_manifest_lines_expand_and_the_store_printed_is_the_one_used(home, monkeypatch, capsys):
    plans = fake_scoring(monkeypatch)
    data = os.environ["DATA"]
    (home / "jobs.txt").write_text("~/clips/a.mp4\n$DATA/b.mp4\nmtd:~/MTD?split=test\nrtsp://cam/$x\n")
    (home / "score.yaml").write_text("score:\n  replicas: 1\n")
    code, out, err = run(["score", "$DATA/c.mp4", "--manifest=~/jobs.txt", "--out=~/out/clip.zarr",
                          "--config", "~/score.yaml", "--checkpoint=$DATA/m.pt", "--calibration", "~/m.cal.pt",
                          "--quiet"], capsys)
    assert (code, err) == (0, "")
    plan = plans[0]
    assert list(plan.specs) == [f"{data}/c.mp4", f"{home}/clips/a.mp4", f"{data}/b.mp4",
                                f"mtd:{home}/MTD?split=test", "rtsp://cam/$x"]
    assert (str(plan.out), plan.checkpoint, plan.calibration, plan.settings.replicas) == (
        f"{home}/out/clip.zarr", f"{data}/m.pt", f"{home}/m.cal.pt", 1)
    assert out.startswith(f"store: {home}/out/clip.zarr  streams: 1  frames: 24")
    code, out, err = run(["score", "c.mp4", "--out", "$UNSET_FOR_TEST/x.zarr"], capsys)
    assert (code, out, err) == (2, "", "error: --out: environment variable UNSET_FOR_TEST is not set "
                                       "(in '$UNSET_FOR_TEST/x.zarr')\n")


@pytest.mark.parametrize(("argv", "name", "expanded"), [
    (["demo", "--out=~/demo"], "out", "{home}/demo"),
    (["export", "~/m.pt", "--format", "onnx", "--out=~/m_onnx"], "out", "{home}/m_onnx"),
    (["export", "~/m.pt", "--format", "onnx", "--out", "x"], "checkpoint", "{home}/m.pt"),
    (["export", "m.pt", "--format", "onnx", "--out", "x", "--calibration", "$DATA/c.pt"], "calibration", "{data}/c.pt"),
    (["calibrate", "m.pt", "--data", "~/n.mp4", "mtd:$DATA?split=train"], "data",
     ["{home}/n.mp4", "mtd:{data}?split=train"]),
    (["calibrate", "m.pt", "--data", "n.mp4", "--into=~/m2.pt"], "into", "{home}/m2.pt"),
    (["calibrate", "m.pt", "--data", "n.mp4", "--out", "~/c.pt"], "out", "{home}/c.pt"),
    (["bench", "--out=~/b"], "out", "{home}/b"),
    (["bench", "--json", "$DATA/b.json"], "json", "{data}/b.json"),
    (["bench", "--source", "~/clip", "--checkpoint", "~/m.pt"], "source", "{home}/clip"),
    (["train", "~/c.yaml"], "config", "{home}/c.yaml"),
    (["train", "c.yaml", "--stage1", "~/s1.pt"], "stage1", "{home}/s1.pt"),
    (["train", "c.yaml", "--data=mvtec:~/tiles"], "data", "mvtec:{home}/tiles"),
    (["train", "c.yaml", "--output-dir=${DATA}/runs"], "output_dir", "{data}/runs"),
    (["live", "rtsp://cam/~a", "~/rec.mp4", "--out=~/l.zarr"], "sources", ["rtsp://cam/~a", "{home}/rec.mp4"]),
    (["live", "camera:0", "--out=s3://b/~l.zarr"], "out", "s3://b/~l.zarr"),
    (["eval", "~/s.zarr"], "store", "{home}/s.zarr"),
])
def test_every_path_argument_is_expanded_before_its_command_runs(home, argv, name, expanded):
    args = cli.build_parser().parse_args(argv)
    cli.expand_path_arguments(args)
    fill = {"home": str(home), "data": os.environ["DATA"]}
    want = [v.format(**fill) for v in expanded] if isinstance(expanded, list) else expanded.format(**fill)
    assert getattr(args, name) == want


def test_train_options_expand_once_through_the_config(home, tmp_path, monkeypatch, capsys):
    """--data and --output-dir are expanded by the command line, the config's own paths by the
    config, and neither again when the options replace the config's values."""
    from anomstream.pipeline.training import loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda config, resume, progress: seen.append(config.train) or Path("m.pt"))
    monkeypatch.setenv("ODD", "$HOME")
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: padim}\ntrain: {data: x, output_dir: $ODD/runs}\n")
    assert main(["train", str(path), "--data=mvtec:~/tiles", "--quiet"]) == 0
    assert (seen[0].data, seen[0].output_dir) == (f"mvtec:{home}/tiles", "$HOME/runs")
    assert main(["train", str(path), "--output-dir=$ODD/x", "--quiet"]) == 0
    assert (seen[1].data, seen[1].output_dir) == ("x", "$HOME/x")
    assert capsys.readouterr().out == "checkpoint: m.pt\ncheckpoint: m.pt\n"


# ---- field cases 14 and 16 ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def field2() -> Path:
    if not (FIELD2 / "README.md").is_file():
        pytest.skip(f"field cases not found at {FIELD2}")
    return FIELD2


def test_case14_shanghaitech_labels_of_the_wrong_length(field2, ray_session, tmp_path, capsys):
    case = field2 / "14-shanghaitech-label-lengths"
    store = tmp_path / "st.zarr"
    assert main(["score", str(case / "testing" / "frames"), "--out", str(store), "--precision", "fp32", "--quiet"]) == 0
    capsys.readouterr()
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels",
                          str(case / "ok" / "test_frame_mask"), "--normalisation", "offline"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("offline  micro AUC 0.8866  ")
    for labels, wrong in (("off", "01_0015: 61 labels for 60 frames; 01_0016: 59 labels for 60 frames"),
                          ("longer", "01_0015: 61 labels for 60 frames")):
        code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels",
                              str(case / labels / "test_frame_mask"), "--normalisation", "offline"], capsys)
        assert (code, out, err) == (2, "", f"error: labels do not match the scored frames of {store}: {wrong}\n")


def test_case16_configs_as_people_write_them(field2, home, tmp_path, monkeypatch, capsys):
    case = field2 / "16-yaml-config-pitfalls"
    clip = str(case / "clip.mp4")
    code, out, err = run(["score", clip, "--config", str(case / "dup.yaml"), "--out", "d.zarr"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"error: {case / 'dup.yaml'}: score: key given twice (lines 2 and 7); give it once "
                   f"(YAML would keep only the last)\n")
    code, out, err = run(["score", clip, "--config", str(case / "tabs.yaml"), "--out", "t.zarr"], capsys)
    assert (code, out, err) == (2, "", f"error: {case / 'tabs.yaml'}: line 2 invalid YAML (found character '\\t' "
                                       f"that cannot start any token)\n")
    code, out, err = run(["score", clip, "--config", str(case / "types.yaml"), "--out", "t.zarr"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"error: {case / 'types.yaml'}: score.batch_size: Input should be a valid integer, got a number "
                   f"with a fractional part; score.replicas: Input should be a valid integer, unable to parse string "
                   f"as an integer; score.flush_s: Input should be a valid number, unable to parse string as a "
                   f"number\n")
    assert read_manifest(case / "tilde_manifest.txt") == [(f"{home}/clips/clip.mp4", None)]
    plans = fake_scoring(monkeypatch)
    code, out, err = run(["score", clip, "--out=~/out/clip.zarr", "--quiet"], capsys)
    assert code == 0 and str(plans[0].out) == f"{home}/out/clip.zarr"
    assert out.startswith(f"store: {home}/out/clip.zarr  ")
    assert list(Path().iterdir()) == []


def test_case16_tilde_in_train_data_and_output_dir_means_home(field2, home, capsys):
    """``anomstream train tilde_train.yaml`` with HOME holding datasets/tiles (a small MVTec layout
    of generated textures): the model is fitted on it and written under ~/anomstream-runs."""
    tiles = home / "datasets" / "tiles"
    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 4), ("test/good", 1)):
        (tiles / folder).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(tiles / folder / f"{k:03d}.png")
    code, out, err = run(["train", str(field2 / "16-yaml-config-pitfalls" / "tilde_train.yaml"), "--quiet"], capsys)
    checkpoint = home / "anomstream-runs" / "padim_tilde" / "model.pt"
    assert code == 0, err
    assert out == f"checkpoint: {checkpoint}\n" and checkpoint.is_file()
    assert list(Path().iterdir()) == []  # no folder named '~' in the working folder


def test_a_whole_config_given_to_score_needs_no_training_paths(tmp_path, monkeypatch):
    """score --config reads the score section: an unset $DATA in train.data does not stop it."""
    from anomstream.pipeline.config import load_score_config

    monkeypatch.delenv("DATA", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: dmad\ntrain:\n  data: $DATA/ped2\nscore:\n  replicas: 3\n")
    section, model = load_score_config(config)
    assert section.replicas == 3 and model == "dmad"
