"""How a worker stops.

SIGTERM or SIGINT (or :meth:`Worker.stop`) ends the loop: no new job is fetched,
reserved jobs that did not start are given back at once, running jobs get up to
``stop_timeout`` seconds to finish and are settled; those still running then are
given back. A second signal quits at once: the leases bring the running jobs back.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from ..brokers.base import Nack
from ..errors import SleipnirError
from . import leases

if TYPE_CHECKING:
    from .loop import Worker

__all__ = ["drain", "install_signal_handlers"]

log = logging.getLogger("sleipnir.worker")


def install_signal_handlers(
    count: list[int], stopping: threading.Event, stop_timeout: float
) -> Callable[[], None]:
    """Handle the stop signals (main thread only); ``count[0]`` counts them. Returns a
    function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum: int, frame: FrameType | None) -> None:
        count[0] += 1
        if count[0] == 1:
            log.warning(
                "%s: stopping; running jobs get %.1fs to finish (signal again to quit now)",
                signal.Signals(signum).name,
                stop_timeout,
            )
            stopping.set()
        else:
            log.warning("second signal: quitting now; leases bring the running jobs back")
            os._exit(1)

    for s in previous:
        signal.signal(s, handle)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def drain(worker: Worker) -> None:
    """After a stop: give back what did not start, let running jobs finish, settle."""
    waiting = [h.reservation for h in worker._waiting]
    worker._waiting.clear()
    if worker._alone is not None and worker._alone.started_at is None:
        worker._alone = None
    if waiting:
        try:
            worker._broker.release(waiting)
            log.info("gave back %d reserved jobs that had not started", len(waiting))
        except SleipnirError as exc:
            # Nothing is lost: their leases run out and another worker takes them.
            log.warning("could not give back %d jobs (%s); their leases will", len(waiting), exc)
    deadline = time.monotonic() + worker.stop_timeout
    worker.next_renew = time.monotonic() + worker.lease / 3
    while worker._running and worker._signals[0] < 2:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        worker._collect(block=True, timeout=min(left, 0.1))
        if time.monotonic() >= worker.next_renew:
            leases.renew(worker)
            worker.hooks.emit("on_tick", worker)
            worker.next_renew = time.monotonic() + worker.lease / 3
    worker._collect(block=False)
    for _ in range(10):
        if not worker._unsettled or worker._signals[0] >= 2:
            break
        worker._settle()
        if worker._unsettled:
            time.sleep(0.5)
    if worker._running:
        now = worker.app.clock.time()
        reason = f"worker {os.getpid()} stopped before the job finished"
        try:
            worker._broker.nack(
                [Nack(h.reservation, now, reason) for h in worker._running.values()]
            )
        except SleipnirError as exc:
            log.warning("could not give back running jobs (%s); their leases will", exc)
        log.warning(
            "%d jobs still running after the %.1fs stop timeout were given back: %s",
            len(worker._running),
            worker.stop_timeout,
            ", ".join(worker._running),
        )
        worker._running.clear()
