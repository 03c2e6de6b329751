"""Still-image models (PaDiM baseline, ADTR, FAVAE, DS2, DSR) on real MTD images: shapes, learning, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from small_models import DSR_STAGE1, SMALL, still_windows

from anomstream.models.adtr import ADTR
from anomstream.models.backbones import FrozenBackbone
from anomstream.models.base import LabelledAnomalies
from anomstream.models.blocks import random_rotations, rotate
from anomstream.models.ds2 import DS2, DS2Config
from anomstream.models.dsr import DSR, DSRConfig
from anomstream.models.errors import BackboneError, EarlierStageError
from anomstream.models.favae import FAVAE, FAVAEConfig
from anomstream.models.padim import PaDiM, PaDiMConfig
from anomstream.models.synthetic_anomalies import cut_paste, cut_paste_scar
from anomstream.models.vector_quantizer import EMAVectorQuantizer
from anomstream.pipeline.checkpoint import load_model, read_checkpoint, save_checkpoint
from anomstream.pipeline.datasets.layouts import mtd_split
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.training.loop import precision_context


@pytest.fixture(scope="module")
def mtd_images(shared_data):
    """12 defect-free training images and 4 crack images of MTD at 64x64, uint8 windows (N, 1, 3, 64, 64)."""
    train, test = mtd_split(shared_data / "mtd")
    cracks = [r for r in test if r.category == "MT_Crack"][:4]
    return still_windows([r.path for r in train[:12]], 64), still_windows([r.path for r in cracks], 64)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_score_shapes_and_checkpoint_round_trip(name, mtd_images, tmp_path):
    torch.manual_seed(0)
    model_class, config = SMALL[name]
    model = model_class(config).eval()
    normal, cracks = mtd_images
    if name in ("padim", "ds2", "ds2-cutpaste"):
        with pytest.raises(RuntimeError, match="only after fit_statistics"):
            model.score(cracks)
        model.fit_statistics([normal[:6], normal[6:]])
    with torch.inference_mode():
        scored = model.score(cracks)
    assert scored.score.shape == (4,) and scored.anomaly_map.shape == (4, 64, 64)
    assert torch.isfinite(scored.anomaly_map).all() and scored.anomaly_map.std() > 0
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_model(tmp_path / "m.pt", expected_model=model.name)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.score(cracks).score, scored.score)


@pytest.mark.parametrize("name", ["adtr", "favae", "favae-crops", "ds2", "dsr-stage1"])
def test_loss_decreases_on_real_images(name, mtd_images):
    torch.manual_seed(0)
    model_class, config = (DSR, DSR_STAGE1) if name == "dsr-stage1" else SMALL[name]
    model = model_class(config).train()
    normal, _ = mtd_images
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model.training_loss(normal)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if name == "ds2":  # negative cosine: from about 0 towards -4 (two scales)
        assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
        return
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    if hasattr(model, "backbone"):
        assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("name", ["adtr", "favae"])
def test_bf16_autocast_keeps_the_loss_fp32_and_close_to_fp32(name, mtd_images):
    """train.precision: bf16 wraps training_loss in autocast: the likelihood / feature distance is computed in
    fp32 from bf16 network outputs, so the loss is a fp32 tensor within 2 % of the fp32 loss."""
    model_class, config = SMALL[name]
    normal, _ = mtd_images
    torch.manual_seed(0)
    model = model_class(config).train()
    losses = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        with precision_context(precision):
            losses.append(model.training_loss(normal)["loss"])
    assert losses[1].dtype == torch.float32
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=0.02)
    assert losses[1].item() != losses[0].item()  # autocast did run the network in bf16


def test_vector_quantiser_picks_codewords_in_fp32_under_bf16_autocast():
    """bf16 distances pick a wrong codeword for a share of positions; the quantiser (DSR stage 1 and 2 train
    under train.precision: bf16) computes them in fp32 and its EMA codebook update stays fp32."""
    torch.manual_seed(0)
    quantiser = EMAVectorQuantizer(512, 64).train()
    features = torch.randn(4, 64, 32, 32)
    expected = quantiser.nearest(features)
    norms = quantiser.codebook.pow(2).sum(1)
    with precision_context("bf16"):
        assert torch.equal(quantiser.nearest(features), expected)
        products = features.permute(0, 2, 3, 1).reshape(-1, 64) @ quantiser.codebook.t()
        _, _, indices = quantiser(features)
    assert products.dtype == torch.bfloat16 and ((norms - 2.0 * products.float()).argmin(1) != expected.flatten()).any()
    assert torch.equal(indices, expected) and quantiser.codebook.dtype == quantiser.code_sum.dtype == torch.float32


def test_dead_codeword_restarts_keep_the_ema_codebook_in_use():
    """Encoder outputs far from the normal(0, 1) initial codebook: plain EMA updates leave a handful of codes
    in use (the collapse DSR's stage 1 showed on MTD); restarting dead codes at encoder outputs uses most."""
    in_use = {}
    for threshold in (0.0, 1.0):
        torch.manual_seed(0)
        quantiser = EMAVectorQuantizer(256, 8, dead_code_threshold=threshold).train()
        for _ in range(20):
            features = 0.1 * torch.randn(8, 8, 16, 16) + 3.0
            _, _, indices = quantiser(features)
        in_use[threshold] = (quantiser.codes_in_use(), indices.unique().numel())
    assert in_use[0.0][0] <= 8 and in_use[0.0][1] <= 8
    assert in_use[1.0][0] >= 128 and in_use[1.0][1] >= 200


def test_favae_texture_protocol_trains_on_crops_and_scores_tiles(mtd_images):
    """Scoring with crops = scoring each tile on its own, stitched; training sees crop-sized patches."""
    torch.manual_seed(0)
    tiled = FAVAE(replace(SMALL["favae-crops"][1], map_sigma=0.0)).eval()
    whole = FAVAE(replace(SMALL["favae-crops"][1], image_size=32, crop=0, map_sigma=0.0)).eval()
    whole.load_state_dict(tiled.state_dict())
    _, cracks = mtd_images
    with torch.inference_mode():
        stitched = tiled.score(cracks).anomaly_map
        for y, x in ((0, 0), (0, 32), (32, 0), (32, 32)):
            tile = whole.score(cracks[:, :, :, y:y + 32, x:x + 32]).anomaly_map
            torch.testing.assert_close(stitched[:, y:y + 32, x:x + 32], tile, atol=1e-4, rtol=1e-4)
    crops = tiled._random_crops(cracks[:, -1])
    assert crops.shape == (4, 3, 32, 32)
    for crop, image in zip(crops, cracks[:, -1]):  # each crop is a window of its own image
        windows = image.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 33, 33, 32, 32)
        assert (windows == crop[:, None, None]).flatten(3).all(3).all(0).any()
    with pytest.raises(ValueError, match=r"crop \(48\) must be a multiple of 16 that divides image_size \(64\)"):
        FAVAEConfig(image_size=64, crop=48)


