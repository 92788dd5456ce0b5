"""The App: the registry of tasks and the configuration of one deployment."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

import msgspec

from . import tracing
from .brokers import broker_from_url, find_backend, results_from_url
from .brokers.base import Broker, BrokerJobState, Envelope, redact_url
from .clock import Clock, SystemClock
from .errors import (
    BrokerConnectionError,
    ConfigurationError,
    InvalidArgumentsError,
    KeyReusedError,
    SleipnirError,
    UnknownTaskError,
)
from .hooks import Hook, HookList
from .job import DEFAULT_MAX_PAYLOAD_BYTES, Job, encode_job
from .keys import KeyClaim, claim_for_job
from .results import JobState, ResultStore
from .schedule import Periodic, Schedule, as_schedule, default_catch_up
from .storekeys import cancel_key
from .task import JobHandle, Task, TaskOptions

__all__ = ["DEFAULT_BROKER_URL", "App"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_BROKER_URL = "sqlite://sleipnir.db"
"""``./sleipnir.db`` in the working directory: the embedded default."""

DEFAULT_AMQP_RESULTS_URL = "sqlite://sleipnir-results.db"
"""Where an App on RabbitMQ keeps results unless told: ``./sleipnir-results.db``."""


class App:
    """Tasks plus the configuration they run with.

    ``App()`` alone uses the embedded SQLite broker in ``./sleipnir.db``.
    Nothing connects until the first enqueue or the first worker, so building
    an App at import time of a module is cheap and safe.
    """

    def __init__(
        self,
        broker: str | Broker | None = None,
        *,
        results: str | ResultStore | None = None,
        default_queue: str = "default",
        lease: float = 30.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        result_ttl: float = 7 * 24 * 3600.0,
        clock: Clock | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        # NaN passes every "<= 0" test and then compares false with every time:
        # a NaN lease would hide a reserved job for ever. Ask for finite numbers.
        if not 0 < lease < math.inf:
            raise ConfigurationError(f"lease must be finite and > 0 seconds, not {lease!r}")
        if max_payload_bytes <= 0:
            raise ConfigurationError("max_payload_bytes must be > 0")
        if not 0 < result_ttl < math.inf:
            raise ConfigurationError(
                f"result_ttl must be finite and > 0 seconds, not {result_ttl!r}"
            )
        self.clock: Clock = clock or SystemClock()
        self.default_queue = default_queue
        self.lease = lease
        self.max_payload_bytes = max_payload_bytes
        self.result_ttl = result_ttl
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.hooks = HookList(hooks)
        """Code that runs around each job and at a worker's start and stop (see
        :mod:`sleipnir.hooks`)."""
        self.schedules: dict[str, Periodic] = {}
        """Periodic tasks by name, with their schedules (see :mod:`sleipnir.schedule`)."""
        self._broker = broker if isinstance(broker, Broker) else None
        self.broker_url = (
            broker.url if isinstance(broker, Broker) else _absolute(broker or DEFAULT_BROKER_URL)
        )
        self._results = results if isinstance(results, ResultStore) else None
        if isinstance(results, ResultStore):
            self.results_url = results.url
        elif results is not None:
            self.results_url = _absolute(results)
        elif (backend := find_backend(self.broker_url)) and not backend.keeps_results:
            # RabbitMQ keeps messages, not outcomes: results go to a file beside the app.
            self.results_url = _absolute(DEFAULT_AMQP_RESULTS_URL)
        else:
            self.results_url = self.broker_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> App:
        """Build an App from ``SLEIPNIR_*`` variables.

        ``SLEIPNIR_BROKER`` (URL), ``SLEIPNIR_RESULTS`` (URL), ``SLEIPNIR_QUEUE``
        (default queue), ``SLEIPNIR_LEASE`` (seconds), ``SLEIPNIR_MAX_PAYLOAD_BYTES``,
        ``SLEIPNIR_RESULT_TTL`` (seconds). Keyword arguments win over the environment.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for var, key, kind in (
            ("SLEIPNIR_BROKER", "broker", str),
            ("SLEIPNIR_RESULTS", "results", str),
            ("SLEIPNIR_QUEUE", "default_queue", str),
            ("SLEIPNIR_LEASE", "lease", float),
            ("SLEIPNIR_MAX_PAYLOAD_BYTES", "max_payload_bytes", int),
            ("SLEIPNIR_RESULT_TTL", "result_ttl", float),
        ):
            if env.get(var):
                try:
                    kwargs[key] = kind(env[var])
                except ValueError:
                    raise ConfigurationError(
                        f"{var}={env[var]!r} is not a {kind.__name__}"
                    ) from None
        kwargs.update(overrides)
        return cls(**kwargs)

    def add_hook(self, hook: Hook) -> Hook:
        """Add ``hook`` after those already there (see :mod:`sleipnir.hooks`); returns it."""
        self.hooks.add(hook)
        return hook

    def __repr__(self) -> str:
        return f"<App broker={redact_url(self.broker_url)} tasks={len(self.tasks)}>"

    @property
    def broker(self) -> Broker:
        """The broker, connected on first use."""
        if self._broker is None:
            self._broker = broker_from_url(self.broker_url, self.clock)
        return self._broker

    @property
    def results(self) -> ResultStore:
        """The result store, connected on first use."""
        if self._results is None:
            self._results = results_from_url(self.results_url, self.clock)
        return self._results

    # -- registering tasks ------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        timeout: float | None = None,
        priority: int = 0,
        unique_for: float | None = None,
        rate_limit: str | None = None,
        concurrency: int | None = None,
        isolate: bool = False,
        schedule: str | float | Schedule | None = None,
        tz: str | None = None,
        catch_up: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        timeout: float | None = None,
        priority: int = 0,
        unique_for: float | None = None,
        rate_limit: str | None = None,
        concurrency: int | None = None,
        isolate: bool = False,
        schedule: str | float | Schedule | None = None,
        tz: str | None = None,
        catch_up: float | None = None,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., ...)``.

        The task's name is the function's name unless ``name`` is given; it is
        the name under which any producer (the CLI, another language) refers to it.

        ``schedule`` makes it periodic: a cron string (``"0 6 1 * *"``, in ``tz``,
        default UTC), seconds between runs, or a :class:`~sleipnir.schedule.Schedule`.
        ``catch_up`` is how late (seconds) a missed tick may still run, once; see
        :mod:`sleipnir.schedule`.

        ``rate_limit="100/m"`` and ``concurrency=2`` hold across all workers on all
        hosts (kept in the result store); a job over a limit waits, scheduled,
        without using a retry.

        ``isolate=True`` runs each job of a sync task in a process of its own, so its
        ``timeout`` is enforced: the process is killed (see :mod:`sleipnir.isolated`).
        """
        if schedule is None and (tz is not None or catch_up is not None):
            raise ConfigurationError("tz= and catch_up= need a schedule=")
        when = None if schedule is None else as_schedule(schedule, tz)
        if catch_up is not None and not 0 <= catch_up < math.inf:
            raise ConfigurationError("catch_up must be finite and >= 0 seconds")
        options = TaskOptions(
            queue=queue or self.default_queue,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            priority=priority,
            unique_for=unique_for,
            rate_limit=rate_limit,
            concurrency=concurrency,
            isolate=isolate,
        )

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f.__name__
            if task_name in self.tasks and self.tasks[task_name].fn is not f:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            task = Task(self, f, task_name, options)
            if options.isolate and task.is_async:
                raise ConfigurationError(
                    f"task {task_name}: isolate=True is for sync tasks; an async def task "
                    "is cancelled at its timeout already"
                )
            if when is not None:
                try:
                    task.check_arguments((), {})
                except InvalidArgumentsError:
                    raise ConfigurationError(
                        f"periodic task {task_name} must be callable without arguments"
                    ) from None
                self.schedules[task_name] = Periodic(
                    task, when, default_catch_up(when) if catch_up is None else catch_up
                )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        *,
        every: float | None = None,
        cron: str | None = None,
        tz: str | None = None,
        catch_up: float | None = None,
        **options: Any,
    ) -> Callable[[Callable[[], R]], Task[[], R]]:
        """Register a periodic task: ``@app.periodic(every=30.0)`` or ``(cron="0 6 * * *")``.

        The same as ``@app.task(schedule=...)``; other keyword arguments are task options.
        """
        if (every is None) == (cron is None):
            raise ConfigurationError("give one of every= (seconds) or cron= (an expression)")
        schedule: str | float = cron if cron is not None else every  # type: ignore[assignment]
        decorator: Callable[[Callable[[], R]], Task[[], R]] = self.task(
            schedule=schedule, tz=tz, catch_up=catch_up, **options
        )
        return decorator

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``; :class:`UnknownTaskError` if none."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTaskError(f"unknown task {name!r} (registered: {known})") from None

    # -- producing ----------------------------------------------------------

    def _envelopes(self, jobs: Sequence[Job]) -> list[Envelope]:
        return [
            Envelope(
                id=job.id,
                queue=job.queue,
                body=encode_job(job, self.max_payload_bytes),
                priority=job.priority,
                eta_at=job.eta_at,
            )
            for job in jobs
        ]

    def enqueue_jobs(
        self, jobs: Sequence[Job], claims: Sequence[KeyClaim | None] | None = None
    ) -> list[JobHandle[Any]]:
        """Store built jobs in the broker, all in one call; durable when this returns.

        ``claims`` (one per job, or ``None``) are keys to claim first (see
        :mod:`sleipnir.keys`): a job whose key a live claim already holds is not
        stored, and its handle is the holder's. A key held for a different call
        raises :class:`KeyReusedError` and nothing is stored.

        With OpenTelemetry configured, the call is a ``send`` span whose context
        travels in the jobs' headers (:mod:`sleipnir.tracing`).
        """
        if jobs and tracing.active():
            with tracing.send_span(jobs[0].task, jobs[0].queue, len(jobs)) as carrier:
                return self._enqueue_jobs(tracing.inject(jobs, carrier), claims)
        return self._enqueue_jobs(jobs, claims)

    def _enqueue_jobs(
        self, jobs: Sequence[Job], claims: Sequence[KeyClaim | None] | None
    ) -> list[JobHandle[Any]]:
        hooked = self.hooks.listens("before_enqueue") or self.hooks.listens("after_enqueue")
        if hooked:
            self.hooks.emit("before_enqueue", jobs)
        envelopes = self._envelopes(jobs)  # encode (and size-check) all before storing any
        if not claims or not any(claims):
            self.broker.enqueue(envelopes)
            if hooked:
                self.hooks.emit("after_enqueue", jobs)
            return [JobHandle(self, job.id) for job in jobs]
        if len(claims) != len(jobs):
            raise ValueError("give one claim (or None) per job")
        handles: list[JobHandle[Any]] = []
        store: list[Envelope] = []
        stored: list[Job] = []
        mine: list[str] = []
        try:
            for job, envelope, want in zip(jobs, envelopes, claims, strict=True):
                held = None if want is None else claim_for_job(self.results, want, job.id)
                if held is None:
                    if want is not None:
                        mine.append(want.key)
                    store.append(envelope)
                    stored.append(job)
                    handles.append(JobHandle(self, job.id))
                    continue
                assert want is not None
                held_id, held_fingerprint = held
                if held_fingerprint != want.fingerprint:
                    raise KeyReusedError(want.key, held_id)
                if self._never_stored(held_id):
                    # An earlier call claimed the key and failed before its job was
                    # stored: this call stores that job, under the id the claim names.
                    job = msgspec.structs.replace(job, id=held_id)
                    store.extend(self._envelopes([job]))
                    stored.append(job)
                handles.append(JobHandle(self, held_id))
            if store:
                self.broker.enqueue(store)
        except BrokerConnectionError:
            if not self.broker.finds_queued_jobs:
                self._release_keys(mine)
            # Else the claims stay: the jobs may have been stored, the answer lost. A
            # retry under the same keys finds them, or finds them missing and stores
            # them (_never_stored): a request that failed is never applied later.
            raise
        except BaseException:
            # Nothing of this call was stored: free the keys it claimed for a retry.
            self._release_keys(mine)
            raise
        if hooked and stored:
            self.hooks.emit("after_enqueue", stored)
        return handles

    def _release_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(SleipnirError):
                self.results.release_key(key)

    def _never_stored(self, job_id: str) -> bool:
        """Whether the job a claim names was certainly never stored: the broker does not
        hold it and no outcome of it is kept (a finished job's outcome is stored before
        its ack). Only brokers that find queued jobs by id can tell."""
        return (
            self.broker.finds_queued_jobs
            and self.broker.job_info(job_id) is None
            and self.results.get(job_id) is None
        )

    async def enqueue_jobs_async(self, jobs: Sequence[Job]) -> list[JobHandle[Any]]:
        """Async form of :meth:`enqueue_jobs`."""
        self.hooks.emit("before_enqueue", jobs)
        if jobs and tracing.active():
            with tracing.send_span(jobs[0].task, jobs[0].queue, len(jobs)) as carrier:
                jobs = tracing.inject(jobs, carrier)
                await self.broker.enqueue_async(self._envelopes(jobs))
        else:
            await self.broker.enqueue_async(self._envelopes(jobs))
        self.hooks.emit("after_enqueue", jobs)
        return [JobHandle(self, job.id) for job in jobs]

    def retry_dead(self, job_ids: Sequence[str] | None = None) -> list[str]:
        """Put dead letters back on their queues (all when ``job_ids`` is None).

        Their stored failure is forgotten, so their status reads "queued" again.
        Returns the ids that were moved.

        The failure is forgotten *before* the move: once a job is back on its queue
        a worker elsewhere may run it at once, and its new outcome must not be
        deleted after the fact. If the move fails, the job stays a dead letter and
        still reads "failed" from the broker; only the stored error text is gone.
        """
        if job_ids is not None:
            chosen = [
                job_id
                for job_id in dict.fromkeys(job_ids)
                if (info := self.broker.job_info(job_id)) is not None
                and info.state is BrokerJobState.DEAD
            ]
            self.results.delete(chosen)
            return self.broker.retry_dead(chosen) if chosen else []
        moved: list[str] = []
        while batch := [d.id for d in self.broker.dead_letters(limit=1000)]:
            self.results.delete(batch)
            done = self.broker.retry_dead(batch)
            if not done:  # another process moved or deleted them meanwhile
                break
            moved += done
        return moved

    def job(self, job_id: str) -> JobHandle[Any]:
        """A handle on a job by id (for example one a client sent back to ask about it)."""
        return JobHandle(self, job_id)

    def status(self, job_id: str) -> JobState:
        """Where a job stands: the result store's outcome if it finished, else the broker's view."""
        record = self.results.get(job_id)
        if record is not None and record.state.finished:
            return record.state
        if self.results.get_keys([cancel_key(job_id)])[0] is not None:
            return JobState.CANCELLED  # asked for; the worker settles it shortly
        info = self.broker.job_info(job_id)
        if info is None:
            # It may have finished between the two reads: the outcome is stored before the ack.
            record = self.results.get(job_id)
            return record.state if record is not None else JobState.UNKNOWN
        if info.state is BrokerJobState.RESERVED:
            return JobState.RUNNING
        if info.state is BrokerJobState.DEAD:
            return JobState.FAILED
        if info.last_error is not None:
            return JobState.RETRYING
        return JobState.QUEUED if info.state is BrokerJobState.READY else JobState.SCHEDULED

    def close(self) -> None:
        """Close the broker and result store connections."""
        if self._broker is not None:
            self._broker.close()
        if self._results is not None:
            self._results.close()


def _absolute(url: str) -> str:
    """Pin a relative ``sqlite:`` path to the working directory of the moment.

    Workers may run with another working directory than the producer; a URL
    resolved once, when the App is built, names the same file for both.
    """
    if not url.startswith("sqlite:"):
        return url
    from .brokers.sqlite import parse_sqlite_url

    path, _, _ = parse_sqlite_url(url)
    if path.is_absolute():
        return url
    rest = url.split("?", 1)
    query = f"?{rest[1]}" if len(rest) > 1 else ""
    return f"sqlite://{Path.cwd() / path}{query}"
