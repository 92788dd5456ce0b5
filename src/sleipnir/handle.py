"""A handle on an enqueued job: its id, where it stands, its result when done, its cancel."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from .context import read_progress
from .errors import (
    JobCancelledError,
    JobFailedError,
    ResultTimeoutError,
)
from .job import decode_value
from .results import JobState, ResultRecord
from .storekeys import cancel_key

if TYPE_CHECKING:
    from .producer import Producer

R = TypeVar("R")


class JobHandle(Generic[R]):
    """A handle on an enqueued job: its id, its state and, when done, its result."""

    def __init__(self, app: Producer, job_id: str) -> None:
        self.app = app
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> JobState:
        """Where the job stands now (a :class:`JobState`, comparable with plain strings)."""
        return self.app.status(self.id)

    def record(self) -> ResultRecord | None:
        """The stored outcome, once the job finished (or ``None``)."""
        return self.app.results.get(self.id)

    def result(self, timeout: float | None = None, poll_interval: float = 0.001) -> R:
        """Wait for the job to finish and return its value.

        Raises :class:`JobFailedError` when it failed for good (its subclass
        :class:`JobCancelledError` when cancelled) and :class:`ResultTimeoutError`
        when ``timeout`` seconds pass first. Reads the result store at once, then
        after ``poll_interval`` seconds, each wait 1.5 times longer, at most 0.1 s:
        a short job's result is seen within about a millisecond of being stored.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        while True:
            record = self.app.results.get(self.id)
            if record is not None and record.state.finished:
                return self._outcome(record)
            time.sleep(self._next_wait(deadline, timeout, delay))
            delay = min(delay * 1.5, 0.1)

    async def result_async(self, timeout: float | None = None, poll_interval: float = 0.001) -> R:
        """Async form of :meth:`result`, for callers on an event loop (it never blocks it:
        the store is read on a thread, and the waits are ``asyncio.sleep``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        while True:
            record = await asyncio.to_thread(self.app.results.get, self.id)
            if record is not None and record.state.finished:
                return self._outcome(record)
            await asyncio.sleep(self._next_wait(deadline, timeout, delay))
            delay = min(delay * 1.5, 0.1)

    def _outcome(self, record: ResultRecord) -> R:
        if record.state is JobState.SUCCEEDED:
            return cast(R, decode_value(record.value) if record.value else None)
        if record.state is JobState.CANCELLED:
            raise JobCancelledError(self.id)
        raise JobFailedError(self.id, (record.error or "").split("\n", 1)[0])

    def _next_wait(self, deadline: float | None, timeout: float | None, delay: float) -> float:
        """How long to wait before the next look; raises once ``deadline`` passed."""
        if deadline is not None and time.monotonic() >= deadline:
            raise ResultTimeoutError(f"job {self.id} had not finished after {timeout} s")
        left = 3600.0 if deadline is None else deadline - time.monotonic()
        return max(0.0, min(delay, left))

    def progress(self) -> tuple[float, float | None] | None:
        """The last ``(done, total)`` the job reported with ``ctx.progress``, or ``None``."""
        return read_progress(self.app.results, [self.id]).get(self.id)

    def cancel(self) -> bool:
        """Ask for the job to be cancelled: a queued job never runs, a running one is stopped.

        Returns ``False`` when the job had already finished (nothing to cancel).
        A running ``async def`` task is cancelled at its next ``await``; a running
        sync task is told through its ``ctx`` (see :mod:`sleipnir.context`), and
        one that finishes anyway keeps its outcome.
        """
        record = self.app.results.get(self.id)
        if record is not None and record.state.finished:
            return False
        now = self.app.clock.time()
        self.app.results.set_key(cancel_key(self.id), str(now).encode(), now + self.app.result_ttl)
        return True
