"""Waiting on a condition, for every kind of test: poll it, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str] = "condition not met",
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises ``AssertionError`` with ``message`` (a string, or a callable giving
    one, for diagnostics gathered at the moment of failure) after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s: {text}")
        time.sleep(interval)
