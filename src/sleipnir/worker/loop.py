"""The worker's control loop: reserve, start, renew, collect, settle, stop.

One control thread (the caller of :meth:`Worker.run`) talks to the broker: it
reserves jobs in batches (bounded prefetch), starts them on the runners
(:mod:`.runners`), renews the leases of everything it holds (:mod:`.leases`),
and settles finished jobs in batches (:mod:`.settle`). What a run's end means is
the policy's (:mod:`.policy`); everything else (cancellation, limits, workflows,
unique keys, metrics, heartbeats, tracing, the scheduler) is a hook
(:mod:`.features`, :mod:`sleipnir.hooks`), so this loop names none of it.
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..app import App
from ..brokers.base import redact_url
from ..errors import ConfigurationError, SleipnirError
from ..hooks import HookList
from ..isolated import find_spec
from ..loopwatch import LoopWatch
from ..monitor import RUNNING_SHOWN, Heartbeat, RunningJob, TaskMetrics, new_worker_id
from ..outage import Outage
from . import leases, policy
from .apart import Apart, set_apart
from .features import builtin_hooks
from .held import JobRun, Outcome, WorkerStats
from .runners import Runners, start_waiting, time_to_start
from .settle import settle
from .stopping import drain, install_signal_handlers

__all__ = ["IDLE_WAIT", "RETRY_PAUSE", "Worker"]

log = logging.getLogger("sleipnir.worker")

IDLE_WAIT = 1.0
"""Longest single wait of an idle worker for new jobs (a blocking pop or a notification
wakes it at once; this bounds how late it sees a stop asked for meanwhile)."""

RETRY_PAUSE = 0.25
"""Seconds between two tries of a broker call that failed (the outage is logged once)."""


class Worker:
    """Runs the jobs of ``queues`` from ``app``'s broker.

    What it guarantees:

    * a job is acked only after its outcome is stored (at least once);
    * a bad job (undecodable, unknown task, arguments that do not fit) goes to the
      dead letters with the reason, and the worker carries on;
    * every job that ran gets an outcome, even when building it fails; error text is
      capped (:mod:`sleipnir.bounded`);
    * a job is charged only for what it did: a delivery that ended with its lease
      running out uses no try; such a job runs apart until it finishes
      (:mod:`.apart`);
    * a failure is retried with exponential backoff and jitter until the task's
      retries are used up, then the job fails and goes to the dead letters;
    * on stop, no new job is fetched, reserved jobs that did not start are given
      back at once, running jobs get up to ``stop_timeout`` seconds to finish.
    """

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
        self.outage = Outage("the broker", log)
        """Failed broker calls of the control loop (and settles), logged once per outage."""
        self.store_outage = Outage("the result store", log)
        """Failed result-store calls of the control loop, logged once per outage."""
        run_scheduler = (not burst) if scheduler is None else scheduler
        first, last = builtin_hooks(
            self, heartbeat=heartbeat, scheduler=run_scheduler and bool(app.schedules)
        )
        self.hooks = HookList([*first, *app.hooks, *last])
        """The built-in features and the app's hooks, in the order they run."""
        self._broker = app.broker
        self._waiting: deque[JobRun] = deque()
        self._quiet_until = 0.0
        """No reserve before this (monotonic) while jobs run: the last one came back short."""
        self._alone: JobRun | None = None
        """A job that runs alone (see :func:`.apart.set_apart`): nothing else starts or is held."""
        self._running: dict[str, JobRun] = {}
        self._unsettled: list[Outcome] = []
        self._unsettled_since = 0.0
        self._settle_after = 0.0
        # Explicit queues are served in the order given (the first one first);
        # without them each reserve starts at the next queue, so none starves.
        self._rotate = not queues
        self._stopping = threading.Event()
        self._signals = [0]
        self.lease_clock: Callable[[], float] = getattr(app.clock, "monotonic", time.monotonic)
        """Monotonic seconds for lease deadlines (:attr:`JobRun.deadline`) and the loop watch:
        the app's clock's where it has them (a test's fake clock), else ``time.monotonic``."""
        self.runners = Runners(
            concurrency=concurrency,
            clock=app.clock,
            rng=self.rng,
            hooks=self.hooks,
            loopwatch=LoopWatch(monotonic=self.lease_clock),
            app_spec=lambda: self.app_spec,
        )
        self.apart = Apart(app.results, app.clock, isolates=bool(app_spec))
        self.next_renew = 0.0
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
                    id=h.id,
                    task=h.task,
                    queue=h.queue,
                    attempt=h.attempt,
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

    @property
    def running_jobs(self) -> list[JobRun]:
        """The jobs running now."""
        return list(self._running.values())

    @property
    def waiting_jobs(self) -> list[JobRun]:
        """The jobs reserved and not started yet."""
        return list(self._waiting)

    def withdraw(self, jobs: Sequence[JobRun]) -> None:
        """Take jobs that had not started out of the waiting line; they end cancelled."""
        gone = {id(h) for h in jobs}
        self._waiting = deque(h for h in self._waiting if id(h) not in gone)
        now = self.app.clock.time()
        for h in jobs:
            self._finish(policy.cancelled(h, now))

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
        self.apart.isolates = bool(self.app_spec)
        restore = install_signal_handlers(self._signals, self._stopping, self.stop_timeout)
        self.runners.open(with_loop=any(t.is_async for t in self.app.tasks.values()))
        _warn_soft_limits(self.app)
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
        self.hooks.emit("after_worker_start", self)
        try:
            self._main_loop()
            self.hooks.emit("before_worker_stop", self)
            drain(self)
        finally:
            self.hooks.emit("after_worker_stop", self)
            self.runners.close()
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
        self.next_renew = time.monotonic() + renew_every
        while not self._stopping.is_set():
            self._collect(block=False)
            self._start_waiting()
            self.hooks.emit("on_tick", self)
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
            if time.monotonic() >= self.next_renew:
                leases.renew(self)
                self.next_renew = time.monotonic() + renew_every
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
                    self.outage.failed("waiting for jobs failed", exc)
                    self._stopping.wait(RETRY_PAUSE)
            elif self._running:
                timeout = self.settle_interval if self._unsettled else self._broker.poll_interval
                self._collect(block=True, timeout=timeout)
            else:
                # Nothing runs, yet jobs are held (waiting for a renewal to land) or outcomes
                # wait to be settled after a failed try: pause until the next try is due.
                now = time.monotonic()
                due = min(self.next_renew, self._settle_after if self._unsettled else now + 1.0)
                self._stopping.wait(min(RETRY_PAUSE, max(0.0, due - now)))

    # -- jobs in and out ----------------------------------------------------------------

    def _reserve(self, room: int) -> int:
        """Reserve up to ``room`` jobs and hold them; how many the broker handed out."""
        queues = self.queues
        if self._rotate and len(queues) > 1:
            self.queues = queues = [*queues[1:], queues[0]]
        sent = self.lease_clock()
        try:
            reservations = self.app.broker.reserve(queues, room, self.lease)
        except SleipnirError as exc:
            self.outage.failed("reserve failed", exc)
            self._stopping.wait(RETRY_PAUSE)
            return 0
        self.outage.ok()
        deadline = sent + self.lease
        if reservations and not time_to_start(self, deadline):
            # The answer took so long that these leases could end before a renewal lands
            # (a link that dropped packets for a while): another worker may take them
            # soon, so none of them starts here. Given back while the broker answers.
            log.warning(
                "a reserve answered %.1fs after it was sent (lease %.1fs): %d jobs given back "
                "unstarted",
                self.lease_clock() - sent,
                self.lease,
                len(reservations),
            )
            leases.give_back(self, reservations)
            return len(reservations)  # not an empty queue: the caller reserves again
        reservations = leases.adopt(self, reservations, deadline)
        self._taken += len(reservations)
        bad: list[Outcome] = []
        admitted: list[JobRun] = []
        now = self.app.clock.time()
        for res in reservations:
            held = policy.admit(res, deadline, self.app.get_task, now)
            if isinstance(held, Outcome):
                bad.append(held)
            else:
                admitted.append(held)
        crashed = self.apart.count(admitted)
        if crashed:
            bad.extend(crashed)
            gone = {id(o.held) for o in crashed}
            admitted = [h for h in admitted if id(h) not in gone]
        self.hooks.emit("after_reserve", self, admitted)
        for held in admitted:
            if held.cancelled:
                bad.append(policy.cancelled(held, self.app.clock.time()))
            else:
                self._waiting.append(held)
        if any(h.apart for h in admitted) and not self.app_spec:
            set_apart(self)
        if bad:
            self._unsettled.extend(bad)
            self._settle()  # refused jobs settle now: their leases would otherwise run out
        return len(reservations)

    def _settle(self) -> None:
        outcomes, self._unsettled = self._unsettled, []
        try:
            settle(self, outcomes)
        except SleipnirError as exc:
            # Keep them and try again on a later turn of the loop, which meanwhile
            # goes on renewing leases. Retrying loses nothing: a repeated put
            # replaces the same records, and an ack whose lease ran out is refused.
            self.outage.failed(f"settling {len(outcomes)} jobs failed", exc)
            self._unsettled[:0] = outcomes
            self._settle_after = time.monotonic() + RETRY_PAUSE

    def _start_waiting(self) -> None:
        start_waiting(self)

    def _collect(self, *, block: bool, timeout: float = 0.0) -> int:
        got = 0
        done = self.runners.done
        try:
            if block:
                self._finish(done.get(timeout=timeout))
                got += 1
            while True:
                self._finish(done.get_nowait())
                got += 1
        except queue_module.Empty:
            pass
        return got

    def _finish(self, outcome: Outcome) -> None:
        self._running.pop(outcome.held.id, None)
        if outcome.held is self._alone:
            self._alone = None
        if not self._unsettled:
            self._unsettled_since = time.monotonic()
        self._unsettled.append(outcome)


def _warn_soft_limits(app: App) -> None:
    soft = [
        t.name
        for t in app.tasks.values()
        if t.options.timeout and not t.is_async and not t.options.isolate and not t.takes_context
    ]
    told = [
        t.name
        for t in app.tasks.values()
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
