"""The broker contract: the one interface every backend implements.

Backends are dumb on purpose: they move bytes and leases. They never decode a
job, never decide about retries, and never know about tasks. The core
(:mod:`sleipnir.worker`) does all of that once, for every backend.

Semantics every backend keeps (the contract suite in ``tests/contract``
checks them):

* ``enqueue`` is all-or-nothing and durable when it returns (as durable as the
  backend's configuration makes it; each backend's docstring says what that is).
  A job whose id the broker already holds queued (ready, scheduled or reserved) is
  left as it is, never overwritten, where the backend can find jobs by id
  (``finds_queued_jobs``): two calls that store the job an earlier, failed call under
  the same idempotency key did not store do not store it twice. (Such a call first
  makes sure the job is neither queued nor dead nor finished.)
* ``reserve`` hands a job to exactly one caller at a time, with a lease ending
  at ``lease_until``. Each delivery raises the job's ``attempt`` by one; the
  first delivery has attempt 1. A delivery that follows a lease that ran out
  (nobody acked, nacked or released it) also raises ``lost`` by one. Higher
  ``priority`` first, FIFO within a priority; queues are served in the order
  given.
* A lease that runs out makes the job reservable again. The old reservation is
  stale from then on: ``renew``, ``ack``, ``nack`` and ``release`` with it
  return ``False`` and change nothing, even after the job was handed to
  another worker.
* ``release`` gives back a job that never started: it is ready at once (or at
  the ``ready_at`` given) and its attempt is not counted.
* ``nack`` with ``retry_at`` schedules the job again; with ``retry_at=None``
  it moves the job to the dead letters with the reason.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..checks import Check, Deployment, durability_warnings, reported

__all__ = [
    "Broker",
    "BrokerJobState",
    "DeadLetter",
    "Envelope",
    "JobInfo",
    "Nack",
    "QueueStats",
    "Reservation",
    "redact_url",
]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs, reprs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A job as a broker stores it: the indexed fields and the encoded body."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta_at: float | None = None
    """When the job becomes reservable (epoch seconds); ``None`` means now."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A job leased to one worker until ``lease_until``."""

    id: str
    queue: str
    body: bytes
    attempt: int
    token: Any
    """The backend's handle on this one delivery (row token, stream id, delivery tag)."""
    lease_until: float
    priority: int = 0
    lost: int = 0
    """Earlier deliveries of this job that ended with their lease running out (the worker
    holding it died or was cut off) instead of an ack, a nack or a release. Each of them
    is counted in ``attempt`` too; the worker charges a job only ``attempt - lost`` tries
    and runs a job with ``lost > 0`` apart from others until it finishes."""


@dataclass(frozen=True, slots=True)
class Nack:
    """A reservation given back after a failure."""

    reservation: Reservation
    retry_at: float | None
    """When to deliver again (epoch seconds); ``None`` sends the job to the dead letters."""
    reason: str


class BrokerJobState(StrEnum):
    """Where a job stands in the broker."""

    READY = "ready"
    SCHEDULED = "scheduled"
    RESERVED = "reserved"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the broker knows of one job."""

    id: str
    queue: str
    state: BrokerJobState
    attempt: int
    """Deliveries so far."""
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of one queue's jobs by state."""

    queue: str
    ready: int = 0
    scheduled: int = 0
    running: int = 0
    dead: int = 0
    oldest_ready_at: float | None = None
    """Since when the longest-waiting ready job has been ready (its enqueue time, or the
    time it came due); ``None`` when none is ready. ``now - oldest_ready_at`` is the lag."""
    next_scheduled_at: float | None = None
    """When the soonest scheduled job (delayed, backing off before a retry, or held back by a
    limit; not ready, not reserved) becomes ready; ``None`` when none is scheduled or the
    backend cannot tell. ``next_scheduled_at - now`` is how long until it comes due."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that failed for good, kept with the reason."""

    id: str
    queue: str
    body: bytes
    attempt: int
    reason: str
    failed_at: float
    priority: int = 0


