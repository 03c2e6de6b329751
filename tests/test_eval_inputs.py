"""``anomstream eval`` on the ground truth users really have (field cases 01, 07, 08), masks read by
value in still layouts, anomalous frames and images with empty masks reported, and streams
without a scored frame left out with a warning."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from layout_builders import mvtec_from_mtd
from PIL import Image

from anomstream.pipeline.cli import main
from anomstream.pipeline.store import ResultStore, result_arrays

PED2_CASE = "07-ped2-masks-0-1"


def writable_copy(source: Path, target: Path) -> Path:
    """A copy of a (read-only) shared folder that the test may change."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(target):
        os.chmod(folder, 0o755)
    return target


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ped2_case_store(ray_session, field_cases, tmp_path_factory) -> Path:
    """Case 07's 24 Ped2 frames (the same frames as case 08's) scored with the shipped checkpoint."""
    store = tmp_path_factory.mktemp("ped2_case") / "s.zarr"
    assert main(["score", str(field_cases / PED2_CASE / "ped2_01" / "testing" / "frames"), "--out", str(store),
                 "--quiet"]) == 0
    return store


@pytest.fixture(scope="module")
def avenue_store(ray_session, shared_data, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("avenue") / "s.zarr"
    assert main(["score", str(shared_data / "avenue" / "testing_videos" / "08.avi"), "--out", str(store),
                 "--quiet"]) == 0
    return store


# stores scored with the shipped (calibrated) checkpoint have events: eval adds their figures
EVENTS_LINE = (r"events   recall \d+/\d+ labelled anomalous segments \(\d\.\d\d\)  false events \d+ of \d+ "
               r"\((\d+\.\d\d per minute of normal footage|no normal footage)\)\n")


def test_case01_avenue_v73_labels_evaluate_as_the_v7_file(avenue_store, shared_data, field_cases, capsys):
    v7 = run(["eval", str(avenue_store), "--dataset", "avenue", "--labels",
              str(shared_data / "avenue" / "testing_label_mask"), "--pixel"], capsys)
    v73 = run(["eval", str(avenue_store), "--dataset", "avenue", "--labels",
               str(field_cases / "01-avenue-mat-v73" / "testing_label_mask"), "--pixel"], capsys)
    assert v73 == v7
    code, out, err = v73
    assert code == 0 and err == ""
    assert re.fullmatch(r"frame AUC: undefined \(labels of the scored frames are all one class: AUC is undefined\)\n"
                        r"pixel AUROC 0\.\d{4}\n" + EVENTS_LINE, out)  # video 08 is anomalous throughout


def test_case07_ped2_masks_coded_0_1_evaluate_as_0_255(ped2_case_store, field_cases, capsys):
    results = [run(["eval", str(ped2_case_store), "--dataset", "ped2", "--labels",
                    str(field_cases / PED2_CASE / coding), "--pixel", "--normalisation", "offline"], capsys)
               for coding in ("ped2_01", "ped2_255")]
    assert results[0] == results[1]
    code, out, err = results[0]
    assert code == 0 and err == ""
    assert re.fullmatch(r"offline  micro AUC 0\.\d{4}  macro AUC 0\.\d{4}  \(20 frames\)  offline: per-video min-max, "
                        r"needs the whole video \(papers' protocol\)\npixel AUROC 0\.\d{4}\n" + EVENTS_LINE, out)


def test_case08_empty_mask_file_is_a_one_line_error(ped2_case_store, field_cases, capsys):
    case = field_cases / "08-ped2-empty-mask-file" / "ped2"
    scored = field_cases / PED2_CASE / "ped2_01" / "testing" / "frames" / "01"
    frames = sorted(p.name for p in scored.iterdir())
    assert filecmp.cmpfiles(scored, case / "testing" / "frames" / "01", frames, shallow=False)[0] == frames
    code, out, err = run(["eval", str(ped2_case_store), "--dataset", "ped2", "--labels", str(case), "--pixel"], capsys)
    assert code == 2 and out == ""
    assert err == f"error: {case / 'testing' / 'gt' / 'Test001_gt' / '021.png'}: label/mask file is empty (0 bytes)\n"


def test_anomalous_frame_with_an_empty_mask_is_reported(ped2_case_store, field_cases, tmp_path, capsys):
    labels = writable_copy(field_cases / PED2_CASE / "ped2_01", tmp_path / "ped2")
    mask = labels / "testing" / "gt" / "Test001_gt" / "011.png"  # frame index 10: labelled 1
    assert cv2.imwrite(str(mask), np.zeros((240, 360), np.uint8))
    result = tmp_path / "r.json"
    code, out, err = run(["eval", str(ped2_case_store), "--dataset", "ped2", "--labels", str(labels), "--pixel",
                          "--normalisation", "offline", "--json", str(result)], capsys)
    assert code == 0 and "pixel AUROC 0." in out
    assert err == ("warning: stream 01: 1 anomalous frame(s) (label 1) have an empty pixel mask "
                   "(all their pixels count as normal): frame_index 10\n")
    saved = json.loads(result.read_text())
    assert saved["anomalous_frames_without_mask"] == {"01": [10]} and saved["unscored_streams"] == []
    assert saved["offline"]["frames"] == 20  # the frame stays in the metrics


def small_ped2(root: Path, lengths: dict[str, int], labels: np.ndarray, masks: np.ndarray) -> Path:
    """A Ped2 layout: clips of ``lengths`` frames, frame labels, and 4x4 masks for clip 01 only."""
    for clip, length in lengths.items():
        (root / "testing" / "frames" / clip).mkdir(parents=True)
        for k in range(length):
            cv2.imwrite(str(root / "testing" / "frames" / clip / f"{k:03d}.jpg"), np.zeros((4, 4), np.uint8))
    np.save(root / "frame_labels_ped2.npy", labels)
    (root / "testing" / "gt" / "Test001_gt").mkdir(parents=True)
    for k, mask in enumerate(masks):
        cv2.imwrite(str(root / "testing" / "gt" / "Test001_gt" / f"{k + 1:03d}.png"), mask.astype(np.uint8))
    return root


def write_store(path: Path, streams: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """A store as the pipeline writes it: stream -> (score, map (N, 4, 4), valid) per frame."""
    store = ResultStore(path, {"model": "dmad"})
    for stream_id, (score, maps, valid) in streams.items():
        store.open_stream(stream_id, result_arrays((4, 4), []), 8, len(score), {})
        if len(score):
            store.write(stream_id, 0, {"score": score, "map": maps, "valid": valid,
                                       "frame_index": np.arange(len(score)), "timestamp": np.arange(len(score)) / 10})
        store.close_stream(stream_id)
    return path


# one scored stream of 6 frames, 4x4 maps: frame 0 not scored; pixels of frames 1-5: 3 defect pixels
# at 1.0, 1 at 0.0, 76 normal at 0.0 -> pixel AUROC (3 + 0.5) / 4
MASKS = np.zeros((6, 4, 4), bool)
MASKS[[2, 3, 5], 0, 0] = True
MASKS[5, 0, 1] = True  # a defect pixel the map misses
MAPS = np.zeros((6, 4, 4), np.float16)
MAPS[:, 0, 0] = [9, 0, 1, 1, 0, 1]  # frame 0 is not scored: its map does not count
SCORED = (np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.25], np.float32), MAPS, np.array([False, True, True, True, True, True]))
NO_ROWS = (np.zeros(0, np.float32), np.zeros((0, 4, 4), np.float16), np.zeros(0, bool))  # decoding failed at once


