"""Honest time limits for ``async def`` tasks: notice a coroutine that blocks the loop.

Every ``async def`` job of a worker runs on one event loop. The loop can only
cancel a coroutine at an ``await``: a coroutine that spins (a CPU-bound loop, a
blocking call such as ``time.sleep``) holds the loop until it yields, and
``asyncio.wait_for`` cannot stop it. Left alone, such a job would run past its
``timeout``, be stored as succeeded, and hold up every other async job of the
worker meanwhile.

:meth:`LoopWatch.watch` wraps a job's coroutine and drives it step by step (a
step is the code between two awaits), noting before each step which job runs
and since when. That costs two clock reads per step, well under a microsecond.
From those notes:

* a watchdog thread looks every ``tick`` seconds at the step the loop is in, and
  logs a warning (once per job) when a job has held the loop for ``warn_after``
  seconds or past its time limit, while it still holds it;
* when the step ends, a job whose time limit came while its own step held the
  loop is given its verdict: it raises :class:`BlockedLoop`, a ``TimeoutError``,
  whatever the step did (returned a value, raised, or awaited). A job that blocks
  for a while but ends the step before its limit is not failed.

This module does not stop a blocking coroutine (nothing can, short of killing
the thread), and does not charge a job for the time another job held the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

__all__ = ["BlockedLoop", "LoopWatch"]

log = logging.getLogger("sleipnir.worker")

T = TypeVar("T")

WARN_AFTER = 1.0
"""Seconds a job may hold the event loop before the watchdog warns about it."""

TICK = 0.1
"""Seconds between two looks of the watchdog."""


class BlockedLoop(TimeoutError):
    """An ``async def`` job's time limit came while it held the event loop."""

    def __init__(self, limit: float) -> None:
        super().__init__(
            f"ran over its time limit of {limit} s without awaiting "
            "(it blocked the worker's event loop)"
        )
        self.limit = limit


class LoopWatch:
    """Watches the steps of the coroutines given to :meth:`watch`; one per event loop."""

    def __init__(
        self,
        *,
        warn_after: float | None = None,
        tick: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn_after = WARN_AFTER if warn_after is None else warn_after
        self.tick = TICK if tick is None else tick
        self._monotonic = monotonic
        self._step: tuple[_Steps[Any], float] | None = None
        """The job whose step the loop runs now, and since when (monotonic)."""
        self._warned_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self, coro: Awaitable[T], job_id: str, task: str, limit: float | None
    ) -> Awaitable[T]:
        """``coro``, run step by step under watch; ``limit``: the job's time limit, seconds.

        The caller still enforces the limit at awaits (``asyncio.wait_for``); this
        adds the verdict for a limit that came while the job held the loop.
        """
        return _Steps(self, coro, job_id, task, limit)

    def start(self) -> None:
        """Start the watchdog thread (steps are tracked and judged without it)."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="sleipnir-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watchdog thread."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.wait(self.tick):
            now = self._monotonic()  # before the read: a step begun after it is not late
            step = self._step  # one read: the loop thread replaces it whole
            if step is None:
                continue
            steps, since = step
            if steps.overdue(since, now):
                self._warn(steps, now - since)

    def _warn(self, steps: _Steps[Any], blocked: float) -> None:
        """Log that ``steps``'s job blocked the loop, once per job (thread or loop calls it)."""
        with self._warned_lock:
            if steps.warned:
                return
            steps.warned = True
        log.warning(
            "job %s (%s) has blocked the event loop for %.1f s; async tasks must await "
            "— CPU-bound work belongs in isolate=True or a sync task",
            steps.job_id,
            steps.task,
            blocked,
        )


class _Steps(Generic[T]):
    """Drives a coroutine as ``yield from`` would, noting each step on its :class:`LoopWatch`."""

    __slots__ = ("_coro", "_watch", "deadline", "job_id", "limit", "overran", "task", "warned")

    def __init__(
        self, watch: LoopWatch, coro: Awaitable[T], job_id: str, task: str, limit: float | None
    ) -> None:
        self._watch = watch
        self._coro = coro
        self.job_id = job_id
        self.task = task
        self.limit = limit
        self.deadline: float | None = None
        """When the time limit comes (monotonic), set at the first step."""
        self.overran = False
        self.warned = False

    def overdue(self, since: float, now: float) -> bool:
        """A step that began at ``since`` and still runs at ``now`` is worth a warning."""
        return now - since >= self._watch.warn_after or (
            self.deadline is not None and since < self.deadline <= now
        )

    def __await__(self) -> Generator[Any, Any, T]:
        watch, clock = self._watch, self._watch._monotonic
        steps: Generator[Any, Any, T] = self._coro.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            started = clock()
            if self.deadline is None and self.limit:
                self.deadline = started + self.limit
            watch._step = (self, started)
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                self._ended(started)
                if self.overran:
                    raise BlockedLoop(self.limit or 0.0) from None
                value: T = stop.value
                return value
            except BaseException as exc:
                self._ended(started)
                if self.overran:
                    raise BlockedLoop(self.limit or 0.0) from exc
                raise
            self._ended(started)
            # An overran job that awaits gets the loop's own cancel at once (its
            # wait_for is overdue); whatever it does then, the verdict stands.
            try:
                sent, thrown = (yield yielded), None
            except GeneratorExit:
                _close(steps)
                raise
            except BaseException as exc:  # delivered into the coroutine, as yield from does
                sent, thrown = None, exc

    def _ended(self, started: float) -> None:
        watch = self._watch
        watch._step = None
        now = watch._monotonic()
        if self.deadline is not None and started < self.deadline <= now:
            self.overran = True
        if not self.warned and self.overdue(started, now):
            watch._warn(self, now - started)


def _close(steps: Any) -> None:
    close = getattr(steps, "close", None)
    if close is not None:
        close()
