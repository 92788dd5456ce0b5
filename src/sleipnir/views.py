"""Periodic and running jobs as ``sleipnir queues``, the HTTP API and the dashboard show them.

Plain data read from the stores, one call per kind: the claims of the periodic
jobs' last ticks (:meth:`ResultStore.get_keys`), and the running jobs the
workers name in their heartbeats with the progress they reported
(:func:`~sleipnir.context.read_progress`). Imports no web framework.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .context import Progress, read_progress
from .errors import SleipnirError
from .results import Capability
from .schedule import Scheduler
from .storekeys import tick_key

if TYPE_CHECKING:
    from .app import App
    from .monitor import Heartbeat, RunningJob

__all__ = [
    "RunningView",
    "ScheduleView",
    "format_progress",
    "format_span",
    "running_views",
    "schedule_views",
    "tick_key",
]

TickState = Literal["fired", "pending", "missed", "expired", "unknown"]


def format_span(seconds: float | None) -> str:
    """A duration for people: ``45s``, ``4m 10s``, ``3h 05m``, ``2d 4h`` (``-`` if unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def format_progress(progress: tuple[float, float | None] | None) -> str:
    """``40/100 (40%)``, ``40`` without a total, ``-`` when the job reported none."""
    if progress is None:
        return "-"
    done, total = progress
    if total is None:
        return f"{done:g}"
    if total > 0:
        return f"{done:g}/{total:g} ({min(100.0, max(0.0, 100.0 * done / total)):.0f}%)"
    return f"{done:g}/{total:g}"


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """A periodic task: its schedule, its next tick, and what became of its last one."""

    task: str
    queue: str
    schedule: str
    """``every 30s`` or ``cron '0 6 * * *' (Europe/Oslo)``."""
    catch_up: float
    next_run_at: float
    next_run_in: float
    last_tick_at: float
    last_tick: TickState
    """``fired``; ``pending`` (due, within its catch-up window, not fired yet); ``missed``
    (its catch-up window passed unfired); ``expired`` (too old: its claim is no longer
    kept); ``unknown`` (the result store keeps no claimed keys, or did not answer)."""
    fired_by: str | None
    """The scheduler that fired it, ``host:pid``."""

    @property
    def fired_text(self) -> str:
        """The last tick's fate in a few words."""
        if self.last_tick == "fired":
            return f"fired by {self.fired_by}" if self.fired_by else "fired"
        return {"pending": "not yet", "missed": "missed"}.get(self.last_tick, "?")

    @property
    def note(self) -> str:
        """Why the last tick stands as it does, in a sentence."""
        return _TICK_NOTES[self.last_tick]

    def as_dict(self) -> dict[str, Any]:
        """The view as JSON-ready data."""
        return {
            "task": self.task,
            "queue": self.queue,
            "schedule": self.schedule,
            "catch_up": self.catch_up,
            "next_run_at": self.next_run_at,
            "next_run_in": self.next_run_in,
            "last_tick_at": self.last_tick_at,
            "last_tick": self.last_tick,
            "fired_by": self.fired_by,
        }


_TICK_NOTES: dict[TickState, str] = {
    "fired": "a scheduler claimed this tick and enqueued its job",
    "pending": "due and within its catch-up window: the next scheduler to look fires it",
    "missed": "no scheduler fired it within its catch-up window",
    "expired": "too old to tell: a tick's claim is kept for its catch-up window and 5 minutes",
    "unknown": "this result store keeps no claimed keys, or did not answer",
}


def schedule_views(app: App, now: float | None = None) -> list[ScheduleView]:
    """Every periodic task of ``app``, by name; the last ticks' claims read in one call."""
    now = app.clock.time() if now is None else now
    entries = [app.schedules[name] for name in sorted(app.schedules)]
    if not entries:
        return []
    ticks = [e.schedule.previous(now) for e in entries]
    claims: list[bytes | None] | None
    try:
        claims = (
            app.results.get_keys([tick_key(e.name, t) for e, t in zip(entries, ticks, strict=True)])
            if app.results.keeps(Capability.KEYS)
            else None
        )
    except SleipnirError:
        claims = None
    out = []
    for i, (entry, tick) in enumerate(zip(entries, ticks, strict=True)):
        claim = claims[i] if claims is not None else None
        window = max(entry.catch_up, Scheduler.GRACE)
        state: TickState
        if claims is None:
            state = "unknown"
        elif claim is not None:
            state = "fired"
        elif now - tick <= window:
            state = "pending"
        elif now - tick <= window + Scheduler.CLAIM_MARGIN:
            state = "missed"
        else:
            state = "expired"
        upcoming = entry.schedule.next(now)
        out.append(
            ScheduleView(
                task=entry.name,
                queue=entry.task.options.queue,
                schedule=str(entry.schedule),
                catch_up=entry.catch_up,
                next_run_at=upcoming,
                next_run_in=max(0.0, upcoming - now),
                last_tick_at=tick,
                last_tick=state,
                fired_by=claim.decode(errors="replace") if claim is not None else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class RunningView:
    """A job a worker runs now, with the progress it reported."""

    id: str
    task: str
    queue: str
    attempt: int
    worker_id: str
    started_at: float
    running_for: float
    progress: tuple[float, float | None] | None
    progress_known: bool = True
    """False when the result store could not say (it keeps no keys, or did not answer)."""

    @property
    def progress_text(self) -> str:
        """``40/100 (40%)``, ``-`` without a report, ``?`` when the store could not say."""
        return format_progress(self.progress) if self.progress_known else "?"

    @property
    def percent(self) -> float | None:
        """Done as a share of the total, 0..100, when both are known."""
        if self.progress is None:
            return None
        done, total = self.progress
        if total is None or total <= 0:
            return None
        return min(100.0, max(0.0, 100.0 * done / total))

    def as_dict(self) -> dict[str, Any]:
        """The view as JSON-ready data."""
        p = self.progress
        done_total = None if p is None else {"done": p[0], "total": p[1]}
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "started_at": self.started_at,
            "running_for": self.running_for,
            "progress": done_total,
        }


def running_views(
    app: App,
    beats: Iterable[Heartbeat],
    now: float | None = None,
    running: Mapping[str, int] | None = None,
) -> list[RunningView]:
    """The jobs the workers' beats name as running, longest running first, with their
    progress read in one call. A job named by two beats (a lost lease) is listed once,
    as the latest beat names it.

    Beats are up to one heartbeat interval old; ``running`` is the broker's own count of
    reserved jobs per queue (:class:`~sleipnir.brokers.base.QueueStats`). Given, no queue
    shows more running jobs than the broker holds reserved: those named by the latest
    beats are kept, so a job that ended since its worker's last beat is not shown running
    under a count that says it is not.
    """
    now = app.clock.time() if now is None else now
    named: dict[str, tuple[str, RunningJob]] = {}
    for beat in sorted(beats, key=lambda b: b.at):
        for job in beat.running:
            named.pop(job.id, None)  # re-inserted last: the latest beat's order
            named[job.id] = (beat.worker_id, job)
    if running is not None:
        room = dict(running)
        for job_id, (_, job) in reversed(list(named.items())):
            if room.get(job.queue, 0) > 0:
                room[job.queue] -= 1
            else:
                del named[job_id]
    if not named:
        return []
    progress: dict[str, Progress] = {}
    known = app.results.keeps(Capability.KEYS)
    if known:
        try:
            progress = read_progress(app.results, list(named))
        except SleipnirError:
            known = False
    out = [
        RunningView(
            id=job.id,
            task=job.task,
            queue=job.queue,
            attempt=job.attempt,
            worker_id=worker_id,
            started_at=job.started_at,
            running_for=max(0.0, now - job.started_at),
            progress=progress.get(job.id),
            progress_known=known,
        )
        for worker_id, job in named.values()
    ]
    return sorted(out, key=lambda v: (v.started_at, v.id))
