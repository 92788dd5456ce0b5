"""Helpers for testing code that uses Sleipnir: a clock that tests move by hand."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it.

    Thread-safe, so a worker's threads may read it while the test advances it.
    """

    def __init__(self, start_at: float = 1_700_000_000.0) -> None:
        self._now = start_at
        self._lock = threading.Lock()

    def time(self) -> float:
        """Return the fake current time."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """The same fake time, for what a worker times with a monotonic clock (lease deadlines)."""
        return self.time()

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now
