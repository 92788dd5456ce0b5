"""What tasks, job contexts, workflows and the scheduler need of an app: the
producer's side of it, no more.

:class:`~sleipnir.app.App` is one (structurally); these modules depend on this
narrow interface instead of the whole ``App``, so none of them imports app.py and
the app can import them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .clock import Clock
    from .job import Job
    from .keys import KeyClaim
    from .results import JobState, ResultStore
    from .schedule import Periodic
    from .task import JobHandle, Task

__all__ = ["Producer"]


class Producer(Protocol):
    """An app as its tasks, contexts, workflows and scheduler see it."""

    @property
    def clock(self) -> Clock:
        """The time every deadline, delay and expiry is read from."""

    @property
    def results(self) -> ResultStore:
        """Outcomes and claimed keys (progress, cancel requests, ticks, workflow marks)."""

    @property
    def result_ttl(self) -> float:
        """Seconds an outcome (and what goes with it) is kept."""

    @property
    def default_queue(self) -> str: ...

    @property
    def max_payload_bytes(self) -> int: ...

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]: ...

    @property
    def schedules(self) -> Mapping[str, Periodic]: ...

    def enqueue_jobs(
        self, jobs: Sequence[Job], claims: Sequence[KeyClaim | None] | None = None
    ) -> list[JobHandle[Any]]:
        """Store built jobs in the broker, all in one call; durable when this returns."""

    async def enqueue_jobs_async(self, jobs: Sequence[Job]) -> list[JobHandle[Any]]: ...

    def status(self, job_id: str) -> JobState: ...
