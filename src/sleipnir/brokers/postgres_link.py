"""How the PostgreSQL backend talks to its server: the pool, the schema, one transaction a call.

Owns :class:`_Database` (a connection pool per process, opened on first use and
anew after a fork; the schema created once per process under an advisory lock)
and :meth:`_Database.run`, which runs the SQL core's work in one transaction and
retries it on a fresh connection only where running it twice cannot apply it
twice. Every wait on the server is bounded by ``connect_timeout`` (see
:func:`sleipnir.brokers.postgres_url._timeouts`); psycopg's exceptions become
:class:`BrokerConnectionError` and :class:`BrokerError` here.

It must not know the statements of the contract: they are the SQL core's
(:mod:`sleipnir.brokers.sql`) and :mod:`sleipnir.brokers.postgres`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import BrokerConnectionError, BrokerError
from .base import redact_url
from .postgres_url import _parse

# The backend's logger: its notes belong to the backend, whichever module writes them.
log = logging.getLogger("sleipnir.brokers.postgres")


class _QuietPool(logging.Filter):
    """The pool's own notes on a lost link, one per connection and per reconnect try, moved
    to DEBUG: Sleipnir raises BrokerConnectionError for the call, and the worker logs the
    outage once, when it begins and when it ends."""

    NOISY = ("discarding broken connection", "discarding closed connection", "error connecting")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(self.NOISY):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("psycopg.pool").addFilter(_QuietPool())

T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    visible_at DOUBLE PRECISION NOT NULL,
    token BIGINT NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    enqueued_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    body BYTEA NOT NULL
);
-- Columns added after the table was first released, for a schema an older version made.
-- Looked up first: ALTER TABLE would lock the table against every worker even when the
-- column is there.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = '{s}' AND table_name = 'jobs' AND column_name = 'lost')
    THEN
        ALTER TABLE {s}.jobs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS jobs_pick ON {s}.jobs (queue, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_visible ON {s}.jobs (queue, visible_at);
CREATE TABLE IF NOT EXISTS {s}.dead (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    reason TEXT NOT NULL,
    failed_at DOUBLE PRECISION NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_order ON {s}.dead (failed_at, id);
CREATE TABLE IF NOT EXISTS {s}.queues (name TEXT PRIMARY KEY);
CREATE OR REPLACE FUNCTION {s}.job_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.queues (name) SELECT DISTINCT queue FROM new_rows ON CONFLICT DO NOTHING;
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS job_inserted ON {s}.jobs;
CREATE TRIGGER job_inserted AFTER INSERT ON {s}.jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}.job_inserted();
CREATE TABLE IF NOT EXISTS {s}.results (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    value BYTEA,
    error TEXT
);
CREATE INDEX IF NOT EXISTS results_expiry ON {s}.results (expires_at);
CREATE TABLE IF NOT EXISTS {s}.beats (
    worker_id TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    body BYTEA NOT NULL,
    sample BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.beat_history (
    seq BIGSERIAL PRIMARY KEY,
    worker_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    sample BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS beat_history_at ON {s}.beat_history (at);
CREATE TABLE IF NOT EXISTS {s}.claims (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.slots (
    name TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, holder)
);
"""


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Turn psycopg's exceptions into Sleipnir's, naming the server (without its password)."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise BrokerConnectionError(f"PostgreSQL at {redact_url(url)} unreachable: {exc}") from exc
    except psycopg.Error as exc:
        raise BrokerError(f"PostgreSQL at {redact_url(url)} failed: {exc}") from exc


