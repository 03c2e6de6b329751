"""One progress display for a job of several steps (``anomstream fit``: training, then the
calibration's two passes), with an ETA for the whole job.

The job is measured in estimated seconds: each kind of work (a training step, a calibration
frame) has a cost measured before the job starts, and the steps report what they did
(:func:`advance`); tqdm's rate over what was done corrects the estimate as the job goes. While a
job runs, the steps' own bars stay hidden (:func:`job_running`). It lives beside its lowest user,
the calibration's passes; training imports it from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm import tqdm

_JOB: ContextVar[JobProgress | None] = ContextVar("anomstream_job", default=None)


class JobProgress:
    """A bar over ``costs`` (kind -> estimated seconds per unit) times ``units`` (kind -> how many);
    not ``shown``: nothing is (``--quiet``), and the steps' own bars stay hidden all the same."""

    def __init__(self, costs: dict[str, float], units: dict[str, int], description: str = "fit",
                 shown: bool = True) -> None:
        self.costs = costs
        total = sum(costs[kind] * count for kind, count in units.items())
        self.bar = tqdm(total=round(total, 1), desc=description, unit="s", disable=not shown, bar_format=(
            "{desc}: {percentage:3.0f}%|{bar}| {elapsed} done, about {remaining} left{postfix}"))
        self.bar.set_postfix_str("starting", refresh=False)

    def advance(self, kind: str, count: int = 1) -> None:
        left = max(0.0, self.bar.total - self.bar.n)  # more work than estimated: the bar waits at its end
        self.bar.update(min(left, round(self.costs.get(kind, 0.0) * count, 3)))

    def phase(self, text: str) -> None:
        """What the job does now, shown after the bar."""
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar.total and self.bar.n < self.bar.total:
            self.bar.update(self.bar.total - self.bar.n)  # the estimate was high: the job is done all the same
        self.bar.close()


@contextmanager
def running(job: JobProgress) -> Iterator[JobProgress]:
    """``job`` is the current job while the block runs (and closed after it)."""
    token = _JOB.set(job)
    try:
        yield job
    finally:
        _JOB.reset(token)
        job.close()


def job_running() -> bool:
    """Whether a job's bar is shown (a step then hides its own)."""
    return _JOB.get() is not None


def advance(kind: str, count: int = 1) -> None:
    """Work done for the current job, if any."""
    job = _JOB.get()
    if job is not None:
        job.advance(kind, count)


def phase(text: str) -> None:
    """What the current job does now, if there is one."""
    job = _JOB.get()
    if job is not None:
        job.phase(text)
