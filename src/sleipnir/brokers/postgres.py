"""The PostgreSQL backend (``postgresql://user:pass@host:5432/db?schema=sleipnir``).

For teams that already run PostgreSQL and want their jobs in it: backed up,
replicated and monitored with the rest of their data, and enqueued in the same
database their web app writes to. Built on psycopg 3 with a small connection
pool per process.

Workers take jobs with ``SELECT ... FOR UPDATE SKIP LOCKED``, so many workers on
many hosts reserve from one table without waiting on each other's rows. One
transaction reserves, acks or nacks a whole batch. An insert into the jobs
table fires ``NOTIFY``; idle workers ``LISTEN`` and wake at once.

Durability is PostgreSQL's: a job is committed before ``enqueue`` returns, so
with the server's default ``synchronous_commit = on`` and ``fsync = on`` an
accepted job survives a crash of the server or its host. With
``synchronous_commit = off`` the last few hundred milliseconds of commits can
be lost on a server crash; :mod:`.postgres_checks` says so.

URL options: ``schema=`` (default ``sleipnir``; every table lives in it, so
several apps or test runs can share one database), ``pool_size=`` (default 4),
``connect_timeout=`` seconds (default 5). Other libpq options
(``sslmode=``, ``application_name=``...) pass through to the server.

No call waits for ever on a server it cannot reach, a link that silently drops
packets included: ``connect_timeout`` bounds a new connection, and TCP options
derived from it (``tcp_user_timeout``, keepalives; see :func:`_timeouts`) make
the kernel drop an open connection that goes silent for as long, discarding
what it had not sent. A call fails with :class:`BrokerConnectionError` after
about ``connect_timeout`` + 1 s.

Tables (in the schema)::

    jobs        seq BIGSERIAL PRIMARY KEY      -- FIFO order within a priority
                id TEXT UNIQUE, queue TEXT, priority INT,
                visible_at DOUBLE PRECISION    -- due time; while reserved: lease end
                token BIGINT                   -- 0 = not reserved, else this delivery's token
                attempt INT                    -- deliveries so far
                lost INT                       -- of those, how many ended with their lease
                                               -- running out (added to an older schema)
                enqueued_at, last_error TEXT, body BYTEA
    dead        id TEXT PRIMARY KEY, queue, priority, attempt, reason, failed_at, body
    queues      name TEXT PRIMARY KEY          -- every queue ever used (filled by a trigger)
    results     job_id TEXT PRIMARY KEY, state, task, queue, attempt, started_at,
                finished_at, expires_at, value BYTEA, error TEXT
    beats       worker_id TEXT PRIMARY KEY, at, expires_at, body, sample
    beat_history  seq BIGSERIAL, worker_id, at, sample
    claims      key TEXT PRIMARY KEY, value BYTEA, expires_at  -- claimed and set keys
    slots       name TEXT, holder TEXT, expires_at; primary key (name, holder)
                -- the taken slots of concurrency and rate limits

As on SQLite, a job is reservable when ``visible_at <= now``: ready jobs,
delayed jobs that came due and leases that ran out alike, so any worker's
ordinary reserve reclaims the jobs of a dead one, with no extra daemon.
``now`` is the server's clock, read where the statement runs (a broker given a
clock of its own, a test's FakeClock, uses that one instead): lease ends, the
"lease still runs" checks, due times, so a request that arrives late, or comes
from a host whose clock is off, neither leases what it should not nor hands out
a lease that has already run out. Times the caller computes itself (a job's
``eta_at``, a retry's ``retry_at``, result and key expiries) are stored as given.

The statements PostgreSQL shares with SQLite are the SQL core's
(:mod:`sleipnir.brokers.sql`); this module holds what PostgreSQL does its own
way (enqueue with ``unnest``, the ``SKIP LOCKED`` reserve, one-statement moves
to and from the dead letters, ``LISTEN``, the slots' advisory lock). The pool,
the DDL and the retry of a lost connection: :mod:`.postgres_link`; the URL and
its timeouts: :mod:`.postgres_url`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from ..errors import BrokerError
from . import postgres_checks
from .base import Envelope
from .postgres_link import _Database as _Database
from .postgres_link import _errors
from .postgres_url import _parse as _parse
from .postgres_url import _timeouts as _timeouts
from .sql.broker import OWNED, SqlBroker
from .sql.dialect import TABLES, Dialect, SqlCursor
from .sql.results import SqlResultStore

__all__ = ["PostgresBroker", "PostgresResultStore"]

_SERVER_NOW = "extract(epoch from clock_timestamp())::float8"


def _now_sql(param: str = "%s") -> str:
    """SQL for "now": the caller's injected clock if it passed one, else the server's."""
    return f"COALESCE({param}::float8, {_SERVER_NOW})"


def _open(url: str) -> tuple[_Database, Dialect]:
    """The database a URL names (connected on first use) and its spelling: the tables
    in its schema, "now" by the server's clock."""
    db = _Database(url)
    tables = {name: f"{db.schema}.{name}" for name in TABLES}
    return db, Dialect(tables, now=_now_sql(), greatest="GREATEST", qmark=False)


