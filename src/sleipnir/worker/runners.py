"""Starting held jobs, and where tasks run: a thread pool (sync tasks), an event loop
on a thread of its own (``async def`` tasks), and processes of their own
(``isolate=True``, and jobs that run apart), all behind one call, :meth:`Runners.start`.

Every run ends with exactly one :class:`~sleipnir.worker.held.Outcome` put on the
``done`` queue, whatever the task (or the building of its outcome) raises. The
``before_run`` and ``after_run`` hooks run in the thread, or on the loop, that
runs the task. Task threads never touch the broker.

A held job starts (:func:`start_waiting`) when the concurrency allows, once its
lease has time left (:func:`time_to_start`), once the ``before_start`` hooks let
it (the limits may hold it back), and, for a job that runs alone, once nothing
else runs beside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import random
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..brokers.base import Reservation
from ..clock import Clock
from ..context import Context
from ..errors import SleipnirError
from ..hooks import HookList
from ..isolated import kill, run_isolated
from ..loopwatch import LoopWatch
from ..results import JobState
from . import policy
from .held import JobRun, Outcome

if TYPE_CHECKING:
    from .loop import Worker

__all__ = ["Runners", "start_waiting", "time_to_start"]

log = logging.getLogger("sleipnir.worker")


class Runners:
    """Starts held jobs on the right runner; finished ones arrive on :attr:`done`."""

    def __init__(
        self,
        *,
        concurrency: int,
        clock: Clock,
        rng: random.Random,
        hooks: HookList,
        loopwatch: LoopWatch,
        app_spec: Callable[[], str | None],
    ) -> None:
        self.concurrency = concurrency
        self.done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._clock = clock
        self._rng = rng
        self._hooks = hooks
        self._around = hooks.listens("before_run") or hooks.listens("after_run")
        self._loopwatch = loopwatch
        self._app_spec = app_spec
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._children: set[subprocess.Popen[bytes]] = set()
        self._children_lock = threading.Lock()

    # -- life --------------------------------------------------------------------------

    def open(self, with_loop: bool) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="sleipnir-task"
        )
        if with_loop:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._loop_thread = threading.Thread(
                target=loop.run_forever, name="sleipnir-async", daemon=True
            )
            self._loop_thread.start()
            self._loopwatch.start()

    def close(self) -> None:
        """Stop taking work; kill processes still running (their leases bring them back)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._children_lock:
            children = list(self._children)
        for child in children:
            kill(child)
        loop, thread = self._loop, self._loop_thread
        self._loopwatch.stop()
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if not thread.is_alive():  # a loop still running cannot be closed; exit ends it
            loop.close()
        self._loop = self._loop_thread = None

    # -- runs --------------------------------------------------------------------------

    def start(self, held: JobRun) -> None:
        """Run ``held`` (its ``definition`` and ``job`` are set) on the runner that fits it."""
        task = held.definition
        assert task is not None and held.job is not None  # refused jobs never start
        if held.isolated:
            assert self._pool is not None
            self._pool.submit(self._guarded, self._run_isolated, held)
        elif task.is_async:
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(self._run_async(held), self._loop)
        else:
            assert self._pool is not None
            self._pool.submit(self._guarded, self._run_sync, held)

    def cancel(self, held: JobRun) -> None:
        """Cancel a running ``async def`` task (sync ones are told through their ctx)."""
        if self._loop is not None and held.definition is not None and held.definition.is_async:
            self._loop.call_soon_threadsafe(_cancel_async, held)

    def _finish(self, outcome: Outcome) -> None:
        if self._around:
            self._hooks.emit("after_run", outcome.held, outcome)
        self.done.put(outcome)

    def _guarded(self, runner: Callable[[JobRun], None], held: JobRun) -> None:
        """Run ``runner`` on a pool thread; whatever escapes it still gives the job an outcome.

        Without this, an exception raised while the outcome is built would end on a
        future nobody reads: the job would stay "running", its slot taken, for good.
        """
        try:
            runner(held)
        except BaseException as exc:  # nothing may leave a job without an outcome
            now = self._clock.time()
            self.done.put(policy.placeholder(held, exc, "while running it", now, self._rng))

    def _run_sync(self, held: JobRun) -> None:
        if held.definition is not None and held.definition.options.isolate:
            self._run_isolated(held)
            return
        if self._around:
            self._hooks.emit("before_run", held)
        try:
            value = _call(held)
        except BaseException as exc:  # every failure of task code is the job's outcome
            self._finish(policy.failure(held, exc, self._clock.time(), self._rng))
        else:
            self._finish(policy.success(held, value, self._clock.time()))

    def _run_isolated(self, held: JobRun) -> None:
        spec = self._app_spec()
        task, job = held.definition, held.job
        assert spec is not None and task is not None and job is not None  # run() found it
        started_procs: list[subprocess.Popen[bytes]] = []

        def started(proc: subprocess.Popen[bytes]) -> None:
            with self._children_lock:
                self._children.add(proc)
            started_procs.append(proc)

        if self._around:
            self._hooks.emit("before_run", held)
        try:
            body = run_isolated(
                spec,
                task,
                job,
                held.reservation.attempt,
                held.reservation.queue,
                cancelled=lambda: held.cancelled,
                on_start=started,
            )
        except BaseException as exc:  # every failure of task code is the job's outcome
            self._finish(policy.failure(held, exc, self._clock.time(), self._rng))
        else:
            self._finish(Outcome(held, JobState.SUCCEEDED, self._clock.time(), value=body))
        finally:
            with self._children_lock:
                self._children.difference_update(started_procs)

    async def _run_async(self, held: JobRun) -> None:
        task, job = held.definition, held.job
        assert task is not None and job is not None
        timeout = task.options.timeout
        held.atask = asyncio.current_task()
        if held.cancelled:  # cancelled between its start and now
            self.done.put(policy.cancelled(held, self._clock.time()))
            return
        if self._around:
            self._hooks.emit("before_run", held)
        try:
            coro = self._loopwatch.watch(_call(held), job.id, task.name, timeout)
            value = await asyncio.wait_for(coro, timeout) if timeout else await coro
        except BaseException as exc:  # see _run_sync
            self._finish(policy.failure(held, exc, self._clock.time(), self._rng))
        else:
            self._finish(policy.success(held, value, self._clock.time()))


def _call(held: JobRun) -> Any:
    """Call the task's function (a coroutine for ``async def``), with its ctx if it takes one."""
    task, job = held.definition, held.job
    assert task is not None and job is not None
    if held.ctx is not None:
        return task.fn(held.ctx, *job.args, **job.kwargs)
    return task.fn(*job.args, **job.kwargs)


def _cancel_async(held: JobRun) -> None:
    """On the worker's loop: cancel a running ``async def`` task (see ``_run_async``)."""
    if held.atask is not None and not held.atask.done():
        held.atask.cancel()


# -- starting held jobs ---------------------------------------------------------------


def time_to_start(worker: Worker, deadline: float) -> bool:
    """Whether a job whose lease ends by ``deadline`` may start now: at least half a lease
    left, so it cannot end before the next renewal (a third of a lease away at most)
    has landed."""
    return deadline - worker.lease_clock() >= worker.lease / 2


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
