"""What happens to a supervised process (events) and what the supervisor must do about it
(actions).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Start:
    """Run it (again): from STOPPED, EXITED, BACKOFF or FATAL (failures forgotten)."""


@dataclass(frozen=True, slots=True)
class Spawned:
    """The process was started with this pid."""

    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """The process could not even be started (the executable is missing, no memory)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The process said it is up (the app imported, the worker about to fetch jobs)."""


@dataclass(frozen=True, slots=True)
class Exited:
    """The process exited with this status (negative: the signal that killed it)."""

    code: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: deadlines (startsecs, backoff, stop) are checked."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop gracefully: the process finishes its running jobs, then exits."""


@dataclass(frozen=True, slots=True)
class Kill:
    """Stop at once: kill the process and its group."""


Event = Start | Spawned | SpawnFailed | Ready | Exited | Tick | Stop | Kill


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a new process; answer with :class:`Spawned` or :class:`SpawnFailed`."""


@dataclass(frozen=True, slots=True)
class SendStop:
    """Ask the process to stop gracefully."""

    pid: int


@dataclass(frozen=True, slots=True)
class SendKill:
    """Kill the process and its process group (SIGKILL)."""

    pid: int


@dataclass(frozen=True, slots=True)
class Log:
    """Something to say, at a ``logging`` level."""

    level: int
    message: str


Action = Spawn | SendStop | SendKill | Log
