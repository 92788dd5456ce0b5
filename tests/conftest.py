"""Shared test plumbing: real servers on loopback, found or loudly missed.

A test that needs a server (Redis, RabbitMQ, PostgreSQL) asks for it with
``require_server(name, host, port)``. On a newcomer's machine without that
server the test is skipped with a line that names it; under ``CI=true`` a
missing server fails the run, so CI always tests every backend.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import cache

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@cache
def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


_missing_reported: set[str] = set()


def require_server(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (under CI=true) when ``name`` is not listening on host:port."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message}; CI must test every backend", pytrace=False)
    if name not in _missing_reported:
        _missing_reported.add(name)
        print(f"\n*** SKIPPING {name} TESTS: {message} ***", file=sys.stderr)
    pytest.skip(f"SKIPPED: {message}")
