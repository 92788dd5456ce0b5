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
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from ..errors import BrokerConnectionError, BrokerError, ConfigurationError
from ..results import BeatSample, JobState, ResultRecord, ResultStore, WorkerBeat
from . import postgres_checks
from .base import (
    Broker,
    BrokerJobState,
    DeadLetter,
    Envelope,
    JobInfo,
    Nack,
    QueueStats,
    Reservation,
    redact_url,
)

__all__ = ["PostgresBroker", "PostgresResultStore"]

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

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _timeouts(connect_timeout: int) -> dict[str, str]:
    """The libpq options that bound every wait on the server to about ``connect_timeout``.

    * A new connection: libpq's own ``connect_timeout``.
    * An open one whose request (or COMMIT) the server does not acknowledge:
      ``tcp_user_timeout``. The kernel then drops the connection *with its send
      queue*, so bytes the caller gave up on are never delivered later.
    * An open one waiting on an answer, with nothing left unacknowledged (the request
      arrived, the reply is lost; or an idle LISTEN): TCP keepalives, a probe a
      second after a little silence. On Linux ``tcp_user_timeout`` also ends the
      probing, at ``connect_timeout``; elsewhere ``idle + interval * count`` does.
      A server that is merely slow answers the probes and is waited for.
    * ``options``: the same for the server's end of the connection, so a session
      whose client vanished mid-transaction ends (and rolls back, freeing the rows it
      locked) within ``connect_timeout`` instead of after the kernel's two hours.
    """
    idle = max(1, connect_timeout - 3)
    user_timeout_ms = connect_timeout * 1000
    return {
        "keepalives": "1",
        "keepalives_idle": str(idle),
        "keepalives_interval": "1",
        "keepalives_count": "3",
        "tcp_user_timeout": str(user_timeout_ms),
        "options": (
            f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval=1"
            f" -c tcp_keepalives_count=3 -c tcp_user_timeout={user_timeout_ms}"
        ),
    }


def _query(query: str) -> dict[str, str]:
    """A URL's query as libpq reads it: ``%XX`` escapes decoded, ``+`` kept as it is."""
    options = {}
    for pair in query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            options[unquote(key)] = unquote(value)
    return options


