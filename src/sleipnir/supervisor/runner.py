"""The supervisor: keeps N worker processes alive, stops them gracefully.

``Supervisor.run`` is one loop on the main thread. Each worker is a child
process running ``python -m sleipnir worker APP ...`` (the same code as a worker
started by hand) in its own process group, so that a kill reaches the jobs'
own subprocesses too, and a Ctrl-C typed at the terminal reaches the supervisor
alone. Each child gets one end of a socket pair (``--supervisor-fd``): the
supervisor sends ``stop`` / ``quit`` down it and reads readiness and job counts
back; the child sees end of file there when the supervisor dies, however it dies.

Every change of a process's state goes through the pure
:func:`~sleipnir.supervisor.states.transition`; this module only carries out
its actions (spawn, stop, kill, log) and feeds it the events (spawned, ready,
exited, time passed, signals). The loop sleeps in ``select`` on the children's
sockets and a wake-up socket written by the signal handlers (SIGCHLD included),
so it reacts to an exit or a signal at once and otherwise wakes at the next
deadline or once a second to write the status file.

Signals: SIGTERM or SIGINT stop every worker gracefully (each finishes its running
jobs within its stop timeout; past ``stop_timeout + kill_grace`` its process
group is killed) and the supervisor exits 0; a second one (a second or more after
the first: tools like ``timeout`` deliver one stop twice) kills them all at once
(their jobs come back when their leases run out) and exits 1. SIGHUP restarts the
workers one at a time: a new one is started, and the old one is asked to stop only
once the new one is RUNNING and has said it is ready; if a new one cannot start
(FATAL), the reload stops there and the old ones keep working.
"""

from __future__ import annotations

import fcntl
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from ..app import App
from ..clock import Clock
from ..errors import ConfigurationError, SleipnirError
from .control import (
    drain_wakeups,
    handle_signals,
    install_signals,
    progress_reload,
)
from .scaling import ScalePolicy, ScaleState, scale
from .spawning import (
    _kill_group,
    _Slot,
    close_slot,
    drop_stopped,
    read,
    reap,
    send_stop,
    spawn,
)
from .states import (
    Event,
    Log,
    Process,
    ProcessConfig,
    ProcessState,
    SendKill,
    SendStop,
    Spawn,
    Start,
    Stop,
    Tick,
    next_deadline,
    transition,
)
from .status import ChildStatus, SupervisorStatus, status_path, write_status

__all__ = ["MonotonicClock", "Supervisor", "retire_first"]

log = logging.getLogger("sleipnir.supervisor")

STATUS_EVERY = 1.0
"""Seconds between two writes of the status file when nothing changed."""


class MonotonicClock:
    """Seconds that never jump back (NTP steps, DST): what the supervisor's deadlines use."""

    def time(self) -> float:
        return time.monotonic()


