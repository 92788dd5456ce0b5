"""Backends under the contract suites, and the fixtures that open them.

To put a new backend under the suites, add one :class:`Backend` to
``BACKENDS``; the tests never name a backend. A backend that cannot do
something every test assumes declares it by leaving a capability out of its
``capabilities``; tests marked ``@pytest.mark.requires("<capability>")`` are
then skipped for it, with the reason from ``CAPABILITIES``.

Each test gets a fresh ``tmp_path``; a factory for a server backend should
likewise give each test its own namespace (database, schema, key prefix or
vhost) where the server allows it, because some operations are global
(``retry_dead(None)``, ``delete_dead(None)``, ``purge_expired()``) and the
tests count what they return. Queue names carry a random per-test prefix on
top of that.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from sleipnir.brokers.base import Broker
from sleipnir.brokers.memory import MemoryBroker, MemoryResultStore
from sleipnir.results import ResultStore
from sleipnir.testing import FakeClock

from ..conftest import require_server

CAPABILITIES = {
    "fake_clock": "honours the injected clock for leases, etas, retries and expiry",
    "shared_between_instances": "two broker objects on one location share their jobs",
    "job_lookup": "job_info finds a job wherever it waits: ready, scheduled or reserved",
}
"""Capability name -> what a backend that has it does. The one place for this mapping."""


def _advance_past_leases(broker: Broker, clock: FakeClock, lease: float) -> None:
    clock.advance(lease + 1)


@dataclass(frozen=True)
class Backend:
    """How to open one backend's broker and result store on a test's location."""

    name: str
    make_broker: Callable[[FakeClock, Path], Broker]
    make_results: Callable[[FakeClock, Path], ResultStore] | None
    """``None`` for a broker that keeps no results (its deployments pair it with another store)."""
    capabilities: frozenset[str] = frozenset()
    cleanup: Callable[[Path], None] | None = None
    """Removes what the test created on a shared server (its namespace only)."""
    run_out_leases: Callable[[Broker, FakeClock, float], None] = _advance_past_leases
    """Makes every lease of ``lease`` seconds that this broker object holds run out, as
    when the worker holding them dies: by default the fake clock moves past them."""

    def __post_init__(self) -> None:
        unknown = self.capabilities - CAPABILITIES.keys()
        assert not unknown, f"{self.name}: unknown capabilities {sorted(unknown)}"


def _import_backend(module: str) -> Any:
    """Import a backend module lazily; skip while it is not written yet."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    return importlib.import_module(module)


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


def _sqlite_broker(clock: FakeClock, tmp_path: Path) -> Broker:
    sqlite = _import_backend("sleipnir.brokers.sqlite")
    broker: Broker = sqlite.SQLiteBroker(_sqlite_url(tmp_path), clock=clock)
    return broker


def _sqlite_results(clock: FakeClock, tmp_path: Path) -> ResultStore:
    sqlite = _import_backend("sleipnir.brokers.sqlite")
    store: ResultStore = sqlite.SQLiteResultStore(_sqlite_url(tmp_path), clock=clock)
    return store


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _redis_prefix(tmp_path: Path) -> str:
    # One namespace per test, shared by every broker the test opens on it.
    return f"sleipnir-test-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"


def _redis_url(tmp_path: Path) -> str:
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={_redis_prefix(tmp_path)}"


def _redis_broker(clock: FakeClock, tmp_path: Path) -> Broker:
    from sleipnir.brokers.redis import RedisBroker

    return RedisBroker(_redis_url(tmp_path), clock=clock)


def _redis_results(clock: FakeClock, tmp_path: Path) -> ResultStore:
    from sleipnir.brokers.redis import RedisResultStore

    return RedisResultStore(_redis_url(tmp_path), clock=clock)


def _redis_cleanup(tmp_path: Path) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(match=f"{_redis_prefix(tmp_path)}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


PG_HOST, PG_PORT = "127.0.0.1", 5432


def _pg_schema(tmp_path: Path) -> str:
    # One schema per test, shared by every broker the test opens on it.
    return f"sleipnir_test_{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"


def _pg_url(tmp_path: Path) -> str:
    require_server("PostgreSQL", PG_HOST, PG_PORT)
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres?schema={_pg_schema(tmp_path)}"


def _pg_broker(clock: FakeClock, tmp_path: Path) -> Broker:
    postgres = _import_backend("sleipnir.brokers.postgres")
    broker: Broker = postgres.PostgresBroker(_pg_url(tmp_path), clock=clock)
    return broker


def _pg_results(clock: FakeClock, tmp_path: Path) -> ResultStore:
    postgres = _import_backend("sleipnir.brokers.postgres")
    store: ResultStore = postgres.PostgresResultStore(_pg_url(tmp_path), clock=clock)
    return store


def _pg_cleanup(tmp_path: Path) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres") as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {_pg_schema(tmp_path)} CASCADE")


AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


def _amqp_url(tmp_path: Path, queue_type: str = "classic") -> str:
    require_server("RabbitMQ", AMQP_HOST, AMQP_PORT)
    # One queue prefix per test, shared by every broker the test opens on it.
    prefix = f"sleipnir-test-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F?prefix={prefix}&queue_type={queue_type}"


def _amqp_broker(clock: FakeClock, tmp_path: Path) -> Broker:
    amqp = _import_backend("sleipnir.brokers.amqp")
    broker: Broker = amqp.AMQPBroker(_amqp_url(tmp_path), clock=clock)
    return broker


