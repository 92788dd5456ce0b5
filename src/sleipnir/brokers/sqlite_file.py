"""How the SQLite backend opens its file: the URL, the schema, connections and the write lock.

Owns :func:`parse_sqlite_url`, the tables (created, and brought up to date, when a
file is first opened; see :data:`_ADDED_COLUMNS`) and :class:`_Database`: one
connection per thread, opened anew after a fork, WAL mode, the busy timeout, and
:meth:`_Database.run`, the transaction the SQL core runs its work in. A write
transaction is ``BEGIN IMMEDIATE``: it takes the write lock up front, so the busy
timeout applies instead of an instant "database is locked".

It must not know the statements of the contract: they are the SQL core's
(:mod:`sleipnir.brokers.sql`) and :mod:`sleipnir.brokers.sqlite`'s.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from ..errors import BrokerConnectionError, BrokerError, ConfigurationError

__all__ = ["parse_sqlite_url"]

T = TypeVar("T")

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

    def run(self, work: Callable[[sqlite3.Connection], T], *, reads: bool = False) -> T:
        """``work(conn)`` in one write transaction (see :meth:`write`); its result.

        ``reads``: the work only reads, so it runs without a transaction (each of
        its statements sees the file as committed when it starts, and takes no
        write lock) and a failure is a :class:`BrokerError`.
        """
        if not reads:
            with self.write() as conn:
                return work(conn)
        try:
            return work(self.conn())
        except sqlite3.Error as exc:
            raise BrokerError(f"SQLite read failed on {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
