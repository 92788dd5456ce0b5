"""The worker's side of supervision: its title in ``ps``, its memory, its link upward.

A :class:`WorkerMonitor` runs on a thread next to :meth:`Worker.run`, about once a
second:

* sets the process title (``sleipnir worker: app queues=default busy=3/8 done=120``);
* recycles the worker when its resident memory passes ``max_memory_mb``: a
  graceful stop, after which the supervisor starts a fresh process;
* under a supervisor, talks over the socket the supervisor passed down
  (``--supervisor-fd``): it reports readiness and counts upward, and reads
  ``stop`` (stop gracefully) and ``quit`` (exit at once). End of file on that
  socket means the supervisor died (even by SIGKILL: the kernel closes its end),
  and the worker stops with a short grace instead of living on as an orphan;
  what it cannot finish in that grace goes back to the queue, and a job it
  could not even give back comes back when its lease runs out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import select
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = ["ORPHAN_GRACE", "WorkerMonitor", "resident_memory_mb", "set_title"]

log = logging.getLogger("sleipnir.worker")

ORPHAN_GRACE = 2.0
"""Seconds a worker whose supervisor died gives its running jobs before it gives them back."""

_ORPHAN_DEADLINE = 10.0
"""Seconds after the supervisor's death by which the worker exits, stuck or not."""


def set_title(title: str) -> bool:
    """Set the process title ``ps`` shows; ``False`` when setproctitle is not installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return False
    setproctitle(title)
    return True


def resident_memory_mb() -> float:
    """This process's resident memory now (Linux), or its peak where that is unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class WorkerMonitor:
    """Title, memory limit and supervisor link of one worker. See the module docstring."""

    def __init__(
        self,
        worker: Worker,
        spec: str,
        *,
        supervisor_fd: int | None = None,
        name: str | None = None,
        max_memory_mb: float | None = None,
        interval: float = 1.0,
    ) -> None:
        self.worker = worker
        self.spec = spec
        self.name = name
        self.max_memory_mb = max_memory_mb
        self.interval = interval
        self.recycled = False
        self._sock: socket.socket | None = None
        if supervisor_fd is not None:
            self._sock = socket.socket(fileno=supervisor_fd)
            self._sock.setblocking(True)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sleipnir-monitor", daemon=True)
        self._buffer = b""

    def start(self) -> None:
        """Say "ready" upward, set the title, and start the thread."""
        self._send({"ready": True, "pid": os.getpid(), "concurrency": self.worker.concurrency})
        self._tick()
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (the worker returned) and send the last counts."""
        self._closed.set()  # the thread ends at its next wake-up; no need to wait for it
        self._report()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            if self._sock is None:
                self._closed.wait(self.interval)
            else:
                try:
                    readable, _, _ = select.select([self._sock], [], [], self.interval)
                except (OSError, ValueError):  # closed under us by close()
                    return
                if readable and not self._read():
                    return
            if not self._closed.is_set():
                self._tick()

    def _read(self) -> bool:
        """Handle what the supervisor sent; ``False`` once it is gone."""
        sock = self._sock
        if sock is None:  # closed by close(): the worker is done
            return False
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._orphaned()
            return False
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            command = line.strip().decode(errors="replace")
            if command == "stop":
                log.info("the supervisor asks this worker to stop")
                self.worker.stop()
            elif command == "quit":
                log.warning("the supervisor asks this worker to quit now")
                os._exit(1)
            elif command:
                log.warning("unknown command from the supervisor: %r", command)
        return True

    def _orphaned(self) -> None:
        log.error(
            "the supervisor is gone; stopping (running jobs get %.0fs, then go back to the queue)",
            ORPHAN_GRACE,
        )
        self.worker.stop_timeout = min(self.worker.stop_timeout, ORPHAN_GRACE)
        self.worker.stop()
        # Whatever happens to the drain, an orphan does not outlive this.
        timer = threading.Timer(_ORPHAN_DEADLINE, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    def _tick(self) -> None:
        self._title()
        self._check_memory()
        self._report()

    def _title(self) -> None:
        w = self.worker
        state = " stopping" if w.stopping else ""
        label = f" [{self.name}]" if self.name else ""
        set_title(
            f"sleipnir worker{label}: {self.spec} queues={_queues(w.queues)}"
            f" busy={w.busy}/{w.concurrency} done={_done(w)}{state}"
        )

    def _check_memory(self) -> None:
        if self.max_memory_mb is None or self.recycled:
            return
        rss = resident_memory_mb()
        if rss > self.max_memory_mb:
            self.recycled = True
            log.warning(
                "recycling: resident memory %.0f MB is over the limit of %.0f MB",
                rss,
                self.max_memory_mb,
            )
            self.worker.stop()

    def _report(self) -> None:
        w = self.worker
        self._send({"done": _done(w), "busy": w.busy, "concurrency": w.concurrency})

    def _send(self, message: dict[str, object]) -> None:
        sock = self._sock
        if sock is None:
            return
        # Small and rare: a full socket buffer would mean a hung supervisor, and
        # then the count is not worth blocking the worker for.
        with contextlib.suppress(OSError):
            sock.send((json.dumps(message) + "\n").encode(), socket.MSG_DONTWAIT)


def _done(worker: Worker) -> int:
    s = worker.stats
    return s.succeeded + s.failed + s.retried


def _queues(queues: Sequence[str]) -> str:
    return ",".join(sorted(queues))