class Broker(ABC):
    """A durable store of queued jobs with leases. See the module docstring."""

    url: str
    poll_interval: float = 0.05
    """How long an idle worker waits between reserves on a backend that cannot wake it."""
    finds_queued_jobs: bool = True
    """Whether :meth:`job_info` finds a ready or scheduled job by its id (and ``enqueue``
    leaves an id it holds as it is). RabbitMQ cannot look into a queue: ``False``."""

    def not_held(self, job_id: str) -> str:
        """What it means that :meth:`job_info` found no job ``job_id`` and no outcome is
        stored: gone, or, on a broker that cannot find queued jobs, perhaps still queued."""
        if self.finds_queued_jobs:
            return f"no job {job_id} (never enqueued here, or its record expired)"
        return (
            f"job {job_id} is not running here and has no outcome; it may still wait in its "
            "queue (this broker cannot find a queued job by its id)"
        )

    @abstractmethod
    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        """Store the jobs, all or none; durable when this returns."""

    async def enqueue_async(self, envelopes: Sequence[Envelope]) -> None:
        """Async form of :meth:`enqueue`; runs it on a thread unless a backend has better."""
        await asyncio.to_thread(self.enqueue, envelopes)

    @abstractmethod
    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        """Lease up to ``limit`` ready jobs from ``queues`` for ``lease`` seconds."""

    @abstractmethod
    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        """Extend each lease to now + ``lease``; ``False`` where the lease was lost."""

    @abstractmethod
    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        """Remove finished jobs; ``False`` where the lease was lost (nothing removed)."""

    @abstractmethod
    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        """Schedule a retry or dead-letter each job; ``False`` where the lease was lost."""

    @abstractmethod
    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        """Give back jobs that never started, attempt not counted.

        Ready at once, or at ``ready_at`` (epoch seconds; scheduled until then) for a
        job that must wait its turn, e.g. under a rate or concurrency limit.
        """

    @abstractmethod
    def job_info(self, job_id: str) -> JobInfo | None:
        """Where the job stands, or ``None`` when the broker no longer holds it."""

    @abstractmethod
    def stats(self) -> list[QueueStats]:
        """Counts per queue, for every queue that holds or held jobs (drained ones show zeros)."""

    @abstractmethod
    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The dead letters, oldest first."""

    @abstractmethod
    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        """Move dead letters back to their queues (all when ``ids`` is None), attempt reset."""

    @abstractmethod
    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None); return how many."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the queue's ready and scheduled jobs (not running ones); return how many."""

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block up to ``timeout`` seconds, or less when a job may have become ready.

        The default polls; backends that can be woken (blocking pops,
        notifications) override it so idle workers start new jobs at once.
        """
        time.sleep(min(timeout, self.poll_interval))

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        """What this backend says about itself: ``sleipnir doctor`` shows it all, and the
        worker logs at start the checks that carry a warning and did not pass.

        ``about`` tells what the backend cannot know alone (where the results are, the
        timings); a server it cannot reach is a failed check, not an exception. The
        default: reached, and nothing reported (a backend that overrides only
        :meth:`durability_warnings` has those shown).
        """
        legacy = type(self).durability_warnings is not Broker.durability_warnings
        return reported(redact_url(self.url), self.durability_warnings() if legacy else [])

    def durability_warnings(self) -> list[str]:
        """What in this broker's configuration can lose accepted jobs (logged at worker start).

        The warnings of :meth:`diagnose`'s checks, so the two never disagree.
        """
        return durability_warnings(self.diagnose(Deployment(startup=True)))

    def settings_report(self) -> dict[str, str | None]:
        """The server's settings that decide what a crash keeps, as they are now.

        Names as the server spells them; ``None`` where a setting could not be read.
        ``sleipnir doctor`` judges them. The default: nothing to report.
        """
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The broker must not be used afterwards."""
