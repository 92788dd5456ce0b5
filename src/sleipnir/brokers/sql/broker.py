"""The broker contract on a SQL database, written once: leases, settling, dead letters, stats.

Table layout (each backend module draws it with its own types)::

    jobs    seq (FIFO order within a priority), id UNIQUE, queue, priority,
            visible_at      -- due time; while reserved: lease end
            token           -- 0 = not reserved, else this delivery's token
            attempt         -- deliveries so far
            lost            -- of those, how many ended with their lease running out
            enqueued_at, last_error, body
    dead    id PRIMARY KEY, queue, priority, attempt, reason, failed_at, body
    queues  name PRIMARY KEY  -- every queue ever used (filled by a trigger)

A job is reservable when ``visible_at <= now``: that one test covers ready jobs,
delayed jobs that came due and leases that ran out, so any worker's ordinary
reserve reclaims the jobs of a dead one, with no extra daemon. Every statement
that acts on a reservation checks its token *and* that its lease still runs.

A subclass brings what differs beyond spelling: ``enqueue``, ``wait``, and the
hooks :meth:`SqlBroker._take` (the reserve statement), :meth:`SqlBroker._bury` and
:meth:`SqlBroker._revive` (moves between the jobs and the dead, which one database
does in one statement and another in two), and :meth:`SqlBroker._now`.
"""

from __future__ import annotations

import contextlib
import secrets
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from ..base import Broker, BrokerJobState, DeadLetter, JobInfo, Nack, QueueStats, Reservation
from .dialect import SqlBase, SqlConnection, SqlCursor

# The reservation is ours: its token, and a lease that still runs. A lease that ran
# out belongs to whoever reserves next, however late the request arrived.
OWNED = "seq = %s AND token = %s AND visible_at > {now}"


