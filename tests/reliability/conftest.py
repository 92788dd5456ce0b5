"""The reliability suite runs each case on SQLite and on Redis (a random key prefix).

Without a Redis server on 127.0.0.1:6379 the Redis half is skipped loudly, or fails
under ``CI=true`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..integration.conftest import shared_redis_url
from .harness import Bench, new_bench


@pytest.fixture(params=["sqlite", "redis"])
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    kind: str = request.param
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite://{tmp_path / 'jobs.db'}"
        else:
            url = stack.enter_context(shared_redis_url())
        box = new_bench(tmp_path / "bench", url, kind)
        try:
            yield box
        finally:
            box.close()  # its processes are dead before the Redis keys go


@pytest.fixture
def sqlite_bench(tmp_path: Path) -> Iterator[Bench]:
    box = new_bench(tmp_path / "bench", f"sqlite://{tmp_path / 'jobs.db'}", "sqlite")
    try:
        yield box
    finally:
        box.close()
