"""Files shipped with the package: the trained CPU checkpoint and the demo clip with its labels."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED_CHECKPOINT = CONFIGS / "weights" / "ped2_dmad_cpu.pt"
SAMPLE_CLIP = CONFIGS / "samples" / "ped2_test02.mp4"
SAMPLE_LABELS = CONFIGS / "samples" / "ped2_test02.labels.json"
PRECISION_VERDICTS = CONFIGS / "weights" / "precision_verdicts.json"
