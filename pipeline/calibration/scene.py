"""Does a calibrated model fit the scene a stream shows? A model calibrated on one scene (the
shipped Ped2 walkway) and pointed at another (a street) finds most of it anomalous: its calibrated
score says each frame is rarer than one in 10**threshold on the footage it knows, so the share of
frames above the threshold on a scene it knows stays near the calibration's false-alarm rate.

:class:`SceneCheck` counts, per block of ``frames`` scored frames, the frames above the threshold,
and calls the block unlike the calibration footage when more than ``share`` of them are (an
anomaly is rare: a model that finds most of a minute anomalous does not know the scene) and a
binomial test against the false-alarm rate agrees (p < 1e-6; frames within one smoothing window are
not independent, so counts are divided by the window before the test). The first block decides
``misfit``; a later block that turns bad after good ones is ``drift`` (light, season, a camera that
moved), and a good one after that ``fits`` again. A misfit is told early: while the first block
fills, every ``EARLY_FRAMES`` scored frames that already pass the test end the block (ten seconds
of a street at 10 fps say as much as a minute). A stream shorter than that is not judged; ``fits``
always waits for a whole block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCENE_FRAMES = 600  # scored frames per block: a minute at 10 fps
EARLY_FRAMES = 100  # the first block may end here, and every this many frames after, when it is already a misfit
MISFIT_SHARE = 0.5
P_VALUE = 1e-6


@dataclass(frozen=True)
class SceneVerdict:
    """One block's judgement: ``state`` (``fits``, ``misfit``: the first block is unlike the
    calibration footage, ``drift``: a later one), the block's ``frames`` and the frames ``above``
    the threshold, their ``share`` against the ``expected`` rate, the test's ``p_value``, the
    block's first and last frame index."""

    state: str
    frames: int
    above: int
    share: float
    expected: float
    p_value: float
    threshold: float
    first_frame: int
    last_frame: int

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


class SceneCheck:
    """Per stream: feed its calibrated scores in frame order; :meth:`feed` returns a verdict when
    the state changes (the first block's, whatever it is, then only changes)."""

    def __init__(self, threshold: float, false_alarm_rate: float, smoothing: int = 1,
                 frames: int = SCENE_FRAMES, share: float = MISFIT_SHARE) -> None:
        self.threshold, self.expected, self.smoothing = threshold, false_alarm_rate, max(1, smoothing)
        self.frames, self.share = frames, share
        self.state = "checking"
        self.latest: SceneVerdict | None = None  # the last block's verdict
        self._above = self._count = 0
        self._first = -1

    def feed(self, frame_index: np.ndarray, score: np.ndarray, scored: np.ndarray) -> SceneVerdict | None:
        """Rows in frame order: (B,) frame indices, calibrated scores, whether each was scored."""
        changed = None
        for index, value in zip(np.asarray(frame_index)[scored], np.asarray(score)[scored]):
            if self._count == 0:
                self._first = int(index)
            self._count += 1
            self._above += bool(value > self.threshold)
            early = self.state == "checking" and self._count % EARLY_FRAMES == 0 and self._bad()[0]
            if self._count == self.frames or early:
                changed = self._judge(int(index)) or changed
        return changed

    def _bad(self) -> tuple[bool, float]:
        """Whether the frames counted so far are unlike the calibration footage, and the test's p."""
        from scipy.special import bdtrc  # the binomial tail, without scipy.stats' import cost in the writer

        n, k = self._count, self._above
        n_eff, k_eff = max(1, n // self.smoothing), int(round(k / self.smoothing))
        p_value = float(bdtrc(k_eff - 1, n_eff, self.expected)) if k_eff > 0 else 1.0
        return k / n > self.share and p_value < P_VALUE, p_value

    def _judge(self, last_frame: int) -> SceneVerdict | None:
        n, k = self._count, self._above
        bad, p_value = self._bad()
        state = ("misfit" if self.state == "checking" else "drift") if bad else "fits"
        if self.state in ("misfit", "drift") and bad:
            state = self.state
        verdict = SceneVerdict(state, n, k, k / n, self.expected, p_value, self.threshold, self._first, last_frame)
        self._above = self._count = 0
        self.latest = verdict
        if state == self.state:
            return None
        self.state = state
        return verdict


def scene_line(stream_id: str, verdict: dict) -> str:
    """One line for stderr: what was measured, what was expected, what to do."""
    measured = (f"{verdict['share']:.0%} of frames {verdict['first_frame']}-{verdict['last_frame']} above the "
                f"calibrated threshold {verdict['threshold']:.2f}, where the footage it was calibrated on has "
                f"{verdict['expected']:.2%}")
    if verdict["state"] == "misfit":
        return (f"{stream_id}: the model does not fit this scene: {measured}; train and calibrate one on this "
                f"camera's normal footage: anomstream fit FOOTAGE --out model.pt (docs/own-camera.md)")
    if verdict["state"] == "drift":
        return (f"{stream_id}: the scene drifted from what the model knows (light, season, the camera moved?): "
                f"{measured}; calibrate again on recent normal footage, or train again")
    return f"{stream_id}: the model fits the scene again: {measured}"
