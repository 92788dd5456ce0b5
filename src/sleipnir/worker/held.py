"""What a worker holds: one delivery of a job (:class:`JobRun`) and how its run ended.

A :class:`JobRun` is also what hooks are given as ``job``: its public face is
``id``, ``task`` (the name), ``queue``, ``attempt``, ``args``, ``kwargs``,
``headers``, ``started_at`` and ``extras``; the rest is the worker's own
bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ..brokers.base import Reservation
from ..context import Context
from ..job import Job
from ..results import JobState
from ..task import Task

__all__ = ["JobRun", "Outcome", "WorkerStats"]


@dataclass(slots=True, eq=False)
class JobRun:
    """A reservation this worker holds, started or not."""

    reservation: Reservation
    job: Job | None
    """``None`` when the body could not be decoded."""
    definition: Task[Any, Any] | None
    """The task that runs it; ``None`` when the job was refused before it could run."""
    deadline: float = float("inf")
    """When its lease ends at the latest (monotonic seconds, this worker's own clock): the
    moment the reserve or the last successful renewal was *sent*, plus the lease. The
    broker started the lease no earlier than that, so this never errs late, whatever
    the clocks of the hosts say and however long the answer took to come back."""
    started_at: float | None = None
    """When its run started (epoch seconds, the app's clock); ``None`` before."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Room for hooks to keep what they need between two events of the same run."""
    lost: bool = False
    """The broker refused a renewal (another delivery owns the job now), or the job's lease
    ended, by ``deadline``, before it could start: this run does not speak for the job."""
    expired: bool = False
    """It was running when its ``deadline`` passed without a renewal: counted as a lost
    lease once; settled as usual (the broker refuses the ack if another worker took it)."""
    cancelled: bool = False
    """A cancel was asked for and this worker saw it."""
    ctx: Context | None = None
    atask: asyncio.Task[Any] | None = None
    """An ``async def`` task's run on the worker's loop, to cancel it."""
    apart: bool = False
    """Its lease ran out before (``Reservation.lost``): it runs apart from other jobs."""
    crashes: int = 0
    """Its runs apart so far that ended with their worker dead (``apart:<id>``)."""
    own_crashes: int = 0
    """Its runs in a process of its own so far that ended with that process dead."""
    crashed: bool = False
    """This run's process died (:class:`~sleipnir.isolated.ProcessCrashed`)."""
    isolated: bool = False
    """It runs in a process of its own (``isolate=True``, or apart)."""

    # -- what hooks read -------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.reservation.id

    @property
    def task(self) -> str:
        """The task's name (``"?"`` when the body could not be decoded)."""
        return self.job.task if self.job is not None else "?"

    @property
    def queue(self) -> str:
        return self.reservation.queue

    @property
    def attempt(self) -> int:
        """Deliveries so far, this one included (1 on the first run)."""
        return self.reservation.attempt

    @property
    def args(self) -> list[Any]:
        return self.job.args if self.job is not None else []

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.job.kwargs if self.job is not None else {}

    @property
    def headers(self) -> dict[str, str]:
        return self.job.headers if self.job is not None else {}

    @property
    def charged(self) -> int:
        """Tries this job has used: deliveries less those that ended with a lost lease."""
        return max(1, self.reservation.attempt - self.reservation.lost)


@dataclass(slots=True, eq=False)
class Outcome:
    """How one run ended, as it is stored (what hooks are given as ``outcome``)."""

    held: JobRun
    state: JobState
    """``succeeded``, ``retrying``, ``failed`` (to the dead letters) or ``cancelled``."""
    finished_at: float
    value: bytes | None = None
    """The return value, encoded (JSON), of a succeeded run."""
    error: str | None = None
    """The error's first line and traceback, for the other states."""
    retry_at: float | None = None
    """When a retrying job runs again (epoch seconds)."""
    exception: BaseException | None = None
    """What the task raised; ``None`` when it returned or could not run."""
    lost: bool = False
    """Set when settled: the broker refused the ack or nack because the lease had ended
    (another delivery owns the job now; this outcome does not speak for it)."""


@dataclass(slots=True)
class WorkerStats:
    """Counts since the worker started."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    cancelled: int = 0
    lost_leases: int = 0
    started_at: float = field(default_factory=time.time)
