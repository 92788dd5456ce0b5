"""PostgreSQL only: URLs, an unreachable server, many openers of a fresh schema, settings.

What every broker must do with real worker processes (kill -9, SIGTERM, leases) runs
on PostgreSQL through the parametrized ``sandbox``; the contract suite covers the rest.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from sleipnir import App, BrokerConnectionError, ConfigurationError
from sleipnir.brokers import broker_from_url
from sleipnir.brokers.base import Envelope
from sleipnir.clock import SystemClock

from .conftest import shared_pg_url

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    with shared_pg_url() as url:
        yield url


@pytest.mark.parametrize("schema", ["Bad-Name", "1abc", "a;drop", "x" * 64])
def test_a_schema_that_is_not_a_plain_identifier_is_refused(schema: str) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        broker_from_url(f"postgresql://postgres@127.0.0.1/postgres?schema={schema}", SystemClock())


def test_an_unreachable_server_gives_a_connection_error_without_the_password() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = App(broker=f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres?connect_timeout=1")

    @app.task
    def noop(n: int) -> int:
        return n

    start = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            noop.delay(1)
    finally:
        app.close()
    assert time.monotonic() - start < 10.0
    assert "hunter2" not in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_many_brokers_opening_a_fresh_schema_at_once_all_work(url: str) -> None:
    def open_and_enqueue(i: int) -> str:
        broker = broker_from_url(url, SystemClock())
        try:
            broker.enqueue([Envelope(f"job-{i}", "default", b"{}", 0, None)])
            return f"job-{i}"
        finally:
            broker.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(open_and_enqueue, range(8)))
    broker = broker_from_url(url, SystemClock())
    try:
        assert [s.ready for s in broker.stats()] == [8]
        assert sorted(r.id for r in broker.reserve(["default"], 100, 30.0)) == sorted(ids)
    finally:
        broker.close()


def test_threads_of_one_broker_wait_for_the_schema_its_first_thread_creates(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleipnir.brokers import postgres

    inside, release = threading.Event(), threading.Event()
    prepare = postgres._Database._prepare

    def slow_prepare(self: postgres._Database, pool: object) -> None:
        inside.set()
        assert release.wait(30.0)
        prepare(self, pool)  # type: ignore[arg-type]

    monkeypatch.setattr(postgres._Database, "_prepare", slow_prepare)
    store = postgres.PostgresResultStore(url, clock=SystemClock())
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(store.claim_key, "k", b"first", time.time() + 60)
            assert inside.wait(30.0)
            second = pool.submit(store.claim_key, "k", b"second", time.time() + 60)
            # The second thread must queue behind the schema, not query a missing table.
            done, _ = concurrent.futures.wait([second], timeout=0.2)
            assert not done, f"ran before the schema existed: {second.result()!r}"
            release.set()
            assert first.result(timeout=30.0) is None
            assert second.result(timeout=30.0) == b"first"
    finally:
        release.set()
        store.close()


def test_an_idle_waiter_is_woken_by_an_enqueue_from_another_connection(url: str) -> None:
    waiter = broker_from_url(url, SystemClock())
    producer = broker_from_url(url, SystemClock())
    try:
        waiter.wait(["default"], timeout=0.01)  # opens the LISTEN connection
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waited = pool.submit(lambda: (waiter.wait(["default"], timeout=20.0), time.monotonic()))
            # Whether the NOTIFY lands while it blocks or just before, wait() must return early.
            sent = time.monotonic()
            producer.enqueue([Envelope("wake", "default", b"{}", 0, None)])
            _, woke = waited.result(timeout=30.0)
        assert woke - sent < 5.0, "wait() ran to its timeout instead of waking on NOTIFY"
    finally:
        waiter.close()
        producer.close()


def test_the_default_server_settings_give_no_durability_warning(url: str) -> None:
    broker = broker_from_url(url, SystemClock())
    try:
        assert broker.durability_warnings() == []
    finally:
        broker.close()
