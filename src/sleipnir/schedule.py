"""Periodic jobs: a cron expression or a fixed interval, fired once per tick.

Every worker runs a :class:`Scheduler` (``sleipnir worker --no-scheduler`` turns
it off; ``sleipnir scheduler APP`` runs one alone). There is no leader to
elect: for each tick, every scheduler that sees it due tries to *claim* it in
the result store (:meth:`ResultStore.claim_key`, an atomic set-if-absent), and
only the one that wins enqueues the job. So a tick fires once however many
schedulers run, and when one dies the others go on without a hand-over.

Missed ticks. A tick is fired late, once, if it is at most ``catch_up`` seconds
old when a scheduler sees it (default: one hour, or the interval if shorter).
While no scheduler ran, only the latest missed tick counts, so a schedule
that was down for a day runs its job once on return, not once per missed
tick; a tick older than ``catch_up`` is skipped with a log line (a monthly
report deployed on the 15th does not run at once for the 1st).

What it does not promise: if a scheduler dies between claiming a tick and
enqueueing its job (a few milliseconds), that tick is lost. A claimed tick's
job is then an ordinary job: durable, retried, at least once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .clock import Clock
from .errors import ConfigurationError, SleipnirError
from .storekeys import tick_key

if TYPE_CHECKING:
    from .producer import Producer
    from .task import Task

__all__ = ["Cron", "Every", "Periodic", "Schedule", "Scheduler", "as_schedule"]

log = logging.getLogger("sleipnir.schedule")


class Schedule(ABC):
    """When a periodic job is due: a sequence of ticks (epoch seconds)."""

    @abstractmethod
    def previous(self, t: float) -> float:
        """The latest tick at or before ``t``."""

    @abstractmethod
    def next(self, t: float) -> float:
        """The first tick strictly after ``t``."""

    @property
    @abstractmethod
    def typical_interval(self) -> float:
        """Seconds between two ticks (roughly, for cron), for defaults."""


@dataclass(frozen=True)
class Every(Schedule):
    """Every ``seconds``, on multiples of it since the epoch (so all hosts agree on the ticks)."""

    seconds: float
    offset: float = 0.0
    """Shift the ticks, e.g. ``Every(3600, offset=300)`` for five past every hour (UTC)."""

    def __post_init__(self) -> None:
        if not 0 < self.seconds < math.inf:
            raise ConfigurationError(f"every= must be finite and > 0 seconds, not {self.seconds!r}")
        if not math.isfinite(self.offset):
            raise ConfigurationError("offset must be finite")

    def previous(self, t: float) -> float:
        return self.offset + math.floor((t - self.offset) / self.seconds) * self.seconds

    def next(self, t: float) -> float:
        return self.previous(t) + self.seconds

    @property
    def typical_interval(self) -> float:
        return self.seconds

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"


@dataclass(frozen=True)
class Cron(Schedule):
    """A cron expression (5 fields, or 6 with seconds last), in a time zone (default UTC).

    ``Cron("0 6 1 * *", tz="Europe/Oslo")``: 06:00 Oslo time on the 1st of each
    month, daylight saving time included. Parsed by croniter.
    """

    expr: str
    tz: str = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from croniter import croniter  # type: ignore[import-untyped]

        if not croniter.is_valid(self.expr):
            raise ConfigurationError(f"not a cron expression: {self.expr!r}")
        try:
            zone: tzinfo = UTC if self.tz == "UTC" else ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {self.tz!r}") from None
        object.__setattr__(self, "_zone", zone)

    def _iter(self, t: float) -> Any:
        from croniter import croniter

        return croniter(self.expr, datetime.fromtimestamp(t, self._zone))

    def previous(self, t: float) -> float:
        # croniter's get_prev is strictly before its start; a tick exactly at t counts too.
        before: float = self._iter(t).get_prev(float)
        after: float = self._iter(before).get_next(float)
        return after if after <= t else before

    def next(self, t: float) -> float:
        nxt: float = self._iter(t).get_next(float)
        return nxt

    @property
    def typical_interval(self) -> float:
        t = self.next(0.0)
        return self.next(t) - t

    def __str__(self) -> str:
        return f"cron {self.expr!r} ({self.tz})"


def as_schedule(value: str | float | Schedule, tz: str | None = None) -> Schedule:
    """A Schedule from what a user wrote: a cron string, seconds, or a Schedule."""
    if isinstance(value, Schedule):
        if tz is not None:
            raise ConfigurationError("give tz= to Cron(...) itself")
        return value
    if isinstance(value, str):
        return Cron(value, tz or "UTC")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"schedule must be a cron string or seconds, not {value!r}")
    if tz is not None:
        raise ConfigurationError("tz= applies to cron schedules only")
    return Every(float(value))


@dataclass(frozen=True)
class Periodic:
    """A task with its schedule."""

    task: Task[Any, Any]
    schedule: Schedule
    catch_up: float

    @property
    def name(self) -> str:
        return self.task.name


def default_catch_up(schedule: Schedule) -> float:
    return min(3600.0, schedule.typical_interval)


class Scheduler:
    """Fires the app's periodic jobs; safe to run in many processes at once."""

    #: A claimed tick stays claimed this long past its catch-up window (clock skew).
    CLAIM_MARGIN = 300.0
    #: A tick this late always runs, whatever ``catch_up`` says: schedulers wake a
    #: little after a tick, and check at least every 5 s in case the wall clock jumped.
    GRACE = 10.0

    def __init__(self, app: Producer, clock: Clock | None = None, owner: str | None = None) -> None:
        self.app = app
        self.clock = clock or app.clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._seen: dict[str, float] = {}
        self._looked: set[str] = set()
        self._stop = threading.Event()

    @property
    def entries(self) -> list[Periodic]:
        return list(self.app.schedules.values())

    def run_pending(self) -> list[str]:
        """Fire every tick that is due and not yet handled here; return the new job ids."""
        now = self.clock.time()
        fired = []
        for entry in self.entries:
            tick = entry.schedule.previous(now)
            if tick <= self._seen.get(entry.name, -math.inf):
                continue
            self._seen[entry.name] = tick
            late = now - tick
            if late > max(entry.catch_up, self.GRACE):
                # On a first look the latest tick is often old (a monthly job): not news.
                first = entry.name not in self._looked
                log.log(
                    logging.INFO if first else logging.WARNING,
                    "periodic %s: tick %s skipped, %.0fs late (catch-up window %.0fs)",
                    entry.name,
                    _when(tick),
                    late,
                    entry.catch_up,
                )
                continue
            job_id = self._fire(entry, tick)
            if job_id is not None:
                fired.append(job_id)
        self._looked.update(e.name for e in self.entries)
        return fired

    def _fire(self, entry: Periodic, tick: float) -> str | None:
        key = tick_key(entry.name, tick)
        expires = tick + max(entry.catch_up, self.GRACE) + self.CLAIM_MARGIN
        try:
            holder = self.app.results.claim_key(key, self.owner.encode(), expires)
        except SleipnirError as exc:
            log.warning("periodic %s: could not claim tick %s: %s", entry.name, _when(tick), exc)
            self._seen.pop(entry.name, None)  # try again at the next run_pending
            return None
        if holder is not None:
            return None  # another scheduler fired it
        try:
            handle = entry.task.enqueue()
        except SleipnirError as exc:
            log.error("periodic %s: tick %s not enqueued: %s", entry.name, _when(tick), exc)
            with contextlib.suppress(SleipnirError):
                self.app.results.release_key(key)  # let this or another scheduler try again
            self._seen.pop(entry.name, None)
            return None
        log.info("periodic %s: tick %s enqueued as %s", entry.name, _when(tick), handle.id)
        return handle.id

    def seconds_to_next(self) -> float:
        """Seconds until the next tick of any entry (inf when there are none)."""
        now = self.clock.time()
        return min((e.schedule.next(now) - now for e in self.entries), default=math.inf)

    def run(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        """Fire ticks until :meth:`stop`; for a thread of its own."""
        while not self._stop.is_set():
            try:
                self.run_pending()
            except Exception as exc:  # keep the schedule alive through anything
                log.exception("periodic scheduler error")
                if on_error is not None:
                    on_error(exc)
            # Wake for the next tick, but at least every 5 s: the wall clock may jump.
            self._stop.wait(max(0.01, min(self.seconds_to_next() + 0.001, 5.0)))

    def stop(self) -> None:
        self._stop.set()


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
