"""Which reduced precisions a checkpoint may score in by default: the measured verdict (its frame
AUC and events in bf16, int8 and int8-bf16 against fp32, on a labelled test set; a still-image
model's image and pixel AUROC on MTD's test split: ``anomstream bench --accuracy``,
docs/backends.md), shipped for the shipped checkpoints in ``configs/weights/precision_verdicts.json``
and kept for others in the user's cache, keyed by the checkpoint's sha256; and whether this CPU
computes a precision natively."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..assets import PRECISION_VERDICTS
from ..paths import user_cache

AUC_MARGIN = 0.002  # the most a reduced precision may lower the frame micro AUC, or a still model's image / pixel AUROC
QUANTIZED = ("int8", "int8-bf16")  # the precisions that score NNCF's int8 model (OpenVINO only)
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")  # what the reduced precisions use


@dataclass(frozen=True)
class Verdict:
    """A checkpoint's measured frame micro AUC per precision (``fp32`` the reference) and whether
    each precision's events matched fp32's; ``source``: where it was measured (dataset, date, CPU).
    A still-image model's: its image AUROC in ``micro_auc`` and its pixel AUROC in ``pixel_auroc``
    (empty for a video model), both held to the same margin. ``fps``: frames (images) per second
    through the pipeline in the same run, per reduced precision and per fp32 runtime
    (``fp32:onnxruntime``, ``fp32:openvino``; torch's is not kept: it may have run on a GPU); empty
    in a shipped verdict. ``refused``: precisions the start-of-run check refused (no AUC was measured
    for them), each with the check's clause and where it was measured."""

    micro_auc: dict[str, float] = field(default_factory=dict)
    events_agree: dict[str, bool] = field(default_factory=dict)
    source: str = ""
    pixel_auroc: dict[str, float] = field(default_factory=dict)
    fps: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def refusal(self, precision: str) -> str | None:
        """Why ``precision`` may not be this checkpoint's default (one clause), or None."""
        if precision in self.refused:
            return f"refused by the start-of-run check: {self.refused[precision]}"
        if "fp32" not in self.micro_auc or precision not in self.micro_auc:
            return "no measured AUC for this checkpoint (anomstream bench --accuracy, docs/backends.md)"
        drop = self.micro_auc["fp32"] - self.micro_auc[precision]
        name = "image AUROC" if self.pixel_auroc else "micro AUC"
        if not drop <= AUC_MARGIN:  # NaN too
            return f"its measured {name} is {drop:.4f} below fp32's (at most {AUC_MARGIN} allowed)"
        if self.pixel_auroc:
            pixel_drop = self.pixel_auroc.get("fp32", math.nan) - self.pixel_auroc.get(precision, math.nan)
            if not pixel_drop <= AUC_MARGIN:
                return f"its measured pixel AUROC is {pixel_drop:.4f} below fp32's (at most {AUC_MARGIN} allowed)"
        if not self.events_agree.get(precision, False):
            return "its measured events differ from fp32's"
        return None

    def slower(self, precision: str, fp32_backend: str) -> str | None:
        """Why ``precision`` is not worth taking though its AUC holds (one clause): measured slower
        through the pipeline than ``fp32_backend`` in fp32, what the run would score with instead
        (PaDiM's and DS2's OpenVINO graphs against ONNX Runtime: docs/backends.md); None when it was
        faster or either speed was not measured."""
        reduced, fp32 = self.fps.get(precision, math.nan), self.fps.get(f"fp32:{fp32_backend}", math.nan)
        if reduced < fp32:  # False with NaN
            return (f"measured slower than {fp32_backend} fp32 ({reduced:.1f} against {fp32:.1f} frames/s through "
                    f"the pipeline)")
        return None

    def summary(self, precision: str) -> str:
        if self.pixel_auroc:
            return (f"{precision}: image AUROC {self.micro_auc[precision]:.4f} against fp32's "
                    f"{self.micro_auc['fp32']:.4f}, pixel AUROC {self.pixel_auroc[precision]:.4f} against "
                    f"{self.pixel_auroc['fp32']:.4f} ({self.source.split(';')[0]})")
        return (f"{precision}: micro AUC {self.micro_auc[precision]:.4f} against fp32's {self.micro_auc['fp32']:.4f}, "
                f"same events ({self.source.split(';')[0]})")


def measured_verdict(sha256: str) -> Verdict:
    """The verdict for the checkpoint with ``sha256``: the user's own (``save_verdict``) before the
    shipped one; an empty Verdict (every reduced precision refused) when none was measured."""
    for path in (_user_verdicts(), PRECISION_VERDICTS):
        found = _read_verdicts(path).get(sha256)
        if isinstance(found, dict):
            return Verdict(found.get("micro_auc", {}), found.get("events_agree", {}), found.get("source", ""),
                           found.get("pixel_auroc", {}), found.get("fps", {}), found.get("refused", {}))
    return Verdict()


def save_verdict(sha256: str, verdict: Verdict) -> Path:
    """Keep ``verdict`` for the checkpoint with ``sha256`` in the user's cache; returns the file.
    Precisions measured before on the same test set (by the user, else in the shipped verdict) and
    neither measured nor refused now are kept;
    a precision refused now loses its earlier figures, one measured now its earlier refusal; a
    verdict measured on another test set is replaced whole (its figures are not comparable with these)."""
    path = _user_verdicts()
    known = _read_verdicts(path)
    earlier = known.get(sha256) or _read_verdicts(PRECISION_VERDICTS).get(sha256, {})  # a shipped one's figures
    if not isinstance(earlier, dict) or _test_set(earlier.get("source", "")) != _test_set(verdict.source):
        earlier = {}
    now = {*verdict.micro_auc, *verdict.refused} - {"fp32"}
    earlier = {key: {p: v for p, v in values.items() if p not in now} if isinstance(values, dict) else values
               for key, values in earlier.items()}
    known[sha256] = {"micro_auc": {**earlier.get("micro_auc", {}), **verdict.micro_auc},
                     "events_agree": {**earlier.get("events_agree", {}), **verdict.events_agree},
                     "source": verdict.source}
    if verdict.pixel_auroc or earlier.get("pixel_auroc"):
        known[sha256]["pixel_auroc"] = {**earlier.get("pixel_auroc", {}), **verdict.pixel_auroc}
    if verdict.refused or earlier.get("refused"):
        known[sha256]["refused"] = {**earlier.get("refused", {}), **verdict.refused}
    fps = {key: value for key, value in {**earlier.get("fps", {}), **verdict.fps}.items()
           if isinstance(value, (int, float)) and math.isfinite(value) and value > 0}
    if fps:
        known[sha256]["fps"] = fps
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(json.dumps(known, indent=1))
    os.replace(part, path)
    return path


def _read_verdicts(path: Path) -> dict:
    """A verdicts file's entries by sha256; empty when it is missing or not a JSON object."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _test_set(source: str) -> str:
    """The dataset whose test set a verdict was measured on: its source's first word (``ped2`` of
    ``ped2 test set, ...`` and of the shipped ``Ped2 test set (12 clips, ...)``)."""
    return (source.split() or [""])[0].lower()


def _user_verdicts() -> Path:
    return user_cache() / "precision_verdicts.json"


def cpu_refusal(precision: str) -> str | None:
    """Why this CPU does not compute ``precision`` natively (one clause), or None: bf16 needs the
    units OpenVINO reports as ``BF16`` (AVX512-BF16 or AMX), int8 the dot-product instructions
    (AVX512-VNNI, AVX-VNNI or AMX-INT8 in the CPU flags), int8-bf16 both (measured faster than int8
    with AMX, and without AMX on an AMD EPYC with AVX512-BF16 and VNNI: docs/backends.md)."""
    if precision in QUANTIZED and not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags():
        return "this CPU has no int8 dot-product units (VNNI or AMX)"
    if precision in ("bf16", "int8-bf16") and "BF16" not in cpu_capabilities():
        return "this CPU has no bf16 units (AVX512-BF16 or AMX)"
    return None


def matrix_flags() -> str:
    """The CPU's flags of ``MATRIX_FLAGS``, space-separated (``none``): what a speed figure is printed with."""
    return " ".join(flag for flag in MATRIX_FLAGS if flag in cpu_flags()) or "none"


def cpu_capabilities() -> set[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (``FP32``, ``BF16``, ``INT8``, ...); empty without OpenVINO."""
    try:
        from .ov import import_openvino

        openvino = import_openvino()
    except ImportError:
        return set()
    try:
        return set(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        return set()


def cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())
