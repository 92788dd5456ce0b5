"""The worker: one process that reserves jobs, runs them and settles them.

One control thread (the caller of :meth:`Worker.run`) talks to the broker:
it reserves jobs in batches (bounded prefetch), hands them to a thread pool
(sync tasks) or to an event loop on its own thread (``async def`` tasks),
renews the leases of everything it holds, and settles finished jobs in
batches: outcomes are written to the result store first, then the jobs are
acked or nacked. Task threads never touch the broker.

What the worker guarantees:

* a job is acked only after its outcome is stored (at least once);
* a bad job (undecodable, unknown task, arguments that do not fit) goes to
  the dead letters with the reason, and the worker carries on;
* every job that ran gets an outcome, even when building it fails (an
  exception whose ``__str__`` raises, a value that cannot be encoded); error
  text is capped (:mod:`sleipnir.bounded`);
* a job is charged only for what it did: a delivery that ended with its lease
  running out (``Reservation.lost``: its worker died or was cut off) uses no
  try, whether the job was running then or only held. Such a job runs *apart*
  until it finishes: in a process of its own when the app's module is known
  (a crash there is that job's failure, charged and retried like any other),
  else alone in this worker with nothing else held, so that it can never take
  batch-mates down with it again. A job whose runs alone end with their
  worker dead ``MAX_CRASHES`` times goes to the dead letters (counted in the
  result store, under ``apart:<id>``, only for jobs that run alone: a job in a
  process of its own cannot take its worker down, and a death of that worker
  is not counted against it);
* a failure is retried with exponential backoff and jitter until the task's
  retries are used up, then the job fails and goes to the dead letters;
* on stop, no new job is fetched, reserved jobs that did not start are given
  back at once, running jobs get up to ``stop_timeout`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue as queue_module
import random
import signal
import subprocess
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from . import tracing
from .app import App
from .bounded import cap_text
from .brokers.base import Nack, Reservation, redact_url
from .context import Context, cancel_key
from .errors import (
    Cancelled,
    ConfigurationError,
    DecodeError,
    EncodeError,
    Fail,
    Retry,
    SleipnirError,
)
from .isolated import ProcessCrashed, RemoteError, find_spec, kill, run_isolated
from .job import Job, decode_job, encode_value
from .keys import UNIQUE_HEADER
from .loopwatch import BlockedLoop, LoopWatch
from .monitor import (
    RUNNING_SHOWN,
    Heartbeat,
    HeartbeatSender,
    RunningJob,
    TaskMetrics,
    new_worker_id,
)
from .outage import Outage
from .results import JobState, ResultRecord
from .schedule import Scheduler
from .task import Task
from .workflow import follow_up, has_workflow

__all__ = ["Worker", "backoff_delay"]

log = logging.getLogger("sleipnir.worker")

CANCEL_CHECK_EVERY = 1.0
"""Seconds between two looks for cancel requests of the jobs a worker holds."""

MAX_CRASHES = 3
"""Runs apart that may end with their worker dead before the job goes to the dead letters.