def _parse(url: str) -> tuple[str, str, int, int]:
    """Split a URL into (libpq conninfo URL, schema, pool size, connect timeout).

    The conninfo carries :func:`_timeouts`; an option the URL gives itself wins
    (for ``options``, the URL's ``-c`` settings come after ours and override them).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    options = _query(parts.query)
    schema = options.pop("schema", "sleipnir")
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"schema must be a lower-case SQL identifier (a-z, 0-9, _), not {schema!r}"
        )
    try:
        pool_size = int(options.pop("pool_size", "4"))
        seconds = float(options.get("connect_timeout", "5"))
    except ValueError:
        raise ConfigurationError(
            f"pool_size and connect_timeout must be numbers in {redact_url(url)!r}"
        ) from None
    if pool_size < 1:
        raise ConfigurationError("pool_size must be >= 1")
    if not 0 < seconds < math.inf:
        # libpq reads 0 as "wait for ever", which no call here may do.
        raise ConfigurationError("connect_timeout must be a finite number of seconds > 0")
    # libpq takes whole seconds, and reads anything under 2 as 2.
    connect_timeout = max(2, math.ceil(seconds))
    options["connect_timeout"] = str(connect_timeout)
    for key, value in _timeouts(connect_timeout).items():
        if key == "options":
            # Ours first: a ``-c`` setting the URL repeats overrides ours.
            options[key] = f"{value} {options[key]}" if options.get(key) else value
        else:
            options.setdefault(key, value)
    conninfo = url.split("?", 1)[0] + "?" + urlencode(options, quote_via=quote)
    return conninfo, schema, pool_size, connect_timeout


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


def _slot_lock_id(schema: str, name: str) -> int:
    """The advisory lock that serializes the slots of one limit name."""
    digest = hashlib.sha1(b"sleipnir-slots:" + schema.encode() + b":" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _token() -> int:
    return secrets.randbits(62) | 1  # never 0, which means "not reserved"


_SERVER_NOW = "extract(epoch from clock_timestamp())::float8"


def _now_sql(param: str = "%s") -> str:
    """SQL for "now": the caller's injected clock if it passed one, else the server's."""
    return f"COALESCE({param}::float8, {_SERVER_NOW})"


class PostgresBroker(Broker):
    """The contract on PostgreSQL. See the module docstring for the guarantees."""

    poll_interval = 0.05

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._db = _Database(url)
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

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        if limit <= 0 or not queues:
            return []
        now = self._now()
        token = _token()

        def work(conn: psycopg.Connection[Any]) -> list[Reservation]:
            out: list[Reservation] = []
            for queue in queues:
                want = limit - len(out)
                if want <= 0:
                    break
                # "Now" is read once, where the statement runs: a request that reached
                # the server late (a slow link) neither leases jobs whose lease ran out
                # meanwhile nor hands out a lease that ends sooner than it should.
                # A due row that still holds a token is a lease that ran out.
                rows = conn.execute(
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
                rows.sort(key=lambda r: (-r[2], r[0]))
                out.extend(
                    Reservation(
                        id=job_id,
                        queue=queue,
                        body=bytes(body),
                        attempt=attempt,
                        token=(seq, token),
                        lease_until=until,
                        priority=priority,
                        lost=lost,
                    )
                    for seq, job_id, priority, attempt, lost, body, until in rows
                )
            return out

        return self._db.run(work)

    # Every statement that acts on a reservation checks the token *and* that the
    # lease still runs, by the server's clock: a lease that ran out belongs to
    # whoever reserves next, however late the request arrived.
    _OWNED = f"seq = %s AND token = %s AND visible_at > {_now_sql()}"

    def _each(self, sql: str, params: Sequence[tuple[object, ...]]) -> list[bool]:
        """Run ``sql`` once per parameter row in one transaction; report which changed a row."""
        if not params:
            return []

        def work(conn: psycopg.Connection[Any]) -> list[bool]:
            out = []
            with conn.cursor() as cur:
                for p in params:
                    cur.execute(sql, p)
                    out.append(cur.rowcount == 1)
            return out

        return self._db.run(work)

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        now = self._now()
        return self._each(
            f"UPDATE {self._s}.jobs SET visible_at = {_now_sql()} + %s WHERE {self._OWNED}",
            [(now, lease, *r.token, now) for r in reservations],
        )

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        now = self._now()
        return self._each(
            f"DELETE FROM {self._s}.jobs WHERE {self._OWNED}",
            [(*r.token, now) for r in reservations],
        )

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        if not nacks:
            return []
        now = self._now()

        def work(conn: psycopg.Connection[Any]) -> list[bool]:
            out = []
            with conn.cursor() as cur:
                for n in nacks:
                    owned = (*n.reservation.token, now)
                    if n.retry_at is not None:
                        cur.execute(
                            f"UPDATE {self._s}.jobs SET token = 0, visible_at = %s, last_error = %s"
                            f" WHERE {self._OWNED}",
                            (n.retry_at, n.reason, *owned),
                        )
                        out.append(cur.rowcount == 1)
                        continue
                    cur.execute(
                        f"WITH gone AS (DELETE FROM {self._s}.jobs WHERE {self._OWNED}"
                        "  RETURNING id, queue, priority, attempt, body)"
                        f" INSERT INTO {self._s}.dead"
                        " (id, queue, priority, attempt, reason, failed_at, body)"
                        f" SELECT id, queue, priority, attempt, %s, {_now_sql()}, body FROM gone"
                        " ON CONFLICT (id) DO UPDATE SET queue = excluded.queue,"
                        " priority = excluded.priority, attempt = excluded.attempt,"
                        " reason = excluded.reason, failed_at = excluded.failed_at,"
                        " body = excluded.body",
                        (*owned, n.reason, now),
                    )
                    out.append(cur.rowcount == 1)
            return out

        return self._db.run(work)

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now = self._now()
        return self._each(
            f"UPDATE {self._s}.jobs SET token = 0, visible_at = GREATEST({_now_sql()}, %s),"
            f" attempt = attempt - 1 WHERE {self._OWNED}",
            [(now, ready_at, *r.token, now) for r in reservations],
        )

    def job_info(self, job_id: str) -> JobInfo | None:
        now = self._now()

        def work(conn: psycopg.Connection[Any]) -> JobInfo | None:
            row = conn.execute(
                f"SELECT queue, visible_at <= {_now_sql()}, token, attempt, last_error"
                f" FROM {self._s}.jobs WHERE id = %s",
                (now, job_id),
            ).fetchone()
            if row is not None:
                queue, due, token, attempt, last_error = row
                if due:
                    state = BrokerJobState.READY
                elif token:
                    state = BrokerJobState.RESERVED
                else:
                    state = BrokerJobState.SCHEDULED
                return JobInfo(job_id, queue, state, attempt, last_error)
            row = conn.execute(
                f"SELECT queue, attempt, reason FROM {self._s}.dead WHERE id = %s", (job_id,)
            ).fetchone()
            if row is not None:
                return JobInfo(job_id, row[0], BrokerJobState.DEAD, row[1], row[2])
            return None

        return self._db.run(work, reads=True)

    def stats(self) -> list[QueueStats]:
        now = self._now()

        def work(conn: psycopg.Connection[Any]) -> dict[str, dict[str, object]]:
            counts: dict[str, dict[str, object]] = {
                name: {} for (name,) in conn.execute(f"SELECT name FROM {self._s}.queues")
            }
            for queue, ready, scheduled, running, oldest, next_due in conn.execute(
                f"WITH t AS MATERIALIZED (SELECT {_now_sql('%(now)s')} AS now)"
                " SELECT queue,"
                " COUNT(*) FILTER (WHERE visible_at <= t.now),"
                " COUNT(*) FILTER (WHERE visible_at > t.now AND token = 0),"
                " COUNT(*) FILTER (WHERE visible_at > t.now AND token != 0),"
                " MIN(visible_at) FILTER (WHERE visible_at <= t.now),"
                " MIN(visible_at) FILTER (WHERE visible_at > t.now AND token = 0)"
                f" FROM {self._s}.jobs, t GROUP BY queue",
                {"now": now},
            ):
                counts[queue] = {
                    "ready": ready,
                    "scheduled": scheduled,
                    "running": running,
                    "oldest_ready_at": oldest,
                    "next_scheduled_at": next_due,
                }
            for queue, dead in conn.execute(
                f"SELECT queue, COUNT(*) FROM {self._s}.dead GROUP BY queue"
            ):
                counts.setdefault(queue, {})["dead"] = dead
            return counts

        counts = self._db.run(work, reads=True)
        return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]  # type: ignore[arg-type]

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = ("WHERE queue = %s", [queue]) if queue is not None else ("", [])

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                "SELECT id, queue, body, attempt, reason, failed_at, priority"
                f" FROM {self._s}.dead {where} ORDER BY failed_at, id LIMIT %s",
                (*params, limit),
            ).fetchall()

        rows = self._db.run(work, reads=True)
        return [DeadLetter(i, q, bytes(b), a, r, f, p) for i, q, b, a, r, f, p in rows]

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        if ids is not None and not ids:
            return []
        now = self._now()
        where, params = ("", ()) if ids is None else ("WHERE id = ANY(%s)", (list(ids),))

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                f"WITH back AS (DELETE FROM {self._s}.dead {where}"
                "  RETURNING id, queue, priority, body),"
                f" t AS MATERIALIZED (SELECT {_now_sql()} AS now)"
                f" INSERT INTO {self._s}.jobs"
                " (id, queue, priority, visible_at, enqueued_at, body)"
                " SELECT id, queue, priority, t.now, t.now, body FROM back, t RETURNING id",
                (*params, now),
            ).fetchall()

        rows = self._db.run(work)
        return sorted(r[0] for r in rows)

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        where, params = ("", ()) if ids is None else ("WHERE id = ANY(%s)", (list(ids),))

        def work(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(f"DELETE FROM {self._s}.dead {where}", params).rowcount

        return self._db.run(work)

    def purge(self, queue: str) -> int:
        now = self._now()

        def work(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(
                f"DELETE FROM {self._s}.jobs WHERE queue = %s"
                f" AND NOT (token != 0 AND visible_at > {_now_sql()})",
                (queue, now),
            ).rowcount

        return self._db.run(work)

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


class PostgresResultStore(ResultStore):
    """Results, heartbeats and claimed keys in the same schema as the jobs (by default)."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._db = _Database(url)
        self._s = self._db.schema

    def put(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        rows = [
            (
                r.job_id,
                r.state.value,
                r.task,
                r.queue,
                r.attempt,
                r.started_at,
                r.finished_at,
                r.expires_at,
                r.value,
                r.error,
            )
            for r in records
        ]

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {self._s}.results AS r (job_id, state, task, queue, attempt,"
                    " started_at, finished_at, expires_at, value, error)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state,"
                    " task = excluded.task, queue = excluded.queue, attempt = excluded.attempt,"
                    " started_at = excluded.started_at, finished_at = excluded.finished_at,"
                    " expires_at = excluded.expires_at, value = excluded.value,"
                    " error = excluded.error"
                    " WHERE excluded.attempt >= r.attempt",
                    rows,
                )

        self._db.run(work)

    def get(self, job_id: str) -> ResultRecord | None:
        def work(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute(
                "SELECT job_id, state, task, queue, attempt, finished_at, expires_at, value,"
                f" error, started_at FROM {self._s}.results WHERE job_id = %s AND expires_at > %s",
                (job_id, self.clock.time()),
            ).fetchone()

        row = self._db.run(work, reads=True)
        if row is None:
            return None
        job, state, task, queue, attempt, finished, expires, value, error, started = row
        return ResultRecord(
            job_id=job,
            state=JobState(state),
            task=task,
            queue=queue,
            attempt=attempt,
            finished_at=finished,
            expires_at=expires,
            value=None if value is None else bytes(value),
            error=error,
            started_at=started,
        )

    def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0

        def work(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(
                f"DELETE FROM {self._s}.results WHERE job_id = ANY(%s)", (list(job_ids),)
            ).rowcount

        return self._db.run(work)

    def purge_expired(self) -> int:
        now = self.clock.time()

        def work(conn: psycopg.Connection[Any]) -> int:
            n = conn.execute(
                f"DELETE FROM {self._s}.results WHERE expires_at <= %s", (now,)
            ).rowcount
            conn.execute(f"DELETE FROM {self._s}.claims WHERE expires_at <= %s", (now,))
            conn.execute(f"DELETE FROM {self._s}.slots WHERE expires_at <= %s", (now,))
            conn.execute(f"DELETE FROM {self._s}.beats WHERE expires_at <= %s", (now,))
            return n

        return self._db.run(work)

    def beat(self, beat: WorkerBeat, keep: float) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                f"INSERT INTO {self._s}.beats (worker_id, at, expires_at, body, sample)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET"
                " at = excluded.at, expires_at = excluded.expires_at, body = excluded.body,"
                " sample = excluded.sample",
                (beat.worker_id, beat.at, beat.expires_at, beat.body, beat.sample),
            )
            conn.execute(
                f"INSERT INTO {self._s}.beat_history (worker_id, at, sample) VALUES (%s, %s, %s)",
                (beat.worker_id, beat.at, beat.sample),
            )
            conn.execute(f"DELETE FROM {self._s}.beat_history WHERE at < %s", (beat.at - keep,))

        self._db.run(work)

    def beats(self) -> list[WorkerBeat]:
        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                "SELECT worker_id, at, expires_at, body, sample"
                f" FROM {self._s}.beats WHERE expires_at > %s ORDER BY worker_id",
                (self.clock.time(),),
            ).fetchall()

        rows = self._db.run(work, reads=True)
        return [WorkerBeat(w, a, e, bytes(b), bytes(s)) for w, a, e, b, s in rows]

    def beat_history(self, since: float) -> list[BeatSample]:
        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                f"SELECT worker_id, at, sample FROM {self._s}.beat_history"
                " WHERE at >= %s ORDER BY at, seq",
                (since,),
            ).fetchall()

        rows = self._db.run(work, reads=True)
        return [BeatSample(w, a, bytes(s)) for w, a, s in rows]

    def claim_key(self, key: str, value: bytes, expires_at: float) -> bytes | None:
        now = self.clock.time()

        def work(conn: psycopg.Connection[Any]) -> tuple[bool, Any]:
            """(claimed, the holder's row or None)."""
            row = conn.execute(
                f"INSERT INTO {self._s}.claims AS c (key, value, expires_at)"
                " VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                " value = excluded.value, expires_at = excluded.expires_at"
                " WHERE c.expires_at <= %s RETURNING 1",
                (key, value, expires_at, now),
            ).fetchone()
            if row is not None:
                return True, None
            held = conn.execute(
                f"SELECT value FROM {self._s}.claims WHERE key = %s", (key,)
            ).fetchone()
            return False, held

        while True:  # again if the holder released the key between our two statements
            claimed, held = self._db.run(work)
            if claimed:
                return None
            if held is not None:
                return bytes(held[0])

    def release_key(self, key: str) -> bool:
        def work(conn: psycopg.Connection[Any]) -> bool:
            return conn.execute(f"DELETE FROM {self._s}.claims WHERE key = %s", (key,)).rowcount > 0

        return self._db.run(work)

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                f"INSERT INTO {self._s}.claims (key, value, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET"
                " value = excluded.value, expires_at = excluded.expires_at",
                (key, value, expires_at),
            )

        self._db.run(work)

    def get_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                f"SELECT key, value FROM {self._s}.claims WHERE key = ANY(%s) AND expires_at > %s",
                (list(keys), self.clock.time()),
            ).fetchall()

        rows = self._db.run(work, reads=True)
        found = {k: bytes(v) for k, v in rows}
        return [found.get(key) for key in keys]

    def acquire_slot(self, name: str, holder: str, limit: int, expires_at: float) -> float | None:
        if limit < 1:
            raise ValueError(f"a limit needs at least one slot, not {limit}")

        def work(conn: psycopg.Connection[Any]) -> float | None:
            # The slots of one name are counted by one transaction at a time, across
            # hosts; each statement after the lock sees what the previous holder committed.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_slot_lock_id(self._s, name),))
            conn.execute(
                f"DELETE FROM {self._s}.slots WHERE name = %s AND expires_at <= %s",
                (name, self.clock.time()),
            )
            renewed = conn.execute(
                f"UPDATE {self._s}.slots SET expires_at = %s WHERE name = %s AND holder = %s",
                (expires_at, name, holder),
            ).rowcount
            if renewed:
                return None
            taken, first_free = conn.execute(
                f"SELECT count(*), min(expires_at) FROM {self._s}.slots WHERE name = %s", (name,)
            ).fetchone() or (0, 0.0)  # an aggregate always gives a row
            if taken >= limit:
                return float(first_free)
            conn.execute(
                f"INSERT INTO {self._s}.slots (name, holder, expires_at) VALUES (%s, %s, %s)",
                (name, holder, expires_at),
            )
            return None

        return self._db.run(work)

    def release_slot(self, name: str, holder: str) -> bool:
        def work(conn: psycopg.Connection[Any]) -> bool:
            return (
                conn.execute(
                    f"DELETE FROM {self._s}.slots"
                    " WHERE name = %s AND holder = %s AND expires_at > %s",
                    (name, holder, self.clock.time()),
                ).rowcount
                > 0
            )

        return self._db.run(work)

    def close(self) -> None:
        self._db.close()