def test_adtr_anomaly_loss_pulls_normal_tokens_and_pushes_labelled_defects(mtd_images):
    """The anomaly-available loss, read off its gradient on the reconstruction: a descent step draws
    the reconstruction of normal tokens towards their features and pushes it away on labelled defect
    tokens (pixel label) or on the top-k tokens of an image known only to be anomalous."""
    normal, cracks = mtd_images
    model = ADTR(replace(SMALL["adtr"][1], anomaly_alpha=0.1, anomaly_top_k=4)).eval()
    masks = torch.zeros(2, 64, 64)
    masks[0, :32, :32] = 1  # tokens 0, 1, 4, 5 of the 4x4 grid
    labelled = LabelledAnomalies(cracks[:2, 0], masks, torch.tensor([True, False]))
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["reconstruction"] = output

    model.restore.register_forward_hook(keep)
    model.training_loss(normal[:2], labelled)["loss"].backward()
    reconstruction = captured["reconstruction"]
    with torch.no_grad():
        target = model.features(torch.cat([normal[:2, 0], labelled.images]))
        # a small descent step changes |f^ - f|^2 by -2 lr (f^ - f) . grad: positive = pulled in
        pull = ((reconstruction - target) * reconstruction.grad).sum(-1)
    defect = torch.zeros(16, dtype=torch.bool)
    defect[[0, 1, 4, 5]] = True
    assert (pull[:2] > 0).all()
    assert (pull[2, ~defect] > 0).all() and (pull[2, defect] < 0).all()
    assert (pull[3] < 0).sum() == 4 and (pull[3] == 0).sum() == 12


