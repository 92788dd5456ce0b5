"""The embedded backend (``sqlite:///path/to/jobs.db``): one file, no server.

Many producer and worker processes may share the file at once. It runs in
WAL mode. Every multi-statement write is a ``BEGIN IMMEDIATE`` transaction
(taking the write lock up front, so the busy timeout applies instead of an
instant "database is locked"); a single enqueue is one autocommit INSERT.
One transaction reserves, acks or nacks a whole batch of jobs.

Durability, set with ``?sync=`` in the URL:

* ``sync=normal`` (default): a committed job survives the death of any
  process (kill -9 included) but the last commits may be lost if the machine
  loses power or the kernel crashes (WAL with ``synchronous=NORMAL``).
* ``sync=full``: every commit is fsynced; it also survives a power loss, at
  the cost of an fsync per enqueue.

URL forms: ``sqlite:///abs/path.db`` (absolute), ``sqlite://rel/path.db`` or
``sqlite:rel/path.db`` (relative to the working directory). Options:
``sync=normal|full``, ``busy_timeout=<seconds>`` (default 30).

Schema (one file)::

    sleipnir_jobs     seq INTEGER PRIMARY KEY   -- FIFO order within a priority
                      id TEXT UNIQUE, queue TEXT, priority INTEGER,
                      visible_at REAL           -- due time; while reserved: lease end
                      token INTEGER             -- 0 = not reserved, else this delivery's token
                      attempt INTEGER           -- deliveries so far
                      lost INTEGER              -- of those, how many ended with their lease
                                                -- running out (added on opening an older file)
                      enqueued_at REAL, last_error TEXT, body BLOB
                      index (queue, priority DESC, seq, visible_at, token)
    sleipnir_dead     id TEXT PRIMARY KEY, queue, priority, attempt, reason, failed_at, body
    sleipnir_queues   name TEXT PRIMARY KEY     -- every queue ever used (filled by a trigger)
    sleipnir_results  job_id TEXT PRIMARY KEY, state, task, queue, attempt,
                      started_at, finished_at, expires_at, value BLOB, error TEXT
    sleipnir_beats    worker_id TEXT PRIMARY KEY, at, expires_at, body BLOB, sample BLOB
    sleipnir_beat_history  seq INTEGER PRIMARY KEY, worker_id, at, sample BLOB; index (at)
    sleipnir_claims   key TEXT PRIMARY KEY, value BLOB, expires_at  -- claimed and set keys
    sleipnir_slots    name TEXT, holder TEXT, expires_at; primary key (name, holder)
                      -- the taken slots of concurrency and rate limits

A job is reservable when ``visible_at <= now``: that one test covers ready
jobs, delayed jobs that came due and leases that ran out, so expired leases
are reclaimed by any worker's ordinary reserve, with no extra daemon.

The statements SQLite shares with PostgreSQL are the SQL core's
(:mod:`sleipnir.brokers.sql`); this module holds what SQLite does its own way
(enqueue, the reserve statement, moves to and from the dead letters, the
wake-up). Opening the file, the DDL and the write lock: :mod:`.sqlite_file`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checks import Check, Deployment
from ..clock import Clock
from ..errors import BrokerError
from . import sqlite_checks
from .base import Envelope
from .sql.broker import OWNED, SqlBroker
from .sql.dialect import TABLES, Dialect, SqlCursor
from .sql.results import SqlResultStore
from .sqlite_file import _Database, parse_sqlite_url

__all__ = ["SQLiteBroker", "SQLiteResultStore", "parse_sqlite_url"]

_DIALECT = Dialect(
    {name: f"sleipnir_{name}" for name in TABLES}, now="%s", greatest="max", qmark=True
)
"""SQLite's spelling: ``?`` parameters, "now" is always the caller's clock."""


class SQLiteBroker(SqlBroker):
    """The contract on one SQLite file. See the module docstring for the guarantees."""

    _db: _Database

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, _Database(url), _DIALECT, clock)
        self._db.conn()  # fail now, not at the first enqueue, when the file can't be opened

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        now = self.clock.time()
        rows = [
            (e.id, e.queue, e.priority, now if e.eta_at is None else e.eta_at, now, e.body)
            for e in envelopes
        ]
        sql = (
            "INSERT INTO sleipnir_jobs (id, queue, priority, visible_at, enqueued_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"  # a queued id: left as it is
        )
        try:
            if len(rows) == 1:
                # A lone INSERT in autocommit mode is its own transaction: one less round trip.
                self._db.conn().execute(sql, rows[0])
            else:
                with self._db.write() as conn:
                    conn.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise BrokerError(f"a job with that id is already queued: {exc}") from exc
        except sqlite3.Error as exc:
            raise BrokerError(f"enqueue failed on {self._db.path}: {exc}") from exc

    def _take(
        self, conn: Any, queue: str, want: int, token: int, lease: float, now: float | None
    ) -> list[Any]:
        assert now is not None  # SQLite's "now" is always the clock's
        return list(
            conn.execute(
                # A due row that still holds a token is a lease that ran out.
                "UPDATE sleipnir_jobs SET token = ?, attempt = attempt + 1,"
                " lost = lost + (token != 0), visible_at = ?"
                " WHERE seq IN (SELECT seq FROM sleipnir_jobs"
                "  WHERE queue = ? AND visible_at <= ? ORDER BY priority DESC, seq LIMIT ?)"
                " RETURNING seq, id, priority, attempt, lost, body, visible_at",
                (token, now + lease, queue, now, want),
            ).fetchall()
        )

    _UNQUEUE = "DELETE FROM {jobs} WHERE " + OWNED + " RETURNING id, queue, priority, attempt, body"

    def _bury(
        self, cur: SqlCursor, owned: tuple[object, ...], reason: str, now: float | None
    ) -> bool:
        # No statement of SQLite both deletes and inserts: two, in the caller's transaction.
        row = cur.execute(self._sql(self._UNQUEUE), owned).fetchone()
        if row is None:
            return False
        cur.execute(
            "INSERT OR REPLACE INTO sleipnir_dead"
            " (id, queue, priority, attempt, reason, failed_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row[0], row[1], row[2], row[3], reason, now, row[4]),
        )
        return True

    def _revive(
        self, conn: Any, where: str, params: tuple[object, ...], now: float | None
    ) -> list[Any]:
        rows: list[Any] = conn.execute(
            f"DELETE FROM sleipnir_dead {where} RETURNING id, queue, priority, body", params
        ).fetchall()
        conn.executemany(
            "INSERT INTO sleipnir_jobs (id, queue, priority, visible_at, enqueued_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(i, q, p, now, now, b) for i, q, p, b in rows],
        )
        return rows

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until another connection commits, the next delayed job is due, or ``timeout``.

        ``PRAGMA data_version`` changes when any other connection commits, so
        checking it every few milliseconds wakes an idle worker soon after an
        enqueue from another process, without a query per check.
        """
        conn = self._db.conn()
        deadline = time.monotonic() + timeout
        if queues:
            condition, params = _DIALECT.any_of("queue", queues)
            row = conn.execute(
                f"SELECT MIN(visible_at) FROM sleipnir_jobs WHERE {condition}", params
            ).fetchone()
            if row[0] is not None:
                deadline = min(deadline, time.monotonic() + max(0.0, row[0] - self.clock.time()))
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        step = 0.001
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(step, left))
            if conn.execute("PRAGMA data_version").fetchone()[0] != version:
                return
            step = min(step * 2, self.poll_interval)

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return sqlite_checks.diagnose(lambda: self, self.url, about or Deployment())


class SQLiteResultStore(SqlResultStore):
    """Results in the same SQLite file as the jobs (by default)."""

    _db: _Database

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, _Database(url), _DIALECT, clock)

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        try:  # a lone statement in autocommit mode is its own transaction
            self._db.conn().execute(self._sql(self._SET_KEY), (key, value, expires_at))
        except sqlite3.Error as exc:
            raise BrokerError(f"set_key failed on {self._db.path}: {exc}") from exc