def _slot_lock_id(schema: str, name: str) -> int:
    """The advisory lock that serializes the slots of one limit name."""
    digest = hashlib.sha1(b"sleipnir-slots:" + schema.encode() + b":" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class PostgresBroker(SqlBroker):
    """The contract on PostgreSQL. See the module docstring for the guarantees."""

    _db: _Database

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, *_open(url), clock)
        self._s = self._db.schema
        self._listener: psycopg.Connection[Any] | None = None

    def _now(self) -> float | None:
        """The time to pass as ``now`` to :func:`_now_sql`: ``None`` (the server's clock)
        unless the broker was given a clock of its own (a test's FakeClock)."""
        return None if type(self.clock) is SystemClock else self.clock.time()

    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        rows = [(e.id, e.queue, e.priority, e.eta_at, e.body) for e in envelopes]
        sql = (
            f"INSERT INTO {self._s}.jobs (id, queue, priority, visible_at, enqueued_at, body)"
            " SELECT i, q, p, COALESCE(v, t.now), t.now, b"
            f" FROM (SELECT {_now_sql()} AS now) t, unnest(%s::text[], %s::text[], %s::int[],"
            " %s::float8[], %s::bytea[]) AS u(i, q, p, v, b)"
            " ON CONFLICT (id) DO NOTHING"  # a queued id is left as it is (see Broker.enqueue)
        )
        params = [self._now(), *(list(col) for col in zip(*rows, strict=True))]
        try:
            # Retried on a fresh connection only when the first try certainly did not
            # commit (see _Database.run): a retry never stores a job twice.
            self._db.run(lambda conn: conn.execute(sql, params))
        except BrokerError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise BrokerError(f"a job with that id is already queued: {exc}") from exc
            raise

    def _take(
        self, conn: Any, queue: str, want: int, token: int, lease: float, now: float | None
    ) -> list[Any]:
        # "Now" is read once, where the statement runs: a request that reached
        # the server late (a slow link) neither leases jobs whose lease ran out
        # meanwhile nor hands out a lease that ends sooner than it should.
        # A due row that still holds a token is a lease that ran out.
        return list(
            conn.execute(
                f"WITH t AS MATERIALIZED (SELECT {_now_sql('%(now)s')} AS now)"
                f" UPDATE {self._s}.jobs j SET token = %(token)s, attempt = j.attempt + 1,"
                " lost = j.lost + (j.token <> 0)::int, visible_at = t.now + %(lease)s"
                f" FROM t, (SELECT seq FROM {self._s}.jobs"
                "   WHERE queue = %(queue)s AND visible_at <= (SELECT now FROM t)"
                "   ORDER BY priority DESC, seq LIMIT %(want)s FOR UPDATE SKIP LOCKED) p"
                " WHERE j.seq = p.seq"
                " RETURNING j.seq, j.id, j.priority, j.attempt, j.lost, j.body, j.visible_at",
                {"now": now, "token": token, "lease": lease, "queue": queue, "want": want},
            ).fetchall()
        )

    # One statement: the row leaves the jobs and enters the dead letters at once.
    _BURY = (
        "WITH gone AS (DELETE FROM {jobs} WHERE "
        + OWNED
        + "  RETURNING id, queue, priority, attempt, body)"
        " INSERT INTO {dead} (id, queue, priority, attempt, reason, failed_at, body)"
        " SELECT id, queue, priority, attempt, %s, {now}, body FROM gone"
        " ON CONFLICT (id) DO UPDATE SET queue = excluded.queue,"
        " priority = excluded.priority, attempt = excluded.attempt,"
        " reason = excluded.reason, failed_at = excluded.failed_at,"
        " body = excluded.body"
    )

    def _bury(
        self, cur: SqlCursor, owned: tuple[object, ...], reason: str, now: float | None
    ) -> bool:
        cur.execute(self._sql(self._BURY), (*owned, reason, now))
        return cur.rowcount == 1

    def _revive(
        self, conn: Any, where: str, params: tuple[object, ...], now: float | None
    ) -> list[Any]:
        return list(
            conn.execute(
                f"WITH back AS (DELETE FROM {self._s}.dead {where}"
                "  RETURNING id, queue, priority, body),"
                f" t AS MATERIALIZED (SELECT {_now_sql()} AS now)"
                f" INSERT INTO {self._s}.jobs"
                " (id, queue, priority, visible_at, enqueued_at, body)"
                " SELECT id, queue, priority, t.now, t.now, body FROM back, t RETURNING id",
                (*params, now),
            ).fetchall()
        )

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until a job is inserted (NOTIFY), the next delayed job is due, or ``timeout``."""
        deadline = time.monotonic() + timeout
        if queues:

            def work(conn: psycopg.Connection[Any]) -> Any:
                return conn.execute(
                    f"SELECT MIN(visible_at) - {_now_sql()} FROM {self._s}.jobs"
                    " WHERE queue = ANY(%s)",
                    (self._now(), list(queues)),
                ).fetchone()

            row = self._db.run(work, reads=True)
            if row is not None and row[0] is not None:
                deadline = min(deadline, time.monotonic() + max(0.0, row[0]))
        left = deadline - time.monotonic()
        if left <= 0:
            return
        with _errors(self.url):
            listener = None
            try:
                listener = self._listen()
                for _ in listener.notifies(timeout=left, stop_after=1):
                    break
            except psycopg.Error:
                self._drop_listener()
                if listener is None or not listener.broken:
                    raise
                # The listening connection was lost (a server restart, or a link that
                # went silent, within connect_timeout): return as if woken, since a
                # NOTIFY may have gone with it. The caller's next reserve
                # finds out whether the server is back; the next wait listens anew.

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            self._db.pool()  # the schema (and its trigger) exists before we listen
            # The conninfo's timeouts bound this connection as they bound the pool's: a
            # listener whose link went silent breaks within connect_timeout.
            conn = psycopg.connect(self._db.conninfo, autocommit=True)
            try:
                conn.execute(f"LISTEN {self._db.channel}")
            except BaseException:
                conn.close()
                raise
            self._listener = conn
        return self._listener

    def _drop_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
            self._listener = None

    def settings_report(self) -> dict[str, str | None]:
        """``fsync``, ``synchronous_commit``, ``full_page_writes`` from ``pg_settings``."""

        def work(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (list(postgres_checks.SETTINGS),),
            ).fetchall()
            return dict.fromkeys(postgres_checks.SETTINGS) | dict(rows)

        return self._db.run(work, reads=True)

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return postgres_checks.diagnose(lambda: self, self.url, about or Deployment())

    def close(self) -> None:
        self._drop_listener()
        self._db.close()


class PostgresResultStore(SqlResultStore):
    """Results, heartbeats and claimed keys in the same schema as the jobs (by default)."""

    _db: _Database

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, *_open(url), clock)
        self._s = self._db.schema

    def _lock_slots(self, conn: Any, name: str) -> None:
        # The slots of one name are counted by one transaction at a time, across hosts.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_slot_lock_id(self._s, name),))
