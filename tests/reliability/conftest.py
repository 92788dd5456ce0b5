"""The reliability suite runs each case on SQLite and on Redis (a random key prefix).

Without a Redis server on 127.0.0.1:6379 the Redis half is skipped loudly, or fails
under ``CI=true`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import require_server
from ..integration.conftest import shared_pg_url, shared_redis_url
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


@pytest.fixture(params=["sqlite", "redis", "postgres", "amqp", "amqp-quorum"])
def any_bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    """A bench on every broker: RabbitMQ (classic and quorum queues) keeps results in SQLite."""
    kind: str = request.param
    with contextlib.ExitStack() as stack:
        results = None
        if kind == "sqlite":
            url = f"sqlite://{tmp_path / 'jobs.db'}"
        elif kind == "redis":
            url = stack.enter_context(shared_redis_url())
        elif kind == "postgres":
            url = stack.enter_context(shared_pg_url())
        else:
            url = stack.enter_context(_amqp_url(quorum=kind == "amqp-quorum"))
            results = f"sqlite://{tmp_path / 'results.db'}"
        box = new_bench(tmp_path / "bench", url, kind, results)
        try:
            yield box
        finally:
            box.close()


@contextlib.contextmanager
def _amqp_url(*, quorum: bool) -> Iterator[str]:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    from sleipnir.brokers.amqp import AMQPBroker

    url = f"amqp://guest:guest@127.0.0.1:5672/%2F?prefix=sleipnir-rel-{uuid.uuid4().hex[:12]}"
    if quorum:
        url += "&queue_type=quorum"
    try:
        yield url
    finally:
        cleaner = AMQPBroker(url)
        try:
            cleaner.delete_queues()
        finally:
            cleaner.close()


@pytest.fixture
def sqlite_bench(tmp_path: Path) -> Iterator[Bench]:
    box = new_bench(tmp_path / "bench", f"sqlite://{tmp_path / 'jobs.db'}", "sqlite")
    try:
        yield box
    finally:
        box.close()
