"""What the memory backend says about itself: that it keeps nothing.

Jobs live in one process's memory, unseen by any other process and gone when it
exits. Right for tests; a deployment on it fails ``sleipnir doctor``, and a worker
on it says so at start.
"""

from __future__ import annotations

from collections.abc import Callable

from ..checks import Check, Deployment, Status
from .base import Broker

__all__ = ["diagnose"]


def diagnose(open_broker: Callable[[], Broker], url: str, about: Deployment) -> list[Check]:
    """One failed check: nothing here survives the process."""
    return [
        Check(
            "broker",
            Status.FAIL,
            "memory:// keeps jobs in one process's memory: other processes never see them "
            "and they are lost when it exits",
            "SLEIPNIR_BROKER=sqlite:///var/lib/<app>/jobs.db (one host) or redis://... "
            "(several hosts)",
            "the memory broker keeps nothing: every job is lost when this process ends",
        )
    ]
