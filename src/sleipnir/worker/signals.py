"""SIGTERM and SIGINT in a worker: the first stops it gracefully, the second quits now."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["install_signal_handlers"]

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
