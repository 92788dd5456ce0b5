"""Settling finished jobs: outcomes stored first, then acks and nacks, in a few round trips.

A job is acked only after its outcome is stored. A record the store refuses for
what it holds (not for a connection: that is a :class:`SleipnirError`, retried by
the caller) is replaced by a failure that says so, which the store can take: one
bad outcome never blocks the others. Hooks see the batch before the acks
(``before_ack``) and each job after (``after_settle``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..brokers.base import Nack
from ..errors import SleipnirError
from ..results import JobState, ResultRecord
from .held import Outcome
from .policy import type_name

if TYPE_CHECKING:
    from .loop import Worker

__all__ = ["settle"]

log = logging.getLogger("sleipnir.worker")

_DONE = (JobState.SUCCEEDED, JobState.CANCELLED)


def settle(worker: Worker, outcomes: list[Outcome]) -> None:
    """Store ``outcomes``, then ack the succeeded and cancelled and nack the rest.

    Raises :class:`~sleipnir.errors.SleipnirError` when the store or the broker did
    not answer: the caller keeps the outcomes and tries again later, which loses
    nothing (a repeated put replaces the same records, an ack whose lease ran out is
    refused).
    """
    outcomes = _store(worker, outcomes)
    acks = [o.held.reservation for o in outcomes if o.state in _DONE]
    nacks = [
        Nack(o.held.reservation, o.retry_at, o.error or "")
        for o in outcomes
        if o.state not in _DONE
    ]
    worker.hooks.emit_strict("before_ack", worker, outcomes)
    broker = worker.app.broker
    acked = broker.ack(acks) if acks else []
    nacked = broker.nack(nacks) if nacks else []
    if any(acked) or any(nacked) or not (acks or nacks):
        worker.outage.ok()  # (refused acks may be answered locally: a dead connection's)
    refused = [r.id for r, ok in zip(acks, acked, strict=True) if not ok]
    refused += [n.reservation.id for n, ok in zip(nacks, nacked, strict=True) if not ok]
    lost = set(refused)
    stats = worker.stats
    for o in outcomes:
        if o.state is JobState.SUCCEEDED:
            stats.succeeded += 1
        elif o.state is JobState.RETRYING:
            stats.retried += 1
        elif o.state is JobState.CANCELLED:
            stats.cancelled += 1
        else:
            stats.failed += 1
        o.lost = o.held.id in lost
    worker.apart.forget(outcomes)
    if worker.hooks.listens("after_settle"):
        for o in outcomes:
            worker.hooks.emit("after_settle", o.held, o)
    if lost:
        stats.lost_leases += len(refused)
        log.warning("lease lost before settling, these jobs will run again: %s", ", ".join(refused))


def _record(worker: Worker, o: Outcome, expires_at: float) -> ResultRecord:
    return ResultRecord(
        job_id=o.held.id,
        state=o.state,
        task=o.held.task,
        queue=o.held.queue,
        attempt=o.held.attempt,
        finished_at=o.finished_at,
        expires_at=expires_at,
        value=o.value,
        error=o.error,
        started_at=o.held.started_at,
    )


def _store(worker: Worker, outcomes: list[Outcome]) -> list[Outcome]:
    """Write the outcomes' records in one call; the outcomes as stored.

    A run whose lease is known lost does not speak for the job: another worker may
    be running it now, and its outcome is the one to keep.
    """
    store = worker.app.results
    expires_at = worker.app.clock.time() + worker.app.result_ttl
    kept = [o for o in outcomes if not o.held.lost]
    if not kept:
        return outcomes
    try:
        store.put([_record(worker, o, expires_at) for o in kept])
        return outcomes
    except SleipnirError:
        raise
    except Exception as exc:  # a record the store cannot write: find it, replace it
        log.error("could not store %d outcomes (%r); storing them one by one", len(kept), exc)
    stored: dict[int, Outcome] = {}
    for o in kept:
        try:
            store.put([_record(worker, o, expires_at)])
            continue
        except SleipnirError:
            raise
        except Exception as exc:
            error = f"StoreError: the job's outcome could not be stored ({type_name(exc)})"
            log.error("job %s (%s): %s", o.held.id, o.held.task, error)
        placeholder = Outcome(o.held, JobState.FAILED, o.finished_at, error=error)
        store.put([_record(worker, placeholder, expires_at)])
        stored[id(o)] = placeholder
    return [stored.get(id(o), o) for o in outcomes]