def test_ds2_cutpaste_three_way_task_is_learned(mtd_images):
    """Plain / CutPaste / scar crops told apart: the cross entropy falls from chance (ln 3) on a fixed
    draw of crops and pastes, and the dense-pretraining parts are absent."""
    torch.manual_seed(0)
    model = DS2(SMALL["ds2-cutpaste"][1]).train()
    assert not hasattr(model, "target_backbone") and not hasattr(model, "projectors")
    normal, _ = mtd_images
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        torch.manual_seed(1)  # the same crops and pastes every step
        terms = model.training_loss(normal)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[0] == pytest.approx(np.log(3), abs=0.2) and np.mean(losses[-3:]) < 0.75 * losses[0]


def test_cutpaste_and_scar_change_only_what_they_paste(mtd_images):
    torch.manual_seed(0)
    normal, _ = mtd_images
    image = normal[0, 0].float() / 255
    areas, scars = [], []
    for _ in range(20):
        pasted, mask = cut_paste(image)
        assert torch.equal(pasted[:, ~mask], image[:, ~mask])
        areas.append(mask.float().mean().item())
        scarred, scar = cut_paste_scar(image)
        assert torch.equal(scarred[:, ~scar], image[:, ~scar]) and scar.any()
        scars.append(scar.sum().item())
    assert 0.015 <= min(areas) and max(areas) <= 0.16  # 2-15 % of the image, up to rounding
    assert max(scars) <= 40  # a strip of at most 4 x 6 px, turned


def test_ds2_positive_pairs_follow_the_crop_boxes():
    # view 1 = the whole 64 px image (2x2 bins centred at 16 / 48, diagonal 45.3), view 2 = its
    # top-left quarter (bins centred at 8 / 24). delta 0.3 -> pairs closer than 13.6 px: view 1's
    # top-left bin (16, 16) is 11.3 px from all four of view 2's bins, every other bin >= 25 px away.
    model = DS2(DS2Config(image_size=64, view_size=64, projector_hidden=8, projector_out=8, delta=0.3))
    boxes = (torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]]))
    flips = (torch.tensor([False]), torch.tensor([False]))
    features = (torch.ones(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    positive = model._positives(boxes, flips, 2, features)
    assert positive.shape == (1, 4, 4)
    assert positive[0, 0].all() and not positive[0, 1:].any()
    centres, diagonal = DS2._bin_centres(boxes[0], torch.tensor([True]), 2)
    assert centres[0].tolist() == [[16.0, 48.0], [16.0, 16.0], [48.0, 48.0], [48.0, 16.0]]  # flipped columns
    assert diagonal[0] == pytest.approx(32 * 2 ** 0.5)


def test_ds2_target_network_follows_by_momentum():
    model = DS2(DS2Config(image_size=64, view_size=64, projector_hidden=8, projector_out=8, momentum=0.9))
    online = next(model.backbone.parameters())
    target = next(model.target_backbone.parameters())
    with torch.no_grad():
        online.add_(1.0)
    before = target.clone()
    model.after_optimizer_step(0.0)
    torch.testing.assert_close(target, 0.9 * before + 0.1 * online)
    model.after_optimizer_step(1.0)  # momentum 1 at the end: the target no longer moves
    torch.testing.assert_close(target, 0.9 * before + 0.1 * online)


def test_padim_ranks_cracks_above_held_out_normal_images(shared_data):
    train, test = mtd_split(shared_data / "mtd")
    model = PaDiM(PaDiMConfig(image_size=128)).eval()

    def load(records):
        return still_windows([r.path for r in records], 128)

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

    from anomstream.pipeline.cli import main

    config = tmp_path / "adtr.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "adtr", "backbone": "resnet18", "backbone_weights": str(tmp_path / "r18.pth"),
                  "layers": ["layer2", "layer3"]},
        "train": {"data": str(tmp_path)},
    }))
    assert main(["train", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'r18.pth'}: backbone weights file for resnet18 not found"


def test_dsr_detection_stage_builds_on_stage1_and_switches_to_upsampling(mtd_images, tmp_path):
    torch.manual_seed(0)
    stage1 = DSR(DSR_STAGE1)
    save_checkpoint(tmp_path / "stage1.pt", stage1)
    config = DSRConfig(**{**SMALL["dsr"][1].__dict__, "stage1_checkpoint": str(tmp_path / "stage1.pt")})
    model = DSR(config)
    assert model.builds_on() == str(tmp_path / "stage1.pt")
    model.start_from(read_checkpoint(model.builds_on(), expected_model="dsr"))
    torch.testing.assert_close(model.discrete.quantise_lo.codebook, stage1.discrete.quantise_lo.codebook)
    model.train()
    assert not model.discrete.training  # the stage-1 subspace stays frozen (no EMA codebook updates)
    normal, _ = mtd_images
    terms = model.training_loss(normal)
    assert {"focal", "subspace", "reconstruction"} <= set(terms)
    terms["loss"].backward()
    assert model.detection.head.weight.grad is not None and model.upsampling.head.weight.grad is None
    model.zero_grad()
    model.after_optimizer_step(0.9)  # past stage2_fraction: stage 3 trains the upsampling module only
    terms = model.training_loss(normal)
    assert set(terms) == {"loss", "upsampling_focal"}
    terms["loss"].backward()
    assert model.upsampling.head.weight.grad is not None and model.detection.head.weight.grad is None
    torch.testing.assert_close(model.discrete.quantise_lo.codebook, stage1.discrete.quantise_lo.codebook)


def test_dsr_stage1_checkpoint_errors(tmp_path):
    with pytest.raises(EarlierStageError, match="needs stage1_checkpoint"):
        DSR(SMALL["dsr"][1]).builds_on()
    assert DSR(DSR_STAGE1).builds_on() is None
    model = DSR(DSRConfig(**{**SMALL["dsr"][1].__dict__, "stage1_checkpoint": str(tmp_path / "s1.pt")}))
    with pytest.raises(AnomstreamError, match=r"s1\.pt: checkpoint file not found"):
        read_checkpoint(model.builds_on(), expected_model="dsr")
    save_checkpoint(tmp_path / "s1.pt", DSR(SMALL["dsr"][1]))  # a detection-stage file, not stage 1
    with pytest.raises(EarlierStageError, match=r"s1\.pt: not a DSR stage-1"):
        model.start_from(read_checkpoint(model.builds_on(), expected_model="dsr"))
    wider = DSR(DSRConfig(**{**DSR_STAGE1.__dict__, "hidden": 32}))
    save_checkpoint(tmp_path / "s1.pt", wider)
    with pytest.raises(EarlierStageError, match="stage-1 weights do not fit this DSR config"):
        model.start_from(read_checkpoint(model.builds_on(), expected_model="dsr"))
    with pytest.raises(RuntimeError, match="does not score"):
        DSR(DSR_STAGE1).score(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8))


