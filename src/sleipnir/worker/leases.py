"""Leases: reserving jobs, renewing what the worker holds, and what a lost link means.

Every held job carries a deadline on the worker's own monotonic clock (the moment
the reserve or the last good renewal was *sent*, plus the lease), so a worker cut
off from its broker never starts a job whose lease may have ended:

* a reserve answered after half a lease gives its jobs back unstarted;
* a job starts only with at least half a lease left (:func:`.runners.time_to_start`);
* a renewal that fails counts the held jobs whose deadline passed as lost
  (:func:`expire`): those not started are dropped, uncharged; those running are
  counted once and settled as usual (the broker refuses the ack if another
  worker took the job);
* a job that comes back to the worker still running it is adopted (:func:`adopt`),
  never run twice in one process.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..brokers.base import Reservation
from ..errors import SleipnirError

if TYPE_CHECKING:
    from .loop import Worker

__all__ = ["adopt", "expire", "give_back", "renew"]

log = logging.getLogger("sleipnir.worker")


def adopt(worker: Worker, reservations: list[Reservation], deadline: float) -> list[Reservation]:
    """Deliveries of jobs this worker still holds, whose lease ended while it could not
    renew it (a cut link): the job does not run twice here.

    A job still running, or finished and not yet settled, takes the new delivery as its
    lease (its outcome is settled with it); a job not yet started is held under the new
    delivery instead of the old one. The rest are returned, to be admitted.
    """
    if not (worker._running or worker._waiting or worker._unsettled):
        return reservations
    unsettled = {o.held.id: o.held for o in worker._unsettled}
    waiting = {h.id for h in worker._waiting}
    fresh: list[Reservation] = []
    for res in reservations:
        held = worker._running.get(res.id) or unsettled.get(res.id)
        if held is None:
            if res.id in waiting:
                worker._waiting = deque(h for h in worker._waiting if h.id != res.id)
                if worker._alone is not None and worker._alone.id == res.id:
                    worker._alone = None
            fresh.append(res)
            continue
        log.warning(
            "job %s came back to this worker after its lease ended (attempt %d); its "
            "run here goes on under the new lease",
            res.id,
            res.attempt,
        )
        held.reservation, held.deadline = res, deadline
        held.lost = held.expired = False
    return fresh


def renew(worker: Worker) -> None:
    """Renew the leases of every held job, running or not."""
    held = [*worker._running.values(), *worker._waiting]
    if not held:
        return
    sent = worker.lease_clock()
    try:
        kept = worker.app.broker.renew([h.reservation for h in held], worker.lease)
    except SleipnirError as exc:
        worker.outage.failed(f"lease renewal of {len(held)} jobs failed", exc)
        expire(worker)
        return
    worker.outage.ok()
    for h, ok in zip(held, kept, strict=True):
        if ok:
            h.deadline = sent + worker.lease
        elif not h.lost:
            h.lost = True
            log.warning("lease of job %s was lost; another worker may run it", h.id)
    worker._waiting = deque(h for h in worker._waiting if not h.lost)
    if worker._alone is not None and worker._alone.lost and worker._alone.started_at is None:
        worker._alone = None
    worker.hooks.emit("after_renew", worker, held)


def expire(worker: Worker) -> None:
    """After a renewal failed: the held jobs whose lease has ended by now are lost.

    Those that had not started are dropped (the broker hands them out again when it
    sees the lease ended; nothing is charged for them); those running go on and are
    settled as usual, counted once as a lost lease.
    """
    now = worker.lease_clock()
    ended = [h for h in (*worker._running.values(), *worker._waiting) if h.deadline <= now]
    dropped = []
    for h in ended:
        if h.started_at is None:
            h.lost = True
            dropped.append(h.id)
        elif not h.expired:
            h.expired = True
            worker.stats.lost_leases += 1
            log.warning(
                "lease of running job %s ended without a renewal; another worker may run it",
                h.id,
            )
    if dropped:
        worker.stats.lost_leases += len(dropped)
        worker._waiting = deque(h for h in worker._waiting if not h.lost)
        if worker._alone is not None and worker._alone.lost:
            worker._alone = None
        log.warning(
            "the leases of %d held jobs ended without a renewal; they do not start here: %s",
            len(dropped),
            ", ".join(dropped),
        )


def give_back(
    worker: Worker, reservations: Sequence[Reservation], ready_at: float | None = None
) -> None:
    """Hand reservations back unstarted (no try used); their leases do it if this fails."""
    try:
        if ready_at is None:
            worker.app.broker.release(reservations)
        else:
            worker.app.broker.release(reservations, ready_at=ready_at)
    except SleipnirError as exc:
        log.warning("could not give back %d jobs (%s); their leases will", len(reservations), exc)
