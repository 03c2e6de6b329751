"""Small configurations of every still-image model and the still-image loader, shared by the model and
pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomstream.models.adtr import ADTR, ADTRConfig
from anomstream.models.ds2 import DS2, DS2Config
from anomstream.models.dsr import DSR, DSRConfig
from anomstream.models.favae import FAVAE, FAVAEConfig
from anomstream.models.padim import PaDiM, PaDiMConfig
from anomstream.pipeline.files import read_image
from anomstream.pipeline.stream.preprocess import prepare_frame

SMALL = {
    "adtr": (ADTR, ADTRConfig(image_size=64, hidden=32, heads=4, encoder_layers=1, decoder_layers=1, feedforward=64,
                              dropout=0.0, score_box=4)),
    "favae": (FAVAE, FAVAEConfig(image_size=64, latent=16, widths=(8, 16, 32), bottleneck=8)),
    "favae-crops": (FAVAE, FAVAEConfig(image_size=64, crop=32, latent=16, widths=(8, 16, 32), bottleneck=8)),
    "ds2": (DS2, DS2Config(image_size=64, view_size=64, projector_hidden=32, projector_out=16, patch=32,
                           patch_stride=16, pca_dims=8, map_sigma=8.0)),
    "ds2-cutpaste": (DS2, DS2Config(image_size=64, pretraining="cutpaste3way", cutpaste_patch=32, patch=32,
                                    patch_stride=16, pca_dims=8, map_sigma=8.0)),
    "padim": (PaDiM, PaDiMConfig(image_size=64)),
    "dsr": (DSR, DSRConfig(image_size=64, hidden=16, embedding_dim=8, codebook_size=32, restriction_widths=(8, 8, 8),
                           detection_base=4, upsampling_base=4)),
}
DSR_STAGE1 = DSRConfig(**{**SMALL["dsr"][1].__dict__, "stage": "discrete"})


def still_windows(paths: list[str | Path], size: int) -> torch.Tensor:
    """Images as the pipeline prepares them: uint8 windows (N, 1, 3, size, size)."""
    return torch.from_numpy(np.stack([prepare_frame(read_image(Path(p)), size, 3) for p in paths]))[:, None]