def test_streams_without_a_scored_frame_are_named_and_left_out(tmp_path, capsys):
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0])  # clip 01: 6 frames (scored 1-5: AUC 5/6), 02: 2, 03: 3
    root = small_ped2(tmp_path / "ped2", {"01": 6, "02": 2, "03": 3}, labels, MASKS * 255)
    store = write_store(tmp_path / "s.zarr", {
        "01": SCORED,
        "02": NO_ROWS,
        "03": (np.full(3, np.nan, np.float32), np.zeros((3, 4, 4), np.float16), np.zeros(3, bool)),  # too short
    })
    result = tmp_path / "r.json"
    code, out, err = run(["eval", str(store), "--dataset", "ped2", "--labels", str(root), "--pixel",
                          "--normalisation", "raw", "offline", "--json", str(result)], capsys)
    assert code == 0
    assert err == ("warning: stream 02: no scored frame, left out of the metrics\n"
                   "warning: stream 03: no scored frame, left out of the metrics\n")
    assert out == ("raw      micro AUC 0.8333  macro AUC 0.8333  (5 frames)  causal: the stored score as written (raw)\n"
                   "offline  micro AUC 0.8333  macro AUC 0.8333  (5 frames)  offline: per-video min-max, needs the whole "
                   "video (papers' protocol)\n"
                   f"pixel AUROC 0.8750\njson: {result}\n")
    saved = json.loads(result.read_text())
    assert saved["unscored_streams"] == ["02", "03"] and saved["pixel_auc"] == 0.875
    assert saved["anomalous_frames_without_mask"] == {}

    only_unscored = write_store(tmp_path / "none.zarr", {"02": NO_ROWS})
    code, out, err = run(["eval", str(only_unscored), "--dataset", "ped2", "--labels", str(root)], capsys)
    assert code == 2
    assert err == ("warning: stream 02: no scored frame, left out of the metrics\n"
                   f"error: {only_unscored}: store holds no stream with a scored frame\n")