class SqlBroker(SqlBase, Broker):
    """The contract on a SQL database; see the module docstring."""

    poll_interval = 0.05

    # The statements that settle a reservation (parameters: theirs, then OWNED's).
    _RENEW = "UPDATE {jobs} SET visible_at = {now} + %s WHERE " + OWNED
    _ACK = "DELETE FROM {jobs} WHERE " + OWNED
    _RELEASE = (
        "UPDATE {jobs} SET token = 0, visible_at = {greatest}({now}, %s),"
        " attempt = attempt - 1 WHERE " + OWNED
    )
    _RETRY = "UPDATE {jobs} SET token = 0, visible_at = %s, last_error = %s WHERE " + OWNED

    def _now(self) -> float | None:
        """The parameter of ``{now}`` in this call's statements: the clock's time.

        A database with a clock of its own may answer ``None``, its clock then."""
        return self.clock.time()

    @abstractmethod
    def _take(
        self, conn: Any, queue: str, want: int, token: int, lease: float, now: float | None
    ) -> list[Any]:
        """Lease up to ``want`` due jobs of ``queue`` with ``token`` until now + ``lease``.

        Rows of (seq, id, priority, attempt, lost, body, lease end), in any order.
        """

    @abstractmethod
    def _bury(
        self, cur: SqlCursor, owned: tuple[object, ...], reason: str, now: float | None
    ) -> bool:
        """Move the job ``owned`` (seq, token, now) to the dead letters; whether it was ours."""

    @abstractmethod
    def _revive(
        self, conn: Any, where: str, params: tuple[object, ...], now: float | None
    ) -> list[Any]:
        """Move the dead letters ``where`` selects back to their queues, ready now; their ids."""

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        if limit <= 0 or not queues:
            return []
        now = self._now()
        token = secrets.randbits(62) | 1  # never 0, which means "not reserved"

        def work(conn: SqlConnection) -> list[Reservation]:
            out: list[Reservation] = []
            for queue in queues:
                want = limit - len(out)
                if want <= 0:
                    break
                rows = self._take(conn, queue, want, token, lease, now)
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

    def _each(self, template: str, params: Sequence[tuple[object, ...]]) -> list[bool]:
        """Run a statement once per parameter row in one transaction; which changed a row."""
        if not params:
            return []
        sql = self._sql(template)

        def work(conn: SqlConnection) -> list[bool]:
            with contextlib.closing(conn.cursor()) as cur:
                return [cur.execute(sql, p).rowcount == 1 for p in params]

        return self._db.run(work)

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        now = self._now()
        return self._each(
            self._RENEW,
            [(now, lease, *r.token, now) for r in reservations],
        )

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        now = self._now()
        return self._each(self._ACK, [(*r.token, now) for r in reservations])

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now = self._now()
        ready = now if ready_at is None else ready_at  # the larger of now and ready_at
        return self._each(
            self._RELEASE,
            [(now, ready, *r.token, now) for r in reservations],
        )

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        if not nacks:
            return []
        now = self._now()
        retry = self._sql(self._RETRY)

        def work(conn: SqlConnection) -> list[bool]:
            out = []
            with contextlib.closing(conn.cursor()) as cur:
                for n in nacks:
                    owned = (*n.reservation.token, now)
                    if n.retry_at is not None:
                        cur.execute(retry, (n.retry_at, n.reason, *owned))
                        out.append(cur.rowcount == 1)
                    else:
                        out.append(self._bury(cur, owned, n.reason, now))
            return out

        return self._db.run(work)

    def job_info(self, job_id: str) -> JobInfo | None:
        now = self._now()

        def work(conn: SqlConnection) -> JobInfo | None:
            row = conn.execute(
                self._sql(
                    "SELECT queue, visible_at <= {now}, token, attempt, last_error"
                    " FROM {jobs} WHERE id = %s"
                ),
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
                self._sql("SELECT queue, attempt, reason FROM {dead} WHERE id = %s"), (job_id,)
            ).fetchone()
            if row is not None:
                return JobInfo(job_id, row[0], BrokerJobState.DEAD, row[1], row[2])
            return None

        return self._db.run(work, reads=True)

    def stats(self) -> list[QueueStats]:
        now = self._now()

        def work(conn: SqlConnection) -> dict[str, dict[str, object]]:
            counts: dict[str, dict[str, object]] = {
                name: {} for (name,) in conn.execute(self._sql("SELECT name FROM {queues}"))
            }
            # "Now" read once, for every count: MATERIALIZED keeps it from being re-read.
            for queue, ready, scheduled, running, oldest, next_due in conn.execute(
                self._sql(
                    "WITH t AS MATERIALIZED (SELECT {now} AS now)"
                    " SELECT queue,"
                    " COUNT(*) FILTER (WHERE visible_at <= t.now),"
                    " COUNT(*) FILTER (WHERE visible_at > t.now AND token = 0),"
                    " COUNT(*) FILTER (WHERE visible_at > t.now AND token != 0),"
                    " MIN(visible_at) FILTER (WHERE visible_at <= t.now),"
                    " MIN(visible_at) FILTER (WHERE visible_at > t.now AND token = 0)"
                    " FROM {jobs}, t GROUP BY queue"
                ),
                (now,),
            ):
                counts[queue] = {
                    "ready": ready,
                    "scheduled": scheduled,
                    "running": running,
                    "oldest_ready_at": oldest,
                    "next_scheduled_at": next_due,
                }
            for queue, dead in conn.execute(
                self._sql("SELECT queue, COUNT(*) FROM {dead} GROUP BY queue")
            ):
                counts.setdefault(queue, {})["dead"] = dead
            return counts

        counts = self._db.run(work, reads=True)
        return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]  # type: ignore[arg-type]

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = ("WHERE queue = %s", [queue]) if queue is not None else ("", [])
        sql = self._sql(
            "SELECT id, queue, body, attempt, reason, failed_at, priority"
            " FROM {dead} " + where + " ORDER BY failed_at, id LIMIT %s"
        )
        rows = self._db.run(lambda conn: conn.execute(sql, (*params, limit)).fetchall(), reads=True)
        return [DeadLetter(i, q, bytes(b), a, r, f, p) for i, q, b, a, r, f, p in rows]

    def _which(self, ids: Sequence[str] | None) -> tuple[str, tuple[object, ...]]:
        """The ``WHERE`` clause that picks the dead letters ``ids`` (all when None)."""
        if ids is None:
            return "", ()
        condition, params = self._dialect.any_of("id", ids)
        return f"WHERE {condition}", params

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        if ids is not None and not ids:
            return []
        now = self._now()
        where, params = self._which(ids)
        rows = self._db.run(lambda conn: self._revive(conn, where, params, now))
        return sorted(r[0] for r in rows)

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        where, params = self._which(ids)
        sql = f"{self._sql('DELETE FROM {dead}')} {where}"
        return self._db.run(lambda conn: int(conn.execute(sql, params).rowcount))

    def purge(self, queue: str) -> int:
        now = self._now()
        sql = self._sql(
            "DELETE FROM {jobs} WHERE queue = %s AND NOT (token != 0 AND visible_at > {now})"
        )
        return self._db.run(lambda conn: int(conn.execute(sql, (queue, now)).rowcount))
