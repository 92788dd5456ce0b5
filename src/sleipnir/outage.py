"""An outage logged twice: once when it begins and once when it ends, with its length.

A worker cut off from its broker retries every fraction of a second; logging each
failed call would bury the one line that matters under hundreds. :class:`Outage`
turns a run of failures into a warning at the first one and an info line at the
first success after it, with how long it lasted and how many calls failed meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Outage"]


class Outage:
    """The state of one link (``what``): up, or down since a moment, with a count of failures."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.log = logger
        self._monotonic = monotonic
        self.since: float | None = None
        """When the current outage began (monotonic seconds); ``None`` while the link is up."""
        self.failures = 0
        """Calls that failed during the current outage."""
        self.outages = 0
        """Outages seen so far."""

    @property
    def down(self) -> bool:
        """Whether the last call on this link failed."""
        return self.since is not None

    def failed(self, action: str, exc: BaseException) -> None:
        """A call failed (``action``: what failed, "reserve failed"): a warning if it begins
        an outage, a debug line otherwise."""
        self.failures += 1
        if self.since is None:
            self.since = self._monotonic()
            self.outages += 1
            self.log.warning(
                "%s unreachable: %s, retrying until it answers (%s)", self.what, action, exc
            )
        else:
            self.log.debug("%s still unreachable: %s (%s)", self.what, action, exc)

    def ok(self) -> float | None:
        """A call succeeded: ends an outage, logging its length; the length, or ``None``."""
        if self.since is None:
            return None
        lasted = self._monotonic() - self.since
        self.log.warning(
            "%s reachable again after %.1fs (%d failed call%s)",
            self.what,
            lasted,
            self.failures,
            "" if self.failures == 1 else "s",
        )
        self.since, self.failures = None, 0
        return lasted
