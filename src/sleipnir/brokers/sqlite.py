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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from ..errors import BrokerConnectionError, BrokerError, ConfigurationError
from ..results import BeatSample, JobState, ResultRecord, ResultStore, WorkerBeat
from . import sqlite_checks
from .base import (
    Broker,
    BrokerJobState,
    DeadLetter,
    Envelope,
    JobInfo,
    Nack,
    QueueStats,
    Reservation,
)

__all__ = ["SQLiteBroker", "SQLiteResultStore", "parse_sqlite_url"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sleipnir_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    last_error TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sleipnir_jobs_pick
    ON sleipnir_jobs (queue, priority DESC, seq, visible_at, token);
CREATE TABLE IF NOT EXISTS sleipnir_dead (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sleipnir_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS sleipnir_jobs_queue AFTER INSERT ON sleipnir_jobs
    BEGIN INSERT OR IGNORE INTO sleipnir_queues (name) VALUES (NEW.queue); END;
CREATE INDEX IF NOT EXISTS sleipnir_dead_order ON sleipnir_dead (failed_at, id);
CREATE TABLE IF NOT EXISTS sleipnir_results (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    value BLOB,
    error TEXT
);
CREATE INDEX IF NOT EXISTS sleipnir_results_expiry ON sleipnir_results (expires_at);
CREATE TABLE IF NOT EXISTS sleipnir_beats (
    worker_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    expires_at REAL NOT NULL,
    body BLOB NOT NULL,
    sample BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sleipnir_beat_history (
    seq INTEGER PRIMARY KEY,
    worker_id TEXT NOT NULL,
    at REAL NOT NULL,
    sample BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sleipnir_beat_history_at ON sleipnir_beat_history (at);
CREATE TABLE IF NOT EXISTS sleipnir_claims (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sleipnir_slots (
    name TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (name, holder)
) WITHOUT ROWID;
"""

_ADDED_COLUMNS = {
    "sleipnir_jobs": {"lost": "INTEGER NOT NULL DEFAULT 0"},
}
"""Columns added after a table was first released: a file made by an older version
gets them when it is opened (``CREATE TABLE IF NOT EXISTS`` leaves its tables as
they are)."""

_SYNC_LEVELS = {"normal": "NORMAL", "full": "FULL"}


def parse_sqlite_url(url: str) -> tuple[Path, str, float]:
    """Split a ``sqlite:`` URL into (path, synchronous level, busy timeout seconds)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    raw = (parts.netloc + parts.path) if parts.netloc else parts.path
    if not raw or raw == "/":
        raise ConfigurationError(f"sqlite URL names no file: {url!r}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"sync", "busy_timeout"}
    if unknown:
        raise ConfigurationError(f"unknown sqlite URL option(s) {sorted(unknown)} in {url!r}")
    sync = options.get("sync", "normal").lower()
    if sync not in _SYNC_LEVELS:
        raise ConfigurationError(f"sync must be 'normal' or 'full', not {sync!r}")
    try:
        busy_timeout = float(options.get("busy_timeout", "30"))
    except ValueError:
        raise ConfigurationError("busy_timeout must be a number of seconds") from None
    return Path(raw), _SYNC_LEVELS[sync], busy_timeout


class _Database:
    """Connections to one SQLite file: one per thread, opened anew after a fork."""

    def __init__(self, url: str) -> None:
        self.path, self.synchronous, self.busy_timeout = parse_sqlite_url(url)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._ready = False

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = self._open()
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._prepare(conn)
        except (sqlite3.Error, OSError) as exc:
            raise BrokerConnectionError(f"cannot open SQLite database {self.path}: {exc}") from exc
        with self._lock:
            self._all.append(conn)
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch a new file to WAL and create the schema, racing other processes safely.

        Switching the journal mode and a first schema read can answer "database
        is locked" at once, without waiting out the busy timeout, while another
        process opens the same fresh file. Both steps are idempotent, so they
        are retried until the busy timeout is spent.
        """
        if self._ready:
            return
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
                self._add_columns(conn)
                break
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._ready = True

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        """Add the columns of ``_ADDED_COLUMNS`` that a file made by an older version lacks.

        Read first without the write lock, so that opening an up-to-date file (every
        time but the first) takes no lock; checked again under it, since another
        process may be adding the same column at the same moment.
        """

        def missing() -> list[tuple[str, str, str]]:
            out = []
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                out += [(table, c, d) for c, d in columns.items() if c not in have]
            return out

        if not missing():
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, decl in missing():
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock at its start."""
        conn = self.conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BrokerError(f"SQLite write lock not obtained on {self.path}: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise BrokerError(f"SQLite commit failed on {self.path}: {exc}") from exc

    def read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BrokerError(f"SQLite read failed on {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def _in(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


class SQLiteBroker(Broker):
    """The contract on one SQLite file. See the module docstring for the guarantees."""

    poll_interval = 0.05

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._db = _Database(url)
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

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        if limit <= 0 or not queues:
            return []
        now = self.clock.time()
        until = now + lease
        token = secrets.randbits(62) | 1  # never 0, which means "not reserved"
        out: list[Reservation] = []
        with self._db.write() as conn:
            for queue in queues:
                want = limit - len(out)
                if want <= 0:
                    break
                rows = conn.execute(
                    # A due row that still holds a token is a lease that ran out.
                    "UPDATE sleipnir_jobs SET token = ?, attempt = attempt + 1,"
                    " lost = lost + (token != 0), visible_at = ?"
                    " WHERE seq IN (SELECT seq FROM sleipnir_jobs"
                    "  WHERE queue = ? AND visible_at <= ? ORDER BY priority DESC, seq LIMIT ?)"
                    " RETURNING seq, id, priority, attempt, lost, body",
                    (token, until, queue, now, want),
                ).fetchall()
                rows.sort(key=lambda r: (-r[2], r[0]))
                out.extend(
                    Reservation(
                        id=job_id,
                        queue=queue,
                        body=body,
                        attempt=attempt,
                        token=(seq, token),
                        lease_until=until,
                        priority=priority,
                        lost=lost,
                    )
                    for seq, job_id, priority, attempt, lost, body in rows
                )
        return out

    def _each(self, sql: str, params: Sequence[tuple[object, ...]]) -> list[bool]:
        """Run ``sql`` once per parameter row in one transaction; report which changed a row."""
        with self._db.write() as conn:
            return [conn.execute(sql, p).rowcount == 1 for p in params]

    # Every statement that acts on a reservation checks the token *and* that the
    # lease still runs: a lease that ran out belongs to whoever reserves next.
    _OWNED = "seq = ? AND token = ? AND visible_at > ?"

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        now = self.clock.time()
        return self._each(
            f"UPDATE sleipnir_jobs SET visible_at = ? WHERE {self._OWNED}",
            [(now + lease, *r.token, now) for r in reservations],
        )

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        now = self.clock.time()
        return self._each(
            f"DELETE FROM sleipnir_jobs WHERE {self._OWNED}",
            [(*r.token, now) for r in reservations],
        )

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._db.write() as conn:
            for n in nacks:
                owned = (*n.reservation.token, now)
                if n.retry_at is not None:
                    cur = conn.execute(
                        "UPDATE sleipnir_jobs SET token = 0, visible_at = ?, last_error = ?"
                        f" WHERE {self._OWNED}",
                        (n.retry_at, n.reason, *owned),
                    )
                    out.append(cur.rowcount == 1)
                    continue
                row = conn.execute(
                    f"DELETE FROM sleipnir_jobs WHERE {self._OWNED}"
                    " RETURNING id, queue, priority, attempt, body",
                    owned,
                ).fetchone()
                if row is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO sleipnir_dead"
                        " (id, queue, priority, attempt, reason, failed_at, body)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (row[0], row[1], row[2], row[3], n.reason, now, row[4]),
                    )
                out.append(row is not None)
        return out

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now = self.clock.time()
        at = now if ready_at is None else max(now, ready_at)
        return self._each(
            "UPDATE sleipnir_jobs SET token = 0, visible_at = ?, attempt = attempt - 1"
            f" WHERE {self._OWNED}",
            [(at, *r.token, now) for r in reservations],
        )

    def job_info(self, job_id: str) -> JobInfo | None:
        now = self.clock.time()
        rows = self._db.read(
            "SELECT queue, visible_at, token, attempt, last_error FROM sleipnir_jobs WHERE id = ?",
            (job_id,),
        )
        if rows:
            queue, visible_at, token, attempt, last_error = rows[0]
            if visible_at <= now:  # type: ignore[operator]
                state = BrokerJobState.READY
            elif token:
                state = BrokerJobState.RESERVED
            else:
                state = BrokerJobState.SCHEDULED
            return JobInfo(job_id, str(queue), state, int(attempt), last_error)  # type: ignore[arg-type, call-overload]
        rows = self._db.read(
            "SELECT queue, attempt, reason FROM sleipnir_dead WHERE id = ?", (job_id,)
        )
        if rows:
            queue, attempt, reason = rows[0]
            return JobInfo(job_id, str(queue), BrokerJobState.DEAD, int(attempt), str(reason))  # type: ignore[call-overload]
        return None

    def stats(self) -> list[QueueStats]:
        now = self.clock.time()
        counts: dict[str, dict[str, object]] = {
            str(name): {} for (name,) in self._db.read("SELECT name FROM sleipnir_queues")
        }
        for queue, ready, scheduled, running, oldest, next_due in self._db.read(
            "SELECT queue,"
            " SUM(visible_at <= ?1),"
            " SUM(visible_at > ?1 AND token = 0),"
            " SUM(visible_at > ?1 AND token != 0),"
            " MIN(CASE WHEN visible_at <= ?1 THEN visible_at END),"
            " MIN(CASE WHEN visible_at > ?1 AND token = 0 THEN visible_at END)"
            " FROM sleipnir_jobs GROUP BY queue",
            (now,),
        ):
            counts[str(queue)] = {
                "ready": ready,
                "scheduled": scheduled,
                "running": running,
                "oldest_ready_at": oldest,
                "next_scheduled_at": next_due,
            }
        for queue, dead in self._db.read(
            "SELECT queue, COUNT(*) FROM sleipnir_dead GROUP BY queue"
        ):
            counts.setdefault(str(queue), {})["dead"] = dead
        return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]  # type: ignore[arg-type]

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = ("WHERE queue = ?", [queue]) if queue is not None else ("", [])
        rows = self._db.read(
            "SELECT id, queue, body, attempt, reason, failed_at, priority FROM sleipnir_dead"
            f" {where} ORDER BY failed_at, id LIMIT ?",
            (*params, limit),
        )
        return [DeadLetter(*row) for row in rows]  # type: ignore[arg-type]

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        now = self.clock.time()
        where, params = ("", ()) if ids is None else (f"WHERE id IN ({_in(ids)})", tuple(ids))
        if ids is not None and not ids:
            return []
        with self._db.write() as conn:
            rows = conn.execute(
                f"DELETE FROM sleipnir_dead {where} RETURNING id, queue, priority, body", params
            ).fetchall()
            conn.executemany(
                "INSERT INTO sleipnir_jobs (id, queue, priority, visible_at, enqueued_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(i, q, p, now, now, b) for i, q, p, b in rows],
            )
        return sorted(r[0] for r in rows)

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        where, params = ("", ()) if ids is None else (f"WHERE id IN ({_in(ids)})", tuple(ids))
        with self._db.write() as conn:
            return conn.execute(f"DELETE FROM sleipnir_dead {where}", params).rowcount

    def purge(self, queue: str) -> int:
        now = self.clock.time()
        with self._db.write() as conn:
            return conn.execute(
                "DELETE FROM sleipnir_jobs WHERE queue = ? AND NOT (token != 0 AND visible_at > ?)",
                (queue, now),
            ).rowcount

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until another connection commits, the next delayed job is due, or ``timeout``.

        ``PRAGMA data_version`` changes when any other connection commits, so
        checking it every few milliseconds wakes an idle worker soon after an
        enqueue from another process, without a query per check.
        """
        conn = self._db.conn()
        deadline = time.monotonic() + timeout
        if queues:
            row = conn.execute(
                f"SELECT MIN(visible_at) FROM sleipnir_jobs WHERE queue IN ({_in(queues)})",
                tuple(queues),
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

    def close(self) -> None:
        self._db.close()

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return sqlite_checks.diagnose(lambda: self, self.url, about or Deployment())


class SQLiteResultStore(ResultStore):
    """Results in the same SQLite file as the jobs (by default)."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._db = _Database(url)

    def put(self, records: Sequence[ResultRecord]) -> None:
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
        with self._db.write() as conn:
            conn.executemany(
                "INSERT INTO sleipnir_results (job_id, state, task, queue, attempt,"
                " started_at, finished_at, expires_at, value, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state,"
                " task = excluded.task, queue = excluded.queue, attempt = excluded.attempt,"
                " started_at = excluded.started_at, finished_at = excluded.finished_at,"
                " expires_at = excluded.expires_at, value = excluded.value, error = excluded.error"
                " WHERE excluded.attempt >= sleipnir_results.attempt",
                rows,
            )

    def get(self, job_id: str) -> ResultRecord | None:
        rows = self._db.read(
            "SELECT job_id, state, task, queue, attempt, finished_at, expires_at, value, error,"
            " started_at FROM sleipnir_results WHERE job_id = ? AND expires_at > ?",
            (job_id, self.clock.time()),
        )
        if not rows:
            return None
        job, state, task, queue, attempt, finished, expires, value, error, started = rows[0]
        return ResultRecord(
            job_id=str(job),
            state=JobState(str(state)),
            task=str(task),
            queue=str(queue),
            attempt=int(attempt),  # type: ignore[call-overload]
            finished_at=float(finished),  # type: ignore[arg-type]
            expires_at=float(expires),  # type: ignore[arg-type]
            value=value,  # type: ignore[arg-type]
            error=error,  # type: ignore[arg-type]
            started_at=started,  # type: ignore[arg-type]
        )

    def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        with self._db.write() as conn:
            return conn.execute(
                f"DELETE FROM sleipnir_results WHERE job_id IN ({_in(job_ids)})", tuple(job_ids)
            ).rowcount

    def purge_expired(self) -> int:
        now = self.clock.time()
        with self._db.write() as conn:
            conn.execute("DELETE FROM sleipnir_claims WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM sleipnir_slots WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM sleipnir_beats WHERE expires_at <= ?", (now,))
            return conn.execute(
                "DELETE FROM sleipnir_results WHERE expires_at <= ?", (now,)
            ).rowcount

    def beat(self, beat: WorkerBeat, keep: float) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO sleipnir_beats (worker_id, at, expires_at, body, sample)"
                " VALUES (?, ?, ?, ?, ?)",
                (beat.worker_id, beat.at, beat.expires_at, beat.body, beat.sample),
            )
            conn.execute(
                "INSERT INTO sleipnir_beat_history (worker_id, at, sample) VALUES (?, ?, ?)",
                (beat.worker_id, beat.at, beat.sample),
            )
            conn.execute("DELETE FROM sleipnir_beat_history WHERE at < ?", (beat.at - keep,))

    def beats(self) -> list[WorkerBeat]:
        rows = self._db.read(
            "SELECT worker_id, at, expires_at, body, sample FROM sleipnir_beats"
            " WHERE expires_at > ? ORDER BY worker_id",
            (self.clock.time(),),
        )
        return [
            WorkerBeat(str(w), float(a), float(e), bytes(b), bytes(p))  # type: ignore[arg-type, call-overload]
            for w, a, e, b, p in rows
        ]

    def beat_history(self, since: float) -> list[BeatSample]:
        rows = self._db.read(
            "SELECT worker_id, at, sample FROM sleipnir_beat_history WHERE at >= ?"
            " ORDER BY at, seq",
            (since,),
        )
        return [BeatSample(str(w), float(a), bytes(p)) for w, a, p in rows]  # type: ignore[arg-type, call-overload]

    def claim_key(self, key: str, value: bytes, expires_at: float) -> bytes | None:
        with self._db.write() as conn:
            # One write transaction: the read and the insert cannot interleave with
            # another process's claim of the same key.
            row = conn.execute(
                "SELECT value FROM sleipnir_claims WHERE key = ? AND expires_at > ?",
                (key, self.clock.time()),
            ).fetchone()
            if row is not None:
                return bytes(row[0])
            conn.execute(
                "INSERT OR REPLACE INTO sleipnir_claims (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, expires_at),
            )
            return None

    def release_key(self, key: str) -> bool:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM sleipnir_claims WHERE key = ?", (key,)).rowcount > 0

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        try:  # a lone statement in autocommit mode is its own transaction
            self._db.conn().execute(
                "INSERT OR REPLACE INTO sleipnir_claims (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, expires_at),
            )
        except sqlite3.Error as exc:
            raise BrokerError(f"set_key failed on {self._db.path}: {exc}") from exc

    def get_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))
        rows = self._db.read(
            f"SELECT key, value FROM sleipnir_claims WHERE key IN ({_in(unique)})"
            " AND expires_at > ?",
            (*unique, self.clock.time()),
        )
        found = {str(k): bytes(v) for k, v in rows}  # type: ignore[call-overload]
        return [found.get(key) for key in keys]

    def acquire_slot(self, name: str, holder: str, limit: int, expires_at: float) -> float | None:
        if limit < 1:
            raise ValueError(f"a limit needs at least one slot, not {limit}")
        with self._db.write() as conn:
            # One write transaction: no other process counts the slots in between.
            conn.execute(
                "DELETE FROM sleipnir_slots WHERE name = ? AND expires_at <= ?",
                (name, self.clock.time()),
            )
            renewed = conn.execute(
                "UPDATE sleipnir_slots SET expires_at = ? WHERE name = ? AND holder = ?",
                (expires_at, name, holder),
            ).rowcount
            if renewed:
                return None
            taken, first_free = conn.execute(
                "SELECT count(*), min(expires_at) FROM sleipnir_slots WHERE name = ?", (name,)
            ).fetchone()
            if taken >= limit:
                return float(first_free)
            conn.execute(
                "INSERT INTO sleipnir_slots (name, holder, expires_at) VALUES (?, ?, ?)",
                (name, holder, expires_at),
            )
            return None

    def release_slot(self, name: str, holder: str) -> bool:
        with self._db.write() as conn:
            return (
                conn.execute(
                    "DELETE FROM sleipnir_slots WHERE name = ? AND holder = ? AND expires_at > ?",
                    (name, holder, self.clock.time()),
                ).rowcount
                > 0
            )

    def close(self) -> None:
        self._db.close()
