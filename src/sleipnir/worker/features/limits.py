"""Concurrency and rate limits of tasks, as a hook.

A task with ``concurrency=N`` runs at most N at once across all workers: a job
takes a slot (``concurrency:<task>`` in the result store) before it starts,
keeps it as long as its lease, and frees it when settled. A task with
``rate_limit="10/m"`` takes a token (``rate:<task>``) before each run. A job held
up by either is given back, due when the limit may let it through; waiting under
a limit uses no try.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...errors import SleipnirError
from ...hooks import Hook
from ...results import Capability
from ...storekeys import concurrency_slot, rate_slot
from ..held import JobRun, Outcome

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["Limits"]

log = logging.getLogger("sleipnir.worker")

SLOT = "sleipnir.slot"
"""Where a job's concurrency slot is kept in its ``extras`` while it holds one."""


class Limits(Hook):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._told = False

    def before_start(self, worker: Worker, job: JobRun) -> float | None:
        """Take the task's concurrency slot and rate token for ``job``.

        ``None`` when it may start now; else when to try again (epoch seconds).
        """
        task = job.definition
        if task is None or (task.options.concurrency is None and task.options.rate_limit is None):
            return None
        store = worker.app.results
        if not store.keeps(Capability.SLOTS):
            if not self._told:
                self._told = True
                log.warning(
                    "limits are not kept on this result store, running unlimited: %s",
                    store.lacks(Capability.SLOTS),
                )
            return None
        options, job_id = task.options, job.id
        now = worker.app.clock.time()
        try:
            if options.concurrency is not None and SLOT not in job.extras:
                name = concurrency_slot(task.name)
                free_at = store.acquire_slot(name, job_id, options.concurrency, now + worker.lease)
                if free_at is not None:
                    # Slots free when jobs end, usually well before their leases do.
                    return now + min(max(free_at - now, 0.05), worker.rng.uniform(0.25, 1.0))
                job.extras[SLOT] = name
            rate = options.rate
            if rate is not None:
                runs, period = rate
                holder = f"{job_id}:{job.attempt}:{worker.rng.getrandbits(32):x}"
                free_at = store.acquire_slot(rate_slot(task.name), holder, runs, now + period)
                if free_at is not None:
                    self._release(worker, job)
                    # Spread the waiters over one emission interval so they do not
                    # all come back at the same instant.
                    return max(free_at, now) + worker.rng.uniform(0.0, period / runs)
        except SleipnirError as exc:
            worker.store_outage.failed(f"checking the limits of {task.name} failed", exc)
            self._release(worker, job)
            return now + 1.0
        return None

    def after_renew(self, worker: Worker, jobs: Sequence[JobRun]) -> None:
        """A concurrency slot lasts as long as the lease it goes with."""
        until = worker.app.clock.time() + worker.lease
        for h in jobs:
            slot = h.extras.get(SLOT)
            if slot is None or h.definition is None or h.lost:
                continue
            try:
                worker.app.results.acquire_slot(
                    slot, h.id, h.definition.options.concurrency or 1, until
                )
            except SleipnirError as exc:
                log.warning("could not renew slot %s of job %s: %s", slot, h.id, exc)

    def after_settle(self, job: JobRun, outcome: Outcome) -> None:
        self._release(self._worker, job)

    def _release(self, worker: Worker, job: JobRun) -> None:
        name = job.extras.pop(SLOT, None)
        if name is None:
            return
        try:
            worker.app.results.release_slot(name, job.id)
        except SleipnirError as exc:
            log.warning(
                "could not free slot %s of job %s (it expires with the lease): %s",
                name,
                job.id,
                exc,
            )