def _amqp_quorum_broker(clock: FakeClock, tmp_path: Path) -> Broker:
    amqp = _import_backend("sleipnir.brokers.amqp")
    broker: Broker = amqp.AMQPBroker(_amqp_url(tmp_path, "quorum"), clock=clock)
    return broker


def _amqp_cut_connection(broker: Broker, clock: FakeClock, lease: float) -> None:
    """RabbitMQ's lease is the consumer's connection: closing it under the broker object
    hands every delivery it held back to the queue, flagged redelivered, as a worker's
    death does. The broker's next call opens a new connection."""
    from sleipnir.brokers.amqp import AMQPBroker

    assert isinstance(broker, AMQPBroker)
    with broker._con.lock:
        broker._con.drop()


def _amqp_cleanup(tmp_path: Path) -> None:
    """Delete the queues this test declared (those in its prefix's registry), no others."""
    from sleipnir.brokers.amqp import AMQPBroker

    broker = AMQPBroker(_amqp_url(tmp_path))
    try:
        broker.delete_queues()
    finally:
        broker.close()


BACKENDS = [
    Backend(
        name="memory",
        make_broker=lambda clock, tmp_path: MemoryBroker(clock=clock),
        make_results=lambda clock, tmp_path: MemoryResultStore(clock=clock),
        capabilities=frozenset({"fake_clock", "job_lookup"}),
    ),
    Backend(
        name="sqlite",
        make_broker=_sqlite_broker,
        make_results=_sqlite_results,
        capabilities=frozenset({"fake_clock", "shared_between_instances", "job_lookup"}),
    ),
    Backend(
        name="redis",
        make_broker=_redis_broker,
        make_results=_redis_results,
        capabilities=frozenset({"fake_clock", "shared_between_instances", "job_lookup"}),
        cleanup=_redis_cleanup,
    ),
    Backend(
        name="postgres",
        make_broker=_pg_broker,
        make_results=_pg_results,
        capabilities=frozenset({"fake_clock", "shared_between_instances", "job_lookup"}),
        cleanup=_pg_cleanup,
    ),
    # RabbitMQ tracks deliveries itself (a lease lasts as long as the worker's channel,
    # whatever the clock says) and waits out delays in real time in TTL queues, so it
    # lacks "fake_clock"; AMQP cannot look a message up by id, so it lacks "job_lookup".
    # It keeps no results: an App on RabbitMQ stores them in SQLite or Redis.
    Backend(
        name="amqp",
        make_broker=_amqp_broker,
        make_results=None,
        capabilities=frozenset({"shared_between_instances"}),
        cleanup=_amqp_cleanup,
        run_out_leases=_amqp_cut_connection,
    ),
    Backend(
        name="amqp-quorum",
        make_broker=_amqp_quorum_broker,
        make_results=None,
        capabilities=frozenset({"shared_between_instances"}),
        cleanup=_amqp_cleanup,
        run_out_leases=_amqp_cut_connection,
    ),
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*capabilities): skip for backends without these capabilities "
        f"(known: {', '.join(CAPABILITIES)})",
    )


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend under test; skips the test if it lacks a required capability."""
    spec: Backend = request.param
    for marker in request.node.iter_markers("requires"):
        for capability in marker.args:
            if capability not in CAPABILITIES:
                pytest.fail(f"unknown capability {capability!r} in @requires")
            if capability not in spec.capabilities:
                reason = CAPABILITIES[capability]
                pytest.skip(f"backend {spec.name!r} lacks {capability!r} ({reason})")
    yield spec
    if spec.cleanup is not None:
        spec.cleanup(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    # Start a little before the real time, so that timestamps stay plausible for a
    # backend that reads its own clock, at a fraction that binary floats and
    # millisecond columns both hold exactly.
    return FakeClock(start_at=math.floor(time.time()) - 0.5)


@pytest.fixture
def open_broker(
    backend: Backend, clock: FakeClock, tmp_path: Path
) -> Iterator[Callable[[], Broker]]:
    """Open brokers on this test's location (all share it); closed after the test."""
    opened: list[Broker] = []

    def open_broker() -> Broker:
        broker = backend.make_broker(clock, tmp_path)
        opened.append(broker)
        return broker

    yield open_broker
    for broker in reversed(opened):
        broker.close()


@pytest.fixture
def broker(open_broker: Callable[[], Broker]) -> Broker:
    return open_broker()


@pytest.fixture
def run_out_leases(backend: Backend, clock: FakeClock) -> Callable[[Broker, float], None]:
    """``run_out_leases(broker, lease)``: the leases ``broker`` holds run out (see Backend)."""
    return lambda broker, lease: backend.run_out_leases(broker, clock, lease)


@pytest.fixture
def results(backend: Backend, clock: FakeClock, tmp_path: Path) -> Iterator[ResultStore]:
    if backend.make_results is None:
        pytest.skip(f"backend {backend.name!r} keeps no results")
    store = backend.make_results(clock, tmp_path)
    yield store
    store.close()


@pytest.fixture
def new_queue() -> Callable[[], str]:
    """Make queue names unique to this test: ``q<random>_1``, ``q<random>_2``, ..."""
    prefix = f"q{uuid4().hex[:8]}"
    counter = itertools.count(1)
    return lambda: f"{prefix}_{next(counter)}"


@pytest.fixture
def queue(new_queue: Callable[[], str]) -> str:
    return new_queue()
