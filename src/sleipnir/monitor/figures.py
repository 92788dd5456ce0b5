"""Per task and queue figures: counts and histograms of queue wait and run time
(:class:`TaskMetrics`, fed by the worker), and their merge across workers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from .beats import Heartbeat

BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Upper bounds (seconds) of the histogram buckets; one more bucket holds the rest (+Inf)."""


class Histogram(msgspec.Struct, kw_only=True):
    """Observations of a duration in seconds, counted per bucket of :data:`BUCKETS`."""

    counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    """Per bucket (not cumulative); the last one is above the largest bound."""
    sum: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        seconds = max(0.0, seconds)
        index = len(BUCKETS)
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                index = i
                break
        self.counts[index] += 1
        self.sum += seconds
        self.count += 1

    def merge(self, other: Histogram) -> None:
        """Add another histogram's observations to this one."""
        for i, n in enumerate(other.counts[: len(self.counts)]):
            self.counts[i] += n
        self.sum += other.sum
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q`` quantile (0..1) as Prometheus does: linear within the bucket."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(BUCKETS):
                    return BUCKETS[-1]
                low = BUCKETS[i - 1] if i else 0.0
                return low + (BUCKETS[i] - low) * (rank - seen) / n
            seen += n
        return BUCKETS[-1]


class TaskFigures(msgspec.Struct, kw_only=True):
    """One worker's figures for one task on one queue, since the worker started."""

    task: str
    queue: str
    succeeded: int = 0
    failed: int = 0
    """Failed for good (went to the dead letters)."""
    retried: int = 0
    """Failed attempts that were scheduled again."""
    cancelled: int = 0
    """Cancelled before they finished (``job.cancel()``)."""
    duration: Histogram = msgspec.field(default_factory=Histogram)
    """Run time of each attempt, start to finish."""
    wait: Histogram = msgspec.field(default_factory=Histogram)
    """Queue wait: enqueue (or due time) to the start of the first attempt."""


class TaskMetrics:
    """A worker's :class:`TaskFigures`, updated from its threads, copied into each beat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._figures: dict[tuple[str, str], TaskFigures] = {}

    def _get(self, task: str, queue: str) -> TaskFigures:
        figures = self._figures.get((task, queue))
        if figures is None:
            figures = self._figures[(task, queue)] = TaskFigures(task=task, queue=queue)
        return figures

    def observe_wait(self, task: str, queue: str, seconds: float) -> None:
        """Record how long a job waited in its queue before it started."""
        with self._lock:
            self._get(task, queue).wait.observe(seconds)

    def observe_outcome(self, task: str, queue: str, state: str, seconds: float | None) -> None:
        """Record a settled attempt: ``state`` is succeeded, failed, retrying or cancelled."""
        with self._lock:
            figures = self._get(task, queue)
            if state == "succeeded":
                figures.succeeded += 1
            elif state == "retrying":
                figures.retried += 1
            elif state == "cancelled":
                figures.cancelled += 1
            else:
                figures.failed += 1
            if seconds is not None:
                figures.duration.observe(seconds)

    def snapshot(self) -> list[TaskFigures]:
        """A copy of every task's figures, safe to encode while the worker goes on."""
        with self._lock:
            return [
                msgspec.convert(msgspec.to_builtins(f), TaskFigures)
                for _, f in sorted(self._figures.items())
            ]


def merged_tasks(beats: Iterable[Heartbeat]) -> list[TaskFigures]:
    """Per task and queue, the figures of all the given workers added up."""
    total: dict[tuple[str, str], TaskFigures] = {}
    for beat in beats:
        for f in beat.tasks:
            into = total.setdefault((f.task, f.queue), TaskFigures(task=f.task, queue=f.queue))
            into.succeeded += f.succeeded
            into.failed += f.failed
            into.retried += f.retried
            into.cancelled += f.cancelled
            into.duration.merge(f.duration)
            into.wait.merge(f.wait)
    return [total[k] for k in sorted(total)]
