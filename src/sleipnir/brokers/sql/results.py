"""The result store on a SQL database, written once: results, heartbeats, keys and slots.

Table layout (each backend module draws it with its own types)::

    results       job_id PRIMARY KEY, state, task, queue, attempt,
                  started_at, finished_at, expires_at, value, error
    beats         worker_id PRIMARY KEY, at, expires_at, body, sample
    beat_history  seq (insertion order), worker_id, at, sample; index (at)
    claims        key PRIMARY KEY, value, expires_at  -- claimed and set keys
    slots         name, holder, expires_at; primary key (name, holder)
                  -- the taken slots of concurrency and rate limits

Times here are the caller's clock (a result's expiry, a key's), stored as given.
A subclass may serialize :meth:`SqlResultStore.acquire_slot` across hosts with
:meth:`SqlResultStore._lock_slots` where the transaction alone does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ...results import BeatSample, Capability, JobState, ResultRecord, ResultStore, WorkerBeat
from .dialect import SqlBase, SqlConnection


class SqlResultStore(SqlBase, ResultStore):
    """Results, heartbeats and claimed keys in the tables of the module docstring."""

    capabilities = frozenset(Capability)

    _SET_KEY = (
        "INSERT INTO {claims} (key, value, expires_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
    )

    def _lock_slots(self, conn: Any, name: str) -> None:
        """Make the slots of ``name`` counted by one transaction at a time.

        Nothing by default: a database whose write transactions run one at a time
        (SQLite) needs nothing more."""

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
        sql = self._sql(
            "INSERT INTO {results} AS r (job_id, state, task, queue, attempt,"
            " started_at, finished_at, expires_at, value, error)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state,"
            " task = excluded.task, queue = excluded.queue, attempt = excluded.attempt,"
            " started_at = excluded.started_at, finished_at = excluded.finished_at,"
            " expires_at = excluded.expires_at, value = excluded.value,"
            " error = excluded.error"
            " WHERE excluded.attempt >= r.attempt"
        )

        def work(conn: SqlConnection) -> None:
            with contextlib.closing(conn.cursor()) as cur:
                cur.executemany(sql, rows)

        self._db.run(work)

    def get(self, job_id: str) -> ResultRecord | None:
        sql = self._sql(
            "SELECT job_id, state, task, queue, attempt, finished_at, expires_at, value,"
            " error, started_at FROM {results} WHERE job_id = %s AND expires_at > %s"
        )
        row = self._db.run(
            lambda conn: conn.execute(sql, (job_id, self.clock.time())).fetchone(), reads=True
        )
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
        condition, params = self._dialect.any_of("job_id", job_ids)
        sql = f"{self._sql('DELETE FROM {results} WHERE')} {condition}"
        return self._db.run(lambda conn: int(conn.execute(sql, params).rowcount))

    def purge_expired(self) -> int:
        now = self.clock.time()

        def work(conn: SqlConnection) -> int:
            n = int(
                conn.execute(
                    self._sql("DELETE FROM {results} WHERE expires_at <= %s"), (now,)
                ).rowcount
            )
            conn.execute(self._sql("DELETE FROM {claims} WHERE expires_at <= %s"), (now,))
            conn.execute(self._sql("DELETE FROM {slots} WHERE expires_at <= %s"), (now,))
            conn.execute(self._sql("DELETE FROM {beats} WHERE expires_at <= %s"), (now,))
            return n

        return self._db.run(work)

    def beat(self, beat: WorkerBeat, keep: float) -> None:
        def work(conn: SqlConnection) -> None:
            conn.execute(
                self._sql(
                    "INSERT INTO {beats} (worker_id, at, expires_at, body, sample)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET"
                    " at = excluded.at, expires_at = excluded.expires_at, body = excluded.body,"
                    " sample = excluded.sample"
                ),
                (beat.worker_id, beat.at, beat.expires_at, beat.body, beat.sample),
            )
            conn.execute(
                self._sql("INSERT INTO {beat_history} (worker_id, at, sample) VALUES (%s, %s, %s)"),
                (beat.worker_id, beat.at, beat.sample),
            )
            conn.execute(self._sql("DELETE FROM {beat_history} WHERE at < %s"), (beat.at - keep,))

        self._db.run(work)

    def beats(self) -> list[WorkerBeat]:
        sql = self._sql(
            "SELECT worker_id, at, expires_at, body, sample"
            " FROM {beats} WHERE expires_at > %s ORDER BY worker_id"
        )
        rows = self._db.run(
            lambda conn: conn.execute(sql, (self.clock.time(),)).fetchall(), reads=True
        )
        return [WorkerBeat(w, a, e, bytes(b), bytes(s)) for w, a, e, b, s in rows]

    def beat_history(self, since: float) -> list[BeatSample]:
        sql = self._sql(
            "SELECT worker_id, at, sample FROM {beat_history} WHERE at >= %s ORDER BY at, seq"
        )
        rows = self._db.run(lambda conn: conn.execute(sql, (since,)).fetchall(), reads=True)
        return [BeatSample(w, a, bytes(s)) for w, a, s in rows]

    def claim_key(self, key: str, value: bytes, expires_at: float) -> bytes | None:
        now = self.clock.time()

        def work(conn: SqlConnection) -> tuple[bool, Any]:
            """(claimed, the holder's row or None)."""
            row = conn.execute(
                self._sql(
                    "INSERT INTO {claims} AS c (key, value, expires_at)"
                    " VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                    " value = excluded.value, expires_at = excluded.expires_at"
                    " WHERE c.expires_at <= %s RETURNING 1"
                ),
                (key, value, expires_at, now),
            ).fetchone()
            if row is not None:
                return True, None
            held = conn.execute(
                self._sql("SELECT value FROM {claims} WHERE key = %s"), (key,)
            ).fetchone()
            return False, held

        while True:  # again if the holder released the key between our two statements
            claimed, held = self._db.run(work)
            if claimed:
                return None
            if held is not None:
                return bytes(held[0])

    def release_key(self, key: str) -> bool:
        sql = self._sql("DELETE FROM {claims} WHERE key = %s")
        return self._db.run(lambda conn: bool(conn.execute(sql, (key,)).rowcount > 0))

    def set_key(self, key: str, value: bytes, expires_at: float) -> None:
        sql = self._sql(self._SET_KEY)
        self._db.run(lambda conn: conn.execute(sql, (key, value, expires_at)))

    def get_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        condition, params = self._dialect.any_of("key", list(dict.fromkeys(keys)))
        head = self._sql("SELECT key, value FROM {claims} WHERE expires_at > %s AND")
        sql = f"{head} {condition}"

        def work(conn: SqlConnection) -> list[Any]:
            return list(conn.execute(sql, (self.clock.time(), *params)).fetchall())

        found = {k: bytes(v) for k, v in self._db.run(work, reads=True)}
        return [found.get(key) for key in keys]

    def acquire_slot(self, name: str, holder: str, limit: int, expires_at: float) -> float | None:
        if limit < 1:
            raise ValueError(f"a limit needs at least one slot, not {limit}")

        def work(conn: SqlConnection) -> float | None:
            # One transaction counts the slots of a name at a time (see _lock_slots);
            # each statement after it sees what the previous holder committed.
            self._lock_slots(conn, name)
            conn.execute(
                self._sql("DELETE FROM {slots} WHERE name = %s AND expires_at <= %s"),
                (name, self.clock.time()),
            )
            renewed = conn.execute(
                self._sql("UPDATE {slots} SET expires_at = %s WHERE name = %s AND holder = %s"),
                (expires_at, name, holder),
            ).rowcount
            if renewed:
                return None
            taken, first_free = conn.execute(
                self._sql("SELECT count(*), min(expires_at) FROM {slots} WHERE name = %s"),
                (name,),
            ).fetchone() or (0, 0.0)  # an aggregate always gives a row
            if taken >= limit:
                return float(first_free)
            conn.execute(
                self._sql("INSERT INTO {slots} (name, holder, expires_at) VALUES (%s, %s, %s)"),
                (name, holder, expires_at),
            )
            return None

        return self._db.run(work)

    def release_slot(self, name: str, holder: str) -> bool:
        sql = self._sql("DELETE FROM {slots} WHERE name = %s AND holder = %s AND expires_at > %s")
        return self._db.run(
            lambda conn: bool(conn.execute(sql, (name, holder, self.clock.time())).rowcount > 0)
        )
