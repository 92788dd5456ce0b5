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


def _conninfo(url: str) -> dict[str, object]:
    from psycopg.conninfo import conninfo_to_dict

    from sleipnir.brokers.postgres import _parse

    return conninfo_to_dict(_parse(url)[0])


def test_every_connection_gets_timeouts_that_bound_its_waits_on_a_silent_server() -> None:
    info = _conninfo("postgresql://app@db.internal/app?schema=jobs")
    assert {k: info.get(k) for k in ("connect_timeout", "tcp_user_timeout", "keepalives")} == {
        "connect_timeout": "5",
        "tcp_user_timeout": "5000",
        "keepalives": "1",
    }
    # Probing starts after a short silence: idle + interval * count = connect_timeout.
    idle, interval, count = (
        int(str(info[f"keepalives_{k}"])) for k in ("idle", "interval", "count")
    )
    assert idle + interval * count == 5
    # The server's end of each connection gets the same, so a session whose client
    # vanished mid-transaction ends (and frees its rows) as soon.
    assert str(info["options"]).split() == [
        "-c", "tcp_keepalives_idle=2", "-c", "tcp_keepalives_interval=1",
        "-c", "tcp_keepalives_count=3", "-c", "tcp_user_timeout=5000",
    ]  # fmt: skip
    assert "schema" not in info and "pool_size" not in info


def test_the_timeouts_follow_connect_timeout_and_what_the_url_sets_wins() -> None:
    info = _conninfo("postgresql://app@db/app?connect_timeout=30")
    assert (info["tcp_user_timeout"], info["keepalives_idle"]) == ("30000", "27")
    info = _conninfo(
        "postgresql://app@db/app?tcp_user_timeout=9000&keepalives=0"
        "&options=-c%20search_path%3Dx%20-c%20tcp_user_timeout%3D0&application_name=a+b"
    )
    assert (info["tcp_user_timeout"], info["keepalives"]) == ("9000", "0")
    # The URL's own settings come after ours, so the server takes them.
    assert str(info["options"]).endswith(" -c search_path=x -c tcp_user_timeout=0")
    assert info["application_name"] == "a+b"  # as libpq reads it: "+" is no space
    # libpq takes whole seconds (and reads anything under 2 as 2).
    assert _conninfo("postgresql://app@db/app?connect_timeout=2.5")["connect_timeout"] == "3"


@pytest.mark.parametrize("timeout", ["0", "-1", "inf", "nan", "soon"])
def test_a_connect_timeout_that_would_let_a_call_wait_for_ever_is_refused(timeout: str) -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        broker_from_url(f"postgresql://app@db/app?connect_timeout={timeout}", SystemClock())


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
