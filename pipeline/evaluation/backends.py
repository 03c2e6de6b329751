"""What a replica backend and precision does to a checkpoint's accuracy: a labelled test set scored
by the pipeline once per backend (the same run as ``anomstream score``), then, for a video test set,
the frame micro / macro AUC of the stored score (calibrated: what a live stream gets), the authors'
offline protocol (per-video min-max of the same score) and the events; for an image test set (MTD's
test split, DS2 protocol, seed 0) the image AUROC of the stored score and the pooled pixel AUROC
of its maps; each against the first backend's (``anomstream bench --accuracy``, docs/backends.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ScoreSection
from ..datasets.video_labels import load_frame_labels
from ..driver.plan import RunPlan
from ..driver.run import score_sources
from ..errors import AnomstreamError
from ..store.dataset import events_table, stream_names
from .image_metrics import image_auroc, pixel_auroc
from .stills import scored_images
from .video import evaluate

# dataset -> (test frames or videos, labels) below the dataset's root, as load_frame_labels reads them
TEST_SETS = {"ped2": ("testing/frames", "."), "avenue": ("testing_videos", "testing_label_mask")}
STILL_SETS = {"mtd": ("mtd:{root}?split=test&seed=0", "MT_Free/Imgs")}  # image dataset -> (its test split, a folder it has)
EVENT_SHIFT_FRAMES = 10  # an event whose start and end are within this many frames of the reference's is the same


@dataclass(frozen=True)
class BackendAccuracy:
    """One backend's figures on a test set: frame AUCs (``micro_auc`` / ``macro_auc`` of the stored
    score, ``offline_micro_auc`` after per-video min-max), ``events`` (stream, start, end frame)
    and the pipeline's frames per second. An image test set: ``micro_auc`` is the image AUROC,
    ``pixel_auroc`` the pooled pixel AUROC (NaN for a video test set), the others NaN."""

    label: str
    micro_auc: float
    macro_auc: float
    offline_micro_auc: float
    events: tuple[tuple[str, int, int], ...]
    fps: float
    pixel_auroc: float = math.nan

    def event_shift(self, reference: BackendAccuracy) -> int | None:
        """The largest start / end difference in frames between these events and ``reference``'s,
        paired in order; None when their numbers differ per stream or one pair does not overlap."""
        if [e[0] for e in self.events] != [e[0] for e in reference.events]:
            return None
        shifts = []
        for (_, start, end), (_, ref_start, ref_end) in zip(self.events, reference.events):
            if start > ref_end or ref_start > end:
                return None
            shifts.append(max(abs(start - ref_start), abs(end - ref_end)))
        return max(shifts, default=0)

    def events_agree(self, reference: BackendAccuracy) -> bool:
        shift = self.event_shift(reference)
        return shift is not None and shift <= EVENT_SHIFT_FRAMES


def parse_accuracy(spec: str) -> tuple[str, Path]:
    """``DATASET:ROOT`` (``ped2:../shared/data/ped2``) -> (dataset, root); one-line AnomstreamError."""
    dataset, _, root = spec.partition(":")
    if dataset not in (*TEST_SETS, *STILL_SETS) or not root:
        raise AnomstreamError(f"--accuracy {spec}: give DATASET:ROOT with DATASET one of "
                              f"{', '.join([*TEST_SETS, *STILL_SETS])}")
    if dataset in STILL_SETS:
        if not (Path(root) / STILL_SETS[dataset][1]).is_dir():
            raise AnomstreamError(f"--accuracy {spec}: no {STILL_SETS[dataset][1]} under {root}")
    elif not (Path(root) / TEST_SETS[dataset][0]).exists():
        raise AnomstreamError(f"--accuracy {spec}: no {TEST_SETS[dataset][0]} under {root}")
    return dataset, Path(root)


def backend_accuracy(checkpoint: str, accuracy: str, label: str, settings: ScoreSection, out: Path) -> BackendAccuracy:
    """The test set ``accuracy`` (``DATASET:ROOT``) scored into the store ``out`` (replaced) with
    ``settings`` (its backend and precision), and its figures under ``label``."""
    dataset, root = parse_accuracy(accuracy)
    if dataset in STILL_SETS:
        return _still_accuracy(STILL_SETS[dataset][0].format(root=root), checkpoint, label, settings, out)
    frames, labels_path = TEST_SETS[dataset]
    report = score_sources(RunPlan(specs=(str(root / frames),), checkpoint=checkpoint, out=out, settings=settings,
                                   mode="overwrite", progress=False))
    labels = load_frame_labels(dataset, root / labels_path)
    online = evaluate(out, labels, ["raw"]).results["raw"]
    offline = evaluate(out, labels, ["offline"]).results["offline"]
    return BackendAccuracy(label, online.micro, online.macro, offline.micro, _events(out),
                           report.frames / report.seconds)


def _still_accuracy(spec: str, checkpoint: str, label: str, settings: ScoreSection, out: Path) -> BackendAccuracy:
    """An image test split (``spec``) scored into ``out``: the image AUROC of the stored score and the
    pooled pixel AUROC of its maps (each at its image's size: :func:`pipeline.evaluation.stills.scored_images`)."""
    report = score_sources(RunPlan(specs=(spec,), checkpoint=checkpoint, out=out, settings=settings,
                                   mode="overwrite", progress=False))
    if report.failed:
        raise AnomstreamError(f"--accuracy: {report.failed[0].reason}")
    images = scored_images(out)
    image = image_auroc(np.array([i.score for i in images]), np.array([i.record.anomalous for i in images]))
    pixel = pixel_auroc([i.anomaly_map for i in images], [i.mask for i in images])
    return BackendAccuracy(label, image, math.nan, math.nan, _events(out), report.frames / report.seconds, pixel)


def _events(out: Path) -> tuple[tuple[str, int, int], ...]:
    """(stream, start frame, end frame) of every event in the store ``out``, stream by stream."""
    events = []
    for stream in stream_names(out):
        table = events_table(out, stream)
        events.extend((stream, int(row.start_frame), int(row.end_frame)) for row in table.itertuples())
    return tuple(events)
