import numpy as np
import pytest
import torch

from anomstream.models.dmad import DMAD, DMADConfig
from anomstream.pipeline.checkpoint import load_model, save_checkpoint
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.sources.video import VideoFileSource
from anomstream.pipeline.stream.preprocess import prepare_frame

SMALL = DMADConfig(image_size=64, channels=1, widths=(8, 16, 32, 64), memory_size=32, skip_channels=8,
                   offset_width=8, coarse_max_px=1.0, fine_max_px=1.5)


@pytest.fixture(scope="module")
def clip_frames(sample_clip):
    """The first 40 frames of the bundled real Ped2 clip at 64x64 grey, uint8 (N, 1, 64, 64)."""
    frames = [prepare_frame(f.image, 64, 1) for _, f in zip(range(40), VideoFileSource(sample_clip).frames())]
    return torch.from_numpy(np.stack(frames))


def _windows(frames, starts):
    return torch.stack([frames[s:s + 5] for s in starts])


def test_shapes_and_score_terms(clip_frames):
    torch.manual_seed(0)
    model = DMAD(SMALL).eval()
    windows = _windows(clip_frames, [0, 5, 10])
    inputs, target = model._split(windows)
    assert inputs.shape == (3, 4, 64, 64) and target.shape == (3, 1, 64, 64)
    out = model(inputs)
    assert out.final.shape == out.coarse.shape == (3, 1, 64, 64)
    assert out.offset_coarse.shape == (3, 2, 16, 16) and out.offset_fine.shape == (3, 2, 64, 64)
    assert out.offset_fine.abs().max() <= 2 * 1.5 / 64 + 1e-6
    scored = model.score(windows)
    assert scored.score.shape == (3,) and scored.anomaly_map.shape == (3, 64, 64)
    assert set(scored.terms) == set(model.term_names) == {*model.term_weights, "gradient_excess", "deformation"}
    assert torch.isfinite(scored.score).all()
    model.config.score = "official"  # the calibration terms do not enter the official score
    terms = model.score(windows).terms
    official = sum(weight * terms[name] for name, weight in model.term_weights.items())
    torch.testing.assert_close(model.score(windows).score, official)
    model.config.score = "paper"
    with pytest.raises(ValueError, match=r"dmad expects windows \(N, 5, C, H, W\)"):
        model.score(windows[:, :4])


def test_reference_map_is_subtracted_from_the_gradient_excess_only(clip_frames):
    torch.manual_seed(0)
    model = DMAD(SMALL).eval()
    windows = _windows(clip_frames, [0, 5, 10])
    before = model.score(windows).terms
    maps = model.reference_maps(windows)["gradient_difference"]
    assert maps.shape == (3, 64, 64) and (maps >= 0).all()
    model.set_reference({"gradient_difference": torch.full((64, 64), 0.25)})
    after = model.score(windows).terms
    torch.testing.assert_close(after["gradient_excess"], before["gradient_excess"] - 0.25)
    for name in ("gradient_difference", "deformation", "reconstruction_l1", "offset_vertical"):
        torch.testing.assert_close(after[name], before[name])
    # a position scale: the excess in its units (a uniform scale of 4 divides the box means by 4)
    model.set_reference({"gradient_difference": torch.full((64, 64), 0.25),
                         "gradient_difference_scale": torch.full((64, 64), 4.0)})
    torch.testing.assert_close(model.score(windows).terms["gradient_excess"], (before["gradient_excess"] - 0.25) / 4)
    scale = torch.ones(64, 64)
    scale[:, 32:] = 1e3  # per position: the right half's usual spread is large, its excess counts for little
    model.set_reference({"gradient_difference_scale": scale})
    maps = model.reference_maps(windows)["gradient_difference"][:, None]
    box = model._box(model.config.score_box)
    expected = torch.nn.functional.avg_pool2d(maps / scale, (box[0] * 2, box[1] * 2), stride=1).amax(dim=(1, 2, 3))
    torch.testing.assert_close(model.score(windows).terms["gradient_excess"], expected)
    assert not torch.allclose(expected, before["gradient_excess"] / scale.mean())
    with pytest.raises(ValueError, match=r"dmad takes the reference map gradient_difference \(and its _scale\), not mask"):
        model.set_reference({"mask": torch.zeros(64, 64)})


def test_background_initialised_from_median(clip_frames):
    model = DMAD(SMALL)
    model.initialise_from_frames(clip_frames)
    expected = clip_frames.float().median(dim=0).values / 127.5 - 1
    torch.testing.assert_close(model.background[0], expected)


def test_loss_decreases_on_real_frames(clip_frames):
    torch.manual_seed(0)
    model = DMAD(SMALL)
    model.initialise_from_frames(clip_frames)
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3))
    windows = _windows(clip_frames, range(0, 32, 4))
    losses = []
    for _ in range(12):
        terms = model.training_loss(windows)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert set(terms) >= {"reconstruction", "gradient", "compression", "deformation", "background", "loss"}
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip_gives_identical_scores(clip_frames, tmp_path):
    torch.manual_seed(1)
    model = DMAD(SMALL).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"epoch": 3})
    loaded, payload = load_model(path, expected_model="dmad")
    assert payload["epoch"] == 3 and loaded.config == SMALL
    windows = _windows(clip_frames, [0, 7])
    torch.testing.assert_close(loaded.score(windows).score, model.score(windows).score)
    with pytest.raises(AnomstreamError, match="m.pt: checkpoint is for model 'dmad', not 'dsr'"):
        load_model(path, expected_model="dsr")


def test_foreign_or_corrupt_checkpoint_is_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(AnomstreamError, match="foreign.pt: not an anomstream checkpoint"):
        load_model(foreign)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    with pytest.raises(AnomstreamError, match="broken.pt: not a readable checkpoint"):
        load_model(broken)
    with pytest.raises(AnomstreamError, match="missing.pt: checkpoint file not found"):
        load_model(tmp_path / "missing.pt")
