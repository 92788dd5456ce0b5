"""A database made by an older version keeps working: SQLite files and PostgreSQL schemas.

Each test builds the jobs table as the version before ``lost`` made it, leaves in it
one waiting job and one whose worker died holding it (its lease ran out), and then
opens it with this version: the missing column is added, both jobs are served, and the
dead worker's job counts the lease it lost.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sleipnir.brokers.base import Broker
from sleipnir.brokers.postgres import PostgresBroker
from sleipnir.brokers.sqlite import SQLiteBroker
from sleipnir.testing import FakeClock

from .conftest import shared_pg_url

pytestmark = pytest.mark.integration

START = 1_700_000_000.0
LEASE = 30.0

OLD_SQLITE_JOBS = """
CREATE TABLE sleipnir_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    last_error TEXT,
    body BLOB NOT NULL
)
"""

OLD_PG_JOBS = """
CREATE SCHEMA {s};
CREATE TABLE {s}.jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    visible_at DOUBLE PRECISION NOT NULL,
    token BIGINT NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    enqueued_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    body BYTEA NOT NULL
)
"""

# (id, queue, priority, visible_at, token, attempt, enqueued_at, body): a job that
# waits, and one whose lease ended 10 s ago while a worker of the old version held it.
OLD_ROWS = [
    ("waiting", "q", 0, START - 5, 0, 0, START - 5, b"{}"),
    ("orphan", "q", 0, START - 10, 12345, 1, START - 100, b"{}"),
]
INSERT = (
    "INSERT INTO {t} (id, queue, priority, visible_at, token, attempt, enqueued_at, body)"
    " VALUES ({p})"
)


def _check_both_jobs_are_served(broker: Broker, clock: FakeClock) -> None:
    got = {r.id: (r.attempt, r.lost) for r in broker.reserve(["q"], 10, LEASE)}
    # The orphan's expired lease is counted now, by the first reserve of this version.
    assert got == {"waiting": (1, 0), "orphan": (2, 1)}
    clock.advance(LEASE + 1)
    again = {r.id: (r.attempt, r.lost) for r in broker.reserve(["q"], 10, LEASE)}
    assert again == {"waiting": (2, 1), "orphan": (3, 2)}


def _old_sqlite_file(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_SQLITE_JOBS)
        conn.executemany(INSERT.format(t="sleipnir_jobs", p=",".join("?" * 8)), OLD_ROWS)
    conn.close()


def test_a_sqlite_file_of_the_previous_version_gets_lost_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    _old_sqlite_file(db)
    clock = FakeClock(START)
    broker = SQLiteBroker(f"sqlite://{db}", clock=clock)
    try:
        _check_both_jobs_are_served(broker, clock)
    finally:
        broker.close()
    # Opened again, the file is already up to date.
    SQLiteBroker(f"sqlite://{db}", clock=clock).close()


def test_many_connections_upgrading_one_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _old_sqlite_file(db)
    clock = FakeClock(START)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []
    brokers: list[SQLiteBroker] = []
    lock = threading.Lock()

    def open_one() -> None:
        barrier.wait(10)
        try:
            broker = SQLiteBroker(f"sqlite://{db}", clock=clock)
        except BaseException as exc:  # collected for the assertion below
            with lock:
                errors.append(exc)
            return
        with lock:
            brokers.append(broker)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert len(brokers) == 6
        _check_both_jobs_are_served(brokers[0], clock)
    finally:
        for broker in brokers:
            broker.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with shared_pg_url() as url:
        yield url


def test_a_postgres_schema_of_the_previous_version_gets_lost_and_keeps_its_jobs(
    pg_url: str,
) -> None:
    import psycopg

    base, schema = pg_url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(OLD_PG_JOBS.format(s=schema).encode())
        with conn.cursor() as cur:
            cur.executemany(INSERT.format(t=f"{schema}.jobs", p=",".join(["%s"] * 8)), OLD_ROWS)
    clock = FakeClock(START)
    broker = PostgresBroker(pg_url, clock=clock)
    try:
        _check_both_jobs_are_served(broker, clock)
    finally:
        broker.close()