class Supervisor:
    """Starts and watches worker processes of one app. See the module docstring."""

    def __init__(
        self,
        spec: str,
        *,
        processes: int = 1,
        max_processes: int | None = None,
        worker_args: Sequence[str] = (),
        queues: Sequence[str] | None = None,
        config: ProcessConfig | None = None,
        run_dir: Path,
        log_dir: Path | None = None,
        app: App | None = None,
        scale_policy: ScalePolicy | None = None,
        scale_interval: float = 2.0,
        verbose: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if processes < 1:
            raise ConfigurationError("processes must be >= 1")
        max_processes = processes if max_processes is None else max_processes
        if max_processes < processes:
            raise ConfigurationError(
                f"max_processes ({max_processes}) must be >= processes ({processes})"
            )
        if max_processes > processes and app is None:
            raise ConfigurationError("scaling between processes and max_processes needs the app")
        self.spec = spec
        self.min_processes = processes
        self.max_processes = max_processes
        self.worker_args = list(worker_args)
        self.queues = list(queues) if queues else None
        self.config = config or ProcessConfig()
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.app = app
        self.scale_policy = scale_policy or ScalePolicy()
        self.scale_interval = scale_interval
        self.verbose = verbose
        self.clock: Clock = clock or MonotonicClock()
        self.slots: list[_Slot] = []
        self.status_file = status_path(run_dir, spec)
        self._names = 0
        self._target = processes
        self._state = "starting"
        self._stop_signals = 0
        self._first_stop_at = 0.0
        self._signals: deque[int] = deque()
        self._rolling: deque[_Slot] = deque()
        self._replacing: tuple[_Slot, _Slot] | None = None
        self._scale_state = ScaleState()
        self._next_scale = 0.0
        self._dirty = True
        self._written_at = -1e18
        self._started_wall = time.time()
        self._sel: selectors.DefaultSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._lock_fd: int | None = None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped. 0 after a graceful stop, 1 after a forced one."""
        self._lock()
        self._sel = selectors.DefaultSelector()
        restore = install_signals(self)
        forced = False
        try:
            log.info(
                "supervisor %d: %s, %d worker processes%s, status in %s",
                os.getpid(),
                self.spec,
                self.min_processes,
                f" (up to {self.max_processes})" if self.max_processes > self.min_processes else "",
                self.status_file,
            )
            for _ in range(self.min_processes):
                self._add_slot()
            self._state = "running"
            while True:
                forced = handle_signals(self) or forced
                reap(self)
                now = self.clock.time()
                for slot in list(self.slots):
                    self._apply(slot, Tick(), now)
                progress_reload(self)
                self._autoscale(now)
                drop_stopped(self)
                self._write_status()
                if self._state == "stopping" and not any(s.popen for s in self.slots):
                    break
                self._wait(self._timeout())
        finally:
            restore()
            for slot in self.slots:
                close_slot(self, slot)
            self._state = "stopped"
            self._dirty = True
            self._write_status(force=True)
            if self._sel is not None:
                self._sel.close()
            for end in (self._wake_r, self._wake_w):
                if end is not None:
                    end.close()
            self._unlock()
        log.info("supervisor %d stopped%s", os.getpid(), " (forced)" if forced else "")
        return 1 if forced else 0

    def _timeout(self) -> float:
        now = self.clock.time()
        deadlines = [d for s in self.slots if (d := next_deadline(s.proc, self.config)) is not None]
        timeout = STATUS_EVERY
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - now) + 0.001)
        if self.max_processes > self.min_processes:
            timeout = min(timeout, max(0.0, self._next_scale - now))
        return timeout

    def _wait(self, timeout: float) -> None:
        assert self._sel is not None
        for key, _ in self._sel.select(timeout):
            if key.data is None:
                drain_wakeups(self)
            else:
                read(self, key.data)

    # -- events into the state machine ------------------------------------------------------

    def _apply(self, slot: _Slot, event: Event, now: float | None = None) -> None:
        at = self.clock.time() if now is None else now
        before = slot.proc
        slot.proc, actions = transition(slot.proc, event, at, self.config)
        if slot.proc != before:
            self._dirty = True
        for action in actions:
            if isinstance(action, Log):
                log.log(action.level, action.message)
            elif isinstance(action, Spawn):
                self._apply(slot, spawn(self, slot))
            elif isinstance(action, SendStop):
                send_stop(self, slot, action.pid)
            elif isinstance(action, SendKill):
                _kill_group(action.pid)

    def _add_slot(self) -> _Slot:
        self._names += 1
        slot = _Slot(Process(name=f"w{self._names}"))
        self.slots.append(slot)
        self._apply(slot, Start())
        return slot

    # -- signals ------------------------------------------------------------------------

    # -- reload (SIGHUP) --------------------------------------------------------------------

    # -- scaling ------------------------------------------------------------------------------

    def _autoscale(self, now: float) -> None:
        if self.max_processes == self.min_processes or now < self._next_scale:
            return
        self._next_scale = now + self.scale_interval
        if self._state != "running":
            return
        active = [s for s in self.slots if not s.retiring]
        try:
            lag = self._lag()
        except SleipnirError as exc:
            log.warning(
                "cannot read the queues to scale, keeping %d processes: %s", len(active), exc
            )
            return
        target, self._scale_state = scale(
            len(active),
            self.min_processes,
            self.max_processes,
            lag,
            now,
            self._scale_state,
            self.scale_policy,
        )
        if target > len(active):
            log.info(
                "scaling up to %d processes: the oldest ready job waited %.1fs", target, lag or 0.0
            )
            for _ in range(target - len(active)):
                self._add_slot()
        elif target < len(active):
            log.info("scaling down to %d processes: the queues are quiet", target)
            by_name = {s.name: s for s in active}
            for proc in retire_first([s.proc for s in active])[: len(active) - target]:
                slot = by_name[proc.name]
                slot.retiring = True
                self._apply(slot, Stop())
        self._target = target

    def _lag(self) -> float | None:
        assert self.app is not None
        queues = self.queues or sorted(
            {t.options.queue for t in self.app.tasks.values()} or {self.app.default_queue}
        )
        now = self.app.clock.time()
        ages = [
            now - s.oldest_ready_at
            for s in self.app.broker.stats()
            if s.queue in queues and s.oldest_ready_at is not None
        ]
        return max(ages) if ages else None

    # -- the status file and the lock ------------------------------------------------------------

    def snapshot(self) -> SupervisorStatus:
        """What the status file says now."""
        mono, wall = self.clock.time(), time.time()

        def epoch(t: float | None) -> float | None:
            return None if t is None else wall - (mono - t)

        children = [
            ChildStatus(
                name=s.name,
                state=s.proc.state.value,
                pid=s.proc.pid,
                since_at=epoch(s.proc.since) or wall,
                started_at=epoch(s.proc.started_at) if s.proc.pid is not None else None,
                restarts=s.proc.restarts,
                failed_starts=s.proc.failures,
                jobs_done=s.done_before + s.done_now,
                busy=s.busy if s.proc.pid is not None else None,
                concurrency=s.concurrency,
                last_exit=s.proc.last_exit,
                message=("retiring; " if s.retiring else "") + s.proc.message,
            )
            for s in self.slots
        ]
        return SupervisorStatus(
            app=self.spec,
            pid=os.getpid(),
            state=self._state,
            started_at=self._started_wall,
            updated_at=wall,
            processes=len([s for s in self.slots if not s.retiring]),
            min_processes=self.min_processes,
            max_processes=self.max_processes,
            children=children,
        )

    def _write_status(self, force: bool = False) -> None:
        now = self.clock.time()
        if not force and not self._dirty and now - self._written_at < STATUS_EVERY:
            return
        try:
            write_status(self.status_file, self.snapshot())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_file, exc)
        self._dirty = False
        self._written_at = now

    def _lock(self) -> None:
        path = self.status_file.with_suffix(".lock")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use the run directory {self.run_dir} ({exc}); give --run-dir or"
                " SLEIPNIR_RUN_DIR a directory this user may write"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigurationError(
                f"another supervisor of {self.spec} runs with the run directory {self.run_dir}"
                f" (pid {holder}); stop it first, or give this one another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd  # held (and so locked) until this process ends, however it ends

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def retire_first(processes: Sequence[Process]) -> list[Process]:
    """The order in which to retire processes when scaling down, given in start order.

    What serves least goes first: one that is not RUNNING (starting, backing off,
    FATAL), then the newest, so the long-running ones (warm caches) stay.
    """
    ranked = sorted(
        enumerate(processes), key=lambda ip: (ip[1].state is ProcessState.RUNNING, -ip[0])
    )
    return [p for _, p in ranked]
