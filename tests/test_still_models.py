"""Still-image models (PaDiM baseline, ADTR, FAVAE) on real MTD images: shapes, learning, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.adtr import ADTR, ADTRConfig
from models.backbones import FrozenBackbone
from models.errors import BackboneError
from models.favae import FAVAE, FAVAEConfig
from models.padim import PaDiM, PaDiMConfig
from pipeline.checkpoint import load_model, save_checkpoint
from pipeline.datasets import mtd_split
from pipeline.preprocess import prepare_frame
from pipeline.sources import read_image

SMALL = {
    "adtr": (ADTR, ADTRConfig(image_size=64, hidden=32, heads=4, encoder_layers=1, decoder_layers=1, feedforward=64,
                              dropout=0.0, score_box=4)),
    "favae": (FAVAE, FAVAEConfig(image_size=64, latent=16, widths=(8, 16, 32), bottleneck=8)),
    "padim": (PaDiM, PaDiMConfig(image_size=64)),
}


@pytest.fixture(scope="module")
def mtd_images(shared_data):
    """12 defect-free training images and 4 crack images of MTD at 64x64, uint8 windows (N, 1, 3, 64, 64)."""
    train, test = mtd_split(shared_data / "mtd")
    cracks = [r for r in test if r.category == "MT_Crack"][:4]

    def load(records):
        return torch.from_numpy(np.stack([prepare_frame(read_image(r.path), 64, 3) for r in records]))[:, None]

    return load(train[:12]), load(cracks)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_score_shapes_and_checkpoint_round_trip(name, mtd_images, tmp_path):
    torch.manual_seed(0)
    model_class, config = SMALL[name]
    model = model_class(config).eval()
    normal, cracks = mtd_images
    if name == "padim":
        with pytest.raises(RuntimeError, match="only after fit_statistics"):
            model.score(cracks)
        model.fit_statistics([normal[:6], normal[6:]])
    with torch.inference_mode():
        scored = model.score(cracks)
    assert scored.score.shape == (4,) and scored.anomaly_map.shape == (4, 64, 64)
    assert torch.isfinite(scored.anomaly_map).all() and scored.anomaly_map.std() > 0
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_model(tmp_path / "m.pt", expected_model=name)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.score(cracks).score, scored.score)


@pytest.mark.parametrize("name", ["adtr", "favae"])
def test_loss_decreases_on_real_images(name, mtd_images):
    torch.manual_seed(0)
    model_class, config = SMALL[name]
    model = model_class(config).train()
    normal, _ = mtd_images
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model.training_loss(normal)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_padim_ranks_cracks_above_held_out_normal_images(shared_data):
    train, test = mtd_split(shared_data / "mtd")
    model = PaDiM(PaDiMConfig(image_size=128)).eval()

    def load(records):
        return torch.from_numpy(np.stack([prepare_frame(read_image(r.path), 128, 3) for r in records]))[:, None]

    model.fit_statistics([load(train[k:k + 20]) for k in range(0, 60, 20)])
    normal = [r for r in test if not r.anomalous][:10]
    cracks = [r for r in test if r.category == "MT_Crack"][:10]
    with torch.inference_mode():
        normal_scores, crack_scores = model.score(load(normal)).score, model.score(load(cracks)).score
    assert np.mean([(c > normal_scores).float().mean() for c in crack_scores]) > 0.7  # image AUROC on 10 + 10


def test_backbone_weights_file_missing_or_not_fitting(tmp_path):
    with pytest.raises(BackboneError, match=r"nowhere\.pth: backbone weights file for resnet18 not found"):
        FrozenBackbone("resnet18", ("layer2",), str(tmp_path / "nowhere.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(BackboneError, match=r"wrong\.pth: weights do not fit resnet18"):
        FrozenBackbone("resnet18", ("layer2",), str(wrong))
    with pytest.raises(BackboneError, match="needs backbone_weights"):
        FrozenBackbone("vgg16", ("features.15",))
    with pytest.raises(BackboneError, match="efficientnet_lite0 has no layer 'block99'"):
        FrozenBackbone("efficientnet_lite0", ("block99",))


def test_torchvision_backbone_from_a_weights_file(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    backbone = FrozenBackbone("resnet18", ("layer1", "layer2"), str(path))
    features = backbone(torch.zeros(1, 3, 64, 64))
    assert backbone.channels == [64, 128] and [f.shape[-1] for f in features] == [16, 8]


def test_cli_names_a_missing_backbone_file(tmp_path, capsys):
    import yaml

    from pipeline.cli import main

    config = tmp_path / "adtr.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "adtr", "backbone": "resnet18", "backbone_weights": str(tmp_path / "r18.pth"),
                  "layers": ["layer2", "layer3"]},
        "train": {"data": str(tmp_path)},
    }))
    assert main(["train", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'r18.pth'}: backbone weights file for resnet18 not found"
