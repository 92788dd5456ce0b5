"""The in-memory backend (``memory://``): for tests and for trying things out.

It keeps nothing across a restart and is shared only by the threads of one
process. It is the reference implementation of the contract: plain data
structures under one lock, easy to read against ``base.py``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from . import memory_checks
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
from .memory_results import MemoryResultStore

__all__ = ["MemoryBroker", "MemoryResultStore"]


@dataclass(slots=True)
class _Entry:
    seq: int
    id: str
    queue: str
    body: bytes
    priority: int
    enqueued_at: float
    visible_at: float
    reserved: bool = False
    attempt: int = 0
    lost: int = 0
    token: int = 0
    last_error: str | None = None


class MemoryBroker(Broker):
    """The contract in plain Python, under one lock."""

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._jobs: dict[str, _Entry] = {}
        self._dead: dict[str, DeadLetter] = {}
        self._queues: set[str] = set()

    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        now = self.clock.time()
        with self._lock:
            for env in envelopes:
                if env.id in self._jobs or env.id in self._dead:
                    continue  # an id already held is never overwritten
                self._jobs[env.id] = _Entry(
                    seq=next(self._seq),
                    id=env.id,
                    queue=env.queue,
                    body=env.body,
                    priority=env.priority,
                    enqueued_at=now,
                    visible_at=now if env.eta_at is None else env.eta_at,
                )
                self._queues.add(env.queue)
            self._changed.notify_all()

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        now = self.clock.time()
        out: list[Reservation] = []
        with self._lock:
            for queue in queues:
                if len(out) >= limit:
                    break
                due = sorted(
                    (e for e in self._jobs.values() if e.queue == queue and e.visible_at <= now),
                    key=lambda e: (-e.priority, e.seq),
                )
                for entry in due[: limit - len(out)]:
                    if entry.reserved:  # due while still reserved: its lease ran out
                        entry.lost += 1
                    entry.reserved = True
                    entry.attempt += 1
                    entry.token = next(self._tokens)
                    entry.visible_at = now + lease
                    out.append(self._reservation(entry))
        return out

    @staticmethod
    def _reservation(entry: _Entry) -> Reservation:
        return Reservation(
            id=entry.id,
            queue=entry.queue,
            body=entry.body,
            attempt=entry.attempt,
            token=entry.token,
            lease_until=entry.visible_at,
            priority=entry.priority,
            lost=entry.lost,
        )

    def _owned(self, res: Reservation, now: float) -> _Entry | None:
        entry = self._jobs.get(res.id)
        if entry is None or not entry.reserved or entry.token != res.token:
            return None
        if entry.visible_at <= now:
            return None  # lease ran out: the job belongs to whoever reserves it next
        return entry

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for res in reservations:
                entry = self._owned(res, now)
                if entry is not None:
                    entry.visible_at = now + lease
                out.append(entry is not None)
        return out

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for res in reservations:
                entry = self._owned(res, now)
                if entry is not None:
                    del self._jobs[entry.id]
                out.append(entry is not None)
        return out

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for nack in nacks:
                entry = self._owned(nack.reservation, now)
                if entry is not None:
                    if nack.retry_at is None:
                        del self._jobs[entry.id]
                        self._dead[entry.id] = DeadLetter(
                            id=entry.id,
                            queue=entry.queue,
                            body=entry.body,
                            attempt=entry.attempt,
                            reason=nack.reason,
                            failed_at=now,
                            priority=entry.priority,
                        )
                    else:
                        entry.reserved = False
                        entry.visible_at = nack.retry_at
                        entry.last_error = nack.reason
                out.append(entry is not None)
            self._changed.notify_all()
        return out

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now = self.clock.time()
        out = []
        with self._lock:
            for res in reservations:
                entry = self._owned(res, now)
                if entry is not None:
                    entry.reserved = False
                    entry.visible_at = now if ready_at is None else max(now, ready_at)
                    entry.attempt -= 1
                out.append(entry is not None)
            self._changed.notify_all()
        return out

    def job_info(self, job_id: str) -> JobInfo | None:
        now = self.clock.time()
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None:
                if entry.visible_at <= now:
                    state = BrokerJobState.READY
                elif entry.reserved:
                    state = BrokerJobState.RESERVED
                else:
                    state = BrokerJobState.SCHEDULED
                return JobInfo(entry.id, entry.queue, state, entry.attempt, entry.last_error)
            dead = self._dead.get(job_id)
            if dead is not None:
                return JobInfo(dead.id, dead.queue, BrokerJobState.DEAD, dead.attempt, dead.reason)
        return None

    def stats(self) -> list[QueueStats]:
        now = self.clock.time()
        with self._lock:
            out = []
            for queue in sorted(self._queues):
                entries = [e for e in self._jobs.values() if e.queue == queue]
                ready = [e for e in entries if e.visible_at <= now]
                scheduled = [e for e in entries if e.visible_at > now and not e.reserved]
                out.append(
                    QueueStats(
                        queue=queue,
                        ready=len(ready),
                        scheduled=len(scheduled),
                        running=sum(1 for e in entries if e.visible_at > now and e.reserved),
                        dead=sum(1 for d in self._dead.values() if d.queue == queue),
                        oldest_ready_at=min((e.visible_at for e in ready), default=None),
                        next_scheduled_at=min((e.visible_at for e in scheduled), default=None),
                    )
                )
            return out

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            dead = [d for d in self._dead.values() if queue is None or d.queue == queue]
        return sorted(dead, key=lambda d: (d.failed_at, d.id))[:limit]

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        now = self.clock.time()
        with self._lock:
            chosen = self._chosen(ids)
            for job_id in chosen:
                dead = self._dead.pop(job_id)
                self._jobs[job_id] = _Entry(
                    seq=next(self._seq),
                    id=job_id,
                    queue=dead.queue,
                    body=dead.body,
                    priority=dead.priority,
                    enqueued_at=now,
                    visible_at=now,
                )
            self._changed.notify_all()
        return sorted(chosen)

    def _chosen(self, ids: Sequence[str] | None) -> list[str]:
        if ids is None:
            return list(self._dead)
        return [i for i in dict.fromkeys(ids) if i in self._dead]

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._lock:
            chosen = self._chosen(ids)
            for job_id in chosen:
                del self._dead[job_id]
        return len(chosen)

    def purge(self, queue: str) -> int:
        now = self.clock.time()
        with self._lock:
            doomed = [
                e.id
                for e in self._jobs.values()
                if e.queue == queue and not (e.reserved and e.visible_at > now)
            ]
            for job_id in doomed:
                del self._jobs[job_id]
        return len(doomed)

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return memory_checks.diagnose(lambda: self, self.url, about or Deployment())

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)
