"""The Redis backend (``redis://host:port/db``, ``rediss://``, ``?prefix=``).

Every state change is one Lua script, so it is atomic and one round trip,
whatever the batch size. The broker's scripts read "now" from the server's clock
(``TIME``), so a late request can neither lease what has expired meanwhile nor
move time backwards; times the caller chooses (a retry's or a delayed job's due
time, a lease's length) travel as seconds from now (``"+2.5"``). A broker given
another clock than :class:`~sleipnir.clock.SystemClock` (tests' ``FakeClock``)
sends that clock's now and absolute times instead. How a call that failed may
have left Redis is :mod:`sleipnir.brokers.redis_link`'s matter.

Key layout (``P`` is the prefix, default ``sleipnir``)::

    P:job:<id>        HASH   body, queue, pri, seq, attempt, token (0 = not leased),
                             at (enqueued), err (last error), dead (failed_at, dead letters),
                             lost (deliveries whose lease ran out; absent = 0)
    P:ready:<q>       ZSET   id -> ordering score: -priority * 2**44 + seq (ZPOPMIN = next)
    P:since:<q>       ZSET   id -> time it became ready (for the queue's lag)
    P:sched:<q>       ZSET   id -> due time (delayed jobs and retries waiting out a backoff)
    P:lease:<q>       ZSET   id -> lease end of reserved jobs
    P:dead:<q>        ZSET   id -> failed_at
    P:queues          SET    every queue ever used
    P:seq             STRING FIFO counter
    P:wake:<q>        LIST   at most one token; idle workers BLPOP it to wake on enqueue
    P:result:<id>     HASH   state, task, queue, attempt, started, finished, expires,
                             value, error; expires at ``expires_at`` (PEXPIREAT)
    P:result-expiry   ZSET   result id -> expires_at (for purge_expired)
    P:beat:<worker>   HASH   at, expires, body, sample: a worker's latest heartbeat
                             (PEXPIREAT expires)
    P:beats           ZSET   worker id -> expires_at of its latest beat
    P:beat-history    ZSET   "<worker id> <sample>" -> at (trimmed to the last ``keep`` s)
    P:claim:<key>     HASH   value, expires: a claimed key (claim.lua) or one stored by
                             set_key (key_set.lua); PEXPIREAT expires
    P:slots:<name>    ZSET   holder -> expires_at: the taken slots of a limit
                             (slot_acquire.lua; PEXPIREAT its latest expires_at)

A reserve first moves due jobs from ``sched`` and expired leases from
``lease`` back to ``ready`` (in their original FIFO place), so expired leases
are reclaimed by any live worker's ordinary reserve, with no extra daemon.
That move is where an expired lease raises the job's ``lost``.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always``
nothing acknowledged is lost; ``everysec`` may lose about a second of writes
on a crash of the Redis host; without AOF a restart loses everything since the
last snapshot. ``maxmemory-policy`` must be ``noeviction``: ``allkeys-*`` may
evict job hashes or leases, ``volatile-*`` the keys with an expiry (results,
claims, slots, beats; never a job). :mod:`.redis_checks` says which of these the
server gets wrong; the worker logs them at start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from . import redis_checks
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
from .redis_errors import _errors, _s
from .redis_link import Direct, Script, connect
from .redis_results import RedisResultStore

__all__ = ["RedisBroker", "RedisResultStore", "connect"]


class _NextDue:
    """What the last reserve said of its queues: when (``time.monotonic()``) the earliest
    scheduled job or lease end of theirs is due, or that none is.

    Read once by :meth:`RedisBroker.wait`, and only soon after: it spares the idle loop
    a round trip. Later changes push wake tokens, so a stale answer costs no more than
    an early wake-up. Per thread: a broker may serve several.
    """

    FRESH_FOR = 1.0
    """How long (seconds) a reserve's answer stands in for a look-up."""

    def __init__(self) -> None:
        self._local = threading.local()

    def note(self, queues: Sequence[str], due: float | None) -> None:
        self._local.seen = (frozenset(queues), due, time.monotonic())

    def forget(self) -> None:
        self._local.seen = None

    def take(self, queues: Sequence[str]) -> tuple[bool, float | None]:
        """``(True, due)`` if a fresh answer for these queues was there, else ``(False, None)``."""
        seen = getattr(self._local, "seen", None)
        self._local.seen = None
        if seen is None or seen[0] != frozenset(queues):
            return False, None
        if time.monotonic() - seen[2] > self.FRESH_FOR:
            return False, None
        return True, seen[1]


