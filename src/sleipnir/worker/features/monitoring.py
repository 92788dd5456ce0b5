"""Metrics, heartbeats and result housekeeping, as hooks.

:class:`Metrics` counts queue waits (at each first start) and outcomes with run
times (at each settle) per task and queue, in the worker's
:class:`~sleipnir.monitor.TaskMetrics`; :class:`Heartbeats` sends the worker's
beat, those figures included, from a thread of its own while the worker lives;
:class:`Purge` deletes expired results every few minutes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ...errors import SleipnirError
from ...hooks import Hook
from ...monitor import HeartbeatSender
from ..held import JobRun, Outcome

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["Heartbeats", "Metrics", "Purge"]


class Metrics(Hook):
    def __init__(self, worker: Worker) -> None:
        self._metrics = worker.metrics
        self._clock = worker.app.clock

    def before_start(self, worker: Worker, job: JobRun) -> float | None:
        if job.attempt == 1 and job.job is not None:
            ready_at = job.job.eta_at or job.job.enqueued_at
            self._metrics.observe_wait(job.task, job.queue, self._clock.time() - ready_at)
        return None

    def after_settle(self, job: JobRun, outcome: Outcome) -> None:
        started = job.started_at
        self._metrics.observe_outcome(
            job.task,
            job.queue,
            outcome.state.value,
            None if started is None else outcome.finished_at - started,
        )


class Heartbeats(Hook):
    def __init__(self, worker: Worker, interval: float) -> None:
        app = worker.app
        self.sender = HeartbeatSender(app.results, app.clock, worker.describe, interval=interval)

    def after_worker_start(self, worker: Worker) -> None:
        self.sender.start()

    def after_worker_stop(self, worker: Worker) -> None:
        self.sender.stop()


class Purge(Hook):
    """Deletes expired results: a minute after the start, then every five minutes."""

    def __init__(self) -> None:
        self._next = time.monotonic() + 60.0

    def on_tick(self, worker: Worker) -> None:
        if time.monotonic() < self._next:
            return
        try:
            worker.app.results.purge_expired()
        except SleipnirError as exc:
            worker.store_outage.failed("purging expired results failed", exc)
        self._next = time.monotonic() + 300.0