class _Database:
    """A connection pool on one schema, created on first use and anew after a fork."""

    # Schemas this process already created, so a new pool does not take the lock again.
    _prepared: ClassVar[set[tuple[str, str]]] = set()
    _prepared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema, self.pool_size, self.connect_timeout = _parse(url)
        # What a call may wait for a connection, and the most it waits on a server it
        # cannot reach: a new connection fails after connect_timeout, an open one is
        # dropped by the kernel after as long (see _timeouts); a second on top for the
        # pool to hand a fresh connection over.
        self.timeout = self.connect_timeout + 1.0
        # Channel names are identifiers of at most 63 bytes: hash the schema into one.
        self.channel = "sleipnir_" + hashlib.sha1(self.schema.encode()).hexdigest()[:16]
        self._pool: ConnectionPool[Any] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def pool(self) -> ConnectionPool[Any]:
        if self._pool is not None and self._pid == os.getpid():
            return self._pool
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                pool: ConnectionPool[Any] = ConnectionPool(
                    self.conninfo,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.timeout,
                    kwargs={"autocommit": False},
                    open=False,
                    name=f"sleipnir-{self.schema}",
                )
                with _errors(self.url):
                    pool.open(wait=True, timeout=self.timeout)
                try:
                    self._prepare(pool)
                except BaseException:
                    pool.close()
                    raise
                # Published only once the schema exists: other threads take the fast
                # path above without the lock and must never see a half-made pool.
                self._pool, self._pid = pool, os.getpid()
        return self._pool

    def _prepare(self, pool: ConnectionPool[Any]) -> None:
        key = (self.conninfo, self.schema)
        if key in self._prepared:
            return
        with _errors(self.url), pool.connection() as conn, conn.transaction():
            # One creator at a time, across processes: CREATE ... IF NOT EXISTS races.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self.schema),))
            conn.execute(_SCHEMA.format(s=self.schema, channel=self.channel).encode())
        with self._prepared_lock:
            self._prepared.add(key)

    def run(self, work: Callable[[psycopg.Connection[Any]], T], *, reads: bool = False) -> T:
        """``work(conn)`` in one transaction on a pooled connection, committed; its result.

        A connection the server closed while it sat in the pool (a restart, an
        idle timeout, ``pg_terminate_backend``), or that breaks during the call
        (the kernel gave up on a link that went silent, see :func:`_timeouts`), is
        dropped and the call runs once more on a fresh one, but only where running
        it twice cannot apply it twice:

        * the connection broke before COMMIT was sent: COMMIT never left this host
          (psycopg sends it only once the work's last statement answered), so the
          server rolls the transaction back, at once or, if the link went silent,
          when its own keepalives find the client gone;
        * ``reads``: the work only reads, so a commit that may have been lost
          changed nothing either way.

        A connection lost *while committing* is never retried for a write: the
        COMMIT may have been applied with its answer lost, and running it again
        could store a job twice. That one case reaches the caller as a
        :class:`BrokerConnectionError` that says the outcome is unknown. The
        outcome is settled by then: a COMMIT still unsent when the kernel gave up
        went with the connection's send queue.

        The whole call, retry included, waits at most about ``self.timeout`` for a
        server it cannot reach: the retry gets what is left of it, so after a cut
        (the first try used its time up) it fails at once rather than wait again.

        Why not the pool's ``check`` (a test query each time a connection is
        taken): it costs a round trip on every call (measured on loopback, 25 to
        90 µs on top of a 270 µs enqueue; a full network round trip elsewhere),
        misses a connection that breaks during the call, and after a restart
        backs off a second between the stale connections it finds. A retry costs
        nothing until a connection is lost.
        """
        with _errors(self.url):
            pool = self.pool()
            deadline = time.monotonic() + self.timeout
            lost: psycopg.OperationalError | None = None
            for last in (False, True):
                try:
                    conn = pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
                except PoolTimeout as exc:
                    if lost is None:
                        raise
                    raise BrokerConnectionError(
                        f"PostgreSQL at {redact_url(self.url)} unreachable: the connection was "
                        f"lost ({lost}) and no new one came in the call's {self.timeout:g} s"
                    ) from exc
                committing = False
                try:
                    result = work(conn)
                    committing = True
                    conn.commit()
                    return result
                except psycopg.OperationalError as exc:
                    if not conn.broken:
                        raise  # the server answered (a timeout, a cancel): not a lost connection
                    if committing and not reads:
                        raise BrokerConnectionError(
                            f"PostgreSQL at {redact_url(self.url)}: the connection was lost "
                            f"while committing ({exc}); the change may or may not have been "
                            "applied"
                        ) from exc
                    if last:
                        raise
                    lost = exc
                    log.info("PostgreSQL connection lost (%s); once more on a fresh one", exc)
                finally:
                    if not conn.broken and conn.info.transaction_status != _IDLE:
                        with contextlib.suppress(psycopg.Error):
                            conn.rollback()
                    pool.putconn(conn)  # a broken connection is discarded and replaced
                    # Its siblings most likely went with it (a restart, a cut): close the
                    # idle ones now, without a test query that could wait on a dead link,
                    # so no later call takes the next stale one. (psycopg_pool 3.3+; on an
                    # older pool each stale connection costs its call one retry instead.)
                    drain = getattr(pool, "drain", None)
                    if conn.broken and drain is not None:
                        drain()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()


def _lock_id(schema: str) -> int:
    return int.from_bytes(hashlib.sha1(b"sleipnir:" + schema.encode()).digest()[:8], "big") >> 1
