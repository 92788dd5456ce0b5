"""Starting held jobs: as many as the concurrency allows, each once its lease has time
left, once the ``before_start`` hooks let it (the limits may hold it back), and, for a
job that runs alone, once nothing else runs beside it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..brokers.base import Reservation
from ..context import Context
from ..errors import SleipnirError
from .held import JobRun
from .leases import time_to_start

if TYPE_CHECKING:
    from .loop import Worker

__all__ = ["start_waiting"]

log = logging.getLogger("sleipnir.worker")


def start_waiting(worker: Worker) -> None:
    later: list[tuple[JobRun, float]] = []
    kept: list[JobRun] = []
    try:
        _start_some(worker, later, kept)
    finally:
        worker._waiting.extendleft(reversed(kept))
    if later:
        _wait_for_limits(worker, later)


def _start_some(worker: Worker, later: list[tuple[JobRun, float]], kept: list[JobRun]) -> None:
    waiting, running = worker._waiting, worker._running
    hooks = worker.hooks
    gated = hooks.listens("before_start")
    while waiting and len(running) < worker.concurrency:
        if worker._alone is not None and running:
            break  # it starts once the jobs running beside it have ended
        held = waiting.popleft()
        if not time_to_start(worker, held.deadline):
            # Its lease was not renewed lately (the broker did not answer): it waits
            # for a renewal, or for expire() to drop it once the lease has ended.
            kept.append(held)
            continue
        if gated:
            wait_until = hooks.first_delay(worker, held)
            if wait_until is not None:
                later.append((held, wait_until))
                if held is worker._alone:
                    worker._alone = None
                continue
        held.started_at = worker.app.clock.time()
        running[held.id] = held
        task, job = held.definition, held.job
        assert task is not None and job is not None  # refused jobs never wait
        if task.takes_context:
            held.ctx = Context(worker.app, job.id, task.name, held.queue, held.attempt, job.headers)
        if held.apart and worker.app_spec and not task.options.isolate:
            # In a process of its own the job cannot take this worker down: a death of
            # the worker meanwhile is not the job's doing and is not counted against it
            # (its own process's crashes are, as failures). Only a run alone is counted.
            held.isolated = True
        elif held.apart:
            worker.apart.mark(held)
        worker.runners.start(held)


def _wait_for_limits(worker: Worker, later: list[tuple[JobRun, float]]) -> None:
    """Give back jobs held up by a limit, scheduled for when it may let them through.

    Their attempt is not counted: waiting under a limit uses no retry.
    """
    by_time: dict[float, list[Reservation]] = {}
    for held, when in later:
        by_time.setdefault(when, []).append(held.reservation)
    for when, reservations in by_time.items():
        try:
            worker.app.broker.release(reservations, ready_at=when)
        except SleipnirError as exc:
            log.warning(
                "could not give back %d jobs waiting for a limit (%s); their leases will",
                len(reservations),
                exc,
            )