def test_dsr_turns_training_images_as_the_official_code(mtd_images):
    """Detection stages see 40 % of their inputs turned by U(-90, 90) degrees, corners black (DSR's loader)."""
    normal, _ = mtd_images
    images = normal[:, -1].float() / 255.0
    torch.testing.assert_close(rotate(images, torch.full((len(images),), 90.0)), torch.rot90(images, 1, (2, 3)),
                               atol=1e-4, rtol=0)
    turned = rotate(images, torch.full((len(images),), 45.0))
    assert turned[..., 0, 0].abs().max() == 0 and turned[..., 32, 32].abs().min() > 0
    assert random_rotations(images, 0.0, 90.0) is images
    torch.manual_seed(0)
    some = random_rotations(images, 0.4, 90.0)
    changed = (some - images).flatten(1).abs().amax(1) > 0
    assert 0 < int(changed.sum()) < len(images)  # seeded: some of the 12 turned, not all
    assert images[..., 0, 0].amin() > 0  # so a black corner can only come from a turn
    for probability, corners_black in ((1.0, True), (0.0, False)):
        model = DSR(DSRConfig(**{**SMALL["dsr"][1].__dict__, "rotation_probability": probability}))
        encoded: list[torch.Tensor] = []
        model.discrete.encoder_hi.register_forward_hook(lambda module, inputs, output, seen=encoded: seen.append(inputs[0]))
        model.train()
        model.training_loss(normal)  # stage 2
        model.after_optimizer_step(0.9)
        model.training_loss(normal)  # stage 3 (encodes the smudged images)
        assert len(encoded) == 2
        assert bool((encoded[0][..., 0, 0] == 0).all()) is corners_black
        if not corners_black:
            torch.testing.assert_close(encoded[0], images)