class RedisBroker(Broker):
    """The contract on Redis. See the module docstring for the key layout and guarantees."""

    poll_interval = 0.05

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        # The real clock is the server's; an injected one (tests) is the caller's.
        self._server_clock = isinstance(self.clock, SystemClock)
        self.client, self.prefix = connect(url)
        self._direct = Direct(self.client)
        self._enqueue = Script(self._direct, "enqueue")
        self._reserve = Script(self._direct, "reserve")
        self._settle = Script(self._direct, "settle")
        self._dead_move = Script(self._direct, "dead")
        self._info = Script(self._direct, "info")
        self._next_due_script = Script(self._direct, "next_due")
        self._next_due = _NextDue()

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _now(self) -> tuple[str, float]:
        """The scripts' "now" argument ("" = the server's TIME), and the caller's clock."""
        now = self.clock.time()
        return ("" if self._server_clock else repr(now)), now

    def _at(self, when: float, now: float) -> str:
        """A time of the caller's clock for a script: seconds from now, or as it is."""
        return f"+{when - now!r}" if self._server_clock else repr(when)

    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        now_arg, now = self._now()
        args: list[Any] = [self.prefix, now_arg]
        for e in envelopes:
            eta = "" if e.eta_at is None else self._at(e.eta_at, now)
            args += [e.id, e.queue, e.priority, eta, e.body]
        with _errors(self.url):
            self._enqueue(args)

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        if limit <= 0 or not queues:
            return []
        now_arg, now = self._now()
        token = str(time.time_ns() ^ id(self)) + str(limit)
        args = [self.prefix, now_arg, self._at(now + lease, now), token, limit, *queues]
        with _errors(self.url):
            flat = self._reserve(args)
        until = float(flat[-2])
        if len(flat) - 2 < 6 * limit:  # short: the caller may wait next
            left = _s(flat[-1])
            self._next_due.note(queues, time.monotonic() + float(left) if left else None)
        else:
            self._next_due.forget()
        return [
            Reservation(
                id=_s(flat[i]),
                queue=_s(flat[i + 1]),
                body=bytes(flat[i + 5]),
                attempt=int(flat[i + 3]),
                token=token,
                lease_until=until,
                priority=int(flat[i + 2]),
                lost=int(flat[i + 4]),
            )
            for i in range(0, len(flat) - 2, 6)
        ]

    def _run_settle(self, op: str, now_arg: str, items: list[Any]) -> list[bool]:
        if not items:
            return []
        with _errors(self.url):
            out = self._settle([self.prefix, op, now_arg, *items])
        return [bool(int(x)) for x in out]

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        now_arg, now = self._now()
        until = self._at(now + lease, now)
        items: list[Any] = []
        for r in reservations:
            items += [r.id, r.token, until, ""]
        return self._run_settle("renew", now_arg, items)

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        items: list[Any] = []
        for r in reservations:
            items += [r.id, r.token, "", ""]
        return self._run_settle("ack", self._now()[0], items)

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        now_arg, now = self._now()
        items: list[Any] = []
        for n in nacks:
            when = "" if n.retry_at is None else self._at(n.retry_at, now)
            items += [n.reservation.id, n.reservation.token, when, n.reason]
        return self._run_settle("nack", now_arg, items)

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now_arg, now = self._now()
        when = "" if ready_at is None else self._at(ready_at, now)
        items: list[Any] = []
        for r in reservations:
            items += [r.id, r.token, when, ""]
        return self._run_settle("release", now_arg, items)

    def job_info(self, job_id: str) -> JobInfo | None:
        with _errors(self.url):
            got = self._info([self.prefix, self._now()[0], job_id])
        if not got:
            return None
        queue, state, attempt, err = got
        return JobInfo(
            id=job_id,
            queue=_s(queue),
            state=BrokerJobState(_s(state)),
            attempt=int(attempt),
            last_error=_s(err) if err else None,
        )

    def stats(self) -> list[QueueStats]:
        with _errors(self.url):
            now = repr(self._direct.server_time() if self._server_clock else self.clock.time())
            queues = sorted(_s(q) for q in self.client.smembers(self._key("queues")))
            pipe = self.client.pipeline(transaction=True)
            for q in queues:
                pipe.zcard(self._key("ready", q))
                pipe.zcount(self._key("sched", q), "-inf", now)
                pipe.zcount(self._key("lease", q), "-inf", now)
                pipe.zcount(self._key("sched", q), f"({now}", "+inf")
                pipe.zcount(self._key("lease", q), f"({now}", "+inf")
                pipe.zcard(self._key("dead", q))
                pipe.zrange(self._key("since", q), 0, 0, withscores=True)
                pipe.zrange(self._key("sched", q), 0, 0, withscores=True)
                pipe.zrange(self._key("lease", q), 0, 0, withscores=True)
                pipe.zrangebyscore(
                    self._key("sched", q), f"({now}", "+inf", start=0, num=1, withscores=True
                )
            flat = pipe.execute()
        out = []
        for i, q in enumerate(queues):
            ready, due, expired, sched, running, dead, since, first_due, first_exp, next_due = flat[
                i * 10 : i * 10 + 10
            ]
            candidates = [s for (_, s) in since]
            candidates += [s for (_, s) in first_due if due]
            candidates += [s for (_, s) in first_exp if expired]
            out.append(
                QueueStats(
                    queue=q,
                    ready=ready + due + expired,
                    scheduled=sched,
                    running=running,
                    dead=dead,
                    oldest_ready_at=min(candidates) if candidates else None,
                    next_scheduled_at=next_due[0][1] if next_due else None,
                )
            )
        return out

    def _queues(self) -> list[str]:
        return sorted(_s(q) for q in self.client.smembers(self._key("queues")))

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with _errors(self.url):
            queues = [queue] if queue is not None else self._queues()
            found: list[tuple[float, str]] = []
            for q in queues:
                found += [
                    (score, _s(m))
                    for m, score in self.client.zrange(
                        self._key("dead", q), 0, limit - 1, withscores=True
                    )
                ]
            found.sort(key=lambda t: (t[0], t[1]))
            found = found[:limit]
            pipe = self.client.pipeline(transaction=False)
            for _, job_id in found:
                pipe.hmget(self._key("job", job_id), "queue", "body", "attempt", "err", "pri")
            rows = pipe.execute()
        return [
            DeadLetter(
                id=job_id,
                queue=_s(q),
                body=bytes(body),
                attempt=int(attempt),
                reason=_s(err or b""),
                failed_at=failed_at,
                priority=int(pri or 0),
            )
            for (failed_at, job_id), (q, body, attempt, err, pri) in zip(found, rows, strict=True)
            if body is not None
        ]

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        return self._dead_op("retry", ids)

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        return len(self._dead_op("delete", ids))

    def _dead_op(self, op: str, ids: Sequence[str] | None) -> list[str]:
        if ids is not None and not ids:
            return []
        with _errors(self.url):
            if ids is None:
                ids = [
                    _s(m)
                    for q in self._queues()
                    for m in self.client.zrange(self._key("dead", q), 0, -1)
                ]
            moved = self._dead_move([self.prefix, op, self._now()[0], *dict.fromkeys(ids)])
        return sorted(_s(m) for m in moved)

    def purge(self, queue: str) -> int:
        with _errors(self.url):
            return int(self._dead_move([self.prefix, "purge", self._now()[0], queue])[0])

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block on the queues' wake lists, or until the next scheduled job or lease end.

        One BLPOP, after no other command when a reserve of the same queues has just
        said when their next due time or lease end is (the worker's idle loop), else
        after one script that looks it up. Anything that puts a job in ``ready`` or
        ``sched`` pushes a wake token, so a waiter learns of new due times too. The
        BLPOP waits at most half the socket timeout, so its reply is never late.
        """
        if not queues:
            time.sleep(timeout)
            return
        try:
            known, due = self._next_due.take(queues)
            if not known:
                left = _s(self._next_due_script([self.prefix, self._now()[0], *queues]))
                due = time.monotonic() + float(left) if left else None
            if due is not None:
                timeout = min(timeout, due - time.monotonic())
            if self._direct.socket_timeout:
                timeout = min(timeout, self._direct.socket_timeout / 2)
            if timeout < 0.001:
                return
            self._direct("BLPOP", *[self._key("wake", q) for q in queues], f"{timeout:.3f}")
        except redis.RedisError:
            # The caller's next reserve reports the failure; here we only must not spin.
            time.sleep(min(max(timeout, 0.0), 0.5))

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return redis_checks.diagnose(lambda: self, self.url, about or Deployment())

    def settings_report(self) -> dict[str, str | None]:
        """``appendonly``, ``appendfsync``, ``maxmemory``, ``maxmemory-policy``, ``role``.

        Read with ``CONFIG GET``; where that is refused (managed services), from
        ``INFO``, which lacks ``appendfsync``; ``config-error`` then says why.
        """
        names = ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy")
        report: dict[str, str | None] = dict.fromkeys(names)
        with _errors(self.url):
            info = self.client.info()
            report["role"] = _s(info.get("role", "")) or None
            report["config-error"] = None
            try:
                for name in names:  # one per call: Redis 6 takes one pattern
                    value = self.client.config_get(name).get(name)
                    report[name] = None if value is None else _s(value)
            except redis.ResponseError as exc:
                report["config-error"] = str(exc)
                aof = info.get("aof_enabled")
                report["appendonly"] = None if aof is None else ("yes" if int(aof) else "no")
                for name, field in (
                    ("maxmemory", "maxmemory"),
                    ("maxmemory-policy", "maxmemory_policy"),
                ):
                    report[name] = None if info.get(field) is None else _s(info[field])
        return report

    def close(self) -> None:
        self._direct.close()
        self.client.close()
