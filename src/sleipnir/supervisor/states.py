"""The life of one supervised process, as a pure function.

``transition(process, event, now, config)`` returns the process's next state and
the actions the supervisor must carry out (spawn, ask to stop, kill, log). It
does no I/O and reads no clock: the caller passes ``now``, so tests drive it with
a fake clock and every rule below is checked without a real process.

The states are supervisord's::

    STOPPED ──Start──▶ STARTING ──ready, or up for startsecs──▶ RUNNING
                          │                                      │
                          │ exits before it said it is ready:     │ exits after it said
                          │ a failed start (also from RUNNING)    │ it is ready
                          ▼                                      ▼
                       BACKOFF ──after the delay──▶ STARTING    EXITED ──▶ STARTING (at once)
                          │
                          └─ more than startretries failed starts in a row ──▶ FATAL

    STARTING / RUNNING ──Stop──▶ STOPPING ──exits──▶ STOPPED
                                    └─ still there after stop_timeout + kill_grace: killed

A failed start is retried after ``backoff * 2**(n-1)`` seconds (at most
``max_backoff``) for the n-th failure in a row, so a process that cannot start
costs a handful of spawns, not a hot loop. The count starts again once the
process says it is ready. A process that said it is ready and then exited is
restarted at once (its exit is not a failed start: a worker recycles itself this way, and a job
that kills its worker is retried by the broker, not by the supervisor).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from .events import (
    Action,
    Event,
    Exited,
    Kill,
    Log,
    Ready,
    SendKill,
    SendStop,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    Stop,
    Tick,
)
from .process import Process, ProcessConfig, ProcessState

__all__ = [
    "Action",
    "Event",
    "Exited",
    "Kill",
    "Log",
    "Process",
    "ProcessConfig",
    "ProcessState",
    "Ready",
    "SendKill",
    "SendStop",
    "Spawn",
    "SpawnFailed",
    "Spawned",
    "Start",
    "Stop",
    "Tick",
    "backoff_after",
    "next_deadline",
    "transition",
]


# -- events -------------------------------------------------------------------------


# -- actions ------------------------------------------------------------------------


def backoff_after(failures: int, config: ProcessConfig) -> float:
    """Seconds in BACKOFF after the ``failures``-th failed start in a row (1-based)."""
    return min(config.max_backoff, config.backoff * 2.0 ** max(0, failures - 1))


def next_deadline(process: Process, config: ProcessConfig) -> float | None:
    """When a :class:`Tick` may next change ``process``; ``None`` when only an event will."""
    s = process.state
    if s is ProcessState.STARTING and process.started_at is not None:
        return process.started_at + config.startsecs
    if s is ProcessState.BACKOFF:
        return process.retry_at
    if s is ProcessState.STOPPING:
        return process.kill_at
    return None


def transition(
    process: Process, event: Event, now: float, config: ProcessConfig
) -> tuple[Process, list[Action]]:
    """The next state of ``process`` after ``event`` at ``now``, and what to do about it."""
    p, S = process, ProcessState
    name = p.name

    def to(state: ProcessState, **changes: object) -> Process:
        return replace(p, state=state, since=now, **changes)  # type: ignore[arg-type]

    match event:
        case Start():
            if p.state in (S.STOPPED, S.EXITED, S.BACKOFF, S.FATAL):
                return to(S.STARTING, failures=0, retry_at=None, message=""), [Spawn()]
            return p, []

        case Spawned(pid=pid):
            if p.state not in (S.STARTING, S.EXITED):
                return p, []
            return to(S.STARTING, pid=pid, started_at=now, spawns=p.spawns + 1, ready=False), [
                Log(logging.INFO, f"{name}: started, pid {pid}")
            ]

        case SpawnFailed(reason=reason):
            if p.state not in (S.STARTING, S.EXITED):
                return p, []
            return _failed_start(replace(p, spawns=p.spawns + 1), now, config, reason)

        case Ready():
            if p.state is S.STARTING and p.pid is not None:
                return _running(replace(p, ready=True), now, "ready")
            if p.state is S.RUNNING and not p.ready:
                return replace(p, ready=True, failures=0), []
            return p, []

        case Exited(code=code):
            if p.state is S.STARTING:
                return _failed_start(
                    replace(p, pid=None, last_exit=code), now, config, _exit_text(code)
                )
            if p.state is S.RUNNING and not p.ready:
                # Up for startsecs, yet it never got as far as saying it is ready: a
                # slow failed start (an import that fails late), not a crash at work.
                return _failed_start(
                    replace(p, pid=None, last_exit=code), now, config, _exit_text(code)
                )
            if p.state is S.RUNNING:
                up = now - (p.started_at if p.started_at is not None else now)
                text = _exit_text(code)
                level = logging.INFO if code == 0 else logging.WARNING
                # EXITED lasts until the Spawn is carried out: a process that ran is
                # started again at once (see the module docstring).
                return to(S.EXITED, pid=None, last_exit=code, message=text), [
                    Log(level, f"{name}: pid {p.pid} {text} after {up:.1f}s; restarting"),
                    Spawn(),
                ]
            if p.state is S.STOPPING:
                return to(S.STOPPED, pid=None, last_exit=code, kill_at=None), [
                    Log(logging.INFO, f"{name}: pid {p.pid} stopped ({_exit_text(code)})")
                ]
            return p, []

        case Tick():
            if (
                p.state is S.STARTING
                and p.pid is not None
                and p.started_at is not None
                and now >= p.started_at + config.startsecs
            ):
                return _running(p, now, f"up for {config.startsecs:g}s")
            if p.state is S.BACKOFF and p.retry_at is not None and now >= p.retry_at:
                return to(S.STARTING, retry_at=None), [Spawn()]
            if p.state is S.STOPPING and p.kill_at is not None and now >= p.kill_at:
                assert p.pid is not None
                return replace(p, kill_at=None), [
                    Log(
                        logging.WARNING,
                        f"{name}: pid {p.pid} still running"
                        f" {config.stop_timeout + config.kill_grace:g}s after the stop;"
                        " killing its process group",
                    ),
                    SendKill(p.pid),
                ]
            return p, []

        case Stop():
            if p.state in (S.STARTING, S.RUNNING) and p.pid is not None:
                kill_at = now + config.stop_timeout + config.kill_grace
                return to(S.STOPPING, kill_at=kill_at), [SendStop(p.pid)]
            if p.state in (S.STARTING, S.BACKOFF, S.EXITED, S.FATAL, S.STOPPED):
                return to(S.STOPPED, retry_at=None), []
            return p, []

        case Kill():
            if p.pid is not None and p.state in (S.STARTING, S.RUNNING, S.STOPPING):
                return to(S.STOPPING, kill_at=None), [SendKill(p.pid)]
            if p.state is not S.STOPPING:
                return to(S.STOPPED, retry_at=None), []
            return p, []

    raise TypeError(f"not an event: {event!r}")  # pragma: no cover - exhaustive above


def _running(p: Process, now: float, why: str) -> tuple[Process, list[Action]]:
    # The failed starts are forgotten once it said it is ready, not merely lasted.
    failures = 0 if p.ready else p.failures
    nxt = replace(p, state=ProcessState.RUNNING, since=now, failures=failures, message="")
    return nxt, [Log(logging.INFO, f"{p.name}: RUNNING, pid {p.pid} ({why})")]


def _failed_start(
    p: Process, now: float, config: ProcessConfig, why: str
) -> tuple[Process, list[Action]]:
    failures = p.failures + 1
    if failures > config.startretries:
        message = (
            f"FATAL: failed to start {failures} times in a row (last: {why}); "
            "not restarted until the supervisor is reloaded (SIGHUP) or restarted"
        )
        return (
            replace(
                p,
                state=ProcessState.FATAL,
                since=now,
                pid=None,
                failures=failures,
                retry_at=None,
                message=message,
            ),
            [Log(logging.ERROR, f"{p.name}: {message}")],
        )
    delay = backoff_after(failures, config)
    message = f"failed start {failures} of {config.startretries + 1} ({why}); retry in {delay:g}s"
    return (
        replace(
            p,
            state=ProcessState.BACKOFF,
            since=now,
            pid=None,
            failures=failures,
            retry_at=now + delay,
            message=message,
        ),
        [Log(logging.WARNING, f"{p.name}: {message}")],
    )


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            import signal

            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
