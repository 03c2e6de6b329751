import json
import math

import pytest
import torch
import yaml

from anomstream.models.registry import build_model
from anomstream.pipeline.checkpoint import load_model, read_checkpoint
from anomstream.pipeline.cli import main
from anomstream.pipeline.config import parse_config
from anomstream.pipeline.training.data import WindowDataset, load_clips
from anomstream.pipeline.training.loop import gradient_step
from anomstream.pipeline.training.schedule import learning_rate_factor, phase_start_steps

TINY_MODEL = {"name": "dmad", "image_size": 32, "channels": 1, "widths": [4, 8, 8, 16], "memory_size": 16,
              "skip_channels": 4, "offset_width": 4}


def _config(tmp_path, sample_clip, epochs, precision="fp32", **train):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "model": TINY_MODEL,
        "train": {"data": str(sample_clip), "epochs": epochs, "batch_size": 16, "learning_rate": 1e-3,
                  "seed": 3, "threads": 1, "output_dir": str(tmp_path / "run"), "precision": precision, **train},
    }))
    return path


def test_train_checkpoints_every_epoch_and_resumes(tmp_path, sample_clip, capsys):
    config = _config(tmp_path, sample_clip, epochs=1)
    assert main(["train", str(config), "--quiet"]) == 0
    assert f"checkpoint: {tmp_path / 'run' / 'model.pt'}" in capsys.readouterr().out
    first = read_checkpoint(tmp_path / "run" / "last.pt")
    assert first["epoch"] == 1 and "optimizer" in first

    assert main(["train", str(config), "--quiet", "--resume", "--epochs", "2"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["loss"] < log[0]["loss"]
    # the cosine ended with epoch 1; resumed to 2 epochs it restarts half-way down, not at 0
    assert log[0]["learning_rate"] == 1e-3 and log[1]["learning_rate"] == pytest.approx(5e-4)
    model, payload = load_model(tmp_path / "run" / "model.pt", expected_model="dmad")
    assert payload["epoch"] == 2 and model.image_size == 32
    # the background template starts from the training frames, not zeros
    assert model.background.abs().mean() > 0.1
    # calibrated after training, on the training data (no calibration_data held out): 176 windows
    calibration = payload["calibration"]
    assert calibration["data"] == str(sample_clip) and calibration["frames"] == 176 and calibration["smoothing"] == 9
    assert set(calibration["terms"]) == {"gradient_excess", "deformation"}
    assert tuple(calibration["reference"]["gradient_difference"].shape) == (32, 32)


def test_warmup_ramps_the_learning_rate_then_starts_the_cosine(tmp_path, sample_clip):
    assert main(["train", str(_config(tmp_path, sample_clip, epochs=2, warmup_epochs=1)), "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = math.ceil(len(WindowDataset(load_clips(str(sample_clip), 32, 1, False), 5)) / 16)  # batches per epoch
    assert steps >= 2
    assert log[0]["learning_rate"] == pytest.approx(1e-3 / steps) and log[1]["learning_rate"] == pytest.approx(1e-3)
    assert log[1]["loss"] < log[0]["loss"]


def test_each_training_phase_gets_its_own_warmup_and_cosine():
    assert phase_start_steps([0.7], 1000) == [700] and phase_start_steps([0.7], 15) == [11]  # 10.5 -> step 11
    factors = [learning_rate_factor(step, 20, warmup_steps=2, phase_starts=[12]) for step in range(20)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[11] == pytest.approx(0.0, abs=0.03)
    assert factors[12:15] == [0.5, 1.0, 1.0] and factors[19] == pytest.approx(0.0, abs=0.07)
    assert factors[:12] == [learning_rate_factor(step, 12, warmup_steps=2) for step in range(12)]


def test_gradient_clip_bounds_the_global_gradient_norm(sample_clip):
    model = build_model("dmad", parse_config({"model": TINY_MODEL}).model_params())
    windows = WindowDataset(load_clips(str(sample_clip), 32, 1, False), 5)
    batch = torch.stack([windows[i] for i in range(4)])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is the (clipped) gradient itself
    gradient_step(model, batch, optimizer, "fp32", gradient_clip=0.01)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm() == pytest.approx(0.01, rel=1e-3)


def test_training_is_deterministic_for_a_seed(tmp_path, sample_clip):
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        assert main(["train", str(_config(folder, sample_clip, epochs=1)), "--quiet"]) == 0
        runs.append(read_checkpoint(folder / "run" / "model.pt")["state_dict"])
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key])


def test_bf16_mixed_precision_trains_fp32_weights(tmp_path, sample_clip):
    """train.precision: bf16 runs the forward pass under autocast; the weights, the optimizer state and the
    checkpoint stay fp32, and the model learns as in fp32."""
    assert main(["train", str(_config(tmp_path, sample_clip, epochs=2, precision="bf16")), "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["loss"] < log[0]["loss"]
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    tensors = [*checkpoint["state_dict"].values(),
               *(v for state in checkpoint["optimizer"]["state"].values() for v in state.values())]
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}


def test_hflip_augmentation_mirrors_whole_windows_and_repeats_with_the_seed():
    from anomstream.pipeline.training.augment import augment_windows

    windows = torch.arange(6 * 5 * 1 * 2 * 3, dtype=torch.uint8).reshape(6, 5, 1, 2, 3)
    first = augment_windows(windows, ["hflip"], torch.Generator().manual_seed(1))
    again = augment_windows(windows, ["hflip"], torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    flipped = [i for i in range(6) if not torch.equal(first[i], windows[i])]
    assert flipped == [1, 2, 4]  # seed 1 draws these
    for i in range(6):
        assert torch.equal(first[i], windows[i].flip(-1) if i in flipped else windows[i])  # every frame alike
    assert torch.equal(windows, torch.arange(6 * 5 * 1 * 2 * 3, dtype=torch.uint8).reshape(6, 5, 1, 2, 3))
    assert augment_windows(windows, [], torch.Generator()) is windows
