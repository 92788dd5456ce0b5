"""Tasks (registered functions) and job handles (what ``delay`` returns)."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .context import Context, wants_context
from .errors import (
    InvalidArgumentsError,
)
from .handle import JobHandle
from .job import Job, new_job_id
from .keys import DEFAULT_KEY_WINDOW, UNIQUE_HEADER, KeyClaim, fingerprint
from .storekeys import idempotency_key, unique_key

if TYPE_CHECKING:
    from .producer import Producer
    from .workflow import Signature

__all__ = ["MAX_PRIORITY", "MIN_PRIORITY", "JobHandle", "Task", "TaskOptions"]

MIN_PRIORITY = -255
MAX_PRIORITY = 255
"""Priorities every backend orders exactly (Redis scores, RabbitMQ's x-max-priority)."""


def check_priority(priority: int) -> int:
    """Return ``priority`` or raise ValueError when it is not an int in the range."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an int, not {type(priority).__name__}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    return priority


P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task's jobs are queued and retried."""

    queue: str
    retries: int = 3
    """Retries after the first attempt; a job runs at most ``retries + 1`` times on failure."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one, with jitter."""
    max_backoff: float = 300.0
    """Upper bound of the retry delay, seconds."""
    timeout: float | None = None
    """Time limit of one run, seconds. Enforced for ``async def`` tasks; see the docs."""
    priority: int = 0
    """Higher runs first within a queue."""
    unique_for: float | None = None
    """Seconds during which a second call with the same arguments gives back the queued
    or running job instead of a new one (until that job finished for good)."""
    rate_limit: str | None = None
    """At most N runs per period across all workers: ``"100/m"``, ``"5/s"``, ``"1000/h"``,
    ``"10/30s"``. A job over the limit waits (scheduled) without using a retry."""
    concurrency: int | None = None
    """At most this many jobs of the task running at once across all workers."""
    isolate: bool = False
    """Run each job in a process of its own, killed at ``timeout`` (sync tasks only)."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if not (0 <= self.backoff < math.inf and 0 <= self.max_backoff < math.inf):
            raise ValueError("backoff and max_backoff must be finite and >= 0 seconds")
        if self.timeout is not None and not 0 < self.timeout < math.inf:
            raise ValueError("timeout must be finite and > 0 seconds")
        check_priority(self.priority)
        if self.unique_for is not None and not 0 < self.unique_for < math.inf:
            raise ValueError("unique_for must be finite and > 0 seconds")
        if self.rate_limit is not None:
            parse_rate(self.rate_limit)
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise ValueError("concurrency must be an int >= 1")

    @property
    def rate(self) -> tuple[int, float] | None:
        """``rate_limit`` as (runs, seconds)."""
        return None if self.rate_limit is None else parse_rate(self.rate_limit)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/m"`` -> (100, 60.0); also ``"5/s"``, ``"1000/h"``, ``"1/d"``, ``"10/30s"``."""
    count, _, per = str(text).replace(" ", "").partition("/")
    try:
        runs = int(count)
        if per in _UNITS:
            seconds = _UNITS[per]
        elif per[-1:] in _UNITS and per[:-1]:
            seconds = float(per[:-1]) * _UNITS[per[-1]]
        else:
            seconds = float(per)
    except (ValueError, IndexError):
        raise ValueError(
            f"rate_limit {text!r} is not like '100/m' (runs per s, m, h, d or N seconds)"
        ) from None
    if runs < 1 or not 0 < seconds < math.inf:
        raise ValueError(f"rate_limit {text!r} needs at least 1 run per a positive period")
    return runs, seconds


class Task(Generic[P, R]):
    """A function registered on an :class:`~sleipnir.App`.

    Calling the task runs the function here and now; :meth:`delay` and
    :meth:`enqueue` put a job on the queue for a worker instead.
    """

    def __init__(self, app: Producer, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        full = inspect.signature(fn)
        parameters = list(full.parameters.values())
        self.takes_context = wants_context(parameters)
        """The function's first parameter is a :class:`~sleipnir.Context` the worker passes."""
        self.signature = full.replace(parameters=parameters[1:]) if self.takes_context else full
        """The arguments callers give (without ``ctx``)."""
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (a task taking ``ctx`` gets a detached one)."""
        if self.takes_context:
            return self.fn(Context.detached(self.name), *args, **kwargs)  # type: ignore[arg-type]
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A call to make later, in a :func:`~sleipnir.chain` or :func:`~sleipnir.group`."""
        from .workflow import Signature

        return Signature(self, tuple(args), dict(kwargs))

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`InvalidArgumentsError` if the call does not fit the function."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"arguments do not fit {self.name}{self.signature}: {exc}"
            ) from None

    def build(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
    ) -> Job:
        """Make the job for one call, checking the arguments against the function."""
        kwargs = kwargs or {}
        self.check_arguments(args, kwargs)
        if delay is not None and at is not None:
            raise ValueError("give either delay= (seconds from now) or at= (epoch seconds)")
        if delay is not None and not 0 <= delay < math.inf:
            raise ValueError("delay must be finite and >= 0 seconds")
        if at is not None and not math.isfinite(at):
            raise ValueError("at must be a finite epoch time in seconds")
        now = self.app.clock.time()
        eta_at = now + delay if delay else at
        return Job(
            id=new_job_id(),
            task=self.name,
            args=list(args),
            kwargs=dict(kwargs),
            queue=queue or self.options.queue,
            priority=self.options.priority if priority is None else check_priority(priority),
            enqueued_at=now,
            eta_at=eta_at if eta_at is not None and eta_at > now else None,
            headers=self._unique_header(args, kwargs),
        )

    def _unique_header(self, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, str]:
        if self.options.unique_for is None:
            return {}
        return {UNIQUE_HEADER: unique_key(self.name, fingerprint(self.name, args, kwargs))}

    def claims_for(
        self, jobs: Sequence[Job], key: str | None = None, window: float | None = None
    ) -> list[KeyClaim | None] | None:
        """The keys to claim for ``jobs``: the idempotency ``key``, else the unique key."""
        now = self.app.clock.time()
        if key is not None:
            if window is not None and not 0 < window < math.inf:
                raise ValueError("key_window must be finite and > 0 seconds")
            job = jobs[0]
            return [
                KeyClaim(
                    idempotency_key(key),
                    fingerprint(job.task, job.args, job.kwargs),
                    now + (DEFAULT_KEY_WINDOW if window is None else window),
                )
            ]
        if self.options.unique_for is None:
            return None
        return [
            KeyClaim(
                job.headers[UNIQUE_HEADER],
                fingerprint(job.task, job.args, job.kwargs),
                now + self.options.unique_for,
            )
            for job in jobs
        ]

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue a call with the task's default options; return at once with its handle."""
        jobs = [self.build(args, kwargs)]
        return self.app.enqueue_jobs(jobs, self.claims_for(jobs))[0]

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Async form of :meth:`delay`, for producers running on an event loop."""
        jobs = [self.build(args, kwargs)]
        claims = self.claims_for(jobs)
        if claims is not None:  # claiming is a few sync store calls: off the event loop
            return (await asyncio.to_thread(self.app.enqueue_jobs, jobs, claims))[0]
        return (await self.app.enqueue_jobs_async(jobs))[0]

    def enqueue(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        key: str | None = None,
        key_window: float | None = None,
    ) -> JobHandle[R]:
        """Enqueue a call with explicit options.

        ``delay`` is seconds from now and ``at`` an epoch time (give one of them);
        ``priority`` (higher first) and ``queue`` override the task's defaults.
        ``key`` is an idempotency key: while its claim lives (``key_window`` seconds,
        24 h by default) the same key with the same call gives back the same job, and
        with a different call raises :class:`~sleipnir.KeyReusedError`.
        """
        jobs = [self.build(args, kwargs, delay=delay, at=at, priority=priority, queue=queue)]
        return self.app.enqueue_jobs(jobs, self.claims_for(jobs, key, key_window))[0]

    def map(self, calls: Iterable[Sequence[Any]]) -> list[JobHandle[R]]:
        """Enqueue one job per tuple of positional arguments, all in one broker call."""
        jobs = [self.build(tuple(call)) for call in calls]
        return self.app.enqueue_jobs(jobs, self.claims_for(jobs))
