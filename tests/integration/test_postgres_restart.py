"""PostgreSQL restarts under a live broker: stale pooled connections are replaced, safely.

Each test runs its own PostgreSQL cluster on a free loopback port (``postgres_server``)
and restarts it with a fast shutdown, which ends every session with "terminating
connection due to administrator command" while the broker's pool still holds them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import pytest

from sleipnir import App, BrokerConnectionError
from sleipnir.brokers.base import Envelope
from sleipnir.brokers.postgres import PostgresBroker, PostgresResultStore
from sleipnir.clock import SystemClock
from sleipnir.results import JobState, ResultRecord

from .conftest import PostgresServer

pytestmark = pytest.mark.integration


def _ids(broker: PostgresBroker, queue: str) -> list[str]:
    return sorted(r.id for r in broker.reserve([queue], 100, 30.0))


def test_a_delay_after_a_server_restart_succeeds_and_both_jobs_are_queued(
    postgres_server: PostgresServer,
) -> None:
    app = App(broker=postgres_server.url(), results="memory://")

    @app.task(queue="restart")
    def noop(n: int) -> int:
        return n

    try:
        first = noop.delay(1)
        postgres_server.restart()
        second = noop.delay(2)  # on the pool's connection the restart ended: retried
        broker = app.broker
        assert isinstance(broker, PostgresBroker)
        assert _ids(broker, "restart") == sorted([first.id, second.id])
    finally:
        app.close()


def test_reserve_and_ack_after_a_restart_work_on_the_first_try(
    postgres_server: PostgresServer,
) -> None:
    broker = PostgresBroker(postgres_server.url(), clock=SystemClock())
    try:
        broker.enqueue([Envelope("a", "q", b"{}"), Envelope("b", "q", b"{}")])
        postgres_server.restart()
        [held] = broker.reserve(["q"], 1, 30.0)
        postgres_server.restart()
        assert broker.ack([held]) == [True]
        [rest] = broker.reserve(["q"], 10, 30.0)
        assert {held.id, rest.id} == {"a", "b"}
    finally:
        broker.close()


def test_an_idle_waiter_whose_listening_connection_was_lost_returns_instead_of_raising(
    postgres_server: PostgresServer,
) -> None:
    broker = PostgresBroker(postgres_server.url(), clock=SystemClock())
    try:
        broker.wait(["q"], 0.05)  # now listening
        postgres_server.restart()
        broker.wait(["q"], 10.0)  # the lost NOTIFY connection counts as a wake-up
        broker.enqueue([Envelope("a", "q", b"{}")])
        assert _ids(broker, "q") == ["a"]
    finally:
        broker.close()


def test_results_survive_a_restart_of_the_server_under_the_store(
    postgres_server: PostgresServer,
) -> None:
    store = PostgresResultStore(postgres_server.url(), clock=SystemClock())
    record = ResultRecord("j1", JobState.SUCCEEDED, "t", "q", 1, 1.0, 4e9, b"42")
    try:
        store.put([record])
        postgres_server.restart()
        got = store.get("j1")
        assert got is not None and got.value == b"42"
        postgres_server.restart()
        store.put([ResultRecord("j2", JobState.FAILED, "t", "q", 1, 1.0, 4e9, None, "boom")])
        got = store.get("j2")
        assert got is not None and got.error == "boom"
    finally:
        store.close()


def test_after_a_restart_the_pool_drops_every_stale_connection_at_the_first_loss(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = PostgresBroker(postgres_server.url() + "&pool_size=4", clock=SystemClock())
    try:
        # Four threads at once fill the pool with four connections.
        barrier = threading.Barrier(4)

        def hold(n: int) -> None:
            def work(conn: psycopg.Connection[Any]) -> None:
                barrier.wait(10)

            broker._db.run(work)

        threads = [threading.Thread(target=hold, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        postgres_server.restart()
        with caplog.at_level(logging.INFO, logger="sleipnir.brokers.postgres"):
            for n in range(4):
                broker.enqueue([Envelope(f"j{n}", "q", b"{}")])
        lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in lost]
        assert _ids(broker, "q") == ["j0", "j1", "j2", "j3"]
    finally:
        broker.close()


def _terminate(server: PostgresServer, pid: int) -> None:
    """End one session (only ours: its backend pid), as a server restart would."""
    with psycopg.connect(server.url().split("?")[0], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


def test_a_connection_lost_before_the_commit_is_retried_and_applied_once(
    postgres_server: PostgresServer,
) -> None:
    broker = PostgresBroker(postgres_server.url(), clock=SystemClock())
    tries = []
    try:
        broker.stats()  # the schema exists

        def work(conn: psycopg.Connection[Any]) -> None:
            tries.append(conn.info.backend_pid)
            conn.execute(f"INSERT INTO {broker._s}.queues (name) VALUES ('x')")
            if len(tries) == 1:
                _terminate(postgres_server, conn.info.backend_pid)
                conn.execute("SELECT 1")  # fails: the session is gone, nothing committed

        broker._db.run(work)
        assert len(tries) == 2 and tries[0] != tries[1]
        assert [q.queue for q in broker.stats()] == ["x"]
    finally:
        broker.close()


def test_a_connection_lost_while_committing_is_not_retried_and_says_the_outcome_is_unknown(
    postgres_server: PostgresServer,
) -> None:
    broker = PostgresBroker(postgres_server.url(), clock=SystemClock())
    tries = []
    try:
        broker.stats()

        def work(conn: psycopg.Connection[Any]) -> None:
            tries.append(conn.info.backend_pid)
            conn.execute(f"INSERT INTO {broker._s}.queues (name) VALUES ('x')")
            # Gone before COMMIT is sent: from here the client cannot tell a lost COMMIT
            # from one that was applied with its answer lost, so it must not run again.
            _terminate(postgres_server, conn.info.backend_pid)

        with pytest.raises(BrokerConnectionError, match="may or may not have been applied"):
            broker._db.run(work)
        assert len(tries) == 1
        # A read, by contrast, is retried even then: running it again changes nothing.
        reads = []

        def read(conn: psycopg.Connection[Any]) -> int:
            reads.append(1)
            n = conn.execute("SELECT 1").fetchone()
            if len(reads) == 1:
                _terminate(postgres_server, conn.info.backend_pid)
            return 1 if n else 0

        assert broker._db.run(read, reads=True) == 1
        assert len(reads) == 2
    finally:
        broker.close()
