"""Time, injected.

Leases, backoff and delays read a :class:`Clock`. Production code uses
:class:`SystemClock`; tests use :class:`sleipnir.testing.FakeClock` and move it
forward instead of sleeping. Timestamps are epoch seconds (floats), because
leases are compared across processes and hosts.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """A source of the current time in epoch seconds."""

    def time(self) -> float:
        """Return the current time, epoch seconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def time(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """Return ``time.monotonic()``: what lease deadlines are timed with."""
        return time.monotonic()