A run apart is started only for a job whose lease ran out before, and nothing else
of its worker runs beside it that could be blamed (in a process of its own, a crash
is the job's own failure instead): a worker that dies during such runs this many
times in a row was, in all likelihood, killed by the job.
"""

MAX_LOST = 10
"""Deliveries of one job that may end with the lease running out, for any reason, before
it goes to the dead letters: a backstop for hosts that keep dying or losing the broker."""

APART_EXPIRES = 7 * 24 * 3600.0
"""Seconds the count of a job's unfinished runs apart is kept."""

IDLE_WAIT = 1.0
"""Longest single wait of an idle worker for new jobs (a blocking pop or a notification
wakes it at once; this bounds how late it sees a stop asked for meanwhile)."""

RETRY_PAUSE = 0.25
"""Seconds between two tries of a broker call that failed (the outage is logged once)."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based).

    Exponential (``base * 2**(attempt-1)``, at most ``cap``) with "equal
    jitter": a uniform draw from the upper half, so retries of many jobs that
    failed together spread out but none comes back sooner than half the delay.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    draw: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + draw


@dataclass(slots=True)
class _Held:
    """A reservation this worker holds, started or not."""

    reservation: Reservation
    job: Job | None
    """``None`` when the body could not be decoded."""
    task: Task[Any, Any] | None
    """``None`` when the job was refused before it could run."""
    deadline: float = float("inf")
    """When its lease ends at the latest (monotonic seconds, this worker's own clock): the
    moment the reserve or the last successful renewal was *sent*, plus the lease. The
    broker started the lease no earlier than that, so this never errs late, whatever
    the clocks of the hosts say and however long the answer took to come back."""
    started_at: float | None = None
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
    slot: str | None = None
    """The concurrency-limit slot this job holds while it runs."""
    apart: bool = False
    """Its lease ran out before (``Reservation.lost``): it runs apart from other jobs."""
    crashes: int = 0
    """Its runs apart so far that ended with their worker dead (``apart:<id>``)."""
    own_crashes: int = 0
    """Its runs in a process of its own so far that ended with that process dead."""
    crashed: bool = False
    """This run's process died (:class:`ProcessCrashed`)."""
    isolated: bool = False
    """It runs in a process of its own (``isolate=True``, or apart)."""

    @property
    def charged(self) -> int:
        """Tries this job has used: deliveries less those that ended with a lost lease."""
        return max(1, self.reservation.attempt - self.reservation.lost)


@dataclass(slots=True)
class _Outcome:
    held: _Held
    state: JobState  # SUCCEEDED, FAILED or RETRYING
    finished_at: float
    value: bytes | None = None
    error: str | None = None
    retry_at: float | None = None


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


class Worker:
    """Runs the jobs of ``queues`` from ``app``'s broker. See the module docstring."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int = 8,
        prefetch: int | None = None,
        lease: float | None = None,
        burst: bool = False,
        stop_timeout: float = 30.0,
        settle_interval: float = 0.01,
        rng: random.Random | None = None,
        heartbeat: float | None = 5.0,
        max_jobs: int | None = None,
        scheduler: bool | None = None,
        app_spec: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if max_jobs is not None and max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        self.max_jobs = max_jobs
        """Recycle: reserve no more than this many jobs, settle them, then return."""
        self._taken = 0
        self.app = app
        self.app_spec = app_spec
        """``module:attribute`` of the app, for tasks that run isolated (found if not given)."""
        self._children: set[subprocess.Popen[bytes]] = set()
        self._children_lock = threading.Lock()
        self.queues = (
            list(queues)
            if queues
            else sorted({t.options.queue for t in app.tasks.values()} or {app.default_queue})
        )
        self.concurrency = concurrency
        self.prefetch = concurrency if prefetch is None else prefetch
        self.lease = app.lease if lease is None else lease
        if self.lease <= 0:
            raise ValueError("lease must be > 0 seconds")
        self.burst = burst
        self.stop_timeout = stop_timeout
        self.settle_interval = settle_interval
        self.rng = rng or random.Random()
        self.stats = WorkerStats()
        self.id = new_worker_id()
        self.metrics = TaskMetrics()
        """Queue wait, run time and outcomes per task and queue, shipped in each heartbeat."""
        run_scheduler = (not burst) if scheduler is None else scheduler
        self._scheduler = Scheduler(app) if run_scheduler and app.schedules else None
        """Fires the app's periodic jobs (every worker runs one; each tick fires once)."""
        self._heartbeat = (
            HeartbeatSender(app.results, app.clock, self.describe, interval=heartbeat)
            if heartbeat
            else None
        )
        self._broker = app.broker
        self._results = app.results
        self._clock = app.clock
        self._waiting: deque[_Held] = deque()
        self._quiet_until = 0.0
        """No reserve before this (monotonic) while jobs run: the last one came back short."""
        self._keys_unsupported = False
        self._alone: _Held | None = None
        """A job that runs alone (see ``_set_apart``): nothing else starts or is held meanwhile."""
        self._running: dict[str, _Held] = {}
        self._done: queue_module.SimpleQueue[_Outcome] = queue_module.SimpleQueue()
        self._unsettled: list[_Outcome] = []
        self._unsettled_since = 0.0
        self._settle_after = 0.0
        # Explicit queues are served in the order given (the first one first);
        # without them each reserve starts at the next queue, so none starves.
        self._rotate = not queues
        self._stopping = threading.Event()
        self._signals = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lease_clock: Callable[[], float] = getattr(app.clock, "monotonic", time.monotonic)
        """Monotonic seconds for lease deadlines (:attr:`_Held.deadline`) and the loop watch:
        the app's clock's where it has them (a test's fake clock), else ``time.monotonic``."""
        self._loopwatch = LoopWatch(monotonic=self._lease_clock)
        """Notes ``async def`` jobs that block the loop; fails those that do so past their limit."""
        self._outage = Outage("the broker", log)
        """Failed broker calls of the control loop (and settles), logged once per outage."""
        self._store_outage = Outage("the result store", log)
        """Failed result-store calls of the control loop, logged once per outage."""
        self._next_renew = 0.0
        """When the next renewal is due (monotonic)."""

    # -- public ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop gracefully (what the first SIGTERM does)."""
        self._stopping.set()

    def describe(self) -> Heartbeat:
        """This worker's heartbeat, without its time and host figures (the sender adds them)."""
        return Heartbeat(
            worker_id=self.id,
            host=self.id.split(":", 1)[0],
            pid=os.getpid(),
            ppid=os.getppid(),
            queues=list(self.queues),
            concurrency=self.concurrency,
            busy=len(self._running),
            held=self.held,
            started_at=self.stats.started_at,
            succeeded=self.stats.succeeded,
            failed=self.stats.failed,
            retried=self.stats.retried,
            lost_leases=self.stats.lost_leases,
            broker=redact_url(self.app.broker_url),
            tasks=self.metrics.snapshot(),
            running=[
                RunningJob(
                    id=h.reservation.id,
                    task=_name(h),
                    queue=h.reservation.queue,
                    attempt=h.reservation.attempt,
                    started_at=h.started_at or 0.0,
                )
                for h in list(self._running.values())[:RUNNING_SHOWN]
            ],
        )

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return len(self._running)

    @property
    def stopping(self) -> bool:
        """A stop was asked for (signal, :meth:`stop`, or a recycle)."""
        return self._stopping.is_set()

    @property
    def held(self) -> int:
        """Jobs reserved by this worker and not yet settled."""
        return len(self._waiting) + len(self._running) + len(self._unsettled)

    def run(self) -> int:
        """Work until stopped (or, in burst mode, until the queues are empty). Returns 0."""
        if not self.app_spec:  # isolated tasks need it; jobs that run apart prefer it
            self.app_spec = find_spec(self.app)
            if self.app_spec is None and any(t.options.isolate for t in self.app.tasks.values()):
                raise ConfigurationError(
                    "tasks with isolate=True run in processes that import the app, but its "
                    "module was not found: run `sleipnir worker module:app`, or give "
                    "Worker(app, app_spec='module:app')"
                )
        restore = self._install_signal_handlers()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="sleipnir-task"
        )
        if any(t.is_async for t in self.app.tasks.values()):
            self._start_loop()
        self._warn_soft_limits()
        try:
            for warning in self._broker.durability_warnings():
                log.warning("durability: %s", warning)
        except SleipnirError as exc:
            log.warning("could not check the broker's durability settings: %s", exc)
        log.info(
            "worker %d on %s, queues %s, concurrency %d, lease %.1fs",
            os.getpid(),
            redact_url(self.app.broker_url),
            ",".join(self.queues),
            self.concurrency,
            self.lease,
        )
        if self._heartbeat is not None:
            self._heartbeat.start()
        if self._scheduler is not None:
            threading.Thread(
                target=self._scheduler.run, name="sleipnir-scheduler", daemon=True
            ).start()
            log.info(
                "periodic: %s",
                ", ".join(f"{e.name} ({e.schedule})" for e in self._scheduler.entries),
            )
        try:
            self._main_loop()
            self._drain()
        finally:
            if self._scheduler is not None:
                self._scheduler.stop()
            if self._heartbeat is not None:
                self._heartbeat.stop()
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._children_lock:
                children = list(self._children)
            for child in children:  # isolated jobs still running: their leases bring them back
                kill(child)
            self._stop_loop()
            restore()
        log.info(
            "worker %d stopped: %d succeeded, %d failed, %d retried",
            os.getpid(),
            self.stats.succeeded,
            self.stats.failed,
            self.stats.retried,
        )
        return 0

    # -- the control loop -------------------------------------------------------

    def _main_loop(self) -> None:
        renew_every = self.lease / 3
        self._next_renew = time.monotonic() + renew_every
        next_purge = time.monotonic() + 60.0
        next_cancel_check = time.monotonic() + CANCEL_CHECK_EVERY
        while not self._stopping.is_set():
            self._collect(block=False)
            self._start_waiting()
            if time.monotonic() >= next_cancel_check and (self._running or self._waiting):
                self._cancel_held()
                next_cancel_check = time.monotonic() + CANCEL_CHECK_EVERY
            if (
                self._unsettled
                and time.monotonic() >= self._settle_after
                and (
                    not self._running
                    or len(self._unsettled) >= self.concurrency + self.prefetch
                    or time.monotonic() - self._unsettled_since >= self.settle_interval
                )
            ):
                self._settle()
            if time.monotonic() >= self._next_renew:
                self._renew()
                self._next_renew = time.monotonic() + renew_every
            if time.monotonic() >= next_purge:
                try:
                    self._results.purge_expired()
                except SleipnirError as exc:
                    self._store_outage.failed("purging expired results failed", exc)
                next_purge = time.monotonic() + 300.0
            capacity = self.concurrency + self.prefetch
            room = capacity - len(self._running) - len(self._waiting)
            if self._alone is not None:
                room = 0
            if self.max_jobs is not None:
                if self._taken >= self.max_jobs and not self.held:
                    log.info("recycling after %d jobs (max_jobs)", self._taken)
                    return
                room = min(room, self.max_jobs - self._taken)
            # Reserve in batches, not one job per freed slot: when no reserved job is
            # left waiting for a slot, or when half the capacity is free. After a
            # reserve came back short the queues are empty for now, so while jobs run
            # the next one waits a poll interval instead of following every job.
            fetched = 0
            batch = not self._waiting or room >= max(1, capacity // 2)
            quiet = bool(self._running) and time.monotonic() < self._quiet_until
            if room > 0 and batch and not quiet:
                fetched = self._reserve(room)
                if fetched < room:
                    self._quiet_until = time.monotonic() + self._broker.poll_interval
            self._start_waiting()
            if fetched:
                continue
            if not self._running and not self._waiting and not self._unsettled:
                if self.burst:
                    return
                try:
                    self._broker.wait(self.queues, timeout=min(IDLE_WAIT, renew_every))
                except SleipnirError as exc:
                    self._outage.failed("waiting for jobs failed", exc)
                    self._stopping.wait(RETRY_PAUSE)
            elif self._running:
                timeout = self.settle_interval if self._unsettled else self._broker.poll_interval
                self._collect(block=True, timeout=timeout)
            else:
                # Nothing runs, yet jobs are held (waiting for a renewal to land) or outcomes
                # wait to be settled after a failed try: pause until the next try is due.
                now = time.monotonic()
                due = min(self._next_renew, self._settle_after if self._unsettled else now + 1.0)
                self._stopping.wait(min(RETRY_PAUSE, max(0.0, due - now)))

    def _drain(self) -> None:
        """After a stop: give back what did not start, let running jobs finish, settle."""
        waiting = [h.reservation for h in self._waiting]
        self._waiting.clear()
        if self._alone is not None and self._alone.started_at is None:
            self._alone = None
        if waiting:
            try:
                self._broker.release(waiting)
                log.info("gave back %d reserved jobs that had not started", len(waiting))
            except SleipnirError as exc:
                # Nothing is lost: their leases run out and another worker takes them.
                log.warning(
                    "could not give back %d jobs (%s); their leases will", len(waiting), exc
                )
        deadline = time.monotonic() + self.stop_timeout
        self._next_renew = time.monotonic() + self.lease / 3
        while self._running and self._signals < 2:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._collect(block=True, timeout=min(left, 0.1))
            if time.monotonic() >= self._next_renew:
                self._renew()
                self._cancel_held()
                self._next_renew = time.monotonic() + self.lease / 3
        self._collect(block=False)
        for _ in range(10):
            if not self._unsettled or self._signals >= 2:
                break
            self._settle()
            if self._unsettled:
                time.sleep(0.5)
        if self._running:
            now = self._clock.time()
            reason = f"worker {os.getpid()} stopped before the job finished"
            try:
                self._broker.nack(
                    [Nack(h.reservation, now, reason) for h in self._running.values()]
                )
            except SleipnirError as exc:
                log.warning("could not give back running jobs (%s); their leases will", exc)
            log.warning(
                "%d jobs still running after the %.1fs stop timeout were given back: %s",
                len(self._running),
                self.stop_timeout,
                ", ".join(self._running),
            )
            self._running.clear()

    # -- broker side ----------------------------------------------------------------

    def _reserve(self, room: int) -> int:
        queues = self.queues
        if self._rotate and len(queues) > 1:
            self.queues = queues = [*queues[1:], queues[0]]
        sent = self._lease_clock()
        try:
            reservations = self._broker.reserve(queues, room, self.lease)
        except SleipnirError as exc:
            self._outage.failed("reserve failed", exc)
            self._stopping.wait(RETRY_PAUSE)
            return 0
        self._outage.ok()
        if reservations and not self._time_to_start(sent + self.lease):
            # The answer took so long that these leases could end before a renewal lands
            # (a link that dropped packets for a while): another worker may take them
            # soon, so none of them starts here. Given back while the broker answers.
            log.warning(
                "a reserve answered %.1fs after it was sent (lease %.1fs): %d jobs given back "
                "unstarted",
                self._lease_clock() - sent,
                self.lease,
                len(reservations),
            )
            self._give_back(reservations)
            return len(reservations)  # not an empty queue: the caller reserves again
        reservations = self._adopt(reservations, sent + self.lease)
        self._taken += len(reservations)
        bad: list[_Outcome] = []
        admitted: list[_Held] = []
        for res in reservations:
            held = self._admit(res, sent + self.lease)
            if isinstance(held, _Outcome):
                bad.append(held)
            else:
                admitted.append(held)
        crashed = self._count_crashes(admitted)
        if crashed:
            bad.extend(crashed)
            gone = {id(o.held) for o in crashed}
            admitted = [h for h in admitted if id(h) not in gone]
        self._check_cancelled(admitted)
        for held in admitted:
            if held.cancelled:
                bad.append(self._cancelled_outcome(held))
            else:
                self._waiting.append(held)
        if any(h.apart for h in admitted) and not self.app_spec:
            self._set_apart()
        if bad:
            self._unsettled.extend(bad)
            self._settle()  # refused jobs settle now: their leases would otherwise run out
        return len(reservations)

    def _adopt(self, reservations: list[Reservation], deadline: float) -> list[Reservation]:
        """Deliveries of jobs this worker still holds, whose lease ended while it could not
        renew it (a cut link): the job does not run twice here.

        A job still running, or finished and not yet settled, takes the new delivery as its
        lease (its outcome is settled with it); a job not yet started is held under the new
        delivery instead of the old one. The rest are returned, to be admitted.
        """
        if not (self._running or self._waiting or self._unsettled):
            return reservations
        unsettled = {o.held.reservation.id: o.held for o in self._unsettled}
        waiting = {h.reservation.id for h in self._waiting}
        fresh: list[Reservation] = []
        for res in reservations:
            held = self._running.get(res.id) or unsettled.get(res.id)
            if held is None:
                if res.id in waiting:
                    self._waiting = deque(h for h in self._waiting if h.reservation.id != res.id)
                    if self._alone is not None and self._alone.reservation.id == res.id:
                        self._alone = None
                fresh.append(res)
                continue
            log.warning(
                "job %s came back to this worker after its lease ended (attempt %d); its "
                "run here goes on under the new lease",
                res.id,
                res.attempt,
            )
            held.reservation, held.deadline = res, deadline
            held.lost = held.expired = False
        return fresh

    # -- cancellation -------------------------------------------------------------------

    def _check_cancelled(self, helds: Sequence[_Held]) -> list[_Held]:
        """Look up cancel requests for ``helds`` in one store call; mark and stop those found.

        A running ``async def`` task is cancelled; a sync one is told through its
        ``ctx``. Returns the newly cancelled.
        """
        candidates = [h for h in helds if not h.cancelled]
        if not candidates or self._keys_unsupported:
            return []
        try:
            marks = self._results.get_keys([cancel_key(h.reservation.id) for h in candidates])
        except NotImplementedError as exc:
            self._keys_unsupported = True
            log.warning("cancel requests are not seen on this result store: %s", exc)
            return []
        except SleipnirError as exc:
            self._store_outage.failed("looking up cancel requests failed", exc)
            return []
        self._store_outage.ok()
        found = [h for h, mark in zip(candidates, marks, strict=True) if mark is not None]
        for h in found:
            h.cancelled = True
            if h.ctx is not None:
                h.ctx.cancel()
            if h.task is not None and h.task.is_async and self._loop is not None:
                self._loop.call_soon_threadsafe(_cancel_async, h)
            log.info(
                "job %s (%s) cancelled%s",
                h.reservation.id,
                _name(h),
                "" if h.started_at is None else " while running",
            )
        return found

    def _cancel_held(self) -> None:
        """The periodic check: stop cancelled running jobs, drop cancelled waiting ones,
        and tell sync tasks with a ``ctx`` that they went over their time limit."""
        now = self._clock.time()
        for h in self._running.values():
            limit = h.task.options.timeout if h.task is not None else None
            if (
                limit
                and h.ctx is not None
                and not h.ctx.timed_out
                and h.started_at is not None
                and now - h.started_at > limit
                and h.task is not None
                and not h.task.is_async
            ):
                log.warning(
                    "job %s (%s) ran over its %.1fs time limit; told through its ctx",
                    h.reservation.id,
                    _name(h),
                    limit,
                )
                h.ctx.time_out()
        found = self._check_cancelled([*self._running.values(), *self._waiting])
        unstarted = [h for h in found if h.started_at is None]
        if unstarted:
            self._waiting = deque(h for h in self._waiting if not h.cancelled)
            for h in unstarted:
                self._finish(self._cancelled_outcome(h))

    def _cancelled_outcome(self, held: _Held) -> _Outcome:
        return _Outcome(held, JobState.CANCELLED, self._clock.time(), error="cancelled")

    def _admit(self, res: Reservation, deadline: float) -> _Held | _Outcome:
        """Decode and check a reservation; a job that cannot run becomes a dead outcome."""
        try:
            job = decode_job(res.body)
        except DecodeError as exc:
            return self._dead(_Held(res, None, None, deadline=deadline), str(exc))
        try:
            task = self.app.get_task(job.task)
            task.check_arguments(job.args, job.kwargs)
        except SleipnirError as exc:
            return self._dead(_Held(res, job, None, deadline=deadline), str(exc))
        held = _Held(res, job, task, apart=res.lost > 0, deadline=deadline)
        if res.lost >= MAX_LOST:
            return self._dead(
                held,
                f"Crashed: its lease ran out {res.lost} times before it finished (limit "
                f"{MAX_LOST}): the workers holding it died or lost the broker each time",
            )
        return held

    def _count_crashes(self, admitted: Sequence[_Held]) -> list[_Outcome]:
        """Read how often each job that runs apart killed its worker; dead outcomes for those
        at ``MAX_CRASHES``. One store call, made only when a batch holds such jobs."""
        apart = [h for h in admitted if h.apart]
        if not apart:
            return []
        try:
            counts = self._results.get_keys([apart_key(h.reservation.id) for h in apart])
        except (SleipnirError, NotImplementedError) as exc:
            log.warning("could not read the crash counts of %d jobs: %s", len(apart), exc)
            counts = [None] * len(apart)
        dead: list[_Outcome] = []
        for h, raw in zip(apart, counts, strict=True):
            h.crashes, h.own_crashes = _counts(raw)
            res = h.reservation
            if h.crashes >= MAX_CRASHES:
                dead.append(
                    self._dead(
                        h,
                        f"Crashed: its worker died {h.crashes} times while the job ran apart "
                        f"(alone in its worker; limit {MAX_CRASHES}), each time "
                        "before it finished: a crash in native code, the OOM killer, a kill",
                    )
                )
                continue
            log.warning(
                "job %s (%s) is back after its lease ran out %d time%s (its worker died or was "
                "cut off); it runs %s until it finishes",
                res.id,
                _name(h),
                res.lost,
                "" if res.lost == 1 else "s",
                "in a process of its own" if self.app_spec else "alone in this worker",
            )
        return dead

    def _mark_apart(self, held: _Held) -> None:
        """Count this run apart before it starts: if its worker dies, the next one knows."""
        try:
            self._results.set_key(
                apart_key(held.reservation.id),
                f"{held.crashes + 1}/{held.own_crashes}".encode(),
                self._clock.time() + APART_EXPIRES,
            )
        except (SleipnirError, NotImplementedError) as exc:
            log.warning("could not count the run apart of job %s: %s", held.reservation.id, exc)

    def _set_apart(self) -> None:
        """Run one job whose lease ran out before alone; give back every other held job.

        Used when jobs cannot run in a process of their own (the app's module is not
        known). While the chosen job waits for the running ones to end and then runs,
        this worker holds nothing else, so if it kills the worker again, no other job's
        lease runs out with it. The jobs given back never started: no try is used.
        """
        alone = self._alone
        if alone is None:
            alone = next((h for h in self._waiting if h.apart), None)
            if alone is None:
                return
            self._alone = alone
        back = [h for h in self._waiting if h is not alone]
        self._waiting = deque([alone])
        if back:
            try:
                self._broker.release([h.reservation for h in back])
            except SleipnirError as exc:  # their leases bring them back, lost +1 (rare)
                log.warning("could not give back %d jobs (%s); their leases will", len(back), exc)

    def _dead(self, held: _Held, reason: str) -> _Outcome:
        reason = cap_text(reason)
        log.error(
            "job %s (%s) goes to the dead letters: %s", held.reservation.id, _name(held), reason
        )
        return _Outcome(held, JobState.FAILED, self._clock.time(), error=reason)

    def _settle(self) -> None:
        """Store outcomes, then ack the succeeded and nack the rest, in a few round trips."""
        outcomes, self._unsettled = self._unsettled, []
        done = (JobState.SUCCEEDED, JobState.CANCELLED)
        try:
            outcomes = self._store(outcomes)
            acks = [o.held.reservation for o in outcomes if o.state in done]
            nacks = [
                Nack(o.held.reservation, o.retry_at, o.error or "")
                for o in outcomes
                if o.state not in done
            ]
            self._follow_up(outcomes)
            acked = self._broker.ack(acks) if acks else []
            nacked = self._broker.nack(nacks) if nacks else []
        except SleipnirError as exc:
            # Keep them and try again on a later turn of the loop, which meanwhile
            # goes on renewing leases. Retrying loses nothing: a repeated put
            # replaces the same records, and an ack whose lease ran out is refused.
            self._outage.failed(f"settling {len(outcomes)} jobs failed", exc)
            self._unsettled[:0] = outcomes
            self._settle_after = time.monotonic() + RETRY_PAUSE
            return
        if any(acked) or any(nacked) or not (acks or nacks):
            self._outage.ok()  # (refused acks may be answered locally: a dead connection's)
        for o in outcomes:
            started = o.held.started_at
            self.metrics.observe_outcome(
                _name(o.held),
                o.held.reservation.queue,
                o.state.value,
                None if started is None else o.finished_at - started,
            )
            self._release_slot(o.held)
            if o.state is JobState.SUCCEEDED:
                self.stats.succeeded += 1
            elif o.state is JobState.RETRYING:
                self.stats.retried += 1
            elif o.state is JobState.CANCELLED:
                self.stats.cancelled += 1
            else:
                self.stats.failed += 1
        self._forget_apart(outcomes)
        lost = [r.id for r, ok in zip(acks, acked, strict=True) if not ok]
        lost += [n.reservation.id for n, ok in zip(nacks, nacked, strict=True) if not ok]
        self._release_unique_keys(outcomes, set(lost))
        if lost:
            self.stats.lost_leases += len(lost)
            log.warning(
                "lease lost before settling, these jobs will run again: %s", ", ".join(lost)
            )

    def _record(self, o: _Outcome, expires_at: float) -> ResultRecord:
        return ResultRecord(
            job_id=o.held.reservation.id,
            state=o.state,
            task=_name(o.held),
            queue=o.held.reservation.queue,
            attempt=o.held.reservation.attempt,
            finished_at=o.finished_at,
            expires_at=expires_at,
            value=o.value,
            error=o.error,
            started_at=o.held.started_at,
        )

    def _store(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        """Write the outcomes' records in one call; the outcomes as stored.

        A run whose lease is known lost does not speak for the job: another worker may
        be running it now, and its outcome is the one to keep. A record the store
        refuses for what it holds (not for a connection: that is a
        :class:`SleipnirError`, retried by the caller) is replaced by a failure that
        says so, which the store can take: one bad outcome never blocks the others.
        """
        expires_at = self._clock.time() + self.app.result_ttl
        kept = [o for o in outcomes if not o.held.lost]
        if not kept:
            return outcomes
        try:
            self._results.put([self._record(o, expires_at) for o in kept])
            return outcomes
        except SleipnirError:
            raise
        except Exception as exc:  # a record the store cannot write: find it, replace it
            log.error("could not store %d outcomes (%r); storing them one by one", len(kept), exc)
        stored: dict[int, _Outcome] = {}
        for o in kept:
            try:
                self._results.put([self._record(o, expires_at)])
                continue
            except SleipnirError:
                raise
            except Exception as exc:
                error = f"StoreError: the job's outcome could not be stored ({_type_name(exc)})"
                log.error("job %s (%s): %s", o.held.reservation.id, _name(o.held), error)
            placeholder = _Outcome(o.held, JobState.FAILED, o.finished_at, error=error)
            self._results.put([self._record(placeholder, expires_at)])
            stored[id(o)] = placeholder
        return [stored.get(id(o), o) for o in outcomes]

    def _forget_apart(self, outcomes: Sequence[_Outcome]) -> None:
        """A run apart that ended with an outcome did not kill its worker: drop its count,
        or keep only how often the job crashed processes of its own, for the next reason."""
        for o in outcomes:
            h = o.held
            if not h.apart or h.started_at is None or h.lost:
                continue
            key = apart_key(h.reservation.id)
            try:
                if h.crashed and o.state is JobState.RETRYING:
                    expires_at = self._clock.time() + APART_EXPIRES
                    self._results.set_key(key, f"0/{h.own_crashes}".encode(), expires_at)
                else:
                    self._results.release_key(key)
            except (SleipnirError, NotImplementedError) as exc:
                log.warning("could not update the crash count of %s: %s", h.reservation.id, exc)

    def _follow_up(self, outcomes: Sequence[_Outcome]) -> None:
        """Enqueue the next steps of chains and the callbacks of groups (see workflow.py)."""
        finished = [
            (o.held.job, o.state, o.value, o.error)
            for o in outcomes
            if o.held.job is not None
            and o.state is not JobState.RETRYING
            and not o.held.lost
            and has_workflow(o.held.job)
        ]
        if finished:
            follow_up(self.app, finished)

    def _release_unique_keys(self, outcomes: Sequence[_Outcome], lost: set[str]) -> None:
        """A unique task's job that finished for good frees its key for the next call."""
        keys = [
            o.held.job.headers[UNIQUE_HEADER]
            for o in outcomes
            if o.state is not JobState.RETRYING
            and o.held.job is not None
            and UNIQUE_HEADER in o.held.job.headers
            and o.held.reservation.id not in lost
            and not o.held.lost
        ]
        for key in keys:
            try:
                self._results.release_key(key)
            except (SleipnirError, NotImplementedError) as exc:
                # The claim then ends with its unique_for window.
                log.warning("could not free unique key %s: %s", key, exc)

    def _renew(self) -> None:
        held = [*self._running.values(), *self._waiting]
        if not held:
            return
        sent = self._lease_clock()
        try:
            kept = self._broker.renew([h.reservation for h in held], self.lease)
        except SleipnirError as exc:
            self._outage.failed(f"lease renewal of {len(held)} jobs failed", exc)
            self._expire()
            return
        self._outage.ok()
        for h, ok in zip(held, kept, strict=True):
            if ok:
                h.deadline = sent + self.lease
            elif not h.lost:
                h.lost = True
                log.warning("lease of job %s was lost; another worker may run it", h.reservation.id)
        self._waiting = deque(h for h in self._waiting if not h.lost)
        if self._alone is not None and self._alone.lost and self._alone.started_at is None:
            self._alone = None
        until = self._clock.time() + self.lease
        for h in held:
            if h.slot is not None and h.task is not None and not h.lost:
                try:  # a concurrency slot lasts as long as the lease it goes with
                    self._results.acquire_slot(
                        h.slot, h.reservation.id, h.task.options.concurrency or 1, until
                    )
                except (SleipnirError, NotImplementedError) as exc:
                    log.warning(
                        "could not renew slot %s of job %s: %s", h.slot, h.reservation.id, exc
                    )

    def _time_to_start(self, deadline: float) -> bool:
        """Whether a job whose lease ends by ``deadline`` may start now: at least half a lease
        left, so it cannot end before the next renewal (a third of a lease away at most)
        has landed."""
        return deadline - self._lease_clock() >= self.lease / 2

    def _expire(self) -> None:
        """After a renewal failed: the held jobs whose lease has ended by now are lost.

        Those that had not started are dropped (the broker hands them out again when it
        sees the lease ended; nothing is charged for them); those running go on and are
        settled as usual, counted once as a lost lease.
        """
        now = self._lease_clock()
        ended = [h for h in (*self._running.values(), *self._waiting) if h.deadline <= now]
        dropped = []
        for h in ended:
            if h.started_at is None:
                h.lost = True
                dropped.append(h.reservation.id)
            elif not h.expired:
                h.expired = True
                self.stats.lost_leases += 1
                log.warning(
                    "lease of running job %s ended without a renewal; another worker may run it",
                    h.reservation.id,
                )
        if dropped:
            self.stats.lost_leases += len(dropped)
            self._waiting = deque(h for h in self._waiting if not h.lost)
            if self._alone is not None and self._alone.lost:
                self._alone = None
            log.warning(
                "the leases of %d held jobs ended without a renewal; they do not start here: %s",
                len(dropped),
                ", ".join(dropped),
            )

    def _give_back(self, reservations: Sequence[Reservation]) -> None:
        try:
            self._broker.release(reservations)
        except SleipnirError as exc:
            log.warning(
                "could not give back %d jobs (%s); their leases will", len(reservations), exc
            )

    # -- running tasks ----------------------------------------------------------------

    def _start_waiting(self) -> None:
        later: list[tuple[_Held, float]] = []
        kept: list[_Held] = []
        try:
            self._start_some(later, kept)
        finally:
            self._waiting.extendleft(reversed(kept))
        if later:
            self._wait_for_limits(later)

    def _start_some(self, later: list[tuple[_Held, float]], kept: list[_Held]) -> None:
        while self._waiting and len(self._running) < self.concurrency:
            if self._alone is not None and self._running:
                break  # it starts once the jobs running beside it have ended
            held = self._waiting.popleft()
            if not self._time_to_start(held.deadline):
                # Its lease was not renewed lately (the broker did not answer): it waits
                # for a renewal, or for _expire to drop it once the lease has ended.
                kept.append(held)
                continue
            wait_until = self._take_limits(held)
            if wait_until is not None:
                later.append((held, wait_until))
                if held is self._alone:
                    self._alone = None
                continue
            held.started_at = self._clock.time()
            if held.reservation.attempt == 1 and held.job is not None:
                ready_at = held.job.eta_at or held.job.enqueued_at
                self.metrics.observe_wait(
                    held.job.task, held.reservation.queue, held.started_at - ready_at
                )
            self._running[held.reservation.id] = held
            task, job = held.task, held.job
            assert task is not None and job is not None  # refused jobs never wait
            if task.takes_context:
                held.ctx = Context(
                    self.app,
                    job.id,
                    task.name,
                    held.reservation.queue,
                    held.reservation.attempt,
                    job.headers,
                )
            if held.apart and self.app_spec and not task.options.isolate:
                # In a process of its own the job cannot take this worker down: a death of
                # the worker meanwhile is not the job's doing and is not counted against it
                # (its own process's crashes are, as failures). Only a run alone is counted.
                held.isolated = True
            elif held.apart:
                self._mark_apart(held)
            if held.isolated:
                assert self._pool is not None  # a crash there is this job's failure alone
                self._pool.submit(self._run_guarded, self._run_isolated, held, task, job)
            elif task.is_async:
                assert self._loop is not None
                asyncio.run_coroutine_threadsafe(self._run_async(held, task, job), self._loop)
            else:
                assert self._pool is not None
                self._pool.submit(self._run_guarded, self._run_sync, held, task, job)

    def _take_limits(self, held: _Held) -> float | None:
        """Take the task's concurrency slot and rate token for ``held``.

        ``None`` when it may start now; else when to try again (epoch seconds).
        """
        task = held.task
        if task is None or (task.options.concurrency is None and task.options.rate_limit is None):
            return None
        options, job_id = task.options, held.reservation.id
        now = self._clock.time()
        try:
            if options.concurrency is not None and held.slot is None:
                name = f"concurrency:{task.name}"
                free_at = self._results.acquire_slot(
                    name, job_id, options.concurrency, now + self.lease
                )
                if free_at is not None:
                    # Slots free when jobs end, usually well before their leases do.
                    return now + min(max(free_at - now, 0.05), self.rng.uniform(0.25, 1.0))
                held.slot = name
            rate = options.rate
            if rate is not None:
                runs, period = rate
                holder = f"{job_id}:{held.reservation.attempt}:{self.rng.getrandbits(32):x}"
                free_at = self._results.acquire_slot(
                    f"rate:{task.name}", holder, runs, now + period
                )
                if free_at is not None:
                    self._release_slot(held)
                    # Spread the waiters over one emission interval so they do not
                    # all come back at the same instant.
                    return max(free_at, now) + self.rng.uniform(0.0, period / runs)
        except NotImplementedError as exc:
            if not self._keys_unsupported:
                log.warning("limits are not kept on this result store, running unlimited: %s", exc)
            self._keys_unsupported = True
            return None
        except SleipnirError as exc:
            self._store_outage.failed(f"checking the limits of {task.name} failed", exc)
            self._release_slot(held)
            return now + 1.0
        return None

    def _release_slot(self, held: _Held) -> None:
        if held.slot is None:
            return
        name, held.slot = held.slot, None
        try:
            self._results.release_slot(name, held.reservation.id)
        except (SleipnirError, NotImplementedError) as exc:
            log.warning(
                "could not free slot %s of job %s (it expires with the lease): %s",
                name,
                held.reservation.id,
                exc,
            )

    def _wait_for_limits(self, later: list[tuple[_Held, float]]) -> None:
        """Give back jobs held up by a limit, scheduled for when it may let them through.

        Their attempt is not counted: waiting under a limit uses no retry.
        """
        by_time: dict[float, list[Reservation]] = {}
        for held, when in later:
            by_time.setdefault(when, []).append(held.reservation)
        for when, reservations in by_time.items():
            try:
                self._broker.release(reservations, ready_at=when)
            except SleipnirError as exc:
                log.warning(
                    "could not give back %d jobs waiting for a limit (%s); their leases will",
                    len(reservations),
                    exc,
                )

    def _collect(self, *, block: bool, timeout: float = 0.0) -> int:
        got = 0
        try:
            if block:
                outcome = self._done.get(timeout=timeout)
                self._finish(outcome)
                got += 1
            while True:
                self._finish(self._done.get_nowait())
                got += 1
        except queue_module.Empty:
            pass
        return got

    def _finish(self, outcome: _Outcome) -> None:
        self._running.pop(outcome.held.reservation.id, None)
        if outcome.held is self._alone:
            self._alone = None
        if not self._unsettled:
            self._unsettled_since = time.monotonic()
        self._unsettled.append(outcome)

    def _run_sync(self, held: _Held, task: Task[Any, Any], job: Job) -> None:
        if task.options.isolate:
            self._run_isolated(held, task, job)
            return
        try:
            with self._span(held, job):
                value = _call(held, task, job)
        except BaseException as exc:  # every failure of task code is the job's outcome
            self._done.put(self._failure(held, task, exc))
        else:
            self._done.put(self._success(held, value))

    def _run_isolated(self, held: _Held, task: Task[Any, Any], job: Job) -> None:
        assert self.app_spec is not None  # run() found it
        started_procs: list[subprocess.Popen[bytes]] = []

        def started(proc: subprocess.Popen[bytes]) -> None:
            with self._children_lock:
                self._children.add(proc)
            started_procs.append(proc)

        try:
            with self._span(held, job):
                body = run_isolated(
                    self.app_spec,
                    task,
                    job,
                    held.reservation.attempt,
                    held.reservation.queue,
                    cancelled=lambda: held.cancelled,
                    on_start=started,
                )
        except BaseException as exc:  # every failure of task code is the job's outcome
            self._done.put(self._failure(held, task, exc))
        else:
            self._done.put(_Outcome(held, JobState.SUCCEEDED, self._clock.time(), value=body))
        finally:
            with self._children_lock:
                self._children.difference_update(started_procs)

    async def _run_async(self, held: _Held, task: Task[Any, Any], job: Job) -> None:
        timeout = task.options.timeout
        held.atask = asyncio.current_task()
        if held.cancelled:  # cancelled between its start and now
            self._done.put(self._cancelled_outcome(held))
            return
        try:
            with self._span(held, job):
                coro = self._loopwatch.watch(_call(held, task, job), job.id, task.name, timeout)
                value = await asyncio.wait_for(coro, timeout) if timeout else await coro
        except BaseException as exc:  # see _run_sync
            self._done.put(self._failure(held, task, exc))
        else:
            self._done.put(self._success(held, value))

    def _span(self, held: _Held, job: Job) -> contextlib.AbstractContextManager[None]:
        """The run's span (:mod:`sleipnir.tracing`); nothing to set up while tracing is off."""
        if not tracing.active():
            return contextlib.nullcontext()
        return tracing.process_span(
            job.task, held.reservation.queue, job.id, held.reservation.attempt, job.headers
        )

    def _run_guarded(
        self,
        runner: Callable[[_Held, Task[Any, Any], Job], None],
        held: _Held,
        task: Task[Any, Any],
        job: Job,
    ) -> None:
        """Run ``runner`` on a pool thread; whatever escapes it still gives the job an outcome.

        Without this, an exception raised while the outcome is built would end on a
        future nobody reads: the job would stay "running", its slot taken, for good.
        """
        try:
            runner(held, task, job)
        except BaseException as exc:  # nothing may leave a job without an outcome
            self._done.put(self._placeholder(held, task, exc, "while running it"))

    def _success(self, held: _Held, value: Any) -> _Outcome:
        try:
            body = encode_value(value)
        except EncodeError as exc:
            return self._dead(held, _safe_str(exc))
        except BaseException as exc:  # e.g. a __str__ that raises while encoding
            return self._dead(
                held, f"EncodeError: the return value could not be encoded ({_describe(exc)})"
            )
        return _Outcome(held, JobState.SUCCEEDED, self._clock.time(), value=body)

    def _failure(self, held: _Held, task: Task[Any, Any], exc: BaseException) -> _Outcome:
        """The outcome of a run that raised ``exc``; never raises itself."""
        try:
            return self._judge_failure(held, task, exc)
        except BaseException as broken:  # a hostile exception must not wedge its job
            return self._placeholder(held, task, exc, f"({_type_name(broken)} while describing it)")

    def _placeholder(
        self, held: _Held, task: Task[Any, Any], exc: BaseException, why: str
    ) -> _Outcome:
        """A failure whose text could not be built: stored with a placeholder, retried by policy."""
        error = f"{_type_name(exc)}: <the error could not be described {why}>"
        log.error("job %s (%s): %s", held.reservation.id, task.name, error)
        now = self._clock.time()
        charged, options = held.charged, task.options
        if charged > options.retries:
            return _Outcome(
                held,
                JobState.FAILED,
                now,
                error=f"{error}\n(attempt {charged} of {options.retries + 1}, no retries left)",
            )
        delay = backoff_delay(charged, options.backoff, options.max_backoff, self.rng)
        return _Outcome(held, JobState.RETRYING, now, error=error, retry_at=now + delay)

    def _judge_failure(self, held: _Held, task: Task[Any, Any], exc: BaseException) -> _Outcome:
        now = self._clock.time()
        attempt = held.charged
        options = task.options
        if isinstance(exc, Cancelled) or (
            held.cancelled and isinstance(exc, asyncio.CancelledError)
        ):
            return self._cancelled_outcome(held)
        if isinstance(exc, Fail):
            return self._dead(held, f"Fail: {exc.reason}")
        if (
            isinstance(exc, TimeoutError)
            and options.timeout
            and (
                task.is_async
                or task.options.isolate
                or held.isolated
                or (held.ctx is not None and held.ctx.timed_out)
            )
        ):
            error = f"TimeoutError: the job ran over its time limit of {options.timeout} s"
            if isinstance(exc, BlockedLoop):
                error = f"TimeoutError: the job {exc}"
        else:
            error = _describe(exc)
        if isinstance(exc, ProcessCrashed):
            held.crashed = True
            held.own_crashes += 1
            error += (
                f"\n(the job has crashed {held.own_crashes} process"
                f"{'' if held.own_crashes == 1 else 'es'} of its own"
                + (
                    f", after its lease ran out {held.reservation.lost} time"
                    f"{'' if held.reservation.lost == 1 else 's'} in workers that died or were "
                    "cut off"
                    if held.reservation.lost
                    else ""
                )
                + ")"
            )
        if attempt > options.retries:
            return self._dead(
                held, f"{error}\n(attempt {attempt} of {options.retries + 1}, no retries left)"
            )
        if isinstance(exc, Retry) and exc.after is not None:
            delay = exc.after
        else:
            delay = backoff_delay(attempt, options.backoff, options.max_backoff, self.rng)
        log.info(
            "job %s (%s) attempt %d failed, retry in %.2fs: %s",
            held.reservation.id,
            task.name,
            attempt,
            delay,
            _first_line(error),
        )
        return _Outcome(held, JobState.RETRYING, now, error=error, retry_at=now + delay)

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(
            target=loop.run_forever, name="sleipnir-async", daemon=True
        )
        self._loop_thread.start()
        self._loopwatch.start()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        self._loopwatch.stop()
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if not thread.is_alive():  # a loop still running cannot be closed; exit ends it
            loop.close()
        self._loop = self._loop_thread = None

    def _warn_soft_limits(self) -> None:
        soft = [
            t.name
            for t in self.app.tasks.values()
            if t.options.timeout
            and not t.is_async
            and not t.options.isolate
            and not t.takes_context
        ]
        told = [
            t.name
            for t in self.app.tasks.values()
            if t.options.timeout and not t.is_async and not t.options.isolate and t.takes_context
        ]
        if soft:
            log.warning(
                "time limits of sync tasks are not enforced (a thread cannot be stopped "
                "safely; take a ctx and call ctx.check_cancelled() to honour them): %s",
                ", ".join(sorted(soft)),
            )
        if told:
            log.info(
                "time limits of sync tasks with a ctx are told to the task, which stops "
                "at its next ctx.progress(), ctx.check_cancelled() or ctx.wait(): %s",
                ", ".join(sorted(told)),
            )

    # -- signals ----------------------------------------------------------------------

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handle(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.warning(
                    "%s: stopping; running jobs get %.1fs to finish (signal again to quit now)",
                    signal.Signals(signum).name,
                    self.stop_timeout,
                )
                self._stopping.set()
            else:
                log.warning("second signal: quitting now; leases bring the running jobs back")
                os._exit(1)

        for s in previous:
            signal.signal(s, handle)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore


def _describe(exc: BaseException) -> str:
    """The error's first line, then its traceback: what ``dead list`` and ``result()`` show.

    Capped (:func:`~sleipnir.bounded.cap_text`); an exception whose ``__str__``
    raises is named with a placeholder instead.
    """
    if isinstance(exc, RemoteError):
        return cap_text(exc.text)  # the task's own error and traceback, from its process
    head = f"{_type_name(exc)}: {_safe_str(exc)}"
    tb = "".join(traceback.format_exception(exc)).rstrip()
    return cap_text(f"{head}\n{tb}")


def _type_name(exc: BaseException) -> str:
    try:
        return str(type(exc).__name__)
    except BaseException:  # a metaclass can make even this raise
        return "<exception>"


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when its ``__str__`` raises (then its ``repr``)."""
    try:
        return str(exc)
    except BaseException as broken:  # hostile __str__
        why = f"<its __str__ raised {_type_name(broken)}>"
    try:
        return f"{why} {object.__repr__(exc)}"
    except BaseException:
        return why


def _first_line(text: str, limit: int = 500) -> str:
    """The first line of ``text``, at most ``limit`` characters: what a log line shows."""
    line = text.split("\n", 1)[0]
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line):,} characters)"


def _call(held: _Held, task: Task[Any, Any], job: Job) -> Any:
    """Call the task's function (a coroutine for ``async def``), with its ctx if it takes one."""
    if held.ctx is not None:
        return task.fn(held.ctx, *job.args, **job.kwargs)
    return task.fn(*job.args, **job.kwargs)


def _cancel_async(held: _Held) -> None:
    """On the worker's loop: cancel a running ``async def`` task (see ``_run_async``)."""
    if held.atask is not None and not held.atask.done():
        held.atask.cancel()


def apart_key(job_id: str) -> str:
    """The result-store key counting a job's runs apart that ended with their worker dead."""
    return f"apart:{job_id}"


def _counts(raw: bytes | None) -> tuple[int, int]:
    """``apart:<id>`` read: (runs apart whose worker died, processes of its own it crashed)."""
    if raw is None:
        return 0, 0
    died, _, own = raw.partition(b"/")
    try:
        return int(died), int(own or b"0")
    except ValueError:
        return 0, 0


def _name(held: _Held) -> str:
    return held.job.task if held.job is not None else "?"
