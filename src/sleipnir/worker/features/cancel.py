"""Cancellation and time limits of sync tasks, as a hook.

``JobHandle.cancel()`` writes a mark in the result store (``cancel:<id>``). The
worker looks for marks of the jobs it holds: once per reserved batch (a job
cancelled while queued never starts), and every ``CANCEL_CHECK_EVERY`` seconds
for the jobs it holds (a running ``async def`` task is cancelled; a sync task
with a ``ctx`` is told, and stops at its next ``ctx`` call). The same periodic
look tells sync tasks with a ``ctx`` that they went over their time limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...errors import SleipnirError
from ...hooks import Hook
from ...results import Capability
from ...storekeys import cancel_key
from ..held import JobRun

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["CANCEL_CHECK_EVERY", "Cancellation"]

log = logging.getLogger("sleipnir.worker")

CANCEL_CHECK_EVERY = 1.0
"""Seconds between two looks for cancel requests of the jobs a worker holds."""


class Cancellation(Hook):
    def __init__(self) -> None:
        self._next_check: float | None = None
        self._told = False

    def after_reserve(self, worker: Worker, jobs: Sequence[JobRun]) -> None:
        self._check(worker, jobs)

    def on_tick(self, worker: Worker) -> None:
        now = time.monotonic()
        if self._next_check is None:  # the first turn of the loop
            self._next_check = now + CANCEL_CHECK_EVERY
        if now < self._next_check or not (worker.running_jobs or worker.waiting_jobs):
            return
        self._next_check = now + CANCEL_CHECK_EVERY
        self._tell_timeouts(worker)
        found = self._check(worker, [*worker.running_jobs, *worker.waiting_jobs])
        unstarted = [h for h in found if h.started_at is None]
        if unstarted:
            worker.withdraw(unstarted)

    def _check(self, worker: Worker, helds: Sequence[JobRun]) -> list[JobRun]:
        """Look up cancel requests for ``helds`` in one store call; mark and stop those found.

        A running ``async def`` task is cancelled; a sync one is told through its
        ``ctx``. Returns the newly cancelled.
        """
        candidates = [h for h in helds if not h.cancelled]
        if not candidates:
            return []
        store = worker.app.results
        if not store.keeps(Capability.KEYS):
            if not self._told:
                self._told = True
                log.warning(
                    "cancel requests are not seen on this result store: %s",
                    store.lacks(Capability.KEYS),
                )
            return []
        try:
            marks = store.get_keys([cancel_key(h.id) for h in candidates])
        except SleipnirError as exc:
            worker.store_outage.failed("looking up cancel requests failed", exc)
            return []
        worker.store_outage.ok()
        found = [h for h, mark in zip(candidates, marks, strict=True) if mark is not None]
        for h in found:
            h.cancelled = True
            if h.ctx is not None:
                h.ctx.cancel()
            worker.runners.cancel(h)
            log.info(
                "job %s (%s) cancelled%s",
                h.id,
                h.task,
                "" if h.started_at is None else " while running",
            )
        return found

    def _tell_timeouts(self, worker: Worker) -> None:
        """Tell sync tasks with a ``ctx`` that they went over their time limit."""
        now = worker.app.clock.time()
        for h in worker.running_jobs:
            task = h.definition
            if task is None or task.is_async or h.ctx is None or h.started_at is None:
                continue
            limit = task.options.timeout
            if limit and not h.ctx.timed_out and now - h.started_at > limit:
                log.warning(
                    "job %s (%s) ran over its %.1fs time limit; told through its ctx",
                    h.id,
                    h.task,
                    limit,
                )
                h.ctx.time_out()