def test_shanghaitech_pixel_masks_beside_the_frame_masks(tmp_path, capsys):
    """test_pixel_mask/<video>.npy (frames, H, W) sits beside test_frame_mask/, which --labels names;
    frame 4 is labelled anomalous but its pixel mask is empty: reported."""
    (tmp_path / "test_frame_mask").mkdir()
    (tmp_path / "test_pixel_mask").mkdir()
    np.save(tmp_path / "test_frame_mask" / "01_0001.npy", np.array([0, 0, 1, 1, 1, 1]))
    np.save(tmp_path / "test_pixel_mask" / "01_0001.npy", MASKS.astype(np.uint8))
    store = write_store(tmp_path / "s.zarr", {"01_0001": SCORED, "01_0002": NO_ROWS})
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels",
                          f"{tmp_path / 'test_frame_mask'}/", "--pixel", "--normalisation", "raw"], capsys)
    assert code == 0
    assert out == ("raw      micro AUC 1.0000  macro AUC 1.0000  (5 frames)  causal: the stored score as written (raw)\n"
                   "pixel AUROC 0.8750\n")
    assert err == ("warning: stream 01_0002: no scored frame, left out of the metrics\n"
                   "warning: stream 01_0001: 1 anomalous frame(s) (label 1) have an empty pixel mask "
                   "(all their pixels count as normal): frame_index 4\n")
    (tmp_path / "test_pixel_mask" / "01_0001.npy").unlink()
    code, out, err = run(["eval", str(store), "--dataset", "shanghaitech", "--labels",
                          str(tmp_path / "test_frame_mask"), "--pixel"], capsys)
    assert code == 2 and err.endswith(f"error: {tmp_path / 'test_pixel_mask' / '01_0001.npy'}: no pixel masks for "
                                      f"stream '01_0001' (ShanghaiTech: test_pixel_mask/ beside test_frame_mask/)\n")


@pytest.fixture(scope="module")
def mvtec_store(ray_session, shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """An MVTec AD layout built from MTD (3 cracks): crack 001's mask is empty, crack 002's is a
    palette PNG whose defect index is a dark colour on a white background; PaDiM fitted on its
    train/good and the test split scored. Returns (category folder, store)."""
    root = tmp_path_factory.mktemp("mvtec")
    category = mvtec_from_mtd(shared_data / "mtd", root)
    truth = category / "ground_truth" / "crack"
    empty = cv2.imread(str(truth / "001_mask.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(truth / "001_mask.png"), np.zeros_like(empty))
    palette = Image.fromarray((cv2.imread(str(truth / "002_mask.png"), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8),
                              mode="P")
    palette.putpalette([255, 255, 255, 30, 0, 0])
    shutil.copy(truth / "002_mask.png", root / "002_mask_0_255.png")
    palette.save(truth / "002_mask.png")
    config = root / "padim.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "padim", "image_size": 64},
        "train": {"data": f"mvtec:{category}?split=train", "batch_size": 4, "threads": 1, "output_dir": str(root)},
    }))
    assert main(["train", str(config), "--quiet"]) == 0
    store = root / "s.zarr"
    assert main(["score", f"mvtec:{category}", "--checkpoint", str(root / "model.pt"), "--out", str(store),
                 "--quiet"]) == 0
    return category, store


def test_still_defect_image_with_an_empty_mask_is_reported_and_palette_masks_read_by_index(mvtec_store, tmp_path,
                                                                                           capsys):
    category, store = mvtec_store
    palette_json, grey_json = tmp_path / "palette.json", tmp_path / "grey.json"
    code, out, err = run(["eval", str(store), "--dataset", "mvtec", "--json", str(palette_json)], capsys)
    assert code == 0 and out.startswith("4 images (1 normal)\n")
    crack_001 = category / "test" / "crack" / "001.png"
    assert err == (f"warning: 1 image(s) of a defect class have an empty mask (anomalous in image metrics, "
                   f"all pixels normal): {crack_001}\n")
    saved = json.loads(palette_json.read_text())
    assert saved["anomalous_images_without_mask"] == [str(crack_001)]

    moved = writable_copy(category, tmp_path / "tile")  # the same masks, 002 as the original 0/255 PNG
    shutil.copy(category.parent / "002_mask_0_255.png", moved / "ground_truth" / "crack" / "002_mask.png")
    assert run(["eval", str(store), "--dataset", "mvtec", "--labels", str(moved), "--json", str(grey_json)],
               capsys)[0] == 0
    assert json.loads(grey_json.read_text())["pooled"] == saved["pooled"]
    assert 0.0 < saved["pooled"]["pixel_auroc"] < 1.0
