"""One supervised process as data: its state, its configuration, and what the state machine
knows of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class ProcessState(StrEnum):
    """Where a supervised process stands (supervisord's names)."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """How a supervised process is started, retried and stopped (seconds)."""

    startsecs: float = 1.0
    """A process that exits sooner after its start (without saying it is ready) failed to start."""
    startretries: int = 3
    """Failed starts in a row tolerated; one more and the process is FATAL."""
    backoff: float = 1.0
    """Delay before the first retry of a failed start; doubled for each further one."""
    max_backoff: float = 60.0
    stop_timeout: float = 30.0
    """What the worker itself gives its running jobs after a stop (its ``--stop-timeout``)."""
    kill_grace: float = 10.0
    """Beyond ``stop_timeout``, for the worker to store outcomes and give back the rest;
    a process still there then is killed with its process group."""

    def __post_init__(self) -> None:
        for name in ("startsecs", "backoff", "max_backoff", "stop_timeout", "kill_grace"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be finite and >= 0 seconds, not {value!r}")
        if self.startretries < 0:
            raise ValueError("startretries must be >= 0")


@dataclass(frozen=True, slots=True)
class Process:
    """One supervised process: its state and the counts ``status`` shows."""

    name: str
    state: ProcessState = ProcessState.STOPPED
    pid: int | None = None
    since: float = 0.0
    """When it entered this state (the caller's clock)."""
    started_at: float | None = None
    """When the current pid was spawned."""
    failures: int = 0
    """Failed starts in a row."""
    spawns: int = 0
    retry_at: float | None = None
    """In BACKOFF: when to spawn again."""
    kill_at: float | None = None
    """In STOPPING: when to kill it if it is still there."""
    last_exit: int | None = None
    """The last exit status (negative: killed by that signal)."""
    ready: bool = False
    """The current pid said it is ready."""
    message: str = ""

    @property
    def restarts(self) -> int:
        """Spawns after the first."""
        return max(0, self.spawns - 1)

    @property
    def alive(self) -> bool:
        """A pid of this process may be running."""
        return self.pid is not None
