"""Hooks: code that runs around each job and at the edges of a worker's life.

A hook is an object with any of the methods of :class:`Hook`; every method is
optional. Give them to the app (``App(..., hooks=[Audit()])`` or
``app.add_hook(Audit())``) and they run, in the order given, in producers and in
every worker of that app::

    class Audit(Hook):
        def before_run(self, job):            # the thread (or loop) that runs the task
            log.info("starting %s %s", job.task, job.id)

        def after_run(self, job, outcome):    # same thread, just after
            log.info("%s: %s", job.id, outcome.state)

A hook that raises is logged with its class and the event and is otherwise
ignored: it never stops the worker, never fails the job and never changes its
stored outcome. The built-in features (cancellation, rate and concurrency
limits, workflows, unique keys, metrics and heartbeats, tracing, the scheduler)
are hooks of the same kind (:mod:`sleipnir.worker.features`), so the worker's
loop names none of them.

The events, in the order one job meets them:

=======================  ===================================================  ==========
event                    when                                                 where
=======================  ===================================================  ==========
``before_enqueue``       before the broker call that stores the jobs          producer
``after_enqueue``        after the broker accepted them                       producer
``after_worker_start``   in a worker, before its first reserve                control
``after_reserve``        a batch of jobs was reserved and decoded             control
``before_start``         a held job may start now; a hook may postpone it     control
``before_run``           just before the task's function is called            task
``after_run``            just after it returned or raised                     task
``after_renew``          the leases of the held jobs were renewed             control
``on_tick``              each turn of the control loop (at least once a       control
                         second) while the worker runs
``before_ack``           outcomes are stored, their jobs not yet acked        control
``after_settle``         the outcome is stored and the job acked (or nacked)  control
``before_worker_stop``   the worker stops: no reserve follows                 control
``after_worker_stop``    running jobs have ended (or were given back)         control
=======================  ===================================================  ==========

"control" is the worker's control thread (the caller of ``Worker.run``); "task"
is the pool thread that runs a sync task, or the worker's event loop for an
``async def`` task (then the hook must not block). Producer hooks run in the
caller of ``delay()`` / ``enqueue()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job
    from .worker import Worker
    from .worker.held import JobRun, Outcome

__all__ = ["Hook", "HookList", "JobRun", "Outcome"]

log = logging.getLogger("sleipnir.hooks")


def __getattr__(name: str) -> Any:
    # JobRun and Outcome live with the worker, which imports this module.
    if name in ("JobRun", "Outcome"):
        from .worker import held

        return getattr(held, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Hook:
    """Code that runs around jobs; override the events you need (see the module docstring).

    Each method receives what it is about; none returns anything, except
    :meth:`before_start`.
    """

    # -- producer ------------------------------------------------------------------

    def before_enqueue(self, jobs: Sequence[Job]) -> None:
        """Before the broker call that stores ``jobs``."""

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        """After the broker accepted ``jobs``: they are durable now."""

    # -- a worker's life ---------------------------------------------------------------

    def after_worker_start(self, worker: Worker) -> None:
        """In the worker's process, before its first reserve."""

    def before_worker_stop(self, worker: Worker) -> None:
        """The worker leaves its loop: no reserve follows; running jobs may still finish."""

    def after_worker_stop(self, worker: Worker) -> None:
        """The worker has stopped: nothing runs any more and every outcome it could settle
        is settled."""

    def on_tick(self, worker: Worker) -> None:
        """On each turn of the worker's control loop (at least about once a second): keep it
        cheap, and keep a timer of your own for work that is due less often."""

    # -- one job -----------------------------------------------------------------------

    def after_reserve(self, worker: Worker, jobs: Sequence[JobRun]) -> None:
        """A batch of jobs was reserved and decoded; none has started yet."""

    def before_start(self, worker: Worker, job: JobRun) -> float | None:
        """The job may start now. Return ``None`` to let it, or when to try again (epoch
        seconds): the job is then given back, due at that time, and no try is used."""
        return None

    def before_run(self, job: JobRun) -> None:
        """In the thread (or on the loop) that runs the task, just before it."""

    def after_run(self, job: JobRun, outcome: Outcome) -> None:
        """Same thread, just after the task returned or raised."""

    def after_renew(self, worker: Worker, jobs: Sequence[JobRun]) -> None:
        """The leases of ``jobs`` (held, running or not) were renewed."""

    def before_ack(self, worker: Worker, outcomes: Sequence[Outcome]) -> None:
        """The outcomes are stored; their jobs are not acked yet. A
        :class:`~sleipnir.errors.SleipnirError` raised here postpones the whole settle
        (stored again, acked later): what must happen before a job is acked."""

    def after_settle(self, job: JobRun, outcome: Outcome) -> None:
        """Once the outcome is stored and the job acked (``outcome.lost``: the ack was
        refused because the lease had ended)."""


EVENTS = tuple(
    name for name, value in vars(Hook).items() if callable(value) and not name.startswith("_")
)


class HookList:
    """The hooks of an app, called event by event in the order given.

    Only hooks that override an event are called for it, so an event nobody
    listens to costs one attribute read.
    """

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self._hooks: list[Hook] = []
        self._listeners: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        """Append ``hook``; it runs after those already there."""
        self._hooks.append(hook)
        for name in EVENTS:
            method = getattr(type(hook), name, None)
            if method is not None and method is not getattr(Hook, name):
                self._listeners[name].append(getattr(hook, name))

    def __iter__(self) -> Any:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def listens(self, event: str) -> bool:
        return bool(self._listeners[event])

    def emit(self, event: str, *args: Any) -> None:
        """Call every listener of ``event``; one that raises is logged and skipped."""
        for listener in self._listeners[event]:
            try:
                listener(*args)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log_failure(listener, event)

    def emit_strict(self, event: str, *args: Any) -> None:
        """Like :meth:`emit`, but a :class:`SleipnirError` (a broker or store that did not
        answer) propagates: the caller tries the whole step again later."""
        from .errors import SleipnirError

        for listener in self._listeners[event]:
            try:
                listener(*args)
            except (KeyboardInterrupt, SleipnirError):
                raise
            except BaseException:
                _log_failure(listener, event)

    def first_delay(self, worker: Worker, job: JobRun) -> float | None:
        """``before_start``: the latest time any hook asks the job to wait until, if any."""
        for listener in self._listeners["before_start"]:
            try:
                when: float | None = listener(worker, job)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log_failure(listener, "before_start")
                continue
            if when is not None:
                return when  # the first hook that holds the job back decides
        return None


def _log_failure(listener: Callable[..., Any], event: str) -> None:
    owner = getattr(listener, "__self__", listener)
    log.exception("hook %s raised in %s (ignored)", type(owner).__qualname__, event)
