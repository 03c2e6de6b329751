"""Still images end to end: train (fit) a model on an MTD-layout folder, score it (and MVTec LOCO /
KolektorSDD2 layouts) through Ray, evaluate image / pixel AUROC and PRO from the store; undecodable
images are kept out and reported."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from layout_builders import ksdd2_from_mtd, loco_from_mtd
from sklearn.metrics import roc_auc_score
from small_models import SMALL, still_windows

from anomstream.models.dsr import DSR
from anomstream.pipeline.checkpoint import read_checkpoint, read_checkpoint_and_hash, save_checkpoint
from anomstream.pipeline.cli import main
from anomstream.pipeline.store import open_results


@pytest.fixture(scope="module")
def small_mtd(shared_data, tmp_path_factory) -> Path:
    """10 defect-free and 3 crack images of MTD (with masks) in the MTD layout, plus one broken
    JPEG that sorts first among the cracks."""
    root = tmp_path_factory.mktemp("mtd")
    for name, count in (("MT_Free", 10), ("MT_Crack", 3)):
        (root / name / "Imgs").mkdir(parents=True)
        for path in sorted((shared_data / "mtd" / name / "Imgs").glob("*.jpg"))[:count]:
            shutil.copy(path, root / name / "Imgs" / path.name)
            shutil.copy(path.with_suffix(".png"), root / name / "Imgs" / path.with_suffix(".png").name)
    (root / "MT_Crack" / "Imgs" / "exp0_num_0.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


@pytest.fixture(scope="module")
def padim_checkpoint(small_mtd, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("padim")
    config = folder / "padim.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "padim", "image_size": 64},
        "train": {"data": f"mtd:{small_mtd}?split=train", "batch_size": 4, "threads": 1, "output_dir": str(folder)},
    }))
    assert main(["train", str(config), "--quiet"]) == 0
    return folder / "model.pt"


def test_mtd_scored_through_ray_and_evaluated(ray_session, small_mtd, padim_checkpoint, tmp_path, capsys):
    store = tmp_path / "mtd.zarr"
    assert main(["score", f"mtd:{small_mtd}", "--checkpoint", str(padim_checkpoint), "--out", str(store),
                 "--replicas", "2", "--batch-size", "2", "--quiet"]) == 0
    assert "warning: MT_Crack: skipped " in capsys.readouterr().err
    root = open_results(store)
    assert sorted(root.group_keys()) == ["MT_Crack", "MT_Free"]
    free, crack = root["MT_Free"], root["MT_Crack"]
    np.testing.assert_array_equal(free["frame_index"][:], [0, 1])  # 10 - int(0.8 * 10) held-out normals
    np.testing.assert_array_equal(crack["frame_index"][:], [1, 2, 3])  # the broken first image left a gap
    assert crack.attrs["items"][0].endswith("exp0_num_0.jpg") and crack.attrs["complete"] is True
    assert len(crack.attrs["warnings"]) == 1 and "exp0_num_0.jpg: cannot decode image" in crack.attrs["warnings"][0]
    assert crack["map"].shape == (3, 64, 64) and np.isfinite(crack["score"][:]).all()

    result_path = tmp_path / "eval.json"
    assert main(["eval", str(store), "--dataset", "mtd", "--json", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert result["images"] == 5 and result["normal_images"] == 2
    assert set(result["per_class"]) == {"MT_Crack"} and result["per_class"]["MT_Crack"]["images"] == 3
    for metric in ("image_auroc", "pixel_auroc", "pro"):
        assert 0.0 <= result["pooled"][metric] <= 1.0

    moved = tmp_path / "moved"
    shutil.copytree(small_mtd, moved)
    assert main(["eval", str(store), "--dataset", "mtd", "--labels", str(moved), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["pooled"] == result["pooled"]


@pytest.mark.parametrize("name", ["adtr", "favae", "ds2-cutpaste", "dsr"])
def test_every_still_model_scores_through_ray_in_order(name, ray_session, small_mtd, tmp_path):
    """Two replicas, batches of 2: each image's store row holds that image's own score and map."""
    torch.manual_seed(0)
    model_class, config = SMALL[name]
    model = model_class(config).eval()
    if name.startswith("ds2"):
        train = sorted(str(p) for p in (small_mtd / "MT_Free" / "Imgs").glob("*.jpg"))[:8]
        model.fit_statistics([still_windows(train[:4], 64), still_windows(train[4:], 64)])
    save_checkpoint(tmp_path / "model.pt", model)
    store = tmp_path / "scored.zarr"
    assert main(["score", f"mtd:{small_mtd}", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(store),
                 "--replicas", "2", "--batch-size", "2", "--quiet"]) == 0
    root = open_results(store)
    for group, rows in (("MT_Free", [0, 1]), ("MT_Crack", [1, 2, 3])):
        stored = root[group]
        np.testing.assert_array_equal(stored["frame_index"][:], rows)
        with torch.inference_mode():
            expected = model.score(still_windows([stored.attrs["items"][i] for i in rows], 64))
        np.testing.assert_allclose(stored["score"][:], expected.score.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stored["map"][:].astype(np.float32), expected.anomaly_map.numpy(), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("layout, build, classes", [
    ("mvtec_loco", loco_from_mtd, {"logical_anomalies": 2, "structural_anomalies": 1}),
    ("ksdd2", ksdd2_from_mtd, {"defect": 2}),
])
def test_official_layouts_scored_and_evaluated(ray_session, shared_data, padim_checkpoint, tmp_path, layout, build, classes):
    root = build(shared_data / "mtd", tmp_path)
    store = tmp_path / f"{layout}.zarr"
    assert main(["score", f"{layout}:{root}", "--checkpoint", str(padim_checkpoint), "--out", str(store),
                 "--replicas", "1", "--batch-size", "2", "--quiet"]) == 0
    groups = open_results(store)
    names = sorted(groups.group_keys())
    assert names == sorted(["good", *classes])
    assert main(["eval", str(store), "--dataset", layout, "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {name: c["images"] for name, c in result["per_class"].items()} == classes
    labels = np.concatenate([np.full(groups[k]["score"].shape[0], k != "good") for k in names])
    scores = np.concatenate([groups[k]["score"][:] for k in names])
    assert result["pooled"]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert 0.0 <= result["pooled"]["pixel_auroc"] <= 1.0 and 0.0 <= result["pooled"]["pro"] <= 1.0


def test_plain_image_folder_scores_but_has_no_labels(ray_session, small_mtd, padim_checkpoint, tmp_path, capsys):
    store = tmp_path / "plain.zarr"
    assert main(["score", str(small_mtd / "MT_Crack" / "Imgs"), "--checkpoint", str(padim_checkpoint),
                 "--out", str(store), "--replicas", "1", "--quiet"]) == 0
    (group,) = [open_results(store)[k] for k in open_results(store).group_keys()]
    # every file of the folder, masks included, is a still: 3 cracks + their 3 masks (+ the broken one)
    assert group.attrs["written"] == 6 and len(group.attrs["warnings"]) == 1
    capsys.readouterr()
    assert main(["eval", str(store), "--dataset", "mtd"]) == 2
    assert "was not scored from a labelled dataset" in capsys.readouterr().err


def test_adtr_fine_tunes_on_labelled_anomalies(shared_data, small_mtd, padim_checkpoint, tmp_path, capsys):
    model = {"name": "adtr", "image_size": 64, "hidden": 32, "heads": 4, "encoder_layers": 1, "decoder_layers": 1,
             "feedforward": 64}

    def config(name, model=model, **train):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"model": model, "train": {
            "data": f"mtd:{small_mtd}?split=train", "epochs": 1, "batch_size": 4, "threads": 1,
            "output_dir": str(tmp_path / name), **train}}))
        return str(path)

    assert main(["train", config("normal"), "--quiet"]) == 0
    normal_only = tmp_path / "normal" / "model.pt"
    labelled = f"mtd:{shared_data / 'mtd'}?split=labelled&labelled=1"
    assert main(["train", config("plus", init_checkpoint=str(normal_only), anomalies=labelled, learning_rate=1e-9),
                 "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "plus" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["anomalous"] > 0 and log[0]["normal"] > 0
    started = read_checkpoint(normal_only)["state_dict"]
    fine_tuned = read_checkpoint(tmp_path / "plus" / "model.pt")["state_dict"]
    torch.testing.assert_close(fine_tuned["query"], started["query"], atol=1e-5, rtol=0)  # lr ~0: it started there
    capsys.readouterr()

    assert main(["train", config("other", init_checkpoint=str(padim_checkpoint)), "--quiet"]) == 2
    assert "checkpoint is for model 'padim', not 'adtr'" in capsys.readouterr().err
    assert main(["train", config("wider", model={**model, "hidden": 64}, init_checkpoint=str(normal_only)),
                 "--quiet"]) == 2
    assert "train.init_checkpoint: " in (err := capsys.readouterr().err) and "does not fit this adtr config" in err
    assert main(["train", config("padim", model={"name": "padim", "image_size": 64}, anomalies=labelled),
                 "--quiet"]) == 2
    assert "train.anomalies: model 'padim' trains on normal images only" in capsys.readouterr().err


def test_dsr_detection_training_builds_on_a_stage1_run(small_mtd, tmp_path, capsys):
    small = {"name": "dsr", **json.loads(json.dumps(asdict(SMALL["dsr"][1])))}  # tuples as YAML lists

    def config(name, stage, epochs=1):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"model": {**small, "stage": stage, "stage2_fraction": 0.5}, "train": {
            "data": f"mtd:{small_mtd}?split=train", "epochs": epochs, "batch_size": 4, "learning_rate": 1e-3,
            "threads": 1, "output_dir": str(tmp_path / name)}}))
        return str(path)

    assert main(["train", config("stage1", "discrete"), "--quiet"]) == 0
    stage1 = tmp_path / "stage1" / "model.pt"
    assert main(["train", config("detection", "detection", epochs=2), "--stage1", str(stage1), "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "detection" / "train_log.jsonl").read_text().splitlines()]
    assert "focal" in log[0] and "upsampling_focal" in log[1]  # stage 2 in epoch 1, stage 3 in epoch 2
    assert log[0]["learning_rate"] == log[1]["learning_rate"] == 1e-3  # stage 3 starts its own schedule
    started, trained = read_checkpoint(stage1)["state_dict"], read_checkpoint(tmp_path / "detection" / "model.pt")
    assert trained["params"]["stage1_checkpoint"] == str(stage1)
    codebook = "discrete.quantise_lo.codebook"
    torch.testing.assert_close(trained["state_dict"][codebook], started[codebook])  # frozen stage-1 subspace
    torch.manual_seed(0)  # the seed both runs start from: a run that skipped stage 1 would hold this codebook
    fresh = DSR(SMALL["dsr"][1])
    assert not torch.allclose(fresh.discrete.quantise_lo.codebook, started[codebook])
    capsys.readouterr()

    assert main(["train", config("detection", "detection"), "--quiet"]) == 2
    assert "dsr detection stage needs stage1_checkpoint" in capsys.readouterr().err
    assert main(["train", config("detection", "detection"), "--stage1", str(tmp_path / "none.pt"), "--quiet"]) == 2
    from anomstream.pipeline.assets import CONFIGS

    shipped = f"{CONFIGS / 'weights' / 'avenue_dmad_cpu.pt'}, {CONFIGS / 'weights' / 'ped2_dmad_cpu.pt'}"
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'none.pt'}: checkpoint file not found "
                                               f"(shipped checkpoints: {shipped})")


def test_bench_measures_a_still_checkpoints_verdict_by_image_and_pixel_auroc(ray_session, small_mtd, padim_checkpoint,
                                                                              tmp_path, monkeypatch, capsys):
    """``anomstream bench --accuracy mtd:ROOT`` scores the MTD test split (DS2 protocol, seed 0) with
    each backend and prints the image AUROC of the stored score and the pooled pixel AUROC, the same
    figures as ``anomstream eval`` of that split; a backend refused at the start is a line, and kept in
    the verdict (what ``auto``'s note then says); one that fails otherwise too (int8 with no footage:
    this checkpoint has no calibration), and the others are still measured; ``--quantization-data``
    gives int8 its footage (test_precision: what a verdict keeps)."""
    import anomstream.pipeline.evaluation.backends as accuracy_module
    from anomstream.pipeline.backends.runners import CheckRefusal
    from anomstream.pipeline.backends.verdict import matrix_flags, measured_verdict

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = tmp_path / "test.zarr"
    assert main(["score", f"mtd:{small_mtd}?split=test&seed=0", "--checkpoint", str(padim_checkpoint), "--out",
                 str(store), "--backend", "onnxruntime", "--quiet"]) == 0
    assert main(["eval", str(store), "--dataset", "mtd", "--json", str(tmp_path / "eval.json")]) == 0
    pooled = json.loads((tmp_path / "eval.json").read_text())["pooled"]
    capsys.readouterr()

    real = accuracy_module.backend_accuracy
    check_clause = "its score ranks normal windows unlike torch fp32"
    refusal = f"--backend openvino --precision bf16: {check_clause}; use --precision fp32"

    def refusing_bf16(checkpoint, accuracy, label, settings, out):
        if settings.precision == "bf16":
            raise CheckRefusal(refusal)
        return real(checkpoint, accuracy, label, settings, out)

    monkeypatch.setattr(accuracy_module, "backend_accuracy", refusing_bf16)
    bench = ["bench", "--checkpoint", str(padim_checkpoint), "--rounds", "0", "--accuracy", f"mtd:{small_mtd}",
             "--save-verdict", "--out", str(tmp_path / "bench")]
    assert main([*bench, "--backends", "onnxruntime,openvino,openvino:bf16,openvino:int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(f"mtd test set, {padim_checkpoint}: stored score's image AUROC, pooled pixel AUROC, events")
    image, pixel = f"{pooled['image_auroc']:.4f}", f"{pooled['pixel_auroc']:.4f}"
    assert lines[start + 1].startswith(f"onnxruntime        image {image} (+0.0000)  pixel {pixel} (+0.0000)  events ")
    assert lines[start + 2].startswith(f"openvino           image {image} (+0.0000)  pixel {pixel} (+0.0000)  events ")
    assert lines[start + 3] == f"openvino_bf16      refused by the start-of-run check: {check_clause}"
    assert lines[start + 4] == ("openvino_int8      failed: --precision int8: no normal footage to quantize on "
                                "(--quantization-data)")
    kept = measured_verdict(read_checkpoint_and_hash(str(padim_checkpoint))[1])
    assert lines[start + 5] == f"verdict: {tmp_path / 'cache' / 'anomstream' / 'precision_verdicts.json'} (bf16 refused)"
    clause = (f"its score ranks normal windows unlike torch fp32 (mtd test set, {time.strftime('%Y-%m-%d')}, "
              f"CPU flags {matrix_flags()})")
    assert kept.micro_auc == {"fp32": pytest.approx(pooled["image_auroc"])} and kept.refused == {"bf16": clause}
    assert kept.refusal("bf16") == f"refused by the start-of-run check: {clause}"
    assert not (tmp_path / "bench").exists() or not any((tmp_path / "bench").iterdir())

    assert main([*bench, "--backends", "onnxruntime,openvino:int8", "--quantization-data",
                 f"mtd:{small_mtd}?split=train"]) == 0
    printed = capsys.readouterr()
    assert "Statistics collection" not in printed.out + printed.err  # NNCF's progress bars: not shown
    int8 = next(line for line in printed.out.splitlines() if line.startswith("openvino_int8 "))
    assert not int8.startswith("openvino_int8      failed"), int8  # measured, or refused by the check: footage found
    kept = measured_verdict(read_checkpoint_and_hash(str(padim_checkpoint))[1])
    assert kept.refused["bf16"] == clause and ("int8" in kept.refused) != ("int8" in kept.micro_auc)


def test_a_test_splits_anomaly_classes_are_not_judged_as_scenes_but_a_folder_of_them_is(ray_session, shared_data,
                                                                                       tmp_path, capsys):
    """MTD's test split is scored as one stream per class; a class of defects is anomalous by
    construction, so most of it above the threshold says that the model finds them, not that it does
    not fit the scene (``bench --accuracy`` warned so on MT_Blowhole). The same images as a plain folder,
    with no labels to say so, are still judged."""
    mtd = tmp_path / "mtd"  # 64 defect-free images (51 to train and calibrate on) and MTD's 115 blowholes
    for name, count in (("MT_Free", 64), ("MT_Blowhole", 115)):
        (mtd / name / "Imgs").mkdir(parents=True)
        for path in sorted((shared_data / "mtd" / name / "Imgs").glob("*.jpg"))[:count]:
            shutil.copy(path, mtd / name / "Imgs" / path.name)
            shutil.copy(path.with_suffix(".png"), mtd / name / "Imgs" / path.with_suffix(".png").name)
    config = tmp_path / "padim.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "padim", "image_size": 128},
        "train": {"data": f"mtd:{mtd}?split=train", "batch_size": 8, "output_dir": str(tmp_path / "run")}}))
    assert main(["train", str(config), "--quiet"]) == 0
    folder = tmp_path / "blowholes"
    folder.mkdir()
    for path in sorted((mtd / "MT_Blowhole" / "Imgs").glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    capsys.readouterr()
    store = tmp_path / "test.zarr"
    assert main(["score", f"mtd:{mtd}?split=test&seed=0", str(folder), "--checkpoint", str(tmp_path / "run" / "model.pt"),
                 "--out", str(store), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "does not fit this scene" in line]
    root = open_results(store)
    assert sorted(root.group_keys()) == ["MT_Blowhole", "MT_Free", "blowholes"]
    threshold = root.attrs["calibration"]["threshold"]
    assert np.mean(root["MT_Blowhole"]["score"][:] > threshold) > 0.5  # what a scene check calls a misfit
    assert [root[name].attrs.get("scene_check", True) for name in ("MT_Blowhole", "MT_Free")] == [False, True]
    assert "scene" not in root["MT_Blowhole"].attrs and root["blowholes"].attrs["scene"]["state"] == "misfit"
    assert [line.split(":")[1].strip() for line in warnings] == ["blowholes"]
